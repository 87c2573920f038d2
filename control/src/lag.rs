//! The lag race: after a commit on the primary, wait until the waited regions' DNS serves it.
//!
//! A region with pdns-backends is asked directly (`GET /v1/wait`), every backend of it (one
//! per name server: a resolver may ask any of them first): a backend's applied position
//! covers both hops, replica replay and the backend's memory. A region without one is
//! watched through `replay_lsn` in `pg_stat_replication` on the primary. The primary's own
//! region confirms at once when it has no backend. Every region is waited for in parallel,
//! each bounded by the same deadline; a region that does not confirm is logged, counted and
//! reported, never silently dropped.

use crate::config::RegionConfig;
use crate::db::{self, PgPool};
use crate::metrics::Metrics;
use diesel::sql_types::{Bool, Double, Nullable, Text};
use diesel::{sql_query, QueryableByName, RunQueryDsl};
use nearhop_wire::{DnsPropagation, Lsn, WaitAnswer, WaitQuery};
use std::time::{Duration, Instant};

/// Waits for regions to serve a commit.
#[derive(Clone)]
pub struct LagWaiter {
    http: reqwest::Client,
    pool: PgPool,
    regions: Vec<RegionConfig>,
    primary_region: String,
    bound: Duration,
    metrics: Metrics,
}

#[derive(QueryableByName)]
struct ReplayRow {
    #[diesel(sql_type = Text)]
    application_name: String,
    #[diesel(sql_type = Bool)]
    reached: bool,
}

#[derive(QueryableByName)]
struct LagRow {
    #[diesel(sql_type = Nullable<Text>)]
    application_name: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    slot_name: Option<String>,
    #[diesel(sql_type = Nullable<Double>)]
    lag_bytes: Option<f64>,
    #[diesel(sql_type = Nullable<Double>)]
    replay_lag: Option<f64>,
    #[diesel(sql_type = Bool)]
    connected: bool,
}

/// How often a replica's `replay_lsn` is polled while waiting. The walreceiver reports
/// replay progress right after applying a record, so the poll interval bounds the added wait.
const REPLAY_POLL: Duration = Duration::from_millis(2);

impl LagWaiter {
    /// A waiter for `regions` (the waited ones), bounded by `bound`.
    pub fn new(
        pool: PgPool,
        regions: Vec<RegionConfig>,
        primary_region: String,
        bound: Duration,
        metrics: Metrics,
    ) -> anyhow::Result<LagWaiter> {
        let http = reqwest::Client::builder()
            .timeout(bound + Duration::from_millis(500))
            .pool_max_idle_per_host(32)
            .build()?;
        Ok(LagWaiter {
            http,
            pool,
            regions,
            primary_region,
            bound,
            metrics,
        })
    }

    /// Whether the wait is on at all.
    pub fn enabled(&self) -> bool {
        !self.bound.is_zero() && !self.regions.is_empty()
    }

    /// Waits until every waited region serves `commit_lsn`, or the bound passes.
    pub async fn wait(&self, commit_lsn: Lsn, commit_xid: u64) -> DnsPropagation {
        let started = Instant::now();
        let mut out = DnsPropagation {
            commit_lsn,
            ..Default::default()
        };
        if !self.enabled() {
            return out;
        }
        let deadline = started + self.bound;
        let waits = self.regions.iter().map(|r| {
            let r = r.clone();
            async move {
                let t0 = Instant::now();
                let ok = self.wait_region(&r, commit_lsn, commit_xid, deadline).await;
                self.metrics
                    .lag_wait_seconds
                    .with_label_values(&[&r.name])
                    .observe(t0.elapsed().as_secs_f64());
                (r.name, ok)
            }
        });
        for (region, ok) in futures::future::join_all(waits).await {
            if ok {
                out.confirmed.push(region);
            } else {
                tracing::warn!(
                    %region,
                    %commit_lsn,
                    bound_ms = self.bound.as_millis() as u64,
                    "region did not confirm the commit within the lag-race bound"
                );
                self.metrics
                    .lag_wait_timeouts_total
                    .with_label_values(&[&region])
                    .inc();
                out.unconfirmed.push(region);
            }
        }
        out.wait_ms = started.elapsed().as_millis() as u64;
        out
    }

