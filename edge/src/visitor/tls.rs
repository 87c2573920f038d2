//! The TLS listener (`tls_listen`, 443 in production): reads each visitor's ClientHello and
//! routes by the name it asks for (SNI). For a `tls` tunnel the connection, ClientHello
//! included, is spliced into a `forwarded-tcpip` channel and the edge never decrypts: the
//! creator's local service holds the certificate. Any other name is HTTPS when the operator
//! configured a certificate (`tls_cert_path`): the edge terminates TLS and serves HTTP
//! inside.
//!
//! The same port takes SSH clients (networks that let only 443 out) and plain HTTP: the
//! first bytes tell them apart (`SSH-` from an SSH client, a TLS handshake record, anything
//! else is HTTP), and a client that says nothing for `ssh_on_tls_port_silence_ms` is an SSH
//! client waiting for the server to speak first.

use crate::edge::Edge;
use crate::io::accept;
use crate::io::counting::CountingStream;
use crate::io::last_word;
use crate::io::proxy_header;
use crate::io::read_buffer::Prefixed;
use crate::mesh::links::PeerLink;
use crate::mesh::protocol::RelayListener;
use crate::ssh::server::SshEntry;
use crate::visitor::client_hello::{self, Parsed};
use crate::visitor::http as visitor_http;
use crate::visitor::routing::{self, Arrival, Listener, Refusal, Route};
use crate::visitor::splice::{counted_visitor, splice};
use bytes::BufMut;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tracing::Instrument;

/// Most bytes read while waiting for a complete ClientHello. Real ones are a few hundred
/// bytes to about 2 KiB (post-quantum key shares); TLS allows up to one 16 KiB record plus
/// header, and a hello split across records gets this much room in all.
pub const MAX_CLIENT_HELLO_BYTES: usize = 32 * 1024;

/// Room made in the bytes read so far for each read of the first bytes and the hello.
const READ_SIZE: usize = 4096;

/// A fatal `unrecognized_name` alert (TLS 1.2 record framing, which every client accepts
/// before the handshake): "this server has no such name".
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// Why a connection on the TLS port was not routed.
#[derive(Debug, Error)]
pub enum HelloError {
    /// The first bytes are not a TLS handshake (plain HTTP, for one).
    #[error("the connection does not start with a TLS handshake")]
    NotTls,
    /// A PROXY protocol header from an address that is not a trusted balancer.
    #[error("a PROXY protocol header from an untrusted address")]
    UntrustedProxyHeader,
    /// A TLS handshake that is not a well-formed ClientHello.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    /// A ClientHello without a server name (SNI), so there is nothing to route by.
    #[error("the ClientHello names no server (no SNI)")]
    NoServerName,
    /// More than [`MAX_CLIENT_HELLO_BYTES`] without a complete ClientHello.
    #[error("no complete ClientHello within {MAX_CLIENT_HELLO_BYTES} bytes")]
    TooLarge,
    /// The visitor closed before its ClientHello was complete.
    #[error("the visitor closed before its ClientHello was complete")]
    Closed,
    /// Reading from the visitor failed.
    #[error("reading the ClientHello: {0}")]
    Io(#[from] io::Error),
}

/// A visitor's ClientHello: the name it asks for and every byte read so far.
#[derive(Debug)]
pub struct ClientHello {
    /// The SNI host name, lowercase, without a trailing dot.
    pub server_name: String,
    /// The bytes read from the visitor, to be replayed to the tunnel's client.
    pub bytes: Vec<u8>,
}

/// Reads from `visitor` until a complete ClientHello has arrived and returns its server
/// name along with the raw bytes.
pub async fn read_client_hello<R: AsyncRead + Unpin>(
    visitor: &mut R,
) -> Result<ClientHello, HelloError> {
    let mut bytes = Vec::new();
    loop {
        // Read into the hello's own spare room: a read buffer on the side would sit in
        // every waiting connection's task.
        bytes.reserve(READ_SIZE);
        let n = visitor.read_buf(&mut (&mut bytes).limit(READ_SIZE)).await?;
        if n == 0 {
            return Err(HelloError::Closed);
        }
        if bytes.len() == n && bytes[0] != 0x16 {
            if proxy_header::looks_like_header(&bytes) {
                return Err(HelloError::UntrustedProxyHeader);
            }
            return Err(HelloError::NotTls);
        }
        match client_hello::parse(&bytes) {
            Parsed::Complete(Some(server_name)) => return Ok(ClientHello { server_name, bytes }),
            Parsed::Complete(None) => return Err(HelloError::NoServerName),
            Parsed::Invalid(why) => return Err(HelloError::Malformed(why)),
            Parsed::Incomplete if bytes.len() >= MAX_CLIENT_HELLO_BYTES => {
                return Err(HelloError::TooLarge)
            }
            Parsed::Incomplete => {}
        }
    }
}

/// What the first bytes on the TLS port say the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `SSH-`: an SSH client.
    Ssh,
    /// A TLS handshake record.
    Tls,
    /// Anything else: plain HTTP (or garbage, which the HTTP side refuses).
    Http,
}

