//! The engine's connectivity with real peers: HTTPS to the simulator with
//! its CA in `graph.ca_file` (and a wrong CA, which spends no job), a real
//! HTTP CONNECT proxy (Debian's tinyproxy, started here) chosen through
//! `HTTPS_PROXY` and bypassed through `NO_PROXY`, zstd-compressed jobs, and
//! `check-config` with Kafka, proxy and Graph secrets in its configuration.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use wabulk_graph_sim::{Latency, SimConfig, Simulator};
use wabulk_kafka::JobWriter;

use crate::harness::{
    free_port, init_logs, is_sent, sample, sim_config, status_counts, wait_for, Collector, EngineProcess,
    EngineToml, InProcessEngine, Number, Program, Stack, TempDir, JOBS, RESULTS, TOKEN, TOKEN_ENV,
};

const PHONE: &str = "106540352242922";

/// A text job `id` to a recipient of its own (the pair rule never waits).
fn job(id: &str, n: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id,
        "phone_number_id": PHONE,
        "to": format!("+1555{n:07}"),
        "message": { "type": "text", "text": { "body": "connectivity" } },
    }))
    .expect("json")
}

/// Writes `count` jobs named `{prefix}-{n}`, 200 at a time so librdkafka
/// batches them; their ids.
async fn write_jobs(writer: &JobWriter, prefix: &str, count: usize) -> Vec<String> {
    let ids: Vec<String> = (0..count).map(|n| format!("{prefix}-{n}")).collect();
    for chunk in ids.chunks(200) {
        let payloads: Vec<Vec<u8>> = chunk.iter().map(|id| job(id, id_number(id))).collect();
        let sends = payloads.iter().map(|payload| writer.send(JOBS, Some(PHONE.as_bytes()), payload));
        for written in futures::future::join_all(sends).await {
            written.expect("write a job");
        }
    }
    ids
}

fn id_number(id: &str) -> usize {
    id.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// Every id has exactly one result, and it is `sent`.
fn assert_each_sent_once(collector: &Collector, ids: &[String]) {
    let results = collector.results();
    let mine: Vec<_> = results.iter().filter(|r| ids.contains(&r.id)).collect();
    assert_eq!(mine.len(), ids.len(), "results: {:?}", status_counts(&results));
    assert!(mine.iter().all(|r| is_sent(r)), "results: {:?}", status_counts(&results));
    let distinct: std::collections::HashSet<&str> = mine.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(distinct.len(), ids.len(), "one result per job");
}

/// The CA of a simulator that is not the one the engine talks to.
async fn foreign_ca(path: &Path) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("port");
    let other =
        Simulator::start(SimConfig { tls: true, ..SimConfig::default() }, listener).await.expect("sim");
    other.write_ca_pem(path).expect("write the foreign CA");
    other.shutdown().await;
}

