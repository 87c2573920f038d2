//! Edge benchmark, one run, side by side: HTTP requests/s and p50/p99 latency (wrk) and bulk
//! download MB/s through nearhop-edge vs OpenSSH `sshd` remote forwarding vs direct, to the
//! same nginx, and through a second edge that relays to the holder over the mesh; memory per idle tunnel with many tunnels open (russh load client); setup time
//! from `ssh` start to URL printed on the local stack.
//!
//! Build release binaries first, then run (see docs/benchmarks.md, section Edge):
//!     cargo build --release -p nearhop-edge -p nearhop-control --bins --example idle_tunnels
//!     NEARHOP_PROFILE=release cargo run --release -p nearhop-integration-tests --bin bench_edge
//!
//! The request inspector's cost alone (inspector off / on / on with a viewer, 1 KiB
//! answers): the same, with `--inspector` (and `--inspector-rounds N`).
//!
//! HTTPS over HTTP/1.1 vs HTTP/2 to visitors, side by side through one edge and tunnel to
//! the same nginx (h2load, the same TCP connections for both; a download over each with
//! curl): the same, with `--https` (`--h2-connections`, `--h2-streams`).
//!
//! One slow visitor against the others, side by side through the edge and through `sshd -R`
//! to the same nginx: wrk's requests/s, p99 and failures with the tunnel to itself, while
//! one visitor of the same tunnel downloads the bulk file reading slowly (`curl
//! --limit-rate`), and while one stops reading a download: the same, with `--slow-reader`
//! (`--slow-rate`, `--slow-rounds`).
//!
//! One file on purpose: the measurements share one stack, one nginx and one table, and the
//! report reads top-down in `main`.

use anyhow::{bail, Context, Result};
use clap::Parser;
use nearhop_stack::control::bin_path;
use nearhop_stack::edge::{url_host_port, EdgeProcess, EdgeSpec, SshArgs, SshClient};
use nearhop_stack::poll::try_eventually;
use nearhop_stack::ports::free_port;
use nearhop_stack::process::{rss_kib, run, ChildGuard};
use nearhop_stack::{Stack, StackOptions};
use nearhop_wire::Plan;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 50)]
    connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Size of the bulk download, MB.
    #[arg(long, default_value_t = 100)]
    bulk_mb: usize,
    /// Idle tunnels for the memory measurement.
    #[arg(long, default_value_t = 1000)]
    idle_tunnels: usize,
    /// Sequential `ssh` runs for the setup-time measurement.
    #[arg(long, default_value_t = 30)]
    setups: usize,
    /// Bulk downloads per path, interleaved across the paths; the median is reported.
    #[arg(long, default_value_t = 3)]
    bulk_runs: usize,
    /// Only the HTTP and bulk comparison (no setup time, no idle memory).
    #[arg(long)]
    only_traffic: bool,
    /// Only the setup time and idle memory (no HTTP and bulk comparison).
    #[arg(long)]
    only_setup: bool,
    /// Extra lines for the edge's TOML configuration (tuning experiments).
    #[arg(long, default_value = "")]
    edge_toml: String,
    /// Another `nearhop-edge` build (e.g. a copy of the binary before a change) run as a
    /// second relaying edge beside the first: one more path, "relayed by another edge, B
    /// build", measured in the same interleaved rounds, for an A/B of the relaying side.
    #[arg(long)]
    relay_b_binary: Option<std::path::PathBuf>,
    /// Only the request inspector's cost: requests/s and p99 for 1 KiB answers through a
    /// tunnel with the inspector off, on with no viewer (`inspect`), and on with a viewer
    /// following the live stream, in interleaved rounds (the median is reported).
    #[arg(long)]
    inspector: bool,
    /// Rounds of the inspector comparison.
    #[arg(long, default_value_t = 3)]
    inspector_rounds: usize,
    /// Only HTTPS over HTTP/1.1 vs HTTP/2 (h2load and curl through the edge's TLS port,
    /// with the stack's self-signed zone certificate): requests/s and p99 of the 612-byte
    /// page with the same number of TCP connections, and the bulk download, over each.
    #[arg(long)]
    https: bool,
    /// TCP connections of each h2load run of `--https`.
    #[arg(long, default_value_t = 8)]
    h2_connections: u32,
    /// Streams in flight per connection over HTTP/2 in `--https` (HTTP/1.1 has one:
    /// clients do not pipeline).
    #[arg(long, default_value_t = 32)]
    h2_streams: u32,
    /// Rounds of the relay's full-load comparison (wrk at the holder edge, then through the
    /// relaying edge, per round); the median of the rounds' ratios is reported.
    #[arg(long, default_value_t = 3)]
    relay_rounds: usize,
    /// Requests/s of the relay's fixed-rate latency comparison (direct to the holder edge
    /// vs relayed): the same rate on both paths, well under either's capacity.
    #[arg(long, default_value_t = 2000)]
    latency_rate: u32,
    /// HTTP/1.1 connections of that comparison (each sends its share of the rate).
    #[arg(long, default_value_t = 10)]
    latency_connections: u32,
    /// Extra `ssh -o` options for every tunnel client of the traffic comparison, e.g.
    /// `--ssh-option Ciphers=aes128-gcm@openssh.com` to hold the cipher equal on both paths.
    #[arg(long)]
    ssh_option: Vec<String>,
    /// Runs the servers of the tunnels (every nearhop-edge, and sshd with its session
    /// processes) on this CPU only, and everything else this bench starts (the tunnels'
    /// OpenSSH clients, nginx, wrk, curl, control) on the other CPUs: the edge host apart
    /// from the developer's and the visitors' machines, as in production. Off: all share
    /// all CPUs.
    #[arg(long)]
    pin_servers: Option<usize>,
    /// Only one slow visitor against the others: wrk through the edge's tunnel and through
    /// sshd -R (with a session), alone, beside a visitor of the same tunnel downloading the
    /// bulk file at `--slow-rate`, and beside one that stops reading a download.
    #[arg(long)]
    slow_reader: bool,
    /// KB/s at which the slow visitor of `--slow-reader` reads (curl --limit-rate).
    #[arg(long, default_value_t = 100)]
    slow_rate: u32,
    /// Interleaved rounds of `--slow-reader` (the median is reported).
    #[arg(long, default_value_t = 3)]
    slow_rounds: usize,
}

const LOCAL: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

/// `--pin-servers`: the CPU of the tunnels' servers, and the others for the rest.
struct Pins {
    servers: libc::cpu_set_t,
}

impl Pins {
    /// Pins this process (and so all it starts from now on) to every CPU but `cpu`.
    fn new(cpu: usize) -> Result<Pins> {
        let cpus = std::thread::available_parallelism()?.get();
        anyhow::ensure!(
            cpus >= 2 && cpu < cpus,
            "--pin-servers {cpu}: needs a CPU number below {cpus}, and a second CPU for the rest"
        );
        // SAFETY: cpu_set_t is plain data; CPU_ZERO and CPU_SET only write inside it.
        let (servers, rest) = unsafe {
            let mut servers: libc::cpu_set_t = std::mem::zeroed();
            let mut rest: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_ZERO(&mut servers);
            libc::CPU_ZERO(&mut rest);
            libc::CPU_SET(cpu, &mut servers);
            for other in (0..cpus).filter(|c| *c != cpu) {
                libc::CPU_SET(other, &mut rest);
            }
            (servers, rest)
        };
        set_affinity(0, &rest).context("pinning the bench to the other CPUs")?;
        Ok(Pins { servers })
    }

    /// Pins every thread of process `pid` to the servers' CPU; threads and processes it
    /// starts later inherit it.
    fn server(&self, pid: u32) -> Result<()> {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .with_context(|| format!("listing the threads of process {pid}"))?;
        for task in tasks {
            let tid: libc::pid_t = task?.file_name().to_string_lossy().parse()?;
            set_affinity(tid, &self.servers)
                .with_context(|| format!("pinning thread {tid} of process {pid}"))?;
        }
        Ok(())
    }
}

fn set_affinity(tid: libc::pid_t, set: &libc::cpu_set_t) -> Result<()> {
    // SAFETY: passes a valid cpu_set_t of its own size.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), set) };
    anyhow::ensure!(rc == 0, "{}", std::io::Error::last_os_error());
    Ok(())
}
const SSHD_N: &str = "OpenSSH sshd -R, client -N";
const SSHD_SESSION: &str = "OpenSSH sshd -R, client with a session";
const RELAYED: &str = "nearhop-edge, relayed by another edge";
/// The same through the `--relay-b-binary` build.
const RELAYED_B: &str = "nearhop-edge, relayed by another edge, B build";

