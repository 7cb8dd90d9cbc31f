//! [`Mover`]: the read side. One consumer (its own group) on every tier
//! topic, one thread ("wabulk-parking-mover") that polls it, and a producer
//! (the same idempotent configuration as the results) whose
//! acknowledgements come back to that thread over a channel.
//!
//! Per assigned tier partition the thread holds the records it polled and
//! could not move yet: normally the head only, at most [`MAX_WAITING`].
//! While the head's release is more than [`PREFETCH`] away the partition
//! is paused, which also drops what librdkafka had prefetched of it; it is
//! resumed [`PREFETCH`] before, so that the records behind the head are
//! there when it goes. At the head's release the thread writes the record
//! on (re-parked, or back to the jobs topic) and goes on with the next
//! record. A record due within the smallest tier is kept in memory until
//! it is due (at most `max_in_flight` records held or written and not yet
//! acknowledged), so the partition moves on meanwhile.
//!
//! Commits: each tier partition's offsets are tracked as the jobs
//! consumer's are ([`OffsetTracker`]): an offset is resolved once its
//! write is acknowledged, and the committed position is the contiguous
//! watermark, with the resolved offsets above it in the commit metadata
//! (the `finished` format), which the next owner skips. Commits are
//! asynchronous, at most every [`COMMIT_EVERY`]; a revocation commits
//! synchronously after waiting (up to `revoke_timeout`) for the revoked
//! partitions' writes and held records.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::ops::RangeInclusive;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError as RdKafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::headers::{Parked, PARKED_UNREADABLE_HEADER};
use super::tiers::{floor_ms, system_time, Placement, Tiers};
use super::ParkingSettings;
use crate::context::{client_config, global_error, log};
use crate::finished;
use crate::output::idempotent_config;
use crate::{KafkaError, KafkaSettings, OffsetTracker};

/// The least time between two asynchronous commits: what a crash can
/// re-move besides the writes in flight.
const COMMIT_EVERY: Duration = Duration::from_millis(20);

/// The longest poll while writes are in flight: the latency of noticing
/// their acknowledgements.
const BUSY_POLL: Duration = Duration::from_millis(10);

/// The longest poll otherwise: the latency of noticing `stop`.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// A partition resumes this long before its head's time, so that the
/// records behind the head are fetched by then (a fetch after a resume
/// waits for the one in flight, up to `fetch.wait.max.ms`).
const PREFETCH: Duration = Duration::from_millis(50);

/// At most this many polled records wait per partition; more, and it is
/// paused until they have moved on.
const MAX_WAITING: usize = 64;

/// Records taken from one poll before the timers and acknowledgements are
/// looked at again.
const POLL_BATCH: usize = 256;

/// How long an assignment waits for the new partitions' committed metadata.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(5);

/// A write that failed may pass (a broker outage past `message.timeout.ms`):
/// tried again after this.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A write Kafka refused for good is retried this often (CONTRACT §5).
const REFUSED_RETRY_AFTER: Duration = Duration::from_secs(10);

/// The mover consumer's prefetch bounds. Like the jobs consumer's
/// (`CONSUMER_MEMORY_DEFAULTS`), but smaller: the mover looks at one record
/// per partition at a time, and a paused partition's prefetched records are
/// dropped anyway, so whatever is fetched beyond the head is read again.
/// librdkafka's defaults would read the tiers into memory (up to 64 MiB
/// queued, 1 MiB per partition per fetch). Overridable through `extra`.
const CONSUMER_DEFAULTS: [(&str, &str); 9] = [
    ("partition.assignment.strategy", "cooperative-sticky"),
    // A new group reads every record parked before it existed.
    ("auto.offset.reset", "earliest"),
    ("enable.partition.eof", "false"),
    ("queued.min.messages", "100"),
    ("queued.max.messages.kbytes", "1024"),
    // At least `message.max.bytes` (librdkafka's rule).
    ("fetch.max.bytes", "1048576"),
    ("max.partition.fetch.bytes", "65536"),
    // How long an empty fetch waits: a resumed partition's first fetch
    // waits for the one in flight (see `PREFETCH`); the mock cluster also
    // holds an empty fetch that long when a record arrives meanwhile.
    ("fetch.wait.max.ms", "50"),
    ("fetch.queue.backoff.ms", "20"),
];

/// Told of each job written back to the jobs topic: the time from its due
/// time to Kafka's acknowledgement of that write (its lateness; never
/// negative). Called on the mover's thread: it must be quick.
pub type LatenessListener = Box<dyn Fn(Duration) + Send + Sync>;

/// The mover: moves parked records on when their release time comes. One
/// per engine instance; instances share the tier partitions through their
/// consumer group. `Send + Sync`.
pub struct Mover {
    consumer: Arc<BaseConsumer<MoverContext>>,
    shared: Arc<Shared>,
    thread: Option<thread::JoinHandle<()>>,
}

/// Counts since the mover started, per tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierStats {
    pub delay: Duration,
    pub topic: String,
    /// Records of this tier written back to the jobs topic.
    pub returned: u64,
    /// Records the mover wrote into this tier (a job with more to wait).
    pub reparked: u64,
    /// Records of this tier without readable parking headers, written to
    /// the jobs topic at once.
    pub unreadable: u64,
}

