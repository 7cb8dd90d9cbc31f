//! Backlog parking: no number or WABA holds more than its share of the
//! memory budget, so that a slow number (a low tier, a deep pair queue, a
//! WABA at its hourly cap) never stops the partition it shares with others.
//!
//! Each job in memory holds a [`Hold`] on its number's and its WABA's
//! [`Load`] (jobs and bytes), released when the job leaves (its `Pending`
//! dropped). A number is over its share when it holds more jobs than it
//! sends in `park_after` at its tier, or more than half of the budget in
//! bytes; a WABA, when its numbers together hold more than three quarters
//! of the budget. The new jobs of a number over its share, or of a WABA
//! over its share, are parked (`backlog`) until about when half of the
//! number's jobs in memory and those parked before them will have gone
//! (each one tier interval after the previous), and the offsets they held
//! are released: the parking topics hold the number's queue, which comes
//! back at about the rate it is sent, to a number that still has work. A
//! job coming back is admitted up to one and a half times the share.
//!
//! Pair order: a job parked for a backlog may come back after later jobs of
//! its pair were read. So, per number, the pairs with a job parked for a
//! backlog are remembered with its due time (one entry per pair, a few
//! bytes): a later job of such a pair is parked too, at least
//! [`PAIR_GAP`] after it, even when the number is under its share again;
//! a job coming back is admitted unless it is the pair's last parked one
//! and the number is still over its share (then it is parked again, behind
//! nothing of its pair). A pair's entry is forgotten [`RETURN_GRACE`] after
//! its due time. After a crash these entries are lost, so a pair's order
//! may then differ, as for any job sent again after a crash (CONTRACT §5).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// The parking reason of a job parked behind its number's backlog.
pub(super) const BACKLOG: &str = "backlog";

/// The parking reason of a job whose WABA may make no call for longer than
/// `park_after` (its rolling hour is full, or Meta paused it with 80007).
pub(super) const WABA_CAP: &str = "waba_cap";

/// How far apart the parked jobs of one pair are due: more than the
/// parking topics' lateness on a healthy cluster, so that they come back in
/// order, and no sooner than the pair could send them anyway (one message
/// per 6 s).
const PAIR_GAP: chrono::Duration = chrono::Duration::seconds(6);

/// How long after its due time a parked job is taken to have come back: the
/// parking topics' lateness, generously.
const RETURN_GRACE: chrono::Duration = chrono::Duration::seconds(10);

/// How far over its share a number may go with jobs coming back, as a
/// multiple of the share: parked jobs are due halfway through the jobs in
/// memory, so they come back to a number still holding about half its
/// share, and are admitted up to one and a half.
const RETURN_MARK: f64 = 1.5;

/// Look for forgotten pairs and idle numbers once per this many decisions.
const SWEEP_EVERY: u32 = 4096;

/// The next due time of `key`'s parked jobs (unix µs): no sooner than
/// `earliest_us`, and `interval_us` after the one before, so that they come
/// back one by one rather than all at once.
fn spaced(next_due: &mut HashMap<u64, i64>, key: u64, earliest_us: i64, interval_us: i64) -> i64 {
    let next = next_due.entry(key).or_default();
    let due_us = earliest_us.max(*next);
    *next = due_us.saturating_add(interval_us);
    due_us
}

/// Whether a parked job due at `due_ms` is not yet taken to be back at
/// `now_ms` (the parking topics' lateness, [`RETURN_GRACE`]).
fn not_back_yet(due_ms: i64, now_ms: i64) -> bool {
    due_ms + RETURN_GRACE.num_milliseconds() > now_ms
}

/// (jobs, bytes) held by `key`.
fn load(loads: &HashMap<u64, Arc<Load>>, key: u64) -> (usize, usize) {
    loads
        .get(&key)
        .map_or((0, 0), |load| (load.jobs.load(Ordering::Relaxed), load.bytes.load(Ordering::Relaxed)))
}

/// What one number, or one WABA, holds in memory.
#[derive(Debug, Default)]
pub(super) struct Load {
    jobs: AtomicUsize,
    bytes: AtomicUsize,
}

