//! The edge tests' stack: Postgres and control without DNS, and one edge in `us`.

use crate::edge::{EdgeProcess, EdgeSpec, SshArgs, SshClient};
use crate::visitor::visitor;
use crate::{Stack, StackOptions};
use std::net::Ipv4Addr;

/// A stack (Postgres + control, no DNS) and one edge in `us` on 127.0.0.1.
pub struct EdgeStack {
    /// The edge (dropped before the stack).
    pub edge: EdgeProcess,
    /// Postgres and control.
    pub stack: Stack,
}

impl EdgeStack {
    /// Starts the stack; `extra_toml` is appended to the edge's config.
    pub fn start(extra_toml: &str) -> EdgeStack {
        let stack = Stack::start(StackOptions {
            regions: vec![
                ("us".into(), Ipv4Addr::new(127, 0, 0, 1)),
                ("eu".into(), Ipv4Addr::new(127, 0, 0, 2)),
            ],
            lag_wait_ms: 3000,
            ..StackOptions::default()
        })
        .expect("stack starts");
        let edge = start_edge(&stack, "us", Ipv4Addr::new(127, 0, 0, 1), extra_toml);
        EdgeStack { edge, stack }
    }

    /// Runs `ssh` against the edge.
    pub fn ssh(&self, name: &str, args: &SshArgs) -> SshClient {
        SshClient::start(
            &self.stack.dir.join("ssh"),
            name,
            self.edge.ssh_addr(),
            args,
        )
        .expect("ssh starts")
    }

    /// A visitor's `GET` of `path` on the tunnel at `url`, sent to the edge whatever the
    /// name resolves to (panics when no response comes back).
    pub fn visit(&self, url: &str, path: &str) -> reqwest::blocking::Response {
        visitor(url, self.edge.http_addr())
            .get(format!("{url}{path}"))
            .send()
            .unwrap_or_else(|e| panic!("GET {url}{path}: {e:#}"))
    }

    /// The key control holds for the edge's admin API (the edge made it at start and gave
    /// it to control in its registration), read from the primary as control reads it.
    pub fn admin_key(&self) -> String {
        let id = self.edge.spec.edge_id.replace('\'', "");
        let sql = format!("SELECT admin_key FROM edges WHERE id = '{id}'");
        crate::postgres::psql(self.stack.pg.endpoint_of("us").expect("primary"), &sql)
            .expect("psql")
            .trim()
            .to_string()
    }

    /// A fresh pro account's token.
    pub fn pro_token(&self) -> String {
        self.stack.pro_token()
    }
}

/// Starts an edge of `region` against the stack's control, probing clients every second.
pub fn start_edge(stack: &Stack, region: &str, ip: Ipv4Addr, extra_toml: &str) -> EdgeProcess {
    let credential = stack
        .control
        .issue_edge_credential(&format!("{region}-1"))
        .expect("edge credential");
    let mut spec = EdgeSpec::for_tests(region, ip, &stack.control.url, &credential);
    spec.extra_toml = format!("alive_probe_ms = 1000\n{extra_toml}");
    EdgeProcess::start(&stack.dir.join(format!("edge-{region}")), spec).expect("edge starts")
}
