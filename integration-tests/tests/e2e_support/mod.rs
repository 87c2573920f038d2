//! Shared pieces of the three-region end-to-end tests and of `bench_e2e`: the full stack,
//! a developer's local service, the OpenSSH client as tunnel creator, and visitors that
//! resolve a tunnel's name through one region's DNS and fetch it through the edge the
//! answer points at. Nothing here is mocked: every lookup goes to a real `pdns_server`,
//! every request through a real edge and SSH channel.
#![allow(dead_code)]

use anyhow::{bail, ensure, Context, Result};
use nearhop_stack::control::ControlSpec;
use nearhop_stack::edge::{url_host_port, SshArgs, SshClient};
use nearhop_stack::pdns::{query, DnsResponse, QTYPE_A, QTYPE_CNAME, RCODE_NXDOMAIN};
use nearhop_stack::process::ChildGuard;
use nearhop_stack::{Stack, StackOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for something that normally takes milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Regions of the stack, in `Stack::regions` order.
pub const US: usize = 0;
/// eu (a streaming replica).
pub const EU: usize = 1;
/// ap (a streaming replica).
pub const AP: usize = 2;

/// The pro zone.
pub const PRO_ZONE: &str = "a.tunnel.test";
/// The free zone.
pub const FREE_ZONE: &str = "free.tunnel.test";

/// Edges heartbeat every second, so that a stopped edge is noticed in seconds.
pub fn fast_heartbeats(spec: &mut ControlSpec) {
    spec.heartbeat_seconds = 1;
}

/// The whole three-region stack with DNS and edges.
pub fn full_stack() -> Stack {
    full_stack_with(StackOptions::default())
}

/// The whole stack; `opts` decides the rest (lag wait, control tweaks). With
/// `NEARHOP_E2E_KEEP_DIR=/some/dir` the data and logs stay in a fresh directory there.
pub fn full_stack_with(opts: StackOptions) -> Stack {
    let dir = opts.dir.clone().or_else(|| {
        let root = std::env::var_os("NEARHOP_E2E_KEEP_DIR")?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_nanos();
        Some(PathBuf::from(root).join(format!("stack-{stamp}")))
    });
    Stack::start(StackOptions {
        with_dns: true,
        with_edges: true,
        dir,
        ..opts
    })
    .expect("the three-region stack starts")
}

/// A pro account's token.
pub fn pro_token(stack: &Stack) -> String {
    stack
        .control
        .create_account(nearhop_wire::Plan::Pro)
        .expect("account")
        .token
}

// ---------------------------------------------------------------------------------------
// The developer's local service.

/// A tiny HTTP/1.1 server on 127.0.0.1 answering every request with `hello from <tag>`
/// (and the path), one thread per connection, keep-alive.
pub struct LocalService {
    /// Its port.
    pub port: u16,
    /// Requests answered.
    pub served: Arc<AtomicU64>,
}

impl LocalService {
    /// Starts the service; `tag` tells visitors which client served them.
    pub fn start(tag: &str) -> LocalService {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let served = Arc::new(AtomicU64::new(0));
        let (tag, count) = (tag.to_string(), served.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (tag, count) = (tag.clone(), count.clone());
                std::thread::spawn(move || {
                    let _ = serve_local(stream, &tag, &count);
                });
            }
        });
        LocalService { port, served }
    }
}

