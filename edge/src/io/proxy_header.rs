//! PROXY protocol headers (v1 text, v2 binary) from the balancers in front of the edge, so
//! that rate limits, `w:` allowlists and `X-Forwarded-For` see the real client.
//!
//! Only connections from `proxy_protocol_from` are read for a header, and those must start
//! with one (as HAProxy's `accept-proxy`): a trusted balancer always sends it, and a
//! connection that may or may not carry one could be spoofed by whoever reaches the edge
//! through the balancer's address range. Anyone else's bytes are the protocol itself, never
//! parsed as a header. Parsing is the `ppp` crate's; this module decides what the result
//! means for a connection.
//!
//! Long with its tests (about 285 lines): each header form, trust rule and refusal is tested
//! next to the code that decides it.

use crate::config::Config;
use crate::metrics::Metrics;
use crate::process::log_limit::LogLimit;
use ipnet::IpNet;
use ppp::{v1, v2, HeaderResult, PartialResult};
use std::io;
use std::net::{IpAddr, SocketAddr};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

/// Most bytes read while waiting for a complete header. A v1 header is at most 107 bytes; a
/// v2 header from a balancer is 28 (IPv4) or 52 (IPv6) bytes plus its TLVs, a few hundred
/// bytes at most in practice (SSL details, a unique id of up to 128 bytes, a cloud's
/// endpoint id). v2 allows 64 KiB of TLVs, which no balancer sends; a bound keeps a broken
/// one from making the edge buffer that much per connection.
pub const MAX_HEADER_BYTES: usize = 4096;

/// The 12 bytes every v2 header starts with.
const V2_SIGNATURE: &[u8] = v2::PROTOCOL_PREFIX;

/// Longest v1 header (the spec's bound, CRLF included).
const V1_MAX: usize = 107;

/// What the first bytes of a trusted connection are.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A complete header of `len` bytes; the bytes after it belong to the protocol.
    Complete {
        /// The client's address when the header names one (`PROXY` with TCP over IPv4 or
        /// IPv6); `None` for v2 `LOCAL` (a balancer's own health check) and for an unknown or
        /// unspecified family, where the TCP peer stands.
        source: Option<SocketAddr>,
        /// The header's length in bytes.
        len: usize,
        /// `proxy`, `local` or `unknown`, as counted in the metrics.
        command: &'static str,
    },
    /// A header may still come: read more.
    Incomplete,
    /// The bytes cannot start a PROXY header.
    NotAHeader,
    /// A PROXY header that does not parse; the reason.
    Malformed(String),
}

/// Reads what the first bytes of a connection from a trusted balancer say.
pub fn parse(bytes: &[u8]) -> Parsed {
    // ppp treats a v1 header cut after a space as finished (an empty port is an invalid
    // one), so a v1 header is parsed only once its line is complete.
    let v1_line_open = (bytes.starts_with(b"PROXY") || b"PROXY".starts_with(bytes))
        && !bytes[..bytes.len().min(V1_MAX)].contains(&b'\n')
        && bytes.len() < V1_MAX;
    if v1_line_open {
        return Parsed::Incomplete;
    }
    // Bytes that start neither header are no header, whatever ppp would make of them: it
    // tries them as v1 text, and a TLS ClientHello's bytes that are not UTF-8 would be a
    // "malformed" header (the balancer sends none at all).
    let may_be = |signature: &[u8]| bytes.starts_with(signature) || signature.starts_with(bytes);
    if !may_be(b"PROXY") && !may_be(V2_SIGNATURE) {
        return Parsed::NotAHeader;
    }
    // A broken v2 header is told as such: `HeaderResult::parse` alone would try it as v1
    // and call it no header at all.
    let result: HeaderResult = if bytes.starts_with(V2_SIGNATURE) {
        v2::Header::try_from(bytes).into()
    } else {
        HeaderResult::parse(bytes)
    };
    if result.is_incomplete() {
        return Parsed::Incomplete;
    }
    match result {
        HeaderResult::V1(Ok(header)) => {
            let source = match header.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            };
            Parsed::Complete {
                command: if source.is_some() { "proxy" } else { "unknown" },
                source,
                len: header.header.len(),
            }
        }
        HeaderResult::V2(Ok(header)) => {
            let len = header.header.len();
            if header.command == v2::Command::Local {
                return Parsed::Complete {
                    source: None,
                    len,
                    command: "local",
                };
            }
            let source = match header.addresses {
                v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
            };
            Parsed::Complete {
                command: if source.is_some() { "proxy" } else { "unknown" },
                source,
                len,
            }
        }
        HeaderResult::V1(Err(v1::BinaryParseError::Parse(v1::ParseError::InvalidPrefix))) => {
            Parsed::NotAHeader
        }
        HeaderResult::V1(Err(e)) => Parsed::Malformed(format!("v1: {e}")),
        HeaderResult::V2(Err(e)) => Parsed::Malformed(format!("v2: {e}")),
    }
}

