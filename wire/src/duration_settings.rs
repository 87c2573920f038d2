//! Range checks for the settings that are durations (`*_ms`, `*_seconds`, `*_secs`,
//! `*_minutes`, `*_days`), the same in every process.
//!
//! A timer cannot run past the clock's range: `Instant::now()` plus a duration near 2⁶⁴
//! seconds panics ("overflow when adding duration to instant"), as does a chrono duration of
//! more than about 10¹⁴ minutes, so such a value would fail each time its timer is armed, in
//! the middle of serving, instead of once at start. Below that, a value of years is no less a
//! mistake (a timeout that never fires, milliseconds given to a `_seconds` key). No duration
//! of these processes means anything longer than [`LONGEST_SECONDS`], so longer values are
//! refused when the settings are read, naming the key. Keys whose 0 means nothing useful (a
//! tick every 0 ms, which panics tokio's `interval`; a call bound of nothing) are refused at 0
//! with [`check_not_zero`]; keys where 0 means "off", "no limit" or "at once" accept it.

use std::fmt;

/// The longest any duration setting may be: 366 days.
pub const LONGEST_SECONDS: u64 = 366 * 24 * 60 * 60;

/// A duration setting out of its range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfRange {
    /// The key, dotted for a table's key (`apex.heartbeat_bound_secs`).
    pub key: String,
    /// The value as given.
    pub value: String,
    /// Why it was refused and what is accepted.
    pub reason: String,
}

impl fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "setting {} = {} is out of range: {}",
            self.key, self.value, self.reason
        )
    }
}

impl std::error::Error for OutOfRange {}

/// The unit a duration key counts in, from its name's suffix: its length in milliseconds and
/// its name. `None` for a key that is not named as a duration.
pub fn unit_of(key: &str) -> Option<(u64, &'static str)> {
    if key.ends_with("_ms") {
        Some((1, "ms"))
    } else if key.ends_with("_seconds") || key.ends_with("_secs") {
        Some((1_000, "seconds"))
    } else if key.ends_with("_minutes") {
        Some((60_000, "minutes"))
    } else if key.ends_with("_days") {
        Some((86_400_000, "days"))
    } else {
        None
    }
}

/// The most a key in `unit` (milliseconds per unit) may be.
fn most_in(unit: u64) -> u64 {
    LONGEST_SECONDS * 1_000 / unit
}

/// Refuses each `(key, value)` whose value, in the unit its key's name gives, is longer than
/// [`LONGEST_SECONDS`]. A key not named as a duration is a mistake of the caller and panics.
pub fn check_longest<'a>(
    settings: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result<(), OutOfRange> {
    for (key, value) in settings {
        let (unit, name) =
            unit_of(key).unwrap_or_else(|| panic!("{key} is not named as a duration setting"));
        let most = most_in(unit);
        if value > most {
            return Err(OutOfRange {
                key: key.to_string(),
                value: value.to_string(),
                reason: format!(
                    "the longest a duration setting may be is 366 days ({most} {name}); is \
                     the value in another unit than the key's name says?"
                ),
            });
        }
    }
    Ok(())
}

/// [`check_longest`] for a duration in seconds given as a decimal number.
pub fn check_longest_secs_f64(key: &str, value: f64) -> Result<(), OutOfRange> {
    if value.is_finite() && value <= LONGEST_SECONDS as f64 {
        return Ok(());
    }
    Err(OutOfRange {
        key: key.to_string(),
        value: format!("{value:?}"),
        reason: format!(
            "the longest a duration setting may be is 366 days ({LONGEST_SECONDS} seconds)"
        ),
    })
}

/// Refuses each `(key, value)` that is 0: keys where nothing useful happens at 0.
pub fn check_not_zero<'a>(
    settings: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result<(), OutOfRange> {
    for (key, value) in settings {
        if value == 0 {
            let unit = unit_of(key).map_or("", |(_, name)| name);
            return Err(OutOfRange {
                key: key.to_string(),
                value: "0".to_string(),
                reason: format!("it must be at least 1 {unit}")
                    .trim_end()
                    .to_string(),
            });
        }
    }
    Ok(())
}

/// The duration keys a process's `pub struct Config { ... }` declares as whole numbers
/// (`pub name_ms: u64`), read from its source: for the processes' tests that every such key is
/// checked.
pub fn whole_duration_keys(config_source: &str) -> Vec<String> {
    let Some(start) = config_source.find("pub struct Config {") else {
        return Vec::new();
    };
    let body = &config_source[start..];
    let body = &body[..body.find("\n}").unwrap_or(body.len())];
    body.lines()
        .filter_map(|l| l.trim().strip_prefix("pub ")?.strip_suffix(": u64,"))
        .filter(|name| unit_of(name).is_some())
        .map(str::to_string)
        .collect()
}

