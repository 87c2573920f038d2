//! What the inspector keeps of a tunnel's requests: a ring of the last requests (heads,
//! and bodies up to a cut), bounded in count and in body bytes, in memory only, and the
//! body wrapper that copies a body as it passes to the visitor or the tunnel without ever
//! holding the stream back.
//!
//! Long because the ring and the body tap that fills it belong together, with about 120 lines
//! of tests.

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::{HeaderMap, Request, Response};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};
use tokio::sync::watch;

/// Ids of captured requests, unique in the edge process (a session's view spans its
/// tunnels, so one tunnel's numbers must not repeat another's).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// How much one tunnel's inspector keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most requests kept; the oldest go first.
    pub max_requests: usize,
    /// Most body bytes kept over all kept requests; the oldest requests go first.
    pub max_body_bytes: usize,
    /// Most bytes kept of one body; the rest passes uncopied and the body is marked cut.
    pub body_cut_bytes: usize,
}

/// Which body of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// What the visitor sent.
    Request,
    /// What the local service answered.
    Response,
}

/// Where an exchange stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Sent into the tunnel; no answer yet.
    Waiting,
    /// The answer's head came; its body is passing.
    Streaming,
    /// Answered in full.
    Done,
    /// The answer switched protocols (WebSocket): the stream after the head is not kept.
    Upgraded,
    /// No answer came from the tunnel (the client was unreachable, or the visitor left).
    NoAnswer,
    /// The answer's body ended early (the visitor left, or the tunnel's connection broke).
    Broken,
}

impl State {
    /// Its name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Waiting => "waiting",
            State::Streaming => "streaming",
            State::Done => "done",
            State::Upgraded => "upgraded",
            State::NoAnswer => "no_answer",
            State::Broken => "broken",
        }
    }
}

/// What was kept of one body.
#[derive(Debug, Clone, Default)]
pub struct KeptBody {
    /// The first bytes (all of them unless `cut`).
    pub bytes: Bytes,
    /// Bytes that passed in all.
    pub size: u64,
    /// Whether bytes past `bytes` passed uncopied.
    pub cut: bool,
    /// Whether the body was seen to its end.
    pub complete: bool,
}

/// A header as it went into the tunnel (or came back).
pub type HeaderPairs = Vec<(String, Bytes)>;

/// One request through the tunnel and its answer.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Id, unique in the edge.
    pub id: u64,
    /// Bumped with every change (the live view sends what changed since it last looked).
    pub version: u64,
    /// The tunnel's public name.
    pub tunnel: Arc<str>,
    /// When the request went into the tunnel.
    pub at: SystemTime,
    /// The visitor's address (for a replay, the original visitor's).
    pub visitor: SocketAddr,
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// HTTP version of the request, e.g. `HTTP/1.1`.
    pub version_text: &'static str,
    /// Request headers as sent into the tunnel.
    pub request_headers: HeaderPairs,
    /// Request body.
    pub request_body: KeptBody,
    /// Status, once the answer's head came.
    pub status: Option<u16>,
    /// Response headers.
    pub response_headers: HeaderPairs,
    /// Response body.
    pub response_body: KeptBody,
    /// Where it stands.
    pub state: State,
    /// Milliseconds from sending to the answer's head.
    pub head_ms: Option<f64>,
    /// Milliseconds from sending to the answer's last byte.
    pub total_ms: Option<f64>,
    /// The exchange this one replayed, if it is a replay.
    pub replay_of: Option<u64>,
    started: Instant,
}

impl Exchange {
    fn body_mut(&mut self, side: Side) -> &mut KeptBody {
        match side {
            Side::Request => &mut self.request_body,
            Side::Response => &mut self.response_body,
        }
    }

    fn body_bytes(&self) -> usize {
        self.request_body.bytes.len() + self.response_body.bytes.len()
    }
}

#[derive(Default)]
struct Ring {
    /// Oldest first; ids grow along it.
    exchanges: VecDeque<Exchange>,
    body_bytes: usize,
    version: u64,
}

