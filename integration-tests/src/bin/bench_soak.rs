//! Soak benchmark: one edge with control, Postgres and its replicas, first flooded with rounds
//! of pre-login SSH connections, then holding 1,000 tunnels for ten minutes with visitor load
//! and a steady churn of reconnects. Reports the edge's and control's resident memory and
//! open file descriptors over time, and every failed visitor request.
//!
//! Build release binaries first, then run (see docs/benchmarks.md, section Soak):
//!     cargo build --release --workspace --bins
//!     cargo build --release -p nearhop-edge --example soak_tunnels --example prelogin_flood
//!     NEARHOP_PROFILE=release ./target/release/bench_soak
//!
//! The load clients are `edge/examples/soak_tunnels.rs` (tunnels, visitors, churn) and
//! `edge/examples/prelogin_flood.rs` (key exchanges that never log in).

use anyhow::{bail, Context, Result};
use clap::Parser;
use nearhop_stack::control::bin_path;
use nearhop_stack::edge::{EdgeProcess, EdgeSpec};
use nearhop_stack::local_service::LocalService;
use nearhop_stack::process::{open_fds, rss_kib};
use nearhop_stack::{Stack, StackOptions};
use nearhop_wire::Plan;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Tunnels held open during the soak.
    #[arg(long, default_value_t = 1000)]
    tunnels: usize,
    /// Seconds of visitor load and churn.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Visitor requests per second, all visitors together.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Concurrent visitor connections.
    #[arg(long, default_value_t = 8)]
    visitors: usize,
    /// Reconnects per second.
    #[arg(long, default_value_t = 1.0)]
    churn_per_second: f64,
    /// Seconds between memory and descriptor samples.
    #[arg(long, default_value_t = 60)]
    sample_seconds: u64,
    /// Rounds of pre-login connections before the soak (0: none).
    #[arg(long, default_value_t = 4)]
    prelogin_rounds: usize,
    /// Connections per pre-login round, all at once.
    #[arg(long, default_value_t = 1000)]
    prelogin_count: usize,
}

const LOCAL: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// Names per account: the test zone allows 50.
const PER_TOKEN: usize = 40;

/// Resident memory and open descriptors of one process.
#[derive(Clone, Copy)]
struct Usage {
    rss_kib: u64,
    fds: usize,
}

