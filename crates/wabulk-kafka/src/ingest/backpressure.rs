//! Backpressure: at most `max_in_memory` records are held (polled and not
//! yet handed out, or handed out and not yet resolved); at that mark every
//! owned partition is paused, and below `resume_below` they are resumed.
//! The polling thread keeps polling while they are paused, so the consumer
//! stays in the group.

use rdkafka::consumer::Consumer;

use super::{Shared, State};

impl State {
    /// Records read and not yet resolved: what the water marks apply to.
    pub(super) fn in_memory(&self) -> usize {
        self.buffered + self.tracked
    }
}

impl Shared {
    /// Pauses every owned partition once the high-water mark is reached.
    pub(super) fn pause_if_full(&self, state: &mut State) {
        if state.paused || state.in_memory() < self.max_in_memory {
            return;
        }
        let Some(consumer) = self.consumer() else {
            return;
        };
        state.paused = true;
        let tpl = self.tpl(state.owned.keys().copied());
        tracing::debug!(in_memory = state.in_memory(), "backpressure: pausing the jobs topic");
        if let Err(error) = consumer.pause(&tpl) {
            tracing::warn!(%error, "could not pause the jobs topic");
        }
    }

    /// Resumes the owned partitions once below the low-water mark.
    pub(super) fn resume_if_drained(&self, state: &mut State) {
        if !state.paused || state.in_memory() >= self.resume_below {
            return;
        }
        let Some(consumer) = self.consumer() else {
            return;
        };
        state.paused = false;
        let tpl = self.tpl(state.owned.keys().copied());
        tracing::debug!(in_memory = state.in_memory(), "backpressure: resuming the jobs topic");
        if let Err(error) = consumer.resume(&tpl) {
            tracing::warn!(%error, "could not resume the jobs topic");
        }
    }
}
