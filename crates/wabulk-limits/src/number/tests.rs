use super::*;
use proptest::prelude::*;

fn ms(n: u64) -> Moment {
    Moment::from_millis(n)
}

fn ns(n: u64) -> Moment {
    Moment::from_nanos(n)
}

/// Admitted sends in `(t - 1 s, t]`.
fn in_window(log: &[u64], t: u64) -> usize {
    log.iter().filter(|&&s| s + SEC > t && s <= t).count()
}

#[test]
fn margin_stretches_the_window_and_keeps_the_count() {
    assert_eq!(NumberLimiter::new(1000, 2.0).effective_limit(Moment::ZERO), 1000);
    assert_eq!(NumberLimiter::new(20, 1.0).effective_limit(Moment::ZERO), 20, "small tiers stay whole");
    assert_eq!(NumberLimiter::new(0, 2.0).effective_limit(Moment::ZERO), 1);
    assert_eq!(NumberLimiter::new(1000, 2.0).configured_mps(), 1000);
    let window = |l: &NumberLimiter| l.full.window;
    assert_eq!(window(&NumberLimiter::new(80, 2.0)), 1_020_000_000);
    assert_eq!(window(&NumberLimiter::new(80, f64::NAN)), 1_010_000_000, "NaN means the default 1 %");
    assert_eq!(window(&NumberLimiter::new(80, 99.0)), 1_500_000_000, "clamped to 50 %");
    assert_eq!(window(&NumberLimiter::new(80, -5.0)), SEC);
}

#[test]
fn fresh_limiter_sends_at_once_with_a_half_percent_burst() {
    let mut l = NumberLimiter::new(1000, 2.0);
    assert_eq!(l.check(ms(0)), Ok(()));
    // 1000 per 1.02 s: burst of ceil(1000 / 200) = 5, then one every 1.02 ms.
    assert_eq!(l.acquire_up_to(ms(0), 1000), 5);
    let interval = 1_020_000_000u64.div_ceil(1000);
    assert_eq!(l.check(ms(0)), Err(NotUntil(ns(interval))));
    assert_eq!(l.acquire(ns(interval - 1)), Err(NotUntil(ns(interval))));
    assert_eq!(l.acquire(ns(interval)), Ok(()));
}

#[test]
fn driven_flat_out_it_stays_under_the_limit_in_any_second() {
    let mut l = NumberLimiter::new(80, 2.0);
    let mut log = Vec::new();
    let mut t = 0;
    while t < 5 * SEC {
        match l.acquire(ns(t)) {
            Ok(()) => log.push(t),
            Err(NotUntil(at)) => t = at.as_nanos(),
        }
    }
    for &s in &log {
        assert!(in_window(&log, s) <= 80);
    }
    // Paced, not bunched: 5 s at 80 per 1.02 s plus the initial burst of 4.
    let paced = (5.0 * 80.0 / 1.02) as usize;
    assert!(log.len() >= paced && log.len() <= paced + 4, "{}", log.len());
}

#[test]
fn window_alone_refuses_the_limit_plus_first_until_the_oldest_leaves() {
    let mut l = NumberLimiter::with_burst_tolerance(10, 0.0, u32::MAX);
    assert_eq!(l.acquire_up_to(ms(0), 4), 4);
    assert_eq!(l.acquire_up_to(ms(300), 10), 6);
    assert_eq!(l.check(ms(999)), Err(NotUntil(ms(1000))));
    assert_eq!(l.acquire_up_to(ms(1000), 10), 4);
    assert_eq!(l.check(ms(1000)), Err(NotUntil(ms(1300))));
}

#[test]
fn after_handover_refuses_before_one_second_and_gives_no_burst() {
    let now = ms(5_000);
    let mut l = NumberLimiter::after_handover(1000, 0.0, now);
    let start = ms(6_000);
    assert_eq!(l.check(now), Err(NotUntil(start)));
    assert_eq!(l.check(ns(start.as_nanos() - 1)), Err(NotUntil(start)));
    assert_eq!(l.acquire_up_to(start, 100), 1, "no burst credit right after a handover");
    assert_eq!(l.check(start), Err(NotUntil(ns(start.as_nanos() + SEC.div_ceil(1000)))));
    assert_eq!(l.paused_until(), start);
}

