//! Flood benchmark: one edge with control and Postgres, one HTTP tunnel from the stock
//! OpenSSH client, and rounds of three visitor floods at once against that tunnel (HTTP/2
//! streams reset right after their HEADERS, HTTP/2 streams of a 2 MB answer reset after
//! 50 ms, HTTP/1.1 requests whose connections are reset at once). After each round and a
//! settling wait: the edge's resident memory, descriptors, `malloc_trim` runs, which side
//! closed its channels first, and a plain GET that shows the tunnel still serves; at the
//! end, the same once the client's session has ended.
//!
//! With `--relayed` a second edge (`eu`, on 127.0.0.2, with a credential of its own) joins
//! the mesh, and the floods go to its HTTP and TLS listeners: it relays them over its mesh
//! link to the edge holding the tunnel (`us`). The rounds start once a GET through eu
//! answers 200. Each row then has both edges' memory and descriptors, what eu relayed and
//! the relay errors at each edge by cause, eu's relay window growth, the holder's channel
//! closes (its tunnel's channels and the relay channels together: one counter), and a GET
//! through eu and one to us directly, both of which must answer 200.
//!
//! Build release binaries first, then run (see docs/benchmarks.md, section "Memory after
//! visitor floods"):
//!     cargo build --release --workspace --bins
//!     NEARHOP_PROFILE=release ./target/release/bench_flood
//!     NEARHOP_PROFILE=release ./target/release/bench_flood --edge-toml 'malloc_trim_interval_seconds = 0'
//!     NEARHOP_PROFILE=release ./target/release/bench_flood --relayed
//!
//! `--keep-dir` keeps the bench dir (printed at the start: the edges' logs) after the run.
//! The floods are visitors written here (`h2` over rustls, plain tokio sockets), the
//! tunnel's local service too (`Origin`), all in this process.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use h2::client::SendRequest;
use h2::{Ping, Reason};
use nearhop_stack::background::AcceptLoop;
use nearhop_stack::edge::{dev_zone_certificate, url_host_port, EdgeProcess, EdgeSpec};
use nearhop_stack::edge::{SshArgs, SshClient};
use nearhop_stack::metrics::{metric, metric_by, metric_sum};
use nearhop_stack::poll::try_eventually;
use nearhop_stack::process::rss_kib;
use nearhop_stack::visitor::http_get;
use nearhop_stack::{Stack, StackOptions};
use nearhop_wire::Plan;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::TlsConnector;

#[derive(Parser)]
struct Args {
    /// Rounds of the three floods.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds each round floods.
    #[arg(long, default_value_t = 60)]
    flood_seconds: u64,
    /// Seconds between a round's end (and the client's exit) and the sample after it.
    #[arg(long, default_value_t = 90)]
    settle_seconds: u64,
    /// Extra lines for the edge's TOML configuration (both edges' with `--relayed`), e.g.
    /// `malloc_trim_interval_seconds = 0`.
    #[arg(long, default_value = "")]
    edge_toml: String,
    /// Which floods run (all three by default), e.g. `--floods downloads,http1`.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "resets,downloads,http1"
    )]
    floods: Vec<Kind>,
    /// Send the floods to a second edge (`eu`, on 127.0.0.2), which relays them over the
    /// mesh to the edge holding the tunnel (`us`); both are measured.
    #[arg(long)]
    relayed: bool,
    /// Keep the bench dir (the edges' logs and configuration) after the run.
    #[arg(long)]
    keep_dir: bool,
}

/// The three floods.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    /// HTTP/2 streams reset right after their HEADERS.
    Resets,
    /// HTTP/2 streams of the large answer reset after `DOWNLOAD_HOLD`.
    Downloads,
    /// HTTP/1.1 requests whose connections are reset at once.
    Http1,
}

impl Kind {
    fn describe(self) -> String {
        match self {
            Kind::Resets => format!(
                "HTTP/2 streams reset after their HEADERS ({RESET_CONNECTIONS} connections, a ping \
                 every {RESETS_PER_PING} streams, a new connection when the edge ends one)"
            ),
            Kind::Downloads => format!(
                "HTTP/2 streams of a {BIG}-byte answer reset after {} ms ({DOWNLOAD_CONNECTIONS} \
                 connections × {DOWNLOAD_STREAMS} streams)",
                DOWNLOAD_HOLD.as_millis()
            ),
            Kind::Http1 => format!(
                "HTTP/1.1 requests whose connections are reset at once ({HTTP1_WORKERS} at a time)"
            ),
        }
    }
}

