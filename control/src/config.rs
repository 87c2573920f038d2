//! Control's configuration: a TOML file plus `NEARHOP_CONTROL_*` environment overrides,
//! parsed and validated once at start into types the rest of the code trusts.
//!
//! Long with its tests (about 180 lines of them): every setting's default and check sits
//! next to the test that pins it.

use anyhow::{bail, Result};
use nearhop_wire::duration_settings::{check_longest, check_not_zero, OutOfRange};
use nearhop_wire::settings::blame_variable;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// Prefix of the environment variables that override keys of the config file
/// (`NEARHOP_CONTROL_LAG_WAIT_MS` sets `lag_wait_ms`).
pub const ENV_PREFIX: &str = "NEARHOP_CONTROL_";
/// Tables whose keys are overridden as `NEARHOP_CONTROL_<TABLE>_<KEY>`
/// (`NEARHOP_CONTROL_ZONES_FREE_TIME_LIMIT_MINUTES`).
const ENV_TABLES: &[&str] = &["zones", "zones.pro", "zones.free"];

/// Everything control needs to run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the HTTP API and `/metrics`. Default `127.0.0.1:7080`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// libpq URL of the primary. Default `postgres://nearhop@127.0.0.1:55432/nearhop`.
    #[serde(default = "default_database_url")]
    pub database_url: String,
    /// Connections in the pool. Default 16.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// Legacy bearer secret shared by all edges (both directions). Optional: while set, it is
    /// accepted for any edge without a credential of its own; edges use their own credentials.
    #[serde(default)]
    pub edge_secret: Option<String>,
    /// Bearer secret of the admin API. Required.
    #[serde(default)]
    pub admin_secret: String,
    /// Secret the Ed25519 key that signs holder proofs derives from. Optional: unset, the
    /// key derives from `admin_secret` (as before this setting), so that rotating the admin
    /// secret re-keys the mesh; set it, and the admin secret can change alone.
    #[serde(default)]
    pub holder_key_secret: Option<String>,
    /// The secret of the holder key before the current one, while it is rotated: edges are
    /// sent its public key too and take proofs under either. Optional.
    #[serde(default)]
    pub holder_key_previous_secret: Option<String>,
    /// Region of the primary database (and of control). Default `us`.
    #[serde(default = "default_primary_region")]
    pub primary_region: String,
    /// The regions. At least one; the primary region among them.
    #[serde(default)]
    pub regions: Vec<RegionConfig>,
    /// Regions whose DNS must serve a new record before the URL is handed out.
    /// Default: every region.
    #[serde(default)]
    pub wait_regions: Option<Vec<String>>,
    /// Upper bound of the lag-race wait, in ms. Default 3000. 0 turns the wait off.
    #[serde(default = "default_lag_wait_ms")]
    pub lag_wait_ms: u64,
    /// A tunnel whose edge has not heartbeated it for this long is closed. Default 30 s.
    #[serde(default = "default_lease_seconds")]
    pub lease_seconds: u64,
    /// How often edges heartbeat. Default 10 s.
    #[serde(default = "default_heartbeat_seconds")]
    pub heartbeat_seconds: u64,
    /// Bound on a call to an edge's admin API (close, alive probe), in ms. Default 2500.
    #[serde(default = "default_edge_call_ms")]
    pub edge_call_ms: u64,
    /// How often expired leases and time limits are enforced, in ms. Default 1000.
    #[serde(default = "default_reap_interval_ms")]
    pub reap_interval_ms: u64,
    /// How long `dns_changes` rows are kept, in seconds. Default 3600.
    #[serde(default = "default_change_log_retention")]
    pub change_log_retention_seconds: u64,
    /// Largest request body accepted, in bytes. Default 64 KiB.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Prefix length that makes one IPv4 source for per-source limits. Default 32.
    #[serde(default = "default_source_prefix_v4")]
    pub source_prefix_v4: u8,
    /// Prefix length that makes one IPv6 source for per-source limits (a host usually owns a
    /// whole /64). Default 64.
    #[serde(default = "default_source_prefix_v6")]
    pub source_prefix_v6: u8,
    /// The two zones and their policies.
    #[serde(default)]
    pub zones: Zones,
    /// Addresses of the name servers named inside a zone (`ns-us.a.tunnel.test` → its
    /// addresses): seeded as that zone's A/AAAA records, the authoritative copy of the glue the
    /// parent zone holds. Each name must be a name server of a zone. Default: none.
    #[serde(default)]
    pub nameserver_addresses: BTreeMap<String, Vec<IpAddr>>,
    /// Obtain certificates by ACME (DNS-01) for the zones and verified custom domains, and
    /// hand them to the edges. Default off: edges keep their configured (or self-signed dev)
    /// certificate files.
    #[serde(default)]
    pub acme_enabled: bool,
    /// The ACME server's directory. Default Let's Encrypt's production directory.
    #[serde(default = "default_acme_directory_url")]
    pub acme_directory_url: String,
    /// Contact address given to the ACME server when control creates its account (optional).
    #[serde(default)]
    pub acme_contact_email: Option<String>,
    /// A PEM root certificate that control trusts for the ACME server's own HTTPS (a test CA
    /// such as Pebble's); unset: the system's roots.
    #[serde(default)]
    pub acme_ca_root_path: Option<std::path::PathBuf>,
    /// Renew a certificate this many days before it expires. Default 30.
    #[serde(default = "default_acme_renew_before_days")]
    pub acme_renew_before_days: u64,
    /// First wait after a failed attempt, seconds; doubled after each further failure.
    /// Default 60.
    #[serde(default = "default_acme_retry_min_seconds")]
    pub acme_retry_min_seconds: u64,
    /// Longest wait between failed attempts, seconds. Default 21600 (6 h).
    #[serde(default = "default_acme_retry_max_seconds")]
    pub acme_retry_max_seconds: u64,
    /// How often the renewal task looks for certificates to issue or renew, seconds.
    /// Default 60.
    #[serde(default = "default_acme_check_interval_seconds")]
    pub acme_check_interval_seconds: u64,
    /// How long control waits for every waited region's DNS to serve a challenge record
    /// before it asks the ACME server to validate, ms. Default 60000.
    #[serde(default = "default_acme_dns_wait_ms")]
    pub acme_dns_wait_ms: u64,
}