/// One path to nginx: its row name, base URL, the headers a visitor sends, the (server,
/// client) processes whose CPU a download through it costs, and for the relayed path the
/// holder edge (whose CPU is counted apart).
struct BenchPath<'a> {
    name: &'a str,
    base: &'a str,
    headers: Vec<String>,
    pids: Option<(u32, u32)>,
    holder: Option<u32>,
}

impl<'a> BenchPath<'a> {
    fn new(
        name: &'a str,
        base: &'a str,
        headers: Vec<String>,
        pids: Option<(u32, u32)>,
    ) -> BenchPath<'a> {
        BenchPath {
            name,
            base,
            headers,
            pids,
            holder: None,
        }
    }

    /// The same, with the holder edge of a relayed path counted apart.
    fn with_holder(mut self, pid: u32) -> BenchPath<'a> {
        self.holder = Some(pid);
        self
    }
}

struct Wrk {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Socket errors and requests not answered within wrk's timeout (2 s).
    errors: u64,
    /// Answers other than 2xx or 3xx.
    non_2xx: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let pins = args.pin_servers.map(Pins::new).transpose()?;
    let tmp = tempfile::Builder::new()
        .prefix("nearhop-bench-edge-")
        .tempdir()?;
    let dir = tmp.path().to_path_buf();
    eprintln!("bench dir: {}", dir.display());

    let nginx_port = free_port(LOCAL);
    let _nginx = start_nginx(&dir.join("nginx"), nginx_port, args.bulk_mb)?;
    let sshd_port = free_port(LOCAL);
    let key = start_sshd_keys(&dir.join("sshd"))?;
    let sshd = start_sshd(&dir.join("sshd"), sshd_port)?;
    if let Some(p) = &pins {
        // Before any connection: its session processes are forked from this one.
        p.server(sshd.pid())?;
    }

    let stack = Stack::start(StackOptions::default())?;
    let credential = stack.control.issue_edge_credential("us-1")?;
    let mut spec = EdgeSpec::for_tests("us", LOCAL, &stack.control.url, &credential);
    spec.extra_toml = format!("max_forwards_per_session = 4\n{}\n", args.edge_toml);
    if args.https {
        let (cert, key) = nearhop_stack::edge::dev_zone_certificate(&dir.join("tls"))?;
        spec.extra_toml += &format!(
            "tls_cert_path = \"{}\"\ntls_key_path = \"{}\"\n",
            cert.display(),
            key.display()
        );
    }
    let edge = EdgeProcess::start(&dir.join("edge"), spec)?;
    if let Some(p) = &pins {
        p.server(
            edge.pid()
                .context("the holder edge exited before it could be pinned")?,
        )?;
    }
    let tunnels = EdgeTunnels {
        stack: &stack,
        edge: &edge,
        dir: &dir,
        nginx_port,
        ssh_options: &args.ssh_option,
    };
    if args.inspector {
        return inspector_cost(&args, &tunnels);
    }
    if args.https {
        return https_h1_vs_h2(&args, &tunnels);
    }
    if args.only_setup {
        setup_times(&args, &stack, &edge, nginx_port, sshd_port, &key)?;
        return idle_memory(&args, &stack, &edge);
    }

    // The paths to nginx. OpenSSH runs both ways its users run it: `ssh -N -R` (no session
    // channel, so the client never turns on TCP_NODELAY and runs with Nagle's algorithm)
    // and `ssh -R` with a remote command (a session, as the edge's own clients have).
    let direct = format!("http://127.0.0.1:{nginx_port}");
    let sshd_forward = |name: &str, command: Vec<String>| -> Result<(SshClient, String)> {
        let rport = free_port(LOCAL);
        let mut client = SshClient::start(
            &dir.join("ssh"),
            name,
            (LOCAL, sshd_port).into(),
            &SshArgs {
                user: Some("root".into()),
                forwards: vec![format!("127.0.0.1:{rport}:127.0.0.1:{nginx_port}")],
                no_command: command.is_empty(),
                options: [
                    format!("IdentityFile={}", key.display()),
                    "IdentitiesOnly=yes".into(),
                ]
                .into_iter()
                .chain(args.ssh_option.iter().cloned())
                .collect(),
                command,
            },
        )?;
        let base = format!("http://127.0.0.1:{rport}");
        wait_http(&format!("{base}/"), &mut client)?;
        Ok((client, base))
    };
    let (mut sshd_n_client, via_sshd_n) = sshd_forward("sshd-forward-n", vec![])?;
    let (mut sshd_client, via_sshd) = sshd_forward(
        "sshd-forward-session",
        vec!["sleep".into(), "1000000".into()],
    )?;

    let (mut edge_client, host, _) = tunnels.open("edge-forward", "", &[], vec![], false)?;
    if args.slow_reader {
        let paths = [
            (
                "nearhop-edge",
                format!("http://{}", edge.http_addr()),
                vec![format!("Host: {host}")],
            ),
            (SSHD_SESSION, via_sshd.clone(), vec![]),
        ];
        let measured = slow_readers(&args, &dir, &paths);
        edge_client.stop();
        sshd_client.stop();
        sshd_n_client.stop();
        return measured;
    }
    let (mut edge_n_client, host_n, _) = tunnels.open("edge-forward-n", "", &[], vec![], true)?;
    // A typical set of options: basic auth and one header rule.
    let (mut edge_opts_client, host_opts, _) = tunnels.open(
        "edge-forward-options",
        "",
        &[],
        vec!["b:bench:secret".into(), "a:X-Bench:1".into()],
        false,
    )?;
    let via_edge = format!("http://{}", edge.http_addr());
    // The same edge carrying a `tcp` tunnel: bytes spliced with no HTTP on the edge, the
    // ceiling for what the HTTP path can reach.
    let (mut tcp_client, _, tcp_port) =
        tunnels.open("edge-tcp-forward", "+tcp", &[], vec![], false)?;
    let via_edge_tcp = format!("http://{}:{tcp_port}", edge.spec.ip);

    // A second edge, in another region, that holds no tunnel: it relays to the first.
    let relay_credential = stack.control.issue_edge_credential("eu-1")?;
    let mut relay_spec = EdgeSpec::for_tests(
        "eu",
        Ipv4Addr::new(127, 0, 0, 2),
        &stack.control.url,
        &relay_credential,
    );
    relay_spec.extra_toml = format!("{}\n", args.edge_toml);
    let relay_edge = EdgeProcess::start(&dir.join("edge-relay"), relay_spec)?;
    if let Some(p) = &pins {
        p.server(
            relay_edge
                .pid()
                .context("the relaying edge exited before it could be pinned")?,
        )?;
    }
    let via_relay = format!("http://{}", relay_edge.http_addr());
    wait_served(&via_relay, &host)?;
    // The A/B build, if asked for: a third region's edge relaying to the same holder.
    let relay_b = match &args.relay_b_binary {
        Some(binary) => {
            let credential = stack.control.issue_edge_credential("ap-1")?;
            let mut spec = EdgeSpec::for_tests(
                "ap",
                Ipv4Addr::new(127, 0, 0, 3),
                &stack.control.url,
                &credential,
            );
            spec.extra_toml = format!("{}\n", args.edge_toml);
            spec.binary = Some(binary.clone());
            let b = EdgeProcess::start(&dir.join("edge-relay-b"), spec)?;
            if let Some(p) = &pins {
                p.server(
                    b.pid()
                        .context("the B build's edge exited before it could be pinned")?,
                )?;
            }
            let via = format!("http://{}", b.http_addr());
            wait_served(&via, &host)?;
            Some((b, via))
        }
        None => None,
    };

