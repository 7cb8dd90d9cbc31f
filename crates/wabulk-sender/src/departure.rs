//! A number's tier kept where its requests leave, not only where they are
//! decided: [`DepartureGate`], widened by the host's [`SchedulingDelay`].
//!
//! The scheduler paces each number exactly at the moment it decides a send,
//! but a decided send still crosses a channel, a task spawn and the pool
//! before its frames are written, and the frames cross the connection's task
//! and the socket before the server reads them. On a busy host any of those
//! hops can stall for a few milliseconds; the sends that queue behind the
//! stall then move together, decisions 1.01 s apart arrive less than 1 s
//! apart, and Meta answers 130429.
//!
//! Two measures, one for each side of the stream:
//! * the gate checks the exact window (at most `mps` in any window) again on
//!   the instant a request takes its HTTP/2 stream, and records it
//!   then, so what was bunched before the pool is spread again;
//! * what happens after the stream cannot be seen, only bounded: a request
//!   can be held back there by at most about as long as this runtime's
//!   timers are late. [`SchedulingDelay`] measures that lateness and sets the
//!   [`WindowAllowance`] to twice the peak of the last half minute; the gates
//!   and the scheduler (so that decisions slow down with departures and
//!   nothing queues at the gate) widen every window by it. On an idle host
//!   running the demo the peak is a few milliseconds and costs under 1 % of
//!   the tier; under a CPU hog it grows to tens of milliseconds and the
//!   numbers slow down by that much instead of being throttled by Meta.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;
use wabulk_limits::{DepartureWindow, Moment, NotUntil, WindowAllowance};

/// How often the scheduling-delay probe wakes up.
const PROBE_EVERY: Duration = Duration::from_millis(10);
/// How fast a peak of the scheduling delay is forgotten. Stalls on a loaded
/// host recur many times a second and keep the peak up; a single spike (a
/// start-up, a burst of writes) costs a few seconds of a slightly wider
/// window, not the rest of the run.
const PEAK_HALF_LIFE: Duration = Duration::from_secs(5);
/// The most the window is widened (a fifth of the tier): past this a host
/// is too starved to keep any tier, and slowing every number further would
/// not help. 100 ms was not enough on two cores at a load of 9 (runnable
/// threads waited longer than that for a CPU, and a 20/s number broke its
/// tier in 2 README demos of 20).
const MAX_ALLOWANCE: Duration = Duration::from_millis(250);

/// How late this runtime runs a task that is due: a peak that decays with a
/// half-life of [`PEAK_HALF_LIFE`], measured by a task that sleeps
/// [`PROBE_EVERY`] and notes how late it wakes. Each measurement sets the
/// allowance.
#[derive(Debug)]
pub struct SchedulingDelay {
    peak_ns: AtomicU64,
    allowance: Arc<WindowAllowance>,
}

impl SchedulingDelay {
    /// Starts the probe on the current Tokio runtime; it keeps `allowance`
    /// at twice the peak (a request's way out and the server's way in can
    /// each be held that long), capped at [`MAX_ALLOWANCE`]. It stops when
    /// the last handle is dropped.
    pub fn start(allowance: Arc<WindowAllowance>) -> Arc<SchedulingDelay> {
        let delay = Arc::new(SchedulingDelay { peak_ns: AtomicU64::new(0), allowance });
        tokio::spawn(probe(Arc::downgrade(&delay)));
        delay
    }

    /// The decaying peak of the lateness.
    pub fn peak(&self) -> Duration {
        Duration::from_nanos(self.peak_ns.load(Ordering::Relaxed))
    }

    fn set_peak(&self, peak: Duration) {
        self.peak_ns.store(nanos(peak), Ordering::Relaxed);
        self.allowance.set(allowance_for(peak));
    }
}

fn allowance_for(peak: Duration) -> Duration {
    (peak * 2).min(MAX_ALLOWANCE)
}

async fn probe(delay: Weak<SchedulingDelay>) {
    let mut peak = DecayingPeak::default();
    let mut due = Instant::now() + PROBE_EVERY;
    loop {
        tokio::time::sleep_until(due).await;
        let now = Instant::now();
        let Some(delay) = delay.upgrade() else { return };
        delay.set_peak(peak.record(PROBE_EVERY, now.saturating_duration_since(due)));
        due = now + PROBE_EVERY;
    }
}

/// The largest sample seen, halved every [`PEAK_HALF_LIFE`] since.
#[derive(Debug, Default)]
struct DecayingPeak {
    peak: Duration,
}

impl DecayingPeak {
    /// Adds a sample taken `since` after the previous one; returns the peak.
    fn record(&mut self, since: Duration, sample: Duration) -> Duration {
        let decay = 0.5f64.powf(since.as_secs_f64() / PEAK_HALF_LIFE.as_secs_f64());
        self.peak = self.peak.mul_f64(decay).max(sample);
        self.peak
    }
}

