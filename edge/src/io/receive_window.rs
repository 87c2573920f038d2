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
//! window, and one that stops reading costs no more than its window. What windows hold past
//! what the channel opened with comes out of one [`WindowBudget`], so many visitors who stop
//! reading cannot make the edge hold more than that; a channel gives it back when it closes.
//! Tunnel channels open with [`OPENING_WINDOW`] and are raised to [`INITIAL_WINDOW`] out of
//! the budget at once, so their first window is bounded edge-wide too. Relay channels on a
//! `v4` feed open with [`OPENING_WINDOW`] as well: the relaying edge raises its window (the
//! visitor's download) at once, the holder grows its own (the visitor's upload) only as it
//! holds the sender back. On older feeds they open with [`INITIAL_WINDOW`], which those
//! protocols fix, and only their growth is budgeted.
//!
//! Each tunnel has a share of the budget, a quarter of it (of the tunnel budget for visitor
//! channels; of the relay budget for relay channels at the relaying edge, which knows the
//! tunnel when it opens one): past its share, a tunnel's
//! windows take only from what is left above the last quarter, the reserve. One tunnel whose
//! visitors stop reading (or that has many fast ones) can then hold at most three quarters
//! of the budget, and every other tunnel still finds room for full windows in the reserve,
//! up to its own share ([`WindowLimits::for_tunnel`]).

use russh::ChannelId;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes a channel's sender may send before its reader grants more.
pub const INITIAL_WINDOW: u32 = 1024 * 1024;

/// What a tunnel channel opens with (`window_by_reader`), outside any budget: one packet of
/// the 32 KiB that SSH clients send. Its reader raises it to [`INITIAL_WINDOW`] out of the
/// budget as soon as the channel is open, or as far as the budget goes.
pub const OPENING_WINDOW: u32 = 32 * 1024;

/// The share of the tunnel budget each tunnel's windows may hold wherever the rest of the
/// budget is (and the reserve other tunnels' windows are left): one part in this many.
pub const TUNNEL_SHARE_DIVISOR: u64 = 4;

/// What bounds the windows of one kind of channel: the largest a window grows to, and the
/// budget the growth comes out of.
#[derive(Clone)]
pub struct WindowLimits {
    max_window: u32,
    budget: Arc<WindowBudget>,
    /// What the windows of one tunnel's channels hold of the budget now, for its share
    /// ([`WindowLimits::for_tunnel`]); `None`: no share (a holder's relay channels, whose
    /// tunnel is not known when they open).
    held: Option<Arc<AtomicU64>>,
    /// What a channel's window is without the budget: what it opened with.
    opened_with: u32,
    /// Whether a window is raised to [`INITIAL_WINDOW`] out of the budget as soon as its
    /// channel opens (otherwise it grows only when it holds the sender back).
    raised: bool,
    /// Window granted and not yet read, all channels together
    /// (`nearhop_edge_tunnel_window_unread_bytes`, `nearhop_edge_relay_window_unread_bytes`).
    unread: Option<prometheus::IntGauge>,
}

impl WindowLimits {
    /// Windows of channels that open with [`INITIAL_WINDOW`] (relay channels), up to
    /// `max_window` bytes (at least that), growing out of `budget`.
    pub fn new(max_window: u32, budget: Arc<WindowBudget>) -> WindowLimits {
        WindowLimits {
            max_window: max_window.max(INITIAL_WINDOW),
            budget,
            held: None,
            opened_with: INITIAL_WINDOW,
            raised: true,
            unread: None,
        }
    }

    /// Windows of channels that open with [`OPENING_WINDOW`] (tunnel channels), raised to
    /// [`INITIAL_WINDOW`] and grown up to `max_window` out of `budget`; what clients may
    /// still send on them, all together, shown in `unread`.
    pub fn opening_small(
        max_window: u32,
        budget: Arc<WindowBudget>,
        unread: prometheus::IntGauge,
    ) -> WindowLimits {
        WindowLimits {
            max_window: max_window.max(INITIAL_WINDOW),
            budget,
            held: None,
            opened_with: OPENING_WINDOW,
            raised: true,
            unread: Some(unread),
        }
    }

    /// These limits for channels that open with [`OPENING_WINDOW`] (relay channels on a `v4`
    /// feed), raised to [`INITIAL_WINDOW`] out of the budget at once when `raised`, else
    /// grown only when the window holds the sender back.
    pub fn opening_small_here(&self, raised: bool) -> WindowLimits {
        WindowLimits {
            opened_with: OPENING_WINDOW,
            raised,
            ..self.clone()
        }
    }

