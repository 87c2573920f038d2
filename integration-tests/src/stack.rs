//! The whole local stack, one harness for `make up` and the tests: a Postgres primary and
//! streaming replicas, a `pdns_server` + pdns-backend per region, control, an edge per region.

use crate::control::{ControlProcess, ControlRegion, ControlSpec, FREE_ZONE, PRO_ZONE};
use crate::edge::{EdgeProcess, EdgeSpec, SshArgs, SshClient};
use crate::pdns::{PdnsRegion, PdnsSpec};
use crate::pebble::Pebble;
use crate::poll::PATIENCE;
use crate::ports::free_port;
use crate::postgres::{PgCluster, PgClusterConfig, PgEndpoint};
use anyhow::Result;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Control's ACME pace in the local stack: a look every second, retries from 2 s to 30 s
/// (production defaults: 60 s, and 1 min to 6 h).
const ACME_PACE: &str =
    "acme_check_interval_seconds = 1\nacme_retry_min_seconds = 2\nacme_retry_max_seconds = 30\n";

/// Ports of one region's processes, all on the region's loopback address.
#[derive(Debug, Clone, Copy)]
pub struct RegionPorts {
    /// PostgreSQL.
    pub pg: u16,
    /// `pdns_server` (UDP and TCP).
    pub dns: u16,
    /// pdns-backend HTTP (`/metrics`, `/v1/wait`).
    pub backend_http: u16,
    /// Edge SSH.
    pub ssh: u16,
    /// Edge visitor HTTP.
    pub http: u16,
    /// Edge visitor HTTPS.
    pub https: u16,
    /// Edge admin API and `/metrics`.
    pub admin: u16,
    /// Edge mesh listener (peer edges relay visitors here).
    pub mesh: u16,
    /// Control API (used in the primary's region only).
    pub control: u16,
}

impl RegionPorts {
    /// The architecture's fixed ports (`make up`).
    pub fn defaults() -> RegionPorts {
        RegionPorts {
            pg: 55432,
            dns: 5300,
            backend_http: 9153,
            ssh: 2222,
            http: 8080,
            https: 8443,
            admin: 9090,
            mesh: 2223,
            control: 7080,
        }
    }

    /// Free ports on `ip` (tests).
    pub fn free(ip: Ipv4Addr) -> RegionPorts {
        RegionPorts {
            pg: free_port(ip),
            dns: free_port(ip),
            backend_http: free_port(ip),
            ssh: free_port(ip),
            http: free_port(ip),
            https: free_port(ip),
            admin: free_port(ip),
            mesh: free_port(ip),
            control: free_port(ip),
        }
    }
}

/// One region of the stack.
#[derive(Debug, Clone)]
pub struct Region {
    /// Name (`us`, `eu`, `ap`).
    pub name: String,
    /// Loopback address of every process of the region.
    pub ip: Ipv4Addr,
    /// Its ports.
    pub ports: RegionPorts,
}

impl Region {
    /// The region's DNS server address.
    pub fn dns_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.ports.dns))
    }
    /// The region's pdns-backend HTTP base URL.
    pub fn backend_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.ports.backend_http)
    }
    /// The region's edge SSH address.
    pub fn ssh_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.ports.ssh))
    }
    /// The region's edge visitor HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.ports.http))
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Regions; the first holds the primary and control.
    pub regions: Vec<(String, Ipv4Addr)>,
    /// Use the architecture's fixed ports instead of free ones.
    pub fixed_ports: bool,
    /// Start `pdns_server` + pdns-backend per region.
    pub with_dns: bool,
    /// Start an edge per region.
    pub with_edges: bool,
    /// `fsync` in Postgres.
    pub fsync: bool,
    /// Lag-race bound in ms (0 turns the wait off).
    pub lag_wait_ms: u64,
    /// Where to keep data and logs; a fresh temporary directory when `None`.
    pub dir: Option<PathBuf>,
    /// Changes to control's settings before it starts.
    pub control_tweak: Option<fn(&mut ControlSpec)>,
    /// Give the edges a self-signed certificate for the dev zones (HTTPS on the TLS port).
    pub edge_https: bool,
    /// Edges per region (1: one on the region's address; each further one on an address of
    /// its own, `127.0.<n>.<region's last byte>`, reached by relay from any edge).
    pub edges_per_region: u8,
    /// More TOML appended to every edge's config (e.g. `proxy_protocol_from = [...]`).
    pub edge_toml: String,
    /// Run Pebble (the ACME test server) against the first region's DNS and have control
    /// obtain the zones' certificates from it; the edges then get no certificate files, so
    /// they serve control's. Needs `with_dns`.
    pub acme: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            regions: vec![
                ("us".into(), Ipv4Addr::new(127, 0, 0, 1)),
                ("eu".into(), Ipv4Addr::new(127, 0, 0, 2)),
                ("ap".into(), Ipv4Addr::new(127, 0, 0, 3)),
            ],
            fixed_ports: false,
            with_dns: false,
            with_edges: false,
            fsync: false,
            lag_wait_ms: 3000,
            dir: None,
            control_tweak: None,
            edge_https: false,
            edges_per_region: 1,
            edge_toml: String::new(),
            acme: false,
        }
    }
}

