//! Jobs that must wait long wait in Kafka, not in memory: a campaign
//! scheduled for later, a halted WABA or a slow number's backlog holds back
//! neither the instance nor other numbers, parked jobs come back on time
//! (a backlog's in its pairs' order), and `expires_at` holds while parked.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;
use wabulk_graph_sim::{Latency, SimNumber, SimWaba};
use wabulk_kafka::JobWriter;
use wabulk_model::{JobResult, Status};

use crate::harness::{
    init_logs, sample, sim_config, status_counts, violations, Collector, EngineToml, InProcessEngine, Number,
    OtherWaba, Stack, JOBS, RESULTS, TOKEN, TOKEN_ENV,
};

const LATER: &str = "106540352242922";
const URGENT: &str = "106540352242930";

fn job(
    id: &str,
    phone: &str,
    to: u64,
    not_before: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
) -> Vec<u8> {
    let mut job = json!({
        "id": id,
        "phone_number_id": phone,
        "to": format!("+1555{to:07}"),
        "message": { "type": "text", "text": { "body": "hello" } },
    });
    if let Some(at) = not_before {
        job["not_before"] = json!(at.to_rfc3339());
    }
    if let Some(at) = expires_at {
        job["expires_at"] = json!(at.to_rfc3339());
    }
    serde_json::to_vec(&job).expect("json")
}

async fn write_all(writer: &JobWriter, jobs: &[(&str, Vec<u8>)]) {
    for chunk in jobs.chunks(1_000) {
        let sends = chunk.iter().map(|(key, payload)| writer.send(JOBS, Some(key.as_bytes()), payload));
        for written in futures::future::join_all(sends).await {
            written.expect("job written");
        }
    }
}

/// Writes one job to send now and waits for its result: the engine is then
/// reading, so what the test writes next is timed from its arrival.
async fn engine_reading(writer: &JobWriter, results: &Collector, phone: &str) {
    write_all(writer, &[(phone, job("warm-up", phone, 9_999_999, None, None))]).await;
    let ready = results.wait_until(Duration::from_secs(60), |records| !records.is_empty()).await;
    assert!(ready, "the engine did not answer a first job within 60 s");
}

fn of<'a>(results: &'a [JobResult], prefix: &str) -> Vec<&'a JobResult> {
    results.iter().filter(|r| r.id.starts_with(prefix)).collect()
}

