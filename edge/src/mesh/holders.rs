//! The holder table: which peer edge holds each live tunnel name, as the peers' holdings
//! feeds said. Visitors are routed with it without asking control, so it keeps working
//! while control and the primary are down.
//!
//! It also remembers names that were live a moment ago (here or at a peer) and wakes anyone
//! waiting when a name arrives: a tunnel whose client reconnects through another edge is
//! gone for the few seconds of the reconnect, and a visitor's request in that gap waits for
//! it instead of getting "No tunnel here".

use super::protocol::{HoldingChange, Proof};
use nearhop_wire::holder_proof::{decode_proof, HolderKeys, ProofSignature};
use nearhop_wire::TunnelKind;
use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long a name that left is remembered as "just gone".
pub const VANISHED_MEMORY: Duration = Duration::from_secs(60);
/// Most names remembered as just gone (oldest forgotten first beyond it).
const MAX_VANISHED: usize = 100_000;
/// How long the highest proven tunnel id of a name that left is remembered: a claim with a
/// lower id (an old proof of an edge that once held the name, announced again) is refused
/// meanwhile.
pub const HIGHEST_MEMORY: Duration = Duration::from_secs(3600);
/// Most names whose highest proven id is remembered beyond the live ones (oldest first).
const MAX_HIGHEST_GONE: usize = 250_000;
/// Most names one peer may announce: far above what one edge holds (each tunnel is an SSH
/// channel and a TCP connection there), and a bound on what a broken or hostile peer can
/// make this edge keep (names are at most 253 bytes).
pub const MAX_NAMES_PER_PEER: usize = 250_000;
/// Most claims of one peer held back to be taken once control's keys take their proofs
/// ([`HolderTable::hold_back`]; at most ~330 KB a peer, names of 253 bytes), as many as
/// the link checks at full speed on one connection (past them, it slows the peer's feed);
/// beyond it, the claims not kept wait for the peer's link to reconnect.
pub const MAX_HELD_BACK_PER_PEER: usize = 1024;

/// Tunnel name → the peer edge that holds it, and the tunnel's kind.
#[derive(Default)]
pub struct HolderTable {
    inner: RwLock<Tables>,
    /// Names that left (here or at a peer), and when.
    vanished: Mutex<HashMap<String, Instant>>,
    /// Woken whenever a name arrives, here or at a peer.
    arrivals: Notify,
}

#[derive(Default)]
struct Tables {
    by_name: HashMap<String, Holder>,
    /// Per name: the highest tunnel id a proven claim carried, and when it was last seen
    /// (kept after the name leaves, for [`HIGHEST_MEMORY`]).
    highest: HashMap<String, (i64, Instant)>,
    /// Per peer: the names it holds and when its feed last spoke.
    by_peer: HashMap<String, PeerHoldings>,
    /// Per peer: its claims refused because their proofs did not check out under the keys
    /// known then ([`HolderTable::hold_back`]), those a re-check dropped, and those another
    /// peer's claim displaced, by name. The peer's next line about a name replaces its
    /// entry here, as it would replace its claim.
    held_back: HashMap<String, HashMap<String, HeldBack>>,
}

/// A claim kept to be checked again once control's keys change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HeldBack {
    kind: TunnelKind,
    tunnel_id: i64,
    signature: ProofSignature,
    /// Refused as it came ([`HolderTable::hold_back`]), rather than dropped by a re-check
    /// or displaced: what an edge that missed control's new key needs back first, so it
    /// takes the place of one of the others when the peer's share is full.
    refused: bool,
}

/// Where a name is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The peer edge's id.
    pub peer: String,
    /// The tunnel's kind.
    pub kind: TunnelKind,
    /// Control's id of the tunnel, when the claim was proven (see `links`: a claim is
    /// applied only once its proof checked out, or when unproven claims are accepted).
    pub tunnel_id: Option<i64>,
    /// The proof's signature, decoded, kept to check the claim again when control's keys
    /// change ([`HolderTable::recheck_peer`]); `None` for an unproven claim. It costs 64
    /// bytes a name, inline, with no allocation (a `Holder` is 112 bytes instead of 48):
    /// 16 MB for a peer's [`MAX_NAMES_PER_PEER`], against the 86-byte text plus a `String`
    /// and its allocation if the proof were kept as it travels.
    signature: Option<ProofSignature>,
}

impl Holder {
    /// Whether this claim was taken with `proof` (the same tunnel and signature): a line
    /// said again, which needs no second check.
    pub fn proven_by(&self, proof: &Proof) -> bool {
        self.tunnel_id == Some(proof.tunnel_id)
            && self.signature.is_some()
            && self.signature == decode_proof(&proof.signature)
    }

    /// Whether this claim's proof checks out for `name` under `keys`; `true` for an
    /// unproven claim (taken under `mesh_accept_unproven_claims`, it has nothing to check).
    fn checks_out(&self, name: &str, keys: &HolderKeys) -> bool {
        let Some(tunnel_id) = self.tunnel_id else {
            return true;
        };
        self.signature.as_ref().is_some_and(|signature| {
            keys.verifies_signature(signature, name, &self.peer, tunnel_id, self.kind)
        })
    }
}

struct PeerHoldings {
    names: std::collections::HashSet<String>,
    updated: Instant,
}

impl HolderTable {
    /// Notes that `name` stopped being live somewhere (this edge's own tunnels included).
    pub fn note_gone(&self, name: &str) {
        let mut v = self.vanished.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() >= MAX_VANISHED {
            v.retain(|_, at| at.elapsed() < VANISHED_MEMORY);
        }
        if v.len() < MAX_VANISHED {
            v.insert(name.to_string(), Instant::now());
        }
    }

    /// Notes that a name became live somewhere, and wakes the waiters.
    pub fn note_arrived(&self, name: &str) {
        self.vanished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        self.arrivals.notify_waiters();
    }

    /// Whether `name` was live somewhere within [`VANISHED_MEMORY`].
    pub fn recently_gone(&self, name: &str) -> bool {
        let v = self.vanished.lock().unwrap_or_else(|e| e.into_inner());
        v.get(name).is_some_and(|at| at.elapsed() < VANISHED_MEMORY)
    }

