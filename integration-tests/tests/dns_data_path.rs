//! The backend's data path against a real primary and streaming replica: it follows a
//! promoted replica, reloads when retention deleted changes it never read, and reads only new
//! changes while a long-open transaction pins the snapshot's xmin.

use anyhow::{bail, Context, Result};
use nearhop_stack::control::{ControlProcess, ControlRegion, ControlSpec};
use nearhop_stack::dns_client::*;
use nearhop_stack::fixtures::*;
use nearhop_stack::metrics::metric;
use nearhop_stack::poll::eventually_within;
use nearhop_stack::ports::free_port;
use nearhop_stack::postgres::{psql, wait_replayed, PgEndpoint};
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

/// One counter of eu's backend.
fn backend_counter(fx: &DnsFixture, name: &str) -> f64 {
    let text = fx.region.backend_metrics().expect("metrics");
    metric(&text, &format!("nearhop_pdns_backend_{name}"), &[])
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// The CNAME targets eu's pdns answers for `name`.
fn cname_of(fx: &DnsFixture, name: &str) -> Vec<String> {
    query(fx.region.dns_addr(), name, QTYPE_CNAME, None)
        .expect("query")
        .data_of(QTYPE_CNAME)
}

#[test]
fn a_promoted_replica_is_followed_and_its_own_commits_are_served() {
    let fx = DnsFixture::start(|_| {}).expect("fixture");
    let lsn = fx
        .add_cname("a.tunnel.test", "before", "eu.a.tunnel.test.")
        .expect("insert");
    fx.wait_applied(&lsn).expect("applied");

    let promoted = psql(fx.replica(), "SELECT pg_promote()").expect("promote");
    assert_eq!(promoted.trim(), "t", "pg_promote said {promoted:?}");
    assert_eq!(
        psql(fx.replica(), "SELECT pg_is_in_recovery()")
            .expect("recovery")
            .trim(),
        "f"
    );

    // The promoted server takes writes now; the commit is found by its own WAL position.
    let xid = psql(
        fx.replica(),
        "INSERT INTO records(domain_id, name, type, content, ttl) \
         SELECT id, 'after.a.tunnel.test', 'CNAME', 'ap.a.tunnel.test.', 10 \
         FROM domains WHERE name = 'a.tunnel.test'; SELECT pg_current_xact_id()",
    )
    .expect("insert on the promoted server");
    let xid = xid.lines().last().unwrap_or("").trim().to_string();
    let lsn = psql(fx.replica(), "SELECT pg_current_wal_lsn()").expect("lsn");
    fx.wait_commit(lsn.trim(), Some(&xid))
        .expect("a wait for the promoted server's commit");
    assert_eq!(
        cname_of(&fx, "after.a.tunnel.test"),
        vec!["ap.a.tunnel.test.".to_string()]
    );
    assert_eq!(
        cname_of(&fx, "before.a.tunnel.test"),
        vec!["eu.a.tunnel.test.".to_string()]
    );
    assert_eq!(backend_counter(&fx, "promotions_followed_total"), 1.0);
    assert_eq!(backend_counter(&fx, "replica_reconnects_total"), 0.0);
}

/// Control on the primary with a one-second change-log retention, pruning every 50 ms.
fn control_with_short_retention(fx: &DnsFixture) -> ControlProcess {
    let us = SEEDED_REGIONS[0].1;
    let mut spec = ControlSpec::for_tests(
        SocketAddr::from((us, free_port(us))),
        fx.primary().url(),
        SEEDED_REGIONS
            .iter()
            .map(|(name, ip)| ControlRegion {
                name: name.to_string(),
                ipv4: *ip,
                backend_url: None,
            })
            .collect(),
    );
    spec.reap_interval_ms = 50;
    spec.extra_toml = "change_log_retention_seconds = 1\n".into();
    ControlProcess::start(&fx.dir.join("control-retention"), &spec).expect("control")
}

#[test]
fn changes_pruned_before_the_backend_read_them_cause_a_full_reload() {
    let fx = DnsFixture::start(|_| {}).expect("fixture");
    let lsn = fx
        .add_cname("a.tunnel.test", "moved", "eu.a.tunnel.test.")
        .expect("insert");
    fx.wait_applied(&lsn).expect("applied");
    let loads_before = backend_counter(&fx, "full_loads_total");

    // The backend falls behind (held still), the name moves, and control's retention deletes
    // that change from the log before the backend could read it.
    fx.region.signal_backend(libc::SIGSTOP);
    fx.sql("UPDATE records SET content = 'ap.a.tunnel.test.' WHERE name = 'moved.a.tunnel.test'")
        .expect("update");
    let mut control = control_with_short_retention(&fx);
    eventually_within(
        "retention deletes the change",
        Duration::from_secs(60),
        || {
            let left =
                fx.sql("SELECT count(*) FROM dns_changes WHERE name = 'moved.a.tunnel.test'")?;
            if left.trim() == "0" {
                Ok(())
            } else {
                bail!("{left} changes of the name left")
            }
        },
    );
    control.stop();
    // A later change the log still holds: the backend reads it, and sees the hole before it.
    let lsn = fx
        .add_cname("a.tunnel.test", "later", "us.a.tunnel.test.")
        .expect("insert");
    wait_replayed(fx.primary(), fx.replica()).expect("replayed");
    fx.region.signal_backend(libc::SIGCONT);

    fx.wait_applied(&lsn).expect("applied");
    assert_eq!(
        cname_of(&fx, "moved.a.tunnel.test"),
        vec!["ap.a.tunnel.test.".to_string()],
        "the change that retention deleted is served"
    );
    assert_eq!(
        cname_of(&fx, "later.a.tunnel.test"),
        vec!["us.a.tunnel.test.".to_string()]
    );
    assert_eq!(backend_counter(&fx, "change_log_gaps_total"), 1.0);
    assert_eq!(backend_counter(&fx, "full_loads_total"), loads_before + 1.0);
}

/// A `psql` session on `db` that runs `sql` in a transaction and leaves it open until
/// [`OpenTransaction::commit`] (or until dropped: then it is killed and rolls back).
struct OpenTransaction {
    child: std::process::Child,
}

impl OpenTransaction {
    fn begin(db: &PgEndpoint, sql: &str) -> Result<OpenTransaction> {
        let mut child = Command::new("psql")
            .arg(db.conninfo())
            .args(["-v", "ON_ERROR_STOP=1", "-qAtX"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("starting psql")?;
        let stdin = child.stdin.as_mut().context("psql's stdin")?;
        writeln!(stdin, "BEGIN;\n{sql};")?;
        stdin.flush()?;
        Ok(OpenTransaction { child })
    }

    fn commit(mut self) -> Result<()> {
        if let Some(mut stdin) = self.child.stdin.take() {
            writeln!(stdin, "COMMIT;")?;
        }
        let status = self.child.wait()?;
        if !status.success() {
            bail!("psql ended with {status}");
        }
        Ok(())
    }
}

impl Drop for OpenTransaction {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn a_long_open_transaction_does_not_make_each_poll_reread_the_backlog() {
    let fx = DnsFixture::start(|_| {}).expect("fixture");
    // A writer that stays open: its xid pins the snapshots' xmin on the primary and, through
    // its WAL, on the replica.
    let held = OpenTransaction::begin(
        fx.primary(),
        "INSERT INTO records(domain_id, name, type, content, ttl) \
         SELECT id, 'held.a.tunnel.test', 'CNAME', 'eu.a.tunnel.test.', 10 \
         FROM domains WHERE name = 'a.tunnel.test'",
    )
    .expect("open transaction");
    eventually_within("the transaction is open", Duration::from_secs(30), || {
        let n = fx.sql(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE state = 'idle in transaction' AND backend_xid IS NOT NULL",
        )?;
        if n.trim() == "1" {
            Ok(())
        } else {
            bail!("{n} open writers")
        }
    });

    fx.sql(
        "INSERT INTO records(domain_id, name, type, content, ttl) \
         SELECT d.id, 'bulk' || g || '.a.tunnel.test', 'CNAME', 'us.a.tunnel.test.', 10 \
         FROM domains d, generate_series(1, 10000) g WHERE d.name = 'a.tunnel.test'",
    )
    .expect("10,000 changes");
    let lsn = fx.sql("SELECT pg_current_wal_lsn()").expect("lsn");
    fx.wait_applied(lsn.trim()).expect("applied");
    assert_eq!(
        cname_of(&fx, "bulk9999.a.tunnel.test"),
        vec!["us.a.tunnel.test.".to_string()]
    );

    // Each later change is read alone: the 10,000 behind the pinned xmin are not read again.
    for i in 0..5 {
        let before = backend_counter(&fx, "change_rows_read_total");
        let lsn = fx
            .add_cname("a.tunnel.test", &format!("one{i}"), "ap.a.tunnel.test.")
            .expect("insert");
        fx.wait_applied(&lsn).expect("applied");
        let read = backend_counter(&fx, "change_rows_read_total") - before;
        assert!(
            (1.0..100.0).contains(&read),
            "one change made the backend read {read} change rows"
        );
    }

    // The held writer's change, invisible all along, is still picked up when it commits.
    assert!(
        cname_of(&fx, "held.a.tunnel.test").is_empty(),
        "served before its commit"
    );
    held.commit().expect("commit");
    let lsn = fx.sql("SELECT pg_current_wal_lsn()").expect("lsn");
    fx.wait_applied(lsn.trim()).expect("applied");
    eventually_within("the held change is served", Duration::from_secs(30), || {
        let got = cname_of(&fx, "held.a.tunnel.test");
        if got == ["eu.a.tunnel.test."] {
            Ok(())
        } else {
            bail!("answered {got:?}")
        }
    });
}
