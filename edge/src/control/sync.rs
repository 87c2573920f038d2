//! Keeping control informed: register on start (retrying with backoff while control is
//! down), batched lease heartbeats for every tunnel, and the custom-domain routes.

use crate::edge::Edge;
use crate::metrics::unix_now;
use crate::process::log_limit::LogLimit;
use nearhop_wire::{
    EdgeHeartbeatRequest, EdgeHeartbeatResponse, EdgePeers, ErrorCode, PeerEdge,
    RegisterEdgeRequest, RegisterEdgeResponse,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest wait between registration attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Shortest time between two peer lists asked for between heartbeats: strangers dialling
/// with made-up edge ids cost control at most one call a second.
pub const PEERS_ASKED_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// Registers, then heartbeats until the drain ends (the tunnels live until then, and peers
/// keep this edge while it heartbeats, so the visitors relayed either way finish).
pub async fn run(edge: Arc<Edge>) {
    edge.metrics
        .control_heartbeat_interval
        .set(edge.config.heartbeat_seconds as i64);
    let Some(mut interval) = register(&edge).await else {
        return;
    };
    let routes_every = Duration::from_secs(edge.config.routes_refresh_seconds.max(1));
    let mut routes_due = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = edge.mesh.shutdown.cancelled() => return,
        }
        let req = EdgeHeartbeatRequest {
            tunnel_ids: edge.registry.ids(),
        };
        let asked = Instant::now();
        match edge.control.heartbeat(&edge.config.edge_id, &req).await {
            Ok(resp) => {
                edge.metrics.control_last_heartbeat.set(unix_now());
                apply_peers(&edge, (&resp).into(), asked);
                refresh_certificates(&edge, resp.certificates_generation).await;
                for close in resp.close {
                    if let Some(tunnel) = edge.registry.by_id(close.tunnel_id) {
                        edge.close_tunnel(
                            &tunnel,
                            close.reason.as_str(),
                            Some(&close.message),
                            false,
                        )
                        .await;
                    }
                }
            }
            Err(e) => {
                edge.metrics
                    .control_errors_total
                    .with_label_values(&["heartbeat"])
                    .inc();
                tracing::warn!(error = %e, "heartbeat failed; live tunnels keep serving");
                // Control forgot this edge (e.g. its registry was reset): announce again;
                // not while draining (a registration clears `draining` and closes the
                // tunnels still draining).
                if e.code() == Some(ErrorCode::NotFound) && !edge.shutdown.is_cancelled() {
                    match register(&edge).await {
                        Some(i) => interval = i,
                        None => return,
                    }
                }
            }
        }
        if Instant::now() >= routes_due {
            refresh_routes(&edge).await;
            routes_due = Instant::now() + routes_every;
        }
    }
}

