//! Stock `pdns_server --launch=gpgsql` and `pdns_server` with nearhop-pdns-backend, reading
//! one database (a streaming replica), give the same full answers: header flags, rcode and
//! every section, for every name of a zone set with delegations, wildcards, empty
//! non-terminals (under wildcards and delegations too), CNAME chains, out-of-zone targets,
//! MX and SRV, long TXT and many records per name; for names that do not exist below every
//! level; for names with hostile bytes; and a zone transfer signed with a TSIG key from the
//! `tsigkeys` table. On every connector (unix, http in its three modes, pipe).

use nearhop_stack::fixtures::primary_and_replica;
use nearhop_stack::pdns::conformance::*;
use nearhop_stack::pdns::*;
use nearhop_stack::ports::free_port;
use nearhop_stack::postgres::{psql, wait_replayed, PgCluster, PgEndpoint};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The zones, each loaded as stock gpgsql expects them and then rectified.
const ZONES: [&str; 4] = [
    "conform.test",
    "child.conform.test",
    "second.test",
    "a.tunnel.test",
];

/// `(zone, owner relative to the zone or "@", type, content, ttl, prio)`.
type Row = (&'static str, String, &'static str, String, i32, Option<i32>);

fn rows() -> Vec<Row> {
    let mut v: Vec<Row> = Vec::new();
    let mut add = |zone: &'static str, owner: &str, t: &'static str, content: &str, ttl: i32| {
        v.push((zone, owner.to_string(), t, content.to_string(), ttl, None));
    };
    let c = "conform.test";
    add(
        c,
        "@",
        "SOA",
        "ns1.conform.test. hostmaster.conform.test. 2026120201 3600 600 604800 30",
        3600,
    );
    add(c, "@", "NS", "ns1.conform.test.", 3600);
    add(c, "@", "NS", "ns2.conform.test.", 3600);
    add(c, "@", "TXT", "\"v=spf1 mx -all\"", 300);
    add(c, "@", "A", "192.0.2.10", 300);
    add(c, "ns1", "A", "192.0.2.1", 3600);
    add(c, "ns2", "A", "192.0.2.2", 3600);
    add(c, "ns2", "AAAA", "2001:db8::2", 3600);
    add(c, "mail", "A", "192.0.2.25", 300);
    // CNAMEs: in zone, chained, out of zone, dangling.
    add(c, "www", "CNAME", "web.conform.test.", 300);
    add(c, "web", "A", "192.0.2.80", 300);
    add(c, "web", "AAAA", "2001:db8::80", 300);
    add(c, "chain1", "CNAME", "chain2.conform.test.", 60);
    add(c, "chain2", "CNAME", "chain3.conform.test.", 60);
    add(c, "chain3", "A", "192.0.2.3", 60);
    add(c, "out", "CNAME", "target.elsewhere.example.", 60);
    add(c, "dangling", "CNAME", "nothere.conform.test.", 60);
    // Wildcards, an empty non-terminal under one (`ent.wild`), and a wildcard CNAME.
    add(c, "*.wild", "A", "192.0.2.42", 120);
    add(c, "*.wild", "TXT", "\"from the wildcard\"", 120);
    add(c, "host.wild", "A", "192.0.2.43", 120);
    add(c, "deep.ent.wild", "A", "192.0.2.44", 120);
    add(c, "*.cwild", "CNAME", "web.conform.test.", 120);
    // Delegations: with glue, with an empty non-terminal below it, out of zone only, and
    // to a child zone served by the same database.
    add(c, "sub", "NS", "ns.sub.conform.test.", 3600);
    add(c, "sub", "NS", "ns.elsewhere.example.", 3600);
    add(c, "ns.sub", "A", "192.0.2.53", 3600);
    add(c, "deep.glue.sub", "A", "192.0.2.54", 3600);
    add(c, "extdeleg", "NS", "ns.elsewhere.example.", 3600);
    add(c, "child", "NS", "ns1.conform.test.", 3600);
    // Service records: `_tcp`, `_udp` are empty non-terminals.
    add(c, "sip", "A", "192.0.2.60", 300);
    // nearhop's own shapes: an ACME challenge below a name that has nothing else.
    add(c, "_acme-challenge.tun", "TXT", "\"acme-token-1\"", 10);
    add(c, "_acme-challenge", "TXT", "\"acme-token-apex\"", 10);
    // Long TXT: three strings, 255 + 255 + 100 bytes.
    let long = format!(
        "\"{}\" \"{}\" \"{}\"",
        "a".repeat(255),
        "b".repeat(255),
        "c".repeat(100)
    );
    add(c, "long", "TXT", &long, 300);
    // Many records per name: 40 A (fits UDP), 30 long TXT (truncated over UDP).
    for i in 1..=40 {
        add(c, "many", "A", &format!("198.51.100.{i}"), 300);
    }
    for i in 1..=30 {
        add(
            c,
            "manytxt",
            "TXT",
            &format!("\"record-{i:02}-{}\"", "x".repeat(50)),
            300,
        );
    }
    add(c, "txtonly", "TXT", "\"only text here\"", 300);
    add(c, "mixed", "A", "192.0.2.90", 300);
    add(c, "mixed", "TXT", "\"mixed\"", 300);
    add(c, "a.b.c.d.e", "A", "192.0.2.99", 300);

    let k = "child.conform.test";
    add(
        k,
        "@",
        "SOA",
        "ns1.conform.test. hostmaster.conform.test. 7 3600 600 604800 20",
        3600,
    );
    add(k, "@", "NS", "ns1.conform.test.", 3600);
    add(k, "x.y", "A", "192.0.2.120", 300);
    add(k, "www", "CNAME", "x.y.child.conform.test.", 300);

    let s = "second.test";
    add(
        s,
        "@",
        "SOA",
        "ns1.conform.test. hostmaster.second.test. 1 3600 600 604800 15",
        3600,
    );
    add(s, "@", "NS", "ns1.conform.test.", 3600);
    add(s, "alias", "CNAME", "www.conform.test.", 300);
    add(s, "p.q.r", "TXT", "\"deep\"", 300);
    add(s, "host", "A", "192.0.2.130", 300);
    add(s, "*", "A", "192.0.2.131", 300);
    add(s, "z.ent2", "A", "192.0.2.132", 300);

    let t = "a.tunnel.test";
    add(
        t,
        "@",
        "SOA",
        "ns1.a.tunnel.test. hostmaster.a.tunnel.test. 3 10800 3600 604800 5",
        3600,
    );
    add(t, "@", "NS", "ns1.a.tunnel.test.", 3600);
    add(t, "ns1", "A", "127.0.0.1", 3600);
    add(t, "us", "A", "127.0.0.1", 60);
    add(t, "eu", "A", "127.0.0.2", 60);
    add(t, "blog", "CNAME", "us.a.tunnel.test.", 10);
    add(t, "_acme-challenge.shop", "TXT", "\"token-shop\"", 10);

    // MX and SRV keep their priority in `prio`, as in gpgsql's schema.
    let prio: [Row; 5] = [
        (
            c,
            "@".into(),
            "MX",
            "mail.conform.test.".into(),
            300,
            Some(10),
        ),
        (
            c,
            "@".into(),
            "MX",
            "mx.elsewhere.example.".into(),
            300,
            Some(20),
        ),
        (
            c,
            "mixed".into(),
            "MX",
            "mail.conform.test.".into(),
            300,
            Some(5),
        ),
        (
            c,
            "_sip._tcp".into(),
            "SRV",
            "60 5060 sip.conform.test.".into(),
            300,
            Some(10),
        ),
        (
            c,
            "_sip._udp".into(),
            "SRV",
            "0 5060 sip.elsewhere.example.".into(),
            300,
            Some(0),
        ),
    ];
    v.extend(prio);
    v
}

