//! Tunnel setup. Reads like the protocol: authenticate → pick zone and name → settle who
//! holds the name → write the tunnel and its record in one transaction (the limits counted
//! again there, and the name checked to be still the account's and not taken down, under the
//! account's, the source's and the name's locks: see `limits` for their order) → wait for
//! the regions' DNS → answer.

use crate::config::ZoneConfig;
use crate::error::{ControlError, ControlResult};
use crate::schema::{edges, records, tunnels};
use crate::state::AppState;
use crate::tunnels::caller::{authenticate, record_use, Caller};
use crate::tunnels::closing::{close_tunnels, Closed, Notice};
use crate::tunnels::limits::{self, Limit};
use crate::tunnels::names::{self, Claimant};
use crate::tunnels::takeover::{holder_of, settle_holder, setup_window, Holder};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use nearhop_wire::{
    CloseReason, CreateTunnelRequest, CreateTunnelResponse, ErrorCode, Lsn, Plan, ReplacedTunnel,
};
use std::sync::Arc;
use std::time::Instant;

/// Everything decided before the write.
#[derive(Debug, Clone)]
struct Plot {
    caller: Caller,
    zone: ZoneConfig,
    domain_id: i32,
    label: String,
    /// The label is the account's own name (asked for and claimed, or its persistent one),
    /// not a random one: the write checks that the account still owns it.
    owned: bool,
    region: String,
    holder: Option<Holder>,
}

impl Plot {
    fn hostname(&self) -> String {
        format!("{}.{}", self.label, self.zone.name)
    }
}

/// The holder a new tunnel replaces, and why.
#[derive(Debug, Clone)]
struct Takeover {
    holder: Holder,
    reason: CloseReason,
}

/// Why the write found the plot's name no longer the setup's to take; the setup plots again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stale {
    /// The operator released the account's name (`name release`).
    Released,
    /// The operator took the random name down (`takedown`). The account's own name taken
    /// down is refused instead, as the plot refuses it.
    TakenDown,
}

/// How the refusal of the account's persistent name, taken down, ends.
const ASK_ANOTHER: &str = "; ask for another name with -R NAME:0:localhost:PORT";

/// What the write produced.
#[derive(Debug)]
struct Written {
    tunnel_id: i64,
    expires_at: Option<DateTime<Utc>>,
    commit_lsn: Lsn,
    commit_xid: u64,
    /// The holder closed in the same transaction.
    replaced: Option<Closed>,
}

/// The name asked for in the request: `None` when absent or blank. The edge has already
/// turned the bind address into a name ([`nearhop_wire::requested_name`]); what arrives here
/// is checked as a label or `label.<zone>` ([`nearhop_wire::label_in_zone`]), so a `*` is an
/// invalid name rather than "any".
fn requested_label(req: &CreateTunnelRequest) -> Option<&str> {
    req.requested_name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
}

/// The client's address without a port, as stored in `tunnels.client_addr`.
fn source_of(addr: &str) -> String {
    addr.parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| addr.chars().take(64).collect())
}

/// The source prefix per-source limits count by (`Config::source_prefix`); something that
/// is not an address counts as itself.
fn prefix_of(st: &AppState, addr: &str) -> String {
    st.cfg
        .source_prefix(addr)
        .unwrap_or_else(|| source_of(addr))
}

/// Takes the account's lock, then the source prefix's (always in that order); returns the
/// prefix.
fn take_locks(
    conn: &mut PgConnection,
    st: &AppState,
    zone: &ZoneConfig,
    caller: Caller,
    client_addr: &str,
) -> ControlResult<String> {
    let prefix = prefix_of(st, client_addr);
    if let Some(account_id) = caller.account_id {
        limits::lock_account(conn, account_id)?;
    }
    limits::lock_source(conn, &zone.name, &prefix)?;
    Ok(prefix)
}

