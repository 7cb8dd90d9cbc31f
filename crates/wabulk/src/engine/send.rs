//! The send stage: the scheduler's ready jobs → HTTP/2 request → classified
//! outcome → scheduler feedback (finish, retry, halt) or the job's exit.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use wabulk_kafka::{Assignment, Ingest};
use wabulk_limits::Clock;
use wabulk_model::{ApiError, CampaignState, ErrorCode, Exit, NumericId, Outcome};
use wabulk_scheduler::{Command, Dispatch, Ready, Scheduler, TokioClock, WabaRegistry};
use wabulk_sender::{DepartureGate, SchedulingDelay, Sender, TokenCheck};
use wabulk_telemetry::{Health, Metrics};

use super::campaigns::CampaignStates;
use super::settle::Settle;
use super::shutdown::Shutdown;
use super::Pending;
use crate::setup::EngineSetup;

/// How often gauges are refreshed from the stages.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Answers taken per turn of the send loop: enough to amortise the loop,
/// few enough that ready jobs are not starved.
const ANSWERS_PER_TURN: usize = 512;

/// A WABA whose token was refused.
pub(super) struct Halted {
    /// One of its numbers: the token is checked by reading that number.
    phone: NumericId,
    next_check: tokio::time::Instant,
}

/// One request that came back.
pub(super) struct Answered {
    dispatch: Dispatch<Pending>,
    outcome: Outcome,
    latency: Duration,
}

pub(super) struct SendStage {
    pub(super) setup: Arc<EngineSetup>,
    pub(super) clock: TokioClock,
    pub(super) sender: Sender,
    pub(super) scheduler: Scheduler<Pending>,
    pub(super) registry: Arc<WabaRegistry>,
    pub(super) settle: Settle,
    /// For the lag and in-memory gauges.
    pub(super) ingest: Arc<Ingest>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) health: Arc<Health>,
    pub(super) shutdown: Shutdown,
    /// Where request tasks report back.
    pub(super) answers_tx: mpsc::UnboundedSender<Answered>,
    /// Where the scheduler hands back the queued jobs of a halted WABA, to
    /// be parked.
    pub(super) taken_tx: mpsc::UnboundedSender<Vec<Pending>>,
    /// Each controlled campaign's state, looked at just before a request.
    pub(super) campaigns: Arc<CampaignStates>,
    /// Where jobs of a campaign paused or cancelled on their way here go
    /// back to the ingest stage (parked or ended there).
    pub(super) stopped_tx: mpsc::UnboundedSender<Vec<Pending>>,
    /// WABAs halted for a refused token, each with a number to check the
    /// token with and when to check it next.
    pub(super) halted: HashMap<u64, Halted>,
    /// Token checks under way: (WABA, answer).
    pub(super) token_checks: JoinSet<(u64, TokenCheck)>,
    /// Each number's departure gate, made on its first send.
    pub(super) gates: HashMap<u64, Arc<DepartureGate>>,
    /// The version of the live tiers the gates were last brought to.
    pub(super) tiers_seen: u64,
    /// The version of the tokens the halted WABAs were last checked with.
    pub(super) tokens_seen: u64,
    /// How late this runtime is; sets the window allowance.
    pub(super) scheduling_delay: Arc<SchedulingDelay>,
    /// Scheduler throttle counters already added to the metric.
    pub(super) sampled: [u64; 3],
}

impl SendStage {
    /// Sends until the stop begins, then finishes the requests in flight and
    /// the results being written, until the stop's deadline at the latest.
    pub(super) async fn run(
        mut self,
        mut ready: mpsc::Receiver<Vec<Ready<Pending>>>,
        mut answers: mpsc::UnboundedReceiver<Answered>,
        mut assignments: mpsc::UnboundedReceiver<Assignment>,
        mut taken: mpsc::UnboundedReceiver<Vec<Pending>>,
    ) {
        let mut sample = tokio::time::interval(SAMPLE_EVERY);
        let mut writes = JoinSet::new();
        let mut in_flight = 0usize;
        let mut answered = Vec::with_capacity(ANSWERS_PER_TURN);
        let shutdown = self.shutdown.clone();
        let mut begun = std::pin::pin!(shutdown.begun());
        let mut deadline = std::pin::pin!(shutdown.deadline_passed());
        let mut announced = false;
        loop {
            let draining = shutdown.is_draining();
            if draining && !announced {
                announced = true;
                tracing::info!(in_flight, "stopping: finishing requests in flight");
            }
            if draining && in_flight == 0 && writes.is_empty() {
                break;
            }
            tokio::select! {
                // Answers first: they free pairs and memory, and bound what
                // the next ready batch can add.
                biased;
                n = answers.recv_many(&mut answered, ANSWERS_PER_TURN) => {
                    in_flight -= n;
                    for answer in answered.drain(..) {
                        self.on_answer(&mut writes, answer);
                    }
                }
                Some(_) = writes.join_next(), if !writes.is_empty() => {}
                Some(Ok((waba, check))) = self.token_checks.join_next(), if !self.token_checks.is_empty() => {
                    self.on_token_check(waba, check);
                }
                Some(assignment) = assignments.recv() => self.on_assignment(assignment),
                Some(jobs) = taken.recv() => self.park_halted(&mut writes, jobs),
                Some(batch) = ready.recv() => in_flight += self.on_ready(&mut writes, batch),
                _ = sample.tick() => {
                    self.sample();
                    self.check_halted_tokens();
                }
                () = &mut begun, if !draining => {}
                () = &mut deadline => {
                    tracing::warn!(in_flight, writes = writes.len(), "drain timeout: stopping with work unfinished; it is read again on restart");
                    break;
                }
            }
        }
        self.sample();
    }

