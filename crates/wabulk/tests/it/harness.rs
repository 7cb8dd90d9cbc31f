//! What every end-to-end test needs: an embedded Kafka with the three
//! topics, the Graph API simulator, an engine configuration file, the engine
//! as a child process (killed when the test ends, whatever happens), the
//! engine in this process, and readers of the results and DLQ topics that
//! collect what the engine wrote. Every wait is bounded.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wabulk::config::Config;
use wabulk::setup::EngineSetup;
use wabulk_graph_sim::{Latency, SimConfig, SimHandle, SimNumber, SimStats, SimWaba, Simulator};
use wabulk_kafka::{EmbeddedKafka, JobWriter, Record, TopicReader};
use wabulk_loadgen::{LoadNumber, LoadReport, LoadSpec, Recipients, RunOptions};
use wabulk_model::{JobResult, Status};
use wabulk_telemetry::{Health, Metrics};

pub(crate) const JOBS: &str = "wabulk.jobs";
pub(crate) const RESULTS: &str = "wabulk.results";
pub(crate) const DLQ: &str = "wabulk.dlq";

/// The engine's and the simulator's WABA in every test.
pub(crate) const WABA: &str = "102290129340398";
/// The simulator's token for [`WABA`]; the engine reads it from [`TOKEN_ENV`].
pub(crate) const TOKEN: &str = "it-token-waba";
pub(crate) const TOKEN_ENV: &str = "WABULK_IT_WABA_TOKEN";