/// The duration-named fields of a config source that [`whole_duration_keys`] does not
/// find: those of other structs (a table's, such as `[apex]`) and those of other types
/// (`Vec<u64>`, `f64`). A process's tests compare them with the ones its checks cover by
/// hand, so that a new one cannot go unchecked.
pub fn other_duration_fields(config_source: &str) -> Vec<String> {
    let mut in_config = false;
    let mut found = Vec::new();
    for line in config_source.lines() {
        if line.starts_with("pub struct Config {") {
            in_config = true;
        } else if line.starts_with('}') {
            in_config = false;
        }
        let Some((name, ty)) = line
            .trim()
            .strip_prefix("pub ")
            .and_then(|f| f.strip_suffix(','))
            .and_then(|f| f.split_once(": "))
        else {
            continue;
        };
        if unit_of(name).is_some() && !(in_config && ty == "u64") {
            found.push(name.to_string());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_come_from_the_key_names_suffix() {
        assert_eq!(unit_of("alive_probe_ms"), Some((1, "ms")));
        assert_eq!(unit_of("drain_seconds"), Some((1_000, "seconds")));
        assert_eq!(
            unit_of("apex.heartbeat_bound_secs"),
            Some((1_000, "seconds"))
        );
        assert_eq!(
            unit_of("acme_renew_before_days"),
            Some((86_400_000, "days"))
        );
        assert_eq!(unit_of("max_forwards_per_session"), None);
        assert_eq!(unit_of("msg"), None);
    }

    #[test]
    fn a_year_and_a_day_is_the_longest_in_every_unit() {
        let ok = [
            ("a_seconds", LONGEST_SECONDS),
            ("b_ms", LONGEST_SECONDS * 1_000),
            ("c_days", 366),
            ("d_secs", 0),
            ("e_minutes", 366 * 24 * 60),
        ];
        assert_eq!(check_longest(ok), Ok(()));
        for (key, value) in [
            ("a_seconds", LONGEST_SECONDS + 1),
            ("b_ms", LONGEST_SECONDS * 1_000 + 1),
            ("c_days", 367),
            ("d_secs", u64::MAX),
            ("e_minutes", 366 * 24 * 60 + 1),
        ] {
            let err = check_longest([("fine_ms", 5), (key, value)]).unwrap_err();
            assert_eq!(err.key, key);
            assert_eq!(err.value, value.to_string());
        }
    }

    #[test]
    fn the_refusal_names_the_key_the_value_and_the_limit_in_the_keys_unit() {
        let err = check_longest([("visitor_header_timeout_seconds", 99_999_999_999)])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "setting visitor_header_timeout_seconds = 99999999999 is out of range: the \
                 longest a duration setting may be is 366 days (31622400 seconds)"
            ),
            "{err}"
        );
        let err = check_longest([("lag_wait_ms", u64::MAX)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("(31622400000 ms)"), "{err}");
    }

    #[test]
    fn decimal_seconds_are_bounded_and_must_be_finite() {
        assert_eq!(check_longest_secs_f64("x_secs", 30.5), Ok(()));
        for bad in [f64::INFINITY, f64::NAN, 1e300, LONGEST_SECONDS as f64 + 1.0] {
            let err = check_longest_secs_f64("apex.heartbeat_bound_secs", bad).unwrap_err();
            assert_eq!(err.key, "apex.heartbeat_bound_secs");
        }
    }

    #[test]
    fn zero_is_refused_only_where_asked_and_says_the_least() {
        assert_eq!(check_not_zero([("a_ms", 1), ("b_seconds", 7)]), Ok(()));
        let err = check_not_zero([("a_ms", 1), ("reap_interval_ms", 0)]).unwrap_err();
        assert_eq!(err.key, "reap_interval_ms");
        assert!(
            err.to_string().contains("it must be at least 1 ms"),
            "{err}"
        );
    }

    #[test]
    fn the_whole_duration_keys_of_a_config_are_read_from_its_source() {
        let source = "struct Other {\n    pub a_ms: u64,\n}\npub struct Config {\n    \
                      /// Doc.\n    pub drain_seconds: u64,\n    pub port: u16,\n    \
                      pub max_things: u64,\n    pub wait_ms: Vec<u64>,\n    \
                      pub renew_days: u64,\n}\nfn f() { let b_ms: u64 = 1; }\n";
        assert_eq!(whole_duration_keys(source), ["drain_seconds", "renew_days"]);
    }

    #[test]
    fn duration_fields_outside_configs_whole_keys_are_listed() {
        let source = "pub struct Config {\n    pub drain_seconds: u64,\n    \
                      pub purge_repeat_ms: Vec<u64>,\n    pub apex: Apex,\n}\n\
                      pub struct Apex {\n    pub bound_secs: f64,\n    pub ttl: u32,\n    \
                      pub limit_minutes: u64,\n}\nfn f(wait_ms: u64) {}\n";
        assert_eq!(
            other_duration_fields(source),
            ["purge_repeat_ms", "bound_secs", "limit_minutes"]
        );
    }

    #[test]
    #[should_panic(expected = "not named as a duration")]
    fn a_key_not_named_as_a_duration_is_the_callers_mistake() {
        let _ = check_longest([("max_forwards_per_session", 3)]);
    }
}
