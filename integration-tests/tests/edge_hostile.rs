//! Hostile and careless input against a real edge: bad tokens, absurd usernames, thousands
//! of forward requests, slowloris visitors, megabyte header lines, unknown hosts. Each gets a
//! clear answer; the edge keeps serving and leaks nothing.

use nearhop_stack::chromium::Chromium;
use nearhop_stack::edge::{url_host_port, SshArgs};
use nearhop_stack::metrics::metric_sum;
use nearhop_stack::prelude::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn assert_serving(s: &EdgeStack, url: &str) {
    let body = s.visit(url, "/hello").text().unwrap();
    assert!(body.starts_with("hello from local"), "{body}");
}

#[test]
fn bad_tokens_and_absurd_usernames_get_clear_sentences() {
    let mut s = EdgeStack::start("");
    let local = LocalService::start("local");
    let cases = [
        ("no-such-token", "Your token was not accepted"),
        ("tok+bogus", "\"bogus\" is not a keyword"),
        ("tok++http", "empty part"),
        ("http+tcp", "choose one of http, tcp or tls"),
        ("tok~x*y", "holds characters that no nearhop token has"),
        (
            "force+nh_secretTOKENsecretTOKENsecret123",
            "the token must come first",
        ),
    ];
    for (i, (user, expected)) in cases.iter().enumerate() {
        let mut c = s.ssh(
            &format!("bad-{i}"),
            &SshArgs::http_tunnel(Some(user), local.port),
        );
        let out = c.wait_exit(PATIENCE).unwrap();
        assert!(out.contains(expected), "{user:?}: {out}");
        assert!(!out.contains("secretTOKEN"), "the token was echoed: {out}");
    }
    let long = "a".repeat(5000);
    let mut c = s.ssh("long", &SshArgs::http_tunnel(Some(&long), local.port));
    let out = c.wait_exit(PATIENCE).unwrap();
    assert!(out.contains("characters long"), "{out}");
    assert!(s.edge.is_running());
    // Refusals of the user's own request are no failure of control's.
    let m = s.edge.metrics().unwrap();
    assert_eq!(
        metric(
            &m,
            "nearhop_edge_control_errors_total",
            &[("call", "create_tunnel")]
        )
        .unwrap_or(0.0),
        0.0,
        "a refused token counted as a control error"
    );
    // A token in the wrong place is neither echoed (checked above) nor logged.
    let log = std::fs::read_to_string(s.edge.log()).unwrap();
    assert!(
        log.contains("the token must come first"),
        "the refusal is logged"
    );
    assert!(
        !log.contains("secretTOKEN"),
        "the token reached the edge's log"
    );
}

#[test]
fn thousands_of_forward_requests_are_capped_and_nothing_leaks() {
    let s = EdgeStack::start("max_forwards_per_session = 8\n");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let args = SshArgs {
        user: Some(token),
        forwards: (0..2000)
            .map(|i| format!("n{i}:0:localhost:{}", local.port))
            .collect(),
        ..SshArgs::default()
    };
    let mut c = s.ssh("flood", &args);
    c.wait_for("at most 8 forwards per connection", PATIENCE)
        .unwrap();
    // The 8 accepted forwards are set up concurrently; their URLs arrive in any order.
    eventually("8 tunnels up", || {
        let out = c.output();
        let urls = out.lines().filter(|l| l.contains("http://n")).count();
        anyhow::ensure!(urls == 8, "{urls} URLs so far:\n{out}");
        Ok(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let out = c.output();
    let urls = out.lines().filter(|l| l.contains("http://n")).count();
    assert_eq!(urls, 8, "no more than the cap: {out}");
    let m = s.edge.metrics().unwrap();
    assert!(
        m.contains("nearhop_edge_tunnels_active{kind=\"http\",zone=\"a.tunnel.test\"} 8"),
        "{m}"
    );
    c.stop();
    eventually("tunnels closed after the client left", || {
        let m = s.edge.metrics()?;
        anyhow::ensure!(
            m.contains("nearhop_edge_tunnels_active{kind=\"http\",zone=\"a.tunnel.test\"} 0"),
            "still live"
        );
        anyhow::ensure!(
            metric(&m, "nearhop_edge_ssh_sessions_active", &[]) == Some(0.0),
            "session"
        );
        Ok(())
    });
}

#[test]
fn slowloris_visitors_are_cut_and_others_still_served() {
    let s = EdgeStack::start("visitor_header_timeout_seconds = 2\n");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let mut c = s.ssh("slow", &SshArgs::http_tunnel(Some(&token), local.port));
    let url = c.wait_for_url(PATIENCE).unwrap();
    let (host, _) = url_host_port(&url).unwrap();
    let mut slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut t = TcpStream::connect(s.edge.http_addr()).unwrap();
            write!(t, "GET / HTTP/1.1\r\nHost: {host}\r\nX-Slow: ").unwrap();
            t
        })
        .collect();
    assert_serving(&s, &url);
    for t in &mut slow {
        // Closed (0 bytes or reset) or answered with an error status, by the edge: a read
        // timeout means the edge held the connection open past its 2 s.
        let got = closed_by_edge(t);
        let text = String::from_utf8_lossy(&got);
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 4"), "{text}");
    }
    // The edge let go of them itself, before this side closed any.
    eventually("slow connections released", || {
        let m = s.edge.metrics()?;
        anyhow::ensure!(
            metric(&m, "nearhop_edge_visitor_connections_active", &[]) == Some(0.0),
            "connections still open"
        );
        Ok(())
    });
    drop(slow);
}

#[test]
fn silent_and_slow_admin_api_callers_are_cut() {
    let s = EdgeStack::start("visitor_header_timeout_seconds = 2\n");
    let admin = (s.edge.spec.ip, s.edge.spec.admin);
    let mut silent = TcpStream::connect(admin).unwrap();
    let mut slow = TcpStream::connect(admin).unwrap();
    write!(slow, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
    for t in [&mut silent, &mut slow] {
        t.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut buf = [0u8; 512];
        // Closed, reset, or answered with an error status; not left waiting.
        match t.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(text.starts_with("HTTP/1.1 4"), "{text}");
            }
            Err(e) => panic!("the admin API held a silent connection open: {e}"),
        }
    }
    // The admin API still answers.
    s.edge.metrics().expect("metrics");
}

