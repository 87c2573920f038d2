//! The SSH clients people open tunnels with, against a real edge, control and Postgres:
//! PuTTY's `plink`, Dropbear's `dbclient` and Paramiko each get a tunnel that serves a real
//! HTTP visitor, beside OpenSSH, which stays on AES-GCM; Dropbear, without AES-GCM, gets in
//! through the edge's wider offer; PuTTY, which cannot ask for port 0, is told to ask for
//! port 80.

use nearhop_stack::clients::{Client, ClientRun, EdgeHostKey};
use nearhop_stack::edge::EdgeProcess;
use nearhop_stack::prelude::*;

/// Starts `client` against `edge`, its home in the stack's directory.
fn start_client(
    s: &EdgeStack,
    edge: &EdgeProcess,
    client: Client,
    name: &str,
    args: &SshArgs,
) -> ClientRun {
    let key = EdgeHostKey::of(edge).expect("the edge's host key");
    let home = s.stack.dir.join("clients").join(name);
    ClientRun::start(client, &home, name, edge.ssh_addr(), &key, args)
        .unwrap_or_else(|e| panic!("{} starts: {e:#}", client.name()))
}

/// A tunnel for `user` to local `port`, asked for with `forward` (`PORT:localhost:LOCAL`).
fn tunnel(user: &str, remote_port: u16, local_port: u16) -> SshArgs {
    SshArgs {
        user: Some(user.to_string()),
        forwards: vec![format!("{remote_port}:localhost:{local_port}")],
        ..SshArgs::default()
    }
}

#[test]
fn every_client_opens_a_tunnel_that_serves_visitors_and_openssh_stays_on_aes_gcm() {
    let s = EdgeStack::start("");
    // One local service per client: the page a visitor gets names the client that served it.
    // PuTTY cannot ask for port 0, so it asks for 80; the others let the edge choose.
    let clients = [
        (Client::Plink, 80),
        (Client::Dbclient, 0),
        (Client::Paramiko, 0),
    ];
    let mut running = Vec::new();
    for (client, remote_port) in clients {
        let local = LocalService::start(client.name());
        let mut args = tunnel(&s.pro_token(), remote_port, local.port);
        // Options travel as the command, as with ssh.
        args.command = vec![format!("a:X-Added:{}", client.name())];
        let run = start_client(&s, &s.edge, client, client.name(), &args);
        running.push((client, local, run));
    }
    // OpenSSH beside them, on the same edge at the same time.
    let local = LocalService::start("openssh");
    let mut openssh = s.ssh(
        "openssh",
        &SshArgs {
            options: vec!["LogLevel=DEBUG1".into()],
            ..SshArgs::http_tunnel(Some(&s.pro_token()), local.port)
        },
    );

    for (client, _local, run) in &mut running {
        let url = run
            .wait_for_url(PATIENCE)
            .unwrap_or_else(|e| panic!("{}: {e:#}", client.name()));
        for path in ["/first", "/second"] {
            let body = s.visit(&url, path).text().expect("body");
            assert!(
                body.starts_with(&format!("hello from {} {path}", client.name()))
                    && body.contains(&format!("x-added={}", client.name())),
                "{}'s tunnel {url} served {body:?}",
                client.name()
            );
        }
    }
    let url = openssh.wait_for_url(PATIENCE).expect("OpenSSH's URL");
    assert!(s
        .visit(&url, "/")
        .text()
        .expect("body")
        .starts_with("hello from openssh"));

    // The ciphers each client reports. OpenSSH and Paramiko list AES-CTR before AES-GCM
    // and plink lists it first; all three land on AES-GCM, so the edge offered them only
    // that. Dropbear has no AES-GCM: it is in on the wider offer.
    let err = openssh.stderr();
    assert!(
        err.contains("server->client cipher: aes128-gcm@openssh.com"),
        "OpenSSH stays on AES-128-GCM:\n{err}"
    );
    for (client, _, run) in &running {
        let out = run.output();
        match client {
            // `Initialised AES-128 GCM (AES-NI accelerated) outbound encryption`, the
            // acceleration named as the CPU has it.
            Client::Plink => assert!(
                out.contains("Initialised AES-128 GCM")
                    && !out.contains("Initialised AES-128 SDCTR")
                    && !out.contains("ChaCha20"),
                "plink on AES-128-GCM:\n{out}"
            ),
            Client::Paramiko => assert!(
                out.contains("cipher: aes128-gcm@openssh.com"),
                "Paramiko on AES-128-GCM:\n{out}"
            ),
            // dbclient names no cipher in its output (only a debug build traces it);
            // `dropbear_is_in_only_through_the_fallback_ciphers` checks what it gets.
            Client::Dbclient => {}
        }
    }
}

