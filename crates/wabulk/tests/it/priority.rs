//! Priority lanes: an OTP (`priority: high`) written after a campaign's bulk
//! jobs for the same number goes out within seconds, not after the bulk.
//!
//! Measured as in loadtest/RESULTS.md ("OTPs behind bulk") with more of
//! both: `WABULK_IT_PRIORITY_BULK=20000 WABULK_IT_PRIORITY_OTPS=100 cargo
//! test --release -p wabulk --test it priority:: -- --nocapture`.

use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use wabulk_graph_sim::Latency;
use wabulk_kafka::{JobWriter, ParkingSettings};

use crate::harness::{
    init_logs, record_counts, sim_config, violations, write_all, Collector, EngineProcess, EngineToml,
    Number, Program, Stack, TempDir, JOBS, RESULTS,
};

const PHONE: &str = "106540352242922";

fn job(id: &str, recipient: u64, priority: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({ "id": id, "phone_number_id": PHONE, "to": format!("+{recipient}"),
        "priority": priority, "message": { "type": "text", "text": { "body": "hi" } } }))
    .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_otp_written_after_a_campaign_goes_out_within_seconds() {
    init_logs();
    let from_env =
        |var: &str, default: u64| std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let bulk_jobs = from_env("WABULK_IT_PRIORITY_BULK", 20_000);
    let otps = from_env("WABULK_IT_PRIORITY_OTPS", 20);
    let numbers = [Number::new(PHONE, 80)];
    let stack = Stack::start(sim_config(&numbers, Latency::Fixed(Duration::from_millis(5))), 2).await;
    let dir = TempDir::new("priority");
    let toml = EngineToml::new(&stack, "it-priority", &numbers);
    let mut engine = EngineProcess::spawn(Program::Wabulk, &toml.write(dir.path()), dir.path(), 0);
    let results = Collector::start(&stack.brokers(), RESULTS);
    let writer = JobWriter::connect(&stack.brokers(), &Default::default()).expect("job writer");
    let bulk: Vec<(&str, Vec<u8>)> =
        (0..bulk_jobs).map(|i| (PHONE, job(&format!("bulk-{i}"), 15_550_000_000 + i, "bulk"))).collect();
    write_all(&writer, &bulk).await;

    // What the number cannot send within the parking horizon (80/s × 60 s)
    // waits in the parking topics: the engine has read past the campaign.
    let tiers = ParkingSettings::default().tier_topics();
    let in_memory_at_most = 80 * 60 + 1_000;
    let started = Instant::now();
    let parked = loop {
        let parked: i64 = record_counts(&stack.brokers(), &tiers).values().sum();
        if parked >= (bulk_jobs - in_memory_at_most) as i64 || started.elapsed() > Duration::from_secs(60) {
            break parked;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(parked >= (bulk_jobs - in_memory_at_most) as i64, "only {parked} bulk jobs parked after 60 s");

    let mut written = Vec::new();
    for i in 0..otps {
        let id = format!("otp-{i}");
        let at = SystemTime::now();
        writer
            .send(JOBS, Some(PHONE.as_bytes()), &job(&id, 15_560_000_000 + i, "high"))
            .await
            .expect("an OTP");
        written.push((id, at));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids: Vec<String> = written.iter().map(|(id, _)| id.clone()).collect();
    let answered = results
        .wait_until(Duration::from_secs(30), |r| {
            let done: std::collections::HashSet<String> =
                r.iter().filter_map(|record| String::from_utf8(record.key.clone()?).ok()).collect();
            ids.iter().all(|id| done.contains(id))
        })
        .await;
    let first_requests = stack.sim.first_requests();
    results.stop().await;
    engine.terminate();
    assert!(
        engine.wait_exit(Duration::from_secs(30)).is_some_and(|exit| exit.success()),
        "{}",
        engine.log_tail(20)
    );
    let stats = stack.stop().await;

    assert!(answered, "not every OTP was answered within 30 s");
    let mut waits: Vec<Duration> =
        written.iter().map(|(id, at)| first_requests[id].duration_since(*at).unwrap_or_default()).collect();
    waits.sort();
    let at = |q: f64| waits[((waits.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "{otps} OTPs behind {bulk_jobs} bulk jobs, write to first request: p50 {:?}, p99 {:?}, max {:?}",
        at(0.5),
        at(0.99),
        waits[waits.len() - 1]
    );
    // Behind the bulk, an OTP would wait for thousands of sends at 80/s.
    assert!(waits[waits.len() - 1] < Duration::from_secs(2), "OTP waits from write to request: {waits:?}");
    assert_eq!(violations(&stats), 0, "{:?}", stats.violations);
}
