use super::*;
use proptest::prelude::*;

fn ms(n: u64) -> Moment {
    Moment::from_millis(n)
}

fn secs(n: u64) -> Moment {
    Moment::from_secs(n)
}

/// The platform's figures with no safety margin, so the examples read as in
/// docs/platform.md.
fn exact_rule() -> PairRule {
    PairRule { interval: Duration::from_secs(6), burst: 45, margin: Duration::ZERO }
}

#[test]
fn default_rule_is_six_seconds_plus_margin_and_45() {
    assert_eq!(
        PairRule::default(),
        PairRule { interval: Duration::from_secs(6), burst: 45, margin: Duration::from_millis(50) }
    );
    assert_eq!(PairRule::default().validate(), Ok(()));
}

#[test]
fn burst_of_20_blocks_until_120_s_and_the_21st_at_6_s_is_refused() {
    let mut p = PairBudgets::new(exact_rule());
    for _ in 0..20 {
        assert_eq!(p.acquire(1, secs(0)), Ok(()));
    }
    // GCRA with a 45-message tolerance would allow this one.
    assert_eq!(p.acquire(1, secs(6)), Err(NotUntil(secs(120))));
    assert_eq!(p.check(1, ms(119_999)), Err(NotUntil(secs(120))));
    assert_eq!(p.check(1, Moment::from_nanos(120_000_000_000 - 1)), Err(NotUntil(secs(120))));
    assert_eq!(p.acquire(1, secs(120)), Ok(()));
    // Other recipients of the number are not affected.
    assert_eq!(p.acquire(2, secs(6)), Ok(()));
}

#[test]
fn a_burst_may_grow_only_while_younger_than_one_interval() {
    let mut p = PairBudgets::new(exact_rule());
    assert_eq!(p.acquire(1, secs(0)), Ok(()));
    assert_eq!(p.acquire(1, ms(5_999)), Ok(()));
    assert_eq!(p.acquire(1, ms(6_000)), Err(NotUntil(secs(12))));
}

#[test]
fn at_most_45_in_a_burst() {
    let mut p = PairBudgets::new(exact_rule());
    for i in 0..45 {
        assert_eq!(p.acquire(7, ms(i * 100)), Ok(()), "message {i}");
    }
    assert_eq!(p.acquire(7, ms(4_600)), Err(NotUntil(secs(45 * 6))));
}

#[test]
fn one_message_every_interval_is_always_allowed() {
    let mut p = PairBudgets::new(exact_rule());
    for i in 0..10_000 {
        assert_eq!(p.acquire(3, secs(6 * i)), Ok(()));
    }
}

#[test]
fn penalties_wait_4_to_the_x_seconds_capped_at_1024() {
    let mut p = PairBudgets::new(exact_rule());
    let mut t = secs(100);
    let mut waits = Vec::new();
    for _ in 0..8 {
        let until = p.penalise(9, t);
        assert_eq!(p.check(9, until - Duration::from_nanos(1)), Err(NotUntil(until)));
        assert_eq!(p.check(9, until), Ok(()));
        waits.push(until.saturating_since(t).as_secs());
        t = until;
    }
    assert_eq!(waits, [1, 4, 16, 64, 256, 1024, 1024, 1024]);
}

#[test]
fn a_retry_that_fails_again_waits_longer_and_x_is_forgotten_once_repaid() {
    let mut p = PairBudgets::new(exact_rule());
    assert_eq!(p.penalise(1, secs(0)), secs(1));
    assert_eq!(p.acquire(1, secs(1)), Ok(()), "the retry at the end of the block");
    assert_eq!(p.penalise(1, secs(2)), secs(7), "second 131056: 4 s, after the retry's own debt");
    assert_eq!(p.acquire(1, secs(7)), Ok(()));
    // Repaid at 13 s with no penalty pending: X starts over.
    assert_eq!(p.acquire(1, secs(13)), Ok(()));
    assert_eq!(p.penalise(1, secs(14)), secs(19), "X forgotten: 1 s, but the debt runs to 19 s");
    // A block that ended an interval ago with no message since is forgotten too.
    assert_eq!(p.penalise(2, secs(0)), secs(1));
    assert_eq!(p.penalise(2, secs(7)), secs(8));
    assert_eq!(p.penalise(2, secs(8)), secs(12), "still remembered right at the block's end");
}

#[test]
fn a_penalty_never_shortens_the_pairs_own_debt() {
    let mut p = PairBudgets::new(exact_rule());
    for _ in 0..20 {
        p.acquire(1, secs(0)).unwrap();
    }
    assert_eq!(p.penalise(1, secs(1)), secs(120));
    assert_eq!(p.check(1, ms(119_999)), Err(NotUntil(secs(120))));
}

#[test]
fn time_is_floored_to_whole_milliseconds() {
    let mut p =
        PairBudgets::new(PairRule { interval: Duration::from_secs(6), burst: 1, margin: Duration::ZERO });
    p.acquire(1, Moment::from_nanos(900_000)).unwrap();
    // Judged as sent at 0 ms: repaid at 6000 ms, 0.9 ms before 6 s after the real send.
    assert_eq!(p.check(1, secs(6)), Ok(()));
    assert_eq!(p.check(1, Moment::from_nanos(5_999_999_999)), Err(NotUntil(secs(6))));
}

