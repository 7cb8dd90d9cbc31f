//! Partition ownership: the consumer's context (librdkafka's rebalance
//! callbacks, which run on the polling thread, and its statistics and logs),
//! what an assignment takes on and what a revocation gives up.
//!
//! Assignment strategy: `cooperative-sticky` (overridable through `extra`).
//! A rebalance then revokes only the partitions that move, so an instance
//! joining or leaving does not make every other instance drop and re-read all
//! its waiting jobs, as the eager `range` strategy would.
//!
//! Finished offsets: on assignment, before its first record is polled, the
//! consumer fetches each new partition's committed position and metadata and
//! decodes the finished offsets above the position (see `commit`);
//! [`Ingest::next`](super::Ingest::next) does not hand out the records at
//! those offsets but tracks and resolves them at once, so the watermark
//! moves past them as if the engine had done them. Every offset in the
//! metadata is one whose result was acknowledged (or a gap that held no
//! record), so skipping it never loses a job; metadata that cannot be read
//! is ignored (those records are then sent again).
//!
//! Revocation: the revoked partitions' leases are marked revoked and the
//! engine is told, then the revocation waits (up to `revoke_timeout`) until
//! every lease of theirs is released (done, or dropped with its job),
//! commits their final positions and forgets the partitions. A job whose
//! lease outlives the wait (the timeout) is read again by the next owner;
//! its late `done` is then handled as `lease` describes.
//!
//! Lost assignments: when the session expires (a broker outage longer than
//! `session.timeout.ms`), librdkafka revokes the assignment as lost, and
//! nothing can be committed for it. The jobs of it done before the loss but
//! not yet committed, and those still being worked on (sent during the
//! outage, their results acknowledged only once the broker is back), would
//! then all be handed out and sent again when the partition comes back. So
//! a lost revocation keeps, per partition, what that ownership finished
//! (every offset it read below its watermark, and the finished ranges above
//! it) in a side table (`lost`), with the count of its leases still out,
//! and a lease of it done late adds its offset there. When the partition is
//! assigned to this consumer again, the assignment first waits (up to
//! `revoke_timeout`, in the rebalance callback, as a revocation does) until
//! no lease of the lost ownership is left with the engine (each is done, or
//! dropped with its job), then merges the remembered offsets at or above the
//! newly fetched committed position into those the commit metadata lists:
//! `next` resolves their records without handing them out, and the commits
//! move past them.
//! Skipping them is correct whoever owned the partition meanwhile: each has
//! an acknowledged result. A lease of the lost ownership done after that (the
//! wait timed out), for an offset the new ownership handed out, resolves it
//! there (again: its result is acknowledged; the new copy, if sent, is a
//! duplicate, and its own `done` is then ignored); for an offset of the lost
//! ownership not read again yet, it is added to the offsets to skip. Bounds: one entry per partition,
//! consumed by the partition's next assignment here or dropped after 10
//! minutes; at most 4,096 ranges per entry (when full, a new range displaces
//! the highest: offsets left out are only sent again). If the partition goes
//! to another consumer instead, that consumer re-sends what the lost
//! ownership finished after its last commit (CONTRACT §5).

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError as RdKafkaError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::commit::CommitScope;
use super::lease::Ownership;
use super::partition::Owned;
use super::{Assignment, Shared, State};
use crate::context::{global_error, log};
use crate::finished;
use crate::lost::LostPartition;

/// How long an assignment waits for the new partitions' committed metadata.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(5);

/// The consumer's context: rebalance callbacks, statistics, logs.
pub(super) struct IngestContext {
    pub(super) shared: Arc<Shared>,
}

/// A partition's committed position, and the finished offsets above it
/// that its metadata lists.
pub(super) struct Committed {
    position: i64,
    finished: Vec<RangeInclusive<i64>>,
}

impl State {
    /// Drops the lost partitions' entries older than [`crate::lost::LOST_TTL`]:
    /// their jobs done are then sent again if the partition comes back.
    pub(super) fn expire_lost(&mut self, now: Instant) {
        if self.lost.is_empty() {
            return;
        }
        let expired: Vec<i32> = self.lost.iter().filter(|(_, l)| l.expired(now)).map(|(&p, _)| p).collect();
        for partition in expired {
            if let Some(entry) = self.lost.remove(&partition) {
                tracing::debug!(
                    partition,
                    "forgetting what a lost assignment finished: it did not come back"
                );
                self.commits.report(-(entry.uncommitted as i64), &[]);
            }
        }
    }
}

