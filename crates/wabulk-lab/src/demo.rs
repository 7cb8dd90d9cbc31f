//! `wabulk demo`: the whole system on this machine with nothing to set up.
//!
//! librdkafka's mock cluster stands in for Kafka, the Graph API simulator for
//! Meta (with Meta-like latency scaled down), and the load generator writes
//! jobs for four numbers (1000, 80, 80 and 20 msg/s) with a burst to one
//! recipient and a few malformed records. The engine runs exactly as `wabulk
//! run` would, as its own process. At the end the demo reads back every result and dead letter
//! and compares them with what was written, and asks the simulator, which
//! keeps its own accounting of Meta's limits, how many were broken. The
//! simulator also posts each message's later statuses, signed as Meta does,
//! to the engine's webhook receiver; the demo reads them back from the
//! statuses topic and shows the delivery funnel (sent → delivered → read,
//! failed by code) as it goes and at the end.
//!
//! The demo is a capacity run (crate::scenario) built from its flags, with
//! its summary printed and no report files. The mock cluster keeps only about
//! 5 MiB per partition and deletes older records even when unread; the
//! default job count keeps every partition well under that while the engine
//! keeps up.

use std::time::Duration;

use wabulk_graph_sim::{Latency, SimConfig};
use wabulk_loadgen::{Burst, CapacityReport, LoadNumber, LoadSpec, Recipients};

use crate::scenario::{BrokerSpec, Expectations, RunOptions, Scenario};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// Jobs to write. The default takes about a minute; far more would go
    /// past what the embedded Kafka keeps per partition.
    #[arg(long, default_value_t = 24_000)]
    pub jobs: u64,
    /// Multiply Meta-like latency (p50 0.5 s, p99 2 s) by this.
    #[arg(long, default_value_t = 0.1)]
    pub latency_scale: f64,
    /// Stop waiting for results after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_s: u64,
    /// No progress lines, only the summary.
    #[arg(long)]
    pub quiet: bool,
    /// Instead of the four example numbers, this many numbers at `--mps`
    /// each, spread over WABAs of ten: for throughput runs.
    #[arg(long)]
    pub numbers: Option<u32>,
    /// Tier of each number with `--numbers`.
    #[arg(long, default_value_t = 1000)]
    pub mps: u32,
    /// Serve /metrics, /healthz and /readyz here while the demo runs.
    #[arg(long)]
    pub http_listen: Option<std::net::SocketAddr>,
    /// Partitions of the jobs topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// The `wabulk` binary that runs the engine; this executable when not
    /// given (tests, whose executable is the test binary, set it).
    #[arg(skip)]
    pub engine_binary: Option<std::path::PathBuf>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            jobs: 24_000,
            latency_scale: 0.1,
            timeout_s: 300,
            quiet: false,
            numbers: None,
            mps: 1000,
            http_listen: None,
            partitions: 4,
            engine_binary: None,
        }
    }
}

/// Runs the demo as a capacity run with no report files, prints its
/// summary and returns the report; `report.passed()` is the demo's verdict.
pub async fn run(options: DemoOptions) -> anyhow::Result<CapacityReport> {
    let scenario = scenario(&options);
    // Its own directory for the engine's configuration and log: demos may
    // run side by side (tests do). Kept when the run fails, for the log.
    let work_dir = std::env::temp_dir().join(format!(
        "wabulk-demo-{}-{}",
        std::process::id(),
        chrono::Utc::now().format("%H%M%S%.f")
    ));
    let run_options = RunOptions {
        quiet: options.quiet,
        http_listen: options.http_listen,
        command: "wabulk demo".into(),
        work_dir: work_dir.clone(),
        engine_binary: options.engine_binary.clone(),
    };
    let report = crate::scenario::run(&scenario, &run_options).await?;
    crate::scenario::print_summary(&report);
    let _ = std::fs::remove_dir_all(&work_dir);
    Ok(report)
}

/// The demo as a scenario: embedded Kafka, the example numbers (or
/// `--numbers` of them) at Meta-like latency scaled by `--latency-scale`.
fn scenario(options: &DemoOptions) -> Scenario {
    let numbers = match options.numbers {
        Some(count) => many_numbers(count, options.mps),
        None => wabulk_graph_sim::example_config()
            .numbers
            .into_iter()
            .map(|n| LoadNumber::new(n.id, n.waba_id, n.mps))
            .collect(),
    };
    let mut engine = toml::Table::new();
    let mut graph = toml::Table::new();
    graph.insert("request_timeout_ms".into(), toml::Value::Integer(5_000));
    engine.insert("graph".into(), toml::Value::Table(graph));
    Scenario {
        name: "demo".into(),
        description: "wabulk demo: the whole system on this machine.".into(),
        timeout_s: options.timeout_s,
        sample_interval_ms: 1000,
        broker: BrokerSpec { jobs_partitions: options.partitions, ..BrokerSpec::default() },
        prefill: false,
        // The engine's receiver takes the simulator's status webhooks: the
        // delivery funnel, live and in the summary.
        webhooks: true,
        simulator: SimConfig {
            latency: if options.latency_scale > 0.0 {
                Latency::Meta { scale: options.latency_scale }
            } else {
                Latency::Fixed(Duration::ZERO)
            },
            ..SimConfig::default()
        },
        engine,
        load: load_spec(options, numbers),
        expect: Expectations::default(),
    }
}

/// `count` numbers at `mps` each, ten to a WABA.
fn many_numbers(count: u32, mps: u32) -> Vec<LoadNumber> {
    (0..count.max(1))
        .map(|i| {
            LoadNumber::new(
                (200_000_000_000_000 + u64::from(i)).to_string(),
                (300_000_000_000_000 + u64::from(i / 10)).to_string(),
                mps,
            )
        })
        .collect()
}

/// Jobs in proportion to each number's tier, written a quarter faster than
/// the numbers can send so that the engine, not the writer, sets the pace.
fn load_spec(options: &DemoOptions, numbers: Vec<LoadNumber>) -> LoadSpec {
    let total_mps: u32 = numbers.iter().map(|n| n.mps).sum();
    // Five jobs at once to one recipient of an 80/s number, where present.
    let bursts = numbers
        .iter()
        .find(|n| n.mps == 80)
        .map(|n| Burst { phone_number_id: n.id.clone(), recipient_index: 5_000_000, count: 5 })
        .into_iter()
        .collect();
    LoadSpec {
        numbers,
        jobs: options.jobs,
        rate: Some(f64::from(total_mps) * 1.25),
        recipients: Recipients::Uniform { count: 1_000_000 },
        bursts,
        malformed_fraction: 0.002,
        not_before_fraction: 0.0,
        not_before_min_s: 0,
        not_before_max_s: 0,
        expires_fraction: 0.0,
        expires_in_s: 0,
        id_prefix: format!("demo-{}", chrono::Utc::now().format("%H%M%S")),
        seed: 7,
        // Three campaigns, so the campaign panels have something to show.
        campaigns: 3,
    }
}
