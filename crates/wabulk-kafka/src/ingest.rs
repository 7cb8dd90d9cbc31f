//! The jobs consumer: reads `wabulk.jobs`, tracks every record handed to the
//! engine until the engine says it is done, stores each partition's contiguous
//! watermark for commit, pauses and resumes partitions for backpressure, and
//! holds a revocation until the revoked partitions' jobs in flight are
//! finished (or the engine has dropped them).
//!
//! Finished offsets above the watermark: jobs of one partition finish out of
//! order (numbers send at different rates), so at a stop or a crash some
//! offsets above the watermark are already finished. With the watermark, each
//! partition's store carries, in the offset commit metadata, the ranges of
//! offsets above it that need no more work ([`OffsetTracker::finished_above`],
//! encoded as described in `finished`: `v1:3-5,9` relative to the watermark,
//! at most 3,500 bytes, lowest ranges first). A store happens whenever the
//! watermark or that set changes, at most every 100 ms per partition (`done`
//! stores when due, the polling thread catches up within 100 ms), and always
//! with the latest set when the partition is revoked (which includes the
//! close) and in [`Ingest::commit_now`]. librdkafka's auto-commit commits a
//! stored position only when it is beyond the committed one, so when only the
//! metadata changed the polling thread commits it explicitly, at most once a
//! second. On assignment, before its first record is polled, the consumer
//! fetches each new partition's committed position and metadata and decodes
//! the finished offsets; [`Ingest::next`] does not hand out the records at
//! those offsets but tracks and resolves them at once, so the watermark moves
//! past them as if the engine had done them. Every offset in the metadata is
//! one whose result was acknowledged (or a gap that held no record), so
//! skipping it never loses a job; metadata that cannot be read is ignored
//! (those records are then sent again).
//!
//! Shape: one dedicated OS thread ("wabulk-kafka-poll") polls the consumer in
//! a loop, 100 ms at a time, whatever the engine is doing. librdkafka runs the
//! rebalance callbacks on the thread that polls, and a revocation here blocks
//! (bounded by `revoke_timeout`) until the engine has finished or forgotten
//! the revoked partitions' jobs; on a dedicated thread that wait blocks no
//! Tokio worker, and it cannot deadlock an engine whose one task both awaits
//! [`Ingest::next`] and calls [`Ingest::done`]. Because the thread polls
//! continuously, the consumer also stays in the group while every partition is
//! paused: heartbeats come from librdkafka's own background thread, and
//! `max.poll.interval.ms` is never exceeded since poll is called every 100 ms
//! (the flip side: a wedged engine is not detected by that timeout; the
//! engine's own health check has to).
//!
//! Records go from the thread to [`Ingest::next`] over an unbounded channel;
//! its length is bounded by the backpressure high-water mark, since records
//! still in the channel count as in memory.
//!
//! Assignment strategy: `cooperative-sticky` (overridable through `extra`).
//! A rebalance then revokes only the partitions that move, so an instance
//! joining or leaving does not make every other instance drop and re-read all
//! its waiting jobs, as the eager `range` strategy would.

use std::collections::{BTreeMap, VecDeque};
use std::ops::RangeInclusive;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError as RdKafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::context::{client_config, global_error, log};
use crate::finished;
use crate::{KafkaError, KafkaSettings, OffsetTracker};

/// How long one poll of the consumer blocks: the latency of noticing `stop`.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The least time between two stores of one partition's position.
const STORE_INTERVAL: Duration = Duration::from_millis(100);

/// The least time between two explicit commits of metadata-only changes.
const METADATA_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// How long an assignment waits for the new partitions' committed metadata.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(5);

/// One record read from the jobs topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// The value; empty for a tombstone.
    pub payload: Vec<u8>,
}

/// What the engine learns about partition ownership, in the order it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// These partitions are now ours; their records follow.
    Assigned(Vec<i32>),
    /// These partitions are being taken away. [`Ingest::next`] hands out no
    /// more of their records, and the revocation waits (up to
    /// `revoke_timeout`) until every job of theirs already handed out is
    /// `done` or the engine calls [`Ingest::forget`] for the partition.
    Revoked(Vec<i32>),
}