impl Shared {
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
    pub(super) fn assign(self: &Arc<Self>, partitions: &[i32], mut committed: BTreeMap<i32, Committed>) {
        let mut guard = self.lock();
        let state = &mut *guard;
        state.expire_lost(Instant::now());
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
            let ownership = Arc::new(Ownership::new(partition, epoch, Arc::downgrade(self)));
            let owned = Owned::new(ownership, skip, inherited);
            if let Some(old) = state.owned.insert(partition, owned) {
                // Not expected (librdkafka revokes before it assigns again);
                // the old ownership's jobs are not to be sent any more.
                old.ownership.revoke();
                state.tracked -= old.tracker.pending();
                state.bytes -= old.bytes;
                state.commits.report(-(old.done_at.len() as i64), &[]);
            }
        }
    }

    /// Before `partitions` are assigned: waits (up to `revoke_timeout`, as a
    /// revocation does) until no job of a lost assignment of theirs here is
    /// left with the engine: every lease of it is released, done (and the
    /// offset remembered, so its record is skipped) or dropped. Otherwise a
    /// job whose result is acknowledged just after the partition is read
    /// again would be handed out and sent twice.
    fn await_lost(&self, partitions: &[i32]) {
        let started = Instant::now();
        let (_state, unsettled, waited) = self.wait_settled(self.lock(), partitions, |state, p| {
            state.lost.get(&p).is_some_and(|lost| lost.leases > 0)
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
    pub(super) fn wait_settled<'a>(
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

    /// Runs before librdkafka unassigns `partitions`: marks their leases
    /// revoked, tells the engine, waits until every lease is released,
    /// commits their final positions, forgets them.
    fn revoke(&self, consumer: &BaseConsumer<IngestContext>, partitions: &[i32]) {
        let lost = consumer.assignment_lost();
        let mut state = self.lock();
        // Before the engine hears of it: a job it sees as not revoked is then
        // one it handles before the event (and purges after it).
        state.mark_revoked(partitions);
        // The engine may have gone away (shutdown); nothing to tell it then.
        let _ = self.assignments.send(Assignment::Revoked(partitions.to_vec()));
        // A lost assignment already belongs to someone else: storing or
        // committing for it fails, and waiting would only delay the rejoin.
        if !lost {
            let unsettled;
            (state, unsettled, _) = self.wait_settled(state, partitions, |state, p| {
                state.owned.get(&p).is_some_and(|o| o.leases > 0)
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
            let order = self.commit_order();
            state = self.lock();
            let finals = state.take_positions(CommitScope::Revoked(partitions));
            if !finals.is_empty() {
                // Synchronous, without the lock (leases of other partitions
                // are released meanwhile). librdkafka finishes the revocation only
                // once its commits are answered anyway.
                drop(state);
                if let Err(error) = self.commit_sync(consumer, &finals) {
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
        state.give_up(partitions, lost, Instant::now());
        tracing::info!(?partitions, lost, "partitions revoked");
    }
}

impl State {
    /// The start of a revocation (or a loss) of `partitions`: their leases
    /// report it, and `next` hands out no more of their records.
    pub(super) fn mark_revoked(&mut self, partitions: &[i32]) {
        for partition in partitions {
            if let Some(owned) = self.owned.get(partition) {
                owned.ownership.revoke();
            }
        }
    }

    /// The end of a revocation of `partitions`: they are no longer owned,
    /// and their jobs no longer count as in memory. For a `lost` one, what
    /// it finished and its leases still out are kept for its next
    /// assignment here.
    pub(super) fn give_up(&mut self, partitions: &[i32], lost: bool, now: Instant) {
        self.expire_lost(now);
        for &partition in partitions {
            let Some(owned) = self.owned.remove(&partition) else {
                continue;
            };
            self.tracked -= owned.tracker.pending();
            self.bytes -= owned.bytes;
            let uncommitted = owned.done_at.len();
            // A lost assignment committed nothing: what it finished is kept
            // for the partition's next assignment here, and so are its jobs
            // done from now on.
            let (epoch, leases) = (owned.epoch(), owned.leases);
            let kept = lost
                .then(|| LostPartition::new(owned.read, &owned.tracker, &owned.skip, uncommitted, now))
                .flatten()
                .map(|mut kept| {
                    // Its leases still out are waited for when the
                    // partition comes back here.
                    kept.epoch = epoch;
                    kept.leases = leases;
                    kept
                });
            match kept {
                Some(kept) => {
                    tracing::info!(
                        partition,
                        finished = kept.finished_count(),
                        pending = owned.tracker.pending(),
                        leases,
                        "assignment lost: keeping its finished offsets for the partition's return"
                    );
                    if let Some(old) = self.lost.insert(partition, kept) {
                        self.commits.report(-(old.uncommitted as i64), &[]);
                    }
                }
                // Not committed (the commit failed): the next owner sends
                // them again; they no longer count here.
                None => self.commits.report(-(uncommitted as i64), &[]),
            }
        }
    }
}

impl ClientContext for IngestContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log(level, fac, message);
    }

    fn error(&self, error: RdKafkaError, reason: &str) {
        global_error(&error, reason);
    }

    /// Keeps each partition's lag for [`Ingest::lag`](super::Ingest::lag).
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
                // librdkafka keeps a partition's pause across a lost
                // assignment and its return: resumed here, so that what it
                // does matches the flags below, or a partition paused before
                // the loss would never be read again.
                if let Err(error) = consumer.resume(&self.shared.tpl(partitions.iter().copied())) {
                    tracing::warn!(%error, ?partitions, "could not resume newly assigned jobs partitions");
                }
                let mut state = self.shared.lock();
                // Newly assigned partitions start unpaused; hold them back
                // too while backpressure is on.
                for partition in &partitions {
                    if let Some(owned) = state.owned.get_mut(partition) {
                        owned.paused = false;
                    }
                }
                self.shared.apply_pauses(&mut state);
                drop(state);
                tracing::info!(?partitions, "partitions assigned");
                let _ = self.shared.assignments.send(Assignment::Assigned(partitions));
            }
            Rebalance::Revoke(_) => {
                // The revoked partitions' jobs no longer count as in memory.
                let mut state = self.shared.lock();
                self.shared.resume_if_drained(&mut state);
            }
            Rebalance::Error(_) => {}
        }
    }

    /// librdkafka reports here only the commits it issues itself (auto-commit,
    /// which is off); ours are synchronous and answered in `commit_sync`.
    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match &result {
            Ok(()) | Err(RdKafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::warn!(%error, "offset commit failed; the next one retries"),
        }
    }
}
