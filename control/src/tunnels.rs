//! Tunnel setup, close, and the takeover rules. Reads like the protocol:
//! authenticate → pick zone and name → settle who holds the name → write the tunnel and its
//! record in one transaction → wait for the regions' DNS → answer.

use crate::config::ZoneConfig;
use crate::edge_client::Liveness;
use crate::error::{ControlError, ControlResult};
use crate::schema::{accounts, banned_names, edges, names, records, tokens, tunnels};
use crate::state::AppState;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use nearhop_wire::{
    normalize_label, random_label, CreateTunnelRequest, CreateTunnelResponse, ErrorCode, Plan,
    ReplacedTunnel,
};
use std::time::Instant;

/// Who is asking: an account with a plan, or nobody (anonymous free tunnel).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// The account, if a token was given.
    pub account_id: Option<i64>,
    /// The plan that applies.
    pub plan: Plan,
}

/// The live tunnel that holds a name now.
#[derive(Debug, Clone)]
struct Holder {
    tunnel_id: i64,
    account_id: Option<i64>,
    edge_id: String,
    admin_url: String,
    lease_expired: bool,
    /// Still inside its setup window: its edge may not know it yet.
    in_setup: bool,
}

/// Everything decided before the write.
#[derive(Debug, Clone)]
struct Plot {
    caller: Caller,
    zone: ZoneConfig,
    domain_id: i32,
    label: String,
    region: String,
    holder: Option<Holder>,
}

/// Bind addresses that mean "no particular name" (`ssh -R 0:...`, `-R localhost:0:...`).
/// `*` is not among them: it is refused as a name, never read as "any".
fn requested_label(req: &CreateTunnelRequest) -> Option<&str> {
    match req.requested_name.as_deref().map(str::trim) {
        None | Some("") | Some("localhost") | Some("0.0.0.0") | Some("::") | Some("127.0.0.1") => {
            None
        }
        Some(name) => Some(name),
    }
}

/// The client's address without a port, for per-source limits.
fn source_of(addr: &str) -> String {
    addr.parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| addr.chars().take(64).collect())
}

/// Authenticates a token: the account and plan, or a refusal that says what to do.
pub fn authenticate(conn: &mut PgConnection, token: Option<&str>) -> ControlResult<Caller> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Ok(Caller {
            account_id: None,
            plan: Plan::Free,
        });
    };
    if token.len() > 200 {
        return Err(ControlError::refused(
            ErrorCode::BadToken,
            "the token is not valid",
        ));
    }
    let hash = crate::db::token_hash(token);
    let row: Option<(i64, String, bool, Option<DateTime<Utc>>)> = tokens::table
        .inner_join(accounts::table)
        .filter(tokens::token_hash.eq(hash))
        .select((
            accounts::id,
            accounts::plan,
            accounts::disabled,
            tokens::revoked_at,
        ))
        .first(conn)
        .optional()?;
    match row {
        None => Err(ControlError::refused(
            ErrorCode::BadToken,
            "the token is not valid: check that you copied it whole, or create a new one",
        )),
        Some((_, _, _, Some(_))) => Err(ControlError::refused(
            ErrorCode::BadToken,
            "the token was revoked: create a new one for this account",
        )),
        Some((_, _, true, _)) => Err(ControlError::refused(
            ErrorCode::BadToken,
            "the account of this token is disabled: contact the operator",
        )),
        Some((id, plan, false, None)) => Ok(Caller {
            account_id: Some(id),
            plan: Plan::parse(&plan).ok_or_else(|| {
                ControlError::Internal(format!("account {id} has unknown plan {plan:?}"))
            })?,
        }),
    }
}

fn is_banned(conn: &mut PgConnection, zone: &str, label: &str) -> ControlResult<bool> {
    Ok(diesel::select(diesel::dsl::exists(
        banned_names::table
            .filter(banned_names::zone.eq(zone))
            .filter(banned_names::label.eq(label)),
    ))
    .get_result(conn)?)
}