fn serve_local(stream: TcpStream, tag: &str, served: &AtomicU64) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut close = false;
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            if h == "connection: close" {
                close = true;
            }
            if let Some(v) = h.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        let answer = format!("hello from {tag} {path}\n");
        served.fetch_add(1, Ordering::Relaxed);
        write!(
            writer,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{answer}",
            answer.len()
        )?;
        if close {
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tunnel creators: the stock OpenSSH client.

/// `ssh` arguments for an HTTP tunnel to local `port`, with `user` as the username.
pub fn tunnel_args(user: Option<&str>, port: u16) -> SshArgs {
    SshArgs {
        user: user.map(str::to_string),
        forwards: vec![format!("0:localhost:{port}")],
        ..SshArgs::default()
    }
}

/// Starts `ssh` against the edge of region `region` (index into `stack.regions`).
pub fn ssh_to(stack: &Stack, region: usize, name: &str, args: &SshArgs) -> SshClient {
    SshClient::start(
        &stack.dir.join("ssh"),
        name,
        stack.regions[region].ssh_addr(),
        args,
    )
    .expect("ssh starts")
}

/// Waits for the printed URL, polling the client's output every millisecond so that the
/// visitor's first lookup follows the print as closely as a script would.
pub fn wait_url_fast(client: &mut SshClient, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = client.stdout();
        if let Some(url) = nearhop_stack::edge::find_url(&out) {
            return Ok(url);
        }
        let err = client.stderr();
        if let Some(url) = nearhop_stack::edge::find_url(&err) {
            return Ok(url);
        }
        if !client.is_running() || Instant::now() > deadline {
            bail!("ssh printed no URL; it printed:\n{}", client.output());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The host name of a printed URL.
pub fn host_of(url: &str) -> String {
    url_host_port(url).expect("url").0
}

/// The port of a printed URL.
pub fn port_of(url: &str) -> u16 {
    url_host_port(url).expect("url").1
}

// ---------------------------------------------------------------------------------------
// Visitors: DNS through one region, HTTP through the edge the answer names.

/// What a region's DNS said about a tunnel name (an `A` query, as a browser's resolver asks).
#[derive(Debug, Clone)]
pub struct Lookup {
    /// Response code.
    pub rcode: u8,
    /// The CNAME target, lowercase with trailing dot.
    pub cname: Option<String>,
    /// The address at the end of the chain.
    pub addr: Option<Ipv4Addr>,
}

impl Lookup {
    /// Whether the answer leads to region `region`'s edge host in `zone`.
    pub fn points_at(&self, region: &str, zone: &str) -> bool {
        self.cname.as_deref() == Some(&format!("{region}.{zone}."))
    }

    /// A short description for failure messages.
    pub fn describe(&self) -> String {
        match (&self.cname, self.addr) {
            _ if self.rcode == RCODE_NXDOMAIN => "NXDOMAIN".into(),
            (Some(c), Some(a)) => format!("CNAME {c} A {a}"),
            (Some(c), None) => format!("CNAME {c} (no address)"),
            (None, Some(a)) => format!("A {a} (no CNAME)"),
            (None, None) => format!("rcode {} and no answer", self.rcode),
        }
    }
}

/// Asks region `resolver`'s DNS for `host` A, from the region's own address (a resolver
/// "in" that region).
pub fn lookup(stack: &Stack, resolver: usize, host: &str) -> Result<Lookup> {
    let r = &stack.regions[resolver];
    let resp = query_a(r.dns_addr(), r.ip, host)?;
    let cname = resp.data_of(QTYPE_CNAME).into_iter().next();
    let addr = resp
        .data_of(QTYPE_A)
        .into_iter()
        .next()
        .and_then(|a| a.parse().ok());
    Ok(Lookup {
        rcode: resp.rcode,
        cname,
        addr,
    })
}

/// `host` A from `source` to `dns`. A query without an answer within 2 s is sent again, up
/// to three times in all, as a stub resolver does (`options attempts:3`): on a loaded 2-core
/// machine a UDP query is now and then not answered in time. Only an answer is a hit or a
/// miss.
pub fn query_a(dns: SocketAddr, source: Ipv4Addr, host: &str) -> Result<DnsResponse> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match query(dns, host, QTYPE_A, Some(source)) {
            Ok(resp) => return Ok(resp),
            Err(e) if attempt < 3 && is_timeout(&e) => {
                eprintln!("no answer from {dns} for {host} in 2 s; asking again");
            }
            Err(e) => return Err(e),
        }
    }
}

fn is_timeout(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        })
    })
}

/// One HTTP/1.1 GET with `Connection: close`; returns the status and the body.
pub fn http_get(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: nearhop-e2e\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).context("reading the response")?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The visitor HTTP port of the edge at `addr`. In production every edge serves port 80;
/// the test stack gives each region's edge its own free port, so a visitor that follows a
/// record to another region must use that region's port, not the one in an older URL.
pub fn edge_http_port(stack: &Stack, addr: Ipv4Addr) -> Option<u16> {
    stack
        .regions
        .iter()
        .find(|r| r.ip == addr)
        .map(|r| r.ports.http)
}

