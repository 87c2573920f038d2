//! The inspector's HTTP server on one `direct-tcpip` channel of the owner's SSH session:
//! the page (built into the binary), the JSON API and the live stream (Server-Sent Events).
//! It sees the tunnels of its own session only.

use crate::edge::Edge;
use crate::inspector::capture::{Exchange, Inspector};
use crate::inspector::{replay, start, view};
use crate::io::closing_channel::ClosingChannel;
use crate::io::request_body::{read_limited, BodyRefused};
use crate::ssh::link::SessionLink;
use crate::tunnels::Tunnel;
use bytes::Bytes;
use futures::future::select_all;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, HOST};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use nearhop_wire::TunnelKind;
use russh::server::Msg;
use russh::Channel;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// Largest replay request (an edited body included) the API reads.
const MAX_API_BODY: usize = 4 * 1024 * 1024;

/// How often the live stream looks for tunnels the session opened since.
const TUNNEL_LOOK: Duration = Duration::from_secs(1);

/// The live stream sends what changed at most this often: a busy tunnel changes its ring
/// several times per request, and reading the ring takes the lock the requests take.
const BATCH: Duration = Duration::from_millis(100);

/// Idle seconds after which the live stream sends a comment, so that nothing between the
/// browser and the page takes it for dead.
const PING_EVERY: u32 = 15;

type ApiBody = BoxBody<Bytes, Infallible>;

/// Turns capture on for every HTTP tunnel of the session, now and later (the flag rides
/// on the session's options, which tunnels set up afterwards take).
pub fn inspect_session(edge: &Edge, link: &SessionLink) {
    let options = link.options();
    if !options.inspect {
        let mut o = (*options).clone();
        o.inspect = true;
        let o = Arc::new(o);
        link.set_options(o.clone());
        for tunnel in edge.tunnels_of(link.id) {
            let mut t = (*tunnel.options()).clone();
            t.inspect = true;
            tunnel.set_options(Arc::new(t));
        }
    }
    for tunnel in edge.tunnels_of(link.id) {
        if tunnel.kind == TunnelKind::Http {
            start(&edge.config, &tunnel);
        }
    }
}

/// Serves the inspector on `channel` until the browser or the session goes.
pub async fn serve(edge: Arc<Edge>, link: Arc<SessionLink>, channel: Channel<Msg>) {
    inspect_session(&edge, &link);
    edge.metrics.inspector_channels_total.inc();
    let closes = link.closes.clone();
    let view = Arc::new(SessionView { edge, link });
    let gone = view.link.gone.clone();
    let service = service_fn(move |req| {
        let view = view.clone();
        async move { Ok::<_, Infallible>(view.answer(req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(ClosingChannel::new(channel, closes)), service);
    tokio::select! {
        r = conn => if let Err(e) = r {
            tracing::debug!(error = %e, "inspector connection ended");
        },
        _ = gone.cancelled() => {}
    }
}

/// One session's inspector, as its browser sees it.
struct SessionView {
    edge: Arc<Edge>,
    link: Arc<SessionLink>,
}

fn json_response(status: StatusCode, value: &Value) -> Response<ApiBody> {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn error(status: StatusCode, message: &str) -> Response<ApiBody> {
    json_response(status, &json!({ "error": message }))
}

fn asset(content_type: &'static str, text: &'static str) -> Response<ApiBody> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed());
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut().insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'",
        ),
    );
    resp
}

/// Whether the request names the inspector's own address: a page on another site that
/// re-points its name at 127.0.0.1 (DNS rebinding) cannot read the inspector.
fn local_host(req: &Request<Incoming>) -> bool {
    let Some(host) = req.headers().get(HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    ["localhost", "127.0.0.1", "::1"]
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
}

/// The value of `key` in the query.
fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| percent_decode(v))
    })
}

/// `%XX` and `+` decoded; bad escapes are kept as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A list filter: method, status (`200` or a class `4xx`), text in the path.
#[derive(Default)]
struct Filter {
    method: Option<String>,
    status: Option<String>,
    path: Option<String>,
}

impl Filter {
    fn of(req: &Request<Incoming>) -> Filter {
        let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        Filter {
            method: nonempty(query(req, "method")),
            status: nonempty(query(req, "status")),
            path: nonempty(query(req, "path")),
        }
    }

