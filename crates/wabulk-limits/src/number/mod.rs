//! Throughput of one business number (docs/platform.md "Limits": 80,
//! 1000, ... msg/s; error 130429 when over).
//!
//! [`NumberLimiter`] owns two checks that must both pass:
//!
//! * the **hard guarantee**: never more than the effective limit of sends in any
//!   window `(t - w, t]`, w being 1 s stretched by the margin. It is an exact
//!   sliding-window log: the times of the
//!   last `limit` sends, so the answer is never approximate and never over.
//! * **pacing**: GCRA with emission interval `w / limit` and a small burst
//!   tolerance (about 0.5 % of a second's worth), so a full second's quota is not
//!   sent in the first few milliseconds of each second. Bunched sends arrive at
//!   Meta even more bunched (docs/platform.md "Margins"); spreading them keeps the
//!   arrival rate, not only the send rate, under the limit.
//!
//! A refusal names the later of the two "not until" instants, which is exact.

use std::collections::VecDeque;
use std::time::Duration;

use crate::clock::duration_nanos;
use crate::{Moment, NotUntil};

#[cfg(test)]
mod tests;

const SEC: u64 = 1_000_000_000;

/// Pacing burst as a fraction of one second's quota: 1/200 = 0.5 % (5 sends
/// for a 1000/s number, at least 2). Raising it lets more sends go back to
/// back after an idle spell, and those bunch on the wire: with 5 %, a backlog
/// delivered in bursts started 100 numbers at 50 sends each at once, the
/// queue they formed drained faster than it filled, and the simulator saw up
/// to 1,042 arrivals in one second for a 1000/s number (loadtest/RESULTS.md,
/// "backlog"). Lowering it towards one send paces strictly at `1 s / limit`
/// but loses a slot to every late timer wake-up.
const PACING_BURST_DIVISOR: u64 = 200;

/// The parameters that follow from one effective limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pace {
    /// Sends allowed in any window of `window` ns.
    limit: u32,
    /// The window: 1 s stretched by the margin. Stretching the window rather
    /// than cutting the count keeps small tiers whole (20/s less 1 % would
    /// floor to 19/s) while still leaving room for arrivals bunched by jitter.
    window: u64,
    /// GCRA emission interval in ns: `window / limit`, rounded up so pacing
    /// alone never exceeds the limit.
    interval: u64,
    /// GCRA tolerance in ns: `(burst - 1) * interval`, so `burst` sends may
    /// go back to back when the limiter has been idle.
    tolerance: u64,
}

impl Pace {
    fn new(limit: u32, window: u64, burst_override: Option<u32>) -> Self {
        let limit = limit.max(1);
        let interval = window.div_ceil(u64::from(limit));
        let burst = match burst_override {
            Some(b) => u64::from(b.max(1)),
            // At least 2: with no tolerance every late timer wake-up would be
            // lost for good, and small tiers would run a few percent slow.
            None => u64::from(limit).div_ceil(PACING_BURST_DIVISOR).max(2),
        };
        Pace { limit, window, interval, tolerance: (burst - 1).saturating_mul(interval) }
    }
}

