//! Commits: this consumer owns them (`enable.auto.commit=false`; the offset
//! store is not used). What a crash re-sends is every job done since the last
//! commit the broker acknowledged, so commits follow the dones closely:
//! whenever a partition's watermark or finished offsets changed, a
//! dedicated committer thread ("wabulk-kafka-commit") commits every changed
//! partition (explicit positions with their metadata) synchronously, one
//! commit at a time and at least [`COMMIT_FLOOR`] apart; what is done while
//! one is under way goes in the next. (Synchronous on its own thread because
//! rdkafka reports a manual asynchronous commit's answer nowhere that could
//! chain the next one.)
//!
//! Each partition's position is its contiguous watermark (never past an
//! unresolved offset), and the commit's metadata carries the ranges of
//! offsets above it that need no more work
//! ([`OffsetTracker::finished_above`](crate::OffsetTracker::finished_above),
//! encoded as described in `finished`: `v1:3-5,9` relative to the
//! watermark, at most 3,500 bytes, lowest ranges first): jobs of one
//! partition finish out of order (numbers send at different rates), so at a
//! stop or a crash some offsets above the watermark are already finished,
//! and whoever owns the partition next skips them (see `rebalance`).
//!
//! The out-of-order window: each position taken measures its metadata, and
//! a partition whose metadata passes `finished::WINDOW_PAUSE_BYTES` is not
//! read any further (see `backpressure`) until it is back at or under
//! `finished::WINDOW_RESUME_BYTES`, so that its finished set keeps fitting
//! while the jobs already read finish. Should ranges still be left out, the
//! partition is warned about once, and the jobs in them are not reported
//! committed: they stay in `done_at` until a later commit lists them.
//!
//! Commits are taken under the `commit_order` lock, in the order of the data
//! they carry, so a later commit is never overtaken by an earlier one. A
//! failed commit marks its partitions to be committed again. A revocation
//! (including the final one of the close) commits the revoked partitions'
//! final positions synchronously before giving them up, and
//! [`Ingest::commit_now`](super::Ingest::commit_now) (graceful shutdown)
//! waits for the outstanding commit, then commits everything synchronously.
//! All three take their positions with [`State::take_positions`]. A lost
//! assignment commits nothing: the partitions may already belong to someone
//! else (see `rebalance`). The time from a lease's `done` to the broker's
//! acknowledgement of the commit that covers it, and the count of jobs in
//! between, are reported to the [`CommitListener`] (the engine's
//! `wabulk_commit_lag_seconds` and `wabulk_uncommitted_jobs`).

use std::collections::VecDeque;
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::rebalance::IngestContext;
use super::{Shared, State};
use crate::KafkaError;

/// The least time between the starts of two commits of the committer thread:
/// a busy engine commits at most 100 times a second, each commit covering
/// every job done meanwhile.
pub const COMMIT_FLOOR: Duration = Duration::from_millis(10);

/// How long the committer thread waits for work before checking `stop`.
const COMMITTER_IDLE: Duration = Duration::from_millis(100);

/// Told of every change in the number of jobs done but not yet covered by a
/// commit the broker acknowledged: `delta` is +1 per offset a
/// [`Lease::done`] resolves, and negative when a commit covering jobs is
/// acknowledged (`lags` then holds, for each of them, the time from its
/// `done` to that acknowledgement) or
/// when they are dropped uncommitted (a failed revocation commit, or a lost
/// assignment's jobs when the partition is assigned here again, to be
/// skipped, or when it does not come back within 10 minutes: `lags` is
/// empty). A lost assignment's jobs, including those done after the loss,
/// count until then. The sum of the deltas is the current count. Called
/// under the consumer's state lock, from the thread that releases a lease,
/// the polling thread, the committer thread or the thread of `commit_now`:
/// it must be quick, must not call into [`Ingest`] and must not drop a
/// lease.
///
/// [`Ingest`]: super::Ingest
/// [`Lease::done`]: super::Lease::done
pub type CommitListener = Box<dyn Fn(i64, &[Duration]) + Send + Sync>;

