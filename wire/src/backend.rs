//! Control's calls to a region's pdns-backend: `GET /v1/wait` (the lag race's long-poll)
//! and `GET /v1/status`.

use crate::lsn::Lsn;
use serde::{Deserialize, Serialize};

/// Control → pdns-backend: `GET /v1/wait?lsn=..&xid=..&timeout_ms=..`, answered once the
/// backend's memory holds the commit at `lsn` or `timeout_ms` passed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WaitQuery {
    /// The commit position on the primary.
    pub lsn: Lsn,
    /// The committing transaction; with it the answer is exact (on a primary the position
    /// can pass a commit's WAL record before the commit is visible to a reader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xid: Option<u64>,
    /// Longest wait in milliseconds (the backend allows up to a minute).
    pub timeout_ms: u64,
}

/// pdns-backend → control: the answer to [`WaitQuery`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WaitAnswer {
    /// The backend's memory holds the commit.
    pub reached: bool,
    /// The position the backend has applied.
    pub applied_lsn: Lsn,
}

/// pdns-backend's `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackendStatus {
    /// The position the backend has applied.
    pub applied_lsn: Lsn,
    /// Seconds since the backend last heard from its database.
    pub seconds_since_contact: f64,
    /// Records held in memory.
    pub records: u64,
    /// The first snapshot is loaded.
    pub loaded: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_answer_keeps_its_shape() {
        let a = WaitAnswer {
            reached: true,
            applied_lsn: Lsn(0x3000060),
        };
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, r#"{"reached":true,"applied_lsn":"0/3000060"}"#);
        assert_eq!(serde_json::from_str::<WaitAnswer>(&json).unwrap(), a);
    }

    #[test]
    fn status_round_trips() {
        let s = BackendStatus {
            applied_lsn: Lsn(1 << 32),
            seconds_since_contact: 0.25,
            records: 7,
            loaded: true,
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"applied_lsn":"1/0","seconds_since_contact":0.25,"records":7,"loaded":true}"#
        );
        assert_eq!(serde_json::from_str::<BackendStatus>(&json).unwrap(), s);
    }

    #[test]
    fn wait_query_without_xid_omits_it() {
        let q = WaitQuery {
            lsn: Lsn(5),
            xid: None,
            timeout_ms: 10,
        };
        assert_eq!(
            serde_json::to_value(&q).unwrap(),
            serde_json::json!({"lsn": "0/5", "timeout_ms": 10})
        );
    }
}
