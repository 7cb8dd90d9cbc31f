//! What a lost assignment finished: the side table `Ingest` keeps for a
//! partition whose assignment librdkafka revoked as lost (the session
//! expired, typically during a broker outage longer than the session).
//!
//! A lost assignment commits nothing (the partition may already be someone
//! else's), so without this table every job of it done since its last
//! acknowledged commit, and every job of it still being worked on, would be
//! handed out again when the partition comes back, and sent twice. What the
//! table keeps instead are the offsets the lost ownership finished (the
//! watermark's prefix and the finished ranges above it), plus the offsets of
//! its jobs done late (their lease done after the loss). When the
//! partition is assigned to this consumer again, they are merged into the
//! offsets to skip (with those of the commit metadata), so the new
//! ownership resolves their records at once and commits past them.
//!
//! Skipping them is always correct, whoever owned the partition meanwhile:
//! an offset is finished only once its job's result (or dead letter) was
//! acknowledged by Kafka.
//!
//! Bounds: at most one entry per partition (an assignment of the partition
//! consumes its entry); each holds at most [`MAX_LOST_RANGES`] ranges (when
//! full, the lowest are kept and a new range displaces the highest; offsets
//! left out are only sent again, as with the metadata's size cap), so at
//! most 64 KiB per partition; an entry not
//! consumed within [`LOST_TTL`] is dropped.

use std::collections::VecDeque;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use crate::OffsetTracker;

/// How long a lost partition's finished offsets are kept for its next
/// assignment to this consumer.
pub(crate) const LOST_TTL: Duration = Duration::from_secs(600);

/// The most ranges of finished offsets kept per lost partition (16 bytes
/// each). Far above what the commit metadata carries (at most 3,500 bytes),
/// and above what a partition's tracker can hold apart (one range per job in
/// memory).
pub(crate) const MAX_LOST_RANGES: usize = 4_096;

/// The most ranges a partition's offsets to skip hold: the metadata's and a
/// lost entry's, plus late dones.
pub(crate) const MAX_SKIP_RANGES: usize = 2 * MAX_LOST_RANGES;

/// One lost partition's finished offsets.
#[derive(Debug, Clone)]
pub(crate) struct LostPartition {
    /// The offsets the lost ownership read (and those it inherited from an
    /// earlier lost one): a late `done` outside them is not its job.
    read: Option<RangeInclusive<i64>>,
    /// Finished offsets: ascending, disjoint, non-adjacent.
    finished: VecDeque<RangeInclusive<i64>>,
    lost_at: Instant,
    /// Jobs done in the lost ownership and covered by no acknowledged
    /// commit: what a crash now would send again (for the commit listener).
    pub(crate) uncommitted: usize,
    /// The lost ownership's epoch, and its leases not yet released: its
    /// jobs still with the engine, which the partition's next assignment
    /// here waits for (set by the consumer).
    pub(crate) epoch: u64,
    pub(crate) leases: usize,
}

impl LostPartition {
    /// What an ownership that read `read` (`None`: nothing) with `tracker`,
    /// and still had `skip` to skip above it, finished; `None` when there is
    /// nothing to remember.
    pub(crate) fn new(
        read: Option<RangeInclusive<i64>>,
        tracker: &OffsetTracker,
        skip: &VecDeque<RangeInclusive<i64>>,
        uncommitted: usize,
        now: Instant,
    ) -> Option<Self> {
        let mut finished = VecDeque::new();
        if let (Some(read), Some(watermark)) = (&read, tracker.watermark()) {
            // Everything read below the watermark is finished.
            if watermark > *read.start() {
                finished.push_back(*read.start()..=watermark - 1);
            }
            finished.extend(tracker.finished_above());
        }
        let mut finished = union(finished, skip.iter().cloned());
        finished.truncate(MAX_LOST_RANGES);
        if read.is_none() && finished.is_empty() {
            return None;
        }
        Some(LostPartition { read, finished, lost_at: now, uncommitted, epoch: 0, leases: 0 })
    }

