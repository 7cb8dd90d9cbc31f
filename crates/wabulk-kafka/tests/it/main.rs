//! Integration tests against librdkafka's mock cluster ([`EmbeddedKafka`]):
//! the offset watermark and the finished offsets above it (in the commit
//! metadata) across a consumer restart, backpressure without
//! leaving the group, a cooperative revocation that waits for the engine's
//! leases, and the producer's acknowledgements across a broker outage;
//! parking (`parking.rs`). Each test starts its own cluster, so they run in
//! parallel without sharing state.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::timeout;
use wabulk_kafka::{
    Assignment, EmbeddedKafka, Ingest, JobWriter, KafkaSettings, Lease, Output, Record, TopicReader,
};

mod parking;

const SESSION_TIMEOUT_MS: u64 = 6_000;

/// Logs to the test output when `RUST_LOG` is set (e.g. `RUST_LOG=debug`);
/// `WABULK_KAFKA_DEBUG=cgrp,fetch` adds librdkafka's own debug contexts.
fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

fn settings(kafka: &EmbeddedKafka, topic: &str) -> KafkaSettings {
    KafkaSettings {
        brokers: kafka.bootstrap_servers(),
        group_id: format!("{topic}.group"),
        jobs_topic: topic.into(),
        results_topic: "results".into(),
        dlq_topic: "dlq".into(),
        max_in_memory: 10_000,
        resume_below: 8_000,
        max_in_memory_bytes: wabulk_kafka::DEFAULT_MAX_IN_MEMORY_BYTES,
        revoke_timeout: Duration::from_secs(20),
        extra: BTreeMap::from([
            ("session.timeout.ms".into(), SESSION_TIMEOUT_MS.to_string()),
            ("heartbeat.interval.ms".into(), "500".into()),
            // As low as librdkafka allows (>= session timeout): a consumer
            // that stopped polling while paused would be out of the group
            // within the backpressure test's stall.
            ("max.poll.interval.ms".into(), SESSION_TIMEOUT_MS.to_string()),
            ("reconnect.backoff.ms".into(), "100".into()),
            ("reconnect.backoff.max.ms".into(), "500".into()),
        ])
        .into_iter()
        .chain(std::env::var("WABULK_KAFKA_DEBUG").ok().map(|d| ("debug".to_string(), d)))
        .collect(),
    }
}

/// Writes `count` jobs keyed by their number; returns each one's position.
async fn produce(kafka: &EmbeddedKafka, topic: &str, count: usize) -> Vec<(i32, i64)> {
    let writer = JobWriter::connect(&kafka.bootstrap_servers(), &BTreeMap::new()).unwrap();
    let mut positions = Vec::with_capacity(count);
    for n in 0..count {
        let key = n.to_string();
        let payload = format!("{{\"n\":{n}}}");
        let sent = writer.send(topic, Some(key.as_bytes()), payload.as_bytes());
        positions.push(timeout(Duration::from_secs(10), sent).await.unwrap().unwrap());
    }
    positions
}

async fn next_within(ingest: &Ingest, wait: Duration) -> Option<(Record, Lease)> {
    timeout(wait, ingest.next()).await.ok().map(|r| r.unwrap())
}

/// `count` records, and their leases by partition and offset.
async fn read(ingest: &Ingest, count: usize) -> (Vec<Record>, Leases) {
    let mut records = Vec::with_capacity(count);
    let mut leases = Leases::default();
    while records.len() < count {
        let next = next_within(ingest, Duration::from_secs(20)).await;
        let (record, lease) = next.unwrap_or_else(|| panic!("only {} of {count} records", records.len()));
        assert_eq!((lease.partition(), lease.offset()), (record.partition, record.offset));
        leases.0.insert((record.partition, record.offset), lease);
        records.push(record);
    }
    (records, leases)
}

/// Leases held, as the engine holds them while it works on the jobs.
#[derive(Default)]
struct Leases(BTreeMap<(i32, i64), Lease>);

impl Leases {
    /// The job's outcome is acknowledged.
    fn done(&mut self, partition: i32, offset: i64) {
        let lease = self.0.remove(&(partition, offset));
        lease.unwrap_or_else(|| panic!("no lease of {partition}/{offset}")).done();
    }