    /// Starts requests for ready jobs; returns how many.
    fn on_ready(&mut self, writes: &mut JoinSet<()>, batch: Vec<Ready<Pending>>) -> usize {
        let mut started = 0;
        for item in batch {
            match item {
                Ready::Send(dispatch) => started += usize::from(self.start_send(dispatch)),
                Ready::Expired { ticket, job, attempts } => {
                    let _ = self.scheduler.send(Command::Finish(ticket));
                    self.settle.exit(writes, job, Exit::Expired, attempts);
                }
            }
        }
        started
    }

    fn start_send(&mut self, dispatch: Dispatch<Pending>) -> bool {
        let ours = !self.shutdown.is_draining() && !dispatch.job.lease.is_revoked();
        if ours && self.campaigns.of(&dispatch.job) != CampaignState::Active {
            // Paused or cancelled after the scheduler let it go.
            let _ = self.scheduler.send(Command::Finish(dispatch.ticket));
            let _ = self.stopped_tx.send(vec![dispatch.job]);
            return false;
        }
        let Some(token) = self.setup.tokens.get(dispatch.waba).filter(|_| ours) else {
            // Not ours to send any more (or, defensively, no token): the
            // record is read again by its next owner or after a restart.
            let _ = self.scheduler.send(Command::Finish(dispatch.ticket));
            return false;
        };
        self.metrics.queue_wait.observe(dispatch.queued.as_secs_f64());
        self.metrics.inflight.inc();
        let sender = self.sender.clone();
        let answers = self.answers_tx.clone();
        let gate = self.gate(dispatch.job.job.phone_number_id.get());
        tokio::spawn(async move {
            let body = dispatch.job.job.request_body();
            let phone = dispatch.job.job.phone_number_id;
            let started = Instant::now();
            let outcome = sender.send(phone, &token, body, dispatch.attempt, Some(&gate)).await;
            let _ = answers.send(Answered { dispatch, outcome, latency: started.elapsed() });
        });
        true
    }

    /// The number's departure gate, at its tier: a live one (a throughput
    /// upgrade) or the configured one (the default tier for numbers not in
    /// the configuration, as `route` gives them). Made on the number's
    /// first send, which is also when its tier gauge is set.
    fn gate(&mut self, phone: u64) -> Arc<DepartureGate> {
        let tiers = &self.setup.scheduler.tiers;
        if tiers.version() != self.tiers_seen {
            // A tier changed while running (a throughput upgrade).
            self.tiers_seen = tiers.version();
            for (phone, gate) in &self.gates {
                if let Some(mps) = tiers.get(*phone) {
                    gate.set_limit(mps);
                }
            }
        }
        let (setup, metrics) = (&self.setup, &self.metrics);
        let gate = self.gates.entry(phone).or_insert_with(|| {
            let configured = setup.phones.get(&phone).map_or(setup.default_mps, |p| p.mps);
            let mps = tiers.get(phone).unwrap_or(configured);
            let label = phone.to_string();
            metrics.phone_rate_limit.with_label_values(&[metrics.phone_label(&label)]).set(i64::from(mps));
            let margin = setup.scheduler.mps_margin_percent;
            Arc::new(DepartureGate::new(mps, margin, Arc::clone(&setup.scheduler.window_allowance)))
        });
        Arc::clone(gate)
    }