/// id, account, edge, edge admin URL, lease end, creation time.
type HolderRow = (
    i64,
    Option<i64>,
    String,
    String,
    DateTime<Utc>,
    DateTime<Utc>,
);

fn holder_of(
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
    Ok(row.map(
        |(tunnel_id, account_id, edge_id, admin_url, lease, created)| Holder {
            tunnel_id,
            account_id,
            edge_id,
            admin_url,
            lease_expired: lease < now,
            in_setup: now - created < setup_window,
        },
    ))
}

/// How long after its creation a tunnel counts as being set up: the lag-race bound plus the
/// edge's round trip, after which its edge has learned of it or it never will.
fn setup_window(st: &AppState) -> chrono::Duration {
    chrono::Duration::milliseconds((st.cfg.lag_wait_ms + st.cfg.edge_call_ms + 1000) as i64)
}

/// Picks the account's persistent name in `zone`, creating it on the first tunnel.
fn default_name(conn: &mut PgConnection, account_id: i64, zone: &str) -> ControlResult<String> {
    for _ in 0..8 {
        let existing: Option<String> = names::table
            .filter(names::account_id.eq(account_id))
            .filter(names::zone.eq(zone))
            .filter(names::is_default.eq(true))
            .select(names::label)
            .first(conn)
            .optional()?;
        if let Some(label) = existing {
            return Ok(label);
        }
        let label = random_label();
        let inserted = diesel::insert_into(names::table)
            .values((
                names::zone.eq(zone),
                names::label.eq(&label),
                names::account_id.eq(account_id),
                names::is_default.eq(true),
            ))
            .on_conflict_do_nothing()
            .execute(conn)?;
        if inserted == 1 {
            return Ok(label);
        }
        // Either the label is owned already (draw again) or a concurrent first tunnel of
        // the same account assigned the default name (the next round reads it).
    }
    Err(ControlError::Internal(
        "could not draw a free persistent name".into(),
    ))
}

/// Checks that the account may use `label`, claiming it if nobody owns it yet.
fn claim_name(
    conn: &mut PgConnection,
    zone: &ZoneConfig,
    account_id: i64,
    label: &str,
) -> ControlResult<()> {
    let owner: Option<i64> = names::table
        .filter(names::zone.eq(&zone.name))
        .filter(names::label.eq(label))
        .select(names::account_id)
        .first(conn)
        .optional()?;
    match owner {
        Some(o) if o == account_id => Ok(()),
        Some(_) => Err(ControlError::refused(
            ErrorCode::NameOwned,
            format!(
                "the name {label}.{} belongs to another account; pick another name",
                zone.name
            ),
        )),
        None => {
            if zone.max_names_per_account > 0 {
                let owned: i64 = names::table
                    .filter(names::account_id.eq(account_id))
                    .filter(names::zone.eq(&zone.name))
                    .count()
                    .get_result(conn)?;
                if owned as u64 >= zone.max_names_per_account {
                    return Err(ControlError::refused(
                        ErrorCode::PlanLimit,
                        format!(
                            "the account owns {owned} names, the most its plan allows; \
                             use one of them or ask the operator to free one"
                        ),
                    ));
                }
            }
            let inserted = diesel::insert_into(names::table)
                .values((
                    names::zone.eq(&zone.name),
                    names::label.eq(label),
                    names::account_id.eq(account_id),
                    names::is_default.eq(false),
                ))
                .on_conflict_do_nothing()
                .execute(conn)?;
            if inserted == 0 {
                return claim_name(conn, zone, account_id, label);
            }
            Ok(())
        }
    }
}