/// Logs to the test output when `RUST_LOG` is set.
pub(crate) fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A directory removed when the test ends (kept when `WABULK_IT_KEEP` is
/// set, to read the engine's logs afterwards).
#[derive(Debug)]
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("wabulk-it-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("WABULK_IT_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// One business number of a test: its id and tier, always in [`WABA`].
#[derive(Debug, Clone)]
pub(crate) struct Number {
    pub(crate) id: String,
    pub(crate) mps: u32,
}

impl Number {
    pub(crate) fn new(id: &str, mps: u32) -> Number {
        Number { id: id.into(), mps }
    }
}

/// The simulator's configuration for `numbers`: Meta's limits, a seed, and
/// the given latency.
pub(crate) fn sim_config(numbers: &[Number], latency: Latency) -> SimConfig {
    SimConfig {
        seed: Some(11),
        latency,
        numbers: numbers
            .iter()
            .map(|n| SimNumber { id: n.id.clone(), mps: n.mps, waba_id: WABA.into() })
            .collect(),
        wabas: vec![SimWaba { id: WABA.into(), token: TOKEN.into(), hourly_cap: 1_800_000 }],
        ..SimConfig::default()
    }
}

/// Kafka and the simulator, started for one test.
pub(crate) struct Stack {
    pub(crate) kafka: EmbeddedKafka,
    pub(crate) sim: SimHandle,
}

impl Stack {
    /// `jobs_partitions` partitions for the jobs topic; results get 4, the DLQ 1.
    pub(crate) async fn start(sim: SimConfig, jobs_partitions: i32) -> Stack {
        let kafka = EmbeddedKafka::start(1).expect("embedded Kafka");
        kafka.create_topic(JOBS, jobs_partitions).expect("jobs topic");
        kafka.create_topic(RESULTS, 4).expect("results topic");
        kafka.create_topic(DLQ, 1).expect("dlq topic");
        kafka.create_topic("wabulk.account_events", 1).expect("account events topic");
        kafka.create_topic("wabulk.control", 1).expect("control topic");
        // The mock cluster has no CreateTopics: the engine finds them made.
        for topic in wabulk_kafka::ParkingSettings::default().tier_topics() {
            kafka.create_topic(&topic, jobs_partitions).expect("parking topic");
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("simulator port");
        let sim = Simulator::start(sim, listener).await.expect("simulator");
        Stack { kafka, sim }
    }

    pub(crate) fn brokers(&self) -> String {
        self.kafka.bootstrap_servers()
    }

    /// Stops the simulator, then the cluster; clients must be gone first.
    pub(crate) async fn stop(self) -> SimStats {
        let stats = self.sim.stats();
        self.sim.shutdown().await;
        drop(self.kafka);
        stats
    }
}

/// The engine's configuration file (CONTRACT §10) for a test.
#[derive(Debug, Clone)]
pub(crate) struct EngineToml {
    pub(crate) brokers: String,
    pub(crate) group_id: String,
    pub(crate) base_url: String,
    pub(crate) numbers: Vec<Number>,
    /// Extra `key = value` lines of `[limits]`.
    pub(crate) limits: Vec<String>,
    pub(crate) request_timeout_ms: u64,
    /// Extra `key = value` lines of `[graph]` (e.g. `max_attempts = 3`).
    pub(crate) graph: Vec<String>,
    /// More WABAs besides [`WABA`], each with its own token variable.
    pub(crate) other_wabas: Vec<OtherWaba>,
    /// `[kafka.properties]`: librdkafka settings for every client.
    pub(crate) kafka_properties: Vec<(String, String)>,
    /// `http.listen`; the default port 0 serves on any free port.
    pub(crate) http_listen: String,
    /// Extra `key = value` lines of `[parking]`.
    pub(crate) parking: Vec<String>,
    /// Extra `key = value` lines of `[kafka]`.
    pub(crate) kafka: Vec<String>,
    /// Each number's `display_phone_number` is its id, as the simulator
    /// displays it (its account webhooks name numbers so).
    pub(crate) display_numbers: bool,
    /// [`WABA`]'s `token_file`, which wins over its variable.
    pub(crate) token_file: Option<PathBuf>,
}

/// A WABA other than [`WABA`] in an engine configuration: its numbers and
/// the variable its token is read from.
#[derive(Debug, Clone)]
pub(crate) struct OtherWaba {
    pub(crate) id: String,
    pub(crate) token_env: String,
    pub(crate) numbers: Vec<Number>,
    /// `hourly_call_cap`; the default (per-number figure) when `None`.
    pub(crate) hourly_call_cap: Option<u64>,
}

impl EngineToml {
    pub(crate) fn new(stack: &Stack, group_id: &str, numbers: &[Number]) -> EngineToml {
        EngineToml {
            brokers: stack.brokers(),
            group_id: group_id.into(),
            base_url: stack.sim.base_url(),
            numbers: numbers.to_vec(),
            limits: Vec::new(),
            request_timeout_ms: 5_000,
            graph: Vec::new(),
            other_wabas: Vec::new(),
            kafka_properties: Vec::new(),
            http_listen: "127.0.0.1:0".into(),
            parking: Vec::new(),
            kafka: Vec::new(),
            display_numbers: false,
            token_file: None,
        }
    }

    pub(crate) fn render(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "[kafka]\nbrokers = {:?}\ngroup_id = {:?}\njobs_topic = {JOBS:?}\nresults_topic = {RESULTS:?}\n\
             dlq_topic = {DLQ:?}",
            self.brokers, self.group_id
        );
        for line in &self.kafka {
            let _ = writeln!(text, "{line}");
        }
        let _ = writeln!(text);
        if !self.kafka_properties.is_empty() {
            let _ = writeln!(text, "[kafka.properties]");
            for (key, value) in &self.kafka_properties {
                let _ = writeln!(text, "{key:?} = {value:?}");
            }
            let _ = writeln!(text);
        }
        let _ = writeln!(
            text,
            "[graph]\nbase_url = {:?}\nrequest_timeout_ms = {}",
            self.base_url, self.request_timeout_ms
        );
        for line in &self.graph {
            let _ = writeln!(text, "{line}");
        }
        let _ = writeln!(text);
        let _ = writeln!(text, "[limits]");
        for line in &self.limits {
            let _ = writeln!(text, "{line}");
        }
        let _ = writeln!(text);
        for number in &self.numbers {
            let _ =
                writeln!(text, "[[phones]]\nid = {:?}\nwaba_id = {WABA:?}\nmps = {}", number.id, number.mps);
            if self.display_numbers {
                let _ = writeln!(text, "display_phone_number = {:?}", number.id);
            }
            let _ = writeln!(text);
        }
        let _ = writeln!(text, "[[wabas]]\nid = {WABA:?}\ntoken_env = {TOKEN_ENV:?}");
        if let Some(file) = &self.token_file {
            let _ = writeln!(text, "token_file = {:?}", file.display().to_string());
        }
        let _ = writeln!(text);
        for waba in &self.other_wabas {
            for number in &waba.numbers {
                let _ = writeln!(
                    text,
                    "[[phones]]\nid = {:?}\nwaba_id = {:?}\nmps = {}\n",
                    number.id, waba.id, number.mps
                );
            }
            let _ = writeln!(text, "[[wabas]]\nid = {:?}\ntoken_env = {:?}", waba.id, waba.token_env);
            if let Some(cap) = waba.hourly_call_cap {
                let _ = writeln!(text, "hourly_call_cap = {cap}");
            }
            let _ = writeln!(text);
        }
        let _ = writeln!(text, "[http]\nlisten = {:?}\n", self.http_listen);
        let _ = writeln!(text, "[parking]");
        for line in &self.parking {
            let _ = writeln!(text, "{line}");
        }
        text
    }

    /// Sets [`SHORT_SESSION_TIMEOUT_MS`] in `[kafka.properties]`, as an
    /// operator would.
    pub(crate) fn short_session(&mut self) {
        self.kafka_properties.extend([
            ("session.timeout.ms".to_owned(), SHORT_SESSION_TIMEOUT_MS.to_string()),
            ("heartbeat.interval.ms".to_owned(), SHORT_HEARTBEAT_MS.to_string()),
        ]);
    }

    pub(crate) fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("wabulk.toml");
        std::fs::write(&path, self.render()).expect("write the configuration");
        path
    }

    /// The configuration as the engine would load it, with the token given.
    pub(crate) fn setup(&self) -> EngineSetup {
        self.setup_with_env(&|var| (var == TOKEN_ENV).then(|| TOKEN.to_owned()))
    }

    /// The configuration as the engine would load it, with the tokens `env` gives.
    pub(crate) fn setup_with_env(&self, env: &dyn Fn(&str) -> Option<String>) -> EngineSetup {
        let config = Config::from_toml(&self.render(), "test", std::iter::empty::<(String, String)>())
            .expect("a valid configuration");
        EngineSetup::from_config(&config, env).expect("a usable configuration")
    }
}

/// Which program runs the engine in a child process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Program {
    /// `wabulk run --config FILE`: the real binary.
    Wabulk,
}

