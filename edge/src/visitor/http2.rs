//! HTTP/2 for HTTPS visitors (ALPN `h2`): hyper's HTTP/2 server, each stream answered by the
//! same code as an HTTP/1.1 request (`visitor::http`: routing, phases, inspector, relay),
//! on an HTTP/1.1 channel of its own to the tunnel's local service. Here: the connection's
//! limits and windows, and the translation of a stream to an HTTP/1.1 request and back.

use crate::edge::Edge;
use crate::io::counting::CountingStream;
use crate::io::small_writes::GatheredWrites;
use crate::process::log_limit::LogLimit;
use crate::visitor::http::{head_timeout, Upstreams, VisitorConn};
use crate::visitor::pages::{self, ProxyBody};
use crate::visitor::routing::Arrival;
use crate::visitor::upstream::IdlePool;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderMap, HeaderValue, COOKIE, TE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

/// Streams one visitor connection may have open at once. Each stream in flight holds an
/// SSH channel (and one of the tunnel's share of visitor connections), so a browser's
/// usual 6 to 100 is allowed and a single connection cannot take the tunnel's whole share.
pub const MAX_CONCURRENT_STREAMS: u32 = 100;

/// Flow-control window of each stream for what the visitor sends (uploads): 4 MiB, so an
/// upload over a path of 100 ms round trip can run at ~40 MB/s before waiting for a
/// window update. Downloads are paced by the visitor's own windows (curl and browsers
/// announce several MiB to 1 GiB), and by `SEND_BUFFER` here.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;

/// Flow-control window of the whole connection: several streams uploading at full speed.
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// Largest frame the visitor may send: 64 KiB (the protocol's default, 16 KiB, costs a
/// frame header and a wake-up per 16 KiB of upload).
pub const MAX_FRAME: u32 = 64 * 1024;

/// Bytes of an answer hyper buffers per stream ahead of the visitor's window: 1 MiB, so
/// that a download keeps the TLS connection full while the next chunk crosses the tunnel.
pub const SEND_BUFFER: usize = 1024 * 1024;

/// Streams a visitor may reset before the edge accepted them, at once (the "rapid reset"
/// attack, CVE-2023-44487): beyond this the connection is closed with GOAWAY.
pub const MAX_PENDING_RESETS: usize = 20;

/// Streams the edge itself may reset for protocol errors on one connection before it
/// closes it (a visitor provoking resets, CVE-2024-2653's cousin).
pub const MAX_ERROR_RESETS: usize = 1024;

/// How many times the edge's head bound hyper's HTTP/2 server takes in a stream's header
/// list. The bound itself is checked on each stream (`head_is_too_large`), which answers
/// with the 431 page, as over HTTP/1.1; h2 itself can only refuse a larger list with a
/// reset stream, or end the whole connection (GOAWAY) once a header block's bytes pass its
/// limit or take more CONTINUATION frames than that limit needs in frames of `MAX_FRAME`
/// (+25 %), and a browser shows neither as "clear this site's cookies". At 4 times (256 KiB
/// at the default), a sender of 16 KiB frames (curl's nghttp2, browsers) reaches the page
/// with heads of up to ~80 KiB, one of 64 KiB frames with up to 256 KiB. The cost: h2
/// decodes a stream's list up to this size (HPACK lets a few bytes on the wire stand for
/// kilobytes), so a connection's 100 streams may hold up to 100 × 256 KiB until their
/// tasks refuse them, against 100 × 64 KiB at 1 time.
const HEADER_LIST_ALLOWANCE: usize = 4;

/// A connection with no stream in flight that started none for this long is closed.
pub const IDLE_LIMIT: Duration = Duration::from_secs(120);