/// 60,000 jobs for later (an hour ahead, 8 numbers), then 500 for another
/// number to send now: the 500 go out at once, because the later ones are
/// parked in Kafka (their offsets released), not held in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_for_later_holds_back_nothing() {
    const LATER_JOBS: usize = 60_000;
    const URGENT_JOBS: usize = 500;
    init_logs();
    let later: Vec<Number> =
        (0..8).map(|i| Number::new(&format!("10654035224{:04}", 2000 + i), 80)).collect();
    let mut numbers = later.clone();
    numbers.push(Number::new(URGENT, 1000));
    let stack = Stack::start(sim_config(&numbers, Latency::Fixed(Duration::from_millis(20))), 8).await;
    let engine = InProcessEngine::start(EngineToml::new(&stack, "it-parking", &numbers).setup());
    let results = Collector::start(&stack.brokers(), RESULTS);
    let writer = JobWriter::connect(&stack.brokers(), &Default::default()).expect("job writer");
    engine_reading(&writer, &results, URGENT).await;

    let in_an_hour = Utc::now() + chrono::Duration::hours(1);
    let jobs: Vec<(&str, Vec<u8>)> = (0..LATER_JOBS)
        .map(|n| {
            let phone = later[n % later.len()].id.as_str();
            (phone, job(&format!("later-{n:05}"), phone, n as u64, Some(in_an_hour), None))
        })
        .collect();
    let started = Instant::now();
    write_all(&writer, &jobs).await;
    // Held in memory, they would fill the budget and stop the reading; parked,
    // they cost nothing (their offsets are released once Kafka has the copy).
    let parked_all = crate::harness::wait_for(Duration::from_secs(120), || {
        sample(&engine.metrics.render(), "wabulk_jobs_parked_total{reason=\"not_before\"}")
            .is_some_and(|n| n >= LATER_JOBS as f64)
    })
    .await;
    let parking_took = started.elapsed();
    let urgent: Vec<(&str, Vec<u8>)> = (0..URGENT_JOBS)
        .map(|n| (URGENT, job(&format!("urgent-{n:03}"), URGENT, 5_000_000 + n as u64, None, None)))
        .collect();
    let written = Instant::now();
    write_all(&writer, &urgent).await;
    // 500 at 1000 msg/s take half a second; the rest is room for a loaded host.
    let all_urgent = results
        .wait_until(Duration::from_secs(10), |records| {
            records.iter().filter(|r| r.key.as_deref().is_some_and(|k| k.starts_with(b"urgent-"))).count()
                >= URGENT_JOBS
        })
        .await;
    let urgent_took = written.elapsed();
    let text = engine.metrics.render();
    let in_memory = sample(&text, "wabulk_jobs_in_memory").unwrap_or(f64::NAN);
    let parked = sample(&text, "wabulk_jobs_parked_total{reason=\"not_before\"}").unwrap_or(0.0);
    engine.stop().await;
    let all = results.results();
    results.stop().await;
    let stats = stack.stop().await;
    println!(
        "parking: {LATER_JOBS} jobs for later written and parked in {:.1} s; {URGENT_JOBS} urgent jobs \
         answered {:.1} s after being written behind them; {parked} parked, {in_memory} in memory at the \
         end; results {:?}",
        parking_took.as_secs_f64(),
        urgent_took.as_secs_f64(),
        status_counts(&all)
    );
    assert!(parked_all, "{parked} of {LATER_JOBS} later jobs parked within 120 s");
    assert!(all_urgent, "only {} of {URGENT_JOBS} urgent jobs sent within 10 s", of(&all, "urgent-").len());
    assert!(of(&all, "urgent-").iter().all(|r| r.status == Status::Sent));
    assert!(of(&all, "later-").is_empty(), "a job for later was answered now");
    assert!(in_memory < 1_000.0, "{in_memory} jobs in memory after parking");
    assert_eq!(violations(&stats), 0);
}

