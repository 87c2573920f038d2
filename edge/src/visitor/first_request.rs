//! The head of a visitor connection's first HTTP request, read before hyper sees the
//! connection, so that a tunnel with `x:noreverseproxy` can take the connection whole: the
//! edge routes it by `Host` and splices every byte, the head included, untouched.

use bytes::BufMut;
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Most headers parsed in the first head; more leaves routing to hyper.
const MAX_HEADERS: usize = 128;

/// Room made in the head's buffer for each read.
const READ_SIZE: usize = 4096;

/// What was read ahead of hyper.
#[derive(Debug, Default)]
pub struct FirstRequest {
    /// Every byte read so far (to be replayed, to hyper or to the tunnel).
    pub bytes: Vec<u8>,
    /// The host the first request is for, when its head is complete and names one.
    pub host: Option<String>,
    /// Bytes handed to the HTTP parser: the head is parsed once it is complete, not after
    /// every read (a head sent a byte at a time must not cost its length squared).
    pub parsed_bytes: usize,
}

/// Reads until the first request head is complete, `max` bytes have arrived, or the
/// visitor stops sending. Heads that are not HTTP, too long or cut short come back without
/// a host: hyper then answers them as it answers any visitor (a page saying what was wrong,
/// `io::unreadable_requests`, or nothing).
pub async fn read<R: AsyncRead + Unpin>(visitor: &mut R, max: usize) -> io::Result<FirstRequest> {
    let mut first = FirstRequest {
        bytes: Vec::with_capacity(1024),
        host: None,
        parsed_bytes: 0,
    };
    while first.bytes.len() < max {
        // Read into the head's own spare room: a read buffer on the side would sit in every
        // waiting connection's task.
        let scanned = first.bytes.len();
        first.bytes.reserve(READ_SIZE.min(max - scanned));
        let n = visitor
            .read_buf(&mut (&mut first.bytes).limit(max - scanned))
            .await?;
        if n == 0 {
            break;
        }
        // Each byte is looked at once for the blank line that ends a head; the parser runs
        // only once one has arrived (or on the first read, to refuse what is not HTTP early).
        if scanned > 0 && !has_head_end(&first.bytes, scanned) {
            continue;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        first.parsed_bytes += first.bytes.len();
        match req.parse(&first.bytes) {
            Ok(httparse::Status::Complete(_)) => {
                first.host = host_of(&req);
                break;
            }
            Ok(httparse::Status::Partial) => continue,
            Err(_) => break,
        }
    }
    Ok(first)
}

/// Whether `buf` holds a blank line (`\n\n` or `\n\r\n`, the end of a head) ending at or
/// after `from`, looking back only as far as such a line can reach over the boundary.
pub(crate) fn has_head_end(buf: &[u8], from: usize) -> bool {
    let start = from.saturating_sub(2);
    buf[start..].windows(2).enumerate().any(|(i, w)| {
        w[0] == b'\n'
            && (w[1] == b'\n' || (w[1] == b'\r' && buf.get(start + i + 2) == Some(&b'\n')))
    })
}

/// The host a parsed head is for, as [`host_from`] picks it.
fn host_of(req: &httparse::Request<'_, '_>) -> Option<String> {
    let headers = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| h.value);
    let target: Option<hyper::Uri> = req.path.and_then(|p| p.parse().ok());
    host_from(
        headers,
        target
            .as_ref()
            .and_then(|u| u.authority())
            .map(|a| a.as_str()),
    )
    .ok()
}

/// Why a request names no host the edge can route by: each is a 400 (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostProblem {
    /// No `Host` header and no absolute request target.
    Missing,
    /// More than one `Host` header.
    Repeated,
    /// A `Host` (or the request target's authority) that is not a host with at most a port.
    Invalid,
}

impl HostProblem {
    /// The sentence of the 400 page.
    pub fn sentence(self) -> &'static str {
        match self {
            HostProblem::Missing => {
                "The request names no host: send a Host header with the tunnel's name."
            }
            HostProblem::Repeated => "The request has more than one Host header.",
            HostProblem::Invalid => {
                "The request's Host is not a host name or address (with at most a port)."
            }
        }
    }
}

