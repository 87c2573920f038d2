//! Two OpenSSH clients of one account race for one name through two edges in two regions:
//! exactly one gets the tunnel, the other gets a clear refusal, and the database holds one
//! live tunnel. Real Postgres primary and replicas, real control, real edges, real `ssh`.
//! And the operator's `name release` racing a setup of the name's owner (the test plays the
//! edge over HTTP against real control and Postgres): one goes first, never a tunnel left on
//! a released name. And a `takedown` racing a setup of the name it bans (the test plays the
//! edge the same way, and keeps the closes control tells it): the takedown sticks.

use nearhop_stack::edge::{SshArgs, SshClient};
use nearhop_stack::{Stack, StackOptions};
use nearhop_wire::Plan;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn live_tunnels(stack: &Stack, label: &str) -> String {
    let out = std::process::Command::new("psql")
        .arg(stack.pg.primary.endpoint.conninfo())
        .args(["-XAtqc"])
        .arg(format!(
            "SELECT count(*) FROM tunnels WHERE label = '{label}' AND closed_at IS NULL"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn two_edges_racing_for_one_name_exactly_one_wins() {
    let stack = Stack::start(StackOptions {
        with_edges: true,
        ..Default::default()
    })
    .expect("stack starts");
    let acct = stack.control.create_account(Plan::Pro).unwrap();
    let dir = stack.path().join("ssh");
    for round in 0..4 {
        let label = format!("race{round}");
        let args = SshArgs {
            user: Some(acct.token.clone()),
            forwards: vec![format!("{label}:0:localhost:9")],
            no_command: false,
            command: Vec::new(),
            options: Vec::new(),
        };
        let mut a = SshClient::start(
            &dir,
            &format!("a{round}"),
            stack.region("us").unwrap().ssh_addr(),
            &args,
        )
        .unwrap();
        let mut b = SshClient::start(
            &dir,
            &format!("b{round}"),
            stack.region("ap").unwrap().ssh_addr(),
            &args,
        )
        .unwrap();
        let ra = a.wait_for_url(Duration::from_secs(20));
        let rb = b.wait_for_url(Duration::from_secs(20));
        let winners = [ra.is_ok(), rb.is_ok()].iter().filter(|w| **w).count();
        assert_eq!(
            winners,
            1,
            "round {round}: exactly one client must get the name\nA: {}\nB: {}",
            a.output(),
            b.output()
        );
        let loser = if ra.is_ok() { &b } else { &a };
        let said = loser.output();
        assert!(
            said.contains("in use")
                || said.contains("taken by another tunnel")
                || said.contains("being set up by another connection"),
            "round {round}: the loser must be told the name is in use; it got:\n{said}"
        );
        assert_eq!(live_tunnels(&stack, &label), "1", "round {round}");
        a.stop();
        b.stop();
    }
}

/// The test plays the edge: control's calls to it (alive probes, closes) fail fast.
const EDGE: &str = "us-race";

/// One region, control and Postgres, with [`EDGE`] registered at `admin_url` (the test
/// plays that edge over HTTP).
fn stack_playing_the_edge(admin_url: &str) -> Stack {
    let stack = Stack::start(StackOptions {
        regions: vec![("us".into(), std::net::Ipv4Addr::LOCALHOST)],
        ..Default::default()
    })
    .expect("stack starts");
    stack.control.register_edge(EDGE, "us", admin_url).unwrap();
    stack
}

/// Runs `setup` and `other` at once, `other` let go a little later each `round` (0 to 4 ms,
/// a spread, not a bound), so that over the rounds it lands before, inside and after the
/// setup's transactions; their answers.
fn together<A: Send, B: Send>(
    round: u64,
    setup: impl FnOnce() -> A + Send,
    other: impl FnOnce() -> B + Send,
) -> (A, B) {
    let start = std::sync::Barrier::new(2);
    let delay = Duration::from_micros((round * 173) % 4000);
    std::thread::scope(|s| {
        let a = s.spawn(|| {
            start.wait();
            setup()
        });
        let b = s.spawn(|| {
            start.wait();
            std::thread::sleep(delay);
            other()
        });
        (a.join().unwrap(), b.join().unwrap())
    })
}

/// One HTTP call to control with `Authorization: Bearer <secret>`; the status and the answer.
/// No timeout: a stuck call is a hang the test runner reports, not a guess at a bound.
fn call(
    client: &reqwest::blocking::Client,
    url: &str,
    method: reqwest::Method,
    secret: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = client.request(method, url).bearer_auth(secret);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().expect("control answers");
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(serde_json::Value::Null))
}

fn sql(stack: &Stack, query: &str) -> String {
    nearhop_stack::postgres::psql(&stack.pg.primary.endpoint, query)
        .expect("psql")
        .trim()
        .to_string()
}

/// `name release` racing a tunnel setup of the name's owner, many rounds, half of them on a
/// name the setup asks for and half on the account's persistent name (asked for by no
/// name). Whatever the order, the outcome is one a serial order gives: either the setup
/// finished first and the release is refused (live tunnel), or the release freed the name
/// and the setup then treated it as any unowned name (claimed it again, or drew a new
/// persistent name). Never a live tunnel of the account on a name it no longer owns, which
/// is what a setup that had decided on its name before the release, and wrote its tunnel
/// after, left behind.
#[test]
fn a_name_release_racing_its_owners_setup_leaves_no_tunnel_on_an_unowned_name() {
    let stack = stack_playing_the_edge("http://127.0.0.1:9");
    let acct = stack.control.create_account(Plan::Pro).unwrap();
    let account_id = acct.account_id;
    let client = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .unwrap();
    let base = &stack.control.url;
    let admin = stack.control.admin_secret.clone();
    let edge = stack.control.edge_secret.clone();
    let (mut refused, mut released) = (0, 0);
    for round in 0..120u64 {
        let asked = round % 2 == 0;
        let label = if asked {
            let label = format!("race{round}");
            let (status, v) = call(
                &client,
                &format!("{base}/v1/admin/accounts/{account_id}/names"),
                reqwest::Method::POST,
                &admin,
                Some(serde_json::json!({"name": label})),
            );
            assert_eq!(status, 201, "round {round}: {v}");
            label
        } else {
            // The persistent name: drawn by a first setup, which is closed again.
            let (status, v) = call(
                &client,
                &format!("{base}/v1/tunnels"),
                reqwest::Method::POST,
                &edge,
                Some(setup_body(&acct.token, None)),
            );
            assert_eq!(status, 201, "round {round}: {v}");
            close(&client, base, &edge, &v);
            v["label"].as_str().unwrap().to_string()
        };
        let (setup, release) = together(
            round,
            || {
                let name = asked.then_some(label.as_str());
                call(
                    &client,
                    &format!("{base}/v1/tunnels"),
                    reqwest::Method::POST,
                    &edge,
                    Some(setup_body(&acct.token, name)),
                )
            },
            || {
                call(
                    &client,
                    &format!("{base}/v1/admin/names/{label}"),
                    reqwest::Method::DELETE,
                    &admin,
                    None,
                )
            },
        );
        let context = format!("round {round} ({label}): setup {setup:?}, release {release:?}");
        assert_eq!(setup.0, 201, "the setup is never refused: {context}");
        match release.0 {
            200 => {
                released += 1;
                assert_eq!(release.1["account_id"], account_id, "{context}");
                if !asked {
                    // Nothing asks for a released persistent name: it stays unowned, and the
                    // setup drew the account a new one.
                    assert_ne!(setup.1["label"].as_str(), Some(label.as_str()), "{context}");
                    let owners = sql(
                        &stack,
                        &format!("SELECT count(*) FROM names WHERE label = '{label}'"),
                    );
                    assert_eq!(owners, "0", "the released name is owned again: {context}");
                }
            }
            409 => {
                refused += 1;
                assert_eq!(release.1["error"]["code"], "conflict", "{context}");
                assert_eq!(
                    setup.1["label"].as_str(),
                    Some(label.as_str()),
                    "a refused release saw the setup's tunnel on its name: {context}"
                );
            }
            _ => panic!("the release is freed or refused: {context}"),
        }
        let stray = sql(
            &stack,
            &format!(
                "SELECT string_agg(t.label, ',') FROM tunnels t WHERE t.account_id = {account_id} \
                 AND t.closed_at IS NULL AND NOT EXISTS (SELECT 1 FROM names n WHERE \
                 n.zone = t.zone AND n.label = t.label AND n.account_id = t.account_id)"
            ),
        );
        assert_eq!(
            stray, "",
            "a live tunnel holds a name its account does not own: {context}"
        );
        // Back to nothing: the tunnel closed and the name released, for the next round.
        close(&client, base, &edge, &setup.1);
        let tunnel_label = setup.1["label"].as_str().unwrap_or_default();
        let (status, v) = call(
            &client,
            &format!("{base}/v1/admin/names/{tunnel_label}"),
            reqwest::Method::DELETE,
            &admin,
            None,
        );
        assert_eq!(status, 200, "round {round}: cleaning up: {v}");
    }
    let log = std::fs::read_to_string(stack.control.log()).unwrap_or_default();
    eprintln!(
        "{released} releases freed the name first, {refused} came after the setup; {} setups \
         found their name released between plot and write",
        log.matches("plotting again").count()
    );
    // The spread of `together` lands the release on both sides of the setup's write over
    // the rounds (81 / 39 in one run); all on one side would have tested no race.
    assert!(
        released > 0 && refused > 0,
        "every round fell one way ({released} freed first, {refused} after): the race was not \
         run"
    );
}

/// The edge's admin API played on loopback: every close is confirmed (200) and kept, as
/// `(tunnel_id, reason)`; anything else (an alive probe) is 404, a tunnel it does not know.
struct FakeEdge {
    url: String,
    closes: Arc<Mutex<Vec<(i64, String)>>>,
}

impl FakeEdge {
    fn start() -> FakeEdge {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let closes = Arc::new(Mutex::new(Vec::new()));
        let kept = closes.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || FakeEdge::answer(stream, &kept));
            }
        });
        FakeEdge { url, closes }
    }

    /// One request per connection (`Connection: close`).
    fn answer(stream: std::net::TcpStream, kept: &Mutex<Vec<(i64, String)>>) {
        let mut reader = BufReader::new(stream);
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).is_err() {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or_default();
        let close = path
            .strip_prefix("/v1/tunnels/")
            .and_then(|rest| rest.strip_suffix("/close"))
            .and_then(|id| id.parse::<i64>().ok());
        let status = match close {
            Some(id) => {
                let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let reason = body["reason"].as_str().unwrap_or_default().to_string();
                kept.lock().unwrap().push((id, reason));
                "200 OK"
            }
            None => "404 Not Found",
        };
        let answer =
            format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}");
        let _ = reader.get_mut().write_all(answer.as_bytes());
    }

    fn told_to_close(&self, tunnel_id: i64) -> Vec<String> {
        let closes = self.closes.lock().unwrap();
        closes
            .iter()
            .filter(|(id, _)| *id == tunnel_id)
            .map(|(_, reason)| reason.clone())
            .collect()
    }
}

