//! The edge registry: registration, batched lease heartbeats, custom-domain routes, the
//! certificates edges serve.

use crate::error::{ControlError, ControlResult};
use crate::schema::{custom_domains, edges, regions, tunnels};
use crate::state::AppState;
use crate::tunnels::{close_message, close_tunnels, Notice};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::upsert::excluded;
pub use nearhop_wire::names::valid_edge_id;
use nearhop_wire::{
    CloseReason, EdgeCertificates, EdgeHeartbeatResponse, EdgePeers, EdgeRoutes, ErrorCode,
    LeavingStage, RegisterEdgeRequest, RegisterEdgeResponse, TunnelToClose,
};
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// Most tunnels one heartbeat may list; an edge with more splits them.
pub const MAX_HEARTBEAT_TUNNELS: usize = 100_000;

/// Registers (or re-registers) an edge. Its previous tunnels are gone with its previous
/// process, so they are closed and their records removed. The answer lists its peers only
/// when it `joins_mesh` ([`crate::edge_auth::EdgeIdentity::joins_mesh`]).
pub async fn register(
    st: &AppState,
    req: RegisterEdgeRequest,
    joins_mesh: bool,
) -> ControlResult<RegisterEdgeResponse> {
    if !valid_edge_id(&req.edge_id) {
        return Err(ControlError::refused(
            ErrorCode::BadRequest,
            "edge_id must be 1-63 characters of a-z, 0-9, '.', '_' or '-'",
        ));
    }
    if !(req.admin_url.starts_with("http://") || req.admin_url.starts_with("https://"))
        || req.admin_url.len() > 500
    {
        return Err(ControlError::refused(
            ErrorCode::BadRequest,
            "admin_url must be an http:// or https:// URL",
        ));
    }
    crate::peers::check_announcement(&req)?;
    let heartbeat_seconds = st.cfg.heartbeat_seconds;
    let (closed, peers, certificates_generation) = st
        .blocking(move |conn| {
            let known_region: bool = diesel::select(diesel::dsl::exists(
                regions::table.filter(regions::name.eq(&req.region)),
            ))
            .get_result(conn)?;
            if !known_region {
                return Err(ControlError::refused(
                    ErrorCode::NotFound,
                    format!("region {:?} is not configured in control", req.region),
                ));
            }
            if let Some(key) = &req.host_key {
                let holder: Option<String> = edges::table
                    .filter(edges::host_key.eq(key))
                    .filter(edges::id.ne(&req.edge_id))
                    .select(edges::id)
                    .first(conn)
                    .optional()?;
                if let Some(other) = holder {
                    // Peers know an edge by its key: one key for two edges would let
                    // either act as the other in the mesh.
                    return Err(ControlError::refused(
                        ErrorCode::Conflict,
                        format!(
                            "edge {other:?} registered this mesh key already; each edge needs \
                             its own (delete this edge's mesh_key_path file to make a new one)"
                        ),
                    ));
                }
            }
            diesel::insert_into(edges::table)
                .values((
                    edges::id.eq(&req.edge_id),
                    edges::region.eq(&req.region),
                    edges::admin_url.eq(&req.admin_url),
                    edges::registered_at.eq(Utc::now()),
                    edges::last_heartbeat.eq(Utc::now()),
                    edges::draining.eq(false),
                    edges::mesh_addr.eq(&req.mesh_addr),
                    edges::host_key.eq(&req.host_key),
                    edges::admin_key.eq(&req.admin_key),
                ))
                .on_conflict(edges::id)
                .do_update()
                .set((
                    edges::region.eq(excluded(edges::region)),
                    edges::admin_url.eq(excluded(edges::admin_url)),
                    edges::registered_at.eq(excluded(edges::registered_at)),
                    edges::last_heartbeat.eq(excluded(edges::last_heartbeat)),
                    edges::draining.eq(false),
                    edges::mesh_addr.eq(excluded(edges::mesh_addr)),
                    edges::host_key.eq(excluded(edges::host_key)),
                    edges::admin_key.eq(excluded(edges::admin_key)),
                ))
                .execute(conn)?;
            let live: Vec<i64> = tunnels::table
                .filter(tunnels::edge_id.eq(&req.edge_id))
                .filter(tunnels::closed_at.is_null())
                .select(tunnels::id)
                .load(conn)?;
            let closed = close_tunnels(conn, &live, CloseReason::EdgeRestarted)?;
            let peers = crate::peers::told(conn, &req.edge_id, joins_mesh, heartbeat_seconds)?;
            Ok((closed, peers, crate::acme::store::generation(conn)?))
        })
        .await?;
    let closed_tunnels = closed.ids();
    // The edge learns of them from this answer.
    closed.announce(st, Notice::Known).await;
    // The answer carries both holder keys (see `HolderSigning::edge_answered`).
    st.holder_signing.edge_answered(Instant::now());
    Ok(RegisterEdgeResponse {
        heartbeat_seconds: st.cfg.heartbeat_seconds,
        closed_tunnels,
        peers,
        certificates_generation,
        holder_key: Some(st.holder_signing.public_key()),
        holder_key_previous: st.holder_signing.previous_public_key(),
    })
}