/// The host a request is for: the authority of an absolute request target, else its `Host`
/// header (RFC 9112 §3.2.2: with an absolute target, `Host` is ignored); normalised as
/// [`normalize_host`] does. A request with more than one `Host`, or one that is not valid,
/// is refused either way (§3.2). The first-request read and hyper's requests both route by
/// this.
pub fn host_from<'a>(
    mut host_headers: impl Iterator<Item = &'a [u8]>,
    target_authority: Option<&str>,
) -> Result<String, HostProblem> {
    let header = host_headers.next();
    if host_headers.next().is_some() {
        return Err(HostProblem::Repeated);
    }
    let header = match header {
        Some(raw) => Some(
            std::str::from_utf8(raw)
                .ok()
                .and_then(normalize_host)
                .ok_or(HostProblem::Invalid)?,
        ),
        None => None,
    };
    match target_authority {
        Some(authority) => normalize_host(authority).ok_or(HostProblem::Invalid),
        None => header.ok_or(HostProblem::Missing),
    }
}

/// A `Host` value as the routing map keys it: lowercase, without port or trailing dot.
/// `None` when it is not `host[:port]` (user information, a port that is not a number up to
/// 65535, anything a URI authority cannot hold).
pub fn normalize_host(raw: &str) -> Option<String> {
    let authority: hyper::http::uri::Authority = raw.trim().parse().ok()?;
    let text = authority.as_str();
    if text.contains('@') {
        return None;
    }
    let port = &text[authority.host().len()..];
    if let Some(port) = port.strip_prefix(':') {
        if !port.is_empty() && port.parse::<u16>().is_err() {
            return None;
        }
    }
    let host = authority.host().trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn read_sent(pieces: &[&[u8]], max: usize) -> FirstRequest {
        let (mut tx, mut rx) = tokio::io::duplex(1 << 16);
        let owned: Vec<Vec<u8>> = pieces.iter().map(|p| p.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for p in owned {
                tx.write_all(&p).await.expect("write");
                tokio::task::yield_now().await;
            }
        });
        let got = read(&mut rx, max).await.expect("read");
        writer.abort();
        got
    }

    #[tokio::test]
    async fn the_host_of_a_head_sent_in_pieces_is_found_and_bytes_kept() {
        let got = read_sent(
            &[
                b"GET /p HTTP/1.1\r\nHo",
                b"st: Blog.A.Tunnel.Test.:8080\r\n",
                b"\r\nbody",
            ],
            65536,
        )
        .await;
        assert_eq!(got.host.as_deref(), Some("blog.a.tunnel.test"));
        assert!(got.bytes.starts_with(b"GET /p HTTP/1.1\r\nHost: "));
    }

    #[tokio::test]
    async fn a_head_sent_a_byte_at_a_time_is_parsed_about_once() {
        let head = format!(
            "GET / HTTP/1.1\r\nHost: x.example\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(60_000)
        );
        let pieces: Vec<&[u8]> = head.as_bytes().chunks(1).collect();
        let got = read_sent(&pieces, 65536).await;
        assert_eq!(got.host.as_deref(), Some("x.example"));
        // The first read, then the complete head: about twice its length, not its square.
        assert!(
            got.parsed_bytes <= 2 * head.len(),
            "{} bytes parsed for a {}-byte head",
            got.parsed_bytes,
            head.len()
        );
        // Bare `\n` line ends, the blank line split over reads.
        let got = read_sent(&[b"GET / HTTP/1.1\nHost: y.example\n", b"\n"], 65536).await;
        assert_eq!(got.host.as_deref(), Some("y.example"));
        let got = read_sent(&[b"GET / HTTP/1.1\r\nHost: z.example\r\n\r", b"\n"], 65536).await;
        assert_eq!(got.host.as_deref(), Some("z.example"));
    }

    #[tokio::test]
    async fn absolute_uris_name_the_host() {
        let got = read_sent(&[b"GET http://X.example/p HTTP/1.1\r\n\r\n"], 65536).await;
        assert_eq!(got.host.as_deref(), Some("x.example"));
        // The target's authority wins over `Host`, in either order of the two.
        let got = read_sent(
            &[b"GET http://b.example/p HTTP/1.1\r\nHost: a.example\r\n\r\n"],
            65536,
        )
        .await;
        assert_eq!(got.host.as_deref(), Some("b.example"));
        let got = read_sent(
            &[b"GET http://b.example:8080/p HTTP/1.1\r\nHost: a.example\r\n\r\n"],
            65536,
        )
        .await;
        assert_eq!(got.host.as_deref(), Some("b.example"));
        // User information in the target is refused (RFC 9110 §4.2.4): hyper answers 400.
        let got = read_sent(
            &[b"GET http://user@b.example/p HTTP/1.1\r\nHost: a.example\r\n\r\n"],
            65536,
        )
        .await;
        assert_eq!(got.host, None);
    }

    #[tokio::test]
    async fn heads_that_are_not_http_too_long_or_cut_give_no_host() {
        let junk = read_sent(&[b"\x16\x03\x01\x00\x05hello"], 65536).await;
        assert_eq!(junk.host, None);
        assert!(
            !junk.bytes.is_empty(),
            "the bytes are kept for hyper to answer"
        );

        let long = format!("GET / HTTP/1.1\r\nX-Long: {}\r\n", "a".repeat(10_000));
        let got = read_sent(&[long.as_bytes()], 4096).await;
        assert_eq!((got.host, got.bytes.len()), (None, 4096));

        let cut = read_sent(&[b"GET / HTTP/1.1\r\nHost: x.example\r\n"], 65536).await;
        assert_eq!(
            cut.host, None,
            "no blank line yet: the head is not complete"
        );
        assert_eq!(normalize_host("bad host"), None);
    }

    #[test]
    fn a_host_is_a_name_or_address_with_at_most_a_port() {
        assert_eq!(
            normalize_host("Blog.A.Tunnel.Test.:8080").as_deref(),
            Some("blog.a.tunnel.test")
        );
        assert_eq!(normalize_host("x.example:").as_deref(), Some("x.example"));
        assert_eq!(normalize_host("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host("127.0.0.1").as_deref(), Some("127.0.0.1"));
        for bad in [
            "x@blog.a.tunnel.test",
            "blog.a.tunnel.test:99999",
            "blog.a.tunnel.test:80x",
            "../../etc",
            "\"><img src=x>",
            ".",
            "",
        ] {
            assert_eq!(normalize_host(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn one_valid_host_header_or_an_absolute_target_names_the_host() {
        let one = |v: &'static str| std::iter::once(v.as_bytes());
        assert_eq!(
            host_from(one("a.example"), None).as_deref(),
            Ok("a.example")
        );
        assert_eq!(
            host_from(one("a.example"), Some("b.example:8080")).as_deref(),
            Ok("b.example"),
            "an absolute target wins over Host"
        );
        assert_eq!(
            host_from(std::iter::empty(), Some("b.example")).as_deref(),
            Ok("b.example")
        );
        assert_eq!(
            host_from(std::iter::empty(), None),
            Err(HostProblem::Missing)
        );
        let two = [&b"a.example"[..], &b"b.example"[..]];
        assert_eq!(host_from(two.into_iter(), None), Err(HostProblem::Repeated));
        assert_eq!(
            host_from(two.into_iter(), Some("a.example")),
            Err(HostProblem::Repeated),
            "two Host headers are refused with an absolute target too"
        );
        assert_eq!(
            host_from(one("x@a.example"), None),
            Err(HostProblem::Invalid)
        );
        assert_eq!(
            host_from(one("bad host"), Some("a.example")),
            Err(HostProblem::Invalid),
            "an invalid Host is refused with an absolute target too"
        );
        assert_eq!(
            host_from(std::iter::once(&b"\xff.example"[..]), None),
            Err(HostProblem::Invalid)
        );
    }

    #[tokio::test]
    async fn a_first_head_with_two_hosts_names_none() {
        let got = read_sent(
            &[b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n"],
            65536,
        )
        .await;
        assert_eq!(got.host, None, "hyper answers it (400)");
    }
}
