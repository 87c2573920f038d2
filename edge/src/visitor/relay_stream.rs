//! A visitor's HTTP/1.1 requests passed to the peer edge holding their tunnel as bytes.
//!
//! The holder edge parses every relayed request anyway (it routes it, runs the tunnel's
//! phases and proxies it), so the relaying edge need not: it reads each request's head only
//! far enough to route it and find where its body ends, passes head and body on as they
//! came, and copies the holder's answers back as they come, reading their heads only to
//! know where each answer ends ([`http1_frames`]). That spares the relaying edge an HTTP
//! server and an HTTP client per request (docs/benchmarks.md, Edge mesh).
//!
//! The connection leaves this path for hyper's (`visitor::http`) at the first request that
//! goes anywhere else: another name or holder, an upgrade, a head this module leaves to
//! hyper. The edge then waits until every answer owed has come back whole, drops the relay
//! channel, and gives hyper the connection with the next request's bytes. When an answer
//! cannot be framed (it ends when the connection closes, say), the connection is not
//! handed on: it ends after that answer, as it would at any server that answers so. When
//! the holder goes before answering, the requests owed that are safe to send twice are
//! handed to hyper with the connection (`resend`), which sends them again.

use crate::edge::Edge;
use crate::io::read_buffer::Prefixed;
use crate::mesh::links::PeerLink;
use crate::visitor::first_request;
use crate::visitor::http1_frames::{
    scan_answer, scan_head, AnswerBody, AnswerScan, BodyFraming, ChunkedEnd, HeadScan, RequestHead,
};
use crate::visitor::pages;
use crate::visitor::routing::{self, Arrival, Listener, Route};
use crate::visitor::upstream::{self, OpenFailure};
use bytes::{Buf, BytesMut};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Bytes read from the visitor at a time.
const READ_SIZE: usize = 16 * 1024;

/// Bytes of the holder's answers read at a time.
const COPY_SIZE: usize = 64 * 1024;

/// Longest answer head framed; a longer one makes the connection raw.
const MAX_ANSWER_HEAD: usize = 64 * 1024;

/// Most bytes of requests kept to send again should the holder go before answering them.
const MAX_REPLAY: usize = 64 * 1024;

/// Where the connection goes once this path ends.
pub enum After<S> {
    /// It is over.
    Closed,
    /// To hyper, with these bytes read ahead (the next request's start).
    Hyper(S, Vec<u8>),
}

/// Why the requests stopped passing.
enum Next {
    /// The visitor closed its side between requests, left a head unfinished, or the edge
    /// is stopping: the answers owed are still sent.
    Done,
    /// The visitor's last request (`Connection: close`) was passed: the answers owed are
    /// still sent, then the connection ends.
    Last,
    /// A request broke off (the visitor left mid-body, its TLS failed, the channel
    /// failed): the answers owed to the requests before it are still sent, then the
    /// connection ends.
    Broken,
    /// A request's chunked body is malformed: its bytes went to the holder, which reads
    /// the same framing and answers it (400) as it would a visitor of its own; the answers
    /// owed, that one included, are sent as long as they come within a head timeout, then
    /// the connection ends.
    Malformed,
    /// The request at the start of these bytes (none yet, or part of a head) goes
    /// elsewhere, or to hyper.
    Elsewhere(BytesMut),
}

/// How the answers stopped.
#[derive(Debug, PartialEq, Eq)]
enum AnswersEnd {
    /// Every answer owed came back whole, and the requests side asked to stop.
    Clean,
    /// The holder closed the channel between answers, with no answer owed or only answers
    /// to requests that may be sent again (none of their bytes went to the visitor).
    HolderLeft,
    /// The holder closed the channel, or an answer could not be framed, was cut short, or
    /// ended the connection.
    Closed,
}

/// A request passed and not yet answered whole.
struct Owed {
    /// Whether it is a `HEAD` (its answer has no body).
    is_head: bool,
    /// Its bytes, when it may be sent again (see [`MAX_REPLAY`]).
    replay: Option<Vec<u8>>,
}

/// The requests passed and not yet answered, between the two directions of one connection.
#[derive(Default)]
struct Ledger {
    /// The requests passed and not yet answered whole, oldest first.
    owed: Mutex<VecDeque<Owed>>,
    /// When the last answer owed ended (none while one is owed, or before the first).
    idle_since: Mutex<Option<Instant>>,
    /// Set by the requests side when it is done: the answers side stops once none is owed.
    stopping: AtomicBool,
    /// Set by the requests side when a request broke off: the answers side stops once only
    /// that request's answer is owed.
    broken: AtomicBool,
    /// Set by the answers side when the holder closed the channel between answers: the
    /// requests side hands the connection to hyper.
    holder_left: AtomicBool,
    /// Wakes the answers side (stopping or broken was set).
    to_answers: Notify,
    /// Wakes the requests side (the last answer owed ended, or the holder left).
    to_requests: Notify,
}

