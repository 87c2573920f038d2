//! Certificates by ACME: control obtains one certificate per zone (apex and wildcard) and
//! one per verified custom domain with the DNS-01 challenge answered in its own DNS,
//! renews them ahead of expiry, and keeps them for the edges (`GET /v1/edges/{id}/certificates`).
//!
//! The renewal task ([`run`]) looks every `acme_check_interval_seconds`: it makes sure each
//! zone and verified domain has its row, then claims due rows one at a time (the claim is
//! the lock between control instances) and works each through one ACME order
//! ([`order::issue`]). A failure keeps the certificate in service, and is logged, counted,
//! stored on the row with the next try (exponential backoff), and alerted on.

pub mod names;
pub mod order;
pub mod schedule;
pub mod store;
pub mod x509;

use crate::lag::LagWaiter;
use crate::state::AppState;
use names::Subject;
use std::time::Duration;

/// The longest one attempt may take (DNS wait, validation, issuance); a claim lasts longer,
/// so that no other instance takes a subject while an attempt on it is still running.
fn attempt_bound(st: &AppState) -> Duration {
    Duration::from_millis(st.cfg.acme_dns_wait_ms) + Duration::from_secs(5 * 60)
}

/// The renewal task's shared parts.
#[derive(Clone)]
pub struct Acme {
    /// Control's state.
    pub st: AppState,
    /// The lag-race wait, bounded by `acme_dns_wait_ms`: a challenge record must be served
    /// by every waited region before the server is asked to validate.
    pub dns_wait: LagWaiter,
    /// Who claims rows (host, listen address and pid).
    instance: String,
}

impl Acme {
    /// The task's parts for `st`.
    pub fn new(st: AppState) -> anyhow::Result<Acme> {
        // Its waits are kept out of the lag-race metrics, which describe tunnel setups (and
        // page on timeouts); a wait that fails an attempt is in the attempt's error instead.
        let dns_wait = LagWaiter::new(
            st.pool.clone(),
            st.cfg.waited_regions(),
            st.cfg.primary_region.clone(),
            Duration::from_millis(st.cfg.acme_dns_wait_ms),
            crate::metrics::Metrics::new()?,
        )?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let instance = format!("{}/{}/{}", host.trim(), st.cfg.listen, std::process::id());
        Ok(Acme {
            st,
            dns_wait,
            instance,
        })
    }
}

/// Issues and renews certificates until the process ends; returns at once when ACME is off.
pub async fn run(st: AppState) {
    if !st.cfg.acme_enabled {
        return;
    }
    // instant-acme's HTTPS client takes the process's default TLS provider; name it, so
    // that a second provider compiled into the workspace one day cannot leave it ambiguous.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let acme = match Acme::new(st) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "the ACME renewal task could not start");
            return;
        }
    };
    tracing::info!(
        directory = %acme.st.cfg.acme_directory_url,
        renew_before_days = acme.st.cfg.acme_renew_before_days,
        "ACME renewal task started"
    );
    let mut account = None;
    let interval = Duration::from_secs(acme.st.cfg.acme_check_interval_seconds);
    loop {
        if let Err(e) = pass(&acme, &mut account).await {
            tracing::warn!(error = %e, "ACME pass failed; trying again at the next look");
        }
        tokio::time::sleep(interval).await;
    }
}

/// One look: rows for every subject, then every due one worked, then the gauges.
async fn pass(acme: &Acme, account: &mut Option<instant_acme::Account>) -> anyhow::Result<()> {
    let cfg = acme.st.cfg.clone();
    let pro = cfg.zones.pro.name.clone();
    acme.st
        .blocking(move |conn| {
            let mut subjects = vec![
                Subject::Zone(cfg.zones.pro.name.clone()),
                Subject::Zone(cfg.zones.free.name.clone()),
            ];
            subjects.extend(store::verified_domains(conn, &cfg.zones.pro.name)?);
            store::sync_subjects(conn, &subjects)
        })
        .await?;
    loop {
        let (me, lease, zone) = (
            acme.instance.clone(),
            attempt_bound(&acme.st) + Duration::from_secs(60),
            pro.clone(),
        );
        let claimed = acme
            .st
            .blocking(move |conn| store::claim_due(conn, &me, lease, &zone))
            .await?;
        let Some(claimed) = claimed else { break };
        attempt(acme, account, claimed).await;
    }
    refresh_gauges(acme).await
}