/// The jobs consumer. `Send + Sync`: share it in an `Arc` between the task
/// that reads and the tasks that acknowledge.
pub struct Ingest {
    /// Shared with the polling thread; `done` stores offsets and resumes
    /// partitions through it from whatever thread the engine calls on.
    consumer: Arc<BaseConsumer<IngestContext>>,
    /// Ownership, trackers and backpressure, shared with the rebalance
    /// callbacks that run on the polling thread.
    shared: Arc<Shared>,
    /// Records from the polling thread. An async mutex because `next` takes
    /// `&self` and awaits while holding it (there is one reader in practice).
    records: tokio::sync::Mutex<mpsc::UnboundedReceiver<Polled>>,
    /// Tells the polling thread to close the consumer and exit.
    stop: Arc<AtomicBool>,
    /// Joined on drop, so that once `Ingest` is gone the consumer has left the
    /// group and committed its stored offsets.
    poller: Option<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("topic", &self.shared.topic)
            .field("in_memory", &self.in_memory())
            .finish_non_exhaustive()
    }
}

/// What the polling thread sends to `next`.
enum Polled {
    /// `epoch` is the ownership epoch of the record's partition when it was
    /// polled: `next` drops the record if the partition was revoked (or
    /// revoked and assigned again) since.
    Record {
        epoch: u64,
        record: Record,
    },
    Fatal(RdKafkaError),
}

/// State shared by `Ingest`, the polling thread and the rebalance callbacks.
struct Shared {
    topic: String,
    max_in_memory: usize,
    resume_below: usize,
    revoke_timeout: Duration,
    /// A std mutex: nothing awaits under it, and the rebalance callback must
    /// wait on it synchronously anyway. Held briefly, per record.
    state: Mutex<State>,
    /// Signalled when a revoking partition resolves an offset or is
    /// forgotten, to wake the revocation waiting in the rebalance callback.
    settled: Condvar,
    /// Assignment events to the engine. Unbounded so that the rebalance
    /// callback never blocks on a slow engine; there is one event per
    /// rebalance, so it cannot grow in practice.
    assignments: mpsc::UnboundedSender<Assignment>,
    /// Per-partition lag from the last statistics event (every
    /// `statistics.interval.ms`), for the lag gauge.
    lag: Mutex<BTreeMap<i32, i64>>,
}

struct State {
    /// The partitions we own, each with its tracker. A partition leaves the
    /// map when its revocation completes, so late `done` calls for it are
    /// ignored and its jobs no longer count as in memory.
    owned: BTreeMap<i32, Owned>,
    /// Records polled but not yet handed out by `next` (in the channel).
    buffered: usize,
    /// Records handed out and not yet resolved, over all owned partitions.
    tracked: usize,
    /// Whether backpressure has paused the owned partitions.
    paused: bool,
    /// The consumer is closing: a revocation then does not wait for the
    /// engine, which is shutting down.
    closing: bool,
    /// Source of ownership epochs, one per partition assignment.
    next_epoch: u64,
    /// When the polling thread last committed metadata-only changes.
    metadata_committed_at: Instant,
}

struct Owned {
    epoch: u64,
    /// Reset on every assignment: offsets read again after a re-assignment
    /// are tracked afresh.
    tracker: OffsetTracker,
    /// A revocation of this partition is in progress.
    revoking: bool,
    /// The engine dropped this partition's waiting jobs: the revocation stops
    /// waiting for them.
    forgotten: bool,
    /// Offsets finished before this assignment, from the committed metadata:
    /// `next` resolves their records instead of handing them out. Ascending;
    /// ranges below the latest record are dropped as records go by.
    skip: VecDeque<RangeInclusive<i64>>,
    /// The position and metadata last stored in this assignment.
    stored: Option<(i64, String)>,
    /// When `stored` was written.
    stored_at: Option<Instant>,
    /// The tracker changed since the last store.
    dirty: bool,
    /// A store changed only the metadata, which auto-commit does not commit
    /// (it skips a position not beyond the committed one): the polling thread
    /// commits it explicitly.
    metadata_uncommitted: bool,
}