    async fn wait_region(
        &self,
        region: &RegionConfig,
        lsn: Lsn,
        xid: u64,
        deadline: Instant,
    ) -> bool {
        if !region.backend_url.is_empty() {
            // Every name server of the region: a resolver may ask any of them first.
            let waits = region.backend_url.iter().map(|url| async move {
                let ok = self.wait_backend(url, lsn, xid, deadline).await;
                if !ok {
                    tracing::warn!(region = %region.name, backend = %url, %lsn,
                        "pdns-backend did not confirm the commit within the lag-race bound");
                }
                ok
            });
            let confirmed = futures::future::join_all(waits).await;
            return confirmed.into_iter().all(|ok| ok);
        }
        if region.name == self.primary_region {
            return true;
        }
        self.wait_replica(&region.name, lsn, deadline).await
    }

    async fn wait_backend(&self, base: &str, lsn: Lsn, xid: u64, deadline: Instant) -> bool {
        let url = format!("{}/v1/wait", base.trim_end_matches('/'));
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let res = self
                .http
                .get(&url)
                .query(&WaitQuery {
                    lsn,
                    xid: Some(xid),
                    timeout_ms: left.as_millis() as u64,
                })
                .timeout(left + Duration::from_millis(200))
                .send()
                .await;
            match res {
                Ok(r) if r.status().is_success() => match r.json::<WaitAnswer>().await {
                    Ok(a) if a.reached => return true,
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "bad wait answer from backend"),
                },
                Ok(r) => tracing::debug!(status = %r.status(), url, "backend wait refused"),
                Err(e) => tracing::debug!(error = %e, url, "backend unreachable"),
            }
            tokio::time::sleep(Duration::from_millis(20).min(left)).await;
        }
    }

    async fn wait_replica(&self, region: &str, lsn: Lsn, deadline: Instant) -> bool {
        loop {
            let pool = self.pool.clone();
            let lsn_owned = lsn.to_string();
            let rows = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<ReplayRow>> {
                let mut conn = db::conn(&pool).map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok(sql_query(
                    "SELECT application_name::text AS application_name, \
                     COALESCE(replay_lsn >= $1::pg_lsn, false) AS reached \
                     FROM pg_stat_replication",
                )
                .bind::<Text, _>(lsn_owned)
                .load(&mut conn)?)
            })
            .await;
            if let Ok(Ok(rows)) = rows {
                if rows
                    .iter()
                    .any(|r| r.application_name == region && r.reached)
                {
                    return true;
                }
            }
            if Instant::now() + REPLAY_POLL >= deadline {
                return false;
            }
            tokio::time::sleep(REPLAY_POLL).await;
        }
    }

    /// Refreshes the replica-lag gauges. Replicas are found by their replication slot
    /// (`replica_<region>`, see docs/operations.md) joined with `pg_stat_replication`
    /// (`application_name` = region), so a replica that stopped streaming still shows its
    /// growing lag (from the slot's `restart_lsn`) and `nearhop_replica_connected 0`.
    pub fn refresh_lag_metrics(&self, all_regions: &[RegionConfig]) {
        let Ok(mut conn) = db::conn(&self.pool) else {
            return;
        };
        let rows: Vec<LagRow> = match sql_query(
            "SELECT r.application_name::text AS application_name, s.slot_name::text AS slot_name, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), COALESCE(r.replay_lsn, s.restart_lsn))::float8 \
               AS lag_bytes, \
             EXTRACT(epoch FROM r.replay_lag)::float8 AS replay_lag, \
             (r.pid IS NOT NULL) AS connected \
             FROM pg_replication_slots s \
             FULL JOIN pg_stat_replication r ON r.pid = s.active_pid \
             WHERE s.slot_name IS NULL OR s.slot_name LIKE 'replica\\_%'",
        )
        .load(&mut conn)
        {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "reading replication state");
                return;
            }
        };
        for r in all_regions.iter().filter(|r| r.name != self.primary_region) {
            // Streaming replicas by application name; a stopped one by its slot, whose name
            // cannot hold `-` (`replica_eu_west` for region `eu-west`).
            let slot = nearhop_wire::replica_slot_name(&r.name);
            let row = rows
                .iter()
                .find(|row| row.application_name.as_deref() == Some(r.name.as_str()))
                .or_else(|| {
                    rows.iter()
                        .find(|row| row.slot_name.as_deref() == Some(slot.as_str()))
                });
            let connected = row.map(|row| row.connected).unwrap_or(false);
            self.metrics
                .replica_connected
                .with_label_values(&[&r.name])
                .set(if connected { 1.0 } else { 0.0 });
            if let Some(row) = row {
                self.metrics
                    .replica_lag_bytes
                    .with_label_values(&[&r.name])
                    .set(row.lag_bytes.unwrap_or(0.0));
                self.metrics
                    .replica_replay_lag_seconds
                    .with_label_values(&[&r.name])
                    .set(row.replay_lag.unwrap_or(0.0));
            }
        }
    }
}
