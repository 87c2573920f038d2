//! What the edge asks of its own process at start and while it runs: the C allocator's
//! tuning and periodic trims, the open-file limit, and log lines kept to one per interval
//! under floods.

pub mod allocator;
pub mod log_limit;
pub mod open_files;
