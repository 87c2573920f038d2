//! The stock OpenSSH client against a real edge, control and Postgres: URLs are printed,
//! visitors reach the local service, `qr` draws a QR code, `-N` learns its URL.

use nearhop_stack::edge::{url_host_port, SshArgs};
use nearhop_stack::prelude::*;

#[test]
fn ssh_client_gets_a_url_and_visitors_reach_its_local_server() {
    let s = EdgeStack::start("");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let mut client = s.ssh("pro", &SshArgs::http_tunnel(Some(&token), local.port));
    let url = client.wait_for_url(PATIENCE).unwrap();
    assert!(
        url.contains(".a.tunnel.test"),
        "pro tunnels live in the pro zone: {url}"
    );
    let out = client.output();
    assert!(out.contains("region us"), "the region is printed: {out}");

    let body = s.visit(&url, "/hello").text().unwrap();
    assert!(body.starts_with("hello from local"), "{body}");
    assert!(
        body.contains("xff=127.0.0.1"),
        "X-Forwarded-For is added: {body}"
    );
    assert!(body.contains("xfp=http"), "{body}");
    let (host, _) = url_host_port(&url).unwrap();
    assert!(
        body.contains(&format!("xfh={host}\n")),
        "X-Forwarded-Host is the tunnel's name: {body}"
    );
}

/// The pro zone's `http://` URLs an ssh client printed, sorted, each once.
fn pro_urls_in(output: &str) -> Vec<String> {
    let mut urls: Vec<String> = output
        .split_whitespace()
        .filter(|w| w.starts_with("http://") && w.contains(".a.tunnel.test"))
        .map(|w| w.trim_end_matches(['.', ',', ')']).to_string())
        .collect();
    urls.sort();
    urls.dedup();
    urls
}

/// The tag of the local service behind each of `urls` (a visit's answer names it), sorted.
fn services_behind(s: &EdgeStack, urls: &[String]) -> Vec<String> {
    let mut served: Vec<String> = urls
        .iter()
        .map(|url| {
            let body = s.visit(url, "/").text().unwrap();
            body.split_whitespace().nth(2).unwrap_or("").to_string()
        })
        .collect();
    served.sort();
    served
}

/// Several `-R 0` of one pro `ssh`: the first gets the account's persistent name, the
/// others a name of their own (with a note saying why), and each serves its own service;
/// the session is not refused for asking twice. The persistent name goes to the first `-R`
/// every time: the others ask control only once the first was answered (before, whichever
/// setup reached control first took it, and the persistent URL served another port).
#[test]
fn several_forwards_of_one_pro_client_get_several_tunnels() {
    let s = EdgeStack::start("");
    let services = ["first", "second", "third"].map(LocalService::start);
    let token = s.pro_token();
    let args = SshArgs {
        user: Some(token.clone()),
        forwards: services
            .iter()
            .map(|l| format!("0:localhost:{}", l.port))
            .collect(),
        ..SshArgs::default()
    };
    for run in 0..2 {
        let mut client = s.ssh(&format!("three-{run}"), &args);
        let mut urls = Vec::new();
        eventually("three URLs printed", || {
            urls = pro_urls_in(&client.output());
            anyhow::ensure!(urls.len() == 3, "{}", client.output());
            Ok(())
        });
        let out = client.output();
        assert!(client.is_running(), "the session goes on: {out}");
        let served = services_behind(&s, &urls);
        assert_eq!(
            served,
            ["first", "second", "third"],
            "each URL its own service"
        );
        let persistent = persistent_url_in(&out);
        assert_eq!(
            services_behind(&s, std::slice::from_ref(&persistent)),
            ["first"],
            "run {run}: the persistent name serves the first -R: {out}"
        );
        client.stop();
        eventually("the tunnels closed", || {
            let status = s.visit(&persistent, "/").status();
            anyhow::ensure!(status == 404, "{persistent}: {status}");
            Ok(())
        });
    }
}

/// Of the tunnels an ssh client printed, the URL of the one without the note that it got
/// a random name: the account's persistent name.
fn persistent_url_in(output: &str) -> String {
    let mut own: Vec<String> = output
        .split("Your tunnel is live")
        .skip(1)
        .filter(|block| !block.contains("got a random name"))
        .flat_map(|block| pro_urls_in(block).into_iter().take(1))
        .collect();
    assert_eq!(own.len(), 1, "one tunnel without the note: {output}");
    own.remove(0)
}