/// Renews the leases of every listed tunnel of the edge in one statement, and tells the edge
/// which of them control has closed (and its peers, when it `joins_mesh`).
pub async fn heartbeat(
    st: &AppState,
    edge_id: String,
    tunnel_ids: Vec<i64>,
    joins_mesh: bool,
) -> ControlResult<EdgeHeartbeatResponse> {
    if tunnel_ids.len() > MAX_HEARTBEAT_TUNNELS {
        return Err(ControlError::refused(
            ErrorCode::PayloadTooLarge,
            format!("a heartbeat may list at most {MAX_HEARTBEAT_TUNNELS} tunnels"),
        ));
    }
    let lease = chrono::Duration::seconds(st.cfg.lease_seconds as i64);
    let limit = st.cfg.zones.free.time_limit_minutes;
    let heartbeat_seconds = st.cfg.heartbeat_seconds;
    let holder_key = st.holder_signing.public_key();
    let holder_key_previous = st.holder_signing.previous_public_key();
    st.blocking(move |conn| {
        let now = Utc::now();
        let updated = diesel::update(edges::table.filter(edges::id.eq(&edge_id)))
            .set(edges::last_heartbeat.eq(now))
            .execute(conn)?;
        if updated == 0 {
            return Err(ControlError::refused(
                ErrorCode::NotFound,
                format!("edge {edge_id:?} is not registered; register it again"),
            ));
        }
        let live: Vec<i64> = diesel::update(
            tunnels::table
                .filter(tunnels::id.eq_any(&tunnel_ids))
                .filter(tunnels::edge_id.eq(&edge_id))
                .filter(tunnels::closed_at.is_null()),
        )
        .set(tunnels::lease_expires_at.eq(now + lease))
        .returning(tunnels::id)
        .get_results(conn)?;
        let gone = not_renewed(&tunnel_ids, &live);
        let reasons: Vec<(i64, Option<String>)> = tunnels::table
            .filter(tunnels::id.eq_any(&gone))
            .select((tunnels::id, tunnels::close_reason))
            .load(conn)?;
        let close = to_close(gone, reasons, limit);
        let peers = crate::peers::told(conn, &edge_id, joins_mesh, heartbeat_seconds)?;
        Ok(EdgeHeartbeatResponse {
            close,
            peers,
            certificates_generation: crate::acme::store::generation(conn)?,
            holder_key: Some(holder_key),
            holder_key_previous,
        })
    })
    .await
    .inspect(|_| st.holder_signing.edge_answered(Instant::now()))
}

/// The mesh's peer list for `edge_id` (`GET /v1/edges/{id}/peers`): what its next heartbeat's
/// answer would carry, renewing nothing. An edge asks when an edge it does not know dials it.
pub async fn peers(st: &AppState, edge_id: String, joins_mesh: bool) -> ControlResult<EdgePeers> {
    let heartbeat_seconds = st.cfg.heartbeat_seconds;
    let holder_key = st.holder_signing.public_key();
    let holder_key_previous = st.holder_signing.previous_public_key();
    st.blocking(move |conn| {
        Ok(EdgePeers {
            peers: crate::peers::told(conn, &edge_id, joins_mesh, heartbeat_seconds)?,
            holder_key: Some(holder_key),
            holder_key_previous,
        })
    })
    .await
    .inspect(|_| st.holder_signing.edge_answered(Instant::now()))
}

