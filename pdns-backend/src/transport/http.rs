//! The HTTP listener: `/metrics`, control's `/v1/wait` and `/v1/status` (answered by
//! [`crate::lag_race`]), and pdns's `http` connector under `/dns` in its three modes (REST,
//! `post`, `post_json`).

use crate::lag_race::{self, WaitQuery};
use crate::metrics::Metrics;
use crate::protocol::{Backend, Reply};
use crate::store::Store;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Path prefix of the pdns http connector (`remote-connection-string=http:url=http://host:port/dns`).
const CONNECTOR_PREFIX: &str = "/dns";

/// What the HTTP handlers share.
pub struct HttpApp {
    /// The protocol handler.
    pub backend: Arc<Backend>,
    /// The record store (positions, counts).
    pub store: Arc<Store>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// Largest request body accepted.
    pub max_request: usize,
    /// How long a connection may take to send a request's headers: a silent or slow caller
    /// is cut, instead of holding a connection (and its task) forever.
    pub header_read_timeout: Duration,
}

/// Accepts HTTP/1.1 connections forever.
pub async fn serve(listener: TcpListener, app: Arc<HttpApp>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept on the http listener failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let header_read_timeout = app.header_read_timeout;
            let service = service_fn(move |req| {
                let app = Arc::clone(&app);
                async move { Ok::<_, std::convert::Infallible>(app.route(req).await) }
            });
            // hyper enforces the header-read timeout only with a timer.
            if let Err(e) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "http connection ended");
            }
        });
    }
}

type Resp = Response<Full<Bytes>>;

fn json_response(status: StatusCode, body: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A lag-race answer as JSON.
fn json_answer(answer: &impl serde::Serialize) -> Resp {
    match serde_json::to_string(answer) {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(e) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": {"code": "internal", "message": format!("encoding the answer: {e}")}})
                .to_string(),
        ),
    }
}

fn bad_request(message: &str) -> Resp {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({"error": {"code": "bad_request", "message": message}}).to_string(),
    )
}

impl HttpApp {
    async fn route(&self, req: Request<Incoming>) -> Resp {
        let path = req.uri().path().to_string();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/metrics") => self.metrics_page(),
            (&Method::GET, "/v1/status") => json_answer(&lag_race::status(&self.store)),
            (&Method::GET, "/v1/wait") => self.wait(req.uri().query().unwrap_or("")).await,
            (_, p) if p == CONNECTOR_PREFIX || p.starts_with("/dns/") => self.connector(req).await,
            _ => json_response(
                StatusCode::NOT_FOUND,
                json!({"error": {"code": "not_found", "message": format!("no route {path}")}})
                    .to_string(),
            ),
        }
    }

    fn metrics_page(&self) -> Resp {
        self.metrics
            .seconds_since_contact
            .set(self.store.seconds_since_contact());
        let mut r = Response::new(Full::new(Bytes::from(self.metrics.render())));
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        r
    }

    async fn wait(&self, query: &str) -> Resp {
        match WaitQuery::parse(query) {
            Ok(q) => json_answer(&lag_race::wait(&self.store, &q).await),
            Err(message) => bad_request(&message),
        }
    }

    /// pdns's http connector: POST `/dns` with a JSON document (`post_json`), POST
    /// `/dns/<method>` with a `parameters=<json>` form (`post`), or REST.
    async fn connector(&self, req: Request<Incoming>) -> Resp {
        let (parts, body) = req.into_parts();
        let body = match read_body(body, self.max_request, self.header_read_timeout).await {
            Ok(b) => b,
            Err(message) => {
                self.metrics.bad_requests.with_label_values(&["http"]).inc();
                tracing::warn!(error = %message, "refused an http connector request body");
                return reply_response(&Reply::Failure(format!("request body refused: {message}")));
            }
        };
        let path = parts.uri.path();
        let rest = path
            .strip_prefix(CONNECTOR_PREFIX)
            .unwrap_or("")
            .trim_start_matches('/');
        if rest.is_empty() {
            return reply_response(&self.backend.handle_document("http", &body));
        }
        let mut segments = rest.split('/').map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        });
        let method = segments.next().unwrap_or_default();
        let mut params = Map::new();
        let form: Vec<(String, String)> = form_urlencoded::parse(&body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if parts.method == Method::POST {
            if let Some((_, json)) = form.iter().find(|(k, _)| k == "parameters") {
                return match serde_json::from_str::<Value>(json) {
                    Ok(Value::Object(p)) => reply_response(&self.backend.call(&method, &p)),
                    _ => {
                        self.metrics.bad_requests.with_label_values(&["http"]).inc();
                        tracing::warn!(
                            "refused a post-mode request whose parameters are not a JSON object"
                        );
                        reply_response(&Reply::Failure("parameters is not a JSON object".into()))
                    }
                };
            }
        }
        // REST: path segments in pdns's fixed order, then headers, query string and form.
        let keys: &[&str] = match method.to_ascii_lowercase().as_str() {
            "lookup" => &["qname", "qtype"],
            "list" => &["domain_id", "zonename"],
            "getalldomainmetadata" | "getdomaininfo" | "gettsigkey" => &["name"],
            "getdomainmetadata" => &["name", "kind"],
            _ => &[],
        };
        for (key, value) in keys.iter().zip(segments) {
            params.insert((*key).to_string(), Value::String(value));
        }
        for (name, value) in parts.headers.iter() {
            if let Some(key) = name.as_str().strip_prefix("x-remotebackend-") {
                if let Ok(v) = value.to_str() {
                    params.insert(key.to_string(), Value::String(v.to_string()));
                }
            }
        }
        let query = parts.uri.query().unwrap_or("");
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let key = if k == "includeDisabled" {
                "include_disabled".to_string()
            } else {
                k.into_owned()
            };
            params.insert(key, Value::String(v.into_owned()));
        }
        for (k, v) in form {
            params.insert(k, Value::String(v));
        }
        reply_response(&self.backend.call(&method, &params))
    }
}

