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

/// Whether `id` is a valid edge id (control refuses any other at registration; an edge's mesh
/// listener asks control about no other): 1-63 of a-z, 0-9, `.`, `_`, `-`, starting alphanumeric.
pub fn valid_edge_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

/// The mailbox label of every zone's SOA contact (`hostmaster.<zone>`, RFC 1035 §3.3.13's
/// RNAME), which control seeds; reserved, so that no tunnel answers for the contact's name.
pub const SOA_CONTACT_LABEL: &str = "hostmaster";

/// Labels that are never handed to a tunnel, whatever the zone: infrastructure names, the
/// role mailboxes of RFC 2142 (the SOA contact among them) and names that invite phishing.
/// Control also refuses, per zone, the regions' edge host names and in-zone name servers
/// (`Config::is_service_label` in control).
pub const RESERVED_LABELS: &[&str] = &[
    SOA_CONTACT_LABEL,
    "postmaster",
    "webmaster",
    "abuse",
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

/// Why a requested label or name was refused. Each says what is wrong with which part.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// The label is empty.
    #[error("the name is empty")]
    Empty,
    /// A dotted name with an empty label: two dots in a row, or a dot at the start.
    #[error("the name has an empty label (two dots in a row, or a dot at the start)")]
    EmptyLabel,
    /// A one-label name (a tunnel's label) longer than a DNS label may be.
    #[error("the name is {0} characters long; at most 63 are allowed")]
    TooLong(usize),
    /// One label of a dotted name is longer than a DNS label may be.
    #[error(
        "the label {label:?} is {len} characters long; each label (the parts between the \
         dots) may have at most 63"
    )]
    LabelTooLong {
        /// The label's first characters (at most 20, then `…`).
        label: String,
        /// Its length in characters.
        len: usize,
    },
    /// A dotted name longer than a DNS name may be.
    #[error("the name is {0} characters long; a DNS name may have at most 253")]
    NameTooLong(usize),
    /// A domain that is a single label.
    #[error("{0:?} is a single label; a domain needs at least two, such as example.com")]
    SingleLabel(String),
    /// The label holds a character outside a-z, 0-9 and '-'.
    #[error("the name may only hold the letters a-z, digits and '-' (found {0:?})")]
    BadCharacter(char),
    /// The label starts or ends with a hyphen.
    #[error("the name may not start or end with '-'")]
    EdgeHyphen,
    /// A label of a dotted name starts or ends with a hyphen.
    #[error("the label {0:?} starts or ends with '-', which no label may")]
    LabelEdgeHyphen(String),
    /// The label has '--' in positions 3-4, which marks IDNA (xn--) and other tagged labels.
    #[error("the name may not have '--' in its third and fourth characters")]
    TaggedLabel,
    /// The label is reserved for the service itself.
    #[error("the name {0:?} is reserved")]
    Reserved(String),
    /// A dotted name that is not one label directly under the tunnel's zone.
    #[error("{name:?} is not a name directly under the zone {zone}")]
    OutsideZone {
        /// The name asked for.
        name: String,
        /// The zone the tunnel would be in.
        zone: String,
    },
}

/// How a label is quoted in a refusal: its first 20 characters, then `…` when longer.
fn quoted_label(label: &str) -> String {
    const SHOWN: usize = 20;
    if label.chars().count() <= SHOWN {
        label.to_string()
    } else {
        let mut shown: String = label.chars().take(SHOWN).collect();
        shown.push('…');
        shown
    }
}

/// Checks the length of one label of a dotted name.
fn check_label_len(label: &str) -> Result<(), NameError> {
    if label.is_empty() {
        return Err(NameError::EmptyLabel);
    }
    let len = label.chars().count();
    if len > MAX_LABEL_LEN {
        return Err(NameError::LabelTooLong {
            label: quoted_label(label),
            len,
        });
    }
    Ok(())
}

/// Checks the length of a whole dotted name (without its trailing dot).
fn check_name_len(name: &str) -> Result<(), NameError> {
    let len = name.chars().count();
    if len > MAX_NAME_LEN {
        return Err(NameError::NameTooLong(len));
    }
    Ok(())
}