    // Each path with the headers a visitor sends and the processes whose CPU time a
    // download through it costs: the tunnel's server end (sshd and its session processes,
    // or the edge) and its client.
    let host_is = |h: &str| vec![format!("Host: {h}")];
    let edge_pid = edge.pid().unwrap_or(0);
    let paths = [
        BenchPath::new("direct", &direct, vec![], None),
        BenchPath::new(
            SSHD_N,
            &via_sshd_n,
            vec![],
            Some((sshd.pid(), sshd_n_client.pid())),
        ),
        BenchPath::new(
            SSHD_SESSION,
            &via_sshd,
            vec![],
            Some((sshd.pid(), sshd_client.pid())),
        ),
        BenchPath::new(
            "nearhop-edge",
            &via_edge,
            host_is(&host),
            Some((edge_pid, edge_client.pid())),
        ),
        BenchPath::new(
            "nearhop-edge, client -N",
            &via_edge,
            host_is(&host_n),
            Some((edge_pid, edge_n_client.pid())),
        ),
        BenchPath::new(
            "nearhop-edge, b: and a: rule",
            &via_edge,
            vec![
                format!("Host: {host_opts}"),
                // bench:secret
                "Authorization: Basic YmVuY2g6c2VjcmV0".into(),
            ],
            Some((edge_pid, edge_opts_client.pid())),
        ),
        BenchPath::new(
            "nearhop-edge, tcp tunnel",
            &via_edge_tcp,
            vec![],
            Some((edge_pid, tcp_client.pid())),
        ),
        // Server CPU here is the relaying edge's alone (the holder's is on top of it).
        BenchPath::new(
            RELAYED,
            &via_relay,
            host_is(&host),
            Some((relay_edge.pid().unwrap_or(0), edge_client.pid())),
        )
        .with_holder(edge_pid),
    ];
    let mut paths = Vec::from(paths);
    if let Some((b, via)) = &relay_b {
        paths.push(
            BenchPath::new(
                RELAYED_B,
                via,
                host_is(&host),
                Some((b.pid().unwrap_or(0), edge_client.pid())),
            )
            .with_holder(edge_pid),
        );
    }
    let mut rows = Vec::new();
    for p in &paths {
        let w = wrk(&args, &format!("{}/", p.base), &p.headers)?;
        rows.push((p.name, w, Vec::new(), CpuTotals::default()));
    }
    let fixed_rate =
        relay_hop_at_fixed_rate(&args, &dir, &host, edge.http_addr(), relay_edge.http_addr())?;
    let full_load = relay_hop_at_full_load(
        &args,
        (&via_edge, edge_pid),
        (&via_relay, relay_edge.pid().unwrap_or(0)),
        &host_is(&host),
    )?;
    // Bulk runs interleaved (direct, sshd, edge, direct, ...) so a burst of other load on
    // the machine hits every path alike.
    for _ in 0..args.bulk_runs.max(1) {
        for (i, p) in paths.iter().enumerate() {
            let before = p
                .pids
                .map(|(server, client)| (cpu_ns(server), cpu_ns(client)));
            let holder_before = p.holder.map(cpu_ns);
            let machine_before = machine_busy_ns()?;
            let mbps = bulk(&format!("{}/big.bin", p.base), &p.headers, args.bulk_mb)?;
            rows[i].3.machine_ns += machine_busy_ns()?.saturating_sub(machine_before);
            if let (Some((server, client)), Some((s0, c0))) = (p.pids, before) {
                rows[i].3.server_ns += cpu_ns(server).saturating_sub(s0);
                rows[i].3.client_ns += cpu_ns(client).saturating_sub(c0);
            }
            if let (Some(holder), Some(h0)) = (p.holder, holder_before) {
                rows[i].3.holder_ns += cpu_ns(holder).saturating_sub(h0);
            }
            rows[i].2.push(mbps);
        }
    }
    let downloaded_gb = (args.bulk_runs.max(1) * args.bulk_mb) as f64 * 1.048_576 / 1000.0;
    let rows: Vec<(&str, Wrk, f64, CpuTotals)> = rows
        .into_iter()
        .map(|(name, w, mut runs, cpu)| {
            runs.sort_by(|a, b| a.total_cmp(b));
            eprintln!("bulk MB/s {name}: {runs:.0?}");
            (name, w, runs[runs.len() / 2], cpu)
        })
        .collect();

    println!("\n## HTTP through each path (wrk -t{} -c{} -d{}s, 612-byte page; bulk: {} MB file, curl, median of {})\n", args.threads, args.connections, args.duration, args.bulk_mb, args.bulk_runs.max(1));
    println!(
        "| path | requests/s | p50 ms | p99 ms | bulk MB/s | server CPU s/GB | client CPU s/GB | machine CPU s/GB |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let per_gb = |ns: u64| ns as f64 / 1e9 / downloaded_gb;
    for (name, w, mbps, cpu) in &rows {
        let or_dash = |ns: u64| {
            if cpu.server_ns == 0 {
                "-".to_string()
            } else {
                format!("{:.2}", per_gb(ns))
            }
        };
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.0} | {} | {} | {:.2} |",
            w.rps,
            w.p50_ms,
            w.p99_ms,
            mbps,
            or_dash(cpu.server_ns),
            or_dash(cpu.client_ns),
            per_gb(cpu.machine_ns)
        );
    }
    let row = |name: &str| rows.iter().find(|r| r.0 == name);
    let (Some(sshd_n_row), Some(sshd_row), Some(ours), Some(relayed)) = (
        row(SSHD_N),
        row(SSHD_SESSION),
        row("nearhop-edge"),
        row(RELAYED),
    ) else {
        bail!("a row of the table is missing");
    };
    // Every ratio is against the better sshd row for requests/s, as sshd's users would run it.
    let best = if sshd_row.1.rps >= sshd_n_row.1.rps {
        sshd_row
    } else {
        sshd_n_row
    };
    println!("\nagainst the better sshd row ({}):", best.0);
    for r in rows.iter().filter(|r| r.0.starts_with("nearhop-edge")) {
        println!(
            "- {}: requests/s x{:.2}, p99 x{:.2} (lower is better), bulk x{:.2}",
            r.0,
            r.1.rps / best.1.rps,
            r.1.p99_ms / best.1.p99_ms,
            r.2 / best.2
        );
    }
    println!(
        "relayed / direct to the holder edge: requests/s x{:.2}, p50 {:+.2} ms, p99 {:+.2} ms, bulk x{:.2}",
        relayed.1.rps / ours.1.rps,
        relayed.1.p50_ms - ours.1.p50_ms,
        relayed.1.p99_ms - ours.1.p99_ms,
        relayed.2 / ours.2
    );
    // On a host whose cores are all busy, the rate of a path is about the cores' time over
    // the machine's CPU per byte: the inverse ratio of the two paths' machine CPU per byte
    // predicts the relayed rate ratio (exactly when both keep the cores equally busy).
    let machine_ratio = relayed.3.machine_ns as f64 / ours.3.machine_ns.max(1) as f64;
    println!(
        "relayed download, CPU per GB: relaying edge {:.2} s, holder {:.2} s (direct: {:.2} s), \
         whole machine {:.2} s against {:.2} s direct (x{:.2}; with the cores equally busy on both paths, the relayed rate is ~x{:.2} of direct)",
        per_gb(relayed.3.server_ns),
        per_gb(relayed.3.holder_ns),
        per_gb(ours.3.server_ns),
        per_gb(relayed.3.machine_ns),
        per_gb(ours.3.machine_ns),
        machine_ratio,
        1.0 / machine_ratio,
    );
    if let Some(b) = row(RELAYED_B) {
        println!(
            "B build / relayed (A): requests/s x{:.2}, p99 {:+.2} ms, bulk x{:.2}; B vs direct: bulk x{:.2}; \
             CPU per GB relayed: relaying edge A {:.2} s, B {:.2} s; whole machine A {:.2} s, B {:.2} s",
            b.1.rps / relayed.1.rps,
            b.1.p99_ms - relayed.1.p99_ms,
            b.2 / relayed.2,
            b.2 / ours.2,
            per_gb(relayed.3.server_ns),
            per_gb(b.3.server_ns),
            per_gb(relayed.3.machine_ns),
            per_gb(b.3.machine_ns),
        );
    }
    println!(
        "the relay hop at full load (wrk -t{} -c{} -d{}s, {} interleaved rounds, holder then relayed): \
         requests/s {:.0} / {:.0} (medians), relayed / direct per round {}, median x{:.2} (target >= x0.7); \
         p99 {:.2} -> {:.2} ms",
        args.threads,
        args.connections,
        args.duration,
        full_load.ratios.len(),
        full_load.holder.rps,
        full_load.relayed.rps,
        full_load
            .ratios
            .iter()
            .map(|r| format!("x{r:.2}"))
            .collect::<Vec<_>>()
            .join(" "),
        full_load.median_ratio,
        full_load.holder.p99_ms,
        full_load.relayed.p99_ms,
    );
    let (h, r) = (full_load.holder_cpu, full_load.relayed_cpu);
    println!(
        "CPU per request in those rounds: direct: holder edge {:.1} µs, whole machine {:.1} µs; \
         relayed: holder edge {:.1} µs, relaying edge {:.1} µs, whole machine {:.1} µs \
         (x{:.2}; with the cores equally busy on both paths, relayed requests/s ~x{:.2} of direct)",
        h.holder_us,
        h.machine_us,
        r.holder_us,
        r.relaying_us,
        r.machine_us,
        r.machine_us / h.machine_us.max(f64::MIN_POSITIVE),
        h.machine_us / r.machine_us.max(f64::MIN_POSITIVE),
    );
    let [at_holder, relayed_fixed] = &fixed_rate;
    println!(
        "the relay hop at a fixed {} requests/s (h2load --h1 -c{} --rps, median of {} interleaved rounds): \
         measured {:.0} / {:.0} requests/s, \
         p50 {:.2} -> {:.2} ms ({:+.2}), p99 {:.2} -> {:.2} ms ({:+.2}; target <= +1 ms), failed {} / {}",
        args.latency_rate,
        args.latency_connections,
        args.bulk_runs.max(1),
        at_holder.rps,
        relayed_fixed.rps,
        at_holder.p50_ms,
        relayed_fixed.p50_ms,
        relayed_fixed.p50_ms - at_holder.p50_ms,
        at_holder.p99_ms,
        relayed_fixed.p99_ms,
        relayed_fixed.p99_ms - at_holder.p99_ms,
        at_holder.failed,
        relayed_fixed.failed,
    );
    println!(
        "CPU per byte downloaded, edge / sshd with a session: server x{:.2}, client x{:.2}",
        ours.3.server_ns as f64 / sshd_row.3.server_ns.max(1) as f64,
        ours.3.client_ns as f64 / sshd_row.3.client_ns.max(1) as f64
    );
    edge_client.stop();
    edge_n_client.stop();
    edge_opts_client.stop();
    tcp_client.stop();
    sshd_client.stop();
    sshd_n_client.stop();
    if args.only_traffic {
        return Ok(());
    }

    setup_times(&args, &stack, &edge, nginx_port, sshd_port, &key)?;
    idle_memory(&args, &stack, &edge)?;
    Ok(())
}