impl Owned {
    fn new(epoch: u64, skip: Vec<RangeInclusive<i64>>) -> Self {
        Owned {
            epoch,
            tracker: OffsetTracker::new(),
            revoking: false,
            forgotten: false,
            skip: skip.into(),
            stored: None,
            stored_at: None,
            dirty: false,
            metadata_uncommitted: false,
        }
    }

    /// Whether the record at `offset` was finished before this assignment.
    /// Records come in increasing offset order, so ranges below it are done
    /// with.
    fn finished_before(&mut self, offset: i64) -> bool {
        while self.skip.front().is_some_and(|range| *range.end() < offset) {
            self.skip.pop_front();
        }
        self.skip.front().is_some_and(|range| range.contains(&offset))
    }

    /// The position to store and its metadata; `None` before any record.
    fn position(&self) -> Option<(i64, String)> {
        let watermark = self.tracker.watermark()?;
        Some((watermark, finished::encode(watermark, self.tracker.finished_above())))
    }

    fn store_due(&self, now: Instant) -> bool {
        self.dirty && self.stored_at.is_none_or(|at| now.duration_since(at) >= STORE_INTERVAL)
    }
}

impl State {
    fn in_memory(&self) -> usize {
        self.buffered + self.tracked
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock leaves counters at worst slightly off; better
        // than poisoning the whole consumer.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tpl(&self, partitions: impl IntoIterator<Item = i32>) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for partition in partitions {
            tpl.add_partition(&self.topic, partition);
        }
        tpl
    }

    fn partitions_of(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition()).collect()
    }

    /// Pauses every owned partition once the high-water mark is reached.
    fn pause_if_full(&self, consumer: &BaseConsumer<IngestContext>, state: &mut State) {
        if state.paused || state.in_memory() < self.max_in_memory {
            return;
        }
        state.paused = true;
        let tpl = self.tpl(state.owned.keys().copied());
        tracing::debug!(in_memory = state.in_memory(), "backpressure: pausing the jobs topic");
        if let Err(error) = consumer.pause(&tpl) {
            tracing::warn!(%error, "could not pause the jobs topic");
        }
    }

    /// Resumes the owned partitions once below the low-water mark.
    fn resume_if_drained(&self, consumer: &BaseConsumer<IngestContext>, state: &mut State) {
        if !state.paused || state.in_memory() >= self.resume_below {
            return;
        }
        state.paused = false;
        let tpl = self.tpl(state.owned.keys().copied());
        tracing::debug!(in_memory = state.in_memory(), "backpressure: resuming the jobs topic");
        if let Err(error) = consumer.resume(&tpl) {
            tracing::warn!(%error, "could not resume the jobs topic");
        }
    }

    /// A list of positions (the next offset to consume) with their metadata.
    fn positions_tpl(&self, positions: &[(i32, i64, String)]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::with_capacity(positions.len());
        for (partition, position, metadata) in positions {
            // Only fails for a special offset value, which a position never is.
            let _ = tpl.add_partition_offset(&self.topic, *partition, Offset::Offset(*position));
            if let Some(mut element) = tpl.find_partition(&self.topic, *partition) {
                element.set_metadata(metadata);
            }
        }
        tpl
    }

    /// Stores positions and their metadata for commit.
    fn store(&self, consumer: &BaseConsumer<IngestContext>, positions: &[(i32, i64, String)]) {
        if positions.is_empty() {
            return;
        }
        // `store_offsets` (rd_kafka_offsets_store) stores the offset as given,
        // with its metadata; the older `store_offset` would store offset + 1.
        if let Err(error) = consumer.store_offsets(&self.positions_tpl(positions)) {
            // Happens only when the partition is no longer assigned (lost).
            let positions: Vec<(i32, i64)> = positions.iter().map(|(p, o, _)| (*p, *o)).collect();
            tracing::warn!(%error, ?positions, "could not store offsets");
        }
    }

    /// Stores `owned`'s position and finished offsets if they changed since
    /// its last store. Under the state lock, so that a partition's stores
    /// happen in order.
    fn store_partition(&self, consumer: &BaseConsumer<IngestContext>, partition: i32, owned: &mut Owned) {
        owned.dirty = false;
        let Some((position, metadata)) = owned.position() else {
            return;
        };
        match &owned.stored {
            Some(stored) if stored.0 == position && stored.1 == metadata => return,
            // Auto-commit commits a stored position beyond the last one.
            Some(stored) => owned.metadata_uncommitted = stored.0 == position,
            None => owned.metadata_uncommitted = false,
        }
        let entry = (partition, position, metadata);
        self.store(consumer, std::slice::from_ref(&entry));
        owned.stored = Some((entry.1, entry.2));
        owned.stored_at = Some(Instant::now());
    }

    /// On the polling thread: stores the partitions whose store was held back
    /// by `STORE_INTERVAL`, and once a second commits the metadata-only
    /// changes that auto-commit leaves out.
    fn flush(&self, consumer: &BaseConsumer<IngestContext>) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let now = Instant::now();
        for (&partition, owned) in &mut state.owned {
            if owned.store_due(now) {
                self.store_partition(consumer, partition, owned);
            }
        }
        if now.duration_since(state.metadata_committed_at) < METADATA_COMMIT_INTERVAL {
            return;
        }
        state.metadata_committed_at = now;
        let mut positions = Vec::new();
        for (&partition, owned) in &mut state.owned {
            if owned.metadata_uncommitted && !owned.revoking {
                owned.metadata_uncommitted = false;
                if let Some((position, metadata)) = &owned.stored {
                    positions.push((partition, *position, metadata.clone()));
                }
            }
        }
        if !positions.is_empty() {
            // Async: the result reaches `commit_callback`. Under the lock, so
            // it cannot overtake a later store's commit.
            if let Err(error) = consumer.commit(&self.positions_tpl(&positions), CommitMode::Async) {
                tracing::warn!(%error, "could not commit finished offsets; the next store retries");
            }
        }
    }

    /// The finished offsets of each of `partitions`, from the group's
    /// committed positions and their metadata. Bounded by
    /// `COMMITTED_TIMEOUT`; on failure nothing is skipped (jobs finished by
    /// the previous owner are then sent again).
    fn finished_of(
        &self,
        consumer: &BaseConsumer<IngestContext>,
        partitions: &[i32],
    ) -> BTreeMap<i32, Vec<RangeInclusive<i64>>> {
        let committed =
            match consumer.committed_offsets(self.tpl(partitions.iter().copied()), COMMITTED_TIMEOUT) {
                Ok(committed) => committed,
                Err(error) => {
                    tracing::warn!(%error, ?partitions, "could not fetch the committed finished offsets");
                    return BTreeMap::new();
                }
            };
        let mut finished = BTreeMap::new();
        for element in committed.elements_for_topic(&self.topic) {
            let Offset::Offset(position) = element.offset() else {
                continue;
            };
            // rdkafka panics on metadata that is not UTF-8 (written by some
            // other tool); a panic must not cross librdkafka's callback.
            let Ok(metadata) = std::panic::catch_unwind(AssertUnwindSafe(|| element.metadata().to_owned()))
            else {
                tracing::warn!(partition = element.partition(), "ignoring offset metadata that is not UTF-8");
                continue;
            };
            match finished::decode(position, &metadata) {
                Ok(ranges) if ranges.is_empty() => {}
                Ok(ranges) => {
                    tracing::debug!(partition = element.partition(), position, %metadata, "finished offsets to skip");
                    finished.insert(element.partition(), ranges);
                }
                Err(error) => {
                    tracing::warn!(partition = element.partition(), %error, %metadata, "ignoring offset metadata")
                }
            }
        }
        finished
    }

    fn assign(&self, partitions: &[i32], mut finished: BTreeMap<i32, Vec<RangeInclusive<i64>>>) {
        let mut state = self.lock();
        for &partition in partitions {
            let epoch = state.next_epoch;
            state.next_epoch += 1;
            let owned = Owned::new(epoch, finished.remove(&partition).unwrap_or_default());
            if let Some(old) = state.owned.insert(partition, owned) {
                state.tracked -= old.tracker.pending();
            }
        }
    }

    /// Runs before librdkafka unassigns `partitions`: tells the engine, waits
    /// for their jobs in flight, stores their final watermarks, forgets them.
    fn revoke(&self, consumer: &BaseConsumer<IngestContext>, partitions: &[i32]) {
        // The engine may have gone away (shutdown); nothing to tell it then.
        let _ = self.assignments.send(Assignment::Revoked(partitions.to_vec()));
        let lost = consumer.assignment_lost();
        let mut state = self.lock();
        for partition in partitions {
            if let Some(owned) = state.owned.get_mut(partition) {
                owned.revoking = true;
            }
        }
        // A lost assignment already belongs to someone else: storing or
        // committing for it fails, and waiting would only delay the rejoin.
        if !lost {
            let deadline = Instant::now() + self.revoke_timeout;
            loop {
                let unsettled: Vec<i32> = partitions
                    .iter()
                    .copied()
                    .filter(|p| state.owned.get(p).is_some_and(|o| !o.forgotten && o.tracker.pending() > 0))
                    .collect();
                if unsettled.is_empty() || state.closing {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    tracing::warn!(
                        partitions = ?unsettled,
                        timeout = ?self.revoke_timeout,
                        "revocation timed out with jobs in flight; the next owner reads them again"
                    );
                    break;
                }
                state = self
                    .settled
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            // Mostly stored already; storing again is harmless and makes the
            // final position and finished offsets explicit, however recent.
            // librdkafka's auto-commit commits the revoked partitions' stored
            // offsets (and metadata) as the revocation completes, even when
            // the position is already the committed one.
            let finals: Vec<(i32, i64, String)> = partitions
                .iter()
                .filter_map(|&p| {
                    let (position, metadata) = state.owned.get(&p)?.position()?;
                    Some((p, position, metadata))
                })
                .collect();
            self.store(consumer, &finals);
        }
        for partition in partitions {
            if let Some(owned) = state.owned.remove(partition) {
                state.tracked -= owned.tracker.pending();
            }
        }
        tracing::info!(?partitions, lost, "partitions revoked");
    }
}