/// What the mover has done since it started, and what it holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoverStats {
    /// Ascending by delay.
    pub tiers: Vec<TierStats>,
    /// Writes that failed (each is tried again).
    pub write_failures: u64,
    /// Records kept in memory until they are due (less than the smallest
    /// tier away).
    pub held: usize,
    /// Writes not yet acknowledged, including those waiting to be tried again.
    pub in_flight: usize,
}

/// Records parked in one tier, in the partitions assigned to this mover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierLag {
    pub delay: Duration,
    pub topic: String,
    /// High watermark − committed position, summed over the partitions.
    pub records: i64,
}

/// A tier partition: (tier index, partition).
type Tp = (usize, i32);

struct Shared {
    core: Mutex<Core>,
    counters: Arc<Counters>,
    tiers: Tiers,
    topics: Vec<String>,
    stop: AtomicBool,
    /// How long the close's revocation waits for writes and held records.
    drain: Mutex<Duration>,
    revoke_timeout: Duration,
    /// An asynchronous commit failed: commit every partition again.
    commit_failed: AtomicBool,
}

struct Counters {
    returned: Vec<AtomicU64>,
    reparked: Vec<AtomicU64>,
    unreadable: Vec<AtomicU64>,
    write_failures: AtomicU64,
    held: AtomicUsize,
    in_flight: AtomicUsize,
    lateness: RwLock<Option<LatenessListener>>,
}

struct Core {
    tiers: Tiers,
    topics: Vec<String>,
    jobs_topic: String,
    writer: Writer,
    acks: mpsc::Receiver<Ack>,
    parts: BTreeMap<Tp, Part>,
    /// Records due within the smallest tier, by due time.
    held: BinaryHeap<Reverse<Held>>,
    /// Writes that failed, to be tried again.
    retries: Vec<Retry>,
    max_in_flight: usize,
    next_epoch: u64,
    next_seq: u64,
    /// The earliest wake time of a head waiting for its release (unix ms).
    next_wake_ms: u64,
    /// A head is waiting for room (`max_in_flight`).
    room_blocked: bool,
    last_commit: Option<Instant>,
    /// A partition is dirty: commit within [`COMMIT_EVERY`].
    commit_wanted: bool,
    counters: Arc<Counters>,
}

/// The producer and its count of unacknowledged writes.
struct Writer {
    producer: ThreadedProducer<Delivery>,
    sending: usize,
}

struct Part {
    /// Writes of an earlier assignment of the partition do not touch this one.
    epoch: u64,
    tracker: OffsetTracker,
    /// Offsets the committed metadata lists as moved already.
    skip: VecDeque<RangeInclusive<i64>>,
    /// Polled, not written yet; normally at most the head.
    waiting: VecDeque<Waiting>,
    paused: bool,
    /// The position and metadata of the last commit issued.
    issued: Option<(i64, String)>,
    dirty: bool,
    /// An unreadable record was logged in this assignment.
    warned: bool,
}

struct Waiting {
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    /// `None`: no readable parking headers.
    parked: Option<Parked>,
    /// When to look at it (unix ms): its release time, but no later than
    /// one tier delay after it was written or first seen, so a release time
    /// far off (a writer's clock, hostile input) cannot hold the partition.
    wake_ms: u64,
}

/// A record to write.
struct Out {
    topic: String,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: OwnedHeaders,
}

/// Which record a write is for, and what it does.
#[derive(Debug, Clone, Copy)]
struct Token {
    tp: Tp,
    epoch: u64,
    offset: i64,
    kind: Kind,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Return { due_ms: u64 },
    Repark { into: usize },
    Unreadable,
}

struct Held {
    due_ms: u64,
    seq: u64,
    out: Out,
    token: Token,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due_ms, self.seq) == (other.due_ms, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due_ms, self.seq).cmp(&(other.due_ms, other.seq))
    }
}

struct Retry {
    at: Instant,
    out: Out,
    token: Token,
}

struct Ack {
    token: Token,
    result: Result<(), (RdKafkaError, Out)>,
}

/// The producer's context: acknowledgements to the mover's thread.
struct Delivery {
    acks: mpsc::Sender<Ack>,
}

impl ClientContext for Delivery {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log(level, fac, message);
    }

    fn error(&self, error: RdKafkaError, reason: &str) {
        global_error(&error, reason);
    }
}

impl ProducerContext for Delivery {
    type DeliveryOpaque = Box<Token>;

