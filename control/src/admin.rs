//! Operator actions, shared by the admin API and the CLI: accounts, tokens, names, custom
//! domains, takedowns.

use crate::db::{new_token, token_hash};
use crate::error::{ControlError, ControlResult};
use crate::schema::{accounts, banned_names, custom_domains, names, records, tokens, tunnels};
use crate::state::AppState;
use crate::tunnels::caller::account_plan;
use crate::tunnels::names::{self as name_rules, Claimant};
use crate::tunnels::{close_tunnels, Notice};
use chrono::Utc;
use diesel::prelude::*;
use nearhop_wire::{
    normalize_domain, normalize_label, AccountCreated, CloseReason, CnameRecord, DomainAdded,
    ErrorCode, Plan, TakedownDone, TokenCreated,
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
        let token = insert_token(conn, account_id)?.token;
        Ok(AccountCreated {
            account_id,
            plan,
            token,
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

/// Revokes a token: it stops working for new tunnels at once.
pub fn revoke_token(conn: &mut PgConnection, token_id: i64) -> ControlResult<()> {
    let n = diesel::update(tokens::table.filter(tokens::id.eq(token_id)))
        .set(tokens::revoked_at.eq(Utc::now()))
        .execute(conn)?;
    if n == 0 {
        return Err(ControlError::refused(
            ErrorCode::NotFound,
            format!("no token {token_id}"),
        ));
    }
    Ok(())
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

/// Takes a name down: closes its live tunnel (on its edge too), removes every record of the
/// name, and bans it.
pub async fn takedown(st: &AppState, hostname: &str, reason: &str) -> ControlResult<TakedownDone> {
    let (zone, label) = st
        .cfg
        .split_hostname(hostname)
        .map(|(z, l)| (z.name.clone(), l))
        .ok_or_else(|| {
            ControlError::refused(
                ErrorCode::InvalidName,
                format!("{hostname:?} is not a tunnel name in one of the service's zones"),
            )
        })?;
    refuse_service_name(st, hostname, &zone, &label)?;
    let reason = operator_text(
        "takedown reason",
        reason,
        500,
        "--reason \"phishing, ticket 1234\"",
    )?;
    let (closed, removed) = st
        .blocking(move |conn| {
            conn.transaction::<_, ControlError, _>(|conn| {
                let live: Vec<i64> = tunnels::table
                    .filter(tunnels::zone.eq(&zone))
                    .filter(tunnels::label.eq(&label))
                    .filter(tunnels::closed_at.is_null())
                    .select(tunnels::id)
                    .load(conn)?;
                // Every record of the name goes, not only the tunnel's CNAME; counted before
                // the close, which would remove the CNAME itself.
                let removed = diesel::delete(
                    records::table.filter(records::name.eq(format!("{label}.{zone}"))),
                )
                .execute(conn)?;
                let closed = close_tunnels(conn, &live, CloseReason::Takedown)?;
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
                Ok((closed, removed as u64))
            })
        })
        .await?;
    let closed_tunnel = closed.tunnels.first().map(|t| t.id);
    closed
        .announce(st, Notice::Wait(CloseReason::Takedown))
        .await;
    Ok(TakedownDone {
        closed_tunnel,
        records_removed: removed,
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
}
