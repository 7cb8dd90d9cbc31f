//! The `wabulk` binary's library half: the engine's wiring (`engine::run`),
//! its writes of results and dead letters, and the webhook receiver's
//! start-up. `main.rs` only parses the command line. Capacity runs and the
//! demo live in `wabulk-lab`, so that this library links neither the
//! simulator nor the report's plotting.

/// The configuration lives in `wabulk-config`, which the lab reads too; it
/// is part of this library's interface (`engine::run` takes an `EngineSetup`).
pub use wabulk_config as config;
pub use wabulk_config::setup;

pub mod engine;
pub mod reload;
pub mod webhooks;
mod writes;
