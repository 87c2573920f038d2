//! What the load clients of the benchmarks share: a russh client that trusts the edge's
//! key (loopback benchmarks), sends no keepalives and never times out, on one worker thread.
//! Each example compiles this module on its own and uses part of it.
#![allow(dead_code)]

use russh::client::{self, Handler};
use std::sync::Arc;

/// A client handler that accepts any server key and nothing else.
pub struct TrustAnyKey;

impl Handler for TrustAnyKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// Client settings for sessions that stay idle as long as the benchmark runs.
pub fn client_config() -> Arc<client::Config> {
    Arc::new(client::Config {
        inactivity_timeout: None,
        keepalive_interval: None,
        ..Default::default()
    })
}

/// The load client's runtime: one worker, so it takes less of the machine than the edge.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
}
