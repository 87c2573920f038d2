//! This edge's outbound connection to one peer edge: it checks the peer's host key against
//! the one control registered, authenticates with this edge's own host key, subscribes to
//! the peer's holdings feed, and opens one channel per relayed visitor connection. It
//! reconnects with backoff until the peer leaves the mesh.

use super::credits::{CreditedChannel, FirstCredit, LinkCredits};
use super::protocol::{
    ack_line, parse_answer, Answer, Credit, HoldingChange, RelayListener, HOLDINGS_COMMAND,
    HOLDINGS_COMMAND_V2, HOLDINGS_COMMAND_V3, HOLDINGS_COMMAND_V4, MAX_LINE,
};
use super::Mesh;
use crate::config::Config;
use crate::io::read_buffer::AdaptiveReader;
use crate::process::log_limit::LogLimit;
use russh::client::{self, Handle};
use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, ChannelStream};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
    ReadBuf,
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// Claims with a bad proof one connection's feed may make at full speed: a genuine edge
/// makes none, a change of control's key aside (the tunnels set up before a switch to a new
/// key without the previous one), and each costs a signature check (~40 µs). Past them,
/// the link waits [`BAD_PROOF_PACE`] after each further one: a peer sending them without
/// end costs about 2 % of a core, and a genuine holder whose snapshot carries more of them
/// stays linked, its good claims taken a little later, rather than cut off at every
/// reconnect. The wait holds up this link's other channels too once the feed's queue is
/// full (russh stops reading the connection): for a genuine holder, ~2 ms per claim past
/// the first 1,024.
const MAX_BAD_PROOFS: usize = 1024;

/// The wait after each claim with a bad proof past [`MAX_BAD_PROOFS`] on one connection.
const BAD_PROOF_PACE: Duration = Duration::from_millis(2);

/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Time a peer has to accept the TCP connection and finish the SSH handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a peer has to confirm a relay channel. A peer whose host stopped answering would
/// otherwise hold each visitor until the link's keepalives give up (about a minute).
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a relay could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// No connection to the peer right now.
    #[error("no connection to peer edge {0}")]
    NotConnected(String),
    /// The peer refused or failed the channel.
    #[error("peer edge {peer} refused the relay channel: {source}")]
    Refused {
        /// The peer.
        peer: String,
        /// What russh said.
        #[source]
        source: russh::Error,
    },
    /// The peer did not confirm the channel within [`OPEN_TIMEOUT`].
    #[error("peer edge {0} did not confirm the relay channel within {OPEN_TIMEOUT:?}")]
    TimedOut(String),
    /// This edge is already opening `relay_openings_per_peer` relay channels on the link.
    #[error(
        "{limit} relay channels to peer edge {peer} are already waiting for its answer \
         (relay_openings_per_peer): the peer is not keeping up, so this visitor was turned \
         away (HTTP: \"Tunnel busy\")"
    )]
    Busy {
        /// The peer.
        peer: String,
        /// `relay_openings_per_peer`.
        limit: usize,
    },
    /// This edge is already opening its share of relay channels on the link for one tunnel.
    #[error(
        "{limit} relay channels for {tunnel} to peer edge {peer} are already waiting for its \
         answer (a quarter of relay_openings_per_peer, the most one tunnel may take): its \
         visitors arrive faster than the peer confirms them, so this visitor was turned away \
         (HTTP: \"Tunnel busy\"); the peer's other tunnels are still relayed"
    )]
    TunnelBusy {
        /// The peer.
        peer: String,
        /// The tunnel's name.
        tunnel: String,
        /// The share: a quarter of `relay_openings_per_peer`, at least 1.
        limit: usize,
    },
}

impl RelayError {
    /// A short cause for the relay error metric.
    pub fn cause(&self) -> &'static str {
        match self {
            RelayError::NotConnected(_) => "peer_unreachable",
            RelayError::Refused { .. } => "channel_refused",
            RelayError::TimedOut(_) => "open_timeout",
            RelayError::Busy { .. } => "peer_busy",
            RelayError::TunnelBusy { .. } => "tunnel_busy",
        }
    }
}

/// One peer edge as this edge reaches it.
pub struct PeerLink {
    /// The peer's edge id.
    pub id: String,
    /// Where its mesh listener is.
    pub addr: String,
    /// Its host key, as registered with control.
    pub host_key: PublicKey,
    handle: RwLock<Option<Connected>>,
    /// Cancelled when the peer leaves the mesh or the edge stops.
    pub stop: CancellationToken,
    /// Relay channels being opened on the link now, and how many may be
    /// (`relay_openings_per_peer`).
    opening: AtomicUsize,
    max_opening: usize,
    /// Of those, the ones for each tunnel (by name), at most a quarter of `max_opening` each:
    /// a flood of one tunnel's visitors, which makes the peer slow to confirm, leaves room
    /// for the visitors of its other tunnels.
    tunnel_opening: Mutex<HashMap<String, usize>>,
    /// Relays to the peer that failed, for the log.
    failures: LogLimit,
}

impl PeerLink {
    /// A link that is not connected yet (see [`PeerLink::run`]), which opens at most
    /// `max_opening` relay channels at once.
    pub fn new(
        id: String,
        addr: String,
        host_key: PublicKey,
        stop: CancellationToken,
        max_opening: usize,
    ) -> PeerLink {
        PeerLink {
            id,
            addr,
            host_key,
            handle: RwLock::new(None),
            stop,
            opening: AtomicUsize::new(0),
            max_opening,
            tunnel_opening: Mutex::new(HashMap::new()),
            failures: LogLimit::new(FAILURE_LOG_INTERVAL),
        }
    }

    /// Opens a channel to the peer for a visitor of `tunnel` (its name) that arrived on
    /// `listener` from `visitor`. A failure is logged here (at most one line per
    /// [`FAILURE_LOG_INTERVAL`] and link); the caller counts it.
    pub async fn open_relay(
        &self,
        listener: RelayListener,
        visitor: SocketAddr,
        tunnel: &str,
    ) -> Result<RelayChannel, RelayError> {
        let opened = self.open_relay_channel(listener, visitor, tunnel).await;
        if let Err(e) = &opened {
            if let Some(more) = self.failures.note(Instant::now()) {
                if more == 0 {
                    tracing::warn!(peer = %self.id, error = %e, "relaying a visitor to the holder edge failed (each failure is counted in nearhop_edge_relay_errors_total)");
                } else {
                    tracing::warn!(peer = %self.id, error = %e, more, "relaying a visitor to the holder edge failed; {more} more relays to this peer failed since the last such line (at most one a {}s; each is counted in nearhop_edge_relay_errors_total)", FAILURE_LOG_INTERVAL.as_secs());
                }
            }
        }
        opened
    }

