//! wabulk's load generator: turns a [`LoadSpec`] into Kafka records for
//! `wabulk.jobs` ([`generate`], pure and deterministic for a seed) and
//! writes them at a target rate ([`run`]), for `wabulk loadgen` and
//! `wabulk demo`.
//!
//! What a run contains is decided up front by the spec, so a demo can say
//! what to expect before the engine has processed anything: how many
//! results per number (`LoadReport::per_number`), how many dead letters
//! (`LoadReport::malformed`), which recipients are hot (Zipf, bursts).

mod error;
mod generate;
mod pacer;
mod report;
mod run;
mod spec;

pub use error::LoadgenError;
pub use generate::{
    generate, generate_at, recipient, GeneratedRecord, Generator, MalformedKind, MAX_RECIPIENTS,
};
pub use report::{
    Bucket, CapacityReport, ChartError, Check, Distribution, EngineCost, Funnel, Machine, NumberReport,
    ReportError, Sample, SimSummary, LATENCY_BOUNDS_S, REPORT_FILES,
};
pub use run::{run, run_with, LoadReport, RunOptions, DEFAULT_MAX_IN_FLIGHT};
pub use spec::{Burst, LoadNumber, LoadSpec, Recipients};
