//! Operator actions on edge credentials (`nearhop-control edge issue|revoke|list`): each edge
//! gets its own random credential, shown once and stored as SHA-256 like account tokens.

use crate::admin::hint;
use crate::config::Config;
use crate::db::{new_secret, token_hash};
use crate::edge_auth::CREDENTIAL_PREFIX;
use crate::edges::valid_edge_id;
use crate::error::{ControlError, ControlResult};
use crate::schema::{edge_credentials, edges};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use nearhop_wire::ErrorCode;
use serde::Serialize;
use std::collections::BTreeMap;

/// `nearhop-control edge ...`
#[derive(clap::Subcommand)]
pub enum EdgeCmd {
    /// Issue a credential for an edge and print it once (it is stored hashed).
    Issue {
        /// The edge id the credential is bound to, e.g. `ap-1`.
        edge_id: String,
        /// Pin the edge to this region: it may register only there.
        #[arg(long)]
        region: Option<String>,
    },
    /// Revoke an edge's live credentials (or only one of them with --id); other edges'
    /// credentials are untouched.
    Revoke {
        /// The edge whose credentials are revoked.
        edge_id: String,
        /// Revoke only this credential (from `edge list` or `edge issue`), e.g. after a rotation.
        #[arg(long)]
        id: Option<i64>,
    },
    /// List edges (registered or holding a credential) and their credential state.
    List,
}

/// A newly issued credential; the clear text is shown this once.
#[derive(Debug, Serialize)]
pub struct CredentialIssued {
    /// Id of the credential (for a targeted revoke).
    pub credential_id: i64,
    /// The edge it is bound to.
    pub edge_id: String,
    /// The region it pins the edge to, if any.
    pub region: Option<String>,
    /// The credential in clear; not stored, cannot be shown again.
    pub credential: String,
}

/// One edge in `edge list`.
#[derive(Debug, Serialize, Default)]
pub struct EdgeListed {
    /// The edge id.
    pub edge_id: String,
    /// Its registered region, else the region its credentials pin.
    pub region: Option<String>,
    /// When it last heartbeated, if it ever registered.
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// Its mesh address, if it announced one.
    pub mesh_addr: Option<String>,
    /// Whether it announced an SSH host key.
    pub host_key: bool,
    /// Live credentials: `(id, hint)`.
    pub live_credentials: Vec<(i64, String)>,
    /// How many of its credentials are revoked.
    pub revoked_credentials: usize,
}

/// Issues a credential bound to `edge_id` (optionally pinned to `region`).
pub fn issue(
    conn: &mut PgConnection,
    cfg: &Config,
    edge_id: &str,
    region: Option<&str>,
) -> ControlResult<CredentialIssued> {
    if !valid_edge_id(edge_id) {
        return Err(ControlError::refused(
            ErrorCode::BadRequest,
            "the edge id must be 1-63 characters of a-z, 0-9, '.', '_' or '-'",
        ));
    }
    if let Some(r) = region {
        if !cfg.regions.iter().any(|c| c.name == r) {
            return Err(ControlError::refused(
                ErrorCode::NotFound,
                format!("region {r:?} is not configured in control; add it to [[regions]] first"),
            ));
        }
    }
    let credential = new_secret(CREDENTIAL_PREFIX);
    let credential_id: i64 = diesel::insert_into(edge_credentials::table)
        .values((
            edge_credentials::edge_id.eq(edge_id),
            edge_credentials::region.eq(region),
            edge_credentials::token_hash.eq(token_hash(&credential)),
            edge_credentials::hint.eq(hint(&credential)),
        ))
        .returning(edge_credentials::id)
        .get_result(conn)?;
    Ok(CredentialIssued {
        credential_id,
        edge_id: edge_id.to_string(),
        region: region.map(str::to_string),
        credential,
    })
}

/// Revokes `edge_id`'s live credentials (only credential `id` when given); returns how many.
/// The edge's next call to control is refused.
pub fn revoke(conn: &mut PgConnection, edge_id: &str, id: Option<i64>) -> ControlResult<usize> {
    let mut live = edge_credentials::table
        .filter(edge_credentials::edge_id.eq(edge_id))
        .filter(edge_credentials::revoked_at.is_null())
        .into_boxed();
    if let Some(id) = id {
        live = live.filter(edge_credentials::id.eq(id));
    }
    let ids: Vec<i64> = live.select(edge_credentials::id).load(conn)?;
    let n = diesel::update(edge_credentials::table.filter(edge_credentials::id.eq_any(&ids)))
        .set(edge_credentials::revoked_at.eq(Utc::now()))
        .execute(conn)?;
    if n == 0 {
        return Err(ControlError::refused(
            ErrorCode::NotFound,
            format!(
                "edge {edge_id:?} has no live credential{}; see `edge list`",
                match id {
                    Some(id) => format!(" with id {id}"),
                    None => String::new(),
                }
            ),
        ));
    }
    Ok(n)
}

