//! Two edges of one region behind a round-robin TCP balancer that speaks PROXY protocol v2
//! (`nearhop_stack::balancer`), as an operator would scale out a region: every request
//! reaches the tunnel whichever edge the balancer picked (the other edge relays it over the
//! mesh), the tunnel sees the real client, not the balancer, and so does its `w:` allowlist;
//! the TLS port (header, then ClientHello) and the SSH port take the header too. PROXY headers from anyone but the trusted balancer are
//! refused with a sentence.

use nearhop_stack::balancer::{exchange_from, v2_header, Balancer};
use nearhop_stack::edge::{EdgeProcess, SshArgs};
use nearhop_stack::metrics::metric_sum;
use nearhop_stack::prelude::*;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;

/// The balancer's own address, the only one the edges trust for PROXY headers.
const BALANCER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 100);
/// The visitor's address, distinct from every edge's and the balancer's.
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);
/// Requests sent through the balancer.
const REQUESTS: usize = 1000;

fn two_edges_trusting_the_balancer() -> Stack {
    Stack::start(StackOptions {
        regions: vec![("us".into(), Ipv4Addr::new(127, 0, 0, 1))],
        with_edges: true,
        edges_per_region: 2,
        edge_toml: format!("proxy_protocol_from = [\"{BALANCER_IP}/32\"]\n"),
        ..StackOptions::default()
    })
    .expect("stack starts")
}

fn edge_metrics(edge: &EdgeProcess) -> String {
    edge.metrics().expect("edge metrics")
}

fn tls_addr(edge: &EdgeProcess) -> SocketAddr {
    SocketAddr::from((edge.spec.ip, edge.spec.tls))
}

/// The tunnel at `url` as reached at `addr` (its name, `addr`'s port): reqwest's `resolve`
/// overrides the address only, so the port goes in the URL.
fn at(url: &str, addr: SocketAddr) -> String {
    format!("http://{}:{}", host_of(url), addr.port())
}

/// A client that sends every request from `CLIENT_IP` on a new connection (so the balancer
/// alternates edges), with the tunnel's name as `Host`.
fn client_via(balancer: &Balancer, url: &str) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .resolve(&host_of(url), balancer.addr)
        .local_address(std::net::IpAddr::V4(CLIENT_IP))
        .pool_max_idle_per_host(0)
        .timeout(PATIENCE)
        .build()
        .expect("client")
}

/// Waits until `edge` serves the tunnel at `url` (its holder table has learnt the name).
fn wait_until_served_by(edge: &EdgeProcess, url: &str) {
    let url = &at(url, edge.http_addr());
    let client = visitor(url, edge.http_addr());
    eventually("the edge serves the tunnel", || {
        let r = client.get(format!("{url}/ready")).send()?;
        anyhow::ensure!(r.status() == 200, "status {}", r.status());
        Ok(())
    });
}