    /// The job at `offset` of the lost ownership is finished (its result
    /// was acknowledged after the loss). Whether it was recorded: `false`
    /// for an offset the ownership did not read, one already finished, or
    /// one beyond the cap.
    pub(crate) fn done(&mut self, offset: i64) -> bool {
        if !self.read.as_ref().is_some_and(|read| read.contains(&offset)) {
            return false;
        }
        insert(&mut self.finished, offset, MAX_LOST_RANGES)
    }

    pub(crate) fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.lost_at) >= LOST_TTL
    }

    /// How many offsets are remembered as finished.
    pub(crate) fn finished_count(&self) -> i64 {
        self.finished.iter().map(|r| r.end() - r.start() + 1).sum()
    }

    /// For the next assignment, whose committed position is `committed`
    /// (`None`: unknown) and whose metadata lists `skip`: the offsets to
    /// skip (the union, from `committed` up), and the offsets the lost
    /// ownership read, for its jobs done later still.
    pub(crate) fn merge_into(
        self,
        committed: Option<i64>,
        skip: Vec<RangeInclusive<i64>>,
    ) -> (VecDeque<RangeInclusive<i64>>, Option<RangeInclusive<i64>>) {
        let floor = committed.unwrap_or(i64::MIN);
        let remembered = self
            .finished
            .into_iter()
            .filter(|range| *range.end() >= floor)
            .map(|range| (*range.start()).max(floor)..=*range.end());
        let mut merged = union(skip.into(), remembered);
        merged.truncate(MAX_SKIP_RANGES);
        (merged, self.read)
    }
}

/// Adds `offset` to `ranges` (ascending, disjoint, non-adjacent), merging
/// neighbours. Whether it was added: `false` when already there, or when it
/// would need a new range above the `cap`-th (the highest range is dropped
/// to make room for a lower one).
pub(crate) fn insert(ranges: &mut VecDeque<RangeInclusive<i64>>, offset: i64, cap: usize) -> bool {
    // The first range starting above `offset`.
    let at = ranges.partition_point(|range| *range.start() <= offset);
    let below = at.checked_sub(1).filter(|&i| *ranges[i].end() >= offset.saturating_sub(1));
    if below.is_some_and(|i| ranges[i].contains(&offset)) {
        return false;
    }
    let above = Some(at).filter(|&i| i < ranges.len() && Some(*ranges[i].start()) == offset.checked_add(1));
    match (below, above) {
        (Some(b), Some(a)) => {
            ranges[b] = *ranges[b].start()..=*ranges[a].end();
            ranges.remove(a);
        }
        (Some(b), None) => ranges[b] = *ranges[b].start()..=offset,
        (None, Some(a)) => ranges[a] = offset..=*ranges[a].end(),
        (None, None) => {
            if at >= cap {
                return false;
            }
            ranges.insert(at, offset..=offset);
            ranges.truncate(cap);
        }
    }
    true
}

/// The union of two lists of ranges (each ascending and disjoint), as
/// ascending, disjoint, non-adjacent ranges.
pub(crate) fn union(
    a: VecDeque<RangeInclusive<i64>>,
    b: impl IntoIterator<Item = RangeInclusive<i64>>,
) -> VecDeque<RangeInclusive<i64>> {
    let mut all: Vec<RangeInclusive<i64>> = a.into_iter().chain(b).filter(|r| !r.is_empty()).collect();
    all.sort_unstable_by_key(|r| *r.start());
    let mut merged: VecDeque<RangeInclusive<i64>> = VecDeque::with_capacity(all.len());
    for range in all {
        match merged.back_mut() {
            Some(last) if *range.start() <= last.end().saturating_add(1) => {
                *last = *last.start()..=(*last.end()).max(*range.end());
            }
            _ => merged.push_back(range),
        }
    }
    merged
}

#[cfg(test)]
mod tests;
