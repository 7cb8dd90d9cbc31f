//! `wabulk demo`: the whole system in one process with nothing to set up.
//!
//! librdkafka's mock cluster stands in for Kafka, the Graph API simulator for
//! Meta (with Meta-like latency scaled down), and the load generator writes
//! jobs for four numbers (1000, 80, 80 and 20 msg/s) with a burst to one
//! recipient and a few malformed records. The engine runs exactly as `wabulk
//! run` would. At the end the demo reads back every result and dead letter
//! and compares them with what was written, and asks the simulator, which
//! keeps its own accounting of Meta's limits, how many were broken.
//!
//! The mock cluster keeps only about 5 MiB per partition and deletes older
//! records even when unread; the default job count keeps every partition
//! well under that while the engine keeps up.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use wabulk_graph_sim::{Latency, SimHandle, SimStats, Simulator};
use wabulk_kafka::{EmbeddedKafka, JobWriter, TopicReader};
use wabulk_loadgen::{Burst, LoadNumber, LoadSpec, Recipients};
use wabulk_model::{JobResult, Status};
use wabulk_telemetry::{Health, Metrics};

use crate::config::{Config, PhoneConfig, WabaConfig};
use crate::setup::EngineSetup;

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
        }
    }
}

/// What the demo found.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    pub written: u64,
    pub malformed_written: u64,
    /// Distinct job ids with a result.
    pub results: u64,
    /// Results for an id that already had one.
    pub duplicate_results: u64,
    pub dead_letters: u64,
    pub by_status: BTreeMap<String, u64>,
    pub numbers: Vec<NumberSummary>,
    pub sim: SimStats,
    pub elapsed: Duration,
}

#[derive(Debug, Clone)]
pub struct NumberSummary {
    pub phone_number_id: String,
    pub tier: u32,
    pub written: u64,
    pub sent: u64,
    pub failed: u64,
    pub achieved_mps: f64,
    pub max_in_any_1s_window: u64,
}

impl DemoSummary {
    /// Every valid job has exactly one result, every malformed one a dead
    /// letter, and the simulator saw no limit broken.
    pub fn passed(&self) -> bool {
        let violations = self.sim.violations.phone + self.sim.violations.pair + self.sim.violations.waba;
        self.results == self.written - self.malformed_written
            && self.dead_letters == self.malformed_written
            && self.duplicate_results == 0
            && violations == 0
    }

    fn print(&self) {
        let v = &self.sim.violations;
        println!();
        println!("wabulk demo: {} jobs written in {:.0} s", self.written, self.elapsed.as_secs_f64());
        println!(
            "  results: {} of {} valid jobs ({}), duplicates {}",
            self.results,
            self.written - self.malformed_written,
            self.by_status.iter().map(|(s, n)| format!("{s} {n}")).collect::<Vec<_>>().join(", "),
            self.duplicate_results
        );
        println!("  dead letters: {} of {} malformed records", self.dead_letters, self.malformed_written);
        println!();
        println!(
            "  {:<18} {:>6} {:>8} {:>8} {:>7} {:>13} {:>10} {:>12}",
            "number", "tier", "written", "sent", "failed", "achieved/s", "of tier", "max in 1 s"
        );
        for n in &self.numbers {
            println!(
                "  {:<18} {:>6} {:>8} {:>8} {:>7} {:>13.1} {:>9.1}% {:>12}",
                n.phone_number_id,
                n.tier,
                n.written,
                n.sent,
                n.failed,
                n.achieved_mps,
                100.0 * n.achieved_mps / f64::from(n.tier),
                n.max_in_any_1s_window
            );
        }
        println!();
        println!(
            "  simulator: {} requests, violations phone {} pair {} waba {}, job ids accepted twice {}",
            self.sim.requests, v.phone, v.pair, v.waba, self.sim.duplicate_count
        );
        println!("  {}", if self.passed() { "PASSED" } else { "FAILED" });
    }
}

/// What the result and DLQ readers have seen so far.
#[derive(Debug, Default)]
struct Seen {
    statuses: HashMap<String, Status>,
    duplicates: u64,
    by_phone: HashMap<String, (u64, u64)>,
    dead_letters: u64,
}

