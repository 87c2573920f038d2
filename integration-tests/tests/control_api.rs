//! Control against a real PostgreSQL primary and two streaming replicas: the lag race,
//! takeovers, leases, takedowns, token revocation, bad input, a replica that is down.
//! The test plays the edge's side of the API over HTTP.
//!
//! One file on purpose: every case plays the edge through the one API client below, and
//! each case reads on its own.

use anyhow::Result;
use nearhop_stack::postgres::PgEndpoint;
use nearhop_stack::{Stack, StackOptions};
use nearhop_wire::{
    ApiError, CreateTunnelRequest, CreateTunnelResponse, EdgeHeartbeatResponse, ErrorCode, Plan,
    RegisterEdgeRequest, TunnelKind,
};
use reqwest::blocking::Client;
use std::time::{Duration, Instant};

struct EdgeApi {
    http: Client,
    base: String,
    secret: String,
}

impl EdgeApi {
    fn new(stack: &Stack) -> EdgeApi {
        EdgeApi {
            http: Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            base: stack.control.url.clone(),
            secret: stack.control.edge_secret.clone(),
        }
    }

    /// Registers an edge whose admin API is not reachable (nothing listens on port 9 of
    /// 127.0.0.1): control then treats its tunnels as dead when asked about them.
    fn register(&self, edge_id: &str, region: &str) {
        let r = self
            .http
            .post(format!("{}/v1/edges/register", self.base))
            .bearer_auth(&self.secret)
            .json(&RegisterEdgeRequest {
                edge_id: edge_id.into(),
                region: region.into(),
                admin_url: "http://127.0.0.1:9".into(),
                ..Default::default()
            })
            .send()
            .unwrap();
        assert!(
            r.status().is_success(),
            "register: {}",
            r.text().unwrap_or_default()
        );
    }

    fn create(&self, req: &CreateTunnelRequest) -> Result<CreateTunnelResponse, (u16, ApiError)> {
        let r = self
            .http
            .post(format!("{}/v1/tunnels", self.base))
            .bearer_auth(&self.secret)
            .json(req)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().unwrap();
        if status == 201 {
            Ok(serde_json::from_str(&text).unwrap())
        } else {
            Err((
                status,
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
            ))
        }
    }

    fn raw(&self, path: &str, secret: &str, body: &str, content_type: &str) -> (u16, String) {
        let r = self
            .http
            .post(format!("{}{}", self.base, path))
            .bearer_auth(secret)
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    }

    fn heartbeat(&self, edge_id: &str, ids: &[i64]) -> EdgeHeartbeatResponse {
        let r = self
            .http
            .post(format!("{}/v1/edges/{edge_id}/heartbeat", self.base))
            .bearer_auth(&self.secret)
            .json(&serde_json::json!({ "tunnel_ids": ids }))
            .send()
            .unwrap();
        assert!(r.status().is_success());
        r.json().unwrap()
    }
}

fn tunnel(edge: &str, token: Option<&str>, name: Option<&str>, force: bool) -> CreateTunnelRequest {
    CreateTunnelRequest {
        edge_id: edge.into(),
        token: token.map(str::to_string),
        requested_name: name.map(str::to_string),
        kind: TunnelKind::Http,
        force,
        client_addr: "127.0.0.9:50000".into(),
    }
}

/// Runs `sql` on `db`; its trimmed output.
fn psql(db: &PgEndpoint, sql: &str) -> String {
    nearhop_stack::postgres::psql(db, sql)
        .expect("psql")
        .trim()
        .to_string()
}

fn start(tweak: Option<fn(&mut nearhop_stack::ControlSpec)>) -> Stack {
    Stack::start(StackOptions {
        control_tweak: tweak,
        ..Default::default()
    })
    .expect("stack starts")
}

fn cname_on(stack: &Stack, region: &str, hostname: &str) -> String {
    let ep = stack.pg.endpoint_of(region).unwrap();
    psql(
        ep,
        &format!("SELECT content FROM records WHERE name = '{hostname}' AND type = 'CNAME'"),
    )
}

