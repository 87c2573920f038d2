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