/// Over HTTPS with the wrong CA, the engine retries on connection errors and
/// finishes no job, even with a single attempt allowed per job; restarted with the simulator's CA in `graph.ca_file`,
/// it sends every one of them once, over HTTP/2, about a thousand in flight
/// (1000 msg/s at 1 s latency).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_ca_file_sends_every_job_and_a_wrong_ca_spends_none() {
    init_logs();
    const COUNT: usize = 1_500;
    let numbers = [Number::new(PHONE, 1000)];
    let sim = SimConfig { tls: true, ..sim_config(&numbers, Latency::Fixed(Duration::from_secs(1))) };
    let stack = Stack::start(sim, 2).await;
    assert!(stack.sim.base_url().starts_with("https://"), "{}", stack.sim.base_url());
    let dir = TempDir::new("https");
    let right_ca = dir.path().join("sim-ca.pem");
    let wrong_ca = dir.path().join("foreign-ca.pem");
    stack.sim.write_ca_pem(&right_ca).expect("write the CA");
    foreign_ca(&wrong_ca).await;
    let results = Collector::start(&stack.brokers(), RESULTS);
    let writer = JobWriter::connect(&stack.brokers(), &Default::default()).expect("job writer");
    let ids = write_jobs(&writer, "https", COUNT).await;

    let toml = |ca: &Path| {
        let mut toml = EngineToml::new(&stack, "it-https", &numbers);
        toml.graph.push(format!("ca_file = {:?}", ca.display().to_string()));
        // One attempt: a connection that cannot be made spends none, so with
        // the wrong CA the jobs wait instead of failing.
        toml.graph.push("max_attempts = 1".into());
        toml.limits.push("mps_margin_percent = 5.0".into());
        toml.setup()
    };
    let engine = InProcessEngine::start(toml(&wrong_ca));
    let connection_retries =
        || sample(&engine.metrics.render(), "wabulk_retries_total{reason=\"connection\"}").unwrap_or(0.0);
    let retried = wait_for(Duration::from_secs(30), || connection_retries() >= 10.0).await;
    assert!(retried, "no connection retries with the wrong CA: {}", connection_retries());
    // Give a wrongly finished job the time to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(results.len(), 0, "a job finished although no request could be sent");
    assert_eq!(stack.sim.stats().requests, 0, "a request went through with the wrong CA");
    engine.stop().await;

    let engine = InProcessEngine::start(toml(&right_ca));
    let started = Instant::now();
    let mut most_in_flight = 0.0_f64;
    let all_in = wait_for(Duration::from_secs(120), || {
        let in_flight = sample(&engine.metrics.render(), "wabulk_inflight_requests").unwrap_or(0.0);
        most_in_flight = most_in_flight.max(in_flight);
        results.len() >= COUNT
    })
    .await;
    let took = started.elapsed();
    assert!(all_in, "{} results of {COUNT} over HTTPS", results.len());
    engine.stop().await;
    assert_each_sent_once(&results, &ids);
    results.stop().await;
    let stats = stack.stop().await;
    println!(
        "https: {COUNT} jobs in {:.1} s, at most {most_in_flight} requests in flight, {} TLS connections",
        took.as_secs_f64(),
        stats.connections
    );
    assert_eq!((stats.accepted, stats.http2_requests), (COUNT as u64, COUNT as u64), "{stats:?}");
    // Sampled every 100 ms by a busy test: a floor well under the ~1000 expected.
    assert!(most_in_flight >= 100.0, "at most {most_in_flight} in flight");
}

/// tinyproxy from Debian's package, on 127.0.0.1, with Basic credentials,
/// allowing CONNECT to one port only; killed when dropped.
struct Tinyproxy {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Tinyproxy {
    fn start(dir: &Path, connect_port: u16, user: &str, password: &str) -> Tinyproxy {
        let port = free_port();
        let log = dir.join("tinyproxy.log");
        let config = dir.join("tinyproxy.conf");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{}\"\nLogLevel Connect\nMaxClients 100\n\
                 Allow 127.0.0.1\nConnectPort {connect_port}\nBasicAuth {user} {password}\nDisableViaHeader Yes\n",
                log.display()
            ),
        )
        .expect("write tinyproxy.conf");
        let child = match Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("tinyproxy is not installed: run scripts/install-build-deps (as root) first")
            }
            Err(e) => panic!("cannot start tinyproxy: {e}"),
        };
        let proxy = Tinyproxy { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tinyproxy did not listen on {port} within 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        proxy
    }

    /// Tunnels tinyproxy opened to `127.0.0.1:port`, from its log.
    fn tunnels_to(&self, port: u16) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines().filter(|l| l.contains(&format!("CONNECT 127.0.0.1:{port} HTTP/1.1"))).count()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real binary with `HTTPS_PROXY` (credentials included) sends every