/// A consumer session timeout for child engines that are SIGKILLed or cut
/// off from the broker: librdkafka's lowest useful value (heartbeats every
/// [`SHORT_HEARTBEAT_MS`]). With its default (45 s) a group whose member was
/// SIGKILLed stays stuck that long (the mock cluster: 45 to 90 s) before a
/// restarted engine gets the partitions back.
pub(crate) const SHORT_SESSION_TIMEOUT_MS: u64 = 6_000;
pub(crate) const SHORT_HEARTBEAT_MS: u64 = 500;

/// The engine as a child process, its log in a file. Dropping it kills the
/// process, so a failing test leaves nothing behind.
#[derive(Debug)]
pub(crate) struct EngineProcess {
    child: Option<Child>,
    pub(crate) log: PathBuf,
    /// Its standard output (`wabulk run` prints nothing there; kept to prove it).
    pub(crate) out: PathBuf,
}

impl EngineProcess {
    /// Starts the engine; `generation` numbers its log file.
    pub(crate) fn spawn(program: Program, config: &Path, dir: &Path, generation: u32) -> EngineProcess {
        let env = [(TOKEN_ENV.to_owned(), TOKEN.to_owned())];
        EngineProcess::spawn_with(program, config, dir, generation, &env, "info,librdkafka=warn")
    }

