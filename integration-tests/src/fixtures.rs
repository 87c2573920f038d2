//! The DNS tests' and `bench_dns`'s world: a primary (`us`, 127.0.0.1) with one streaming
//! replica (`eu`, 127.0.0.2), the schema and zones as control writes them, and eu's
//! `pdns_server` + backend reading the replica.

use crate::control::{ControlProcess, ControlRegion, ControlSpec};
use crate::pdns::{PdnsRegion, PdnsSpec};
use crate::ports::free_port;
use crate::postgres::{psql, wait_replayed, PgCluster, PgClusterConfig, PgEndpoint};
use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The regions the zones are seeded with: each region's edge host record
/// (`<region>.<zone> A <ip>`) points at its loopback address.
pub const SEEDED_REGIONS: [(&str, Ipv4Addr); 3] = [
    ("us", Ipv4Addr::new(127, 0, 0, 1)),
    ("eu", Ipv4Addr::new(127, 0, 0, 2)),
    ("ap", Ipv4Addr::new(127, 0, 0, 3)),
];

/// A primary (us, 127.0.0.1) and one streaming replica (eu, 127.0.0.2) on free ports in
/// `dir`, `fsync` off.
pub fn primary_and_replica(dir: &Path) -> Result<PgCluster> {
    let endpoint = |region: &str, ip: Ipv4Addr| PgEndpoint {
        region: region.into(),
        ip,
        port: free_port(ip),
    };
    PgCluster::start(
        &dir.join("pg"),
        &PgClusterConfig {
            primary: endpoint("us", SEEDED_REGIONS[0].1),
            replicas: vec![endpoint("eu", SEEDED_REGIONS[1].1)],
            fsync: false,
        },
    )
}

/// Writes the schema and the zones the way a deployment gets them, through control itself:
/// `nearhop-control migrate` (migrations, then each zone's SOA, NS and region host records
/// and the `regions` table), then `serve` long enough to register one edge per region
/// (`edge-<region>`), so that each region counts as heartbeating now. Control is stopped
/// again before this returns; the tests stand in for it from there on.
pub fn seed_through_control(dir: &Path, primary: &PgEndpoint) -> Result<()> {
    let us = SEEDED_REGIONS[0].1;
    let spec = ControlSpec::for_tests(
        SocketAddr::from((us, free_port(us))),
        primary.url(),
        SEEDED_REGIONS
            .iter()
            .map(|(name, ip)| ControlRegion {
                name: name.to_string(),
                ipv4: *ip,
                backend_url: None,
            })
            .collect(),
    );
    let mut control = ControlProcess::start(&dir.join("control"), &spec)?;
    for (region, ip) in SEEDED_REGIONS {
        control.register_edge(
            &format!("edge-{region}"),
            region,
            &format!("http://{ip}:9090"),
        )?;
    }
    control.stop();
    Ok(())
}

/// The primary, the replica, the seeded zones and eu's pdns + backend. Everything stops
/// and the directory is removed when it is dropped, also when a test fails.
pub struct DnsFixture {
    /// eu's pdns + backend.
    pub region: PdnsRegion,
    /// The databases.
    pub pg: PgCluster,
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
        seed_through_control(&dir, &pg.primary.endpoint)?;
        let replica = pg.replicas[0].endpoint.clone();
        wait_replayed(&pg.primary.endpoint, &replica)?;
        let mut spec = PdnsSpec::for_tests("eu", replica.ip, replica.conninfo());
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
        self.wait_commit(lsn, None)
    }

    /// Waits, up to a minute, until memory holds the commit at `lsn` (by transaction `xid`,
    /// when given); an unreached wait is an error carrying the last answer.
    pub fn wait_commit(&self, lsn: &str, xid: Option<&str>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let xid = xid.map(|x| format!("&xid={x}")).unwrap_or_default();
        loop {
            let url = format!(
                "{}/v1/wait?lsn={lsn}{xid}&timeout_ms=1000",
                self.region.backend_url()
            );
            let v: serde_json::Value = reqwest::blocking::get(url)?
                .error_for_status()?
                .json()
                .context("/v1/wait")?;
            if v["reached"] == serde_json::Value::Bool(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("backend did not apply {lsn}{xid}: {v}");
            }
        }
    }
}