/// The commit state shared by all partitions.
#[derive(Default)]
pub(super) struct Commits {
    /// A partition may be dirty: the committer has work.
    pub(super) wanted: bool,
    /// The consumer is stopping: the committer exits.
    pub(super) stop: bool,
    pub(super) listener: Option<CommitListener>,
    /// Positions taken whose metadata had to leave finished ranges out.
    pub(super) overflows: u64,
}

impl Commits {
    pub(super) fn report(&self, delta: i64, lags: &[Duration]) {
        if let Some(listener) = &self.listener {
            if delta != 0 || !lags.is_empty() {
                listener(delta, lags);
            }
        }
    }
}

/// One partition's position in a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Position {
    pub(super) partition: i32,
    /// The ownership epoch it was taken in: an answer for an older epoch
    /// does not touch the partition's new assignment.
    pub(super) epoch: u64,
    pub(super) offset: i64,
    pub(super) metadata: String,
    /// How many of the partition's jobs were done (its `done_at`) when the
    /// position was taken: those the commit covers, but for the offsets
    /// from `left_out_from` on.
    pub(super) covers: usize,
    /// The lowest finished offset the metadata had no room for, if any.
    pub(super) left_out_from: Option<i64>,
}

/// Which partitions a commit takes positions of.
#[derive(Debug, Clone, Copy)]
pub(super) enum CommitScope<'a> {
    /// The committer's: owned partitions not being revoked whose position
    /// or finished offsets changed since the last commit issued.
    Changed,
    /// A revocation's final commit: these partitions, unless the broker
    /// already has their position.
    Revoked(&'a [i32]),
    /// `commit_now`'s: every owned partition not being revoked, whatever
    /// was issued before.
    All,
}

impl State {
    /// The positions to commit of the partitions `scope` takes, each with the
    /// count of its jobs done so far, which the commit covers; marks them
    /// issued and no longer dirty. Partitions with no record yet have none.
    pub(super) fn take_positions(&mut self, scope: CommitScope<'_>) -> Vec<Position> {
        let mut positions = Vec::new();
        for (&partition, owned) in &mut self.owned {
            let taken = match scope {
                CommitScope::Changed => owned.dirty && !owned.revoking(),
                CommitScope::Revoked(partitions) => partitions.contains(&partition),
                CommitScope::All => !owned.revoking(),
            };
            if !taken {
                continue;
            }
            owned.dirty = false;
            let Some((offset, encoded)) = owned.position() else {
                continue;
            };
            if owned.measure_window(&encoded) {
                let (bytes, pending) = (encoded.text.len(), owned.tracker.pending());
                if owned.window_full {
                    tracing::info!(
                        partition,
                        reason = "out-of-order window full",
                        watermark = offset,
                        bytes,
                        pending,
                        "pausing a jobs partition"
                    );
                } else {
                    tracing::info!(
                        partition,
                        reason = "out-of-order window full",
                        watermark = offset,
                        bytes,
                        "out-of-order window no longer full: resuming a jobs partition (unless the memory budget holds it)"
                    );
                }
            }
            if let Some(from) = encoded.left_out_from {
                self.commits.overflows += 1;
                if !std::mem::replace(&mut owned.overflow_warned, true) {
                    tracing::warn!(
                        partition,
                        watermark = offset,
                        left_out_from = from,
                        "finished offsets do not fit in the commit metadata; they stay uncommitted \
                         (sent again after a restart or a rebalance) until the watermark moves"
                    );
                }
            }
            let (metadata, left_out_from) = (encoded.text, encoded.left_out_from);
            let unchanged_from = match scope {
                CommitScope::Changed => owned.issued.as_ref(),
                CommitScope::Revoked(_) => owned.committed.as_ref(),
                CommitScope::All => None,
            };
            if unchanged_from.is_some_and(|(o, m)| *o == offset && *m == metadata) {
                continue;
            }
            owned.issued = Some((offset, metadata.clone()));
            let covers = owned.done_at.len();
            positions.push(Position {
                partition,
                epoch: owned.epoch(),
                offset,
                metadata,
                covers,
                left_out_from,
            });
        }
        positions
    }
}