const LOCAL: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// The relaying edge's address (`--relayed`).
const RELAY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// How long the relaying edge may take to serve the tunnel: it learns of the holder from
/// control's answer to a heartbeat (every 5 s in the stack), links to it and follows its
/// holdings feed.
const MESH_WAIT: Duration = Duration::from_secs(60);
/// The large answer's path and size at the origin.
const BIG_PATH: &str = "/big";
const BIG: usize = 2_000_000;
// The floods' shapes. What the edge is made to hold depends on them as much as on the
// rates: the earlier probe (docs/benchmarks.md) sent ~1M reset streams a round with ~900 on
// each connection, ~22k reset downloads and 40-60k reset HTTP/1.1 requests a minute, and
// these were chosen to land near that on the two-core machine (the section says how near).
/// Connections of the reset flood, one after another each.
const RESET_CONNECTIONS: u8 = 2;
/// Streams the reset flood sends between pings: the ping's answer says the edge has read
/// them, so the flood runs as fast as the edge reads instead of queueing frames here.
/// Twenty is the edge's bound on resets it has not yet accepted (`MAX_PENDING_RESETS`):
/// with batches of 100 it ends nearly every connection within its first (~100 streams);
/// with 10 it never ends one; with 20 it ends one every ~1,000 streams.
const RESETS_PER_PING: u64 = 20;
/// Connections of the download flood, and streams in flight on each: at most 400 streams
/// a second at 50 ms each.
const DOWNLOAD_CONNECTIONS: u8 = 2;
const DOWNLOAD_STREAMS: usize = 10;
/// How long a download stream reads before it is reset.
const DOWNLOAD_HOLD: Duration = Duration::from_millis(50);
/// HTTP/1.1 connections in flight at once. Many, because a dropped SYN costs its worker a
/// second, and the kernel drops some: reset connections waiting to be accepted overflow the
/// edge's listen queue (backlog 128) now and then.
const HTTP1_WORKERS: u8 = 64;
/// Bound on one connection's setup (TCP, TLS, HTTP/2 preface).
const SETUP_LIMIT: Duration = Duration::from_secs(5);

