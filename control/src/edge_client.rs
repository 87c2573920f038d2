//! Control's calls to an edge's admin API: close a tunnel, ask whether its client is alive.

use crate::db::PgPool;
use crate::metrics::Metrics;
use nearhop_wire::{AliveResponse, CloseReason, EdgeCloseRequest};
use std::time::Duration;

/// What an alive probe found out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The client answered the edge's keepalive.
    Alive,
    /// The edge knows the tunnel and its client did not answer the keepalive.
    Dead,
    /// The edge does not know the tunnel (never set up there, or already gone).
    Unknown,
    /// The edge could not be reached within the bound.
    EdgeUnreachable,
}

/// HTTP client for edges' admin APIs.
#[derive(Clone)]
pub struct EdgeClient {
    http: reqwest::Client,
    /// The legacy shared secret, sent to edges that announced no admin key.
    secret: Option<String>,
    /// Where each edge's admin key is looked up.
    pool: PgPool,
    metrics: Metrics,
}

impl EdgeClient {
    /// A client whose every call is bounded by `timeout`.
    pub fn new(
        secret: Option<String>,
        pool: PgPool,
        timeout: Duration,
        metrics: Metrics,
    ) -> anyhow::Result<EdgeClient> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A fresh connection per call: probes are rare, and an edge's admin API closes
            // idle connections after its header timeout (visitor_header_timeout_seconds,
            // as short as 1 s), so a pooled one could be closing as a probe is written.
            .pool_max_idle_per_host(0)
            .build()?;
        Ok(EdgeClient {
            http,
            secret,
            pool,
            metrics,
        })
    }

    /// A call to the admin API of the edge holding `tunnel_id`, with that edge's own admin
    /// key as bearer (the legacy shared secret for edges that announced none).
    async fn authorized(
        &self,
        call: reqwest::RequestBuilder,
        admin_url: &str,
        tunnel_id: i64,
    ) -> reqwest::RequestBuilder {
        let legacy = self.secret.as_deref();
        match crate::edge_auth::admin_bearer(&self.pool, legacy, tunnel_id, admin_url).await {
            Some(bearer) => call.bearer_auth(bearer),
            None => call,
        }
    }

    /// Asks the edge whether the tunnel's client answers an SSH keepalive.
    pub async fn probe(&self, admin_url: &str, tunnel_id: i64) -> Liveness {
        let url = format!(
            "{}/v1/tunnels/{tunnel_id}/alive",
            admin_url.trim_end_matches('/')
        );
        let call = self
            .authorized(self.http.get(&url), admin_url, tunnel_id)
            .await;
        let res = call.send().await;
        let outcome = match res {
            Ok(r) if r.status().is_success() => match r.json::<AliveResponse>().await {
                Ok(a) if a.known && a.alive => Liveness::Alive,
                Ok(a) if a.known => Liveness::Dead,
                Ok(_) => Liveness::Unknown,
                Err(_) => Liveness::EdgeUnreachable,
            },
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => Liveness::Unknown,
            Ok(_) | Err(_) => Liveness::EdgeUnreachable,
        };
        let label = match outcome {
            Liveness::Alive => "alive",
            Liveness::Dead => "dead",
            Liveness::Unknown => "unknown",
            Liveness::EdgeUnreachable => "unreachable",
        };
        self.metrics
            .edge_calls_total
            .with_label_values(&["alive", label])
            .inc();
        outcome
    }

    /// Tells the edge to close the tunnel and disconnect its client with `message`.
    /// Returns whether the edge confirmed (or did not know the tunnel).
    pub async fn close(
        &self,
        admin_url: &str,
        tunnel_id: i64,
        reason: CloseReason,
        message: &str,
    ) -> bool {
        let url = format!(
            "{}/v1/tunnels/{tunnel_id}/close",
            admin_url.trim_end_matches('/')
        );
        let body = EdgeCloseRequest {
            reason,
            message: message.to_string(),
        };
        let call = self
            .authorized(self.http.post(&url), admin_url, tunnel_id)
            .await;
        let res = call.json(&body).send().await;
        let ok = matches!(&res, Ok(r) if r.status().is_success() || r.status() == reqwest::StatusCode::NOT_FOUND);
        if !ok {
            tracing::warn!(tunnel_id, admin_url, result = ?res.as_ref().map(|r| r.status()).map_err(|e| e.to_string()), "edge did not confirm close");
        }
        self.metrics
            .edge_calls_total
            .with_label_values(&["close", if ok { "ok" } else { "error" }])
            .inc();
        ok
    }
}
