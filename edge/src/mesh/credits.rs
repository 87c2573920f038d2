//! Flow control of each relay channel on its own, so that one visitor who stops reading
//! (or one tunnel whose service stops reading an upload) holds up nobody else on the link.
//!
//! russh grants a channel's SSH window again as soon as its data arrives, and holds data
//! back only by not reading the connection while a channel's queue is full (the edge's
//! client sessions use the patched russh's reader-granted windows instead,
//! `io::receive_window`; relay channels are opened by the relaying edge, russh's client
//! side, which has no such setting). On a mesh link, which carries every visitor one edge
//! relays to another, it would stall all of them behind one visitor who stopped reading a
//! download. So each side of a relay channel
//! sends only against credit the other side grants as its reader takes the bytes ("=ID N"
//! lines on the holdings feed, both ways, see `protocol`), and takes every packet off the
//! connection at once ([`CreditedChannel`]): a channel's queue holds at most the credit
//! granted, and the connection is never left unread.
//!
//! On a `v4` feed a channel starts with [`OPENING_CREDIT`] each way ([`FirstCredit::Small`]):
//! the relaying edge raises its window (the visitor's download) to 1 MiB at once with a
//! grant, the holder lets its own (the visitor's upload) grow from there. On `v2` and `v3`
//! feeds a channel starts with [`INITIAL_CREDIT`] each way, which those protocols fix
//! ([`FirstCredit::Full`]). A window then doubles, up to `ssh_window_bytes`, each time its reader
//! has taken everything after data came while the sender was short of credit, so a fast
//! visitor far away gets the bandwidth of a full window, and one that stops reading costs
//! no more than its window. Everything a window holds past what its channel opened with
//! comes from one budget for the whole edge (`io::receive_window`,
//! `relay_window_budget_bytes`), so many visitors who read fast, or read nothing, cannot make
//! the edge hold more than that beyond 32 KiB per relay channel of a `v4` link (1 MiB on
//! older links). At the relaying edge, which knows each channel's tunnel, one tunnel's
//! relayed visitors take a quarter of the budget anywhere and more only while more than a
//! quarter is left ([`TunnelHoldings`]); the holder's windows, which only uploads fill and
//! which grow only while their reader keeps up, have no share.
//!
//! A window is what the sender may use at any time, so it stays in the budget while its
//! channel is open, even with nothing moving: an idle keep-alive connection would keep the
//! 1 MiB it was raised to, and an edge with a few hundred of them would give every new
//! relayed download 32 KiB. On `v4` a side whose channel has been idle for a while (its
//! reader took everything, nothing came since the last sweep, [`IDLE_SWEEP`]) asks the
//! sender for its credit back past 32 KiB (`~ID`); the sender gives it up at once and says
//! how much (`^ID N`), and the window shrinks to what the sender still holds, giving the
//! rest back to the budget. When it sends on the channel again (the visitor's next request)
//! or data comes, the relaying edge raises the window at once as at the open.

use bytes::{Buf, Bytes};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc::UnboundedSender;

use super::protocol::Credit;
use crate::io::receive_window::{ReceiveWindow, WindowLimits, INITIAL_WINDOW, OPENING_WINDOW};

/// Bytes either side may send on a relay channel of a `v2` or `v3` feed before the other
/// grants more.
pub const INITIAL_CREDIT: u32 = INITIAL_WINDOW;

/// Bytes either side may send on a relay channel of a `v4` feed before the other grants
/// more (the relaying edge grants the holder up to 1 MiB at once, out of its budget).
pub const OPENING_CREDIT: u32 = OPENING_WINDOW;

/// How a link's relay channels open, by the feed's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstCredit {
    /// `v2` and `v3`: [`INITIAL_CREDIT`] each way, outside any budget.
    Full,
    /// `v4`: [`OPENING_CREDIT`] each way. This side's window is raised to 1 MiB out of the
    /// budget at once when `raised` (the relaying edge, whose reader is a visitor's
    /// download), else grown only when it holds the sender back (the holder, whose reader
    /// takes a visitor's upload: most relayed requests have no body, and a window raised
    /// for each would spend the budget on nothing).
    Small {
        /// Whether this side raises its windows at once.
        raised: bool,
    },
}

impl FirstCredit {
    /// Credit each side has on a new channel.
    pub fn credit(self) -> u32 {
        match self {
            FirstCredit::Full => INITIAL_CREDIT,
            FirstCredit::Small { .. } => OPENING_CREDIT,
        }
    }
}

/// How often a `v4` link looks for idle channels whose credit to ask back: a channel is idle
/// when nothing came on it between two looks and its reader took everything.
pub const IDLE_SWEEP: std::time::Duration = std::time::Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- sending against credit ----

/// How many more bytes this side may send on one relay channel.
struct SendWindow {
    state: Mutex<SendState>,
}

struct SendState {
    available: u64,
    waker: Option<Waker>,
    /// The channel is gone (closed by the peer, or cut for an overrun): no credit comes.
    closed: bool,
}

impl SendWindow {
    /// No more credit will come: a writer waiting for it gets an error.
    fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        if let Some(w) = state.waker.take() {
            w.wake();
        }
    }
}