    /// The partition's jobs not done are given up: their leases dropped.
    fn drop_partition(&mut self, partition: i32) {
        self.0.retain(|&(p, _), _| p != partition);
    }

    fn of(&self, partition: i32) -> impl Iterator<Item = &Lease> {
        self.0.iter().filter(move |((p, _), _)| *p == partition).map(|(_, lease)| lease)
    }
}

async fn next_event(events: &mut UnboundedReceiver<Assignment>) -> Assignment {
    timeout(Duration::from_secs(20), events.recv()).await.unwrap().unwrap()
}

fn by_partition(records: &[Record]) -> BTreeMap<i32, Vec<i64>> {
    let mut map: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for record in records {
        map.entry(record.partition).or_default().push(record.offset);
    }
    map.values_mut().for_each(|offsets| offsets.sort_unstable());
    map
}

/// The group's committed position of `partition` and its metadata, read with
/// a plain rdkafka consumer (which does not join the group).
fn committed_with_metadata(kafka: &EmbeddedKafka, group: &str, topic: &str, partition: i32) -> (i64, String) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(5)).unwrap();
    let element = committed.find_partition(topic, partition).unwrap();
    match element.offset() {
        Offset::Offset(offset) => (offset, element.metadata().to_owned()),
        other => panic!("nothing committed for {topic}/{partition}: {other:?}"),
    }
}

/// Done out of order with one gap per partition: after a restart the group
/// resumes at each gap and hands out the gap only: the jobs done above it
/// are in the commit metadata and skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_resumes_at_the_watermark_and_skips_what_was_done() {
    init_logs();
    let kafka = EmbeddedKafka::start(1).unwrap();
    let topic = "roundtrip.jobs";
    kafka.create_topic(topic, 2).unwrap();
    let positions = produce(&kafka, topic, 120).await;
    let ends: BTreeMap<i32, i64> = positions.iter().fold(BTreeMap::new(), |mut ends, &(p, o)| {
        let end = ends.entry(p).or_insert(0);
        *end = (*end).max(o + 1);
        ends
    });
    assert_eq!(ends.len(), 2, "keys spread over both partitions");

    let settings = settings(&kafka, topic);
    let (ingest, mut events) = Ingest::connect(&settings).unwrap();
    let (records, mut leases) = read(&ingest, positions.len()).await;
    assert!(matches!(next_event(&mut events).await, Assignment::Assigned(_)));
    let offsets = by_partition(&records);
    // The gap: the record in the middle of each partition stays unfinished.
    let gaps: BTreeMap<i32, i64> = offsets.iter().map(|(&p, o)| (p, o[o.len() / 2])).collect();
    // Finish the rest in a scrambled order (stride through the list).
    let stride = 37;
    for i in 0..records.len() {
        let record = &records[(i * stride) % records.len()];
        if gaps[&record.partition] != record.offset {
            leases.done(record.partition, record.offset);
        }
    }
    assert_eq!(ingest.in_memory(), gaps.len());
    ingest.commit_now().unwrap();
    let committed: BTreeMap<i32, i64> =
        ingest.committed(Duration::from_secs(5)).unwrap().into_iter().collect();
    assert_eq!(committed, gaps, "commit_now committed the watermarks");
    drop(ingest);

    drop(leases);

    let (ingest, _events) = Ingest::connect(&settings).unwrap();
    let (again, mut leases) = read(&ingest, gaps.len()).await;
    let again = by_partition(&again);
    for (partition, gap) in &gaps {
        assert_eq!(again[partition], vec![*gap], "partition {partition} hands out its gap only");
    }
    assert!(
        next_within(&ingest, Duration::from_secs(1)).await.is_none(),
        "nothing done, before or after the gap, is read again"
    );
    // The skipped jobs count as done: finishing the gaps moves the watermark
    // to the end of each partition.
    for (partition, gap) in &gaps {
        leases.done(*partition, *gap);
    }
    ingest.commit_now().unwrap();
    let committed: BTreeMap<i32, i64> =
        ingest.committed(Duration::from_secs(5)).unwrap().into_iter().collect();
    assert_eq!(committed, ends, "the watermark passed the skipped jobs");
}

