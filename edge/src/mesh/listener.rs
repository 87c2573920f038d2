//! The mesh listener: peer edges connect here over SSH. A peer authenticates as its edge id
//! with the host key control registered for it (nothing else is accepted), then either
//! follows this edge's holdings feed or opens relay channels, each one visitor connection
//! that this edge serves as if the visitor had come to it directly. A relayed connection is
//! never relayed again: a name this edge does not hold gets "No tunnel here".

use super::credits::{CreditedChannel, FirstCredit, LinkCredits};
use super::protocol::{
    take_answers, Answer, Credit, HoldingChange, RelayListener, HOLDINGS_COMMAND,
    HOLDINGS_COMMAND_V2, HOLDINGS_COMMAND_V3, HOLDINGS_COMMAND_V4, MAX_LINE,
};
use crate::edge::Edge;
use crate::io::channel_writes::ChannelWrites;
use crate::io::closing_channel::{ClosingChannel, PeerCloses};
use crate::io::counting::CountingStream;
use crate::io::read_buffer::AdaptiveReader;
use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelMsg, ChannelOpenFailure, MethodKind, MethodSet};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::Instrument;

/// The russh server configuration of the mesh listener: the ciphers the links dial with
/// (`ssh_ciphers`) first, then every other one the edge supports, so that a peer dialling
/// with other settings (an edge mid-way through a change of `ssh_ciphers`, or one from
/// before the listener offered them) still links; the dialling side's order decides.
pub fn russh_config(edge: &Edge) -> russh::server::Config {
    let c = &edge.config;
    russh::server::Config {
        server_id: russh::SshId::Standard("SSH-2.0-nearhop-mesh".into()),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        keys: vec![(*edge.mesh.key).clone()],
        window_size: c.ssh_window_bytes,
        maximum_packet_size: c.ssh_max_packet_bytes,
        channel_buffer_size: c.ssh_channel_buffer,
        inactivity_timeout: None,
        keepalive_interval: Some(std::time::Duration::from_secs(
            c.keepalive_interval_seconds.max(1),
        )),
        keepalive_max: c.keepalive_max,
        nodelay: true,
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Owned(listener_ciphers(&c.ssh_ciphers)),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// `ssh_ciphers`, then the other ciphers the edge supports.
fn listener_ciphers(preferred: &[russh::cipher::Name]) -> Vec<russh::cipher::Name> {
    let mut ciphers = preferred.to_vec();
    for c in crate::config::SUPPORTED_CIPHERS {
        if !ciphers.contains(c) {
            ciphers.push(*c);
        }
    }
    ciphers
}

/// Most mesh connections not yet authenticated at once. Peers are few and each keeps one
/// link, so this is far above what the mesh needs, and low enough that connections which
/// never authenticate cannot hold this edge's file descriptors.
pub const MAX_UNAUTHENTICATED: usize = 64;

/// Accepts peer edges until shutdown. A connection must authenticate within
/// `ssh_auth_deadline_seconds` (as on the client SSH listener), and at most
/// [`MAX_UNAUTHENTICATED`] may be trying at once; others are closed at once.
pub async fn serve(edge: Arc<Edge>, listener: TcpListener) {
    let config = Arc::new(russh_config(&edge));
    let unauthenticated = Arc::new(tokio::sync::Semaphore::new(MAX_UNAUTHENTICATED));
    crate::io::accept::until_stopped(
        &listener,
        edge.shutdown.cancelled(),
        "a mesh connection",
        |stream, peer| {
            let Ok(place) = unauthenticated.clone().try_acquire_owned() else {
                count_refusal(&edge, "mesh_unauthenticated_full");
                tracing::debug!(%peer, "mesh connection refused: too many not yet authenticated");
                return;
            };
            let edge = edge.clone();
            let config = config.clone();
            let span = tracing::info_span!("mesh", %peer);
            tokio::spawn(
                async move {
                    let _ = stream.set_nodelay(true);
                    // russh runs the session in a task of its own, which dropping ours does
                    // not stop: at the deadline the socket itself is shut, through a second
                    // handle to it, and the session ends on it.
                    let cut = match crate::io::cut_off::second_handle(&stream) {
                        Ok(cut) => cut,
                        Err(e) => {
                            tracing::warn!(error = %e, "mesh connection dropped: its socket could not be duplicated");
                            return;
                        }
                    };
                    let closes = Arc::new(PeerCloses::default());
                    closes.count_in(edge.metrics.close_counters());
                    let authenticated = Arc::new(tokio::sync::Notify::new());
                    let handler = PeerSession {
                        edge: edge.clone(),
                        peer_id: None,
                        authenticated: authenticated.clone(),
                        sessions: HashMap::new(),
                        feeding: false,
                        credits: None,
                        closes,
                    };
                    // One `recv` for many packets, as on the client sessions.
                    let stream = AdaptiveReader::new(stream);
                    let session = async move {
                        match russh::server::run_stream(config, stream, handler).await {
                            Ok(running) => {
                                if let Err(e) = running.await {
                                    tracing::debug!(error = %e, "mesh connection ended");
                                }
                            }
                            Err(e) => tracing::debug!(error = %e, "mesh handshake failed"),
                        }
                    };
                    tokio::pin!(session);
                    let deadline =
                        Duration::from_secs(edge.config.ssh_auth_deadline_seconds.max(1));
                    tokio::select! {
                        _ = &mut session => return,
                        authed = tokio::time::timeout(deadline, authenticated.notified()) => {
                            if authed.is_err() {
                                // Counted before the socket is shut: whoever sees the
                                // close may read the metric at once.
                                count_refusal(&edge, "mesh_auth_timeout");
                                let _ = cut.shutdown(std::net::Shutdown::Both);
                                tracing::debug!(
                                    "mesh connection closed: not authenticated within {deadline:?}"
                                );
                                return;
                            }
                        }
                    }
                    drop((place, cut));
                    session.await;
                }
                .instrument(span),
            );
        },
    )
    .await;
}

/// Counts a mesh connection or channel refused, by `cause`.
fn count_refusal(edge: &Edge, cause: &str) {
    edge.metrics
        .relay_errors_total
        .with_label_values(&[cause])
        .inc();
}

/// One peer edge's connection to this edge.
struct PeerSession {
    edge: Arc<Edge>,
    /// The peer's edge id, once authenticated.
    peer_id: Option<String>,
    /// Told when the peer has authenticated (the connection's deadline stops).
    authenticated: Arc<tokio::sync::Notify>,
    /// Session channels waiting for their command.
    sessions: HashMap<ChannelId, Channel<Msg>>,
    /// Whether this connection already follows the holdings feed (one feed per link).
    feeding: bool,
    /// The credit of the peer's relay channels, both ways, when its feed grants credit
    /// ([`HOLDINGS_COMMAND_V2`]).
    credits: Option<Arc<LinkCredits>>,
    /// Relay channels this edge is done with, waiting for the peer to close them.
    closes: Arc<PeerCloses>,
}

impl Drop for PeerSession {
    fn drop(&mut self) {
        self.closes.session_ended();
    }
}

impl russh::server::Handler for PeerSession {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.check_peer(user, offer.public_key).await)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let answer = self.check_peer(user, key.public_key).await;
        if matches!(answer, Auth::Accept) {
            tracing::info!(peer_edge = user, "peer edge connected");
            self.peer_id = Some(user.to_string());
            self.authenticated.notify_one();
        }
        Ok(answer)
    }

    /// A peer that leaves the mesh (its credential revoked, or it stopped heartbeating) is
    /// cut off here too, not only on this edge's outbound link: control's list is the only
    /// source of trust.
    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        let Some(link) = self
            .peer_id
            .as_deref()
            .and_then(|id| self.edge.mesh.peer(id))
        else {
            // It left control's list between its key's check and now.
            session.disconnect(
                russh::Disconnect::ByApplication,
                "this edge is no longer in the mesh",
                "en",
            )?;
            return Ok(());
        };
        let handle = session.handle();
        let left = link.stop.clone();
        tokio::spawn(async move {
            left.cancelled().await;
            let _ = handle
                .disconnect(
                    russh::Disconnect::ByApplication,
                    "this edge is no longer in the mesh".into(),
                    "en".into(),
                )
                .await;
        });
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.peer_id.is_none() {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        self.sessions.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(chan) = self.sessions.remove(&channel) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        // One feed per connection: a second would double every line and every marker to
        // answer (a feed that never answers holds each new tunnel's URL for its full wait).
        let opens_small = data == HOLDINGS_COMMAND_V4.as_bytes();
        let with_proofs = opens_small || data == HOLDINGS_COMMAND_V3.as_bytes();
        let grants_credit = with_proofs || data == HOLDINGS_COMMAND_V2.as_bytes();
        if !(grants_credit || data == HOLDINGS_COMMAND.as_bytes()) || self.feeding {
            session.channel_failure(channel)?;
            return Ok(());
        }
        self.feeding = true;
        session.channel_success(channel)?;
        let mut grants = None;
        if grants_credit {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            // On `v4` this edge's windows (uploads) open small and grow when needed.
            let opening = if opens_small {
                FirstCredit::Small { raised: false }
            } else {
                FirstCredit::Full
            };
            let credits = LinkCredits::new(tx, self.edge.mesh.credit_limits.clone(), opening);
            self.credits = Some(credits);
            grants = Some(rx);
        }
        let edge = self.edge.clone();
        let credits = self.credits.clone();
        let handle = session.handle();
        let feed = feed_holdings(edge, chan, with_proofs, credits, grants, handle);
        tokio::spawn(feed.in_current_span());
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // A relay channel this edge may be waiting to see closed (io::closing_channel), or
        // a session channel closed before its command.
        self.closes.closed_by_peer(channel);
        self.sessions.remove(&channel);
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(peer_id) = self.peer_id.clone() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        if self.edge.shutdown.is_cancelled() {
            // Draining: its feed told the peer to forget this edge's names; a relay that
            // crossed that is refused, and the peer waits for the tunnel elsewhere.
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        }
        let listener = RelayListener::from_channel_target(host_to_connect);
        let visitor = originator_address
            .parse::<IpAddr>()
            .ok()
            .zip(u16::try_from(originator_port).ok())
            .map(|(ip, port)| SocketAddr::new(ip, port));
        let (Some(listener), Some(visitor)) = (listener, visitor) else {
            count_refusal(&self.edge, "bad_relay_request");
            reply.reject(ChannelOpenFailure::UnknownChannelType).await;
            return Ok(());
        };
        // A peer that grants credit numbers its relay channels (0: this one goes without).
        let credit = match (&self.credits, port_to_connect) {
            (Some(credits), id) if id != 0 => match credits.windows.open(id) {
                Some(window) => Some((id, credits.clone(), window)),
                None => {
                    count_refusal(&self.edge, "bad_relay_request");
                    reply.reject(ChannelOpenFailure::ConnectFailed).await;
                    return Ok(());
                }
            },
            _ => None,
        };
        let Some(slot) = self.edge.visitor_slot(listener.as_str()) else {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        };
        reply.accept().await;
        let (edge, closes) = (self.edge.clone(), self.closes.clone());
        let span = tracing::info_span!("relayed", from_edge = %peer_id, %visitor, listener = listener.as_str());
        tokio::spawn(
            async move {
                edge.metrics
                    .relay_connections_total
                    .with_label_values(&[&peer_id, "in"])
                    .inc();
                match credit {
                    Some((id, credits, window)) => {
                        let channel_id = channel.id();
                        let (read, write) = channel.split();
                        let credited = CreditedChannel::new(id, read, write, credits, window, None);
                        let stream = ClosingChannel::around(credited, channel_id, closes);
                        serve_channel(&edge, stream, &peer_id, listener, visitor).await;
                    }
                    None => {
                        let stream = ClosingChannel::new(channel, closes);
                        serve_channel(&edge, stream, &peer_id, listener, visitor).await;
                    }
                }
                drop(slot);
            }
            .instrument(span),
        );
        Ok(())
    }
}

