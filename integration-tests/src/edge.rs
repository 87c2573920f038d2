//! Starts `nearhop-edge` processes, and drives the stock OpenSSH client against them the way
//! users do (`ssh -R0:localhost:PORT TOKEN@host`), for the stack and the edge tests.

use crate::control::bin_path;
use crate::ports::free_port;
use crate::process::{tail, ChildGuard};
use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// What an edge is started with.
#[derive(Debug, Clone)]
pub struct EdgeSpec {
    /// Edge id, e.g. `us-1`.
    pub edge_id: String,
    /// Region.
    pub region: String,
    /// Loopback address of the region.
    pub ip: Ipv4Addr,
    /// SSH port.
    pub ssh: u16,
    /// Visitor HTTP port.
    pub http: u16,
    /// Visitor TLS port (`tls` tunnels).
    pub tls: u16,
    /// Admin API port.
    pub admin: u16,
    /// Mesh port (peer edges relay visitors here).
    pub mesh: u16,
    /// First and last public TCP port for `tcp` tunnels.
    pub tcp_ports: (u16, u16),
    /// Control's base URL.
    pub control_url: String,
    /// The edge's own credential (`nearhop-control edge issue`).
    pub credential: String,
    /// More TOML appended verbatim (e.g. `keepalive_interval_seconds = 1`).
    pub extra_toml: String,
    /// Another `nearhop-edge` build to run instead of the workspace's (benchmark A/B runs).
    pub binary: Option<PathBuf>,
}

impl EdgeSpec {
    /// An edge `{region}-1` on free ports of `ip`, logging in to control with `credential`.
    pub fn for_tests(region: &str, ip: Ipv4Addr, control_url: &str, credential: &str) -> EdgeSpec {
        let tcp = free_port(ip);
        EdgeSpec {
            edge_id: format!("{region}-1"),
            region: region.into(),
            ip,
            ssh: free_port(ip),
            http: free_port(ip),
            tls: free_port(ip),
            admin: free_port(ip),
            mesh: free_port(ip),
            tcp_ports: (tcp, tcp.saturating_add(20)),
            control_url: control_url.into(),
            credential: credential.into(),
            extra_toml: String::new(),
            binary: None,
        }
    }

    fn to_toml(&self, dir: &Path) -> String {
        format!(
            "edge_id = \"{}\"\nregion = \"{}\"\ncontrol_url = \"{}\"\ncredential = \"{}\"\n\
             mesh_listen = \"{}:{}\"\n\
             ssh_listen = \"{}:{}\"\nhttp_listen = \"{}:{}\"\ntls_listen = \"{}:{}\"\n\
             admin_listen = \"{}:{}\"\nhost_key_path = \"{}\"\ntcp_port_range = [{}, {}]\n\
             tcp_host = \"{}\"\n{}\n",
            self.edge_id,
            self.region,
            self.control_url,
            self.credential,
            self.ip,
            self.mesh,
            self.ip,
            self.ssh,
            self.ip,
            self.http,
            self.ip,
            self.tls,
            self.ip,
            self.admin,
            dir.join("ssh_host_ed25519_key").display(),
            self.tcp_ports.0,
            self.tcp_ports.1,
            // A `tcp` port exists on this edge only: its URL names the edge's own address.
            self.ip,
            self.extra_toml
        )
    }
}

/// A running edge.
pub struct EdgeProcess {
    /// How it was started.
    pub spec: EdgeSpec,
    /// Its config file.
    pub config_path: PathBuf,
    log: PathBuf,
    process: Option<ChildGuard>,
}

/// How long a dropped edge (the stack stopping) has to stop before it is killed: its drain
/// (`drain_seconds`, 10 by default) and then the closes, the goodbyes to its clients and
/// the word to control that it stopped.
const STOP_GRACE: Duration = Duration::from_secs(15);

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        self.stop_within(STOP_GRACE);
    }
}

impl EdgeProcess {
    /// Writes the config, starts the edge and waits until its admin API answers.
    pub fn start(dir: &Path, spec: EdgeSpec) -> Result<EdgeProcess> {
        std::fs::create_dir_all(dir)?;
        let config_path = dir.join("edge.toml");
        std::fs::write(&config_path, spec.to_toml(dir))?;
        let mut me = EdgeProcess {
            log: dir.join("edge.log"),
            spec,
            config_path,
            process: None,
        };
        me.restart()?;
        Ok(me)
    }

