//! The control API (`/v1/...`) spoken between edge and control, and control's calls to an
//! edge's admin API. JSON over HTTP; every error is one [`ApiError`] shape.
//!
//! Long because it is the whole control API in one place, every request beside its answer,
//! with about 100 lines of round-trip tests.

use crate::close::CloseReason;
use crate::lsn::Lsn;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Header carrying the shared secret on edge→control and control→edge calls
/// (`Authorization: Bearer <secret>`).
pub const AUTHORIZATION: &str = "authorization";

/// How long control's API keeps an idle keep-alive connection open.
///
/// Longer than [`API_CLIENT_POOL_IDLE`] on purpose: a client must drop an idle pooled
/// connection before the server closes it, or a request sent at the moment the server closes
/// the connection fails with "connection closed before message completed" (a tunnel setup
/// refused with "control plane is unreachable" for no reason). Also longer than the 60 s
/// idle timeout that balancers commonly use, so a balancer in front of control closes first.
pub const API_SERVER_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(75);

/// How long an edge keeps an idle connection to control in its pool (see
/// [`API_SERVER_KEEP_ALIVE`]); below the idle timeouts of control and of common balancers.
pub const API_CLIENT_POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(50);

const _: () = assert!(API_CLIENT_POOL_IDLE.as_secs() < API_SERVER_KEEP_ALIVE.as_secs());

/// What a tunnel carries: decides the visitor listener on the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, Hash)]
#[serde(rename_all = "lowercase")]
pub enum TunnelKind {
    /// HTTP reverse proxy routed by `Host` (the default).
    #[default]
    Http,
    /// A public TCP port on the edge.
    Tcp,
    /// TLS passthrough routed by SNI.
    Tls,
}

impl TunnelKind {
    /// The keyword spelling, as in the SSH username and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelKind::Http => "http",
            TunnelKind::Tcp => "tcp",
            TunnelKind::Tls => "tls",
        }
    }
}

/// Plan of an account; decides the zone and the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    /// Random names in the free zone, time-limited.
    Free,
    /// Persistent names in the pro zone.
    Pro,
}

impl Plan {
    /// The spelling used in the database and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Free => "free",
            Plan::Pro => "pro",
        }
    }

    /// Parses `free` or `pro`.
    pub fn parse(s: &str) -> Option<Plan> {
        match s {
            "free" => Some(Plan::Free),
            "pro" => Some(Plan::Pro),
            _ => None,
        }
    }
}

/// Edge → control: set up a tunnel (`POST /v1/tunnels`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTunnelRequest {
    /// The edge asking; must be registered.
    pub edge_id: String,
    /// The token from the SSH username, if any; `None` asks for an anonymous free tunnel.
    #[serde(default)]
    pub token: Option<String>,
    /// The label asked for with the bind address (`-R name:0:localhost:8000`), if any.
    #[serde(default)]
    pub requested_name: Option<String>,
    /// What the tunnel carries.
    #[serde(default)]
    pub kind: TunnelKind,
    /// Close the account's tunnel that holds the name now, wherever it is, and take over.
    #[serde(default)]
    pub force: bool,
    /// Address of the SSH client, for per-source rate limits and audit.
    pub client_addr: String,
}

/// Control → edge: the tunnel is set up and its DNS record is being served.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CreateTunnelResponse {
    /// Control's id of the tunnel; the edge uses it in heartbeats and close calls.
    pub tunnel_id: i64,
    /// The tunnel's label (`androidblog`).
    pub label: String,
    /// The zone (`a.tunnel.test`).
    pub zone: String,
    /// The full public name (`androidblog.a.tunnel.test`).
    pub hostname: String,
    /// The edge's region the record points at.
    pub region: String,
    /// The edge must heartbeat the lease within this many seconds.
    pub lease_seconds: u64,
    /// When a time-limited (free) tunnel will be closed, if it is.
    pub expires_at: Option<DateTime<Utc>>,
    /// Tunnels that were closed to make room (force or dead-tunnel takeover).
    pub replaced_tunnel: Option<ReplacedTunnel>,
    /// How the lag-race wait went.
    pub dns: DnsPropagation,
    /// Control's proof that this edge holds `hostname` as this tunnel (`holder_proof`): the
    /// edge announces it to its peers with the name, and they check it against
    /// `holder_key`. `None` from a control that does not sign.
    #[serde(default)]
    pub holder_proof: Option<String>,
    /// A sentence for the user beside the URL: why the tunnel got another name than the one
    /// it would have had (the account's own name was live already).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
}

