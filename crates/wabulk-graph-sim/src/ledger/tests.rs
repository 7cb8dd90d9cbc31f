//! Unit tests of the ledger: exact instants in, exact verdicts out; no sleeping.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::*;
use crate::config::{SimNumber, SimWaba};

const S6: Duration = Duration::from_secs(6);

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn secs(v: u64) -> Duration {
    Duration::from_secs(v)
}

fn config(mps: u32, hourly_cap: u64) -> SimConfig {
    SimConfig {
        numbers: vec![
            SimNumber { id: "n1".into(), mps, waba_id: "w".into() },
            SimNumber { id: "n2".into(), mps, waba_id: "w".into() },
        ],
        wabas: vec![SimWaba { id: "w".into(), token: "t".into(), hourly_cap }],
        ..SimConfig::default()
    }
}

/// Sends to one pair at the given instants; returns which were allowed.
fn run_pair(times: &[Duration]) -> Vec<bool> {
    let mut state = None;
    times
        .iter()
        .map(|&t| match pair_step(state, t, S6, 45) {
            Ok(next) => {
                state = Some(next);
                true
            }
            Err(_) => false,
        })
        .collect()
}

#[test]
fn pair_steady_traffic_every_interval_is_always_allowed() {
    let times: Vec<Duration> = (0..100).map(|i| S6 * i).collect();
    assert!(run_pair(&times).iter().all(|&ok| ok));
}

#[test]
fn pair_burst_of_20_blocks_until_120_s() {
    let mut times: Vec<Duration> = (0..20).map(|i| ms(i * 10)).collect();
    // Not plain GCRA: the 21st at t = 6 s would pass a 45-tolerance GCRA.
    times.push(secs(6));
    times.push(secs(119));
    times.push(secs(120));
    let verdicts = run_pair(&times);
    assert!(verdicts[..20].iter().all(|&ok| ok));
    assert_eq!(&verdicts[20..], &[false, false, true]);
}

#[test]
fn pair_21st_inside_the_burst_window_is_fine_and_burst_caps_at_45() {
    let times: Vec<Duration> = (0..46).map(|i| ms(i * 100)).collect();
    let verdicts = run_pair(&times);
    assert!(verdicts[..45].iter().all(|&ok| ok));
    assert!(!verdicts[45], "the 46th of a burst is refused");
}

#[test]
fn pair_refusal_reports_repaid_at_and_window_edge_is_exclusive() {
    let first = pair_step(None, secs(10), S6, 45).unwrap();
    // At exactly burst_start + interval the burst window is closed, and the debt
    // (repaid_at = 16 s) is repaid at that same instant: a new burst starts.
    let second = pair_step(Some(first), secs(16), S6, 45).unwrap();
    assert_eq!(second, PairState { repaid_at: secs(22), burst_start: secs(16), burst_len: 1 });
    let two = pair_step(Some(second), secs(17), S6, 45).unwrap();
    assert_eq!(two.repaid_at, secs(28));
    assert_eq!(pair_step(Some(two), secs(22) + ms(1), S6, 45), Err(secs(28)));
}

#[test]
fn phone_window_counts_every_arrival_and_is_half_open() {
    let mut ledger = Ledger::new(&config(3, 1_000));
    // Three in the first second, then one exactly 1 s after the first: legal.
    for t in [ms(0), ms(100), ms(200), ms(1000)] {
        assert!(!ledger.arrive(0, t, false).phone_over);
    }
    // Fourth within (0.1, 1.1]: 100 ms, 200 ms, 1000 ms and this one.
    assert!(ledger.arrive(0, ms(1050), false).phone_over);
    // The refused one still counts: the next at 1.15 s sees 200, 1000, 1050, 1150.
    assert!(ledger.arrive(0, ms(1150), false).phone_over);
    // Another number is unaffected.
    assert!(!ledger.arrive(1, ms(1150), false).phone_over);
    let stats = ledger.snapshot();
    assert_eq!(stats.violations.phone, 2);
    assert_eq!(stats.numbers["n1"].max_in_any_1s_window, 4);
    assert_eq!(stats.numbers["n1"].requests, 6);
    assert_eq!(stats.requests, 7);
}

#[test]
fn waba_cap_over_a_rolling_hour_with_regain_estimate() {
    let mut ledger = Ledger::new(&config(1_000, 3));
    assert!(ledger.arrive(0, secs(0), false).waba_over.is_none());
    assert!(ledger.arrive(1, secs(600), false).waba_over.is_none());
    assert!(ledger.arrive(0, secs(1200), false).waba_over.is_none());
    let over = ledger.arrive(1, secs(1800), false).waba_over.expect("fourth call in the hour");
    assert_eq!(over.waba_id, "w");
    assert_eq!(over.call_pct, 133);
    // Four calls held; one more is allowed once the two oldest (0 s, 600 s) leave:
    // at 600 s + 1 h.
    assert_eq!(over.regain_in, secs(600 + 3600 - 1800));
    // The first call leaves the hour at exactly 3600 s, but the refused one at
    // 1800 s still counts: 600, 1200, 1800 and this one are four.
    assert!(ledger.arrive(0, secs(3600), false).waba_over.is_some());
    // At 4200 s the 600 s call is gone too: 1200, 1800, 3600, 4200 → still four.
    assert!(ledger.arrive(0, secs(4200), false).waba_over.is_some());
    // At 5400 s only 3600, 4200 and this one remain.
    assert!(ledger.arrive(0, secs(5400), false).waba_over.is_none());
    assert_eq!(ledger.snapshot().violations.waba, 3);
}

