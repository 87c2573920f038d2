//! Tunnels in control: who asks (`caller`), which names they may have (`names`), who holds
//! a name now and whether it may be taken over (`takeover`), the plan's and the source's
//! limits and their locks (`limits`), setting a tunnel up (`setup`),
//! and the one way tunnels are closed (`closing`).

pub mod caller;
pub mod closing;
pub mod limits;
pub mod names;
pub mod setup;
pub mod takeover;

pub use closing::{close_message, close_tunnels, Closed, Notice};
pub use setup::create;