impl Load {
    fn add(&self, bytes: usize) {
        self.jobs.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn sub(&self, bytes: usize) {
        self.jobs.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// A job's share of its number's and its WABA's [`Load`], given back when
/// dropped.
#[derive(Debug)]
pub(super) struct Hold {
    number: Arc<Load>,
    waba: Arc<Load>,
    bytes: usize,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.number.sub(self.bytes);
        self.waba.sub(self.bytes);
    }
}

/// What to do with a job just read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    Admit,
    Park(DateTime<Utc>),
}

/// A job as the backlog sees it.
pub(super) struct Arrival {
    pub(super) phone: u64,
    pub(super) waba: u64,
    pub(super) recipient: u64,
    pub(super) mps: u32,
    /// The record's cost against the memory budget.
    pub(super) bytes: usize,
    /// When the job was parked for a backlog and came back: its due time
    /// (unix ms).
    pub(super) returned_due_ms: Option<i64>,
    /// A `high` job is never parked for its number's backlog (only behind
    /// a parked job of its pair): it must not wait for the bulk ahead.
    pub(super) urgent: bool,
    pub(super) now: DateTime<Utc>,
}

impl Arrival {
    pub(super) fn new(
        (phone, waba): (u64, u64),
        recipient: u64,
        mps: u32,
        bytes: usize,
        now: DateTime<Utc>,
    ) -> Self {
        Arrival { phone, waba, recipient, mps, bytes, returned_due_ms: None, urgent: false, now }
    }
}

/// The ingest stage's view of every number's and WABA's backlog.
pub(super) struct Backlogs {
    /// Per number. Only the ingest stage adds and looks up; holds update
    /// the loads.
    loads: HashMap<u64, Arc<Load>>,
    /// Per WABA, the same.
    waba_loads: HashMap<u64, Arc<Load>>,
    /// Per number, the pairs with a job parked for a backlog: recipient →
    /// the due time of its last one (unix ms).
    parked: HashMap<u64, HashMap<u64, i64>>,
    /// Per number, when its next job parked for a backlog is due (unix µs):
    /// one tier interval after the last one, so that parked jobs come back
    /// at about the rate the number sends them, not all at once.
    next_due: HashMap<u64, i64>,
    /// Per WABA, the same for jobs parked while it may make no call: one
    /// hourly cap's average interval after the last one.
    next_waba_due: HashMap<u64, i64>,
    park_after: Duration,
    share_bytes: usize,
    waba_share_bytes: usize,
    decisions: u32,
}

impl Backlogs {
    /// `park_after`: the longest wait a number's jobs in memory may add up
    /// to; `budget_bytes`: the instance's memory budget (a number may hold a
    /// half of it, a WABA three quarters: a high-tier number's few seconds
    /// of work fit, and no number or WABA takes all of it).
    pub(super) fn new(park_after: Duration, budget_bytes: usize) -> Self {
        Backlogs {
            loads: HashMap::new(),
            waba_loads: HashMap::new(),
            parked: HashMap::new(),
            next_due: HashMap::new(),
            next_waba_due: HashMap::new(),
            park_after,
            share_bytes: budget_bytes / 2,
            waba_share_bytes: budget_bytes / 4 * 3,
            decisions: 0,
        }
    }

    /// A hold on `phone`'s and `waba`'s loads for a job admitted to memory.
    pub(super) fn hold(&mut self, (phone, waba): (u64, u64), bytes: usize) -> Hold {
        let number = Arc::clone(self.loads.entry(phone).or_default());
        let waba = Arc::clone(self.waba_loads.entry(waba).or_default());
        number.add(bytes);
        waba.add(bytes);
        Hold { number, waba, bytes }
    }

    /// Whether the job is admitted to memory or parked, and until when.
    pub(super) fn decide(&mut self, arrival: &Arrival) -> Decision {
        self.decisions = self.decisions.wrapping_add(1);
        if self.decisions % SWEEP_EVERY == 0 {
            self.sweep(arrival.now);
        }
        let now_ms = arrival.now.timestamp_millis();
        let (jobs, bytes) = load(&self.loads, arrival.phone);
        let (_, waba_bytes) = load(&self.waba_loads, arrival.waba);
        // A job coming back is parked again only past half as much again:
        // it comes back while its number still has work in memory.
        let mark = if arrival.returned_due_ms.is_some() { RETURN_MARK } else { 1.0 };
        let over = jobs as f64 >= f64::from(arrival.mps.max(1)) * self.park_after.as_secs_f64() * mark
            || (bytes.saturating_add(arrival.bytes) as f64) > self.share_bytes as f64 * mark
            || (waba_bytes.saturating_add(arrival.bytes) as f64) > self.waba_share_bytes as f64 * mark;
        let pair_due = self.pair_due(arrival);
        let pair_waiting = pair_due.is_some_and(|due| not_back_yet(due, now_ms));
        let park = match arrival.returned_due_ms {
            // Coming back: parked again only behind nothing of its pair.
            Some(due) => over && pair_due.is_none_or(|last| last <= due),
            None => (over && !arrival.urgent) || pair_waiting,
        };
        if !park {
            return Decision::Admit;
        }
        // Halfway through the jobs in memory, and after those parked before
        // it: back while the number still has as much again to send, so
        // that a return a little late leaves it no idle second.
        let mps = f64::from(arrival.mps.max(1));
        let drain_us = (jobs as f64 / mps * 1e6 / 2.0).max(1e6) as i64;
        let earliest_us = arrival.now.timestamp_micros().saturating_add(drain_us);
        let due_us = spaced(&mut self.next_due, arrival.phone, earliest_us, (1e6 / mps) as i64);
        Decision::Park(self.behind_pair(arrival, due_us, pair_due.filter(|_| pair_waiting)))
    }

