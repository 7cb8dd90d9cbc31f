//! The data path, wired in one place.
//!
//! One job's life, in the order the code runs:
//!
//! 1. `ingest.rs`, [`IngestStage::on_record`](ingest): a Kafka record is
//!    parsed (bad input → [`Settle::dead_letter`](settle)) and routed to its
//!    WABA and tier (not acceptable → the `rejected` exit), then enqueued in
//!    the scheduler (`wabulk-scheduler`), which holds it until every limit
//!    allows it.
//! 2. `send.rs`, `SendStage::on_ready` → `start_send`: the ready job's
//!    request goes out on its own task through the number's departure gate
//!    (`wabulk-sender`).
//! 3. `send.rs`, `SendStage::on_answer`: the classified outcome either goes
//!    back to the scheduler (retry, halt) or ends the job.
//! 4. `settle.rs`, [`Settle::exit`](settle): the only place a job ends: its
//!    one final result is written, counted, and once Kafka has acknowledged
//!    it, the record's lease is released as done (`wabulk-kafka`), which
//!    lets its offset be committed.
//!
//! Requests and Kafka writes run on their own tasks so that both cores do
//! the JSON, HTTP/2 and librdkafka work; the stage loops only keep the books.
//! One [`Shutdown`] stops every stage (`shutdown.rs`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use wabulk_kafka::{create_parking_topics, topic_partition_counts, Ingest, Lease, Mover, Output, Parker};
use wabulk_model::Job;
use wabulk_scheduler::{Scheduler, TokioClock, WabaRegistry};
use wabulk_sender::{SchedulingDelay, Sender};
use wabulk_telemetry::{Health, Metrics, PARKING_MOVES};

use crate::setup::{EngineSetup, Parking};
use crate::writes::Refusals;

mod account;
mod backlog;
mod campaigns;
mod ingest;
mod send;
mod settle;
mod shutdown;
mod whole_topic;

pub use shutdown::Shutdown;

use ingest::IngestStage;
use send::SendStage;
use settle::Settle;

/// How long the parking mover may take to finish its writes at a stop.
const PARKING_STOP: Duration = Duration::from_secs(5);

