//! When the replica goes away the backend keeps answering from memory, reports growing
//! staleness, reconnects when the replica is back and picks up what it missed.

use anyhow::Context;
use nearhop_stack::dns_client::*;
use nearhop_stack::fixtures::*;
use nearhop_stack::metrics::metric;
use nearhop_stack::pdns::*;
use nearhop_stack::poll::{eventually, eventually_within};
use std::time::Duration;

/// Polls `f` until it gives a value; the backend's replica reconnects take a while, so this
/// waits longer than the usual patience.
fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    eventually_within(what, Duration::from_secs(60), || f().context("not yet"))
}

/// The CNAME data of `name` once eu's pdns answers it NOERROR.
fn cname_once_answered(fx: &DnsFixture, what: &str, name: &str) -> Vec<String> {
    until(what, || {
        let r = query(fx.region.dns_addr(), name, QTYPE_CNAME, None).ok()?;
        (r.rcode == RCODE_NOERROR).then(|| r.data_of(QTYPE_CNAME))
    })
}

#[test]
fn replica_outage_keeps_answers_from_memory_counts_staleness_and_recovers() {
    let mut fx = DnsFixture::start(|_| {}).expect("fixture");
    fx.add_cname("a.tunnel.test", "before", "eu.a.tunnel.test.")
        .expect("insert");
    let lsn = fx
        .add_cname("a.tunnel.test", "unasked", "us.a.tunnel.test.")
        .expect("insert");
    fx.wait_applied(&lsn).expect("applied");
    assert_eq!(
        query(
            fx.region.dns_addr(),
            "before.a.tunnel.test",
            QTYPE_CNAME,
            None
        )
        .expect("query")
        .rcode,
        RCODE_NOERROR
    );

    fx.pg.stop("eu");

    // A name never asked before (so not in pdns's caches) is answered from memory.
    let r = query(
        fx.region.dns_addr(),
        "unasked.a.tunnel.test",
        QTYPE_CNAME,
        None,
    )
    .expect("query");
    assert_eq!(
        r.data_of(QTYPE_CNAME),
        vec!["us.a.tunnel.test.".to_string()]
    );
    let r = query(fx.region.dns_addr(), "never.a.tunnel.test", QTYPE_A, None).expect("query");
    assert_eq!(r.rcode, RCODE_NXDOMAIN);

    let stale = until("staleness above 2 s", || {
        let s = fx.region.backend_status().ok()?;
        let secs = s["seconds_since_contact"].as_f64()?;
        (secs > 2.0).then_some(secs)
    });
    let text = fx.region.backend_metrics().expect("metrics");
    let exported =
        metric(&text, "nearhop_pdns_backend_seconds_since_contact", &[]).expect("metric");
    assert!(exported >= stale, "{exported} < {stale}");
    assert_eq!(
        query(
            fx.region.dns_addr(),
            "before.a.tunnel.test",
            QTYPE_CNAME,
            None
        )
        .expect("query")
        .rcode,
        RCODE_NOERROR
    );

    // Written while the replica is down; replayed when it is back.
    let lsn = fx
        .add_cname("a.tunnel.test", "during", "ap.a.tunnel.test.")
        .expect("insert");
    fx.pg.restart("eu").expect("replica restart");
    fx.wait_applied(&lsn).expect("applied after restart");
    assert_eq!(
        cname_once_answered(
            &fx,
            "the name written during the outage",
            "during.a.tunnel.test"
        ),
        vec!["ap.a.tunnel.test.".to_string()]
    );
    // The backend counts its reconnect, and its status says it is in contact again.
    let text = fx.region.backend_metrics().expect("metrics");
    assert!(
        metric(&text, "nearhop_pdns_backend_replica_reconnects_total", &[]).unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    eventually("the backend in contact with the replica again", || {
        let status = fx.region.backend_status()?;
        let secs = status["seconds_since_contact"]
            .as_f64()
            .ok_or_else(|| anyhow::anyhow!("no seconds_since_contact: {status}"))?;
        // Back under what it had grown to during the outage: contact came again.
        anyhow::ensure!(
            secs < stale,
            "{secs} s since contact ({stale} s in the outage)"
        );
        Ok(())
    });
}

#[test]
fn backend_down_gives_servfail_never_nxdomain() {
    let mut fx = DnsFixture::start(|spec| spec.caches = Caches::Off).expect("fixture");
    let lsn = fx
        .add_cname("a.tunnel.test", "live", "eu.a.tunnel.test.")
        .expect("insert");
    fx.wait_applied(&lsn).expect("applied");
    fx.region.stop_backend();
    let r = query(
        fx.region.dns_addr(),
        "live.a.tunnel.test",
        QTYPE_CNAME,
        None,
    )
    .expect("query");
    assert_eq!(r.rcode, RCODE_SERVFAIL);
    fx.region.start_backend().expect("backend restart");
    assert_eq!(
        cname_once_answered(
            &fx,
            "answers after the backend restarted",
            "live.a.tunnel.test"
        ),
        vec!["eu.a.tunnel.test.".to_string()]
    );
}
