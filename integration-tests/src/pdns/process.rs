//! The `pdns_server` process as both kinds of region run it: its command line, the user
//! and directories it needs, and the wait until it answers.

use super::Caches;
use crate::dns_client::{query, QTYPE_SOA, RCODE_REFUSED, RCODE_SERVFAIL};
use crate::process::{tail, ChildGuard};
use anyhow::{bail, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

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
pub(super) fn socket_dir(dir: &Path) -> Result<PathBuf> {
    let sock = dir.join("pdns-sock");
    std::fs::create_dir_all(&sock)?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777))?;
    Ok(sock)
}

/// Makes every ancestor of `dir` up to a temp root traversable by pdns's user.
pub(super) fn open_up(dir: &Path) -> Result<()> {
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

pub(super) fn pdns_base_command(
    dir: &Path,
    ip: Ipv4Addr,
    port: u16,
    caches: Caches,
) -> Result<Command> {
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
    // Names with bytes outside letters, digits and `-_*./@ \\:` reach the backend (NXDOMAIN
    // for a name nobody holds) instead of a SERVFAIL from pdns itself (deploy/pdns/pdns.conf).
    .arg("--8bit-dns=yes")
    .arg("--zone-cache-refresh-interval=60")
    // No version or host name to `version.bind`/`id.server` CH TXT (deploy/pdns/pdns.conf).
    .arg("--version-string=anonymous")
    .arg("--server-id=disabled");
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

/// Waits until pdns at `addr` answers for a served zone: it answers REFUSED (or SERVFAIL)
/// until its zone cache holds the zones, anything else counts as ready. `check` runs each
/// round to fail early when a process it needs died.
pub(super) fn wait_answering(
    what: &str,
    pdns: &mut ChildGuard,
    addr: SocketAddr,
    mut check: impl FnMut() -> Result<()>,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        pdns.check_running()?;
        check()?;
        if let Ok(r) = query(addr, "a.tunnel.test", QTYPE_SOA, None) {
            if r.rcode != RCODE_REFUSED && r.rcode != RCODE_SERVFAIL {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{what} did not answer in 60 s; pdns log:\n{}",
                tail(pdns.log(), 30)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
