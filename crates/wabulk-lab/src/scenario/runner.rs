//! [`run`]: one capacity run, top to bottom: broker, simulator, readers of
//! results and dead letters, the engine's process, the load, then one sample per
//! interval until every record written has its result or dead letter (or
//! the scenario's timeout passes), then everything stops in reverse order
//! and the figures become a [`CapacityReport`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use wabulk_config::setup::EngineSetup;
use wabulk_config::{Config, PhoneConfig, WabaConfig, WebhooksConfig};
use wabulk_graph_sim::{SimConfig, SimHandle, SimNumber, SimStats, SimWaba, Simulator};
use wabulk_kafka::{JobWriter, TopicReader};
use wabulk_loadgen::{
    CapacityReport, Check, Distribution, EngineCost, LoadReport, LoadSpec, Machine, NumberReport, Sample,
    SimSummary, LATENCY_BOUNDS_S,
};
use wabulk_model::{JobResult, Status};

use super::broker::Broker;
use super::engine::{EngineProcess, Exposition};
use super::funnel::{self, StatusTally};
use super::Scenario;

/// How a run behaves beyond its scenario.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// No progress lines.
    pub quiet: bool,
    /// Where the engine serves /metrics, /healthz and /readyz during the
    /// run; a free 127.0.0.1 port when not given.
    pub http_listen: Option<SocketAddr>,
    /// The command line, recorded in the report so the run can be repeated.
    pub command: String,
    /// Where the engine's configuration and log, and a child broker's log,
    /// are written.
    pub work_dir: PathBuf,
    /// The `wabulk` binary that runs the engine (`wabulk run --config`);
    /// this executable when not given. Tests, whose executable is the test
    /// binary, pass `env!("CARGO_BIN_EXE_wabulk")`.
    pub engine_binary: Option<PathBuf>,
}

/// What the result and DLQ readers have seen so far.
#[derive(Debug, Default)]
struct Seen {
    statuses: HashMap<String, Status>,
    duplicates: u64,
    /// phone_number_id → (sent, failed).
    by_phone: HashMap<String, (u64, u64)>,
    /// received_at → finished_at of each first result, in seconds.
    job_latencies: Vec<f64>,
    dead_letters: u64,
    /// Meta's statuses read back from the statuses topic.
    funnel: StatusTally,
}

impl Seen {
    fn finished(&self) -> u64 {
        self.statuses.len() as u64 + self.dead_letters
    }

    /// The ids of the jobs whose result is `sent`.
    fn sent_jobs(&self) -> Vec<&str> {
        self.statuses.iter().filter(|(_, s)| **s == Status::Sent).map(|(id, _)| id.as_str()).collect()
    }
}

/// Partitions of the statuses topic: about 2.5 statuses per message sent,
/// spread so that each partition stays well under what the mock cluster
/// keeps (about 5 MiB) at the demo's job counts.
const STATUSES_PARTITIONS: i32 = 8;

/// The engine's webhook receiver in a run with `webhooks = true`: its
/// section, and the secrets it reads from the environment.
#[derive(Debug)]
struct StatusReceiver {
    config: WebhooksConfig,
    app_secret: String,
    verify_token: String,
}

impl StatusReceiver {
    /// The scenario's `[engine.webhooks]` (or the defaults) on a free
    /// 127.0.0.1 port, with secrets of this run.
    fn new(base: Option<&WebhooksConfig>) -> anyhow::Result<StatusReceiver> {
        let mut config = base.cloned().unwrap_or_default();
        config.listen = super::engine::free_port()
            .context("cannot find a free port for the webhook receiver")?
            .to_string();
        config.app_secret_env = "WABULK_RUN_APP_SECRET".into();
        config.verify_token_env = "WABULK_RUN_VERIFY_TOKEN".into();
        // Only the simulator on 127.0.0.1 signs with it; unique per run so
        // that a stray run's notifications are refused.
        let nonce =
            format!("{}-{}", std::process::id(), Utc::now().timestamp_nanos_opt().unwrap_or_default());
        Ok(StatusReceiver {
            config,
            app_secret: format!("capacity-run-app-secret-{nonce}"),
            verify_token: format!("capacity-run-verify-{nonce}"),
        })
    }

