//! Faults under steady visitor load, three regions, every part real: live tunnels keep
//! serving while control or the primary is down (new setups get a clear refusal and work
//! again once it is back); a stopped replica leaves its region's DNS answering from memory,
//! shows in the lag and staleness metrics, and catches up when restarted; a killed edge
//! sends the user's reconnect loop to another region, and DNS follows.

use nearhop_stack::edge::SshClient;
use nearhop_stack::prelude::*;
use nearhop_stack::{Stack, StackOptions};
use std::time::Duration;

/// How long each outage lasts under load. Not a bound on anything: only long enough for
/// many visits to cross the outage (the edge's heartbeat and control's reaper both run
/// within it), and well inside the 30 s lease so no tunnel expires.
const OUTAGE: Duration = Duration::from_secs(4);

/// A new tunnel through `region`: its client and URL, or the client's refusal text.
fn try_setup(
    stack: &Stack,
    region: usize,
    name: &str,
    port: u16,
) -> Result<(SshClient, String), String> {
    let token = stack.pro_token();
    stack
        .http_tunnel(region, name, Some(&token), port)
        .map_err(|e| format!("{e:#}"))
}

/// A new setup while `token`'s account exists already (control or the database down).
fn refused_setup(stack: &Stack, token: &str, region: usize, name: &str, port: u16) -> String {
    let mut c = stack.ssh_to(region, name, &SshArgs::http_tunnel(Some(token), port));
    let out = c.wait_exit(PATIENCE).expect("the refused client exits");
    assert!(
        nearhop_stack::edge::find_url(&out).is_none(),
        "no URL without control: {out}"
    );
    out
}

fn assert_no_errors(what: &str, stats: &LoadStats) {
    assert!(stats.ok > 0, "{what}: no visit succeeded");
    assert_eq!(
        stats.errors,
        0,
        "{what}: {} of {} visits failed: {:?}",
        stats.errors,
        stats.ok + stats.errors,
        stats.samples
    );
}

#[test]
fn live_tunnels_serve_every_visit_while_control_and_then_the_primary_are_down() {
    let mut stack = full_stack();
    let local = LocalService::start("live");
    let fresh = LocalService::start("fresh");
    let token = stack.pro_token();
    let spare = stack.pro_token();
    let (mut client, url) = stack
        .http_tunnel(AP, "live", Some(&token), local.port)
        .expect("URL");
    let loads: Vec<Load> = [AP, EU, US]
        .into_iter()
        .map(|r| Load::start(plan_in(&stack, r, &url, "live"), Duration::from_millis(20)))
        .collect();

    // Control down.
    stack.control.stop();
    let out = refused_setup(&stack, &spare, EU, "no-control", fresh.port);
    assert!(
        out.contains("cannot set up new tunnels right now"),
        "a clear refusal while control is down: {out}"
    );
    std::thread::sleep(OUTAGE);
    stack.control.restart().expect("control restarts");
    let (_c2, url2) = eventually("setups work again after control is back", || {
        try_setup(&stack, EU, "after-control", fresh.port).map_err(anyhow::Error::msg)
    });
    visit(&stack, EU, &url2, "/").expect("the new tunnel serves");

    // The primary down (control up).
    stack.pg.stop("us");
    let out = refused_setup(&stack, &spare, EU, "no-primary", fresh.port);
    assert!(
        out.contains("cannot set up new tunnels right now"),
        "a clear refusal while the primary is down: {out}"
    );
    std::thread::sleep(OUTAGE);
    stack.pg.restart("us").expect("the primary restarts");
    let (_c3, url3) = eventually("setups work again after the primary is back", || {
        try_setup(&stack, EU, "after-primary", fresh.port).map_err(anyhow::Error::msg)
    });
    visit(&stack, EU, &url3, "/").expect("the new tunnel serves");

    for (load, region) in loads.into_iter().zip(["ap", "eu", "us"]) {
        let stats = load.stop();
        eprintln!("visitors in {region}: {stats:?}");
        assert_no_errors(&format!("visitors resolving in {region}"), &stats);
    }
    assert!(
        client.is_running(),
        "the live tunnel's client stayed connected"
    );
}

