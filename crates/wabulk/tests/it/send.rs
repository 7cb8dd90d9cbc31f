//! `wabulk send` as a shell user runs it: JSON lines piped into the real
//! binary, the valid ones on the jobs topic keyed by their number, the
//! invalid ones named on stderr by line, and the exit status saying which.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use wabulk_graph_sim::Latency;

use crate::harness::{
    free_port, init_logs, record_counts, sim_config, Collector, EngineToml, Number, Stack, TempDir, JOBS,
};

/// The numbers the jobs are spread over, so that the keys differ.
const PHONES: [&str; 3] = ["106540352242922", "106540352242923", "7"];

/// Valid job `n`, as one line.
fn valid_line(n: usize) -> String {
    json!({
        "id": format!("send-{n}"),
        "phone_number_id": PHONES[n % PHONES.len()],
        "to": format!("+1555{n:07}"),
        "message": { "type": "text", "text": { "body": format!("hello {n}") } },
        "priority": if n % 2 == 0 { "bulk" } else { "normal" },
    })
    .to_string()
}

/// Lines that are not jobs, each for a different reason.
fn invalid_lines() -> [String; 3] {
    [
        "{\"id\": \"send-truncated\", ".to_owned(),
        valid_line(9_000).replace("\"bulk\"", "\"urgent\""),
        valid_line(9_001).replace("+1555", "+0555"),
    ]
}

/// An input of `valid` jobs with `invalid` lines placed among them and a
/// blank line after the first; the input and the 1-based line numbers of
/// the invalid ones.
fn input(valid: usize, invalid: &[String]) -> (String, Vec<usize>) {
    let mut lines: Vec<String> = (0..valid).map(valid_line).collect();
    lines.insert(1, "   ".to_owned());
    let mut numbers = Vec::new();
    for (i, line) in invalid.iter().enumerate() {
        // Near the start, the middle, the end: each after the one before,
        // so that no insertion moves an earlier one.
        let at = (lines.len() * (2 * i + 1) / (2 * invalid.len())).max(2);
        lines.insert(at, line.clone());
        numbers.push(at + 1);
    }
    (lines.join("\n") + "\n", numbers)
}

struct SendRun {
    status: ExitStatus,
    stderr: String,
}

/// Runs `wabulk send --config CONFIG ARGS` with `input` on its standard
/// input and `env` added to an environment without `WABULK_` variables.
async fn run_send(dir: &Path, config: &Path, args: &[&str], input: String, env: &[(&str, &str)]) -> SendRun {
    let stderr_path: PathBuf = dir.join("send.stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("create the stderr file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_wabulk"));
    command.arg("send").arg("--config").arg(config).args(args);
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("WABULK_") {
            command.env_remove(var);
        }
    }
    command
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr));
    let status = tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().expect("start wabulk send");
        let mut stdin = child.stdin.take().expect("its stdin");
        let feeder = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for wabulk send") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("wabulk send did not finish within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = feeder.join();
        status
    })
    .await
    .expect("the send task");
    SendRun { status, stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default() }
}

fn numbers() -> Vec<Number> {
    PHONES.iter().map(|id| Number::new(id, 80)).collect()
}

async fn start_stack() -> Stack {
    Stack::start(sim_config(&numbers(), Latency::Fixed(Duration::ZERO)), 4).await
}