/// A visitor in region `resolver`: resolves the URL's name there, then fetches `path`
/// through the address the answer gave (on the URL's port). Fails on any miss.
pub fn visit(stack: &Stack, resolver: usize, url: &str, path: &str) -> Result<String> {
    let (host, port) = url_host_port(url)?;
    let l = lookup(stack, resolver, &host)?;
    let addr = l.addr.with_context(|| {
        format!(
            "{host} via {}'s DNS: {}",
            stack.regions[resolver].name,
            l.describe()
        )
    })?;
    let port = edge_http_port(stack, addr).unwrap_or(port);
    let (status, body) = http_get(SocketAddr::from((addr, port)), &host, path)?;
    ensure!(status == 200, "GET {url}{path} via {addr}: {status} {body}");
    Ok(body)
}

/// Retries `f` until it succeeds or `PATIENCE` runs out.
pub fn eventually<T>(what: &str, f: impl FnMut() -> Result<T>) -> T {
    eventually_within(what, PATIENCE, f)
}

/// Retries `f` until it succeeds or `patience` runs out.
pub fn eventually_within<T>(what: &str, patience: Duration, mut f: impl FnMut() -> Result<T>) -> T {
    let deadline = Instant::now() + patience;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e:#}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Steady visitor load.

/// What a load saw.
#[derive(Debug, Clone, Default)]
pub struct LoadStats {
    /// Requests answered 200 by the tunnel's local service.
    pub ok: u64,
    /// Lookups or requests that failed.
    pub errors: u64,
    /// The first few failures, for the report.
    pub samples: Vec<String>,
    /// The last few failures.
    pub last_samples: std::collections::VecDeque<String>,
    /// When the last failure happened.
    pub last_error_at: Option<Instant>,
}

/// Visitors resolving and fetching a tunnel URL in a loop on a thread, every `pause`, until
/// stopped. Each iteration is a fresh lookup and a fresh connection, as a new visitor.
pub struct Load {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<LoadStats>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Where a load's visitors resolve and connect.
#[derive(Debug, Clone)]
pub struct VisitorPlan {
    /// The region DNS address and the source address queries come from.
    pub dns: SocketAddr,
    /// Source address of the queries.
    pub source: Ipv4Addr,
    /// The tunnel's URL.
    pub url: String,
    /// What the body must contain (the local service's tag).
    pub expect: String,
    /// Each region's edge address and visitor HTTP port (see [`edge_http_port`]).
    pub edge_ports: Vec<(Ipv4Addr, u16)>,
}

impl Load {
    /// Starts visitors of `plan` on a thread.
    pub fn start(plan: VisitorPlan, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(LoadStats::default()));
        let (stop2, stats2) = (stop.clone(), stats.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let r = visit_once(&plan);
                let mut s = stats2.lock().unwrap();
                match r {
                    Ok(()) => s.ok += 1,
                    Err(e) => {
                        s.errors += 1;
                        let text = format!("{e:#}");
                        if s.samples.len() < 5 {
                            s.samples.push(text.clone());
                        }
                        if s.last_samples.len() == 5 {
                            s.last_samples.pop_front();
                        }
                        s.last_samples.push_back(text);
                        s.last_error_at = Some(Instant::now());
                    }
                }
                drop(s);
                std::thread::sleep(pause);
            }
        });
        Load {
            stop,
            stats,
            thread: Some(thread),
        }
    }

    /// A snapshot of the counts so far.
    pub fn stats(&self) -> LoadStats {
        self.stats.lock().unwrap().clone()
    }

    /// Stops the visitors and returns what they saw.
    pub fn stop(mut self) -> LoadStats {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.stats()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn visit_once(plan: &VisitorPlan) -> Result<()> {
    let (host, port) = url_host_port(&plan.url)?;
    let resp = query_a(plan.dns, plan.source, &host)?;
    let addr: Ipv4Addr = resp
        .data_of(QTYPE_A)
        .into_iter()
        .next()
        .with_context(|| format!("lookup of {host}: rcode {}, no address", resp.rcode))?
        .parse()?;
    let port = plan
        .edge_ports
        .iter()
        .find(|(ip, _)| *ip == addr)
        .map(|(_, p)| *p)
        .unwrap_or(port);
    let (status, body) = http_get(SocketAddr::from((addr, port)), &host, "/load")?;
    ensure!(status == 200, "status {status}: {body}");
    ensure!(body.contains(&plan.expect), "unexpected body {body:?}");
    Ok(())
}

/// A visitor plan for a resolver in region `resolver`.
pub fn plan_in(stack: &Stack, resolver: usize, url: &str, tag: &str) -> VisitorPlan {
    let r = &stack.regions[resolver];
    VisitorPlan {
        dns: r.dns_addr(),
        source: r.ip,
        url: url.to_string(),
        expect: format!("hello from {tag}"),
        edge_ports: stack.regions.iter().map(|r| (r.ip, r.ports.http)).collect(),
    }
}

// ---------------------------------------------------------------------------------------
// The user's reconnect loop.

/// `while true; do ssh ...; sleep 1; done`, as users run it. Each round resolves the
/// connect name through a resolver in `home` (so a dead region drops out of the answer)
/// and connects to the address it gets; only the SSH port is looked up in a table, because
/// the test stack gives every region's edge its own free port.
pub struct ReconnectLoop {
    guard: ChildGuard,
    log: PathBuf,
}

impl ReconnectLoop {
    /// Starts the loop for `user` exposing local `port`.
    pub fn start(stack: &Stack, home: usize, user: &str, port: u16) -> Result<ReconnectLoop> {
        let dir = stack.dir.join("ssh");
        std::fs::create_dir_all(&dir)?;
        let log = dir.join("reconnect-loop.log");
        let home_r = &stack.regions[home];
        let mut cases = String::new();
        for r in &stack.regions {
            cases.push_str(&format!("{}) port={} ;; ", r.ip, r.ports.ssh));
        }
        let script = format!(
            "trap 'kill $child 2>/dev/null; exit 0' TERM INT\n\
             while true; do\n\
               ip=$(dig +short +time=1 +tries=1 @{dns_ip} -p {dns_port} -b {src} {zone} A | head -n1)\n\
               port=\n\
               case \"$ip\" in {cases} esac\n\
               if [ -n \"$port\" ]; then\n\
                 echo \"== connecting to $ip:$port\"\n\
                 ssh -p \"$port\" -o BatchMode=yes -o StrictHostKeyChecking=no \
                   -o UserKnownHostsFile=/dev/null -o ServerAliveInterval=1 \
                   -o ServerAliveCountMax=3 -o ConnectTimeout=3 -F /dev/null \
                   -R0:localhost:{local} {user}@\"$ip\" &\n\
                 child=$!\n\
                 wait $child\n\
                 echo \"== ssh exited ($?)\"\n\
               fi\n\
               sleep 1\n\
             done\n",
            dns_ip = home_r.ip,
            dns_port = home_r.ports.dns,
            src = home_r.ip,
            zone = PRO_ZONE,
            local = port,
        );
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c").arg(script);
        let guard = ChildGuard::spawn("reconnect loop", cmd, &log, libc::SIGTERM)?;
        Ok(ReconnectLoop { guard, log })
    }

    /// Everything the loop and its ssh runs printed.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The URL printed after the `n`-th connection (counting from 1), if any.
    pub fn url_of_round(&self, n: usize) -> Option<String> {
        let out = self.output();
        let round = out.split("== connecting to ").nth(n)?;
        nearhop_stack::edge::find_url(round)
    }

    /// Rounds started so far.
    pub fn rounds(&self) -> usize {
        self.output().matches("== connecting to ").count()
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }
}

// ---------------------------------------------------------------------------------------
// Metrics.

/// The value of the first sample of `name` whose labels contain every `labels` pair.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let metric = l.split(['{', ' ']).next().unwrap_or("");
            metric == name
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

/// Control's `/metrics` text.
pub fn control_metrics(stack: &Stack) -> Result<String> {
    let url = format!("{}/metrics", stack.control.url);
    Ok(reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?
        .get(url)
        .send()?
        .error_for_status()?
        .text()?)
}

/// `wait_ms` of every `tunnel set up` line control logged, in order.
pub fn setup_waits_ms(stack: &Stack) -> Vec<u64> {
    let text = std::fs::read_to_string(stack.control.log()).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("tunnel set up"))
        .filter_map(|l| {
            let plain = strip_ansi(l);
            let v = plain.split("wait_ms=").nth(1)?;
            v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        })
        .collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Percentile (0..=100) of sorted `v`.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