#[test]
fn a_thousand_requests_through_a_proxy_v2_balancer_all_reach_the_tunnel_as_the_real_client() {
    let stack = two_edges_trusting_the_balancer();
    let edges = stack.edges_of("us");
    assert_eq!(edges.len(), 2);
    let (holder, other) = (edges[0], edges[1]);
    let local = LocalService::start("local");
    let token = stack.pro_token();
    let (_client, url) = stack
        .http_tunnel(0, "balanced", Some(&token), local.port)
        .expect("tunnel");
    wait_until_served_by(other, &url);

    let balancer = Balancer::start(
        Ipv4Addr::LOCALHOST,
        BALANCER_IP,
        vec![holder.http_addr(), other.http_addr()],
    );
    let client = client_via(&balancer, &url);
    let url = at(&url, balancer.addr);
    let mut errors = Vec::new();
    for i in 0..REQUESTS {
        let answer = client
            .get(format!("{url}/n/{i}"))
            .send()
            .map_err(|e| format!("request {i}: {e:#}"))
            .and_then(|r| {
                let status = r.status();
                let body = r.text().map_err(|e| format!("request {i} body: {e:#}"))?;
                Ok((status, body))
            });
        match answer {
            Ok((status, body)) if status == 200 && body.contains("\nxff=127.0.0.9\n") => {}
            Ok((status, body)) => errors.push(format!("request {i}: {status}: {body}")),
            Err(e) => errors.push(e),
        }
    }
    assert!(
        errors.is_empty(),
        "{} of {REQUESTS} requests failed, the first: {:?}\nsecond edge's log:\n{}",
        errors.len(),
        errors.first(),
        other.log_tail(40)
    );
    assert_eq!(balancer.carried.load(Ordering::Relaxed), REQUESTS as u64);

    // Both edges took the balancer's headers, and the one without the tunnel relayed.
    let proxied = |edge: &EdgeProcess| {
        metric_sum(
            &edge_metrics(edge),
            "nearhop_edge_proxy_protocol_headers_total",
            &[("listener", "http"), ("command", "proxy")],
        )
    };
    let (at_holder, at_other) = (proxied(holder), proxied(other));
    assert_eq!(at_holder + at_other, REQUESTS as f64);
    assert!(
        at_holder > 0.0 && at_other > 0.0,
        "{at_holder} / {at_other}"
    );
    let relayed = metric_sum(
        &edge_metrics(other),
        "nearhop_edge_relay_connections_total",
        &[("direction", "out")],
    );
    assert!(relayed > 0.0, "the second edge relayed to the holder");
}

#[test]
fn proxy_headers_from_untrusted_addresses_are_refused_and_trusted_ones_must_send_one() {
    let stack = two_edges_trusting_the_balancer();
    let edges = stack.edges_of("us");
    let (holder, other) = (edges[0], edges[1]);
    let local = LocalService::start("local");
    let token = stack.pro_token();
    let (_client, url) = stack
        .http_tunnel(0, "guarded", Some(&token), local.port)
        .expect("tunnel");
    wait_until_served_by(other, &url);
    let host = host_of(&url);
    let request = format!("GET /spoofed HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let served_before = local.served.load(Ordering::Relaxed);

    // A client that is not the balancer claims to be 203.0.113.7, in v1 and in v2.
    let spoofed: SocketAddr = "203.0.113.7:5555".parse().expect("addr");
    let mut v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\n".to_vec();
    v1.extend_from_slice(request.as_bytes());
    let mut v2 = v2_header(spoofed, holder.http_addr());
    v2.extend_from_slice(request.as_bytes());
    for (what, to, bytes) in [
        ("v1 to the holder", holder.http_addr(), &v1),
        ("v2 to the other edge", other.http_addr(), &v2),
        ("v1 on the TLS port", tls_addr(holder), &v1),
    ] {
        let answer = exchange_from(CLIENT_IP, to, bytes).expect("exchange");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400 "), "{what}: {answer}");
        assert!(
            answer.contains("accepts PROXY protocol headers only from its trusted balancers"),
            "{what}: {answer}"
        );
    }
    let refused = |edge: &EdgeProcess, listener: &str, cause: &str| {
        metric_sum(
            &edge_metrics(edge),
            "nearhop_edge_proxy_protocol_refused_total",
            &[("listener", listener), ("cause", cause)],
        )
    };
    assert_eq!(refused(holder, "http", "untrusted"), 1.0);
    assert_eq!(refused(other, "http", "untrusted"), 1.0);
    assert_eq!(refused(holder, "tls", "untrusted"), 1.0);

    // On the SSH port: the edge's identification, then the end, and the count.
    let mut ssh_hello = v1.clone();
    ssh_hello.truncate(v1.len() - request.len());
    ssh_hello.extend_from_slice(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n");
    let answer = exchange_from(CLIENT_IP, holder.ssh_addr(), &ssh_hello).expect("exchange");
    assert_eq!(
        String::from_utf8_lossy(&answer),
        "SSH-2.0-nearhop\r\n",
        "no key exchange after an untrusted PROXY header"
    );
    assert_eq!(refused(holder, "ssh", "untrusted"), 1.0);

    // The balancer's address without a header: dropped without a word, nothing forwarded.
    let answer =
        exchange_from(BALANCER_IP, holder.http_addr(), request.as_bytes()).expect("exchange");
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    assert_eq!(refused(holder, "http", "missing"), 1.0);
    // The operator hears of it: at `warn`, naming the balancer and what to do.
    eventually("the holder logs the balancer's dropped connection", || {
        let log = std::fs::read_to_string(holder.log())?;
        let line = log
            .lines()
            .find(|l| l.contains("connection from a balancer in proxy_protocol_from dropped"))
            .ok_or_else(|| anyhow::anyhow!("no such line yet"))?;
        anyhow::ensure!(
            line.contains("WARN") && line.contains(&BALANCER_IP.to_string()),
            "{line}"
        );
        anyhow::ensure!(line.contains("send-proxy"), "says what to do: {line}");
        Ok(())
    });
    assert_eq!(
        local.served.load(Ordering::Relaxed),
        served_before,
        "no refused request reached the local service"
    );

    // The same v1 header from the balancer's address is believed.
    let answer = exchange_from(BALANCER_IP, holder.http_addr(), &v1).expect("exchange");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("\nxff=203.0.113.7\n"), "{answer}");

    // Without any header the client is still served directly, as itself.
    let answer = exchange_from(CLIENT_IP, other.http_addr(), request.as_bytes()).expect("exchange");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("\nxff=127.0.0.9\n"), "{answer}");
}