/// Every limit on a setup, checked under the account's and the source's locks (taken here,
/// held until the caller's transaction ends). `freed`: the setup replaces a live tunnel of
/// the same account.
fn check_limits(
    conn: &mut PgConnection,
    st: &AppState,
    zone: &ZoneConfig,
    caller: Caller,
    client_addr: &str,
    freed: bool,
) -> ControlResult<()> {
    let prefix = take_locks(conn, st, zone, caller, client_addr)?;
    let m = &st.metrics;
    limits::counted(
        m,
        Limit::CreationRate,
        limits::check_source_rate(conn, zone, &prefix),
    )?;
    match caller.account_id {
        Some(account_id) => limits::counted(
            m,
            Limit::LiveTunnels,
            limits::check_live_tunnels(conn, zone, account_id, freed),
        ),
        None => limits::counted(
            m,
            Limit::AnonymousPerSource,
            limits::check_anonymous(conn, zone, &prefix),
        ),
    }
}

fn edge_region(conn: &mut PgConnection, edge_id: &str) -> ControlResult<String> {
    edges::table
        .filter(edges::id.eq(edge_id))
        .select(edges::region)
        .first(conn)
        .optional()?
        .ok_or_else(|| {
            ControlError::refused(
                ErrorCode::NotFound,
                format!("edge {edge_id:?} is not registered; it must register first"),
            )
        })
}

/// Picks the label: the asked-for name (claimed), the account's persistent name, or a
/// random one; and whether it is the account's own name (not a random one).
fn pick_label(
    conn: &mut PgConnection,
    st: &AppState,
    zone: &ZoneConfig,
    caller: Caller,
    requested: Option<String>,
    naming: Naming,
) -> ControlResult<(String, bool)> {
    match (caller.plan, caller.account_id, requested) {
        (Plan::Pro, Some(account_id), Some(label)) => {
            let claimed = names::claim_name(conn, zone, account_id, &label, Claimant::Tunnel);
            let over = matches!(&claimed, Err(e) if e.code() == ErrorCode::PlanLimit);
            if over {
                return limits::counted(&st.metrics, Limit::Names, claimed.map(|_| (label, true)));
            }
            claimed?;
            Ok((label, true))
        }
        (Plan::Pro, Some(account_id), None) if naming == Naming::AsAsked => {
            let label = names::default_name(conn, account_id, &zone.name)?;
            names::refuse_if_banned(conn, &zone.name, &label, ASK_ANOTHER)?;
            Ok((label, true))
        }
        _ => {
            let window = setup_window(st);
            let label = names::draw_free_label(conn, &zone.name, |conn, label| {
                Ok(holder_of(conn, &zone.name, label, window)?.is_some())
            })?;
            Ok((label, false))
        }
    }
}

/// Which name a setup that asked for none gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Naming {
    /// The account's persistent name (pro), or a random one (free, anonymous).
    AsAsked,
    /// A random one: the account's persistent name is live in another of its tunnels (a
    /// second `-R 0` of one `ssh`, or a second `ssh`), which a setup without `force` does
    /// not take over.
    AnotherName,
}

/// Told beside the URL of a tunnel that got [`Naming::AnotherName`].
const ANOTHER_NAME: &str = "your account's own name is live in another tunnel (another -R of \
     this ssh, or another connection), so this tunnel got a random name; connect as \
     TOKEN+force@... to take your name over instead.";

/// Authenticates the caller, then decides zone, name and holder in one transaction under the
/// account's lock, so that a name claim and the name limit it checks are one step; the
/// live-tunnel and per-source checks here refuse early and run again where the tunnel is
/// inserted. The token's use is recorded before the transaction, in a statement of its own
/// whose failure is only logged: inside, a failed statement would abort the transaction.
fn plot(
    conn: &mut PgConnection,
    st: &AppState,
    req: &CreateTunnelRequest,
    naming: Naming,
) -> ControlResult<Plot> {
    let region = edge_region(conn, &req.edge_id)?;
    let caller = authenticate(conn, req.token.as_deref())?;
    record_use(conn, caller);
    conn.transaction(|conn| plot_locked(conn, st, req, caller, region, naming))
}