/// Most bytes of a refused, over-long body read and thrown away so that its sender gets
/// the refusal (see [`read_body`]).
const DRAIN_LIMIT: usize = 16 << 20;

/// Reads a request body of at most `max` bytes. A longer one is refused, but the rest of it
/// is still read and thrown away (at most [`DRAIN_LIMIT`] bytes, for at most `drain_for`)
/// before the refusal is sent: closing a connection with unread bytes makes the kernel reset
/// it, and a caller still writing its body would then see a broken pipe instead of the
/// answer that says what was wrong.
async fn read_body(mut body: Incoming, max: usize, drain_for: Duration) -> Result<Bytes, String> {
    let mut got = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the body: {e}"))?;
        if let Some(data) = frame.data_ref() {
            if got.len() + data.len() > max {
                let refusal = format!("the body is longer than max_request_bytes ({max})");
                drain(&mut body, got.len() + data.len(), drain_for).await;
                return Err(refusal);
            }
            got.extend_from_slice(data);
        }
    }
    Ok(Bytes::from(got))
}

/// Reads and drops what is left of `body`, up to [`DRAIN_LIMIT`] bytes (counting `already`)
/// and for at most `limit` time; whatever is still unread after that is left to the reset.
async fn drain(body: &mut Incoming, already: usize, limit: Duration) {
    let mut dropped = already;
    let _ = tokio::time::timeout(limit, async {
        while dropped <= DRAIN_LIMIT {
            match body.frame().await {
                Some(Ok(frame)) => dropped += frame.data_ref().map_or(0, |d| d.len()),
                _ => break,
            }
        }
    })
    .await;
}

fn reply_response(reply: &Reply) -> Resp {
    let status = match reply {
        Reply::Result(_) => StatusCode::OK,
        Reply::Failure(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json_response(status, reply.to_json())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::Rules;
    use crate::apex::RegionMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Serves on a free loopback port with a short header-read timeout.
    async fn listener() -> std::net::SocketAddr {
        let store = Arc::new(Store::new());
        let metrics = Arc::new(Metrics::new());
        let backend = Arc::new(Backend::new(
            Arc::clone(&store),
            RegionMap::new(Vec::new(), "us".into(), 30.0),
            Rules {
                apex_ttl: 10,
                nearest_edge_zones: Default::default(),
            },
            Arc::clone(&metrics),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(serve(
            listener,
            Arc::new(HttpApp {
                backend,
                store,
                metrics,
                max_request: 64 * 1024,
                header_read_timeout: Duration::from_millis(200),
            }),
        ));
        addr
    }

    /// Reads until the server closes; a read that waits a whole minute is a failure (the
    /// server never closed), not a measure of anything.
    async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return got,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => panic!("the server kept a silent connection open"),
            }
        }
    }

    #[tokio::test]
    async fn an_over_long_body_is_refused_in_words_and_the_connection_goes_on() {
        let addr = listener().await;
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        // Far more than the loopback socket buffers hold: without the drain, the server's
        // close resets the connection while the caller is still writing, and the refusal
        // is lost.
        let body = vec![b'z'; 4 << 20];
        let head = format!(
            "POST /dns HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await.expect("write head");
        conn.write_all(&body).await.expect("write body");
        conn.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write the next request");
        let answer = String::from_utf8_lossy(&read_until_closed(&mut conn).await).into_owned();
        assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
        assert!(
            answer.contains("longer than max_request_bytes (65536)"),
            "{answer}"
        );
        let next = answer
            .find("HTTP/1.1 200")
            .expect("the next request is answered");
        assert!(next > 0, "{answer}");
    }

    #[tokio::test]
    async fn silent_and_half_sent_connections_are_closed() {
        let addr = listener().await;
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        read_until_closed(&mut silent).await;
        let mut half = TcpStream::connect(addr).await.expect("connect");
        half.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        read_until_closed(&mut half).await;
        // A caller that sends its request in time is answered, then cut once it goes quiet.
        let mut prompt = TcpStream::connect(addr).await.expect("connect");
        prompt
            .write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let answer = read_until_closed(&mut prompt).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
}
