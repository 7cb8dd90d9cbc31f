//! The jobs consumer: reads `wabulk.jobs`, tracks every record handed to the
//! engine until the engine says it is done, commits each partition's
//! contiguous watermark promptly, pauses and resumes partitions for
//! backpressure, and holds a revocation until the revoked partitions' jobs in
//! flight are finished (or the engine has dropped them).
//!
//! Finished offsets above the watermark: jobs of one partition finish out of
//! order (numbers send at different rates), so at a stop or a crash some
//! offsets above the watermark are already finished. With the watermark, each
//! partition's commit carries, in the offset commit metadata, the ranges of
//! offsets above it that need no more work ([`OffsetTracker::finished_above`],
//! encoded as described in `finished`: `v1:3-5,9` relative to the watermark,
//! at most 3,500 bytes, lowest ranges first). On assignment, before its first
//! record is polled, the consumer fetches each new partition's committed
//! position and metadata and decodes the finished offsets; [`Ingest::next`]
//! does not hand out the records at those offsets but tracks and resolves
//! them at once, so the watermark moves past them as if the engine had done
//! them. Every offset in the metadata is one whose result was acknowledged
//! (or a gap that held no record), so skipping it never loses a job; metadata
//! that cannot be read is ignored (those records are then sent again).
//!
//! Commits: this consumer owns them (`enable.auto.commit=false`; the offset
//! store is not used). What a crash re-sends is every job done since the last
//! commit the broker acknowledged, so commits follow the dones closely:
//! whenever a partition's watermark or finished offsets changed, a
//! dedicated committer thread ("wabulk-kafka-commit") commits every changed
//! partition (explicit positions with their metadata) synchronously, one
//! commit at a time and at least [`COMMIT_FLOOR`] apart; what is done while
//! one is under way goes in the next. (Synchronous on its own thread because
//! rdkafka reports a manual asynchronous commit's answer nowhere that could
//! chain the next one.) Commits are taken under the `commit_order` lock, in
//! the order of the data they carry, so a later commit is never overtaken by
//! an earlier one. A failed commit marks its partitions to be committed
//! again. A revocation (including the final one of the close) commits the
//! revoked partitions' final positions
//! synchronously before giving them up, and [`Ingest::commit_now`] (graceful
//! shutdown) waits for the outstanding commit, then commits everything
//! synchronously. A lost assignment commits nothing: the partitions may
//! already belong to someone else (but see "Lost assignments" below). The
//! time from `done` to the broker's
//! acknowledgement of the commit that covers it, and the count of jobs in
//! between, are reported to the [`CommitListener`] (the engine's
//! `wabulk_commit_lag_seconds` and `wabulk_uncommitted_jobs`).
//!
//! Lost assignments: when the session expires (a broker outage longer than
//! `session.timeout.ms`), librdkafka revokes the assignment as lost, and
//! nothing can be committed for it. The jobs of it done before the loss but
//! not yet committed, and those still being worked on (sent during the
//! outage, their results acknowledged only once the broker is back), would
//! then all be handed out and sent again when the partition comes back. So
//! a lost revocation keeps, per partition, what that ownership finished
//! (every offset it read below its watermark, and the finished ranges above
//! it) in a side table (`lost`), and a `done` for a partition in that table
//! (a job of the lost ownership, done late) adds its offset there. When the
//! partition is assigned to this consumer again, the assignment first waits
//! (up to `revoke_timeout`, in the rebalance callback, as a revocation
//! does) until no job of the lost ownership is left with the engine (each is
//! done, or the engine calls [`Ingest::forget`] for the partition, which it
//! does once nothing of it is outstanding), then merges the remembered
//! offsets at or above the newly fetched committed position into those the
//! commit metadata lists: `next` resolves their records without handing them
//! out, and the commits move past them. Skipping them is correct whoever
//! owned the partition meanwhile: each has an acknowledged result. A `done`
//! after that, for an offset the new ownership handed out, resolves it there
//! (again: its result is acknowledged; the new copy, if sent, is a
//! duplicate, and its own `done` is then ignored); for an offset of the lost
//! ownership not read again yet, it is added to the offsets to skip. Bounds:
//! one entry per partition, consumed by the partition's next assignment here
//! or dropped after 10 minutes; at most 4,096 ranges per entry (when full, a
//! new range displaces the highest: offsets left out are only sent again).
//! If the partition goes to another consumer instead, that consumer re-sends
//! what the lost ownership finished after its last commit (CONTRACT §5).
//!
//! Shape: one dedicated OS thread ("wabulk-kafka-poll") polls the consumer in
//! a loop, 10 ms at a time, whatever the engine is doing. librdkafka runs the
//! rebalance callbacks on the thread that polls, and a revocation here blocks
//! (bounded by `revoke_timeout`) until the engine has finished or forgotten
//! the revoked partitions' jobs; on a dedicated thread that wait blocks no
//! Tokio worker, and it cannot deadlock an engine whose one task both awaits
//! [`Ingest::next`] and calls [`Ingest::done`]. Because the thread polls
//! continuously, the consumer also stays in the group while every partition is
//! paused: heartbeats come from librdkafka's own background thread, and
//! `max.poll.interval.ms` is never exceeded since poll is called every 10 ms
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