/// Throughput limiter of one business number. Not shared: the scheduler shard
/// that owns the number owns its limiter, so there is no locking inside.
///
/// Time is expected to be non-decreasing across calls. An earlier `now` is
/// handled conservatively: sends are recorded at the latest time seen, so they
/// leave the window later, never earlier, than they really should.
#[derive(Debug, Clone)]
#[cfg_attr(test, derive(PartialEq, Eq))]
pub struct NumberLimiter {
    /// The configured messages per second, kept for reporting.
    mps: u32,
    /// Custom GCRA burst (sends), set only by [`NumberLimiter::with_burst_tolerance`];
    /// `None` means the default 0.5 % of the limit.
    burst_override: Option<u32>,
    /// Parameters at the full effective limit (configured mps less the margin).
    full: Pace,
    /// Parameters while slowed down after a 130429; meaningful only before `slow_until`.
    slowed: Pace,
    /// 1 s stretched by the margin: the window before any widening.
    base_window: u64,
    /// What [`NumberLimiter::widen`] last added to the window, in ns.
    widened_by: u64,
    /// End of the current slow-down (exclusive); at and after it `full` applies.
    slow_until: u64,
    /// How many times the limit is halved while slowed; grows with repeated 130429s.
    slow_halvings: u32,
    /// When the limit was last halved: a 130429 for a request sent before
    /// it describes the excess already answered.
    slowed_at: u64,
    /// Nothing is allowed before this (handover, 131057 upgrade, 131048 spam pause).
    paused_until: u64,
    /// GCRA theoretical arrival time in ns: the instant the next send would be
    /// due if sends were perfectly paced; it runs ahead of `now` by the debt.
    tat: u64,
    /// Times (ns) of the most recent sends, oldest first and non-decreasing; at
    /// most `full.limit` entries, because the hard window check never needs to
    /// look further back than the limit-th most recent send.
    sends: VecDeque<u64>,
}

impl NumberLimiter {
    /// The margin a number is paced under its configured mps unless configured
    /// otherwise, in percent. Absorbs network jitter that bunches arrivals.
    pub const DEFAULT_MARGIN_PERCENT: f64 = 1.0;

    /// `mps`: configured messages/s (20..=1000 and beyond, >=1). `margin_percent` (0.0..50.0, default 1.0): pace this much under mps.
    ///
    /// No history: may send at once. An `mps` of 0 is taken as 1, a margin
    /// outside `0.0..=50.0` is clamped into it and NaN means the default, so a
    /// bad configuration slows a number down rather than failing it.
    pub fn new(mps: u32, margin_percent: f64) -> Self {
        Self::build(mps, margin_percent, None)
    }

    /// Like [`NumberLimiter::new`] with the pacing burst set to `burst` sends
    /// (at least 1) instead of 0.5 % of the limit. `u32::MAX` effectively turns
    /// pacing off and leaves only the exact 1 s window, which tests use to check
    /// the window on its own.
    pub fn with_burst_tolerance(mps: u32, margin_percent: f64, burst: u32) -> Self {
        Self::build(mps, margin_percent, Some(burst))
    }

    /// Conservative start after a rebalance: assume the previous owner used the
    /// whole last second, so nothing is allowed before `now + 1 s`, and no burst
    /// credit, so from then on sends are paced from the first one.
    pub fn after_handover(mps: u32, margin_percent: f64, now: Moment) -> Self {
        let mut l = Self::new(mps, margin_percent);
        let start = now.as_nanos().saturating_add(SEC);
        l.paused_until = start;
        // GCRA allows a send at t iff t >= tat - tolerance: the first one at
        // `start`, and each further one only one interval after the previous.
        l.tat = start.saturating_add(l.full.tolerance);
        l
    }

    fn build(mps: u32, margin_percent: f64, burst_override: Option<u32>) -> Self {
        let mps = mps.max(1);
        let margin = if margin_percent.is_nan() {
            Self::DEFAULT_MARGIN_PERCENT
        } else {
            margin_percent.clamp(0.0, 50.0)
        };
        let window = (SEC as f64 * (100.0 + margin) / 100.0).ceil() as u64;
        let full = Pace::new(mps, window, burst_override);
        NumberLimiter {
            mps,
            burst_override,
            base_window: window,
            widened_by: 0,
            full,
            slowed: full,
            slow_until: 0,
            slow_halvings: 0,
            slowed_at: 0,
            paused_until: 0,
            tat: 0,
            sends: VecDeque::with_capacity(full.limit as usize),
        }
    }

    /// Peek, no state change: `Ok` if one send is allowed at `now`, else the
    /// exact instant it would be.
    pub fn check(&self, now: Moment) -> Result<(), NotUntil> {
        let at = self.earliest(now.as_nanos());
        if at <= now.as_nanos() {
            Ok(())
        } else {
            Err(NotUntil(Moment::from_nanos(at)))
        }
    }