/// The consumer's context: rebalance callbacks, statistics, logs.
struct IngestContext {
    shared: Arc<Shared>,
}

impl ClientContext for IngestContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log(level, fac, message);
    }

    fn error(&self, error: RdKafkaError, reason: &str) {
        global_error(&error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.shared.topic) else {
            return;
        };
        let lag = topic
            .partitions
            .iter()
            // Partition -1 is librdkafka's internal "unassigned" partition.
            .filter(|(&partition, _)| partition >= 0)
            .filter_map(|(&partition, p)| {
                // Offsets below zero are librdkafka's "not known yet".
                let lag = if p.hi_offset >= 0 && p.app_offset >= 0 {
                    p.hi_offset - p.app_offset
                } else if p.consumer_lag >= 0 {
                    p.consumer_lag
                } else {
                    return None;
                };
                Some((partition, lag.max(0)))
            })
            .collect();
        *self.shared.lag.lock().unwrap_or_else(PoisonError::into_inner) = lag;
    }
}

impl ConsumerContext for IngestContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            // Known before librdkafka assigns, so the first record polled
            // finds its partition owned, with its finished offsets.
            Rebalance::Assign(tpl) => {
                let partitions = self.shared.partitions_of(tpl);
                if partitions.is_empty() {
                    return;
                }
                let finished = self.shared.finished_of(consumer, &partitions);
                self.shared.assign(&partitions, finished);
            }
            Rebalance::Revoke(tpl) => {
                let partitions = self.shared.partitions_of(tpl);
                if !partitions.is_empty() {
                    self.shared.revoke(consumer, &partitions);
                }
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance failed"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions = self.shared.partitions_of(tpl);
                if partitions.is_empty() {
                    return;
                }
                let state = self.shared.lock();
                // Newly assigned partitions start unpaused; hold them back too
                // while backpressure is on.
                if state.paused {
                    if let Err(error) = consumer.pause(tpl) {
                        tracing::warn!(%error, "could not pause newly assigned partitions");
                    }
                }
                drop(state);
                tracing::info!(?partitions, "partitions assigned");
                let _ = self.shared.assignments.send(Assignment::Assigned(partitions));
            }
            Rebalance::Revoke(_) => {
                // The revoked partitions' jobs no longer count as in memory.
                let mut state = self.shared.lock();
                self.shared.resume_if_drained(consumer, &mut state);
            }
            Rebalance::Error(_) => {}
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(RdKafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::warn!(%error, "offset commit failed; the next one retries"),
        }
    }
}

