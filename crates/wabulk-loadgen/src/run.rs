//! [`run`]: writes a spec's records to Kafka at its rate and waits for every
//! acknowledgement. One loop, top to bottom: drain acknowledgements, send
//! what the pacer says is due (bounded by the sends in flight), then sleep
//! until the next acknowledgement or the next due record.

use std::collections::BTreeMap;
use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use chrono::Utc;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::{JoinError, JoinSet};
use tokio::time::{sleep_until, Instant};
use wabulk_kafka::{JobWriter, KafkaError};

use crate::generate::generate_at;
use crate::pacer::Pacer;
use crate::{LoadSpec, LoadgenError};

/// The default cap on sends in flight: enough to keep librdkafka's batches
/// full at 50k+ records/s with a few ms of acknowledgement latency, small
/// enough to bound memory (~10k payloads of a few hundred bytes). Raising it
/// helps only when acknowledgements are slow; librdkafka's own queue
/// (100k messages by default) is the hard ceiling.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;

/// How [`run_with`] behaves, beyond the spec.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Draw a progress bar (rate, ETA) on stderr; indicatif hides it when
    /// stderr is not a terminal.
    pub progress: bool,
    /// Use this bar instead (e.g. one of the demo's `MultiProgress`); its
    /// length is set to the spec's `jobs`. Implies `progress`.
    pub progress_bar: Option<ProgressBar>,
    /// Fill [`LoadReport::job_ids`]; costs one `String` per job.
    pub collect_job_ids: bool,
    /// Most records sent but not yet acknowledged; at least 1.
    pub max_in_flight: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            progress: false,
            progress_bar: None,
            collect_job_ids: false,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// What a run wrote; every count is of records Kafka acknowledged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// Records written, malformed ones included (= `spec.jobs`).
    pub written: u64,
    /// Of those, records that are not valid jobs (the engine's DLQ count).
    pub malformed: u64,
    /// Valid jobs per `phone_number_id`, bursts included; adds up to
    /// `written − malformed`, the number of results to expect.
    pub per_number: BTreeMap<String, u64>,
    /// Valid jobs that belong to a burst.
    pub burst_jobs: u64,
    /// Valid jobs with `not_before` set.
    pub with_not_before: u64,
    /// Those jobs' ids and `not_before`s, in write order.
    pub not_befores: Vec<(String, chrono::DateTime<chrono::Utc>)>,
    /// Valid jobs with `expires_at` set.
    pub with_expires_at: u64,
    /// From the first send to the last acknowledgement.
    pub elapsed: Duration,
    /// `written / elapsed`, records per second.
    pub achieved_rate: f64,
    /// Ids of the valid jobs in write order, when
    /// [`RunOptions::collect_job_ids`] is set; empty otherwise.
    pub job_ids: Vec<String>,
}

/// Writes the spec's records to `topic`, keyed by `phone_number_id`, at
/// `spec.rate`, with at most [`DEFAULT_MAX_IN_FLIGHT`] sends in flight.
/// Returns once every record is acknowledged; fails at the first record
/// Kafka refuses (records already handed to librdkafka may still be
/// written).
///
/// Records reach librdkafka in write order, so each number's records are
/// in generation order in its partition, as long as librdkafka's local
/// queue (`queue.buffering.max.messages`, 100,000 by default) has room for
/// the sends in flight: a send that finds it full is retried later, and may
/// then overtake or be overtaken.
pub async fn run(
    spec: &LoadSpec,
    writer: &JobWriter,
    topic: &str,
    progress: bool,
) -> Result<LoadReport, LoadgenError> {
    run_with(spec, writer, topic, &RunOptions { progress, ..RunOptions::default() }).await
}