/// Parked jobs come back when due: never before `not_before`, within a
/// second or two after it; one whose `expires_at` comes first is `expired`
/// at that time, not when its `not_before` comes; a `not_before` beyond
/// `max_wait_days` is rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_jobs_come_back_on_time_and_expire_on_time() {
    init_logs();
    let numbers = [Number::new(LATER, 80)];
    let stack = Stack::start(sim_config(&numbers, Latency::Fixed(Duration::from_millis(20))), 2).await;
    let mut toml = EngineToml::new(&stack, "it-parking-due", &numbers);
    // The least allowed: jobs more than 2 s ahead are parked.
    toml.parking.push("park_after_ms = 2000".into());
    let engine = InProcessEngine::start(toml.setup());
    let results = Collector::start(&stack.brokers(), RESULTS);
    let writer = JobWriter::connect(&stack.brokers(), &Default::default()).expect("job writer");
    engine_reading(&writer, &results, LATER).await;
    let now = Utc::now();
    let due: Vec<DateTime<Utc>> =
        (0..20).map(|n| now + chrono::Duration::milliseconds(5_000 + 250 * n)).collect();
    let expires_at = now + chrono::Duration::seconds(6);
    let mut jobs: Vec<(&str, Vec<u8>)> = due
        .iter()
        .enumerate()
        .map(|(n, &at)| (LATER, job(&format!("due-{n:02}"), LATER, n as u64, Some(at), None)))
        .collect();
    jobs.push((
        LATER,
        job("expires", LATER, 100, Some(now + chrono::Duration::seconds(20)), Some(expires_at)),
    ));
    jobs.push((LATER, job("too-far", LATER, 101, Some(now + chrono::Duration::days(40)), None)));
    write_all(&writer, &jobs).await;
    let all_in = results.wait_until(Duration::from_secs(40), |records| records.len() > jobs.len()).await;
    let parked = sample(&engine.metrics.render(), "wabulk_jobs_parked_total{reason=\"not_before\"}");
    engine.stop().await;
    let all = results.results();
    results.stop().await;
    let stats = stack.stop().await;
    let late: Vec<i64> = due
        .iter()
        .enumerate()
        .filter_map(|(n, &at)| {
            let r = all.iter().find(|r| r.id == format!("due-{n:02}"))?;
            Some((r.finished_at - at).num_milliseconds())
        })
        .collect();
    println!("parking: lateness of sent jobs after their not_before, ms: {late:?}; parked {parked:?}");
    assert!(all_in, "{} of {} results: {:?}", all.len(), jobs.len() + 1, status_counts(&all));
    assert_eq!(parked, Some(21.0), "the 20 due jobs and the one that expires were parked");
    for (n, &at) in due.iter().enumerate() {
        let r = all.iter().find(|r| r.id == format!("due-{n:02}")).expect("a result");
        assert_eq!(r.status, Status::Sent, "{r:?}");
        // `finished_at` is after the request's answer, which left at or
        // after `not_before` (the simulator adds 20 ms).
        let lateness = (r.finished_at - at).num_milliseconds();
        assert!((20..=2_500).contains(&lateness), "due-{n:02} finished {lateness} ms after its not_before");
    }
    let expired = all.iter().find(|r| r.id == "expires").expect("a result for the expiring job");
    assert_eq!(expired.status, Status::Expired, "{expired:?}");
    let after_expiry = (expired.finished_at - expires_at).num_milliseconds();
    assert!((0..=2_500).contains(&after_expiry), "expired {after_expiry} ms after expires_at");
    let too_far = all.iter().find(|r| r.id == "too-far").expect("a result for the far job");
    assert_eq!(too_far.status, Status::Rejected);
    assert_eq!(too_far.error.as_ref().map(|e| e.code.to_string()), Some("not_before_too_far".to_owned()));
    assert_eq!(violations(&stats), 0);
}