impl Ledger {
    fn owed(&self) -> MutexGuard<'_, VecDeque<Owed>> {
        self.owed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn idle(&self) -> MutexGuard<'_, Option<Instant>> {
        self.idle_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request (a `HEAD` one when `is_head`) is about to be passed; `replay`: its bytes,
    /// when it may be sent again.
    fn passed(&self, is_head: bool, replay: Option<&[u8]>) {
        let mut owed = self.owed();
        let kept: usize = owed
            .iter()
            .map(|o| o.replay.as_ref().map_or(0, Vec::len))
            .sum();
        let replay = replay
            .filter(|r| kept + r.len() <= MAX_REPLAY)
            .map(<[u8]>::to_vec);
        owed.push_back(Owed { is_head, replay });
        *self.idle() = None;
    }

    /// Whether every request owed (if any) may be sent again.
    fn replayable(&self) -> bool {
        self.owed().iter().all(|o| o.replay.is_some())
    }

    /// The requests owed, to send again: their bytes when every one of them may be (none
    /// when one may not).
    fn replays(&self) -> Option<Vec<u8>> {
        let owed = self.owed();
        let mut bytes = Vec::new();
        for o in owed.iter() {
            bytes.extend_from_slice(o.replay.as_deref()?);
        }
        Some(bytes)
    }

    /// The answer to the oldest request owed has ended.
    fn answered(&self) {
        let mut owed = self.owed();
        owed.pop_front();
        if owed.is_empty() {
            *self.idle() = Some(Instant::now());
            self.to_requests.notify_one();
        }
    }

    /// A request's last byte was passed: when its answer already ended, idle time starts
    /// now, as the holder's does.
    fn request_passed(&self) {
        if self.owed().is_empty() {
            *self.idle() = Some(Instant::now());
        }
    }

    /// Whether the oldest request owed is a `HEAD`; none when nothing is owed.
    fn oldest(&self) -> Option<bool> {
        self.owed().front().map(|o| o.is_head)
    }

    /// How many requests are owed an answer.
    fn owed_count(&self) -> usize {
        self.owed().len()
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.to_answers.notify_one();
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    fn break_off(&self) {
        self.broken.store(true, Ordering::Release);
        self.to_answers.notify_one();
    }

    fn broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    fn holder_leaves(&self) {
        self.holder_left.store(true, Ordering::Release);
        self.to_requests.notify_one();
    }

    fn holder_left(&self) -> bool {
        self.holder_left.load(Ordering::Acquire)
    }
}

/// What stays the same for every request of the connection.
struct Pass<'a> {
    edge: &'a Arc<Edge>,
    link: &'a Arc<PeerLink>,
    host: &'a str,
    visitor: SocketAddr,
    ledger: &'a Ledger,
    requests: IntCounter,
    bytes_in: IntCounter,
}

