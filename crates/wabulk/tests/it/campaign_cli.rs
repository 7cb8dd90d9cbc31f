//! `wabulk campaign` as an operator runs it, against the mock cluster with
//! no engine: pause, resume and cancel write one control record each, keyed
//! by the campaign; a cancelled campaign is not resumed; `status` counts
//! each campaign's jobs and results from the topics.

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use wabulk_graph_sim::Latency;
use wabulk_kafka::JobWriter;
use wabulk_model::{CampaignState, Control, JobResult, Status};

use crate::harness::{
    init_logs, record_counts, sim_config, write_all, Collector, EngineToml, Number, Stack, TempDir, RESULTS,
};

const CONTROL: &str = "wabulk.control";
const PHONE: &str = "106540352242922";

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `wabulk campaign ARGS --config CONFIG` with `env` added to an
/// environment without `WABULK_` variables or `USER`.
async fn campaign(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wabulk"));
    command.arg("campaign").args(args).arg("--config").arg(config);
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("WABULK_") {
            command.env_remove(var);
        }
    }
    command
        .env_remove("RUST_LOG")
        .env_remove("USER")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tokio::task::spawn_blocking(move || {
        let child = command.spawn().expect("start wabulk campaign");
        let pid = child.id();
        let (done_tx, done) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let output = child.wait_with_output();
            let _ = done_tx.send(());
            output
        });
        if done.recv_timeout(Duration::from_secs(90)).is_err() {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("wabulk campaign did not finish within 90 s");
        }
        let output = waiter.join().expect("the waiter").expect("wabulk campaign's output");
        Run {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    })
    .await
    .expect("the campaign task")
}

async fn start_stack() -> Stack {
    Stack::start(sim_config(&[Number::new(PHONE, 80)], Latency::Fixed(Duration::ZERO)), 2).await
}

fn control_records(brokers: &str) -> i64 {
    record_counts(brokers, &[CONTROL.to_owned()])[CONTROL]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_written_keyed_by_campaign_and_a_cancel_is_for_good() {
    init_logs();
    let stack = start_stack().await;
    let dir = TempDir::new("campaign-cli-changes");
    let config = EngineToml::new(&stack, "it-campaign-cli", &[Number::new(PHONE, 80)]).write(dir.path());

    let mut expected = Vec::new();
    for (command, state, env) in [
        ("pause", CampaignState::Paused, &[][..]),
        ("resume", CampaignState::Active, &[("USER", "tester")][..]),
        ("cancel", CampaignState::Cancelled, &[][..]),
    ] {
        let mut args = vec![command, "nov-shipping"];
        if env.is_empty() {
            args.extend(["--by", "ops"]);
        }
        let before = Utc::now();
        let run = campaign(&config, &args, env).await;
        assert!(run.status.success(), "{command}: {}{}", run.stdout, run.stderr);
        let line = run.stdout.trim_end();
        assert_eq!(line.lines().count(), 1, "{command}: one line: {line}");
        assert!(
            line.starts_with(&format!("campaign nov-shipping: {}, written to {CONTROL}", state.label()))
                && line.contains("within about a second"),
            "{command}: {line}"
        );
        expected.push((state, if env.is_empty() { "ops" } else { "tester" }, before));
    }

    let written = Collector::start(&stack.brokers(), CONTROL);
    assert!(written.wait_until(Duration::from_secs(30), |r| r.len() >= 3).await, "read the control records");
    let records = written.records();
    assert_eq!(records.len(), 3);
    for (record, (state, by, before)) in records.iter().zip(&expected) {
        assert_eq!(record.key.as_deref(), Some(&b"nov-shipping"[..]), "keyed by the campaign");
        let control: Control = serde_json::from_slice(&record.payload).expect("a control record");
        assert_eq!(control.campaign, "nov-shipping");
        assert_eq!(control.state, *state);
        assert_eq!(control.by.as_deref(), Some(*by), "--by, else USER");
        assert!(control.at >= *before && control.at <= Utc::now(), "at is when it was written");
    }

    for command in ["resume", "pause"] {
        let run = campaign(&config, &[command, "nov-shipping", "--by", "ops"], &[]).await;
        assert_eq!(
            run.status.code(),
            Some(1),
            "{command} after cancel is refused: {}{}",
            run.stdout,
            run.stderr
        );
        assert!(
            run.stderr.contains("was cancelled by ops at") && run.stderr.contains("nothing written"),
            "{command}: {}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{command}: {}", run.stdout);
    }
    // Another campaign is not held by that cancel; a bad name is refused by
    // the argument parser, as a configuration error.
    let run = campaign(&config, &["pause", "dec-promo"], &[]).await;
    assert!(run.status.success(), "{}{}", run.stdout, run.stderr);
    let run = campaign(&config, &["pause", &"x".repeat(129)], &[]).await;
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("1 to 128 are allowed"), "{}", run.stderr);
    assert_eq!(control_records(&stack.brokers()), 4, "three changes and dec-promo's pause; nothing else");

    written.stop().await;
    stack.stop().await;
}