/// A `takedown` racing a tunnel setup on the name it bans, many rounds, half of them on a name
/// the setup asks for and half on the account's persistent name. Whenever the takedown
/// answers success, it stuck: the name is banned, no live tunnel holds it and it has no
/// record; the setup either got its tunnel first and the takedown closed it (its edge told,
/// with the takedown's reason), or was refused with the ban's sentence. A setup that had
/// decided on its name before the takedown, and wrote its tunnel after, left a live tunnel on
/// a banned name. Each round then lifts the takedown and sets a tunnel up on the name again.
#[test]
fn a_takedown_racing_a_setup_of_its_name_sticks() {
    let edge_api = FakeEdge::start();
    let stack = stack_playing_the_edge(&edge_api.url);
    let acct = stack.control.create_account(Plan::Pro).unwrap();
    let client = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .unwrap();
    let base = &stack.control.url;
    let admin = stack.control.admin_secret.clone();
    let edge = stack.control.edge_secret.clone();
    let setup = |name: Option<&str>| {
        call(
            &client,
            &format!("{base}/v1/tunnels"),
            reqwest::Method::POST,
            &edge,
            Some(setup_body(&acct.token, name)),
        )
    };
    let (mut closed, mut refused, mut waited_out) = (0, 0, 0);
    for round in 0..120u64 {
        let asked = round % 2 == 0;
        let label = if asked {
            format!("down{round}")
        } else {
            // The persistent name: drawn by a first setup, which is closed again.
            let (status, v) = setup(None);
            assert_eq!(status, 201, "round {round}: {v}");
            close(&client, base, &edge, &v);
            v["label"].as_str().unwrap().to_string()
        };
        let zone = nearhop_stack::control::PRO_ZONE;
        let hostname = format!("{label}.{zone}");
        let name = asked.then_some(label.as_str());
        let (set_up, takedown) = together(
            round,
            || setup(name),
            || {
                call(
                    &client,
                    &format!("{base}/v1/admin/takedowns"),
                    reqwest::Method::POST,
                    &admin,
                    Some(serde_json::json!({"hostname": hostname, "reason": "phishing"})),
                )
            },
        );
        let context =
            format!("round {round} ({hostname}): setup {set_up:?}, takedown {takedown:?}");
        assert_eq!(takedown.0, 200, "the takedown is never refused: {context}");
        let count = |query: String| sql(&stack, &query);
        assert_eq!(
            count(format!(
                "SELECT count(*) FROM banned_names WHERE zone = '{zone}' AND label = '{label}'"
            )),
            "1",
            "the name is banned: {context}"
        );
        assert_eq!(
            count(format!(
                "SELECT count(*) FROM tunnels WHERE zone = '{zone}' AND label = '{label}' \
                 AND closed_at IS NULL"
            )),
            "0",
            "a live tunnel holds the banned name: {context}"
        );
        assert_eq!(
            count(format!(
                "SELECT count(*) FROM records WHERE name = '{hostname}'"
            )),
            "0",
            "the banned name has a record: {context}"
        );
        match set_up.0 {
            201 => {
                closed += 1;
                let id = set_up.1["tunnel_id"].as_i64().unwrap();
                assert_eq!(
                    set_up.1["label"].as_str(),
                    Some(label.as_str()),
                    "{context}"
                );
                assert_eq!(
                    takedown.1["closed_tunnel"].as_i64(),
                    Some(id),
                    "the takedown closed the setup's tunnel: {context}"
                );
                assert_eq!(
                    count(format!("SELECT close_reason FROM tunnels WHERE id = {id}")),
                    "takedown",
                    "{context}"
                );
                assert_eq!(
                    edge_api.told_to_close(id),
                    vec!["takedown".to_string()],
                    "the edge was told once, before the takedown answered: {context}"
                );
            }
            _ => {
                refused += 1;
                assert_eq!(set_up.1["error"]["code"], "name_banned", "{context}");
                let message = set_up.1["error"]["message"].as_str().unwrap_or_default();
                assert!(
                    message.starts_with(&format!("the name {hostname} was taken down")),
                    "the setup is told the name was taken down: {context}"
                );
                // Either the write saw the ban, or the takedown closed the written tunnel
                // while the setup waited for DNS, and the setup was refused after the wait.
                if let Some(id) = takedown.1["closed_tunnel"].as_i64() {
                    assert_eq!(
                        count(format!("SELECT close_reason FROM tunnels WHERE id = {id}")),
                        "takedown",
                        "{context}"
                    );
                    waited_out += 1;
                }
            }
        }
        // The takedown lifted, the name works again; then back to nothing for the next round.
        let (status, v) = call(
            &client,
            &format!("{base}/v1/admin/takedowns/{hostname}"),
            reqwest::Method::DELETE,
            &admin,
            None,
        );
        assert_eq!(
            (status, v["reason"].as_str()),
            (200, Some("phishing")),
            "round {round}: {v}"
        );
        let (status, v) = setup(name);
        assert_eq!(
            status, 201,
            "round {round}: the lifted name works again: {v}"
        );
        assert_eq!(
            v["label"].as_str(),
            Some(label.as_str()),
            "round {round}: {v}"
        );
        close(&client, base, &edge, &v);
        let (status, v) = call(
            &client,
            &format!("{base}/v1/admin/names/{label}"),
            reqwest::Method::DELETE,
            &admin,
            None,
        );
        assert_eq!(status, 200, "round {round}: cleaning up: {v}");
    }
    eprintln!(
        "{closed} setups came first and were closed by the takedown, {refused} were refused \
         ({waited_out} of them after the takedown closed their tunnel during the DNS wait)"
    );
    // Both orders over the rounds (42 / 78 in one run); all one way would have tested no
    // race.
    assert!(
        closed > 0 && refused > 0,
        "every round fell one way ({closed} closed, {refused} refused): the race was not run"
    );
}

fn setup_body(token: &str, name: Option<&str>) -> serde_json::Value {
    serde_json::to_value(nearhop_wire::CreateTunnelRequest {
        edge_id: EDGE.into(),
        token: Some(token.into()),
        requested_name: name.map(str::to_string),
        kind: nearhop_wire::TunnelKind::Http,
        force: false,
        client_addr: "127.0.0.9:50000".into(),
    })
    .unwrap()
}

fn close(client: &reqwest::blocking::Client, base: &str, edge: &str, created: &serde_json::Value) {
    let id = created["tunnel_id"].as_i64().expect("a tunnel id");
    let (status, v) = call(
        client,
        &format!("{base}/v1/tunnels/{id}/close"),
        reqwest::Method::POST,
        edge,
        Some(serde_json::json!({"edge_id": EDGE, "reason": "client_closed"})),
    );
    assert_eq!(status, 200, "closing {id}: {v}");
}