    /// Starts the process (again) and waits for `/healthz`.
    pub fn restart(&mut self) -> Result<()> {
        if self.process.as_mut().is_some_and(|p| p.is_running()) {
            return Ok(());
        }
        let binary = match &self.spec.binary {
            Some(b) => b.clone(),
            None => bin_path("nearhop-edge")?,
        };
        let mut cmd = Command::new(binary);
        cmd.arg("--config").arg(&self.config_path);
        cmd.env(
            "NEARHOP_LOG",
            std::env::var("NEARHOP_TEST_LOG")
                .unwrap_or_else(|_| "info,russh=warn,h2=error,rustls=error".into()),
        );
        self.process = Some(ChildGuard::spawn(
            "nearhop-edge",
            cmd,
            &self.log,
            libc::SIGTERM,
        )?);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http_get(&format!("{}/healthz", self.admin_url())).is_ok() {
                return Ok(());
            }
            if let Some(p) = self.process.as_mut() {
                p.check_running()?;
            }
            if Instant::now() > deadline {
                bail!("edge did not answer in 30 s; see {}", self.log.display());
            }
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    /// Stops the edge gracefully (SIGTERM), then SIGKILL after `grace`.
    pub fn stop_within(&mut self, grace: Duration) {
        if let Some(mut p) = self.process.take() {
            p.stop_within(grace);
        }
    }

    /// When the process has exited by itself since the last look: a sentence saying so
    /// ([`ChildGuard::take_exit`]).
    pub fn take_exit(&mut self) -> Option<String> {
        self.process.as_mut()?.take_exit()
    }

    /// Whether the process runs.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(|p| p.is_running())
    }

    /// The process id, if running.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid())
    }

    /// SSH address.
    pub fn ssh_addr(&self) -> SocketAddr {
        SocketAddr::from((self.spec.ip, self.spec.ssh))
    }

    /// Visitor HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from((self.spec.ip, self.spec.http))
    }

    /// Visitor TLS address (also plain HTTP and SSH, with `ssh_on_tls_port`).
    pub fn tls_addr(&self) -> SocketAddr {
        SocketAddr::from((self.spec.ip, self.spec.tls))
    }

    /// Admin base URL.
    pub fn admin_url(&self) -> String {
        format!("http://{}:{}", self.spec.ip, self.spec.admin)
    }

    /// The Prometheus text.
    pub fn metrics(&self) -> Result<String> {
        http_get(&format!("{}/metrics", self.admin_url()))
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The last lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }
}

fn http_get(url: &str) -> Result<String> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let r = client.get(url).send()?;
    if !r.status().is_success() {
        bail!("GET {url}: {}", r.status());
    }
    Ok(r.text()?)
}

/// One run of the stock OpenSSH client, its stdout and stderr captured to files.
pub struct SshClient {
    guard: ChildGuard,
    out: PathBuf,
    err: PathBuf,
}

/// How to run `ssh`.
#[derive(Debug, Clone, Default)]
pub struct SshArgs {
    /// `user@` part (token and keywords); `None` leaves the local user name.
    pub user: Option<String>,
    /// `-R` specs, e.g. `0:localhost:8000` or `blog:0:localhost:8000`.
    pub forwards: Vec<String>,
    /// Pass `-N` (no session channel).
    pub no_command: bool,
    /// Words after the host (tunnel options).
    pub command: Vec<String>,
    /// Extra `-o` options.
    pub options: Vec<String>,
}

impl SshArgs {
    /// An HTTP tunnel to local `port` (`-R0:localhost:PORT`), logging in as `user`.
    pub fn http_tunnel(user: Option<&str>, port: u16) -> SshArgs {
        SshArgs {
            user: user.map(str::to_string),
            forwards: vec![format!("0:localhost:{port}")],
            ..SshArgs::default()
        }
    }
}

