//! One way to configure a nearhop process: a TOML file (optional), then `PREFIX_<KEY>`
//! environment overrides, deserialized once into the process's own config type.
//!
//! The rule, the same for control, edge and pdns-backend:
//!
//! - `NEARHOP_EDGE_SSH_LISTEN=…` sets the key `ssh_listen` (the part after the prefix, lower
//!   case). `PREFIX_CONFIG` is never a key: it names the file.
//! - A key of a table the process declares (e.g. the backend's `apex`) is reached as
//!   `PREFIX_<TABLE>_<KEY>`: `NEARHOP_PDNS_BACKEND_APEX_TTL` sets `apex.ttl`.
//! - The value is read as a TOML value when it parses as one (numbers, booleans, arrays,
//!   inline tables, quoted strings), otherwise as a plain string. When the TOML reading does
//!   not fit the key (digits for a secret, `true` for a name), the raw text is tried as a
//!   string before the variable is refused. Quote a value (`'"123"'`) to force a string.
//! - An error names the variable (`environment variable NEARHOP_CONTROL_LAG_WAIT_MS="x" is
//!   invalid: …`) or the key (`config key `apex.ttl` is invalid: …`).

use serde::de::DeserializeOwned;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Why a process's settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file could not be read.
    #[error("reading config {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("parsing config {}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where and why parsing stopped.
        source: toml::de::Error,
    },
    /// An override variable's value is not valid Unicode.
    #[error("environment variable {name} is not valid Unicode")]
    NotUnicode {
        /// The variable.
        name: String,
    },
    /// An override variable's value does not fit its key.
    #[error("environment variable {name}={value:?} is invalid: {message}")]
    Variable {
        /// The variable.
        name: String,
        /// Its value, as given.
        value: String,
        /// Why it was refused.
        message: String,
    },
    /// A key of the file does not fit the configuration.
    #[error("config key `{key}` is invalid: {message}")]
    Key {
        /// The key, dotted (`apex.prefixes`).
        key: String,
        /// Why it was refused.
        message: String,
    },
    /// The configuration as a whole does not fit (e.g. a required key is missing).
    #[error("invalid configuration: {message}")]
    Invalid {
        /// Why it was refused.
        message: String,
    },
}

/// Reads the TOML file at `path` (none: every key at its default), applies the process's
/// `prefix` environment overrides (e.g. `NEARHOP_EDGE_`) and deserializes the result into `T`.
/// `tables` are the dotted names of tables whose keys are overridden as
/// `PREFIX_<TABLE>_<KEY>` (e.g. `["apex"]`); see the module documentation for the rule.
pub fn load_toml_with_env<T: DeserializeOwned>(
    path: Option<&Path>,
    prefix: &str,
    tables: &[&str],
) -> Result<T, SettingsError> {
    let file = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| SettingsError::Read {
                path: p.to_path_buf(),
                source,
            })?;
            Some((p, text))
        }
        None => None,
    };
    let file = file.as_ref().map(|(p, text)| (*p, text.as_str()));
    parse_toml_with_env(file, prefix, tables, std::env::vars_os())
}