    /// Where the window granted and not yet read is shown, all channels together.
    pub fn unread(&self) -> Option<&prometheus::IntGauge> {
        self.unread.as_ref()
    }

    /// These limits, with the window granted and not yet read shown in `unread`.
    pub fn showing_unread(self, unread: prometheus::IntGauge) -> WindowLimits {
        WindowLimits {
            unread: Some(unread),
            ..self
        }
    }

    /// These limits for the channels of one tunnel, whose windows hold `held` of the budget
    /// between them: past [`TUNNEL_SHARE_DIVISOR`]'s share of it, they take only from what is
    /// left above the reserve.
    pub fn for_tunnel(&self, held: Arc<AtomicU64>) -> WindowLimits {
        WindowLimits {
            held: Some(held),
            ..self.clone()
        }
    }

    /// The budget windows grow out of.
    #[cfg(test)]
    pub fn budget(&self) -> &Arc<WindowBudget> {
        &self.budget
    }
}

/// The bytes by which receive windows may go past what their channels opened with,
/// edge-wide (`relay_window_budget_bytes` for relay channels, past [`OPENING_WINDOW`] on a
/// `v4` feed and [`INITIAL_WINDOW`] on older ones; `tunnel_window_budget_bytes` for the
/// channels of clients' tunnels, past [`OPENING_WINDOW`]). A window is what its channel may
/// make this edge hold when its reader stops; what it opened with is bounded by the visitor slots, the rest by this. A channel
/// gives back what it took when it closes.
pub struct WindowBudget {
    limit: u64,
    used: AtomicU64,
    /// Bytes taken now (`nearhop_edge_relay_window_grown_bytes`,
    /// `nearhop_edge_tunnel_window_grown_bytes`).
    grown: prometheus::IntGauge,
    /// Growth refused (`..._window_growth_refused_total`).
    refused: prometheus::IntCounter,
    /// Growth cut short by a tunnel's share (`nearhop_edge_tunnel_window_share_limited_total`,
    /// `nearhop_edge_relay_window_share_limited_total`).
    share_limited: Option<prometheus::IntCounter>,
}

impl WindowBudget {
    /// A budget of `limit` bytes, its use shown in `grown`, growth it refused counted in
    /// `refused`.
    pub fn new(
        limit: u64,
        grown: prometheus::IntGauge,
        refused: prometheus::IntCounter,
    ) -> Arc<WindowBudget> {
        Arc::new(WindowBudget::unshared(limit, grown, refused))
    }

    fn unshared(
        limit: u64,
        grown: prometheus::IntGauge,
        refused: prometheus::IntCounter,
    ) -> WindowBudget {
        WindowBudget {
            limit,
            used: AtomicU64::new(0),
            grown,
            refused,
            share_limited: None,
        }
    }

    /// A budget as [`WindowBudget::new`], whose takes for a tunnel cut short by the
    /// tunnel's share are counted in `share_limited`.
    pub fn with_shares(
        limit: u64,
        grown: prometheus::IntGauge,
        refused: prometheus::IntCounter,
        share_limited: prometheus::IntCounter,
    ) -> Arc<WindowBudget> {
        Arc::new(WindowBudget {
            share_limited: Some(share_limited),
            ..WindowBudget::unshared(limit, grown, refused)
        })
    }

    /// Takes up to `bytes` for a window to grow by: what the budget has left of it, 0
    /// (counted as refused) when it is spent. For a tunnel's window (`held`: what that
    /// tunnel's windows hold), only up to its share, or as far as the budget stays above
    /// the reserve, whichever is more. Two channels of one tunnel taking at the same moment
    /// may both count on the same room in its share: a share is kept to within a window.
    fn take(&self, bytes: u64, held: Option<&AtomicU64>) -> u64 {
        if bytes == 0 {
            return 0;
        }
        let share = self.limit / TUNNEL_SHARE_DIVISOR;
        let holds = held.map(|h| h.load(Ordering::Acquire));
        let mut taken = 0;
        let mut by_share = false;
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let free = self.limit.saturating_sub(used);
                let room = match holds {
                    None => free,
                    // The reserve is as large as a share.
                    Some(h) => free.min(share.saturating_sub(h).max(free.saturating_sub(share))),
                };
                taken = bytes.min(room);
                by_share = room < bytes.min(free);
                Some(used + taken)
            });
        if let Some(h) = held {
            h.fetch_add(taken, Ordering::AcqRel);
        }
        if by_share {
            if let Some(c) = &self.share_limited {
                c.inc();
            }
        }
        if taken == 0 {
            self.refused.inc();
        } else {
            self.grown.add(i64::try_from(taken).unwrap_or(i64::MAX));
        }
        taken
    }

    /// Gives back `bytes` a window had taken (`held`: of a tunnel's windows, as taken).
    fn give_back(&self, bytes: u64, held: Option<&AtomicU64>) {
        if bytes == 0 {
            return;
        }
        if let Some(h) = held {
            let _ = h.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                Some(now.saturating_sub(bytes))
            });
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
    /// What the channel opened with: the part of `window` not taken from the budget.
    opened_with: u32,
    budget: Arc<WindowBudget>,
    /// What the windows of this channel's tunnel hold, when it has a share.
    held: Option<Arc<AtomicU64>>,
    /// Whether the window is raised to [`INITIAL_WINDOW`] at once (at the open, and by
    /// [`ReceiveWindow::raise`]).
    raised: bool,
}

