//! Control's certificate rows, its ACME account, and the challenge records, all on the
//! primary. Keys are read and written here and never formatted into a message.

use super::names::{txt_content, Subject};
use super::x509::Leaf;
use crate::error::{ControlError, ControlResult};
use crate::schema::{
    acme_accounts, certificates, certificates_generation, custom_domains, records,
};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use nearhop_wire::{IssuedCertificate, Lsn};

/// A certificate row claimed by this control instance for one attempt.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// What it is for.
    pub subject: Subject,
    /// Failed attempts in a row before this one.
    pub failures: u32,
    /// Whether a certificate is in service for it now (this attempt is a renewal).
    pub in_service: bool,
}

/// A certificate's state, for the operator (no key).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertificateStatus {
    /// The zone or the custom domain.
    pub subject: String,
    /// `zone` or `custom_domain`.
    pub kind: String,
    /// The names it covers.
    pub names: Vec<String>,
    /// Whether a certificate is in service.
    pub in_service: bool,
    /// Serial number of the certificate in service (hex).
    pub serial: Option<String>,
    /// When the certificate in service expires.
    pub not_after: Option<DateTime<Utc>>,
    /// When it was issued.
    pub issued_at: Option<DateTime<Utc>>,
    /// Failed attempts in a row.
    pub failures: i32,
    /// Why the last attempt failed (cleared by a success).
    pub last_error: Option<String>,
    /// When control tries next (issue, renew or retry).
    pub next_attempt_at: DateTime<Utc>,
    /// For a custom domain: the CNAME the user must add at their DNS.
    pub challenge_cname: Option<(String, String)>,
}

/// Makes sure every subject has its row, and drops the rows of custom domains that are no
/// longer verified (their certificates leave service: the generation moves).
pub fn sync_subjects(conn: &mut PgConnection, subjects: &[Subject]) -> ControlResult<()> {
    conn.transaction(|conn| {
        for s in subjects {
            diesel::insert_into(certificates::table)
                .values((
                    certificates::subject.eq(s.key()),
                    certificates::kind.eq(s.kind()),
                    certificates::names.eq(s.names()),
                ))
                .on_conflict_do_nothing()
                .execute(conn)?;
        }
        let keys: Vec<&str> = subjects.iter().map(Subject::key).collect();
        let gone: Vec<Option<String>> = diesel::delete(
            certificates::table
                .filter(certificates::kind.eq("custom_domain"))
                .filter(certificates::subject.ne_all(&keys)),
        )
        .returning(certificates::chain_pem)
        .get_results(conn)?;
        if gone.iter().any(Option::is_some) {
            bump_generation(conn)?;
        }
        Ok(())
    })
}

/// Every verified custom domain, as subjects whose challenges are answered under `zone`.
pub fn verified_domains(conn: &mut PgConnection, zone: &str) -> ControlResult<Vec<Subject>> {
    let domains: Vec<String> = custom_domains::table
        .filter(custom_domains::verified_at.is_not_null())
        .select(custom_domains::domain)
        .order(custom_domains::domain)
        .load(conn)?;
    Ok(domains
        .into_iter()
        .map(|domain| Subject::CustomDomain {
            domain,
            zone: zone.to_string(),
        })
        .collect())
}

/// Claims one certificate that is due (never issued, due for renewal, retry time reached, or
/// forced) and not being worked on by another control instance: the row's claim is the lock,
/// taken with a conditional update so two instances never both get it, and lapsing after
/// `lease` if its holder dies.
pub fn claim_due(
    conn: &mut PgConnection,
    me: &str,
    lease: std::time::Duration,
    custom_domain_zone: &str,
) -> ControlResult<Option<Claimed>> {
    let now = Utc::now();
    let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::hours(1));
    conn.transaction(|conn| {
        let row: Option<(String, String, i32, bool)> = certificates::table
            .filter(
                certificates::next_attempt_at
                    .le(now)
                    .or(certificates::force_renewal.eq(true)),
            )
            .filter(
                certificates::claimed_until
                    .is_null()
                    .or(certificates::claimed_until.lt(now)),
            )
            .order(certificates::next_attempt_at)
            .select((
                certificates::subject,
                certificates::kind,
                certificates::failures,
                certificates::chain_pem.is_not_null(),
            ))
            .for_update()
            .skip_locked()
            .first(conn)
            .optional()?;
        let Some((key, kind, failures, in_service)) = row else {
            return Ok(None);
        };
        diesel::update(certificates::table.filter(certificates::subject.eq(&key)))
            .set((
                certificates::claimed_by.eq(me),
                certificates::claimed_until.eq(until),
                certificates::force_renewal.eq(false),
                certificates::last_attempt_at.eq(now),
            ))
            .execute(conn)?;
        let subject = match kind.as_str() {
            "zone" => Subject::Zone(key),
            _ => Subject::CustomDomain {
                domain: key,
                zone: custom_domain_zone.to_string(),
            },
        };
        Ok(Some(Claimed {
            subject,
            failures: failures.max(0) as u32,
            in_service,
        }))
    })
}

