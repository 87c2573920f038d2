//! The edge mesh: every edge serves every live tunnel. An edge that gets a visitor for a
//! tunnel held by another edge relays the connection there over one long-lived SSH
//! connection per peer, authenticated both ways by the edges' host keys that control
//! vouches for (each edge registered its key with its own credential).
//!
//! - [`protocol`]: the relay channel's naming and the holdings feed's lines.
//! - [`holders`]: which peer holds which name, from the peers' feeds.
//! - [`credits`]: flow control of each relay channel on its own, both ways.
//! - [`links`]: this edge's outbound connection to each peer (feed in, relays out).
//! - [`listener`]: the mesh SSH listener that peers connect to.
//! - [`local`]: this edge's own tunnels arriving and leaving, for visitors waiting on a
//!   reconnect.
//!
//! [`Mesh`] is state only; the listener and the links' tasks are started by the edge's
//! start-up and take it.

pub mod acks;
pub mod credits;
#[cfg(test)]
mod forgotten_channels;
pub mod holders;
pub mod links;
pub mod listener;
pub mod local;
pub mod protocol;
#[cfg(test)]
mod received_channel_data;
#[cfg(test)]
mod test_link;

use crate::config::Config;
use holders::HolderTable;
use links::PeerLink;
use nearhop_wire::holder_proof::HolderKeys;
use nearhop_wire::{PeerEdge, TunnelKind};
use protocol::HoldingChange;
use russh::keys::{PrivateKey, PublicKey};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio_util::sync::CancellationToken;

/// This edge's view of the mesh: its peers (from control's registry) and who holds what.
pub struct Mesh {
    /// This edge's id, the user name it authenticates with at its peers.
    pub my_id: String,
    /// This edge's host key: its identity at its peers.
    pub key: Arc<PrivateKey>,
    /// Which peer holds which tunnel name.
    pub holders: HolderTable,
    /// How far each peer has read this edge's holdings feed.
    pub acks: acks::FeedAcks,
    peers: RwLock<HashMap<String, Arc<PeerLink>>>,
    /// The SSH client configuration of the links.
    pub client_config: Arc<russh::client::Config>,
    /// `nearhop_edge_mesh_link_up`, set by the links.
    pub link_up: prometheus::IntGaugeVec,
    /// What bounds relay channels' credit on every link.
    pub credit_limits: credits::CreditLimits,
    /// Cancelled when the edge's shutdown has drained its visitors (not when it starts, so
    /// that relayed downloads and WebSockets in flight finish): every link closes.
    pub shutdown: CancellationToken,
    /// Control's public keys for holder proofs (the current one, and the previous one while
    /// control rotates it), from its latest answer.
    holder_keys: RwLock<Option<HolderKeys>>,
    /// `holder_key` and `holder_key_previous` as control's latest answer carrying a key
    /// wrote them: an answer saying the same again changes nothing and logs nothing (a
    /// previous key that does not parse would otherwise make an error line a heartbeat).
    holder_keys_sent: std::sync::Mutex<Option<(String, Option<String>)>>,
    /// How many times a key taken before stopped being taken (see
    /// [`Mesh::keys_narrowed`]).
    keys_narrowed: std::sync::atomic::AtomicU64,
    /// `mesh_accept_unproven_claims`.
    accept_unproven: bool,
    /// `nearhop_edge_mesh_claims_refused_total`.
    claims_refused: prometheus::IntCounterVec,
    /// `nearhop_edge_mesh_claims_taken_late_total`.
    claims_taken_late: prometheus::IntCounterVec,
    /// `relay_openings_per_peer`, for each link.
    relay_openings_per_peer: usize,
    /// Key changes that dropped a key and that no finished pass of [`Mesh::recheck_claims`]
    /// started after: while any is pending, a line said again is checked again too (see
    /// [`Mesh::vet`]), so that the table cannot vouch for a claim a pass is about to drop.
    rechecks_pending: std::sync::atomic::AtomicU64,
    /// The one thread checking claims again after control's keys changed: those taken
    /// (when a key was dropped), and those held back (when one was added).
    recheck: std::sync::Mutex<Recheck>,
    /// When this edge last asked control for the peer list between heartbeats; held while
    /// it asks, so that callers take turns (`control::sync::ask_for_peers`).
    pub peers_asked: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// When the call whose peer list is in force was made: a list from an earlier call
    /// (a heartbeat answered after a newer list came) is not taken
    /// (`control::sync::apply_peers`).
    pub peers_as_of: std::sync::Mutex<Option<std::time::Instant>>,
}