    fn passes(&self, e: &Exchange) -> bool {
        if let Some(m) = &self.method {
            if !e.method.eq_ignore_ascii_case(m.trim()) {
                return false;
            }
        }
        if let Some(s) = &self.status {
            let s = s.trim().to_ascii_lowercase();
            let status = e.status.map(|c| c.to_string()).unwrap_or_default();
            let ok = match s.strip_suffix("xx") {
                Some(class) => status.starts_with(class),
                None => status == s,
            };
            if !ok {
                return false;
            }
        }
        if let Some(p) = &self.path {
            if !e
                .path
                .to_ascii_lowercase()
                .contains(&p.to_ascii_lowercase())
            {
                return false;
            }
        }
        true
    }
}

impl SessionView {
    /// The session's HTTP tunnels with their inspectors.
    fn inspected(&self) -> Vec<(Arc<Tunnel>, Arc<Inspector>)> {
        let mut list: Vec<_> = self
            .edge
            .tunnels_of(self.link.id)
            .into_iter()
            .filter(|t| t.kind == TunnelKind::Http)
            .filter_map(|t| start(&self.edge.config, &t).map(|i| (t, i)))
            .collect();
        list.sort_by_key(|(t, _)| t.id);
        list
    }

    fn tunnels_json(&self, list: &[(Arc<Tunnel>, Arc<Inspector>)]) -> Value {
        Value::Array(
            list.iter()
                .map(|(t, i)| {
                    let limits = i.limits();
                    json!({
                        "id": t.id,
                        "hostname": t.hostname,
                        "url": crate::ssh::messages::public_url(t, &self.edge.config),
                        "max_requests": limits.max_requests,
                        "max_body_bytes": limits.max_body_bytes,
                        "body_cut_bytes": limits.body_cut_bytes,
                    })
                })
                .collect(),
        )
    }

    /// The exchange `id` of one of the session's tunnels.
    fn find(&self, id: u64) -> Option<(Arc<Tunnel>, Arc<Inspector>, Exchange)> {
        self.inspected()
            .into_iter()
            .find_map(|(t, i)| i.get(id).map(|e| (t, i, e)))
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<ApiBody> {
        if !local_host(&req) {
            return error(
                StatusCode::FORBIDDEN,
                "the inspector answers only at localhost (http://localhost:4300 through ssh -L4300:localhost:4300)",
            );
        }
        let path = req.uri().path().to_string();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (req.method(), parts.as_slice()) {
            (&Method::GET, [""]) => asset("text/html; charset=utf-8", INDEX_HTML),
            (&Method::GET, ["app.js"]) => asset("text/javascript; charset=utf-8", APP_JS),
            (&Method::GET, ["style.css"]) => asset("text/css; charset=utf-8", STYLE_CSS),
            (&Method::GET, ["favicon.ico"]) => {
                let mut r = Response::new(Full::new(Bytes::new()).boxed());
                *r.status_mut() = StatusCode::NO_CONTENT;
                r
            }
            (&Method::GET, ["api", "requests"]) => self.list(&req),
            (&Method::GET, ["api", "requests", id]) => match id.parse() {
                Ok(id) => self.one(id, query(&req, "reveal").is_some_and(|v| v != "0")),
                Err(_) => error(StatusCode::NOT_FOUND, "no such request"),
            },
            (&Method::POST, ["api", "requests", id, "replay"]) => match id.parse() {
                Ok(id) => self.replay(id, req).await,
                Err(_) => error(StatusCode::NOT_FOUND, "no such request"),
            },
            (&Method::GET, ["api", "events"]) => self.events(),
            (_, [""] | ["api", "requests" | "events"] | ["api", "requests", _])
            | (_, ["api", "requests", _, "replay"]) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "that method is not used here; see the API in the nearhop user guide",
            ),
            _ => error(StatusCode::NOT_FOUND, "nothing here; the page is at /"),
        }
    }

