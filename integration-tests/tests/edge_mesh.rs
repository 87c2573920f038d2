//! The edge mesh with real processes (Postgres, control, an edge per region, the stock
//! OpenSSH client, curl): a tunnel held by the eu edge is served at the us and ap edges too,
//! for plain HTTP with keep-alive, HTTPS, upgrades, long downloads and `tls` passthrough,
//! with the tunnel's rules applied to the real visitor; with control and the primary down;
//! and edges trust each other only as themselves.

use nearhop_stack::metrics::metric_sum;
use nearhop_stack::postgres::psql;
use nearhop_stack::prelude::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// A visitor's own address, distinct from every edge's, so the tunnel's rules and the
/// forwarding headers can be seen to act on it.
const VISITOR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);

/// The tunnel's URL as served on the HTTP port of the edge at `edge` (each edge of the test
/// stack has ports of its own).
fn url_at(url: &str, edge: SocketAddr) -> String {
    format!("http://{}:{}", host_of(url), edge.port())
}

/// A blocking client from `source` that sends requests for the URL's host to `edge` (use
/// it with [`url_at`]).
fn visitor_from(url: &str, edge: SocketAddr, source: Ipv4Addr) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .resolve(&host_of(url), edge)
        .local_address(std::net::IpAddr::V4(source))
        .timeout(PATIENCE)
        .build()
        .expect("client")
}

/// `ssh` options for dialling an edge's mesh listener as a peer would: no prompts, no
/// known-hosts file, only the key given with `-i`.
const MESH_SSH_OPTIONS: [&str; 8] = [
    "-o",
    "BatchMode=yes",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "IdentitiesOnly=yes",
];

fn edge_metrics(stack: &Stack, region: usize) -> String {
    let e = &stack.edges[region];
    reqwest::blocking::get(format!("http://{}:{}/metrics", e.spec.ip, e.spec.admin))
        .and_then(|r| r.text())
        .expect("edge metrics")
}

/// Waits until the edge of `region` serves `url` (it learned the holder from its peer).
fn wait_relayed(stack: &Stack, region: usize, url: &str) {
    let addr = stack.regions[region].http_addr();
    eventually(
        &format!("{} relays {url}", stack.regions[region].name),
        || {
            let (status, body) = http_get(addr, &host_of(url), "/ready")?;
            anyhow::ensure!(status == 200, "{status} {body}");
            Ok(())
        },
    );
}

/// A pro tunnel to `local` through eu, once the edges of `relayed_at` serve it too.
fn eu_tunnel(
    stack: &Stack,
    local: &LocalService,
    relayed_at: &[usize],
) -> (SshClient, String, String) {
    let token = stack.pro_token();
    let (client, url) = stack
        .http_tunnel(EU, "eu-client", Some(&token), local.port)
        .expect("tunnel through eu");
    for region in relayed_at {
        wait_relayed(stack, *region, &url);
    }
    (client, url, token)
}

#[test]
fn a_tunnel_on_one_edge_is_served_at_every_other_edge() {
    let stack = mesh_stack();
    let local = LocalService::start("local");
    let (_client, url, _token) = eu_tunnel(&stack, &local, &[US, AP]);
    let host = host_of(&url);

    // Keep-alive: several requests on one visitor connection, one relay channel for them.
    let before = metric_sum(
        &edge_metrics(&stack, US),
        "nearhop_edge_relay_connections_total",
        &[("peer", "eu-1"), ("direction", "out")],
    );
    let us_addr = stack.regions[US].http_addr();
    let us = visitor_from(&url, us_addr, VISITOR);
    let us_url = url_at(&url, us_addr);
    for i in 0..5 {
        let body = us
            .get(format!("{us_url}/keepalive/{i}"))
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.text())
            .expect("relayed request");
        assert!(
            body.starts_with(&format!("hello from local /keepalive/{i}")),
            "{body}"
        );
        assert!(
            body.contains(&format!("xff={VISITOR}")),
            "the holder sees the real visitor, not the relaying edge: {body}"
        );
    }
    let after = metric_sum(
        &edge_metrics(&stack, US),
        "nearhop_edge_relay_connections_total",
        &[("peer", "eu-1"), ("direction", "out")],
    );
    assert_eq!(
        after - before,
        1.0,
        "five requests, one connection, one relay channel"
    );
    let inbound = metric_sum(
        &edge_metrics(&stack, EU),
        "nearhop_edge_relay_connections_total",
        &[("peer", "us-1"), ("direction", "in")],
    );
    assert!(inbound >= 1.0, "eu counts what us relayed to it");
    // The bytes both ways, by peer, and what us knows of eu's holdings.
    let us_metrics = edge_metrics(&stack, US);
    let received = metric_sum(
        &us_metrics,
        "nearhop_edge_relay_bytes_total",
        &[
            ("peer", "eu-1"),
            ("relay", "out"),
            ("direction", "received"),
        ],
    );
    let sent = metric_sum(
        &us_metrics,
        "nearhop_edge_relay_bytes_total",
        &[("peer", "eu-1"), ("relay", "out"), ("direction", "sent")],
    );
    assert!(
        received > 5.0 * "hello from local /keepalive/0".len() as f64 && sent > 0.0,
        "relayed bytes counted: received {received}, sent {sent}"
    );
    // eu counts the same bytes as those of connections relayed to it, the other way round.
    let answered = metric_sum(
        &edge_metrics(&stack, EU),
        "nearhop_edge_relay_bytes_total",
        &[("peer", "us-1"), ("relay", "in"), ("direction", "sent")],
    );
    assert!(
        answered >= received,
        "eu's answers to us's visitors: {answered} bytes sent, us received {received}"
    );
    let names = metric_sum(
        &us_metrics,
        "nearhop_edge_mesh_holder_names",
        &[("peer", "eu-1")],
    );
    assert!(names >= 1.0, "us counts the names eu holds: {names}");
    assert!(
        us_metrics
            .lines()
            .any(|l| l.starts_with("nearhop_edge_mesh_holder_age_seconds{peer=\"eu-1\"}")),
        "the age of eu's feed is shown"
    );

    // HTTPS: terminated by the edge the visitor reached, then relayed.
    let ca = stack.path().join("tls/zone-cert.pem");
    let ap = &stack.edges[AP].spec;
    let r = curl_tls(&host, ap.ip, ap.tls, "/over-tls", Some(&ca));
    assert_eq!(r.code, 0, "curl over HTTPS via ap: {}", r.stderr);
    assert_eq!(r.status, "200", "{}", r.body);
    assert!(r.body.contains("hello from local /over-tls") && r.body.contains("xfp=https"));

    // HTTPS/1.1 keep-alive with large answers: each reaches the visitor whole, and the next
    // request follows on the same connection and the same relay channel.
    let channels = || {
        metric_sum(
            &edge_metrics(&stack, AP),
            "nearhop_edge_relay_connections_total",
            &[("peer", "eu-1"), ("direction", "out")],
        )
    };
    let before = channels();
    let size = 4 * 1024 * 1024;
    let blob_url = format!("https://{host}:{}/blob/{size}", ap.tls);
    let saved: Vec<_> = (0..3)
        .map(|i| stack.path().join(format!("tls-blob-{i}")))
        .collect();
    let mut curl = std::process::Command::new("curl");
    curl.args(["-sS", "--max-time", "120", "--cacert"])
        .arg(&ca)
        .arg("--resolve")
        .arg(format!("{host}:{}:{}", ap.tls, ap.ip))
        .arg("--http1.1")
        .args(["-w", "%{http_code} %{num_connects}\n"]);
    for path in &saved {
        curl.arg("-o").arg(path).arg(&blob_url);
    }
    let out = curl.output().expect("curl runs");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        report.lines().collect::<Vec<_>>(),
        ["200 1", "200 0", "200 0"],
        "three answers on one connection"
    );
    for path in &saved {
        assert_blob(&std::fs::read(path).expect("download"), size);
    }
    assert_eq!(
        channels() - before,
        1.0,
        "three large HTTPS answers, one visitor connection, one relay channel"
    );

    // A name no edge holds: the page, at once, from the edge itself.
    let (status, body) =
        http_get(stack.regions[US].http_addr(), "nobody.a.tunnel.test", "/").unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("No tunnel here"), "{body}");

    // Two Host headers after a relayed request on a kept-alive connection (its requests are
    // passed on as bytes): the relaying edge answers 400, never the first name's tunnel.
    let mut conn = std::net::TcpStream::connect(us_addr).unwrap();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(conn, "GET /first HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let (status, body) = read_response(&mut conn);
    assert_eq!(status, 200, "{body}");
    write!(
        conn,
        "GET /twice HTTP/1.1\r\nHost: {host}\r\nHost: nobody.a.tunnel.test\r\n\r\n"
    )
    .unwrap();
    let (status, body) = read_response(&mut conn);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("more than one Host header"), "{body}");
}

/// Reads one HTTP/1.1 response with a `Content-Length` from `s`: its status and body.
fn read_response(s: &mut std::net::TcpStream) -> (u16, String) {
    let (head, body) = read_answer(s);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    (status, body)
}

/// Reads one HTTP/1.1 response with a `Content-Length` from `s`: its head and body.
fn read_answer(s: &mut std::net::TcpStream) -> (String, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("a response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .expect("a Content-Length");
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).expect("the body");
    (head, String::from_utf8_lossy(&body).to_string())
}

