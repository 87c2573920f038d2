//! The local nearhop stack: real PostgreSQL primary and streaming replicas, `pdns_server`
//! with pdns-backend, control and edges on loopback. One harness serves `make up`
//! (`nearhop-stack`), the integration tests and the benchmarks.

// The processes and the stack they make.
pub mod control;
pub mod edge;
pub mod pdns;
pub mod pebble;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod stack;

// Ready-made stacks for the tests and benchmarks.
pub mod edge_stack;
pub mod fixtures;
pub mod full_stack;

// Both ends of a tunnel, what stands between, and what tests observe with.
pub mod background;
pub mod balancer;
pub mod chromium;
pub mod clients;
pub mod dns_client;
pub mod load;
pub mod local_service;
pub mod mesh_impostor;
pub mod metrics;
pub mod poll;
pub mod prelude;
pub mod reconnect_loop;
pub mod stalled_ssh;
pub mod stats;
pub mod visitor;

pub use control::{bin_path, ControlProcess, ControlSpec};
pub use stack::{Region, RegionPorts, Stack, StackOptions};