/// [`load_toml_with_env`] over a file already read (`(path, text)`, the path only for
/// messages) and the given environment.
pub fn parse_toml_with_env<T: DeserializeOwned>(
    file: Option<(&Path, &str)>,
    prefix: &str,
    tables: &[&str],
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<T, SettingsError> {
    let mut table = match file {
        Some((path, text)) => {
            text.parse::<toml::Table>()
                .map_err(|source| SettingsError::Parse {
                    path: path.to_path_buf(),
                    source,
                })?
        }
        None => toml::Table::new(),
    };
    // In name order, so that a table's own variable (`PREFIX_APEX`) comes before its keys'
    // (`PREFIX_APEX_TTL`) and the more specific one wins, whatever the environment's order.
    let mut vars: Vec<(OsString, OsString)> = vars.into_iter().collect();
    vars.sort();
    let mut overrides = Vec::new();
    for (name, value) in vars {
        // Variables of other programs may be anything; only ours must be readable.
        let Some(name) = name.to_str() else { continue };
        let Some(key) = name.strip_prefix(prefix) else {
            continue;
        };
        let key = key.to_ascii_lowercase();
        if key == "config" {
            continue;
        }
        let Ok(value) = value.into_string() else {
            return Err(SettingsError::NotUnicode { name: name.into() });
        };
        let o = Override {
            name: name.to_string(),
            path: key_path(&key, tables),
            typed: toml_value(&value),
            typed_refusal: None,
            raw: value,
        };
        o.apply(&mut table, false)?;
        overrides.push(o);
    }
    deserialize(table, &mut overrides)
}

/// A refusal of the settings after they were read (a value out of range, two keys that do
/// not go together), reworded to name the override variable that set the key it is about:
/// `environment variable NEARHOP_CONTROL_REAP_INTERVAL_MS="0" is invalid: setting
/// reap_interval_ms = 0 is out of range: …`. Such checks know the key only; an operator who
/// set the value in the environment would look for it in the file. `None` when no `prefix`
/// variable sets a key the message names (as a whole word, dotted for a table's key): the
/// message as it was.
pub fn blame_variable(message: String, prefix: &str, tables: &[&str]) -> String {
    blame_variable_in(&message, prefix, tables, std::env::vars_os()).unwrap_or(message)
}

/// [`blame_variable`] over the given environment; `None` when no variable is to blame.
pub fn blame_variable_in(
    message: &str,
    prefix: &str,
    tables: &[&str],
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Option<String> {
    let mut vars: Vec<(OsString, OsString)> = vars.into_iter().collect();
    // The same order as the overrides were applied: the last one of a key won.
    vars.sort();
    vars.into_iter()
        .rev()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            let key = name.strip_prefix(prefix)?.to_ascii_lowercase();
            if key == "config" {
                return None;
            }
            let key = key_path(&key, tables).join(".");
            names_key(message, &key).then(|| {
                // A secret's value (a short admin secret, a database URL with its
                // password) is not repeated into logs and terminals.
                if holds_secret(&key) {
                    format!("environment variable {name} is invalid: {message}")
                } else {
                    format!(
                        "environment variable {name}={:?} is invalid: {message}",
                        value.to_string_lossy()
                    )
                }
            })
        })
        .next()
}

/// Whether a key's value may be a secret: secrets, credentials, passwords, tokens, URLs
/// (which can carry a password).
fn holds_secret(key: &str) -> bool {
    ["secret", "credential", "password", "token", "url"]
        .iter()
        .any(|word| key.contains(word))
}

/// Whether `message` names `key` as a whole word: not as part of a longer key
/// (`heartbeat_seconds` in `edge_heartbeat_seconds`, `apex` in `apex.ttl`).
fn names_key(message: &str, key: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    message.match_indices(key).any(|(at, _)| {
        let before = message[..at].chars().next_back();
        let mut after = message[at + key.len()..].chars();
        // A dot goes on into a longer key only when a word follows it (not a full stop).
        let goes_on = match after.next() {
            Some('.') => after.next().is_some_and(word),
            c => c.is_some_and(word),
        };
        !before.is_some_and(|c| word(c) || c == '.') && !goes_on
    })
}

/// One `PREFIX_<KEY>` variable and where it lands.
struct Override {
    name: String,
    raw: String,
    /// The key's dotted path, split.
    path: Vec<String>,
    /// The value read as TOML, while that reading is still being tried.
    typed: Option<toml::Value>,
    /// Why the TOML reading was refused, once the raw text is tried instead: if the text is
    /// refused too, this is the better explanation (`[]` is "empty", not "not a list").
    typed_refusal: Option<String>,
}