impl Ring {
    fn position(&self, id: u64) -> Option<usize> {
        self.exchanges.binary_search_by_key(&id, |e| e.id).ok()
    }
}

/// One tunnel's inspector: its ring of exchanges and the signal the live view waits on.
pub struct Inspector {
    /// The tunnel's public name.
    pub tunnel: Arc<str>,
    limits: Limits,
    ring: Mutex<Ring>,
    /// Body bytes copied by bodies still passing, not yet in the ring: held under
    /// `max_body_bytes` too, so that many slow bodies at once cannot grow without bound.
    in_flight: AtomicUsize,
    changes: watch::Sender<u64>,
    closed: AtomicBool,
}

impl Inspector {
    /// An empty inspector for the tunnel named `tunnel`.
    pub fn new(tunnel: String, limits: Limits) -> Inspector {
        Inspector {
            tunnel: tunnel.into(),
            limits,
            ring: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            changes: watch::channel(0).0,
            closed: AtomicBool::new(false),
        }
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The limits it keeps to.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Drops everything kept and records nothing more (the tunnel ended).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let mut ring = self.ring();
        *ring = Ring {
            version: ring.version + 1,
            ..Ring::default()
        };
        self.changes.send_replace(ring.version);
    }

    /// Whether the tunnel ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Follows changes (the value is the ring's version).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Kept exchanges, newest first, without bodies' bytes cloned deeply (they are `Bytes`).
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.ring().exchanges.iter().rev().cloned().collect()
    }

    /// The id of the oldest exchange kept (the ring lets the oldest go first), `None` when
    /// it keeps none: a page drops the rows of this tunnel below it.
    pub fn oldest_kept(&self) -> Option<u64> {
        self.ring().exchanges.iter().map(|e| e.id).min()
    }

    /// Exchanges changed after version `since`, oldest change first, and the version now.
    pub fn changed_since(&self, since: u64) -> (Vec<Exchange>, u64) {
        let ring = self.ring();
        let mut changed: Vec<Exchange> = ring
            .exchanges
            .iter()
            .filter(|e| e.version > since)
            .cloned()
            .collect();
        changed.sort_by_key(|e| e.version);
        (changed, ring.version)
    }

    /// One exchange.
    pub fn get(&self, id: u64) -> Option<Exchange> {
        let ring = self.ring();
        ring.position(id).map(|i| ring.exchanges[i].clone())
    }

    /// Number of exchanges kept, and their body bytes.
    pub fn usage(&self) -> (usize, usize) {
        let ring = self.ring();
        (ring.exchanges.len(), ring.body_bytes)
    }

    /// Starts recording a request about to go into the tunnel; returns its id. A body known
    /// to be empty (`no_body`) is recorded complete at once; any other is recorded by a tap.
    pub fn record_request<B>(
        &self,
        visitor: SocketAddr,
        req: &Request<B>,
        replay_of: Option<u64>,
        no_body: bool,
    ) -> u64 {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let exchange = Exchange {
            id,
            version: 0,
            tunnel: self.tunnel.clone(),
            at: SystemTime::now(),
            visitor,
            method: req.method().as_str().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| req.uri().to_string()),
            version_text: version_text(req.version()),
            request_headers: pairs(req.headers()),
            request_body: KeptBody {
                complete: no_body,
                ..KeptBody::default()
            },
            status: None,
            response_headers: Vec::new(),
            response_body: KeptBody::default(),
            state: State::Waiting,
            head_ms: None,
            total_ms: None,
            replay_of,
            started: Instant::now(),
        };
        let mut ring = self.ring();
        ring.version += 1;
        let mut exchange = exchange;
        exchange.version = ring.version;
        ring.exchanges.push_back(exchange);
        self.trim(&mut ring);
        self.changes.send_replace(ring.version);
        id
    }

    /// Changes one exchange, if it is still kept, and tells the live view.
    fn update(&self, id: u64, change: impl FnOnce(&mut Exchange)) {
        let mut ring = self.ring();
        let Some(i) = ring.position(id) else {
            return;
        };
        ring.version += 1;
        let version = ring.version;
        let before = ring.exchanges[i].body_bytes();
        let e = &mut ring.exchanges[i];
        change(e);
        e.version = version;
        let after = e.body_bytes();
        ring.body_bytes = ring.body_bytes + after - before;
        self.trim(&mut ring);
        self.changes.send_replace(version);
    }

    /// Records the head of the answer.
    pub fn record_response<B>(&self, id: u64, resp: &Response<B>) {
        let status = resp.status().as_u16();
        let headers = pairs(resp.headers());
        self.update(id, |e| {
            e.status = Some(status);
            e.response_headers = headers;
            e.head_ms = Some(ms_since(e.started));
            e.state = if status == 101 {
                e.total_ms = e.head_ms;
                State::Upgraded
            } else {
                State::Streaming
            };
        });
    }

    /// Records what an upgraded connection (a WebSocket) carried once it ended: bytes from
    /// the visitor into the tunnel and back. Nothing of the stream itself is kept.
    pub fn record_upgraded_bytes(&self, id: u64, to_tunnel: u64, to_visitor: u64) {
        self.update(id, |e| {
            e.body_mut(Side::Request).size = to_tunnel;
            e.body_mut(Side::Response).size = to_visitor;
            e.total_ms = Some(ms_since(e.started));
        });
    }

    /// Records that no answer came.
    pub fn record_no_answer(&self, id: u64) {
        self.update(id, |e| {
            if e.state == State::Waiting {
                e.state = State::NoAnswer;
                e.total_ms = Some(ms_since(e.started));
            }
        });
    }

    /// Records a body that finished passing (or stopped).
    fn record_body(&self, id: u64, side: Side, kept: KeptBody) {
        self.update(id, |e| {
            let complete = kept.complete;
            *e.body_mut(side) = kept;
            if side == Side::Response && e.state == State::Streaming {
                e.total_ms = Some(ms_since(e.started));
                e.state = if complete { State::Done } else { State::Broken };
            }
        });
    }

    /// Drops the oldest exchanges until the ring is within its limits.
    fn trim(&self, ring: &mut Ring) {
        while ring.exchanges.len() > self.limits.max_requests
            || (ring.body_bytes > self.limits.max_body_bytes && ring.exchanges.len() > 1)
        {
            let Some(old) = ring.exchanges.pop_front() else {
                break;
            };
            ring.body_bytes -= old.body_bytes();
        }
        // One exchange alone over the bound (a cut above the bound): keep its head only.
        if ring.body_bytes > self.limits.max_body_bytes {
            if let Some(e) = ring.exchanges.front_mut() {
                for side in [Side::Request, Side::Response] {
                    let body = e.body_mut(side);
                    body.bytes = Bytes::new();
                    body.cut = body.size > 0;
                }
            }
            ring.body_bytes = 0;
        }
    }

    /// A tap that copies a passing body into exchange `id`.
    pub fn tap(self: &Arc<Self>, id: u64, side: Side, size_hint: Option<u64>) -> BodyTap {
        let expect = size_hint
            .map(|n| (n as usize).min(self.limits.body_cut_bytes))
            .unwrap_or(0);
        BodyTap {
            inspector: self.clone(),
            id,
            side,
            // A known length is reserved exactly, so the copy never grows (nor is copied
            // again when it is kept).
            buf: BytesMut::with_capacity(expect),
            size: 0,
            cut: false,
            reserved: 0,
            finished: false,
        }
    }
}

