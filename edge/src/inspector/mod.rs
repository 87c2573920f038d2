//! The request inspector: the tunnel owner's live view of the requests that went through
//! their tunnels, opened with `ssh -L4300:localhost:4300 ...` in the same ssh command.
//!
//! Rooms: `capture` keeps the exchanges (state, no I/O), `view` turns them into what the
//! page and the API show (masking, body kinds), `replay` sends one again through the
//! tunnel, and `server` answers the session's `direct-tcpip` channel with the page, the
//! JSON API and the live stream. The visitor path calls [`begin`] and [`answered`] only:
//! for a tunnel nobody inspects that is one atomic load and one flag.

pub mod capture;
pub mod replay;
pub mod server;
pub mod view;

use crate::config::Config;
use crate::options::TunnelOptions;
use crate::tunnels::Tunnel;
use crate::visitor::pages::ProxyBody;
use crate::visitor::upstream::UpstreamBody;
use capture::{Inspector, Limits, Side, Tapped};
use http_body_util::{BodyExt, Either};
use hyper::body::Body;
use hyper::{Request, Response};
use std::net::SocketAddr;
use std::sync::Arc;

/// The port the page is served on, as the user names it in `-L4300:localhost:4300`.
pub const PORT: u32 = 4300;

/// Hosts a `-L` may name to reach the inspector.
const HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Whether a `direct-tcpip` channel to `host:port` is the inspector's; the error is the
/// sentence the user's ssh prints.
pub fn check_target(host: &str, port: u32) -> Result<(), String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if port == PORT && HOSTS.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return Ok(());
    }
    Err(format!(
        "nearhop does not open connections to {host}:{port}; the only -L target is the request \
         inspector, localhost:{PORT} (ssh -L4300:localhost:{PORT} ...), then open \
         http://localhost:4300"
    ))
}

/// The inspector settings of the edge.
pub fn limits(config: &Config) -> Limits {
    Limits {
        max_requests: config.inspector_max_requests.max(1),
        max_body_bytes: config.inspector_max_body_bytes,
        body_cut_bytes: config
            .inspector_body_cut_bytes
            .min(config.inspector_max_body_bytes),
    }
}

/// The tunnel's inspector, started if it is not yet (and the tunnel is still live).
pub fn start(config: &Config, tunnel: &Tunnel) -> Option<Arc<Inspector>> {
    if tunnel.is_closed() {
        return None;
    }
    let inspector = tunnel
        .inspector
        .get_or_init(|| Arc::new(Inspector::new(tunnel.hostname.clone(), limits(config))));
    (!inspector.is_closed()).then(|| inspector.clone())
}

/// A request being recorded, from the tunnel's side.
pub struct Capture {
    inspector: Arc<Inspector>,
    id: u64,
    answered: bool,
}

/// Starts recording `req` (about to go into the tunnel) when the tunnel is inspected:
/// its inspector was opened, or its options ask for `inspect`. Otherwise does nothing.
///
/// `earlier` is the record of the same request's failed attempt, when the edge sends it
/// again: kept as this attempt's record when it is in this tunnel's inspector, so that one
/// visit is listed once however often it was tried (only a request without a body is sent
/// again, so there is nothing more to copy). A record in another inspector (the tunnel's
/// client reconnected) is dropped, as no answer.
#[inline]
pub fn begin(
    config: &Config,
    tunnel: &Tunnel,
    options: &TunnelOptions,
    visitor: SocketAddr,
    req: &mut Request<UpstreamBody>,
    earlier: Option<Capture>,
) -> Option<Capture> {
    if let Some(earlier) = earlier {
        let same = tunnel
            .inspector
            .get()
            .is_some_and(|i| Arc::ptr_eq(i, &earlier.inspector));
        if same && !earlier.inspector.is_closed() {
            return Some(earlier);
        }
    }
    if tunnel.inspector.get().is_none() && !options.inspect {
        return None;
    }
    begin_recording(config, tunnel, visitor, req)
}

fn begin_recording(
    config: &Config,
    tunnel: &Tunnel,
    visitor: SocketAddr,
    req: &mut Request<UpstreamBody>,
) -> Option<Capture> {
    let inspector = start(config, tunnel)?;
    // A body known empty from the start (a GET, a request sent again) is never polled: it
    // is recorded complete now. Any other goes on through a tap.
    let no_body = req.body().is_end_stream();
    let id = inspector.record_request(visitor, req, None, no_body);
    if !no_body {
        let body = std::mem::replace(
            req.body_mut(),
            Either::Right(Either::Left(Default::default())),
        );
        *req.body_mut() = match body {
            Either::Left(incoming) => {
                let hint = incoming.size_hint().exact();
                let tap = inspector.tap(id, Side::Request, hint);
                Either::Right(Either::Right(Tapped::new(incoming, tap)))
            }
            other => other,
        };
    }
    Some(Capture {
        inspector,
        id,
        answered: false,
    })
}

/// Records the answer's head and copies its body on the way to the visitor.
pub fn answered(capture: Option<Capture>, resp: Response<ProxyBody>) -> Response<ProxyBody> {
    let Some(mut capture) = capture else {
        return resp;
    };
    capture.answered = true;
    let (inspector, id) = (&capture.inspector, capture.id);
    inspector.record_response(id, &resp);
    if resp.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
        return resp;
    }
    // An answer known empty (to a HEAD, a 204, a 304) is never polled.
    if resp.body().is_end_stream() {
        inspector.tap(id, Side::Response, Some(0)).done(true);
        return resp;
    }
    let tap = inspector.tap(id, Side::Response, resp.body().size_hint().exact());
    resp.map(|b| Tapped::new(b, tap).boxed())
}

impl Capture {
    /// Where the byte counts of the connection go if the answer upgrades it.
    pub fn upgrade_record(&self) -> UpgradeRecord {
        UpgradeRecord {
            inspector: self.inspector.clone(),
            id: self.id,
        }
    }
}

/// An upgraded connection's exchange, to record its byte counts when it ends.
pub struct UpgradeRecord {
    inspector: Arc<Inspector>,
    id: u64,
}

impl UpgradeRecord {
    /// The connection ended having carried these bytes.
    pub fn ended(self, to_tunnel: u64, to_visitor: u64) {
        self.inspector
            .record_upgraded_bytes(self.id, to_tunnel, to_visitor);
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if !self.answered {
            self.inspector.record_no_answer(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_localhost_4300_is_the_inspector_and_other_targets_get_a_sentence() {
        for host in ["localhost", "LOCALHOST", "127.0.0.1", "::1", "[::1]"] {
            assert_eq!(check_target(host, 4300), Ok(()), "{host}");
        }
        let e = check_target("db.internal", 5432).unwrap_err();
        assert!(
            e.contains("does not open connections to db.internal:5432")
                && e.contains("-L4300:localhost:4300"),
            "{e}"
        );
        assert!(check_target("localhost", 22).is_err());
        assert!(check_target("example.com", 4300).is_err());
    }

    #[test]
    fn the_cut_is_never_above_the_ring_bound() {
        let config = Config {
            inspector_max_body_bytes: 1000,
            inspector_body_cut_bytes: 5000,
            ..Config::default()
        };
        assert_eq!(limits(&config).body_cut_bytes, 1000);
        assert_eq!(limits(&Config::default()).max_requests, 500);
    }
}
