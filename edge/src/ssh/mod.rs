//! The tunnel creators' side: the SSH listener, the client's hello and the cipher offer, one
//! session per client, what the username and host key are, the text users read, and setting
//! up a tunnel with control.

pub mod hello;
pub mod host_key;
pub mod link;
pub mod messages;
pub mod server;
pub mod session;
pub mod tunnel_setup;
pub mod username;