fn version_text(v: hyper::Version) -> &'static str {
    match v {
        hyper::Version::HTTP_09 => "HTTP/0.9",
        hyper::Version::HTTP_10 => "HTTP/1.0",
        hyper::Version::HTTP_2 => "HTTP/2",
        hyper::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn pairs(headers: &HeaderMap) -> HeaderPairs {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), Bytes::copy_from_slice(v.as_bytes())))
        .collect()
}

/// Copies a body's bytes, up to the cut, on their way through.
pub struct BodyTap {
    inspector: Arc<Inspector>,
    id: u64,
    side: Side,
    buf: BytesMut,
    size: u64,
    cut: bool,
    /// Bytes of `in_flight` this tap holds.
    reserved: usize,
    finished: bool,
}

impl BodyTap {
    /// Notes `data` passing.
    pub fn pass(&mut self, data: &[u8]) {
        self.size += data.len() as u64;
        if self.cut {
            return;
        }
        let limits = self.inspector.limits;
        let room = limits.body_cut_bytes.saturating_sub(self.buf.len());
        let mut take = data.len().min(room);
        // Bodies still passing share the ring's byte bound.
        let held = self.inspector.in_flight.fetch_add(take, Ordering::Relaxed);
        if held + take > limits.max_body_bytes {
            self.inspector.in_flight.fetch_sub(take, Ordering::Relaxed);
            take = 0;
        } else {
            self.reserved += take;
        }
        self.buf.extend_from_slice(&data[..take]);
        if take < data.len() {
            self.cut = true;
        }
    }

