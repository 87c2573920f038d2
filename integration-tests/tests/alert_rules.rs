//! The alert rules say what they mean: promtool accepts `docs/alerts/nearhop.rules.yml`,
//! its unit tests (`nearhop.rules.test.yml`, each alert firing and staying quiet) pass and
//! cover every alert, and every metric, label and label value the rules' expressions match
//! is one the code exports, so renaming a metric or a label value breaks this test rather
//! than silencing an alert. Needs promtool (`./scripts/install-deps.sh`, Debian package
//! `prometheus`); starts no Prometheus and no nearhop process.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate sits in the repository")
        .to_path_buf()
}

const RULES: &str = "nearhop.rules.yml";
const TESTS: &str = "nearhop.rules.test.yml";

/// `docs/alerts/`, where promtool runs: the test file names its rules relative to itself.
fn alerts_dir() -> PathBuf {
    repo().join("docs/alerts")
}

fn read_alerts_file(name: &str) -> String {
    let path = alerts_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `promtool <args>` in `docs/alerts/`. A missing promtool fails the test: skipping would
/// let a broken rule through unnoticed.
fn promtool(args: &[&str]) -> Output {
    match Command::new("promtool")
        .args(args)
        .current_dir(alerts_dir())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed: run ./scripts/install-deps.sh (Debian package \
             `prometheus` provides promtool; no server is started)"
        ),
        Err(e) => panic!("running promtool: {e}"),
    }
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One alerting rule: its name and its expression on one line.
struct Alert {
    name: String,
    expr: String,
}

/// The alerts of a rules file, read line by line (`- alert:`, then its `expr:`, inline or
/// a folded `>-` block).
fn alerts(rules: &str) -> Vec<Alert> {
    let lines: Vec<&str> = rules.lines().collect();
    let mut out: Vec<Alert> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(name) = line.trim().strip_prefix("- alert:") {
            out.push(Alert {
                name: name.trim().to_string(),
                expr: String::new(),
            });
            continue;
        }
        let Some(value) = line.trim().strip_prefix("expr:") else {
            continue;
        };
        let alert = out.last_mut().expect("an expr belongs to an alert");
        let value = value.trim();
        if !matches!(value, ">-" | ">" | "|-" | "|") {
            alert.expr = value.to_string();
            continue;
        }
        let indent = |l: &str| l.len() - l.trim_start().len();
        alert.expr = lines[i + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
            .map(|l| l.trim())
            .collect::<Vec<_>>()
            .join(" ");
    }
    for a in &out {
        assert!(!a.expr.is_empty(), "{}: found no expr", a.name);
    }
    out
}

/// An expression without its string literals (each replaced by `""`), so that words inside
/// label values are not taken for metric names.
fn without_strings(expr: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in expr.chars() {
        if quoted {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    quoted = false;
                    out.push('"');
                }
                _ => {}
            }
        } else {
            quoted = c == '"';
            out.push(c);
        }
    }
    out
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The metric names an expression refers to: words starting `nearhop_` or `process_`.
fn metric_names(expr: &str) -> Vec<String> {
    without_strings(expr)
        .split(|c: char| !is_name_char(c))
        .filter(|w| w.starts_with("nearhop_") || w.starts_with("process_"))
        .map(str::to_string)
        .collect()
}

/// One label matcher of a selector, as `name op "value"`.
#[derive(Debug)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