    /// Records one send at `now` if allowed.
    pub fn acquire(&mut self, now: Moment) -> Result<(), NotUntil> {
        self.check(now)?;
        let n = now.as_nanos();
        let pace = self.pace_at(n);
        self.forget_expired(n);
        self.record(n, 1, pace);
        Ok(())
    }

    /// Admits as many sends as allowed at `now`, up to `n`, and returns how many
    /// were recorded. Same result as calling [`NumberLimiter::acquire`] until it
    /// refuses, in O(log limit + admitted) instead of one full check per send.
    pub fn acquire_up_to(&mut self, now: Moment, n: u32) -> u32 {
        let t = now.as_nanos();
        if n == 0 || t < self.paused_until {
            return 0;
        }
        let pace = self.pace_at(t);
        // GCRA: the k-th send (k from 0) is allowed iff t >= max(tat, t) + k*T - tolerance.
        let tat = self.tat.max(t);
        let slack = t.saturating_add(pace.tolerance);
        if slack < tat {
            return 0;
        }
        let by_pace = (slack - tat) / pace.interval + 1;
        // Window: with c sends in (t - window, t], limit - c more fit.
        self.forget_expired(t);
        let by_window = u64::from(pace.limit).saturating_sub(self.sends.len() as u64);
        let k = by_pace.min(by_window).min(u64::from(n)) as u32;
        if k > 0 {
            self.record(t, k, pace);
        }
        k
    }

    /// After error 130429 for a request sent at `sent`: halve the effective
    /// limit (minimum 1) until `now + for_`. While still slowed, a call
    /// extends the end (never shortens it), and halves again only for a
    /// request sent after the last halving: the answers to requests that
    /// were already on their way (one bunch on the wire is tens of them at
    /// a high tier) report one excess, not one each. Afterwards the full
    /// limit applies again.
    pub fn slow_down(&mut self, now: Moment, for_: Duration, sent: Moment) {
        let t = now.as_nanos();
        let slowed = t < self.slow_until;
        if !slowed {
            self.slow_halvings = 1;
            self.slowed_at = t;
        } else if sent.as_nanos() >= self.slowed_at {
            self.slow_halvings = (self.slow_halvings + 1).min(31);
            self.slowed_at = t;
        }
        self.slow_until = self.slow_until.max(t.saturating_add(duration_nanos(for_)));
        self.slowed =
            Pace::new((self.full.limit >> self.slow_halvings).max(1), self.full.window, self.burst_override);
    }

    /// Widens the window by `allowance` beyond 1 s and the margin (the host's
    /// scheduling delay, see `wabulk_limits::WindowAllowance`), keeping the
    /// count: the number is paced that much slower. Cheap when unchanged.
    ///
    /// Sends already forgotten under a narrower window are not brought back,
    /// so right after a widening the window check looks back over the
    /// narrower span; the departure gate checks the widened one exactly.
    pub fn widen(&mut self, allowance: Duration) {
        let by = duration_nanos(allowance);
        if by == self.widened_by {
            return;
        }
        self.widened_by = by;
        let window = self.base_window.saturating_add(by);
        self.full = Pace::new(self.full.limit, window, self.burst_override);
        self.slowed = Pace::new(self.slowed.limit, window, self.burst_override);
    }

    /// Changes the tier to `mps` (at least 1) from now on, keeping the sends
    /// already made: a raised tier has room at once, a lowered one waits
    /// until the window holds fewer than the new limit. A slow-down running
    /// keeps its halvings of the new tier.
    pub fn set_mps(&mut self, mps: u32) {
        let mps = mps.max(1);
        if mps == self.mps {
            return;
        }
        let old_limit = self.full.limit as usize;
        self.mps = mps;
        let window = self.full.window;
        self.full = Pace::new(mps, window, self.burst_override);
        self.slowed = Pace::new((self.full.limit >> self.slow_halvings).max(1), window, self.burst_override);
        keep_recent(&mut self.sends, old_limit, self.full.limit as usize);
    }

