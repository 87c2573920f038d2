//! Where the HTTP listener sends a request once the phases let it through: one channel,
//! kept for the visitor connection's next requests to the same place, over which the edge
//! speaks HTTP/1.1 — a `forwarded-tcpip` channel of a tunnel this edge holds, or a relay
//! channel to the peer edge that holds it (the visitor's address as originator either way).
//! An HTTP/2 visitor connection keeps a pool of such channels instead, one per stream in
//! flight (`IdlePool`).

use crate::edge::Edge;
use crate::inspector::capture::Tapped;
use crate::io::channel_writes::ChannelWrites;
use crate::io::counting::CountingStream;
use crate::io::read_buffer::Coalescing;
use crate::mesh::links::{PeerLink, RelayChannel, RelayError};
use crate::mesh::protocol::RelayListener;
use crate::tunnels::{ChannelOpenError, Tunnel};
use crate::visitor::pages::ProxyBody;
use crate::visitor::shares::Share;
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

/// Where a request goes: through a tunnel of this edge, or to the peer edge holding it.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    /// A tunnel of this edge.
    Tunnel(&'a Arc<Tunnel>),
    /// The peer edge holding the tunnel, and the name the request is for.
    Peer(&'a Arc<PeerLink>, &'a str),
}

/// The upstream a request was sent on, kept for the connection's next request to the same
/// place.
#[derive(PartialEq, Eq)]
pub enum UpstreamKey {
    /// A tunnel of this edge, by control's id.
    Tunnel(i64),
    /// A peer edge, by its id, for one name: a relay channel carries the requests of one
    /// name only. The holder may hand a relayed connection whole to the tunnel its first
    /// request names (`x:noreverseproxy`), so a channel shared by two names could deliver
    /// one tunnel's visitors, cookies and all, to another.
    Peer(String, String),
}

impl Target<'_> {
    /// The key its upstream is kept under.
    pub fn key(&self) -> UpstreamKey {
        match self {
            Target::Tunnel(t) => UpstreamKey::Tunnel(t.id),
            Target::Peer(p, host) => UpstreamKey::Peer(p.id.clone(), host.to_string()),
        }
    }

    /// Whether an upstream to this target may still carry requests.
    pub fn is_live(&self) -> bool {
        match self {
            Target::Tunnel(t) => !t.is_closed(),
            Target::Peer(p, _) => !p.stop.is_cancelled(),
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
    /// The peer edge holding the tunnel did not confirm the channel in time: its host has
    /// stopped answering, and trying again would only make the visitor wait as long again.
    PeerNotAnswering,
    /// The tunnel holds its whole share of visitor connections, or (relayed) this edge is
    /// opening as many relay channels to its holder as it may at once.
    TunnelBusy,
    /// The tunnel's client did not take the channel within this bound: suspended, frozen,
    /// or its network stalled. Not worth trying again at once.
    ClientNotAnswering(Duration),
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
            connect(edge, tunnel, visitor, share).await
        }
        Target::Peer(link, host) => connect_peer(edge, link, host, visitor, scheme).await,
    }
}

/// Opens a `forwarded-tcpip` channel with the visitor as originator and speaks HTTP/1.1
/// over it.
async fn connect(
    edge: &Edge,
    tunnel: &Arc<Tunnel>,
    visitor: SocketAddr,
    share: Share<i64>,
) -> Result<Upstream, OpenFailure> {
    let channel = match edge.open_visitor_channel(tunnel, visitor).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, tunnel = tunnel.id, name = %tunnel.hostname, "no visitor channel");
            return Err(match e {
                ChannelOpenError::Refused(_) => OpenFailure::Refused,
                ChannelOpenError::SessionGone(_) => OpenFailure::SessionGone,
                ChannelOpenError::NotAnswering(bound) => OpenFailure::ClientNotAnswering(bound),
                ChannelOpenError::ClientFull => OpenFailure::TunnelBusy,
            });
        }
    };
    let io = Coalescing::new(ChannelWrites::new(channel));
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
    host: &str,
    visitor: SocketAddr,
    scheme: &str,
) -> Result<Upstream, OpenFailure> {
    let io = relay_channel(edge, link, host, visitor, scheme).await?;
    Ok(Upstream {
        key: UpstreamKey::Peer(link.id.clone(), host.to_string()),
        sender: http_over(Coalescing::new(ChannelWrites::new(io)))
            .await
            .ok_or(OpenFailure::PeerUnreachable)?,
        _share: None,
    })
}

