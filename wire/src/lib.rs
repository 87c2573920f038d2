//! Types shared by nearhop's processes, so that edge, control and pdns-backend cannot drift:
//! the control API's requests, responses and error shape, and the rules for zones and names.

pub mod api;
pub mod mesh;
pub mod names;
pub mod settings;

pub use api::*;
pub use mesh::*;
pub use names::*;
