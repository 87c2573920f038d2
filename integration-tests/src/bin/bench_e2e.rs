//! End-to-end measurements in the three-region stack (docs/benchmarks.md, "End to end"):
//! tunnel setup time (ssh started → URL printed) with the lag-race wait on and the share
//! of it spent waiting for the regions; misses of the first lookup after the URL over many
//! tunnels with the wait on and off; visitor errors during each fault (control, primary,
//! replica stopped, edge killed).
//!
//! `cargo build --workspace --bins && target/debug/bench_e2e --tunnels 1000`

use anyhow::Result;
use clap::Parser;
use nearhop_stack::prelude::*;
use nearhop_stack::stats::percentile;
use nearhop_stack::StackOptions;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(about = "nearhop end-to-end benchmark: setup time, lag-race misses, faults")]
struct Args {
    /// Tunnels per lag-race run (each run once with the wait on, once off).
    #[arg(long, default_value_t = 1000)]
    tunnels: usize,
    /// Lag-race bound of the "on" run, ms.
    #[arg(long, default_value_t = 3000)]
    lag_wait_ms: u64,
    /// Seconds each fault lasts under load.
    #[arg(long, default_value_t = 5)]
    outage_secs: u64,
    /// Skip the lag-race runs.
    #[arg(long)]
    skip_race: bool,
    /// Skip the fault runs.
    #[arg(long)]
    skip_faults: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    println!("# bench_e2e: {args:?}");
    if !args.skip_race {
        let (on, off) = race_pair(args.tunnels, args.lag_wait_ms)?;
        report_race(&on, &off);
    }
    if !args.skip_faults {
        faults(Duration::from_secs(args.outage_secs))?;
    }
    Ok(())
}

/// What one lag-race run measured.
struct Race {
    lag_wait_ms: u64,
    /// ssh started → URL printed, ms.
    setup_ms: Vec<f64>,
    /// control's `dns.wait_ms` of each setup (from its log).
    wait_ms: Vec<u64>,
    /// First-lookup misses by resolver region, with the kind (`NXDOMAIN`, `stale`).
    misses: BTreeMap<(String, &'static str), usize>,
    /// First visits that failed.
    visit_failures: usize,
    /// Setups that printed no URL, with what the client printed.
    setup_failures: Vec<String>,
}

/// One stack of a lag-race run and what it measured so far.
struct RaceStack {
    stack: nearhop_stack::Stack,
    token: String,
    race: Race,
}

impl RaceStack {
    fn start(n: usize, lag_wait_ms: u64) -> RaceStack {
        let stack = full_stack_with(StackOptions {
            lag_wait_ms,
            ..StackOptions::default()
        });
        let token = stack.pro_token();
        RaceStack {
            stack,
            token,
            race: Race {
                lag_wait_ms,
                setup_ms: Vec::with_capacity(n),
                wait_ms: Vec::new(),
                misses: BTreeMap::new(),
                visit_failures: 0,
                setup_failures: Vec::new(),
            },
        }
    }

