//! Records written on the primary are served by the replica-side pdns through the backend,
//! on every connector, and the same database served by stock gpgsql answers the same.

use nearhop_stack::control::ZONE_NEGATIVE_TTL;
use nearhop_stack::dns_client::*;
use nearhop_stack::fixtures::*;
use nearhop_stack::pdns::*;
use std::net::Ipv4Addr;

fn cname_of(addr: std::net::SocketAddr, name: &str) -> (u8, Vec<String>) {
    let r = query(addr, name, QTYPE_CNAME, None).expect("dns query");
    (r.rcode, r.data_of(QTYPE_CNAME))
}

#[test]
fn record_is_answered_once_wait_reports_it_applied_and_deletion_removes_it() {
    let fx = DnsFixture::start(|_| {}).expect("fixture");
    let addr = fx.region.dns_addr();
    // Asked before it exists: NXDOMAIN (cached negatively by pdns; the purge must clear it).
    assert_eq!(
        cname_of(addr, "androidblog.a.tunnel.test").0,
        RCODE_NXDOMAIN
    );

    let lsn = fx
        .add_cname("a.tunnel.test", "androidblog", "eu.a.tunnel.test.")
        .expect("insert");
    fx.wait_applied(&lsn).expect("applied");
    // `/v1/wait` reports a position only after its names were purged from pdns's caches, so
    // the NXDOMAIN pdns cached above is gone: the very next query sees the record (the lag
    // race's promise).
    let answered = cname_of(addr, "androidblog.a.tunnel.test");
    assert_eq!(
        answered,
        (RCODE_NOERROR, vec!["eu.a.tunnel.test.".to_string()])
    );
    // Case-insensitive, and A queries follow the CNAME inside the zone.
    let a = query(addr, "AndroidBlog.A.Tunnel.Test", QTYPE_A, None).expect("query");
    assert_eq!(a.data_of(QTYPE_A), vec!["127.0.0.2".to_string()]);

    fx.sql("DELETE FROM records WHERE name = 'androidblog.a.tunnel.test'")
        .expect("delete");
    let lsn = fx.sql("SELECT pg_current_wal_lsn()").expect("lsn");
    fx.wait_applied(lsn.trim()).expect("applied");
    // The same promise for a delete: the very next query has the name gone, though pdns
    // had cached its answers (in both spellings) above.
    for spelling in ["androidblog.a.tunnel.test", "AndroidBlog.A.Tunnel.Test"] {
        let gone = cname_of(addr, spelling);
        assert_eq!(gone.0, RCODE_NXDOMAIN, "{spelling}: {gone:?}");
    }
}

#[test]
fn nxdomain_carries_the_soa_with_the_low_negative_ttl() {
    let fx = DnsFixture::start(|_| {}).expect("fixture");
    let r = query(
        fx.region.dns_addr(),
        "nosuchname.free.tunnel.test",
        QTYPE_A,
        None,
    )
    .expect("query");
    assert_eq!(r.rcode, RCODE_NXDOMAIN);
    let soa = r
        .authority
        .iter()
        .find(|rr| rr.rtype == QTYPE_SOA)
        .expect("SOA in authority");
    assert_eq!(soa.name, "free.tunnel.test.");
    assert_eq!(soa.ttl, ZONE_NEGATIVE_TTL);
    let fields: Vec<&str> = soa.data.split_whitespace().collect();
    assert_eq!(fields.len(), 7, "{}", soa.data);
    assert_eq!(fields[6], ZONE_NEGATIVE_TTL.to_string());
}

#[test]
fn gpgsql_on_the_same_replica_gives_the_same_answers() {
    let fx = DnsFixture::start(|_| {}).expect("fixture");
    fx.add_cname("a.tunnel.test", "blog", "us.a.tunnel.test.")
        .expect("insert");
    fx.add_cname("free.tunnel.test", "k3x9qz2m", "ap.free.tunnel.test.")
        .expect("insert");
    fx.sql(
        "INSERT INTO records(domain_id, name, type, content, ttl) \
         SELECT id, 'txt.a.tunnel.test', 'TXT', '\"hello world\"', 60 FROM domains WHERE name='a.tunnel.test'",
    )
    .expect("txt");
    let lsn = fx.sql("SELECT pg_current_wal_lsn()").expect("lsn");
    fx.wait_applied(lsn.trim()).expect("applied");
    let ip = Ipv4Addr::new(127, 0, 0, 2);
    let gpgsql = GpgsqlPdns::start(
        &fx.dir.join("gpgsql"),
        ip,
        nearhop_stack::ports::free_port(ip),
        fx.replica(),
        Caches::Off,
        1,
        3,
    )
    .expect("gpgsql pdns");
    let names = [
        ("a.tunnel.test", QTYPE_SOA),
        ("a.tunnel.test", QTYPE_NS),
        ("free.tunnel.test", QTYPE_SOA),
        ("ns1.a.tunnel.test", QTYPE_A),
        ("us.a.tunnel.test", QTYPE_A),
        ("eu.free.tunnel.test", QTYPE_A),
        ("blog.a.tunnel.test", QTYPE_CNAME),
        ("blog.a.tunnel.test", QTYPE_A),
        ("k3x9qz2m.free.tunnel.test", QTYPE_A),
        ("txt.a.tunnel.test", QTYPE_TXT),
        ("missing.a.tunnel.test", QTYPE_A),
        ("us.a.tunnel.test", QTYPE_AAAA),
        ("deep.missing.free.tunnel.test", QTYPE_CNAME),
    ];
    for (name, qtype) in names {
        let ours = query(fx.region.dns_addr(), name, qtype, None).expect("ours");
        let theirs = query(gpgsql.dns_addr(), name, qtype, None).expect("gpgsql");
        assert_eq!(ours, theirs, "{name} type {qtype}");
    }
}

#[test]
fn http_and_pipe_connectors_answer_like_the_unix_socket() {
    let fx = DnsFixture::start(|_| {}).expect("fixture");
    fx.add_cname("a.tunnel.test", "viahttp", "us.a.tunnel.test.")
        .expect("insert");
    let lsn = fx.sql("SELECT pg_current_wal_lsn()").expect("lsn");
    fx.wait_applied(lsn.trim()).expect("applied");
    let ip = Ipv4Addr::new(127, 0, 0, 2);
    let unix_answer =
        query(fx.region.dns_addr(), "viahttp.a.tunnel.test", QTYPE_A, None).expect("unix");
    assert_eq!(unix_answer.rcode, RCODE_NOERROR);
    for connector in [
        Connector::HttpRest,
        Connector::HttpPost,
        Connector::HttpPostJson,
        Connector::Pipe,
    ] {
        let mut spec = PdnsSpec::for_tests("eu", ip, fx.replica().conninfo());
        spec.connector = connector;
        spec.caches = Caches::Off;
        spec.distributor_threads = 1;
        let region = PdnsRegion::start(&fx.dir.join(format!("dns-{connector:?}")), &spec)
            .expect("pdns with connector");
        for (name, qtype) in [
            ("viahttp.a.tunnel.test", QTYPE_A),
            ("a.tunnel.test", QTYPE_SOA),
            ("missing.a.tunnel.test", QTYPE_A),
        ] {
            let theirs = query(region.dns_addr(), name, qtype, None).expect("query");
            let ours = query(fx.region.dns_addr(), name, qtype, None).expect("query");
            assert_eq!(theirs, ours, "{connector:?}: {name} {qtype}");
        }
    }
}
