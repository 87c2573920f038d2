//! Starts `nearhop-control` against the stack's primary, and drives its operator CLI.

use crate::process::{run, ChildGuard};
use anyhow::{bail, Context, Result};
use nearhop_wire::{AccountCreated, Plan, RegisterEdgeRequest, TokenCreated};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The pro zone of the local stack.
pub const PRO_ZONE: &str = "a.tunnel.test";
/// The free zone of the local stack.
pub const FREE_ZONE: &str = "free.tunnel.test";
/// The SOA `minimum` (negative-caching TTL) control seeds both zones with.
pub const ZONE_NEGATIVE_TTL: u32 = 5;

/// One region as control sees it.
#[derive(Debug, Clone)]
pub struct ControlRegion {
    /// Region name.
    pub name: String,
    /// The region's edge address (its `<region>.<zone>` A record).
    pub ipv4: std::net::Ipv4Addr,
    /// The region's pdns-backend HTTP base URL, if it runs one.
    pub backend_url: Option<String>,
}

/// What control is started with.
#[derive(Debug, Clone)]
pub struct ControlSpec {
    /// API address.
    pub listen: SocketAddr,
    /// URL of the primary.
    pub database_url: String,
    /// Region of the primary.
    pub primary_region: String,
    /// All regions.
    pub regions: Vec<ControlRegion>,
    /// Lag-race bound (0: off).
    pub lag_wait_ms: u64,
    /// Regions waited for (`None`: all).
    pub wait_regions: Option<Vec<String>>,
    /// Lease length.
    pub lease_seconds: u64,
    /// Heartbeat interval told to edges.
    pub heartbeat_seconds: u64,
    /// Reaper interval.
    pub reap_interval_ms: u64,
    /// Free-zone creations per source per minute (0: unlimited).
    pub free_rate_limit: u64,
    /// Live anonymous tunnels per source prefix (0: unlimited; tests share 127.0.0.x).
    pub anonymous_per_source: u64,
    /// More TOML appended verbatim (zone policies and the like).
    pub extra_toml: String,
    /// Whether control also accepts the legacy secret shared by all edges (tests act as
    /// edges with it; `make up` turns it off, so that there only credentials work).
    pub legacy_edge_secret: bool,
}

impl ControlSpec {
    /// Defaults for tests: short lease, fast reaper, no free-zone rate limit.
    pub fn for_tests(
        listen: SocketAddr,
        database_url: String,
        regions: Vec<ControlRegion>,
    ) -> ControlSpec {
        ControlSpec {
            listen,
            database_url,
            primary_region: regions
                .first()
                .map(|r| r.name.clone())
                .unwrap_or_else(|| "us".into()),
            regions,
            lag_wait_ms: 3000,
            wait_regions: None,
            lease_seconds: 30,
            heartbeat_seconds: 5,
            reap_interval_ms: 250,
            free_rate_limit: 0,
            anonymous_per_source: 0,
            extra_toml: String::new(),
            legacy_edge_secret: true,
        }
    }

    fn to_toml(&self, edge_secret: &str, admin_secret: &str) -> String {
        let legacy = if self.legacy_edge_secret {
            format!("edge_secret = \"{edge_secret}\"\n")
        } else {
            String::new()
        };
        let mut t = format!(
            "listen = \"{}\"\ndatabase_url = \"{}\"\n{legacy}\
             admin_secret = \"{admin_secret}\"\nprimary_region = \"{}\"\nlag_wait_ms = {}\n\
             lease_seconds = {}\nheartbeat_seconds = {}\nreap_interval_ms = {}\n",
            self.listen,
            self.database_url,
            self.primary_region,
            self.lag_wait_ms,
            self.lease_seconds,
            self.heartbeat_seconds,
            self.reap_interval_ms
        );
        if let Some(w) = &self.wait_regions {
            let list: Vec<String> = w.iter().map(|r| format!("\"{r}\"")).collect();
            t.push_str(&format!("wait_regions = [{}]\n", list.join(", ")));
        }
        t.push_str(&self.extra_toml);
        t.push('\n');
        for r in &self.regions {
            t.push_str(&format!(
                "[[regions]]\nname = \"{}\"\nipv4 = \"{}\"\n",
                r.name, r.ipv4
            ));
            if let Some(b) = &r.backend_url {
                t.push_str(&format!("backend_url = \"{b}\"\n"));
            }
        }
        t.push_str(&format!(
            "[zones.pro]\nname = \"{PRO_ZONE}\"\nnegative_ttl = {ZONE_NEGATIVE_TTL}\n\
             max_tunnels_per_account = 50\nmax_names_per_account = 50\n\
             [zones.free]\nname = \"{FREE_ZONE}\"\nnegative_ttl = {ZONE_NEGATIVE_TTL}\n\
             time_limit_minutes = 60\ncreations_per_minute_per_source = {}\n\
             max_tunnels_per_account = 3\nmax_anonymous_tunnels_per_source = {}\n",
            self.free_rate_limit, self.anonymous_per_source
        ));
        // The zones' name servers lie inside them: their address records, as control seeds
        // them (the first region's address; port 53 is the stack's DNS port only in name).
        let ns_ip = self
            .regions
            .first()
            .map_or_else(|| "127.0.0.1".to_string(), |r| r.ipv4.to_string());
        t.push_str(&format!(
            "[nameserver_addresses]\n\"ns1.{PRO_ZONE}\" = [\"{ns_ip}\"]\n\
             \"ns1.{FREE_ZONE}\" = [\"{ns_ip}\"]\n"
        ));
        t
    }
}

