//! `run` against librdkafka's mock cluster ([`EmbeddedKafka`]): everything
//! written is acknowledged and readable back, keyed and ordered per number,
//! and a target rate is held. Each test starts its own cluster. Runs stay
//! far below the mock's ~5 MiB per partition, beyond which it drops data.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use tokio::time::timeout;
use wabulk_kafka::{EmbeddedKafka, JobWriter, TopicReader};
use wabulk_loadgen::{run, run_with, Burst, LoadNumber, LoadSpec, Recipients, RunOptions};
use wabulk_model::{Job, ParseOptions};

const TOPIC: &str = "wabulk.jobs";

fn spec(jobs: u64, rate: Option<f64>) -> LoadSpec {
    LoadSpec {
        numbers: vec![
            LoadNumber::new("106540352242922", "102290129340398", 80),
            LoadNumber::new("106540352242923", "102290129340398", 80),
            LoadNumber::new("106540352242924", "102290129340399", 1000),
        ],
        jobs,
        rate,
        recipients: Recipients::Zipf { count: 2_000, exponent: 1.0 },
        bursts: vec![Burst { phone_number_id: "106540352242922".into(), recipient_index: 0, count: 45 }],
        malformed_fraction: 0.01,
        not_before_fraction: 0.05,
        not_before_min_s: 0,
        not_before_max_s: 30,
        expires_fraction: 0.05,
        expires_in_s: 60,
        id_prefix: "it".into(),
        seed: 11,
        campaigns: 0,
    }
}

async fn start(partitions: i32) -> (EmbeddedKafka, JobWriter) {
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic(TOPIC, partitions).unwrap();
    let writer = JobWriter::connect(&kafka.bootstrap_servers(), &BTreeMap::new()).unwrap();
    // Connect and fetch metadata before anything is timed.
    timeout(Duration::from_secs(10), writer.send("warm-up", None, b"{}")).await.unwrap().unwrap();
    (kafka, writer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_written_unpaced_is_acknowledged_and_readable() {
    let (kafka, writer) = start(4).await;
    let spec = spec(3_000, None);
    let options = RunOptions { collect_job_ids: true, ..RunOptions::default() };
    let report =
        timeout(Duration::from_secs(30), run_with(&spec, &writer, TOPIC, &options)).await.unwrap().unwrap();

    assert_eq!(report.written, 3_000);
    assert_eq!(report.malformed, 30);
    assert_eq!(report.per_number.values().sum::<u64>(), 2_970);
    assert_eq!(report.per_number.len(), 3);
    assert_eq!(report.burst_jobs, 45);
    assert_eq!(report.job_ids.len(), 2_970);
    assert!(report.achieved_rate > 0.0);

    let reader = TopicReader::connect(&kafka.bootstrap_servers(), TOPIC, Duration::from_secs(10)).unwrap();
    let mut ids = HashSet::new();
    let mut malformed = 0;
    let mut last_seq_per_key = HashMap::<Vec<u8>, u64>::new();
    for n in 0..3_000 {
        let record = timeout(Duration::from_secs(10), reader.next())
            .await
            .unwrap_or_else(|_| panic!("only {n} of 3000 records readable"))
            .unwrap();
        let key = record.key.expect("every record is keyed");
        let Ok(job) = Job::parse(&record.payload, &ParseOptions::default()) else {
            malformed += 1;
            continue;
        };
        assert_eq!(key, job.phone_number_id.to_string().as_bytes());
        // One number's jobs are read in the order they were generated.
        let seq = job.metadata.as_ref().unwrap()["seq"].as_u64().unwrap();
        if let Some(previous) = last_seq_per_key.insert(key, seq) {
            assert!(seq > previous, "seq {seq} after {previous}");
        }
        assert!(ids.insert(job.id), "a job was read twice");
    }
    assert_eq!(malformed, 30);
    assert_eq!(ids, report.job_ids.into_iter().collect::<HashSet<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_rate_is_held() {
    let (_kafka, writer) = start(2).await;
    let spec = spec(2_000, Some(2_000.0));
    let report = timeout(Duration::from_secs(30), run(&spec, &writer, TOPIC, false)).await.unwrap().unwrap();
    assert_eq!(report.written, 2_000);
    // About one second; the pacer never runs early, so the lower bound is
    // firm and the upper one leaves room for a busy machine.
    let elapsed = report.elapsed.as_secs_f64();
    assert!((0.9..=1.3).contains(&elapsed), "took {elapsed} s");
    assert!((1_400.0..=2_600.0).contains(&report.achieved_rate), "{} records/s", report.achieved_rate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_spec_writes_nothing() {
    let (_kafka, writer) = start(1).await;
    let mut spec = spec(10, None);
    spec.numbers.clear();
    let error = run(&spec, &writer, TOPIC, false).await.unwrap_err();
    assert!(error.to_string().contains("numbers"), "{error}");
}

/// The pacer's accuracy at a high rate; slow in debug builds, so run it by
/// hand: `cargo test --release -p wabulk-loadgen --test it -- --ignored`.
/// 32 partitions keep each one under the mock cluster's ~5 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a throughput check for release builds"]
async fn fifty_thousand_a_second() {
    let (_kafka, writer) = start(32).await;
    let mut spec = spec(150_000, Some(50_000.0));
    spec.malformed_fraction = 0.0;
    let report = timeout(Duration::from_secs(60), run(&spec, &writer, TOPIC, false)).await.unwrap().unwrap();
    assert_eq!(report.written, 150_000);
    eprintln!("paced: {:.0} records/s", report.achieved_rate);
    assert!((40_000.0..=55_000.0).contains(&report.achieved_rate), "{} records/s", report.achieved_rate);
}