#[test]
fn stopped_replica_keeps_its_region_answering_shows_lag_and_catches_up() {
    let mut stack = full_stack();
    let local = LocalService::start("eu-live");
    let other = LocalService::start("later");
    let token = stack.pro_token();
    let (_client, url) = stack
        .http_tunnel(EU, "eu-live", Some(&token), local.port)
        .expect("URL");
    let load = Load::start(
        plan_in(&stack, EU, &url, "eu-live"),
        Duration::from_millis(20),
    );
    eventually("control sees eu's replica streaming", || {
        let m = stack.control.metrics()?;
        anyhow::ensure!(
            metric(&m, "nearhop_replica_connected", &[("region", "eu")]) == Some(1.0),
            "not connected yet"
        );
        Ok(())
    });

    stack.pg.stop("eu");
    // A tunnel set up during the outage: eu cannot confirm it, which the user is told and
    // control counts; the other regions serve it at once.
    let later_token = stack.pro_token();
    let (mut later, later_url) = stack
        .http_tunnel(AP, "later", Some(&later_token), other.port)
        .expect("setups go on");
    let out = later.wait_for("not confirmed", PATIENCE).expect("note");
    assert!(out.contains("region(s) eu"), "{out}");
    visit(&stack, AP, &later_url, "/").expect("ap serves the new tunnel");

    // Lag and staleness are visible.
    let m = eventually("control shows eu's replica away and lagging", || {
        let m = stack.control.metrics()?;
        anyhow::ensure!(
            metric(&m, "nearhop_replica_connected", &[("region", "eu")]) == Some(0.0),
            "still connected"
        );
        anyhow::ensure!(
            metric(&m, "nearhop_replica_lag_bytes", &[("region", "eu")]).unwrap_or(0.0) > 0.0,
            "no lag yet"
        );
        Ok(m)
    });
    assert!(
        metric(&m, "nearhop_lag_wait_timeouts_total", &[("region", "eu")]).unwrap_or(0.0) >= 1.0,
        "the unconfirmed wait is counted"
    );
    eventually("eu's backend reports its staleness", || {
        let text = stack.dns_of("eu").expect("eu dns").backend_metrics()?;
        let stale = metric(&text, "nearhop_pdns_backend_seconds_since_contact", &[]).unwrap_or(0.0);
        anyhow::ensure!(stale > 2.0, "staleness {stale}");
        Ok(())
    });
    // Meanwhile eu's DNS answers the tunnels it knew from memory (the load checks every
    // visit), and the one it could not see yet is not there.
    let l = lookup(&stack, EU, &host_of(&later_url)).expect("eu answers");
    assert!(
        !l.points_at("ap", PRO_ZONE),
        "eu cannot know a commit made while its replica was down: {}",
        l.describe()
    );

    stack.pg.restart("eu").expect("the replica restarts");
    eventually("eu catches up", || {
        let l = lookup(&stack, EU, &host_of(&later_url))?;
        anyhow::ensure!(l.points_at("ap", PRO_ZONE), "{}", l.describe());
        Ok(())
    });
    eventually("control shows eu streaming again without lag", || {
        let m = stack.control.metrics()?;
        anyhow::ensure!(
            metric(&m, "nearhop_replica_connected", &[("region", "eu")]) == Some(1.0),
            "not connected"
        );
        Ok(())
    });
    eventually("eu's backend is in contact again", || {
        let text = stack.dns_of("eu").expect("eu dns").backend_metrics()?;
        let stale =
            metric(&text, "nearhop_pdns_backend_seconds_since_contact", &[]).unwrap_or(f64::MAX);
        anyhow::ensure!(stale < 1.0, "staleness {stale}");
        Ok(())
    });
    let stats = load.stop();
    eprintln!("visitors in eu: {stats:?}");
    assert_no_errors("visitors resolving in eu", &stats);
    visit(&stack, EU, &later_url, "/").expect("eu's visitors reach the later tunnel");
}

