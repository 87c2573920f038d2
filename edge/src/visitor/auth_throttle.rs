//! Failed visitor credentials (`b:`, `k:`) counted per tunnel and visitor network (the
//! address for IPv4, its /64 for IPv6), so that guessing a tunnel's password is slow: past
//! the limit within a minute, the visitor gets 429 with `Retry-After` until the minute ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The window failures are counted in.
const WINDOW: Duration = Duration::from_secs(60);
/// Most (tunnel, network) pairs tracked; a flood past it forgets the windows already over.
const MAX_TRACKED: usize = 100_000;

/// Where a visitor's failures are counted: one tunnel, one network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    tunnel: i64,
    network: u128,
}

struct Window {
    started: Instant,
    failures: u32,
}

/// Failed credentials per tunnel and visitor network.
pub struct AuthThrottle {
    limit: u32,
    windows: Mutex<HashMap<Key, Window>>,
}

impl AuthThrottle {
    /// Allows `limit` failures per minute; 0 turns the throttle off.
    pub fn new(limit: u32) -> AuthThrottle {
        AuthThrottle {
            limit,
            windows: Mutex::default(),
        }
    }

    /// `Some(wait)` when the visitor used up its failures on this tunnel: how long until it
    /// may try again.
    pub fn blocked(&self, tunnel: i64, visitor: IpAddr) -> Option<Duration> {
        self.blocked_at(tunnel, visitor, Instant::now())
    }

    /// Counts one failure.
    pub fn failed(&self, tunnel: i64, visitor: IpAddr) {
        self.failed_at(tunnel, visitor, Instant::now());
    }

    /// Forgets the visitor's failures (it gave the right credentials).
    pub fn succeeded(&self, tunnel: i64, visitor: IpAddr) {
        if self.limit == 0 {
            return;
        }
        let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if !w.is_empty() {
            w.remove(&key(tunnel, visitor));
        }
    }

    fn blocked_at(&self, tunnel: i64, visitor: IpAddr, now: Instant) -> Option<Duration> {
        if self.limit == 0 {
            return None;
        }
        let w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let window = w.get(&key(tunnel, visitor))?;
        let left = WINDOW.checked_sub(now.saturating_duration_since(window.started))?;
        (window.failures >= self.limit && !left.is_zero()).then_some(left)
    }

    fn failed_at(&self, tunnel: i64, visitor: IpAddr, now: Instant) {
        if self.limit == 0 {
            return;
        }
        let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if w.len() >= MAX_TRACKED {
            w.retain(|_, win| now.saturating_duration_since(win.started) < WINDOW);
        }
        let window = w.entry(key(tunnel, visitor)).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now.saturating_duration_since(window.started) >= WINDOW {
            *window = Window {
                started: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
    }
}

fn key(tunnel: i64, visitor: IpAddr) -> Key {
    Key {
        tunnel,
        network: crate::visitor::shares::visitor_network(visitor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn past_the_limit_a_visitor_waits_out_the_minute() {
        let t = AuthThrottle::new(3);
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(t.blocked_at(1, ip("192.0.2.1"), now), None);
            t.failed_at(1, ip("192.0.2.1"), now);
        }
        let later = now + Duration::from_secs(20);
        assert_eq!(
            t.blocked_at(1, ip("192.0.2.1"), later),
            Some(Duration::from_secs(40))
        );
        // Another tunnel, another address: not blocked.
        assert_eq!(t.blocked_at(2, ip("192.0.2.1"), later), None);
        assert_eq!(t.blocked_at(1, ip("192.0.2.2"), later), None);
        // The minute over, the count starts again.
        let next = now + WINDOW;
        assert_eq!(t.blocked_at(1, ip("192.0.2.1"), next), None);
        t.failed_at(1, ip("192.0.2.1"), next);
        assert_eq!(t.blocked_at(1, ip("192.0.2.1"), next), None);
    }

    #[test]
    fn an_ipv6_network_counts_as_one_visitor() {
        let t = AuthThrottle::new(2);
        let now = Instant::now();
        t.failed_at(1, ip("2001:db8:1:2::1"), now);
        t.failed_at(1, ip("2001:db8:1:2:ffff::9"), now);
        assert!(t.blocked_at(1, ip("2001:db8:1:2::77"), now).is_some());
        assert!(t.blocked_at(1, ip("2001:db8:1:3::1"), now).is_none());
    }

    #[test]
    fn success_forgets_and_zero_turns_it_off() {
        let t = AuthThrottle::new(1);
        t.failed(1, ip("192.0.2.1"));
        assert!(t.blocked(1, ip("192.0.2.1")).is_some());
        t.succeeded(1, ip("192.0.2.1"));
        assert!(t.blocked(1, ip("192.0.2.1")).is_none());
        let off = AuthThrottle::new(0);
        for _ in 0..100 {
            off.failed(1, ip("192.0.2.1"));
        }
        assert!(off.blocked(1, ip("192.0.2.1")).is_none());
    }
}