/// A tunnel that control closed so that a new one could take its name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplacedTunnel {
    /// The old tunnel's id.
    pub tunnel_id: i64,
    /// Its edge.
    pub edge_id: String,
    /// Why it was taken over: `force`, `lease_expired`, `edge_unreachable`, `client_dead`.
    pub reason: CloseReason,
}

/// How the wait for the regions' DNS to serve the new record went.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct DnsPropagation {
    /// The commit position on the primary (`pg_current_wal_lsn()` after commit).
    pub commit_lsn: Lsn,
    /// Regions that confirmed they serve the commit.
    pub confirmed: Vec<String>,
    /// Regions that did not confirm within the bound; the URL may not resolve there yet.
    pub unconfirmed: Vec<String>,
    /// Milliseconds spent waiting.
    pub wait_ms: u64,
}

/// Edge → control: close a tunnel (`POST /v1/tunnels/{id}/close`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloseTunnelRequest {
    /// The edge closing it; must be the tunnel's edge.
    pub edge_id: String,
    /// Why: `client_closed`, `client_dead`, `edge_shutdown`, ...
    pub reason: CloseReason,
}

/// Edge → control: announce an edge (`POST /v1/edges/register`), again after a restart, with
/// what peer edges and control need to reach and trust it. The mesh fields are optional, so
/// an edge that sends only the first three keeps registering (outside the mesh).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RegisterEdgeRequest {
    /// Stable id of the edge, e.g. `ap-1`; must be the id its credential was issued for.
    pub edge_id: String,
    /// Its region; must be configured in control.
    pub region: String,
    /// Base URL of the edge's admin API, e.g. `http://127.0.0.3:9090`.
    pub admin_url: String,
    /// `host:port` where peer edges reach this edge's mesh listener.
    #[serde(default)]
    pub mesh_addr: Option<String>,
    /// The edge's mesh public key (its identity towards peer edges; not the host key
    /// clients see), OpenSSH one-line format (`ssh-ed25519 AAAA…`).
    #[serde(default)]
    pub host_key: Option<String>,
    /// A random key the edge made at start; control sends it as the bearer when it calls
    /// this edge's admin API.
    #[serde(default)]
    pub admin_key: Option<String>,
}

/// Another edge of the mesh, as control lists it to an edge: every other edge with a live
/// credential that announced a mesh address and host key and heartbeats.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerEdge {
    /// The peer's edge id.
    pub edge_id: String,
    /// The peer's region.
    pub region: String,
    /// `host:port` of the peer's mesh listener.
    pub mesh_addr: String,
    /// The peer's SSH host public key (OpenSSH one-line format); pin it when connecting.
    pub host_key: String,
}

/// Control → edge: the edge is known; tunnels it held before a restart are closed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RegisterEdgeResponse {
    /// How often to heartbeat, in seconds.
    pub heartbeat_seconds: u64,
    /// Tunnels of this edge that control closed because the edge restarted.
    pub closed_tunnels: Vec<i64>,
    /// The other edges of the mesh (empty from a control without the mesh).
    #[serde(default)]
    pub peers: Vec<PeerEdge>,
    /// Changes whenever control's set of ACME certificates changes; an edge that holds another
    /// generation fetches `GET /v1/edges/{id}/certificates`. 0: control holds none.
    #[serde(default)]
    pub certificates_generation: i64,
    /// Control's public key for holder proofs (base64 Ed25519): an edge relays to a peer
    /// only names the peer proves with it. `None` from a control that does not sign.
    #[serde(default)]
    pub holder_key: Option<String>,
    /// The key before `holder_key`, while control's key is rotated: proofs of tunnels set
    /// up before the rotation are signed with it and stay valid. `None` outside a rotation
    /// (and from a control before rotations; an edge before them ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_key_previous: Option<String>,
}

/// Edge → control: the edge is alive and these are its live tunnels
/// (`POST /v1/edges/{id}/heartbeat`); renews every listed tunnel's lease in one statement.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeHeartbeatRequest {
    /// Ids of every tunnel the edge serves now.
    pub tunnel_ids: Vec<i64>,
}