/// Which names a client may ask for, in words, for refusals.
pub const ALLOWED_NAMES: &str = "ask for one label of letters a-z, digits and '-' \
     (-R myblog:0:localhost:8000), or that label followed by the service's zone, \
     as printed in your tunnel's URL";

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
/// `-R`, `Ok(None)` when the address is a plain one ([`PLAIN_BIND_ADDRESSES`]), or why the
/// address cannot be a name.
///
/// A single label is checked with [`normalize_label`] and returned case-folded. A dotted
/// name is kept whole (lowercase, without the trailing dot) so that a user may paste the
/// URL they were given (`androidblog.a.tunnel.test`); only control knows the zones, and it
/// accepts it only as one label directly under the tunnel's zone ([`label_in_zone`]). Nothing
/// is rewritten: `a.b`, `host.evil.example` and `../x` are refused, never shortened to a
/// label or dropped in favour of the default name.
pub fn requested_name(bind_address: &str) -> Result<Option<String>, NameError> {
    let address = bind_address.trim();
    let address = address.strip_suffix('.').unwrap_or(address);
    if PLAIN_BIND_ADDRESSES.contains(&address) {
        return Ok(None);
    }
    if !address.contains('.') {
        return normalize_label(address).map(Some);
    }
    check_name_len(address)?;
    for label in address.split('.') {
        check_label_len(label)?;
    }
    let mut labels = address.split('.');
    let first = labels.next().unwrap_or_default();
    let mut name = normalize_label(first)?;
    for label in labels {
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(NameError::BadCharacter(c));
        }
        name.push('.');
        name.push_str(&label.to_ascii_lowercase());
    }
    Ok(Some(name))
}

