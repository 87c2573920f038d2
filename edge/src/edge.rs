//! The edge's shared state (`Edge`: settings, live tunnels, SSH sessions, visitor slots,
//! metrics), closing tunnels, and the graceful shutdown (stop accepting, drain visitors, tell
//! clients and control). It starts nothing: `run` builds it and starts the listeners and
//! tasks, which all take an `Arc<Edge>`.

use crate::config::Config;
use crate::control::client::ControlClient;
use crate::io::closing_channel::ClosingChannel;
use crate::io::proxy_header;
use crate::io::receive_window::{WindowBudget, WindowLimits};
use crate::io::write_stall::WriteStall;
use crate::mesh::credits::CreditLimits;
use crate::mesh::Mesh;
use crate::metrics::Metrics;
use crate::ssh::link::{lock, SessionLink};
use crate::tunnels::{ChannelOpenError, Registry, Tunnel};
use crate::visitor::auth_throttle::AuthThrottle;
use crate::visitor::certificates::Certificates;
use crate::visitor::shares::{visitor_network, Share, Shares};
use anyhow::{Context, Result};
use nearhop_wire::{CloseTunnelRequest, LeavingStage};
use prometheus::IntGauge;
use russh::keys::PrivateKey;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncRead;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// A visitor connection's place among `max_visitor_connections`; the connection counts as
/// active (`nearhop_edge_visitor_connections_active`, which the drain waits on) until it is
/// dropped.
pub struct VisitorSlot {
    _permit: OwnedSemaphorePermit,
    active: IntGauge,
}

impl Drop for VisitorSlot {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// A place among the SSH connections not yet authenticated, given back on drop.
pub struct UnauthenticatedSlot {
    _permit: OwnedSemaphorePermit,
    _share: Share<u128>,
}

/// State shared by every part of the edge.
pub struct Edge {
    /// The configuration.
    pub config: Config,
    /// Live tunnels.
    pub registry: Registry,
    /// Client for control.
    pub control: ControlClient,
    /// Metrics.
    pub metrics: Metrics,
    /// Cancelled when the edge starts shutting down.
    pub shutdown: CancellationToken,
    /// Visitor connection slots (`max_visitor_connections`).
    pub visitor_slots: Arc<Semaphore>,
    /// The certificates HTTPS serves (the operator's files, and those control obtained by
    /// ACME, swapped in as they change).
    pub certificates: Arc<Certificates>,
    /// The HTTPS server configuration; its certificate is chosen per handshake.
    pub https: Arc<rustls::ServerConfig>,
    /// The other edges, and which of them holds which tunnel.
    pub mesh: Arc<Mesh>,
    /// How far the receive windows of visitor channels grow (`ssh_window_bytes`), out of
    /// `tunnel_window_budget_bytes`.
    pub tunnel_windows: WindowLimits,
    /// The key control must present on the admin API; made at start, given to control only
    /// (in the registration).
    pub admin_key: String,
    /// Wrong visitor credentials per tunnel and visitor network.
    pub auth_throttle: AuthThrottle,
    /// Visitor connections held per visitor network.
    address_shares: Arc<Shares<u128>>,
    /// Visitor connections (channels) held per tunnel.
    tunnel_shares: Arc<Shares<i64>>,
    /// SSH connections not yet authenticated, edge-wide.
    unauthenticated_ssh: Arc<Semaphore>,
    /// SSH connections not yet authenticated, per client network.
    unauthenticated_ssh_shares: Arc<Shares<u128>>,
    sessions: Mutex<HashMap<u64, Arc<SessionLink>>>,
    next_session: AtomicU64,
}

impl Edge {
    /// An edge for unit tests, of `config` with `edge_secret` set, whose mesh key comes from
    /// `seed`; nothing listens.
    #[cfg(test)]
    pub fn for_tests(config: Config, seed: u8) -> Edge {
        let config = Config {
            edge_secret: "s".into(),
            ..config
        };
        let key = PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(
            &[seed; 32],
        ));
        Edge::new(config, Arc::new(key)).expect("edge")
    }

