//! The operator's side of control against a real PostgreSQL primary: the admin API and the
//! `nearhop-control` CLI as an operator uses them (tokens, names, takedowns), and input no
//! handler may pass on to the database (NUL in JSON text). The test plays the edge over HTTP
//! where a case needs one.

use nearhop_stack::postgres::psql;
use nearhop_stack::{Stack, StackOptions};
use nearhop_wire::RegisterEdgeRequest;
use reqwest::blocking::Client;
use serde_json::{json, Value};
use std::time::Duration;

const EDGE: &str = "us-op";

/// One region, no replicas: these cases are about control and its database only.
fn start(tweak: Option<fn(&mut nearhop_stack::ControlSpec)>) -> Stack {
    let stack = Stack::start(StackOptions {
        regions: vec![("us".into(), std::net::Ipv4Addr::LOCALHOST)],
        control_tweak: tweak,
        ..Default::default()
    })
    .expect("stack starts");
    let (status, body) = call(
        &stack,
        "POST",
        "/v1/edges/register",
        &stack.control.edge_secret,
        Some(
            serde_json::to_string(&RegisterEdgeRequest {
                edge_id: EDGE.into(),
                region: "us".into(),
                // Nothing listens there: control's calls to the edge fail fast.
                admin_url: "http://127.0.0.1:9".into(),
                ..Default::default()
            })
            .unwrap(),
        ),
    );
    assert_eq!(status, 200, "{body}");
    stack
}

fn http() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// One call with `Authorization: Bearer <secret>` and a raw JSON body; the status and the
/// answer as JSON (`null` when it is not JSON).
fn call(
    stack: &Stack,
    method: &str,
    path: &str,
    secret: &str,
    body: Option<String>,
) -> (u16, Value) {
    call_with_auth(stack, method, path, &format!("Bearer {secret}"), body)
}

fn call_with_auth(
    stack: &Stack,
    method: &str,
    path: &str,
    authorization: &str,
    body: Option<String>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = http()
        .request(method, format!("{}{path}", stack.control.url))
        .header("authorization", authorization);
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let r = req.send().unwrap();
    let status = r.status().as_u16();
    let text = r.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn admin(stack: &Stack, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    call(
        stack,
        method,
        path,
        &stack.control.admin_secret,
        body.map(|b| b.to_string()),
    )
}

fn sql(stack: &Stack, query: &str) -> String {
    psql(&stack.pg.primary.endpoint, query)
        .expect("psql")
        .trim()
        .to_string()
}

fn error_of(v: &Value) -> (&str, &str) {
    (
        v["error"]["code"].as_str().unwrap_or("(no code)"),
        v["error"]["message"].as_str().unwrap_or("(no message)"),
    )
}

#[test]
fn nul_in_json_text_is_refused_with_a_sentence_and_writes_nothing() {
    let stack = start(None);
    let count = || {
        sql(
            &stack,
            "SELECT (SELECT count(*) FROM banned_names) || '/' || (SELECT count(*) FROM edges) \
             || '/' || (SELECT count(*) FROM tunnels) || '/' || (SELECT count(*) FROM accounts)",
        )
    };
    let before = count();
    let edge = stack.control.edge_secret.clone();
    let admin_secret = stack.control.admin_secret.clone();
    // Each used to reach PostgreSQL, which refuses NUL in text: 500.
    let cases = [
        (
            "/v1/admin/takedowns",
            &admin_secret,
            r#"{"hostname":"x.a.tunnel.test","reason":"a\u0000b"}"#.to_string(),
        ),
        (
            "/v1/admin/accounts",
            &admin_secret,
            r#"{"name":"shop\u0000","plan":"pro"}"#.to_string(),
        ),
        (
            "/v1/edges/register",
            &edge,
            format!(r#"{{"edge_id":"{EDGE}","region":"us","admin_url":"http://x\u0000y"}}"#),
        ),
        (
            "/v1/tunnels",
            &edge,
            format!(r#"{{"edge_id":"{EDGE}","kind":"http","client_addr":"127.0.0.9:1\u0000"}}"#),
        ),
    ];
    for (path, secret, body) in cases {
        let (status, v) = call(&stack, "POST", path, secret, Some(body.clone()));
        let (code, message) = error_of(&v);
        assert_eq!((status, code), (400, "bad_request"), "{path} {body}: {v}");
        assert!(
            message.contains("text fields may not contain the NUL character (\\u0000)"),
            "{path}: {message}"
        );
    }
    // A heartbeat as large as a busy edge's (about 700 KB) with a NUL at its very end.
    let ids: Vec<String> = (0..100_000).map(|i| i.to_string()).collect();
    let heartbeat = format!(r#"{{"tunnel_ids":[{}],"x":"\u0000"}}"#, ids.join(","));
    let (status, v) = call(
        &stack,
        "POST",
        &format!("/v1/edges/{EDGE}/heartbeat"),
        &edge,
        Some(heartbeat),
    );
    assert_eq!((status, error_of(&v).0), (400, "bad_request"), "{v}");
    // A NUL in a path segment or the query, decoded into a handler's parameters.
    for (method, path, secret, body) in [
        (
            "POST",
            "/v1/edges/us%00x/heartbeat",
            &edge,
            Some(r#"{"tunnel_ids":[]}"#),
        ),
        (
            "POST",
            "/v1/edges/us%00x/leaving",
            &edge,
            Some(r#"{"stage":"draining"}"#),
        ),
        ("GET", "/v1/edges/us%00x/routes", &edge, None),
        (
            "POST",
            "/v1/admin/certificates/a%00b/renew",
            &admin_secret,
            None,
        ),
        (
            "POST",
            "/v1/admin/accounts/1/domains?verified=%00",
            &admin_secret,
            Some("{}"),
        ),
    ] {
        let (status, v) = call(&stack, method, path, secret, body.map(str::to_string));
        let (code, message) = error_of(&v);
        assert_eq!((status, code), (400, "bad_request"), "{path}: {v}");
        assert!(message.contains("NUL character (%00)"), "{path}: {message}");
    }
    assert_eq!(count(), before, "a refused request wrote something");

    // An escaped backslash followed by `u0000` is text, not a NUL: taken as written.
    let (status, v) = admin(
        &stack,
        "POST",
        "/v1/admin/takedowns",
        Some(json!({"hostname": "x.a.tunnel.test", "reason": "path a\\u0000b"})),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        sql(&stack, "SELECT reason FROM banned_names WHERE label = 'x'"),
        "path a\\u0000b"
    );
}

#[test]
fn the_bearer_scheme_is_accepted_in_any_case() {
    let stack = start(None);
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let (status, v) = call_with_auth(
            &stack,
            "POST",
            "/v1/admin/accounts",
            &format!("{scheme} {}", stack.control.admin_secret),
            Some(json!({"name": "shop", "plan": "pro"}).to_string()),
        );
        assert_eq!(status, 201, "{scheme}: {v}");
        let (status, v) = call_with_auth(
            &stack,
            "POST",
            &format!("/v1/edges/{EDGE}/heartbeat"),
            &format!("{scheme} {}", stack.control.edge_secret),
            Some(json!({"tunnel_ids": []}).to_string()),
        );
        assert_eq!(status, 200, "{scheme}: {v}");
    }
    let (status, _) = call_with_auth(
        &stack,
        "POST",
        "/v1/admin/accounts",
        &format!("Basic {}", stack.control.admin_secret),
        Some(json!({"name": "shop", "plan": "pro"}).to_string()),
    );
    assert_eq!(status, 401);
}