fn plot(conn: &mut PgConnection, st: &AppState, req: &CreateTunnelRequest) -> ControlResult<Plot> {
    let region: String = edges::table
        .filter(edges::id.eq(&req.edge_id))
        .select(edges::region)
        .first(conn)
        .optional()?
        .ok_or_else(|| {
            ControlError::refused(
                ErrorCode::NotFound,
                format!(
                    "edge {:?} is not registered; it must register first",
                    req.edge_id
                ),
            )
        })?;
    let caller = authenticate(conn, req.token.as_deref())?;
    let zone = st.cfg.zone_for(caller.plan).clone();
    let requested = requested_label(req);
    let requested = match (caller.plan, requested) {
        (Plan::Free, Some(_)) => {
            return Err(ControlError::refused(
                ErrorCode::PlanLimit,
                "choosing a name needs a pro token; free tunnels get a random name \
                 (connect with -R0:localhost:PORT)",
            ))
        }
        (_, Some(r)) => Some(normalize_label(r).map_err(|e| {
            ControlError::refused(
                ErrorCode::InvalidName,
                format!("the name {r:?} is not valid: {e}"),
            )
        })?),
        (_, None) => None,
    };
    if let Some(label) = &requested {
        st.cfg.check_not_service_label(&zone, label)?;
    }
    if zone.creations_per_minute_per_source > 0 {
        let since = Utc::now() - chrono::Duration::minutes(1);
        let source = source_of(&req.client_addr);
        let recent: i64 = tunnels::table
            .filter(tunnels::zone.eq(&zone.name))
            .filter(tunnels::client_addr.eq(&source))
            .filter(tunnels::created_at.gt(since))
            .count()
            .get_result(conn)?;
        if recent as u64 >= zone.creations_per_minute_per_source {
            return Err(ControlError::refused(
                ErrorCode::RateLimited,
                format!(
                    "too many tunnels were created from {source} in the last minute (limit {}); \
                     wait a minute and try again",
                    zone.creations_per_minute_per_source
                ),
            ));
        }
    }
    let domain_id = crate::zones::domain_id(conn, &zone.name)
        .optional()?
        .ok_or_else(|| {
            ControlError::Internal(format!(
                "zone {} is not in the domains table; run `nearhop-control migrate`",
                zone.name
            ))
        })?;
    let label = match (caller.plan, caller.account_id, requested) {
        (Plan::Pro, Some(account_id), Some(label)) => {
            if is_banned(conn, &zone.name, &label)? {
                return Err(ControlError::refused(
                    ErrorCode::NameBanned,
                    format!(
                        "the name {label}.{} was taken down and cannot be used",
                        zone.name
                    ),
                ));
            }
            claim_name(conn, &zone, account_id, &label)?;
            label
        }
        (Plan::Pro, Some(account_id), None) => {
            let label = default_name(conn, account_id, &zone.name)?;
            if is_banned(conn, &zone.name, &label)? {
                return Err(ControlError::refused(
                    ErrorCode::NameBanned,
                    format!(
                        "the account's name {label}.{} was taken down; ask for another name \
                         with -R NAME:0:localhost:PORT",
                        zone.name
                    ),
                ));
            }
            label
        }
        _ => {
            let mut drawn = None;
            for _ in 0..8 {
                let label = random_label();
                if !is_banned(conn, &zone.name, &label)?
                    && holder_of(conn, &zone.name, &label, setup_window(st))?.is_none()
                {
                    drawn = Some(label);
                    break;
                }
            }
            drawn
                .ok_or_else(|| ControlError::Internal("could not draw a free random name".into()))?
        }
    };
    let holder = holder_of(conn, &zone.name, &label, setup_window(st))?;
    if let Some(h) = &holder {
        if h.account_id != caller.account_id {
            return Err(ControlError::refused(
                ErrorCode::NameInUse,
                format!(
                    "the name {label}.{} is in use by another account's tunnel; choose \
                     another name, or try again after that tunnel ends",
                    zone.name
                ),
            ));
        }
    }
    if let (Some(account_id), true) = (caller.account_id, zone.max_tunnels_per_account > 0) {
        let live: i64 = tunnels::table
            .filter(tunnels::account_id.eq(account_id))
            .filter(tunnels::closed_at.is_null())
            .count()
            .get_result(conn)?;
        // A takeover of the account's own name frees the slot it takes.
        let freed = i64::from(holder.is_some());
        if (live - freed) as u64 >= zone.max_tunnels_per_account {
            return Err(ControlError::refused(
                ErrorCode::PlanLimit,
                format!(
                    "the account has {live} live tunnels, the most its plan allows; close one first"
                ),
            ));
        }
    }
    Ok(Plot {
        caller,
        zone,
        domain_id,
        label,
        region,
        holder,
    })
}