    /// When a job of a WABA that may make no call before `opens` is due:
    /// then, after the WABA's jobs parked before it (spaced at the average
    /// rate its hourly cap allows, so that they come back as fast as it can
    /// send them), and [`PAIR_GAP`] after a job of its pair parked before
    /// it. Its pair is remembered as for a backlog, so that the pair's later
    /// jobs wait behind it.
    pub(super) fn park_for_waba(
        &mut self,
        arrival: &Arrival,
        opens: DateTime<Utc>,
        hourly_cap: u64,
    ) -> DateTime<Utc> {
        let interval_us = (3_600e6 / hourly_cap.max(1) as f64) as i64;
        let due_us = spaced(&mut self.next_waba_due, arrival.waba, opens.timestamp_micros(), interval_us);
        let now_ms = arrival.now.timestamp_millis();
        let pair_waiting = self.pair_due(arrival).filter(|&due| not_back_yet(due, now_ms));
        self.behind_pair(arrival, due_us, pair_waiting)
    }

    /// When the last job of the arrival's pair parked for a backlog or a
    /// closed WABA is due (unix ms), if one is remembered.
    fn pair_due(&self, arrival: &Arrival) -> Option<i64> {
        self.parked.get(&arrival.phone).and_then(|pairs| pairs.get(&arrival.recipient)).copied()
    }

    /// The due time of a job parked at `due_us` (unix µs), at least
    /// [`PAIR_GAP`] after its pair's job still parked (`pair_waiting`, unix
    /// ms), remembered as its pair's last.
    fn behind_pair(&mut self, arrival: &Arrival, due_us: i64, pair_waiting: Option<i64>) -> DateTime<Utc> {
        let mut due = DateTime::<Utc>::from_timestamp_micros(due_us).unwrap_or(arrival.now);
        if let Some(last) = pair_waiting {
            due = due.max(DateTime::<Utc>::from_timestamp_millis(last).unwrap_or(due) + PAIR_GAP);
        }
        self.parked.entry(arrival.phone).or_default().insert(arrival.recipient, due.timestamp_millis());
        due
    }

    /// The WABAs with jobs in memory.
    pub(super) fn wabas_in_memory(&self) -> impl Iterator<Item = u64> + '_ {
        self.waba_loads
            .iter()
            .filter(|(_, load)| load.jobs.load(Ordering::Relaxed) > 0)
            .map(|(&waba, _)| waba)
    }

    /// Forgets pairs whose parked job is back, and numbers and WABAs holding
    /// nothing.
    fn sweep(&mut self, now: DateTime<Utc>) {
        let before = (now - RETURN_GRACE).timestamp_millis();
        self.parked.retain(|_, pairs| {
            pairs.retain(|_, due| *due > before);
            !pairs.is_empty()
        });
        self.next_due.retain(|_, due| *due > before.saturating_mul(1000));
        self.next_waba_due.retain(|_, due| *due > before.saturating_mul(1000));
        let held = |_: &u64, load: &mut Arc<Load>| Arc::strong_count(load) > 1;
        self.loads.retain(held);
        self.waba_loads.retain(held);
    }