#[test]
fn an_allowlist_sees_the_client_behind_the_balancer_and_ssh_passes_one_too() {
    let stack = two_edges_trusting_the_balancer();
    let edges = stack.edges_of("us");
    let (holder, other) = (edges[0], edges[1]);
    let local = LocalService::start("local");
    let token = stack.pro_token();
    let args = SshArgs {
        command: vec![format!("w:{CLIENT_IP}")],
        ..SshArgs::http_tunnel(Some(&token), local.port)
    };
    // The creator, too, comes through a balancer (in front of the SSH port).
    let ssh_balancer = Balancer::start(Ipv4Addr::LOCALHOST, BALANCER_IP, vec![holder.ssh_addr()]);
    let mut client = SshClient::start(
        &stack.path().join("ssh"),
        "allowlisted",
        ssh_balancer.addr,
        &args,
    )
    .expect("ssh starts");
    let url = client.wait_for_url(PATIENCE).expect("url");
    let ssh_headers = metric_sum(
        &edge_metrics(holder),
        "nearhop_edge_proxy_protocol_headers_total",
        &[("listener", "ssh"), ("command", "proxy")],
    );
    assert_eq!(ssh_headers, 1.0);
    let balancer = Balancer::start(
        Ipv4Addr::LOCALHOST,
        BALANCER_IP,
        vec![holder.http_addr(), other.http_addr()],
    );
    // The balancer's own address is not on the list, the client's is: through the balancer
    // (either edge), the client is let in.
    let via = client_via(&balancer, &url);
    let url = at(&url, balancer.addr);
    eventually("the client is let in through both edges", || {
        for _ in 0..2 {
            let r = via.get(format!("{url}/in")).send()?;
            anyhow::ensure!(r.status() == 200, "status {}", r.status());
        }
        Ok(())
    });
    // 127.0.0.1, straight to the edge, is not.
    let direct_url = at(&url, holder.http_addr());
    let direct = visitor(&direct_url, holder.http_addr())
        .get(format!("{direct_url}/out"))
        .send()
        .expect("answer");
    assert_eq!(direct.status(), 403);
}

