//! Faults of the Graph API: transient errors, hung requests, reset streams
//! and GOAWAYs end every job with exactly one final result, retries bounded
//! and counted by reason; a refused access token halts its WABA only, keeps
//! its jobs without a result, logs one error, and a restart with the right
//! token sends them.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use wabulk_graph_sim::{Faults, Latency, SimNumber, SimWaba};
use wabulk_kafka::JobWriter;
use wabulk_model::{JobResult, Status};

use crate::harness::{
    by_id, free_port, http_get, init_logs, is_sent, limits_report, sample, sim_config, status_counts,
    violations, write_all, Collector, EngineProcess, EngineToml, InProcessEngine, Number, OtherWaba, Program,
    Stack, TempDir, RESULTS, TOKEN, TOKEN_ENV, WABA,
};

/// A text job `id` from `phone` to `to`.
fn job(id: &str, phone: &str, to: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id,
        "phone_number_id": phone,
        "to": to,
        "message": { "type": "text", "text": { "body": "faults" } },
    }))
    .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_faults_end_with_exactly_one_final_result_per_job() {
    const JOBS_PER_NUMBER: usize = 500;
    const MAX_ATTEMPTS: u32 = 3;
    init_logs();
    let numbers = [
        Number::new("106540352242922", 80),
        Number::new("106540352242923", 80),
        Number::new("106540352242924", 80),
    ];
    let mut sim = sim_config(&numbers, Latency::Meta { scale: 0.02 });
    sim.faults = Faults { transient: 0.2, hang: 0.01, reset: 0.01, goaway: 0.01, ..Faults::default() };
    let stack = Stack::start(sim, 3).await;
    let mut toml = EngineToml::new(&stack, "it-faults", &numbers);
    // Hangs time out after 1 s; 3 attempts make ~1 % of the jobs (0.22^3)
    // run out of retries, so both ends of the bound are exercised.
    toml.request_timeout_ms = 1_000;
    toml.graph.push(format!("max_attempts = {MAX_ATTEMPTS}"));
    // As in crash.rs: jitter on a loaded two-core debug build.
    toml.limits.push("mps_margin_percent = 5.0".into());
    let engine = InProcessEngine::start(toml.setup());
    let results = Collector::start(&stack.brokers(), RESULTS);

    let started = Instant::now();
    let writer = JobWriter::connect(&stack.brokers(), &Default::default()).expect("job writer");
    let mut jobs = Vec::new();
    for n in 0..JOBS_PER_NUMBER {
        for (i, number) in numbers.iter().enumerate() {
            let id = format!("fault-{i}-{n:04}");
            jobs.push((number.id.clone(), job(&id, &number.id, &format!("+1555{i}{n:06}"))));
        }
    }
    write_all(&writer, &jobs).await;
    let total = jobs.len();
    let all_in = results
        .wait_until(Duration::from_secs(90), |records| crate::harness::distinct_ids(records) >= total)
        .await;
    let elapsed = started.elapsed();
    // Anything written twice would show up by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics = std::sync::Arc::clone(&engine.metrics);
    engine.stop().await;
    let all = results.results();
    results.stop().await;
    let stats = stack.stop().await;

    let retries: BTreeMap<&str, u64> = wabulk_telemetry::RETRY_REASONS
        .iter()
        .map(|reason| (reason.label(), metrics.retries.with_label_values(&[reason.label()]).get()))
        .filter(|&(_, n)| n > 0)
        .collect();
    let unknown_outcome = metrics.unknown_outcome_retries.get();
    let grouped = by_id(&all);
    let attempts: u64 = all.iter().map(|r| u64::from(r.attempts)).sum();
    let mut histogram = BTreeMap::new();
    for r in &all {
        *histogram.entry(r.attempts).or_insert(0usize) += 1;
    }
    let slowest = all.iter().map(|r| (r.finished_at - r.received_at).num_milliseconds()).max().unwrap_or(0);
    println!(
        "faults: {total} jobs, {} results ({:?}) in {:.1} s, slowest {slowest} ms from read to result; \
         attempts {histogram:?} (sum {attempts}); retries by reason {retries:?}, unknown-outcome \
         {unknown_outcome}; simulator: {} requests, {} accepted, errors {:?}, hangs {}, resets {}, goaways \
         {}, connections {}, duplicates {}, {}",
        all.len(),
        status_counts(&all),
        elapsed.as_secs_f64(),
        stats.requests,
        stats.accepted,
        stats.errors_by_code,
        stats.hangs,
        stats.resets,
        stats.goaways,
        stats.connections,
        stats.duplicate_count,
        limits_report(&stats)
    );

    assert!(all_in, "only {} of {total} jobs got a result within 90 s", grouped.len());
    let ids: HashSet<String> = jobs
        .iter()
        .map(|(_, payload)| {
            serde_json::from_slice::<serde_json::Value>(payload).expect("json")["id"]
                .as_str()
                .expect("id")
                .to_owned()
        })
        .collect();
    assert!(grouped.keys().all(|id| ids.contains(id)), "a result for a job that was never written");
    let twice: Vec<&String> = grouped.iter().filter(|(_, rs)| rs.len() > 1).map(|(id, _)| id).collect();
    assert!(twice.is_empty(), "{} jobs have more than one result, e.g. {:?}", twice.len(), &twice[..1]);
    assert_eq!(all.len(), total, "exactly one result per job");

    for r in &all {
        assert!(r.attempts >= 1 && r.attempts <= MAX_ATTEMPTS, "{}: {} attempts", r.id, r.attempts);
        match r.status {
            Status::Sent => {
                assert!(r.wamid.is_some() && r.error.is_none(), "{}: sent without a wamid: {r:?}", r.id)
            }
            Status::Failed => {
                // Only transient faults are injected: a job fails only when
                // its retries ran out.
                let error = r.error.as_ref().unwrap_or_else(|| panic!("{}: failed without error", r.id));
                assert_eq!(r.attempts, MAX_ATTEMPTS, "{}: failed before its retries ran out: {r:?}", r.id);
                assert!(error.retryable, "{}: {error:?}", r.id);
                assert!(error.message.contains("retries exhausted"), "{}: {error:?}", r.id);
            }
            other => panic!("{}: status {other:?} with only transient faults: {r:?}", r.id),
        }
    }
    assert!(all.iter().any(is_sent), "nothing was sent");

    // `attempts` counts the requests the engine made, and each reached the
    // simulator: a stream caught above a GOAWAY's last stream id was never
    // processed, so the sender re-sends it at once on another connection
    // instead of spending an attempt; only resets (after the request went
    // out) end as `broken` retries, and no retry is a `connection` one.
    let broken = retries.get("broken").copied().unwrap_or(0);
    assert_eq!(stats.requests, attempts, "simulator requests vs the engine's attempts");
    assert_eq!(broken, stats.resets, "broken-connection retries vs resets injected");
    assert!(!retries.contains_key("connection"), "no request failed to leave: {retries:?}");
    let sent = all.iter().filter(|r| is_sent(r)).count() as u64;
    assert_eq!(stats.accepted, sent, "the simulator accepted exactly the sent jobs");
    assert_eq!(stats.duplicate_count, 0, "accepted twice: {:?}", stats.duplicate_job_ids);
    let expected_retries: u64 =
        all.iter().map(|r: &JobResult| u64::from(if is_sent(r) { r.attempts - 1 } else { r.attempts })).sum();
    assert_eq!(retries.values().sum::<u64>(), expected_retries, "retries counted once per retried answer");
    assert!(stats.hangs > 0 && stats.resets > 0 && stats.goaways > 0, "every fault was injected");
    for reason in ["transient", "server_error", "timeout", "broken"] {
        assert!(retries.contains_key(reason), "no retry counted as {reason}: {retries:?}");
    }
    assert!(unknown_outcome > 0, "hangs time out: unknown-outcome retries counted");
    assert_eq!(
        unknown_outcome,
        retries["timeout"] + broken,
        "every timeout and broken stream is an unknown outcome"
    );
    let timeouts = retries["timeout"];
    assert!(timeouts <= stats.hangs, "a timeout without a hang: {timeouts} > {}", stats.hangs);
    assert_eq!(violations(&stats), 0, "limits broken under faults: {}", limits_report(&stats));
}

