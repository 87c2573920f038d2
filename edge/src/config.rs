//! Edge configuration: a TOML file plus `NEARHOP_EDGE_<KEY>` environment overrides, parsed
//! and checked once at start into types the rest of the edge trusts.
//!
//! Long because every setting sits beside its default and its check, with about 175 lines of
//! tests.

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use nearhop_wire::duration_settings::{check_longest, check_not_zero, OutOfRange};
use nearhop_wire::settings::blame_variable;
use serde::{Deserialize, Deserializer};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Prefix of the environment variables that override keys of the config file.
pub const ENV_PREFIX: &str = "NEARHOP_EDGE_";

/// Most runtime worker threads accepted (`worker_threads`).
pub const MAX_WORKER_THREADS: usize = 1024;

/// The edge's configuration, with the defaults of the local stack's `us` region.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Stable id of this edge, e.g. `us-1`.
    pub edge_id: String,
    /// The region this edge serves.
    pub region: String,
    /// Base URL of control, e.g. `http://127.0.0.1:7080`.
    pub control_url: String,
    /// This edge's own credential for its calls to control, issued by `nearhop-control edge
    /// issue <edge_id>`; control binds it to this edge id.
    pub credential: String,
    /// File holding the credential, read when `credential` is empty.
    pub credential_file: Option<PathBuf>,
    /// Legacy: the secret every edge shared with control, used only when no `credential` is
    /// set. It lets any edge act as any other; issue credentials instead.
    pub edge_secret: String,
    /// File holding the legacy shared secret, read when `edge_secret` is empty.
    pub edge_secret_file: Option<PathBuf>,
    /// Where peer edges connect to relay visitors to this edge (the mesh listener, SSH);
    /// unset: this edge neither relays nor is relayed to.
    pub mesh_listen: Option<SocketAddr>,
    /// The `host:port` peer edges are told to dial; defaults to `mesh_listen`.
    pub mesh_advertise: Option<String>,
    /// How long a visitor's request for a tunnel that was live a moment ago (its client is
    /// reconnecting, perhaps through another edge) waits for it to come back before getting
    /// "No tunnel here"; 0 answers at once.
    pub reconnect_wait_seconds: u64,
    /// Wrong visitor credentials (`b:`, `k:`) one visitor network (an IPv4 address, an
    /// IPv6 /64) may send one tunnel per minute before getting 429 for the rest of the
    /// minute; 0 turns the throttle off.
    pub visitor_auth_failures_per_minute: u32,
    /// Where SSH clients connect.
    pub ssh_listen: SocketAddr,
    /// Where HTTP visitors connect.
    pub http_listen: SocketAddr,
    /// Where TLS visitors connect (`tls` tunnels: passthrough routed by SNI).
    pub tls_listen: SocketAddr,
    /// Whether SSH clients may connect on the TLS port too (for networks that let only
    /// 443 out); plain HTTP is served there as well.
    pub ssh_on_tls_port: bool,
    /// With `ssh_on_tls_port`: a client that has sent nothing this long after connecting to
    /// the TLS port is taken for an SSH client waiting for the server to speak first.
    pub ssh_on_tls_port_silence_ms: u64,
    /// Where control's calls and Prometheus scrapes arrive.
    pub admin_listen: SocketAddr,
    /// The admin URL control should call; defaults to `http://<admin_listen>`.
    pub admin_url: Option<String>,
    /// Port shown in printed HTTP URLs (80 hides it); defaults to the `http_listen` port.
    pub public_http_port: Option<u16>,
    /// Port shown in printed TLS URLs (443 hides it); defaults to the `tls_listen` port.
    pub public_tls_port: Option<u16>,
    /// Host shown in `tcp` tunnels' URLs: a name or address that always reaches this edge
    /// (a `tcp` port exists on this edge only). Unset: the tunnel's own name, which a
    /// resolver may still answer with another edge after the client reconnects elsewhere.
    pub tcp_host: Option<String>,
    /// Certificate chain (PEM) for HTTPS to `http` tunnels, e.g. a wildcard for each zone;
    /// without it the TLS listener serves `tls` tunnels only.
    pub tls_cert_path: Option<PathBuf>,
    /// The certificate's private key (PEM).
    pub tls_key_path: Option<PathBuf>,
    /// Where to keep the certificates control obtained by ACME (a JSON file with their
    /// keys, mode 0600), so that a restart while control is away still serves HTTPS. None:
    /// not kept.
    pub certificates_cache_path: Option<PathBuf>,
    /// Address TCP tunnels' public ports are bound on; defaults to the `http_listen` address.
    pub tcp_bind_ip: Option<IpAddr>,
    /// Inclusive range of public ports for TCP tunnels.
    pub tcp_port_range: (u16, u16),
    /// The SSH host key (OpenSSH format); generated on first start when missing.
    pub host_key_path: PathBuf,
    /// This edge's own key towards its peers in the mesh (OpenSSH format), generated on first
    /// start when missing; defaults to `<host_key_path>-mesh`. Kept apart from the host key
    /// because operators may give every edge one host key (so clients behind the connect
    /// name see one key), while the mesh needs one key per edge: control refuses a mesh key
    /// another edge registered.
    pub mesh_key_path: Option<PathBuf>,
    /// Relay to a peer the names it announces without control's proof (peers on a `v2` or
    /// `v1` feed, from before holder proofs): only while a fleet is upgraded from such a
    /// version. Off, a peer's name is relayed to only when control's proof checks out.
    pub mesh_accept_unproven_claims: bool,
    /// Bound on the keepalive probe behind `GET /v1/tunnels/{id}/alive`.
    pub alive_probe_ms: u64,
    /// SSH keepalive interval towards clients; a client silent this long is probed.
    pub keepalive_interval_seconds: u64,
    /// Unanswered keepalives after which a client is declared dead and its tunnels closed.
    pub keepalive_max: usize,
    /// Heartbeat interval used until control's registration answer says otherwise.
    pub heartbeat_seconds: u64,
    /// How often the custom-domain routes are refreshed from control.
    pub routes_refresh_seconds: u64,
    /// Timeout of one call to control.
    pub control_timeout_ms: u64,
    /// Most `-R` forwards one SSH session may hold.
    pub max_forwards_per_session: usize,
    /// SSH connections not yet authenticated, at once, edge-wide, at least 1 (key exchanges cost CPU and
    /// memory before anyone is known); past it a new connection is told so and closed.
    pub max_unauthenticated_ssh: usize,
    /// Of those, at most this many from one network (an IPv4 address, an IPv6 /64).
    pub max_unauthenticated_ssh_per_address: usize,
    /// Time a client has from TCP connect to successful authentication.
    pub ssh_auth_deadline_seconds: u64,
    /// Seconds a session may stay without any forward before it is told how to use the edge
    /// and disconnected.
    pub unbound_session_seconds: u64,
    /// SSH channel window (bytes in flight per visitor connection from the client).
    pub ssh_window_bytes: u32,
    /// Bytes by which relay channels' receive windows may grow past their 1 MiB start, all
    /// peer links together: what visitors who read fast and then stop can make the edge hold.
    pub relay_window_budget_bytes: u64,
    /// Bytes of the receive windows of visitor channels (client towards edge) past the
    /// 32 KiB each opens with (its raise to 1 MiB, and its growth), all clients together:
    /// what visitors who stop reading can make the edge hold beyond 32 KiB a connection.
    pub tunnel_window_budget_bytes: u64,
    /// Relay channels this edge may be opening at once on one peer edge's link (asked for,
    /// not yet confirmed or refused), at least 1. Beyond it relayed visitors get "Tunnel
    /// busy" at once instead of each holding a connection for up to 5 s while a holder
    /// that is not keeping up (a flood of that tunnel's visitors) answers.
    pub relay_openings_per_peer: usize,
    /// Largest SSH packet payload accepted on a channel.
    pub ssh_max_packet_bytes: u32,
    /// Messages buffered per SSH channel before backpressure reaches the client's TCP stream.
    pub ssh_channel_buffer: usize,
    /// Time a visitor has to send a complete request head (slowloris bound).
    pub visitor_header_timeout_seconds: u64,
    /// Largest visitor request head.
    pub visitor_max_header_bytes: usize,
    /// Most visitor connections open at once (HTTP and TCP together).
    pub max_visitor_connections: usize,
    /// Most visitor connections one visitor network (an IPv4 address, an IPv6 /64) may hold
    /// at once; 0: no limit beside `max_visitor_connections`.
    pub max_visitor_connections_per_address: usize,
    /// Most visitor connections (channels) one tunnel may hold at once; 0: no limit.
    pub max_visitor_connections_per_tunnel: usize,
    /// How long the edge waits for the head of a tunnel's answer to an HTTP request before
    /// answering 504 itself; 0: no limit.
    pub visitor_response_timeout_seconds: u64,
    /// How long the edge waits for a tunnel's client to take a visitor connection (confirm
    /// its channel) before answering 504 itself (HTTP) or closing it (`tcp`, `tls`); 0: no
    /// limit.
    pub visitor_open_timeout_seconds: u64,
    /// A visitor connection whose writes took no byte for this long is closed, so that a
    /// visitor that stopped reading does not stop its tunnel's SSH session; 0: no limit.
    pub visitor_write_stall_seconds: u64,
    /// Most of the edge's channels one SSH client may hold at once (being opened, in use,
    /// or finished and waiting for the client's close); beyond it visitors get "Tunnel
    /// busy". Half of OpenSSH's channel table (16,384), whose overflow ends the client.
    pub max_channels_per_client: usize,
    /// A `tcp`, `tls` or `x:noreverseproxy` connection with no byte either way for this long
    /// is closed; 0: never (WebSockets are not cut: see the docs).
    pub splice_idle_timeout_seconds: u64,
    /// TCP keepalive on visitor connections: first probe after this many idle seconds, so a
    /// vanished visitor's connection is found and closed; 0: off.
    pub visitor_tcp_keepalive_seconds: u64,
    /// On shutdown, how long in-flight visitor connections may finish.
    pub drain_seconds: u64,
    /// Runtime worker threads; 0 means one per CPU core.
    pub worker_threads: usize,
    /// SSH ciphers offered to clients. The client picks the first of its own list that is
    /// offered here, so leaving a cipher out is the only way to steer it away. Named by their
    /// SSH names in the file; checked against [`SUPPORTED_CIPHERS`] when read.
    #[serde(deserialize_with = "deserialize_ciphers")]
    pub ssh_ciphers: Vec<russh::cipher::Name>,
    /// Ciphers also offered to a client that lists none of `ssh_ciphers` (see
    /// `ssh::hello`); empty: such a client is refused.
    #[serde(deserialize_with = "deserialize_fallback_ciphers")]
    pub ssh_fallback_ciphers: Vec<russh::cipher::Name>,
    /// Free memory glibc keeps per thread arena instead of giving it back to the kernel
    /// (see `process::allocator`); 0 leaves glibc's default.
    pub malloc_trim_threshold_bytes: usize,
    /// Seconds between runs of `malloc_trim(0)`, which gives every whole free page back to
    /// the kernel (see `process::allocator`); 0: never.
    pub malloc_trim_interval_seconds: u64,
    /// Request inspector: most requests kept per inspected tunnel (the oldest go first).
    pub inspector_max_requests: usize,
    /// Request inspector: most body bytes kept per inspected tunnel, over its kept requests.
    pub inspector_max_body_bytes: usize,
    /// Request inspector: most bytes kept of one body; the rest passes uncopied, marked cut.
    pub inspector_body_cut_bytes: usize,
    /// Networks of the balancers in front of the edge (CIDRs or single addresses). A
    /// connection from one of them to the SSH, HTTP, TLS or a `tcp` tunnel's port must start
    /// with a PROXY protocol header (v1 or v2), whose source address then stands for the
    /// client; empty (the default): no header is read from anyone.
    #[serde(deserialize_with = "deserialize_networks")]
    pub proxy_protocol_from: Vec<IpNet>,
}