    fn url(&self) -> String {
        format!("http://{}{}", self.config.listen, self.config.path)
    }
}

/// Until the first acceptance, the simulator is looked at this often, so
/// that a sample ends there and the whole seconds of sending start there.
const FIRST_SEND_POLL: Duration = Duration::from_millis(10);

pub async fn run(scenario: &Scenario, options: &RunOptions) -> anyhow::Result<CapacityReport> {
    let started = Instant::now();
    let started_at = Utc::now();
    let say = |line: String| {
        if !options.quiet {
            println!("{line}");
        }
    };

    let engine_base = Config::from_toml(
        &toml::to_string(&scenario.engine).context("scenario [engine]")?,
        "scenario [engine]",
        std::iter::empty(),
    )
    .context("the scenario's [engine] table is not a valid engine configuration")?;
    // The parking tiers too: the embedded cluster cannot create topics on
    // request, and the engine expects them there.
    let parking = wabulk_kafka::ParkingSettings {
        topic_prefix: engine_base.parking.topic_prefix.clone(),
        ..wabulk_kafka::ParkingSettings::default()
    };
    let tiers = parking.tier_topics();
    let mut topics = vec![
        (engine_base.kafka.jobs_topic.as_str(), scenario.broker.jobs_partitions),
        (engine_base.kafka.results_topic.as_str(), scenario.broker.results_partitions),
        (engine_base.kafka.dlq_topic.as_str(), 1),
        (engine_base.kafka.account_events_topic.as_str(), 1),
        (engine_base.kafka.control_topic.as_str(), 1),
    ];
    if engine_base.parking.enabled {
        topics.extend(tiers.iter().map(|tier| (tier.as_str(), scenario.broker.jobs_partitions)));
    }
    let receiver =
        if scenario.webhooks { Some(StatusReceiver::new(engine_base.webhooks.as_ref())?) } else { None };
    if let Some(receiver) = &receiver {
        topics.push((receiver.config.statuses_topic.as_str(), STATUSES_PARTITIONS));
        topics.push((receiver.config.inbound_topic.as_str(), 1));
    }
    let broker = Broker::start(&scenario.broker, &topics, &options.work_dir).await?;
    let brokers = broker.bootstrap_servers();
    say(format!("Kafka: {} on {brokers}", broker.describe()));

    let mut sim_config = simulator_config(scenario);
    if let Some(receiver) = &receiver {
        sim_config.webhooks.url = Some(receiver.url());
        sim_config.webhooks.app_secret = receiver.app_secret.clone();
    }
    // The referee runs on threads of its own, as Meta's servers do: work of
    // the lab's own (the broker, the readers, the load, the samples) never
    // holds its handlers back and bunches the arrivals it times.
    let sim_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("graph-sim")
        .enable_all()
        .build()
        .context("the simulator's runtime")?;
    let sim = {
        let config = sim_config.clone();
        sim_runtime
            .spawn(async move {
                let listener =
                    tokio::net::TcpListener::bind("127.0.0.1:0").await.context("simulator port")?;
                Simulator::start(config, listener).await.context("cannot start the simulator")
            })
            .await
            .context("the simulator's start")??
    };
    say(format!("Graph API simulator on {} ({})", sim.base_url(), describe_latency(&sim_config)));

    let listen = match options.http_listen {
        Some(address) => address,
        None => super::engine::free_port().context("cannot find a free port for the engine")?,
    };
    let (mut config, mut tokens) = engine_config(engine_base, &brokers, &sim, &sim_config, listen);
    if let Some(receiver) = &receiver {
        // `wabulk run` starts the receiver beside the engine when the
        // section is there.
        config.webhooks = Some(receiver.config.clone());
        tokens.insert(receiver.config.app_secret_env.clone(), receiver.app_secret.clone());
        tokens.insert(receiver.config.verify_token_env.clone(), receiver.verify_token.clone());
        say(format!(
            "webhook receiver: {} (the simulator posts each message's statuses there)",
            receiver.url()
        ));
    }
    if sim.ca_pem().is_some() {
        // `[simulator] tls = true`: the engine trusts the simulator's own CA.
        let ca = std::path::absolute(options.work_dir.join("sim-ca.pem")).context("sim-ca.pem")?;
        std::fs::create_dir_all(&options.work_dir)
            .and_then(|()| sim.write_ca_pem(&ca))
            .context("sim-ca.pem")?;
        config.graph.ca_file = Some(ca.display().to_string());
    }
    // Refused here, with the key named, rather than by the child.
    EngineSetup::from_config(&config, &|var| tokens.get(var).cloned())?;
    let engine_binary = match &options.engine_binary {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("cannot find this executable to run the engine")?,
    };

    let seen = Arc::new(Mutex::new(Seen::default()));
    let statuses_topic = receiver.as_ref().map(|r| r.config.statuses_topic.as_str());
    let readers = start_readers(&brokers, &config, statuses_topic, Arc::clone(&seen))?;
    let spec = LoadSpec { id_prefix: id_prefix(scenario), ..scenario.load.clone() };
    let writer = JobWriter::connect(&brokers, &config.kafka.properties)?;
    let jobs_topic = config.kafka.jobs_topic.clone();

    let mut load_report = None;
    let mut loadgen = None;
    if scenario.prefill {
        say(format!("writing {} jobs before the engine starts", spec.jobs));
        load_report = Some(write_load(&spec, &writer, &jobs_topic, !options.quiet).await?);
    }
    let mut engine = EngineProcess::start(&engine_binary, &config, &tokens, &options.work_dir).await?;
    say(format!(
        "engine: `wabulk run` as process {}, metrics on http://{}/metrics",
        engine.pid(),
        engine.listen()
    ));
    if load_report.is_none() {
        say(format!(
            "writing {} jobs at {} for {} numbers; engine sending",
            spec.jobs,
            spec.rate.map_or("full speed".into(), |rate| format!("{rate:.0}/s")),
            spec.numbers.len()
        ));
        let spec = spec.clone();
        loadgen = Some(tokio::spawn(async move { write_load(&spec, &writer, &jobs_topic, false).await }));
    }

    let interval = Duration::from_millis(scenario.sample_interval_ms);
    let deadline = started + Duration::from_secs(scenario.timeout_s);
    let sending_from = Instant::now();
    let mut sampler = Sampler::new(&sim_config, engine.cpu_seconds().unwrap_or(0.0));
    let mut timeline = Vec::new();
    let mut last_sample = tokio::time::Instant::now();
    let mut next_sample = last_sample + interval;
    let mut sending = false;
    let finished_in_time = loop {
        if sending {
            tokio::time::sleep_until(next_sample).await;
        } else {
            tokio::time::sleep_until(next_sample.min(tokio::time::Instant::now() + FIRST_SEND_POLL)).await;
        }
        let now = tokio::time::Instant::now();
        // Results before acceptances: a result follows its acceptance, so
        // the sample that sees the last result holds every acceptance.
        let finished = seen.lock().unwrap_or_else(|p| p.into_inner()).finished();
        let stats = sim.stats();
        if !sending && stats.accepted > 0 {
            // The first acceptance ends a sample: whole seconds start here.
            sending = true;
            next_sample = now + interval;
        } else if now >= next_sample {
            next_sample += interval;
        } else {
            continue;
        }
        engine.check_running()?;
        if let Some(task) = loadgen.take_if(|task| task.is_finished()) {
            load_report = Some(task.await.context("load generator")??);
        }
        let exposed = engine.scrape().await.context("cannot read the engine's /metrics")?;
        let cpu_s = engine.cpu_seconds().unwrap_or(0.0);
        let sample =
            sampler.sample(sending_from.elapsed(), now - last_sample, &stats, finished, &exposed, cpu_s);
        last_sample = now;
        say(progress_line(&sample, finished));
        if receiver.is_some() {
            say(seen.lock().unwrap_or_else(|p| p.into_inner()).funnel.progress_line());
        }
        timeline.push(sample);
        if load_report.as_ref().is_some_and(|report| finished >= report.written) {
            break true;
        }
        if Instant::now() > deadline {
            say(format!("  timed out after {} s waiting for results", scenario.timeout_s));
            break false;
        }
    };
    // The engine's own figures, read before it stops: a graceful stop's
    // work is not the run's.
    let exposed = engine.scrape().await.context("cannot read the engine's /metrics")?;
    let cpu_s = engine.cpu_seconds().context("cannot read the engine's CPU time from /proc")?;
    let peak_rss_bytes = engine.peak_rss_bytes().unwrap_or(0);
    let funnel = match &receiver {
        Some(_) => {
            let grace = funnel::grace(&sim_config);
            let waited = if finished_in_time {
                wait_for_statuses(&seen, &mut engine, grace, interval, &say).await?
            } else {
                Duration::ZERO
            };
            let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            Some(wabulk_loadgen::Funnel {
                posted_by_simulator: sim.stats().webhook_statuses_delivered,
                waited_s: waited.as_secs_f64(),
                grace_s: grace.as_secs_f64(),
                ..seen.funnel.funnel(&seen.sent_jobs())
            })
        }
        None => None,
    };
    engine.stop().await?;
    // Every client goes before the broker does, or librdkafka complains
    // about brokers vanishing under it.
    for reader in readers {
        reader.abort();
        let _ = reader.await;
    }
    if let Some(task) = loadgen {
        task.abort();
    }
    let stats = sim.stats();
    let first_requests = sim.first_requests();
    let _ = sim_runtime.spawn(sim.shutdown()).await;
    sim_runtime.shutdown_background();
    let kept = {
        let (brokers, topic) = (brokers.clone(), config.kafka.jobs_topic.clone());
        tokio::task::spawn_blocking(move || {
            wabulk_kafka::topic_record_count(&brokers, &topic, Duration::from_secs(10))
        })
        .await
        .context("record count task")?
        .context("cannot count the jobs topic's records")?
    };
    let broker_name = broker.describe();
    drop(broker);
    let load_report = load_report.unwrap_or_default();
    let mut seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));

    let mut report = CapacityReport {
        scenario: scenario.name.clone(),
        description: scenario.description.trim().to_owned(),
        command: options.command.clone(),
        started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        machine: Machine::this(),
        broker: broker_name,
        latency: describe_latency(&sim_config),
        faults: describe_faults(&sim_config),
        elapsed_s: started.elapsed().as_secs_f64(),
        written: load_report.written,
        malformed: load_report.malformed,
        results: seen.statuses.len() as u64,
        duplicate_results: seen.duplicates,
        dead_letters: seen.dead_letters,
        by_status: status_counts(&seen.statuses),
        sim: sim_summary(&stats),
        numbers: number_reports(&sim_config, &stats, &seen, &load_report),
        job_latency: Distribution::from_seconds(&mut seen.job_latencies, LATENCY_BOUNDS_S),
        send_latency: Distribution::from_buckets(&exposed.buckets("wabulk_send_latency_seconds"), None),
        timeline,
        checks: Vec::new(),
        funnel,
        engine: Some(EngineCost {
            cpu_s,
            cpu_us_per_job: if load_report.written == 0 {
                0.0
            } else {
                cpu_s * 1e6 / load_report.written as f64
            },
            peak_rss_bytes,
        }),
    };
    // Each job parked comes back to the jobs topic once: more records there.
    let parked = exposed.sum("wabulk_jobs_parked_total") as u64;
    report.checks = checks(scenario, &report, finished_in_time, &stats, (kept, parked));
    if let Some(funnel) = &report.funnel {
        report.checks.push(funnel::check(funnel));
    }
    if !load_report.not_befores.is_empty() {
        report.checks.push(not_before_kept(&load_report.not_befores, &first_requests));
    }
    Ok(report)
}

