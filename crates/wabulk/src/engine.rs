//! The data path, wired in one place.
//!
//! Two stages, each one loop:
//!
//! * **ingest**: Kafka record → parse (bad input → DLQ) → route (not
//!   acceptable → `rejected` result) → scheduler.
//! * **send**: the scheduler's ready jobs → HTTP/2 request → classified
//!   outcome → scheduler feedback (finish, retry, halt) and the job's one
//!   final result.
//!
//! Requests and Kafka writes run on their own tasks so that both cores do
//! the JSON, HTTP/2 and librdkafka work; the loops only keep the books. A
//! job's lease is released as done (`Lease::done`) only by the task that saw
//! its result or dead letter acknowledged by Kafka; a job given up drops it.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use wabulk_kafka::{Assignment, Ingest, Lease, Output, Record};
use wabulk_limits::{Clock, Moment};
use wabulk_model::{
    ApiError, DlqRecord, ErrorCode, FailReason, Job, JobResult, Outcome, RejectReason, ResultError,
    RetryReason, Status,
};
use wabulk_scheduler::{
    Command, Dispatch, Envelope, Output as FromScheduler, Ready, Scheduler, TokioClock, WabaRegistry,
};
use wabulk_sender::{AccessToken, DepartureGate, SchedulingDelay, Sender};
use wabulk_telemetry::{Health, Metrics, EXPIRED_REASON};

use crate::setup::EngineSetup;
use crate::writes::{Refusals, Topic};

/// A job inside the engine, from its record to its result.
#[derive(Debug)]
pub struct Pending {
    job: Job,
    /// The record's hold on its offset: done once the job's result is
    /// acknowledged, dropped with the job otherwise.
    lease: Lease,
    received_at: DateTime<Utc>,
    /// The last retryable error, reported if the retries run out.
    last_error: Option<ApiError>,
}

/// One request that came back.
struct Answered {
    dispatch: Dispatch<Pending>,
    outcome: Outcome,
    latency: Duration,
}

/// How often gauges are refreshed from the stages.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Answers taken per turn of the send loop: enough to amortise the loop,
/// few enough that ready jobs are not starved.
const ANSWERS_PER_TURN: usize = 512;

