//! A region's DNS: `pdns_server` with nearhop-pdns-backend (unix, http or pipe connector),
//! or stock `pdns_server --launch=gpgsql` on the same database as the baseline; plus the DNS
//! schema/seed helpers and a small DNS client for tests and benchmarks.

use crate::control::bin_path;
use crate::ports::free_port;
use crate::postgres::PgEndpoint;
use crate::process::{run, tail, ChildGuard};
use anyhow::{bail, Context, Result};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How pdns reaches the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connector {
    /// `unix:path=...` (the fast path).
    Unix,
    /// `http:url=...` REST mode.
    HttpRest,
    /// `http:url=...,post=1`.
    HttpPost,
    /// `http:url=...,post=1,post_json=1`.
    HttpPostJson,
    /// `pipe:command=...` (pdns starts the backend itself).
    Pipe,
}

/// pdns's packet and query caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caches {
    /// `cache-ttl=0 query-cache-ttl=0 negquery-cache-ttl=0`: every query reaches the backend.
    Off,
    /// Caches on with this lifetime (seconds); the backend purges changed names through the
    /// control socket, the lifetime is only the backstop.
    Purged(u32),
}

/// One region's `pdns_server` + backend.
#[derive(Debug, Clone)]
pub struct PdnsSpec {
    /// Region name.
    pub region: String,
    /// Loopback address pdns and the backend listen on.
    pub ip: Ipv4Addr,
    /// pdns's DNS port (UDP and TCP).
    pub dns_port: u16,
    /// Backend HTTP port (`/metrics`, `/v1/*`, `/dns`).
    pub backend_http_port: u16,
    /// libpq connection string of the region's replica (or primary).
    pub database: String,
    /// Connector.
    pub connector: Connector,
    /// Cache mode.
    pub caches: Caches,
    /// Apex prefix map: prefix → regions in order of preference.
    pub apex_prefixes: Vec<(String, Vec<String>)>,
    /// Apex default region.
    pub default_region: String,
    /// Seconds without heartbeat after which a region is skipped.
    pub heartbeat_bound_secs: f64,
    /// pdns `receiver-threads`.
    pub receiver_threads: u32,
    /// pdns `distributor-threads`.
    pub distributor_threads: u32,
}

impl PdnsSpec {
    /// Free ports on `ip`, unix connector, caches purged on change (1 s backstop... see docs).
    pub fn for_tests(region: &str, ip: Ipv4Addr, database: String) -> PdnsSpec {
        PdnsSpec {
            region: region.into(),
            ip,
            dns_port: free_port(ip),
            backend_http_port: free_port(ip),
            database,
            connector: Connector::Unix,
            caches: Caches::Purged(10),
            apex_prefixes: Vec::new(),
            default_region: "us".into(),
            heartbeat_bound_secs: 30.0,
            receiver_threads: 1,
            distributor_threads: 3,
        }
    }
}

/// A running `pdns_server` (+ backend unless pdns runs it as a pipe coprocess).
pub struct PdnsRegion {
    /// What was started.
    pub spec: PdnsSpec,
    // Drop order: pdns first, then the backend.
    pdns: ChildGuard,
    backend: Option<ChildGuard>,
    dir: PathBuf,
}

/// The unprivileged user pdns drops to when the harness runs as root.
fn pdns_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").arg(flag).arg("pdns").output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// A directory pdns (possibly another user) may write its control socket into.
fn socket_dir(dir: &Path) -> Result<PathBuf> {
    let sock = dir.join("pdns-sock");
    std::fs::create_dir_all(&sock)?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777))?;
    Ok(sock)
}

/// Makes every ancestor of `dir` up to a temp root traversable by pdns's user.
fn open_up(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut p = Some(dir);
    while let Some(d) = p {
        if d == Path::new("/") || d == Path::new("/tmp") {
            break;
        }
        let mode = std::fs::metadata(d)?.permissions().mode();
        if mode & 0o011 != 0o011 {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o711))?;
        }
        p = d.parent();
    }
    Ok(())
}