/// One partition, done in a scattered order that leaves out the first
/// offsets and a few others: the commit carries the watermark (the first
/// offset) and the finished ranges above it as metadata, and a new consumer
/// in the group receives exactly the offsets that were not done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_consumer_receives_exactly_the_jobs_not_done() {
    init_logs();
    let kafka = EmbeddedKafka::start(1).unwrap();
    let topic = "scattered.jobs";
    kafka.create_topic(topic, 1).unwrap();
    let count = 40;
    produce(&kafka, topic, count).await;
    let settings = settings(&kafka, topic);
    let (ingest, _events) = Ingest::connect(&settings).unwrap();
    let (records, mut leases) = read(&ingest, count).await;
    assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), (0..count as i64).collect::<Vec<_>>());
    let not_done: BTreeSet<i64> = [0, 1, 5, 17, 18, 25, 39].into();
    for i in 0..count {
        let offset = ((i * 13) % count) as i64;
        if !not_done.contains(&offset) {
            leases.done(0, offset);
        }
    }
    ingest.commit_now().unwrap();
    let (position, metadata) = committed_with_metadata(&kafka, &settings.group_id, topic, 0);
    assert_eq!(position, 0);
    assert_eq!(metadata, "v2:2+2,2+10,3+5,2+12");
    drop(ingest);
    drop(leases);

    let (ingest, _events) = Ingest::connect(&settings).unwrap();
    let (again, mut leases) = read(&ingest, not_done.len()).await;
    let again: Vec<i64> = again.iter().map(|r| r.offset).collect();
    assert_eq!(again, not_done.iter().copied().collect::<Vec<_>>());
    assert!(next_within(&ingest, Duration::from_secs(1)).await.is_none(), "nothing done is read again");
    // Finishing 0 and 1 moves the watermark over the finished 2..=4; what is
    // committed is relative to it.
    leases.done(0, 1);
    leases.done(0, 0);
    ingest.commit_now().unwrap();
    let (position, metadata) = committed_with_metadata(&kafka, &settings.group_id, topic, 0);
    assert_eq!((position, metadata.as_str()), (5, "v2:1+10,3+5,2+12"));
}