/// The send windows of one link's relay channels, by the id the relaying edge gave each.
pub struct SendWindows {
    windows: Mutex<HashMap<u32, Arc<SendWindow>>>,
    /// Credit a new channel has before the other side grants any.
    opening: u32,
}

impl SendWindows {
    /// Send windows that open with `opening` bytes of credit.
    pub fn new(opening: u32) -> SendWindows {
        SendWindows {
            windows: Mutex::new(HashMap::new()),
            opening,
        }
    }

    /// The window of a new relay channel `id`; `None` when a channel with that id is open.
    pub fn open(self: &Arc<Self>, id: u32) -> Option<WindowGuard> {
        let window = Arc::new(SendWindow {
            state: Mutex::new(SendState {
                available: u64::from(self.opening),
                waker: None,
                closed: false,
            }),
        });
        let mut windows = lock(&self.windows);
        if windows.contains_key(&id) {
            return None;
        }
        windows.insert(id, window.clone());
        Some(WindowGuard {
            windows: self.clone(),
            id,
            window,
        })
    }

    /// The peer's grant of `bytes` more on channel `id` (one that has closed meanwhile is
    /// ignored).
    pub fn grant(&self, id: u32, bytes: u32) {
        let Some(window) = lock(&self.windows).get(&id).cloned() else {
            return;
        };
        let mut state = lock(&window.state);
        state.available = state.available.saturating_add(u64::from(bytes));
        if let Some(w) = state.waker.take() {
            w.wake();
        }
    }

    /// The peer asked for channel `id`'s credit back: this side keeps `keep` bytes of what it
    /// may still send and gives up the rest, returned (`None` for a channel that is gone).
    /// `keep` is this link's first credit, the most one write takes (`CreditedWrites`), so a
    /// write already under way when the credit goes stays within what was kept.
    pub fn give_back(&self, id: u32, keep: u32) -> Option<u32> {
        let window = lock(&self.windows).get(&id).cloned()?;
        let mut state = lock(&window.state);
        if state.closed {
            return None;
        }
        let over = state.available.saturating_sub(u64::from(keep));
        let given = u32::try_from(over).unwrap_or(u32::MAX);
        state.available -= u64::from(given);
        Some(given)
    }

    /// Relay channels open with a window.
    #[cfg(test)]
    fn open_channels(&self) -> usize {
        lock(&self.windows).len()
    }
}

/// One relay channel's send window, forgotten when the channel's stream is dropped.
pub struct WindowGuard {
    windows: Arc<SendWindows>,
    id: u32,
    window: Arc<SendWindow>,
}

impl Drop for WindowGuard {
    fn drop(&mut self) {
        lock(&self.windows.windows).remove(&self.id);
    }
}

/// `inner` (a relay channel), writing no more than the other side granted; without a
/// window (a peer that grants no credit) it writes as `inner` does.
pub struct CreditedWrites<S> {
    inner: S,
    window: Option<WindowGuard>,
}

impl<S> CreditedWrites<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, window: Option<WindowGuard>) -> CreditedWrites<S> {
        CreditedWrites { inner, window }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CreditedWrites<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(guard) = &this.window else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        let allowed = {
            let mut state = lock(&guard.window.state);
            // The channel is gone: whatever credit is left, nothing more is sent.
            if state.closed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the relay channel is closed",
                )));
            }
            if state.available == 0 && !buf.is_empty() {
                state.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            // At most what a give-back leaves this side (`SendWindows::give_back`): russh
            // may hold a write's bytes across a `Pending` and count them sent after a
            // give-back took the rest, which must then still cover them.
            usize::try_from(state.available.min(u64::from(guard.windows.opening)))
                .unwrap_or(usize::MAX)
                .min(buf.len())
        };
        let written = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..allowed]))?;
        let mut state = lock(&guard.window.state);
        state.available = state.available.saturating_sub(written as u64);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

// ---- receiving: taking everything, granting as the reader takes it ----

/// What bounds credit on every link of an edge.
#[derive(Clone)]
pub struct CreditLimits {
    /// How large windows grow (`ssh_window_bytes`), out of `relay_window_budget_bytes`.
    window: WindowLimits,
    /// `relay_errors_total{cause="credit_exceeded"}`.
    exceeded: prometheus::IntCounter,
    /// What each tunnel's relay channels hold of the budget, for its share.
    tunnels: Arc<TunnelHoldings>,
}

impl CreditLimits {
    /// Windows within `window`; overruns counted in `exceeded`.
    pub fn new(window: WindowLimits, exceeded: prometheus::IntCounter) -> CreditLimits {
        CreditLimits {
            window,
            exceeded,
            tunnels: Arc::new(TunnelHoldings::default()),
        }
    }
}

/// What the windows of each tunnel's relay channels hold of the relay budget at this edge,
/// by the tunnel's name, while any of them is open (`WindowLimits::for_tunnel`: a tunnel's
/// share is a quarter of the budget, so one tunnel whose relayed visitors stop reading
/// leaves the rest for the others).
#[derive(Default)]
pub struct TunnelHoldings {
    held: Mutex<Holdings>,
}

#[derive(Default)]
struct Holdings {
    by_name: HashMap<String, Weak<AtomicU64>>,
    /// Entries after the last sweep of those no channel holds any more.
    after_sweep: usize,
}