/// The label a requested name stands for in `zone`: a single label checked with
/// [`normalize_label`], or `label.<zone>` (any case, trailing dot or not). Any other dotted
/// name is refused with [`NameError::OutsideZone`].
pub fn label_in_zone(requested: &str, zone: &str) -> Result<String, NameError> {
    let name = requested.trim();
    let name = name.strip_suffix('.').unwrap_or(name);
    if !name.contains('.') {
        return normalize_label(name);
    }
    let outside = || NameError::OutsideZone {
        name: name.chars().take(MAX_NAME_LEN).collect(),
        zone: zone.to_string(),
    };
    let lower = name.to_ascii_lowercase();
    let label = lower
        .strip_suffix(zone)
        .and_then(|l| l.strip_suffix('.'))
        .ok_or_else(outside)?;
    if label.contains('.') {
        return Err(outside());
    }
    normalize_label(label)
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
    check_name_len(trimmed)?;
    let mut labels = Vec::new();
    for label in trimmed.split('.') {
        check_label_len(label)?;
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(NameError::BadCharacter(c));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(NameError::LabelEdgeHyphen(quoted_label(label)));
        }
        labels.push(label.to_ascii_lowercase());
    }
    if labels.len() < 2 {
        return Err(NameError::SingleLabel(quoted_label(trimmed)));
    }
    Ok(labels.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_ids_are_restricted() {
        assert!(valid_edge_id("ap-1"));
        assert!(!valid_edge_id("../x"));
        assert!(!valid_edge_id("AP"));
        assert!(!valid_edge_id(""));
        assert!(!valid_edge_id(&"a".repeat(64)));
    }

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
            assert_eq!(requested_name(plain), Ok(None), "{plain:?}");
        }
    }

    #[test]
    fn a_label_or_a_full_name_is_asked_for_as_given() {
        assert_eq!(
            requested_name("AndroidBlog"),
            Ok(Some("androidblog".into()))
        );
        assert_eq!(
            requested_name("AndroidBlog.a.tunnel.test."),
            Ok(Some("androidblog.a.tunnel.test".into()))
        );
        assert_eq!(
            label_in_zone("androidblog.a.tunnel.test", "a.tunnel.test").as_deref(),
            Ok("androidblog")
        );
        assert_eq!(
            label_in_zone("AndroidBlog.A.Tunnel.Test.", "a.tunnel.test").as_deref(),
            Ok("androidblog")
        );
        assert_eq!(
            label_in_zone("blog", "a.tunnel.test").as_deref(),
            Ok("blog")
        );
    }

    #[test]
    fn odd_bind_addresses_are_refused_not_rewritten() {
        // Each used to become another name silently: `a`, `host`, the default name.
        assert_eq!(requested_name("../x"), Err(NameError::EmptyLabel));
        assert_eq!(requested_name("a..b"), Err(NameError::EmptyLabel));
        assert_eq!(requested_name("a/b"), Err(NameError::BadCharacter('/')));
        assert_eq!(requested_name("**"), Err(NameError::BadCharacter('*')));
        assert_eq!(
            requested_name(&"a".repeat(1000)),
            Err(NameError::TooLong(1000))
        );
        assert_eq!(
            requested_name(&format!("a.{}", "b".repeat(300))),
            Err(NameError::NameTooLong(302))
        );
        assert_eq!(
            requested_name(&format!("{}.a.tunnel.test", "b".repeat(64))),
            Err(NameError::LabelTooLong {
                label: format!("{}…", "b".repeat(20)),
                len: 64
            })
        );
        for dotted in [
            "a.b",
            "host.evil.example",
            "x.y.a.tunnel.test",
            "a.tunnel.test",
        ] {
            let asked = requested_name(dotted).unwrap().unwrap();
            let e = label_in_zone(&asked, "a.tunnel.test").unwrap_err();
            assert!(matches!(e, NameError::OutsideZone { .. }), "{dotted}: {e}");
            assert!(e.to_string().contains("a.tunnel.test"), "{e}");
        }
        assert_eq!(
            label_in_zone("www.a.tunnel.test", "a.tunnel.test"),
            Err(NameError::Reserved("www".into()))
        );
        assert!(ALLOWED_NAMES.contains("-R myblog:0:localhost:8000"));
        assert!(
            !ALLOWED_NAMES.contains("  "),
            "no runs of spaces: {ALLOWED_NAMES}"
        );
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
        assert!(normalize_domain("a..example").is_err());
        assert!(normalize_domain("ex ample.com").is_err());
    }

    #[test]
    fn a_single_label_domain_is_refused_as_one_label_not_for_a_dot() {
        let e = normalize_domain("example").unwrap_err();
        assert_eq!(e, NameError::SingleLabel("example".into()));
        let text = e.to_string();
        assert!(text.contains("single label"), "{text}");
        assert!(text.contains("example.com"), "{text}");
        assert!(!text.contains("'.'"), "no dot to complain about: {text}");
        assert_eq!(
            normalize_domain("localhost."),
            Err(NameError::SingleLabel("localhost".into()))
        );
    }

    #[test]
    fn an_overlong_domain_is_measured_against_the_name_limit() {
        // 4 labels of 63 plus 3 dots: 255 characters, each label valid.
        let long = [&"a".repeat(63)[..]; 4].join(".");
        assert_eq!(long.len(), 255);
        let e = normalize_domain(&long).unwrap_err();
        assert_eq!(e, NameError::NameTooLong(255));
        let text = e.to_string();
        assert!(text.contains("255") && text.contains("253"), "{text}");
        assert!(!text.contains("63"), "63 is the label limit: {text}");
        let longest = [
            &"a".repeat(63)[..],
            &"a".repeat(63),
            &"a".repeat(63),
            &"a".repeat(61),
        ]
        .join(".");
        assert_eq!(longest.len(), 253);
        assert!(normalize_domain(&longest).is_ok());
    }

    #[test]
    fn an_overlong_label_in_a_domain_is_named_with_its_length() {
        let domain = format!("shop.{}.example", "x".repeat(70));
        let e = normalize_domain(&domain).unwrap_err();
        assert_eq!(
            e,
            NameError::LabelTooLong {
                label: format!("{}…", "x".repeat(20)),
                len: 70
            }
        );
        let text = e.to_string();
        assert!(
            text.contains("label") && text.contains("70") && text.contains("63"),
            "{text}"
        );
        assert!(!text.contains("the name is 70"), "{text}");
        assert!(normalize_domain(&format!("shop.{}.example", "x".repeat(63))).is_ok());
    }

    #[test]
    fn a_label_with_a_hyphen_at_an_end_is_named() {
        let e = normalize_domain("shop.-bad.example").unwrap_err();
        assert_eq!(e, NameError::LabelEdgeHyphen("-bad".into()));
        assert!(e.to_string().contains("\"-bad\""), "{e}");
    }

    #[test]
    fn the_soa_contact_and_role_mailboxes_are_reserved() {
        for label in [
            "hostmaster",
            "HostMaster",
            "postmaster",
            "webmaster",
            "abuse",
        ] {
            assert_eq!(
                normalize_label(label),
                Err(NameError::Reserved(label.to_ascii_lowercase())),
                "{label}"
            );
        }
        assert!(RESERVED_LABELS.contains(&SOA_CONTACT_LABEL));
    }
}
