use std::collections::BTreeSet;
use std::ops::RangeInclusive;

use proptest::prelude::*;

use super::OffsetTracker;

/// The obvious model: a set of pending offsets, the highest tracked one, and
/// the offsets that need no more work: resolved, or skipped by a gap.
#[derive(Default)]
struct Model {
    pending: BTreeSet<i64>,
    last: Option<i64>,
    finished: BTreeSet<i64>,
}

impl Model {
    fn watermark(&self) -> Option<i64> {
        self.pending.first().copied().or(self.last.map(|last| last + 1))
    }

    /// The finished offsets above the watermark, as maximal ranges.
    fn finished_above(&self) -> Vec<RangeInclusive<i64>> {
        let Some(watermark) = self.watermark() else {
            return Vec::new();
        };
        let mut ranges: Vec<RangeInclusive<i64>> = Vec::new();
        for &offset in self.finished.range(watermark + 1..) {
            match ranges.last_mut() {
                Some(last) if *last.end() + 1 == offset => *last = *last.start()..=offset,
                _ => ranges.push(offset..=offset),
            }
        }
        ranges
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Track the next offset of the partition, `gap` past the previous one
    /// (gaps > 1 stand for compacted records or transaction markers).
    Track { gap: i64 },
    /// Resolve the pending offset at this index (modulo the pending count).
    Resolve { pick: usize },
    /// Resolve an offset that is not pending (a late or duplicate `done`).
    ResolveUnknown { offset: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1i64..4).prop_map(|gap| Op::Track { gap }),
        4 => any::<usize>().prop_map(|pick| Op::Resolve { pick }),
        1 => (-5i64..300).prop_map(|offset| Op::ResolveUnknown { offset }),
    ]
}

proptest! {
    #[test]
    fn watermark_matches_the_model(start in 0i64..1_000, ops in proptest::collection::vec(op(), 0..300)) {
        let mut tracker = OffsetTracker::new();
        let mut model = Model::default();
        let mut next = start;
        let mut stored: Option<i64> = None;
        for op in ops {
            let before = model.watermark();
            let advanced = match op {
                Op::Track { gap } => {
                    let offset = next + gap - 1;
                    // The gap before it, once the partition has a first offset.
                    if model.last.is_some() {
                        model.finished.extend(next..offset);
                    }
                    next = offset + 1;
                    tracker.track(offset);
                    model.pending.insert(offset);
                    model.last = Some(model.last.map_or(offset, |last| last.max(offset)));
                    None
                }
                Op::Resolve { pick } => {
                    if model.pending.is_empty() {
                        continue;
                    }
                    let offset = *model.pending.iter().nth(pick % model.pending.len()).unwrap();
                    model.pending.remove(&offset);
                    model.finished.insert(offset);
                    tracker.resolve(offset)
                }
                Op::ResolveUnknown { offset } => {
                    if model.pending.contains(&offset) {
                        continue;
                    }
                    let advanced = tracker.resolve(offset);
                    prop_assert_eq!(advanced, None, "resolving an unknown offset changes nothing");
                    advanced
                }
            };
            let after = model.watermark();
            prop_assert_eq!(tracker.watermark(), after);
            prop_assert_eq!(tracker.pending(), model.pending.len());
            prop_assert_eq!(tracker.finished_above().collect::<Vec<_>>(), model.finished_above());
            // `resolve` reports exactly the advances of the watermark.
            let expected = match (before, after) {
                (Some(b), Some(a)) if a > b => Some(a),
                _ => None,
            };
            if !matches!(op, Op::Track { .. }) {
                prop_assert_eq!(advanced, expected);
            }
            // What would be stored never passes an unresolved offset and never
            // moves backwards (offsets are tracked in increasing order here).
            if let Some(position) = advanced {
                prop_assert!(model.pending.iter().all(|&p| p >= position));
                prop_assert!(stored.is_none_or(|s| position > s));
                stored = Some(position);
            }
        }
    }
}

#[test]
fn out_of_order_resolution_waits_for_the_gap() {
    let mut tracker = OffsetTracker::new();
    assert_eq!(tracker.watermark(), None);
    for offset in 10..15 {
        tracker.track(offset);
    }
    assert_eq!(tracker.watermark(), Some(10));
    assert_eq!(tracker.resolve(12), None);
    assert_eq!(tracker.finished_above().collect::<Vec<_>>(), vec![12..=12]);
    assert_eq!(tracker.resolve(11), None);
    assert_eq!(tracker.finished_above().collect::<Vec<_>>(), vec![11..=12]);
    assert_eq!(tracker.resolve(10), Some(13));
    assert_eq!(tracker.resolve(10), None, "a second done is ignored");
    assert_eq!(tracker.resolve(14), None);
    assert_eq!(tracker.finished_above().collect::<Vec<_>>(), vec![14..=14]);
    assert_eq!(tracker.resolve(13), Some(15));
    assert_eq!(tracker.pending(), 0);
    assert_eq!(tracker.watermark(), Some(15));
    assert_eq!(tracker.finished_above().count(), 0);
}

#[test]
fn gaps_between_tracked_offsets_count_as_finished() {
    let mut tracker = OffsetTracker::new();
    assert_eq!(tracker.finished_above().count(), 0);
    for offset in [3, 4, 7, 9] {
        tracker.track(offset);
    }
    assert_eq!(tracker.finished_above().collect::<Vec<_>>(), vec![5..=6, 8..=8]);
    tracker.resolve(9);
    tracker.resolve(4);
    assert_eq!(tracker.finished_above().collect::<Vec<_>>(), vec![4..=6, 8..=9]);
}
