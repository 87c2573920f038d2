//! What control reads from an issued chain: the leaf's expiry and serial number.

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};

/// The leaf certificate's facts control keeps beside the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// When it expires.
    pub not_after: DateTime<Utc>,
    /// Its serial number, lowercase hex.
    pub serial: String,
}

/// Reads the first certificate of a PEM chain (the leaf, as ACME servers send it).
pub fn leaf_of(chain_pem: &str) -> Result<Leaf> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("the chain is not PEM: {e}"))?;
    if pem.label != "CERTIFICATE" {
        bail!(
            "the chain starts with a {} block, not a CERTIFICATE",
            pem.label
        );
    }
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("the leaf certificate does not parse: {e}"))?;
    let ts = cert.validity().not_after.timestamp();
    let not_after =
        DateTime::from_timestamp(ts, 0).context("the leaf's notAfter is out of range")?;
    Ok(Leaf {
        not_after,
        serial: hex::encode(cert.raw_serial()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leafs_expiry_and_serial_are_read_from_the_chain() {
        let mut params = rcgen::CertificateParams::new(vec!["a.tunnel.test".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 12, 2);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x0a, 0xbc, 0xde]));
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = params.self_signed(&key).unwrap().pem();
        let other = rcgen::CertificateParams::new(vec!["ca.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem();
        let got = leaf_of(&format!("{leaf}{other}")).unwrap();
        assert_eq!(got.serial, "0abcde");
        assert_eq!(
            got.not_after,
            "2031-12-02T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn garbage_is_refused_in_words() {
        let e = leaf_of("not a certificate").unwrap_err().to_string();
        assert!(e.contains("not PEM"), "{e}");
        let e = leaf_of("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a CERTIFICATE"), "{e}");
    }
}