/// Every selector with matchers in an expression: the metric and its matchers.
fn selectors(expr: &str) -> Vec<(String, Vec<Matcher>)> {
    let mut out = Vec::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '"' {
            i = closing_quote(&chars, i) + 1;
            continue;
        }
        if chars[i] != '{' {
            i += 1;
            continue;
        }
        let before: String = chars[..i].iter().collect();
        let metric: String = before
            .trim_end()
            .chars()
            .rev()
            .take_while(|c| is_name_char(*c))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let mut matchers = Vec::new();
        let mut j = i + 1;
        loop {
            while chars[j] == ',' || chars[j].is_whitespace() {
                j += 1;
            }
            if chars[j] == '}' {
                break;
            }
            let label: String = chars[j..]
                .iter()
                .take_while(|c| is_name_char(**c))
                .collect();
            j += label.len();
            while chars[j].is_whitespace() {
                j += 1;
            }
            let op: String = chars[j..]
                .iter()
                .take_while(|c| matches!(c, '=' | '!' | '~'))
                .collect();
            j += op.len();
            while chars[j].is_whitespace() {
                j += 1;
            }
            assert_eq!(chars[j], '"', "a quoted value after {label}{op} in {expr}");
            let end = closing_quote(&chars, j);
            let value = chars[j + 1..end].iter().collect();
            matchers.push(Matcher { label, op, value });
            j = end + 1;
        }
        out.push((metric, matchers));
        i = j + 1;
    }
    out
}

/// Where the string that opens at `chars[open]` closes.
fn closing_quote(chars: &[char], open: usize) -> usize {
    let mut j = open + 1;
    while chars[j] != '"' {
        j += if chars[j] == '\\' { 2 } else { 1 };
    }
    j
}

/// A token of Rust source, as far as finding string literals needs.
#[derive(Debug, PartialEq)]
enum Token {
    Literal(String),
    Word(String),
    Punct(char),
}

/// The tokens of Rust source outside comments; string literals (plain, byte, raw) are kept
/// whole and character literals are dropped, so a `'"'` or a `{` inside a string is no
/// token.
fn tokens(source: &str) -> Vec<Token> {
    let s: Vec<char> = source.chars().collect();
    let at = |i: usize| s.get(i).copied().unwrap_or('\0');
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == '/' && at(i + 1) == '/' {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            loop {
                if at(i) == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if at(i) == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else if i >= s.len() {
                    break;
                } else {
                    i += 1;
                }
            }
        } else if c == '"' {
            let end = closing_quote(&s, i);
            out.push(Token::Literal(s[i + 1..end].iter().collect()));
            i = end + 1;
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if at(i + 1) == '\\' {
                i += 3;
                while i < s.len() && s[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
            }
        } else if c.is_alphanumeric() || c == '_' {
            let word: String = s[i..]
                .iter()
                .take_while(|c| c.is_alphanumeric() || **c == '_')
                .collect();
            i += word.chars().count();
            let hashes = s[i..].iter().take_while(|c| **c == '#').count();
            if (word == "r" || word == "br") && at(i + hashes) == '"' {
                // A raw string: r"..." or r#"..."#.
                let close: Vec<char> = std::iter::once('"')
                    .chain(std::iter::repeat_n('#', hashes))
                    .collect();
                let start = i + hashes + 1;
                let mut end = start;
                while end < s.len() && !s[end..].starts_with(&close) {
                    end += 1;
                }
                out.push(Token::Literal(s[start..end].iter().collect()));
                i = end + close.len();
            } else {
                out.push(Token::Word(word));
            }
        } else {
            if !c.is_whitespace() {
                out.push(Token::Punct(c));
            }
            i += 1;
        }
    }
    out
}

