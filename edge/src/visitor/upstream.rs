//! Where the HTTP listener sends a request once the phases let it through: one channel,
//! kept for the visitor connection's next requests to the same place, over which the edge
//! speaks HTTP/1.1 — a `forwarded-tcpip` channel of a tunnel this edge holds, or a relay
//! channel to the peer edge that holds it (the visitor's address as originator either way).

use crate::edge::Edge;
use crate::inspector::capture::Tapped;
use crate::io::counting::CountingStream;
use crate::io::read_buffer::Coalescing;
use crate::mesh::links::PeerLink;
use crate::mesh::protocol::RelayListener;
use crate::tunnels::Tunnel;
use crate::visitor::shares::Share;
use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// Where a request goes: through a tunnel of this edge, or to the peer edge holding it.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    /// A tunnel of this edge.
    Tunnel(&'a Arc<Tunnel>),
    /// The peer edge holding the tunnel.
    Peer(&'a Arc<PeerLink>),
}

/// The upstream a request was sent on, kept for the connection's next request to the same
/// place.
#[derive(PartialEq, Eq)]
pub enum UpstreamKey {
    /// A tunnel of this edge, by control's id.
    Tunnel(i64),
    /// A peer edge, by its id.
    Peer(String),
}

impl Target<'_> {
    /// The key its upstream is kept under.
    pub fn key(&self) -> UpstreamKey {
        match self {
            Target::Tunnel(t) => UpstreamKey::Tunnel(t.id),
            Target::Peer(p) => UpstreamKey::Peer(p.id.clone()),
        }
    }

    /// Whether an upstream to this target may still carry requests.
    pub fn is_live(&self) -> bool {
        match self {
            Target::Tunnel(t) => !t.is_closed(),
            Target::Peer(p) => !p.stop.is_cancelled(),
        }
    }
}

/// A request's body on its way upstream: the visitor's, none for a request sent again, or
/// the visitor's copied by the request inspector as it passes.
pub type UpstreamBody = Either<Incoming, Either<Empty<Bytes>, Tapped<Incoming>>>;

pub struct Upstream {
    /// Where it goes.
    pub key: UpstreamKey,
    /// The HTTP/1.1 connection over the channel.
    pub sender: SendRequest<UpstreamBody>,
    /// The tunnel's share of visitor connections this channel holds (none for a relay: the
    /// holder edge counts it).
    _share: Option<Share<i64>>,
}

/// Why no upstream could be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenFailure {
    /// The tunnel's client refused the channel (its local service is down, say), or HTTP
    /// could not start over it: the visitor is told at once.
    Refused,
    /// The tunnel's session did not answer at all: it is ending, and the edge has not yet
    /// seen it end. Worth waiting for the close and routing again.
    SessionGone,
    /// The peer edge holding the tunnel could not be reached.
    PeerUnreachable,
    /// The tunnel holds its whole share of visitor connections.
    TunnelBusy,
}

/// Opens the channel to `target` for the visitor at `visitor`, who came in over `scheme`
/// (`http`, or `https` terminated here), and starts HTTP/1.1 over it.
pub async fn open(
    edge: &Edge,
    target: Target<'_>,
    visitor: SocketAddr,
    scheme: &str,
) -> Result<Upstream, OpenFailure> {
    match target {
        Target::Tunnel(tunnel) => {
            let share = edge.tunnel_share(tunnel).ok_or(OpenFailure::TunnelBusy)?;
            connect(tunnel, visitor, share).await
        }
        Target::Peer(link) => connect_peer(edge, link, visitor, scheme).await,
    }
}

/// Opens a `forwarded-tcpip` channel with the visitor as originator and speaks HTTP/1.1
/// over it.
async fn connect(
    tunnel: &Arc<Tunnel>,
    visitor: SocketAddr,
    share: Share<i64>,
) -> Result<Upstream, OpenFailure> {
    let channel = match tunnel.open_channel(visitor).await {
        Ok(c) => c,
        Err(russh::Error::ChannelOpenFailure(reason)) => {
            tracing::debug!(
                ?reason,
                tunnel = tunnel.id,
                "client refused a visitor channel"
            );
            return Err(OpenFailure::Refused);
        }
        Err(e) => {
            tracing::debug!(error = %e, tunnel = tunnel.id, "client's session did not open a channel");
            return Err(OpenFailure::SessionGone);
        }
    };
    let io = Coalescing::new(channel);
    Ok(Upstream {
        key: UpstreamKey::Tunnel(tunnel.id),
        sender: http_over(io).await.ok_or(OpenFailure::Refused)?,
        _share: Some(share),
    })
}

/// Opens a relay channel to the peer edge holding the tunnel, with the visitor as
/// originator, and speaks HTTP/1.1 over it.
async fn connect_peer(
    edge: &Edge,
    link: &Arc<PeerLink>,
    visitor: SocketAddr,
    scheme: &str,
) -> Result<Upstream, OpenFailure> {
    let listener = match scheme {
        "https" => RelayListener::Https,
        _ => RelayListener::Http,
    };
    let channel = match link.open_relay(listener, visitor).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "relaying a visitor to the holder edge failed");
            edge.metrics
                .relay_errors_total
                .with_label_values(&[e.cause()])
                .inc();
            return Err(OpenFailure::PeerUnreachable);
        }
    };
    let m = &edge.metrics;
    m.relay_connections_total
        .with_label_values(&[&link.id, "out"])
        .inc();
    let io = CountingStream::new(
        Coalescing::new(channel),
        m.relay_bytes_total
            .with_label_values(&[&link.id, "received"]),
        m.relay_bytes_total.with_label_values(&[&link.id, "sent"]),
    );
    Ok(Upstream {
        key: UpstreamKey::Peer(link.id.clone()),
        sender: http_over(io).await.ok_or(OpenFailure::PeerUnreachable)?,
        _share: None,
    })
}

/// An HTTP/1.1 client connection over `io` (a channel), driven by its own task.
async fn http_over<S>(io: S) -> Option<SendRequest<UpstreamBody>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = match hyper::client::conn::http1::Builder::new()
        .handshake::<_, UpstreamBody>(TokioIo::new(io))
        .await
    {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "HTTP handshake over the channel failed");
            return None;
        }
    };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "tunnel-side HTTP connection ended");
        }
    });
    Some(sender)
}