#[test]
fn megabyte_header_lines_and_unknown_hosts_get_errors_not_crashes() {
    let s = EdgeStack::start("");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let mut c = s.ssh("big", &SshArgs::http_tunnel(Some(&token), local.port));
    let url = c.wait_for_url(PATIENCE).unwrap();
    let (host, _) = url_host_port(&url).unwrap();

    let edge_4xx = || {
        metric(
            &s.edge.metrics().unwrap(),
            "nearhop_edge_http_responses_total",
            &[("class", "4xx"), ("origin", "edge")],
        )
        .unwrap_or(0.0)
    };
    let refused_before = edge_4xx();
    let mut pages = 0;
    for _ in 0..5 {
        let t = TcpStream::connect(s.edge.http_addr()).unwrap();
        let big = "a".repeat(2 * 1024 * 1024);
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nX-Big: {big}\r\n\r\n");
        // Written beside the reading: the edge answers after 64 KiB of the head and closes
        // after reading 64 KiB more, so the rest of the 2 MB may meet a reset, which can
        // also take the answer with it. Either way the edge ends the connection.
        let mut writer = t.try_clone().unwrap();
        let sending = std::thread::spawn(move || {
            let _ = writer.write_all(request.as_bytes());
        });
        let mut t = t;
        let got = closed_by_edge(&mut t);
        sending.join().unwrap();
        let text = String::from_utf8_lossy(&got);
        if !text.is_empty() {
            assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
            assert!(text.contains("clear this site's cookies"), "{text}");
            pages += 1;
        }
    }
    assert!(
        pages > 0,
        "none of five 2 MB heads was answered with the 431 page"
    );

    let resp = reqwest::blocking::Client::new()
        .get(format!("http://{}/", s.edge.http_addr()))
        .header("host", "nobody.a.tunnel.test")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.text().unwrap().contains("No tunnel here"));

    // A TLS ClientHello's first bytes on the HTTP port: a 400 page, and the connection
    // ends.
    let mut t = TcpStream::connect(s.edge.http_addr()).unwrap();
    t.write_all(b"\x16\x03\x01\x02\x00garbage that is not HTTP\r\n\r\n")
        .unwrap();
    let got = closed_by_edge(&mut t);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");

    assert_serving(&s, &url);
    // The 2 MB heads, the unknown host and the garbage: each an error the edge answered
    // (the 431s the reset took are counted all the same).
    eventually("the edge counted its refusals", || {
        let refused = edge_4xx() - refused_before;
        anyhow::ensure!(refused >= 7.0, "{refused} refusals counted");
        Ok(())
    });
}

