//! nearhop's edge: the SSH server tunnel creators connect to with stock OpenSSH, and the
//! HTTP, TLS and TCP listeners that carry visitors into their SSH sessions.
//!
//! Rooms, bottom to top: the leaves (`config`, `options`, `metrics`, `io`, `process`), the
//! shared state (`tunnels`, `edge`), the listeners and tasks that take an `Arc<Edge>`
//! (`ssh`, `visitor`, `control`), and `run`, which starts them all. A module imports only
//! rooms below it or beside it, never the one that started it.

pub mod config;
pub mod control;
pub mod edge;
pub mod inspector;
pub mod io;
pub mod mesh;
pub mod metrics;
pub mod options;
pub mod process;
pub mod run;
pub mod ssh;
pub mod tunnels;
pub mod visitor;
