//! Control's key for holder proofs across changes of control's secrets, with real processes
//! (Postgres, control, an edge per region, the stock OpenSSH client): a tunnel held by the eu
//! edge stays relayed by the us edge when control's `admin_secret` changes (its
//! `holder_key_secret` keeping the key) and while the key itself is rotated
//! (`holder_key_previous_secret`), the us edge restarted after each of those changes so that
//! it checks every claim again under the keys control gives it then; and that once the
//! previous secret is dropped, the us edge, not restarted, stops relaying the tunnel it took
//! under the old key (it checks the claims it took again when control's keys drop one).
//! And, with two control instances on one database restarted one after the other with a
//! new key, that an edge whose control had not got the new key yet refuses the claims
//! signed with it, and takes them as soon as its control's answer brings the key, without
//! its link to the holder reconnecting.

use nearhop_stack::control::ControlProcess;
use nearhop_stack::metrics::metric_sum;
use nearhop_stack::prelude::*;

const HOLDER_SECRET_NEW: &str = "a-new-holder-key-secret-0123456789";

/// Rewrites control's config with these secrets (`None`: the setting left out) and
/// restarts control with it.
fn restart_control_with(
    stack: &mut Stack,
    admin: &str,
    holder: Option<&str>,
    previous: Option<&str>,
) {
    let path = stack.control.config_path.clone();
    let text = std::fs::read_to_string(&path).expect("control's config");
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with("holder_key_") {
            continue;
        }
        if line.starts_with("admin_secret = ") {
            lines.push(format!("admin_secret = \"{admin}\""));
            for (key, value) in [
                ("holder_key_secret", holder),
                ("holder_key_previous_secret", previous),
            ] {
                if let Some(value) = value {
                    lines.push(format!("{key} = \"{value}\""));
                }
            }
            continue;
        }
        lines.push(line.to_string());
    }
    std::fs::write(&path, lines.join("\n") + "\n").expect("control's config written");
    stack.control.admin_secret = admin.to_string();
    stack.control.stop();
    stack.control.restart().expect("control starts again");
}

/// Claims of eu-1 the us edge refused and took later, once control's keys took them.
fn taken_late_at_us(stack: &Stack) -> f64 {
    metric_sum(
        &us_metrics(stack),
        "nearhop_edge_mesh_claims_taken_late_total",
        &[("peer", "eu-1")],
    )
}

/// Restarts the us edge: its links to its peers start anew, and it checks each claim of
/// their snapshots under the keys control's registration answer gave it.
fn restart_us_edge(stack: &mut Stack) {
    stack.stop_edge("us", PATIENCE);
    stack.restart_edge("us").expect("the us edge starts again");
    stack.wait_mesh_linked().expect("the us edge links again");
}

fn us_metrics(stack: &Stack) -> String {
    let e = &stack.edges[US];
    reqwest::blocking::get(format!("http://{}:{}/metrics", e.spec.ip, e.spec.admin))
        .and_then(|r| r.text())
        .expect("the us edge's metrics")
}

/// Claims of eu-1 the us edge refused with a proof that does not check out.
fn bad_proofs_at_us(stack: &Stack) -> f64 {
    metric_sum(
        &us_metrics(stack),
        "nearhop_edge_mesh_claims_refused_total",
        &[("peer", "eu-1"), ("reason", "bad_proof")],
    )
}

/// Waits until the us edge relays `url`'s visitors to eu, and checks one request.
fn relayed_at_us(stack: &Stack, url: &str, what: &str) {
    let addr = stack.regions[US].http_addr();
    eventually(&format!("us relays {what}"), || {
        let (status, body) = http_get(addr, &host_of(url), "/rotation")?;
        anyhow::ensure!(status == 200, "{status} {body}");
        anyhow::ensure!(body.starts_with("hello from local /rotation"), "{body}");
        Ok(())
    });
}

/// How many times the us edge's link to eu came up, by its log.
fn us_links_to_eu(stack: &Stack) -> usize {
    std::fs::read_to_string(stack.edges[US].log())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("mesh link up") && l.contains("peer=eu-1"))
        .count()
}

fn control_log(stack: &Stack) -> String {
    std::fs::read_to_string(stack.control.log()).expect("control's log")
}

