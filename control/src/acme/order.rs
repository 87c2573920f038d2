//! One ACME order through instant-acme, DNS-01 answered in control's own DNS: publish every
//! challenge's TXT record, wait until every waited region serves it, have the server
//! validate, finalize, fetch the chain; the records go again whatever happened.

use super::names::Subject;
use super::store::{self, ChallengeRecord, Issued};
use super::Acme;
use anyhow::{anyhow, bail, Context, Result};
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use std::time::Duration;

/// How long the server may take to validate, and then to issue.
const POLL_BOUND: Duration = Duration::from_secs(120);

/// Control's ACME account on the configured directory: the stored one, or a new one stored
/// for every later attempt (and every other control instance).
pub async fn account(acme: &Acme) -> Result<Account> {
    let dir = acme.st.cfg.acme_directory_url.clone();
    let stored = {
        let dir = dir.clone();
        acme.st
            .blocking(move |conn| store::account_credentials(conn, &dir))
            .await?
    };
    if let Some(json) = stored {
        let credentials = serde_json::from_str(&json)
            .context("the stored ACME account credentials do not parse")?;
        return builder(acme)?
            .from_credentials(credentials)
            .await
            .with_context(|| format!("restoring control's ACME account at {dir}"));
    }
    let contact = acme
        .st
        .cfg
        .acme_contact_email
        .as_ref()
        .map(|e| format!("mailto:{e}"));
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (_, credentials) = builder(acme)?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            dir.clone(),
            None,
        )
        .await
        .with_context(|| format!("creating an ACME account at {dir}"))?;
    let json = serde_json::to_string(&credentials)?;
    let stored = {
        let dir = dir.clone();
        acme.st
            .blocking(move |conn| store::save_account_credentials(conn, &dir, &json))
            .await?
    };
    tracing::info!(directory = %dir, "ACME account created and stored");
    // Another instance may have stored its account first: use that one.
    builder(acme)?
        .from_credentials(serde_json::from_str(&stored)?)
        .await
        .with_context(|| format!("restoring control's ACME account at {dir}"))
}

fn builder(acme: &Acme) -> Result<instant_acme::AccountBuilder> {
    Ok(match &acme.st.cfg.acme_ca_root_path {
        Some(root) => instant_acme::Account::builder_with_root(root).with_context(|| {
            format!("reading acme_ca_root_path {} (a PEM root)", root.display())
        })?,
        None => instant_acme::Account::builder()?,
    })
}

/// Whether an error means the server no longer knows control's account (a test server
/// restarted, an account deactivated): the stored one is then forgotten.
pub fn account_unknown(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<instant_acme::Error>().is_some_and(|e| {
            matches!(e, instant_acme::Error::Api(p)
                if p.r#type.as_deref().is_some_and(|t| t.ends_with(":accountDoesNotExist")))
        })
    })
}

/// Obtains a certificate for `subject`.
pub async fn issue(acme: &Acme, account: &Account, subject: &Subject) -> Result<Issued> {
    let identifiers: Vec<Identifier> = subject.names().into_iter().map(Identifier::Dns).collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .context("placing the order")?;
    let mut challenges = Vec::new();
    {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.context("reading an authorization")?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => bail!("the authorization for {} is {other:?}", authz.identifier()),
            }
            let identifier = authz.identifier().to_string();
            let challenge = authz
                .challenge(ChallengeType::Dns01)
                .ok_or_else(|| anyhow!("the server offers no dns-01 challenge for {identifier}"))?;
            challenges.push(ChallengeRecord {
                name: subject.challenge_record(&identifier),
                value: challenge.key_authorization().dns_value(),
            });
        }
    }
    if !challenges.is_empty() {
        publish(acme, subject, &challenges).await?;
        let validated = validate(&mut order).await;
        let removed = {
            let c = challenges.clone();
            acme.st
                .blocking(move |conn| store::remove_challenges(conn, &c))
                .await
        };
        match removed {
            Ok(n) => tracing::debug!(
                subject = subject.key(),
                removed = n,
                "challenge records removed"
            ),
            Err(e) => tracing::error!(subject = subject.key(), error = %e,
                "could not remove the challenge records; the next attempt replaces them"),
        }
        validated?;
    } else {
        let status = order
            .poll_ready(&RetryPolicy::new().timeout(POLL_BOUND))
            .await
            .context("waiting for the order to be ready")?;
        if status != OrderStatus::Ready {
            bail!("the order is {status:?} with every authorization valid");
        }
    }
    let key_pem = order.finalize().await.context("finalizing the order")?;
    let chain_pem = order
        .poll_certificate(&RetryPolicy::new().timeout(POLL_BOUND))
        .await
        .context("fetching the certificate")?;
    let leaf = super::x509::leaf_of(&chain_pem)?;
    Ok(Issued {
        chain_pem,
        key_pem,
        leaf,
    })
}

/// Writes the records and waits until every waited region's DNS serves them.
async fn publish(acme: &Acme, subject: &Subject, challenges: &[ChallengeRecord]) -> Result<()> {
    let zone = subject.record_zone().to_string();
    let ttl = [&acme.st.cfg.zones.pro, &acme.st.cfg.zones.free]
        .iter()
        .find(|z| z.name == zone)
        .map(|z| z.record_ttl)
        .unwrap_or(10);
    let (lsn, xid) = {
        let c = challenges.to_vec();
        acme.st
            .blocking(move |conn| store::write_challenges(conn, &zone, ttl, &c))
            .await
            .context("writing the challenge records")?
    };
    let served = acme.dns_wait.wait(lsn, xid).await;
    tracing::info!(
        subject = subject.key(),
        records = challenges.len(),
        wait_ms = served.wait_ms,
        unconfirmed = ?served.unconfirmed,
        "challenge records published"
    );
    if !served.unconfirmed.is_empty() {
        let c = challenges.to_vec();
        let _ = acme
            .st
            .blocking(move |conn| store::remove_challenges(conn, &c))
            .await;
        bail!(
            "the DNS of region(s) {} did not serve the challenge records within {} ms; \
             validation not asked",
            served.unconfirmed.join(", "),
            acme.st.cfg.acme_dns_wait_ms
        );
    }
    Ok(())
}

/// Tells the server every pending challenge is ready and waits for the order to be ready.
async fn validate(order: &mut instant_acme::Order) -> Result<()> {
    {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.context("reading an authorization")?;
            if authz.status != AuthorizationStatus::Pending {
                continue;
            }
            let identifier = authz.identifier().to_string();
            let mut challenge = authz
                .challenge(ChallengeType::Dns01)
                .ok_or_else(|| anyhow!("the dns-01 challenge for {identifier} is gone"))?;
            challenge
                .set_ready()
                .await
                .with_context(|| format!("asking the server to validate {identifier}"))?;
        }
    }
    let status = order
        .poll_ready(&RetryPolicy::new().timeout(POLL_BOUND))
        .await
        .context("waiting for validation")?;
    if status == OrderStatus::Ready {
        return Ok(());
    }
    // Say why, from the challenges' own errors.
    let mut why = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        for c in &authz.challenges {
            if let Some(p) = &c.error {
                why.push(format!("{}: {p}", authz.identifier()));
            }
        }
    }
    bail!(
        "validation failed (order {status:?}): {}",
        if why.is_empty() {
            "the server gave no reason".to_string()
        } else {
            why.join("; ")
        }
    )
}
