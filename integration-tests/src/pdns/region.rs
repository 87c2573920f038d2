//! One region's DNS as deployed: `pdns_server` with the remote backend, nearhop-pdns-backend
//! reading the region's replica, over the chosen connector.

use super::process::{open_up, pdns_base_command, socket_dir, wait_answering};
use super::{Caches, Connector};
use crate::control::bin_path;
use crate::ports::free_port;
use crate::process::{run, tail, ChildGuard};
use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

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
    /// Per zone, what its names without records answer (`unknown_names`: `"nearest_edge"` or
    /// `"nxdomain"`); zones not listed answer NXDOMAIN.
    pub unknown_names: Vec<(String, String)>,
    /// pdns `receiver-threads`.
    pub receiver_threads: u32,
    /// pdns `distributor-threads`.
    pub distributor_threads: u32,
    /// Addresses (`allow-axfr-ips`) that may transfer the zones; empty, as deployed when the
    /// operator names no secondaries: zone transfers are off (`disable-axfr=yes`).
    pub axfr_from: Vec<String>,
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
            unknown_names: Vec::new(),
            receiver_threads: 1,
            distributor_threads: 3,
            axfr_from: Vec::new(),
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
            .arg("--consistent-backends=no")
            // pdns asks a remote backend for TSIG keys only with this on; the backend serves
            // no DNSSEC keys, so no zone is signed (deploy/pdns/pdns.conf).
            .arg("--remote-dnssec=yes");
        // Zone transfers list every tunnel name: off unless secondaries are named, as in
        // deploy/pdns/pdns.conf.
        if spec.axfr_from.is_empty() {
            cmd.args(["--disable-axfr=yes", "--allow-axfr-ips="]);
        } else {
            cmd.arg("--disable-axfr=no")
                .arg(format!("--allow-axfr-ips={}", spec.axfr_from.join(",")));
        }
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
        let what = format!("pdns ({})", self.spec.region);
        let addr = self.dns_addr();
        let backend = &mut self.backend;
        wait_answering(&what, &mut self.pdns, addr, || match backend.as_mut() {
            Some(b) => b.check_running(),
            None => Ok(()),
        })
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

    /// What has exited by itself since the last look, `pdns_server` or the backend: a
    /// sentence for each ([`ChildGuard::take_exit`]).
    pub fn take_exits(&mut self) -> Vec<String> {
        let backend = self.backend.as_mut().and_then(|b| b.take_exit());
        self.pdns.take_exit().into_iter().chain(backend).collect()
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

    /// Sends `sig` to the backend process (`SIGSTOP`/`SIGCONT` hold it behind the database).
    pub fn signal_backend(&self, sig: i32) {
        if let Some(b) = &self.backend {
            b.signal(sig);
        }
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
    for (zone, answer) in &spec.unknown_names {
        t.push_str(&format!("\n[zones.{zone:?}]\nunknown_names = {answer:?}\n"));
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