/// The issued certificate, with its key: what an attempt produced.
pub struct Issued {
    /// The chain in PEM, leaf first.
    pub chain_pem: String,
    /// The key in PEM (PKCS#8).
    pub key_pem: String,
    /// The leaf's facts.
    pub leaf: Leaf,
}

/// Stores a new certificate in service for `subject`, releases the claim and moves the
/// generation, in one transaction. Returns the new generation.
pub fn store_issued(
    conn: &mut PgConnection,
    subject: &str,
    issued: &Issued,
    next_attempt_at: DateTime<Utc>,
) -> ControlResult<i64> {
    conn.transaction(|conn| {
        let generation = bump_generation(conn)?;
        diesel::update(certificates::table.filter(certificates::subject.eq(subject)))
            .set((
                certificates::chain_pem.eq(&issued.chain_pem),
                certificates::key_pem.eq(&issued.key_pem),
                certificates::serial.eq(&issued.leaf.serial),
                certificates::not_after.eq(issued.leaf.not_after),
                certificates::issued_at.eq(Utc::now()),
                certificates::generation.eq(generation),
                certificates::failures.eq(0),
                certificates::last_error.eq(None::<String>),
                certificates::next_attempt_at.eq(next_attempt_at),
                certificates::claimed_by.eq(None::<String>),
                certificates::claimed_until.eq(None::<DateTime<Utc>>),
            ))
            .execute(conn)?;
        Ok(generation)
    })
}

/// Records a failed attempt: the certificate in service (if any) stays, the error and the
/// next try are kept, the claim is released.
pub fn store_failure(
    conn: &mut PgConnection,
    subject: &str,
    failures: u32,
    error: &str,
    next_attempt_at: DateTime<Utc>,
) -> ControlResult<()> {
    diesel::update(certificates::table.filter(certificates::subject.eq(subject)))
        .set((
            certificates::failures.eq(failures.min(i32::MAX as u32) as i32),
            certificates::last_error.eq(error.chars().take(2000).collect::<String>()),
            certificates::next_attempt_at.eq(next_attempt_at),
            certificates::claimed_by.eq(None::<String>),
            certificates::claimed_until.eq(None::<DateTime<Utc>>),
        ))
        .execute(conn)?;
    Ok(())
}

fn bump_generation(conn: &mut PgConnection) -> QueryResult<i64> {
    diesel::update(certificates_generation::table)
        .set(certificates_generation::generation.eq(certificates_generation::generation + 1))
        .returning(certificates_generation::generation)
        .get_result(conn)
}

/// The edges' certificates generation now (0 before the first certificate).
pub fn generation(conn: &mut PgConnection) -> ControlResult<i64> {
    Ok(certificates_generation::table
        .select(certificates_generation::generation)
        .first(conn)
        .optional()?
        .unwrap_or(0))
}

/// Every certificate in service, with the generation read first: a change committed between
/// the two reads leaves the edge with an older generation and a newer set, so it fetches
/// once more, never the other way round.
pub fn in_service(conn: &mut PgConnection) -> ControlResult<(i64, Vec<IssuedCertificate>)> {
    let generation = generation(conn)?;
    type Row = (
        Vec<String>,
        Option<String>,
        Option<String>,
        Option<DateTime<Utc>>,
    );
    let rows: Vec<Row> = certificates::table
        .filter(certificates::chain_pem.is_not_null())
        .filter(certificates::key_pem.is_not_null())
        .order(certificates::subject)
        .select((
            certificates::names,
            certificates::chain_pem,
            certificates::key_pem,
            certificates::not_after,
        ))
        .load(conn)?;
    let certificates = rows
        .into_iter()
        .filter_map(|(names, chain, key, not_after)| {
            Some(IssuedCertificate {
                names,
                chain_pem: chain?,
                key_pem: key?,
                not_after_unix: not_after.map(|t| t.timestamp()).unwrap_or(0),
            })
        })
        .collect();
    Ok((generation, certificates))
}