/// Registers with control, retrying with backoff; `None` when the edge shuts down first.
async fn register(edge: &Arc<Edge>) -> Option<Duration> {
    let mesh_addr = edge.config.mesh_addr();
    let host_key = match mesh_addr {
        Some(_) => match edge.mesh.key.public_key().to_openssh() {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::error!(error = %e, "encoding the host key for the mesh; this edge stays out of it");
                None
            }
        },
        None => None,
    };
    let req = RegisterEdgeRequest {
        edge_id: edge.config.edge_id.clone(),
        region: edge.config.region.clone(),
        admin_url: edge.config.admin_url(),
        mesh_addr: host_key.as_ref().and(mesh_addr),
        host_key,
        admin_key: Some(edge.admin_key.clone()),
    };
    let mut backoff = Duration::from_millis(250);
    loop {
        let asked = Instant::now();
        match edge.control.register(&req).await {
            Ok(resp) => {
                tracing::info!(
                    heartbeat_seconds = resp.heartbeat_seconds,
                    peers = resp.peers.len(),
                    "registered with control"
                );
                apply_peers(edge, (&resp).into(), asked);
                refresh_certificates(edge, resp.certificates_generation).await;
                for id in resp.closed_tunnels {
                    if let Some(tunnel) = edge.registry.by_id(id) {
                        edge.close_tunnel(&tunnel, "lease_expired", Some("control closed this tunnel while the edge was away; reconnect to get it back."), false)
                            .await;
                    }
                }
                // Control bounds its own setting; a control of another version is held to the
                // same range rather than trusted with an interval the timer cannot take.
                let secs = if resp.heartbeat_seconds == 0 {
                    edge.config.heartbeat_seconds
                } else {
                    resp.heartbeat_seconds
                        .min(nearhop_wire::duration_settings::LONGEST_SECONDS)
                };
                edge.metrics.control_last_heartbeat.set(unix_now());
                edge.metrics.control_heartbeat_interval.set(secs as i64);
                return Some(Duration::from_secs(secs));
            }
            Err(e) => {
                edge.metrics
                    .control_errors_total
                    .with_label_values(&["register"])
                    .inc();
                tracing::warn!(error = %e, retry_in = ?backoff, "registering with control");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = edge.shutdown.cancelled() => return None,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Asks control for the peer list now, because an edge this edge does not know (or knows
/// with another key) dialled its mesh listener: an edge that registered since this edge's
/// last heartbeat, as every edge that starts does, is then linked at once both ways instead
/// of at that heartbeat. Calls are at least [`PEERS_ASKED_AT_MOST_EVERY`] apart, and
/// callers take turns: one whose question the list in force now answers (`answered`: say,
/// the call in flight when it came brought its peer) asks nothing; one that finds a call
/// made since it came takes that call's list; one that comes too soon after the last call
/// waits out the rest of the second, then asks. The caller checks the peer list again
/// afterwards. Control down: the list stays as it is.
pub async fn ask_for_peers(edge: &Arc<Edge>, answered: impl Fn() -> bool) {
    let came = Instant::now();
    let mut asked = edge.mesh.peers_asked.lock().await;
    if answered() {
        return;
    }
    if let Some(at) = *asked {
        if at >= came {
            return;
        }
        tokio::time::sleep_until((at + PEERS_ASKED_AT_MOST_EVERY).into()).await;
    }
    let now = Instant::now();
    *asked = Some(now);
    edge.metrics.mesh_peer_list_fetches_total.inc();
    match edge.control.peers(&edge.config.edge_id).await {
        Ok(answer) => apply_peers(edge, (&answer).into(), now),
        Err(e) => {
            edge.metrics
                .control_errors_total
                .with_label_values(&["peers"])
                .inc();
            // Strangers dialling while control is down would make this a line a second.
            static FAILURES: LogLimit = LogLimit::new(Duration::from_secs(10));
            match FAILURES.note(Instant::now()) {
                Some(0) => {
                    tracing::warn!(error = %e, "asking control for the peer list failed; it is taken again at the next heartbeat (each failure counts in nearhop_edge_control_errors_total)")
                }
                Some(more) => {
                    tracing::warn!(error = %e, more, "asking control for the peer list failed; {more} more such calls failed since the last such line (at most one a 10 s; each counts in nearhop_edge_control_errors_total); the list is taken again at the next heartbeat")
                }
                None => {}
            }
        }
    }
}

/// What an answer of control's (to a registration, a heartbeat, or a request for the peer
/// list alone) brings the mesh: the peer list and the keys for holder proofs.
struct PeerAnswer<'a> {
    peers: &'a [PeerEdge],
    /// `holder_key`.
    holder_key: Option<&'a str>,
    /// `holder_key_previous`, while control rotates its key.
    holder_key_previous: Option<&'a str>,
}

impl<'a> From<&'a RegisterEdgeResponse> for PeerAnswer<'a> {
    fn from(answer: &'a RegisterEdgeResponse) -> Self {
        PeerAnswer {
            peers: &answer.peers,
            holder_key: answer.holder_key.as_deref(),
            holder_key_previous: answer.holder_key_previous.as_deref(),
        }
    }
}

impl<'a> From<&'a EdgeHeartbeatResponse> for PeerAnswer<'a> {
    fn from(answer: &'a EdgeHeartbeatResponse) -> Self {
        PeerAnswer {
            peers: &answer.peers,
            holder_key: answer.holder_key.as_deref(),
            holder_key_previous: answer.holder_key_previous.as_deref(),
        }
    }
}

impl<'a> From<&'a EdgePeers> for PeerAnswer<'a> {
    fn from(answer: &'a EdgePeers) -> Self {
        PeerAnswer {
            peers: &answer.peers,
            holder_key: answer.holder_key.as_deref(),
            holder_key_previous: answer.holder_key_previous.as_deref(),
        }
    }
}