#[test]
fn lag_race_record_is_on_every_replica_when_create_returns() {
    let stack = start(None);
    let api = EdgeApi::new(&stack);
    api.register("ap-1", "ap");
    for i in 0..150 {
        let t = api.create(&tunnel("ap-1", None, None, false)).unwrap();
        assert_eq!(t.dns.unconfirmed, Vec::<String>::new(), "iteration {i}");
        // Control waited for every region to confirm before it answered.
        let mut confirmed = t.dns.confirmed.clone();
        confirmed.sort();
        assert_eq!(confirmed, ["ap", "eu", "us"], "iteration {i}");
        for region in ["eu", "ap"] {
            assert_eq!(
                cname_on(&stack, region, &t.hostname),
                "ap.free.tunnel.test",
                "iteration {i}: {} missing on the {region} replica right after create returned",
                t.hostname
            );
        }
    }
    let metrics = reqwest::blocking::get(format!("{}/metrics", stack.control.url))
        .unwrap()
        .text()
        .unwrap();
    assert!(metrics.contains("nearhop_lag_wait_seconds_count{region=\"eu\"} 150"));
    assert!(metrics.contains("nearhop_replica_connected{region=\"eu\"} 1"));
}

#[test]
fn replica_down_create_still_answers_and_names_the_region() {
    let mut stack = start(Some(|s| s.lag_wait_ms = 700));
    let api = EdgeApi::new(&stack);
    api.register("us-1", "us");
    stack.pg.stop("eu");
    let t = api.create(&tunnel("us-1", None, None, false)).unwrap();
    assert_eq!(t.dns.unconfirmed, vec!["eu".to_string()]);
    assert!(t.dns.confirmed.contains(&"ap".to_string()));
    assert!(t.dns.confirmed.contains(&"us".to_string()));
    let metrics = reqwest::blocking::get(format!("{}/metrics", stack.control.url))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("nearhop_lag_wait_timeouts_total{region=\"eu\"} 1"),
        "{metrics}"
    );
    // Back up, it catches up and confirms again.
    stack.pg.restart("eu").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t2 = api.create(&tunnel("us-1", None, None, false)).unwrap();
        if t2.dns.unconfirmed.is_empty() {
            assert_eq!(cname_on(&stack, "eu", &t.hostname), "us.free.tunnel.test");
            break;
        }
        assert!(Instant::now() < deadline, "eu never caught up");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn pro_account_keeps_its_persistent_name_across_tunnels() {
    let stack = start(None);
    let api = EdgeApi::new(&stack);
    api.register("us-1", "us");
    api.register("eu-1", "eu");
    let acct = stack.control.create_account(Plan::Pro).unwrap();
    let first = api
        .create(&tunnel("us-1", Some(&acct.token), None, false))
        .unwrap();
    assert!(first.hostname.ends_with(".a.tunnel.test"));
    assert!(first.expires_at.is_none());
    // The old tunnel's edge is unreachable, so a reconnect elsewhere takes the name back
    // without force, and the record moves to the new region.
    let second = api
        .create(&tunnel("eu-1", Some(&acct.token), None, false))
        .unwrap();
    assert_eq!(second.hostname, first.hostname);
    let replaced = second.replaced_tunnel.expect("old tunnel replaced");
    assert_eq!(replaced.tunnel_id, first.tunnel_id);
    assert_eq!(replaced.reason, "edge_unreachable");
    for region in ["us", "eu", "ap"] {
        assert_eq!(
            cname_on(&stack, region, &first.hostname),
            "eu.a.tunnel.test"
        );
    }
}