/// Control → edge: leases renewed; tunnels listed here are closed on control's side
/// (taken down, expired, taken over) and the edge must drop them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EdgeHeartbeatResponse {
    /// Tunnels the edge must close, with the reason to tell the client.
    pub close: Vec<TunnelToClose>,
    /// The other edges of the mesh now; an edge missing here is no longer a peer.
    #[serde(default)]
    pub peers: Vec<PeerEdge>,
    /// As in [`RegisterEdgeResponse::certificates_generation`].
    #[serde(default)]
    pub certificates_generation: i64,
    /// As in [`RegisterEdgeResponse::holder_key`].
    #[serde(default)]
    pub holder_key: Option<String>,
    /// As in [`RegisterEdgeResponse::holder_key_previous`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_key_previous: Option<String>,
}

/// How far an edge's stop has gone (`POST /v1/edges/{id}/leaving`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LeavingStage {
    /// It started to drain: marked `draining`, so the region's connect name stops counting it
    /// (it stays its peers' peer while it heartbeats).
    Draining,
    /// It stopped: out of its peers' lists and its region's health at once, not 3
    /// heartbeats later (until it registers again).
    Stopped,
}

/// Edge → control: the edge is stopping (`POST /v1/edges/{id}/leaving`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeLeavingRequest {
    /// How far the stop has gone.
    pub stage: LeavingStage,
}

/// A tunnel the edge must close, and the sentence to tell its client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TunnelToClose {
    /// The tunnel.
    pub tunnel_id: i64,
    /// Reason code (`takedown`, `time_limit`, `replaced`, `lease_expired`, `closed`).
    pub reason: CloseReason,
    /// A sentence for the user.
    pub message: String,
}

/// Control → edge admin API: close a tunnel (`POST /v1/tunnels/{id}/close`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EdgeCloseRequest {
    /// Reason code.
    pub reason: CloseReason,
    /// The sentence the edge prints to the client before disconnecting it.
    pub message: String,
}

/// Edge admin API answer to `GET /v1/tunnels/{id}/alive`: whether the client answered an
/// SSH keepalive within the edge's probe bound.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AliveResponse {
    /// The tunnel is known to the edge.
    pub known: bool,
    /// The client answered the keepalive probe.
    pub alive: bool,
}

/// The one error shape of every nearhop HTTP API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiError {
    /// The error.
    pub error: ErrorBody,
}

/// Body of [`ApiError`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// A sentence for a human, saying what went wrong and what to do.
    pub message: String,
}

/// Stable error codes. Edges map them to sentences for SSH clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request body is not valid JSON or misses fields.
    BadRequest,
    /// The body is larger than allowed.
    PayloadTooLarge,
    /// Missing or wrong bearer secret.
    Unauthorized,
    /// The caller is known but may not do this (e.g. an edge acting as another edge).
    Forbidden,
    /// The token is unknown or revoked.
    BadToken,
    /// The requested name is not a valid label.
    InvalidName,
    /// The name belongs to another account.
    NameOwned,
    /// The name is live in another tunnel (and not proven dead, and no `force`).
    NameInUse,
    /// The name was taken down.
    NameBanned,
    /// Too many setups; try later.
    RateLimited,
    /// The plan does not allow this (e.g. a chosen name on the free plan).
    PlanLimit,
    /// No such account, tunnel, edge, region or domain.
    NotFound,
    /// The route exists, but not for this HTTP method.
    MethodNotAllowed,
    /// The state does not allow it (e.g. closing another edge's tunnel).
    Conflict,
    /// The database is unreachable.
    DatabaseUnavailable,
    /// Anything else; see the logs.
    Internal,
}

impl ErrorCode {
    /// The HTTP status every nearhop API answers this code with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidName => 400,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Unauthorized | ErrorCode::BadToken => 401,
            ErrorCode::NameOwned
            | ErrorCode::NameBanned
            | ErrorCode::PlanLimit
            | ErrorCode::Forbidden => 403,
            ErrorCode::NameInUse | ErrorCode::Conflict => 409,
            ErrorCode::RateLimited => 429,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::DatabaseUnavailable => 503,
            ErrorCode::Internal => 500,
        }
    }

    /// The code's wire spelling (`name_in_use`), also its metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::BadToken => "bad_token",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::NameOwned => "name_owned",
            ErrorCode::NameInUse => "name_in_use",
            ErrorCode::NameBanned => "name_banned",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::PlanLimit => "plan_limit",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::DatabaseUnavailable => "database_unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl ApiError {
    /// Builds an error body.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            error: ErrorBody {
                code,
                message: message.into(),
            },
        }
    }

    /// The whole HTTP/1.1 answer carrying this error, with `status` and `reason`, on a
    /// connection that then closes: for an API server that writes it to the socket itself,
    /// in place of its HTTP library's bare answer to a request head it could not read
    /// (control's `api/unreadable_heads.rs`, the edge's admin API).
    pub fn closing_http1_answer(&self, status: u16, reason: &str) -> Vec<u8> {
        let body = serde_json::to_string(self).unwrap_or_default();
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// Admin: create an account (`POST /v1/admin/accounts`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAccountRequest {
    /// A display name.
    pub name: String,
    /// The plan.
    pub plan: Plan,
}

