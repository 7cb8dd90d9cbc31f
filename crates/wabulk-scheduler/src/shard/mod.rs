//! One shard: the queues, timers and limiter state of the business numbers
//! hashed to it, driven with an explicit `now`.
//!
//! Per number there is a FIFO of *recipients* whose next job may go now
//! (`ready`, one per priority lane: a pair sits in the lane of its head job,
//! and a round serves `high` before `normal` before `bulk`), and per
//! recipient a FIFO of that pair's jobs. A pair that must
//! wait (pair budget, `not_before`, backoff) leaves `ready` and sits on the
//! timer heap with its jobs behind it, so other recipients of the number are
//! never held up by it. A pair has at most one request in flight, which is
//! what keeps its jobs in the order they were read even across retries.
//!
//! A number that holds no job is forgotten once its state can no longer
//! change a decision ([`forget_after`]), so that a stream of jobs for ever new
//! numbers does not grow the shard without bound. It comes back as a number
//! new to the shard, which is the conservative start.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use hashbrown::HashMap;
use wabulk_limits::{Moment, NotUntil, NumberLimiter, PairBudgets, PairRule};
use wabulk_model::{Priority, RetryReason, Scope};

use crate::config::SchedulerConfig;
use crate::waba::{WabaCell, WabaRegistry};

/// A job as the scheduler sees it: where it goes, when it may go, and the
/// caller's payload, which the scheduler never looks into.
#[derive(Debug, Clone)]
pub struct Envelope<J> {
    pub phone: u64,
    pub recipient: u64,
    pub waba: u64,
    /// Tier of the number; read when the shard first meets the number.
    pub mps: u32,
    pub not_before: Option<Moment>,
    pub expires_at: Option<Moment>,
    /// The lane its pair waits in while it is the pair's head.
    pub priority: Priority,
    pub job: J,
}

/// Names the one in-flight request of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket {
    pub phone: u64,
    pub recipient: u64,
}

/// A job to send now. Its payload travels with it; report back with
/// [`Shard::finish`], [`Shard::retry`] or [`Shard::halt`] using the ticket.
#[derive(Debug)]
pub struct Dispatch<J> {
    pub ticket: Ticket,
    pub waba: u64,
    pub job: J,
    /// 1 for the first request of this job.
    pub attempt: u32,
    /// Time since the job entered the scheduler.
    pub queued: Duration,
}

#[derive(Debug)]
pub enum Ready<J> {
    Send(Dispatch<J>),
    /// `expires_at` passed before the job could be sent; it left the queue.
    Expired {
        ticket: Ticket,
        job: J,
        attempts: u32,
    },
}

struct Entry<J> {
    job: J,
    not_before: Option<Moment>,
    expires_at: Option<Moment>,
    enqueued_at: Moment,
    /// Requests already made for this job.
    attempts: u32,
    priority: Priority,
}

/// What the entry keeps while its job is out with the sender.
struct InFlight {
    not_before: Option<Moment>,
    expires_at: Option<Moment>,
    enqueued_at: Moment,
    attempts: u32,
    priority: Priority,
    /// When it left the shard.
    sent_at: Moment,
}

impl InFlight {
    /// The queue entry again, for a job that came back to be retried.
    fn back<J>(self, job: J) -> Entry<J> {
        let InFlight { not_before, expires_at, enqueued_at, attempts, priority, sent_at: _ } = self;
        Entry { job, not_before, expires_at, enqueued_at, attempts, priority }
    }
}

/// A number's ready pairs, one FIFO per priority lane.
#[derive(Default)]
struct Lanes([VecDeque<u64>; 3]);

impl Lanes {
    fn push(&mut self, priority: Priority, recipient: u64) {
        self.0[priority.lane()].push_back(recipient);
    }

    /// The pair to serve next: the oldest of the first lane that has one.
    fn front(&self) -> Option<(usize, u64)> {
        self.0.iter().enumerate().find_map(|(lane, pairs)| pairs.front().map(|&r| (lane, r)))
    }

    fn pop(&mut self, lane: usize) {
        self.0[lane].pop_front();
    }