    /// Pairs remembered, over all numbers (for tests and the debug log).
    #[cfg(test)]
    fn pairs(&self) -> usize {
        self.parked.values().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    /// A number at 10 msg/s with a 60 s horizon is over its share at 600
    /// jobs in memory; its next job waits until half of them have gone.
    #[test]
    fn a_number_over_its_share_parks_until_half_its_jobs_in_memory_have_gone() {
        let mut backlogs = Backlogs::new(Duration::from_secs(60), 1 << 30);
        let holds: Vec<Hold> = (0..599).map(|_| backlogs.hold((1, 100), 500)).collect();
        assert_eq!(backlogs.decide(&Arrival::new((1, 100), 7, 10, 500, at(0))), Decision::Admit);
        let mut holds = holds;
        holds.push(backlogs.hold((1, 100), 500));
        assert_eq!(backlogs.decide(&Arrival::new((1, 100), 8, 10, 500, at(0))), Decision::Park(at(30)));
        // Another number is not held back.
        assert_eq!(backlogs.decide(&Arrival::new((2, 100), 8, 10, 500, at(0))), Decision::Admit);
        // Under its share again, a new recipient is admitted, but recipient 8
        // waits behind its parked job, 6 s after it.
        holds.truncate(100);
        assert_eq!(backlogs.decide(&Arrival::new((1, 100), 9, 10, 500, at(1))), Decision::Admit);
        assert_eq!(backlogs.decide(&Arrival::new((1, 100), 8, 10, 500, at(1))), Decision::Park(at(36)));
    }

    /// A `high` job is admitted over its number's share, unless a job of its
    /// pair is parked: the pair's order comes first.
    #[test]
    fn an_urgent_job_passes_the_backlog_but_not_its_pair() {
        let mut backlogs = Backlogs::new(Duration::from_secs(60), 1 << 30);
        let _holds: Vec<Hold> = (0..600).map(|_| backlogs.hold((1, 100), 500)).collect();
        assert!(matches!(backlogs.decide(&Arrival::new((1, 100), 8, 10, 500, at(0))), Decision::Park(_)));
        let urgent =
            |recipient| Arrival { urgent: true, ..Arrival::new((1, 100), recipient, 10, 500, at(0)) };
        assert_eq!(backlogs.decide(&urgent(9)), Decision::Admit);
        assert!(matches!(backlogs.decide(&urgent(8)), Decision::Park(_)), "behind its pair's parked job");
    }

    /// Jobs parked one after another are due one tier interval apart: they
    /// come back at the rate the number sends, not all at once.
    #[test]
    fn parked_jobs_are_due_at_the_numbers_rate() {
        let mut backlogs = Backlogs::new(Duration::from_secs(1), 1 << 30);
        let _holds: Vec<Hold> = (0..20).map(|_| backlogs.hold((1, 100), 500)).collect();
        let dues: Vec<_> = (0..5)
            .map(|recipient| match backlogs.decide(&Arrival::new((1, 100), recipient, 20, 500, at(0))) {
                Decision::Park(due) => due,
                Decision::Admit => panic!("admitted over its share"),
            })
            .collect();
        let expected: Vec<_> = (0..5).map(|k| at(1) + chrono::Duration::milliseconds(50 * k)).collect();
        assert_eq!(dues, expected);
    }

    /// Jobs of a WABA that may make no call before `opens` are due from then
    /// on, one average interval of its hourly cap apart, whatever their
    /// number; a later job of a pair waits [`PAIR_GAP`] behind the pair's,
    /// and under its share again, a new job of that pair is parked too.
    #[test]
    fn a_closed_wabas_jobs_are_due_from_its_opening_at_its_caps_rate() {
        let mut backlogs = Backlogs::new(Duration::from_secs(60), 1 << 30);
        let opens = at(600);
        let due = |backlogs: &mut Backlogs, phone, recipient| {
            backlogs.park_for_waba(&Arrival::new((phone, 100), recipient, 80, 500, at(0)), opens, 3_600)
        };
        assert_eq!(due(&mut backlogs, 1, 7), at(600));
        assert_eq!(due(&mut backlogs, 2, 8), at(601), "another number of the WABA, one second later");
        assert_eq!(due(&mut backlogs, 1, 7), at(606), "6 s behind its pair's job");
        assert_eq!(due(&mut backlogs, 1, 9), at(603));
        assert_eq!(
            backlogs.decide(&Arrival::new((1, 100), 7, 80, 500, at(1))),
            Decision::Park(at(612)),
            "the pair's next job waits behind its parked ones"
        );
        assert_eq!(backlogs.decide(&Arrival::new((1, 100), 10, 80, 500, at(1))), Decision::Admit);
    }

    /// A job coming back is admitted up to one and a half times its
    /// number's share, a new one only up to the share.
    #[test]
    fn a_job_coming_back_is_admitted_up_to_half_as_much_again() {
        let mut backlogs = Backlogs::new(Duration::from_secs(1), 1 << 30);
        let _holds: Vec<Hold> = (0..12).map(|_| backlogs.hold((1, 100), 500)).collect();
        assert!(matches!(backlogs.decide(&Arrival::new((1, 100), 7, 10, 500, at(0))), Decision::Park(_)));
        let back = Arrival {
            returned_due_ms: Some(at(0).timestamp_millis()),
            ..Arrival::new((1, 100), 8, 10, 500, at(0))
        };
        assert_eq!(backlogs.decide(&back), Decision::Admit);
        let _more: Vec<Hold> = (0..3).map(|_| backlogs.hold((1, 100), 500)).collect();
        assert!(matches!(backlogs.decide(&back), Decision::Park(_)));
    }

    /// The bytes share: half of the budget, whatever the tier.
    #[test]
    fn a_number_holding_half_of_the_budget_parks() {
        let mut backlogs = Backlogs::new(Duration::from_secs(600), 400_000);
        let _holds: Vec<Hold> = (0..199).map(|_| backlogs.hold((1, 100), 1_000)).collect();
        assert_eq!(backlogs.decide(&Arrival::new((1, 100), 7, 1000, 1_000, at(0))), Decision::Admit);
        let _more = backlogs.hold((1, 100), 1_000);
        assert!(matches!(backlogs.decide(&Arrival::new((1, 100), 8, 1000, 1_000, at(0))), Decision::Park(_)));
    }

    /// A WABA whose numbers together hold three quarters of the budget parks
    /// the jobs of each, though none is over its own share; another WABA's
    /// are not.
    #[test]
    fn a_waba_holding_three_quarters_of_the_budget_parks() {
        let mut backlogs = Backlogs::new(Duration::from_secs(600), 400_000);
        let _holds: Vec<Hold> = (0..299).map(|n| backlogs.hold((n % 4, 100), 1_000)).collect();
        assert_eq!(backlogs.decide(&Arrival::new((0, 100), 7, 1000, 1_000, at(0))), Decision::Admit);
        let _more = backlogs.hold((0, 100), 1_000);
        assert!(matches!(backlogs.decide(&Arrival::new((1, 100), 8, 1000, 1_000, at(0))), Decision::Park(_)));
        assert_eq!(backlogs.decide(&Arrival::new((5, 200), 8, 1000, 1_000, at(0))), Decision::Admit);
    }

    /// A job coming back is admitted while a later job of its pair is
    /// parked (order), and parked again when it is the pair's last and its
    /// number is still over its share.
    #[test]
    fn a_job_coming_back_keeps_its_pair_in_order() {
        let mut backlogs = Backlogs::new(Duration::from_secs(1), 1 << 30);
        let holds: Vec<Hold> = (0..20).map(|_| backlogs.hold((1, 100), 500)).collect();
        let Decision::Park(first) = backlogs.decide(&Arrival::new((1, 100), 7, 10, 500, at(0))) else {
            panic!()
        };
        let Decision::Park(second) = backlogs.decide(&Arrival::new((1, 100), 7, 10, 500, at(0))) else {
            panic!()
        };
        assert_eq!(second, first + PAIR_GAP);
        let back = |due: DateTime<Utc>| Arrival {
            returned_due_ms: Some(due.timestamp_millis()),
            ..Arrival::new((1, 100), 7, 10, 500, due)
        };
        assert_eq!(backlogs.decide(&back(first)), Decision::Admit, "its pair's later job is parked");
        assert!(matches!(backlogs.decide(&back(second)), Decision::Park(due) if due > second));
        drop(holds);
        assert_eq!(backlogs.pairs(), 1);
    }

    /// Pairs are forgotten once their parked job is back, and idle numbers
    /// with them.
    #[test]
    fn the_sweep_forgets_pairs_back_and_idle_numbers() {
        let mut backlogs = Backlogs::new(Duration::from_secs(1), 1 << 30);
        let holds: Vec<Hold> = (0..10).map(|_| backlogs.hold((1, 100), 500)).collect();
        for recipient in 0..100 {
            backlogs.decide(&Arrival::new((1, 100), recipient, 10, 500, at(0)));
        }
        assert_eq!(backlogs.pairs(), 100);
        drop(holds);
        backlogs.sweep(at(5));
        assert_eq!(backlogs.pairs(), 100, "not back yet");
        backlogs.sweep(at(60));
        let sizes =
            (backlogs.pairs(), backlogs.loads.len(), backlogs.waba_loads.len(), backlogs.next_due.len());
        assert_eq!(sizes, (0, 0, 0, 0));
    }
}
