//! Control's Prometheus metrics, served on `/metrics`.

use prometheus::{
    exponential_buckets, CounterVec, Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, Opts,
    Registry, TextEncoder,
};

/// Every metric control exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Time from the create request to the answer, including the lag-race wait.
    pub setup_seconds: HistogramVec,
    /// Tunnel setups by zone and result (`ok` or the error code).
    pub setups_total: CounterVec,
    /// Live tunnels by zone and region.
    pub tunnels_live: GaugeVec,
    /// Tunnels closed, by reason.
    pub tunnels_closed_total: CounterVec,
    /// Bytes of WAL the replica has not replayed yet (`pg_stat_replication` on the primary).
    pub replica_lag_bytes: GaugeVec,
    /// `replay_lag` of `pg_stat_replication`, seconds.
    pub replica_replay_lag_seconds: GaugeVec,
    /// 1 when the replica streams from the primary, else 0.
    pub replica_connected: GaugeVec,
    /// Time the lag-race wait spent on a region.
    pub lag_wait_seconds: HistogramVec,
    /// Lag-race waits that ended without the region confirming.
    pub lag_wait_timeouts_total: CounterVec,
    /// Calls to edges' admin APIs by call and result.
    pub edge_calls_total: CounterVec,
    /// Setups refused by a plan or source limit, by limit.
    pub limit_refusals_total: CounterVec,
    /// ACME orders by kind (`zone`, `custom_domain`) and result (`ok`, `error`).
    pub acme_orders_total: CounterVec,
    /// When each certificate in service expires, by subject and names.
    pub certificate_expiry: GaugeVec,
    /// Failed attempts in a row per certificate (0 after a success).
    pub certificate_failures: GaugeVec,
    /// The edges' certificates generation.
    pub certificates_generation: Gauge,
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        // The conventional `process_*` series (resident memory, CPU seconds, open file
        // descriptors and their limit, start time), read from /proc at each scrape.
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let setup_seconds = HistogramVec::new(
            HistogramOpts::new(
                "nearhop_control_tunnel_setup_seconds",
                "Time from a create-tunnel request to its answer, lag-race wait included",
            )
            .buckets(exponential_buckets(0.0005, 2.0, 16)?),
            &["zone"],
        )?;
        let setups_total = CounterVec::new(
            Opts::new(
                "nearhop_control_tunnel_setups_total",
                "Tunnel setups by result",
            ),
            &["zone", "result"],
        )?;
        let tunnels_live = GaugeVec::new(
            Opts::new("nearhop_control_tunnels_live", "Live tunnels"),
            &["zone", "region"],
        )?;
        let tunnels_closed_total = CounterVec::new(
            Opts::new(
                "nearhop_control_tunnels_closed_total",
                "Tunnels closed by reason",
            ),
            &["reason"],
        )?;
        let replica_lag_bytes = GaugeVec::new(
            Opts::new(
                "nearhop_replica_lag_bytes",
                "WAL bytes written on the primary and not yet replayed by the replica",
            ),
            &["region"],
        )?;
        let replica_replay_lag_seconds = GaugeVec::new(
            Opts::new(
                "nearhop_replica_replay_lag_seconds",
                "replay_lag of the replica as reported by pg_stat_replication",
            ),
            &["region"],
        )?;
        let replica_connected = GaugeVec::new(
            Opts::new(
                "nearhop_replica_connected",
                "1 when the region's replica streams from the primary",
            ),
            &["region"],
        )?;
        let lag_wait_seconds = HistogramVec::new(
            HistogramOpts::new(
                "nearhop_lag_wait_seconds",
                "Time spent waiting for a region's DNS to serve a new commit",
            )
            .buckets(exponential_buckets(0.0002, 2.0, 16)?),
            &["region"],
        )?;
        let lag_wait_timeouts_total = CounterVec::new(
            Opts::new(
                "nearhop_lag_wait_timeouts_total",
                "Lag-race waits that ended before the region confirmed",
            ),
            &["region"],
        )?;
        let edge_calls_total = CounterVec::new(
            Opts::new(
                "nearhop_control_edge_calls_total",
                "Calls to edge admin APIs",
            ),
            &["call", "result"],
        )?;
        let limit_refusals_total = CounterVec::new(
            Opts::new(
                "nearhop_control_limit_refusals_total",
                "Tunnel setups refused by a limit (live_tunnels, names, creation_rate, \
                 anonymous_per_source)",
            ),
            &["limit"],
        )?;
        let acme_orders_total = CounterVec::new(
            Opts::new(
                "nearhop_control_acme_orders_total",
                "ACME certificate orders by kind (zone, custom_domain) and result (ok, error)",
            ),
            &["kind", "result"],
        )?;
        let certificate_expiry = GaugeVec::new(
            Opts::new(
                "nearhop_control_certificate_expiry_timestamp_seconds",
                "When the certificate in service for a zone or custom domain expires (Unix time)",
            ),
            &["subject", "names"],
        )?;
        let certificate_failures = GaugeVec::new(
            Opts::new(
                "nearhop_control_certificate_failures",
                "Failed ACME attempts in a row for a certificate (0 after a success)",
            ),
            &["subject"],
        )?;
        let certificates_generation = Gauge::new(
            "nearhop_control_certificates_generation",
            "The certificates generation edges are told (changes with the set in service)",
        )?;
        registry.register(Box::new(acme_orders_total.clone()))?;
        registry.register(Box::new(certificate_expiry.clone()))?;
        registry.register(Box::new(certificate_failures.clone()))?;
        registry.register(Box::new(certificates_generation.clone()))?;
        registry.register(Box::new(limit_refusals_total.clone()))?;
        registry.register(Box::new(setup_seconds.clone()))?;
        registry.register(Box::new(setups_total.clone()))?;
        registry.register(Box::new(tunnels_live.clone()))?;
        registry.register(Box::new(tunnels_closed_total.clone()))?;
        registry.register(Box::new(replica_lag_bytes.clone()))?;
        registry.register(Box::new(replica_replay_lag_seconds.clone()))?;
        registry.register(Box::new(replica_connected.clone()))?;
        registry.register(Box::new(lag_wait_seconds.clone()))?;
        registry.register(Box::new(lag_wait_timeouts_total.clone()))?;
        registry.register(Box::new(edge_calls_total.clone()))?;
        Ok(Metrics {
            registry,
            setup_seconds,
            setups_total,
            tunnels_live,
            tunnels_closed_total,
            replica_lag_bytes,
            replica_replay_lag_seconds,
            replica_connected,
            lag_wait_seconds,
            lag_wait_timeouts_total,
            edge_calls_total,
            limit_refusals_total,
            acme_orders_total,
            certificate_expiry,
            certificate_failures,
            certificates_generation,
        })
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}