    /// Builds the shared state; `mesh_key` is the edge's identity towards its peers.
    pub fn new(config: Config, mesh_key: Arc<PrivateKey>) -> Result<Edge> {
        let control = ControlClient::new(
            &config.control_url,
            config.control_bearer(),
            Duration::from_millis(config.control_timeout_ms),
        )?;
        let certificates = Arc::new(Certificates::new(
            config
                .tls_cert_path
                .as_deref()
                .zip(config.tls_key_path.as_deref()),
        )?);
        if let Some(path) = &config.certificates_cache_path {
            match crate::visitor::certificates::load_cache(path) {
                Ok(Some(set)) => {
                    let got = certificates.install(&set);
                    tracing::info!(certificates = got.count, generation = set.generation, path = %path.display(), "serving the ACME certificates kept by the last run until control answers");
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "the certificates cache is not used")
                }
            }
        }
        let https = crate::visitor::https::server_config(certificates.clone())?;
        let shutdown = CancellationToken::new();
        let metrics = Metrics::new().context("creating metrics")?;
        let mesh = Arc::new(Mesh::new(
            &config,
            mesh_key,
            metrics.mesh_link_up.clone(),
            metrics.mesh_claims_refused_total.clone(),
            metrics.mesh_claims_taken_late_total.clone(),
            CreditLimits::new(
                WindowLimits::new(
                    config.ssh_window_bytes,
                    WindowBudget::with_shares(
                        config.relay_window_budget_bytes,
                        metrics.relay_window_grown_bytes.clone(),
                        metrics.relay_window_growth_refused_total.clone(),
                        metrics.relay_window_share_limited_total.clone(),
                    ),
                )
                .showing_unread(metrics.relay_window_unread_bytes.clone()),
                metrics
                    .relay_errors_total
                    .with_label_values(&["credit_exceeded"]),
            ),
        ));
        let tunnel_windows = WindowLimits::opening_small(
            config.ssh_window_bytes,
            WindowBudget::with_shares(
                config.tunnel_window_budget_bytes,
                metrics.tunnel_window_grown_bytes.clone(),
                metrics.tunnel_window_growth_refused_total.clone(),
                metrics.tunnel_window_share_limited_total.clone(),
            ),
            metrics.tunnel_window_unread_bytes.clone(),
        );
        Ok(Edge {
            mesh,
            tunnel_windows,
            admin_key: random_key()?,
            auth_throttle: AuthThrottle::new(config.visitor_auth_failures_per_minute),
            address_shares: Shares::new(config.max_visitor_connections_per_address),
            tunnel_shares: Shares::new(config.max_visitor_connections_per_tunnel),
            unauthenticated_ssh: Arc::new(Semaphore::new(config.max_unauthenticated_ssh.max(1))),
            unauthenticated_ssh_shares: Shares::new(config.max_unauthenticated_ssh_per_address),
            visitor_slots: Arc::new(Semaphore::new(config.max_visitor_connections)),
            certificates,
            https,
            config,
            registry: Registry::default(),
            control,
            metrics,
            shutdown,
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
        })
    }

    /// Waits (up to `bound`) until every peer following this edge's holdings feed has read
    /// every change made so far; false when one did not answer in time.
    pub async fn peers_caught_up(&self, bound: Duration) -> bool {
        let (marker, feeds) = self.mesh.acks.new_marker();
        if feeds.is_empty() {
            return true;
        }
        self.registry.mark(marker);
        let until = tokio::time::Instant::now() + bound;
        self.mesh.acks.wait(marker, &feeds, until).await
    }

    /// A slot for a visitor connection accepted on `listener` (`http`, `tls`, `tcp`), counted
    /// in the visitor metrics while it is held; `None` (counted as refused) when all
    /// `max_visitor_connections` are taken.
    pub fn visitor_slot(&self, listener: &str) -> Option<VisitorSlot> {
        let Ok(permit) = self.visitor_slots.clone().try_acquire_owned() else {
            self.metrics.visitor_connections_refused_total.inc();
            return None;
        };
        let m = &self.metrics;
        m.visitor_connections_total
            .with_label_values(&[listener])
            .inc();
        m.visitor_connections_active.inc();
        Some(VisitorSlot {
            _permit: permit,
            active: m.visitor_connections_active.clone(),
        })
    }

    /// A hold on the visitor network's share of connections (`max_visitor_connections_per_
    /// address`); `None` (counted): the network holds its whole share already.
    pub fn address_share(&self, visitor: std::net::IpAddr) -> Option<Share<u128>> {
        let share = self.address_shares.take(visitor_network(visitor));
        if share.is_none() {
            self.metrics
                .visitor_share_refused_total
                .with_label_values(&["address"])
                .inc();
        }
        share
    }

    /// Opens a visitor channel to `tunnel`'s client for the visitor at `visitor`, bounded by
    /// `visitor_open_timeout_seconds` (a timeout counted, and a refusal).
    pub async fn open_visitor_channel(
        &self,
        tunnel: &Tunnel,
        visitor: std::net::SocketAddr,
    ) -> Result<ClosingChannel, ChannelOpenError> {
        let bound = self.config.visitor_open_timeout_seconds;
        let within = (bound > 0).then(|| Duration::from_secs(bound));
        let max = self.config.max_channels_per_client.max(1);
        let opened = tunnel
            .open_channel(
                visitor,
                within,
                max,
                &self.tunnel_windows.for_tunnel(tunnel.window_held.clone()),
            )
            .await;
        match opened {
            Err(ChannelOpenError::NotAnswering(_)) => {
                self.metrics.visitor_open_timeouts_total.inc()
            }
            Err(ChannelOpenError::Refused(_)) => self.metrics.visitor_channels_refused_total.inc(),
            Err(ChannelOpenError::ClientFull) => self
                .metrics
                .visitor_share_refused_total
                .with_label_values(&["client_channels"])
                .inc(),
            _ => {}
        }
        opened
    }

    /// A hold on the tunnel's share of visitor connections
    /// (`max_visitor_connections_per_tunnel`); `None` (counted): it holds its whole share.
    pub fn tunnel_share(&self, tunnel: &Tunnel) -> Option<Share<i64>> {
        let share = self.tunnel_shares.take(tunnel.id);
        if share.is_none() {
            self.metrics
                .visitor_share_refused_total
                .with_label_values(&["tunnel"])
                .inc();
        }
        share
    }

    /// A place among the SSH connections not yet authenticated, edge-wide and for the
    /// client's network; `None` (counted by `scope`): full.
    pub fn unauthenticated_ssh_slot(
        &self,
        client: std::net::IpAddr,
    ) -> Option<UnauthenticatedSlot> {
        let refused = |scope: &str| {
            self.metrics
                .ssh_unauthenticated_refused_total
                .with_label_values(&[scope])
                .inc();
            None
        };
        let Some(share) = self
            .unauthenticated_ssh_shares
            .take(visitor_network(client))
        else {
            return refused("address");
        };
        let Ok(permit) = self.unauthenticated_ssh.clone().try_acquire_owned() else {
            return refused("edge");
        };
        Some(UnauthenticatedSlot {
            _permit: permit,
            _share: share,
        })
    }

    /// `stream`, a visitor's, with its writes bounded by `visitor_write_stall_seconds`.
    pub fn guard_visitor_writes<S>(&self, stream: S) -> WriteStall<S> {
        let limit = self.config.visitor_write_stall_seconds;
        let limit = (limit > 0).then(|| Duration::from_secs(limit));
        WriteStall::new(
            stream,
            limit,
            self.metrics.visitor_write_stalls_total.clone(),
        )
    }

    /// Readies an accepted visitor socket: no Nagle delay, and TCP keepalive so that a
    /// visitor that vanished without a word does not hold its connection for ever.
    pub fn prepare_visitor_socket(&self, stream: &tokio::net::TcpStream) {
        let _ = stream.set_nodelay(true);
        let idle = self.config.visitor_tcp_keepalive_seconds;
        if idle > 0 {
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(idle))
                .with_interval(Duration::from_secs(idle.div_ceil(6).max(1)));
            if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
                tracing::debug!(error = %e, "setting TCP keepalive on a visitor socket");
            }
        }
    }

    /// The address a connection accepted from `tcp_peer` on `listener` (`http`, `tls`,
    /// `tcp`, `ssh`) stands for, and the bytes read past a balancer's PROXY header, to be
    /// read first: see [`proxy_header::real_peer`]. `None`: drop the connection.
    pub async fn real_peer<R: AsyncRead + Unpin>(
        &self,
        listener: &'static str,
        stream: &mut R,
        tcp_peer: std::net::SocketAddr,
    ) -> Option<(std::net::SocketAddr, Vec<u8>)> {
        let (config, m, stop) = (&self.config, &self.metrics, &self.shutdown);
        proxy_header::real_peer(config, m, stop, listener, stream, tcp_peer).await
    }

    /// Registers a new SSH session.
    pub fn open_session(&self, peer: std::net::SocketAddr) -> Arc<SessionLink> {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let link = Arc::new(SessionLink::new(id, peer));
        link.closes.count_in(self.metrics.close_counters());
        lock(&self.sessions).insert(id, link.clone());
        self.metrics.ssh_sessions_active.inc();
        link
    }

    /// Forgets an ended SSH session and closes its tunnels.
    pub async fn end_session(&self, link: &SessionLink, reason: &str) {
        link.mark_ended();
        if lock(&self.sessions).remove(&link.id).is_some() {
            self.metrics.ssh_sessions_active.dec();
        }
        self.close_tunnels_of(link.id, reason).await;
    }

    /// Closes every live tunnel of one session (control is told, the client is not).
    pub async fn close_tunnels_of(&self, session_id: u64, reason: &str) {
        for tunnel in self.tunnels_of(session_id) {
            self.close_tunnel(&tunnel, reason, None, true).await;
        }
    }

    /// Live tunnels of one session.
    pub fn tunnels_of(&self, session_id: u64) -> Vec<Arc<Tunnel>> {
        self.registry
            .all()
            .into_iter()
            .filter(|t| t.session.id == session_id)
            .collect()
    }

    /// Closes a tunnel on this edge: stops routing to it, tells its client `message` (and
    /// disconnects the client when it has no tunnel left), and tells control unless control
    /// asked for the close.
    pub async fn close_tunnel(
        &self,
        tunnel: &Arc<Tunnel>,
        reason: &str,
        message: Option<&str>,
        tell_control: bool,
    ) {
        // Before routing stops (closed tunnels are not routed to), so that a visitor routed
        // in between waits for the client to come back instead of getting "No tunnel here".
        self.mesh.holders.note_gone(&tunnel.hostname);
        if !tunnel.mark_closed() {
            return;
        }
        self.registry.remove(tunnel);
        self.metrics
            .tunnels_active
            .with_label_values(&[&tunnel.zone, tunnel.kind.as_str()])
            .dec();
        self.metrics
            .tunnels_closed_total
            .with_label_values(&[reason])
            .inc();
        tracing::info!(tunnel = tunnel.id, host = %tunnel.hostname, reason, "tunnel closed");
        if tell_control {
            let control = self.control.clone();
            let req = CloseTunnelRequest {
                edge_id: self.config.edge_id.clone(),
                reason: nearhop_wire::CloseReason::parse(reason),
            };
            let id = tunnel.id;
            let errors = self
                .metrics
                .control_errors_total
                .with_label_values(&["close_tunnel"]);
            tokio::spawn(async move {
                if let Err(e) = control.close_tunnel(id, &req).await {
                    errors.inc();
                    // The lease lapses on its own; control will also learn from the next
                    // heartbeat that this tunnel is gone.
                    tracing::warn!(tunnel = id, error = %e, "telling control about a close");
                }
            });
        }
        if let Some(message) = message {
            let session = &tunnel.session;
            session
                .say(true, &format!("{} is closed: {message}", tunnel.hostname))
                .await;
            if self.tunnels_of(session.id).is_empty() {
                session.disconnect(message).await;
            }
        }
    }

    fn sessions(&self) -> Vec<Arc<SessionLink>> {
        lock(&self.sessions).values().cloned().collect()
    }
}

