//! Fair shares of the edge's visitor connections: beside the edge-wide limit, at most so
//! many at once per visitor network (an IPv4 address, an IPv6 /64) and per tunnel, so that
//! one visitor, address or tunnel cannot take every slot from the others.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The network a visitor address counts under: the address itself for IPv4 (mapped IPv6
/// included), its /64 for IPv6 (one host's worth of addresses to whoever holds it).
pub fn visitor_network(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            None => u128::from(v6) & !((1u128 << 64) - 1),
        },
    }
}

/// Connections held per key, each at most `limit`.
pub struct Shares<K> {
    limit: usize,
    held: Mutex<HashMap<K, usize>>,
}

/// One connection's hold on its key's share, given back on drop.
pub struct Share<K: Eq + Hash + Copy> {
    shares: Arc<Shares<K>>,
    key: K,
}

impl<K: Eq + Hash + Copy> Shares<K> {
    /// At most `limit` per key; 0 means no limit.
    pub fn new(limit: usize) -> Arc<Shares<K>> {
        Arc::new(Shares {
            limit,
            held: Mutex::default(),
        })
    }

    /// A hold on `key`'s share, or `None` when the key holds its whole share already.
    pub fn take(self: &Arc<Self>, key: K) -> Option<Share<K>> {
        if self.limit == 0 {
            return Some(Share {
                shares: self.clone(),
                key,
            });
        }
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(key).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Share {
            shares: self.clone(),
            key,
        })
    }

    /// Connections `key` holds now.
    pub fn held(&self, key: K) -> usize {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(&key).copied().unwrap_or(0)
    }
}

impl<K: Eq + Hash + Copy> Drop for Share<K> {
    fn drop(&mut self) {
        if self.shares.limit == 0 {
            return;
        }
        let mut held = self.shares.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_share_and_no_more_and_gets_it_back() {
        let shares = Shares::new(2);
        let a = shares.take(1u128).expect("first");
        let _b = shares.take(1u128).expect("second");
        assert!(shares.take(1u128).is_none(), "past the share");
        assert!(shares.take(2u128).is_some(), "another key is not held up");
        drop(a);
        assert_eq!(shares.held(1), 1);
        assert!(shares.take(1u128).is_some(), "given back on drop");
    }

    #[test]
    fn zero_means_no_limit_and_ipv6_counts_by_64() {
        let shares = Shares::new(0);
        let held: Vec<_> = (0..1000).map(|_| shares.take(7i64)).collect();
        assert!(held.iter().all(Option::is_some));
        let net = |s: &str| visitor_network(s.parse().unwrap());
        assert_eq!(net("2001:db8:1:2::1"), net("2001:db8:1:2:ffff::9"));
        assert_ne!(net("2001:db8:1:2::1"), net("2001:db8:1:3::1"));
        assert_eq!(net("::ffff:192.0.2.1"), net("192.0.2.1"));
    }
}