/// Runs the engine until `shutdown` resolves, then stops reading, lets the
/// requests in flight finish (up to the drain timeout), writes their results
/// and commits.
pub async fn run(
    setup: EngineSetup,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let setup = Arc::new(setup);
    let clock = TokioClock::new();
    let (ingest, assignments) = Ingest::connect(&setup.kafka).context("cannot start the Kafka consumer")?;
    {
        // Told on every done and every acknowledged commit, under the
        // consumer's lock: two atomic updates.
        let (uncommitted, lag) = (metrics.uncommitted_jobs.clone(), metrics.commit_lag.clone());
        ingest.set_commit_listener(Box::new(move |delta, lags| {
            uncommitted.add(delta);
            for waited in lags {
                lag.observe(waited.as_secs_f64());
            }
        }));
    }
    let ingest = Arc::new(ingest);
    let output = Arc::new(Output::connect(&setup.kafka).context("cannot start the Kafka producer")?);
    let sender = Sender::new(setup.sender.clone()).context("graph settings are not usable")?;
    let registry = Arc::new(WabaRegistry::new(setup.default_waba_cap));
    for (&id, waba) in &setup.wabas {
        registry.register(id, waba.hourly_cap, waba.token_group);
        let label = id.to_string();
        metrics.waba_halted.with_label_values(&[metrics.waba_label(&label)]).set(0);
    }
    // Small: a full channel makes the shards wait rather than pile ready
    // jobs up in front of the send loop.
    let (ready_tx, ready_rx) = mpsc::channel(64);
    let (scheduler, shard_tasks) =
        Scheduler::spawn(setup.scheduler.clone(), Arc::clone(&registry), setup.shards, clock, ready_tx);
    for (phone, p) in &setup.phones {
        let label = phone.to_string();
        metrics.phone_rate_limit.with_label_values(&[metrics.phone_label(&label)]).set(i64::from(p.mps));
    }
    // Every counter series of the configured numbers and WABAs and of the
    // closed reason sets at 0, so that rates and alerts see the first event.
    let phones: Vec<String> = setup.phones.keys().map(ToString::to_string).collect();
    let wabas: Vec<String> = setup.wabas.keys().map(ToString::to_string).collect();
    metrics.create_zero_series(phones.iter().map(String::as_str), wabas.iter().map(String::as_str));
    let refusals = Arc::new(Refusals::new(Arc::clone(&metrics), Arc::clone(&health), &setup.kafka.extra));
    let writer = Writer {
        output,
        metrics: Arc::clone(&metrics),
        refusals,
        jobs_topic: Arc::from(setup.kafka.jobs_topic.as_str()),
    };
    let (stop_reading, reading) = watch::channel(false);

    let ingest_stage = IngestStage {
        setup: Arc::clone(&setup),
        clock,
        ingest: Arc::clone(&ingest),
        scheduler: scheduler.clone(),
        writer: writer.clone(),
        metrics: Arc::clone(&metrics),
    };
    let ingest_task = tokio::spawn(ingest_stage.run(reading));

    let (answers_tx, answers_rx) = mpsc::unbounded_channel();
    let send_stage = SendStage {
        setup: Arc::clone(&setup),
        clock,
        sender,
        scheduler,
        registry,
        writer,
        ingest: Arc::clone(&ingest),
        metrics: Arc::clone(&metrics),
        health: Arc::clone(&health),
        answers_tx,
        halted: HashSet::new(),
        gates: HashMap::new(),
        scheduling_delay: SchedulingDelay::start(Arc::clone(&setup.scheduler.window_allowance)),
        draining: false,
        sampled: [0; 3],
    };
    health.set_consuming(true);
    health.set_sending(true);
    tracing::info!(shards = setup.shards, "engine started");
    send_stage.run(ready_rx, answers_rx, assignments, shutdown, stop_reading).await;
    health.set_consuming(false);

    // The ingest stage has stopped reading; its last writes finish here.
    if let Ok(mut writes) = ingest_task.await {
        let _ =
            tokio::time::timeout(setup.drain_timeout, async { while writes.join_next().await.is_some() {} })
                .await;
    }
    for task in shard_tasks {
        task.abort();
    }
    // The final commit blocks on librdkafka.
    tokio::task::spawn_blocking(move || {
        if let Err(err) = ingest.commit_now() {
            tracing::warn!(error = %err, "final commit failed; stored offsets are committed by the next owner");
        }
        drop(ingest);
    })
    .await
    .context("final commit")?;
    tracing::info!("engine stopped");
    Ok(())
}

/// Writes results and dead letters, each on its own task, and releases the
/// job's lease as done once Kafka has acknowledged it.
#[derive(Clone)]
struct Writer {
    output: Arc<Output>,
    metrics: Arc<Metrics>,
    refusals: Arc<Refusals>,
    jobs_topic: Arc<str>,
}

impl Writer {
    fn result(&self, writes: &mut JoinSet<()>, pending: Pending, result: JobResult) {
        let lease = pending.lease;
        let (output, metrics, refusals) =
            (Arc::clone(&self.output), Arc::clone(&self.metrics), Arc::clone(&self.refusals));
        writes.spawn(async move {
            let json = result.to_json();
            let _ = refusals.write(Topic::Results, false, || output.result(&result.id, json.clone())).await;
            // Counted once Kafka has it, so the metric never runs ahead of the topic.
            metrics.results.with_label_values(&[status_label(result.status)]).inc();
            lease.done();
        });
    }

    /// The record's dead letter: its original bytes, cut only if Kafka
    /// could not take them whole.
    fn dead_letter(&self, writes: &mut JoinSet<()>, record: Record, lease: Lease, error: String) {
        let (output, refusals, topic) =
            (Arc::clone(&self.output), Arc::clone(&self.refusals), Arc::clone(&self.jobs_topic));
        writes.spawn(async move {
            let key = record.key.as_deref();
            let build = |cap| {
                DlqRecord::with_payload_cap(
                    &*error,
                    &*topic,
                    record.partition,
                    record.offset,
                    key,
                    &record.payload,
                    cap,
                )
            };
            refusals.dead_letter(build, |json| output.dead_letter(key, json)).await;
            lease.done();
        });
    }
}