/// Another visitor of the tunnel under test, there for the length of one wrk run.
enum Beside {
    Nothing,
    /// Downloading the bulk file, reading at `--slow-rate` (curl `--limit-rate`).
    SlowReader,
    /// Has read the head of a bulk download and reads nothing more.
    StoppedReader,
}

impl Beside {
    const ALL: [Beside; 3] = [Beside::Nothing, Beside::SlowReader, Beside::StoppedReader];

    /// Starts the visitor on the path at `base`; it goes when the guard is dropped.
    fn start(
        &self,
        args: &Args,
        dir: &Path,
        base: &str,
        headers: &[String],
    ) -> Result<BesideGuard> {
        let url = format!("{base}/big.bin");
        Ok(match self {
            Beside::Nothing => BesideGuard::Nothing,
            Beside::SlowReader => {
                let mut cmd = Command::new("curl");
                cmd.args(["-s", "-o", "/dev/null", "--limit-rate"])
                    .arg(format!("{}k", args.slow_rate));
                for h in headers {
                    cmd.args(["-H", h]);
                }
                cmd.arg(&url);
                BesideGuard::Curl(ChildGuard::spawn(
                    "slow curl",
                    cmd,
                    &dir.join("slow-curl.log"),
                    libc::SIGTERM,
                )?)
            }
            Beside::StoppedReader => {
                use std::io::{Read, Write};
                let addr = base.strip_prefix("http://").context("an http:// base")?;
                let mut t = std::net::TcpStream::connect(addr)
                    .with_context(|| format!("connecting to {addr}"))?;
                let host = headers
                    .iter()
                    .find_map(|h| h.strip_prefix("Host: "))
                    .unwrap_or(addr);
                write!(t, "GET /big.bin HTTP/1.1\r\nHost: {host}\r\n\r\n")?;
                t.set_read_timeout(Some(Duration::from_secs(30)))?;
                let mut first = [0u8; 1024];
                let n = t
                    .read(&mut first)
                    .context("the stopped reader's first read")?;
                anyhow::ensure!(
                    first[..n].starts_with(b"HTTP/1.1 200"),
                    "the stopped reader's download did not start: {:?}",
                    String::from_utf8_lossy(&first[..n])
                );
                BesideGuard::Socket(t)
            }
        })
    }

    fn label(&self, args: &Args) -> String {
        match self {
            Beside::Nothing => "alone".into(),
            Beside::SlowReader => format!("one visitor reading at {} KB/s", args.slow_rate),
            Beside::StoppedReader => "one visitor who stopped reading".into(),
        }
    }
}

/// The other visitor; dropping it ends its download.
#[allow(dead_code)] // held for its drop
enum BesideGuard {
    Nothing,
    Curl(ChildGuard),
    Socket(std::net::TcpStream),
}

/// What one slow visitor does to the tunnel's other visitors on each of `paths` (name,
/// base URL, headers): wrk alone, beside a visitor reading a download slowly, beside one
/// that stopped reading, in interleaved rounds; medians reported.
fn slow_readers(args: &Args, dir: &Path, paths: &[(&str, String, Vec<String>)]) -> Result<()> {
    let mut runs: Vec<Vec<Vec<Wrk>>> = paths
        .iter()
        .map(|_| Beside::ALL.iter().map(|_| Vec::new()).collect())
        .collect();
    for round in 0..args.slow_rounds.max(1) {
        for (i, (name, base, headers)) in paths.iter().enumerate() {
            for (j, beside) in Beside::ALL.iter().enumerate() {
                let guard = beside.start(args, dir, base, headers)?;
                // Time for the other visitor's download to fill what it fills.
                std::thread::sleep(Duration::from_secs(2));
                let w = wrk(args, &format!("{base}/"), headers)?;
                eprintln!(
                    "round {round}, {name}, {}: {:.0} requests/s, p99 {:.2} ms, {} errors and timeouts, {} non-2xx",
                    beside.label(args),
                    w.rps,
                    w.p99_ms,
                    w.errors,
                    w.non_2xx
                );
                drop(guard);
                runs[i][j].push(w);
            }
        }
    }
    println!(
        "\n## One slow visitor and the tunnel's others (wrk -t{} -c{} -d{}s, 612-byte page, median of {} interleaved rounds)\n",
        args.threads,
        args.connections,
        args.duration,
        args.slow_rounds.max(1)
    );
    println!(
        "| path | beside | requests/s | p99 ms | socket errors and timeouts (2 s) | non-2xx answers | requests/s vs alone |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    for (i, (name, _, _)) in paths.iter().enumerate() {
        let alone = mid(runs[i][0].iter().map(|w| w.rps).collect());
        for (j, beside) in Beside::ALL.iter().enumerate() {
            let rps = mid(runs[i][j].iter().map(|w| w.rps).collect());
            println!(
                "| {name} | {} | {:.0} | {:.2} | {:.0} | {:.0} | x{:.2} |",
                beside.label(args),
                rps,
                mid(runs[i][j].iter().map(|w| w.p99_ms).collect()),
                mid(runs[i][j].iter().map(|w| w.errors as f64).collect()),
                mid(runs[i][j].iter().map(|w| w.non_2xx as f64).collect()),
                rps / alone.max(f64::MIN_POSITIVE)
            );
        }
    }
    Ok(())
}

/// Opens tunnels to nginx through one edge, each for a fresh pro account.
struct EdgeTunnels<'a> {
    stack: &'a Stack,
    edge: &'a EdgeProcess,
    dir: &'a Path,
    nginx_port: u16,
    /// The run's `--ssh-option`s, given to every tunnel client.
    ssh_options: &'a [String],
}