/// Reads a secret from `file` into `value` when `value` is empty and a file is named.
fn read_secret_file(value: &mut String, file: &Option<PathBuf>, key: &str) -> Result<()> {
    if let (true, Some(file)) = (value.is_empty(), file) {
        *value = std::fs::read_to_string(file)
            .with_context(|| format!("reading {key} {}", file.display()))?
            .trim()
            .to_string();
    }
    Ok(())
}

/// Reads a list of networks: CIDRs (`10.0.0.0/8`) or single addresses (`192.0.2.7`).
fn deserialize_networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let items = Vec::<String>::deserialize(d)?;
    networks(&items).map_err(serde::de::Error::custom)
}

/// The networks `items` name; the error is the sentence an operator sees.
fn networks(items: &[String]) -> Result<Vec<IpNet>, String> {
    items
        .iter()
        .map(|item| {
            let item = item.trim();
            item.parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| {
                    format!("{item:?} is neither a network (10.0.0.0/8) nor an address (192.0.2.7)")
                })
        })
        .collect()
}

/// Ciphers `ssh_ciphers` may name, fastest first on CPUs with AES instructions.
pub const SUPPORTED_CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_128_GCM,
    russh::cipher::AES_256_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_128_CTR,
    russh::cipher::AES_192_CTR,
    russh::cipher::AES_256_CTR,
];