    async fn open_relay_channel(
        &self,
        listener: RelayListener,
        visitor: SocketAddr,
        tunnel: &str,
    ) -> Result<RelayChannel, RelayError> {
        // Counted while this opening waits for the peer; refused at the bounds (the link's,
        // then the tunnel's share of it), before anything is asked of the peer.
        let _opening =
            Opening::begin(&self.opening, self.max_opening).ok_or_else(|| RelayError::Busy {
                peer: self.id.clone(),
                limit: self.max_opening,
            })?;
        let share = self.tunnel_share();
        let _tunnel_opening = TunnelOpening::begin(&self.tunnel_opening, tunnel, share)
            .ok_or_else(|| RelayError::TunnelBusy {
                peer: self.id.clone(),
                tunnel: tunnel.to_string(),
                limit: share,
            })?;
        let Connected { handle, credits } = self
            .handle
            .read()
            .await
            .clone()
            .ok_or_else(|| RelayError::NotConnected(self.id.clone()))?;
        // The channel's number, by which each side grants the other credit (0: the peer
        // takes none), and what this edge may send on it.
        let credit = credits.map(|c| {
            let (id, window) = c.open_channel();
            (id, c, window)
        });
        let id = credit.as_ref().map_or(0, |c| c.0);
        let open = handle.channel_open_direct_tcpip(
            listener.channel_target(),
            id,
            visitor.ip().to_string(),
            u32::from(visitor.port()),
        );
        let channel = tokio::time::timeout(OPEN_TIMEOUT, open)
            .await
            .map_err(|_| RelayError::TimedOut(self.id.clone()))?
            .map_err(|source| RelayError::Refused {
                peer: self.id.clone(),
                source,
            })?;
        Ok(match credit {
            Some((id, credits, window)) => {
                let (read, write) = channel.split();
                // The visitor's download holds part of its tunnel's share of the budget.
                let tunnel = Some(credits.tunnels().of(tunnel));
                let credited = CreditedChannel::new(id, read, write, credits, window, tunnel);
                RelayChannel::Credited(credited)
            }
            None => RelayChannel::Plain(channel.into_stream()),
        })
    }

    /// Takes `handle` as the link's connection, without a feed or credit (tests of the
    /// relay alone).
    #[cfg(test)]
    pub(super) async fn use_connection(&self, handle: Handle<PeerClient>) {
        *self.handle.write().await = Some(Connected {
            handle: Arc::new(handle),
            credits: None,
        });
    }

    /// Relay channels being opened on the link now.
    pub fn openings(&self) -> usize {
        self.opening.load(Ordering::SeqCst)
    }

    /// The most relay channels one tunnel may be opening on the link at once: a quarter of
    /// `relay_openings_per_peer`, at least 1.
    fn tunnel_share(&self) -> usize {
        (self.max_opening / 4).max(1)
    }

    /// Whether the link is connected now.
    pub async fn is_connected(&self) -> bool {
        self.handle
            .read()
            .await
            .as_ref()
            .is_some_and(|c| !c.handle.is_closed())
    }

    /// Keeps the link up until [`PeerLink::stop`]: connect, follow the feed, reconnect.
    pub async fn run(self: Arc<Self>, mesh: Arc<Mesh>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = self.connect_and_follow(&mesh, mesh.client_config.clone());
            let ended = tokio::select! {
                r = attempt => r,
                _ = self.stop.cancelled() => break,
            };
            // A connection whose feed carried credit is closed with it: its relay channels
            // would wait for credit that no longer comes (see `credits`).
            let gone = self.handle.write().await.take();
            if let Some(c) = gone {
                if c.credits.is_some() {
                    let _ = c
                        .handle
                        .disconnect(
                            russh::Disconnect::ByApplication,
                            "holdings feed ended",
                            "en",
                        )
                        .await;
                }
            }
            if !self.stop.is_cancelled() {
                mesh.link_up.with_label_values(&[&self.id]).set(0);
            }
            self.forget_holdings(&mesh);
            match ended {
                Ok(()) => {
                    tracing::info!(peer = %self.id, "peer edge closed its feed; reconnecting");
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    tracing::warn!(peer = %self.id, addr = %self.addr, error = %format!("{e:#}"), "mesh link to peer edge failed; retrying");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.stop.cancelled() => break,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        if let Some(c) = self.handle.write().await.take() {
            let _ = c
                .handle
                .disconnect(russh::Disconnect::ByApplication, "peer left the mesh", "en")
                .await;
        }
        self.forget_holdings(&mesh);
    }

    /// Forgets what the peer said over this link, unless a newer link to the same peer id
    /// (the peer's address or key changed) has taken its place: `Mesh::set_peers` forgot
    /// this link's holdings when it replaced it, and what the table holds for the id now
    /// came over the new link, whose snapshot this late call must not wipe.
    fn forget_holdings(self: &Arc<Self>, mesh: &Mesh) {
        let replaced = mesh
            .peer(&self.id)
            .is_some_and(|current| !Arc::ptr_eq(&current, self));
        if !replaced {
            mesh.holders.forget_peer(&self.id);
        }
    }

    async fn connect_and_follow(
        &self,
        mesh: &Mesh,
        config: Arc<client::Config>,
    ) -> anyhow::Result<()> {
        use anyhow::Context;
        let stream =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&self.addr))
                .await
                .context("connecting timed out")?
                .with_context(|| format!("connecting to {}", self.addr))?;
        let _ = stream.set_nodelay(true);
        let handler = PeerClient {
            expected: self.host_key.clone(),
        };
        let mut handle = tokio::time::timeout(
            CONNECT_TIMEOUT,
            // One `recv` for many packets, as on the client sessions (`io::read_buffer`).
            client::connect_stream(config, AdaptiveReader::new(stream), handler),
        )
        .await
        .context("SSH handshake timed out")?
        .context("SSH handshake (is the peer's host key the one it registered?)")?;
        let auth = handle
            .authenticate_publickey(
                mesh.my_id.clone(),
                PrivateKeyWithHashAlg::new(mesh.key.clone(), None),
            )
            .await
            .context("authenticating")?;
        if !auth.success() {
            anyhow::bail!("the peer refused this edge's key (it does not know this edge yet, or its credential was revoked)");
        }
        let (mut feed, version) = open_feed_version(&handle).await?;
        let grants_credit = version >= 2;
        // A peer that speaks `v3` can prove every claim: a line without a proof there is
        // refused even while unproven claims are accepted from older peers.
        let proves = version >= 3;
        // From `v4` on, channels open small and this edge raises its windows (downloads).
        let opening = if version >= 4 {
            FirstCredit::Small { raised: true }
        } else {
            FirstCredit::Full
        };
        let (grants, grants_out) = unbounded_channel();
        let credits =
            grants_credit.then(|| LinkCredits::new(grants, mesh.credit_limits.clone(), opening));
        *self.handle.write().await = Some(Connected {
            handle: Arc::new(handle),
            credits: credits.clone(),
        });
        mesh.link_up.with_label_values(&[&self.id]).set(1);
        tracing::info!(peer = %self.id, addr = %self.addr, credit = grants_credit, feed = version, "mesh link up");
        let (acks, acks_out) = unbounded_channel();
        let writer = AbortOnDropHandle::new(tokio::spawn(write_answers(
            feed.make_writer(),
            acks_out,
            grants_out,
        )));
        let mut reader = BufReader::new(feed.make_reader());
        // Claims refused on this connection (the first is logged, all are counted), and
        // proofs checked since this task last let others run.
        let mut refused = 0u64;
        let mut checked = 0u32;
        let mut bad_proofs = 0usize;
        while let Some(line) = next_feed_line(&mut reader)
            .await
            .context("reading the holdings feed")?
        {
            // What the peer says about the credit of one of the link's relay channels.
            if let (Some(c), Some(Answer::Credit(said))) = (&credits, parse_answer(&line)) {
                c.take(said);
                continue;
            }
            match HoldingChange::parse(&line) {
                // Every line before it is applied: say so, the peer's URL waits for it.
                Some(HoldingChange::Sync(marker)) => {
                    if acks.send(marker).is_err() {
                        anyhow::bail!("the feed's answers could not be written");
                    }
                }
                Some(change) => {
                    if matches!(change, HoldingChange::Added(_, _, Some(_))) {
                        // A snapshot of many names: ~40 µs per proof, others run meanwhile.
                        checked += 1;
                        if checked.is_multiple_of(64) {
                            tokio::task::yield_now().await;
                        }
                    }
                    let narrowed = mesh.keys_narrowed();
                    let change = match mesh.vet(&self.id, change, proves) {
                        Ok(change) => change,
                        Err((why, name)) => {
                            refused += 1;
                            if refused == 1 {
                                tracing::warn!(peer = %self.id, %name, reason = why.as_str(), "the peer announced a name without a holder proof from control that checks out; visitors for it are not relayed there (all such names are counted in nearhop_edge_mesh_claims_refused_total)");
                            }
                            // Each bad proof cost a check: a peer sending them without end
                            // is slowed down (see `MAX_BAD_PROOFS`), not followed at speed.
                            if why == super::Refusal::BadProof {
                                bad_proofs += 1;
                                if bad_proofs == MAX_BAD_PROOFS + 1 {
                                    tracing::warn!(peer = %self.id, "the peer announced more than {MAX_BAD_PROOFS} names with proofs that do not check out on this connection (a compromised or broken edge, or tunnels set up before control switched to a new key without the previous one); its feed is read more slowly from now on, {} ms after each more", BAD_PROOF_PACE.as_millis());
                                }
                                if bad_proofs > MAX_BAD_PROOFS {
                                    tokio::time::sleep(BAD_PROOF_PACE).await;
                                }
                            }
                            continue;
                        }
                    };
                    let proven = match &change {
                        HoldingChange::Added(name, _, Some(_)) => Some(name.clone()),
                        _ => None,
                    };
                    if !mesh.holders.apply(&self.id, change) {
                        anyhow::bail!(
                            "the peer announced more than {} names; its holdings are dropped \
                             until it reconnects",
                            super::holders::MAX_NAMES_PER_PEER
                        );
                    }
                    // Control's keys lost one between the check and the table: the re-check
                    // may have missed this claim.
                    if let Some(name) = proven.filter(|_| mesh.keys_narrowed() != narrowed) {
                        mesh.recheck_claim(&self.id, &name);
                    }
                }
                None => {
                    let shown: String = line.chars().take(MAX_LINE.min(80)).collect();
                    anyhow::bail!("the peer sent a line outside the feed protocol: {shown:?}");
                }
            }
        }
        drop(writer);
        Ok(())
    }
}

