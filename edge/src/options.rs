//! Tunnel options given as words of the SSH command (`ssh ... host b:user:pass w:10.0.0.0/8`):
//! visitor auth, IP allowlist, header rules and proxy switches.

use hyper::header::{HeaderName, HeaderValue};
use ipnet::IpNet;
use nearhop_wire::TunnelKind;
use std::net::IpAddr;
use thiserror::Error;

/// Most option words accepted in one command; more is an attack or a mistake.
pub const MAX_OPTIONS: usize = 64;

/// Visitor-side behaviour of a tunnel, as asked for by its creator.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TunnelOptions {
    /// `b:user:pass`: accepted basic-auth pairs (any one passes).
    pub basic_auth: Vec<(String, String)>,
    /// `k:KEY`: accepted bearer keys (any one passes).
    pub bearer_keys: Vec<String>,
    /// `w:CIDR[,CIDR]`: visitor addresses allowed; empty allows everyone.
    pub allow: Vec<IpNet>,
    /// Header rules applied to each request in order.
    pub header_rules: Vec<HeaderRule>,
    /// `x:https`: redirect plain HTTP visitors to HTTPS.
    pub https_redirect: bool,
    /// `x:passpreflight`: CORS preflight requests skip auth.
    pub pass_preflight: bool,
    /// `x:xff`: accepted for compatibility; X-Forwarded-* are always added.
    pub xff: bool,
    /// `x:noreverseproxy`: the visitor's connection is routed by the `Host` of its first
    /// request, then spliced to the tunnel byte for byte (no header added or changed).
    pub raw_passthrough: bool,
    /// `inspect`: the request inspector records from the first request, before the
    /// owner opens it (`-L4300:localhost:4300`).
    pub inspect: bool,
}

/// One header rule.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderRule {
    /// `a:Name:Value`: append a header.
    Add(HeaderName, HeaderValue),
    /// `u:Name:Value`: replace a header (set it if absent).
    Update(HeaderName, HeaderValue),
    /// `r:Name`: remove a header.
    Remove(HeaderName),
}

/// Why an option word was refused; shown to the SSH user.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OptionError {
    /// Not a known option.
    #[error("unknown option {0:?}; options are b:user:pass k:key w:cidr a:Name:Value u:Name:Value r:Name x:https x:xff x:passpreflight x:noreverseproxy inspect")]
    Unknown(String),
    /// A known option with a malformed value.
    #[error("option {0:?} is malformed: {1}")]
    Malformed(String, &'static str),
    /// Options that cannot hold together.
    #[error("{0}")]
    Conflict(&'static str),
    /// Too many words.
    #[error("too many options (at most {MAX_OPTIONS})")]
    TooMany,
}

/// Longest `b:user:password` or `k:key`: a visitor sends it in one header field, and the
/// edge reads a request head of at most `visitor_max_header_bytes` (64 KiB by default), so
/// a longer one could never be presented; 4 KiB is far past any password or API key.
const MAX_CREDENTIAL_LEN: usize = 4096;

/// The refusal of a credential over [`MAX_CREDENTIAL_LEN`].
const CREDENTIAL_TOO_LONG: &str =
    "longer than 4,096 characters: visitors send it in a request header, so keep it short";

/// Request headers that say how the request is framed and how its connection is kept: the
/// edge sets them for the hop to the local service, so a header rule on one would cut the
/// body short, leave the service waiting for bytes that never come, or break the
/// connection.
const EDGE_OWNED_HEADERS: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];

/// The refusal of a header rule for `Host` other than `u:Host:NAME`.
const HOST_IS_ONE: &str =
    "a request carries exactly one Host; set it with u:Host:NAME (a: would add a second, r: leave none)";

/// Refuses a header rule for one of [`EDGE_OWNED_HEADERS`].
fn refuse_edge_owned(name: &HeaderName) -> Result<(), &'static str> {
    if EDGE_OWNED_HEADERS.contains(&name.as_str()) {
        return Err(
            "Content-Length, Transfer-Encoding and the connection's own headers \
                    (Connection, Keep-Alive, Upgrade, TE, Trailer, Proxy-Connection) are the \
                    edge's to set for each request; a:, u: and r: cannot change them",
        );
    }
    Ok(())
}

impl TunnelOptions {
    /// Parses the command words.
    pub fn parse(command: &str) -> Result<TunnelOptions, OptionError> {
        let mut o = TunnelOptions::default();
        let words: Vec<&str> = command.split_whitespace().collect();
        if words.len() > MAX_OPTIONS {
            return Err(OptionError::TooMany);
        }
        for word in words {
            if word.eq_ignore_ascii_case("inspect") {
                o.inspect = true;
                continue;
            }
            o.add(word)?;
        }
        if o.raw_passthrough && o.acts_on_requests() {
            return Err(OptionError::Conflict(
                "x:noreverseproxy passes visitors' bytes through untouched, so b:, k:, a:, u:, r: and x:https cannot apply; drop those or drop x:noreverseproxy (w: still works)",
            ));
        }
        Ok(o)
    }