/// Request heads hyper cannot read (not HTTP, a broken field, cookies past
/// `visitor_max_header_bytes`) get a page that says what was wrong and what to do, on a
/// connection's first request and on a later one, instead of hyper's bare status; the admin
/// API says it in its JSON. A browser whose cookies grew too large shows that page.
#[test]
fn unreadable_request_heads_get_a_page_that_says_why() {
    let s = EdgeStack::start("");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let mut c = s.ssh(
        "unreadable",
        &SshArgs::http_tunnel(Some(&token), local.port),
    );
    let url = c.wait_for_url(PATIENCE).unwrap();
    let (host, _) = url_host_port(&url).unwrap();
    let http = s.edge.http_addr();
    let page_of = |answer: &str, status: &str, sentence: &str| {
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{answer}"
        );
        assert!(answer.contains("content-type: text/html"), "{answer}");
        assert!(answer.contains(sentence), "{answer}");
    };

    let answer = raw_exchange(http, "GARBAGE\r\n\r\n");
    page_of(&answer, "400", "it is not valid HTTP/1.1");
    // After a good request on the same connection: the first is answered, the second refused.
    let answer = raw_exchange(
        http,
        &format!(
            "GET /hello HTTP/1.1\r\nHost: {host}\r\n\r\n\
             GET / HTTP/1.1\r\nHost: {host}\r\nBad Header\r\n\r\n"
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let second = answer
        .find("HTTP/1.1 400 ")
        .unwrap_or_else(|| panic!("{answer}"));
    page_of(&answer[second..], "400", "it is not valid HTTP/1.1");
    // Cookies over the 64 KiB a head may have: the page, not a reset, although the edge
    // stopped reading before the head ended.
    let cookies = format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nCookie: c={}\r\n\r\n",
        "x".repeat(70_000)
    );
    page_of(
        &raw_exchange(http, &cookies),
        "431",
        "clear this site's cookies",
    );
    // Cleartext HTTP/2 (curl --http2-prior-knowledge, gRPC on http://) is told, in HTTP/2,
    // that this port speaks HTTP/1.1: SETTINGS, then GOAWAY HTTP_1_1_REQUIRED with a
    // sentence.
    let mut h2 = TcpStream::connect(http).unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let frames = closed_by_edge(&mut h2);
    assert_eq!(
        &frames[..9],
        &[0, 0, 0, 4, 0, 0, 0, 0, 0],
        "SETTINGS: {frames:?}"
    );
    let goaway = &frames[9..];
    assert_eq!(goaway[3], 7, "GOAWAY: {frames:?}");
    assert_eq!(
        &goaway[13..17],
        &[0, 0, 0, 0xd],
        "HTTP_1_1_REQUIRED: {frames:?}"
    );
    let said = String::from_utf8_lossy(&goaway[17..]);
    assert!(said.contains("speaks HTTP/1.1 only"), "{said}");
    let curl = std::process::Command::new("curl")
        .args(["-sSv", "--http2-prior-knowledge", "--max-time", "30"])
        .arg(format!("http://{http}/"))
        .args(["-H", &format!("Host: {host}")])
        .output()
        .expect("curl runs");
    let curl_said = String::from_utf8_lossy(&curl.stderr);
    assert!(!curl.status.success(), "{curl_said}");
    // curl 7.88 names the code only in its verbose lines.
    assert!(curl_said.contains("GOAWAY, error=13"), "{curl_said}");
    // A URL past the same bound is named too (the 414 for URLs over 65,534 bytes comes
    // only with a larger visitor_max_header_bytes).
    let long_url = format!(
        "GET /{} HTTP/1.1\r\nHost: {host}\r\n\r\n",
        "u".repeat(70_000)
    );
    page_of(
        &raw_exchange(http, &long_url),
        "431",
        "If the URL is very long, send large data in the request body",
    );
    // The same on a kept-alive connection, whose heads hyper reads: a head over the bound
    // is refused although its end comes in the same read.
    let answer = raw_exchange(
        http,
        &format!(
            "GET /hello HTTP/1.1\r\nHost: {host}\r\n\r\nGET / HTTP/1.1\r\nHost: {host}\r\n\
             Cookie: c={}\r\n\r\n",
            "x".repeat(66_000)
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let second = answer
        .find("HTTP/1.1 431 ")
        .unwrap_or_else(|| panic!("{answer}"));
    page_of(&answer[second..], "431", "clear this site's cookies");
    let admin = std::net::SocketAddr::from((s.edge.spec.ip, s.edge.spec.admin));
    let answer = raw_exchange(admin, "GARBAGE\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(
        answer.contains(
            r#"{"error":{"code":"bad_request","message":"the request is not valid HTTP/1.1"#
        ),
        "{answer}"
    );

    // A browser's cookies for the tunnel grow past the limit: it shows the page.
    let dir = s.stack.dir.join("chromium");
    std::fs::create_dir_all(&dir).unwrap();
    let switches = [
        format!("--host-resolver-rules=MAP {host} {}", s.edge.spec.ip),
        format!("--explicitly-allowed-ports={}", http.port()),
    ];
    let mut b = Chromium::start(&dir.join("profile"), &dir.join("chromium.log"), &switches)
        .expect("chromium starts (apt-get install chromium)");
    let page_url = format!("http://{host}:{}/page/one", http.port());
    b.open(&page_url).unwrap();
    b.wait_until(
        "the local service's page",
        "document.readyState === 'complete' && document.body.innerText.includes('hello from local')",
    )
    .unwrap();
    // Set through DevTools, which answers once the cookie store has them (a page's
    // `document.cookie` reaches it later, and the next page could go out without them).
    let cookies: Vec<_> = (0..20)
        .map(|i| {
            serde_json::json!({
                "name": format!("c{i}"),
                "value": "x".repeat(3900),
                "url": format!("http://{host}:{}/", http.port()),
            })
        })
        .collect();
    b.call(
        "Network.setCookies",
        serde_json::json!({ "cookies": cookies }),
    )
    .unwrap();
    // The visitor follows a link on the page.
    b.eval("location.href = '/page/two'").unwrap();
    b.wait_until(
        "the edge's page about the cookies",
        "document.title === 'Request headers too large' \
         && document.body.innerText.includes(\"clear this site's cookies\")",
    )
    .unwrap();
    assert_serving(&s, &url);
}

/// A client from `source` that sends the URL's host to the edge.
fn visitor_from(url: &str, s: &EdgeStack, source: [u8; 4]) -> reqwest::blocking::Client {
    let (host, _) = url_host_port(url).unwrap();
    reqwest::blocking::Client::builder()
        .resolve(&host, s.edge.http_addr())
        .local_address(std::net::IpAddr::from(source))
        .timeout(PATIENCE)
        .build()
        .unwrap()
}

#[test]
fn guessed_credentials_are_throttled_and_preflights_need_an_origin() {
    let s = EdgeStack::start("visitor_auth_failures_per_minute = 3\n");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let args = SshArgs {
        command: vec!["k:right-key".into(), "x:passpreflight".into()],
        ..SshArgs::http_tunnel(Some(&token), local.port)
    };
    let mut client = s.ssh("guarded", &args);
    let url = client.wait_for_url(PATIENCE).unwrap();
    let guesser = visitor_from(&url, &s, [127, 0, 0, 7]);
    let get = |c: &reqwest::blocking::Client, key: Option<&str>| {
        let mut r = c.get(format!("{url}/p"));
        if let Some(key) = key {
            r = r.bearer_auth(key);
        }
        r.send().unwrap()
    };
    eventually("the key is in force", || {
        anyhow::ensure!(get(&guesser, None).status() == 401, "not yet");
        Ok(())
    });
    // Visits without credentials are not guesses; wrong keys are.
    for _ in 0..3 {
        assert_eq!(get(&guesser, None).status(), 401);
    }
    for _ in 0..3 {
        assert_eq!(get(&guesser, Some("guess")).status(), 401);
    }
    let blocked = get(&guesser, Some("right-key"));
    assert_eq!(
        blocked.status(),
        429,
        "past the limit, even the right key waits"
    );
    let wait: u64 = blocked.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "Retry-After: {wait}");
    assert!(blocked.text().unwrap().contains("Try again in"));
    // Another visitor is served.
    let other = visitor_from(&url, &s, [127, 0, 0, 8]);
    let r = get(&other, Some("right-key"));
    assert_eq!(r.status(), 200);
    assert!(r.text().unwrap().contains("authorization=\n"));
    let m = s.edge.metrics().unwrap();
    assert_eq!(
        metric(&m, "nearhop_edge_visitor_auth_throttled_total", &[]),
        Some(1.0)
    );

    // `x:passpreflight`: a browser's preflight passes; a bare OPTIONS, or one without
    // `Origin`, does not.
    let options = |origin: Option<&str>, method: Option<&str>| {
        let mut r = other.request(reqwest::Method::OPTIONS, format!("{url}/api"));
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        if let Some(m) = method {
            r = r.header("access-control-request-method", m);
        }
        r.send().unwrap().status()
    };
    assert_eq!(options(Some("https://app.example"), Some("POST")), 200);
    assert_eq!(options(None, Some("POST")), 401);
    assert_eq!(options(None, None), 401);
}

#[test]
fn an_absolute_request_target_is_routed_by_its_own_host() {
    let s = EdgeStack::start("");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let mut client = s.ssh("abs", &SshArgs::http_tunnel(Some(&token), local.port));
    let url = client.wait_for_url(PATIENCE).unwrap();
    let (host, _) = url_host_port(&url).unwrap();
    let ask = |head: String| raw_exchange(s.edge.http_addr(), &head);
    // The target names the tunnel and `Host` another name: the target wins, and the local
    // service gets the origin form with `Host` set to it.
    let answer = ask(format!(
        "GET http://{host}/abs?q=1 HTTP/1.1\r\nHost: nothing-here.example\r\nConnection: close\r\n\r\n"
    ));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("hello from local /abs?q=1"), "{answer}");
    assert!(answer.contains(&format!("host={host}\n")), "{answer}");
    // The other order: `Host` names the tunnel, the target another name: not served.
    let answer = ask(format!(
        "GET http://nothing-here.example/abs HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    ));
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains("No tunnel here"), "{answer}");
}

/// RFC 9112 §3.2: a request with two `Host` headers, or one that is not a host (user
/// information, a port past 65535), gets a 400 from the edge, never the first name's tunnel;
/// a malformed chunked body is the visitor's error (400), not the tunnel client's (502).
#[test]
fn repeated_or_invalid_hosts_and_broken_bodies_get_400s() {
    let s = EdgeStack::start("");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let mut client = s.ssh("hosts", &SshArgs::http_tunnel(Some(&token), local.port));
    let url = client.wait_for_url(PATIENCE).unwrap();
    let (host, _) = url_host_port(&url).unwrap();
    let ask = |head: String| raw_exchange(s.edge.http_addr(), &head);
    let served_before = local.served.load(std::sync::atomic::Ordering::SeqCst);
    for (head, why) in [
        (
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nHost: nobody.a.tunnel.test\r\nConnection: close\r\n\r\n"),
            "more than one Host header",
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: x@{host}:99999\r\nConnection: close\r\n\r\n"),
            "not a host name or address",
        ),
        (
            format!("GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
            "more than one Host header",
        ),
        (
            "GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_string(),
            "names no host",
        ),
    ] {
        let answer = ask(head.clone());
        assert!(answer.starts_with("HTTP/1.1 400"), "{head:?}: {answer}");
        assert!(answer.contains(why), "{head:?}: {answer}");
    }
    // A chunk size that is not hexadecimal, as the first request and after a good one.
    for head in [
        format!("POST /up HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
        format!(
            "GET /fine HTTP/1.1\r\nHost: {host}\r\n\r\n\
             POST /up HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n"
        ),
    ] {
        let answer = ask(head.clone());
        let last = answer.rfind("HTTP/1.1 ").map(|at| &answer[at..]).unwrap_or("");
        assert!(last.starts_with("HTTP/1.1 400"), "{head:?}: {answer}");
        assert!(last.contains("malformed"), "{head:?}: {answer}");
    }
    assert_eq!(
        local.served.load(std::sync::atomic::Ordering::SeqCst) - served_before,
        1,
        "only the good request reached the local service"
    );
    assert_serving(&s, &url);
    let m = s.edge.metrics().unwrap();
    assert!(
        !m.contains("nearhop_edge_http_responses_total{class=\"5xx\""),
        "no 502 for the visitor's own errors: {m}"
    );
    // The 400s are the edge's own pages, counted as such: 4 for the hosts, 2 for the bodies.
    let responses = |labels: &[(&str, &str)]| {
        metric_sum(&m, "nearhop_edge_http_responses_total", labels) as u64
    };
    assert_eq!(responses(&[("class", "4xx"), ("origin", "edge")]), 6, "{m}");
    assert_eq!(
        responses(&[("class", "4xx"), ("origin", "tunnel")]),
        0,
        "{m}"
    );
}

/// A tunnel whose local service is not running: the visitor gets the edge's 502 "Tunnel
/// client not answering", and operators see it where the `NearhopEdgeErrorsHigh` alert looks
/// (`http_responses_total{origin="edge",class="5xx"}`), once per visit however many times
/// the edge tried.
#[test]
fn a_tunnel_with_no_local_service_gets_the_edges_502_counted() {
    let s = EdgeStack::start("");
    let closed = nearhop_stack::ports::free_port(std::net::Ipv4Addr::LOCALHOST);
    let token = s.pro_token();
    let mut client = s.ssh("closed", &SshArgs::http_tunnel(Some(&token), closed));
    let url = client.wait_for_url(PATIENCE).unwrap();
    for _ in 0..2 {
        let resp = s.visit(&url, "/");
        assert_eq!(resp.status().as_u16(), 502);
        let body = resp.text().unwrap();
        assert!(body.contains("Is the local service running?"), "{body}");
    }
    let m = s.edge.metrics().unwrap();
    let responses = |labels: &[(&str, &str)]| {
        metric_sum(&m, "nearhop_edge_http_responses_total", labels) as u64
    };
    assert_eq!(responses(&[("class", "5xx"), ("origin", "edge")]), 2, "{m}");
    assert_eq!(responses(&[("origin", "tunnel")]), 0, "{m}");
    // Why, for the runbook: the client refused each channel (a GET is tried three times).
    let refused = metric(&m, "nearhop_edge_visitor_channels_refused_total", &[]);
    assert_eq!(refused, Some(6.0), "{m}");
}

/// A local service that only counts: connections accepted, and connections whose other
/// side (the tunnel's ssh client) closed them; each is read to its end and dropped.
struct CountingListener {
    port: u16,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ended: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CountingListener {
    fn start() -> CountingListener {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted, ended) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, e) = (accepted.clone(), ended.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                a.fetch_add(1, Ordering::SeqCst);
                let e = e.clone();
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut conn, &mut std::io::sink());
                    e.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        CountingListener {
            port,
            accepted,
            ended,
        }
    }
}

/// Visitors that leave while their channel is being opened (a closed connection, a reset
/// HTTP/2 stream) leave nothing open at the tunnel's client: each channel the client
/// confirms late is closed by the edge, and with it the client's connection to the local
/// service. Left open, they piled up until ssh's channel table overflowed and the tunnel
/// died: anyone could end anyone's tunnel. The client is held still (SIGSTOP) so that every
/// visitor is gone before the client answers.
#[test]
fn visits_given_up_before_their_channel_opened_leave_nothing_open_at_the_client() {
    use std::sync::atomic::Ordering;
    let s = EdgeStack::start("");
    let local = CountingListener::start();
    let token = s.pro_token();
    let mut client = s.ssh("given-up", &SshArgs::http_tunnel(Some(&token), local.port));
    let url = client.wait_for_url(PATIENCE).unwrap();
    let (host, _) = url_host_port(&url).unwrap();
    client.freeze();
    const VISITS: usize = 20;
    for _ in 0..VISITS {
        let mut t = TcpStream::connect(s.edge.http_addr()).unwrap();
        t.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .unwrap();
        // Pacing only: the edge reads the request and asks the frozen client for a channel.
        std::thread::sleep(Duration::from_millis(100));
        drop(t);
    }
    client.thaw();
    eventually(
        "the client opened every channel and the edge closed each",
        || {
            let (accepted, ended) = (
                local.accepted.load(Ordering::SeqCst),
                local.ended.load(Ordering::SeqCst),
            );
            anyhow::ensure!(
                accepted == VISITS && ended == VISITS,
                "{accepted} connections to the local service, {ended} of them closed"
            );
            Ok(())
        },
    );
    assert!(client.is_running(), "the tunnel's ssh is still up");
    client.stop();
}

/// The edge keeps no more than `max_channels_per_client` channels at one client (being
/// opened, in use, or waiting for the client's close): past that, visitors get "Tunnel
/// busy" rather than the edge pushing OpenSSH's channel table to overflow (the client then
/// exits, ending the tunnel); the tunnel serves again once channels close.
#[test]
fn a_client_holding_its_channel_limit_gets_visitors_a_503_and_survives() {
    let s = EdgeStack::start("max_channels_per_client = 3\nvisitor_open_timeout_seconds = 120\n");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let mut client = s.ssh("full", &SshArgs::http_tunnel(Some(&token), local.port));
    let url = client.wait_for_url(PATIENCE).unwrap();
    let (host, _) = url_host_port(&url).unwrap();
    client.freeze();
    let head = format!("GET /held HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    // Visitors come one by one: the first three wait at the frozen client (each try reads
    // for a moment only, then stays connected), the next is turned away at once.
    let mut waiting = Vec::new();
    let answer = eventually("a visitor past the limit is turned away", || {
        let mut t = TcpStream::connect(s.edge.http_addr())?;
        t.write_all(head.as_bytes())?;
        t.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut answer = Vec::new();
        let _ = t.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer).into_owned();
        if answer.is_empty() {
            waiting.push(t);
        }
        anyhow::ensure!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        Ok(answer)
    });
    assert_eq!(waiting.len(), 3, "three visitors wait at the client");
    assert!(answer.contains("Tunnel busy"), "{answer}");
    let m = s.edge.metrics().unwrap();
    let refused = metric(
        &m,
        "nearhop_edge_visitor_share_refused_total",
        &[("share", "client_channels")],
    );
    assert!(refused >= Some(1.0), "{m}");
    client.thaw();
    for mut t in waiting {
        let answer = closed_by_edge(&mut t);
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    eventually("the tunnel serves new visitors again", || {
        let answer = raw_exchange(s.edge.http_addr(), &head);
        anyhow::ensure!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        Ok(())
    });
    assert!(client.is_running(), "the tunnel's ssh is still up");
    client.stop();
}

/// A download the visitor left half way: the edge closes its channel as soon as the client
/// has sent more than 1 MiB after the edge was done with it, so the tunnel's client stops
/// forwarding an answer nobody reads (on a developer's upload link, up to 30 s of it
/// before), and the tunnel's other visitors are served meanwhile. Before that the edge read
/// and dropped the rest for up to 30 s, waiting for a close the client sent only at the
/// answer's end: here, the rest of 4 GB.
#[test]
fn a_download_the_visitor_left_stops_at_the_client_and_holds_up_no_one() {
    let s = EdgeStack::start("");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let mut client = s.ssh("left", &SshArgs::http_tunnel(Some(&token), local.port));
    let url = client.wait_for_url(PATIENCE).unwrap();
    let (host, _) = url_host_port(&url).unwrap();
    let mut t = TcpStream::connect(s.edge.http_addr()).unwrap();
    t.set_read_timeout(Some(PATIENCE)).unwrap();
    t.write_all(format!("GET /blob/4000000000 HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .unwrap();
    let mut first = vec![0u8; 64 * 1024];
    t.read_exact(&mut first).unwrap();
    assert!(first.starts_with(b"HTTP/1.1 200"), "the download started");
    let sent_at_start = written_bytes(client.pid());
    drop(t);
    assert_serving(&s, &url);
    eventually("the edge cut the left download's channel", || {
        let m = s.edge.metrics()?;
        let cut = metric(&m, "nearhop_edge_channels_cut_total", &[]);
        anyhow::ensure!(cut == Some(1.0), "channels cut: {cut:?}");
        Ok(())
    });
    let m = s.edge.metrics().unwrap();
    let unwanted = metric(&m, "nearhop_edge_channel_unwanted_bytes_total", &[]).unwrap_or(0.0);
    assert!(
        (1_048_576.0..4_000_000.0).contains(&unwanted),
        "bytes read and dropped after the visitor left: {unwanted}"
    );
    // The client stopped: it closed its connection to the local service, whose writing
    // of the blob broke off, nowhere near the rest of 4 GB.
    eventually("the local service's blob broke off", || {
        let broken = local
            .blobs_broken
            .load(std::sync::atomic::Ordering::Relaxed);
        anyhow::ensure!(broken == 1, "blobs broken off: {broken}");
        Ok(())
    });
    let sent = written_bytes(client.pid()) - sent_at_start;
    assert!(
        sent < 512 << 20,
        "the client sent {sent} bytes of the left download"
    );
    assert_serving(&s, &url);
    assert!(client.is_running(), "the tunnel's ssh is still up");
    client.stop();
}

/// Bytes process `pid` has written (`wchar` of `/proc/<pid>/io`: every `write` and `send`,
/// its sockets included).
fn written_bytes(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("the client's io counters");
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("a wchar line")
}

/// A visitor that starts a big download and stops reading, its connection held open: after
/// `visitor_write_stall_seconds` without a byte taken, the edge closes that connection, and
/// the tunnel's other visitors, whose channels share the SSH session the stalled answer was
/// filling, are served again. Without the bound the tunnel stopped for as long as the
/// visitor held on, and a client with `ServerAliveInterval` disconnected.
#[test]
fn a_visitor_that_stops_reading_is_cut_off_and_the_tunnel_goes_on() {
    let s = EdgeStack::start("visitor_write_stall_seconds = 2\n");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let mut client = s.ssh("stalled", &SshArgs::http_tunnel(Some(&token), local.port));
    let url = client.wait_for_url(PATIENCE).unwrap();
    let (host, _) = url_host_port(&url).unwrap();
    let mut t = TcpStream::connect(s.edge.http_addr()).unwrap();
    t.write_all(format!("GET /blob/300000000 HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .unwrap();
    let mut first = vec![0u8; 1024];
    t.set_read_timeout(Some(PATIENCE)).unwrap();
    t.read_exact(&mut first).unwrap();
    assert!(first.starts_with(b"HTTP/1.1 200"), "the download started");
    // Now it reads nothing: the edge's writes to it wait, the channel behind them fills.
    eventually("the edge cut the stalled visitor off", || {
        let m = s.edge.metrics()?;
        let stalls = metric(&m, "nearhop_edge_visitor_write_stalls_total", &[]);
        anyhow::ensure!(stalls == Some(1.0), "stalls: {stalls:?}");
        Ok(())
    });
    assert_serving(&s, &url);
    // What the kernel still held for it comes, then the end: the edge closed it.
    let rest = closed_by_edge(&mut t);
    let head = first
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the answer's head in its first KiB")
        + 4;
    let body = first.len() - head + rest.len();
    // Only what the sockets and the channel's window held when it was cut (a few MiB),
    // far from the whole.
    assert!(
        body < 64 << 20,
        "{body} of the 300,000,000 bytes came: the download was not cut"
    );
    assert!(client.is_running(), "the tunnel's ssh is still up");
    client.stop();
}

/// A visitor who stops reading a download holds up its own channel only: its SSH window is
/// granted as the edge takes the bytes, so the client stops sending on that channel when
/// the window is spent, and the session goes on carrying the tunnel's other visitors. With
/// no write-stall bound (`visitor_write_stall_seconds = 0`), nothing else could serve them:
/// before, the stalled channel's queue filled and russh stopped reading the whole session.
/// The download then completes, byte for byte, once its visitor reads again.
#[test]
fn a_visitor_that_stops_reading_holds_up_no_one_else_on_its_tunnel() {
    let s = EdgeStack::start("visitor_write_stall_seconds = 0\n");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let mut client = s.ssh("stalled", &SshArgs::http_tunnel(Some(&token), local.port));
    let url = client.wait_for_url(PATIENCE).unwrap();
    let size = 64_000_000;
    let mut t = start_download(s.edge.http_addr(), &url, size);
    // Now it reads nothing.
    wait_until_downloads_stop(&s);
    // The tunnel's other visitors are served meanwhile, on new connections and on one.
    for _ in 0..10 {
        assert_serving(&s, &url);
    }
    let one = s.visit(&url, "/blob/3000000").bytes().unwrap();
    assert_blob(&one, 3_000_000);
    let m = s.edge.metrics().unwrap();
    assert_eq!(
        metric(&m, "nearhop_edge_visitor_write_stalls_total", &[]),
        Some(0.0),
        "nobody was cut off"
    );
    // What the stalled channel may make the edge hold is bounded by its window, at most
    // ssh_window_bytes (8 MiB), once the other visitors' channels have closed.
    eventually("only the stalled channel's window is left", || {
        let m = s.edge.metrics()?;
        let unread = metric(&m, "nearhop_edge_tunnel_window_unread_bytes", &[]).unwrap_or(-1.0);
        anyhow::ensure!(
            (0.0..=8.0 * 1024.0 * 1024.0).contains(&unread),
            "unread window: {unread}"
        );
        Ok(())
    });
    // The stalled visitor reads again: the rest comes, every byte of it.
    finish_blob(&mut t, 0, size, "the stalled download");
    assert!(client.is_running(), "the tunnel's ssh is still up");
    client.stop();
}

#[test]
fn visitors_who_stop_reading_make_the_edge_hold_no_more_than_the_window_budget() {
    let budget = 4 * 1024 * 1024;
    let s = EdgeStack::start(&format!(
        "visitor_write_stall_seconds = 0\ntunnel_window_budget_bytes = {budget}\n"
    ));
    let local = LocalService::start("local");
    let token = s.pro_token();
    let mut client = s.ssh("stalled", &SshArgs::http_tunnel(Some(&token), local.port));
    let url = client.wait_for_url(PATIENCE).unwrap();
    // Ten visitors start downloads well past what sockets and windows hold, and stop.
    let size = 24_000_000;
    let mut stalled: Vec<TcpStream> = (0..10)
        .map(|_| start_download(s.edge.http_addr(), &url, size))
        .collect();
    wait_until_downloads_stop(&s);
    let m = s.edge.metrics().unwrap();
    let unread = metric(&m, "nearhop_edge_tunnel_window_unread_bytes", &[]).unwrap_or(-1.0);
    // Each channel opens with 32 KiB; every byte of window past that came out of the budget.
    let bound = f64::from(budget) + 10.0 * 32.0 * 1024.0;
    assert!(
        unread > 0.0 && unread <= bound,
        "the clients may still send {unread} bytes the visitors have not read (bound {bound})"
    );
    // One tunnel's windows hold three quarters of the budget at most: the last quarter is
    // kept for other tunnels.
    let grown = metric(&m, "nearhop_edge_tunnel_window_grown_bytes", &[]).unwrap_or(-1.0);
    let three_quarters = f64::from(budget) * 0.75;
    assert!(
        grown > 0.0 && grown <= three_quarters,
        "one tunnel's windows took {grown} bytes of the budget (at most {three_quarters})"
    );
    assert!(
        metric(&m, "nearhop_edge_tunnel_window_growth_refused_total", &[]).unwrap_or(0.0) > 0.0,
        "ten 1 MiB first windows do not fit in 3 MiB: the budget said no"
    );
    assert!(
        metric(&m, "nearhop_edge_tunnel_window_share_limited_total", &[]).unwrap_or(0.0) > 0.0,
        "the tunnel's share said no"
    );
    // With its share and all but the reserve spent, a new visitor of that tunnel keeps its
    // 32 KiB: slower far away, but every byte comes, and small pages are served as ever.
    assert_serving(&s, &url);
    let one = s.visit(&url, "/blob/3000000").bytes().unwrap();
    assert_blob(&one, 3_000_000);
    // A visitor of another tunnel still gets a full first window, out of the reserve.
    let other_local = LocalService::start("other");
    let mut other = s.ssh(
        "other",
        &SshArgs::http_tunnel(Some(&token), other_local.port),
    );
    let other_url = other.wait_for_url(PATIENCE).unwrap();
    let other_stalled = start_download(s.edge.http_addr(), &other_url, size);
    wait_until_downloads_stop(&s);
    let m = s.edge.metrics().unwrap();
    let grown_now = metric(&m, "nearhop_edge_tunnel_window_grown_bytes", &[]).unwrap_or(-1.0);
    let first_window = f64::from(1024 * 1024 - 32 * 1024);
    assert!(
        grown_now - grown >= first_window && grown_now <= f64::from(budget),
        "the other tunnel's visitor took {} bytes of the budget (a full first window: {first_window})",
        grown_now - grown
    );
    // A stalled visitor reads again and gets the rest; the others leave, and every window
    // goes back to the budget.
    finish_blob(&mut stalled[0], 0, size, "a stalled download");
    drop(stalled);
    drop(other_stalled);
    eventually("the windows are given back", || {
        let m = s.edge.metrics()?;
        let grown = metric(&m, "nearhop_edge_tunnel_window_grown_bytes", &[]).unwrap_or(-1.0);
        let unread = metric(&m, "nearhop_edge_tunnel_window_unread_bytes", &[]).unwrap_or(-1.0);
        anyhow::ensure!(
            grown == 0.0 && unread == 0.0,
            "grown {grown}, unread {unread}"
        );
        Ok(())
    });
    assert!(client.is_running(), "the tunnel's ssh is still up");
    client.stop();
    other.stop();
}

/// Waits until the edge writes visitors nothing more: the sockets of those who stopped
/// reading are full, and so is whatever the edge may hold for them.
fn wait_until_downloads_stop(s: &EdgeStack) {
    let sent_out = || {
        let m = s.edge.metrics().expect("metrics");
        metric(
            &m,
            "nearhop_edge_visitor_bytes_total",
            &[("direction", "out")],
        )
        .unwrap_or(0.0)
    };
    let mut last = sent_out();
    eventually("the downloads stopped moving", || {
        std::thread::sleep(Duration::from_millis(500));
        let now = sent_out();
        let moved = now != last;
        last = now;
        anyhow::ensure!(!moved && now > 0.0, "bytes out: {now}");
        Ok(())
    });
}

/// Sends `head` (and whatever follows it) on a fresh connection to `addr` and reads the
/// answer until the edge closes the connection (or goes quiet for [`PATIENCE`]).
fn raw_exchange(addr: std::net::SocketAddr, head: &str) -> String {
    let mut t = TcpStream::connect(addr).unwrap();
    t.set_read_timeout(Some(PATIENCE)).unwrap();
    t.write_all(head.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = t.read_to_string(&mut answer);
    answer
}

/// Reads until the edge closes the connection; a read timeout means it held it open.
fn closed_by_edge(t: &mut TcpStream) -> Vec<u8> {
    t.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut got = Vec::new();
    match t.read_to_end(&mut got) {
        Ok(_) => got,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => got,
        Err(e) => panic!("the edge held the connection open: {e}"),
    }
}

fn connect_from(source: [u8; 4], to: std::net::SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&std::net::SocketAddr::from((source, 0)).into())
        .unwrap();
    socket.connect(&to.into()).unwrap();
    socket.into()
}

#[test]
fn one_address_or_tunnel_holding_its_share_leaves_room_for_the_others() {
    let s = EdgeStack::start(
        "max_visitor_connections = 12\nmax_visitor_connections_per_address = 4\n\
         max_visitor_connections_per_tunnel = 3\nvisitor_response_timeout_seconds = 8\n\
         splice_idle_timeout_seconds = 2\n",
    );
    let local = LocalService::start("local");
    let (mut a, url_a) = {
        let mut c = s.ssh("a", &SshArgs::http_tunnel(Some(&s.pro_token()), local.port));
        let url = c.wait_for_url(PATIENCE).unwrap();
        (c, url)
    };
    let mut b = s.ssh("b", &SshArgs::http_tunnel(Some(&s.pro_token()), local.port));
    let url_b = b.wait_for_url(PATIENCE).unwrap();
    let (host_a, _) = url_host_port(&url_a).unwrap();

    // One address holds four half-sent request heads: its whole share.
    let http = s.edge.http_addr();
    let mut held: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut t = connect_from([127, 0, 0, 7], http);
            write!(t, "GET / HTTP/1.1\r\nHost: {host_a}\r\nX-Slow: ").unwrap();
            t
        })
        .collect();
    eventually("the four are counted", || {
        let m = s.edge.metrics()?;
        let active = metric(&m, "nearhop_edge_visitor_connections_active", &[]);
        anyhow::ensure!(active == Some(4.0), "{active:?}");
        Ok(())
    });
    // Its fifth is told why and closed; another address reaches another tunnel.
    let mut fifth = connect_from([127, 0, 0, 7], http);
    let answer = String::from_utf8_lossy(&closed_by_edge(&mut fifth)).into_owned();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("Too many connections from your address"),
        "{answer}"
    );
    // So is one in plain HTTP on the TLS port, which takes HTTP visitors too.
    let mut on_tls_port = connect_from([127, 0, 0, 7], s.edge.tls_addr());
    // One write: the edge answers as soon as the first bytes tell HTTP and closes, so a
    // head sent in pieces may find the connection gone (the answer is what counts).
    let head = format!("GET / HTTP/1.1\r\nHost: {host_a}\r\n\r\n");
    let _ = on_tls_port.write_all(head.as_bytes());
    let answer = String::from_utf8_lossy(&closed_by_edge(&mut on_tls_port)).into_owned();
    assert!(
        answer.contains("Too many connections from your address"),
        "plain HTTP on the TLS port: {answer}"
    );
    let other = reqwest::blocking::Client::builder()
        .resolve(&url_host_port(&url_b).unwrap().0, http)
        .local_address(std::net::IpAddr::from([127, 0, 0, 8]))
        .timeout(PATIENCE)
        .build()
        .unwrap();
    let r = other.get(format!("{url_b}/")).send().unwrap();
    assert_eq!(r.status(), 200);
    let m = s.edge.metrics().unwrap();
    assert_eq!(
        metric(
            &m,
            "nearhop_edge_visitor_share_refused_total",
            &[("share", "address")]
        ),
        Some(2.0)
    );
    held.clear();

    // A slow service holds its tunnel's three channels; a fourth visitor of that tunnel is
    // told to come back, and the slow ones get 504 instead of waiting for ever. (The 8 s
    // limit only has to outlast the moment all three are in flight, for the check below.)
    let before = local.served.load(std::sync::atomic::Ordering::SeqCst);
    let slow: Vec<_> = (0..3)
        .map(|i| {
            let client = reqwest::blocking::Client::builder()
                .resolve(&host_a, http)
                .local_address(std::net::IpAddr::from([127, 0, 1, i + 1]))
                .timeout(PATIENCE)
                .build()
                .unwrap();
            let url = format!("{url_a}/hang/30");
            std::thread::spawn(move || client.get(url).send().map(|r| r.status().as_u16()))
        })
        .collect();
    eventually("the three slow requests reach the service", || {
        let served = local.served.load(std::sync::atomic::Ordering::SeqCst);
        anyhow::ensure!(served >= before + 3, "{} of 3", served - before);
        Ok(())
    });
    let r = visitor(&url_a, http)
        .get(format!("{url_a}/"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 503, "the tunnel's three channels are held");
    assert!(r
        .text()
        .unwrap()
        .contains("as many visitors as it may have"));
    for t in slow {
        assert_eq!(t.join().unwrap().unwrap(), 504, "the slow answer is cut");
    }
    assert_eq!(
        s.visit(&url_a, "/").status(),
        200,
        "the channels are given back"
    );
    let m = s.edge.metrics().unwrap();
    assert_eq!(
        metric(&m, "nearhop_edge_visitor_response_timeouts_total", &[]),
        Some(3.0)
    );
    assert!(
        metric(
            &m,
            "nearhop_edge_visitor_share_refused_total",
            &[("share", "tunnel")]
        ) >= Some(1.0)
    );
    a.stop();
    b.stop();
}

#[test]
fn an_idle_tcp_connection_is_closed_and_a_busy_one_is_not() {
    let s = EdgeStack::start("splice_idle_timeout_seconds = 2\n");
    let echo = tcp_echo();
    let token = s.pro_token();
    let mut c = s.ssh(
        "tcp",
        &SshArgs::http_tunnel(Some(&format!("{token}+tcp")), echo),
    );
    let url = c.wait_for_url(PATIENCE).unwrap();
    let (_, port) = url_host_port(&url).unwrap();
    let mut t = TcpStream::connect((s.edge.spec.ip, port)).unwrap();
    // Busy for twice the limit: carried.
    for _ in 0..8 {
        t.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        t.set_read_timeout(Some(PATIENCE)).unwrap();
        t.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Then quiet: closed.
    closed_by_edge(&mut t);
    let m = s.edge.metrics().unwrap();
    assert_eq!(
        metric(&m, "nearhop_edge_splice_idle_closed_total", &[]),
        Some(1.0)
    );
}

#[test]
fn a_flood_of_logins_from_one_address_leaves_others_able_to_connect() {
    let s = EdgeStack::start("max_unauthenticated_ssh_per_address = 4\n");
    let local = LocalService::start("local");
    let ssh = s.edge.ssh_addr();
    // Four connections from one address that never log in hold its whole share: each says
    // it is OpenSSH, gets the edge's identification (so it holds its place), then stalls.
    let _held: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut t = connect_from([127, 0, 0, 7], ssh);
            t.write_all(b"SSH-2.0-OpenSSH_9.2p1\r\n").unwrap();
            t.set_read_timeout(Some(PATIENCE)).unwrap();
            let mut id = [0u8; 17];
            t.read_exact(&mut id).unwrap();
            assert_eq!(&id, b"SSH-2.0-nearhop\r\n");
            t
        })
        .collect();
    // A fifth from there is told why, in words an SSH client prints, and closed.
    let mut fifth = connect_from([127, 0, 0, 7], ssh);
    let answer = closed_by_edge(&mut fifth);
    assert!(answer.starts_with(b"SSH-2.0-nearhop\r\n"));
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.contains("Too many connections are logging in"),
        "{text}"
    );
    // OpenSSH from that address shows the sentence.
    let mut refused = s.ssh(
        "flooded",
        &SshArgs {
            options: vec!["BindAddress=127.0.0.7".into()],
            ..SshArgs::http_tunnel(Some(&s.pro_token()), local.port)
        },
    );
    let out = refused.wait_exit(PATIENCE).unwrap();
    assert!(out.contains("Too many connections are logging in"), "{out}");
    // A client from another address logs in and gets its tunnel.
    let mut c = s.ssh(
        "other",
        &SshArgs::http_tunnel(Some(&s.pro_token()), local.port),
    );
    let url = c.wait_for_url(PATIENCE).unwrap();
    assert_serving(&s, &url);
    let m = s.edge.metrics().unwrap();
    assert!(
        metric(
            &m,
            "nearhop_edge_ssh_unauthenticated_refused_total",
            &[("scope", "address")]
        ) >= Some(2.0)
    );
}

/// A client that sends its identification and KEXINIT, then stalls inside key exchange, is
/// closed at `ssh_auth_deadline_seconds` like one that never logs in; the edge goes on
/// opening tunnels.
#[test]
fn a_client_stalling_in_key_exchange_is_cut_at_the_auth_deadline() {
    let s = EdgeStack::start("ssh_auth_deadline_seconds = 2\n");
    let mut stalled = nearhop_stack::stalled_ssh::stall_in_key_exchange(s.edge.ssh_addr()).unwrap();
    stalled.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut sink = Vec::new();
    match stalled.read_to_end(&mut sink) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the stalled connection was not closed: {e}"),
    }
    assert!(
        sink.starts_with(b"SSH-2.0-nearhop\r\n"),
        "the edge answered before closing"
    );
    // Closed by the auth deadline, and counted.
    eventually("the cut counted", || {
        let m = s.edge.metrics()?;
        let cut = metric(&m, "nearhop_edge_ssh_auth_timeouts_total", &[]);
        anyhow::ensure!(cut == Some(1.0), "{cut:?}");
        Ok(())
    });
    let local = LocalService::start("local");
    let mut client = s.ssh(
        "after",
        &SshArgs::http_tunnel(Some(&s.pro_token()), local.port),
    );
    client
        .wait_for_url(PATIENCE)
        .expect("a tunnel after the stall");
}

/// An OpenSSH client with its stdin piped (so the test types into it), its output read on a
/// thread into a shared string; `-tt` asks for a terminal, `-T` for none.
struct TypedSsh {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    output: std::sync::Arc<std::sync::Mutex<String>>,
}

impl TypedSsh {
    fn start(s: &EdgeStack, terminal: &str, port: u16) -> TypedSsh {
        let addr = s.edge.ssh_addr();
        let mut child = std::process::Command::new("ssh")
            .args([terminal, "-p", &addr.port().to_string(), "-F", "/dev/null"])
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
            .arg("-R")
            .arg(format!("0:localhost:{port}"))
            .arg(format!("{}@{}", s.pro_token(), addr.ip()))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ssh starts");
        let stdin = child.stdin.take().expect("stdin");
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        for mut from in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = from.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&chunk[..n]).into_owned();
                    output.lock().unwrap().push_str(&text);
                }
            });
        }
        TypedSsh {
            child,
            stdin,
            output,
        }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    fn url(&self) -> String {
        let mut url = None;
        eventually("the URL is printed", || {
            url = nearhop_stack::edge::find_url(&self.output());
            anyhow::ensure!(url.is_some(), "{}", self.output());
            Ok(())
        });
        url.unwrap_or_default()
    }
}

