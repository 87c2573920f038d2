//! Keeps the record store current from the region's replica: a full load in one
//! REPEATABLE READ snapshot, then tailing `dns_changes` by xid8 visibility, reloading the
//! changed names under each new snapshot. Reconnects with backoff and reloads in full.
//!
//! Each poll reads the position and the current snapshot; changes are read again when
//! either moved. The snapshot matters on a primary: a commit writes its WAL record before
//! it becomes visible, so a read may see the position past a commit whose rows it cannot
//! see yet, and the position may then stay put (an idle server). On a primary every
//! transaction that ends changes the snapshot (`xmax` or the in-progress list), so no
//! commit waits for unrelated traffic to be picked up. On a standby the snapshot's
//! in-progress list is always empty (PostgreSQL keeps running xids in the subxip list in
//! recovery), but there the replay position moves with every replayed commit, and a commit
//! is visible before the position passes it, so the position is what confirms it.
//!
//! Long because the load and the tail share one connection loop and must be read together
//! (a reload replaces the tail's position); the tests are a small part.

use crate::config::Config;
use crate::metrics::Metrics;
use crate::purge::Batch;
use crate::store::{Domain, Record, RegionState, Snapshot, Store, TsigKey, ZoneSettings, Zones};
use anyhow::{anyhow, Context, Result};
use futures_util::{pin_mut, TryStreamExt};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_postgres::{Client, IsolationLevel, NoTls};

/// Parses a PostgreSQL LSN (`16/B374D848`) into a byte position ([`nearhop_wire::Lsn`]'s rule).
pub fn parse_lsn(s: &str) -> Option<u64> {
    s.parse::<nearhop_wire::Lsn>()
        .ok()
        .map(nearhop_wire::Lsn::as_u64)
}

/// Formats a byte position as PostgreSQL prints an LSN ([`nearhop_wire::Lsn`]'s rule).
pub fn format_lsn(lsn: u64) -> String {
    nearhop_wire::Lsn(lsn).to_string()
}

/// The tailer: owns the database connection and writes into the store.
pub struct Tailer {
    cfg: Config,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    purge: Option<mpsc::UnboundedSender<Batch>>,
}

/// Where the tail stands between two polls.
struct Cursor {
    /// xmin of the last snapshot read; every change not yet visible then has `xid >= xmin`.
    xmin: u64,
    /// Change ids already applied with their xid, kept while `xid >= xmin`. Sent with each
    /// read as ranges, so that the server skips them: with a long-open transaction pinning
    /// xmin, the backlog since then is not read again at every poll.
    applied: BTreeMap<i64, u64>,
    /// The highest change id read so far (`None` before the first change): when the oldest
    /// change the log still holds is above the one after it, retention deleted changes this
    /// backend never read.
    high_id: Option<i64>,
    /// Whether the server was in recovery at the last poll: a standby that gets promoted
    /// stops replaying, and its position is then its own WAL write position.
    in_recovery: bool,
    /// The replay (or write) position seen at the last poll.
    seen_lsn: u64,
    /// The snapshot seen at the last poll, as text: when neither it nor the position moved,
    /// no transaction ended since and there is nothing new to read.
    seen_snapshot: String,
}

/// Changes since an xmin that are not among the applied ids (`$2`, an `int8multirange`),
/// plus the current rows of their names, the statement's own snapshot and the oldest change
/// id the log still holds, in one statement. `kind` 0: the snapshot and the oldest id; 1: a
/// change; 2: a record.
const CHANGES_SQL: &str = "WITH ch AS (SELECT id, xid, name FROM dns_changes \
       WHERE xid >= $1::text::xid8 AND NOT ($2::text::int8multirange @> id)) \
     SELECT 0::int2, (SELECT min(id) FROM dns_changes), pg_current_snapshot()::text, NULL::text, \
            NULL::text, NULL::text, NULL::int4, NULL::int4, NULL::int4 \
     UNION ALL SELECT 1::int2, id, xid::text, name::text, NULL, NULL, NULL, NULL, NULL FROM ch \
     UNION ALL SELECT 2::int2, NULL, NULL, r.name::text, r.type::text, r.content::text, r.ttl, r.prio, r.domain_id \
       FROM records r WHERE r.name IN (SELECT name FROM ch WHERE name IS NOT NULL) \
       AND NOT r.disabled AND (r.type IS NULL OR r.content IS NOT NULL)";