impl ReceiveWindow {
    /// A window within `limits`: what the channel opened with, raised to [`INITIAL_WINDOW`]
    /// from the budget (as far as it has room) when the limits say so.
    pub fn new(limits: &WindowLimits) -> ReceiveWindow {
        let opened_with = limits.opened_with.min(INITIAL_WINDOW);
        let mut window = ReceiveWindow {
            consumed: 0,
            window: opened_with,
            max_window: limits.max_window,
            opened_with,
            budget: limits.budget.clone(),
            held: limits.held.clone(),
            raised: limits.raised,
        };
        window.raise();
        window
    }

    /// The sender gave back credit and may now send at most `holds` bytes past what the
    /// reader took: the window shrinks to that (not below what the channel opened with),
    /// and what it held past it goes back to the budget.
    pub fn shrink_to(&mut self, holds: u64) {
        let kept = u32::try_from(holds)
            .unwrap_or(u32::MAX)
            .clamp(self.opened_with, self.window.max(self.opened_with));
        self.budget
            .give_back(u64::from(self.window - kept), self.held.as_deref());
        self.window = kept;
    }

    /// Raises a window below [`INITIAL_WINDOW`] to it out of the budget, as far as the
    /// budget has room, where windows are raised at once (at the open, and again after a
    /// shrink when the channel is used again).
    pub fn raise(&mut self) {
        if self.raised && self.window < INITIAL_WINDOW {
            let taken = self.budget.take(
                u64::from(INITIAL_WINDOW - self.window),
                self.held.as_deref(),
            );
            // At most `INITIAL_WINDOW - window`, a u32.
            self.window += u32::try_from(taken).unwrap_or(0);
        }
    }

    /// What the channel opened with.
    pub fn opened_with(&self) -> u32 {
        self.opened_with
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
            let taken = self
                .budget
                .take(u64::from(grown - self.window), self.held.as_deref());
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
        self.budget.give_back(
            u64::from(self.window - self.opened_with),
            self.held.as_deref(),
        );
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
    /// Window granted and not yet read, all channels together.
    unread: Option<prometheus::IntGauge>,
}

impl<S> GrantedReads<S> {
    /// `inner`, whose window russh grants itself.
    pub fn plain(inner: S) -> GrantedReads<S> {
        GrantedReads {
            inner,
            grants: None,
        }
    }

    /// `inner`, a channel opened with the window `limits` open channels with, that its
    /// reads grant again, within `limits`, to `to`. What the budget adds to that at once
    /// (up to [`INITIAL_WINDOW`]) is granted now.
    pub fn granting(inner: S, to: SessionGrants, limits: &WindowLimits) -> GrantedReads<S> {
        let window = ReceiveWindow::new(limits);
        let granted = u64::from(window.opened_with());
        if let Some(unread) = &limits.unread {
            unread.add(i64::from(window.opened_with()));
        }
        let mut grants = Granting {
            to,
            window,
            granted,
            granted_when_behind: None,
            unread: limits.unread.clone(),
        };
        grants.grant_due();
        GrantedReads {
            inner,
            grants: Some(grants),
        }
    }
}

impl Granting {
    /// The reader took `n` bytes.
    fn took(&mut self, n: usize) {
        self.granted_when_behind.get_or_insert(self.granted);
        if let Some(unread) = &self.unread {
            // A client that sent past its window has no unread window left to take from.
            let within = (n as u64).min(self.granted.saturating_sub(self.window.consumed));
            unread.sub(i64::try_from(within).unwrap_or(i64::MAX));
        }
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
            if let Some(unread) = &self.unread {
                unread.add(i64::from(more));
            }
            (self.to.0)(more);
        }
    }
}

