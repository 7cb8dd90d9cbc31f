//! The referee's own accounting of the three platform limits (throughput per
//! number, the pair rule, the WABA hourly cap) and of everything the stats report.
//!
//! It shares no code with the engine's limiters on purpose: a referee that reused
//! the player's arithmetic would approve the player's bugs. It is pure: time comes
//! in as a `Duration` since the simulator started and randomness as an `Rng`
//! argument, so the unit tests in `tests.rs` drive it with exact instants.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use rand::Rng;

use crate::config::SimConfig;
use crate::stats::{NumberStats, SimStats, DUPLICATE_LIST_CAP};

#[cfg(test)]
mod tests;

const ONE_SECOND: Duration = Duration::from_secs(1);
const ONE_HOUR: Duration = Duration::from_secs(3600);
/// How long a throttle storm lasts once it starts.
const STORM_LENGTH: Duration = Duration::from_secs(2);
/// How often (in arrival time) pair entries with no debt left are dropped. They
/// are equivalent to absent entries, so this only bounds memory; longer means
/// fewer sweeps over a bigger map.
const PAIR_SWEEP_EVERY: Duration = Duration::from_secs(10);

/// All accounting state. One instance lives behind one mutex so that arrivals are
/// totally ordered: the order in which they take the lock is the order in which
/// they are judged, and their arrival times are read under the lock, so time
/// never goes backwards inside the ledger.
#[derive(Debug)]
pub(crate) struct Ledger {
    pair_interval: Duration,
    pair_burst: u32,
    /// Position of each number in `numbers`, so pairs can be keyed by index.
    number_index: HashMap<String, usize>,
    numbers: Vec<NumberState>,
    wabas: Vec<WabaState>,
    /// Pair-rule state per (number index, recipient). Entries whose debt is
    /// repaid are swept out now and then (see `PAIR_SWEEP_EVERY`).
    pairs: HashMap<(usize, String), PairState>,
    next_pair_sweep: Duration,
    /// Per `biz_opaque_callback_data` (a job id): how many times it was
    /// accepted, which finds duplicates, the at-least-once cost the engine is
    /// meant to keep small, and when its first request arrived, which tells a
    /// job sent before its `not_before`. Grows with the number of distinct jobs
    /// (tens of bytes each).
    callbacks: HashMap<String, CallbackSeen>,
    /// Feeds unique wamids.
    next_message_seq: u64,
    stats: SimStats,
}

#[derive(Debug)]
struct NumberState {
    id: String,
    mps: u32,
    waba: usize,
    /// Arrival times within the last second, oldest first: the 1 s sliding window.
    window: VecDeque<Duration>,
    requests: u64,
    accepted: u64,
    max_in_window: u64,
    first_accept: Option<Duration>,
    last_accept: Option<Duration>,
    /// Requests before this instant are answered 130429 by a storm.
    storm_until: Duration,
    /// The last whole second for which the storm dice were rolled, so that each
    /// second gets exactly one roll however many requests arrive in it.
    storm_rolled_through: Option<u64>,
}

#[derive(Debug)]
struct WabaState {
    id: String,
    cap: u64,
    /// Arrival times within the last hour, oldest first. Exact, at 8 to 16 bytes
    /// per call: a WABA at its full seed cap holds a few tens of megabytes.
    window: VecDeque<Duration>,
}

/// What the ledger knows of one `biz_opaque_callback_data`.
#[derive(Debug, Clone, Copy)]
struct CallbackSeen {
    accepted: u32,
    /// Wall clock, to compare with the job's own times (`not_before`).
    first_request: Option<SystemTime>,
}

/// The pair rule's state, exactly as docs/platform.md "The pair rule, exactly"
/// names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PairState {
    /// When all borrowed quota is repaid.
    pub(crate) repaid_at: Duration,
    /// When the current burst began.
    pub(crate) burst_start: Duration,
    /// Messages in the current burst.
    pub(crate) burst_len: u32,
}

/// The pair rule as a pure step: the state after a send at `t`, or `Err` with the
/// instant from which the pair may be sent to again.
pub(crate) fn pair_step(
    state: Option<PairState>,
    t: Duration,
    interval: Duration,
    burst: u32,
) -> Result<PairState, Duration> {
    match state {
        // No debt: a new burst starts.
        None => Ok(PairState { repaid_at: t + interval, burst_start: t, burst_len: 1 }),
        Some(s) if t >= s.repaid_at => {
            Ok(PairState { repaid_at: t + interval, burst_start: t, burst_len: 1 })
        }
        // Still inside the burst window with room in the burst: borrow one more interval.
        Some(s) if t < s.burst_start + interval && s.burst_len < burst => Ok(PairState {
            repaid_at: s.repaid_at + interval,
            burst_start: s.burst_start,
            burst_len: s.burst_len + 1,
        }),
        Some(s) => Err(s.repaid_at),
    }
}

/// What the limits said about one arrival.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Arrival {
    /// More than `mps` arrivals in the 1 s window ending now.
    pub(crate) phone_over: bool,
    /// Set when the WABA's rolling hour is over its cap.
    pub(crate) waba_over: Option<WabaOver>,
}