/// A forward asking for the port an earlier `-R 0` of the same connection got (the edge's
/// HTTP port) is refused with a sentence: ssh matches visitors to local ports by the port,
/// so both tunnels would have served the first service. The others stay up, each serving
/// its own.
#[test]
fn a_forward_on_a_port_the_connection_holds_already_is_refused() {
    let s = EdgeStack::start("");
    let (first, second, third) = (
        LocalService::start("first"),
        LocalService::start("second"),
        LocalService::start("third"),
    );
    let http_port = s.edge.http_addr().port();
    let args = SshArgs {
        user: Some(s.pro_token()),
        forwards: vec![
            format!("0:localhost:{}", first.port),
            format!("{http_port}:localhost:{}", second.port),
            format!("0:localhost:{}", third.port),
        ],
        ..SshArgs::default()
    };
    let client = s.ssh("same-port", &args);
    let mut urls = Vec::new();
    eventually("two URLs and the refusal printed", || {
        let out = client.output();
        urls = pro_urls_in(&out);
        anyhow::ensure!(
            urls.len() == 2 && out.contains("another forward of this connection holds that port"),
            "{out}"
        );
        Ok(())
    });
    let served = services_behind(&s, &urls);
    assert_eq!(served, ["first", "third"], "each URL its own service");
    assert_eq!(
        second.served.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the refused forward's service was reached"
    );
}

/// One forward of a connection refused (here a name the edge refuses at once, asked for
/// before the good one, and a socket path, which ssh asks for with another request): the
/// others stay up, and the user is told which was refused and why. A `-N` client whose only
/// forward is a socket path is let go at once with the reason (the hour-long timer for a
/// connection without a tunnel cannot be what ends it).
#[test]
fn a_refused_forward_leaves_the_connections_other_tunnels_up() {
    let s = EdgeStack::start("unbound_session_seconds = 3600");
    let local = LocalService::start("local");
    let args = SshArgs {
        user: Some(s.pro_token()),
        forwards: vec![
            format!("bad_name:0:localhost:{}", local.port),
            format!("/tmp/nearhop-test.sock:localhost:{}", local.port),
            format!("0:localhost:{}", local.port),
        ],
        ..SshArgs::default()
    };
    let mut client = s.ssh("one-bad", &args);
    let url = client.wait_for_url(PATIENCE).unwrap();
    let out = client.wait_for("is not allowed", PATIENCE).unwrap();
    assert!(out.contains("was refused"), "{out}");
    assert!(
        out.contains(
            "\"/tmp/nearhop-test.sock\" was refused: nearhop forwards ports, not socket paths"
        ),
        "{out}"
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        client.is_running(),
        "the connection goes on: {}",
        client.output()
    );
    let body = s.visit(&url, "/").text().unwrap();
    assert!(body.starts_with("hello from local"), "{body}");
    let socket_only = SshArgs {
        user: Some(s.pro_token()),
        forwards: vec![format!("/tmp/nearhop-test.sock:localhost:{}", local.port)],
        no_command: true,
        ..SshArgs::default()
    };
    let mut alone = s.ssh("socket-only", &socket_only);
    let out = alone
        .wait_exit(PATIENCE)
        .expect("the socket-only client is let go");
    assert!(out.contains("not socket paths"), "{out}");
    let mixed = SshArgs {
        forwards: vec![
            format!("/tmp/nearhop-test.sock:localhost:{}", local.port),
            format!("0:localhost:{}", local.port),
        ],
        ..socket_only
    };
    let mut beside = s.ssh("socket-and-port", &mixed);
    beside.wait_for_url(PATIENCE).unwrap();
    let out = beside.wait_for("not socket paths", PATIENCE).unwrap();
    assert!(beside.is_running(), "the port's tunnel stays up: {out}");
}

#[test]
fn anonymous_client_gets_a_free_zone_name() {
    let s = EdgeStack::start("");
    let local = LocalService::start("local");
    let mut client = s.ssh("anon", &SshArgs::http_tunnel(Some("http"), local.port));
    let url = client.wait_for_url(PATIENCE).unwrap();
    assert!(url.contains(".free.tunnel.test"), "{url}");
    let out = client.output();
    assert!(
        out.contains("closes at"),
        "free tunnels say when they end: {out}"
    );
    let status = s.visit(&url, "/hello").status();
    assert_eq!(status, 200);
}

#[test]
fn qr_keyword_prints_a_qr_code() {
    let s = EdgeStack::start("");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let mut client = s.ssh(
        "qr",
        &SshArgs::http_tunnel(Some(&format!("{token}+qr")), local.port),
    );
    client.wait_for_url(PATIENCE).unwrap();
    let out = client.wait_for("▀", PATIENCE).unwrap();
    let qr_lines = out
        .lines()
        .filter(|l| l.contains('█') || l.contains('▀'))
        .count();
    assert!(qr_lines > 10, "a QR code is drawn: {out}");
}