/// Decides whether the holder of a name may be replaced, closing it on its edge first when
/// `force` was asked. Returns the reason of the takeover, or the refusal.
async fn settle_holder(
    st: &AppState,
    holder: &Holder,
    hostname: &str,
    force: bool,
) -> ControlResult<&'static str> {
    if force {
        st.edges
            .close(
                &holder.admin_url,
                holder.tunnel_id,
                "replaced",
                "this tunnel was replaced by a newer one for the same name (force)",
            )
            .await;
        return Ok("force");
    }
    // Even a lapsed lease is confirmed with the edge: after a control or database outage
    // leases lapse for live tunnels too.
    let dead_reason = |r: &'static str| {
        if holder.lease_expired {
            "lease_expired"
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
        Liveness::Dead | Liveness::Unknown => Ok(dead_reason("client_dead")),
        Liveness::EdgeUnreachable => Ok(dead_reason("edge_unreachable")),
    }
}

/// Writes the tunnel and its record in one transaction (one zone), closing the replaced
/// holder in the same transaction.
fn write_tunnel(
    conn: &mut PgConnection,
    st: &AppState,
    req: &CreateTunnelRequest,
    p: &Plot,
    takeover: Option<(&Holder, &str)>,
) -> ControlResult<(i64, Option<DateTime<Utc>>, String, String)> {
    let hostname = format!("{}.{}", p.label, p.zone.name);
    let now = Utc::now();
    let lease = now + chrono::Duration::seconds(st.cfg.lease_seconds as i64);
    let expires_at = (p.zone.time_limit_minutes > 0)
        .then(|| now + chrono::Duration::minutes(p.zone.time_limit_minutes as i64));
    let (tunnel_id, xid) = conn.transaction::<(i64, String), ControlError, _>(|conn| {
        if let Some((h, reason)) = takeover {
            diesel::update(
                tunnels::table
                    .filter(tunnels::id.eq(h.tunnel_id))
                    .filter(tunnels::closed_at.is_null()),
            )
            .set((tunnels::closed_at.eq(now), tunnels::close_reason.eq(reason)))
            .execute(conn)?;
        }
        let inserted = diesel::insert_into(tunnels::table)
            .values((
                tunnels::account_id.eq(p.caller.account_id),
                tunnels::zone.eq(&p.zone.name),
                tunnels::label.eq(&p.label),
                tunnels::kind.eq(req.kind.as_str()),
                tunnels::region.eq(&p.region),
                tunnels::edge_id.eq(&req.edge_id),
                tunnels::client_addr.eq(source_of(&req.client_addr)),
                tunnels::lease_expires_at.eq(lease),
                tunnels::expires_at.eq(expires_at),
            ))
            .returning(tunnels::id)
            .get_result::<i64>(conn);
        let id = match inserted {
            Ok(id) => id,
            Err(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _,
            )) => {
                return Err(ControlError::refused(
                    ErrorCode::NameInUse,
                    format!(
                        "{hostname} was taken by another tunnel a moment ago; \
                         add `force` to take it over"
                    ),
                ))
            }
            Err(e) => return Err(e.into()),
        };
        diesel::delete(
            records::table
                .filter(records::domain_id.eq(p.domain_id))
                .filter(records::name.eq(&hostname))
                .filter(records::rtype.eq("CNAME")),
        )
        .execute(conn)?;
        diesel::insert_into(records::table)
            .values((
                records::domain_id.eq(p.domain_id),
                records::name.eq(&hostname),
                records::rtype.eq("CNAME"),
                records::content.eq(format!("{}.{}", p.region, p.zone.name)),
                records::ttl.eq(p.zone.record_ttl),
                records::prio.eq(0),
                records::disabled.eq(false),
                records::auth.eq(true),
            ))
            .execute(conn)?;
        Ok((id, crate::db::current_xid(conn)?))
    })?;
    let lsn = crate::db::current_wal_lsn(conn)?;
    Ok((tunnel_id, expires_at, lsn, xid))
}

