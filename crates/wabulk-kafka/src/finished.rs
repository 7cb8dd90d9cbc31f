//! The offset commit metadata of a jobs partition: which offsets above the
//! committed position are already finished, so that whoever reads the
//! partition next (this consumer after a restart, or the next owner after a
//! rebalance) skips them instead of sending their jobs again.
//!
//! Format (ASCII, because rdkafka exposes metadata as `&str`): `v2:` followed
//! by comma-separated ranges of finished offsets above the committed
//! position `W`, lowest first, each given by its distance from the end of
//! the one before (from `W` for the first): `g` (the one offset `E + g`,
//! where `E` is the previous range's end, `W` for the first) or `g+l`
//! (offsets `E + g` to `E + g + l`), with `g >= 1` and `l >= 1`. `v2:3+2,4` with
//! `W = 100` means offsets 103, 104, 105 and 109 are finished; 100 (the
//! committed position itself) never is. `v2:` alone means nothing above `W`
//! is finished. Distances keep each range to a few bytes however far above
//! `W` it lies, so the cap holds about three times as many ranges as
//! offsets relative to `W` would (`v1:`, `a` or `a-b` relative to `W`,
//! still read, as commits of older versions).
//!
//! The text is capped at [`MAX_METADATA_BYTES`], under Kafka's default
//! `offset.metadata.max.bytes` (4096). The jobs consumer keeps every
//! partition's finished set within it: it stops reading a partition whose
//! metadata passes [`WINDOW_PAUSE_BYTES`] (its out-of-order window is full)
//! until it is back under [`WINDOW_RESUME_BYTES`]; the margin up to the cap
//! is for the jobs already read when it stopped. Should ranges still not
//! fit, they are left out, highest first, and [`Encoded::left_out_from`]
//! says so: the offsets left out are not committed (they would be read and
//! sent again), never lost, since a range is written only for offsets that
//! are finished.

use std::fmt::Write as _;
use std::ops::RangeInclusive;

/// The largest metadata written, in bytes.
pub(crate) const MAX_METADATA_BYTES: usize = 3_500;

const PREFIX: &str = "v2:";

/// The format before distances, still read.
const PREFIX_V1: &str = "v1:";

/// Past this size a partition's metadata has too little room left for the
/// jobs still in flight: the jobs consumer stops reading the partition (its
/// out-of-order window is full).
pub const WINDOW_PAUSE_BYTES: usize = 3_000;

/// A partition stopped for its window is read again once its metadata is
/// back at or under this size (the watermark moved, or gaps filled): well
/// under [`WINDOW_PAUSE_BYTES`], so that it does not stop and start on every
/// job.
pub const WINDOW_RESUME_BYTES: usize = 2_000;

/// Encoded metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Encoded {
    pub(crate) text: String,
    /// The lowest finished offset left out for want of room, if any: every
    /// finished offset from it on is missing from `text`.
    pub(crate) left_out_from: Option<i64>,
}

/// The metadata for position `watermark` and the `finished` ranges above it
/// (ascending, disjoint, all above `watermark`, as
/// [`OffsetTracker::finished_above`](crate::OffsetTracker::finished_above)
/// yields them), cut at [`MAX_METADATA_BYTES`].
pub(crate) fn encode(watermark: i64, finished: impl IntoIterator<Item = RangeInclusive<i64>>) -> Encoded {
    let mut text = String::from(PREFIX);
    let mut item = String::new();
    let mut previous_end = watermark;
    for range in finished {
        let (start, end) = (*range.start(), *range.end());
        // Not produced by the tracker; skipped rather than trusted.
        if start <= previous_end || end < start {
            continue;
        }
        item.clear();
        if text.len() > PREFIX.len() {
            item.push(',');
        }
        let (gap, extra) = (start - previous_end, end - start);
        // Writing to a String cannot fail.
        let _ = if extra == 0 { write!(item, "{gap}") } else { write!(item, "{gap}+{extra}") };
        if text.len() + item.len() > MAX_METADATA_BYTES {
            return Encoded { text, left_out_from: Some(start) };
        }
        text.push_str(&item);
        previous_end = end;
    }
    Encoded { text, left_out_from: None }
}

/// Why committed metadata was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MetadataError {
    #[error("unknown offset metadata format (expected the prefix {PREFIX:?})")]
    Format,
    #[error("malformed finished range {0:?} in the offset metadata")]
    Range(String),
}

/// The finished offsets (absolute, ascending, disjoint) that `metadata`,
/// committed with position `committed`, describes. Empty metadata (a commit
/// by an older wabulk or another tool) means none. Anything malformed is an
/// error, and the caller then skips nothing.
pub(crate) fn decode(committed: i64, metadata: &str) -> Result<Vec<RangeInclusive<i64>>, MetadataError> {
    if metadata.is_empty() {
        return Ok(Vec::new());
    }
    let (body, distances) = match (metadata.strip_prefix(PREFIX), metadata.strip_prefix(PREFIX_V1)) {
        (Some(body), _) => (body, true),
        (None, Some(body)) => (body, false),
        (None, None) => return Err(MetadataError::Format),
    };
    let mut ranges: Vec<RangeInclusive<i64>> = Vec::new();
    if body.is_empty() {
        return Ok(ranges);
    }
    for item in body.split(',') {
        let bad = || MetadataError::Range(item.to_owned());
        let number = |text: &str| -> Option<i64> {
            // `parse` accepts a leading '+'; the format does not.
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            text.parse::<i64>().ok().filter(|&n| n >= 1)
        };
        let (start, end) = if distances {
            let (gap, extra) = match item.split_once('+') {
                Some((gap, extra)) => (number(gap).ok_or_else(bad)?, number(extra).ok_or_else(bad)?),
                None => (number(item).ok_or_else(bad)?, 0),
            };
            let previous_end = ranges.last().map_or(committed, |last| *last.end());
            let start = previous_end.checked_add(gap).ok_or_else(bad)?;
            (start, start.checked_add(extra).ok_or_else(bad)?)
        } else {
            let (start, end) = item.split_once('-').unwrap_or((item, item));
            let (start, end) = (number(start).ok_or_else(bad)?, number(end).ok_or_else(bad)?);
            if end < start {
                return Err(bad());
            }
            (committed.checked_add(start).ok_or_else(bad)?, committed.checked_add(end).ok_or_else(bad)?)
        };
        // Ranges ascend and do not overlap (distances of at least 1 ensure it).
        if ranges.last().is_some_and(|last| start <= *last.end()) {
            return Err(bad());
        }
        ranges.push(start..=end);
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests;