/// The committer thread: waits for a partition to become dirty, waits out
/// the rest of [`COMMIT_FLOOR`] since its last commit started (what is done
/// meanwhile joins this commit), commits every changed partition
/// synchronously, and again, until told to stop.
pub(super) fn commit_loop(consumer: &BaseConsumer<IngestContext>, shared: &Shared) {
    let mut started: Option<Instant> = None;
    loop {
        {
            let mut state = shared.lock();
            while !state.commits.wanted && !state.commits.stop {
                state = shared
                    .commit_wanted
                    .wait_timeout(state, COMMITTER_IDLE)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
                // Cheap when nothing was lost; otherwise a few entries.
                state.expire_lost(Instant::now());
            }
            if state.commits.stop {
                return;
            }
        }
        if let Some(rest) = started.and_then(|at| COMMIT_FLOOR.checked_sub(at.elapsed())) {
            thread::sleep(rest);
        }
        let _order = shared.commit_order();
        let positions = {
            let mut state = shared.lock();
            state.commits.wanted = false;
            let positions = state.take_positions(CommitScope::Changed);
            // The positions measured the windows.
            shared.apply_pauses(&mut state);
            positions
        };
        if positions.is_empty() {
            continue;
        }
        started = Some(Instant::now());
        if let Err(error) = shared.commit_sync(consumer, &positions) {
            tracing::warn!(%error, "offset commit failed; the next one retries");
            // Not at once: the coordinator may be down or moving.
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Shared {
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

    /// Commits `positions` synchronously and records the answer: on success
    /// each partition's jobs done before its position was taken are
    /// committed and reported with their lags; on failure the partitions are
    /// to be committed again. Partitions revoked (or re-assigned) since are
    /// left alone. Call with `commit_order` held and without the state lock:
    /// it blocks for a round trip.
    pub(super) fn commit_sync(
        &self,
        consumer: &BaseConsumer<IngestContext>,
        positions: &[Position],
    ) -> Result<(), KafkaError> {
        let result = match consumer.commit(&self.positions_tpl(positions), CommitMode::Sync) {
            Ok(()) | Err(RdKafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(error) => Err(KafkaError::Commit(error)),
        };
        self.lock().record_commit(positions, result.is_ok(), Instant::now());
        result
    }
}

impl State {
    /// The broker's answer to the commit of `positions` (`committed` or
    /// not); see `Shared::commit_sync`.
    pub(super) fn record_commit(&mut self, positions: &[Position], committed: bool, now: Instant) {
        let mut lags = Vec::new();
        for position in positions {
            let Some(owned) = self.owned.get_mut(&position.partition).filter(|o| o.epoch() == position.epoch)
            else {
                continue;
            };
            if committed {
                let covered = position.covers.min(owned.done_at.len());
                let mut kept = VecDeque::new();
                for (at, offset) in owned.done_at.drain(..covered) {
                    if position.left_out_from.is_some_and(|from| offset >= from) {
                        // Not in the metadata: still what a crash sends again.
                        kept.push_back((at, offset));
                    } else {
                        lags.push(now.saturating_duration_since(at));
                    }
                }
                // Older than the rest: back in front, in order.
                while let Some(entry) = kept.pop_back() {
                    owned.done_at.push_front(entry);
                }
                owned.committed = Some((position.offset, position.metadata.clone()));
            } else {
                owned.issued = owned.committed.clone();
                owned.dirty = true;
                self.commits.wanted = true;
            }
        }
        self.commits.report(-(lags.len() as i64), &lags);
    }
}
