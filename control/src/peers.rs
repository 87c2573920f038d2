//! The mesh's peer list: which other edges an edge may reach and how to trust them. Control
//! answers it on every registration and heartbeat, so an edge's view is at most one heartbeat
//! old: a revoked or silent edge drops out of its peers' lists at their next heartbeat. Only
//! an edge with its own credential is in the mesh: one on the shared secret is told no peers.

use crate::error::{ControlError, ControlResult};
use crate::schema::{edge_credentials, edges};
use chrono::Utc;
use diesel::prelude::*;
use nearhop_wire::{
    check_admin_key, check_host_key, check_mesh_addr, ErrorCode, PeerEdge, RegisterEdgeRequest,
};

/// An edge stays a peer while it heartbeated within this many heartbeat intervals: one
/// missed heartbeat is a hiccup, three mean the edge is gone.
pub const LIVE_HEARTBEATS: u64 = 3;

/// Refuses a registration whose mesh announcement is malformed.
pub fn check_announcement(reg: &RegisterEdgeRequest) -> ControlResult<()> {
    let field = |name: &str, r: Result<(), String>| {
        r.map_err(|e| ControlError::refused(ErrorCode::BadRequest, format!("{name}: {e}")))
    };
    if let Some(a) = &reg.mesh_addr {
        field("mesh_addr", check_mesh_addr(a))?;
    }
    if let Some(k) = &reg.host_key {
        field("host_key", check_host_key(k))?;
    }
    if let Some(k) = &reg.admin_key {
        field("admin_key", check_admin_key(k))?;
    }
    Ok(())
}

/// What `caller` is told of its peers: [`list`] when it `joins_mesh` (it called with its own
/// credential), else nothing. Its peers would refuse its links (`peer_not_listed`: [`list`]
/// names only edges with a live credential), so an edge on the shared secret given the list
/// would only redial them forever and fill their logs with refusals.
pub fn told(
    conn: &mut PgConnection,
    caller: &str,
    joins_mesh: bool,
    heartbeat_seconds: u64,
) -> ControlResult<Vec<PeerEdge>> {
    if !joins_mesh {
        return Ok(Vec::new());
    }
    list(conn, caller, heartbeat_seconds)
}

/// Every edge but `caller` with a live credential, a mesh address and a host key, that
/// heartbeated within [`LIVE_HEARTBEATS`] × `heartbeat_seconds`. Draining edges stay: they
/// still hold live tunnels, and their links carry relayed visitors until their drain ends.
pub fn list(
    conn: &mut PgConnection,
    caller: &str,
    heartbeat_seconds: u64,
) -> ControlResult<Vec<PeerEdge>> {
    let window = chrono::Duration::seconds((LIVE_HEARTBEATS * heartbeat_seconds) as i64);
    let rows: Vec<(String, String, Option<String>, Option<String>)> = edges::table
        .filter(edges::id.ne(caller))
        .filter(edges::last_heartbeat.gt(Utc::now() - window))
        .filter(edges::mesh_addr.is_not_null())
        .filter(edges::host_key.is_not_null())
        .filter(diesel::dsl::exists(
            edge_credentials::table
                .filter(edge_credentials::edge_id.eq(edges::id))
                .filter(edge_credentials::revoked_at.is_null()),
        ))
        .order(edges::id)
        .select((edges::id, edges::region, edges::mesh_addr, edges::host_key))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .filter_map(|(edge_id, region, mesh_addr, host_key)| {
            Some(PeerEdge {
                edge_id,
                region,
                mesh_addr: mesh_addr?,
                host_key: host_key?,
            })
        })
        .collect())
}