    fn delivery(&self, result: &DeliveryResult<'_>, token: Box<Token>) {
        let result = match result {
            Ok(_) => Ok(()),
            Err((error, message)) => Err((
                error.clone(),
                Out {
                    topic: message.topic().to_owned(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().unwrap_or_default().to_vec(),
                    // Only this crate's own headers: UTF-8 names.
                    headers: message.headers().map_or_else(OwnedHeaders::new, |h| h.detach()),
                },
            )),
        };
        // The mover is gone: nothing waits for it.
        let _ = self.acks.send(Ack { token: *token, result });
    }
}

impl Writer {
    /// Hands a record to librdkafka. Fails when its local queue is full
    /// (try again later) or the record cannot be sent at all.
    fn send(&mut self, out: &Out, token: Token) -> Result<(), Box<RdKafkaError>> {
        let mut record = BaseRecord::<[u8], [u8], Box<Token>>::with_opaque_to(&out.topic, Box::new(token))
            .payload(&out.payload[..])
            .headers(out.headers.clone());
        if let Some(key) = &out.key {
            record = record.key(&key[..]);
        }
        match self.producer.send(record) {
            Ok(()) => {
                self.sending += 1;
                Ok(())
            }
            Err((error, _)) => Err(Box::new(error)),
        }
    }
}

fn queue_full(error: &RdKafkaError) -> bool {
    error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull)
}

impl Part {
    fn new(epoch: u64, skip: VecDeque<RangeInclusive<i64>>) -> Part {
        Part {
            epoch,
            tracker: OffsetTracker::new(),
            skip,
            waiting: VecDeque::new(),
            paused: false,
            issued: None,
            dirty: false,
            warned: false,
        }
    }

    /// Whether the committed metadata lists `offset` as moved already.
    /// Records come in increasing offset order.
    fn moved_before(&mut self, offset: i64) -> bool {
        while self.skip.front().is_some_and(|range| *range.end() < offset) {
            self.skip.pop_front();
        }
        self.skip.front().is_some_and(|range| range.contains(&offset))
    }

    fn position(&self) -> Option<(i64, String)> {
        let watermark = self.tracker.watermark()?;
        Some((watermark, finished::encode(watermark, self.tracker.finished_above()).text))
    }

    /// Written and not yet acknowledged, held, or waiting to be tried again.
    fn outstanding(&self) -> usize {
        self.tracker.pending() - self.waiting.len()
    }
}

impl Core {
    fn in_flight(&self) -> usize {
        self.writer.sending + self.held.len() + self.retries.len()
    }

    fn room(&self) -> bool {
        self.in_flight() < self.max_in_flight
    }

    fn publish_gauges(&self) {
        self.counters.held.store(self.held.len(), Ordering::Relaxed);
        self.counters.in_flight.store(self.in_flight(), Ordering::Relaxed);
    }

    fn tpl(&self, tps: &[Tp]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::with_capacity(tps.len());
        for &(tier, partition) in tps {
            tpl.add_partition(&self.topics[tier], partition);
        }
        tpl
    }

    /// One round outside polling: acknowledgements, held records now due,
    /// retries, heads whose time or room has come, commits. Returns how
    /// long the next poll may block.
    fn step(&mut self, consumer: &BaseConsumer<MoverContext>, commit_failed: bool) -> Duration {
        while let Ok(ack) = self.acks.try_recv() {
            self.acknowledged(ack);
        }
        let now_ms = floor_ms(SystemTime::now());
        self.release_held(now_ms);
        self.run_retries(Instant::now());
        if now_ms >= self.next_wake_ms || (self.room_blocked && self.room()) {
            self.next_wake_ms = u64::MAX;
            self.room_blocked = false;
            let waiting: Vec<Tp> =
                self.parts.iter().filter(|(_, p)| !p.waiting.is_empty()).map(|(&tp, _)| tp).collect();
            for tp in waiting {
                self.advance(consumer, tp, now_ms);
            }
        }
        if commit_failed {
            for part in self.parts.values_mut() {
                part.issued = None;
                part.dirty = true;
            }
            self.commit_wanted = true;
        }
        if self.commit_wanted && self.last_commit.is_none_or(|at| at.elapsed() >= COMMIT_EVERY) {
            self.commit(consumer);
        }
        self.publish_gauges();
        self.poll_timeout(now_ms)
    }

    fn poll_timeout(&self, now_ms: u64) -> Duration {
        let mut timeout = if self.in_flight() > 0 || self.commit_wanted { BUSY_POLL } else { IDLE_POLL };
        let mut until = |at_ms: u64| {
            timeout = timeout.min(Duration::from_millis(at_ms.saturating_sub(now_ms)));
        };
        until(self.next_wake_ms);
        if let Some(Reverse(held)) = self.held.peek() {
            until(held.due_ms);
        }
        if let Some(retry) = self.retries.iter().map(|r| r.at).min() {
            timeout = timeout.min(retry.saturating_duration_since(Instant::now()));
        }
        timeout
    }

