//! The one routing step every visitor listener takes: from the listener, the name asked for
//! (`Host`, SNI, or the TCP port's tunnel) and the visitor's address to a [`Route`]. The
//! tunnel's kind and its allowlist (`w:`) are decided here and nowhere else; the listeners
//! act on the `Route` and never look at the registry, a kind or an allowlist themselves.
//!
//! A name held by another edge of the mesh is relayed there ([`Route::Relay`]), one hop: the
//! holder applies the tunnel's rules to the real visitor, and a visitor that arrived by
//! relay is never relayed again.

use crate::edge::Edge;
use crate::mesh::links::PeerLink;
use crate::tunnels::Tunnel;
use nearhop_wire::TunnelKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The visitor listener a connection or request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `http_listen`, and HTTP requests inside HTTPS the edge terminated: routed by `Host`.
    Http,
    /// `tls_listen`: routed by the ClientHello's server name.
    Tls,
    /// A `tcp` tunnel's public port: the port names the tunnel.
    Tcp,
}

impl Listener {
    /// The name used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Http => "http",
            Listener::Tls => "tls",
            Listener::Tcp => "tcp",
        }
    }
}

/// How a visitor reached this edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Straight from the visitor (or a balancer in front of the edge).
    Direct,
    /// Relayed by a peer edge per request (plain HTTP, or HTTPS it terminated); never
    /// relayed again.
    Relayed,
    /// Relayed by a peer edge as a whole TLS connection, which this edge terminates: the
    /// peer cannot send a request of it again. Never relayed again either.
    RelayedWhole,
}

/// Where a visitor goes.
#[derive(Clone)]
pub enum Route {
    /// Carry the connection whole, as bytes (those read to route it first), through one
    /// channel of the tunnel: `tls` passthrough, `tcp`, and `http` with `x:noreverseproxy`.
    Splice(Arc<Tunnel>),
    /// Serve HTTP: the request phases with the tunnel's options, then the request goes
    /// through the tunnel.
    Proxy(Arc<Tunnel>),
    /// TLS listener, any name that is not a `tls` tunnel, with a certificate configured:
    /// the edge completes the handshake and routes each request inside on the HTTP
    /// listener's terms (so unknown names get the 404 page over HTTPS).
    Terminate,
    /// Another edge holds the tunnel: carry the visitor there over the mesh (per request
    /// for HTTP, the whole connection for TLS passthrough).
    Relay(Arc<PeerLink>),
    /// The edge answers itself and the visitor goes no further.
    Refuse(Refusal),
}

/// Why a visitor is refused; each listener says it its own way (page, TLS alert, close).
#[derive(Clone)]
pub enum Refusal {
    /// No live tunnel by that name on this edge.
    Unknown,
    /// The tunnel's allowlist (`w:`) leaves the visitor out.
    Forbidden,
    /// The tunnel is of a kind this listener does not carry: a `tls` tunnel's name over
    /// plain HTTP, a `tcp` tunnel's name over HTTP or HTTPS, a non-`tls` name on the TLS
    /// port without a certificate.
    WrongListener(Arc<Tunnel>),
}

/// Routes a visitor who asked `listener` for `host` (lowercase, without port), and names
/// the tunnel (and the peer edge a relay goes to) in the visitor's span.
pub fn route(
    edge: &Edge,
    listener: Listener,
    host: &str,
    visitor: SocketAddr,
    arrival: Arrival,
) -> Route {
    let route = route_quietly(edge, listener, host, visitor, arrival);
    let span = tracing::Span::current();
    match &route {
        Route::Refuse(Refusal::Unknown) => {}
        Route::Relay(link) => {
            span.record("tunnel", host);
            span.record("relay_to", link.id.as_str());
        }
        _ => {
            span.record("tunnel", host);
        }
    }
    route
}