/// One attempt on a claimed row, its outcome stored either way.
async fn attempt(
    acme: &Acme,
    account: &mut Option<instant_acme::Account>,
    claimed: store::Claimed,
) {
    let subject = claimed.subject.clone();
    let kind = subject.kind();
    tracing::info!(
        subject = subject.key(),
        renewal = claimed.in_service,
        failures = claimed.failures,
        "requesting a certificate"
    );
    let result = tokio::time::timeout(attempt_bound(&acme.st), async {
        if account.is_none() {
            *account = Some(order::account(acme).await?);
        }
        match account.as_ref() {
            Some(a) => order::issue(acme, a, &subject).await,
            None => anyhow::bail!("no ACME account"),
        }
    })
    .await
    .unwrap_or_else(|_| {
        Err(anyhow::anyhow!(
            "the attempt took longer than {} s",
            attempt_bound(&acme.st).as_secs()
        ))
    });
    let cfg = &acme.st.cfg;
    let now = chrono::Utc::now();
    let key = subject.key().to_string();
    match result {
        Ok(issued) => {
            let next = schedule::renewal_due(
                issued.leaf.not_after,
                now,
                cfg.acme_renew_before(),
                Duration::from_secs(cfg.acme_retry_min_seconds),
            );
            let (serial, not_after) = (issued.leaf.serial.clone(), issued.leaf.not_after);
            let stored = acme
                .st
                .blocking(move |conn| store::store_issued(conn, &key, &issued, next))
                .await;
            match stored {
                Ok(generation) => {
                    acme.st
                        .metrics
                        .acme_orders_total
                        .with_label_values(&[kind, "ok"])
                        .inc();
                    tracing::info!(subject = subject.key(), %serial, %not_after,
                        next_renewal = %next, generation, "certificate issued and stored");
                }
                Err(e) => {
                    acme.st
                        .metrics
                        .acme_orders_total
                        .with_label_values(&[kind, "error"])
                        .inc();
                    tracing::error!(subject = subject.key(), error = %e,
                        "certificate issued but not stored; trying again at the next look");
                }
            }
        }
        Err(e) => {
            if order::account_unknown(&e) {
                *account = None;
                let dir = cfg.acme_directory_url.clone();
                let _ = acme
                    .st
                    .blocking(move |conn| store::forget_account(conn, &dir))
                    .await;
            }
            let failures = claimed.failures.saturating_add(1);
            let delay = schedule::retry_delay(
                failures,
                Duration::from_secs(cfg.acme_retry_min_seconds),
                Duration::from_secs(cfg.acme_retry_max_seconds),
            );
            let next =
                now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::hours(6));
            let message = format!("{e:#}");
            acme.st
                .metrics
                .acme_orders_total
                .with_label_values(&[kind, "error"])
                .inc();
            tracing::warn!(subject = subject.key(), failures, error = %message,
                retry_at = %next, kept_in_service = claimed.in_service,
                "certificate request failed");
            let stored = acme
                .st
                .blocking(move |conn| store::store_failure(conn, &key, failures, &message, next))
                .await;
            if let Err(e) = stored {
                tracing::error!(subject = subject.key(), error = %e, "could not store the failure");
            }
        }
    }
}

/// Expiry, consecutive failures and the generation, from the rows (every instance exports
/// the same values).
async fn refresh_gauges(acme: &Acme) -> anyhow::Result<()> {
    let (generation, rows) = acme
        .st
        .blocking(|conn| Ok((store::generation(conn)?, store::statuses(conn)?)))
        .await?;
    let m = &acme.st.metrics;
    m.certificates_generation.set(generation as f64);
    m.certificate_expiry.reset();
    m.certificate_failures.reset();
    for r in rows {
        if let Some(not_after) = r.not_after {
            m.certificate_expiry
                .with_label_values(&[&r.subject, &r.names.join(",")])
                .set(not_after.timestamp() as f64);
        }
        m.certificate_failures
            .with_label_values(&[&r.subject])
            .set(f64::from(r.failures));
    }
    Ok(())
}

/// Every certificate's state for the operator, with the CNAME each custom domain needs.
pub fn operator_statuses(
    conn: &mut diesel::PgConnection,
    cfg: &crate::config::Config,
) -> crate::error::ControlResult<Vec<store::CertificateStatus>> {
    let mut rows = store::statuses(conn)?;
    for r in &mut rows {
        if r.kind == "custom_domain" {
            r.challenge_cname = Some(names::custom_domain_cname(&r.subject, &cfg.zones.pro.name));
        }
    }
    Ok(rows)
}

/// Asks for a new certificate for `subject` (a zone or a verified custom domain) at the
/// renewal task's next look.
pub fn force_renewal(
    conn: &mut diesel::PgConnection,
    subject: &str,
) -> crate::error::ControlResult<()> {
    let subject = subject.trim().trim_end_matches('.').to_ascii_lowercase();
    if store::force_renewal(conn, &subject)? {
        return Ok(());
    }
    Err(crate::error::ControlError::refused(
        nearhop_wire::ErrorCode::NotFound,
        format!(
            "control keeps no certificate for {subject:?}: name a zone or a verified custom \
             domain, with ACME on (acme_enabled)"
        ),
    ))
}
