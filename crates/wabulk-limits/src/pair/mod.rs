//! The budget of each (business number, recipient) pair (docs/platform.md
//! "The pair rule, exactly"), plus the 4^X s back-off after error 131056.
//!
//! One [`PairBudgets`] per business number, keyed by recipient. The rule is
//! *not* GCRA: a burst of up to `burst` messages is allowed only while it is
//! younger than one interval, and a burst of n messages that began at s blocks
//! the pair until s + n × interval. State per pair, as the platform states it:
//! `burst_start`, `burst_len`, `repaid_at`; a send at t is allowed when
//!
//! 1. t ≥ repaid_at: a new burst starts (burst_start = t, burst_len = 1,
//!    repaid_at = t + interval); or
//! 2. t < burst_start + interval and burst_len < burst: burst_len += 1,
//!    repaid_at += interval;
//!
//! otherwise not before repaid_at. Under this rule repaid_at is always
//! burst_start + burst_len × interval, so it is not stored. The safety margin
//! makes both sides stricter: the debt per message is interval + margin and
//! the burst window interval − margin.
//!
//! Memory is the point of the layout: a bulk campaign touches millions of
//! pairs, so each one is a single `u64` value in a `hashbrown` map keyed by the
//! recipient (16-byte slot + 1 control byte, about 19–39 bytes per pair with the
//! load factor, see [`PairBudgets::heap_bytes`]). Times are whole milliseconds
//! since the clock origin, taken with floor: a send at t is judged as if at
//! floor(t), so a pair may be allowed up to 1 ms early. The default 50 ms
//! safety margin covers that many times over.

use std::fmt;
use std::time::Duration;

use hashbrown::HashMap;

use crate::{Moment, NotUntil};

#[cfg(test)]
mod tests;

/// The pair rule's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairRule {
    /// Meta's interval: one message per `interval` on average, each message
    /// in a burst borrowing one interval, and a burst only while younger than
    /// one interval. Meta's figure is 6 s. Whole milliseconds (rounded up).
    pub interval: Duration,
    /// Most messages in one burst: Meta allows 45. 1..=62 (the count is packed
    /// into 6 bits). Lowering it shortens the silence a burst can cause.
    pub burst: u32,
    /// Safety margin so that arrival times, not only send times, keep the rule
    /// (docs/platform.md "Margins"): each message borrows `interval + margin`, and
    /// a burst grows only while younger than `interval - margin`. Both sides
    /// err towards Meta's rule; widening the window instead would let a burst
    /// run past Meta's and draw 131056. Below `interval`; default 50 ms.
    pub margin: Duration,
}

impl PairRule {
    /// The largest burst the packed state can count.
    pub const MAX_BURST: u32 = 62;
    /// The longest interval accepted; keeps every stored time far inside 48 bits.
    pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

    /// Checks the ranges documented on the fields; configuration should call
    /// this, since [`PairBudgets::new`] panics on an invalid rule.
    pub fn validate(&self) -> Result<(), PairRuleError> {
        if !(1..=Self::MAX_BURST).contains(&self.burst) {
            return Err(PairRuleError::Burst(self.burst));
        }
        if self.interval < Duration::from_millis(1) || self.interval + self.margin > Self::MAX_INTERVAL {
            return Err(PairRuleError::Interval(self.interval));
        }
        if self.margin >= self.interval {
            return Err(PairRuleError::Margin(self.margin));
        }
        Ok(())
    }

    /// Debt per message in whole ms: interval plus margin, rounded up.
    fn debt_ms(&self) -> u64 {
        ceil_ms(self.interval + self.margin)
    }

    /// How long a burst may grow, in whole ms: interval less margin, rounded down.
    fn window_ms(&self) -> u64 {
        u64::try_from((self.interval - self.margin).as_millis()).unwrap_or(u64::MAX)
    }
}

fn ceil_ms(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

impl Default for PairRule {
    /// Meta's 6 s and 45, with a 50 ms safety margin.
    fn default() -> Self {
        PairRule { interval: Duration::from_secs(6), burst: 45, margin: Duration::from_millis(50) }
    }
}

/// A [`PairRule`] outside its documented ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PairRuleError {
    #[error("pair burst must be between 1 and 62, got {0}")]
    Burst(u32),
    #[error("pair interval must be between 1 ms and 1 h, got {0:?}")]
    Interval(Duration),
    #[error("pair margin must be shorter than the interval, got {0:?}")]
    Margin(Duration),
}

// Layout of a pair's `u64`:
//   bits 0..48  time in ms: burst_start, or, when BLOCKED, the end of the block
//   bits 48..54 burst_len (0 when BLOCKED)
//   bits 54..58 penalty exponent X for the next 131056
//   bit  58     BLOCKED: a penalty is pending and the time is when it ends
const TIME_MASK: u64 = (1 << 48) - 1;
const LEN_SHIFT: u32 = 48;
const LEN_MASK: u64 = 0x3f;
const X_SHIFT: u32 = 54;
const X_MASK: u64 = 0xf;
const BLOCKED: u64 = 1 << 58;