/// Polls the group's committed position and metadata of `partition` until
/// it is `want` (up to `limit`); how long that took, or `None`.
async fn committed_within(
    kafka: &EmbeddedKafka,
    group: &str,
    topic: &str,
    want: (i64, &str),
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let (position, metadata) = committed_with_metadata(kafka, group, topic, 0);
        if position == want.0 && metadata == want.1 {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// The watermark is stuck on an unfinished job while jobs above it finish:
/// the commit of the changed metadata follows each `done` within
/// milliseconds, without `commit_now` (what a crash finds committed), and
/// the commit listener hears of every job done and of each commit, with its
/// lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dones_are_committed_promptly_while_the_watermark_is_stuck() {
    init_logs();
    let kafka = EmbeddedKafka::start(1).unwrap();
    let topic = "stuck.jobs";
    kafka.create_topic(topic, 1).unwrap();
    produce(&kafka, topic, 10).await;
    let settings = settings(&kafka, topic);
    let (ingest, _events) = Ingest::connect(&settings).unwrap();
    let heard = std::sync::Arc::new(std::sync::Mutex::new((0i64, Vec::<Duration>::new())));
    ingest.set_commit_listener(Box::new({
        let heard = heard.clone();
        move |delta, lags| {
            let mut heard = heard.lock().unwrap();
            heard.0 += delta;
            heard.1.extend_from_slice(lags);
        }
    }));
    let (_, mut leases) = read(&ingest, 10).await;
    let group = settings.group_id.as_str();
    // Well under the second auto-commit used to take; generous for a loaded
    // two-core machine (the commit itself takes a few milliseconds).
    let prompt = Duration::from_millis(500);

    leases.done(0, 3);
    let first = committed_within(&kafka, group, topic, (0, "v2:3"), Duration::from_secs(10)).await;
    assert!(first.is_some_and(|took| took < prompt), "v2:3 committed after {first:?}");
    leases.done(0, 5);
    leases.done(0, 6);
    let second = committed_within(&kafka, group, topic, (0, "v2:3,2+1"), Duration::from_secs(10)).await;
    assert!(second.is_some_and(|took| took < prompt), "v2:3,2+1 committed after {second:?}");
    // The watermark moves: 0..=2 done, 3 done before, 4 not.
    for offset in 0..3 {
        leases.done(0, offset);
    }
    let third = committed_within(&kafka, group, topic, (4, "v2:1+1"), Duration::from_secs(10)).await;
    assert!(third.is_some_and(|took| took < prompt), "4 / v2:1+1 committed after {third:?}");
    // The listener's count is back to 0 once the answer is recorded, which
    // follows the broker's acknowledgement by a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while heard.lock().unwrap().0 != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (uncommitted, lags) = heard.lock().unwrap().clone();
    assert_eq!(uncommitted, 0, "every job done is committed");
    assert_eq!(ingest.uncommitted(), 0);
    assert_eq!(lags.len(), 6, "one lag per job done: {lags:?}");
    assert!(lags.iter().all(|lag| *lag < prompt), "lags {lags:?}");
    println!("commit lags: first {first:?}, second {second:?}, third {third:?}; listener {lags:?}");
}

/// At the high-water mark `next` stops yielding; the consumer stays in the
/// group past the session and poll timeouts; `done` below the low-water mark
/// resumes reading where it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_pauses_without_leaving_the_group() {
    init_logs();
    let kafka = EmbeddedKafka::start(1).unwrap();
    let topic = "backpressure.jobs";
    kafka.create_topic(topic, 1).unwrap();
    produce(&kafka, topic, 40).await;
    let settings = KafkaSettings { max_in_memory: 10, resume_below: 5, ..settings(&kafka, topic) };
    let (ingest, mut events) = Ingest::connect(&settings).unwrap();
    let (first, mut leases) = read(&ingest, 10).await;
    assert_eq!(next_event(&mut events).await, Assignment::Assigned(vec![0]));

    let stall = Duration::from_millis(SESSION_TIMEOUT_MS + 2_000);
    let started = Instant::now();
    assert!(next_within(&ingest, stall).await.is_none(), "paused at the high-water mark");
    assert!(started.elapsed() >= stall);
    assert_eq!(ingest.in_memory(), 10);
    assert!(events.try_recv().is_err(), "no rebalance while paused");
    assert_eq!(ingest.assigned(), vec![0]);

    // 10 - 6 = 4 < 5: resume.
    for record in &first[..6] {
        leases.done(record.partition, record.offset);
    }
    let (more, _more_leases) = read(&ingest, 6).await;
    let offsets: Vec<i64> = more.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (10..16).collect::<Vec<_>>(), "continues where it paused, no re-read");
    assert!(next_within(&ingest, Duration::from_secs(2)).await.is_none(), "paused again at 10");
    assert!(events.try_recv().is_err(), "still no rebalance");
    // 40 written, position 16: statistics arrive every second.
    assert_eq!(ingest.lag(), vec![(0, 24)]);
    // The dones' watermark was committed right after them.
    assert_eq!(ingest.committed(Duration::from_secs(5)).unwrap(), vec![(0, 6)]);
}

