//! Control benchmark: tunnel creations per second and creation latency (p50/p99) on the local
//! stack (Postgres primary + two streaming replicas, a pdns-backend per region), with the
//! lag-race wait on and off, side by side in one run on the same database.
//!
//!     cargo build --release --workspace --bins
//!     NEARHOP_PROFILE=release target/release/bench_control [creations-per-run]
//!
//! `bench_control heartbeat [ids]` instead times one edge heartbeat listing `ids` tunnels
//! (default 100,000, the most a heartbeat may list), all live, then all closed by control.

use anyhow::{bail, Result};
use nearhop_stack::stats::percentile;
use nearhop_stack::{Stack, StackOptions};
use nearhop_wire::{CreateTunnelRequest, CreateTunnelResponse, RegisterEdgeRequest, TunnelKind};
use reqwest::blocking::Client;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Run {
    label: String,
    concurrency: usize,
    total: usize,
    elapsed: Duration,
    latencies_ms: Vec<f64>,
    wait_ms: Vec<f64>,
    unconfirmed: usize,
}

fn create(http: &Client, base: &str, secret: &str, edge: &str) -> Result<CreateTunnelResponse> {
    let r = http
        .post(format!("{base}/v1/tunnels"))
        .bearer_auth(secret)
        .json(&CreateTunnelRequest {
            edge_id: edge.into(),
            token: None,
            requested_name: None,
            kind: TunnelKind::Http,
            force: false,
            client_addr: "127.0.0.9".into(),
        })
        .send()?;
    if r.status().as_u16() != 201 {
        bail!(
            "create failed: {} {}",
            r.status(),
            r.text().unwrap_or_default()
        );
    }
    Ok(r.json()?)
}

