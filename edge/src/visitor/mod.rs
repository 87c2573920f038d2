//! The visitors' side: the HTTP, TLS and TCP listeners, what they read before routing (the
//! first request head, the ClientHello), the one routing step they share, the request
//! phases, the raw splice, and the pages the edge answers with itself.

pub mod client_hello;
pub mod first_request;
pub mod http;
pub mod http_phases;
pub mod https;
pub mod pages;
pub mod routing;
pub mod splice;
pub mod tcp;
pub mod tls;
