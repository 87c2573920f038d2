//! Prometheus metrics of the backend: calls by method and result, lookup latency, records in
//! memory, applied position, staleness, reconnects and purges.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// The backend's metrics, registered in their own registry.
pub struct Metrics {
    registry: Registry,
    /// The conventional `process_*` series (resident memory, CPU seconds, open file
    /// descriptors and their limit), in a registry without the `nearhop_pdns_backend_`
    /// prefix so that they carry their usual names.
    process: Registry,
    /// Calls by method and result (`ok`, `empty`, `false`, `error`).
    pub calls: IntCounterVec,
    /// Time spent answering a call, by method.
    pub call_seconds: HistogramVec,
    /// Records in memory.
    pub records: IntGauge,
    /// Applied replica position, in bytes of WAL.
    pub applied_lsn: IntGauge,
    /// Seconds since the replica last answered.
    pub seconds_since_contact: Gauge,
    /// Connections (re)established to the replica after the first.
    pub reconnects: IntCounter,
    /// Full loads completed.
    pub full_loads: IntCounter,
    /// Changed names applied from the change log.
    pub changes_applied: IntCounter,
    /// `dns_changes` rows read while tailing (applied ones are skipped by the server).
    pub change_rows_read: IntCounter,
    /// Gaps found in the change log (changes deleted before they were read), each followed
    /// by a full load.
    pub change_log_gaps: IntCounter,
    /// Promotions of the replica followed under a running session.
    pub promotions_followed: IntCounter,
    /// Purge requests sent to pdns, by result.
    pub purges: IntCounterVec,
    /// Requests that were refused as malformed, by transport.
    pub bad_requests: IntCounterVec,
    /// Lookups of names without records answered with the nearest edge, by zone.
    pub unknown_name_answers: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry =
            Registry::new_custom(Some("nearhop_pdns_backend".into()), None).unwrap_or_default();
        let calls = IntCounterVec::new(
            Opts::new("calls_total", "remote backend calls by method and result"),
            &["method", "result"],
        )
        .expect("valid metric");
        let call_seconds = HistogramVec::new(
            HistogramOpts::new("call_seconds", "time to answer a remote backend call").buckets(
                vec![
                    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001,
                    0.005, 0.025,
                ],
            ),
            &["method"],
        )
        .expect("valid metric");
        let records = IntGauge::new("records", "records in memory").expect("valid metric");
        let applied_lsn = IntGauge::new(
            "applied_lsn_bytes",
            "replica WAL position whose commits are all in memory",
        )
        .expect("valid metric");
        let seconds_since_contact = Gauge::new(
            "seconds_since_contact",
            "seconds since the replica last answered (staleness while it is away)",
        )
        .expect("valid metric");
        let reconnects =
            IntCounter::new("replica_reconnects_total", "reconnections to the replica")
                .expect("valid metric");
        let full_loads =
            IntCounter::new("full_loads_total", "full loads of the zones").expect("valid metric");
        let changes_applied = IntCounter::new(
            "changes_applied_total",
            "changed names reloaded from the change log",
        )
        .expect("valid metric");
        let change_rows_read = IntCounter::new(
            "change_rows_read_total",
            "dns_changes rows read while tailing the change log",
        )
        .expect("valid metric");
        let change_log_gaps = IntCounter::new(
            "change_log_gaps_total",
            "changes deleted from the change log before this backend read them; each one \
             causes a full load",
        )
        .expect("valid metric");
        let promotions_followed = IntCounter::new(
            "promotions_followed_total",
            "promotions of the replica followed without reconnecting",
        )
        .expect("valid metric");
        let purges = IntCounterVec::new(
            Opts::new(
                "pdns_purges_total",
                "purge commands sent to pdns's control socket",
            ),
            &["result"],
        )
        .expect("valid metric");
        let bad_requests = IntCounterVec::new(
            Opts::new("bad_requests_total", "malformed requests by transport"),
            &["transport"],
        )
        .expect("valid metric");
        let unknown_name_answers = IntCounterVec::new(
            Opts::new(
                "unknown_name_answers_total",
                "lookups of names without records answered with the nearest edge, by zone",
            ),
            &["zone"],
        )
        .expect("valid metric");
        let m = Metrics {
            registry,
            process: process_registry(),
            calls,
            call_seconds,
            records,
            applied_lsn,
            seconds_since_contact,
            reconnects,
            full_loads,
            changes_applied,
            change_rows_read,
            change_log_gaps,
            promotions_followed,
            purges,
            bad_requests,
            unknown_name_answers,
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(m.calls.clone()),
            Box::new(m.call_seconds.clone()),
            Box::new(m.records.clone()),
            Box::new(m.applied_lsn.clone()),
            Box::new(m.seconds_since_contact.clone()),
            Box::new(m.reconnects.clone()),
            Box::new(m.full_loads.clone()),
            Box::new(m.changes_applied.clone()),
            Box::new(m.change_rows_read.clone()),
            Box::new(m.change_log_gaps.clone()),
            Box::new(m.promotions_followed.clone()),
            Box::new(m.purges.clone()),
            Box::new(m.bad_requests.clone()),
            Box::new(m.unknown_name_answers.clone()),
        ];
        for c in collectors {
            // Names are fixed and distinct, so registration cannot collide.
            let _ = m.registry.register(c);
        }
        m
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        let _ = TextEncoder::new().encode(&families, &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// A registry holding the collector of this process's `process_*` series (on Linux).
fn process_registry() -> Registry {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    {
        let collector = prometheus::process_collector::ProcessCollector::for_self();
        // A fresh registry holds nothing the collector could collide with.
        let _ = registry.register(Box::new(collector));
    }
    registry
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
