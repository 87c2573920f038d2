//! Purges changed names from pdns's packet and query caches through its control socket
//! (what `pdns_control purge NAME` does): connect to `<socket-dir>/pdns.controlsocket`, write
//! one line `purge a b\n`, read the answer until pdns closes the connection.
//!
//! Names are sent without the trailing `$`: in pdns 4.7 `name$` purges the name *and its
//! subtree*, which walks every one of the (1024) shards of both caches under their write
//! locks, while a bare name is an exact purge that touches one shard. Tunnel names have no
//! subtree, and a changed name that has one is reloaded and purged on its own.

use crate::metrics::Metrics;
use crate::store::{Snapshot, Store};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// Names per control-socket command: keeps each line short.
const NAMES_PER_COMMAND: usize = 64;

/// Names changed by one applied batch and the replica position that batch reached.
#[derive(Debug)]
pub struct Batch {
    /// Changed names (storage form); an empty name means "everything".
    pub names: Vec<String>,
    /// Published as the applied position once these names are purged.
    pub lsn: u64,
    /// The snapshot the batch was read under, published with the position.
    pub snapshot: Snapshot,
    /// A full load: the position replaces the published one instead of raising it.
    pub reset: bool,
}

impl Batch {
    /// Folds a later batch into this one: its names are added, and its position and snapshot
    /// (what memory reflects after it) replace these, a later full load resetting the position.
    fn absorb(&mut self, later: Batch) {
        self.names.extend(later.names);
        self.lsn = if later.reset {
            later.lsn
        } else {
            self.lsn.max(later.lsn)
        };
        self.reset |= later.reset;
        self.snapshot = later.snapshot;
    }

    /// Publishes the batch's position and snapshot as what memory now reflects.
    pub fn publish(self, store: &Store, metrics: &Metrics) {
        if self.reset {
            store.reset_applied(self.lsn, self.snapshot);
        } else {
            store.publish(self.lsn, self.snapshot);
        }
        metrics.applied_lsn.set(self.lsn as i64);
    }
}

/// Purges the names of each batch it receives, then publishes the batch's position: so a
/// `/v1/wait` that says `reached` also means pdns's caches no longer hold the old answer.
pub struct Purger {
    socket: PathBuf,
    repeat_after: Vec<Duration>,
    metrics: Arc<Metrics>,
    store: Arc<Store>,
}

impl Purger {
    /// A purger for pdns running with `socket_dir`.
    pub fn new(
        socket_dir: &Path,
        repeat_after: Vec<Duration>,
        metrics: Arc<Metrics>,
        store: Arc<Store>,
    ) -> Purger {
        Purger {
            socket: socket_dir.join("pdns.controlsocket"),
            repeat_after,
            metrics,
            store,
        }
    }

    /// Runs until the sender side is dropped.
    ///
    /// Each batch is purged at once and again after each delay of `repeat_after`: a pdns
    /// thread that fetched the old answer just before the change may store it in its cache
    /// just after the first purge; a repeat removes that entry, so the window for a stale
    /// answer is the last repeat delay, not the cache TTL. The first repeat comes soon
    /// (usually the racing thread stores within microseconds), the last one late enough for
    /// a thread that was descheduled in between.
    pub async fn run(self, mut rx: mpsc::UnboundedReceiver<Batch>) {
        let this = Arc::new(self);
        while let Some(first) = rx.recv().await {
            // Coalesce whatever queued up meanwhile into one round of commands.
            let mut batch = first;
            while let Ok(more) = rx.try_recv() {
                batch.absorb(more);
            }
            let mut names = std::mem::take(&mut batch.names);
            names.sort();
            names.dedup();
            if !names.is_empty() {
                this.purge(&names).await;
            }
            // Published even if the purge failed (logged and counted): holding the position
            // back would stall control's lag race on a pdns problem it cannot fix.
            batch.publish(&this.store, &this.metrics);
            if names.is_empty() {
                continue;
            }
            let later = Arc::clone(&this);
            tokio::spawn(async move {
                let mut waited = Duration::ZERO;
                for delay in later.repeat_after.clone() {
                    tokio::time::sleep(delay.saturating_sub(waited)).await;
                    waited = delay.max(waited);
                    later.purge(&names).await;
                }
            });
        }
    }

    async fn purge(&self, names: &[String]) {
        if names.iter().any(|n| n.is_empty()) {
            self.send("purge\n".to_string()).await;
            return;
        }
        let usable: Vec<&String> = names
            .iter()
            .filter(|n| n.bytes().all(|b| b.is_ascii_graphic()))
            .collect();
        for chunk in usable.chunks(NAMES_PER_COMMAND) {
            let mut line = String::from("purge");
            for n in chunk {
                line.push(' ');
                line.push_str(n);
            }
            line.push('\n');
            self.send(line).await;
        }
    }

    async fn send(&self, line: String) {
        let result = tokio::time::timeout(Duration::from_secs(2), async {
            let mut s = UnixStream::connect(&self.socket).await?;
            s.write_all(line.as_bytes()).await?;
            let mut answer = Vec::new();
            s.read_to_end(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        })
        .await;
        match result {
            Ok(Ok(_)) => self.metrics.purges.with_label_values(&["ok"]).inc(),
            Ok(Err(e)) => {
                self.metrics.purges.with_label_values(&["error"]).inc();
                tracing::warn!(socket = %self.socket.display(), error = %e, "pdns purge failed; cache TTL is the backstop");
            }
            Err(_) => {
                self.metrics.purges.with_label_values(&["timeout"]).inc();
                tracing::warn!(socket = %self.socket.display(), "pdns purge timed out; cache TTL is the backstop");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    #[tokio::test]
    async fn names_are_purged_exactly_before_the_position_is_published() {
        let dir = std::env::temp_dir().join(format!("nearhop-purge-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let sock = dir.join("pdns.controlsocket");
        let _ = std::fs::remove_file(&sock);
        let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
        let store = Arc::new(Store::new());
        let purger = Purger::new(
            &dir,
            vec![Duration::from_secs(3600)],
            Arc::new(Metrics::new()),
            Arc::clone(&store),
        );
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(purger.run(rx));
        tx.send(Batch {
            names: vec!["b.a.tunnel.test".into(), "a.a.tunnel.test".into()],
            lsn: 42,
            snapshot: Snapshot::default(),
            reset: false,
        })
        .expect("send");
        let (stream, _) = listener.accept().await.expect("accept");
        // Not published while pdns has not answered the purge.
        assert_eq!(store.applied_lsn(), 0);
        let (rd, mut wr) = stream.into_split();
        let mut line = String::new();
        tokio::io::BufReader::new(rd)
            .read_line(&mut line)
            .await
            .expect("read");
        assert_eq!(line, "purge a.a.tunnel.test b.a.tunnel.test\n");
        wr.write_all(b"2").await.expect("answer");
        drop(wr);
        let mut rx = store.watch_applied();
        while rx.borrow_and_update().lsn < 42 {
            rx.changed().await.expect("published");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