/// Passes the visitor's requests, `first` (bytes read so far, holding the complete head of
/// the first request, for `host`) on, to the peer behind `link` while they are for `host`
/// and it still holds it.
pub async fn relay<S>(
    edge: &Arc<Edge>,
    link: Arc<PeerLink>,
    host: &str,
    stream: S,
    visitor: SocketAddr,
    scheme: &'static str,
    first: Vec<u8>,
) -> After<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let head = match scan_head(&first) {
        HeadScan::Plain(head) if head.host == host => head,
        _ => return After::Hyper(stream, first),
    };
    let channel = match upstream::relay_channel(edge, &link, host, visitor, scheme).await {
        Ok(channel) => channel,
        // Not tried again: the holder's host stopped answering (see `not_opened`).
        Err(OpenFailure::PeerNotAnswering) => {
            // Counted as the proxy path counts it: a request this edge tried to relay.
            let m = &edge.metrics;
            m.relay_requests_total.with_label_values(&[&link.id]).inc();
            answer_once(
                edge,
                Prefixed::new(first, stream),
                pages::holder_unreachable,
            )
            .await;
            return After::Closed;
        }
        // Nor this: this edge is opening all the relay channels to the holder it may.
        Err(OpenFailure::TunnelBusy) => {
            let m = &edge.metrics;
            m.relay_requests_total.with_label_values(&[&link.id]).inc();
            answer_once(edge, Prefixed::new(first, stream), pages::tunnel_busy).await;
            return After::Closed;
        }
        // Routed again by hyper, which waits out a reconnect and tries again.
        Err(_) => return After::Hyper(stream, first),
    };
    let m = &edge.metrics;
    let ledger = Ledger::default();
    let pass = Pass {
        edge,
        link: &link,
        host,
        visitor,
        ledger: &ledger,
        requests: m.relay_requests_total.with_label_values(&[&link.id]),
        bytes_in: m.visitor_bytes_total.with_label_values(&["in"]),
    };
    let bytes_out = m.visitor_bytes_total.with_label_values(&["out"]);
    let (vr, vw) = tokio::io::split(stream);
    let (cr, cw) = tokio::io::split(channel);
    let failed = m.relay_errors_total.with_label_values(&["request_failed"]);
    let resent = m.relay_errors_total.with_label_values(&["request_resent"]);
    let answers = copy_answers(cr, vw, &ledger, &bytes_out, &failed);
    let requests = pass_requests(&pass, vr, cw, BytesMut::from(&first[..]), head);
    drop(first);
    tokio::pin!(answers, requests);
    tokio::select! {
        (vr, cw, next) = &mut requests => {
            // The answers owed come back whole first (as long as they take: the holder's
            // own limits bound them), then the channel is dropped.
            if matches!(next, Next::Malformed) {
                // Bounded: hyper, at the holder, takes a few framings the scan here
                // refuses (a bare LF in the trailers) and then waits for more body.
                ledger.stop();
                let wait = crate::visitor::http::head_timeout(edge);
                if let Ok((mut vw, _)) = tokio::time::timeout(wait, answers).await {
                    let _ = vw.shutdown().await;
                }
                return After::Closed;
            }
            if matches!(next, Next::Broken) {
                // The answers owed before the broken request, as long as they come within
                // a head timeout (the broken one's answer may wait for a body that never
                // comes, and the connection closes anyway).
                ledger.break_off();
                let wait = crate::visitor::http::head_timeout(edge);
                if let Ok((mut vw, _)) = tokio::time::timeout(wait, answers).await {
                    let _ = vw.shutdown().await;
                }
                return After::Closed;
            }
            ledger.stop();
            let (mut vw, end) = answers.await;
            drop(cw);
            match (next, end) {
                (Next::Elsewhere(pending), AnswersEnd::Clean) => {
                    After::Hyper(vr.unsplit(vw), pending.to_vec())
                }
                (next, AnswersEnd::HolderLeft) => {
                    let unanswered = Unanswered::take(&ledger);
                    let pending = match next {
                        Next::Elsewhere(_) | Next::Last => resend(&ledger, next),
                        _ => None,
                    };
                    unanswered.settle(&ledger, pending.is_some(), &failed, &resent);
                    match pending {
                        Some(pending) => After::Hyper(vr.unsplit(vw), pending),
                        None => {
                            let _ = vw.shutdown().await;
                            After::Closed
                        }
                    }
                }
                _ => {
                    let _ = vw.shutdown().await;
                    After::Closed
                }
            }
        }
        (mut vw, end) = &mut answers => {
            if end == AnswersEnd::HolderLeft {
                // Between answers (the holder stopping, gone, or its tunnel gone): the
                // requests side hands what the visitor sends next to hyper, which routes it
                // afresh, after the requests owed that may be sent twice (any other owed
                // is lost with the channel: then the connection ends, as at the holder).
                let unanswered = Unanswered::take(&ledger);
                ledger.holder_leaves();
                let wait = idle_limit(crate::visitor::http::head_timeout(edge));
                let pending = match tokio::time::timeout(wait, &mut requests).await {
                    Ok((vr, cw, next)) => {
                        drop(cw);
                        resend(&ledger, next).map(|pending| (vr, pending))
                    }
                    Err(_) => None,
                };
                unanswered.settle(&ledger, pending.is_some(), &failed, &resent);
                if let Some((vr, pending)) = pending {
                    return After::Hyper(vr.unsplit(vw), pending);
                }
            }
            // The holder closed the channel during an answer (its own time limits, or it
            // went away), an answer ended the connection or could not be framed: the
            // visitor's connection ends with it.
            let _ = vw.shutdown().await;
            After::Closed
        }
    }
}

/// The requests owed an answer when the holder left without one (handed back, or gone
/// before answering): counted once it is known whether they are sent again.
struct Unanswered(bool);

impl Unanswered {
    fn take(ledger: &Ledger) -> Unanswered {
        Unanswered(ledger.owed_count() > 0)
    }

    /// Sent again (`request_resent`: the visitor may still get its answers), or lost with
    /// the channel (`request_failed`); neither when the visitor's own request broke off.
    fn settle(self, ledger: &Ledger, sent_again: bool, failed: &IntCounter, resent: &IntCounter) {
        if !self.0 {
            return;
        }
        if sent_again {
            resent.inc();
        } else if !ledger.broken() {
            failed.inc();
        }
    }
}

/// What hyper is to take, once the holder left between answers: the requests owed (each
/// one that may be sent twice), then what the visitor sent after them; none when a request
/// owed may not be sent again, or the visitor is done.
fn resend(ledger: &Ledger, next: Next) -> Option<Vec<u8>> {
    let mut bytes = ledger.replays()?;
    let after = match next {
        Next::Elsewhere(pending) => pending,
        // The visitor's last request was answered: the connection ends.
        Next::Last if bytes.is_empty() => return None,
        Next::Last => BytesMut::new(),
        Next::Done | Next::Broken | Next::Malformed => return None,
    };
    if !bytes.is_empty() {
        tracing::debug!(
            bytes = bytes.len(),
            "the holder left before answering; requests sent again"
        );
    }
    bytes.extend_from_slice(&after);
    Some(bytes)
}

/// Where the answers side is in the holder's stream of answers.
enum Answering {
    /// At the start of an answer head.
    Head,
    /// In a body with this many bytes left; the connection ends after it when `close`.
    Length { left: u64, close: bool },
    /// In a chunked body; the connection ends after it when `close`.
    Chunked { end: ChunkedEnd, close: bool },
    /// No framing from here on: bytes are copied until the channel closes.
    Raw,
    /// An answer that ends the connection (`Connection: close`, HTTP/1.0 without
    /// `keep-alive`) has passed whole: the connection ends now, whether or not the holder
    /// closes its side (nothing it sends after that answers anything).
    Ended,
}