/// The position (replay position on a standby, WAL write position otherwise), the snapshot,
/// and whether the server is in recovery.
const POSITION_SQL: &str = "SELECT CASE WHEN pg_is_in_recovery() \
       THEN COALESCE(pg_last_wal_replay_lsn(), '0/0') ELSE pg_current_wal_lsn() END::text, \
     pg_current_snapshot()::text, pg_is_in_recovery()";

/// What a poll that read the change log found.
enum Tail {
    /// Changes applied (possibly none).
    Applied,
    /// Changes between the highest id read and the oldest id held are gone.
    Gap {
        /// Oldest change id the log holds.
        oldest: i64,
        /// Highest change id this backend read.
        high: i64,
    },
}

/// Every servable row: records, and the empty non-terminal rows (`type` NULL) that
/// `pdnsutil rectify-zone` writes.
const RECORD_COLUMNS: &str = "SELECT name, type, content, ttl, prio, domain_id FROM records \
     WHERE NOT disabled AND name IS NOT NULL AND (type IS NULL OR content IS NOT NULL)";

impl Tailer {
    /// A tailer that sends every changed name to `purge` (pdns's caches) when given.
    pub fn new(
        cfg: Config,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        purge: Option<mpsc::UnboundedSender<Batch>>,
    ) -> Tailer {
        Tailer {
            cfg,
            store,
            metrics,
            purge,
        }
    }