/// Takes control's list of peer edges and its keys for holder proofs (before the links
/// start, so that their first claims are checked with them): links to new peers start,
/// links to peers that left stop. An edge outside the mesh (no `mesh_listen`) links to no
/// one. `asked`: when the call that brought the list was made. A list from a call made
/// before the one in force is not taken: a heartbeat answered just after an early peer list
/// ([`ask_for_peers`]) would otherwise drop the edge that list had just added.
fn apply_peers(edge: &Arc<Edge>, answer: PeerAnswer<'_>, asked: Instant) {
    if edge.config.mesh_addr().is_none() {
        return;
    }
    let mut as_of = edge
        .mesh
        .peers_as_of
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if as_of.is_some_and(|newer| asked < newer) {
        tracing::debug!("a peer list older than the one in force arrived; not taken");
        return;
    }
    *as_of = Some(asked);
    edge.mesh
        .set_holder_keys(answer.holder_key, answer.holder_key_previous);
    for link in edge.mesh.set_peers(answer.peers) {
        tracing::info!(peer = %link.id, addr = %link.addr, "linking to peer edge");
        tokio::spawn(link.run(edge.mesh.clone()));
    }
}

/// Fetches the verified custom domains of this edge's tunnels.
pub async fn refresh_routes(edge: &Edge) {
    match edge.control.routes(&edge.config.edge_id).await {
        Ok(routes) => edge.registry.set_custom_domains(routes.custom_domains),
        Err(e) => {
            edge.metrics
                .control_errors_total
                .with_label_values(&["routes"])
                .inc();
            tracing::debug!(error = %e, "fetching custom-domain routes");
        }
    }
}

