//! Carrying a visitor connection as raw bytes through one `forwarded-tcpip` channel: TCP
//! tunnels, TLS passthrough and `x:noreverseproxy` HTTP tunnels all end here.

use crate::edge::Edge;
use crate::io::counting::CountingStream;
use crate::tunnels::Tunnel;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Carries one visitor connection through a new `forwarded-tcpip` channel of `tunnel`:
/// `already_read` (bytes taken from the visitor to route it) first, then both directions
/// until either side ends.
pub async fn splice<S: AsyncRead + AsyncWrite + Unpin>(
    edge: &Edge,
    tunnel: &Tunnel,
    stream: S,
    peer: SocketAddr,
    already_read: Vec<u8>,
) {
    let m = &edge.metrics;
    let bytes_in = m.visitor_bytes_total.with_label_values(&["in"]);
    bytes_in.inc_by(already_read.len() as u64);
    let mut visitor = CountingStream::new(
        stream,
        bytes_in,
        m.visitor_bytes_total.with_label_values(&["out"]),
    );
    let channel = match tunnel.open_channel(peer).await {
        Ok(channel) => channel,
        Err(e) => {
            tracing::debug!(error = %e, tunnel = tunnel.id, "client refused a visitor channel");
            return;
        }
    };
    let mut upstream = channel.into_stream();
    if let Err(e) = upstream.write_all(&already_read).await {
        tracing::debug!(error = %e, tunnel = tunnel.id, "visitor channel closed at once");
        return;
    }
    // Not kept for the life of the connection.
    drop(already_read);
    if let Err(e) = tokio::io::copy_bidirectional(&mut visitor, &mut upstream).await {
        tracing::debug!(error = %e, tunnel = tunnel.id, "visitor connection ended");
    }
}
