//! Control (or its database) down: live tunnels keep serving visitors, new setups get a
//! clear sentence, and setups work again once control is back.

use nearhop_stack::prelude::*;

#[test]
fn live_tunnels_keep_serving_while_control_is_down_and_new_setups_get_a_clear_error() {
    let mut s = EdgeStack::start("");
    let local = LocalService::start("local");
    let token = s.pro_token();
    let mut live = s.ssh("live", &SshArgs::http_tunnel(Some(&token), local.port));
    let url = live.wait_for_url(PATIENCE).unwrap();

    s.stack.control.stop();
    let v = visitor(&url, s.edge.http_addr());
    for _ in 0..20 {
        let body = v
            .get(format!("{url}/hello"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        assert!(body.starts_with("hello from local"), "{body}");
    }
    let mut refused = s.ssh("refused", &SshArgs::http_tunnel(Some(&token), local.port));
    let out = refused.wait_exit(PATIENCE).unwrap();
    assert!(out.contains("control plane is unreachable"), "{out}");
    assert!(out.contains("already live are not affected"), "{out}");
    assert!(live.is_running());

    s.stack.control.restart().unwrap();
    let other = s.pro_token();
    let mut again = s.ssh("again", &SshArgs::http_tunnel(Some(&other), local.port));
    again.wait_for_url(PATIENCE).unwrap();
    let metrics = s.edge.metrics().unwrap();
    assert!(
        metrics.contains("nearhop_edge_control_errors_total{call=\"create_tunnel\"}"),
        "{metrics}"
    );
}

/// Seconds since the Unix epoch, as the edge's gauge counts them.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs_f64()
}

fn last_heartbeat(s: &EdgeStack) -> f64 {
    let text = s.edge.metrics().expect("the edge's metrics");
    metric(
        &text,
        "nearhop_edge_control_last_heartbeat_timestamp_seconds",
        &[],
    )
    .expect("the last-heartbeat gauge")
}

/// `NearhopEdgeCannotReachControl` reads when control last accepted the edge's heartbeat: it
/// stays where it was while control is down (however the heartbeats fail) and moves on once
/// control is back; the interval is the one control asked for.
#[test]
fn the_edge_says_when_control_last_heard_its_heartbeat() {
    let mut s = EdgeStack::start("");
    let control_toml = std::fs::read_to_string(&s.stack.control.config_path).unwrap();
    let asked: f64 = control_toml
        .lines()
        .find_map(|l| l.strip_prefix("heartbeat_seconds = "))
        .expect("control's heartbeat_seconds")
        .trim()
        .parse()
        .unwrap();
    // The edge answers its admin API before its registration is through: the interval
    // is control's once it is.
    eventually("the heartbeat interval control asked for", || {
        let text = s.edge.metrics()?;
        let interval = metric(
            &text,
            "nearhop_edge_control_heartbeat_interval_seconds",
            &[],
        );
        anyhow::ensure!(interval == Some(asked), "{interval:?}, not {asked}");
        Ok(())
    });
    // Registered: heard at the start, then at every heartbeat.
    let heard = eventually("a heartbeat accepted after the registration", || {
        let at = last_heartbeat(&s);
        anyhow::ensure!(at > 0.0, "never heard");
        Ok(at)
    });
    eventually("a later heartbeat accepted", || {
        anyhow::ensure!(last_heartbeat(&s) > heard, "no later heartbeat yet");
        Ok(())
    });

    s.stack.control.stop();
    let stopped_at = unix_now();
    eventually("a failed heartbeat", || {
        let text = s.edge.metrics()?;
        let failed = metric(
            &text,
            "nearhop_edge_control_errors_total",
            &[("call", "heartbeat")],
        )
        .unwrap_or(0.0);
        anyhow::ensure!(failed >= 2.0, "{failed} failed heartbeats");
        Ok(())
    });
    let during = last_heartbeat(&s);
    assert!(
        during <= stopped_at.ceil(),
        "heard at {during}, after control stopped at {stopped_at}"
    );

    s.stack.control.restart().unwrap();
    let restarted_at = unix_now();
    eventually("a heartbeat accepted by control again", || {
        let at = last_heartbeat(&s);
        anyhow::ensure!(at >= restarted_at.floor(), "last heard at {at}");
        Ok(())
    });
}
