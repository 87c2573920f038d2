//! A tunnel's life on a real edge: a takedown reaches the client, a dead client is found by
//! keepalives, the admin API answers only with the secret, a graceful shutdown tells clients.

use nearhop_stack::edge::url_host_port;
use nearhop_stack::prelude::*;
use std::time::Duration;

#[test]
fn takedown_closes_the_tunnel_and_tells_the_client() {
    let s = EdgeStack::start("");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let mut c = s.ssh("victim", &SshArgs::http_tunnel(Some(&token), local.port));
    let url = c.wait_for_url(PATIENCE).unwrap();
    let (host, _) = url_host_port(&url).unwrap();
    s.stack
        .control
        .cli(&["takedown", &host, "--reason", "phishing report"])
        .unwrap();
    let out = c.wait_exit(PATIENCE).unwrap();
    // Control tells the edge at once (admin API: the operator's sentence) or, if that call
    // is lost, at the edge's next heartbeat (the edge's own sentence): either way the client
    // learns why.
    assert!(
        out.contains(&format!("{host} is closed")) || out.contains("taken down by the operator"),
        "{out}"
    );
    let status = s.visit(&url, "/hello").status();
    assert_eq!(status, 404, "the edge no longer routes the name");
}

#[test]
fn dead_client_is_found_by_keepalives_and_its_tunnel_closed() {
    let s = EdgeStack::start("keepalive_interval_seconds = 1\nkeepalive_max = 2\n");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let mut c = s.ssh("frozen", &SshArgs::http_tunnel(Some(&token), local.port));
    c.wait_for_url(PATIENCE).unwrap();
    c.freeze();
    eventually("the frozen client's tunnel closed as dead", || {
        let m = s.edge.metrics()?;
        anyhow::ensure!(
            m.contains("nearhop_edge_tunnels_closed_total{reason=\"client_dead\"} 1"),
            "not yet"
        );
        Ok(())
    });
    c.stop();
}

#[test]
fn admin_api_needs_the_secret_and_knows_its_tunnels() {
    let s = EdgeStack::start("");
    let http = reqwest::blocking::Client::new();
    let base = s.edge.admin_url();
    let no_secret = http
        .get(format!("{base}/v1/tunnels/1/alive"))
        .send()
        .unwrap();
    assert_eq!(no_secret.status(), 401);
    let wrong = http
        .post(format!("{base}/v1/tunnels/1/close"))
        .bearer_auth("wrong")
        .body(r#"{"reason":"x","message":"y"}"#)
        .send()
        .unwrap();
    assert_eq!(wrong.status(), 401);
    // The old shared secret no longer opens an edge that has its own credential.
    let legacy = http
        .get(format!("{base}/v1/tunnels/1/alive"))
        .bearer_auth(&s.stack.control.edge_secret)
        .send()
        .unwrap();
    assert_eq!(legacy.status(), 401);
    let secret = &s.admin_key();
    assert!(!secret.is_empty(), "the edge gave control its admin key");
    let unknown: serde_json::Value = http
        .get(format!("{base}/v1/tunnels/999999/alive"))
        .bearer_auth(secret)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(unknown, serde_json::json!({"known": false, "alive": false}));
    let close = http
        .post(format!("{base}/v1/tunnels/999999/close"))
        .bearer_auth(secret)
        .body(r#"{"reason":"x","message":"y"}"#)
        .send()
        .unwrap();
    assert_eq!(close.status(), 404);
    let bad = http
        .post(format!("{base}/v1/tunnels/1/close"))
        .bearer_auth(secret)
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[test]
fn alive_probe_tells_a_live_client_from_a_frozen_one() {
    let s = EdgeStack::start("keepalive_interval_seconds = 60\n");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let mut c = s.ssh("probed", &SshArgs::http_tunnel(Some(&token), local.port));
    c.wait_for_url(PATIENCE).unwrap();
    let log = std::fs::read_to_string(s.edge.log()).unwrap();
    let id: i64 = log
        .lines()
        .filter(|l| l.contains("tunnel live"))
        .find_map(|l| {
            let rest = &l[l.find(" tunnel=")? + 8..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .expect("tunnel id in the edge log");
    let http = reqwest::blocking::Client::new();
    let admin_key = s.admin_key();
    let probe = || -> serde_json::Value {
        http.get(format!("{}/v1/tunnels/{id}/alive", s.edge.admin_url()))
            .bearer_auth(&admin_key)
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    assert_eq!(probe(), serde_json::json!({"known": true, "alive": true}));
    c.freeze();
    assert_eq!(probe(), serde_json::json!({"known": true, "alive": false}));
    c.stop();
}

#[test]
fn graceful_shutdown_tells_clients_and_closes_their_tunnels() {
    let mut s = EdgeStack::start("drain_seconds = 2\n");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let mut c = s.ssh("told", &SshArgs::http_tunnel(Some(&token), local.port));
    c.wait_for_url(PATIENCE).unwrap();
    s.edge.stop_within(Duration::from_secs(20));
    let out = c.wait_exit(PATIENCE).unwrap();
    assert!(out.contains("shutting down"), "{out}");
    assert!(out.contains("Reconnect"), "{out}");
    // Control closed the tunnel (edge_shutdown), so the same account gets its name at once
    // on a fresh edge, without any takeover.
    let edge2 = start_edge(&s.stack, "eu", std::net::Ipv4Addr::new(127, 0, 0, 2), "");
    let mut again = nearhop_stack::edge::SshClient::start(
        &s.stack.dir.join("ssh"),
        "again",
        edge2.ssh_addr(),
        &SshArgs::http_tunnel(Some(&token), local.port),
    )
    .unwrap();
    again.wait_for_url(PATIENCE).unwrap();
    let out = again.output();
    assert!(!out.contains("was closed"), "no takeover was needed: {out}");
}
