//! The plan's and the source's limits on tunnel setups, and the locks that make each check
//! and the insert it guards one atomic step.
//!
//! A count in one transaction and an insert in another let sixteen parallel `-R` of one
//! session all pass the count. So every check runs again inside the transaction that
//! inserts, after a transaction-scoped advisory lock on what it counts: the account (live
//! tunnels, names) and the source prefix (creations per minute, live anonymous tunnels).
//! Setups of one account or one source queue on the lock; others do not notice it.
//!
//! **Lock order.** Every transaction that takes more than one of these locks takes them in
//! this order, so that no two wait on each other: the account's advisory lock, then the
//! source prefix's, then the name's (`lock_name`), then rows: a name's (`names`), its ban
//! (`banned_names`), tunnels (`tunnels`), and last records (`records`). A transaction may
//! skip any of them, never take one after a later one.
//!
//! - A setup's plot takes both advisory locks first (`setup::take_locks`). Its write takes
//!   them again, then the name's, then locks its name's row (`FOR SHARE`,
//!   `names::still_owns`) and reads the ban before it closes a replaced tunnel and inserts.
//! - `name release` (`admin::release_name`) reads the name's owner without a lock, takes that
//!   account's lock, and only then locks the row (`FOR UPDATE`), checking that the owner is
//!   still the one it locked for. So a release and a setup of the name's owner run one after
//!   the other, whichever took the account's lock first: the release sees the setup's live
//!   tunnel and refuses, or the setup sees the name gone and plots again.
//! - `takedown` (`admin::takedown`) takes only the name's lock, then the ban's row, the
//!   tunnels on the name and their records. So a takedown and a setup's write on the name
//!   run one after the other: the takedown sees the written tunnel and closes it, or the write
//!   sees the ban and writes nothing. `takedown lift` takes no lock: it only deletes the ban,
//!   and a write that read the ban just before is a setup that came first.

use crate::config::ZoneConfig;
use crate::error::{ControlError, ControlResult};
use crate::metrics::Metrics;
use crate::schema::tunnels;
use chrono::Utc;
use diesel::prelude::*;
use diesel::sql_types::Text;
use nearhop_wire::ErrorCode;

/// Which limit refused a setup: the `limit` label of `nearhop_control_limit_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `max_tunnels_per_account`.
    LiveTunnels,
    /// `max_names_per_account`.
    Names,
    /// `creations_per_minute_per_source`.
    CreationRate,
    /// `max_anonymous_tunnels_per_source`.
    AnonymousPerSource,
}

impl Limit {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::LiveTunnels => "live_tunnels",
            Limit::Names => "names",
            Limit::CreationRate => "creation_rate",
            Limit::AnonymousPerSource => "anonymous_per_source",
        }
    }
}

/// Counts a refusal by `limit` in the metrics, passing the result on.
pub fn counted<T>(metrics: &Metrics, limit: Limit, result: ControlResult<T>) -> ControlResult<T> {
    if result.is_err() {
        metrics
            .limit_refusals_total
            .with_label_values(&[limit.as_str()])
            .inc();
    }
    result
}

/// Takes the transaction-scoped advisory lock named `key` (released at commit or
/// rollback). Keys are hashed to the lock's 64-bit space; a collision only queues two
/// unrelated setups one after the other.
fn lock(conn: &mut PgConnection, key: &str) -> ControlResult<()> {
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind::<Text, _>(key)
        .execute(conn)?;
    Ok(())
}

/// Serialises the account's setups and name claims until the transaction ends.
pub fn lock_account(conn: &mut PgConnection, account_id: i64) -> ControlResult<()> {
    lock(conn, &format!("nearhop:account:{account_id}"))
}

/// Serialises setups from one source prefix in one zone until the transaction ends. Take
/// it after the account's lock, never before, so that two setups cannot wait on each other.
pub fn lock_source(conn: &mut PgConnection, zone: &str, prefix: &str) -> ControlResult<()> {
    lock(conn, &format!("nearhop:source:{zone}:{prefix}"))
}

/// Serialises everything that writes a tunnel on `label` in `zone` or bans it, until the
/// transaction ends: a setup's write and a takedown. Take it after the account's and the
/// source's locks, never before.
pub fn lock_name(conn: &mut PgConnection, zone: &str, label: &str) -> ControlResult<()> {
    lock(conn, &format!("nearhop:name:{zone}:{label}"))
}

/// Refuses a setup when `prefix` created `creations_per_minute_per_source` tunnels in the
/// zone in the last minute.
pub fn check_source_rate(
    conn: &mut PgConnection,
    zone: &ZoneConfig,
    prefix: &str,
) -> ControlResult<()> {
    if zone.creations_per_minute_per_source == 0 {
        return Ok(());
    }
    let since = Utc::now() - chrono::Duration::minutes(1);
    let recent: i64 = tunnels::table
        .filter(tunnels::zone.eq(&zone.name))
        .filter(tunnels::source_prefix.eq(prefix))
        .filter(tunnels::created_at.gt(since))
        .count()
        .get_result(conn)?;
    if recent as u64 >= zone.creations_per_minute_per_source {
        return Err(ControlError::refused(
            ErrorCode::RateLimited,
            format!(
                "too many tunnels were created from {prefix} in the last minute (limit {}); \
                 wait a minute and try again",
                zone.creations_per_minute_per_source
            ),
        ));
    }
    Ok(())
}

/// Refuses a setup when the account has `max_tunnels_per_account` live tunnels. `freed` is
/// a live tunnel of the account that this setup replaces (a takeover of its own name).
pub fn check_live_tunnels(
    conn: &mut PgConnection,
    zone: &ZoneConfig,
    account_id: i64,
    freed: bool,
) -> ControlResult<()> {
    if zone.max_tunnels_per_account == 0 {
        return Ok(());
    }
    let live: i64 = tunnels::table
        .filter(tunnels::account_id.eq(account_id))
        .filter(tunnels::closed_at.is_null())
        .count()
        .get_result(conn)?;
    if (live - i64::from(freed)) as u64 >= zone.max_tunnels_per_account {
        return Err(ControlError::refused(
            ErrorCode::PlanLimit,
            format!(
                "the account has {live} live tunnels, the most its plan allows ({}); \
                 close one first",
                zone.max_tunnels_per_account
            ),
        ));
    }
    Ok(())
}

/// Refuses an anonymous setup when `prefix` holds `max_anonymous_tunnels_per_source` live
/// anonymous tunnels in the zone.
pub fn check_anonymous(
    conn: &mut PgConnection,
    zone: &ZoneConfig,
    prefix: &str,
) -> ControlResult<()> {
    if zone.max_anonymous_tunnels_per_source == 0 {
        return Ok(());
    }
    let live: i64 = tunnels::table
        .filter(tunnels::zone.eq(&zone.name))
        .filter(tunnels::account_id.is_null())
        .filter(tunnels::source_prefix.eq(prefix))
        .filter(tunnels::closed_at.is_null())
        .count()
        .get_result(conn)?;
    if live as u64 >= zone.max_anonymous_tunnels_per_source {
        return Err(ControlError::refused(
            ErrorCode::PlanLimit,
            format!(
                "{prefix} already has {live} live tunnels without a token, the most allowed \
                 ({}); close one, or connect with an account's token",
                zone.max_anonymous_tunnels_per_source
            ),
        ));
    }
    Ok(())
}