impl EdgeTunnels<'_> {
    /// A tunnel as `TOKEN{keyword}` (its kind), with `options` besides the run's, `command`
    /// words (the tunnel's options), or as `ssh -N` with `no_command`. Returns the client,
    /// and the tunnel's host and port once its URL is printed.
    fn open(
        &self,
        name: &str,
        keyword: &str,
        options: &[String],
        command: Vec<String>,
        no_command: bool,
    ) -> Result<(SshClient, String, u16)> {
        let token = self.stack.control.create_account(Plan::Pro)?.token;
        let mut client = SshClient::start(
            &self.dir.join("ssh"),
            name,
            self.edge.ssh_addr(),
            &SshArgs {
                user: Some(format!("{token}{keyword}")),
                forwards: vec![format!("0:127.0.0.1:{}", self.nginx_port)],
                options: self.ssh_options.iter().chain(options).cloned().collect(),
                no_command,
                command,
            },
        )?;
        let url = client.wait_for_url(Duration::from_secs(30))?;
        let (host, port) = url_host_port(&url)?;
        Ok((client, host, port))
    }
}

/// Waits until `base` serves the tunnel `host` (a relaying edge learns the holder from its
/// peer's holdings feed within a heartbeat or so).
fn wait_served(base: &str, host: &str) -> Result<()> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    try_eventually(Duration::from_secs(60), || {
        let r = client.get(format!("{base}/")).header("Host", host).send()?;
        anyhow::ensure!(r.status() == 200, "{} answered {}", base, r.status());
        Ok(())
    })
    .with_context(|| format!("{base} does not serve {host}"))
}

/// Milestones of one `ssh` run, ms from starting the process.
#[derive(Default, Clone, Copy)]
struct Milestones {
    /// TCP connected ("Connection established").
    connected: f64,
    /// Keys exchanged ("SSH2_MSG_NEWKEYS received").
    keyed: f64,
    /// Authenticated ("Authenticated to").
    authenticated: f64,
    /// Ready: the URL printed (edge), the remote command's output (sshd).
    ready: f64,
}

/// Runs `cmd` (an `ssh` command line from [`ssh_command`], so with `-v`) and times its milestones from the lines it
/// prints, until a line for which `is_ready` holds.
fn timed_ssh(mut cmd: Command, is_ready: impl Fn(&str) -> bool) -> Result<Milestones> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd.spawn().context("starting ssh")?;
    let (tx, rx) = std::sync::mpsc::channel::<(f64, String)>();
    let pipes: Vec<Box<dyn std::io::Read + Send>> = vec![
        Box::new(child.stdout.take().context("stdout")?),
        Box::new(child.stderr.take().context("stderr")?),
    ];
    for pipe in pipes {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx
                    .send((t0.elapsed().as_secs_f64() * 1000.0, line))
                    .is_err()
                {
                    break;
                }
            }
        });
    }
    let mut m = Milestones::default();
    let mut seen = String::new();
    let outcome = loop {
        let Ok((at, line)) = rx.recv_timeout(Duration::from_secs(30)) else {
            break Err(anyhow::anyhow!("ssh never got ready; it said:\n{seen}"));
        };
        if std::env::var_os("NEARHOP_BENCH_TRACE").is_some() {
            eprintln!("{at:8.1} ms  {line}");
        }
        if line.contains("Connection established") {
            m.connected = at;
        } else if line.contains("SSH2_MSG_NEWKEYS received") {
            m.keyed = at;
        } else if line.contains("Authenticated to") {
            m.authenticated = at;
        }
        if is_ready(&line) {
            m.ready = at;
            break Ok(m);
        }
        seen.push_str(&line);
        seen.push('\n');
    };
    let _ = child.kill();
    let _ = child.wait();
    outcome
}

/// `ssh` with the options every setup run shares.
fn ssh_command(port: u16) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.arg("-v")
        .args(["-p", &port.to_string()])
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null", "-F", "/dev/null"]);
    cmd
}

/// Time from starting `ssh` to the URL on its output, sequentially, broken down by the
/// client's milestones, next to the same `ssh` reaching a session on sshd (the floor of
/// what the client itself costs).
fn setup_times(
    args: &Args,
    stack: &Stack,
    edge: &EdgeProcess,
    port: u16,
    sshd_port: u16,
    key: &Path,
) -> Result<()> {
    let token = stack.control.create_account(Plan::Pro)?.token;
    let waits_before = stack.control.setup_waits_ms().len();
    let setup_sum = |text: &str| {
        nearhop_stack::metrics::metric(text, "nearhop_edge_tunnel_setup_seconds_sum", &[])
            .unwrap_or(0.0)
    };
    let edge_before = setup_sum(&edge.metrics()?);
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    for i in 0..args.setups {
        let mut cmd = ssh_command(edge.ssh_addr().port());
        cmd.arg("-R")
            .arg(format!("s{i}:0:127.0.0.1:{port}"))
            .arg(format!("{token}@{}", edge.spec.ip));
        ours.push(timed_ssh(cmd, |l| l.contains("http://"))?);
        let mut cmd = ssh_command(sshd_port);
        cmd.args(["-o", &format!("IdentityFile={}", key.display())])
            .args(["-o", "IdentitiesOnly=yes"])
            .arg("root@127.0.0.1")
            .arg("echo nearhop-ready");
        floor.push(timed_ssh(cmd, |l| l == "nearhop-ready")?);
    }
    let edge_setup_ms =
        (setup_sum(&edge.metrics()?) - edge_before) * 1000.0 / args.setups.max(1) as f64;
    let mut waits: Vec<f64> = stack.control.setup_waits_ms()[waits_before..]
        .iter()
        .map(|w| *w as f64)
        .collect();
    waits.sort_by(|a, b| a.total_cmp(b));
    let p50 = |runs: &[Milestones], f: fn(&Milestones) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        pct(&v, 0.5)
    };
    let p99_ready = |runs: &[Milestones]| {
        let mut v: Vec<f64> = runs.iter().map(|m| m.ready).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        pct(&v, 0.99)
    };
    println!(
        "\n## Setup time, `ssh` start to URL printed ({} sequential runs each, 3-region stack, lag wait on both replicas; p50 of each milestone, ms from starting `ssh`)\n",
        args.setups
    );
    println!("| milestone | nearhop-edge (`-R`, URL printed) | sshd (session, command output) |");
    println!("| --- | ---: | ---: |");
    for (name, f) in [
        (
            "TCP connected",
            (|m: &Milestones| m.connected) as fn(&Milestones) -> f64,
        ),
        ("keys exchanged", |m: &Milestones| m.keyed),
        ("authenticated", |m: &Milestones| m.authenticated),
        ("ready", |m: &Milestones| m.ready),
    ] {
        println!("| {name} | {:.1} | {:.1} |", p50(&ours, f), p50(&floor, f));
    }
    println!(
        "\nready p99: edge {:.1} ms, sshd {:.1} ms. At the edge, forward request to tunnel live (control's call, the lag-race wait included): mean {:.1} ms; control's lag-race wait p50 {:.1} ms. Edge p50 − sshd floor p50 = {:.1} ms.",
        p99_ready(&ours),
        p99_ready(&floor),
        edge_setup_ms,
        if waits.is_empty() { 0.0 } else { pct(&waits, 0.5) },
        p50(&ours, |m| m.ready) - p50(&floor, |m| m.ready)
    );
    Ok(())
}

/// Edge RSS growth per idle tunnel with `idle_tunnels` sessions open.
fn idle_memory(args: &Args, stack: &Stack, edge: &EdgeProcess) -> Result<()> {
    let per_token = 40;
    let accounts = args.idle_tunnels.div_ceil(per_token);
    let mut tokens = Vec::new();
    for _ in 0..accounts {
        tokens.push(stack.control.create_account(Plan::Pro)?.token);
    }
    let pid = edge.pid().context("edge pid")?;
    let before = rss_kib(pid)?;
    let load = bin_path("examples/idle_tunnels")?;
    let mut child = Command::new(load)
        .arg(edge.ssh_addr().to_string())
        .arg(args.idle_tunnels.to_string())
        .arg("16")
        .arg(tokens.join(","))
        .arg(per_token.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    // Let allocator and buffers settle.
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_kib(pid)?;
    let report: serde_json::Value =
        serde_json::from_str(line.trim()).with_context(|| format!("load client said {line:?}"))?;
    let up = report["up"].as_u64().unwrap_or(0).max(1);
    println!(
        "\n## Idle tunnels ({} SSH sessions, one tunnel each, russh load client, 16 setups at a time)\n\nedge RSS {} KiB before, {} KiB with {} tunnels up ({} failed): {:.1} KiB per idle tunnel; setup under load p50 {} ms, p99 {} ms, all up in {} s",
        args.idle_tunnels,
        before,
        after,
        up,
        report["failed"],
        (after.saturating_sub(before)) as f64 / up as f64,
        report["setup_p50_ms"],
        report["setup_p99_ms"],
        report["seconds"]
    );
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

/// The median of `xs` (the upper one of an even count).
fn mid(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn wrk(args: &Args, url: &str, headers: &[String]) -> Result<Wrk> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t", &args.threads.to_string()])
        .args(["-c", &args.connections.to_string()])
        .args(["-d", &format!("{}s", args.duration)])
        .arg("--latency");
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(url);
    let out = run(cmd)?;
    let mut w = Wrk {
        rps: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        errors: 0,
        non_2xx: 0,
    };
    for line in out.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Requests/sec:"), Some(v)) => w.rps = v.parse()?,
            (Some("50%"), Some(v)) => w.p50_ms = duration_ms(v)?,
            (Some("99%"), Some(v)) => w.p99_ms = duration_ms(v)?,
            _ => {}
        }
        let (errors, non_2xx) = wrk_failures(line);
        w.errors += errors;
        w.non_2xx += non_2xx;
    }
    if line_has_errors(&out) {
        eprintln!("wrk reported errors for {url}:\n{out}");
    }
    Ok(w)
}

