//! What the edge asks of its own process at start and while it runs: the C allocator's
//! tuning and periodic trims, and the open-file limit.

pub mod allocator;
pub mod open_files;