/// Stops accepting and lets visitor connections finish (bounded by `drain_seconds`). Each
/// client session goes as soon as none of its visitors is in flight: its tunnels are closed
/// (control is told) and the client is disconnected, so that it reconnects elsewhere while
/// the other sessions drain. What is left when the drain ends is closed then.
pub async fn shutdown(edge: &Arc<Edge>) {
    tracing::info!("shutting down: no new SSH sessions or visitors");
    edge.shutdown.cancel();
    // The region's connect name stops sending reconnecting clients here (a drain playbook
    // marked it already; a plain SIGTERM did not).
    let marked = tokio::spawn(tell_control(edge.clone(), LeavingStage::Draining));
    let message = "This nearhop edge is shutting down for maintenance. Reconnect to get your tunnel back (a loop such as `while true; do ssh ...; sleep 1; done` does it for you).";
    for session in edge.sessions() {
        session.say(true, message).await;
    }
    let deadline = Instant::now() + Duration::from_secs(edge.config.drain_seconds);
    let releases: Vec<_> = edge
        .sessions()
        .into_iter()
        .map(|session| {
            let edge = edge.clone();
            tokio::spawn(async move {
                let unused = session.closes.wait_unused();
                if tokio::time::timeout_at(deadline.into(), unused)
                    .await
                    .is_ok()
                {
                    release(&edge, &session, message).await;
                }
            })
        })
        .collect();
    while edge.metrics.visitor_connections_active.get() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for release in releases {
        let _ = release.await;
    }
    // Visitors this edge relays to peers drained over the links: only now do they close.
    edge.mesh.shutdown.cancel();
    let closes = edge.registry.all();
    let close_all = async {
        for tunnel in &closes {
            edge.close_tunnel(tunnel, "edge_shutdown", None, true).await;
        }
    };
    close_all.await;
    for session in edge.sessions() {
        session.disconnect(message).await;
    }
    // Peers and the region's health forget this edge now, not 3 heartbeats from now.
    let _ = marked.await;
    tell_control(edge.clone(), LeavingStage::Stopped).await;
    // Let the disconnect packets and close calls leave before the runtime stops.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tracing::info!("edge stopped");
}