/// Times are clamped here (about 4,400 years after the origin) so that a
/// burst or a penalty added to them still fits the 48-bit field.
const MAX_MS: u64 = 1 << 47;

/// 4^5 s = 1024 s, the longest penalty wait.
const MAX_PENALTY_EXPONENT: u64 = 5;

/// Maps below this size are not swept automatically: scanning them costs more
/// than the few entries it could free.
const MIN_AUTO_SWEEP_LEN: usize = 1024;

fn pack(time: u64, len: u64, x: u64, blocked: bool) -> u64 {
    time | (len << LEN_SHIFT) | (x << X_SHIFT) | if blocked { BLOCKED } else { 0 }
}

fn time_of(v: u64) -> u64 {
    v & TIME_MASK
}

fn len_of(v: u64) -> u64 {
    (v >> LEN_SHIFT) & LEN_MASK
}

fn x_of(v: u64) -> u64 {
    (v >> X_SHIFT) & X_MASK
}

fn is_blocked(v: u64) -> bool {
    v & BLOCKED != 0
}

/// The pair budgets of one business number, keyed by recipient. Owned by the
/// scheduler shard that owns the number, so there is no locking inside.
#[derive(Clone)]
pub struct PairBudgets {
    /// The rule as given, for [`PairBudgets::rule`].
    rule: PairRule,
    /// Debt each message adds, in whole ms (the unit of every stored time):
    /// `rule.interval + rule.margin`.
    interval_ms: u64,
    /// How long after its start a burst may grow, in ms:
    /// `rule.interval - rule.margin`.
    window_ms: u64,
    /// `rule.burst`, widened once instead of on every decision.
    burst: u64,
    /// Recipient → packed state (layout above). An absent pair is a pair with
    /// no debt, no penalty and X = 0; entries that are equivalent to that are
    /// dropped by [`PairBudgets::expire_idle`].
    map: HashMap<u64, u64>,
    /// `len()` at which `acquire` sweeps on its own; twice the size left by
    /// the previous sweep, so sweeping costs O(1) amortised per new pair.
    next_sweep_at: usize,
}

impl fmt::Debug for PairBudgets {
    /// Sizes only: the map can hold millions of pairs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairBudgets")
            .field("rule", &self.rule)
            .field("len", &self.map.len())
            .field("heap_bytes", &self.heap_bytes())
            .field("next_sweep_at", &self.next_sweep_at)
            .finish()
    }
}

impl PairBudgets {
    /// # Panics
    /// If `rule.validate()` fails; validate configuration before building limiters.
    pub fn new(rule: PairRule) -> Self {
        Self::with_capacity(rule, 0)
    }

    /// Like [`PairBudgets::new`], with room for `pairs` before the map grows.
    ///
    /// # Panics
    /// If `rule.validate()` fails.
    pub fn with_capacity(rule: PairRule, pairs: usize) -> Self {
        if let Err(e) = rule.validate() {
            panic!("invalid pair rule: {e}");
        }
        PairBudgets {
            rule,
            interval_ms: rule.debt_ms(),
            window_ms: rule.window_ms(),
            burst: u64::from(rule.burst),
            map: HashMap::with_capacity(pairs),
            next_sweep_at: MIN_AUTO_SWEEP_LEN,
        }
    }

    pub fn rule(&self) -> PairRule {
        self.rule
    }

    /// Peek, no state change: `Ok` if one message to `recipient` is allowed at `now`.
    pub fn check(&self, recipient: u64, now: Moment) -> Result<(), NotUntil> {
        let t = to_ms(now);
        match self.map.get(&recipient) {
            None => Ok(()),
            Some(&v) => self.decide(v, t).map(|_| ()).map_err(not_until),
        }
    }

    /// Records one message to `recipient` at `now` if the pair rule allows it.
    pub fn acquire(&mut self, recipient: u64, now: Moment) -> Result<(), NotUntil> {
        let t = to_ms(now);
        if let Some(v) = self.map.get_mut(&recipient) {
            return match Self::decide_with(*v, t, self.interval_ms, self.window_ms, self.burst) {
                Ok(next) => {
                    *v = next;
                    Ok(())
                }
                Err(at) => Err(not_until(at)),
            };
        }
        self.insert_new(recipient, pack(t, 1, 0, false), t);
        Ok(())
    }