impl SshClient {
    /// Starts `ssh` in batch mode against `addr` with keepalives every second.
    pub fn start(dir: &Path, name: &str, addr: SocketAddr, args: &SshArgs) -> Result<SshClient> {
        std::fs::create_dir_all(dir)?;
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_file(&err);
        let mut cmd = Command::new("ssh");
        // ssh keeps the first value it sees for an option: the caller's come first.
        for o in &args.options {
            cmd.args(["-o", o]);
        }
        cmd.args(["-p", &addr.port().to_string()])
            .args(["-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "LogLevel=INFO"])
            .args(["-o", "ServerAliveInterval=1"])
            .args(["-o", "ServerAliveCountMax=30"])
            .args(["-o", "ExitOnForwardFailure=no"])
            .args(["-F", "/dev/null"]);
        for f in &args.forwards {
            cmd.arg("-R").arg(f);
        }
        if args.no_command {
            cmd.arg("-N");
        }
        let host = match &args.user {
            Some(u) => format!("{u}@{}", addr.ip()),
            None => addr.ip().to_string(),
        };
        cmd.arg(host);
        cmd.args(&args.command);
        // stdout and stderr go to separate files: `ChildGuard` writes both into one log, so
        // route them through a shell.
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg("exec \"$@\" >\"$NEARHOP_SSH_OUT\" 2>\"$NEARHOP_SSH_ERR\"")
            .arg("sh")
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .env("NEARHOP_SSH_OUT", &out)
            .env("NEARHOP_SSH_ERR", &err);
        let guard = ChildGuard::spawn(
            &format!("ssh {name}"),
            sh,
            &dir.join(format!("{name}.log")),
            libc::SIGTERM,
        )?;
        Ok(SshClient { guard, out, err })
    }

    /// The client's process id (`ssh` replaces the shell that starts it).
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// What the client printed on stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// What the client printed on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Both, stdout first.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout(), self.stderr())
    }

    /// Waits until the output holds `needle`; fails with the output after `timeout`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let all = self.output();
            if all.contains(needle) {
                return Ok(all);
            }
            if !self.guard.is_running() {
                // Read once more: the output may have landed as it exited.
                let all = self.output();
                if all.contains(needle) {
                    return Ok(all);
                }
                bail!("ssh exited without printing {needle:?}; it printed:\n{all}");
            }
            if Instant::now() > deadline {
                bail!("ssh did not print {needle:?} in {timeout:?}; it printed:\n{all}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the printed public URL (`http://`, `tcp://` or `tls://`) and returns it.
    pub fn wait_for_url(&mut self, timeout: Duration) -> Result<String> {
        self.wait_for_url_polling(timeout, Duration::from_millis(20))
    }

    /// Like [`SshClient::wait_for_url`], reading the output every `every`: the lag-race
    /// tests poll every millisecond, so that the first lookup follows the print as closely
    /// as a script would.
    pub fn wait_for_url_polling(&mut self, timeout: Duration, every: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let all = self.output();
            if let Some(url) = find_url(&all) {
                return Ok(url);
            }
            if !self.guard.is_running() || Instant::now() > deadline {
                bail!("ssh printed no URL; it printed:\n{}", self.output());
            }
            std::thread::sleep(every);
        }
    }

    /// Waits for the client to exit; returns its output.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        while self.guard.is_running() {
            if Instant::now() > deadline {
                bail!(
                    "ssh still running after {timeout:?}; it printed:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(self.output())
    }

    /// Whether the client still runs.
    pub fn is_running(&mut self) -> bool {
        self.guard.is_running()
    }

    /// Freezes the client (SIGSTOP): to the edge it looks like a dropped network.
    pub fn freeze(&self) {
        self.guard.signal(libc::SIGSTOP);
    }

    /// Lets a frozen client run again (SIGCONT).
    pub fn thaw(&self) {
        self.guard.signal(libc::SIGCONT);
    }

    /// Stops the client.
    pub fn stop(&mut self) {
        self.guard.stop_within(Duration::from_secs(2));
    }
}

/// The ready-to-paste command a user runs against `edge` (for `make up`): an HTTP tunnel
/// to local port 8000.
pub fn demo_command(edge: &EdgeProcess, token: &str) -> String {
    format!(
        "ssh -p {} -o ServerAliveInterval=30 -R0:localhost:8000 {token}@{}",
        edge.spec.ssh, edge.spec.ip
    )
}

/// The first `http://`, `tcp://` or `tls://` URL in `text`.
pub fn find_url(text: &str) -> Option<String> {
    text.split_whitespace()
        .find(|w| {
            ["http://", "tcp://", "tls://"]
                .iter()
                .any(|s| w.starts_with(s))
        })
        .map(|w| w.trim_end_matches(['.', ',', ')']).to_string())
}

/// Host and port of a printed URL (`http://name.zone:8080` → (`name.zone`, 8080)).
pub fn url_host_port(url: &str) -> Result<(String, u16)> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .context("URL without scheme")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rsplit_once(':') {
        Some((h, p)) => Ok((h.to_string(), p.parse().context("port")?)),
        None => Ok((authority.to_string(), 80)),
    }
}

/// The host name of a printed URL (panics on a URL that is not one: for tests).
pub fn host_of(url: &str) -> String {
    url_host_port(url).expect("url").0
}

/// The port of a printed URL (panics on a URL that is not one: for tests).
pub fn port_of(url: &str) -> u16 {
    url_host_port(url).expect("url").1
}

/// The dev zones' self-signed certificate in a temporary folder of its own, for an edge's
/// HTTPS in a test.
pub struct DevCertificate {
    _dir: tempfile::TempDir,
    /// The certificate (PEM), also the CA a visitor trusts.
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
}

impl DevCertificate {
    /// Makes one (panics if openssl cannot: tests only).
    pub fn make() -> DevCertificate {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = dev_zone_certificate(dir.path()).expect("dev certificate");
        DevCertificate {
            _dir: dir,
            cert,
            key,
        }
    }

    /// The edge settings that serve it.
    pub fn edge_toml(&self) -> String {
        format!(
            "tls_cert_path = \"{}\"\ntls_key_path = \"{}\"\n",
            self.cert.display(),
            self.key.display()
        )
    }
}

/// A self-signed certificate for the dev zones (`*.a.tunnel.test`, `*.free.tunnel.test` and
/// the zones themselves), made with `openssl` in `dir` for a local stack or a test (never
/// kept in the repository). Returns (certificate, key); the certificate is also the CA a
/// visitor trusts (`curl --cacert`).
pub fn dev_zone_certificate(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let (cert, key) = (dir.join("zone-cert.pem"), dir.join("zone-key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "30"])
        .args(["-subj", "/CN=nearhop local stack", "-addext"])
        .arg(
            "subjectAltName=DNS:*.a.tunnel.test,DNS:a.tunnel.test,\
             DNS:*.free.tunnel.test,DNS:free.tunnel.test",
        )
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl to make the dev zones' certificate")?;
    if !out.status.success() {
        bail!(
            "openssl could not make the dev zones' certificate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((cert, key))
}