/// Failures on one line of wrk's report: socket errors and timeouts (`Socket errors:
/// connect A, read B, write C, timeout D`, all of them), and non-2xx answers (`Non-2xx or
/// 3xx responses: N`). A request can be in both: answered late with a 5xx.
fn wrk_failures(line: &str) -> (u64, u64) {
    let line = line.trim();
    if let Some(errors) = line.strip_prefix("Socket errors:") {
        let sum = errors
            .split(',')
            .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
            .sum();
        return (sum, 0);
    }
    let non_2xx = line
        .strip_prefix("Non-2xx or 3xx responses:")
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    (0, non_2xx)
}

fn line_has_errors(out: &str) -> bool {
    out.contains("Socket errors") || out.contains("Non-2xx")
}

fn duration_ms(v: &str) -> Result<f64> {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).context("unit")?);
    let n: f64 = num.parse()?;
    Ok(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => bail!("unknown unit in {v}"),
    })
}

/// CPU time spent by a path's processes during its bulk downloads, and by the whole
/// machine (every process, curl and nginx included, and kernel work done outside any of
/// them).
#[derive(Default, Clone, Copy)]
struct CpuTotals {
    server_ns: u64,
    client_ns: u64,
    /// The holder edge, for the relayed path (its server is the relaying edge).
    holder_ns: u64,
    machine_ns: u64,
}

/// Busy time of all CPUs so far (nanoseconds): the first line of `/proc/stat` less idle and
/// I/O wait.
fn machine_busy_ns() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks = parse_busy_ticks(&stat).context("no `cpu` line in /proc/stat")?;
    // SAFETY: sysconf only reads a constant of the running system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    anyhow::ensure!(hz > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok(ticks * 1_000_000_000 / hz as u64)
}

/// Busy ticks from `/proc/stat`'s `cpu` line: user, nice, system, irq, softirq and steal
/// (not idle, not iowait; guest time is already inside user).
fn parse_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    Some(at(0) + at(1) + at(2) + at(5) + at(6) + at(7))
}

/// CPU time so far of `pid`, its threads and its descendants (nanoseconds, from each
/// thread's `schedstat`).
fn cpu_ns(pid: u32) -> u64 {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            // `pid (comm) state ppid ...`: comm may hold spaces, so split after the `)`.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok());
            if let Some(ppid) = ppid {
                parents.push((p, ppid));
            }
        }
    }
    let mut family = vec![pid];
    let mut i = 0;
    while i < family.len() {
        let parent = family[i];
        family.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    family
        .iter()
        .map(|p| {
            let tasks = std::fs::read_dir(format!("/proc/{p}/task"));
            tasks
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
                .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

fn bulk(url: &str, headers: &[String], mb: usize) -> Result<f64> {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download} %{time_total}",
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(url);
    let out = run(cmd)?;
    let mut it = out.split_whitespace();
    let size: f64 = it.next().context("size")?.parse()?;
    let secs: f64 = it.next().context("time")?.parse()?;
    if size as usize != mb * 1024 * 1024 {
        bail!("bulk download from {url} got {size} bytes");
    }
    Ok(size / 1e6 / secs)
}

fn wait_http(url: &str, client: &mut SshClient) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if Command::new("curl")
            .args(["-sf", "-o", "/dev/null", url])
            .status()
            .is_ok_and(|s| s.success())
        {
            return Ok(());
        }
        if !client.is_running() || Instant::now() > deadline {
            bail!("forward {url} never answered: {}", client.output());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_nginx(dir: &Path, port: u16, bulk_mb: usize) -> Result<ChildGuard> {
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    // nginx's default welcome page is 612 bytes; serve a page of that size.
    std::fs::write(www.join("index.html"), "x".repeat(611) + "\n")?;
    std::fs::write(www.join("kib.bin"), "k".repeat(1023) + "\n")?;
    let big: Vec<u8> = (0..bulk_mb * 1024 * 1024)
        .map(|i| (i % 251) as u8)
        .collect();
    std::fs::write(www.join("big.bin"), big)?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
             sendfile on; keepalive_requests 1000000;\n\
             server {{ listen 127.0.0.1:{port}; root {w}; }} }}\n",
            d = dir.display(),
            w = www.display()
        ),
    )?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-c").arg(&conf).arg("-p").arg(dir);
    let g = ChildGuard::spawn("nginx", cmd, &dir.join("nginx.log"), libc::SIGQUIT)?;
    wait_port(port)?;
    Ok(g)
}

fn start_sshd_keys(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    for (name, comment) in [("host_key", "host"), ("client_key", "client")] {
        let p = dir.join(name);
        if !p.exists() {
            let mut cmd = Command::new("ssh-keygen");
            cmd.args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                .arg(&p);
            run(cmd)?;
        }
    }
    std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys"))?;
    Ok(dir.join("client_key"))
}

fn start_sshd(dir: &Path, port: u16) -> Result<ChildGuard> {
    // sshd insists on its privilege-separation directory.
    std::fs::create_dir_all("/run/sshd")?;
    let conf = dir.join("sshd_config");
    std::fs::write(
        &conf,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin yes\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nAllowTcpForwarding yes\n",
            d = dir.display()
        ),
    )?;
    let mut cmd = Command::new("/usr/sbin/sshd");
    cmd.arg("-D").arg("-e").arg("-f").arg(&conf);
    let g = ChildGuard::spawn("sshd", cmd, &dir.join("sshd.log"), libc::SIGTERM)?;
    wait_port(port)?;
    Ok(g)
}

fn wait_port(port: u16) -> Result<()> {
    try_eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect((LOCAL, port))?;
        Ok(())
    })
    .with_context(|| format!("nothing listens on port {port}"))
}