    /// A polled record: skipped if the committed metadata lists it as moved,
    /// else queued behind the partition's waiting records and moved as soon
    /// as its time and room allow.
    fn take(&mut self, consumer: &BaseConsumer<MoverContext>, message: &BorrowedMessage<'_>) {
        let Some(tier) = self.topics.iter().position(|t| t == message.topic()) else { return };
        let tp = (tier, message.partition());
        let Some(part) = self.parts.get_mut(&tp) else {
            // Fetched before a revocation that has completed since.
            return;
        };
        let offset = message.offset();
        part.tracker.track(offset);
        if part.moved_before(offset) {
            part.tracker.resolve(offset);
            part.dirty = true;
            self.commit_wanted = true;
            return;
        }
        let now_ms = floor_ms(SystemTime::now());
        let parked = Parked::read(message.headers());
        let delay_ms = self.tiers.delay_ms(tier);
        let wake_ms = parked.as_ref().map_or(0, |parked| {
            let mut wake = parked.release_ms.min(now_ms.saturating_add(delay_ms));
            if let Some(written) = message.timestamp().to_millis().and_then(|ms| u64::try_from(ms).ok()) {
                wake = wake.min(written.saturating_add(delay_ms));
            }
            wake
        });
        tracing::trace!(
            topic = message.topic(),
            partition = tp.1,
            offset,
            wake_in_ms = wake_ms as i64 - now_ms as i64,
            readable = parked.is_some(),
            "took a parked record"
        );
        part.waiting.push_back(Waiting {
            offset,
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().unwrap_or_default().to_vec(),
            parked,
            wake_ms,
        });
        self.advance(consumer, tp, now_ms);
    }

    /// Moves the partition's waiting records whose time has come, while
    /// there is room; then pauses the partition while its head is more than
    /// [`PREFETCH`] away, waits for room, or [`MAX_WAITING`] records wait,
    /// and resumes it otherwise: [`PREFETCH`] before the head's time, so
    /// the records behind it are fetched by then.
    fn advance(&mut self, consumer: &BaseConsumer<MoverContext>, tp: Tp, now_ms: u64) {
        let mut blocked = false;
        loop {
            let Some(part) = self.parts.get(&tp) else { return };
            let Some(head) = part.waiting.front() else { break };
            // An unreadable record goes at once.
            if head.parked.is_some() && head.wake_ms > now_ms {
                break;
            }
            if !self.room() {
                blocked = true;
                break;
            }
            let Some(part) = self.parts.get_mut(&tp) else { return };
            let Some(head) = part.waiting.pop_front() else { break };
            let epoch = part.epoch;
            if let Err(head) = self.move_on(tp, epoch, head, now_ms) {
                // librdkafka's queue is full: again on the next round.
                if let Some(part) = self.parts.get_mut(&tp) {
                    part.waiting.push_front(head);
                }
                blocked = true;
                break;
            }
        }
        self.room_blocked |= blocked;
        let Some(part) = self.parts.get(&tp) else { return };
        let prefetch_ms = PREFETCH.as_millis() as u64;
        let hold = match part.waiting.front() {
            None => false,
            Some(_) if blocked => true,
            Some(head) => {
                let near = head.wake_ms <= now_ms.saturating_add(prefetch_ms);
                let at = if near { head.wake_ms } else { head.wake_ms - prefetch_ms };
                self.next_wake_ms = self.next_wake_ms.min(at);
                !near || part.waiting.len() >= MAX_WAITING
            }
        };
        if hold != part.paused {
            let tpl = self.tpl(&[tp]);
            let Some(part) = self.parts.get_mut(&tp) else { return };
            let result = if hold { consumer.pause(&tpl) } else { consumer.resume(&tpl) };
            match result {
                Ok(()) => part.paused = hold,
                Err(error) => {
                    tracing::warn!(%error, topic = %self.topics[tp.0], partition = tp.1, hold, "could not pause or resume a tier partition")
                }
            }
        }
    }

    /// Writes (or holds) one record whose time has come; gives it back when
    /// librdkafka's queue is full.
    fn move_on(&mut self, tp: Tp, epoch: u64, head: Waiting, now_ms: u64) -> Result<(), Waiting> {
        let token = |kind| Token { tp, epoch, offset: head.offset, kind };
        let (out, token) = match &head.parked {
            None => {
                let topic = &self.topics[tp.0];
                if let Some(part) = self.parts.get_mut(&tp) {
                    if !part.warned {
                        part.warned = true;
                        tracing::warn!(
                            topic = %topic,
                            partition = tp.1,
                            offset = head.offset,
                            "a record without readable parking headers: written to the jobs topic at once (logged once per partition)"
                        );
                    }
                }
                let headers = OwnedHeaders::new_with_capacity(1)
                    .insert(Header { key: PARKED_UNREADABLE_HEADER, value: Some(topic.as_str()) });
                let out = Out {
                    topic: self.jobs_topic.clone(),
                    key: head.key.clone(),
                    payload: head.payload.clone(),
                    headers,
                };
                (out, token(Kind::Unreadable))
            }
            Some(parked) => match self.tiers.at_release(now_ms, parked.due_ms) {
                Placement::Jobs => {
                    let out = Out {
                        topic: self.jobs_topic.clone(),
                        key: head.key.clone(),
                        payload: head.payload.clone(),
                        headers: parked.jobs_headers(),
                    };
                    (out, token(Kind::Return { due_ms: parked.due_ms }))
                }
                Placement::Tier { index, release_ms } => {
                    let next = Parked { release_ms, hops: parked.hops.saturating_add(1), ..parked.clone() };
                    let out = Out {
                        topic: self.topics[index].clone(),
                        key: head.key.clone(),
                        payload: head.payload.clone(),
                        headers: next.tier_headers(),
                    };
                    (out, token(Kind::Repark { into: index }))
                }
                Placement::Hold { due_ms } => {
                    let out = Out {
                        topic: self.jobs_topic.clone(),
                        key: head.key,
                        payload: head.payload,
                        headers: parked.jobs_headers(),
                    };
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    let token = Token { tp, epoch, offset: head.offset, kind: Kind::Return { due_ms } };
                    self.held.push(Reverse(Held { due_ms, seq, out, token }));
                    return Ok(());
                }
            },
        };
        match self.writer.send(&out, token) {
            Ok(()) => Ok(()),
            Err(error) if queue_full(&error) => Err(head),
            Err(error) => {
                self.failed(&error, out, token);
                Ok(())
            }
        }
    }

