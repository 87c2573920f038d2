//! Sending a recorded request again, optionally edited, to the local service: through a
//! new `forwarded-tcpip` channel of the tunnel, as a visitor's request goes. The replay is
//! recorded like any request, marked as the replay of its original.

use crate::edge::Edge;
use crate::inspector::capture::{Exchange, Inspector, Side};
use crate::inspector::view;
use crate::tunnels::Tunnel;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// What the user changed before sending again; what is absent is the original's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Edit {
    /// Method, e.g. `POST`.
    pub method: Option<String>,
    /// Path and query, starting with `/`.
    pub path: Option<String>,
    /// All headers, `[name, value]`; a value still showing the mask stands for the
    /// original's value of that header.
    pub headers: Option<Vec<(String, String)>>,
    /// The body as text.
    pub body: Option<String>,
    /// The body as base64 (for bytes that are no text); not with `body`.
    pub body_base64: Option<String>,
}

/// Headers that belong to one connection or to the body's framing: the replay's own are
/// set by its HTTP connection.
const HOP_HEADERS: [&str; 6] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "upgrade",
    "te",
];

/// Builds the request to send from the original and the edit; the error is a sentence for
/// the user.
pub fn build(original: &Exchange, edit: Edit) -> Result<Request<Bytes>, String> {
    let method = edit.method.as_deref().unwrap_or(&original.method).trim();
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("{method:?} is not an HTTP method"))?;
    let path = edit.path.as_deref().unwrap_or(&original.path).trim();
    if !path.starts_with('/') {
        return Err(format!("the path must start with '/' (got {path:?})"));
    }
    let uri = path
        .parse::<hyper::Uri>()
        .map_err(|_| format!("{path:?} is not a valid path and query"))?;
    let body = match (edit.body_base64, edit.body) {
        (Some(_), Some(_)) => {
            return Err(
                "give the body once: as \"body\" (text) or as \"body_base64\", not both"
                    .to_string(),
            )
        }
        (Some(b64), None) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| "body_base64 is not valid base64".to_string())?,
        ),
        (None, Some(text)) => Bytes::from(text),
        (None, None) => {
            if original.request_body.cut || !original.request_body.complete {
                return Err(format!(
                    "only the first {} of the original body's {} bytes were kept; send the body with the replay",
                    original.request_body.bytes.len(),
                    original.request_body.size
                ));
            }
            original.request_body.bytes.clone()
        }
    };
    let original_value = |name: &str| {
        original
            .request_headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let pairs: Vec<(String, Bytes)> = match edit.headers {
        Some(edited) => edited
            .into_iter()
            .map(|(name, value)| {
                let original = original_value(&name);
                let masked_original = original
                    .as_ref()
                    .map(|v| view::mask(&name, &String::from_utf8_lossy(v)));
                match original {
                    Some(v) if masked_original.as_deref() == Some(value.as_str()) => (name, v),
                    _ => (name, Bytes::from(value)),
                }
            })
            .collect(),
        None => original.request_headers.clone(),
    };
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    for (name, value) in pairs {
        let header = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("{name:?} is not a valid header name"))?;
        if HOP_HEADERS.contains(&header.as_str()) {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(value)
            .map_err(|_| format!("the value of header {name:?} is not valid"))?;
        req.headers_mut().append(header, value);
    }
    Ok(req)
}

/// Sends `req` through the tunnel and records it (and its answer) as a replay of
/// `original`; returns the recorded exchange. The error is a sentence for the user.
pub async fn send(
    edge: &Edge,
    tunnel: &Arc<Tunnel>,
    inspector: &Arc<Inspector>,
    original: &Exchange,
    req: Request<Bytes>,
) -> Result<Exchange, String> {
    let _share = edge
        .tunnel_share(tunnel)
        .ok_or("the tunnel holds its whole share of visitor connections; try again shortly")?;
    let id = inspector.record_request(original.visitor, &req, Some(original.id), false);
    let unreachable = |what: &str| {
        inspector.record_no_answer(id);
        format!("the replay could not reach your local service: {what}")
    };
    let channel = edge
        .open_visitor_channel(tunnel, original.visitor)
        .await
        .map_err(|e| unreachable(&e.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(channel))
        .await
        .map_err(|e| unreachable(&e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "replay connection ended");
        }
    });
    let mut request_tap = inspector.tap(id, Side::Request, None);
    request_tap.pass(req.body());
    request_tap.done(true);
    let limit = edge.config.visitor_response_timeout_seconds;
    let sent = sender.send_request(req.map(Full::new));
    let resp = if limit == 0 {
        sent.await
    } else {
        tokio::time::timeout(Duration::from_secs(limit), sent)
            .await
            .map_err(|_| unreachable(&format!("no answer within {limit} s")))?
    }
    .map_err(|e| unreachable(&e.to_string()))?;
    inspector.record_response(id, &resp);
    if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        // Read up to the cut, then let the rest go (a stream may never end).
        let cut = inspector.limits().body_cut_bytes;
        let mut tap = inspector.tap(id, Side::Response, None);
        let mut body = resp.into_body();
        let mut kept = 0usize;
        let mut complete = true;
        while kept <= cut {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        kept += data.len();
                        tap.pass(data);
                    }
                }
                Some(Err(_)) => {
                    complete = false;
                    break;
                }
                None => break,
            }
        }
        if kept > cut {
            complete = false;
        }
        tap.done(complete);
    }
    inspector
        .get(id)
        .ok_or_else(|| "the replay was sent, but the inspector no longer keeps it".to_string())
}