#[test]
fn client_with_dash_n_learns_its_url() {
    let s = EdgeStack::start("");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let mut args = SshArgs::http_tunnel(Some(&token), local.port);
    args.no_command = true;
    let mut client = s.ssh("dash-n", &args);
    let url = client.wait_for_url(PATIENCE).unwrap();
    let status = s.visit(&url, "/hello").status();
    assert_eq!(status, 200);
}

/// Without a session channel (`-N`) the client is told what a session would show beside
/// the URLs, each in lines OpenSSH prints whole (it prints 100 bytes of each): a URL too
/// long for the first line (a 63-letter name) on a line of its own, the note of a tunnel that
/// got a random name, and the refusal of one forward of several. Before, the long URL lost
/// its end and the note and the refusal were never shown.
#[test]
fn a_client_with_dash_n_is_told_the_whole_url_the_notes_and_the_refusals() {
    let s = EdgeStack::start("");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let mut holder = s.ssh("holder", &SshArgs::http_tunnel(Some(&token), local.port));
    let persistent = holder.wait_for_url(PATIENCE).unwrap();
    let label = format!("long{}", "x".repeat(59));
    let args = SshArgs {
        user: Some(token),
        forwards: vec![
            format!("0:localhost:{}", local.port),
            format!("{label}:0:localhost:{}", local.port),
            format!("a.b:0:localhost:{}", local.port),
        ],
        no_command: true,
        ..SshArgs::default()
    };
    let client = s.ssh("dash-n-notes", &args);
    let mut long_url = String::new();
    eventually("the URLs, the note and the refusal shown", || {
        let out = client.output();
        long_url = out
            .lines()
            .filter_map(|l| l.split_once("unknown path ").map(|(_, path)| path.trim()))
            .find(|path| path.starts_with(&format!("http://{label}.")))
            .unwrap_or_default()
            .to_string();
        anyhow::ensure!(!long_url.is_empty(), "no line with the long URL: {out}");
        anyhow::ensure!(out.contains("got a random name"), "no note: {out}");
        anyhow::ensure!(
            out.contains("one of this connection's tunnels was refused"),
            "no refusal: {out}"
        );
        Ok(())
    });
    let port = s.edge.http_addr().port();
    assert!(
        long_url.ends_with(&format!(".a.tunnel.test:{port}")),
        "{long_url}"
    );
    assert_eq!(s.visit(&long_url, "/hello").status(), 200, "{long_url}");
    // Each setup's lines together: the long URL right under its header line, the note
    // right under the random name's URL.
    let out = client.output();
    let told: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_once("unknown path ").map(|(_, path)| path.trim()))
        .collect();
    let at = |what: &dyn Fn(&str) -> bool| told.iter().position(|l| what(l)).expect("told");
    let long_at = at(&|l| l == long_url);
    assert_eq!(told[long_at - 1], "-- nearhop tunnel live:", "{out}");
    let random_at = at(&|l| l.starts_with("-- nearhop tunnel live: http://"));
    assert!(
        told[random_at + 1].starts_with("-- nearhop: Note: your account's own name is live"),
        "{out}"
    );
    assert_eq!(
        s.visit(&persistent, "/hello").status(),
        200,
        "the first connection keeps its name"
    );
}