use std::collections::{BTreeMap, HashMap, VecDeque};
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
use crate::lost::{self, LostPartition};
use crate::{KafkaError, KafkaSettings, OffsetTracker};

/// How long one poll of the consumer blocks: the latency of noticing `stop`.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The least time between the starts of two commits of the committer thread:
/// a busy engine commits at most 100 times a second, each commit covering
/// every job done meanwhile.
pub const COMMIT_FLOOR: Duration = Duration::from_millis(10);

/// How long the committer thread waits for work before checking `stop`.
const COMMITTER_IDLE: Duration = Duration::from_millis(100);

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
    /// Shared with the polling thread; `done` commits offsets and resumes
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
    /// Joined on drop, so that once `Ingest` is gone the consumer has
    /// committed its final offsets and left the group.
    poller: Option<thread::JoinHandle<()>>,
    /// The committer thread; joined on drop, before the poller.
    committer: Option<thread::JoinHandle<()>>,
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
    /// Signalled when a partition becomes dirty (and on stop), to wake the
    /// committer thread.
    commit_wanted: Condvar,
    /// Held from taking positions to recording the broker's answer, by
    /// whoever commits (the committer thread, a revocation, `commit_now`):
    /// one commit at a time, issued in the order of the data it carries, so
    /// that a later commit is never overtaken by an earlier one. Taken before
    /// the state lock, never while holding it.
    commit_order: Mutex<()>,
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
    /// What each partition whose assignment was lost had finished, kept
    /// for its next assignment here (see the module docs and `lost`).
    lost: HashMap<i32, LostPartition>,
    /// The asynchronous commits and what they cover.
    commits: Commits,
}

/// Told of every change in the number of jobs done but not yet covered by a
/// commit the broker acknowledged: `delta` is +1 per [`Ingest::done`], and
/// negative when a commit covering jobs is acknowledged (`lags` then holds,
/// for each of them, the time from its `done` to that acknowledgement) or
/// when they are dropped uncommitted (a failed revocation commit, or a lost
/// assignment's jobs when the partition is assigned here again, to be
/// skipped, or when it does not come back within 10 minutes: `lags` is
/// empty). A lost assignment's jobs, including those done after the loss,
/// count until then. The sum of the deltas is
/// the current count. Called under the consumer's state lock, from the
/// thread that calls `done` or from the polling thread: it must be quick and
/// must not call into [`Ingest`].
pub type CommitListener = Box<dyn Fn(i64, &[Duration]) + Send + Sync>;

/// One partition's position in a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Position {
    partition: i32,
    /// The ownership epoch it was taken in: an answer for an older epoch
    /// does not touch the partition's new assignment.
    epoch: u64,
    offset: i64,
    metadata: String,
}