/// The request inspector's cost on the request path: the same edge, three tunnels to the
/// same nginx (1 KiB answers): inspector off; on with no viewer (the `inspect` keyword);
/// on with a viewer (`-L` to the inspector and a client following `/api/events`).
fn inspector_cost(args: &Args, tunnels: &EdgeTunnels) -> Result<()> {
    let (edge, dir) = (tunnels.edge, tunnels.dir);
    let tunnel = |name: &str, keyword: &str, inspector_port: Option<u16>| {
        let forward: Vec<String> = inspector_port
            .map(|p| format!("LocalForward=127.0.0.1:{p} localhost:4300"))
            .into_iter()
            .collect();
        let (client, host, _) = tunnels.open(name, keyword, &forward, vec![], false)?;
        anyhow::Ok((client, host))
    };
    let viewer_port = free_port(LOCAL);
    let (mut off, off_host) = tunnel("inspector-off", "", None)?;
    let (mut on, on_host) = tunnel("inspector-on", "+inspect", None)?;
    let (mut viewed, viewed_host) = tunnel("inspector-viewed", "+inspect", Some(viewer_port))?;
    // The viewer: a client of the live stream through ssh's -L, reading every event.
    let events = format!("http://127.0.0.1:{viewer_port}/api/events");
    try_eventually(Duration::from_secs(30), || {
        let mut probe = Command::new("curl");
        probe.args(["-sf", "-o", "/dev/null", "--max-time", "2"]);
        probe.arg(format!("http://127.0.0.1:{viewer_port}/api/requests"));
        run(probe).map(|_| ())
    })?;
    let mut follow = Command::new("curl");
    follow.args(["-sN", "-o", "/dev/null"]).arg(&events);
    let _viewer = ChildGuard::spawn(
        "inspector viewer",
        follow,
        &dir.join("viewer.log"),
        libc::SIGTERM,
    )?;

    let base = format!("http://{}/kib.bin", edge.http_addr());
    let paths = [
        ("inspector off", off_host.as_str()),
        ("inspector on, no viewer", on_host.as_str()),
        ("inspector on, viewer following", viewed_host.as_str()),
    ];
    let mut runs: Vec<Vec<Wrk>> = paths.iter().map(|_| Vec::new()).collect();
    for _ in 0..args.inspector_rounds.max(1) {
        for (i, (_, host)) in paths.iter().enumerate() {
            runs[i].push(wrk(args, &base, &[format!("Host: {host}")])?);
        }
    }
    let median = |v: &[Wrk], f: fn(&Wrk) -> f64| mid(v.iter().map(f).collect());
    println!(
        "\n## Request inspector cost (wrk -t{} -c{} -d{}s, 1 KiB answers, median of {} interleaved rounds)\n",
        args.threads,
        args.connections,
        args.duration,
        args.inspector_rounds.max(1)
    );
    println!("| tunnel | requests/s | p50 ms | p99 ms | requests/s vs off |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let off_rps = median(&runs[0], |w| w.rps);
    for (i, (name, _)) in paths.iter().enumerate() {
        let rps = median(&runs[i], |w| w.rps);
        println!(
            "| {name} | {rps:.0} | {:.2} | {:.2} | x{:.3} |",
            median(&runs[i], |w| w.p50_ms),
            median(&runs[i], |w| w.p99_ms),
            rps / off_rps
        );
    }
    off.stop();
    on.stop();
    viewed.stop();
    Ok(())
}

/// What one h2load run measured.
struct H2load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    failed: u64,
}

/// How one h2load run loads the edge.
struct Shape {
    /// HTTP/1.1 (`--h1`, one request in flight per connection) instead of HTTP/2.
    h1: bool,
    /// TCP connections.
    connections: u32,
    /// Streams in flight per connection over HTTP/2.
    streams: u32,
    /// Requests per second per connection (`--rps`), or as fast as the answers come.
    rate_each: Option<u32>,
}

/// h2load against `url` through the edge's port `connect_to`, shaped by `shape`. Latency
/// percentiles come from h2load's per-request log.
fn h2load(args: &Args, url: &str, connect_to: &str, shape: Shape, log: &Path) -> Result<H2load> {
    let mut cmd = Command::new("h2load");
    cmd.args(["-c", &shape.connections.to_string()])
        .args(["-t", &args.threads.min(shape.connections).to_string()])
        .args(["-m", &shape.streams.to_string()])
        .args(["-D", &args.duration.to_string()])
        .args(["--warm-up-time", "1"])
        .arg(format!("--connect-to={connect_to}"))
        .arg(format!("--log-file={}", log.display()));
    if shape.h1 {
        cmd.arg("--h1");
    }
    if let Some(rate) = shape.rate_each {
        cmd.arg(format!("--rps={rate}"));
    }
    cmd.arg(url);
    let out = run(cmd)?;
    let mut rps = 0.0;
    let mut failed = 0;
    for line in out.lines() {
        // "finished in 10.00s, 12345.60 req/s, 9.10MB/s"
        if let Some(rest) = line.strip_prefix("finished in ") {
            if let Some(v) = rest
                .split(", ")
                .nth(1)
                .and_then(|v| v.strip_suffix(" req/s"))
            {
                rps = v.parse()?;
            }
        }
        // "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
        if let Some(rest) = line.strip_prefix("requests: ") {
            for part in rest.split(", ") {
                if let Some(n) = part.strip_suffix(" failed") {
                    failed = n.parse()?;
                }
            }
        }
    }
    if rps == 0.0 {
        bail!("h2load reported no rate for {url}:\n{out}");
    }
    // Each line: start time (µs), status, duration (µs). An answer other than 200 is a
    // failure here too (h2load counts a 404 as done).
    let mut durations: Vec<f64> = Vec::new();
    let mut other_statuses = std::collections::BTreeMap::new();
    let logged = std::fs::read_to_string(log)?;
    for line in logged.lines() {
        let mut fields = line.split('\t').skip(1);
        let (Some(status), Some(us)) = (fields.next(), fields.next()) else {
            continue;
        };
        // Status 0: h2load logged a request it has no answer for, such as one in flight
        // when its warm-up ended; its own "failed" count above says whether any failed.
        if status == "0" {
            *other_statuses.entry(status.to_string()).or_insert(0u64) += 1;
            continue;
        }
        if status != "200" {
            failed += 1;
            *other_statuses.entry(status.to_string()).or_insert(0u64) += 1;
        }
        if let Ok(us) = us.parse::<f64>() {
            durations.push(us / 1000.0);
        }
    }
    if !other_statuses.is_empty() {
        eprintln!("h2load {url}: logged requests without a 200 (status: count; 0 = no answer logged): {other_statuses:?}");
    }
    if durations.is_empty() {
        bail!("h2load logged no request for {url}");
    }
    durations.sort_by(|a, b| a.total_cmp(b));
    Ok(H2load {
        rps,
        p50_ms: pct(&durations, 0.50),
        p99_ms: pct(&durations, 0.99),
        failed,
    })
}

/// CPU time per request over a set of wrk runs, in µs.
#[derive(Default, Clone, Copy)]
struct PerRequest {
    /// The holder edge.
    holder_us: f64,
    /// The relaying edge (0 on the direct path).
    relaying_us: f64,
    /// Every core's busy time.
    machine_us: f64,
}

/// The relay hop's cost in throughput, measured in rounds that alternate the two paths.
struct FullLoad {
    /// CPU per request at the holder edge, over every direct round.
    holder_cpu: PerRequest,
    /// CPU per request relayed, over every relayed round.
    relayed_cpu: PerRequest,
    /// Medians of the rounds at the holder edge.
    holder: Wrk,
    /// Medians of the rounds through the relaying edge.
    relayed: Wrk,
    /// Relayed / direct requests/s of each round, in order.
    ratios: Vec<f64>,
    /// The median of `ratios`.
    median_ratio: f64,
}

/// The tunnel at the holder edge and through the relaying edge at full load (wrk, as in the
/// table), in `--relay-rounds` rounds that alternate the two paths. The table's rows run
/// one after another, so a burst of other load on the host lands on one path only; there
/// the relayed / direct ratio swung from x0.5 to x0.84 between runs of the same binaries.
/// Pairing each relayed run with the holder run just before it, and taking the median of
/// the pairs' ratios, measures the hop rather than the moment.
fn relay_hop_at_full_load(
    args: &Args,
    (holder, holder_pid): (&str, u32),
    (relaying, relaying_pid): (&str, u32),
    headers: &[String],
) -> Result<FullLoad> {
    let mut runs: [Vec<Wrk>; 2] = [Vec::new(), Vec::new()];
    // Per path: holder, relaying edge and machine CPU ns, and requests served.
    let mut cpu = [[0u64; 3]; 2];
    let mut requests = [0f64; 2];
    let mut ratios = Vec::new();
    for _ in 0..args.relay_rounds.max(1) {
        for (i, url) in [holder, relaying].iter().enumerate() {
            let before = [cpu_ns(holder_pid), cpu_ns(relaying_pid), machine_busy_ns()?];
            let w = wrk(args, &format!("{url}/"), headers)?;
            let after = [cpu_ns(holder_pid), cpu_ns(relaying_pid), machine_busy_ns()?];
            for k in 0..3 {
                cpu[i][k] += after[k].saturating_sub(before[k]);
            }
            requests[i] += w.rps * args.duration as f64;
            runs[i].push(w);
        }
        let n = runs[0].len() - 1;
        ratios.push(runs[1][n].rps / runs[0][n].rps.max(1.0));
    }
    let per_request = |i: usize, relayed: bool| {
        let us = |ns: u64| ns as f64 / 1e3 / requests[i].max(1.0);
        PerRequest {
            holder_us: us(cpu[i][0]),
            relaying_us: if relayed { us(cpu[i][1]) } else { 0.0 },
            machine_us: us(cpu[i][2]),
        }
    };
    let median = |runs: &[Wrk]| Wrk {
        rps: mid(runs.iter().map(|r| r.rps).collect()),
        p50_ms: mid(runs.iter().map(|r| r.p50_ms).collect()),
        p99_ms: mid(runs.iter().map(|r| r.p99_ms).collect()),
        errors: mid(runs.iter().map(|r| r.errors as f64).collect()) as u64,
        non_2xx: mid(runs.iter().map(|r| r.non_2xx as f64).collect()) as u64,
    };
    Ok(FullLoad {
        holder: median(&runs[0]),
        relayed: median(&runs[1]),
        holder_cpu: per_request(0, false),
        relayed_cpu: per_request(1, true),
        median_ratio: mid(ratios.clone()),
        ratios,
    })
}