#[test]
fn putty_asking_for_port_0_is_told_to_ask_for_port_80() {
    let s = EdgeStack::start("");
    let local = LocalService::start("local");
    let token = s.pro_token();

    // plink drops `-R 0:...` before anything reaches the edge, so the edge sees a session
    // without a forward; its help names the way that works.
    let mut plink = start_client(
        &s,
        &s.edge,
        Client::Plink,
        "port-0",
        &tunnel(&token, 0, local.port),
    );
    let out = plink.wait_exit(PATIENCE).expect("plink is let go");
    assert!(
        out.contains("PuTTY cannot ask for port 0") && out.contains("-R 80:localhost:8000"),
        "{out}"
    );
    assert!(find_url_in(&out).is_none(), "no tunnel: {out}");

    // Other clients asking for nothing get the usual help, without PuTTY's.
    let mut ssh = s.ssh(
        "no-forward",
        &SshArgs {
            user: Some(token.clone()),
            ..SshArgs::default()
        },
    );
    let out = ssh.wait_exit(PATIENCE).expect("ssh is let go");
    assert!(
        out.contains("-R0:localhost:8000") && !out.contains("PuTTY"),
        "{out}"
    );

    // What the help says works (the same account again: its first try made no tunnel),
    // options after the host included, as the user guide shows it.
    let mut args = tunnel(&token, 80, local.port);
    args.command = vec!["b:alice:s3cret".into()];
    let mut plink = start_client(&s, &s.edge, Client::Plink, "port-80", &args);
    let url = plink.wait_for_url(PATIENCE).expect("plink's URL");
    assert_eq!(s.visit(&url, "/").status(), 401, "basic auth is on");
    let body = visitor(&url, s.edge.http_addr())
        .get(format!("{url}/"))
        .basic_auth("alice", Some("s3cret"))
        .send()
        .expect("GET with the password")
        .text()
        .expect("body");
    assert!(body.starts_with("hello from local"), "{body}");
}

#[test]
fn dropbear_is_in_only_through_the_fallback_ciphers() {
    let s = EdgeStack::start("");
    let local = LocalService::start("dropbear");
    // An edge whose operator turned the wider offer off: Dropbear's own words say why.
    let strict = start_edge(
        &s.stack,
        "eu",
        std::net::Ipv4Addr::new(127, 0, 0, 2),
        "ssh_fallback_ciphers = []\n",
    );
    let mut refused = start_client(
        &s,
        &strict,
        Client::Dbclient,
        "strict",
        &tunnel(&s.pro_token(), 0, local.port),
    );
    let out = refused.wait_exit(PATIENCE).expect("dbclient gives up");
    assert!(out.contains("No matching algo enc"), "{out}");

    // The default edge lets the same client in, on a cipher it has.
    let mut run = start_client(
        &s,
        &s.edge,
        Client::Dbclient,
        "fallback",
        &tunnel(&s.pro_token(), 0, local.port),
    );
    let url = run.wait_for_url(PATIENCE).expect("dbclient's URL");
    let body = s.visit(&url, "/").text().expect("body");
    assert!(body.starts_with("hello from dropbear"), "{body}");
}

/// Dropbear and Paramiko show no disconnect message: a refusal reaches their users only on
/// the session channel, whenever it comes (at once for a name the edge itself refuses,
/// before the client has opened that channel; after control's answer; for a session that
/// asked for no tunnel: at once for Dropbear, which sends its forwards first (its edge's
/// timer for that is an hour, so only the check at the session's command can tell it), after
/// `unbound_session_seconds` for a library such as Paramiko, whose caller may ask later).
#[test]
fn clients_without_disconnect_messages_still_show_why_they_were_refused() {
    for (client, unbound) in [(Client::Dbclient, 3600), (Client::Paramiko, 3)] {
        let s = EdgeStack::start(&format!("unbound_session_seconds = {unbound}"));
        refusals_are_shown(&s, client);
    }
}

