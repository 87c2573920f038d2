//! Carrying a visitor connection as raw bytes through one `forwarded-tcpip` channel: TCP
//! tunnels, TLS passthrough and `x:noreverseproxy` HTTP tunnels all end here.

use crate::edge::Edge;
use crate::io::counting::CountingStream;
use crate::io::idle::{carry_until_idle, Carried};
use crate::tunnels::Tunnel;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// The visitor's side of a carried connection, counted in the visitor byte metrics from
/// here on; `already_read` (taken to route it) is counted at once.
pub fn counted_visitor<S>(edge: &Edge, stream: S, already_read: &[u8]) -> CountingStream<S> {
    let m = &edge.metrics;
    let bytes_in = m.visitor_bytes_total.with_label_values(&["in"]);
    bytes_in.inc_by(already_read.len() as u64);
    CountingStream::new(
        stream,
        bytes_in,
        m.visitor_bytes_total.with_label_values(&["out"]),
    )
}

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
    // Turned away (closed) before a channel is opened, when the tunnel holds its share.
    let Some(_share) = edge.tunnel_share(tunnel) else {
        tracing::debug!(
            tunnel = tunnel.id,
            "tunnel holds its share of visitor connections"
        );
        return;
    };
    let mut visitor = counted_visitor(edge, stream, &already_read);
    let channel = match edge.open_visitor_channel(tunnel, peer).await {
        Ok(channel) => channel,
        Err(e) => {
            tracing::debug!(error = %e, tunnel = tunnel.id, "client refused a visitor channel");
            return;
        }
    };
    let mut upstream = channel;
    if let Err(e) = upstream.write_all(&already_read).await {
        tracing::debug!(error = %e, tunnel = tunnel.id, "visitor channel closed at once");
        return;
    }
    // Not kept for the life of the connection.
    drop(already_read);
    let idle = edge.config.splice_idle_timeout_seconds;
    let idle = (idle > 0).then(|| Duration::from_secs(idle));
    match carry_until_idle(&mut visitor, &mut upstream, idle).await {
        Ok(Carried::Ended) => {}
        Ok(Carried::Idle) => {
            edge.metrics.splice_idle_closed_total.inc();
            tracing::debug!(tunnel = tunnel.id, "idle visitor connection closed");
        }
        Err(e) => tracing::debug!(error = %e, tunnel = tunnel.id, "visitor connection ended"),
    }
}
