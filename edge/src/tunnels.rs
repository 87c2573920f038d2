//! Live tunnels on this edge: the map visitors are routed through (host name or custom
//! domain → tunnel) and the map control closes by id.

use crate::inspector::capture::Inspector;
use crate::io::closing_channel::ClosingChannel;
use crate::io::receive_window::{SessionGrants, WindowLimits};
use crate::mesh::protocol::{HoldingChange, Proof};
use crate::options::TunnelOptions;
use crate::ssh::link::SessionLink;
use nearhop_wire::TunnelKind;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// What the client asked to be forwarded; echoed in every `forwarded-tcpip` channel so that
/// the client's OpenSSH matches the channel to its `-R`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardTarget {
    /// The bind address as sent in `tcpip-forward`.
    pub address: String,
    /// The port as replied (the allocated one when the client asked for 0).
    pub port: u32,
}

/// A live tunnel.
pub struct Tunnel {
    /// Control's id.
    pub id: i64,
    /// Full public name.
    pub hostname: String,
    /// Zone of the name.
    pub zone: String,
    /// Region the record points at.
    pub region: String,
    /// What it carries.
    pub kind: TunnelKind,
    /// Public TCP port (TCP tunnels).
    pub public_port: Option<u16>,
    /// The forward this tunnel answers.
    pub forward: ForwardTarget,
    /// The SSH session carrying it.
    pub session: Arc<SessionLink>,
    options: RwLock<Arc<TunnelOptions>>,
    closed: AtomicBool,
    /// Cancelled when the tunnel closes (stops its TCP listener).
    pub stop: CancellationToken,
    /// The request inspector, once the owner opened it or asked for `inspect`.
    pub inspector: OnceLock<Arc<Inspector>>,
    /// Control's proof that this edge holds the name as this tunnel, announced with it to
    /// peer edges (`None`: control did not sign; peers then relay to it only when they
    /// accept unproven claims).
    pub holder_proof: Option<String>,
    /// What its visitor channels' windows hold of `tunnel_window_budget_bytes` now, for its
    /// share of it (`io::receive_window`).
    pub window_held: Arc<std::sync::atomic::AtomicU64>,
}