impl Answering {
    /// Where the answers side is once an answer ended: at the next head, or (the answer
    /// ended the connection) at the end, so that the connection is never handed on.
    fn after_answer(ledger: &Ledger, close: bool) -> Answering {
        ledger.answered();
        if close {
            Answering::Ended
        } else {
            Answering::Head
        }
    }
}

/// Copies the holder's answers to the visitor, keeping count of the answers owed, until
/// the holder closes the channel or, once the requests side stops, none is owed.
async fn copy_answers<C, S>(
    mut from: ReadHalf<C>,
    mut to: WriteHalf<S>,
    ledger: &Ledger,
    bytes_out: &IntCounter,
    failed: &IntCounter,
) -> (WriteHalf<S>, AnswersEnd)
where
    C: AsyncRead,
    S: AsyncWrite,
{
    let mut buf = BytesMut::with_capacity(COPY_SIZE);
    let mut at = Answering::Head;
    loop {
        let ready = frame_answers(&mut at, &buf, ledger);
        if ready > 0 {
            // Flushed at once: a TLS stream holds what it is given until then.
            let written = match to.write_all(&buf[..ready]).await {
                Ok(()) => to.flush().await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                tracing::debug!(error = %e, "visitor went away during an answer");
                return (to, AnswersEnd::Closed);
            }
            bytes_out.inc_by(ready as u64);
            buf.advance(ready);
        }
        if matches!(at, Answering::Ended) {
            return (to, AnswersEnd::Closed);
        }
        let between = matches!(at, Answering::Head) && buf.is_empty();
        if between && ledger.stopping() && ledger.oldest().is_none() {
            return (to, AnswersEnd::Clean);
        }
        // A request broke off: the answers owed before it have been sent.
        if between && ledger.broken() && ledger.owed_count() <= 1 {
            return (to, AnswersEnd::Closed);
        }
        buf.reserve(COPY_SIZE);
        let read = tokio::select! {
            r = from.read_buf(&mut buf) => r,
            // Looked at again above: the requests side stopped.
            _ = ledger.to_answers.notified() => continue,
        };
        match read {
            Ok(n) if n > 0 => {}
            // Between answers with none owed: the connection can go on without the channel
            // (the requests side may have stopped meanwhile: then it is a clean end).
            _ if between && ledger.oldest().is_none() => {
                let end = if ledger.stopping() {
                    AnswersEnd::Clean
                } else {
                    AnswersEnd::HolderLeft
                };
                return (to, end);
            }
            // Before any byte of the next answer went to the visitor (what `buf` holds is
            // an answer head not yet complete), with every request owed one that may be
            // sent again: hyper can take them.
            // (The holder handed them back, or went before answering: whether they failed
            // is known once they are sent again or not: `Unanswered::settle`.)
            _ if matches!(at, Answering::Head) && ledger.replayable() => {
                return (to, AnswersEnd::HolderLeft);
            }
            // The channel's end ends an answer without framing (one delimited by the
            // close, as hyper sends a streamed body to an HTTP/1.0 visitor, or an upgraded
            // connection): no failure. Any other answer was cut short.
            Ok(_) => {
                if !ledger.broken() && !matches!(at, Answering::Raw) {
                    failed.inc();
                }
                return (to, AnswersEnd::Closed);
            }
            Err(e) => {
                tracing::debug!(error = %e, "relay channel ended");
                if !ledger.broken() {
                    failed.inc();
                }
                return (to, AnswersEnd::Closed);
            }
        }
    }
}

/// Follows the answers in `buf` from `at`; returns how many of its bytes can go to the
/// visitor now (the rest is the start of an answer head still incomplete).
fn frame_answers(at: &mut Answering, buf: &[u8], ledger: &Ledger) -> usize {
    let mut ready = 0;
    loop {
        let rest = &buf[ready..];
        match at {
            Answering::Raw => return buf.len(),
            Answering::Ended => return ready,
            Answering::Head if rest.is_empty() => return ready,
            Answering::Head => {
                // Bytes when no answer is owed are not an answer to anything passed.
                let Some(to_head) = ledger.oldest() else {
                    *at = Answering::Raw;
                    continue;
                };
                match scan_answer(rest, to_head) {
                    AnswerScan::Partial if rest.len() < MAX_ANSWER_HEAD => return ready,
                    AnswerScan::Partial | AnswerScan::Unframed => *at = Answering::Raw,
                    AnswerScan::Head {
                        len,
                        status,
                        body,
                        close,
                    } => {
                        ready += len;
                        if status == 101 {
                            *at = Answering::Raw;
                        } else if (100..200).contains(&status) {
                            // Informational (`100 Continue`): the final answer follows.
                        } else {
                            *at = match body {
                                AnswerBody::Empty => Answering::after_answer(ledger, close),
                                AnswerBody::Length(left) => Answering::Length { left, close },
                                AnswerBody::Chunked => Answering::Chunked {
                                    end: ChunkedEnd::default(),
                                    close,
                                },
                                AnswerBody::UntilClose => Answering::Raw,
                            };
                        }
                    }
                }
            }
            Answering::Length { left, close } => {
                let take = (*left).min(rest.len() as u64);
                ready += take as usize;
                *left -= take;
                if *left > 0 {
                    return ready;
                }
                *at = Answering::after_answer(ledger, *close);
            }
            Answering::Chunked { end, close } => match end.advance(rest) {
                Ok(Some(n)) => {
                    ready += n;
                    *at = Answering::after_answer(ledger, *close);
                }
                Ok(None) => return buf.len(),
                Err(_) => *at = Answering::Raw,
            },
        }
    }
}

