//! The one close path. Every close (an edge's, the reaper's, a takedown, an edge's restart,
//! a takeover) goes through [`close_tunnels`] in the database and [`Closed::announce`]
//! afterwards, so a close is counted once and its edge told in one way.

use crate::error::{ControlError, ControlResult};
use crate::schema::{edges, records, tunnels};
use crate::state::AppState;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use nearhop_wire::{CloseReason, ErrorCode};

/// A tunnel that was live and is now closed in the database.
#[derive(Debug, Clone, Queryable)]
pub struct ClosedTunnel {
    /// Its id.
    pub id: i64,
    /// Its zone.
    pub zone: String,
    /// Its label.
    pub label: String,
    /// Its edge.
    pub edge_id: String,
}

/// Tunnels closed for one reason, to be announced once the transaction committed.
#[derive(Debug, Clone)]
#[must_use = "a close must be announced: counted, and told to the edges"]
pub struct Closed {
    /// Why.
    pub reason: CloseReason,
    /// The tunnels that were live and are closed now (a tunnel closed already is not here).
    pub tunnels: Vec<ClosedTunnel>,
}

/// How the edges of closed tunnels learn of the close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// They know already: the edge asked for the close, restarted, or was told first.
    Known,
    /// Tell each edge with this reason and wait for it (the caller answers afterwards).
    Wait(CloseReason),
    /// Tell each edge with this reason in the background.
    Background(CloseReason),
}

/// The sentence an edge prints when control closed a tunnel for `reason`.
pub fn close_message(reason: CloseReason, time_limit_minutes: u64) -> String {
    match reason {
        CloseReason::Takedown => "this tunnel's name was taken down by the operator".into(),
        CloseReason::TimeLimit => format!(
            "free tunnels are limited to {time_limit_minutes} minutes; reconnect for a new one, \
             or use a pro token"
        ),
        CloseReason::Replaced | CloseReason::Force => {
            "this tunnel was replaced by a newer one for the same name".into()
        }
        CloseReason::LeaseExpired => {
            "this tunnel's lease lapsed (its edge stopped renewing it)".into()
        }
        CloseReason::EdgeRestarted => {
            "the edge restarted; reconnect to get your tunnel back".into()
        }
        other => format!("this tunnel was closed by the service ({other})"),
    }
}

/// Closes the tunnels among `ids` that are still live and removes their records, in one
/// transaction (a savepoint when the caller has one open).
pub fn close_tunnels(
    conn: &mut PgConnection,
    ids: &[i64],
    reason: CloseReason,
) -> ControlResult<Closed> {
    if ids.is_empty() {
        return Ok(Closed {
            reason,
            tunnels: Vec::new(),
        });
    }
    let now = Utc::now();
    let tunnels = conn.transaction::<_, ControlError, _>(|conn| {
        let closed: Vec<ClosedTunnel> = diesel::update(
            tunnels::table
                .filter(tunnels::id.eq_any(ids))
                .filter(tunnels::closed_at.is_null()),
        )
        .set((
            tunnels::closed_at.eq(now),
            tunnels::close_reason.eq(reason.as_str()),
        ))
        .returning((tunnels::id, tunnels::zone, tunnels::label, tunnels::edge_id))
        .get_results(conn)?;
        let hostnames: Vec<String> = closed
            .iter()
            .map(|t| format!("{}.{}", t.label, t.zone))
            .collect();
        diesel::delete(
            records::table
                .filter(records::name.eq_any(&hostnames))
                .filter(records::rtype.eq("CNAME")),
        )
        .execute(conn)?;
        Ok(closed)
    })?;
    Ok(Closed { reason, tunnels })
}

impl Closed {
    /// Ids of the closed tunnels.
    pub fn ids(&self) -> Vec<i64> {
        self.tunnels.iter().map(|t| t.id).collect()
    }

    /// Counts the close (the one place `nearhop_tunnels_closed_total` moves) and tells the
    /// tunnels' edges as `notice` says. Call it after the close committed.
    pub async fn announce(self, st: &AppState, notice: Notice) {
        if self.tunnels.is_empty() {
            return;
        }
        st.metrics
            .tunnels_closed_total
            .with_label_values(&[self.reason.as_str()])
            .inc_by(self.tunnels.len() as f64);
        for t in &self.tunnels {
            tracing::info!(tunnel_id = t.id, reason = %self.reason, "tunnel closed");
        }
        let (told, wait) = match notice {
            Notice::Known => return,
            Notice::Wait(r) => (r, true),
            Notice::Background(r) => (r, false),
        };
        let message = close_message(told, st.cfg.zones.free.time_limit_minutes);
        let edge_ids: Vec<String> = self.tunnels.iter().map(|t| t.edge_id.clone()).collect();
        let urls: Vec<(String, String)> = match st
            .blocking(move |conn| {
                Ok(edges::table
                    .filter(edges::id.eq_any(&edge_ids))
                    .select((edges::id, edges::admin_url))
                    .load(conn)?)
            })
            .await
        {
            Ok(urls) => urls,
            Err(e) => {
                // The edges learn of the close from their next heartbeat's answer.
                tracing::warn!(error = %e, "looking up the edges of closed tunnels");
                return;
            }
        };
        for t in self.tunnels {
            let Some((_, url)) = urls.iter().find(|(id, _)| *id == t.edge_id) else {
                continue;
            };
            let (edges, url, message) = (st.edges.clone(), url.clone(), message.clone());
            let tell = async move { edges.close(&url, t.id, told, &message).await };
            if wait {
                tell.await;
            } else {
                tokio::spawn(tell);
            }
        }
    }
}

/// Closes one tunnel on behalf of its edge. Closing a closed tunnel is not an error.
pub async fn close_for_edge(
    st: &AppState,
    tunnel_id: i64,
    edge_id: String,
    reason: CloseReason,
) -> ControlResult<()> {
    let closed = st
        .blocking(move |conn| {
            let owner: Option<(String, Option<DateTime<Utc>>)> = tunnels::table
                .filter(tunnels::id.eq(tunnel_id))
                .select((tunnels::edge_id, tunnels::closed_at))
                .first(conn)
                .optional()?;
            match owner {
                None => Err(ControlError::refused(
                    ErrorCode::NotFound,
                    format!("no tunnel {tunnel_id}"),
                )),
                Some((e, _)) if e != edge_id => Err(ControlError::refused(
                    ErrorCode::Conflict,
                    format!("tunnel {tunnel_id} belongs to edge {e}, not {edge_id}"),
                )),
                Some(_) => close_tunnels(conn, &[tunnel_id], reason),
            }
        })
        .await?;
    closed.announce(st, Notice::Known).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_sentence() {
        for r in CloseReason::ALL {
            let m = close_message(r, 60);
            assert!(!m.is_empty() && !m.ends_with('.'), "{r}: {m}");
        }
        assert!(close_message(CloseReason::TimeLimit, 60).contains("60 minutes"));
    }
}