    /// Round `i`: one tunnel, its first lookups and first visit.
    fn round(&mut self, i: usize, local_port: u16) -> Result<()> {
        let (stack, out) = (&self.stack, &mut self.race);
        // The same mix as the suite's lag-race test: fresh free names through ap, and the
        // pro persistent name through ap and eu in turn.
        let (region, user, zone) = if i.is_multiple_of(2) {
            (AP, "http".to_string(), FREE_ZONE)
        } else if (i / 2).is_multiple_of(2) {
            (AP, self.token.clone(), PRO_ZONE)
        } else {
            (EU, self.token.clone(), PRO_ZONE)
        };
        let want = stack.regions[region].name.clone();
        let started = Instant::now();
        let (mut client, url) =
            match stack.http_tunnel(region, &format!("b{}", i % 4), Some(&user), local_port) {
                Ok(opened) => opened,
                Err(e) => {
                    eprintln!("round {i} (wait {} ms): no URL: {e:#}", out.lag_wait_ms);
                    out.setup_failures.push(format!("{e:#}"));
                    return Ok(());
                }
            };
        out.setup_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let host = host_of(&url);
        let other = if region == AP { EU } else { AP };
        let mut first = None;
        for resolver in [region, other, US] {
            let l = match lookup(stack, resolver, &host) {
                Ok(l) => l,
                Err(e) => {
                    // A lost UDP query or a pdns that did not answer within 2 s.
                    eprintln!(
                        "round {i} (wait {} ms): {host} via {}: {e:#}",
                        out.lag_wait_ms, stack.regions[resolver].name
                    );
                    *out.misses
                        .entry((stack.regions[resolver].name.clone(), "no answer"))
                        .or_default() += 1;
                    continue;
                }
            };
            if !l.points_at(&want, zone) {
                let kind = if l.rcode == nearhop_stack::dns_client::RCODE_NXDOMAIN {
                    "NXDOMAIN"
                } else {
                    "stale"
                };
                *out.misses
                    .entry((stack.regions[resolver].name.clone(), kind))
                    .or_default() += 1;
            }
            first.get_or_insert(l);
        }
        let visited = first
            .and_then(|l| l.addr)
            .map(|a| http_get(SocketAddr::from((a, port_of(&url))), &host, "/first"));
        if !matches!(visited, Some(Ok((200, _)))) {
            out.visit_failures += 1;
        }
        client.stop();
        Ok(())
    }
}

/// Two stacks side by side, the wait on in one and off in the other, tunnels alternating
/// between them so that both see the same machine load.
fn race_pair(n: usize, lag_wait_ms: u64) -> Result<(Race, Race)> {
    eprintln!("lag race: {n} tunnels per stack, lag_wait_ms = {lag_wait_ms} and 0 ...");
    let mut on = RaceStack::start(n, lag_wait_ms);
    let mut off = RaceStack::start(n, 0);
    let local = LocalService::start("bench");
    for i in 0..n {
        on.round(i, local.port)?;
        off.round(i, local.port)?;
        if (i + 1) % 100 == 0 {
            eprintln!("  {} tunnels per stack", i + 1);
        }
    }
    on.race.wait_ms = on.stack.control.setup_waits_ms();
    off.race.wait_ms = off.stack.control.setup_waits_ms();
    Ok((on.race, off.race))
}

fn report_race(on: &Race, off: &Race) {
    println!();
    println!("## Setup time (ssh started -> URL printed), three regions");
    println!();
    println!("| lag-race wait | tunnels | p50 ms | p90 ms | p99 ms | max ms | control wait p50 / p99 ms | share of setup spent waiting |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in [on, off] {
        let mut s = r.setup_ms.clone();
        s.sort_by(|a, b| a.total_cmp(b));
        let mut w: Vec<f64> = r.wait_ms.iter().map(|v| *v as f64).collect();
        w.sort_by(|a, b| a.total_cmp(b));
        let share = w.iter().sum::<f64>() / s.iter().sum::<f64>().max(1.0) * 100.0;
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} / {:.0} | {:.1} % |",
            if r.lag_wait_ms == 0 {
                "off".to_string()
            } else {
                format!("on ({} ms bound)", r.lag_wait_ms)
            },
            s.len(),
            percentile(&s, 50.0).unwrap_or(f64::NAN),
            percentile(&s, 90.0).unwrap_or(f64::NAN),
            percentile(&s, 99.0).unwrap_or(f64::NAN),
            s.last().copied().unwrap_or(f64::NAN),
            percentile(&w, 50.0).unwrap_or(f64::NAN),
            percentile(&w, 99.0).unwrap_or(f64::NAN),
            share
        );
    }
    println!();
    println!("## Misses of the first lookup right after the URL is printed");
    println!();
    println!("| lag-race wait | tunnels set up | misses in ap / eu (the race) | misses in us (primary's region) | first visits failed | setups refused |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in [on, off] {
        let count = |region: &str| -> (usize, String) {
            let rows: Vec<_> = r.misses.iter().filter(|((g, _), _)| g == region).collect();
            let total = rows.iter().map(|(_, c)| **c).sum();
            let detail = rows
                .iter()
                .map(|((_, k), c)| format!("{c} {k}"))
                .collect::<Vec<_>>()
                .join(", ");
            (total, detail)
        };
        let (ap, apd) = count("ap");
        let (eu, eud) = count("eu");
        let (us, usd) = count("us");
        println!(
            "| {} | {} | {} ({}) / {} ({}) | {} ({}) | {} | {} |",
            if r.lag_wait_ms == 0 { "off" } else { "on" },
            r.setup_ms.len(),
            ap,
            if apd.is_empty() { "-".into() } else { apd },
            eu,
            if eud.is_empty() { "-".into() } else { eud },
            us,
            if usd.is_empty() { "-".into() } else { usd },
            r.visit_failures,
            r.setup_failures.len()
        );
    }
}

/// Counts of a load between two snapshots.
fn delta(before: &LoadStats, after: &LoadStats) -> (u64, u64) {
    (after.ok - before.ok, after.errors - before.errors)
}