fn pdns_base_command(dir: &Path, ip: Ipv4Addr, port: u16, caches: Caches) -> Result<Command> {
    let sock = socket_dir(dir)?;
    let mut cmd = Command::new("pdns_server");
    cmd.args([
        "--no-config",
        "--daemon=no",
        "--guardian=no",
        "--disable-syslog",
        "--write-pid=no",
        "--log-timestamp=yes",
        "--loglevel=5",
    ])
    .arg(format!("--socket-dir={}", sock.display()))
    .arg(format!("--local-address={ip}"))
    .arg(format!("--local-port={port}"))
    .arg("--edns-subnet-processing=yes")
    .arg("--zone-cache-refresh-interval=60");
    match caches {
        Caches::Off => {
            cmd.args([
                "--cache-ttl=0",
                "--query-cache-ttl=0",
                "--negquery-cache-ttl=0",
            ]);
        }
        Caches::Purged(ttl) => {
            cmd.arg(format!("--cache-ttl={ttl}"))
                .arg(format!("--query-cache-ttl={ttl}"))
                .arg(format!("--negquery-cache-ttl={ttl}"));
        }
    }
    if let Some((uid, gid)) = pdns_user() {
        cmd.arg(format!("--setuid={uid}"))
            .arg(format!("--setgid={gid}"));
    }
    Ok(cmd)
}

impl PdnsRegion {
    /// Writes the backend config, starts the backend (waiting for its socket) and pdns
    /// (waiting until it answers the SOA of a served zone... of any zone: REFUSED counts as
    /// not ready, anything else as ready).
    pub fn start(dir: &Path, spec: &PdnsSpec) -> Result<PdnsRegion> {
        open_up(dir)?;
        let sock_dir = socket_dir(dir)?;
        let backend_sock = dir.join("backend.sock");
        let config_path = dir.join("pdns-backend.toml");
        std::fs::write(&config_path, backend_config(spec, &backend_sock, &sock_dir))?;
        let backend_bin = bin_path("nearhop-pdns-backend")?;
        let backend = if spec.connector == Connector::Pipe {
            None
        } else {
            Some(start_backend(dir, spec, &config_path, &backend_sock)?)
        };
        let mut cmd = pdns_base_command(dir, spec.ip, spec.dns_port, spec.caches)?;
        let url = format!("http://{}:{}/dns", spec.ip, spec.backend_http_port);
        let connection = match spec.connector {
            Connector::Unix => format!("unix:path={},timeout=2000", backend_sock.display()),
            Connector::HttpRest => format!("http:url={url},timeout=2000"),
            Connector::HttpPost => format!("http:url={url},post=1,timeout=2000"),
            Connector::HttpPostJson => format!("http:url={url},post=1,post_json=1,timeout=2000"),
            Connector::Pipe => {
                // pdns splits the command on spaces; the config path must not hold any.
                format!(
                    "pipe:command={} --pipe --config {},timeout=2000",
                    backend_bin.display(),
                    config_path.display()
                )
            }
        };
        cmd.arg("--launch=remote")
            .arg(format!("--remote-connection-string={connection}"))
            .arg(format!("--receiver-threads={}", spec.receiver_threads))
            .arg(format!(
                "--distributor-threads={}",
                spec.distributor_threads
            ))
            .arg("--reuseport=yes")
            // Typed lookups: the zone lookup's SOA query is then cached apart from the
            // per-client apex answer (see deploy/pdns/pdns.conf).
            .arg("--consistent-backends=no");
        // Developers' experiments: extra pdns settings, e.g. `--consistent-backends=yes`.
        if let Ok(extra) = std::env::var("NEARHOP_PDNS_EXTRA_ARGS") {
            cmd.args(extra.split_whitespace());
        }
        let log = dir.join("pdns.log");
        let pdns = ChildGuard::spawn(
            &format!("pdns_server ({})", spec.region),
            cmd,
            &log,
            libc::SIGTERM,
        )?;
        let mut region = PdnsRegion {
            spec: spec.clone(),
            pdns,
            backend,
            dir: dir.to_path_buf(),
        };
        region.wait_answering()?;
        Ok(region)
    }

