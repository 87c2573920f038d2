//! The connectors pdns can use to reach the backend, each a thin transport over
//! [`crate::protocol::Backend`]: unix socket (the fast path), HTTP and pipe.

pub mod http;
pub mod lines;
pub mod pipe;
pub mod unix;
