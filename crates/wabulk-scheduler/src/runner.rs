//! Runs each [`Shard`] on its own task and routes commands to it by number.
//!
//! A shard task is the only owner of its shard, so no limiter state is ever
//! behind a lock. Commands reach it over an unbounded channel: what they
//! carry is bounded elsewhere, and a bound here could deadlock ([`Scheduler`]
//! says how). Batches of ready jobs leave it over a bounded channel, so a busy
//! send stage makes the shards wait instead of piling jobs up in front of it.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hashbrown::HashMap;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use wabulk_limits::{Clock, Moment};
use wabulk_model::{RetryReason, Scope};

use crate::config::SchedulerConfig;
use crate::shard::{Envelope, Ready, Shard, ThrottleCounts, Ticket};
use crate::waba::WabaRegistry;

/// Moments measured from a tokio instant, so that `#[tokio::test(start_paused
/// = true)]` drives the scheduler on virtual time.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> Self {
        Self { origin: tokio::time::Instant::now() }
    }

    pub fn instant(&self, moment: Moment) -> tokio::time::Instant {
        self.origin + Duration::from_nanos(moment.as_nanos())
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Moment {
        let nanos = self.origin.elapsed().as_nanos();
        Moment::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// What the engine tells the scheduler.
pub enum Command<J> {
    Enqueue(Envelope<J>),
    /// Sent or failed for good.
    Finish(Ticket),
    Retry {
        ticket: Ticket,
        job: J,
        scope: Scope,
        reason: RetryReason,
        after: Duration,
    },
    /// The WABA's token is invalid; keep the job and stop the WABA.
    Halt {
        ticket: Ticket,
        job: J,
    },
    /// A halted WABA was resumed in the registry; numbers may send again.
    Resume,
    /// The number's tier changed (a throughput upgrade): its limiter keeps
    /// its sends and applies `mps` from now on.
    SetTier {
        phone: u64,
        mps: u32,
    },
    /// Take the queued jobs `matching` selects out of every shard: each
    /// shard's batch goes to `to` (pairs in order), or is dropped without it
    /// (partitions revoked: their records are read again by the next owner).
    Purge {
        matching: Arc<dyn Fn(&J) -> bool + Send + Sync>,
        to: Option<mpsc::UnboundedSender<Vec<J>>>,
    },
}

impl<J> std::fmt::Debug for Command<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Command::Enqueue(_) => "Enqueue",
            Command::Finish(_) => "Finish",
            Command::Retry { .. } => "Retry",
            Command::Halt { .. } => "Halt",
            Command::Resume => "Resume",
            Command::SetTier { .. } => "SetTier",
            Command::Purge { .. } => "Purge",
        };
        f.write_str(name)
    }
}

/// Counters the shards publish after every round, read by the engine for
/// its metrics without talking to the shard tasks.
#[derive(Debug, Default)]
pub struct SchedulerStats {
    pub throttled_phone: AtomicU64,
    pub throttled_pair: AtomicU64,
    pub throttled_waba: AtomicU64,
    /// Jobs held (queued or in flight), per shard.
    held: Vec<AtomicUsize>,
    /// Numbers whose state is kept, per shard.
    numbers: Vec<AtomicUsize>,
    /// Each shard's numbers and their current limit, refreshed about once a
    /// second; replaced whole, so forgotten numbers leave. A std mutex: held
    /// for a map update, never across an await.
    effective_limits: Vec<Mutex<HashMap<u64, u32>>>,
}

impl SchedulerStats {
    /// Jobs held by all shards.
    pub fn held(&self) -> usize {
        self.held.iter().map(|h| h.load(Ordering::Relaxed)).sum()
    }