fn job(id: &str, campaign: Option<&str>) -> (String, Vec<u8>) {
    let mut job = json!({ "id": id, "phone_number_id": PHONE, "to": "+15551234567",
        "message": { "type": "text", "text": { "body": "hi" } } });
    if let Some(campaign) = campaign {
        job["campaign"] = json!(campaign);
    }
    (PHONE.to_owned(), serde_json::to_vec(&job).expect("json"))
}

fn result(id: &str, campaign: &str, status: Status) -> JobResult {
    JobResult {
        id: id.into(),
        phone_number_id: PHONE.into(),
        waba_id: None,
        to: "15551234567".into(),
        status,
        wamid: (status == Status::Sent).then(|| format!("wamid.{id}")),
        error: None,
        attempts: u32::from(status != Status::Cancelled),
        received_at: Utc::now(),
        finished_at: Utc::now(),
        metadata: None,
        campaign: Some(campaign.into()),
    }
}

/// The table's line of `campaign`, split into its cells.
fn row(stdout: &str, campaign: &str) -> Option<Vec<String>> {
    stdout
        .lines()
        .map(|line| line.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|cells| cells.first().map(String::as_str) == Some(campaign))
}

fn cells(values: &[&str]) -> Option<Vec<String>> {
    Some(values.iter().map(|&v| v.to_owned()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_each_campaigns_jobs_and_results() {
    init_logs();
    let stack = start_stack().await;
    let dir = TempDir::new("campaign-cli-status");
    let config = EngineToml::new(&stack, "it-campaign-cli", &[Number::new(PHONE, 80)]).write(dir.path());
    let writer = JobWriter::connect(&stack.brokers(), &Default::default()).expect("a writer");

    // A: six jobs, a1 written twice (as a parked job comes back); B: three;
    // one job of no campaign and one record that is not a job.
    let mut jobs: Vec<_> = ["a1", "a2", "a3", "a4", "a5", "a6", "a1"].map(|id| job(id, Some("A"))).into();
    jobs.extend(["b1", "b2", "b3"].map(|id| job(id, Some("B"))));
    jobs.push(job("none-1", None));
    jobs.push((PHONE.to_owned(), br#"{"id": "broken", "campaign": "A"}"#.to_vec()));
    write_all(&writer, &jobs).await;
    // a1 failed, then (after a crash) sent: the last result counts.
    let results = [
        result("a1", "A", Status::Failed),
        result("a2", "A", Status::Sent),
        result("a3", "A", Status::Failed),
        result("a4", "A", Status::Cancelled),
        result("a5", "A", Status::Expired),
        result("a1", "A", Status::Sent),
        result("b1", "B", Status::Sent),
    ];
    for result in &results {
        writer.send(RESULTS, Some(result.id.as_bytes()), &result.to_json()).await.expect("a result");
    }
    let paused = Control { campaign: "A".into(), state: CampaignState::Paused, at: Utc::now(), by: None };
    writer.send(CONTROL, Some(b"A"), &paused.to_json()).await.expect("a control record");
    drop(writer);

    let run = campaign(&config, &["status"], &[]).await;
    assert!(run.status.success(), "{}{}", run.stdout, run.stderr);
    let header = run.stdout.lines().next().unwrap_or_default();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["campaign", "state", "written", "sent", "failed", "cancelled", "other_finished", "waiting"]
    );
    // A: 6 written; a1, a2 sent; a3 failed; a4 cancelled; a5 expired; a6 waits.
    assert_eq!(
        row(&run.stdout, "A"),
        cells(&["A", "paused", "6", "2", "1", "1", "1", "1"]),
        "{}",
        run.stdout
    );
    assert_eq!(
        row(&run.stdout, "B"),
        cells(&["B", "active", "3", "1", "0", "0", "0", "2"]),
        "{}",
        run.stdout
    );
    assert_eq!(run.stdout.lines().count(), 3, "the header, A and B:\n{}", run.stdout);
    assert!(!run.stdout.contains("partial"), "{}", run.stdout);

    let run = campaign(&config, &["status", "B"], &[]).await;
    assert!(run.status.success(), "{}{}", run.stdout, run.stderr);
    assert_eq!(
        row(&run.stdout, "B"),
        cells(&["B", "active", "3", "1", "0", "0", "0", "2"]),
        "{}",
        run.stdout
    );
    assert_eq!(run.stdout.lines().count(), 2, "only B:\n{}", run.stdout);

    let run = campaign(&config, &["status", "never-heard-of"], &[]).await;
    assert!(run.status.success(), "{}{}", run.stdout, run.stderr);
    let zeros = ["never-heard-of", "active", "0", "0", "0", "0", "0", "0"];
    assert_eq!(row(&run.stdout, "never-heard-of"), cells(&zeros), "{}", run.stdout);

    // With no time to read, what was read is shown and called partial.
    let run = campaign(&config, &["status", "--timeout-s", "0"], &[]).await;
    assert!(run.status.success(), "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("partial: wabulk.jobs was not read to its end within 0 s"), "{}", run.stdout);

    stack.stop().await;
}
