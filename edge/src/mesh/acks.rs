//! The mesh's lag race: a tunnel's URL is printed only once every peer following this edge's
//! holdings feed has read the new name, so that a visitor sent to any edge (a stale or
//! stand-in DNS answer, another edge behind the balancer) finds the holder from the first
//! request. The holder puts a marker (`?N`) in every feed after the name; a peer answers
//! `!N` once it has applied everything before it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::Notify;

/// Which feed has been read up to which marker.
#[derive(Default)]
pub struct FeedAcks {
    next_marker: AtomicU64,
    next_feed: AtomicU64,
    /// Open feeds: id → the highest marker its reader acknowledged.
    feeds: Mutex<HashMap<u64, u64>>,
    changed: Notify,
}

impl FeedAcks {
    /// Registers a feed (after it subscribed to the changes, so that it sees every marker
    /// made from now on); returns its id.
    pub fn open_feed(&self) -> u64 {
        let id = self.next_feed.fetch_add(1, Ordering::SeqCst);
        self.lock().insert(id, 0);
        id
    }

    /// A feed ended: nobody waits for it any more.
    pub fn close_feed(&self, id: u64) {
        self.lock().remove(&id);
        self.changed.notify_waiters();
    }

    /// The feed's reader has applied everything up to `marker`.
    pub fn ack(&self, id: u64, marker: u64) {
        if let Some(acked) = self.lock().get_mut(&id) {
            *acked = (*acked).max(marker);
        }
        self.changed.notify_waiters();
    }

    /// A fresh marker and the feeds that must acknowledge it.
    pub fn new_marker(&self) -> (u64, Vec<u64>) {
        let marker = self.next_marker.fetch_add(1, Ordering::SeqCst) + 1;
        (marker, self.lock().keys().copied().collect())
    }

    /// The newest marker made (0 before the first).
    pub fn latest(&self) -> u64 {
        self.next_marker.load(Ordering::SeqCst)
    }

    /// Waits until each of `feeds` acknowledged `marker` or ended, or `until`; true when
    /// all did.
    pub async fn wait(&self, marker: u64, feeds: &[u64], until: tokio::time::Instant) -> bool {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let done = {
                let open = self.lock();
                feeds
                    .iter()
                    .all(|id| open.get(id).is_none_or(|acked| *acked >= marker))
            };
            if done {
                return true;
            }
            if tokio::time::timeout_at(until, changed).await.is_err() {
                return false;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        self.feeds.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_marker_is_done_when_every_feed_acked_or_ended() {
        let acks = Arc::new(FeedAcks::default());
        let (a, b) = (acks.open_feed(), acks.open_feed());
        let (marker, feeds) = acks.new_marker();
        let soon = tokio::time::Instant::now() + Duration::from_millis(10);
        assert!(!acks.wait(marker, &feeds, soon).await, "nobody acked yet");
        let waiter = {
            let (acks, feeds) = (acks.clone(), feeds.clone());
            tokio::spawn(async move {
                let later = tokio::time::Instant::now() + Duration::from_secs(600);
                acks.wait(marker, &feeds, later).await
            })
        };
        acks.ack(a, marker);
        acks.close_feed(b);
        assert!(waiter.await.expect("waiter"));
    }

    #[tokio::test]
    async fn no_feed_means_nothing_to_wait_for_and_new_feeds_join_later_markers() {
        let acks = FeedAcks::default();
        let (marker, feeds) = acks.new_marker();
        assert!(feeds.is_empty());
        let now = tokio::time::Instant::now();
        assert!(acks.wait(marker, &feeds, now).await);
        let late = acks.open_feed();
        let (_, feeds) = acks.new_marker();
        assert_eq!(feeds, vec![late]);
    }
}