/// Tells the protocol from the bytes read so far, or `None` while they could still be the
/// start of `SSH-`.
pub fn sniff(first: &[u8]) -> Option<Protocol> {
    const SSH: &[u8] = b"SSH-";
    match first.first() {
        None => None,
        Some(0x16) => Some(Protocol::Tls),
        Some(_) if first.len() >= SSH.len() => Some(if first.starts_with(SSH) {
            Protocol::Ssh
        } else {
            Protocol::Http
        }),
        Some(_) if SSH.starts_with(first) => None,
        Some(_) => Some(Protocol::Http),
    }
}

/// Reads until the first bytes tell the protocol (at most a few bytes beyond `first`). A
/// client that has said nothing by `silent_until` is taken for an SSH client waiting for the
/// server's identification (SSH lets either side speak first; TLS and HTTP clients always
/// speak first).
async fn read_protocol<R: AsyncRead + Unpin>(
    stream: &mut R,
    first: &mut Vec<u8>,
    silent_until: Instant,
) -> io::Result<Option<Protocol>> {
    loop {
        if let Some(p) = sniff(first) {
            return Ok(Some(p));
        }
        first.reserve(READ_SIZE);
        let n = if first.is_empty() {
            match tokio::time::timeout_at(silent_until, stream.read_buf(first)).await {
                Ok(read) => read?,
                Err(_) => return Ok(Some(Protocol::Ssh)),
            }
        } else {
            stream.read_buf(first).await?
        };
        if n == 0 {
            return Ok(None);
        }
    }
}

/// Accepts TLS visitors until shutdown; with `ssh`, SSH clients on the same port too.
pub async fn serve(edge: Arc<Edge>, listener: TcpListener, ssh: Option<Arc<SshEntry>>) {
    accept::until_stopped(
        &listener,
        edge.shutdown.cancelled(),
        "a TLS visitor",
        |mut stream, tcp_peer| {
            if let Some(slot) = edge.visitor_slot(Listener::Tls.as_str()) {
                let (edge, ssh) = (edge.clone(), ssh.clone());
                tokio::spawn(async move {
                    edge.prepare_visitor_socket(&stream);
                    let behind = edge.real_peer("tls", &mut stream, tcp_peer);
                    let Some((peer, mut rest)) = behind.await else {
                        return;
                    };
                    if let Some(ssh) = ssh {
                        let deadline = Instant::now() + visitor_http::head_timeout(&edge);
                        let silence = edge.config.ssh_on_tls_port_silence_ms;
                        let silent_until = Instant::now() + Duration::from_millis(silence);
                        let reading = read_protocol(&mut stream, &mut rest, silent_until);
                        let protocol = match tokio::time::timeout_at(deadline, reading).await {
                            Ok(Ok(Some(p))) => p,
                            _ => return,
                        };
                        match protocol {
                            Protocol::Ssh => {
                                // An SSH client is not a visitor: its place is the SSH
                                // listener's limits'.
                                drop(slot);
                                ssh.take(stream, peer, rest).await;
                                return;
                            }
                            Protocol::Http if proxy_header::looks_like_header(&rest) => {
                                // Headers from trusted balancers were taken off before.
                                proxy_header::count_untrusted(&edge.metrics, "tls");
                                let answer = proxy_header::untrusted_answer();
                                last_word::answer_and_close(&mut stream, answer.as_bytes()).await;
                                return;
                            }
                            Protocol::Http => {
                                let share =
                                    visitor_http::http_visitor_share(&edge, &mut stream, peer);
                                let Some(_share) = share.await else {
                                    return;
                                };
                                let stream = edge.guard_visitor_writes(stream);
                                let stream = Prefixed::new(rest, stream);
                                visitor_http::serve_stream(
                                    &edge,
                                    stream,
                                    peer,
                                    "http",
                                    deadline,
                                    Arrival::Direct,
                                )
                                .instrument(routing::span(Listener::Http, peer))
                                .await;
                                drop(slot);
                                return;
                            }
                            Protocol::Tls => {}
                        }
                    }
                    // No TLS yet to say it in: a network holding its share is closed.
                    let Some(_share) = edge.address_share(peer.ip()) else {
                        return;
                    };
                    let stream = Prefixed::new(rest, edge.guard_visitor_writes(stream));
                    carry(&edge, stream, peer, Arrival::Direct)
                        .instrument(routing::span(Listener::Tls, peer))
                        .await;
                    drop(slot);
                });
            }
        },
    )
    .await;
}