/// A second consumer joins: the first is told which partition it loses (and
/// that partition's leases say so), the revocation waits while leases of it
/// are held, `done` during the wait still commits, dropping the last lease
/// ends the wait, and the new owner starts at the watermark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_waits_for_the_engine_then_hands_over_at_the_watermark() {
    init_logs();
    let kafka = EmbeddedKafka::start(1).unwrap();
    let topic = "rebalance.jobs";
    kafka.create_topic(topic, 2).unwrap();
    let positions = produce(&kafka, topic, 40).await;
    let settings = settings(&kafka, topic);
    let (first, mut first_events) = Ingest::connect(&settings).unwrap();
    let (records, mut leases) = read(&first, positions.len()).await;
    assert_eq!(next_event(&mut first_events).await, Assignment::Assigned(vec![0, 1]));

    let (second, mut second_events) = Ingest::connect(&settings).unwrap();
    let revoked = match next_event(&mut first_events).await {
        Assignment::Revoked(partitions) => partitions,
        other => panic!("expected a revocation, got {other:?}"),
    };
    assert_eq!(revoked.len(), 1, "cooperative-sticky moves one partition");
    let moved = revoked[0];
    assert!(leases.of(moved).all(Lease::is_revoked), "the moved partition's leases are revoked");
    assert!(!leases.of(1 - moved).any(Lease::is_revoked), "the other partition's are not");
    let moved_offsets = by_partition(&records)[&moved].clone();
    let gap = moved_offsets[moved_offsets.len() / 2];

    // While we hold the partition's leases, the revocation waits: the new owner
    // is not assigned yet, and the jobs still count as ours. Every `done`
    // below comes after the revocation started; the new owner starting at the
    // gap proves they were still committed, i.e. that the revocation waited.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(second_events.try_recv().is_err(), "handover waits for the engine");
    assert!(second.assigned().is_empty());
    assert_eq!(first.in_memory(), records.len());
    for &offset in moved_offsets.iter().filter(|&&o| o != gap) {
        leases.done(moved, offset);
    }
    // The gap's job is given up (as the engine purges a revoked partition's
    // waiting jobs): its lease, the partition's last, is dropped.
    leases.drop_partition(moved);

    assert_eq!(next_event(&mut second_events).await, Assignment::Assigned(vec![moved]));
    // The revocation commits the revoked partition's watermark before it
    // completes. The mock broker refuses that commit when the group
    // is already rebalancing again (a real broker accepts it while preparing a
    // rebalance), which happens here under CPU load when the mock fails the
    // new member's first SyncGroup; the dones of the wait are then lost and
    // the new owner re-reads from the last commit: duplicates, never a skip.
    let committed = second.committed(Duration::from_secs(5)).unwrap();
    let start = match committed.iter().find(|(p, _)| *p == moved) {
        Some(&(_, offset)) => offset,
        None => 0,
    };
    if start != gap {
        eprintln!("the revocation commit was refused; the new owner starts at {start}, not {gap}");
    }
    assert!(start <= gap, "never beyond the unfinished job");
    if start == gap {
        // Everything else was done and is in the commit metadata.
        let got: Vec<i64> = read(&second, 1).await.0.iter().map(|r| r.offset).collect();
        assert_eq!(got, vec![gap], "the new owner hands out the unfinished job only");
    } else {
        // From an earlier commit, whose metadata skips some of the jobs done
        // since `start`, but never the gap.
        let mut got = Vec::new();
        while let Some((record, _lease)) = next_within(&second, Duration::from_secs(3)).await {
            got.push(record.offset);
        }
        assert!(got.contains(&gap), "the unfinished job is handed out: {got:?}");
        assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
        assert!(got.iter().all(|o| *o >= start && moved_offsets.contains(o)), "{got:?}");
    }
    assert!(next_within(&second, Duration::from_secs(1)).await.is_none(), "nothing more");
    assert_eq!(first.assigned(), vec![1 - moved]);
    let remaining: usize = by_partition(&records)[&(1 - moved)].len();
    assert_eq!(first.in_memory(), remaining);
}

