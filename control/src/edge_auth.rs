//! Who an edge is. Each edge holds its own credential (`Authorization: Bearer nhe_…`, issued
//! by `nearhop-control edge issue`), bound to one edge id; control trusts a caller only as that
//! edge and refuses it acting as another. Also the other direction: the key control presents
//! when it calls an edge's admin API.
//!
//! No cache: every edge call looks its credential up by hash (one unique-index probe), so a
//! revocation takes effect on the edge's very next call.

use crate::config::Config;
use crate::db::{token_hash, PgPool};
use crate::error::{ControlError, ControlResult};
use crate::schema::{edge_credentials, edges, tunnels};
use crate::state::AppState;
use actix_web::HttpRequest;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use nearhop_wire::{ErrorCode, RegisterEdgeRequest};

/// Every edge credential starts with this, so that a leaked one is recognisable.
pub const CREDENTIAL_PREFIX: &str = "nhe_";

/// The edge a request comes from, as proven by its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeIdentity {
    /// The caller holds a live credential of this edge.
    Edge {
        /// The edge id the credential was issued for.
        edge_id: String,
        /// The region the credential pins the edge to, if any.
        region: Option<String>,
    },
    /// The caller holds the legacy shared `edge_secret` (transition only): it may act as any
    /// edge that was never issued a credential of its own.
    Legacy,
}

fn unauthorized() -> ControlError {
    ControlError::refused(
        ErrorCode::Unauthorized,
        "missing, unknown or revoked edge credential (Authorization: Bearer nhe_...); \
         issue one with `nearhop-control edge issue <edge_id>`",
    )
}

/// Reads `Authorization: Bearer` and answers which edge the caller is. A live credential
/// names its edge; the legacy shared secret, while configured, is accepted as
/// [`EdgeIdentity::Legacy`]. Anything else is 401.
pub async fn authenticate_edge(st: &AppState, req: &HttpRequest) -> ControlResult<EdgeIdentity> {
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Some(secret) = st.cfg.edge_secret.as_deref() {
        if nearhop_wire::bearer_matches(header, secret) {
            return Ok(EdgeIdentity::Legacy);
        }
    }
    let given = header.and_then(nearhop_wire::bearer_secret).unwrap_or("");
    if !given.starts_with(CREDENTIAL_PREFIX) {
        return Err(unauthorized());
    }
    let hash = token_hash(given);
    let found = st
        .blocking(move |conn| live_credential(conn, &hash))
        .await?;
    let (edge_id, region) = found.ok_or_else(unauthorized)?;
    Ok(EdgeIdentity::Edge { edge_id, region })
}

/// The edge id and pinned region of the live (not revoked) credential with this hash.
pub fn live_credential(
    conn: &mut PgConnection,
    hash: &[u8],
) -> ControlResult<Option<(String, Option<String>)>> {
    Ok(edge_credentials::table
        .filter(edge_credentials::token_hash.eq(hash))
        .filter(edge_credentials::revoked_at.is_null())
        .select((edge_credentials::edge_id, edge_credentials::region))
        .first(conn)
        .optional()?)
}

/// What credentials an edge id was ever issued, as far as the shared secret is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialHistory {
    /// Never issued one: the shared secret may still act as it.
    Never,
    /// It holds at least one live credential.
    Live,
    /// Every credential it was issued is revoked; the last one at this time.
    Revoked(DateTime<Utc>),
}

/// Whether `edge_id` was ever issued a credential, and whether one is still live. A
/// revoked credential counts: revoking an edge must not hand it back to the shared secret.
pub fn credential_history(
    conn: &mut PgConnection,
    edge_id: &str,
) -> ControlResult<CredentialHistory> {
    // A live credential (revoked_at NULL) sorts first, else the latest revocation.
    let newest: Option<Option<DateTime<Utc>>> = edge_credentials::table
        .filter(edge_credentials::edge_id.eq(edge_id))
        .order(edge_credentials::revoked_at.desc().nulls_first())
        .select(edge_credentials::revoked_at)
        .first(conn)
        .optional()?;
    Ok(match newest {
        None => CredentialHistory::Never,
        Some(None) => CredentialHistory::Live,
        Some(Some(at)) => CredentialHistory::Revoked(at),
    })
}

fn forbidden(message: String) -> ControlError {
    ControlError::refused(ErrorCode::Forbidden, message)
}

