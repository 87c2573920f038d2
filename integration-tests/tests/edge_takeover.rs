//! Who gets a name, through the real edge, control and Postgres: another account's name is
//! refused, a live name without `force` is refused with a hint, `force` takes over, and a
//! client that dropped off the network gets its name back on reconnect without `force`.

use nearhop_stack::edge::SshArgs;
use nearhop_stack::prelude::*;

fn named(user: &str, name: &str, port: u16) -> SshArgs {
    SshArgs {
        user: Some(user.to_string()),
        forwards: vec![format!("{name}:0:localhost:{port}")],
        ..SshArgs::default()
    }
}

#[test]
fn name_owned_by_another_account_is_refused() {
    let s = EdgeStack::start("");
    let local = LocalService::start("local");
    let (a, b) = (s.pro_token(), s.pro_token());
    let mut owner = s.ssh("owner", &named(&a, "shop", local.port));
    owner.wait_for_url(PATIENCE).unwrap();
    let mut other = s.ssh("other", &named(&b, "shop", local.port));
    let out = other.wait_exit(PATIENCE).unwrap();
    assert!(
        out.contains("That name belongs to another account"),
        "{out}"
    );
    assert!(owner.is_running(), "the owner's tunnel is untouched");
}

#[test]
fn live_name_without_force_is_refused_with_a_hint() {
    let s = EdgeStack::start("");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let mut first = s.ssh("first", &named(&token, "blog", local.port));
    first.wait_for_url(PATIENCE).unwrap();
    let mut second = s.ssh("second", &named(&token, "blog", local.port));
    let out = second.wait_exit(PATIENCE).unwrap();
    assert!(out.contains("That name is live in another tunnel"), "{out}");
    let refusal = out
        .lines()
        .find(|l| l.contains("That name is live in another tunnel"))
        .unwrap_or_default();
    assert_eq!(
        (refusal.contains("force"), refusal.matches(" take").count()),
        (true, 1),
        "the refusal says once how to take over: {out}"
    );
}

#[test]
fn force_takes_over_a_live_name() {
    let s = EdgeStack::start("");
    let old_service = LocalService::start("old");
    let new_service = LocalService::start("new");
    let token = s.pro_token();
    let mut old = s.ssh("old", &named(&token, "blog", old_service.port));
    let url = old.wait_for_url(PATIENCE).unwrap();
    let mut new = s.ssh(
        "new",
        &named(&format!("{token}+force"), "blog", new_service.port),
    );
    let new_url = new.wait_for_url(PATIENCE).unwrap();
    assert_eq!(new_url, url);
    let told = old.wait_exit(PATIENCE).unwrap();
    // Control's sentence, on the session channel ("blog.a.tunnel.test is closed: ...") or,
    // when the disconnect overtakes that, as the disconnect's reason.
    assert!(
        told.contains("this tunnel was replaced by a newer one for the same name"),
        "the old client is told: {told}"
    );
    let body = s.visit(&url, "/hello").text().unwrap();
    assert!(
        body.contains("tag=new"),
        "visitors reach the new client: {body}"
    );
}

#[test]
fn reconnect_after_network_drop_gets_the_name_back_without_force() {
    // Keepalives every 60 s: the frozen client is found dead by the alive probe at setup,
    // not by the keepalive sweep.
    let s = EdgeStack::start("keepalive_interval_seconds = 60\n");
    let old_service = LocalService::start("old");
    let new_service = LocalService::start("new");
    let token = s.pro_token();
    let mut old = s.ssh("dropped", &named(&token, "app", old_service.port));
    let url = old.wait_for_url(PATIENCE).unwrap();
    // SIGSTOP: the TCP connection stays open but nothing answers, as after a network drop.
    old.freeze();
    // The user's reconnect loop (`while true; do ssh ...; sleep 1; done`): control refuses
    // while the old tunnel is inside its setup window, then the alive probe proves it dead.
    let mut attempt = 0;
    let (new, new_url) = loop {
        attempt += 1;
        let mut c = s.ssh(
            &format!("back-{attempt}"),
            &named(&token, "app", new_service.port),
        );
        match c.wait_for_url(PATIENCE) {
            Ok(u) => break (c, u),
            Err(e) if attempt < 20 => {
                let msg = e.to_string();
                assert!(msg.contains("That name is live in another tunnel"), "{msg}");
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
            Err(e) => panic!("no takeover after {attempt} attempts: {e:#}"),
        }
    };
    assert_eq!(new_url, url);
    assert!(!new.output().contains("force"), "{}", new.output());
    let body = s.visit(&url, "/hello").text().unwrap();
    assert!(body.contains("tag=new"), "{body}");
    old.stop();
}