/// [`SUPPORTED_CIPHERS`] as their SSH names, comma-separated (for error messages).
fn supported_cipher_list() -> String {
    let names: Vec<&str> = SUPPORTED_CIPHERS.iter().map(|c| c.as_ref()).collect();
    names.join(", ")
}

/// Reads `ssh_ciphers`: a non-empty list of SSH cipher names the edge supports.
fn deserialize_ciphers<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<russh::cipher::Name>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    cipher_list(&names).map_err(serde::de::Error::custom)
}

/// Reads `ssh_fallback_ciphers`: SSH cipher names the edge supports, perhaps none.
fn deserialize_fallback_ciphers<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<russh::cipher::Name>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    known_ciphers("ssh_fallback_ciphers", &names).map_err(serde::de::Error::custom)
}

/// The ciphers `names` stands for, in its order; the error is the sentence an operator sees.
fn cipher_list(names: &[String]) -> Result<Vec<russh::cipher::Name>, String> {
    if names.is_empty() {
        return Err(format!(
            "ssh_ciphers is empty: name at least one of {}",
            supported_cipher_list()
        ));
    }
    known_ciphers("ssh_ciphers", names)
}

/// The ciphers `names` (the value of `key`) stands for, each one the edge supports.
fn known_ciphers(key: &str, names: &[String]) -> Result<Vec<russh::cipher::Name>, String> {
    names
        .iter()
        .map(|n| {
            SUPPORTED_CIPHERS
                .iter()
                .find(|k| k.as_ref() == n.as_str())
                .copied()
                .ok_or_else(|| {
                    format!(
                        "{key} names {n:?}, which the edge does not support; choose from {}",
                        supported_cipher_list()
                    )
                })
        })
        .collect()
}