/// job through tinyproxy: each connection the simulator saw is a tunnel in
/// tinyproxy's log, and the password is in no log or output. With
/// `NO_PROXY=127.0.0.1` too, the next engine connects directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tinyproxy_carries_the_connections_and_no_proxy_bypasses_it() {
    init_logs();
    const COUNT: usize = 100;
    let numbers = [Number::new(PHONE, 200)];
    let sim = SimConfig { tls: true, ..sim_config(&numbers, Latency::Fixed(Duration::from_millis(5))) };
    let stack = Stack::start(sim, 2).await;
    let sim_port = stack.sim.local_addr().port();
    let dir = TempDir::new("proxy");
    let ca = dir.path().join("sim-ca.pem");
    stack.sim.write_ca_pem(&ca).expect("write the CA");
    let password = format!("tiny-pw-{:x}", std::process::id() ^ 0x5eed);
    let proxy = Tinyproxy::start(dir.path(), sim_port, "wabulk", &password);
    let mut toml = EngineToml::new(&stack, "it-proxy", &numbers);
    toml.graph.push(format!("ca_file = {:?}", ca.display().to_string()));
    let config = toml.write(dir.path());
    let proxy_url = format!("http://wabulk:{password}@127.0.0.1:{}", proxy.port);
    let env = vec![(TOKEN_ENV.to_owned(), TOKEN.to_owned()), ("HTTPS_PROXY".to_owned(), proxy_url)];
    let results = Collector::start(&stack.brokers(), RESULTS);
    let writer = JobWriter::connect(&stack.brokers(), &Default::default()).expect("job writer");

    // Through the proxy.
    let mut engine = EngineProcess::spawn_with(Program::Wabulk, &config, dir.path(), 0, &env, "trace");
    let ids = write_jobs(&writer, "proxied", COUNT).await;
    let all_in = results.wait_until(Duration::from_secs(60), |r| r.len() >= COUNT).await;
    assert!(all_in, "{} results of {COUNT} through the proxy:\n{}", results.len(), engine.log_tail(20));
    engine.terminate();
    assert!(engine.wait_exit(Duration::from_secs(20)).is_some_and(|s| s.success()), "SIGTERM");
    assert_each_sent_once(&results, &ids);
    let tunnels = proxy.tunnels_to(sim_port);
    let connections = stack.sim.stats().connections;
    assert!(tunnels >= 1, "no CONNECT in tinyproxy's log");
    assert_eq!(tunnels as u64, connections, "every connection the simulator saw came through the proxy");
    let check = Command::new(env!("CARGO_BIN_EXE_wabulk"))
        .args(["check-config", "--config"])
        .arg(&config)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run wabulk check-config");
    let check_text = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "check-config: {}", String::from_utf8_lossy(&check.stderr));
    assert!(
        check_text.contains(&format!("# proxy from HTTPS_PROXY: http://***@127.0.0.1:{}", proxy.port)),
        "{check_text}"
    );
    let log = std::fs::read_to_string(&engine.log).expect("engine log");
    for (place, text) in [
        ("engine log", log.as_str()),
        ("check-config", &check_text),
        ("check-config stderr", &String::from_utf8_lossy(&check.stderr)),
    ] {
        assert!(!text.contains(&password), "the proxy password is in the {place}");
    }
    assert!(log.contains("through an HTTP CONNECT proxy"), "{}", engine.log_tail(20));

    // NO_PROXY names the simulator's address: straight there.
    let mut env = env;
    env.push(("NO_PROXY".to_owned(), "localhost,127.0.0.1".to_owned()));
    let engine = EngineProcess::spawn_with(Program::Wabulk, &config, dir.path(), 1, &env, "info");
    let direct = write_jobs(&writer, "direct", COUNT).await;
    let all_in = results.wait_until(Duration::from_secs(60), |r| r.len() >= 2 * COUNT).await;
    assert!(all_in, "{} results of {} with NO_PROXY:\n{}", results.len(), 2 * COUNT, engine.log_tail(20));
    assert_each_sent_once(&results, &direct);
    assert_eq!(proxy.tunnels_to(sim_port), tunnels, "NO_PROXY: no new tunnel");
    assert!(stack.sim.stats().connections > connections, "the second engine connected directly");
    drop(engine);
    results.stop().await;
    stack.stop().await;
}