/// Builds a job's one final result.
fn result_of(
    setup: &EngineSetup,
    pending: &mut Pending,
    status: Status,
    wamid: Option<String>,
    error: Option<ResultError>,
    attempts: u32,
) -> JobResult {
    let job = &mut pending.job;
    JobResult {
        id: std::mem::take(&mut job.id),
        phone_number_id: job.phone_number_id.to_string(),
        waba_id: job
            .waba_id
            .map(|w| w.to_string())
            .or_else(|| setup.phones.get(&job.phone_number_id.get()).map(|p| p.waba.to_string())),
        to: job.to.to_string(),
        status,
        wamid,
        error,
        attempts,
        received_at: pending.received_at,
        finished_at: Utc::now(),
        metadata: job.metadata.take(),
    }
}

struct IngestStage {
    setup: Arc<EngineSetup>,
    clock: TokioClock,
    ingest: Arc<Ingest>,
    scheduler: Scheduler<Pending>,
    writer: Writer,
    metrics: Arc<Metrics>,
}

impl IngestStage {
    /// Reads until told to stop or the consumer ends; returns the writes
    /// still under way so that the caller can wait for them.
    async fn run(self, mut stop: watch::Receiver<bool>) -> JoinSet<()> {
        let mut writes = JoinSet::new();
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                // Reap finished writes so the set stays small.
                Some(_) = writes.join_next(), if !writes.is_empty() => {}
                record = self.ingest.next() => match record {
                    Ok((record, lease)) => self.on_record(&mut writes, record, lease),
                    Err(err) => {
                        tracing::error!(error = %err, "the Kafka consumer stopped");
                        break;
                    }
                },
            }
        }
        writes
    }

    fn on_record(&self, writes: &mut JoinSet<()>, record: Record, lease: Lease) {
        self.metrics.jobs_consumed.inc();
        let received_at = Utc::now();
        let job = match Job::parse(&record.payload, &self.setup.parse) {
            Ok(job) => job,
            Err(err) => {
                self.metrics.dlq.with_label_values(&[err.reason()]).inc();
                tracing::debug!(partition = record.partition, offset = record.offset, error = %err, "dead letter");
                self.writer.dead_letter(writes, record, lease, err.to_string());
                return;
            }
        };
        let mut pending = Pending { job, lease, received_at, last_error: None };
        match route(&self.setup, &self.metrics, &pending.job) {
            Err(reason) => {
                self.metrics.rejected.with_label_values(&[reason.code()]).inc();
                let error = ResultError {
                    code: ErrorCode::Engine(reason.code().into()),
                    message: reason.to_string(),
                    retryable: false,
                };
                let result = result_of(&self.setup, &mut pending, Status::Rejected, None, Some(error), 0);
                self.writer.result(writes, pending, result);
            }
            Ok((waba, mps)) => {
                let now = self.clock.now();
                let envelope = Envelope {
                    phone: pending.job.phone_number_id.get(),
                    recipient: pending.job.to.get(),
                    waba,
                    mps,
                    not_before: pending.job.not_before.map(|at| moment_of(now, at)),
                    expires_at: pending.job.expires_at.map(|at| moment_of(now, at)),
                    job: pending,
                };
                // Fails only while shutting down; the record is then read again.
                let _ = self.scheduler.send(Command::Enqueue(envelope));
            }
        }
    }
}

/// Which WABA sends this job and at what rate, or why it is not accepted.
fn route(setup: &EngineSetup, metrics: &Metrics, job: &Job) -> Result<(u64, u32), RejectReason> {
    match setup.phones.get(&job.phone_number_id.get()) {
        Some(phone) => match job.waba_id {
            Some(waba) if waba.get() != phone.waba => Err(RejectReason::WabaMismatch),
            _ => Ok((phone.waba, phone.mps)),
        },
        None if setup.strict_phones => Err(RejectReason::UnknownPhoneNumber),
        None => {
            let waba = job.waba_id.ok_or(RejectReason::UnknownWaba)?.get();
            if token(setup, waba).is_none() {
                return Err(RejectReason::UnknownWaba);
            }
            let label = job.phone_number_id.to_string();
            metrics
                .phone_rate_limit
                .with_label_values(&[metrics.phone_label(&label)])
                .set(i64::from(setup.default_mps));
            Ok((waba, setup.default_mps))
        }
    }
}

