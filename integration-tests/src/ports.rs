//! Free loopback ports for tests.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::Mutex;

static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A port that is free for both TCP and UDP on `ip` right now and was not handed out before
/// by this process. Another process can still take it before it is bound; the window is small.
pub fn free_port(ip: Ipv4Addr) -> u16 {
    loop {
        let Ok(tcp) = TcpListener::bind((ip, 0)) else {
            continue;
        };
        let Ok(addr) = tcp.local_addr() else {
            continue;
        };
        let port = addr.port();
        if UdpSocket::bind((ip, port)).is_err() {
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