/// Serves a relay channel's `stream` from `peer_id` as a visitor from `visitor` who came
/// in on `listener` at that peer.
async fn serve_channel<S>(
    edge: &Arc<Edge>,
    stream: S,
    peer_id: &str,
    listener: RelayListener,
    visitor: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let m = &edge.metrics;
    let stream = CountingStream::new(
        ChannelWrites::new(stream),
        m.relay_bytes_total
            .with_label_values(&[peer_id, "in", "received"]),
        m.relay_bytes_total
            .with_label_values(&[peer_id, "in", "sent"]),
    );
    crate::visitor::serve_relayed(edge, stream, listener, visitor).await;
}

impl PeerSession {
    /// Accepts `user` only with the host key control registered for that edge; counts and
    /// logs a refusal: a listed edge with another key (`peer_not_trusted`: a forged
    /// identity) apart from an id not in the peer list (`peer_not_listed`: scanners, a
    /// revoked edge).
    ///
    /// Before refusing a well-formed edge id, it asks control for the peer list
    /// ([`crate::control::sync::ask_for_peers`]): an edge that registered, or registered a
    /// new key, since this edge's last heartbeat (every edge that starts) is accepted at
    /// once, not refused until that heartbeat. When control cannot be asked, the list as it
    /// stands decides.
    async fn check_peer(&self, user: &str, key: &russh::keys::PublicKey) -> Auth {
        if self.edge.mesh.trusts(user, key) {
            return Auth::Accept;
        }
        if nearhop_wire::names::valid_edge_id(user) {
            let mesh = &self.edge.mesh;
            crate::control::sync::ask_for_peers(&self.edge, || mesh.trusts(user, key)).await;
            if self.edge.mesh.trusts(user, key) {
                return Auth::Accept;
            }
        }
        let listed = self.edge.mesh.peer(user).is_some();
        let cause = if listed {
            "peer_not_trusted"
        } else {
            "peer_not_listed"
        };
        self.edge
            .metrics
            .relay_errors_total
            .with_label_values(&[cause])
            .inc();
        if listed {
            tracing::warn!(
                claimed = user,
                "refused a mesh connection: its key is not the mesh key control registered for that edge (a forged identity; or a new key, when control could not be asked)"
            );
        } else {
            tracing::info!(
                claimed = user,
                "refused a mesh connection: that edge id is not in this edge's peer list (control does not list it: no live credential, or not registered; or control could not be asked, and the next heartbeat takes the list again)"
            );
        }
        Auth::reject()
    }
}