struct Loads(Vec<(&'static str, Load)>);

impl Loads {
    fn snapshot(&self) -> Vec<LoadStats> {
        self.0.iter().map(|(_, l)| l.stats()).collect()
    }

    fn report(&self, fault: &str, before: &[LoadStats]) {
        let after = self.snapshot();
        let cells: Vec<String> = self
            .0
            .iter()
            .zip(before.iter().zip(&after))
            .map(|((region, _), (b, a))| {
                let (ok, err) = delta(b, a);
                format!("{err} / {} ({region})", ok + err)
            })
            .collect();
        println!("| {fault} | {} |", cells.join(" | "));
    }
}

fn faults(outage: Duration) -> Result<()> {
    eprintln!("faults: {outage:?} each ...");
    let mut stack = full_stack_with(StackOptions {
        control_tweak: Some(fast_heartbeats),
        ..StackOptions::default()
    });
    stack.restart_dns_with(|spec| spec.heartbeat_bound_secs = 3.0)?;
    let local = LocalService::start("faults");
    let token = stack.pro_token();
    // The tunnel is held by the user's reconnect loop, from ap.
    let lp = ReconnectLoop::start(&stack, AP, &token, local.port)?;
    let url = eventually("the loop's first tunnel", || {
        lp.url_of_round(1)
            .ok_or_else(|| anyhow::anyhow!("no URL yet"))
    });
    let loads = Loads(
        [("ap", AP), ("eu", EU), ("us", US)]
            .into_iter()
            .map(|(name, r)| {
                (
                    name,
                    Load::start(
                        plan_in(&stack, r, &url, "faults"),
                        Duration::from_millis(10),
                    ),
                )
            })
            .collect(),
    );
    std::thread::sleep(Duration::from_secs(1));
    println!();
    println!("## Visitor errors during faults (errors / visits, by the visitor's resolver region)");
    println!();
    println!(
        "| fault ({} s) | visitors in ap | visitors in eu | visitors in us |",
        outage.as_secs()
    );
    println!("| --- | --- | --- | --- |");

    let before = loads.snapshot();
    std::thread::sleep(outage);
    loads.report("none (baseline)", &before);

    let before = loads.snapshot();
    stack.control.stop();
    std::thread::sleep(outage);
    stack.control.restart()?;
    std::thread::sleep(Duration::from_secs(1));
    loads.report("control stopped, then restarted", &before);

    let before = loads.snapshot();
    stack.pg.stop("us");
    std::thread::sleep(outage);
    stack.pg.restart("us")?;
    std::thread::sleep(Duration::from_secs(1));
    loads.report("primary stopped, then restarted", &before);

    let before = loads.snapshot();
    stack.pg.stop("ap");
    std::thread::sleep(outage);
    stack.pg.restart("ap")?;
    std::thread::sleep(Duration::from_secs(1));
    loads.report("ap's replica stopped, then restarted", &before);

    let before = loads.snapshot();
    let killed = Instant::now();
    stack.kill_edge("ap");
    let moved = loop {
        let out = lp.output();
        let last = out
            .rsplit("== connecting to ")
            .next()
            .unwrap_or("")
            .to_string();
        if last.contains("served from region") && !last.contains("served from region ap") {
            break Some(killed.elapsed());
        }
        if killed.elapsed() > Duration::from_secs(90) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Until every resolver's answer has moved and visitors get through again.
    let host = host_of(&url);
    let healed = loop {
        let ok = [AP, EU, US].iter().all(|r| {
            lookup(&stack, *r, &host)
                .map(|l| !l.points_at("ap", PRO_ZONE) && l.addr.is_some())
                .unwrap_or(false)
        });
        if ok || killed.elapsed() > Duration::from_secs(120) {
            break killed.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_secs(1));
    loads.report(
        "ap's edge killed (SIGKILL), the reconnect loop moves",
        &before,
    );
    let visitor_gap: Vec<String> = loads
        .0
        .iter()
        .map(|(region, l)| {
            let last = l.stats().last_error_at;
            let secs = last.map(|t| t.saturating_duration_since(killed).as_secs_f64());
            format!("{region} {:.1} s", secs.unwrap_or(0.0))
        })
        .collect();
    println!();
    println!(
        "Edge kill: the reconnect loop had its tunnel back through another region after {}; \
         every region's DNS pointed away from ap after {:.1} s; visitors' last failure after \
         the kill: {}.",
        moved
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .unwrap_or_else(|| "(not within 90 s)".into()),
        healed.as_secs_f64(),
        visitor_gap.join(", ")
    );
    for (region, load) in loads.0 {
        let s = load.stop();
        if !s.samples.is_empty() {
            eprintln!(
                "visitors in {region}, first failures: {:?}; last: {:?}",
                s.samples, s.last_samples
            );
        }
    }
    drop(lp);
    drop(stack);
    Ok(())
}
