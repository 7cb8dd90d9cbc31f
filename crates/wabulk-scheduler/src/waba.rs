//! WABA state shared by every shard: the rolling-hour call window, and the
//! halt flag raised when the WABA's token stops working.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use hashbrown::HashMap;
use wabulk_limits::{Moment, WabaWindow};

/// WABAs that share an access token; error 4/17 pauses the whole group.
pub type TokenGroup = u32;

#[derive(Debug)]
pub struct WabaCell {
    /// Calls in the rolling hour. A std mutex: it is held for one batch of
    /// admission decisions, never across an await.
    window: Mutex<WabaWindow>,
    /// Set when the token is invalid (190 and friends): nothing is sent until
    /// an operator fixes the token and the WABA is resumed.
    halted: AtomicBool,
    token_group: TokenGroup,
}

impl WabaCell {
    pub fn window(&self) -> std::sync::MutexGuard<'_, WabaWindow> {
        // A panic while holding the lock cannot leave the window half-updated
        // in a way that breaks the cap, so a poisoned lock is still usable.
        self.window.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn is_halted(&self) -> bool {
        self.halted.load(Ordering::Acquire)
    }
}

/// Every WABA the engine sends for, created from the configuration and, for
/// WABAs named only by jobs, on first use with the default cap.
#[derive(Debug)]
pub struct WabaRegistry {
    cells: RwLock<HashMap<u64, Arc<WabaCell>>>,
    /// Cap of a WABA that is not configured: the per-number figure for one
    /// registered number.
    default_cap: u64,
}

impl WabaRegistry {
    pub fn new(default_cap: u64) -> Self {
        Self { cells: RwLock::new(HashMap::new()), default_cap }
    }

    pub fn register(&self, waba: u64, hourly_cap: u64, token_group: TokenGroup) {
        let cell = Arc::new(WabaCell {
            window: Mutex::new(WabaWindow::new(hourly_cap)),
            halted: AtomicBool::new(false),
            token_group,
        });
        self.write().insert(waba, cell);
    }

    pub fn get_or_insert(&self, waba: u64) -> Arc<WabaCell> {
        if let Some(cell) = self.read().get(&waba) {
            return Arc::clone(cell);
        }
        let default_cap = self.default_cap;
        Arc::clone(self.write().entry(waba).or_insert_with(|| {
            Arc::new(WabaCell {
                window: Mutex::new(WabaWindow::new(default_cap)),
                halted: AtomicBool::new(false),
                token_group: TokenGroup::MAX,
            })
        }))
    }

    /// Error 4 or 17: every WABA using the same token waits until `until`.
    pub fn pause_token_group(&self, group: TokenGroup, until: Moment) {
        for cell in self.read().values().filter(|cell| cell.token_group == group) {
            cell.window().pause_until(until);
        }
    }

    pub fn token_group(&self, waba: u64) -> Option<TokenGroup> {
        self.read().get(&waba).map(|cell| cell.token_group)
    }

    pub fn halt(&self, waba: u64) {
        self.get_or_insert(waba).halted.store(true, Ordering::Release);
    }

    /// Clears a halt; the shards must then be woken ([`crate::Command::Resume`]).
    pub fn resume(&self, waba: u64) {
        if let Some(cell) = self.read().get(&waba) {
            cell.halted.store(false, Ordering::Release);
        }
    }

    /// Calls in each WABA's rolling hour, for the `wabulk_waba_hourly_calls` gauge.
    pub fn usage(&self, now: Moment) -> Vec<(u64, u64, u64)> {
        self.read()
            .iter()
            .map(|(&waba, cell)| {
                let mut window = cell.window();
                (waba, window.used(now), window.cap())
            })
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, Arc<WabaCell>>> {
        self.cells.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u64, Arc<WabaCell>>> {
        self.cells.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