impl Drop for TypedSsh {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Ctrl-C typed in a terminal session closes the tunnel, as users expect; the same byte
/// from a client without a terminal is not a key press (sftp's first message holds one,
/// and so may anything piped into `ssh -T`), so its tunnel stays. A subsystem (sftp) is
/// refused with a sentence, not served silently or cut with "Closed by you".
#[test]
fn ctrl_c_closes_a_terminal_session_only_and_sftp_is_refused_with_a_sentence() {
    let s = EdgeStack::start("");
    let local = LocalService::start("local");

    let mut piped = TypedSsh::start(&s, "-T", local.port);
    let url = piped.url();
    piped.stdin.write_all(&[3, 4]).unwrap();
    piped.stdin.flush().unwrap();
    // Time for the bytes to reach the edge; the old edge closed the session on them.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(s.visit(&url, "/").status(), 200, "{}", piped.output());
    assert!(
        piped.child.try_wait().unwrap().is_none(),
        "the client without a terminal was disconnected: {}",
        piped.output()
    );

    let mut typed = TypedSsh::start(&s, "-tt", local.port);
    let url = typed.url();
    // A visitor's keep-alive connection stays open meanwhile: ssh waits for its forwarded
    // connections before it leaves, so the edge closes them.
    let (host, _) = url_host_port(&url).unwrap();
    let mut held = TcpStream::connect(s.edge.http_addr()).unwrap();
    write!(held, "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut head = [0u8; 64];
    let n = held.read(&mut head).unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );
    typed.stdin.write_all(&[3]).unwrap();
    typed.stdin.flush().unwrap();
    let mut status = None;
    eventually("Ctrl-C in a terminal session closes it", || {
        status = typed.child.try_wait()?;
        anyhow::ensure!(status.is_some(), "{}", typed.output());
        Ok(())
    });
    assert!(
        typed.output().contains("Closing your tunnel. Bye."),
        "{}",
        typed.output()
    );
    // ssh exits as a shell reports an interrupted command, not with 255 as for a dropped
    // network, so a reconnect loop can stop (docs/user-guide.md, "Staying connected").
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(130),
        "{}",
        typed.output()
    );
    drop(held);
    let mut ended = TypedSsh::start(&s, "-tt", local.port);
    ended.url();
    ended.stdin.write_all(&[4]).unwrap();
    ended.stdin.flush().unwrap();
    eventually("Ctrl-D in a terminal session closes it", || {
        status = ended.child.try_wait()?;
        anyhow::ensure!(status.is_some(), "{}", ended.output());
        Ok(())
    });
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", ended.output());