fn absolute(zone: &str, owner: &str) -> String {
    if owner == "@" {
        zone.to_string()
    } else {
        format!("{owner}.{zone}")
    }
}

fn sql_text(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Every name of the zones: owners, their ancestors inside the zone (the empty
/// non-terminals) and the apexes.
fn all_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (zone, owner, ..) in rows() {
        let mut n = absolute(zone, &owner);
        names.insert(n.clone());
        while let Some((_, parent)) = n.split_once('.') {
            if !parent.ends_with(zone) {
                break;
            }
            names.insert(parent.to_string());
            n = parent.to_string();
        }
    }
    names
}

/// Labels with bytes scanners and broken clients send (`"`, `'`, `%`, `{`, NUL, DEL, bytes
/// above 0x7F), as dig's decimal escapes.
const HOSTILE_LABELS: [&str; 9] = [
    "a\\034b",
    "a\\039b",
    "100\\037",
    "\\123x\\125",
    "nul\\000byte",
    "del\\127",
    "caf\\195\\169",
    "\\200\\255\\128",
    "q\\034\\039\\037\\123\\000\\127\\255",
];

fn queries() -> Vec<DigQuery> {
    let mut q = Vec::new();
    for name in all_names() {
        for t in ["A", "AAAA", "NS", "CNAME", "SOA", "MX", "TXT", "SRV"] {
            q.push(DigQuery::udp(&name, t));
        }
        q.push(DigQuery {
            name: name.clone(),
            qtype: "ANY".into(),
            tcp: true,
        });
        // Names that do not exist, below every level.
        q.push(DigQuery::udp(&format!("nx.{name}"), "A"));
        q.push(DigQuery::udp(&format!("nx.{name}"), "TXT"));
    }
    for name in [
        "WWW.Conform.TEST",
        "Deep.ENT.Wild.conform.test",
        "X.Y.Child.conform.test",
        "NX.Ent.wild.conform.test",
    ] {
        q.push(DigQuery::udp(name, "A"));
    }
    for zone in ZONES {
        for parent in [zone.to_string(), format!("wild.{zone}")] {
            for label in HOSTILE_LABELS {
                q.push(DigQuery::udp(&format!("{label}.{parent}"), "A"));
            }
        }
    }
    q
}

/// 32 random bytes, base64: a fresh TSIG secret for each run (never committed).
fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("reading /dev/urandom");
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The database, loaded and rectified, and stock gpgsql's answers on it.
struct World {
    pg: PgCluster,
    dir: PathBuf,
    key: TsigKeySpec,
    queries: Vec<DigQuery>,
    gpgsql_answers: BTreeMap<String, DigResponse>,
    gpgsql_axfr: Axfr,
    _tmp: tempfile::TempDir,
}

impl World {
    fn start() -> World {
        let tmp = tempfile::Builder::new()
            .prefix("nearhop-conformance-")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let pg = primary_and_replica(&dir).expect("postgres");
        let primary = pg.primary.endpoint.clone();
        apply_schema(&primary).expect("schema");
        let key = TsigKeySpec {
            algorithm: "hmac-sha256".into(),
            name: "xfr-key".into(),
            secret: random_secret(),
        };
        let mut sql = String::from("BEGIN;\n");
        for zone in ZONES {
            sql.push_str(&format!(
                "INSERT INTO domains(name, type) VALUES ({}, 'NATIVE');\n",
                sql_text(zone)
            ));
        }
        for (zone, owner, t, content, ttl, prio) in rows() {
            sql.push_str(&format!(
                "INSERT INTO records(domain_id, name, type, content, ttl, prio) \
                 SELECT id, {}, '{t}', {}, {ttl}, {} FROM domains WHERE name = {};\n",
                sql_text(&absolute(zone, &owner)),
                sql_text(&content),
                prio.map_or("NULL".to_string(), |p| p.to_string()),
                sql_text(zone),
            ));
        }
        sql.push_str(&format!(
            "INSERT INTO tsigkeys(name, algorithm, secret) VALUES ('{}', '{}', '{}');\n\
             INSERT INTO domainmetadata(domain_id, kind, content) \
             SELECT id, 'TSIG-ALLOW-AXFR', '{}' FROM domains WHERE name = 'conform.test';\n\
             COMMIT;\n",
            key.name, key.algorithm, key.secret, key.name
        ));
        psql(&primary, &sql).expect("loading the zones");
        rectify_zones(&dir.join("pdnsutil"), &primary, &ZONES).expect("rectify");
        let ents =
            psql(&primary, "SELECT count(*) FROM records WHERE type IS NULL").expect("count");
        assert!(
            ents.trim().parse::<u32>().unwrap_or(0) >= 10,
            "rectify-zone wrote {ents} empty non-terminal rows"
        );
        wait_replayed(&primary, &pg.replicas[0].endpoint).expect("replayed");

        let ip = Ipv4Addr::new(127, 0, 0, 2);
        let gpgsql = GpgsqlPdns::start(
            &dir.join("gpgsql"),
            ip,
            free_port(ip),
            &pg.replicas[0].endpoint,
            Caches::Off,
            1,
            1,
        )
        .expect("gpgsql pdns");
        let queries = queries();
        let gpgsql_answers = dig_batch(&dir, gpgsql.dns_addr(), &queries).expect("gpgsql answers");
        let gpgsql_axfr = axfr(gpgsql.dns_addr(), "conform.test", Some(&key)).expect("axfr");
        World {
            pg,
            dir,
            key,
            queries,
            gpgsql_answers,
            gpgsql_axfr,
            _tmp: tmp,
        }
    }

    fn replica(&self) -> &PgEndpoint {
        &self.pg.replicas[0].endpoint
    }

    fn start_region(&self, connector: Connector, caches: Caches) -> PdnsRegion {
        let ip = Ipv4Addr::new(127, 0, 0, 2);
        let mut spec = PdnsSpec::for_tests("eu", ip, self.replica().conninfo());
        spec.connector = connector;
        spec.caches = caches;
        spec.distributor_threads = 1;
        // The signed transfers below need AXFR, which the stack leaves off by default.
        spec.axfr_from = vec!["127.0.0.0/8".into()];
        let dir = self.dir.join(format!("dns-{connector:?}-{caches:?}"));
        PdnsRegion::start(&dir, &spec).expect("pdns with the remote backend")
    }

    /// Asks `region` every query and fails with every response that differs from gpgsql's.
    fn assert_same_answers(&self, what: &str, region: &PdnsRegion) {
        let ours = dig_batch(&self.dir, region.dns_addr(), &self.queries).expect("our answers");
        let mut diffs = Vec::new();
        for (question, theirs) in &self.gpgsql_answers {
            match ours.get(question) {
                Some(mine) if mine == theirs => {}
                Some(mine) => diffs.push(format!(
                    "{question}\n  gpgsql: {}\n  remote: {}",
                    theirs.lines.join(" | "),
                    mine.lines.join(" | ")
                )),
                None => diffs.push(format!("{question}: no answer from the remote backend")),
            }
        }
        let shown: Vec<&String> = diffs.iter().take(12).collect();
        assert!(
            diffs.is_empty(),
            "{what}: {} of {} answers differ from gpgsql's:\n{}",
            diffs.len(),
            self.gpgsql_answers.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    /// The backend has applied everything committed on the primary so far.
    fn wait_applied(&self, region: &PdnsRegion) {
        let lsn = psql(&self.pg.primary.endpoint, "SELECT pg_current_wal_lsn()").expect("lsn");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let url = format!(
                "{}/v1/wait?lsn={}&timeout_ms=1000",
                region.backend_url(),
                lsn.trim()
            );
            let v: serde_json::Value = reqwest::blocking::get(url)
                .and_then(|r| r.json())
                .expect("/v1/wait");
            if v["reached"] == serde_json::Value::Bool(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "backend never applied {lsn}: {v}"
            );
        }
    }
}

fn status_of<'a>(answers: &'a BTreeMap<String, DigResponse>, question: &str) -> &'a str {
    answers
        .get(question)
        .map(DigResponse::status)
        .unwrap_or("no answer")
}