/// A relay channel to the peer edge behind `link`, for a visitor of the tunnel `host` at
/// `visitor` who came in over `scheme`, counted in the relay metrics.
pub async fn relay_channel(
    edge: &Edge,
    link: &Arc<PeerLink>,
    host: &str,
    visitor: SocketAddr,
    scheme: &str,
) -> Result<CountingStream<RelayChannel>, OpenFailure> {
    let listener = match scheme {
        "https" => RelayListener::Https,
        _ => RelayListener::Http,
    };
    let m = &edge.metrics;
    let channel = match link.open_relay(listener, visitor, host).await {
        Ok(c) => c,
        Err(e) => {
            // Logged by the link, at most one line a while.
            m.relay_errors_total.with_label_values(&[e.cause()]).inc();
            return Err(match e {
                RelayError::TimedOut(_) => OpenFailure::PeerNotAnswering,
                RelayError::Busy { .. } | RelayError::TunnelBusy { .. } => OpenFailure::TunnelBusy,
                _ => OpenFailure::PeerUnreachable,
            });
        }
    };
    m.relay_connections_total
        .with_label_values(&[&link.id, "out"])
        .inc();
    Ok(CountingStream::new(
        channel,
        m.relay_bytes_total
            .with_label_values(&[&link.id, "out", "received"]),
        m.relay_bytes_total
            .with_label_values(&[&link.id, "out", "sent"]),
    ))
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

/// Most idle channels an HTTP/2 visitor connection keeps for its next streams: as many as
/// it may run at once, so a connection whose streams keep coming at a steady concurrency
/// never closes a channel only to open another (each open is a round trip to the client and
/// a new connection to the local service). Channels it no longer needs are closed by age.
pub const MAX_IDLE_PER_CONNECTION: usize = crate::visitor::http2::MAX_CONCURRENT_STREAMS as usize;

/// An idle channel unused this long is closed: the connection's concurrency has fallen, and
/// the channel holds one of the tunnel's share of visitor connections.
pub const IDLE_CHANNEL_SECONDS: u64 = 30;

/// The idle upstreams of one HTTP/2 visitor connection, for its streams to take in turn:
/// the most recently given back first, so the surplus of a burst stays unused and ages out.
#[derive(Default)]
pub struct IdlePool {
    idle: std::sync::Mutex<Vec<(Upstream, Instant)>>,
}

impl IdlePool {
    /// An idle upstream to `target` that can carry a request now, if the pool has one (the
    /// most recently given back); closed ones, aged ones and ones to a target that went
    /// away are dropped on the way.
    pub async fn take(&self, target: Target<'_>) -> Option<Upstream> {
        let key = target.key();
        loop {
            let mut up = {
                let mut idle = self.lock();
                let at = idle.iter().rposition(|(up, _)| up.key == key)?;
                idle.remove(at).0
            };
            if !target.is_live() {
                return None;
            }
            // A channel comes back when its answer's body ended, which is when its
            // connection turns idle: this waits for hyper to see it, no longer.
            if up.sender.ready().await.is_ok() {
                return Some(up);
            }
        }
    }

    /// The answer `resp`, its body giving `up` back to the pool when it ends cleanly (an
    /// answer cut short closes the channel with it).
    pub fn give_back_after(
        self: &Arc<Self>,
        resp: hyper::Response<Incoming>,
        up: Upstream,
    ) -> hyper::Response<ProxyBody> {
        let pool = Arc::downgrade(self);
        resp.map(|body| {
            let mut body = GivesBack {
                body,
                up: Some(up),
                pool,
            };
            body.give_back_if_ended(false);
            BodyExt::boxed(body)
        })
    }

    fn put(&self, up: Upstream) {
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE_PER_CONNECTION {
            idle.push((up, Instant::now()));
        }
    }

    /// The idle list, without the channels that sat unused too long. The list is in the
    /// order channels came back (taking one keeps the order), so those are a prefix: one
    /// clock reading per call, not one per channel. A channel that closed while idle is
    /// found by [`IdlePool::take`].
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Upstream, Instant)>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let max_age = Duration::from_secs(IDLE_CHANNEL_SECONDS);
        let now = Instant::now();
        let aged = idle
            .iter()
            .take_while(|(_, since)| now.duration_since(*since) >= max_age)
            .count();
        idle.drain(..aged);
        idle
    }

    /// How many idle upstreams the pool holds.
    pub fn idle_count(&self) -> usize {
        self.lock()
            .iter()
            .filter(|(up, _)| !up.sender.is_closed())
            .count()
    }
}

/// An answer's body that gives its upstream back to the pool once it has ended.
struct GivesBack {
    body: Incoming,
    up: Option<Upstream>,
    pool: Weak<IdlePool>,
}

impl GivesBack {
    fn give_back_if_ended(&mut self, ended: bool) {
        if !(ended || self.body.is_end_stream()) {
            return;
        }
        if let (Some(up), Some(pool)) = (self.up.take(), self.pool.upgrade()) {
            pool.put(up);
        }
    }
}