    /// Runs forever: connect, full load, tail; on any error keep serving what is in memory,
    /// back off and start over.
    pub async fn run(self) {
        let mut backoff = Duration::from_millis(50);
        let max = Duration::from_millis(self.cfg.reconnect_max_ms.max(50));
        let mut first = true;
        loop {
            match self.session(&mut first).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        seconds_since_contact = self.store.seconds_since_contact(),
                        "replica session ended; serving the last snapshot, reconnecting in {backoff:?}"
                    );
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(max);
            if self.store.is_loaded() && self.store.seconds_since_contact() < 1.0 {
                backoff = Duration::from_millis(50);
            }
        }
    }

    async fn session(&self, first: &mut bool) -> Result<()> {
        let (mut client, connection) = tokio_postgres::connect(&self.cfg.database_url, NoTls)
            .await
            .context("connecting to the replica")?;
        let conn_task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "replica connection closed");
            }
        });
        if !*first {
            self.metrics.reconnects.inc();
        }
        *first = false;
        let result = self.load_and_tail(&mut client).await;
        conn_task.abort();
        result
    }

    async fn load_and_tail(&self, client: &mut Client) -> Result<()> {
        let lsn_stmt = client.prepare(POSITION_SQL).await?;
        let changes_stmt = client.prepare(CHANGES_SQL).await?;
        let mut cursor = self.logged_full_load(client, &lsn_stmt).await?;
        self.refresh_side_tables(client).await;
        let mut last_refresh = Instant::now();
        let refresh_every = Duration::from_millis(self.cfg.refresh_ms.max(10));
        let mut interval = tokio::time::interval(self.cfg.poll_interval());
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let position = read_position(client, &lsn_stmt).await?;
            self.store.touch();
            if cursor.in_recovery && !position.in_recovery {
                // Promoted: from now on the position is the server's own WAL position, read
                // by the same statement; memory needs nothing else.
                self.metrics.promotions_followed.inc();
                tracing::warn!(
                    replayed_lsn = format_lsn(cursor.seen_lsn),
                    lsn = format_lsn(position.lsn),
                    "the replica was promoted; following its own commits from now on"
                );
            }
            cursor.in_recovery = position.in_recovery;
            if position.lsn != cursor.seen_lsn || position.snapshot != cursor.seen_snapshot {
                let outcome = self
                    .apply_changes(client, &changes_stmt, &mut cursor, position.lsn)
                    .await?;
                if let Tail::Gap { oldest, high } = outcome {
                    self.metrics.change_log_gaps.inc();
                    tracing::warn!(
                        oldest_retained_id = oldest,
                        last_read_id = high,
                        "the change log no longer holds changes this backend never read \
                         (deleted by retention while it was behind); loading everything again"
                    );
                    cursor = self.logged_full_load(client, &lsn_stmt).await?;
                    continue;
                }
                cursor.seen_snapshot = position.snapshot;
            }
            if last_refresh.elapsed() >= refresh_every {
                self.refresh_side_tables(client).await;
                last_refresh = Instant::now();
            }
        }
    }

    /// [`Tailer::full_load`], logged.
    async fn logged_full_load(
        &self,
        client: &mut Client,
        lsn_stmt: &tokio_postgres::Statement,
    ) -> Result<Cursor> {
        let started = Instant::now();
        let cursor = self.full_load(client, lsn_stmt).await?;
        tracing::info!(
            records = self.store.read(Zones::record_count),
            applied_lsn = format_lsn(cursor.seen_lsn),
            in_recovery = cursor.in_recovery,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "full load done"
        );
        Ok(cursor)
    }

    /// Loads every zone and record under one snapshot; the position read before it opens is
    /// the applied position.
    async fn full_load(
        &self,
        client: &mut Client,
        lsn_stmt: &tokio_postgres::Statement,
    ) -> Result<Cursor> {
        let Position {
            lsn,
            snapshot: seen_snapshot,
            in_recovery,
        } = read_position(client, lsn_stmt).await?;
        let tx = snapshot_transaction(client).await?;
        let snapshot = current_snapshot(&tx).await?;
        let xmin = snapshot.xmin;
        let domains = load_domains(&tx).await?;
        let settings = load_settings(&tx).await?;
        let stream = tx
            .query_raw(RECORD_COLUMNS, std::iter::empty::<&str>())
            .await
            .context("reading records")?;
        pin_mut!(stream);
        let mut rows = Vec::new();
        while let Some(row) = stream.try_next().await? {
            if let Some(r) = record_from_row(&row) {
                rows.push(r);
            }
        }
        let applied = visible_changes(&tx, xmin).await?;
        let high_id: Option<i64> = tx
            .query_one("SELECT max(id) FROM dns_changes", &[])
            .await
            .context("reading the newest change id")?
            .get(0);
        tx.commit().await?;
        self.store.touch();
        let zones = Zones::new(domains, rows);
        self.metrics.records.set(zones.record_count() as i64);
        self.store.set_settings(settings);
        self.store.replace_all(zones);
        self.metrics.full_loads.inc();
        // Everything may have changed while we were away: drop pdns's caches entirely, then
        // publish. The position is *reset*, not raised: after a reconnect the server may be
        // a standby that restarted at an earlier point (or another standby), and a position
        // kept from the previous session would confirm commits memory does not hold.
        self.hand_over(Batch {
            names: vec![String::new()],
            lsn,
            snapshot,
            reset: true,
        });
        Ok(Cursor {
            xmin,
            applied,
            high_id,
            in_recovery,
            seen_lsn: lsn,
            seen_snapshot,
        })
    }

    /// Reads the changes not applied yet and the current rows of their names in **one
    /// statement** (so one snapshot, taken after `lsn` was read, and one round trip: this is
    /// on the path of every change's freshness), then applies them; or finds that retention
    /// deleted changes never read, and applies nothing.
    async fn apply_changes(
        &self,
        client: &mut Client,
        stmt: &tokio_postgres::Statement,
        cursor: &mut Cursor,
        lsn: u64,
    ) -> Result<Tail> {
        let rows = client
            .query(
                stmt,
                &[&cursor.xmin.to_string(), &id_ranges(cursor.applied.keys())],
            )
            .await
            .context("reading dns_changes")?;
        let mut snapshot = None;
        let mut oldest: Option<i64> = None;
        let mut change_rows = 0u64;
        let mut fresh: Vec<(i64, u64)> = Vec::new();
        let mut names: BTreeSet<String> = BTreeSet::new();
        let mut zone_list_changed = false;
        let mut by_name: HashMap<String, Vec<Record>> = HashMap::new();
        for row in &rows {
            let kind: i16 = row.get(0);
            match kind {
                0 => {
                    oldest = row.get(1);
                    let text: Option<&str> = row.get(2);
                    snapshot = text.and_then(Snapshot::parse);
                }
                1 => {
                    change_rows += 1;
                    let id: i64 = row.get(1);
                    if cursor.applied.contains_key(&id) {
                        continue;
                    }
                    let xid: Option<&str> = row.get(2);
                    // An unparsable xid (never seen) is kept as 0: pruned at once, so at worst
                    // the change is applied again, which is harmless.
                    fresh.push((id, xid.and_then(|x| x.parse().ok()).unwrap_or(0)));
                    match row.get::<_, Option<String>>(3) {
                        Some(n) => {
                            names.insert(n);
                        }
                        None => zone_list_changed = true,
                    }
                }
                _ => {
                    if let Some((n, r)) = record_from_columns(row, 3) {
                        by_name.entry(n).or_default().push(r);
                    }
                }
            }
        }
        self.metrics.change_rows_read.inc_by(change_rows);
        let snapshot =
            snapshot.ok_or_else(|| anyhow!("change query returned no parsable snapshot"))?;
        // Every change id above the highest one read was either not visible yet (it will be
        // read) or is gone: when the oldest id the log holds is above the next one, the ids
        // between were deleted, or never committed (a rolled-back writer). Memory cannot tell
        // which, so it reloads: a rare full load is the price of never serving a lost change.
        if let (Some(high), Some(oldest)) = (cursor.high_id, oldest) {
            if oldest > high.saturating_add(1) {
                return Ok(Tail::Gap { oldest, high });
            }
        }
        let new_xmin = snapshot.xmin;
        // Rare: a zone was added, changed or removed, or its metadata or a TSIG key changed.
        // Read later than the snapshot above, which only makes it newer; zone rows carry no
        // records of their own.
        let (domains, settings) = if zone_list_changed {
            let tx = snapshot_transaction(client).await?;
            let d = load_domains(&tx).await?;
            let s = load_settings(&tx).await?;
            tx.commit().await?;
            (Some(d), Some(s))
        } else {
            (None, None)
        };
        self.store.touch();
        if let Some(s) = settings {
            self.store.set_settings(s);
        }
        // Ancestors that became or stopped being empty non-terminals answer differently now:
        // purged with the changed names.
        let mut flipped: Vec<String> = Vec::new();
        if domains.is_some() || !names.is_empty() {
            let count = self.store.write(|zones| {
                if let Some(d) = domains {
                    zones.set_domains(d);
                }
                for n in &names {
                    flipped.extend(zones.replace_name(n, by_name.remove(n).unwrap_or_default()));
                }
                zones.record_count()
            });
            self.metrics.records.set(count as i64);
            self.metrics.changes_applied.inc_by(names.len() as u64);
            tracing::debug!(names = names.len(), zone_list_changed, "applied changes");
        }
        self.hand_over(Batch {
            names: names.into_iter().chain(flipped).collect(),
            lsn,
            snapshot,
            reset: false,
        });
        for (id, xid) in fresh {
            cursor.high_id = cursor.high_id.max(Some(id));
            cursor.applied.insert(id, xid);
        }
        cursor.applied.retain(|_, xid| *xid >= new_xmin);
        cursor.xmin = new_xmin;
        cursor.seen_lsn = lsn;
        Ok(Tail::Applied)
    }

    /// Passes an applied batch to the purger, which publishes its position once its names
    /// are out of pdns's caches (every position goes through it, so positions stay in
    /// order); without a purger, or once it is gone, publishes at once.
    fn hand_over(&self, batch: Batch) {
        let batch = match &self.purge {
            Some(p) => match p.send(batch) {
                Ok(()) => return,
                Err(mpsc::error::SendError(batch)) => batch,
            },
            None => batch,
        };
        batch.publish(&self.store, &self.metrics);
    }

    /// Regions and edge heartbeats: small tables without change log, re-read periodically.
    /// Failures are logged and leave the previous state in place.
    async fn refresh_side_tables(&self, client: &Client) {
        let regions = client
            .query(
                "SELECT r.name, host(r.ipv4), host(r.ipv6), \
                 EXTRACT(EPOCH FROM (now() - max(e.last_heartbeat) FILTER (WHERE NOT e.draining)))::float8 \
                 FROM regions r LEFT JOIN edges e ON e.region = r.name \
                 GROUP BY r.name, r.ipv4, r.ipv6 ORDER BY r.name",
                &[],
            )
            .await;
        match regions {
            Ok(rows) => {
                let now = Instant::now();
                let states = rows
                    .iter()
                    .map(|row| RegionState {
                        name: row.get(0),
                        ipv4: row.get(1),
                        ipv6: row.get(2),
                        heartbeat_age_secs: row.get(3),
                        read_at: now,
                    })
                    .collect();
                self.store.set_regions(states);
            }
            Err(e) => tracing::debug!(error = %e, "reading regions and edges"),
        }
    }
}

