//! Many concurrent, overlapping, randomly committed or rolled back transactions on the
//! primary: the backend tailing the replica loses no change and ends with exactly the
//! database's records, although commit order differs from change-id order.

use nearhop_stack::dns_client::*;
use nearhop_stack::fixtures::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;

const NAMES: u64 = 60;
const WRITERS: u64 = 6;
const TRANSACTIONS_PER_WRITER: u64 = 40;

/// xorshift64*, seeded per writer: reproducible without a rand dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn name(i: u64) -> String {
    format!("w{i}.a.tunnel.test")
}

async fn writer(conninfo: String, seed: u64) -> anyhow::Result<()> {
    let (mut client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let mut rng = Rng(seed | 1);
    for t in 0..TRANSACTIONS_PER_WRITER {
        let tx = client.transaction().await?;
        for _ in 0..1 + rng.below(4) {
            let n = name(rng.below(NAMES));
            match rng.below(3) {
                0 => {
                    tx.execute(
                        "INSERT INTO records(domain_id, name, type, content, ttl) \
                         SELECT id, $1, 'TXT', $2, 10 FROM domains WHERE name = 'a.tunnel.test'",
                        &[&n, &format!("\"s{seed}-t{t}\"")],
                    )
                    .await?;
                }
                1 => {
                    tx.execute(
                        "UPDATE records SET content = $2 WHERE name = $1",
                        &[&n, &format!("\"u{seed}-t{t}\"")],
                    )
                    .await?;
                }
                _ => {
                    tx.execute("DELETE FROM records WHERE name = $1", &[&n])
                        .await?;
                }
            }
            // Hold some transactions open so that later ones commit first.
            if rng.below(4) == 0 {
                tx.execute("SELECT pg_sleep($1)", &[&(rng.below(80) as f64 / 1000.0)])
                    .await?;
            }
        }
        if rng.below(5) == 0 {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
    }
    Ok(())
}

fn backend_view(fx: &DnsFixture, n: &str) -> Vec<String> {
    let reply = fx
        .region
        .backend_call(
            &json!({"method":"lookup","parameters":{"qname": format!("{n}."),
            "qtype":"ANY","zone-id":-1,"remote":"127.0.0.1","local":"127.0.0.1",
            "real-remote":"127.0.0.1/32"}}),
        )
        .expect("backend call");
    let mut v: Vec<String> = reply["result"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| format!("{} {}", r["qtype"].as_str().unwrap_or(""), r["content"]))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn concurrent_writers_lose_no_change_while_tailing() {
    let fx = DnsFixture::start(|_| {}).expect("fixture");
    let conninfo = fx.primary().conninfo();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| tokio::spawn(writer(conninfo.clone(), 0x9E37_79B9 * (w + 1))))
            .collect();
        for t in tasks {
            t.await.expect("join").expect("writer");
        }
    });
    let lsn = fx.sql("SELECT pg_current_wal_lsn()").expect("lsn");
    fx.wait_applied(lsn.trim()).expect("applied");

    let rows = fx
        .sql("SELECT name, type, content FROM records WHERE name LIKE 'w%.a.tunnel.test'")
        .expect("rows");
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in rows.lines() {
        let mut parts = line.splitn(3, '|');
        let (Some(n), Some(t), Some(c)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        want.entry(n.to_string())
            .or_default()
            .push(format!("{t} {}", Value::String(c.to_string())));
    }
    let changes: u64 = fx
        .sql("SELECT count(*) FROM dns_changes WHERE name LIKE 'w%'")
        .expect("count")
        .trim()
        .parse()
        .expect("number");
    assert!(changes > 100, "only {changes} changes were generated");
    for i in 0..NAMES {
        let n = name(i);
        let mut expected = want.remove(&n).unwrap_or_default();
        expected.sort();
        assert_eq!(backend_view(&fx, &n), expected, "{n}");
    }
    // And through pdns, for a few names.
    for i in 0..5 {
        let n = name(i);
        let r = query(fx.region.dns_addr(), &n, QTYPE_TXT, None).expect("query");
        let expected = backend_view(&fx, &n).len();
        assert_eq!(r.answers.len(), expected, "{n}");
    }
}