    fn list(&self, req: &Request<Incoming>) -> Response<ApiBody> {
        let filter = Filter::of(req);
        let limit: usize = query(req, "limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(usize::MAX);
        let tunnels = self.inspected();
        let mut all: Vec<Exchange> = tunnels
            .iter()
            .flat_map(|(_, i)| i.exchanges())
            .filter(|e| filter.passes(e))
            .collect();
        all.sort_by_key(|e| std::cmp::Reverse(e.id));
        all.truncate(limit);
        let requests: Vec<Value> = all.iter().map(view::summary).collect();
        json_response(
            StatusCode::OK,
            &json!({ "tunnels": self.tunnels_json(&tunnels), "requests": requests }),
        )
    }

    fn one(&self, id: u64, reveal: bool) -> Response<ApiBody> {
        match self.find(id) {
            Some((_, _, e)) => json_response(StatusCode::OK, &view::detail(&e, reveal)),
            None => error(
                StatusCode::NOT_FOUND,
                "no such request among your tunnels' (it may have been dropped: only the last ones are kept)",
            ),
        }
    }

    async fn replay(&self, id: u64, req: Request<Incoming>) -> Response<ApiBody> {
        // A form on another site cannot send JSON without the browser asking first.
        let json_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json_type {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the replay with Content-Type: application/json (an empty object {} replays unchanged)",
            );
        }
        let Some((tunnel, inspector, original)) = self.find(id) else {
            return self.one(id, false);
        };
        let body = match read_limited(req.into_body(), MAX_API_BODY).await {
            Ok(b) => b,
            Err(BodyRefused::TooLong(_)) => {
                return error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the replay request is over 4 MiB",
                )
            }
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("the replay request was cut off: {e}"),
                )
            }
        };
        let edit: replay::Edit = if body.iter().all(|b| b.is_ascii_whitespace()) {
            replay::Edit::default()
        } else {
            match serde_json::from_slice(&body) {
                Ok(e) => e,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("the replay request is not the JSON expected: {e}"),
                    )
                }
            }
        };
        let request = match replay::build(&original, edit) {
            Ok(r) => r,
            Err(message) => return error(StatusCode::BAD_REQUEST, &message),
        };
        self.edge.metrics.inspector_replays_total.inc();
        match replay::send(&self.edge, &tunnel, &inspector, &original, request).await {
            Ok(done) => json_response(
                StatusCode::OK,
                &json!({ "original": view::summary(&original), "replay": view::detail(&done, false) }),
            ),
            Err(message) => error(StatusCode::BAD_GATEWAY, &message),
        }
    }

    /// The live stream: `tunnels` when the session's tunnels change, `request` with the
    /// summary row of every request recorded or changed.
    fn events(&self) -> Response<ApiBody> {
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let view = SessionView {
            edge: self.edge.clone(),
            link: self.link.clone(),
        };
        tokio::spawn(async move { view.follow(tx).await });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            let chunk = rx.recv().await?;
            Some((Ok::<_, Infallible>(Frame::data(chunk)), rx))
        });
        let mut resp = Response::new(StreamBody::new(stream).boxed());
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }

    async fn follow(&self, tx: mpsc::Sender<Bytes>) {
        let event =
            |name: &str, data: &Value| Bytes::from(format!("event: {name}\ndata: {data}\n\n"));
        let mut seen: HashMap<i64, u64> = HashMap::new();
        let mut oldest_sent: HashMap<i64, Option<u64>> = HashMap::new();
        let mut known_tunnels: Vec<i64> = Vec::new();
        let mut idle = 0u32;
        loop {
            let tunnels = self.inspected();
            let mut receivers: Vec<_> = tunnels.iter().map(|(_, i)| i.subscribe()).collect();
            let ids: Vec<i64> = tunnels.iter().map(|(t, _)| t.id).collect();
            if ids != known_tunnels {
                known_tunnels = ids;
                if tx
                    .send(event("tunnels", &self.tunnels_json(&tunnels)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            // Every change of this batch in one chunk: one write to the channel, not one per
            // request (a busy tunnel changes hundreds of rows a batch).
            let mut batch = Vec::new();
            for (t, i) in &tunnels {
                // A new stream (or tunnel) gets every kept request first: what the page
                // listed before the stream opened may have changed since.
                let since = seen.get(&t.id).copied().unwrap_or(0);
                let (changed, version) = i.changed_since(since);
                seen.insert(t.id, version);
                for e in &changed {
                    batch.extend_from_slice(&event("request", &view::summary(e)));
                }
                // The ring let older requests go: the page drops them too.
                let oldest = i.oldest_kept();
                if oldest_sent.insert(t.id, oldest) != Some(oldest) {
                    let kept = json!({ "tunnel": t.hostname, "from": oldest });
                    batch.extend_from_slice(&event("kept", &kept));
                }
            }
            let sent = !batch.is_empty();
            if sent && tx.send(Bytes::from(batch)).await.is_err() {
                return;
            }
            idle = if sent { 0 } else { idle + 1 };
            if idle >= PING_EVERY {
                idle = 0;
                if tx.send(Bytes::from_static(b": ping\n\n")).await.is_err() {
                    return;
                }
            }
            let any_change = async {
                if receivers.is_empty() {
                    std::future::pending::<()>().await;
                }
                let waits = receivers.iter_mut().map(|r| Box::pin(r.changed()));
                let _ = select_all(waits).await;
            };
            tokio::select! {
                _ = any_change => {}
                _ = tokio::time::sleep(TUNNEL_LOOK) => {}
                _ = tx.closed() => return,
                _ = self.link.gone.cancelled() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(BATCH) => {}
                _ = tx.closed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(percent_decode("a%2Fb+c"), "a/b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
