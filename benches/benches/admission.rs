//! Admission decisions per second on one core: for each candidate message, the
//! number limiter, the pair budget and the WABA window, over 1M distinct pairs
//! (1000 numbers × 1000 recipients, 10 numbers per WABA). The same candidate
//! stream is fed to governor (keyed `DashMapStateStore` per (number,
//! recipient) with quota 1 per 6 s burst 45, plus direct limiters per number
//! and per WABA, all on governor's `FakeRelativeClock`).
//!
//! Simulated time advances 6.1 µs per decision, so each number sees about
//! 164 msg/s (under its 980/s), each pair one message every 6.1 s (just over
//! the 6.05 s interval) and each WABA about 5.9M calls an hour (under its
//! 18M): nearly every decision is an admit, as in a healthy campaign.
//!
//! The criterion groups give the detailed figures; the summary at the end
//! comes from this process's own timed loop, so both rates and their ratio are
//! from one run.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use governor::clock::FakeRelativeClock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use wabulk_limits::{Moment, NumberLimiter, PairBudgets, PairRule, WabaWindow};

const NUMBERS: usize = 1000;
const RECIPIENTS: u64 = 1000;
const NUMBERS_PER_WABA: usize = 10;
/// Candidates taken from one number's queue at a time, as a scheduler shard
/// would; consecutive decisions share the number and its pair map.
const BATCH: u64 = 16;
/// Simulated time per decision (see the module header for what it implies).
const DT_NS: u64 = 6_100;
const MPS: u32 = 1000;
const WABA_CAP: u64 = 1_800_000 * NUMBERS_PER_WABA as u64;

/// A stream of candidates: number `n` offers its next `BATCH` recipients,
/// numbers take turns, and each number walks its 1000 recipients in order.
#[derive(Debug)]
struct Stream {
    cursor: Vec<u64>,
    number: usize,
}

impl Stream {
    fn new() -> Self {
        Stream { cursor: vec![0; NUMBERS], number: 0 }
    }

    /// The next batch: (number, first recipient); recipients are `first + k mod 1000`.
    fn next_batch(&mut self) -> (usize, u64) {
        let n = self.number;
        self.number = (n + 1) % NUMBERS;
        let first = self.cursor[n];
        self.cursor[n] = (first + BATCH) % RECIPIENTS;
        (n, first)
    }
}

/// Recipient ids as phone-number-like u64s, so hashing sees realistic keys.
fn recipient(number: usize, k: u64) -> u64 {
    33_600_000_000 + (number as u64) * 1_000_003 + k * 7919
}

#[derive(Debug)]
struct Ours {
    numbers: Vec<NumberLimiter>,
    pairs: Vec<PairBudgets>,
    wabas: Vec<WabaWindow>,
    stream: Stream,
    t: u64,
}

impl Ours {
    fn new() -> Self {
        Ours {
            numbers: (0..NUMBERS).map(|_| NumberLimiter::new(MPS, 2.0)).collect(),
            pairs: (0..NUMBERS).map(|_| PairBudgets::new(PairRule::default())).collect(),
            wabas: (0..NUMBERS / NUMBERS_PER_WABA).map(|_| WabaWindow::new(WABA_CAP)).collect(),
            stream: Stream::new(),
            t: 0,
        }
    }

    /// One decision per candidate: peek number and WABA, then the pair (which
    /// records), then record number and WABA. Returns admits. With `prefetch`
    /// the batch's pair entries are looked up first, so their cache misses
    /// overlap instead of coming one decision at a time.
    fn run(&mut self, decisions: u64, prefetch: bool) -> u64 {
        let mut admitted = 0;
        let mut left = decisions;
        while left > 0 {
            let (n, first) = self.stream.next_batch();
            let number = &mut self.numbers[n];
            let pairs = &mut self.pairs[n];
            let waba = &mut self.wabas[n / NUMBERS_PER_WABA];
            if prefetch {
                pairs.prefetch((0..BATCH.min(left)).map(|k| recipient(n, (first + k) % RECIPIENTS)));
            }
            for k in 0..BATCH.min(left) {
                let now = Moment::from_nanos(self.t);
                self.t += DT_NS;
                let r = recipient(n, (first + k) % RECIPIENTS);
                if number.check(now).is_ok()
                    && waba.check(now, 1).is_ok()
                    && pairs.acquire(r, now).is_ok()
                    && number.acquire(now).is_ok()
                {
                    admitted += waba.acquire_up_to(now, 1);
                }
            }
            left -= BATCH.min(left);
        }
        admitted
    }