    /// A write that did not reach Kafka: tried again later.
    fn failed(&mut self, error: &RdKafkaError, out: Out, token: Token) {
        self.counters.write_failures.fetch_add(1, Ordering::Relaxed);
        let refusal = KafkaError::Delivery { topic: out.topic.clone(), source: error.clone() }.refusal();
        let after = if refusal.is_some() { REFUSED_RETRY_AFTER } else { RETRY_AFTER };
        tracing::warn!(
            %error,
            topic = %out.topic,
            refusal = refusal.map(|r| r.label()),
            retry_in = ?after,
            "a parked record's write failed; trying again"
        );
        self.retries.push(Retry { at: Instant::now() + after, out, token });
    }

    fn alive(&self, token: &Token) -> bool {
        self.parts.get(&token.tp).is_some_and(|p| p.epoch == token.epoch)
    }

    fn acknowledged(&mut self, ack: Ack) {
        self.writer.sending = self.writer.sending.saturating_sub(1);
        let token = ack.token;
        match ack.result {
            Ok(()) => {
                let tier = token.tp.0;
                match token.kind {
                    Kind::Return { due_ms } => {
                        self.counters.returned[tier].fetch_add(1, Ordering::Relaxed);
                        let late =
                            SystemTime::now().duration_since(system_time(due_ms)).unwrap_or(Duration::ZERO);
                        let listener = self.counters.lateness.read().unwrap_or_else(PoisonError::into_inner);
                        if let Some(listener) = listener.as_ref() {
                            listener(late);
                        }
                    }
                    Kind::Repark { into } => {
                        self.counters.reparked[into].fetch_add(1, Ordering::Relaxed);
                    }
                    Kind::Unreadable => {
                        self.counters.unreadable[tier].fetch_add(1, Ordering::Relaxed);
                    }
                }
                if let Some(part) = self.parts.get_mut(&token.tp).filter(|p| p.epoch == token.epoch) {
                    part.tracker.resolve(token.offset);
                    part.dirty = true;
                    self.commit_wanted = true;
                }
            }
            // The partition is no longer ours: its next owner moves the
            // record again from the last commit.
            Err(_) if !self.alive(&token) => {}
            Err((error, out)) => self.failed(&error, out, token),
        }
    }

    /// Writes the held records that are due.
    fn release_held(&mut self, now_ms: u64) {
        while self.held.peek().is_some_and(|Reverse(held)| held.due_ms <= now_ms) {
            let Some(Reverse(held)) = self.held.pop() else { break };
            if !self.alive(&held.token) {
                continue;
            }
            match self.writer.send(&held.out, held.token) {
                Ok(()) => {}
                Err(error) if queue_full(&error) => {
                    self.held.push(Reverse(held));
                    break;
                }
                Err(error) => self.failed(&error, held.out, held.token),
            }
        }
    }

    fn run_retries(&mut self, now: Instant) {
        if self.retries.iter().all(|r| r.at > now) {
            return;
        }
        let (due, later): (Vec<Retry>, Vec<Retry>) =
            std::mem::take(&mut self.retries).into_iter().partition(|r| r.at <= now);
        self.retries = later;
        for retry in due {
            if !self.alive(&retry.token) {
                continue;
            }
            match self.writer.send(&retry.out, retry.token) {
                Ok(()) => {}
                Err(error) if queue_full(&error) => self.retries.push(retry),
                Err(error) => self.failed(&error, retry.out, retry.token),
            }
        }
    }

    /// Commits, asynchronously, every partition whose position or finished
    /// offsets changed since the last commit issued.
    fn commit(&mut self, consumer: &BaseConsumer<MoverContext>) {
        self.commit_wanted = false;
        let mut tpl = TopicPartitionList::new();
        for (&(tier, partition), part) in &mut self.parts {
            if !part.dirty {
                continue;
            }
            part.dirty = false;
            let Some(position) = part.position() else { continue };
            if part.issued.as_ref() == Some(&position) {
                continue;
            }
            add_position(&mut tpl, &self.topics[tier], partition, &position);
            part.issued = Some(position);
        }
        if tpl.count() == 0 {
            return;
        }
        self.last_commit = Some(Instant::now());
        if let Err(error) = consumer.commit(&tpl, CommitMode::Async) {
            tracing::warn!(%error, "could not commit tier offsets; the next commit retries");
            for part in self.parts.values_mut() {
                part.issued = None;
                part.dirty = true;
            }
            self.commit_wanted = true;
        }
    }