/// One visitor connection to us asks for a raw (`x:noreverseproxy`) tunnel, then for
/// another tunnel, both held by eu. eu hands a relayed connection whole to the raw tunnel
/// its first request names, so the second request must not travel on that relay channel:
/// it would reach the raw tunnel's owner, with the other tunnel's visitor's headers.
#[test]
fn one_visitor_connection_to_two_relayed_tunnels_reaches_each_tunnel() {
    let stack = mesh_stack();
    let raw = LocalService::start("raw-owner");
    let victim = LocalService::start("victim");
    let token = stack.pro_token();
    let mut args = SshArgs::http_tunnel(Some(&token), raw.port);
    args.command = vec!["x:noreverseproxy".into()];
    let mut raw_client = stack.ssh_to(EU, "raw", &args);
    let raw_url = raw_client.wait_for_url(PATIENCE).unwrap();
    let (_victim_client, victim_url, _) = eu_tunnel(&stack, &victim, &[US]);
    wait_relayed(&stack, US, &raw_url);

    let mut conn = std::net::TcpStream::connect(stack.regions[US].http_addr()).unwrap();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    let ask = |conn: &mut std::net::TcpStream, host: &str, path: &str| {
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nCookie: session=secret\r\n\r\n"
        )
        .unwrap();
        read_response(conn)
    };
    let (status, body) = ask(&mut conn, &host_of(&raw_url), "/first");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("hello from raw-owner /first"), "{body}");
    let (status, body) = ask(&mut conn, &host_of(&victim_url), "/second");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("hello from victim /second"),
        "the second tunnel's request went elsewhere: {body}"
    );
    // And back: each name keeps its own way through the relay.
    let (_, body) = ask(&mut conn, &host_of(&raw_url), "/third");
    assert!(body.starts_with("hello from raw-owner /third"), "{body}");
}

/// The relaying edge passes a visitor's requests on as bytes, finding where each ends from
/// its head: pipelined requests with chunked and sized bodies, sent in one write, must reach
/// the holder whole and in order, and a request for another relayed name in the middle
/// must get its own answer, after the answers already owed, and not be interleaved with them.
#[test]
fn pipelined_requests_with_bodies_are_relayed_whole_and_in_order() {
    let stack = mesh_stack();
    let first = LocalService::start("first");
    let second = LocalService::start("second");
    let (_first_client, first_url, _) = eu_tunnel(&stack, &first, &[US]);
    let (_second_client, second_url, _) = eu_tunnel(&stack, &second, &[US]);
    let (a, b) = (host_of(&first_url), host_of(&second_url));
    let requests_before = metric_sum(
        &edge_metrics(&stack, US),
        "nearhop_edge_relay_requests_total",
        &[("peer", "eu-1")],
    );
    let channels_before = metric_sum(
        &edge_metrics(&stack, US),
        "nearhop_edge_relay_connections_total",
        &[("peer", "eu-1"), ("direction", "out")],
    );
    let big = "z".repeat(100_000);
    let pipelined = format!(
        "POST /echo HTTP/1.1\r\nHost: {a}\r\nTransfer-Encoding: chunked\r\n\r\n\
         6\r\nhello \r\n5;ext=1\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n\
         POST /echo HTTP/1.1\r\nHost: {a}\r\nContent-Length: {}\r\n\r\n{big}\
         GET /third HTTP/1.1\r\nHost: {a}\r\n\r\n\
         GET /fourth HTTP/1.1\r\nHost: {b}\r\n\r\n\
         GET /fifth HTTP/1.1\r\nHost: {a}\r\n\r\n",
        big.len()
    );
    let mut conn = std::net::TcpStream::connect(stack.regions[US].http_addr()).unwrap();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    conn.write_all(pipelined.as_bytes()).unwrap();
    let answers: Vec<(u16, String)> = (0..5).map(|_| read_response(&mut conn)).collect();
    assert_eq!(answers[0], (200, "hello world".to_string()));
    assert_eq!(answers[1].0, 200);
    assert!(answers[1].1 == big, "the sized body came back whole");
    assert!(
        answers[2].1.starts_with("hello from first /third"),
        "{}",
        answers[2].1
    );
    assert!(
        answers[3].1.starts_with("hello from second /fourth"),
        "{}",
        answers[3].1
    );
    assert!(
        answers[4].1.starts_with("hello from first /fifth"),
        "{}",
        answers[4].1
    );
    let requests = metric_sum(
        &edge_metrics(&stack, US),
        "nearhop_edge_relay_requests_total",
        &[("peer", "eu-1")],
    ) - requests_before;
    assert_eq!(
        requests, 5.0,
        "every request counted once at the relaying edge"
    );
    let channels = metric_sum(
        &edge_metrics(&stack, US),
        "nearhop_edge_relay_connections_total",
        &[("peer", "eu-1"), ("direction", "out")],
    ) - channels_before;
    assert_eq!(
        channels, 3.0,
        "one relay channel per run of requests for one name"
    );

    // A malformed chunked body gets the holder's 400 page, as at the holder itself, then
    // the connection ends; no other visitor is hurt.
    let mut bad = std::net::TcpStream::connect(stack.regions[US].http_addr()).unwrap();
    bad.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        bad,
        "POST /echo HTTP/1.1\r\nHost: {a}\r\nTransfer-Encoding: chunked\r\n\r\nnot-hex\r\n"
    )
    .unwrap();
    let mut rest = Vec::new();
    let _ = bad.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.starts_with("HTTP/1.1 400") && rest.contains("malformed"),
        "the holder's page for a malformed body: {rest:?}"
    );
    let (status, body) = http_get(stack.regions[US].http_addr(), &a, "/after").unwrap();
    assert_eq!(status, 200, "{body}");
}

/// A raw service that answers every connection's first request with `answer` and closes
/// the connection.
fn one_answer_service(answer: &'static [u8]) -> u16 {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read_exact(&mut byte).is_ok() {
                head.push(byte[0]);
            }
            let _ = conn.write_all(answer);
        }
    });
    port
}

