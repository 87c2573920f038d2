//! A visitor's HTTP/1.1 requests passed to the peer edge holding their tunnel as bytes.
//!
//! The holder edge parses every relayed request anyway (it routes it, runs the tunnel's
//! phases and proxies it), so the relaying edge need not: it reads each request's head only
//! far enough to route it ([`request_frames`]), passes head and body on as they came, and
//! copies the holder's answers back untouched. That saves a full HTTP parse and an HTTP
//! client on the relaying edge for every request (docs/benchmarks.md, Edge mesh).
//!
//! The connection leaves this path, for hyper's (`visitor::http`), at the first request
//! that goes anywhere else: another name or holder, an upgrade, a head this module leaves
//! to hyper. The relay channel is then closed for writing; the holder (which serves relayed
//! connections with half-close allowed) sends the answers it owes and closes, and hyper
//! takes over with the next request's bytes. Answers are never interleaved and requests
//! are never reordered.

use crate::edge::Edge;
use crate::io::read_buffer::Prefixed;
use crate::mesh::links::PeerLink;
use crate::visitor::first_request;
use crate::visitor::pages;
use crate::visitor::request_frames::{scan_head, BodyFraming, ChunkedEnd, HeadScan, RequestHead};
use crate::visitor::routing::{self, Arrival, Listener, Route};
use crate::visitor::upstream::{self, OpenFailure};
use bytes::{Buf, BytesMut};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;

/// How long the holder may stay silent, once the relay channel is closed for writing,
/// before the edge stops waiting for the answers still owed and closes the visitor's
/// connection.
const FINISH_IDLE: Duration = Duration::from_secs(30);

/// Bytes read from the visitor at a time.
const READ_SIZE: usize = 16 * 1024;

/// Bytes of the holder's answers copied at a time.
const COPY_SIZE: usize = 64 * 1024;

/// Where the connection goes once this path ends.
pub enum After<S> {
    /// It is over (or the edge gave up on it).
    Closed,
    /// To hyper, with these bytes read ahead (the next request's start).
    Hyper(S, Vec<u8>),
}

/// Why the requests stopped passing.
enum Next {
    /// The visitor closed its side, the edge is stopping, or the stream broke.
    Done,
    /// The request at the start of these bytes goes elsewhere.
    Elsewhere(BytesMut),
}

/// What stays the same for every request of the connection.
struct Pass<'a> {
    edge: &'a Arc<Edge>,
    link: &'a Arc<PeerLink>,
    host: &'a str,
    visitor: SocketAddr,
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
    let channel = match upstream::relay_channel(edge, &link, visitor, scheme).await {
        Ok(channel) => channel,
        // Not tried again: the holder's host stopped answering (see `not_opened`).
        Err(OpenFailure::PeerNotAnswering) => {
            holder_not_answering(edge, Prefixed::new(first, stream)).await;
            return After::Closed;
        }
        // Routed again by hyper, which waits out a reconnect and tries again.
        Err(_) => return After::Hyper(stream, first),
    };
    let m = &edge.metrics;
    let pass = Pass {
        edge,
        link: &link,
        host,
        visitor,
        requests: m.relay_requests_total.with_label_values(&[&link.id]),
        bytes_in: m.visitor_bytes_total.with_label_values(&["in"]),
    };
    let bytes_out = m.visitor_bytes_total.with_label_values(&["out"]);
    let (vr, vw) = tokio::io::split(stream);
    let (cr, cw) = tokio::io::split(channel);
    let progress = AtomicU64::new(0);
    let answers = copy_answers(cr, vw, &progress, &bytes_out);
    let requests = pass_requests(&pass, vr, cw, BytesMut::from(&first[..]), head);
    drop(first);
    tokio::pin!(answers, requests);
    tokio::select! {
        (vr, next) = &mut requests => {
            // The relay channel is closed for writing: the holder sends what it owes, then
            // closes its side.
            let Some(mut vw) = finish(answers, &progress).await else {
                return After::Closed;
            };
            match next {
                Next::Elsewhere(pending) => After::Hyper(vr.unsplit(vw), pending.to_vec()),
                Next::Done => {
                    let _ = vw.shutdown().await;
                    After::Closed
                }
            }
        }
        mut vw = &mut answers => {
            // The holder closed the channel (an answer with `Connection: close`, its own
            // time limits, or it went away): the visitor's connection ends with it.
            let _ = vw.shutdown().await;
            After::Closed
        }
    }
}