    /// [`EngineProcess::spawn`] with these variables (the tokens) and this
    /// `RUST_LOG`.
    pub(crate) fn spawn_with(
        program: Program,
        config: &Path,
        dir: &Path,
        generation: u32,
        env: &[(String, String)],
        rust_log: &str,
    ) -> EngineProcess {
        let log = dir.join(format!("engine-{generation}.log"));
        let log_file = std::fs::File::create(&log).expect("create the engine log");
        let out = dir.join(format!("engine-{generation}.out"));
        let out_file = std::fs::File::create(&out).expect("create the engine's stdout file");
        let Program::Wabulk = program;
        let mut command = Command::new(env!("CARGO_BIN_EXE_wabulk"));
        command.arg("run").arg("--config").arg(config);
        // Only this test's settings: no overrides leaking in from the shell.
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("WABULK_") {
                command.env_remove(var);
            }
        }
        command
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_file))
            .stderr(Stdio::from(log_file));
        let child = command.spawn().expect("start wabulk run");
        EngineProcess { child: Some(child), log, out }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, as a crash would, and reap it.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM: a graceful stop.
    pub(crate) fn terminate(&self) {
        let status =
            Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().expect("run kill -TERM");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits up to `limit` for the process to exit on its own.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().expect("wait for wabulk") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process is still running.
    pub(crate) fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("wait for wabulk").is_none(),
            None => false,
        }
    }

    /// The last `lines` lines of its log, for failure messages.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl EngineProcess {
    /// The lines of its log that contain every one of `words`, without the
    /// ANSI colours and up to the level.
    pub(crate) fn log_lines(&self, words: &[&str]) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(plain)
            .filter(|line| words.iter().all(|w| line.contains(w)))
            .map(|line| line.split_once("INFO").map_or(line.as_str(), |(_, rest)| rest).trim().to_owned())
            .collect()
    }
}

/// `line` without ANSI escape sequences.
fn plain(line: &str) -> String {
    let mut plain = String::new();
    let mut escape = false;
    for c in line.chars() {
        match (escape, c) {
            (false, '\u{1b}') => escape = true,
            (false, c) => plain.push(c),
            (true, 'm') => escape = false,
            (true, _) => {}
        }
    }
    plain
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The engine running in this process until [`InProcessEngine::stop`].
pub(crate) struct InProcessEngine {
    /// The engine's metrics, read directly by tests.
    pub(crate) metrics: Arc<Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl InProcessEngine {
    pub(crate) fn start(setup: EngineSetup) -> InProcessEngine {
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::new());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(wabulk::engine::run(setup, Arc::clone(&metrics), health, async move {
            let _ = stopped.await;
        }));
        InProcessEngine { metrics, stop: Some(stop), task: Some(task) }
    }

    /// Whether the engine is still running (it has not returned or panicked).
    pub(crate) fn running(&self) -> bool {
        self.task.as_ref().is_some_and(|task| !task.is_finished())
    }

    /// A graceful stop; fails the test if the engine failed or hung.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("started");
        match tokio::time::timeout(Duration::from_secs(30), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => panic!("the engine failed: {err:#}"),
            Ok(Err(err)) => panic!("the engine task panicked: {err}"),
            Err(_) => panic!("the engine did not stop within 30 s"),
        }
    }
}

impl Drop for InProcessEngine {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Every record of a topic as it arrives, read with [`TopicReader`].
pub(crate) struct Collector {
    records: Arc<Mutex<Vec<Record>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    pub(crate) fn start(brokers: &str, topic: &str) -> Collector {
        let reader = TopicReader::connect(brokers, topic, Duration::from_secs(10)).expect("topic reader");
        let records = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&records);
        let task = tokio::spawn(async move {
            while let Ok(record) = reader.next().await {
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(record);
            }
        });
        Collector { records, task }
    }