    /// Waits, up to `deadline`, until none of `tps` has a write in flight or
    /// a record held: acknowledgements are taken and held records written
    /// as they come due meanwhile.
    fn settle(&mut self, tps: &[Tp], deadline: Instant) {
        loop {
            while let Ok(ack) = self.acks.try_recv() {
                self.acknowledged(ack);
            }
            let now_ms = floor_ms(SystemTime::now());
            self.release_held(now_ms);
            self.run_retries(Instant::now());
            let busy = tps.iter().any(|tp| self.parts.get(tp).is_some_and(|p| p.outstanding() > 0));
            let now = Instant::now();
            if !busy || now >= deadline {
                return;
            }
            let wait = self.poll_timeout(now_ms).max(Duration::from_millis(1)).min(deadline - now);
            match self.acks.recv_timeout(wait) {
                Ok(ack) => self.acknowledged(ack),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Commits the positions of `tps` synchronously.
    fn commit_final(&mut self, consumer: &BaseConsumer<MoverContext>, tps: &[Tp]) {
        let mut tpl = TopicPartitionList::new();
        for tp in tps {
            let Some(part) = self.parts.get(tp) else { continue };
            if let Some(position) = part.position() {
                add_position(&mut tpl, &self.topics[tp.0], tp.1, &position);
            }
        }
        if tpl.count() == 0 {
            return;
        }
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) | Err(RdKafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::warn!(
                %error,
                "could not commit revoked tier partitions; their next owner moves again what was moved since the last commit"
            ),
        }
    }

    fn assign(&mut self, tps: &[Tp], mut committed: BTreeMap<Tp, Vec<RangeInclusive<i64>>>) {
        for &tp in tps {
            let epoch = self.next_epoch;
            self.next_epoch += 1;
            let skip = committed.remove(&tp).unwrap_or_default();
            self.parts.insert(tp, Part::new(epoch, skip.into()));
        }
    }

    fn remove(&mut self, tps: &[Tp]) {
        for tp in tps {
            self.parts.remove(tp);
        }
        let parts = &self.parts;
        let alive = |token: &Token| parts.get(&token.tp).is_some_and(|p| p.epoch == token.epoch);
        self.held.retain(|Reverse(held)| alive(&held.token));
        self.retries.retain(|retry| alive(&retry.token));
        self.publish_gauges();
    }
}

fn add_position(
    tpl: &mut TopicPartitionList,
    topic: &str,
    partition: i32,
    (offset, metadata): &(i64, String),
) {
    // Only fails for a special offset value, which a position never is.
    let _ = tpl.add_partition_offset(topic, partition, Offset::Offset(*offset));
    if let Some(mut element) = tpl.find_partition(topic, partition) {
        element.set_metadata(metadata);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tps_of(&self, tpl: &TopicPartitionList) -> Vec<Tp> {
        tpl.elements()
            .iter()
            .filter_map(|e| Some((self.topics.iter().position(|t| t == e.topic())?, e.partition())))
            .collect()
    }

    /// The moved offsets each partition's committed metadata lists. On
    /// failure none: those records are moved again (duplicates, not losses).
    fn committed_of(
        &self,
        consumer: &BaseConsumer<MoverContext>,
        tpl: &TopicPartitionList,
    ) -> BTreeMap<Tp, Vec<RangeInclusive<i64>>> {
        let committed = match consumer.committed_offsets(tpl.clone(), COMMITTED_TIMEOUT) {
            Ok(committed) => committed,
            Err(error) => {
                tracing::warn!(%error, "could not fetch the tier partitions' committed offsets");
                return BTreeMap::new();
            }
        };
        let mut moved = BTreeMap::new();
        for element in committed.elements() {
            let Offset::Offset(position) = element.offset() else { continue };
            let Some(tier) = self.topics.iter().position(|t| t == element.topic()) else { continue };
            // rdkafka panics on metadata that is not UTF-8 (another tool's).
            let Ok(metadata) = catch_unwind(AssertUnwindSafe(|| element.metadata().to_owned())) else {
                continue;
            };
            match finished::decode(position, &metadata) {
                Ok(ranges) => {
                    moved.insert((tier, element.partition()), ranges);
                }
                Err(error) => tracing::warn!(
                    topic = element.topic(),
                    partition = element.partition(),
                    %error,
                    "ignoring the offset metadata of a tier partition"
                ),
            }
        }
        moved
    }

    fn revoke(&self, consumer: &BaseConsumer<MoverContext>, tps: &[Tp]) {
        let lost = consumer.assignment_lost();
        let wait = if self.stop.load(Ordering::Relaxed) {
            *self.drain.lock().unwrap_or_else(PoisonError::into_inner)
        } else {
            self.revoke_timeout
        };
        let mut core = self.lock();
        // A lost assignment may already be someone else's: nothing to commit.
        if !lost {
            core.settle(tps, Instant::now() + wait);
            let left: usize = tps.iter().filter_map(|tp| core.parts.get(tp)).map(Part::outstanding).sum();
            if left > 0 {
                tracing::warn!(
                    left,
                    "tier partitions revoked with writes in flight; their next owner may move those records again"
                );
            }
            core.commit_final(consumer, tps);
        }
        core.remove(tps);
        tracing::info!(partitions = tps.len(), lost, "tier partitions revoked");
    }
}

/// The consumer's context: rebalances and commit results.
struct MoverContext {
    shared: Arc<Shared>,
}

impl ClientContext for MoverContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log(level, fac, message);
    }

    fn error(&self, error: RdKafkaError, reason: &str) {
        global_error(&error, reason);
    }
}

impl ConsumerContext for MoverContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let tps = self.shared.tps_of(tpl);
                if tps.is_empty() {
                    return;
                }
                let committed = self.shared.committed_of(consumer, tpl);
                self.shared.lock().assign(&tps, committed);
            }
            Rebalance::Revoke(tpl) => {
                let tps = self.shared.tps_of(tpl);
                if !tps.is_empty() {
                    self.shared.revoke(consumer, &tps);
                }
            }
            Rebalance::Error(error) => tracing::warn!(%error, "tier rebalance failed"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // A partition paused in an earlier assignment here starts afresh.
            if let Err(error) = consumer.resume(tpl) {
                tracing::debug!(%error, "could not resume newly assigned tier partitions");
            }
            tracing::info!(partitions = tpl.count(), "tier partitions assigned");
        }
    }

    /// Not the state lock: a synchronous commit (in a revocation, under
    /// that lock) may call this on the same thread.
    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match &result {
            Ok(()) | Err(RdKafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                tracing::warn!(%error, "tier offset commit failed; committing again");
                self.shared.commit_failed.store(true, Ordering::Relaxed);
            }
        }
    }
}