/// [`route`] without touching the span: for the later requests of a kept-alive connection,
/// whose span the first request named (a span's field recorded again is repeated, not
/// replaced, in the logs).
pub fn route_quietly(
    edge: &Edge,
    listener: Listener,
    host: &str,
    visitor: SocketAddr,
    arrival: Arrival,
) -> Route {
    // Only the TLS listener terminates, and only names it has a certificate for.
    let https = listener == Listener::Tls && edge.certificates.covers(host);
    let found = edge.registry.route(host);
    if found.is_none() && arrival == Arrival::Direct {
        let name = edge.registry.tunnel_name(host);
        if let Some((link, kind)) = edge.mesh.holder_of(&name) {
            return relay(listener, link, kind, https);
        }
    }
    decide(listener, found, visitor.ip(), https)
}

/// The route to a tunnel of `kind` that the peer behind `link` holds. Everything goes to
/// the holder, which decides as if the visitor had come to it, except a non-`tls` name on
/// the TLS listener of an edge with a certificate: that edge terminates the TLS itself and
/// relays each request inside (so the holder needs no certificate, and sees plain HTTP).
pub fn relay(listener: Listener, link: Arc<PeerLink>, kind: TunnelKind, https: bool) -> Route {
    match listener {
        Listener::Tls if https && kind != TunnelKind::Tls => Route::Terminate,
        _ => Route::Relay(link),
    }
}

/// Routes a visitor of a `tcp` tunnel's own public port: the port names the tunnel.
pub fn route_port(tunnel: &Arc<Tunnel>, visitor: SocketAddr) -> Route {
    tracing::Span::current().record("tunnel", tunnel.hostname.as_str());
    // A tcp port never terminates TLS, so whether a certificate is set does not matter.
    decide(Listener::Tcp, Some(tunnel.clone()), visitor.ip(), false)
}

/// The routing rule itself: `found` is the tunnel holding the name on this edge, if any;
/// `https` says whether the TLS listener has a certificate for names it does not pass
/// through. Checks in a fixed order: the name, the kind against the listener, then the
/// allowlist (so a name on the wrong listener is told where to go whoever asks).
pub fn decide(
    listener: Listener,
    found: Option<Arc<Tunnel>>,
    visitor: IpAddr,
    https: bool,
) -> Route {
    let Some(tunnel) = found else {
        return match listener {
            Listener::Tls if https => Route::Terminate,
            _ => Route::Refuse(Refusal::Unknown),
        };
    };
    let carried_whole = match (listener, tunnel.kind) {
        (Listener::Http, TunnelKind::Http) => tunnel.options().raw_passthrough,
        (Listener::Tls, TunnelKind::Tls) | (Listener::Tcp, TunnelKind::Tcp) => true,
        (Listener::Tls, _) if https => return Route::Terminate,
        _ => return Route::Refuse(Refusal::WrongListener(tunnel)),
    };
    if !tunnel.options().allows(visitor) {
        return Route::Refuse(Refusal::Forbidden);
    }
    if carried_whole {
        Route::Splice(tunnel)
    } else {
        Route::Proxy(tunnel)
    }
}

