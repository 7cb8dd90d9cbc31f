//! Backpressure, for three reasons, each pausing partitions independently:
//!
//! - memory budget: at most `max_in_memory` records, and at most
//!   `max_in_memory_bytes` (each record's key and value plus
//!   `RECORD_OVERHEAD`), are held (polled and not yet handed out, or handed
//!   out and not yet resolved); at either mark every owned partition is
//!   paused, and once below both low-water marks (`resume_below`, four
//!   fifths of the bytes) they are resumed;
//! - partition share: one partition may hold at most twice its even share
//!   of the bytes (`2 × max_in_memory_bytes / partitions owned`, all of it
//!   with one partition); over it that partition alone is paused, and
//!   resumed below four fifths of its share. So a partition whose jobs wait
//!   (a slow number) takes at most its share, and the others keep being
//!   read unless half of all partitions are stuck at theirs;
//! - out-of-order window: a partition whose finished offsets above its
//!   watermark no longer fit comfortably in the commit metadata is paused on
//!   its own (measured at each commit, see `commit`), and resumed once they
//!   fit again.
//!
//! A partition is paused while any reason holds: the memory resume does
//! not resume a partition whose window is full, nor the reverse;
//! `Shared::apply_pauses` issues only the changes. Pauses and resumes for
//! the memory budget and the window are logged each time (info); a
//! partition's first pause for its share in an assignment is logged (info),
//! the later ones at debug level, since a partition at its share may pause
//! and resume every few seconds. Records already read keep being handed out
//! and resolved; only further reads stop. The polling thread keeps polling
//! while partitions are paused, so the consumer stays in the group.

use rdkafka::consumer::Consumer;

use super::{Shared, State};

/// How many owned partitions are paused, per reason. A partition paused for
/// several reasons counts in each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PausedCounts {
    /// Paused because the records in memory reached `max_in_memory` or
    /// `max_in_memory_bytes`.
    pub memory: usize,
    /// Paused because the partition holds more than its share of the bytes.
    pub share: usize,
    /// Paused because their out-of-order window is full: the finished
    /// offsets above the watermark would soon not fit in the commit
    /// metadata.
    pub window: usize,
    /// Paused for any reason: each partition once.
    pub any: usize,
}

impl State {
    /// Records read and not yet resolved: what the water marks apply to.
    pub(super) fn in_memory(&self) -> usize {
        self.buffered + self.tracked
    }

    pub(super) fn paused_counts(&self) -> PausedCounts {
        let owned = self.owned.values().filter(|o| !o.revoking());
        let mut counts = PausedCounts::default();
        for o in owned {
            counts.memory += usize::from(self.paused);
            counts.share += usize::from(o.over_share);
            counts.window += usize::from(o.window_full);
            counts.any += usize::from(self.paused || o.over_share || o.window_full);
        }
        counts
    }

    /// The bytes one partition may hold: twice its even share of the budget,
    /// and never more than the budget.
    fn share(&self, max_bytes: usize) -> usize {
        let partitions = self.owned.values().filter(|o| !o.revoking()).count();
        if partitions <= 2 {
            return max_bytes;
        }
        2 * max_bytes / partitions
    }
}

impl Shared {
    /// `bytes` more are held for `partition` (a record polled).
    pub(super) fn charge(&self, state: &mut State, partition: i32, bytes: usize) {
        let Some(owned) = state.owned.get_mut(&partition) else {
            return;
        };
        owned.bytes += bytes;
        state.bytes += bytes;
        self.pause_if_full(state);
        self.pause_if_over_share(state, partition);
    }

    /// `bytes` held for `partition` under the assignment `epoch` are freed
    /// (a record dropped, or its lease released). Bytes of an assignment
    /// that has ended left the count with it.
    pub(super) fn refund(&self, state: &mut State, partition: i32, epoch: u64, bytes: usize) {
        let Some(owned) = state.owned.get_mut(&partition).filter(|o| o.epoch() == epoch) else {
            return;
        };
        owned.bytes -= bytes;
        state.bytes -= bytes;
        self.resume_if_within_share(state, partition);
    }