#[test]
fn force_takes_over_and_the_old_tunnel_is_told_to_close() {
    let stack = start(None);
    let api = EdgeApi::new(&stack);
    api.register("us-1", "us");
    api.register("ap-1", "ap");
    let acct = stack.control.create_account(Plan::Pro).unwrap();
    let old = api
        .create(&tunnel(
            "us-1",
            Some(&acct.token),
            Some("androidblog"),
            false,
        ))
        .unwrap();
    assert_eq!(old.hostname, "androidblog.a.tunnel.test");
    let new = api
        .create(&tunnel(
            "ap-1",
            Some(&acct.token),
            Some("AndroidBlog"),
            true,
        ))
        .unwrap();
    assert_eq!(new.hostname, "androidblog.a.tunnel.test");
    assert_eq!(new.replaced_tunnel.unwrap().reason, "force");
    // The old edge learns at its next heartbeat that its tunnel is gone.
    let hb = api.heartbeat("us-1", &[old.tunnel_id]);
    assert_eq!(hb.close.len(), 1);
    assert_eq!(hb.close[0].reason, "force");
    assert_eq!(
        cname_on(&stack, "eu", "androidblog.a.tunnel.test"),
        "ap.a.tunnel.test"
    );
}

#[test]
fn name_owned_by_another_account_is_refused_and_nothing_written() {
    let stack = start(None);
    let api = EdgeApi::new(&stack);
    api.register("us-1", "us");
    let a = stack.control.create_account(Plan::Pro).unwrap();
    let b = stack.control.create_account(Plan::Pro).unwrap();
    api.create(&tunnel("us-1", Some(&a.token), Some("shop"), false))
        .unwrap();
    let (status, err) = api
        .create(&tunnel("us-1", Some(&b.token), Some("shop"), true))
        .unwrap_err();
    assert_eq!((status, err.error.code), (403, ErrorCode::NameOwned));
    assert!(err.error.message.contains("another account"));
    let live = psql(
        &stack.pg.primary.endpoint,
        "SELECT count(*) FROM tunnels WHERE label = 'shop' AND closed_at IS NULL",
    );
    assert_eq!(live, "1");
}

#[test]
fn lease_expiry_closes_the_tunnel_and_removes_its_record() {
    let stack = start(Some(|s| {
        s.lease_seconds = 2;
        s.heartbeat_seconds = 1;
    }));
    let api = EdgeApi::new(&stack);
    api.register("eu-1", "eu");
    let kept = api.create(&tunnel("eu-1", None, None, false)).unwrap();
    let lapsed = api.create(&tunnel("eu-1", None, None, false)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let hb = api.heartbeat("eu-1", &[kept.tunnel_id, lapsed.tunnel_id]);
    assert!(hb.close.is_empty(), "nothing should be closed yet: {hb:?}");
    // Heartbeating only `kept` from now on.
    loop {
        let hb = api.heartbeat("eu-1", &[kept.tunnel_id]);
        assert!(hb.close.is_empty());
        if cname_on(&stack, "ap", &lapsed.hostname).is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "lease never expired");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        cname_on(&stack, "ap", &kept.hostname),
        "eu.free.tunnel.test"
    );
    let reason = psql(
        &stack.pg.primary.endpoint,
        &format!(
            "SELECT close_reason FROM tunnels WHERE id = {}",
            lapsed.tunnel_id
        ),
    );
    assert_eq!(reason, "lease_expired");
}

#[test]
fn takedown_closes_removes_and_bans_leaving_the_other_zone_alone() {
    let stack = start(None);
    let api = EdgeApi::new(&stack);
    api.register("us-1", "us");
    let pro = stack.control.create_account(Plan::Pro).unwrap();
    let free = api.create(&tunnel("us-1", None, None, false)).unwrap();
    let paid = api
        .create(&tunnel("us-1", Some(&pro.token), None, false))
        .unwrap();
    let out = stack
        .control
        .cli(&["takedown", &free.hostname, "--reason", "phishing"])
        .unwrap();
    let done: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(done["closed_tunnel"], free.tunnel_id);
    assert_eq!(done["records_removed"], 1);
    assert_eq!(cname_on(&stack, "us", &free.hostname), "");
    assert_eq!(cname_on(&stack, "us", &paid.hostname), "us.a.tunnel.test");
    let hb = api.heartbeat("us-1", &[free.tunnel_id, paid.tunnel_id]);
    assert_eq!(hb.close.len(), 1);
    assert_eq!(hb.close[0].reason, "takedown");
    let banned = psql(
        &stack.pg.primary.endpoint,
        "SELECT zone || ':' || reason FROM banned_names",
    );
    assert_eq!(banned, "free.tunnel.test:phishing");
}

