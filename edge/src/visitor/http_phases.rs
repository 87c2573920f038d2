//! The visitor request's phases, in a fixed order over one context: HTTPS redirect, visitor
//! auth (request filters that may answer), then forwarding headers and the creator's header
//! rules (upstream request filters). Each phase is tested alone. The allowlist (`w:`) is not
//! a phase: the routing step (`visitor::routing`) decides it, once for every listener.

use crate::options::{HeaderRule, TunnelOptions};
use crate::visitor::auth_throttle::AuthThrottle;
use crate::visitor::pages::{self, ProxyBody};
use base64::Engine;
use hyper::header::{
    HeaderName, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, LOCATION, ORIGIN, TRANSFER_ENCODING,
};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use nearhop_wire::constant_time_eq;
use std::net::SocketAddr;

/// What the phases know about one visitor request.
pub struct RequestCtx<'a> {
    /// The visitor.
    pub visitor: SocketAddr,
    /// The `Host` it asked for, lowercase, without port.
    pub host: &'a str,
    /// Scheme the visitor used.
    pub scheme: &'static str,
    /// Port of the edge's HTTPS URLs (443 is left out of them).
    pub https_port: u16,
    /// The tunnel's options.
    pub options: &'a TunnelOptions,
    /// Failed credentials so far, and the tunnel's id they are counted under.
    pub throttle: Option<(&'a AuthThrottle, i64)>,
}

/// Runs every phase; `Some` is the edge's own answer and the request goes no further.
pub fn run<B>(ctx: &RequestCtx<'_>, req: &mut Request<B>) -> Option<Response<ProxyBody>> {
    if let Some(resp) = https_redirect(ctx, req) {
        return Some(resp);
    }
    if let Some(resp) = authenticate(ctx, req) {
        return Some(resp);
    }
    add_forwarding_headers(ctx, req.headers_mut());
    apply_header_rules(ctx.options, req.headers_mut());
    None
}

/// `x:https` — plain-HTTP visitors are sent to the HTTPS URL.
pub fn https_redirect<B>(ctx: &RequestCtx<'_>, req: &Request<B>) -> Option<Response<ProxyBody>> {
    if !ctx.options.https_redirect || ctx.scheme == "https" {
        return None;
    }
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let base = crate::ssh::messages::with_port("https", ctx.host, ctx.https_port);
    let location = HeaderValue::from_str(&format!("{base}{path}")).ok()?;
    let mut resp = Response::new(pages::full(""));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    resp.headers_mut().insert(LOCATION, location);
    Some(resp)
}

/// `b:`/`k:` — visitors must present one of the configured credentials, which the edge
/// then takes off the request (the tunnel's key never reaches an app that logs headers);
/// with `x:passpreflight`, CORS preflights pass without. A visitor that failed too often on
/// this tunnel within the minute gets 429 until the minute ends.
pub fn authenticate<B>(ctx: &RequestCtx<'_>, req: &mut Request<B>) -> Option<Response<ProxyBody>> {
    let o = ctx.options;
    if !o.needs_auth() {
        return None;
    }
    if o.pass_preflight && is_preflight(req) {
        return None;
    }
    let visitor = ctx.visitor.ip();
    if let Some((throttle, tunnel)) = ctx.throttle {
        if let Some(wait) = throttle.blocked(tunnel, visitor) {
            return Some(pages::too_many_failures(wait));
        }
    }
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ok = if let Some(b64) = strip_prefix_ci(given, "basic ") {
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|pair| {
                pair.split_once(':')
                    .map(|(u, p)| (u.to_string(), p.to_string()))
            })
            .is_some_and(|(u, p)| {
                o.basic_auth.iter().any(|(eu, ep)| {
                    constant_time_eq(eu.as_bytes(), u.as_bytes())
                        & constant_time_eq(ep.as_bytes(), p.as_bytes())
                })
            })
    } else if let Some(key) = strip_prefix_ci(given, "bearer ") {
        o.bearer_keys
            .iter()
            .any(|k| constant_time_eq(k.as_bytes(), key.trim().as_bytes()))
    } else {
        false
    };
    if ok {
        req.headers_mut().remove(AUTHORIZATION);
        if let Some((throttle, tunnel)) = ctx.throttle {
            throttle.succeeded(tunnel, visitor);
        }
        return None;
    }
    // A request that brought no credentials at all is a first visit, not a guess.
    if let (Some((throttle, tunnel)), false) = (ctx.throttle, given.is_empty()) {
        throttle.failed(tunnel, visitor);
    }
    Some(pages::unauthorized(!o.basic_auth.is_empty()))
}