/// Sets up a tunnel; see the module comment for the order of steps.
pub async fn create(
    st: &AppState,
    req: CreateTunnelRequest,
) -> ControlResult<CreateTunnelResponse> {
    let started = Instant::now();
    let zone_hint = req
        .token
        .as_ref()
        .map(|_| "?")
        .unwrap_or(&st.cfg.zones.free.name)
        .to_string();
    let result = create_inner(st, req).await;
    let (zone, outcome) = match &result {
        Ok(r) => (r.zone.clone(), "ok".to_string()),
        Err(e) => (zone_hint, e.code_label()),
    };
    st.metrics
        .setups_total
        .with_label_values(&[&zone, &outcome])
        .inc();
    if result.is_ok() {
        st.metrics
            .setup_seconds
            .with_label_values(&[&zone])
            .observe(started.elapsed().as_secs_f64());
    }
    result
}

async fn create_inner(
    st: &AppState,
    req: CreateTunnelRequest,
) -> ControlResult<CreateTunnelResponse> {
    let req = std::sync::Arc::new(req);
    let p = {
        let (st2, req2) = (st.clone(), req.clone());
        st.blocking(move |conn| plot(conn, &st2, &req2)).await?
    };
    let hostname = format!("{}.{}", p.label, p.zone.name);
    let mut replaced = None;
    if let Some(h) = &p.holder {
        let reason = settle_holder(st, h, &hostname, req.force).await?;
        replaced = Some(ReplacedTunnel {
            tunnel_id: h.tunnel_id,
            edge_id: h.edge_id.clone(),
            reason: reason.to_string(),
        });
    }
    let (tunnel_id, expires_at, lsn, xid) = {
        let (st2, req2, p2, r2) = (st.clone(), req.clone(), p.clone(), replaced.clone());
        st.blocking(move |conn| {
            let takeover = r2
                .as_ref()
                .and_then(|r| p2.holder.as_ref().map(|h| (h, r.reason.as_str())));
            write_tunnel(conn, &st2, &req2, &p2, takeover)
        })
        .await?
    };
    if let (Some(h), Some(r)) = (&p.holder, &replaced) {
        st.metrics
            .tunnels_closed_total
            .with_label_values(&[&r.reason])
            .inc();
        if r.reason != "force" {
            // The old client is gone or unreachable; tell its edge anyway so that a client
            // that comes back does not hold a tunnel nobody routes to.
            let (edges, url, id) = (st.edges.clone(), h.admin_url.clone(), h.tunnel_id);
            tokio::spawn(async move {
                edges
                    .close(
                        &url,
                        id,
                        "replaced",
                        "this tunnel was replaced by a newer one for the same name",
                    )
                    .await;
            });
        }
    }
    let dns = st.lag.wait(&lsn, &xid).await;
    tracing::info!(
        tunnel_id,
        %hostname,
        region = %p.region,
        edge = %req.edge_id,
        wait_ms = dns.wait_ms,
        unconfirmed = ?dns.unconfirmed,
        "tunnel set up"
    );
    Ok(CreateTunnelResponse {
        tunnel_id,
        label: p.label.clone(),
        zone: p.zone.name.clone(),
        hostname,
        region: p.region.clone(),
        lease_seconds: st.cfg.lease_seconds,
        expires_at,
        replaced_tunnel: replaced,
        dns,
    })
}