impl Tunnel {
    /// A tunnel as answered by control.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: i64,
        hostname: String,
        zone: String,
        region: String,
        kind: TunnelKind,
        public_port: Option<u16>,
        forward: ForwardTarget,
        session: Arc<SessionLink>,
        options: Arc<TunnelOptions>,
    ) -> Tunnel {
        Tunnel {
            id,
            hostname,
            zone,
            region,
            kind,
            public_port,
            forward,
            session,
            options: RwLock::new(options),
            closed: AtomicBool::new(false),
            stop: CancellationToken::new(),
            inspector: OnceLock::new(),
            holder_proof: None,
            window_held: Arc::default(),
        }
    }

    /// The tunnel with control's holder proof.
    pub fn with_holder_proof(mut self, proof: Option<String>) -> Tunnel {
        self.holder_proof = proof;
        self
    }

    /// The feed line announcing this tunnel to peer edges.
    pub fn announcement(&self) -> HoldingChange {
        let proof = self.holder_proof.as_ref().map(|signature| Proof {
            tunnel_id: self.id,
            signature: signature.clone(),
        });
        HoldingChange::Added(self.hostname.clone(), self.kind, proof)
    }

    /// The visitor-side options now in force.
    pub fn options(&self) -> Arc<TunnelOptions> {
        self.options
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the options (the command words may arrive after the forward).
    pub fn set_options(&self, options: Arc<TunnelOptions>) {
        *self.options.write().unwrap_or_else(|e| e.into_inner()) = options;
    }

    /// Marks the tunnel closed; true only for the first caller.
    pub fn mark_closed(&self) -> bool {
        let first = !self.closed.swap(true, Ordering::SeqCst);
        if first {
            self.stop.cancel();
            if let Some(inspector) = self.inspector.get() {
                inspector.close();
            }
        }
        first
    }

    /// Whether the tunnel is closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Opens one `forwarded-tcpip` channel to the client for a visitor connection, with the
    /// visitor's address as originator, waiting `within` at most for the client to take it.
    ///
    /// The open runs in a task of its own and is seen through whoever asked for it: a
    /// visitor that left meanwhile (a reset HTTP/2 stream, a closed connection), or a wait
    /// that ran out, leaves the task to close the channel when the client confirms it. A
    /// channel the client confirmed stays open at the client (with its connection to the
    /// local service) until the edge closes it, so an open dropped half way would leak
    /// one per abandoned visit until the client's channel table overflowed and ssh exited.
    ///
    /// No more than `max_channels` of the edge's channels are kept at the client at once
    /// (see [`PeerCloses::begin_open`](crate::io::closing_channel::PeerCloses::begin_open)).
    ///
    /// The channel's reads grant the client its window, within `windows`
    /// ([`GrantedReads`](crate::io::receive_window::GrantedReads)): a visitor who stops
    /// reading holds up this channel only, not the client's other channels.
    pub async fn open_channel(
        &self,
        visitor: SocketAddr,
        within: Option<Duration>,
        max_channels: usize,
        windows: &WindowLimits,
    ) -> Result<ClosingChannel, ChannelOpenError> {
        let handle = self
            .session
            .handle()
            .ok_or(ChannelOpenError::SessionGone(russh::Error::SendError))?
            .clone();
        let (address, port) = (self.forward.address.clone(), self.forward.port);
        let closes = self.session.closes.clone();
        let windows = windows.clone();
        let opening = closes
            .begin_open(max_channels)
            .ok_or(ChannelOpenError::ClientFull)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _opening = opening;
            let opened = handle
                .channel_open_forwarded_tcpip(
                    address,
                    port,
                    visitor.ip().to_string(),
                    u32::from(visitor.port()),
                )
                .await
                .map(|channel| {
                    let grants = SessionGrants::to(handle.clone(), channel.id());
                    ClosingChannel::granting(channel, closes, grants, &windows)
                });
            // Nobody waits any more: the channel comes back and is dropped, which closes it
            // the way every finished channel is closed (EOF, then the client's close).
            if let Err(Ok(unwanted)) = tx.send(opened) {
                tracing::debug!("visitor gone before its channel opened; closing the channel");
                drop(unwanted);
            }
        });
        let opened = match within {
            Some(bound) => tokio::time::timeout(bound, rx)
                .await
                .map_err(|_| ChannelOpenError::NotAnswering(bound))?,
            None => rx.await,
        };
        match opened {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(russh::Error::ChannelOpenFailure(reason))) => {
                Err(ChannelOpenError::Refused(reason))
            }
            Ok(Err(e)) => Err(ChannelOpenError::SessionGone(e)),
            // The task ended without an answer: the runtime is stopping.
            Err(_) => Err(ChannelOpenError::SessionGone(russh::Error::SendError)),
        }
    }
}

/// Why a visitor channel to a tunnel's client was not opened.
#[derive(Debug, thiserror::Error)]
pub enum ChannelOpenError {
    /// The client refused it: its local service is down, or it forwards nothing there.
    #[error("the ssh client refused the channel ({0:?})")]
    Refused(russh::ChannelOpenFailure),
    /// The session did not carry the request: it is ending.
    #[error("the ssh session is ending ({0})")]
    SessionGone(russh::Error),
    /// The client did not answer in time: suspended, frozen, or its network stalled. Its
    /// late answer, if it comes, opens a channel that is closed at once.
    #[error("the ssh client did not take the connection within {} s", .0.as_secs())]
    NotAnswering(Duration),
    /// The client holds `max_channels_per_client` of the edge's channels already.
    #[error("the ssh client holds as many channels as it may; try again shortly")]
    ClientFull,
}

/// How many holding changes a slow mesh peer may fall behind before it is sent a fresh
/// snapshot instead.
const HOLDING_CHANGES_BUFFER: usize = 4096;

