use std::time::Duration;

use proptest::prelude::*;

use super::*;

/// The rule stated directly: a departure at `t` is allowed iff fewer than
/// `limit` of the recorded ones lie in `(t - window, t]`.
fn reference_allows(log: &[u64], limit: usize, t: u64, window: u64) -> bool {
    log.iter().filter(|&&d| d + window > t && d <= t).count() < limit
}

#[test]
fn the_limit_th_departure_waits_for_the_oldest_to_leave() {
    let mut w = DepartureWindow::new(2);
    let second = Duration::from_secs(1);
    assert_eq!(w.depart(Moment::from_millis(0), second), Ok(()));
    assert_eq!(w.depart(Moment::from_millis(10), second), Ok(()));
    assert_eq!(w.depart(Moment::from_millis(20), second), Err(NotUntil(Moment::from_millis(1000))));
    // A longer window moves the slot at once.
    assert_eq!(
        w.depart(Moment::from_millis(999), second + Duration::from_millis(30)),
        Err(NotUntil(Moment::from_millis(1030)))
    );
    assert_eq!(w.depart(Moment::from_millis(1000), second), Ok(()));
    assert_eq!(w.depart(Moment::from_millis(1000), second), Err(NotUntil(Moment::from_millis(1010))));
}

proptest! {
    /// Against the reference, with the window changing at every call:
    /// the same answer for every attempt, and an exact "not until".
    #[test]
    fn matches_the_reference(
        limit in 1usize..6,
        steps in prop::collection::vec((0u64..400, 900u64..1100), 1..300),
    ) {
        let mut w = DepartureWindow::new(limit as u32);
        let mut log: Vec<u64> = Vec::new();
        let mut t = 0u64;
        for (gap_ms, window_ms) in steps {
            t += gap_ms * 1_000_000;
            let window = window_ms * 1_000_000;
            let allowed = reference_allows(&log, limit, t, window);
            match w.depart(Moment::from_nanos(t), Duration::from_nanos(window)) {
                Ok(()) => {
                    prop_assert!(allowed);
                    log.push(t);
                }
                Err(NotUntil(at)) => {
                    prop_assert!(!allowed);
                    let at = at.as_nanos();
                    prop_assert!(at > t);
                    prop_assert!(reference_allows(&log, limit, at, window));
                    prop_assert!(!reference_allows(&log, limit, at - 1, window));
                }
            }
        }
    }
}

proptest! {
    /// A tier raised or lowered between departures: the rule holds for the
    /// limit in force at each call, with an exact "not until".
    #[test]
    fn matches_the_reference_as_the_limit_changes(
        first in 1usize..6,
        steps in prop::collection::vec((0u64..400, 900u64..1100, prop::option::weighted(0.1, 1usize..6)), 1..300),
    ) {
        let mut w = DepartureWindow::new(first as u32);
        let mut limit = first;
        let mut log: Vec<u64> = Vec::new();
        let mut t = 0u64;
        // Until one window after a raise, departures the window had dropped
        // count at its oldest one: refusals may be early, never admissions.
        let mut exact_from = 0u64;
        for (gap_ms, window_ms, new_limit) in steps {
            t += gap_ms * 1_000_000;
            if let Some(new_limit) = new_limit {
                if new_limit > limit {
                    exact_from = t + 1_100_000_000;
                }
                w.set_limit(new_limit as u32);
                limit = new_limit;
            }
            let window = window_ms * 1_000_000;
            let allowed = reference_allows(&log, limit, t, window);
            match w.depart(Moment::from_nanos(t), Duration::from_nanos(window)) {
                Ok(()) => {
                    prop_assert!(allowed);
                    log.push(t);
                }
                Err(NotUntil(at)) => {
                    prop_assert!(!allowed || t < exact_from);
                    let at = at.as_nanos();
                    prop_assert!(reference_allows(&log, limit, at, window));
                    prop_assert!(at <= exact_from || !reference_allows(&log, limit, at - 1, window));
                }
            }
        }
    }
}