impl Override {
    /// Sets the key in `table`: the TOML reading of the value, or the raw text when there is
    /// none or `as_string`.
    fn apply(&self, table: &mut toml::Table, as_string: bool) -> Result<(), SettingsError> {
        let value = match (&self.typed, as_string) {
            (Some(v), false) => v.clone(),
            _ => toml::Value::String(self.raw.clone()),
        };
        let Some((last, parents)) = self.path.split_last() else {
            return Ok(());
        };
        let mut at = table;
        for (i, part) in parents.iter().enumerate() {
            let entry = at
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(inner) = entry else {
                return Err(self.refused(format!(
                    "config key `{}` is not a table",
                    self.path[..=i].join(".")
                )));
            };
            at = inner;
        }
        at.insert(last.clone(), value);
        Ok(())
    }

    fn refused(&self, message: String) -> SettingsError {
        let value = if holds_secret(&self.path.join(".")) {
            "(hidden)".to_string()
        } else {
            self.raw.clone()
        };
        SettingsError::Variable {
            name: self.name.clone(),
            value,
            message,
        }
    }

    /// Whether the error at dotted `key` lies in what this variable set.
    fn covers(&self, key: &str) -> bool {
        let own = self.path.join(".");
        key == own || key.starts_with(&format!("{own}."))
    }
}

/// `apex_ttl` with the table `apex` declared → `["apex", "ttl"]`; the longest declared table
/// wins, so `zones.pro` is found before `zones`.
fn key_path(key: &str, tables: &[&str]) -> Vec<String> {
    let table = tables
        .iter()
        .filter(|t| key.starts_with(&format!("{}_", t.replace('.', "_"))))
        .max_by_key(|t| t.len());
    match table {
        Some(t) => {
            let mut path: Vec<String> = t.split('.').map(str::to_string).collect();
            path.push(key[t.len() + 1..].to_string());
            path
        }
        None => vec![key.to_string()],
    }
}

/// The value as TOML when it parses as one (numbers, booleans, arrays, inline tables, quoted
/// strings); `None` for anything else (a plain string).
fn toml_value(raw: &str) -> Option<toml::Value> {
    let mut t = format!("v = {raw}").parse::<toml::Table>().ok()?;
    // `1\nother = 2` parses too; only a value that stands alone counts.
    if t.len() != 1 {
        return None;
    }
    t.remove("v")
}

/// Deserializes `table`, trying a variable's raw text as a string when its TOML reading does
/// not fit, and naming the variable or key that is refused.
fn deserialize<T: DeserializeOwned>(
    mut table: toml::Table,
    overrides: &mut [Override],
) -> Result<T, SettingsError> {
    loop {
        let err = match toml::Value::Table(table.clone()).try_into::<T>() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let message = err.message().trim_end().to_string();
        let key = failing_key(&err.to_string(), &message);
        // The last variable of a key wins, as it was the last applied.
        let culprit = key
            .as_deref()
            .and_then(|k| overrides.iter_mut().rev().find(|o| o.covers(k)));
        match (culprit, key) {
            (Some(o), _) if o.typed.is_some() => {
                o.apply(&mut table, true)?;
                o.typed = None;
                o.typed_refusal = Some(message);
            }
            (Some(o), _) => {
                let message = o.typed_refusal.clone().unwrap_or(message);
                return Err(o.refused(message));
            }
            (None, Some(key)) => return Err(SettingsError::Key { key, message }),
            (None, None) => return Err(SettingsError::Invalid { message }),
        }
    }
}

