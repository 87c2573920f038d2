//! Zone and label rules: what a tunnel name may be, and how names are spelled in the DNS tables.

use rand::Rng;
use thiserror::Error;

/// Longest DNS label (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;
/// Longest presentation name without the trailing dot (RFC 1035: 255 octets on the wire).
pub const MAX_NAME_LEN: usize = 253;
/// Length of the random labels given to free tunnels: 36^8 ≈ 2.8e12 names, so a collision
/// among even a million live free tunnels has odds of about 1 in 2.8 million per draw.
pub const RANDOM_LABEL_LEN: usize = 8;

/// Labels that are never handed to a tunnel, whatever the zone: infrastructure names and
/// names that invite phishing. Control also refuses, per zone, the regions' edge host names
/// and in-zone name servers (`Config::is_service_label` in control).
pub const RESERVED_LABELS: &[&str] = &[
    "www",
    "ns",
    "ns1",
    "ns2",
    "ns3",
    "ns4",
    "mail",
    "smtp",
    "imap",
    "pop",
    "mx",
    "api",
    "admin",
    "root",
    "control",
    "core",
    "edge",
    "edges",
    "status",
    "metrics",
    "dns",
    "login",
    "auth",
    "account",
    "accounts",
    "billing",
    "support",
    "help",
    "docs",
    "dashboard",
    "connect",
    "tunnel",
    "tunnels",
    "localhost",
    "wpad",
    "autoconfig",
    "autodiscover",
    "_acme-challenge",
];

/// Why a requested label was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// The label is empty.
    #[error("the name is empty")]
    Empty,
    /// The label is longer than a DNS label may be.
    #[error("the name is {0} characters long; at most 63 are allowed")]
    TooLong(usize),
    /// The label holds a character outside a-z, 0-9 and '-'.
    #[error("the name may only hold the letters a-z, digits and '-' (found {0:?})")]
    BadCharacter(char),
    /// The label starts or ends with a hyphen.
    #[error("the name may not start or end with '-'")]
    EdgeHyphen,
    /// The label has '--' in positions 3-4, which marks IDNA (xn--) and other tagged labels.
    #[error("the name may not have '--' in its third and fourth characters")]
    TaggedLabel,
    /// The label is reserved for the service itself.
    #[error("the name {0:?} is reserved")]
    Reserved(String),
}

/// Checks a requested tunnel label and returns it case-folded.
///
/// Rules: RFC 1123 host label (letters, digits, hyphen; no hyphen at either end), 1 to 63
/// characters, ASCII only (a Unicode name must be asked for in its punycode form, which the
/// `--` rule then refuses: we do not hand out IDN labels, a homograph-phishing favourite),
/// not reserved.
pub fn normalize_label(requested: &str) -> Result<String, NameError> {
    if requested.is_empty() {
        return Err(NameError::Empty);
    }
    let chars = requested.chars().count();
    if chars > MAX_LABEL_LEN {
        return Err(NameError::TooLong(chars));
    }
    if let Some(c) = requested
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(NameError::BadCharacter(c));
    }
    let label = requested.to_ascii_lowercase();
    if label.starts_with('-') || label.ends_with('-') {
        return Err(NameError::EdgeHyphen);
    }
    if label.len() >= 4 && &label[2..4] == "--" {
        return Err(NameError::TaggedLabel);
    }
    if RESERVED_LABELS.contains(&label.as_str()) {
        return Err(NameError::Reserved(label));
    }
    Ok(label)
}

/// Bind addresses of `-R [bind:]port:host:hostport` that name an interface rather than a
/// tunnel, and so ask for no particular name: empty (what OpenSSH sends for `-R 0:...` with
/// `GatewayPorts`, and for `*`), `*` (OpenSSH's "all interfaces"; a client other than OpenSSH
/// may send it as is), the wildcard and loopback addresses, and `localhost` (OpenSSH's
/// default when no bind address is given).
pub const PLAIN_BIND_ADDRESSES: &[&str] =
    &["", "*", "localhost", "0.0.0.0", "127.0.0.1", "::", "::1"];

/// The one bind-address rule: the tunnel name a client asked for with the bind address of
/// `-R`, or `None` when the address is a plain one ([`PLAIN_BIND_ADDRESSES`]).
///
/// A full host name asks for its first label (`androidblog.a.tunnel.test` → `androidblog`),
/// so that a user may paste the URL they were given. The result is not checked yet: the
/// edge sends it to control as `requested_name`, and control checks it with
/// [`normalize_label`] (so a `*` that reaches control as a name is an invalid name, not "any").
/// It is cut to [`MAX_NAME_LEN`] characters, which keeps a hostile bind address from growing
/// the request while still too long to pass as a label.
pub fn requested_name(bind_address: &str) -> Option<String> {
    let address = bind_address.trim().trim_end_matches('.');
    if PLAIN_BIND_ADDRESSES.contains(&address) {
        return None;
    }
    let label = address.split('.').next().unwrap_or(address);
    Some(label.chars().take(MAX_NAME_LEN).collect())
}

/// The replication slot of `region`'s streaming replica: `replica_<region>`, with `-` written
/// as `_` (slot names allow only lowercase letters, digits and underscores). Control finds a
/// stopped replica by it; the local stack and the Ansible roles create it.
pub fn replica_slot_name(region: &str) -> String {
    format!("replica_{}", region.replace('-', "_"))
}