#[test]
fn killed_edge_sends_the_reconnect_loop_to_another_region_and_dns_follows() {
    let mut stack = full_stack_dropping_silent_regions();
    let local = LocalService::start("looped");
    let token = stack.pro_token();
    let lp = ReconnectLoop::start(&stack, AP, &token, local.port).expect("loop starts");
    let url = eventually("the loop's first tunnel", || {
        lp.url_of_round(1)
            .ok_or_else(|| anyhow::anyhow!("no URL yet:\n{}", lp.output()))
    });
    assert!(
        lp.output().contains("served from region ap"),
        "{}",
        lp.output()
    );
    let host = host_of(&url);
    let load = Load::start(
        plan_in(&stack, AP, &url, "looped"),
        Duration::from_millis(20),
    );
    eventually("visitors get through", || {
        anyhow::ensure!(load.stats().ok > 0, "no visit yet");
        Ok(())
    });

    stack.kill_edge("ap");
    let moved = eventually_within(
        "the loop reconnects elsewhere",
        Duration::from_secs(60),
        || {
            let out = lp.output();
            let after = out.rsplit("== connecting to ").next().unwrap_or("");
            anyhow::ensure!(
                after.contains("served from region us"),
                "last round:\n{after}"
            );
            nearhop_stack::edge::find_url(after).ok_or_else(|| anyhow::anyhow!("no URL"))
        },
    );
    assert_eq!(host_of(&moved), host, "the persistent name comes along");
    for resolver in [AP, EU, US] {
        eventually("DNS follows to us", || {
            let l = lookup(&stack, resolver, &host)?;
            anyhow::ensure!(l.points_at("us", PRO_ZONE), "{}", l.describe());
            Ok(())
        });
    }
    // Visitors in ap follow the record once their resolver's answer changes.
    eventually("ap's visitors reach the moved tunnel", || {
        visit(&stack, AP, &moved, "/").map(|_| ())
    });
    let stats = load.stop();
    eprintln!(
        "visitors in ap across the edge kill: {} ok, {} failed (first: {:?})",
        stats.ok,
        stats.errors,
        stats.samples.first()
    );
    let out = lp.output();
    // The sentence of the reconnect's URL (ssh/messages.rs), with one of the reasons a
    // killed edge's tunnel can be closed for.
    assert!(
        ["edge unreachable", "client dead", "lease expired"]
            .iter()
            .any(|why| out.contains(&format!("previous tunnel on edge ap-1 was closed: {why}."))),
        "the takeover says why: {out}"
    );
}

fn short_leases(spec: &mut nearhop_stack::ControlSpec) {
    spec.lease_seconds = 4;
    spec.heartbeat_seconds = 1;
}

/// When control (or the primary) comes back after an outage longer than `lease_seconds`,
/// leases that lapsed meanwhile must not close live tunnels before the edges renew them.
#[test]
fn live_tunnel_survives_a_control_outage_longer_than_its_lease() {
    let mut stack = full_stack_with(StackOptions {
        control_tweak: Some(short_leases),
        ..StackOptions::default()
    });
    let local = LocalService::start("long-outage");
    let token = stack.pro_token();
    let (_client, url) = stack
        .http_tunnel(AP, "long", Some(&token), local.port)
        .expect("URL");
    let load = Load::start(
        plan_in(&stack, AP, &url, "long-outage"),
        Duration::from_millis(50),
    );
    stack.control.stop();
    // Twice the lease: every lease in the database lapses while control is away.
    std::thread::sleep(Duration::from_secs(8));
    stack.control.restart().expect("control restarts");
    // Long enough for the reaper's first passes and the edges' next heartbeats.
    std::thread::sleep(Duration::from_secs(5));
    let stats = load.stop();
    assert_no_errors("visitors across a long control outage", &stats);
    visit(&stack, AP, &url, "/").expect("the tunnel still serves after control is back");
}
