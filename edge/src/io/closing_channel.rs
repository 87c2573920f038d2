//! A server-side SSH channel stream that lets the client close the channel first.
//!
//! When the edge is done with a channel, [`ClosingChannel`] sends EOF (if the code using
//! it has not) and waits, in a task of its own, until the client's `CHANNEL_CLOSE` has
//! arrived ([`PeerCloses::closed_by_peer`], called from the session handler's
//! `channel_close`), at most [`LINGER`], and only then drops the stream (whose own close
//! then has nothing left to do). Meanwhile it reads and drops whatever the client still
//! sends on the channel: a visitor channel's window is granted as it is read
//! (`io::receive_window`), so unread, it would hold the client's sending (and its local
//! connection) until [`LINGER`], and the rest of an answer the visitor left could not be
//! told apart (below); a channel whose window russh grants itself would fill its queue, and
//! russh stops reading the whole session while any channel's queue is full. A client answers the EOF
//! once its local side of the connection has closed too, which for an HTTP server that has
//! finished its answer is at once, so the channel ends in the order OpenSSH's own
//! forwarding ends it. A channel the client has not closed after [`LINGER`] is closed by
//! the edge (counted as `first="edge"`).
//!
//! The wait began as a way around russh 0.65 as published, which forgets a channel the
//! server closed first only half: the client's answering `CHANNEL_CLOSE` was ignored, and
//! the session kept the channel's queue (0.5 KiB to about 7 KB) until it ended; a tunnel
//! whose session lived for days grew by 3.7 KiB per visitor request (the soak benchmark).
//! The russh this project builds with (`vendor/README.md`) drops that queue when the
//! answer comes, so a close by the edge no longer costs memory; the wait is kept for the
//! orderly end and the counts.
//!
//! Except the rest of an answer the visitor left (a download given up, a video seeked
//! elsewhere, a reset HTTP/2 stream): the client's local server goes on sending it, and
//! OpenSSH forwards it until it ends, so waiting for the close would cost the developer's
//! upload link up to [`LINGER`] of an answer nobody reads. Once more than [`UNWANTED_MAX`]
//! has come after the edge's EOF, the edge closes the channel at once: the client then
//! closes its local connection and stops. Counted as `first="edge"` and in
//! `nearhop_edge_channels_cut_total`.

use crate::io::discard::{discard, Discarded};
use crate::io::receive_window::{GrantedReads, SessionGrants, WindowLimits};
use prometheus::{IntCounter, IntCounterVec};
use russh::server::Msg;
use russh::{ChannelId, ChannelStream};
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot::{self, error::TryRecvError};
use tokio::sync::Notify;

/// How long a finished channel waits for the client's close before closing it itself.
pub const LINGER: Duration = Duration::from_secs(30);

/// Bytes a client may still send on a channel the edge is done with before the edge closes
/// it at once: the tail of an answer that was about to end (what was in flight) passes, the
/// rest of a download the visitor left does not.
pub const UNWANTED_MAX: u64 = 1 << 20;

/// The edge's counters of finished channels.
#[derive(Clone)]
pub struct CloseCounters {
    /// `nearhop_edge_channels_closed_total`, by `first`.
    pub closed: IntCounterVec,
    /// `nearhop_edge_channels_cut_total`.
    pub cut: IntCounter,
    /// `nearhop_edge_channel_unwanted_bytes_total`.
    pub unwanted_bytes: IntCounter,
}

/// The channels of one SSH session waiting to hear that the client closed them, and how
/// many the edge is still using.
#[derive(Default)]
pub struct PeerCloses {
    waiting: Mutex<HashMap<ChannelId, oneshot::Sender<()>>>,
    /// The edge's counters, once it has set them.
    counters: OnceLock<CloseCounters>,
    /// [`ClosingChannel`]s of the session not dropped yet: visitors in flight (and upstream
    /// channels kept for a visitor connection's next request).
    in_use: AtomicUsize,
    /// Woken when `in_use` drops to 0.
    unused: Notify,
    /// Channels being opened (asked for, not confirmed or refused yet).
    opening: AtomicUsize,
}

/// One channel being opened, counted in [`PeerCloses::begin_open`]'s total until dropped.
pub struct Opening(Arc<PeerCloses>);

impl Drop for Opening {
    fn drop(&mut self) {
        self.0.opening.fetch_sub(1, Ordering::SeqCst);
    }
}

impl PeerCloses {
    /// Counts each channel's close (by `first`: `client` or `edge`), the channels cut and
    /// the bytes read and dropped, in `counters`.
    pub fn count_in(&self, counters: CloseCounters) {
        let _ = self.counters.set(counters);
    }

    fn count(&self, first: &str) {
        if let Some(c) = self.counters.get() {
            c.closed.with_label_values(&[first]).inc();
        }
    }