    /// The body ended (`complete`) or stopped: hands what was copied to the ring.
    pub fn done(mut self, complete: bool) {
        self.finish(complete);
    }

    fn finish(&mut self, complete: bool) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let buf = std::mem::take(&mut self.buf);
        self.inspector
            .in_flight
            .fetch_sub(std::mem::take(&mut self.reserved), Ordering::Relaxed);
        // Exactly the bytes kept: a buffer grown by doubling would hold up to twice.
        let bytes = if buf.len() == buf.capacity() {
            buf.freeze()
        } else {
            Bytes::copy_from_slice(&buf)
        };
        let kept = KeptBody {
            bytes,
            size: self.size,
            cut: self.cut,
            complete,
        };
        self.inspector.record_body(self.id, self.side, kept);
    }
}

/// A body that goes on unchanged while its bytes are copied (up to the cut) into the
/// inspector; handed over when it ends, or when it is dropped before its end.
pub struct Tapped<B> {
    inner: B,
    tap: Option<BodyTap>,
}

impl<B> Tapped<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, tap: BodyTap) -> Tapped<B> {
        Tapped {
            inner,
            tap: Some(tap),
        }
    }
}

impl<B> Body for Tapped<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(tap), Some(data)) = (this.tap.as_mut(), frame.data_ref()) {
                    tap.pass(data);
                }
                // hyper stops polling a body whose length it knows once it is all there.
                if this.inner.is_end_stream() {
                    if let Some(tap) = this.tap.take() {
                        tap.done(true);
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(tap) = this.tap.take() {
                    tap.done(true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(tap) = this.tap.take() {
                    tap.done(false);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for BodyTap {
    /// A body dropped before its end is kept as far as it came.
    fn drop(&mut self) {
        self.finish(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    fn limits(max_requests: usize, max_body_bytes: usize, body_cut_bytes: usize) -> Limits {
        Limits {
            max_requests,
            max_body_bytes,
            body_cut_bytes,
        }
    }

    fn visitor() -> SocketAddr {
        "192.0.2.1:5000".parse().unwrap()
    }

    fn get(path: &str) -> Request<()> {
        Request::builder().uri(path).body(()).unwrap()
    }

    async fn pass_body(i: &Arc<Inspector>, id: u64, side: Side, data: &[u8]) {
        let tapped = Tapped::new(
            Full::new(Bytes::copy_from_slice(data)),
            i.tap(id, side, Some(data.len() as u64)),
        );
        let out = tapped.collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], data, "the body passes unchanged");
    }

    #[test]
    fn the_ring_keeps_the_last_n_requests_newest_first() {
        let i = Inspector::new("t".into(), limits(3, 1 << 20, 1024));
        for n in 0..5 {
            i.record_request(visitor(), &get(&format!("/{n}")), None, false);
        }
        let paths: Vec<String> = i.exchanges().into_iter().map(|e| e.path).collect();
        assert_eq!(paths, ["/4", "/3", "/2"]);
    }

    #[tokio::test]
    async fn the_ring_keeps_at_most_m_body_bytes_dropping_the_oldest() {
        let i = Arc::new(Inspector::new("t".into(), limits(100, 2500, 1000)));
        for n in 0..6 {
            let id = i.record_request(visitor(), &get(&format!("/{n}")), None, false);
            i.record_response(id, &Response::new(()));
            pass_body(&i, id, Side::Response, &[n as u8; 1000]).await;
        }
        let (count, bytes) = i.usage();
        assert_eq!((count, bytes), (2, 2000));
        let kept: Vec<String> = i.exchanges().into_iter().map(|e| e.path).collect();
        assert_eq!(kept, ["/5", "/4"]);
        assert_eq!(i.in_flight.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_body_over_the_cut_is_kept_up_to_it_and_marked_cut() {
        let i = Arc::new(Inspector::new("t".into(), limits(10, 1 << 20, 100)));
        let id = i.record_request(visitor(), &get("/big"), None, false);
        pass_body(&i, id, Side::Request, &[7u8; 250]).await;
        i.record_response(id, &Response::new(()));
        pass_body(&i, id, Side::Response, b"ok").await;
        let e = i.get(id).unwrap();
        assert_eq!(e.request_body.bytes.len(), 100);
        assert_eq!(e.request_body.size, 250);
        assert!(e.request_body.cut && e.request_body.complete);
        assert!(!e.response_body.cut);
        assert_eq!(&e.response_body.bytes[..], b"ok");
        assert_eq!(e.state, State::Done);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_is_kept_as_far_as_it_came() {
        let i = Arc::new(Inspector::new("t".into(), limits(10, 1 << 20, 100)));
        let id = i.record_request(visitor(), &get("/stream"), None, false);
        i.record_response(id, &Response::new(()));
        let mut tap = i.tap(id, Side::Response, None);
        tap.pass(b"first");
        drop(Tapped::new(Full::new(Bytes::new()), tap));
        let e = i.get(id).unwrap();
        assert_eq!(&e.response_body.bytes[..], b"first");
        assert!(!e.response_body.complete);
        assert_eq!(e.state, State::Broken);
    }

    #[test]
    fn bodies_still_passing_share_the_byte_bound() {
        let i = Arc::new(Inspector::new("t".into(), limits(10, 150, 100)));
        let (a, b) = (
            i.record_request(visitor(), &get("/a"), None, false),
            i.record_request(visitor(), &get("/b"), None, false),
        );
        let (mut ta, mut tb) = (i.tap(a, Side::Request, None), i.tap(b, Side::Request, None));
        ta.pass(&[1; 100]);
        tb.pass(&[2; 100]);
        assert_eq!(i.in_flight.load(Ordering::Relaxed), 100);
        assert!(tb.cut && tb.buf.is_empty() && tb.size == 100);
        ta.done(true);
        tb.done(true);
        assert_eq!(i.in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_upgrade_is_recorded_with_its_head_only() {
        let i = Inspector::new("t".into(), limits(10, 1000, 100));
        let id = i.record_request(visitor(), &get("/ws"), None, false);
        let mut resp = Response::new(());
        *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
        i.record_response(id, &resp);
        assert_eq!(i.get(id).unwrap().state, State::Upgraded);
    }

    #[test]
    fn closing_drops_everything_and_tells_the_live_view() {
        let i = Inspector::new("t".into(), limits(10, 1000, 100));
        let rx = i.subscribe();
        i.record_request(visitor(), &get("/"), None, false);
        i.close();
        assert!(i.exchanges().is_empty() && i.is_closed());
        assert!(rx.has_changed().unwrap());
        let (changed, version) = i.changed_since(0);
        assert!(changed.is_empty() && version == 2);
    }
}
