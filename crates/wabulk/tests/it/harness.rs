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
}

/// A WABA other than [`WABA`] in an engine configuration: its numbers and
/// the variable its token is read from.
#[derive(Debug, Clone)]
pub(crate) struct OtherWaba {
    pub(crate) id: String,
    pub(crate) token_env: String,
    pub(crate) numbers: Vec<Number>,
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
        }
    }

    pub(crate) fn render(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "[kafka]\nbrokers = {:?}\ngroup_id = {:?}\njobs_topic = {JOBS:?}\nresults_topic = {RESULTS:?}\n\
             dlq_topic = {DLQ:?}\n",
            self.brokers, self.group_id
        );
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
            let _ = writeln!(
                text,
                "[[phones]]\nid = {:?}\nwaba_id = {WABA:?}\nmps = {}\n",
                number.id, number.mps
            );
        }
        let _ = writeln!(text, "[[wabas]]\nid = {WABA:?}\ntoken_env = {TOKEN_ENV:?}\n");
        for waba in &self.other_wabas {
            for number in &waba.numbers {
                let _ = writeln!(
                    text,
                    "[[phones]]\nid = {:?}\nwaba_id = {:?}\nmps = {}\n",
                    number.id, waba.id, number.mps
                );
            }
            let _ = writeln!(text, "[[wabas]]\nid = {:?}\ntoken_env = {:?}\n", waba.id, waba.token_env);
        }
        let _ = writeln!(text, "[http]\nlisten = {:?}", self.http_listen);
        text
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
    /// This test binary running [`engine_child`]: the same configuration
    /// file and `wabulk::engine::run`, plus a 6 s consumer session timeout.
    /// The configuration has no key for librdkafka properties, and with
    /// librdkafka's default (45 s) a group whose member was SIGKILLed stays
    /// stuck that long (the mock cluster: 45 to 90 s) before a restarted
    /// engine gets the partitions back.
    ShortSession,
}

/// Set for the child that [`Program::ShortSession`] starts: the configuration file.
pub(crate) const CHILD_CONFIG_ENV: &str = "WABULK_IT_CHILD_CONFIG";

/// The engine's consumer session timeout in [`Program::ShortSession`]
/// children (librdkafka's lowest useful value; heartbeats every 500 ms).
pub(crate) const CHILD_SESSION_TIMEOUT_MS: u64 = 6_000;

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
        let mut command = match program {
            Program::Wabulk => {
                let mut command = Command::new(env!("CARGO_BIN_EXE_wabulk"));
                command.arg("run").arg("--config").arg(config);
                command
            }
            Program::ShortSession => {
                let mut command = Command::new(std::env::current_exe().expect("this test binary"));
                command.args(["--exact", "harness::engine_child", "--nocapture", "--test-threads=1"]);
                command
            }
        };
        // Only this test's settings: no overrides leaking in from the shell.
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("WABULK_") {
                command.env_remove(var);
            }
        }
        if program == Program::ShortSession {
            command.env(CHILD_CONFIG_ENV, config);
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
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
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

/// What a SIGKILL now could make the engine at `port` send again, from its
/// `/metrics`: requests in flight plus jobs whose results are acknowledged
/// and not yet committed. `None` when it does not answer.
pub(crate) fn exposed(port: u16) -> Option<Exposed> {
    let body = http_get(port, "/metrics").ok()?;
    Some(Exposed {
        inflight: sample(&body, "wabulk_inflight_requests")? as u64,
        uncommitted: sample(&body, "wabulk_uncommitted_jobs")? as u64,
    })
}

/// See [`exposed`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Exposed {
    pub(crate) inflight: u64,
    pub(crate) uncommitted: u64,
}

impl Exposed {
    pub(crate) fn total(&self) -> u64 {
        self.inflight + self.uncommitted
    }
}

/// Total limit violations the simulator counted.
pub(crate) fn violations(stats: &SimStats) -> u64 {
    stats.violations.phone + stats.violations.pair + stats.violations.waba
}

/// Not a test: the engine of a [`Program::ShortSession`] child, which runs
/// this binary with only this function selected. Run by the test harness
/// without [`CHILD_CONFIG_ENV`], it does nothing. Like `wabulk run`, it
/// serves `/metrics` on the configuration's `http.listen` and stops
/// gracefully on SIGTERM.
#[test]
fn engine_child() {
    let Some(path) = std::env::var_os(CHILD_CONFIG_ENV) else { return };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let config = Config::load(Path::new(&path), std::env::vars()).expect("configuration");
        let mut setup = EngineSetup::from_config(&config, &|var| std::env::var(var).ok()).expect("setup");
        setup.kafka.extra.insert("session.timeout.ms".into(), CHILD_SESSION_TIMEOUT_MS.to_string());
        setup.kafka.extra.insert("heartbeat.interval.ms".into(), "500".into());
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::new());
        let listener = tokio::net::TcpListener::bind(setup.http_listen).await.expect("http.listen");
        let http = tokio::spawn(wabulk_telemetry::serve(
            listener,
            Arc::clone(&metrics),
            Arc::clone(&health),
            std::future::pending(),
        ));
        wabulk::engine::run(setup, metrics, health, async move {
            terminate.recv().await;
        })
        .await
        .expect("engine");
        http.abort();
    });
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
