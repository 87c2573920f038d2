//! Visitor traffic through a real edge and the stock OpenSSH client: large bodies arrive
//! byte-identical, 100 concurrent visitors, an upgraded connection stays open while idle, TCP
//! tunnels round-trip.

use nearhop_stack::edge::{url_host_port, DevCertificate};
use nearhop_stack::prelude::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// With the edge giving free memory back every second (`malloc_trim`) from its start, so
/// trims run around the transfers (and while they pass, when they take a second or more).
#[test]
fn large_upload_and_download_are_byte_identical() {
    let s = EdgeStack::start("malloc_trim_interval_seconds = 1\n");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let mut client = s.ssh("bulk", &SshArgs::http_tunnel(Some(&token), local.port));
    let url = client.wait_for_url(PATIENCE).unwrap();
    let v = visitor(&url, s.edge.http_addr());

    let size = 64 * 1024 * 1024;
    let down = v
        .get(format!("{url}/blob/{size}"))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_blob(&down, size);

    let upload = upload_pattern(32 * 1024 * 1024);
    let back = v
        .post(format!("{url}/echo"))
        .body(upload.clone())
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert!(
        back.as_ref() == upload.as_slice(),
        "upload came back different"
    );
    eventually("the edge gave free memory back on its interval", || {
        let text = s.edge.metrics()?;
        let runs = metric(&text, "nearhop_edge_malloc_trims_total", &[]).unwrap_or(0.0);
        anyhow::ensure!(runs >= 2.0, "{runs} runs of malloc_trim so far");
        Ok(())
    });
}

#[test]
fn hundred_concurrent_visitors_all_get_answers() {
    let s = EdgeStack::start("");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let mut client = s.ssh("many", &SshArgs::http_tunnel(Some(&token), local.port));
    let url = client.wait_for_url(PATIENCE).unwrap();
    let edge = s.edge.http_addr();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let results: Vec<Result<String, String>> = rt.block_on(async {
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                // One client each: one connection, so one SSH channel, per visitor.
                let v = async_visitor(&url, edge);
                let url = url.clone();
                tokio::spawn(async move {
                    let r = v
                        .get(format!("{url}/blob/{}", 1000 + i))
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    let body = r.bytes().await.map_err(|e| e.to_string())?;
                    if body.len() == 1000 + i
                        && body.iter().enumerate().all(|(j, b)| *b == blob_byte(j))
                    {
                        Ok("ok".to_string())
                    } else {
                        Err(format!("visitor {i}: wrong body of {} bytes", body.len()))
                    }
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
        }
        out
    });
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} visitors failed: {failed:?}",
        failed.len()
    );
    let metrics = s.edge.metrics().unwrap();
    assert!(
        metrics.contains("nearhop_edge_visitor_connections_total{listener=\"http\"} 100"),
        "{metrics}"
    );
}

#[test]
fn upgraded_connection_stays_open_past_peer_idle_limits() {
    let s = EdgeStack::start("");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let mut client = s.ssh("ws", &SshArgs::http_tunnel(Some(&token), local.port));
    let url = client.wait_for_url(PATIENCE).unwrap();
    let (host, _) = url_host_port(&url).unwrap();
    let (mut ws, head) = upgrade_from(std::net::Ipv4Addr::LOCALHOST, s.edge.http_addr(), &host);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut buf = [0u8; 5];
    ws.write_all(b"ping1").unwrap();
    ws.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping1");
    // sish cuts idle visitor connections after 5 s and pings dead after 10 s; stay idle
    // longer than both.
    std::thread::sleep(Duration::from_secs(12));
    ws.write_all(b"ping2").unwrap();
    ws.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping2");
}