/// The zone set behaves in gpgsql as the test means it to (so that equal answers mean
/// something): empty non-terminals are NODATA, also under a wildcard, and stop the wildcard
/// below them; hostile names are NXDOMAIN.
fn assert_the_baseline_is_what_it_should_be(w: &World) {
    let a = &w.gpgsql_answers;
    for (q, want) in [
        (";ent.wild.conform.test. IN A", "NOERROR"),
        (";nx.ent.wild.conform.test. IN A", "NXDOMAIN"),
        (";nx.wild.conform.test. IN A", "NOERROR"),
        (";tun.conform.test. IN A", "NOERROR"),
        (";_tcp.conform.test. IN SRV", "NOERROR"),
        (";d.e.conform.test. IN TXT", "NOERROR"),
        (";shop.a.tunnel.test. IN A", "NOERROR"),
        (";glue.sub.conform.test. IN A", "NOERROR"),
        (";nx.conform.test. IN A", "NXDOMAIN"),
        (";a\\\"b.conform.test. IN A", "NXDOMAIN"),
        (";nul\\000byte.conform.test. IN A", "NXDOMAIN"),
        (";caf\\195\\169.wild.conform.test. IN A", "NOERROR"),
    ] {
        assert_eq!(status_of(a, q), want, "gpgsql: {q}");
    }
    for (q, r) in a {
        assert_ne!(r.status(), "SERVFAIL", "gpgsql: {q}");
    }
    match &w.gpgsql_axfr {
        Axfr::Transferred {
            records,
            tsig_records,
        } => {
            assert!(*tsig_records >= 1, "gpgsql's AXFR is not signed");
            assert!(records.len() > 80, "{records:?}");
        }
        Axfr::Failed(why) => panic!("gpgsql's signed AXFR failed: {why}"),
    }
}

