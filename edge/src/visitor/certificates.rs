//! The certificates the HTTPS listener serves, chosen at each handshake by the name the
//! visitor asked for (SNI):
//!
//! - the operator's files (`tls_cert_path`, `tls_key_path`) win for every name they cover;
//! - certificates control obtained by ACME (a wildcard per zone, one per custom domain)
//!   serve the names the operator's do not cover; they are replaced whole, without a restart,
//!   whenever control's set changes (its generation, in every heartbeat answer);
//! - a name neither covers gets the operator's certificate if there is one (as before ACME),
//!   and otherwise no handshake: the TLS listener answers `unrecognized_name`.
//!
//! A connection keeps the certificate of its own handshake: a swap reaches new handshakes
//! only, so nothing open is dropped. Private keys stay in this module's `CertifiedKey`s and
//! in the optional cache file (mode 0600); they never reach a log.

use anyhow::{bail, Context, Result};
use nearhop_wire::{EdgeCertificates, IssuedCertificate};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// Every certificate the edge can serve, and which name gets which.
#[derive(Debug)]
pub struct Certificates {
    provider: Arc<CryptoProvider>,
    operator: Option<Served>,
    issued: RwLock<Issued>,
}

/// A certificate with its key and the DNS names written in it.
#[derive(Debug, Clone)]
struct Served {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
}

impl Served {
    fn covers(&self, name: &str) -> bool {
        self.names.iter().any(|n| name_matches(n, name))
    }
}

