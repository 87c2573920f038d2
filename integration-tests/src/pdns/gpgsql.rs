//! Stock `pdns_server --launch=gpgsql` on a database: the baseline every DNS benchmark
//! compares against, and the operators' fallback.

use super::process::{open_up, pdns_base_command, wait_answering};
use super::Caches;
use crate::postgres::PgEndpoint;
use crate::process::ChildGuard;
use anyhow::Result;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

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
        wait_answering("gpgsql pdns", &mut pdns, addr, || Ok(()))?;
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
