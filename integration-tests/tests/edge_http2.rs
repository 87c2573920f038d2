//! HTTP/2 to HTTPS visitors through a real edge, the stock OpenSSH client and curl: ALPN
//! `h2` is negotiated, every stream of one connection passes the tunnel's rules like an
//! HTTP/1.1 request, streams reach the local service side by side, a 100 MB download and a
//! 32 MB upload arrive intact, a tunnel held by another edge is reached over h2, HTTP/1.1
//! keeps working on the same port, a real browser (headless Chromium) loads a page and
//! large bodies over h2, and hostile frames (no authority, rapid reset, oversized
//! headers) get clear errors while the edge goes on.
//!
//! One file on purpose: every case drives curl (or the frame-level client at its end,
//! about 100 lines of Python) through the helpers at its top, and reads on its own.

use nearhop_stack::chromium::Chromium;
use nearhop_stack::edge::DevCertificate;
use nearhop_stack::prelude::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// One transfer of a curl run: the name and path asked for, and its own arguments
/// (credentials, headers).
struct Fetch {
    host: String,
    path: String,
    args: Vec<String>,
}

impl Fetch {
    fn new(host: &str, path: &str, args: &[&str]) -> Fetch {
        Fetch {
            host: host.to_string(),
            path: path.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }
}

/// What curl reported for one transfer.
#[derive(Debug)]
struct Got {
    /// `2` or `1.1`.
    version: String,
    status: u16,
    /// Connections curl opened for this transfer (0: it reused one).
    connects: u32,
    body: String,
}

/// Where the visitors' curl goes: the edge's TLS port, checked against the zone's CA.
struct Https<'a> {
    ip: Ipv4Addr,
    port: u16,
    ca: &'a Path,
    /// The visitor's own address (`--interface`).
    from: Ipv4Addr,
    /// Where bodies are written.
    dir: PathBuf,
}

impl Https<'_> {
    /// Runs `fetches` in ONE curl invocation (`--next` between them), so that they share a
    /// connection when the protocol allows; `protocol` is `--http2` or `--http1.1`.
    fn curl(&self, protocol: &str, fetches: &[Fetch]) -> Vec<Got> {
        // Bodies of an earlier run must not pass for this one's.
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).unwrap();
        let mut cmd = std::process::Command::new("curl");
        for (i, f) in fetches.iter().enumerate() {
            if i > 0 {
                cmd.arg("--next");
            }
            cmd.args(["-sS", protocol, "--max-time", "60", "--interface"])
                .arg(self.from.to_string())
                .arg("--cacert")
                .arg(self.ca)
                .arg("--resolve")
                .arg(format!("{}:{}:{}", f.host, self.port, self.ip))
                .arg("-o")
                .arg(self.dir.join(i.to_string()))
                .args(["-w", "%{http_version} %{http_code} %{num_connects}\\n"])
                .args(&f.args)
                .arg(format!("https://{}:{}{}", f.host, self.port, f.path));
        }
        let out = cmd.output().expect("curl runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines.len(),
            fetches.len(),
            "one line per transfer: {stdout}{stderr}"
        );
        lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                let mut words = line.split_whitespace();
                let mut next = || words.next().unwrap_or("").to_string();
                let (version, status, connects) = (next(), next(), next());
                Got {
                    version,
                    status: status.parse().unwrap_or(0),
                    connects: connects.parse().unwrap_or(u32::MAX),
                    body: std::fs::read_to_string(self.dir.join(i.to_string())).unwrap_or_default(),
                }
            })
            .collect()
    }
}

/// Asserts that every transfer went over HTTP/2 on the first one's connection, with the
/// statuses `want`.
fn on_one_h2_connection(got: &[Got], want: &[u16]) {
    let statuses: Vec<u16> = got.iter().map(|g| g.status).collect();
    assert_eq!(statuses, want, "{got:#?}");
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.version, "2", "transfer {i} over HTTP/2: {got:#?}");
        let connects = if i == 0 { 1 } else { 0 };
        assert_eq!(
            g.connects, connects,
            "transfer {i} on the first one's connection: {got:#?}"
        );
    }
}

/// A tunnel with `options` to `local` through the stack's edge; its host name.
fn tunnel(
    s: &EdgeStack,
    name: &str,
    local: &LocalService,
    options: &[&str],
) -> (SshClient, String) {
    let mut args = SshArgs::http_tunnel(Some(&s.pro_token()), local.port);
    args.command = options.iter().map(|o| o.to_string()).collect();
    let mut client = s.ssh(name, &args);
    let url = client.wait_for_url(PATIENCE).unwrap();
    (client, host_of(&url))
}

