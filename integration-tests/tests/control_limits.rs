//! Control's limits and name rules under pressure, against a real Postgres primary with two
//! streaming replicas: parallel setups of one account or one address cannot pass a limit
//! together, anonymous tunnels are capped per source prefix, odd requested names and the
//! service's own names are refused with a sentence. The test plays the edge over HTTP.

use nearhop_stack::metrics::metric;
use nearhop_stack::{Stack, StackOptions};
use nearhop_wire::{
    ApiError, CreateTunnelRequest, CreateTunnelResponse, ErrorCode, Plan, RegisterEdgeRequest,
    TunnelKind,
};
use reqwest::blocking::Client;
use std::sync::{Arc, Barrier};
use std::time::Duration;

const EDGE: &str = "us-limits";

fn start(tweak: Option<fn(&mut nearhop_stack::ControlSpec)>) -> Stack {
    let stack = Stack::start(StackOptions {
        control_tweak: tweak,
        ..Default::default()
    })
    .expect("stack starts");
    let r = http()
        .post(format!("{}/v1/edges/register", stack.control.url))
        .bearer_auth(&stack.control.edge_secret)
        .json(&RegisterEdgeRequest {
            edge_id: EDGE.into(),
            region: "us".into(),
            // Nothing listens there: the edge is never called in these tests.
            admin_url: "http://127.0.0.1:9".into(),
            ..Default::default()
        })
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().unwrap_or_default());
    stack
}

fn http() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn request(token: Option<&str>, name: Option<&str>, client_addr: &str) -> CreateTunnelRequest {
    CreateTunnelRequest {
        edge_id: EDGE.into(),
        token: token.map(str::to_string),
        requested_name: name.map(str::to_string),
        kind: TunnelKind::Http,
        force: false,
        client_addr: client_addr.into(),
    }
}

