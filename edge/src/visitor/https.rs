//! HTTPS for `http` tunnels: one rustls server configuration whose certificate is chosen at
//! each handshake by [`Certificates`] (the operator's files, or those control obtained by
//! ACME). The TLS listener uses it for every name that is not a `tls` tunnel.

use crate::visitor::certificates::Certificates;
use anyhow::{Context, Result};
use rustls::ServerConfig;
use std::sync::Arc;

/// The server configuration over `certificates`: HTTP/1.1 over TLS 1.2 or 1.3.
pub fn server_config(certificates: Arc<Certificates>) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