    /// Woken whenever a name arrives (here or at a peer). Enable a `notified()` future
    /// before looking the name up again, so that an arrival in between is not missed.
    pub fn arrivals(&self) -> &Notify {
        &self.arrivals
    }

    /// Applies one line of `peer`'s feed; `false` (nothing changed): a new name past
    /// [`MAX_NAMES_PER_PEER`].
    pub fn apply(&self, peer: &str, change: HoldingChange) -> bool {
        if let HoldingChange::Added(name, ..) = &change {
            let t = self.inner.read().unwrap_or_else(|e| e.into_inner());
            if let Some(held) = t.by_peer.get(peer) {
                if held.names.len() >= MAX_NAMES_PER_PEER && !held.names.contains(name) {
                    return false;
                }
            }
        }
        let (arrived, gone) = self.apply_to_tables(peer, change);
        for name in &gone {
            self.note_gone(name);
        }
        if let Some(name) = arrived {
            self.note_arrived(&name);
        }
        true
    }

    /// The table part of [`HolderTable::apply`]: the name that arrived, the names that left.
    fn apply_to_tables(&self, peer: &str, change: HoldingChange) -> (Option<String>, Vec<String>) {
        let mut t = self.inner.write().unwrap_or_else(|e| e.into_inner());
        // The peer's latest word on a name replaces a claim of it held back.
        match &change {
            HoldingChange::Added(name, ..) | HoldingChange::Removed(name) => {
                if let Some(kept) = t.held_back.get_mut(peer) {
                    kept.remove(name);
                }
            }
            HoldingChange::Reset => {
                t.held_back.remove(peer);
            }
            HoldingChange::Sync(_) => {}
        }
        t.spoke(peer);
        match change {
            HoldingChange::Added(name, kind, proof) => {
                let tunnel_id = proof.as_ref().map(|p| p.tunnel_id);
                let signature = proof.and_then(|p| decode_proof(&p.signature));
                match t.add(peer, name, kind, tunnel_id, signature) {
                    Ok(name) => (Some(name), Vec::new()),
                    // A higher id holds the name: this claim, the peer's latest word, is
                    // held back as displaced (see `Tables::add`).
                    Err(name) => {
                        if let (Some(tunnel_id), Some(signature)) = (tunnel_id, signature) {
                            let claim = HeldBack {
                                kind,
                                tunnel_id,
                                signature,
                                refused: false,
                            };
                            hold(&mut t.held_back, peer, name, claim);
                        }
                        (None, Vec::new())
                    }
                }
            }
            change => (None, t.apply_other(peer, change)),
        }
    }

    /// Checks every proven claim of `peer` again under `keys` (control's keys changed and
    /// one taken before is no longer), and drops those that do not check out, as if the
    /// peer had said they were gone. Returns how many were dropped. The proofs are checked
    /// outside the table's lock (~40 µs each; a peer holds up to [`MAX_NAMES_PER_PEER`]):
    /// the peer's claims are copied under the read lock (one peer at a time, so the copy
    /// holds at most a peer's names), and a claim is dropped under the write lock only if it
    /// is still the one checked, so that a claim that arrived meanwhile (checked by the link
    /// under the keys in force) stays.
    pub fn recheck_peer(&self, peer: &str, keys: &HolderKeys) -> usize {
        let claims: Vec<(String, Holder)> = {
            let t = self.inner.read().unwrap_or_else(|e| e.into_inner());
            let Some(held) = t.by_peer.get(peer) else {
                return 0;
            };
            held.names
                .iter()
                .filter_map(|name| {
                    let holder = t.by_name.get(name)?;
                    (holder.peer == peer && holder.tunnel_id.is_some())
                        .then(|| (name.clone(), holder.clone()))
                })
                .collect()
        };
        let failed: Vec<(String, Holder)> = claims
            .into_iter()
            .filter(|(name, holder)| !holder.checks_out(name, keys))
            .collect();
        if failed.is_empty() {
            return 0;
        }
        let gone = self.drop_unchanged(peer, failed);
        for name in &gone {
            self.note_gone(name);
        }
        gone.len()
    }

    /// [`HolderTable::recheck_peer`] for `peer`'s claim to `name` alone; `true`: it was
    /// dropped.
    pub fn recheck_name(&self, peer: &str, name: &str, keys: &HolderKeys) -> bool {
        let Some(holder) = self.holder(name).filter(|h| h.peer == peer) else {
            return false;
        };
        if holder.checks_out(name, keys) {
            return false;
        }
        let gone = self.drop_unchanged(peer, vec![(name.to_string(), holder)]);
        for name in &gone {
            self.note_gone(name);
        }
        !gone.is_empty()
    }

    /// The table part of [`HolderTable::recheck_peer`]: drops each claim of `failed` that is
    /// still in the table as it was checked, and holds it back (see
    /// [`HolderTable::hold_back`]: control's keys may take it again, when control instances
    /// with different secrets answer in turn or the old secret is put back); returns the
    /// names dropped.
    fn drop_unchanged(&self, peer: &str, failed: Vec<(String, Holder)>) -> Vec<String> {
        let mut t = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let Tables {
            by_name,
            by_peer,
            highest,
            held_back,
        } = &mut *t;
        let mut gone = Vec::new();
        for (name, checked) in failed {
            if by_name.get(&name) != Some(&checked) {
                continue;
            }
            by_name.remove(&name);
            if let Some(held) = by_peer.get_mut(peer) {
                held.names.remove(&name);
            }
            // A claim forged with a leaked key may carry any tunnel id: the highest one
            // remembered for the name is forgotten with it, or the genuine holder's claims
            // (a lower id) would be refused for an hour.
            if highest.get(&name).map(|(id, _)| Some(*id)) == Some(checked.tunnel_id) {
                highest.remove(&name);
            }
            if let (Some(tunnel_id), Some(signature)) = (checked.tunnel_id, checked.signature) {
                let claim = HeldBack {
                    kind: checked.kind,
                    tunnel_id,
                    signature,
                    refused: false,
                };
                hold(held_back, peer, name.clone(), claim);
            }
            gone.push(name);
        }
        gone
    }