/// The tokens without the items under `#[cfg(test)]`: a literal only a unit test holds is
/// not one the process exports.
fn without_tests(tokens: Vec<Token>) -> Vec<Token> {
    let cfg_test = [
        Token::Punct('#'),
        Token::Punct('['),
        Token::Word("cfg".into()),
        Token::Punct('('),
        Token::Word("test".into()),
        Token::Punct(')'),
        Token::Punct(']'),
    ];
    let mut skip = vec![false; tokens.len()];
    let mut i = 0;
    while i < tokens.len() {
        if !tokens[i..].starts_with(&cfg_test) {
            i += 1;
            continue;
        }
        // Skip the attribute and its item: up to its `;`, or through its `{ ... }`.
        let start = i;
        i += cfg_test.len();
        let mut depth = 0;
        while i < tokens.len() {
            match tokens[i] {
                Token::Punct(';') if depth == 0 => break,
                Token::Punct('{') => depth += 1,
                Token::Punct('}') => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i += 1;
        skip[start..i.min(tokens.len())].fill(true);
    }
    tokens
        .into_iter()
        .zip(skip)
        .filter(|(_, skipped)| !skipped)
        .map(|(t, _)| t)
        .collect()
}

/// The `.rs` files under a directory.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// What one process's code exports, from the non-test code of its crate.
struct Process {
    /// `edge`, `control` or `pdns-backend`: its crate's directory.
    name: &'static str,
    /// Every string literal of the crate and of `wire/`, the crate every process links
    /// (control's setup results are `ErrorCode::as_str` there).
    literals: HashSet<String>,
    /// The names its metrics can have: its literals, and each literal under the namespace
    /// of a `Registry::new_custom(Some("namespace"...))` in the same file (pdns-backend's
    /// registry adds `nearhop_pdns_backend_` to its metrics' names).
    metric_names: HashSet<String>,
    /// Whether it registers the prometheus crate's process collector.
    process_collector: bool,
}

impl Process {
    fn read(name: &'static str) -> Process {
        let root = repo();
        let mut literals = HashSet::new();
        let mut metric_names = HashSet::new();
        let mut process_collector = false;
        for file in rust_files(&root.join(name).join("src")) {
            let source = std::fs::read_to_string(&file).expect("a readable source");
            let toks = without_tests(tokens(&source));
            let mut namespaces = Vec::new();
            let mut file_literals = Vec::new();
            for (i, t) in toks.iter().enumerate() {
                let word = |k: usize, w: &str| toks.get(i + k) == Some(&Token::Word(w.into()));
                if let Token::Literal(l) = t {
                    file_literals.push(l.clone());
                }
                if word(0, "new_custom") && word(2, "Some") {
                    if let Some(Token::Literal(ns)) = toks.get(i + 4) {
                        namespaces.push(ns.clone());
                    }
                }
                if word(0, "ProcessCollector") && word(3, "for_self") {
                    process_collector = true;
                }
            }
            for l in &file_literals {
                metric_names.insert(l.clone());
                for ns in &namespaces {
                    metric_names.insert(format!("{ns}_{l}"));
                }
            }
            literals.extend(file_literals);
        }
        for file in rust_files(&root.join("wire/src")) {
            let source = std::fs::read_to_string(&file).expect("a readable source");
            for t in without_tests(tokens(&source)) {
                if let Token::Literal(l) = t {
                    literals.insert(l);
                }
            }
        }
        assert!(
            metric_names.iter().any(|n| n.starts_with("nearhop_")),
            "{name}: found its metrics"
        );
        Process {
            name,
            literals,
            metric_names,
            process_collector,
        }
    }
}

/// The process whose metric this is, by its name's prefix.
fn owner<'a>(processes: &'a [Process], metric: &str) -> &'a Process {
    let name = if metric.starts_with("nearhop_edge_") {
        "edge"
    } else if metric.starts_with("nearhop_pdns_backend_") {
        "pdns-backend"
    } else {
        "control"
    };
    processes
        .iter()
        .find(|p| p.name == name)
        .expect("a known process")
}

fn processes() -> Vec<Process> {
    ["edge", "control", "pdns-backend"]
        .into_iter()
        .map(Process::read)
        .collect()
}

/// The series of the prometheus crate's `ProcessCollector` (0.13,
/// `src/process_collector.rs`), which every process registers without a namespace.
const PROCESS_SERIES: [&str; 7] = [
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
];

/// Labels the scrape config gives every target (`region` only to backends and edges,
/// but control's series carry their own): no process's code names them.
const TARGET_LABELS: [&str; 3] = ["job", "instance", "region"];

#[test]
fn promtool_checks_every_rule_of_the_file() {
    let rules = read_alerts_file(RULES);
    let alerts = rules
        .lines()
        .filter(|l| l.trim().starts_with("- alert:"))
        .count();
    assert!(alerts > 10, "found the alerts: {alerts}");
    let out = promtool(&["check", "rules", RULES]);
    let text = output_text(&out);
    assert!(
        out.status.success(),
        "promtool check rules {RULES}:\n{text}"
    );
    let found = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("SUCCESS: "))
        .and_then(|l| l.strip_suffix(" rules found"))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("promtool's count of rules:\n{text}"));
    assert_eq!(
        found, alerts,
        "rules promtool found against `- alert:` lines"
    );
}

