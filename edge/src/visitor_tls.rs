//! The TLS listener (`tls_listen`): reads each visitor's ClientHello and routes by the name
//! it asks for (SNI). For a `tls` tunnel the connection, ClientHello included, is spliced
//! into a `forwarded-tcpip` channel and the edge never decrypts: the creator's local service
//! holds the certificate. Any other name is HTTPS when the operator configured a
//! certificate (`tls_cert_path`): the edge terminates TLS and serves HTTP inside.

use crate::accept;
use crate::edge::Edge;
use crate::read_buffer::Prefixed;
use crate::{visitor_http, visitor_tcp};
use nearhop_wire::TunnelKind;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;

/// Most bytes read while waiting for a complete ClientHello. Real ones are a few hundred
/// bytes to about 2 KiB (post-quantum key shares); TLS allows up to one 16 KiB record plus
/// header, and a hello split across records gets this much room in all.
pub const MAX_CLIENT_HELLO_BYTES: usize = 32 * 1024;

/// A fatal `unrecognized_name` alert (TLS 1.2 record framing, which every client accepts
/// before the handshake): "this server has no such name".
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// Why a connection on the TLS port was not routed.
#[derive(Debug, Error)]
pub enum HelloError {
    /// The first bytes are not a TLS handshake (plain HTTP, for one).
    #[error("the connection does not start with a TLS handshake")]
    NotTls,
    /// A TLS handshake that rustls could not read as a ClientHello.
    #[error("malformed ClientHello: {0}")]
    Malformed(rustls::Error),
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
    let mut acceptor = rustls::server::Acceptor::default();
    let mut bytes = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let n = visitor.read(&mut chunk).await?;
        if n == 0 {
            return Err(HelloError::Closed);
        }
        if bytes.is_empty() && chunk[0] != 0x16 {
            return Err(HelloError::NotTls);
        }
        bytes.extend_from_slice(&chunk[..n]);
        if bytes.len() > MAX_CLIENT_HELLO_BYTES {
            return Err(HelloError::TooLarge);
        }
        let mut fresh = &chunk[..n];
        while !fresh.is_empty() {
            // rustls refuses more only when its buffer is full: a hello too large to route.
            match acceptor.read_tls(&mut fresh) {
                Ok(n) if n > 0 => {}
                _ => return Err(HelloError::TooLarge),
            }
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => {
                let name = accepted
                    .client_hello()
                    .server_name()
                    .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                    .filter(|n| !n.is_empty())
                    .ok_or(HelloError::NoServerName)?;
                return Ok(ClientHello {
                    server_name: name,
                    bytes,
                });
            }
            Err((e, _alert)) => return Err(HelloError::Malformed(e)),
        }
    }
}

/// Accepts TLS visitors until shutdown.
pub async fn serve(edge: Arc<Edge>, listener: TcpListener) {
    accept::until_stopped(
        &listener,
        &edge.shutdown,
        "a TLS visitor",
        |stream, peer| {
            if let Some(permit) = edge.visitor_slot() {
                tokio::spawn(carry(edge.clone(), stream, peer, permit));
            }
        },
    )
    .await;
}

async fn carry(
    edge: Arc<Edge>,
    mut stream: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    let m = &edge.metrics;
    m.visitor_connections_total
        .with_label_values(&["tls"])
        .inc();
    m.visitor_connections_active.inc();
    let _ = stream.set_nodelay(true);
    let patience = Duration::from_secs(edge.config.visitor_header_timeout_seconds.max(1));
    match tokio::time::timeout(patience, read_client_hello(&mut stream)).await {
        Err(_) => tracing::debug!(%peer, "TLS visitor sent no complete ClientHello in time"),
        Ok(Err(HelloError::NotTls)) => {
            let _ = stream
                .write_all(not_tls_answer(edge.config.public_http_port()).as_bytes())
                .await;
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS visitor not routed"),
        Ok(Ok(hello)) => match edge.registry.route(&hello.server_name) {
            Some(tunnel) if tunnel.kind == TunnelKind::Tls => {
                if tunnel.options().allows(peer.ip()) {
                    visitor_tcp::splice(&edge, &tunnel, stream, peer, &hello.bytes).await;
                }
            }
            // Any other name is HTTPS when the edge has a certificate: the handshake reads
            // the ClientHello again from the bytes put back, and the HTTP listener's code
            // serves what is inside (404 page for unknown names included).
            _ if edge.https.is_some() => {
                terminate(&edge, stream, peer, hello.bytes, patience).await
            }
            // Without a certificate only `tls` tunnels are served here.
            _ => {
                tracing::debug!(%peer, name = %hello.server_name, "no TLS tunnel by that name");
                let _ = stream.write_all(&UNRECOGNIZED_NAME_ALERT).await;
            }
        },
    }
    m.visitor_connections_active.dec();
}

/// Completes the TLS handshake with the configured certificate and serves HTTP inside.
async fn terminate(
    edge: &Arc<Edge>,
    stream: TcpStream,
    peer: SocketAddr,
    hello: Vec<u8>,
    patience: Duration,
) {
    let Some(config) = edge.https.clone() else {
        return;
    };
    let handshake = tokio_rustls::TlsAcceptor::from(config).accept(Prefixed::new(hello, stream));
    match tokio::time::timeout(patience, handshake).await {
        Ok(Ok(tls)) => visitor_http::serve_stream(edge, tls, peer, "https").await,
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

    /// A TLS 1.2/1.3 ClientHello record, with an SNI extension when `name` is given.
    fn client_hello(name: Option<&str>) -> Vec<u8> {
        let mut ext = Vec::new();
        if let Some(name) = name {
            let n = name.as_bytes();
            let list_len = 3 + n.len();
            ext.extend_from_slice(&[0x00, 0x00]);
            ext.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
            ext.extend_from_slice(&(list_len as u16).to_be_bytes());
            ext.push(0x00);
            ext.extend_from_slice(&(n.len() as u16).to_be_bytes());
            ext.extend_from_slice(n);
        }
        // signature_algorithms: ed25519, ecdsa_secp256r1_sha256.
        ext.extend_from_slice(&[0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x08, 0x07, 0x04, 0x03]);
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0x00, 0x04, 0x13, 0x01, 0xc0, 0x2f]);
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![0x01];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut record = vec![0x16, 0x03, 0x01];
        record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        record.extend_from_slice(&hs);
        record
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
        let mut bytes = client_hello(Some("Blog.A.Tunnel.Test"));
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
        let no_sni = read_in_steps(client_hello(None), 4096).await;
        assert!(
            matches!(no_sni, Err(HelloError::NoServerName)),
            "{no_sni:?}"
        );

        let http = read_in_steps(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 4096).await;
        assert!(matches!(http, Err(HelloError::NotTls)), "{http:?}");

        let mut cut = client_hello(Some("x.example"));
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