#[test]
fn tcp_tunnel_round_trips_bytes() {
    let s = EdgeStack::start("");
    let echo = tcp_echo();
    let token = s.pro_token();
    let mut client = s.ssh(
        "tcp",
        &SshArgs::http_tunnel(Some(&format!("{token}+tcp")), echo),
    );
    let url = client.wait_for_url(PATIENCE).unwrap();
    assert!(url.starts_with("tcp://"), "{url}");
    let (_, port) = url_host_port(&url).unwrap();
    let (lo, hi) = s.edge.spec.tcp_ports;
    assert!(
        (lo..=hi).contains(&port),
        "{port} is from the configured range"
    );
    let mut conn = TcpStream::connect((s.edge.spec.ip, port)).unwrap();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 256) as u8).collect();
    let mut writer = conn.try_clone().unwrap();
    let sent = payload.clone();
    let w = std::thread::spawn(move || writer.write_all(&sent));
    let mut back = vec![0u8; payload.len()];
    conn.read_exact(&mut back).unwrap();
    w.join().unwrap().unwrap();
    assert!(back == payload, "TCP bytes came back different");
}

#[test]
fn tls_tunnel_passes_tls_through_routed_by_sni() {
    let s = EdgeStack::start("");
    let service = LocalTlsService::start(&s.stack.dir.join("tls-service"));
    let token = s.pro_token();
    let mut client = s.ssh(
        "tls",
        &SshArgs::http_tunnel(Some(&format!("{token}+tls")), service.port),
    );
    let url = client.wait_for_url(PATIENCE).unwrap();
    assert!(url.starts_with("tls://"), "{url}");
    let (host, port) = url_host_port(&url).unwrap();
    assert_eq!(port, s.edge.spec.tls, "the URL names the TLS port");
    let out = client.output();
    assert!(
        out.contains("must speak TLS itself") && out.contains(&format!("https://{host}:{port}/")),
        "the client is told what passthrough means: {out}"
    );

    // A visitor's TLS session reaches the local server, which holds the certificate: the
    // handshake only completes if every byte, the ClientHello first, arrives unchanged.
    let ip = s.edge.spec.ip;
    let r = curl_tls(&host, ip, port, "/", None);
    assert_eq!(r.code, 0, "curl over TLS: {}", r.stderr);
    assert!(
        r.body.contains("s_server"),
        "the local server answered: {}",
        r.body
    );
    let r = curl_tls(&host.to_uppercase(), ip, port, "/", None);
    assert_eq!(r.code, 0, "server names are matched without case");

    // A name no TLS tunnel holds: the visitor's TLS library says so.
    let r = curl_tls("nobody.a.tunnel.test", ip, port, "/", None);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("unrecognized name"), "{}", r.stderr);

    // The tunnel's name over plain HTTP (on the HTTP port, or on the TLS port, which serves
    // plain HTTP as the HTTP port does): a sentence that says where to go.
    let http_url = format!("http://{host}:{}", s.edge.spec.http);
    let resp = s.visit(&http_url, "/");
    assert_eq!(resp.status(), 421);
    let text = resp.text().unwrap();
    assert!(text.contains(&format!("https://{host}:{port}/")), "{text}");
    let (status, text) = http_get((ip, port).into(), &host, "/").unwrap();
    assert_eq!(status, 421, "{text}");
    assert!(text.contains(&format!("https://{host}:{port}/")), "{text}");

    // A ClientHello cut short (a record header, then a handshake message of 1 byte that
    // claims 255) leaves the edge serving. (Bytes that are no TLS get the 400 page:
    // `edge_hostile::unreadable_request_heads_get_a_page_that_says_why`.)
    let mut raw = std::net::TcpStream::connect((ip, port)).unwrap();
    raw.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0xff])
        .unwrap();
    drop(raw);
    let r = curl_tls(&host, ip, port, "/", None);
    assert_eq!(r.code, 0, "still serving: {}", r.stderr);
    assert!(r.body.contains("s_server"));

    // Options that need HTTP are refused for a tls tunnel instead of silently not applying.
    let mut args = SshArgs::http_tunnel(Some(&format!("{}+tls", s.pro_token())), service.port);
    args.command = vec!["b:alice:s3cret".into()];
    let mut refused = s.ssh("tls-auth", &args);
    let out = refused.wait_exit(PATIENCE).unwrap();
    assert!(out.contains("only w: applies"), "{out}");
}

