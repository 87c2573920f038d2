//! The HTTP visitor listener: routes each request by `Host` (`visitor::routing`), runs the
//! request phases, and proxies it over one `forwarded-tcpip` channel per visitor connection
//! (kept for the connection's next requests). A request for a tunnel another edge holds is
//! relayed there the same way, over a mesh channel to that edge. Bodies stream both ways;
//! upgrades (WebSocket) become a byte splice with no idle cut. HTTP/2 streams
//! (`visitor::http2`) are answered by the same `VisitorConn`, each on a channel of its own.
//!
//! Long because one request's whole way (routing, phases, the kept channel of HTTP/1.1 and
//! the pool of HTTP/2, retries, upgrades) reads top-down here, with about 125 lines of tests.

use crate::edge::Edge;
use crate::inspector;
use crate::io::accept;
use crate::io::counting::CountingStream;
use crate::io::last_word;
use crate::io::proxy_header;
use crate::io::read_buffer::Prefixed;
use crate::io::unreadable_requests::{Answering, ToldWhy};
use crate::mesh::links::PeerLink;
use crate::ssh::messages;
use crate::tunnels::Tunnel;
use crate::visitor::first_request;
use crate::visitor::http_phases::{self, RequestCtx};
use crate::visitor::pages::{self, ProxyBody};
use crate::visitor::relay_stream::{self, After};
use crate::visitor::routing::{self, Arrival, Listener, Refusal, Route};
use crate::visitor::shares::Share;
use crate::visitor::splice::splice;
use crate::visitor::upstream::{self, IdlePool, OpenFailure, Target, Upstream, UpstreamBody};
use http_body_util::{BodyExt, Either, Empty};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HOST, UPGRADE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use nearhop_wire::TunnelKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::Instrument;

/// Smallest head buffer hyper accepts.
const MIN_HEAD_BUFFER: usize = 8192;

/// The largest visitor request head the edge takes, HTTP/1.1 or HTTP/2:
/// `visitor_max_header_bytes`, at least hyper's smallest buffer.
pub fn max_head(edge: &Edge) -> usize {
    edge.config.visitor_max_header_bytes.max(MIN_HEAD_BUFFER)
}

/// Accepts visitors until shutdown.
pub async fn serve(edge: Arc<Edge>, listener: TcpListener) {
    accept::until_stopped(
        &listener,
        edge.shutdown.cancelled(),
        "an HTTP visitor",
        |mut stream, tcp_peer| {
            if let Some(slot) = edge.visitor_slot(Listener::Http.as_str()) {
                let edge = edge.clone();
                tokio::spawn(async move {
                    edge.prepare_visitor_socket(&stream);
                    let deadline = Instant::now() + head_timeout(&edge);
                    let behind = edge.real_peer("http", &mut stream, tcp_peer);
                    let Some((peer, rest)) = behind.await else {
                        return;
                    };
                    let Some(_share) = http_visitor_share(&edge, &mut stream, peer).await else {
                        return;
                    };
                    let stream = Prefixed::new(rest, edge.guard_visitor_writes(stream));
                    serve_stream(&edge, stream, peer, "http", deadline, Arrival::Direct)
                        .instrument(routing::span(Listener::Http, peer))
                        .await;
                    drop(slot);
                });
            }
        },
    )
    .await;
}

/// One visitor connection and the upstreams (SSH channels) it uses.
pub(super) struct VisitorConn {
    edge: Arc<Edge>,
    peer: SocketAddr,
    scheme: &'static str,
    arrival: Arrival,
    upstreams: Upstreams,
}

/// Where a visitor connection keeps its upstreams between requests.
pub(super) enum Upstreams {
    /// HTTP/1.1: one request at a time, so one channel, kept for the next request.
    Kept(Mutex<Option<Upstream>>),
    /// HTTP/2: streams run side by side, each on a channel of its own, taken from the idle
    /// ones or opened, and given back when its answer ended cleanly.
    Pooled(Arc<IdlePool>),
}

/// Time a visitor has from connecting to a complete first request head (slowloris bound).
pub fn head_timeout(edge: &Edge) -> Duration {
    Duration::from_secs(edge.config.visitor_header_timeout_seconds.max(1))
}

/// The share of the edge's connections an HTTP visitor's network holds while this one is
/// served; a network holding its whole share is told so at once (and the connection is
/// then dropped). Both listeners that take plain HTTP (the HTTP port, and the TLS port
/// with `ssh_on_tls_port`) ask here.
pub async fn http_visitor_share<S: AsyncWrite + Unpin>(
    edge: &Edge,
    stream: &mut S,
    peer: SocketAddr,
) -> Option<Share<u128>> {
    let share = edge.address_share(peer.ip());
    if share.is_none() {
        let _ = stream.write_all(pages::ADDRESS_BUSY.as_bytes()).await;
    }
    share
}

