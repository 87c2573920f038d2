//! The edge's admin API for control: close a tunnel, probe whether a tunnel's client is
//! alive; plus `/metrics` and `/healthz` for operators. Control authenticates with the admin
//! key this edge made at start and gave only to control, in its registration (or, for an
//! edge still on the legacy shared secret, with that secret).

use crate::edge::Edge;
use crate::io::request_body::{read_limited, BodyRefused};
use crate::io::unreadable_requests::{Answering, ToldWhy};
use crate::visitor::pages::{full, ProxyBody};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::rt::TokioTimer;
use nearhop_wire::{AliveResponse, ApiError, EdgeCloseRequest, ErrorCode};
use serde::Serialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Largest admin request body.
const MAX_BODY: usize = 64 * 1024;

/// Serves the admin API (it keeps serving during shutdown, so control can still ask).
pub async fn serve(edge: Arc<Edge>, listener: TcpListener) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accepting an admin connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let edge = edge.clone();
        tokio::spawn(async move {
            let edge_for_timer = edge.clone();
            let answering = Answering::default();
            let io = ToldWhy::new(stream, answering.clone(), unreadable_request);
            let service = service_fn(move |req| {
                answering.begin();
                let edge = edge.clone();
                async move { Ok::<_, Infallible>(route(&edge, req).await) }
            });
            // A silent or slow caller is cut like a slow visitor, instead of holding a
            // connection for ever.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(crate::visitor::http::head_timeout(&edge_for_timer))
                .serve_connection(TokioIo::new(io), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
    }
}

async fn route(edge: &Edge, req: Request<Incoming>) -> Response<ProxyBody> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    match segments.as_slice() {
        // HEAD as GET (hyper sends the head only): balancers' health checks use it.
        ["metrics"] => {
            if method != Method::GET && method != Method::HEAD {
                return method_not_allowed(&method, &path, "GET, HEAD");
            }
            edge.metrics.observe_holders(&edge.mesh.holders.peers());
            edge.metrics
                .observe_relay_openings(&edge.mesh.relay_openings());
            let mut resp = Response::new(full(edge.metrics.render()));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            resp
        }
        ["healthz"] => {
            if method != Method::GET && method != Method::HEAD {
                return method_not_allowed(&method, &path, "GET, HEAD");
            }
            Response::new(full("ok\n"))
        }
        ["v1", "tunnels", id, action @ ("close" | "alive")] => {
            if !authorized(edge, &req) {
                return error(
                    ErrorCode::Unauthorized,
                    "missing or wrong admin key: only control may call this edge's admin API",
                );
            }
            let Ok(id) = id.parse::<i64>() else {
                return error(ErrorCode::BadRequest, "tunnel id must be a number");
            };
            match (&method, *action) {
                (&Method::POST, "close") => close(edge, id, req).await,
                (&Method::GET, "alive") => alive(edge, id).await,
                (_, "close") => method_not_allowed(&method, &path, "POST"),
                _ => method_not_allowed(&method, &path, "GET"),
            }
        }
        _ => not_found(),
    }
}

async fn close(edge: &Edge, id: i64, req: Request<Incoming>) -> Response<ProxyBody> {
    let body = match read_limited(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(e @ BodyRefused::TooLong(_)) => {
            return error(
                ErrorCode::PayloadTooLarge,
                &format!("bad close request: {e}"),
            )
        }
        Err(e) => return error(ErrorCode::BadRequest, &format!("bad close request: {e}")),
    };
    let close: EdgeCloseRequest = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error(ErrorCode::BadRequest, &format!("bad close request: {e}")),
    };
    let Some(tunnel) = edge.registry.by_id(id) else {
        return error(
            ErrorCode::NotFound,
            &format!("tunnel {id} is not on this edge"),
        );
    };
    edge.close_tunnel(&tunnel, close.reason.as_str(), Some(&close.message), false)
        .await;
    json(StatusCode::OK, &serde_json::json!({"closed": true}))
}

async fn alive(edge: &Edge, id: i64) -> Response<ProxyBody> {
    let answer = match edge.registry.by_id(id) {
        // A tunnel closed here is known, and dead: control may give its name to a new
        // tunnel at once (a client reconnecting elsewhere right after its setup).
        None => AliveResponse {
            known: edge.registry.closed_recently(id),
            alive: false,
        },
        Some(tunnel) => AliveResponse {
            known: true,
            alive: tunnel.session.probe_alive(edge.config.alive_probe()).await,
        },
    };
    json(StatusCode::OK, &answer)
}

fn authorized(edge: &Edge, req: &Request<Incoming>) -> bool {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    // Control holds the admin key from this edge's registration. An edge still on the
    // legacy shared secret also accepts that secret (control has no key of it then).
    nearhop_wire::bearer_matches(header, &edge.admin_key)
        || (edge.config.credential.is_empty()
            && nearhop_wire::bearer_matches(header, &edge.config.edge_secret))
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<ProxyBody> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(full(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// An error answer, with the status every nearhop API gives `code` (wire's one mapping).
fn error(code: ErrorCode, message: &str) -> Response<ProxyBody> {
    let status =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(status, &ApiError::new(code, message))
}

/// The whole answer to a request whose head hyper could not read (`io::unreadable_requests`),
/// with hyper's status (400, 414, 431) and the API's error body.
fn unreadable_request(status: u16) -> Vec<u8> {
    let (reason, message) = match status {
        414 => (
            "URI Too Long",
            "the request's URL is longer than 65,534 bytes",
        ),
        431 => (
            "Request Header Fields Too Large",
            "the request's header fields are larger than about 400 KiB, or more than 100",
        ),
        _ => (
            "Bad Request",
            "the request is not valid HTTP/1.1 (a malformed request line, header field, \
             Content-Length or Transfer-Encoding)",
        ),
    };
    ApiError::new(ErrorCode::BadRequest, message).closing_http1_answer(status, reason)
}

fn not_found() -> Response<ProxyBody> {
    error(
        ErrorCode::NotFound,
        "no such endpoint: this edge's admin API serves /metrics, /healthz and \
         /v1/tunnels/ID/close and /alive (docs/edge.md, \"Admin API\")",
    )
}

/// 405, with the method the endpoint takes in `Allow`.
fn method_not_allowed(method: &Method, path: &str, allowed: &'static str) -> Response<ProxyBody> {
    let mut resp = error(
        ErrorCode::MethodNotAllowed,
        &format!("{method} is not a method of {path}; it takes {allowed}"),
    );
    resp.headers_mut()
        .insert(hyper::header::ALLOW, HeaderValue::from_static(allowed));
    resp
}