/// The edge stack serving the dev zones' certificate (kept for `--cacert`), with
/// `extra_toml`.
fn https_stack(extra_toml: &str) -> (EdgeStack, DevCertificate) {
    let dev = DevCertificate::make();
    let s = EdgeStack::start(&format!("{}{extra_toml}", dev.edge_toml()));
    (s, dev)
}

#[test]
fn every_stream_of_one_h2_connection_passes_the_tunnels_rules() {
    // A head bound under the 64 KiB of header block curl's nghttp2 sends at most, so that
    // the oversized head below reaches the edge.
    let (s, dev) = https_stack("visitor_max_header_bytes = 16384\n");
    let ca = dev.cert.clone();
    let local = LocalService::start("local");
    let at = |from: Ipv4Addr, dir: &str| Https {
        ip: s.edge.spec.ip,
        port: s.edge.spec.tls,
        ca: &ca,
        from,
        dir: s.stack.dir.join("h2").join(dir),
    };
    let me = at(Ipv4Addr::LOCALHOST, "me");

    // No options: h2 negotiated, forwarding headers as over HTTP/1.1, Host from :authority.
    let (_plain, host) = tunnel(&s, "plain", &local, &[]);
    let got = me.curl(
        "--http2",
        &[
            Fetch::new(&host, "/one", &[]),
            Fetch::new(&host, "/two", &["-H", "Cookie: a=1", "-H", "Cookie: b=2"]),
            Fetch::new(&host, "/three", &["-X", "POST", "-d", "x=1"]),
        ],
    );
    on_one_h2_connection(&got, &[200, 200, 200]);
    let port = s.edge.spec.tls;
    for (g, path) in got.iter().zip(["/one", "/two", "/three"]) {
        assert!(
            g.body.starts_with(&format!("hello from local {path}")),
            "{}",
            g.body
        );
        assert!(g.body.contains("xfp=https"), "{}", g.body);
        assert!(g.body.contains("xff=127.0.0.1\n"), "{}", g.body);
        assert!(g.body.contains(&format!("xfh={host}\n")), "{}", g.body);
        assert!(
            g.body.contains(&format!("host={host}:{port}\n")),
            "the local service gets Host from :authority: {}",
            g.body
        );
    }
    assert!(got[2].body.contains("method=POST"), "{}", got[2].body);

    // HTTP/1.1 still works on the same port.
    let got = me.curl("--http1.1", &[Fetch::new(&host, "/h1", &[])]);
    assert_eq!((got[0].version.as_str(), got[0].status), ("1.1", 200));
    assert!(
        got[0].body.starts_with("hello from local /h1"),
        "{}",
        got[0].body
    );

    // b: refuses, admits, refuses a wrong password, on one connection.
    let (_basic, host) = tunnel(&s, "basic", &local, &["b:alice:secret"]);
    let got = me.curl(
        "--http2",
        &[
            Fetch::new(&host, "/", &[]),
            Fetch::new(&host, "/in", &["-u", "alice:secret"]),
            Fetch::new(&host, "/", &["-u", "alice:wrong"]),
        ],
    );
    on_one_h2_connection(&got, &[401, 200, 401]);
    assert!(
        got[1].body.contains("authorization=\n"),
        "the checked credentials are not forwarded: {}",
        got[1].body
    );

    // k: likewise with a bearer key.
    let (_keyed, host) = tunnel(&s, "keyed", &local, &["k:abc"]);
    let got = me.curl(
        "--http2",
        &[
            Fetch::new(&host, "/", &["-H", "Authorization: Bearer nope"]),
            Fetch::new(&host, "/in", &["-H", "Authorization: Bearer abc"]),
            Fetch::new(&host, "/", &[]),
        ],
    );
    on_one_h2_connection(&got, &[401, 200, 401]);
    assert!(got[1].body.contains("authorization=\n"), "{}", got[1].body);

    // Header rules: added and updated on every stream.
    let (_rules, host) = tunnel(
        &s,
        "rules",
        &local,
        &["a:X-Added:yes", "u:X-Forwarded-Host:rewritten"],
    );
    let got = me.curl(
        "--http2",
        &[Fetch::new(&host, "/a", &[]), Fetch::new(&host, "/b", &[])],
    );
    on_one_h2_connection(&got, &[200, 200]);
    for g in &got {
        assert!(
            g.body.contains("x-added=yes") && g.body.contains("xfh=rewritten"),
            "{}",
            g.body
        );
    }

    // x:https: a visitor already on HTTPS is served, not redirected.
    let (_redirecting, host) = tunnel(&s, "x-https", &local, &["x:https"]);
    let got = me.curl(
        "--http2",
        &[Fetch::new(&host, "/p", &[]), Fetch::new(&host, "/q", &[])],
    );
    on_one_h2_connection(&got, &[200, 200]);
    assert!(
        got[1].body.starts_with("hello from local /q"),
        "{}",
        got[1].body
    );

    // w: admits the listed visitor and refuses another, every stream.
    let (_allow, host) = tunnel(&s, "allow", &local, &["w:127.0.0.9/32"]);
    let inside = at(Ipv4Addr::new(127, 0, 0, 9), "inside");
    let got = inside.curl(
        "--http2",
        &[Fetch::new(&host, "/1", &[]), Fetch::new(&host, "/2", &[])],
    );
    on_one_h2_connection(&got, &[200, 200]);
    assert!(got[0].body.contains("xff=127.0.0.9\n"), "{}", got[0].body);
    let got = me.curl(
        "--http2",
        &[Fetch::new(&host, "/1", &[]), Fetch::new(&host, "/2", &[])],
    );
    on_one_h2_connection(&got, &[403, 403]);

    // An unknown name: the edge's page, on every stream.
    let got = me.curl(
        "--http2",
        &[
            Fetch::new("nobody.a.tunnel.test", "/", &[]),
            Fetch::new("nobody.a.tunnel.test", "/x", &[]),
        ],
    );
    on_one_h2_connection(&got, &[404, 404]);
    assert!(got[1].body.contains("No tunnel here"), "{}", got[1].body);

    // The request inspector records h2 streams like HTTP/1.1 requests.
    let inspector_port = nearhop_stack::ports::free_port(Ipv4Addr::LOCALHOST);
    let args = SshArgs {
        options: vec![format!(
            "LocalForward=127.0.0.1:{inspector_port} localhost:4300"
        )],
        ..SshArgs::http_tunnel(Some(&format!("{}+inspect", s.pro_token())), local.port)
    };
    let mut inspected = s.ssh("inspected", &args);
    let host = host_of(&inspected.wait_for_url(PATIENCE).unwrap());
    let got = me.curl(
        "--http2",
        &[
            Fetch::new(&host, "/seen-1", &[]),
            Fetch::new(&host, "/seen-2", &["-X", "POST", "-d", "posted"]),
        ],
    );
    on_one_h2_connection(&got, &[200, 200]);
    let list = eventually("the inspector lists both streams, answered", || {
        let list: serde_json::Value =
            reqwest::blocking::get(format!("http://127.0.0.1:{inspector_port}/api/requests"))?
                .json()?;
        let done = |path: &str| {
            list["requests"].as_array().is_some_and(|rs| {
                rs.iter()
                    .any(|r| r["path"] == path && r["state"] == "done" && r["status"] == 200)
            })
        };
        anyhow::ensure!(done("/seen-1") && done("/seen-2"), "{list}");
        Ok(list)
    });
    let posted = list["requests"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["path"] == "/seen-2"))
        .unwrap_or_else(|| panic!("/seen-2 listed: {list}"));
    assert_eq!(posted["method"], "POST", "{list}");

    // Headers past the edge's limit (16 KiB here) are refused before the tunnel with the
    // 431 page, as over HTTP/1.1 (a browser whose cookies grew too large is told to clear
    // them), and the connection goes on. h2 alone ended the whole connection.
    let big_local = LocalService::start("big");
    let (_big, host) = tunnel(&s, "big", &big_local, &[]);
    let huge = format!("X-Huge: {}", "h".repeat(40 * 1024));
    let got = me.curl(
        "--http2",
        &[
            Fetch::new(&host, "/huge", &["-H", &huge]),
            Fetch::new(&host, "/after", &[]),
        ],
    );
    on_one_h2_connection(&got, &[431, 200]);
    assert!(
        got[0].body.contains("clear this site's cookies"),
        "{got:#?}"
    );
    assert_eq!(
        big_local.served.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "only the small request reached the local service"
    );
}