/// Serves a visitor connection that speaks HTTP/1.1 on `stream`: a plain one (`scheme`
/// `http`) or one whose TLS the edge terminated (`https`). The first request head must be
/// complete by `deadline` (counted from the connection's accept, TLS handshake included).
/// `peer` is the visitor's address, also when a peer edge relayed the connection here.
pub async fn serve_stream<S>(
    edge: &Arc<Edge>,
    mut stream: S,
    peer: SocketAddr,
    scheme: &'static str,
    deadline: Instant,
    arrival: Arrival,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let m = &edge.metrics;
    let head_timeout = head_timeout(edge);
    let max_head = max_head(edge);
    // The first request head is read here, not by hyper, so that an `x:noreverseproxy`
    // tunnel can take the connection whole.
    let reading = tokio::time::timeout_at(deadline, first_request::read(&mut stream, max_head));
    let first = match tokio::select! {
        r = reading => r,
        // An idle connection does not hold up the drain.
        _ = edge.shutdown.cancelled() => return,
    } {
        Ok(Ok(first)) => first,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, %peer, "reading a visitor's first request");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "visitor sent no complete request head in time");
            return;
        }
    };
    if first.host.is_none() && proxy_header::looks_like_header(&first.bytes) {
        // Headers from trusted balancers were taken off before; this one is not trusted.
        let listener = if scheme == "https" { "tls" } else { "http" };
        proxy_header::count_untrusted(m, listener);
        tracing::debug!(%peer, "PROXY protocol header from an untrusted address refused");
        let answer = proxy_header::untrusted_answer();
        last_word::answer_and_close(&mut stream, answer.as_bytes()).await;
        return;
    }
    if first.host.is_none() && first.bytes.starts_with(pages::H2_PREFACE_START) {
        // A client speaking HTTP/2 without TLS (`curl --http2-prior-knowledge`, a gRPC
        // client on http://): hyper would close without a word.
        tracing::debug!(%peer, "cleartext HTTP/2 refused");
        last_word::answer_and_close(&mut stream, &pages::h2c_refusal()).await;
        return;
    }
    let mut read_ahead = first.bytes;
    if let Some(host) = first.host.as_deref() {
        // Any other route is hyper's: each request, the first included, is routed below.
        match routing::route(edge, Listener::Http, host, peer, arrival) {
            // Both boxed: a connection served by hyper then carries no room for their
            // futures, which are larger than the rest of this one (every connection's task
            // is as large as its largest branch, and floods hold thousands).
            Route::Splice(tunnel) => {
                Box::pin(splice(edge, &tunnel, stream, peer, read_ahead)).await;
                return;
            }
            // Passed on as bytes while its requests stay with that holder.
            Route::Relay(link) => {
                let relaying =
                    relay_stream::relay(edge, link, host, stream, peer, scheme, read_ahead);
                match Box::pin(relaying).await {
                    After::Closed => return,
                    After::Hyper(s, pending) => (stream, read_ahead) = (s, pending),
                }
            }
            _ => {}
        }
    }
    let answering = Answering::default();
    let refused = m.http_responses_total.clone();
    let io = TokioIo::new(ToldWhy::new(
        CountingStream::new(
            Prefixed::new(read_ahead, stream),
            m.visitor_bytes_total.with_label_values(&["in"]),
            m.visitor_bytes_total.with_label_values(&["out"]),
        ),
        answering.clone(),
        move |status| {
            refused.with_label_values(&["4xx", "edge"]).inc();
            pages::unreadable_request(status, max_head)
        },
    ));
    let conn = Arc::new(VisitorConn::new(
        edge.clone(),
        peer,
        scheme,
        arrival,
        Upstreams::Kept(Mutex::new(None)),
    ));
    // A relayed request, safe to send twice, that another edge's tunnel now answers ends
    // the relayed connection unanswered (`HeldElsewhere`): hyper closes it without writing.
    let service = service_fn(move |req| {
        answering.begin();
        let conn = conn.clone();
        async move { conn.handle(req).await }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_buf_size(max_head)
        // The read buffer's bound alone lets a head past it through when its end came in
        // the same read: a complete head is measured too.
        .max_header_size(max_head)
        .max_headers(pages::MAX_REQUEST_FIELDS);
    let served = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(served);
    let result = tokio::select! {
        r = &mut served => r,
        _ = edge.shutdown.cancelled() => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, %peer, "visitor connection ended with an error");
    }
}

/// A relayed request, safe to send twice, for a tunnel that another peer edge holds now:
/// its client moved there while the request was on its way. This edge does not relay it on
/// (one hop at most); it ends the relay channel without an answer, so that the relaying
/// edge, which sees a holder that went before answering, sends the request again to where
/// the tunnel is now.
#[derive(Debug)]
pub(super) struct HeldElsewhere;

impl std::fmt::Display for HeldElsewhere {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the tunnel is held by another edge now; the relaying edge sends it there")
    }
}

impl std::error::Error for HeldElsewhere {}