    fn wait_answering(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.pdns.check_running()?;
            if let Some(b) = self.backend.as_mut() {
                b.check_running()?;
            }
            // Any zone the backend serves: ask for the root of test zones' SOA. pdns answers
            // REFUSED until its zone cache holds the zones.
            if let Ok(r) = query(self.dns_addr(), "a.tunnel.test", QTYPE_SOA, None) {
                if r.rcode != RCODE_REFUSED && r.rcode != RCODE_SERVFAIL {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "pdns ({}) did not answer in 60 s; pdns log:\n{}",
                    self.spec.region,
                    tail(&self.dir.join("pdns.log"), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// pdns's DNS address.
    pub fn dns_addr(&self) -> SocketAddr {
        SocketAddr::from((self.spec.ip, self.spec.dns_port))
    }

    /// The backend's HTTP base URL.
    pub fn backend_url(&self) -> String {
        format!("http://{}:{}", self.spec.ip, self.spec.backend_http_port)
    }

    /// Where logs and sockets are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the backend process (pdns keeps running and will answer SERVFAIL).
    pub fn stop_backend(&mut self) {
        if let Some(mut b) = self.backend.take() {
            b.stop();
        }
    }

    /// Starts the backend again after [`PdnsRegion::stop_backend`].
    pub fn start_backend(&mut self) -> Result<()> {
        if self.backend.is_some() || self.spec.connector == Connector::Pipe {
            return Ok(());
        }
        let sock = self.dir.join("backend.sock");
        let cfg = self.dir.join("pdns-backend.toml");
        self.backend = Some(start_backend(&self.dir, &self.spec, &cfg, &sock)?);
        Ok(())
    }

    /// Whether pdns still runs.
    pub fn pdns_running(&mut self) -> bool {
        self.pdns.is_running()
    }

    /// Whether the backend still runs.
    pub fn backend_running(&mut self) -> bool {
        self.backend
            .as_mut()
            .map(|b| b.is_running())
            .unwrap_or(false)
    }

    /// Runs `pdns_control` against this pdns.
    pub fn pdns_control(&self, args: &[&str]) -> Result<String> {
        let mut c = Command::new("pdns_control");
        c.arg(format!(
            "--socket-dir={}",
            self.dir.join("pdns-sock").display()
        ))
        .args(args);
        run(c)
    }

    /// One pdns statistic (`pdns_control show NAME`).
    pub fn pdns_stat(&self, name: &str) -> Result<u64> {
        let out = self.pdns_control(&["show", name])?;
        out.trim()
            .parse()
            .with_context(|| format!("pdns stat {name}: {out:?}"))
    }

    /// `GET /v1/status` of the backend, as JSON.
    pub fn backend_status(&self) -> Result<serde_json::Value> {
        let url = format!("{}/v1/status", self.backend_url());
        Ok(reqwest::blocking::get(url)?.error_for_status()?.json()?)
    }

    /// `GET /metrics` of the backend.
    pub fn backend_metrics(&self) -> Result<String> {
        let url = format!("{}/metrics", self.backend_url());
        Ok(reqwest::blocking::get(url)?.error_for_status()?.text()?)
    }

    /// The backend's log (unix/http) file.
    pub fn backend_log(&self) -> PathBuf {
        self.dir.join("pdns-backend.log")
    }

    /// pdns's log file.
    pub fn pdns_log(&self) -> PathBuf {
        self.dir.join("pdns.log")
    }

    /// The backend's unix socket (the `unix` connector).
    pub fn backend_socket(&self) -> PathBuf {
        self.dir.join("backend.sock")
    }

    /// The backend's config file.
    pub fn backend_config(&self) -> PathBuf {
        self.dir.join("pdns-backend.toml")
    }

    /// Calls the backend directly over its unix socket: one request line, one reply.
    pub fn backend_call(&self, request: &serde_json::Value) -> Result<serde_json::Value> {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::os::unix::net::UnixStream::connect(self.backend_socket())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("{request}\n").as_bytes())?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(serde_json::from_str(&line)?)
    }
}

fn backend_config(spec: &PdnsSpec, sock: &Path, pdns_sock_dir: &Path) -> String {
    let mut t = String::new();
    t.push_str(&format!("database_url = {:?}\n", spec.database));
    t.push_str(&format!("unix_socket = {:?}\n", sock.display().to_string()));
    t.push_str(&format!(
        "http_listen = \"{}:{}\"\n",
        spec.ip, spec.backend_http_port
    ));
    if matches!(spec.caches, Caches::Purged(_)) {
        t.push_str(&format!(
            "pdns_socket_dir = {:?}\n",
            pdns_sock_dir.display().to_string()
        ));
    }
    t.push_str("refresh_ms = 200\n");
    t.push_str("\n[apex]\n");
    t.push_str(&format!("default_region = {:?}\n", spec.default_region));
    t.push_str(&format!(
        "heartbeat_bound_secs = {:?}\n",
        spec.heartbeat_bound_secs
    ));
    t.push_str("\n[apex.prefixes]\n");
    for (prefix, regions) in &spec.apex_prefixes {
        t.push_str(&format!("{prefix:?} = {regions:?}\n"));
    }
    t
}

fn start_backend(dir: &Path, spec: &PdnsSpec, config: &Path, sock: &Path) -> Result<ChildGuard> {
    let _ = std::fs::remove_file(sock);
    let mut cmd = Command::new(bin_path("nearhop-pdns-backend")?);
    cmd.arg("--config").arg(config);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    let log = dir.join("pdns-backend.log");
    let mut guard = ChildGuard::spawn(
        &format!("nearhop-pdns-backend ({})", spec.region),
        cmd,
        &log,
        libc::SIGTERM,
    )?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !sock.exists() {
        guard.check_running()?;
        if Instant::now() > deadline {
            bail!(
                "backend socket {} did not appear; log:\n{}",
                sock.display(),
                tail(&log, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(guard)
}

/// Stock `pdns_server --launch=gpgsql` on a database (the baseline).
pub struct GpgsqlPdns {
    pdns: ChildGuard,
    addr: SocketAddr,
    dir: PathBuf,
}

impl GpgsqlPdns {
    /// Starts pdns with gpgsql against `db` and waits until it answers.
    pub fn start(
        dir: &Path,
        ip: Ipv4Addr,
        port: u16,
        db: &PgEndpoint,
        caches: Caches,
        receiver_threads: u32,
        distributor_threads: u32,
    ) -> Result<GpgsqlPdns> {
        open_up(dir)?;
        let mut cmd = pdns_base_command(dir, ip, port, caches)?;
        cmd.arg("--launch=gpgsql")
            .arg(format!("--gpgsql-host={}", db.ip))
            .arg(format!("--gpgsql-port={}", db.port))
            .arg(format!("--gpgsql-dbname={}", crate::postgres::DB_NAME))
            .arg(format!("--gpgsql-user={}", crate::postgres::DB_USER))
            .arg("--gpgsql-password=")
            .arg("--gpgsql-dnssec=no")
            .arg(format!("--receiver-threads={receiver_threads}"))
            .arg(format!("--distributor-threads={distributor_threads}"))
            .arg("--reuseport=yes");
        let log = dir.join("pdns.log");
        let mut pdns = ChildGuard::spawn("pdns_server (gpgsql)", cmd, &log, libc::SIGTERM)?;
        let addr = SocketAddr::from((ip, port));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            pdns.check_running()?;
            if let Ok(r) = query(addr, "a.tunnel.test", QTYPE_SOA, None) {
                if r.rcode != RCODE_REFUSED && r.rcode != RCODE_SERVFAIL {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("gpgsql pdns did not answer; log:\n{}", tail(&log, 30));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(GpgsqlPdns {
            pdns,
            addr,
            dir: dir.to_path_buf(),
        })
    }

    /// DNS address.
    pub fn dns_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether pdns runs.
    pub fn is_running(&mut self) -> bool {
        self.pdns.is_running()
    }

    /// Where its log and sockets are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Runs SQL on a server with `psql` (ON_ERROR_STOP), returning unaligned tuples-only output.
pub fn psql(db: &PgEndpoint, sql: &str) -> Result<String> {
    let mut c = Command::new("psql");
    c.arg(db.conninfo())
        .args(["-v", "ON_ERROR_STOP=1", "-qAtX", "-c"])
        .arg(sql);
    run(c)
}

/// Applies every migration's `up.sql` in order with `psql`.
pub fn apply_schema(db: &PgEndpoint) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql/migrations");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .with_context(|| format!("reading {}", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("up.sql").exists())
        .collect();
    dirs.sort();
    for d in dirs {
        let mut c = Command::new("psql");
        c.arg(db.conninfo())
            .args(["-v", "ON_ERROR_STOP=1", "-qX", "-f"])
            .arg(d.join("up.sql"));
        run(c).with_context(|| format!("applying {}", d.display()))?;
    }
    Ok(())
}

/// The SOA `minimum` (negative TTL) of the seeded zones.
pub const SEED_NEGATIVE_TTL: u32 = 5;

/// Seeds the two dev zones (`a.tunnel.test`, `free.tunnel.test`) with SOA, NS, `ns1`, and a
/// host record per region, plus the `regions` rows and one freshly heartbeating edge each.
pub fn seed_zones(db: &PgEndpoint, regions: &[(&str, Ipv4Addr)]) -> Result<()> {
    let mut sql = String::from("BEGIN;\n");
    for zone in ["a.tunnel.test", "free.tunnel.test"] {
        sql.push_str(&format!(
            "INSERT INTO domains(name, type) VALUES ('{zone}', 'NATIVE');\n\
             INSERT INTO records(domain_id, name, type, content, ttl) \
               SELECT id, '{zone}', 'SOA', 'ns1.{zone}. hostmaster.{zone}. 1 10800 3600 604800 {neg}', 3600 FROM domains WHERE name='{zone}';\n\
             INSERT INTO records(domain_id, name, type, content, ttl) \
               SELECT id, '{zone}', 'NS', 'ns1.{zone}.', 3600 FROM domains WHERE name='{zone}';\n\
             INSERT INTO records(domain_id, name, type, content, ttl) \
               SELECT id, 'ns1.{zone}', 'A', '127.0.0.1', 3600 FROM domains WHERE name='{zone}';\n",
            neg = SEED_NEGATIVE_TTL
        ));
        for (r, ip) in regions {
            sql.push_str(&format!(
                "INSERT INTO records(domain_id, name, type, content, ttl) \
                   SELECT id, '{r}.{zone}', 'A', '{ip}', 300 FROM domains WHERE name='{zone}';\n"
            ));
        }
    }
    for (r, ip) in regions {
        sql.push_str(&format!(
            "INSERT INTO regions(name, ipv4) VALUES ('{r}', '{ip}');\n\
             INSERT INTO edges(id, region, admin_url) VALUES ('edge-{r}', '{r}', 'http://{ip}:9090');\n"
        ));
    }
    sql.push_str("COMMIT;\n");
    psql(db, &sql).map(|_| ())
}

/// Waits until `replica` has replayed everything the primary had written when called.
pub fn wait_replayed(primary: &PgEndpoint, replica: &PgEndpoint) -> Result<()> {
    let target = psql(primary, "SELECT pg_current_wal_lsn()")?;
    let target = target.trim();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = psql(
            replica,
            &format!("SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"),
        )?;
        if ok.trim() == "t" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("replica {} did not replay {target}", replica.region);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `dig` and returns its stdout (`args` after `@server -p port`).
pub fn dig(server: SocketAddr, args: &[&str]) -> Result<String> {
    let mut c = Command::new("dig");
    c.arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args(["+time=2", "+tries=2"])
        .args(args);
    run(c)
}

/// `A`.
pub const QTYPE_A: u16 = 1;
/// `NS`.
pub const QTYPE_NS: u16 = 2;
/// `CNAME`.
pub const QTYPE_CNAME: u16 = 5;
/// `SOA`.
pub const QTYPE_SOA: u16 = 6;
/// `TXT`.
pub const QTYPE_TXT: u16 = 16;
/// `AAAA`.
pub const QTYPE_AAAA: u16 = 28;
/// NOERROR.
pub const RCODE_NOERROR: u8 = 0;
/// SERVFAIL.
pub const RCODE_SERVFAIL: u8 = 2;
/// NXDOMAIN.
pub const RCODE_NXDOMAIN: u8 = 3;
/// REFUSED.
pub const RCODE_REFUSED: u8 = 5;

/// One resource record of a response, data in presentation form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRecord {
    /// Owner, lowercase with trailing dot.
    pub name: String,
    /// Type code.
    pub rtype: u16,
    /// TTL.
    pub ttl: u32,
    /// A/AAAA address, CNAME/NS target, SOA fields, or hex for other types.
    pub data: String,
}

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsResponse {
    /// Response code.
    pub rcode: u8,
    /// Answer section.
    pub answers: Vec<DnsRecord>,
    /// Authority section.
    pub authority: Vec<DnsRecord>,
}

impl DnsResponse {
    /// Data of the answers of type `rtype`, sorted.
    pub fn data_of(&self, rtype: u16) -> Vec<String> {
        let mut v: Vec<String> = self
            .answers
            .iter()
            .filter(|r| r.rtype == rtype)
            .map(|r| r.data.clone())
            .collect();
        v.sort();
        v
    }
}

/// Sends one UDP query (no recursion desired) from `source` (default 127.0.0.1) and parses
/// the response; 2 s timeout.
pub fn query(
    server: SocketAddr,
    name: &str,
    qtype: u16,
    source: Option<Ipv4Addr>,
) -> Result<DnsResponse> {
    let sock = UdpSocket::bind((source.unwrap_or(Ipv4Addr::LOCALHOST), 0))?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    query_on(&sock, server, name, qtype)
}

/// Like [`query`] on an existing socket (for tight loops).
pub fn query_on(
    sock: &UdpSocket,
    server: SocketAddr,
    name: &str,
    qtype: u16,
) -> Result<DnsResponse> {
    let id: u16 =
        (Instant::now().elapsed().subsec_nanos() as u16) ^ (std::process::id() as u16) ^ next_id();
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            bail!("bad name {name:?}");
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    sock.send_to(&q, server)?;
    let mut buf = [0u8; 4096];
    loop {
        let (n, _) = sock
            .recv_from(&mut buf)
            .context("waiting for a DNS response")?;
        let msg = &buf[..n];
        if n < 12 || msg[0..2] != id.to_be_bytes() {
            continue;
        }
        return parse_response(msg);
    }
}

fn next_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static N: AtomicU16 = AtomicU16::new(1);
    N.fetch_add(7919, Ordering::Relaxed)
}

fn parse_response(msg: &[u8]) -> Result<DnsResponse> {
    let rd16 = |o: usize| -> Result<u16> {
        Ok(u16::from_be_bytes([
            *msg.get(o).context("short")?,
            *msg.get(o + 1).context("short")?,
        ]))
    };
    let rcode = msg[3] & 0x0f;
    let qd = rd16(4)?;
    let an = rd16(6)?;
    let ns = rd16(8)?;
    let mut off = 12;
    for _ in 0..qd {
        let (_, next) = read_name(msg, off)?;
        off = next + 4;
    }
    let mut sections = [Vec::new(), Vec::new()];
    for (i, count) in [an, ns].into_iter().enumerate() {
        for _ in 0..count {
            let (name, next) = read_name(msg, off)?;
            let rtype = rd16(next)?;
            let ttl = (u32::from(rd16(next + 4)?) << 16) | u32::from(rd16(next + 6)?);
            let len = rd16(next + 8)? as usize;
            let start = next + 10;
            let rdata = msg.get(start..start + len).context("short rdata")?;
            let data = match rtype {
                QTYPE_A if len == 4 => {
                    Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]).to_string()
                }
                QTYPE_AAAA if len == 16 => {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(rdata);
                    IpAddr::V6(Ipv6Addr::from(b)).to_string()
                }
                QTYPE_CNAME | QTYPE_NS => read_name(msg, start)?.0,
                QTYPE_SOA => {
                    let (mname, o) = read_name(msg, start)?;
                    let (rname, o) = read_name(msg, o)?;
                    let nums: Vec<String> = (0..5)
                        .map(|i| {
                            let hi = rd16(o + i * 4).unwrap_or(0) as u32;
                            let lo = rd16(o + i * 4 + 2).unwrap_or(0) as u32;
                            ((hi << 16) | lo).to_string()
                        })
                        .collect();
                    format!("{mname} {rname} {}", nums.join(" "))
                }
                _ => rdata.iter().map(|b| format!("{b:02x}")).collect(),
            };
            sections[i].push(DnsRecord {
                name,
                rtype,
                ttl,
                data,
            });
            off = start + len;
        }
    }
    let [answers, authority] = sections;
    Ok(DnsResponse {
        rcode,
        answers,
        authority,
    })
}

fn read_name(msg: &[u8], mut off: usize) -> Result<(String, usize)> {
    let mut name = String::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *msg.get(off).context("short name")? as usize;
        if len == 0 {
            if name.is_empty() {
                name.push('.');
            }
            return Ok((name, end.unwrap_or(off + 1)));
        }
        if len & 0xc0 == 0xc0 {
            let ptr = ((len & 0x3f) << 8) | *msg.get(off + 1).context("short pointer")? as usize;
            end.get_or_insert(off + 2);
            off = ptr;
            continue;
        }
        let label = msg.get(off + 1..off + 1 + len).context("short label")?;
        name.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
        name.push('.');
        off += 1 + len;
    }
    bail!("name compression loop")
}

/// A primary (us, 127.0.0.1) and one streaming replica (eu, 127.0.0.2) on free ports in
/// `dir`, `fsync` off: the DNS tests' and benchmark's database.
pub fn primary_and_replica(dir: &Path) -> Result<crate::postgres::PgCluster> {
    use crate::postgres::{PgCluster, PgClusterConfig};
    let us = Ipv4Addr::new(127, 0, 0, 1);
    let eu = Ipv4Addr::new(127, 0, 0, 2);
    PgCluster::start(
        &dir.join("pg"),
        &PgClusterConfig {
            primary: PgEndpoint {
                region: "us".into(),
                ip: us,
                port: free_port(us),
            },
            replicas: vec![PgEndpoint {
                region: "eu".into(),
                ip: eu,
                port: free_port(eu),
            }],
            fsync: false,
        },
    )
}

/// A primary (`us`, 127.0.0.1) with one streaming replica (`eu`, 127.0.0.2), the schema and
/// the dev zones, and the eu region's pdns + backend reading the replica. Everything stops
/// and the directory is removed when it is dropped, also when a test fails.
pub struct DnsFixture {
    /// eu's pdns + backend.
    pub region: PdnsRegion,
    /// The databases.
    pub pg: crate::postgres::PgCluster,
    /// Data and logs.
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl DnsFixture {
    /// Starts everything; `tweak` adjusts eu's pdns spec before it starts.
    pub fn start(tweak: impl FnOnce(&mut PdnsSpec)) -> Result<DnsFixture> {
        let tmp = tempfile::Builder::new().prefix("nearhop-dns-").tempdir()?;
        let dir = tmp.path().to_path_buf();
        let pg = primary_and_replica(&dir)?;
        let (us, eu) = (pg.primary.endpoint.ip, pg.replicas[0].endpoint.ip);
        apply_schema(&pg.primary.endpoint)?;
        seed_zones(
            &pg.primary.endpoint,
            &[("us", us), ("eu", eu), ("ap", Ipv4Addr::new(127, 0, 0, 3))],
        )?;
        let replica = pg.replicas[0].endpoint.clone();
        wait_replayed(&pg.primary.endpoint, &replica)?;
        let mut spec = PdnsSpec::for_tests("eu", eu, replica.conninfo());
        tweak(&mut spec);
        let region = PdnsRegion::start(&dir.join("dns-eu"), &spec)?;
        Ok(DnsFixture {
            region,
            pg,
            dir,
            _tmp: tmp,
        })
    }

    /// The primary.
    pub fn primary(&self) -> &PgEndpoint {
        &self.pg.primary.endpoint
    }

    /// The replica the region reads.
    pub fn replica(&self) -> &PgEndpoint {
        &self.pg.replicas[0].endpoint
    }

    /// Runs SQL on the primary.
    pub fn sql(&self, sql: &str) -> Result<String> {
        psql(self.primary(), sql)
    }

    /// Commits a tunnel CNAME on the primary and returns the commit position (as control does).
    pub fn add_cname(&self, zone: &str, label: &str, target: &str) -> Result<String> {
        self.sql(&format!(
            "INSERT INTO records(domain_id, name, type, content, ttl) \
             SELECT id, '{label}.{zone}', 'CNAME', '{target}', 10 FROM domains WHERE name='{zone}'"
        ))?;
        Ok(self.sql("SELECT pg_current_wal_lsn()")?.trim().to_string())
    }

    /// Waits until the backend's applied position reaches `lsn` (through `/v1/wait`).
    pub fn wait_applied(&self, lsn: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let url = format!(
                "{}/v1/wait?lsn={lsn}&timeout_ms=1000",
                self.region.backend_url()
            );
            let v: serde_json::Value = reqwest::blocking::get(url)?.error_for_status()?.json()?;
            if v["reached"] == serde_json::Value::Bool(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("backend did not apply {lsn}: {v}");
            }
        }
    }
}