/// Where the re-check of claims stands (see [`Mesh::start_recheck`]).
#[derive(Default)]
struct Recheck {
    /// A thread is checking.
    running: bool,
    /// Keys changed again while it checked: it runs one more pass.
    again: bool,
    /// The thread started last (tests wait for it).
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Why a peer's claim to hold a name is not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It came without control's proof (a peer from before proofs, or a tunnel set up by a
    /// control that did not sign), and unproven claims are not accepted.
    Unproven,
    /// Its proof does not check out for that name, tunnel and peer under control's key.
    BadProof,
    /// Control has not sent its key (a control from before proofs), so no proof can be
    /// checked.
    NoKey,
}

impl Refusal {
    /// The `reason` label of `nearhop_edge_mesh_claims_refused_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unproven => "unproven",
            Refusal::BadProof => "bad_proof",
            Refusal::NoKey => "no_key",
        }
    }
}

impl Mesh {
    /// A mesh with no peers yet.
    pub fn new(
        config: &Config,
        key: Arc<PrivateKey>,
        link_up: prometheus::IntGaugeVec,
        claims_refused: prometheus::IntCounterVec,
        claims_taken_late: prometheus::IntCounterVec,
        credit_limits: credits::CreditLimits,
    ) -> Mesh {
        Mesh {
            my_id: config.edge_id.clone(),
            key,
            client_config: Arc::new(links::client_config(config)),
            link_up,
            credit_limits,
            holders: HolderTable::default(),
            acks: acks::FeedAcks::default(),
            peers: RwLock::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            holder_keys: RwLock::new(None),
            holder_keys_sent: std::sync::Mutex::new(None),
            keys_narrowed: Default::default(),
            accept_unproven: config.mesh_accept_unproven_claims,
            claims_refused,
            claims_taken_late,
            relay_openings_per_peer: config.relay_openings_per_peer,
            rechecks_pending: Default::default(),
            recheck: Default::default(),
            peers_asked: tokio::sync::Mutex::new(None),
            peers_as_of: std::sync::Mutex::new(None),
        }
    }