    fn on_answer(&mut self, writes: &mut JoinSet<()>, answered: Answered) {
        let Answered { dispatch, outcome, latency } = answered;
        let Dispatch { ticket, waba, job: mut pending, attempt, .. } = dispatch;
        self.metrics.inflight.dec();
        self.metrics.send_latency.observe(latency.as_secs_f64());
        match outcome {
            Outcome::Sent { wamid } => {
                let _ = self.scheduler.send(Command::Finish(ticket));
                self.settle.exit(writes, pending, Exit::Sent { wamid }, attempt);
            }
            Outcome::Failed { reason, error } => {
                let _ = self.scheduler.send(Command::Finish(ticket));
                self.count_api_error(&error);
                self.settle.exit(writes, pending, Exit::Failed { reason, error }, attempt);
            }
            Outcome::Retry { scope, after, reason, error } => {
                self.count_api_error(&error);
                self.metrics.retries.with_label_values(&[reason.label()]).inc();
                if reason.outcome_unknown() {
                    self.metrics.unknown_outcome_retries.inc();
                }
                if reason.spends_attempt() {
                    pending.attempts_spent += 1;
                } else {
                    pending.waits += 1;
                }
                let budget = self.setup.retries;
                if self.shutdown.is_draining() || pending.lease.is_revoked() {
                    // Left to the next run or the partition's next owner.
                    let _ = self.scheduler.send(Command::Finish(ticket));
                } else if pending.attempts_spent >= budget.max_attempts || pending.waits >= budget.max_waits {
                    let _ = self.scheduler.send(Command::Finish(ticket));
                    let exit = Exit::GaveUp { attempts: attempt, last_error: Some(error) };
                    self.settle.exit(writes, pending, exit, attempt);
                } else {
                    let _ =
                        self.scheduler.send(Command::Retry { ticket, job: pending, scope, reason, after });
                }
            }
            Outcome::Halt { error, .. } => {
                self.count_api_error(&error);
                if !self.halted.contains_key(&waba) {
                    tracing::error!(
                        waba_id = waba,
                        code = %error.code,
                        check_every = ?self.setup.token_check_interval,
                        "the access token of this WABA was refused; sending for it has stopped and its jobs are kept \
                         (parked in Kafka when parking is on). The token is checked periodically and sending resumes \
                         once it is accepted again"
                    );
                    let label = waba.to_string();
                    self.metrics.waba_halted.with_label_values(&[self.metrics.waba_label(&label)]).set(1);
                    let next_check = tokio::time::Instant::now() + self.setup.token_check_interval;
                    self.halted.insert(waba, Halted { phone: pending.job.phone_number_id, next_check });
                    self.registry.halt(waba);
                    self.take_halted_jobs(waba);
                }
                if pending.lease.is_revoked() {
                    // Not kept: the record is its next owner's, and a job
                    // kept here would hold its lease, and so the revocation,
                    // until the revocation's timeout.
                    let _ = self.scheduler.send(Command::Finish(ticket));
                } else if self.settle.can_park() {
                    let _ = self.scheduler.send(Command::Finish(ticket));
                    self.park_halted(writes, vec![pending]);
                } else {
                    let _ = self.scheduler.send(Command::Halt { ticket, job: pending });
                }
            }
        }
    }

    /// Asks the scheduler for the queued jobs of a halted WABA, to park them
    /// (they come back on `taken`); without parking they stay queued.
    fn take_halted_jobs(&self, waba: u64) {
        if self.settle.can_park() {
            let matching = Arc::new(move |p: &Pending| p.waba == waba);
            let _ = self.scheduler.send(Command::Purge { matching, to: Some(self.taken_tx.clone()) });
        }
    }

    /// Parks jobs of halted WABAs until their next token check.
    fn park_halted(&self, writes: &mut JoinSet<()>, jobs: Vec<Pending>) {
        let now = chrono::Utc::now();
        let mut to_park = Vec::with_capacity(jobs.len());
        for pending in jobs {
            if super::ingest::waited_too_long(&self.setup, pending.parked_since, now) {
                self.settle.exit(writes, pending, super::ingest::halted_too_long(&self.setup), 0);
                continue;
            }
            let due = super::ingest::halted_until(&self.setup, &pending.job, now);
            to_park.push((pending, due));
        }
        self.settle.park_jobs(writes, to_park, "halted");
    }

    /// Starts a check of each halted WABA's token that is due (one at a time
    /// per WABA).
    fn check_halted_tokens(&mut self) {
        let now = tokio::time::Instant::now();
        if self.setup.tokens.version() != self.tokens_seen {
            // A token was replaced (its file changed, a reload): look at once.
            self.tokens_seen = self.setup.tokens.version();
            for halted in self.halted.values_mut() {
                halted.next_check = halted.next_check.min(now);
            }
        }
        for (&waba, halted) in &mut self.halted {
            if halted.next_check > now {
                continue;
            }
            // Far ahead until the answer sets the real next check.
            halted.next_check = now + Duration::from_secs(24 * 3600);
            let Some(token) = self.setup.tokens.get(waba) else { continue };
            let (sender, phone) = (self.sender.clone(), halted.phone);
            self.token_checks.spawn(async move { (waba, sender.check_token(phone, &token).await) });
        }
    }

