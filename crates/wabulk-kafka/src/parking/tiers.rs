//! Tier arithmetic, pure: which tier a parked job goes to next, and the
//! worst-case number of tier writes a job can take. Times are unix
//! milliseconds passed in by the caller, so everything here is tested with
//! injected times.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::KafkaError;

/// The tier delays, validated: at least one, each a whole number of
/// milliseconds (≥ 1 ms), strictly ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tiers {
    delays_ms: Vec<u64>,
}

/// Where a parked job goes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Due: to the jobs topic now.
    Jobs,
    /// To tier `index`, released at `release_ms`.
    Tier { index: usize, release_ms: u64 },
    /// Due in less than the smallest tier: kept in memory until `due_ms`,
    /// then to the jobs topic (the mover only).
    Hold { due_ms: u64 },
}

impl Tiers {
    pub(crate) fn new(delays: &[Duration]) -> Result<Tiers, KafkaError> {
        let bad = |why: String| Err(KafkaError::Settings(format!("parking tiers: {why}")));
        if delays.is_empty() {
            return bad("at least one tier is needed".into());
        }
        let mut delays_ms = Vec::with_capacity(delays.len());
        for delay in delays {
            let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            if ms == 0 || Duration::from_millis(ms) != *delay {
                return bad(format!("{delay:?} is not a whole number of milliseconds of at least 1"));
            }
            if delays_ms.last().is_some_and(|&last| last >= ms) {
                return bad(format!("{delays:?} are not strictly ascending"));
            }
            delays_ms.push(ms);
        }
        Ok(Tiers { delays_ms })
    }

    pub(crate) fn len(&self) -> usize {
        self.delays_ms.len()
    }

    pub(crate) fn delay_ms(&self, index: usize) -> u64 {
        self.delays_ms[index]
    }

    pub(crate) fn delay(&self, index: usize) -> Duration {
        Duration::from_millis(self.delays_ms[index])
    }

    /// The largest tier whose delay is at most `remaining_ms`.
    pub(crate) fn largest_within(&self, remaining_ms: u64) -> Option<usize> {
        self.delays_ms.partition_point(|&delay| delay <= remaining_ms).checked_sub(1)
    }

    /// Where the parker writes a job due at `due_ms`: the largest tier that
    /// fits; with less than the smallest tier left, the smallest tier with
    /// its release at the due time itself (never early; see the module docs
    /// for the lateness this costs); when due, the jobs topic.
    pub(crate) fn park(&self, now_ms: u64, due_ms: u64) -> Placement {
        match self.at_release(now_ms, due_ms) {
            Placement::Hold { due_ms } => Placement::Tier { index: 0, release_ms: due_ms },
            placement => placement,
        }
    }

    /// Where the mover sends a record whose release time has come.
    pub(crate) fn at_release(&self, now_ms: u64, due_ms: u64) -> Placement {
        if due_ms <= now_ms {
            return Placement::Jobs;
        }
        match self.largest_within(due_ms - now_ms) {
            Some(index) => {
                Placement::Tier { index, release_ms: now_ms.saturating_add(self.delays_ms[index]) }
            }
            None => Placement::Hold { due_ms },
        }
    }

    /// The most tier writes a job parked with at most `horizon` to wait can
    /// take before it is written back to the jobs topic (that last write not
    /// counted). Exact for the greedy choice: the maximum over every
    /// remaining time up to `horizon`, in milliseconds. Processing delays
    /// between hops only shorten the remaining time at the next choice, and
    /// the hops so taken are those of a shorter remaining time, so the bound
    /// holds for them too.
    pub(crate) fn worst_case_hops(&self, horizon: Duration) -> u32 {
        let horizon_ms = u64::try_from(horizon.as_millis()).unwrap_or(u64::MAX - 1);
        // `below[i]`: the most hops for a remaining time below the delay of
        // tier `i`, using the tiers under it; computed upwards.
        let mut below = vec![0u32; self.delays_ms.len()];
        for i in 1..self.delays_ms.len() {
            below[i] = self.most_hops(self.delays_ms[i], i - 1, &below);
        }
        let top = self.delays_ms.len() - 1;
        let greedy = self.most_hops(horizon_ms.saturating_add(1), top, &below);
        // A job parked with less than the smallest tier left takes one hop.
        if horizon_ms > 0 {
            greedy.max(1)
        } else {
            greedy
        }
    }

    /// The most greedy hops for a remaining time below `limit` (at most the
    /// delay of tier `tier + 1`), using tiers `0..=tier`.
    fn most_hops(&self, limit: u64, tier: usize, below: &[u32]) -> u32 {
        let delay = self.delays_ms[tier];
        if limit <= delay {
            return if tier == 0 { 0 } else { self.most_hops(limit, tier - 1, below) };
        }
        // `k` hops of this tier leave less than `delay`, and less than
        // `limit - k * delay`.
        let most = (limit - 1) / delay;
        let rest = (limit - most * delay).min(delay);
        let rest_hops = if tier == 0 { 0 } else { self.most_hops(rest, tier - 1, below) };
        let at_most = u32::try_from(most).unwrap_or(u32::MAX).saturating_add(rest_hops);
        // One fewer of this tier leaves the whole range below it.
        let one_fewer = u32::try_from(most - 1).unwrap_or(u32::MAX).saturating_add(below[tier]);
        at_most.max(one_fewer)
    }
}

/// The topic name label of a delay: its largest whole unit (`1s`, `30m`,
/// `6h`, `4d`, `200ms`, `90s`).
pub(crate) fn label(delay_ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1_000, "s")];
    for (unit, name) in UNITS {
        if delay_ms % unit == 0 {
            return format!("{}{name}", delay_ms / unit);
        }
    }
    format!("{delay_ms}ms")
}

/// Unix milliseconds of `now`, rounded down (a "now" never runs ahead).
pub(crate) fn floor_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Unix milliseconds of a due time, rounded up (a due time never moves
/// earlier).
pub(crate) fn ceil_ms(time: SystemTime) -> u64 {
    let Ok(since) = time.duration_since(UNIX_EPOCH) else { return 0 };
    let ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
    if since.subsec_nanos() % 1_000_000 == 0 {
        ms
    } else {
        ms.saturating_add(1)
    }
}

pub(crate) fn system_time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests;