/// Every edge that registered or holds a credential, with its credential state.
pub fn list(conn: &mut PgConnection) -> ControlResult<Vec<EdgeListed>> {
    type EdgeRow = (
        String,
        String,
        DateTime<Utc>,
        Option<String>,
        Option<String>,
    );
    let registered: Vec<EdgeRow> = edges::table
        .select((
            edges::id,
            edges::region,
            edges::last_heartbeat,
            edges::mesh_addr,
            edges::host_key,
        ))
        .load(conn)?;
    type CredentialRow = (i64, String, Option<String>, String, Option<DateTime<Utc>>);
    let credentials: Vec<CredentialRow> = edge_credentials::table
        .order(edge_credentials::id)
        .select((
            edge_credentials::id,
            edge_credentials::edge_id,
            edge_credentials::region,
            edge_credentials::hint,
            edge_credentials::revoked_at,
        ))
        .load(conn)?;
    let mut all: BTreeMap<String, EdgeListed> = BTreeMap::new();
    for (edge_id, region, beat, mesh_addr, host_key) in registered {
        all.insert(
            edge_id.clone(),
            EdgeListed {
                edge_id,
                region: Some(region),
                last_heartbeat: Some(beat),
                mesh_addr,
                host_key: host_key.is_some(),
                ..Default::default()
            },
        );
    }
    for (id, edge_id, region, hint, revoked) in credentials {
        let e = all.entry(edge_id.clone()).or_insert_with(|| EdgeListed {
            edge_id,
            ..Default::default()
        });
        e.region = e.region.take().or(region);
        match revoked {
            Some(_) => e.revoked_credentials += 1,
            None => e.live_credentials.push((id, hint)),
        }
    }
    Ok(all.into_values().collect())
}

fn human_list(edges: &[EdgeListed]) -> String {
    let mut out =
        String::from("EDGE\tREGION\tLAST HEARTBEAT\tMESH\tCREDENTIALS (live ids)\tREVOKED");
    for e in edges {
        let live: Vec<String> = e
            .live_credentials
            .iter()
            .map(|(id, hint)| format!("{id}:{hint}"))
            .collect();
        out.push_str(&format!(
            "\n{}\t{}\t{}\t{}\t{}\t{}",
            e.edge_id,
            e.region.as_deref().unwrap_or("-"),
            e.last_heartbeat.map_or("never".into(), |t| t.to_rfc3339()),
            match (&e.mesh_addr, e.host_key) {
                (Some(a), true) => a.clone(),
                (Some(a), false) => format!("{a} (no host key)"),
                (None, _) => "-".into(),
            },
            if live.is_empty() {
                "none".into()
            } else {
                live.join(",")
            },
            e.revoked_credentials
        ));
    }
    out
}

/// Runs one `edge` command against the primary and prints its result.
pub fn run(cfg: Config, json: bool, cmd: EdgeCmd) -> anyhow::Result<()> {
    let pool = crate::db::pool(&cfg.database_url, 1);
    let mut conn = crate::db::conn(&pool)?;
    match cmd {
        EdgeCmd::Issue { edge_id, region } => {
            let c = issue(&mut conn, &cfg, &edge_id, region.as_deref())?;
            crate::print(json, &c, || {
                format!(
                    "credential {} for edge {}{}: {}\n(shown once; it is stored hashed. Put it \
                     in the edge's configuration; `edge revoke {}` withdraws it)",
                    c.credential_id,
                    c.edge_id,
                    c.region
                        .as_deref()
                        .map_or(String::new(), |r| format!(" (region {r})")),
                    c.credential,
                    c.edge_id
                )
            })
        }
        EdgeCmd::Revoke { edge_id, id } => {
            let n = revoke(&mut conn, &edge_id, id)?;
            crate::print(
                json,
                &serde_json::json!({"edge_id": edge_id, "revoked": n}),
                || {
                    format!("{n} credential(s) of edge {edge_id} revoked: its next call to control is refused")
                },
            )
        }
        EdgeCmd::List => {
            let all = list(&mut conn)?;
            crate::print(json, &all, || human_list(&all))
        }
    }
}