fn main() -> Result<()> {
    let args = Args::parse();
    let began = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("nearhop-bench-flood-")
        .disable_cleanup(args.keep_dir)
        .tempdir()?;
    let dir = tmp.path().to_path_buf();
    eprintln!("bench dir: {}", dir.display());

    let origin = Origin::start()?;
    // The stack's control knows the regions us, eu and ap, so the relaying edge registers
    // in a region of its own.
    let stack = Stack::start(StackOptions::default())?;
    let (cert, key) = dev_zone_certificate(&dir.join("tls"))?;
    let edge_toml = format!(
        "tls_cert_path = \"{}\"\ntls_key_path = \"{}\"\n{}\n",
        cert.display(),
        key.display(),
        args.edge_toml
    );
    let edge = start_edge(&stack, "us", LOCAL, &dir.join("edge"), &edge_toml)?;
    let relay = match args.relayed {
        true => Some(start_edge(
            &stack,
            "eu",
            RELAY,
            &dir.join("edge-eu"),
            &edge_toml,
        )?),
        false => None,
    };
    // The flooded edge first, the holder last (the same edge unless relayed).
    let measured: Vec<&EdgeProcess> = relay.iter().chain([&edge]).collect();
    let pids = measured
        .iter()
        .map(|e| e.pid().context("edge pid"))
        .collect::<Result<Vec<u32>>>()?;

    let token = stack.control.create_account(Plan::Pro)?.token;
    let mut ssh = SshClient::start(
        &dir.join("ssh"),
        "flooded",
        edge.ssh_addr(),
        &SshArgs {
            user: Some(token),
            // 127.0.0.1, not localhost: the client would try ::1 first for every channel.
            forwards: vec![format!("0:127.0.0.1:{}", origin.port)],
            ..SshArgs::default()
        },
    )?;
    let url = ssh.wait_for_url(Duration::from_secs(30))?;
    let (host, _) = url_host_port(&url)?;
    let tls_config = tls_config()?;
    let holder = Arc::new(Target::at(&edge, &host, &tls_config));
    let target = match &relay {
        Some(eu) => Arc::new(Target::at(eu, &host, &tls_config)),
        None => holder.clone(),
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let serves = |target: &Target| {
        let (status, _) = http_get(target.http, &target.host, "/")?;
        anyhow::ensure!(status == 200, "HTTP/1.1 GET / answered {status}");
        let status = rt.block_on(h2_get(target, "/"))?;
        anyhow::ensure!(status == 200, "HTTP/2 GET / answered {status}");
        Ok(())
    };
    try_eventually(Duration::from_secs(30), || serves(&holder))
        .context("the tunnel does not serve over HTTP/1.1 and HTTP/2")?;
    if relay.is_some() {
        try_eventually(MESH_WAIT, || serves(&target))
            .context("the relaying edge (eu) does not serve the tunnel over HTTP/1.1 and HTTP/2")?;
    }

    let floods: Vec<String> = args.floods.iter().map(|k| k.describe()).collect();
    if relay.is_some() {
        println!(
            "# Visitor floods against one tunnel (stock OpenSSH client) held by one edge (us), sent to a second edge (eu) that relays them over the mesh (release builds unless NEARHOP_PROFILE says otherwise)\n"
        );
    } else {
        println!(
            "# Visitor floods against one tunnel (stock OpenSSH client) on one edge (release builds unless NEARHOP_PROFILE says otherwise)\n"
        );
    }
    println!(
        "{} rounds of {} s of floods at once: {}. Samples {} s after each round. Edge TOML added: {:?}\n",
        args.rounds,
        args.flood_seconds,
        floods.join("; "),
        args.settle_seconds,
        args.edge_toml
    );
    let start = sample(&measured)?;
    if relay.is_some() {
        let (eu, us) = (&start[0], &start[1]);
        println!(
            "before: eu RSS {:.1} MB, {} fds; us RSS {:.1} MB, {} fds\n",
            mb(eu.rss_bytes),
            eu.fds,
            mb(us.rss_bytes),
            us.fds
        );
        println!(
            "| round | reset streams (conns) | 2 MB streams reset (conns; answered 200, completed, other status) | HTTP/1.1 resets (failed) | eu RSS MB: peak / flood end / +{0} s | us RSS MB: peak / flood end / +{0} s | us unread tunnel window MB, peak | fds eu / us +{0} s | relayed by eu: connections (requests) | relay errors at eu; at us | eu relay window grown MB +{0} s (growths refused) | us channels closed first by client / edge (of which cut) | trims eu / us | GET / via eu / at us |",
            args.settle_seconds
        );
        println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    } else {
        println!(
            "before: edge RSS {:.1} MB, {} fds\n",
            mb(start[0].rss_bytes),
            start[0].fds
        );
        println!(
            "| round | reset streams (conns) | 2 MB streams reset (conns; answered 200, completed, other status) | HTTP/1.1 resets (failed) | edge RSS MB: peak / flood end / +{} s | unread tunnel window MB, peak | fds +{} s | channels closed first by client / edge (of which cut) | trims (avg ms) | GET / after |",
            args.settle_seconds, args.settle_seconds
        );
        println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    }
    // Where the GET after each round goes: through the flooded edge, and (relayed) to the
    // holder directly.
    let probed: Vec<(&str, &Target)> = match &relay {
        Some(_) => vec![("via eu", &target), ("at us", &holder)],
        None => vec![("", &target)],
    };
    let settle = Duration::from_secs(args.settle_seconds);
    let mut last = start.clone();
    let mut failures = Vec::new();
    for round in 1..=args.rounds {
        let report = flood(
            &target,
            &args.floods,
            Duration::from_secs(args.flood_seconds),
            &pids,
            &edge,
        )?;
        let at_end = sample(&measured)?;
        std::thread::sleep(settle);
        let after = sample(&measured)?;
        let probes: Vec<Probe> = probed.iter().map(|(_, t)| Probe::of(t)).collect();
        let rounds = RoundSamples {
            before: &last,
            at_end: &at_end,
            after: &after,
            peaks_kib: &report.peaks_rss_kib,
        };
        match relay {
            Some(_) => println!("{}", relayed_row(round, &report, &rounds, &probes)),
            None => println!("{}", single_row(round, &report, &rounds, &probes[0])),
        }
        for ((where_, _), probe) in probed.iter().zip(&probes) {
            if !probe.served() {
                let at = if where_.is_empty() {
                    String::new()
                } else {
                    format!("GET {where_}: ")
                };
                failures.push(format!("round {round}: {at}{}", probe.describe()));
            }
        }
        last = after;
        if !ssh.is_running() {
            failures.push(format!("the OpenSSH client exited in round {round}"));
            break;
        }
    }

    ssh.stop();
    std::thread::sleep(settle);
    let end = sample(&measured)?;
    let minutes = began.elapsed().as_secs_f64() / 60.0;
    match &relay {
        Some(eu) => print_relayed_end(
            args.settle_seconds,
            &start,
            &last,
            &end,
            [eu, &edge],
            minutes,
        ),
        None => print_single_end(args.settle_seconds, &start[0], &last[0], &end[0], minutes),
    }
    if !failures.is_empty() {
        let relay_tail = match &relay {
            Some(eu) => format!(
                "\nthe relaying edge's (eu) last lines:\n{}",
                eu.log_tail(20)
            ),
            None => String::new(),
        };
        bail!(
            "the tunnel stopped serving: {}\nthe OpenSSH client printed:\n{}\nthe edge's last lines:\n{}{relay_tail}",
            failures.join("; "),
            tail_of(&ssh.output(), 20),
            edge.log_tail(20)
        );
    }
    Ok(())
}

/// Starts the edge `{region}-1` on `ip` in `dir` with its own credential, with `toml` added
/// to its configuration.
fn start_edge(
    stack: &Stack,
    region: &str,
    ip: Ipv4Addr,
    dir: &Path,
    toml: &str,
) -> Result<EdgeProcess> {
    let credential = stack
        .control
        .issue_edge_credential(&format!("{region}-1"))?;
    let mut spec = EdgeSpec::for_tests(region, ip, &stack.control.url, &credential);
    spec.extra_toml = toml.to_string();
    EdgeProcess::start(dir, spec)
}

/// Each edge's metrics, in order.
fn sample(edges: &[&EdgeProcess]) -> Result<Vec<EdgeSample>> {
    edges.iter().map(|e| EdgeSample::of(e)).collect()
}

/// The edges' samples around one round, in the order of `sample`.
struct RoundSamples<'a> {
    /// After the previous round's settling wait (or before the first round).
    before: &'a [EdgeSample],
    at_end: &'a [EdgeSample],
    /// After this round's settling wait.
    after: &'a [EdgeSample],
    peaks_kib: &'a [u64],
}