fn run(stack: &Stack, label: &str, concurrency: usize, total: usize) -> Result<Run> {
    let base = Arc::new(stack.control.url.clone());
    let secret = Arc::new(stack.control.edge_secret.clone());
    let per = total / concurrency;
    let started = Instant::now();
    let handles: Vec<_> = (0..concurrency)
        .map(|_| {
            let (base, secret) = (base.clone(), secret.clone());
            std::thread::spawn(move || -> Result<Vec<(f64, f64, bool)>> {
                let http = Client::builder().timeout(Duration::from_secs(30)).build()?;
                let mut out = Vec::with_capacity(per);
                for _ in 0..per {
                    let t0 = Instant::now();
                    let r = create(&http, &base, &secret, "ap-bench")?;
                    out.push((
                        t0.elapsed().as_secs_f64() * 1000.0,
                        r.dns.wait_ms as f64,
                        r.dns.unconfirmed.is_empty(),
                    ));
                }
                Ok(out)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut waits = Vec::new();
    let mut unconfirmed = 0;
    for h in handles {
        let rows = h.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
        for (l, w, ok) in rows {
            lat.push(l);
            waits.push(w);
            if !ok {
                unconfirmed += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    lat.sort_by(|a, b| a.total_cmp(b));
    waits.sort_by(|a, b| a.total_cmp(b));
    Ok(Run {
        label: label.into(),
        concurrency,
        total: per * concurrency,
        elapsed,
        latencies_ms: lat,
        wait_ms: waits,
        unconfirmed,
    })
}

fn set_lag_wait(stack: &mut Stack, ms: u64) -> Result<()> {
    stack.control.stop();
    let cfg = std::fs::read_to_string(&stack.control.config_path)?;
    let mut out = String::new();
    for line in cfg.lines() {
        if line.starts_with("lag_wait_ms") {
            out.push_str(&format!("lag_wait_ms = {ms}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(&stack.control.config_path, out)?;
    stack.control.restart()
}

/// Times `rounds` heartbeats of `ids` (ms, sorted) and checks how many closes each answers.
fn time_heartbeats(
    stack: &Stack,
    edge: &str,
    ids: &[i64],
    rounds: usize,
    expect_close: usize,
) -> Result<Vec<f64>> {
    let http = Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let body = serde_json::to_vec(&serde_json::json!({ "tunnel_ids": ids }))?;
    let mut ms = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t0 = Instant::now();
        let r = http
            .post(format!("{}/v1/edges/{edge}/heartbeat", stack.control.url))
            .bearer_auth(&stack.control.edge_secret)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()?;
        if !r.status().is_success() {
            bail!("heartbeat: {} {}", r.status(), r.text().unwrap_or_default());
        }
        let hb: nearhop_wire::EdgeHeartbeatResponse = r.json()?;
        ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        if hb.close.len() != expect_close {
            bail!(
                "heartbeat closed {} tunnels, expected {expect_close}",
                hb.close.len()
            );
        }
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    Ok(ms)
}

/// One edge's heartbeat of `n` tunnel ids: all live (the renewal path), then all closed
/// by control (the path that looks up each close reason).
fn heartbeat_bench(n: usize) -> Result<()> {
    let stack = Stack::start(StackOptions {
        lag_wait_ms: 0,
        ..Default::default()
    })?;
    let edge = "us-hb";
    let r = Client::new()
        .post(format!("{}/v1/edges/register", stack.control.url))
        .bearer_auth(&stack.control.edge_secret)
        .json(&RegisterEdgeRequest {
            edge_id: edge.into(),
            region: "us".into(),
            admin_url: "http://127.0.0.1:9".into(),
            ..Default::default()
        })
        .send()?;
    if !r.status().is_success() {
        bail!("register: {}", r.text()?);
    }
    let db = &stack.pg.primary.endpoint;
    // Rows written directly: the bench times the heartbeat, not 100,000 setups.
    nearhop_stack::postgres::psql(
        db,
        &format!(
            "INSERT INTO tunnels (zone, label, kind, region, edge_id, client_addr, \
             lease_expires_at) SELECT 'free.tunnel.test', 'hb' || g, 'http', 'us', '{edge}', \
             '127.0.0.9', now() + interval '1 hour' FROM generate_series(1, {n}) g"
        ),
    )?;
    let ids: Vec<i64> = nearhop_stack::postgres::psql(
        db,
        &format!("SELECT id FROM tunnels WHERE edge_id = '{edge}' ORDER BY id"),
    )?
    .lines()
    .filter_map(|l| l.trim().parse().ok())
    .collect();
    if ids.len() != n {
        bail!("{} tunnels written, expected {n}", ids.len());
    }
    let rounds = 5;
    let live = time_heartbeats(&stack, edge, &ids, rounds, 0)?;
    nearhop_stack::postgres::psql(
        db,
        &format!(
            "UPDATE tunnels SET closed_at = now(), close_reason = 'takedown' \
             WHERE edge_id = '{edge}'"
        ),
    )?;
    let closed = time_heartbeats(&stack, edge, &ids, rounds, n)?;
    println!("| heartbeat of {n} ids | rounds | p50 ms | max ms |");
    println!("| --- | ---: | ---: | ---: |");
    for (label, ms) in [
        ("all live (renewed)", &live),
        ("all closed by control", &closed),
    ] {
        println!(
            "| {label} | {rounds} | {:.0} | {:.0} |",
            percentile(ms, 50.0).unwrap_or(0.0),
            ms.last().copied().unwrap_or(0.0)
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    if std::env::args().nth(1).as_deref() == Some("heartbeat") {
        let n = std::env::args()
            .nth(2)
            .and_then(|a| a.parse().ok())
            .unwrap_or(100_000);
        return heartbeat_bench(n);
    }
    let total: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let mut stack = Stack::start(StackOptions {
        with_dns: true,
        fsync: true,
        ..Default::default()
    })?;
    let http = Client::new();
    let r = http
        .post(format!("{}/v1/edges/register", stack.control.url))
        .bearer_auth(&stack.control.edge_secret)
        .json(&RegisterEdgeRequest {
            edge_id: "ap-bench".into(),
            region: "ap".into(),
            admin_url: "http://127.0.0.1:9".into(),
            ..Default::default()
        })
        .send()?;
    if !r.status().is_success() {
        bail!("register: {}", r.text()?);
    }
    // Warm up connections and caches.
    run(&stack, "warm-up", 4, 200)?;
    let mut runs = Vec::new();
    for conc in [1, 8] {
        set_lag_wait(&mut stack, 3000)?;
        runs.push(run(&stack, "wait on (us, eu, ap backends)", conc, total)?);
        set_lag_wait(&mut stack, 0)?;
        runs.push(run(&stack, "wait off", conc, total)?);
    }
    println!(
        "| mode | clients | creations | creations/s | p50 ms | p99 ms | wait p50 ms | wait p99 ms | unconfirmed |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &runs {
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {} |",
            r.label,
            r.concurrency,
            r.total,
            r.total as f64 / r.elapsed.as_secs_f64(),
            percentile(&r.latencies_ms, 50.0).unwrap_or(0.0),
            percentile(&r.latencies_ms, 99.0).unwrap_or(0.0),
            percentile(&r.wait_ms, 50.0).unwrap_or(0.0),
            percentile(&r.wait_ms, 99.0).unwrap_or(0.0),
            r.unconfirmed
        );
    }
    Ok(())
}