impl Default for Config {
    fn default() -> Config {
        Config {
            edge_id: "us-1".into(),
            region: "us".into(),
            control_url: "http://127.0.0.1:7080".into(),
            credential: String::new(),
            credential_file: None,
            edge_secret: String::new(),
            edge_secret_file: None,
            mesh_listen: None,
            mesh_advertise: None,
            reconnect_wait_seconds: 10,
            visitor_auth_failures_per_minute: 10,
            ssh_listen: ([127, 0, 0, 1], 2222).into(),
            http_listen: ([127, 0, 0, 1], 8080).into(),
            tls_listen: ([127, 0, 0, 1], 8443).into(),
            ssh_on_tls_port: true,
            ssh_on_tls_port_silence_ms: 3000,
            admin_listen: ([127, 0, 0, 1], 9090).into(),
            admin_url: None,
            public_http_port: None,
            public_tls_port: None,
            tcp_host: None,
            tls_cert_path: None,
            tls_key_path: None,
            certificates_cache_path: None,
            tcp_bind_ip: None,
            tcp_port_range: (20000, 20999),
            host_key_path: PathBuf::from("edge_host_key"),
            mesh_key_path: None,
            mesh_accept_unproven_claims: false,
            alive_probe_ms: 1500,
            keepalive_interval_seconds: 15,
            keepalive_max: 3,
            heartbeat_seconds: 10,
            routes_refresh_seconds: 30,
            control_timeout_ms: 15_000,
            max_forwards_per_session: 16,
            max_unauthenticated_ssh: 256,
            max_unauthenticated_ssh_per_address: 16,
            ssh_auth_deadline_seconds: 20,
            unbound_session_seconds: 30,
            ssh_window_bytes: 8 * 1024 * 1024,
            relay_window_budget_bytes: 256 * 1024 * 1024,
            tunnel_window_budget_bytes: 256 * 1024 * 1024,
            relay_openings_per_peer: 1024,
            ssh_max_packet_bytes: 32 * 1024,
            ssh_channel_buffer: 1024,
            visitor_header_timeout_seconds: 30,
            visitor_max_header_bytes: 64 * 1024,
            max_visitor_connections: 20_000,
            max_visitor_connections_per_address: 1_000,
            max_visitor_connections_per_tunnel: 5_000,
            visitor_response_timeout_seconds: 120,
            visitor_open_timeout_seconds: 10,
            visitor_write_stall_seconds: 20,
            max_channels_per_client: 8192,
            splice_idle_timeout_seconds: 3_600,
            visitor_tcp_keepalive_seconds: 60,
            drain_seconds: 10,
            worker_threads: 0,
            // Stock OpenSSH clients list chacha20-poly1305 first and would pick it if it
            // were offered; with AES instructions on both ends AES-GCM costs the client and
            // the edge far less CPU per byte (docs/benchmarks.md, Edge).
            ssh_ciphers: vec![russh::cipher::AES_128_GCM, russh::cipher::AES_256_GCM],
            // Every cipher the edge has, for clients without AES-GCM (Dropbear): all are
            // AEAD or AES-CTR, and the MACs offered are SHA-2 only.
            ssh_fallback_ciphers: SUPPORTED_CIPHERS.to_vec(),
            malloc_trim_threshold_bytes: 8 * 1024 * 1024,
            malloc_trim_interval_seconds: 60,
            proxy_protocol_from: Vec::new(),
            inspector_max_requests: 500,
            inspector_max_body_bytes: 16 * 1024 * 1024,
            inspector_body_cut_bytes: 1024 * 1024,
        }
    }
}

