//! What a real OpenSSH client is told when control refuses what it asked for: an odd name
//! in the bind address is refused with the names that are allowed (never rewritten), and a
//! `tcp` tunnel holds a public port only once control has authorised it. Real Postgres,
//! control, edge and `ssh`.

use nearhop_stack::prelude::*;
use std::net::TcpListener;

#[test]
fn odd_bind_addresses_are_refused_with_the_allowed_names() {
    let s = EdgeStack::start("");
    let local = LocalService::start("local");
    let token = s.pro_token();
    for (i, bind) in ["a.b", "host.evil.example", "../x"].iter().enumerate() {
        let args = SshArgs {
            user: Some(token.clone()),
            forwards: vec![format!("{bind}:0:localhost:{}", local.port)],
            ..SshArgs::default()
        };
        let mut c = s.ssh(&format!("odd-{i}"), &args);
        let out = c.wait_exit(PATIENCE).unwrap();
        assert!(
            out.contains("is not allowed") && out.contains("-R myblog:0:localhost:8000"),
            "{bind}: {out}"
        );
        assert!(!out.contains("tunnel live"), "{bind}: {out}");
    }
    // The URL pasted as the bind address still asks for its name.
    let args = SshArgs {
        user: Some(token),
        forwards: vec![format!("pasted.{PRO_ZONE}:0:localhost:{}", local.port)],
        ..SshArgs::default()
    };
    let mut c = s.ssh("pasted", &args);
    let url = c.wait_for_url(PATIENCE).unwrap();
    assert!(url.contains(&format!("pasted.{PRO_ZONE}")), "{url}");
}

#[test]
fn a_tcp_tunnel_gets_a_public_port_only_after_control_authorised_it() {
    let s = EdgeStack::start("");
    let local = LocalService::start("local");
    let (lo, hi) = s.edge.spec.tcp_ports;
    // Every public port taken: an edge that binds before asking control answers "no free
    // port" even to a client control would refuse.
    let held: Vec<TcpListener> = (lo..=hi)
        .filter_map(|p| TcpListener::bind((s.edge.spec.ip, p)).ok())
        .collect();
    assert!(!held.is_empty());
    let mut c = s.ssh(
        "bad-token",
        &SshArgs::http_tunnel(Some("no-such-token+tcp"), local.port),
    );
    let out = c.wait_exit(PATIENCE).unwrap();
    assert!(out.contains("Your token was not accepted"), "{out}");
    assert!(!out.contains("no free public TCP port"), "{out}");
    // An authorised client is told the edge has no port, and control's tunnel is given back.
    let user = format!("{}+tcp", s.pro_token());
    let mut c = s.ssh("no-port", &SshArgs::http_tunnel(Some(&user), local.port));
    let out = c.wait_exit(PATIENCE).unwrap();
    assert!(out.contains("no free public TCP port"), "{out}");
    eventually("the tunnel given back to control", || {
        let live = nearhop_stack::postgres::psql(
            &s.stack.pg.primary.endpoint,
            "SELECT count(*) FROM tunnels WHERE kind = 'tcp' AND closed_at IS NULL",
        )?;
        anyhow::ensure!(live.trim() == "0", "{} live tcp tunnels", live.trim());
        Ok(())
    });
    drop(held);
    let mut c = s.ssh("tcp", &SshArgs::http_tunnel(Some(&user), local.port));
    let url = c.wait_for_url(PATIENCE).unwrap();
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    assert!((lo..=hi).contains(&port), "{url}");
}