/// A partition's committed position, and the finished offsets above it
/// that its metadata lists.
struct Committed {
    position: i64,
    finished: Vec<RangeInclusive<i64>>,
}

/// Drops the lost partitions' entries older than [`lost::LOST_TTL`]: their
/// jobs done are then sent again if the partition comes back.
fn expire_lost(state: &mut State, now: Instant) {
    if state.lost.is_empty() {
        return;
    }
    let expired: Vec<i32> = state.lost.iter().filter(|(_, l)| l.expired(now)).map(|(&p, _)| p).collect();
    for partition in expired {
        if let Some(entry) = state.lost.remove(&partition) {
            tracing::debug!(partition, "forgetting what a lost assignment finished: it did not come back");
            state.commits.report(-(entry.uncommitted as i64), &[]);
        }
    }
}

/// The commit state shared by all partitions.
#[derive(Default)]
struct Commits {
    /// A partition may be dirty: the committer has work.
    wanted: bool,
    /// The consumer is stopping: the committer exits.
    stop: bool,
    listener: Option<CommitListener>,
}

impl Commits {
    fn report(&self, delta: i64, lags: &[Duration]) {
        if let Some(listener) = &self.listener {
            if delta != 0 || !lags.is_empty() {
                listener(delta, lags);
            }
        }
    }
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
    /// Offsets finished before this assignment, from the committed metadata
    /// and from a lost assignment of the partition here: `next` resolves
    /// their records instead of handing them out. Ascending, disjoint;
    /// ranges below the latest record are dropped as records go by.
    skip: VecDeque<RangeInclusive<i64>>,
    /// The offsets read (handed out or skipped) in this assignment, from the
    /// first to the latest; records come in increasing offset order.
    read: Option<RangeInclusive<i64>>,
    /// The offsets a lost assignment of this partition here had read: its
    /// jobs may still be done, and those not read yet in this assignment
    /// are then skipped too.
    inherited: Option<RangeInclusive<i64>>,
    /// The tracker changed since the last commit was issued.
    dirty: bool,
    /// The position and metadata of the last commit issued in this
    /// assignment (set back to `committed` when that commit fails).
    issued: Option<(i64, String)>,
    /// The position and metadata of the last commit the broker acknowledged.
    committed: Option<(i64, String)>,
    /// When each job done since the last acknowledged commit was done,
    /// oldest first: what a crash would send again.
    done_at: VecDeque<Instant>,
}

impl Owned {
    fn new(epoch: u64, skip: VecDeque<RangeInclusive<i64>>, inherited: Option<RangeInclusive<i64>>) -> Self {
        Owned {
            epoch,
            tracker: OffsetTracker::new(),
            revoking: false,
            forgotten: false,
            skip,
            read: None,
            inherited,
            dirty: false,
            issued: None,
            committed: None,
            done_at: VecDeque::new(),
        }
    }

    /// Whether the record at `offset` was finished before this assignment.
    /// Records come in increasing offset order, so ranges below it are done
    /// with.
    fn finished_before(&mut self, offset: i64) -> bool {
        self.read = Some(self.read.as_ref().map_or(offset, |read| *read.start())..=offset);
        while self.skip.front().is_some_and(|range| *range.end() < offset) {
            self.skip.pop_front();
        }
        self.skip.front().is_some_and(|range| range.contains(&offset))
    }

    /// A job of a lost assignment of this partition here, at `offset`, is
    /// done (its result acknowledged after the loss): when this assignment
    /// has not read that far yet, its record is skipped. Whether it will be.
    fn inherit(&mut self, offset: i64) -> bool {
        let ahead = self.read.as_ref().is_none_or(|read| offset > *read.end());
        ahead
            && self.inherited.as_ref().is_some_and(|inherited| inherited.contains(&offset))
            && lost::insert(&mut self.skip, offset, lost::MAX_SKIP_RANGES)
    }

    /// The position to commit and its metadata; `None` before any record.
    fn position(&self) -> Option<(i64, String)> {
        let watermark = self.tracker.watermark()?;
        Some((watermark, finished::encode(watermark, self.tracker.finished_above())))
    }