/// Serves one connection on the TLS port's terms: `stream` from the visitor `peer`, accepted
/// here or relayed by a peer edge.
pub async fn carry<S>(edge: &Arc<Edge>, mut stream: S, peer: SocketAddr, arrival: Arrival)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // One deadline for the ClientHello, the handshake and the first request head.
    let deadline = Instant::now() + visitor_http::head_timeout(edge);
    let reading = tokio::time::timeout_at(deadline, read_client_hello(&mut stream));
    let edge = edge.clone();
    let hello = tokio::select! {
        r = reading => Some(r),
        // A connection still saying hello does not hold up the drain.
        _ = edge.shutdown.cancelled() => None,
    };
    match hello {
        None => {}
        Some(Err(_)) => tracing::debug!(%peer, "TLS visitor sent no complete ClientHello in time"),
        Some(Ok(Err(HelloError::NotTls))) => {
            let answer = not_tls_answer(edge.config.public_http_port());
            last_word::answer_and_close(&mut stream, answer.as_bytes()).await;
        }
        Some(Ok(Err(HelloError::UntrustedProxyHeader))) => {
            proxy_header::count_untrusted(&edge.metrics, "tls");
            tracing::debug!(%peer, "PROXY protocol header from an untrusted address refused");
            let answer = proxy_header::untrusted_answer();
            last_word::answer_and_close(&mut stream, answer.as_bytes()).await;
        }
        Some(Ok(Err(e))) => tracing::debug!(%peer, error = %e, "TLS visitor not routed"),
        Some(Ok(Ok(hello))) => {
            match routing::route(&edge, Listener::Tls, &hello.server_name, peer, arrival) {
                Route::Splice(tunnel) => splice(&edge, &tunnel, stream, peer, hello.bytes).await,
                // Another edge holds the tls tunnel: its bytes go there undecrypted.
                Route::Relay(link) => {
                    relay_whole(&edge, &link, &hello.server_name, stream, peer, hello.bytes).await
                }
                // The handshake reads the ClientHello again from the bytes put back, and the
                // HTTP listener's code serves what is inside (404 page for unknown names
                // included). The route says so only when a certificate covers the name.
                Route::Terminate => {
                    let https = edge.https.clone();
                    terminate(&edge, https, stream, peer, hello.bytes, deadline, arrival).await
                }
                // Outside the allowlist: closed without a word, as a TCP port would.
                Route::Refuse(Refusal::Forbidden) => {
                    tracing::debug!("visitor outside the tunnel's allowlist")
                }
                // No `tls` tunnel by that name and no certificate for it. (The TLS listener
                // is never told to proxy HTTP itself; that happens inside `Terminate`.)
                Route::Refuse(Refusal::Unknown | Refusal::WrongListener(_)) | Route::Proxy(_) => {
                    unrecognized_name(&mut stream, &hello.server_name).await
                }
            }
        }
    }
}

