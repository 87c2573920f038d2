//! HTTPS for `http` tunnels: the certificate the operator configured (`tls_cert_path`,
//! `tls_key_path`; typically a wildcard per zone), loaded once into a rustls server
//! configuration. The TLS listener uses it for every name that is not a `tls` tunnel.

use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::path::Path;
use std::sync::Arc;

/// The server configuration for `cert` and `key` (PEM files), HTTP/1.1 over TLS 1.2 or 1.3.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading tls_cert_path {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| {
            format!(
                "tls_cert_path {} is not a PEM certificate chain",
                cert.display()
            )
        })?;
    if chain.is_empty() {
        bail!(
            "tls_cert_path {} holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)",
            cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key in tls_key_path {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("tls_cert_path and tls_key_path do not make a usable certificate and key pair")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_wrong_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.pem");
        let e = format!(
            "{:#}",
            server_config(&missing, &missing).expect_err("missing")
        );
        assert!(e.contains("tls_cert_path") && e.contains("nope.pem"), "{e}");

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").expect("write");
        let e = format!("{:#}", server_config(&junk, &junk).expect_err("junk"));
        assert!(e.contains("holds no certificate"), "{e}");
    }
}