impl std::fmt::Debug for Mover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mover").field("topics", &self.shared.topics).finish_non_exhaustive()
    }
}

impl Mover {
    /// Creates the consumer (group `parking.group_id`, by default
    /// `{kafka.group_id}.parking`) and the producer, subscribes to every
    /// tier topic and starts the mover's thread. Needs no Tokio runtime.
    pub fn start(kafka: &KafkaSettings, parking: &ParkingSettings) -> Result<Mover, KafkaError> {
        let tiers = parking.validate()?;
        let topics = parking.tier_topics();
        let group_id = parking.group_id(kafka);
        let config = client_config(
            &kafka.brokers,
            &CONSUMER_DEFAULTS,
            &kafka.extra,
            &[
                ("group.id", group_id.as_str()),
                // Commits are the mover's own, after the acknowledgements.
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
            ],
        );
        let (acks_tx, acks) = mpsc::channel();
        let producer: ThreadedProducer<Delivery> = idempotent_config(kafka)
            .create_with_context(Delivery { acks: acks_tx })
            .map_err(|source| KafkaError::Client { role: "parking mover producer", source })?;
        let counters = Arc::new(Counters {
            returned: (0..tiers.len()).map(|_| AtomicU64::new(0)).collect(),
            reparked: (0..tiers.len()).map(|_| AtomicU64::new(0)).collect(),
            unreadable: (0..tiers.len()).map(|_| AtomicU64::new(0)).collect(),
            write_failures: AtomicU64::new(0),
            held: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            lateness: RwLock::new(None),
        });
        let core = Core {
            tiers: tiers.clone(),
            topics: topics.clone(),
            jobs_topic: kafka.jobs_topic.clone(),
            writer: Writer { producer, sending: 0 },
            acks,
            parts: BTreeMap::new(),
            held: BinaryHeap::new(),
            retries: Vec::new(),
            max_in_flight: parking.max_in_flight,
            next_epoch: 0,
            next_seq: 0,
            next_wake_ms: u64::MAX,
            room_blocked: false,
            last_commit: None,
            commit_wanted: false,
            counters: counters.clone(),
        };
        let shared = Arc::new(Shared {
            core: Mutex::new(core),
            counters,
            drain: Mutex::new(default_drain(&tiers)),
            tiers,
            topics: topics.clone(),
            stop: AtomicBool::new(false),
            revoke_timeout: kafka.revoke_timeout,
            commit_failed: AtomicBool::new(false),
        });
        let consumer: BaseConsumer<MoverContext> = config
            .create_with_context(MoverContext { shared: shared.clone() })
            .map_err(|source| KafkaError::Client { role: "parking mover consumer", source })?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|source| KafkaError::Subscribe { topic: topics.join(", "), source })?;
        let consumer = Arc::new(consumer);
        let thread = thread::Builder::new()
            .name("wabulk-parking-mover".into())
            .spawn({
                let consumer = consumer.clone();
                let shared = shared.clone();
                move || run(&consumer, &shared)
            })
            .map_err(KafkaError::Thread)?;
        Ok(Mover { consumer, shared, thread: Some(thread) })
    }

    /// Whether the mover's thread is still running (it stops on a fatal
    /// consumer error, and on shutdown).
    pub fn running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// How many tier partitions are assigned to this mover (none until it
    /// has joined its group).
    pub fn assigned(&self) -> usize {
        self.consumer.assignment().map_or(0, |tpl| tpl.count())
    }

    /// The counts so far, and what is held now.
    pub fn stats(&self) -> MoverStats {
        let c = &self.shared.counters;
        let tiers = (0..self.shared.tiers.len())
            .map(|i| TierStats {
                delay: self.shared.tiers.delay(i),
                topic: self.shared.topics[i].clone(),
                returned: c.returned[i].load(Ordering::Relaxed),
                reparked: c.reparked[i].load(Ordering::Relaxed),
                unreadable: c.unreadable[i].load(Ordering::Relaxed),
            })
            .collect();
        MoverStats {
            tiers,
            write_failures: c.write_failures.load(Ordering::Relaxed),
            held: c.held.load(Ordering::Relaxed),
            in_flight: c.in_flight.load(Ordering::Relaxed),
        }
    }

    /// Sets the listener told of each return's lateness, replacing any
    /// earlier one.
    pub fn set_lateness_listener(&self, listener: LatenessListener) {
        *self.shared.counters.lateness.write().unwrap_or_else(PoisonError::into_inner) = Some(listener);
    }

    /// Records parked per tier in the partitions assigned to this mover:
    /// high watermark − committed position (the low watermark where nothing
    /// is committed yet), asked of the brokers. Blocks for a few round trips
    /// (each up to `timeout`): call it from a blocking context, every few
    /// seconds at most. The records a mover holds count until their moves
    /// are committed.
    pub fn parked(&self, timeout: Duration) -> Result<Vec<TierLag>, KafkaError> {
        let metadata_error =
            |source| KafkaError::Metadata { topic: self.shared.topics.join(", "), source: Some(source) };
        let assignment = self.consumer.assignment().map_err(metadata_error)?;
        let committed = self.consumer.committed_offsets(assignment, timeout).map_err(metadata_error)?;
        let mut records = vec![0i64; self.shared.topics.len()];
        for element in committed.elements() {
            let Some(tier) = self.shared.topics.iter().position(|t| t == element.topic()) else { continue };
            let (low, high) =
                self.consumer.fetch_watermarks(element.topic(), element.partition(), timeout).map_err(
                    |source| KafkaError::Metadata { topic: element.topic().into(), source: Some(source) },
                )?;
            let from = match element.offset() {
                Offset::Offset(offset) => offset.max(low),
                _ => low,
            };
            records[tier] += (high - from).max(0);
        }
        Ok(records
            .into_iter()
            .enumerate()
            .map(|(i, records)| TierLag {
                delay: self.shared.tiers.delay(i),
                topic: self.shared.topics[i].clone(),
                records,
            })
            .collect())
    }

    /// Stops taking records, waits up to `timeout` for the writes in flight
    /// and for the held records to come due and be written, commits what
    /// was acknowledged, and leaves the group. What it did not wait for is
    /// moved again by the partitions' next owner: a held record is then
    /// written once, by that owner; a write in flight may be written twice.
    pub fn shutdown(mut self, timeout: Duration) {
        self.stop(timeout);
    }

    fn stop(&mut self, timeout: Duration) {
        *self.shared.drain.lock().unwrap_or_else(PoisonError::into_inner) = timeout;
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the parking mover's thread panicked");
            }
        }
    }
}