/// Whether no job reached the simulator before its `not_before`, with how
/// late the first requests were after it (jobs never requested are left to
/// the results check).
fn not_before_kept(
    not_befores: &[(String, chrono::DateTime<Utc>)],
    first_requests: &HashMap<String, std::time::SystemTime>,
) -> Check {
    let mut late_ms: Vec<i64> = not_befores
        .iter()
        .filter_map(|(id, at)| {
            let first: chrono::DateTime<Utc> = (*first_requests.get(id)?).into();
            Some((first - *at).num_milliseconds())
        })
        .collect();
    late_ms.sort_unstable();
    let early = late_ms.iter().filter(|&&ms| ms < 0).count();
    let quantile =
        |q: f64| late_ms.get(((late_ms.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0);
    Check {
        name: "not_before kept".into(),
        passed: early == 0,
        detail: format!(
            "{} jobs with not_before requested, {early} before it; first request after not_before: \
             p50 {} ms, p99 {} ms, max {} ms",
            late_ms.len(),
            quantile(0.5),
            quantile(0.99),
            late_ms.last().copied().unwrap_or(0)
        ),
    }
}

/// Writes the load, with a progress bar when asked.
async fn write_load(
    spec: &LoadSpec,
    writer: &JobWriter,
    topic: &str,
    progress: bool,
) -> anyhow::Result<LoadReport> {
    wabulk_loadgen::run(spec, writer, topic, progress).await.context("the load generator failed")
}

/// The scenario's simulator with the load's numbers, and one WABA per
/// distinct `waba_id` with Meta's default cap for its numbers.
fn simulator_config(scenario: &Scenario) -> SimConfig {
    let mut config = scenario.simulator.clone();
    let mut numbers_per_waba: BTreeMap<&str, u64> = BTreeMap::new();
    for number in &scenario.load.numbers {
        if config.numbers.iter().any(|n| n.id == number.id) {
            continue;
        }
        config.numbers.push(SimNumber {
            id: number.id.clone(),
            mps: number.mps,
            waba_id: number.waba_id.clone(),
        });
        *numbers_per_waba.entry(&number.waba_id).or_default() += 1;
    }
    config.wabas = numbers_per_waba
        .into_iter()
        .map(|(id, numbers)| SimWaba {
            id: id.to_owned(),
            token: format!("capacity-run-token-{id}"),
            hourly_cap: 1_800_000 * numbers,
        })
        .collect();
    config
}

/// The engine's configuration for the simulator's numbers and WABAs; the
/// tokens, in the returned map, go into the engine's environment.
fn engine_config(
    mut config: Config,
    brokers: &str,
    sim: &SimHandle,
    sim_config: &SimConfig,
    listen: SocketAddr,
) -> (Config, HashMap<String, String>) {
    config.kafka.brokers = brokers.to_owned();
    config.graph.base_url = sim.base_url();
    config.http.listen = listen.to_string();
    config.phones = sim_config
        .numbers
        .iter()
        .map(|n| PhoneConfig {
            id: n.id.clone(),
            waba_id: n.waba_id.clone(),
            mps: Some(n.mps),
            display_phone_number: None,
        })
        .collect();
    let mut tokens = HashMap::new();
    config.wabas = sim_config
        .wabas
        .iter()
        .map(|w| {
            let var = format!("WABULK_RUN_TOKEN_{}", w.id);
            tokens.insert(var.clone(), w.token.clone());
            WabaConfig {
                id: w.id.clone(),
                token_env: Some(var),
                token_file: None,
                hourly_call_cap: Some(w.hourly_cap),
            }
        })
        .collect();
    (config, tokens)
}

/// The scenario's prefix, or one made of its name and the time, so that
/// repeated runs never share job ids.
fn id_prefix(scenario: &Scenario) -> String {
    if scenario.load.id_prefix.is_empty() {
        format!("{}-{}", scenario.name, Utc::now().format("%Y%m%dT%H%M%S"))
    } else {
        scenario.load.id_prefix.clone()
    }
}

/// Turns cumulative simulator counters and the engine's CPU time into
/// per-interval samples.
#[derive(Debug)]
struct Sampler {
    numbers: Vec<String>,
    previous: SimStats,
    previous_finished: u64,
    previous_cpu_s: f64,
}

impl Sampler {
    /// `cpu_s`: the engine's CPU time when sampling starts.
    fn new(sim_config: &SimConfig, cpu_s: f64) -> Self {
        Self {
            numbers: sim_config.numbers.iter().map(|n| n.id.clone()).collect(),
            previous: SimStats::default(),
            previous_finished: 0,
            previous_cpu_s: cpu_s,
        }
    }

    fn sample(
        &mut self,
        elapsed: Duration,
        interval: Duration,
        stats: &SimStats,
        finished: u64,
        engine: &Exposition,
        cpu_s: f64,
    ) -> Sample {
        let accepted = |stats: &SimStats, id: &str| stats.numbers.get(id).map_or(0, |n| n.accepted);
        let sent_by_number = self
            .numbers
            .iter()
            .map(|id| (id.clone(), accepted(stats, id) - accepted(&self.previous, id)))
            .collect();
        let mut errors_by_code: BTreeMap<String, u64> = BTreeMap::new();
        for (code, count) in &stats.errors_by_code {
            let delta = count - self.previous.errors_by_code.get(code).copied().unwrap_or_default();
            if delta > 0 {
                errors_by_code.insert(code.clone(), delta);
            }
        }
        for (kind, now, before) in
            [("hang", stats.hangs, self.previous.hangs), ("reset", stats.resets, self.previous.resets)]
        {
            if now > before {
                errors_by_code.insert(kind.into(), now - before);
            }
        }
        let gauge = |name: &str| engine.value(name).unwrap_or(0.0);
        let sample = Sample {
            t_s: elapsed.as_secs_f64(),
            interval_s: interval.as_secs_f64(),
            sent_by_number,
            errors_by_code,
            results: finished - self.previous_finished,
            backlog: gauge("wabulk_backlog_jobs") as i64,
            inflight: gauge("wabulk_inflight_requests") as i64,
            engine_cpu_s: (cpu_s - self.previous_cpu_s).max(0.0),
            engine_rss_bytes: gauge("process_resident_memory_bytes") as u64,
        };
        self.previous = stats.clone();
        self.previous_finished = finished;
        self.previous_cpu_s = cpu_s;
        sample
    }
}

fn progress_line(sample: &Sample, finished: u64) -> String {
    let sent: u64 = sample.sent_by_number.values().sum();
    let errors: u64 = sample.errors_by_code.values().sum();
    format!(
        "  {:>5.1} s  finished {:>8}  sent {:>7.0}/s  errors {:>5.0}/s  in flight {:>5}  queued {:>7}  \
         engine CPU {:>3.0}%  RSS {:>4.0} MiB",
        sample.t_s,
        finished,
        sent as f64 / sample.interval_s,
        errors as f64 / sample.interval_s,
        sample.inflight,
        sample.backlog,
        sample.engine_cpu_s / sample.interval_s * 100.0,
        sample.engine_rss_bytes as f64 / (1024.0 * 1024.0),
    )
}

/// After the last result, until every job sent has its `sent` and its final
/// status on the statuses topic, or `grace` passes (the run's check then
/// fails), with a funnel line per `interval`; returns how long it waited.
async fn wait_for_statuses(
    seen: &Mutex<Seen>,
    engine: &mut EngineProcess,
    grace: Duration,
    interval: Duration,
    say: &impl Fn(String),
) -> anyhow::Result<Duration> {
    let from = Instant::now();
    let mut next_line = from + interval;
    say(format!(
        "  every result is in; waiting up to {:.0} s for the statuses still due",
        grace.as_secs_f64()
    ));
    loop {
        let done = {
            let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.funnel.missing(&seen.sent_jobs()) == (0, 0)
        };
        if done || from.elapsed() >= grace {
            return Ok(from.elapsed());
        }
        engine.check_running()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if Instant::now() >= next_line {
            next_line += interval;
            let summary = seen.lock().unwrap_or_else(|p| p.into_inner()).funnel.summary();
            say(format!("  +{:>4.1} s  statuses: {summary}", from.elapsed().as_secs_f64()));
        }
    }
}

/// Reads results and dead letters as the engine writes them, and the
/// statuses the webhook receiver writes when there is one.
fn start_readers(
    brokers: &str,
    config: &Config,
    statuses_topic: Option<&str>,
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
            if seen.statuses.insert(result.id, result.status).is_some() {
                seen.duplicates += 1;
                continue;
            }
            let counts = seen.by_phone.entry(result.phone_number_id).or_default();
            match result.status {
                Status::Sent => counts.0 += 1,
                Status::Failed => counts.1 += 1,
                _ => {}
            }
            let latency = (result.finished_at - result.received_at).num_microseconds().unwrap_or(0);
            seen.job_latencies.push(latency.max(0) as f64 / 1e6);
        }
    });
    let statuses = statuses_topic.map(|topic| TopicReader::connect(brokers, topic, timeout)).transpose()?;
    let seen_statuses = Arc::clone(&seen);
    let dead = tokio::spawn(async move {
        while dead.next().await.is_ok() {
            seen.lock().unwrap_or_else(|p| p.into_inner()).dead_letters += 1;
        }
    });
    let mut readers = vec![results, dead];
    if let Some(statuses) = statuses {
        readers.push(tokio::spawn(async move {
            while let Ok(record) = statuses.next().await {
                seen_statuses.lock().unwrap_or_else(|p| p.into_inner()).funnel.add(&record.payload);
            }
        }));
    }
    Ok(readers)
}

