//! WABA state shared by every shard: the rolling-hour call window, and the
//! halt flag raised when the WABA's token stops working.
//!
//! Cells of WABAs named only by jobs are dropped by [`WabaRegistry::sweep`]
//! once nothing depends on them, so that jobs naming ever new WABAs (a
//! producer's mistake) cost memory for an hour, not for ever: a window is
//! 144 kB.

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
    /// Set when Meta stopped the account (banned, restricted; announced by
    /// an account webhook): nothing is sent until another lifts it.
    held: AtomicBool,
    token_group: TokenGroup,
    /// Registered from the configuration: never dropped.
    configured: bool,
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

    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    /// Whether its numbers may send nothing: halted or held.
    pub fn is_stopped(&self) -> bool {
        self.is_halted() || self.is_held()
    }
}

/// Whether dropping `cell` loses nothing: it is not configured, no number
/// holds it (the registry's reference is the only one), it is not halted, and
/// its window has no call in the rolling hour and no pause running. A job
/// naming the WABA again then gets a new cell that decides exactly as this
/// one would have.
fn forgettable(cell: &Arc<WabaCell>, now: Moment) -> bool {
    if cell.configured || Arc::strong_count(cell) > 1 || cell.is_stopped() {
        return false;
    }
    let mut window = cell.window();
    // With no call counted, checking for none fails only on a pause.
    window.used(now) == 0 && window.check(now, 0).is_ok()
}