impl TunnelHoldings {
    /// What the windows of `tunnel`'s relay channels hold, shared by them all: kept while a
    /// channel keeps its `Arc`.
    pub fn of(&self, tunnel: &str) -> Arc<AtomicU64> {
        let mut held = lock(&self.held);
        if let Some(h) = held.by_name.get(tunnel).and_then(Weak::upgrade) {
            return h;
        }
        // Names whose channels are all gone are swept whenever the table has doubled since
        // the last sweep: a few steps per new name, however many come and go.
        if held.by_name.len() >= (2 * held.after_sweep).max(64) {
            held.by_name.retain(|_, h| h.strong_count() > 0);
            held.after_sweep = held.by_name.len();
        }
        let h = Arc::new(AtomicU64::new(0));
        held.by_name.insert(tunnel.to_string(), Arc::downgrade(&h));
        h
    }

    /// Names in the table now, swept or not.
    #[cfg(test)]
    fn names(&self) -> usize {
        lock(&self.held).by_name.len()
    }
}

/// One side's credit on one link: ids for the relay channels (the relaying edge numbers
/// them), where grants go (the holdings feed's task writes them to the peer), and the send
/// windows the peer's grants open.
pub struct LinkCredits {
    next_id: AtomicU32,
    grants: UnboundedSender<Credit>,
    limits: CreditLimits,
    opening: FirstCredit,
    /// This side's receive windows on the link.
    window: WindowLimits,
    /// What this side may still send on each channel.
    pub windows: Arc<SendWindows>,
    /// What this side's readers have of each channel (`v4`: for asking idle credit back).
    inboxes: Mutex<HashMap<u32, Weak<Mutex<Inbox>>>>,
}

impl LinkCredits {
    /// Credit for a link whose feed task writes `grants` and whose channels open as
    /// `opening` says. On a `v4` link ([`FirstCredit::Small`]) a task asks idle channels'
    /// credit back every [`IDLE_SWEEP`] for as long as the link's credit is in use.
    pub fn new(
        grants: UnboundedSender<Credit>,
        limits: CreditLimits,
        opening: FirstCredit,
    ) -> Arc<LinkCredits> {
        let window = match opening {
            FirstCredit::Full => limits.window.clone(),
            FirstCredit::Small { raised } => limits.window.opening_small_here(raised),
        };
        let credits = Arc::new(LinkCredits {
            next_id: AtomicU32::new(1),
            grants,
            limits,
            opening,
            window,
            windows: Arc::new(SendWindows::new(opening.credit())),
            inboxes: Mutex::new(HashMap::new()),
        });
        if opening != FirstCredit::Full {
            tokio::spawn(ask_back_idle_credit(Arc::downgrade(&credits)));
        }
        credits
    }

    /// Takes what the peer said about a channel's credit: a grant opens this side's send
    /// window; on `v4`, an ask gives back what this side holds past its first credit, and
    /// a return shrinks this side's window (`Ask` and `Returned` on an older link are not
    /// in its protocol, and are ignored).
    pub fn take(&self, said: Credit) {
        match said {
            Credit::Grant(id, bytes) => self.windows.grant(id, bytes),
            _ if self.opening == FirstCredit::Full => {}
            Credit::Ask(id) => {
                if let Some(given) = self.windows.give_back(id, self.opening.credit()) {
                    let _ = self.grants.send(Credit::Returned(id, given));
                }
            }
            Credit::Returned(id, bytes) => {
                let inbox = lock(&self.inboxes).get(&id).and_then(Weak::upgrade);
                if let Some(inbox) = inbox {
                    let mut inbox = lock(&inbox);
                    if inbox.counted_out {
                        return;
                    }
                    // More than it could still send is not the peer's to give.
                    let holds = inbox.granted.saturating_sub(inbox.received);
                    let given = u64::from(bytes).min(holds);
                    inbox.granted -= given;
                    if let Some(u) = self.window.unread() {
                        u.sub(i64::try_from(given).unwrap_or(i64::MAX));
                    }
                    inbox.asked = false;
                    inbox.returned = true;
                    if let Some(w) = inbox.waker.take() {
                        w.wake();
                    }
                }
            }
        }
    }

    /// What each tunnel's relay channels hold of this edge's budget.
    pub fn tunnels(&self) -> &TunnelHoldings {
        &self.limits.tunnels
    }

    /// A number for a new relay channel (never 0, which means "no credit" to the holder,
    /// nor one still open) and its send window.
    pub fn open_channel(&self) -> (u32, WindowGuard) {
        loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if id == 0 {
                continue;
            }
            if let Some(window) = self.windows.open(id) {
                return (id, window);
            }
        }
    }
}

