//! Pebble, the ACME test server (Debian package `pebble`), on free loopback ports, its
//! DNS-01 checks asked of the stack's own `pdns_server`.
//!
//! The package ships no certificate for Pebble's own HTTPS listener, so one is made here:
//! a throwaway CA (`listener-ca.pem`, what control trusts as `acme_ca_root_path`) and a leaf
//! for 127.0.0.1 and localhost signed by it. The CA that *issues* certificates is Pebble's
//! own, new at every start: [`Pebble::issuing_root_pem`] fetches it (`/roots/0` on the
//! management port) for clients that verify an edge's certificate.

use crate::ports::free_port;
use crate::process::ChildGuard;
use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A running Pebble; stopped (by its PID, through its [`ChildGuard`]) when dropped.
pub struct Pebble {
    /// The ACME directory, e.g. `https://127.0.0.1:14000/dir`.
    pub directory_url: String,
    /// The management API's base URL (`/roots/0`, `/intermediates/0`).
    pub management_url: String,
    /// The root certificate of Pebble's own HTTPS listener (PEM file).
    pub listener_ca: PathBuf,
    /// The DNS server Pebble validates DNS-01 challenges against.
    pub dns_server: SocketAddr,
    dir: PathBuf,
    process: Option<ChildGuard>,
}

/// Fixed ports for `make up`: ACME directory and management API.
pub const FIXED_PORTS: (u16, u16) = (14000, 15000);

fn openssl(args: &[&str], dir: &Path) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A CA and a leaf for 127.0.0.1/localhost signed by it, for Pebble's listener.
fn listener_certificate(dir: &Path) -> Result<()> {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-days",
        "30",
        "-subj",
        "/CN=nearhop test: Pebble listener CA",
        "-keyout",
        "listener-ca-key.pem",
        "-out",
        "listener-ca.pem",
    ]);
    openssl(&ca, dir)?;
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "listener-key.pem",
        "-out",
        "listener.csr",
    ]);
    openssl(&csr, dir)?;
    std::fs::write(
        dir.join("listener-ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "listener.csr",
            "-CA",
            "listener-ca.pem",
            "-CAkey",
            "listener-ca-key.pem",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "listener-ext.cnf",
            "-out",
            "listener-cert.pem",
        ],
        dir,
    )
}

impl Pebble {
    /// Starts Pebble in `dir` on free ports of 127.0.0.1 (or [`FIXED_PORTS`]), validating
    /// against `dns_server`, and waits until its directory answers.
    pub fn start(dir: &Path, dns_server: SocketAddr, fixed_ports: bool) -> Result<Pebble> {
        std::fs::create_dir_all(dir)?;
        let dir = std::path::absolute(dir)?;
        listener_certificate(&dir)?;
        let ip = Ipv4Addr::LOCALHOST;
        let (acme, mgmt) = if fixed_ports {
            FIXED_PORTS
        } else {
            (free_port(ip), free_port(ip))
        };
        // Pebble dials these for http-01 and tls-alpn-01, which nearhop does not use.
        let (http01, tlsalpn01) = (free_port(ip), free_port(ip));
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("{ip}:{acme}"),
                "managementListenAddress": format!("{ip}:{mgmt}"),
                "certificate": dir.join("listener-cert.pem"),
                "privateKey": dir.join("listener-key.pem"),
                "httpPort": http01,
                "tlsPort": tlsalpn01,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        let config_path = dir.join("pebble-config.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
        let mut cmd = Command::new("pebble");
        cmd.arg("-config")
            .arg(&config_path)
            .arg("-dnsserver")
            .arg(dns_server.to_string())
            // No random sleep before validating, no rejected nonces, and a fresh
            // authorization (so a real DNS-01 check) for every order.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0");
        let process = ChildGuard::spawn("pebble", cmd, &dir.join("pebble.log"), libc::SIGTERM)?;
        let mut me = Pebble {
            directory_url: format!("https://{ip}:{acme}/dir"),
            management_url: format!("https://{ip}:{mgmt}"),
            listener_ca: dir.join("listener-ca.pem"),
            dns_server,
            dir,
            process: Some(process),
        };
        me.wait_ready()?;
        Ok(me)
    }

    fn client(&self) -> Result<reqwest::blocking::Client> {
        let pem = std::fs::read(&self.listener_ca)?;
        Ok(reqwest::blocking::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
            .timeout(Duration::from_secs(5))
            .build()?)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let http = self.client()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match http.get(&self.directory_url).send() {
                Ok(r) if r.status().is_success() => return Ok(()),
                _ => {}
            }
            if let Some(p) = self.process.as_mut() {
                p.check_running()?;
            }
            if Instant::now() > deadline {
                bail!(
                    "Pebble's directory did not answer in 30 s; see {}",
                    self.log().display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The root of the CA that issues Pebble's certificates (PEM), new at every start.
    pub fn issuing_root_pem(&self) -> Result<String> {
        self.client()?
            .get(format!("{}/roots/0", self.management_url))
            .send()?
            .error_for_status()?
            .text()
            .context("reading Pebble's root")
    }

    /// Writes [`Pebble::issuing_root_pem`] to `pebble-root.pem` in Pebble's directory.
    pub fn write_issuing_root(&self) -> Result<PathBuf> {
        let path = self.dir.join("pebble-root.pem");
        std::fs::write(&path, self.issuing_root_pem()?)?;
        Ok(path)
    }

    /// Control's settings for this server (appended to control's TOML).
    pub fn control_toml(&self) -> String {
        format!(
            "acme_enabled = true\nacme_directory_url = \"{}\"\nacme_ca_root_path = \"{}\"\n",
            self.directory_url,
            self.listener_ca.display()
        )
    }

    /// Pebble's log.
    pub fn log(&self) -> PathBuf {
        self.dir.join("pebble.log")
    }

    /// When the process has exited by itself since the last look: a sentence saying so
    /// ([`ChildGuard::take_exit`]).
    pub fn take_exit(&mut self) -> Option<String> {
        self.process.as_mut()?.take_exit()
    }

    /// Whether it runs.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(|p| p.is_running())
    }

    /// Stops Pebble (SIGTERM to its PID, then SIGKILL); the struct stays for its paths.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop();
        }
    }
}