    /// Takes control's keys for holder proofs, as its answers carry them: `current`
    /// (`holder_key`; `None`: a control from before proofs, and the keys known stay) and
    /// `previous` (`holder_key_previous`, while control rotates its key: proofs under either
    /// are taken). New claims are checked with the new keys; when a key taken before is no
    /// longer (the previous key dropped at the end of a rotation, or the current one
    /// replaced), every proven claim already taken is checked again on a thread of its own
    /// ([`Mesh::recheck_claims`]), so that one under that key (forged with a leaked key,
    /// say) stops being relayed now rather than when its link reconnects. When a key is
    /// taken that was not before, the claims refused before are checked again on that
    /// thread ([`Mesh::take_held_back`]), so that a tunnel whose proof came under a key
    /// this edge had not heard of yet is relayed now. Returns whether the answer said
    /// something else than the one before (only then is anything logged).
    pub fn set_holder_keys(
        self: &Arc<Self>,
        current: Option<&str>,
        previous: Option<&str>,
    ) -> bool {
        let Some(current) = current else { return false };
        {
            let mut sent = self
                .holder_keys_sent
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let now = (current.to_string(), previous.map(str::to_string));
            if sent.as_ref() == Some(&now) {
                return false;
            }
            *sent = Some(now);
        }
        let keys = match HolderKeys::parse(current, previous) {
            Ok(keys) => keys,
            Err(e) if previous.is_some() => match HolderKeys::parse(current, None) {
                Ok(keys) => {
                    tracing::error!(error = %e, "control sent a previous key for holder proofs that does not parse; taking its current key alone (claims under the previous key are refused)");
                    keys
                }
                Err(e) => {
                    Self::unparsed_key(&e);
                    return true;
                }
            },
            Err(e) => {
                Self::unparsed_key(&e);
                return true;
            }
        };
        let mut held = self.holder_keys.write().unwrap_or_else(|e| e.into_inner());
        if held.as_ref() == Some(&keys) {
            return true;
        }
        match previous.filter(|_| keys.previous.is_some()) {
            Some(previous) => tracing::info!(
                "control's key for holder proofs is now {current}; proofs under its previous key {previous} are taken too while control sends it"
            ),
            None => tracing::info!("control's key for holder proofs is now {current}"),
        }
        let narrowed = held
            .as_ref()
            .is_some_and(|before| !keys.takes_every_key_of(before));
        let widened = held
            .as_ref()
            .is_none_or(|before| !before.takes_every_key_of(&keys));
        *held = Some(keys);
        if narrowed {
            self.keys_narrowed
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.rechecks_pending
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        drop(held);
        if narrowed || (widened && self.holders.held_back() > 0) {
            self.start_recheck();
        }
        true
    }

    /// Changes each time a key taken before stops being taken. A link reads it before
    /// [`Mesh::vet`] and after applying the claim: when it changed, the claim may have been
    /// checked under the keys before and reached the table after the re-check copied it,
    /// so the link checks that one claim again ([`Mesh::recheck_claim`]).
    pub fn keys_narrowed(&self) -> u64 {
        self.keys_narrowed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// [`Mesh::recheck_claims`] for `peer`'s claim to `name` alone.
    pub fn recheck_claim(&self, peer: &str, name: &str) {
        let keys = self
            .holder_keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(keys) = keys {
            if self.holders.recheck_name(peer, name, &keys) {
                self.claims_refused
                    .with_label_values(&[peer, Refusal::BadProof.as_str()])
                    .inc();
                tracing::warn!(peer, name, "a claim the peer made as control's keys changed no longer checks out under them; visitors for it are not relayed there (counted in nearhop_edge_mesh_claims_refused_total with reason bad_proof)");
            }
        }
    }

    /// Starts passes of [`Mesh::recheck_claims`] (when a key was dropped) and
    /// [`Mesh::take_held_back`] on a thread of its own: up to [`MAX_NAMES_PER_PEER`]
    /// proofs a peer at ~40 µs each would hold a runtime worker for seconds. One thread at
    /// a time: a change of keys while it runs makes it run one more pass when done, so keys
    /// that flap (control instances with different secrets) cost one pass after another,
    /// not a thread each.
    ///
    /// [`MAX_NAMES_PER_PEER`]: holders::MAX_NAMES_PER_PEER
    fn start_recheck(self: &Arc<Self>) {
        let mut recheck = self.recheck.lock().unwrap_or_else(|e| e.into_inner());
        if recheck.running {
            recheck.again = true;
            return;
        }
        let mesh = self.clone();
        let started = std::thread::Builder::new()
            .name("holder-recheck".into())
            .spawn(move || mesh.recheck_until_done());
        match started {
            Ok(thread) => {
                recheck.running = true;
                recheck.thread = Some(thread);
            }
            // The pending count stays: lines said again are checked each time instead.
            Err(e) => {
                tracing::error!(error = %e, "could not start the thread that checks the peers' claims again under control's new keys; claims taken under the key dropped stay until their links reconnect")
            }
        }
    }

    /// Passes until no change of keys came during the last: each checks the claims taken
    /// again if a key was dropped ([`Mesh::recheck_claims`], the costly part, skipped when
    /// keys were only added), then the claims held back ([`Mesh::take_held_back`]).
    fn recheck_until_done(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        loop {
            // The changes made before this pass starts are covered once it has ended.
            let covered = self.rechecks_pending.load(SeqCst);
            if covered > 0 {
                self.recheck_claims();
            }
            self.take_held_back();
            self.rechecks_pending.fetch_sub(covered, SeqCst);
            let mut recheck = self.recheck.lock().unwrap_or_else(|e| e.into_inner());
            if !std::mem::take(&mut recheck.again) {
                recheck.running = false;
                return;
            }
        }
    }

    /// Checks every proven claim in the holder table again under control's keys in force,
    /// and drops those that no longer check out (see [`HolderTable::recheck_peer`]): each
    /// is counted as refused (`bad_proof`, so `NearhopMeshForgedClaim` fires), its name is
    /// no longer relayed to that peer, and one line says how many each peer lost. Returns
    /// that count per peer (peers that lost none left out). Blocks for a while with many
    /// claims: run it off the runtime's workers.
    pub fn recheck_claims(&self) -> std::collections::BTreeMap<String, usize> {
        let mut dropped = std::collections::BTreeMap::new();
        for peer in self.holders.peer_ids() {
            // The keys in force for each peer: control may have changed them again meanwhile.
            let Some(keys) = self
                .holder_keys
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
            else {
                return dropped;
            };
            let n = self.holders.recheck_peer(&peer, &keys);
            if n > 0 {
                self.claims_refused
                    .with_label_values(&[&peer, Refusal::BadProof.as_str()])
                    .inc_by(n as u64);
                dropped.insert(peer, n);
            }
        }
        if !dropped.is_empty() {
            let per_peer = counts_per_peer(&dropped);
            tracing::warn!(dropped = %per_peer, "claims peers made earlier no longer check out under control's keys for holder proofs (a key was dropped); visitors for those names are not relayed there any more (counted in nearhop_edge_mesh_claims_refused_total with reason bad_proof)");
        }
        dropped
    }

    /// Takes the claims refused or displaced earlier ([`HolderTable::hold_back`]) whose
    /// proofs check out under control's keys in force now: each is counted in
    /// `nearhop_edge_mesh_claims_taken_late_total`, visitors for it are relayed from now
    /// on, and one line says how many each peer had taken. Returns that count per peer.
    /// Blocks for a while with many held back (~40 µs a proof, at most
    /// [`MAX_HELD_BACK_PER_PEER`] a peer): run it off the runtime's workers.
    ///
    /// [`MAX_HELD_BACK_PER_PEER`]: holders::MAX_HELD_BACK_PER_PEER
    pub fn take_held_back(&self) -> std::collections::BTreeMap<String, usize> {
        let mut taken_per_peer = std::collections::BTreeMap::new();
        let narrowed = self.keys_narrowed();
        let Some(keys) = self.current_holder_keys() else {
            return taken_per_peer;
        };
        let taken = self.holders.take_held_back(&keys);
        for (peer, _) in &taken {
            *taken_per_peer.entry(peer.clone()).or_insert(0usize) += 1;
        }
        for (peer, n) in &taken_per_peer {
            self.claims_taken_late
                .with_label_values(&[peer])
                .inc_by(*n as u64);
        }
        if !taken_per_peer.is_empty() {
            let per_peer = counts_per_peer(&taken_per_peer);
            tracing::info!(taken = %per_peer, "claims refused or displaced earlier check out under control's keys for holder proofs now (they are under a key this edge did not take then, or the claim that displaced them was dropped); visitors for those names are relayed (counted in nearhop_edge_mesh_claims_taken_late_total)");
        }
        // Control's keys lost one while these were checked: a pass that copied the table
        // before they reached it may have missed them.
        if self.keys_narrowed() != narrowed {
            for (peer, name) in &taken {
                self.recheck_claim(peer, name);
            }
        }
        taken_per_peer
    }

    /// Waits for the passes of [`Mesh::recheck_claims`] started by changes of keys to end.
    #[cfg(test)]
    pub fn wait_for_recheck(&self) {
        loop {
            let thread = self
                .recheck
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .thread
                .take();
            match thread {
                Some(thread) => thread.join().expect("the re-check does not panic"),
                None => return,
            }
        }
    }

    /// Logs that control's current key for holder proofs does not parse (`e` says why); the
    /// keys known before stay in force.
    fn unparsed_key(e: &str) {
        tracing::error!(error = %e, "control sent a key for holder proofs that does not parse; keeping the one known")
    }

    /// Checks a line of `peer`'s feed before the holder table takes it: a claim to hold a
    /// name must carry control's proof for that name, kind and peer (or be accepted
    /// unproven, with `mesh_accept_unproven_claims`). What comes back is the line to apply
    /// (a proof that cannot be checked is dropped when unproven claims are accepted).
    /// A refused claim is counted, and comes back with its name; one with a proof is held
    /// back ([`HolderTable::hold_back`]), to be taken if control's keys take it later.
    /// `proves`: the peer's feed is `v3` or later, so a claim without a proof is refused
    /// whatever the setting.
    pub fn vet(
        &self,
        peer: &str,
        change: HoldingChange,
        proves: bool,
    ) -> Result<HoldingChange, (Refusal, String)> {
        let HoldingChange::Added(name, kind, proof) = change else {
            return Ok(change);
        };
        // What this peer already proved (a line said again) needs no second check: a peer
        // repeating one good line costs a lookup, not a signature check each time.
        // The signature is compared too: the table keeps the one that was checked, to
        // check it again when control's keys change. Not while such a check is pending:
        // the table may still hold the claim that check is about to drop.
        let settled = self
            .rechecks_pending
            .load(std::sync::atomic::Ordering::SeqCst)
            == 0;
        let proven_before = settled
            && proof.as_ref().is_some_and(|p| {
                self.holders
                    .holder(&name)
                    .is_some_and(|h| h.peer == peer && h.kind == kind && h.proven_by(p))
            });
        if proven_before {
            return Ok(HoldingChange::Added(name, kind, proof));
        }
        let keys = self.current_holder_keys();
        let refusal = match &proof {
            Some(p) => match &keys {
                Some(key) if key.verifies(&p.signature, &name, peer, p.tunnel_id, kind) => {
                    return Ok(HoldingChange::Added(name, kind, proof));
                }
                Some(_) => Refusal::BadProof,
                None => Refusal::NoKey,
            },
            None => Refusal::Unproven,
        };
        let may_be_unproven = match refusal {
            Refusal::Unproven => !proves,
            Refusal::NoKey => true,
            Refusal::BadProof => false,
        };
        if self.accept_unproven && may_be_unproven {
            return Ok(HoldingChange::Added(name, kind, None));
        }
        // Control's key may be one this edge has not heard of yet: kept, and taken if
        // control's next answer brings it (see `set_holder_keys`).
        if let Some(p) = &proof {
            self.holders.hold_back(peer, &name, kind, p);
            // Keys that changed between the check and now: the pass they started may
            // have looked before the claim was held back, so it is checked here instead.
            let now = self.current_holder_keys();
            if now != keys
                && now.is_some_and(|k| k.verifies(&p.signature, &name, peer, p.tunnel_id, kind))
            {
                return Ok(HoldingChange::Added(name, kind, proof));
            }
        }
        self.claims_refused
            .with_label_values(&[peer, refusal.as_str()])
            .inc();
        Err((refusal, name))
    }

    /// Control's keys for holder proofs in force now.
    fn current_holder_keys(&self) -> Option<HolderKeys> {
        self.holder_keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the peer list with control's: links to new peers are returned for the
    /// caller to start; links to peers that left (or changed address or key) are stopped
    /// and their holdings forgotten.
    pub fn set_peers(&self, list: &[PeerEdge]) -> Vec<Arc<PeerLink>> {
        let mut wanted: HashMap<String, (String, PublicKey)> = HashMap::new();
        for p in list {
            if p.edge_id == self.my_id {
                continue;
            }
            match PublicKey::from_openssh(&p.host_key) {
                Ok(key) => {
                    wanted.insert(p.edge_id.clone(), (p.mesh_addr.clone(), key));
                }
                Err(e) => {
                    tracing::warn!(peer = %p.edge_id, error = %e, "control sent a peer host key that does not parse; skipping that peer");
                }
            }
        }
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        let mut stopped = Vec::new();
        peers.retain(|id, link| {
            let keep = wanted.get(id).is_some_and(|(addr, key)| {
                *addr == link.addr && key.key_data() == link.host_key.key_data()
            });
            if !keep {
                link.stop.cancel();
                let _ = self.link_up.remove_label_values(&[id.as_str()]);
                stopped.push(id.clone());
            }
            keep
        });
        for id in stopped {
            self.holders.forget_peer(&id);
        }
        let mut started = Vec::new();
        for (id, (addr, key)) in wanted {
            if peers.contains_key(&id) {
                continue;
            }
            let link = Arc::new(PeerLink::new(
                id.clone(),
                addr,
                key,
                self.shutdown.child_token(),
                self.relay_openings_per_peer,
            ));
            peers.insert(id, link.clone());
            started.push(link);
        }
        started
    }

    /// The link to the peer edge that holds `name`, and the tunnel's kind, when a peer
    /// announced it.
    pub fn holder_of(&self, name: &str) -> Option<(Arc<PeerLink>, TunnelKind)> {
        let holder = self.holders.holder(name)?;
        Some((self.peer(&holder.peer)?, holder.kind))
    }

    /// The link to peer `id`.
    pub fn peer(&self, id: &str) -> Option<Arc<PeerLink>> {
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
        peers.get(id).cloned()
    }

    /// Relay channels being opened on each peer's link now.
    pub fn relay_openings(&self) -> Vec<(String, usize)> {
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
        peers
            .iter()
            .map(|(id, link)| (id.clone(), link.openings()))
            .collect()
    }

    /// Whether `key` is the host key control registered for peer `id` (the mesh listener's
    /// authentication).
    pub fn trusts(&self, id: &str, key: &PublicKey) -> bool {
        self.peer(id)
            .is_some_and(|link| link.host_key.key_data() == key.key_data())
    }

    /// Claims of `peer` refused for `reason` so far.
    #[cfg(test)]
    pub fn claims_refused_count(&self, peer: &str, reason: &str) -> u64 {
        self.claims_refused.with_label_values(&[peer, reason]).get()
    }

    /// Claims of `peer` refused and taken later so far ([`Mesh::take_held_back`]).
    #[cfg(test)]
    pub fn claims_taken_late_count(&self, peer: &str) -> u64 {
        self.claims_taken_late.with_label_values(&[peer]).get()
    }

    /// Ids of the peers now known.
    pub fn peer_ids(&self) -> Vec<String> {
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
        peers.keys().cloned().collect()
    }
}

/// Counts per peer as a log line writes them: `eu-1: 3, us-1: 1`.
fn counts_per_peer(counts: &std::collections::BTreeMap<String, usize>) -> String {
    counts
        .iter()
        .map(|(peer, n)| format!("{peer}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