impl Ingest {
    /// Creates the consumer, subscribes to the jobs topic and starts the
    /// polling thread. Needs no Tokio runtime. The receiver gets every
    /// assignment change, in order.
    pub fn connect(
        settings: &KafkaSettings,
    ) -> Result<(Ingest, mpsc::UnboundedReceiver<Assignment>), KafkaError> {
        settings.validate()?;
        let (assignments, assignment_events) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            topic: settings.jobs_topic.clone(),
            max_in_memory: settings.max_in_memory,
            resume_below: settings.resume_below,
            revoke_timeout: settings.revoke_timeout,
            state: Mutex::new(State {
                owned: BTreeMap::new(),
                buffered: 0,
                tracked: 0,
                paused: false,
                closing: false,
                next_epoch: 0,
                metadata_committed_at: Instant::now(),
            }),
            settled: Condvar::new(),
            assignments,
            lag: Mutex::new(BTreeMap::new()),
        });
        let config = client_config(
            &settings.brokers,
            &[
                ("partition.assignment.strategy", "cooperative-sticky"),
                ("auto.offset.reset", "earliest"),
                // How much is re-read after a crash is bounded by this too.
                ("auto.commit.interval.ms", "1000"),
                // Feeds `lag()`.
                ("statistics.interval.ms", "1000"),
                ("enable.partition.eof", "false"),
            ],
            &settings.extra,
            &[
                ("group.id", settings.group_id.as_str()),
                // `done` is the only path to the offset store...
                ("enable.auto.offset.store", "false"),
                // ...and auto-commit commits only what is stored.
                ("enable.auto.commit", "true"),
            ],
        );
        let consumer: BaseConsumer<IngestContext> = config
            .create_with_context(IngestContext { shared: shared.clone() })
            .map_err(|source| KafkaError::Client { role: "consumer", source })?;
        consumer
            .subscribe(&[&settings.jobs_topic])
            .map_err(|source| KafkaError::Subscribe { topic: settings.jobs_topic.clone(), source })?;
        let consumer = Arc::new(consumer);
        let (records_tx, records) = mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let poller = thread::Builder::new()
            .name("wabulk-kafka-poll".into())
            .spawn({
                let consumer = consumer.clone();
                let shared = shared.clone();
                let stop = stop.clone();
                move || poll_loop(&consumer, &shared, &records_tx, &stop)
            })
            .map_err(KafkaError::Thread)?;
        let ingest = Ingest {
            consumer,
            shared,
            records: tokio::sync::Mutex::new(records),
            stop,
            poller: Some(poller),
        };
        Ok((ingest, assignment_events))
    }

    /// The next record. Waits while nothing is available, including while
    /// backpressure has paused every partition (the polling thread keeps the
    /// consumer in the group meanwhile). Records of partitions revoked since
    /// they were read are skipped: their next owner reads them again. So are
    /// records whose offsets the committed metadata lists as finished before
    /// the partition was assigned: they count as done at once.
    /// Cancel-safe. An error means the consumer is finished
    /// ([`KafkaError::Closed`] or a fatal [`KafkaError::Consume`]); transient
    /// errors are logged and retried by librdkafka.
    pub async fn next(&self) -> Result<Record, KafkaError> {
        let mut records = self.records.lock().await;
        loop {
            let (epoch, record) = match records.recv().await {
                None => return Err(KafkaError::Closed),
                Some(Polled::Fatal(error)) => return Err(KafkaError::Consume(error)),
                Some(Polled::Record { epoch, record }) => (epoch, record),
            };
            let mut guard = self.shared.lock();
            let state = &mut *guard;
            state.buffered -= 1;
            let current = state
                .owned
                .get_mut(&record.partition)
                .filter(|owned| owned.epoch == epoch && !owned.revoking);
            if let Some(owned) = current {
                if owned.finished_before(record.offset) {
                    // Tracked and resolved, so the watermark moves past it.
                    owned.tracker.track(record.offset);
                    owned.tracker.resolve(record.offset);
                    owned.dirty = true;
                    tracing::trace!(
                        partition = record.partition,
                        offset = record.offset,
                        "skipping a finished job"
                    );
                } else {
                    let before = owned.tracker.pending();
                    owned.tracker.track(record.offset);
                    state.tracked += owned.tracker.pending() - before;
                    return Ok(record);
                }
            }
            self.shared.resume_if_drained(&self.consumer, state);
        }
    }

    /// The job at (`partition`, `offset`) is finished: its result or dead
    /// letter was acknowledged by Kafka. Advances the partition's watermark
    /// or adds to its finished offsets above it, and stores both for the next
    /// auto-commit (at once, or within 100 ms when the partition was stored
    /// less than 100 ms ago); resumes paused partitions once below the
    /// low-water mark. Calls for partitions no longer owned, or for
    /// offsets not handed out by `next`, are ignored.
    pub fn done(&self, partition: i32, offset: i64) {
        let mut guard = self.shared.lock();
        let state = &mut *guard;
        let Some(owned) = state.owned.get_mut(&partition) else {
            return;
        };
        let before = owned.tracker.pending();
        owned.tracker.resolve(offset);
        let resolved = before - owned.tracker.pending();
        state.tracked -= resolved;
        // `advanced` or not, a resolved offset changes what is stored: the
        // watermark or the finished offsets above it.
        if resolved > 0 {
            owned.dirty = true;
            if owned.store_due(Instant::now()) {
                // Under the lock, so that concurrent `done` calls store a
                // partition's positions in increasing order.
                self.shared.store_partition(&self.consumer, partition, owned);
            }
        }
        if owned.revoking && resolved > 0 {
            self.shared.settled.notify_all();
        }
        self.shared.resume_if_drained(&self.consumer, state);
    }

    /// After [`Assignment::Revoked`]: the engine has dropped the partition's
    /// waiting jobs, so the revocation stops waiting for them. Their offsets
    /// stay unresolved, so nothing is stored beyond the first of them and the
    /// next owner reads them again. Jobs of the partition still in flight
    /// may call `done` until the revocation completes.
    pub fn forget(&self, partition: i32) {
        let mut state = self.shared.lock();
        if let Some(owned) = state.owned.get_mut(&partition) {
            owned.forgotten = true;
            self.shared.settled.notify_all();
        }
    }

    /// Records read and not yet `done`, including those not yet handed out by
    /// `next`: what backpressure compares with the water marks.
    pub fn in_memory(&self) -> usize {
        self.shared.lock().in_memory()
    }

    /// The partitions currently owned (not being revoked), ascending.
    pub fn assigned(&self) -> Vec<i32> {
        let state = self.shared.lock();
        state.owned.iter().filter(|(_, o)| !o.revoking).map(|(&p, _)| p).collect()
    }

    /// Per owned partition: high watermark − position, from the latest
    /// statistics event (refreshed every `statistics.interval.ms`, 1 s by
    /// default), so approximate. Partitions with no statistics yet are left
    /// out.
    pub fn lag(&self) -> Vec<(i32, i64)> {
        let owned = self.assigned();
        let lag = self.shared.lag.lock().unwrap_or_else(PoisonError::into_inner);
        owned.into_iter().filter_map(|p| Some((p, *lag.get(&p)?))).collect()
    }

    /// The group's committed position of each assigned partition that has
    /// one, asked of the broker (blocks up to `timeout`). For checks and
    /// shutdown logs, not the hot path.
    pub fn committed(&self, timeout: Duration) -> Result<Vec<(i32, i64)>, KafkaError> {
        let tpl = self.consumer.committed(timeout).map_err(KafkaError::Commit)?;
        Ok(tpl
            .elements_for_topic(&self.shared.topic)
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(offset) => Some((e.partition(), offset)),
                _ => None,
            })
            .collect())
    }

    /// Stores every owned partition's latest position and finished offsets,
    /// commits them now and waits for the broker's answer (graceful
    /// shutdown: call after the last `done`). Blocks the calling thread for
    /// one round trip.
    pub fn commit_now(&self) -> Result<(), KafkaError> {
        let positions: Vec<(i32, i64, String)> = {
            let mut guard = self.shared.lock();
            let state = &mut *guard;
            let mut positions = Vec::new();
            for (&partition, owned) in &mut state.owned {
                if owned.revoking {
                    continue;
                }
                self.shared.store_partition(&self.consumer, partition, owned);
                owned.metadata_uncommitted = false;
                if let Some((position, metadata)) = &owned.stored {
                    positions.push((partition, *position, metadata.clone()));
                }
            }
            positions
        };
        if positions.is_empty() {
            return Ok(());
        }
        // Explicit offsets rather than librdkafka's stored ones: it would
        // leave out a position already committed whose metadata changed.
        match self.consumer.commit(&self.shared.positions_tpl(&positions), CommitMode::Sync) {
            Ok(()) | Err(RdKafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(error) => Err(KafkaError::Commit(error)),
        }
    }
}

