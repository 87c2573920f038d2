//! HTTPS for `http` tunnels: one rustls server configuration whose certificate is chosen at
//! each handshake by [`Certificates`] (the operator's files, or those control obtained by
//! ACME). The TLS listener uses it for every name that is not a `tls` tunnel, and serves
//! what the handshake agreed on: HTTP/2 (ALPN `h2`, preferred) or HTTP/1.1.

use crate::edge::Edge;
use crate::visitor::certificates::Certificates;
use crate::visitor::routing::Arrival;
use crate::visitor::{http, http2};
use anyhow::{Context, Result};
use rustls::ServerConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

/// The application protocols offered in the handshake, the preferred first: a client that
/// offers none of them, or only `http/1.1`, gets HTTP/1.1.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The server configuration over `certificates`: HTTP/2 or HTTP/1.1 over TLS 1.2 or 1.3.
pub fn server_config(certificates: Arc<Certificates>) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Serves a visitor connection whose TLS the edge terminated, in the protocol its
/// handshake agreed on. `deadline` bounds the first request, counted from the accept.
pub async fn serve_terminated<S>(
    edge: &Arc<Edge>,
    tls: Box<TlsStream<S>>,
    peer: SocketAddr,
    deadline: Instant,
    arrival: Arrival,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        http2::serve(edge, tls, peer, deadline, arrival).await
    } else {
        http::serve_stream(edge, tls, peer, "https", deadline, arrival).await
    }
}