    fn retain(&mut self, mut keep: impl FnMut(&u64) -> bool) {
        for lane in &mut self.0 {
            lane.retain(&mut keep);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(VecDeque::is_empty)
    }

    /// In serving order.
    fn iter(&self) -> impl Iterator<Item = &u64> {
        self.0.iter().flatten()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// In the number's `ready` list.
    Ready,
    /// On the timer heap until this instant.
    Waiting(Moment),
    /// The head job is out with the sender.
    InFlight,
}

struct PairQueue<J> {
    jobs: VecDeque<Entry<J>>,
    stage: Stage,
    in_flight: Option<InFlight>,
    /// Backoff or penalty: the head may not go before this, whatever the
    /// pair budget says.
    hold_until: Option<Moment>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Activity {
    /// Nothing ready.
    Idle,
    /// In the shard's `active` list.
    Active,
    /// Has ready pairs but its limiter or WABA says not before this instant.
    Blocked(Moment),
    /// Its WABA's token is invalid; woken by [`Shard::wake_halted`].
    Halted,
}

struct NumberState<J> {
    /// Messages/s of this number, paced with the configured margin.
    limiter: NumberLimiter,
    /// The pair rule's state for every recipient that still carries debt.
    pairs: PairBudgets,
    waba_id: u64,
    /// Shared with the other shards that send for this WABA.
    waba: Arc<WabaCell>,
    /// Recipients with jobs queued or in flight; empty queues are removed.
    queues: HashMap<u64, PairQueue<J>>,
    /// Recipients whose head job may go now, by lane, each in the order
    /// they became ready.
    ready: Lanes,
    activity: Activity,
    /// The last send, answer or retry: what forgetting the number is measured
    /// from. Only sends and retries change the limiter and the pair budgets,
    /// and a send has reached Meta, if ever, by the time it is answered.
    last_used: Moment,
    /// When the pending [`TimerKey::Forget`] is due: at most one per number.
    forget_at: Option<Moment>,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Pair {
        phone: u64,
        recipient: u64,
    },
    Number {
        phone: u64,
    },
    /// The number held nothing: see whether it can be forgotten.
    Forget {
        phone: u64,
    },
}

/// The longest 131056 penalty, 4^5 s (`PairBudgets::penalise`).
const LONGEST_PAIR_PENALTY: Duration = Duration::from_secs(1024);

/// How long after its last use (send, answer or retry) a number that holds no
/// job is forgotten. By then nothing of its state can matter any more, since a
/// number that comes back starts as a new one (nothing for 1 s, no burst
/// credit), which is stricter than any old state that has run out:
/// - a pair's debt ends at most `burst` debts after its last send, a penalty
///   at most 1024 s after the retry, and the penalty's exponent is forgotten
///   one debt after that;
/// - the number's window (1 s stretched by the margin and the scheduling
///   allowance, itself at most 250 ms) and its pacing debt are gone within a
///   minute;
/// - pauses and slow-downs can run for any length: they are checked when the
///   number is about to be forgotten, not bounded here.
///
/// And never under an hour: a number costs a few hundred bytes, the WABA
/// window it holds cannot be dropped before its hour is empty anyway, and a
/// returning number loses its first second, which an hour makes rare.
fn forget_after(rule: PairRule) -> Duration {
    let debt = rule.interval + rule.margin;
    let pairs = (debt * rule.burst).max(LONGEST_PAIR_PENALTY) + debt;
    (pairs + Duration::from_secs(60)).max(Duration::from_secs(3600))
}

/// What a number's dispatch round ended with.
enum RoundEnd {
    Drained,
    BatchFull,
    Blocked(Moment),
    Halted,
}

/// How often each limit held work back, for `wabulk_throttled_total`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThrottleCounts {
    /// A number's round ended on its throughput limit (or a pause).
    pub phone: u64,
    /// A pair's next job had to wait for the pair budget.
    pub pair: u64,
    /// A number's round ended on its WABA's hourly cap (or a pause).
    pub waba: u64,
}

pub struct Shard<J> {
    config: Arc<SchedulerConfig>,
    wabas: Arc<WabaRegistry>,
    numbers: HashMap<u64, NumberState<J>>,
    /// Numbers with ready pairs that are not blocked, served round robin.
    active: VecDeque<u64>,
    /// Pair waits, number blocks and looks at forgetting idle numbers.
    /// Entries are not removed when they become stale; a popped timer is
    /// checked against the state it names.
    timers: BinaryHeap<Reverse<(Moment, TimerKey)>>,
    /// Jobs held: queued plus in flight.
    held: usize,
    throttled: ThrottleCounts,
    /// [`forget_after`] of the configured pair rule.
    forget_after: Duration,
}

impl<J> std::fmt::Debug for Shard<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("numbers", &self.numbers.len())
            .field("active", &self.active.len())
            .field("timers", &self.timers.len())
            .field("held", &self.held)
            .finish()
    }
}