/// The edge is stopping. `Draining`: marked so (the region's connect name stops counting it;
/// it stays a peer while it heartbeats). `Stopped`: its last heartbeat is set to the epoch as
/// well, so that it leaves its peers' lists and its region's health at once instead of 3
/// heartbeats later; registering again clears both.
pub async fn leaving(st: &AppState, edge_id: String, stage: LeavingStage) -> ControlResult<()> {
    st.blocking(move |conn| {
        let edge = edges::table.filter(edges::id.eq(&edge_id));
        let updated = match stage {
            LeavingStage::Draining => diesel::update(edge)
                .set(edges::draining.eq(true))
                .execute(conn)?,
            LeavingStage::Stopped => diesel::update(edge)
                .set((
                    edges::draining.eq(true),
                    edges::last_heartbeat.eq(DateTime::<Utc>::UNIX_EPOCH),
                ))
                .execute(conn)?,
        };
        if updated == 0 {
            return Err(ControlError::refused(
                ErrorCode::NotFound,
                format!("edge {edge_id:?} is not registered"),
            ));
        }
        tracing::info!(edge = %edge_id, ?stage, "edge leaving");
        Ok(())
    })
    .await
}

/// The listed ids whose lease was not renewed, in the order listed. Set lookups: a heartbeat
/// may list 100,000 ids, and a scan of `live` per listed id was 10^10 comparisons.
fn not_renewed(listed: &[i64], live: &[i64]) -> Vec<i64> {
    let live: HashSet<i64> = live.iter().copied().collect();
    listed
        .iter()
        .copied()
        .filter(|id| !live.contains(id))
        .collect()
}

/// What the edge is told to close for each id in `gone`, with the reason control recorded.
fn to_close(gone: Vec<i64>, reasons: Vec<(i64, Option<String>)>, limit: u64) -> Vec<TunnelToClose> {
    let reasons: HashMap<i64, Option<String>> = reasons.into_iter().collect();
    gone.into_iter()
        .map(|id| {
            // An id without a close reason (unknown to control, or another edge's) is not
            // this edge's to serve either; it is closed for no more precise reason.
            let reason = reasons
                .get(&id)
                .and_then(|r| r.as_deref())
                .map_or(CloseReason::Closed, CloseReason::parse);
            TunnelToClose {
                tunnel_id: id,
                message: close_message(reason, limit),
                reason,
            }
        })
        .collect()
}

/// Every certificate in service and their generation, for the edge's HTTPS listeners.
pub async fn certificates(st: &AppState) -> ControlResult<EdgeCertificates> {
    st.blocking(|conn| {
        let (generation, certificates) = crate::acme::store::in_service(conn)?;
        Ok(EdgeCertificates {
            generation,
            certificates,
        })
    })
    .await
}

/// Every verified custom domain and the tunnel name it stands for (the edges route it to
/// the tunnel wherever it lives).
pub async fn routes(st: &AppState, _edge_id: String) -> ControlResult<EdgeRoutes> {
    // Every verified domain, wherever its tunnel lives: a domain names a tunnel name, and
    // the edge finds the tunnel's holder itself (its registry, else the mesh), so a visitor
    // of a custom domain is served at any edge.
    st.blocking(move |conn| {
        let rows: Vec<(String, String, String)> = custom_domains::table
            .filter(custom_domains::verified_at.is_not_null())
            .select((
                custom_domains::domain,
                custom_domains::label,
                custom_domains::zone,
            ))
            .load(conn)?;
        Ok(EdgeRoutes {
            custom_domains: rows
                .into_iter()
                .map(|(d, l, z)| (d, format!("{l}.{z}")))
                .collect(),
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_not_renewed_keep_their_order_and_get_their_reasons() {
        let listed = [5, 1, 9, 3, 7];
        let gone = not_renewed(&listed, &[3, 5]);
        assert_eq!(gone, vec![1, 9, 7]);
        let close = to_close(gone, vec![(7, Some("takedown".into())), (1, None)], 60);
        let got: Vec<(i64, CloseReason)> = close.iter().map(|c| (c.tunnel_id, c.reason)).collect();
        assert_eq!(
            got,
            vec![
                (1, CloseReason::Closed),
                (9, CloseReason::Closed),
                (7, CloseReason::Takedown)
            ]
        );
        let many: Vec<i64> = (0..100_000).collect();
        let live: Vec<i64> = (0..100_000).filter(|i| i % 10 != 0).collect();
        assert_eq!(not_renewed(&many, &live).len(), 10_000);
    }
}