/// Most relay failures one link logs: the first at once, then at most one line per interval,
/// which says how many more failed meanwhile. Under a flood every relay may fail, and one
/// WARN line each filled 167 MB of log in a bench run (docs/benchmarks.md, "Relayed floods").
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// One relay channel of a tunnel being opened, counted in the link's table by name until
/// dropped.
struct TunnelOpening<'a> {
    table: &'a Mutex<HashMap<String, usize>>,
    name: String,
}

impl<'a> TunnelOpening<'a> {
    /// Counts one more opening for `name` in `table`, unless `limit` are already.
    fn begin(
        table: &'a Mutex<HashMap<String, usize>>,
        name: &str,
        limit: usize,
    ) -> Option<TunnelOpening<'a>> {
        let mut t = crate::ssh::link::lock(table);
        let n = t.entry(name.to_string()).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(TunnelOpening {
            table,
            name: name.to_string(),
        })
    }
}

impl Drop for TunnelOpening<'_> {
    fn drop(&mut self) {
        let mut t = crate::ssh::link::lock(self.table);
        if let Some(n) = t.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.name);
            }
        }
    }
}

/// One relay channel being opened, counted until dropped.
struct Opening<'a>(&'a AtomicUsize);

impl<'a> Opening<'a> {
    /// Counts one more opening in `count`, unless `limit` are already.
    fn begin(count: &'a AtomicUsize, limit: usize) -> Option<Opening<'a>> {
        count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Opening(count))
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connected link: the SSH connection, and the credit its relay channels get (when the
/// peer takes it: `mesh::credits`).
#[derive(Clone)]
struct Connected {
    handle: Arc<Handle<PeerClient>>,
    credits: Option<Arc<LinkCredits>>,
}

/// Opens the holdings feed: [`HOLDINGS_COMMAND_V4`] (relay channels opening with 32 KiB of
/// credit), else [`HOLDINGS_COMMAND_V3`] (with holder proofs), else
/// [`HOLDINGS_COMMAND_V2`] from a peer that refuses it (an edge from before proofs: its
/// claims are taken only with `mesh_accept_unproven_claims`), else [`HOLDINGS_COMMAND`]
/// (an edge from before relay channels took credit). Returns the feed's channel and whether
/// the peer takes credit.
#[cfg(test)]
async fn open_feed(
    handle: &Handle<PeerClient>,
) -> anyhow::Result<(russh::Channel<client::Msg>, bool)> {
    open_feed_version(handle)
        .await
        .map(|(feed, v)| (feed, v >= 2))
}

/// As [`open_feed`], with the feed's version (4, 3, 2 or 1).
async fn open_feed_version(
    handle: &Handle<PeerClient>,
) -> anyhow::Result<(russh::Channel<client::Msg>, u8)> {
    use anyhow::Context;
    let newer = [
        (HOLDINGS_COMMAND_V4, 4),
        (HOLDINGS_COMMAND_V3, 3),
        (HOLDINGS_COMMAND_V2, 2),
    ];
    for (command, version) in newer {
        if let Some(feed) = ask_for_feed(handle, command).await? {
            return Ok((feed, version));
        }
    }
    let feed = ask_for_feed(handle, HOLDINGS_COMMAND).await?.context(
        "the peer refused the holdings feed, v4, v3, v2 and v1 alike (is it a nearhop edge?)",
    )?;
    Ok((feed, 1))
}

/// Opens a session channel and runs `command` on it: the channel once the peer accepted,
/// `None` (the channel closed) when it refused.
async fn ask_for_feed(
    handle: &Handle<PeerClient>,
    command: &str,
) -> anyhow::Result<Option<russh::Channel<client::Msg>>> {
    use anyhow::Context;
    let mut feed = handle
        .channel_open_session()
        .await
        .context("opening the holdings feed")?;
    feed.exec(true, command)
        .await
        .context("asking for the holdings feed")?;
    let accepted = tokio::time::timeout(CONNECT_TIMEOUT, async {
        loop {
            match feed.wait().await {
                Some(ChannelMsg::Success) => return Some(true),
                Some(ChannelMsg::Failure) => return Some(false),
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await
    .with_context(|| {
        format!("the peer did not answer the request for its holdings feed ({command})")
    })?
    .context("the peer closed the holdings feed before answering")?;
    if accepted {
        return Ok(Some(feed));
    }
    let _ = feed.close().await;
    Ok(None)
}

/// Writes the feed's answers to the peer, in the order they come: answers to markers, and
/// grants of credit to relay channels (those waiting are written together).
async fn write_answers<W: AsyncWrite + Unpin>(
    mut out: W,
    mut acks: UnboundedReceiver<u64>,
    mut grants: UnboundedReceiver<Credit>,
) {
    let mut text = String::new();
    loop {
        tokio::select! {
            Some(marker) = acks.recv() => text.push_str(&ack_line(marker)),
            Some(said) = grants.recv() => text.push_str(&said.line()),
            else => return,
        }
        while text.len() < 4096 {
            if let Ok(marker) = acks.try_recv() {
                text.push_str(&ack_line(marker));
            } else if let Ok(said) = grants.try_recv() {
                text.push_str(&said.line());
            } else {
                break;
            }
        }
        if out.write_all(text.as_bytes()).await.is_err() {
            return;
        }
        text.clear();
    }
}

/// A relay channel at the relaying edge: with credit (`mesh::credits`), or russh's own
/// stream when the peer takes none.
pub enum RelayChannel {
    /// The peer grants no credit.
    Plain(ChannelStream<client::Msg>),
    /// Packets taken off the link at once, credit granted as they are read.
    Credited(CreditedChannel<client::Msg>),
}

impl AsyncRead for RelayChannel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RelayChannel::Plain(c) => Pin::new(c).poll_read(cx, buf),
            RelayChannel::Credited(c) => Pin::new(c).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for RelayChannel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            RelayChannel::Plain(c) => Pin::new(c).poll_write(cx, buf),
            RelayChannel::Credited(c) => Pin::new(c).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RelayChannel::Plain(c) => Pin::new(c).poll_flush(cx),
            RelayChannel::Credited(c) => Pin::new(c).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RelayChannel::Plain(c) => Pin::new(c).poll_shutdown(cx),
            RelayChannel::Credited(c) => Pin::new(c).poll_shutdown(cx),
        }
    }
}

/// The next line of a holdings feed, without its newline; `None` at the end of the feed.
/// At most [`MAX_LINE`] bytes are read for one line, so a peer sending a line without end
/// fails the link instead of filling this edge's memory.
async fn next_feed_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let limit = MAX_LINE as u64 + 1;
    if (&mut *reader)
        .take(limit)
        .read_until(b'\n', &mut line)
        .await?
        == 0
    {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        let why = if line.len() > MAX_LINE {
            format!("a feed line longer than {MAX_LINE} bytes")
        } else {
            "the feed ended inside a line".to_string()
        };
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
    }
    line.pop();
    String::from_utf8(line).map(Some).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a feed line that is not UTF-8",
        )
    })
}

