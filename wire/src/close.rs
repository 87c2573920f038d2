//! Why a tunnel was closed: one vocabulary for edge and control, in their close calls, in
//! control's database and in both processes' `tunnels_closed_total{reason}` metric.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Why a tunnel was closed. On the wire it is its snake_case code; a code this build does
/// not know (from a newer or older peer) reads as [`CloseReason::Other`] instead of failing
/// the whole request, so that adding a reason never breaks a rolling upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The SSH client disconnected or cancelled the forward.
    ClientClosed,
    /// The SSH client stopped answering keepalives.
    ClientDead,
    /// The edge is shutting down.
    EdgeShutdown,
    /// The edge restarted; tunnels of its previous process are gone.
    EdgeRestarted,
    /// The tunnel's edge could not be reached when another tunnel claimed its name.
    EdgeUnreachable,
    /// The edge stopped renewing the tunnel's lease.
    LeaseExpired,
    /// The plan's time limit passed (free tunnels).
    TimeLimit,
    /// The operator took the name down.
    Takedown,
    /// A newer tunnel for the same name replaced it.
    Replaced,
    /// A newer tunnel for the same name asked for `force`.
    Force,
    /// Closed, no more precise reason given.
    Closed,
    /// A code this build does not know.
    Other,
}

impl CloseReason {
    /// Every reason, for tables and tests.
    pub const ALL: [CloseReason; 12] = [
        CloseReason::ClientClosed,
        CloseReason::ClientDead,
        CloseReason::EdgeShutdown,
        CloseReason::EdgeRestarted,
        CloseReason::EdgeUnreachable,
        CloseReason::LeaseExpired,
        CloseReason::TimeLimit,
        CloseReason::Takedown,
        CloseReason::Replaced,
        CloseReason::Force,
        CloseReason::Closed,
        CloseReason::Other,
    ];

    /// The code: on the wire, in the database's `close_reason`, and as the metric label
    /// (a closed set, so a peer cannot grow the metric's label values).
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::ClientDead => "client_dead",
            CloseReason::EdgeShutdown => "edge_shutdown",
            CloseReason::EdgeRestarted => "edge_restarted",
            CloseReason::EdgeUnreachable => "edge_unreachable",
            CloseReason::LeaseExpired => "lease_expired",
            CloseReason::TimeLimit => "time_limit",
            CloseReason::Takedown => "takedown",
            CloseReason::Replaced => "replaced",
            CloseReason::Force => "force",
            CloseReason::Closed => "closed",
            CloseReason::Other => "other",
        }
    }

    /// Reads a code; an unknown one is [`CloseReason::Other`].
    pub fn parse(code: &str) -> CloseReason {
        CloseReason::ALL
            .into_iter()
            .find(|r| r.as_str() == code)
            .unwrap_or(CloseReason::Other)
    }
}

impl From<&str> for CloseReason {
    fn from(code: &str) -> CloseReason {
        CloseReason::parse(code)
    }
}

// Lets code and tests that held the reason as text compare it with its code directly.
impl PartialEq<str> for CloseReason {
    fn eq(&self, code: &str) -> bool {
        self.as_str() == code
    }
}

impl PartialEq<&str> for CloseReason {
    fn eq(&self, code: &&str) -> bool {
        self.as_str() == *code
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for CloseReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CloseReason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<CloseReason, D::Error> {
        // Borrowing would fail on escaped JSON strings; an owned string always works.
        let code = String::deserialize(d)?;
        Ok(CloseReason::parse(&code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_as_its_code() {
        for r in CloseReason::ALL {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
            assert_eq!(serde_json::from_str::<CloseReason>(&json).unwrap(), r);
            assert_eq!(CloseReason::parse(r.as_str()), r);
        }
    }

    #[test]
    fn codes_already_on_the_wire_keep_their_spelling() {
        assert_eq!(
            CloseReason::parse("client_closed"),
            CloseReason::ClientClosed
        );
        assert_eq!(
            CloseReason::parse("edge_restarted"),
            CloseReason::EdgeRestarted
        );
        assert_eq!(
            CloseReason::parse("lease_expired"),
            CloseReason::LeaseExpired
        );
    }

    #[test]
    fn an_unknown_reason_from_a_peer_is_other_not_an_error() {
        let r: CloseReason = serde_json::from_str(r#""x\"}{; drop""#).unwrap();
        assert_eq!(r, CloseReason::Other);
        assert_eq!(CloseReason::parse(""), CloseReason::Other);
        assert_eq!(CloseReason::Other.as_str(), "other");
    }
}
