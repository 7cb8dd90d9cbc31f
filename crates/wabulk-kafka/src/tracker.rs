//! One partition's in-flight offsets and the contiguous watermark derived from
//! them: the lowest unresolved offset, which is the next offset to commit.
//! Offsets are resolved in any order (jobs for different numbers finish at
//! different speeds); the watermark only moves past an offset once every
//! offset below it is resolved too.
//!
//! Offsets above the watermark that are already resolved are not lost to a
//! restart: [`OffsetTracker::finished_above`] lists them, and the consumer
//! stores them (as ranges) in the offset commit metadata next to the
//! watermark, so that whoever reads the partition next skips them instead of
//! sending their jobs again (see `ingest`). They need no memory of their
//! own: they are the offsets between the watermark and the highest tracked
//! one that are not pending.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;

#[derive(Debug, Clone, Default)]
pub struct OffsetTracker {
    /// Offsets handed out and not yet resolved; the lowest is the watermark.
    /// A `BTreeSet` rather than a ring of flags because offsets can have gaps
    /// (compaction, transaction markers) and resolution order is arbitrary.
    pending: BTreeSet<i64>,
    /// One past the highest offset ever tracked: the watermark once nothing
    /// is pending. `None` until the first `track`.
    next: Option<i64>,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `offset` as in flight. Tracking an offset already pending is a
    /// no-op.
    pub fn track(&mut self, offset: i64) {
        self.pending.insert(offset);
        let after = offset + 1;
        self.next = Some(self.next.map_or(after, |next| next.max(after)));
    }

    /// Marks `offset` as finished. Returns the new watermark when it advanced
    /// (that is the position to store), `None` when it did not or when the
    /// offset was not pending (already resolved, or from before a reset).
    pub fn resolve(&mut self, offset: i64) -> Option<i64> {
        let before = self.watermark();
        if !self.pending.remove(&offset) {
            return None;
        }
        let after = self.watermark()?;
        match before {
            Some(before) if after <= before => None,
            _ => Some(after),
        }
    }

    /// How many offsets are in flight.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The next offset to commit: the lowest pending offset, or one past the
    /// highest tracked offset when none is pending; `None` before any `track`.
    pub fn watermark(&self) -> Option<i64> {
        self.pending.first().copied().or(self.next)
    }

    /// The offsets above the watermark that need no more work, as ascending,
    /// disjoint, non-adjacent ranges: every offset between the watermark and
    /// the highest tracked one that is not pending. That is the resolved
    /// ones, and the offsets in gaps that were never tracked (compacted
    /// records, transaction markers: offsets are tracked in increasing order,
    /// so a gap below the highest tracked offset has nothing to hand out).
    /// Empty when nothing is pending (the watermark is then past them all).
    /// Costs one step per pending offset up to the last range taken.
    pub fn finished_above(&self) -> impl Iterator<Item = RangeInclusive<i64>> + '_ {
        let next = self.next.unwrap_or(i64::MIN);
        let mut pending = self.pending.iter().copied().peekable();
        std::iter::from_fn(move || loop {
            let current = pending.next()?;
            // Up to the next pending offset, or to the highest tracked one.
            let end = pending.peek().map_or(next, |&following| following) - 1;
            if end > current {
                return Some(current + 1..=end);
            }
        })
    }
}

#[cfg(test)]
mod tests;
