//! The edge's conversation with control: the HTTP client for its API, the registration and
//! heartbeat task, and the admin API control calls on the edge.

pub mod admin_api;
pub mod client;
pub mod sync;
