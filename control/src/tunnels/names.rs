//! Which names an account may have: the label rules, bans, ownership and the per-account
//! limit. Setting a tunnel up and the operator's reservation claim names through
//! [`claim_name`], so the two cannot disagree on who owns what.

use crate::config::ZoneConfig;
use crate::error::{ControlError, ControlResult};
use crate::schema::{banned_names, names};
use diesel::prelude::*;
use nearhop_wire::{normalize_label, random_label, ErrorCode};

/// Draws before giving up on a random label; at 36^8 labels even one clash is rare.
const DRAWS: usize = 8;

/// Who claims a name, which decides whether the plan's name limit applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimant {
    /// A tunnel setup asking for the name: bound by `max_names_per_account`, which stops an
    /// account from hoarding names by connecting with each.
    Tunnel,
    /// The operator reserving it for the account: the operator's word is the limit.
    Operator,
}

/// Checks a requested label against the label rules, returning it case-folded.
pub fn valid_label(requested: &str) -> ControlResult<String> {
    normalize_label(requested).map_err(|e| {
        ControlError::refused(
            ErrorCode::InvalidName,
            format!("the name {requested:?} is not valid: {e}"),
        )
    })
}

/// Checks a name a client asked for (a label, or `label.<zone>` as pasted from a URL; see
/// [`nearhop_wire::label_in_zone`]) and returns the label. Anything else is refused with a
/// sentence that says which names are allowed, never rewritten into another name.
pub fn valid_requested(requested: &str, zone: &str) -> ControlResult<String> {
    nearhop_wire::label_in_zone(requested, zone).map_err(|e| {
        ControlError::refused(
            ErrorCode::InvalidName,
            format!(
                "the name {requested:?} is not allowed: {e}; ask for one label of letters \
                 a-z, digits and '-' (-R myblog:0:localhost:8000) or that label followed \
                 by .{zone}"
            ),
        )
    })
}

/// Whether the operator took `label` down in `zone`.
pub fn is_banned(conn: &mut PgConnection, zone: &str, label: &str) -> ControlResult<bool> {
    Ok(diesel::select(diesel::dsl::exists(
        banned_names::table
            .filter(banned_names::zone.eq(zone))
            .filter(banned_names::label.eq(label)),
    ))
    .get_result(conn)?)
}

/// How the refusal of a banned name the client asked for ends.
pub const CANNOT_BE_USED: &str = " and cannot be used";

/// Refuses a banned name; `hint` ends the sentence with what the user can do instead.
pub fn refuse_if_banned(
    conn: &mut PgConnection,
    zone: &str,
    label: &str,
    hint: &str,
) -> ControlResult<()> {
    if is_banned(conn, zone, label)? {
        return Err(ControlError::refused(
            ErrorCode::NameBanned,
            format!("the name {label}.{zone} was taken down{hint}"),
        ));
    }
    Ok(())
}

fn owner_of(conn: &mut PgConnection, zone: &str, label: &str) -> ControlResult<Option<i64>> {
    Ok(names::table
        .filter(names::zone.eq(zone))
        .filter(names::label.eq(label))
        .select(names::account_id)
        .first(conn)
        .optional()?)
}

/// Whether the account still owns `label` in `zone`, with the name's row locked (`FOR
/// SHARE`) until the transaction ends, so that no `name release` can delete it before the
/// tunnel on it is written. Take it under the account's lock (the lock order is in
/// `limits`).
pub fn still_owns(
    conn: &mut PgConnection,
    zone: &str,
    label: &str,
    account_id: i64,
) -> ControlResult<bool> {
    let owner: Option<i64> = names::table
        .filter(names::zone.eq(zone))
        .filter(names::label.eq(label))
        .select(names::account_id)
        .for_share()
        .first(conn)
        .optional()?;
    Ok(owner == Some(account_id))
}