/// The dotted key an error is about. toml 0.8 does not expose it, but ends the error's text
/// with "in `apex.ttl`" (pinned by a test); an unknown field is named in the message.
fn failing_key(display: &str, message: &str) -> Option<String> {
    let parent = display
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("in `")?.strip_suffix('`'))
        .map(str::to_string);
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|m| m.split('`').next());
    match (parent, unknown) {
        (Some(p), Some(u)) => Some(format!("{p}.{u}")),
        (None, Some(u)) => Some(u.to_string()),
        (p, None) => p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        #[serde(default)]
        name: String,
        #[serde(default)]
        secret: String,
        #[serde(default)]
        port: u16,
        #[serde(default)]
        verbose: bool,
        #[serde(default)]
        range: (u16, u16),
        #[serde(default)]
        apex: Apex,
        #[serde(default)]
        zones: Zones,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Apex {
        #[serde(default)]
        ttl: u32,
        #[serde(default)]
        default_region: String,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Zones {
        #[serde(default)]
        pro: Apex,
    }

    const TABLES: &[&str] = &["apex", "zones", "zones.pro"];

    fn parse(file: &str, env: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let vars = env
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        parse_toml_with_env(Some((Path::new("t.toml"), file)), "APP_", TABLES, vars)
    }

    fn blame(message: &str, env: &[(&str, &str)]) -> Option<String> {
        let vars = env
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        blame_variable_in(message, "APP_", TABLES, vars)
    }

    #[test]
    fn a_refusal_after_reading_names_the_variable_that_set_the_key() {
        assert_eq!(
            blame(
                "setting port = 0 is out of range: it must be at least 1",
                &[("APP_PORT", "0"), ("APP_NAME", "x"), ("OTHER_PORT", "1")]
            )
            .as_deref(),
            Some(
                "environment variable APP_PORT=\"0\" is invalid: setting port = 0 is out of \
                 range: it must be at least 1"
            )
        );
        // A table's key, dotted in the message.
        assert_eq!(
            blame(
                "setting apex.ttl = 5000000000 is out of range",
                &[("APP_APEX_TTL", "5000000000")]
            )
            .as_deref(),
            Some(
                "environment variable APP_APEX_TTL=\"5000000000\" is invalid: setting apex.ttl = \
                 5000000000 is out of range"
            )
        );
        // At the end of a sentence.
        assert!(blame("the value must go with port.", &[("APP_PORT", "1")]).is_some());
        assert!(blame("it goes with port. Set both", &[("APP_PORT", "1")]).is_some());
    }

    #[test]
    fn a_secrets_value_is_not_repeated_in_the_refusal() {
        assert_eq!(
            blame(
                "admin_secret must be 16 characters or more",
                &[("APP_ADMIN_SECRET", "short")]
            )
            .as_deref(),
            Some("environment variable APP_ADMIN_SECRET is invalid: admin_secret must be 16 characters or more")
        );
        let said = blame(
            "database_url is not a postgres URL",
            &[("APP_DATABASE_URL", "mysql://u:pw@h/db")],
        )
        .expect("blamed");
        assert!(!said.contains("pw@"), "{said}");
    }

    #[test]
    fn a_refusal_of_a_key_no_variable_set_is_left_as_it_is() {
        // The file set it: no variable to blame.
        assert_eq!(
            blame("setting port = 0 is out of range", &[("APP_NAME", "x")]),
            None
        );
        // A longer key that contains the variable's key is another key.
        assert_eq!(
            blame("setting sport = 0 is out of range", &[("APP_PORT", "0")]),
            None
        );
        assert_eq!(
            blame("setting port_max = 0 is wrong", &[("APP_PORT", "0")]),
            None
        );
        assert_eq!(
            blame("setting apex.ttl = 0 is wrong", &[("APP_APEX", "{}")]),
            None
        );
        // The file's name is no key.
        assert_eq!(blame("config names a port", &[("APP_CONFIG", "/x")]), None);
    }

    #[test]
    fn env_overrides_nested_number_bool_and_string_keys() {
        let s = parse(
            "name = \"file\"\nport = 1\n[apex]\nttl = 5\n",
            &[
                ("APP_NAME", "from-env"),
                ("APP_PORT", "8080"),
                ("APP_VERBOSE", "true"),
                ("APP_RANGE", "[3000, 3010]"),
                ("APP_APEX_TTL", "30"),
                ("APP_APEX_DEFAULT_REGION", "eu"),
                ("APP_ZONES_PRO_TTL", "7"),
                ("OTHER_PORT", "x"),
                ("APP_CONFIG", "/etc/app.toml"),
            ],
        )
        .expect("settings");
        assert_eq!(s.name, "from-env");
        assert_eq!(s.port, 8080);
        assert!(s.verbose);
        assert_eq!(s.range, (3000, 3010));
        assert_eq!(s.apex.ttl, 30);
        assert_eq!(s.apex.default_region, "eu");
        assert_eq!(s.zones.pro.ttl, 7);
        let s = parse(
            "",
            &[
                ("APP_APEX_TTL", "9"),
                ("APP_APEX", "{ ttl = 1, default_region = \"ap\" }"),
            ],
        )
        .expect("settings");
        assert_eq!((s.apex.ttl, s.apex.default_region.as_str()), (9, "ap"));
    }

    #[test]
    fn values_that_read_as_toml_of_the_wrong_type_are_taken_as_strings() {
        let s = parse(
            "",
            &[
                ("APP_SECRET", "0123456789012345"),
                ("APP_NAME", "true"),
                ("APP_APEX_DEFAULT_REGION", "2026-01-01"),
            ],
        )
        .expect("settings");
        assert_eq!(s.secret, "0123456789012345");
        assert_eq!(s.name, "true");
        assert_eq!(s.apex.default_region, "2026-01-01");
        let s = parse("", &[("APP_NAME", "\"quoted\"")]).expect("settings");
        assert_eq!(s.name, "quoted");
    }

    #[test]
    fn a_bad_value_names_the_variable() {
        let e = parse("", &[("APP_PORT", "x")]).expect_err("refused");
        let text = e.to_string();
        assert!(
            text.starts_with("environment variable APP_PORT=\"x\" is invalid: "),
            "{text}"
        );
        let e = parse("", &[("APP_APEX_TTL", "-1")]).expect_err("refused");
        assert!(
            e.to_string().contains("APP_APEX_TTL") && e.to_string().contains("integer `-1`"),
            "the TOML reading's refusal explains best: {e}"
        );
        let e = parse("", &[("APP_APEX_TLL", "1")]).expect_err("refused");
        assert!(
            e.to_string().contains("APP_APEX_TLL") && e.to_string().contains("unknown field"),
            "{e}"
        );
        let e = parse("apex = 3\n", &[("APP_APEX_TTL", "1")]).expect_err("refused");
        assert!(e.to_string().contains("`apex` is not a table"), "{e}");
    }

    #[test]
    fn a_bad_file_value_names_the_key() {
        let e = parse("[apex]\nttl = \"x\"\n", &[]).expect_err("refused");
        assert!(
            e.to_string()
                .starts_with("config key `apex.ttl` is invalid"),
            "{e}"
        );
        let e = parse("nmae = 1\n", &[]).expect_err("refused");
        assert!(
            e.to_string().starts_with("config key `nmae` is invalid"),
            "{e}"
        );
        let e = parse("name = \n", &[]).expect_err("refused");
        assert!(e.to_string().starts_with("parsing config t.toml"), "{e}");
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let e = load_toml_with_env::<Settings>(Some(Path::new("/nonexistent/x.toml")), "APP_", &[])
            .expect_err("refused");
        assert!(
            e.to_string()
                .starts_with("reading config /nonexistent/x.toml"),
            "{e}"
        );
    }

    #[test]
    fn no_file_means_defaults() {
        let s: Settings = parse_toml_with_env(None, "APP_", TABLES, Vec::new()).expect("settings");
        assert_eq!(s.port, 0);
        assert_eq!(s.apex, Apex::default());
    }

    #[cfg(unix)]
    #[test]
    fn a_value_that_is_not_unicode_is_refused_and_other_names_skipped() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![0xff, 0xfe]);
        let vars = vec![
            (bad.clone(), OsString::from("x")),
            (OsString::from("APP_NAME"), bad),
        ];
        let e = parse_toml_with_env::<Settings>(None, "APP_", TABLES, vars).expect_err("refused");
        assert!(
            e.to_string().contains("APP_NAME is not valid Unicode"),
            "{e}"
        );
    }
}
