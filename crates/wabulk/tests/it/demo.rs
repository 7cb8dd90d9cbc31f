//! The whole system as `wabulk demo` runs it: every job written gets exactly
//! one result or one dead letter, and the simulator sees no limit broken.

use std::time::Instant;

use wabulk::demo::DemoOptions;

use crate::harness::{init_logs, violations};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_jobs_in_n_results_out() {
    init_logs();
    let started = Instant::now();
    let options =
        DemoOptions { jobs: 3000, latency_scale: 0.02, quiet: true, timeout_s: 120, ..Default::default() };
    let summary = wabulk::demo::run(options).await.expect("the demo runs");
    println!(
        "demo: {} written ({} malformed), {} results {:?}, {} dead letters, {} duplicates, simulator {} \
         requests, violations {:?}, in {:.1} s",
        summary.written,
        summary.malformed_written,
        summary.results,
        summary.by_status,
        summary.dead_letters,
        summary.duplicate_results,
        summary.sim.requests,
        summary.sim.violations,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(summary.written, 3000, "the load generator wrote every job");
    assert!(summary.malformed_written > 0, "the load includes malformed records");
    assert_eq!(summary.results, summary.written - summary.malformed_written, "one result per valid job");
    assert_eq!(summary.dead_letters, summary.malformed_written, "one dead letter per malformed record");
    assert_eq!(summary.duplicate_results, 0, "no job has two results");
    assert_eq!(
        summary.sim.duplicate_count, 0,
        "no job was accepted twice: {:?}",
        summary.sim.duplicate_job_ids
    );
    assert_eq!(violations(&summary.sim), 0, "limits broken: {:?}", summary.sim.violations);
    let sent = summary.by_status.get("sent").copied().unwrap_or_default();
    assert_eq!(sent, summary.results, "with no faults injected every job is sent: {:?}", summary.by_status);
    assert_eq!(summary.sim.accepted, sent, "the simulator accepted exactly the sent jobs");
    assert!(summary.passed(), "the demo's own verdict");
}