#[test]
fn revoked_token_is_refused_with_a_clear_error() {
    let stack = start(None);
    let api = EdgeApi::new(&stack);
    api.register("us-1", "us");
    let acct = stack.control.create_account(Plan::Pro).unwrap();
    let second = stack.control.create_token(acct.account_id).unwrap();
    api.create(&tunnel("us-1", Some(&second.token), None, false))
        .unwrap();
    stack
        .control
        .cli(&[
            "token",
            "revoke",
            "--token-id",
            &second.token_id.to_string(),
        ])
        .unwrap();
    let (status, err) = api
        .create(&tunnel("us-1", Some(&second.token), None, false))
        .unwrap_err();
    assert_eq!((status, err.error.code), (401, ErrorCode::BadToken));
    assert!(err.error.message.contains("revoked"));
    // The first token still works.
    api.create(&tunnel("us-1", Some(&acct.token), Some("other"), false))
        .unwrap();
}

#[test]
fn bad_input_gets_clear_errors_and_writes_nothing() {
    let stack = start(None);
    let api = EdgeApi::new(&stack);
    api.register("us-1", "us");
    let acct = stack.control.create_account(Plan::Pro).unwrap();
    let count = || {
        psql(
            &stack.pg.primary.endpoint,
            "SELECT (SELECT count(*) FROM tunnels) || '/' || (SELECT count(*) FROM records) \
             || '/' || (SELECT count(*) FROM names)",
        )
    };
    let before = count();
    let secret = stack.control.edge_secret.clone();
    for (body, ctype, code) in [
        ("{not json", "application/json", "bad_request"),
        (r#"{"edge_id":"us-1"}"#, "application/json", "bad_request"),
        (
            r#"{"edge_id":"us-1","client_addr":"x","kind":"udp"}"#,
            "application/json",
            "bad_request",
        ),
        (
            "edge_id=us-1",
            "application/x-www-form-urlencoded",
            "bad_request",
        ),
    ] {
        let (status, text) = api.raw("/v1/tunnels", &secret, body, ctype);
        assert_eq!(status, 400, "{body}: {text}");
        let e: ApiError = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_value(e.error.code).unwrap(), code);
        assert!(!e.error.message.is_empty());
    }
    let huge = format!(
        r#"{{"edge_id":"us-1","client_addr":"{}"}}"#,
        "x".repeat(200_000)
    );
    let (status, text) = api.raw("/v1/tunnels", &secret, &huge, "application/json");
    assert_eq!(status, 413, "{text}");
    let (status, text) = api.raw("/v1/tunnels", "wrong-secret", "{}", "application/json");
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("unauthorized"));
    let hostile = [
        "../etc",
        "bl\u{f6}g",
        &"a".repeat(64),
        "*",
        "a.b",
        "x'; DROP TABLE records; --",
        "-lead",
        "www",
        // The SOA's contact mailbox, hostmaster.<zone>.
        "hostmaster",
        // The regions' edge hosts (`us.a.tunnel.test` is where us's tunnels point).
        "us",
        "Eu",
    ];
    for name in hostile {
        let (status, err) = api
            .create(&tunnel("us-1", Some(&acct.token), Some(name), false))
            .unwrap_err();
        assert_eq!(
            (status, err.error.code),
            (400, ErrorCode::InvalidName),
            "{name:?}"
        );
    }
    // A NUL is refused with every JSON body's NUL sentence, before the name rules.
    let (status, err) = api
        .create(&tunnel("us-1", Some(&acct.token), Some("a\u{0}"), false))
        .unwrap_err();
    assert_eq!((status, err.error.code), (400, ErrorCode::BadRequest));
    assert!(
        err.error.message.contains("NUL character"),
        "{}",
        err.error.message
    );
    let (status, err) = api
        .create(&tunnel("us-1", Some("nh_notarealtoken"), None, false))
        .unwrap_err();
    assert_eq!((status, err.error.code), (401, ErrorCode::BadToken));
    let (status, err) = api
        .create(&tunnel("nope-1", None, None, false))
        .unwrap_err();
    assert_eq!((status, err.error.code), (404, ErrorCode::NotFound));
    let (status, err) = api
        .create(&tunnel("us-1", None, Some("mine"), false))
        .unwrap_err();
    assert_eq!((status, err.error.code), (403, ErrorCode::PlanLimit));
    // Uppercase is folded, not refused: "SHOP" is the account's "shop".
    assert_eq!(count(), before, "a refused request wrote something");
    let t = api
        .create(&tunnel("us-1", Some(&acct.token), Some("SHOP"), false))
        .unwrap();
    assert_eq!(t.hostname, "shop.a.tunnel.test");
}

