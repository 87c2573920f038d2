//! Keeping control informed: register on start (retrying with backoff while control is
//! down), batched lease heartbeats for every tunnel, and the custom-domain routes.

use crate::edge::Edge;
use crate::metrics::unix_now;
use nearhop_wire::{EdgeHeartbeatRequest, ErrorCode, RegisterEdgeRequest};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest wait between registration attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

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
        match edge.control.heartbeat(&edge.config.edge_id, &req).await {
            Ok(resp) => {
                edge.metrics.control_last_heartbeat.set(unix_now());
                apply_peers(&edge, &resp.peers, resp.holder_key.as_deref());
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
        match edge.control.register(&req).await {
            Ok(resp) => {
                tracing::info!(
                    heartbeat_seconds = resp.heartbeat_seconds,
                    peers = resp.peers.len(),
                    "registered with control"
                );
                apply_peers(edge, &resp.peers, resp.holder_key.as_deref());
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

/// Takes control's list of peer edges and its key for holder proofs (before the links
/// start, so that their first claims are checked with it): links to new peers start, links
/// to peers that left stop. An edge outside the mesh (no `mesh_listen`) links to no one.
fn apply_peers(edge: &Arc<Edge>, peers: &[nearhop_wire::PeerEdge], holder_key: Option<&str>) {
    if edge.config.mesh_addr().is_none() {
        return;
    }
    edge.mesh.set_holder_key(holder_key);
    for link in edge.mesh.set_peers(peers) {
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