/// Passes requests, starting with `head` at the start of `buf`, while they go to the same
/// place.
async fn pass_requests<S, C>(
    pass: &Pass<'_>,
    mut from: ReadHalf<S>,
    mut to: WriteHalf<C>,
    mut buf: BytesMut,
    mut head: RequestHead,
) -> (ReadHalf<S>, WriteHalf<C>, Next)
where
    S: AsyncRead,
    C: AsyncWrite,
{
    let next = loop {
        pass.requests.inc();
        let replay = head.replayable.then(|| &buf[..head.len]);
        pass.ledger.passed(head.is_head, replay);
        match pass_one(pass, &mut from, &mut to, &mut buf, &head).await {
            Ok(()) => {}
            // The body's bytes as far as the visitor sent them went to the holder, which
            // reads the same malformed framing and answers it (400), as it would a visitor
            // of its own: that answer goes back, then the connection ends.
            Err(e) if MalformedBody::is(&e) => {
                tracing::debug!(error = %e, "relayed request's body is malformed");
                pass.ledger.request_passed();
                break Next::Malformed;
            }
            Err(e) => {
                tracing::debug!(error = %e, "relayed request cut short");
                break Next::Broken;
            }
        }
        // An answer may end before its request's body does (a refusal while the upload
        // goes on): the holder's idle time starts only now.
        pass.ledger.request_passed();
        // The visitor said it sends nothing more: the connection ends after the answers.
        if head.close {
            break Next::Last;
        }
        match next_head(pass, &mut from, &mut buf).await {
            Some(HeadScan::Plain(next)) if goes_along(pass, &next) => head = next,
            Some(_) => break Next::Elsewhere(buf),
            None => break Next::Done,
        }
    };
    (from, to, next)
}

/// Whether a request for `head`'s host goes to the same holder over the same channel (a
/// relay channel carries one name: see `UpstreamKey::Peer`).
fn goes_along(pass: &Pass<'_>, head: &RequestHead) -> bool {
    // A stopping edge lets the answers owed finish, then hands the connection to hyper,
    // which closes it at the request's end as on the direct path.
    if head.host != pass.host || pass.link.stop.is_cancelled() || pass.edge.shutdown.is_cancelled()
    {
        return false;
    }
    let route = routing::route_quietly(
        pass.edge,
        Listener::Http,
        &head.host,
        pass.visitor,
        Arrival::Direct,
    );
    matches!(route, Route::Relay(link) if Arc::ptr_eq(&link, pass.link))
}

/// Passes one request whose head is at the start of `buf`: the head and its body, as far as
/// its framing says; bytes after it stay in `buf`.
async fn pass_one<R, W>(
    pass: &Pass<'_>,
    from: &mut R,
    to: &mut W,
    buf: &mut BytesMut,
    head: &RequestHead,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match head.body {
        BodyFraming::Empty => send(pass, to, buf, head.len).await,
        BodyFraming::Length(len) => {
            let here = (buf.len() - head.len) as u64;
            let take = here.min(len);
            send(pass, to, buf, head.len + take as usize).await?;
            let mut left = len - take;
            while left > 0 {
                read_more(from, buf).await?;
                let take = (buf.len() as u64).min(left);
                send(pass, to, buf, take as usize).await?;
                left -= take;
            }
            Ok(())
        }
        BodyFraming::Chunked => {
            let mut chunked = ChunkedEnd::default();
            let mut at = head.len;
            loop {
                let Ok(end) = chunked.advance(&buf[at..]) else {
                    let all = buf.len();
                    send(pass, to, buf, all).await?;
                    return Err(io::Error::new(io::ErrorKind::InvalidData, MalformedBody));
                };
                if let Some(n) = end {
                    return send(pass, to, buf, at + n).await;
                }
                let all = buf.len();
                send(pass, to, buf, all).await?;
                read_more(from, buf).await?;
                at = 0;
            }
        }
    }
}

/// A request's chunked body that does not follow its framing; told apart from the other
/// errors of a body's bytes (a TLS record that fails, also `InvalidData`) by its type.
#[derive(Debug, thiserror::Error)]
#[error("malformed chunked body")]
struct MalformedBody;

impl MalformedBody {
    fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<MalformedBody>())
    }
}

/// Writes the first `n` bytes of `buf` to the channel and drops them from `buf`.
async fn send<W: AsyncWrite + Unpin>(
    pass: &Pass<'_>,
    to: &mut W,
    buf: &mut BytesMut,
    n: usize,
) -> io::Result<()> {
    if n > 0 {
        to.write_all(&buf[..n]).await?;
        pass.bytes_in.inc_by(n as u64);
        buf.advance(n);
    }
    Ok(())
}