#[test]
fn slow_down_halves_repeatedly_then_recovers() {
    let mut l = NumberLimiter::new(1000, 2.0);
    l.slow_down(ms(0), Duration::from_secs(10), ms(0));
    assert_eq!(l.effective_limit(ms(0)), 500);
    l.slow_down(ms(1_000), Duration::from_secs(10), ms(500));
    assert_eq!(l.effective_limit(ms(1_000)), 250);
    assert_eq!(l.effective_limit(ms(10_999)), 250, "the second call extended the end");
    assert_eq!(l.effective_limit(ms(11_000)), 1000);
    l.slow_down(ms(20_000), Duration::from_secs(1), ms(19_500));
    assert_eq!(l.effective_limit(ms(20_000)), 500, "a new slow-down starts from one halving");
    let mut one = NumberLimiter::new(1, 0.0);
    one.slow_down(ms(0), Duration::from_secs(1), ms(0));
    assert_eq!(one.effective_limit(ms(0)), 1, "never below one");
}

/// Forty requests of one bunch answered 130429 one after another: one
/// halving, not forty; a request sent after the halving and refused too
/// halves again.
#[test]
fn the_answers_to_one_bunch_halve_once() {
    let mut l = NumberLimiter::new(1000, 1.0);
    for k in 0..40 {
        l.slow_down(ms(2_000 + 10 * k), Duration::from_secs(10), ms(1_500 + k));
    }
    assert_eq!(l.effective_limit(ms(2_400)), 500, "one excess, one halving");
    assert_eq!(l.effective_limit(ms(12_389)), 500, "each answer extended the end");
    l.slow_down(ms(3_000), Duration::from_secs(10), ms(2_500));
    assert_eq!(l.effective_limit(ms(3_000)), 250, "sent at the halved rate and refused again");
}

#[test]
fn slowed_window_blocks_until_the_half_limit_is_free_or_the_slow_down_ends() {
    let mut l = NumberLimiter::with_burst_tolerance(10, 0.0, u32::MAX);
    assert_eq!(l.acquire_up_to(ms(0), 10), 10);
    l.slow_down(ms(100), Duration::from_millis(5_000), ms(100));
    // Five of the last ten leave only when all ten have: at 1 s.
    assert_eq!(l.check(ms(100)), Err(NotUntil(ms(1_000))));
    assert_eq!(l.acquire_up_to(ms(1_000), 10), 5);
    assert_eq!(l.check(ms(1_000)), Err(NotUntil(ms(2_000))));
    // A slow-down that ends before the window frees answers its end.
    let mut l = NumberLimiter::with_burst_tolerance(10, 0.0, u32::MAX);
    assert_eq!(l.acquire_up_to(ms(0), 6), 6);
    l.slow_down(ms(0), Duration::from_millis(300), ms(0));
    assert_eq!(l.check(ms(0)), Err(NotUntil(ms(300))));
}

#[test]
fn pause_keeps_the_later_instant() {
    let mut l = NumberLimiter::new(80, 2.0);
    l.pause_until(ms(500));
    l.pause_until(ms(200));
    assert_eq!(l.check(ms(0)), Err(NotUntil(ms(500))));
    assert_eq!(l.acquire_up_to(ms(499), 5), 0);
    // The burst of an 80/s number: ceil(80 / 200) = 1, raised to the floor of 2.
    assert_eq!(l.acquire_up_to(ms(500), 5), 2);
}

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    AcquireUpTo(u32),
    SlowDown(u64),
    Pause(u64),
    SetMps(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => Just(Op::Acquire),
        4 => (0u32..40).prop_map(Op::AcquireUpTo),
        1 => (0u64..3 * SEC).prop_map(Op::SlowDown),
        1 => (0u64..2 * SEC).prop_map(Op::Pause),
        1 => (1u32..120).prop_map(Op::SetMps),
    ]
}

/// Gaps between operations: mostly none or tiny (bursts), sometimes long.
fn gap() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => Just(0u64),
        3 => 0u64..2_000_000,
        2 => 0u64..100_000_000,
        1 => 0u64..1_500_000_000,
    ]
}