fn status_counts(statuses: &HashMap<String, Status>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for status in statuses.values() {
        *counts.entry(format!("{status:?}").to_lowercase()).or_default() += 1;
    }
    counts
}

fn sim_summary(stats: &SimStats) -> SimSummary {
    SimSummary {
        requests: stats.requests,
        accepted: stats.accepted,
        duplicate_sends: stats.duplicate_count,
        violations_phone: stats.violations.phone,
        violations_pair: stats.violations.pair,
        violations_waba: stats.violations.waba,
        errors_by_code: stats.errors_by_code.clone(),
        hangs: stats.hangs,
        resets: stats.resets,
        goaways: stats.goaways,
    }
}

fn number_reports(
    sim_config: &SimConfig,
    stats: &SimStats,
    seen: &Seen,
    load: &LoadReport,
) -> Vec<NumberReport> {
    sim_config
        .numbers
        .iter()
        .map(|n| {
            let sim_number = stats.numbers.get(&n.id);
            let (sent, failed) = seen.by_phone.get(&n.id).copied().unwrap_or_default();
            NumberReport {
                phone_number_id: n.id.clone(),
                tier: n.mps,
                written: load.per_number.get(&n.id).copied().unwrap_or_default(),
                sent,
                failed,
                achieved_mps: sim_number.map_or(0.0, |s| s.achieved_mps),
                max_in_any_1s_window: sim_number.map_or(0, |s| s.max_in_any_1s_window),
            }
        })
        .collect()
}