#[test]
fn free_zone_rate_limit_is_per_source_and_says_when_to_retry() {
    let stack = start(Some(|s| s.free_rate_limit = 3));
    let api = EdgeApi::new(&stack);
    api.register("us-1", "us");
    for _ in 0..3 {
        api.create(&tunnel("us-1", None, None, false)).unwrap();
    }
    let (status, err) = api.create(&tunnel("us-1", None, None, false)).unwrap_err();
    assert_eq!((status, err.error.code), (429, ErrorCode::RateLimited));
    assert!(err.error.message.contains("wait a minute"));
    let mut other = tunnel("us-1", None, None, false);
    other.client_addr = "127.0.0.10:1".into();
    api.create(&other).unwrap();
}

#[test]
fn admin_api_needs_its_own_secret_and_mirrors_the_cli() {
    let stack = start(None);
    let http = Client::new();
    let base = &stack.control.url;
    // The edge secret does not open the admin API.
    let r = http
        .post(format!("{base}/v1/admin/accounts"))
        .bearer_auth(&stack.control.edge_secret)
        .json(&serde_json::json!({"name": "x", "plan": "pro"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let admin = |method: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
        let mut req = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(&stack.control.admin_secret);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().unwrap();
        let status = r.status().as_u16();
        (status, r.json::<serde_json::Value>().unwrap())
    };
    let (s, acct) = admin(
        reqwest::Method::POST,
        "/v1/admin/accounts",
        Some(serde_json::json!({"name": "shop", "plan": "pro"})),
    );
    assert_eq!(s, 201, "{acct}");
    let id = acct["account_id"].as_i64().unwrap();
    let (s, v) = admin(
        reqwest::Method::POST,
        &format!("/v1/admin/accounts/{id}/names"),
        Some(serde_json::json!({"name": "Storefront"})),
    );
    assert_eq!(
        (s, v["hostname"].as_str()),
        (201, Some("storefront.a.tunnel.test"))
    );
    let (s, v) = admin(
        reqwest::Method::POST,
        &format!("/v1/admin/accounts/{id}/domains"),
        Some(serde_json::json!({"domain": "Shop.Example.", "target": "storefront"})),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["domain"], "shop.example");
    assert_eq!(v["cname_target"], "storefront.a.tunnel.test");
    assert_eq!(v["txt_name"], "_nearhop.shop.example");
    assert_eq!(v["verified"], false);
    assert!(
        v.get("acme_challenge_cname").is_none(),
        "no ACME record to add when control obtains no certificates: {v}"
    );
    let (s, v) = admin(
        reqwest::Method::POST,
        &format!("/v1/admin/accounts/{id}/domains"),
        Some(serde_json::json!({"domain": "x.a.tunnel.test", "target": "storefront"})),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_name"))
    );
    let (s, tok) = admin(
        reqwest::Method::POST,
        &format!("/v1/admin/accounts/{id}/tokens"),
        None,
    );
    assert_eq!(s, 201);
    let token = tok["token"].as_str().expect("the new token").to_string();
    let api = EdgeApi::new(&stack);
    api.register("us-1", "us");
    api.create(&tunnel("us-1", Some(&token), None, false))
        .expect("the new token opens a tunnel");
    let (s, _) = admin(
        reqwest::Method::DELETE,
        &format!("/v1/admin/tokens/{}", tok["token_id"]),
        None,
    );
    assert_eq!(s, 200);
    // Revoked: the token opens nothing more, and the refusal says why.
    let (status, err) = api
        .create(&tunnel("us-1", Some(&token), None, false))
        .unwrap_err();
    assert_eq!((status, err.error.code), (401, ErrorCode::BadToken));
    assert!(
        err.error.message.contains("revoked"),
        "{}",
        err.error.message
    );
    let (s, v) = admin(reqwest::Method::DELETE, "/v1/admin/tokens/999999", None);
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    let (s, v) = admin(reqwest::Method::DELETE, "/v1/admin/tokens/abc", None);
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("bad_request")));
    let (s, v) = admin(reqwest::Method::GET, "/v1/nothing-here", None);
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
}