const WABA_B: &str = "102290129340399";
const PHONE_A: &str = "106540352242922";
const PHONE_B: &str = "106540352242950";
const TOKEN_B_ENV: &str = "WABULK_IT_WABA_B_TOKEN";
const TOKEN_B: &str = "it-token-waba-b";

/// Lines of the engine's log about WABA `waba`'s access token.
fn token_lines(log: &Path, waba: &str) -> Vec<String> {
    let text = std::fs::read_to_string(log).expect("read the engine log");
    text.lines().filter(|l| l.contains("access token") && l.contains(waba)).map(str::to_owned).collect()
}

/// Polls the engine's `/metrics` for up to 20 s until `series` is there.
async fn scrape(port: u16, series: &str) -> (String, Option<f64>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = tokio::task::spawn_blocking(move || http_get(port, "/metrics"))
            .await
            .expect("scrape task")
            .unwrap_or_default();
        let value = sample(&body, series);
        if value.is_some() || Instant::now() > deadline {
            return (body, value);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The simulator with WABA A (one 80 msg/s number, the test token) and WABA
/// B (one 80 msg/s number, token [`TOKEN_B`]), on a cluster of two jobs
/// partitions.
async fn two_wabas() -> (Stack, [Number; 1], [Number; 1]) {
    let numbers_a = [Number::new(PHONE_A, 80)];
    let numbers_b = [Number::new(PHONE_B, 80)];
    let mut sim = sim_config(&numbers_a, Latency::Meta { scale: 0.02 });
    sim.numbers.push(SimNumber { id: PHONE_B.into(), mps: 80, waba_id: WABA_B.into() });
    sim.wabas.push(SimWaba { id: WABA_B.into(), token: TOKEN_B.into(), hourly_cap: 1_800_000 });
    (Stack::start(sim, 2).await, numbers_a, numbers_b)
}

fn halted_series(waba: &str) -> String {
    format!("wabulk_waba_halted{{waba_id=\"{waba}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_error_halts_the_waba_and_keeps_its_jobs() {
    const A_JOBS: usize = 200;
    const B_JOBS: usize = 100;
    init_logs();
    let (stack, numbers_a, numbers_b) = two_wabas().await;
    let dir = TempDir::new("token");
    let port = free_port();
    let mut toml = EngineToml::new(&stack, "it-token", &numbers_a);
    toml.other_wabas.push(OtherWaba {
        id: WABA_B.into(),
        token_env: TOKEN_B_ENV.into(),
        numbers: numbers_b.to_vec(),
        hourly_call_cap: None,
    });
    toml.http_listen = format!("127.0.0.1:{port}");
    // B's jobs are parked until the next check of its token: soon, so that
    // after the restart they come back within the test's wait.
    toml.graph.push("token_check_interval_ms = 5000".into());
    // A short session, so that the restarted engine gets the partitions
    // back in seconds (see harness::SHORT_SESSION_TIMEOUT_MS).
    toml.kafka_properties.extend([
        ("session.timeout.ms".to_owned(), "6000".to_owned()),
        ("heartbeat.interval.ms".to_owned(), "500".to_owned()),
    ]);
    toml.limits.push("mps_margin_percent = 5.0".into());
    let config = toml.write(dir.path());
    let env = |token_b: &str| {
        vec![(TOKEN_ENV.to_owned(), TOKEN.to_owned()), (TOKEN_B_ENV.to_owned(), token_b.to_owned())]
    };
    let results = Collector::start(&stack.brokers(), RESULTS);
    let mut engine = EngineProcess::spawn_with(
        Program::Wabulk,
        &config,
        dir.path(),
        0,
        &env("not-the-token-of-waba-b"),
        "info,librdkafka=warn",
    );

    // Interleaved, so that B's kept jobs sit between A's in both partitions.
    let writer = JobWriter::connect(&stack.brokers(), &Default::default()).expect("job writer");
    let mut jobs = Vec::new();
    for n in 0..A_JOBS {
        jobs.push((PHONE_A.to_owned(), job(&format!("token-a-{n:03}"), PHONE_A, &format!("+1555400{n:04}"))));
        if n < B_JOBS {
            jobs.push((
                PHONE_B.to_owned(),
                job(&format!("token-b-{n:03}"), PHONE_B, &format!("+1555500{n:04}")),
            ));
        }
    }
    let started = Instant::now();
    write_all(&writer, &jobs).await;
    let a_in = results
        .wait_until(Duration::from_secs(60), |records| {
            records.iter().filter(|r| r.key.as_deref().is_some_and(|k| k.starts_with(b"token-a-"))).count()
                >= A_JOBS
        })
        .await;
    assert!(a_in, "WABA A's jobs were not all answered within 60 s:\n{}", engine.log_tail(30));
    let a_took = started.elapsed();
    // B's jobs had every chance: A's were all sent meanwhile. A little
    // longer, in case a result for B were on its way.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let first_run = results.results();
    let b_results: Vec<&JobResult> = first_run.iter().filter(|r| r.id.starts_with("token-b-")).collect();
    let (body, halted_b) = scrape(port, &halted_series(WABA_B)).await;
    let halted_a = sample(&body, &halted_series(WABA));
    let sim_mid = stack.sim.stats();
    engine.terminate();
    let exit = engine.wait_exit(Duration::from_secs(20));
    let lines = token_lines(&engine.log, WABA_B);
    let lines_a = token_lines(&engine.log, WABA);
    println!(
        "token: A's {A_JOBS} jobs answered in {:.1} s; B: {} results, halted gauge B={halted_b:?} A={halted_a:?}, \
         simulator errors {:?}; {} log line(s) about B's token: {lines:?}",
        a_took.as_secs_f64(),
        b_results.len(),
        sim_mid.errors_by_code,
        lines.len()
    );
    assert!(b_results.is_empty(), "WABA B's jobs must be kept, not answered: {:?}", &b_results[..1]);
    let a_first: Vec<&JobResult> = first_run.iter().filter(|r| r.id.starts_with("token-a-")).collect();
    assert_eq!(a_first.len(), A_JOBS, "one result per A job");
    assert!(a_first.iter().all(|r| is_sent(r)), "A's jobs are sent: {:?}", status_counts(&first_run));
    assert_eq!(halted_b, Some(1.0), "wabulk_waba_halted for B:\n{body}");
    assert_eq!(halted_a, Some(0.0), "wabulk_waba_halted for A:\n{body}");
    assert!(sim_mid.errors_by_code.get("190").copied().unwrap_or(0) >= 1, "the simulator refused B's token");
    assert_eq!(lines.len(), 1, "exactly one error line about B's token, got {lines:#?}");
    assert!(lines[0].contains("ERROR"), "the token line is an error: {}", lines[0]);
    assert!(lines_a.is_empty(), "nothing about A's token: {lines_a:#?}");
    assert!(matches!(exit, Some(s) if s.success()), "SIGTERM: {exit:?}\n{}", engine.log_tail(30));

    // Resuming is by restart, with the token fixed.
    let restarted = Instant::now();
    let mut engine = EngineProcess::spawn_with(
        Program::Wabulk,
        &config,
        dir.path(),
        1,
        &env(TOKEN_B),
        "info,librdkafka=warn",
    );
    let b_in = results
        .wait_until(Duration::from_secs(90), |records| {
            records.iter().filter(|r| r.key.as_deref().is_some_and(|k| k.starts_with(b"token-b-"))).count()
                >= B_JOBS
        })
        .await;
    let b_took = restarted.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (body, halted_b_after) = scrape(port, &halted_series(WABA_B)).await;
    engine.terminate();
    let exit = engine.wait_exit(Duration::from_secs(20));
    let all = results.results();
    results.stop().await;
    let stats = stack.stop().await;
    println!(
        "token: after the restart B's {B_JOBS} jobs answered in {:.1} s; {} results in all ({:?}); \
         simulator duplicates {}, {}",
        b_took.as_secs_f64(),
        all.len(),
        status_counts(&all),
        stats.duplicate_count,
        limits_report(&stats)
    );
    assert!(b_in, "B's jobs were not answered after the restart:\n{}", engine.log_tail(30));
    let grouped = by_id(&all);
    assert_eq!(grouped.len(), A_JOBS + B_JOBS, "a result for every job");
    let twice: Vec<&String> = grouped.iter().filter(|(_, rs)| rs.len() > 1).map(|(id, _)| id).collect();
    assert!(
        twice.is_empty(),
        "{} jobs answered twice across the restart, e.g. {:?}",
        twice.len(),
        &twice[..1]
    );
    assert!(all.iter().all(is_sent), "everything is sent in the end: {:?}", status_counts(&all));
    assert_eq!(stats.duplicate_count, 0, "accepted twice: {:?}", stats.duplicate_job_ids);
    assert_eq!(halted_b_after, Some(0.0), "B is not halted after the restart:\n{body}");
    assert!(token_lines(&engine.log, WABA_B).is_empty(), "no token error after the fix");
    assert_eq!(violations(&stats), 0, "limits broken: {}", limits_report(&stats));
    assert!(matches!(exit, Some(s) if s.success()), "SIGTERM: {exit:?}\n{}", engine.log_tail(30));
}

/// A WABA halted for a refused token resumes without a restart once Meta
/// accepts the token again: the engine checks it every
/// `token_check_interval_ms`, and the kept jobs then go out, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_waba_resumes_once_its_token_is_accepted_again() {
    const A_JOBS: usize = 100;
    const B_JOBS: usize = 100;
    const CHECK_EVERY_MS: u64 = 500;
    const ENGINE_TOKEN_B: &str = "the-token-the-engine-has";
    init_logs();
    // Meta does not accept the engine's token for B, yet.
    let (stack, numbers_a, numbers_b) = two_wabas().await;
    let mut toml = EngineToml::new(&stack, "it-token-resume", &numbers_a);
    toml.other_wabas.push(OtherWaba {
        id: WABA_B.into(),
        token_env: TOKEN_B_ENV.into(),
        numbers: numbers_b.to_vec(),
        hourly_call_cap: None,
    });
    toml.graph.push(format!("token_check_interval_ms = {CHECK_EVERY_MS}"));
    toml.limits.push("mps_margin_percent = 5.0".into());
    let env = |var: &str| match var {
        TOKEN_ENV => Some(TOKEN.to_owned()),
        TOKEN_B_ENV => Some(ENGINE_TOKEN_B.to_owned()),
        _ => None,
    };
    let engine = InProcessEngine::start(toml.setup_with_env(&env));
    let results = Collector::start(&stack.brokers(), RESULTS);
    let writer = JobWriter::connect(&stack.brokers(), &Default::default()).expect("job writer");
    let mut jobs = Vec::new();
    for n in 0..A_JOBS.max(B_JOBS) {
        if n < A_JOBS {
            jobs.push((
                PHONE_A.to_owned(),
                job(&format!("resume-a-{n:03}"), PHONE_A, &format!("+1555600{n:04}")),
            ));
        }
        if n < B_JOBS {
            jobs.push((
                PHONE_B.to_owned(),
                job(&format!("resume-b-{n:03}"), PHONE_B, &format!("+1555700{n:04}")),
            ));
        }
    }
    write_all(&writer, &jobs).await;
    let b_count = |records: &[wabulk_kafka::Record]| {
        records.iter().filter(|r| r.key.as_deref().is_some_and(|k| k.starts_with(b"resume-b-"))).count()
    };
    let a_in = results
        .wait_until(Duration::from_secs(60), |records| {
            records.iter().filter(|r| r.key.as_deref().is_some_and(|k| k.starts_with(b"resume-a-"))).count()
                >= A_JOBS
        })
        .await;
    assert!(a_in, "WABA A's jobs were not all answered within 60 s");
    // Several checks' worth of time: the token is refused, so B stays halted.
    tokio::time::sleep(Duration::from_millis(4 * CHECK_EVERY_MS)).await;
    let refused = stack.sim.stats();
    let text = engine.metrics.render();
    let parked = sample(&text, "wabulk_jobs_parked_total{reason=\"halted\"}").unwrap_or(0.0);
    let in_memory = sample(&text, "wabulk_jobs_in_memory").unwrap_or(f64::NAN);
    assert_eq!(b_count(&results.records()), 0, "B's jobs are kept while its token is refused");
    assert_eq!(sample(&text, &halted_series(WABA_B)), Some(1.0));
    // Kept in Kafka, not in memory: each parked at least once.
    assert!(parked >= B_JOBS as f64, "{parked} parkings of B's {B_JOBS} jobs");
    assert!(in_memory < B_JOBS as f64, "{in_memory} jobs in memory while B is halted");
    assert!(refused.token_checks_refused >= 2, "the token is checked while halted: {refused:?}");

    // Meta accepts the engine's token again.
    stack.sim.set_token(WABA_B, ENGINE_TOKEN_B).expect("WABA B is simulated");
    let fixed = Instant::now();
    // One check interval, then 100 jobs at 80/s, with room for a loaded host.
    let b_in = results.wait_until(Duration::from_secs(20), |records| b_count(records) >= B_JOBS).await;
    let took = fixed.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let halted_after = sample(&engine.metrics.render(), &halted_series(WABA_B));
    engine.stop().await;
    let all = results.results();
    results.stop().await;
    let stats = stack.stop().await;
    println!(
        "token resume: B's {B_JOBS} jobs answered {:.1} s after the token was accepted again; \
         {} token checks ({} refused); {}",
        took.as_secs_f64(),
        stats.token_checks,
        stats.token_checks_refused,
        limits_report(&stats)
    );
    assert!(b_in, "B's jobs were not sent after the token was accepted again");
    assert_eq!(halted_after, Some(0.0), "B is no longer halted");
    let grouped = by_id(&all);
    assert_eq!(grouped.len(), A_JOBS + B_JOBS, "a result for every job");
    assert!(grouped.values().all(|rs| rs.len() == 1), "one result per job");
    assert!(all.iter().all(is_sent), "everything is sent: {:?}", status_counts(&all));
    assert_eq!(stats.duplicate_count, 0, "accepted twice: {:?}", stats.duplicate_job_ids);
    assert_eq!(violations(&stats), 0, "limits broken: {}", limits_report(&stats));
}
