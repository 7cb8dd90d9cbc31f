//! The scheduler decides when each job may be sent. It owns the waiting jobs
//! and every limiter's state; it never touches the network.
//!
//! Jobs are sharded by business number: a [`Shard`] owns its numbers' queues,
//! pair budgets and throughput limiters outright, so the hot path takes no lock.
//! Only the WABA hourly counters ([`WabaRegistry`]) are shared, because one
//! WABA's numbers can hash to different shards; they are locked once per
//! batch, not per message.
//!
//! [`Shard`] is pure and driven with an explicit `now`, which is how it is
//! tested; [`Scheduler::spawn`] runs one task per shard on a real (or paused
//! tokio) clock and is what the engine uses.

mod config;
mod runner;
mod shard;
mod tiers;
mod waba;

pub use config::SchedulerConfig;
pub use runner::{Command, Scheduler, SchedulerStats, Stopped, TokioClock};
pub use shard::{Dispatch, Envelope, Ready, Shard, ThrottleCounts, Ticket};
pub use tiers::LiveTiers;
pub use waba::{TokenGroup, WabaCell, WabaRegistry};
