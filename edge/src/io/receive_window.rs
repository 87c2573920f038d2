//! How far a channel's sender may run ahead of the channel's reader: a receive window per
//! channel, granted again as the reader takes the bytes, and grown out of one budget.
//!
//! Two kinds of channel use it. Relay channels between edges grant on the mesh's holdings
//! feed (`mesh::credits`). The channels of clients' tunnels grant with SSH's own window
//! adjustments ([`GrantedReads`]), which the russh this project builds with lets the reader
//! send (`window_by_reader`, `vendor/README.md`): published russh grants a channel's window
//! again as soon as its data arrives, and holds data back only by not reading the whole
//! session while one channel's queue is full, so one visitor who stopped reading stalled
//! every other visitor of the same client.
//!
//! A window starts at [`INITIAL_WINDOW`]. It doubles, up to its largest (`ssh_window_bytes`),
//! each time the reader has taken everything queued while the sender was short of window
//! (less than a quarter left), so a fast visitor far away gets the bandwidth of a full
//! window, and one that stops reading costs no more than its window. What windows grow past
//! their start comes out of one [`WindowBudget`], so many visitors who read fast and then
//! stop cannot make the edge hold more than that; a channel gives its growth back when it
//! closes.

use russh::ChannelId;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes a channel's sender may send before its reader grants more.
pub const INITIAL_WINDOW: u32 = 1024 * 1024;

/// What bounds the windows of one kind of channel: the largest a window grows to, and the
/// budget the growth comes out of.
#[derive(Clone)]
pub struct WindowLimits {
    max_window: u32,
    budget: Arc<WindowBudget>,
}

impl WindowLimits {
    /// Windows of up to `max_window` bytes (at least [`INITIAL_WINDOW`]), growing out of
    /// `budget`.
    pub fn new(max_window: u32, budget: Arc<WindowBudget>) -> WindowLimits {
        WindowLimits {
            max_window: max_window.max(INITIAL_WINDOW),
            budget,
        }
    }

    /// The budget windows grow out of.
    #[cfg(test)]
    pub fn budget(&self) -> &Arc<WindowBudget> {
        &self.budget
    }
}

/// The bytes by which receive windows may grow past [`INITIAL_WINDOW`], edge-wide
/// (`relay_window_budget_bytes` for relay channels, `tunnel_window_budget_bytes` for the
/// channels of clients' tunnels). A window is what its channel may make this edge hold when
/// its reader stops; the initial window is bounded by the visitor slots, growth by this. A
/// channel gives back what it took when it closes.
pub struct WindowBudget {
    limit: u64,
    used: AtomicU64,
    /// Bytes taken now (`nearhop_edge_relay_window_grown_bytes`,
    /// `nearhop_edge_tunnel_window_grown_bytes`).
    grown: prometheus::IntGauge,
    /// Growth refused (`..._window_growth_refused_total`).
    refused: prometheus::IntCounter,
}

impl WindowBudget {
    /// A budget of `limit` bytes, its use shown in `grown`, growth it refused counted in
    /// `refused`.
    pub fn new(
        limit: u64,
        grown: prometheus::IntGauge,
        refused: prometheus::IntCounter,
    ) -> Arc<WindowBudget> {
        Arc::new(WindowBudget {
            limit,
            used: AtomicU64::new(0),
            grown,
            refused,
        })
    }

