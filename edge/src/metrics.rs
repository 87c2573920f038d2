//! Prometheus metrics of the edge, served on the admin port at `/metrics`.

use prometheus::{
    Counter, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every `cause` of `nearhop_edge_relay_errors_total` (docs/edge.md, "Metrics").
pub const RELAY_ERROR_CAUSES: [&str; 14] = [
    "peer_unreachable",
    "channel_refused",
    "open_timeout",
    "peer_busy",
    "tunnel_busy",
    "request_failed",
    "request_resent",
    "peer_not_trusted",
    "peer_not_listed",
    "bad_relay_request",
    "credit_exceeded",
    "announce_timeout",
    "mesh_auth_timeout",
    "mesh_unauthenticated_full",
];

/// Every metric the edge exports.
pub struct Metrics {
    registry: Registry,
    /// Live tunnels by zone and kind.
    pub tunnels_active: IntGaugeVec,
    /// Open SSH sessions.
    pub ssh_sessions_active: IntGauge,
    /// Visitor connections accepted, by listener (`http`, `tls`, `tcp`).
    pub visitor_connections_total: IntCounterVec,
    /// Visitor connections open now.
    pub visitor_connections_active: IntGauge,
    /// Visitor bytes, by direction (`in` from visitors, `out` to visitors).
    pub visitor_bytes_total: IntCounterVec,
    /// HTTP responses given to visitors, by status class and origin (`tunnel`, `edge`).
    pub http_responses_total: IntCounterVec,
    /// HTTP requests sent upstream again after their first try failed before any answer
    /// (a client reconnecting, a kept-alive channel that had just closed).
    pub http_retries_total: IntCounter,
    /// Request inspector channels opened by tunnel owners (`-L4300:localhost:4300`).
    pub inspector_channels_total: IntCounter,
    /// Requests sent again from the request inspector.
    pub inspector_replays_total: IntCounter,
    /// Visitor requests answered 429 after too many wrong credentials (`b:`, `k:`).
    pub visitor_auth_throttled_total: IntCounter,
    /// Visitor connections refused for holding their share already, by share (`address`:
    /// the visitor network's, `tunnel`: the tunnel's).
    pub visitor_share_refused_total: IntCounterVec,
    /// SSH connections refused at the unauthenticated-connection limits, by scope
    /// (`address`: the client network's share, `edge`: the edge-wide limit).
    pub ssh_unauthenticated_refused_total: IntCounterVec,
    /// SSH connections closed at `ssh_auth_deadline_seconds`, not authenticated by then.
    pub ssh_auth_timeouts_total: IntCounter,
    /// HTTP requests answered 504 because the tunnel's answer did not start in time.
    pub visitor_response_timeouts_total: IntCounter,
    /// Visitor connections the tunnel's client did not take in time.
    pub visitor_open_timeouts_total: IntCounter,
    /// Visitor channels the tunnel's client refused (its local service is not running).
    pub visitor_channels_refused_total: IntCounter,
    /// Visitor connections closed because the visitor took nothing for the stall limit.
    pub visitor_write_stalls_total: IntCounter,
    /// Spliced connections (`tcp`, `tls`, `x:noreverseproxy`) closed after an idle spell.
    pub splice_idle_closed_total: IntCounter,
    /// Visitor and relay channels the edge was done with, by which side closed them first
    /// (`client`: the client answered the edge's EOF, as it should; `edge`: it did not
    /// within the linger, and the edge closed the channel itself).
    pub channels_closed_total: IntCounterVec,
    /// Channels closed by the edge at once because their client went on sending an answer
    /// the visitor had left (more than 1 MiB after the edge's EOF).
    pub channels_cut_total: IntCounter,
    /// Bytes clients sent on channels the edge was done with, read and dropped.
    pub channel_unwanted_bytes_total: IntCounter,
    /// Time from a `tcpip-forward` request to the tunnel being live, by outcome.
    pub tunnel_setup_seconds: HistogramVec,
    /// Failed calls to control, by call.
    pub control_errors_total: IntCounterVec,
    /// When control last accepted this edge's heartbeat or registration (Unix seconds; the
    /// process's start until it first does).
    pub control_last_heartbeat: IntGauge,
    /// The heartbeat interval control asked for (seconds).
    pub control_heartbeat_interval: IntGauge,
    /// Tunnels closed, by reason.
    pub tunnels_closed_total: IntCounterVec,
    /// Visitor connections refused because the edge was at `max_visitor_connections`.
    pub visitor_connections_refused_total: IntCounter,
    /// Visitor connections relayed, by peer edge and direction (`out`: this edge sent the
    /// visitor to the holder; `in`: a peer sent a visitor here).
    pub relay_connections_total: IntCounterVec,
    /// Bytes of relayed visitor connections, by peer edge, which way the connections were
    /// relayed (`relay`: `out` to the peer, `in` from it) and direction (`sent` to the
    /// peer, `received` from it).
    pub relay_bytes_total: IntCounterVec,
    /// Bytes by which relay channels' receive windows have grown past what they opened with,
    /// all links together (bounded by `relay_window_budget_bytes`).
    pub relay_window_grown_bytes: IntGauge,
    /// Times a relay channel's window would have grown but the budget was spent.
    pub relay_window_growth_refused_total: IntCounter,
    /// Times a relay channel's window grew less than it would have because of its tunnel's
    /// share of the budget.
    pub relay_window_share_limited_total: IntCounter,
    /// Credit granted to peers on relay channels that this edge's readers have not taken.
    pub relay_window_unread_bytes: IntGauge,
    /// HTTP/2 visitor connections closed with GOAWAY ENHANCE_YOUR_CALM.
    pub http2_connections_cut_off_total: IntCounter,
    /// Bytes by which visitor channels' receive windows have grown past the 32 KiB they
    /// open with, all clients together (bounded by `tunnel_window_budget_bytes`).
    pub tunnel_window_grown_bytes: IntGauge,
    /// Times a visitor channel's window would have grown (its first 1 MiB included) but the
    /// budget was spent (or all but its reserve, and the tunnel had its share).
    pub tunnel_window_growth_refused_total: IntCounter,
    /// Times a visitor channel's window grew less than it would have (or not at all)
    /// because its tunnel held its share of the budget and the rest was the reserve.
    pub tunnel_window_share_limited_total: IntCounter,
    /// Window granted on visitor channels that visitors have not read yet.
    pub tunnel_window_unread_bytes: IntGauge,
    /// HTTP requests relayed to each peer edge.
    pub relay_requests_total: IntCounterVec,
    /// Relays that failed, by cause.
    pub relay_errors_total: IntCounterVec,
    /// Tunnel names each peer edge holds, as its holdings feed said.
    pub mesh_holder_names: IntGaugeVec,
    /// Seconds since each peer's holdings feed last spoke (0 right after a change).
    pub mesh_holder_age_seconds: GaugeVec,
    /// `nearhop_edge_relay_openings`, by peer (set before each scrape).
    pub relay_openings: IntGaugeVec,
    /// 1 while this edge's link to a peer is up (its feed followed), 0 while it reconnects.
    pub mesh_link_up: IntGaugeVec,
    /// Names a peer announced that this edge does not relay to, by peer and reason
    /// (`unproven`, `bad_proof`, `no_key`).
    pub mesh_claims_refused_total: IntCounterVec,
    /// Names a peer announced that were refused (`bad_proof`, `no_key`), dropped by a
    /// re-check, or displaced by a claim a re-check dropped, and taken later, once control's
    /// keys took their proofs, by peer.
    pub mesh_claims_taken_late_total: IntCounterVec,
    /// Peer lists this edge asked control for between heartbeats, because an edge it did
    /// not know (or knew with another key) dialled its mesh listener.
    pub mesh_peer_list_fetches_total: IntCounter,
    /// PROXY protocol headers accepted from trusted balancers, by listener and command
    /// (`proxy`: the client's address used; `local`, `unknown`: the balancer's own).
    pub proxy_protocol_headers_total: IntCounterVec,
    /// Connections refused over the PROXY protocol, by listener and cause (`untrusted`,
    /// `missing`, `malformed`, `too_large`, `timeout`, `closed`, `io`).
    pub proxy_protocol_refused_total: IntCounterVec,
    /// ACME certificates from control in service for HTTPS.
    pub certificates: IntGauge,
    /// The generation of those certificates (control's; 0 before the first).
    pub certificates_generation: IntGauge,
    /// Certificates from control that could not be served (bad PEM, a key that does not fit).
    pub certificates_refused_total: IntCounter,
    /// Runs of `malloc_trim(0)` (`process::allocator::release_periodically`).
    pub malloc_trims_total: IntCounter,
    /// Time those runs took, seconds.
    pub malloc_trim_seconds_total: Counter,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        // The conventional `process_*` series (resident memory, CPU seconds, open file
        // descriptors and their limit, start time), read from /proc at each scrape.
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let tunnels_active = IntGaugeVec::new(
            Opts::new("nearhop_edge_tunnels_active", "Live tunnels on this edge."),
            &["zone", "kind"],
        )?;
        let ssh_sessions_active =
            IntGauge::new("nearhop_edge_ssh_sessions_active", "Open SSH sessions.")?;
        let visitor_connections_total = IntCounterVec::new(
            Opts::new(
                "nearhop_edge_visitor_connections_total",
                "Visitor connections accepted.",
            ),
            &["listener"],
        )?;
        let visitor_connections_active = IntGauge::new(
            "nearhop_edge_visitor_connections_active",
            "Visitor connections open now.",
        )?;
        let visitor_bytes_total = IntCounterVec::new(
            Opts::new(
                "nearhop_edge_visitor_bytes_total",
                "Bytes carried for visitors.",
            ),
            &["direction"],
        )?;
        let http_responses_total = IntCounterVec::new(
            Opts::new(
                "nearhop_edge_http_responses_total",
                "HTTP responses sent to visitors.",
            ),
            &["class", "origin"],
        )?;
        let http_retries_total = IntCounter::new(
            "nearhop_edge_http_retries_total",
            "Idempotent HTTP requests sent upstream again after a try failed before any answer.",
        )?;
        let inspector_channels_total = IntCounter::new(
            "nearhop_edge_inspector_channels_total",
            "Request inspector channels opened by tunnel owners.",
        )?;
        let inspector_replays_total = IntCounter::new(
            "nearhop_edge_inspector_replays_total",
            "Requests sent again from the request inspector.",
        )?;
        let visitor_auth_throttled_total = IntCounter::new(
            "nearhop_edge_visitor_auth_throttled_total",
            "Visitor requests refused with 429 after too many wrong credentials.",
        )?;
        let visitor_share_refused_total = IntCounterVec::new(
            Opts::new(
                "nearhop_edge_visitor_share_refused_total",
                "Visitor connections refused because their address or tunnel held its share.",
            ),
            &["share"],
        )?;
        let ssh_unauthenticated_refused_total = IntCounterVec::new(
            Opts::new(
                "nearhop_edge_ssh_unauthenticated_refused_total",
                "SSH connections refused at the limits on connections not yet authenticated.",
            ),
            &["scope"],
        )?;
        let visitor_response_timeouts_total = IntCounter::new(
            "nearhop_edge_visitor_response_timeouts_total",
            "HTTP requests answered 504: the tunnel's answer did not start in time.",
        )?;
        let visitor_open_timeouts_total = IntCounter::new(
            "nearhop_edge_visitor_open_timeouts_total",
            "Visitor connections the tunnel's client did not take within visitor_open_timeout_seconds.",
        )?;
        let visitor_channels_refused_total = IntCounter::new(
            "nearhop_edge_visitor_channels_refused_total",
            "Visitor channels the tunnel's client refused (its local service is not running, or refuses connections).",
        )?;
        let ssh_auth_timeouts_total = IntCounter::new(
            "nearhop_edge_ssh_auth_timeouts_total",
            "SSH connections closed at ssh_auth_deadline_seconds, not authenticated by then.",
        )?;
        let visitor_write_stalls_total = IntCounter::new(
            "nearhop_edge_visitor_write_stalls_total",
            "Visitor connections closed because the visitor took nothing for visitor_write_stall_seconds.",
        )?;
        let splice_idle_closed_total = IntCounter::new(
            "nearhop_edge_splice_idle_closed_total",
            "Spliced visitor connections closed after an idle spell.",
        )?;
        let channels_closed_total = IntCounterVec::new(
            Opts::new(
                "nearhop_edge_channels_closed_total",
                "Visitor and relay channels the edge was done with, by which side closed first.",
            ),
            &["first"],
        )?;
        let channels_cut_total = IntCounter::new(
            "nearhop_edge_channels_cut_total",
            "Finished channels the edge closed at once because their client went on sending an answer the visitor had left.",
        )?;
        let channel_unwanted_bytes_total = IntCounter::new(
            "nearhop_edge_channel_unwanted_bytes_total",
            "Bytes clients sent on channels the edge was done with, read and dropped.",
        )?;
        let tunnel_setup_seconds = HistogramVec::new(
            HistogramOpts::new(
                "nearhop_edge_tunnel_setup_seconds",
                "Time from a forward request to a live tunnel (or refusal).",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["outcome"],
        )?;
        let control_errors_total = IntCounterVec::new(
            Opts::new(
                "nearhop_edge_control_errors_total",
                "Calls to control that failed.",
            ),
            &["call"],
        )?;
        let control_last_heartbeat = IntGauge::new(
            "nearhop_edge_control_last_heartbeat_timestamp_seconds",
            "When control last accepted this edge's heartbeat or registration (Unix time; the process's start until it first does).",
        )?;
        control_last_heartbeat.set(unix_now());
        let control_heartbeat_interval = IntGauge::new(
            "nearhop_edge_control_heartbeat_interval_seconds",
            "Seconds between heartbeats, as control asked (the edge's heartbeat_seconds until it registers).",
        )?;
        let tunnels_closed_total = IntCounterVec::new(
            Opts::new("nearhop_edge_tunnels_closed_total", "Tunnels closed."),
            &["reason"],
        )?;
        let visitor_connections_refused_total = IntCounter::new(
            "nearhop_edge_visitor_connections_refused_total",
            "Visitor connections refused at the connection limit.",
        )?;
        let relay_connections_total = IntCounterVec::new(
            Opts::new(
                "nearhop_edge_relay_connections_total",
                "Visitor connections relayed between edges.",
            ),
            &["peer", "direction"],
        )?;
        let relay_bytes_total = IntCounterVec::new(
            Opts::new(
                "nearhop_edge_relay_bytes_total",
                "Bytes of visitor connections relayed between edges.",
            ),
            &["peer", "relay", "direction"],
        )?;
        let relay_requests_total = IntCounterVec::new(
            Opts::new(
                "nearhop_edge_relay_requests_total",
                "HTTP requests relayed to the peer edge holding their tunnel.",
            ),
            &["peer"],
        )?;
        let relay_errors_total = IntCounterVec::new(
            Opts::new(
                "nearhop_edge_relay_errors_total",
                "Relays between edges that failed or were refused.",
            ),
            &["cause"],
        )?;
        let relay_window_grown_bytes = IntGauge::new(
            "nearhop_edge_relay_window_grown_bytes",
            "Bytes by which relay channels' receive windows have grown past what they opened with (32 KiB on a v4 feed, 1 MiB before), all peer links together.",
        )?;
        let relay_window_growth_refused_total = IntCounter::new(
            "nearhop_edge_relay_window_growth_refused_total",
            "Times a relay channel's window would have grown (to its first 1 MiB, or past it) but relay_window_budget_bytes was spent (or all but its last quarter, and the channel's tunnel held its quarter).",
        )?;
        let relay_window_share_limited_total = IntCounter::new(
            "nearhop_edge_relay_window_share_limited_total",
            "Times a relay channel's window grew less than it would have, or not at all, because its tunnel's relay channels held a quarter of relay_window_budget_bytes and what was left of it was the last quarter, kept for other tunnels.",
        )?;
        let relay_window_unread_bytes = IntGauge::new(
            "nearhop_edge_relay_window_unread_bytes",
            "Bytes peer edges may send on relay channels that this edge has not read yet (credit granted, not taken): the most relayed connections may make this edge hold now.",
        )?;
        let http2_connections_cut_off_total = IntCounter::new(
            "nearhop_edge_http2_connections_cut_off_total",
            "HTTP/2 visitor connections closed with GOAWAY ENHANCE_YOUR_CALM: streams reset faster than they were answered (rapid reset) or too many streams in error.",
        )?;
        let tunnel_window_grown_bytes = IntGauge::new(
            "nearhop_edge_tunnel_window_grown_bytes",
            "Bytes by which visitor channels' receive windows (client to edge) have grown past the 32 KiB they open with, all clients together.",
        )?;
        let tunnel_window_unread_bytes = IntGauge::new(
            "nearhop_edge_tunnel_window_unread_bytes",
            "Bytes clients may send on visitor channels that visitors have not read yet (window granted, not taken): the most the edge may hold for visitors now.",
        )?;
        let tunnel_window_growth_refused_total = IntCounter::new(
            "nearhop_edge_tunnel_window_growth_refused_total",
            "Times a visitor channel's window would have grown (to its first 1 MiB, or past it) but tunnel_window_budget_bytes was spent (or all but its last quarter, and the channel's tunnel held its quarter).",
        )?;
        let tunnel_window_share_limited_total = IntCounter::new(
            "nearhop_edge_tunnel_window_share_limited_total",
            "Times a visitor channel's window grew less than it would have, or not at all, because its tunnel's windows held a quarter of tunnel_window_budget_bytes and what was left of it was the last quarter, kept for other tunnels.",
        )?;
        let mesh_holder_names = IntGaugeVec::new(
            Opts::new(
                "nearhop_edge_mesh_holder_names",
                "Tunnel names a peer edge holds, as its holdings feed said.",
            ),
            &["peer"],
        )?;
        let mesh_holder_age_seconds = GaugeVec::new(
            Opts::new(
                "nearhop_edge_mesh_holder_age_seconds",
                "Seconds since a peer edge's holdings feed last spoke.",
            ),
            &["peer"],
        )?;
        let relay_openings = IntGaugeVec::new(
            Opts::new(
                "nearhop_edge_relay_openings",
                "Relay channels this edge is opening on a peer edge's link now (asked for, not yet confirmed or refused); at most relay_openings_per_peer.",
            ),
            &["peer"],
        )?;
        let mesh_link_up = IntGaugeVec::new(
            Opts::new(
                "nearhop_edge_mesh_link_up",
                "1 while this edge's link to a peer edge is up, 0 while it reconnects.",
            ),
            &["peer"],
        )?;
        registry.register(Box::new(mesh_link_up.clone()))?;
        let mesh_claims_refused_total = IntCounterVec::new(
            Opts::new(
                "nearhop_edge_mesh_claims_refused_total",
                "Tunnel names a peer edge announced without a holder proof from control that checks out (bad_proof also counts names taken before whose proof no longer checks out once control dropped a key); visitors for them are not relayed there.",
            ),
            &["peer", "reason"],
        )?;
        registry.register(Box::new(mesh_claims_refused_total.clone()))?;
        let mesh_claims_taken_late_total = IntCounterVec::new(
            Opts::new(
                "nearhop_edge_mesh_claims_taken_late_total",
                "Tunnel names a peer edge announced that were refused or dropped for a holder proof that did not check out (bad_proof, no_key) and taken later, when control's answer brought the key they were signed with, or that were displaced by a claim a re-check dropped and given back.",
            ),
            &["peer"],
        )?;
        registry.register(Box::new(mesh_claims_taken_late_total.clone()))?;
        let mesh_peer_list_fetches_total = IntCounter::new(
            "nearhop_edge_mesh_peer_list_fetches_total",
            "Peer lists asked of control between heartbeats, because an edge this edge did not know (or knew with another key) dialled its mesh listener.",
        )?;
        registry.register(Box::new(mesh_peer_list_fetches_total.clone()))?;
        let proxy_protocol_headers_total = IntCounterVec::new(
            Opts::new(
                "nearhop_edge_proxy_protocol_headers_total",
                "PROXY protocol headers accepted from trusted balancers.",
            ),
            &["listener", "command"],
        )?;
        let proxy_protocol_refused_total = IntCounterVec::new(
            Opts::new(
                "nearhop_edge_proxy_protocol_refused_total",
                "Connections refused over the PROXY protocol: a header from an untrusted \
                 address, or none or a bad one from a trusted balancer.",
            ),
            &["listener", "cause"],
        )?;
        let certificates = IntGauge::new(
            "nearhop_edge_certificates",
            "ACME certificates from control in service for HTTPS.",
        )?;
        let certificates_generation = IntGauge::new(
            "nearhop_edge_certificates_generation",
            "Generation of control's certificate set in service (0: none yet).",
        )?;
        let certificates_refused_total = IntCounter::new(
            "nearhop_edge_certificates_refused_total",
            "Certificates from control that could not be served (bad PEM, a key that does not fit).",
        )?;
        let malloc_trims_total = IntCounter::new(
            "nearhop_edge_malloc_trims_total",
            "Runs of malloc_trim(0), which gives free memory back to the kernel.",
        )?;
        let malloc_trim_seconds_total = Counter::new(
            "nearhop_edge_malloc_trim_seconds_total",
            "Time the runs of malloc_trim(0) took, seconds.",
        )?;
        registry.register(Box::new(malloc_trims_total.clone()))?;
        registry.register(Box::new(malloc_trim_seconds_total.clone()))?;
        registry.register(Box::new(certificates.clone()))?;
        registry.register(Box::new(certificates_generation.clone()))?;
        registry.register(Box::new(certificates_refused_total.clone()))?;
        registry.register(Box::new(proxy_protocol_headers_total.clone()))?;
        registry.register(Box::new(proxy_protocol_refused_total.clone()))?;
        registry.register(Box::new(relay_connections_total.clone()))?;
        registry.register(Box::new(relay_bytes_total.clone()))?;
        registry.register(Box::new(relay_requests_total.clone()))?;
        registry.register(Box::new(relay_errors_total.clone()))?;
        // Every cause has a series from the start, so that `rate()` and alerts see a 0
        // rather than nothing.
        for cause in RELAY_ERROR_CAUSES {
            relay_errors_total.with_label_values(&[cause]);
        }
        registry.register(Box::new(relay_window_grown_bytes.clone()))?;
        registry.register(Box::new(relay_window_growth_refused_total.clone()))?;
        registry.register(Box::new(relay_window_share_limited_total.clone()))?;
        registry.register(Box::new(relay_window_unread_bytes.clone()))?;
        registry.register(Box::new(http2_connections_cut_off_total.clone()))?;
        registry.register(Box::new(tunnel_window_grown_bytes.clone()))?;
        registry.register(Box::new(tunnel_window_growth_refused_total.clone()))?;
        registry.register(Box::new(tunnel_window_share_limited_total.clone()))?;
        registry.register(Box::new(tunnel_window_unread_bytes.clone()))?;
        registry.register(Box::new(mesh_holder_names.clone()))?;
        registry.register(Box::new(mesh_holder_age_seconds.clone()))?;
        registry.register(Box::new(relay_openings.clone()))?;
        registry.register(Box::new(tunnels_active.clone()))?;
        registry.register(Box::new(ssh_sessions_active.clone()))?;
        registry.register(Box::new(visitor_connections_total.clone()))?;
        registry.register(Box::new(visitor_connections_active.clone()))?;
        registry.register(Box::new(visitor_bytes_total.clone()))?;
        registry.register(Box::new(http_responses_total.clone()))?;
        registry.register(Box::new(http_retries_total.clone()))?;
        registry.register(Box::new(inspector_channels_total.clone()))?;
        registry.register(Box::new(inspector_replays_total.clone()))?;
        registry.register(Box::new(visitor_auth_throttled_total.clone()))?;
        registry.register(Box::new(visitor_share_refused_total.clone()))?;
        registry.register(Box::new(ssh_unauthenticated_refused_total.clone()))?;
        registry.register(Box::new(ssh_auth_timeouts_total.clone()))?;
        registry.register(Box::new(visitor_response_timeouts_total.clone()))?;
        registry.register(Box::new(visitor_open_timeouts_total.clone()))?;
        registry.register(Box::new(visitor_channels_refused_total.clone()))?;
        registry.register(Box::new(visitor_write_stalls_total.clone()))?;
        registry.register(Box::new(splice_idle_closed_total.clone()))?;
        registry.register(Box::new(channels_closed_total.clone()))?;
        registry.register(Box::new(channels_cut_total.clone()))?;
        registry.register(Box::new(channel_unwanted_bytes_total.clone()))?;
        registry.register(Box::new(tunnel_setup_seconds.clone()))?;
        registry.register(Box::new(control_errors_total.clone()))?;
        registry.register(Box::new(control_last_heartbeat.clone()))?;
        registry.register(Box::new(control_heartbeat_interval.clone()))?;
        registry.register(Box::new(tunnels_closed_total.clone()))?;
        registry.register(Box::new(visitor_connections_refused_total.clone()))?;
        Ok(Metrics {
            registry,
            tunnels_active,
            ssh_sessions_active,
            visitor_connections_total,
            visitor_connections_active,
            visitor_bytes_total,
            http_responses_total,
            http_retries_total,
            inspector_channels_total,
            inspector_replays_total,
            visitor_auth_throttled_total,
            visitor_share_refused_total,
            ssh_unauthenticated_refused_total,
            ssh_auth_timeouts_total,
            visitor_response_timeouts_total,
            visitor_open_timeouts_total,
            visitor_channels_refused_total,
            visitor_write_stalls_total,
            splice_idle_closed_total,
            channels_closed_total,
            channels_cut_total,
            channel_unwanted_bytes_total,
            tunnel_setup_seconds,
            control_errors_total,
            control_last_heartbeat,
            control_heartbeat_interval,
            tunnels_closed_total,
            visitor_connections_refused_total,
            relay_connections_total,
            relay_bytes_total,
            relay_requests_total,
            relay_errors_total,
            relay_window_grown_bytes,
            relay_window_growth_refused_total,
            relay_window_share_limited_total,
            relay_window_unread_bytes,
            http2_connections_cut_off_total,
            tunnel_window_grown_bytes,
            tunnel_window_growth_refused_total,
            tunnel_window_share_limited_total,
            tunnel_window_unread_bytes,
            mesh_holder_names,
            mesh_holder_age_seconds,
            relay_openings,
            mesh_link_up,
            mesh_claims_refused_total,
            mesh_claims_taken_late_total,
            mesh_peer_list_fetches_total,
            proxy_protocol_headers_total,
            proxy_protocol_refused_total,
            certificates,
            certificates_generation,
            certificates_refused_total,
            malloc_trims_total,
            malloc_trim_seconds_total,
        })
    }

    /// Sets the holder-table gauges from `(peer, names, age)` per peer (before a scrape).
    pub fn observe_holders(&self, peers: &[(String, usize, std::time::Duration)]) {
        self.mesh_holder_names.reset();
        self.mesh_holder_age_seconds.reset();
        for (peer, names, age) in peers {
            self.mesh_holder_names
                .with_label_values(&[peer])
                .set(*names as i64);
            self.mesh_holder_age_seconds
                .with_label_values(&[peer])
                .set(age.as_secs_f64());
        }
    }

    /// Sets `nearhop_edge_relay_openings` from `(peer, openings)` per link (before a scrape).
    pub fn observe_relay_openings(&self, links: &[(String, usize)]) {
        self.relay_openings.reset();
        for (peer, openings) in links {
            self.relay_openings
                .with_label_values(&[peer])
                .set(*openings as i64);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// The counters of finished channels, for an SSH session's or mesh link's
    /// [`PeerCloses`](crate::io::closing_channel::PeerCloses).
    pub fn close_counters(&self) -> crate::io::closing_channel::CloseCounters {
        crate::io::closing_channel::CloseCounters {
            closed: self.channels_closed_total.clone(),
            cut: self.channels_cut_total.clone(),
            unwanted_bytes: self.channel_unwanted_bytes_total.clone(),
        }
    }
}

/// Now, in whole seconds since the Unix epoch (0 for a clock set before it).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_relay_error_cause_is_exported_from_the_start() {
        let text = Metrics::new().expect("metrics").render();
        for cause in RELAY_ERROR_CAUSES {
            let line = format!("nearhop_edge_relay_errors_total{{cause=\"{cause}\"}} 0");
            assert!(text.contains(&line), "{line} missing:\n{text}");
        }
    }
}