/// Closes tunnels (already selected as live) and removes their records, one transaction per
/// zone. Returns the ids closed.
pub fn close_where(
    conn: &mut PgConnection,
    ids: &[i64],
    reason: &str,
) -> ControlResult<Vec<(i64, String, String, String)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let now = Utc::now();
    conn.transaction::<_, ControlError, _>(|conn| {
        let closed: Vec<(i64, String, String, String)> = diesel::update(
            tunnels::table
                .filter(tunnels::id.eq_any(ids))
                .filter(tunnels::closed_at.is_null()),
        )
        .set((tunnels::closed_at.eq(now), tunnels::close_reason.eq(reason)))
        .returning((tunnels::id, tunnels::zone, tunnels::label, tunnels::edge_id))
        .get_results(conn)?;
        let hostnames: Vec<String> = closed
            .iter()
            .map(|(_, zone, label, _)| format!("{label}.{zone}"))
            .collect();
        diesel::delete(
            records::table
                .filter(records::name.eq_any(&hostnames))
                .filter(records::rtype.eq("CNAME")),
        )
        .execute(conn)?;
        Ok(closed)
    })
}

/// Closes one tunnel on behalf of its edge. Closing a closed tunnel is not an error.
pub async fn close(
    st: &AppState,
    tunnel_id: i64,
    edge_id: String,
    reason: String,
) -> ControlResult<()> {
    let reason_label = reason.clone();
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
                Some((_, Some(_))) => Ok(0),
                Some((_, None)) => {
                    let reason = sanitize_reason(&reason);
                    Ok(close_where(conn, &[tunnel_id], &reason)?.len())
                }
            }
        })
        .await?;
    if closed > 0 {
        st.metrics
            .tunnels_closed_total
            .with_label_values(&[&sanitize_reason(&reason_label)])
            .inc();
    }
    Ok(())
}

/// Reason codes are free text from edges; keep them short and label-safe.
pub fn sanitize_reason(reason: &str) -> String {
    let r: String = reason
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(32)
        .collect();
    if r.is_empty() {
        "closed".into()
    } else {
        r
    }
}

/// The sentence an edge prints when control closed a tunnel for `reason`.
pub fn close_message(reason: &str, time_limit_minutes: u64) -> String {
    match reason {
        "takedown" => "this tunnel's name was taken down by the operator".into(),
        "time_limit" => format!(
            "free tunnels are limited to {time_limit_minutes} minutes; reconnect for a new one, \
             or use a pro token"
        ),
        "replaced" | "force" => "this tunnel was replaced by a newer one for the same name".into(),
        "lease_expired" => "this tunnel's lease lapsed (its edge stopped renewing it)".into(),
        "edge_restarted" => "the edge restarted; reconnect to get your tunnel back".into(),
        other => format!("this tunnel was closed by the service ({other})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: Option<&str>) -> CreateTunnelRequest {
        CreateTunnelRequest {
            edge_id: "us-1".into(),
            token: None,
            requested_name: name.map(str::to_string),
            kind: Default::default(),
            force: false,
            client_addr: "127.0.0.1:5555".into(),
        }
    }

    #[test]
    fn wildcard_bind_addresses_ask_for_no_name() {
        for n in ["", "localhost", "0.0.0.0", "::", "127.0.0.1"] {
            assert_eq!(requested_label(&req(Some(n))), None, "{n}");
        }
        assert_eq!(requested_label(&req(Some("blog"))), Some("blog"));
    }

    #[test]
    fn source_drops_the_port() {
        assert_eq!(source_of("127.0.0.3:40000"), "127.0.0.3");
        assert_eq!(source_of("[::1]:22"), "::1");
        assert_eq!(source_of("10.0.0.1"), "10.0.0.1");
    }

    #[test]
    fn reasons_are_label_safe() {
        assert_eq!(sanitize_reason("client_closed"), "client_closed");
        assert_eq!(sanitize_reason("x\"}{; drop"), "xdrop");
        assert_eq!(sanitize_reason(""), "closed");
    }
}
