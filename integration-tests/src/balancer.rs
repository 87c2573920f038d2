//! A round-robin TCP balancer that speaks PROXY protocol v2, as HAProxy with `send-proxy-v2`
//! or a cloud balancer would in front of a region's edges: it accepts on a free loopback
//! port, connects to its backends in turn from an address of its own, writes a v2 header
//! naming the client, then splices bytes both ways. Its header is written here by hand after
//! the spec, not by the crate the edge parses with, so that the two check each other.

use crate::background::AcceptLoop;
use crate::poll::PATIENCE;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The 12 bytes every PROXY protocol v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// A running balancer; it stops, and its connections end, when dropped.
pub struct Balancer {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Connections handed to a backend (connected, header sent) so far.
    pub carried: Arc<AtomicU64>,
    _server: AcceptLoop,
}

impl Balancer {
    /// Starts a balancer on a free port of `listen_ip` that carries each connection to the
    /// next of `backends`, connecting from `source_ip` (the address edges trust).
    pub fn start(listen_ip: Ipv4Addr, source_ip: Ipv4Addr, backends: Vec<SocketAddr>) -> Balancer {
        assert!(!backends.is_empty(), "a balancer needs a backend");
        let listener = std::net::TcpListener::bind((listen_ip, 0)).expect("bind balancer");
        let addr = listener.local_addr().expect("addr");
        let carried = Arc::new(AtomicU64::new(0));
        let count = carried.clone();
        let backends = Arc::new(backends);
        let next = Arc::new(AtomicUsize::new(0));
        let server = AcceptLoop::start(listener, move |client, client_addr| {
            let i = next.fetch_add(1, Ordering::Relaxed) % backends.len();
            let backend = backends[i];
            let count = count.clone();
            async move {
                let _ = carry(client, client_addr, source_ip, backend, &count).await;
            }
        });
        Balancer {
            addr,
            carried,
            _server: server,
        }
    }
}

/// Connects to `backend` from `source_ip`, sends the header for `client_addr` (counted in
/// `carried`), and splices.
async fn carry(
    mut client: TcpStream,
    client_addr: SocketAddr,
    source_ip: Ipv4Addr,
    backend: SocketAddr,
    carried: &AtomicU64,
) -> io::Result<()> {
    let mut upstream = connect_from(source_ip, backend).await?;
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    upstream.write_all(&v2_header(client_addr, backend)).await?;
    carried.fetch_add(1, Ordering::Relaxed);
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// A TCP connection to `to` from an address of this host's own choosing (`from`, port 0).
pub async fn connect_from(from: Ipv4Addr, to: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

/// A PROXY protocol v2 `PROXY` header over TCP for a connection from `source` to
/// `destination` (both IPv4, else both as IPv6, IPv4-mapped where needed).
pub fn v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    // Version 2, command PROXY.
    h.push(0x21);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            // AF_INET, STREAM; 12 bytes of addresses.
            h.extend_from_slice(&[0x11, 0, 12]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            // AF_INET6, STREAM; 36 bytes of addresses.
            h.extend_from_slice(&[0x21, 0, 36]);
            h.extend_from_slice(&v6(s).octets());
            h.extend_from_slice(&v6(d).octets());
        }
    }
    h.extend_from_slice(&source.port().to_be_bytes());
    h.extend_from_slice(&destination.port().to_be_bytes());
    h
}

/// Connects to `to` from `from`, sends `bytes`, and returns everything read until the
/// other side closes or resets (an empty answer: closed without a word).
pub fn exchange_from(from: Ipv4Addr, to: SocketAddr, bytes: &[u8]) -> io::Result<Vec<u8>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let talk = async {
            let mut stream = connect_from(from, to).await?;
            stream.write_all(bytes).await?;
            let mut answer = Vec::new();
            match stream.read_to_end(&mut answer).await {
                // A reset after the answer (or instead of one) ends it as well as a close.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(answer),
                Err(e) => Err(e),
                Ok(_) => Ok(answer),
            }
        };
        tokio::time::timeout(PATIENCE, talk)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no end of the answer"))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v2_header_for_ipv4_is_28_bytes_after_the_spec() {
        let h = v2_header(
            "203.0.113.7:51234".parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap(),
        );
        assert_eq!(h.len(), 28);
        assert_eq!(&h[..12], &V2_SIGNATURE);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..20], &[203, 0, 113, 7]);
        assert_eq!(&h[24..26], &51234u16.to_be_bytes());
        let h6 = v2_header(
            "[2001:db8::7]:1".parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap(),
        );
        assert_eq!((h6.len(), h6[13], h6[15]), (52, 0x21, 36));
    }
}