    /// Takes up to `bytes` for a window to grow by: what the budget has left of it, 0
    /// (counted as refused) when it is spent.
    fn take(&self, bytes: u64) -> u64 {
        let mut taken = 0;
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                taken = bytes.min(self.limit.saturating_sub(used));
                Some(used + taken)
            });
        if taken == 0 {
            self.refused.inc();
        } else {
            self.grown.add(i64::try_from(taken).unwrap_or(i64::MAX));
        }
        taken
    }

    /// Gives back `bytes` a window had taken.
    fn give_back(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
        self.grown.sub(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Bytes taken now.
    #[cfg(test)]
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

/// The reader's side of one channel's window: what it took, how far past that the sender
/// may go. What the window grew by is given back to the budget when it is dropped.
pub struct ReceiveWindow {
    /// Bytes the reader has taken in all.
    pub consumed: u64,
    window: u32,
    max_window: u32,
    budget: Arc<WindowBudget>,
}

impl ReceiveWindow {
    /// A window of [`INITIAL_WINDOW`] within `limits`.
    pub fn new(limits: &WindowLimits) -> ReceiveWindow {
        ReceiveWindow {
            consumed: 0,
            window: INITIAL_WINDOW,
            max_window: limits.max_window,
            budget: limits.budget.clone(),
        }
    }

    /// The window now.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// The reader found nothing queued: when data last came with the sender short of
    /// window (`tight`), the window is what holds this channel back, and grows (doubles, as
    /// far as the budget has room).
    pub fn ran_dry(&mut self, tight: bool) {
        if tight && self.window < self.max_window {
            let grown = self.window.saturating_mul(2).min(self.max_window);
            let taken = self.budget.take(u64::from(grown - self.window));
            // At most `grown - window`, a u32.
            self.window += u32::try_from(taken).unwrap_or(0);
        }
    }

    /// The grant due now, given what was `granted` so far (raised by it): the sender may
    /// then have `window` bytes in flight past what was taken. `None` until that is at
    /// least half a window more, so grants come a few per window, not one per read.
    pub fn due(&self, granted: &mut u64) -> Option<u32> {
        let target = self.consumed + u64::from(self.window);
        let more = target.saturating_sub(*granted);
        if more == 0 || more < u64::from(self.window / 2) {
            return None;
        }
        *granted = target;
        Some(u32::try_from(more).unwrap_or(u32::MAX))
    }
}

impl Drop for ReceiveWindow {
    fn drop(&mut self) {
        self.budget
            .give_back(u64::from(self.window - INITIAL_WINDOW));
    }
}

/// Where a tunnel channel's reader sends its grants: the client's SSH session.
pub struct SessionGrants(Box<dyn Fn(u32) + Send + Sync>);

impl SessionGrants {
    /// Grants on channel `id` (opened by the edge with `window_by_reader`) of the session
    /// behind `handle`.
    pub fn to(handle: russh::server::Handle, id: ChannelId) -> SessionGrants {
        SessionGrants(Box::new(move |bytes| {
            // An error: the session is gone, and the channel with it.
            let _ = handle.grant_window(id, bytes);
        }))
    }
}

/// A tunnel channel's stream whose reads grant the client SSH window as they take its
/// bytes (the module's doc). Without grants it reads as `inner` does: a channel whose window
/// russh grants itself.
pub struct GrantedReads<S> {
    inner: S,
    grants: Option<Granting>,
}

struct Granting {
    to: SessionGrants,
    window: ReceiveWindow,
    /// Window granted in all, the channel's first window included.
    granted: u64,
    /// What had been granted when the reader began taking what is queued now; `None` while
    /// it has taken everything.
    granted_when_behind: Option<u64>,
}

impl<S> GrantedReads<S> {
    /// `inner`, whose window russh grants itself.
    pub fn plain(inner: S) -> GrantedReads<S> {
        GrantedReads {
            inner,
            grants: None,
        }
    }

    /// `inner`, a channel opened with a window of [`INITIAL_WINDOW`] that its reads grant
    /// again, within `limits`, to `to`.
    pub fn granting(inner: S, to: SessionGrants, limits: &WindowLimits) -> GrantedReads<S> {
        GrantedReads {
            inner,
            grants: Some(Granting {
                to,
                window: ReceiveWindow::new(limits),
                granted: u64::from(INITIAL_WINDOW),
                granted_when_behind: None,
            }),
        }
    }
}

impl Granting {
    /// The reader took `n` bytes.
    fn took(&mut self, n: usize) {
        self.granted_when_behind.get_or_insert(self.granted);
        self.window.consumed += n as u64;
        self.grant_due();
    }

    /// The reader found nothing queued. When it caught up with less than a quarter window
    /// left of what had been granted before, the window held the sender back: it grows.
    fn caught_up(&mut self) {
        let Some(granted) = self.granted_when_behind.take() else {
            return;
        };
        let left = granted.saturating_sub(self.window.consumed);
        self.window
            .ran_dry(left < u64::from(self.window.window() / 4));
        self.grant_due();
    }

    fn grant_due(&mut self) {
        if let Some(more) = self.window.due(&mut self.granted) {
            (self.to.0)(more);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GrantedReads<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(grants) = &mut this.grants {
            match &read {
                Poll::Ready(Ok(())) if buf.filled().len() > before => {
                    grants.took(buf.filled().len() - before)
                }
                Poll::Pending => grants.caught_up(),
                _ => {}
            }
        }
        read
    }
}

crate::io::read_buffer::write_through!(GrantedReads);

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Limits of windows up to `max_window`, growing out of a budget of `budget` bytes.
    pub(crate) fn limits(max_window: u32, budget: u64) -> WindowLimits {
        let grown = prometheus::IntGauge::new("grown", "grown").expect("gauge");
        let refused = prometheus::IntCounter::new("refused", "refused").expect("counter");
        WindowLimits::new(max_window, WindowBudget::new(budget, grown, refused))
    }

    #[test]
    fn windows_grow_out_of_one_budget_and_give_it_back_when_they_close() {
        // Room for two windows to double, no more.
        let limits = limits(8 * INITIAL_WINDOW, u64::from(INITIAL_WINDOW) * 2);
        let budget = limits.budget().clone();
        let mut fast = ReceiveWindow::new(&limits);
        let mut other = ReceiveWindow::new(&limits);
        fast.ran_dry(true);
        assert_eq!(fast.window(), 2 * INITIAL_WINDOW);
        assert_eq!(budget.used(), u64::from(INITIAL_WINDOW));
        assert_eq!(budget.grown.get(), i64::from(INITIAL_WINDOW));
        other.ran_dry(true);
        assert_eq!(other.window(), 2 * INITIAL_WINDOW);
        fast.ran_dry(true);
        assert_eq!(fast.window(), 2 * INITIAL_WINDOW, "the budget is spent");
        assert_eq!(budget.refused.get(), 1);
        drop(other);
        assert_eq!(
            budget.used(),
            u64::from(INITIAL_WINDOW),
            "a closed channel gives its growth back"
        );
        fast.ran_dry(true);
        assert_eq!(
            fast.window(),
            3 * INITIAL_WINDOW,
            "a window grows as far as the budget goes"
        );
        assert_eq!(budget.used(), u64::from(2 * INITIAL_WINDOW));
        drop(fast);
        assert_eq!(budget.used(), 0);
        assert_eq!(budget.grown.get(), 0);
    }

    #[test]
    fn a_reader_that_keeps_up_grants_every_half_window_and_its_window_grows() {
        let mut r = ReceiveWindow::new(&limits(4 * INITIAL_WINDOW, u64::MAX));
        let mut granted = u64::from(INITIAL_WINDOW);
        let half = u64::from(INITIAL_WINDOW / 2);
        r.consumed = half - 1;
        assert_eq!(r.due(&mut granted), None, "less than half a window taken");
        r.consumed = half;
        assert_eq!(r.due(&mut granted), Some(INITIAL_WINDOW / 2));
        assert_eq!(granted, half + u64::from(INITIAL_WINDOW));
        assert_eq!(r.due(&mut granted), None, "granted once");
        // Data came while the sender was short of credit, and the reader took it all: the
        // window doubles, up to the largest, and the grant lets a whole window be in flight.
        r.ran_dry(true);
        assert_eq!(r.window(), 2 * INITIAL_WINDOW);
        assert_eq!(r.due(&mut granted), Some(INITIAL_WINDOW));
        assert_eq!(granted, r.consumed + u64::from(2 * INITIAL_WINDOW));
        for _ in 0..5 {
            r.ran_dry(true);
        }
        assert_eq!(
            r.window(),
            4 * INITIAL_WINDOW,
            "no larger than ssh_window_bytes"
        );
    }

    #[test]
    fn a_reader_that_stops_grants_nothing_more_and_its_window_stays() {
        let mut r = ReceiveWindow::new(&limits(32 * INITIAL_WINDOW, u64::MAX));
        let mut granted = u64::from(INITIAL_WINDOW);
        // All the first credit arrived, the visitor took a little and stopped.
        r.consumed = 1000;
        assert_eq!(r.due(&mut granted), None);
        assert_eq!(r.window(), INITIAL_WINDOW);
        // Dry with the sender never short of credit: it is not held back, nothing grows.
        r.ran_dry(false);
        assert_eq!(r.window(), INITIAL_WINDOW);
    }

    /// A reader over one end of a pipe whose other end is the sender, granting into the
    /// returned list.
    fn granting_pipe(
        limits: &WindowLimits,
    ) -> (
        GrantedReads<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        std::sync::Arc<std::sync::Mutex<Vec<u32>>>,
    ) {
        let (reader, sender) = tokio::io::duplex(16 * INITIAL_WINDOW as usize);
        let grants = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = grants.clone();
        let to = SessionGrants(Box::new(move |bytes| sink.lock().unwrap().push(bytes)));
        (GrantedReads::granting(reader, to, limits), sender, grants)
    }

    /// Reads what is queued, 64 KiB at a time, until a read finds nothing; the bytes read.
    async fn take_queued(reader: &mut GrantedReads<tokio::io::DuplexStream>) -> usize {
        let mut taken = 0;
        let mut space = vec![0u8; 64 * 1024];
        loop {
            let mut buf = ReadBuf::new(&mut space);
            let polled = std::future::poll_fn(|cx| {
                Poll::Ready(Pin::new(&mut *reader).poll_read(cx, &mut buf))
            })
            .await;
            match polled {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => taken += buf.filled().len(),
                Poll::Pending => return taken,
                other => panic!("unexpected read: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_reader_that_keeps_up_grants_what_it_took_and_its_window_stays() {
        use tokio::io::AsyncWriteExt;
        let (mut reader, mut sender, grants) = granting_pipe(&limits(8 * INITIAL_WINDOW, u64::MAX));
        // Well within the window: the sender was never short of it.
        sender.write_all(&vec![1u8; 600 * 1024]).await.unwrap();
        assert_eq!(take_queued(&mut reader).await, 600 * 1024);
        assert_eq!(
            *grants.lock().unwrap(),
            vec![512 * 1024],
            "one grant, at half a window taken: the sender may again have a window in flight"
        );
        let window = reader.grants.as_ref().map(|g| g.window.window());
        assert_eq!(window, Some(INITIAL_WINDOW), "not held back, so no growth");
    }

    #[tokio::test]
    async fn a_window_that_held_the_sender_back_grows_and_the_growth_is_granted() {
        use tokio::io::AsyncWriteExt;
        let limits = limits(4 * INITIAL_WINDOW, u64::MAX);
        let (mut reader, mut sender, grants) = granting_pipe(&limits);
        // The sender spent its whole window before the reader came to it.
        sender
            .write_all(&vec![1u8; INITIAL_WINDOW as usize])
            .await
            .unwrap();
        assert_eq!(take_queued(&mut reader).await, INITIAL_WINDOW as usize);
        let g = reader.grants.as_ref().expect("granting");
        assert_eq!(g.window.window(), 2 * INITIAL_WINDOW, "the window doubled");
        let granted: u64 = grants.lock().unwrap().iter().map(|b| u64::from(*b)).sum();
        assert_eq!(
            u64::from(INITIAL_WINDOW) + granted,
            u64::from(INITIAL_WINDOW) + u64::from(2 * INITIAL_WINDOW),
            "what was taken, plus the grown window, may be in flight"
        );
        assert_eq!(limits.budget().used(), u64::from(INITIAL_WINDOW));
        drop(reader);
        assert_eq!(
            limits.budget().used(),
            0,
            "the growth is given back at the close"
        );
    }

    #[tokio::test]
    async fn a_reader_that_stops_grants_nothing_and_a_spent_budget_grows_nothing() {
        use tokio::io::AsyncWriteExt;
        let limits = limits(4 * INITIAL_WINDOW, 0);
        let (mut reader, mut sender, grants) = granting_pipe(&limits);
        sender
            .write_all(&vec![1u8; INITIAL_WINDOW as usize])
            .await
            .unwrap();
        // Nothing taken: nothing granted, whatever is queued.
        assert!(grants.lock().unwrap().is_empty());
        assert_eq!(take_queued(&mut reader).await, INITIAL_WINDOW as usize);
        let g = reader.grants.as_ref().expect("granting");
        assert_eq!(g.window.window(), INITIAL_WINDOW, "no budget, no growth");
        assert_eq!(
            *grants.lock().unwrap(),
            vec![INITIAL_WINDOW / 2, INITIAL_WINDOW / 2],
            "what was taken is granted again, half a window at a time"
        );
    }
}