/// Every WABA the engine sends for, created from the configuration and, for
/// WABAs named only by jobs, on first use with the default cap (those are
/// dropped again by [`WabaRegistry::sweep`]).
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
            held: AtomicBool::new(false),
            token_group,
            configured: true,
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
                held: AtomicBool::new(false),
                token_group: TokenGroup::MAX,
                configured: false,
            })
        }))
    }

    /// A new hourly cap for `waba` (a configuration reload); its calls in
    /// the rolling hour still count.
    pub fn set_cap(&self, waba: u64, hourly_cap: u64) {
        if let Some(cell) = self.read().get(&waba) {
            cell.window().set_cap(hourly_cap);
        }
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

    /// Whether the WABA is halted (a WABA not met yet is not).
    pub fn is_halted(&self, waba: u64) -> bool {
        self.read().get(&waba).is_some_and(|cell| cell.is_halted())
    }

    pub fn is_held(&self, waba: u64) -> bool {
        self.read().get(&waba).is_some_and(|cell| cell.is_held())
    }

    /// Meta stopped the account: none of its numbers sends until
    /// [`WabaRegistry::release`]. Returns whether it was sending until now.
    pub fn hold(&self, waba: u64) -> bool {
        !self.get_or_insert(waba).held.swap(true, Ordering::AcqRel)
    }

    /// Lifts a hold; the shards must then be woken ([`crate::Command::Resume`]).
    /// Returns whether it was held.
    pub fn release(&self, waba: u64) -> bool {
        self.read().get(&waba).is_some_and(|cell| cell.held.swap(false, Ordering::AcqRel))
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

    /// When the WABA may make its next call, if not at `now` (its rolling
    /// hour is full, or an 80007 pause runs), with its hourly cap. A WABA
    /// not met yet has made no call.
    pub fn closed_until(&self, waba: u64, now: Moment) -> Option<(Moment, u64)> {
        let cell = self.read().get(&waba).map(Arc::clone)?;
        let mut window = cell.window();
        window.check(now, 1).err().map(|refusal| (refusal.0, window.cap()))
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

    /// Drops the cells of WABAs created by [`WabaRegistry::get_or_insert`]
    /// that nothing depends on any more (see `forgettable`); returns how many.
    /// Meant to run about once a minute: it looks at every cell, under the
    /// read lock, and takes the write lock only when there is one to drop.
    pub fn sweep(&self, now: Moment) -> usize {
        let idle: Vec<u64> =
            self.read().iter().filter(|(_, cell)| forgettable(cell, now)).map(|(&waba, _)| waba).collect();
        if idle.is_empty() {
            return 0;
        }
        let mut cells = self.write();
        let before = cells.len();
        for waba in idle {
            // A shard may have taken the cell in between: decide again under
            // the write lock, which `get_or_insert` needs to take one.
            if cells.get(&waba).is_some_and(|cell| forgettable(cell, now)) {
                cells.remove(&waba);
            }
        }
        // Give memory back after a wave of unknown WABAs, leaving room to double.
        if cells.len() < cells.capacity() / 4 {
            let len = cells.len();
            cells.shrink_to(len * 2);
        }
        before - cells.len()
    }

    /// WABAs with a cell: configured ones and those jobs named recently.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, Arc<WabaCell>>> {
        self.cells.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u64, Arc<WabaCell>>> {
        self.cells.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;

    fn ms(n: u64) -> Moment {
        Moment::from_millis(n)
    }

    #[test]
    fn a_cell_held_or_with_calls_in_its_hour_stays() {
        let wabas = WabaRegistry::new(1_000);
        let held = wabas.get_or_insert(9);
        assert_eq!(wabas.sweep(ms(10 * HOUR)), 0, "a number holds it");
        drop(held);
        wabas.get_or_insert(9).window().acquire_up_to(ms(10 * HOUR), 1);
        assert_eq!(wabas.sweep(ms(11 * HOUR)), 0, "its call is still in the hour");
        assert_eq!(wabas.sweep(ms(11 * HOUR + 100)), 1);
        assert!(wabas.is_empty());
    }

    #[test]
    fn a_paused_or_halted_cell_stays() {
        let wabas = WabaRegistry::new(1_000);
        wabas.get_or_insert(9).window().pause_until(ms(5 * HOUR));
        wabas.halt(10);
        assert_eq!(wabas.sweep(ms(5 * HOUR - 1)), 0, "9 is paused, 10 halted");
        assert_eq!(wabas.sweep(ms(5 * HOUR)), 1, "the pause is over");
        assert_eq!(wabas.sweep(ms(50 * HOUR)), 0, "10 waits for its resume");
        wabas.resume(10);
        assert_eq!(wabas.sweep(ms(50 * HOUR)), 1);
        assert_eq!(wabas.len(), 0);
    }

    #[test]
    fn a_configured_cell_never_goes() {
        let wabas = WabaRegistry::new(1_000);
        wabas.register(5, 1_000, 1);
        assert_eq!(wabas.sweep(ms(0)), 0);
        assert_eq!(wabas.sweep(ms(100 * HOUR)), 0);
        assert_eq!(wabas.token_group(5), Some(1));
        assert_eq!(wabas.len(), 1);
    }

    #[test]
    fn a_dropped_cell_comes_back_new() {
        let wabas = WabaRegistry::new(2);
        wabas.get_or_insert(9).window().acquire_up_to(ms(0), 2);
        assert!(wabas.get_or_insert(9).window().check(ms(1), 1).is_err(), "cap used");
        assert_eq!(wabas.sweep(ms(HOUR + 100)), 1);
        let cell = wabas.get_or_insert(9);
        let mut window = cell.window();
        assert_eq!((window.used(ms(HOUR + 100)), window.cap()), (0, 2));
        assert_eq!(window.check(ms(HOUR + 100), 2), Ok(()));
    }

    #[test]
    fn a_wabas_closed_until_is_its_full_hours_end_or_its_pause() {
        let wabas = WabaRegistry::new(2);
        assert_eq!(wabas.closed_until(9, ms(0)), None, "not met yet");
        wabas.get_or_insert(9).window().acquire_up_to(ms(1_000), 1);
        assert_eq!(wabas.closed_until(9, ms(2_000)), None, "room for one more");
        wabas.get_or_insert(9).window().acquire_up_to(ms(2_000), 1);
        let (opens, cap) = wabas.closed_until(9, ms(3_000)).expect("cap used");
        assert_eq!(cap, 2);
        assert!(opens > ms(HOUR) && opens <= ms(HOUR + 1_100), "the first call leaves the hour: {opens:?}");
        wabas.get_or_insert(9).window().pause_until(ms(5 * HOUR));
        assert_eq!(wabas.closed_until(9, ms(3 * HOUR)), Some((ms(5 * HOUR), 2)), "80007 pause");
    }
}