/// What the relay hop adds to a request's time, apart from queueing: the tunnel `host` at
/// the holder edge and through the relaying edge, at the same fixed request rate (well
/// under either path's capacity, so neither queues), rounds interleaved. Under a closed
/// loop at saturation (the wrk rows) latency is connections / throughput, so there the p99
/// gap measures the throughput gap again rather than the hop. Medians of the rounds'
/// percentiles and rates, for [holder, relayed].
fn relay_hop_at_fixed_rate(
    args: &Args,
    dir: &Path,
    host: &str,
    holder: std::net::SocketAddr,
    relaying: std::net::SocketAddr,
) -> Result<[H2load; 2]> {
    let connections = args.latency_connections.max(1);
    let each = (args.latency_rate / connections).max(1);
    let mut runs: [Vec<H2load>; 2] = [Vec::new(), Vec::new()];
    for round in 0..args.bulk_runs.max(1) {
        for (i, edge) in [holder, relaying].iter().enumerate() {
            let shape = Shape {
                h1: true,
                connections,
                streams: 1,
                rate_each: Some(each),
            };
            let url = format!("http://{host}:{}/", edge.port());
            let log = dir.join(format!("h2load-fixed-{i}-{round}.log"));
            runs[i].push(h2load(args, &url, &edge.to_string(), shape, &log)?);
        }
    }
    let median = |runs: &[H2load]| H2load {
        rps: mid(runs.iter().map(|r| r.rps).collect()),
        p50_ms: mid(runs.iter().map(|r| r.p50_ms).collect()),
        p99_ms: mid(runs.iter().map(|r| r.p99_ms).collect()),
        failed: runs.iter().map(|r| r.failed).sum(),
    };
    Ok([median(&runs[0]), median(&runs[1])])
}

/// HTTPS visitors over HTTP/1.1 and over HTTP/2, one tunnel to nginx through one edge:
/// h2load with the same TCP connections (HTTP/2 with `--h2-streams` streams each, HTTP/1.1
/// one request at a time), rounds interleaved; then the bulk download with curl over each,
/// interleaved, median reported; ratios h2/h1 at the end.
fn https_h1_vs_h2(args: &Args, tunnels: &EdgeTunnels) -> Result<()> {
    let (edge, dir) = (tunnels.edge, tunnels.dir);
    let (mut client, host, _) = tunnels.open("https-forward", "", &[], vec![], false)?;
    let port = edge.spec.tls;
    let connect_to = format!("{}:{port}", edge.spec.ip);
    let base = format!("https://{host}:{port}");
    let resolve = format!("{host}:{port}:{}", edge.spec.ip);
    let ca = dir.join("tls/zone-cert.pem");
    let curl = |protocol: &str, path: &str| {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", protocol, "--cacert"])
            .arg(&ca)
            .args(["--resolve", &resolve, "-o", "/dev/null"])
            .args(["-w", "%{http_version} %{size_download} %{time_total}"])
            .arg(format!("{base}{path}"));
        run(cmd)
    };
    try_eventually(Duration::from_secs(30), || {
        let out = curl("--http2", "/")?;
        anyhow::ensure!(out.starts_with("2 612 "), "{out}");
        Ok(())
    })
    .context("the edge does not serve the tunnel over HTTP/2")?;

    let rounds = args.bulk_runs.max(1);
    let streams = args.h2_streams.max(1);
    let mut h1_runs = Vec::new();
    let mut h2_runs = Vec::new();
    for round in 0..rounds {
        let log = dir.join(format!("h2load-h1-{round}.log"));
        let shape = Shape {
            h1: true,
            connections: args.h2_connections,
            streams: 1,
            rate_each: None,
        };
        h1_runs.push(h2load(args, &format!("{base}/"), &connect_to, shape, &log)?);
        let log = dir.join(format!("h2load-h2-{round}.log"));
        let shape = Shape {
            h1: false,
            connections: args.h2_connections,
            streams,
            rate_each: None,
        };
        h2_runs.push(h2load(args, &format!("{base}/"), &connect_to, shape, &log)?);
    }
    let mut downloads: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (i, (protocol, version)) in [("--http1.1", "1.1"), ("--http2", "2")].iter().enumerate()
        {
            let out = curl(protocol, "/big.bin")?;
            let mut it = out.split_whitespace();
            let got_version = it.next().unwrap_or("");
            let size: f64 = it.next().context("size")?.parse()?;
            let secs: f64 = it.next().context("time")?.parse()?;
            if got_version != *version || size as usize != args.bulk_mb * 1024 * 1024 {
                bail!("the {protocol} download got {size} bytes over HTTP/{got_version}");
            }
            downloads[i].push(size / 1e6 / secs);
        }
    }
    let summary = |runs: &[H2load]| {
        (
            mid(runs.iter().map(|r| r.rps).collect()),
            mid(runs.iter().map(|r| r.p50_ms).collect()),
            mid(runs.iter().map(|r| r.p99_ms).collect()),
            runs.iter().map(|r| r.failed).sum::<u64>(),
        )
    };
    let (h1, h2) = (summary(&h1_runs), summary(&h2_runs));
    let (h1_mbps, h2_mbps) = (mid(downloads[0].clone()), mid(downloads[1].clone()));
    let c = args.h2_connections;
    println!(
        "\n## HTTPS to visitors, HTTP/1.1 vs HTTP/2 (h2load -c{c} -t{} -D{}s, 612-byte page; \
         download: {} MB file, curl; median of {rounds} interleaved rounds)\n",
        args.threads, args.duration, args.bulk_mb
    );
    println!("| protocol | TCP connections | in flight per connection | requests/s | p50 ms | p99 ms | failed | download MB/s |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| HTTP/1.1 (h2load --h1) | {c} | 1 | {:.0} | {:.2} | {:.2} | {} | {h1_mbps:.0} |",
        h1.0, h1.1, h1.2, h1.3
    );
    println!(
        "| HTTP/2 (h2load -m{streams}) | {c} | {streams} | {:.0} | {:.2} | {:.2} | {} | {h2_mbps:.0} |",
        h2.0, h2.1, h2.2, h2.3
    );
    println!(
        "\nh2 / h1: requests/s x{:.2} (target >= 1.5), p99 x{:.2}, download x{:.2} (target >= 0.9)",
        h2.0 / h1.0,
        h2.2 / h1.2,
        h2_mbps / h1_mbps
    );
    client.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{parse_busy_ticks, wrk_failures};

    #[test]
    fn wrk_failures_count_every_socket_error_and_non_2xx_answer() {
        assert_eq!(
            wrk_failures("  Socket errors: connect 0, read 3, write 1, timeout 120"),
            (124, 0)
        );
        assert_eq!(wrk_failures("  Non-2xx or 3xx responses: 7"), (0, 7));
        assert_eq!(wrk_failures("Requests/sec:  41234.12"), (0, 0));
    }

    #[test]
    fn busy_ticks_leave_out_idle_and_io_wait() {
        let stat = "cpu  100 2 30 5000 40 6 7 8 9 0\ncpu0 50 1 15 2500 20 3 3 4 0 0\nintr 1\n";
        assert_eq!(parse_busy_ticks(stat), Some(100 + 2 + 30 + 6 + 7 + 8));
    }

    #[test]
    fn a_stat_without_its_cpu_line_is_refused() {
        assert_eq!(parse_busy_ticks("cpu0 1 2 3\nintr 1\n"), None);
        assert_eq!(parse_busy_ticks("cpu  1 x 3\n"), None);
    }
}