/// Every [`IDLE_SWEEP`], asks the peer for the credit of this side's idle channels back
/// (their windows past what they opened with: see the module's doc), until the link's
/// credit is dropped.
async fn ask_back_idle_credit(credits: Weak<LinkCredits>) {
    let mut sweep = tokio::time::interval(IDLE_SWEEP);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sweep.tick().await;
    loop {
        sweep.tick().await;
        let Some(credits) = credits.upgrade() else {
            return;
        };
        let opened_with = u64::from(credits.opening.credit());
        let inboxes: Vec<(u32, Arc<Mutex<Inbox>>)> = lock(&credits.inboxes)
            .iter()
            .filter_map(|(id, inbox)| Some((*id, inbox.upgrade()?)))
            .collect();
        for (id, inbox) in inboxes {
            let mut inbox = lock(&inbox);
            let idle = inbox.received == inbox.seen && inbox.chunks.is_empty();
            inbox.seen = inbox.received;
            if idle && !inbox.asked && !inbox.ended && inbox.half_window * 2 > opened_with {
                inbox.asked = true;
                let _ = credits.grants.send(Credit::Ask(id));
            }
        }
    }
}

/// What the drain task has taken off the connection for the reader.
struct Inbox {
    chunks: VecDeque<Bytes>,
    /// Bytes received in all.
    received: u64,
    /// Bytes the sender may send in all (kept here so the drain task can tell an overrun).
    granted: u64,
    /// The sender sent its EOF or closed the channel.
    ended: bool,
    /// The sender sent more than it was granted.
    overrun: bool,
    /// Half the reader's window now (for `tight`).
    half_window: u64,
    /// Data arrived while the sender had less than a quarter window of credit left: if the
    /// reader then takes everything, credit is what held the channel back.
    tight: bool,
    /// Bytes received when the idle sweep last looked.
    seen: u64,
    /// The credit past the first was asked back, and not returned yet.
    asked: bool,
    /// Credit was returned: the reader shrinks its window to what the sender still holds.
    returned: bool,
    /// The reader is gone and its unread credit counted out of the gauge.
    counted_out: bool,
    waker: Option<Waker>,
}

/// A relay channel whose packets a task of its own takes off the connection as they come
/// (see the module's doc); reads take them from there and grant the sender credit for
/// them, writes wait for the other side's credit. `M` is russh's message type of the side
/// (client at the relaying edge, server at the holder).
pub struct CreditedChannel<M: From<(russh::ChannelId, ChannelMsg)> + Send + Sync + 'static> {
    id: u32,
    inbox: Arc<Mutex<Inbox>>,
    drain: tokio::task::JoinHandle<()>,
    writer: CreditedWrites<Pin<Box<dyn AsyncWrite + Send>>>,
    write_half: Option<ChannelWriteHalf<M>>,
    credits: Arc<LinkCredits>,
    receiving: ReceiveWindow,
    /// The window was shrunk after a return: what this side writes next (a new request on
    /// the channel) or the next data raises it again, where windows are raised.
    shrunk: bool,
}

/// Grants the sender of channel `id` what the reader of `window` has taken, once that is
/// worth a line (see [`ReceiveWindow::due`]), on `grants`, and shows it in `unread`.
fn grant(
    window: &ReceiveWindow,
    id: u32,
    grants: &UnboundedSender<Credit>,
    inbox: &mut Inbox,
    unread: Option<&prometheus::IntGauge>,
) {
    inbox.half_window = u64::from(window.window() / 2);
    if let Some(more) = window.due(&mut inbox.granted) {
        if let Some(u) = unread {
            u.add(i64::from(more));
        }
        let _ = grants.send(Credit::Grant(id, more));
    }
}

impl<M: From<(russh::ChannelId, ChannelMsg)> + Send + Sync + 'static> CreditedChannel<M> {
    /// Takes over `read` and `write`, the halves of relay channel `id`, writing on the
    /// credit of `window`; its receive window holds part of `tunnel`'s share of the budget
    /// (what that tunnel's relay channels hold, [`TunnelHoldings::of`]) when given. A
    /// window raised at once is granted now.
    pub fn new(
        id: u32,
        read: ChannelReadHalf,
        write: ChannelWriteHalf<M>,
        credits: Arc<LinkCredits>,
        window: WindowGuard,
        tunnel: Option<Arc<AtomicU64>>,
    ) -> CreditedChannel<M> {
        let receiving = match tunnel {
            Some(held) => ReceiveWindow::new(&credits.window.for_tunnel(held)),
            None => ReceiveWindow::new(&credits.window),
        };
        let opened_with = u64::from(receiving.opened_with());
        let unread = credits.window.unread();
        if let Some(u) = unread {
            u.add(i64::from(receiving.opened_with()));
        }
        let mut first = Inbox {
            chunks: VecDeque::new(),
            received: 0,
            granted: opened_with,
            ended: false,
            overrun: false,
            half_window: opened_with / 2,
            tight: false,
            // Not idle at the first look: an answer may take a while to start.
            seen: u64::MAX,
            asked: false,
            returned: false,
            counted_out: false,
            waker: None,
        };
        grant(&receiving, id, &credits.grants, &mut first, unread);
        let inbox = Arc::new(Mutex::new(first));
        if credits.opening != FirstCredit::Full {
            lock(&credits.inboxes).insert(id, Arc::downgrade(&inbox));
        }
        let drain = tokio::spawn(drain(
            read,
            inbox.clone(),
            window.window.clone(),
            credits.limits.exceeded.clone(),
        ));
        let writer: Pin<Box<dyn AsyncWrite + Send>> = Box::pin(write.make_writer());
        CreditedChannel {
            id,
            inbox,
            drain,
            writer: CreditedWrites::new(writer, Some(window)),
            write_half: Some(write),
            receiving,
            credits,
            shrunk: false,
        }
    }
}

