//! Capacity runs. A scenario file (`loadtest/scenarios/*.toml`) says which
//! broker to start, how the Graph API simulator behaves, which engine
//! settings differ from the defaults and what load to write; [`run`] starts
//! all of it on 127.0.0.1, drives the load, samples throughput, errors and
//! the engine's gauges once per interval, reads back every result, and
//! returns a [`CapacityReport`] that the caller writes as JSON, Markdown and
//! SVG. `wabulk demo` is a scenario built from its flags.
//!
//! The engine runs as its own process, `wabulk run --config FILE`, as in
//! production, so that its CPU time and memory are its own (the report's
//! `engine`); the broker (librdkafka's mock cluster, or for backlogs larger
//! than it keeps a tansu child process), the simulator and the load writer
//! stay in this process.

mod broker;
mod engine;
mod funnel;
mod runner;
mod summary;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use wabulk_graph_sim::SimConfig;
use wabulk_loadgen::LoadSpec;

pub use runner::{run, RunOptions};
pub use summary::print_summary;
pub use wabulk_loadgen::CapacityReport;

/// One capacity run, as read from its file. Unknown keys are errors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in the report and, when `load.id_prefix` is empty,
    /// in job ids.
    pub name: String,
    /// What the run shows; copied into the report.
    #[serde(default)]
    pub description: String,
    /// The run stops waiting for results after this long and fails its
    /// "finished" check.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// Length of one timeline sample.
    #[serde(default = "default_sample_interval_ms")]
    pub sample_interval_ms: u64,
    #[serde(default)]
    pub broker: BrokerSpec,
    /// Write the whole load before the engine starts, so the engine begins
    /// with a backlog instead of a stream.
    #[serde(default)]
    pub prefill: bool,
    /// Run the engine's webhook receiver (`[webhooks]`) and have the
    /// simulator post each accepted message's statuses to it, as Meta would
    /// (timing in `[simulator.webhooks]`); the run reads the statuses topic
    /// back into the report's delivery funnel and checks that every job
    /// sent got its statuses. Off by default: the receiver's work would
    /// count in the engine's CPU per job.
    #[serde(default)]
    pub webhooks: bool,
    /// The simulator's configuration (latency, faults, pair rule, seed);
    /// its numbers and WABAs come from `load.numbers` and must be left out.
    #[serde(default)]
    pub simulator: SimConfig,
    /// A `wabulk.toml` fragment applied to the engine (e.g. `[engine.graph]
    /// request_timeout_ms = 2000`). Brokers, Graph API URL, phones and WABAs
    /// are filled in by the run.
    #[serde(default)]
    pub engine: toml::Table,
    /// What to write: numbers with their tiers, job count, rate, recipients.
    pub load: LoadSpec,
    #[serde(default)]
    pub expect: Expectations,
}

/// Where the Kafka topics live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSpec {
    pub kind: BrokerKind,
    /// Partitions of the jobs topic; more partitions spread numbers over
    /// more commit positions.
    pub jobs_partitions: i32,
    pub results_partitions: i32,
    /// The tansu binary; otherwise `$WABULK_TANSU`, then
    /// `.tools/tansu/bin/tansu` (what `scripts/install-tansu` builds), then
    /// `tansu` on the `PATH`.
    pub tansu_bin: Option<PathBuf>,
}

impl Default for BrokerSpec {
    fn default() -> Self {
        Self { kind: BrokerKind::Embedded, jobs_partitions: 4, results_partitions: 4, tansu_bin: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerKind {
    /// librdkafka's mock cluster in this process: nothing to install, but
    /// it keeps only about 5 MiB per partition.
    Embedded,
    /// A tansu broker (Kafka protocol, in-memory storage) as a child process.
    Tansu,
}

/// Checks beyond the ones every run makes (one result per valid job, one
/// dead letter per malformed record, no duplicates, no limit broken,
/// finished in time).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Expectations {
    /// Every number reaches at least this percentage of its tier (measured
    /// by the simulator between its first and last acceptance). Only
    /// meaningful when the load keeps every number busy.
    pub min_percent_of_tier: Option<f64>,
    /// The simulator accepts at least this many messages per second,
    /// sustained (`CapacityReport::sustained_rate`: the samples between the
    /// first and the last with any acceptance).
    pub min_total_mps: Option<f64>,
}

fn default_timeout_s() -> u64 {
    600
}

fn default_sample_interval_ms() -> u64 {
    1000
}

/// A scenario file that cannot be used; the text names the key.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid { path: String, key: String, message: String },
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ScenarioError::Read { path: origin.clone(), source })?;
        Scenario::from_toml(&text, &origin)
    }

    pub fn from_toml(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let invalid = |key: &str, message: String| ScenarioError::Invalid {
            path: origin.into(),
            key: key.into(),
            message,
        };
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ScenarioError::Syntax {
            path: origin.into(),
            message: e.to_string(),
        })?;
        let scenario: Scenario = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| invalid(&e.path().to_string(), e.into_inner().message().to_string()))?;
        if scenario.load.numbers.is_empty() {
            return Err(invalid("load.numbers", "at least one number is needed".into()));
        }
        if !scenario.simulator.numbers.is_empty() || !scenario.simulator.wabas.is_empty() {
            return Err(invalid(
                "simulator",
                "numbers and wabas come from load.numbers; leave them out here".into(),
            ));
        }
        let hooks = &scenario.simulator.webhooks;
        if hooks.url.is_some() || !hooks.app_secret.is_empty() {
            return Err(invalid(
                "simulator.webhooks",
                "url and app_secret are the engine's receiver's, set by the run with `webhooks = true`; \
                 leave them out"
                    .into(),
            ));
        }
        if scenario.broker.jobs_partitions < 1 || scenario.broker.results_partitions < 1 {
            return Err(invalid("broker", "partition counts must be at least 1".into()));
        }
        if scenario.sample_interval_ms < 100 {
            return Err(invalid("sample_interval_ms", "must be at least 100".into()));
        }
        // An empty id_prefix is filled in per run (see `runner::id_prefix`).
        let prefix = if scenario.load.id_prefix.is_empty() {
            scenario.name.clone()
        } else {
            scenario.load.id_prefix.clone()
        };
        LoadSpec { id_prefix: prefix, ..scenario.load.clone() }
            .validate()
            .map_err(|e| invalid("load", e.to_string()))?;
        Ok(scenario)
    }
}

#[cfg(test)]
mod tests;
