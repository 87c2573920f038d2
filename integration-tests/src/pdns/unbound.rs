//! A real recursive resolver in front of the regions' DNS: `unbound` in the foreground, with
//! the zones stubbed to one region's `pdns_server`, caching as a visitor's ISP resolver does.

use crate::dns_client::dig;
use crate::poll::try_eventually;
use crate::ports::free_port;
use crate::process::ChildGuard;
use anyhow::{Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A running `unbound -d`, stopped when dropped.
pub struct Unbound {
    addr: SocketAddr,
    _process: ChildGuard,
}

/// One record of a resolver's answer, as `dig` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedRecord {
    /// Owner, lowercase with the trailing dot.
    pub name: String,
    /// TTL as the resolver gave it (counts down while cached).
    pub ttl: u32,
    /// Type mnemonic (`A`, `CNAME`, `SOA`).
    pub rtype: String,
    /// Data in presentation form.
    pub data: String,
}

/// What the resolver answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// `NOERROR`, `NXDOMAIN`, `SERVFAIL`, ...
    pub status: String,
    /// Answer section.
    pub answers: Vec<ResolvedRecord>,
    /// Authority section.
    pub authority: Vec<ResolvedRecord>,
}

impl Resolved {
    /// The first address of the answer (the end of a CNAME chain).
    pub fn addr(&self) -> Option<Ipv4Addr> {
        self.answers
            .iter()
            .find(|r| r.rtype == "A")
            .and_then(|r| r.data.parse().ok())
    }

    /// The CNAME target, if the answer has one.
    pub fn cname(&self) -> Option<&str> {
        self.answers
            .iter()
            .find(|r| r.rtype == "CNAME")
            .map(|r| r.data.as_str())
    }

    /// A one-line summary for failure messages.
    pub fn describe(&self) -> String {
        let rrs: Vec<String> = self
            .answers
            .iter()
            .map(|r| format!("{} {} {} {}", r.name, r.ttl, r.rtype, r.data))
            .collect();
        format!("{} [{}]", self.status, rrs.join("; "))
    }
}

impl Unbound {
    /// Starts unbound on a free port of 127.0.0.1, sending its queries from `source` (the
    /// address the apex map sees: a resolver "in" that region) to `pdns` for each of `zones`,
    /// and waits until it answers for the first zone. Its config, pid file and log go to `dir`.
    pub fn start(
        dir: &Path,
        source: Ipv4Addr,
        pdns: SocketAddr,
        zones: &[&str],
    ) -> Result<Unbound> {
        std::fs::create_dir_all(dir)?;
        let listen = Ipv4Addr::LOCALHOST;
        let port = free_port(listen);
        let mut conf = format!(
            "server:\n\
             \x20 verbosity: 1\n\
             \x20 num-threads: 1\n\
             \x20 interface: {listen}\n\
             \x20 port: {port}\n\
             \x20 do-ip6: no\n\
             \x20 outgoing-interface: {source}\n\
             \x20 do-not-query-localhost: no\n\
             \x20 access-control: 127.0.0.0/8 allow\n\
             \x20 chroot: \"\"\n\
             \x20 username: \"\"\n\
             \x20 directory: \"{dir}\"\n\
             \x20 pidfile: \"{dir}/unbound.pid\"\n\
             \x20 use-syslog: no\n\
             \x20 logfile: \"\"\n\
             \x20 # no DNSSEC validation: the test zones are unsigned\n\
             \x20 module-config: \"iterator\"\n\
             \x20 qname-minimisation: no\n\
             \x20 # `test.` is a special-use name unbound answers itself by default\n\
             \x20 local-zone: \"test.\" nodefault\n\
             remote-control:\n\
             \x20 control-enable: no\n",
            dir = dir.display(),
        );
        for zone in zones {
            conf.push_str(&format!(
                "stub-zone:\n  name: \"{zone}\"\n  stub-addr: {}@{}\n",
                pdns.ip(),
                pdns.port()
            ));
        }
        let conf_path = dir.join("unbound.conf");
        std::fs::write(&conf_path, conf)?;
        let mut cmd = Command::new("unbound");
        cmd.arg("-d").arg("-c").arg(&conf_path);
        let mut process =
            ChildGuard::spawn("unbound", cmd, &dir.join("unbound.log"), libc::SIGTERM)?;
        let unbound_addr = SocketAddr::from((listen, port));
        let first = zones.first().copied().unwrap_or("a.tunnel.test");
        try_eventually(Duration::from_secs(30), || {
            process.check_running()?;
            let r = resolve_at(unbound_addr, first, "SOA")?;
            anyhow::ensure!(r.status == "NOERROR", "{}", r.describe());
            Ok(())
        })
        .context("unbound answers")?;
        Ok(Unbound {
            addr: unbound_addr,
            _process: process,
        })
    }

    /// The resolver's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Asks the resolver (recursion desired, as a stub resolver asks) for `name` `qtype`.
    pub fn resolve(&self, name: &str, qtype: &str) -> Result<Resolved> {
        resolve_at(self.addr, name, qtype)
    }
}

fn resolve_at(addr: SocketAddr, name: &str, qtype: &str) -> Result<Resolved> {
    let out = dig(
        addr,
        &[name, qtype, "+noall", "+comments", "+answer", "+authority"],
    )?;
    let status = out
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .with_context(|| format!("no status in dig's output:\n{out}"))?
        .to_string();
    let mut answers = Vec::new();
    let mut authority = Vec::new();
    let mut section = None;
    for line in out.lines() {
        if line.starts_with(";; ANSWER SECTION") {
            section = Some(&mut answers);
            continue;
        }
        if line.starts_with(";; AUTHORITY SECTION") {
            section = Some(&mut authority);
            continue;
        }
        if line.starts_with(';') || line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let (Some(rrs), [name, ttl, _class, rtype, data @ ..]) = (section.as_mut(), &fields[..])
        {
            rrs.push(ResolvedRecord {
                name: name.to_ascii_lowercase(),
                ttl: ttl.parse().with_context(|| format!("TTL in {line:?}"))?,
                rtype: rtype.to_string(),
                data: data.join(" ").to_ascii_lowercase(),
            });
        }
    }
    Ok(Resolved {
        status,
        answers,
        authority,
    })
}