#[test]
fn expire_idle_drops_only_entries_that_carry_nothing() {
    let mut p = PairBudgets::new(exact_rule());
    assert!(p.is_empty());
    p.acquire(1, secs(0)).unwrap();
    p.acquire(2, secs(0)).unwrap();
    p.acquire(2, secs(0)).unwrap();
    p.penalise(3, secs(0));
    assert_eq!(p.len(), 3);
    assert_eq!(p.expire_idle(ms(5_999)), 0);
    assert_eq!(p.expire_idle(secs(6)), 1, "pair 1 is repaid");
    assert_eq!(p.expire_idle(secs(6)), 0, "pair 3's block ended at 1 s: X kept for one interval");
    assert_eq!(p.expire_idle(secs(7)), 1);
    assert_eq!(p.expire_idle(secs(12)), 1);
    assert!(p.is_empty());
}

#[test]
fn acquire_sweeps_on_its_own_so_memory_stays_bounded() {
    let mut p = PairBudgets::new(exact_rule());
    // 200k recipients, 100 new ones every second: at most 600 are ever in debt.
    for i in 0..200_000u64 {
        p.acquire(i, ms(i * 10)).unwrap();
        assert!(p.len() <= 2 * MIN_AUTO_SWEEP_LEN + 1, "len {} at {i}", p.len());
    }
    assert!(p.heap_bytes() < 200_000, "{}", p.heap_bytes());
}

#[test]
fn a_million_pairs_fit_in_48_bytes_each() {
    let mut p = PairBudgets::new(PairRule::default());
    for r in 0..1_000_000u64 {
        p.acquire(r.wrapping_mul(0x9e37_79b9_7f4a_7c15), ms(r / 1000)).unwrap();
    }
    assert_eq!(p.len(), 1_000_000);
    let per_pair = p.heap_bytes() as f64 / p.len() as f64;
    assert!(per_pair <= 48.0, "{per_pair} bytes per pair");
}

#[test]
fn invalid_rules_are_rejected() {
    let bad = |interval_ms, burst| {
        PairRule { interval: Duration::from_millis(interval_ms), burst, margin: Duration::ZERO }.validate()
    };
    assert_eq!(bad(6000, 0), Err(PairRuleError::Burst(0)));
    assert_eq!(bad(6000, 63), Err(PairRuleError::Burst(63)));
    assert_eq!(bad(6000, 62), Ok(()));
    assert_eq!(bad(0, 45), Err(PairRuleError::Interval(Duration::ZERO)));
    assert!(bad(3_600_001, 45).is_err());
    assert!(std::panic::catch_unwind(|| PairBudgets::new(PairRule {
        interval: Duration::ZERO,
        burst: 1,
        margin: Duration::ZERO
    }))
    .is_err());
}

/// The pair rule followed literally, with plain fields, no packing and no expiry.
#[derive(Debug, Clone, Copy, Default)]
struct RefPair {
    repaid_at: u64,
    burst_start: u64,
    burst_len: u64,
    /// Exponent of the next penalty.
    x: u64,
    /// `repaid_at` is the end of a 131056 block.
    penalised: bool,
}

impl RefPair {
    /// Equivalent to a pair never seen: repaid with no penalty pending, or a
    /// block that ended one interval ago.
    fn forgotten(&self, t: u64, interval: u64) -> bool {
        if self.penalised {
            t >= self.repaid_at + interval
        } else {
            t >= self.repaid_at
        }
    }

    /// `rule` = (debt per message, burst window, burst), in ms.
    fn acquire(&mut self, t: u64, rule: (u64, u64, u64)) -> Result<(), u64> {
        let (interval, window, burst) = rule;
        if t >= self.repaid_at {
            if self.forgotten(t, interval) {
                self.x = 0;
            }
            self.penalised = false;
            self.burst_start = t;
            self.burst_len = 1;
            self.repaid_at = t + interval;
            Ok(())
        } else if !self.penalised && t < self.burst_start + window && self.burst_len < burst {
            self.burst_len += 1;
            self.repaid_at += interval;
            Ok(())
        } else {
            Err(self.repaid_at)
        }
    }

    fn penalise(&mut self, t: u64, interval: u64) -> u64 {
        if self.forgotten(t, interval) {
            self.x = 0;
        }
        let until = (t + 1000 * 4u64.pow(self.x as u32)).max(self.repaid_at);
        self.repaid_at = until;
        self.penalised = true;
        self.x = (self.x + 1).min(5);
        until
    }
}

#[derive(Debug, Clone)]
enum Op {
    Acquire(u64),
    Check(u64),
    Penalise(u64),
    ExpireIdle,
}

fn op() -> impl Strategy<Value = Op> {
    // Few recipients, so the same pairs are hit again and again.
    prop_oneof![
        10 => (0u64..6).prop_map(Op::Acquire),
        3 => (0u64..6).prop_map(Op::Check),
        1 => (0u64..6).prop_map(Op::Penalise),
        1 => Just(Op::ExpireIdle),
    ]
}