pub async fn run(options: DemoOptions) -> anyhow::Result<DemoSummary> {
    let started = Instant::now();
    let say = |line: String| {
        if !options.quiet {
            println!("{line}");
        }
    };

    let kafka = EmbeddedKafka::start(1).context("cannot start the embedded Kafka")?;
    let brokers = kafka.bootstrap_servers();
    let config = Config::default();
    for (topic, partitions) in [
        (&config.kafka.jobs_topic, options.partitions),
        (&config.kafka.results_topic, 4),
        (&config.kafka.dlq_topic, 1),
    ] {
        kafka.create_topic(topic, partitions).with_context(|| format!("cannot create {topic}"))?;
    }
    say(format!("embedded Kafka (librdkafka mock cluster) on {brokers}"));

    let mut sim_config = match options.numbers {
        Some(count) => many_numbers(count, options.mps),
        None => wabulk_graph_sim::example_config(),
    };
    sim_config.latency = if options.latency_scale > 0.0 {
        Latency::Meta { scale: options.latency_scale }
    } else {
        Latency::Fixed(Duration::ZERO)
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("simulator port")?;
    let sim = Simulator::start(sim_config.clone(), listener).await.context("cannot start the simulator")?;
    say(format!("Graph API simulator on {} (latency × {})", sim.base_url(), options.latency_scale));

    let (config, tokens) = engine_config(config, &brokers, &sim, &sim_config);
    let setup = EngineSetup::from_config(&config, &|var| tokens.get(var).cloned())?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new());
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(address) = options.http_listen {
        let listener =
            tokio::net::TcpListener::bind(address).await.with_context(|| format!("cannot bind {address}"))?;
        say(format!("metrics on http://{address}/metrics"));
        tokio::spawn(wabulk_telemetry::serve(
            listener,
            Arc::clone(&metrics),
            Arc::clone(&health),
            async move {
                let _ = http_stopped.await;
            },
        ));
    }
    let (stop_engine, engine_stopped) = tokio::sync::oneshot::channel::<()>();
    let engine =
        tokio::spawn(crate::engine::run(setup, Arc::clone(&metrics), Arc::clone(&health), async move {
            let _ = engine_stopped.await;
        }));

    let seen = Arc::new(Mutex::new(Seen::default()));
    let readers = start_readers(&brokers, &config, Arc::clone(&seen))?;

    let spec = load_spec(&options, &sim_config);
    let per_number_written: BTreeMap<String, u64> = {
        let mut counts = BTreeMap::new();
        for record in wabulk_loadgen::generate(&spec) {
            if !record.malformed {
                *counts.entry(record.phone_number_id).or_default() += 1;
            }
        }
        counts
    };
    let writer = JobWriter::connect(&brokers, &Default::default())?;
    say(format!(
        "writing {} jobs at {:.0}/s for {} numbers; engine sending",
        spec.jobs,
        spec.rate.unwrap_or(0.0),
        spec.numbers.len()
    ));
    let loadgen_spec = spec.clone();
    let loadgen =
        tokio::spawn(async move { wabulk_loadgen::run(&loadgen_spec, &writer, "wabulk.jobs", false).await });

    let deadline = started + Duration::from_secs(options.timeout_s);
    let mut report = None;
    let mut loadgen = Some(loadgen);
    let mut last_sent = 0u64;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some(task) = loadgen.as_ref().filter(|t| t.is_finished()) {
            let _ = task;
            let finished = loadgen.take().expect("checked").await.context("load generator")??;
            report = Some(finished);
        }
        let (results, dead) = {
            let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            (seen.statuses.len() as u64, seen.dead_letters)
        };
        let sent: u64 = sim.stats().accepted;
        say(format!(
            "  {:>4.0} s  results {:>6}  dead letters {:>3}  sent {:>6} ({:>4}/s)  in flight {:>4}  queued {:>6}",
            started.elapsed().as_secs_f64(),
            results,
            dead,
            sent,
            sent - last_sent,
            metrics.inflight.get(),
            metrics.backlog.get(),
        ));
        last_sent = sent;
        if let Some(report) = &report {
            if results + dead >= report.written {
                break;
            }
        }
        if Instant::now() > deadline {
            say("  timed out waiting for results".into());
            break;
        }
    }
    let _ = stop_engine.send(());
    engine.await.context("engine task")??;
    let _ = stop_http.send(());
    // Every client goes before the cluster does, or librdkafka complains
    // about brokers vanishing under it.
    for reader in readers {
        reader.abort();
        let _ = reader.await;
    }
    let stats = sim.stats();
    sim.shutdown().await;
    let report = report.context("the load generator did not finish")?;
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    let mut by_status = BTreeMap::new();
    for status in seen.statuses.values() {
        *by_status.entry(format!("{status:?}").to_lowercase()).or_default() += 1;
    }
    let numbers = sim_config
        .numbers
        .iter()
        .map(|n| {
            let sim_number = stats.numbers.get(&n.id);
            let (sent, failed) = seen.by_phone.get(&n.id).copied().unwrap_or_default();
            NumberSummary {
                phone_number_id: n.id.clone(),
                tier: n.mps,
                written: per_number_written.get(&n.id).copied().unwrap_or_default(),
                sent,
                failed,
                achieved_mps: sim_number.map_or(0.0, |s| s.achieved_mps),
                max_in_any_1s_window: sim_number.map_or(0, |s| s.max_in_any_1s_window),
            }
        })
        .collect();
    let summary = DemoSummary {
        written: report.written,
        malformed_written: report.malformed,
        results: seen.statuses.len() as u64,
        duplicate_results: seen.duplicates,
        dead_letters: seen.dead_letters,
        by_status,
        numbers,
        sim: stats,
        elapsed: started.elapsed(),
    };
    summary.print();
    drop(kafka);
    Ok(summary)
}