/// 60,000 jobs for a WABA whose token Meta refuses, then 500 for a healthy
/// WABA: the halted WABA's jobs are parked, not held, so the 500 go out at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_waba_holds_back_nothing() {
    const HALTED_JOBS: usize = 60_000;
    const HEALTHY_JOBS: usize = 500;
    const HALTED_WABA: &str = "102290129340399";
    const HALTED_TOKEN_ENV: &str = "WABULK_IT_PARKING_HALTED_TOKEN";
    init_logs();
    let halted: Vec<Number> =
        (0..8).map(|i| Number::new(&format!("10654035224{:04}", 3000 + i), 80)).collect();
    let healthy = [Number::new(URGENT, 1000)];
    let mut sim = sim_config(&healthy, Latency::Fixed(Duration::from_millis(20)));
    for number in &halted {
        sim.numbers.push(SimNumber { id: number.id.clone(), mps: number.mps, waba_id: HALTED_WABA.into() });
    }
    sim.wabas.push(SimWaba {
        id: HALTED_WABA.into(),
        token: "meta-expects-this".into(),
        hourly_cap: 1_800_000,
    });
    let stack = Stack::start(sim, 8).await;
    let mut toml = EngineToml::new(&stack, "it-parking-halted", &healthy);
    toml.other_wabas.push(OtherWaba {
        id: HALTED_WABA.into(),
        token_env: HALTED_TOKEN_ENV.into(),
        numbers: halted.clone(),
    });
    let env = |var: &str| match var {
        TOKEN_ENV => Some(TOKEN.to_owned()),
        HALTED_TOKEN_ENV => Some("an-expired-token".to_owned()),
        _ => None,
    };
    let engine = InProcessEngine::start(toml.setup_with_env(&env));
    let results = Collector::start(&stack.brokers(), RESULTS);
    let writer = JobWriter::connect(&stack.brokers(), &Default::default()).expect("job writer");
    engine_reading(&writer, &results, URGENT).await;

    let started = Instant::now();
    let jobs: Vec<(&str, Vec<u8>)> = (0..HALTED_JOBS)
        .map(|n| {
            let phone = halted[n % halted.len()].id.as_str();
            (phone, job(&format!("halted-{n:05}"), phone, n as u64, None, None))
        })
        .collect();
    write_all(&writer, &jobs).await;
    // Jobs read before the first refusal halted the WABA may have been
    // parked behind their numbers' backlog first; either way they wait in
    // Kafka.
    let parkings = |text: &str| {
        ["halted", "backlog"]
            .iter()
            .filter_map(|reason| sample(text, &format!("wabulk_jobs_parked_total{{reason=\"{reason}\"}}")))
            .sum::<f64>()
    };
    let parked_all = crate::harness::wait_for(Duration::from_secs(120), || {
        parkings(&engine.metrics.render()) >= HALTED_JOBS as f64
    })
    .await;
    let parking_took = started.elapsed();
    let healthy_jobs: Vec<(&str, Vec<u8>)> = (0..HEALTHY_JOBS)
        .map(|n| (URGENT, job(&format!("healthy-{n:03}"), URGENT, 5_000_000 + n as u64, None, None)))
        .collect();
    let written = Instant::now();
    write_all(&writer, &healthy_jobs).await;
    let all_healthy = results
        .wait_until(Duration::from_secs(10), |records| {
            records.iter().filter(|r| r.key.as_deref().is_some_and(|k| k.starts_with(b"healthy-"))).count()
                >= HEALTHY_JOBS
        })
        .await;
    let healthy_took = written.elapsed();
    let text = engine.metrics.render();
    let in_memory = sample(&text, "wabulk_jobs_in_memory").unwrap_or(f64::NAN);
    let parked = parkings(&text);
    engine.stop().await;
    let all = results.results();
    results.stop().await;
    let stats = stack.stop().await;
    println!(
        "parking: {HALTED_JOBS} jobs of a halted WABA parked in {:.1} s ({parked} parkings); {HEALTHY_JOBS} \
         jobs of a healthy WABA answered {:.1} s after being written; {in_memory} in memory; results {:?}",
        parking_took.as_secs_f64(),
        healthy_took.as_secs_f64(),
        status_counts(&all)
    );
    assert!(parked_all, "{parked} of {HALTED_JOBS} halted jobs parked within 120 s");
    assert!(
        all_healthy,
        "only {} of {HEALTHY_JOBS} healthy jobs sent within 10 s",
        of(&all, "healthy-").len()
    );
    assert!(of(&all, "halted-").is_empty(), "a halted WABA's job got a result");
    assert!(in_memory < 1_000.0, "{in_memory} jobs in memory while the WABA is halted");
    assert_eq!(violations(&stats), 0);
}