    /// [`Collector::start`] that keeps reading past the reader's errors
    /// (which [`Collector::start`] stops at): while the broker is down the
    /// consumer reports transport errors, and reading resumes once it is back.
    pub(crate) fn start_through_errors(brokers: &str, topic: &str) -> Collector {
        let reader = TopicReader::connect(brokers, topic, Duration::from_secs(10)).expect("topic reader");
        let records = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&records);
        let task = tokio::spawn(async move {
            loop {
                match reader.next().await {
                    Ok(record) => sink.lock().unwrap_or_else(|p| p.into_inner()).push(record),
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Collector { records, task }
    }

    pub(crate) fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn len(&self) -> usize {
        self.records.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Every record parsed as a result; panics on one that is not.
    pub(crate) fn results(&self) -> Vec<JobResult> {
        self.records()
            .iter()
            .map(|r| {
                serde_json::from_slice(&r.payload)
                    .unwrap_or_else(|e| panic!("not a result ({e}): {}", String::from_utf8_lossy(&r.payload)))
            })
            .collect()
    }

    /// Polls `done` on the records every 100 ms for up to `limit`; whether it
    /// became true.
    pub(crate) async fn wait_until(&self, limit: Duration, mut done: impl FnMut(&[Record]) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if done(&self.records.lock().unwrap_or_else(|p| p.into_inner())) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops reading; call before the cluster goes.
    pub(crate) async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Distinct job ids among result records.
pub(crate) fn distinct_ids(records: &[Record]) -> usize {
    records
        .iter()
        .filter_map(|r| serde_json::from_slice::<JobResult>(&r.payload).ok())
        .map(|r| r.id)
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// Results grouped by job id, in the order they were read.
pub(crate) fn by_id(results: &[JobResult]) -> HashMap<String, Vec<&JobResult>> {
    let mut map: HashMap<String, Vec<&JobResult>> = HashMap::new();
    for result in results {
        map.entry(result.id.clone()).or_default().push(result);
    }
    map
}

/// Counts of each status, for messages.
pub(crate) fn status_counts(results: &[JobResult]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for result in results {
        *counts.entry(format!("{:?}", result.status).to_lowercase()).or_default() += 1;
    }
    counts
}

pub(crate) fn is_sent(result: &JobResult) -> bool {
    result.status == Status::Sent
}

/// A port free on 127.0.0.1 a moment ago: bound, read, released.
pub(crate) fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// `GET path` over HTTP/1.1 from `127.0.0.1:port`; the status line and body,
/// or why not (the engine may not be listening yet).
pub(crate) fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    http_call(port, "GET", path, &[])
}

/// One bodiless HTTP/1.1 request with `headers` (`"Name: value"`); the whole
/// answer as text.
pub(crate) fn http_call(port: u16, method: &str, path: &str, headers: &[&str]) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n");
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// The value of one sample in a Prometheus text body: `series` is the
/// metric name with its labels as rendered (`name{label="v"}`), or the bare
/// name of an unlabelled metric.
pub(crate) fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Total limit violations the simulator counted.
pub(crate) fn violations(stats: &SimStats) -> u64 {
    stats.violations.phone + stats.violations.pair + stats.violations.waba
}

/// The simulator's violations and, per number, the most arrivals it saw in
/// any 1 s window against the tier.
pub(crate) fn limits_report(stats: &SimStats) -> String {
    let numbers: Vec<String> = stats
        .numbers
        .iter()
        .map(|(id, n)| format!("{id}: max {} in 1 s of {}", n.max_in_any_1s_window, n.mps))
        .collect();
    format!("{:?}; {}", stats.violations, numbers.join(", "))
}

/// Pacing margin under each tier in the child-process tests. The default
/// (1 %) leaves 10 ms of the 1 s window for jitter between sending and
/// arrival; on a loaded two-core machine running debug builds that is
/// sometimes not enough (the simulator then counts 81 arrivals in a second
/// for an 80 msg/s number), which is not what these tests are about.
pub(crate) const MPS_MARGIN: &str = "mps_margin_percent = 5.0";

/// A load of `jobs` valid jobs, shared by `numbers` in proportion to
/// `shares`, to a million recipients (so the pair rule never matters), at
/// `rate` per second.
pub(crate) fn load(numbers: &[Number], shares: &[f64], jobs: u64, rate: f64, prefix: &str) -> LoadSpec {
    LoadSpec {
        numbers: numbers
            .iter()
            .zip(shares)
            .map(|(n, &share)| LoadNumber { share, ..LoadNumber::new(n.id.clone(), WABA, n.mps) })
            .collect(),
        jobs,
        rate: Some(rate),
        recipients: Recipients::Uniform { count: 1_000_000 },
        id_prefix: prefix.into(),
        seed: 3,
        // No bursts, malformed, delayed or expiring jobs.
        ..LoadSpec::file_default()
    }
}

/// Writes the load in the background; its report carries every job id.
pub(crate) fn start_load(brokers: &str, spec: LoadSpec) -> tokio::task::JoinHandle<LoadReport> {
    let writer = JobWriter::connect(brokers, &Default::default()).expect("job writer");
    tokio::spawn(async move {
        let options = RunOptions { collect_job_ids: true, ..RunOptions::default() };
        wabulk_loadgen::run_with(&spec, &writer, JOBS, &options).await.expect("load generator")
    })
}

pub(crate) async fn finish_load(load: tokio::task::JoinHandle<LoadReport>) -> LoadReport {
    tokio::time::timeout(Duration::from_secs(60), load)
        .await
        .expect("the load generator finished within 60 s")
        .expect("load generator task")
}

/// Polls `done` every 100 ms for up to `limit`; whether it became true.
pub(crate) async fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

/// How long a job the engine sent stays exposed to being sent again: from
/// its request leaving to the acknowledgement of the offset commit that
/// covers it. A SIGKILL (or a lost assignment) makes the engine send again
/// only jobs in that window, and it sends no faster than the tiers (the
/// simulator checks that), so one kill repeats at most tiers × this. Every
/// term comes from what the test set or the engine is configured with, taken
/// generously for a loaded two-core host; none from what the engine reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExposureWindow {
    /// The simulator's answer: the latency the test set, at a percentile
    /// that almost every request stays under (the rare slower one is in
    /// flight a little longer, which the load term covers).
    pub(crate) answer: Duration,
    /// The result's write: the producer's 5 ms linger and a round trip to
    /// the broker, which on a loaded host takes up to ~100 ms.
    pub(crate) result_ack: Duration,
    /// The commit: started at most [`wabulk_kafka::COMMIT_FLOOR`] after the
    /// previous one, then a round trip to the coordinator (~100 ms loaded).
    pub(crate) commit: Duration,
    /// Stalls of the engine's or the mock broker's threads on a host shared
    /// with other test processes (debug builds, two cores).
    pub(crate) load: Duration,
}

impl ExposureWindow {
    /// The window for a simulator answering with `latency`.
    pub(crate) fn new(latency: Latency) -> ExposureWindow {
        let answer = match latency {
            Latency::Fixed(d) => d,
            // Meta's lognormal (median 0.5 s, p99 about 2 s): its p99.9 is
            // about 3 s, scaled as the test asked.
            Latency::Meta { scale } => Duration::from_secs_f64(3.0 * scale),
        };
        ExposureWindow {
            answer,
            result_ack: Duration::from_millis(100),
            commit: wabulk_kafka::COMMIT_FLOOR + Duration::from_millis(100),
            load: Duration::from_millis(200),
        }
    }

    pub(crate) fn total(&self) -> Duration {
        self.answer + self.result_ack + self.commit + self.load
    }

    /// The most jobs sent again per kill at `tiers` msg/s in all.
    pub(crate) fn allowed(&self, tiers: u32) -> u64 {
        (f64::from(tiers) * self.total().as_secs_f64()).ceil() as u64
    }
}

impl std::fmt::Display for ExposureWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ms (answer {} + result {} + commit {} + load {})",
            self.total().as_millis(),
            self.answer.as_millis(),
            self.result_ack.as_millis(),
            self.commit.as_millis(),
            self.load.as_millis()
        )
    }
}

/// A partition's committed offset for a consumer group, as the broker keeps it.
#[derive(Debug, Clone)]
pub(crate) struct Committed {
    pub(crate) partition: i32,
    /// The committed position: the next offset the group reads.
    pub(crate) offset: i64,
    /// The engine's commit metadata (`v2:` and the finished offsets above
    /// `offset`, relative to it).
    pub(crate) metadata: String,
}

impl Committed {
    /// The finished offsets above the committed one that the metadata lists
    /// (`v2:`: each range's distance from the previous one's end, `g` or `g+l`).
    pub(crate) fn finished_above(&self) -> Vec<i64> {
        let ranges = self.metadata.strip_prefix("v2:").expect("the engine's metadata format");
        let mut end = self.offset;
        let mut finished = Vec::new();
        for range in ranges.split(',').filter(|r| !r.is_empty()) {
            let (gap, extra) = range.split_once('+').unwrap_or((range, "0"));
            let (gap, extra): (i64, i64) =
                (gap.parse().expect("a distance"), extra.parse().expect("a length"));
            finished.extend(end + gap..=end + gap + extra);
            end += gap + extra;
        }
        finished
    }
}

/// What `group` has committed for `partitions` partitions of `topic`, read
/// from the broker with a plain consumer (an offset fetch; it joins nothing).
pub(crate) fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<Committed> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer for the committed offsets");
    let mut list = rdkafka::TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let fetched = consumer.committed_offsets(list, Duration::from_secs(10)).expect("the committed offsets");
    fetched
        .elements_for_topic(topic)
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(offset) => {
                Some(Committed { partition: e.partition(), offset, metadata: e.metadata().to_owned() })
            }
            _ => None,
        })
        .collect()
}