    /// Numbers whose state the shards keep (see [`Shard::numbers`]).
    pub fn numbers(&self) -> usize {
        self.numbers.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    /// (number, sends allowed per window now), for every number the shards keep.
    pub fn effective_limits(&self) -> Vec<(u64, u32)> {
        let mut all = Vec::new();
        for limits in &self.effective_limits {
            let limits = limits.lock().unwrap_or_else(|p| p.into_inner());
            all.extend(limits.iter().map(|(&phone, &limit)| (phone, limit)));
        }
        all
    }
}

/// The handle to the running shards.
/// Commands travel on unbounded channels: what is enqueued is bounded by
/// the Kafka backpressure (jobs in memory), and feedback by the requests in
/// flight. A bounded channel here could deadlock: the engine waiting to hand
/// a shard feedback while that shard waits to hand the engine ready jobs.
#[derive(Debug)]
pub struct Scheduler<J> {
    shards: Vec<mpsc::UnboundedSender<Command<J>>>,
    hasher: foldhash::fast::FixedState,
    stats: Arc<SchedulerStats>,
}

impl<J> Clone for Scheduler<J> {
    fn clone(&self) -> Self {
        Self { shards: self.shards.clone(), hasher: self.hasher, stats: Arc::clone(&self.stats) }
    }
}

/// The shard tasks are gone (the engine is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the scheduler has stopped")]
pub struct Stopped;

impl<J: Send + 'static> Scheduler<J> {
    /// Spawns `shards` shard tasks. Ready jobs leave on `out`, in batches.
    pub fn spawn(
        config: SchedulerConfig,
        wabas: Arc<WabaRegistry>,
        shards: usize,
        clock: TokioClock,
        out: mpsc::Sender<Vec<Ready<J>>>,
    ) -> (Self, Vec<JoinHandle<()>>) {
        let config = Arc::new(config);
        let shards = shards.max(1);
        let stats = Arc::new(SchedulerStats {
            held: (0..shards).map(|_| AtomicUsize::new(0)).collect(),
            numbers: (0..shards).map(|_| AtomicUsize::new(0)).collect(),
            effective_limits: (0..shards).map(|_| Mutex::default()).collect(),
            ..SchedulerStats::default()
        });
        let mut senders = Vec::with_capacity(shards);
        let mut tasks = Vec::with_capacity(shards);
        for index in 0..shards {
            let (tx, rx) = mpsc::unbounded_channel();
            let shard = Shard::new(Arc::clone(&config), Arc::clone(&wabas));
            let published = Published {
                stats: Arc::clone(&stats),
                index,
                last: ThrottleCounts::default(),
                limits_at: None,
                limits_numbers: 0,
            };
            // One shard looks after the registry; the others need not.
            let sweep = (index == 0)
                .then(|| WabaSweep { wabas: Arc::clone(&wabas), at: clock.now() + WABA_SWEEP_EVERY });
            tasks.push(tokio::spawn(run_shard(shard, clock, rx, out.clone(), published, sweep)));
            senders.push(tx);
        }
        // A fixed seed: instances need not agree on it, but one process must
        // route a number to one shard for its whole life.
        let hasher = foldhash::fast::FixedState::with_seed(0x5ab0);
        (Self { shards: senders, hasher, stats }, tasks)
    }

    pub fn stats(&self) -> &Arc<SchedulerStats> {
        &self.stats
    }

    pub fn shard_of(&self, phone: u64) -> usize {
        (self.hasher.hash_one(phone) % self.shards.len() as u64) as usize
    }

    pub fn send(&self, command: Command<J>) -> Result<(), Stopped> {
        let phone = match &command {
            Command::Enqueue(envelope) => envelope.phone,
            Command::SetTier { phone, .. } => *phone,
            Command::Finish(ticket) | Command::Retry { ticket, .. } | Command::Halt { ticket, .. } => {
                ticket.phone
            }
            Command::Resume => return self.broadcast(|| Command::Resume),
            Command::Purge { matching, to } => {
                return self.broadcast(|| Command::Purge { matching: Arc::clone(matching), to: to.clone() })
            }
        };
        self.shards[self.shard_of(phone)].send(command).map_err(|_| Stopped)
    }

    fn broadcast(&self, command: impl Fn() -> Command<J>) -> Result<(), Stopped> {
        self.shards.iter().try_for_each(|shard| shard.send(command()).map_err(|_| Stopped))
    }
}

/// A shard's slot in [`SchedulerStats`] and what it published last.
struct Published {
    stats: Arc<SchedulerStats>,
    index: usize,
    last: ThrottleCounts,
    /// When the effective limits were last copied out.
    limits_at: Option<Moment>,
    /// How many numbers they covered.
    limits_numbers: usize,
}

impl Published {
    /// When the effective limits must be copied out again even if the shard
    /// has nothing else to do: numbers were forgotten since the last copy,
    /// and an idle shard might not poll again for a long time.
    fn due<J>(&self, shard: &Shard<J>) -> Option<Moment> {
        let at = self.limits_at?;
        (shard.numbers() != self.limits_numbers).then(|| at + Duration::from_secs(1))
    }