/// Gaps in ms: bursts, steps around one interval, and long idle spells.
fn gap() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => Just(0u64),
        3 => 0u64..200,
        3 => 0u64..8_000,
        1 => 0u64..100_000,
        1 => 0u64..2_000_000,
    ]
}

fn rule() -> impl Strategy<Value = PairRule> {
    prop_oneof![
        Just(PairRule::default()),
        Just(exact_rule()),
        (1u64..10_000, 1u32..=62, 0u64..100).prop_map(|(i, b, m)| PairRule {
            interval: Duration::from_millis(i),
            burst: b,
            margin: Duration::from_millis(m.min(i - 1)),
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn agrees_exactly_with_the_literal_rule(
        rule in rule(),
        start in 0u64..1_000_000_000,
        steps in prop::collection::vec((gap(), op()), 1..400),
    ) {
        let (interval, margin) = (rule.interval.as_millis() as u64, rule.margin.as_millis() as u64);
        let r = (interval + margin, interval - margin, u64::from(rule.burst));
        let interval = interval + margin;
        let mut p = PairBudgets::new(rule);
        let mut model: std::collections::HashMap<u64, RefPair> = Default::default();
        let mut t = start;
        for (g, op) in steps {
            t += g;
            let now = ms(t);
            match op {
                Op::Acquire(who) => {
                    let want = model.entry(who).or_default().acquire(t, r).map_err(|at| NotUntil(ms(at)));
                    prop_assert_eq!(p.acquire(who, now), want, "acquire {} at {}", who, t);
                }
                Op::Check(who) => {
                    let want = model.get(&who).copied().unwrap_or_default().acquire(t, r).map_err(|at| NotUntil(ms(at)));
                    let got = p.check(who, now);
                    prop_assert_eq!(got, want, "check {} at {}", who, t);
                    if let Err(NotUntil(at)) = got {
                        prop_assert_eq!(p.check(who, at), Ok(()));
                        prop_assert!(p.check(who, at - Duration::from_nanos(1)).is_err());
                    }
                }
                Op::Penalise(who) => {
                    let want = model.entry(who).or_default().penalise(t, interval);
                    prop_assert_eq!(p.penalise(who, now), ms(want));
                }
                Op::ExpireIdle => {
                    let live = model.values().filter(|m| !m.forgotten(t, interval)).count();
                    p.expire_idle(now);
                    prop_assert_eq!(p.len(), live);
                }
            }
        }
    }

    #[test]
    fn after_a_burst_of_n_from_s_nothing_before_s_plus_n_intervals(
        rule in rule(),
        s in 0u64..1_000_000_000,
        offsets in prop::collection::vec(0.0f64..1.0, 1..62),
        probes in prop::collection::vec(0.0f64..1.0, 1..20),
    ) {
        let window = (rule.interval - rule.margin).as_millis() as u64;
        let interval = (rule.interval + rule.margin).as_millis() as u64;
        let n = offsets.len().min(rule.burst as usize);
        let mut at: Vec<u64> = offsets[..n].iter().map(|f| (f * window as f64) as u64).collect();
        at.sort_unstable();
        at[0] = 0;
        let mut p = PairBudgets::new(rule);
        for &o in &at {
            prop_assert_eq!(p.acquire(5, ms(s + o)), Ok(()));
        }
        let repaid = s + n as u64 * interval;
        // A message inside the burst window would only make the burst longer:
        // the claim is about the time after the burst, once it can no longer grow.
        let closed = if n < rule.burst as usize { s + window } else { s + at[n - 1] };
        for f in probes.into_iter().filter(|_| closed < repaid) {
            let t = closed + (f * (repaid - closed) as f64) as u64;
            prop_assert_eq!(p.check(5, ms(t)), Err(NotUntil(ms(repaid))));
        }
        prop_assert_eq!(p.check(5, ms(repaid)), Ok(()));
    }
}

#[test]
fn the_margin_shortens_the_burst_window_and_lengthens_the_debt() {
    // Meta: a burst may grow while younger than 6 s. With a 50 ms margin the
    // engine stops growing it 50 ms early and repays 50 ms more per message,
    // so it errs on Meta's side at both edges.
    let rule = PairRule { interval: Duration::from_secs(6), burst: 45, margin: Duration::from_millis(50) };
    let mut p = PairBudgets::new(rule);
    assert_eq!(p.acquire(1, Moment::from_millis(0)), Ok(()));
    assert_eq!(p.acquire(1, Moment::from_millis(5_949)), Ok(()), "inside 6 s - 50 ms");
    assert_eq!(
        p.acquire(1, Moment::from_millis(5_950)),
        Err(NotUntil(Moment::from_millis(2 * 6_050))),
        "past the shortened window: wait for the debt, 6.05 s per message"
    );
    assert_eq!(p.acquire(1, Moment::from_millis(12_100)), Ok(()));
    assert_eq!(
        PairRule { margin: Duration::from_secs(6), ..rule }.validate(),
        Err(PairRuleError::Margin(Duration::from_secs(6)))
    );
}