/// Tells control how far this edge's stop has gone (at most a few seconds: control may be
/// down, and the stop goes on without it).
async fn tell_control(edge: Arc<Edge>, stage: LeavingStage) {
    let call = edge.control.leaving(&edge.config.edge_id, stage);
    match tokio::time::timeout(Duration::from_secs(3), call).await {
        Ok(Ok(())) => tracing::info!(?stage, "control knows this edge is leaving"),
        Ok(Err(e)) => tracing::warn!(?stage, error = %e, "telling control this edge is leaving failed; peers drop it after 3 heartbeats"),
        Err(_) => tracing::warn!(?stage, "control did not answer in time that this edge is leaving; peers drop it after 3 heartbeats"),
    }
}

/// Lets one client session go during a drain: its tunnels closed, then the client told and
/// disconnected.
async fn release(edge: &Arc<Edge>, session: &Arc<SessionLink>, message: &str) {
    let tunnels = edge.tunnels_of(session.id);
    for tunnel in &tunnels {
        edge.close_tunnel(tunnel, "edge_shutdown", None, true).await;
    }
    tracing::info!(
        session = session.id,
        tunnels = tunnels.len(),
        "no visitor in flight: session let go during the drain"
    );
    session.disconnect(message).await;
}

/// A fresh random key (hex of 32 random bytes).
fn random_key() -> Result<String> {
    let mut bytes = [0u8; 32];
    rand::RngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut bytes)
        .context("reading randomness for the admin key")?;
    Ok(hex::encode(bytes))
}
