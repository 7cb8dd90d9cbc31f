//! The `wabulk` binary's library half: configuration, the engine's wiring,
//! and the demo and simulator modes. `main.rs` only parses the command line.

pub mod config;
pub mod demo;
pub mod engine;
pub mod setup;
