//! Parking against the mock cluster: jobs parked in short tiers (200 ms,
//! 1 s, 3 s) come back to the jobs topic when due, never before, through
//! several tiers when they must, across a stop of the mover, and past
//! records that are not parked jobs at all.
//!
//! Times are checked by the test itself, on the jobs topic: a record's
//! Kafka timestamp (set by the mover's producer when it writes) is never
//! before the due time, and the moment this test reads it is at most
//! [`LATE`] after.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::timeout;
use wabulk_kafka::{
    EmbeddedKafka, KafkaSettings, Mover, Parker, ParkingSettings, PARKED_DUE_HEADER, PARKED_HOPS_HEADER,
    PARKED_RELEASE_HEADER, PARKED_SINCE_HEADER, PARKED_UNREADABLE_HEADER,
};

use super::{init_logs, settings};

const TIERS: [Duration; 3] = [Duration::from_millis(200), Duration::from_secs(1), Duration::from_secs(3)];

/// How late a job may be seen on the jobs topic: the smallest tier (how
/// late a job parked with less than it to wait may be, by design), plus
/// 800 ms for the rest on a loaded two-core machine: the mover's fetch
/// after a resume, its poll round and the write's acknowledgement, and this
/// test's own fetch.
const LATE: Duration = Duration::from_millis(200 + 800);

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn at_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

struct Setup {
    kafka: EmbeddedKafka,
    settings: KafkaSettings,
    parking: ParkingSettings,
}

/// A cluster with the jobs topic and the three tier topics.
fn setup(name: &str, partitions: i32) -> Setup {
    init_logs();
    let kafka = EmbeddedKafka::start(1).unwrap();
    let jobs = format!("{name}.jobs");
    kafka.create_topic(&jobs, partitions).unwrap();
    let parking = ParkingSettings {
        topic_prefix: format!("{name}.parked"),
        tiers: TIERS.to_vec(),
        ..ParkingSettings::default()
    };
    for topic in parking.tier_topics() {
        kafka.create_topic(&topic, partitions).unwrap();
    }
    let settings = settings(&kafka, &jobs);
    Setup { kafka, settings, parking }
}

