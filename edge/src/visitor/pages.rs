//! Pages the edge itself answers visitors with (unknown host, tunnel client unreachable,
//! auth required, ...), short and friendly.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};

/// The body type of every visitor response.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// A body from bytes.
pub fn full(data: impl Into<Bytes>) -> ProxyBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An HTML page with a title and one paragraph.
pub fn page(status: StatusCode, title: &str, text: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(full(html(title, text)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

/// The HTML of [`page`].
fn html(title: &str, text: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\">\
         <h1>{title}</h1><p>{text}</p><p><small>nearhop</small></p></body></html>\n",
        title = escape(title),
        text = escape(text)
    )
}

/// How an HTTP/2 client's connection preface begins (RFC 9113 §3.4).
pub const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0\r\n";

/// What a client that opened a cleartext connection in HTTP/2 is told, in HTTP/2: an empty
/// SETTINGS frame (the server's preface), then GOAWAY with `HTTP_1_1_REQUIRED` and a
/// sentence as its debug data, which clients such as curl show.
pub fn h2c_refusal() -> Vec<u8> {
    const SAY: &[u8] = b"nearhop: this port speaks HTTP/1.1 only, not cleartext HTTP/2; \
        use HTTP/1.1 here, or HTTPS, where HTTP/2 is offered";
    let mut out = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
    let len = (8 + SAY.len()) as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&0u32.to_be_bytes()); // last stream id: none was processed
    out.extend_from_slice(&0xdu32.to_be_bytes()); // HTTP_1_1_REQUIRED
    out.extend_from_slice(SAY);
    out
}

/// The whole answer (head and page) to a request whose head hyper could not read, with
/// the status hyper chose: 400 (not HTTP/1.1: a malformed request line, field, length or
/// coding), 414 (a URL too long) or 431 (a head over `max_head` bytes, or too many fields).
/// Written in place of hyper's bare status (`io::unreadable_requests`); the connection
/// closes after it.
pub fn unreadable_request(status: u16, max_head: usize) -> Vec<u8> {
    let (reason, title, text) = unreadable_words(status, max_head);
    let body = html(title, &text);
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/html; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// 431 for an HTTP/2 stream whose head is over `max_head` bytes (counted as its HTTP/1.1
/// form would be) or has too many fields: the page of [`unreadable_request`], on the
/// stream; the connection goes on.
pub fn head_too_large(max_head: usize) -> Response<ProxyBody> {
    let (_, title, text) = unreadable_words(431, max_head);
    page(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, title, &text)
}

/// The reason phrase, title and sentence of [`unreadable_request`]'s page for `status`.
fn unreadable_words(status: u16, max_head: usize) -> (&'static str, &'static str, String) {
    match status {
        414 => (
            "URI Too Long",
            "URL too long",
            "This request's URL is longer than this server accepts (65,534 bytes). Send large \
             data in the request body instead."
                .to_string(),
        ),
        431 => (
            "Request Header Fields Too Large",
            "Request headers too large",
            format!(
                "This request's head, its URL and header fields, is more than this server \
                 accepts ({} KiB in all, at most {MAX_REQUEST_FIELDS} fields). Most often that \
                 is cookies that grew too large: clear this site's cookies in your browser and \
                 try again. If the URL is very long, send large data in the request body \
                 instead.",
                max_head / 1024
            ),
        ),
        _ => (
            "Bad Request",
            "Bad request",
            "This server could not read the request: it is not valid HTTP/1.1 (its request \
             line, a header field, Content-Length or Transfer-Encoding is malformed). \
             Browsers do not send such requests; look at the program that sent it."
                .to_string(),
        ),
    }
}

/// Most header fields hyper reads in a request head (its default); more is a 431.
pub const MAX_REQUEST_FIELDS: usize = 100;

/// 404 for a host no tunnel serves.
pub fn unknown_host(host: &str) -> Response<ProxyBody> {
    page(
        StatusCode::NOT_FOUND,
        "No tunnel here",
        &format!("There is no live tunnel for {host} on this server. If it is yours, start it again with ssh; it may also be served from another region while DNS catches up."),
    )
}

/// 421 for HTTP to a TLS passthrough tunnel's name: plain HTTP, or HTTPS whose server name
/// was another tunnel's.
pub fn tls_only(host: &str, https_url: &str, scheme: &str) -> Response<ProxyBody> {
    let text = if scheme == "https" {
        format!("{host} passes TLS through to its own server; this connection was made for another name. Open {https_url} directly.")
    } else {
        format!("{host} passes TLS through to its own server, so it cannot answer plain HTTP. Open {https_url} instead.")
    };
    page(
        StatusCode::MISDIRECTED_REQUEST,
        "This tunnel speaks TLS",
        &text,
    )
}

/// 421 for HTTP or HTTPS to a `tcp` tunnel's name: the tunnel is served on its own port
/// only, never as HTTP on the edge's web ports.
pub fn tcp_only(host: &str, tcp_url: &str) -> Response<ProxyBody> {
    page(
        StatusCode::MISDIRECTED_REQUEST,
        "This tunnel is a TCP tunnel",
        &format!("{host} is a TCP tunnel: it is served at {tcp_url} only, not over HTTP or HTTPS."),
    )
}

/// 400 for a request without a usable Host.
pub fn bad_request(why: &str) -> Response<ProxyBody> {
    page(StatusCode::BAD_REQUEST, "Bad request", why)
}

/// 502 when the tunnel's client does not take the connection.
pub fn client_unreachable() -> Response<ProxyBody> {
    page(
        StatusCode::BAD_GATEWAY,
        "Tunnel client not answering",
        "The tunnel is up, but its SSH client did not accept this connection or its local service did not answer. Is the local service running?",
    )
}

/// 504 when the tunnel's client did not take the visitor's connection within `seconds`.
pub fn client_not_answering(seconds: u64) -> Response<ProxyBody> {
    page(
        StatusCode::GATEWAY_TIMEOUT,
        "Tunnel client not answering",
        &format!(
            "The tunnel is up, but its SSH client did not take this connection within \
             {seconds} s: the computer running it may be asleep, or its network stalled. \
             Try again in a moment."
        ),
    )
}

/// 502 when the edge holding the tunnel could not be reached over the mesh.
pub fn holder_unreachable() -> Response<ProxyBody> {
    page(
        StatusCode::BAD_GATEWAY,
        "Tunnel edge not answering",
        "The tunnel is up on another nearhop edge, but this edge could not reach it just now. Try again in a moment.",
    )
}

/// Written at once to an HTTP visitor whose network holds its whole share of the edge's
/// connections, before any request is read; the connection is then closed.
pub const ADDRESS_BUSY: &str = "HTTP/1.1 503 Service Unavailable\r\n\
    content-type: text/plain; charset=utf-8\r\nretry-after: 10\r\nconnection: close\r\n\
    content-length: 79\r\n\r\n\
    Too many connections from your address to this edge. Close some and try again.\n";

/// 503 for a request to a tunnel that holds its whole share of visitor connections.
pub fn tunnel_busy() -> Response<ProxyBody> {
    let mut resp = page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Tunnel busy",
        "This tunnel has as many visitors as it may have at once. Try again in a moment.",
    );
    resp.headers_mut()
        .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("5"));
    resp
}