/// Reads more of a request's body into `buf`; the visitor closing mid-body is an error.
async fn read_more<R: AsyncRead + Unpin>(from: &mut R, buf: &mut BytesMut) -> io::Result<()> {
    buf.reserve(READ_SIZE);
    match from.read_buf(buf).await? {
        0 => Err(io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(()),
    }
}

/// How long a relayed connection may stay idle (no answer owed, no request begun) before
/// the relaying edge closes it: a second less than the holder's own limit, hyper's head
/// timeout, which starts when the holder sends its last answer. Closed here first, a
/// request cannot cross the holder's close on its way.
fn idle_limit(head_timeout: Duration) -> Duration {
    head_timeout
        .saturating_sub(Duration::from_secs(1))
        .max(head_timeout / 2)
}

/// The next request's head: none when the visitor closes between requests, the edge stops,
/// the connection stays idle past [`idle_limit`], or a head it began does not arrive in
/// time (hyper's head timeout). Left to hyper, which routes it afresh: too long a head
/// (hyper refuses it), a head begun but not complete when the idle limit comes (the holder
/// would close before it could be passed), and whatever comes after the holder left.
async fn next_head<R: AsyncRead + Unpin>(
    pass: &Pass<'_>,
    from: &mut R,
    buf: &mut BytesMut,
) -> Option<HeadScan> {
    let edge = pass.edge;
    let max_head = edge.config.visitor_max_header_bytes.max(8192);
    let head_timeout = crate::visitor::http::head_timeout(edge);
    let idle = idle_limit(head_timeout);
    // A head already begun must be complete in time.
    let mut deadline = (!buf.is_empty()).then(|| Instant::now() + head_timeout);
    let mut scanned = 0;
    loop {
        if pass.ledger.holder_left() {
            return Some(HeadScan::ForHyper);
        }
        if !buf.is_empty() && (scanned == 0 || first_request::has_head_end(buf, scanned)) {
            match scan_head(buf) {
                HeadScan::Partial => {}
                other => return Some(other),
            }
        }
        if buf.len() >= max_head {
            return Some(HeadScan::ForHyper);
        }
        scanned = buf.len();
        buf.reserve(READ_SIZE);
        // Idle is counted from the end of the last answer owed (none while one is owed).
        let idle_until = (*pass.ledger.idle()).map(|since| since + idle);
        let read = tokio::select! {
            r = from.read_buf(buf) => r,
            _ = edge.shutdown.cancelled() => return None,
            // Looked at again above: the last answer owed ended, or the holder left.
            _ = pass.ledger.to_requests.notified() => continue,
            _ = sleep_until_some(idle_until) => {
                if buf.is_empty() {
                    tracing::debug!("relayed visitor connection idle; closed");
                    return None;
                }
                return Some(HeadScan::ForHyper);
            }
            _ = sleep_until_some(deadline) => {
                tracing::debug!("visitor sent no complete request head in time");
                return None;
            }
        };
        match read {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        deadline.get_or_insert_with(|| Instant::now() + head_timeout);
    }
}

/// Sleeps until `at`; for ever when there is none.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Answers the visitor's request with `page` (one of this edge's own, a 5xx) and closes.
async fn answer_once<S>(edge: &Edge, stream: S, page: fn() -> hyper::Response<pages::ProxyBody>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    edge.metrics
        .http_responses_total
        .with_label_values(&["5xx", "relay"])
        .inc();
    let service = service_fn(move |_req| async move { Ok::<_, Infallible>(page()) });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(false);
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, "answering a relayed visitor with a page of this edge");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ledger: &Ledger, at: &mut Answering, bytes: &[u8]) -> usize {
        frame_answers(at, bytes, ledger)
    }

    #[test]
    fn answers_are_counted_off_as_they_end_whatever_pieces_they_come_in() {
        let ledger = Ledger::default();
        for is_head in [false, true, false, false] {
            ledger.passed(is_head, None);
        }
        let answers = b"HTTP/1.1 100 Continue\r\n\r\n\
            HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello\
            HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n\
            HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
            HTTP/1.1 204 No Content\r\n\r\n";
        let mut at = Answering::Head;
        let mut buf: Vec<u8> = Vec::new();
        let mut sent = 0;
        for piece in answers.chunks(7) {
            buf.extend_from_slice(piece);
            let ready = frame(&ledger, &mut at, &buf);
            sent += ready;
            buf.drain(..ready);
        }
        assert_eq!(sent, answers.len(), "every byte went to the visitor");
        assert!(ledger.oldest().is_none(), "four answers for four requests");
        assert!(matches!(at, Answering::Head));
        assert!(ledger.idle().is_some());
    }

    #[test]
    fn an_incomplete_head_waits_and_unframed_answers_turn_the_rest_raw() {
        let ledger = Ledger::default();
        ledger.passed(false, None);
        let mut at = Answering::Head;
        assert_eq!(frame(&ledger, &mut at, b"HTTP/1.1 200 OK\r\nCont"), 0);
        // An answer that ends when the connection closes: raw from its head on.
        let close = b"HTTP/1.0 200 OK\r\n\r\nbody until close";
        assert_eq!(frame(&ledger, &mut at, close), close.len());
        assert!(matches!(at, Answering::Raw));
        assert_eq!(ledger.oldest(), Some(false), "still owed: never handed on");

        // Bytes when nothing is owed are no answer.
        let ledger = Ledger::default();
        let mut at = Answering::Head;
        assert_eq!(frame(&ledger, &mut at, b"HTTP/1.1 200 OK\r\n\r\n"), 19);
        assert!(matches!(at, Answering::Raw));
    }

    #[test]
    fn an_answer_that_ends_the_connection_is_the_last_passed() {
        let ledger = Ledger::default();
        ledger.passed(false, None);
        ledger.passed(false, None);
        let mut at = Answering::Head;
        let answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(frame(&ledger, &mut at, answer), answer.len());
        assert!(matches!(at, Answering::Ended), "never handed on after it");
        assert_eq!(ledger.owed_count(), 1, "its request was answered");
        // Nothing the holder sends after it passes.
        assert_eq!(frame(&ledger, &mut at, b"HTTP/1.1 200 OK\r\n\r\n"), 0);
    }

    /// A visitor stream that holds what it is given until flushed (as a TLS stream holds
    /// what it could not yet write to its socket) gets each answer whole all the same.
    #[tokio::test(start_paused = true)]
    async fn answers_are_flushed_to_the_visitor_as_they_pass() {
        let (holder, channel) = tokio::io::duplex(1 << 16);
        let (visitor, edge_side) = tokio::io::duplex(1 << 16);
        let buffering = tokio::io::BufWriter::with_capacity(1 << 20, edge_side);
        let ledger = Arc::new(Ledger::default());
        ledger.passed(false, None);
        let copying = {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                let (from, _) = tokio::io::split(channel);
                let (_, to) = tokio::io::split(buffering);
                let bytes = IntCounter::new("bytes", "bytes").expect("counter");
                let failed = IntCounter::new("failed", "failed").expect("counter");
                copy_answers(from, to, &ledger, &bytes, &failed).await.1
            })
        };
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        let (_holder_reads, mut holder) = tokio::io::split(holder);
        holder.write_all(answer).await.expect("holder writes");
        let (mut visitor, _visitor_writes) = tokio::io::split(visitor);
        let mut got = vec![0u8; answer.len()];
        let read = tokio::time::timeout(Duration::from_secs(3600), visitor.read_exact(&mut got));
        assert!(
            read.await.is_ok(),
            "the answer reached the visitor without waiting for another"
        );
        assert_eq!(&got, answer);
        assert!(ledger.oldest().is_none());
        copying.abort();
    }

    /// An answer that ends the connection ends it at the relaying edge though the holder
    /// keeps its side open (as hyper does after an HTTP/1.0 answer to an HTTP/1.1 request):
    /// the visitor's connection does not wait for the holder's idle limit.
    #[tokio::test(start_paused = true)]
    async fn an_answer_that_ends_the_connection_ends_it_though_the_holder_stays() {
        let (holder, channel) = tokio::io::duplex(1 << 16);
        let (visitor, edge_side) = tokio::io::duplex(1 << 16);
        let ledger = Ledger::default();
        ledger.passed(false, None);
        let (from, _) = tokio::io::split(channel);
        let (_, to) = tokio::io::split(edge_side);
        let (_holder_reads, mut holder) = tokio::io::split(holder);
        let answer = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi";
        holder.write_all(answer).await.expect("holder writes");
        let bytes = IntCounter::new("bytes", "bytes").expect("counter");
        let failed = IntCounter::new("failed", "failed").expect("counter");
        let copying = copy_answers(from, to, &ledger, &bytes, &failed);
        let (mut to, end) = tokio::time::timeout(Duration::from_secs(3600), copying)
            .await
            .expect("the answers side ended with the answer, the holder still there");
        assert!(end == AnswersEnd::Closed, "the connection is not handed on");
        assert_eq!(
            failed.get(),
            0,
            "an answer that ends the connection is no failure"
        );
        to.shutdown().await.expect("shutdown");
        let (mut visitor, _visitor_writes) = tokio::io::split(visitor);
        let mut got = Vec::new();
        visitor.read_to_end(&mut got).await.expect("visitor reads");
        assert_eq!(got, answer);
        assert!(ledger.oldest().is_none());
        drop(holder);
    }

    /// A holder that closes the channel with an answer owed is a relayed request that
    /// failed (`relay_errors_total{cause="request_failed"}`), as on the proxying path, unless
    /// no byte of the answer went to the visitor and every request owed may be sent again:
    /// then the connection goes back to hyper (`HolderLeft`), and `Unanswered::settle`
    /// counts them once it is known whether they were. With none owed, neither (and the
    /// connection goes on without the channel when it ends between answers).
    #[tokio::test]
    async fn a_holder_leaving_with_an_answer_owed_fails_the_request_or_hands_it_back() {
        let get = &b"GET / HTTP/1.1\r\n\r\n"[..];
        for (answer, replay, failures, handed_back) in [
            // Cut short in the answer's body.
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhal"[..],
                None,
                1,
                false,
            ),
            // No answer at all: not to be sent again (failed), or handed back to be sent
            // again.
            (&b""[..], None, 1, false),
            (&b""[..], Some(get), 0, true),
            // Part of a head, then the end: nothing went to the visitor yet.
            (&b"HTTP/1.1 200"[..], Some(get), 0, true),
            // Answered whole, then the channel ends between answers: the connection goes
            // on without it.
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..],
                None,
                0,
                true,
            ),
            // An answer delimited by the channel's end (HTTP/1.0, a streamed body), and an
            // upgraded connection that ended.
            (&b"HTTP/1.0 200 OK\r\n\r\nuntil the end"[..], None, 0, false),
            (
                &b"HTTP/1.1 101 Switching Protocols\r\n\r\nframes"[..],
                None,
                0,
                false,
            ),
        ] {
            let (holder, channel) = tokio::io::duplex(1 << 16);
            let (_visitor, edge_side) = tokio::io::duplex(1 << 16);
            let ledger = Ledger::default();
            ledger.passed(false, replay);
            let (from, _) = tokio::io::split(channel);
            let (_, to) = tokio::io::split(edge_side);
            let (holder_reads, mut holder_writes) = tokio::io::split(holder);
            holder_writes
                .write_all(answer)
                .await
                .expect("holder writes");
            drop((holder_reads, holder_writes));
            let bytes = IntCounter::new("bytes", "bytes").expect("counter");
            let failed = IntCounter::new("failed", "failed").expect("counter");
            let (_, end) = copy_answers(from, to, &ledger, &bytes, &failed).await;
            let what = String::from_utf8_lossy(answer);
            assert_eq!(failed.get(), failures, "failed: {what}");
            assert_eq!(end == AnswersEnd::HolderLeft, handed_back, "{what}");
        }
    }

    /// Requests owed when the holder left count once: resent when hyper takes them again,
    /// failed when they are lost with the channel, neither when the visitor's own broke
    /// off or none was owed.
    #[test]
    fn requests_owed_when_the_holder_left_count_as_resent_or_failed_once() {
        let get = &b"GET / HTTP/1.1\r\n\r\n"[..];
        for (owed, broken, sent_again, failures, resends) in [
            (true, false, true, 0, 1),
            (true, false, false, 1, 0),
            (true, true, false, 0, 0),
            (false, false, false, 0, 0),
            (false, false, true, 0, 0),
        ] {
            let ledger = Ledger::default();
            if owed {
                ledger.passed(false, Some(get));
            }
            if broken {
                ledger.break_off();
            }
            let failed = IntCounter::new("failed", "failed").expect("counter");
            let resent = IntCounter::new("resent", "resent").expect("counter");
            Unanswered::take(&ledger).settle(&ledger, sent_again, &failed, &resent);
            let case = format!("owed {owed}, broken {broken}, sent again {sent_again}");
            assert_eq!(failed.get(), failures, "{case}");
            assert_eq!(resent.get(), resends, "{case}");
        }
    }

    #[test]
    fn only_a_malformed_chunked_body_is_passed_on_for_the_holder_to_answer() {
        let malformed = io::Error::new(io::ErrorKind::InvalidData, MalformedBody);
        assert!(MalformedBody::is(&malformed));
        // tokio-rustls reports a failed TLS record with the same kind: the request breaks
        // off, nothing waits for an answer.
        let tls = io::Error::new(io::ErrorKind::InvalidData, "bad record MAC");
        assert!(!MalformedBody::is(&tls));
        assert!(!MalformedBody::is(&io::Error::from(
            io::ErrorKind::InvalidData
        )));
    }

    #[test]
    fn only_requests_that_may_be_sent_twice_are_kept_to_send_again() {
        let ledger = Ledger::default();
        assert_eq!(ledger.replays(), Some(Vec::new()), "nothing owed");
        ledger.passed(false, Some(b"GET /a HTTP/1.1\r\n\r\n"));
        ledger.passed(true, Some(b"HEAD /b HTTP/1.1\r\n\r\n"));
        assert_eq!(
            ledger.replays().as_deref(),
            Some(&b"GET /a HTTP/1.1\r\n\r\nHEAD /b HTTP/1.1\r\n\r\n"[..])
        );
        ledger.answered();
        assert_eq!(
            ledger.replays().as_deref(),
            Some(&b"HEAD /b HTTP/1.1\r\n\r\n"[..]),
            "an answered request is not sent again"
        );
        ledger.passed(false, None);
        assert_eq!(ledger.replays(), None, "a POST among them: none is");

        // Past the cap, a request is not kept, so none is sent again.
        let ledger = Ledger::default();
        let big = vec![b'x'; MAX_REPLAY - 10];
        ledger.passed(false, Some(&big));
        assert!(ledger.replays().is_some());
        ledger.passed(false, Some(&[b'y'; 11]));
        assert_eq!(ledger.replays(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_starts_once_both_the_answer_and_its_request_ended() {
        let ledger = Ledger::default();
        ledger.passed(false, None);
        ledger.answered();
        let answered = ledger.idle().expect("idle once answered");
        tokio::time::advance(Duration::from_secs(5)).await;
        // The refused upload's body went on passing for five seconds.
        ledger.request_passed();
        let since = ledger.idle().expect("idle");
        assert_eq!(since - answered, Duration::from_secs(5));
        // Not while an answer is owed.
        ledger.passed(false, None);
        ledger.request_passed();
        assert!(ledger.idle().is_none());
    }

    #[test]
    fn idle_connections_close_before_the_holders_limit() {
        assert_eq!(idle_limit(Duration::from_secs(30)), Duration::from_secs(29));
        assert_eq!(
            idle_limit(Duration::from_secs(1)),
            Duration::from_millis(500)
        );
    }
}