fn refusals_are_shown(s: &EdgeStack, client: Client) {
    let local = LocalService::start("local");
    let token = s.pro_token();
    let cases = [
        (
            "no-forward",
            SshArgs {
                user: Some(token.clone()),
                ..SshArgs::default()
            },
            "no tunnel was requested",
        ),
        (
            "bad-name",
            SshArgs {
                user: Some(token.clone()),
                forwards: vec![format!("bad_name:0:localhost:{}", local.port)],
                ..SshArgs::default()
            },
            "is not allowed",
        ),
        (
            "bad-token",
            tunnel("nh_not_a_token_at_all", 0, local.port),
            "Your token was not accepted",
        ),
    ];
    for (name, args, why) in &cases {
        let mut run = start_client(
            s,
            &s.edge,
            client,
            &format!("{name}-{}", client.name()),
            args,
        );
        let out = run
            .wait_exit(PATIENCE)
            .unwrap_or_else(|e| panic!("{} {name} is let go: {e:#}", client.name()));
        assert!(
            out.contains(why),
            "{} {name}: the sentence is shown: {out}",
            client.name()
        );
    }
}

fn find_url_in(text: &str) -> Option<String> {
    nearhop_stack::edge::find_url(text)
}

/// Options come with the command, after the forwards: a client slow to send it must not
/// leave its tunnel reachable unprotected meanwhile. A visitor hammering the (requested,
/// hence known) name from before the client connects never gets the page without the key.
#[test]
fn no_visitor_reaches_a_tunnel_before_its_options_apply() {
    let s = EdgeStack::start("");
    let local = LocalService::start("guarded");
    let args = SshArgs {
        user: Some(s.pro_token()),
        forwards: vec![format!("guarded:0:localhost:{}", local.port)],
        command: vec!["k:the-key".into()],
        ..SshArgs::default()
    };
    let url = "http://guarded.a.tunnel.test";
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let stop = stop.clone();
        let client = visitor(url, s.edge.http_addr());
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeMap::<u16, u32>::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(r) = client.get(format!("{url}/secret")).send() {
                    *seen.entry(r.status().as_u16()).or_default() += 1;
                }
            }
            seen
        })
    };
    let key = EdgeHostKey::of(&s.edge).expect("the edge's host key");
    let home = s.stack.dir.join("clients").join("slow");
    let mut slow = ClientRun::paramiko_delaying_command(
        &home,
        "slow",
        s.edge.ssh_addr(),
        &key,
        &args,
        std::time::Duration::from_secs(2),
    )
    .expect("paramiko starts");
    let printed = slow.wait_for_url(PATIENCE).expect("the URL");
    assert!(printed.starts_with(url), "{printed}");
    // The tunnel is live and protected: the key lets a visitor in.
    let r = visitor(url, s.edge.http_addr())
        .get(format!("{url}/secret"))
        .bearer_auth("the-key")
        .send()
        .expect("visit");
    assert_eq!(r.status(), 200);
    std::thread::sleep(std::time::Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = hammer.join().expect("visitor thread");
    assert!(
        !seen.contains_key(&200),
        "a visitor without the key got the page: {seen:?}"
    );
    assert!(seen.get(&401).is_some_and(|n| *n > 0), "{seen:?}");
}

/// Asks, on a fresh session channel each, for what the edge does not serve or ignores, with
/// a reply wanted, and prints `NAME success|failure|none` a line (Paramiko closes a channel
/// on a failure reply, so each request gets its own).
/// Runs a Paramiko script given the edge's SSH address and port, a fresh pro token and
/// `extra` arguments; its stdout and stderr (it must exit 0).
fn paramiko_script(s: &EdgeStack, script: &str, extra: &[String]) -> (String, String) {
    let addr = s.edge.ssh_addr();
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(s.pro_token())
        .args(extra)
        .output()
        .expect("python3 runs");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}{err}\n{}", s.edge.log_tail(30));
    (said, err)
}

const CHANNEL_REQUESTS: &str = r#"import sys, paramiko
host, port, user = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t = paramiko.Transport((host, port)); t.start_client(timeout=30); t.auth_none(user)
t.request_port_forward("", 0, handler=lambda c, o, s: None)
def ask(name, fields):
    ch = t.open_session()
    ch._event_pending()
    m = paramiko.Message()
    m.add_byte(bytes([paramiko.common.cMSG_CHANNEL_REQUEST[0]]))
    m.add_int(ch.remote_chanid); m.add_string(name); m.add_boolean(True)
    for f in fields:
        if isinstance(f, bool): m.add_boolean(f)
        elif isinstance(f, int): m.add_int(f)
        else: m.add_string(f)
    t._send_user_message(m)
    ch.event.wait(30)
    if not ch.event.is_set(): print(name, "none", flush=True)
    else: print(name, "failure" if ch.closed else "success", flush=True)
ask("x11-req", [False, "MIT-MAGIC-COOKIE-1", "00" * 16, 0])
ask("env", ["LANG", "C.UTF-8"])
ask("window-change", [80, 24, 0, 0])
ask("signal", ["INT"])
t.close()
"#;