fn assert_signed_axfr_like_gpgsql(w: &World, what: &str, region: &PdnsRegion) {
    let got = axfr(region.dns_addr(), "conform.test", Some(&w.key)).expect("axfr");
    assert_eq!(got, w.gpgsql_axfr, "{what}: signed AXFR");
    let wrong = TsigKeySpec {
        secret: random_secret(),
        ..w.key.clone()
    };
    let refused = axfr(region.dns_addr(), "conform.test", Some(&wrong)).expect("axfr");
    assert!(
        matches!(refused, Axfr::Failed(_)),
        "{what}: an AXFR signed with a wrong secret went through"
    );
}

#[test]
fn every_connector_answers_exactly_as_gpgsql_on_the_same_database() {
    let w = World::start();
    assert_the_baseline_is_what_it_should_be(&w);
    assert!(w.queries.len() >= 300, "{} queries", w.queries.len());
    for connector in [
        Connector::Unix,
        Connector::HttpRest,
        Connector::HttpPost,
        Connector::HttpPostJson,
        Connector::Pipe,
    ] {
        let region = w.start_region(connector, Caches::Off);
        let what = format!("{connector:?}");
        w.assert_same_answers(&what, &region);
        assert_signed_axfr_like_gpgsql(&w, &what, &region);
    }
}