/// Serves a visitor connection whose TLS the edge terminated and whose ALPN is `h2`. The
/// first stream must start by `deadline` (counted from the connection's accept).
pub async fn serve<S>(
    edge: &Arc<Edge>,
    stream: S,
    peer: SocketAddr,
    deadline: Instant,
    arrival: Arrival,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let m = &edge.metrics;
    let io = TokioIo::new(CountingStream::new(
        GatheredWrites::new(stream),
        m.visitor_bytes_total.with_label_values(&["in"]),
        m.visitor_bytes_total.with_label_values(&["out"]),
    ));
    let conn = Arc::new(VisitorConn::new(
        edge.clone(),
        peer,
        "https",
        arrival,
        Upstreams::Pooled(Arc::new(IdlePool::default())),
    ));
    // The first stream must come by `deadline`; after it, the connection lives while it has
    // a stream in flight or started one within `IDLE_LIMIT`.
    let streams = Arc::new(Streams::default());
    let counted = streams.clone();
    let max_head = crate::visitor::http::max_head(edge);
    let service = service_fn(move |req| {
        let in_flight = InFlight::start(&counted);
        let counted_stalls = counted.clone();
        let conn = conn.clone();
        async move {
            let resp = answer(&conn, req, max_head).await;
            // Until hyper drops the answer's body: its stream ended or was reset.
            let handed = counted_stalls.watch();
            Ok::<_, Infallible>(resp.map(|body| Tracked {
                body,
                rest: Bytes::new(),
                _in_flight: in_flight,
                handed,
                streams: counted_stalls,
            }))
        }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .adaptive_window(false)
        .max_frame_size(MAX_FRAME)
        .max_send_buf_size(SEND_BUFFER)
        .max_header_list_size(
            u32::try_from(max_head.saturating_mul(HEADER_LIST_ALLOWANCE)).unwrap_or(u32::MAX),
        )
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_ERROR_RESETS)
        // A visitor gone without a word (no FIN) is noticed by its missing PING answers.
        .keep_alive_interval(head_timeout(edge))
        .keep_alive_timeout(head_timeout(edge));
    let served = builder.serve_connection(io, service);
    tokio::pin!(served);
    let mut check_at = deadline;
    let mut seen = 0;
    let mut closing = false;
    let stall_limit = edge.config.visitor_write_stall_seconds;
    let stall_limit = (stall_limit > 0).then(|| Duration::from_secs(stall_limit));
    let mut stall_check = tokio::time::interval(STALL_CHECK);
    stall_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            r = &mut served => break r,
            _ = stall_check.tick(), if stall_limit.is_some() => {
                let Some(limit) = stall_limit else { continue };
                if streams.stalled_for(limit) {
                    // Its streams' channels go with it; the other streams' visitors (its
                    // own) are cut off too: the connection is the visitor's.
                    tracing::debug!(%peer, "HTTP/2 visitor opened no window for an answer; closing");
                    m.visitor_write_stalls_total.inc();
                    return;
                }
            }
            _ = tokio::time::sleep_until(check_at), if !closing => {
                let now = streams.started.load(Ordering::Relaxed);
                if now == seen && streams.in_flight.load(Ordering::Relaxed) == 0 {
                    tracing::debug!(%peer, streams = now, "HTTP/2 visitor idle; closing");
                    closing = true;
                    served.as_mut().graceful_shutdown();
                }
                seen = now;
                check_at = Instant::now() + IDLE_LIMIT;
            }
            _ = edge.shutdown.cancelled(), if !closing => {
                closing = true;
                served.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(e) = result {
        if cut_off_for_calm(&e) {
            m.http2_connections_cut_off_total.inc();
            match CUT_OFF_LOG.note(std::time::Instant::now()) {
                Some(0) => {
                    tracing::info!(%peer, "an HTTP/2 visitor connection was cut off (GOAWAY ENHANCE_YOUR_CALM): it reset streams faster than they were answered, or sent too many in error (each is counted in nearhop_edge_http2_connections_cut_off_total)")
                }
                Some(more) => {
                    tracing::info!(%peer, more, "an HTTP/2 visitor connection was cut off (GOAWAY ENHANCE_YOUR_CALM): it reset streams faster than they were answered, or sent too many in error; {more} more since the last such line (at most one a {}s; each is counted in nearhop_edge_http2_connections_cut_off_total)", CUT_OFF_LOG_INTERVAL.as_secs())
                }
                None => {}
            }
        } else {
            tracing::debug!(error = %e, %peer, "HTTP/2 visitor connection ended with an error");
        }
    }
}

/// Most lines about HTTP/2 connections cut off: one per interval. A reset flood opens many
/// connections, and the `h2` crate's own WARN line for each (turned off in the edge's
/// default log filter) wrote 2,098 lines in one bench run.
const CUT_OFF_LOG_INTERVAL: Duration = Duration::from_secs(10);
static CUT_OFF_LOG: LogLimit = LogLimit::new(CUT_OFF_LOG_INTERVAL);

/// Whether hyper ended the connection with GOAWAY ENHANCE_YOUR_CALM (h2's bounds on reset
/// streams, `MAX_PENDING_RESETS` and `MAX_ERROR_RESETS`).
fn cut_off_for_calm(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM);
        }
        source = s.source();
    }
    false
}