/// How long the edge remembers a tunnel it closed, so that control's probe of it hears
/// "known, and dead" rather than "unknown" (which, for a tunnel control created a moment
/// ago, may mean its edge has not learned of it yet).
const CLOSED_MEMORY: Duration = Duration::from_secs(600);
/// At most this many closed tunnels are remembered (a burst of closes forgets the oldest).
const MAX_CLOSED: usize = 100_000;

/// The edge's live tunnels.
pub struct Registry {
    inner: RwLock<Maps>,
    /// Ids of tunnels closed here recently, with when.
    closed: Mutex<HashMap<i64, Instant>>,
    /// Every name this edge starts or stops holding, for the mesh's holdings feeds.
    changes: broadcast::Sender<HoldingChange>,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry {
            inner: RwLock::default(),
            closed: Mutex::default(),
            changes: broadcast::channel(HOLDING_CHANGES_BUFFER).0,
        }
    }
}

#[derive(Default)]
struct Maps {
    by_host: HashMap<String, Arc<Tunnel>>,
    by_id: HashMap<i64, Arc<Tunnel>>,
    /// Verified custom domain → tunnel host name.
    custom_domains: HashMap<String, String>,
}

impl Registry {
    /// Adds a tunnel; returns the tunnel that held its host name on this edge before, if any.
    pub fn insert(&self, tunnel: Arc<Tunnel>) -> Option<Arc<Tunnel>> {
        let mut m = self.inner.write().unwrap_or_else(|e| e.into_inner());
        m.by_id.insert(tunnel.id, tunnel.clone());
        let change = tunnel.announcement();
        let old = m.by_host.insert(tunnel.hostname.clone(), tunnel);
        if let Some(old) = &old {
            m.by_id.remove(&old.id);
        }
        // No subscriber (no peer follows the feed) is not an error.
        let _ = self.changes.send(change);
        old
    }

    /// Removes a tunnel (only if its host name still maps to it).
    pub fn remove(&self, tunnel: &Tunnel) -> bool {
        self.remember_closed(tunnel.id);
        let mut m = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let was = m.by_id.remove(&tunnel.id).is_some();
        if m.by_host.get(&tunnel.hostname).map(|t| t.id) == Some(tunnel.id) {
            m.by_host.remove(&tunnel.hostname);
            let _ = self
                .changes
                .send(HoldingChange::Removed(tunnel.hostname.clone()));
        }
        was
    }

    fn remember_closed(&self, id: i64) {
        let mut closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        if closed.len() >= MAX_CLOSED {
            closed.retain(|_, at| at.elapsed() < CLOSED_MEMORY);
            if closed.len() >= MAX_CLOSED {
                closed.clear();
            }
        }
        closed.insert(id, Instant::now());
    }

    /// Whether the tunnel with control's id was closed on this edge within the last ten
    /// minutes.
    pub fn closed_recently(&self, id: i64) -> bool {
        let closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        closed
            .get(&id)
            .is_some_and(|at| at.elapsed() < CLOSED_MEMORY)
    }

    /// Puts a marker into every holdings feed, after every change made so far.
    pub fn mark(&self, marker: u64) {
        let _ = self.changes.send(HoldingChange::Sync(marker));
    }

    /// Follows the names this edge starts and stops holding (subscribe before taking
    /// [`Registry::holdings`], so that nothing between the two is missed).
    pub fn subscribe(&self) -> broadcast::Receiver<HoldingChange> {
        self.changes.subscribe()
    }

    /// Every name this edge holds now, as feed lines (with the tunnel's kind and proof).
    pub fn holdings(&self) -> Vec<HoldingChange> {
        let m = self.inner.read().unwrap_or_else(|e| e.into_inner());
        m.by_host.values().map(|t| t.announcement()).collect()
    }

    /// The tunnel name `host` stands for: a verified custom domain's target, else `host`.
    pub fn tunnel_name(&self, host: &str) -> String {
        let m = self.inner.read().unwrap_or_else(|e| e.into_inner());
        m.custom_domains
            .get(host)
            .cloned()
            .unwrap_or_else(|| host.to_string())
    }