    /// The batched form a scheduler would use: the number and the WABA grant a
    /// batch at once, then each candidate's pair decides. Slots granted but
    /// refused by a pair are lost (rare when most decisions are admits).
    fn run_batched(&mut self, decisions: u64) -> u64 {
        let mut admitted = 0;
        let mut left = decisions;
        while left > 0 {
            let (n, first) = self.stream.next_batch();
            let m = BATCH.min(left);
            let now = Moment::from_nanos(self.t);
            self.t += DT_NS * m;
            let granted = self.numbers[n].acquire_up_to(now, m as u32);
            let granted = self.wabas[n / NUMBERS_PER_WABA].acquire_up_to(now, u64::from(granted));
            let pairs = &mut self.pairs[n];
            pairs.prefetch((0..m).map(|k| recipient(n, (first + k) % RECIPIENTS)));
            let mut used = 0;
            for k in 0..m {
                if used == granted {
                    break;
                }
                if pairs.acquire(recipient(n, (first + k) % RECIPIENTS), now).is_ok() {
                    used += 1;
                }
            }
            admitted += used;
            left -= m;
        }
        admitted
    }
}

type Direct = RateLimiter<NotKeyed, InMemoryState, FakeRelativeClock, NoOpMiddleware<governor::nanos::Nanos>>;
type Keyed = RateLimiter<
    (u32, u64),
    DashMapStateStore<(u32, u64)>,
    FakeRelativeClock,
    NoOpMiddleware<governor::nanos::Nanos>,
>;

struct Governor {
    clock: FakeRelativeClock,
    numbers: Vec<Direct>,
    pairs: Keyed,
    wabas: Vec<Direct>,
    stream: Stream,
}

impl std::fmt::Debug for Governor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Governor").field("pairs", &self.pairs.len()).finish()
    }
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("non-zero")
}

impl Governor {
    fn new() -> Self {
        let clock = FakeRelativeClock::default();
        let number_quota = Quota::per_second(nz(980)).allow_burst(nz(49));
        let pair_quota = Quota::with_period(Duration::from_millis(6050)).expect("period").allow_burst(nz(45));
        let waba_quota = Quota::per_hour(nz(WABA_CAP as u32));
        Governor {
            numbers: (0..NUMBERS)
                .map(|_| RateLimiter::direct_with_clock(number_quota, clock.clone()))
                .collect(),
            pairs: RateLimiter::dashmap_with_clock(pair_quota, clock.clone()),
            wabas: (0..NUMBERS / NUMBERS_PER_WABA)
                .map(|_| RateLimiter::direct_with_clock(waba_quota, clock.clone()))
                .collect(),
            clock,
            stream: Stream::new(),
        }
    }

    /// Governor has no peek, so each limiter is asked once and records on
    /// success: the pair first (the likeliest to refuse), then number, then WABA.
    fn run(&mut self, decisions: u64) -> u64 {
        let mut admitted = 0;
        let mut left = decisions;
        while left > 0 {
            let (n, first) = self.stream.next_batch();
            for k in 0..BATCH.min(left) {
                self.clock.advance(Duration::from_nanos(DT_NS));
                let r = recipient(n, (first + k) % RECIPIENTS);
                if self.pairs.check_key(&(n as u32, r)).is_ok()
                    && self.numbers[n].check().is_ok()
                    && self.wabas[n / NUMBERS_PER_WABA].check().is_ok()
                {
                    admitted += 1;
                }
            }
            left -= BATCH.min(left);
        }
        admitted
    }
}

/// Decisions for one full pass over all pairs, used to fill the maps before timing.
const FILL: u64 = NUMBERS as u64 * RECIPIENTS;

fn bench(c: &mut Criterion, ours: &mut Ours, prefetched: &mut Ours, batched: &mut Ours, gov: &mut Governor) {
    let mut g = c.benchmark_group("admission_1M_pairs");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("wabulk_limits", "per_message"), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            black_box(ours.run(iters, false));
            start.elapsed()
        })
    });
    g.bench_function(BenchmarkId::new("wabulk_limits", "per_message_prefetch"), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            black_box(prefetched.run(iters, true));
            start.elapsed()
        })
    });
    g.bench_function(BenchmarkId::new("wabulk_limits", "batched"), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            black_box(batched.run_batched(iters));
            start.elapsed()
        })
    });
    g.bench_function(BenchmarkId::new("governor", "per_message"), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            black_box(gov.run(iters));
            start.elapsed()
        })
    });
    g.finish();
}

