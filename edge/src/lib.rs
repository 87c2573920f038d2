//! nearhop's edge: the SSH server tunnel creators connect to with stock OpenSSH, and the
//! HTTP, TLS and TCP listeners that carry visitors into their SSH sessions.

pub mod accept;
pub mod admin_api;
pub mod allocator;
pub mod client_hello;
pub mod config;
pub mod control_client;
pub mod control_sync;
pub mod counting_io;
pub mod edge;
pub mod first_request;
pub mod host_key;
pub mod http_phases;
pub mod https;
pub mod messages;
pub mod metrics;
pub mod options;
pub mod pages;
pub mod read_buffer;
pub mod ssh_server;
pub mod ssh_session;
pub mod tunnel_setup;
pub mod tunnels;
pub mod username;
pub mod visitor_http;
pub mod visitor_tcp;
pub mod visitor_tls;