/// Carries a TLS connection whole to the peer edge that holds its `tls` tunnel `name`, the
/// bytes read to route it first.
async fn relay_whole<S>(
    edge: &Edge,
    link: &PeerLink,
    name: &str,
    stream: S,
    peer: SocketAddr,
    already_read: Vec<u8>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let m = &edge.metrics;
    let mut upstream = match link.open_relay(RelayListener::Tls, peer, name).await {
        Ok(channel) => CountingStream::new(
            channel,
            m.relay_bytes_total
                .with_label_values(&[&link.id, "out", "received"]),
            m.relay_bytes_total
                .with_label_values(&[&link.id, "out", "sent"]),
        ),
        Err(e) => {
            // Logged by the link, at most one line a while.
            m.relay_errors_total.with_label_values(&[e.cause()]).inc();
            return;
        }
    };
    m.relay_connections_total
        .with_label_values(&[&link.id, "out"])
        .inc();
    let mut visitor = counted_visitor(edge, stream, &already_read);
    if let Err(e) = upstream.write_all(&already_read).await {
        tracing::debug!(error = %e, "relay channel closed at once");
        return;
    }
    drop(already_read);
    if let Err(e) = tokio::io::copy_bidirectional(&mut visitor, &mut upstream).await {
        tracing::debug!(error = %e, "relayed TLS connection ended");
    }
}

/// Tells the visitor this edge has no such name (curl: "tlsv1 unrecognized name").
async fn unrecognized_name<S: AsyncWrite + Unpin>(stream: &mut S, name: &str) {
    tracing::debug!(name, "no TLS tunnel by that name");
    let _ = stream.write_all(&UNRECOGNIZED_NAME_ALERT).await;
}