#[test]
fn noreverseproxy_routes_by_host_then_passes_bytes_untouched() {
    let s = EdgeStack::start("");
    let echo = tcp_echo();
    let token = s.pro_token();
    let mut args = SshArgs::http_tunnel(Some(&token), echo);
    args.command = vec!["x:noreverseproxy".into()];
    let mut client = s.ssh("raw", &args);
    let url = client.wait_for_url(PATIENCE).unwrap();
    let (host, _) = url_host_port(&url).unwrap();

    // The local service echoes: what comes back is exactly what reached it. The head keeps
    // its odd casing and gets no X-Forwarded-*; bytes after it need not be HTTP at all.
    let mut sent = format!(
        "GET /raw HTTP/1.1\r\nhOsT: {}\r\nX-Odd-Case: KeepMe\r\n\r\n",
        host.to_uppercase()
    )
    .into_bytes();
    sent.extend_from_slice(b"\x00\x01not http\xff\xfe");
    let mut conn = TcpStream::connect(s.edge.http_addr()).unwrap();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    conn.write_all(&sent).unwrap();
    let mut back = vec![0u8; sent.len()];
    conn.read_exact(&mut back).unwrap();
    assert!(
        back == sent,
        "bytes came back changed: {:?}",
        String::from_utf8_lossy(&back)
    );

    // Options that need HTTP cannot come with it: the client is told why.
    let mut args = SshArgs::http_tunnel(Some(&token), echo);
    args.command = vec!["x:noreverseproxy".into(), "b:alice:s3cret".into()];
    let mut refused = s.ssh("raw-auth", &args);
    let out = refused.wait_exit(PATIENCE).unwrap();
    assert!(out.contains("cannot apply"), "{out}");
}

#[test]
fn https_is_served_with_the_operators_certificate() {
    let dev = DevCertificate::make();
    let cert = dev.cert.clone();
    let s = EdgeStack::start(&dev.edge_toml());
    let ip = s.edge.spec.ip;
    let tls_port = s.edge.spec.tls;
    let local = LocalService::start("local");
    let token = s.pro_token();
    let mut client = s.ssh("https", &SshArgs::http_tunnel(Some(&token), local.port));
    let url = client.wait_for_url(PATIENCE).unwrap();
    let (host, _) = url_host_port(&url).unwrap();
    let out = client.output();
    assert!(
        out.contains(&format!("https://{host}:{tls_port}")),
        "the HTTPS URL is printed too: {out}"
    );

    // The visitor's curl checks the certificate; the local service sees https as the proto.
    let r = curl_tls(&host, ip, tls_port, "/hello", Some(&cert));
    assert_eq!(
        (r.code, r.status.as_str()),
        (0, "200"),
        "{}{}",
        r.body,
        r.stderr
    );
    assert!(
        r.body.starts_with("hello from local") && r.body.contains("xfp=https"),
        "{}",
        r.body
    );
    let r = curl_tls("nobody.a.tunnel.test", ip, tls_port, "/", Some(&cert));
    assert_eq!(
        (r.code, r.status.as_str()),
        (0, "404"),
        "unknown names get the page over HTTPS: {}",
        r.body
    );

    // x:https sends plain-HTTP visitors to the HTTPS URL, port included.
    let mut args = SshArgs::http_tunnel(Some(&s.pro_token()), local.port);
    args.command = vec!["x:https".into()];
    let mut redirecting = s.ssh("x-https", &args);
    let url = redirecting.wait_for_url(PATIENCE).unwrap();
    let (rhost, _) = url_host_port(&url).unwrap();
    let plain = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .resolve(&rhost, s.edge.http_addr())
        .build()
        .unwrap()
        .get(format!("{url}/p?q=1"))
        .send()
        .unwrap();
    assert_eq!(plain.status(), 308);
    assert_eq!(
        plain.headers()["location"],
        format!("https://{rhost}:{tls_port}/p?q=1").as_str()
    );

    // A tls tunnel on the same edge still passes through untouched.
    let service = LocalTlsService::start(&s.stack.dir.join("tls-service"));
    let mut args = SshArgs::http_tunnel(Some(&format!("{}+tls", s.pro_token())), service.port);
    args.forwards = vec![format!("raw:0:localhost:{}", service.port)];
    let mut passthrough = s.ssh("tls-too", &args);
    let url = passthrough.wait_for_url(PATIENCE).unwrap();
    let (thost, _) = url_host_port(&url).unwrap();
    let r = curl_tls(&thost, ip, tls_port, "/", None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.body.contains("s_server"), "{}", r.body);
}