impl<M: From<(russh::ChannelId, ChannelMsg)> + Send + Sync + 'static> CreditedChannel<M> {
    /// Grants the sender what is due now ([`grant`]).
    fn grant_due(&self, inbox: &mut Inbox) {
        let unread = self.credits.window.unread();
        grant(
            &self.receiving,
            self.id,
            &self.credits.grants,
            inbox,
            unread,
        );
    }
}

/// Takes the channel's messages off the connection as they come, until it closes (after
/// the sender's EOF this side may still write, so the channel's close is still watched).
/// Once the channel is gone, or the sender overran its credit, the send window `sending`
/// is closed: no credit comes for it any more.
async fn drain(
    mut read: ChannelReadHalf,
    inbox: Arc<Mutex<Inbox>>,
    sending: Arc<SendWindow>,
    exceeded: prometheus::IntCounter,
) {
    loop {
        let msg = read.wait().await;
        let mut inbox = lock(&inbox);
        let gone = match msg {
            Some(ChannelMsg::Data { data }) if !inbox.ended => {
                inbox.received += data.len() as u64;
                if inbox.received > inbox.granted {
                    tracing::warn!(
                        "a peer edge sent more on a relay channel than it was granted; \
                         the channel is cut off"
                    );
                    exceeded.inc();
                    inbox.overrun = true;
                    inbox.ended = true;
                    true
                } else {
                    // Less than a quarter window left: the grant made at the half-way mark
                    // has not reached the sender in time.
                    if inbox.granted - inbox.received < inbox.half_window / 2 {
                        inbox.tight = true;
                    }
                    if !data.is_empty() {
                        inbox.chunks.push_back(data);
                    }
                    false
                }
            }
            Some(ChannelMsg::Eof) => {
                inbox.ended = true;
                false
            }
            Some(ChannelMsg::Close) | None => {
                inbox.ended = true;
                true
            }
            Some(_) => continue,
        };
        if let Some(w) = inbox.waker.take() {
            w.wake();
        }
        drop(inbox);
        if gone {
            sending.close();
            return;
        }
    }
}

impl<M: From<(russh::ChannelId, ChannelMsg)> + Send + Sync + 'static> AsyncRead
    for CreditedChannel<M>
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut inbox = lock(&this.inbox);
        if std::mem::take(&mut inbox.returned) {
            // The sender gave back its credit past the first: the window shrinks to what it
            // still holds, and the rest goes back to the budget.
            let holds = inbox.granted.saturating_sub(this.receiving.consumed);
            this.receiving.shrink_to(holds);
            inbox.half_window = u64::from(this.receiving.window() / 2);
            this.shrunk = true;
        }
        if this.shrunk && !inbox.chunks.is_empty() {
            // Data again after a shrink: raised as at the open (granted below).
            this.shrunk = false;
            this.receiving.raise();
        }
        let Some(front) = inbox.chunks.front_mut() else {
            if inbox.overrun {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the peer edge sent more than the relay channel's credit",
                )));
            }
            if inbox.ended {
                return Poll::Ready(Ok(()));
            }
            let tight = std::mem::take(&mut inbox.tight);
            this.receiving.ran_dry(tight);
            this.grant_due(&mut inbox);
            inbox.waker = Some(cx.waker().clone());
            return Poll::Pending;
        };
        let n = front.len().min(buf.remaining());
        buf.put_slice(&front[..n]);
        front.advance(n);
        if front.is_empty() {
            inbox.chunks.pop_front();
        }
        this.receiving.consumed += n as u64;
        if let Some(u) = this.credits.window.unread() {
            u.sub(i64::try_from(n).unwrap_or(i64::MAX));
        }
        this.grant_due(&mut inbox);
        Poll::Ready(Ok(()))
    }
}

impl<M: From<(russh::ChannelId, ChannelMsg)> + Send + Sync + 'static> AsyncWrite
    for CreditedChannel<M>
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.shrunk && !buf.is_empty() {
            // A new request on a channel that was idle: the window is raised again, and the
            // grant goes out before the answer can start.
            this.shrunk = false;
            this.receiving.raise();
            let mut inbox = lock(&this.inbox);
            this.grant_due(&mut inbox);
        }
        Pin::new(&mut this.writer).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().writer).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().writer).poll_shutdown(cx)
    }
}