impl RoundSamples<'_> {
    /// `peak / flood end / +settle` MB of edge `i`.
    fn rss(&self, i: usize) -> String {
        format!(
            "{:.0} / {:.0} / {:.0}",
            self.peaks_kib[i] as f64 * 1024.0 / 1e6,
            mb(self.at_end[i].rss_bytes),
            mb(self.after[i].rss_bytes)
        )
    }

    /// `client / edge (cut)`: edge `i`'s channels closed in the round, by who closed first.
    fn closes(&self, i: usize) -> String {
        let (from, to) = (&self.before[i], &self.after[i]);
        format!(
            "{} / {} ({})",
            to.closed_by_client.saturating_sub(from.closed_by_client),
            to.closed_by_edge.saturating_sub(from.closed_by_edge),
            since(from.cut, to.cut)
        )
    }
}

/// The floods' columns of a row.
fn flood_columns(report: &FloodReport) -> String {
    let (r, d, h) = (&report.resets, &report.downloads, &report.http1);
    format!(
        "{} ({}) | {} ({}; {}, {}, {}) | {} ({})",
        r.streams,
        r.connections,
        d.streams,
        d.connections,
        d.answered,
        d.completed,
        d.refused,
        h.streams,
        h.failed
    )
}

/// A round's row with one edge.
fn single_row(round: usize, report: &FloodReport, s: &RoundSamples, probe: &Probe) -> String {
    format!(
        "| {round} | {} | {} | {} | {} | {} | {} | {} |",
        flood_columns(report),
        s.rss(0),
        unread_window(report),
        s.after[0].fds,
        s.closes(0),
        trims(&s.before[0], &s.after[0]),
        probe.describe(),
    )
}

/// The holder's highest unread tunnel window in MB, `-` for builds without the gauge.
fn unread_window(report: &FloodReport) -> String {
    report
        .peak_unread_window
        .map_or("-".into(), |bytes| format!("{:.1}", mb(bytes)))
}

/// A round's row with the relaying edge (0) and the holder (1).
fn relayed_row(round: usize, report: &FloodReport, s: &RoundSamples, probes: &[Probe]) -> String {
    let (eu_before, eu) = (&s.before[0], &s.after[0]);
    format!(
        "| {round} | {} | {} | {} | {} | {} / {} | {} ({}) | {}; {} | {:.1} ({}) | {} | {} / {} | {} / {} |",
        flood_columns(report),
        s.rss(0),
        s.rss(1),
        unread_window(report),
        eu.fds,
        s.after[1].fds,
        eu.relayed_out.saturating_sub(eu_before.relayed_out),
        eu.relay_requests.saturating_sub(eu_before.relay_requests),
        relay_errors(eu_before, eu),
        relay_errors(&s.before[1], &s.after[1]),
        mb(eu.window_grown),
        eu.growths_refused.saturating_sub(eu_before.growths_refused),
        s.closes(1),
        trims(eu_before, eu),
        trims(&s.before[1], &s.after[1]),
        probes[0].describe(),
        probes[1].describe(),
    )
}

/// The lines after the client's session ended, with one edge.
fn print_single_end(
    settle: u64,
    start: &EdgeSample,
    last: &EdgeSample,
    end: &EdgeSample,
    minutes: f64,
) {
    println!(
        "\nafter the client's session ended (+{} s): edge RSS {:.1} MB, {} fds, {} tunnels; trims since the last round {}",
        settle,
        mb(end.rss_bytes),
        end.fds,
        end.tunnels,
        trims(last, end)
    );
    println!(
        "whole run: channels closed first by client {} / by edge {} (cut: {}; unwanted answer bytes read and dropped: {}); {} trims taking {:.1} s in all; refused by the edge: {}; {:.1} min",
        end.closed_by_client.saturating_sub(start.closed_by_client),
        end.closed_by_edge.saturating_sub(start.closed_by_edge),
        since(start.cut, end.cut),
        since(start.unwanted_bytes, end.unwanted_bytes),
        end.trims.saturating_sub(start.trims),
        end.trim_seconds - start.trim_seconds,
        refusals(start, end),
        minutes
    );
}

/// The lines after the client's session ended, with the relaying edge (0) and the holder (1).
fn print_relayed_end(
    settle: u64,
    start: &[EdgeSample],
    last: &[EdgeSample],
    end: &[EdgeSample],
    edges: [&EdgeProcess; 2],
    minutes: f64,
) {
    println!("\nafter the client's session ended (+{settle} s):");
    for (i, name) in ["eu", "us"].into_iter().enumerate() {
        let (s, l, e) = (&start[i], &last[i], &end[i]);
        println!(
            "- {name}: RSS {:.1} MB, {} fds, {} tunnels, relay window grown {} bytes; trims since the last round {}",
            mb(e.rss_bytes),
            e.fds,
            e.tunnels,
            e.window_grown,
            trims(l, e)
        );
        println!(
            "  whole run: relayed connections out {} / in {}, requests relayed {}, MB received from peers {:.1} / sent {:.1}; relay errors: {}; window growths refused {}; channels closed first by client {} / by edge {} (cut: {}; unwanted answer bytes read and dropped: {}); {} trims taking {:.1} s in all; refused by the edge: {}; log lines at WARN {} / ERROR {}",
            e.relayed_out.saturating_sub(s.relayed_out),
            e.relayed_in.saturating_sub(s.relayed_in),
            e.relay_requests.saturating_sub(s.relay_requests),
            mb(e.relay_received.saturating_sub(s.relay_received)),
            mb(e.relay_sent.saturating_sub(s.relay_sent)),
            relay_errors(s, e),
            e.growths_refused.saturating_sub(s.growths_refused),
            e.closed_by_client.saturating_sub(s.closed_by_client),
            e.closed_by_edge.saturating_sub(s.closed_by_edge),
            since(s.cut, e.cut),
            since(s.unwanted_bytes, e.unwanted_bytes),
            e.trims.saturating_sub(s.trims),
            e.trim_seconds - s.trim_seconds,
            refusals(s, e),
            log_lines(edges[i], "WARN").len(),
            log_lines(edges[i], "ERROR").len(),
        );
        for line in log_lines(edges[i], "ERROR").iter().take(5) {
            println!("  ERROR line: {line}");
        }
    }
    println!("{minutes:.1} min");
}