impl Body for GivesBack {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        match &frame {
            None => self.give_back_if_ended(true),
            // The channel is in an unknown state: it goes with this answer.
            Some(Err(_)) => self.up = None,
            Some(Ok(_)) => self.give_back_if_ended(false),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper::{Request, Response};
    use nearhop_wire::TunnelKind;
    use std::convert::Infallible;

    fn tunnel(id: i64) -> Arc<Tunnel> {
        Arc::new(Tunnel::new(
            id,
            "blog.a.tunnel.test".into(),
            "a.tunnel.test".into(),
            "us".into(),
            TunnelKind::Http,
            None,
            crate::tunnels::ForwardTarget {
                address: "localhost".into(),
                port: 8000,
            },
            Arc::new(crate::ssh::link::SessionLink::new(
                1,
                "127.0.0.1:1".parse().expect("addr"),
            )),
            Arc::default(),
        ))
    }

    /// An upstream to tunnel 1 whose far end is hyper's HTTP/1.1 server in memory,
    /// answering `GET /N` with N bytes (a channel without the SSH around it).
    async fn upstream() -> Upstream {
        let (near, far) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let service = service_fn(|req: Request<Incoming>| async move {
                let n: usize = req.uri().path()[1..].parse().unwrap_or(0);
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(vec![b'x'; n]))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(far), service)
                .await;
        });
        Upstream {
            key: UpstreamKey::Tunnel(1),
            sender: http_over(near).await.expect("handshake"),
            _share: None,
        }
    }

    fn get(path: &str) -> Request<UpstreamBody> {
        Request::builder()
            .uri(path)
            .header("host", "local")
            .body(Either::Right(Either::Left(Empty::new())))
            .expect("request")
    }

    async fn send(
        pool: &Arc<IdlePool>,
        mut up: Upstream,
        path: &str,
    ) -> hyper::Response<ProxyBody> {
        let resp = up.sender.send_request(get(path)).await.expect("answer");
        pool.give_back_after(resp, up)
    }

    #[tokio::test]
    async fn a_channel_goes_back_when_its_answer_ended_and_carries_the_next_stream() {
        let (pool, tunnel) = (Arc::new(IdlePool::default()), tunnel(1));
        let resp = send(&pool, upstream().await, "/100000").await;
        assert_eq!(pool.idle_count(), 0, "busy while its answer streams");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body.len(), 100_000);
        assert_eq!(pool.idle_count(), 1, "back once the answer ended");
        let again = pool
            .take(Target::Tunnel(&tunnel))
            .await
            .expect("idle channel");
        assert_eq!(pool.idle_count(), 0);
        let resp = send(&pool, again, "/5").await;
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"xxxxx");
    }

    #[tokio::test]
    async fn an_empty_answer_gives_its_channel_back_at_once() {
        let pool = Arc::new(IdlePool::default());
        let resp = send(&pool, upstream().await, "/0").await;
        assert_eq!(pool.idle_count(), 1);
        drop(resp);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn an_answer_cut_short_closes_its_channel() {
        let pool = Arc::new(IdlePool::default());
        let mut resp = send(&pool, upstream().await, "/1000000").await;
        let first = resp
            .body_mut()
            .frame()
            .await
            .expect("a frame")
            .expect("data");
        assert!(first.is_data());
        drop(resp);
        assert_eq!(
            pool.idle_count(),
            0,
            "a half-read answer's channel is not reused"
        );
    }

    #[tokio::test]
    async fn the_pool_keeps_at_most_its_cap_of_idle_channels_and_none_to_another_target() {
        let pool = Arc::new(IdlePool::default());
        for _ in 0..MAX_IDLE_PER_CONNECTION + 4 {
            let resp = send(&pool, upstream().await, "/0").await;
            drop(resp);
        }
        assert_eq!(pool.idle_count(), MAX_IDLE_PER_CONNECTION);
        let other = tunnel(2);
        assert!(pool.take(Target::Tunnel(&other)).await.is_none());
        assert_eq!(pool.idle_count(), MAX_IDLE_PER_CONNECTION);
    }

    #[tokio::test]
    async fn the_latest_channel_is_taken_first_and_unused_ones_age_out() {
        let (pool, tunnel) = (Arc::new(IdlePool::default()), tunnel(1));
        for _ in 0..3 {
            drop(send(&pool, upstream().await, "/0").await);
        }
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(IDLE_CHANNEL_SECONDS - 5)).await;
        // Steady use of one channel keeps it young; the other two age.
        let up = pool.take(Target::Tunnel(&tunnel)).await.expect("idle");
        drop(send(&pool, up, "/0").await);
        assert_eq!(pool.idle_count(), 3);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(pool.idle_count(), 1, "the two unused ones are closed");
        assert!(pool.take(Target::Tunnel(&tunnel)).await.is_some());
    }
}