    fn add(&mut self, word: &str) -> Result<(), OptionError> {
        let shown: String = word.chars().take(60).collect();
        let bad = |why| OptionError::Malformed(shown.clone(), why);
        let (key, rest) = word
            .split_once(':')
            .ok_or_else(|| OptionError::Unknown(shown.clone()))?;
        match key {
            "b" => {
                let (user, pass) = rest
                    .split_once(':')
                    .ok_or_else(|| bad("expected b:user:password"))?;
                if user.is_empty() || pass.is_empty() {
                    return Err(bad("user and password must not be empty"));
                }
                if rest.len() > MAX_CREDENTIAL_LEN {
                    return Err(bad(CREDENTIAL_TOO_LONG));
                }
                self.basic_auth.push((user.to_string(), pass.to_string()));
            }
            "k" => {
                if rest.is_empty() {
                    return Err(bad("expected k:key"));
                }
                if rest.len() > MAX_CREDENTIAL_LEN {
                    return Err(bad(CREDENTIAL_TOO_LONG));
                }
                self.bearer_keys.push(rest.to_string());
            }
            "w" => {
                for cidr in rest.split(',') {
                    let net = cidr
                        .parse::<IpNet>()
                        .or_else(|_| cidr.parse::<IpAddr>().map(IpNet::from))
                        .map_err(|_| bad("expected w:CIDR[,CIDR], e.g. w:203.0.113.0/24"))?;
                    self.allow.push(net);
                }
            }
            "a" | "u" => {
                let (name, value) = rest
                    .split_once(':')
                    .ok_or_else(|| bad("expected Name:Value"))?;
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| bad("not a valid header name"))?;
                let value =
                    HeaderValue::from_str(value).map_err(|_| bad("not a valid header value"))?;
                refuse_edge_owned(&name).map_err(bad)?;
                if name == hyper::header::HOST {
                    if key == "a" {
                        return Err(bad(HOST_IS_ONE));
                    }
                    if value.is_empty() {
                        return Err(bad("u:Host needs a host name, e.g. u:Host:myapp.local"));
                    }
                }
                self.header_rules.push(if key == "a" {
                    HeaderRule::Add(name, value)
                } else {
                    HeaderRule::Update(name, value)
                });
            }
            "r" => {
                let name = HeaderName::from_bytes(rest.as_bytes())
                    .map_err(|_| bad("not a valid header name"))?;
                refuse_edge_owned(&name).map_err(bad)?;
                if name == hyper::header::HOST {
                    return Err(bad(HOST_IS_ONE));
                }
                self.header_rules.push(HeaderRule::Remove(name));
            }
            "x" => match rest {
                "https" => self.https_redirect = true,
                "xff" => self.xff = true,
                "passpreflight" => self.pass_preflight = true,
                "noreverseproxy" => self.raw_passthrough = true,
                _ => return Err(OptionError::Unknown(shown)),
            },
            _ => return Err(OptionError::Unknown(shown)),
        }
        Ok(())
    }

    /// Refuses options a tunnel of `kind` cannot apply: a `tcp` or `tls` tunnel carries
    /// bytes, not HTTP, so only `w:` means something there.
    pub fn check_kind(&self, kind: TunnelKind) -> Result<(), OptionError> {
        let http_only = self.acts_on_requests() || self.pass_preflight || self.raw_passthrough;
        if kind != TunnelKind::Http && http_only {
            return Err(OptionError::Conflict(match kind {
                TunnelKind::Tls => "a tls tunnel passes TLS through untouched, so only w: applies; b:, k:, a:, u:, r: and the x: options need an http tunnel",
                _ => "a tcp tunnel carries bytes, not HTTP, so only w: applies; b:, k:, a:, u:, r: and the x: options need an http tunnel",
            }));
        }
        Ok(())
    }

    /// Whether a visitor address passes the allowlist.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }

    /// Whether the options answer or change HTTP requests (auth, header rules, the HTTPS
    /// redirect): what neither raw passthrough nor a non-HTTP tunnel can do.
    fn acts_on_requests(&self) -> bool {
        self.needs_auth() || !self.header_rules.is_empty() || self.https_redirect
    }

    /// Whether any visitor auth is configured.
    pub fn needs_auth(&self) -> bool {
        !self.basic_auth.is_empty() || !self.bearer_keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_rules_on_the_framing_headers_and_a_second_or_no_host_are_refused() {
        for words in [
            "u:Content-Length:5",
            "a:Transfer-Encoding:chunked",
            "r:content-length",
            "u:Connection:close",
            "a:Upgrade:websocket",
            "r:TE",
            "a:Host:other.example",
            "r:Host",
            "u:Host:",
        ] {
            let e = TunnelOptions::parse(words).expect_err(words);
            assert!(matches!(e, OptionError::Malformed(..)), "{words}: {e}");
        }
        let e = TunnelOptions::parse("u:Content-Length:5")
            .unwrap_err()
            .to_string();
        assert!(e.contains("are the edge's to set"), "{e}");
        let long = format!("k:{}", "k".repeat(MAX_CREDENTIAL_LEN + 1));
        assert!(matches!(
            TunnelOptions::parse(&long),
            Err(OptionError::Malformed(..))
        ));
        let long = format!("b:u:{}", "p".repeat(MAX_CREDENTIAL_LEN));
        assert!(matches!(
            TunnelOptions::parse(&long),
            Err(OptionError::Malformed(..))
        ));
        TunnelOptions::parse(&format!("k:{}", "k".repeat(MAX_CREDENTIAL_LEN))).expect("4 KiB");
        // Setting Host, and rules on any other header, stay as they were.
        for words in [
            "u:Host:myapp.local",
            "a:X-Length:5",
            "r:X-Forwarded-For",
            "u:Expect:x",
        ] {
            TunnelOptions::parse(words).expect(words);
        }
    }

    #[test]
    fn all_option_kinds_parse() {
        let o = TunnelOptions::parse(
            "b:alice:pw:with:colons k:key1 w:10.0.0.0/8,192.0.2.7 a:X-A:1 u:Host:example.com r:Cookie x:https x:xff x:passpreflight",
        )
        .unwrap();
        assert_eq!(
            o.basic_auth,
            vec![("alice".into(), "pw:with:colons".into())]
        );
        assert_eq!(o.bearer_keys, vec!["key1".to_string()]);
        assert_eq!(o.allow.len(), 2);
        assert_eq!(o.header_rules.len(), 3);
        assert!(o.https_redirect && o.xff && o.pass_preflight);
        assert!(!o.raw_passthrough);
        let o = TunnelOptions::parse("x:noreverseproxy w:10.0.0.0/8").unwrap();
        assert!(o.raw_passthrough && o.allow.len() == 1 && !o.inspect);
        assert!(TunnelOptions::parse("b:a:b Inspect").unwrap().inspect);
    }

    #[test]
    fn allowlist_matches_cidrs_and_mapped_v6() {
        let o = TunnelOptions::parse("w:10.0.0.0/8").unwrap();
        assert!(o.allows("10.1.2.3".parse().unwrap()));
        assert!(o.allows("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!o.allows("192.0.2.1".parse().unwrap()));
        assert!(TunnelOptions::default().allows("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn bad_options_are_refused_with_reasons() {
        assert!(matches!(
            TunnelOptions::parse("zz"),
            Err(OptionError::Unknown(_))
        ));
        assert!(matches!(
            TunnelOptions::parse("b:onlyuser"),
            Err(OptionError::Malformed(..))
        ));
        assert!(matches!(
            TunnelOptions::parse("w:300.1.1.1/8"),
            Err(OptionError::Malformed(..))
        ));
        assert!(matches!(
            TunnelOptions::parse("a:Bad Name:v"),
            Err(OptionError::Malformed(..))
        ));
        assert!(matches!(
            TunnelOptions::parse("a:X:\u{1}"),
            Err(OptionError::Malformed(..))
        ));
        let e = TunnelOptions::parse("x:noreverseproxy b:alice:pw").unwrap_err();
        assert!(e.to_string().contains("cannot apply"), "{e}");
        let e = TunnelOptions::parse("a:X-A:1 x:noreverseproxy").unwrap_err();
        assert!(matches!(e, OptionError::Conflict(_)), "{e}");
        let auth = TunnelOptions::parse("b:alice:pw w:10.0.0.0/8").unwrap();
        assert!(auth.check_kind(TunnelKind::Http).is_ok());
        let e = auth.check_kind(TunnelKind::Tls).unwrap_err().to_string();
        assert!(e.contains("only w: applies"), "{e}");
        assert!(auth.check_kind(TunnelKind::Tcp).is_err());
        let allow_only = TunnelOptions::parse("w:10.0.0.0/8 x:xff").unwrap();
        assert!(allow_only.check_kind(TunnelKind::Tcp).is_ok());
        assert_eq!(
            TunnelOptions::parse(&"x:xff ".repeat(MAX_OPTIONS + 1)),
            Err(OptionError::TooMany)
        );
    }
}