/// 503 for a request relayed here whose tunnel moved to another edge meanwhile, when the
/// relaying edge cannot send it again (a request with a body, or one inside a whole TLS
/// connection): the visitor is asked to.
pub fn tunnel_moved() -> Response<ProxyBody> {
    let mut resp = page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Tunnel moved",
        "This tunnel moved to another nearhop edge a moment ago. Try again.",
    );
    resp.headers_mut()
        .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// 504 for a request whose answer did not start within `seconds`.
pub fn response_timeout(seconds: u64) -> Response<ProxyBody> {
    page(
        StatusCode::GATEWAY_TIMEOUT,
        "No answer in time",
        &format!(
            "The service behind this tunnel did not start answering within {seconds} s. \
             Its owner may want to look at it."
        ),
    )
}

/// 403 for a visitor outside the allowlist.
pub fn forbidden() -> Response<ProxyBody> {
    page(
        StatusCode::FORBIDDEN,
        "Forbidden",
        "Your address is not allowed to use this tunnel.",
    )
}

/// 401 asking for credentials.
pub fn unauthorized(basic: bool) -> Response<ProxyBody> {
    let mut resp = page(
        StatusCode::UNAUTHORIZED,
        "Authentication required",
        "This tunnel requires credentials.",
    );
    let challenge = if basic {
        "Basic realm=\"nearhop\", charset=\"UTF-8\""
    } else {
        "Bearer realm=\"nearhop\""
    };
    resp.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    resp
}

/// 429 for a visitor that gave wrong credentials too often: when to try again.
pub fn too_many_failures(wait: std::time::Duration) -> Response<ProxyBody> {
    // Rounded up, so that a visitor that waits as told is let through.
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut resp = page(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many failed attempts",
        &format!(
            "Too many wrong credentials for this tunnel from your address. Try again in \
             {seconds} s."
        ),
    );
    resp.headers_mut()
        .insert(hyper::header::RETRY_AFTER, HeaderValue::from(seconds));
    resp
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busy_answer_is_one_well_formed_response() {
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(ADDRESS_BUSY.as_bytes()) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("{other:?}"),
        };
        assert_eq!(resp.code, Some(503));
        let length = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| {
                std::str::from_utf8(h.value)
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            });
        assert_eq!(length, Some(ADDRESS_BUSY.len() - head));
    }
}
