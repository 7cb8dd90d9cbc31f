//! Leases: every record [`Ingest::next`](super::Ingest::next) hands out
//! comes with a [`Lease`], the engine's hold on its offset. The engine
//! releases it as done ([`Lease::done`]) once the job's outcome is
//! acknowledged by Kafka, which resolves the offset; dropping it otherwise
//! leaves the offset unresolved, so nothing is committed past it and the
//! partition's next owner reads it again.
//!
//! A lease belongs to one ownership of its partition (an assignment here;
//! a new assignment of the same partition is a new ownership). Its
//! revocation waits until every lease of the ownership is released, done or
//! dropped; so does the next assignment here of a partition whose ownership
//! was lost (see `rebalance`). [`Lease::is_revoked`] tells the engine, without
//! a lock, that the ownership is being revoked or was lost: the job is not
//! to be sent, retried or parked.
//!
//! A lease released as done after its ownership ended still counts, by
//! partition, as a `done` of its offset: for a partition whose assignment
//! was lost, the offset is remembered (if that ownership read it) and
//! skipped when the partition is assigned here again; for a partition
//! assigned again since, it resolves the offset if the new ownership handed
//! it out, or, for an offset of the lost ownership not read again yet, its
//! record is skipped (see `rebalance`). Otherwise it is ignored.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use super::{Shared, State};

/// One assignment of a partition to this consumer, shared by the leases of
/// its records.
#[derive(Debug)]
pub(super) struct Ownership {
    pub(super) partition: i32,
    pub(super) epoch: u64,
    /// Set once the revocation of this assignment starts (or the assignment
    /// is lost, or replaced); never cleared. Relaxed: it only spares the
    /// engine work; what the revocation waits for is the lease count, kept
    /// under the state lock.
    revoked: AtomicBool,
    /// Where leases are released. Weak: the state holds the ownership, and a
    /// lease outliving the consumer then releases nothing.
    shared: Weak<Shared>,
}

impl Ownership {
    pub(super) fn new(partition: i32, epoch: u64, shared: Weak<Shared>) -> Self {
        Ownership { partition, epoch, revoked: AtomicBool::new(false), shared }
    }

    pub(super) fn revoke(&self) {
        self.revoked.store(true, Ordering::Relaxed);
    }

    pub(super) fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Relaxed)
    }
}

/// The engine's hold on one record handed out by
/// [`Ingest::next`](super::Ingest::next), from then until its job's outcome
/// is acknowledged by Kafka ([`Lease::done`]) or the job is given up
/// (dropped: the offset stays unresolved and is read again by the
/// partition's next owner). `Send`, cheap to move: no lock is taken until it
/// is released.
pub struct Lease {
    ownership: Arc<Ownership>,
    offset: i64,
    /// What its record costs against the memory budget in bytes.
    bytes: usize,
    /// Released by [`Lease::done`] rather than dropped.
    done: bool,
}

impl Lease {
    pub(super) fn new(ownership: Arc<Ownership>, offset: i64, bytes: usize) -> Self {
        Lease { ownership, offset, bytes, done: false }
    }

    /// The job's outcome (its result or dead letter) was acknowledged by
    /// Kafka: the offset is done. Advances the partition's watermark or adds
    /// to its finished offsets above it, and wakes the committer thread to
    /// commit both (at once, or with the next commit when one is under way
    /// or the last started less than [`COMMIT_FLOOR`](crate::COMMIT_FLOOR)
    /// ago); resumes paused partitions once below the low-water mark. Call
    /// only from the task that awaited that acknowledgement.
    pub fn done(mut self) {
        self.done = true;
        // Released by `drop`.
    }

    /// The partition's assignment that handed the record out is being
    /// revoked, or was lost: do not start the job, retry it or park it.
    /// Cheap: one atomic load.
    pub fn is_revoked(&self) -> bool {
        self.ownership.is_revoked()
    }