/// A CORS preflight as browsers send it: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`, and no body.
fn is_preflight<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    let no_body = !h.contains_key(TRANSFER_ENCODING)
        && h.get(CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes().iter().all(|b| *b == b'0'));
    req.method() == Method::OPTIONS
        && h.contains_key(ORIGIN)
        && h.contains_key("access-control-request-method")
        && no_body
}

/// `X-Forwarded-For` (appended), `X-Forwarded-Proto`, `X-Forwarded-Host`.
pub fn add_forwarding_headers(ctx: &RequestCtx<'_>, headers: &mut HeaderMap) {
    let ip = ctx.visitor.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(ctx.scheme),
    );
    if let Ok(v) = HeaderValue::from_str(ctx.host) {
        headers.insert(HeaderName::from_static("x-forwarded-host"), v);
    }
}

/// `a:`, `u:`, `r:` in the order given.
pub fn apply_header_rules(options: &TunnelOptions, headers: &mut HeaderMap) {
    for rule in &options.header_rules {
        match rule {
            HeaderRule::Add(n, v) => {
                headers.append(n.clone(), v.clone());
            }
            HeaderRule::Update(n, v) => {
                headers.insert(n.clone(), v.clone());
            }
            HeaderRule::Remove(n) => {
                headers.remove(n);
            }
        }
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(o: &'a TunnelOptions, ip: &str) -> RequestCtx<'a> {
        RequestCtx {
            visitor: format!("{ip}:5000").parse().unwrap(),
            host: "blog.a.tunnel.test",
            scheme: "http",
            https_port: 443,
            options: o,
            throttle: None,
        }
    }

    fn req() -> Request<()> {
        Request::builder().uri("/p?q=1").body(()).unwrap()
    }

    #[test]
    fn basic_auth_accepts_only_configured_pairs() {
        let o = TunnelOptions::parse("b:alice:secret").unwrap();
        let c = ctx(&o, "127.0.0.1");
        let mut r = req();
        assert_eq!(
            authenticate(&c, &mut r).map(|r| r.status()),
            Some(StatusCode::UNAUTHORIZED)
        );
        let bad = base64::engine::general_purpose::STANDARD.encode("alice:wrong");
        r.headers_mut()
            .insert(AUTHORIZATION, format!("basic {bad}").parse().unwrap());
        assert!(authenticate(&c, &mut r).is_some());
        let good = base64::engine::general_purpose::STANDARD.encode("alice:secret");
        r.headers_mut()
            .insert(AUTHORIZATION, format!("Basic {good}").parse().unwrap());
        assert!(authenticate(&c, &mut r).is_none());
        assert!(
            !r.headers().contains_key(AUTHORIZATION),
            "the credentials the edge checked are not forwarded"
        );
    }

    fn preflight() -> hyper::http::request::Builder {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/api")
            .header("access-control-request-method", "POST")
    }

    #[test]
    fn bearer_key_and_preflight_pass() {
        let o = TunnelOptions::parse("k:abc x:passpreflight").unwrap();
        let c = ctx(&o, "127.0.0.1");
        let mut r = req();
        r.headers_mut()
            .insert(AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert!(authenticate(&c, &mut r).is_none());
        assert!(!r.headers().contains_key(AUTHORIZATION));
        let mut pre = preflight()
            .header(ORIGIN, "https://app.example")
            .body(())
            .unwrap();
        assert!(authenticate(&c, &mut pre).is_none());
    }

    #[test]
    fn only_a_browsers_preflight_passes_without_credentials() {
        let o = TunnelOptions::parse("k:abc x:passpreflight").unwrap();
        let c = ctx(&o, "127.0.0.1");
        let status = |r: &mut Request<()>| authenticate(&c, r).map(|r| r.status());
        let unauthorized = Some(StatusCode::UNAUTHORIZED);
        // No Origin: not what a browser sends.
        assert_eq!(status(&mut preflight().body(()).unwrap()), unauthorized);
        // A body: a preflight has none.
        let with_body = &mut preflight()
            .header(ORIGIN, "https://app.example")
            .header(CONTENT_LENGTH, "5")
            .body(())
            .unwrap();
        assert_eq!(status(with_body), unauthorized);
        let chunked = &mut preflight()
            .header(ORIGIN, "https://app.example")
            .header(TRANSFER_ENCODING, "chunked")
            .body(())
            .unwrap();
        assert_eq!(status(chunked), unauthorized);
        // A bare OPTIONS.
        let bare = &mut Request::builder().method(Method::OPTIONS).body(()).unwrap();
        assert_eq!(status(bare), unauthorized);
    }

    #[test]
    fn guessing_past_the_limit_gets_429_with_retry_after_even_with_the_right_key() {
        let o = TunnelOptions::parse("k:abc").unwrap();
        let throttle = AuthThrottle::new(2);
        let c = RequestCtx {
            throttle: Some((&throttle, 9)),
            ..ctx(&o, "192.0.2.7")
        };
        let with_key = |key: &str| {
            let mut r = req();
            r.headers_mut()
                .insert(AUTHORIZATION, format!("Bearer {key}").parse().unwrap());
            r
        };
        // A visit without credentials is not counted.
        assert_eq!(
            authenticate(&c, &mut req()).map(|r| r.status()),
            Some(StatusCode::UNAUTHORIZED)
        );
        for _ in 0..2 {
            let resp = authenticate(&c, &mut with_key("guess"));
            assert_eq!(resp.map(|r| r.status()), Some(StatusCode::UNAUTHORIZED));
        }
        let resp = authenticate(&c, &mut with_key("abc")).expect("throttled");
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        let wait: u64 = resp.headers()[hyper::header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&wait), "{wait}");
        // Another visitor is not held up.
        let other = RequestCtx {
            visitor: "192.0.2.8:5000".parse().unwrap(),
            ..c
        };
        assert!(authenticate(&other, &mut with_key("abc")).is_none());
    }

    #[test]
    fn forwarding_headers_append_to_a_prior_chain() {
        let o = TunnelOptions::default();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "198.51.100.1".parse().unwrap());
        add_forwarding_headers(&ctx(&o, "192.0.2.9"), &mut h);
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 192.0.2.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "blog.a.tunnel.test");
    }

    #[test]
    fn header_rules_add_update_remove_in_order() {
        let o = TunnelOptions::parse("a:X-A:1 a:X-A:2 u:Host:app.local r:Cookie").unwrap();
        let mut h = HeaderMap::new();
        h.insert("host", "blog.a.tunnel.test".parse().unwrap());
        h.insert("cookie", "s=1".parse().unwrap());
        apply_header_rules(&o, &mut h);
        assert_eq!(h.get_all("x-a").iter().count(), 2);
        assert_eq!(h["host"], "app.local");
        assert!(!h.contains_key("cookie"));
    }

    #[test]
    fn https_redirect_keeps_path_and_query() {
        let o = TunnelOptions::parse("x:https").unwrap();
        let resp = https_redirect(&ctx(&o, "127.0.0.1"), &req()).unwrap();
        assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(resp.headers()[LOCATION], "https://blog.a.tunnel.test/p?q=1");
        let on_8443 = RequestCtx {
            https_port: 8443,
            ..ctx(&o, "127.0.0.1")
        };
        let resp = https_redirect(&on_8443, &req()).unwrap();
        assert_eq!(
            resp.headers()[LOCATION],
            "https://blog.a.tunnel.test:8443/p?q=1"
        );
        let over_https = RequestCtx {
            scheme: "https",
            ..ctx(&o, "127.0.0.1")
        };
        assert!(https_redirect(&over_https, &req()).is_none());
    }
}