    fn count_cut(&self) {
        if let Some(c) = self.counters.get() {
            c.cut.inc();
        }
    }

    fn count_unwanted(&self, bytes: usize) {
        if let Some(c) = self.counters.get() {
            c.unwanted_bytes.inc_by(bytes as u64);
        }
    }

    /// Starts listening for the client's close of `id`.
    fn watch(&self, id: ChannelId) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        crate::ssh::link::lock(&self.waiting).insert(id, tx);
        rx
    }

    /// The client closed `id` (from the session handler's `channel_close`).
    pub fn closed_by_peer(&self, id: ChannelId) {
        let waiting = crate::ssh::link::lock(&self.waiting).remove(&id);
        if let Some(tx) = waiting {
            let _ = tx.send(());
            self.count("client");
        }
    }

    /// The session ended: nobody will close anything any more.
    pub fn session_ended(&self) {
        crate::ssh::link::lock(&self.waiting).clear();
    }

    /// Stops listening for the client's close of `id`; false when it came meanwhile (and
    /// was counted as the client's).
    fn forget(&self, id: ChannelId) -> bool {
        crate::ssh::link::lock(&self.waiting).remove(&id).is_some()
    }

    /// Counts one more channel being opened, unless the session's client holds `max`
    /// channels for the edge already: being opened, in use, or finished and waiting for the
    /// client's close. OpenSSH exits when its channel table (16,384) overflows, ending every
    /// tunnel of the connection; a visitor opening and abandoning channels faster than the
    /// client's local service lets them close could get it there.
    pub fn begin_open(self: &Arc<Self>, max: usize) -> Option<Opening> {
        let held = self.opening.fetch_add(1, Ordering::SeqCst)
            + self.in_use.load(Ordering::SeqCst)
            + crate::ssh::link::lock(&self.waiting).len();
        let opening = Opening(self.clone());
        (held < max).then_some(opening)
    }

    /// Waits until the edge uses none of the session's channels (at once when it uses none
    /// now). A stopping edge lets a session go then: no visitor of its tunnels is in flight.
    pub async fn wait_unused(&self) {
        loop {
            let unused = self.unused.notified();
            tokio::pin!(unused);
            unused.as_mut().enable();
            if self.in_use.load(Ordering::SeqCst) == 0 {
                return;
            }
            unused.await;
        }
    }
}

/// A channel's stream that, when dropped, lets the client close the channel first. `S` is
/// the stream over the channel: russh's own, or one with credit (`mesh::credits`).
pub struct ClosingChannel<
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static = GrantedReads<ChannelStream<Msg>>,
> {
    stream: Option<S>,
    id: ChannelId,
    closes: Arc<PeerCloses>,
    peer_closed: Option<oneshot::Receiver<()>>,
    /// EOF was sent through this stream already.
    shut: bool,
}

impl ClosingChannel {
    /// Wraps the stream of `channel`, of the session whose closes `closes` hears; russh
    /// grants the channel's window itself.
    pub fn new(channel: russh::Channel<Msg>, closes: Arc<PeerCloses>) -> ClosingChannel {
        let id = channel.id();
        ClosingChannel::around(GrantedReads::plain(channel.into_stream()), id, closes)
    }