/// How often the parking mover's counts are sampled.
const MOVER_SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// How often the records parked in this instance's tier partitions are
/// counted (a few round trips to the brokers each time).
const PARKED_SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Creates the parking topics (as many partitions as the jobs topic; the
/// existing ones are left as they are), connects the parker and starts the
/// mover, which reports each return's lateness to `metrics`.
async fn start_parking(
    setup: &EngineSetup,
    parking: &Parking,
    metrics: &Metrics,
) -> anyhow::Result<(Arc<Parker>, Arc<Mover>)> {
    let kafka = &setup.kafka;
    let tier_topics = parking.settings.tier_topics();
    let counts = {
        let (brokers, extra) = (kafka.brokers.clone(), kafka.extra.clone());
        let mut topics = tier_topics.clone();
        topics.push(kafka.jobs_topic.clone());
        tokio::task::spawn_blocking(move || {
            topic_partition_counts(&brokers, &extra, &topics, Duration::from_secs(10))
        })
        .await
        .context("topic metadata")?
        .context("cannot read the cluster's topics")?
    };
    let partitions = *counts
        .get(&kafka.jobs_topic)
        .with_context(|| format!("cannot read the partitions of {}", kafka.jobs_topic))?;
    let missing: Vec<&String> = tier_topics.iter().filter(|topic| !counts.contains_key(*topic)).collect();
    if !missing.is_empty() {
        tracing::info!(topics = ?missing, "creating the parking topics");
        create_parking_topics(kafka, &parking.settings, partitions, Duration::from_secs(10))
            .await
            .with_context(|| {
                format!(
                    "cannot create the parking topics {missing:?}; create them (as many partitions as \
                     {}) or set parking.enabled = false",
                    kafka.jobs_topic
                )
            })?;
    }
    let parker = Parker::connect(kafka, &parking.settings).context("cannot start the parking producer")?;
    let mover = Mover::start(kafka, &parking.settings).context("cannot start the parking mover")?;
    let lateness = metrics.parked_return_lateness.clone();
    mover.set_lateness_listener(Box::new(move |late| lateness.observe(late.as_secs_f64())));
    tracing::info!(
        prefix = %parking.settings.topic_prefix,
        park_after = ?parking.park_after,
        "parking: jobs due later than park_after wait in Kafka"
    );
    Ok((Arc::new(parker), Arc::new(mover)))
}

/// Keeps the parking mover's metrics up to date until `shutdown` begins.
async fn sample_parked(mover: Arc<Mover>, metrics: Arc<Metrics>, shutdown: Shutdown) {
    let mut counted_at: Option<tokio::time::Instant> = None;
    loop {
        let stats = mover.stats();
        let moves = [
            stats.tiers.iter().map(|t| t.returned).sum::<u64>(),
            stats.tiers.iter().map(|t| t.reparked).sum(),
            stats.tiers.iter().map(|t| t.unreadable).sum(),
        ];
        for (kind, total) in PARKING_MOVES.into_iter().zip(moves) {
            let counter = metrics.parking_moves.with_label_values(&[kind]);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        metrics.parking_mover_in_flight.set(stats.in_flight as i64);
        if counted_at.is_none_or(|at| at.elapsed() >= PARKED_SAMPLE_EVERY) {
            counted_at = Some(tokio::time::Instant::now());
            let counting = Arc::clone(&mover);
            let counted = tokio::task::spawn_blocking(move || counting.parked(Duration::from_secs(2))).await;
            match counted {
                Ok(Ok(tiers)) => metrics.parked_jobs.set(tiers.iter().map(|tier| tier.records).sum()),
                Ok(Err(error)) => tracing::debug!(%error, "could not count the parked records"),
                Err(_) => return,
            }
        }
        tokio::select! {
            () = tokio::time::sleep(MOVER_SAMPLE_EVERY) => {}
            () = shutdown.begun() => return,
        }
    }
}

/// A job inside the engine, from its record to its exit.
#[derive(Debug)]
pub struct Pending {
    job: Job,
    /// The record's hold on its offset: done once the job's exit is
    /// acknowledged by Kafka, dropped with the job otherwise.
    lease: Lease,
    /// The WABA it is sent for (`route`).
    waba: u64,
    received_at: DateTime<Utc>,
    /// Retries that spent an attempt, and those that did not (`RetryBudget`).
    attempts_spent: u32,
    waits: u32,
    /// When it was first parked, for a job that came back from parking.
    parked_since: Option<DateTime<Utc>>,
    /// Its share of its number's load (`backlog`); `None` for a job that
    /// never reached the scheduler.
    _hold: Option<backlog::Hold>,
}

impl Pending {
    /// A job just read: no try yet, holding nothing of its number's load.
    fn new(
        job: Job,
        lease: Lease,
        waba: u64,
        received_at: DateTime<Utc>,
        parked_since: Option<DateTime<Utc>>,
    ) -> Self {
        Pending { job, lease, waba, received_at, attempts_spent: 0, waits: 0, parked_since, _hold: None }
    }
}

/// A change to a running engine's configuration (a reload, `crate::reload`).
/// Tokens change through [`EngineSetup::tokens`] directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveChange {
    /// The number's configured tier.
    Tier { phone: u64, mps: u32 },
    /// The WABA's hourly call cap.
    Cap { waba: u64, hourly_cap: u64 },
}

/// Runs the engine until `stop` resolves (or the Kafka consumer fails), then
/// stops reading and sending, lets the requests in flight and the results
/// being written finish until the drain deadline (`drain_timeout` after the
/// stop began), and commits.
pub async fn run(
    setup: EngineSetup,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    run_with_changes(setup, metrics, health, stop, mpsc::unbounded_channel().1).await
}

/// [`run`], applying the [`LiveChange`]s that arrive on `changes` while it
/// runs.
pub async fn run_with_changes(
    setup: EngineSetup,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: impl Future<Output = ()>,
    changes: mpsc::UnboundedReceiver<LiveChange>,
) -> anyhow::Result<()> {
    let setup = Arc::new(setup);
    let clock = TokioClock::new();
    let shutdown = Shutdown::new(setup.drain_timeout);
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
    let (parker, mover) = match &setup.parking {
        Some(parking) => {
            let (parker, mover) = start_parking(&setup, parking, &metrics).await?;
            let sampler =
                tokio::spawn(sample_parked(Arc::clone(&mover), Arc::clone(&metrics), shutdown.clone()));
            (Some(parker), Some((mover, sampler)))
        }
        None => (None, None),
    };
    let settle = Settle {
        setup: Arc::clone(&setup),
        output,
        parker,
        metrics: Arc::clone(&metrics),
        refusals: Arc::new(Refusals::new(Arc::clone(&metrics), Arc::clone(&health), &setup.kafka.extra)),
        jobs_topic: Arc::from(setup.kafka.jobs_topic.as_str()),
    };

    let account_events =
        whole_topic::follow(&setup, &setup.account_events_topic, "account events", &shutdown).await;
    let controls = whole_topic::follow(&setup, &setup.control_topic, "campaign controls", &shutdown).await;
    let (capped_tx, capped_rx) = mpsc::unbounded_channel();
    let campaigns = Arc::new(campaigns::CampaignStates::default());
    let ingest_stage = IngestStage {
        setup: Arc::clone(&setup),
        registry: Arc::clone(&registry),
        clock,
        ingest: Arc::clone(&ingest),
        scheduler: scheduler.clone(),
        settle: settle.clone(),
        metrics: Arc::clone(&metrics),
        backlogs: backlog::Backlogs::new(
            setup.parking.as_ref().map_or(Duration::MAX, |parking| parking.park_after),
            setup.kafka.max_in_memory_bytes,
        ),
        capped_tx: capped_tx.clone(),
        mis_keyed_logged: Default::default(),
        campaigns: Arc::clone(&campaigns),
        held_jobs: Default::default(),
        accounts: account::Accounts::new(
            setup.parking.as_ref().map_or(Duration::MAX, |parking| parking.held_recheck),
        ),
    };
    let inputs = ingest::Inputs { capped: capped_rx, account_events, controls, live_changes: changes };
    let ingest_task = tokio::spawn(ingest_stage.run(shutdown.clone(), inputs));

    let (answers_tx, answers_rx) = mpsc::unbounded_channel();
    let (taken_tx, taken_rx) = mpsc::unbounded_channel();
    let send_stage = SendStage {
        setup: Arc::clone(&setup),
        clock,
        sender,
        scheduler,
        registry,
        settle,
        ingest: Arc::clone(&ingest),
        metrics: Arc::clone(&metrics),
        health: Arc::clone(&health),
        shutdown: shutdown.clone(),
        answers_tx,
        taken_tx,
        campaigns,
        stopped_tx: capped_tx,
        halted: HashMap::new(),
        token_checks: tokio::task::JoinSet::new(),
        gates: HashMap::new(),
        tiers_seen: 0,
        tokens_seen: setup.tokens.version(),
        scheduling_delay: SchedulingDelay::start(Arc::clone(&setup.scheduler.window_allowance)),
        sampled: [0; 3],
    };
    health.set_consuming(true);
    health.set_sending(true);
    tracing::info!(shards = setup.shards, "engine started");
    let send_task = tokio::spawn(send_stage.run(ready_rx, answers_rx, assignments, taken_rx));
    tokio::select! {
        () = stop => shutdown.begin(),
        () = shutdown.begun() => {}
    }
    health.set_consuming(false);

    // Both stages drain until the one deadline; the ingest stage's last
    // writes (dead letters, rejections) within it too.
    let _ = send_task.await;
    let failure = match ingest_task.await {
        Ok((failure, mut writes)) => {
            if !shutdown.within_deadline(async { while writes.join_next().await.is_some() {} }).await {
                tracing::warn!(
                    writes = writes.len(),
                    "drain timeout: results still being written are read again on restart"
                );
            }
            failure
        }
        Err(_) => None,
    };
    for task in shard_tasks {
        task.abort();
    }
    if let Some((mover, sampler)) = mover {
        let _ = sampler.await;
        // What it holds past this is moved again by the tiers' next owner.
        if let Some(mover) = Arc::into_inner(mover) {
            tokio::task::spawn_blocking(move || mover.shutdown(PARKING_STOP))
                .await
                .context("parking stop")?;
        }
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
    match failure {
        Some(error) => Err(error).context("the Kafka consumer stopped"),
        None => Ok(()),
    }
}