/// One region: its edge address (the `<region>.<zone>` A/AAAA record) and, optionally,
/// its pdns-backend whose applied position the lag-race wait watches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// Region name (`us`, `eu`, `ap`).
    pub name: String,
    /// Public IPv4 address of the region's edges.
    pub ipv4: Option<Ipv4Addr>,
    /// Public IPv6 address of the region's edges.
    pub ipv6: Option<Ipv6Addr>,
    /// Base URLs of the region's pdns-backend HTTP ports, e.g. `http://127.0.0.2:9153`: one
    /// per name server of the region (`backend_url = ["http://a:9153", "http://b:9153"]`), or
    /// one URL as a plain string. The lag race waits until every one serves a commit.
    #[serde(default, deserialize_with = "one_or_many")]
    pub backend_url: Vec<String>,
}

/// `key = "x"` or `key = ["x", "y"]`, read as a list.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(d).map_err(|_| {
        serde::de::Error::custom("expected a URL or a list of URLs (\"http://host:9153\")")
    })? {
        OneOrMany::One(s) => Ok(vec![s]),
        OneOrMany::Many(v) => Ok(v),
    }
}

/// The pro and free zones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zones {
    /// The pro zone.
    #[serde(default = "default_pro_zone")]
    pub pro: ZoneConfig,
    /// The free zone.
    #[serde(default = "default_free_zone")]
    pub free: ZoneConfig,
}

impl Default for Zones {
    fn default() -> Self {
        Zones {
            pro: default_pro_zone(),
            free: default_free_zone(),
        }
    }
}

/// One zone and its policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// Zone name, lowercase, no trailing dot.
    pub name: String,
    /// TTL of tunnel records, seconds. Default 10.
    #[serde(default = "default_record_ttl")]
    pub record_ttl: i32,
    /// SOA minimum (negative-caching TTL, RFC 2308), seconds. Default 5.
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: i32,
    /// TTL of the SOA, NS and region records, seconds. Default 60.
    #[serde(default = "default_infra_ttl")]
    pub infra_ttl: i32,
    /// Name servers of the zone (NS records). Default `ns1.<zone>`.
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// Tunnels are closed after this many minutes (0: no limit).
    #[serde(default)]
    pub time_limit_minutes: u64,
    /// Tunnel creations allowed per client address per minute (0: no limit).
    #[serde(default)]
    pub creations_per_minute_per_source: u64,
    /// Live tunnels allowed per account (0: no limit).
    #[serde(default)]
    pub max_tunnels_per_account: u64,
    /// Names an account may own in the zone (0: no limit).
    #[serde(default)]
    pub max_names_per_account: u64,
    /// Live anonymous (token-less) tunnels allowed per source prefix (0: no limit). Default
    /// 2: below a free account's 3, so a token stays worth having. Anonymous tunnels are
    /// always in the free zone; the pro zone's value is not used.
    #[serde(default = "default_anonymous_per_source")]
    pub max_anonymous_tunnels_per_source: u64,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7080))
}
fn default_database_url() -> String {
    "postgres://nearhop@127.0.0.1:55432/nearhop".into()
}
fn default_pool_size() -> u32 {
    16
}
fn default_primary_region() -> String {
    "us".into()
}
fn default_lag_wait_ms() -> u64 {
    3000
}
fn default_lease_seconds() -> u64 {
    30
}
fn default_heartbeat_seconds() -> u64 {
    10
}
fn default_edge_call_ms() -> u64 {
    2500
}
fn default_reap_interval_ms() -> u64 {
    1000
}
fn default_change_log_retention() -> u64 {
    3600
}
fn default_max_body() -> usize {
    64 * 1024
}
fn default_anonymous_per_source() -> u64 {
    2
}
fn default_source_prefix_v4() -> u8 {
    32
}
fn default_source_prefix_v6() -> u8 {
    64
}
fn default_acme_directory_url() -> String {
    "https://acme-v02.api.letsencrypt.org/directory".into()
}
fn default_acme_renew_before_days() -> u64 {
    30
}
fn default_acme_retry_min_seconds() -> u64 {
    60
}
fn default_acme_retry_max_seconds() -> u64 {
    6 * 3600
}
fn default_acme_check_interval_seconds() -> u64 {
    60
}
fn default_acme_dns_wait_ms() -> u64 {
    60_000
}
fn default_record_ttl() -> i32 {
    10
}
fn default_negative_ttl() -> i32 {
    5
}
fn default_infra_ttl() -> i32 {
    60
}
fn default_pro_zone() -> ZoneConfig {
    ZoneConfig {
        name: "a.tunnel.test".into(),
        record_ttl: 10,
        negative_ttl: 5,
        infra_ttl: 60,
        nameservers: Vec::new(),
        time_limit_minutes: 0,
        creations_per_minute_per_source: 0,
        max_tunnels_per_account: 20,
        max_names_per_account: 10,
        max_anonymous_tunnels_per_source: 2,
    }
}
fn default_free_zone() -> ZoneConfig {
    ZoneConfig {
        name: "free.tunnel.test".into(),
        record_ttl: 10,
        negative_ttl: 5,
        infra_ttl: 60,
        nameservers: Vec::new(),
        time_limit_minutes: 60,
        creations_per_minute_per_source: 10,
        max_tunnels_per_account: 3,
        max_names_per_account: 0,
        max_anonymous_tunnels_per_source: 2,
    }
}