    pub fn partition(&self) -> i32 {
        self.ownership.partition
    }

    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// What its record costs against the memory budget in bytes: its key
    /// and value plus [`RECORD_OVERHEAD`](crate::RECORD_OVERHEAD).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(shared) = self.ownership.shared.upgrade() {
            shared.release(&self.ownership, self.offset, self.bytes, self.done);
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("partition", &self.ownership.partition)
            .field("offset", &self.offset)
            .field("epoch", &self.ownership.epoch)
            .field("revoked", &self.is_revoked())
            .finish()
    }
}

impl Shared {
    /// The record at (`partition`, `offset`), polled under `ownership`,
    /// leaves the channel: leased to the engine, or `None` when the
    /// ownership was revoked since (the record is dropped) or the offset is
    /// one to skip (resolved at once, and committed promptly, so that the
    /// group's position passes it without waiting for a `done`).
    pub(super) fn hand_out(
        &self,
        ownership: Arc<Ownership>,
        partition: i32,
        offset: i64,
        bytes: usize,
    ) -> Option<Lease> {
        let mut guard = self.lock();
        let state = &mut *guard;
        state.buffered -= 1;
        let current = state
            .owned
            .get_mut(&partition)
            .filter(|owned| owned.epoch() == ownership.epoch && !owned.revoking());
        if let Some(owned) = current {
            // Also notes the offset as read.
            if !owned.finished_before(offset) {
                let before = owned.tracker.pending();
                let lease = owned.lease(ownership, offset, bytes);
                state.tracked += owned.tracker.pending() - before;
                return Some(lease);
            }
            // Tracked and resolved, so the watermark moves past it.
            owned.tracker.track(offset);
            owned.tracker.resolve(offset);
            owned.dirty = true;
            state.commits.wanted = true;
            self.commit_wanted.notify_one();
            tracing::trace!(partition, offset, "skipping a finished job");
        }
        self.refund(state, partition, ownership.epoch, bytes);
        self.resume_if_drained(state);
        None
    }

    /// Releases a lease of `ownership` on `offset` costing `bytes`, done or
    /// not.
    fn release(&self, ownership: &Ownership, offset: i64, bytes: usize, done: bool) {
        let mut guard = self.lock();
        let state = &mut *guard;
        self.refund(state, ownership.partition, ownership.epoch, bytes);
        if done {
            self.done(state, ownership.partition, offset);
        }
        if state.return_lease(ownership) {
            // The revocation, or the next assignment, may wait for it.
            self.settled.notify_all();
        }
        // A dropped lease leaves its offset counted, but frees its bytes.
        self.resume_if_drained(state);
    }

    /// The job at (`partition`, `offset`) is finished, whichever ownership
    /// handed it out (see the module docs).
    fn done(&self, state: &mut State, partition: i32, offset: i64) {
        let Some(owned) = state.owned.get_mut(&partition) else {
            // A job of a lost assignment: remembered for the partition's
            // return here.
            if let Some(lost) = state.lost.get_mut(&partition) {
                if lost.done(offset) {
                    lost.uncommitted += 1;
                    state.commits.report(1, &[]);
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
            owned.dirty = true;
            owned.done_at.push_back((Instant::now(), offset));
            state.commits.report(1, &[]);
            state.commits.wanted = true;
            self.commit_wanted.notify_one();
        } else if owned.inherit(offset) {
            // A job of the partition's lost assignment here, not read again
            // yet: its record will be skipped.
            tracing::trace!(partition, offset, "a job of a lost assignment done: skipping its record");
        }
    }
}

impl State {
    /// Counts a lease of `ownership` as released; whether that settled a
    /// revoked or lost ownership (no lease of it left).
    fn return_lease(&mut self, ownership: &Ownership) -> bool {
        let partition = ownership.partition;
        if let Some(owned) = self.owned.get_mut(&partition).filter(|o| o.epoch() == ownership.epoch) {
            owned.leases = owned.leases.saturating_sub(1);
            return owned.leases == 0 && ownership.is_revoked();
        }
        if let Some(lost) = self.lost.get_mut(&partition).filter(|l| l.epoch == ownership.epoch) {
            lost.leases = lost.leases.saturating_sub(1);
            return lost.leases == 0;
        }
        // Its revocation has completed (or timed out), or its lost entry was
        // consumed or expired: nobody counts it any more.
        false
    }
}