/// A local service that answers no request until `wanted` requests wait at once: the
/// requests reach it side by side, or none is ever answered. It counts the connections
/// it accepted (one per SSH channel).
fn gathering_service(wanted: usize) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let waiting = Arc::new((Mutex::new(0usize), Condvar::new()));
    let counted = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counted.fetch_add(1, Ordering::Relaxed);
            let waiting = waiting.clone();
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                loop {
                    // A request head (the test sends GETs without bodies).
                    let mut line = String::new();
                    let mut path = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if path.is_empty() {
                            path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let (count, all_here) = &*waiting;
                    let mut n = count.lock().unwrap();
                    *n += 1;
                    all_here.notify_all();
                    while *n < wanted {
                        n = all_here.wait(n).unwrap();
                    }
                    drop(n);
                    let body = format!("gathered {path}\n");
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: keep-alive\r\nkeep-alive: timeout=60\r\n\r\n",
                        body.len()
                    );
                    if writer.write_all(head.as_bytes()).is_err()
                        || writer.write_all(body.as_bytes()).is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (port, accepted)
}

#[test]
fn h2_streams_run_side_by_side_and_large_bodies_cross_intact() {
    let (s, dev) = https_stack("");
    let ca = dev.cert.clone();
    let (ip, port) = (s.edge.spec.ip, s.edge.spec.tls);

    // 20 streams at once on one connection: the service answers none until all 20 wait
    // at once, so they reached it in parallel. 20 more follow on the same connection.
    let (service, accepted) = gathering_service(20);
    let args = SshArgs::http_tunnel(Some(&s.pro_token()), service);
    let mut client = s.ssh("gather", &args);
    let host = host_of(&client.wait_for_url(PATIENCE).unwrap());
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--http2", "--parallel", "--parallel-max", "20"])
        .args(["--max-time", "120", "--cacert"])
        .arg(&ca)
        .arg("--resolve")
        .arg(format!("{host}:{port}:{ip}"))
        .args(["-w", "%{http_version} %{http_code} %{num_connects}\\n"]);
    for i in 0..40 {
        cmd.args(["-o", "/dev/null"])
            .arg(format!("https://{host}:{port}/stream/{i}"));
    }
    let out = cmd.output().expect("curl runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        40,
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut connects = 0;
    for line in &lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&words[..2], ["2", "200"], "{stdout}");
        connects += words[2].parse::<u32>().unwrap();
    }
    assert_eq!(connects, 1, "all 40 streams on one connection: {stdout}");
    let channels = accepted.load(Ordering::Relaxed);
    assert!(
        (20..40).contains(&channels),
        "20 channels at once, then idle ones taken again rather than one per stream: {channels}"
    );

    // 100 MB over h2, byte for byte.
    let local = LocalService::start("local");
    let mut client2 = s.ssh(
        "bulk",
        &SshArgs::http_tunnel(Some(&s.pro_token()), local.port),
    );
    let host = host_of(&client2.wait_for_url(PATIENCE).unwrap());
    let size = 100 * 1024 * 1024;
    let file = s.stack.dir.join("h2-blob");
    curl_h2_to_file(&ca, &host, port, ip, &[], &format!("/blob/{size}"), &file);
    let down = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    assert_blob(&down, size);

    // 32 MB up over h2 (past the 4 MiB stream window many times) and echoed back.
    let upload = upload_pattern(32 * 1024 * 1024);
    let sent = s.stack.dir.join("h2-upload");
    let echoed = s.stack.dir.join("h2-echoed");
    std::fs::write(&sent, &upload).unwrap();
    let data = format!("@{}", sent.display());
    curl_h2_to_file(
        &ca,
        &host,
        port,
        ip,
        &["--data-binary", &data],
        "/echo",
        &echoed,
    );
    let back = std::fs::read(&echoed).unwrap();
    std::fs::remove_file(&sent).unwrap();
    std::fs::remove_file(&echoed).unwrap();
    assert!(back == upload, "the upload came back different");
    drop((client, client2));
}

