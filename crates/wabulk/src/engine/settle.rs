//! Where every job ends: [`Settle::exit`] is the only place that turns a job
//! and its [`Exit`] into the record written to Kafka, counts it, and marks
//! releases its lease as done once Kafka has the record. Records that never became a
//! job end in [`Settle::dead_letter`].

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::task::JoinSet;
use wabulk_kafka::{Lease, Output, Parker, Record};
use wabulk_model::{DlqRecord, Exit, JobResult};
use wabulk_telemetry::Metrics;

use super::Pending;
use crate::setup::EngineSetup;
use crate::writes::{Refusals, Topic};

/// A record to park: its key, its bytes, its lease, when it is due and
/// when it was first parked (if it was before).
type ToPark = (Option<Vec<u8>>, Vec<u8>, Lease, DateTime<Utc>, Option<DateTime<Utc>>);

/// Writes results, parked copies and dead letters, each on its own task,
/// and releases the job's lease as done once Kafka has acknowledged it.
#[derive(Clone)]
pub(super) struct Settle {
    pub(super) setup: Arc<EngineSetup>,
    pub(super) output: Arc<Output>,
    /// `None` when parking is off.
    pub(super) parker: Option<Arc<Parker>>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) refusals: Arc<Refusals>,
    pub(super) jobs_topic: Arc<str>,
}

impl Settle {
    /// The job ended with `exit` after `attempts` requests: counts it, writes
    /// its one final result, and releases its lease as done once Kafka has it.
    pub(super) fn exit(&self, writes: &mut JoinSet<()>, pending: Pending, exit: Exit, attempts: u32) {
        let Pending { job, lease, received_at, .. } = pending;
        self.metrics.count_exit(job.phone_number_id.get(), &exit);
        let status = exit.status();
        let (wamid, error) = exit.into_result_fields();
        let waba_id = job
            .waba_id
            .map(|waba| waba.get())
            .or_else(|| self.setup.phones.get(&job.phone_number_id.get()).map(|phone| phone.waba));
        let result = JobResult {
            id: job.id,
            phone_number_id: job.phone_number_id.to_string(),
            waba_id: waba_id.map(|waba| waba.to_string()),
            to: job.to.to_string(),
            status,
            wamid,
            error,
            attempts,
            received_at,
            finished_at: Utc::now(),
            metadata: job.metadata,
            campaign: job.campaign,
        };
        let this = self.clone();
        writes.spawn(async move {
            let json = result.to_json();
            let key = result.id.as_str();
            let _ =
                this.refusals.write(Topic::Results, false, || this.output.result(key, json.clone())).await;
            // Counted once Kafka has it, so the metric never runs ahead of the topic.
            this.metrics.count_result(status);
            if let Some(campaign) = &result.campaign {
                this.metrics.count_campaign(campaign, status);
            }
            lease.done();
        });
    }

    /// The job leaves this instance until `due`: its record (key and bytes as
    /// read) goes to the parking topics, and once Kafka has it the lease is
    /// released as done; the record comes back on the jobs topic when due
    /// (to whichever instance then owns its number). Not an exit: the job is
    /// not finished. Call only when [`Settle::can_park`].
    pub(super) fn park(
        &self,
        writes: &mut JoinSet<()>,
        record: Record,
        lease: Lease,
        due: DateTime<Utc>,
        reason: &'static str,
    ) {
        let since = record.returned.as_ref().and_then(|returned| parked_since(returned.since_ms));
        self.park_all(writes, vec![(record.key, record.payload, lease, due, since)], reason);
    }

    /// Whether parking is on.
    pub(super) fn can_park(&self) -> bool {
        self.parker.is_some()
    }

    /// Parks jobs already parsed (taken back from the scheduler) until
    /// `due`, written again as Job JSON, keyed by their number, in the order
    /// given (so that each pair keeps its order). Each comes back at its
    /// `due`. Call only when [`Settle::can_park`].
    pub(super) fn park_jobs(
        &self,
        writes: &mut JoinSet<()>,
        jobs: Vec<(Pending, DateTime<Utc>)>,
        reason: &'static str,
    ) {
        let records = jobs
            .into_iter()
            .map(|(p, due)| {
                let key = p.job.phone_number_id.to_string().into_bytes();
                (Some(key), p.job.to_json(), p.lease, due, p.parked_since)
            })
            .collect();
        self.park_all(writes, records, reason);
    }

    /// One task writes the batch: each write is queued in the order given
    /// (the parker's producer keeps it per partition), then each lease is
    /// released once its copy is acknowledged.
    fn park_all(&self, writes: &mut JoinSet<()>, records: Vec<ToPark>, reason: &'static str) {
        let Some(parker) = self.parker.clone() else { return };
        let this = self.clone();
        writes.spawn(async move {
            let parks = records.iter().map(|(key, payload, _, due, since)| {
                let (parker, refusals) = (&parker, &this.refusals);
                async move {
                    let since = since.map(Into::into);
                    let write = || parker.park(key.as_deref(), payload, (*due).into(), reason, since);
                    let _ = refusals.write(Topic::Parked, false, write).await;
                }
            });
            futures::future::join_all(parks).await;
            this.metrics.jobs_parked.with_label_values(&[reason]).inc_by(records.len() as u64);
            for (_, _, lease, _, _) in records {
                lease.done();
            }
        });
    }

    /// The record's dead letter: its original bytes, cut only if Kafka
    /// could not take them whole.
    pub(super) fn dead_letter(&self, writes: &mut JoinSet<()>, record: Record, lease: Lease, error: String) {
        let this = self.clone();
        writes.spawn(async move {
            let key = record.key.as_deref();
            let build = |cap| {
                DlqRecord::with_payload_cap(
                    &*error,
                    &*this.jobs_topic,
                    record.partition,
                    record.offset,
                    key,
                    &record.payload,
                    cap,
                )
            };
            this.refusals.dead_letter(build, |json| this.output.dead_letter(key, json)).await;
            lease.done();
        });
    }
}

/// A `wabulk-parked-since` time as a wall-clock instant.
pub(super) fn parked_since(since_ms: Option<u64>) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(i64::try_from(since_ms?).ok()?)
}