/// Rounds of the summary; each system runs `ROUND` decisions per round, the
/// three interleaved so that load from other processes (this machine is
/// shared) falls on all of them alike. Medians are reported.
const ROUNDS: usize = 9;
const ROUND: u64 = 2 * FILL;

/// Nanoseconds this thread has spent on a CPU (first field of
/// /proc/thread-self/schedstat), so time spent preempted by other processes
/// is not charged to the code under test. `None` where it is not available.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat").ok()?.split_whitespace().next()?.parse().ok()
}

/// Times one round and returns decisions per second of CPU time (wall time
/// where CPU time is not available); adds the admits to `admitted`.
fn timed(admitted: &mut u64, run: impl FnOnce(u64) -> u64) -> f64 {
    let (cpu, wall) = (thread_cpu_ns(), Instant::now());
    *admitted += run(ROUND);
    let secs = match (cpu, thread_cpu_ns()) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
        _ => wall.elapsed().as_secs_f64(),
    };
    ROUND as f64 / secs
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut ours = Ours::new();
    let mut prefetched = Ours::new();
    let mut batched = Ours::new();
    let mut gov = Governor::new();
    // Every pair tracked before anything is timed.
    ours.run(FILL, false);
    prefetched.run(FILL, true);
    batched.run_batched(FILL);
    gov.run(FILL);

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .configure_from_args();
    bench(&mut c, &mut ours, &mut prefetched, &mut batched, &mut gov);
    c.final_summary();

    let (mut o, mut p, mut b, mut g) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut admitted = [0u64; 4];
    for _ in 0..ROUNDS {
        o.push(timed(&mut admitted[0], |n| ours.run(n, false)));
        p.push(timed(&mut admitted[3], |n| prefetched.run(n, true)));
        b.push(timed(&mut admitted[1], |n| batched.run_batched(n)));
        g.push(timed(&mut admitted[2], |n| gov.run(n)));
    }
    let ratios: Vec<f64> = o.iter().zip(&g).map(|(o, g)| o / g).collect();
    let prefetched_ratios: Vec<f64> = p.iter().zip(&g).map(|(p, g)| p / g).collect();
    let batched_ratios: Vec<f64> = b.iter().zip(&g).map(|(b, g)| b / g).collect();
    let spread = |v: &[f64]| {
        let (lo, hi) = v.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        format!("min {lo:.0} max {hi:.0}")
    };
    let admit = |a: u64| a as f64 * 100.0 / (ROUNDS as u64 * ROUND) as f64;
    println!(
        "summary: {ROUNDS} interleaved rounds of {ROUND} decisions, {} pairs tracked (governor {}), rates per CPU second ({})",
        ours.pairs.iter().map(PairBudgets::len).sum::<usize>(),
        gov.pairs.len(),
        if thread_cpu_ns().is_some() { "schedstat" } else { "wall clock: schedstat unavailable" }
    );
    println!(
        "wabulk-limits per message: median {:>11.0} decisions/s ({}; admitted {:.1} %)",
        median(o.clone()),
        spread(&o),
        admit(admitted[0])
    );
    println!(
        "wabulk-limits prefetch:    median {:>11.0} decisions/s ({}; admitted {:.1} %)",
        median(p.clone()),
        spread(&p),
        admit(admitted[3])
    );
    println!(
        "wabulk-limits batched:     median {:>11.0} decisions/s ({}; admitted {:.1} %)",
        median(b.clone()),
        spread(&b),
        admit(admitted[1])
    );
    println!(
        "governor per message:      median {:>11.0} decisions/s ({}; admitted {:.1} %)",
        median(g.clone()),
        spread(&g),
        admit(admitted[2])
    );
    println!(
        "ratio ours/governor (median of per-round ratios): per message {:.2}x, per message with prefetch {:.2}x, batched {:.2}x",
        median(ratios),
        median(prefetched_ratios),
        median(batched_ratios)
    );
}