/// Records ever appended to each of `topics` (the sum of its partitions'
/// high watermarks), read from the broker with one plain consumer.
pub(crate) fn record_counts(brokers: &str, topics: &[String]) -> BTreeMap<String, i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "it-record-counts")
        .create()
        .expect("a consumer for the watermarks");
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(None, timeout).expect("the cluster's metadata");
    topics
        .iter()
        .map(|topic| {
            let partitions = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .unwrap_or_else(|| panic!("no topic {topic}"))
                .partitions()
                .iter()
                .map(|p| p.id());
            let count = partitions
                .map(|p| consumer.fetch_watermarks(topic, p, timeout).expect("the watermarks").1)
                .sum();
            (topic.clone(), count)
        })
        .collect()
}

/// Writes (key, payload) pairs to the jobs topic, 1,000 at a time so that
/// librdkafka batches them.
pub(crate) async fn write_all<K: AsRef<[u8]>>(writer: &JobWriter, jobs: &[(K, Vec<u8>)]) {
    for chunk in jobs.chunks(1_000) {
        let sends = chunk.iter().map(|(key, payload)| writer.send(JOBS, Some(key.as_ref()), payload));
        for written in futures::future::join_all(sends).await {
            written.expect("write a job");
        }
    }
}

/// Writes `n` text jobs `{prefix}-{i}` for `phone`, each to its own
/// recipient (`+1555300{i:04}`), so that only the number's tier limits them.
pub(crate) async fn write_text_jobs(stack: &Stack, phone: &str, prefix: &str, n: usize) {
    let writer = JobWriter::connect(&stack.brokers(), &Default::default()).expect("job writer");
    let jobs: Vec<(&str, Vec<u8>)> = (0..n)
        .map(|i| {
            let job = serde_json::json!({ "id": format!("{prefix}-{i}"), "phone_number_id": phone,
                "to": format!("+1555300{i:04}"), "message": { "type": "text", "text": { "body": "hi" } } });
            (phone, serde_json::to_vec(&job).expect("json"))
        })
        .collect();
    write_all(&writer, &jobs).await;
}

/// Messages the simulator accepted for `phone` so far.
pub(crate) fn accepted(stack: &Stack, phone: &str) -> u64 {
    stack.sim.stats().numbers.get(phone).map_or(0, |n| n.accepted)
}

/// Messages the simulator accepted for `phone` during about `span`, and how
/// long that really was (a bound on them is one window more than that).
pub(crate) async fn accepted_during(stack: &Stack, phone: &str, span: Duration) -> (u64, Duration) {
    let (before, started) = (accepted(stack, phone), Instant::now());
    tokio::time::sleep(span).await;
    (accepted(stack, phone) - before, started.elapsed())
}