/// Runs `ops` and checks, after every step, the hard guarantee against a log of
/// every admitted send, the exactness of every refusal, and that a batch admits
/// what the same number of single acquires would. With `window_only` the pacing
/// is switched off and every decision must equal the log model's.
fn run(mps: u32, margin: f64, window_only: bool, steps: Vec<(u64, Op)>) -> Result<(), TestCaseError> {
    let mut l = if window_only {
        NumberLimiter::with_burst_tolerance(mps, margin, u32::MAX)
    } else {
        NumberLimiter::new(mps, margin)
    };
    let mut log: Vec<u64> = Vec::new();
    let mut paused = 0u64;
    let mut t = 0u64;
    // Until one window after a raised tier, sends the log had dropped count
    // at its oldest one: refusals may come early, admissions never.
    let mut exact_from = 0u64;
    for (g, op) in steps {
        t += g;
        let now = ns(t);
        let limit = l.effective_limit(now) as usize;
        // What the log model says about one more send at `x`, with nothing sent meanwhile.
        let room_at = |x: u64| x >= paused && in_window(&log, x) < l.effective_limit(ns(x)) as usize;
        let model_room = room_at(t);
        let checked = l.check(now);
        if window_only && t >= exact_from {
            prop_assert_eq!(checked.is_ok(), model_room, "t={} limit={}", t, limit);
        } else if checked.is_ok() {
            prop_assert!(model_room, "pacing may only refuse more, t={}", t);
        }
        if let Err(NotUntil(at)) = checked {
            let at = at.as_nanos();
            prop_assert!(at > t);
            prop_assert_eq!(l.check(ns(at)), Ok(()), "allowed at the NotUntil instant");
            prop_assert!(l.check(ns(at - 1)).is_err(), "refused 1 ns before it");
            // The instant itself must respect the log model (the hard guarantee
            // at the boundary); without pacing, it must be the model's own.
            prop_assert!(room_at(at), "NotUntil {} lets the window overflow", at);
            if window_only && at > exact_from {
                prop_assert!(!room_at(at - 1), "NotUntil {} is later than the model's", at);
            }
        }
        match op {
            Op::Acquire => {
                let r = l.acquire(now);
                prop_assert_eq!(r, checked);
                if r.is_ok() {
                    log.push(t);
                    prop_assert!(in_window(&log, t) <= limit, "t={}", t);
                }
            }
            Op::AcquireUpTo(n) => {
                let mut single = l.clone();
                let mut expect = 0;
                while expect < n && single.acquire(now).is_ok() {
                    expect += 1;
                }
                let got = l.acquire_up_to(now, n);
                prop_assert_eq!(got, expect);
                prop_assert_eq!(
                    l.normalised(t),
                    single.normalised(t),
                    "batch leaves the state single sends leave"
                );
                log.extend(std::iter::repeat_n(t, got as usize));
                // The hard guarantee: never more than the limit in (t - 1 s, t].
                prop_assert!(got == 0 || in_window(&log, t) <= limit, "t={}", t);
            }
            Op::SlowDown(d) => l.slow_down(now, Duration::from_nanos(d), now),
            Op::Pause(d) => {
                paused = paused.max(t + d);
                l.pause_until(ns(t + d));
            }
            Op::SetMps(mps) => {
                if mps > l.configured_mps() {
                    exact_from = t + 2 * SEC;
                }
                l.set_mps(mps);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn paced_limiter_never_exceeds_the_window_and_refusals_are_exact(
        mps in 1u32..120,
        margin in 0.0f64..10.0,
        steps in prop::collection::vec((gap(), op()), 1..300),
    ) {
        run(mps, margin, false, steps)?;
    }

    #[test]
    fn window_alone_admits_exactly_when_the_log_has_room(
        mps in 1u32..60,
        steps in prop::collection::vec((gap(), op()), 1..300),
    ) {
        run(mps, 0.0, true, steps)?;
    }
}

#[test]
fn widening_paces_slower_and_keeps_the_count_in_the_wider_window() {
    let mut l = NumberLimiter::new(80, 1.0);
    l.widen(Duration::from_millis(40));
    let mut log = Vec::new();
    let mut t = 0;
    while t < 5 * SEC {
        match l.acquire(ns(t)) {
            Ok(()) => log.push(t),
            Err(NotUntil(at)) => t = at.as_nanos(),
        }
    }
    let window = 1_050_000_000;
    for (i, &s) in log.iter().enumerate() {
        assert!(log[i..].iter().take_while(|&&u| u < s + window).count() <= 80);
    }
    let paced = (5.0 * 80.0 / 1.05) as usize;
    assert!(log.len() >= paced && log.len() <= paced + 2, "{}", log.len());
    // Back to the plain window: the same limiter as one never widened, but for its history.
    l.widen(Duration::ZERO);
    assert_eq!(l.full, NumberLimiter::new(80, 1.0).full);
}
