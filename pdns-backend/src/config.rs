//! Configuration: a TOML file plus `NEARHOP_PDNS_BACKEND_<KEY>` environment overrides, parsed
//! and validated once at start into types the rest of the backend trusts.

use anyhow::{bail, Result};
use ipnet::IpNet;
use nearhop_wire::duration_settings::{check_longest, check_longest_secs_f64, check_not_zero};
use nearhop_wire::settings::blame_variable;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Prefix of the environment variables that override file settings.
pub const ENV_PREFIX: &str = "NEARHOP_PDNS_BACKEND_";
/// Tables whose keys are overridden as `NEARHOP_PDNS_BACKEND_<TABLE>_<KEY>`.
const ENV_TABLES: &[&str] = &["apex"];

/// Everything the backend needs to run, validated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// libpq connection string (keyword/value or URL) of the region's replica (or primary).
    #[serde(default = "default_database_url")]
    pub database_url: String,
    /// Unix socket for pdns's `unix` connector; not served when absent.
    #[serde(default)]
    pub unix_socket: Option<PathBuf>,
    /// Address of the HTTP listener: `/metrics`, `/v1/wait`, `/v1/status` and the `http`
    /// connector under `/dns`.
    #[serde(default = "default_http_listen")]
    pub http_listen: SocketAddr,
    /// pdns's `socket-dir`; when set, every changed name is purged from pdns's caches through
    /// `<socket_dir>/pdns.controlsocket`.
    #[serde(default)]
    pub pdns_socket_dir: Option<PathBuf>,
    /// How often the replica's replay position is checked, in milliseconds.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// How often regions and edge heartbeats are re-read, in milliseconds.
    #[serde(default = "default_refresh_ms")]
    pub refresh_ms: u64,
    /// Upper bound of the reconnect backoff, in milliseconds.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// How long the HTTP listener waits for a request's headers (on a new connection, and
    /// between requests of a kept-alive one) before it closes the connection, in milliseconds.
    #[serde(default = "default_http_header_read_timeout_ms")]
    pub http_header_read_timeout_ms: u64,
    /// Longest request line accepted from a connector, in bytes.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Delays (ms after the first purge) of the repeated purges of a changed name. A repeat
    /// removes an answer that a pdns thread fetched just before the change and cached just
    /// after the first purge.
    #[serde(default = "default_purge_repeat_ms")]
    pub purge_repeat_ms: Vec<u64>,
    /// The connect name's answer (zone apex A/AAAA).
    #[serde(default)]
    pub apex: ApexConfig,
    /// Per-zone policy, keyed by zone name (`[zones."a.tunnel.test"]`); a zone not listed
    /// gets every default.
    #[serde(default)]
    pub zones: BTreeMap<String, ZoneConfig>,
}

/// One zone's policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// What a name of the zone answers when it has no record of its own.
    #[serde(default)]
    pub unknown_names: UnknownNames,
}

/// What a name directly below a zone's apex answers when it has no record of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownNames {
    /// NXDOMAIN, as the DNS says (with the SOA and its low negative TTL).
    #[default]
    Nxdomain,
    /// A/AAAA of the connect name (the nearest healthy region's edge, scoped by client
    /// subnet): the visitor reaches an edge, which relays to the tunnel's holder or shows
    /// "No tunnel here".
    NearestEdge,
}

/// How the zone apex's A/AAAA answer is chosen.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApexConfig {
    /// Region answered when no prefix matches (or none of the matched regions is healthy).
    #[serde(default = "default_region")]
    pub default_region: String,
    /// A region is healthy while one of its edges heartbeated within this many seconds.
    #[serde(default = "default_heartbeat_bound_secs")]
    pub heartbeat_bound_secs: f64,
    /// TTL of the apex A/AAAA answer.
    #[serde(default = "default_apex_ttl")]
    pub ttl: u32,
    /// Client prefix → region, or → regions in order of preference. Longest prefix wins.
    #[serde(default)]
    pub prefixes: PrefixMap,
}

/// The client prefixes and their regions, parsed from `{ "10.0.0.0/8" = ["eu", "us"] }`.
#[derive(Debug, Clone, Default)]
pub struct PrefixMap(Vec<(IpNet, Vec<String>)>);

impl PrefixMap {
    /// The prefixes (host bits cleared) and their regions, most preferred first.
    pub fn entries(&self) -> &[(IpNet, Vec<String>)] {
        &self.0
    }
}

impl<'de> Deserialize<'de> for PrefixMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = BTreeMap::<String, RegionChoice>::deserialize(d)?;
        raw.into_iter()
            .map(|(prefix, choice)| Ok((parse_prefix(&prefix)?, choice.regions())))
            .collect::<Result<_, String>>()
            .map(PrefixMap)
            .map_err(serde::de::Error::custom)
    }
}

/// One region, or several in order of preference.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RegionChoice {
    /// A single region.
    One(String),
    /// Regions in order of preference.
    Ordered(Vec<String>),
}