    /// Wraps the stream of `channel`, one the edge opened with `window_by_reader`, whose
    /// reads (the drain after the edge is done included) grant the client its window
    /// through `grants`, within `windows`.
    pub fn granting(
        channel: russh::Channel<Msg>,
        closes: Arc<PeerCloses>,
        grants: SessionGrants,
        windows: &WindowLimits,
    ) -> ClosingChannel {
        let id = channel.id();
        let stream = GrantedReads::granting(channel.into_stream(), grants, windows);
        ClosingChannel::around(stream, id, closes)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> ClosingChannel<S> {
    /// Wraps `stream`, over channel `id` of the session whose closes `closes` hears.
    pub fn around(stream: S, id: ChannelId, closes: Arc<PeerCloses>) -> ClosingChannel<S> {
        let peer_closed = Some(closes.watch(id));
        closes.in_use.fetch_add(1, Ordering::SeqCst);
        ClosingChannel {
            stream: Some(stream),
            id,
            closes,
            peer_closed,
            shut: false,
        }
    }

    fn stream(&mut self) -> io::Result<&mut S> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "channel already closed"))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for ClosingChannel<S> {
    fn drop(&mut self) {
        if self.closes.in_use.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.closes.unused.notify_waiters();
        }
        let (Some(mut stream), Some(mut peer_closed)) =
            (self.stream.take(), self.peer_closed.take())
        else {
            return;
        };
        // The client closed it already, or the session is gone: nothing to wait for.
        if !matches!(peer_closed.try_recv(), Err(TryRecvError::Empty)) {
            let _ = self.closes.forget(self.id);
            return;
        }
        let (closes, id, shut) = (self.closes.clone(), self.id, self.shut);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if !shut {
                let _ = tokio::time::timeout(LINGER, stream.shutdown()).await;
            }
            // What the client still sends is read and dropped while its close is awaited (the
            // reads grant its window): unread, it would hold the client until the linger's
            // end, or, on a channel whose window russh grants itself, fill the queue, and a
            // full queue stops the whole session's reader.
            let closed = async {
                tokio::select! {
                    _ = &mut peer_closed => return Leftovers::End,
                    left = drain(&mut stream, &closes) => {
                        if let Leftovers::TooMuch = left {
                            return left;
                        }
                    }
                }
                // The client's EOF came first (OpenSSH sends its EOF, then its close): the
                // close follows it, and is still awaited (select! dropping the receiver
                // here once left every such channel waiting out LINGER, counted "edge").
                let _ = (&mut peer_closed).await;
                Leftovers::End
            };
            let outcome = tokio::time::timeout(LINGER, closed).await;
            // The client's close may have come while the task stopped waiting (both ready at
            // once in the select!, or at the linger's end): then it closed first, was counted
            // so, and closing costs nothing in russh.
            if closes.forget(id) {
                match outcome {
                    Ok(Leftovers::End) => {}
                    Ok(Leftovers::TooMuch) => {
                        closes.count("edge");
                        closes.count_cut();
                    }
                    Err(_) => closes.count("edge"),
                }
            }
            // Dropping the stream closes the channel if the client has not.
            drop(stream);
        });
    }
}

/// How reading what a client still sent on a finished channel ended.
enum Leftovers {
    /// Its end (EOF, the close, an error), or the client's close while reading.
    End,
    /// More than [`UNWANTED_MAX`] came: the rest of an answer nobody reads.
    TooMuch,
}