#[test]
fn empty_non_terminals_need_no_rectify_and_tsig_keys_follow_the_primary() {
    let w = World::start();
    let region = w.start_region(Connector::Unix, Caches::Off);
    w.assert_same_answers("rectified", &region);

    // As control writes zones (never rectified): without the typeless rows the backend
    // still answers exactly what gpgsql answers on the rectified zones.
    psql(
        &w.pg.primary.endpoint,
        "DELETE FROM records WHERE type IS NULL",
    )
    .expect("delete ENT rows");
    w.wait_applied(&region);
    w.assert_same_answers("without rectify rows", &region);

    // With pdns's caches on, as deployed: a name that starts (or stops) existing only
    // because a name below it was written (an ACME challenge for a new name) is purged
    // with that name, so its cached NXDOMAIN (or NODATA) goes at once.
    let cached = w.start_region(Connector::Unix, Caches::Purged(60));
    let ask = |what: &str| -> String {
        let q = [DigQuery::udp("fresh.conform.test", "A")];
        let answers = dig_batch(&w.dir, cached.dns_addr(), &q).expect(what);
        status_of(&answers, ";fresh.conform.test. IN A").to_string()
    };
    assert_eq!(ask("before"), "NXDOMAIN");
    psql(
        &w.pg.primary.endpoint,
        "INSERT INTO records(domain_id, name, type, content, ttl) SELECT id, \
         '_acme-challenge.fresh.conform.test', 'TXT', '\"t\"', 10 FROM domains \
         WHERE name = 'conform.test'",
    )
    .expect("insert challenge");
    w.wait_applied(&cached);
    assert_eq!(ask("after the challenge"), "NOERROR");
    psql(
        &w.pg.primary.endpoint,
        "DELETE FROM records WHERE name = '_acme-challenge.fresh.conform.test'",
    )
    .expect("delete challenge");
    w.wait_applied(&cached);
    assert_eq!(ask("after its removal"), "NXDOMAIN");

    // A key changed on the primary is in effect once the backend reports the commit
    // applied (the lag race's bound for records), the old secret no longer.
    let new_secret = random_secret();
    psql(
        &w.pg.primary.endpoint,
        &format!(
            "UPDATE tsigkeys SET secret = '{new_secret}' WHERE name = '{}'",
            w.key.name
        ),
    )
    .expect("update key");
    w.wait_applied(&region);
    let new_key = TsigKeySpec {
        secret: new_secret,
        ..w.key.clone()
    };
    let got = axfr(region.dns_addr(), "conform.test", Some(&new_key)).expect("axfr");
    assert!(
        matches!(got, Axfr::Transferred { tsig_records, .. } if tsig_records >= 1),
        "AXFR with the new secret: {got:?}"
    );
    let old = axfr(region.dns_addr(), "conform.test", Some(&w.key)).expect("axfr");
    assert!(
        matches!(old, Axfr::Failed(_)),
        "AXFR with the old secret: {old:?}"
    );
    // A key removed is gone as fast.
    psql(&w.pg.primary.endpoint, "DELETE FROM tsigkeys").expect("delete key");
    w.wait_applied(&region);
    let gone = axfr(region.dns_addr(), "conform.test", Some(&new_key)).expect("axfr");
    assert!(
        matches!(gone, Axfr::Failed(_)),
        "AXFR with a deleted key: {gone:?}"
    );
}