/// How often an HTTP/2 connection's answers are looked at for one hyper stopped taking.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// Streams of one connection: started so far, and in flight (answer not yet done); and
/// when each answer in flight last handed hyper a piece hyper has not come back after.
struct Streams {
    started: AtomicU64,
    in_flight: AtomicU64,
    epoch: Instant,
    /// Per answer: milliseconds since `epoch` (plus one) at which it handed hyper a piece
    /// and hyper has not asked for the next since; 0 when hyper is asking.
    handed: std::sync::Mutex<Vec<std::sync::Weak<AtomicU64>>>,
}

impl Default for Streams {
    fn default() -> Streams {
        Streams {
            started: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            epoch: Instant::now(),
            handed: std::sync::Mutex::default(),
        }
    }
}

impl Streams {
    /// The mark an answer keeps up to date (see `handed`), set as its head is handed over.
    fn watch(&self) -> Arc<AtomicU64> {
        // The head is handed over with the answer: hyper asks for the body next.
        let mark = Arc::new(AtomicU64::new(self.now_mark()));
        let mut handed = self.handed.lock().unwrap_or_else(|e| e.into_inner());
        handed.retain(|w| w.strong_count() > 0);
        handed.push(Arc::downgrade(&mark));
        mark
    }

    fn now_mark(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether some answer in flight handed hyper a piece `limit` ago or earlier and hyper
    /// has not come back for the next: the visitor opened no flow-control window for it
    /// (its socket takes everything, so no write waits), and the tunnel channel behind the
    /// answer, unread, would stop the tunnel's whole SSH session.
    fn stalled_for(&self, limit: Duration) -> bool {
        let now = self.now_mark();
        let limit = limit.as_millis() as u64;
        let handed = self.handed.lock().unwrap_or_else(|e| e.into_inner());
        handed
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .any(|mark| {
                let at = mark.load(Ordering::Relaxed);
                at != 0 && now.saturating_sub(at) >= limit
            })
    }
}

/// One stream in flight, counted until dropped.
struct InFlight(Arc<Streams>);

impl InFlight {
    fn start(streams: &Arc<Streams>) -> InFlight {
        streams.started.fetch_add(1, Ordering::Relaxed);
        streams.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(streams.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Largest piece of an answer handed to hyper at once: a DATA frame of it with its 9-byte
/// header fills one TLS record (16,384 bytes of plaintext) exactly. Bigger pieces become
/// frames of the visitor's maximum frame size (16,384 bytes with curl and browsers), and
/// each such frame spills 9 bytes into a second, tiny TLS record the visitor must decrypt
/// and read on its own: twice the records per byte of a download.
const RECORD_SIZED_PIECE: usize = 16 * 1024 - 9;

/// An answer's body that keeps its stream counted in flight as long as it lives, and
/// hands its data on in record-sized pieces ([`RECORD_SIZED_PIECE`]; no copy: the pieces
/// share the chunk's buffer).
struct Tracked {
    body: ProxyBody,
    /// What is left of the last chunk after the pieces already handed on.
    rest: Bytes,
    _in_flight: InFlight,
    /// When it last handed hyper a piece hyper has not come back after (`Streams::handed`).
    handed: Arc<AtomicU64>,
    streams: Arc<Streams>,
}

impl Tracked {
    /// The next piece of `rest`, if any is left.
    fn next_piece(&mut self) -> Option<Bytes> {
        match self.rest.len() {
            0 => None,
            n if n <= RECORD_SIZED_PIECE => Some(std::mem::take(&mut self.rest)),
            _ => Some(self.rest.split_to(RECORD_SIZED_PIECE)),
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = self.poll_piece(cx);
        let mark = match &polled {
            Poll::Ready(Some(Ok(_))) => self.streams.now_mark(),
            _ => 0,
        };
        self.handed.store(mark, Ordering::Relaxed);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.body.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(rest));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

impl Tracked {
    /// The next piece: of the last chunk, or of the next one.
    fn poll_piece(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(piece) = self.next_piece() {
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    self.rest = data;
                    // An empty chunk passes on as it came.
                    let piece = self.next_piece().unwrap_or_default();
                    Poll::Ready(Some(Ok(Frame::data(piece))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => other,
        }
    }
}

/// Answers one stream: as an HTTP/1.1 request through the visitor code, the answer made fit
/// for HTTP/2.
async fn answer(
    conn: &VisitorConn,
    mut req: Request<Incoming>,
    max_head: usize,
) -> Response<ProxyBody> {
    // Measured as the HTTP/1.1 request it becomes: the cookies joined into one field.
    to_http1(&mut req);
    let mut resp = if head_is_too_large(&req, max_head) {
        pages::head_too_large(max_head)
    } else if req.method() == Method::CONNECT {
        // Neither a proxy nor WebSockets over HTTP/2 (RFC 8441) are offered here.
        pages::page(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
            "CONNECT is not served over HTTP/2 here; WebSockets work over HTTP/1.1.",
        )
    } else {
        // HTTP/2 reaches a holder only inside a whole TLS connection, which gets the
        // "Tunnel moved" page instead of `HeldElsewhere`; this is for form's sake.
        conn.handle(req)
            .await
            .unwrap_or_else(|_held_elsewhere| pages::tunnel_moved())
    };
    strip_connection_headers(resp.headers_mut());
    resp
}

/// Whether a stream's head (after `to_http1`) is more than the edge takes in an HTTP/1.1
/// request: over `max_head` bytes as its HTTP/1.1 form (request line, each field as
/// `name: value` and a line end, the blank line), or more than `MAX_REQUEST_FIELDS` fields.
/// The authority counts as the `Host` field it becomes, unless the stream sent a `host`.
fn head_is_too_large<B>(req: &Request<B>, max_head: usize) -> bool {
    let headers = req.headers();
    let uri = req.uri();
    let authority = uri
        .authority()
        .filter(|_| !headers.contains_key(hyper::header::HOST));
    let fields = headers.len() + usize::from(authority.is_some());
    if fields > pages::MAX_REQUEST_FIELDS {
        return true;
    }
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len());
    let line = req.method().as_str().len() + " ".len() + target + " HTTP/1.1\r\n".len();
    let host = authority.map_or(0, |a| "host: \r\n".len() + a.as_str().len());
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + ": ".len() + value.len() + "\r\n".len())
        .sum();
    line + host + bytes + "\r\n".len() > max_head
}

/// Makes a stream's head an HTTP/1.1 request's: the version, and the cookies HTTP/2 may
/// send as several fields joined into one (RFC 9113 §8.2.3). The authority becomes `Host`
/// later, as for an absolute-form HTTP/1.1 request (`visitor::http`).
pub fn to_http1<B>(req: &mut Request<B>) {
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    if headers.get_all(COOKIE).iter().count() > 1 {
        let joined = headers
            .get_all(COOKIE)
            .iter()
            .map(|v| v.as_bytes())
            .collect::<Vec<_>>()
            .join(&b"; "[..]);
        if let Ok(v) = HeaderValue::from_bytes(&joined) {
            headers.insert(COOKIE, v);
        }
    }
}

/// Takes off the fields HTTP/2 forbids in an answer (RFC 9113 §8.2.2): `Connection` and
/// every field it names, `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`,
/// `TE`. The local service speaks HTTP/1.1 and may send any of them.
pub fn strip_connection_headers(headers: &mut HeaderMap) {
    crate::visitor::http::strip_hop_fields(headers);
    for name in ["transfer-encoding", "upgrade"] {
        headers.remove(name);
    }
    headers.remove(TE);
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::CONNECTION;

    /// A stream's head is measured as its HTTP/1.1 form, so the same request gets the same
    /// verdict over either: the bound itself passes, one byte more does not; too many
    /// fields do not either.
    #[test]
    fn a_streams_head_is_measured_as_its_http1_form() {
        let request = |cookie_len: usize, fields: usize| {
            let mut req = Request::builder()
                .method(Method::GET)
                .uri("https://shop.example/cart?x=1")
                .header(COOKIE, "c=".to_string() + &"x".repeat(cookie_len));
            for i in 0..fields {
                req = req.header(format!("x-f{i}"), "v");
            }
            req.body(()).expect("request")
        };
        // GET /cart?x=1 HTTP/1.1\r\n, host: shop.example\r\n, cookie: c=...\r\n, \r\n
        let fixed = "GET /cart?x=1 HTTP/1.1\r\n".len()
            + "host: shop.example\r\n".len()
            + "cookie: c=\r\n".len()
            + "\r\n".len();
        let max_head = 4096;
        assert!(!head_is_too_large(&request(max_head - fixed, 0), max_head));
        assert!(head_is_too_large(
            &request(max_head - fixed + 1, 0),
            max_head
        ));
        // Host (from the authority), the cookie and 98 more: hyper's 100 fields.
        let most = pages::MAX_REQUEST_FIELDS - 2;
        assert!(!head_is_too_large(&request(10, most), 1 << 20));
        assert!(head_is_too_large(&request(10, most + 1), 1 << 20));
        // A host field of the stream's own is the Host line: the authority adds none.
        let mut with_host = request(10, most);
        with_host.headers_mut().insert(
            hyper::header::HOST,
            HeaderValue::from_static("shop.example"),
        );
        assert!(!head_is_too_large(&with_host, 1 << 20));
        // Cookies sent one field each (RFC 9113 §8.2.3, as Firefox does) are one line once
        // joined: counted as that line.
        let mut split = Request::builder()
            .uri("https://shop.example/")
            .header(COOKIE, "a=1");
        for i in 0..pages::MAX_REQUEST_FIELDS {
            split = split.header(COOKIE, format!("c{i}=v"));
        }
        let mut split = split.body(()).expect("request");
        to_http1(&mut split);
        assert!(!head_is_too_large(&split, 1 << 20));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_hyper_stopped_asking_for_is_stalled_after_the_limit() {
        let streams = Streams::default();
        let limit = Duration::from_secs(2);
        // Its head was handed over: hyper should ask for the body next.
        let mark = streams.watch();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!streams.stalled_for(limit));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(streams.stalled_for(limit), "no ask for 2 s");
        // Asked, and waiting on the tunnel: not the visitor's stall.
        mark.store(0, Ordering::Relaxed);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!streams.stalled_for(limit));
        // A piece handed, then the answer ended (dropped): nothing left to stall.
        mark.store(streams.now_mark(), Ordering::Relaxed);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(streams.stalled_for(limit));
        drop(mark);
        assert!(!streams.stalled_for(limit));
    }

    #[tokio::test]
    async fn an_answer_leaves_in_record_sized_pieces_with_nothing_lost() {
        use http_body_util::BodyExt;
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let streams = Arc::new(Streams::default());
        let mut body = Tracked {
            body: pages::full(data.clone()),
            rest: Bytes::new(),
            _in_flight: InFlight::start(&streams),
            handed: streams.watch(),
            streams: streams.clone(),
        };
        assert_eq!(body.size_hint().exact(), Some(100_000));
        let mut pieces = Vec::new();
        while let Some(frame) = body.frame().await {
            pieces.push(frame.unwrap().into_data().unwrap());
        }
        assert!(body.is_end_stream());
        assert!(pieces.iter().all(|p| p.len() <= RECORD_SIZED_PIECE));
        assert_eq!(pieces.len(), 100_000usize.div_ceil(RECORD_SIZED_PIECE));
        assert_eq!(pieces.concat(), data);
        drop(body);
        assert_eq!(streams.in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn connection_specific_fields_are_taken_off_an_answer() {
        let mut h = HeaderMap::new();
        h.append(CONNECTION, "keep-alive, X-Hop".parse().unwrap());
        h.append(CONNECTION, "close".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert(TE, "trailers".parse().unwrap());
        h.insert("content-type", "text/plain".parse().unwrap());
        h.insert("x-kept", "yes".parse().unwrap());
        strip_connection_headers(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["content-type", "x-kept"]);
    }

    #[test]
    fn an_http1_answer_loses_its_connection_fields_but_not_its_framing() {
        let mut h = HeaderMap::new();
        h.append(
            CONNECTION,
            "close, X-Hop, Transfer-Encoding".parse().unwrap(),
        );
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-connection", "close".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("content-type", "text/plain".parse().unwrap());
        crate::visitor::http::strip_hop_fields(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["content-type", "transfer-encoding"]);
    }

    #[test]
    fn a_stream_becomes_an_http1_request_with_one_cookie_field() {
        let mut r = Request::builder()
            .version(Version::HTTP_2)
            .uri("https://blog.a.tunnel.test:8443/p?q=1")
            .header(COOKIE, "a=1")
            .header(COOKIE, "b=2")
            .body(())
            .unwrap();
        to_http1(&mut r);
        assert_eq!(r.version(), Version::HTTP_11);
        assert_eq!(r.headers().get_all(COOKIE).iter().count(), 1);
        assert_eq!(r.headers()[COOKIE], "a=1; b=2");
        // The authority still names the host, as for an absolute-form request.
        assert_eq!(
            crate::visitor::http::request_host(&r).as_deref(),
            Ok("blog.a.tunnel.test")
        );
    }

    #[test]
    fn a_single_cookie_field_is_left_alone() {
        let mut r = Request::builder()
            .version(Version::HTTP_2)
            .header(COOKIE, "a=1; b=2")
            .body(())
            .unwrap();
        to_http1(&mut r);
        assert_eq!(r.headers()[COOKIE], "a=1; b=2");
    }
}