/// Reads `stream` to its end (or an error), dropping what comes and counting it, but no
/// further than [`UNWANTED_MAX`].
async fn drain<S: AsyncRead + Unpin>(stream: &mut S, closes: &PeerCloses) -> Leftovers {
    match discard(stream, UNWANTED_MAX, |n| closes.count_unwanted(n)).await {
        Discarded::End => Leftovers::End,
        Discarded::Limit => Leftovers::TooMuch,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for ClosingChannel<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stream()?).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for ClosingChannel<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().stream()?).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().stream()?).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stream()?).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(this.stream()?).poll_shutdown(cx);
        if matches!(result, Poll::Ready(Ok(()))) {
            this.shut = true;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::ssh_encoding::Decode;
    use tokio::io::{duplex, AsyncReadExt};

    fn channel_id(n: u32) -> ChannelId {
        ChannelId::decode(&mut &n.to_be_bytes()[..]).expect("four bytes")
    }

    fn counted(closes: &PeerCloses) -> IntCounterVec {
        counters(closes).closed
    }

    fn counters(closes: &PeerCloses) -> CloseCounters {
        let c = CloseCounters {
            closed: IntCounterVec::new(prometheus::Opts::new("closed", "closed"), &["first"])
                .expect("counter"),
            cut: IntCounter::new("cut", "cut").expect("counter"),
            unwanted_bytes: IntCounter::new("unwanted", "unwanted").expect("counter"),
        };
        closes.count_in(c.clone());
        c
    }

    /// Drops a wrapped stream and plays a client that reads the edge's EOF and sends its
    /// own; returns the client's side.
    async fn finished_channel(closes: &Arc<PeerCloses>, id: ChannelId) -> tokio::io::DuplexStream {
        let (edge_side, mut client) = duplex(1024);
        drop(ClosingChannel::around(edge_side, id, closes.clone()));
        let mut buf = [0u8; 16];
        assert_eq!(
            client.read(&mut buf).await.expect("read"),
            0,
            "the edge's EOF"
        );
        client.shutdown().await.expect("the client's EOF");
        tokio::time::sleep(Duration::from_millis(50)).await;
        client
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_that_follows_the_clients_eof_ends_the_wait() {
        let closes = Arc::new(PeerCloses::default());
        let count = counted(&closes);
        let id = channel_id(7);
        let _client = finished_channel(&closes, id).await;
        closes.closed_by_peer(id);
        tokio::time::sleep(LINGER * 2).await;
        assert_eq!(count.with_label_values(&["client"]).get(), 1);
        assert_eq!(
            count.with_label_values(&["edge"]).get(),
            0,
            "the client closed first; the edge did not wait out LINGER"
        );
        assert!(closes.begin_open(1).is_some(), "nothing held any more");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_closes_is_closed_after_the_linger() {
        let closes = Arc::new(PeerCloses::default());
        let count = counted(&closes);
        let id = channel_id(9);
        let _client = finished_channel(&closes, id).await;
        assert!(
            closes.begin_open(1).is_none(),
            "held while its close is awaited"
        );
        tokio::time::sleep(LINGER * 2).await;
        assert_eq!(count.with_label_values(&["client"]).get(), 0);
        assert_eq!(count.with_label_values(&["edge"]).get(), 1);
        assert!(closes.begin_open(1).is_some(), "let go after the linger");
    }

    /// The edge is done with a channel whose client goes on sending (a download the
    /// visitor left): past `UNWANTED_MAX` the edge closes it at once instead of reading
    /// the rest of the answer for `LINGER`.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_goes_on_sending_is_cut_off_past_the_allowance() {
        let closes = Arc::new(PeerCloses::default());
        let c = counters(&closes);
        let (edge_side, mut client) = duplex(64 * 1024);
        drop(ClosingChannel::around(
            edge_side,
            channel_id(3),
            closes.clone(),
        ));
        let mut buf = [0u8; 16];
        assert_eq!(
            client.read(&mut buf).await.expect("read"),
            0,
            "the edge's EOF"
        );
        let chunk = vec![7u8; 64 * 1024];
        let mut sent = 0u64;
        let stopped = loop {
            match client.write_all(&chunk).await {
                Ok(()) => sent += chunk.len() as u64,
                Err(e) => break e,
            }
            assert!(
                sent < 64 * UNWANTED_MAX,
                "the edge never stopped taking the rest"
            );
        };
        assert_eq!(
            stopped.kind(),
            io::ErrorKind::BrokenPipe,
            "the edge closed the channel"
        );
        assert!(
            sent <= UNWANTED_MAX + 2 * chunk.len() as u64,
            "the edge took {sent} bytes before closing"
        );
        assert!(
            c.unwanted_bytes.get() > UNWANTED_MAX,
            "the bytes read and dropped are counted"
        );
        assert_eq!(c.cut.get(), 1);
        assert_eq!(c.closed.with_label_values(&["edge"]).get(), 1);
        assert!(
            closes.begin_open(1).is_some(),
            "let go at once, not after the linger"
        );
    }

    /// What was in flight when the edge finished (less than the allowance) is read, and
    /// the client's close is still awaited: no cut, no russh entry left behind.
    #[tokio::test(start_paused = true)]
    async fn a_short_tail_is_read_and_the_clients_close_awaited() {
        let closes = Arc::new(PeerCloses::default());
        let c = counters(&closes);
        let id = channel_id(4);
        let (edge_side, mut client) = duplex(64 * 1024);
        drop(ClosingChannel::around(edge_side, id, closes.clone()));
        let mut buf = [0u8; 16];
        assert_eq!(
            client.read(&mut buf).await.expect("read"),
            0,
            "the edge's EOF"
        );
        client
            .write_all(&vec![1u8; 200_000])
            .await
            .expect("the tail is taken");
        client.shutdown().await.expect("the client's EOF");
        tokio::time::sleep(Duration::from_millis(50)).await;
        closes.closed_by_peer(id);
        tokio::time::sleep(LINGER * 2).await;
        assert_eq!(c.unwanted_bytes.get(), 200_000);
        assert_eq!(c.cut.get(), 0);
        assert_eq!(c.closed.with_label_values(&["client"]).get(), 1);
        assert_eq!(c.closed.with_label_values(&["edge"]).get(), 0);
    }

    /// The client's close comes while the rest it sent past the allowance is still queued:
    /// the drain and the close are ready together, and the channel is counted once, as
    /// closed by the client (it was: nothing is left in russh), not as cut too.
    #[tokio::test(start_paused = true)]
    async fn a_close_that_comes_with_a_long_tail_is_counted_once() {
        for _ in 0..40 {
            let closes = Arc::new(PeerCloses::default());
            let c = counters(&closes);
            let id = channel_id(5);
            let (edge_side, mut client) = duplex(4 * 1024 * 1024);
            let mut buf = [0u8; 16];
            client
                .write_all(&vec![2u8; 1_500_000])
                .await
                .expect("the tail is queued");
            client.shutdown().await.expect("the client's EOF");
            drop(ClosingChannel::around(edge_side, id, closes.clone()));
            closes.closed_by_peer(id);
            tokio::time::sleep(LINGER * 2).await;
            let _ = client.read(&mut buf).await;
            let (by_client, by_edge) = (
                c.closed.with_label_values(&["client"]).get(),
                c.closed.with_label_values(&["edge"]).get(),
            );
            assert_eq!((by_client, by_edge, c.cut.get()), (1, 0, 0));
        }
    }
}
