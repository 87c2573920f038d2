//! Hostile input on every transport (malformed JSON, unknown methods, huge lines, overlong
//! names, binary garbage, half-closed sockets) gets a clear refusal, never a crash, and pdns
//! keeps answering through the same backend.

use nearhop_stack::dns_client::*;
use nearhop_stack::fixtures::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

fn read_reply(r: &mut impl BufRead) -> Value {
    let mut line = String::new();
    r.read_line(&mut line).expect("reply line");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?} is not JSON: {e}"))
}

fn lookup(name: &str) -> String {
    json!({"method":"lookup","parameters":{"qname":name,"qtype":"ANY","zone-id":-1,
        "remote":"127.0.0.1","local":"127.0.0.2","real-remote":"127.0.0.1/32"}})
    .to_string()
}

/// Sends every hostile line on one stream and checks each reply; the stream stays usable.
fn exercise(w: &mut impl Write, r: &mut impl BufRead) {
    let long_name = format!("{}.a.tunnel.test.", "x".repeat(300));
    let huge = format!(
        "{{\"method\":\"lookup\",\"pad\":\"{}\"}}",
        "y".repeat(1 << 20)
    );
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "error"),
        (b"\x00\xff\xfe\x01garbage".to_vec(), "error"),
        (b"[1,2,3]".to_vec(), "error"),
        (
            br#"{"method":"dropAllTables","parameters":{}}"#.to_vec(),
            "false",
        ),
        (
            br#"{"method":"lookup","parameters":{"qtype":"A"}}"#.to_vec(),
            "error",
        ),
        (huge.into_bytes(), "error"),
        (lookup(&long_name).into_bytes(), "empty"),
        (lookup("a.tunnel.test.").into_bytes(), "data"),
    ];
    for (line, want) in cases {
        w.write_all(&line).expect("write");
        w.write_all(b"\n").expect("write");
        w.flush().expect("flush");
        let reply = read_reply(r);
        match want {
            "error" => {
                assert!(reply.get("result").is_none(), "{reply}");
                assert!(reply["log"][0].as_str().is_some(), "{reply}");
            }
            "false" => assert_eq!(reply["result"], json!(false)),
            "empty" => assert_eq!(reply["result"], json!([])),
            _ => assert!(reply["result"]
                .as_array()
                .map(|a| !a.is_empty())
                .unwrap_or(false)),
        }
    }
}

#[test]
fn unix_socket_survives_hostile_input_and_pdns_keeps_answering() {
    let fx = DnsFixture::start(|_| {}).expect("fixture");
    let sock = UnixStream::connect(fx.region.backend_socket()).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut w = sock.try_clone().expect("clone");
    let mut r = BufReader::new(sock);
    exercise(&mut w, &mut r);

    // Half-closed: the request is still answered, then the backend closes its side.
    let mut half = UnixStream::connect(fx.region.backend_socket()).expect("connect");
    half.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    half.write_all(format!("{}\n", lookup("us.a.tunnel.test.")).as_bytes())
        .expect("write");
    half.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut all = String::new();
    half.read_to_string(&mut all).expect("read to EOF");
    assert!(all.contains("127.0.0.1"), "{all}");

    // A connection that dies mid-line.
    let mut cut = UnixStream::connect(fx.region.backend_socket()).expect("connect");
    cut.write_all(b"{\"method\":\"lookup\",\"parameters\":{\"qna")
        .expect("write");
    drop(cut);

    let log = std::fs::read_to_string(fx.region.backend_log()).expect("log");
    assert!(log.contains("refused a malformed request"), "{log}");
    assert!(log.contains("refused an over-long request line"), "{log}");
    let r = query(fx.region.dns_addr(), "us.a.tunnel.test", QTYPE_A, None).expect("query");
    assert_eq!(r.data_of(QTYPE_A), vec!["127.0.0.1".to_string()]);
}