fn plot_locked(
    conn: &mut PgConnection,
    st: &AppState,
    req: &CreateTunnelRequest,
    caller: Caller,
    region: String,
    naming: Naming,
) -> ControlResult<Plot> {
    let zone = st.cfg.zone_for(caller.plan).clone();
    let requested = match (caller.plan, requested_label(req)) {
        (Plan::Free, Some(_)) => {
            return Err(ControlError::refused(
                ErrorCode::PlanLimit,
                "choosing a name needs a pro token; free tunnels get a random name \
                 (connect with -R0:localhost:PORT)",
            ))
        }
        (_, Some(r)) => Some(names::valid_requested(r, &zone.name)?),
        (_, None) => None,
    };
    if let Some(label) = &requested {
        st.cfg.check_not_service_label(&zone, label)?;
    }
    // Both locks before any row (the order in `limits`): the claim below inserts a name.
    let prefix = take_locks(conn, st, &zone, caller, &req.client_addr)?;
    limits::counted(
        &st.metrics,
        Limit::CreationRate,
        limits::check_source_rate(conn, &zone, &prefix),
    )?;
    let domain_id = crate::zones::domain_id(conn, &zone.name)
        .optional()?
        .ok_or_else(|| {
            ControlError::Internal(format!(
                "zone {} is not in the domains table; run `nearhop-control migrate`",
                zone.name
            ))
        })?;
    let (label, owned) = pick_label(conn, st, &zone, caller, requested, naming)?;
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
    check_limits(conn, st, &zone, caller, &req.client_addr, holder.is_some())?;
    Ok(Plot {
        caller,
        zone,
        domain_id,
        label,
        owned,
        region,
        holder,
    })
}