/// The consumer's session expires during a broker outage while jobs it handed
/// out are still being worked on: librdkafka revokes the assignment as lost
/// (nothing can be committed for it). Jobs done before the loss, during the
/// outage after it, and after the broker is back are remembered, and when
/// the same consumer gets the partition back it hands out only the jobs
/// never done, and its commits move past the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_done_after_a_lost_assignment_are_not_handed_out_again() {
    init_logs();
    let kafka = EmbeddedKafka::start(1).unwrap();
    let topic = "lost.jobs";
    kafka.create_topic(topic, 1).unwrap();
    let count = 40;
    produce(&kafka, topic, count).await;
    let mut settings = settings(&kafka, topic);
    // The re-assignment below is held (in the rebalance callback, by the
    // polling thread) longer than the session: polls must not be missed.
    settings.extra.insert("max.poll.interval.ms".into(), "60000".into());
    let group = settings.group_id.clone();
    let (ingest, mut events) = Ingest::connect(&settings).unwrap();
    let (records, mut leases) = read(&ingest, count).await;
    assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), (0..count as i64).collect::<Vec<_>>());
    assert_eq!(next_event(&mut events).await, Assignment::Assigned(vec![0]));
    for offset in 0..5 {
        leases.done(0, offset);
    }
    let committed = committed_within(&kafka, &group, topic, (5, "v2:"), Duration::from_secs(10)).await;
    assert!(committed.is_some(), "0..5 committed before the outage");

    kafka.broker_down(1);
    let down = Instant::now();
    // Done during the outage, before the session expires: not committable.
    for offset in [5, 6, 7, 20] {
        leases.done(0, offset);
    }
    let lost = timeout(Duration::from_secs(30), events.recv()).await.unwrap().unwrap();
    assert_eq!(lost, Assignment::Revoked(vec![0]), "the assignment is lost with the session");
    assert!(leases.of(0).all(Lease::is_revoked), "a lost assignment's leases are revoked");
    let lost_after = down.elapsed();
    // The event comes first; the revocation completes a moment later.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ingest.assigned().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ingest.assigned().is_empty(), "the revocation completes");
    // Done after the loss, broker still down.
    for offset in (8..15).chain(21..25) {
        leases.done(0, offset);
    }
    kafka.broker_up(1);
    // The consumer rejoins and is assigned the partition again, but waits
    // (up to `revoke_timeout`) for the lost assignment's jobs still out.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(events.try_recv().is_err(), "the re-assignment waits for the lost assignment's jobs");
    assert!(ingest.assigned().is_empty());
    // Done once the broker is back; the engine then gives up the rest of the
    // lost assignment's jobs (drops their leases), which ends the wait.
    for offset in 25..30 {
        leases.done(0, offset);
    }
    leases.drop_partition(0);
    let again = timeout(Duration::from_secs(60), events.recv()).await.unwrap().unwrap();
    assert_eq!(again, Assignment::Assigned(vec![0]), "the same consumer gets the partition back");
    let reassigned_after = down.elapsed();

    // Only the jobs never done are handed out again.
    let not_done: Vec<i64> = (15..20).chain(30..count as i64).collect();
    let (handed, mut leases) = read(&ingest, not_done.len()).await;
    let handed: Vec<i64> = handed.iter().map(|r| r.offset).collect();
    assert_eq!(handed, not_done, "only the jobs never done are handed out again");
    assert!(next_within(&ingest, Duration::from_secs(1)).await.is_none(), "nothing done is read again");
    // The commit moves past the jobs done by the lost assignment: the
    // watermark is the first job never done, and 20..=29 are finished above it.
    let moved = committed_within(&kafka, &group, topic, (15, "v2:5+9"), Duration::from_secs(10)).await;
    assert!(moved.is_some(), "committed {:?}", committed_with_metadata(&kafka, &group, topic, 0));
    for offset in not_done {
        leases.done(0, offset);
    }
    let end = committed_within(&kafka, &group, topic, (count as i64, "v2:"), Duration::from_secs(10)).await;
    assert!(end.is_some(), "committed {:?}", committed_with_metadata(&kafka, &group, topic, 0));
    let deadline = Instant::now() + Duration::from_secs(5);
    while ingest.uncommitted() != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ingest.uncommitted(), 0, "nothing left uncommitted");
    println!("lost after {lost_after:?}, re-assigned after {reassigned_after:?}");
}