/// A batch the producer compressed with zstd is read and sent (librdkafka
/// refuses `compression.type=zstd` when built without it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_compressed_jobs_are_read_and_sent() {
    init_logs();
    const COUNT: usize = 400;
    let numbers = [Number::new(PHONE, 1000)];
    let stack = Stack::start(sim_config(&numbers, Latency::Fixed(Duration::from_millis(5))), 2).await;
    let build = wabulk_kafka::client_build().expect("librdkafka's build");
    assert!(build.has("zstd"), "librdkafka {} without zstd: {:?}", build.version, build.features);
    let zstd = [("compression.type", "zstd"), ("linger.ms", "50")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let writer = JobWriter::connect(&stack.brokers(), &zstd).expect("a zstd producer");
    let ids = write_jobs(&writer, "zstd", COUNT).await;
    let results = Collector::start(&stack.brokers(), RESULTS);
    let engine = InProcessEngine::start(EngineToml::new(&stack, "it-zstd", &numbers).setup());
    let all_in = results.wait_until(Duration::from_secs(60), |r| r.len() >= COUNT).await;
    assert!(all_in, "{} results of {COUNT}", results.len());
    engine.stop().await;
    assert_each_sent_once(&results, &ids);
    results.stop().await;
    stack.stop().await;
}

/// `check-config` with every kind of secret in its configuration and
/// environment prints none of them, and says each is masked.
#[test]
fn check_config_prints_no_secret() {
    let dir = TempDir::new("check-config");
    let secrets = [
        "graph-token-s1",
        "kafka-password-s2",
        "key-password-s3",
        "oauth-secret-s4",
        "keystore-password-s5",
        "proxy-password-s6",
        "env-proxy-password-s7",
        "oauth-config-s8",
    ];
    let config = dir.path().join("wabulk.toml");
    std::fs::write(
        &config,
        format!(
            r#"[kafka]
brokers = "b-1.msk.example:9096"
[kafka.properties]
"security.protocol" = "SASL_SSL"
"sasl.mechanism" = "SCRAM-SHA-512"
"sasl.username" = "wabulk"
"sasl.password" = "{}"
"ssl.key.password" = "{}"
"sasl.oauthbearer.client.secret" = "{}"
"ssl.keystore.password" = "{}"
"sasl.oauthbearer.config" = "principal=wabulk extension_x={}"
[graph]
token_env = "WABULK_IT_CHECK_TOKEN"
proxy = "http://wabulk:{}@proxy.example:3128"
"#,
            secrets[1], secrets[2], secrets[3], secrets[4], secrets[7], secrets[5]
        ),
    )
    .expect("write the configuration");
    let output = Command::new(env!("CARGO_BIN_EXE_wabulk"))
        .args(["check-config", "--config"])
        .arg(&config)
        .env("WABULK_IT_CHECK_TOKEN", secrets[0])
        .env("HTTPS_PROXY", format!("http://u:{}@other-proxy:3128", secrets[6]))
        .env("RUST_LOG", "trace")
        .output()
        .expect("run wabulk check-config");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "check-config failed: {stderr}");
    for secret in secrets {
        assert!(!stdout.contains(secret) && !stderr.contains(secret), "{secret} shown:\n{stdout}\n{stderr}");
    }
    for shown in [
        "\"sasl.password\" = \"***\"",
        "\"ssl.key.password\" = \"***\"",
        "\"sasl.oauthbearer.client.secret\" = \"***\"",
        "\"ssl.keystore.password\" = \"***\"",
        "\"security.protocol\" = \"SASL_SSL\"",
        "proxy = \"http://***@proxy.example:3128\"",
        "# WABULK_IT_CHECK_TOKEN = \"***\"  (set)",
    ] {
        assert!(stdout.contains(shown), "{shown:?} not in:\n{stdout}");
    }
    // The librdkafka line tells which security features the build has.
    let features = stdout.lines().find(|l| l.starts_with("# librdkafka ")).expect("a librdkafka line");
    for feature in ["ssl", "sasl_scram", "sasl_oauthbearer", "zstd"] {
        assert!(features.contains(feature), "{features}");
    }
}
