//! Free loopback ports for tests.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// Ports are drawn from here: below Linux's ephemeral range (32768–60999), which outgoing
/// connections take their source ports from. A port the kernel hands out for `bind(0)` lies
/// in that range, so between the test picking it and the server binding it, any process's
/// outgoing connection (edges dialling peers, control, Postgres) could take it as a source
/// port, and the server would fail with "address in use".
const RANGE: std::ops::Range<u16> = 10_000..32_000;

/// A port that is free for both TCP and UDP on `ip` right now and was not handed out before
/// by this process. Another process can still take it before it is bound; the window is small.
pub fn free_port(ip: Ipv4Addr) -> u16 {
    loop {
        let port = RANGE.start + (next_random() % u64::from(RANGE.end - RANGE.start)) as u16;
        if TcpListener::bind((ip, port)).is_err() || UdpSocket::bind((ip, port)).is_err() {
            continue;
        }
        let mut seen = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(&port) {
            continue;
        }
        seen.push(port);
        return port;
    }
}

/// A cheap random number (xorshift), seeded per process so that concurrent test processes
/// draw different ports.
fn next_random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        x = nanos ^ (u64::from(std::process::id()) << 32) | 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    x
}
