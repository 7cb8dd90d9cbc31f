//! [`Distribution`]: a latency distribution as histogram buckets plus
//! quantiles, built from raw samples (exact) or from a Prometheus
//! histogram's cumulative buckets (estimated).

use serde::{Deserialize, Serialize};

/// Default bucket upper bounds for latencies, in seconds: 5 ms to 60 s in a
/// 1–1.5–2.5–5 series (about log-spaced), a superset of the engine's
/// `wabulk_send_latency_seconds` buckets so both histograms line up.
pub const LATENCY_BOUNDS_S: &[f64] = &[
    0.005, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 7.5, 10.0, 15.0,
    30.0, 60.0,
];

/// A latency distribution, in seconds. Quantiles of an empty one are 0, so
/// a report never carries NaN (which JSON cannot).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    pub count: u64,
    pub p50_s: f64,
    pub p90_s: f64,
    pub p99_s: f64,
    pub max_s: f64,
    /// Ascending upper bounds; counts per bucket, not cumulative; the last
    /// bucket's bound is `f64::INFINITY`.
    pub buckets: Vec<Bucket>,
}

/// Observations in `(previous le_s, le_s]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// The upper bound; infinity is written as the string "+Inf" (as
    /// Prometheus does), since JSON has no infinity and serde_json would
    /// write `null`, which does not read back as an `f64`.
    #[serde(with = "le_bound")]
    pub le_s: f64,
    pub count: u64,
}

impl Distribution {
    /// From raw samples: exact nearest-rank quantiles (the smallest value
    /// with at least q·n values at or below it) and buckets for `bounds`
    /// plus +Inf. Sorts `values` in place; NaNs are ignored. `bounds` need
    /// not be sorted; non-finite ones are dropped.
    pub fn from_seconds(values: &mut [f64], bounds: &[f64]) -> Self {
        values.sort_unstable_by(f64::total_cmp);
        // total_cmp puts negative NaNs first and positive ones last.
        let start = values.iter().position(|v| !v.is_nan()).unwrap_or(values.len());
        let end = values.iter().rposition(|v| !v.is_nan()).map_or(start, |i| i + 1);
        let values = &values[start..end];

        let mut bounds: Vec<f64> = bounds.iter().copied().filter(|b| b.is_finite()).collect();
        bounds.sort_unstable_by(f64::total_cmp);
        bounds.dedup();

        let mut buckets = Vec::with_capacity(bounds.len() + 1);
        let mut below = 0;
        for le_s in bounds.into_iter().chain([f64::INFINITY]) {
            let upto = values.partition_point(|v| *v <= le_s);
            buckets.push(Bucket { le_s, count: (upto - below) as u64 });
            below = upto;
        }

        let nearest_rank = |q: f64| -> f64 {
            if values.is_empty() {
                return 0.0;
            }
            let rank = (q * values.len() as f64).ceil().max(1.0) as usize;
            values[rank.min(values.len()) - 1]
        };
        Self {
            count: values.len() as u64,
            p50_s: nearest_rank(0.50),
            p90_s: nearest_rank(0.90),
            p99_s: nearest_rank(0.99),
            max_s: values.last().copied().unwrap_or(0.0),
            buckets,
        }
    }

    /// From a Prometheus histogram's cumulative buckets `(le, count at or
    /// below le)`, as scraped from `_bucket` series. Quantiles are estimated
    /// as Prometheus' `histogram_quantile` does: find the bucket holding
    /// rank q·n and interpolate linearly inside it (the first bucket starts
    /// at 0); a rank in the +Inf bucket gives the largest finite bound.
    /// `max_s` caps the estimates when known (the true maximum); without it,
    /// `max_s` becomes the upper bound of the highest non-empty bucket (the
    /// largest finite bound if that is +Inf), an estimate like the others.
    ///
    /// Input is sorted by bound; a missing +Inf bucket is taken to hold no
    /// more than the last one; counts that decrease (a scrape racing
    /// observations) are raised to the running maximum.
    pub fn from_buckets(cumulative: &[(f64, u64)], max_s: Option<f64>) -> Self {
        let mut cum: Vec<(f64, u64)> = cumulative.iter().copied().filter(|(le, _)| !le.is_nan()).collect();
        cum.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        cum.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                earlier.1 = earlier.1.max(later.1);
            }
            same
        });
        if cum.last().is_none_or(|(le, _)| le.is_finite()) {
            let n = cum.last().map_or(0, |(_, n)| *n);
            cum.push((f64::INFINITY, n));
        }
        let mut running = 0;
        for (_, n) in &mut cum {
            running = running.max(*n);
            *n = running;
        }

        let count = running;
        let mut below = 0;
        let buckets: Vec<Bucket> = cum
            .iter()
            .map(|&(le_s, n)| {
                let bucket = Bucket { le_s, count: n - below };
                below = n;
                bucket
            })
            .collect();

        let largest_finite = cum.iter().rev().find(|(le, _)| le.is_finite()).map_or(0.0, |(le, _)| *le);
        let max_s = max_s.unwrap_or_else(|| {
            buckets.iter().rev().find(|b| b.count > 0).map_or(0.0, |b| {
                if b.le_s.is_finite() {
                    b.le_s
                } else {
                    largest_finite
                }
            })
        });

        let quantile = |q: f64| -> f64 {
            if count == 0 {
                return 0.0;
            }
            let rank = q * count as f64;
            // The +Inf bucket always reaches the rank, so this finds one.
            let b = cum.iter().position(|(_, n)| *n as f64 >= rank).unwrap_or(cum.len() - 1);
            let (end, n) = cum[b];
            let estimate = if !end.is_finite() {
                largest_finite
            } else if b == 0 && end <= 0.0 {
                end
            } else {
                let (start, below) = if b == 0 { (0.0, 0) } else { cum[b - 1] };
                let in_bucket = (n - below) as f64;
                start + (end - start) * ((rank - below as f64) / in_bucket)
            };
            estimate.min(max_s)
        };
        Self { count, p50_s: quantile(0.50), p90_s: quantile(0.90), p99_s: quantile(0.99), max_s, buckets }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Observations above the largest finite bound.
    pub fn overflow(&self) -> u64 {
        self.buckets.iter().filter(|b| !b.le_s.is_finite()).map(|b| b.count).sum()
    }
}

/// `le_s` as a JSON number, or "+Inf" for infinity; reads numbers, "+Inf",
/// "Inf", "inf" and `null` (what serde_json writes for infinity).
mod le_bound {
    use std::fmt;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(le: &f64, s: S) -> Result<S::Ok, S::Error> {
        if le.is_infinite() && *le > 0.0 {
            s.serialize_str("+Inf")
        } else {
            s.serialize_f64(*le)
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        d.deserialize_any(Bound)
    }

    struct Bound;

    impl Visitor<'_> for Bound {
        type Value = f64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number or \"+Inf\"")
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_unit<E: de::Error>(self) -> Result<f64, E> {
            Ok(f64::INFINITY)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            match v {
                "+Inf" | "Inf" | "inf" | "+inf" => Ok(f64::INFINITY),
                _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
            }
        }
    }
}
