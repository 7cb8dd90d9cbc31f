//! The whole system as `wabulk demo` and `wabulk loadgen run` run it: every
//! job written gets exactly one result or one dead letter, the simulator sees
//! no limit broken, and a capacity run's report agrees with itself.

use std::process::Command;
use std::time::Instant;

use wabulk_lab::demo::DemoOptions;
use wabulk_loadgen::CapacityReport;

use crate::harness::{init_logs, TempDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_jobs_in_n_results_out() {
    init_logs();
    let started = Instant::now();
    let options = DemoOptions {
        jobs: 3000,
        latency_scale: 0.02,
        quiet: true,
        timeout_s: 120,
        engine_binary: Some(env!("CARGO_BIN_EXE_wabulk").into()),
        ..Default::default()
    };
    let report = wabulk_lab::demo::run(options).await.expect("the demo runs");
    println!("demo: {:?} in {:.1} s", report.checks, started.elapsed().as_secs_f64());
    assert_eq!(report.written, 3000, "the load generator wrote every job");
    assert!(report.malformed > 0, "the load includes malformed records");
    assert_eq!(report.results, report.written - report.malformed, "one result per valid job");
    assert_eq!(report.dead_letters, report.malformed, "one dead letter per malformed record");
    assert_eq!(report.duplicate_results, 0, "no job has two results");
    assert_eq!(report.sim.duplicate_sends, 0, "no job was accepted twice");
    let sim = &report.sim;
    assert_eq!(sim.violations_phone + sim.violations_pair + sim.violations_waba, 0, "limits broken: {sim:?}");
    let sent = report.by_status.get("sent").copied().unwrap_or_default();
    assert_eq!(sent, report.results, "with no faults injected every job is sent: {:?}", report.by_status);
    assert_eq!(report.sim.accepted, sent, "the simulator accepted exactly the sent jobs");
    // The delivery funnel, from the statuses the engine's receiver wrote:
    // each message sent once `sent` and once delivered or failed (the
    // simulator's 131026), about half of those delivered read.
    let funnel = report.funnel.as_ref().expect("the demo runs the webhook receiver");
    assert_eq!(funnel.sent_jobs, sent);
    assert_eq!(funnel.count("sent"), sent, "one `sent` status per message: {funnel:?}");
    assert_eq!(funnel.count("delivered") + funnel.count("failed"), sent, "each settled once: {funnel:?}");
    assert!(funnel.count("read") > 0 && funnel.count("read") <= funnel.count("delivered"), "{funnel:?}");
    assert!(funnel.failed_by_code.keys().all(|code| code == "131026"), "{funnel:?}");
    assert_eq!(funnel.unmatched, 0, "no status of a job this run did not send");
    assert!(
        report.checks.iter().any(|c| c.name == "statuses for every sent job" && c.passed),
        "{:?}",
        report.checks
    );
    assert!(report.passed(), "the demo's own verdict: {:?}", report.checks);
}

/// `wabulk loadgen run` end to end through the binary: exit status, the
/// report files, and figures that must agree across the report's parts.
#[test]
fn capacity_run_writes_a_consistent_report() {
    init_logs();
    let dir = TempDir::new("capacity-run");
    let scenario = dir.path().join("tiny.toml");
    std::fs::write(
        &scenario,
        r#"
name = "tiny"
description = "Two numbers, a few hundred jobs, some malformed."
timeout_s = 120
[simulator]
latency = { meta_scale = 0.02 }
[engine.graph]
request_timeout_ms = 3000
[load]
jobs = 600
rate = 300.0
malformed_fraction = 0.02
recipients = { kind = "uniform", count = 100000 }
[[load.numbers]]
id = "106540352242950"
waba_id = "102290129340430"
mps = 80
[[load.numbers]]
id = "106540352242951"
waba_id = "102290129340431"
mps = 20
"#,
    )
    .expect("write the scenario");
    let out = dir.path().join("report");
    let output = Command::new(env!("CARGO_BIN_EXE_wabulk"))
        .args(["loadgen", "run", "--quiet", "--out"])
        .arg(&out)
        .arg(&scenario)
        .output()
        .expect("run wabulk loadgen run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "loadgen run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("PASSED"), "{stdout}");

    for file in ["report.json", "report.md", "throughput.svg", "latency.svg", "errors.svg"] {
        let path = out.join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!text.is_empty(), "{file} is empty");
    }
    let report: CapacityReport =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).expect("read report.json"))
            .expect("report.json is a CapacityReport");
    assert_eq!(report.scenario, "tiny");
    assert!(report.command.contains("loadgen run"), "the command is recorded: {}", report.command);
    assert_eq!(report.written, 600);
    assert_eq!(report.malformed, 12, "2 % of 600 records are malformed");
    assert_eq!(report.results, 588);
    assert_eq!(report.dead_letters, 12);
    assert!(report.passed(), "{:?}", report.checks);
    // The parts agree: the load's per-number counts, the results, the
    // simulator's acceptances and the timeline's samples.
    let written: u64 = report.numbers.iter().map(|n| n.written).sum();
    let sent: u64 = report.numbers.iter().map(|n| n.sent).sum();
    let sampled: u64 = report.timeline.iter().flat_map(|s| s.sent_by_number.values()).sum();
    assert_eq!(written, 588);
    assert_eq!(sent, report.by_status.get("sent").copied().unwrap_or_default());
    assert_eq!(report.sim.accepted, sent, "the simulator accepted each sent job once");
    // The last sample is taken after the last result arrived, and a result
    // follows its acceptance: the timeline holds every acceptance.
    assert_eq!(sampled, sent, "the timeline's samples add up to the acceptances");
    assert_eq!(report.job_latency.count, 588, "one job latency per result");
    assert!(report.send_latency.count >= sent, "one request latency per request at least");
    for number in &report.numbers {
        assert!(number.max_in_any_1s_window <= u64::from(number.tier), "{number:?}");
    }
    let markdown = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(markdown.contains("106540352242951"), "the per-number table lists each number");
}