    /// Error 131056 for this pair: block it until now + 4^X s (X = 0,1,2,... per
    /// repeated penalty, capped so the wait is at most 1024 s) and return the
    /// instant it is allowed again. That is the block's end, or the end of the
    /// pair's own debt if that is later: the penalty never shortens it.
    ///
    /// X is forgotten once the pair is idle and repaid: when its debt is repaid
    /// with no penalty pending, or one interval after a block ended without a
    /// message sent since.
    pub fn penalise(&mut self, recipient: u64, now: Moment) -> Moment {
        let t = to_ms(now);
        let (x, repaid) = match self.map.get(&recipient) {
            Some(&v) if !self.forgotten(v, t) => (x_of(v), self.repaid_at(v)),
            _ => (0, 0),
        };
        let until = (t + 1000 * 4u64.pow(x as u32)).max(repaid);
        let v = pack(until, 0, (x + 1).min(MAX_PENALTY_EXPONENT), true);
        match self.map.get_mut(&recipient) {
            Some(slot) => *slot = v,
            None => self.insert_new(recipient, v, t),
        }
        Moment::from_millis(until)
    }

    /// Drops entries that carry no information (debt repaid at `now`, no
    /// penalty pending) and returns how many were dropped. Also called,
    /// amortised, by `acquire` and `penalise` whenever the map has doubled
    /// since the last sweep, so memory stays bounded without the caller's help.
    pub fn expire_idle(&mut self, now: Moment) -> usize {
        let t = to_ms(now);
        let before = self.map.len();
        let interval = self.interval_ms;
        self.map.retain(|_, v| !forgotten_with(*v, t, interval));
        let len = self.map.len();
        // Give memory back after a campaign: a table four times larger than
        // needed is halved, leaving room for the map to double before it grows.
        if len < self.map.capacity() / 4 {
            self.map.shrink_to(len * 2);
        }
        self.next_sweep_at = (2 * len).max(MIN_AUTO_SWEEP_LEN);
        before - len
    }

    /// Looks up each recipient without deciding anything, so that decisions
    /// about them soon after find their entries in cache. With millions of
    /// pairs nearly every entry is a cache miss; looking a batch up first lets
    /// the CPU wait for those misses together rather than one at a time.
    /// Purely a performance hint: skipping it changes no answer.
    pub fn prefetch(&self, recipients: impl IntoIterator<Item = u64>) {
        for r in recipients {
            // black_box keeps the otherwise unused lookup from being optimised away.
            std::hint::black_box(self.map.get(&r));
        }
    }

    /// Pairs tracked (including ones `expire_idle` would drop).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes allocated by the map (slots, control bytes and padding).
    pub fn heap_bytes(&self) -> usize {
        self.map.allocation_size()
    }

    fn insert_new(&mut self, recipient: u64, v: u64, t: u64) {
        if self.map.len() >= self.next_sweep_at {
            self.expire_idle(Moment::from_millis(t));
        }
        self.map.insert(recipient, v);
    }

    fn decide(&self, v: u64, t: u64) -> Result<u64, u64> {
        Self::decide_with(v, t, self.interval_ms, self.window_ms, self.burst)
    }

    /// The pair rule on one packed state: the new state if a message at `t`
    /// (ms) is allowed, else the instant (ms) it will be.
    #[inline]
    fn decide_with(v: u64, t: u64, interval: u64, window: u64, burst: u64) -> Result<u64, u64> {
        let time = time_of(v);
        if is_blocked(v) {
            if t < time {
                return Err(time);
            }
            // The block is over: a new burst. X stays for the retry (a
            // repeated 131056 must wait longer) unless the pair was idle for
            // an interval after the block, which forgets it.
            let x = if t >= time + interval { 0 } else { x_of(v) };
            return Ok(pack(t, 1, x, false));
        }
        let len = len_of(v);
        let repaid = time + len * interval;
        if t >= repaid {
            // Case 1, no debt: a new burst, and X is forgotten.
            Ok(pack(t, 1, 0, false))
        } else if t < time + window && len < burst {
            // Case 2, inside the burst window: one more, one interval more debt.
            Ok(v + (1 << LEN_SHIFT))
        } else {
            Err(repaid)
        }
    }

    fn repaid_at(&self, v: u64) -> u64 {
        if is_blocked(v) {
            time_of(v)
        } else {
            time_of(v) + len_of(v) * self.interval_ms
        }
    }

    fn forgotten(&self, v: u64, t: u64) -> bool {
        forgotten_with(v, t, self.interval_ms)
    }
}

/// Whether a pair's entry is equivalent to no entry at `t` (ms): its debt is
/// repaid and no penalty is pending, or its block ended an interval ago.
#[inline]
fn forgotten_with(v: u64, t: u64, interval: u64) -> bool {
    let time = time_of(v);
    if is_blocked(v) {
        t >= time + interval
    } else {
        t >= time + len_of(v) * interval
    }
}

fn to_ms(now: Moment) -> u64 {
    now.as_millis().min(MAX_MS)
}

fn not_until(ms: u64) -> NotUntil {
    NotUntil(Moment::from_millis(ms))
}