/// When a visitor leaves, the edge sends EOF on the tunnel's channel and lets the client
/// close it first: russh keeps a channel the server closed first until the whole SSH
/// session ends (about 3 KiB each, so a long-lived tunnel's edge grew with every visitor).
/// Every channel of 30 kept-alive HTTP visitors and 10 `tcp` visitors, each leaving after
/// its answer while the local services keep their side open, is closed by the client first.
#[test]
fn channels_of_departed_visitors_are_closed_by_the_client_first() {
    let s = EdgeStack::start("");
    let local = LocalService::start("local");
    let echo = tcp_echo();
    let token = s.pro_token();
    let mut http = s.ssh("http", &SshArgs::http_tunnel(Some(&token), local.port));
    let url = http.wait_for_url(PATIENCE).unwrap();
    let (host, _) = url_host_port(&url).unwrap();
    let mut tcp = s.ssh(
        "tcp",
        &SshArgs::http_tunnel(Some(&format!("{}+tcp", s.pro_token())), echo),
    );
    let (_, tcp_port) = url_host_port(&tcp.wait_for_url(PATIENCE).unwrap()).unwrap();

    for i in 0..30 {
        // Kept alive (no `Connection: close`), so only the visitor's leaving ends it.
        let mut conn = TcpStream::connect(s.edge.http_addr()).unwrap();
        conn.set_read_timeout(Some(PATIENCE)).unwrap();
        write!(conn, "GET /v{i} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
        let head = read_head(&mut conn);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_string())
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no length in {head}"));
        let mut body = vec![0u8; length];
        conn.read_exact(&mut body).unwrap();
        assert!(body.starts_with(b"hello from local"));
    }
    for i in 0..10u8 {
        let mut conn = TcpStream::connect((s.edge.spec.ip, tcp_port)).unwrap();
        conn.set_read_timeout(Some(PATIENCE)).unwrap();
        conn.write_all(&[i; 100]).unwrap();
        let mut back = [0u8; 100];
        conn.read_exact(&mut back).unwrap();
        assert_eq!(back, [i; 100]);
    }

    let text = eventually(
        "every departed visitor's channel closed by the client",
        || {
            let text = s.edge.metrics()?;
            let by_client = metric(
                &text,
                "nearhop_edge_channels_closed_total",
                &[("first", "client")],
            )
            .unwrap_or(0.0);
            anyhow::ensure!(by_client >= 40.0, "{by_client} of 40 so far");
            Ok(text)
        },
    );
    assert_eq!(
        metric(
            &text,
            "nearhop_edge_channels_closed_total",
            &[("first", "edge")]
        ),
        None,
        "no channel waited out its linger"
    );
    assert!(http.is_running() && tcp.is_running());
}