#[test]
fn pair_is_committed_only_on_accept_and_violations_counted() {
    let mut cfg = config(1_000, 1_000);
    cfg.pair_interval = ms(100);
    cfg.pair_burst = 2;
    let mut ledger = Ledger::new(&cfg);
    // A check that is not followed by an accept borrows nothing.
    for _ in 0..5 {
        assert!(ledger.check_pair(0, "r", ms(0)).is_ok());
    }
    let p = ledger.check_pair(0, "r", ms(0)).unwrap();
    ledger.accept(0, "r", ms(0), p, None);
    let p = ledger.check_pair(0, "r", ms(50)).unwrap();
    ledger.accept(0, "r", ms(50), p, None);
    // Burst of 2 spent: repaid at 200 ms.
    assert_eq!(ledger.check_pair(0, "r", ms(60)), Err(ms(200)));
    // Same recipient on another number, and another recipient: unaffected.
    assert!(ledger.check_pair(1, "r", ms(60)).is_ok());
    assert!(ledger.check_pair(0, "s", ms(60)).is_ok());
    assert!(ledger.check_pair(0, "r", ms(200)).is_ok());
    assert_eq!(ledger.snapshot().violations.pair, 1);
}

#[test]
fn repaid_pairs_are_swept_without_changing_verdicts() {
    let mut cfg = config(1_000, 1_000);
    cfg.pair_interval = secs(6);
    cfg.pair_burst = 2;
    let mut ledger = Ledger::new(&cfg);
    for i in 0..100 {
        let to = format!("r{i}");
        let p = ledger.check_pair(0, &to, secs(1)).unwrap();
        ledger.accept(0, &to, secs(1), p, None);
    }
    // "busy" is still in debt at the sweep and must survive it.
    for t in [secs(8), secs(9)] {
        let p = ledger.check_pair(0, "busy", t).unwrap();
        ledger.accept(0, "busy", t, p, None);
    }
    assert!(ledger.check_pair(0, "busy", secs(10)).is_err());
    assert_eq!(ledger.pairs.len(), 1);
}

#[test]
fn duplicates_are_listed_once_and_counted_every_time() {
    let mut ledger = Ledger::new(&config(1_000, 1_000));
    let mut seqs = Vec::new();
    for (i, id) in ["a", "b", "a", "a", "c"].into_iter().enumerate() {
        let to = format!("r{i}");
        let p = ledger.check_pair(0, &to, ms(0)).unwrap();
        seqs.push(ledger.accept(0, &to, ms(0), p, Some(id)));
    }
    let p = ledger.check_pair(0, "x", ms(0)).unwrap();
    ledger.accept(0, "x", ms(0), p, None);
    let stats = ledger.snapshot();
    assert_eq!(stats.duplicate_job_ids, vec!["a".to_owned()]);
    assert_eq!(stats.duplicate_count, 2);
    assert_eq!(stats.accepted, 6);
    seqs.dedup();
    assert_eq!(seqs.len(), 5, "sequence numbers are unique");
}

#[test]
fn the_first_request_of_each_job_is_kept_whatever_its_answer() {
    let mut ledger = Ledger::new(&config(1_000, 1_000));
    let at = |ms: u64| std::time::UNIX_EPOCH + Duration::from_millis(ms);
    // "a" is refused first (never accepted), then accepted; "b" only accepted
    // (a caller that noted no request), "c" only refused.
    ledger.note_request("a", at(100));
    ledger.note_request("c", at(150));
    ledger.note_request("a", at(200));
    let p = ledger.check_pair(0, "r", ms(0)).unwrap();
    ledger.accept(0, "r", ms(0), p, Some("a"));
    let p = ledger.check_pair(0, "s", ms(0)).unwrap();
    ledger.accept(0, "s", ms(0), p, Some("b"));
    let first = ledger.first_requests();
    assert_eq!(first.get("a"), Some(&at(100)));
    assert_eq!(first.get("c"), Some(&at(150)));
    assert_eq!(first.get("b"), None);
    assert_eq!(ledger.snapshot().duplicate_count, 0);
}

#[test]
fn achieved_mps_reads_the_pace() {
    let mut ledger = Ledger::new(&config(1_000, 100_000));
    for i in 0..101u64 {
        let t = ms(i * 10);
        let to = format!("r{i}");
        ledger.arrive(0, t, false);
        let p = ledger.check_pair(0, &to, t).unwrap();
        ledger.accept(0, &to, t, p, None);
    }
    let stats = ledger.snapshot();
    let n1 = &stats.numbers["n1"];
    assert!((n1.achieved_mps - 100.0).abs() < 1e-6, "{}", n1.achieved_mps);
    assert_eq!(n1.max_in_any_1s_window, 100);
    assert_eq!(stats.violations.phone, 0);
    assert_eq!(stats.numbers["n2"].achieved_mps, 0.0);
}

#[test]
fn storms_last_two_seconds_and_roll_once_per_second() {
    let mut ledger = Ledger::new(&config(1_000, 1_000));
    let mut rng = StdRng::seed_from_u64(1);
    assert!(ledger.in_storm(0, ms(500), 1.0, &mut rng));
    assert!(ledger.in_storm(0, ms(2400), 0.0, &mut rng));
    assert!(!ledger.in_storm(0, ms(2500), 0.0, &mut rng));
    assert!(!ledger.in_storm(1, ms(2500), 0.0, &mut rng));
    assert_eq!(ledger.snapshot().storms, 1);

    // With p = 0.5, many arrivals inside one second share a single roll.
    let mut ledger = Ledger::new(&config(1_000, 1_000));
    let verdicts: Vec<bool> = (0..100).map(|i| ledger.in_storm(0, ms(10_000 + i), 0.5, &mut rng)).collect();
    assert!(verdicts.iter().all(|&v| v == verdicts[0]));
}
