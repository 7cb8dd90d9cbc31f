//! Backpressure, for two reasons, each pausing partitions independently:
//!
//! - memory budget: at most `max_in_memory` records are held (polled and not
//!   yet handed out, or handed out and not yet resolved); at that mark every
//!   owned partition is paused, and below `resume_below` they are resumed;
//! - out-of-order window: a partition whose finished offsets above its
//!   watermark no longer fit comfortably in the commit metadata is paused on
//!   its own (measured at each commit, see `commit`), and resumed once they
//!   fit again.
//!
//! A partition is paused while either reason holds: the memory resume does
//! not resume a partition whose window is full, nor the reverse;
//! `Shared::apply_pauses` issues only the changes. Each reason's pause and
//! resume is logged once (info). Records already read keep being handed out
//! and resolved; only further reads stop. The
//! polling thread keeps polling while partitions are paused, so the consumer
//! stays in the group.

use rdkafka::consumer::Consumer;

use super::{Shared, State};

/// How many owned partitions are paused, per reason. A partition paused for
/// both counts in both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PausedCounts {
    /// Paused because the records in memory reached `max_in_memory`.
    pub memory: usize,
    /// Paused because their out-of-order window is full: the finished
    /// offsets above the watermark would soon not fit in the commit
    /// metadata.
    pub window: usize,
    /// Paused for either reason: each partition once.
    pub any: usize,
}

impl State {
    /// Records read and not yet resolved: what the water marks apply to.
    pub(super) fn in_memory(&self) -> usize {
        self.buffered + self.tracked
    }

    pub(super) fn paused_counts(&self) -> PausedCounts {
        let owned = self.owned.values().filter(|o| !o.revoking());
        let (mut memory, mut window, mut any) = (0, 0, 0);
        for o in owned {
            memory += usize::from(self.paused);
            window += usize::from(o.window_full);
            any += usize::from(self.paused || o.window_full);
        }
        PausedCounts { memory, window, any }
    }
}

impl Shared {
    /// Pauses every owned partition once the high-water mark is reached.
    pub(super) fn pause_if_full(&self, state: &mut State) {
        if state.paused || state.in_memory() < self.max_in_memory {
            return;
        }
        state.paused = true;
        tracing::info!(
            reason = "memory budget",
            partitions = ?state.owned.keys().collect::<Vec<_>>(),
            in_memory = state.in_memory(),
            "pausing the jobs topic"
        );
        self.apply_pauses(state);
    }

    /// Resumes the owned partitions once below the low-water mark (but those
    /// whose window is full).
    pub(super) fn resume_if_drained(&self, state: &mut State) {
        if !state.paused || state.in_memory() >= self.resume_below {
            return;
        }
        state.paused = false;
        tracing::info!(reason = "memory budget", in_memory = state.in_memory(), "resuming the jobs topic");
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
            let wanted = memory || owned.window_full;
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