impl RegionChoice {
    /// The regions, most preferred first.
    pub fn regions(&self) -> Vec<String> {
        match self {
            RegionChoice::One(r) => vec![r.clone()],
            RegionChoice::Ordered(rs) => rs.clone(),
        }
    }
}

impl Default for ApexConfig {
    fn default() -> Self {
        ApexConfig {
            default_region: default_region(),
            heartbeat_bound_secs: default_heartbeat_bound_secs(),
            ttl: default_apex_ttl(),
            prefixes: PrefixMap::default(),
        }
    }
}

fn default_database_url() -> String {
    "host=127.0.0.1 port=55432 user=nearhop dbname=nearhop".into()
}
fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9153))
}
fn default_poll_interval_ms() -> u64 {
    1
}
fn default_refresh_ms() -> u64 {
    1000
}
fn default_reconnect_max_ms() -> u64 {
    2000
}
fn default_http_header_read_timeout_ms() -> u64 {
    10_000
}
fn default_max_request_bytes() -> usize {
    64 * 1024
}
fn default_purge_repeat_ms() -> Vec<u64> {
    vec![10, 100, 500]
}
fn default_region() -> String {
    "us".into()
}
fn default_heartbeat_bound_secs() -> f64 {
    30.0
}
fn default_apex_ttl() -> u32 {
    10
}

impl Config {
    /// Reads `path` (if given), applies the environment overrides and validates.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let cfg: Config = nearhop_wire::settings::load_toml_with_env(path, ENV_PREFIX, ENV_TABLES)?;
        cfg.validate().map_err(|e| {
            anyhow::anyhow!(blame_variable(format!("{e:#}"), ENV_PREFIX, ENV_TABLES))
        })?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        check_longest([
            ("poll_interval_ms", self.poll_interval_ms),
            ("refresh_ms", self.refresh_ms),
            ("reconnect_max_ms", self.reconnect_max_ms),
            (
                "http_header_read_timeout_ms",
                self.http_header_read_timeout_ms,
            ),
        ])?;
        check_longest(
            self.purge_repeat_ms
                .iter()
                .map(|&ms| ("purge_repeat_ms", ms)),
        )?;
        check_not_zero([
            ("poll_interval_ms", self.poll_interval_ms),
            (
                "http_header_read_timeout_ms",
                self.http_header_read_timeout_ms,
            ),
        ])?;
        if self.max_request_bytes < 1024 {
            bail!("max_request_bytes must be at least 1024");
        }
        if self.apex.heartbeat_bound_secs.is_nan() || self.apex.heartbeat_bound_secs <= 0.0 {
            bail!("apex.heartbeat_bound_secs must be positive");
        }
        check_longest_secs_f64("apex.heartbeat_bound_secs", self.apex.heartbeat_bound_secs)?;
        if self.apex.ttl > i32::MAX as u32 {
            bail!(
                "setting apex.ttl = {} is out of range: a DNS TTL is at most 2147483647 seconds \
                 (RFC 2181)",
                self.apex.ttl
            );
        }
        for zone in self.zones.keys() {
            if zone.is_empty() || nearhop_wire::storage_name(zone).as_deref() != Some(zone.as_str())
            {
                bail!("zones: {zone:?} is not a zone name in lower case without the trailing dot");
            }
        }
        Ok(())
    }

    /// The zones whose unknown names answer like the connect name.
    pub fn nearest_edge_zones(&self) -> impl Iterator<Item = &str> {
        self.zones
            .iter()
            .filter(|(_, z)| z.unknown_names == UnknownNames::NearestEdge)
            .map(|(name, _)| name.as_str())
    }

    /// The HTTP listener's header-read timeout as a duration.
    pub fn http_header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.http_header_read_timeout_ms)
    }

    /// Poll interval as a duration.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
}

