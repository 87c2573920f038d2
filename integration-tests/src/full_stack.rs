//! The whole three-region stack as the end-to-end tests and `bench_e2e` run it: DNS and an
//! edge in every region, reached by region index.

use crate::control::ControlSpec;
use crate::{Stack, StackOptions};
use std::path::PathBuf;

/// us, the primary's region (index into `Stack::regions`).
pub const US: usize = 0;
/// eu (a streaming replica).
pub const EU: usize = 1;
/// ap (a streaming replica).
pub const AP: usize = 2;

/// Edges heartbeat every second, so that a stopped edge is noticed in seconds.
pub fn fast_heartbeats(spec: &mut ControlSpec) {
    spec.heartbeat_seconds = 1;
}

/// The whole three-region stack with DNS and edges.
pub fn full_stack() -> Stack {
    full_stack_with(StackOptions::default())
}

/// The whole stack; `opts` decides the rest (lag wait, control tweaks). With
/// `NEARHOP_E2E_KEEP_DIR=/some/dir` the data and logs stay in a fresh directory there.
pub fn full_stack_with(opts: StackOptions) -> Stack {
    Stack::start(StackOptions {
        with_dns: true,
        with_edges: true,
        dir: opts.dir.clone().or_else(kept_dir),
        ..opts
    })
    .expect("the three-region stack starts")
}

/// A fresh directory under `NEARHOP_E2E_KEEP_DIR`, when set: the stack's data and logs stay
/// there after the test.
fn kept_dir() -> Option<PathBuf> {
    let root = std::env::var_os("NEARHOP_E2E_KEEP_DIR")?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(PathBuf::from(root).join(format!("stack-{stamp}")))
}

/// Three regions, an edge in each (with the stack's certificate for HTTPS), no DNS (data and
/// logs kept as with [`full_stack_with`]), heartbeating every second so that each edge learns its peers quickly; returned once every
/// edge is linked to every other (the mesh).
pub fn mesh_stack() -> Stack {
    mesh_stack_with("")
}

/// [`mesh_stack`] with `edge_toml` added to every edge's configuration.
pub fn mesh_stack_with(edge_toml: &str) -> Stack {
    let stack = Stack::start(StackOptions {
        with_edges: true,
        edge_https: true,
        control_tweak: Some(fast_heartbeats),
        dir: kept_dir(),
        edge_toml: edge_toml.to_string(),
        ..StackOptions::default()
    })
    .expect("the stack starts");
    stack.wait_mesh_linked().expect("the edges link up");
    stack
}

/// The whole stack, quick to notice a lost edge: edges heartbeat every second, and a region
/// drops out of the connect name 3 s after its edges' last heartbeat.
pub fn full_stack_dropping_silent_regions() -> Stack {
    let mut stack = full_stack_with(StackOptions {
        control_tweak: Some(fast_heartbeats),
        ..StackOptions::default()
    });
    stack
        .restart_dns_with(|spec| spec.heartbeat_bound_secs = 3.0)
        .expect("DNS restarts");
    stack
}
