//! A user's tunnel moves between regions: a reconnect through another region's edge takes
//! the name along, and DNS everywhere points at the new region by the time the new URL is
//! printed; a client that vanished without closing does not hold its name hostage.

use nearhop_stack::prelude::*;
use std::net::SocketAddr;
use std::time::Duration;

/// The record of `host` points at `region` through every region's DNS at once.
fn assert_points_everywhere(stack: &nearhop_stack::Stack, host: &str, region: usize) {
    let want = stack.regions[region].name.clone();
    for resolver in [EU, AP, US] {
        let l = lookup(stack, resolver, host).expect("DNS answers");
        assert!(
            l.points_at(&want, PRO_ZONE),
            "{host} via {}'s DNS right after the URL: {} (want {want})",
            stack.regions[resolver].name,
            l.describe()
        );
    }
}

#[test]
fn reconnect_from_other_region_moves_dns_and_closes_the_old_tunnel() {
    let stack = full_stack();
    let (first, second) = (LocalService::start("first"), LocalService::start("second"));
    let token = stack.pro_token();

    let (mut old, old_url) = stack
        .http_tunnel(AP, "in-ap", Some(&token), first.port)
        .expect("URL in ap");
    let host = host_of(&old_url);
    assert_points_everywhere(&stack, &host, AP);
    let body = visit(&stack, AP, &old_url, "/").expect("visit in ap");
    assert!(body.contains("hello from first"), "{body}");

    // The same user, now near eu, reconnects there while the old connection still lives.
    let (_new, new_url) = stack
        .http_tunnel(EU, "in-eu", Some(&format!("{token}+force")), second.port)
        .expect("URL in eu");
    assert_eq!(host_of(&new_url), host, "the persistent name moves along");
    assert_points_everywhere(&stack, &host, EU);
    for resolver in [EU, AP, US] {
        let body = visit(&stack, resolver, &new_url, "/").expect("visit");
        assert!(body.contains("hello from second"), "{body}");
    }

    // The old tunnel is closed: its client is told, and ap's edge no longer routes the name
    // to it (a visitor there with a stale answer is relayed to the new tunnel in eu, or gets
    // the page while ap's edge has no link to eu yet).
    let told = old
        .wait_for("replaced", PATIENCE)
        .expect("the old client is told");
    assert!(told.contains("replaced"), "{told}");
    let ap_edge = stack.regions[AP].http_addr();
    eventually("ap's edge relays the name to the new tunnel in eu", || {
        let (status, body) =
            http_get(SocketAddr::from((ap_edge.ip(), ap_edge.port())), &host, "/")?;
        assert!(
            !body.contains("hello from first"),
            "ap's edge still serves the old tunnel: {status} {body}"
        );
        anyhow::ensure!(
            status == 200 && body.contains("hello from second"),
            "{status} {body}"
        );
        Ok(())
    });
    let metrics = stack.control.metrics().expect("metrics");
    assert!(
        metric(
            &metrics,
            "nearhop_control_tunnels_closed_total",
            &[("reason", "force")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "control counts the forced takeover"
    );
}

#[test]
fn dead_client_reconnect_without_force_gets_its_name_back() {
    let stack = full_stack();
    let (first, second) = (LocalService::start("first"), LocalService::start("second"));
    let token = stack.pro_token();

    let (mut old, old_url) = stack
        .http_tunnel(AP, "frozen", Some(&token), first.port)
        .expect("URL in ap");
    let set_up = std::time::Instant::now();
    let host = host_of(&old_url);
    visit(&stack, AP, &old_url, "/").expect("visit in ap");

    // The laptop's lid closes: the client neither answers nor says goodbye.
    old.freeze();
    // Control treats a name as "being set up" for lag bound + edge call bound + 1 s (6.5 s
    // here) and refuses to take it over then, even from a client its edge found dead; a lid
    // closes long after setup, so the reconnect comes later than that.
    std::thread::sleep(Duration::from_secs(7).saturating_sub(set_up.elapsed()));

    // It wakes up on another network, near eu, and reconnects without `force`.
    let (new, new_url) = stack
        .http_tunnel(EU, "woken", Some(&token), second.port)
        .expect("the name is given back");
    assert_eq!(host_of(&new_url), host);
    let out = new.output();
    assert!(
        out.contains("client dead"),
        "the user is told the old tunnel was taken over: {out}"
    );
    assert_points_everywhere(&stack, &host, EU);
    let body = visit(&stack, AP, &new_url, "/").expect("visit");
    assert!(body.contains("hello from second"), "{body}");
    old.stop();
}