/// Whether `bytes` (the first of a connection) begin with a PROXY header, v1 or v2. Used
/// where headers are not trusted, to tell the sender why it was refused.
pub fn looks_like_header(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PROXY ") || bytes.starts_with(V2_SIGNATURE)
}

/// Whether connections from `ip` come from a trusted balancer. An IPv4 address seen as
/// IPv4-mapped IPv6 (a listener on `[::]`) is matched as the IPv4 address it is.
pub fn is_trusted(from: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    from.iter().any(|net| net.contains(&ip))
}

/// Why a connection from a trusted balancer was refused; [`ProxyError::cause`] is the
/// metric's label.
#[derive(Debug, Error)]
pub enum ProxyError {
    /// The connection does not start with a PROXY header.
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    /// A header that does not parse.
    #[error("malformed PROXY protocol header ({0})")]
    Malformed(String),
    /// No complete header within [`MAX_HEADER_BYTES`].
    #[error("no complete PROXY protocol header within {MAX_HEADER_BYTES} bytes")]
    TooLarge,
    /// The balancer closed before the header was complete.
    #[error("the connection closed before its PROXY protocol header was complete")]
    Closed,
    /// Reading failed.
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] io::Error),
}

impl ProxyError {
    /// The `cause` label of `nearhop_edge_proxy_protocol_refused_total`.
    pub fn cause(&self) -> &'static str {
        match self {
            ProxyError::Missing => "missing",
            ProxyError::Malformed(_) => "malformed",
            ProxyError::TooLarge => "too_large",
            ProxyError::Closed => "closed",
            ProxyError::Io(_) => "io",
        }
    }
}

/// A header read from a trusted connection.
#[derive(Debug)]
pub struct Header {
    /// The client's address, when the header names one.
    pub source: Option<SocketAddr>,
    /// `proxy`, `local` or `unknown`.
    pub command: &'static str,
    /// Bytes read past the header: the start of the protocol (the first request, the
    /// ClientHello), to be read before the rest of the stream.
    pub rest: Vec<u8>,
}

/// Reads a header from the start of `stream`, and no further than the bytes that came with
/// it. Has no deadline of its own.
pub async fn read<R: AsyncRead + Unpin>(stream: &mut R) -> Result<Header, ProxyError> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        let room = chunk.len().min(MAX_HEADER_BYTES - buf.len());
        let n = stream.read(&mut chunk[..room]).await?;
        if n == 0 {
            return Err(ProxyError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse(&buf) {
            Parsed::Complete {
                source,
                len,
                command,
            } => {
                return Ok(Header {
                    source,
                    command,
                    rest: buf.split_off(len),
                })
            }
            Parsed::NotAHeader => return Err(ProxyError::Missing),
            Parsed::Malformed(why) => return Err(ProxyError::Malformed(why)),
            Parsed::Incomplete if buf.len() >= MAX_HEADER_BYTES => {
                return Err(ProxyError::TooLarge)
            }
            Parsed::Incomplete => {}
        }
    }
}