/// `result` and `dead_letter` resolve with Kafka's acknowledgement, and the
/// records are on their topics with their keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_and_dead_letters_are_acknowledged_and_readable() {
    init_logs();
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic("results", 1).unwrap();
    kafka.create_topic("dlq", 1).unwrap();
    let output = Output::connect(&settings(&kafka, "unused.jobs")).unwrap();
    let wait = Duration::from_secs(10);
    timeout(wait, output.result("job-1", br#"{"id":"job-1"}"#.to_vec())).await.unwrap().unwrap();
    timeout(wait, output.dead_letter(Some(b"106540352242922"), b"{\"error\":\"bad\"}".to_vec()))
        .await
        .unwrap()
        .unwrap();
    timeout(wait, output.dead_letter(None, b"{}".to_vec())).await.unwrap().unwrap();
    output.flush(wait).unwrap();

    let brokers = kafka.bootstrap_servers();
    let results = TopicReader::connect(&brokers, "results", wait).unwrap();
    let result = timeout(wait, results.next()).await.unwrap().unwrap();
    assert_eq!(result.key.as_deref(), Some(&b"job-1"[..]));
    assert_eq!(result.payload, br#"{"id":"job-1"}"#);

    let dlq = TopicReader::connect(&brokers, "dlq", wait).unwrap();
    let first = timeout(wait, dlq.next()).await.unwrap().unwrap();
    let second = timeout(wait, dlq.next()).await.unwrap().unwrap();
    assert_eq!(first.key.as_deref(), Some(&b"106540352242922"[..]));
    assert_eq!(first.payload, b"{\"error\":\"bad\"}");
    assert_eq!(second.key, None);
}

/// A result sent while the broker is down is not acknowledged until the
/// broker is back, and then it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_sent_during_an_outage_completes_after_it() {
    init_logs();
    let kafka = EmbeddedKafka::start(1).unwrap();
    kafka.create_topic("results", 1).unwrap();
    let output = Output::connect(&settings(&kafka, "unused.jobs")).unwrap();
    // Warm up: metadata and the idempotent producer id are in place.
    timeout(Duration::from_secs(10), output.result("job-0", b"{}".to_vec())).await.unwrap().unwrap();

    kafka.broker_down(1);
    let pending = tokio::spawn({
        let output = output.clone();
        async move { output.result("job-1", b"{\"late\":true}".to_vec()).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!pending.is_finished(), "not acknowledged while the broker is down");
    kafka.broker_up(1);
    timeout(Duration::from_secs(30), pending).await.unwrap().unwrap().unwrap();

    let results =
        TopicReader::connect(&kafka.bootstrap_servers(), "results", Duration::from_secs(10)).unwrap();
    let mut keys = BTreeSet::new();
    while keys.len() < 2 {
        let record = timeout(Duration::from_secs(10), results.next()).await.unwrap().unwrap();
        keys.insert(record.key.unwrap());
    }
    assert!(keys.contains(&b"job-1"[..]));
}

#[test]
fn handles_can_be_shared_between_tasks() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Ingest>();
    send_sync::<Output>();
    send_sync::<JobWriter>();
    send_sync::<TopicReader>();
    send_sync::<EmbeddedKafka>();
    send_sync::<wabulk_kafka::Parker>();
    send_sync::<wabulk_kafka::Mover>();
    fn send_static<T: Send + 'static>() {}
    send_static::<Lease>();
}

#[test]
fn settings_reject_water_marks_that_cannot_work() {
    let bad = KafkaSettings { max_in_memory: 10, resume_below: 11, ..KafkaSettings::default() };
    assert!(matches!(Ingest::connect(&bad), Err(wabulk_kafka::KafkaError::Settings(_))));
    let defaults = KafkaSettings::default();
    assert_eq!(defaults.resume_below, 40_000);
    assert_eq!(defaults.jobs_topic, "wabulk.jobs");
}

/// The bytes of `v2:1,2,2,...` listing the odd offsets below `read`: the
/// metadata of a partition whose offset 0 and even offsets wait.
fn odd_metadata_bytes(read: i64) -> usize {
    let odd = (1..read).step_by(2).count();
    3 + odd * 2 - 1
}

/// Partition 0's offset 0 (and its even offsets) wait while the odd ones
/// above finish: once its metadata passes `WINDOW_PAUSE_BYTES` it is not
/// read further (within the records already read), partition 1 is read to
/// its end; once the waiting jobs are done it resumes, no commit ever left
/// a range out, and a restart hands out exactly the jobs not done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_job_pauses_its_partition_at_the_window_and_nothing_done_is_sent_again() {
    init_logs();
    let kafka = EmbeddedKafka::start(1).unwrap();
    let topic = "window.jobs";
    kafka.create_topic(topic, 2).unwrap();
    let positions = produce(&kafka, topic, 16_000).await;
    let total = |p: i32| positions.iter().filter(|(q, _)| *q == p).count() as i64;
    let max_in_memory = 3_000;
    let settings = KafkaSettings { max_in_memory, resume_below: 2_000, ..settings(&kafka, topic) };
    // The first read count whose metadata passes the window.
    let pause_at = (2..).find(|&n| odd_metadata_bytes(n) > wabulk_kafka::WINDOW_PAUSE_BYTES).unwrap();
    assert!(total(0) > pause_at + max_in_memory as i64 + 500, "partition 0 holds {}", total(0));

    let (ingest, _events) = Ingest::connect(&settings).unwrap();
    let (mut held, mut read) = (Leases::default(), BTreeMap::<i32, i64>::new());
    // The first record waits for the group to form.
    let idle = |read: &BTreeMap<i32, i64>| Duration::from_secs(if read.is_empty() { 20 } else { 3 });
    while let Some((record, lease)) = next_within(&ingest, idle(&read)).await {
        *read.entry(record.partition).or_default() += 1;
        // Above the window, all done: the waiting jobs stay under the
        // memory budget's resume mark.
        if record.partition == 0 && record.offset % 2 == 0 && record.offset < pause_at {
            held.0.insert((0, record.offset), lease);
        } else {
            lease.done();
        }
    }
    assert_eq!(read[&1], total(1), "partition 1 is read to its end");
    let read0 = read[&0];
    println!("partition 0: {read0} of {} read, paused at {pause_at}", total(0));
    assert!(read0 >= pause_at, "not paused before the window is full");
    assert!(read0 <= pause_at + max_in_memory as i64, "paused within the records already read: {read0}");
    assert_eq!(ingest.paused().window, 1);
    assert_eq!(ingest.metadata_overflows(), 0);

    // The slow job done, then the others waiting: partition 0 resumes.
    let waiting: Vec<i64> = held.0.keys().map(|&(_, o)| o).collect();
    for offset in waiting {
        held.done(0, offset);
    }
    // The rest of partition 0, all done but a few scattered ones.
    let not_done: BTreeSet<i64> = [read0 + 3, read0 + 100, total(0) - 2].into();
    let mut kept = Leases::default();
    while let Some((record, lease)) = next_within(&ingest, Duration::from_secs(3)).await {
        assert_eq!(record.partition, 0);
        *read.entry(0).or_default() += 1;
        if not_done.contains(&record.offset) {
            kept.0.insert((0, record.offset), lease);
        } else {
            lease.done();
        }
    }
    assert_eq!(read[&0], total(0), "partition 0 resumed and was read to its end");
    assert_eq!(ingest.paused(), wabulk_kafka::PausedCounts::default());
    ingest.commit_now().unwrap();
    assert_eq!(ingest.metadata_overflows(), 0, "no range was ever left out");
    drop(ingest);
    drop(kept);

    let (ingest, _events) = Ingest::connect(&settings).unwrap();
    let (again, _leases) = read_all(&ingest, not_done.len()).await;
    assert_eq!(again, not_done.iter().map(|&o| (0, o)).collect::<Vec<_>>());
}

async fn read_all(ingest: &Ingest, count: usize) -> (Vec<(i32, i64)>, Leases) {
    let (records, leases) = read(ingest, count).await;
    assert!(next_within(ingest, Duration::from_secs(1)).await.is_none(), "nothing done is read again");
    (records.iter().map(|r| (r.partition, r.offset)).collect(), leases)
}

/// A partition paused for the memory budget when its assignment is lost is
/// read again once it is assigned back: librdkafka keeps a partition's
/// pause across the loss, so the new assignment must resume it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_paused_when_its_assignment_was_lost_is_read_again() {
    init_logs();
    let kafka = EmbeddedKafka::start(1).unwrap();
    let topic = "lost-paused.jobs";
    kafka.create_topic(topic, 1).unwrap();
    let count = 30;
    produce(&kafka, topic, count).await;
    let mut settings = KafkaSettings { max_in_memory: 10, resume_below: 5, ..settings(&kafka, topic) };
    settings.extra.insert("max.poll.interval.ms".into(), "60000".into());
    let (ingest, mut events) = Ingest::connect(&settings).unwrap();
    assert_eq!(next_event(&mut events).await, Assignment::Assigned(vec![0]));
    // Ten jobs held: the budget pauses the partition.
    let (_, leases) = read(&ingest, 10).await;
    assert_eq!(ingest.paused().memory, 1);

    kafka.broker_down(1);
    let lost = timeout(Duration::from_secs(30), events.recv()).await.unwrap().unwrap();
    assert_eq!(lost, Assignment::Revoked(vec![0]), "the assignment is lost with the session");
    // The engine gives the lost jobs up; the budget is free again.
    drop(leases);
    kafka.broker_up(1);
    let again = timeout(Duration::from_secs(60), events.recv()).await.unwrap().unwrap();
    assert_eq!(again, Assignment::Assigned(vec![0]));
    assert_eq!(ingest.paused().any, 0, "nothing holds the partition back");
    // Nothing was done: every record is read again, from the first.
    let first = next_within(&ingest, Duration::from_secs(20)).await;
    assert_eq!(first.as_ref().map(|(record, _)| record.offset), Some(0), "the partition is read again");
}
