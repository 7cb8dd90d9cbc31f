//! [`DepartureWindow`]: the exact "at most `limit` in any window" check, with
//! a window that may change from one call to the next.
//!
//! The scheduler's [`crate::NumberLimiter`] decides sends; this one is checked
//! where they leave (the sender's departure gate), with a window of 1 s plus
//! the margin plus an allowance for the host's scheduling delay, which rises
//! and falls with the load. Any window is safe at any call: the check always
//! looks back over the real departure times, so a longer window spaces the
//! next departures further from the past ones at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::duration_nanos;
use crate::{Moment, NotUntil};

#[cfg(test)]
mod tests;

/// The last `limit` departure times of one number.
#[derive(Debug, Clone)]
pub struct DepartureWindow {
    limit: usize,
    /// Oldest first, non-decreasing, at most `limit` entries: a check never
    /// needs to look further back than the limit-th most recent departure.
    departures: VecDeque<u64>,
}

impl DepartureWindow {
    /// At most `limit` (at least 1) departures in any window.
    pub fn new(limit: u32) -> Self {
        let limit = limit.max(1) as usize;
        DepartureWindow { limit, departures: VecDeque::with_capacity(limit) }
    }

    /// Records a departure at `now` if the `window` ending at `now` has room
    /// for it, else names the instant it will (for the same window). A `now`
    /// earlier than a recorded departure counts as that departure's time.
    pub fn depart(&mut self, now: Moment, window: Duration) -> Result<(), NotUntil> {
        let latest = self.departures.back().copied().unwrap_or(0);
        let t = now.as_nanos().max(latest);
        if self.departures.len() == self.limit {
            // Free once the oldest of the last `limit` is outside (t - window, t].
            let free_at = self.departures[0].saturating_add(duration_nanos(window));
            if t < free_at {
                return Err(NotUntil(Moment::from_nanos(free_at)));
            }
            self.departures.pop_front();
        }
        self.departures.push_back(t);
        Ok(())
    }

    pub fn limit(&self) -> u32 {
        self.limit as u32
    }

    /// Changes the limit (at least 1) from the next departure on, keeping
    /// the most recent departures, which are all a check needs.
    pub fn set_limit(&mut self, limit: u32) {
        let old = std::mem::replace(&mut self.limit, limit.max(1) as usize);
        crate::number::keep_recent(&mut self.departures, old, self.limit);
    }
}

/// How much every number's window is widened now: set from the host's
/// scheduling delay, read by the scheduler (so decisions are paced at the
/// rate departures are allowed, and nothing queues at the gate) and by the
/// departure gates. Whole milliseconds, so that readers see few changes.
#[derive(Debug, Default)]
pub struct WindowAllowance {
    millis: AtomicU64,
}

impl WindowAllowance {
    pub fn get(&self) -> Duration {
        Duration::from_millis(self.millis.load(Ordering::Relaxed))
    }

    /// Rounded up to a whole millisecond.
    pub fn set(&self, allowance: Duration) {
        let millis = u64::try_from(allowance.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        self.millis.store(millis, Ordering::Relaxed);
    }
}