/// The address a connection accepted from `tcp_peer` on `listener` (`http`, `tls`, `tcp`,
/// `ssh`) comes from, and the bytes read past a PROXY header (to be read first).
///
/// From an untrusted address: `tcp_peer` and nothing read. From a trusted balancer: the
/// header's source address (the TCP peer for `LOCAL` and unknown families), within
/// `visitor_header_timeout_seconds`; `None` when the connection is to be dropped (no valid
/// header in time, or shutdown), logged and counted.
pub async fn real_peer<R: AsyncRead + Unpin>(
    config: &Config,
    metrics: &Metrics,
    shutdown: &CancellationToken,
    listener: &'static str,
    stream: &mut R,
    tcp_peer: SocketAddr,
) -> Option<(SocketAddr, Vec<u8>)> {
    if !is_trusted(&config.proxy_protocol_from, tcp_peer.ip()) {
        return Some((tcp_peer, Vec::new()));
    }
    let timeout = std::time::Duration::from_secs(config.visitor_header_timeout_seconds.max(1));
    let read = tokio::select! {
        r = tokio::time::timeout(timeout, read(stream)) => r,
        _ = shutdown.cancelled() => return None,
    };
    let refused = |cause: &'static str| {
        metrics
            .proxy_protocol_refused_total
            .with_label_values(&[listener, cause])
            .inc();
    };
    match read {
        Ok(Ok(header)) => {
            metrics
                .proxy_protocol_headers_total
                .with_label_values(&[listener, header.command])
                .inc();
            let peer = header
                .source
                .map(|s| SocketAddr::new(s.ip().to_canonical(), s.port()))
                .unwrap_or(tcp_peer);
            Some((peer, header.rest))
        }
        Ok(Err(e)) => {
            refused(e.cause());
            match e {
                // Closed before any header byte: the balancer's own TCP health check.
                ProxyError::Closed | ProxyError::Io(_) => {
                    tracing::debug!(listener, balancer = %tcp_peer, error = %e, "connection from a trusted balancer refused");
                }
                _ => warn_refused(listener, tcp_peer, &e.to_string()),
            }
            None
        }
        Err(_) => {
            refused("timeout");
            warn_refused(
                listener,
                tcp_peer,
                &format!("no PROXY protocol header within {}s", timeout.as_secs()),
            );
            None
        }
    }
}

/// Refusals of a trusted balancer's connections logged, at most one line per this long.
const REFUSED_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Logs that a connection from a trusted balancer came without a valid PROXY header, at
/// `warn`, at most once per [`REFUSED_LOG_INTERVAL`]: every visitor behind a balancer
/// that does not send headers is dropped, which the operator must hear about, and a busy
/// one would fill the log.
fn warn_refused(listener: &'static str, balancer: SocketAddr, why: &str) {
    static REFUSED_LOG: LogLimit = LogLimit::new(REFUSED_LOG_INTERVAL);
    if let Some(more) = REFUSED_LOG.note(std::time::Instant::now()) {
        tracing::warn!(
            listener,
            %balancer,
            more_since_last_line = more,
            "connection from a balancer in proxy_protocol_from dropped: {why}; turn on its PROXY \
             protocol header (HAProxy: send-proxy or send-proxy-v2), or take its address out \
             of proxy_protocol_from"
        );
    }
}