/// A library that wants a reply to every channel request (Paramiko's `request_x11`, Go's
/// `Session.Setenv`, libssh) gets one: X11, environment variables and signals are refused,
/// a window change is taken. Without a reply such a client waits for ever.
#[test]
fn channel_requests_the_edge_does_not_serve_are_answered() {
    let s = EdgeStack::start("");
    let (said, err) = paramiko_script(&s, CHANNEL_REQUESTS, &[]);
    assert_eq!(
        said.lines().collect::<Vec<_>>(),
        [
            "x11-req failure",
            "env failure",
            "window-change success",
            "signal failure"
        ],
        "{err}"
    );
}

const CANCEL_DURING_SETUP: &str = r#"import socket, sys, paramiko
host, port, user = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t = paramiko.Transport((host, port)); t.start_client(timeout=30); t.auth_none(user)
got = t.request_port_forward("", 0, handler=lambda c, o, s: None)
t.cancel_port_forward("", got)
t.request_port_forward("", 0, handler=lambda c, o, s: None)
ch = t.open_session(); ch.invoke_shell()
said = b""
ch.settimeout(30)
while b"Your tunnel is live" not in said:
    data = ch.recv(4096)
    if not data: break
    said += data
# Whatever else the edge says within 3 s: a second block, had the cancelled one gone live.
ch.settimeout(3)
try:
    while data := ch.recv(4096):
        said += data
except socket.timeout:
    pass
print(said.decode(), flush=True)
t.close()
"#;

/// A forward the client cancels while the edge is still setting it up (AsyncSSH closing a
/// listener at once, OpenSSH's `-O cancel` through a control master) does not go live:
/// before, the cancel found no live tunnel and the setup installed it afterwards, so it
/// stayed up until the connection ended, holding the account's persistent name, and the
/// client's next forward got a random one.
#[test]
fn a_forward_cancelled_during_its_setup_does_not_go_live() {
    let s = EdgeStack::start("");
    let (said, err) = paramiko_script(&s, CANCEL_DURING_SETUP, &[]);
    assert_eq!(
        said.matches("Your tunnel is live").count(),
        1,
        "one tunnel, the second forward's: {said}{err}"
    );
    assert!(
        !said.contains("random name"),
        "the next forward gets the persistent name: {said}"
    );
    let metrics = s.edge.metrics().expect("edge metrics");
    let setups = |outcome| {
        metric(
            &metrics,
            "nearhop_edge_tunnel_setup_seconds_count",
            &[("outcome", outcome)],
        )
    };
    assert_eq!(setups("cancelled"), Some(1.0), "{metrics}");
    assert_eq!(setups("ok"), Some(1.0), "{metrics}");
}

const SESSION_FIRST: &str = r#"import re, socket, sys, time, urllib.error, urllib.request, paramiko
host, port, user, http = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
t = paramiko.Transport((host, port)); t.start_client(timeout=30); t.auth_none(user)
ch = t.open_session(); ch.exec_command("b:alice:s3cret")
time.sleep(1)
t.request_port_forward("", 0, handler=lambda c, o, s: None)
said = b""
ch.settimeout(30)
try:
    while b"Your tunnel is live" not in said or not said.endswith(b"\n"):
        data = ch.recv(4096)
        if not data: break
        said += data
except socket.timeout:
    pass
print(said.decode(), flush=True)
# A visitor while the tunnel is up, without the session's credentials.
name = re.search(r"http://([a-z0-9.-]+)", said.decode()).group(1)
visit = urllib.request.Request("http://" + http + "/", headers={"Host": name})
try:
    print("visitor got", urllib.request.urlopen(visit, timeout=30).status)
except urllib.error.HTTPError as e:
    print("visitor got", e.code)
t.close()
"#;

/// A library's caller may open the session (with its options) before asking for the
/// forward, as AsyncSSH users do with `create_process` and then `forward_remote_port`: the
/// tunnel is set up and its URL printed on that session. Before, a session asking for its
/// command without a forward was refused at once ("no tunnel was requested"), as it is for
/// the command-line clients, which send every `-R` first.
#[test]
fn a_library_may_open_its_session_before_asking_for_the_forward() {
    let s = EdgeStack::start("");
    let (said, err) = paramiko_script(&s, SESSION_FIRST, &[s.edge.http_addr().to_string()]);
    assert!(said.contains("Your tunnel is live"), "{said}{err}");
    assert!(
        said.contains("visitor got 401"),
        "the session's options apply to the tunnel: {said}"
    );
}
