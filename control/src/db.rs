//! The connection pool to the primary, the embedded migrations, and small SQL helpers.

use crate::error::{ControlError, ControlResult};
use anyhow::Context;
use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, Pool, PooledConnection};
use diesel::sql_types::Text;
use diesel::{sql_query, QueryableByName, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use std::time::Duration;

/// The schema, owned by `sql/`.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../sql/migrations");

/// Pool of connections to the primary.
pub type PgPool = Pool<ConnectionManager<PgConnection>>;
/// One pooled connection.
pub type PgConn = PooledConnection<ConnectionManager<PgConnection>>;

/// Builds the pool without connecting, so control starts (and answers 503) while the
/// database is down.
pub fn pool(url: &str, size: u32) -> PgPool {
    Pool::builder()
        .max_size(size)
        .min_idle(Some(0))
        .connection_timeout(Duration::from_secs(3))
        .error_handler(Box::new(ConnectAttempts))
        .build_unchecked(ConnectionManager::new(url))
}

/// r2d2 logs every failed connection attempt at `error` (four lines before a CLI command
/// says "the database is unavailable"). The failure reaches the caller as
/// [`ControlError::Database`], which is logged or told where it is handled; each attempt
/// is a `debug` line.
#[derive(Debug)]
struct ConnectAttempts;

impl diesel::r2d2::HandleError<diesel::r2d2::Error> for ConnectAttempts {
    fn handle_error(&self, error: diesel::r2d2::Error) {
        tracing::debug!(%error, "a database connection attempt failed");
    }
}

/// Takes a connection, as a [`ControlError::Database`] when the database is unreachable.
pub fn conn(pool: &PgPool) -> ControlResult<PgConn> {
    pool.get()
        .map_err(|e| ControlError::Database(e.to_string()))
}

/// Applies pending migrations; returns their names.
pub fn migrate(conn: &mut PgConnection) -> anyhow::Result<Vec<String>> {
    let done = conn
        .run_pending_migrations(MIGRATIONS)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("running migrations")?;
    Ok(done.iter().map(|m| m.to_string()).collect())
}

/// One text column, for the position queries below.
#[derive(QueryableByName)]
struct TextRow {
    #[diesel(sql_type = Text)]
    text: String,
}

/// The primary's WAL write position now: every commit that returned is at or below it.
pub fn current_wal_lsn(conn: &mut PgConnection) -> ControlResult<nearhop_wire::Lsn> {
    let row: TextRow = sql_query("SELECT pg_current_wal_lsn()::text AS text").get_result(conn)?;
    row.text
        .parse()
        .map_err(|e| ControlError::Internal(format!("pg_current_wal_lsn: {e}")))
}

/// The id of the current transaction (assigning one if it has none yet).
pub fn current_xid(conn: &mut PgConnection) -> ControlResult<u64> {
    let row: TextRow = sql_query("SELECT pg_current_xact_id()::text AS text").get_result(conn)?;
    row.text
        .parse()
        .map_err(|e| ControlError::Internal(format!("pg_current_xact_id {:?}: {e}", row.text)))
}

/// Hash under which a token is stored.
pub fn token_hash(token: &str) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A new random token: `nh_` and 32 base-32-ish characters (160 bits).
pub fn new_token() -> String {
    new_secret("nh_")
}

/// A new random secret: `prefix` and 32 base-32-ish characters (160 bits), from the OS.
pub fn new_secret(prefix: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rngs::OsRng;
    let body: String = (0..32)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_and_hash_to_32_bytes() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(a.starts_with("nh_") && a.len() == 35);
        assert_eq!(token_hash(&a).len(), 32);
    }
}
