//! A setting refused at start names where it came from, in each of the three processes:
//! the environment variable when one set it, the key when the file did. Runs the real
//! binaries, which stop before opening any socket or database: no service is needed.

use nearhop_stack::control::bin_path;
use std::process::Command;

/// Runs `binary` with `args`, the environment cleared of our prefixes but for `env`, and
/// returns what it printed on stderr, checking that it failed.
fn refused(binary: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(bin_path(binary).expect("the binary is built"));
    cmd.args(args)
        .env_remove("RUST_BACKTRACE")
        .env("RUST_LOG", "off");
    for (name, _) in std::env::vars() {
        if name.starts_with("NEARHOP_") && name != "NEARHOP_BIN_DIR" {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{binary} started with bad settings: {stderr}"
    );
    stderr
}

/// Each case: the binary, its arguments, the environment, what its error must say.
type Case = (
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
    &'static str,
);

const NAMED_BY_VARIABLE: &[Case] = &[
    (
        "nearhop-edge",
        &[],
        &[
            ("NEARHOP_EDGE_EDGE_SECRET", "s"),
            ("NEARHOP_EDGE_ALIVE_PROBE_MS", "0"),
        ],
        "environment variable NEARHOP_EDGE_ALIVE_PROBE_MS=\"0\" is invalid: setting \
         alive_probe_ms = 0 is out of range",
    ),
    // A check of the edge's own, not a duration's.
    (
        "nearhop-edge",
        &[],
        &[
            ("NEARHOP_EDGE_EDGE_SECRET", "s"),
            ("NEARHOP_EDGE_WORKER_THREADS", "100000"),
        ],
        "environment variable NEARHOP_EDGE_WORKER_THREADS=\"100000\" is invalid: \
         worker_threads 100000 is more than",
    ),
    (
        "nearhop-control",
        &["serve"],
        &[
            (
                "NEARHOP_CONTROL_ADMIN_SECRET",
                "an-admin-secret-long-enough",
            ),
            ("NEARHOP_CONTROL_REAP_INTERVAL_MS", "0"),
        ],
        "environment variable NEARHOP_CONTROL_REAP_INTERVAL_MS=\"0\" is invalid: setting \
         reap_interval_ms = 0 is out of range",
    ),
    // A key of a table.
    (
        "nearhop-pdns-backend",
        &[],
        &[("NEARHOP_PDNS_BACKEND_APEX_TTL", "4294967295")],
        "environment variable NEARHOP_PDNS_BACKEND_APEX_TTL=\"4294967295\" is invalid: \
         setting apex.ttl = 4294967295 is out of range",
    ),
];

#[test]
fn a_value_out_of_range_names_the_variable_that_set_it() {
    for (binary, args, env, said) in NAMED_BY_VARIABLE {
        let stderr = refused(binary, args, env);
        assert!(stderr.contains(said), "{binary}: {stderr}");
    }
}

#[test]
fn a_value_out_of_range_from_the_file_names_the_key_only() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("edge.toml");
    std::fs::write(&file, "edge_secret = \"s\"\nalive_probe_ms = 0\n").expect("write");
    let edge = refused(
        "nearhop-edge",
        &["--config", file.to_str().expect("a UTF-8 path")],
        // Another variable of the edge's, for another key.
        &[("NEARHOP_EDGE_KEEPALIVE_MAX", "3")],
    );
    assert!(
        edge.contains("Error: setting alive_probe_ms = 0 is out of range"),
        "{edge}"
    );
    assert!(!edge.contains("environment variable"), "{edge}");
}
