//! The Graph API unreachable for a while (the simulator refuses connections
//! and drops the open ones): the engine keeps its jobs and sends them all
//! once it is back, none failed, and it never stops.

use std::collections::HashSet;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use wabulk_graph_sim::Latency;
use wabulk_model::JobResult;
use wabulk_sender::{backoff_ceiling, DEFAULT_MAX_REQUEST_BACKOFF};

use crate::harness::{
    by_id, distinct_ids, finish_load, free_port, http_get, init_logs, is_sent, limits_report, load, sample,
    sim_config, start_load, status_counts, violations, Collector, EngineProcess, EngineToml, Number, Program,
    Stack, TempDir, MPS_MARGIN, RESULTS,
};

/// How long the simulator refuses connections: several times the first
/// backoffs (0.5, 1, 2 s), so each job caught by it fails to connect again
/// and again, far more often than `MAX_ATTEMPTS` allows.
const OUTAGE: Duration = Duration::from_secs(8);
/// A job may spend this many attempts: a connection that could not be made
/// must spend none, or the jobs caught by the outage would fail.
const MAX_ATTEMPTS: u32 = 2;
/// Retries that spend no attempt (the default, written out because it is
/// what lets a job wait through the outage: at the backoff's pace an 8 s
/// outage costs a job a handful, a sender that spun would use them all).
const MAX_WAITS: u32 = 1_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const LATENCY: Duration = Duration::from_millis(50);
const JOBS: u64 = 1_800;
/// Jobs per second, shared by the two numbers: well under their tiers, so
/// the backlog of the outage drains at the tiers' spare rate.
const RATE: f64 = 60.0;
/// Slack for a loaded two-core host running debug builds.
const LOAD_SLACK: Duration = Duration::from_secs(3);