    /// The position to commit when it differs from the last one issued.
    fn changed(&mut self, partition: i32) -> Option<Position> {
        self.dirty = false;
        let (offset, metadata) = self.position()?;
        if self.issued.as_ref().is_some_and(|(o, m)| *o == offset && *m == metadata) {
            return None;
        }
        Some(Position { partition, epoch: self.epoch, offset, metadata })
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
    fn positions_tpl(&self, positions: &[Position]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::with_capacity(positions.len());
        for position in positions {
            // Only fails for a special offset value, which a position never is.
            let _ =
                tpl.add_partition_offset(&self.topic, position.partition, Offset::Offset(position.offset));
            if let Some(mut element) = tpl.find_partition(&self.topic, position.partition) {
                element.set_metadata(&position.metadata);
            }
        }
        tpl
    }

    /// The positions to commit of every owned partition whose position or
    /// finished offsets changed since the last commit issued (revoking
    /// partitions are left to their revocation), each with the count of its
    /// jobs done so far, which the commit covers. Marks them issued.
    fn changed_positions(state: &mut State) -> (Vec<Position>, Vec<usize>) {
        let mut positions = Vec::new();
        let mut snapshot = Vec::new();
        for (&partition, owned) in &mut state.owned {
            if !owned.dirty || owned.revoking {
                continue;
            }
            if let Some(position) = owned.changed(partition) {
                owned.issued = Some((position.offset, position.metadata.clone()));
                snapshot.push(owned.done_at.len());
                positions.push(position);
            }
        }
        (positions, snapshot)
    }

    /// Commits `positions` synchronously and records the answer: on success
    /// each partition's jobs done before the positions were taken (`snapshot`,
    /// the count of `done_at` then) are committed and reported with their
    /// lags; on failure the partitions are to be committed again. Partitions
    /// revoked (or re-assigned) since are left alone. Call with
    /// `commit_order` held and without the state lock: it blocks for a round
    /// trip.
    fn commit_sync(
        &self,
        consumer: &BaseConsumer<IngestContext>,
        positions: &[Position],
        snapshot: &[usize],
    ) -> Result<(), KafkaError> {
        let result = match consumer.commit(&self.positions_tpl(positions), CommitMode::Sync) {
            Ok(()) | Err(RdKafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(error) => Err(KafkaError::Commit(error)),
        };
        let now = Instant::now();
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut lags = Vec::new();
        for (position, &covered) in positions.iter().zip(snapshot) {
            let Some(owned) = state.owned.get_mut(&position.partition).filter(|o| o.epoch == position.epoch)
            else {
                continue;
            };
            if result.is_ok() {
                let covered = covered.min(owned.done_at.len());
                lags.extend(owned.done_at.drain(..covered).map(|at| now.saturating_duration_since(at)));
                owned.committed = Some((position.offset, position.metadata.clone()));
            } else {
                owned.issued = owned.committed.clone();
                owned.dirty = true;
                state.commits.wanted = true;
            }
        }
        state.commits.report(-(lags.len() as i64), &lags);
        result
    }

    /// The group's committed position of each of `partitions` that has one,
    /// with the finished offsets its metadata lists. Bounded by
    /// `COMMITTED_TIMEOUT`; on failure nothing is skipped (jobs finished by
    /// the previous owner are then sent again), and metadata that cannot be
    /// read lists nothing.
    fn finished_of(
        &self,
        consumer: &BaseConsumer<IngestContext>,
        partitions: &[i32],
    ) -> BTreeMap<i32, Committed> {
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
                finished.insert(element.partition(), Committed { position, finished: Vec::new() });
                continue;
            };
            let ranges = match finished::decode(position, &metadata) {
                Ok(ranges) => {
                    if !ranges.is_empty() {
                        tracing::debug!(partition = element.partition(), position, %metadata, "finished offsets to skip");
                    }
                    ranges
                }
                Err(error) => {
                    tracing::warn!(partition = element.partition(), %error, %metadata, "ignoring offset metadata");
                    Vec::new()
                }
            };
            finished.insert(element.partition(), Committed { position, finished: ranges });
        }
        finished
    }