/// Waits until `mover` owns every tier partition and has started reading
/// them: the bounds apply to a mover at work, not to one still joining its
/// group.
async fn joined(mover: &Mover, partitions: i32) {
    let started = Instant::now();
    let all = TIERS.len() * partitions as usize;
    while mover.assigned() < all {
        assert!(started.elapsed() < Duration::from_secs(30), "the mover did not join its group");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // librdkafka looks up where to start a newly assigned partition before
    // its first fetch (about half a second against the mock).
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("the mover joined in {:?}", started.elapsed());
}

/// A record seen on a topic.
#[derive(Debug, Clone)]
struct Seen {
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    /// Its Kafka timestamp: when its writer wrote it.
    written_ms: u64,
    /// When this test read it.
    seen_ms: u64,
    headers: BTreeMap<String, String>,
}

impl Seen {
    fn payload(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// Reads every partition of a topic from the beginning, without a group,
/// on a task of its own from the moment it is created, so that when a
/// record was seen does not depend on what the test is doing meanwhile.
struct Collector {
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    fn start(kafka: &EmbeddedKafka, topic: &str, partitions: i32) -> Collector {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka.bootstrap_servers())
            .set("group.id", "parking-test-reader")
            .set("enable.auto.commit", "false")
            // The mock holds an empty fetch for this long.
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for partition in 0..partitions {
            tpl.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                loop {
                    let message = consumer.recv().await.unwrap();
                    let headers = message
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                                    (h.key.to_owned(), value.into_owned())
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    seen.lock().unwrap().push(Seen {
                        key: message.key().map(<[u8]>::to_vec),
                        payload: message.payload().unwrap_or_default().to_vec(),
                        written_ms: message.timestamp().to_millis().unwrap() as u64,
                        seen_ms: now_ms(),
                        headers,
                    });
                }
            }
        });
        Collector { seen, task }
    }

    /// Everything seen so far, once `enough` says so or `limit` has passed.
    async fn wait(&self, limit: Duration, enough: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
        let deadline = Instant::now() + limit;
        loop {
            let seen = self.seen.lock().unwrap().clone();
            if enough(&seen) || Instant::now() >= deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A parked job as the test knows it.
#[derive(Debug, Clone)]
struct Job {
    key: String,
    payload: String,
    due_ms: u64,
    /// When it was handed to the parker.
    parked_ms: u64,
}

impl Job {
    fn new(key: impl Into<String>, payload: impl Into<String>, due_ms: u64) -> Job {
        Job { key: key.into(), payload: payload.into(), due_ms, parked_ms: 0 }
    }
}

async fn park(parker: &Parker, jobs: &mut [Job]) {
    for job in jobs {
        job.parked_ms = now_ms();
        let parked =
            parker.park(Some(job.key.as_bytes()), job.payload.as_bytes(), at_ms(job.due_ms), "test", None);
        timeout(Duration::from_secs(10), parked).await.unwrap().unwrap();
    }
}

/// Every job back, with its key; never written before its due time; seen
/// within `late` of it (of when it was parked, for a job parked when due).
/// Returns how often each came back.
fn check_returns(jobs: &[Job], back: &[Seen], late: Duration) -> BTreeMap<String, usize> {
    let by_payload: BTreeMap<&str, &Job> = jobs.iter().map(|j| (j.payload.as_str(), j)).collect();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for seen in back {
        let payload = seen.payload();
        let job = by_payload.get(payload.as_str()).unwrap_or_else(|| panic!("unknown record {payload}"));
        *counts.entry(payload.clone()).or_default() += 1;
        assert_eq!(seen.key.as_deref(), Some(job.key.as_bytes()), "{payload}: key unchanged");
        assert!(
            seen.written_ms >= job.due_ms,
            "{payload} written {} ms before its due time",
            job.due_ms - seen.written_ms
        );
        let after = seen.seen_ms.saturating_sub(job.due_ms.max(job.parked_ms));
        assert!(after <= late.as_millis() as u64, "{payload} seen {after} ms after its due time");
        assert_eq!(seen.headers.get(PARKED_DUE_HEADER), Some(&job.due_ms.to_string()), "{payload}");
        // When it was first parked, carried through every hop.
        let since: u64 = seen.headers[PARKED_SINCE_HEADER].parse().expect("a time");
        assert!((job.parked_ms..job.parked_ms + 10_000).contains(&since), "{payload}: parked since {since}");
    }
    for job in jobs {
        assert!(counts.contains_key(&job.payload), "{} never came back", job.payload);
    }
    let latest = back.iter().map(|seen| {
        let job = by_payload[seen.payload().as_str()];
        let from = job.due_ms.max(job.parked_ms);
        (seen.written_ms.saturating_sub(from), seen.seen_ms.saturating_sub(from), seen.payload())
    });
    let (written, read, which) =
        latest.fold(
            (0, 0, String::new()),
            |(w, r, p), (a, b, q)| {
                if a > w {
                    (a, r.max(b), q)
                } else {
                    (w, r.max(b), p)
                }
            },
        );
    println!("{} back, at most {written} ms late when written ({which}), {read} ms when read", back.len());
    counts
}

fn all_back(jobs: &[Job]) -> impl Fn(&[Seen]) -> bool + '_ {
    move |seen: &[Seen]| {
        let payloads: std::collections::BTreeSet<String> = seen.iter().map(Seen::payload).collect();
        jobs.iter().all(|j| payloads.contains(&j.payload))
    }
}

fn latest_due(jobs: &[Job]) -> Duration {
    Duration::from_millis(jobs.iter().map(|j| j.due_ms).max().unwrap().saturating_sub(now_ms()))
}

/// Jobs due over four seconds, a few already due and one due sooner than
/// the smallest tier: each comes back once, with its key and payload, not
/// before its due time and within [`LATE`] after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_jobs_come_back_when_due_and_not_before() {
    let s = setup("due", 2);
    // Before anything is written: a new reader takes a moment to fetch.
    let reader = Collector::start(&s.kafka, &s.settings.jobs_topic, 2);
    // Connected early: its producer id is ready when the test starts.
    let parker = Parker::connect(&s.settings, &s.parking).unwrap();
    let mover = Mover::start(&s.settings, &s.parking).unwrap();
    joined(&mover, 2).await;
    let lateness_reports = Arc::new(AtomicUsize::new(0));
    mover.set_lateness_listener(Box::new({
        let reports = lateness_reports.clone();
        move |_| {
            reports.fetch_add(1, Ordering::Relaxed);
        }
    }));
    let start = now_ms();
    // Already due: written straight back (and the parker warmed up).
    let mut jobs = vec![Job::new("106540352242929", "{\"id\":\"past\"}", start - 1_000)];
    jobs.extend((0..24).map(|i| {
        Job::new(
            format!("10654035224292{}", i % 4),
            format!("{{\"id\":\"spread-{i}\"}}"),
            start + 400 + i * 150,
        )
    }));
    park(&parker, &mut jobs).await;
    // Due sooner than the smallest tier: parked in it, released at its due time.
    let mut soon = Job::new("106540352242929", "{\"id\":\"soon\"}", now_ms() + 150);
    park(&parker, std::slice::from_mut(&mut soon)).await;
    jobs.push(soon);
    let parked = parker.stats();
    // And any other already due when parked, if the machine was slow enough.
    assert!(parked.written_back >= 1, "the job already due went straight back");
    let in_tiers = parked.parked.iter().map(|(_, n)| n).sum::<u64>();
    assert_eq!(in_tiers + parked.written_back, 26);

    reader.wait(latest_due(&jobs) + Duration::from_secs(10), all_back(&jobs)).await;
    // Anything coming back twice would be here by now.
    let back = reader.wait(Duration::from_secs(1), |_| false).await;
    let counts = check_returns(&jobs, &back, LATE);
    assert!(counts.values().all(|&n| n == 1), "each job once: {counts:?}");

    // Everything moved is committed: nothing is left parked.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lag = mover.parked(Duration::from_secs(5)).unwrap();
        if lag.iter().all(|t| t.records == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "still parked: {lag:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = mover.stats();
    let returned: u64 = stats.tiers.iter().map(|t| t.returned).sum();
    assert_eq!(returned, in_tiers);
    assert_eq!(lateness_reports.load(Ordering::Relaxed) as u64, in_tiers);
    assert_eq!(stats.tiers.iter().map(|t| t.unreadable).sum::<u64>(), 0);
    mover.shutdown(Duration::from_secs(5));
}

/// A job due in 10.5 s, more than three times the largest tier: it takes
/// the 3 s tier three times (10.5, 7.5, 4.5 s left), then smaller ones, and
/// is back on time with its key and payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_due_beyond_the_largest_tier_chains_through_the_tiers() {
    let s = setup("chain", 1);
    // Before anything is written: a new reader takes a moment to fetch.
    let reader = Collector::start(&s.kafka, &s.settings.jobs_topic, 1);
    // Connected early: its producer id is ready when the test starts.
    let parker = Parker::connect(&s.settings, &s.parking).unwrap();
    let mover = Mover::start(&s.settings, &s.parking).unwrap();
    joined(&mover, 1).await;
    let mut job = Job::new("106540352242922", "{\"id\":\"long\"}", now_ms() + 10_500);
    park(&parker, std::slice::from_mut(&mut job)).await;

    let wait = latest_due(std::slice::from_ref(&job)) + Duration::from_secs(10);
    let back = reader.wait(wait, |seen| !seen.is_empty()).await;
    let counts = check_returns(std::slice::from_ref(&job), &back, LATE);
    assert_eq!(counts[&job.payload], 1);

    // Every hop, as written to the tiers.
    let topics = s.parking.tier_topics();
    let mut hops = BTreeMap::new();
    for (topic, delay) in topics.iter().zip(TIERS) {
        let tier = Collector::start(&s.kafka, topic, 1);
        let copies = tier.wait(Duration::from_millis(1_500), |_| false).await;
        for copy in &copies {
            assert_eq!(copy.payload(), job.payload);
            assert_eq!(copy.key.as_deref(), Some(job.key.as_bytes()));
            let release: u64 = copy.headers[PARKED_RELEASE_HEADER].parse().unwrap();
            assert!(release <= job.due_ms, "a hop released after the due time");
            // Released one tier delay after it was written.
            let from = release - delay.as_millis() as u64;
            assert!(from <= copy.written_ms && copy.written_ms - from < 1_000, "{copy:?}");
        }
        hops.insert(delay, copies.len());
    }
    assert_eq!(hops[&TIERS[2]], 3, "three hops of the largest tier: {hops:?}");
    let total: usize = hops.values().sum();
    assert_eq!(back[0].headers[PARKED_HOPS_HEADER], total.to_string(), "{hops:?}");
    mover.shutdown(Duration::from_secs(5));
}

/// Jobs due over several seconds; the first mover stops without waiting for
/// anything while jobs are held, in flight and parked; a second mover takes
/// over. Each job comes back, never early, at most twice, and no more jobs
/// twice than the first mover could have had in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_mover_loses_nothing_and_duplicates_only_what_was_in_flight() {
    let s = setup("crash", 2);
    // Before anything is written: a new reader takes a moment to fetch.
    let reader = Collector::start(&s.kafka, &s.settings.jobs_topic, 2);
    // Connected early: its producer id is ready when the test starts.
    let parker = Parker::connect(&s.settings, &s.parking).unwrap();
    let max_in_flight = 8;
    let first = ParkingSettings { max_in_flight, ..s.parking.clone() };
    let mover = Mover::start(&s.settings, &first).unwrap();
    joined(&mover, 2).await;
    let start = now_ms();
    let mut jobs: Vec<Job> = (0..40)
        .map(|i| {
            Job::new(
                format!("10654035224292{}", i % 5),
                format!("{{\"id\":\"crash-{i}\"}}"),
                start + 1_000 + i * 200,
            )
        })
        .collect();
    park(&parker, &mut jobs).await;
    // Some are back, some held or being written, the rest parked.
    reader.wait(Duration::from_millis(2_500), |_| false).await;
    let stopped_ms = now_ms();
    tokio::task::spawn_blocking(move || mover.shutdown(Duration::ZERO)).await.unwrap();
    let second = Mover::start(&s.settings, &s.parking).unwrap();

    reader.wait(latest_due(&jobs) + Duration::from_secs(20), all_back(&jobs)).await;
    let back = reader.wait(Duration::from_secs(2), |_| false).await;
    // Jobs due well after the handover are on time; those due around it
    // may be as late as the handover (the second mover joining the group).
    let settled = stopped_ms + 5_000;
    let (around, after): (Vec<Job>, Vec<Job>) = jobs.iter().cloned().partition(|j| j.due_ms < settled);
    assert!(!after.is_empty(), "some jobs are due after the handover");
    let (back_around, back_after): (Vec<Seen>, Vec<Seen>) =
        back.iter().cloned().partition(|seen| around.iter().any(|j| j.payload == seen.payload()));
    let mut all = check_returns(&around, &back_around, Duration::from_secs(30));
    all.extend(check_returns(&after, &back_after, LATE));
    assert!(all.values().all(|&n| n <= 2), "at most twice: {all:?}");
    let twice = all.values().filter(|&&n| n == 2).count();
    assert!(twice <= max_in_flight, "{twice} jobs twice, at most {max_in_flight} were in flight");
    println!("stopped after {} ms; {twice} jobs came back twice", stopped_ms - start);
    second.shutdown(Duration::from_secs(5));
}

