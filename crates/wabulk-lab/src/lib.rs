//! The capacity-run lab: [`scenario`] (a run from a `loadtest/scenarios/*.toml`
//! file: broker, Graph API simulator, the engine as a child process, load,
//! report) and [`demo`] (a scenario built from flags).
//!
//! Apart from the engine so that the `wabulk` library links neither the
//! simulator nor the report's plotting. The engine is only ever started as a
//! process (`wabulk run --config FILE`), so the lab needs the engine's
//! configuration (`wabulk-config`), never the engine itself; the `wabulk`
//! binary calls in here for `demo`, `simulate` and `loadgen`.

pub mod demo;
pub mod scenario;

/// The simulator and the load generator, for the `wabulk simulate` and
/// `wabulk loadgen --spec` commands, which use them as they are.
pub use wabulk_graph_sim as graph_sim;
pub use wabulk_loadgen as loadgen;