/// What an HTTP client that sent a PROXY header from an untrusted address reads.
pub fn untrusted_answer() -> String {
    let body = "This nearhop edge accepts PROXY protocol headers only from its trusted \
                balancers, and this connection does not come from one. Send the request \
                without the header, or through the balancer.\n";
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Counts a PROXY header refused because its sender is not trusted.
pub fn count_untrusted(metrics: &Metrics, listener: &'static str) {
    metrics
        .proxy_protocol_refused_total
        .with_label_values(&[listener, "untrusted"])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A v2 `PROXY` header over TCP/IPv4 from `src` to 10.0.0.1:80, written by hand after
    /// the spec (not by the parser's crate).
    fn v2_ipv4(src: [u8; 4], port: u16) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&[10, 0, 0, 1]);
        h.extend_from_slice(&port.to_be_bytes());
        h.extend_from_slice(&80u16.to_be_bytes());
        h
    }

    fn v2_ipv6(src: std::net::Ipv6Addr, port: u16) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x21, 0x00, 36]);
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&[0; 16]);
        h.extend_from_slice(&port.to_be_bytes());
        h.extend_from_slice(&443u16.to_be_bytes());
        h
    }

    /// Feeds `bytes` in pieces of `step`, like a slow network, and reads a header.
    async fn read_in_steps(bytes: Vec<u8>, step: usize) -> Result<Header, ProxyError> {
        let (mut tx, mut rx) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            for piece in bytes.chunks(step) {
                if tx.write_all(piece).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
            // Keep the pipe open: a reader waiting for more must not see an end.
            std::future::pending::<()>().await;
        });
        let got = read(&mut rx).await;
        writer.abort();
        got
    }

    #[test]
    fn v1_headers_name_the_client() {
        let tcp4 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 80\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(tcp4),
            Parsed::Complete {
                source: Some("203.0.113.7:51234".parse().expect("addr")),
                len: 42,
                command: "proxy",
            }
        );
        let tcp6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n";
        assert!(matches!(
            parse(tcp6),
            Parsed::Complete { source: Some(s), len, .. }
                if s == "[2001:db8::7]:4000".parse().expect("addr") && len == tcp6.len()
        ));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Complete {
                source: None,
                len: 15,
                command: "unknown"
            }
        );
    }

    #[test]
    fn v2_headers_name_the_client_and_local_keeps_the_peer() {
        let h = v2_ipv4([198, 51, 100, 9], 40000);
        assert_eq!(
            parse(&h),
            Parsed::Complete {
                source: Some("198.51.100.9:40000".parse().expect("addr")),
                len: 28,
                command: "proxy",
            }
        );
        let h = v2_ipv6("2001:db8::9".parse().expect("ip"), 5);
        assert!(matches!(
            parse(&h),
            Parsed::Complete { source: Some(s), len: 52, command: "proxy" } if s == "[2001:db8::9]:5".parse().expect("addr")
        ));
        // LOCAL (0x20), family unspecified: a balancer's health check.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(
            parse(&local),
            Parsed::Complete {
                source: None,
                len: 16,
                command: "local"
            }
        );
        // LOCAL with addresses: still the balancer's own connection.
        let mut local = v2_ipv4([198, 51, 100, 9], 1);
        local[12] = 0x20;
        assert!(matches!(
            parse(&local),
            Parsed::Complete {
                source: None,
                command: "local",
                ..
            }
        ));
        // PROXY with an unspecified family: the TCP peer stands.
        let mut unspec = V2_SIGNATURE.to_vec();
        unspec.extend_from_slice(&[0x21, 0x00, 0x00, 0x00]);
        assert!(matches!(
            parse(&unspec),
            Parsed::Complete {
                source: None,
                command: "unknown",
                ..
            }
        ));
    }

    #[test]
    fn garbage_is_not_a_header_and_broken_headers_are_malformed() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parsed::NotAHeader);
        assert_eq!(parse(&[0x16, 0x03, 0x01, 0x02, 0x00]), Parsed::NotAHeader);
        // A ClientHello whose bytes are not UTF-8 (ppp alone calls it a broken v1 header).
        let mut hello = vec![
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        hello.extend((0u8..=255).cycle().take(500));
        assert_eq!(parse(&hello), Parsed::NotAHeader);
        assert_eq!(parse(b"SSH-2.0-OpenSSH_9.6\r\n"), Parsed::NotAHeader);
        assert!(matches!(
            parse(b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n"),
            Parsed::Malformed(_)
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 1.2.3.4 10.0.0.1 99999 2\r\n"),
            Parsed::Malformed(_)
        ));
        // A v1 line that never ends.
        let endless = format!("PROXY TCP4 {}", "1".repeat(200));
        assert!(matches!(parse(endless.as_bytes()), Parsed::Malformed(_)));
        // v2 with version 1 in the version nibble.
        let mut bad = v2_ipv4([1, 2, 3, 4], 1);
        bad[12] = 0x11;
        assert!(matches!(parse(&bad), Parsed::Malformed(_)));
    }

    #[test]
    fn incomplete_headers_wait_for_more() {
        for cut in [1, 3, 5, 6, 12, 20, 41] {
            let tcp4 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 80\r\n";
            assert_eq!(parse(&tcp4[..cut]), Parsed::Incomplete, "v1 cut at {cut}");
        }
        let v2 = v2_ipv4([198, 51, 100, 9], 40000);
        for cut in [1, 11, 12, 15, 16, 27] {
            assert_eq!(parse(&v2[..cut]), Parsed::Incomplete, "v2 cut at {cut}");
        }
    }

    #[tokio::test]
    async fn bytes_after_the_header_are_kept() {
        let mut sent = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 80\r\n".to_vec();
        sent.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let got = read_in_steps(sent, 4096).await.expect("header");
        assert_eq!(got.source, Some("203.0.113.7:51234".parse().expect("addr")));
        assert_eq!(got.rest, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");

        let mut sent = v2_ipv4([198, 51, 100, 9], 40000);
        sent.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x05]);
        let got = read_in_steps(sent, 4096).await.expect("header");
        assert_eq!(
            got.source,
            Some("198.51.100.9:40000".parse().expect("addr"))
        );
        assert_eq!(got.rest, [0x16, 0x03, 0x01, 0x00, 0x05]);
    }

    #[tokio::test]
    async fn a_header_in_pieces_is_read_whole() {
        for step in [1, 2, 7] {
            let mut sent = v2_ipv6("2001:db8::9".parse().expect("ip"), 5);
            sent.extend_from_slice(b"SSH-2.0-x\r\n");
            let got = read_in_steps(sent, step).await.expect("header");
            assert_eq!(got.source, Some("[2001:db8::9]:5".parse().expect("addr")));
            assert!(b"SSH-2.0-x\r\n".starts_with(&got.rest), "{:?}", got.rest);

            let sent = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 80\r\n".to_vec();
            let got = read_in_steps(sent, step).await.expect("header");
            assert_eq!(got.source, Some("203.0.113.7:51234".parse().expect("addr")));
        }
    }

    #[tokio::test]
    async fn refusals_say_why() {
        let missing = read_in_steps(b"GET / HTTP/1.1\r\n\r\n".to_vec(), 4096).await;
        assert!(matches!(missing, Err(ProxyError::Missing)), "{missing:?}");

        // A v2 header announcing 60 000 bytes of TLVs.
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xea, 0x60]);
        huge.resize(16 + 60_000, 0);
        let too_large = read_in_steps(huge, 4096).await;
        assert!(
            matches!(too_large, Err(ProxyError::TooLarge)),
            "{too_large:?}"
        );

        let (mut tx, mut rx) = tokio::io::duplex(1024);
        tx.write_all(b"PROXY TCP4 1.2").await.expect("write");
        drop(tx);
        let closed = read(&mut rx).await;
        assert!(matches!(closed, Err(ProxyError::Closed)), "{closed:?}");
    }

    #[test]
    fn only_configured_networks_are_trusted() {
        let from: Vec<IpNet> = ["10.0.0.0/8", "192.0.2.10/32", "2001:db8:1::/48"]
            .iter()
            .map(|n| n.parse().expect("net"))
            .collect();
        let trusted = |ip: &str| is_trusted(&from, ip.parse().expect("ip"));
        assert!(trusted("10.1.2.3"));
        assert!(trusted("192.0.2.10"));
        assert!(!trusted("192.0.2.11"));
        assert!(!trusted("11.0.0.1"));
        assert!(trusted("2001:db8:1:ffff::1"));
        assert!(!trusted("2001:db8:2::1"));
        // An IPv4 balancer seen by a listener on [::].
        assert!(trusted("::ffff:10.9.9.9"));
        assert!(!trusted("::ffff:11.9.9.9"));
        assert!(!is_trusted(&[], "10.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn untrusted_headers_are_recognised_and_told() {
        assert!(looks_like_header(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"));
        assert!(looks_like_header(&v2_ipv4([1, 2, 3, 4], 1)));
        assert!(!looks_like_header(b"GET / HTTP/1.1\r\n"));
        assert!(!looks_like_header(b"PROXYISH"));
        let answer = untrusted_answer();
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(
            answer.contains("only from its trusted balancers"),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn the_peer_is_replaced_only_behind_a_trusted_balancer() {
        let config = Config {
            proxy_protocol_from: vec!["127.0.0.0/8".parse().expect("net")],
            ..Config::default()
        };
        let metrics = Metrics::new().expect("metrics");
        let stop = CancellationToken::new();
        let balancer: SocketAddr = "127.0.0.5:3000".parse().expect("addr");
        let mut sent = &b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 80\r\nhello"[..];
        let got = real_peer(&config, &metrics, &stop, "http", &mut sent, balancer).await;
        let (peer, rest) = got.expect("admitted");
        assert_eq!(peer, "203.0.113.7:51234".parse().expect("addr"));
        assert_eq!(rest, b"hello");

        // From elsewhere the header is not read: it is the protocol's bytes.
        let mut sent = &b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 80\r\n"[..];
        let outsider: SocketAddr = "192.0.2.1:3000".parse().expect("addr");
        let got = real_peer(&config, &metrics, &stop, "http", &mut sent, outsider).await;
        assert_eq!(got, Some((outsider, Vec::new())));
        assert_eq!(sent.len(), 42, "nothing was read");

        // A trusted balancer must send one.
        let mut sent = &b"GET / HTTP/1.1\r\n\r\n"[..];
        let got = real_peer(&config, &metrics, &stop, "ssh", &mut sent, balancer).await;
        assert_eq!(got, None);
        let text = metrics.render();
        assert!(
            text.contains(
                "nearhop_edge_proxy_protocol_refused_total{cause=\"missing\",listener=\"ssh\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "nearhop_edge_proxy_protocol_headers_total{command=\"proxy\",listener=\"http\"} 1"
            ),
            "{text}"
        );
    }
}