/// Parses `10.0.0.0/8` or a bare address (a host prefix).
fn parse_prefix(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    match s.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(IpNet::from(ip)),
        Err(_) => Err(format!(
            "apex.prefixes: {s:?} is not a prefix such as 10.0.0.0/8"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn from_parts(text: &str, env: &[(&str, &str)]) -> Result<Config> {
        let vars = env
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let file = Some((Path::new("backend.toml"), text));
        let cfg: Config =
            nearhop_wire::settings::parse_toml_with_env(file, ENV_PREFIX, ENV_TABLES, vars)?;
        cfg.validate()?;
        Ok(cfg)
    }

    #[test]
    fn defaults_apply_to_an_empty_file() {
        let cfg = from_parts("", &[]).expect("config");
        assert_eq!(cfg.http_listen.port(), 9153);
        assert_eq!(cfg.apex.default_region, "us");
        assert_eq!(cfg.poll_interval_ms, 1);
    }

    #[test]
    fn env_overrides_file_values_including_apex_tables() {
        let env = [
            ("NEARHOP_PDNS_BACKEND_POLL_INTERVAL_MS", "5"),
            ("NEARHOP_PDNS_BACKEND_DATABASE_URL", "host=/tmp port=1"),
            (
                "NEARHOP_PDNS_BACKEND_CONFIG",
                "/etc/nearhop/pdns-backend.toml",
            ),
            (
                "NEARHOP_PDNS_BACKEND_APEX_PREFIXES",
                r#"{ "127.0.0.2/32" = "eu", "10.1.2.3/8" = ["ap", "us"] }"#,
            ),
        ];
        let cfg = from_parts("poll_interval_ms = 2\n", &env).expect("config");
        assert_eq!(cfg.poll_interval_ms, 5);
        assert_eq!(cfg.database_url, "host=/tmp port=1");
        let map = cfg.apex.prefixes.entries();
        assert_eq!(map.len(), 2);
        let (net, regions) = &map[0];
        assert_eq!(
            (net.to_string(), regions.clone()),
            ("10.0.0.0/8".into(), vec!["ap".to_string(), "us".into()])
        );
    }

    #[test]
    fn bad_prefix_is_refused_in_words() {
        let err = from_parts("[apex.prefixes]\n\"nonsense\" = \"eu\"\n", &[]).expect_err("refused");
        assert!(
            err.to_string()
                .contains("apex.prefixes: \"nonsense\" is not a prefix such as 10.0.0.0/8"),
            "{err}"
        );
        let err = from_parts(
            "",
            &[("NEARHOP_PDNS_BACKEND_APEX_PREFIXES", "{ x = \"eu\" }")],
        )
        .expect_err("refused");
        assert!(
            err.to_string()
                .contains("NEARHOP_PDNS_BACKEND_APEX_PREFIXES"),
            "{err}"
        );
    }

    #[test]
    fn unknown_names_are_set_per_zone_and_default_to_nxdomain() {
        let text = "[zones.\"a.tunnel.test\"]\nunknown_names = \"nearest_edge\"\n\
                    [zones.\"free.tunnel.test\"]\n";
        let cfg = from_parts(text, &[]).expect("config");
        assert_eq!(
            cfg.nearest_edge_zones().collect::<Vec<_>>(),
            ["a.tunnel.test"]
        );
        assert_eq!(
            cfg.zones["free.tunnel.test"].unknown_names,
            UnknownNames::Nxdomain
        );
        assert_eq!(
            from_parts("", &[])
                .expect("config")
                .nearest_edge_zones()
                .count(),
            0
        );
        let env = [(
            "NEARHOP_PDNS_BACKEND_ZONES",
            r#"{ "x.test" = { unknown_names = "nearest_edge" } }"#,
        )];
        let cfg = from_parts(text, &env).expect("config");
        assert_eq!(cfg.nearest_edge_zones().collect::<Vec<_>>(), ["x.test"]);
    }

    #[test]
    fn bad_zone_settings_are_refused() {
        let wildcard = "[zones.\"a.tunnel.test\"]\nunknown_names = \"wildcard\"\n";
        assert!(from_parts(wildcard, &[]).is_err());
        let dotted = "[zones.\"A.Tunnel.Test.\"]\nunknown_names = \"nearest_edge\"\n";
        let err = from_parts(dotted, &[]).expect_err("refused");
        assert!(err.to_string().contains("\"A.Tunnel.Test.\""), "{err}");
    }

    #[test]
    fn every_duration_key_refuses_more_than_366_days_naming_itself() {
        use nearhop_wire::duration_settings::{
            other_duration_fields, unit_of, whole_duration_keys, LONGEST_SECONDS,
        };
        let keys = whole_duration_keys(include_str!("config.rs"));
        assert!(keys.len() >= 4, "found the duration keys: {keys:?}");
        // Checked by hand in `validate` (and below).
        assert_eq!(
            other_duration_fields(include_str!("config.rs")),
            ["purge_repeat_ms", "heartbeat_bound_secs"],
            "a duration setting the checks do not cover"
        );
        for key in keys {
            let (unit_ms, _) = unit_of(&key).expect("a duration key");
            let most = LONGEST_SECONDS * 1_000 / unit_ms;
            from_parts(&format!("{key} = {most}"), &[])
                .unwrap_or_else(|e| panic!("{key} = {most} is refused: {e}"));
            let e = from_parts(&format!("{key} = {}", most + 1), &[]).expect_err(&key);
            let said = format!("setting {key} = {} is out of range", most + 1);
            assert!(e.to_string().contains(&said), "{key}: {e}");
        }
        let e = from_parts("purge_repeat_ms = [100, 99999999999999]", &[]).unwrap_err();
        assert!(
            e.to_string().contains("purge_repeat_ms = 99999999999999"),
            "{e}"
        );
        let e = from_parts(
            "",
            &[("NEARHOP_PDNS_BACKEND_APEX_HEARTBEAT_BOUND_SECS", "1e300")],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("apex.heartbeat_bound_secs = 1e300"),
            "{e}"
        );
        let e = from_parts("[apex]\nttl = 2147483648", &[]).unwrap_err();
        assert!(e.to_string().contains("apex.ttl = 2147483648"), "{e}");
        from_parts("[apex]\nttl = 2147483647", &[]).expect("the largest TTL");
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(from_parts("databse_url = \"x\"\n", &[]).is_err());
    }
}