/// Admin: an account and, on creation, its first token (shown once, stored hashed).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AccountCreated {
    /// Account id.
    pub account_id: i64,
    /// The plan.
    pub plan: Plan,
    /// The new token in clear; it is not stored and cannot be shown again.
    pub token: String,
    /// The first token's id, for `token revoke` (`DELETE /v1/admin/tokens/{id}`).
    pub token_id: i64,
}

/// Admin: a new token (`POST /v1/admin/accounts/{id}/tokens`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenCreated {
    /// Token id (for revocation).
    pub token_id: i64,
    /// The token in clear, shown once.
    pub token: String,
}

/// Admin: one token of an account in `token list` (`GET /v1/admin/accounts/{id}/tokens`).
/// Never the token itself, which control keeps only as a hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenListed {
    /// Token id (for revocation).
    pub token_id: i64,
    /// The token's first characters, to recognise it (`nh_abcd…`).
    pub hint: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When it last authenticated a tunnel setup, to the minute; `None`: never (or before
    /// control recorded it). Absent in answers of older controls.
    #[serde(default)]
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Admin: a token revoked (`DELETE /v1/admin/tokens/{id}`, `token revoke`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenRevoked {
    /// Token id.
    pub token_id: i64,
    /// Always true: the token no longer sets tunnels up.
    pub revoked: bool,
    /// Whether it had been revoked before this call (then nothing changed).
    pub already_revoked: bool,
    /// When it was revoked (by this call, or earlier).
    pub revoked_at: DateTime<Utc>,
}

/// Admin: reserve a name for an account (`POST /v1/admin/accounts/{id}/names`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReserveNameRequest {
    /// The label to reserve in the account's zone.
    pub name: String,
}

/// Admin: add a custom domain (`POST /v1/admin/accounts/{id}/domains`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddDomainRequest {
    /// The user's domain, e.g. `mydomain.example`.
    pub domain: String,
    /// The account's tunnel label it points at.
    pub target: String,
}

/// Admin: a custom domain and the proof the user must publish.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DomainAdded {
    /// The domain.
    pub domain: String,
    /// The tunnel name to CNAME it to.
    pub cname_target: String,
    /// The TXT record name that proves ownership (`_nearhop.<domain>`).
    pub txt_name: String,
    /// The TXT record value.
    pub txt_value: String,
    /// Whether ownership is verified.
    pub verified: bool,
    /// When control obtains certificates by ACME: the record that lets it answer the
    /// domain's DNS-01 challenges, `_acme-challenge.<domain> CNAME <target>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme_challenge_cname: Option<CnameRecord>,
}

/// A CNAME record a user adds at their own DNS provider.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CnameRecord {
    /// The record's name.
    pub name: String,
    /// Where it points.
    pub target: String,
}

/// Admin: take a name down (`POST /v1/admin/takedowns`): closes its tunnel, removes its
/// record and bans it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TakedownRequest {
    /// Full hostname, e.g. `k3x9qz2m.free.tunnel.test`.
    pub hostname: String,
    /// Why, kept for the record.
    pub reason: String,
}

/// Admin: result of a takedown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TakedownDone {
    /// The hostname taken down, as stored (lowercase, no trailing dot).
    #[serde(default)]
    pub hostname: String,
    /// The tunnel that was closed, if one was live.
    pub closed_tunnel: Option<i64>,
    /// Records removed.
    pub records_removed: u64,
    /// Whether the name was banned already (the takedown then only replaced the reason,
    /// and closed a tunnel or removed records if any were left).
    #[serde(default)]
    pub already_banned: bool,
    /// The reason the earlier ban was kept with, when it was banned already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_reason: Option<String>,
}

