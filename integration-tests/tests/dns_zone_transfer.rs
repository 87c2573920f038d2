//! Zone transfers list every tunnel name: the stack's pdns refuses them unless secondaries
//! are named (`axfr_from`, `pdns_axfr_secondaries` in Ansible), as deployed.

use nearhop_stack::fixtures::*;
use nearhop_stack::pdns::conformance::{axfr, Axfr};
use nearhop_stack::pdns::*;

#[test]
fn axfr_is_refused_unless_secondaries_are_named() {
    let fx = DnsFixture::start(|_| {}).expect("fixture");
    let lsn = fx
        .add_cname("a.tunnel.test", "secret-name", "eu.a.tunnel.test.")
        .expect("insert");
    fx.wait_applied(&lsn).expect("applied");

    // As the stack starts pdns: no secondaries, so no transfer of either zone, even from
    // loopback (pdns's own default would allow 127.0.0.0/8).
    for zone in ["a.tunnel.test", "free.tunnel.test"] {
        match axfr(fx.region.dns_addr(), zone, None).expect("dig") {
            Axfr::Failed(_) => {}
            Axfr::Transferred { records, .. } => {
                panic!("AXFR of {zone} went through: {records:?}")
            }
        }
    }

    // An operator who names a secondary gets transfers to it.
    let mut spec = PdnsSpec::for_tests("eu", fx.replica().ip, fx.replica().conninfo());
    spec.axfr_from = vec!["127.0.0.0/8".into()];
    let secondary_allowed =
        PdnsRegion::start(&fx.dir.join("dns-eu-axfr"), &spec).expect("pdns allowing AXFR");
    match axfr(secondary_allowed.dns_addr(), "a.tunnel.test", None).expect("dig") {
        Axfr::Transferred { records, .. } => assert!(
            records
                .iter()
                .any(|r| r.starts_with("secret-name.a.tunnel.test.")),
            "{records:?}"
        ),
        Axfr::Failed(why) => panic!("AXFR to a named secondary failed: {why}"),
    }
}
