//! The jobs consumer: reads `wabulk.jobs`, hands each record to the engine
//! with a [`Lease`] and tracks its offset until the lease is released (done
//! once the job's outcome is acknowledged, or dropped), commits each
//! partition's contiguous watermark promptly (with the finished offsets
//! above it in the commit metadata), pauses and resumes partitions for
//! backpressure (the memory budget, and each partition's out-of-order
//! window, so that its finished offsets always fit in the metadata), and
//! holds a revocation until every lease of the revoked
//! partitions is released.
//!
//! The parts, each described in its module:
//!
//! - `lease`: handing records out and releasing their leases, and what a
//!   release does to the partition's offsets, whichever ownership it is of;
//! - `poll`: the polling thread, which also runs librdkafka's rebalance
//!   callbacks, and the channel of records to [`Ingest::next`];
//! - `commit`: the committer thread and every commit (prompt, revocation,
//!   shutdown), with the finished offsets in the commit metadata;
//! - `rebalance`: the consumer's context; what an assignment takes on
//!   (finished offsets to skip) and a revocation gives up; lost assignments;
//! - `partition`: one partition's ownership (tracker, leases out, offsets to
//!   skip, positions issued and committed);
//! - `backpressure`: pausing and resuming partitions at the memory water
//!   marks and, one partition at a time, at the bounds of its out-of-order
//!   window (what its commit metadata can list).
//!
//! State shared by `Ingest`, both threads, the callbacks and the leases is
//! one `State` behind a std mutex (held briefly, never across a round trip
//! to the broker); commits also hold `commit_order`, taken before the state
//! lock, never while holding it. A lease's release takes the state lock, so
//! no lease is dropped while it is held.

mod backpressure;
mod commit;
mod lease;
mod partition;
mod poll;
mod rebalance;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::thread;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use self::commit::{commit_loop, CommitScope, Commits};
use self::partition::Owned;
use self::poll::{poll_loop, Polled};
use self::rebalance::IngestContext;
use crate::context::client_config;
use crate::lost::LostPartition;
use crate::{KafkaError, KafkaSettings};

pub use self::backpressure::PausedCounts;
pub use self::commit::{CommitListener, COMMIT_FLOOR};
pub use self::lease::Lease;

/// One record read from the jobs topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// The value; empty for a tombstone.
    pub payload: Vec<u8>,
    /// For a job the parking mover wrote back: why it was parked and when
    /// it was due (its headers).
    pub returned: Option<crate::Returned>,
}

/// What the engine learns about partition ownership, in the order it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// These partitions are now ours; their records follow.
    Assigned(Vec<i32>),
    /// These partitions are being taken away (or were lost). Their leases
    /// report it ([`Lease::is_revoked`]) from before this event,
    /// [`Ingest::next`] hands out no more of their records, and the
    /// revocation waits (up to `revoke_timeout`) until every lease of theirs
    /// is released: done, or dropped with its job. A lost assignment does
    /// not wait; its leases are waited for when the partitions are assigned
    /// here again.
    Revoked(Vec<i32>),
}