/// Writes the tunnel and its record in one transaction (one zone), closing the replaced
/// holder in the same transaction. Nothing is written when the operator changed the name
/// since the plot: [`Stale`] when it released the account's name or took a random one down,
/// the ban's refusal when it took the account's own name down.
fn write_tunnel(
    conn: &mut PgConnection,
    st: &AppState,
    req: &CreateTunnelRequest,
    p: &Plot,
    takeover: Option<&Takeover>,
) -> ControlResult<Result<Written, Stale>> {
    let hostname = p.hostname();
    let now = Utc::now();
    let lease = now + chrono::Duration::seconds(st.cfg.lease_seconds as i64);
    let expires_at = (p.zone.time_limit_minutes > 0)
        .then(|| now + chrono::Duration::minutes(p.zone.time_limit_minutes as i64));
    let written = conn.transaction(|conn| {
        // Locks first: a takeover's close below locks the holder's row, and a setup that
        // holds the account's lock may be about to close the same row.
        take_locks(conn, st, &p.zone, p.caller, &req.client_addr)?;
        // The name the plot decided on may have been released or taken down since (the
        // plot's transaction has ended). Its row stays locked until this one commits, so no
        // release can free it under the tunnel written below; a takedown waits for the
        // name's lock, and then finds the tunnel and closes it.
        limits::lock_name(conn, &p.zone.name, &p.label)?;
        if let (true, Some(account_id)) = (p.owned, p.caller.account_id) {
            if !names::still_owns(conn, &p.zone.name, &p.label, account_id)? {
                return Ok(Err(Stale::Released));
            }
        }
        if p.owned {
            // Refused as the plot refuses a banned name of the account's.
            let hint = match requested_label(req) {
                Some(_) => names::CANNOT_BE_USED,
                None => ASK_ANOTHER,
            };
            names::refuse_if_banned(conn, &p.zone.name, &p.label, hint)?;
        } else if names::is_banned(conn, &p.zone.name, &p.label)? {
            return Ok(Err(Stale::TakenDown));
        }
        let replaced = takeover
            .map(|t| close_tunnels(conn, &[t.holder.tunnel_id], t.reason))
            .transpose()?;
        // The checks again, now under the locks and in the inserting transaction: what
        // `plot` counted may have changed since. The replaced holder is closed already.
        check_limits(conn, st, &p.zone, p.caller, &req.client_addr, false)?;
        let inserted = diesel::insert_into(tunnels::table)
            .values((
                tunnels::account_id.eq(p.caller.account_id),
                tunnels::zone.eq(&p.zone.name),
                tunnels::label.eq(&p.label),
                tunnels::kind.eq(req.kind.as_str()),
                tunnels::region.eq(&p.region),
                tunnels::edge_id.eq(&req.edge_id),
                tunnels::client_addr.eq(source_of(&req.client_addr)),
                tunnels::source_prefix.eq(prefix_of(st, &req.client_addr)),
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
        Ok::<_, ControlError>(Ok((id, crate::db::current_xid(conn)?, replaced)))
    })?;
    let (tunnel_id, commit_xid, replaced) = match written {
        Ok(written) => written,
        Err(stale) => return Ok(Err(stale)),
    };
    Ok(Ok(Written {
        tunnel_id,
        expires_at,
        commit_lsn: crate::db::current_wal_lsn(conn)?,
        commit_xid,
        replaced,
    }))
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
        Ok(r) => (r.zone.clone(), "ok"),
        Err(e) => (zone_hint, e.code().as_str()),
    };
    st.metrics
        .setups_total
        .with_label_values(&[&zone, outcome])
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
    let req = Arc::new(req);
    match create_named(st, &req, Naming::AsAsked).await {
        // A pro tunnel that asked for no name found the account's persistent name live in
        // another of its tunnels (alive, or being set up by another connection): without
        // `force` it gets a name of its own instead of a refusal, so several `-R 0` of one
        // `ssh` give several tunnels.
        Err(e)
            if e.code() == ErrorCode::NameInUse
                && requested_label(&req).is_none()
                && !req.force
                && req.token.is_some() =>
        {
            tracing::info!(reason = %e, "the account's name is live elsewhere; a random name instead");
            let mut resp = create_named(st, &req, Naming::AnotherName).await?;
            resp.notice = Some(ANOTHER_NAME.to_string());
            Ok(resp)
        }
        other => other,
    }
}

/// How many times a setup plots at most: once more when its name was released between the
/// plot and the write, so that it treats the name as any unowned one (claims it again, or
/// draws a new persistent name), or when its random name was taken down (it draws another).
/// A third is not tried: two releases of one name within one setup are an operator racing
/// themselves.
const PLOTS: usize = 2;

/// Plots, settles the holder and writes the tunnel: the plot again when the name was
/// released, or a random name taken down, before the write ([`PLOTS`]).
async fn plot_and_write(
    st: &AppState,
    req: &Arc<CreateTunnelRequest>,
    naming: Naming,
) -> ControlResult<(Plot, Option<Takeover>, Written)> {
    let mut plotted = 0;
    loop {
        plotted += 1;
        let p = {
            let (st2, req2) = (st.clone(), req.clone());
            st.blocking(move |conn| plot(conn, &st2, &req2, naming))
                .await?
        };
        let takeover = match &p.holder {
            Some(h) => Some(Takeover {
                holder: h.clone(),
                reason: settle_holder(st, h, &p.hostname(), req.force).await?,
            }),
            None => None,
        };
        let written = {
            let (st2, req2, p2, t2) = (st.clone(), req.clone(), p.clone(), takeover.clone());
            st.blocking(move |conn| write_tunnel(conn, &st2, &req2, &p2, t2.as_ref()))
                .await?
        };
        match written {
            Ok(written) => return Ok((p, takeover, written)),
            Err(Stale::Released) if plotted < PLOTS => {
                tracing::info!(
                    hostname = %p.hostname(),
                    "the name was released during the setup; plotting again"
                );
            }
            Err(Stale::TakenDown) if plotted < PLOTS => {
                tracing::info!(
                    hostname = %p.hostname(),
                    "the random name was taken down during the setup; plotting again"
                );
            }
            Err(Stale::Released) => {
                return Err(ControlError::refused(
                    ErrorCode::Conflict,
                    format!(
                        "the name {} was released by the operator while this tunnel was \
                         being set up; connect again",
                        p.hostname()
                    ),
                ))
            }
            Err(Stale::TakenDown) => {
                return Err(ControlError::refused(
                    ErrorCode::NameBanned,
                    format!(
                        "the name {} was taken down while this tunnel was being set up; \
                         connect again for another name",
                        p.hostname()
                    ),
                ))
            }
        }
    }
}

async fn create_named(
    st: &AppState,
    req: &Arc<CreateTunnelRequest>,
    naming: Naming,
) -> ControlResult<CreateTunnelResponse> {
    let (p, takeover, written) = plot_and_write(st, req, naming).await?;
    let hostname = p.hostname();
    // A forced holder was closed on its edge before the write. A dead one's client is gone
    // or unreachable; its edge is told anyway so that a client that comes back does not hold
    // a tunnel nobody routes to.
    if let Some(replaced) = written.replaced {
        let notice = match replaced.reason {
            CloseReason::Force => Notice::Known,
            _ => Notice::Background(CloseReason::Replaced),
        };
        replaced.announce(st, notice).await;
    }
    let dns = st.lag.wait(written.commit_lsn, written.commit_xid).await;
    closed_while_waiting(st, written.tunnel_id, &p).await?;
    tracing::info!(
        tunnel_id = written.tunnel_id,
        %hostname,
        region = %p.region,
        edge = %req.edge_id,
        wait_ms = dns.wait_ms,
        unconfirmed = ?dns.unconfirmed,
        "tunnel set up"
    );
    let holder_proof = st.holder_signing.prove(
        &hostname.to_ascii_lowercase(),
        &req.edge_id,
        written.tunnel_id,
        req.kind,
    );
    Ok(CreateTunnelResponse {
        holder_proof: Some(holder_proof),
        tunnel_id: written.tunnel_id,
        label: p.label.clone(),
        zone: p.zone.name.clone(),
        hostname,
        region: p.region.clone(),
        lease_seconds: st.cfg.lease_seconds,
        expires_at: written.expires_at,
        replaced_tunnel: takeover.map(|t| ReplacedTunnel {
            tunnel_id: t.holder.tunnel_id,
            edge_id: t.holder.edge_id,
            reason: t.reason,
        }),
        dns,
        notice: None,
    })
}

/// Refuses the setup when its tunnel was closed while the regions' DNS was awaited: taken
/// down, or replaced by a `force` from another client. Its edge does not know the tunnel
/// before this answer, so a close sent to it meanwhile found nothing to close there; a 201
/// now would have the edge serve a tunnel that control has closed, until the edge's next
/// heartbeat.
async fn closed_while_waiting(st: &AppState, tunnel_id: i64, p: &Plot) -> ControlResult<()> {
    let reason: Option<String> = st
        .blocking(move |conn| {
            tunnels::table
                .find(tunnel_id)
                .filter(tunnels::closed_at.is_not_null())
                .select(tunnels::close_reason)
                .first::<Option<String>>(conn)
                .optional()
                .map(Option::flatten)
                .map_err(ControlError::from)
        })
        .await?;
    let Some(reason) = reason else {
        return Ok(());
    };
    let hostname = p.hostname();
    tracing::info!(tunnel_id, %hostname, reason, "tunnel closed during its setup; refused");
    Err(match CloseReason::parse(&reason) {
        CloseReason::Takedown => ControlError::refused(
            ErrorCode::NameBanned,
            format!(
                "the name {hostname} was taken down while this tunnel was being set up; \
                 connect again for another name"
            ),
        ),
        // Not `name_in_use`: that would send a pro tunnel without a name on to a random one.
        CloseReason::Replaced | CloseReason::Force => ControlError::refused(
            ErrorCode::Conflict,
            format!(
                "{hostname} was taken over by another tunnel (force) while this one was being \
                 set up"
            ),
        ),
        other => ControlError::refused(
            ErrorCode::Conflict,
            format!("this tunnel was closed ({other}) while it was being set up; connect again"),
        ),
    })
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
    fn a_blank_requested_name_asks_for_none_and_a_star_is_a_name_to_check() {
        for n in [None, Some(""), Some("  ")] {
            assert_eq!(requested_label(&req(n)), None, "{n:?}");
        }
        assert_eq!(requested_label(&req(Some("blog"))), Some("blog"));
        assert_eq!(requested_label(&req(Some("*"))), Some("*"));
        assert!(names::valid_requested("*", "a.tunnel.test").is_err());
    }

    #[test]
    fn source_drops_the_port() {
        assert_eq!(source_of("127.0.0.3:40000"), "127.0.0.3");
        assert_eq!(source_of("[::1]:22"), "::1");
        assert_eq!(source_of("10.0.0.1"), "10.0.0.1");
    }
}
