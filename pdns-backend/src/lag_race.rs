//! The backend's side of the lag race: control asks whether memory holds a commit yet
//! (`/v1/wait`, a long poll) and how far the backend is (`/v1/status`). Transports parse
//! nothing here; they hand over the query string and send back the answer.

use crate::replica::parse_lsn;
use crate::store::{Applied, Store, Zones};
use nearhop_wire::{BackendStatus, Lsn, WaitAnswer};
use std::time::Duration;

/// Longest `/v1/wait` long-poll accepted.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Wait used when the query names no `timeout_ms`.
const DEFAULT_WAIT: Duration = Duration::from_millis(1000);

/// A `/v1/wait` question: has memory applied the commit at `lsn` (made by `xid`, when
/// known)? Asked for at most `timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitQuery {
    /// The commit's WAL position.
    pub lsn: u64,
    /// The committing transaction, for an exact answer on a primary.
    pub xid: Option<u64>,
    /// How long to wait for it.
    pub timeout: Duration,
}

impl WaitQuery {
    /// Parses `lsn=0/3000060&xid=7421&timeout_ms=1500`; the error is the sentence sent back
    /// with the 400.
    pub fn parse(query: &str) -> Result<WaitQuery, String> {
        let mut lsn = None;
        let mut xid = None;
        let mut timeout = DEFAULT_WAIT;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "lsn" => match parse_lsn(&v) {
                    Some(l) => lsn = Some(l),
                    None => return Err(format!("lsn {v:?} is not an LSN such as 0/3000060")),
                },
                "xid" => match v.parse::<u64>() {
                    Ok(x) => xid = Some(x),
                    Err(_) => return Err(format!("xid {v:?} is not a transaction id")),
                },
                "timeout_ms" => match v.parse::<u64>() {
                    Ok(ms) if Duration::from_millis(ms) <= MAX_WAIT => {
                        timeout = Duration::from_millis(ms)
                    }
                    _ => return Err("timeout_ms must be an integer from 0 to 60000".into()),
                },
                _ => {}
            }
        }
        let Some(lsn) = lsn else {
            return Err("missing query parameter lsn".into());
        };
        Ok(WaitQuery { lsn, xid, timeout })
    }
}

/// Long-polls until memory holds the commit or the query's timeout passes.
pub async fn wait(store: &Store, query: &WaitQuery) -> WaitAnswer {
    let mut rx = store.watch_applied();
    let deadline = tokio::time::Instant::now() + query.timeout;
    // With the transaction id the answer is exact: on a primary the position can pass a
    // commit's WAL record before the commit is visible to the tailer's read.
    let done = |applied: &Applied| applied.covers(query.lsn, query.xid);
    let reached = loop {
        if done(&rx.borrow_and_update()) {
            break true;
        }
        // Publications can come every poll; the deadline must end the wait even then.
        if tokio::time::Instant::now() >= deadline {
            break false;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            _ => break done(&rx.borrow()),
        }
    };
    WaitAnswer {
        applied_lsn: Lsn(store.applied_lsn()),
        reached,
    }
}

/// Where the backend stands.
pub fn status(store: &Store) -> BackendStatus {
    BackendStatus {
        applied_lsn: Lsn(store.applied_lsn()),
        loaded: store.is_loaded(),
        records: store.read(Zones::record_count) as u64,
        seconds_since_contact: store.seconds_since_contact(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Snapshot;

    #[test]
    fn queries_parse_with_defaults_and_refuse_bad_parameters_in_words() {
        let q = WaitQuery::parse("lsn=0/3000060&xid=7421&timeout_ms=1500").expect("query");
        assert_eq!(q.xid, Some(7421));
        assert_eq!(q.timeout, Duration::from_millis(1500));
        let q = WaitQuery::parse("lsn=0/10").expect("query");
        assert_eq!((q.xid, q.timeout), (None, DEFAULT_WAIT));
        assert_eq!(
            WaitQuery::parse("xid=1"),
            Err("missing query parameter lsn".into())
        );
        assert!(WaitQuery::parse("lsn=zz").is_err());
        assert!(WaitQuery::parse("lsn=0/1&timeout_ms=60001").is_err());
    }

    #[tokio::test]
    async fn a_reached_position_answers_at_once_and_an_unreached_one_times_out() {
        let store = Store::new();
        store.publish(0x3000100, Snapshot::default());
        let q = WaitQuery::parse("lsn=0/3000060&timeout_ms=0").expect("query");
        let a = wait(&store, &q).await;
        assert!(a.reached);
        let q = WaitQuery::parse("lsn=0/4000000&timeout_ms=20").expect("query");
        let a = wait(&store, &q).await;
        assert!(!a.reached);
        assert_eq!(
            serde_json::to_value(&a).ok(),
            Some(serde_json::json!({"applied_lsn": "0/3000100", "reached": false}))
        );
    }
}