/// The russh client configuration of the links: the same windows and ciphers as towards
/// clients, keepalives so a dead peer is noticed.
pub fn client_config(config: &Config) -> client::Config {
    client::Config {
        window_size: config.ssh_window_bytes,
        maximum_packet_size: config.ssh_max_packet_bytes,
        channel_buffer_size: config.ssh_channel_buffer,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(
            config.keepalive_interval_seconds.max(1),
        )),
        keepalive_max: config.keepalive_max,
        nodelay: true,
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Owned(config.ssh_ciphers.clone()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The SSH client side of a link: trusts exactly the host key control registered for the
/// peer.
pub struct PeerClient {
    expected: PublicKey,
}

#[cfg(test)]
impl PeerClient {
    /// A client that trusts exactly `expected`.
    pub fn new(expected: PublicKey) -> PeerClient {
        PeerClient { expected }
    }
}

impl client::Handler for PeerClient {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.key_data() == self.expected.key_data()
            }
            PublicKeyOrCertificate::Certificate(_) => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::credits::CreditLimits;
    use super::*;

    /// Every cause a relay error is counted under is one the metric exports from the start
    /// (docs/edge.md lists them): a new variant with a new cause fails here until it is.
    #[test]
    fn every_relay_error_is_counted_under_an_exported_cause() {
        let peer = || "eu-1".to_string();
        let errors = [
            RelayError::NotConnected(peer()),
            RelayError::Refused {
                peer: peer(),
                source: russh::Error::Disconnect,
            },
            RelayError::TimedOut(peer()),
            RelayError::Busy {
                peer: peer(),
                limit: 1,
            },
            RelayError::TunnelBusy {
                peer: peer(),
                tunnel: "t.a.tunnel.test".into(),
                limit: 1,
            },
        ];
        for e in &errors {
            assert!(
                crate::metrics::RELAY_ERROR_CAUSES.contains(&e.cause()),
                "{e}: {}",
                e.cause()
            );
        }
    }
    use crate::io::receive_window::{WindowBudget, WindowLimits};

    #[tokio::test]
    async fn feed_lines_are_read_one_by_one_up_to_the_end() {
        let mut feed = BufReader::new(&b"+a.test http\n-a.test\n"[..]);
        assert_eq!(
            next_feed_line(&mut feed).await.unwrap().as_deref(),
            Some("+a.test http")
        );
        assert_eq!(
            next_feed_line(&mut feed).await.unwrap().as_deref(),
            Some("-a.test")
        );
        assert_eq!(next_feed_line(&mut feed).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_line_without_end_fails_after_max_line_bytes() {
        // Far more than a line may hold, and no newline: read no further than the limit.
        let endless = vec![b'x'; 1 << 20];
        let mut feed = BufReader::with_capacity(16, &endless[..]);
        let e = next_feed_line(&mut feed).await.unwrap_err();
        assert!(e.to_string().contains("longer than 400 bytes"), "{e}");
        let taken = endless.len() - feed.get_ref().len();
        assert!(
            taken <= MAX_LINE + 1 + 16,
            "read {taken} bytes of a line without end"
        );
    }

    #[tokio::test]
    async fn a_feed_cut_inside_a_line_or_not_utf8_is_an_error() {
        let mut cut = BufReader::new(&b"+a.te"[..]);
        let e = next_feed_line(&mut cut).await.unwrap_err();
        assert!(e.to_string().contains("ended inside a line"), "{e}");
        let mut binary = BufReader::new(&b"\xff\xfe\n"[..]);
        let e = next_feed_line(&mut binary).await.unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
    }

    fn mesh_with_eu(addr: &str) -> (Mesh, Arc<PeerLink>) {
        mesh_with_eu_taking_unproven(addr, false)
    }

    fn mesh_with_eu_taking_unproven(addr: &str, unproven: bool) -> (Mesh, Arc<PeerLink>) {
        let config = Config {
            edge_secret: "s".into(),
            mesh_accept_unproven_claims: unproven,
            ..Default::default()
        };
        let key = russh::keys::PrivateKey::from(
            russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[4; 32]),
        );
        let gauge = prometheus::IntGaugeVec::new(prometheus::Opts::new("up", "up"), &["peer"])
            .expect("gauge");
        let exceeded = prometheus::IntCounter::new("exceeded", "exceeded").expect("counter");
        let grown = prometheus::IntGauge::new("grown", "grown").expect("gauge");
        let refused = prometheus::IntCounter::new("refused", "refused").expect("counter");
        let limits = CreditLimits::new(
            WindowLimits::new(
                config.ssh_window_bytes,
                WindowBudget::new(config.relay_window_budget_bytes, grown, refused),
            ),
            exceeded,
        );
        let refused = prometheus::IntCounterVec::new(
            prometheus::Opts::new("claims", "claims"),
            &["peer", "reason"],
        )
        .expect("counter");
        let taken_late =
            prometheus::IntCounterVec::new(prometheus::Opts::new("late", "late"), &["peer"])
                .expect("counter");
        let mesh = Mesh::new(&config, Arc::new(key), gauge, refused, taken_late, limits);
        let started = mesh.set_peers(&[peer_at(addr)]);
        (mesh, started[0].clone())
    }

    fn peer_at(addr: &str) -> nearhop_wire::PeerEdge {
        let key = russh::keys::PrivateKey::from(
            russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[5; 32]),
        );
        nearhop_wire::PeerEdge {
            edge_id: "eu-1".into(),
            region: "eu".into(),
            mesh_addr: addr.into(),
            host_key: key.public_key().to_openssh().expect("openssh"),
        }
    }

    /// A mesh listener that runs only `command` on a session channel, as an edge of that
    /// version does (it refuses any other with `channel_failure`), and writes `lines` on it.
    struct FeedOnly {
        command: &'static str,
        lines: String,
    }

    impl russh::server::Handler for FeedOnly {
        type Error = russh::Error;

        async fn auth_publickey(
            &mut self,
            _user: &str,
            _key: russh::server::VerifiedPublicKey<'_>,
        ) -> Result<russh::server::Auth, Self::Error> {
            Ok(russh::server::Auth::Accept)
        }

        async fn channel_open_session(
            &mut self,
            _channel: russh::Channel<russh::server::Msg>,
            reply: russh::server::ChannelOpenHandle,
            _session: &mut russh::server::Session,
        ) -> Result<(), Self::Error> {
            reply.accept().await;
            Ok(())
        }

        async fn exec_request(
            &mut self,
            channel: russh::ChannelId,
            data: &[u8],
            session: &mut russh::server::Session,
        ) -> Result<(), Self::Error> {
            if data != self.command.as_bytes() {
                session.channel_failure(channel)?;
                return Ok(());
            }
            session.channel_success(channel)?;
            if !self.lines.is_empty() {
                session.data(channel, self.lines.clone().into_bytes())?;
            }
            Ok(())
        }
    }

    /// Whether `open_feed` settles on credit with a peer that runs only `command` (it
    /// waits for the peer to accept the feed it settles on); an error when it runs neither.
    async fn feed_with_peer_running(command: &'static str) -> anyhow::Result<bool> {
        let lines = String::new();
        let handle = super::super::test_link::connect(FeedOnly { command, lines }).await;
        open_feed(&handle).await.map(|(_, credit)| credit)
    }

    /// The feed version `open_feed_version` settles on with a peer that runs only `command`.
    async fn version_with_peer_running(command: &'static str) -> u8 {
        let lines = String::new();
        let handle = super::super::test_link::connect(FeedOnly { command, lines }).await;
        open_feed_version(&handle).await.expect("a feed").1
    }

    #[tokio::test]
    async fn each_peer_gets_the_newest_feed_it_runs() {
        assert_eq!(version_with_peer_running(HOLDINGS_COMMAND_V4).await, 4);
        assert_eq!(version_with_peer_running(HOLDINGS_COMMAND_V3).await, 3);
        assert!(feed_with_peer_running(HOLDINGS_COMMAND_V4)
            .await
            .expect("v4"));
        assert!(feed_with_peer_running(HOLDINGS_COMMAND_V3)
            .await
            .expect("v3"));
        assert!(feed_with_peer_running(HOLDINGS_COMMAND_V2)
            .await
            .expect("v2"));
        assert!(!feed_with_peer_running(HOLDINGS_COMMAND).await.expect("v1"));
        let neither = feed_with_peer_running("something else").await;
        let e = format!(
            "{:#}",
            neither.expect_err("no feed from a peer refusing both")
        );
        assert!(e.contains("refused the holdings feed"), "{e}");
    }

    /// Serves `lines` as eu-1's feed to a link of a mesh that knows control's key for
    /// `secret`; returns the mesh once it has taken the last line's name.
    async fn follow_feed(lines: String, secret: &str, unproven: bool) -> Arc<Mesh> {
        let mesh = start_following(HOLDINGS_COMMAND_V3, lines.clone(), secret, unproven).await;
        let last = lines
            .lines()
            .last()
            .and_then(|l| l.strip_prefix('+'))
            .and_then(|l| l.split(' ').next())
            .expect("a last claim")
            .to_string();
        // Lines are applied in order: once the last one's name is there, all were read. (The
        // guard only ends a test that would otherwise hang.)
        let arrived = async {
            loop {
                let next = mesh.holders.arrivals().notified();
                tokio::pin!(next);
                next.as_mut().enable();
                if mesh.holders.holder(&last).is_some() {
                    return;
                }
                next.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), arrived)
            .await
            .unwrap_or_else(|_| panic!("the feed's last claim ({last}) never arrived"));
        mesh
    }

    /// A mesh following eu-1's feed of `lines`, served on `command`, knowing control's key
    /// for `secret`.
    async fn start_following(
        command: &'static str,
        lines: String,
        secret: &str,
        unproven: bool,
    ) -> Arc<Mesh> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address").to_string();
        let key = russh::keys::PrivateKey::from(
            russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[5; 32]),
        );
        let server = Arc::new(russh::server::Config {
            keys: vec![key],
            ..Default::default()
        });
        let handler = FeedOnly { command, lines };
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            let running = russh::server::run_stream(server, stream, handler)
                .await
                .expect("handshake");
            let _ = running.await;
        });
        let (mesh, link) = mesh_with_eu_taking_unproven(&addr, unproven);
        let mesh = Arc::new(mesh);
        let signer = nearhop_wire::holder_proof::HolderSigner::from_secret(secret);
        mesh.set_holder_keys(Some(&signer.public_key()), None);
        tokio::spawn(link.clone().run(mesh.clone()));
        mesh
    }

    fn refused(mesh: &Mesh, reason: &str) -> u64 {
        mesh.claims_refused_count("eu-1", reason)
    }

    #[tokio::test]
    async fn a_peers_claims_are_taken_only_with_controls_proof_for_that_peer() {
        use nearhop_wire::holder_proof::HolderSigner;
        use nearhop_wire::TunnelKind::{Http, Tls};
        let control = HolderSigner::from_secret("control-admin-secret");
        let other = HolderSigner::from_secret("another-control-secret");
        let feed = [
            // Another edge's genuine proof, replayed by eu-1.
            format!(
                "+stolen.a.test http 9 {}",
                control.prove("stolen.a.test", "ap-1", 9, Http)
            ),
            // Signed by a key that is not control's.
            format!(
                "+forged.a.test http 9 {}",
                other.prove("forged.a.test", "eu-1", 9, Http)
            ),
            // Control's proof for another kind of tunnel, and for another tunnel id.
            format!(
                "+kind.a.test http 8 {}",
                control.prove("kind.a.test", "eu-1", 8, Tls)
            ),
            format!(
                "+id.a.test http 8 {}",
                control.prove("id.a.test", "eu-1", 7, Http)
            ),
            // No proof at all.
            "+bare.a.test http".to_string(),
            // The one genuine claim.
            format!(
                "+good.a.test http 7 {}",
                control.prove("good.a.test", "eu-1", 7, Http)
            ),
        ]
        .join("\n")
            + "\n";
        let mesh = follow_feed(feed.clone(), "control-admin-secret", false).await;
        assert_eq!(
            mesh.holders.holder("good.a.test").and_then(|h| h.tunnel_id),
            Some(7)
        );
        for name in ["stolen", "forged", "kind", "id", "bare"] {
            let name = format!("{name}.a.test");
            assert!(mesh.holders.holder(&name).is_none(), "{name} was taken");
        }
        assert_eq!(refused(&mesh, "bad_proof"), 4);
        assert_eq!(refused(&mesh, "unproven"), 1);
        // Taking unproven claims (a fleet mid-upgrade) does not take them from a peer on
        // `v3`, which can prove every claim.
        let mesh = follow_feed(feed.clone(), "control-admin-secret", true).await;
        assert!(mesh.holders.holder("bare.a.test").is_none());
        assert_eq!(refused(&mesh, "unproven"), 1);
        // From a peer on `v2` (before proofs) it takes the bare one, never a bad proof.
        let mesh = start_following(HOLDINGS_COMMAND_V2, feed, "control-admin-secret", true).await;
        let taken = async {
            while mesh.holders.holder("good.a.test").is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), taken)
            .await
            .expect("the v2 feed is read");
        assert!(mesh.holders.holder("bare.a.test").is_some());
        assert!(mesh.holders.holder("forged.a.test").is_none());
        assert_eq!(refused(&mesh, "bad_proof"), 4);
        assert_eq!(refused(&mesh, "unproven"), 0);
    }

    /// Control rotates its key: while its answers carry the previous key too, a claim
    /// proven under either is taken (the tunnels set up before the rotation stay relayed);
    /// once they carry the current key alone, a claim under the previous one is refused.
    #[tokio::test]
    async fn claims_under_controls_previous_key_are_taken_while_control_sends_it() {
        use nearhop_wire::holder_proof::HolderSigner;
        let old = HolderSigner::from_secret("the-old-holder-secret");
        let new = HolderSigner::from_secret("the-new-holder-secret");
        let claim = |signer: &HolderSigner, name: &str, id: i64| {
            HoldingChange::proven(signer, "eu-1", &format!("{name}.a.test"), id)
        };
        let (mesh, _link) = mesh_with_eu_taking_unproven("127.0.0.1:9", false);
        let mesh = Arc::new(mesh);
        mesh.set_holder_keys(Some(&new.public_key()), Some(&old.public_key()));
        assert!(mesh.vet("eu-1", claim(&old, "before", 1), true).is_ok());
        assert!(mesh.vet("eu-1", claim(&new, "after", 2), true).is_ok());
        let stranger = HolderSigner::from_secret("nobodys-holder-secret");
        assert!(mesh
            .vet("eu-1", claim(&stranger, "forged", 3), true)
            .is_err());
        assert_eq!(refused(&mesh, "bad_proof"), 1);
        // A previous key that does not parse: the current one alone is taken. Control says
        // it again at every heartbeat; only the first time is new (and logged).
        assert!(mesh.set_holder_keys(Some(&new.public_key()), Some("not a key")));
        assert!(!mesh.set_holder_keys(Some(&new.public_key()), Some("not a key")));
        assert!(mesh.vet("eu-1", claim(&old, "before", 1), true).is_err());
        assert!(mesh.vet("eu-1", claim(&new, "after", 2), true).is_ok());
        // The rotation is over: the previous key is no longer sent, and no longer taken.
        mesh.set_holder_keys(Some(&new.public_key()), Some(&old.public_key()));
        mesh.set_holder_keys(Some(&new.public_key()), None);
        assert_eq!(
            mesh.vet("eu-1", claim(&old, "before", 1), true)
                .map_err(|(why, _)| why),
            Err(super::super::Refusal::BadProof)
        );
        assert!(mesh.vet("eu-1", claim(&new, "after", 2), true).is_ok());
        // A control before proofs sends no key: the keys known stay.
        mesh.set_holder_keys(None, None);
        assert!(mesh.vet("eu-1", claim(&new, "after", 2), true).is_ok());
    }

    /// A leak-driven rotation: claims taken under the old key while control still sent it
    /// are dropped as soon as control's keys no longer take it, without waiting for the
    /// links to reconnect; claims under the new key, and unproven ones, stay.
    #[tokio::test]
    async fn claims_under_a_key_control_dropped_are_checked_again_and_dropped() {
        use nearhop_wire::holder_proof::HolderSigner;
        use nearhop_wire::TunnelKind::Http;
        let old = HolderSigner::from_secret("the-leaked-holder-secret");
        let new = HolderSigner::from_secret("the-new-holder-secret");
        let claim = HoldingChange::proven;
        let (mesh, _link) = mesh_with_eu_taking_unproven("127.0.0.1:9", true);
        let mesh = Arc::new(mesh);
        // `v2` feeds, so that a claim without a proof is taken too.
        let take = |peer: &str, change: HoldingChange| {
            let change = mesh.vet(peer, change, false).expect("taken");
            assert!(mesh.holders.apply(peer, change));
        };
        let peer_of = |name: &str| mesh.holders.holder(name).map(|h| h.peer);
        mesh.set_holder_keys(Some(&old.public_key()), None);
        take("eu-1", claim(&old, "eu-1", "before.a.test", 1));
        // Control starts the rotation: a key added drops nothing.
        mesh.set_holder_keys(Some(&new.public_key()), Some(&old.public_key()));
        mesh.wait_for_recheck();
        assert_eq!(peer_of("before.a.test").as_deref(), Some("eu-1"));
        // Forged with the leaked key while control still sends it: a name ap-1 holds, with
        // a tunnel id far above its own, and one held nowhere.
        take("ap-1", claim(&new, "ap-1", "shop.a.test", 5));
        take("eu-1", claim(&old, "eu-1", "shop.a.test", 1_000_000));
        take("eu-1", claim(&old, "eu-1", "bank.a.test", 9));
        take("ap-1", claim(&old, "ap-1", "old.a.test", 2));
        take("eu-1", claim(&new, "eu-1", "after.a.test", 6));
        take(
            "eu-1",
            HoldingChange::Added("bare.a.test".into(), Http, None),
        );
        assert_eq!(peer_of("shop.a.test").as_deref(), Some("eu-1"));
        assert_eq!(refused(&mesh, "bad_proof"), 0);
        // Control drops the leaked key: the claims under it go at once. The name the forged
        // claim took goes back to its genuine holder in the same pass, its lower id not
        // held against it.
        mesh.set_holder_keys(Some(&new.public_key()), None);
        mesh.wait_for_recheck();
        for name in ["before.a.test", "bank.a.test", "old.a.test"] {
            assert_eq!(peer_of(name), None, "{name} is still relayed");
            assert!(mesh.holder_of(name).is_none());
            assert!(
                mesh.holders.recently_gone(name),
                "{name} is gone, not unknown"
            );
        }
        assert_eq!(peer_of("shop.a.test").as_deref(), Some("ap-1"));
        assert_eq!(
            mesh.holders.holder("shop.a.test").and_then(|h| h.tunnel_id),
            Some(5)
        );
        assert_eq!(refused(&mesh, "bad_proof"), 3);
        assert_eq!(mesh.claims_refused_count("ap-1", "bad_proof"), 1);
        assert_eq!(mesh.claims_taken_late_count("ap-1"), 1);
        assert_eq!(peer_of("after.a.test").as_deref(), Some("eu-1"));
        assert_eq!(peer_of("bare.a.test").as_deref(), Some("eu-1"));
        // Announced again, an old-key claim is checked again (and refused); the genuine
        // holder saying its claim again keeps the name.
        assert!(mesh
            .vet("eu-1", claim(&old, "eu-1", "before.a.test", 1), false)
            .is_err());
        take("ap-1", claim(&new, "ap-1", "shop.a.test", 5));
        assert_eq!(peer_of("shop.a.test").as_deref(), Some("ap-1"));
        // Another answer with the same keys checks nothing again.
        mesh.set_holder_keys(Some(&new.public_key()), None);
        mesh.wait_for_recheck();
        assert_eq!(
            refused(&mesh, "bad_proof"),
            4,
            "the refused announcement alone"
        );
        // A replaced current key (control restarted with another secret and no previous
        // one) drops the claims under the key before it, the unproven ones still stay.
        let next = HolderSigner::from_secret("yet-another-holder-secret");
        mesh.set_holder_keys(Some(&next.public_key()), None);
        mesh.wait_for_recheck();
        assert_eq!(peer_of("after.a.test"), None);
        assert_eq!(peer_of("shop.a.test"), None);
        assert_eq!(peer_of("bare.a.test").as_deref(), Some("eu-1"));
        assert_eq!(refused(&mesh, "bad_proof"), 5);
        // A claim checked under the keys before that reached the table only after the
        // re-check copied it: its link checks it again.
        assert!(mesh
            .holders
            .apply("eu-1", claim(&new, "eu-1", "late.a.test", 7)));
        mesh.recheck_claim("eu-1", "late.a.test");
        assert_eq!(peer_of("late.a.test"), None);
        assert_eq!(refused(&mesh, "bad_proof"), 6);
    }

    /// An edge that has not heard of control's new key yet (its heartbeats failed while
    /// control rotated it, say) refuses the claims signed with it. When control's answer
    /// brings the key, the claims still standing are taken without the peer saying them
    /// again, so their tunnels are relayed without waiting for the link to reconnect.
    #[tokio::test]
    async fn claims_refused_under_a_key_not_heard_of_yet_are_taken_when_it_comes() {
        use super::super::Refusal;
        use nearhop_wire::holder_proof::HolderSigner;
        let old = HolderSigner::from_secret("the-old-holder-secret");
        let new = HolderSigner::from_secret("the-new-holder-secret");
        let claim = |signer: &HolderSigner, name: &str, id: i64| {
            HoldingChange::proven(signer, "eu-1", name, id)
        };
        let (mesh, _link) = mesh_with_eu_taking_unproven("127.0.0.1:9", false);
        let mesh = Arc::new(mesh);
        let peer_of = |name: &str| mesh.holders.holder(name).map(|h| h.peer);
        mesh.set_holder_keys(Some(&old.public_key()), None);
        for (name, id) in [("early.a.test", 3), ("closed.a.test", 4)] {
            assert_eq!(
                mesh.vet("eu-1", claim(&new, name, id), true)
                    .map_err(|(why, _)| why),
                Err(Refusal::BadProof)
            );
        }
        // The peer's tunnel closed meanwhile: its "removed" is its last word on the name.
        let removed = mesh
            .vet("eu-1", HoldingChange::Removed("closed.a.test".into()), true)
            .expect("a removal needs no proof");
        assert!(mesh.holders.apply("eu-1", removed));
        assert_eq!(peer_of("early.a.test"), None);
        // Control's answer brings its new key (the old one as the previous).
        mesh.set_holder_keys(Some(&new.public_key()), Some(&old.public_key()));
        mesh.wait_for_recheck();
        assert_eq!(peer_of("early.a.test").as_deref(), Some("eu-1"));
        assert_eq!(peer_of("closed.a.test"), None);
        assert_eq!(mesh.claims_taken_late_count("eu-1"), 1);
        assert_eq!(refused(&mesh, "bad_proof"), 2, "counted when refused");
        // Taken late, it is checked again like any claim when control drops its key.
        let next = HolderSigner::from_secret("yet-another-holder-secret");
        mesh.set_holder_keys(Some(&next.public_key()), None);
        mesh.wait_for_recheck();
        assert_eq!(peer_of("early.a.test"), None);
        assert_eq!(refused(&mesh, "bad_proof"), 3);
        // Dropped too early: the operator puts the key back as the previous one, and the
        // claim the re-check dropped is taken again at once.
        mesh.set_holder_keys(Some(&next.public_key()), Some(&new.public_key()));
        mesh.wait_for_recheck();
        assert_eq!(peer_of("early.a.test").as_deref(), Some("eu-1"));
        assert_eq!(mesh.claims_taken_late_count("eu-1"), 2);

        // An edge whose control sent no key yet refuses proven claims (`no_key`), and takes
        // them once a key comes.
        let (mesh, _link) = mesh_with_eu_taking_unproven("127.0.0.1:9", false);
        let mesh = Arc::new(mesh);
        assert_eq!(
            mesh.vet("eu-1", claim(&new, "first.a.test", 1), true)
                .map_err(|(why, _)| why),
            Err(Refusal::NoKey)
        );
        mesh.set_holder_keys(Some(&new.public_key()), None);
        mesh.wait_for_recheck();
        assert!(mesh.holders.holder("first.a.test").is_some());
        assert_eq!(mesh.claims_taken_late_count("eu-1"), 1);
    }

    /// While a re-check is pending (control's keys dropped one, the pass not yet done), a
    /// peer saying an old-key line again is not vouched for by the table, which still holds
    /// the claim: it is checked under the keys in force, and refused. Otherwise a peer
    /// repeating its forged line could put it back right after the pass dropped it.
    #[tokio::test]
    async fn a_line_said_again_while_a_recheck_is_pending_is_checked_again() {
        use super::super::protocol::Proof;
        use nearhop_wire::holder_proof::{HolderKeys, HolderSigner};
        use nearhop_wire::TunnelKind::Http;
        use std::sync::atomic::Ordering::SeqCst;
        let old = HolderSigner::from_secret("the-leaked-holder-secret");
        let new = HolderSigner::from_secret("the-new-holder-secret");
        let forged = || {
            let signature = old.prove("again.a.test", "eu-1", 11, Http);
            HoldingChange::Added(
                "again.a.test".to_string(),
                Http,
                Some(Proof {
                    tunnel_id: 11,
                    signature,
                }),
            )
        };
        let (mesh, _link) = mesh_with_eu_taking_unproven("127.0.0.1:9", false);
        let mesh = Arc::new(mesh);
        mesh.set_holder_keys(Some(&new.public_key()), Some(&old.public_key()));
        let taken = mesh.vet("eu-1", forged(), true).expect("taken");
        assert!(mesh.holders.apply("eu-1", taken));
        // Said again with the keys as they were: the table vouches for it.
        assert!(mesh.vet("eu-1", forged(), true).is_ok());
        // Control's keys drop the old one; the pass has not run yet.
        *mesh.holder_keys.write().expect("keys") =
            Some(HolderKeys::parse(&new.public_key(), None).expect("key"));
        mesh.rechecks_pending.fetch_add(1, SeqCst);
        assert_eq!(
            mesh.vet("eu-1", forged(), true).map_err(|(why, _)| why),
            Err(super::super::Refusal::BadProof),
            "a line said again while a re-check is pending was taken on the table's word"
        );
        // Once the pass has run, the claim is gone and the line is checked as any new one.
        mesh.recheck_claims();
        mesh.rechecks_pending.fetch_sub(1, SeqCst);
        assert!(mesh.holders.holder("again.a.test").is_none());
        assert!(mesh.vet("eu-1", forged(), true).is_err());
    }

    /// A feed with more bad proofs than the cap (a peer sending them without end, or a
    /// genuine holder with many tunnels from before a key switch): past the cap it is read
    /// more slowly, not cut off, and a good claim after them is taken.
    #[tokio::test]
    async fn a_peer_sending_bad_proofs_past_the_cap_is_slowed_down_not_cut_off() {
        use nearhop_wire::holder_proof::HolderSigner;
        let other = HolderSigner::from_secret("not-controls-key");
        let control = HolderSigner::from_secret("control-admin-secret");
        let mut feed = String::new();
        let past = 100;
        for i in 0..MAX_BAD_PROOFS + past {
            let name = format!("n{i}.a.test");
            let proof = other.prove(&name, "eu-1", 9, nearhop_wire::TunnelKind::Http);
            feed.push_str(&format!("+{name} http 9 {proof}\n"));
        }
        let good = control.prove("good.a.test", "eu-1", 9, nearhop_wire::TunnelKind::Http);
        feed.push_str(&format!("+good.a.test http 9 {good}\n"));
        let started = std::time::Instant::now();
        let mesh = follow_feed(feed, "control-admin-secret", false).await;
        assert!(mesh.holders.holder("good.a.test").is_some());
        assert_eq!(refused(&mesh, "bad_proof"), (MAX_BAD_PROOFS + past) as u64);
        assert_eq!(
            mesh.link_up.with_label_values(&["eu-1"]).get(),
            1,
            "not cut"
        );
        assert!(
            started.elapsed() >= BAD_PROOF_PACE * past as u32,
            "each bad proof past the cap waited"
        );
    }

    fn added(name: &str) -> HoldingChange {
        HoldingChange::Added(name.into(), nearhop_wire::TunnelKind::Http, None)
    }

    /// A link to a test peer that opens at most `max_opening` relay channels at once, and the
    /// peer's queue of the channel openings it is asked for (each to accept or reject).
    async fn link_opening_at_most(
        max_opening: usize,
    ) -> (
        Arc<PeerLink>,
        tokio::sync::mpsc::UnboundedReceiver<super::super::test_link::Opening>,
    ) {
        let (asked, openings) = tokio::sync::mpsc::unbounded_channel();
        let handle = super::super::test_link::connect(super::super::test_link::Asked(asked)).await;
        let key = russh::keys::PrivateKey::from(
            russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[5; 32]),
        );
        let link = Arc::new(PeerLink::new(
            "us-1".into(),
            "127.0.0.1:1".into(),
            key.public_key().clone(),
            CancellationToken::new(),
            max_opening,
        ));
        link.use_connection(handle).await;
        (link, openings)
    }

    #[tokio::test]
    async fn relay_openings_past_the_bound_are_refused_at_once_until_the_peer_answers() {
        let (link, mut openings) = link_opening_at_most(2).await;
        let visitor: SocketAddr = "127.0.0.9:40000".parse().expect("address");
        let open = |link: Arc<PeerLink>, tunnel: &'static str| {
            tokio::spawn(async move { link.open_relay(RelayListener::Http, visitor, tunnel).await })
        };
        let (first, second) = (open(link.clone(), "a.test"), open(link.clone(), "b.test"));
        let (reply_a, _channel_a) = openings.recv().await.expect("the peer was asked");
        let (reply_b, _channel_b) = openings.recv().await.expect("the peer was asked again");

        // Two openings wait for the peer: a third is refused without asking it.
        let third = link
            .open_relay(RelayListener::Http, visitor, "c.test")
            .await;
        match third {
            Err(e @ RelayError::Busy { limit: 2, .. }) => {
                assert_eq!(e.cause(), "peer_busy");
                assert!(e.to_string().contains("relay_openings_per_peer"), "{e}");
            }
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("a third relay channel was opened past the bound of 2"),
        }
        assert!(
            openings.try_recv().is_err(),
            "the peer was not asked a third time"
        );

        // The peer answers both (one yes, one no): both openings are over.
        reply_a.accept().await;
        reply_b
            .reject(russh::ChannelOpenFailure::ResourceShortage)
            .await;
        let results = [
            first.await.expect("first task"),
            second.await.expect("second task"),
        ];
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
        assert!(
            results
                .iter()
                .any(|r| matches!(r, Err(RelayError::Refused { .. }))),
            "one was refused by the peer"
        );
        assert_eq!(link.openings(), 0);

        // So the link opens again.
        let fourth = open(link.clone(), "a.test");
        let (reply, _channel) = openings.recv().await.expect("the peer was asked");
        reply.accept().await;
        assert!(fourth.await.expect("fourth task").is_ok());
    }

    #[tokio::test]
    async fn one_tunnel_takes_at_most_a_quarter_of_the_openings_and_the_others_still_pass() {
        let (link, mut openings) = link_opening_at_most(8).await;
        let visitor: SocketAddr = "127.0.0.9:40000".parse().expect("address");
        let open = |link: Arc<PeerLink>, tunnel: &'static str| {
            tokio::spawn(async move { link.open_relay(RelayListener::Http, visitor, tunnel).await })
        };
        // A flooded tunnel whose holder does not answer: two openings wait (8 / 4).
        let flooded = [
            open(link.clone(), "slow.test"),
            open(link.clone(), "slow.test"),
        ];
        let (reply_a, _a) = openings.recv().await.expect("the peer was asked");
        let (reply_b, _b) = openings.recv().await.expect("the peer was asked again");
        match link
            .open_relay(RelayListener::Http, visitor, "slow.test")
            .await
        {
            Err(e @ RelayError::TunnelBusy { limit: 2, .. }) => {
                assert_eq!(e.cause(), "tunnel_busy");
                assert!(e.to_string().contains("slow.test"), "{e}");
            }
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("a third opening for one tunnel passed its share of 2"),
        }
        assert!(openings.try_recv().is_err(), "the peer was not asked");
        // Another tunnel on the same peer is still relayed.
        let other = open(link.clone(), "other.test");
        let (reply, _channel) = openings.recv().await.expect("the peer was asked for it");
        reply.accept().await;
        assert!(other.await.expect("task").is_ok());
        // Once the flooded tunnel's openings are answered, it has its share again.
        reply_a.accept().await;
        reply_b.accept().await;
        for f in flooded {
            assert!(f.await.expect("task").is_ok());
        }
        assert!(
            crate::ssh::link::lock(&link.tunnel_opening).is_empty(),
            "nothing left counted"
        );
        let again = open(link.clone(), "slow.test");
        let (reply, _channel) = openings.recv().await.expect("the peer was asked");
        reply.accept().await;
        assert!(again.await.expect("task").is_ok());
    }

    #[test]
    fn a_replaced_links_late_cleanup_keeps_what_the_new_link_learned() {
        let (mesh, old) = mesh_with_eu("127.0.0.2:2223");
        mesh.holders.apply("eu-1", added("old.a.test"));
        // The peer moved: the old link is stopped (and what it said forgotten), a new one
        // starts and learns the peer's names over its feed.
        let started = mesh.set_peers(&[peer_at("127.0.0.22:2223")]);
        assert_eq!(started.len(), 1);
        assert!(old.stop.is_cancelled());
        assert!(mesh.holders.holder("old.a.test").is_none());
        mesh.holders.apply("eu-1", added("new.a.test"));
        // The old link's task ends only now.
        old.forget_holdings(&mesh);
        assert!(mesh.holders.holder("new.a.test").is_some());
        // The current link's own cleanup does forget.
        started[0].forget_holdings(&mesh);
        assert!(mesh.holders.holder("new.a.test").is_none());
    }
}
