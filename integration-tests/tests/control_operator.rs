//! The operator's side of control against a real PostgreSQL primary: the admin API and the
//! `nearhop-control` CLI as an operator uses them (tokens, names, takedowns), and input no
//! handler may pass on to the database (NUL in JSON text). The test plays the edge over HTTP
//! where a case needs one.

use nearhop_stack::poll::eventually;
use nearhop_stack::postgres::psql;
use nearhop_stack::{Stack, StackOptions};
use nearhop_wire::{CreateTunnelRequest, RegisterEdgeRequest, TunnelKind};
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

/// `nearhop-control --json ARGS`: its JSON output, or the error it printed.
fn cli(stack: &Stack, args: &[&str]) -> Result<Value, String> {
    let out = stack.control.cli(args).map_err(|e| format!("{e:#}"))?;
    serde_json::from_str(out.trim()).map_err(|e| format!("{e}: {out}"))
}

/// `nearhop-control ARGS` without `--json`: what an operator reads, or the error.
fn cli_text(stack: &Stack, args: &[&str]) -> Result<String, String> {
    let bin = nearhop_stack::control::bin_path("nearhop-control").unwrap();
    let out = std::process::Command::new(bin)
        .arg("--config")
        .arg(&stack.control.config_path)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(stderr)
    }
}

fn sql(stack: &Stack, query: &str) -> String {
    psql(&stack.pg.primary.endpoint, query)
        .expect("psql")
        .trim()
        .to_string()
}

fn tunnel(token: Option<&str>, name: Option<&str>) -> CreateTunnelRequest {
    CreateTunnelRequest {
        edge_id: EDGE.into(),
        token: token.map(str::to_string),
        requested_name: name.map(str::to_string),
        kind: TunnelKind::Http,
        force: false,
        client_addr: "127.0.0.9:50000".into(),
    }
}