/// `N at the client's channel cap, ...`: what the edge turned away between two samples.
fn refusals(from: &EdgeSample, to: &EdgeSample) -> String {
    format!(
        "{} at the client's channel cap, {} at another share, {} at the connection limit, {} open timeouts",
        to.client_full.saturating_sub(from.client_full),
        to.other_shares.saturating_sub(from.other_shares),
        to.limit_refused.saturating_sub(from.limit_refused),
        to.open_timeouts.saturating_sub(from.open_timeouts)
    )
}

/// `cause N, ...`: relay errors between two samples, `0` when none.
fn relay_errors(from: &EdgeSample, to: &EdgeSample) -> String {
    let grown: Vec<String> = to
        .relay_errors
        .iter()
        .filter_map(|(cause, n)| {
            let before = from
                .relay_errors
                .iter()
                .find(|(c, _)| c == cause)
                .map_or(0, |(_, n)| *n);
            let grew = n.saturating_sub(before);
            (grew > 0).then(|| format!("{cause} {grew}"))
        })
        .collect();
    if grown.is_empty() {
        "0".into()
    } else {
        grown.join(", ")
    }
}

/// The edge's log lines at `level` (tracing's format: the level after the time).
fn log_lines(edge: &EdgeProcess, level: &str) -> Vec<String> {
    let text = std::fs::read_to_string(edge.log()).unwrap_or_default();
    text.lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(level))
        .map(str::to_string)
        .collect()
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn tail_of(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A counter's growth between two samples, `–` where the edge does not export it.
fn since(from: Option<u64>, to: Option<u64>) -> String {
    match (from, to) {
        (Some(a), Some(b)) => b.saturating_sub(a).to_string(),
        _ => "–".into(),
    }
}

/// `N (avg X ms)`: the trims between two samples.
fn trims(from: &EdgeSample, to: &EdgeSample) -> String {
    let runs = to.trims.saturating_sub(from.trims);
    if runs == 0 {
        return "0".into();
    }
    let ms = (to.trim_seconds - from.trim_seconds) * 1000.0 / runs as f64;
    format!("{runs} ({ms:.1})")
}

const SHARE_REFUSED: &str = "nearhop_edge_visitor_share_refused_total";
const RELAYED: &str = "nearhop_edge_relay_connections_total";
const RELAY_BYTES: &str = "nearhop_edge_relay_bytes_total";

/// What the edge's `/metrics` said at one moment.
#[derive(Clone)]
struct EdgeSample {
    rss_bytes: u64,
    fds: u64,
    trims: u64,
    trim_seconds: f64,
    closed_by_client: u64,
    closed_by_edge: u64,
    /// Of those, channels cut while their client still sent an answer (builds that count it).
    cut: Option<u64>,
    /// What clients sent on finished channels (builds that count it).
    unwanted_bytes: Option<u64>,
    /// Visitors refused because the client held `max_channels_per_client` channels.
    client_full: u64,
    /// Visitors refused at their address's or the tunnel's share.
    other_shares: u64,
    limit_refused: u64,
    open_timeouts: u64,
    tunnels: u64,
    /// Visitor connections this edge relayed to the holder (`out`), and took from a peer
    /// (`in`).
    relayed_out: u64,
    relayed_in: u64,
    /// HTTP requests relayed to the holder.
    relay_requests: u64,
    /// Bytes of relayed connections from peers and to them.
    relay_received: u64,
    relay_sent: u64,
    /// `nearhop_edge_relay_errors_total` by cause.
    relay_errors: Vec<(String, u64)>,
    /// Bytes by which relay channels' windows have grown past their initial credit, now.
    window_grown: u64,
    growths_refused: u64,
}

impl EdgeSample {
    fn of(edge: &EdgeProcess) -> Result<EdgeSample> {
        let text = edge.metrics().context("reading the edge's metrics")?;
        let needed = |name: &str| {
            metric(&text, name, &[]).with_context(|| format!("no {name} in the edge's metrics"))
        };
        // Counters with labels appear once counted: absent is 0.
        let count = |name: &str, labels: &[(&str, &str)]| metric_sum(&text, name, labels) as u64;
        Ok(EdgeSample {
            rss_bytes: needed("process_resident_memory_bytes")? as u64,
            fds: needed("process_open_fds")? as u64,
            trims: needed("nearhop_edge_malloc_trims_total")? as u64,
            trim_seconds: needed("nearhop_edge_malloc_trim_seconds_total")?,
            closed_by_client: count("nearhop_edge_channels_closed_total", &[("first", "client")]),
            closed_by_edge: count("nearhop_edge_channels_closed_total", &[("first", "edge")]),
            cut: metric(&text, "nearhop_edge_channels_cut_total", &[]).map(|v| v as u64),
            unwanted_bytes: metric(&text, "nearhop_edge_channel_unwanted_bytes_total", &[])
                .map(|v| v as u64),
            client_full: count(SHARE_REFUSED, &[("share", "client_channels")]),
            other_shares: count(SHARE_REFUSED, &[])
                .saturating_sub(count(SHARE_REFUSED, &[("share", "client_channels")])),
            limit_refused: count("nearhop_edge_visitor_connections_refused_total", &[]),
            open_timeouts: count("nearhop_edge_visitor_open_timeouts_total", &[]),
            tunnels: count("nearhop_edge_tunnels_active", &[]),
            relayed_out: count(RELAYED, &[("direction", "out")]),
            relayed_in: count(RELAYED, &[("direction", "in")]),
            relay_requests: count("nearhop_edge_relay_requests_total", &[]),
            relay_received: count(RELAY_BYTES, &[("direction", "received")]),
            relay_sent: count(RELAY_BYTES, &[("direction", "sent")]),
            relay_errors: metric_by(&text, "nearhop_edge_relay_errors_total", "cause")
                .into_iter()
                .map(|(cause, n)| (cause, n as u64))
                .collect(),
            window_grown: count("nearhop_edge_relay_window_grown_bytes", &[]),
            growths_refused: count("nearhop_edge_relay_window_growth_refused_total", &[]),
        })
    }
}

/// A plain HTTP/1.1 GET of the tunnel through the edge: its status, or why there was none.
struct Probe {
    answer: Result<u16, String>,
    ms: f64,
}

impl Probe {
    fn of(target: &Target) -> Probe {
        let t = Instant::now();
        let answer = http_get(target.http, &target.host, "/")
            .map(|(status, _)| status)
            .map_err(|e| format!("{e:#}"));
        Probe {
            answer,
            ms: t.elapsed().as_secs_f64() * 1000.0,
        }
    }

    fn served(&self) -> bool {
        matches!(self.answer, Ok(200))
    }

    fn describe(&self) -> String {
        match &self.answer {
            Ok(status) => format!("{status} ({:.0} ms)", self.ms),
            Err(e) => format!("no answer ({:.0} ms): {e}", self.ms),
        }
    }
}

/// The tunnel's local service: `GET /big` answers `BIG` bytes made once, anything else a
/// line of text; kept alive. Not the stack's `LocalService`, whose `/blob/N` computes each
/// byte it sends (a pattern the tests check): CPU that hundreds of 2 MB answers a second
/// would take from the edge on a two-core machine, where a fixed body costs only the copy.
struct Origin {
    port: u16,
    _server: AcceptLoop,
}

impl Origin {
    fn start() -> Result<Origin> {
        let listener = std::net::TcpListener::bind((LOCAL, 0)).context("binding the origin")?;
        let port = listener.local_addr()?.port();
        let big: Arc<[u8]> = vec![b'x'; BIG].into();
        let server = AcceptLoop::start(listener, move |stream, _| {
            let big = big.clone();
            async move {
                let _ = serve_origin(stream, &big).await;
            }
        });
        Ok(Origin {
            port,
            _server: server,
        })
    }
}

async fn serve_origin(stream: TcpStream, big: &[u8]) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let big_asked = line.split_whitespace().nth(1) == Some(BIG_PATH);
        // Only GETs come: the head ends the request.
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await? == 0 {
                return Ok(());
            }
            if header.trim_end().is_empty() {
                break;
            }
        }
        let body: &[u8] = if big_asked {
            big
        } else {
            b"hello from the flood origin\n"
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: application/octet-stream\r\n\r\n",
            body.len()
        );
        let w = reader.get_mut();
        w.write_all(head.as_bytes()).await?;
        w.write_all(body).await?;
    }
}