#[test]
fn control_outage_does_not_expire_live_tunnels_on_recovery() {
    let mut stack = start(Some(|s| {
        s.lease_seconds = 2;
        s.heartbeat_seconds = 1;
    }));
    let api = EdgeApi::new(&stack);
    api.register("eu-1", "eu");
    let t = api.create(&tunnel("eu-1", None, None, false)).unwrap();
    stack.control.stop();
    // The edge's heartbeats fail meanwhile; the lease lapses in the database.
    std::thread::sleep(Duration::from_secs(4));
    stack.control.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        let hb = api.heartbeat("eu-1", &[t.tunnel_id]);
        assert!(
            hb.close.is_empty(),
            "a live tunnel was closed after recovery: {hb:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(cname_on(&stack, "ap", &t.hostname), "eu.free.tunnel.test");
}

/// Control keeps an idle keep-alive connection open longer than an edge keeps it in its pool
/// (`API_SERVER_KEEP_ALIVE` > `API_CLIENT_POOL_IDLE`). With actix's default of 5 s, a setup
/// written on a pooled connection at the moment control closed it failed as "control plane
/// is unreachable". Here one connection carries a request, idles past those 5 s and must
/// still carry the next one.
#[test]
fn an_idle_keep_alive_connection_is_still_open_after_six_seconds() {
    use std::io::{BufRead, BufReader, Read, Write};
    let stack = start(None);
    let addr = stack.control.url.trim_start_matches("http://").to_string();
    let stream = std::net::TcpStream::connect(&addr).expect("connect to control");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut ask = |n: u32| -> String {
        writer
            .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .unwrap_or_else(|e| panic!("request {n}: writing: {e}"));
        let mut status = String::new();
        reader
            .read_line(&mut status)
            .unwrap_or_else(|e| panic!("request {n}: reading: {e}"));
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        status
    };
    let first = ask(1);
    assert!(first.starts_with("HTTP/1.1 200"), "first answer: {first:?}");
    std::thread::sleep(Duration::from_secs(6));
    let second = ask(2);
    assert!(
        second.starts_with("HTTP/1.1 200"),
        "control closed the idle connection within 6 s (answer {second:?}); edges pool \
         connections for {:?}",
        nearhop_wire::API_CLIENT_POOL_IDLE
    );
}

/// Sends `request` to control on a raw socket (from a thread of its own, so that a head
/// control stops reading does not block the test) and returns everything it answers up
/// to the close.
fn raw_exchange(addr: &str, request: Vec<u8>) -> String {
    use std::io::{Read, Write};
    let stream = std::net::TcpStream::connect(addr).expect("connect to control");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        // Control may close before it has read it all: the answer is what counts.
        for piece in request.chunks(16 * 1024) {
            if writer.write_all(piece).is_err() {
                break;
            }
        }
    });
    let mut got = Vec::new();
    let mut reader = stream;
    reader
        .read_to_end(&mut got)
        .unwrap_or_else(|e| panic!("reading control's answer: {e} (so far {got:?})"));
    sending.join().unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