/// A mover that stops gracefully waits for what it holds: after the
/// handover every job comes back exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_handover_moves_each_job_exactly_once() {
    let s = setup("handover", 2);
    // Before anything is written: a new reader takes a moment to fetch.
    let reader = Collector::start(&s.kafka, &s.settings.jobs_topic, 2);
    // Connected early: its producer id is ready when the test starts.
    let parker = Parker::connect(&s.settings, &s.parking).unwrap();
    let mover = Mover::start(&s.settings, &s.parking).unwrap();
    joined(&mover, 2).await;
    let start = now_ms();
    let mut jobs: Vec<Job> = (0..30)
        .map(|i| {
            Job::new(
                format!("10654035224292{}", i % 5),
                format!("{{\"id\":\"handover-{i}\"}}"),
                start + 1_000 + i * 100,
            )
        })
        .collect();
    park(&parker, &mut jobs).await;
    reader.wait(Duration::from_millis(2_000), |_| false).await;
    tokio::task::spawn_blocking(move || mover.shutdown(Duration::from_secs(10))).await.unwrap();
    let second = Mover::start(&s.settings, &s.parking).unwrap();
    reader.wait(latest_due(&jobs) + Duration::from_secs(20), all_back(&jobs)).await;
    let back = reader.wait(Duration::from_secs(2), |_| false).await;
    let counts = check_returns(&jobs, &back, Duration::from_secs(30));
    assert!(counts.values().all(|&n| n == 1), "exactly once: {counts:?}");
    second.shutdown(Duration::from_secs(5));
}