/// Writes this edge's holdings to a peer: every name held now, then each change, until the
/// peer goes away or the edge stops; and this edge's grants of credit to the relay channels.
/// The peer's answers (to markers, and its grants) are read by a task of their own, so that
/// a write waiting on the connection never leaves them unread: russh would then stop
/// reading the whole connection. When a feed with credit ends on a connection that lives
/// on, the connection is closed: its relay channels would wait for credit that no longer
/// comes. From `v3` on (`with_proofs`) each name goes with control's proof.
async fn feed_holdings(
    edge: Arc<Edge>,
    channel: Channel<Msg>,
    with_proofs: bool,
    credits: Option<Arc<LinkCredits>>,
    mut grants: Option<UnboundedReceiver<Credit>>,
    session: russh::server::Handle,
) {
    let (read, write) = channel.split();
    let mut out = write.make_writer();
    // Subscribe before the snapshot so that no change between the two is lost; a change
    // seen twice is harmless (adds and removes are idempotent). Register for markers after
    // subscribing, so that every marker this feed must answer reaches it.
    let mut changes = edge.registry.subscribe();
    let acks = &edge.mesh.acks;
    let feed = acks.open_feed();
    let mut answers = tokio::spawn(read_answers(read, edge.clone(), feed, credits.clone()));
    // Until the edge stops. Then the peer is told to forget every name this edge holds
    // (its relays of new visitors would be refused: see `channel_open_direct_tcpip`; they
    // wait for the clients to reconnect elsewhere instead), no more changes go out, and
    // grants of credit still pass both ways for as long as the connection lasts: until the
    // drain ends (`Mesh::shutdown`), so relayed visitors in flight finish.
    let mut following = true;
    // A write waits for the channel's SSH window, which never comes from a peer gone
    // silent: each write also ends when the answers do (the session dropped the channel).
    let first = snapshot(&edge, false, with_proofs);
    let started = tokio::select! {
        r = out.write_all(first.as_bytes()) => r.is_ok(),
        _ = &mut answers => false,
    };
    if started {
        loop {
            let text = tokio::select! {
                c = changes.recv(), if following => match c {
                    Ok(c) => c.line(with_proofs),
                    // Too many changes at once for this peer: start it over from a snapshot
                    // (which also covers every marker made so far).
                    Err(RecvError::Lagged(_)) => snapshot(&edge, true, with_proofs),
                    Err(RecvError::Closed) => break,
                },
                Some(said) = next_grant(&mut grants) => {
                    let mut text = said.line();
                    // Those waiting too, in one write.
                    while let Some(Ok(said)) = grants.as_mut().map(|g| g.try_recv()) {
                        text.push_str(&said.line());
                        if text.len() > 4096 {
                            break;
                        }
                    }
                    text
                }
                // The peer closed the feed, or answered outside the protocol.
                _ = &mut answers => break,
                _ = edge.shutdown.cancelled(), if following => {
                    following = false;
                    HoldingChange::Reset.to_string()
                }
            };
            let written = tokio::select! {
                r = out.write_all(text.as_bytes()) => r.is_ok(),
                _ = &mut answers => false,
            };
            if !written {
                break;
            }
        }
    }
    answers.abort();
    acks.close_feed(feed);
    if credits.is_some() {
        let _ = session
            .disconnect(
                russh::Disconnect::ByApplication,
                "the holdings feed ended".into(),
                "en".into(),
            )
            .await;
    }
}