fn jobs_on(brokers: &str, topic: &str) -> i64 {
    record_counts(brokers, &[topic.to_owned()])[topic]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_lines_are_written_keyed_by_number_and_invalid_ones_named() {
    init_logs();
    let stack = start_stack().await;
    let dir = TempDir::new("send");
    let config = EngineToml::new(&stack, "it-send", &numbers()).write(dir.path());
    let (input, invalid) = input(500, &invalid_lines());

    let run = run_send(dir.path(), &config, &[], input.clone(), &[]).await;

    assert_eq!(run.status.code(), Some(1), "some lines were invalid:\n{}", run.stderr);
    for number in &invalid {
        assert!(
            run.stderr.contains(&format!("line {number}: invalid job: ")),
            "line {number}:\n{}",
            run.stderr
        );
    }
    assert_eq!(run.stderr.matches("invalid job").count(), 3, "{}", run.stderr);
    assert!(run.stderr.contains("`priority`") && run.stderr.contains("`to`"), "{}", run.stderr);
    assert!(run.stderr.trim_end().ends_with("written 500, invalid 3"), "{}", run.stderr);

    assert_eq!(jobs_on(&stack.brokers(), JOBS), 500, "exactly the valid lines are on the topic");
    let written = Collector::start(&stack.brokers(), JOBS);
    assert!(written.wait_until(Duration::from_secs(30), |r| r.len() >= 500).await, "read back the jobs");
    let mut by_line = BTreeMap::new();
    for record in written.records() {
        let job: serde_json::Value = serde_json::from_slice(&record.payload).expect("a JSON job");
        let key = String::from_utf8(record.key.clone().expect("a key")).expect("a UTF-8 key");
        assert_eq!(key, job["phone_number_id"], "keyed by its phone_number_id");
        let text = String::from_utf8(record.payload).expect("UTF-8");
        assert!(by_line.insert(text, key).is_none(), "each job written once");
    }
    let expected: BTreeSet<String> = (0..500).map(valid_line).collect();
    assert_eq!(by_line.keys().cloned().collect::<BTreeSet<_>>(), expected, "the lines as they were given");
    written.stop().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_valid_lines_exit_0_and_environment_overrides_apply() {
    init_logs();
    let stack = start_stack().await;
    let topic = "wabulk.jobs.from-env";
    stack.kafka.create_topic(topic, 2).expect("the overriding topic");
    let dir = TempDir::new("send-valid");
    let config = EngineToml::new(&stack, "it-send-valid", &numbers()).write(dir.path());
    let (input, _) = input(200, &[]);

    let run = run_send(dir.path(), &config, &["-"], input, &[("WABULK_KAFKA__JOBS_TOPIC", topic)]).await;

    assert_eq!(run.status.code(), Some(0), "{}", run.stderr);
    assert!(run.stderr.trim_end().ends_with("written 200, invalid 0"), "{}", run.stderr);
    assert!(!run.stderr.contains("line ") && !run.stderr.contains("error:"), "{}", run.stderr);
    assert_eq!(jobs_on(&stack.brokers(), topic), 200);
    assert_eq!(jobs_on(&stack.brokers(), JOBS), 0, "the configured topic was overridden");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_checks_every_line_and_writes_nothing() {
    init_logs();
    let stack = start_stack().await;
    let dir = TempDir::new("send-dry");
    let config = EngineToml::new(&stack, "it-send-dry", &numbers()).write(dir.path());
    let (input, invalid) = input(100, &invalid_lines());

    let run = run_send(dir.path(), &config, &["--dry-run"], input, &[]).await;

    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    for number in &invalid {
        assert!(
            run.stderr.contains(&format!("line {number}: invalid job: ")),
            "line {number}:\n{}",
            run.stderr
        );
    }
    assert!(run.stderr.contains("dry run: valid 100, invalid 3; nothing written"), "{}", run.stderr);
    assert_eq!(jobs_on(&stack.brokers(), JOBS), 0);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_kafka_exits_2_within_the_configured_timeout() {
    init_logs();
    let stack = start_stack().await;
    let dir = TempDir::new("send-no-kafka");
    let mut toml = EngineToml::new(&stack, "it-send-no-kafka", &numbers());
    toml.brokers = format!("127.0.0.1:{}", free_port());
    // `[kafka.properties]` reach the producer: without this, librdkafka
    // would try for its default five minutes.
    toml.kafka_properties.push(("message.timeout.ms".into(), "2000".into()));
    let config = toml.write(dir.path());
    let (input, _) = input(20, &[]);

    let started = Instant::now();
    let run = run_send(dir.path(), &config, &[], input, &[]).await;

    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    assert!(run.stderr.contains("error: line ") && run.stderr.contains("not written"), "{}", run.stderr);
    assert!(run.stderr.trim_end().ends_with("written 0, invalid 0"), "{}", run.stderr);
    stack.stop().await;
}
