//! [`LiveTiers`]: tiers raised while the engine runs (Meta's throughput
//! upgrade), above what the configuration says.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use hashbrown::HashMap;

/// The numbers whose tier changed since start, shared by routing, the
/// shards (a number met for the first time) and the departure gates.
#[derive(Debug, Default)]
pub struct LiveTiers {
    tiers: RwLock<HashMap<u64, u32>>,
    /// Grows with every change, so that holders of a copy can tell in one
    /// atomic load that theirs is still current.
    version: AtomicU64,
}

impl LiveTiers {
    /// The tier `phone` was changed to, if it was.
    pub fn get(&self, phone: u64) -> Option<u32> {
        self.tiers.read().unwrap_or_else(|e| e.into_inner()).get(&phone).copied()
    }

    /// Sets `phone`'s tier; returns whether that changed it.
    pub fn set(&self, phone: u64, mps: u32) -> bool {
        let previous = self.tiers.write().unwrap_or_else(|e| e.into_inner()).insert(phone, mps);
        let changed = previous != Some(mps);
        if changed {
            self.version.fetch_add(1, Ordering::Release);
        }
        changed
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
}
