//! Tunables of the scheduler, each with its range and effect.

use std::sync::Arc;
use std::time::Duration;

use wabulk_limits::{PairRule, WindowAllowance};

use crate::LiveTiers;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// The pair rule with its safety margin (docs/platform.md "The pair rule,
    /// exactly" and "Margins": 6 s + 50 ms, burst 45).
    pub pair_rule: PairRule,
    /// Pace each number this many percent under its tier (0.0..50.0). Higher
    /// leaves more room for jitter between our send and Meta's arrival time;
    /// lower gets closer to the tier.
    pub mps_margin_percent: f64,
    /// How long a number runs at half rate after a 130429.
    pub slow_down_for: Duration,
    /// Most jobs one number hands out per round before the next number gets
    /// its turn. Higher means fewer wake-ups; lower means fairer interleaving.
    pub max_batch: usize,
    /// Widens every number's window by the host's scheduling delay; shared
    /// with the sender's departure gates, which see the same value.
    pub window_allowance: Arc<WindowAllowance>,
    /// Tiers raised while running; a number met for the first time takes
    /// its tier from here before its job's envelope.
    pub tiers: Arc<LiveTiers>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            pair_rule: PairRule::default(),
            mps_margin_percent: wabulk_limits::NumberLimiter::DEFAULT_MARGIN_PERCENT,
            slow_down_for: Duration::from_secs(10),
            max_batch: 256,
            window_allowance: Arc::default(),
            tiers: Arc::default(),
        }
    }
}