#[test]
fn promtool_unit_tests_of_the_rules_pass() {
    let out = promtool(&["test", "rules", TESTS]);
    assert!(
        out.status.success(),
        "promtool test rules docs/alerts/{TESTS}:\n{}",
        output_text(&out)
    );
}

#[test]
fn every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not() {
    let names: Vec<String> = alerts(&read_alerts_file(RULES))
        .into_iter()
        .map(|a| a.name)
        .collect();
    let tests = read_alerts_file(TESTS);
    let lines: Vec<&str> = tests.lines().collect();
    let mut fires = HashSet::new();
    let mut quiet = HashSet::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = line.trim().strip_prefix("alertname:") else {
            continue;
        };
        let name = name.trim().to_string();
        assert!(
            names.contains(&name),
            "{TESTS} tests {name}, which {RULES} does not have"
        );
        let expected = lines[i + 1..]
            .iter()
            .find_map(|l| l.trim().strip_prefix("exp_alerts:"))
            .unwrap_or_else(|| panic!("{TESTS}: no exp_alerts after alertname {name}"));
        if expected.trim() == "[]" {
            quiet.insert(name);
        } else {
            fires.insert(name);
        }
    }
    let mut missing = Vec::new();
    for name in &names {
        if !fires.contains(name) {
            missing.push(format!("{name}: no case where it fires"));
        }
        if !quiet.contains(name) {
            missing.push(format!("{name}: no case where it stays quiet"));
        }
    }
    assert!(
        missing.is_empty(),
        "alerts without unit tests in docs/alerts/{TESTS}:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_metric_the_rules_name_is_one_the_code_exports() {
    let processes = processes();
    let mut problems = Vec::new();
    let mut checked = 0;
    for alert in alerts(&read_alerts_file(RULES)) {
        for name in metric_names(&alert.expr) {
            checked += 1;
            if name.starts_with("process_") {
                if !PROCESS_SERIES.contains(&name.as_str()) {
                    problems.push(format!(
                        "{}: {name} is no series of the process collector",
                        alert.name
                    ));
                }
                // The rule matches job=~"nearhop-.*": all three processes.
                for p in processes.iter().filter(|p| !p.process_collector) {
                    problems.push(format!(
                        "{}: {name}, but {} registers no ProcessCollector",
                        alert.name, p.name
                    ));
                }
                continue;
            }
            // A histogram's series are its name plus one of these.
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            let p = owner(&processes, &name);
            if !p.metric_names.contains(&name) && !p.metric_names.contains(base) {
                problems.push(format!(
                    "{}: {name} is no metric name in {}/src",
                    alert.name, p.name
                ));
            }
        }
    }
    assert!(checked > 15, "found the metrics of the rules: {checked}");
    assert!(
        problems.is_empty(),
        "metrics the rules name and the code does not export:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_label_value_the_rules_match_is_one_the_code_sets() {
    let processes = processes();
    let mut problems = Vec::new();
    let mut checked = 0;
    for alert in alerts(&read_alerts_file(RULES)) {
        for (metric, matchers) in selectors(&alert.expr) {
            if !metric.starts_with("nearhop_") {
                continue;
            }
            let p = owner(&processes, &metric);
            for m in matchers {
                if TARGET_LABELS.contains(&m.label.as_str()) {
                    continue;
                }
                if !p.literals.contains(&m.label) {
                    problems.push(format!(
                        "{}: {metric} has no label {} in {}/src",
                        alert.name, m.label, p.name
                    ));
                }
                // `!=` counts too: a value never set would make it match every series.
                let values: Vec<&str> = match m.op.as_str() {
                    "=" | "!=" => vec![m.value.as_str()],
                    "=~" | "!~" => m.value.split('|').collect(),
                    op => panic!("{}: unknown matcher {op}", alert.name),
                };
                for v in values {
                    assert!(
                        v.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                        "{}: {}{}\"{}\" is a regex this test cannot check; list the values",
                        alert.name,
                        m.label,
                        m.op,
                        m.value
                    );
                    checked += 1;
                    if !p.literals.contains(v) {
                        problems.push(format!(
                            "{}: {metric}{{{}{}\"{v}\"}}: no \"{v}\" in {}/src or wire/src",
                            alert.name, m.label, m.op, p.name
                        ));
                    }
                }
            }
        }
    }
    assert!(
        checked > 5,
        "found the label values of the rules: {checked}"
    );
    assert!(
        problems.is_empty(),
        "label values the rules match and the code never sets:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_job_the_rules_match_is_one_the_scrape_configs_name() {
    let root = repo();
    let rules = read_alerts_file(RULES);
    let template = std::fs::read_to_string(root.join("ansible/templates/prometheus-scrape.yml.j2"))
        .expect("the ansible scrape template");
    let jobs_of = |text: &str| -> HashSet<String> {
        text.lines()
            .filter_map(|l| l.trim_start_matches(['#', ' ']).strip_prefix("- job_name:"))
            .map(|j| j.trim().to_string())
            .collect()
    };
    let (header, template) = (jobs_of(&rules), jobs_of(&template));
    assert_eq!(header.len(), 3, "the header's jobs: {header:?}");
    assert_eq!(header, template, "the header's jobs against ansible's");
    let mut checked = 0;
    for alert in alerts(&rules) {
        for (_, matchers) in selectors(&alert.expr) {
            for m in matchers.iter().filter(|m| m.label == "job" && m.op == "=") {
                checked += 1;
                assert!(
                    header.contains(&m.value),
                    "{}: job {:?} is not scraped",
                    alert.name,
                    m.value
                );
            }
        }
    }
    assert!(checked >= 3, "found the jobs of the rules: {checked}");
}

#[test]
fn rules_and_sources_are_read_as_written() {
    let rules = "  - alert: A\n    expr: up{job=\"x\"} == 0\n  - alert: B\n    expr: >-\n      sum(rate(nearhop_a_bucket{r=~\"p|q\", s!=\"ok\"}[5m]))\n        / nearhop_b\n    for: 1m\n";
    let found = alerts(rules);
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].expr, "up{job=\"x\"} == 0");
    assert_eq!(
        found[1].expr,
        "sum(rate(nearhop_a_bucket{r=~\"p|q\", s!=\"ok\"}[5m])) / nearhop_b"
    );
    assert_eq!(
        metric_names(&found[1].expr),
        ["nearhop_a_bucket", "nearhop_b"]
    );
    let sel = selectors(&found[1].expr);
    assert_eq!(sel.len(), 1);
    assert_eq!(sel[0].0, "nearhop_a_bucket");
    let m: Vec<String> = sel[0]
        .1
        .iter()
        .map(|m| format!("{}{}{}", m.label, m.op, m.value))
        .collect();
    assert_eq!(m, ["r=~p|q", "s!=ok"]);
    assert!(metric_names("x{job=~\"nearhop_not_a_metric\"}").is_empty());

    let source = r####"
        // "in_a_comment"
        let a = "plain"; let c = '"'; let d = '\''; fn f<'a>(x: &'a str) {}
        let r = r#"raw "quoted""#; /* "in_a_block" /* nested */ */ let b = b"bytes";
        #[cfg(test)]
        mod tests { fn t() { let _ = "only_in_tests"; } }
        #[cfg(test)]
        use x::y;
        let after = "after_tests";
    "####;
    let literals: Vec<Token> = without_tests(tokens(source))
        .into_iter()
        .filter(|t| matches!(t, Token::Literal(_)))
        .collect();
    let lit = |s: &str| Token::Literal(s.into());
    assert_eq!(
        literals,
        [
            lit("plain"),
            lit("raw \"quoted\""),
            lit("bytes"),
            lit("after_tests")
        ]
    );
}