    /// The peers that have a feed here.
    pub fn peer_ids(&self) -> Vec<String> {
        let t = self.inner.read().unwrap_or_else(|e| e.into_inner());
        t.by_peer.keys().cloned().collect()
    }

    /// The highest proven tunnel id remembered for `name`.
    pub fn highest_proven(&self, name: &str) -> Option<i64> {
        let t = self.inner.read().unwrap_or_else(|e| e.into_inner());
        t.highest.get(name).map(|(id, _)| *id)
    }

    /// Keeps `peer`'s claim to `name`, refused because its proof did not check out under
    /// the keys known now (or none was known), to be taken if control's keys take it later
    /// ([`HolderTable::take_held_back`]): an edge that had not heard of control's new key
    /// yet (its heartbeats failed while control rotated, or control instances disagree)
    /// would otherwise not relay that tunnel until the peer's link reconnected. `false`:
    /// not kept (the proof is not one, or the peer has [`MAX_HELD_BACK_PER_PEER`] kept).
    pub fn hold_back(&self, peer: &str, name: &str, kind: TunnelKind, proof: &Proof) -> bool {
        let Some(signature) = decode_proof(&proof.signature) else {
            return false;
        };
        let claim = HeldBack {
            kind,
            tunnel_id: proof.tunnel_id,
            signature,
            refused: true,
        };
        let mut t = self.inner.write().unwrap_or_else(|e| e.into_inner());
        hold(&mut t.held_back, peer, name.to_string(), claim)
    }

    /// Takes the claims held back ([`HolderTable::hold_back`]) whose proofs check out under
    /// `keys`, as if their peers had just made them; returns them as (peer, name). The
    /// proofs are checked outside the table's lock, and a claim is taken only if it is
    /// still the one held back: a line its peer said about the name meanwhile stands.
    pub fn take_held_back(&self, keys: &HolderKeys) -> Vec<(String, String)> {
        let kept: Vec<(String, String, HeldBack)> = {
            let t = self.inner.read().unwrap_or_else(|e| e.into_inner());
            t.held_back
                .iter()
                .flat_map(|(peer, kept)| {
                    kept.iter()
                        .map(|(name, claim)| (peer.clone(), name.clone(), claim.clone()))
                })
                .collect()
        };
        let good: Vec<(String, String, HeldBack)> = kept
            .into_iter()
            .filter(|(peer, name, c)| {
                keys.verifies_signature(&c.signature, name, peer, c.tunnel_id, c.kind)
            })
            .collect();
        if good.is_empty() {
            return Vec::new();
        }
        let mut taken = Vec::new();
        {
            let mut t = self.inner.write().unwrap_or_else(|e| e.into_inner());
            for (peer, name, claim) in good {
                let Some(kept) = t.held_back.get_mut(&peer) else {
                    continue;
                };
                if kept.get(&name) != Some(&claim) {
                    continue;
                }
                kept.remove(&name);
                let full = t.by_peer.get(&peer).is_some_and(|held| {
                    held.names.len() >= MAX_NAMES_PER_PEER && !held.names.contains(&name)
                });
                if full {
                    continue;
                }
                let HeldBack {
                    kind,
                    tunnel_id,
                    signature,
                    ..
                } = claim.clone();
                match t.add(&peer, name, kind, Some(tunnel_id), Some(signature)) {
                    Ok(name) => taken.push((peer, name)),
                    // Still displaced by a higher id: kept for when that claim goes.
                    Err(name) => {
                        hold(&mut t.held_back, &peer, name, claim);
                    }
                }
            }
            // Two peers' claims to one name taken in one pass: the higher id displaced the
            // other again, which is held back and not counted as taken.
            taken.retain(|(peer, name)| t.by_name.get(name).is_some_and(|h| h.peer == *peer));
        }
        for (_, name) in &taken {
            self.note_arrived(name);
        }
        taken
    }

    /// How many refused claims are held back ([`HolderTable::hold_back`]).
    pub fn held_back(&self) -> usize {
        let t = self.inner.read().unwrap_or_else(|e| e.into_inner());
        t.held_back.values().map(HashMap::len).sum()
    }

    /// Forgets everything `peer` said (its feed ended, or it left the mesh).
    pub fn forget_peer(&self, peer: &str) {
        let mut gone = Vec::new();
        {
            let mut t = self.inner.write().unwrap_or_else(|e| e.into_inner());
            t.held_back.remove(peer);
            if let Some(held) = t.by_peer.remove(peer) {
                for name in held.names {
                    if t.by_name.get(&name).is_some_and(|h| h.peer == peer) {
                        t.by_name.remove(&name);
                        gone.push(name);
                    }
                }
            }
        }
        for name in &gone {
            self.note_gone(name);
        }
    }

    /// The peer that holds `name`, if any peer said so.
    pub fn holder(&self, name: &str) -> Option<Holder> {
        let t = self.inner.read().unwrap_or_else(|e| e.into_inner());
        t.by_name.get(name).cloned()
    }

    /// Number of names held by peers.
    pub fn len(&self) -> usize {
        let t = self.inner.read().unwrap_or_else(|e| e.into_inner());
        t.by_name.len()
    }

    /// Whether no peer holds any name.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Per peer: how many names it holds and how long ago its feed last spoke.
    pub fn peers(&self) -> Vec<(String, usize, Duration)> {
        let t = self.inner.read().unwrap_or_else(|e| e.into_inner());
        t.by_peer
            .iter()
            .map(|(p, h)| (p.clone(), h.names.len(), h.updated.elapsed()))
            .collect()
    }
}

impl Tables {
    /// `peer`'s holdings, made if it has none yet.
    fn holdings(&mut self, peer: &str) -> &mut PeerHoldings {
        self.by_peer
            .entry(peer.to_string())
            .or_insert_with(|| PeerHoldings {
                names: Default::default(),
                updated: Instant::now(),
            })
    }