/// Claims `label` in `zone` for the account: refuses a banned name and one owned by another
/// account, and otherwise records the account as its owner (a no-op when it owns it already).
pub fn claim_name(
    conn: &mut PgConnection,
    zone: &ZoneConfig,
    account_id: i64,
    label: &str,
    claimant: Claimant,
) -> ControlResult<()> {
    refuse_if_banned(conn, &zone.name, label, CANNOT_BE_USED)?;
    // Two rounds at most: a claim that loses the insert race reads the winner the second time.
    for _ in 0..2 {
        match owner_of(conn, &zone.name, label)? {
            Some(owner) if owner == account_id => return Ok(()),
            Some(_) => {
                return Err(ControlError::refused(
                    ErrorCode::NameOwned,
                    format!(
                        "the name {label}.{} belongs to another account; pick another name",
                        zone.name
                    ),
                ))
            }
            None => {}
        }
        if claimant == Claimant::Tunnel && zone.max_names_per_account > 0 {
            let owned: i64 = names::table
                .filter(names::account_id.eq(account_id))
                .filter(names::zone.eq(&zone.name))
                .count()
                .get_result(conn)?;
            if owned as u64 >= zone.max_names_per_account {
                return Err(ControlError::refused(
                    ErrorCode::PlanLimit,
                    names_limit_sentence(owned, zone.max_names_per_account),
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
        if inserted == 1 {
            return Ok(());
        }
    }
    Err(ControlError::Internal(format!(
        "the name {label}.{} changed owner while being claimed",
        zone.name
    )))
}

/// The refusal of a new name to an account that owns `owned` names, `allowed` by its plan.
/// `owned` may be above `allowed`: the operator's reservations do not count against the plan.
fn names_limit_sentence(owned: i64, allowed: u64) -> String {
    format!(
        "the account owns {owned} names and its plan allows {allowed}; use one of them \
         (-R NAME:0:localhost:PORT), or ask the operator to release one you no longer need \
         (nearhop-control name release NAME)"
    )
}

/// The account's persistent name in `zone`, drawn and recorded on its first tunnel.
pub fn default_name(conn: &mut PgConnection, account_id: i64, zone: &str) -> ControlResult<String> {
    for _ in 0..DRAWS {
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

/// A random label for a tunnel that asked for no name of its own: one that is not banned,
/// not owned by any account (a pro tunnel asking for a random name draws in the zone where
/// accounts own names) and not live now.
pub fn draw_free_label(
    conn: &mut PgConnection,
    zone: &str,
    is_live: impl Fn(&mut PgConnection, &str) -> ControlResult<bool>,
) -> ControlResult<String> {
    first_free(random_label, |label| {
        Ok(is_banned(conn, zone, label)?
            || owner_of(conn, zone, label)?.is_some()
            || is_live(conn, label)?)
    })?
    .ok_or_else(|| ControlError::Internal("could not draw a free random name".into()))
}

/// The first of up to `DRAWS` labels from `draw` that is not `taken`.
fn first_free(
    mut draw: impl FnMut() -> String,
    mut taken: impl FnMut(&str) -> ControlResult<bool>,
) -> ControlResult<Option<String>> {
    for _ in 0..DRAWS {
        let label = draw();
        if !taken(&label)? {
            return Ok(Some(label));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drawn_label_that_is_taken_is_drawn_again() {
        let mut labels = ["owned0", "live0001", "free0001"].into_iter();
        let taken = ["owned0", "live0001"];
        let got = first_free(
            || labels.next().expect("a label").to_string(),
            |l| Ok(taken.contains(&l)),
        )
        .expect("no error");
        assert_eq!(got.as_deref(), Some("free0001"));
        // Every draw taken: none is handed out.
        let all_taken = first_free(|| "owned0".to_string(), |_| Ok(true)).expect("no error");
        assert_eq!(all_taken, None);
    }

    #[test]
    fn the_names_refusal_states_the_plans_limit_and_how_to_free_one() {
        // 51 owned (the operator reserved past the plan), 50 allowed.
        let s = names_limit_sentence(51, 50);
        assert!(
            s.starts_with("the account owns 51 names and its plan allows 50;"),
            "{s}"
        );
        assert!(s.contains("nearhop-control name release"), "{s}");
        assert!(!s.contains("the most its plan allows"), "{s}");
    }
}