/// Completes the TLS handshake with the configured certificate and serves HTTP inside.
async fn terminate<S>(
    edge: &Arc<Edge>,
    config: Arc<rustls::ServerConfig>,
    stream: S,
    peer: SocketAddr,
    hello: Vec<u8>,
    deadline: Instant,
    arrival: Arrival,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake = tokio_rustls::TlsAcceptor::from(config).accept(Prefixed::new(hello, stream));
    let done = tokio::select! {
        r = tokio::time::timeout_at(deadline, handshake) => r,
        _ = edge.shutdown.cancelled() => return,
    };
    match done {
        // Boxed: the TLS state (1.3 KB) would otherwise be copied into each future that
        // serves the connection, and sit in every TLS visitor's task several times over.
        Ok(Ok(tls)) => {
            let tls = Box::new(tls);
            crate::visitor::https::serve_terminated(edge, tls, peer, deadline, arrival).await
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake with a visitor failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake with a visitor took too long"),
    }
}

/// What a plain-HTTP visitor on the TLS port reads.
fn not_tls_answer(http_port: u16) -> String {
    let body = format!(
        "This is nearhop's TLS port: it carries TLS (https://) connections only. \
         For plain HTTP, use port {http_port}.\n"
    );
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::visitor::client_hello::sample;

    #[test]
    fn the_first_bytes_tell_ssh_tls_and_http_apart() {
        assert_eq!(sniff(b"SSH-2.0-OpenSSH_9.2p1\r\n"), Some(Protocol::Ssh));
        assert_eq!(sniff(b"SSH-"), Some(Protocol::Ssh));
        assert_eq!(sniff(&[0x16, 0x03, 0x01]), Some(Protocol::Tls));
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http));
        assert_eq!(sniff(b"SSH /x HTTP/1.1"), Some(Protocol::Http));
        assert_eq!(sniff(b"PROXY TCP4 "), Some(Protocol::Http));
        // Could still become `SSH-`: wait for more.
        for partial in [&b""[..], b"S", b"SS", b"SSH"] {
            assert_eq!(sniff(partial), None, "{partial:?}");
        }
        assert_eq!(sniff(b"SX"), Some(Protocol::Http));
    }

    #[tokio::test]
    async fn a_protocol_is_read_across_small_segments() {
        let (mut tx, mut rx) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            for b in b"SSH-2.0-x\r\n" {
                tx.write_all(&[*b]).await.expect("write");
            }
            tx
        });
        let later = Instant::now() + Duration::from_secs(3600);
        let mut first = Vec::new();
        let p = read_protocol(&mut rx, &mut first, later)
            .await
            .expect("read");
        assert_eq!(p, Some(Protocol::Ssh));
        assert!(first.starts_with(b"SSH-"), "the bytes read are kept");
        drop(writer.await);
        let (_tx, mut rx) = tokio::io::duplex(1024);
        drop(_tx);
        assert_eq!(
            read_protocol(&mut rx, &mut Vec::new(), later)
                .await
                .expect("eof"),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_an_ssh_client_waiting_for_the_server_but_a_started_word_is_waited_for() {
        let silent_until = Instant::now() + Duration::from_secs(3);
        let (_tx, mut rx) = tokio::io::duplex(1024);
        let p = read_protocol(&mut rx, &mut Vec::new(), silent_until).await;
        assert_eq!(p.expect("silence"), Some(Protocol::Ssh));
        assert!(
            Instant::now() >= silent_until,
            "not before the silence is over"
        );

        // One byte said before the silence ended: the rest is waited for, however slow.
        let (mut tx, mut rx) = tokio::io::duplex(1024);
        let silent_until = Instant::now() + Duration::from_secs(3);
        let writer = tokio::spawn(async move {
            tx.write_all(b"S").await.expect("write");
            tokio::time::sleep(Duration::from_secs(10)).await;
            tx.write_all(b"SH-2.0-x\r\n").await.expect("write");
            tx
        });
        let mut first = Vec::new();
        let p = read_protocol(&mut rx, &mut first, silent_until).await;
        assert_eq!(p.expect("ssh"), Some(Protocol::Ssh));
        assert_eq!(first, b"SSH-2.0-x\r\n", "every byte kept");
        drop(writer.await);
    }

    /// Feeds `bytes` in pieces of `step`, like a slow network.
    async fn read_in_steps(bytes: Vec<u8>, step: usize) -> Result<ClientHello, HelloError> {
        let (mut tx, mut rx) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            for piece in bytes.chunks(step) {
                if tx.write_all(piece).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        });
        let got = read_client_hello(&mut rx).await;
        writer.abort();
        got
    }

    #[tokio::test]
    async fn the_server_name_is_read_and_every_byte_kept() {
        let mut bytes = sample(Some("Blog.A.Tunnel.Test"));
        let hello_len = bytes.len();
        // Bytes after the ClientHello (early data) are kept for the replay too.
        bytes.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x01, 0xaa]);
        let got = read_in_steps(bytes.clone(), 7).await.unwrap();
        assert_eq!(got.server_name, "blog.a.tunnel.test");
        assert!(got.bytes.len() >= hello_len, "{} bytes", got.bytes.len());
        assert_eq!(got.bytes[..], bytes[..got.bytes.len()]);
    }

    #[tokio::test]
    async fn hellos_that_cannot_be_routed_say_why() {
        let no_sni = read_in_steps(sample(None), 4096).await;
        assert!(
            matches!(no_sni, Err(HelloError::NoServerName)),
            "{no_sni:?}"
        );

        let http = read_in_steps(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 4096).await;
        assert!(matches!(http, Err(HelloError::NotTls)), "{http:?}");

        let proxied = b"PROXY TCP4 203.0.113.7 10.0.0.1 1 443\r\n".to_vec();
        let proxied = read_in_steps(proxied, 4096).await;
        assert!(
            matches!(proxied, Err(HelloError::UntrustedProxyHeader)),
            "{proxied:?}"
        );

        let mut cut = sample(Some("x.example"));
        cut.truncate(cut.len() - 5);
        let closed = read_in_steps(cut, 4096).await;
        assert!(matches!(closed, Err(HelloError::Closed)), "{closed:?}");

        // A handshake record whose body is garbage.
        let mut junk = vec![0x16, 0x03, 0x01, 0x00, 0x10, 0x01, 0x00, 0x00, 0x0c];
        junk.extend_from_slice(&[0xff; 12]);
        let malformed = read_in_steps(junk, 4096).await;
        assert!(
            matches!(malformed, Err(HelloError::Malformed(_))),
            "{malformed:?}"
        );
    }

    #[tokio::test]
    async fn an_endless_handshake_is_cut_off() {
        // A record header announcing 16 KiB, then another, ... never a complete hello:
        // one huge handshake message split over records.
        let mut bytes = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0xff, 0xff];
        bytes.resize(5 + 0x4000, 0);
        let mut all = Vec::new();
        for _ in 0..4 {
            all.extend_from_slice(&bytes);
            bytes = vec![0x16, 0x03, 0x01, 0x40, 0x00];
            bytes.resize(5 + 0x4000, 0);
        }
        let got = read_in_steps(all, 4096).await;
        assert!(matches!(got, Err(HelloError::TooLarge)), "{got:?}");
    }
}