#[test]
fn requested_name_is_given_and_options_protect_it() {
    let s = EdgeStack::start("");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let args = SshArgs {
        user: Some(token),
        forwards: vec![format!("mysite:0:localhost:{}", local.port)],
        command: vec!["b:alice:s3cret".into(), "a:X-Added:yes".into()],
        ..SshArgs::default()
    };
    let mut client = s.ssh("named", &args);
    let url = client.wait_for_url(PATIENCE).unwrap();
    assert!(url.starts_with("http://mysite.a.tunnel.test"), "{url}");
    let v = visitor(&url, s.edge.http_addr());
    // The options arrive with the command, just after the forward; wait until they hold.
    eventually("basic auth in force", || {
        let r = v.get(format!("{url}/hello")).send()?;
        anyhow::ensure!(r.status() == 401, "status {}", r.status());
        Ok(())
    });
    let body = v
        .get(format!("{url}/hello"))
        .basic_auth("alice", Some("s3cret"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(body.contains("x-added=yes"), "{body}");
    assert!(
        body.contains("\nauthorization=\n"),
        "the credentials the edge checked reached the local service: {body}"
    );
}

/// Options sent later through OpenSSH's connection sharing (`ssh -S SOCKET host b:...`, a
/// second session on the master's connection) apply to the connection's tunnels, and that
/// `ssh` is told so and exits; the master's session goes on showing the tunnels' text.
/// Before, the second session took over the connection's text and never ended.
#[test]
fn options_sent_through_a_shared_connection_apply_and_that_ssh_returns() {
    let s = EdgeStack::start("");
    let local = LocalService::start("local");
    let dir = tempfile::Builder::new()
        .prefix("nh-cm-")
        .tempdir_in("/tmp")
        .unwrap();
    let socket = dir.path().join("cm");
    let master_options = [
        "ControlMaster=yes".to_string(),
        format!("ControlPath={}", socket.display()),
    ];
    let args = SshArgs {
        options: master_options.to_vec(),
        ..SshArgs::http_tunnel(Some(&s.pro_token()), local.port)
    };
    let mut master = s.ssh("master", &args);
    let url = master.wait_for_url(PATIENCE).unwrap();
    assert_eq!(s.visit(&url, "/").status(), 200);
    let addr = s.edge.ssh_addr();
    // Each `ssh` gets PATIENCE to return; one that does not (the old edge never ended the
    // second session) is killed, and its status says so.
    let run = |words: &[&str]| {
        let mut child = std::process::Command::new("ssh")
            .args(["-F", "/dev/null", "-o", "BatchMode=yes"])
            .arg("-o")
            .arg(format!("ControlPath={}", socket.display()))
            .args(["-p", &addr.port().to_string()])
            .arg(addr.ip().to_string())
            .args(words)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ssh runs");
        let deadline = std::time::Instant::now() + PATIENCE;
        while child.try_wait().expect("ssh's status").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        child.wait_with_output().expect("ssh's output")
    };
    let sent = run(&["b:alice:s3cret"]);
    let said =
        String::from_utf8_lossy(&sent.stdout).into_owned() + &String::from_utf8_lossy(&sent.stderr);
    assert!(sent.status.success(), "{said}");
    assert!(
        said.contains("options applied to this connection's 1 tunnel(s)"),
        "{said}"
    );
    assert_eq!(s.visit(&url, "/").status(), 401, "b: applies");
    let bad = run(&["b:nocolon"]);
    let said = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{said}");
    assert!(said.starts_with("nearhop: "), "told why: {said}");
    assert_eq!(
        s.visit(&url, "/").status(),
        401,
        "a bad option changes nothing"
    );
    assert!(master.is_running(), "{}", master.output());
}

/// `ssh` arguments for an HTTP tunnel with extra `-o` options.
fn tunnel_with(token: &str, port: u16, options: &[&str]) -> SshArgs {
    SshArgs {
        options: options.iter().map(|o| o.to_string()).collect(),
        ..SshArgs::http_tunnel(Some(token), port)
    }
}

#[test]
fn stock_clients_get_aes_gcm_others_their_own_cipher_and_operators_may_offer_more() {
    let s = EdgeStack::start("");
    let local = LocalService::start("local");
    let token = s.pro_token();

    let mut client = s.ssh(
        "gcm",
        &tunnel_with(&token, local.port, &["LogLevel=DEBUG1"]),
    );
    client.wait_for_url(PATIENCE).unwrap();
    let err = client.stderr();
    assert!(
        err.contains("server->client cipher: aes128-gcm@openssh.com"),
        "a stock client lands on AES-128-GCM by default:\n{err}"
    );

    // A client configured to allow only ChaCha20 gets in with it: the edge read its list
    // and added the fallback ciphers to its offer (another account: the first one's
    // default name is live).
    let mut chacha_only = s.ssh(
        "chacha-only",
        &tunnel_with(
            &s.pro_token(),
            local.port,
            &["Ciphers=chacha20-poly1305@openssh.com", "LogLevel=DEBUG1"],
        ),
    );
    let url = chacha_only.wait_for_url(PATIENCE).unwrap();
    let err = chacha_only.stderr();
    assert!(
        err.contains("server->client cipher: chacha20-poly1305@openssh.com"),
        "{err}"
    );
    assert_eq!(s.visit(&url, "/hello").status(), 200);

    // An edge configured to offer ChaCha20 gets it from the same stock client (another
    // account: the first one's default name is live on the us edge).
    let token = s.pro_token();
    let eu = start_edge(
        &s.stack,
        "eu",
        std::net::Ipv4Addr::new(127, 0, 0, 2),
        "ssh_ciphers = [\"chacha20-poly1305@openssh.com\", \"aes128-gcm@openssh.com\"]\n",
    );
    let mut client = nearhop_stack::edge::SshClient::start(
        &s.stack.dir.join("ssh"),
        "chacha",
        eu.ssh_addr(),
        &tunnel_with(&token, local.port, &["LogLevel=DEBUG1"]),
    )
    .unwrap();
    let url = client.wait_for_url(PATIENCE).unwrap();
    let err = client.stderr();
    assert!(
        err.contains("server->client cipher: chacha20-poly1305@openssh.com"),
        "{err}"
    );
    let status = visitor(&url, eu.http_addr())
        .get(format!("{url}/hello"))
        .send()
        .unwrap()
        .status();
    assert_eq!(status, 200);
}
