//! [`Pacer`]: releases records on a fixed schedule (record n is due at
//! origin + n / rate), in batches: the writer asks how many are due, sends
//! them, and sleeps until the next one is. One timer per batch rather than
//! per record is what keeps it accurate at tens of thousands per second,
//! where a record is due every few microseconds but timers fire per
//! millisecond.

use tokio::time::{Duration, Instant};

/// How much backlog survives a stall, in seconds of traffic: after the
/// writer was held up (sends in flight at the cap, a slow runtime), it
/// catches up at most this much at once and forgets the rest, so a stall is
/// not followed by a burst far above the rate. Raising it makes the average
/// rate more exact after stalls; lowering it makes the rate smoother.
const MAX_CATCH_UP_S: f64 = 0.05;

#[derive(Debug)]
pub(crate) struct Pacer {
    /// Records per second.
    rate: f64,
    /// Where the schedule starts; moved forward when backlog is forgotten.
    origin: Instant,
    /// Records released since `origin`: the next one is due at
    /// `origin + released / rate`.
    released: u64,
    /// The most records ever due at once (at least one).
    max_due: u64,
}

impl Pacer {
    /// The first record is due at `now`.
    pub(crate) fn new(rate: f64, now: Instant) -> Self {
        let max_due = ((rate * MAX_CATCH_UP_S) as u64).max(1);
        Self { rate, origin: now, released: 0, max_due }
    }

    /// How many records are due at `now` (not yet released).
    pub(crate) fn due(&mut self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_secs_f64();
        // Record n is due once elapsed >= n / rate, so floor(elapsed × rate) + 1
        // of them are due (record 0 at once).
        let scheduled = (elapsed * self.rate) as u64 + 1;
        let due = scheduled.saturating_sub(self.released);
        if due > self.max_due {
            // Behind by more than the catch-up allowance: skip the schedule
            // ahead rather than burst.
            self.released = scheduled - self.max_due;
            return self.max_due;
        }
        due
    }

    /// Marks `count` records as released (sent).
    pub(crate) fn release(&mut self, count: u64) {
        self.released += count;
    }

    /// When the next unreleased record is due.
    pub(crate) fn next_due(&self) -> Instant {
        self.origin + Duration::from_secs_f64(self.released as f64 / self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn releases_the_rate_in_batches() {
        let start = Instant::now();
        let mut pacer = Pacer::new(50_000.0, start);
        let mut released = 0;
        // Drive it as the writer does: take what is due, sleep to the next.
        while Instant::now() < start + Duration::from_secs(1) {
            let due = pacer.due(Instant::now());
            pacer.release(due);
            released += due;
            tokio::time::sleep_until(pacer.next_due().max(Instant::now() + Duration::from_millis(1))).await;
        }
        assert!((49_500..=50_500).contains(&released), "released {released}");
    }

    #[tokio::test(start_paused = true)]
    async fn first_record_is_due_at_once_and_the_next_one_later() {
        let start = Instant::now();
        let mut pacer = Pacer::new(10.0, start);
        assert_eq!(pacer.due(start), 1);
        pacer.release(1);
        assert_eq!(pacer.due(start), 0);
        assert_eq!(pacer.next_due(), start + Duration::from_millis(100));
        assert_eq!(pacer.due(start + Duration::from_millis(100)), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_is_not_followed_by_a_burst() {
        let start = Instant::now();
        let mut pacer = Pacer::new(1_000.0, start);
        let due = pacer.due(start);
        pacer.release(due);
        // Ten seconds without sending: only 50 ms worth is caught up.
        let later = start + Duration::from_secs(10);
        assert_eq!(pacer.due(later), 50);
        pacer.release(50);
        assert_eq!(pacer.due(later), 0);
        let due = pacer.due(later + Duration::from_millis(10));
        assert!((9..=10).contains(&due), "due {due}");
    }
}
