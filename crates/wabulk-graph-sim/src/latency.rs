//! Latency sampling: how long the simulator waits before each answer.

use std::time::Duration;

use rand::Rng;

use crate::config::Latency;

/// Median of Meta's send latency, in seconds.
const META_MEDIAN_S: f64 = 0.5;
/// Lognormal sigma fitted between Meta's p90 (about 1 s) and p99 (about 2 s):
/// with 0.57 the p90 is 1.04 s and the p99 1.89 s.
const META_SIGMA: f64 = 0.57;
/// Upper bound of one unscaled sample, so that a freak draw cannot stall a test;
/// about 7 sigma above the median, so it almost never bites.
const META_MAX_S: f64 = 25.0;

impl Latency {
    /// The longest one sample can be: a bound for waiting on what it delays.
    pub fn max_sample(&self) -> Duration {
        match *self {
            Latency::Fixed(d) => d,
            Latency::Meta { scale } => {
                Duration::try_from_secs_f64(META_MAX_S * scale).unwrap_or(Duration::ZERO)
            }
        }
    }
}

/// Draws one latency.
pub(crate) fn sample(latency: &Latency, rng: &mut impl Rng) -> Duration {
    match *latency {
        Latency::Fixed(d) => d,
        Latency::Meta { scale } => {
            let seconds = (META_MEDIAN_S * (META_SIGMA * standard_normal(rng)).exp()).min(META_MAX_S);
            Duration::try_from_secs_f64(seconds * scale).unwrap_or(Duration::ZERO)
        }
    }
}

/// Box–Muller: one standard normal draw from two uniform ones (rand_distr is not
/// worth a dependency for this).
fn standard_normal(rng: &mut impl Rng) -> f64 {
    // 1 - [0, 1) is (0, 1], so the logarithm is finite.
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn meta_latency_matches_the_documented_percentiles() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let latency = Latency::Meta { scale: 1.0 };
        let mut samples: Vec<f64> = (0..20_000).map(|_| sample(&latency, &mut rng).as_secs_f64()).collect();
        samples.sort_by(f64::total_cmp);
        let pct = |p: f64| samples[((samples.len() as f64) * p) as usize];
        assert!((0.45..0.55).contains(&pct(0.50)), "p50 {}", pct(0.50));
        assert!((0.9..1.15).contains(&pct(0.90)), "p90 {}", pct(0.90));
        assert!((1.6..2.2).contains(&pct(0.99)), "p99 {}", pct(0.99));
    }

    #[test]
    fn scale_and_fixed() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let fast = Latency::Meta { scale: 0.01 };
        assert!((0..1000).all(|_| sample(&fast, &mut rng) <= Duration::from_millis(250)));
        let fixed = Latency::Fixed(Duration::from_millis(3));
        assert_eq!(sample(&fixed, &mut rng), Duration::from_millis(3));
    }
}