    /// Takes `partitions` on, each skipping what its committed metadata
    /// lists and, when its assignment here was lost before, what that
    /// assignment finished.
    fn assign(&self, partitions: &[i32], mut committed: BTreeMap<i32, Committed>) {
        let mut guard = self.lock();
        let state = &mut *guard;
        expire_lost(state, Instant::now());
        for &partition in partitions {
            let epoch = state.next_epoch;
            state.next_epoch += 1;
            let (position, finished) =
                committed.remove(&partition).map_or((None, Vec::new()), |c| (Some(c.position), c.finished));
            let (skip, inherited) = match state.lost.remove(&partition) {
                Some(lost) => {
                    let remembered = lost.finished_count();
                    // They count as committed from now on: their records are
                    // skipped, and committed with the watermark past them.
                    state.commits.report(-(lost.uncommitted as i64), &[]);
                    let (skip, inherited) = lost.merge_into(position, finished);
                    tracing::info!(
                        partition,
                        ?position,
                        remembered,
                        ranges = skip.len(),
                        "skipping the jobs a lost assignment of this partition finished"
                    );
                    (skip, inherited)
                }
                None => (finished.into(), None),
            };
            let owned = Owned::new(epoch, skip, inherited);
            if let Some(old) = state.owned.insert(partition, owned) {
                state.tracked -= old.tracker.pending();
                state.commits.report(-(old.done_at.len() as i64), &[]);
            }
        }
    }

    /// Before `partitions` are assigned: waits (up to `revoke_timeout`, as a
    /// revocation does) until no job of a lost assignment of theirs here is
    /// left with the engine: each is done (and remembered, so its record is
    /// skipped) or forgotten. Otherwise a job whose result is acknowledged
    /// just after the partition is read again would be handed out and sent
    /// twice.
    fn await_lost(&self, partitions: &[i32]) {
        let started = Instant::now();
        let (_state, unsettled, waited) = self.wait_settled(self.lock(), partitions, |state, p| {
            state.lost.get(&p).is_some_and(|lost| !lost.settled())
        });
        if !unsettled.is_empty() {
            tracing::warn!(
                partitions = ?unsettled,
                timeout = ?self.revoke_timeout,
                "a lost assignment still has jobs in flight; those done from now on may be sent again"
            );
        }
        if waited {
            tracing::info!(?partitions, waited = ?started.elapsed(), "waited for the jobs of a lost assignment");
        }
    }