/// `kept`: records in the jobs topic at the end, to tell a broker that lost
/// acknowledged records from an engine that did.
fn checks(
    scenario: &Scenario,
    report: &CapacityReport,
    finished_in_time: bool,
    stats: &SimStats,
    (kept, parked): (i64, u64),
) -> Vec<Check> {
    let check = |name: &str, passed: bool, detail: String| Check { name: name.into(), passed, detail };
    let valid = report.written - report.malformed;
    let violations = &stats.violations;
    let mut checks = vec![
        check(
            "load written",
            report.written == scenario.load.jobs,
            format!("{} of {} records acknowledged by Kafka", report.written, scenario.load.jobs),
        ),
        check(
            "broker kept every record",
            u64::try_from(kept).is_ok_and(|kept| kept == report.written + parked),
            format!(
                "{kept} records appended to the jobs topic for {} the broker acknowledged and {parked} \
                 written back by the parking mover",
                report.written
            ),
        ),
        check(
            "finished in time",
            finished_in_time,
            format!("every record had its result or dead letter within {} s", scenario.timeout_s),
        ),
        check(
            "one result per valid job",
            report.results == valid,
            format!("{} results for {valid} valid jobs", report.results),
        ),
        check(
            "one dead letter per malformed record",
            report.dead_letters == report.malformed,
            format!("{} dead letters for {} malformed records", report.dead_letters, report.malformed),
        ),
        check(
            "no duplicates",
            report.duplicate_results == 0 && report.sim.duplicate_sends == 0,
            format!(
                "{} duplicate results, {} jobs accepted twice by the simulator",
                report.duplicate_results, report.sim.duplicate_sends
            ),
        ),
        check(
            "no limit broken",
            violations.phone + violations.pair + violations.waba == 0,
            format!(
                "violations: phone {}, pair {}, waba {}",
                violations.phone, violations.pair, violations.waba
            ),
        ),
    ];
    if let Some(min) = scenario.expect.min_percent_of_tier {
        let lowest = report.numbers.iter().min_by(|a, b| a.percent_of_tier().total_cmp(&b.percent_of_tier()));
        checks.push(check(
            "numbers at their tier",
            lowest.is_some_and(|n| n.percent_of_tier() >= min),
            lowest.map_or("no numbers".into(), |n| {
                format!(
                    "lowest {:.1}% of tier ({}), at least {min}% expected",
                    n.percent_of_tier(),
                    n.phone_number_id
                )
            }),
        ));
    }
    if let Some(min) = scenario.expect.min_total_mps {
        let mps = report.sustained_rate();
        checks.push(check(
            "total throughput",
            mps >= min,
            format!("{mps:.0} messages/s sustained, at least {min:.0} expected"),
        ));
    }
    checks
}

