//! One partition's in-flight offsets and the contiguous watermark derived from
//! them: the lowest unresolved offset, which is the next offset to commit.
//! Offsets are resolved in any order (jobs for different numbers finish at
//! different speeds); the watermark only moves past an offset once every
//! offset below it is resolved too.

use std::collections::BTreeSet;

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
}

#[cfg(test)]
mod tests;