/// A running stack; everything stops when it is dropped.
pub struct Stack {
    /// The regions and their ports.
    pub regions: Vec<Region>,
    // Drop order is field order: edges first, then control and DNS, the database last.
    /// Each region's `pdns_server` + pdns-backend (empty without `with_dns`).
    pub dns: Vec<PdnsRegion>,
    /// One edge per region, when `with_edges` (drops first: tunnels close before control).
    pub edges: Vec<EdgeProcess>,
    /// Pebble, with `acme`.
    pub pebble: Option<Pebble>,
    /// Control.
    pub control: ControlProcess,
    /// The databases.
    pub pg: PgCluster,
    /// Data and logs (removed on drop unless `dir` was given).
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Stack {
    /// Starts everything asked for, in dependency order.
    pub fn start(opts: StackOptions) -> Result<Stack> {
        let (tmp, dir) = match &opts.dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (None, d.clone())
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("nearhop-stack-")
                    .tempdir()?;
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        let regions: Vec<Region> = opts
            .regions
            .iter()
            .map(|(name, ip)| Region {
                name: name.clone(),
                ip: *ip,
                ports: if opts.fixed_ports {
                    RegionPorts::defaults()
                } else {
                    RegionPorts::free(*ip)
                },
            })
            .collect();
        let endpoint = |r: &Region| PgEndpoint {
            region: r.name.clone(),
            ip: r.ip,
            port: r.ports.pg,
        };
        let pg = PgCluster::start(
            &dir.join("pg"),
            &PgClusterConfig {
                primary: endpoint(&regions[0]),
                replicas: regions[1..].iter().map(endpoint).collect(),
                fsync: opts.fsync,
            },
        )?;
        let mut spec = ControlSpec::for_tests(
            SocketAddr::from((regions[0].ip, regions[0].ports.control)),
            pg.primary.endpoint.url(),
            regions
                .iter()
                .map(|r| ControlRegion {
                    name: r.name.clone(),
                    ipv4: r.ip,
                    backend_url: opts.with_dns.then(|| r.backend_url()),
                })
                .collect(),
        );
        spec.lag_wait_ms = opts.lag_wait_ms;
        if let Some(tweak) = opts.control_tweak {
            tweak(&mut spec);
        }
        // Pebble only needs the DNS address now; it asks only when validating.
        if opts.acme && !opts.with_dns {
            anyhow::bail!("acme needs with_dns: Pebble validates against the stack's own DNS");
        }
        let pebble = if opts.acme {
            let p = Pebble::start(&dir.join("pebble"), regions[0].dns_addr(), opts.fixed_ports)?;
            spec.extra_toml = format!("{}\n{}{ACME_PACE}", spec.extra_toml, p.control_toml());
            Some(p)
        } else {
            None
        };
        // Control's `migrate` writes the schema and the zones the backends load; control's
        // lag-race wait then covers each region's backend.
        let control = ControlProcess::start(&dir.join("control"), &spec)?;
        let mut dns = Vec::new();
        if opts.with_dns {
            for r in &regions {
                let db = pg
                    .endpoint_of(&r.name)
                    .map(|e| e.conninfo())
                    .unwrap_or_default();
                let mut d = PdnsSpec::for_tests(&r.name, r.ip, db);
                d.dns_port = r.ports.dns;
                d.backend_http_port = r.ports.backend_http;
                d.apex_prefixes = apex_map(&regions);
                d.default_region = regions[0].name.clone();
                d.unknown_names = unknown_names();
                dns.push(PdnsRegion::start(&dir.join(format!("dns-{}", r.name)), &d)?);
            }
        }
        // edges: one per region, on the region's address.
        let mut edges = Vec::new();
        if opts.with_edges {
            let https = if opts.edge_https && pebble.is_none() {
                let (cert, key) = crate::edge::dev_zone_certificate(&dir.join("tls"))?;
                format!(
                    "tls_cert_path = \"{}\"\ntls_key_path = \"{}\"\n",
                    cert.display(),
                    key.display()
                )
            } else {
                String::new()
            };
            for n in 0..opts.edges_per_region.max(1) {
                for r in &regions {
                    let edge_id = format!("{}-{}", r.name, n + 1);
                    let credential = control.issue_edge_credential(&edge_id)?;
                    let [_, _, _, last] = r.ip.octets();
                    let ip = Ipv4Addr::new(127, 0, n, last);
                    let mut spec = EdgeSpec::for_tests(&r.name, ip, &control.url, &credential);
                    spec.edge_id = edge_id.clone();
                    if n == 0 {
                        spec.ssh = r.ports.ssh;
                        spec.http = r.ports.http;
                        spec.tls = r.ports.https;
                        spec.admin = r.ports.admin;
                        spec.mesh = r.ports.mesh;
                    } else if opts.fixed_ports {
                        // Another address, so the same well-known ports.
                        (spec.ssh, spec.http, spec.tls, spec.admin, spec.mesh) = (
                            r.ports.ssh,
                            r.ports.http,
                            r.ports.https,
                            r.ports.admin,
                            r.ports.mesh,
                        );
                    }
                    spec.extra_toml = format!("{https}{}", opts.edge_toml);
                    let name = if n == 0 {
                        format!("edge-{}", r.name)
                    } else {
                        format!("edge-{edge_id}")
                    };
                    edges.push(EdgeProcess::start(&dir.join(name), spec)?);
                }
            }
        }
        Ok(Stack {
            regions,
            pebble,
            edges,
            dns,
            control,
            pg,
            dir,
            _tmp: tmp,
        })
    }

    /// The region named `name`.
    pub fn region(&self, name: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// The (first) edge of region `name`.
    pub fn edge(&self, name: &str) -> Option<&EdgeProcess> {
        self.edges.iter().find(|e| e.spec.region == name)
    }

    /// Waits until every edge has its mesh link to every other edge up (an edge that starts
    /// gets its peers in control's answer to its registration, and each peer it dials asks
    /// control for the peer list then, so this takes moments, not a heartbeat).
    pub fn wait_mesh_linked(&self) -> Result<()> {
        for edge in &self.edges {
            let url = format!("http://{}:{}/metrics", edge.spec.ip, edge.spec.admin);
            let peers: Vec<&str> = self
                .edges
                .iter()
                .filter(|e| e.spec.edge_id != edge.spec.edge_id)
                .map(|e| e.spec.edge_id.as_str())
                .collect();
            crate::poll::try_eventually(PATIENCE, || {
                let text = reqwest::blocking::get(&url)?.text()?;
                for peer in &peers {
                    let up = crate::metrics::metric(
                        &text,
                        "nearhop_edge_mesh_link_up",
                        &[("peer", peer)],
                    );
                    anyhow::ensure!(
                        up == Some(1.0),
                        "{} has no link to {peer} yet",
                        edge.spec.edge_id
                    );
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Every edge of region `name`, the first one first.
    pub fn edges_of(&self, name: &str) -> Vec<&EdgeProcess> {
        self.edges
            .iter()
            .filter(|e| e.spec.region == name)
            .collect()
    }

    /// Where logs and data are.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// A fresh pro account's token, made with control's CLI.
    pub fn pro_token(&self) -> String {
        self.control
            .create_account(nearhop_wire::Plan::Pro)
            .expect("account")
            .token
    }

    /// Opens an HTTP tunnel to local `port` through the edge of region `region` (an index
    /// into `regions`), logging in as `user`: starts the OpenSSH client `name` and waits for
    /// the URL it prints, reading its output every millisecond so that what the caller does
    /// next follows the print as closely as a script would.
    pub fn http_tunnel(
        &self,
        region: usize,
        name: &str,
        user: Option<&str>,
        port: u16,
    ) -> Result<(SshClient, String)> {
        let mut client = self.ssh_to(region, name, &SshArgs::http_tunnel(user, port));
        let url = client.wait_for_url_polling(PATIENCE, Duration::from_millis(1))?;
        Ok((client, url))
    }

    /// Starts the OpenSSH client `name` against the edge of region `region` (an index
    /// into `regions`).
    pub fn ssh_to(&self, region: usize, name: &str, args: &SshArgs) -> SshClient {
        SshClient::start(
            &self.dir.join("ssh"),
            name,
            self.regions[region].ssh_addr(),
            args,
        )
        .expect("ssh starts")
    }
}

/// The local stack's per-zone answer for names without records, as deployed
/// (deploy/pdns/pdns-backend.toml): the pro zone's answer the nearest edge, the free zone's
/// NXDOMAIN (docs/pdns-backend.md, "Names without records").
pub fn unknown_names() -> Vec<(String, String)> {
    vec![
        (PRO_ZONE.to_string(), "nearest_edge".to_string()),
        (FREE_ZONE.to_string(), "nxdomain".to_string()),
    ]
}

/// The local stack's client-subnet map for the connect name: each region's loopback address,
/// and a documentation-style ECS subnet per region (`10.<n>.0.0/16`, n = 1, 2, 3, ...), each
/// preferring its own region, then the others in order.
pub fn apex_map(regions: &[Region]) -> Vec<(String, Vec<String>)> {
    let mut map = Vec::new();
    for (i, r) in regions.iter().enumerate() {
        let mut prefs = vec![r.name.clone()];
        prefs.extend(
            regions
                .iter()
                .filter(|o| o.name != r.name)
                .map(|o| o.name.clone()),
        );
        map.push((format!("{}/32", r.ip), prefs.clone()));
        map.push((format!("10.{}.0.0/16", i + 1), prefs));
    }
    map
}

// Fault injection and per-region access for the end-to-end tests.
impl Stack {
    /// The processes that have exited by themselves since the last look (a crash, an
    /// operator's `kill`), a sentence each; reaps them. `nearhop-stack` asks every few
    /// seconds, so that whoever runs it hears of a dead part at once.
    pub fn take_exits(&mut self) -> Vec<String> {
        let mut exits: Vec<String> = self
            .edges
            .iter_mut()
            .filter_map(|e| e.take_exit())
            .collect();
        exits.extend(self.dns.iter_mut().flat_map(|d| d.take_exits()));
        exits.extend(self.pebble.as_mut().and_then(|p| p.take_exit()));
        exits.extend(self.control.take_exit());
        exits.extend(self.pg.primary.take_exit());
        exits.extend(self.pg.replicas.iter_mut().filter_map(|r| r.take_exit()));
        exits
    }

    /// The edge of region `name`, mutably.
    pub fn edge_mut(&mut self, name: &str) -> Option<&mut EdgeProcess> {
        self.edges.iter_mut().find(|e| e.spec.region == name)
    }

    /// Stops the edge of region `name` gracefully (SIGTERM: it closes its tunnels and tells
    /// control), killing it after `grace`.
    pub fn stop_edge(&mut self, name: &str, grace: std::time::Duration) {
        if let Some(e) = self.edge_mut(name) {
            e.stop_within(grace);
        }
    }

    /// Kills the edge of region `name` with SIGKILL: no goodbye to clients or control, as
    /// when its host dies.
    pub fn kill_edge(&mut self, name: &str) {
        if let Some(e) = self.edge_mut(name) {
            if let Some(pid) = e.pid() {
                // SAFETY: kill(2) on a child this process spawned and has not reaped yet.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
            // Reaps the dead process.
            e.stop_within(std::time::Duration::from_millis(100));
        }
    }

    /// Starts the edge of region `name` again after a stop or kill.
    pub fn restart_edge(&mut self, name: &str) -> Result<()> {
        match self.edge_mut(name) {
            Some(e) => e.restart(),
            None => anyhow::bail!("no edge in region {name}"),
        }
    }

    /// The `pdns_server` + backend of region `name`.
    pub fn dns_of(&self, name: &str) -> Option<&PdnsRegion> {
        self.dns.iter().find(|d| d.spec.region == name)
    }

    /// Restarts every region's `pdns_server` + backend with `tweak` applied to its spec
    /// (e.g. a shorter apex heartbeat bound), on the same ports and directories.
    pub fn restart_dns_with(&mut self, tweak: impl Fn(&mut PdnsSpec)) -> Result<()> {
        let specs: Vec<PdnsSpec> = self.dns.iter().map(|d| d.spec.clone()).collect();
        // Stop them all first: the new processes take the same ports.
        self.dns.clear();
        for mut spec in specs {
            tweak(&mut spec);
            let dir = self.dir.join(format!("dns-{}", spec.region));
            self.dns.push(PdnsRegion::start(&dir, &spec)?);
        }
        Ok(())
    }
}