/// One number's departures. Shared by that number's request tasks.
#[derive(Debug)]
pub struct DepartureGate {
    window: Mutex<DepartureWindow>,
    /// 1 s stretched by the margin, as the scheduler's window.
    base_window: Duration,
    allowance: Arc<WindowAllowance>,
    origin: Instant,
    /// Requests that had to wait at the gate.
    held: AtomicU64,
}

impl DepartureGate {
    /// At most `mps` departures in any window of 1 s stretched by
    /// `margin_percent` (clamped to 0..=50, as the scheduler does) and
    /// widened by `allowance`.
    pub fn new(mps: u32, margin_percent: f64, allowance: Arc<WindowAllowance>) -> Self {
        let margin = if margin_percent.is_nan() { 0.0 } else { margin_percent.clamp(0.0, 50.0) };
        DepartureGate {
            window: Mutex::new(DepartureWindow::new(mps)),
            base_window: Duration::from_secs_f64(1.0 + margin / 100.0),
            allowance,
            origin: Instant::now(),
            held: AtomicU64::new(0),
        }
    }

    /// Returns once a departure fits the window, and records it at that
    /// instant. The check and the record are one step under the lock, so two
    /// requests never take the same slot.
    pub(crate) async fn pass(&self) {
        let mut waited = false;
        loop {
            let now = Moment::from_nanos(nanos(self.origin.elapsed()));
            let window = self.base_window + self.allowance.get();
            let refusal = self.window.lock().unwrap_or_else(|e| e.into_inner()).depart(now, window);
            match refusal {
                Ok(()) => break,
                Err(NotUntil(at)) => {
                    waited = true;
                    tokio::time::sleep_until(self.origin + at.saturating_since(Moment::ZERO)).await;
                }
            }
        }
        if waited {
            self.held.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Changes the tier from the next departure on (a throughput upgrade).
    pub fn set_limit(&self, mps: u32) {
        self.window.lock().unwrap_or_else(|e| e.into_inner()).set_limit(mps);
    }

    /// Requests held at the gate since it was made.
    pub fn held_total(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn departures(gate: &Arc<DepartureGate>, n: usize) -> tokio::task::JoinSet<Instant> {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..n {
            let gate = Arc::clone(gate);
            tasks.spawn(async move {
                gate.pass().await;
                Instant::now()
            });
        }
        tasks
    }

    /// 200 requests released at once through a 20/s gate, on paused time: no
    /// window of 1.01 s plus the allowance ever holds more than 20, and no
    /// slot is wasted (the 21st leaves exactly one widened window after the first).
    #[tokio::test(start_paused = true)]
    async fn bunched_requests_leave_within_the_widened_window() {
        let allowance = Arc::new(WindowAllowance::default());
        allowance.set(Duration::from_millis(10));
        let gate = Arc::new(DepartureGate::new(20, 1.0, allowance));
        let start = Instant::now();
        let mut departed: Vec<Duration> =
            departures(&gate, 200).join_all().await.into_iter().map(|t| t - start).collect();
        departed.sort();
        let window = Duration::from_millis(1010 + 10);
        for (i, &t) in departed.iter().enumerate() {
            let in_window = departed[i..].iter().take_while(|&&u| u < t + window).count();
            assert!(in_window <= 20, "{in_window} departures in the window from {t:?}");
        }
        assert_eq!(departed[19], Duration::ZERO);
        assert_eq!(departed[20], window);
        assert_eq!(departed[199], window * 9);
        assert_eq!(gate.held_total(), 180);
    }

    #[tokio::test(start_paused = true)]
    async fn paced_requests_are_not_held() {
        let gate = DepartureGate::new(80, 1.0, Arc::default());
        for _ in 0..400 {
            gate.pass().await;
            tokio::time::sleep(Duration::from_micros(1_010_000 / 80 + 1)).await;
        }
        assert_eq!(gate.held_total(), 0);
    }

    #[test]
    fn the_allowance_is_twice_the_peak_and_capped() {
        assert_eq!(allowance_for(Duration::from_millis(3)), Duration::from_millis(6));
        assert_eq!(allowance_for(Duration::from_secs(1)), MAX_ALLOWANCE);
    }

    #[test]
    fn a_peak_is_kept_by_recurring_stalls_and_halves_every_half_life() {
        let mut peak = DecayingPeak::default();
        let ms = Duration::from_millis;
        assert_eq!(peak.record(PROBE_EVERY, ms(20)), ms(20));
        assert_eq!(peak.record(PROBE_EVERY, ms(20)), ms(20), "a recurring stall keeps it");
        let halved = peak.record(PEAK_HALF_LIFE, ms(1));
        assert!(halved.abs_diff(ms(10)) < Duration::from_micros(1), "{halved:?}");
        let later = peak.record(PEAK_HALF_LIFE * 4, Duration::ZERO);
        assert!(later.abs_diff(ms(10) / 16) < Duration::from_micros(1), "{later:?}");
        assert_eq!(peak.record(PROBE_EVERY, ms(7)), ms(7), "a larger sample wins at once");
    }
}