impl Drop for Ingest {
    /// Closes the consumer: the final revocation stores the watermarks (it
    /// does not wait for the engine), librdkafka commits the stored offsets
    /// and leaves the group. Blocks for that, typically well under a second.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // A revocation waiting for the engine would otherwise hold the
        // polling thread, and so this drop, until `revoke_timeout`.
        self.shared.lock().closing = true;
        self.shared.settled.notify_all();
        if let Some(poller) = self.poller.take() {
            if poller.join().is_err() {
                tracing::error!("the Kafka polling thread panicked");
            }
        }
    }
}

/// The polling thread: polls until told to stop, then closes the consumer.
fn poll_loop(
    consumer: &BaseConsumer<IngestContext>,
    shared: &Shared,
    records: &mpsc::UnboundedSender<Polled>,
    stop: &AtomicBool,
) {
    let mut flushed_at = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let polled = consumer.poll(POLL_INTERVAL);
        if flushed_at.elapsed() >= STORE_INTERVAL / 2 {
            shared.flush(consumer);
            flushed_at = Instant::now();
        }
        let Some(polled) = polled else {
            continue;
        };
        let message = match polled {
            Ok(message) => message,
            Err(error @ RdKafkaError::MessageConsumptionFatal(_)) => {
                tracing::error!(%error, "fatal consumer error");
                let _ = records.send(Polled::Fatal(error));
                break;
            }
            Err(error) => {
                tracing::warn!(%error, "consumer error; librdkafka retries");
                continue;
            }
        };
        let partition = message.partition();
        let epoch = {
            let mut state = shared.lock();
            // Not owned: fetched before a revocation that has completed since.
            let Some(epoch) = state.owned.get(&partition).map(|o| o.epoch) else {
                continue;
            };
            state.buffered += 1;
            shared.pause_if_full(consumer, &mut state);
            epoch
        };
        let record = Record {
            partition,
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().unwrap_or_default().to_vec(),
        };
        if records.send(Polled::Record { epoch, record }).is_err() {
            break;
        }
    }
    // Also set here for a fatal error, where no `Ingest::drop` set it.
    shared.lock().closing = true;
    match consumer.close_queue() {
        Ok(()) => {
            while !consumer.closed() {
                consumer.poll(POLL_INTERVAL);
            }
        }
        Err(error) => tracing::warn!(%error, "could not close the consumer cleanly"),
    }
}
