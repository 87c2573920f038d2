//! The SSH clients other than OpenSSH that people open tunnels with: PuTTY's `plink`,
//! Dropbear's `dbclient` and Paramiko (`clients/paramiko_tunnel.py`), run against an edge
//! the way their users would, without a prompt: the edge's host key is pinned where the
//! client can (plink, Paramiko) and accepted where it cannot (`dbclient -y`).

use crate::edge::{find_url, EdgeProcess, SshArgs};
use crate::process::ChildGuard;
use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A client program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// PuTTY's command-line client (Debian: putty-tools).
    Plink,
    /// Dropbear's client (Debian: dropbear-bin).
    Dbclient,
    /// A Python program using Paramiko (PyPI: paramiko).
    Paramiko,
}

impl Client {
    /// Its name in logs and file names.
    pub fn name(self) -> &'static str {
        match self {
            Client::Plink => "plink",
            Client::Dbclient => "dbclient",
            Client::Paramiko => "paramiko",
        }
    }
}

/// The edge's SSH host key, as clients pin it.
#[derive(Debug, Clone)]
pub struct EdgeHostKey {
    /// `ssh-ed25519 AAAA...` (Paramiko compares it).
    pub public: String,
    /// `SHA256:...` (`plink -hostkey` takes it).
    pub sha256: String,
}

impl EdgeHostKey {
    /// Reads the key `edge` made at its first start, with `ssh-keygen`.
    pub fn of(edge: &EdgeProcess) -> Result<EdgeHostKey> {
        // The edge's test config keeps the key beside its config file (`EdgeSpec`).
        let key = edge.config_path.with_file_name("ssh_host_ed25519_key");
        let public = ssh_keygen(&["-y", "-f"], &key)?;
        let listing = ssh_keygen(&["-l", "-E", "sha256", "-f"], &key)?;
        let sha256 = listing
            .split_whitespace()
            .find(|w| w.starts_with("SHA256:"))
            .with_context(|| format!("no SHA256 fingerprint in {listing:?}"))?
            .to_string();
        Ok(EdgeHostKey {
            public: public.trim().to_string(),
            sha256,
        })
    }
}

fn ssh_keygen(args: &[&str], key: &Path) -> Result<String> {
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(args).arg(key);
    crate::process::run(cmd)
}

/// One run of a client, its output (stdout and stderr together) in a file.
pub struct ClientRun {
    guard: ChildGuard,
    log: PathBuf,
}

impl ClientRun {
    /// Starts `client` against the edge at `addr` with what `args` asks for (user, `-R`
    /// specs, the tunnel options as the command; `-N` where the client has it). `home` is
    /// the client's `$HOME`, where it may keep state (plink's random seed, dbclient's
    /// known hosts): a test's own directory, so nothing lands in the real one.
    pub fn start(
        client: Client,
        home: &Path,
        name: &str,
        addr: SocketAddr,
        host_key: &EdgeHostKey,
        args: &SshArgs,
    ) -> Result<ClientRun> {
        if !args.options.is_empty() {
            bail!(
                "{:?} are OpenSSH options; {} takes none",
                args.options,
                client.name()
            );
        }
        let cmd = match client {
            Client::Plink => plink(addr, host_key, args),
            Client::Dbclient => dbclient(addr, args),
            Client::Paramiko => paramiko(addr, host_key, args, &[])?,
        };
        ClientRun::spawn(client, cmd, home, name)
    }

    /// Paramiko, waiting `delay` between opening its session channel and sending its
    /// command (the tunnel's options): a client slow to say how its tunnel is protected.
    pub fn paramiko_delaying_command(
        home: &Path,
        name: &str,
        addr: SocketAddr,
        host_key: &EdgeHostKey,
        args: &SshArgs,
        delay: Duration,
    ) -> Result<ClientRun> {
        let delay = ["--exec-delay".to_string(), delay.as_secs_f64().to_string()];
        let cmd = paramiko(addr, host_key, args, &delay)?;
        ClientRun::spawn(Client::Paramiko, cmd, home, name)
    }