fn describe_latency(config: &SimConfig) -> String {
    match config.latency {
        wabulk_graph_sim::Latency::Fixed(d) if d.is_zero() => "none (answers at once)".into(),
        wabulk_graph_sim::Latency::Fixed(d) => format!("fixed {} ms", d.as_millis()),
        wabulk_graph_sim::Latency::Meta { scale } => {
            format!("Meta-like lognormal × {scale} (p50 {:.0} ms)", 500.0 * scale)
        }
    }
}

fn describe_faults(config: &SimConfig) -> String {
    let f = &config.faults;
    let parts: Vec<String> = [
        ("transient", f.transient),
        ("permanent", f.permanent),
        ("130429 storms per number-second", f.throttle_storm),
        ("hangs", f.hang),
        ("resets", f.reset),
        ("GOAWAY", f.goaway),
    ]
    .into_iter()
    .filter(|(_, p)| *p > 0.0)
    .map(|(name, p)| format!("{:.1}% {name}", p * 100.0))
    .chain(f.forced.iter().map(|e| format!("{:.1}% forced {}", e.probability * 100.0, e.code)))
    .chain(f.outage.map(|o| {
        format!(
            "connections refused for {:.1} s from {:.1} s after the start",
            o.duration.as_secs_f64(),
            o.after.as_secs_f64()
        )
    }))
    .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}
