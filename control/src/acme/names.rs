//! What a certificate is for and where its DNS-01 challenges are answered: the names a
//! subject's certificate covers, and the name of each challenge's TXT record.

use sha2::{Digest, Sha256};

/// The label under each zone that holds the custom domains' challenge targets:
/// `<hash>._acme.<zone>`. Not a name a tunnel can hold (an underscore), and two labels
/// below the apex, where pdns-backend computes no connect-name answer.
pub const TARGET_PARENT_LABEL: &str = "_acme";

/// What one certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A zone control serves: its apex and `*.<zone>`.
    Zone(String),
    /// A verified custom domain; its challenge is answered through the user's CNAME to a
    /// target under `zone` (the zone control writes the TXT record in).
    CustomDomain {
        /// The domain.
        domain: String,
        /// The zone holding the challenge target.
        zone: String,
    },
}

impl Subject {
    /// The key of the subject's row: the zone or the domain.
    pub fn key(&self) -> &str {
        match self {
            Subject::Zone(zone) => zone,
            Subject::CustomDomain { domain, .. } => domain,
        }
    }

    /// `zone` or `custom_domain`, as stored.
    pub fn kind(&self) -> &'static str {
        match self {
            Subject::Zone(_) => "zone",
            Subject::CustomDomain { .. } => "custom_domain",
        }
    }

    /// The names the certificate covers: apex first, then the wildcard.
    pub fn names(&self) -> Vec<String> {
        match self {
            Subject::Zone(zone) => vec![zone.clone(), format!("*.{zone}")],
            Subject::CustomDomain { domain, .. } => vec![domain.clone()],
        }
    }

    /// The zone the challenge records are written in.
    pub fn record_zone(&self) -> &str {
        match self {
            Subject::Zone(zone) => zone,
            Subject::CustomDomain { zone, .. } => zone,
        }
    }

    /// Where the TXT answer to the challenge of `identifier` (a name of the certificate,
    /// without `*.`) is written: `_acme-challenge.<zone>` for a zone (the apex's and the
    /// wildcard's challenges both live there), the CNAME target for a custom domain.
    pub fn challenge_record(&self, identifier: &str) -> String {
        match self {
            Subject::Zone(_) => challenge_name(identifier),
            Subject::CustomDomain { domain, zone } => custom_domain_target(domain, zone),
        }
    }
}

/// `_acme-challenge.<name>`, where an ACME server looks for a DNS-01 answer (RFC 8555 §8.4).
pub fn challenge_name(name: &str) -> String {
    format!("_acme-challenge.{}", name.trim_start_matches("*."))
}

/// The stable name a custom domain's `_acme-challenge` CNAME points to:
/// `<first 16 bytes of SHA-256(domain), hex>._acme.<zone>`. Derived from the domain alone, so
/// it never changes for a domain, and distinct per domain so one user's record cannot answer
/// for another's.
pub fn custom_domain_target(domain: &str, zone: &str) -> String {
    let digest = Sha256::digest(domain.trim_end_matches('.').to_ascii_lowercase().as_bytes());
    format!(
        "{}.{TARGET_PARENT_LABEL}.{zone}",
        hex::encode(&digest[..16])
    )
}

/// The record a user adds at their own DNS so that control can answer their domain's
/// challenges: `_acme-challenge.<domain> CNAME <target>`.
pub fn custom_domain_cname(domain: &str, zone: &str) -> (String, String) {
    (challenge_name(domain), custom_domain_target(domain, zone))
}

/// A TXT record's content as the generic SQL schema stores it: the value quoted.
pub fn txt_content(value: &str) -> String {
    format!("\"{value}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zone_certificate_covers_apex_and_wildcard_with_one_challenge_name() {
        let z = Subject::Zone("a.tunnel.test".into());
        assert_eq!(z.names(), vec!["a.tunnel.test", "*.a.tunnel.test"]);
        assert_eq!(
            z.challenge_record("a.tunnel.test"),
            "_acme-challenge.a.tunnel.test"
        );
        assert_eq!(
            z.challenge_record("*.a.tunnel.test"),
            "_acme-challenge.a.tunnel.test"
        );
        assert_eq!((z.key(), z.kind()), ("a.tunnel.test", "zone"));
    }

    #[test]
    fn custom_domain_targets_are_stable_distinct_and_under_the_zone() {
        let t = custom_domain_target("shop.example.com", "a.tunnel.test");
        assert_eq!(
            t,
            custom_domain_target("Shop.Example.com.", "a.tunnel.test")
        );
        assert_ne!(
            t,
            custom_domain_target("shop2.example.com", "a.tunnel.test")
        );
        let (label, rest) = t.split_once('.').unwrap();
        assert_eq!(rest, "_acme.a.tunnel.test");
        assert_eq!(label.len(), 32);
        assert!(label.chars().all(|c| c.is_ascii_hexdigit()));
        let d = Subject::CustomDomain {
            domain: "shop.example.com".into(),
            zone: "a.tunnel.test".into(),
        };
        assert_eq!(d.challenge_record("shop.example.com"), t);
        assert_eq!(d.names(), vec!["shop.example.com"]);
        assert_eq!(
            custom_domain_cname("shop.example.com", "a.tunnel.test"),
            ("_acme-challenge.shop.example.com".to_string(), t)
        );
    }

    #[test]
    fn txt_values_are_quoted() {
        assert_eq!(txt_content("abc-_1"), "\"abc-_1\"");
    }
}