    fn spawn(client: Client, mut cmd: Command, home: &Path, name: &str) -> Result<ClientRun> {
        std::fs::create_dir_all(home)?;
        cmd.env("HOME", home);
        let log = home.join(format!("{name}.log"));
        let _ = std::fs::remove_file(&log);
        let guard = ChildGuard::spawn(
            &format!("{} {name}", client.name()),
            cmd,
            &log,
            libc::SIGTERM,
        )?;
        Ok(ClientRun { guard, log })
    }

    /// The client's process id.
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// What the client printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the output holds `needle`; fails with the output when the client exits
    /// without it or after `timeout`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_until(timeout, |out| out.contains(needle).then(|| out.to_string()))
            .with_context(|| format!("waiting for {needle:?}"))
    }

    /// Waits for the printed public URL and returns it.
    pub fn wait_for_url(&mut self, timeout: Duration) -> Result<String> {
        self.wait_until(timeout, find_url)
            .context("waiting for the tunnel's URL")
    }

    fn wait_until<T>(
        &mut self,
        timeout: Duration,
        mut found: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let running = self.guard.is_running();
            // Read after the check: what an exiting client printed is in the file by now.
            let out = self.output();
            if let Some(v) = found(&out) {
                return Ok(v);
            }
            if !running {
                bail!("the client exited; it printed:\n{out}");
            }
            if Instant::now() > deadline {
                bail!("nothing after {timeout:?}; the client printed:\n{out}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the client to exit; returns its output.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        while self.guard.is_running() {
            if Instant::now() > deadline {
                bail!(
                    "still running after {timeout:?}; it printed:\n{}",
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

    /// Stops the client.
    pub fn stop(&mut self) {
        self.guard.stop_within(Duration::from_secs(2));
    }
}

/// `plink -ssh -batch -v -P PORT -hostkey SHA256:... -R ... USER@HOST [OPTIONS]`. `-v`
/// puts PuTTY's event log (the ciphers chosen) in the output; `-batch` turns every prompt
/// into a failure.
fn plink(addr: SocketAddr, host_key: &EdgeHostKey, args: &SshArgs) -> Command {
    let mut cmd = Command::new("plink");
    cmd.args(["-ssh", "-batch", "-v"])
        .args(["-P", &addr.port().to_string()])
        .args(["-hostkey", &host_key.sha256]);
    for f in &args.forwards {
        cmd.args(["-R", f]);
    }
    if args.no_command {
        cmd.arg("-N");
    }
    cmd.arg(user_at(args, addr));
    cmd.args(&args.command);
    cmd
}

/// `dbclient -y -p PORT -R ... USER@HOST [OPTIONS]`. Dropbear has no way to name the key
/// it expects: `-y` accepts the edge's (and writes it to `$HOME/.ssh/known_hosts`).
fn dbclient(addr: SocketAddr, args: &SshArgs) -> Command {
    let mut cmd = Command::new("dbclient");
    // `-T`: no pty (its input is not a terminal here; dbclient would fail to set raw mode).
    cmd.args(["-y", "-T"])
        .args(["-p", &addr.port().to_string()]);
    for f in &args.forwards {
        cmd.args(["-R", f]);
    }
    if args.no_command {
        cmd.arg("-N");
    }
    cmd.arg(user_at(args, addr));
    cmd.args(&args.command);
    cmd
}

/// `python3 -u clients/paramiko_tunnel.py --port PORT --user USER --host-key KEY -R ...
/// HOST [OPTIONS]`.
fn paramiko(
    addr: SocketAddr,
    host_key: &EdgeHostKey,
    args: &SshArgs,
    flags: &[String],
) -> Result<Command> {
    if args.no_command {
        bail!("the Paramiko script always opens a session channel");
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/paramiko_tunnel.py");
    let mut cmd = Command::new("python3");
    cmd.arg("-u")
        .arg(script)
        .args(["--port", &addr.port().to_string()])
        .args(["--host-key", &host_key.public])
        .args([
            "--user",
            args.user
                .as_deref()
                .context("the Paramiko script needs a user")?,
        ]);
    for f in &args.forwards {
        cmd.args(["-R", f]);
    }
    cmd.args(flags);
    cmd.arg(addr.ip().to_string());
    cmd.args(&args.command);
    Ok(cmd)
}

fn user_at(args: &SshArgs, addr: SocketAddr) -> String {
    match &args.user {
        Some(u) => format!("{u}@{}", addr.ip()),
        None => addr.ip().to_string(),
    }
}