impl EdgeIdentity {
    /// Refuses the caller acting as edge `claimed` unless it is that edge. The legacy secret
    /// may act only as an edge that was never issued a credential: once an edge has had one,
    /// the shared secret no longer speaks for it, not even after its credentials are revoked
    /// (else revoking an edge would hand it to every holder of the shared secret).
    pub async fn acts_as(&self, st: &AppState, claimed: &str) -> ControlResult<()> {
        match self {
            EdgeIdentity::Edge { edge_id, .. } if edge_id == claimed => Ok(()),
            EdgeIdentity::Edge { edge_id, .. } => Err(forbidden(format!(
                "this credential belongs to edge {edge_id:?}; it cannot act as edge {claimed:?} \
                 (each edge uses its own credential)"
            ))),
            EdgeIdentity::Legacy => {
                let claimed = claimed.to_string();
                let (history, claimed) = st
                    .blocking(move |conn| Ok((credential_history(conn, &claimed)?, claimed)))
                    .await?;
                match history {
                    CredentialHistory::Never => Ok(()),
                    CredentialHistory::Live => Err(forbidden(format!(
                        "edge {claimed:?} has its own credential; the shared edge_secret cannot \
                         act as it (send the edge's credential)"
                    ))),
                    CredentialHistory::Revoked(at) => Err(forbidden(format!(
                        "edge {claimed:?}'s credentials were revoked (last at {}), and the \
                         shared edge_secret cannot act as an edge that was ever issued one; to \
                         let this edge back in, the operator issues it a new credential with \
                         `nearhop-control edge issue {claimed}` and puts it in the edge's \
                         configuration (`credential` or `credential_file`)",
                        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ))),
                }
            }
        }
    }

    /// Whether the caller is given the mesh's peer list. Peers accept links only from edges
    /// control lists to them, and it lists only edges with their own credential: an edge on
    /// the shared secret that got the list would dial peers that refuse it
    /// (`peer_not_listed`) and redial them forever.
    pub fn joins_mesh(&self) -> bool {
        matches!(self, EdgeIdentity::Edge { .. })
    }

    /// Checks a registration: the caller is the edge it registers, in the region its
    /// credential pins (if any).
    pub async fn registers(&self, st: &AppState, reg: &RegisterEdgeRequest) -> ControlResult<()> {
        self.acts_as(st, &reg.edge_id).await?;
        match self {
            EdgeIdentity::Edge {
                region: Some(pinned),
                edge_id,
            } if *pinned != reg.region => Err(forbidden(format!(
                "edge {edge_id:?}'s credential is for region {pinned:?}, not {:?}; register in \
                 {pinned:?} or issue a credential for the other region",
                reg.region
            ))),
            _ => Ok(()),
        }
    }

    /// Checks a close: the caller is the edge named in the request and the tunnel is that
    /// edge's. (With the legacy secret the close itself checks the tunnel's edge.)
    pub async fn closes(&self, st: &AppState, tunnel_id: i64, claimed: &str) -> ControlResult<()> {
        self.acts_as(st, claimed).await?;
        let EdgeIdentity::Edge { edge_id, .. } = self else {
            return Ok(());
        };
        let owner: Option<String> = st
            .blocking(move |conn| {
                Ok(tunnels::table
                    .filter(tunnels::id.eq(tunnel_id))
                    .select(tunnels::edge_id)
                    .first(conn)
                    .optional()?)
            })
            .await?;
        match owner {
            Some(owner) if owner != *edge_id => Err(forbidden(format!(
                "tunnel {tunnel_id} belongs to another edge; edge {edge_id:?} can close only \
                 its own tunnels"
            ))),
            _ => Ok(()),
        }
    }
}

/// Logs, at start, that the legacy shared secret is still accepted.
pub fn warn_if_legacy(cfg: &Config) {
    if cfg.edge_secret.is_some() {
        tracing::warn!(
            "edge_secret is set: any holder of the shared secret may act as any edge never \
             issued a credential of its own; issue each edge a credential (`nearhop-control \
             edge issue`) and remove edge_secret: it will be removed in a later release"
        );
    }
}

/// The bearer control presents to the edge that holds `tunnel_id`, at `admin_url`: the
/// admin key that edge announced at registration, else the legacy shared secret (if set).
pub async fn admin_bearer(
    pool: &PgPool,
    legacy: Option<&str>,
    tunnel_id: i64,
    admin_url: &str,
) -> Option<String> {
    let (pool, url) = (pool.clone(), admin_url.to_string());
    let found = tokio::task::spawn_blocking(move || -> ControlResult<Option<String>> {
        let mut conn = crate::db::conn(&pool)?;
        let key: Option<Option<String>> = tunnels::table
            .inner_join(edges::table)
            .filter(tunnels::id.eq(tunnel_id))
            .filter(edges::admin_url.eq(&url))
            .select(edges::admin_key)
            .first(&mut conn)
            .optional()?;
        Ok(key.flatten())
    })
    .await;
    match found {
        Ok(Ok(Some(key))) => Some(key),
        Ok(Ok(None)) => legacy.map(str::to_string),
        Ok(Err(e)) => {
            tracing::warn!(tunnel_id, error = %e, "could not look up the edge's admin key; using the shared secret");
            legacy.map(str::to_string)
        }
        Err(e) => {
            tracing::warn!(tunnel_id, error = %e, "admin key lookup failed; using the shared secret");
            legacy.map(str::to_string)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_prefixed_and_hash_to_32_bytes() {
        let c = crate::db::new_secret(CREDENTIAL_PREFIX);
        assert!(c.starts_with(CREDENTIAL_PREFIX) && c.len() == CREDENTIAL_PREFIX.len() + 32);
        assert_ne!(c, crate::db::new_secret(CREDENTIAL_PREFIX));
        assert_eq!(token_hash(&c).len(), 32);
        assert_eq!(token_hash(&c), token_hash(&c.clone()));
    }
}
