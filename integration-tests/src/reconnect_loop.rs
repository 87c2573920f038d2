//! The user's reconnect loop around the stock OpenSSH client, as users run it.

use crate::control::PRO_ZONE;
use crate::process::ChildGuard;
use crate::Stack;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// `while true; do ssh ...; sleep 1; done`, as users run it. Each round resolves the
/// connect name through a resolver in `home` (so a dead region drops out of the answer)
/// and connects to the address it gets; only the SSH port is looked up in a table, because
/// the test stack gives every region's edge its own free port.
pub struct ReconnectLoop {
    _guard: ChildGuard,
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
        Ok(ReconnectLoop { _guard: guard, log })
    }

    /// Everything the loop and its ssh runs printed.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The URL printed after the `n`-th connection (counting from 1), if any.
    pub fn url_of_round(&self, n: usize) -> Option<String> {
        let out = self.output();
        let round = out.split("== connecting to ").nth(n)?;
        crate::edge::find_url(round)
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