/// A read-only transaction whose statements all read one snapshot.
async fn snapshot_transaction(client: &mut Client) -> Result<tokio_postgres::Transaction<'_>> {
    Ok(client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}

/// What one poll of the server's position says.
struct Position {
    /// Replay position in recovery, else the WAL write position.
    lsn: u64,
    /// The snapshot, as text (only compared).
    snapshot: String,
    /// Whether the server is a standby now.
    in_recovery: bool,
}

/// The position and the snapshot now; recovery is asked every time, so that a standby
/// promoted under a running session is followed (its replay position stops for good).
async fn read_position(client: &Client, stmt: &tokio_postgres::Statement) -> Result<Position> {
    let row = client.query_one(stmt, &[]).await?;
    let text: Option<String> = row.get(0);
    let text = text.unwrap_or_else(|| "0/0".into());
    let lsn = parse_lsn(&text).ok_or_else(|| anyhow!("unparsable LSN {text:?}"))?;
    Ok(Position {
        lsn,
        snapshot: row.get(1),
        in_recovery: row.get(2),
    })
}

/// Sorted change ids as an `int8multirange` literal of their runs: `{[1,4),[7,8)}`.
fn id_ranges<'a>(ids: impl Iterator<Item = &'a i64>) -> String {
    let mut out = String::from("{");
    let mut run: Option<(i64, i64)> = None;
    let close = |out: &mut String, (lo, hi): (i64, i64)| {
        if out.len() > 1 {
            out.push(',');
        }
        let _ = write!(out, "[{lo},{})", hi.saturating_add(1));
    };
    for &id in ids {
        run = match run {
            Some((lo, hi)) if id == hi.saturating_add(1) => Some((lo, id)),
            Some(r) => {
                close(&mut out, r);
                Some((id, id))
            }
            None => Some((id, id)),
        };
    }
    if let Some(r) = run {
        close(&mut out, r);
    }
    out.push('}');
    out
}

