use std::ops::RangeInclusive;

use proptest::prelude::*;

use super::{decode, encode, Encoded, MetadataError, MAX_METADATA_BYTES};

#[test]
fn ranges_are_relative_to_the_watermark() {
    let text = encode(100, [103..=105, 109..=109, 112..=140]).text;
    assert_eq!(text, "v2:3+2,4,3+28");
    assert_eq!(decode(100, &text).unwrap(), vec![103..=105, 109..=109, 112..=140]);
    assert_eq!(encode(7, []), Encoded { text: "v2:".into(), left_out_from: None });
    assert_eq!(decode(7, "v2:").unwrap(), Vec::<RangeInclusive<i64>>::new());
    assert_eq!(decode(7, "v1:").unwrap(), Vec::<RangeInclusive<i64>>::new());
    assert_eq!(decode(7, "").unwrap(), Vec::<RangeInclusive<i64>>::new(), "no metadata: nothing finished");
}

/// Commits of older versions (offsets relative to the watermark) are read.
#[test]
fn the_first_format_is_still_read() {
    assert_eq!(decode(100, "v1:3-5,9,12-40").unwrap(), vec![103..=105, 109..=109, 112..=140]);
}

#[test]
fn malformed_metadata_is_refused() {
    assert_eq!(decode(0, "v3:1"), Err(MetadataError::Format));
    assert_eq!(decode(0, "something else"), Err(MetadataError::Format));
    for bad in
        ["v1:0", "v1:3-2", "v1:1,1", "v1:5,3", "v1:2-4,4", "v1:+1", "v1:-1", "v1:1-", "v1:a", "v1:1,,2"]
    {
        assert!(matches!(decode(0, bad), Err(MetadataError::Range(_))), "{bad} is refused");
    }
    for bad in ["v2:0", "v2:1+0", "v2:1,0", "v2:+1", "v2:1-2", "v2:1+", "v2:a", "v2:1,,2", "v2:1++2"] {
        assert!(matches!(decode(0, bad), Err(MetadataError::Range(_))), "{bad} is refused");
    }
    assert!(decode(i64::MAX - 1, "v1:2").is_err(), "overflow is refused");
    assert!(decode(i64::MAX - 1, "v2:2").is_err(), "overflow is refused");
}

/// Many tiny ranges far above the watermark: the text stays under the cap,
/// keeps the lowest ranges (the distances keep each to a few bytes, so
/// about a thousand), and what it keeps decodes to a prefix of them.
#[test]
fn an_adversarial_set_is_cut_to_its_lowest_ranges() {
    let watermark = 1_000_000_000_000;
    let finished: Vec<RangeInclusive<i64>> =
        (0..100_000).map(|i| watermark + 1_000_000 + 2 * i).map(|o| o..=o).collect();
    let Encoded { text, left_out_from } = encode(watermark, finished.clone());
    assert!(text.len() <= MAX_METADATA_BYTES, "{} bytes", text.len());
    assert!(text.len() > MAX_METADATA_BYTES - 20, "the cap is used: {} bytes", text.len());
    let kept = decode(watermark, &text).unwrap();
    assert!(kept.len() > 1_000, "{} ranges kept", kept.len());
    assert_eq!(kept[..], finished[..kept.len()], "the lowest ranges are kept");
    assert_eq!(left_out_from, Some(*finished[kept.len()].start()), "what is left out is said");
}

/// Ascending, disjoint, non-adjacent ranges above `watermark`.
fn ranges() -> impl Strategy<Value = (i64, Vec<RangeInclusive<i64>>)> {
    (0i64..1_000_000_000_000, proptest::collection::vec((1i64..50, 0i64..50), 0..1_000)).prop_map(
        |(watermark, steps)| {
            let mut end = watermark;
            let ranges = steps
                .into_iter()
                .map(|(gap, len)| {
                    let start = end + gap + 1;
                    end = start + len;
                    start..=end
                })
                .collect();
            (watermark, ranges)
        },
    )
}

proptest! {
    /// Whatever fits comes back exactly; what does not is a suffix, dropped
    /// whole.
    #[test]
    fn round_trips_up_to_the_cap((watermark, finished) in ranges()) {
        let Encoded { text, left_out_from } = encode(watermark, finished.clone());
        prop_assert!(text.len() <= MAX_METADATA_BYTES);
        prop_assert!(text.is_ascii());
        let decoded = decode(watermark, &text).unwrap();
        prop_assert!(decoded.len() <= finished.len());
        prop_assert_eq!(&decoded[..], &finished[..decoded.len()]);
        prop_assert_eq!(left_out_from, finished.get(decoded.len()).map(|r| *r.start()));
        if decoded.len() < finished.len() {
            // The next range would not have fitted (it takes at most 2 * 2 + 2 bytes here).
            prop_assert!(text.len() + 6 > MAX_METADATA_BYTES);
        }
    }
}