    /// Pauses every owned partition once either high-water mark is reached.
    pub(super) fn pause_if_full(&self, state: &mut State) {
        let full = state.in_memory() >= self.max_in_memory || state.bytes >= self.max_in_memory_bytes;
        if state.paused || !full {
            return;
        }
        state.paused = true;
        tracing::info!(
            reason = "memory budget",
            partitions = ?state.owned.keys().collect::<Vec<_>>(),
            in_memory = state.in_memory(),
            bytes = state.bytes,
            "pausing the jobs topic"
        );
        self.apply_pauses(state);
    }

    /// Resumes the owned partitions once below both low-water marks (but
    /// those paused for another reason).
    pub(super) fn resume_if_drained(&self, state: &mut State) {
        let drained = state.in_memory() < self.resume_below && state.bytes < self.max_in_memory_bytes / 5 * 4;
        if !state.paused || !drained {
            return;
        }
        state.paused = false;
        tracing::info!(
            reason = "memory budget",
            in_memory = state.in_memory(),
            bytes = state.bytes,
            "resuming the jobs topic"
        );
        self.apply_pauses(state);
    }

    fn pause_if_over_share(&self, state: &mut State, partition: i32) {
        let share = state.share(self.max_in_memory_bytes);
        let Some(owned) = state.owned.get_mut(&partition) else {
            return;
        };
        if owned.over_share || owned.bytes < share {
            return;
        }
        owned.over_share = true;
        if std::mem::replace(&mut owned.share_logged, true) {
            tracing::debug!(partition, bytes = owned.bytes, share, "pausing a partition over its share");
        } else {
            tracing::info!(
                reason = "partition share",
                partition,
                bytes = owned.bytes,
                share,
                "pausing a jobs partition over its share of the memory budget (its jobs are slow); \
                 the others are still read; later pauses of it are logged at debug level"
            );
        }
        self.apply_pauses(state);
    }

    fn resume_if_within_share(&self, state: &mut State, partition: i32) {
        let share = state.share(self.max_in_memory_bytes);
        let Some(owned) = state.owned.get_mut(&partition) else {
            return;
        };
        if !owned.over_share || owned.bytes >= share / 5 * 4 {
            return;
        }
        owned.over_share = false;
        tracing::debug!(partition, bytes = owned.bytes, share, "resuming a partition within its share");
        self.apply_pauses(state);
    }

    /// Brings the consumer's paused partitions in line with the reasons:
    /// pauses the owned partitions that have one and are not paused, resumes
    /// those paused that have none left. Partitions being revoked are left
    /// as they are.
    pub(super) fn apply_pauses(&self, state: &mut State) {
        let memory = state.paused;
        let (mut pause, mut resume) = (Vec::new(), Vec::new());
        for (&partition, owned) in state.owned.iter_mut().filter(|(_, o)| !o.revoking()) {
            let wanted = memory || owned.over_share || owned.window_full;
            if wanted == owned.paused {
                continue;
            }
            owned.paused = wanted;
            if wanted {
                pause.push(partition);
            } else {
                resume.push(partition);
            }
        }
        if pause.is_empty() && resume.is_empty() {
            return;
        }
        // Without a consumer (gone, or in unit tests) only the flags change.
        let Some(consumer) = self.consumer() else {
            return;
        };
        if !pause.is_empty() {
            if let Err(error) = consumer.pause(&self.tpl(pause.iter().copied())) {
                tracing::warn!(%error, partitions = ?pause, "could not pause jobs partitions");
            }
        }
        if !resume.is_empty() {
            if let Err(error) = consumer.resume(&self.tpl(resume.iter().copied())) {
                tracing::warn!(%error, partitions = ?resume, "could not resume jobs partitions");
            }
        }
    }
}