/// [`run`] with every option.
pub async fn run_with(
    spec: &LoadSpec,
    writer: &JobWriter,
    topic: &str,
    options: &RunOptions,
) -> Result<LoadReport, LoadgenError> {
    spec.validate()?;
    let max_in_flight = options.max_in_flight.max(1);
    let bar = progress_bar(spec.jobs, options);
    let topic: Arc<str> = Arc::from(topic);
    let mut records = generate_at(spec, Utc::now());
    let mut report = LoadReport::default();
    let mut left = spec.jobs;
    let mut acknowledged = 0u64;
    let mut in_flight: JoinSet<Result<(), KafkaError>> = JoinSet::new();
    let started = Instant::now();
    let mut pacer = spec.rate.map(|rate| Pacer::new(rate, started));

    loop {
        // Acknowledgements first: they free room for the next batch and
        // bound what is held in memory.
        while let Some(done) = in_flight.try_join_next() {
            acknowledge(done, &mut acknowledged)?;
        }

        // Send what is due, as long as there is room.
        if left > 0 {
            let room = (max_in_flight - in_flight.len()) as u64;
            let due = match pacer.as_mut() {
                Some(pacer) => pacer.due(Instant::now()),
                None => u64::MAX,
            };
            let batch = due.min(room).min(left);
            for record in records.by_ref().take(batch as usize) {
                account(&mut report, &record, options.collect_job_ids);
                let writer = writer.clone();
                let topic = Arc::clone(&topic);
                let mut send = Box::pin(async move {
                    writer.send(&topic, Some(&record.key), &record.payload).await.map(|_| ())
                });
                // librdkafka takes the record on the send's first poll. Spawned
                // tasks start in any order, so poll it here, in write order:
                // one number's records must reach the partition in the order
                // they were generated (CONTRACT §5 order holds from here on).
                match poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await {
                    Poll::Ready(result) => acknowledge(Ok(result), &mut acknowledged)?,
                    Poll::Pending => {
                        in_flight.spawn(send);
                    }
                }
            }
            if let Some(pacer) = pacer.as_mut() {
                pacer.release(batch);
            }
            left -= batch;
        }
        bar.set_position(acknowledged);

        if left == 0 && in_flight.is_empty() {
            break;
        }
        // Wake for the pacer only when a due record could be sent: with no
        // room, only an acknowledgement can make progress.
        let next_due =
            pacer.as_ref().filter(|_| left > 0 && in_flight.len() < max_in_flight).map(Pacer::next_due);
        tokio::select! {
            // Acknowledgements before new sends, as above.
            biased;
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                acknowledge(done, &mut acknowledged)?;
            }
            () = sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {}
        }
    }

    report.written = acknowledged;
    report.elapsed = started.elapsed();
    let seconds = report.elapsed.as_secs_f64();
    report.achieved_rate = if seconds > 0.0 { acknowledged as f64 / seconds } else { 0.0 };
    bar.set_position(acknowledged);
    bar.finish();
    Ok(report)
}

fn acknowledge(
    done: Result<Result<(), KafkaError>, JoinError>,
    acknowledged: &mut u64,
) -> Result<(), LoadgenError> {
    match done {
        Ok(Ok(())) => {
            *acknowledged += 1;
            Ok(())
        }
        Ok(Err(source)) => Err(LoadgenError::Send { acknowledged: *acknowledged, source }),
        Err(error) => Err(LoadgenError::Task(error)),
    }
}

/// Counts a record as it is sent; `run` returns the report only once all of
/// them are acknowledged, so these are acknowledged counts by then.
fn account(report: &mut LoadReport, record: &crate::GeneratedRecord, collect_job_ids: bool) {
    if record.malformed {
        report.malformed += 1;
        return;
    }
    *report.per_number.entry(record.phone_number_id.clone()).or_default() += 1;
    report.burst_jobs += u64::from(record.burst.is_some());
    report.with_not_before += u64::from(record.not_before.is_some());
    if let (Some(id), Some(at)) = (&record.job_id, record.not_before) {
        report.not_befores.push((id.clone(), at));
    }
    report.with_expires_at += u64::from(record.expires_at.is_some());
    if collect_job_ids {
        if let Some(id) = &record.job_id {
            report.job_ids.push(id.clone());
        }
    }
}

fn progress_bar(jobs: u64, options: &RunOptions) -> ProgressBar {
    if let Some(bar) = &options.progress_bar {
        // The caller's bar keeps the caller's style.
        bar.set_length(jobs);
        return bar.clone();
    }
    if !options.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(jobs), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{prefix}[{elapsed_precise}] {wide_bar} {human_pos}/{human_len} acked, {per_sec}, ETA {eta}",
    )
    .expect("the template is valid");
    bar.set_style(style);
    bar
}