/// Why an attempt at a request got no answer.
enum NotAnswered {
    /// The upstream failed before any answer (see [`Failed`]).
    Failed(Failed),
    /// The tunnel is another edge's now (see [`HeldElsewhere`]).
    HeldElsewhere,
}

impl From<Failed> for NotAnswered {
    fn from(failed: Failed) -> NotAnswered {
        NotAnswered::Failed(failed)
    }
}

/// How many times one request may be tried: a kept-alive channel that had just closed, then
/// a fresh channel whose session turned out to be ending, then wherever the tunnel went.
const MAX_ATTEMPTS: u32 = 3;

/// How long a request whose tunnel's session stopped answering waits for the edge to see
/// the session end (on a network that drops the client silently, SSH keepalives take over).
const SESSION_END_WAIT: Duration = Duration::from_secs(2);

/// One attempt that could not reach the tunnel (or the peer edge holding it), before any of
/// the answer came back.
struct Failed {
    /// What the visitor gets when the request is not tried again.
    page: Response<ProxyBody>,
    /// The `origin` that page is counted under: `edge` (this edge could not reach the
    /// tunnel's client), `relay` (nor the peer edge holding the tunnel).
    origin: &'static str,
    /// The tunnel whose session stopped answering: wait for it to close, then route again.
    ending: Option<Arc<Tunnel>>,
    /// The peer edge that held the tunnel: when its link is going down, wait until this
    /// edge has forgotten what the peer held, then route again (to where the tunnel's
    /// client reconnects, waiting that out).
    peer: Option<Arc<PeerLink>>,
    /// The inspector's record of the attempt, carried to the next one.
    capture: Option<inspector::Capture>,
    /// The request went to a peer edge and got no answer: a relayed request that failed
    /// (`relay_errors_total{cause="request_failed"}`), or `request_resent` when it is
    /// tried again.
    relayed_unanswered: bool,
}

impl Failed {
    /// The failure of an attempt to reach `target`; `ending`, its tunnel's session.
    fn at(target: Target<'_>, ending: Option<Arc<Tunnel>>) -> Failed {
        let (page, peer) = match target {
            Target::Tunnel(_) => (pages::client_unreachable(), None),
            Target::Peer(link, _) => (pages::holder_unreachable(), Some(link.clone())),
        };
        Failed {
            page,
            origin: page_origin(target),
            ending,
            peer,
            capture: None,
            relayed_unanswered: false,
        }
    }
}

/// Waits until `host` is no longer routed to `link` (its link went down and its holdings
/// were forgotten, or the name moved), up to [`SESSION_END_WAIT`]; not past
/// [`PEER_DOWN_GRACE`] while the link stays connected (a channel the peer refused, or a
/// kept-alive one it had just closed: the retry goes to it again at once).
async fn peer_let_go(edge: &Edge, link: &Arc<PeerLink>, host: &str) {
    let start = Instant::now();
    let name = edge.registry.tunnel_name(host);
    loop {
        match edge.mesh.holder_of(&name) {
            Some((holder, _)) if Arc::ptr_eq(&holder, link) => {}
            _ => return,
        }
        let waited = start.elapsed();
        let link_up = link.is_connected().await && !link.stop.is_cancelled();
        if waited >= SESSION_END_WAIT || (link_up && waited >= PEER_DOWN_GRACE) {
            return;
        }
        tokio::time::sleep(PEER_LET_GO_POLL).await;
    }
}

/// How long a link that still looks connected may take to show that it went down.
const PEER_DOWN_GRACE: Duration = Duration::from_millis(200);

/// How often [`peer_let_go`] looks.
const PEER_LET_GO_POLL: Duration = Duration::from_millis(50);

/// What became of a request sent upstream.
enum Sent {
    /// The answer's head came back.
    Answer(Response<Incoming>),
    /// An answer of the edge's own (no answer in time, the visitor's body broke off): the
    /// visitor gets this page, and the channel is not used again.
    Page(Response<ProxyBody>),
    /// The channel failed before any of the answer came back.
    Failed(Failed),
}

/// What came back for a request forwarded upstream.
enum Forwarded {
    /// The upstream's answer: the tunnel's service, or the peer edge holding the tunnel.
    Answer(Response<ProxyBody>),
    /// A page this edge wrote instead (no answer in time, the visitor's body broke off, the
    /// tunnel busy, the holder silent).
    Page(Response<ProxyBody>),
}

impl Forwarded {
    /// The answer, and the `origin` it is counted under in `http_responses_total`.
    fn counted_as(self, target: Target<'_>) -> (Response<ProxyBody>, &'static str) {
        match (self, target) {
            (Forwarded::Answer(resp), Target::Tunnel(_)) => (resp, "tunnel"),
            (Forwarded::Answer(resp), Target::Peer(..)) => (resp, "relay"),
            (Forwarded::Page(page), target) => (page, page_origin(target)),
        }
    }
}

