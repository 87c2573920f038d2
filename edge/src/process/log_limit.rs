//! Log lines that floods would repeat without end, kept to one per interval: the first at
//! once, then at most one line per interval, which says how many more happened meanwhile.
//! Each event is still counted in its metric.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When a kind of event was last logged, and how many happened since without a line.
pub struct LogLimit {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimit {
    /// At most one line per `interval`.
    pub const fn new(interval: Duration) -> LogLimit {
        LogLimit {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// An event at `now`: `Some(n)` when it is to be logged, `n` events having gone
    /// unlogged since the last line; `None` when it is only counted.
    pub fn note(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, unlogged) = &mut *state;
        if last.is_some_and(|at| now.saturating_duration_since(at) < self.interval) {
            *unlogged += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_logged_once_an_interval_with_the_count_between() {
        let log = LogLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(log.note(at(0)), Some(0), "the first is logged at once");
        assert_eq!(log.note(at(1)), None);
        assert_eq!(log.note(at(9)), None);
        assert_eq!(
            log.note(at(10)),
            Some(2),
            "then one line with the count between"
        );
        assert_eq!(log.note(at(25)), Some(0));
        assert_eq!(log.note(at(26)), None);
    }
}