impl Config {
    /// Reads the file (if any), applies environment overrides and checks the result.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let mut config: Config = nearhop_wire::settings::load_toml_with_env(path, ENV_PREFIX, &[])?;
        config
            .finish()
            .map_err(|e| anyhow::anyhow!(blame_variable(format!("{e:#}"), ENV_PREFIX, &[])))?;
        Ok(config)
    }

    /// Fills derived defaults and refuses inconsistent settings.
    pub fn finish(&mut self) -> Result<()> {
        read_secret_file(
            &mut self.credential,
            &self.credential_file,
            "credential_file",
        )?;
        read_secret_file(
            &mut self.edge_secret,
            &self.edge_secret_file,
            "edge_secret_file",
        )?;
        if self.credential.is_empty() && self.edge_secret.is_empty() {
            bail!(
                "credential (or credential_file) must be set: issue one on the control host with \
                 `nearhop-control edge issue {}`",
                if self.edge_id.is_empty() {
                    "<edge_id>"
                } else {
                    &self.edge_id
                }
            );
        }
        if let Some(addr) = &self.mesh_advertise {
            nearhop_wire::mesh::check_mesh_addr(addr)
                .map_err(|e| anyhow::anyhow!("mesh_advertise {addr:?}: {e}"))?;
        }
        if let Some(host) = &self.tcp_host {
            check_tcp_host(host).map_err(|e| anyhow::anyhow!("tcp_host {host:?}: {e}"))?;
        }
        if let Some(listen) = self.mesh_listen {
            if self.mesh_advertise.is_none() && listen.ip().is_unspecified() {
                bail!(
                    "mesh_listen {listen} listens on every address; set mesh_advertise to the \
                     host:port peer edges should dial"
                );
            }
        }
        if self.edge_id.is_empty() || self.region.is_empty() {
            bail!("edge_id and region must not be empty");
        }
        let (lo, hi) = self.tcp_port_range;
        if lo == 0 || lo > hi {
            bail!("tcp_port_range must be two ports, low to high (got {lo}..{hi})");
        }
        self.check_durations()?;
        if self.worker_threads > MAX_WORKER_THREADS {
            bail!(
                "worker_threads {} is more than {MAX_WORKER_THREADS}; use 0 for one per CPU core",
                self.worker_threads
            );
        }
        if self.tls_cert_path.is_some() != self.tls_key_path.is_some() {
            bail!(
                "tls_cert_path and tls_key_path go together: set both for HTTPS to http \
                 tunnels, or neither for TLS passthrough only"
            );
        }
        if self.inspector_max_requests == 0 {
            bail!("inspector_max_requests must be at least 1");
        }
        if self.relay_openings_per_peer == 0 {
            bail!("relay_openings_per_peer must be at least 1 (0 would relay no visitor)");
        }
        self.control_url = self.control_url.trim_end_matches('/').to_string();
        Ok(())
    }

    /// Refuses durations longer than any timer may run, and 0 where nothing useful happens
    /// at 0 (module `nearhop_wire::duration_settings`).
    fn check_durations(&self) -> Result<(), OutOfRange> {
        check_longest([
            ("reconnect_wait_seconds", self.reconnect_wait_seconds),
            (
                "ssh_on_tls_port_silence_ms",
                self.ssh_on_tls_port_silence_ms,
            ),
            ("alive_probe_ms", self.alive_probe_ms),
            (
                "keepalive_interval_seconds",
                self.keepalive_interval_seconds,
            ),
            ("heartbeat_seconds", self.heartbeat_seconds),
            ("routes_refresh_seconds", self.routes_refresh_seconds),
            ("control_timeout_ms", self.control_timeout_ms),
            ("ssh_auth_deadline_seconds", self.ssh_auth_deadline_seconds),
            ("unbound_session_seconds", self.unbound_session_seconds),
            (
                "visitor_header_timeout_seconds",
                self.visitor_header_timeout_seconds,
            ),
            (
                "visitor_response_timeout_seconds",
                self.visitor_response_timeout_seconds,
            ),
            (
                "visitor_open_timeout_seconds",
                self.visitor_open_timeout_seconds,
            ),
            (
                "visitor_write_stall_seconds",
                self.visitor_write_stall_seconds,
            ),
            (
                "splice_idle_timeout_seconds",
                self.splice_idle_timeout_seconds,
            ),
            (
                "visitor_tcp_keepalive_seconds",
                self.visitor_tcp_keepalive_seconds,
            ),
            ("drain_seconds", self.drain_seconds),
            (
                "malloc_trim_interval_seconds",
                self.malloc_trim_interval_seconds,
            ),
        ])?;
        check_not_zero([
            ("alive_probe_ms", self.alive_probe_ms),
            ("heartbeat_seconds", self.heartbeat_seconds),
            ("control_timeout_ms", self.control_timeout_ms),
            ("unbound_session_seconds", self.unbound_session_seconds),
        ])
    }

    /// The bearer this edge sends to control: its credential, else the legacy shared secret.
    pub fn control_bearer(&self) -> &str {
        if self.credential.is_empty() {
            &self.edge_secret
        } else {
            &self.credential
        }
    }

    /// Where the mesh key is kept.
    pub fn mesh_key_path(&self) -> PathBuf {
        self.mesh_key_path.clone().unwrap_or_else(|| {
            let mut p = self.host_key_path.clone().into_os_string();
            p.push("-mesh");
            PathBuf::from(p)
        })
    }

    /// The mesh address announced to control, when the edge takes part in the mesh.
    pub fn mesh_addr(&self) -> Option<String> {
        self.mesh_advertise
            .clone()
            .or_else(|| self.mesh_listen.map(|a| a.to_string()))
    }

    /// The admin URL announced to control.
    pub fn admin_url(&self) -> String {
        self.admin_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.admin_listen))
    }

    /// Port printed in HTTP URLs.
    pub fn public_http_port(&self) -> u16 {
        self.public_http_port.unwrap_or(self.http_listen.port())
    }

    /// Port printed in TLS URLs.
    pub fn public_tls_port(&self) -> u16 {
        self.public_tls_port.unwrap_or(self.tls_listen.port())
    }

    /// Address TCP tunnels listen on.
    pub fn tcp_bind_ip(&self) -> IpAddr {
        self.tcp_bind_ip.unwrap_or(self.http_listen.ip())
    }

    /// Bound on one alive probe.
    pub fn alive_probe(&self) -> Duration {
        Duration::from_millis(self.alive_probe_ms)
    }
}