    /// `peer`'s holdings, marked as just spoken (a line of its feed came).
    fn spoke(&mut self, peer: &str) -> &mut PeerHoldings {
        let held = self.holdings(peer);
        held.updated = Instant::now();
        held
    }

    /// Takes `peer`'s claim to `name` (its proof already checked, if it has one); the name
    /// back either way, as `Err` if the claim was not taken (a higher id holds the name, or
    /// an unproven claim met a proven one).
    fn add(
        &mut self,
        peer: &str,
        name: String,
        kind: TunnelKind,
        tunnel_id: Option<i64>,
        signature: Option<ProofSignature>,
    ) -> Result<String, String> {
        self.holdings(peer);
        let Tables {
            by_name,
            by_peer,
            highest,
            held_back,
        } = self;
        // A name moves between edges on a takeover. A proven claim wins only with a tunnel
        // id at least the highest proven for the name so far (control's newer tunnel),
        // whichever feed spoke last, and that highest id is remembered after the name
        // leaves: an old proof announced again (by an edge that once held the name) never
        // takes it back. An unproven claim (accepted only from peers on an older feed)
        // never displaces a proven one; between unproven claims the newest wins. Either
        // way the old holder's later "removed" does not undo it (`apply_other`).
        let refused = match tunnel_id {
            Some(t) => highest.get(&name).is_some_and(|(h, _)| t < *h),
            None => by_name.get(&name).is_some_and(|h| h.tunnel_id.is_some()),
        };
        if refused {
            return Err(name);
        }
        if let Some(t) = tunnel_id {
            if highest.len() >= MAX_HIGHEST_GONE + by_name.len() {
                forget_oldest_gone(highest, by_name);
            }
            highest.insert(name.clone(), (t, Instant::now()));
        }
        let holder = Holder {
            peer: peer.to_string(),
            kind,
            tunnel_id,
            signature,
        };
        if let Some(previous) = by_name.insert(name.clone(), holder) {
            if previous.peer != peer {
                if let Some(p) = by_peer.get_mut(&previous.peer) {
                    p.names.remove(&name);
                }
                // The claim displaced is held back: should the new one be dropped by a
                // re-check (forged with a leaked key), the pass takes this one back if it
                // checks out, rather than leaving the name held nowhere here until its
                // holder announces it again. A genuine takeover's new claim stays, and its
                // higher id keeps the old one out; the old holder's "removed" discards it.
                if let (Some(tunnel_id), Some(signature)) = (previous.tunnel_id, previous.signature)
                {
                    let claim = HeldBack {
                        kind: previous.kind,
                        tunnel_id,
                        signature,
                        refused: false,
                    };
                    hold(held_back, &previous.peer, name.clone(), claim);
                }
            }
        }
        if let Some(held) = by_peer.get_mut(peer) {
            held.names.insert(name.clone());
        }
        Ok(name)
    }

    /// Applies a line of `peer`'s feed other than a claim; the names that left. The peer's
    /// "removed" undoes only its own claim: a name another edge took over stays there.
    fn apply_other(&mut self, peer: &str, change: HoldingChange) -> Vec<String> {
        let Tables {
            by_name, by_peer, ..
        } = self;
        let Some(held) = by_peer.get_mut(peer) else {
            return Vec::new();
        };
        match change {
            HoldingChange::Removed(name) => {
                held.names.remove(&name);
                if by_name.get(&name).is_some_and(|h| h.peer == peer) {
                    by_name.remove(&name);
                    return vec![name];
                }
                Vec::new()
            }
            HoldingChange::Reset => {
                let mut gone = Vec::new();
                for name in std::mem::take(&mut held.names) {
                    if by_name.get(&name).is_some_and(|h| h.peer == peer) {
                        by_name.remove(&name);
                        gone.push(name);
                    }
                }
                gone
            }
            // Markers are answered by the link; they change no table.
            HoldingChange::Added(..) | HoldingChange::Sync(_) => Vec::new(),
        }
    }
}

/// Holds back `peer`'s `claim` to `name` (see [`HolderTable::hold_back`]); `false`: not
/// kept, the peer has [`MAX_HELD_BACK_PER_PEER`] others kept (a claim refused as it came
/// takes the place of one dropped or displaced, if there is one). A claim refused as it
/// came replaces the one held back for the name: it is the peer's latest word. One that
/// comes from the table (dropped by a re-check, displaced) never does: a claim held back
/// beside the peer's claim in the table came after it, since the table taking a line
/// discards what was held back for the name.
fn hold(
    held_back: &mut HashMap<String, HashMap<String, HeldBack>>,
    peer: &str,
    name: String,
    claim: HeldBack,
) -> bool {
    let kept = held_back.entry(peer.to_string()).or_default();
    if !claim.refused && kept.contains_key(&name) {
        return false;
    }
    if kept.len() >= MAX_HELD_BACK_PER_PEER && !kept.contains_key(&name) {
        let evicted = claim
            .refused
            .then(|| {
                kept.iter()
                    .find(|(_, c)| !c.refused)
                    .map(|(n, _)| n.clone())
            })
            .flatten();
        match evicted {
            Some(other) => {
                kept.remove(&other);
            }
            None => return false,
        }
    }
    kept.insert(name, claim);
    true
}

