//! What the stack's end-to-end and edge tests and `bench_e2e` use most, in one import:
//! the ready-made stacks, both ends of a tunnel, and the ways to wait and observe.

pub use crate::control::{FREE_ZONE, PRO_ZONE};
pub use crate::edge::{host_of, port_of, url_host_port, SshArgs, SshClient};
pub use crate::edge_stack::{start_edge, EdgeStack};
pub use crate::full_stack::{
    fast_heartbeats, full_stack, full_stack_dropping_silent_regions, full_stack_with, mesh_stack,
    mesh_stack_with, AP, EU, US,
};
pub use crate::load::{plan_in, Load, LoadStats, VisitorPlan};
pub use crate::local_service::{
    assert_blob, blob_byte, finish_blob, tcp_echo, upload_pattern, LocalService, LocalTlsService,
};
pub use crate::metrics::metric;
pub use crate::poll::{eventually, eventually_within, PATIENCE};
pub use crate::reconnect_loop::ReconnectLoop;
pub use crate::visitor::{
    async_visitor, curl_tls, edge_http_port, http_get, lookup, read_head, start_download,
    upgrade_from, visit, visitor, websocket_from, Curl, Lookup,
};
pub use crate::{Stack, StackOptions};
