//! The connect name's answer: the nearest healthy region for a client prefix, from the
//! configured prefix → region map, the default region and the edges' heartbeats.

use crate::store::RegionState;
use ipnet::IpNet;
use std::net::IpAddr;

/// The prefix map and the rules for falling back.
#[derive(Debug, Clone)]
pub struct RegionMap {
    prefixes: Vec<(IpNet, Vec<String>)>,
    default_region: String,
    heartbeat_bound_secs: f64,
}

/// The region picked for a client and the ECS scope the answer is valid for.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// The region's state (addresses).
    pub region: RegionState,
    /// Scope prefix length to report (never 0, so pdns never caches the answer for others).
    pub scope: u8,
}

impl RegionMap {
    /// A map; longer prefixes take precedence whatever their order.
    pub fn new(
        mut prefixes: Vec<(IpNet, Vec<String>)>,
        default_region: String,
        bound: f64,
    ) -> Self {
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.prefix_len()));
        RegionMap {
            prefixes,
            default_region,
            heartbeat_bound_secs: bound,
        }
    }

    /// Picks the region for `real_remote` (`addr/len` as pdns sends it, or a bare address).
    ///
    /// Order: the regions of the longest matching prefix, then the default region, then any
    /// healthy region; each only if healthy. When no region is healthy at all, the preferred
    /// region that has an address is answered anyway: a possibly dead edge is a better answer
    /// for the connect name than none.
    pub fn choose(&self, real_remote: &str, regions: &[RegionState]) -> Option<Choice> {
        let (addr, source_len) = parse_real_remote(real_remote);
        let matched = addr.and_then(|a| self.prefixes.iter().find(|(net, _)| net.contains(&a)));
        let mut preference: Vec<&str> = matched
            .map(|(_, rs)| rs.iter().map(String::as_str).collect())
            .unwrap_or_default();
        preference.push(&self.default_region);
        let scope = match (matched, addr) {
            (Some((net, _)), _) => net.prefix_len(),
            (None, _) if source_len > 0 => source_len,
            (None, Some(IpAddr::V6(_))) => 128,
            (None, _) => 32,
        };
        let by_name = |n: &str| regions.iter().find(|r| r.name == n);
        let healthy = |r: &&RegionState| r.is_healthy(self.heartbeat_bound_secs);
        let has_addr = |r: &&RegionState| r.ipv4.is_some() || r.ipv6.is_some();
        let pick = preference
            .iter()
            .filter_map(|n| by_name(n))
            .find(|r| healthy(r) && has_addr(r))
            .or_else(|| regions.iter().filter(has_addr).find(healthy))
            .or_else(|| preference.iter().filter_map(|n| by_name(n)).find(has_addr))
            .or_else(|| regions.iter().find(has_addr))?;
        Some(Choice {
            region: pick.clone(),
            scope: scope.max(1),
        })
    }
}

/// Splits pdns's `real-remote` (`198.51.100.0/24`, `127.0.0.2/32`, `::1/128`, or a bare
/// address) into the address and the source prefix length.
fn parse_real_remote(s: &str) -> (Option<IpAddr>, u8) {
    match s.split_once('/') {
        Some((a, l)) => (a.parse().ok(), l.parse().unwrap_or(0)),
        None => {
            let addr: Option<IpAddr> = s.parse().ok();
            let len = match addr {
                Some(IpAddr::V4(_)) => 32,
                Some(IpAddr::V6(_)) => 128,
                None => 0,
            };
            (addr, len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn region(name: &str, ip: &str, age: Option<f64>) -> RegionState {
        RegionState {
            name: name.into(),
            ipv4: Some(ip.into()),
            ipv6: None,
            heartbeat_age_secs: age,
            read_at: Instant::now(),
        }
    }

    fn map() -> RegionMap {
        RegionMap::new(
            vec![
                ("127.0.0.0/8".parse().expect("net"), vec!["us".into()]),
                ("127.0.0.2/32".parse().expect("net"), vec!["eu".into()]),
                (
                    "10.3.0.0/16".parse().expect("net"),
                    vec!["ap".into(), "eu".into()],
                ),
            ],
            "us".into(),
            30.0,
        )
    }

    fn regions() -> Vec<RegionState> {
        vec![
            region("us", "127.0.0.1", Some(1.0)),
            region("eu", "127.0.0.2", Some(1.0)),
            region("ap", "127.0.0.3", Some(1.0)),
        ]
    }

    #[test]
    fn longest_prefix_wins_and_sets_the_scope() {
        let c = map().choose("127.0.0.2/32", &regions()).expect("choice");
        assert_eq!(c.region.name, "eu");
        assert_eq!(c.scope, 32);
        let c = map().choose("127.0.0.9/32", &regions()).expect("choice");
        assert_eq!(c.region.name, "us");
        assert_eq!(c.scope, 8);
    }

    #[test]
    fn unhealthy_region_is_skipped_in_preference_order() {
        let mut rs = regions();
        rs[2].heartbeat_age_secs = Some(300.0);
        let c = map().choose("10.3.1.0/24", &rs).expect("choice");
        assert_eq!(c.region.name, "eu");
    }

    #[test]
    fn unknown_client_gets_the_default_region_with_a_nonzero_scope() {
        let c = map().choose("0.0.0.0/0", &regions()).expect("choice");
        assert_eq!(c.region.name, "us");
        assert_eq!(c.scope, 32);
        let c = map().choose("192.0.2.0/24", &regions()).expect("choice");
        assert_eq!(c.scope, 24);
    }

    #[test]
    fn with_no_healthy_region_the_preferred_one_is_still_answered() {
        let rs: Vec<_> = regions()
            .into_iter()
            .map(|mut r| {
                r.heartbeat_age_secs = None;
                r
            })
            .collect();
        let c = map().choose("127.0.0.2/32", &rs).expect("choice");
        assert_eq!(c.region.name, "eu");
    }
}