/// Reads the peer's answers on the feed until it closes it (or sends more than a line
/// without an end): markers it applied, and its grants of credit.
async fn read_answers(
    mut read: russh::ChannelReadHalf,
    edge: Arc<Edge>,
    feed: u64,
    credits: Option<Arc<LinkCredits>>,
) {
    let mut answers = String::new();
    while let Some(msg) = read.wait().await {
        let ChannelMsg::Data { data } = msg else {
            continue;
        };
        answers.push_str(&String::from_utf8_lossy(&data));
        for answer in take_answers(&mut answers) {
            match (answer, &credits) {
                (Answer::Ack(marker), _) => edge.mesh.acks.ack(feed, marker),
                (Answer::Credit(said), Some(c)) => c.take(said),
                (Answer::Credit(..), None) => {}
            }
        }
        if answers.len() > MAX_LINE {
            return;
        }
    }
}

/// The next grant of credit to write to the peer; never, on a feed without credit.
async fn next_grant(grants: &mut Option<UnboundedReceiver<Credit>>) -> Option<Credit> {
    match grants {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Every name this edge holds, as feed lines (after a `!reset` and followed by the latest
/// marker when `again`), with proofs when `with_proofs`.
fn snapshot(edge: &Edge, again: bool, with_proofs: bool) -> String {
    let mut text = String::new();
    if again {
        text.push_str(&HoldingChange::Reset.to_string());
    }
    for held in edge.registry.holdings() {
        text.push_str(&held.line(with_proofs));
    }
    if again {
        text.push_str(&HoldingChange::Sync(edge.mesh.acks.latest()).to_string());
    }
    text
}

#[cfg(test)]
mod tests {
    use russh::cipher::{AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305};

    /// A peer dialling with other ciphers than this edge's `ssh_ciphers` still finds one in
    /// common: the listener offers this edge's first, then every other it supports.
    #[test]
    fn the_listener_offers_the_edges_ciphers_first_then_the_others() {
        let offered = super::listener_ciphers(&[CHACHA20_POLY1305]);
        assert_eq!(offered[0], CHACHA20_POLY1305);
        assert!(offered.contains(&AES_128_GCM) && offered.contains(&AES_256_GCM));
        assert_eq!(offered.len(), crate::config::SUPPORTED_CIPHERS.len());
        let offered = super::listener_ciphers(&[AES_128_GCM, AES_256_GCM]);
        assert_eq!(&offered[..2], &[AES_128_GCM, AES_256_GCM]);
    }
}