/// The `origin` a page of this edge's own is counted under when a request for `target`
/// gets it: `edge` for a tunnel of this edge, `relay` for one a peer edge holds.
fn page_origin(target: Target<'_>) -> &'static str {
    match target {
        Target::Tunnel(_) => "edge",
        Target::Peer(..) => "relay",
    }
}

/// What the visitor gets when no upstream to `target` could be opened (in the shape of
/// `forward`'s answer, which it is).
#[allow(clippy::result_large_err)]
fn not_opened(target: Target<'_>, e: OpenFailure) -> Result<Forwarded, Failed> {
    match e {
        OpenFailure::SessionGone => {
            let ending = match target {
                Target::Tunnel(t) => Some(t.clone()),
                Target::Peer(..) => None,
            };
            Err(Failed::at(target, ending))
        }
        OpenFailure::Refused | OpenFailure::PeerUnreachable => Err(Failed::at(target, None)),
        // Not tried again: the visitor is told to come back in a moment.
        OpenFailure::TunnelBusy => Ok(Forwarded::Page(pages::tunnel_busy())),
        // Nor this: its client stopped answering, and would keep the visitor waiting again.
        OpenFailure::ClientNotAnswering(bound) => Ok(Forwarded::Page(pages::client_not_answering(
            bound.as_secs(),
        ))),
        // Not tried again either: the holder's host stopped answering.
        OpenFailure::PeerNotAnswering => Ok(Forwarded::Page(pages::holder_unreachable())),
    }
}

/// The head of a request that is safe to send again (idempotent, no body, no upgrade), kept
/// from before the phases rewrote it.
struct Replay {
    method: hyper::Method,
    uri: hyper::Uri,
    version: hyper::Version,
    headers: hyper::HeaderMap,
}

impl Replay {
    fn of(req: &Request<Incoming>) -> Option<Replay> {
        use hyper::body::Body;
        let safe = req.method().is_idempotent() && req.body().is_end_stream();
        (safe && !wants_upgrade(req)).then(|| Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        })
    }

    fn request(&self) -> Request<UpstreamBody> {
        let mut req = Request::new(UpstreamBody::Right(Either::Left(Empty::new())));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

impl VisitorConn {
    /// A visitor connection from `peer` over `scheme`, its upstreams kept in `upstreams`.
    pub(super) fn new(
        edge: Arc<Edge>,
        peer: SocketAddr,
        scheme: &'static str,
        arrival: Arrival,
        upstreams: Upstreams,
    ) -> VisitorConn {
        VisitorConn {
            edge,
            peer,
            scheme,
            arrival,
            upstreams,
        }
    }

    /// Answers one request. A request that fails before any answer because its tunnel's
    /// client was reconnecting (or a kept-alive channel had just closed) is tried again
    /// when it is safe to send twice, so a client moving between edges loses no visit.
    /// A request relayed here whose tunnel moved to another edge meanwhile is not answered
    /// here ([`HeldElsewhere`]) when it is safe to send twice; any other, and any inside a
    /// whole TLS connection, gets the "Tunnel moved" page, since the relaying edge could
    /// not send it again.
    pub(super) async fn handle(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, HeldElsewhere> {
        let replay = Replay::of(&req);
        let mut req = req.map(UpstreamBody::Left);
        let mut attempt = 1;
        let mut capture = None;
        loop {
            let mut failed = match self.handle_once(req, capture).await {
                Ok(resp) => return Ok(resp),
                Err(NotAnswered::Failed(failed)) => failed,
                Err(NotAnswered::HeldElsewhere) => {
                    tracing::debug!("relayed request's tunnel is held by another edge now");
                    // Only a request the relaying edge sends again is handed back: one safe to
                    // send twice (`Replay`), the rule of both its paths (the byte path's is
                    // `http1_frames::safe_to_send_twice`); any other would be lost with the
                    // channel, so its visitor is told.
                    if self.arrival == Arrival::RelayedWhole || replay.is_none() {
                        return Ok(self.count(pages::tunnel_moved(), "edge"));
                    }
                    return Err(HeldElsewhere);
                }
            };
            capture = failed.capture.take();
            let Some(replay) = replay.as_ref().filter(|_| attempt < MAX_ATTEMPTS) else {
                if failed.relayed_unanswered {
                    self.relay_error("request_failed");
                }
                return Ok(self.count(failed.page, failed.origin));
            };
            if failed.relayed_unanswered {
                self.relay_error("request_resent");
            }
            if let Some(tunnel) = failed.ending {
                let _ = tokio::time::timeout(SESSION_END_WAIT, tunnel.stop.cancelled()).await;
            }
            attempt += 1;
            tracing::debug!(attempt, "sending a request again after its upstream failed");
            self.edge.metrics.http_retries_total.inc();
            req = replay.request();
            if let (Some(link), Ok(host)) = (failed.peer, request_host(&req)) {
                peer_let_go(&self.edge, &link, &host).await;
            }
        }
    }

    /// One attempt at answering `req`; `earlier`, the inspector's record of the attempt
    /// before (see [`inspector::begin`]).
    async fn handle_once(
        &self,
        mut req: Request<UpstreamBody>,
        earlier: Option<inspector::Capture>,
    ) -> Result<Response<ProxyBody>, NotAnswered> {
        let host = match request_host(&req) {
            Ok(host) => host,
            Err(problem) => {
                return Ok(self.count(pages::bad_request(problem.sentence()), "edge"));
            }
        };
        to_origin_form(&mut req);
        let Some(route) = self.route_waiting_out_reconnects(&host).await else {
            return Err(NotAnswered::HeldElsewhere);
        };
        let resp = match route {
            // A tunnel that takes connections whole gets them only from their first request
            // (see `serve_stream`); a later request on a kept-alive connection is proxied.
            Route::Proxy(tunnel) | Route::Splice(tunnel) => {
                let options = tunnel.options();
                let ctx = RequestCtx {
                    visitor: self.peer,
                    host: &host,
                    scheme: self.scheme,
                    https_port: self.edge.config.public_tls_port(),
                    options: &options,
                    throttle: Some((&self.edge.auth_throttle, tunnel.id)),
                };
                match http_phases::run(&ctx, &mut req) {
                    Some(answer) => {
                        if answer.status() == StatusCode::TOO_MANY_REQUESTS {
                            self.edge.metrics.visitor_auth_throttled_total.inc();
                        }
                        answer
                    }
                    None => {
                        let config = &self.edge.config;
                        let capture = inspector::begin(
                            config, &tunnel, &options, self.peer, &mut req, earlier,
                        );
                        let upgrade = capture.as_ref().map(inspector::Capture::upgrade_record);
                        let target = Target::Tunnel(&tunnel);
                        let forwarded = match self.forward(target, req, upgrade).await {
                            Ok(forwarded) => forwarded,
                            Err(failed) => {
                                return Err(NotAnswered::Failed(Failed { capture, ..failed }))
                            }
                        };
                        let (resp, origin) = forwarded.counted_as(target);
                        return Ok(self.count(inspector::answered(capture, resp), origin));
                    }
                }
            }
            // The holder runs the phases with the tunnel's options for the real visitor.
            Route::Relay(link) => {
                self.edge
                    .metrics
                    .relay_requests_total
                    .with_label_values(&[&link.id])
                    .inc();
                let target = Target::Peer(&link, &host);
                let (resp, origin) = self.forward(target, req, None).await?.counted_as(target);
                return Ok(self.count(resp, origin));
            }
            Route::Refuse(Refusal::Forbidden) => pages::forbidden(),
            Route::Refuse(Refusal::WrongListener(tunnel)) => self.wrong_listener(&host, &tunnel),
            // The HTTP listener is never told to terminate TLS; an unknown name it is.
            Route::Refuse(Refusal::Unknown) | Route::Terminate => pages::unknown_host(&host),
        };
        Ok(self.count(resp, "edge"))
    }

    /// Routes the request; a name that was live a moment ago (here or at a peer) and is not
    /// now is waited for, up to `reconnect_wait_seconds`, so that a visitor does not see
    /// "No tunnel here" while the tunnel's client reconnects (through any edge). `None`: the
    /// request was relayed here, and a peer edge holds the name now ([`HeldElsewhere`]).
    async fn route_waiting_out_reconnects(&self, host: &str) -> Option<Route> {
        let edge = &self.edge;
        let route = routing::route_quietly(edge, Listener::Http, host, self.peer, self.arrival);
        if !matches!(route, Route::Refuse(Refusal::Unknown)) {
            return Some(route);
        }
        let name = edge.registry.tunnel_name(host);
        if self.held_elsewhere(&name) {
            return None;
        }
        let wait = Duration::from_secs(edge.config.reconnect_wait_seconds);
        let holders = &edge.mesh.holders;
        if wait.is_zero() || !holders.recently_gone(&name) {
            return Some(route);
        }
        tracing::debug!(name, "tunnel just left; waiting for it to come back");
        let until = Instant::now() + wait;
        loop {
            let arrived = holders.arrivals().notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let again = routing::route_quietly(edge, Listener::Http, host, self.peer, self.arrival);
            if !matches!(again, Route::Refuse(Refusal::Unknown)) {
                return Some(again);
            }
            if self.held_elsewhere(&name) {
                return None;
            }
            if Instant::now() >= until {
                return Some(again);
            }
            tokio::select! {
                _ = tokio::time::timeout_at(until, arrived) => {}
                _ = edge.shutdown.cancelled() => return Some(again),
            }
        }
    }

    /// Whether this connection was relayed here and a peer edge holds `name` now: the
    /// relaying edge is to send the request there ([`HeldElsewhere`]), or the visitor to
    /// try again, since a relayed request goes no further.
    fn held_elsewhere(&self, name: &str) -> bool {
        self.arrival != Arrival::Direct && self.edge.mesh.holder_of(name).is_some()
    }

    /// The page for a `tls` or `tcp` tunnel's name asked for over HTTP: where to go instead.
    fn wrong_listener(&self, host: &str, tunnel: &Tunnel) -> Response<ProxyBody> {
        let config = &self.edge.config;
        match tunnel.kind {
            TunnelKind::Tls => {
                let url = messages::https_url(host, config);
                pages::tls_only(host, &format!("{url}/"), self.scheme)
            }
            TunnelKind::Tcp => pages::tcp_only(host, &messages::public_url(tunnel, config)),
            TunnelKind::Http => pages::unknown_host(host),
        }
    }

    fn count(&self, resp: Response<ProxyBody>, origin: &str) -> Response<ProxyBody> {
        let class = match resp.status().as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.edge
            .metrics
            .http_responses_total
            .with_label_values(&[class, origin])
            .inc();
        resp
    }

    /// Sends the request to the tunnel's client, or to the peer edge holding the tunnel,
    /// and streams the answer back. Fails (for the caller to try again) only before any of
    /// the answer arrived.
    async fn forward(
        &self,
        target: Target<'_>,
        req: Request<UpstreamBody>,
        upgrade: Option<inspector::UpgradeRecord>,
    ) -> Result<Forwarded, Failed> {
        match &self.upstreams {
            Upstreams::Kept(slot) => self.forward_kept(slot, target, req, upgrade).await,
            Upstreams::Pooled(pool) => self.forward_pooled(pool, target, req).await,
        }
    }

    /// HTTP/1.1: over the connection's one kept channel (opened anew when it is gone or
    /// goes elsewhere); an upgrade takes the channel with it.
    async fn forward_kept(
        &self,
        slot: &Mutex<Option<Upstream>>,
        target: Target<'_>,
        mut req: Request<UpstreamBody>,
        upgrade: Option<inspector::UpgradeRecord>,
    ) -> Result<Forwarded, Failed> {
        let visitor_upgrade = wants_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
        let mut slot = slot.lock().await;
        let key = target.key();
        let reusable = match slot.as_mut() {
            Some(up) if up.key == key && target.is_live() => up.sender.ready().await.is_ok(),
            _ => false,
        };
        if !reusable {
            *slot = None;
            match upstream::open(&self.edge, target, self.peer, self.scheme).await {
                Ok(up) => *slot = Some(up),
                Err(e) => return not_opened(target, e),
            }
        }
        let Some(up) = slot.as_mut() else {
            return Err(Failed::at(target, None));
        };
        let mut resp = match self.send(target, up, req).await {
            Sent::Answer(resp) => resp,
            Sent::Page(page) => {
                // The channel may still bring that late answer: it is not reused.
                *slot = None;
                return Ok(Forwarded::Page(page));
            }
            Sent::Failed(failed) => {
                *slot = None;
                return Err(failed);
            }
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            // The upstream connection now belongs to the upgraded stream.
            *slot = None;
            if let Some(visitor_upgrade) = visitor_upgrade {
                let upstream_upgrade = hyper::upgrade::on(&mut resp);
                tokio::spawn(splice_upgraded(visitor_upgrade, upstream_upgrade, upgrade));
            }
        }
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            strip_hop_fields(resp.headers_mut());
        }
        // The visitor gets this edge's own HTTP version, not the local service's (RFC 9110,
        // 6.2: an intermediary sends its own). hyper writes the version it is given, so an
        // HTTP/1.0 service's answers would end each visitor's connection after one request;
        // hyper itself answers an HTTP/1.0 visitor in HTTP/1.0.
        *resp.version_mut() = hyper::Version::HTTP_11;
        Ok(Forwarded::Answer(resp.map(|b| b.boxed())))
    }

    /// HTTP/2: over an idle channel of the connection's pool, or a new one; the channel
    /// goes back to the pool when the answer's body has ended cleanly.
    async fn forward_pooled(
        &self,
        pool: &Arc<IdlePool>,
        target: Target<'_>,
        req: Request<UpstreamBody>,
    ) -> Result<Forwarded, Failed> {
        let mut up = match pool.take(target).await {
            Some(up) => up,
            None => match upstream::open(&self.edge, target, self.peer, self.scheme).await {
                Ok(up) => up,
                Err(e) => return not_opened(target, e),
            },
        };
        match self.send(target, &mut up, req).await {
            Sent::Answer(resp) => Ok(Forwarded::Answer(pool.give_back_after(resp, up))),
            Sent::Page(page) => Ok(Forwarded::Page(page)),
            Sent::Failed(failed) => Err(failed),
        }
    }

    /// Sends the request on `up` and waits for the answer's head, up to
    /// `visitor_response_timeout_seconds`.
    async fn send(
        &self,
        target: Target<'_>,
        up: &mut Upstream,
        req: Request<UpstreamBody>,
    ) -> Sent {
        let limit = self.edge.config.visitor_response_timeout_seconds;
        let sent = if limit == 0 {
            up.sender.send_request(req).await
        } else {
            match tokio::time::timeout(Duration::from_secs(limit), up.sender.send_request(req))
                .await
            {
                Ok(sent) => sent,
                Err(_) => {
                    self.edge.metrics.visitor_response_timeouts_total.inc();
                    return Sent::Page(pages::response_timeout(limit));
                }
            }
        };
        match sent {
            Ok(resp) => Sent::Answer(resp),
            Err(e) if visitor_body_failed(&e) => {
                // The visitor's fault, not the tunnel's: a malformed chunked body, or one
                // cut short. The channel went down with the request.
                tracing::debug!(error = %e, "the visitor's request body failed");
                Sent::Page(pages::bad_request(
                    "The request's body is malformed or was cut short.",
                ))
            }
            Err(e) => {
                tracing::debug!(error = %e, "request through the tunnel or relay failed");
                Sent::Failed(Failed {
                    relayed_unanswered: matches!(target, Target::Peer(..)),
                    ..Failed::at(target, None)
                })
            }
        }
    }

    fn relay_error(&self, cause: &str) {
        self.edge
            .metrics
            .relay_errors_total
            .with_label_values(&[cause])
            .inc();
    }
}

/// Takes off an answer's fields about the local service's own connection to the edge
/// (RFC 9110 §7.6.1): `Connection` and every field it names, `Keep-Alive`,
/// `Proxy-Connection`. They are not the visitor's: hyper decides the visitor's connection,
/// so a service that closes its connection after every answer (`php -S`) does not end the
/// visitor's each time. The framing fields (`Transfer-Encoding`, `Content-Length`) stay
/// for hyper, named or not.
pub fn strip_hop_fields(headers: &mut hyper::HeaderMap) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<hyper::header::HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| hyper::header::HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .filter(|name| {
                *name != hyper::header::TRANSFER_ENCODING && *name != hyper::header::CONTENT_LENGTH
            })
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in ["connection", "keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
}

/// Whether a request failed on its way upstream because reading the visitor's body failed
/// (hyper's client reports the body's error as the cause of a user error).
fn visitor_body_failed(e: &hyper::Error) -> bool {
    if !e.is_user() {
        return false;
    }
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.is::<hyper::Error>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Carries an upgraded connection (a WebSocket) both ways until either side ends it; an
/// inspected tunnel's record gets the byte counts.
async fn splice_upgraded(
    visitor: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    record: Option<inspector::UpgradeRecord>,
) {
    let (visitor, upstream) = tokio::join!(visitor, upstream);
    match (visitor, upstream) {
        (Ok(v), Ok(u)) => {
            let v = TokioIo::new(v);
            let mut u = TokioIo::new(u);
            // Counted on the visitor's side: read from the visitor goes into the tunnel.
            let (to_tunnel, to_visitor) =
                (Arc::<AtomicU64>::default(), Arc::<AtomicU64>::default());
            let mut v = CountingStream::new(v, to_tunnel.clone(), to_visitor.clone());
            if let Err(e) = tokio::io::copy_bidirectional(&mut v, &mut u).await {
                tracing::debug!(error = %e, "upgraded connection ended");
            }
            if let Some(record) = record {
                record.ended(
                    to_tunnel.load(Ordering::Relaxed),
                    to_visitor.load(Ordering::Relaxed),
                );
            }
        }
        (v, u) => {
            tracing::debug!(
                visitor_ok = v.is_ok(),
                upstream_ok = u.is_ok(),
                "upgrade failed"
            );
        }
    }
}

fn wants_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(UPGRADE)
        && req
            .headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// A request with an absolute target (`GET http://b.example/p`) goes on in origin form,
/// with `Host` set to the target's authority, as a proxy passes it on: the local service
/// sees the request it would have got had the visitor asked it directly.
fn to_origin_form<B>(req: &mut Request<B>) {
    let Some(authority) = req.uri().authority() else {
        return;
    };
    let host = match authority.port() {
        Some(port) => format!("{}:{port}", authority.host()),
        None => authority.host().to_string(),
    };
    let origin = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse::<hyper::Uri>();
    if let (Ok(value), Ok(origin)) = (hyper::header::HeaderValue::from_str(&host), origin) {
        req.headers_mut().insert(HOST, value);
        *req.uri_mut() = origin;
    }
}

/// The host a request is for: the absolute target's authority, else `Host`; lowercase,
/// without port or trailing dot. Why there is none: a 400.
pub fn request_host<B>(req: &Request<B>) -> Result<String, first_request::HostProblem> {
    first_request::host_from(
        req.headers().get_all(HOST).iter().map(|v| v.as_bytes()),
        req.uri().authority().map(|a| a.as_str()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_is_lowercased_without_port_or_dot() {
        let r = Request::builder()
            .header(HOST, "Blog.A.Tunnel.Test.:8080")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r).as_deref(), Ok("blog.a.tunnel.test"));
        let r = Request::builder()
            .uri("http://x.example/p")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r).as_deref(), Ok("x.example"));
        let r = Request::builder()
            .header(HOST, "bad host")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r), Err(first_request::HostProblem::Invalid));
        let r = Request::builder().uri("/p").body(()).unwrap();
        assert_eq!(request_host(&r), Err(first_request::HostProblem::Missing));
    }

    #[test]
    fn two_host_headers_or_user_information_name_no_host() {
        let r = Request::builder()
            .header(HOST, "a.example")
            .header(HOST, "b.example")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r), Err(first_request::HostProblem::Repeated));
        let r = Request::builder()
            .uri("http://user@b.example/p")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r), Err(first_request::HostProblem::Invalid));
    }

    #[test]
    fn an_absolute_target_wins_over_host_and_goes_on_in_origin_form() {
        let mut r = Request::builder()
            .uri("http://B.example:8080/p?q=1")
            .header(HOST, "a.example")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r).as_deref(), Ok("b.example"));
        to_origin_form(&mut r);
        assert_eq!(r.uri(), "/p?q=1");
        assert_eq!(r.headers()[HOST], "B.example:8080");
        assert_eq!(request_host(&r).as_deref(), Ok("b.example"));
        // Origin form is left alone.
        let mut r = Request::builder()
            .uri("/p")
            .header(HOST, "a.example")
            .body(())
            .unwrap();
        to_origin_form(&mut r);
        assert_eq!(
            (r.uri().to_string(), &r.headers()[HOST]),
            (
                "/p".into(),
                &"a.example".parse::<hyper::header::HeaderValue>().unwrap()
            )
        );
    }

    fn conn_for(kind: TunnelKind, scheme: &'static str) -> (VisitorConn, Arc<Tunnel>) {
        conn_with(kind, scheme, None)
    }

    fn conn_with(
        kind: TunnelKind,
        scheme: &'static str,
        tcp_host: Option<&str>,
    ) -> (VisitorConn, Arc<Tunnel>) {
        let config = crate::config::Config {
            tcp_host: tcp_host.map(str::to_string),
            ..Default::default()
        };
        let edge = Arc::new(Edge::for_tests(config, 1));
        let tunnel = Arc::new(Tunnel::new(
            3,
            "db.a.tunnel.test".into(),
            "a.tunnel.test".into(),
            "us".into(),
            kind,
            (kind == TunnelKind::Tcp).then_some(20007),
            crate::tunnels::ForwardTarget {
                address: "localhost".into(),
                port: 5432,
            },
            Arc::new(crate::ssh::link::SessionLink::new(
                1,
                "127.0.0.1:1".parse().expect("addr"),
            )),
            Arc::default(),
        ));
        let conn = VisitorConn {
            edge,
            peer: "192.0.2.1:5000".parse().expect("addr"),
            scheme,
            arrival: Arrival::Direct,
            upstreams: Upstreams::Kept(Mutex::new(None)),
        };
        (conn, tunnel)
    }

    async fn page_text(resp: Response<ProxyBody>) -> String {
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    #[tokio::test]
    async fn a_tcp_tunnels_name_over_http_or_https_gets_a_421_naming_its_port() {
        for scheme in ["http", "https"] {
            let (conn, tunnel) = conn_for(TunnelKind::Tcp, scheme);
            let resp = conn.wrong_listener("db.a.tunnel.test", &tunnel);
            assert_eq!(resp.status(), StatusCode::MISDIRECTED_REQUEST);
            let text = page_text(resp).await;
            assert!(text.contains("tcp://db.a.tunnel.test:20007"), "{text}");
        }
        // With `tcp_host`, the address names the edge, whatever resolvers cached for the name.
        let (conn, tunnel) = conn_with(TunnelKind::Tcp, "http", Some("eu-1.edges.example.com"));
        let text = page_text(conn.wrong_listener("db.a.tunnel.test", &tunnel)).await;
        assert!(
            text.contains("tcp://eu-1.edges.example.com:20007"),
            "{text}"
        );
        assert!(!text.contains("tcp://db.a.tunnel.test"), "{text}");
    }

    #[tokio::test]
    async fn a_tls_tunnels_name_over_http_gets_a_421_with_its_https_url() {
        let (conn, tunnel) = conn_for(TunnelKind::Tls, "http");
        let resp = conn.wrong_listener("db.a.tunnel.test", &tunnel);
        assert_eq!(resp.status(), StatusCode::MISDIRECTED_REQUEST);
        let text = page_text(resp).await;
        assert!(text.contains("https://db.a.tunnel.test:8443/"), "{text}");
    }

    #[test]
    fn websocket_requests_want_an_upgrade() {
        let r = Request::builder()
            .header(UPGRADE, "websocket")
            .header(CONNECTION, "keep-alive, Upgrade")
            .body(())
            .unwrap();
        assert!(wants_upgrade(&r));
    }
}