/// Every certificate row's state, for the operator.
pub fn statuses(conn: &mut PgConnection) -> ControlResult<Vec<CertificateStatus>> {
    type Row = (
        String,
        String,
        Vec<String>,
        bool,
        Option<String>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        i32,
        Option<String>,
        DateTime<Utc>,
    );
    let rows: Vec<Row> = certificates::table
        .order((certificates::kind.desc(), certificates::subject))
        .select((
            certificates::subject,
            certificates::kind,
            certificates::names,
            certificates::chain_pem.is_not_null(),
            certificates::serial,
            certificates::not_after,
            certificates::issued_at,
            certificates::failures,
            certificates::last_error,
            certificates::next_attempt_at,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|r| CertificateStatus {
            subject: r.0,
            kind: r.1,
            names: r.2,
            in_service: r.3,
            serial: r.4,
            not_after: r.5,
            issued_at: r.6,
            failures: r.7,
            last_error: r.8,
            next_attempt_at: r.9,
            challenge_cname: None,
        })
        .collect())
}

/// Asks for a new certificate for `subject` at the renewal task's next look, whatever its
/// expiry. False when control keeps no certificate for it.
pub fn force_renewal(conn: &mut PgConnection, subject: &str) -> ControlResult<bool> {
    let n = diesel::update(certificates::table.filter(certificates::subject.eq(subject)))
        .set((
            certificates::force_renewal.eq(true),
            certificates::next_attempt_at.eq(Utc::now()),
        ))
        .execute(conn)?;
    Ok(n > 0)
}

/// Control's stored ACME account credentials for `directory` (a secret).
pub fn account_credentials(
    conn: &mut PgConnection,
    directory: &str,
) -> ControlResult<Option<String>> {
    Ok(acme_accounts::table
        .filter(acme_accounts::directory_url.eq(directory))
        .select(acme_accounts::credentials)
        .first(conn)
        .optional()?)
}

/// Stores new account credentials unless another instance stored some first; returns the
/// ones stored, so every instance uses the same account.
pub fn save_account_credentials(
    conn: &mut PgConnection,
    directory: &str,
    credentials: &str,
) -> ControlResult<String> {
    diesel::insert_into(acme_accounts::table)
        .values((
            acme_accounts::directory_url.eq(directory),
            acme_accounts::credentials.eq(credentials),
        ))
        .on_conflict_do_nothing()
        .execute(conn)?;
    account_credentials(conn, directory)?
        .ok_or_else(|| ControlError::Internal("the ACME account was not stored".into()))
}

/// Forgets the stored account (the server no longer knows it); the next attempt makes one.
pub fn forget_account(conn: &mut PgConnection, directory: &str) -> ControlResult<()> {
    diesel::delete(acme_accounts::table.filter(acme_accounts::directory_url.eq(directory)))
        .execute(conn)?;
    Ok(())
}

/// One TXT record answering a challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeRecord {
    /// Where (`_acme-challenge.a.tunnel.test`, or a custom domain's target).
    pub name: String,
    /// The digest the ACME server expects (not a secret: it is published in DNS).
    pub value: String,
}

/// Writes the challenge records in the zone's one transaction, replacing any TXT record left
/// at those names by an attempt that died before its cleanup (the claim makes this instance
/// the only one working on the subject); returns the commit's WAL position and transaction
/// id for the lag-race wait.
pub fn write_challenges(
    conn: &mut PgConnection,
    zone: &str,
    ttl: i32,
    challenges: &[ChallengeRecord],
) -> ControlResult<(Lsn, u64)> {
    let domain_id = crate::zones::domain_id(conn, zone)
        .optional()?
        .ok_or_else(|| {
            ControlError::Internal(format!(
                "zone {zone} is not in the domains table; run `nearhop-control migrate`"
            ))
        })?;
    let xid = conn.transaction(|conn| {
        let names: Vec<&str> = challenges.iter().map(|c| c.name.as_str()).collect();
        diesel::delete(
            records::table
                .filter(records::name.eq_any(&names))
                .filter(records::rtype.eq("TXT")),
        )
        .execute(conn)?;
        for c in challenges {
            diesel::insert_into(records::table)
                .values((
                    records::domain_id.eq(domain_id),
                    records::name.eq(&c.name),
                    records::rtype.eq("TXT"),
                    records::content.eq(txt_content(&c.value)),
                    records::ttl.eq(ttl),
                    records::prio.eq(0),
                    records::disabled.eq(false),
                    records::auth.eq(true),
                ))
                .execute(conn)?;
        }
        crate::db::current_xid(conn)
    })?;
    Ok((crate::db::current_wal_lsn(conn)?, xid))
}

/// Removes the challenge records written for an attempt.
pub fn remove_challenges(
    conn: &mut PgConnection,
    challenges: &[ChallengeRecord],
) -> ControlResult<usize> {
    conn.transaction(|conn| {
        let mut removed = 0;
        for c in challenges {
            removed += diesel::delete(
                records::table
                    .filter(records::name.eq(&c.name))
                    .filter(records::rtype.eq("TXT"))
                    .filter(records::content.eq(txt_content(&c.value))),
            )
            .execute(conn)?;
        }
        Ok(removed)
    })
}