/// Fetches control's ACME certificates when their generation is not the one in service, and
/// swaps them into HTTPS (new handshakes get them; open connections keep theirs). On failure
/// the certificates in service stay, and the next heartbeat tries again.
pub async fn refresh_certificates(edge: &Edge, generation: i64) {
    if generation == edge.certificates.generation() {
        return;
    }
    let set = match edge.control.certificates(&edge.config.edge_id).await {
        Ok(set) => set,
        Err(e) => {
            edge.metrics
                .control_errors_total
                .with_label_values(&["certificates"])
                .inc();
            tracing::warn!(error = %e, generation, "fetching control's certificates failed; the ones in service stay");
            return;
        }
    };
    let got = edge.certificates.install(&set);
    for refused in &got.refused {
        tracing::error!(certificate = %refused, "a certificate from control cannot be served; HTTPS for its names uses another certificate or none");
    }
    let m = &edge.metrics;
    m.certificates.set(got.count as i64);
    m.certificates_generation.set(set.generation);
    m.certificates_refused_total
        .inc_by(got.refused.len() as u64);
    tracing::info!(
        certificates = got.count,
        refused = got.refused.len(),
        generation = set.generation,
        "serving control's certificates"
    );
    if let Some(path) = &edge.config.certificates_cache_path {
        if let Err(e) = crate::visitor::certificates::save_cache(path, &set) {
            tracing::warn!(error = %format!("{e:#}"), "keeping the certificates for a restart failed; they are served all the same");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn peer(id: &str, seed: u8) -> nearhop_wire::PeerEdge {
        let key = russh::keys::PrivateKey::from(
            russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[seed; 32]),
        );
        nearhop_wire::PeerEdge {
            edge_id: id.into(),
            region: "eu".into(),
            // Nothing listens there: the links started only try to connect.
            mesh_addr: "127.0.0.1:9".into(),
            host_key: key.public_key().to_openssh().expect("openssh"),
        }
    }

    /// A peer list from a control that sends no holder key.
    fn list(peers: &[PeerEdge]) -> PeerAnswer<'_> {
        PeerAnswer {
            peers,
            holder_key: None,
            holder_key_previous: None,
        }
    }

    #[tokio::test]
    async fn a_peer_list_older_than_the_one_in_force_is_not_taken() {
        let config = Config {
            mesh_listen: Some("127.0.0.1:9".parse().expect("address")),
            ..Default::default()
        };
        let edge = Arc::new(Edge::for_tests(config, 1));
        let heartbeat_asked = Instant::now();
        let early_asked = heartbeat_asked + Duration::from_millis(5);
        // An early list (a new edge dialled) names eu-2; a heartbeat asked before it, and
        // answered after it, does not.
        apply_peers(
            &edge,
            list(&[peer("eu-1", 2), peer("eu-2", 3)]),
            early_asked,
        );
        apply_peers(&edge, list(&[peer("eu-1", 2)]), heartbeat_asked);
        let mut ids = edge.mesh.peer_ids();
        ids.sort();
        assert_eq!(
            ids,
            ["eu-1", "eu-2"],
            "the older list left the newer one in force"
        );
        // A list asked later is taken, whatever it says.
        apply_peers(
            &edge,
            list(&[peer("eu-1", 2)]),
            early_asked + Duration::from_millis(5),
        );
        assert_eq!(edge.mesh.peer_ids(), ["eu-1"]);
        edge.mesh.shutdown.cancel();
    }

    /// Control rotates its key: its heartbeat answers and its peer lists carry the previous
    /// key too, and a peer's claim proven under it is taken; once an answer carries the
    /// current key alone, a new claim under the previous one is refused. The answers are
    /// read from control's JSON, so a heartbeat or peer list that lost `holder_key_previous`
    /// on the way fails here.
    #[tokio::test]
    async fn heartbeat_and_peer_list_answers_bring_controls_previous_holder_key() {
        use crate::mesh::protocol::{HoldingChange, Proof};
        use crate::mesh::Refusal;
        use nearhop_wire::holder_proof::HolderSigner;
        use nearhop_wire::TunnelKind::Http;
        let config = Config {
            mesh_listen: Some("127.0.0.1:9".parse().expect("address")),
            ..Default::default()
        };
        let edge = Arc::new(Edge::for_tests(config, 1));
        let old = HolderSigner::from_secret("the-old-holder-secret").public_key();
        let new = HolderSigner::from_secret("the-new-holder-secret").public_key();
        let signed_by_old = HolderSigner::from_secret("the-old-holder-secret");
        let mut tunnel_id = 0;
        // A new claim of eu-1's each time (a claim taken before is not checked again).
        let mut vet_claim_under_old = || {
            tunnel_id += 1;
            let name = format!("before-{tunnel_id}.a.test");
            let signature = signed_by_old.prove(&name, "eu-1", tunnel_id, Http);
            let proof = Some(Proof {
                tunnel_id,
                signature,
            });
            edge.mesh
                .vet("eu-1", HoldingChange::Added(name, Http, proof), true)
                .map(|_| ())
                .map_err(|(why, _)| why)
        };
        let heartbeat = |previous: Option<&str>| -> EdgeHeartbeatResponse {
            let previous = previous
                .map(|k| format!(r#","holder_key_previous":"{k}""#))
                .unwrap_or_default();
            serde_json::from_str(&format!(
                r#"{{"close":[],"peers":[],"certificates_generation":0,"holder_key":"{new}"{previous}}}"#
            ))
            .expect("a heartbeat answer")
        };
        let peer_list = |previous: Option<&str>| -> EdgePeers {
            let previous = previous
                .map(|k| format!(r#","holder_key_previous":"{k}""#))
                .unwrap_or_default();
            serde_json::from_str(&format!(r#"{{"peers":[],"holder_key":"{new}"{previous}}}"#))
                .expect("a peer list")
        };
        let asked = Instant::now();
        let later = |ms: u64| asked + Duration::from_millis(ms);

        apply_peers(&edge, (&heartbeat(Some(&old))).into(), later(1));
        assert_eq!(vet_claim_under_old(), Ok(()), "taken during the rotation");
        apply_peers(&edge, (&heartbeat(None)).into(), later(2));
        assert_eq!(vet_claim_under_old(), Err(Refusal::BadProof), "after it");

        apply_peers(&edge, (&peer_list(Some(&old))).into(), later(3));
        assert_eq!(vet_claim_under_old(), Ok(()), "taken during the rotation");
        apply_peers(&edge, (&peer_list(None)).into(), later(4));
        assert_eq!(vet_claim_under_old(), Err(Refusal::BadProof), "after it");
        edge.mesh.shutdown.cancel();
    }
}
