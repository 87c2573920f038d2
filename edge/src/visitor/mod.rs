//! The visitors' side: the HTTP, TLS and TCP listeners, what they read before routing (the
//! first request head, the ClientHello), the one routing step they share, the request
//! phases, the raw splice, and the pages the edge answers with itself.

pub mod auth_throttle;
pub mod certificates;
pub mod client_hello;
pub mod first_request;
pub mod http;
pub mod http1_frames;
pub mod http2;
pub mod http_phases;
pub mod https;
pub mod pages;
pub mod relay_stream;
pub mod routing;
pub mod shares;
pub mod splice;
pub mod tcp;
pub mod tls;
pub mod upstream;

use crate::edge::Edge;
use crate::mesh::protocol::RelayListener;
use routing::Arrival;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// Serves a visitor connection a peer edge relayed here, as if the visitor (`visitor`, its
/// own address) had come to this edge's `listener`. It is never relayed again.
pub async fn serve_relayed<S>(
    edge: &Arc<Edge>,
    stream: S,
    listener: RelayListener,
    visitor: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let deadline = tokio::time::Instant::now() + http::head_timeout(edge);
    match listener {
        RelayListener::Http => {
            http::serve_stream(edge, stream, visitor, "http", deadline, Arrival::Relayed).await
        }
        RelayListener::Https => {
            http::serve_stream(edge, stream, visitor, "https", deadline, Arrival::Relayed).await
        }
        RelayListener::Tls => tls::carry(edge, stream, visitor, Arrival::Relayed).await,
    }
}