    let addr = s.edge.ssh_addr();
    let sftp = std::process::Command::new("sftp")
        .args([
            "-P",
            &addr.port().to_string(),
            "-F",
            "/dev/null",
            "-b",
            "/dev/null",
        ])
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null"])
        .arg(format!("{}@{}", s.pro_token(), addr.ip()))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("sftp runs");
    let said = String::from_utf8_lossy(&sftp.stderr);
    assert!(!sftp.status.success(), "{said}");
    assert!(
        said.contains("serves no \"sftp\" subsystem"),
        "sftp is told why: {said}"
    );
}

/// A client that speaks no SSH-2 (an SSH-1 client, an HTTP request sent to the SSH port)
/// is told so in the words sshd uses before the edge closes, not met with silence.
#[test]
fn clients_that_speak_no_ssh2_are_told_why() {
    let s = EdgeStack::start("");
    for (sent, told) in [
        (
            &b"SSH-1.5-OpenSSH_1.2.3\r\n"[..],
            "Protocol major versions differ",
        ),
        (
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            "Invalid SSH identification string",
        ),
    ] {
        let mut t = TcpStream::connect(s.edge.ssh_addr()).unwrap();
        t.write_all(sent).unwrap();
        let got = closed_by_edge(&mut t);
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("SSH-2.0-nearhop\r\n"), "{text}");
        assert!(
            text.contains(told),
            "{}: {text}",
            String::from_utf8_lossy(sent)
        );
    }
}
