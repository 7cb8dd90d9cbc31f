use std::collections::{BTreeSet, VecDeque};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::{insert, union, LostPartition, LOST_TTL, MAX_LOST_RANGES};
use crate::OffsetTracker;

fn ranges(list: &[RangeInclusive<i64>]) -> VecDeque<RangeInclusive<i64>> {
    list.iter().cloned().collect()
}

fn offsets(ranges: &VecDeque<RangeInclusive<i64>>) -> BTreeSet<i64> {
    ranges.iter().flat_map(|r| r.clone()).collect()
}

/// Ascending, disjoint and non-adjacent.
fn well_formed(ranges: &VecDeque<RangeInclusive<i64>>) -> bool {
    ranges.iter().all(|r| r.start() <= r.end())
        && ranges.iter().zip(ranges.iter().skip(1)).all(|(a, b)| *b.start() > a.end() + 1)
}

#[test]
fn insert_merges_neighbours() {
    let mut r = ranges(&[3..=5, 9..=9]);
    assert!(insert(&mut r, 7, 10));
    assert_eq!(r, ranges(&[3..=5, 7..=7, 9..=9]));
    assert!(insert(&mut r, 6, 10));
    assert!(insert(&mut r, 8, 10));
    assert_eq!(r, ranges(&[3..=9]));
    assert!(!insert(&mut r, 4, 10), "already there");
    assert!(insert(&mut r, 2, 10));
    assert!(insert(&mut r, 10, 10));
    assert!(insert(&mut r, 20, 10));
    assert_eq!(r, ranges(&[2..=10, 20..=20]));
}

#[test]
fn insert_keeps_the_lowest_ranges_under_the_cap() {
    let mut r = ranges(&[0..=0, 10..=10]);
    assert!(!insert(&mut r, 20, 2), "a new highest range beyond the cap is refused");
    assert!(insert(&mut r, 5, 2), "a lower one takes the highest one's place");
    assert_eq!(r, ranges(&[0..=0, 5..=5]));
    assert!(insert(&mut r, 6, 2), "extending a range needs no room");
    assert_eq!(r, ranges(&[0..=0, 5..=6]));
}

#[test]
fn union_merges_overlapping_and_adjacent_ranges() {
    let u = union(ranges(&[1..=3, 10..=12]), [4..=4, 11..=15, 20..=21]);
    assert_eq!(u, ranges(&[1..=4, 10..=15, 20..=21]));
    assert_eq!(union(VecDeque::new(), []), VecDeque::new());
}

/// What was read below the watermark, the finished offsets above it, the
/// late dones and the offsets still to skip are remembered; what was pending
/// is not, and late dones outside what was read are refused.
#[test]
fn a_lost_partition_remembers_what_it_finished() {
    let mut tracker = OffsetTracker::new();
    for offset in 100..120 {
        tracker.track(offset);
    }
    for offset in (100..105).chain([107, 110, 111]) {
        tracker.resolve(offset);
    }
    let skip = ranges(&[125..=126]);
    let now = Instant::now();
    let mut lost = LostPartition::new(Some(100..=119), &tracker, &skip, 3, now).unwrap();
    assert!(lost.done(106));
    assert!(!lost.done(106), "already finished");
    assert!(!lost.done(130), "not read by the lost ownership");
    assert!(!lost.done(99));
    assert_eq!(lost.finished_count(), 5 + 2 + 2 + 2, "100..=104, 106..=107, 110..=111, 125..=126");
    for offset in [105, 108, 109].into_iter().chain(112..120) {
        assert!(lost.done(offset));
    }
    assert_eq!(lost.finished_count(), 20 + 2, "everything read, and 125..=126");
    let mut lost = LostPartition::new(Some(100..=119), &tracker, &skip, 3, now).unwrap();
    assert!(lost.done(106));
    assert_eq!(lost.finished_count(), 5 + 2 + 2 + 2);
    assert!(!lost.expired(now + Duration::from_secs(1)));
    assert!(lost.expired(now + LOST_TTL));
    // Committed at 102 (an earlier commit), with metadata listing 112.
    let (skip, read) = lost.merge_into(Some(102), vec![112..=112]);
    assert_eq!(skip, ranges(&[102..=104, 106..=107, 110..=112, 125..=126]));
    assert_eq!(read, Some(100..=119));
}

#[test]
fn nothing_to_remember_without_records_or_skips() {
    let tracker = OffsetTracker::new();
    assert!(LostPartition::new(None, &tracker, &VecDeque::new(), 0, Instant::now()).is_none());
    let kept = LostPartition::new(None, &tracker, &ranges(&[5..=6]), 0, Instant::now()).unwrap();
    assert_eq!(kept.merge_into(None, Vec::new()).0, ranges(&[5..=6]));
}

proptest! {
    /// Inserting offsets in any order gives exactly their set as ranges,
    /// well formed; under a cap, a well-formed subset of them (never an
    /// offset not inserted), the same set as long as the cap was never
    /// reached.
    #[test]
    fn insert_is_a_set_of_offsets(list in proptest::collection::vec(0i64..200, 0..120), cap in 1usize..20) {
        let mut unbounded = VecDeque::new();
        let mut capped = VecDeque::new();
        let mut widest = 0;
        for &offset in &list {
            insert(&mut unbounded, offset, MAX_LOST_RANGES);
            insert(&mut capped, offset, cap);
            widest = widest.max(unbounded.len());
            prop_assert!(well_formed(&unbounded));
            prop_assert!(well_formed(&capped));
            prop_assert!(capped.len() <= cap);
        }
        let all: BTreeSet<i64> = list.iter().copied().collect();
        prop_assert_eq!(offsets(&unbounded), all.clone());
        prop_assert!(offsets(&capped).is_subset(&all));
        if widest <= cap {
            prop_assert_eq!(&capped, &unbounded);
        }
    }

    #[test]
    fn union_is_the_set_union(
        a in proptest::collection::btree_set(0i64..300, 0..80),
        b in proptest::collection::btree_set(0i64..300, 0..80),
    ) {
        let as_ranges = |set: &BTreeSet<i64>| {
            let mut r = VecDeque::new();
            for &o in set {
                insert(&mut r, o, usize::MAX);
            }
            r
        };
        let u = union(as_ranges(&a), as_ranges(&b));
        prop_assert!(well_formed(&u));
        prop_assert_eq!(offsets(&u), a.union(&b).copied().collect::<BTreeSet<_>>());
    }
}