/// A slow number's backlog waits in Kafka: 2,400 jobs for a 40 msg/s
/// number (60 s of sending), then 200 for an 80 msg/s number, on one
/// partition with a memory budget of about 370 jobs. Held in memory, the
/// slow jobs would fill the budget and pause the partition, and the fast
/// number's jobs would wait about 50 s behind them; with the slow number's
/// share (2 s of sending) in memory and the rest parked, the fast jobs go
/// out in a few seconds, and the slow ones still go out at their tier, each
/// pair in the order written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_numbers_backlog_holds_back_nothing() {
    const SLOW: &str = "106540352244001";
    const FAST: &str = "106540352244002";
    const SLOW_MPS: u32 = 40;
    const FAST_MPS: u32 = 80;
    const RECIPIENTS: u64 = 480;
    const PER_RECIPIENT: u64 = 5;
    const SLOW_JOBS: u64 = RECIPIENTS * PER_RECIPIENT;
    const FAST_JOBS: u64 = 200;
    init_logs();
    let numbers = [Number::new(SLOW, SLOW_MPS), Number::new(FAST, FAST_MPS)];
    let stack = Stack::start(sim_config(&numbers, Latency::Fixed(Duration::from_millis(20))), 1).await;
    let mut toml = EngineToml::new(&stack, "it-parking-backlog", &numbers);
    toml.parking.push("park_after_ms = 2000".into());
    toml.kafka.push("max_in_memory_bytes = 524288".into());
    let engine = InProcessEngine::start(toml.setup());
    let results = Collector::start(&stack.brokers(), RESULTS);
    let writer = JobWriter::connect(&stack.brokers(), &Default::default()).expect("job writer");
    engine_reading(&writer, &results, FAST).await;

    // Recipient n % 480 gets its (n / 480)-th job: five rounds of 480.
    let slow: Vec<(&str, Vec<u8>)> = (0..SLOW_JOBS)
        .map(|n| (SLOW, job(&format!("slow-{n:04}"), SLOW, n % RECIPIENTS, None, None)))
        .collect();
    let fast: Vec<(&str, Vec<u8>)> = (0..FAST_JOBS)
        .map(|n| (FAST, job(&format!("fast-{n:03}"), FAST, 1_000_000 + n, None, None)))
        .collect();
    let started = Instant::now();
    write_all(&writer, &slow).await;
    write_all(&writer, &fast).await;
    let count = |records: &[wabulk_kafka::Record], prefix: &[u8]| {
        records.iter().filter(|r| r.key.as_deref().is_some_and(|k| k.starts_with(prefix))).count() as u64
    };
    let fast_in = results.wait_until(Duration::from_secs(15), |r| count(r, b"fast-") >= FAST_JOBS).await;
    let fast_took = started.elapsed();
    // 60 s of sending at the tier, and room for a loaded host.
    let slow_in = results.wait_until(Duration::from_secs(120), |r| count(r, b"slow-") >= SLOW_JOBS).await;
    let slow_took = started.elapsed();
    let parked =
        sample(&engine.metrics.render(), "wabulk_jobs_parked_total{reason=\"backlog\"}").unwrap_or(0.0);
    engine.stop().await;
    let all = results.results();
    results.stop().await;
    let stats = stack.stop().await;
    println!(
        "backlog: {FAST_JOBS} fast jobs answered {:.1} s after being written behind {SLOW_JOBS} slow ones, \
         which took {:.1} s at {SLOW_MPS} msg/s; {parked} parkings; results {:?}",
        fast_took.as_secs_f64(),
        slow_took.as_secs_f64(),
        status_counts(&all)
    );
    assert!(fast_in, "only {} of {FAST_JOBS} fast jobs answered within 15 s", of(&all, "fast-").len());
    assert!(slow_in, "only {} of {SLOW_JOBS} slow jobs answered within 120 s", of(&all, "slow-").len());
    assert!(parked >= 1.0, "nothing was parked: the scenario did not happen");
    let slow_results = of(&all, "slow-");
    assert_eq!(slow_results.len() as u64, SLOW_JOBS, "one result per slow job");
    assert!(slow_results.iter().all(|r| r.status == Status::Sent), "{:?}", status_counts(&all));
    // Each pair in the order written.
    for recipient in 0..RECIPIENTS {
        let finished: Vec<DateTime<Utc>> = (0..PER_RECIPIENT)
            .map(|round| {
                let id = format!("slow-{:04}", round * RECIPIENTS + recipient);
                slow_results.iter().find(|r| r.id == id).expect("a result").finished_at
            })
            .collect();
        assert!(
            finished.windows(2).all(|w| w[0] <= w[1]),
            "recipient {recipient} out of order: {finished:?}"
        );
    }
    assert_eq!(violations(&stats), 0);
}
