//! The data path, wired in one place.
//!
//! Kafka record → parse (bad input → DLQ) → route (unknown number →
//! `rejected`) → scheduler (limits, order, timers) → sender (HTTP/2) →
//! classify → result to Kafka → offset stored once the result is
//! acknowledged. One task runs the loop below; the scheduler's shards and the
//! Kafka and HTTP/2 clients run on their own tasks and threads.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use wabulk_kafka::{Assignment, Ingest, Output, Record};
use wabulk_limits::{Clock, Moment};
use wabulk_model::{
    ApiError, DlqRecord, ErrorCode, FailReason, Job, JobResult, NumericId, Outcome, RejectReason,
    ResultError, Status,
};
use wabulk_scheduler::{
    Command, Dispatch, Envelope, Output as Ready, Ready as Due, Scheduler, TokioClock, WabaRegistry,
};
use wabulk_sender::{AccessToken, Sender};
use wabulk_telemetry::{Health, Metrics};

use crate::setup::EngineSetup;

/// A job inside the engine, from its record to its result.
#[derive(Debug)]
pub struct Pending {
    job: Job,
    partition: i32,
    offset: i64,
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

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// How often gauges are refreshed from the stages.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Runs the engine until `shutdown` resolves, then stops reading, lets the
/// requests in flight finish (up to the drain timeout), writes their results
/// and commits.
pub async fn run(
    setup: EngineSetup,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let clock = TokioClock::new();
    let (ingest, mut assignments) =
        Ingest::connect(&setup.kafka).context("cannot start the Kafka consumer")?;
    let ingest = Arc::new(ingest);
    let output = Arc::new(Output::connect(&setup.kafka).context("cannot start the Kafka producer")?);
    let sender = Sender::new(setup.sender.clone()).context("graph settings are not usable")?;
    let registry = Arc::new(WabaRegistry::new(setup.default_waba_cap));
    for (&id, waba) in &setup.wabas {
        registry.register(id, waba.hourly_cap, waba.token_group);
    }
    // Small: a shard hands out at most one round per message, and a full
    // channel makes shards wait rather than pile jobs up here.
    let (ready_tx, mut ready_rx) = mpsc::channel(64);
    let (scheduler, shard_tasks) =
        Scheduler::spawn(setup.scheduler.clone(), Arc::clone(&registry), setup.shards, clock, ready_tx);
    for (phone, p) in &setup.phones {
        let label = phone.to_string();
        metrics.phone_rate_limit.with_label_values(&[metrics.phone_label(&label)]).set(i64::from(p.mps));
    }

    let mut engine = Engine {
        setup,
        clock,
        ingest: Arc::clone(&ingest),
        output,
        sender,
        scheduler,
        registry,
        metrics,
        health,
        outstanding: HashMap::new(),
        revoking: HashSet::new(),
        halted: HashSet::new(),
        draining: false,
        sends: FuturesUnordered::new(),
        writes: FuturesUnordered::new(),
        sampled: Sampled::default(),
    };
    engine.health.set_consuming(true);
    engine.health.set_sending(true);
    tracing::info!(shards = engine.setup.shards, "engine started");

    let mut shutdown = std::pin::pin!(shutdown);
    let mut sample = tokio::time::interval(SAMPLE_EVERY);
    let mut drain_deadline = None;
    loop {
        if engine.draining && engine.sends.is_empty() && engine.writes.is_empty() {
            break;
        }
        tokio::select! {
            // Finished work first: answers free pairs and acknowledgements
            // free memory, so they bound what new input can add.
            biased;
            Some(answered) = engine.sends.next(), if !engine.sends.is_empty() => engine.on_answer(answered),
            Some((partition, offset)) = engine.writes.next(), if !engine.writes.is_empty() => {
                engine.on_written(partition, offset);
            }
            Some(assignment) = assignments.recv() => engine.on_assignment(assignment),
            Some(batch) = ready_rx.recv() => engine.on_ready(batch),
            record = ingest.next(), if !engine.draining => match record {
                Ok(record) => engine.on_record(record),
                Err(err) => {
                    tracing::error!(error = %err, "the Kafka consumer stopped; draining");
                    engine.start_draining();
                }
            },
            _ = sample.tick() => engine.sample(),
            () = &mut shutdown, if !engine.draining => {
                tracing::info!(in_flight = engine.sends.len(), "stopping: finishing requests in flight");
                engine.start_draining();
                drain_deadline = Some(tokio::time::Instant::now() + engine.setup.drain_timeout);
            }
            () = sleep_until(drain_deadline) => {
                tracing::warn!(
                    sends = engine.sends.len(),
                    writes = engine.writes.len(),
                    "drain timeout: stopping with work unfinished; it is read again on restart"
                );
                break;
            }
        }
    }
    engine.sample();
    drop(engine);
    for task in shard_tasks {
        task.abort();
    }
    // Flushing and the final commit block on librdkafka.
    tokio::task::spawn_blocking(move || {
        if let Err(err) = ingest.commit_now() {
            tracing::warn!(error = %err, "final commit failed; the stored offsets are committed by the next owner");
        }
        drop(ingest);
    })
    .await
    .context("final commit")?;
    tracing::info!("engine stopped");
    Ok(())
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Last values of the scheduler's counters, to add only the difference.
#[derive(Default)]
struct Sampled {
    throttled: [u64; 3],
}

struct Engine {
    setup: EngineSetup,
    clock: TokioClock,
    ingest: Arc<Ingest>,
    output: Arc<Output>,
    sender: Sender,
    scheduler: Scheduler<Pending>,
    registry: Arc<WabaRegistry>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// Per partition, jobs out of the scheduler and not yet acknowledged
    /// (requests in flight and results being written): a revoked partition
    /// is released once this reaches zero.
    outstanding: HashMap<i32, usize>,
    /// Partitions being taken away: their jobs are no longer sent.
    revoking: HashSet<i32>,
    /// WABAs halted for a bad token, so that the alert is logged once.
    halted: HashSet<u64>,
    /// Stopping: no new records, no new sends.
    draining: bool,
    sends: FuturesUnordered<Boxed<Answered>>,
    writes: FuturesUnordered<Boxed<(i32, i64)>>,
    sampled: Sampled,
}

impl Engine {
    fn on_record(&mut self, record: Record) {
        self.metrics.jobs_consumed.inc();
        let received_at = Utc::now();
        let job = match Job::parse(&record.payload, &self.setup.parse) {
            Ok(job) => job,
            Err(err) => {
                self.metrics.dlq.with_label_values(&[err.reason()]).inc();
                tracing::debug!(partition = record.partition, offset = record.offset, error = %err, "dead letter");
                let dead = DlqRecord::new(
                    err.to_string(),
                    &self.setup.kafka.jobs_topic,
                    record.partition,
                    record.offset,
                    record.key.as_deref(),
                    &record.payload,
                );
                self.write_dead_letter(record, dead.to_json());
                return;
            }
        };
        let pending = Pending {
            job,
            partition: record.partition,
            offset: record.offset,
            received_at,
            last_error: None,
        };
        match self.route(&pending.job) {
            Err(reason) => {
                self.metrics.rejected.with_label_values(&[reason.code()]).inc();
                let error = ResultError {
                    code: ErrorCode::Engine(reason.code().into()),
                    message: reason.to_string(),
                    retryable: false,
                };
                self.finish(pending, Status::Rejected, None, Some(error), 0);
            }
            Ok((waba, mps)) => {
                let now = self.clock.now();
                let envelope = Envelope {
                    phone: pending.job.phone_number_id.get(),
                    recipient: pending.job.to.get(),
                    waba,
                    mps,
                    not_before: pending.job.not_before.map(|at| self.moment_of(now, at)),
                    expires_at: pending.job.expires_at.map(|at| self.moment_of(now, at)),
                    job: pending,
                };
                // Fails only while shutting down; the record is then read again.
                let _ = self.scheduler.send(Command::Enqueue(envelope));
            }
        }
    }

    /// Which WABA sends this job and at what rate, or why it is not accepted.
    fn route(&self, job: &Job) -> Result<(u64, u32), RejectReason> {
        match self.setup.phones.get(&job.phone_number_id.get()) {
            Some(phone) => match job.waba_id {
                Some(waba) if waba.get() != phone.waba => Err(RejectReason::WabaMismatch),
                _ => Ok((phone.waba, phone.mps)),
            },
            None if self.setup.strict_phones => Err(RejectReason::UnknownPhoneNumber),
            None => {
                let waba = job.waba_id.ok_or(RejectReason::UnknownWaba)?.get();
                if self.token(waba).is_none() {
                    return Err(RejectReason::UnknownWaba);
                }
                let label = job.phone_number_id.to_string();
                let label = self.metrics.phone_label(&label);
                self.metrics
                    .phone_rate_limit
                    .with_label_values(&[label])
                    .set(i64::from(self.setup.default_mps));
                Ok((waba, self.setup.default_mps))
            }
        }
    }

    fn token(&self, waba: u64) -> Option<&AccessToken> {
        self.setup.wabas.get(&waba).map(|w| &w.token).or(self.setup.default_token.as_ref())
    }

    /// A wall-clock instant as a scheduler moment (never before `now`).
    fn moment_of(&self, now: Moment, at: DateTime<Utc>) -> Moment {
        match (at - Utc::now()).to_std() {
            Ok(ahead) => now + ahead,
            Err(_) => now,
        }
    }

    fn on_ready(&mut self, batch: Vec<Ready<Pending>>) {
        for item in batch {
            match item {
                Ready::Ready(Due::Send(dispatch)) => self.start_send(dispatch),
                Ready::Ready(Due::Expired { ticket, job, attempts }) => {
                    let _ = self.scheduler.send(Command::Finish(ticket));
                    self.finish(job, Status::Expired, None, None, attempts);
                }
                Ready::GaveUp { job, attempts, .. } => {
                    let last = job.last_error.clone();
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
                    self.finish(job, Status::Failed, None, Some(error), attempts);
                }
            }
        }
    }

    fn start_send(&mut self, dispatch: Dispatch<Pending>) {
        let partition = dispatch.job.partition;
        if self.draining || self.revoking.contains(&partition) {
            // Not ours to send any more: the record is read again by its next
            // owner (or by us after a restart).
            let _ = self.scheduler.send(Command::Finish(dispatch.ticket));
            return;
        }
        let Some(token) = self.token(dispatch.waba).cloned() else {
            // Routing accepted the job only with a token; kept for safety.
            let _ = self.scheduler.send(Command::Finish(dispatch.ticket));
            return;
        };
        self.metrics.queue_wait.observe(dispatch.queued.as_secs_f64());
        self.metrics.inflight.inc();
        *self.outstanding.entry(partition).or_default() += 1;
        let sender = self.sender.clone();
        let body: Bytes = dispatch.job.job.request_body();
        let phone: NumericId = dispatch.job.job.phone_number_id;
        let attempt = dispatch.attempt;
        self.sends.push(Box::pin(async move {
            let started = Instant::now();
            let outcome = sender.send(phone, &token, body, attempt).await;
            Answered { dispatch, outcome, latency: started.elapsed() }
        }));
    }

    fn on_answer(&mut self, answered: Answered) {
        let Answered { dispatch, outcome, latency } = answered;
        let Dispatch { ticket, waba, job: mut pending, attempt, .. } = dispatch;
        self.metrics.inflight.dec();
        self.metrics.send_latency.observe(latency.as_secs_f64());
        self.release(pending.partition);
        match outcome {
            Outcome::Sent { wamid } => {
                let _ = self.scheduler.send(Command::Finish(ticket));
                let label = pending.job.phone_number_id.to_string();
                self.metrics.messages_sent.with_label_values(&[self.metrics.phone_label(&label)]).inc();
                self.finish(pending, Status::Sent, Some(wamid), None, attempt);
            }
            Outcome::Failed { reason, error } => {
                let _ = self.scheduler.send(Command::Finish(ticket));
                self.count_api_error(&error);
                self.count_failed(&pending, reason);
                let error = ResultError { code: error.code, message: error.message, retryable: false };
                self.finish(pending, Status::Failed, None, Some(error), attempt);
            }
            Outcome::Retry { scope, after, reason, error } => {
                self.count_api_error(&error);
                self.metrics.retries.with_label_values(&[reason.label()]).inc();
                if reason == wabulk_model::RetryReason::Timeout {
                    self.metrics.unknown_outcome_retries.inc();
                }
                if self.draining || self.revoking.contains(&pending.partition) {
                    let _ = self.scheduler.send(Command::Finish(ticket));
                    return;
                }
                pending.last_error = Some(error);
                let _ = self.scheduler.send(Command::Retry { ticket, job: pending, scope, reason, after });
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
                let _ = self.scheduler.send(Command::Halt { ticket, job: pending });
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

    /// Writes the job's one final result; its offset is done once Kafka has it.
    fn finish(
        &mut self,
        pending: Pending,
        status: Status,
        wamid: Option<String>,
        error: Option<ResultError>,
        attempts: u32,
    ) {
        self.metrics.results.with_label_values(&[status_label(status)]).inc();
        let job = pending.job;
        let result = JobResult {
            id: job.id,
            phone_number_id: job.phone_number_id.to_string(),
            waba_id: job
                .waba_id
                .map(|w| w.to_string())
                .or_else(|| self.setup.phones.get(&job.phone_number_id.get()).map(|p| p.waba.to_string())),
            to: job.to.to_string(),
            status,
            wamid,
            error,
            attempts,
            received_at: pending.received_at,
            finished_at: Utc::now(),
            metadata: job.metadata,
        };
        let (partition, offset) = (pending.partition, pending.offset);
        *self.outstanding.entry(partition).or_default() += 1;
        let output = Arc::clone(&self.output);
        let json = result.to_json();
        self.writes.push(Box::pin(async move {
            acknowledged(|| output.result(&result.id, json.clone())).await;
            (partition, offset)
        }));
    }

    fn write_dead_letter(&mut self, record: Record, json: Vec<u8>) {
        *self.outstanding.entry(record.partition).or_default() += 1;
        let output = Arc::clone(&self.output);
        self.writes.push(Box::pin(async move {
            acknowledged(|| output.dead_letter(record.key.as_deref(), json.clone())).await;
            (record.partition, record.offset)
        }));
    }

    fn on_written(&mut self, partition: i32, offset: i64) {
        self.ingest.done(partition, offset);
        self.release(partition);
    }

    /// One obligation of the partition is over; a revoked partition with
    /// none left is released to its next owner.
    fn release(&mut self, partition: i32) {
        let left = self.outstanding.entry(partition).or_default();
        *left = left.saturating_sub(1);
        if *left == 0 && self.revoking.contains(&partition) {
            self.ingest.forget(partition);
        }
    }

    fn on_assignment(&mut self, assignment: Assignment) {
        match assignment {
            Assignment::Assigned(partitions) => {
                tracing::info!(?partitions, "partitions assigned");
                for partition in partitions {
                    self.revoking.remove(&partition);
                }
            }
            Assignment::Revoked(partitions) => {
                tracing::info!(?partitions, "partitions revoked: dropping their waiting jobs");
                let revoked: HashSet<i32> = partitions.iter().copied().collect();
                let _ = self
                    .scheduler
                    .send(Command::Purge(Arc::new(move |p: &Pending| revoked.contains(&p.partition))));
                for partition in partitions {
                    self.revoking.insert(partition);
                    if self.outstanding.get(&partition).copied().unwrap_or(0) == 0 {
                        self.ingest.forget(partition);
                    }
                }
            }
        }
    }

    fn start_draining(&mut self) {
        self.draining = true;
        self.health.set_consuming(false);
    }

    /// Refreshes the gauges and adds the scheduler's throttle counts.
    fn sample(&mut self) {
        let metrics = &self.metrics;
        let stats = self.scheduler.stats();
        metrics.backlog.set(stats.held() as i64);
        let throttled = [
            stats.throttled_phone.load(std::sync::atomic::Ordering::Relaxed),
            stats.throttled_pair.load(std::sync::atomic::Ordering::Relaxed),
            stats.throttled_waba.load(std::sync::atomic::Ordering::Relaxed),
        ];
        for (i, limit) in ["phone", "pair", "waba"].into_iter().enumerate() {
            metrics.throttled.with_label_values(&[limit]).inc_by(throttled[i] - self.sampled.throttled[i]);
        }
        self.sampled.throttled = throttled;
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

/// Retries a write until Kafka acknowledges it: a result is never dropped.
/// librdkafka already retries inside `message.timeout.ms`; this covers what
/// outlasts it (a long broker outage).
async fn acknowledged<F, Fut>(write: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), wabulk_kafka::KafkaError>>,
{
    let mut backoff = Duration::from_millis(200);
    while let Err(err) = write().await {
        tracing::warn!(error = %err, "a result was not acknowledged by Kafka; writing it again");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
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