    /// Waits on `settled`, up to `revoke_timeout`, until none of `partitions`
    /// is `unsettled` or the consumer is closing; returns the state, the
    /// partitions still unsettled at the deadline, and whether it waited.
    fn wait_settled<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        partitions: &[i32],
        unsettled: impl Fn(&State, i32) -> bool,
    ) -> (MutexGuard<'a, State>, Vec<i32>, bool) {
        let deadline = Instant::now() + self.revoke_timeout;
        let mut waited = false;
        loop {
            let left: Vec<i32> = partitions.iter().copied().filter(|&p| unsettled(&state, p)).collect();
            let now = Instant::now();
            if left.is_empty() || state.closing {
                return (state, Vec::new(), waited);
            }
            if now >= deadline {
                return (state, left, waited);
            }
            waited = true;
            state =
                self.settled.wait_timeout(state, deadline - now).unwrap_or_else(PoisonError::into_inner).0;
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
            let unsettled;
            (state, unsettled, _) = self.wait_settled(state, partitions, |state, p| {
                state.owned.get(&p).is_some_and(|o| !o.forgotten && o.tracker.pending() > 0)
            });
            if !unsettled.is_empty() {
                tracing::warn!(
                    partitions = ?unsettled,
                    timeout = ?self.revoke_timeout,
                    "revocation timed out with jobs in flight; the next owner reads them again"
                );
            }
            // The final positions, unless the broker has them already.
            // Committed here rather than left to librdkafka: auto-commit is
            // off, and the next owner starts from this commit.
            // After the commit under way, if any (the lock order:
            // `commit_order`, then the state).
            drop(state);
            let order = self.commit_order.lock().unwrap_or_else(PoisonError::into_inner);
            state = self.lock();
            let mut finals = Vec::new();
            let mut snapshot = Vec::new();
            for &partition in partitions {
                let Some(owned) = state.owned.get_mut(&partition) else {
                    continue;
                };
                let Some((offset, metadata)) = owned.position() else {
                    continue;
                };
                if owned.committed.as_ref().is_some_and(|(o, m)| *o == offset && *m == metadata) {
                    continue;
                }
                owned.issued = Some((offset, metadata.clone()));
                snapshot.push(owned.done_at.len());
                finals.push(Position { partition, epoch: owned.epoch, offset, metadata });
            }
            if !finals.is_empty() {
                // Synchronous, without the lock (late `done` calls of other
                // partitions go on). librdkafka finishes the revocation only
                // once its commits are answered anyway.
                drop(state);
                if let Err(error) = self.commit_sync(consumer, &finals, &snapshot) {
                    tracing::warn!(
                        %error,
                        ?partitions,
                        "could not commit the revoked partitions; their next owner re-reads from the last commit"
                    );
                }
                state = self.lock();
            }
            drop(order);
        }
        let now = Instant::now();
        expire_lost(&mut state, now);
        for &partition in partitions {
            let Some(owned) = state.owned.remove(&partition) else {
                continue;
            };
            state.tracked -= owned.tracker.pending();
            let uncommitted = owned.done_at.len();
            // A lost assignment committed nothing: what it finished is kept
            // for the partition's next assignment here, and so are its jobs
            // done from now on.
            let kept = lost
                .then(|| LostPartition::new(owned.read, &owned.tracker, &owned.skip, uncommitted, now))
                .flatten()
                .map(|mut kept| {
                    kept.forgotten = owned.forgotten;
                    kept
                });
            match kept {
                Some(kept) => {
                    tracing::info!(
                        partition,
                        finished = kept.finished_count(),
                        pending = owned.tracker.pending(),
                        "assignment lost: keeping its finished offsets for the partition's return"
                    );
                    if let Some(old) = state.lost.insert(partition, kept) {
                        state.commits.report(-(old.uncommitted as i64), &[]);
                    }
                }
                // Not committed (the commit failed): the next owner sends
                // them again; they no longer count here.
                None => state.commits.report(-(uncommitted as i64), &[]),
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
                // Before reading them again, so that the lost assignment's
                // jobs still out are not handed out twice.
                self.shared.await_lost(&partitions);
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
        match &result {
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
                lost: HashMap::new(),
                commits: Commits::default(),
            }),
            settled: Condvar::new(),
            commit_wanted: Condvar::new(),
            commit_order: Mutex::new(()),
            assignments,
            lag: Mutex::new(BTreeMap::new()),
        });
        let defaults = [
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("auto.offset.reset", "earliest"),
            // Feeds `lag()`.
            ("statistics.interval.ms", "1000"),
            ("enable.partition.eof", "false"),
        ];
        let config = client_config(
            &settings.brokers,
            &[&defaults[..], &crate::settings::CONSUMER_MEMORY_DEFAULTS[..]].concat(),
            &settings.extra,
            &[
                ("group.id", settings.group_id.as_str()),
                // Commits are this consumer's own (see the module docs),
                // taken from `done`; librdkafka's offset store is not used.
                ("enable.auto.offset.store", "false"),
                ("enable.auto.commit", "false"),
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
        let committer = thread::Builder::new().name("wabulk-kafka-commit".into()).spawn({
            let consumer = consumer.clone();
            let shared = shared.clone();
            move || commit_loop(&consumer, &shared)
        });
        let committer = match committer {
            Ok(committer) => committer,
            Err(error) => {
                stop.store(true, Ordering::Relaxed);
                let _ = poller.join();
                return Err(KafkaError::Thread(error));
            }
        };
        let ingest = Ingest {
            consumer,
            shared,
            records: tokio::sync::Mutex::new(records),
            stop,
            poller: Some(poller),
            committer: Some(committer),
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
                // Also notes the offset as read.
                if owned.finished_before(record.offset) {
                    // Tracked and resolved, so the watermark moves past it.
                    owned.tracker.track(record.offset);
                    owned.tracker.resolve(record.offset);
                    owned.dirty = true;
                    // Committed promptly too, so that the group's position
                    // passes the skipped jobs without waiting for a `done`.
                    state.commits.wanted = true;
                    self.shared.commit_wanted.notify_one();
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
    /// or adds to its finished offsets above it, and wakes the committer
    /// thread to commit both (at once, or with the next commit when one is
    /// under way or the last started less than [`COMMIT_FLOOR`] ago);
    /// resumes paused partitions once below the low-water mark. For a
    /// partition whose assignment was lost, the offset is remembered (if that
    /// ownership read it) and skipped when the partition is assigned here
    /// again; for a partition assigned again since, an offset of the lost
    /// ownership not read again yet is skipped (see the module docs). Other
    /// calls, for partitions no longer owned or offsets not handed out by
    /// `next`, are ignored.
    pub fn done(&self, partition: i32, offset: i64) {
        let mut guard = self.shared.lock();
        let state = &mut *guard;
        let Some(owned) = state.owned.get_mut(&partition) else {
            // A job of a lost assignment: remembered for the partition's
            // return here.
            if let Some(lost) = state.lost.get_mut(&partition) {
                if lost.done(offset) {
                    lost.uncommitted += 1;
                    state.commits.report(1, &[]);
                    // An assignment of the partition may wait for it.
                    self.shared.settled.notify_all();
                }
            }
            return;
        };
        let before = owned.tracker.pending();
        owned.tracker.resolve(offset);
        let resolved = before - owned.tracker.pending();
        state.tracked -= resolved;
        // `advanced` or not, a resolved offset changes what is committed:
        // the watermark or the finished offsets above it.
        if resolved > 0 {
            let now = Instant::now();
            owned.dirty = true;
            owned.done_at.push_back(now);
            if owned.revoking {
                self.shared.settled.notify_all();
            }
            state.commits.report(1, &[]);
            state.commits.wanted = true;
            self.shared.commit_wanted.notify_one();
        } else if owned.inherit(offset) {
            // A job of the partition's lost assignment here, not read again
            // yet: its record will be skipped.
            tracing::trace!(partition, offset, "a job of a lost assignment done: skipping its record");
        }
        self.shared.resume_if_drained(&self.consumer, state);
    }

    /// After [`Assignment::Revoked`]: the engine has dropped the partition's
    /// waiting jobs, so the revocation stops waiting for them. Their offsets
    /// stay unresolved, so nothing is committed beyond the first of them and the
    /// next owner reads them again. Jobs of the partition still in flight
    /// may call `done` until the revocation completes. After a lost
    /// revocation: no job of that ownership is left, so the partition's next
    /// assignment here need not wait for more of them to be done (call it
    /// once nothing of the partition is outstanding).
    pub fn forget(&self, partition: i32) {
        let mut guard = self.shared.lock();
        let state = &mut *guard;
        if let Some(owned) = state.owned.get_mut(&partition) {
            owned.forgotten = true;
            self.shared.settled.notify_all();
        } else if let Some(lost) = state.lost.get_mut(&partition) {
            // The revocation was lost: the partition's next assignment here
            // may be waiting for its last jobs.
            lost.forgotten = true;
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

    /// Jobs done whose offsets no commit acknowledged by the broker covers
    /// yet: what a crash now would send again (besides the requests in
    /// flight).
    pub fn uncommitted(&self) -> usize {
        let state = self.shared.lock();
        state.owned.values().map(|o| o.done_at.len()).sum::<usize>()
            + state.lost.values().map(|l| l.uncommitted).sum::<usize>()
    }

    /// Sets the listener told of commit progress (see [`CommitListener`]),
    /// replacing any earlier one. Set it before the first `done`: changes
    /// before it are not reported.
    pub fn set_commit_listener(&self, listener: CommitListener) {
        self.shared.lock().commits.listener = Some(listener);
    }

    /// Commits every owned partition's latest position and finished offsets
    /// now and waits for the broker's answer (graceful shutdown: call after
    /// the last `done`). Blocks the calling thread for the commit under way,
    /// if any, and one round trip.
    pub fn commit_now(&self) -> Result<(), KafkaError> {
        let _order = self.shared.commit_order.lock().unwrap_or_else(PoisonError::into_inner);
        let (positions, snapshot) = {
            let mut guard = self.shared.lock();
            let state = &mut *guard;
            let mut positions = Vec::new();
            let mut snapshot = Vec::new();
            for (&partition, owned) in &mut state.owned {
                if owned.revoking {
                    continue;
                }
                owned.dirty = false;
                let Some((offset, metadata)) = owned.position() else {
                    continue;
                };
                owned.issued = Some((offset, metadata.clone()));
                snapshot.push(owned.done_at.len());
                positions.push(Position { partition, epoch: owned.epoch, offset, metadata });
            }
            (positions, snapshot)
        };
        if positions.is_empty() {
            return Ok(());
        }
        // Explicit offsets (the offset store is not used), with their metadata.
        self.shared.commit_sync(&self.consumer, &positions, &snapshot)
    }
}

impl Drop for Ingest {
    /// Closes the consumer: the final revocation commits the watermarks (it
    /// does not wait for the engine) and the consumer leaves the group.
    /// Blocks for that, typically well under a second.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // A revocation waiting for the engine would otherwise hold the
        // polling thread, and so this drop, until `revoke_timeout`.
        {
            let mut state = self.shared.lock();
            state.closing = true;
            state.commits.stop = true;
        }
        self.shared.settled.notify_all();
        self.shared.commit_wanted.notify_all();
        // The committer finishes the commit under way; the close's final
        // revocation then commits what is left.
        if let Some(committer) = self.committer.take() {
            if committer.join().is_err() {
                tracing::error!("the Kafka committer thread panicked");
            }
        }
        if let Some(poller) = self.poller.take() {
            if poller.join().is_err() {
                tracing::error!("the Kafka polling thread panicked");
            }
        }
    }
}

/// The committer thread: waits for a partition to become dirty, waits out
/// the rest of [`COMMIT_FLOOR`] since its last commit started (what is done
/// meanwhile joins this commit), commits every changed partition
/// synchronously, and again, until told to stop.
fn commit_loop(consumer: &BaseConsumer<IngestContext>, shared: &Shared) {
    let mut started: Option<Instant> = None;
    loop {
        {
            let mut state = shared.lock();
            while !state.commits.wanted && !state.commits.stop {
                state = shared
                    .commit_wanted
                    .wait_timeout(state, COMMITTER_IDLE)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                // Cheap when nothing was lost; otherwise a few entries.
                expire_lost(&mut state, Instant::now());
            }
            if state.commits.stop {
                return;
            }
        }
        if let Some(rest) = started.and_then(|at| COMMIT_FLOOR.checked_sub(at.elapsed())) {
            thread::sleep(rest);
        }
        let _order = shared.commit_order.lock().unwrap_or_else(PoisonError::into_inner);
        let (positions, snapshot) = {
            let mut state = shared.lock();
            state.commits.wanted = false;
            Shared::changed_positions(&mut state)
        };
        if positions.is_empty() {
            continue;
        }
        started = Some(Instant::now());
        if let Err(error) = shared.commit_sync(consumer, &positions, &snapshot) {
            tracing::warn!(%error, "offset commit failed; the next one retries");
            // Not at once: the coordinator may be down or moving.
            thread::sleep(Duration::from_millis(200));
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
    while !stop.load(Ordering::Relaxed) {
        let polled = consumer.poll(POLL_INTERVAL);
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
