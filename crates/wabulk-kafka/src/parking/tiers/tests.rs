use std::time::Duration;

use proptest::prelude::*;

use super::{ceil_ms, floor_ms, label, system_time, Placement, Tiers};
use crate::parking::DEFAULT_TIERS;

fn tiers(ms: &[u64]) -> Tiers {
    Tiers::new(&ms.iter().map(|&m| Duration::from_millis(m)).collect::<Vec<_>>()).unwrap()
}

/// Follows a job parked at 0 and due at `due_ms` through the tiers, each
/// hop processed `delays[i]` after its release (0 past the list): the tier
/// writes, and when it went back to the jobs topic.
fn follow(tiers: &Tiers, due_ms: u64, delays: &[u64]) -> (u32, u64) {
    let mut hops = 0;
    let mut placement = tiers.park(0, due_ms);
    let mut at = 0;
    loop {
        match placement {
            Placement::Jobs => return (hops, at),
            Placement::Hold { due_ms } => return (hops, due_ms),
            Placement::Tier { release_ms, .. } => {
                at = release_ms + delays.get(hops as usize).copied().unwrap_or(0);
                hops += 1;
                placement = tiers.at_release(at, due_ms);
            }
        }
    }
}

#[test]
fn the_largest_tier_that_fits_is_chosen() {
    let t = tiers(&[200, 1_000, 3_000]);
    assert_eq!(t.largest_within(0), None);
    assert_eq!(t.largest_within(199), None);
    assert_eq!(t.largest_within(200), Some(0));
    assert_eq!(t.largest_within(999), Some(0));
    assert_eq!(t.largest_within(1_000), Some(1));
    assert_eq!(t.largest_within(2_999), Some(1));
    assert_eq!(t.largest_within(3_000), Some(2));
    assert_eq!(t.largest_within(u64::MAX), Some(2));

    let now = 1_700_000_000_000;
    assert_eq!(t.park(now, now + 2_500), Placement::Tier { index: 1, release_ms: now + 1_000 });
    assert_eq!(t.park(now, now + 60_000), Placement::Tier { index: 2, release_ms: now + 3_000 });
    // Less than the smallest tier left: the smallest, released at the due
    // time itself, never before it.
    assert_eq!(t.park(now, now + 150), Placement::Tier { index: 0, release_ms: now + 150 });
    assert_eq!(t.park(now, now), Placement::Jobs);
    assert_eq!(t.park(now, now - 5), Placement::Jobs);
    // The mover keeps such a job until it is due instead.
    assert_eq!(t.at_release(now, now + 150), Placement::Hold { due_ms: now + 150 });
    assert_eq!(t.at_release(now, now + 200), Placement::Tier { index: 0, release_ms: now + 200 });
    assert_eq!(t.at_release(now, now), Placement::Jobs);
}

#[test]
fn tiers_must_be_whole_milliseconds_and_ascending() {
    assert!(Tiers::new(&[]).is_err());
    assert!(Tiers::new(&[Duration::ZERO]).is_err());
    assert!(Tiers::new(&[Duration::from_micros(1_500)]).is_err());
    assert!(Tiers::new(&[Duration::from_secs(5), Duration::from_secs(1)]).is_err());
    assert!(Tiers::new(&[Duration::from_secs(1), Duration::from_secs(1)]).is_err());
    assert!(Tiers::new(&DEFAULT_TIERS).is_ok());
}

#[test]
fn labels_use_the_largest_whole_unit() {
    assert_eq!(label(200), "200ms");
    assert_eq!(label(1_500), "1500ms");
    assert_eq!(label(1_000), "1s");
    assert_eq!(label(90_000), "90s");
    assert_eq!(label(180_000), "3m");
    assert_eq!(label(3_600_000), "1h");
    assert_eq!(label(8 * 3_600_000), "8h");
    assert_eq!(label(10 * 86_400_000), "10d");
}

#[test]
fn due_times_round_up_and_now_rounds_down() {
    let t = system_time(1_000) + Duration::from_micros(1);
    assert_eq!(ceil_ms(t), 1_001);
    assert_eq!(floor_ms(t), 1_000);
    assert_eq!(ceil_ms(system_time(1_000)), 1_000);
    assert_eq!(floor_ms(system_time(1_000)), 1_000);
}

/// The bound is the maximum over every remaining time, found by following
/// each one.
#[test]
fn the_hop_bound_is_the_maximum_over_every_remaining_time() {
    for ms in [&[1][..], &[2, 5, 12], &[1, 3, 10, 30], &[3, 4, 9, 20, 21], &[200, 1_000, 3_000]] {
        let t = tiers(ms);
        let mut worst = 0;
        for due in 0..=800 {
            let (hops, _) = follow(&t, due, &[]);
            worst = worst.max(hops);
            assert_eq!(t.worst_case_hops(Duration::from_millis(due)), worst, "tiers {ms:?}, up to {due} ms");
        }
    }
}

/// The defaults, as the module docs state them.
#[test]
fn the_default_tiers_take_at_most_25_hops_for_30_days() {
    let t = Tiers::new(&DEFAULT_TIERS).unwrap();
    let day = Duration::from_secs(86_400);
    assert_eq!(t.worst_case_hops(30 * day), 25);
    assert_eq!(t.worst_case_hops(day), 19);
    assert_eq!(t.worst_case_hops(Duration::from_secs(3_600)), 14);
}

fn ascending_tiers() -> impl Strategy<Value = Vec<u64>> {
    proptest::collection::btree_set(1u64..5_000, 1..6).prop_map(|set| set.into_iter().collect())
}

proptest! {
    /// Whatever the processing delay of each hop: never back before the due
    /// time, back no later than the last hop's delay after it, and never
    /// more tier writes than the bound for the whole wait.
    #[test]
    fn never_early_and_never_more_hops_than_the_bound(
        tier_ms in ascending_tiers(),
        due in 0u64..200_000,
        delays in proptest::collection::vec(0u64..3_000, 0..64),
    ) {
        let t = tiers(&tier_ms);
        let (hops, back) = follow(&t, due, &delays);
        prop_assert!(back >= due, "back at {back}, due {due}");
        let last_delay = hops.checked_sub(1).and_then(|i| delays.get(i as usize)).copied().unwrap_or(0);
        prop_assert!(back - due <= last_delay, "back at {back}, due {due}, last delay {last_delay}");
        prop_assert!(hops <= t.worst_case_hops(Duration::from_millis(due)));
    }
}
