//! Public TCP ports for `tcp` tunnels: a port from the configured range per tunnel, each
//! visitor connection spliced into one `forwarded-tcpip` channel.

use crate::config::Config;
use crate::edge::Edge;
use crate::io::accept;
use crate::tunnels::Tunnel;
use crate::visitor::routing::{self, Listener, Route};
use crate::visitor::splice::splice;
use rand::Rng;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

/// Random tries before scanning the range in order: with a range mostly free, a handful of
/// random picks finds a port without favouring the low end; a nearly full range still
/// finds the last free port by the scan.
const RANDOM_TRIES: usize = 16;

/// Binds a free port from `tcp_port_range` on `tcp_bind_ip`.
pub async fn bind_public_port(config: &Config) -> io::Result<(TcpListener, u16)> {
    let (lo, hi) = config.tcp_port_range;
    let ip = config.tcp_bind_ip();
    for _ in 0..RANDOM_TRIES {
        let port = rand::thread_rng().gen_range(lo..=hi);
        if let Ok(l) = accept::bind(SocketAddr::new(ip, port)) {
            return Ok((l, port));
        }
    }
    for port in lo..=hi {
        if let Ok(l) = accept::bind(SocketAddr::new(ip, port)) {
            return Ok((l, port));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("every port in {lo}..={hi} is in use"),
    ))
}

/// Serves the tunnel's public port until the tunnel closes or the edge shuts down.
pub fn spawn_listener(edge: Arc<Edge>, tunnel: Arc<Tunnel>, listener: TcpListener) {
    tokio::spawn(async move {
        let stop = async {
            tokio::select! {
                _ = tunnel.stop.cancelled() => {}
                _ = edge.shutdown.cancelled() => {}
            }
        };
        accept::until_stopped(&listener, stop, "a TCP visitor", |mut stream, tcp_peer| {
            let (edge, tunnel) = (edge.clone(), tunnel.clone());
            tokio::spawn(async move {
                let behind = edge.real_peer("tcp", &mut stream, tcp_peer);
                let Some((peer, rest)) = behind.await else {
                    return;
                };
                let span = routing::span(Listener::Tcp, peer);
                carry(edge, tunnel, stream, peer, rest)
                    .instrument(span)
                    .await;
            });
        })
        .await;
    });
}

/// Carries one visitor connection; `already_read` is what came after a balancer's PROXY
/// header.
async fn carry(
    edge: Arc<Edge>,
    tunnel: Arc<Tunnel>,
    stream: TcpStream,
    peer: SocketAddr,
    already_read: Vec<u8>,
) {
    // Refused visitors are turned away before they take a visitor slot.
    let Route::Splice(tunnel) = routing::route_port(&tunnel, peer) else {
        tracing::debug!("visitor outside the tunnel's allowlist");
        return;
    };
    let Some(_slot) = edge.visitor_slot(Listener::Tcp.as_str()) else {
        return;
    };
    let Some(_share) = edge.address_share(peer.ip()) else {
        return;
    };
    edge.prepare_visitor_socket(&stream);
    let stream = edge.guard_visitor_writes(stream);
    splice(&edge, &tunnel, stream, peer, already_read).await;
}