/// Polls `done` every 20 ms for up to `limit`; when it became true.
async fn when(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return Some(Instant::now());
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 1,800 jobs at 60/s for two 80 msg/s numbers, with `graph.max_attempts =
/// 2`; once results flow the simulator refuses connections for 8 s (and
/// drops the open ones, with the requests in flight). Every job must still
/// end `sent`, once, the engine must run throughout, and sending must resume
/// within seconds of the outage's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_api_outage_loses_no_job() {
    init_logs();
    // The premise: a job caught at the start is still failing to connect
    // after three backoffs.
    assert!(backoff_ceiling(1, DEFAULT_MAX_REQUEST_BACKOFF) * 7 < OUTAGE);
    let numbers = [Number::new("106540352242960", 80), Number::new("106540352242961", 80)];
    let tiers: u32 = numbers.iter().map(|n| n.mps).sum();
    let stack = Stack::start(sim_config(&numbers, Latency::Fixed(LATENCY)), 2).await;
    let sim_addr = stack.sim.local_addr();
    let dir = TempDir::new("graph-outage");
    let mut toml = EngineToml::new(&stack, "it-graph-outage", &numbers);
    toml.limits.push(MPS_MARGIN.into());
    toml.request_timeout_ms = 2_000;
    toml.graph.extend([
        format!("max_attempts = {MAX_ATTEMPTS}"),
        format!("max_waits = {MAX_WAITS}"),
        format!("connect_timeout_ms = {}", CONNECT_TIMEOUT.as_millis()),
    ]);
    let port = free_port();
    toml.http_listen = format!("127.0.0.1:{port}");
    let config = toml.write(dir.path());
    let mut engine = EngineProcess::spawn(Program::Wabulk, &config, dir.path(), 0);
    let results = Collector::start(&stack.brokers(), RESULTS);
    let started = Instant::now();
    let load = start_load(&stack.brokers(), load(&numbers, &[1.0; 2], JOBS, RATE, "graph-outage"));
    let flowing = results.wait_until(Duration::from_secs(60), |records| records.len() >= 200).await;
    assert!(flowing, "only {} results in 60 s before the outage:\n{}", results.len(), engine.log_tail(30));

    let cut_at = started.elapsed();
    let began = Instant::now();
    stack.sim.refuse_connections(OUTAGE).await;
    // From here every connection is closed and none can be made.
    let at_cut = stack.sim.stats();
    let results_at_cut = results.len();
    let refused = TcpStream::connect(sim_addr);
    assert!(refused.is_err(), "a connection to the simulator was accepted during the outage");
    // Just before it ends: the engine is up, and the simulator saw nothing.
    tokio::time::sleep_until((began + OUTAGE - Duration::from_millis(200)).into()).await;
    let near_end = stack.sim.stats();
    let results_during = results.len() - results_at_cut;
    assert!(engine.running(), "the engine stopped during the outage:\n{}", engine.log_tail(30));
    let ended = began + OUTAGE;

    // Sending resumes: jobs written after the outage go out on their first
    // try; at worst they wait for the number's 1 s window, full of the
    // failed tries, then a connection (refused ones fail at once; one under
    // way takes at most the connect timeout) and the simulator's answer.
    let resume_bound = Duration::from_secs(1) + CONNECT_TIMEOUT + LATENCY + LOAD_SLACK;
    let accepted_again =
        when(Duration::from_secs(60), || stack.sim.stats().accepted > near_end.accepted).await;
    let results_again = results
        .wait_until(Duration::from_secs(60), |records| records.len() > results_at_cut + results_during)
        .await;
    let resumed_after = accepted_again.map(|at| at.saturating_duration_since(ended));
    let results_resumed_after = ended.elapsed();

    let report = finish_load(load).await;
    let ids: HashSet<String> = report.job_ids.iter().cloned().collect();
    assert_eq!(ids.len() as u64, JOBS, "job ids are unique");
    // The longest any retry waits is the backoff's cap; then the backlog
    // drains at the tiers' spare rate.
    let all_in = results
        .wait_until(DEFAULT_MAX_REQUEST_BACKOFF + Duration::from_secs(60), |records| {
            distinct_ids(records) >= ids.len()
        })
        .await;
    let finished_after_outage = ended.elapsed();
    let running = engine.running();
    let metrics = tokio::task::spawn_blocking(move || http_get(port, "/metrics")).await.expect("scrape");
    let metrics = metrics.unwrap_or_default();
    let connection_retries = sample(&metrics, "wabulk_retries_total{reason=\"connection\"}");
    engine.terminate();
    let exit = engine.wait_exit(Duration::from_secs(20));
    let all = results.results();
    results.stop().await;
    let stats = stack.stop().await;

    let grouped = by_id(&all);
    let missing: Vec<&String> = ids.iter().filter(|id| !grouped.contains_key(*id)).collect();
    let repeated: Vec<&String> = grouped.iter().filter(|(_, rs)| rs.len() > 1).map(|(id, _)| id).collect();
    let not_sent: Vec<&JobResult> = all.iter().filter(|r| !is_sent(r)).collect();
    let most_attempts = all.iter().map(|r| r.attempts).max().unwrap_or(0);
    let beyond_max_attempts = all.iter().filter(|r| is_sent(r) && r.attempts > MAX_ATTEMPTS).count();
    // Only requests in flight when the connections were dropped can have been
    // accepted without their answer reaching the engine, which then sends
    // them again: what the tiers send in one answer time, plus slack.
    let in_flight_bound =
        (f64::from(tiers) * (LATENCY + Duration::from_millis(250)).as_secs_f64()).ceil() as u64;
    println!(
        "graph outage: cut at {:.1} s for {:.0} s with {} requests, {} accepted, {} results; during it: {} \
         requests at the simulator, {results_during} results; simulator accepting again {:?} after its \
         end (bound {:.1} s), results {:.1} s after; all {} results {:.1} s after the end ({:?}); most \
         attempts {most_attempts}, {beyond_max_attempts} jobs sent after more than max_attempts = \
         {MAX_ATTEMPTS} tries; connection retries {connection_retries:?}; simulator duplicates {} (bound \
         {in_flight_bound}), connections {}, outages {}; {}",
        cut_at.as_secs_f64(),
        OUTAGE.as_secs_f64(),
        at_cut.requests,
        at_cut.accepted,
        results_at_cut,
        near_end.requests - at_cut.requests,
        resumed_after,
        resume_bound.as_secs_f64(),
        results_resumed_after.as_secs_f64(),
        all.len(),
        finished_after_outage.as_secs_f64(),
        status_counts(&all),
        stats.duplicate_count,
        stats.connections,
        stats.outages,
        limits_report(&stats)
    );

    // The outage happened: one, and nothing reached the simulator during it.
    assert_eq!(stats.outages, 1);
    assert_eq!(near_end.requests, at_cut.requests, "requests reached the simulator during the outage");
    // It hit jobs: some were tried more often than their attempts allow.
    assert!(beyond_max_attempts > 0, "no job was retried through the outage (most attempts {most_attempts})");
    assert!(connection_retries.is_some_and(|n| n > 0.0), "the engine saw no connection failure");
    // Nothing lost, nothing failed, nothing twice.
    assert!(
        all_in && missing.is_empty(),
        "{} jobs without a result: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(grouped.keys().all(|id| ids.contains(id)), "a result for a job never written");
    assert!(repeated.is_empty(), "jobs with more than one result: {repeated:?}");
    assert!(not_sent.is_empty(), "{} jobs not sent, e.g. {:?}", not_sent.len(), not_sent.first());
    // The engine never stopped, and sending resumed promptly.
    assert!(running, "the engine stopped after the outage");
    assert!(
        resumed_after.is_some_and(|after| after <= resume_bound),
        "the simulator accepted nothing within {resume_bound:?} of the outage's end ({resumed_after:?})"
    );
    // And its results: one write and the reader's poll later.
    let results_bound = resume_bound + Duration::from_secs(1);
    assert!(
        results_again && results_resumed_after <= results_bound,
        "no result within {results_bound:?} of the outage's end (the first after {results_resumed_after:?})"
    );
    assert!(
        stats.duplicate_count <= in_flight_bound,
        "{} simulator duplicates, more than the {in_flight_bound} requests that can be in flight",
        stats.duplicate_count
    );
    assert_eq!(violations(&stats), 0, "limits broken: {}", limits_report(&stats));
    assert!(matches!(exit, Some(status) if status.success()), "the engine did not stop cleanly: {exit:?}");
}