impl<J> Shard<J> {
    pub fn new(config: Arc<SchedulerConfig>, wabas: Arc<WabaRegistry>) -> Self {
        Self {
            forget_after: forget_after(config.pair_rule),
            config,
            wabas,
            numbers: HashMap::new(),
            active: VecDeque::new(),
            timers: BinaryHeap::new(),
            held: 0,
            throttled: ThrottleCounts::default(),
        }
    }

    /// Numbers whose state the shard keeps: those holding jobs and those that
    /// did recently (see [`forget_after`]).
    pub fn numbers(&self) -> usize {
        self.numbers.len()
    }

    pub fn throttled(&self) -> ThrottleCounts {
        self.throttled
    }

    /// Each number's sends allowed per window at `now`: its tier, or less
    /// while slowed down after a 130429.
    pub fn effective_limits(&self, now: Moment) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.numbers.iter().map(move |(&phone, number)| (phone, number.limiter.effective_limit(now)))
    }

    /// Takes every queued job (not those in flight) for which `take` is true,
    /// e.g. the jobs of partitions this instance no longer owns (dropped:
    /// their offsets were never stored, so the next owner reads them again)
    /// or of a halted WABA (parked). Each pair's jobs come out in its order.
    pub fn purge(&mut self, take: &dyn Fn(&J) -> bool) -> Vec<J> {
        let mut taken = Vec::new();
        for (&phone, number) in &mut self.numbers {
            number.queues.retain(|_, queue| {
                let (out, kept): (VecDeque<_>, VecDeque<_>) =
                    std::mem::take(&mut queue.jobs).into_iter().partition(|entry| take(&entry.job));
                queue.jobs = kept;
                taken.extend(out.into_iter().map(|entry| entry.job));
                !queue.jobs.is_empty() || queue.in_flight.is_some()
            });
            let queues = &number.queues;
            number.ready.retain(|recipient| {
                queues.get(recipient).is_some_and(|q| q.stage == Stage::Ready && !q.jobs.is_empty())
            });
            if number.queues.is_empty() {
                arm_forget(phone, number, &mut self.timers, self.forget_after);
            }
        }
        self.held -= taken.len();
        taken
    }

    /// Jobs queued or in flight.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Takes a job. A number met for the first time starts conservatively:
    /// another instance may have sent for it during the last second.
    pub fn enqueue(&mut self, envelope: Envelope<J>, now: Moment) {
        let Envelope { phone, recipient, waba, mps, not_before, expires_at, priority, job } = envelope;
        let margin = self.config.mps_margin_percent;
        let rule = self.config.pair_rule;
        let wabas = &self.wabas;
        let tiers = &self.config.tiers;
        let number = self.numbers.entry(phone).or_insert_with(|| NumberState {
            limiter: NumberLimiter::after_handover(tiers.get(phone).unwrap_or(mps), margin, now),
            pairs: PairBudgets::new(rule),
            waba_id: waba,
            waba: wabas.get_or_insert(waba),
            queues: HashMap::new(),
            ready: Lanes::default(),
            activity: Activity::Idle,
            last_used: now,
            forget_at: None,
        });
        let entry = Entry { job, not_before, expires_at, enqueued_at: now, attempts: 0, priority };
        self.held += 1;
        match number.queues.get_mut(&recipient) {
            // Behind the pair's earlier jobs, whatever they are waiting for.
            Some(queue) => queue.jobs.push_back(entry),
            None => {
                let queue = PairQueue {
                    jobs: VecDeque::from([entry]),
                    stage: Stage::Ready,
                    in_flight: None,
                    hold_until: None,
                };
                number.queues.insert(recipient, queue);
                self.schedule_head(phone, recipient, now);
            }
        }
    }

    /// The request for `ticket` ended for good (sent or failed): the pair's
    /// next job may go.
    pub fn finish(&mut self, ticket: Ticket, now: Moment) {
        let Some(number) = self.numbers.get_mut(&ticket.phone) else { return };
        let Some(queue) = number.queues.get_mut(&ticket.recipient) else { return };
        if queue.in_flight.take().is_some() {
            self.held -= 1;
            number.last_used = now;
        }
        self.schedule_head(ticket.phone, ticket.recipient, now);
    }

    /// The request for `ticket` is to be retried after `after`; `scope` says
    /// what waits: the pair, the number, the WABA, every WABA of the token, or
    /// this job alone (its pair waits with it, to keep the order). Whether a
    /// job has retries left is its owner's decision, made before calling.
    /// Hands the job back when the ticket is unknown (its pair was purged):
    /// the caller drops it, and its record is read again.
    pub fn retry(
        &mut self,
        ticket: Ticket,
        job: J,
        scope: Scope,
        reason: RetryReason,
        after: Duration,
        now: Moment,
    ) -> Result<(), J> {
        let slow_down_for = self.config.slow_down_for;
        let Some(number) = self.numbers.get_mut(&ticket.phone) else {
            return Err(job);
        };
        let Some(queue) = number.queues.get_mut(&ticket.recipient) else {
            return Err(job);
        };
        let Some(flight) = queue.in_flight.take() else {
            return Err(job);
        };
        let sent_at = flight.sent_at;
        queue.jobs.push_front(flight.back(job));
        number.last_used = now;
        let until = now + after;
        match scope {
            Scope::Pair => {
                let penalty = number.pairs.penalise(ticket.recipient, now);
                queue.hold_until = Some(penalty.max(until));
            }
            Scope::Request => queue.hold_until = Some(until),
            Scope::Number => {
                if reason == RetryReason::NumberLimit {
                    number.limiter.slow_down(now, slow_down_for, sent_at);
                }
                number.limiter.pause_until(until);
            }
            Scope::Waba => number.waba.window().pause_until(until),
            Scope::Token => match self.wabas.token_group(number.waba_id) {
                Some(group) => self.wabas.pause_token_group(group, until),
                None => number.waba.window().pause_until(until),
            },
        }
        self.schedule_head(ticket.phone, ticket.recipient, now);
        Ok(())
    }

    /// The token of the ticket's WABA is invalid: the job goes back to the
    /// head of its pair and nothing more is sent for that WABA until it is
    /// resumed ([`WabaRegistry::resume`], then [`Shard::wake_halted`]).
    pub fn halt(&mut self, ticket: Ticket, job: J, now: Moment) {
        let Some(number) = self.numbers.get_mut(&ticket.phone) else { return };
        self.wabas.halt(number.waba_id);
        let Some(queue) = number.queues.get_mut(&ticket.recipient) else { return };
        if let Some(flight) = queue.in_flight.take() {
            queue.jobs.push_front(flight.back(job));
        }
        self.schedule_head(ticket.phone, ticket.recipient, now);
    }

    /// Applies a changed tier to a number this shard holds (one met later
    /// takes it from [`crate::LiveTiers`]).
    pub fn set_tier(&mut self, phone: u64, mps: u32) {
        if let Some(number) = self.numbers.get_mut(&phone) {
            number.limiter.set_mps(mps);
        }
    }

    /// Puts numbers whose WABA was resumed back to work.
    pub fn wake_halted(&mut self) {
        for (&phone, number) in &mut self.numbers {
            if number.activity == Activity::Halted && !number.waba.is_stopped() {
                number.activity = Activity::Active;
                self.active.push_back(phone);
            }
        }
    }

    /// The earliest instant at which [`Shard::poll`] has something to do:
    /// `now` when a number can send at once.
    pub fn next_wake(&self, now: Moment) -> Option<Moment> {
        if !self.active.is_empty() {
            return Some(now);
        }
        self.timers.peek().map(|Reverse((due, _))| *due)
    }

    /// One round: fires due timers, then lets every active number hand out
    /// up to `max_batch` jobs its limits allow at `now`.
    pub fn poll(&mut self, now: Moment, out: &mut Vec<Ready<J>>) {
        self.fire_timers(now);
        for _ in 0..self.active.len() {
            let Some(phone) = self.active.pop_front() else { break };
            let end = self.dispatch_number(phone, now, out);
            let Some(number) = self.numbers.get_mut(&phone) else { continue };
            number.activity = match end {
                RoundEnd::Drained => Activity::Idle,
                RoundEnd::BatchFull => {
                    self.active.push_back(phone);
                    Activity::Active
                }
                RoundEnd::Blocked(until) => {
                    self.timers.push(Reverse((until, TimerKey::Number { phone })));
                    Activity::Blocked(until)
                }
                RoundEnd::Halted => Activity::Halted,
            };
        }
    }

    fn dispatch_number(&mut self, phone: u64, now: Moment, out: &mut Vec<Ready<J>>) -> RoundEnd {
        let max_batch = self.config.max_batch;
        let Some(number) = self.numbers.get_mut(&phone) else { return RoundEnd::Drained };
        if number.waba.is_stopped() {
            return RoundEnd::Halted;
        }
        // Look this round's pairs up together first: with millions of pairs
        // each lookup is a cache miss, and overlapping them is most of the
        // limiter's speed (benches/README.md). Changes no decision.
        number.pairs.prefetch(number.ready.iter().take(max_batch).copied());
        number.limiter.widen(self.config.window_allowance.get());
        let waba = Arc::clone(&number.waba);
        let mut window = waba.window();
        let mut sent = 0;
        let mut resched = Vec::new();
        let end = loop {
            let Some((lane, recipient)) = number.ready.front() else { break RoundEnd::Drained };
            if sent == max_batch {
                break RoundEnd::BatchFull;
            }
            let queue = number.queues.get_mut(&recipient).expect("a ready pair has a queue");
            let head = queue.jobs.front().expect("a ready pair has a job");
            // Expired jobs leave without spending any budget.
            if head.expires_at.is_some_and(|at| at <= now) {
                number.ready.pop(lane);
                let entry = queue.jobs.pop_front().expect("checked above");
                self.held -= 1;
                out.push(Ready::Expired {
                    ticket: Ticket { phone, recipient },
                    job: entry.job,
                    attempts: entry.attempts,
                });
                resched.push(recipient);
                continue;
            }
            if let Err(NotUntil(until)) = number.limiter.check(now) {
                self.throttled.phone += 1;
                break RoundEnd::Blocked(until);
            }
            if let Err(NotUntil(until)) = window.check(now, 1) {
                self.throttled.waba += 1;
                break RoundEnd::Blocked(until);
            }
            number.ready.pop(lane);
            // Penalties and pauses may have arrived since the pair became ready.
            let hold = [head.not_before, queue.hold_until].into_iter().flatten().max();
            if hold.is_some_and(|at| at > now) || number.pairs.check(recipient, now).is_err() {
                resched.push(recipient);
                continue;
            }
            number.pairs.acquire(recipient, now).expect("checked above");
            number.limiter.acquire(now).expect("checked above");
            window.acquire_up_to(now, 1);
            let entry = queue.jobs.pop_front().expect("checked above");
            queue.hold_until = None;
            queue.stage = Stage::InFlight;
            let attempt = entry.attempts + 1;
            queue.in_flight = Some(InFlight {
                not_before: entry.not_before,
                expires_at: entry.expires_at,
                enqueued_at: entry.enqueued_at,
                attempts: attempt,
                priority: entry.priority,
                sent_at: now,
            });
            out.push(Ready::Send(Dispatch {
                ticket: Ticket { phone, recipient },
                waba: number.waba_id,
                job: entry.job,
                attempt,
                queued: now.saturating_since(entry.enqueued_at),
            }));
            sent += 1;
        };
        drop(window);
        if sent > 0 {
            number.last_used = now;
        }
        for recipient in resched {
            self.schedule_head(phone, recipient, now);
        }
        // Rescheduling may have made pairs ready again at `now`.
        match end {
            RoundEnd::Drained if self.numbers.get(&phone).is_some_and(|n| !n.ready.is_empty()) => {
                RoundEnd::BatchFull
            }
            end => end,
        }
    }

    /// Decides where a pair's head job waits: in `ready` if it may go at
    /// `now`, else on the timer heap until the earliest instant it might.
    fn schedule_head(&mut self, phone: u64, recipient: u64, now: Moment) {
        let Some(number) = self.numbers.get_mut(&phone) else { return };
        let Some(queue) = number.queues.get_mut(&recipient) else { return };
        if queue.in_flight.is_some() {
            queue.stage = Stage::InFlight;
            return;
        }
        let Some(head) = queue.jobs.front() else {
            number.queues.remove(&recipient);
            if number.queues.is_empty() {
                arm_forget(phone, number, &mut self.timers, self.forget_after);
            }
            return;
        };
        let budget = number.pairs.check(recipient, now).err().map(NotUntil::earliest);
        if budget.is_some() {
            self.throttled.pair += 1;
        }
        let due =
            [budget, head.not_before, queue.hold_until].into_iter().flatten().max().filter(|&at| at > now);
        // A job that will expire while waiting comes out as soon as it does.
        let due = match (due, head.expires_at) {
            (Some(due), Some(expiry)) if expiry < due => Some(expiry.max(now)).filter(|&at| at > now),
            (due, _) => due,
        };
        match due {
            Some(at) => {
                queue.stage = Stage::Waiting(at);
                self.timers.push(Reverse((at, TimerKey::Pair { phone, recipient })));
            }
            None => {
                queue.stage = Stage::Ready;
                number.ready.push(head.priority, recipient);
                if number.activity == Activity::Idle {
                    number.activity = Activity::Active;
                    self.active.push_back(phone);
                }
            }
        }
    }

    fn fire_timers(&mut self, now: Moment) {
        while let Some(Reverse((due, _))) = self.timers.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((due, key))) = self.timers.pop() else { break };
            match key {
                TimerKey::Pair { phone, recipient } => {
                    let current = self
                        .numbers
                        .get(&phone)
                        .and_then(|n| n.queues.get(&recipient))
                        .is_some_and(|q| q.stage == Stage::Waiting(due));
                    if current {
                        self.schedule_head(phone, recipient, now);
                    }
                }
                TimerKey::Number { phone } => {
                    if let Some(number) = self.numbers.get_mut(&phone) {
                        if number.activity == Activity::Blocked(due) {
                            number.activity = Activity::Active;
                            self.active.push_back(phone);
                        }
                    }
                }
                TimerKey::Forget { phone } => self.forget_if_idle(phone, due, now),
            }
        }
    }

    /// Drops the number's state if it holds no job and nothing of its state
    /// can still matter at `now`; else looks again when it might.
    fn forget_if_idle(&mut self, phone: u64, due: Moment, now: Moment) {
        let Some(number) = self.numbers.get_mut(&phone) else { return };
        if number.forget_at != Some(due) {
            return;
        }
        number.forget_at = None;
        if !number.queues.is_empty() {
            // Busy again: armed anew when it next holds nothing.
            return;
        }
        let limiter = &number.limiter;
        let again = (number.last_used + self.forget_after).max(limiter.paused_until());
        if again > now {
            number.forget_at = Some(again);
            self.timers.push(Reverse((again, TimerKey::Forget { phone })));
            return;
        }
        // A slow-down or a penalty that outlived the bound, a halt (its jobs
        // may have been purged; the number waits for the resume), or a round
        // still to run after a purge: try again later.
        let slowed = limiter.effective_limit(now) < limiter.effective_limit(Moment::MAX);
        number.pairs.expire_idle(now);
        let halted = number.activity == Activity::Halted || number.waba.is_stopped();
        if slowed || halted || !number.pairs.is_empty() || number.activity != Activity::Idle {
            let again = now + self.forget_after;
            number.forget_at = Some(again);
            self.timers.push(Reverse((again, TimerKey::Forget { phone })));
            return;
        }
        // Idle: in no list, so no entry elsewhere names it; stale timers are
        // checked against the state they name, as always.
        self.numbers.remove(&phone);
        // Give memory back after a wave of numbers, leaving room to double.
        if self.numbers.len() < self.numbers.capacity() / 4 {
            self.numbers.shrink_to(self.numbers.len() * 2);
        }
    }
}

/// The number holds no job: look at forgetting it `forget_after` after its
/// last use, unless a look is already due (it then re-arms itself).
fn arm_forget<J>(
    phone: u64,
    number: &mut NumberState<J>,
    timers: &mut BinaryHeap<Reverse<(Moment, TimerKey)>>,
    forget_after: Duration,
) {
    if number.forget_at.is_none() {
        let at = number.last_used + forget_after;
        number.forget_at = Some(at);
        timers.push(Reverse((at, TimerKey::Forget { phone })));
    }
}

#[cfg(test)]
mod tests;