/// The ACME certificates of one generation, by the names they cover.
#[derive(Debug, Default)]
struct Issued {
    generation: i64,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.zone` certificates, by `zone`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    count: usize,
}

impl Issued {
    fn find(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        self.exact.get(name).or_else(|| {
            let (_, parent) = name.split_once('.')?;
            self.wildcard.get(parent)
        })
    }
}

/// What one [`Certificates::install`] took in.
#[derive(Debug, PartialEq)]
pub struct Installed {
    /// Certificates now in service.
    pub count: usize,
    /// Certificates refused, each with its names and why (the rest are served).
    pub refused: Vec<String>,
}

impl Certificates {
    /// The operator's certificate from its files, if configured, and no ACME certificate yet.
    pub fn new(operator_files: Option<(&Path, &Path)>) -> Result<Certificates> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let operator = match operator_files {
            Some((cert, key)) => Some(operator_certificate(&provider, cert, key)?),
            None => None,
        };
        Ok(Certificates {
            provider,
            operator,
            issued: RwLock::new(Issued::default()),
        })
    }

    /// Whether a handshake for `name` would get a certificate, so that the TLS listener may
    /// terminate it.
    pub fn covers(&self, name: &str) -> bool {
        self.operator.is_some() || self.read().find(&name.to_ascii_lowercase()).is_some()
    }

    /// The generation of the ACME certificates in service (0: none yet).
    pub fn generation(&self) -> i64 {
        self.read().generation
    }

    /// How many ACME certificates are in service.
    pub fn issued_count(&self) -> usize {
        self.read().count
    }

    /// Replaces the ACME certificates with `set`. A certificate that cannot be used (bad
    /// PEM, a key that does not match) is left out and named in the answer; the others
    /// are served.
    pub fn install(&self, set: &EdgeCertificates) -> Installed {
        let mut next = Issued {
            generation: set.generation,
            ..Issued::default()
        };
        let mut refused = Vec::new();
        for cert in &set.certificates {
            match issued_certificate(&self.provider, cert) {
                Ok(served) => {
                    for name in &served.names {
                        match name.strip_prefix("*.") {
                            Some(zone) => {
                                next.wildcard.insert(zone.to_string(), served.key.clone())
                            }
                            None => next.exact.insert(name.clone(), served.key.clone()),
                        };
                    }
                    next.count += 1;
                }
                Err(e) => refused.push(format!("{}: {e:#}", cert.names.join(", "))),
            }
        }
        let count = next.count;
        *self.issued.write().unwrap_or_else(|p| p.into_inner()) = next;
        Installed { count, refused }
    }

    /// The certificate for a handshake that asked for `name` (none when it sent no SNI).
    fn pick(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let name = name.map(|n| n.trim_end_matches('.').to_ascii_lowercase());
        if let (Some(op), Some(name)) = (&self.operator, &name) {
            if op.covers(name) {
                return Some(op.key.clone());
            }
        }
        if let Some(name) = &name {
            if let Some(key) = self.read().find(name) {
                return Some(key.clone());
            }
        }
        self.operator.as_ref().map(|op| op.key.clone())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Issued> {
        self.issued.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// Whether the certificate name `pattern` (a name, or `*.` and a name) covers `name`; both
/// in lower case. A wildcard covers exactly one label.
fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => pattern == name,
    }
}

/// Reads the operator's PEM files into a certificate and the names it covers.
fn operator_certificate(provider: &CryptoProvider, cert: &Path, key: &Path) -> Result<Served> {
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
    served(provider, chain, key)
        .context("tls_cert_path and tls_key_path do not make a usable certificate and key pair")
}

/// One certificate from control, checked the same way.
fn issued_certificate(provider: &CryptoProvider, cert: &IssuedCertificate) -> Result<Served> {
    let chain = CertificateDer::pem_slice_iter(cert.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the chain is not PEM")?;
    if chain.is_empty() {
        bail!("the chain holds no certificate");
    }
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
        .context("the private key is not PEM")?;
    served(provider, chain, key)
}

fn served(
    provider: &CryptoProvider,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Served> {
    let names = {
        let leaf = webpki::EndEntityCert::try_from(&chain[0])
            .map_err(|e| anyhow::anyhow!("the first certificate cannot be read: {e:?}"))?;
        leaf.valid_dns_names()
            .map(|n| n.to_ascii_lowercase())
            .collect::<Vec<_>>()
    };
    let key = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| anyhow::anyhow!("the key does not fit the certificate: {e}"))?;
    Ok(Served {
        key: Arc::new(key),
        names,
    })
}

/// Reads the certificates an earlier run kept in `path`, if the file is there.
pub fn load_cache(path: &Path) -> Result<Option<EdgeCertificates>> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let set = serde_json::from_slice(&text).with_context(|| {
        format!(
            "{} is not a certificates cache written by nearhop-edge; remove it and the edge \
             fetches the certificates from control again",
            path.display()
        )
    })?;
    Ok(Some(set))
}

/// Keeps `set` in `path` (readable by the edge's user only) for a restart while control is
/// away; written to a temporary file first, then renamed over the old one.
pub fn save_cache(path: &Path, set: &EdgeCertificates) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let body = serde_json::to_vec(set).context("encoding the certificates")?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(&body)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `names`, as control would hand it over.
    fn issued(names: &[&str]) -> IssuedCertificate {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let made = rcgen::generate_simple_self_signed(names.clone()).expect("rcgen");
        IssuedCertificate {
            names,
            chain_pem: made.cert.pem(),
            key_pem: made.signing_key.serialize_pem(),
            not_after_unix: 0,
        }
    }

    fn set(generation: i64, certs: Vec<IssuedCertificate>) -> EdgeCertificates {
        EdgeCertificates {
            generation,
            certificates: certs,
        }
    }

    fn leaf(c: &Certificates, name: &str) -> Option<Vec<u8>> {
        c.pick(Some(name)).map(|k| k.cert[0].to_vec())
    }

    #[test]
    fn names_match_exactly_or_by_one_wildcard_label() {
        assert!(name_matches("*.a.test", "x.a.test"));
        assert!(!name_matches("*.a.test", "a.test"));
        assert!(!name_matches("*.a.test", "y.x.a.test"));
        assert!(!name_matches("*.a.test", ".a.test"));
        assert!(name_matches("a.test", "a.test"));
        assert!(!name_matches("a.test", "b.test"));
    }

    #[test]
    fn acme_certificates_are_chosen_by_name_and_swapped_whole() {
        let c = Certificates::new(None).expect("no operator files");
        assert!(!c.covers("x.a.test") && c.pick(Some("x.a.test")).is_none());

        let zone = issued(&["a.test", "*.a.test"]);
        let domain = issued(&["app.example.com"]);
        let got = c.install(&set(3, vec![zone.clone(), domain.clone()]));
        assert_eq!(
            got,
            Installed {
                count: 2,
                refused: vec![]
            }
        );
        assert_eq!(c.generation(), 3);
        let zone_leaf = leaf(&c, "a.test").expect("apex");
        assert_eq!(
            leaf(&c, "X.A.test.").as_ref(),
            Some(&zone_leaf),
            "case and dot"
        );
        assert_ne!(leaf(&c, "app.example.com"), Some(zone_leaf.clone()));
        assert!(c.covers("app.example.com") && c.covers("x.a.test"));
        assert!(!c.covers("y.x.a.test") && leaf(&c, "other.test").is_none());

        // The next generation drops the domain and renews the zone.
        let renewed = issued(&["a.test", "*.a.test"]);
        c.install(&set(4, vec![renewed]));
        assert_ne!(
            leaf(&c, "x.a.test"),
            Some(zone_leaf),
            "the renewal is served"
        );
        assert!(!c.covers("app.example.com"));
        assert_eq!((c.generation(), c.issued_count()), (4, 1));
    }

    #[test]
    fn a_broken_certificate_is_named_and_the_others_served() {
        let c = Certificates::new(None).expect("new");
        let mut wrong_key = issued(&["b.test"]);
        wrong_key.key_pem = issued(&["c.test"]).key_pem;
        let mut junk = issued(&["d.test"]);
        junk.chain_pem = "not pem".into();
        let got = c.install(&set(1, vec![wrong_key, junk, issued(&["e.test"])]));
        assert_eq!(got.count, 1);
        assert_eq!(got.refused.len(), 2, "{:?}", got.refused);
        assert!(got.refused[0].starts_with("b.test: "), "{:?}", got.refused);
        assert!(got.refused[0].contains("does not fit"), "{:?}", got.refused);
        assert!(got.refused[1].starts_with("d.test: "), "{:?}", got.refused);
        assert!(c.covers("e.test") && !c.covers("b.test"));
    }

    #[test]
    fn the_operators_files_win_where_they_cover_the_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let op = issued(&["*.a.test"]);
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, &op.chain_pem).expect("write");
        std::fs::write(&key, &op.key_pem).expect("write");
        let c = Certificates::new(Some((&cert, &key))).expect("operator files");
        let op_leaf = leaf(&c, "x.a.test").expect("operator");

        c.install(&set(
            1,
            vec![
                issued(&["a.test", "*.a.test"]),
                issued(&["app.example.com"]),
            ],
        ));
        assert_eq!(leaf(&c, "x.a.test"), Some(op_leaf.clone()), "operator wins");
        let apex = leaf(&c, "a.test").expect("ACME serves what the operator's does not cover");
        assert_ne!(apex, op_leaf);
        assert_ne!(leaf(&c, "app.example.com"), Some(op_leaf.clone()));
        // Uncovered by anything: the operator's, as before ACME.
        assert_eq!(leaf(&c, "other.test"), Some(op_leaf.clone()));
        assert!(c.covers("other.test"));
    }

    #[test]
    fn missing_or_wrong_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.pem");
        let e = format!(
            "{:#}",
            Certificates::new(Some((&missing, &missing))).expect_err("missing")
        );
        assert!(e.contains("tls_cert_path") && e.contains("nope.pem"), "{e}");

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").expect("write");
        let e = format!(
            "{:#}",
            Certificates::new(Some((&junk, &junk))).expect_err("junk")
        );
        assert!(e.contains("holds no certificate"), "{e}");
    }

    #[test]
    fn the_cache_round_trips_and_a_foreign_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("certificates.json");
        assert!(load_cache(&path).expect("absent is fine").is_none());
        let s = set(7, vec![issued(&["a.test"])]);
        save_cache(&path, &s).expect("save");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "only the edge's user reads the keys");
        assert_eq!(load_cache(&path).expect("load"), Some(s));
        std::fs::write(&path, "{}").expect("write");
        let e = format!("{:#}", load_cache(&path).expect_err("foreign"));
        assert!(e.contains("remove it"), "{e}");
    }
}