/// Admin: a takedown lifted (`DELETE /v1/admin/takedowns/{hostname}`, `takedown lift`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TakedownLifted {
    /// The hostname, as stored.
    pub hostname: String,
    /// The reason the ban was kept with.
    pub reason: String,
    /// When the name was banned.
    pub banned_at: DateTime<Utc>,
}

/// Admin: a persistent name freed from its account (`DELETE /v1/admin/names/{hostname}`,
/// `name release`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NameReleased {
    /// The hostname, as stored.
    pub hostname: String,
    /// The account that owned it.
    pub account_id: i64,
    /// Whether it was the account's persistent default name (its next tunnel without a
    /// name then gets a new one).
    pub was_default: bool,
    /// Custom domains that pointed at it, removed with it (they would otherwise route to
    /// whoever claims the name next).
    pub domains_removed: Vec<String>,
}

/// `GET /v1/edges/{id}/peers`: the mesh's peer list alone, as register and heartbeat answers
/// carry it. An edge asks for it when a peer it does not know yet (or knows with another key)
/// dials its mesh listener, instead of refusing that peer until its own next heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EdgePeers {
    /// The other edges of the mesh now.
    pub peers: Vec<PeerEdge>,
    /// As in [`RegisterEdgeResponse::holder_key`].
    #[serde(default)]
    pub holder_key: Option<String>,
    /// As in [`RegisterEdgeResponse::holder_key_previous`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_key_previous: Option<String>,
}

/// Custom-domain routes an edge serves: `GET /v1/edges/{id}/routes` answers the verified
/// custom domains of the edge's live tunnels.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EdgeRoutes {
    /// `(custom domain, tunnel hostname)` pairs.
    pub custom_domains: Vec<(String, String)>,
}

/// `GET /v1/edges/{id}/certificates`: every certificate control obtained by ACME that is in
/// service now, for the edges' HTTPS listeners.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct EdgeCertificates {
    /// The generation these certificates make up (as in the heartbeat answer).
    pub generation: i64,
    /// One per zone (its apex and wildcard) and per verified custom domain.
    pub certificates: Vec<IssuedCertificate>,
}

