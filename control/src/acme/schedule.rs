//! When to try next: renewal before expiry, exponential backoff after a failure.

use chrono::{DateTime, Utc};
use std::time::Duration;

/// The wait after the `failures`-th failure in a row: `min`, doubled after each further
/// failure, never more than `max`.
pub fn retry_delay(failures: u32, min: Duration, max: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(32);
    min.checked_mul(1u32 << doublings.min(31))
        .unwrap_or(max)
        .min(max)
}

/// When a certificate valid until `not_after` is due for renewal: `renew_before` ahead of
/// expiry, but not sooner than `min_wait` from `now` (a certificate whose whole lifetime is
/// shorter than `renew_before` would otherwise be renewed in a loop).
pub fn renewal_due(
    not_after: DateTime<Utc>,
    now: DateTime<Utc>,
    renew_before: Duration,
    min_wait: Duration,
) -> DateTime<Utc> {
    let due = not_after - chrono::Duration::from_std(renew_before).unwrap_or(chrono::Duration::MAX);
    let earliest = now + chrono::Duration::from_std(min_wait).unwrap_or(chrono::Duration::zero());
    due.max(earliest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_minimum_and_stops_at_the_maximum() {
        let (min, max) = (Duration::from_secs(60), Duration::from_secs(6 * 3600));
        let waits: Vec<u64> = (1..=11)
            .map(|n| retry_delay(n, min, max).as_secs())
            .collect();
        assert_eq!(
            waits,
            vec![60, 120, 240, 480, 960, 1920, 3840, 7680, 15360, 21600, 21600]
        );
        assert_eq!(retry_delay(0, min, max), min);
        assert_eq!(retry_delay(u32::MAX, min, max), max);
    }

    #[test]
    fn renewal_is_due_ahead_of_expiry_but_never_in_a_loop() {
        let now: DateTime<Utc> = "2026-12-01T00:00:00Z".parse().unwrap();
        let not_after: DateTime<Utc> = "2027-03-01T00:00:00Z".parse().unwrap();
        let day = Duration::from_secs(86_400);
        let due = renewal_due(not_after, now, day * 30, Duration::from_secs(60));
        assert_eq!(
            due,
            "2027-01-30T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        // Renewing 1000 days ahead of a 90-day certificate: as soon as allowed, not now.
        let due = renewal_due(not_after, now, day * 1000, Duration::from_secs(60));
        assert_eq!(due, now + chrono::Duration::seconds(60));
    }
}
