//! The WABA call cap: at most `cap` Graph API calls in any rolling hour
//! (docs/platform.md "Limits": 1,800,000 × registered numbers by default; error
//! 80007 when over).
//!
//! [`WabaWindow`] counts calls in buckets of `resolution` (100 ms by default).
//! A call in bucket [b, b + res) is counted until b + res + window, so a call
//! is held at most one bucket longer than an exact log would hold it: the
//! accounting is conservative by less than one bucket and never lets more than
//! `cap` calls into any rolling window. An exact log would cost memory
//! proportional to the cap (millions of entries per WABA); the ring costs
//! 4 bytes per bucket, 144 kB per WABA at the defaults.

use std::time::Duration;

use crate::clock::duration_nanos;
use crate::{Moment, NotUntil};

#[cfg(test)]
mod tests;

/// Rolling-window call counter of one WABA. Owned by whoever admits calls for
/// the WABA; no locking inside.
///
/// Time is expected to be non-decreasing across calls; an earlier `now` is
/// treated as the latest time seen, which holds calls no shorter than they
/// should be.
#[derive(Debug, Clone)]
pub struct WabaWindow {
    /// Calls allowed in any rolling window.
    cap: u64,
    /// Bucket width in ns.
    resolution: u64,
    /// Calls per bucket, indexed by bucket number modulo the ring length. The
    /// ring holds the window's buckets plus the current one, because a call
    /// stays counted until one full window after the end of its bucket.
    ring: Box<[u32]>,
    /// Number of the newest bucket the ring reflects (time / resolution);
    /// buckets newer than it are empty and older ones are cleared as time passes.
    head: u64,
    /// `head`'s index in the ring, kept so recording a call needs no division.
    head_slot: usize,
    /// Where the head bucket ends (ns): most decisions fall inside it, and
    /// comparing with it spares them a 64-bit division.
    head_end: u64,
    /// Sum of `ring`, kept so a decision is O(1) instead of a 36,000-bucket scan.
    used: u64,
    /// Nothing is allowed before this (after 80007, or a usage header's hint).
    paused_until: u64,
}

impl WabaWindow {
    /// The platform's window: one hour.
    pub const WINDOW: Duration = Duration::from_secs(3600);
    /// Default bucket width. Lowering it makes the accounting less conservative
    /// (a call is held at most one bucket too long) at 4 bytes per bucket per
    /// WABA; raising it saves memory and holds calls longer.
    pub const RESOLUTION: Duration = Duration::from_millis(100);

    /// Window 1 h, bucket resolution 100 ms.
    pub fn new(hourly_cap: u64) -> Self {
        Self::with_resolution(hourly_cap, Self::WINDOW, Self::RESOLUTION)
    }

    /// For tests and other windows. `resolution` is at least 1 ns and `window`
    /// is rounded up to whole buckets (holding calls longer, never shorter).
    pub fn with_resolution(hourly_cap: u64, window: Duration, resolution: Duration) -> Self {
        let resolution = duration_nanos(resolution).max(1);
        let buckets = duration_nanos(window).div_ceil(resolution);
        let len = usize::try_from(buckets).expect("window / resolution fits in memory") + 1;
        WabaWindow {
            cap: hourly_cap,
            resolution,
            ring: vec![0; len].into_boxed_slice(),
            head: 0,
            head_slot: 0,
            head_end: resolution,
            used: 0,
            paused_until: 0,
        }
    }

    /// Whether `calls` more calls fit at `now` (advances the window, records
    /// nothing). On refusal, the exact instant at which they would fit. A
    /// request for more than the cap can never fit at once; it is answered
    /// with the instant the window is empty.
    pub fn check(&mut self, now: Moment, calls: u64) -> Result<(), NotUntil> {
        let t = now.as_nanos();
        self.advance(t);
        let calls = calls.min(self.cap);
        if t >= self.paused_until && self.used + calls <= self.cap {
            return Ok(());
        }
        Err(NotUntil(Moment::from_nanos(self.paused_until.max(self.room_at(self.cap - calls)).max(t))))
    }

    /// Records and grants `min(calls, room)` calls at `now`; 0 while paused.
    pub fn acquire_up_to(&mut self, now: Moment, calls: u64) -> u64 {
        let t = now.as_nanos();
        self.advance(t);
        if t < self.paused_until {
            return 0;
        }
        let slot = self.head_slot;
        // A bucket counts up to u32::MAX calls; a cap that large would need
        // four billion calls in one bucket, so clipping there costs nothing real.
        let grant = calls.min(self.cap.saturating_sub(self.used)).min(u64::from(u32::MAX - self.ring[slot]));
        self.ring[slot] += grant as u32;
        self.used += grant;
        grant
    }

    /// After 80007: nothing allowed before `until` (keeps the later pause).
    pub fn pause_until(&mut self, until: Moment) {
        self.paused_until = self.paused_until.max(until.as_nanos());
    }

    /// Calls in the current rolling window (for a gauge).
    pub fn used(&mut self, now: Moment) -> u64 {
        self.advance(now.as_nanos());
        self.used
    }

    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// Changes the cap (at least 1) from now on, keeping the calls in the
    /// window: a lower cap than what was used waits until enough leave.
    pub fn set_cap(&mut self, hourly_cap: u64) {
        self.cap = hourly_cap.max(1);
    }

    fn slot(&self, bucket: u64) -> usize {
        (bucket % self.ring.len() as u64) as usize
    }

    /// Moves the head to the bucket of `t`, clearing the buckets that fall out.
    fn advance(&mut self, t: u64) {
        if t < self.head_end {
            return;
        }
        let bucket = t / self.resolution;
        if bucket <= self.head {
            return;
        }
        let len = self.ring.len() as u64;
        if bucket - self.head >= len {
            self.ring.fill(0);
            self.used = 0;
        } else {
            for b in self.head + 1..=bucket {
                let slot = self.slot(b);
                self.used -= u64::from(self.ring[slot]);
                self.ring[slot] = 0;
            }
        }
        self.head = bucket;
        self.head_slot = self.slot(bucket);
        self.head_end = (bucket + 1).saturating_mul(self.resolution);
    }

    /// Earliest instant (ns) at which at most `target` calls remain counted,
    /// if no more are recorded. Bucket `b` stops counting when the head
    /// reaches `b + len`, i.e. at `(b + len) * resolution`; buckets are
    /// dropped oldest first, so scan from the oldest until enough have gone.
    fn room_at(&self, target: u64) -> u64 {
        let len = self.ring.len() as u64;
        let mut used = self.used;
        let oldest = self.head.saturating_sub(len - 1);
        let mut b = oldest;
        while used > target {
            used -= u64::from(self.ring[self.slot(b)]);
            b += 1;
        }
        if b == oldest {
            0
        } else {
            // b - 1 is the last bucket that had to go.
            (b - 1 + len).saturating_mul(self.resolution)
        }
    }
}