/// Makes room in `highest`: the names not live now and seen longest ago go first (those
/// past [`HIGHEST_MEMORY`] in any case).
fn forget_oldest_gone(
    highest: &mut HashMap<String, (i64, Instant)>,
    live: &HashMap<String, Holder>,
) {
    highest.retain(|name, (_, at)| live.contains_key(name) || at.elapsed() < HIGHEST_MEMORY);
    let gone = highest.len().saturating_sub(live.len());
    if gone >= MAX_HIGHEST_GONE {
        let mut ages: Vec<Instant> = highest
            .iter()
            .filter(|(name, _)| !live.contains_key(*name))
            .map(|(_, (_, at))| *at)
            .collect();
        ages.sort_unstable();
        // Keep the newer half of those gone.
        let cut = ages[ages.len() / 2];
        highest.retain(|name, (_, at)| live.contains_key(name) || *at >= cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(n: &str) -> HoldingChange {
        HoldingChange::Added(n.into(), TunnelKind::Http, None)
    }

    fn add_proven(n: &str, tunnel_id: i64) -> HoldingChange {
        let signature = "A".repeat(86);
        let proof = super::super::protocol::Proof {
            tunnel_id,
            signature,
        };
        HoldingChange::Added(n.into(), TunnelKind::Http, Some(proof))
    }

    fn peer_of(t: &HolderTable, n: &str) -> Option<String> {
        t.holder(n).map(|h| h.peer)
    }

    #[test]
    fn a_name_is_found_at_the_peer_that_announced_it_until_removed() {
        let t = HolderTable::default();
        t.apply("eu-1", add("blog.a.test"));
        assert_eq!(peer_of(&t, "blog.a.test").as_deref(), Some("eu-1"));
        t.apply("eu-1", HoldingChange::Removed("blog.a.test".into()));
        assert_eq!(peer_of(&t, "blog.a.test"), None);
        assert!(t.is_empty());
    }

    #[test]
    fn a_takeover_moves_the_name_and_the_old_holders_removal_keeps_the_new() {
        let t = HolderTable::default();
        t.apply("eu-1", add("blog.a.test"));
        t.apply("ap-1", add("blog.a.test"));
        t.apply("eu-1", HoldingChange::Removed("blog.a.test".into()));
        assert_eq!(peer_of(&t, "blog.a.test").as_deref(), Some("ap-1"));
        t.forget_peer("eu-1");
        assert_eq!(peer_of(&t, "blog.a.test").as_deref(), Some("ap-1"));
    }

    #[test]
    fn of_two_proven_claims_the_newer_tunnel_wins_whatever_the_order() {
        let t = HolderTable::default();
        // The new holder's feed spoke first; the old holder's snapshot comes late.
        t.apply("ap-1", add_proven("blog.a.test", 9));
        t.apply("eu-1", add_proven("blog.a.test", 7));
        assert_eq!(peer_of(&t, "blog.a.test").as_deref(), Some("ap-1"));
        assert_eq!(t.holder("blog.a.test").and_then(|h| h.tunnel_id), Some(9));
        // The loser's removal changes nothing; its feed ending neither.
        t.apply("eu-1", HoldingChange::Removed("blog.a.test".into()));
        t.forget_peer("eu-1");
        assert_eq!(peer_of(&t, "blog.a.test").as_deref(), Some("ap-1"));
        // A newer tunnel anywhere takes it; an older one never, not even from its holder.
        t.apply("eu-1", add_proven("blog.a.test", 12));
        assert_eq!(peer_of(&t, "blog.a.test").as_deref(), Some("eu-1"));
        t.apply("eu-1", add_proven("blog.a.test", 11));
        assert_eq!(t.holder("blog.a.test").and_then(|h| h.tunnel_id), Some(12));
    }

    #[test]
    fn an_old_proof_announced_again_after_the_name_left_takes_nothing() {
        let t = HolderTable::default();
        t.apply("ap-1", add_proven("blog.a.test", 9));
        // The holder leaves (its tunnel closed, its feed reset, its link lost).
        t.apply("ap-1", HoldingChange::Removed("blog.a.test".into()));
        t.apply("eu-1", add_proven("blog.a.test", 7));
        assert_eq!(
            peer_of(&t, "blog.a.test"),
            None,
            "a proof older than the last"
        );
        t.apply("ap-1", add_proven("blog.a.test", 9));
        t.apply("ap-1", HoldingChange::Reset);
        t.forget_peer("ap-1");
        t.apply("eu-1", add_proven("blog.a.test", 7));
        assert_eq!(peer_of(&t, "blog.a.test"), None);
        assert_eq!(t.highest_proven("blog.a.test"), Some(9));
        // The tunnel back (the same id), or a newer one, is taken.
        t.apply("ap-1", add_proven("blog.a.test", 9));
        assert_eq!(peer_of(&t, "blog.a.test").as_deref(), Some("ap-1"));
        t.apply("eu-1", add_proven("blog.a.test", 10));
        assert_eq!(peer_of(&t, "blog.a.test").as_deref(), Some("eu-1"));
    }

    #[test]
    fn an_unproven_claim_never_displaces_a_proven_one() {
        let t = HolderTable::default();
        t.apply("eu-1", add_proven("blog.a.test", 7));
        t.apply("ap-1", add("blog.a.test"));
        assert_eq!(peer_of(&t, "blog.a.test").as_deref(), Some("eu-1"));
        // With no proven holder now, an unproven claim is taken (a fleet mid-upgrade).
        t.apply("eu-1", HoldingChange::Removed("blog.a.test".into()));
        t.apply("ap-1", add("blog.a.test"));
        assert_eq!(peer_of(&t, "blog.a.test").as_deref(), Some("ap-1"));
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_kept_proof_costs_64_bytes_a_name() {
        assert_eq!(std::mem::size_of::<Holder>(), 48 + 64);
    }

    #[test]
    fn a_claim_replaced_while_the_recheck_checked_it_is_not_dropped() {
        use nearhop_wire::holder_proof::HolderSigner;
        let old = HolderSigner::from_secret("the-leaked-holder-secret");
        let new = HolderSigner::from_secret("the-new-holder-secret");
        let keys = HolderKeys::parse(&new.public_key(), None).expect("keys");
        let t = HolderTable::default();
        t.apply(
            "eu-1",
            HoldingChange::proven(&old, "eu-1", "blog.a.test", 7),
        );
        t.apply(
            "eu-1",
            HoldingChange::proven(&old, "eu-1", "shop.a.test", 7),
        );
        t.apply(
            "eu-1",
            HoldingChange::proven(&old, "eu-1", "gone.a.test", 7),
        );
        // What the re-check copied under the read lock, and found not to check out.
        let copied = |n: &str| (n.to_string(), t.holder(n).expect("held"));
        let failed = vec![
            copied("blog.a.test"),
            copied("shop.a.test"),
            copied("gone.a.test"),
        ];
        assert!(failed.iter().all(|(n, h)| !h.checks_out(n, &keys)));
        // Meanwhile eu-1 announced blog's tunnel again with a proof under the new key, and
        // ap-1 took shop over.
        t.apply(
            "eu-1",
            HoldingChange::proven(&new, "eu-1", "blog.a.test", 7),
        );
        t.apply(
            "ap-1",
            HoldingChange::proven(&new, "ap-1", "shop.a.test", 8),
        );
        assert_eq!(
            t.drop_unchanged("eu-1", failed),
            vec!["gone.a.test".to_string()]
        );
        assert_eq!(peer_of(&t, "blog.a.test").as_deref(), Some("eu-1"));
        assert_eq!(peer_of(&t, "shop.a.test").as_deref(), Some("ap-1"));
        assert_eq!(peer_of(&t, "gone.a.test"), None);
        // Checked again as they are now, both stand.
        assert_eq!(t.recheck_peer("eu-1", &keys), 0);
        assert_eq!(t.recheck_peer("ap-1", &keys), 0);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn names_that_leave_are_remembered_until_they_arrive_again() {
        let t = HolderTable::default();
        assert!(!t.recently_gone("blog.a.test"));
        t.apply("eu-1", add("blog.a.test"));
        t.apply("eu-1", HoldingChange::Removed("blog.a.test".into()));
        assert!(t.recently_gone("blog.a.test"));
        t.apply("ap-1", add("blog.a.test"));
        assert!(!t.recently_gone("blog.a.test"), "it arrived at ap");
        t.forget_peer("ap-1");
        assert!(t.recently_gone("blog.a.test"), "a lost feed counts as gone");
    }

    #[tokio::test]
    async fn an_arrival_wakes_a_waiter() {
        let t = std::sync::Arc::new(HolderTable::default());
        let waiter = {
            let t = t.clone();
            tokio::spawn(async move { t.arrivals().notified().await })
        };
        // Until the waiter is parked, an arrival may be missed; keep announcing.
        while !waiter.is_finished() {
            t.apply("eu-1", add("blog.a.test"));
            tokio::task::yield_now().await;
        }
        waiter.await.expect("woken");
    }

    #[test]
    fn reset_and_forget_drop_only_that_peers_names() {
        let t = HolderTable::default();
        t.apply("eu-1", add("a.a.test"));
        t.apply("eu-1", add("b.a.test"));
        t.apply("ap-1", add("c.a.test"));
        t.apply("eu-1", HoldingChange::Reset);
        assert_eq!(peer_of(&t, "a.a.test"), None);
        assert_eq!(peer_of(&t, "c.a.test").as_deref(), Some("ap-1"));
        t.forget_peer("ap-1");
        assert!(t.is_empty());
        assert_eq!(t.peers().len(), 1, "eu-1 still has a (now empty) feed");
    }

    #[test]
    fn a_peer_announcing_more_than_its_cap_is_refused_past_it() {
        let t = HolderTable::default();
        for i in 0..MAX_NAMES_PER_PEER {
            assert!(t.apply("eu-1", add(&format!("n{i}.a.test"))));
        }
        assert!(!t.apply("eu-1", add("one-more.a.test")), "past the cap");
        assert!(t.holder("one-more.a.test").is_none());
        assert!(
            t.apply("eu-1", add("n0.a.test")),
            "a name it holds may be said again"
        );
        assert!(
            t.apply("ap-1", add("one-more.a.test")),
            "other peers have their own cap"
        );
    }

    #[test]
    fn a_claim_held_back_is_taken_once_the_keys_take_its_proof() {
        use nearhop_wire::holder_proof::HolderSigner;
        let old = HolderSigner::from_secret("the-old-holder-secret");
        let new = HolderSigner::from_secret("the-new-holder-secret");
        let old_only = HolderKeys::parse(&old.public_key(), None).expect("keys");
        let both = HolderKeys::parse(&new.public_key(), Some(&old.public_key())).expect("keys");
        let t = HolderTable::default();
        let proof = Proof::by(&new, "eu-1", "blog.a.test", 3);
        assert!(t.hold_back("eu-1", "blog.a.test", TunnelKind::Http, &proof));
        assert_eq!(t.held_back(), 1);
        assert!(t.holder("blog.a.test").is_none(), "held back, not taken");
        assert!(t.take_held_back(&old_only).is_empty());
        assert_eq!(t.held_back(), 1, "still waiting for the key");
        assert_eq!(
            t.take_held_back(&both),
            vec![("eu-1".to_string(), "blog.a.test".to_string())]
        );
        let holder = t.holder("blog.a.test").expect("taken");
        assert_eq!((holder.peer.as_str(), holder.tunnel_id), ("eu-1", Some(3)));
        assert!(holder.proven_by(&proof), "its signature kept for re-checks");
        assert_eq!(t.held_back(), 0);
        // Taken as a claim said then would be: a lower id than the name's highest is not,
        // and stays held back, displaced.
        let stale = Proof::by(&new, "ap-1", "blog.a.test", 2);
        assert!(t.hold_back("ap-1", "blog.a.test", TunnelKind::Http, &stale));
        assert!(t.take_held_back(&both).is_empty());
        assert_eq!(peer_of(&t, "blog.a.test").as_deref(), Some("eu-1"));
        assert_eq!(t.held_back(), 1);
        // A proof under no key control sends stays held back (a forged one: until the
        // peer's link ends).
        let stranger = HolderSigner::from_secret("nobodys-holder-secret");
        let forged = Proof::by(&stranger, "ap-1", "bank.a.test", 9);
        assert!(t.hold_back("ap-1", "bank.a.test", TunnelKind::Http, &forged));
        assert!(t.take_held_back(&both).is_empty());
        assert_eq!(t.held_back(), 2);
        t.forget_peer("ap-1");
        assert_eq!(t.held_back(), 0, "forgotten with the peer's feed");
    }

    #[test]
    fn the_peers_later_word_on_a_name_replaces_its_claim_held_back() {
        use nearhop_wire::holder_proof::HolderSigner;
        let new = HolderSigner::from_secret("the-new-holder-secret");
        let keys = HolderKeys::parse(&new.public_key(), None).expect("keys");
        let t = HolderTable::default();
        let hold = |name: &str, id: i64| {
            assert!(t.hold_back(
                "eu-1",
                name,
                TunnelKind::Http,
                &Proof::by(&new, "eu-1", name, id)
            ));
        };
        hold("gone.a.test", 1);
        hold("moved.a.test", 2);
        hold("again.a.test", 4);
        // The tunnel closed meanwhile: its "removed" is the last word.
        t.apply("eu-1", HoldingChange::Removed("gone.a.test".into()));
        // A newer claim taken meanwhile stands, not the one held back.
        t.apply("eu-1", add_proven("again.a.test", 5));
        t.apply("ap-1", add("moved.a.test"));
        t.apply("eu-1", HoldingChange::Removed("moved.a.test".into()));
        assert!(t.take_held_back(&keys).is_empty());
        assert!(t.holder("gone.a.test").is_none());
        assert!(t.holder("moved.a.test").is_some_and(|h| h.peer == "ap-1"));
        assert_eq!(t.holder("again.a.test").and_then(|h| h.tunnel_id), Some(5));
        // A reset drops all of the peer's.
        hold("gone.a.test", 6);
        t.apply("eu-1", HoldingChange::Reset);
        assert!(t.take_held_back(&keys).is_empty());
        assert_eq!(t.held_back(), 0);
        // A claim held back again replaces the earlier one of the name.
        hold("twice.a.test", 7);
        hold("twice.a.test", 8);
        assert_eq!(t.held_back(), 1);
        t.take_held_back(&keys);
        assert_eq!(t.holder("twice.a.test").and_then(|h| h.tunnel_id), Some(8));
    }

    #[test]
    fn a_claim_refused_as_it_comes_takes_the_place_of_one_dropped_in_a_full_share() {
        use nearhop_wire::holder_proof::HolderSigner;
        let old = HolderSigner::from_secret("the-old-holder-secret");
        let new = HolderSigner::from_secret("the-new-holder-secret");
        let old_only = HolderKeys::parse(&old.public_key(), None).expect("keys");
        let new_only = HolderKeys::parse(&new.public_key(), None).expect("keys");
        let t = HolderTable::default();
        // A peer's share filled with claims a re-check dropped (the old key gone).
        for i in 0..MAX_HELD_BACK_PER_PEER {
            let name = format!("n{i}.a.test");
            let proof = Proof::by(&old, "eu-1", &name, 1);
            t.apply(
                "eu-1",
                HoldingChange::Added(name, TunnelKind::Http, Some(proof)),
            );
        }
        assert_eq!(t.recheck_peer("eu-1", &new_only), MAX_HELD_BACK_PER_PEER);
        assert_eq!(t.held_back(), MAX_HELD_BACK_PER_PEER);
        // A claim under a key this edge has not heard of yet still finds a place.
        let fresh = Proof::by(&new, "eu-1", "fresh.a.test", 2);
        assert!(t.hold_back("eu-1", "fresh.a.test", TunnelKind::Http, &fresh));
        assert_eq!(t.held_back(), MAX_HELD_BACK_PER_PEER);
        let taken = t.take_held_back(&new_only);
        assert_eq!(
            taken,
            vec![("eu-1".to_string(), "fresh.a.test".to_string())]
        );
        // A dropped one does not push out another.
        let more = Proof::by(&old, "eu-1", "more.a.test", 3);
        t.apply(
            "eu-1",
            HoldingChange::Added("more.a.test".into(), TunnelKind::Http, Some(more)),
        );
        assert_eq!(t.recheck_peer("eu-1", &old_only), 1, "fresh.a.test dropped");
        assert_eq!(t.recheck_peer("eu-1", &new_only), 1, "more.a.test dropped");
        assert_eq!(t.held_back(), MAX_HELD_BACK_PER_PEER);
        let taken = t.take_held_back(&old_only);
        assert_eq!(taken.len(), MAX_HELD_BACK_PER_PEER - 1, "the n* ones");
        assert!(!taken.iter().any(|(_, name)| name == "more.a.test"));
    }

    #[test]
    fn a_peer_has_at_most_its_share_held_back() {
        let t = HolderTable::default();
        let proof = Proof {
            tunnel_id: 1,
            signature: "A".repeat(86),
        };
        for i in 0..MAX_HELD_BACK_PER_PEER {
            assert!(t.hold_back("eu-1", &format!("n{i}.a.test"), TunnelKind::Http, &proof));
        }
        assert!(!t.hold_back("eu-1", "one-more.a.test", TunnelKind::Http, &proof));
        assert!(t.hold_back("eu-1", "n0.a.test", TunnelKind::Http, &proof));
        assert!(t.hold_back("ap-1", "one-more.a.test", TunnelKind::Http, &proof));
        let not_a_proof = Proof {
            tunnel_id: 1,
            signature: "short".into(),
        };
        assert!(!t.hold_back("ap-1", "x.a.test", TunnelKind::Http, &not_a_proof));
        assert_eq!(t.held_back(), MAX_HELD_BACK_PER_PEER + 1);
    }

    #[test]
    fn a_claim_displaced_by_one_a_recheck_drops_is_taken_back() {
        use nearhop_wire::holder_proof::HolderSigner;
        let new = HolderSigner::from_secret("the-new-holder-secret");
        let leaked = HolderSigner::from_secret("the-leaked-holder-secret");
        let both = HolderKeys::parse(&new.public_key(), Some(&leaked.public_key())).expect("keys");
        let new_only = HolderKeys::parse(&new.public_key(), None).expect("keys");
        let t = HolderTable::default();
        let claim = HoldingChange::proven;
        // A genuine takeover: the old holder's claim is held back until it says "removed".
        t.apply("eu-1", claim(&new, "eu-1", "moved.a.test", 1));
        t.apply("us-1", claim(&new, "us-1", "moved.a.test", 2));
        assert_eq!(t.held_back(), 1);
        t.apply("eu-1", HoldingChange::Removed("moved.a.test".into()));
        assert_eq!(t.held_back(), 0);
        assert_eq!(peer_of(&t, "moved.a.test").as_deref(), Some("us-1"));
        // Forged with the leaked key, a higher id takes ap-1's name.
        t.apply("ap-1", claim(&new, "ap-1", "shop.a.test", 5));
        t.apply("eu-1", claim(&leaked, "eu-1", "shop.a.test", 1_000_000));
        assert_eq!(peer_of(&t, "shop.a.test").as_deref(), Some("eu-1"));
        assert!(
            t.take_held_back(&both).is_empty(),
            "the forger's id keeps it out"
        );
        assert_eq!(t.held_back(), 1, "and it stays held back");
        t.apply("ap-1", claim(&new, "ap-1", "shop.a.test", 5));
        assert_eq!(peer_of(&t, "shop.a.test").as_deref(), Some("eu-1"));
        // The leaked key dropped: the forged claim goes, ap-1's comes back.
        assert_eq!(t.recheck_peer("eu-1", &new_only), 1);
        assert_eq!(
            t.take_held_back(&new_only),
            vec![("ap-1".to_string(), "shop.a.test".to_string())]
        );
        assert_eq!(peer_of(&t, "shop.a.test").as_deref(), Some("ap-1"));
    }

    /// A claim held back beside the peer's claim in the table is the peer's later word:
    /// the older one, displaced or dropped, does not replace it.
    #[test]
    fn an_older_claim_displaced_or_dropped_does_not_replace_the_later_one_held_back() {
        use nearhop_wire::holder_proof::HolderSigner;
        let k0 = HolderSigner::from_secret("the-first-holder-secret");
        let k1 = HolderSigner::from_secret("the-second-holder-secret");
        let both = HolderKeys::parse(&k1.public_key(), Some(&k0.public_key())).expect("keys");
        let k1_only = HolderKeys::parse(&k1.public_key(), None).expect("keys");
        let claim = |signer: &HolderSigner, peer: &str, id: i64| {
            HoldingChange::proven(signer, peer, "n.a.test", id)
        };
        let later = Proof::by(&k1, "eu-1", "n.a.test", 7);
        // Displaced: us-1's id 6 takes the name from eu-1's id 5 while eu-1's id 7, under
        // a key this edge has not heard of yet, is held back.
        let t = HolderTable::default();
        t.apply("eu-1", claim(&k0, "eu-1", 5));
        assert!(t.hold_back("eu-1", "n.a.test", TunnelKind::Http, &later));
        t.apply("us-1", claim(&k0, "us-1", 6));
        t.apply("us-1", HoldingChange::Removed("n.a.test".into()));
        assert_eq!(
            t.take_held_back(&both),
            vec![("eu-1".to_string(), "n.a.test".to_string())]
        );
        assert_eq!(t.holder("n.a.test").and_then(|h| h.tunnel_id), Some(7));
        // Dropped: control switches to the new key alone; the re-check drops id 5.
        let t = HolderTable::default();
        t.apply("eu-1", claim(&k0, "eu-1", 5));
        assert!(t.hold_back("eu-1", "n.a.test", TunnelKind::Http, &later));
        assert_eq!(t.recheck_peer("eu-1", &k1_only), 1);
        assert_eq!(
            t.take_held_back(&k1_only),
            vec![("eu-1".to_string(), "n.a.test".to_string())]
        );
        assert_eq!(t.holder("n.a.test").and_then(|h| h.tunnel_id), Some(7));
    }

    /// Two peers' claims to one name taken in one pass: only the one that holds the name
    /// after it counts as taken.
    #[test]
    fn of_two_claims_to_a_name_taken_in_one_pass_only_the_holder_counts() {
        use nearhop_wire::holder_proof::HolderSigner;
        let new = HolderSigner::from_secret("the-new-holder-secret");
        let keys = HolderKeys::parse(&new.public_key(), None).expect("keys");
        let t = HolderTable::default();
        for (peer, id) in [("eu-1", 3), ("ap-1", 4)] {
            let proof = Proof::by(&new, peer, "n.a.test", id);
            assert!(t.hold_back(peer, "n.a.test", TunnelKind::Http, &proof));
        }
        assert_eq!(
            t.take_held_back(&keys),
            vec![("ap-1".to_string(), "n.a.test".to_string())]
        );
        assert_eq!(peer_of(&t, "n.a.test").as_deref(), Some("ap-1"));
        assert_eq!(t.held_back(), 1, "eu-1's, displaced");
    }

    /// The holder age says when the peer's feed last spoke: a late take is not the peer
    /// speaking.
    #[test]
    fn a_late_take_does_not_make_the_peers_feed_look_fresh() {
        use nearhop_wire::holder_proof::HolderSigner;
        let new = HolderSigner::from_secret("the-new-holder-secret");
        let keys = HolderKeys::parse(&new.public_key(), None).expect("keys");
        let t = HolderTable::default();
        let age = |t: &HolderTable| {
            t.peers()
                .into_iter()
                .find(|(p, ..)| p == "eu-1")
                .map(|(_, _, age)| age)
                .expect("eu-1 has a feed")
        };
        t.apply("eu-1", add("spoke.a.test"));
        let proof = Proof::by(&new, "eu-1", "late.a.test", 1);
        assert!(t.hold_back("eu-1", "late.a.test", TunnelKind::Http, &proof));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(t.take_held_back(&keys).len(), 1);
        let after_take = age(&t);
        assert!(after_take >= Duration::from_millis(20), "{after_take:?}");
        t.apply("eu-1", HoldingChange::Removed("gone.a.test".into()));
        assert!(
            age(&t) < after_take,
            "a line of the feed is the peer speaking"
        );
    }
}