/// Browsers are most of HTTP/2's visitors, and they read answers their own way (large
/// windows, many streams at once): Chromium loads a page over h2 and then fetches three
/// 8 MB bodies at once on the same connection, each checked byte for byte in the page.
#[test]
fn a_browser_loads_a_page_and_large_bodies_at_once_over_h2() {
    let (s, _dev) = https_stack("");
    let local = LocalService::start("local");
    let (_client, host) = tunnel(&s, "browser", &local, &[]);
    let (ip, port) = (s.edge.spec.ip, s.edge.spec.tls);
    let dir = s.stack.dir.join("chromium");
    std::fs::create_dir_all(&dir).unwrap();
    // The stack's certificate is self-signed: the browser is told to take it, and where
    // the name lives (and that the test's port is one it may use).
    let switches = [
        "--ignore-certificate-errors".to_string(),
        format!("--host-resolver-rules=MAP {host} {ip}"),
        format!("--explicitly-allowed-ports={port}"),
    ];
    let mut b = Chromium::start(&dir.join("profile"), &dir.join("chromium.log"), &switches)
        .expect("chromium starts (apt-get install chromium)");
    b.open(&format!("https://{host}:{port}/page/one")).unwrap();
    b.wait_until(
        "the local service's page",
        "location.protocol === 'https:' && document.readyState === 'complete' \
         && document.body.innerText.includes('hello from local /page/one')",
    )
    .unwrap();
    assert_eq!(
        b.eval("performance.getEntriesByType('navigation')[0].nextHopProtocol")
            .unwrap(),
        serde_json::json!("h2")
    );
    // The local service's /blob/N: byte i is (i * 31 + 7) % 251 (`blob_byte`).
    let fetched = b
        .eval(
            "Promise.all([1, 2, 3].map(k => fetch('/blob/' + (8000000 + k))
               .then(r => r.arrayBuffer())
               .then(buf => {
                 const a = new Uint8Array(buf);
                 let bad = -1;
                 for (let i = 0; i < a.length; i++) {
                   if (a[i] !== (i * 31 + 7) % 251) { bad = i; break; }
                 }
                 return [a.length, bad];
               })))",
        )
        .unwrap();
    assert_eq!(
        fetched,
        serde_json::json!([[8_000_001, -1], [8_000_002, -1], [8_000_003, -1]]),
        "each body whole and intact (length, first wrong byte)"
    );
    let protocols = b
        .eval("[...new Set(performance.getEntriesByType('resource').map(e => e.nextHopProtocol))]")
        .unwrap();
    assert_eq!(protocols, serde_json::json!(["h2"]), "the fetches over h2");
}