/// Waits for the holder to finish the answers it owes, as long as they keep coming; the
/// visitor's writing half when they ended, none when the edge gave up.
async fn finish<W>(
    answers: std::pin::Pin<&mut impl std::future::Future<Output = W>>,
    progress: &AtomicU64,
) -> Option<W> {
    let mut answers = answers;
    loop {
        let seen = progress.load(Ordering::Relaxed);
        match tokio::time::timeout(FINISH_IDLE, answers.as_mut()).await {
            Ok(vw) => return Some(vw),
            Err(_) if progress.load(Ordering::Relaxed) == seen => {
                tracing::debug!("holder owes answers and sends none; closing");
                return None;
            }
            Err(_) => {}
        }
    }
}

/// Copies the holder's answers to the visitor until the holder closes the channel.
async fn copy_answers<C, S>(
    mut from: ReadHalf<C>,
    mut to: WriteHalf<S>,
    progress: &AtomicU64,
    bytes_out: &IntCounter,
) -> WriteHalf<S>
where
    C: AsyncRead,
    S: AsyncWrite,
{
    let mut buf = vec![0u8; COPY_SIZE];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "relay channel ended");
                break;
            }
        };
        if let Err(e) = to.write_all(&buf[..n]).await {
            tracing::debug!(error = %e, "visitor went away during an answer");
            break;
        }
        progress.fetch_add(1, Ordering::Relaxed);
        bytes_out.inc_by(n as u64);
    }
    to
}

/// Passes requests, starting with `head` at the start of `buf`, while they go to the same
/// place; closes the channel for writing when they stop.
async fn pass_requests<S, C>(
    pass: &Pass<'_>,
    mut from: ReadHalf<S>,
    mut to: WriteHalf<C>,
    mut buf: BytesMut,
    mut head: RequestHead,
) -> (ReadHalf<S>, Next)
where
    S: AsyncRead,
    C: AsyncWrite,
{
    let next = loop {
        pass.requests.inc();
        if let Err(e) = pass_one(pass, &mut from, &mut to, &mut buf, &head).await {
            tracing::debug!(error = %e, "relayed request cut short");
            break Next::Done;
        }
        match next_head(pass, &mut from, &mut buf).await {
            Some(HeadScan::Plain(next)) if goes_along(pass, &next) => head = next,
            Some(_) => break Next::Elsewhere(buf),
            None => break Next::Done,
        }
    };
    let _ = to.shutdown().await;
    (from, next)
}

/// Whether a request for `head`'s host goes to the same holder over the same channel (a
/// relay channel carries one name: see `UpstreamKey::Peer`).
fn goes_along(pass: &Pass<'_>, head: &RequestHead) -> bool {
    if head.host != pass.host || pass.link.stop.is_cancelled() {
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
                let end = chunked.advance(&buf[at..]).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "malformed chunked body")
                })?;
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

/// The next request's head: none when the visitor closes between requests, the edge stops,
/// or a head it began does not arrive in time (hyper's head timeout); too long a head is
/// left to hyper, which refuses it.
async fn next_head<R: AsyncRead + Unpin>(
    pass: &Pass<'_>,
    from: &mut R,
    buf: &mut BytesMut,
) -> Option<HeadScan> {
    let edge = pass.edge;
    let max_head = edge.config.visitor_max_header_bytes.max(8192);
    let head_timeout = crate::visitor::http::head_timeout(edge);
    // A head already begun must be complete in time; waiting for one has no limit.
    let mut deadline = (!buf.is_empty()).then(|| Instant::now() + head_timeout);
    let mut scanned = 0;
    loop {
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
        let read = match deadline {
            // Between requests: as long as the visitor likes, until the edge stops.
            None => tokio::select! {
                r = from.read_buf(buf) => r,
                _ = edge.shutdown.cancelled() => return None,
            },
            Some(at) => match tokio::time::timeout_at(at, from.read_buf(buf)).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::debug!("visitor sent no complete request head in time");
                    return None;
                }
            },
        };
        match read {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        deadline.get_or_insert_with(|| Instant::now() + head_timeout);
    }
}

/// Answers the visitor's request with the "Tunnel edge not answering" page and closes.
async fn holder_not_answering<S>(edge: &Edge, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    edge.metrics
        .http_responses_total
        .with_label_values(&["5xx", "relay"])
        .inc();
    let service = service_fn(|_req| async { Ok::<_, Infallible>(pages::holder_unreachable()) });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(false);
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, "answering that the holder is not answering");
    }
}
