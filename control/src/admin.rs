//! Operator actions, shared by the admin API and the CLI: accounts, tokens, names, custom
//! domains, takedowns.

use crate::db::{new_token, token_hash};
use crate::error::{ControlError, ControlResult};
use crate::schema::{accounts, banned_names, custom_domains, names, records, tokens, tunnels};
use crate::state::AppState;
use crate::tunnels::caller::account_plan;
use crate::tunnels::limits::{lock_account, lock_name};
use crate::tunnels::names::{self as name_rules, Claimant};
use crate::tunnels::{close_tunnels, Notice};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use nearhop_wire::{
    normalize_domain, normalize_label, AccountCreated, CloseReason, CnameRecord, DomainAdded,
    ErrorCode, NameReleased, Plan, TakedownDone, TakedownLifted, TokenCreated, TokenListed,
    TokenRevoked,
};

/// The first characters of a token or credential, kept to recognise it in lists.
pub fn hint(token: &str) -> String {
    format!("{}…", &token[..token.len().min(7)])
}

/// Checks text an operator typed that is stored as written (an account's name, a
/// takedown's reason), returning it trimmed: not empty, at most `max` characters, no NUL
/// (PostgreSQL text cannot hold it) and no other control character. `what` names the text
/// in the refusal, `example` shows a good one.
fn operator_text(what: &str, value: &str, max: usize, example: &str) -> ControlResult<String> {
    let value = value.trim();
    let refuse = |why: String| Err(ControlError::refused(ErrorCode::BadRequest, why));
    if value.is_empty() {
        return refuse(format!("the {what} is empty; give one, e.g. {example}"));
    }
    if value.contains('\0') {
        return refuse(format!(
            "the {what} may not contain the NUL character (\\u0000); remove it and try again"
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return refuse(format!(
            "the {what} may not contain control characters (found {c:?}); write it on one line \
             of printable characters"
        ));
    }
    let len = value.chars().count();
    if len > max {
        return refuse(format!(
            "the {what} is {len} characters long; at most {max} are allowed"
        ));
    }
    Ok(value.to_string())
}

/// Creates an account with a first token.
pub fn create_account(
    conn: &mut PgConnection,
    name: &str,
    plan: Plan,
) -> ControlResult<AccountCreated> {
    let name = operator_text("account name", name, 200, "--name \"Shop Ltd\"")?;
    conn.transaction(|conn| {
        let account_id: i64 = diesel::insert_into(accounts::table)
            .values((accounts::name.eq(&name), accounts::plan.eq(plan.as_str())))
            .returning(accounts::id)
            .get_result(conn)?;
        let TokenCreated { token_id, token } = insert_token(conn, account_id)?;
        Ok(AccountCreated {
            account_id,
            plan,
            token,
            token_id,
        })
    })
}

fn insert_token(conn: &mut PgConnection, account_id: i64) -> ControlResult<TokenCreated> {
    let token = new_token();
    let token_id: i64 = diesel::insert_into(tokens::table)
        .values((
            tokens::account_id.eq(account_id),
            tokens::token_hash.eq(token_hash(&token)),
            tokens::hint.eq(hint(&token)),
        ))
        .returning(tokens::id)
        .get_result(conn)?;
    Ok(TokenCreated { token_id, token })
}

fn account_exists(conn: &mut PgConnection, account_id: i64) -> ControlResult<()> {
    let found: bool = diesel::select(diesel::dsl::exists(
        accounts::table.filter(accounts::id.eq(account_id)),
    ))
    .get_result(conn)?;
    if !found {
        return Err(ControlError::refused(
            ErrorCode::NotFound,
            format!("no account {account_id}"),
        ));
    }
    Ok(())
}

/// Creates another token for an account.
pub fn create_token(conn: &mut PgConnection, account_id: i64) -> ControlResult<TokenCreated> {
    account_exists(conn, account_id)?;
    insert_token(conn, account_id)
}

/// Every token of an account, oldest first: id, hint, created, revoked, last used. Never the
/// token, which control keeps only as a hash.
/// `last_used_at` is written at most once a minute: see [`crate::tunnels::caller::record_use`].
pub fn list_tokens(conn: &mut PgConnection, account_id: i64) -> ControlResult<Vec<TokenListed>> {
    account_exists(conn, account_id)?;
    type TokenRow = (
        i64,
        String,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
    );
    let rows: Vec<TokenRow> = tokens::table
        .filter(tokens::account_id.eq(account_id))
        .order(tokens::id)
        .select((
            tokens::id,
            tokens::hint,
            tokens::created_at,
            tokens::revoked_at,
            tokens::last_used_at,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(
            |(token_id, hint, created_at, revoked_at, last_used_at)| TokenListed {
                token_id,
                hint,
                created_at,
                revoked_at,
                last_used_at,
            },
        )
        .collect())
}

/// Revokes a token: it stops working for new tunnels at once. A token revoked already keeps
/// the time it was revoked at, and the answer says so.
pub fn revoke_token(conn: &mut PgConnection, token_id: i64) -> ControlResult<TokenRevoked> {
    let revoked: Option<DateTime<Utc>> = diesel::update(
        tokens::table
            .filter(tokens::id.eq(token_id))
            .filter(tokens::revoked_at.is_null()),
    )
    .set(tokens::revoked_at.eq(Utc::now()))
    .returning(tokens::revoked_at)
    .get_result::<Option<DateTime<Utc>>>(conn)
    .optional()?
    .flatten();
    if let Some(revoked_at) = revoked {
        return Ok(TokenRevoked {
            token_id,
            revoked: true,
            already_revoked: false,
            revoked_at,
        });
    }
    let earlier: Option<Option<DateTime<Utc>>> = tokens::table
        .filter(tokens::id.eq(token_id))
        .select(tokens::revoked_at)
        .first(conn)
        .optional()?;
    match earlier.flatten() {
        Some(revoked_at) => Ok(TokenRevoked {
            token_id,
            revoked: true,
            already_revoked: true,
            revoked_at,
        }),
        None => Err(ControlError::refused(
            ErrorCode::NotFound,
            format!("no token {token_id}; `token list --account ID` shows an account's tokens"),
        )),
    }
}

/// Reserves a name in the account's zone, through the same claim as a tunnel setup (bans
/// and ownership), without the plan's name limit: the operator decides.
pub fn reserve_name(
    st: &AppState,
    conn: &mut PgConnection,
    account_id: i64,
    name: &str,
) -> ControlResult<String> {
    let label = name_rules::valid_label(name)?;
    if account_plan(conn, account_id)? != Plan::Pro {
        return Err(ControlError::refused(
            ErrorCode::PlanLimit,
            "only pro accounts own names; free tunnels get random names",
        ));
    }
    let zone = &st.cfg.zones.pro;
    st.cfg.check_not_service_label(zone, &label)?;
    name_rules::claim_name(conn, zone, account_id, &label, Claimant::Operator)?;
    Ok(format!("{label}.{}", zone.name))
}

/// Frees a persistent name (`label`, or `label.<zone>` in either zone) from the account that
/// owns it, so that any account may claim it again. Refused while a tunnel holds the name:
/// the operator closes it first (its owner, or a takedown). The custom domains that point at
/// the name go with it: they route to whatever tunnel holds the name, which may be another
/// account's next. Runs under the owner's lock, taken before the name's row is locked (the
/// order in `tunnels::limits`): a setup of that account that is claiming the name or writing
/// a tunnel on it either finished first (its tunnel is live: refused) or waits, and then
/// finds the name released and treats it as any unowned name.
pub fn release_name(
    st: &AppState,
    conn: &mut PgConnection,
    name: &str,
) -> ControlResult<NameReleased> {
    let not_a_name = || {
        ControlError::refused(
            ErrorCode::InvalidName,
            format!(
                "{name:?} is not a name in one of the service's zones; give the label \
                 (blog) or the whole name (blog.{})",
                st.cfg.zones.pro.name
            ),
        )
    };
    let (zone, label) = if name.trim_end_matches('.').contains('.') {
        st.cfg
            .split_hostname(name)
            .map(|(z, l)| (z.name.clone(), l))
            .ok_or_else(not_a_name)?
    } else {
        // No label rules beyond the spelling: a name owned before a label became reserved
        // can still be released.
        let label = nearhop_wire::storage_name(name)
            .filter(|l| !l.is_empty())
            .ok_or_else(not_a_name)?;
        (st.cfg.zones.pro.name.clone(), label)
    };
    let hostname = format!("{label}.{zone}");
    conn.transaction(|conn| {
        let owner = |conn: &mut PgConnection, lock: bool| -> ControlResult<i64> {
            let query = names::table
                .filter(names::zone.eq(&zone))
                .filter(names::label.eq(&label))
                .select(names::account_id);
            let owner: Option<i64> = if lock {
                query.for_update().first(conn).optional()?
            } else {
                query.first(conn).optional()?
            };
            owner.ok_or_else(|| {
                ControlError::refused(
                    ErrorCode::NotFound,
                    format!("{hostname} is not owned by any account; there is nothing to release"),
                )
            })
        };
        // The owner's lock before the name's row, as a setup takes them: the other order
        // would let a release holding the row and a setup holding the lock wait on each other.
        let account_id = owner(conn, false)?;
        lock_account(conn, account_id)?;
        let locked_owner = owner(conn, true)?;
        if locked_owner != account_id {
            return Err(ControlError::refused(
                ErrorCode::Conflict,
                format!(
                    "{hostname} changed owner while being released (account {account_id}, now \
                     account {locked_owner}); run `name release` again if it should go"
                ),
            ));
        }
        let live: Option<(i64, String)> = tunnels::table
            .filter(tunnels::zone.eq(&zone))
            .filter(tunnels::label.eq(&label))
            .filter(tunnels::closed_at.is_null())
            .select((tunnels::id, tunnels::edge_id))
            .first(conn)
            .optional()?;
        if let Some((tunnel_id, edge_id)) = live {
            return Err(ControlError::refused(
                ErrorCode::Conflict,
                format!(
                    "{hostname} has a live tunnel ({tunnel_id} on edge {edge_id}); release the \
                     name once it is closed: its owner closes it, or `takedown {hostname}` \
                     closes it and bans the name"
                ),
            ));
        }
        let domains_removed: Vec<String> = diesel::delete(
            custom_domains::table
                .filter(custom_domains::zone.eq(&zone))
                .filter(custom_domains::label.eq(&label)),
        )
        .returning(custom_domains::domain)
        .get_results(conn)?;
        let was_default: bool = diesel::delete(
            names::table
                .filter(names::zone.eq(&zone))
                .filter(names::label.eq(&label)),
        )
        .returning(names::is_default)
        .get_result(conn)?;
        Ok(NameReleased {
            hostname: hostname.clone(),
            account_id,
            was_default,
            domains_removed,
        })
    })
}

/// What `name release` prints.
pub fn released_sentence(r: &NameReleased) -> String {
    let mut s = format!(
        "{} released from account {}: any account may claim it now",
        r.hostname, r.account_id
    );
    if r.was_default {
        s.push_str("; it was the account's persistent name, its next tunnel gets a new one");
    }
    if !r.domains_removed.is_empty() {
        s.push_str(&format!(
            "; custom domains removed with it: {}",
            r.domains_removed.join(", ")
        ));
    }
    s
}

/// Records a custom domain for one of the account's names. `verified` is the operator's
/// word that the user proved ownership (the TXT record `_nearhop.<domain>` = the token shown).
pub fn add_domain(
    st: &AppState,
    conn: &mut PgConnection,
    account_id: i64,
    domain: &str,
    target: &str,
    verified: bool,
) -> ControlResult<DomainAdded> {
    let domain = normalize_domain(domain).map_err(|e| {
        ControlError::refused(
            ErrorCode::InvalidName,
            format!("the domain {domain:?} is not valid: {e}"),
        )
    })?;
    let zone = st.cfg.zones.pro.name.clone();
    if domain == zone
        || domain.ends_with(&format!(".{zone}"))
        || domain.ends_with(&format!(".{}", st.cfg.zones.free.name))
    {
        return Err(ControlError::refused(
            ErrorCode::InvalidName,
            "a custom domain must be outside the service's own zones",
        ));
    }
    let label = normalize_label(target.strip_suffix(&format!(".{zone}")).unwrap_or(target))
        .map_err(|e| {
            ControlError::refused(ErrorCode::InvalidName, format!("target {target:?}: {e}"))
        })?;
    let owner: Option<i64> = names::table
        .filter(names::zone.eq(&zone))
        .filter(names::label.eq(&label))
        .select(names::account_id)
        .first(conn)
        .optional()?;
    if owner != Some(account_id) {
        return Err(ControlError::refused(
            ErrorCode::NameOwned,
            format!("the account does not own {label}.{zone}; reserve it first"),
        ));
    }
    let verify_token = new_token();
    let inserted = diesel::insert_into(custom_domains::table)
        .values((
            custom_domains::domain.eq(&domain),
            custom_domains::account_id.eq(account_id),
            custom_domains::zone.eq(&zone),
            custom_domains::label.eq(&label),
            custom_domains::verify_token.eq(&verify_token),
            custom_domains::verified_at.eq(verified.then(Utc::now)),
        ))
        .on_conflict_do_nothing()
        .execute(conn)?;
    if inserted == 0 {
        return Err(ControlError::refused(
            ErrorCode::Conflict,
            format!("{domain} is already registered"),
        ));
    }
    let acme_challenge_cname = st.cfg.acme_enabled.then(|| {
        let (name, target) = crate::acme::names::custom_domain_cname(&domain, &zone);
        CnameRecord { name, target }
    });
    Ok(DomainAdded {
        acme_challenge_cname,
        cname_target: format!("{label}.{zone}"),
        txt_name: format!("_nearhop.{domain}"),
        txt_value: verify_token,
        verified,
        domain,
    })
}

/// Refuses a takedown of anything a tunnel could not be named: a takedown deletes every
/// record of the name, so `us.a.tunnel.test` would break every tunnel of the region and
/// `_acme-challenge.a.tunnel.test` the certificates. The same rules as a tunnel's name.
fn refuse_service_name(
    st: &AppState,
    hostname: &str,
    zone: &str,
    label: &str,
) -> ControlResult<()> {
    let zone_cfg = if st.cfg.zones.pro.name == zone {
        &st.cfg.zones.pro
    } else {
        &st.cfg.zones.free
    };
    if st.cfg.is_service_label(zone_cfg, label) || normalize_label(label).is_err() {
        return Err(ControlError::refused(
            ErrorCode::InvalidName,
            format!(
                "{hostname} is one of the service's own names (a region's edge host, a name \
                 server, a zone apex or a reserved label), not a tunnel's; a takedown only \
                 removes tunnel names"
            ),
        ));
    }
    Ok(())
}

/// The zone and label of a hostname in one of the service's zones, or a refusal.
fn tunnel_hostname(st: &AppState, hostname: &str) -> ControlResult<(String, String)> {
    st.cfg
        .split_hostname(hostname)
        .map(|(z, l)| (z.name.clone(), l))
        .ok_or_else(|| {
            ControlError::refused(
                ErrorCode::InvalidName,
                format!(
                    "{hostname:?} is not a tunnel name in one of the service's zones; give the \
                     whole name, e.g. blog.{}",
                    st.cfg.zones.pro.name
                ),
            )
        })
}

/// Takes a name down: closes its live tunnel (on its edge too), removes every record of the
/// name, and bans it. Taking a banned name down again replaces the ban's reason (and closes
/// or removes whatever is left); the answer says it was banned already.
///
/// Runs under the name's lock (the order in `tunnels::limits`), which a setup's write also
/// takes: a setup that decided on the name before the takedown either wrote its tunnel
/// first (closed here, its edge told before the answer) or writes after and finds the ban
/// (refused). When the takedown answers, no live tunnel holds the name.
pub async fn takedown(st: &AppState, hostname: &str, reason: &str) -> ControlResult<TakedownDone> {
    let (zone, label) = tunnel_hostname(st, hostname)?;
    refuse_service_name(st, hostname, &zone, &label)?;
    let reason = operator_text(
        "takedown reason",
        reason,
        500,
        "--reason \"phishing, ticket 1234\"",
    )?;
    let hostname = format!("{label}.{zone}");
    let name = hostname.clone();
    let (closed, removed, previous_reason) = st
        .blocking(move |conn| {
            conn.transaction::<_, ControlError, _>(|conn| {
                lock_name(conn, &zone, &label)?;
                let previous: Option<String> = banned_names::table
                    .filter(banned_names::zone.eq(&zone))
                    .filter(banned_names::label.eq(&label))
                    .select(banned_names::reason)
                    .for_update()
                    .first(conn)
                    .optional()?;
                let live: Vec<i64> = tunnels::table
                    .filter(tunnels::zone.eq(&zone))
                    .filter(tunnels::label.eq(&label))
                    .filter(tunnels::closed_at.is_null())
                    .select(tunnels::id)
                    .load(conn)?;
                // Every record of the name goes, not only the tunnel's CNAME; counted before
                // the close, which removes the CNAME itself, and deleted after it (tunnels'
                // rows before records', as every close takes them).
                let removed: i64 = records::table
                    .filter(records::name.eq(&name))
                    .count()
                    .get_result(conn)?;
                let closed = close_tunnels(conn, &live, CloseReason::Takedown)?;
                diesel::delete(records::table.filter(records::name.eq(&name))).execute(conn)?;
                diesel::insert_into(banned_names::table)
                    .values((
                        banned_names::zone.eq(&zone),
                        banned_names::label.eq(&label),
                        banned_names::reason.eq(&reason),
                    ))
                    .on_conflict((banned_names::zone, banned_names::label))
                    .do_update()
                    .set(banned_names::reason.eq(&reason))
                    .execute(conn)?;
                Ok((closed, removed as u64, previous))
            })
        })
        .await?;
    let closed_tunnel = closed.tunnels.first().map(|t| t.id);
    closed
        .announce(st, Notice::Wait(CloseReason::Takedown))
        .await;
    Ok(TakedownDone {
        hostname,
        closed_tunnel,
        records_removed: removed,
        already_banned: previous_reason.is_some(),
        previous_reason,
    })
}

/// What `takedown` prints: what was closed and removed, and whether the name was banned
/// already (and whether its reason changed).
pub fn takedown_sentence(d: &TakedownDone, reason: &str) -> String {
    let closed = match d.closed_tunnel {
        Some(id) => format!("its live tunnel {id} was closed"),
        None => "it had no live tunnel".to_string(),
    };
    let records = match d.records_removed {
        1 => "1 record removed".to_string(),
        n => format!("{n} records removed"),
    };
    let reason = reason.trim();
    match &d.previous_reason {
        None => format!(
            "{} taken down: {closed}, {records}; the name is banned (reason: {reason})",
            d.hostname
        ),
        Some(previous) if previous == reason => format!(
            "{} was already taken down, with the same reason ({reason}); {closed}, {records}",
            d.hostname
        ),
        Some(previous) => format!(
            "{} was already taken down; its reason was replaced ({previous:?} is now \
             {reason:?}); {closed}, {records}",
            d.hostname
        ),
    }
}

/// Lifts a takedown: the name is no longer banned, and its owner (or, for a name nobody
/// owns, anyone) can set a tunnel up on it again. Records removed by the takedown are not
/// restored; the next tunnel writes its own.
pub fn lift_takedown(
    st: &AppState,
    conn: &mut PgConnection,
    hostname: &str,
) -> ControlResult<TakedownLifted> {
    let (zone, label) = tunnel_hostname(st, hostname)?;
    let hostname = format!("{label}.{zone}");
    let lifted: Option<(String, DateTime<Utc>)> = diesel::delete(
        banned_names::table
            .filter(banned_names::zone.eq(&zone))
            .filter(banned_names::label.eq(&label)),
    )
    .returning((banned_names::reason, banned_names::banned_at))
    .get_result(conn)
    .optional()?;
    let (reason, banned_at) = lifted.ok_or_else(|| {
        ControlError::refused(
            ErrorCode::NotFound,
            format!("{hostname} is not taken down; there is no ban to lift"),
        )
    })?;
    Ok(TakedownLifted {
        hostname,
        reason,
        banned_at,
    })
}

/// Checks the TXT proof of a custom domain at `resolver` and marks it verified when one of
/// `_nearhop.<domain>`'s TXT strings is the domain's verify token.
pub fn verify_domain(
    conn: &mut PgConnection,
    domain: &str,
    resolver: std::net::SocketAddr,
) -> ControlResult<bool> {
    let domain = normalize_domain(domain).map_err(|e| {
        ControlError::refused(
            ErrorCode::InvalidName,
            format!("the domain {domain:?} is not valid: {e}"),
        )
    })?;
    let token: Option<String> = custom_domains::table
        .filter(custom_domains::domain.eq(&domain))
        .select(custom_domains::verify_token)
        .first(conn)
        .optional()?;
    let token = token.ok_or_else(|| {
        ControlError::refused(ErrorCode::NotFound, format!("{domain} is not registered"))
    })?;
    let txt_name = format!("_nearhop.{domain}");
    let found = crate::dns_txt::lookup_txt(resolver, &txt_name).map_err(|e| {
        ControlError::refused(
            ErrorCode::Conflict,
            format!("could not read TXT {txt_name} from {resolver}: {e}"),
        )
    })?;
    if !found.iter().any(|t| t.trim() == token) {
        return Err(ControlError::refused(
            ErrorCode::Conflict,
            format!(
                "TXT {txt_name} does not hold the verification token yet (found {} strings); \
                 publish it and try again",
                found.len()
            ),
        ));
    }
    diesel::update(custom_domains::table.filter(custom_domains::domain.eq(&domain)))
        .set(custom_domains::verified_at.eq(Utc::now()))
        .execute(conn)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_text_refuses_nul_empty_control_and_overlong_with_a_sentence() {
        let check = |v: &str| operator_text("takedown reason", v, 10, "--reason x");
        assert_eq!(check("  phishing ").unwrap(), "phishing");
        let e = check("a\0b").unwrap_err().to_string();
        assert!(e.contains("NUL character (\\u0000)"), "{e}");
        let e = check("   ").unwrap_err().to_string();
        assert!(e.contains("is empty") && e.contains("--reason x"), "{e}");
        let e = check("a\u{7}b").unwrap_err().to_string();
        assert!(e.contains("control characters"), "{e}");
        let e = check(&"x".repeat(11)).unwrap_err().to_string();
        assert!(
            e.contains("11 characters") && e.contains("at most 10"),
            "{e}"
        );
        for bad in ["a\0b", "", "a\u{7}b"] {
            assert_eq!(check(bad).unwrap_err().code(), ErrorCode::BadRequest);
        }
    }

    fn done(closed_tunnel: Option<i64>, previous_reason: Option<&str>) -> TakedownDone {
        TakedownDone {
            hostname: "blog.a.tunnel.test".into(),
            closed_tunnel,
            records_removed: u64::from(closed_tunnel.is_some()),
            already_banned: previous_reason.is_some(),
            previous_reason: previous_reason.map(str::to_string),
        }
    }

    #[test]
    fn a_takedown_is_told_in_a_sentence_not_debug_output() {
        let s = takedown_sentence(&done(Some(68), None), "phishing");
        assert_eq!(
            s,
            "blog.a.tunnel.test taken down: its live tunnel 68 was closed, 1 record removed; \
             the name is banned (reason: phishing)"
        );
        let s = takedown_sentence(&done(None, None), "phishing");
        assert!(
            s.contains("it had no live tunnel, 0 records removed"),
            "{s}"
        );
        for s in [
            takedown_sentence(&done(Some(68), None), "x"),
            takedown_sentence(&done(None, Some("x")), "x"),
        ] {
            assert!(!s.contains("Some(") && !s.contains("None"), "{s}");
        }
    }

    #[test]
    fn a_second_takedown_says_it_was_banned_and_whether_the_reason_changed() {
        let s = takedown_sentence(&done(None, Some("phishing")), "phishing");
        assert!(
            s.contains("was already taken down, with the same reason"),
            "{s}"
        );
        let s = takedown_sentence(&done(None, Some("phishing")), "malware");
        assert!(
            s.contains("was already taken down; its reason was replaced")
                && s.contains("\"phishing\" is now \"malware\""),
            "{s}"
        );
    }

    #[test]
    fn a_release_says_what_went_with_the_name() {
        let mut r = NameReleased {
            hostname: "blog.a.tunnel.test".into(),
            account_id: 7,
            was_default: false,
            domains_removed: vec![],
        };
        assert_eq!(
            released_sentence(&r),
            "blog.a.tunnel.test released from account 7: any account may claim it now"
        );
        r.was_default = true;
        r.domains_removed = vec!["shop.example".into(), "www.shop.example".into()];
        let s = released_sentence(&r);
        assert!(s.contains("its next tunnel gets a new one"), "{s}");
        assert!(s.contains("shop.example, www.shop.example"), "{s}");
    }
}
