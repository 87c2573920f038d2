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
        // Boxed: TLS termination's future is three times an HTTP connection's, and the
        // task of every relayed connection would otherwise be sized for it.
        RelayListener::Tls => {
            Box::pin(tls::carry(edge, stream, visitor, Arrival::RelayedWhole)).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every visitor connection is a task as large as the future serving it, whichever
    /// branch it takes, and a flood holds the edge's whole `max_visitor_connections` of them:
    /// the rare, large branches (TLS termination, the splice, the relay) are boxed.
    #[tokio::test]
    async fn the_futures_that_serve_a_connection_stay_small() {
        let edge = Arc::new(Edge::for_tests(Default::default(), 1));
        let visitor: SocketAddr = "127.0.0.9:5000".parse().expect("address");
        let deadline = tokio::time::Instant::now();
        let stream = || tokio::io::duplex(64).0;
        let relayed = serve_relayed(&edge, stream(), RelayListener::Http, visitor);
        let http = http::serve_stream(&edge, stream(), visitor, "http", deadline, Arrival::Direct);
        let tls = tls::carry(&edge, stream(), visitor, Arrival::Direct);
        let sizes = [
            ("serve_relayed", std::mem::size_of_val(&relayed), 4096),
            ("serve_stream", std::mem::size_of_val(&http), 4096),
            ("tls::carry", std::mem::size_of_val(&tls), 6144),
        ];
        for (what, size, most) in sizes {
            assert!(size <= most, "{what}: {size} bytes, more than {most}");
        }
    }
}
