//! One partition's ownership: its tracker of the offsets handed out, the
//! leases out, the offsets to skip (finished before this assignment), and
//! the positions issued and acknowledged by the broker.

use std::collections::VecDeque;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Instant;

use super::lease::{Lease, Ownership};
use crate::lost;
use crate::{finished, OffsetTracker};

pub(super) struct Owned {
    /// This assignment's identity and revocation flag, shared with its
    /// leases.
    pub(super) ownership: Arc<Ownership>,
    /// Reset on every assignment: offsets read again after a re-assignment
    /// are tracked afresh.
    pub(super) tracker: OffsetTracker,
    /// Leases of this assignment not yet released: what a revocation waits
    /// for. Unlike the tracker's pending offsets, a lease dropped without
    /// `done` leaves its offset pending but no longer counts here.
    pub(super) leases: usize,
    /// Offsets finished before this assignment, from the committed metadata
    /// and from a lost assignment of the partition here: `next` resolves
    /// their records instead of handing them out. Ascending, disjoint;
    /// ranges below the latest record are dropped as records go by.
    pub(super) skip: VecDeque<RangeInclusive<i64>>,
    /// The offsets read (handed out or skipped) in this assignment, from the
    /// first to the latest; records come in increasing offset order.
    pub(super) read: Option<RangeInclusive<i64>>,
    /// The offsets a lost assignment of this partition here had read: its
    /// jobs may still be done, and those not read yet in this assignment
    /// are then skipped too.
    inherited: Option<RangeInclusive<i64>>,
    /// The tracker changed since the last commit was issued.
    pub(super) dirty: bool,
    /// The position and metadata of the last commit issued in this
    /// assignment (set back to `committed` when that commit fails).
    pub(super) issued: Option<(i64, String)>,
    /// The position and metadata of the last commit the broker acknowledged.
    pub(super) committed: Option<(i64, String)>,
    /// When each job done since the last acknowledged commit that covers
    /// it was done, with its offset, oldest first: what a crash would send
    /// again.
    pub(super) done_at: VecDeque<(Instant, i64)>,
    /// The out-of-order window is full: the finished offsets above the
    /// watermark took more than `finished::WINDOW_PAUSE_BYTES` at the last
    /// measure, and not yet back to `WINDOW_RESUME_BYTES`. The partition is
    /// not read meanwhile.
    pub(super) window_full: bool,
    /// Bytes held for this assignment's records (see `backpressure`).
    pub(super) bytes: usize,
    /// Over its share of the memory budget, and not yet back to four fifths
    /// of it: not read meanwhile.
    pub(super) over_share: bool,
    /// A pause for its share was logged at info in this assignment.
    pub(super) share_logged: bool,
    /// Whether the consumer has the partition paused (for any reason): what
    /// was last asked of it, so that each pause and resume is issued once.
    pub(super) paused: bool,
    /// A commit of this assignment had to leave finished ranges out of its
    /// metadata; warned once.
    pub(super) overflow_warned: bool,
}

impl Owned {
    pub(super) fn new(
        ownership: Arc<Ownership>,
        skip: VecDeque<RangeInclusive<i64>>,
        inherited: Option<RangeInclusive<i64>>,
    ) -> Self {
        Owned {
            ownership,
            tracker: OffsetTracker::new(),
            leases: 0,
            skip,
            read: None,
            inherited,
            dirty: false,
            issued: None,
            committed: None,
            done_at: VecDeque::new(),
            window_full: false,
            bytes: 0,
            over_share: false,
            share_logged: false,
            paused: false,
            overflow_warned: false,
        }
    }

    pub(super) fn epoch(&self) -> u64 {
        self.ownership.epoch
    }

    /// A revocation of this assignment is in progress (or it was lost).
    pub(super) fn revoking(&self) -> bool {
        self.ownership.is_revoked()
    }

    /// Tracks the record at `offset` (costing `bytes`) as handed out, under a
    /// lease of `ownership` (this assignment's, as the record was polled
    /// under it).
    pub(super) fn lease(&mut self, ownership: Arc<Ownership>, offset: i64, bytes: usize) -> Lease {
        debug_assert!(Arc::ptr_eq(&ownership, &self.ownership));
        self.tracker.track(offset);
        self.leases += 1;
        Lease::new(ownership, offset, bytes)
    }

    /// Whether the record at `offset` was finished before this assignment.
    /// Records come in increasing offset order, so ranges below it are done
    /// with.
    pub(super) fn finished_before(&mut self, offset: i64) -> bool {
        self.read = Some(self.read.as_ref().map_or(offset, |read| *read.start())..=offset);
        while self.skip.front().is_some_and(|range| *range.end() < offset) {
            self.skip.pop_front();
        }
        self.skip.front().is_some_and(|range| range.contains(&offset))
    }

    /// A job of a lost assignment of this partition here, at `offset`, is
    /// done (its result acknowledged after the loss): when this assignment
    /// has not read that far yet, its record is skipped. Whether it will be.
    pub(super) fn inherit(&mut self, offset: i64) -> bool {
        let ahead = self.read.as_ref().is_none_or(|read| offset > *read.end());
        ahead
            && self.inherited.as_ref().is_some_and(|inherited| inherited.contains(&offset))
            && lost::insert(&mut self.skip, offset, lost::MAX_SKIP_RANGES)
    }

    /// The position to commit and its metadata; `None` before any record.
    pub(super) fn position(&self) -> Option<(i64, finished::Encoded)> {
        let watermark = self.tracker.watermark()?;
        Some((watermark, finished::encode(watermark, self.tracker.finished_above())))
    }

    /// Updates `window_full` from the metadata just encoded; whether it
    /// changed. Hysteresis between the two sizes.
    pub(super) fn measure_window(&mut self, metadata: &finished::Encoded) -> bool {
        let bytes = metadata.text.len();
        let full = if self.window_full {
            metadata.left_out_from.is_some() || bytes > finished::WINDOW_RESUME_BYTES
        } else {
            metadata.left_out_from.is_some() || bytes > finished::WINDOW_PAUSE_BYTES
        };
        let changed = full != self.window_full;
        self.window_full = full;
        changed
    }
}