    fn publish<J>(&mut self, shard: &Shard<J>, now: Moment) {
        if self.limits_at.is_none_or(|at| now >= at + Duration::from_secs(1)) {
            self.limits_at = Some(now);
            self.limits_numbers = shard.numbers();
            let mut limits =
                self.stats.effective_limits[self.index].lock().unwrap_or_else(|p| p.into_inner());
            limits.clear();
            limits.extend(shard.effective_limits(now));
        }
        let now = shard.throttled();
        self.stats.throttled_phone.fetch_add(now.phone - self.last.phone, Ordering::Relaxed);
        self.stats.throttled_pair.fetch_add(now.pair - self.last.pair, Ordering::Relaxed);
        self.stats.throttled_waba.fetch_add(now.waba - self.last.waba, Ordering::Relaxed);
        self.stats.held[self.index].store(shard.held(), Ordering::Relaxed);
        self.stats.numbers[self.index].store(shard.numbers(), Ordering::Relaxed);
        self.last = now;
    }
}

/// How often the registry drops the cells of WABAs nothing uses any more.
/// A cell can go only after an hour without a call, so a minute late costs
/// little, and a sweep looks at every WABA.
const WABA_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The registry's periodic [`WabaRegistry::sweep`], run by one shard task.
struct WabaSweep {
    wabas: Arc<WabaRegistry>,
    /// When the next sweep is due.
    at: Moment,
}

impl WabaSweep {
    fn run_if_due(&mut self, now: Moment) {
        if now >= self.at {
            self.wabas.sweep(now);
            self.at = now + WABA_SWEEP_EVERY;
        }
    }
}

async fn run_shard<J>(
    mut shard: Shard<J>,
    clock: TokioClock,
    mut commands: mpsc::UnboundedReceiver<Command<J>>,
    out: mpsc::Sender<Vec<Ready<J>>>,
    mut published: Published,
    mut sweep: Option<WabaSweep>,
) {
    let mut ready = Vec::new();
    loop {
        let wake = [shard.next_wake(clock.now()), published.due(&shard), sweep.as_ref().map(|s| s.at)]
            .into_iter()
            .flatten()
            .min();
        tokio::select! {
            biased;
            command = commands.recv() => match command {
                Some(command) => apply(&mut shard, command, clock.now()),
                None => return,
            },
            () = sleep_until(clock, wake) => {}
        }
        // Take every command already waiting before the next round: feedback
        // frees pairs, and admitting it first keeps the round's view current.
        while let Ok(command) = commands.try_recv() {
            apply(&mut shard, command, clock.now());
        }
        shard.poll(clock.now(), &mut ready);
        published.publish(&shard, clock.now());
        if let Some(sweep) = &mut sweep {
            sweep.run_if_due(clock.now());
        }
        if !ready.is_empty() && out.send(std::mem::take(&mut ready)).await.is_err() {
            return;
        }
    }
}

fn apply<J>(shard: &mut Shard<J>, command: Command<J>, now: Moment) {
    match command {
        Command::Enqueue(envelope) => shard.enqueue(envelope, now),
        Command::Finish(ticket) => shard.finish(ticket, now),
        Command::Retry { ticket, job, scope, reason, after } => {
            // A ticket of a purged pair: dropping the job leaves its record
            // to be read again by the partition's next owner.
            let _ = shard.retry(ticket, job, scope, reason, after, now);
        }
        Command::Halt { ticket, job } => shard.halt(ticket, job, now),
        Command::Resume => shard.wake_halted(),
        Command::SetTier { phone, mps } => shard.set_tier(phone, mps),
        Command::Purge { matching, to } => {
            let taken = shard.purge(matching.as_ref());
            if let Some(to) = to.filter(|_| !taken.is_empty()) {
                let _ = to.send(taken);
            }
        }
    }
}

