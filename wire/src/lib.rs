//! Types shared by nearhop's processes, so that edge, control and pdns-backend cannot drift:
//! the control API's requests, responses and error shape, the rules for zones, names and
//! bind addresses, close reasons, WAL positions, the comparison of secrets, what edges of the
//! mesh announce about themselves, control's proofs of which edge holds which name, and how
//! every process reads its settings.

pub mod api;
pub mod backend;
pub mod close;
pub mod duration_settings;
pub mod holder_proof;
pub mod lsn;
pub mod mesh;
pub mod names;
pub mod secret;
pub mod settings;

pub use api::*;
pub use backend::*;
pub use close::*;
pub use lsn::*;
pub use mesh::*;
pub use names::*;
pub use secret::*;
