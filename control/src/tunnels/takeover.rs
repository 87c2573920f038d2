//! Who holds a name now, and whether a new tunnel may take it over: with `force` the holder
//! is closed on its edge first; without, only a holder proven dead gives way.

use crate::edge_client::Liveness;
use crate::error::{ControlError, ControlResult};
use crate::schema::{edges, tunnels};
use crate::state::AppState;
use crate::tunnels::closing::close_message;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use nearhop_wire::{CloseReason, ErrorCode};

/// The live tunnel that holds a name now.
#[derive(Debug, Clone)]
pub struct Holder {
    /// Its id.
    pub tunnel_id: i64,
    /// Its account (`None`: anonymous).
    pub account_id: Option<i64>,
    /// Its edge.
    pub edge_id: String,
    /// Its edge's admin API.
    pub admin_url: String,
    /// Its lease lapsed.
    pub lease_expired: bool,
    /// Still inside its setup window: its edge may not know it yet.
    pub in_setup: bool,
}

#[derive(Queryable)]
struct HolderRow {
    tunnel_id: i64,
    account_id: Option<i64>,
    edge_id: String,
    admin_url: String,
    lease_expires_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
}

/// How long after its creation a tunnel counts as being set up: the lag-race bound plus the
/// edge's round trip, after which its edge has learned of it or it never will.
pub fn setup_window(st: &AppState) -> chrono::Duration {
    chrono::Duration::milliseconds((st.cfg.lag_wait_ms + st.cfg.edge_call_ms + 1000) as i64)
}

/// The live tunnel holding `label` in `zone`, if any.
pub fn holder_of(
    conn: &mut PgConnection,
    zone: &str,
    label: &str,
    setup_window: chrono::Duration,
) -> ControlResult<Option<Holder>> {
    let now = Utc::now();
    let row: Option<HolderRow> = tunnels::table
        .inner_join(edges::table)
        .filter(tunnels::zone.eq(zone))
        .filter(tunnels::label.eq(label))
        .filter(tunnels::closed_at.is_null())
        .select((
            tunnels::id,
            tunnels::account_id,
            tunnels::edge_id,
            edges::admin_url,
            tunnels::lease_expires_at,
            tunnels::created_at,
        ))
        .first(conn)
        .optional()?;
    Ok(row.map(|r| Holder {
        tunnel_id: r.tunnel_id,
        account_id: r.account_id,
        edge_id: r.edge_id,
        admin_url: r.admin_url,
        lease_expired: r.lease_expires_at < now,
        in_setup: now - r.created_at < setup_window,
    }))
}

/// Decides whether the holder of a name may be replaced, closing it on its edge first when
/// `force` was asked. Returns the reason of the takeover, or the refusal.
pub async fn settle_holder(
    st: &AppState,
    holder: &Holder,
    hostname: &str,
    force: bool,
) -> ControlResult<CloseReason> {
    if force {
        // Before the database moves the name, so that the old client is gone when the new
        // URL is printed.
        st.edges
            .close(
                &holder.admin_url,
                holder.tunnel_id,
                CloseReason::Replaced,
                &format!("{} (force)", close_message(CloseReason::Replaced, 0)),
            )
            .await;
        return Ok(CloseReason::Force);
    }
    // Even a lapsed lease is confirmed with the edge: after a control or database outage
    // leases lapse for live tunnels too.
    let dead_reason = |r: CloseReason| {
        if holder.lease_expired {
            CloseReason::LeaseExpired
        } else {
            r
        }
    };
    match st.edges.probe(&holder.admin_url, holder.tunnel_id).await {
        Liveness::Alive => Err(ControlError::refused(
            ErrorCode::NameInUse,
            format!(
                "{hostname} is in use by a live tunnel on edge {}; add `force` to the \
                 username (TOKEN+force@...) to close it and take over",
                holder.edge_id
            ),
        )),
        // A tunnel still in its setup window is unknown to its edge until control answers
        // the edge, so "unknown" does not mean dead yet: the two setups are racing.
        Liveness::Unknown if holder.in_setup => Err(ControlError::refused(
            ErrorCode::NameInUse,
            format!(
                "{hostname} is being set up by another connection right now; add `force` \
                 to the username to take it over"
            ),
        )),
        Liveness::Dead | Liveness::Unknown => Ok(dead_reason(CloseReason::ClientDead)),
        Liveness::EdgeUnreachable => Ok(dead_reason(CloseReason::EdgeUnreachable)),
    }
}