/// A running control plane.
pub struct ControlProcess {
    /// Base URL of the API, e.g. `http://127.0.0.1:7080`.
    pub url: String,
    /// The legacy edge secret; control accepts it only with `legacy_edge_secret`.
    pub edge_secret: String,
    /// The admin secret.
    pub admin_secret: String,
    /// The config file it runs with.
    pub config_path: PathBuf,
    log: PathBuf,
    process: Option<ChildGuard>,
}

/// Path of a workspace binary: `$NEARHOP_BIN_DIR/<name>`, else `target/debug/<name>` (or
/// `target/release` with `NEARHOP_PROFILE=release`) beside this crate.
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let dir = match std::env::var("NEARHOP_BIN_DIR") {
        Ok(d) => PathBuf::from(d),
        Err(_) => {
            let target = std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
            let profile = std::env::var("NEARHOP_PROFILE").unwrap_or_else(|_| "debug".into());
            target.join(profile)
        }
    };
    let p = dir.join(name);
    if !p.exists() {
        bail!(
            "{} is missing: build the workspace first (cargo build --workspace --bins)",
            p.display()
        );
    }
    Ok(p)
}

fn random_secret() -> String {
    use std::io::Read;
    let mut b = [0u8; 24];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl ControlProcess {
    /// Writes the config, applies migrations and seeds zones (`migrate`), starts `serve`,
    /// waits for it.
    pub fn start(dir: &Path, spec: &ControlSpec) -> Result<ControlProcess> {
        let mut me = ControlProcess::configure(dir, spec)?;
        me.cli(&["migrate"]).context("nearhop-control migrate")?;
        me.restart()?;
        Ok(me)
    }

    /// Writes the config with fresh secrets; starts nothing.
    pub fn configure(dir: &Path, spec: &ControlSpec) -> Result<ControlProcess> {
        std::fs::create_dir_all(dir)?;
        let edge_secret = random_secret();
        let admin_secret = random_secret();
        let config_path = dir.join("control.toml");
        std::fs::write(&config_path, spec.to_toml(&edge_secret, &admin_secret))?;
        let me = ControlProcess {
            url: format!("http://{}", spec.listen),
            edge_secret,
            admin_secret,
            config_path,
            log: dir.join("control.log"),
            process: None,
        };
        Ok(me)
    }

    /// Another instance beside `like`, on the same database: writes `config` (like's, with
    /// a `listen` of its own) into `dir`; starts nothing.
    pub fn from_config(dir: &Path, config: &str, like: &ControlProcess) -> Result<ControlProcess> {
        std::fs::create_dir_all(dir)?;
        let config_path = dir.join("control.toml");
        std::fs::write(&config_path, config)?;
        let listen = config
            .lines()
            .find_map(|l| l.strip_prefix("listen = "))
            .map(|l| l.trim_matches('"').to_string())
            .context("the config has no listen line")?;
        Ok(ControlProcess {
            url: format!("http://{listen}"),
            edge_secret: like.edge_secret.clone(),
            admin_secret: like.admin_secret.clone(),
            config_path,
            log: dir.join("control.log"),
            process: None,
        })
    }

    /// Starts `serve` (again) and waits until `/healthz` answers.
    pub fn restart(&mut self) -> Result<()> {
        if self.process.as_mut().is_some_and(|p| p.is_running()) {
            return Ok(());
        }
        let mut cmd = Command::new(bin_path("nearhop-control")?);
        cmd.arg("--config").arg(&self.config_path).arg("serve");
        cmd.env(
            "RUST_LOG",
            std::env::var("NEARHOP_TEST_LOG").unwrap_or_else(|_| "info".into()),
        );
        self.process = Some(ChildGuard::spawn(
            "nearhop-control",
            cmd,
            &self.log,
            libc::SIGTERM,
        )?);
        let deadline = Instant::now() + Duration::from_secs(30);
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        loop {
            if let Ok(r) = http.get(format!("{}/healthz", self.url)).send() {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if let Some(p) = self.process.as_mut() {
                p.check_running()?;
            }
            if Instant::now() > deadline {
                bail!(
                    "control did not become healthy in 30 s; see {}",
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// When the process has exited by itself since the last look: a sentence saying so
    /// ([`ChildGuard::take_exit`]).
    pub fn take_exit(&mut self) -> Option<String> {
        self.process.as_mut()?.take_exit()
    }

    /// Stops the process (the stack's database stays up).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The process id of `serve`, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid())
    }

    /// Runs `nearhop-control --config <file> --json <args>` and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(bin_path("nearhop-control")?);
        cmd.arg("--config")
            .arg(&self.config_path)
            .arg("--json")
            .args(args);
        cmd.env("RUST_LOG", "warn");
        run(cmd)
    }

    /// `GET /metrics`.
    pub fn metrics(&self) -> Result<String> {
        Ok(http_client()?
            .get(format!("{}/metrics", self.url))
            .send()?
            .error_for_status()?
            .text()?)
    }

    /// Registers an edge as an edge does at its start (`POST /v1/edges/register` with the
    /// edge secret): the edge is then heartbeating as of now.
    pub fn register_edge(&self, edge_id: &str, region: &str, admin_url: &str) -> Result<()> {
        http_client()?
            .post(format!("{}/v1/edges/register", self.url))
            .bearer_auth(&self.edge_secret)
            .json(&RegisterEdgeRequest {
                edge_id: edge_id.into(),
                region: region.into(),
                admin_url: admin_url.into(),
                ..Default::default()
            })
            .send()?
            .error_for_status()
            .with_context(|| format!("registering edge {edge_id}"))?;
        Ok(())
    }

    /// Issues a credential for edge `edge_id` with the operator CLI (`edge issue`).
    pub fn issue_edge_credential(&self, edge_id: &str) -> Result<String> {
        let out = self.cli(&["edge", "issue", edge_id])?;
        let v: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("edge issue printed {out:?}"))?;
        v["credential"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("edge issue printed no credential: {out}"))
    }

    /// `wait_ms` of every `tunnel set up` line control logged, in order.
    pub fn setup_waits_ms(&self) -> Vec<u64> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("tunnel set up"))
            .filter_map(|l| {
                let plain = strip_ansi(l);
                let v = plain.split("wait_ms=").nth(1)?;
                v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
            })
            .collect()
    }

    /// Creates an account through the CLI.
    pub fn create_account(&self, plan: Plan) -> Result<AccountCreated> {
        let out = self.cli(&[
            "account",
            "create",
            "--plan",
            plan.as_str(),
            "--name",
            "test",
        ])?;
        serde_json::from_str(out.trim()).with_context(|| format!("parsing {out:?}"))
    }

    /// Creates another token for an account.
    pub fn create_token(&self, account_id: i64) -> Result<TokenCreated> {
        let out = self.cli(&["token", "create", "--account", &account_id.to_string()])?;
        serde_json::from_str(out.trim()).with_context(|| format!("parsing {out:?}"))
    }
}

/// A client for one call; no connection outlives it, so control stops without waiting.
fn http_client() -> Result<reqwest::blocking::Client> {
    Ok(reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()?)
}

/// `s` without terminal colour sequences (control's log is coloured on a terminal).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_legacy_edge_secret_is_written_only_when_asked_for() {
        let regions = vec![ControlRegion {
            name: "us".into(),
            ipv4: std::net::Ipv4Addr::LOCALHOST,
            backend_url: None,
        }];
        let listen = SocketAddr::from(([127, 0, 0, 1], 7080));
        let mut spec = ControlSpec::for_tests(listen, "postgres://x".into(), regions);
        let with = spec.to_toml("legacy-secret-0123", "admin");
        assert!(
            with.contains("edge_secret = \"legacy-secret-0123\""),
            "{with}"
        );
        spec.legacy_edge_secret = false;
        let without = spec.to_toml("legacy-secret-0123", "admin");
        assert!(!without.contains("edge_secret"), "{without}");
        assert!(without.contains("admin_secret = \"admin\""), "{without}");
    }
}