fn create(
    base: &str,
    secret: &str,
    req: &CreateTunnelRequest,
) -> Result<CreateTunnelResponse, (u16, ApiError)> {
    let r = http()
        .post(format!("{base}/v1/tunnels"))
        .bearer_auth(secret)
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

/// Sends every request at once (threads released together) and returns the answers.
fn all_at_once(
    stack: &Stack,
    reqs: Vec<CreateTunnelRequest>,
) -> Vec<Result<CreateTunnelResponse, (u16, ApiError)>> {
    let barrier = Arc::new(Barrier::new(reqs.len()));
    let handles: Vec<_> = reqs
        .into_iter()
        .map(|req| {
            let (base, secret) = (stack.control.url.clone(), stack.control.edge_secret.clone());
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                create(&base, &secret, &req)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn live_count(stack: &Stack, filter: &str) -> i64 {
    nearhop_stack::postgres::psql(
        &stack.pg.primary.endpoint,
        &format!("SELECT count(*) FROM tunnels WHERE closed_at IS NULL AND {filter}"),
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap()
}

fn refusals(stack: &Stack, limit: &str) -> f64 {
    let text = stack.control.metrics().unwrap();
    metric(
        &text,
        "nearhop_control_limit_refusals_total",
        &[("limit", limit)],
    )
    .unwrap_or(0.0)
}

#[test]
fn sixteen_parallel_setups_of_a_free_account_leave_at_most_its_limit_live() {
    let stack = start(None);
    let acct = stack.control.create_account(Plan::Free).unwrap();
    // The local stack's free plan allows 3 live tunnels per account.
    let answers = all_at_once(
        &stack,
        (0..16)
            .map(|i| request(Some(&acct.token), None, &format!("127.0.0.{}", 10 + i)))
            .collect(),
    );
    let ok = answers.iter().filter(|a| a.is_ok()).count();
    assert_eq!(ok, 3, "exactly the plan's 3 go live: {answers:?}");
    for a in answers.iter().filter_map(|a| a.as_ref().err()) {
        assert_eq!(a.0, 403, "{a:?}");
        assert_eq!(a.1.error.code, ErrorCode::PlanLimit, "{a:?}");
        assert!(
            a.1.error.message.contains("the most its plan allows"),
            "{a:?}"
        );
    }
    assert_eq!(
        live_count(&stack, &format!("account_id = {}", acct.account_id)),
        3
    );
    assert_eq!(refusals(&stack, "live_tunnels"), 13.0);
}

#[test]
fn parallel_name_claims_of_a_pro_account_stop_at_its_name_limit() {
    // The local stack gives a pro account 50 names; 60 parallel claims of new names.
    let stack = start(None);
    let acct = stack.control.create_account(Plan::Pro).unwrap();
    let answers = all_at_once(
        &stack,
        (0..60)
            .map(|i| request(Some(&acct.token), Some(&format!("claim{i}")), "127.0.0.9"))
            .collect(),
    );
    let owned: i64 = nearhop_stack::postgres::psql(
        &stack.pg.primary.endpoint,
        &format!(
            "SELECT count(*) FROM names WHERE account_id = {}",
            acct.account_id
        ),
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    assert_eq!(owned, 50, "the account must own exactly its 50 names");
    assert_eq!(answers.iter().filter(|a| a.is_ok()).count(), 50);
    for a in answers.iter().filter_map(|a| a.as_ref().err()) {
        assert!(
            a.1.error
                .message
                .contains("owns 50 names and its plan allows 50"),
            "{a:?}"
        );
    }
    assert_eq!(refusals(&stack, "names"), 10.0);
}

#[test]
fn anonymous_tunnels_are_capped_per_address_and_per_ipv6_64() {
    let stack = start(Some(|spec| spec.anonymous_per_source = 2));
    let (base, secret) = (&stack.control.url, &stack.control.edge_secret);
    // Sixteen at once from one address: two go live.
    let answers = all_at_once(
        &stack,
        (0..16)
            .map(|i| request(None, None, &format!("127.0.0.9:{}", 40000 + i)))
            .collect(),
    );
    assert_eq!(answers.iter().filter(|a| a.is_ok()).count(), 2);
    let refused = answers.iter().find_map(|a| a.as_ref().err()).unwrap();
    assert_eq!(refused.0, 403);
    assert!(
        refused
            .1
            .error
            .message
            .contains("127.0.0.9/32 already has 2 live tunnels without a token")
            && refused
                .1
                .error
                .message
                .contains("connect with an account's token"),
        "{refused:?}"
    );
    assert_eq!(refusals(&stack, "anonymous_per_source"), 14.0);
    // Another address has its own share.
    create(base, secret, &request(None, None, "127.0.0.10")).unwrap();
    // Addresses of one IPv6 /64 share one.
    create(base, secret, &request(None, None, "[2001:db8:1:2::1]:5000")).unwrap();
    create(base, secret, &request(None, None, "2001:db8:1:2:ffff::7")).unwrap();
    let e = create(base, secret, &request(None, None, "2001:db8:1:2:abcd::9")).unwrap_err();
    assert!(e.1.error.message.contains("2001:db8:1:2::/64"), "{e:?}");
    create(base, secret, &request(None, None, "2001:db8:1:3::1")).unwrap();
    // An account's tunnels do not count against the address's anonymous share.
    let acct = stack.control.create_account(Plan::Free).unwrap();
    create(base, secret, &request(Some(&acct.token), None, "127.0.0.9")).unwrap();
    assert_eq!(
        live_count(
            &stack,
            "account_id IS NULL AND source_prefix = '127.0.0.9/32'"
        ),
        2
    );
}

#[test]
fn odd_requested_names_are_refused_with_the_allowed_form() {
    let stack = start(None);
    let (base, secret) = (&stack.control.url, &stack.control.edge_secret);
    let acct = stack.control.create_account(Plan::Pro).unwrap();
    for odd in [
        "a.b",
        "host.evil.example",
        "x.y.a.tunnel.test",
        "../x",
        "a.tunnel.test",
    ] {
        let e = create(
            base,
            secret,
            &request(Some(&acct.token), Some(odd), "127.0.0.9"),
        )
        .unwrap_err();
        assert_eq!(e.0, 400, "{odd}: {e:?}");
        assert_eq!(e.1.error.code, ErrorCode::InvalidName, "{odd}: {e:?}");
        assert!(
            e.1.error.message.contains("is not allowed")
                && e.1.error.message.contains("-R myblog:0:localhost:8000"),
            "{odd}: {e:?}"
        );
    }
    // The URL pasted whole still asks for its label.
    let t = create(
        base,
        secret,
        &request(
            Some(&acct.token),
            Some("Pasted7.A.Tunnel.Test."),
            "127.0.0.9",
        ),
    )
    .unwrap();
    assert_eq!(t.hostname, "pasted7.a.tunnel.test");
}

#[test]
fn takedown_refuses_the_services_own_names_and_keeps_their_records() {
    let stack = start(None);
    let admin = |hostname: &str| {
        let r = http()
            .post(format!("{}/v1/admin/takedowns", stack.control.url))
            .bearer_auth(&stack.control.admin_secret)
            .json(&serde_json::json!({ "hostname": hostname, "reason": "test" }))
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let records = |name: &str| {
        nearhop_stack::postgres::psql(
            &stack.pg.primary.endpoint,
            &format!("SELECT count(*) FROM records WHERE name = '{name}'"),
        )
        .unwrap()
        .trim()
        .to_string()
    };
    assert_ne!(
        records("us.a.tunnel.test"),
        "0",
        "the region's edge host is seeded"
    );
    for name in [
        "us.a.tunnel.test",
        "eu.free.tunnel.test",
        "ns1.a.tunnel.test",
        "_acme-challenge.a.tunnel.test",
        "www.free.tunnel.test",
        "connect.a.tunnel.test",
        "hostmaster.a.tunnel.test",
        "a.tunnel.test",
    ] {
        let before = records(name);
        let (status, body) = admin(name);
        assert_eq!(status, 400, "{name}: {body}");
        assert!(
            body.contains("service's own names") || body.contains("not a tunnel name"),
            "{name}: {body}"
        );
        assert_eq!(records(name), before, "{name}: records untouched");
    }
    let banned = nearhop_stack::postgres::psql(
        &stack.pg.primary.endpoint,
        "SELECT count(*) FROM banned_names",
    )
    .unwrap();
    assert_eq!(banned.trim(), "0");
    // A tunnel name is still taken down.
    let acct = stack.control.create_account(Plan::Pro).unwrap();
    let t = create(
        &stack.control.url,
        &stack.control.edge_secret,
        &request(Some(&acct.token), Some("phish"), "127.0.0.9"),
    )
    .unwrap();
    let (status, body) = admin(&t.hostname);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_heartbeat_of_100000_ids_renews_the_live_and_lists_every_other() {
    let stack = start(None);
    let (base, secret) = (&stack.control.url, &stack.control.edge_secret);
    let live: Vec<i64> = (0..3)
        .map(|i| {
            create(
                base,
                secret,
                &request(None, None, &format!("127.0.0.{}", 20 + i)),
            )
            .unwrap()
            .tunnel_id
        })
        .collect();
    // Ids control never gave out, around the live ones, in one heartbeat of 100,000.
    let mut ids: Vec<i64> = (1_000_000..1_099_997).collect();
    ids.splice(50_000..50_000, live.iter().copied());
    assert_eq!(ids.len(), 100_000);
    // Leases about to lapse (setup gave them the whole lease): only the heartbeat can
    // extend them past it.
    let live_list = live
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    nearhop_stack::postgres::psql(
        &stack.pg.primary.endpoint,
        &format!(
            "UPDATE tunnels SET lease_expires_at = now() + interval '2 seconds' \
             WHERE id IN ({live_list})"
        ),
    )
    .unwrap();
    assert_eq!(
        live_count(&stack, "lease_expires_at > now() + interval '20 seconds'"),
        0
    );
    let r = http()
        .post(format!("{base}/v1/edges/{EDGE}/heartbeat"))
        .bearer_auth(secret)
        .json(&serde_json::json!({ "tunnel_ids": ids }))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let hb: nearhop_wire::EdgeHeartbeatResponse = r.json().unwrap();
    assert_eq!(hb.close.len(), 99_997);
    assert!(hb.close.iter().all(|c| !live.contains(&c.tunnel_id)));
    assert_eq!(hb.close[0].tunnel_id, 1_000_000, "in the order listed");
    assert_eq!(
        live_count(&stack, "lease_expires_at > now() + interval '20 seconds'"),
        3
    );
}
