//! Polling until something holds: the one way tests and benchmarks wait for a state that
//! normally arrives in milliseconds.

use anyhow::Result;
use std::time::{Duration, Instant};

/// How long a wait gives up after. It is a last resort against a hang, not a claim about
/// how fast anything is: tests pin behaviour, never timing.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// How often a wait tries again.
const PAUSE: Duration = Duration::from_millis(50);

/// Retries `f` until it succeeds and returns its value; panics with `what` and the last
/// error when [`PATIENCE`] runs out.
pub fn eventually<T>(what: &str, f: impl FnMut() -> Result<T>) -> T {
    eventually_within(what, PATIENCE, f)
}

/// Like [`eventually`], giving up after `patience`.
pub fn eventually_within<T>(what: &str, patience: Duration, f: impl FnMut() -> Result<T>) -> T {
    match try_eventually(patience, f) {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e:#}"),
    }
}

/// Retries `f` until it succeeds; the last error once `patience` has run out.
pub fn try_eventually<T>(patience: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + patience;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(PAUSE),
        }
    }
}