/// Where the floods go: the tunnel's name, and the edge's HTTP and TLS listeners.
struct Target {
    host: String,
    http: SocketAddr,
    tls: SocketAddr,
    tls_config: Arc<rustls::ClientConfig>,
}

impl Target {
    /// The tunnel `host` at `edge`'s listeners.
    fn at(edge: &EdgeProcess, host: &str, tls_config: &Arc<rustls::ClientConfig>) -> Target {
        Target {
            host: host.to_string(),
            http: edge.http_addr(),
            tls: SocketAddr::from((edge.spec.ip, edge.spec.tls)),
            tls_config: tls_config.clone(),
        }
    }
}

/// TLS offering only `h2` (the edge serves HTTP/2 over TLS only, ALPN `h2`). The server's
/// certificate is not checked: the stack's dev certificate is its own CA (`CA:TRUE`), which
/// webpki refuses as a server's certificate, and what is measured here is the edge.
fn tls_config() -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts any server certificate, checking only the handshake's signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TCP connection to `to` from the loopback address `from`: each flood worker has its
/// own, so that no flood fills another's share of the edge's connections per address.
async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    let stream = socket.connect(to).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

type H2Connection = h2::client::Connection<tokio_rustls::client::TlsStream<TcpStream>, Bytes>;

