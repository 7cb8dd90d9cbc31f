//! Time as the limiters see it: [`Moment`] (a plain nanosecond count since a
//! clock's origin), the [`Clock`] trait the caller reads it from, a real
//! monotonic clock and a fake one for tests, and [`NotUntil`], the value every
//! limiter answers with when it refuses.
//!
//! Limiters never read a clock themselves: the caller passes `now`. That keeps
//! them deterministic, lets one reading serve several limiters for the same
//! decision, and lets tests advance time without sleeping.

use std::ops::{Add, Sub};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(test)]
mod tests;

/// A point in time: nanoseconds since the clock's origin. Plain value; limiters never read a clock themselves.
///
/// `u64` nanoseconds cover about 584 years from the origin; arithmetic saturates
/// instead of wrapping, so a far-future pause stays far in the future.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Moment(u64);

const NANOS_PER_MILLI: u64 = 1_000_000;
const NANOS_PER_SEC: u64 = 1_000_000_000;

impl Moment {
    /// The clock's origin.
    pub const ZERO: Moment = Moment(0);
    /// The latest representable instant; useful as "never" (e.g. a pause with no end).
    pub const MAX: Moment = Moment(u64::MAX);

    pub const fn from_nanos(n: u64) -> Self {
        Moment(n)
    }

    /// Saturates at [`Moment::MAX`].
    pub const fn from_millis(ms: u64) -> Self {
        Moment(ms.saturating_mul(NANOS_PER_MILLI))
    }

    /// Saturates at [`Moment::MAX`].
    pub const fn from_secs(s: u64) -> Self {
        Moment(s.saturating_mul(NANOS_PER_SEC))
    }

    /// Rounds to the nearest nanosecond; negative and NaN give [`Moment::ZERO`],
    /// values past the range give [`Moment::MAX`] (float-to-int `as` saturates).
    pub fn from_secs_f64(s: f64) -> Self {
        Moment((s * NANOS_PER_SEC as f64).round() as u64)
    }

    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Whole milliseconds, rounded down.
    pub const fn as_millis(self) -> u64 {
        self.0 / NANOS_PER_MILLI
    }

    /// Time from `earlier` to `self`, or zero when `earlier` is not earlier.
    pub fn saturating_since(self, earlier: Moment) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// Saturates at [`Moment::MAX`].
impl Add<Duration> for Moment {
    type Output = Moment;

    fn add(self, d: Duration) -> Moment {
        Moment(self.0.saturating_add(duration_nanos(d)))
    }
}

/// Saturates at [`Moment::ZERO`].
impl Sub<Duration> for Moment {
    type Output = Moment;

    fn sub(self, d: Duration) -> Moment {
        Moment(self.0.saturating_sub(duration_nanos(d)))
    }
}

/// A `Duration` in nanoseconds, saturating at `u64::MAX` (about 584 years).
pub(crate) fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Where the caller reads `now` from. Shared between threads, hence `Send + Sync`.
pub trait Clock: Send + Sync {
    fn now(&self) -> Moment;
}

/// A clock that moves only when told to. Clones share the same time, so a test
/// can hand one clone to the code under test and advance another.
#[derive(Debug, Clone, Default)]
pub struct FakeClock {
    /// The current time in nanoseconds; atomic so clones on other threads see
    /// `advance`/`set` without a lock.
    nanos: Arc<AtomicU64>,
}

impl FakeClock {
    pub fn new(start: Moment) -> Self {
        FakeClock { nanos: Arc::new(AtomicU64::new(start.0)) }
    }

    /// Moves time forward by `by`, saturating at [`Moment::MAX`].
    pub fn advance(&self, by: Duration) {
        let by = duration_nanos(by);
        // fetch_update cannot fail here: the closure always returns Some.
        let _ = self.nanos.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_add(by)));
    }

    /// Sets the time; may move it backwards (limiters tolerate that conservatively).
    pub fn set(&self, to: Moment) {
        self.nanos.store(to.0, Ordering::Release);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Moment {
        Moment(self.nanos.load(Ordering::Acquire))
    }
}

/// The real clock: [`Instant`] (monotonic, unaffected by wall-clock changes)
/// measured from the moment this clock was created.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    /// The instant that [`Moment::ZERO`] stands for. All limiters fed from
    /// one engine must share one origin, so create one clock and clone it.
    origin: Instant,
}

impl MonotonicClock {
    pub fn new() -> Self {
        MonotonicClock { origin: Instant::now() }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Moment {
        Moment(duration_nanos(self.origin.elapsed()))
    }
}

/// "Not before t": the negative answer of every limiter is a value, as in governor.
///
/// The instant is exact: asking again at `t` with no other change in between
/// is allowed, asking at `t - 1 ns` is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotUntil(pub Moment);

impl NotUntil {
    /// The earliest instant at which the refused request would be allowed.
    pub fn earliest(self) -> Moment {
        self.0
    }

    /// How long to wait from `now`; zero if the instant has already passed.
    pub fn wait_time_from(self, now: Moment) -> Duration {
        self.0.saturating_since(now)
    }
}