#[test]
fn a_tunnel_held_by_another_edge_is_reached_over_h2() {
    let stack = mesh_stack();
    let local = LocalService::start("local");
    let mut args = SshArgs::http_tunnel(Some(&stack.pro_token()), local.port);
    args.command = vec!["k:abc".into()];
    let mut client = stack.ssh_to(EU, "held-in-eu", &args);
    let host = host_of(&client.wait_for_url(PATIENCE).unwrap());
    let ca = stack.path().join("tls/zone-cert.pem");
    let ap = &stack.edges[AP].spec;
    let visitor = Https {
        ip: ap.ip,
        port: ap.tls,
        ca: &ca,
        from: Ipv4Addr::new(127, 0, 0, 9),
        dir: stack.path().join("h2-relay"),
    };
    // Until ap learns who holds the name, it answers its own 404.
    eventually("ap relays the tunnel", || {
        let got = visitor.curl("--http2", &[Fetch::new(&host, "/", &[])]);
        anyhow::ensure!(got[0].status == 401, "{got:?}");
        Ok(())
    });
    let key = ["-H", "Authorization: Bearer abc"];
    let got = visitor.curl(
        "--http2",
        &[
            Fetch::new(&host, "/one", &key),
            Fetch::new(&host, "/", &[]),
            Fetch::new(&host, "/two", &key),
        ],
    );
    on_one_h2_connection(&got, &[200, 401, 200]);
    for g in [&got[0], &got[2]] {
        assert!(
            g.body.contains("xff=127.0.0.9\n") && g.body.contains("xfp=https"),
            "the holder sees the real visitor over https: {}",
            g.body
        );
    }
    assert!(
        got[2].body.starts_with("hello from local /two"),
        "{}",
        got[2].body
    );
}

