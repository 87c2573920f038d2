//! Comparing two `pdns_server`s answer for answer: the schema applied straight from
//! `sql/migrations` (no control, so no `regions` rows and no computed apex answers), zones
//! rectified with the real `pdnsutil rectify-zone`, queries sent in batches with `dig` and
//! each response reduced to what must be equal (header flags, rcode, every section), and
//! zone transfers with and without a TSIG key.

use crate::postgres::{PgEndpoint, DB_NAME, DB_USER};
use crate::process::run;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Applies every migration's `up.sql` in order with `psql`, as the database gets them from
/// `nearhop-control migrate` (without diesel's bookkeeping table, which nothing here reads).
pub fn apply_schema(db: &PgEndpoint) -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sql/migrations");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .with_context(|| format!("reading {}", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("up.sql").is_file())
        .collect();
    dirs.sort();
    for dir in dirs {
        let mut c = Command::new("psql");
        c.arg(db.conninfo())
            .args(["-v", "ON_ERROR_STOP=1", "-qAtX", "-f"])
            .arg(dir.join("up.sql"));
        run(c).with_context(|| format!("applying {}", dir.display()))?;
    }
    Ok(())
}

/// Runs `pdnsutil rectify-zone` (gpgsql on `db`) for each zone: what an operator of stock
/// gpgsql runs after loading zones, writing the typeless empty-non-terminal rows.
pub fn rectify_zones(dir: &Path, db: &PgEndpoint, zones: &[&str]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("pdns.conf"),
        format!(
            "launch=gpgsql\ngpgsql-host={}\ngpgsql-port={}\ngpgsql-dbname={DB_NAME}\n\
             gpgsql-user={DB_USER}\ngpgsql-password=\ngpgsql-dnssec=no\n8bit-dns=yes\n",
            db.ip, db.port
        ),
    )?;
    for zone in zones {
        let mut c = Command::new("pdnsutil");
        c.arg(format!("--config-dir={}", dir.display()))
            .args(["rectify-zone", zone]);
        run(c).with_context(|| format!("pdnsutil rectify-zone {zone}"))?;
    }
    Ok(())
}

/// One query of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigQuery {
    /// Name in presentation form (`\DDD` escapes allowed).
    pub name: String,
    /// Type mnemonic.
    pub qtype: String,
    /// Over TCP (ANY is answered with TC over UDP).
    pub tcp: bool,
}

impl DigQuery {
    /// A query over UDP.
    pub fn udp(name: &str, qtype: &str) -> DigQuery {
        DigQuery {
            name: name.into(),
            qtype: qtype.into(),
            tcp: false,
        }
    }
}

/// A response reduced to what two servers must agree on: the header without its id, the
/// flags and counts, the EDNS line, and each section's records sorted (order within a
/// section carries no meaning and follows the database's row order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigResponse {
    /// The lines, in section order.
    pub lines: Vec<String>,
}

impl DigResponse {
    /// The rcode (`NOERROR`, `NXDOMAIN`, ...).
    pub fn status(&self) -> &str {
        self.lines
            .iter()
            .find_map(|l| l.split("status: ").nth(1))
            .and_then(|s| s.split(',').next())
            .unwrap_or("")
    }
}

/// Sends every query to `server` with one `dig` process (batch mode, no recursion desired,
/// no cookie) and returns the responses keyed by their question line (as dig prints it, so
/// the names' case and escapes are kept). Fails unless every query got exactly one answer.
pub fn dig_batch(
    dir: &Path,
    server: SocketAddr,
    queries: &[DigQuery],
) -> Result<BTreeMap<String, DigResponse>> {
    let file = dir.join(format!("batch-{}.txt", server.port()));
    let mut text = String::new();
    for q in queries {
        text.push_str(&format!(
            "{} {}{}\n",
            q.name,
            q.qtype,
            if q.tcp { " +tcp" } else { "" }
        ));
    }
    std::fs::write(&file, text)?;
    let mut c = Command::new("dig");
    c.arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string()])
        .args([
            "+norec",
            "+nocookie",
            "+nocmd",
            "+nostats",
            "+time=3",
            "+tries=3",
        ])
        .arg("-f")
        .arg(&file);
    let out = run(c)?;
    let responses = parse_dig_responses(&out)?;
    if responses.len() != queries.len() {
        bail!(
            "{} queries to {server}, {} distinct answers (a timeout, or two queries with one \
             question)",
            queries.len(),
            responses.len()
        );
    }
    Ok(responses)
}