/// Details for the 80007 answer's `x-business-use-case-usage` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WabaOver {
    pub(crate) waba_id: String,
    /// Calls in the window as a percentage of the cap (Meta's `call_count`).
    pub(crate) call_pct: u64,
    /// Until a call would be within the cap again.
    pub(crate) regain_in: Duration,
}

impl Ledger {
    /// A number's tier from now on (Meta's upgrade): later arrivals are
    /// judged against it.
    pub(crate) fn set_mps(&mut self, phone_number_id: &str, mps: u32) {
        if let Some(&i) = self.number_index.get(phone_number_id) {
            self.numbers[i].mps = mps;
        }
    }

    pub(crate) fn new(config: &SimConfig) -> Ledger {
        let wabas: Vec<WabaState> = config
            .wabas
            .iter()
            .map(|w| WabaState { id: w.id.clone(), cap: w.hourly_cap, window: VecDeque::new() })
            .collect();
        let numbers: Vec<NumberState> = config
            .numbers
            .iter()
            .map(|n| NumberState {
                id: n.id.clone(),
                mps: n.mps,
                // `SimConfig::validate` guarantees the WABA exists; an unvalidated
                // config falls back to the first WABA rather than panicking.
                waba: config.wabas.iter().position(|w| w.id == n.waba_id).unwrap_or(0),
                window: VecDeque::new(),
                requests: 0,
                accepted: 0,
                max_in_window: 0,
                first_accept: None,
                last_accept: None,
                storm_until: Duration::ZERO,
                storm_rolled_through: None,
            })
            .collect();
        let number_index = numbers.iter().enumerate().map(|(i, n)| (n.id.clone(), i)).collect();
        Ledger {
            pair_interval: config.pair_interval,
            pair_burst: config.pair_burst,
            number_index,
            numbers,
            wabas,
            pairs: HashMap::new(),
            next_pair_sweep: PAIR_SWEEP_EVERY,
            callbacks: HashMap::new(),
            next_message_seq: 0,
            stats: SimStats::default(),
        }
    }

    pub(crate) fn number_index(&self, id: &str) -> Option<usize> {
        self.number_index.get(id).copied()
    }

    /// Counts a `/messages` request for a number the simulator does not know; it
    /// has no limits to count against.
    pub(crate) fn arrive_unknown(&mut self, http2: bool) {
        self.stats.requests += 1;
        self.stats.http2_requests += u64::from(http2);
    }

    /// Records an arrival for number `n` at `t` against the number's 1 s window and
    /// its WABA's hour, whatever the answer will be (CONTRACT §6), and counts a
    /// violation for each limit it breaks: the sender sent it either way.
    pub(crate) fn arrive(&mut self, n: usize, t: Duration, http2: bool) -> Arrival {
        self.stats.requests += 1;
        self.stats.http2_requests += u64::from(http2);

        let number = &mut self.numbers[n];
        number.requests += 1;
        let in_window = push_window(&mut number.window, t, ONE_SECOND);
        number.max_in_window = number.max_in_window.max(in_window);
        let phone_over = in_window > u64::from(number.mps);
        if phone_over {
            self.stats.violations.phone += 1;
        }

        let waba_over = self.wabas.get_mut(number.waba).and_then(|waba| {
            let calls = push_window(&mut waba.window, t, ONE_HOUR);
            if calls <= waba.cap {
                return None;
            }
            // Calls allowed again once the oldest `len - cap` have left the hour.
            let len = waba.window.len();
            let cap = usize::try_from(waba.cap).unwrap_or(usize::MAX);
            let regain_in = waba.window.get(len - cap).map_or(ONE_HOUR, |&oldest| oldest + ONE_HOUR - t);
            let call_pct = calls.saturating_mul(100).checked_div(waba.cap).unwrap_or(100);
            Some(WabaOver { waba_id: waba.id.clone(), call_pct, regain_in })
        });
        if waba_over.is_some() {
            self.stats.violations.waba += 1;
        }
        Arrival { phone_over, waba_over }
    }

    /// Whether number `n` is inside a throttle storm at `t`. The dice are rolled
    /// once per whole second that passed since the last roll (only the last two
    /// matter: an older storm would be over), each with chance `p`.
    pub(crate) fn in_storm(&mut self, n: usize, t: Duration, p: f64, rng: &mut impl Rng) -> bool {
        let number = &mut self.numbers[n];
        if p > 0.0 {
            let now_sec = t.as_secs();
            let from = match number.storm_rolled_through {
                None => now_sec,
                Some(done) => (done + 1).max(now_sec.saturating_sub(1)),
            };
            for _ in from..=now_sec {
                if rng.random_bool(p.min(1.0)) {
                    if t >= number.storm_until {
                        self.stats.storms += 1;
                    }
                    number.storm_until = number.storm_until.max(t + STORM_LENGTH);
                    break;
                }
            }
            number.storm_rolled_through = Some(now_sec);
        }
        t < number.storm_until
    }