/// The jobs consumer. `Send + Sync`. The leases it hands out hold no
/// reference to it: once it is dropped, releasing them does nothing.
pub struct Ingest {
    /// Shared with both threads; `commit_now` commits through it. (Leases
    /// pause and resume through `Shared::consumer`.)
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

/// State shared by `Ingest`, the polling thread, the committer thread, the
/// rebalance callbacks and (weakly) the leases.
struct Shared {
    topic: String,
    max_in_memory: usize,
    resume_below: usize,
    max_in_memory_bytes: usize,
    revoke_timeout: Duration,
    /// A std mutex: nothing awaits under it, and the rebalance callback must
    /// wait on it synchronously anyway. Held briefly, per record.
    state: Mutex<State>,
    /// Signalled when the last lease of a revoked or lost ownership is
    /// released, to wake the rebalance callback waiting for it.
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
    /// The consumer, for backpressure wherever a lease is released. Weak: its
    /// context holds this; set once, before the polling thread starts.
    consumer: OnceLock<Weak<BaseConsumer<IngestContext>>>,
}

struct State {
    /// The partitions we own, each with its tracker. A partition leaves the
    /// map when its revocation completes; its jobs then no longer count as
    /// in memory.
    owned: BTreeMap<i32, Owned>,
    /// Records polled but not yet handed out by `next` (in the channel).
    buffered: usize,
    /// Records handed out and not yet resolved, over all owned partitions.
    tracked: usize,
    /// Bytes held for buffered and leased records of the owned partitions
    /// (the sum of their `Owned::bytes`).
    bytes: usize,
    /// Whether the memory budget has paused the owned partitions (each
    /// partition's own reason is `Owned::window_full`).
    paused: bool,
    /// The consumer is closing: a revocation then does not wait for the
    /// engine, which is shutting down.
    closing: bool,
    /// Source of ownership epochs, one per partition assignment.
    next_epoch: u64,
    /// What each partition whose assignment was lost had finished, kept
    /// for its next assignment here (see `rebalance` and `lost`).
    lost: HashMap<i32, LostPartition>,
    /// What the committer thread is asked to do, and the commit listener.
    commits: Commits,
}

impl Shared {
    fn new(settings: &KafkaSettings, assignments: mpsc::UnboundedSender<Assignment>) -> Self {
        Shared {
            topic: settings.jobs_topic.clone(),
            max_in_memory: settings.max_in_memory,
            resume_below: settings.resume_below,
            max_in_memory_bytes: settings.max_in_memory_bytes,
            revoke_timeout: settings.revoke_timeout,
            state: Mutex::new(State {
                owned: BTreeMap::new(),
                buffered: 0,
                tracked: 0,
                bytes: 0,
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
            consumer: OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock leaves counters at worst slightly off; better
        // than poisoning the whole consumer.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The consumer, unless it is gone (the `Ingest` dropped).
    fn consumer(&self) -> Option<Arc<BaseConsumer<IngestContext>>> {
        self.consumer.get().and_then(Weak::upgrade)
    }

    /// One commit at a time (see `commit_order`).
    fn commit_order(&self) -> MutexGuard<'_, ()> {
        self.commit_order.lock().unwrap_or_else(PoisonError::into_inner)
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
        let shared = Arc::new(Shared::new(settings, assignments));
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
                // Commits are this consumer's own (see `commit`), of the
                // offsets leases resolve; librdkafka's offset store is not
                // used.
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
        // Before the first poll, so before any rebalance or lease.
        let _ = shared.consumer.set(Arc::downgrade(&consumer));
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

    /// The next record, with the lease the engine holds until its job's
    /// outcome is acknowledged ([`Lease::done`]) or the job is given up
    /// (the lease dropped). Waits while nothing is available, including
    /// while backpressure has paused every partition (the polling thread
    /// keeps the consumer in the group meanwhile). Records of partitions
    /// revoked since they were read are skipped: their next owner reads them
    /// again. So are records whose offsets the committed metadata lists as
    /// finished before the partition was assigned: they count as done at
    /// once. Cancel-safe. An error means the consumer is finished
    /// ([`KafkaError::Closed`] or a fatal [`KafkaError::Consume`]); transient
    /// errors are logged and retried by librdkafka.
    pub async fn next(&self) -> Result<(Record, Lease), KafkaError> {
        let mut records = self.records.lock().await;
        loop {
            let (ownership, record, bytes) = match records.recv().await {
                None => return Err(KafkaError::Closed),
                Some(Polled::Fatal(error)) => return Err(KafkaError::Consume(error)),
                Some(Polled::Record { ownership, record, bytes }) => (ownership, record, bytes),
            };
            if let Some(lease) = self.shared.hand_out(ownership, record.partition, record.offset, bytes) {
                return Ok((record, lease));
            }
        }
    }

    /// Records read and not yet done, including those not yet handed out by
    /// `next` and those whose lease was dropped while their partition is
    /// still owned: what backpressure compares with the water marks.
    pub fn in_memory(&self) -> usize {
        self.shared.lock().in_memory()
    }

    /// What the records counted by [`Ingest::in_memory`] cost against
    /// `max_in_memory_bytes`.
    pub fn in_memory_bytes(&self) -> usize {
        self.shared.lock().bytes
    }

    /// The partitions currently owned (not being revoked), ascending.
    pub fn assigned(&self) -> Vec<i32> {
        let state = self.shared.lock();
        state.owned.iter().filter(|(_, o)| !o.revoking()).map(|(&p, _)| p).collect()
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

    /// How many owned partitions are paused, per reason: the memory budget
    /// (every partition, at `max_in_memory`) and a full out-of-order window
    /// (one partition whose finished offsets above its watermark would soon
    /// not fit in the commit metadata: a job below them is slow). For a
    /// gauge.
    pub fn paused(&self) -> PausedCounts {
        self.shared.lock().paused_counts()
    }

    /// How many positions were taken for a commit whose metadata had no room
    /// for every finished offset (their jobs are then left uncommitted, and
    /// sent again after a restart or a rebalance). The out-of-order window
    /// keeps this at 0 but for a partition whose jobs already read finish
    /// in a pathological order. Cumulative.
    pub fn metadata_overflows(&self) -> u64 {
        self.shared.lock().commits.overflows
    }

    /// Sets the listener told of commit progress (see [`CommitListener`]),
    /// replacing any earlier one. Set it before the first lease is done:
    /// changes before it are not reported.
    pub fn set_commit_listener(&self, listener: CommitListener) {
        self.shared.lock().commits.listener = Some(listener);
    }

    /// Commits every owned partition's latest position and finished offsets
    /// now and waits for the broker's answer (graceful shutdown: call after
    /// the last lease is done). Blocks the calling thread for the commit
    /// under way, if any, and one round trip.
    pub fn commit_now(&self) -> Result<(), KafkaError> {
        let _order = self.shared.commit_order();
        let positions = {
            let mut state = self.shared.lock();
            let positions = state.take_positions(CommitScope::All);
            self.shared.apply_pauses(&mut state);
            positions
        };
        if positions.is_empty() {
            return Ok(());
        }
        // Explicit offsets (the offset store is not used), with their metadata.
        self.shared.commit_sync(&self.consumer, &positions)
    }
}

/// What a record costs against the memory budget in bytes.
fn record_bytes(record: &Record) -> usize {
    record.payload.len() + record.key.as_ref().map_or(0, Vec::len) + crate::RECORD_OVERHEAD
}

impl Drop for Ingest {
    /// Closes the consumer: the final revocation commits the watermarks (it
    /// does not wait for the engine's leases) and the consumer leaves the
    /// group.
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

#[cfg(test)]
mod tests;