impl Drop for Mover {
    /// [`Mover::shutdown`] with the default wait: the smallest tier (the
    /// longest a record is held) and 5 seconds for the writes.
    fn drop(&mut self) {
        let timeout = default_drain(&self.shared.tiers);
        self.stop(timeout);
    }
}

fn default_drain(tiers: &Tiers) -> Duration {
    tiers.delay(0) + Duration::from_secs(5)
}

/// The mover's thread: rounds of timers and acknowledgements, then a poll
/// for the next records, until told to stop; then the close, whose final
/// revocation waits for what is in flight and commits.
fn run(consumer: &BaseConsumer<MoverContext>, shared: &Shared) {
    while !shared.stop.load(Ordering::Relaxed) {
        let timeout = {
            let commit_failed = shared.commit_failed.swap(false, Ordering::Relaxed);
            shared.lock().step(consumer, commit_failed)
        };
        let mut polled = consumer.poll(timeout);
        let mut taken = 0;
        while let Some(result) = polled {
            match result {
                Ok(message) => shared.lock().take(consumer, &message),
                Err(error @ RdKafkaError::MessageConsumptionFatal(_)) => {
                    tracing::error!(%error, "fatal error of the parking mover's consumer; the mover stops");
                    shared.stop.store(true, Ordering::Relaxed);
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "parking mover consumer error; librdkafka retries");
                    break;
                }
            }
            taken += 1;
            if taken == POLL_BATCH {
                break;
            }
            polled = consumer.poll(Duration::ZERO);
        }
    }
    match consumer.close_queue() {
        Ok(()) => {
            while !consumer.closed() {
                consumer.poll(BUSY_POLL);
            }
        }
        Err(error) => tracing::warn!(%error, "could not close the parking mover's consumer cleanly"),
    }
}