/// A visitor speaking HTTP/2 frame by frame (Python's ssl, no HTTP/2 library), for what
/// curl would never send: `no-authority` (one GET without `:authority` or `host`),
/// `rapid-reset` (2000 streams, each cancelled at once, in one write), `silent` (the
/// preface and no stream, then waits for the edge to close), or `zero-window` (streams get
/// no flow-control window: a 300 MB download is asked for and never let through, while
/// PINGs are answered). It prints the frames it got back, one a line.
/// `curl --http2` of `https://host:port{path}` (with `extra` arguments) into `file`;
/// panics unless it was HTTP/2 and a 200.
fn curl_h2_to_file(
    ca: &Path,
    host: &str,
    port: u16,
    ip: Ipv4Addr,
    extra: &[&str],
    path: &str,
    file: &Path,
) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--http2", "--max-time", "600", "--cacert"])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{host}:{port}:{ip}"))
        .args(extra)
        .arg("-o")
        .arg(file)
        .args(["-w", "%{http_version} %{http_code}"])
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .expect("curl runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2 200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const RAW_H2: &str = r#"import select, socket, ssl, struct, sys
ip, port, host, ca, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["h2"])
s = ctx.wrap_socket(socket.create_connection((ip, port), timeout=30), server_hostname=host)
assert s.selected_alpn_protocol() == "h2", s.selected_alpn_protocol()
def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload
def literal(index, value):
    v = value.encode()
    return bytes([index, len(v)]) + v
get = b"\x82\x87\x84"
statuses = {8: 200, 9: 204, 10: 206, 11: 304, 12: 400, 13: 404, 14: 500}
buf, body, finished = b"", b"", False
def read_frames(wait):
    """Reads what came within `wait` seconds (None: until the end); True once done."""
    global buf, body, finished
    while True:
        if wait is not None and not s.pending() and not select.select([s], [], [], wait)[0]:
            return False
        try:
            chunk = s.recv(65536)
        except (ConnectionError, ssl.SSLError, socket.timeout) as e:
            print("closed", type(e).__name__); return True
        if not chunk:
            print("closed eof"); return True
        buf += chunk
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
            n = int.from_bytes(buf[:3], "big"); kind, flags = buf[3], buf[4]
            sid = int.from_bytes(buf[5:9], "big") & 0x7fffffff
            payload, buf = buf[9:9 + n], buf[9 + n:]
            if kind == 4 and not flags & 1:
                s.sendall(frame(4, 1, 0))
            elif kind == 6 and not flags & 1:
                s.sendall(frame(6, 1, 0, payload))
            elif kind == 1:
                print("headers", sid, "status", statuses.get(payload[0] & 0x7f) if payload[0] & 0x80 else "literal")
                finished = finished or (flags & 1 and mode == "no-authority")
            elif kind == 0:
                body += payload
                finished = finished or (flags & 1 and mode == "no-authority")
            elif kind == 3:
                print("reset", sid, int.from_bytes(payload, "big"))
            elif kind == 7:
                print("goaway", int.from_bytes(payload[4:8], "big"))
                finished = finished or mode != "silent"
        if finished:
            return True
if mode == "zero-window":
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, struct.pack(">HI", 4, 0)))
    s.sendall(frame(1, 5, 1, b"\x82\x87" + literal(4, "/blob/300000000") + literal(1, host)))
else:
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0))
if mode == "no-authority":
    s.sendall(frame(1, 5, 1, get))
elif mode == "rapid-reset":
    # Batches of 100 streams, each cancelled at once; what the edge says is read between
    # batches, so that its GOAWAY is seen before it closes the connection.
    for batch in range(20):
        out = b""
        for i in range(100):
            sid = 2 * (batch * 100 + i) + 1
            out += frame(1, 5, sid, get + literal(1, host)) + frame(3, 0, sid, struct.pack(">I", 8))
        try:
            s.sendall(out)
        except (ConnectionError, ssl.SSLError) as e:
            print("sending cut off after", batch * 100, "streams:", type(e).__name__)
            break
        if read_frames(0.2):
            break
if not finished:
    read_frames(None)
if body: print("body", body.decode(errors="replace"))
"#;