/// Records in a tier that are not parked jobs (no headers, headers that are
/// not times) go to the jobs topic at once; one whose release time is a year
/// away is looked at one tier delay after it was written. The parked jobs
/// behind them in the same partition come back on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_are_not_parked_jobs_do_not_stall_the_tier() {
    let s = setup("hostile", 1);
    // Before anything is written: a new reader takes a moment to fetch.
    let reader = Collector::start(&s.kafka, &s.settings.jobs_topic, 1);
    // Connected early: its producer id is ready when the test starts.
    let parker = Parker::connect(&s.settings, &s.parking).unwrap();
    let mover = Mover::start(&s.settings, &s.parking).unwrap();
    joined(&mover, 1).await;
    let largest = s.parking.tier_topics()[2].clone();
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", s.kafka.bootstrap_servers()).create().unwrap();
    let write = |payload: &'static str, headers: Option<OwnedHeaders>| {
        let mut record = FutureRecord::to(&largest).key("106540352242922").payload(payload);
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        let producer = producer.clone();
        async move { producer.send(record, Timeout::Never).await.map(|_| now_ms()).map_err(|(e, _)| e).unwrap() }
    };
    let garbage_at = write("garbage without headers", None).await;
    let not_times = OwnedHeaders::new()
        .insert(Header { key: PARKED_DUE_HEADER, value: Some("soon") })
        .insert(Header { key: PARKED_RELEASE_HEADER, value: Some("later") });
    let not_times_at = write("headers that are not times", Some(not_times)).await;
    let year_ms = 365 * 86_400_000;
    let far_due = now_ms() + 1_500;
    let far = OwnedHeaders::new()
        .insert(Header { key: PARKED_DUE_HEADER, value: Some(&far_due.to_string()) })
        .insert(Header { key: PARKED_RELEASE_HEADER, value: Some(&(now_ms() + year_ms).to_string()) });
    let far_at = write("released in a year", Some(far)).await;

    // Behind them in the same (only) partition of the 3 s tier.
    let start = now_ms();
    let mut jobs: Vec<Job> = (0..5)
        .map(|i| Job::new("106540352242922", format!("{{\"id\":\"behind-{i}\"}}"), start + 3_200 + i * 150))
        .collect();
    park(&parker, &mut jobs).await;

    let back = reader.wait(latest_due(&jobs) + Duration::from_secs(10), |seen| seen.len() >= 8).await;
    let find = |payload: &str| {
        back.iter().find(|seen| seen.payload() == payload).unwrap_or_else(|| panic!("{payload} not back"))
    };
    for (payload, at) in
        [("garbage without headers", garbage_at), ("headers that are not times", not_times_at)]
    {
        let seen = find(payload);
        assert!(
            seen.seen_ms - at <= LATE.as_millis() as u64,
            "{payload} seen {} ms after",
            seen.seen_ms - at
        );
        assert_eq!(seen.headers.get(PARKED_UNREADABLE_HEADER), Some(&largest));
        assert_eq!(seen.key.as_deref(), Some(&b"106540352242922"[..]));
    }
    let far_back = find("released in a year");
    assert!(far_back.written_ms >= far_due, "never before its due time");
    let bound = TIERS[2] + LATE;
    assert!(
        far_back.seen_ms - far_at <= bound.as_millis() as u64,
        "held {} ms, not at most one tier delay",
        far_back.seen_ms - far_at
    );
    let parked: Vec<Seen> =
        back.iter().filter(|seen| seen.payload().starts_with("{\"id\":\"behind")).cloned().collect();
    let counts = check_returns(&jobs, &parked, LATE);
    assert!(counts.values().all(|&n| n == 1));
    let stats = mover.stats();
    assert_eq!(stats.tiers[2].unreadable, 2);
    mover.shutdown(Duration::from_secs(5));
}