/// The ApiError body at the end of `answer`, which must have `status` and close.
fn refusal(answer: &str, status: u16) -> ApiError {
    let (head, body) = answer
        .rsplit_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer: {answer:?}"));
    let last_head = &head[head.rfind("HTTP/1.1 ").unwrap_or(0)..];
    assert!(
        last_head.starts_with(&format!("HTTP/1.1 {status} ")),
        "want {status}: {answer:?}"
    );
    assert!(
        last_head.contains("content-type: application/json"),
        "{answer:?}"
    );
    assert!(last_head.contains("connection: close"), "{answer:?}");
    let error: ApiError =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: not an ApiError: {answer:?}"));
    assert_eq!(error.error.code, ErrorCode::BadRequest, "{answer:?}");
    error
}

#[test]
fn a_request_control_cannot_read_gets_a_json_error_that_says_why() {
    let stack = start(None);
    let addr = stack.control.url.trim_start_matches("http://").to_string();

    let malformed = raw_exchange(&addr, b"GARBAGE\r\n\r\n".to_vec());
    let error = refusal(&malformed, 400);
    assert!(
        error.error.message.contains("not valid HTTP/1.1"),
        "{malformed:?}"
    );

    // A head of 1 MiB, far past actix's 128 KiB, sent on while control answers: the answer
    // arrives whole, not as a reset.
    let mut huge = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Big: ").into_bytes();
    huge.extend(std::iter::repeat_n(b'a', 1 << 20));
    huge.extend_from_slice(b"\r\n\r\n");
    let too_large = raw_exchange(&addr, huge);
    let error = refusal(&too_large, 431);
    assert!(error.error.message.contains("128 KiB"), "{too_large:?}");

    let mut many = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-{i}: 1\r\n"));
    }
    many.push_str("\r\n");
    refusal(&raw_exchange(&addr, many.into_bytes()), 431);

    // A head that never ends.
    let slow = raw_exchange(&addr, b"GET /healthz HTTP/1.1\r\n".to_vec());
    let error = refusal(&slow, 408);
    assert!(error.error.message.contains("5 seconds"), "{slow:?}");

    // A good request, then a bad one on the same connection: the first is answered as
    // always, then the refusal.
    let pipelined = raw_exchange(
        &addr,
        format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\nGARBAGE\r\n\r\n").into_bytes(),
    );
    assert!(pipelined.starts_with("HTTP/1.1 200 "), "{pipelined:?}");
    assert!(pipelined.contains("\"ok\":true"), "{pipelined:?}");
    refusal(&pipelined, 400);
    // The same after an HTTP/1.0 request that kept its connection alive (actix's own answer
    // then differs: HTTP/1.0 and `connection: keep-alive`).
    let after_http10 = raw_exchange(
        &addr,
        b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGARBAGE\r\n\r\n".to_vec(),
    );
    assert!(
        after_http10.starts_with("HTTP/1.0 200 "),
        "{after_http10:?}"
    );
    refusal(&after_http10, 400);

    // The API's own refusals are as before: a JSON 404, and the connection stays open
    // (the next request on it is answered; the last one asks to close).
    let kept = raw_exchange(
        &addr,
        b"GET /v1/nothing HTTP/1.1\r\nHost: c\r\n\r\n\
          GET /healthz HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n"
            .to_vec(),
    );
    assert!(kept.starts_with("HTTP/1.1 404 "), "{kept:?}");
    let second = kept.find("}HTTP/1.1 200 ").map(|at| at + 1);
    let second = second.unwrap_or_else(|| panic!("the second request was not answered: {kept:?}"));
    let first: ApiError = serde_json::from_str(
        kept[..second]
            .split_once("\r\n\r\n")
            .map(|(_, body)| body)
            .unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("the 404's body is no ApiError ({e}): {kept:?}"));
    assert_eq!(first.error.code, ErrorCode::NotFound);
}
