//! What every handler and background task shares.

use crate::config::Config;
use crate::db::PgPool;
use crate::edge_client::EdgeClient;
use crate::holder_signing::HolderSigning;
use crate::lag::LagWaiter;
use crate::metrics::Metrics;
use std::sync::Arc;

/// Control's shared state, cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The validated configuration.
    pub cfg: Arc<Config>,
    /// Connections to the primary.
    pub pool: PgPool,
    /// Calls to edges' admin APIs.
    pub edges: EdgeClient,
    /// The lag-race wait.
    pub lag: LagWaiter,
    /// Metrics.
    pub metrics: Metrics,
    /// Signs holder proofs (the key derives from `holder_key_secret`, else `admin_secret`;
    /// edges get its public half, and the previous key's during a rotation).
    pub holder_signing: Arc<HolderSigning>,
}

impl AppState {
    /// Builds the state from a configuration.
    pub fn new(cfg: Config) -> anyhow::Result<AppState> {
        let metrics = Metrics::new()?;
        let pool = crate::db::pool(&cfg.database_url, cfg.pool_size);
        let edges = EdgeClient::new(
            cfg.edge_secret.clone(),
            pool.clone(),
            std::time::Duration::from_millis(cfg.edge_call_ms),
            metrics.clone(),
        )?;
        let lag = LagWaiter::new(
            pool.clone(),
            cfg.waited_regions(),
            cfg.primary_region.clone(),
            cfg.lag_wait(),
            metrics.clone(),
        )?;
        Ok(AppState {
            holder_signing: Arc::new(HolderSigning::new(&cfg)),
            cfg: Arc::new(cfg),
            pool,
            edges,
            lag,
            metrics,
        })
    }

    /// Runs blocking database work off the async threads.
    pub async fn blocking<T, F>(&self, f: F) -> crate::error::ControlResult<T>
    where
        F: FnOnce(&mut diesel::PgConnection) -> crate::error::ControlResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = crate::db::conn(&pool)?;
            f(&mut conn)
        })
        .await
        .map_err(|e| crate::error::ControlError::Internal(e.to_string()))?
    }
}
