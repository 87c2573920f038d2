//! The documents point where they say and cover what the code has: every relative link in the
//! README and `docs/` names a file of the repository (and, with `#anchor`, one of its
//! headings), every alert's `runbook` names a heading of `docs/operations.md`, and every
//! setting of each process's config file is in that process's document. No processes;
//! reads the files.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate sits in the repository")
        .to_path_buf()
}

/// The markdown files checked: the README and every `.md` under `docs/`.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.join("README.md")];
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("docs/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// GitHub's anchor for a heading: lower case, punctuation other than `-` and `_` dropped,
/// spaces turned into `-`.
fn anchor_of(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor a markdown text's headings make (a repeated heading gets `-1`, `-2`, ...).
/// Headings inside fenced code blocks are not headings.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = HashSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let heading = line.trim_start_matches('#');
        if !heading.starts_with(' ') {
            continue;
        }
        let base = anchor_of(heading);
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        });
        *n += 1;
    }
    out
}

/// The targets of the inline links `[text](target)` in a markdown text, outside code.
fn link_targets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Code spans may hold `](` that is no link.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].trim().to_string());
            rest = &after[end..];
        }
    }
    out
}

/// Why `target`, linked from `from`, points nowhere; `None` when it is fine.
fn broken(root: &Path, from: &Path, target: &str) -> Option<String> {
    if target.contains("://") || target.starts_with("mailto:") {
        return None;
    }
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let file = if path.is_empty() {
        from.to_path_buf()
    } else {
        from.parent().unwrap_or(root).join(path)
    };
    let Ok(file) = file.canonicalize() else {
        return Some(format!("{} does not exist", file.display()));
    };
    if !file.starts_with(root) {
        return Some(format!("{} is outside the repository", file.display()));
    }
    let anchor = anchor?;
    if file.extension().is_none_or(|e| e != "md") {
        return None;
    }
    let text = std::fs::read_to_string(&file).ok()?;
    (!anchors(&text).contains(anchor)).then(|| format!("no heading makes #{anchor}"))
}

#[test]
fn every_relative_link_in_the_docs_names_a_file_and_heading_that_exist() {
    let root = repo().canonicalize().expect("the repository");
    let mut problems = Vec::new();
    let docs = documents(&root);
    assert!(docs.len() > 5, "found the documents: {docs:?}");
    for doc in &docs {
        let text = std::fs::read_to_string(doc).expect("a readable document");
        for target in link_targets(&text) {
            if let Some(why) = broken(&root, doc, &target) {
                problems.push(format!("{}: ({target}): {why}", doc.display()));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_alerts_runbook_names_a_heading_of_the_operations_guide() {
    let root = repo();
    let rules = std::fs::read_to_string(root.join("docs/alerts/nearhop.rules.yml"))
        .expect("the alert rules");
    let guide = std::fs::read_to_string(root.join("docs/operations.md")).expect("the guide");
    let headings = anchors(&guide);
    let mut runbooks = 0;
    for line in rules.lines() {
        let Some(value) = line.trim().strip_prefix("runbook:") else {
            continue;
        };
        runbooks += 1;
        let target = value.trim().trim_matches('"');
        let anchor = target
            .strip_prefix("docs/operations.md#")
            .unwrap_or_else(|| panic!("a runbook outside the operations guide: {target}"));
        assert!(
            headings.contains(anchor),
            "runbook {target} names no heading of docs/operations.md"
        );
    }
    assert!(runbooks > 10, "found the runbooks: {runbooks}");
}

/// The fields of `pub struct Config { ... }` in a Rust source: the keys of the config file.
fn config_keys(source: &str) -> Vec<String> {
    let start = source
        .find("pub struct Config {")
        .expect("the source declares Config");
    let body = &source[start..];
    let body = &body[..body.find("\n}").expect("Config's body ends")];
    body.lines()
        .filter_map(|l| l.trim().strip_prefix("pub "))
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim().to_string())
        .filter(|name| name.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect()
}

#[test]
fn every_setting_of_each_process_is_documented() {
    let root = repo();
    let mut missing = Vec::new();
    for (source, doc) in [
        ("edge/src/config.rs", "docs/edge.md"),
        ("control/src/config.rs", "docs/control.md"),
        ("pdns-backend/src/config.rs", "docs/pdns-backend.md"),
    ] {
        let code = std::fs::read_to_string(root.join(source)).expect("a config source");
        let text = std::fs::read_to_string(root.join(doc)).expect("a document");
        let keys = config_keys(&code);
        assert!(keys.len() > 5, "{source}: found its keys: {keys:?}");
        for key in keys {
            // A plain key is written `key`; a table `[key]`, `[[key]]` or `[key.name]`.
            let forms = [format!("`{key}`"), format!("[{key}]"), format!("[{key}.")];
            if !forms.iter().any(|f| text.contains(f.as_str())) {
                missing.push(format!("{source}: `{key}` is not in {doc}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "undocumented settings:\n{}",
        missing.join("\n")
    );
}

#[test]
fn anchors_are_made_as_github_makes_them() {
    assert_eq!(
        anchor_of(" Mesh links and relays (`NearhopMeshLinkDown`, `NearhopRelayErrors`)"),
        "mesh-links-and-relays-nearhopmeshlinkdown-nearhoprelayerrors"
    );
    assert_eq!(
        anchor_of(" The mesh: every edge serves every tunnel"),
        "the-mesh-every-edge-serves-every-tunnel"
    );
    let text = "# A\n```\n# not a heading\n```\n## A\n#nohash\n";
    let found = anchors(text);
    assert!(found.contains("a") && found.contains("a-1"), "{found:?}");
    assert!(!found.contains("not-a-heading"), "{found:?}");
    assert_eq!(
        link_targets("see [x](a.md#b) and `[y](no)` [z](c.md)"),
        ["a.md#b", "c.md"]
    );
    let source = "/// Doc.\npub struct Config {\n    /// A.\n    pub a_key: u64,\n    #[serde(default)]\n    pub zones: Zones,\n}\npub struct Other {\n    pub not_this: u8,\n}\n";
    assert_eq!(config_keys(source), ["a_key", "zones"]);
}
