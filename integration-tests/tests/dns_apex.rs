//! The connect name (zone apex) answers the nearest healthy region's edge address, chosen
//! from the resolver's address or its EDNS Client Subnet, and skips regions whose edges
//! stopped heartbeating.

use anyhow::ensure;
use nearhop_stack::dns_client::*;
use nearhop_stack::fixtures::*;
use nearhop_stack::poll::eventually;

fn apex_a(fx: &DnsFixture, extra: &[&str]) -> String {
    let mut args = vec!["+short", "a.tunnel.test", "A"];
    args.extend_from_slice(extra);
    dig(fx.region.dns_addr(), &args)
        .expect("dig")
        .trim()
        .to_string()
}

/// Polls (the heartbeat state is re-read every 200 ms) until the answer is `want`.
fn answer_becomes(fx: &DnsFixture, extra: &[&str], want: &str) {
    eventually(&format!("the apex answers {want} ({extra:?})"), || {
        let got = apex_a(fx, extra);
        ensure!(got == want, "it answers {got:?}");
        Ok(())
    });
}

fn fixture() -> DnsFixture {
    DnsFixture::start(|spec| {
        spec.apex_prefixes = vec![
            ("127.0.0.2/32".into(), vec!["eu".into()]),
            // The second preference is not the default region: falling back to the default
            // would not pass for following the preference.
            ("127.0.0.3/32".into(), vec!["ap".into(), "eu".into()]),
            ("10.3.0.0/16".into(), vec!["ap".into(), "eu".into()]),
        ];
        spec.default_region = "us".into();
        spec.heartbeat_bound_secs = 5.0;
    })
    .expect("fixture")
}

#[test]
fn apex_answer_depends_on_the_resolver_source_address() {
    let fx = fixture();
    assert_eq!(apex_a(&fx, &["-b", "127.0.0.2"]), "127.0.0.2");
    assert_eq!(apex_a(&fx, &["-b", "127.0.0.3"]), "127.0.0.3");
    // No prefix matches 127.0.0.1: the default region.
    assert_eq!(apex_a(&fx, &["-b", "127.0.0.1"]), "127.0.0.1");
}

#[test]
fn apex_answer_follows_edns_client_subnet_and_reports_the_scope() {
    let fx = fixture();
    assert_eq!(
        apex_a(&fx, &["-b", "127.0.0.2", "+subnet=10.3.7.0/24"]),
        "127.0.0.3"
    );
    let full = dig(
        fx.region.dns_addr(),
        &["a.tunnel.test", "A", "+subnet=10.3.7.0/24"],
    )
    .expect("dig");
    // The answer is valid for the whole mapped /16, which is what the scope says.
    assert!(full.contains("CLIENT-SUBNET: 10.3.7.0/24/16"), "{full}");
    // Same resolver, other client subnet, other answer: the ECS answer was not cached for all.
    assert_eq!(
        apex_a(&fx, &["-b", "127.0.0.2", "+subnet=192.0.2.0/24"]),
        "127.0.0.1"
    );
    assert_eq!(
        apex_a(&fx, &["-b", "127.0.0.2", "+subnet=10.3.0.0/24"]),
        "127.0.0.3"
    );
}

#[test]
fn apex_skips_a_region_whose_edges_stopped_heartbeating() {
    let fx = fixture();
    assert_eq!(apex_a(&fx, &["-b", "127.0.0.3"]), "127.0.0.3");
    fx.sql("UPDATE edges SET last_heartbeat = now() - interval '1 hour' WHERE region = 'ap'")
        .expect("stale heartbeat");
    // ap's clients now get their next preference, eu (not the default, us).
    answer_becomes(&fx, &["-b", "127.0.0.3"], "127.0.0.2");
    answer_becomes(&fx, &["+subnet=10.3.7.0/24"], "127.0.0.2");
    // The edge heartbeats again: back to ap.
    fx.sql("UPDATE edges SET last_heartbeat = now() WHERE region = 'ap'")
        .expect("fresh heartbeat");
    answer_becomes(&fx, &["-b", "127.0.0.3"], "127.0.0.3");
}