impl Drop for Granting {
    fn drop(&mut self) {
        if let Some(unread) = &self.unread {
            let left = self.granted.saturating_sub(self.window.consumed);
            unread.sub(i64::try_from(left).unwrap_or(i64::MAX));
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

    /// Limits of tunnel channels (opening with [`OPENING_WINDOW`]) up to `max_window`, out of
    /// a budget of `budget` bytes, and the gauge of window granted and not read.
    fn opening_small(max_window: u32, budget: u64) -> (WindowLimits, prometheus::IntGauge) {
        let unread = prometheus::IntGauge::new("unread", "unread").expect("gauge");
        let relay_like = limits(max_window, budget);
        let limits = WindowLimits::opening_small(max_window, relay_like.budget, unread.clone());
        (limits, unread)
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

    /// The window of `reader` now.
    fn window_of(reader: &GrantedReads<tokio::io::DuplexStream>) -> u32 {
        reader.grants.as_ref().expect("granting").window.window()
    }

    const RAISE: u32 = INITIAL_WINDOW - OPENING_WINDOW;

    #[test]
    fn tunnel_channels_open_small_and_take_their_first_window_from_the_budget() {
        // Room for one first window and a half.
        let (limits, unread) = opening_small(8 * INITIAL_WINDOW, u64::from(RAISE) * 3 / 2);
        let budget = limits.budget().clone();
        let (first, _s1, grants1) = granting_pipe(&limits);
        assert_eq!(window_of(&first), INITIAL_WINDOW);
        assert_eq!(
            *grants1.lock().unwrap(),
            vec![RAISE],
            "raised to 1 MiB as soon as the channel is open"
        );
        let (second, _s2, grants2) = granting_pipe(&limits);
        assert_eq!(
            window_of(&second),
            OPENING_WINDOW + RAISE / 2,
            "what was left"
        );
        assert_eq!(*grants2.lock().unwrap(), vec![RAISE / 2]);
        let (third, _s3, grants3) = granting_pipe(&limits);
        assert_eq!(window_of(&third), OPENING_WINDOW, "the budget is spent");
        assert!(grants3.lock().unwrap().is_empty());
        assert_eq!(budget.refused.get(), 1);
        assert_eq!(
            unread.get(),
            i64::from(3 * OPENING_WINDOW + RAISE + RAISE / 2),
            "what the clients may send, all three channels together"
        );
        drop((first, second, third));
        assert_eq!(budget.used(), 0, "every window given back at the close");
        assert_eq!(unread.get(), 0);
    }

    #[test]
    fn one_tunnel_holds_three_quarters_at_most_and_the_others_find_full_windows_in_the_rest() {
        // Room for eight first windows.
        let grown = prometheus::IntGauge::new("grown", "grown").expect("gauge");
        let refused = prometheus::IntCounter::new("refused", "refused").expect("counter");
        let limited = prometheus::IntCounter::new("limited", "limited").expect("counter");
        let unread = prometheus::IntGauge::new("unread", "unread").expect("gauge");
        let budget = WindowBudget::with_shares(u64::from(RAISE) * 8, grown, refused, limited);
        let limits = WindowLimits::opening_small(8 * INITIAL_WINDOW, budget.clone(), unread);
        let flooded_holds = Arc::new(AtomicU64::new(0));
        let flooded = limits.for_tunnel(flooded_holds.clone());
        let visitors: Vec<ReceiveWindow> = (0..8).map(|_| ReceiveWindow::new(&flooded)).collect();
        let full = visitors
            .iter()
            .filter(|w| w.window() == INITIAL_WINDOW)
            .count();
        assert_eq!(full, 6, "three quarters of the budget, no more");
        assert!(visitors[6..].iter().all(|w| w.window() == OPENING_WINDOW));
        assert_eq!(flooded_holds.load(Ordering::Acquire), u64::from(RAISE) * 6);
        assert_eq!(budget.share_limited.as_ref().map(|c| c.get()), Some(2));
        // Another tunnel finds its share, a quarter, in what is left.
        let other_holds = Arc::new(AtomicU64::new(0));
        let other = limits.for_tunnel(other_holds.clone());
        let mut others: Vec<ReceiveWindow> = (0..2).map(|_| ReceiveWindow::new(&other)).collect();
        assert!(others.iter().all(|w| w.window() == INITIAL_WINDOW));
        assert_eq!(budget.used(), u64::from(RAISE) * 8, "the budget is spent");
        others.push(ReceiveWindow::new(&other));
        assert_eq!(others[2].window(), OPENING_WINDOW);
        // A channel of the flooded tunnel that grows takes nothing from the others' room.
        drop(others);
        let mut fast = ReceiveWindow::new(&flooded);
        assert_eq!(
            fast.window(),
            OPENING_WINDOW,
            "past its share, the rest is the reserve"
        );
        fast.ran_dry(true);
        assert_eq!(fast.window(), OPENING_WINDOW);
        drop((visitors, fast));
        assert_eq!(budget.used(), 0, "every window given back");
        assert_eq!(flooded_holds.load(Ordering::Acquire), 0);
        assert_eq!(other_holds.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_reader_that_keeps_up_grants_what_it_took_and_its_window_stays() {
        use tokio::io::AsyncWriteExt;
        let (limits, unread) = opening_small(8 * INITIAL_WINDOW, u64::MAX);
        let (mut reader, mut sender, grants) = granting_pipe(&limits);
        // Well within the window: the sender was never short of it.
        sender.write_all(&vec![1u8; 600 * 1024]).await.unwrap();
        assert_eq!(take_queued(&mut reader).await, 600 * 1024);
        assert_eq!(
            *grants.lock().unwrap(),
            vec![RAISE, 512 * 1024],
            "one grant, at half a window taken: the sender may again have a window in flight"
        );
        assert_eq!(
            window_of(&reader),
            INITIAL_WINDOW,
            "not held back, so no growth"
        );
        assert_eq!(
            unread.get(),
            i64::from(INITIAL_WINDOW + 512 * 1024 - 600 * 1024)
        );
    }

    #[tokio::test]
    async fn a_window_that_held_the_sender_back_grows_and_the_growth_is_granted() {
        use tokio::io::AsyncWriteExt;
        let (limits, unread) = opening_small(4 * INITIAL_WINDOW, u64::MAX);
        let (mut reader, mut sender, grants) = granting_pipe(&limits);
        // The sender spent its whole window before the reader came to it.
        sender
            .write_all(&vec![1u8; INITIAL_WINDOW as usize])
            .await
            .unwrap();
        assert_eq!(take_queued(&mut reader).await, INITIAL_WINDOW as usize);
        assert_eq!(window_of(&reader), 2 * INITIAL_WINDOW, "the window doubled");
        let granted: u64 = grants.lock().unwrap().iter().map(|b| u64::from(*b)).sum();
        assert_eq!(
            u64::from(OPENING_WINDOW) + granted,
            u64::from(INITIAL_WINDOW) + u64::from(2 * INITIAL_WINDOW),
            "what was taken, plus the grown window, may be in flight"
        );
        assert_eq!(unread.get(), i64::from(2 * INITIAL_WINDOW));
        assert_eq!(
            limits.budget().used(),
            u64::from(2 * INITIAL_WINDOW - OPENING_WINDOW)
        );
        drop(reader);
        assert_eq!(
            limits.budget().used(),
            0,
            "the window is given back at the close"
        );
        assert_eq!(unread.get(), 0);
    }

    #[tokio::test]
    async fn a_reader_that_stops_grants_nothing_and_a_spent_budget_grows_nothing() {
        use tokio::io::AsyncWriteExt;
        let (limits, unread) = opening_small(4 * INITIAL_WINDOW, 0);
        let (mut reader, mut sender, grants) = granting_pipe(&limits);
        assert_eq!(
            window_of(&reader),
            OPENING_WINDOW,
            "no budget: the window stays small"
        );
        sender
            .write_all(&vec![1u8; OPENING_WINDOW as usize])
            .await
            .unwrap();
        // Nothing taken: nothing granted, whatever is queued.
        assert!(grants.lock().unwrap().is_empty());
        assert_eq!(unread.get(), i64::from(OPENING_WINDOW));
        assert_eq!(take_queued(&mut reader).await, OPENING_WINDOW as usize);
        assert_eq!(window_of(&reader), OPENING_WINDOW, "no budget, no growth");
        assert_eq!(
            *grants.lock().unwrap(),
            vec![OPENING_WINDOW],
            "what was taken is granted again"
        );
        assert_eq!(unread.get(), i64::from(OPENING_WINDOW));
        assert_eq!(
            limits.budget().refused.get(),
            2,
            "at the open and when it ran dry"
        );
    }
}