#[test]
fn the_holder_key_survives_an_admin_secret_change_and_rotates_without_breaking_relays() {
    let mut stack = mesh_stack();
    let local = LocalService::start("local");
    const FOLLOWS_ADMIN: &str = "holder proofs are signed with a key derived from admin_secret";
    assert_eq!(
        control_log(&stack).matches(FOLLOWS_ADMIN).count(),
        1,
        "control says at start that its key follows admin_secret"
    );

    // A tunnel set up under the key derived from the first admin secret.
    let first_admin = stack.control.admin_secret.clone();
    let (_before_client, before_url) = stack
        .http_tunnel(EU, "before", Some(&stack.pro_token()), local.port)
        .expect("a tunnel through eu");
    relayed_at_us(&stack, &before_url, "the tunnel set up first");

    // The admin secret changes (say it leaked); holder_key_secret keeps the key it gave.
    restart_control_with(
        &mut stack,
        "a-new-admin-secret-0123456789",
        Some(&first_admin),
        None,
    );
    restart_us_edge(&mut stack);
    relayed_at_us(
        &stack,
        &before_url,
        "the first tunnel after admin_secret changed",
    );
    assert_eq!(bad_proofs_at_us(&stack), 0.0, "no claim was refused");
    assert_eq!(
        control_log(&stack).matches(FOLLOWS_ADMIN).count(),
        1,
        "with holder_key_secret set, no second warning"
    );

    // The key rotates: a new secret, the old one as the previous. Tunnels set up once
    // control signs with the new key are relayed, and so is the one set up before.
    restart_control_with(
        &mut stack,
        "a-new-admin-secret-0123456789",
        Some(HOLDER_SECRET_NEW),
        Some(&first_admin),
    );
    eventually("control signs with the new key", || {
        anyhow::ensure!(control_log(&stack).contains("signed with the current key"));
        Ok(())
    });
    let (_after_client, after_url) = stack
        .http_tunnel(EU, "after", Some(&stack.pro_token()), local.port)
        .expect("a second tunnel through eu");
    restart_us_edge(&mut stack);
    relayed_at_us(&stack, &after_url, "the tunnel set up after the rotation");
    relayed_at_us(&stack, &before_url, "the tunnel set up before the rotation");
    assert_eq!(bad_proofs_at_us(&stack), 0.0, "no claim was refused");

    // The previous secret dropped: the new tunnel's proof is under the new key, so it stays
    // relayed; the old tunnel's is under the old key, which the us edge took before. Not
    // restarted, and its link to eu not reconnected, it drops that claim once control's
    // answer no longer carries the old key.
    let links = us_links_to_eu(&stack);
    restart_control_with(
        &mut stack,
        "a-new-admin-secret-0123456789",
        Some(HOLDER_SECRET_NEW),
        None,
    );
    eventually("us drops the claim under the dropped key", || {
        let bad = bad_proofs_at_us(&stack);
        anyhow::ensure!(bad >= 1.0, "{bad} refused");
        let (status, body) = http_get(stack.regions[US].http_addr(), &host_of(&before_url), "/")?;
        anyhow::ensure!(status == 404, "{status} {body}");
        anyhow::ensure!(body.contains("No tunnel here"), "{body}");
        Ok(())
    });
    relayed_at_us(
        &stack,
        &after_url,
        "the new tunnel once the old key is gone",
    );
    assert_eq!(
        us_links_to_eu(&stack),
        links,
        "us's link to eu came up again"
    );
}

/// A second control instance on the stack's database, with control's config as it is now on
/// a port of its own (several instances behind a balancer, as docs/operations.md describes).
fn second_control(stack: &Stack) -> ControlProcess {
    let dir = stack.dir.join("control-b");
    std::fs::create_dir_all(&dir).expect("control b's directory");
    let ip = stack.regions[US].ip;
    let listen = format!("{ip}:{}", nearhop_stack::ports::free_port(ip));
    let text = std::fs::read_to_string(&stack.control.config_path).expect("control's config");
    let text = with_setting(&text, "listen", &listen);
    let mut b =
        ControlProcess::from_config(&dir, &text, &stack.control).expect("control b configured");
    b.restart().expect("control b starts");
    b
}

/// `toml` with the line of `key` set to the string `value`.
fn with_setting(toml: &str, key: &str, value: &str) -> String {
    let prefix = format!("{key} = ");
    toml.lines()
        .map(|line| match line.starts_with(&prefix) {
            true => format!("{prefix}\"{value}\""),
            false => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Points the us edge at `control_url` and restarts it.
fn move_us_edge_to(stack: &mut Stack, control_url: &str) {
    let path = stack.edges[US].config_path.clone();
    let text = std::fs::read_to_string(&path).expect("the us edge's config");
    std::fs::write(&path, with_setting(&text, "control_url", control_url))
        .expect("the us edge's config written");
    restart_us_edge(stack);
}

#[test]
fn an_edge_whose_control_had_not_got_the_new_key_takes_the_claims_under_it_when_it_comes() {
    let mut stack = mesh_stack();
    let local = LocalService::start("local");
    let admin = stack.control.admin_secret.clone();
    const OLD: &str = "the-old-holder-key-secret-0123456789";
    restart_control_with(&mut stack, &admin, Some(OLD), None);
    // Control b, on the same database and settings, is the us edge's control.
    let mut b = second_control(&stack);
    let b_url = b.url.clone();
    move_us_edge_to(&mut stack, &b_url);

    // Control a switches to the new key at once (after a leak, say: no previous key), and
    // signs the next tunnel's proof with it; control b still has the old key only.
    restart_control_with(&mut stack, &admin, Some(HOLDER_SECRET_NEW), None);
    let (_client, url) = stack
        .http_tunnel(EU, "late", Some(&stack.pro_token()), local.port)
        .expect("a tunnel through eu");
    eventually(
        "us refuses the claim under a key it has not heard of",
        || {
            let bad = bad_proofs_at_us(&stack);
            anyhow::ensure!(bad >= 1.0, "{bad} refused");
            Ok(())
        },
    );
    let (status, body) =
        http_get(stack.regions[US].http_addr(), &host_of(&url), "/").expect("the us edge answers");
    assert_eq!(status, 404, "not relayed before us has the key: {body}");
    assert_eq!(taken_late_at_us(&stack), 0.0);

    // Control b is restarted with the new key too: the us edge's next heartbeat brings it,
    // and the claim refused before is taken. Its link to eu did not reconnect: what made
    // the difference is the claim kept, not a new snapshot.
    let config = std::fs::read_to_string(&stack.control.config_path).expect("control's config");
    let listen = b.url.trim_start_matches("http://").to_string();
    std::fs::write(&b.config_path, with_setting(&config, "listen", &listen))
        .expect("control b's config");
    let links = us_links_to_eu(&stack);
    b.stop();
    b.restart().expect("control b starts again");
    relayed_at_us(&stack, &url, "the tunnel whose claim came before the key");
    assert_eq!(taken_late_at_us(&stack), 1.0);
    assert_eq!(
        us_links_to_eu(&stack),
        links,
        "us's link to eu came up again"
    );
}