fn token(setup: &EngineSetup, waba: u64) -> Option<&AccessToken> {
    setup.wabas.get(&waba).map(|w| &w.token).or(setup.default_token.as_ref())
}

/// A wall-clock instant as a scheduler moment (never before `now`).
fn moment_of(now: Moment, at: DateTime<Utc>) -> Moment {
    match (at - Utc::now()).to_std() {
        Ok(ahead) => now + ahead,
        Err(_) => now,
    }
}

struct SendStage {
    setup: Arc<EngineSetup>,
    clock: TokioClock,
    sender: Sender,
    scheduler: Scheduler<Pending>,
    registry: Arc<WabaRegistry>,
    writer: Writer,
    ingest: Arc<Ingest>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// Where request tasks report back.
    answers_tx: mpsc::UnboundedSender<Answered>,
    /// WABAs halted for a bad token, so that the alert is logged once.
    halted: HashSet<u64>,
    /// Each number's departure gate, made on its first send.
    gates: HashMap<u64, Arc<DepartureGate>>,
    /// How late this runtime is; sets the window allowance.
    scheduling_delay: Arc<SchedulingDelay>,
    /// Stopping: no new sends; retries are left to the next run.
    draining: bool,
    /// Scheduler throttle counters already added to the metric.
    sampled: [u64; 3],
}

