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
const HOP_HEADERS: [&str; 8] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];

/// How long a replay waits for its answer's body once the head came: a stream (server-sent
/// events, a long poll) may never end, and the replay shows what came by then.
const BODY_WAIT: Duration = Duration::from_secs(10);

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
    // A value shown masked stands for the original it masks: the first original of that
    // name, not taken yet, whose mask it is (so deleting or reordering lines keeps each
    // masked value with its own original).
    let mut taken = vec![false; original.request_headers.len()];
    let pairs: Vec<(String, Bytes)> = match edit.headers {
        Some(edited) => edited
            .into_iter()
            .map(|(name, value)| {
                let found = original
                    .request_headers
                    .iter()
                    .enumerate()
                    .find(|(i, (n, v))| {
                        !taken[*i]
                            && n.eq_ignore_ascii_case(name.trim())
                            && view::mask(n, &String::from_utf8_lossy(v)) == value
                    })
                    .map(|(i, (_, v))| (i, v.clone()));
                match found {
                    Some((i, v)) => {
                        taken[i] = true;
                        (name, v)
                    }
                    None => (name, Bytes::from(value)),
                }
            })
            .collect(),
        None => original.request_headers.clone(),
    };
    // Fields the `Connection` header names belong to that connection too.
    let named_by_connection: Vec<String> = pairs
        .iter()
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    for (name, value) in pairs {
        let header = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("{name:?} is not a valid header name"))?;
        if HOP_HEADERS.contains(&header.as_str())
            || named_by_connection.iter().any(|n| n == header.as_str())
        {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(value)
            .map_err(|_| format!("the value of header {name:?} is not valid"))?;
        req.headers_mut().append(header, value);
    }
    // HTTP/1.1 needs a Host: the original's, when the edit left none.
    if !req.headers().contains_key(hyper::header::HOST) {
        let host = view::header_value(&original.request_headers, "host")
            .unwrap_or(original.tunnel.as_bytes());
        let host = Bytes::copy_from_slice(host);
        if let Ok(host) = HeaderValue::from_maybe_shared(host) {
            req.headers_mut().insert(hyper::header::HOST, host);
        }
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
        let until = tokio::time::Instant::now() + BODY_WAIT;
        while kept <= cut {
            match tokio::time::timeout_at(until, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        kept += data.len();
                        tap.pass(data);
                    }
                }
                Ok(Some(Err(_))) | Err(_) => {
                    complete = false;
                    break;
                }
                Ok(None) => break,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspector::capture::Limits;

    /// An exchange recorded from a visitor's GET with these headers.
    fn recorded(headers: &[(&str, &str)]) -> Exchange {
        let inspector = Inspector::new(
            "shop.a.tunnel.test".into(),
            Limits {
                max_requests: 10,
                max_body_bytes: 1 << 20,
                body_cut_bytes: 1024,
            },
        );
        let mut req = Request::builder().uri("/cart");
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let req = req.body(()).expect("request");
        let visitor = "192.0.2.1:5000".parse().expect("address");
        let id = inspector.record_request(visitor, &req, None, false);
        inspector.get(id).expect("recorded")
    }

    fn as_shown(original: &Exchange) -> Vec<(String, String)> {
        original
            .request_headers
            .iter()
            .map(|(n, v)| (n.clone(), view::mask(n, &String::from_utf8_lossy(v))))
            .collect()
    }

    fn values<'a>(req: &'a Request<Bytes>, name: &str) -> Vec<&'a str> {
        req.headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("text"))
            .collect()
    }

    /// Headers left masked keep their originals, each its own: the second Cookie's mask
    /// stands for the second Cookie, also once the first is deleted.
    #[test]
    fn every_header_left_masked_keeps_its_own_original() {
        let original = recorded(&[
            ("host", "shop.a.tunnel.test"),
            ("cookie", "a=SECRET1"),
            ("cookie", "b=SECRET2"),
            ("authorization", "Basic AAA"),
            ("authorization", "Bearer BBB"),
        ]);
        let edit = Edit {
            headers: Some(as_shown(&original)),
            body: Some(String::new()),
            ..Edit::default()
        };
        let req = build(&original, edit).expect("built");
        assert_eq!(values(&req, "cookie"), ["a=SECRET1", "b=SECRET2"]);
        assert_eq!(values(&req, "authorization"), ["Basic AAA", "Bearer BBB"]);
        // The first of each deleted: the one left keeps its own original.
        let shown = as_shown(&original);
        let edit = Edit {
            headers: Some(vec![shown[0].clone(), shown[2].clone(), shown[4].clone()]),
            body: Some(String::new()),
            ..Edit::default()
        };
        let req = build(&original, edit).expect("built");
        assert_eq!(values(&req, "cookie"), ["b=SECRET2"]);
        assert_eq!(values(&req, "authorization"), ["Bearer BBB"]);
    }

    /// What belongs to one connection is not sent: the hop-by-hop fields, and those the
    /// `Connection` header names. A replay whose edit left no Host gets the original's.
    #[test]
    fn connection_fields_are_dropped_and_a_host_is_always_sent() {
        let original = recorded(&[("host", "shop.a.tunnel.test"), ("x-keep", "1")]);
        let edit = Edit {
            headers: Some(vec![
                ("Connection".into(), "close, X-Private".into()),
                ("X-Private".into(), "p".into()),
                ("Trailer".into(), "x-sum".into()),
                ("Proxy-Connection".into(), "keep-alive".into()),
                ("X-Keep".into(), "1".into()),
            ]),
            body: Some(String::new()),
            ..Edit::default()
        };
        let req = build(&original, edit).expect("built");
        let names: Vec<&str> = req.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-keep", "host"]);
        assert_eq!(values(&req, "host"), ["shop.a.tunnel.test"]);
        let bare = build(
            &original,
            Edit {
                headers: Some(vec![]),
                body: Some(String::new()),
                ..Edit::default()
            },
        )
        .expect("built");
        assert_eq!(values(&bare, "host"), ["shop.a.tunnel.test"]);
    }
}
