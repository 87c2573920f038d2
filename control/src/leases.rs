//! The reaper: closes tunnels whose lease lapsed or whose plan's time limit passed, prunes
//! the DNS change log, and refreshes the gauges that need a query.

use crate::error::ControlResult;
use crate::schema::tunnels;
use crate::state::AppState;
use crate::tunnels::{close_tunnels, Closed, Notice};
use chrono::Utc;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use nearhop_wire::CloseReason;
use std::time::Duration;

/// One pass; returns the closes, one per reason. Leases are only enforced when
/// `expire_leases`: see [`run`].
fn reap_once(
    conn: &mut PgConnection,
    retention_seconds: u64,
    expire_leases: bool,
) -> ControlResult<Vec<Closed>> {
    let now = Utc::now();
    let past_time_limit: Vec<i64> = tunnels::table
        .filter(tunnels::closed_at.is_null())
        .filter(tunnels::expires_at.lt(now))
        .select(tunnels::id)
        .load(conn)?;
    let mut closed = vec![close_tunnels(
        conn,
        &past_time_limit,
        CloseReason::TimeLimit,
    )?];
    if expire_leases {
        let lapsed: Vec<i64> = tunnels::table
            .filter(tunnels::closed_at.is_null())
            .filter(tunnels::lease_expires_at.lt(now))
            .select(tunnels::id)
            .load(conn)?;
        closed.push(close_tunnels(conn, &lapsed, CloseReason::LeaseExpired)?);
    }
    diesel::sql_query(
        "DELETE FROM dns_changes WHERE changed_at < now() - make_interval(secs => $1)",
    )
    .bind::<BigInt, _>(retention_seconds as i64)
    .execute(conn)?;
    Ok(closed)
}

fn refresh_live_gauge(st: &AppState, conn: &mut PgConnection) -> ControlResult<()> {
    let rows: Vec<(String, String, i64)> = tunnels::table
        .filter(tunnels::closed_at.is_null())
        .group_by((tunnels::zone, tunnels::region))
        .select((tunnels::zone, tunnels::region, diesel::dsl::count_star()))
        .load(conn)?;
    st.metrics.tunnels_live.reset();
    for z in [&st.cfg.zones.pro.name, &st.cfg.zones.free.name] {
        for r in &st.cfg.regions {
            let n = rows
                .iter()
                .find(|(rz, rr, _)| rz == z && rr == &r.name)
                .map(|(_, _, n)| *n)
                .unwrap_or(0);
            st.metrics
                .tunnels_live
                .with_label_values(&[z, &r.name])
                .set(n as f64);
        }
    }
    Ok(())
}

/// Runs forever: one pass every `reap_interval_ms`.
///
/// A lapsed lease means "the edge stopped renewing it" only if control could have received
/// the renewals. After control starts, or after the database was unreachable, edges' heartbeats
/// may have failed for reasons that were ours, so leases are enforced again only once control
/// has been healthy for a whole lease (plus a heartbeat): every live edge has renewed by then.
/// Without this, a control or primary outage would close every live tunnel on recovery.
pub async fn run(st: AppState) {
    let mut tick = tokio::time::interval(Duration::from_millis(st.cfg.reap_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let grace = Duration::from_secs(st.cfg.lease_seconds + st.cfg.heartbeat_seconds);
    let mut healthy_since: Option<std::time::Instant> = None;
    loop {
        tick.tick().await;
        let st2 = st.clone();
        let retention = st.cfg.change_log_retention_seconds;
        let expire_leases = healthy_since.is_some_and(|t| t.elapsed() >= grace);
        let res = st
            .blocking(move |conn| {
                let closed = reap_once(conn, retention, expire_leases)?;
                refresh_live_gauge(&st2, conn)?;
                st2.lag.refresh_lag_metrics(&st2.cfg.regions);
                Ok(closed)
            })
            .await;
        match &res {
            Ok(_) if healthy_since.is_none() => healthy_since = Some(std::time::Instant::now()),
            Ok(_) => {}
            Err(_) => healthy_since = None,
        }
        match res {
            Ok(closes) => {
                for closed in closes {
                    let reason = closed.reason;
                    closed.announce(&st, Notice::Background(reason)).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "reaper pass failed; retrying"),
        }
    }
}