fn usage(pid: u32) -> Result<Usage> {
    Ok(Usage {
        rss_kib: rss_kib(pid)?,
        fds: open_fds(pid)?,
    })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() -> Result<()> {
    let args = Args::parse();
    let tmp = tempfile::Builder::new()
        .prefix("nearhop-bench-soak-")
        .tempdir()?;
    let dir = tmp.path().to_path_buf();
    eprintln!("bench dir: {}", dir.display());

    let service = LocalService::start("soak");
    let stack = Stack::start(StackOptions::default())?;
    let credential = stack.control.issue_edge_credential("us-1")?;
    let spec = EdgeSpec::for_tests("us", LOCAL, &stack.control.url, &credential);
    let edge = EdgeProcess::start(&dir.join("edge"), spec)?;
    let edge_pid = edge.pid().context("edge pid")?;
    let control_pid = stack.control.pid().context("control pid")?;

    println!("# Soak of one edge (release builds unless NEARHOP_PROFILE says otherwise)\n");
    if args.prelogin_rounds > 0 {
        prelogin_rounds(&args, &edge, edge_pid)?;
    }

    let accounts = args.tunnels.div_ceil(PER_TOKEN);
    let mut tokens = Vec::new();
    for _ in 0..accounts {
        tokens.push(stack.control.create_account(Plan::Pro)?.token);
    }
    let mut load = Command::new(bin_path("examples/soak_tunnels")?);
    load.arg("--ssh")
        .arg(edge.ssh_addr().to_string())
        .arg("--http")
        .arg(edge.http_addr().to_string())
        .arg("--target-port")
        .arg(service.port.to_string())
        .arg("--tunnels")
        .arg(args.tunnels.to_string())
        .arg("--tokens")
        .arg(tokens.join(","))
        .arg("--per-token")
        .arg(PER_TOKEN.to_string())
        .arg("--seconds")
        .arg(args.seconds.to_string())
        .arg("--rate")
        .arg(args.rate.to_string())
        .arg("--visitors")
        .arg(args.visitors.to_string())
        .arg("--churn-per-second")
        .arg(args.churn_per_second.to_string())
        .arg("--report-seconds")
        .arg(args.sample_seconds.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(
            dir.join("soak_tunnels.err"),
        )?));
    let mut child = KillOnDrop(load.spawn().context("starting the soak load client")?);
    let lines = read_lines(&mut child.0)?;

    let up = next_phase(&lines, "up", Duration::from_secs(600), &dir)?;
    println!(
        "\n## Soak: {} tunnels up in {} s (16 setups at a time); then {} s of {} requests/s from {} visitor connections and {} reconnects/s\n",
        up["tunnels"], up["seconds"], args.seconds, args.rate, args.visitors, args.churn_per_second
    );
    println!("| minute | edge RSS MiB | edge fds | control RSS MiB | control fds | requests | failed | reconnects |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let start = (usage(edge_pid)?, usage(control_pid)?);
    print_row(
        0.0,
        start,
        &serde_json::json!({"requests":0,"failed":0,"reconnects":0}),
    );
    let began = Instant::now();
    // The first sample under load: the visitors' connections and the allocator's arenas
    // are warm by then, so what grows after it grows with time.
    let mut warm = None;
    let done = loop {
        let line = next_line(&lines, Duration::from_secs(args.seconds + 600), &dir)?;
        let phase = line["phase"].as_str().unwrap_or("");
        let now = (usage(edge_pid)?, usage(control_pid)?);
        if phase == "tick" || phase == "done" {
            print_row(began.elapsed().as_secs_f64() / 60.0, now, &line);
            warm.get_or_insert(now);
        }
        if phase == "done" {
            break (line, now);
        }
    };
    let (report, end) = done;
    let ratio = |a: u64, b: u64| b as f64 / a.max(1) as f64;
    if let Some(warm) = warm {
        println!(
            "\nfirst sample under load → end: edge RSS ×{:.2}, edge fds ×{:.2}, control RSS ×{:.2}, control fds ×{:.2}",
            ratio(warm.0.rss_kib, end.0.rss_kib),
            ratio(warm.0.fds as u64, end.0.fds as u64),
            ratio(warm.1.rss_kib, end.1.rss_kib),
            ratio(warm.1.fds as u64, end.1.fds as u64),
        );
    }
    println!(
        "all tunnels up, before any visitor → end: edge RSS ×{:.2}, edge fds ×{:.2}, control RSS ×{:.2}, control fds ×{:.2}; {} requests, {} failed; {} reconnects ({} attempts failed and retried, {} given up)",
        ratio(start.0.rss_kib, end.0.rss_kib),
        ratio(start.0.fds as u64, end.0.fds as u64),
        ratio(start.1.rss_kib, end.1.rss_kib),
        ratio(start.1.fds as u64, end.1.fds as u64),
        report["requests"],
        report["failed"],
        report["reconnects"],
        report["reconnect_attempts_failed"],
        report["reconnects_given_up"],
    );
    let _ = child.0.wait();
    if report["failed"].as_u64() != Some(0) || report["reconnects_given_up"].as_u64() != Some(0) {
        let account = std::fs::read_to_string(dir.join("soak_tunnels.err")).unwrap_or_default();
        for line in account.lines().take(40) {
            eprintln!("{line}");
        }
        bail!("the soak had failures (the load client's first 40 lines about them are above)");
    }
    Ok(())
}

fn print_row(minute: f64, (edge, control): (Usage, Usage), counts: &serde_json::Value) {
    println!(
        "| {:.1} | {:.1} | {} | {:.1} | {} | {} | {} | {} |",
        minute,
        mib(edge.rss_kib),
        edge.fds,
        mib(control.rss_kib),
        control.fds,
        counts["requests"],
        counts["failed"],
        counts["reconnects"]
    );
}

/// Rounds of pre-login connections: the edge's memory after each (connections closed, two
/// seconds to settle).
fn prelogin_rounds(args: &Args, edge: &EdgeProcess, edge_pid: u32) -> Result<()> {
    println!(
        "## Pre-login rounds: {} SSH connections at once from 250 addresses, key exchange done, never authenticated, held 1 s\n",
        args.prelogin_count
    );
    println!("| round | exchanged | refused | edge RSS MiB after | edge fds after |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    let before = usage(edge_pid)?;
    println!(
        "| before | – | – | {:.1} | {} |",
        mib(before.rss_kib),
        before.fds
    );
    for round in 1..=args.prelogin_rounds {
        let out = Command::new(bin_path("examples/prelogin_flood")?)
            .arg(edge.ssh_addr().to_string())
            .arg(args.prelogin_count.to_string())
            .arg("1000")
            .stderr(Stdio::inherit())
            .output()
            .context("running prelogin_flood")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let report: serde_json::Value = serde_json::from_str(text.trim())
            .with_context(|| format!("prelogin_flood said {text:?}"))?;
        std::thread::sleep(Duration::from_secs(2));
        let after = usage(edge_pid)?;
        println!(
            "| {round} | {} | {} | {:.1} | {} |",
            report["exchanged"],
            report["refused"],
            mib(after.rss_kib),
            after.fds
        );
    }
    Ok(())
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The child's stdout lines, on a channel.
fn read_lines(child: &mut Child) -> Result<mpsc::Receiver<String>> {
    let stdout = child.stdout.take().context("load client stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

fn next_line(
    lines: &mpsc::Receiver<String>,
    timeout: Duration,
    dir: &std::path::Path,
) -> Result<serde_json::Value> {
    let line = lines.recv_timeout(timeout).map_err(|_| {
        let said = std::fs::read_to_string(dir.join("soak_tunnels.err")).unwrap_or_default();
        let tail: Vec<&str> = said.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        anyhow::anyhow!(
            "the load client stopped reporting; the last of what it said:\n{}",
            tail.join("\n")
        )
    })?;
    serde_json::from_str(&line).with_context(|| format!("load client said {line:?}"))
}

fn next_phase(
    lines: &mpsc::Receiver<String>,
    phase: &str,
    timeout: Duration,
    dir: &std::path::Path,
) -> Result<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = next_line(lines, left, dir)?;
        if line["phase"] == phase {
            return Ok(line);
        }
    }
}
