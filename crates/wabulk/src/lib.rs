//! The `wabulk` binary's library half: configuration, the engine's wiring,
//! the demo, and capacity runs from scenario files. `main.rs` only parses the command line.

pub mod config;
pub mod demo;
pub mod engine;
pub mod scenario;
pub mod setup;
pub mod webhooks;
mod writes;