async fn sleep_until(clock: TokioClock, wake: Option<Moment>) {
    match wake {
        Some(at) => tokio::time::sleep_until(clock.instant(at)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two shards on virtual time: every job comes out, each number within
    /// its tier, and a WABA pause from one number holds the other shard too.
    #[tokio::test(start_paused = true)]
    async fn shards_route_by_number_and_answer_feedback() {
        let wabas = Arc::new(WabaRegistry::new(1_000_000));
        let (out_tx, mut out) = mpsc::channel(64);
        let clock = TokioClock::new();
        let (scheduler, _tasks) =
            Scheduler::spawn(SchedulerConfig::default(), Arc::clone(&wabas), 2, clock, out_tx);
        let phones = [11u64, 12, 13, 14];
        assert!(phones.iter().any(|&p| scheduler.shard_of(p) == 0));
        assert!(phones.iter().any(|&p| scheduler.shard_of(p) == 1));
        for (i, &phone) in phones.iter().enumerate() {
            for recipient in 0..50u64 {
                let envelope = Envelope {
                    phone,
                    recipient: 4_400_000_000 + recipient,
                    waba: 7,
                    mps: 20,
                    not_before: None,
                    expires_at: None,
                    priority: Default::default(),
                    job: (i, recipient),
                };
                scheduler.send(Command::Enqueue(envelope)).unwrap();
            }
        }
        let mut sends: Vec<(u64, Moment)> = Vec::new();
        let mut retried_at = None;
        while sends.len() < 200 {
            let batch = out.recv().await.expect("shards are running");
            for output in batch {
                let Ready::Send(dispatch) = output else { panic!("no job here expires") };
                if retried_at.is_none() {
                    // The first answer is a WABA limit: everyone waits 30 s.
                    retried_at = Some(clock.now());
                    let command = Command::Retry {
                        ticket: dispatch.ticket,
                        job: dispatch.job,
                        scope: Scope::Waba,
                        reason: RetryReason::WabaLimit,
                        after: Duration::from_secs(30),
                    };
                    scheduler.send(command).unwrap();
                    continue;
                }
                sends.push((dispatch.ticket.phone, clock.now()));
                scheduler.send(Command::Finish(dispatch.ticket)).unwrap();
            }
        }
        for phone in phones {
            let times: Vec<Moment> = sends.iter().filter(|(p, _)| *p == phone).map(|(_, t)| *t).collect();
            assert_eq!(times.len(), 50);
            for (i, &t) in times.iter().enumerate() {
                let in_second = times[i..].iter().take_while(|&&u| u < t + Duration::from_secs(1)).count();
                assert!(in_second <= 20, "number {phone}: {in_second} in one second (tier 20)");
            }
        }
        // Sends already handed out in the same instant may go; nothing after it
        // until the pause ends, in either shard.
        let retried_at = retried_at.unwrap();
        let resumed = retried_at + Duration::from_secs(30);
        for (phone, t) in &sends {
            assert!(*t <= retried_at || *t >= resumed, "number {phone} sent at {t:?} during the WABA pause");
        }
        assert!(sends.iter().any(|(_, t)| *t >= resumed));
    }

    /// The tasks forget idle numbers on their own clock and sweep the
    /// registry, and the stats say how many numbers are kept.
    #[tokio::test(start_paused = true)]
    async fn idle_numbers_and_unknown_wabas_are_let_go() {
        let wabas = Arc::new(WabaRegistry::new(1_000_000));
        wabas.register(5, 1_000_000, 1);
        let (out_tx, mut out) = mpsc::channel(64);
        let clock = TokioClock::new();
        let (scheduler, _tasks) =
            Scheduler::spawn(SchedulerConfig::default(), Arc::clone(&wabas), 2, clock, out_tx);
        for phone in 0..8u64 {
            let envelope = Envelope {
                phone,
                recipient: 100,
                waba: 1_000 + phone,
                mps: 80,
                not_before: None,
                expires_at: None,
                priority: Default::default(),
                job: phone,
            };
            scheduler.send(Command::Enqueue(envelope)).unwrap();
        }
        let mut finished = 0;
        while finished < 8 {
            for output in out.recv().await.expect("shards are running") {
                let Ready::Send(dispatch) = output else { panic!("no job here expires") };
                scheduler.send(Command::Finish(dispatch.ticket)).unwrap();
                finished += 1;
            }
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!((scheduler.stats().numbers(), wabas.len()), (8, 9));
        assert_eq!(scheduler.stats().effective_limits().len(), 8);
        // An hour after the answers the numbers go; their WABAs at the next sweep.
        tokio::time::sleep(Duration::from_secs(3_600 + 60)).await;
        assert_eq!((scheduler.stats().numbers(), wabas.len()), (0, 1));
        assert!(scheduler.stats().effective_limits().is_empty());
    }
}