/// An HTTP/2 connection to the edge's TLS port from `from`. Windows as large as a
/// browser's, so that a download moves in the 50 ms it is given.
async fn h2_connect(target: &Target, from: Ipv4Addr) -> Result<(SendRequest<Bytes>, H2Connection)> {
    let tcp = connect_from(from, target.tls).await?;
    let name = rustls::pki_types::ServerName::try_from(target.host.clone())?;
    let tls = TlsConnector::from(target.tls_config.clone())
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    anyhow::ensure!(
        tls.get_ref().1.alpn_protocol() == Some(b"h2"),
        "the edge did not agree on h2"
    );
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .handshake(tls)
        .await
        .context("HTTP/2 handshake")?;
    Ok((send, conn))
}

fn request(host: &str, path: &str) -> Result<http::Request<()>> {
    Ok(http::Request::get(format!("https://{host}{path}")).body(())?)
}

/// One HTTP/2 GET, read to its end: its status.
async fn h2_get(target: &Target, path: &str) -> Result<u16> {
    let (send, conn) = tokio::time::timeout(SETUP_LIMIT, h2_connect(target, LOCAL))
        .await
        .context("HTTP/2 connection setup timed out")??;
    let conn = tokio::spawn(conn);
    let mut send = send.ready().await?;
    let (response, _) = send.send_request(request(&target.host, path)?, true)?;
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .context("no HTTP/2 answer in 10 s")??;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        body.flow_control().release_capacity(chunk.len())?;
    }
    conn.abort();
    Ok(status)
}

/// What one flood sent and saw.
#[derive(Default)]
struct Tally {
    /// Streams or requests sent.
    streams: AtomicU64,
    connections: AtomicU64,
    /// Connections that could not be set up, or requests that could not be written.
    failed: AtomicU64,
    /// Download streams whose answer started with 200 before the reset.
    answered: AtomicU64,
    /// Download streams whose whole answer came before the reset.
    completed: AtomicU64,
    /// Download streams answered with another status (the edge's refusals).
    refused: AtomicU64,
}

/// A [`Tally`] read at the flood's end.
struct Counts {
    streams: u64,
    connections: u64,
    failed: u64,
    answered: u64,
    completed: u64,
    refused: u64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Tally {
    fn counts(&self) -> Counts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counts {
            streams: get(&self.streams),
            connections: get(&self.connections),
            failed: get(&self.failed),
            answered: get(&self.answered),
            completed: get(&self.completed),
            refused: get(&self.refused),
        }
    }
}

/// What a round of floods sent, and each edge's highest resident memory meanwhile.
struct FloodReport {
    resets: Counts,
    downloads: Counts,
    http1: Counts,
    /// In the order of the edges' pids given to [`flood`].
    peaks_rss_kib: Vec<u64>,
    /// The holder's highest `nearhop_edge_tunnel_window_unread_bytes` seen (builds that
    /// have it): what its clients could still send that visitors had not read.
    peak_unread_window: Option<u64>,
}