    /// A halted WABA's token was checked: resume it if accepted, else check
    /// again after the interval.
    fn on_token_check(&mut self, waba: u64, check: TokenCheck) {
        match check {
            TokenCheck::Accepted => {
                self.halted.remove(&waba);
                self.registry.resume(waba);
                let _ = self.scheduler.send(Command::Resume);
                let label = waba.to_string();
                self.metrics.waba_halted.with_label_values(&[self.metrics.waba_label(&label)]).set(0);
                tracing::info!(
                    waba_id = waba,
                    "the access token of this WABA is accepted again; sending resumes"
                );
            }
            TokenCheck::Refused(error) | TokenCheck::Unknown(error) => {
                tracing::debug!(waba_id = waba, code = %error.code, "the halted WABA's token is not accepted yet");
                if let Some(halted) = self.halted.get_mut(&waba) {
                    halted.next_check = tokio::time::Instant::now() + self.setup.token_check_interval;
                }
                // Jobs queued after the halt began (read before it) are parked too.
                self.take_halted_jobs(waba);
            }
        }
    }

    fn count_api_error(&self, error: &ApiError) {
        if let ErrorCode::Graph(code) = error.code {
            self.metrics.api_errors.with_label_values(&[&code.to_string()]).inc();
        }
    }

    fn on_assignment(&mut self, assignment: Assignment) {
        match assignment {
            Assignment::Assigned(partitions) => {
                tracing::info!(?partitions, "partitions assigned");
            }
            Assignment::Revoked(partitions) => {
                tracing::info!(?partitions, "partitions revoked: dropping their waiting jobs");
                // Their leases say so already (a later assignment of the same
                // partitions has new ones); dropping the jobs releases them,
                // which the revocation waits for.
                let matching = Arc::new(|p: &Pending| p.lease.is_revoked());
                let _ = self.scheduler.send(Command::Purge { matching, to: None });
            }
        }
    }

    /// Refreshes the gauges and adds the scheduler's throttle counts.
    fn sample(&mut self) {
        let metrics = &self.metrics;
        let stats = self.scheduler.stats();
        metrics.backlog.set(stats.held() as i64);
        for (phone, limit) in stats.effective_limits() {
            let label = phone.to_string();
            metrics
                .phone_effective_rate
                .with_label_values(&[metrics.phone_label(&label)])
                .set(i64::from(limit));
        }
        let throttled = [
            stats.throttled_phone.load(Ordering::Relaxed),
            stats.throttled_pair.load(Ordering::Relaxed),
            stats.throttled_waba.load(Ordering::Relaxed),
        ];
        for (i, limit) in ["phone", "pair", "waba"].into_iter().enumerate() {
            metrics.throttled.with_label_values(&[limit]).inc_by(throttled[i] - self.sampled[i]);
        }
        self.sampled = throttled;
        for (waba, used, cap) in self.registry.usage(self.clock.now()) {
            let label = waba.to_string();
            let label = metrics.waba_label(&label);
            metrics.waba_hourly_calls.with_label_values(&[label]).set(used as i64);
            metrics.waba_hourly_cap.with_label_values(&[label]).set(cap as i64);
        }
        for (partition, lag) in self.ingest.lag() {
            metrics.consumer_lag.with_label_values(&[&partition.to_string()]).set(lag);
        }
        metrics.jobs_in_memory.set(self.ingest.in_memory() as i64);
        metrics.jobs_in_memory_bytes.set(self.ingest.in_memory_bytes() as i64);
        let paused = self.ingest.paused();
        metrics.partitions_paused.set(paused.any as i64);
        let by_reason =
            [("memory", paused.memory), ("partition_share", paused.share), ("window", paused.window)];
        for (reason, count) in by_reason {
            metrics.partitions_paused_by_reason.with_label_values(&[reason]).set(count as i64);
        }
        metrics.scheduling_delay.set(self.scheduling_delay.peak().as_secs_f64());
        let held: u64 = self.gates.values().map(|g| g.held_total()).sum();
        metrics.departures_held.inc_by(held.saturating_sub(metrics.departures_held.get()));
        let pool = self.sender.pool_stats();
        metrics.pool_connections.set(pool.connections as i64);
        metrics
            .pool_connections_opened
            .inc_by(pool.opened_total.saturating_sub(metrics.pool_connections_opened.get()));
        metrics
            .pool_connections_broken
            .inc_by(pool.broken_total.saturating_sub(metrics.pool_connections_broken.get()));
        let all_halted =
            !self.setup.wabas.is_empty() && self.setup.wabas.keys().all(|w| self.halted.contains_key(w));
        self.health.set_sending(!all_halted);
    }
}