    /// The tunnel serving `host` (a tunnel name or a verified custom domain), lowercase,
    /// without port.
    pub fn route(&self, host: &str) -> Option<Arc<Tunnel>> {
        let m = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let tunnel = match m.by_host.get(host) {
            Some(t) => t,
            None => m.by_host.get(m.custom_domains.get(host)?)?,
        };
        // A tunnel being closed is about to leave the registry: no new visitor goes to it.
        (!tunnel.is_closed()).then(|| tunnel.clone())
    }

    /// The tunnel with control's id.
    pub fn by_id(&self, id: i64) -> Option<Arc<Tunnel>> {
        let m = self.inner.read().unwrap_or_else(|e| e.into_inner());
        m.by_id.get(&id).cloned()
    }

    /// Ids of all live tunnels (for the batched heartbeat).
    pub fn ids(&self) -> Vec<i64> {
        let m = self.inner.read().unwrap_or_else(|e| e.into_inner());
        m.by_id.keys().copied().collect()
    }

    /// All live tunnels.
    pub fn all(&self) -> Vec<Arc<Tunnel>> {
        let m = self.inner.read().unwrap_or_else(|e| e.into_inner());
        m.by_id.values().cloned().collect()
    }

    /// Replaces the custom-domain routes.
    pub fn set_custom_domains(&self, pairs: Vec<(String, String)>) {
        let map = pairs
            .into_iter()
            .map(|(d, h)| (d.to_ascii_lowercase(), h.to_ascii_lowercase()))
            .collect();
        let mut m = self.inner.write().unwrap_or_else(|e| e.into_inner());
        m.custom_domains = map;
    }

    /// Number of live tunnels.
    pub fn len(&self) -> usize {
        let m = self.inner.read().unwrap_or_else(|e| e.into_inner());
        m.by_id.len()
    }

    /// Whether no tunnel is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tunnel(id: i64, host: &str) -> Arc<Tunnel> {
        Arc::new(Tunnel::new(
            id,
            host.into(),
            "a.tunnel.test".into(),
            "us".into(),
            TunnelKind::Http,
            None,
            ForwardTarget {
                address: "localhost".into(),
                port: 8080,
            },
            Arc::new(SessionLink::new(1, "127.0.0.1:1".parse().unwrap())),
            Arc::default(),
        ))
    }

    #[test]
    fn routes_by_name_and_custom_domain() {
        let r = Registry::default();
        r.insert(tunnel(1, "blog.a.tunnel.test"));
        r.set_custom_domains(vec![("My.Example".into(), "blog.a.tunnel.test".into())]);
        assert_eq!(r.route("blog.a.tunnel.test").map(|t| t.id), Some(1));
        assert_eq!(r.route("my.example").map(|t| t.id), Some(1));
        assert!(r.route("other.a.tunnel.test").is_none());
    }

    #[test]
    fn a_new_tunnel_for_the_same_name_replaces_the_old_and_old_removal_keeps_it() {
        let r = Registry::default();
        let old = tunnel(1, "blog.a.tunnel.test");
        r.insert(old.clone());
        let replaced = r.insert(tunnel(2, "blog.a.tunnel.test"));
        assert_eq!(replaced.map(|t| t.id), Some(1));
        r.remove(&old);
        assert_eq!(r.route("blog.a.tunnel.test").map(|t| t.id), Some(2));
        assert_eq!(r.ids(), vec![2]);
    }

    #[test]
    fn closed_tunnels_are_not_routed_to_and_are_remembered_as_closed() {
        let r = Registry::default();
        let t = tunnel(7, "blog.a.tunnel.test");
        r.insert(t.clone());
        assert!(!r.closed_recently(7));
        t.mark_closed();
        assert!(
            r.route("blog.a.tunnel.test").is_none(),
            "closing, not yet removed"
        );
        r.remove(&t);
        assert!(r.closed_recently(7));
        assert!(!r.closed_recently(8));
    }
}