fn raw_h2(https: &Https<'_>, host: &str, mode: &str) -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            RAW_H2,
            &https.ip.to_string(),
            &https.port.to_string(),
            host,
        ])
        .arg(https.ca)
        .arg(mode)
        .output()
        .expect("python3 runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A visitor whose HTTP/2 connection reads everything but opens no window for an answer
/// (its socket never fills, so no write waits) is closed after
/// `visitor_write_stall_seconds`: the tunnel channel behind the answer, unread, would stop
/// the tunnel's whole SSH session for as long as the visitor held on.
#[test]
fn an_h2_visitor_that_opens_no_window_is_cut_off_and_the_tunnel_goes_on() {
    let (s, dev) = https_stack("visitor_write_stall_seconds = 2\n");
    let ca = dev.cert.clone();
    let local = LocalService::start("local");
    let (_client, host) = tunnel(&s, "held", &local, &[]);
    let me = Https {
        ip: s.edge.spec.ip,
        port: s.edge.spec.tls,
        ca: &ca,
        from: Ipv4Addr::LOCALHOST,
        dir: s.stack.dir.join("h2-zero-window"),
    };
    let said = raw_h2(&me, &host, "zero-window");
    assert!(said.contains("headers 1 status 200"), "{said}");
    assert!(
        said.contains("closed") && !said.contains("closed timeout"),
        "the edge closed the connection: {said}"
    );
    let m = s.edge.metrics().unwrap();
    assert_eq!(
        metric(&m, "nearhop_edge_visitor_write_stalls_total", &[]),
        Some(1.0),
        "{m}"
    );
    let got = me.curl("--http2", &[Fetch::new(&host, "/after", &[])]);
    assert_eq!(
        (got[0].version.as_str(), got[0].status),
        ("2", 200),
        "the tunnel serves its other visitors: {got:?}"
    );
    // And goes on doing so: a session that had stalled was once dropped seconds later.
    for round in 0..10 {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let got = me.curl("--http2", &[Fetch::new(&host, "/later", &[])]);
        assert_eq!(got[0].status, 200, "round {round}: {got:?}");
    }
    let m = s.edge.metrics().unwrap();
    assert_eq!(
        metric(&m, "nearhop_edge_tunnels_active", &[]).unwrap_or(0.0),
        1.0,
        "{m}"
    );
}

#[test]
fn hostile_h2_gets_clear_errors_and_the_edge_goes_on() {
    let (s, dev) = https_stack("visitor_header_timeout_seconds = 3\n");
    let ca = dev.cert.clone();
    let local = LocalService::start("local");
    let (_client, host) = tunnel(&s, "target", &local, &[]);
    let me = Https {
        ip: s.edge.spec.ip,
        port: s.edge.spec.tls,
        ca: &ca,
        from: Ipv4Addr::LOCALHOST,
        dir: s.stack.dir.join("h2-hostile"),
    };
    // A stream that names no host gets the edge's 400 page saying so.
    let said = raw_h2(&me, &host, "no-authority");
    assert!(
        said.contains("headers 1 status 400") && said.contains("The request names no host"),
        "{said}"
    );
    // Rapid reset: hyper's h2 closes the connection with GOAWAY ENHANCE_YOUR_CALM (11)
    // long before the 2000th stream.
    let said = raw_h2(&me, &host, "rapid-reset");
    assert!(said.contains("goaway 11"), "{said}");
    assert!(
        local.served.load(std::sync::atomic::Ordering::Relaxed) < 2000,
        "the cancelled streams did not all reach the local service"
    );
    // Counted, and logged in the edge's own line (the h2 crate's WARN is off by default).
    eventually("the cut-off is counted", || {
        let m = s.edge.metrics()?;
        let cut = metric(&m, "nearhop_edge_http2_connections_cut_off_total", &[]);
        anyhow::ensure!(cut == Some(1.0), "cut off: {cut:?}");
        Ok(())
    });
    let log = s.edge.log_tail(400);
    assert!(log.contains("GOAWAY ENHANCE_YOUR_CALM"), "{log}");
    assert!(!log.contains("reached limit"), "h2's own line: {log}");
    // A connection that opens no stream within visitor_header_timeout_seconds is closed
    // (GOAWAY NO_ERROR, then the end of the connection), as an HTTP/1.1 one without a head.
    let said = raw_h2(&me, &host, "silent");
    assert!(
        said.contains("goaway 0") && said.contains("closed"),
        "{said}"
    );
    // The edge goes on serving, over h2 and over HTTP/1.1.
    let got = me.curl("--http2", &[Fetch::new(&host, "/after", &[])]);
    assert_eq!(
        (got[0].version.as_str(), got[0].status),
        ("2", 200),
        "{got:?}"
    );
    let got = me.curl("--http1.1", &[Fetch::new(&host, "/after", &[])]);
    assert_eq!(
        (got[0].version.as_str(), got[0].status),
        ("1.1", 200),
        "{got:?}"
    );
}