/// One certificate and its private key. Its `Debug` leaves the key out, so that it can never
/// reach a log.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct IssuedCertificate {
    /// The names it covers, as in the certificate: `["a.tunnel.test", "*.a.tunnel.test"]`,
    /// or `["app.example.com"]`.
    pub names: Vec<String>,
    /// The chain in PEM, leaf first.
    pub chain_pem: String,
    /// The private key in PEM (PKCS#8).
    pub key_pem: String,
    /// When the certificate expires, seconds since the Unix epoch.
    pub not_after_unix: i64,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("names", &self.names)
            .field("not_after_unix", &self.not_after_unix)
            .field("chain_pem_bytes", &self.chain_pem.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_written_whole_is_one_closing_http1_answer_with_its_json() {
        let e = ApiError::new(ErrorCode::BadRequest, "why");
        let raw = String::from_utf8(e.closing_http1_answer(431, "Request Header Fields Too Large"))
            .expect("text");
        let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
        assert_eq!(
            head,
            format!(
                "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close",
                body.len()
            )
        );
        assert_eq!(serde_json::from_str::<ApiError>(body).expect("json"), e);
    }

    #[test]
    fn a_certificates_debug_never_shows_its_key() {
        let c = IssuedCertificate {
            names: vec!["a.tunnel.test".into()],
            chain_pem: "-----BEGIN CERTIFICATE-----".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----secret".into(),
            not_after_unix: 1,
        };
        let shown = format!("{c:?}");
        assert!(shown.contains("a.tunnel.test"), "{shown}");
        assert!(
            !shown.contains("secret") && !shown.contains("PRIVATE"),
            "{shown}"
        );
    }

    #[test]
    fn answers_with_and_without_the_previous_holder_key_read_both_ways() {
        // A control before rotations: no `holder_key_previous`; read as none.
        let old = r#"{"close":[],"peers":[],"certificates_generation":0,"holder_key":"K"}"#;
        let hb: EdgeHeartbeatResponse = serde_json::from_str(old).unwrap();
        assert_eq!(hb.holder_key.as_deref(), Some("K"));
        assert_eq!(hb.holder_key_previous, None);
        // Outside a rotation the field is left out, so the answer is the older shape.
        assert!(!serde_json::to_string(&hb).unwrap().contains("previous"));
        // During one it travels; an edge before rotations reads the answer all the same
        // (its answer types take unknown fields).
        let during = EdgePeers {
            peers: Vec::new(),
            holder_key: Some("NEW".into()),
            holder_key_previous: Some("OLD".into()),
        };
        let text = serde_json::to_string(&during).unwrap();
        assert!(text.contains(r#""holder_key_previous":"OLD""#), "{text}");
        #[derive(Deserialize)]
        struct EdgePeersBeforeRotations {
            holder_key: Option<String>,
        }
        let before: EdgePeersBeforeRotations = serde_json::from_str(&text).unwrap();
        assert_eq!(before.holder_key.as_deref(), Some("NEW"));
        let reg: RegisterEdgeResponse = serde_json::from_str(
            r#"{"heartbeat_seconds":10,"closed_tunnels":[],"holder_key":"NEW","holder_key_previous":"OLD"}"#,
        )
        .unwrap();
        assert_eq!(reg.holder_key_previous.as_deref(), Some("OLD"));
    }

    #[test]
    fn error_shape_is_stable() {
        let e = ApiError::new(ErrorCode::NameInUse, "taken");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"error":{"code":"name_in_use","message":"taken"}}"#
        );
    }

    #[test]
    fn registration_reads_the_older_shape_and_refuses_unknown_fields() {
        let r: RegisterEdgeRequest = serde_json::from_str(
            r#"{"edge_id":"us-1","region":"us","admin_url":"http://127.0.0.1:9090"}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            RegisterEdgeRequest {
                edge_id: "us-1".into(),
                region: "us".into(),
                admin_url: "http://127.0.0.1:9090".into(),
                ..Default::default()
            }
        );
        assert!(r.mesh_addr.is_none() && r.host_key.is_none() && r.admin_key.is_none());
        assert!(serde_json::from_str::<RegisterEdgeRequest>(
            r#"{"edge_id":"a","region":"us","admin_url":"http://x","evil":1}"#
        )
        .is_err());
    }

    #[test]
    fn responses_without_peers_still_parse() {
        let r: EdgeHeartbeatResponse = serde_json::from_str(r#"{"close":[]}"#).unwrap();
        assert!(r.peers.is_empty());
        let r: RegisterEdgeResponse =
            serde_json::from_str(r#"{"heartbeat_seconds":5,"closed_tunnels":[]}"#).unwrap();
        assert!(r.peers.is_empty());
    }

    #[test]
    fn error_codes_map_to_statuses_and_their_wire_spelling() {
        use ErrorCode::*;
        let table = [
            (BadRequest, 400),
            (PayloadTooLarge, 413),
            (Unauthorized, 401),
            (Forbidden, 403),
            (BadToken, 401),
            (InvalidName, 400),
            (NameOwned, 403),
            (NameInUse, 409),
            (NameBanned, 403),
            (RateLimited, 429),
            (PlanLimit, 403),
            (NotFound, 404),
            (Conflict, 409),
            (DatabaseUnavailable, 503),
            (Internal, 500),
        ];
        for (code, status) in table {
            assert_eq!(code.http_status(), status, "{code:?}");
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::Value::String(code.as_str().into())
            );
        }
    }

    #[test]
    fn close_requests_keep_the_reason_as_its_code() {
        let r: CloseTunnelRequest =
            serde_json::from_str(r#"{"edge_id":"us-1","reason":"client_dead"}"#).unwrap();
        assert_eq!(r.reason, CloseReason::ClientDead);
        // An older or newer edge's reason this build does not know still closes the tunnel.
        let r: CloseTunnelRequest =
            serde_json::from_str(r#"{"edge_id":"us-1","reason":"cosmic_ray"}"#).unwrap();
        assert_eq!(r.reason, CloseReason::Other);
        let t = TunnelToClose {
            tunnel_id: 7,
            reason: CloseReason::Takedown,
            message: "m".into(),
        };
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"tunnel_id":7,"reason":"takedown","message":"m"}"#
        );
    }

    #[test]
    fn dns_propagation_carries_the_lsn_as_text() {
        let d = DnsPropagation {
            commit_lsn: Lsn(0x3000060),
            ..Default::default()
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["commit_lsn"], "0/3000060");
        assert_eq!(serde_json::from_value::<DnsPropagation>(v).unwrap(), d);
    }

    #[test]
    fn create_request_refuses_unknown_fields() {
        let r = serde_json::from_str::<CreateTunnelRequest>(
            r#"{"edge_id":"us-1","client_addr":"127.0.0.1","evil":1}"#,
        );
        assert!(r.is_err());
    }
}