/// Checks `tcp_host`: a DNS name (letters, digits, `-`, dots; at most 253 bytes, labels of
/// at most 63), an IPv4 address, or an IPv6 address in brackets.
fn check_tcp_host(host: &str) -> Result<(), String> {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| "not an IPv6 address inside the brackets".into());
    }
    let labels_ok = host.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    if host.len() <= 253 && labels_ok {
        Ok(())
    } else {
        Err(
            "must be a host name such as eu-1.edges.example.com, an IPv4 address, or \
             [an IPv6 address]"
                .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tcp_host_takes_names_and_addresses_and_refuses_the_rest() {
        for ok in [
            "eu-1.edges.example.com",
            "127.0.0.2",
            "[2001:db8::1]",
            "edge",
        ] {
            check_tcp_host(ok).unwrap();
        }
        for bad in [
            "",
            "a..b",
            "-a.b",
            "a b",
            "tcp://x",
            "x:20000",
            "[::zz]",
            &"a".repeat(64),
        ] {
            assert!(check_tcp_host(bad).is_err(), "{bad:?}");
        }
        let e = from_parts("edge_secret = \"s\"\ntcp_host = \"a b\"", &[]).unwrap_err();
        assert!(e.to_string().contains("tcp_host"), "{e}");
    }

    use super::*;
    use std::ffi::OsString;

    /// The config from file text and environment pairs, as [`Config::load`] builds it.
    fn from_parts(text: &str, env: &[(&str, &str)]) -> Result<Config> {
        let vars = env
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let file = Some((Path::new("edge.toml"), text));
        let mut c: Config =
            nearhop_wire::settings::parse_toml_with_env(file, ENV_PREFIX, &[], vars)?;
        c.finish()?;
        Ok(c)
    }

    #[test]
    fn every_duration_key_refuses_more_than_366_days_naming_itself() {
        use nearhop_wire::duration_settings::{
            other_duration_fields, unit_of, whole_duration_keys, LONGEST_SECONDS,
        };
        let keys = whole_duration_keys(include_str!("config.rs"));
        assert!(keys.len() >= 17, "found the duration keys: {keys:?}");
        assert_eq!(
            other_duration_fields(include_str!("config.rs")),
            Vec::<String>::new(),
            "a duration setting the checks do not cover"
        );
        for key in keys {
            let (unit_ms, _) = unit_of(&key).expect("a duration key");
            let most = LONGEST_SECONDS * 1_000 / unit_ms;
            from_parts(&format!("edge_secret = \"s\"\n{key} = {most}"), &[])
                .unwrap_or_else(|e| panic!("{key} = {most} is refused: {e}"));
            let e = from_parts(&format!("edge_secret = \"s\"\n{key} = {}", most + 1), &[])
                .expect_err(&key);
            let said = format!("setting {key} = {} is out of range", most + 1);
            assert!(e.to_string().contains(&said), "{key}: {e}");
        }
        let e = from_parts(
            "edge_secret = \"s\"",
            &[("NEARHOP_EDGE_DRAIN_SECONDS", "99999999999")],
        )
        .unwrap_err();
        assert!(e.to_string().contains("drain_seconds = 99999999999"), "{e}");
    }

    #[test]
    fn zero_is_refused_where_nothing_useful_happens_at_zero() {
        for key in [
            "alive_probe_ms",
            "heartbeat_seconds",
            "control_timeout_ms",
            "unbound_session_seconds",
        ] {
            let e = from_parts(&format!("edge_secret = \"s\"\n{key} = 0"), &[]).unwrap_err();
            assert!(e.to_string().contains(&format!("setting {key} = 0")), "{e}");
        }
        for key in [
            "reconnect_wait_seconds",
            "visitor_open_timeout_seconds",
            "visitor_write_stall_seconds",
            "visitor_response_timeout_seconds",
            "splice_idle_timeout_seconds",
            "visitor_tcp_keepalive_seconds",
            "drain_seconds",
            "malloc_trim_interval_seconds",
        ] {
            from_parts(&format!("edge_secret = \"s\"\n{key} = 0"), &[])
                .unwrap_or_else(|e| panic!("{key} = 0 (documented as off) is refused: {e}"));
        }
    }

    #[test]
    fn env_overrides_file_keys_with_typed_values() {
        let c = from_parts(
            "edge_id = \"x\"\nkeepalive_max = 1",
            &[
                ("NEARHOP_EDGE_KEEPALIVE_MAX", "5"),
                ("NEARHOP_EDGE_SSH_LISTEN", "127.0.0.3:2222"),
                ("NEARHOP_EDGE_TCP_PORT_RANGE", "[3000, 3010]"),
                ("NEARHOP_EDGE_EDGE_SECRET", "s3cret"),
                ("NEARHOP_EDGE_CONFIG", "/etc/nearhop/edge.toml"),
                ("OTHER", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(c.edge_id, "x");
        assert_eq!(c.keepalive_max, 5);
        assert_eq!(c.ssh_listen, "127.0.0.3:2222".parse().unwrap());
        assert_eq!(c.tcp_port_range, (3000, 3010));
        assert_eq!(c.edge_secret, "s3cret");
        assert_eq!(c.admin_url(), "http://127.0.0.1:9090");
    }

    #[test]
    fn missing_secret_is_refused() {
        let mut c = Config::default();
        assert!(c.finish().is_err());
    }

    #[test]
    fn absurd_worker_thread_counts_are_refused_with_the_way_out() {
        let mut c = Config {
            edge_secret: "s".into(),
            worker_threads: 1_000_000,
            ..Config::default()
        };
        let e = c.finish().expect_err("refused").to_string();
        assert!(e.contains("use 0 for one per CPU core"), "{e}");
        c.worker_threads = 4;
        assert!(c.finish().is_ok());
    }

    #[test]
    fn cipher_lists_name_only_ciphers_the_edge_has() {
        let c = from_parts("edge_secret = \"s\"", &[]).unwrap();
        assert_eq!(c.ssh_ciphers[0], russh::cipher::AES_128_GCM);
        let file =
            "edge_secret = \"s\"\nssh_ciphers = [\"chacha20-poly1305@openssh.com\", \"arcfour\"]";
        let e = from_parts(file, &[]).expect_err("refused").to_string();
        assert!(e.contains("\"arcfour\"") && e.contains("aes128-gcm"), "{e}");
        let e = from_parts("edge_secret = \"s\"", &[("NEARHOP_EDGE_SSH_CIPHERS", "[]")])
            .expect_err("refused")
            .to_string();
        assert!(
            e.contains("ssh_ciphers is empty") && e.contains("NEARHOP_EDGE_SSH_CIPHERS"),
            "{e}"
        );
    }

    /// The names as operators write them (docs/edge.md, "Cipher choice"), spelled out here
    /// rather than read back from [`SUPPORTED_CIPHERS`], so that a table that drops or
    /// renames a cipher fails.
    const DOCUMENTED: [&str; 6] = [
        "aes256-ctr",
        "chacha20-poly1305@openssh.com",
        "aes128-gcm@openssh.com",
        "aes192-ctr",
        "aes256-gcm@openssh.com",
        "aes128-ctr",
    ];

    #[test]
    fn documented_cipher_names_reach_russh_as_its_ciphers_in_the_configured_order() {
        let names = cipher_list(&DOCUMENTED.map(String::from)).expect("all documented");
        let got: Vec<&str> = names.iter().map(|n| n.as_ref()).collect();
        assert_eq!(
            got, DOCUMENTED,
            "a documented cipher was dropped or reordered"
        );
        for name in &names {
            // russh's own lookup, over the ciphers it negotiates with.
            assert_eq!(russh::cipher::Name::try_from(name.as_ref()), Ok(*name));
        }
    }

    #[test]
    fn fallback_ciphers_default_to_all_and_may_be_none() {
        let c = from_parts("edge_secret = \"s\"", &[]).unwrap();
        assert_eq!(c.ssh_fallback_ciphers, SUPPORTED_CIPHERS);
        let c = from_parts("edge_secret = \"s\"\nssh_fallback_ciphers = []", &[]).unwrap();
        assert!(c.ssh_fallback_ciphers.is_empty());
        let e = from_parts(
            "edge_secret = \"s\"\nssh_fallback_ciphers = [\"3des-cbc\"]",
            &[],
        )
        .expect_err("refused")
        .to_string();
        assert!(
            e.contains("ssh_fallback_ciphers names \"3des-cbc\"") && e.contains("aes128-ctr"),
            "{e}"
        );
    }

    #[test]
    fn the_default_offer_is_aes_gcm_only_128_first() {
        assert_eq!(
            Config::default().ssh_ciphers,
            [russh::cipher::AES_128_GCM, russh::cipher::AES_256_GCM]
        );
    }

    #[test]
    fn a_certificate_needs_its_key() {
        let mut c = Config {
            edge_secret: "s".into(),
            tls_cert_path: Some("cert.pem".into()),
            ..Config::default()
        };
        let e = c.finish().expect_err("refused").to_string();
        assert!(e.contains("go together"), "{e}");
        c.tls_key_path = Some("key.pem".into());
        assert!(c.finish().is_ok());
    }

    #[test]
    fn proxy_protocol_from_takes_networks_and_addresses() {
        let c = from_parts(
            "edge_secret = \"s\"\nproxy_protocol_from = [\"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::/32\"]",
            &[],
        )
        .unwrap();
        let want: Vec<IpNet> = ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(c.proxy_protocol_from, want);
        assert!(
            Config::default().proxy_protocol_from.is_empty(),
            "off by default"
        );
        let c = from_parts(
            "edge_secret = \"s\"",
            &[("NEARHOP_EDGE_PROXY_PROTOCOL_FROM", "[\"127.0.0.0/8\"]")],
        )
        .unwrap();
        assert_eq!(
            c.proxy_protocol_from,
            ["127.0.0.0/8".parse::<IpNet>().unwrap()]
        );
        let e = from_parts(
            "edge_secret = \"s\"\nproxy_protocol_from = [\"lb.example\"]",
            &[],
        )
        .expect_err("refused")
        .to_string();
        assert!(e.contains("\"lb.example\" is neither a network"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(from_parts("edge_idd = \"x\"\nedge_secret = \"s\"", &[]).is_err());
    }
}
