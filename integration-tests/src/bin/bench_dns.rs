//! DNS benchmark, one run, side by side on the same replica: `pdns_server` + nearhop's
//! backend (unix connector, caches on, purged on change) against stock
//! `pdns_server --launch=gpgsql` with caches off — queries/s with dnsperf, commit→answer
//! freshness, and the backend's memory and load time with a million records.
//!
//! `cargo build --release -p nearhop-pdns-backend && cargo run --release -p
//! nearhop-integration-tests --bin bench_dns` (see docs/benchmarks.md).

use anyhow::{bail, Context, Result};
use clap::Parser;
use nearhop_stack::dns_client::*;
use nearhop_stack::fixtures::*;
use nearhop_stack::pdns::*;
use nearhop_stack::ports::free_port;
use nearhop_stack::postgres::*;
use nearhop_stack::process::ChildGuard;
use nearhop_stack::stats::percentile;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
struct Args {
    /// Tunnel records for the throughput and freshness runs.
    #[arg(long, default_value_t = 100_000)]
    records: u32,
    /// Seconds per dnsperf run.
    #[arg(long, default_value_t = 20)]
    seconds: u32,
    /// Record changes for the freshness measurement.
    #[arg(long, default_value_t = 300)]
    changes: u32,
    /// Records for the memory measurement (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    memory_records: u32,
    /// dnsperf clients (-c).
    #[arg(long, default_value_t = 8)]
    clients: u32,
    /// pdns receiver-threads for every pdns.
    #[arg(long, default_value_t = 2)]
    receivers: u32,
    /// pdns distributor-threads (per receiver).
    #[arg(long, default_value_t = 4)]
    distributors: u32,
    /// pdns cache lifetimes (s) for the backend run with caches on; the packet cache is
    /// capped by the records' own TTL (10 s) anyway.
    #[arg(long, default_value_t = 60)]
    cache_ttl: u32,
    /// Skip the extra run of the backend with pdns caches off.
    #[arg(long)]
    skip_uncached: bool,
    /// Keep the data directory here (default: a temporary one, removed).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

struct PerfResult {
    qps: f64,
    sent: u64,
    lost: u64,
    noerror: u64,
    nxdomain: u64,
    servfail: u64,
    command: String,
}

fn dnsperf(addr: SocketAddr, data: &std::path::Path, args: &Args) -> Result<PerfResult> {
    let file = data
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut c = Command::new("dnsperf");
    c.args(["-s", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .arg("-d")
        .arg(data)
        .args(["-l", &args.seconds.to_string()])
        .args([
            "-c",
            &args.clients.to_string(),
            "-T",
            "1",
            "-q",
            "500",
            "-t",
            "2",
        ]);
    let command = format!(
        "dnsperf -s {ip} -p {port} -d {file} -n 1 -c {c} -q 500 -t 2 (warm-up, not measured); \
         dnsperf -s {ip} -p {port} -d {file} -l {} -c {c} -T 1 -q 500 -t 2",
        args.seconds,
        ip = addr.ip(),
        port = addr.port(),
        c = args.clients
    );
    // One unmeasured pass over every name first: a region's pdns runs continuously, so the
    // measurement is of warm caches (gpgsql has none; it gets the same pass).
    let mut warm = Command::new("dnsperf");
    warm.args(["-s", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .arg("-d")
        .arg(data)
        .args([
            "-n",
            "1",
            "-c",
            &args.clients.to_string(),
            "-q",
            "500",
            "-t",
            "2",
        ]);
    warm.output()
        .context("running dnsperf (apt-get install dnsperf)")?;
    let out = c
        .output()
        .context("running dnsperf (apt-get install dnsperf)")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let num = |label: &str| -> f64 {
        text.lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let rcode = |code: &str| -> u64 {
        text.lines()
            .find(|l| l.contains("Response codes:"))
            .and_then(|l| {
                l.split(',')
                    .find(|p| p.contains(code))
                    .and_then(|p| p.split_whitespace().find_map(|w| w.parse().ok()))
            })
            .unwrap_or(0)
    };
    if num("Queries sent") == 0.0 {
        bail!("dnsperf produced no result:\n{text}");
    }
    Ok(PerfResult {
        qps: num("Queries per second"),
        sent: num("Queries sent") as u64,
        lost: num("Queries lost") as u64,
        noerror: rcode("NOERROR"),
        nxdomain: rcode("NXDOMAIN"),
        servfail: rcode("SERVFAIL"),
        command,
    })
}

/// Polls `addr` for `name` until it answers NOERROR; returns when it did.
fn poll_until_answered(addr: SocketAddr, name: String, give_up: Instant) -> Option<Instant> {
    let sock = std::net::UdpSocket::bind(("127.0.0.1", 0)).ok()?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    while Instant::now() < give_up {
        if let Ok(r) = query_on(&sock, addr, &name, QTYPE_A) {
            if r.rcode == RCODE_NOERROR && !r.answers.is_empty() {
                return Some(Instant::now());
            }
        }
        // Paced, so that two pollers do not starve replication and the backend of the two
        // cores they share; adds at most 0.2 ms to a measurement.
        std::thread::sleep(Duration::from_micros(200));
    }
    None
}

fn main() -> Result<()> {
    let args = Args::parse();
    if std::env::var_os("NEARHOP_PROFILE").is_none() {
        std::env::set_var("NEARHOP_PROFILE", "release");
    }
    let tmp = tempfile::Builder::new()
        .prefix("nearhop-bench-dns-")
        .tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    eprintln!("starting primary + replica in {}", dir.display());
    let pg = primary_and_replica(&dir)?;
    let eu = pg.replicas[0].endpoint.ip;
    let primary = pg.primary.endpoint.clone();
    let replica = pg.replicas[0].endpoint.clone();
    seed_through_control(&dir, &primary)?;
    eprintln!("inserting {} tunnel records", args.records);
    psql(
        &primary,
        &format!(
            "INSERT INTO records(domain_id, name, type, content, ttl) \
             SELECT d.id, 't' || g || '.a.tunnel.test', 'CNAME', \
                    (ARRAY['us','eu','ap'])[1 + g % 3] || '.a.tunnel.test.', 10 \
             FROM domains d, generate_series(1, {}) g WHERE d.name = 'a.tunnel.test'; \
             ANALYZE",
            args.records
        ),
    )?;
    wait_replayed(&primary, &replica)?;

    // Every name once, shuffled (deterministic LCG permutation).
    let data = dir.join("names.txt");
    let n = args.records as u64;
    let mut lines = String::new();
    let step = 7_919u64;
    for i in 0..n {
        let k = (i * step) % n + 1;
        lines.push_str(&format!("t{k}.a.tunnel.test A\n"));
    }
    std::fs::write(&data, lines)?;
    // The same count of queries with popularity ∝ 1/rank (log-uniform ranks, Zipf-like), as
    // visitors spread over tunnels: a few busy, most quiet.
    let skewed = dir.join("skewed.txt");
    let mut lines = String::new();
    for i in 0..n {
        let u = ((i as f64) * 0.618_033_988_749_895).fract();
        let k = ((n as f64).powf(u) as u64).clamp(1, n);
        lines.push_str(&format!("t{k}.a.tunnel.test A\n"));
    }
    std::fs::write(&skewed, lines)?;

    let mut ours_spec = PdnsSpec::for_tests("eu", eu, replica.conninfo());
    ours_spec.caches = Caches::Purged(args.cache_ttl);
    ours_spec.receiver_threads = args.receivers;
    ours_spec.distributor_threads = args.distributors;
    let ours = PdnsRegion::start(&dir.join("ours"), &ours_spec)?;
    let gpgsql = GpgsqlPdns::start(
        &dir.join("gpgsql"),
        eu,
        free_port(eu),
        &replica,
        Caches::Off,
        args.receivers,
        args.distributors,
    )?;

    let uncached = if !args.skip_uncached {
        let mut spec = PdnsSpec::for_tests("eu", eu, replica.conninfo());
        spec.caches = Caches::Off;
        spec.receiver_threads = args.receivers;
        spec.distributor_threads = args.distributors;
        Some(PdnsRegion::start(&dir.join("uncached"), &spec)?)
    } else {
        None
    };
    let mut perf = Vec::new();
    for (workload, file) in [("uniform", &data), ("skewed", &skewed)] {
        eprintln!("dnsperf {workload}: backend, caches on + purge");
        let ours_r = dnsperf(ours.dns_addr(), file, &args)?;
        eprintln!("dnsperf {workload}: gpgsql, caches off");
        let gpgsql_r = dnsperf(gpgsql.dns_addr(), file, &args)?;
        let uncached_r = match &uncached {
            Some(u) => {
                eprintln!("dnsperf {workload}: backend, caches off");
                Some(dnsperf(u.dns_addr(), file, &args)?)
            }
            None => None,
        };
        perf.push((workload, ours_r, gpgsql_r, uncached_r));
    }
    drop(uncached);

    eprintln!("freshness: {} changes", args.changes);
    let rt = tokio::runtime::Runtime::new()?;
    let client = rt.block_on(async {
        let (client, conn) =
            tokio_postgres::connect(&primary.conninfo(), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok::<_, tokio_postgres::Error>(client)
    })?;
    let mut fresh_ours = Vec::new();
    let mut fresh_gpgsql = Vec::new();
    let mut applied = Vec::new();
    let backend_url = ours.backend_url();
    let http = reqwest::blocking::Client::new();
    let mut missed = (0u32, 0u32);
    for i in 0..args.changes {
        let name = format!("fresh{i}.a.tunnel.test");
        let give_up = Instant::now() + Duration::from_secs(5);
        let (a, b) = (ours.dns_addr(), gpgsql.dns_addr());
        let (na, nb) = (name.clone(), name.clone());
        // Both servers are asked before the name exists (so pdns caches the NXDOMAIN) and
        // then continuously until they answer.
        let ta = std::thread::spawn(move || poll_until_answered(a, na, give_up));
        let tb = std::thread::spawn(move || poll_until_answered(b, nb, give_up));
        std::thread::sleep(Duration::from_millis(3));
        rt.block_on(client.execute(
            "INSERT INTO records(domain_id, name, type, content, ttl) \
             SELECT id, $1, 'CNAME', 'us.a.tunnel.test.', 10 FROM domains WHERE name = 'a.tunnel.test'",
            &[&name],
        ))?;
        let committed = Instant::now();
        // The backend's own applied position (what control's lag race waits for).
        let lsn = rt.block_on(client.query_one("SELECT pg_current_wal_lsn()::text", &[]))?;
        let lsn: String = lsn.get(0);
        let url = format!("{backend_url}/v1/wait?lsn={lsn}&timeout_ms=5000");
        if let Ok(resp) = http.get(&url).send() {
            if resp
                .text()
                .map(|t| t.contains("\"reached\":true"))
                .unwrap_or(false)
            {
                applied.push(committed.elapsed());
            }
        }
        match ta.join().ok().flatten() {
            Some(t) => fresh_ours.push(t.saturating_duration_since(committed)),
            None => missed.0 += 1,
        }
        match tb.join().ok().flatten() {
            Some(t) => fresh_gpgsql.push(t.saturating_duration_since(committed)),
            None => missed.1 += 1,
        }
    }
    fresh_ours.sort();
    fresh_gpgsql.sort();
    applied.sort();
    drop(ours);
    drop(gpgsql);

    let memory = if args.memory_records > 0 {
        let extra = args
            .memory_records
            .saturating_sub(args.records + args.changes);
        eprintln!("memory: adding {extra} records");
        psql(
            &primary,
            &format!(
                "INSERT INTO records(domain_id, name, type, content, ttl) \
                 SELECT d.id, 'm' || g || '.free.tunnel.test', 'CNAME', 'us.free.tunnel.test.', 10 \
                 FROM domains d, generate_series(1, {extra}) g WHERE d.name = 'free.tunnel.test'"
            ),
        )?;
        wait_replayed(&primary, &replica)?;
        let total: u64 = psql(&replica, "SELECT count(*) FROM records")?
            .trim()
            .parse()?;
        let mdir = dir.join("memory");
        std::fs::create_dir_all(&mdir)?;
        let sock = mdir.join("backend.sock");
        let cfg = mdir.join("backend.toml");
        std::fs::write(
            &cfg,
            format!(
                "database_url = {:?}\nunix_socket = {:?}\nhttp_listen = \"127.0.0.2:{}\"\n",
                replica.conninfo(),
                sock.display().to_string(),
                free_port(eu)
            ),
        )?;
        let mut cmd = Command::new(nearhop_stack::bin_path("nearhop-pdns-backend")?);
        cmd.arg("--config").arg(&cfg);
        let started = Instant::now();
        let mut child = ChildGuard::spawn(
            "backend (memory)",
            cmd,
            &mdir.join("backend.log"),
            libc::SIGTERM,
        )?;
        while !sock.exists() {
            child.check_running()?;
            std::thread::sleep(Duration::from_millis(5));
        }
        let load = started.elapsed();
        std::thread::sleep(Duration::from_millis(500));
        let rss = nearhop_stack::process::rss_kib(child.pid())?;
        Some((total, load, rss))
    } else {
        None
    };

    let loss = |r: &PerfResult| 100.0 * r.lost as f64 / r.sent.max(1) as f64;
    println!("### Throughput ({} tunnel records, dnsperf {} s after one warm-up pass, {} clients, A queries; uniform: every name once per pass; skewed: popularity ∝ 1/rank)\n", args.records, args.seconds, args.clients);
    println!(
        "| workload | server | pdns caches | queries/s | lost | NOERROR / NXDOMAIN / SERVFAIL | command |"
    );
    println!("| --- | --- | --- | ---: | ---: | --- | --- |");
    let row = |workload: &str, label: &str, caches: &str, r: &PerfResult| {
        println!(
            "| {workload} | {label} | {caches} | {:.0} | {:.2} % | {} / {} / {} | `{}` |",
            r.qps,
            loss(r),
            r.noerror,
            r.nxdomain,
            r.servfail,
            r.command
        );
    };
    let on = format!("on ({} s), purged on change", args.cache_ttl);
    for (workload, ours_r, gpgsql_r, uncached_r) in &perf {
        row(workload, "pdns + nearhop-pdns-backend (unix)", &on, ours_r);
        row(workload, "pdns --launch=gpgsql", "off", gpgsql_r);
        if let Some(r) = uncached_r {
            row(workload, "pdns + nearhop-pdns-backend (unix)", "off", r);
        }
    }
    println!();
    for (workload, ours_r, gpgsql_r, _) in &perf {
        println!(
            "Ratio {workload}: backend (caches on + purge) / gpgsql (caches off) = {:.1}x  ",
            ours_r.qps / gpgsql_r.qps.max(1.0)
        );
    }
    println!();
    println!("### Freshness (commit on the primary → first NOERROR from the replica-side pdns, {} changes, name queried before it existed)\n", args.changes);
    println!("| server | p50 | p90 | p99 | max | not answered within 5 s |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let frow = |label: &str, v: &[Duration], missed: u32| {
        println!(
            "| {label} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {missed} |",
            percentile(v, 50.0).unwrap_or_default().as_secs_f64() * 1e3,
            percentile(v, 90.0).unwrap_or_default().as_secs_f64() * 1e3,
            percentile(v, 99.0).unwrap_or_default().as_secs_f64() * 1e3,
            v.last().copied().unwrap_or_default().as_secs_f64() * 1e3
        );
    };
    frow("pdns + backend, caches on + purge", &fresh_ours, missed.0);
    frow("pdns --launch=gpgsql, caches off", &fresh_gpgsql, missed.1);
    frow(
        "(backend's applied position, /v1/wait, upper bound incl. one extra round trip)",
        &applied,
        args.changes - applied.len() as u32,
    );
    if let Some((total, load, rss)) = memory {
        println!("\n### Memory\n");
        println!(
            "{total} records: backend resident size {:.0} MB after load; start-up until the unix socket is offered (full load): {:.2} s",
            rss as f64 / 1024.0,
            load.as_secs_f64()
        );
    }
    drop(pg);
    Ok(())
}
