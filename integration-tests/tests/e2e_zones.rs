//! Free and pro tunnels land in their own zones, each with its own SOA, in every region;
//! taking a free-zone name down closes its tunnel and removes it everywhere while the pro
//! zone's tunnel, records and SOA stay exactly as they were.

use nearhop_stack::dns_client::{query, QTYPE_SOA, RCODE_NXDOMAIN};
use nearhop_stack::prelude::*;
use nearhop_stack::Stack;
use std::time::Duration;

/// The SOA data of `zone` on region `dns`'s DNS.
fn soa(stack: &Stack, dns: usize, zone: &str) -> String {
    let r = query(stack.regions[dns].dns_addr(), zone, QTYPE_SOA, None).expect("SOA");
    r.data_of(QTYPE_SOA).into_iter().next().expect("an SOA")
}

#[test]
fn free_zone_takedown_leaves_the_pro_zone_untouched() {
    let stack = full_stack();
    let pro_local = LocalService::start("pro");
    let free_local = LocalService::start("free");
    let token = stack.pro_token();
    let (mut pro, pro_url) = stack
        .http_tunnel(EU, "pro", Some(&token), pro_local.port)
        .expect("pro URL");
    let (mut free, free_url) = stack
        .http_tunnel(EU, "free", Some("http"), free_local.port)
        .expect("free URL");
    let (pro_host, free_host) = (host_of(&pro_url), host_of(&free_url));
    assert!(pro_host.ends_with(&format!(".{PRO_ZONE}")), "{pro_host}");
    assert!(free_host.ends_with(&format!(".{FREE_ZONE}")), "{free_host}");

    // Two zones, two SOAs, in every region.
    let mut pro_soas = Vec::new();
    for dns in [US, EU, AP] {
        let (p, f) = (soa(&stack, dns, PRO_ZONE), soa(&stack, dns, FREE_ZONE));
        assert!(p.starts_with(&format!("ns1.{PRO_ZONE}. ")), "{p}");
        assert!(f.starts_with(&format!("ns1.{FREE_ZONE}. ")), "{f}");
        assert!(lookup(&stack, dns, &pro_host)
            .unwrap()
            .points_at("eu", PRO_ZONE));
        assert!(lookup(&stack, dns, &free_host)
            .unwrap()
            .points_at("eu", FREE_ZONE));
        pro_soas.push(p);
    }
    let load = Load::start(
        plan_in(&stack, AP, &pro_url, "pro"),
        Duration::from_millis(20),
    );
    visit(&stack, AP, &free_url, "/").expect("the free tunnel serves");

    let done = stack
        .control
        .cli(&["takedown", &free_host, "--reason", "phishing report"])
        .expect("takedown");
    let done: serde_json::Value = serde_json::from_str(&done).expect("the CLI's JSON");
    assert!(
        done["closed_tunnel"].as_i64().is_some(),
        "the takedown closed the live free tunnel: {done}"
    );

    // The free name is gone from every region's DNS and from its edge; its client is told.
    for dns in [US, EU, AP] {
        eventually("the free name is removed", || {
            let l = lookup(&stack, dns, &free_host)?;
            anyhow::ensure!(l.rcode == RCODE_NXDOMAIN, "{}", l.describe());
            Ok(())
        });
    }
    eventually("eu's edge stops serving the taken-down name", || {
        let (status, body) = http_get(stack.regions[EU].http_addr(), &free_host, "/")?;
        anyhow::ensure!(
            status == 404 && body.contains("No tunnel here"),
            "{status} {body}"
        );
        Ok(())
    });
    let out = free
        .wait_exit(PATIENCE)
        .expect("the free client is disconnected");
    assert!(out.contains("taken down"), "{out}");

    // The pro zone did not move: same SOA, same record, every visit served.
    for (i, dns) in [US, EU, AP].into_iter().enumerate() {
        assert_eq!(soa(&stack, dns, PRO_ZONE), pro_soas[i], "pro SOA unchanged");
        assert!(lookup(&stack, dns, &pro_host)
            .unwrap()
            .points_at("eu", PRO_ZONE));
    }
    let stats = load.stop();
    assert!(stats.ok > 0 && stats.errors == 0, "pro visitors: {stats:?}");
    assert!(pro.is_running(), "the pro client stayed connected");
}
