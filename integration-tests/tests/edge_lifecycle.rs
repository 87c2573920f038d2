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
    // Control tells the edge at once (admin API) or, if that call is lost, at the edge's
    // next heartbeat: either way with control's sentence, which the client shows on the
    // session channel ("HOST is closed: ...") or, when the disconnect overtakes that, as
    // the disconnect's reason.
    assert!(
        out.contains("this tunnel's name was taken down by the operator"),
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

/// A suspended client (a laptop asleep, Ctrl-Z) keeps its session up until the keepalives
/// give up. Meanwhile each visitor gets the 504 "Tunnel client not answering" after
/// `visitor_open_timeout_seconds`, not a wait until the tunnel closes; once the client runs
/// again (and confirms the channel it was asked for too late) it serves as before.
#[test]
fn a_suspended_client_gets_its_visitors_a_504_then_serves_again() {
    let s = EdgeStack::start("visitor_open_timeout_seconds = 1\n");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let mut c = s.ssh("asleep", &SshArgs::http_tunnel(Some(&token), local.port));
    let url = c.wait_for_url(PATIENCE).unwrap();
    assert_eq!(s.visit(&url, "/hello").status(), 200);
    c.freeze();
    for _ in 0..2 {
        let resp = s.visit(&url, "/hello");
        assert_eq!(resp.status(), 504);
        let body = resp.text().unwrap();
        assert!(
            body.contains("did not take this connection within 1 s"),
            "{body}"
        );
    }
    let m = s.edge.metrics().unwrap();
    let count = |name: &str, labels: &[(&str, &str)]| metric(&m, name, labels).unwrap_or(0.0);
    assert_eq!(
        count("nearhop_edge_visitor_open_timeouts_total", &[]),
        2.0,
        "{m}"
    );
    let edge_5xx = [("class", "5xx"), ("origin", "edge")];
    assert_eq!(
        count("nearhop_edge_http_responses_total", &edge_5xx),
        2.0,
        "{m}"
    );
    c.thaw();
    eventually("the client serves again once it runs", || {
        let status = s.visit(&url, "/hello").status();
        anyhow::ensure!(status == 200, "{status}");
        Ok(())
    });
    assert!(
        c.is_running(),
        "the late confirmations did not end the session"
    );
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
    // Another method on a known path is 405 with the method it takes; an unknown path 404.
    for (method, path, allowed) in [
        (reqwest::Method::POST, "/metrics", "GET, HEAD"),
        (reqwest::Method::DELETE, "/healthz", "GET, HEAD"),
        (reqwest::Method::GET, "/v1/tunnels/1/close", "POST"),
        (reqwest::Method::POST, "/v1/tunnels/1/alive", "GET"),
    ] {
        let wrong_method = http
            .request(method.clone(), format!("{base}{path}"))
            .bearer_auth(secret)
            .send()
            .unwrap();
        assert_eq!(wrong_method.status(), 405, "{method} {path}");
        assert_eq!(wrong_method.headers()["allow"], allowed, "{method} {path}");
        let body: serde_json::Value = wrong_method.json().unwrap();
        assert_eq!(
            body["error"]["code"], "method_not_allowed",
            "{method} {path}: {body}"
        );
        assert!(
            body["error"]["message"].as_str().unwrap().contains(allowed),
            "{method} {path}: {body}"
        );
    }
    // HEAD as GET on the operators' endpoints (load balancers' health checks).
    for path in ["/healthz", "/metrics"] {
        let head = http.head(format!("{base}{path}")).send().unwrap();
        assert_eq!(head.status(), 200, "HEAD {path}");
    }
    let nowhere = http.get(format!("{base}/v1/nowhere")).send().unwrap();
    assert_eq!(nowhere.status(), 404);
    let body: serde_json::Value = nowhere.json().unwrap();
    assert_eq!(body["error"]["code"], "not_found", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/healthz"),
        "{body}"
    );
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

/// `column` of the stack's edge's row in control's `edges` table, as psql prints it.
fn edge_row(s: &EdgeStack, column: &str) -> String {
    let id = s.edge.spec.edge_id.replace('\'', "");
    let sql = format!("SELECT {column} FROM edges WHERE id = '{id}'");
    let primary = s.stack.pg.endpoint_of("us").expect("primary");
    let value = nearhop_stack::postgres::psql(primary, &sql).expect("psql");
    value.trim().to_string()
}

/// A stopping edge lets each client session go as soon as none of its visitors is in flight,
/// so that its client reconnects elsewhere at once, while a session with a download in
/// flight stays until that download ends. The drain is long here (600 s), so that only the
/// sessions' own visitors decide when each goes. Control learns of the drain at its start
/// (the connect name stops counting the edge) and of the stop at its end (peers and the
/// region's health drop the edge then, not 3 heartbeats later).
#[test]
fn a_stopping_edge_lets_each_session_go_once_its_visitors_are_done() {
    use std::io::Read;
    let mut s = EdgeStack::start("drain_seconds = 600\n");
    assert_eq!(edge_row(&s, "draining"), "f");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let mut busy = s.ssh("busy", &SshArgs::http_tunnel(Some(&token), local.port));
    let busy_url = busy.wait_for_url(PATIENCE).unwrap();
    let mut idle = s.ssh("idle", &SshArgs::http_tunnel(Some("http"), local.port));
    idle.wait_for_url(PATIENCE).unwrap();

    // A download through the busy tunnel, read no further than its first MiB for now.
    let size = 64 << 20;
    let mut download = reqwest::blocking::Client::builder()
        .resolve(&host_of(&busy_url), s.edge.http_addr())
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap()
        .get(format!("{busy_url}/blob/{size}"))
        .send()
        .expect("the download starts");
    assert_eq!(download.status(), 200);
    let mut first = vec![0u8; 1 << 20];
    download.read_exact(&mut first).expect("the first MiB");
    assert_blob(&first, first.len());

    // SIGTERM, as systemd sends it.
    let pid = s.edge.pid().expect("the edge runs");
    // SAFETY: kill(2) on a child the stack spawned and has not reaped.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let out = idle
        .wait_exit(PATIENCE)
        .expect("the idle session is let go during the drain");
    assert!(out.contains("shutting down"), "{out}");
    assert!(
        busy.is_running(),
        "the session whose download is in flight stays: {}",
        busy.output()
    );
    eventually("control knows the edge drains", || {
        anyhow::ensure!(edge_row(&s, "draining") == "t", "not marked draining");
        Ok(())
    });
    let heartbeat = "extract(epoch FROM last_heartbeat)::bigint";
    assert_ne!(
        edge_row(&s, heartbeat),
        "0",
        "it heartbeats while it drains"
    );

    // The download goes on to its end, then its session goes too, and the edge stops long
    // before its drain would have ended.
    finish_blob(
        &mut download,
        first.len(),
        size,
        "the busy tunnel's download",
    );
    drop(download);
    let out = busy
        .wait_exit(PATIENCE)
        .expect("the busy session goes after its download");
    assert!(out.contains("shutting down"), "{out}");
    eventually("the edge stops", || {
        anyhow::ensure!(!s.edge.is_running(), "still running");
        Ok(())
    });
    assert_eq!(
        edge_row(&s, heartbeat),
        "0",
        "control was told the edge stopped"
    );
}
