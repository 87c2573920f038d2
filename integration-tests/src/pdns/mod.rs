//! A region's DNS: `pdns_server` with nearhop-pdns-backend (unix, http or pipe connector),
//! or stock `pdns_server --launch=gpgsql` on the same database as the baseline; and a real
//! recursive resolver (`unbound`) in front of them.

pub mod conformance;
mod gpgsql;
mod process;
mod region;
mod unbound;

pub use gpgsql::GpgsqlPdns;
pub use region::{PdnsRegion, PdnsSpec};
pub use unbound::{Resolved, ResolvedRecord, Unbound};

/// How pdns reaches the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connector {
    /// `unix:path=...` (the fast path).
    Unix,
    /// `http:url=...` REST mode.
    HttpRest,
    /// `http:url=...,post=1`.
    HttpPost,
    /// `http:url=...,post=1,post_json=1`.
    HttpPostJson,
    /// `pipe:command=...` (pdns starts the backend itself).
    Pipe,
}

/// pdns's packet and query caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caches {
    /// `cache-ttl=0 query-cache-ttl=0 negquery-cache-ttl=0`: every query reaches the backend.
    Off,
    /// Caches on with this lifetime (seconds); the backend purges changed names through the
    /// control socket, the lifetime is only the backstop.
    Purged(u32),
}