/// One port for everything (443 in production, for networks that let nothing else out):
/// the stock OpenSSH client opens a tunnel through the TLS port, visitors reach it over
/// plain HTTP on that same port and on the HTTP port, and TLS passthrough still works there
/// (above). With `ssh_on_tls_port = false` the TLS port speaks TLS only: ssh fails and plain
/// HTTP gets a sentence naming the HTTP port.
#[test]
fn ssh_and_plain_http_are_served_on_the_tls_port() {
    let dev = DevCertificate::make();
    let cert = dev.cert.clone();
    let s = EdgeStack::start(&format!(
        "{}ssh_on_tls_port_silence_ms = 1500\n",
        dev.edge_toml()
    ));
    let local = LocalService::start("local");
    let tls_addr = std::net::SocketAddr::from((s.edge.spec.ip, s.edge.spec.tls));
    let mut client = SshClient::start(
        &s.stack.dir.join("ssh"),
        "on-443",
        tls_addr,
        &SshArgs::http_tunnel(Some(&s.pro_token()), local.port),
    )
    .unwrap();
    let url = client.wait_for_url(PATIENCE).unwrap();
    let (host, _) = url_host_port(&url).unwrap();
    let body = s.visit(&url, "/via-http-port").text().unwrap();
    assert!(
        body.starts_with("hello from local /via-http-port"),
        "{body}"
    );
    let (status, body) = http_get(tls_addr, &host, "/via-tls-port").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("hello from local /via-tls-port"), "{body}");
    // HTTPS on the same port, to the tunnel that came in over it.
    let r = curl_tls(
        &host,
        s.edge.spec.ip,
        s.edge.spec.tls,
        "/via-https",
        Some(&cert),
    );
    assert_eq!(
        (r.code, r.status.as_str()),
        (0, "200"),
        "{}{}",
        r.body,
        r.stderr
    );
    assert!(r.body.contains("xfp=https"), "{}", r.body);

    // Garbage on the shared port is answered as bad HTTP, and the port goes on serving.
    let mut junk = TcpStream::connect(tls_addr).unwrap();
    junk.set_read_timeout(Some(PATIENCE)).unwrap();
    junk.write_all(b"\x00\xff\x13garbage\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = junk.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert!(client.is_running());

    // The other order: a client that waits for the server's identification before saying
    // anything. The proxy command holds OpenSSH's bytes until the edge has spoken.
    let order = s.stack.dir.join("server-first.log");
    let proxy = s.stack.dir.join("server_first.py");
    std::fs::write(&proxy, SERVER_FIRST_PROXY).unwrap();
    let mut args = SshArgs::http_tunnel(Some(&s.pro_token()), local.port);
    args.options.push(format!(
        "ProxyCommand=python3 {} %h %p {}",
        proxy.display(),
        order.display()
    ));
    let mut waiting =
        SshClient::start(&s.stack.dir.join("ssh"), "server-first", tls_addr, &args).unwrap();
    let url2 = waiting.wait_for_url(PATIENCE).unwrap();
    let logged = std::fs::read_to_string(&order).unwrap();
    assert!(
        logged.starts_with("server spoke first: SSH-2.0-nearhop"),
        "{logged}"
    );
    let body = s.visit(&url2, "/after-silence").text().unwrap();
    assert!(
        body.starts_with("hello from local /after-silence"),
        "{body}"
    );
    assert!(client.is_running() && waiting.is_running());

    let tls_only = EdgeStack::start("ssh_on_tls_port = false");
    let tls_only_addr = std::net::SocketAddr::from((tls_only.edge.spec.ip, tls_only.edge.spec.tls));
    let mut refused = SshClient::start(
        &tls_only.stack.dir.join("ssh"),
        "not-on-443",
        tls_only_addr,
        &SshArgs::http_tunnel(Some(&tls_only.pro_token()), local.port),
    )
    .unwrap();
    let out = refused.wait_exit(PATIENCE).unwrap();
    assert!(!out.contains("http://"), "{out}");
    let (status, text) = http_get(tls_only_addr, &host, "/").unwrap();
    assert_eq!(status, 400);
    assert!(
        text.contains("TLS port") && text.contains(&tls_only.edge.spec.http.to_string()),
        "{text}"
    );
}

/// An SSH proxy command (`%h %p LOG`) that says nothing to the server until the server has
/// sent its identification line, as a client would that lets the server speak first; it
/// logs what came first, then carries bytes both ways.
const SERVER_FIRST_PROXY: &str = r#"
import os, select, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
held, banner = b"", b""
while not banner.endswith(b"\n"):
    ready, _, _ = select.select([s, 0], [], [])
    if s in ready:
        d = s.recv(4096)
        if not d:
            sys.exit(1)
        banner += d
    if 0 in ready:
        d = os.read(0, 65536)
        if not d:
            sys.exit(0)
        held += d
with open(sys.argv[3], "w") as log:
    log.write("server spoke first: " + banner.decode(errors="replace").strip() + "\n")
os.write(1, banner)
s.sendall(held)
while True:
    ready, _, _ = select.select([s, 0], [], [])
    if s in ready:
        d = s.recv(65536)
        if not d:
            break
        os.write(1, d)
    if 0 in ready:
        d = os.read(0, 65536)
        if not d:
            s.shutdown(socket.SHUT_WR)
            break
        s.sendall(d)
"#;