/// `count` numbers at `mps` each, ten to a WABA.
fn many_numbers(count: u32, mps: u32) -> wabulk_graph_sim::SimConfig {
    let count = count.max(1);
    let wabas = count.div_ceil(10);
    wabulk_graph_sim::SimConfig {
        numbers: (0..count)
            .map(|i| wabulk_graph_sim::SimNumber {
                id: (200_000_000_000_000 + u64::from(i)).to_string(),
                mps,
                waba_id: (300_000_000_000_000 + u64::from(i / 10)).to_string(),
            })
            .collect(),
        wabas: (0..wabas)
            .map(|w| wabulk_graph_sim::SimWaba {
                id: (300_000_000_000_000 + u64::from(w)).to_string(),
                token: format!("sim-token-{w}"),
                hourly_cap: 10 * 1_800_000,
            })
            .collect(),
        ..wabulk_graph_sim::SimConfig::default()
    }
}

/// The engine's configuration for the simulator's numbers and WABAs; tokens
/// come from the returned map instead of the environment.
fn engine_config(
    mut config: Config,
    brokers: &str,
    sim: &SimHandle,
    sim_config: &wabulk_graph_sim::SimConfig,
) -> (Config, HashMap<String, String>) {
    config.kafka.brokers = brokers.to_owned();
    config.graph.base_url = sim.base_url();
    config.graph.request_timeout_ms = 5_000;
    config.http.listen = "127.0.0.1:0".into();
    config.phones = sim_config
        .numbers
        .iter()
        .map(|n| PhoneConfig { id: n.id.clone(), waba_id: n.waba_id.clone(), mps: Some(n.mps) })
        .collect();
    let mut tokens = HashMap::new();
    config.wabas = sim_config
        .wabas
        .iter()
        .map(|w| {
            let var = format!("WABULK_DEMO_TOKEN_{}", w.id);
            tokens.insert(var.clone(), w.token.clone());
            WabaConfig { id: w.id.clone(), token_env: Some(var), hourly_call_cap: Some(w.hourly_cap) }
        })
        .collect();
    (config, tokens)
}

/// Jobs in proportion to each number's tier, written a quarter faster than
/// the numbers can send so that the engine, not the writer, sets the pace.
fn load_spec(options: &DemoOptions, sim_config: &wabulk_graph_sim::SimConfig) -> LoadSpec {
    let numbers: Vec<LoadNumber> =
        sim_config.numbers.iter().map(|n| LoadNumber::new(n.id.clone(), n.waba_id.clone(), n.mps)).collect();
    let total_mps: u32 = numbers.iter().map(|n| n.mps).sum();
    // Five jobs at once to one recipient of an 80/s number, where present.
    let bursts = sim_config
        .numbers
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
        not_before_max_s: 0,
        expires_fraction: 0.0,
        expires_in_s: 0,
        id_prefix: format!("demo-{}", chrono::Utc::now().format("%H%M%S")),
        seed: 7,
    }
}

/// Reads results and dead letters as the engine writes them.
fn start_readers(
    brokers: &str,
    config: &Config,
    seen: Arc<Mutex<Seen>>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let timeout = Duration::from_secs(10);
    let results = TopicReader::connect(brokers, &config.kafka.results_topic, timeout)?;
    let dead = TopicReader::connect(brokers, &config.kafka.dlq_topic, timeout)?;
    let seen_results = Arc::clone(&seen);
    let results = tokio::spawn(async move {
        while let Ok(record) = results.next().await {
            let Ok(result) = serde_json::from_slice::<JobResult>(&record.payload) else { continue };
            let mut seen = seen_results.lock().unwrap_or_else(|p| p.into_inner());
            let counts = seen.by_phone.entry(result.phone_number_id.clone()).or_default();
            match result.status {
                Status::Sent => counts.0 += 1,
                Status::Failed => counts.1 += 1,
                _ => {}
            }
            if seen.statuses.insert(result.id, result.status).is_some() {
                seen.duplicates += 1;
            }
        }
    });
    let dead = tokio::spawn(async move {
        while dead.next().await.is_ok() {
            seen.lock().unwrap_or_else(|p| p.into_inner()).dead_letters += 1;
        }
    });
    Ok(vec![results, dead])
}