    /// Judges a message to `to` from number `n` at `t` under the pair rule. On
    /// `Ok` the caller passes the new state to [`Ledger::accept`] if, and only if,
    /// the message is accepted: a request that failed for another reason sent
    /// nothing to the recipient and borrows nothing. On refusal counts a violation.
    pub(crate) fn check_pair(&mut self, n: usize, to: &str, t: Duration) -> Result<PairState, Duration> {
        if t >= self.next_pair_sweep {
            self.pairs.retain(|_, s| s.repaid_at > t);
            self.next_pair_sweep = t + PAIR_SWEEP_EVERY;
        }
        // Keyed lookup without allocating the key on the hot path would need a
        // borrowed tuple key; the allocation is small next to the HTTP work.
        let current = self.pairs.get(&(n, to.to_owned())).copied();
        let step = pair_step(current, t, self.pair_interval, self.pair_burst);
        if step.is_err() {
            self.stats.violations.pair += 1;
        }
        step
    }

    /// Records an accepted message and returns its sequence number (for the wamid).
    pub(crate) fn accept(
        &mut self,
        n: usize,
        to: &str,
        t: Duration,
        pair: PairState,
        callback_data: Option<&str>,
    ) -> u64 {
        self.pairs.insert((n, to.to_owned()), pair);
        let number = &mut self.numbers[n];
        number.accepted += 1;
        number.first_accept.get_or_insert(t);
        number.last_accept = Some(t);
        self.stats.accepted += 1;
        if let Some(id) = callback_data {
            let seen = self
                .callbacks
                .entry(id.to_owned())
                .or_insert(CallbackSeen { accepted: 0, first_request: None });
            seen.accepted += 1;
            if seen.accepted > 1 {
                self.stats.duplicate_count += 1;
                if seen.accepted == 2 && self.stats.duplicate_job_ids.len() < DUPLICATE_LIST_CAP {
                    self.stats.duplicate_job_ids.push(id.to_owned());
                }
            }
        }
        self.next_message_seq += 1;
        self.next_message_seq
    }

    /// Notes that a request carrying `callback_data` arrived at `at` (wall
    /// clock), whatever its answer will be; only the first one is kept.
    pub(crate) fn note_request(&mut self, callback_data: &str, at: SystemTime) {
        let seen = self
            .callbacks
            .entry(callback_data.to_owned())
            .or_insert(CallbackSeen { accepted: 0, first_request: None });
        seen.first_request.get_or_insert(at);
    }

    /// When the first request carrying each `biz_opaque_callback_data` arrived.
    pub(crate) fn first_requests(&self) -> HashMap<String, SystemTime> {
        self.callbacks.iter().filter_map(|(id, seen)| Some((id.clone(), seen.first_request?))).collect()
    }

    /// Counts an error answer under its stats key (`"131056"`, `"http_503"`).
    pub(crate) fn count_error(&mut self, key: &str) {
        *self.stats.errors_by_code.entry(key.to_owned()).or_insert(0) += 1;
    }

    pub(crate) fn count_hang(&mut self) {
        self.stats.hangs += 1;
    }

    pub(crate) fn count_reset(&mut self) {
        self.stats.resets += 1;
    }

    pub(crate) fn count_goaway(&mut self) {
        self.stats.goaways += 1;
    }

    /// A token check, apart from the message counters: it is not a message
    /// and no window or cap sees it. `refused`: answered 190.
    pub(crate) fn count_token_check(&mut self, refused: bool) {
        self.stats.token_checks += 1;
        self.stats.token_checks_refused += u64::from(refused);
    }

    pub(crate) fn count_connection(&mut self) {
        self.stats.connections += 1;
    }

    pub(crate) fn count_outage(&mut self) {
        self.stats.outages += 1;
    }

    /// Outages begun so far.
    pub(crate) fn outages(&self) -> u64 {
        self.stats.outages
    }

    pub(crate) fn snapshot(&self) -> SimStats {
        let mut stats = self.stats.clone();
        stats.numbers = self
            .numbers
            .iter()
            .map(|n| {
                let achieved_mps = match (n.first_accept, n.last_accept) {
                    (Some(first), Some(last)) if last > first => {
                        (n.accepted - 1) as f64 / (last - first).as_secs_f64()
                    }
                    _ => n.accepted as f64,
                };
                let stats = NumberStats {
                    requests: n.requests,
                    accepted: n.accepted,
                    achieved_mps,
                    max_in_any_1s_window: n.max_in_window,
                    mps: n.mps,
                };
                (n.id.clone(), stats)
            })
            .collect();
        stats
    }
}

/// Drops arrivals that are 1 `span` or more older than `t`, adds `t`, and returns
/// how many arrivals the half-open window `(t - span, t]` now holds. Half-open so
/// that arrivals exactly `1/mps` apart never share a window with the one `mps`
/// places later: evenly paced traffic at exactly the limit is legal.
fn push_window(window: &mut VecDeque<Duration>, t: Duration, span: Duration) -> u64 {
    while window.front().is_some_and(|&oldest| t.saturating_sub(oldest) >= span) {
        window.pop_front();
    }
    window.push_back(t);
    window.len() as u64
}