async fn current_snapshot(tx: &tokio_postgres::Transaction<'_>) -> Result<Snapshot> {
    let row = tx
        .query_one("SELECT pg_current_snapshot()::text", &[])
        .await?;
    let text: String = row.get(0);
    Snapshot::parse(&text).with_context(|| format!("unparsable snapshot {text:?}"))
}

async fn visible_changes(
    tx: &tokio_postgres::Transaction<'_>,
    xmin: u64,
) -> Result<BTreeMap<i64, u64>> {
    let rows = tx
        .query(
            "SELECT id, xid::text FROM dns_changes WHERE xid >= $1::text::xid8",
            &[&xmin.to_string()],
        )
        .await
        .context("reading dns_changes")?;
    Ok(rows
        .iter()
        .map(|r| {
            let xid: Option<&str> = r.get(1);
            (r.get(0), xid.and_then(|x| x.parse().ok()).unwrap_or(0))
        })
        .collect())
}

async fn load_domains(tx: &tokio_postgres::Transaction<'_>) -> Result<Vec<Domain>> {
    let rows = tx
        .query(
            "SELECT id, name, type, notified_serial, last_check, master FROM domains",
            &[],
        )
        .await
        .context("reading domains")?;
    Ok(rows
        .iter()
        .map(|r| {
            let master: Option<String> = r.get(5);
            Domain {
                id: r.get(0),
                name: r.get(1),
                kind: r.get(2),
                notified_serial: r.get(3),
                last_check: r.get(4),
                masters: master
                    .map(|m| {
                        m.split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty())
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect())
}

/// Domain metadata and TSIG keys (see [`ZoneSettings`]).
async fn load_settings(tx: &tokio_postgres::Transaction<'_>) -> Result<ZoneSettings> {
    let meta = tx
        .query(
            "SELECT d.name, m.kind, m.content FROM domainmetadata m \
             JOIN domains d ON d.id = m.domain_id \
             WHERE m.kind IS NOT NULL AND m.content IS NOT NULL ORDER BY m.id",
            &[],
        )
        .await
        .context("reading domainmetadata")?;
    let mut metadata: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for row in meta {
        metadata
            .entry(row.get(0))
            .or_default()
            .push((row.get(1), row.get(2)));
    }
    let keys = tx
        .query(
            "SELECT name, algorithm, secret FROM tsigkeys \
             WHERE name IS NOT NULL AND algorithm IS NOT NULL AND secret IS NOT NULL ORDER BY id",
            &[],
        )
        .await
        .context("reading tsigkeys")?;
    let tsig_keys = keys
        .iter()
        .map(|row| TsigKey {
            name: row.get::<_, String>(0).trim_end_matches('.').to_string(),
            algorithm: row.get(1),
            secret: row.get(2),
        })
        .collect();
    Ok(ZoneSettings {
        metadata,
        tsig_keys,
    })
}

/// One `records` row as `(name, record)`; `None` for rows that cannot be served (no zone).
fn record_from_row(row: &tokio_postgres::Row) -> Option<(String, Record)> {
    record_from_columns(row, 0)
}

/// Like [`record_from_row`] for the columns `name, type, content, ttl, prio, domain_id`
/// starting at `at`.
fn record_from_columns(row: &tokio_postgres::Row, at: usize) -> Option<(String, Record)> {
    let name: String = row.get::<_, Option<String>>(at)?;
    // A row without a type is an empty non-terminal marker (`pdnsutil rectify-zone`): it is
    // served as a record of type "" without content, as gpgsql hands it to pdns.
    let qtype: String = row.get::<_, Option<String>>(at + 1).unwrap_or_default();
    let content: String = match row.get::<_, Option<String>>(at + 2) {
        Some(c) => c,
        None if qtype.is_empty() => String::new(),
        None => return None,
    };
    let ttl: Option<i32> = row.get(at + 3);
    let prio: Option<i32> = row.get(at + 4);
    let domain_id: Option<i32> = row.get(at + 5);
    let qtype = qtype.to_ascii_uppercase();
    let content = match (qtype.as_str(), prio) {
        ("MX" | "SRV", Some(p)) => format!("{p} {content}"),
        _ => content,
    };
    Some((
        name,
        Record {
            qtype: qtype.into_boxed_str(),
            content: content.into_boxed_str(),
            ttl: ttl.unwrap_or(0),
            domain_id: domain_id?,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_through_text() {
        assert_eq!(parse_lsn("0/3000060"), Some(0x3000060));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374D848));
        assert_eq!(format_lsn(0x3000060), "0/3000060");
        assert_eq!(parse_lsn(&format_lsn(u64::MAX)), Some(u64::MAX));
    }

    #[test]
    fn applied_ids_are_sent_as_runs() {
        let ids = [1i64, 2, 3, 7, 9, 10];
        assert_eq!(id_ranges(ids.iter()), "{[1,4),[7,8),[9,11)}");
        assert_eq!(id_ranges([].iter()), "{}");
        assert_eq!(id_ranges([5i64].iter()), "{[5,6)}");
    }

    #[test]
    fn malformed_lsns_are_refused() {
        for s in ["", "0", "/1", "1/", "x/1", "123456789/0", "0/1/2"] {
            assert_eq!(parse_lsn(s), None, "{s}");
        }
    }
}