    /// Nothing allowed before `until`; keeps the later of the existing and the new pause.
    pub fn pause_until(&mut self, until: Moment) {
        self.paused_until = self.paused_until.max(until.as_nanos());
    }

    /// Sends allowed per window (1 s stretched by the margin) at `now`: the
    /// configured mps, halved while slowed down.
    pub fn effective_limit(&self, now: Moment) -> u32 {
        self.pace_at(now.as_nanos()).limit
    }

    pub fn configured_mps(&self) -> u32 {
        self.mps
    }

    /// The end of the current pause (the origin if never paused).
    pub fn paused_until(&self) -> Moment {
        Moment::from_nanos(self.paused_until)
    }

    fn pace_at(&self, t: u64) -> Pace {
        if t < self.slow_until {
            self.slowed
        } else {
            self.full
        }
    }

    /// Earliest instant (ns) `>= t` at which one send is allowed, given the
    /// current state. Each constraint has the form "instant >= x" for a fixed
    /// pace, and the pace changes only once (at `slow_until`), so the answer is
    /// the earliest instant in the slowed span if there is one, else the
    /// earliest one after it.
    fn earliest(&self, t: u64) -> u64 {
        if t < self.slow_until {
            let at = t.max(self.earliest_with(self.slowed));
            if at < self.slow_until {
                return at;
            }
            return self.slow_until.max(self.earliest_with(self.full));
        }
        t.max(self.earliest_with(self.full))
    }

    /// Earliest instant at which pause, window and GCRA all allow a send under `pace`.
    fn earliest_with(&self, pace: Pace) -> u64 {
        let len = self.sends.len();
        let limit = pace.limit as usize;
        // With `limit` sends in the log, the limit-th most recent must have left
        // the window: it is outside (t - window, t] exactly when t >= it + window.
        let window = if len >= limit { self.sends[len - limit].saturating_add(pace.window) } else { 0 };
        let gcra = self.tat.saturating_sub(pace.tolerance);
        self.paused_until.max(window).max(gcra)
    }

    /// Drops sends that left the window: they can never count again, and the
    /// shorter log keeps `acquire_up_to`'s room a plain length.
    fn forget_expired(&mut self, t: u64) {
        let window = self.full.window;
        while self.sends.front().is_some_and(|&s| s.saturating_add(window) <= t) {
            self.sends.pop_front();
        }
    }

    /// The same limiter with sends that left the window dropped, so states
    /// that differ only in such garbage compare equal.
    #[cfg(test)]
    fn normalised(&self, t: u64) -> Self {
        let mut l = self.clone();
        l.forget_expired(t);
        l
    }

    fn record(&mut self, t: u64, k: u32, pace: Pace) {
        self.tat = self.tat.max(t).saturating_add(u64::from(k).saturating_mul(pace.interval));
        // Keeping the log sorted lets the window check index it directly; a
        // late `now` is recorded at the latest time seen (conservative).
        let at = self.sends.back().map_or(t, |&b| b.max(t));
        let cap = self.full.limit as usize;
        for _ in 0..k {
            if self.sends.len() >= cap {
                self.sends.pop_front();
            }
            self.sends.push_back(at);
        }
    }
}

/// Resizes a log that keeps the `old` most recent instants to keep the `new`
/// most recent. Instants a full log dropped are unknown, but none is later
/// than its oldest: a raised limit counts them at that instant, which may
/// refuse a little more for one window, never less.
pub(crate) fn keep_recent(log: &mut VecDeque<u64>, old: usize, new: usize) {
    if new > old && log.len() >= old {
        if let Some(&oldest) = log.front() {
            for _ in log.len()..new {
                log.push_front(oldest);
            }
        }
    }
    while log.len() > new {
        log.pop_front();
    }
}