/// A fresh random label for a free tunnel: lowercase letters and digits, starting with a letter.
pub fn random_label() -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    const ALPHANUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let mut label = String::with_capacity(RANDOM_LABEL_LEN);
    label.push(LETTERS[rng.gen_range(0..LETTERS.len())] as char);
    for _ in 1..RANDOM_LABEL_LEN {
        label.push(ALPHANUM[rng.gen_range(0..ALPHANUM.len())] as char);
    }
    label
}

/// Normalizes a DNS name the way the PowerDNS generic SQL schema stores it: lowercase,
/// without the trailing dot. Returns `None` for names that cannot be valid (too long,
/// empty labels, bytes outside printable ASCII).
pub fn storage_name(name: &str) -> Option<String> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.len() > MAX_NAME_LEN {
        return None;
    }
    if trimmed.is_empty() {
        return Some(String::new());
    }
    let mut out = String::with_capacity(trimmed.len());
    for label in trimmed.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL_LEN {
            return None;
        }
        if !label.bytes().all(|b| b.is_ascii_graphic()) {
            return None;
        }
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&label.to_ascii_lowercase());
    }
    Some(out)
}

/// Checks a custom domain (the user's own name that CNAMEs to a tunnel): a host name of
/// at least two labels, each an RFC 1123 label. Returns it lowercase without a trailing dot.
pub fn normalize_domain(domain: &str) -> Result<String, NameError> {
    let trimmed = domain.strip_suffix('.').unwrap_or(domain);
    if trimmed.is_empty() {
        return Err(NameError::Empty);
    }
    if trimmed.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(trimmed.len()));
    }
    let mut labels = Vec::new();
    for label in trimmed.split('.') {
        if label.is_empty() {
            return Err(NameError::Empty);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(NameError::TooLong(label.len()));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(NameError::BadCharacter(c));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(NameError::EdgeHyphen);
        }
        labels.push(label.to_ascii_lowercase());
    }
    if labels.len() < 2 {
        return Err(NameError::BadCharacter('.'));
    }
    Ok(labels.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_bind_addresses_ask_for_no_name() {
        for plain in [
            "",
            " ",
            "*",
            "localhost",
            "localhost.",
            "0.0.0.0",
            "127.0.0.1",
            "::",
            "::1",
        ] {
            assert_eq!(requested_name(plain), None, "{plain:?}");
        }
    }

    #[test]
    fn a_bind_address_that_is_a_name_asks_for_its_first_label() {
        assert_eq!(
            requested_name("androidblog").as_deref(),
            Some("androidblog")
        );
        assert_eq!(
            requested_name("AndroidBlog.a.tunnel.test.").as_deref(),
            Some("AndroidBlog")
        );
        assert_eq!(
            requested_name(&"a".repeat(1000)).map(|n| n.len()),
            Some(MAX_NAME_LEN)
        );
        // Not plain, so passed on and refused by the label rules, not read as "any".
        assert_eq!(requested_name("**").as_deref(), Some("**"));
        assert!(normalize_label("**").is_err());
    }

    #[test]
    fn slot_names_follow_the_region_with_underscores() {
        assert_eq!(replica_slot_name("eu"), "replica_eu");
        assert_eq!(replica_slot_name("eu-west"), "replica_eu_west");
    }

    #[test]
    fn label_is_case_folded() {
        assert_eq!(normalize_label("AndroidBlog").unwrap(), "androidblog");
    }

    #[test]
    fn hostile_labels_are_refused() {
        assert_eq!(normalize_label(""), Err(NameError::Empty));
        assert_eq!(normalize_label("../etc"), Err(NameError::BadCharacter('.')));
        assert_eq!(normalize_label("*"), Err(NameError::BadCharacter('*')));
        assert_eq!(
            normalize_label("bl\u{f6}g"),
            Err(NameError::BadCharacter('\u{f6}'))
        );
        assert_eq!(
            normalize_label("a'; drop table records;--"),
            Err(NameError::BadCharacter('\''))
        );
        assert_eq!(
            normalize_label(&"a".repeat(64)),
            Err(NameError::TooLong(64))
        );
        assert_eq!(normalize_label("-a"), Err(NameError::EdgeHyphen));
        assert_eq!(
            normalize_label("xn--bcher-kva"),
            Err(NameError::TaggedLabel)
        );
        assert_eq!(
            normalize_label("WWW"),
            Err(NameError::Reserved("www".into()))
        );
        assert_eq!(normalize_label("a\0b"), Err(NameError::BadCharacter('\0')));
    }

    #[test]
    fn longest_label_is_accepted() {
        assert!(normalize_label(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn random_labels_are_valid_labels() {
        for _ in 0..1000 {
            let l = random_label();
            assert_eq!(l.len(), RANDOM_LABEL_LEN);
            assert_eq!(normalize_label(&l).unwrap(), l);
        }
    }

    #[test]
    fn storage_name_matches_gsql_spelling() {
        assert_eq!(
            storage_name("Foo.A.Tunnel.Test.").as_deref(),
            Some("foo.a.tunnel.test")
        );
        assert_eq!(storage_name("a..b"), None);
        assert_eq!(storage_name(&format!("{}.test", "a".repeat(64))), None);
        assert_eq!(storage_name(&"a.".repeat(130)), None);
        assert_eq!(storage_name("a b.test"), None);
    }

    #[test]
    fn custom_domains_need_two_labels() {
        assert_eq!(
            normalize_domain("MyDomain.Example.").unwrap(),
            "mydomain.example"
        );
        assert!(normalize_domain("localhost").is_err());
        assert!(normalize_domain("a..example").is_err());
        assert!(normalize_domain("ex ample.com").is_err());
    }
}