impl SendStage {
    async fn run(
        mut self,
        mut ready: mpsc::Receiver<Vec<FromScheduler<Pending>>>,
        mut answers: mpsc::UnboundedReceiver<Answered>,
        mut assignments: mpsc::UnboundedReceiver<Assignment>,
        shutdown: impl Future<Output = ()>,
        stop_reading: watch::Sender<bool>,
    ) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut sample = tokio::time::interval(SAMPLE_EVERY);
        let mut writes = JoinSet::new();
        let mut in_flight = 0usize;
        let mut answered = Vec::with_capacity(ANSWERS_PER_TURN);
        let mut drain_deadline = None;
        loop {
            if self.draining && in_flight == 0 && writes.is_empty() {
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
                Some(assignment) = assignments.recv() => self.on_assignment(assignment),
                Some(batch) = ready.recv() => in_flight += self.on_ready(&mut writes, batch),
                _ = sample.tick() => self.sample(),
                () = &mut shutdown, if !self.draining => {
                    tracing::info!(in_flight, "stopping: finishing requests in flight");
                    self.draining = true;
                    let _ = stop_reading.send(true);
                    drain_deadline = Some(tokio::time::Instant::now() + self.setup.drain_timeout);
                }
                () = sleep_until(drain_deadline) => {
                    tracing::warn!(in_flight, writes = writes.len(), "drain timeout: stopping with work unfinished; it is read again on restart");
                    break;
                }
            }
        }
        let _ = stop_reading.send(true);
        self.sample();
    }

    /// Starts requests for ready jobs; returns how many.
    fn on_ready(&mut self, writes: &mut JoinSet<()>, batch: Vec<FromScheduler<Pending>>) -> usize {
        let mut started = 0;
        for item in batch {
            match item {
                FromScheduler::Ready(Ready::Send(dispatch)) => {
                    started += usize::from(self.start_send(dispatch))
                }
                FromScheduler::Ready(Ready::Expired { ticket, mut job, attempts }) => {
                    let _ = self.scheduler.send(Command::Finish(ticket));
                    let label = job.job.phone_number_id.to_string();
                    let label = self.metrics.phone_label(&label);
                    self.metrics.messages_failed.with_label_values(&[label, EXPIRED_REASON]).inc();
                    let result = result_of(&self.setup, &mut job, Status::Expired, None, None, attempts);
                    self.writer.result(writes, job, result);
                }
                FromScheduler::GaveUp { mut job, attempts, .. } => {
                    let last = job.last_error.take();
                    let error = ResultError {
                        code: last
                            .as_ref()
                            .map_or(ErrorCode::Engine("retries_exhausted".into()), |e| e.code.clone()),
                        message: format!(
                            "retries exhausted after {attempts} attempts{}",
                            last.map(|e| format!(": {}", e.message)).unwrap_or_default()
                        ),
                        retryable: true,
                    };
                    self.count_failed(&job, FailReason::RetriesExhausted);
                    let result =
                        result_of(&self.setup, &mut job, Status::Failed, None, Some(error), attempts);
                    self.writer.result(writes, job, result);
                }
            }
        }
        started
    }

    fn start_send(&mut self, dispatch: Dispatch<Pending>) -> bool {
        let ours = !self.draining && !dispatch.job.lease.is_revoked();
        let Some(token) = token(&self.setup, dispatch.waba).filter(|_| ours).cloned() else {
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

    /// The number's departure gate, at its configured tier (the default
    /// tier for numbers not in the configuration, as `route` gives them).
    fn gate(&mut self, phone: u64) -> Arc<DepartureGate> {
        let setup = &self.setup;
        let gate = self.gates.entry(phone).or_insert_with(|| {
            let mps = setup.phones.get(&phone).map_or(setup.default_mps, |p| p.mps);
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
                let label = pending.job.phone_number_id.to_string();
                self.metrics.messages_sent.with_label_values(&[self.metrics.phone_label(&label)]).inc();
                let result = result_of(&self.setup, &mut pending, Status::Sent, Some(wamid), None, attempt);
                self.writer.result(writes, pending, result);
            }
            Outcome::Failed { reason, error } => {
                let _ = self.scheduler.send(Command::Finish(ticket));
                self.count_api_error(&error);
                self.count_failed(&pending, reason);
                let error = ResultError { code: error.code, message: error.message, retryable: false };
                let result = result_of(&self.setup, &mut pending, Status::Failed, None, Some(error), attempt);
                self.writer.result(writes, pending, result);
            }
            Outcome::Retry { scope, after, reason, error } => {
                self.count_api_error(&error);
                self.metrics.retries.with_label_values(&[reason.label()]).inc();
                if reason == RetryReason::Timeout {
                    self.metrics.unknown_outcome_retries.inc();
                }
                if self.draining || pending.lease.is_revoked() {
                    let _ = self.scheduler.send(Command::Finish(ticket));
                } else {
                    pending.last_error = Some(error);
                    let _ =
                        self.scheduler.send(Command::Retry { ticket, job: pending, scope, reason, after });
                }
            }
            Outcome::Halt { error, .. } => {
                self.count_api_error(&error);
                if self.halted.insert(waba) {
                    tracing::error!(
                        waba_id = waba,
                        code = %error.code,
                        "the access token of this WABA was refused; sending for it has stopped and its jobs are kept. \
                         Fix the token and restart wabulk to resume"
                    );
                    let label = waba.to_string();
                    self.metrics.waba_halted.with_label_values(&[self.metrics.waba_label(&label)]).set(1);
                }
                if pending.lease.is_revoked() {
                    // Not kept: the record is its next owner's, and a job
                    // parked here would hold its lease, and so the
                    // revocation, until the revocation's timeout.
                    self.registry.halt(waba);
                    let _ = self.scheduler.send(Command::Finish(ticket));
                } else {
                    let _ = self.scheduler.send(Command::Halt { ticket, job: pending });
                }
            }
        }
    }

    fn count_api_error(&self, error: &ApiError) {
        if let ErrorCode::Graph(code) = error.code {
            self.metrics.api_errors.with_label_values(&[&code.to_string()]).inc();
        }
    }

    fn count_failed(&self, pending: &Pending, reason: FailReason) {
        let label = pending.job.phone_number_id.to_string();
        let label = self.metrics.phone_label(&label);
        self.metrics.messages_failed.with_label_values(&[label, reason.label()]).inc();
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
                let _ = self.scheduler.send(Command::Purge(Arc::new(|p: &Pending| p.lease.is_revoked())));
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
            !self.setup.wabas.is_empty() && self.setup.wabas.keys().all(|w| self.halted.contains(w));
        self.health.set_sending(!all_halted);
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn status_label(status: Status) -> &'static str {
    match status {
        Status::Sent => "sent",
        Status::Failed => "failed",
        Status::Expired => "expired",
        Status::Rejected => "rejected",
    }
}