/// HTTPS through the balancer: a trusted v2 header, then the visitor's ClientHello on the
/// TLS port. Whichever edge the balancer picks (the holder, or the other edge, which
/// terminates the TLS and relays the requests inside), the tunnel sees the client the header
/// names in `X-Forwarded-For`. The balancer's own address on the TLS port without a header
/// is dropped before any TLS, counted, and reaches no tunnel.
#[test]
fn a_trusted_header_before_a_client_hello_names_the_https_visitor() {
    let stack = Stack::start(StackOptions {
        regions: vec![("us".into(), Ipv4Addr::new(127, 0, 0, 1))],
        with_edges: true,
        edge_https: true,
        edges_per_region: 2,
        edge_toml: format!("proxy_protocol_from = [\"{BALANCER_IP}/32\"]\n"),
        ..StackOptions::default()
    })
    .expect("stack starts");
    let edges = stack.edges_of("us");
    let (holder, other) = (edges[0], edges[1]);
    let local = LocalService::start("local");
    let token = stack.pro_token();
    let (_client, url) = stack
        .http_tunnel(0, "https", Some(&token), local.port)
        .expect("tunnel");
    wait_until_served_by(other, &url);
    let host = host_of(&url);
    let ca = stack.path().join("tls/zone-cert.pem");
    // curl from `from` to `to`, HTTPS with the stack's CA: (exit code, body, stderr).
    let https_from = |from: Ipv4Addr, to: SocketAddr, path: &str| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "20", "--http1.1", "--interface"])
            .arg(from.to_string())
            .arg("--cacert")
            .arg(&ca)
            .arg("--resolve")
            .arg(format!("{host}:{}:{}", to.port(), to.ip()))
            .arg(format!("https://{host}:{}{path}", to.port()))
            .output()
            .expect("curl runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let headers = |edge: &EdgeProcess| {
        metric_sum(
            &edge_metrics(edge),
            "nearhop_edge_proxy_protocol_headers_total",
            &[("listener", "tls"), ("command", "proxy")],
        )
    };

    let balancer = Balancer::start(
        Ipv4Addr::LOCALHOST,
        BALANCER_IP,
        vec![tls_addr(holder), tls_addr(other)],
    );
    // Four connections, two to each edge.
    for i in 0..4 {
        let (code, body, stderr) = https_from(CLIENT_IP, balancer.addr, &format!("/tls/{i}"));
        assert_eq!(code, 0, "HTTPS {i} through the balancer: {stderr}");
        assert!(
            body.starts_with(&format!("hello from local /tls/{i}")),
            "HTTPS {i}: {body}"
        );
        assert!(
            body.contains("\nxff=127.0.0.9\n") && body.contains("\nxfp=https\n"),
            "HTTPS {i}: the tunnel sees the client behind the balancer: {body}"
        );
    }
    assert_eq!(balancer.carried.load(Ordering::Relaxed), 4);
    assert_eq!(
        (headers(holder), headers(other)),
        (2.0, 2.0),
        "each edge read the balancer's header on its TLS port"
    );

    // The balancer's address straight to the TLS port, with no header: no TLS at all, and
    // the refusal counted as a missing header (a ClientHello is no broken header), which
    // `NearhopBalancerHeaderMissing` alerts on.
    let served_before = local.served.load(Ordering::Relaxed);
    let refused = || {
        metric_sum(
            &edge_metrics(holder),
            "nearhop_edge_proxy_protocol_refused_total",
            &[("listener", "tls"), ("cause", "missing")],
        )
    };
    assert_eq!(refused(), 0.0);
    let (code, body, stderr) = https_from(BALANCER_IP, tls_addr(holder), "/no-header");
    assert_ne!(code, 0, "HTTPS without a header was served: {body}");
    assert!(body.is_empty(), "{body}");
    assert_eq!(
        refused(),
        1.0,
        "the dropped connection is counted: {stderr}"
    );
    assert_eq!(
        local.served.load(Ordering::Relaxed),
        served_before,
        "the connection without a header reached the tunnel"
    );
}
