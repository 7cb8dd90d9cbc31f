use super::*;
use proptest::prelude::*;

fn ms(n: u64) -> Moment {
    Moment::from_millis(n)
}

fn small(cap: u64) -> WabaWindow {
    WabaWindow::with_resolution(cap, Duration::from_secs(1), Duration::from_millis(100))
}

#[test]
fn default_window_is_one_hour_in_100_ms_buckets() {
    let w = WabaWindow::new(1_800_000);
    assert_eq!(w.cap(), 1_800_000);
    assert_eq!(w.ring.len(), 36_001);
}

#[test]
fn a_call_counts_until_its_bucket_end_plus_the_window() {
    let mut w = small(10);
    assert_eq!(w.acquire_up_to(ms(50), 4), 4);
    assert_eq!(w.acquire_up_to(ms(420), 20), 6);
    assert_eq!(w.used(ms(999)), 10);
    // The calls of bucket [0, 100 ms) leave at 100 ms + 1 s.
    assert_eq!(w.check(ms(1_000), 1), Err(NotUntil(ms(1_100))));
    assert_eq!(w.check(ms(1_000), 5), Err(NotUntil(ms(1_500))));
    assert_eq!(w.check(ms(1_100), 4), Ok(()));
    assert_eq!(w.used(ms(1_100)), 6);
    assert_eq!(w.acquire_up_to(ms(1_100), 10), 4);
    // More than the cap at once: answered with the instant the window is empty.
    assert_eq!(w.check(ms(1_100), 50), Err(NotUntil(ms(2_200))));
}

#[test]
fn never_more_than_the_cap_in_any_rolling_window_when_driven_flat_out() {
    let mut w = WabaWindow::with_resolution(50, Duration::from_secs(10), Duration::from_millis(100));
    let mut log = Vec::new();
    let mut t = ms(0);
    while t < Moment::from_secs(60) {
        match w.check(t, 1) {
            Ok(()) => {
                assert_eq!(w.acquire_up_to(t, 1), 1);
                log.push(t.as_nanos());
                t = t + Duration::from_millis(7);
            }
            Err(NotUntil(at)) => t = at,
        }
    }
    for &s in &log {
        let n = log.iter().filter(|&&c| c <= s && c + 10_000_000_000 > s).count();
        assert!(n <= 50);
    }
    assert!(log.len() >= 250, "about 50 per 10.1 s over 60 s, got {}", log.len());
}

#[test]
fn pause_refuses_until_its_end_and_keeps_the_later() {
    let mut w = small(10);
    w.pause_until(ms(500));
    w.pause_until(ms(300));
    assert_eq!(w.acquire_up_to(ms(499), 1), 0);
    assert_eq!(w.check(ms(0), 1), Err(NotUntil(ms(500))));
    assert_eq!(w.acquire_up_to(ms(500), 1), 1);
}

#[test]
fn a_long_idle_spell_empties_the_window() {
    let mut w = WabaWindow::new(100);
    assert_eq!(w.acquire_up_to(ms(0), 100), 100);
    assert_eq!(w.used(Moment::from_secs(3600)), 100);
    assert_eq!(w.used(ms(3_600_100)), 0);
    assert_eq!(w.acquire_up_to(Moment::from_secs(100_000), 100), 100);
}

#[derive(Debug, Clone)]
enum Op {
    Acquire(u64),
    Check(u64),
    Pause(u64),
    Used,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..30).prop_map(Op::Acquire),
        3 => (0u64..30).prop_map(Op::Check),
        1 => (0u64..500_000_000).prop_map(Op::Pause),
        1 => Just(Op::Used),
    ]
}

fn gap() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => Just(0u64),
        3 => 0u64..20_000_000,
        2 => 0u64..300_000_000,
        1 => 0u64..3_000_000_000,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Against a log of every call: never over the cap in any rolling window,
    /// and exactly as permissive as the log with each call moved to the end of
    /// its bucket; refusals name the exact instant.
    #[test]
    fn matches_a_log_rounded_to_bucket_ends(
        cap in 1u64..60,
        res_ms in 1u64..50,
        buckets in 1u64..40,
        steps in prop::collection::vec((gap(), op()), 1..300),
    ) {
        let res = res_ms * 1_000_000;
        let window = buckets * res;
        let mut w = WabaWindow::with_resolution(cap, Duration::from_nanos(window), Duration::from_nanos(res));
        // (time, calls) of every grant.
        let mut log: Vec<(u64, u64)> = Vec::new();
        let mut paused = 0u64;
        let mut t = 0u64;
        // Calls counted at t when each is held until its bucket end plus the window.
        let rounded = |log: &[(u64, u64)], t: u64| -> u64 {
            log.iter().filter(|(c, _)| (c / res + 1) * res + window > t).map(|(_, n)| n).sum()
        };
        for (g, op) in steps {
            t += g;
            let now = Moment::from_nanos(t);
            let room = cap - rounded(&log, t);
            match op {
                Op::Acquire(n) => {
                    let want = if t < paused { 0 } else { n.min(room) };
                    prop_assert_eq!(w.acquire_up_to(now, n), want, "t={}", t);
                    if want > 0 {
                        log.push((t, want));
                    }
                    let exact: u64 = log.iter().filter(|(c, _)| c + window > t).map(|(_, n)| n).sum();
                    prop_assert!(exact <= cap, "{} calls in the window ending at {}", exact, t);
                }
                Op::Check(n) => {
                    let ok = t >= paused && n.min(cap) <= room;
                    let got = w.check(now, n);
                    prop_assert_eq!(got.is_ok(), ok, "t={}", t);
                    if let Err(NotUntil(at)) = got {
                        let at = at.as_nanos();
                        prop_assert!(at > t);
                        prop_assert_eq!(w.clone().check(Moment::from_nanos(at), n), Ok(()));
                        prop_assert!(w.clone().check(Moment::from_nanos(at - 1), n).is_err());
                    }
                }
                Op::Pause(d) => {
                    paused = paused.max(t + d);
                    w.pause_until(Moment::from_nanos(t + d));
                }
                Op::Used => prop_assert_eq!(w.used(now), cap - room),
            }
        }
    }
}

#[test]
fn a_changed_cap_counts_the_calls_already_made() {
    let mut w = small(10);
    assert_eq!(w.acquire_up_to(ms(50), 8), 8);
    w.set_cap(5);
    assert_eq!(w.acquire_up_to(ms(200), 3), 0, "over the lowered cap");
    // The 8 calls of bucket [0, 100 ms) leave at 1.1 s.
    assert_eq!(w.check(ms(200), 1), Err(NotUntil(ms(1_100))));
    w.set_cap(20);
    assert_eq!(w.acquire_up_to(ms(300), 30), 12, "a raised cap has room at once");
    w.set_cap(0);
    assert_eq!(w.cap(), 1, "at least one call an hour");
}