impl<M: From<(russh::ChannelId, ChannelMsg)> + Send + Sync + 'static> Drop for CreditedChannel<M> {
    /// Closes the channel, as russh's own stream does when dropped; the drain task stops
    /// (whatever still comes for the channel is dropped by russh, not queued).
    fn drop(&mut self) {
        self.drain.abort();
        if self.credits.opening != FirstCredit::Full {
            lock(&self.credits.inboxes).remove(&self.id);
        }
        let mut inbox = lock(&self.inbox);
        let left = inbox.granted.saturating_sub(self.receiving.consumed);
        // Counted out here: a return the peer sends for it now changes nothing.
        inbox.counted_out = true;
        drop(inbox);
        if let Some(u) = self.credits.window.unread() {
            u.sub(i64::try_from(left).unwrap_or(i64::MAX));
        }
        let (Some(write), Ok(runtime)) = (
            self.write_half.take(),
            tokio::runtime::Handle::try_current(),
        ) else {
            return;
        };
        runtime.spawn(async move {
            let _ = write.close().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Limits of windows up to `max_window`, growing out of a budget of `budget` bytes.
    fn limits(max_window: u32, budget: u64) -> CreditLimits {
        let exceeded = prometheus::IntCounter::new("exceeded", "exceeded").expect("counter");
        CreditLimits::new(
            crate::io::receive_window::tests::limits(max_window, budget),
            exceeded,
        )
    }

    #[test]
    fn a_window_is_opened_once_per_id_and_forgotten_with_its_channel() {
        let windows = Arc::new(SendWindows::new(INITIAL_CREDIT));
        let first = windows.open(7).expect("a new id");
        assert!(windows.open(7).is_none(), "an id in use is refused");
        windows.grant(7, 10);
        assert_eq!(
            lock(&first.window.state).available,
            u64::from(INITIAL_CREDIT) + 10
        );
        drop(first);
        assert_eq!(windows.open_channels(), 0);
        windows.grant(7, 10); // a late grant for a closed channel changes nothing
        assert!(windows.open(7).is_some(), "the id is free again");
    }

    #[tokio::test]
    async fn the_holder_writes_no_more_than_its_credit_and_goes_on_when_granted() {
        use tokio::io::AsyncWriteExt;
        let windows = Arc::new(SendWindows::new(INITIAL_CREDIT));
        let (sink, mut peer) = tokio::io::duplex(4 * INITIAL_CREDIT as usize);
        let mut writes = CreditedWrites::new(sink, windows.open(1));
        let answer = vec![1u8; INITIAL_CREDIT as usize + 1000];
        let write = tokio::spawn(async move {
            writes.write_all(&answer).await.expect("written");
            writes
        });
        // The credit goes out, then the writer waits.
        let mut got = vec![0u8; INITIAL_CREDIT as usize];
        tokio::io::AsyncReadExt::read_exact(&mut peer, &mut got)
            .await
            .expect("the credit's worth");
        tokio::task::yield_now().await;
        assert!(!write.is_finished(), "the writer waits for credit");
        windows.grant(1, 1000);
        let _writes = write.await.expect("finished once granted");
        let mut rest = vec![0u8; 1000];
        tokio::io::AsyncReadExt::read_exact(&mut peer, &mut rest)
            .await
            .expect("the rest");
    }

    #[tokio::test]
    async fn a_writer_waiting_for_credit_fails_once_the_channel_is_gone() {
        use tokio::io::AsyncWriteExt;
        let windows = Arc::new(SendWindows::new(INITIAL_CREDIT));
        let (sink, _peer) = tokio::io::duplex(4 * INITIAL_CREDIT as usize);
        let guard = windows.open(1).expect("a new id");
        let window = guard.window.clone();
        let mut writes = CreditedWrites::new(sink, Some(guard));
        let write = tokio::spawn(async move {
            writes
                .write_all(&vec![0u8; INITIAL_CREDIT as usize + 1])
                .await
        });
        tokio::task::yield_now().await;
        window.close();
        let result = write.await.expect("the writer ends");
        assert_eq!(
            result.map_err(|e| e.kind()),
            Err(io::ErrorKind::BrokenPipe),
            "no credit will come: the writer is told, not left waiting"
        );
    }

    /// Passes each side's grants to the other side's windows, as the feed does.
    fn wire(grants: tokio::sync::mpsc::UnboundedReceiver<Credit>, to: Arc<LinkCredits>) {
        let mut grants = grants;
        tokio::spawn(async move {
            while let Some(said) = grants.recv().await {
                to.take(said);
            }
        });
    }

    type Link = russh::client::Handle<super::super::links::PeerClient>;

    /// A relay channel over a real SSH link: the relaying edge's side and the holder's, each
    /// credited within its limits as its `FirstCredit` says, their grants passed to each
    /// other as the feed does; the relaying edge's window holds part of `tunnel`'s share.
    async fn channel_pair(
        relaying: (CreditLimits, FirstCredit),
        holding: (CreditLimits, FirstCredit),
        tunnel: Option<&str>,
    ) -> (
        Link,
        CreditedChannel<russh::client::Msg>,
        CreditedChannel<russh::server::Msg>,
    ) {
        let (handle, mut accepted) = super::super::test_link::connect_confirming().await;
        let (client_tx, client_grants) = tokio::sync::mpsc::unbounded_channel();
        let (server_tx, server_grants) = tokio::sync::mpsc::unbounded_channel();
        let client_credits = LinkCredits::new(client_tx, relaying.0, relaying.1);
        let server_credits = LinkCredits::new(server_tx, holding.0, holding.1);
        wire(client_grants, server_credits.clone());
        wire(server_grants, client_credits.clone());

        let (id, window) = client_credits.open_channel();
        let channel = handle
            .channel_open_direct_tcpip("nearhop-relay/http", id, "127.0.0.9", 1)
            .await
            .expect("open");
        let server_channel = accepted.recv().await.expect("the holder's side");
        let server_window = server_credits.windows.open(id).expect("the same number");
        let (read, write) = channel.split();
        let held = tunnel.map(|t| client_credits.tunnels().of(t));
        let client = CreditedChannel::new(id, read, write, client_credits, window, held);
        let (read, write) = server_channel.split();
        let server = CreditedChannel::new(id, read, write, server_credits, server_window, None);
        (handle, client, server)
    }

    /// A body of `size` bytes that shows where each byte belongs.
    fn numbered(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn over_real_ssh_a_window_grows_when_credit_held_the_sender_back() {
        let limits = limits(8 * INITIAL_CREDIT, u64::MAX);
        let full = FirstCredit::Full;
        let (_link, mut client, server) =
            channel_pair((limits.clone(), full), (limits, full), None).await;

        // The holder sends 4 MiB; the visitor reads nothing until the holder has used its
        // whole first credit, then everything.
        let _server = first_credit_then_all(&mut client, server, INITIAL_CREDIT).await;
        assert!(
            client.receiving.window() > INITIAL_CREDIT,
            "the window grew: {}",
            client.receiving.window()
        );
    }

    /// A relay channel of a `v4` link: the relaying edge's windows raised at once out of
    /// `budget` and shown in the returned gauge, the holder's not.
    async fn v4_channel(
        budget: u64,
    ) -> (
        Link,
        CreditedChannel<russh::client::Msg>,
        CreditedChannel<russh::server::Msg>,
        prometheus::IntGauge,
        Arc<crate::io::receive_window::WindowBudget>,
    ) {
        let unread = prometheus::IntGauge::new("unread", "unread").expect("gauge");
        let relaying = limits(8 * INITIAL_CREDIT, budget);
        let budget = relaying.window.budget().clone();
        let relaying = CreditLimits {
            window: relaying.window.clone().showing_unread(unread.clone()),
            ..relaying
        };
        let (link, client, server) = channel_pair(
            (relaying, FirstCredit::Small { raised: true }),
            (
                limits(8 * INITIAL_CREDIT, u64::MAX),
                FirstCredit::Small { raised: false },
            ),
            Some("t.example.test"),
        )
        .await;
        (link, client, server, unread, budget)
    }

    /// The holder sends 4 MiB on `server`: `client`'s reader takes nothing until the holder
    /// has sent `first` bytes (and no more), then takes every byte, in order.
    async fn first_credit_then_all(
        client: &mut CreditedChannel<russh::client::Msg>,
        server: CreditedChannel<russh::server::Msg>,
        first: u32,
    ) -> CreditedChannel<russh::server::Msg> {
        use tokio::io::AsyncReadExt;
        let size = 4 * INITIAL_CREDIT as usize;
        let sender = send_in_background(server, numbered(size));
        assert_eq!(
            sent_before_reading(client, first).await,
            u64::from(first),
            "the holder sends no more than its credit before the visitor reads"
        );
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, numbered(size));
        sender.await.expect("sender")
    }

    /// Sends `body` and then EOF on the holder's side `server`, in a task of its own.
    fn send_in_background(
        mut server: CreditedChannel<russh::server::Msg>,
        body: Vec<u8>,
    ) -> tokio::task::JoinHandle<CreditedChannel<russh::server::Msg>> {
        use tokio::io::AsyncWriteExt;
        tokio::spawn(async move {
            server.write_all(&body).await.expect("sent");
            server.shutdown().await.expect("EOF");
            server
        })
    }

    /// Bytes the holder sent before the visitor read anything: once `expected` have come
    /// (however long that takes), and what came in the next 200 ms (more than `expected`
    /// is an overrun the test should see).
    async fn sent_before_reading(
        client: &CreditedChannel<russh::client::Msg>,
        expected: u32,
    ) -> u64 {
        while lock(&client.inbox).received < u64::from(expected) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        lock(&client.inbox).received
    }

    #[tokio::test]
    async fn on_a_v4_link_a_channel_opens_small_and_the_relaying_edge_raises_it_from_its_budget() {
        let (_link, mut client, server, unread, budget) = v4_channel(u64::MAX).await;
        let raise = u64::from(INITIAL_WINDOW - OPENING_WINDOW);
        assert_eq!(client.receiving.window(), INITIAL_WINDOW, "raised at once");
        assert_eq!(budget.used(), raise, "the raise came out of the budget");
        assert_eq!(unread.get(), i64::from(INITIAL_WINDOW), "granted, unread");
        assert_eq!(
            server.receiving.window(),
            OPENING_CREDIT,
            "the holder's window (the upload) is not raised before it is needed"
        );

        // The holder had the raise: 1 MiB before the visitor reads.
        let server = first_credit_then_all(&mut client, server, INITIAL_CREDIT).await;
        drop(client);
        assert_eq!(unread.get(), 0, "a closed channel leaves nothing unread");
        assert_eq!(budget.used(), 0, "and gives its window back");
        drop(server);
    }

    #[tokio::test]
    async fn on_a_v4_link_with_the_budget_spent_a_channel_keeps_its_32_kib() {
        use tokio::io::AsyncReadExt;
        let (_link, mut client, server, unread, budget) = v4_channel(0).await;
        assert_eq!(client.receiving.window(), OPENING_CREDIT);
        assert_eq!(budget.used(), 0);
        assert_eq!(unread.get(), i64::from(OPENING_CREDIT));
        let size = 3 * INITIAL_CREDIT as usize;
        let sender = send_in_background(server, vec![7u8; size]);
        assert_eq!(
            sent_before_reading(&client, OPENING_CREDIT).await,
            u64::from(OPENING_CREDIT),
            "a visitor who stops reading makes this edge hold 32 KiB, no more"
        );
        let mut got = Vec::new();
        client
            .read_to_end(&mut got)
            .await
            .expect("every byte still comes");
        assert_eq!(got.len(), size);
        let _server = sender.await.expect("sender");
    }

    /// Waits (up to 30 s) until `done` holds.
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..600 {
            if done() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("{what}: not within 30 s");
    }

    #[tokio::test]
    async fn on_a_v4_link_an_idle_channel_gives_its_window_back_and_is_raised_again_by_data() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (_link, mut client, mut server, unread, budget) = v4_channel(u64::MAX).await;
        let raise = u64::from(INITIAL_WINDOW - OPENING_WINDOW);
        // An answer read as it comes, on a connection kept open (no EOF).
        let size = 3 * INITIAL_CREDIT as usize;
        let body = numbered(size);
        let sent = body.clone();
        let sender = tokio::spawn(async move {
            server.write_all(&sent).await.expect("sent");
            server
        });
        let mut got = vec![0u8; size];
        client.read_exact(&mut got).await.expect("the answer");
        assert_eq!(got, body);
        let mut server = sender.await.expect("sender");
        assert!(
            budget.used() >= raise,
            "the window is raised: {}",
            budget.used()
        );

        // Nothing more comes: the reader waits, and after a sweep or two its window's
        // credit is asked back, given back, and the window is 32 KiB again.
        let reader = tokio::spawn(async move {
            let mut next = vec![0u8; INITIAL_CREDIT as usize];
            client.read_exact(&mut next).await.expect("the next answer");
            (client, next)
        });
        until("the idle window is given back", || budget.used() == 0).await;
        assert!(
            unread.get() <= i64::from(OPENING_CREDIT),
            "the holder may send at most 32 KiB now: {}",
            unread.get()
        );

        // The next answer raises it again at once and comes whole.
        let next = numbered(INITIAL_CREDIT as usize);
        server.write_all(&next).await.expect("sent again");
        let (client, got) = reader.await.expect("reader");
        assert_eq!(got, next);
        assert!(
            budget.used() >= raise,
            "raised again by the data: {}",
            budget.used()
        );
        drop(client);
        assert_eq!(budget.used(), 0);
        assert_eq!(unread.get(), 0);
    }

    #[test]
    fn on_a_v4_link_one_write_takes_no_more_than_a_give_back_keeps() {
        let windows = Arc::new(SendWindows::new(OPENING_CREDIT));
        let guard = windows.open(1).expect("a new id");
        windows.grant(1, INITIAL_CREDIT);
        let (sink, _peer) = tokio::io::duplex(4 * INITIAL_CREDIT as usize);
        let mut writes = CreditedWrites::new(sink, Some(guard));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let body = vec![0u8; INITIAL_CREDIT as usize];
        let written = Pin::new(&mut writes).poll_write(&mut cx, &body);
        assert!(
            matches!(written, Poll::Ready(Ok(n)) if n == OPENING_CREDIT as usize),
            "one write of a 1 MiB credit on a v4 link: {written:?}"
        );
    }

    #[test]
    fn a_peer_gives_back_only_what_it_holds_past_its_first_credit() {
        let windows = Arc::new(SendWindows::new(OPENING_CREDIT));
        let guard = windows.open(3).expect("a new id");
        windows.grant(3, INITIAL_CREDIT);
        assert_eq!(windows.give_back(3, OPENING_CREDIT), Some(INITIAL_CREDIT));
        assert_eq!(
            lock(&guard.window.state).available,
            u64::from(OPENING_CREDIT)
        );
        assert_eq!(
            windows.give_back(3, OPENING_CREDIT),
            Some(0),
            "nothing more"
        );
        assert_eq!(
            windows.give_back(4, OPENING_CREDIT),
            None,
            "no such channel"
        );
    }

    #[test]
    fn a_tunnels_holding_is_shared_while_held_and_swept_once_let_go() {
        let tunnels = TunnelHoldings::default();
        let a = tunnels.of("a");
        assert!(Arc::ptr_eq(&a, &tunnels.of("a")), "one counter per tunnel");
        for i in 0..1000 {
            drop(tunnels.of(&format!("gone-{i}")));
        }
        assert!(
            tunnels.names() <= 129,
            "names no channel holds are swept: {} left",
            tunnels.names()
        );
        assert!(Arc::ptr_eq(&a, &tunnels.of("a")), "a held name is kept");
    }

    #[tokio::test]
    async fn without_a_window_writes_are_not_limited() {
        use tokio::io::AsyncWriteExt;
        let (sink, _peer) = tokio::io::duplex(4 * INITIAL_CREDIT as usize);
        let mut writes = CreditedWrites::new(sink, None);
        writes
            .write_all(&vec![0u8; 2 * INITIAL_CREDIT as usize])
            .await
            .expect("no credit needed");
    }
}