/// The three floods at once for `length`, each on a thread and runtime of its own (as
/// three processes would be: the CPU-bound reset flood cannot starve the others of this
/// process's turns); each worker sends from a loopback address of its own,
/// `127.1.<flood>.<worker>`.
fn flood(
    target: &Arc<Target>,
    kinds: &[Kind],
    length: Duration,
    edge_pids: &[u32],
    holder: &EdgeProcess,
) -> Result<FloodReport> {
    let until = Instant::now() + length;
    let workers = |kind: Kind, n: u8| if kinds.contains(&kind) { n } else { 0 };
    let floods = [
        start_flood(
            1,
            workers(Kind::Resets, RESET_CONNECTIONS),
            target,
            until,
            reset_streams,
        ),
        start_flood(
            2,
            workers(Kind::Downloads, DOWNLOAD_CONNECTIONS),
            target,
            until,
            reset_downloads,
        ),
        start_flood(
            3,
            workers(Kind::Http1, HTTP1_WORKERS),
            target,
            until,
            reset_http1,
        ),
    ];
    let mut peaks = vec![0; edge_pids.len()];
    let mut peak_unread_window: Option<u64> = None;
    while floods.iter().any(|f| !f.is_finished()) {
        for (peak, pid) in peaks.iter_mut().zip(edge_pids) {
            if let Ok(kib) = rss_kib(*pid) {
                *peak = (*peak).max(kib);
            }
        }
        let unread = holder
            .metrics()
            .ok()
            .and_then(|text| metric(&text, "nearhop_edge_tunnel_window_unread_bytes", &[]));
        if let Some(bytes) = unread {
            peak_unread_window = Some(peak_unread_window.unwrap_or(0).max(bytes as u64));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let [resets, downloads, http1] = floods.map(|f| match f.join() {
        Ok(counts) => counts,
        Err(_) => Err(anyhow::anyhow!("a flood's thread panicked")),
    });
    Ok(FloodReport {
        resets: resets?,
        downloads: downloads?,
        http1: http1?,
        peaks_rss_kib: peaks,
        peak_unread_window,
    })
}

/// Runs `workers` copies of `work` until `until` on a thread of their own; what still
/// runs `SETUP_LIMIT` after it is cut off.
fn start_flood<F, Fut>(
    net: u8,
    workers: u8,
    target: &Arc<Target>,
    until: Instant,
    work: F,
) -> std::thread::JoinHandle<Result<Counts>>
where
    F: Fn(Arc<Target>, Ipv4Addr, tokio::time::Instant, Arc<Tally>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let target = target.clone();
    std::thread::spawn(move || {
        let tally = Arc::new(Tally::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("a flood's runtime")?;
        rt.block_on(async {
            let until = tokio::time::Instant::from_std(until);
            let mut running = tokio::task::JoinSet::new();
            for w in 1..=workers {
                let from = Ipv4Addr::new(127, 1, net, w);
                running.spawn(work(target.clone(), from, until, tally.clone()));
            }
            let all = async { while running.join_next().await.is_some() {} };
            let _ = tokio::time::timeout_at(until + SETUP_LIMIT, all).await;
            running.abort_all();
            while running.join_next().await.is_some() {}
        });
        Ok(tally.counts())
    })
}

/// HTTP/2 streams reset (CANCEL) right after their HEADERS, as fast as the edge reads them,
/// on one connection after another: the edge ends a connection that resets too many
/// streams before it accepted them ("rapid reset").
async fn reset_streams(
    target: Arc<Target>,
    from: Ipv4Addr,
    until: tokio::time::Instant,
    tally: Arc<Tally>,
) {
    while tokio::time::Instant::now() < until {
        let Ok(Ok((mut send, mut conn))) =
            tokio::time::timeout(SETUP_LIMIT, h2_connect(&target, from)).await
        else {
            bump(&tally.failed);
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        bump(&tally.connections);
        let Some(mut pings) = conn.ping_pong() else {
            continue;
        };
        let conn = tokio::spawn(conn);
        let mut unanswered = 0;
        while tokio::time::Instant::now() < until {
            if std::future::poll_fn(|cx| send.poll_ready(cx))
                .await
                .is_err()
            {
                break;
            }
            let Ok(req) = request(&target.host, "/") else {
                break;
            };
            let Ok((_, mut stream)) = send.send_request(req, true) else {
                break;
            };
            stream.send_reset(Reason::CANCEL);
            bump(&tally.streams);
            unanswered += 1;
            if unanswered == RESETS_PER_PING {
                unanswered = 0;
                if pings.ping(Ping::opaque()).await.is_err() {
                    break;
                }
            } else {
                tokio::task::yield_now().await;
            }
        }
        conn.abort();
    }
}

/// HTTP/2 streams for the large answer, `DOWNLOAD_STREAMS` at a time on one connection,
/// each read for `DOWNLOAD_HOLD` and then reset (CANCEL); a new connection when one ends.
async fn reset_downloads(
    target: Arc<Target>,
    from: Ipv4Addr,
    until: tokio::time::Instant,
    tally: Arc<Tally>,
) {
    while tokio::time::Instant::now() < until {
        let Ok(Ok((send, conn))) =
            tokio::time::timeout(SETUP_LIMIT, h2_connect(&target, from)).await
        else {
            bump(&tally.failed);
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        bump(&tally.connections);
        let conn = tokio::spawn(conn);
        let mut streams = tokio::task::JoinSet::new();
        for _ in 0..DOWNLOAD_STREAMS {
            let (send, target, tally) = (send.clone(), target.clone(), tally.clone());
            streams.spawn(async move { download_and_reset(send, &target, until, &tally).await });
        }
        while streams.join_next().await.is_some() {}
        conn.abort();
    }
}

/// One stream slot of [`reset_downloads`]: returns when the connection fails.
async fn download_and_reset(
    mut send: SendRequest<Bytes>,
    target: &Target,
    until: tokio::time::Instant,
    tally: &Tally,
) {
    while tokio::time::Instant::now() < until {
        if std::future::poll_fn(|cx| send.poll_ready(cx))
            .await
            .is_err()
        {
            return;
        }
        let Ok(req) = request(&target.host, BIG_PATH) else {
            return;
        };
        let Ok((response, mut stream)) = send.send_request(req, true) else {
            return;
        };
        bump(&tally.streams);
        let read = async {
            let response = response.await?;
            if response.status() != 200 {
                bump(&tally.refused);
                return Ok(());
            }
            bump(&tally.answered);
            let mut body = response.into_body();
            while let Some(chunk) = body.data().await {
                let chunk = chunk?;
                body.flow_control().release_capacity(chunk.len())?;
            }
            bump(&tally.completed);
            Ok::<_, h2::Error>(())
        };
        let _ = tokio::time::timeout(DOWNLOAD_HOLD, read).await;
        stream.send_reset(Reason::CANCEL);
    }
}

/// HTTP/1.1 requests on connections reset (SO_LINGER 0, then close) as soon as the
/// request is written, one connection after another.
async fn reset_http1(
    target: Arc<Target>,
    from: Ipv4Addr,
    until: tokio::time::Instant,
    tally: Arc<Tally>,
) {
    let req = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nUser-Agent: bench_flood\r\n\r\n",
        target.host
    );
    while tokio::time::Instant::now() < until {
        let sent = async {
            let mut stream = connect_from(from, target.http).await?;
            stream.write_all(req.as_bytes()).await?;
            stream.set_zero_linger()?;
            Ok::<_, std::io::Error>(())
        };
        match tokio::time::timeout(SETUP_LIMIT, sent).await {
            Ok(Ok(())) => bump(&tally.streams),
            _ => {
                bump(&tally.failed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
