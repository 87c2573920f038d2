//! No name ever NXDOMAIN: in the pro zone (`unknown_names = "nearest_edge"`, as deployed) a
//! name asked for before its tunnel exists is answered like the connect name, through a real
//! recursive resolver (unbound) that caches what it was told; the first visit after the URL
//! is printed reaches the developer's service, relayed by whichever edge that answer named.
//! The free zone keeps NXDOMAIN.

use nearhop_stack::pdns::Unbound;
use nearhop_stack::prelude::*;
use std::net::SocketAddr;

/// A label nobody has used yet in this run.
fn fresh_label(prefix: &str) -> String {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}{}", stamp % 1_000_000_000)
}

/// unbound "in eu": it queries eu's pdns from eu's address, so the connect name (and every
/// stand-in answer) is eu's edge; tunnels in this test are opened through ap.
fn resolver_in_eu(stack: &Stack) -> Unbound {
    let eu = &stack.regions[EU];
    Unbound::start(
        &stack.path().join("unbound"),
        eu.ip,
        eu.dns_addr(),
        &[PRO_ZONE, FREE_ZONE],
    )
    .expect("unbound starts")
}

#[test]
fn a_pro_name_asked_before_its_tunnel_exists_leads_to_an_edge_and_the_first_visit_succeeds() {
    let stack = full_stack_with(StackOptions {
        control_tweak: Some(fast_heartbeats),
        ..StackOptions::default()
    });
    stack.wait_mesh_linked().expect("the edges link up");
    let unbound = resolver_in_eu(&stack);
    let local = LocalService::start("early");
    let token = stack.pro_token();
    let label = fresh_label("early");
    let host = format!("{label}.{PRO_ZONE}");
    let eu_edge = stack.regions[EU].ip;

    // Before the tunnel: an address (eu's edge, the connect name's answer for this
    // resolver), not NXDOMAIN, with the connect name's short TTL.
    let before = unbound.resolve(&host, "A").expect("unbound answers");
    assert_eq!(before.status, "NOERROR", "{}", before.describe());
    assert_eq!(before.addr(), Some(eu_edge), "{}", before.describe());
    assert_eq!(before.cname(), None, "{}", before.describe());
    assert!(
        before.answers.iter().all(|r| r.ttl <= 10),
        "{}",
        before.describe()
    );
    // That edge has no tunnel of that name anywhere yet: its own page, not a connection error.
    let eu_port = edge_http_port(&stack, eu_edge).expect("eu's edge port");
    let (status, body) = http_get(SocketAddr::from((eu_edge, eu_port)), &host, "/").expect("edge");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("No tunnel here"), "{body}");
    // Other types of that name: it exists, with no data of that type.
    for qtype in ["TXT", "CNAME", "MX"] {
        let r = unbound.resolve(&host, qtype).expect("unbound answers");
        assert_eq!(r.status, "NOERROR", "{qtype}: {}", r.describe());
        assert!(r.answers.is_empty(), "{qtype}: {}", r.describe());
    }

    // The tunnel, through ap, under the name asked for above.
    let args = SshArgs {
        user: Some(token),
        forwards: vec![format!("{label}:0:localhost:{}", local.port)],
        ..SshArgs::default()
    };
    let mut client = stack.ssh_to(AP, "early", &args);
    let url = client
        .wait_for_url_polling(PATIENCE, std::time::Duration::from_millis(1))
        .expect("URL printed");
    assert_eq!(host_of(&url), host, "{url}");

    // At once, as a visitor would: whatever unbound says now (still the cached stand-in,
    // eu's edge, or already the CNAME to ap's edge), the first visit reaches the service.
    let now = unbound.resolve(&host, "A").expect("unbound answers");
    let addr = now
        .addr()
        .unwrap_or_else(|| panic!("no address: {}", now.describe()));
    let port = edge_http_port(&stack, addr)
        .unwrap_or_else(|| panic!("{addr} is no edge: {}", now.describe()));
    let edge = SocketAddr::from((addr, port));
    let first = http_get(edge, &host, "/first").expect("first visit");
    // Tells a lost race from a relay that never works: the same edge, asked again until
    // it answers 200 (not part of the pass condition, which is the first visit alone).
    eventually("the same edge serves the tunnel", || {
        let (status, body) = http_get(edge, &host, "/later")?;
        anyhow::ensure!(status == 200, "{status} {body}");
        Ok(())
    });
    assert_eq!(
        first.0,
        200,
        "the first visit, through {edge} ({}), got {} {}; a later visit through the same \
         edge got 200: that edge learned the holder only after the URL was printed",
        now.describe(),
        first.0,
        first.1
    );
    assert!(
        first.1.starts_with("hello from early /first"),
        "{}",
        first.1
    );
    // Whichever answer unbound gave just now, the stand-in it cached before the tunnel
    // existed named eu's edge, which does not hold the tunnel: a visitor still using it is
    // relayed to ap.
    let (status, body) = http_get(SocketAddr::from((eu_edge, eu_port)), &host, "/stale")
        .expect("a visit through the stand-in's edge");
    assert_eq!(status, 200, "through eu, relayed to ap: {body}");
    assert!(body.starts_with("hello from early /stale"), "{body}");
    assert_eq!(
        local.served.load(std::sync::atomic::Ordering::Relaxed),
        3,
        "requests the local service answered (the first visit, the later one, the stale one)"
    );

    // pdns serves the real record at once (the stand-in was never cached there), and the
    // resolver switches to it when its copy of the stand-in runs out.
    let direct = lookup(&stack, EU, &host).expect("eu's DNS answers");
    assert!(direct.points_at("ap", PRO_ZONE), "{}", direct.describe());
    let want = format!("ap.{PRO_ZONE}.");
    eventually("unbound answers the tunnel's CNAME", || {
        let r = unbound.resolve(&host, "A")?;
        anyhow::ensure!(r.cname() == Some(want.as_str()), "{}", r.describe());
        anyhow::ensure!(r.addr() == Some(stack.regions[AP].ip), "{}", r.describe());
        Ok(())
    });
    client.stop();
}

#[test]
fn free_and_non_tunnel_names_keep_nxdomain_through_the_resolver() {
    let stack = full_stack();
    let unbound = resolver_in_eu(&stack);
    let free = format!("{}.{FREE_ZONE}", fresh_label("nobody"));
    let pro_unusable = [
        format!("www.{PRO_ZONE}"),
        format!("_acme-challenge.{PRO_ZONE}"),
        format!("two.{}.{PRO_ZONE}", fresh_label("labels")),
    ];
    for name in std::iter::once(&free).chain(&pro_unusable) {
        let r = unbound.resolve(name, "A").expect("unbound answers");
        assert_eq!(r.status, "NXDOMAIN", "{name}: {}", r.describe());
        let soa = r
            .authority
            .iter()
            .find(|rr| rr.rtype == "SOA")
            .unwrap_or_else(|| panic!("{name}: no SOA: {}", r.describe()));
        assert!(soa.ttl <= 5, "{name}: negative TTL {}", soa.ttl);
    }
    // The connect name itself answers as ever.
    let apex = unbound.resolve(PRO_ZONE, "A").expect("unbound answers");
    assert_eq!(
        apex.addr(),
        Some(stack.regions[EU].ip),
        "{}",
        apex.describe()
    );
}