/// Splits dig's output into responses (one per `;; Got answer:`), keyed by question line.
pub fn parse_dig_responses(out: &str) -> Result<BTreeMap<String, DigResponse>> {
    let mut map = BTreeMap::new();
    for block in out.split(";; Got answer:").skip(1) {
        let mut lines = Vec::new();
        let mut question = None;
        let mut section: Option<(String, Vec<String>)> = None;
        for raw in block.lines() {
            let line = raw.split_whitespace().collect::<Vec<_>>().join(" ");
            if line.is_empty() {
                continue;
            }
            if line.starts_with(";; ->>HEADER<<-") {
                // The id differs per query; everything else in the line must be equal.
                let kept: Vec<&str> = line.split(", ").filter(|p| !p.starts_with("id:")).collect();
                lines.push(kept.join(", "));
            } else if line.ends_with("SECTION:") || line.ends_with("PSEUDOSECTION:") {
                if let Some((name, mut rrs)) = section.take() {
                    rrs.sort();
                    lines.push(name);
                    lines.extend(rrs);
                }
                section = Some((line, Vec::new()));
            } else if let Some((name, rrs)) = section.as_mut() {
                if name == ";; QUESTION SECTION:" {
                    question = Some(line.clone());
                }
                rrs.push(line);
            } else {
                lines.push(line);
            }
        }
        if let Some((name, mut rrs)) = section.take() {
            rrs.sort();
            lines.push(name);
            lines.extend(rrs);
        }
        let question = question.context("a dig answer without a question section")?;
        map.insert(question, DigResponse { lines });
    }
    Ok(map)
}

/// A TSIG key for `dig -y`.
#[derive(Debug, Clone)]
pub struct TsigKeySpec {
    /// Algorithm (`hmac-sha256`).
    pub algorithm: String,
    /// Key name.
    pub name: String,
    /// Base64 secret.
    pub secret: String,
}

/// The outcome of a zone transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Axfr {
    /// The zone's records (TSIG records left out), sorted, and whether every message was
    /// signed.
    Transferred {
        /// Records, whitespace-normalised and sorted.
        records: Vec<String>,
        /// Number of TSIG records dig showed (one per message when signed).
        tsig_records: usize,
    },
    /// dig reported a failure; its words.
    Failed(String),
}

/// AXFR of `zone` over TCP, signed with `key` when given (dig checks the signature of every
/// response message with the same key).
pub fn axfr(server: SocketAddr, zone: &str, key: Option<&TsigKeySpec>) -> Result<Axfr> {
    let mut c = Command::new("dig");
    c.arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string()])
        .args(["+norec", "+nocookie", "+time=5", "+tries=1"])
        .args([zone, "AXFR"]);
    if let Some(k) = key {
        c.arg("-y")
            .arg(format!("{}:{}:{}", k.algorithm, k.name, k.secret));
    }
    let out = c.output().context("running dig AXFR")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if let Some(failure) = text
        .lines()
        .find(|l| l.contains("Transfer failed") || l.contains("failed:"))
    {
        return Ok(Axfr::Failed(failure.to_string()));
    }
    let mut records = Vec::new();
    let mut tsig_records = 0;
    for raw in text.lines() {
        if raw.starts_with(';') || raw.trim().is_empty() {
            continue;
        }
        let line = raw.split_whitespace().collect::<Vec<_>>().join(" ");
        if line.split(' ').nth(3) == Some("TSIG") {
            tsig_records += 1;
        } else {
            records.push(line);
        }
    }
    if records.is_empty() {
        return Ok(Axfr::Failed(format!(
            "no records; dig said: {}",
            text.trim()
        )));
    }
    records.sort();
    Ok(Axfr::Transferred {
        records,
        tsig_records,
    })
}
