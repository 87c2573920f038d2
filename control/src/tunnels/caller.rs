//! Who asks for a tunnel: a token names an account and its plan; no token is an anonymous
//! free tunnel.

use crate::error::{ControlError, ControlResult};
use crate::schema::{accounts, tokens};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use nearhop_wire::{ErrorCode, Plan};

/// Longest token looked up; real tokens are far shorter, a longer one is refused unhashed.
const MAX_TOKEN_LEN: usize = 200;

/// Who is asking: an account with a plan, or nobody (anonymous free tunnel).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// The account, if a token was given.
    pub account_id: Option<i64>,
    /// The token that authenticated, if one was given (for [`record_use`]).
    pub token_id: Option<i64>,
    /// The plan that applies.
    pub plan: Plan,
}

/// An account's row as far as authentication needs it.
#[derive(Queryable)]
struct TokenAccount {
    token_id: i64,
    account_id: i64,
    plan: String,
    disabled: bool,
    revoked_at: Option<DateTime<Utc>>,
}

/// Reads an account's plan column; the column is text, the plan is typed from here on.
fn typed_plan(account_id: i64, plan: &str) -> ControlResult<Plan> {
    Plan::parse(plan).ok_or_else(|| {
        ControlError::Internal(format!("account {account_id} has unknown plan {plan:?}"))
    })
}

/// The plan of an account, or `not_found`.
pub fn account_plan(conn: &mut PgConnection, account_id: i64) -> ControlResult<Plan> {
    let plan: Option<String> = accounts::table
        .filter(accounts::id.eq(account_id))
        .select(accounts::plan)
        .first(conn)
        .optional()?;
    let plan = plan.ok_or_else(|| {
        ControlError::refused(ErrorCode::NotFound, format!("no account {account_id}"))
    })?;
    typed_plan(account_id, &plan)
}

/// Authenticates a token: the account and plan, or a refusal that says what to do.
pub fn authenticate(conn: &mut PgConnection, token: Option<&str>) -> ControlResult<Caller> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Ok(Caller {
            account_id: None,
            token_id: None,
            plan: Plan::Free,
        });
    };
    if token.len() > MAX_TOKEN_LEN {
        return Err(ControlError::refused(
            ErrorCode::BadToken,
            "the token is not valid",
        ));
    }
    let hash = crate::db::token_hash(token);
    let row: Option<TokenAccount> = tokens::table
        .inner_join(accounts::table)
        .filter(tokens::token_hash.eq(hash))
        .select((
            tokens::id,
            accounts::id,
            accounts::plan,
            accounts::disabled,
            tokens::revoked_at,
        ))
        .first(conn)
        .optional()?;
    let Some(row) = row else {
        return Err(ControlError::refused(
            ErrorCode::BadToken,
            "the token is not valid: check that you copied it whole, or create a new one",
        ));
    };
    if row.revoked_at.is_some() {
        return Err(ControlError::refused(
            ErrorCode::BadToken,
            "the token was revoked: create a new one for this account",
        ));
    }
    if row.disabled {
        return Err(ControlError::refused(
            ErrorCode::BadToken,
            "the account of this token is disabled: contact the operator",
        ));
    }
    Ok(Caller {
        account_id: Some(row.account_id),
        token_id: Some(row.token_id),
        plan: typed_plan(row.account_id, &row.plan)?,
    })
}

/// How stale `tokens.last_used_at` may get: a token used again within this interval is not
/// written again, so a client reconnecting in a loop costs one conditional UPDATE that
/// matches no row, not a new row version per setup.
const LAST_USE_RESOLUTION: &str = "1 minute";

/// Records that the caller's token authenticated a setup just now (`tokens.last_used_at`,
/// shown by `token list`), at most once per [`LAST_USE_RESOLUTION`] per token. Run it
/// outside any transaction: a failed statement would abort the setup's transaction, and a
/// bookkeeping write must never refuse a tunnel, so a failure is only logged.
pub fn record_use(conn: &mut PgConnection, caller: Caller) {
    let Some(token_id) = caller.token_id else {
        return;
    };
    let stale = diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
        "(last_used_at IS NULL OR last_used_at < now() - interval '{LAST_USE_RESOLUTION}')"
    ));
    let updated = diesel::update(tokens::table.filter(tokens::id.eq(token_id)).filter(stale))
        .set(tokens::last_used_at.eq(diesel::dsl::now))
        .execute(conn);
    if let Err(e) = updated {
        tracing::warn!(token_id, error = %e, "could not record the token's last use; the setup goes on");
    }
}