/// The span a visitor connection's work runs in: peer and listener at once, the tunnel's
/// name once [`route`] found it.
pub fn span(listener: Listener, peer: SocketAddr) -> tracing::Span {
    tracing::info_span!(
        "visitor",
        listener = listener.as_str(),
        %peer,
        tunnel = tracing::field::Empty,
        relay_to = tracing::field::Empty
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::TunnelOptions;
    use crate::ssh::link::SessionLink;
    use crate::tunnels::ForwardTarget;

    const INSIDE: &str = "10.1.2.3";
    const OUTSIDE: &str = "192.0.2.1";

    fn tunnel(kind: TunnelKind, command: &str) -> Arc<Tunnel> {
        let options = TunnelOptions::parse(command).expect("options");
        Arc::new(Tunnel::new(
            7,
            "blog.a.tunnel.test".into(),
            "a.tunnel.test".into(),
            "us".into(),
            kind,
            (kind == TunnelKind::Tcp).then_some(20001),
            ForwardTarget {
                address: "localhost".into(),
                port: 8000,
            },
            Arc::new(SessionLink::new(1, "127.0.0.1:1".parse().expect("addr"))),
            Arc::new(options),
        ))
    }

    /// What a route says, in words a table can hold.
    fn said(route: &Route) -> &'static str {
        match route {
            Route::Splice(_) => "splice",
            Route::Proxy(_) => "proxy",
            Route::Terminate => "terminate",
            Route::Relay(_) => "relay",
            Route::Refuse(Refusal::Unknown) => "unknown",
            Route::Refuse(Refusal::Forbidden) => "forbidden",
            Route::Refuse(Refusal::WrongListener(_)) => "wrong listener",
        }
    }

    use Listener::{Http, Tcp, Tls};
    use TunnelKind::{Http as HttpT, Tcp as TcpT, Tls as TlsT};

    /// (listener, certificate?, tunnel kind or unknown name, visitor) → what happens. Every
    /// tunnel in the table has `w:10.0.0.0/8`, so `INSIDE` passes and `OUTSIDE` does not.
    const TABLE: &[(Listener, bool, Option<TunnelKind>, &str, &str)] = &[
        // HTTP listener: http tunnels are proxied, tls and tcp names are told where to go
        // (before the allowlist), unknown names get the 404 page.
        (Http, false, Some(HttpT), INSIDE, "proxy"),
        (Http, false, Some(HttpT), OUTSIDE, "forbidden"),
        (Http, false, Some(TlsT), INSIDE, "wrong listener"),
        (Http, false, Some(TlsT), OUTSIDE, "wrong listener"),
        (Http, false, Some(TcpT), INSIDE, "wrong listener"),
        (Http, false, Some(TcpT), OUTSIDE, "wrong listener"),
        (Http, false, None, INSIDE, "unknown"),
        // Requests inside HTTPS are routed the same way.
        (Http, true, Some(HttpT), INSIDE, "proxy"),
        (Http, true, Some(TcpT), INSIDE, "wrong listener"),
        (Http, true, None, OUTSIDE, "unknown"),
        // TLS listener without a certificate: only tls tunnels, the rest is refused.
        (Tls, false, Some(TlsT), INSIDE, "splice"),
        (Tls, false, Some(TlsT), OUTSIDE, "forbidden"),
        (Tls, false, Some(HttpT), INSIDE, "wrong listener"),
        (Tls, false, Some(TcpT), INSIDE, "wrong listener"),
        (Tls, false, None, INSIDE, "unknown"),
        // With a certificate every other name is HTTPS; its requests are routed inside.
        (Tls, true, Some(TlsT), INSIDE, "splice"),
        (Tls, true, Some(TlsT), OUTSIDE, "forbidden"),
        (Tls, true, Some(HttpT), OUTSIDE, "terminate"),
        (Tls, true, Some(TcpT), INSIDE, "terminate"),
        (Tls, true, None, INSIDE, "terminate"),
        // A tcp tunnel's own port.
        (Tcp, false, Some(TcpT), INSIDE, "splice"),
        (Tcp, false, Some(TcpT), OUTSIDE, "forbidden"),
        (Tcp, true, Some(HttpT), INSIDE, "wrong listener"),
        (Tcp, false, None, INSIDE, "unknown"),
    ];

    #[test]
    fn every_listener_kind_and_allowlist_outcome_routes_as_the_table_says() {
        for &(listener, https, kind, visitor, want) in TABLE {
            let found = kind.map(|k| tunnel(k, "w:10.0.0.0/8"));
            let got = decide(listener, found, visitor.parse().expect("ip"), https);
            assert_eq!(
                said(&got),
                want,
                "{listener:?} https={https} {kind:?} from {visitor}"
            );
        }
    }

    #[test]
    fn noreverseproxy_takes_the_connection_whole_only_on_the_http_listener() {
        let raw = tunnel(HttpT, "x:noreverseproxy w:10.0.0.0/8");
        let inside = INSIDE.parse().expect("ip");
        let outside = OUTSIDE.parse().expect("ip");
        assert_eq!(
            said(&decide(Http, Some(raw.clone()), inside, false)),
            "splice"
        );
        // The allowlist still applies before a single byte is carried.
        assert_eq!(
            said(&decide(Http, Some(raw.clone()), outside, false)),
            "forbidden"
        );
        assert_eq!(said(&decide(Tls, Some(raw), inside, true)), "terminate");
    }

    #[test]
    fn names_held_by_a_peer_are_relayed_except_https_this_edge_can_terminate() {
        let key = russh::keys::PrivateKey::from(
            russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[7; 32]),
        );
        let link = Arc::new(PeerLink::new(
            "eu-1".into(),
            "127.0.0.2:2223".into(),
            key.public_key().clone(),
            Default::default(),
            1024,
        ));
        // (listener, certificate?, the peer's tunnel kind) → what happens here.
        let table = [
            (Http, false, HttpT, "relay"),
            (Http, true, HttpT, "relay"),
            // The holder answers with its page for a tls or tcp name over HTTP.
            (Http, false, TlsT, "relay"),
            (Http, false, TcpT, "relay"),
            // A tls tunnel's bytes go to the holder undecrypted.
            (Tls, false, TlsT, "relay"),
            (Tls, true, TlsT, "relay"),
            // HTTPS: this edge terminates and relays the requests inside.
            (Tls, true, HttpT, "terminate"),
            // Without a certificate here the holder may have one: its TLS is relayed.
            (Tls, false, HttpT, "relay"),
        ];
        for (listener, https, kind, want) in table {
            let got = relay(listener, link.clone(), kind, https);
            assert_eq!(said(&got), want, "{listener:?} https={https} {kind:?}");
            if let Route::Relay(to) = got {
                assert!(Arc::ptr_eq(&to, &link));
            }
        }
    }

    #[test]
    fn routes_carry_the_tunnel_they_found() {
        let t = tunnel(TlsT, "");
        match decide(Http, Some(t.clone()), INSIDE.parse().expect("ip"), false) {
            Route::Refuse(Refusal::WrongListener(got)) => assert!(Arc::ptr_eq(&got, &t)),
            other => panic!("{}", said(&other)),
        }
        match decide(Tls, Some(t.clone()), INSIDE.parse().expect("ip"), false) {
            Route::Splice(got) => assert!(Arc::ptr_eq(&got, &t)),
            other => panic!("{}", said(&other)),
        }
    }

    /// A name a peer announced is relayed when the visitor came straight here, and never
    /// when the connection was itself relayed (one hop: a stale holder table cannot make a
    /// loop); a name nobody holds is unknown either way.
    #[test]
    fn a_relayed_connection_is_never_relayed_again() {
        let peer_key = russh::keys::PrivateKey::from(
            russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[3; 32]),
        );
        let edge = crate::edge::Edge::for_tests(Default::default(), 2);
        let links = edge.mesh.set_peers(&[nearhop_wire::PeerEdge {
            edge_id: "eu-1".into(),
            region: "eu".into(),
            mesh_addr: "127.0.0.2:2223".into(),
            host_key: peer_key.public_key().to_openssh().expect("openssh"),
        }]);
        assert_eq!(links.len(), 1);
        edge.mesh.holders.apply(
            "eu-1",
            crate::mesh::protocol::HoldingChange::Added("blog.a.tunnel.test".into(), HttpT, None),
        );
        let visitor = "192.0.2.9:5000".parse().expect("addr");
        let route = |host: &str, arrival| route_quietly(&edge, Http, host, visitor, arrival);
        match route("blog.a.tunnel.test", Arrival::Direct) {
            Route::Relay(link) => assert_eq!(link.id, "eu-1"),
            other => panic!("{}", said(&other)),
        }
        assert_eq!(
            said(&route("blog.a.tunnel.test", Arrival::Relayed)),
            "unknown"
        );
        assert_eq!(
            said(&route("other.a.tunnel.test", Arrival::Direct)),
            "unknown"
        );
    }
}