/// Sets a tunnel up as the edge; the status and the answer.
fn create(stack: &Stack, req: &CreateTunnelRequest) -> (u16, Value) {
    call(
        stack,
        "POST",
        "/v1/tunnels",
        &stack.control.edge_secret,
        Some(serde_json::to_string(req).unwrap()),
    )
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

/// A route asked with a method it does not take gets 405 with a sentence (it was the 404 of
/// an unknown path); an unknown path is still 404.
#[test]
fn a_wrong_method_is_405_and_an_unknown_path_404() {
    let stack = start(None);
    for (method, path) in [
        ("GET", "/v1/admin/accounts".to_string()),
        ("GET", format!("/v1/edges/{EDGE}/heartbeat")),
        ("DELETE", "/v1/tunnels".to_string()),
    ] {
        let (status, v) = admin(&stack, method, &path, None);
        assert_eq!(status, 405, "{method} {path}: {v}");
        let (code, message) = error_of(&v);
        assert_eq!(code, "method_not_allowed", "{v}");
        assert!(message.contains(method) && message.contains(&path), "{v}");
    }
    let (status, v) = admin(&stack, "GET", "/v1/no-such-thing", None);
    assert_eq!(status, 404, "{v}");
    assert_eq!(error_of(&v).0, "not_found", "{v}");
}

fn close(stack: &Stack, tunnel_id: i64) {
    let (status, v) = call(
        stack,
        "POST",
        &format!("/v1/tunnels/{tunnel_id}/close"),
        &stack.control.edge_secret,
        Some(json!({"edge_id": EDGE, "reason": "client_closed"}).to_string()),
    );
    assert_eq!(status, 200, "{v}");
}

#[test]
fn the_name_limit_states_the_plan_and_the_operator_can_release_a_name() {
    let stack = start(None);
    let acct = stack
        .control
        .create_account(nearhop_wire::Plan::Pro)
        .unwrap();
    let id = acct.account_id;
    // The operator reserves past the plan's 50 (the harness's max_names_per_account).
    for i in 0..51 {
        let (status, v) = admin(
            &stack,
            "POST",
            &format!("/v1/admin/accounts/{id}/names"),
            Some(json!({"name": format!("n{i}")})),
        );
        assert_eq!(status, 201, "{v}");
    }
    let (status, v) = create(&stack, &tunnel(Some(&acct.token), Some("fresh")));
    let (code, message) = error_of(&v);
    assert_eq!((status, code), (403, "plan_limit"), "{v}");
    assert!(
        message.starts_with("the account owns 51 names and its plan allows 50;"),
        "{message}"
    );
    assert!(
        message.contains("nearhop-control name release"),
        "{message}"
    );

    // A name with a live tunnel is not released.
    let (status, live) = create(&stack, &tunnel(Some(&acct.token), Some("n1")));
    assert_eq!(status, 201, "{live}");
    let e = cli_text(&stack, &["name", "release", "n1"]).unwrap_err();
    assert!(
        e.contains("n1.a.tunnel.test has a live tunnel") && e.contains("once it is closed"),
        "{e}"
    );
    close(&stack, live["tunnel_id"].as_i64().unwrap());
    let out = cli_text(&stack, &["name", "release", "N1.a.tunnel.test"]).unwrap();
    assert_eq!(
        out,
        format!("n1.a.tunnel.test released from account {id}: any account may claim it now")
    );

    // Its custom domains go with it: they would route to the name's next owner.
    let (status, v) = admin(
        &stack,
        "POST",
        &format!("/v1/admin/accounts/{id}/domains?verified=true"),
        Some(json!({"domain": "shop.example", "target": "n2"})),
    );
    assert_eq!(status, 201, "{v}");
    let (status, v) = admin(&stack, "DELETE", "/v1/admin/names/n2.a.tunnel.test", None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["account_id"], id);
    assert_eq!(v["domains_removed"], json!(["shop.example"]));
    assert_eq!(sql(&stack, "SELECT count(*) FROM custom_domains"), "0");
    let (status, v) = admin(&stack, "DELETE", "/v1/admin/names/n2", None);
    let (code, message) = error_of(&v);
    assert_eq!((status, code), (404, "not_found"), "{v}");
    assert!(message.contains("not owned by any account"), "{message}");
    let (status, v) = admin(&stack, "DELETE", "/v1/admin/names/x.example.com", None);
    assert_eq!((status, error_of(&v).0), (400, "invalid_name"), "{v}");

    // 49 owned now: a new name fits the plan again; another account may take a freed one.
    let (status, v) = create(&stack, &tunnel(Some(&acct.token), Some("fresh")));
    assert_eq!(status, 201, "{v}");
    let other = stack
        .control
        .create_account(nearhop_wire::Plan::Pro)
        .unwrap();
    let (status, v) = create(&stack, &tunnel(Some(&other.token), Some("n1")));
    assert_eq!(status, 201, "{v}");

    // A single-label custom domain is named as such, not as a bad character.
    let e = cli_text(
        &stack,
        &[
            "domain",
            "add",
            "--account",
            &id.to_string(),
            "example",
            "--target",
            "n3",
        ],
    )
    .unwrap_err();
    assert!(e.contains("\"example\" is a single label"), "{e}");
    assert!(!e.contains("found '.'"), "{e}");
}

#[test]
fn a_takedown_says_what_it_did_and_can_be_lifted() {
    let stack = start(None);
    let acct = stack
        .control
        .create_account(nearhop_wire::Plan::Pro)
        .unwrap();
    let (status, t) = create(&stack, &tunnel(Some(&acct.token), Some("blog")));
    assert_eq!(status, 201, "{t}");
    let tunnel_id = t["tunnel_id"].as_i64().unwrap();
    let out = cli_text(
        &stack,
        &["takedown", "BLOG.A.Tunnel.Test", "--reason", "phishing"],
    )
    .unwrap();
    assert_eq!(
        out,
        format!(
            "blog.a.tunnel.test taken down: its live tunnel {tunnel_id} was closed, 1 record \
             removed; the name is banned (reason: phishing)"
        )
    );
    let again = cli(
        &stack,
        &["takedown", "blog.a.tunnel.test", "--reason", "phishing"],
    )
    .unwrap();
    assert_eq!(again["hostname"], "blog.a.tunnel.test");
    assert_eq!(again["already_banned"], true);
    assert_eq!(again["previous_reason"], "phishing");
    assert_eq!(again["closed_tunnel"], Value::Null);
    assert_eq!(again["records_removed"], 0);
    let out = cli_text(
        &stack,
        &["takedown", "blog.a.tunnel.test", "--reason", "phishing"],
    )
    .unwrap();
    assert!(
        out.contains("was already taken down, with the same reason"),
        "{out}"
    );
    let out = cli_text(
        &stack,
        &["takedown", "blog.a.tunnel.test", "--reason", "malware"],
    )
    .unwrap();
    assert!(
        out.contains("its reason was replaced (\"phishing\" is now \"malware\")"),
        "{out}"
    );
    let e = cli_text(
        &stack,
        &["takedown", "blog.a.tunnel.test", "--reason", "  "],
    )
    .unwrap_err();
    assert!(e.contains("the takedown reason is empty"), "{e}");
    let (status, v) = create(&stack, &tunnel(Some(&acct.token), Some("blog")));
    assert_eq!((status, error_of(&v).0), (403, "name_banned"), "{v}");

    let out = cli_text(&stack, &["takedown", "lift", "Blog.a.tunnel.test"]).unwrap();
    assert!(
        out.starts_with("blog.a.tunnel.test: takedown lifted")
            && out.contains("for: malware")
            && out.contains("can be used again"),
        "{out}"
    );
    let (status, v) = create(&stack, &tunnel(Some(&acct.token), Some("blog")));
    assert_eq!(status, 201, "the owner has the name back: {v}");
    let e = cli_text(&stack, &["takedown", "lift", "blog.a.tunnel.test"]).unwrap_err();
    assert!(e.contains("blog.a.tunnel.test is not taken down"), "{e}");

    // The same through the admin API.
    let (status, v) = admin(
        &stack,
        "POST",
        "/v1/admin/takedowns",
        Some(json!({"hostname": "Blog.a.tunnel.test", "reason": "abuse"})),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["hostname"], "blog.a.tunnel.test");
    assert_eq!(v["already_banned"], false);
    let (status, v) = admin(
        &stack,
        "DELETE",
        "/v1/admin/takedowns/blog.a.tunnel.test",
        None,
    );
    assert_eq!((status, v["reason"].as_str()), (200, Some("abuse")), "{v}");
    let (status, v) = admin(
        &stack,
        "DELETE",
        "/v1/admin/takedowns/blog.a.tunnel.test",
        None,
    );
    assert_eq!((status, error_of(&v).0), (404, "not_found"), "{v}");
    assert_eq!(sql(&stack, "SELECT count(*) FROM banned_names"), "0");
}

#[test]
fn an_accounts_first_token_is_listed_by_id_and_revoked_once() {
    let stack = start(None);
    let acct = cli(&stack, &["account", "create", "--plan", "pro"]).unwrap();
    let id = acct["account_id"].as_i64().unwrap();
    let first_id = acct["token_id"]
        .as_i64()
        .expect("account create prints the token id");
    let first = acct["token"].as_str().unwrap().to_string();
    let text = cli_text(&stack, &["account", "create", "--plan", "free"]).unwrap();
    assert!(
        text.contains("token ") && text.contains("--token-id"),
        "{text}"
    );
    let (status, v) = admin(
        &stack,
        "POST",
        "/v1/admin/accounts",
        Some(json!({"name": "shop", "plan": "pro"})),
    );
    assert_eq!(status, 201, "{v}");
    assert!(v["token_id"].as_i64().is_some(), "{v}");
    let second = stack.control.create_token(id).unwrap();

    let listed = cli(&stack, &["token", "list", "--account", &id.to_string()]).unwrap();
    let ids: Vec<i64> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["token_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![first_id, second.token_id]);
    let text = listed.to_string();
    assert!(
        !text.contains(&first) && !text.contains(&second.token),
        "a token was shown: {text}"
    );
    assert_eq!(listed["tokens"][0]["revoked_at"], Value::Null);
    assert!(listed["tokens"][0]["hint"].as_str().unwrap().ends_with('…'));

    let first_arg = first_id.to_string();
    let out = cli_text(&stack, &["token", "revoke", "--token-id", &first_arg]).unwrap();
    assert!(out.contains(&format!("token {first_id} revoked")), "{out}");
    let out = cli_text(&stack, &["token", "revoke", "--token-id", &first_arg]).unwrap();
    assert!(
        out.contains(&format!("token {first_id} was already revoked at")),
        "{out}"
    );
    let again = cli(&stack, &["token", "revoke", "--token-id", &first_arg]).unwrap();
    assert_eq!(again["already_revoked"], true);
    let (status, v) = create(&stack, &tunnel(Some(&first), None));
    assert_eq!((status, error_of(&v).0), (401, "bad_token"), "{v}");

    let (status, v) = admin(
        &stack,
        "GET",
        &format!("/v1/admin/accounts/{id}/tokens"),
        None,
    );
    assert_eq!(status, 200, "{v}");
    assert!(v["tokens"][0]["revoked_at"].is_string(), "{v}");
    assert_eq!(v["tokens"][1]["revoked_at"], Value::Null, "{v}");
    let path = format!("/v1/admin/tokens/{}", second.token_id);
    let (status, v) = admin(&stack, "DELETE", &path, None);
    assert_eq!(
        (status, v["revoked"].clone(), v["already_revoked"].clone()),
        (200, json!(true), json!(false))
    );
    let (status, v) = admin(&stack, "DELETE", &path, None);
    assert_eq!(
        (status, v["already_revoked"].clone()),
        (200, json!(true)),
        "{v}"
    );
    let (status, v) = admin(&stack, "GET", "/v1/admin/accounts/999999/tokens", None);
    assert_eq!((status, error_of(&v).0), (404, "not_found"), "{v}");
    let e = cli_text(&stack, &["token", "list", "--account", "999999"]).unwrap_err();
    assert!(e.contains("no account 999999"), "{e}");
}

/// `last_used_at` of one token, as the admin API lists it (`null`: never used).
fn last_used(stack: &Stack, account_id: i64, token_id: i64) -> Value {
    let (status, v) = admin(
        stack,
        "GET",
        &format!("/v1/admin/accounts/{account_id}/tokens"),
        None,
    );
    assert_eq!(status, 200, "{v}");
    let listed = v["tokens"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["token_id"] == json!(token_id)))
        .unwrap_or_else(|| panic!("token {token_id} is not listed: {v}"));
    assert!(
        listed.get("last_used_at").is_some(),
        "no last_used_at: {listed}"
    );
    listed["last_used_at"].clone()
}

/// Sets a tunnel up with `token` and closes it again, so the account's name is free.
fn set_up_and_close(stack: &Stack, token: &str) {
    let (status, v) = create(stack, &tunnel(Some(token), None));
    assert_eq!(status, 201, "{v}");
    close(stack, v["tunnel_id"].as_i64().unwrap());
}

#[test]
fn a_tokens_last_use_is_listed_after_a_setup_at_most_once_a_minute() {
    let stack = start(None);
    let acct = cli(&stack, &["account", "create", "--plan", "pro"]).unwrap();
    let (id, token_id) = (
        acct["account_id"].as_i64().unwrap(),
        acct["token_id"].as_i64().unwrap(),
    );
    let token = acct["token"].as_str().unwrap().to_string();
    let account = id.to_string();
    let unused = stack.control.create_token(id).unwrap();

    assert_eq!(last_used(&stack, id, token_id), Value::Null);
    let listed = cli(&stack, &["token", "list", "--account", &account]).unwrap();
    assert_eq!(listed["tokens"][0]["last_used_at"], Value::Null, "{listed}");
    let text = cli_text(&stack, &["token", "list", "--account", &account]).unwrap();
    assert_eq!(text.matches("never used").count(), 2, "{text}");

    set_up_and_close(&stack, &token);
    let first_use = last_used(&stack, id, token_id);
    assert!(first_use.is_string(), "{first_use}");
    assert_eq!(last_used(&stack, id, unused.token_id), Value::Null);
    let text = cli_text(&stack, &["token", "list", "--account", &account]).unwrap();
    let line = |t: i64| {
        text.lines()
            .find(|l| l.trim_start().starts_with(&format!("{t} ")))
            .unwrap_or_else(|| panic!("no line for token {t}: {text}"))
            .to_string()
    };
    assert!(line(token_id).contains("last used 20"), "{text}");
    assert!(line(unused.token_id).contains("never used"), "{text}");

    // Within a minute of the last recorded use, a setup writes nothing.
    set_up_and_close(&stack, &token);
    assert_eq!(last_used(&stack, id, token_id), first_use);

    // Older than a minute: recorded again.
    let age =
        format!("UPDATE tokens SET last_used_at = '2026-01-01T00:00:00Z' WHERE id = {token_id}");
    sql(&stack, &age);
    let old = last_used(&stack, id, token_id);
    set_up_and_close(&stack, &token);
    let again = last_used(&stack, id, token_id);
    assert!(again.is_string() && again != old, "{old} -> {again}");

    // A failure to record the use does not fail the setup.
    sql(&stack, &age);
    sql(
        &stack,
        "CREATE FUNCTION refuse_last_use() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'last use refused by the test'; END $$; \
         CREATE TRIGGER refuse_last_use BEFORE UPDATE OF last_used_at ON tokens \
         FOR EACH ROW EXECUTE FUNCTION refuse_last_use()",
    );
    set_up_and_close(&stack, &token);
    assert_eq!(last_used(&stack, id, token_id), old);
    let log = std::fs::read_to_string(stack.control.log()).unwrap();
    assert!(
        log.contains("could not record the token's last use"),
        "no warning in the log"
    );
}

/// A number in a path that is none is refused in our words, naming the parameter and where
/// a good one is found (it was serde's `can not parse "abc" to a i64`).
#[test]
fn a_path_number_that_is_none_is_refused_naming_what_it_should_be() {
    let stack = start(None);
    for (method, path, expected) in [
        (
            "GET",
            "/v1/admin/accounts/abc/tokens",
            "\"abc\" in the path is not an account id: an account id is a whole number, such as 42; `account create` prints it",
        ),
        (
            "DELETE",
            "/v1/admin/tokens/1.5",
            "\"1.5\" in the path is not a token id: a token id is a whole number",
        ),
        (
            "POST",
            "/v1/admin/accounts/99999999999999999999/names",
            "\"99999999999999999999\" in the path is too large to be an account id (the largest is 9223372036854775807)",
        ),
    ] {
        let body = (method == "POST").then(|| json!({"name": "blog"}));
        let (status, v) = admin(&stack, method, path, body);
        assert_eq!(status, 400, "{method} {path}: {v}");
        let (code, message) = error_of(&v);
        assert_eq!(code, "bad_request", "{v}");
        assert!(message.starts_with(expected), "{method} {path}: {message}");
        assert!(!message.contains("parse") && !message.contains("i64"), "{message}");
    }
    let (status, v) = call(
        &stack,
        "POST",
        "/v1/tunnels/%E2%9C%93/close",
        &stack.control.edge_secret,
        Some(json!({"edge_id": EDGE, "reason": "client_closed"}).to_string()),
    );
    assert_eq!(status, 400, "{v}");
    assert!(
        error_of(&v)
            .1
            .starts_with("\"✓\" in the path is not a tunnel id"),
        "{v}"
    );
}

/// A query parameter with a value it does not take is refused in our words, naming the
/// parameter and what it must be (it was serde's `Query deserialize error: provided string
/// was not `true` or `false``), and nothing is written.
#[test]
fn a_query_parameter_with_a_bad_value_is_refused_naming_what_it_must_be() {
    let stack = start(None);
    let acct = stack
        .control
        .create_account(nearhop_wire::Plan::Pro)
        .unwrap();
    let id = acct.account_id;
    let (status, v) = admin(
        &stack,
        "POST",
        &format!("/v1/admin/accounts/{id}/names"),
        Some(json!({"name": "shop"})),
    );
    assert_eq!(status, 201, "{v}");
    for (query, expected) in [
        (
            "verified=maybe",
            "the query parameter verified is \"maybe\": it must be true or false (left out, it is false)",
        ),
        (
            "verified=1",
            "the query parameter verified is \"1\": it must be true or false",
        ),
        (
            "verified=",
            "the query parameter verified is \"\": it must be true or false",
        ),
        (
            "verified=true&verified=false",
            "the query gives verified more than once; give it once: it must be true or false",
        ),
        // A typo would otherwise add the domain unverified without a word.
        (
            "verify=true",
            "\"verify\" is not a query parameter this route takes (it takes: verified)",
        ),
    ] {
        let (status, v) = admin(
            &stack,
            "POST",
            &format!("/v1/admin/accounts/{id}/domains?{query}"),
            Some(json!({"domain": "shop.example", "target": "shop"})),
        );
        assert_eq!(status, 400, "?{query}: {v}");
        let (code, message) = error_of(&v);
        assert_eq!(code, "bad_request", "?{query}: {v}");
        assert!(message.starts_with(expected), "?{query}: {message}");
        for serde_wording in ["deserialize", "provided string", "invalid", "duplicate field"] {
            assert!(!message.contains(serde_wording), "?{query}: {message}");
        }
    }
    assert_eq!(sql(&stack, "SELECT count(*) FROM custom_domains"), "0");
    let (status, v) = admin(
        &stack,
        "POST",
        &format!("/v1/admin/accounts/{id}/domains?verified=true"),
        Some(json!({"domain": "shop.example", "target": "shop"})),
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["verified"], true, "{v}");
}

/// The region's DNS never confirms (its backend URL answers nothing), so every setup waits
/// the whole `lag_wait_ms` after writing its tunnel.
fn dns_never_confirms(spec: &mut nearhop_stack::ControlSpec) {
    spec.lag_wait_ms = 10_000;
    for region in &mut spec.regions {
        region.backend_url = Some("http://127.0.0.1:9".into());
    }
}

/// A takedown that lands while a setup of its name waits for DNS closes the written tunnel,
/// and the setup is refused after the wait, saying why: its edge, which learns of the tunnel
/// only from that answer, never serves a tunnel control has closed (a 201 had it serve one
/// until its next heartbeat; the takedown's close had found nothing at the edge).
#[test]
fn a_tunnel_taken_down_while_its_setup_waits_for_dns_is_refused_not_served() {
    let stack = std::sync::Arc::new(start(Some(dns_never_confirms)));
    let acct = stack
        .control
        .create_account(nearhop_wire::Plan::Pro)
        .unwrap();
    let setup = {
        let (stack, token) = (stack.clone(), acct.token.clone());
        std::thread::spawn(move || create(&stack, &tunnel(Some(&token), Some("phish"))))
    };
    let live = "SELECT id FROM tunnels WHERE label = 'phish' AND closed_at IS NULL";
    let tunnel_id = eventually("the setup wrote its tunnel and waits for DNS", || {
        let id = sql(&stack, live);
        anyhow::ensure!(!id.is_empty(), "not yet");
        Ok(id)
    });
    let (status, v) = admin(
        &stack,
        "POST",
        "/v1/admin/takedowns",
        Some(json!({"hostname": "phish.a.tunnel.test", "reason": "phishing"})),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["closed_tunnel"].to_string(), tunnel_id, "{v}");
    let (status, v) = setup.join().expect("the setup thread");
    assert_eq!(status, 403, "{v}");
    let (code, message) = error_of(&v);
    assert_eq!(code, "name_banned", "{v}");
    assert_eq!(
        message,
        "the name phish.a.tunnel.test was taken down while this tunnel was being set up; \
         connect again for another name"
    );
    assert_eq!(sql(&stack, live), "", "no live tunnel on the banned name");
}

/// With `--json`, a failure is JSON on stdout too (`{"error": {"message"}}`), for the
/// script that reads it; the sentence still goes to stderr. With the primary down, a
/// command says the database is unavailable, without r2d2's line per connection attempt.
#[test]
fn cli_failures_are_json_with_json_and_one_sentence_when_the_database_is_down() {
    let mut stack = start(None);
    let bin = nearhop_stack::control::bin_path("nearhop-control").unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(&bin)
            .arg("--config")
            .arg(&stack.control.config_path)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--json", "token", "list", "--account", "999999"]);
    assert!(!out.status.success());
    let said: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let message = said["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("no account 999999"), "{said}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no account 999999"),
        "the sentence on stderr too"
    );

    stack.pg.stop("us");
    let out = run(&["account", "create", "--name", "shop", "--plan", "pro"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the database is unavailable"), "{err}");
    assert!(!err.contains("ERROR"), "r2d2's lines are back: {err}");
}