/// A raw service whose answers end when it closes the connection, the way HTTP/1.0 servers
/// answer.
fn until_close_service() -> u16 {
    one_answer_service(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close")
}

/// A holder that ends the relay channel between answers (here a raw service closing its
/// connection after a framed answer, without saying so) does not end the visitor's
/// connection: the relaying edge takes it over (as its HTTP proxy), and the next request on
/// it is answered.
#[test]
fn a_holder_leaving_between_answers_does_not_end_the_visitors_connection() {
    let stack = mesh_stack();
    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nonce";
    let token = stack.pro_token();
    let mut args = SshArgs::http_tunnel(Some(&token), one_answer_service(answer));
    args.command = vec!["x:noreverseproxy".into()];
    let mut client = stack.ssh_to(EU, "closer", &args);
    let url = client.wait_for_url(PATIENCE).unwrap();
    let host = host_of(&url);
    wait_relayed(&stack, US, &url);
    let active = || {
        metric_sum(
            &edge_metrics(&stack, EU),
            "nearhop_edge_visitor_connections_active",
            &[],
        )
    };
    let idle = active();
    let mut conn = std::net::TcpStream::connect(stack.regions[US].http_addr()).unwrap();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    for i in 0..3 {
        write!(conn, "GET /{i} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
        let (status, body) = read_response(&mut conn);
        assert_eq!((status, body.as_str()), (200, "once"), "answer {i}");
        // The holder let go of the relayed connection (the service closed it).
        eventually("eu closes the relayed connection", || {
            anyhow::ensure!(active() <= idle, "still open at eu");
            Ok(())
        });
    }
}

/// Local services that answer in HTTP/1.0 (as Python's `http.server` does) or close their
/// connection after every answer (as `php -S` does): visitors get the edge's own HTTP/1.1,
/// none of the service's connection fields, and keep their connection for the next
/// request, directly and through the relay; a relayed visitor that leaves is let go of at
/// once at both edges, not at the holder's idle limit.
/// The links offer `ssh_ciphers` on both sides: edges set to AES-128-GCM alone (a cipher
/// russh's own default list lacks, so a listener left on it shares none with its dialling
/// peers) link up and relay.
#[test]
fn edges_set_to_one_cipher_link_up_and_relay() {
    let stack = mesh_stack_with("ssh_ciphers = [\"aes128-gcm@openssh.com\"]\n");
    let local = LocalService::start("local");
    let (_client, url, _) = eu_tunnel(&stack, &local, &[US, AP]);
    let (status, body) =
        http_get(stack.regions[AP].http_addr(), &host_of(&url), "/one-cipher").expect("ap");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn services_that_close_after_each_answer_leave_visitors_connections_open() {
    // Far past the test's patience: a connection let go of only at the idle limit fails it.
    let stack = mesh_stack_with("visitor_header_timeout_seconds = 3600\n");
    let token = stack.pro_token();
    let old = one_answer_service(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nold!");
    let (mut old_client, old_url) = stack
        .http_tunnel(EU, "http-1.0", Some(&token), old)
        .expect("tunnel through eu");
    let closing = one_answer_service(
        b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
          Content-Length: 5\r\n\r\nbye!!",
    );
    let (mut closing_client, closing_url) = stack
        .http_tunnel(EU, "closing", Some(&token), closing)
        .expect("tunnel through eu");
    wait_relayed(&stack, US, &old_url);
    wait_relayed(&stack, US, &closing_url);
    for region in [EU, US] {
        for (url, body) in [(&old_url, "old!"), (&closing_url, "bye!!")] {
            let mut conn = std::net::TcpStream::connect(stack.regions[region].http_addr()).unwrap();
            conn.set_read_timeout(Some(PATIENCE)).unwrap();
            for i in 0..3 {
                let what = format!("answer {i} from {url} at {}", stack.regions[region].name);
                write!(conn, "GET / HTTP/1.1\r\nHost: {}\r\n\r\n", host_of(url)).unwrap();
                let (head, got) = read_answer(&mut conn);
                assert!(
                    head.starts_with("HTTP/1.1 200 "),
                    "{what}: the edge's version\n{head}"
                );
                assert_eq!(got, body, "{what}");
                let fields = head.to_ascii_lowercase();
                assert!(
                    !fields.contains("close")
                        && !fields.contains("x-hop")
                        && !fields.contains("timeout=5"),
                    "{what}: the service's connection fields reached the visitor\n{head}"
                );
            }
        }
    }
    // The visitors left (the relayed ones included): both edges let go of them.
    eventually("both edges let go of the visitors' connections", || {
        let active = |region| {
            metric_sum(
                &edge_metrics(&stack, region),
                "nearhop_edge_visitor_connections_active",
                &[],
            )
        };
        let open = (active(EU), active(US));
        anyhow::ensure!(open == (0.0, 0.0), "open at eu, us: {open:?}");
        Ok(())
    });
    old_client.stop();
    closing_client.stop();
}

/// An answer that ends only when the holder closes the relay channel cannot be told from
/// one cut short, so a pipelined request for another tunnel behind it is not answered on
/// the same connection: its answer would read as the rest of the first body.
#[test]
fn an_answer_that_ends_at_close_is_never_followed_by_another_tunnels_answer() {
    let stack = mesh_stack();
    let victim = LocalService::start("victim");
    let token = stack.pro_token();
    let mut args = SshArgs::http_tunnel(Some(&token), until_close_service());
    args.command = vec!["x:noreverseproxy".into()];
    let mut raw_client = stack.ssh_to(EU, "raw", &args);
    let raw_url = raw_client.wait_for_url(PATIENCE).unwrap();
    let (_victim_client, victim_url, _) = eu_tunnel(&stack, &victim, &[US]);
    eventually("us relays the raw tunnel", || {
        let (status, _) = http_get(stack.regions[US].http_addr(), &host_of(&raw_url), "/")?;
        anyhow::ensure!(status == 200, "{status}");
        Ok(())
    });
    let mut conn = std::net::TcpStream::connect(stack.regions[US].http_addr()).unwrap();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        conn,
        "GET /raw HTTP/1.1\r\nHost: {}\r\n\r\nGET /victim HTTP/1.1\r\nHost: {}\r\n\r\n",
        host_of(&raw_url),
        host_of(&victim_url)
    )
    .unwrap();
    let mut got = Vec::new();
    conn.read_to_end(&mut got).expect("the connection closes");
    let got = String::from_utf8_lossy(&got);
    assert_eq!(
        got, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close",
        "the first answer whole, then the end of the connection"
    );
}

/// The holder edge dies while a relayed `GET` waits for its answer: the relaying edge sends
/// it again (no byte of its answer had reached the visitor), waiting out the client's
/// reconnect through another region, and the visitor gets its answer on the same
/// connection. Nothing is sent twice that may not be (a `POST`'s connection just closes).
#[test]
fn a_holder_dying_before_it_answers_a_get_does_not_fail_the_visitor() {
    let mut stack = mesh_stack();
    let local = LocalService::start("local");
    let token = stack.pro_token();
    let (mut first, url) = stack
        .http_tunnel(EU, "eu-client", Some(&token), local.port)
        .expect("tunnel through eu");
    wait_relayed(&stack, US, &url);
    let host = host_of(&url);
    let mut conn = std::net::TcpStream::connect(stack.regions[US].http_addr()).unwrap();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(conn, "GET /before HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let (status, body) = read_response(&mut conn);
    assert_eq!(status, 200, "{body}");
    // A slow answer, and a POST on a connection of its own, both in flight.
    write!(conn, "GET /hang/4 HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut post = std::net::TcpStream::connect(stack.regions[US].http_addr()).unwrap();
    post.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        post,
        "GET /before HTTP/1.1\r\nHost: {host}\r\n\r\n\
         POST /hang/4 HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\n\r\nhi"
    )
    .unwrap();
    let (status, _) = read_response(&mut post);
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(500));

    let pid = stack.edges[EU].pid().expect("eu runs");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    stack.edges[EU].stop_within(Duration::ZERO);
    first.stop();
    let (_second, again) = stack
        .http_tunnel(AP, "ap-client", Some(&token), local.port)
        .expect("tunnel through ap");
    assert_eq!(host_of(&again), host, "a pro client gets its name back");

    let (status, body) = read_response(&mut conn);
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("hello from local /hang/4"), "{body}");
    // The same connection goes on.
    write!(conn, "GET /after HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let (status, body) = read_response(&mut conn);
    assert_eq!(status, 200, "{body}");
    // The POST is not sent twice: its connection ended without an answer (closed or
    // reset, not held open), and the service got it at most once (from eu, before it
    // died).
    let mut rest = Vec::new();
    match post.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("us held the POST's connection open: {e}"),
    }
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    let posts = local.received("POST /hang/4");
    assert!(posts <= 1, "the POST reached the service {posts} times");
    // us counts the GET as sent again and the POST as failed.
    let us = edge_metrics(&stack, US);
    let cause =
        |cause: &str| metric_sum(&us, "nearhop_edge_relay_errors_total", &[("cause", cause)]);
    assert!(cause("request_resent") >= 1.0, "{us}");
    assert!(cause("request_failed") >= 1.0, "{us}");
}

#[test]
fn downloads_upgrades_and_allowlists_work_through_the_relay() {
    let stack = mesh_stack();
    let local = LocalService::start("local");
    let token = stack.pro_token();
    let mut args = SshArgs::http_tunnel(Some(&token), local.port);
    args.command = vec![format!("w:{VISITOR}/32")];
    let mut client = stack.ssh_to(EU, "allow", &args);
    let url = client.wait_for_url(PATIENCE).unwrap();
    let host = host_of(&url);
    let ap_addr = stack.regions[AP].http_addr();
    let ap_url = url_at(&url, ap_addr);
    eventually("ap relays the tunnel", || {
        let r = visitor_from(&url, ap_addr, VISITOR)
            .get(format!("{ap_url}/ready"))
            .send()?;
        anyhow::ensure!(r.status() == 200, "{}", r.status());
        Ok(())
    });

    // `w:` is applied by the holder to the real visitor behind the relay.
    let other = visitor_from(&url, ap_addr, Ipv4Addr::new(127, 0, 0, 10));
    let refused = other.get(format!("{ap_url}/")).send().unwrap();
    assert_eq!(
        refused.status(),
        403,
        "a visitor outside w: is refused through the relay"
    );

    // 100 MB through the relay, byte for byte.
    let size = 100 * 1024 * 1024;
    let resp = visitor_from(&url, ap_addr, VISITOR)
        .get(format!("{ap_url}/blob/{size}"))
        .timeout(Duration::from_secs(600))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    finish_download(resp, 0, size, "through the relay");

    // An upgraded connection through the relay stays open while idle (60 s).
    let (_, head) = upgrade_from(Ipv4Addr::new(127, 0, 0, 1), ap_addr, &host);
    assert!(
        head.starts_with("HTTP/1.1 403"),
        "outside the tunnel's w: {head}"
    );
    let (mut raw, head) = upgrade_from(VISITOR, ap_addr, &host);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut echo = [0u8; 5];
    raw.write_all(b"ping1").unwrap();
    raw.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping1");
    // A real WebSocket (RFC 6455 handshake and frames) through the relay, the same minute.
    let refused = websocket_from(Ipv4Addr::new(127, 0, 0, 1), ap_addr, &host, "/ws").err();
    assert!(
        refused.as_deref().is_some_and(|e| e.contains("403")),
        "a WebSocket from outside w: is refused: {refused:?}"
    );
    let mut ws = websocket_from(VISITOR, ap_addr, &host, "/ws").expect("WebSocket via ap");
    let say = |ws: &mut tokio_tungstenite::tungstenite::WebSocket<std::net::TcpStream>,
               text: &str| {
        ws.send(tokio_tungstenite::tungstenite::Message::text(text))
            .expect("send");
        loop {
            match ws.read().expect("a message back") {
                tokio_tungstenite::tungstenite::Message::Text(t) => return t.as_str().to_string(),
                _ => continue,
            }
        }
    };
    assert_eq!(say(&mut ws, "hello"), "echo: hello");
    std::thread::sleep(Duration::from_secs(60));
    raw.write_all(b"ping2").unwrap();
    raw.read_exact(&mut echo).unwrap();
    assert_eq!(
        &echo, b"ping2",
        "the relayed upgrade survived a minute of silence"
    );
    assert_eq!(
        say(&mut ws, "still there?"),
        "echo: still there?",
        "the relayed WebSocket survived a minute of silence"
    );
    ws.close(None).expect("close");
}

#[test]
fn tls_tunnels_are_relayed_undecrypted() {
    let stack = mesh_stack();
    let service = LocalTlsService::start(&stack.path().join("tls-service"));
    let token = stack.pro_token();
    let mut client = stack.ssh_to(
        EU,
        "tls",
        &SshArgs::http_tunnel(Some(&format!("{token}+tls")), service.port),
    );
    let url = client.wait_for_url(PATIENCE).unwrap();
    let (host, _) = url_host_port(&url).unwrap();
    let us = &stack.edges[US].spec;
    // The local server holds the certificate: the handshake completes only if every byte
    // reached it unchanged through the relay.
    let r = eventually("us relays the tls tunnel", || {
        let r = curl_tls(&host, us.ip, us.tls, "/", None);
        anyhow::ensure!(r.code == 0, "{}", r.stderr);
        // Until us learns the holder it terminates TLS itself and answers its own page.
        anyhow::ensure!(r.body.contains("s_server"), "{}", r.body);
        Ok(r)
    });
    assert!(r.body.contains("s_server"), "{}", r.body);
}

#[test]
fn relayed_visitors_are_served_while_control_and_the_primary_are_down() {
    let mut stack = mesh_stack();
    let local = LocalService::start("local");
    let (_client, url, _token) = eu_tunnel(&stack, &local, &[US, AP]);
    stack.control.stop();
    stack.pg.stop("us");
    // At once, and again after several missed heartbeats (every second here): the edges
    // keep their peers and holder tables while control cannot answer.
    for wait in [0, 6] {
        std::thread::sleep(Duration::from_secs(wait));
        for region in [US, AP, EU] {
            let (status, body) =
                http_get(stack.regions[region].http_addr(), &host_of(&url), "/outage").unwrap();
            assert_eq!(
                status, 200,
                "{} after {wait} s: {body}",
                stack.regions[region].name
            );
            assert!(body.starts_with("hello from local /outage"), "{body}");
        }
    }
}

#[test]
fn edges_trust_each_other_only_as_themselves() {
    let stack = mesh_stack();
    let local = LocalService::start("local");
    let (mut client, url, _token) = eu_tunnel(&stack, &local, &[AP]);

    // The admin API answers only control's key: not a forged one, not an old shared secret.
    let eu = &stack.edges[EU].spec;
    for bearer in ["forged", stack.control.edge_secret.as_str()] {
        let r = reqwest::blocking::Client::new()
            .post(format!("http://{}:{}/v1/tunnels/1/close", eu.ip, eu.admin))
            .bearer_auth(bearer)
            .json(&serde_json::json!({"reason": "takedown", "message": "x"}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 401, "bearer {bearer:?}");
    }

    // A stranger with a key of its own, claiming to be us-1 at eu's mesh listener (the stock
    // OpenSSH client): refused, and counted.
    let not_trusted = || {
        metric_sum(
            &edge_metrics(&stack, EU),
            "nearhop_edge_relay_errors_total",
            &[("cause", "peer_not_trusted")],
        )
    };
    let before = not_trusted();
    let forged = stack.path().join("forged_mesh_key");
    let keygen = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&forged)
        .status()
        .unwrap();
    assert!(keygen.success());
    let attempt = std::process::Command::new("ssh")
        .args(MESH_SSH_OPTIONS)
        .arg("-i")
        .arg(&forged)
        .args([
            "-p",
            &eu.mesh.to_string(),
            &format!("us-1@{}", eu.ip),
            "true",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&attempt.stderr);
    assert!(
        !attempt.status.success() && said.contains("Permission denied"),
        "a forged key is refused at the mesh listener: {said}"
    );
    assert!(not_trusted() > before, "the forged key is counted");

    // Revoking ap's credential: control stops listing it, its peers refuse it as an edge
    // they do not know, and visitors at ap no longer reach tunnels elsewhere (nor anything
    // else of the mesh).
    let not_listed = || {
        metric_sum(
            &edge_metrics(&stack, EU),
            "nearhop_edge_relay_errors_total",
            &[("cause", "peer_not_listed")],
        )
    };
    let before = not_listed();
    stack
        .control
        .cli(&["edge", "revoke", "ap-1"])
        .expect("revoke");
    eventually("eu refuses ap, no longer listed", || {
        anyhow::ensure!(not_listed() > before, "not yet");
        Ok(())
    });
    eventually("ap has no holder for the tunnel", || {
        let (status, _) = http_get(stack.regions[AP].http_addr(), &host_of(&url), "/")?;
        anyhow::ensure!(status == 404, "{status}");
        Ok(())
    });
    // eu's admin API opens with the admin key eu gave control in its registration, and
    // with no edge's credential: not ap's revoked one, not us's live one, not eu's own.
    let pg = &stack.pg.primary.endpoint;
    let admin_key = psql(pg, "SELECT admin_key FROM edges WHERE id = 'eu-1'").expect("eu's row");
    let tunnel_id = psql(
        pg,
        &format!(
            "SELECT id FROM tunnels WHERE label || '.' || zone = '{}' AND closed_at IS NULL",
            host_of(&url)
        ),
    )
    .expect("the tunnel's row");
    let alive = |bearer: &str| {
        let r = reqwest::blocking::Client::new()
            .get(format!(
                "http://{}:{}/v1/tunnels/{}/alive",
                eu.ip,
                eu.admin,
                tunnel_id.trim()
            ))
            .bearer_auth(bearer)
            .timeout(PATIENCE)
            .send()
            .expect("eu's admin API answers");
        (r.status().as_u16(), r.text().unwrap_or_default())
    };
    let (status, body) = alive(admin_key.trim());
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    assert_eq!(
        (status, answer),
        (200, serde_json::json!({"known": true, "alive": true})),
        "control's admin key asks eu about its tunnel: {body}"
    );
    for (whose, bearer) in [
        (
            "ap's revoked credential",
            stack.edges[AP].spec.credential.as_str(),
        ),
        (
            "us's live credential",
            stack.edges[US].spec.credential.as_str(),
        ),
        ("eu's own credential", eu.credential.as_str()),
        (
            "a forged key",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ),
    ] {
        let (status, body) = alive(bearer);
        assert_eq!(status, 401, "{whose} at eu's admin API: {body}");
    }
    // The others still relay.
    let (status, _) = http_get(stack.regions[US].http_addr(), &host_of(&url), "/").unwrap();
    assert_eq!(status, 200);

    // A closed tunnel: the relaying edge forgets it and answers the page, no loop.
    client.stop();
    eventually("us forgets the closed tunnel", || {
        let (status, body) = http_get(stack.regions[US].http_addr(), &host_of(&url), "/")?;
        anyhow::ensure!(status == 404 && body.contains("No tunnel here"), "{status}");
        Ok(())
    });
}

/// Opens a relay channel at the mesh listener of the edge of `to` as the edge of `from`
/// would: the stock OpenSSH client authenticates as `from`'s edge id with `from`'s own mesh
/// key and opens a `direct-tcpip` channel to `nearhop-relay/http` (`ssh -W`; OpenSSH names
/// the originator 127.0.0.1:65535). Writes `request` on it and returns every byte that came
/// back until `to` ended the channel (its EOF), and what ssh said on stderr.
fn relay_as_peer(stack: &Stack, from: usize, to: usize, request: &str) -> (String, String) {
    use std::process::{Command, Stdio};
    let key = stack.edges[from]
        .config_path
        .with_file_name("ssh_host_ed25519_key-mesh");
    let to = &stack.edges[to].spec;
    let mut ssh = Command::new("ssh")
        .args(MESH_SSH_OPTIONS)
        .args(["-o", "LogLevel=ERROR", "-i"])
        .arg(&key)
        .args(["-p", &to.mesh.to_string(), "-W", "nearhop-relay/http:1"])
        .arg(format!("{}@{}", stack.edges[from].spec.edge_id, to.ip))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ssh runs");
    // stdin stays open until the answer ends: the visitor has not gone away.
    let mut stdin = ssh.stdin.take().expect("stdin");
    stdin.write_all(request.as_bytes()).expect("the request");
    let mut stdout = ssh.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let _ = stdout.read_to_end(&mut got);
        let _ = tx.send(got);
    });
    let got = rx.recv_timeout(PATIENCE);
    // The answer has ended (OpenSSH's stdout closes at the edge's EOF); OpenSSH does not
    // close a `-W` channel itself, and the edge would wait 30 s for it to.
    let _ = ssh.kill();
    drop(stdin);
    let mut said = String::new();
    if let Some(mut stderr) = ssh.stderr.take() {
        let _ = stderr.read_to_string(&mut said);
    }
    let _ = ssh.wait();
    let got = got.unwrap_or_else(|_| panic!("the relay channel was not closed: {said}"));
    (String::from_utf8_lossy(&got).into_owned(), said)
}

/// A relay channel reaches an edge that does not hold the name its request asks for (a
/// genuine peer's channel, opened with the stock OpenSSH client as `relay_as_peer` does): a
/// name no edge holds gets the "No tunnel here" page, and a name a third edge holds is
/// handed back unanswered (the channel ends without a byte, for the relaying edge to send
/// the request where the name is), or, with a body the relaying edge could not send again,
/// answered "Tunnel moved"; none goes a second hop. A name the edge holds itself
/// is answered on the same kind of channel, so the refusals are the edge's, not the
/// channel's.
#[test]
fn a_relayed_request_for_a_name_the_edge_does_not_hold_goes_no_second_hop() {
    let stack = mesh_stack();
    let at_eu = LocalService::start("at-eu");
    let at_ap = LocalService::start("at-ap");
    let (_eu_client, eu_url, _) = eu_tunnel(&stack, &at_eu, &[]);
    let (_ap_client, ap_url) = stack
        .http_tunnel(AP, "ap-client", Some(&stack.pro_token()), at_ap.port)
        .expect("tunnel through ap");
    // eu knows ap holds ap's name (a visitor at eu is relayed there).
    wait_relayed(&stack, EU, &ap_url);
    let zone = host_of(&ap_url)
        .split_once('.')
        .expect("a zone")
        .1
        .to_string();
    let relays = |region: usize, direction: &str| {
        metric_sum(
            &edge_metrics(&stack, region),
            "nearhop_edge_relay_connections_total",
            &[("direction", direction)],
        )
    };
    let from_us = || {
        metric_sum(
            &edge_metrics(&stack, EU),
            "nearhop_edge_relay_connections_total",
            &[("peer", "us-1"), ("direction", "in")],
        )
    };
    let ask =
        |host: &str| format!("GET /relayed HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");

    // The channel works: eu's own tunnel answers, to the originator OpenSSH named.
    let before = from_us();
    let (answer, said) = relay_as_peer(&stack, US, EU, &ask(&host_of(&eu_url)));
    assert!(
        answer.starts_with("HTTP/1.1 200 ")
            && answer.contains("hello from at-eu /relayed")
            && answer.contains("xff=127.0.0.1\n"),
        "eu's own tunnel on a relay channel from us: {answer}\nssh: {said}"
    );
    assert_eq!(from_us() - before, 1.0, "eu counted the channel from us");

    let (eu_out, ap_in, ap_served) = (
        relays(EU, "out"),
        relays(AP, "in"),
        at_ap.served.load(std::sync::atomic::Ordering::Relaxed),
    );
    // A name no edge holds: the page, from eu.
    let nowhere = format!("nobody-holds-this.{zone}");
    let (answer, said) = relay_as_peer(&stack, US, EU, &ask(&nowhere));
    assert!(
        answer.starts_with("HTTP/1.1 404 ") && answer.contains("No tunnel here"),
        "a name held nowhere, relayed to eu: {answer}\nssh: {said}"
    );
    // A name ap holds: eu ends the channel without a word rather than relay it to ap.
    let before = from_us();
    let (answer, said) = relay_as_peer(&stack, US, EU, &ask(&host_of(&ap_url)));
    assert!(
        answer.is_empty(),
        "a name ap holds, relayed to eu, was answered: {answer}\nssh: {said}"
    );
    assert_eq!(
        from_us() - before,
        1.0,
        "eu took the channel (and ended it): {said}"
    );
    // The same with a body: the relaying edge could not send it again, so eu does not hand
    // it back but says the tunnel moved.
    let post = format!(
        "POST /relayed HTTP/1.1\r\nHost: {}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        host_of(&ap_url)
    );
    let (answer, said) = relay_as_peer(&stack, US, EU, &post);
    let head = answer.to_ascii_lowercase();
    assert!(
        answer.starts_with("HTTP/1.1 503 ")
            && answer.contains("Tunnel moved")
            && head.contains("\r\nretry-after: 1\r\n"),
        "a POST for a name ap holds, relayed to eu: {answer}\nssh: {said}"
    );
    // A DELETE without a body is idempotent, and sent again by either of the relaying
    // edge's paths: handed back like the GET; a PATCH is not.
    for (method, handed_back) in [("DELETE", true), ("PATCH", false)] {
        let request = format!(
            "{method} /relayed HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            host_of(&ap_url)
        );
        let (answer, said) = relay_as_peer(&stack, US, EU, &request);
        let moved = answer.starts_with("HTTP/1.1 503 ") && answer.contains("Tunnel moved");
        assert!(
            if handed_back {
                answer.is_empty()
            } else {
                moved
            },
            "a {method} for a name ap holds, relayed to eu: {answer}\nssh: {said}"
        );
    }
    assert_eq!(relays(EU, "out"), eu_out, "eu relayed a relayed request on");
    assert_eq!(relays(AP, "in"), ap_in, "ap was relayed a relayed request");
    assert_eq!(
        at_ap.served.load(std::sync::atomic::Ordering::Relaxed),
        ap_served,
        "ap's tunnel served a relayed request a second hop away"
    );
    // Straight to eu, a visitor of the same name is relayed to ap as ever.
    let (status, body) = http_get(stack.regions[EU].http_addr(), &host_of(&ap_url), "/x").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(relays(EU, "out"), eu_out + 1.0, "eu relays its own visitor");
}

/// A compromised edge that is still listed (a genuine credential, registered under its own
/// id) announces names it does not hold: one held by eu's tunnel (with a higher tunnel id
/// and a forged proof, to win a takeover), the same with another fake proof, and one
/// held nowhere (without a proof). The other edges take none of it: visitors at us still
/// reach eu's tunnel and a name held nowhere gets the page, not a relay to the impostor.
#[test]
fn a_genuine_edge_cannot_claim_names_it_does_not_hold() {
    let stack = mesh_stack();
    let local = LocalService::start("local");
    let (_client, url, _token) = eu_tunnel(&stack, &local, &[US]);
    let name = host_of(&url);
    let zone = name.split_once('.').expect("a zone").1.to_string();
    let nowhere = format!("nobody-holds-this.{zone}");
    let fake = "A".repeat(86);
    let feed = format!("+{name} http 999999 {fake}\n+{name} http 999998 {fake}\n+{nowhere} http\n");
    let impostor = nearhop_stack::mesh_impostor::MeshImpostor::start(
        &stack.control,
        "impostor-1",
        "us",
        Ipv4Addr::new(127, 0, 0, 1),
        Duration::from_secs(1),
        feed,
    )
    .expect("the impostor registers");
    let refused = |reason: &str| {
        metric_sum(
            &edge_metrics(&stack, US),
            "nearhop_edge_mesh_claims_refused_total",
            &[("peer", impostor.edge_id.as_str()), ("reason", reason)],
        )
    };
    eventually(
        "us follows the impostor's feed and refuses its claims",
        || {
            let (bad, unproven) = (refused("bad_proof"), refused("unproven"));
            anyhow::ensure!(
                bad >= 2.0 && unproven >= 1.0,
                "{bad} bad, {unproven} unproven"
            );
            Ok(())
        },
    );
    for _ in 0..20 {
        let (status, body) = http_get(stack.regions[US].http_addr(), &name, "/").unwrap();
        assert_eq!(status, 200, "eu's tunnel through us: {body}");
        let (status, body) = http_get(stack.regions[US].http_addr(), &nowhere, "/").unwrap();
        assert_eq!(status, 404, "a name held nowhere: {body}");
        assert!(body.contains("No tunnel here"), "{body}");
    }
    let relayed_to_impostor = metric_sum(
        &edge_metrics(&stack, US),
        "nearhop_edge_relay_connections_total",
        &[("peer", impostor.edge_id.as_str())],
    );
    assert_eq!(relayed_to_impostor, 0.0, "no visitor went to the impostor");
}

#[test]
fn a_client_reconnecting_through_another_region_loses_no_visitor_request() {
    let stack = mesh_stack();
    let local = LocalService::start("local");
    let (mut first, url, token) = eu_tunnel(&stack, &local, &[AP]);

    // Visitors that keep using eu's address (stale DNS), one attempt per request, several
    // at once and with little pause, so that some request is in flight at the moment the
    // client's session ends.
    let eu_addr = stack.regions[EU].http_addr();
    let eu_url = url_at(&url, eu_addr);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Visitors 0 and 1 keep their connection alive (reqwest's pool); 2 and 3 send each
    // request on a connection of its own with a client that never sends anything twice.
    let host = host_of(&url);
    let visitors: Vec<_> = (0..4)
        .map(|v| {
            let stop = stop.clone();
            let client = visitor_from(&url, eu_addr, VISITOR);
            let eu_url = eu_url.clone();
            let host = host.clone();
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u32, Vec::new());
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    i += 1;
                    let path = format!("/visit/{v}/{i}");
                    let status = if v < 2 {
                        client
                            .get(format!("{eu_url}{path}"))
                            .send()
                            .map(|r| r.status().as_u16())
                            .map_err(|e| e.to_string())
                    } else {
                        http_get(eu_addr, &host, &path)
                            .map(|(status, _)| status)
                            .map_err(|e| format!("{e:#}"))
                    };
                    match status {
                        Ok(200) => ok += 1,
                        Ok(status) => failed.push(format!("{v}/{i}: {status}")),
                        Err(e) => failed.push(format!("{v}/{i}: {e}")),
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                (ok, failed)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    // The client's network moves: its session to eu ends, it comes back through ap.
    first.stop();
    let (_second, again) = stack
        .http_tunnel(AP, "ap-client", Some(&token), local.port)
        .expect("tunnel through ap");
    assert_eq!(
        host_of(&again),
        host_of(&url),
        "a pro client gets its name back"
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut ok, mut failed) = (0, Vec::new());
    for visitor in visitors {
        let (o, f) = visitor.join().expect("visitor thread");
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} failed of {}: {failed:?}\neu's log:\n{}\nap's log:\n{}",
        failed.len(),
        ok as usize + failed.len(),
        stack.edges[EU].log_tail(60),
        stack.edges[AP].log_tail(60),
    );
    assert!(ok > 10, "the visitor kept visiting ({ok})");
}

/// A visitor at us whose requests us relays to eu, the tunnel's holder, while the tunnel's
/// client moves from eu to ap: eu may not relay them on (one hop at most), so it hands them
/// back unanswered and us sends them to ap. Before, eu waited out `reconnect_wait_seconds`
/// for the tunnel to come back to it and then answered "No tunnel here".
#[test]
fn relayed_requests_in_flight_when_the_client_moves_to_a_third_edge_are_answered_there() {
    let stack = mesh_stack();
    let local = LocalService::start("local");
    let (mut first, url, token) = eu_tunnel(&stack, &local, &[US]);
    let host = host_of(&url);
    let us = stack.regions[US].http_addr();
    let connect = || {
        let conn = std::net::TcpStream::connect(us).unwrap();
        conn.set_read_timeout(Some(PATIENCE)).unwrap();
        conn
    };
    // One kept-alive connection with a request answered before, and one whose first
    // request is the one in flight (each takes its own way at us: hyper's proxy, and the
    // requests passed on as bytes).
    let mut kept = connect();
    write!(kept, "GET /before HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let (status, body) = read_response(&mut kept);
    assert_eq!(status, 200, "{body}");
    write!(kept, "GET /hang/2 HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut fresh = connect();
    write!(fresh, "GET /hang/2 HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // The client's network moves: its session to eu ends (eu stays up), it comes back
    // through ap.
    first.stop();
    let (_second, again) = stack
        .http_tunnel(AP, "ap-client", Some(&token), local.port)
        .expect("tunnel through ap");
    assert_eq!(host_of(&again), host, "a pro client gets its name back");

    for (what, conn) in [("kept", &mut kept), ("fresh", &mut fresh)] {
        let (status, body) = read_response(conn);
        assert_eq!(
            status,
            200,
            "{what}: {body}\nus's log:\n{}\neu's log:\n{}",
            stack.edges[US].log_tail(40),
            stack.edges[EU].log_tail(40)
        );
        assert!(
            body.starts_with("hello from local /hang/2"),
            "{what}: {body}"
        );
    }
    // The connection goes on, now relayed to ap.
    write!(kept, "GET /after HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let (status, body) = read_response(&mut kept);
    assert_eq!(status, 200, "{body}");
    let to_ap = metric_sum(
        &edge_metrics(&stack, US),
        "nearhop_edge_relay_requests_total",
        &[("peer", stack.edges[AP].spec.edge_id.as_str())],
    );
    assert!(to_ap >= 1.0, "us relayed to ap ({to_ap})");
    // Both requests in flight were handed back by eu and sent again by us: counted as
    // resent, once each, and not as failed.
    let us = edge_metrics(&stack, US);
    let cause =
        |cause: &str| metric_sum(&us, "nearhop_edge_relay_errors_total", &[("cause", cause)]);
    // (More than two if a request handed back went to eu again before us learnt that ap
    // holds the name.)
    assert!(cause("request_resent") >= 2.0, "{us}");
    assert_eq!(cause("request_failed"), 0.0, "{us}");
}

/// The mesh port is reachable by anyone (edges of other regions dial it): a connection that
/// never authenticates is closed at `ssh_auth_deadline_seconds`, counted, and the genuine
/// peers' links, which authenticated within it, stay up and relay.
#[test]
fn a_stranger_at_the_mesh_listener_is_cut_off_at_the_auth_deadline() {
    let stack = Stack::start(StackOptions {
        with_edges: true,
        control_tweak: Some(fast_heartbeats),
        edge_toml: "ssh_auth_deadline_seconds = 2\n".into(),
        ..StackOptions::default()
    })
    .expect("the stack starts");
    stack.wait_mesh_linked().expect("the edges link up");
    let eu = &stack.edges[EU].spec;

    // One connection says nothing at all; another sends its SSH banner and stops there.
    let silent = std::net::TcpStream::connect((eu.ip, eu.mesh)).unwrap();
    let mut banner_only = std::net::TcpStream::connect((eu.ip, eu.mesh)).unwrap();
    banner_only.write_all(b"SSH-2.0-stranger\r\n").unwrap();
    // A third starts key exchange and stalls inside it.
    let in_kex =
        nearhop_stack::stalled_ssh::stall_in_key_exchange(SocketAddr::from((eu.ip, eu.mesh)))
            .unwrap();
    for (what, mut conn) in [
        ("silent", silent),
        ("banner only", banner_only),
        ("stalled in key exchange", in_kex),
    ] {
        conn.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut sink = Vec::new();
        // The edge's own banner and KEXINIT may come first; then the end of the stream.
        match conn.read_to_end(&mut sink) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("the {what} connection was not closed: {e}"),
        }
    }
    let timed_out = metric_sum(
        &edge_metrics(&stack, EU),
        "nearhop_edge_relay_errors_total",
        &[("cause", "mesh_auth_timeout")],
    );
    assert_eq!(timed_out, 3.0, "every stranger counted");

    // The peers' links were not touched: a tunnel on eu is still relayed by us.
    let local = LocalService::start("local");
    let (_client, url, _token) = eu_tunnel(&stack, &local, &[US]);
    let (status, body) = http_get(stack.regions[US].http_addr(), &host_of(&url), "/x").unwrap();
    assert_eq!(status, 200, "{body}");
}

/// Heartbeats so rare that none comes while a test runs (leases outlast them): whatever
/// links the mesh then is not a heartbeat's peer list.
fn rare_heartbeats(spec: &mut nearhop_stack::control::ControlSpec) {
    spec.heartbeat_seconds = 600;
    spec.lease_seconds = 1800;
}

/// Each edge that starts registers, then dials the peers control named in its answer; they
/// heard of it at no heartbeat yet, so each asks control for the peer list before it would
/// refuse: the edges link up both ways at once, with no refusal, and a tunnel on the edge
/// that started last is relayed by the first.
#[test]
fn edges_that_start_are_linked_at_once_not_at_their_peers_next_heartbeat() {
    let stack = Stack::start(StackOptions {
        with_edges: true,
        control_tweak: Some(rare_heartbeats),
        ..StackOptions::default()
    })
    .expect("the stack starts");
    stack
        .wait_mesh_linked()
        .expect("every edge links to every other, with no heartbeat after registering");
    for region in [US, EU, AP] {
        let text = edge_metrics(&stack, region);
        let name = &stack.regions[region].name;
        let refused = metric_sum(
            &text,
            "nearhop_edge_relay_errors_total",
            &[("cause", "peer_not_listed")],
        );
        assert_eq!(refused, 0.0, "{name} refused an edge that had just started");
        let failed = metric_sum(
            &text,
            "nearhop_edge_control_errors_total",
            &[("call", "peers")],
        );
        assert_eq!(failed, 0.0, "{name} could not ask control");
        // us-1 and eu-1 were dialled by edges registered after them.
        if region != AP {
            let fetched = metric_sum(&text, "nearhop_edge_mesh_peer_list_fetches_total", &[]);
            assert!(
                fetched > 0.0,
                "{name} never asked control for the peer list"
            );
        }
    }

    // A tunnel on the edge that started last is served at the edge that started first.
    let local = LocalService::start("local");
    let (_client, url) = stack
        .http_tunnel(AP, "ap-client", Some(&stack.pro_token()), local.port)
        .expect("tunnel through ap");
    wait_relayed(&stack, US, &url);
    let (status, body) = http_get(stack.regions[US].http_addr(), &host_of(&url), "/x").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("hello from local /x"), "{body}");
}

/// A `tcp` tunnel is not relayed (its port is on its edge only), so its URL names that edge,
/// not the tunnel's name: after the client reconnects through another region, the new URL
/// names the new edge, and no resolver's cached answer for the name can send a visitor of
/// the new URL to the old edge (where the same port may be another tunnel's).
#[test]
fn a_tcp_tunnels_url_names_the_edge_holding_it_across_a_reconnect() {
    let stack = mesh_stack();
    let echo = tcp_echo();
    let user = format!("{}+tcp", stack.pro_token());
    let args = SshArgs::http_tunnel(Some(&user), echo);
    let round_trip = |host: &str, port: u16| {
        let mut conn = std::net::TcpStream::connect((host, port)).expect("connect to the URL");
        conn.set_read_timeout(Some(PATIENCE)).unwrap();
        conn.write_all(b"ping over tcp").unwrap();
        let mut back = [0u8; 13];
        conn.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping over tcp");
    };

    let mut first = stack.ssh_to(EU, "tcp-eu", &args);
    let url = first.wait_for_url(PATIENCE).unwrap();
    let (host, port) = url_host_port(&url).unwrap();
    assert_eq!(host, stack.edges[EU].spec.ip.to_string(), "{url}");
    assert!(
        first.output().contains("The port is on this edge"),
        "{}",
        first.output()
    );
    round_trip(&host, port);

    first.stop();
    let mut second = stack.ssh_to(AP, "tcp-ap", &args);
    let again = second.wait_for_url(PATIENCE).unwrap();
    let (host, port) = url_host_port(&again).unwrap();
    assert_eq!(host, stack.edges[AP].spec.ip.to_string(), "{again}");
    round_trip(&host, port);
}

/// A holder whose host stops answering (its edge frozen with SIGSTOP: the link's TCP
/// connection stays open, nothing comes back): a visitor relayed to it gets the "Tunnel edge
/// not answering" page once the relay channel goes unconfirmed for 5 s, not a hang until
/// the link's keepalives give up. Meanwhile, with `relay_openings_per_peer = 1`, a second
/// visitor is told at once that the tunnel is busy instead of waiting too.
#[test]
fn a_frozen_holder_gets_visitors_a_page_not_a_hang() {
    // Control's usual heartbeats (not the fast ones of `mesh_stack`): the frozen edge stays
    // in the peer list well past the relay's 5 s, as it would in production.
    let stack = Stack::start(StackOptions {
        with_edges: true,
        edge_toml: "relay_openings_per_peer = 1\n".into(),
        ..StackOptions::default()
    })
    .expect("the stack starts");
    stack.wait_mesh_linked().expect("the edges link up");
    let local = LocalService::start("local");
    let (_client, url, _token) = eu_tunnel(&stack, &local, &[US]);
    let host = host_of(&url);
    let us = stack.regions[US].http_addr();
    let curl = move |path: &str, seconds: &str| {
        let answer = std::process::Command::new("curl")
            .args(["-s", "-m", seconds, "-w", "\n%{http_code}", "-H"])
            .arg(format!("Host: {host}"))
            .arg(format!("http://{us}{path}"))
            .output()
            .expect("curl runs");
        let out = String::from_utf8_lossy(&answer.stdout).to_string();
        let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
        (status.to_string(), body.to_string(), answer.status.code())
    };
    let frozen = Frozen::stop(stack.edges[EU].pid().expect("eu's edge runs") as libc::pid_t);
    // curl, given 30 s: the link's keepalives alone would take 45 s to give up on eu.
    let first = std::thread::spawn({
        let curl = curl.clone();
        move || curl("/frozen", "30")
    });
    eventually("us is opening a relay channel to the frozen eu", || {
        let openings = metric_sum(
            &edge_metrics(&stack, US),
            "nearhop_edge_relay_openings",
            &[("peer", "eu-1")],
        );
        anyhow::ensure!(openings == 1.0, "openings in flight: {openings}");
        Ok(())
    });
    let (status, body, code) = curl("/second", "30");
    assert_eq!(status, "503", "curl exit {code:?}, body {body}");
    assert!(body.contains("Tunnel busy"), "{body}");
    let (status, body, code) = first.join().expect("the first visitor's curl");
    drop(frozen);
    assert_eq!(
        status,
        "502",
        "curl exit {code:?}, body {body}\nus's log:\n{}",
        stack.edges[US].log_tail(40)
    );
    assert!(body.contains("not answering"), "{body}");
    let metrics = edge_metrics(&stack, US);
    let count = |cause: &str| {
        metric_sum(
            &metrics,
            "nearhop_edge_relay_errors_total",
            &[("cause", cause)],
        )
    };
    assert!(count("open_timeout") >= 1.0, "counted: {metrics}");
    assert!(count("peer_busy") >= 1.0, "counted: {metrics}");
    // Thawed, eu serves again through us.
    eventually("us relays to eu again", || {
        let (status, body) = http_get(stack.regions[US].http_addr(), &host_of(&url), "/thawed")?;
        anyhow::ensure!(status == 200, "{status} {body}");
        Ok(())
    });
}

/// A process stopped with SIGSTOP, resumed when dropped (also when the test fails).
struct Frozen(libc::pid_t);

impl Frozen {
    fn stop(pid: libc::pid_t) -> Frozen {
        // SAFETY: signals a child process this test started; `drop` resumes it.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// Waits until ap's relayed bytes with eu in `direction` (`sent`, `received`) stop moving:
/// everything between a stalled end and the other is full. Returns how many there were.
fn wait_relay_bytes_still(stack: &Stack, direction: &str) -> f64 {
    let mut last = -1.0;
    eventually(
        &format!("ap's relayed bytes {direction} stop moving"),
        || {
            let now = metric_sum(
                &edge_metrics(stack, AP),
                "nearhop_edge_relay_bytes_total",
                &[("peer", "eu-1"), ("direction", direction)],
            );
            let moved = now != last;
            last = now;
            std::thread::sleep(Duration::from_millis(500));
            anyhow::ensure!(!moved && now > 0.0, "{now} bytes so far");
            Ok(())
        },
    );
    last
}

/// A second client's tunnel through eu, to `small`, that ap relays.
fn second_eu_tunnel(stack: &Stack, small: &LocalService) -> (SshClient, String) {
    let (client, url) = stack
        .http_tunnel(EU, "eu-small", Some(&stack.pro_token()), small.port)
        .expect("a second client's tunnel through eu");
    // The feed is in order: ap knows every earlier name once it serves this one.
    wait_relayed(stack, AP, &url);
    (client, url)
}

/// `url`'s tunnel (to a service started as "small") answers a visitor at ap.
fn assert_answers_at_ap(stack: &Stack, url: &str, while_what: &str) {
    let ap = stack.regions[AP].http_addr();
    let other = visitor_from(url, ap, VISITOR)
        .get(format!("{}/other", url_at(url, ap)))
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.text());
    assert!(
        matches!(&other, Ok(body) if body.starts_with("hello from small /other")),
        "another tunnel relayed by the same edges answers while {while_what}: {other:?}"
    );
}

#[test]
fn a_visitor_that_stops_reading_a_relayed_download_holds_up_no_other_tunnel() {
    let stack = mesh_stack();
    let big = LocalService::start("big");
    let small = LocalService::start("small");
    let (_big_client, big_url, _) = eu_tunnel(&stack, &big, &[AP]);
    let (_small_client, small_url) = second_eu_tunnel(&stack, &small);

    // A visitor asks ap for 64 MiB of the first tunnel and reads only the start.
    let mut stalled =
        std::net::TcpStream::connect(stack.regions[AP].http_addr()).expect("connect to ap");
    let size = 64 * 1024 * 1024;
    write!(
        stalled,
        "GET /blob/{size} HTTP/1.1\r\nHost: {}\r\n\r\n",
        host_of(&big_url)
    )
    .expect("send the request");
    let mut start = [0u8; 1024];
    stalled.read_exact(&mut start).expect("the answer begins");
    let received = wait_relay_bytes_still(&stack, "received");
    assert!(
        received < size as f64,
        "the download stopped short of its end ({received} bytes)"
    );

    assert_answers_at_ap(&stack, &small_url, "one visitor stops reading");
    drop(stalled);
}

#[test]
fn a_tunnel_whose_service_stops_reading_an_upload_holds_up_no_other_tunnel() {
    let stack = mesh_stack();
    // A local service that takes connections and never reads from them.
    let sink = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the sink");
    let sink_port = sink.local_addr().expect("sink address").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in sink.incoming().flatten() {
            held.push(conn);
        }
    });
    let small = LocalService::start("small");
    let (_sink_client, sink_url) = stack
        .http_tunnel(EU, "eu-sink", Some(&stack.pro_token()), sink_port)
        .expect("the sink's tunnel through eu");
    let (_small_client, small_url) = second_eu_tunnel(&stack, &small);

    // A visitor at ap uploads 64 MiB to the sink, which reads none of it.
    let mut upload =
        std::net::TcpStream::connect(stack.regions[AP].http_addr()).expect("connect to ap");
    let size = 64 * 1024 * 1024;
    write!(
        upload,
        "POST /upload HTTP/1.1\r\nHost: {}\r\nContent-Length: {size}\r\n\r\n",
        host_of(&sink_url)
    )
    .expect("send the head");
    let mut writer = upload.try_clone().expect("clone");
    std::thread::spawn(move || {
        let chunk = vec![b'u'; 64 * 1024];
        for _ in 0..size / chunk.len() {
            if writer.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let sent = wait_relay_bytes_still(&stack, "sent");
    assert!(
        sent < size as f64,
        "the upload stopped short of its end ({sent} bytes)"
    );

    assert_answers_at_ap(&stack, &small_url, "one service stops reading");
    drop(upload);
}

/// A metric of ap's edge, without labels (-1 when it is missing).
fn ap_metric(stack: &Stack, name: &str) -> f64 {
    metric(&edge_metrics(stack, AP), name, &[]).unwrap_or(-1.0)
}

#[test]
fn relayed_visitors_who_stop_reading_make_the_relaying_edge_hold_no_more_than_its_budget() {
    let budget = 4 * 1024 * 1024;
    let stack = mesh_stack_with(&format!(
        "relay_window_budget_bytes = {budget}\nvisitor_write_stall_seconds = 0\n"
    ));
    let big = LocalService::start("big");
    let small = LocalService::start("small");
    let (_big_client, big_url, _) = eu_tunnel(&stack, &big, &[AP]);
    let (_small_client, small_url) = second_eu_tunnel(&stack, &small);

    // Ten visitors at ap start downloads far past what sockets and windows hold, and stop.
    let size = 24_000_000;
    let mut stalled: Vec<_> = (0..10)
        .map(|_| start_download(stack.regions[AP].http_addr(), &big_url, size))
        .collect();
    wait_relay_bytes_still(&stack, "received");
    // Each relay channel opens with 32 KiB; all the rest of every window came out of the
    // budget (with 1 MiB per channel outside it, as before `v4`, the holder could have sent
    // 10 MiB here).
    let unread = ap_metric(&stack, "nearhop_edge_relay_window_unread_bytes");
    let bound = f64::from(budget) + 12.0 * 32.0 * 1024.0;
    assert!(
        unread > 0.0 && unread <= bound,
        "the holder may still send ap {unread} bytes its visitors have not read (bound {bound})"
    );
    let grown = ap_metric(&stack, "nearhop_edge_relay_window_grown_bytes");
    let three_quarters = f64::from(budget) * 0.75;
    assert!(
        grown > 0.0 && grown <= three_quarters,
        "one tunnel's relay windows took {grown} bytes of ap's budget (at most {three_quarters})"
    );
    assert!(
        ap_metric(&stack, "nearhop_edge_relay_window_growth_refused_total") > 0.0,
        "ten 1 MiB windows do not fit in 3 MiB: the budget said no"
    );
    assert!(
        ap_metric(&stack, "nearhop_edge_relay_window_share_limited_total") > 0.0,
        "the tunnel's share said no"
    );

    // A visitor of the same tunnel keeps 32 KiB: every byte still comes.
    let mut more = begin_download(&big_url, stack.regions[AP].http_addr(), 3_000_000);
    finish_download(more.0, more.1, 3_000_000, "a download with the share spent");
    more = begin_download(&small_url, stack.regions[AP].http_addr(), 2_000_000);
    finish_download(more.0, more.1, 2_000_000, "another tunnel's download");
    eventually("the finished downloads' windows are given back", || {
        let now = ap_metric(&stack, "nearhop_edge_relay_window_grown_bytes");
        anyhow::ensure!(now == grown, "grown {now}, {grown} before them");
        Ok(())
    });
    // A visitor of another tunnel who stops reading still gets a full first window, out of
    // the reserve.
    let other = start_download(stack.regions[AP].http_addr(), &small_url, size);
    wait_relay_bytes_still(&stack, "received");
    let grown_now = ap_metric(&stack, "nearhop_edge_relay_window_grown_bytes");
    let first_window = f64::from(1024 * 1024 - 32 * 1024);
    assert!(
        grown_now - grown >= first_window && grown_now <= f64::from(budget),
        "the other tunnel's visitor took {} bytes of the budget (a full first window: {first_window})",
        grown_now - grown
    );

    // A stalled visitor reads again and gets every byte; the others leave, and every
    // window goes back to the budget.
    finish_blob(&mut stalled[0], 0, size, "a stalled relayed download");
    drop(stalled);
    drop(other);
    eventually("ap's relay windows are given back", || {
        let grown = ap_metric(&stack, "nearhop_edge_relay_window_grown_bytes");
        let unread = ap_metric(&stack, "nearhop_edge_relay_window_unread_bytes");
        anyhow::ensure!(
            grown == 0.0 && unread == 0.0,
            "grown {grown}, unread {unread}"
        );
        Ok(())
    });
}

#[test]
fn an_idle_relayed_keep_alive_connection_gives_its_window_back() {
    // Idle connections are not closed meanwhile (which gives a window back too).
    let stack = mesh_stack_with("visitor_header_timeout_seconds = 3600\n");
    let local = LocalService::start("local");
    let (_client, url, _) = eu_tunnel(&stack, &local, &[AP]);
    let ap = stack.regions[AP].http_addr();
    let relayed = || {
        metric_sum(
            &edge_metrics(&stack, AP),
            "nearhop_edge_relay_connections_total",
            &[("peer", "eu-1"), ("direction", "out")],
        )
    };
    // One keep-alive visitor downloads 3 MB through ap, then idles on its connection.
    let visitor = visitor_from(&url, ap, VISITOR);
    let download = |size: usize| {
        let body = visitor
            .get(format!("{}/blob/{size}", url_at(&url, ap)))
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.bytes())
            .expect("the download");
        assert_blob(&body, size);
    };
    download(3_000_000);
    let channels = relayed();
    assert!(
        ap_metric(&stack, "nearhop_edge_relay_window_grown_bytes") > 0.0,
        "the download's window was raised out of ap's budget"
    );
    // Its relay channel stays open; its window goes back to the budget, and the holder
    // may send it 32 KiB until it asks again.
    eventually("the idle connection's window is given back", || {
        let grown = ap_metric(&stack, "nearhop_edge_relay_window_grown_bytes");
        let unread = ap_metric(&stack, "nearhop_edge_relay_window_unread_bytes");
        let open = ap_metric(&stack, "nearhop_edge_visitor_connections_active");
        assert!(open >= 1.0, "the visitor's connection was closed");
        anyhow::ensure!(
            grown == 0.0 && unread <= 32.0 * 1024.0,
            "grown {grown}, unread {unread}"
        );
        Ok(())
    });
    // The next download on the same connection (the same relay channel) comes whole.
    download(5_000_000);
    assert_eq!(relayed(), channels, "the same relay channel carried both");
    for region in [AP, EU] {
        let cut = metric(
            &edge_metrics(&stack, region),
            "nearhop_edge_relay_errors_total",
            &[("cause", "credit_exceeded")],
        );
        assert_eq!(cut, Some(0.0), "no side sent past its credit");
    }
}

/// Starts a `size`-byte download of `url` at `edge` and reads its first MiB.
fn begin_download(
    url: &str,
    edge: SocketAddr,
    size: usize,
) -> (reqwest::blocking::Response, usize) {
    let mut resp = visitor_from(url, edge, VISITOR)
        .get(format!("{}/blob/{size}", url_at(url, edge)))
        .timeout(Duration::from_secs(120))
        .send()
        .expect("the download starts");
    assert_eq!(resp.status(), 200);
    let mut first = vec![0u8; 1 << 20];
    resp.read_exact(&mut first).expect("the first MiB");
    assert_blob(&first, first.len());
    (resp, first.len())
}

/// Reads the rest of a download begun by [`begin_download`] and checks every byte.
fn finish_download(mut resp: reqwest::blocking::Response, at: usize, size: usize, what: &str) {
    finish_blob(&mut resp, at, size, what);
}

/// Sends SIGTERM to the edge of `region` (a graceful stop, as systemd and Ansible do) and
/// returns at once, while it drains.
fn begin_stop(stack: &Stack, region: usize) {
    let pid = stack.edges[region].pid().expect("the edge runs");
    // SAFETY: kill(2) on a child the stack spawned and has not reaped.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
}

#[test]
fn an_edge_that_stops_lets_the_downloads_it_relays_or_holds_finish() {
    let mut stack = mesh_stack();
    let local = LocalService::start("local");
    let (_client, url, _) = eu_tunnel(&stack, &local, &[US, AP]);
    // Far more than the windows and socket buffers past the holder hold while the visitor
    // holds off (a relay channel's window grows to 8 MiB, the sockets' buffers take several
    // more: with 16 MiB the holder had sometimes handed over the last byte before the
    // visitor read again, and its drain ended at once), and little enough to cross two SSH
    // hops of a debug build well within the drain (10 s).
    let size = 40 * 1024 * 1024;
    // Longer than the 3 heartbeats (of 1 s here) after which a silent edge leaves its
    // peers' lists, shorter than the drain (10 s).
    let held = Duration::from_secs(5);

    // The relaying edge is drained as drain-edge.yml does it (marked draining, then
    // SIGTERM): its visitor's download, relayed from eu, goes on to the end within the
    // drain, though the visitor holds off reading for longer than 3 heartbeats.
    let (resp, at) = begin_download(&url, stack.regions[AP].http_addr(), size);
    let ap_id = &stack.edges[AP].spec.edge_id;
    psql(
        &stack.pg.primary.endpoint,
        &format!("UPDATE edges SET draining = true WHERE id = '{ap_id}'"),
    )
    .expect("marking ap draining");
    // Control's peer lists change at the next heartbeats (1 s).
    std::thread::sleep(Duration::from_secs(2));
    begin_stop(&stack, AP);
    std::thread::sleep(held);
    finish_download(resp, at, size, "relayed by a draining edge");
    stack.stop_edge("ap", Duration::from_secs(15));

    // The holder stops: the download it serves through us goes on to the end too.
    let (resp, at) = begin_download(&url, stack.regions[US].http_addr(), size);
    begin_stop(&stack, EU);
    std::thread::sleep(held);
    // Meanwhile (eu drains until this download ends) us was told to forget eu's names: a
    // new visitor there waits for the tunnel to come back rather than being relayed to an
    // edge that takes no one new.
    let metrics = edge_metrics(&stack, US);
    assert_eq!(
        metric_sum(&metrics, "nearhop_edge_mesh_link_up", &[("peer", "eu-1")]),
        1.0,
        "the link to the draining eu is up:\n{metrics}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "nearhop_edge_mesh_holder_names",
            &[("peer", "eu-1")]
        ),
        0.0,
        "us forgot what the draining eu holds:\n{metrics}"
    );
    // A new visitor there now (a POST, which is never sent twice) waits for the tunnel's
    // client to come back, and gets the page when it does not, not a 502 from an edge
    // that takes no one new.
    let post = {
        let (url, us) = (url.clone(), stack.regions[US].http_addr());
        std::thread::spawn(move || {
            let r = visitor_from(&url, us, VISITOR)
                .post(format!("{}/echo", url_at(&url, us)))
                .body("hello")
                .send()?;
            Ok::<_, reqwest::Error>((r.status().as_u16(), r.text()?))
        })
    };
    finish_download(resp, at, size, "held by a stopping edge");
    let (status, body) = post.join().expect("the visitor thread").expect("an answer");
    assert!(
        status == 404 && body.contains("No tunnel here"),
        "a new visitor during the holder's drain: {status} {body}"
    );
    stack.stop_edge("eu", Duration::from_secs(15));
}