impl Config {
    /// Reads the file (if given), applies the environment, validates.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let mut cfg: Config =
            nearhop_wire::settings::load_toml_with_env(path, ENV_PREFIX, ENV_TABLES)?;
        cfg.validate().map_err(|e| {
            anyhow::anyhow!(blame_variable(format!("{e:#}"), ENV_PREFIX, ENV_TABLES))
        })?;
        Ok(cfg)
    }

    pub(crate) fn validate(&mut self) -> Result<()> {
        if self.regions.is_empty() {
            self.regions.push(RegionConfig {
                name: self.primary_region.clone(),
                ipv4: Some(Ipv4Addr::LOCALHOST),
                ipv6: None,
                backend_url: Vec::new(),
            });
        }
        for r in &self.regions {
            let ok = !r.name.is_empty()
                && r.name.len() <= 31
                && r.name.starts_with(|c: char| c.is_ascii_lowercase())
                && r.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok {
                bail!("region name {:?} must be a lowercase DNS label", r.name);
            }
            if r.ipv4.is_none() && r.ipv6.is_none() {
                bail!(
                    "region {} needs ipv4 or ipv6 (its edges' public address)",
                    r.name
                );
            }
            for (i, url) in r.backend_url.iter().enumerate() {
                let ok = reqwest::Url::parse(url)
                    .map(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                    .unwrap_or(false);
                if !ok {
                    bail!(
                        "region {}: backend_url {url:?} is not an http(s) URL of a pdns-backend \
                         (e.g. \"http://10.20.0.10:9153\")",
                        r.name
                    );
                }
                if r.backend_url[..i].contains(url) {
                    bail!("region {}: backend_url lists {url:?} twice", r.name);
                }
            }
        }
        if !self.regions.iter().any(|r| r.name == self.primary_region) {
            bail!(
                "primary_region {:?} is not among the configured regions",
                self.primary_region
            );
        }
        if let Some(w) = &self.wait_regions {
            for name in w {
                if !self.regions.iter().any(|r| &r.name == name) {
                    bail!("wait_regions names {name:?}, which is not a configured region");
                }
            }
        }
        for z in [&mut self.zones.pro, &mut self.zones.free] {
            z.name = nearhop_wire::normalize_domain(&z.name)
                .map_err(|e| anyhow::anyhow!("zone name {:?}: {e}", z.name))?;
            if z.nameservers.is_empty() {
                z.nameservers.push(format!("ns1.{}", z.name));
            }
        }
        for (zone, z) in [("pro", &self.zones.pro), ("free", &self.zones.free)] {
            for (key, ttl) in [
                ("record_ttl", z.record_ttl),
                ("negative_ttl", z.negative_ttl),
                ("infra_ttl", z.infra_ttl),
            ] {
                if ttl < 0 {
                    bail!("setting zones.{zone}.{key} = {ttl} is out of range: a DNS TTL is 0 or more seconds");
                }
            }
        }
        if self.zones.pro.name == self.zones.free.name {
            bail!("the pro and free zones must differ");
        }
        let mut addresses = BTreeMap::new();
        for (name, ips) in std::mem::take(&mut self.nameserver_addresses) {
            let norm = name.trim_end_matches('.').to_ascii_lowercase();
            let known = [&self.zones.pro, &self.zones.free].iter().any(|z| {
                z.nameservers
                    .iter()
                    .any(|ns| ns.trim_end_matches('.').eq_ignore_ascii_case(&norm))
            });
            if !known {
                bail!(
                    "nameserver_addresses names {name:?}, which is not a name server of either \
                     zone (zones.pro.nameservers, zones.free.nameservers)"
                );
            }
            if ips.is_empty() {
                bail!("nameserver_addresses: {name:?} has no address");
            }
            addresses.insert(norm, ips);
        }
        self.nameserver_addresses = addresses;
        // A zone inside the other would let a tunnel of the outer zone take the inner
        // zone's apex (a pro user claiming `free` and putting a CNAME at the free zone's
        // apex), and records of one zone would shadow the other's.
        for (inner, outer) in [
            (&self.zones.free.name, &self.zones.pro.name),
            (&self.zones.pro.name, &self.zones.free.name),
        ] {
            if inner.ends_with(&format!(".{outer}")) {
                bail!(
                    "the zone {inner} is inside the zone {outer}; the pro and free zones must \
                     not be nested (use e.g. a.tunnel.test and free.tunnel.test, or two domains)"
                );
            }
        }
        if !(1..=32).contains(&self.source_prefix_v4) {
            bail!(
                "source_prefix_v4 must be 1-32, not {}",
                self.source_prefix_v4
            );
        }
        if !(1..=128).contains(&self.source_prefix_v6) {
            bail!(
                "source_prefix_v6 must be 1-128, not {}",
                self.source_prefix_v6
            );
        }
        if self.admin_secret.len() < 16 {
            bail!(
                "admin_secret must be set, 16 characters or more \
                 (config file or NEARHOP_CONTROL_ADMIN_SECRET)"
            );
        }
        // An empty value (e.g. `NEARHOP_CONTROL_EDGE_SECRET=`) means "not set".
        if self.edge_secret.as_deref() == Some("") {
            self.edge_secret = None;
        }
        if self.edge_secret.as_ref().is_some_and(|s| s.len() < 16) {
            bail!(
                "edge_secret, when set, must be 16 characters or more; better, leave it out and \
                 give each edge its own credential (`nearhop-control edge issue`)"
            );
        }
        self.validate_holder_key_secrets()?;
        self.check_durations()?;
        if self.lease_seconds <= self.heartbeat_seconds {
            bail!("lease_seconds must be longer than heartbeat_seconds");
        }
        self.validate_acme()
    }

    /// The secret the holder-proof key derives from now: `holder_key_secret`, else
    /// `admin_secret`.
    pub fn signing_holder_secret(&self) -> &str {
        self.holder_key_secret
            .as_deref()
            .unwrap_or(self.admin_secret.as_str())
    }

    /// Checks `holder_key_secret` and `holder_key_previous_secret` (after `admin_secret`).
    /// The messages never show a secret.
    fn validate_holder_key_secrets(&mut self) -> Result<()> {
        // An empty value (e.g. `NEARHOP_CONTROL_HOLDER_KEY_SECRET=`) means "not set".
        for secret in [
            &mut self.holder_key_secret,
            &mut self.holder_key_previous_secret,
        ] {
            if secret.as_deref() == Some("") {
                *secret = None;
            }
        }
        for (key, secret) in [
            ("holder_key_secret", &self.holder_key_secret),
            (
                "holder_key_previous_secret",
                &self.holder_key_previous_secret,
            ),
        ] {
            if secret.as_ref().is_some_and(|s| s.len() < 16) {
                bail!(
                    "{key}, when set, must be 16 characters or more \
                     (e.g. `openssl rand -hex 32`)"
                );
            }
        }
        if self.holder_key_previous_secret.as_deref() == Some(self.signing_holder_secret()) {
            let current = if self.holder_key_secret.is_some() {
                "holder_key_secret"
            } else {
                "admin_secret (holder_key_secret is unset)"
            };
            bail!(
                "holder_key_previous_secret is the secret holder proofs are signed with now \
                 ({current}); set it to the secret from before a rotation, or leave it out"
            );
        }
        Ok(())
    }

    /// Refuses durations longer than any timer may run, and 0 where nothing useful happens
    /// at 0 (module `nearhop_wire::duration_settings`). The ACME keys are checked even while
    /// ACME is off, so that turning it on does not meet a surprise.
    fn check_durations(&self) -> Result<(), OutOfRange> {
        check_longest([
            ("lag_wait_ms", self.lag_wait_ms),
            ("lease_seconds", self.lease_seconds),
            ("heartbeat_seconds", self.heartbeat_seconds),
            ("edge_call_ms", self.edge_call_ms),
            ("reap_interval_ms", self.reap_interval_ms),
            (
                "change_log_retention_seconds",
                self.change_log_retention_seconds,
            ),
            ("acme_renew_before_days", self.acme_renew_before_days),
            ("acme_retry_min_seconds", self.acme_retry_min_seconds),
            ("acme_retry_max_seconds", self.acme_retry_max_seconds),
            (
                "acme_check_interval_seconds",
                self.acme_check_interval_seconds,
            ),
            ("acme_dns_wait_ms", self.acme_dns_wait_ms),
            (
                "zones.pro.time_limit_minutes",
                self.zones.pro.time_limit_minutes,
            ),
            (
                "zones.free.time_limit_minutes",
                self.zones.free.time_limit_minutes,
            ),
        ])?;
        check_not_zero([
            ("heartbeat_seconds", self.heartbeat_seconds),
            ("edge_call_ms", self.edge_call_ms),
            ("reap_interval_ms", self.reap_interval_ms),
        ])
    }

    fn validate_acme(&mut self) -> Result<()> {
        if self.acme_contact_email.as_deref() == Some("") {
            self.acme_contact_email = None;
        }
        if self
            .acme_ca_root_path
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            self.acme_ca_root_path = None;
        }
        if !self.acme_enabled {
            return Ok(());
        }
        let url_ok = reqwest::Url::parse(&self.acme_directory_url)
            .map(|u| u.scheme() == "https" && u.host().is_some())
            .unwrap_or(false);
        if !url_ok {
            bail!(
                "acme_directory_url {:?} is not an https URL of an ACME directory \
                 (e.g. \"https://acme-v02.api.letsencrypt.org/directory\")",
                self.acme_directory_url
            );
        }
        if let Some(email) = &self.acme_contact_email {
            let ok = email.split_once('@').is_some_and(|(user, host)| {
                !user.is_empty() && host.contains('.') && !email.contains(char::is_whitespace)
            });
            if !ok {
                bail!("acme_contact_email {email:?} is not an e-mail address");
            }
        }
        if let Some(path) = &self.acme_ca_root_path {
            if !path.is_file() {
                bail!(
                    "acme_ca_root_path {} is not a readable file (a PEM root certificate)",
                    path.display()
                );
            }
        }
        if self.acme_retry_min_seconds == 0
            || self.acme_retry_min_seconds > self.acme_retry_max_seconds
        {
            bail!(
                "acme_retry_min_seconds must be at least 1 and at most acme_retry_max_seconds \
                 ({} and {} given)",
                self.acme_retry_min_seconds,
                self.acme_retry_max_seconds
            );
        }
        if self.acme_check_interval_seconds == 0 {
            bail!("acme_check_interval_seconds must be at least 1");
        }
        if self.acme_dns_wait_ms == 0 {
            bail!(
                "acme_dns_wait_ms must be at least 1: validation must wait for every region's DNS"
            );
        }
        Ok(())
    }

    /// Regions the lag-race wait covers.
    pub fn waited_regions(&self) -> Vec<RegionConfig> {
        match &self.wait_regions {
            Some(names) => self
                .regions
                .iter()
                .filter(|r| names.contains(&r.name))
                .cloned()
                .collect(),
            None => self.regions.clone(),
        }
    }

    /// The zone of a plan.
    pub fn zone_for(&self, plan: nearhop_wire::Plan) -> &ZoneConfig {
        match plan {
            nearhop_wire::Plan::Free => &self.zones.free,
            nearhop_wire::Plan::Pro => &self.zones.pro,
        }
    }

    /// Whether `label.<zone>` is one of the service's own names: a region's edge host
    /// (`us.a.tunnel.test`, which every tunnel served there points to), a name server
    /// inside the zone, the other zone's apex (refused in configuration already; checked
    /// again so that no later change can open it), or a label that names no tunnel at all
    /// (`_acme-challenge` and the other reserved labels). No tunnel may take those, and a
    /// takedown may not remove them.
    pub fn is_service_label(&self, zone: &ZoneConfig, label: &str) -> bool {
        let host = format!("{label}.{}", zone.name);
        self.regions
            .iter()
            .any(|r| r.name.eq_ignore_ascii_case(label))
            || zone
                .nameservers
                .iter()
                .any(|ns| ns.trim_end_matches('.').eq_ignore_ascii_case(&host))
            || [&self.zones.pro.name, &self.zones.free.name]
                .iter()
                .any(|z| z.eq_ignore_ascii_case(&host))
            || nearhop_wire::RESERVED_LABELS
                .iter()
                .any(|r| r.eq_ignore_ascii_case(label))
    }

    /// Refuses `label.<zone>` when it is one of the service's own names.
    pub fn check_not_service_label(
        &self,
        zone: &ZoneConfig,
        label: &str,
    ) -> crate::error::ControlResult<()> {
        if self.is_service_label(zone, label) {
            return Err(crate::error::ControlError::refused(
                nearhop_wire::ErrorCode::InvalidName,
                format!(
                    "the name {label}.{} belongs to the service itself (a region's edge host, \
                     a name server or another service name); choose another",
                    zone.name
                ),
            ));
        }
        Ok(())
    }

    /// The zone a hostname belongs to, and the label under it.
    pub fn split_hostname(&self, hostname: &str) -> Option<(&ZoneConfig, String)> {
        let host = nearhop_wire::storage_name(hostname)?;
        for z in [&self.zones.pro, &self.zones.free] {
            if let Some(label) = host.strip_suffix(&format!(".{}", z.name)) {
                if !label.contains('.') {
                    return Some((z, label.to_string()));
                }
            }
        }
        None
    }

    /// The source prefix of a client address for per-source limits (`203.0.113.7/32`,
    /// `2001:db8:1:2::/64`); an IPv4-mapped IPv6 address counts as IPv4. `None` for
    /// something that is not an address.
    pub fn source_prefix(&self, client_addr: &str) -> Option<String> {
        let ip = client_addr
            .parse::<std::net::IpAddr>()
            .or_else(|_| client_addr.parse::<SocketAddr>().map(|a| a.ip()))
            .ok()?;
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(std::net::IpAddr::V4)
                .unwrap_or(std::net::IpAddr::V6(v6)),
            v4 => v4,
        };
        Some(match ip {
            std::net::IpAddr::V4(v4) => {
                let bits = u32::from(self.source_prefix_v4.min(32));
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                format!("{}/{bits}", Ipv4Addr::from(u32::from(v4) & mask))
            }
            std::net::IpAddr::V6(v6) => {
                let bits = u32::from(self.source_prefix_v6.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                format!("{}/{bits}", Ipv6Addr::from(u128::from(v6) & mask))
            }
        })
    }

    /// The address records of the zone's own name servers that lie inside it (the in-zone
    /// name servers of `nameserver_addresses`): `(name, "A" | "AAAA", address)`.
    pub fn in_zone_nameserver_records(
        &self,
        zone: &ZoneConfig,
    ) -> Vec<(String, &'static str, String)> {
        let suffix = format!(".{}", zone.name);
        let mut out = Vec::new();
        for ns in &zone.nameservers {
            let name = ns.trim_end_matches('.').to_ascii_lowercase();
            if !name.ends_with(&suffix) {
                continue;
            }
            for ip in self.nameserver_addresses.get(&name).into_iter().flatten() {
                let rtype = if ip.is_ipv4() { "A" } else { "AAAA" };
                out.push((name.clone(), rtype, ip.to_string()));
            }
        }
        out
    }

    /// The zones' name servers that lie inside their zone and have no address in
    /// `nameserver_addresses`: `(zone, name server)`. Nothing in the zone answers for such
    /// a name, so a resolver that follows the zone's NS record to it gets NXDOMAIN (unless
    /// the parent zone's glue is all it asks).
    pub fn in_zone_nameservers_without_address(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for zone in [&self.zones.pro, &self.zones.free] {
            let suffix = format!(".{}", zone.name);
            for ns in &zone.nameservers {
                let name = ns.trim_end_matches('.').to_ascii_lowercase();
                if name.ends_with(&suffix) && !self.nameserver_addresses.contains_key(&name) {
                    out.push((zone.name.clone(), name));
                }
            }
        }
        out
    }

    /// How long before expiry a certificate is renewed.
    pub fn acme_renew_before(&self) -> Duration {
        Duration::from_secs(self.acme_renew_before_days.saturating_mul(86_400))
    }

    /// Lag-wait bound.
    pub fn lag_wait(&self) -> Duration {
        Duration::from_millis(self.lag_wait_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> Config {
        toml::from_str(
            r#"
            edge_secret = "0123456789abcdef"
            admin_secret = "0123456789abcdef"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn backend_url_is_one_url_or_a_list() {
        let c: Config = toml::from_str(
            r#"
            admin_secret = "0123456789abcdef"
            [[regions]]
            name = "us"
            ipv4 = "127.0.0.1"
            backend_url = "http://127.0.0.1:9153"
            [[regions]]
            name = "eu"
            ipv4 = "127.0.0.2"
            backend_url = ["http://127.0.0.2:9153", "http://127.0.0.12:9153"]
            [[regions]]
            name = "ap"
            ipv4 = "127.0.0.3"
            "#,
        )
        .unwrap();
        assert_eq!(c.regions[0].backend_url, vec!["http://127.0.0.1:9153"]);
        assert_eq!(
            c.regions[1].backend_url,
            vec!["http://127.0.0.2:9153", "http://127.0.0.12:9153"]
        );
        assert!(c.regions[2].backend_url.is_empty());
    }

    #[test]
    fn bad_backend_urls_are_refused_in_words() {
        let parse = |v: &str| {
            let mut c: Config = toml::from_str(&format!(
                "admin_secret = \"0123456789abcdef\"\n[[regions]]\nname = \"us\"\n\
                 ipv4 = \"127.0.0.1\"\nbackend_url = {v}\n"
            ))
            .map_err(|e| e.to_string())?;
            c.validate().map_err(|e| e.to_string())
        };
        let e = parse("42").unwrap_err();
        assert!(e.contains("expected a URL or a list of URLs"), "{e}");
        let e = parse(r#"["127.0.0.1:9153"]"#).unwrap_err();
        assert!(e.contains("is not an http(s) URL of a pdns-backend"), "{e}");
        let e = parse(r#"["http://a:9153", "http://a:9153"]"#).unwrap_err();
        assert!(e.contains("twice"), "{e}");
        parse(r#"["http://a:9153", "https://b:9153"]"#).unwrap();
    }

    #[test]
    fn in_zone_name_servers_get_address_records_and_others_are_refused() {
        let mut c = minimal();
        c.zones.pro.nameservers = vec!["ns-us.a.tunnel.test".into(), "ns-eu.dns.example".into()];
        c.zones.free.nameservers = c.zones.pro.nameservers.clone();
        c.nameserver_addresses = BTreeMap::from([
            (
                "NS-US.a.tunnel.test.".to_string(),
                vec![
                    "198.51.100.10".parse().unwrap(),
                    "2001:db8::10".parse().unwrap(),
                ],
            ),
            (
                "ns-eu.dns.example".to_string(),
                vec!["198.51.100.110".parse().unwrap()],
            ),
        ]);
        c.validate().unwrap();
        let pro = c.zones.pro.clone();
        assert_eq!(
            c.in_zone_nameserver_records(&pro),
            vec![
                (
                    "ns-us.a.tunnel.test".to_string(),
                    "A",
                    "198.51.100.10".to_string()
                ),
                (
                    "ns-us.a.tunnel.test".to_string(),
                    "AAAA",
                    "2001:db8::10".to_string()
                ),
            ],
            "only the name server inside the zone, every address"
        );
        let free = c.zones.free.clone();
        assert!(c.in_zone_nameserver_records(&free).is_empty());
        assert!(c.in_zone_nameservers_without_address().is_empty());
        // Without addresses, the in-zone name server is named for the warning at start.
        c.nameserver_addresses.clear();
        assert_eq!(
            c.in_zone_nameservers_without_address(),
            vec![(
                "a.tunnel.test".to_string(),
                "ns-us.a.tunnel.test".to_string()
            )]
        );

        let mut c = minimal();
        c.nameserver_addresses = BTreeMap::from([(
            "ns9.a.tunnel.test".to_string(),
            vec!["198.51.100.9".parse().unwrap()],
        )]);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("not a name server of either zone"), "{e}");
    }

    #[test]
    fn defaults_validate_with_secrets() {
        let mut c = minimal();
        c.validate().unwrap();
        assert_eq!(
            c.zones.pro.nameservers,
            vec!["ns1.a.tunnel.test".to_string()]
        );
        assert_eq!(c.regions.len(), 1);
    }

    #[test]
    fn region_hosts_and_in_zone_name_servers_are_the_services_own() {
        let mut c = minimal();
        c.zones.pro.nameservers = vec!["dns-a.a.tunnel.test.".into(), "dns-b.example.net".into()];
        c.validate().unwrap();
        let region = c.regions[0].name.clone();
        let pro = c.zones.pro.clone();
        assert!(c.is_service_label(&pro, &region));
        assert!(c.is_service_label(&pro, "dns-a"));
        assert!(
            !c.is_service_label(&pro, "dns-b"),
            "an out-of-zone name server"
        );
        assert!(!c.is_service_label(&pro, "blog"));
        let e = c.check_not_service_label(&pro, "dns-a").unwrap_err();
        assert!(
            e.to_string().contains("belongs to the service itself"),
            "{e}"
        );
    }

    #[test]
    fn nested_zones_are_refused_naming_both() {
        for (pro, free) in [
            ("a.tunnel.test", "free.a.tunnel.test"),
            ("pro.free.test", "free.test"),
        ] {
            let mut c = minimal();
            c.zones.pro.name = pro.into();
            c.zones.free.name = free.into();
            let e = c.validate().unwrap_err().to_string();
            assert!(
                e.contains(pro) && e.contains(free) && e.contains("nested"),
                "{e}"
            );
        }
        let mut c = minimal();
        c.zones.pro.name = "a.tunnel.test".into();
        c.zones.free.name = "xa.tunnel.test".into();
        c.validate().unwrap();
    }

    #[test]
    fn service_names_include_reserved_labels_and_the_other_apex() {
        let mut c = minimal();
        c.validate().unwrap();
        let pro = c.zones.pro.clone();
        for l in [
            "_acme-challenge",
            "_ACME-challenge",
            "www",
            "connect",
            "ns1",
        ] {
            assert!(c.is_service_label(&pro, l), "{l}");
        }
        // Not reachable with valid zones, but checked: the other zone's apex.
        c.zones.free.name = "free.a.tunnel.test".into();
        assert!(c.is_service_label(&pro, "free"));
    }

    #[test]
    fn every_name_the_seeded_records_use_is_the_services_own() {
        let mut c = minimal();
        c.zones.pro.nameservers = vec!["dns-a.a.tunnel.test".into()];
        c.validate().unwrap();
        for zone in [c.zones.pro.clone(), c.zones.free.clone()] {
            // The SOA's MNAME and RNAME (the contact mailbox, `hostmaster.<zone>`).
            let soa = crate::zones::soa_content(&zone, 1);
            let mut fields = soa.split(' ');
            let mut used: Vec<String> = Vec::new();
            for name in [fields.next().unwrap(), fields.next().unwrap()] {
                if let Some(label) = name.strip_suffix(&format!(".{}", zone.name)) {
                    used.push(label.to_string());
                }
            }
            assert!(used.contains(&"hostmaster".to_string()), "{soa}");
            used.extend(c.regions.iter().map(|r| r.name.clone()));
            for label in used {
                assert!(
                    c.is_service_label(&zone, &label),
                    "{label}.{} is in the zone's own records but could be a tunnel's",
                    zone.name
                );
            }
        }
    }

    #[test]
    fn source_prefixes_group_a_host_and_its_v6_64() {
        let mut c = minimal();
        c.validate().unwrap();
        assert_eq!(c.source_prefix("203.0.113.7").unwrap(), "203.0.113.7/32");
        assert_eq!(
            c.source_prefix("2001:db8:1:2:aaaa::1").unwrap(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            c.source_prefix("2001:db8:1:2:bbbb::9").unwrap(),
            c.source_prefix("[2001:db8:1:2:cccc::1]:22").unwrap()
        );
        assert_eq!(
            c.source_prefix("::ffff:198.51.100.4").unwrap(),
            "198.51.100.4/32"
        );
        c.source_prefix_v4 = 24;
        assert_eq!(c.source_prefix("203.0.113.7:5").unwrap(), "203.0.113.0/24");
        assert_eq!(c.source_prefix("not an address"), None);
        c.source_prefix_v4 = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("source_prefix_v4"));
    }

    #[test]
    fn missing_secrets_are_refused() {
        let mut c: Config = toml::from_str("").unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("admin_secret"));
    }

    #[test]
    fn edge_secret_is_optional_but_long_when_set() {
        let mut c: Config = toml::from_str(r#"admin_secret = "0123456789abcdef""#).unwrap();
        c.validate().unwrap();
        assert!(c.edge_secret.is_none());
        c.edge_secret = Some("short".into());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("edge_secret"));
    }

    #[test]
    fn the_holder_key_follows_admin_secret_until_its_own_secret_is_set() {
        let admin = "admin_secret = \"0123456789abcdef\"\n";
        let c = from_parts(admin, &[]).unwrap();
        assert_eq!(c.signing_holder_secret(), "0123456789abcdef");
        // Set, it stays put while the admin secret changes.
        let c = from_parts(
            admin,
            &[
                ("NEARHOP_CONTROL_ADMIN_SECRET", "a-new-admin-secret-0"),
                ("NEARHOP_CONTROL_HOLDER_KEY_SECRET", "0123456789abcdef"),
            ],
        )
        .unwrap();
        assert_eq!(c.admin_secret, "a-new-admin-secret-0");
        assert_eq!(c.signing_holder_secret(), "0123456789abcdef");
        // From the file too, with the previous one; an empty variable means unset.
        let c = from_parts(
            &format!(
                "{admin}holder_key_secret = \"the-new-holder-secret\"\n\
                 holder_key_previous_secret = \"the-old-holder-secret\"\n"
            ),
            &[],
        )
        .unwrap();
        assert_eq!(c.signing_holder_secret(), "the-new-holder-secret");
        assert_eq!(
            c.holder_key_previous_secret.as_deref(),
            Some("the-old-holder-secret")
        );
        let c = from_parts(admin, &[("NEARHOP_CONTROL_HOLDER_KEY_SECRET", "")]).unwrap();
        assert_eq!(c.holder_key_secret, None);
        assert_eq!(c.signing_holder_secret(), "0123456789abcdef");
    }

    #[test]
    fn holder_key_secrets_are_long_and_the_previous_is_not_the_current() {
        let admin = "admin_secret = \"0123456789abcdef\"\n";
        for key in ["HOLDER_KEY_SECRET", "HOLDER_KEY_PREVIOUS_SECRET"] {
            let var = format!("NEARHOP_CONTROL_{key}");
            let e = from_parts(admin, &[(&var, "short-secret")])
                .unwrap_err()
                .to_string();
            let setting = key.to_ascii_lowercase();
            assert!(
                e.contains(&format!("{setting}, when set, must be 16")),
                "{e}"
            );
            assert!(
                !e.contains("short-secret"),
                "the message shows no secret: {e}"
            );
        }
        // The previous secret equal to the one signing now: to admin_secret while
        // holder_key_secret is unset, else to holder_key_secret.
        let e = from_parts(
            admin,
            &[(
                "NEARHOP_CONTROL_HOLDER_KEY_PREVIOUS_SECRET",
                "0123456789abcdef",
            )],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("admin_secret (holder_key_secret is unset)"),
            "{e}"
        );
        let e = from_parts(
            admin,
            &[
                ("NEARHOP_CONTROL_HOLDER_KEY_SECRET", "the-holder-secret-1"),
                (
                    "NEARHOP_CONTROL_HOLDER_KEY_PREVIOUS_SECRET",
                    "the-holder-secret-1",
                ),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("signed with now (holder_key_secret)"), "{e}");
        assert!(!e.contains("the-holder-secret-1"), "{e}");
        // The admin secret as the previous one: a key that followed it, rotated away.
        from_parts(
            admin,
            &[
                ("NEARHOP_CONTROL_HOLDER_KEY_SECRET", "the-holder-secret-1"),
                (
                    "NEARHOP_CONTROL_HOLDER_KEY_PREVIOUS_SECRET",
                    "0123456789abcdef",
                ),
            ],
        )
        .unwrap();
    }

    fn from_parts(text: &str, env: &[(&str, &str)]) -> Result<Config> {
        let vars = env
            .iter()
            .map(|(k, v)| (std::ffi::OsString::from(k), std::ffi::OsString::from(v)));
        let file = Some((Path::new("control.toml"), text));
        let mut c: Config =
            nearhop_wire::settings::parse_toml_with_env(file, ENV_PREFIX, ENV_TABLES, vars)?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn env_overrides_file() {
        let file = "lag_wait_ms = 5\nedge_secret = \"0123456789abcdef\"\nadmin_secret = \"0123456789abcdef\"";
        let c = from_parts(file, &[("NEARHOP_CONTROL_LAG_WAIT_MS", "17")]).unwrap();
        assert_eq!(c.lag_wait_ms, 17);
        let err = from_parts("", &[("NEARHOP_CONTROL_LAG_WAIT_MS", "x")]).unwrap_err();
        assert!(err.to_string().contains("NEARHOP_CONTROL_LAG_WAIT_MS"));
    }

    #[test]
    fn the_documented_overrides_still_apply_and_secrets_stay_verbatim() {
        let c = from_parts(
            "[zones.free]\nname = \"free.tunnel.test\"",
            &[
                ("NEARHOP_CONTROL_LISTEN", "127.0.0.2:7081"),
                (
                    "NEARHOP_CONTROL_DATABASE_URL",
                    "postgres://x@127.0.0.1:1/db",
                ),
                ("NEARHOP_CONTROL_EDGE_SECRET", "1234567890123456789"),
                ("NEARHOP_CONTROL_ADMIN_SECRET", "true-admin-secret-0"),
                ("NEARHOP_CONTROL_LAG_WAIT_MS", "0"),
                ("NEARHOP_CONTROL_LEASE_SECONDS", "45"),
                ("NEARHOP_CONTROL_POOL_SIZE", "4"),
                ("NEARHOP_CONTROL_ZONES_FREE_TIME_LIMIT_MINUTES", "90"),
                ("NEARHOP_CONTROL_CONFIG", "/etc/nearhop/control.toml"),
            ],
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.2:7081".parse().unwrap());
        assert_eq!(c.database_url, "postgres://x@127.0.0.1:1/db");
        assert_eq!(c.edge_secret.as_deref(), Some("1234567890123456789"));
        assert_eq!(c.admin_secret, "true-admin-secret-0");
        assert_eq!((c.lag_wait_ms, c.lease_seconds, c.pool_size), (0, 45, 4));
        assert_eq!(c.zones.free.time_limit_minutes, 90);
        assert_eq!(c.zones.free.name, "free.tunnel.test");
        let err = from_parts("", &[("NEARHOP_CONTROL_LISTEN", "nowhere")]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("environment variable NEARHOP_CONTROL_LISTEN=\"nowhere\" is invalid"),
            "{err}"
        );
    }

    #[test]
    fn acme_is_off_by_default_and_checked_when_on() {
        let c = from_parts("admin_secret = \"0123456789abcdef\"", &[]).unwrap();
        assert!(!c.acme_enabled);
        assert_eq!(c.acme_renew_before(), Duration::from_secs(30 * 86_400));
        assert_eq!(
            (c.acme_retry_min_seconds, c.acme_retry_max_seconds),
            (60, 21_600)
        );
        let on = |env: &[(&str, &str)]| {
            let mut all = vec![
                ("NEARHOP_CONTROL_ADMIN_SECRET", "0123456789abcdef"),
                ("NEARHOP_CONTROL_ACME_ENABLED", "true"),
            ];
            all.extend_from_slice(env);
            from_parts("", &all)
        };
        let c = on(&[
            (
                "NEARHOP_CONTROL_ACME_DIRECTORY_URL",
                "https://127.0.0.1:14000/dir",
            ),
            ("NEARHOP_CONTROL_ACME_CONTACT_EMAIL", "ops@example.net"),
            ("NEARHOP_CONTROL_ACME_RENEW_BEFORE_DAYS", "90"),
        ])
        .unwrap();
        assert_eq!(c.acme_directory_url, "https://127.0.0.1:14000/dir");
        assert_eq!(c.acme_renew_before_days, 90);
        let e = on(&[("NEARHOP_CONTROL_ACME_DIRECTORY_URL", "http://x/dir")]).unwrap_err();
        assert!(e.to_string().contains("not an https URL"), "{e}");
        let e = on(&[("NEARHOP_CONTROL_ACME_CONTACT_EMAIL", "nobody")]).unwrap_err();
        assert!(e.to_string().contains("not an e-mail address"), "{e}");
        let e = on(&[("NEARHOP_CONTROL_ACME_CA_ROOT_PATH", "/nonexistent/root.pem")]).unwrap_err();
        assert!(e.to_string().contains("not a readable file"), "{e}");
        let e = on(&[
            ("NEARHOP_CONTROL_ACME_RETRY_MIN_SECONDS", "600"),
            ("NEARHOP_CONTROL_ACME_RETRY_MAX_SECONDS", "60"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("acme_retry_min_seconds"), "{e}");
    }

    #[test]
    fn every_duration_key_refuses_more_than_366_days_naming_itself() {
        use nearhop_wire::duration_settings::{
            other_duration_fields, unit_of, whole_duration_keys, LONGEST_SECONDS,
        };
        let keys = whole_duration_keys(include_str!("config.rs"));
        assert!(keys.len() >= 11, "found the duration keys: {keys:?}");
        // Checked by hand in `check_durations` (and below), as `zones.*.time_limit_minutes`.
        assert_eq!(
            other_duration_fields(include_str!("config.rs")),
            ["time_limit_minutes"],
            "a duration setting the checks do not cover"
        );
        for key in keys {
            let (unit_ms, _) = unit_of(&key).expect("a duration key");
            let too_long = LONGEST_SECONDS * 1_000 / unit_ms + 1;
            let mut c: Config = toml::from_str(&format!(
                "admin_secret = \"0123456789abcdef\"\n{key} = {too_long}"
            ))
            .unwrap();
            let e = c.validate().expect_err(&key).to_string();
            let said = format!("setting {key} = {too_long} is out of range");
            assert!(e.contains(&said), "{key}: {e}");
        }
        for zone in ["pro", "free"] {
            let key = format!("zones.{zone}.time_limit_minutes");
            let mut c: Config = toml::from_str(&format!(
                "admin_secret = \"0123456789abcdef\"\n[zones.{zone}]\nname = \"{zone}.test\"\n\
                 time_limit_minutes = 527041"
            ))
            .unwrap();
            let e = c.validate().expect_err(&key).to_string();
            assert!(e.contains(&format!("setting {key} = 527041")), "{e}");
        }
        let mut c = minimal();
        c.zones.free.time_limit_minutes = 366 * 24 * 60;
        c.lease_seconds = LONGEST_SECONDS;
        c.change_log_retention_seconds = LONGEST_SECONDS;
        c.acme_renew_before_days = 366;
        c.validate().expect("the longest durations are accepted");
    }

    #[test]
    fn a_negative_ttl_is_refused_naming_its_zone() {
        let mut c: Config = toml::from_str(
            "admin_secret = \"0123456789abcdef\"\n[zones.free]\nname = \"f.test\"\nnegative_ttl = -5",
        )
        .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("setting zones.free.negative_ttl = -5"), "{e}");
    }

    #[test]
    fn a_reaper_tick_or_edge_call_of_zero_is_refused() {
        for key in ["heartbeat_seconds", "edge_call_ms", "reap_interval_ms"] {
            let mut c: Config =
                toml::from_str(&format!("admin_secret = \"0123456789abcdef\"\n{key} = 0")).unwrap();
            let e = c.validate().expect_err(key).to_string();
            assert!(e.contains(&format!("setting {key} = 0")), "{e}");
        }
        let mut c = minimal();
        c.lag_wait_ms = 0;
        c.validate()
            .expect("lag_wait_ms = 0 turns the lag race off");
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("lag_wiat_ms = 3").is_err());
    }

    #[test]
    fn hostnames_split_into_zone_and_label() {
        let mut c = minimal();
        c.validate().unwrap();
        let (z, l) = c.split_hostname("Foo.A.tunnel.test.").unwrap();
        assert_eq!((z.name.as_str(), l.as_str()), ("a.tunnel.test", "foo"));
        assert!(c.split_hostname("x.y.a.tunnel.test").is_none());
        assert!(c.split_hostname("a.tunnel.test").is_none());
    }
}