/// `dig +short @ADDR -p PORT NAME chaos txt` and its status line (`status: REFUSED`).
fn dig_chaos(addr: std::net::SocketAddr, name: &str) -> (String, String) {
    let out = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string(), name, "chaos", "txt"])
        .args(["+tries=1", "+time=5"])
        .output()
        .expect("dig runs (package dnsutils or bind9-dnsutils)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or_default().to_string())
        .unwrap_or_else(|| panic!("no answer from pdns: {text}"));
    let answer = text
        .lines()
        .skip_while(|l| !l.starts_with(";; ANSWER SECTION"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    (status, answer)
}

#[test]
fn pdns_tells_no_version_and_no_host_name_over_chaos_txt() {
    let fx = DnsFixture::start(|_| {}).expect("fixture");
    for name in [
        "version.bind",
        "version.server",
        "id.server",
        "hostname.bind",
    ] {
        let (status, answer) = dig_chaos(fx.region.dns_addr(), name);
        assert!(
            answer.is_empty(),
            "{name} CH TXT was answered ({status}): {answer}"
        );
        assert_ne!(
            status, "NOERROR",
            "{name}: an empty NOERROR invites a retry elsewhere"
        );
    }
    // The zones are still served.
    let r = query(fx.region.dns_addr(), "us.a.tunnel.test", QTYPE_A, None).expect("query");
    assert_eq!(r.data_of(QTYPE_A), vec!["127.0.0.1".to_string()]);
}

#[test]
fn http_connector_and_wait_endpoint_refuse_bad_input_clearly() {
    let fx = DnsFixture::start(|_| {}).expect("fixture");
    let base = fx.region.backend_url();
    // One pooled connection for every request: a refused body must not cost the caller
    // its connection or the answer that says what was wrong.
    let client = reqwest::blocking::Client::new();

    let resp = client
        .post(format!("{base}/dns"))
        .body("\u{1}\u{2}not json")
        .send()
        .expect("post");
    assert_eq!(resp.status().as_u16(), 500);
    let v: Value = resp.json().expect("json body");
    assert!(v.get("result").is_none() && v["log"].is_array(), "{v}");

    let resp = client
        .post(format!("{base}/dns/lookup"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("parameters=%7Bbroken")
        .send()
        .expect("post");
    assert_eq!(resp.status().as_u16(), 500);

    let long = format!("{}.a.tunnel.test.", "x".repeat(300));
    let v: Value = client
        .get(format!("{base}/dns/lookup/{long}/ANY"))
        .send()
        .expect("get")
        .json()
        .expect("json");
    assert_eq!(v, json!({"result": []}));

    let v: Value = client
        .get(format!("{base}/dns/frobnicate/x"))
        .send()
        .expect("get")
        .json()
        .expect("json");
    assert_eq!(v, json!({"result": false}));

    let resp = client
        .post(format!("{base}/dns"))
        .body(vec![b'z'; 2 << 20])
        .send()
        .expect("post");
    assert_eq!(resp.status().as_u16(), 500);
    let v: Value = resp.json().expect("json body");
    assert!(
        v["log"]
            .to_string()
            .contains("longer than max_request_bytes"),
        "{v}"
    );

    for query in [
        "",
        "lsn=banana",
        "lsn=0/1&timeout_ms=-5",
        "lsn=0/1&timeout_ms=999999",
    ] {
        let resp = client
            .get(format!("{base}/v1/wait?{query}"))
            .send()
            .expect("wait");
        assert_eq!(resp.status().as_u16(), 400, "{query}");
        let v: Value = resp.json().expect("json");
        assert_eq!(v["error"]["code"], "bad_request", "{query}");
    }
    let v: Value = client
        .get(format!("{base}/v1/wait?lsn=FFFFFFFF/0&timeout_ms=10"))
        .send()
        .expect("wait")
        .json()
        .expect("json");
    assert_eq!(v["reached"], json!(false));

    let r = query(fx.region.dns_addr(), "us.a.tunnel.test", QTYPE_A, None).expect("query");
    assert_eq!(r.data_of(QTYPE_A), vec!["127.0.0.1".to_string()]);
}

#[test]
fn pipe_connector_survives_hostile_input_and_exits_on_eof() {
    let fx = DnsFixture::start(|_| {}).expect("fixture");
    let bin = nearhop_stack::bin_path("nearhop-pdns-backend").expect("binary");
    let mut child = Command::new(bin)
        .arg("--pipe")
        .arg("--config")
        .arg(fx.region.backend_config())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    stdin
        .write_all(b"{\"method\":\"initialize\",\"parameters\":{\"timeout\":\"2000\"}}\n")
        .expect("write");
    assert_eq!(read_reply(&mut stdout)["result"], json!(true));
    exercise(&mut stdin, &mut stdout);
    drop(stdin);
    // Exits on EOF; one that does not is killed, and the test fails instead of hanging.
    let status = nearhop_stack::poll::try_eventually(nearhop_stack::poll::PATIENCE, || {
        child
            .try_wait()?
            .ok_or_else(|| anyhow::anyhow!("still running after its stdin closed"))
    });
    let status = status.unwrap_or_else(|e| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the pipe connector did not exit on EOF: {e}")
    });
    assert!(status.success(), "{status}");
}
