//! The local nearhop stack: real PostgreSQL primary and streaming replicas, `pdns_server`
//! with pdns-backend, control and edges on loopback. One harness serves `make up`
//! (`nearhop-stack`) and the integration tests.

pub mod control;
pub mod edge;
pub mod pdns;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod stack;

pub use control::{bin_path, ControlProcess, ControlSpec};
pub use stack::{Region, RegionPorts, Stack, StackOptions};
