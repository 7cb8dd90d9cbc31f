//! The engine's metric set: every metric of CONTRACT §9 plus what an operator
//! needs to answer "why is it slow?" (docs/metrics.md is the written spec).
//!
//! Everything lives in one `prometheus::Registry` owned by [`Metrics`], never
//! in the crate's global registry, so that tests and the `demo` subcommand can
//! run several engines in one process without their counters mixing.
//!
//! Labels are bounded. The reason/code/limit/status values come from closed
//! enums (wabulk-model's `RetryReason::label()`, `FailReason::label()`,
//! `JobError::reason()`, `RejectReason::code()`); `phone_number_id` and
//! `waba_id` are bounded by the configuration (and, for numbers that are not
//! configured, by [`Metrics::phone_label`] / [`Metrics::waba_label`]);
//! `partition` is bounded by the partition count of the jobs topic. Recipients,
//! tokens and API message text never become label values.
//!
//! Hot paths should resolve a labelled child once (`with_label_values`, which
//! hashes the labels and takes a read lock) and keep the returned handle:
//! incrementing it is a single atomic add.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use dashmap::DashMap;

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use wabulk_model::{Exit, RejectReason, RetryReason, Status};

/// The `limit` values of `wabulk_throttled_total` (CONTRACT §9): a fixed set,
/// so the series exist at zero from the start and `rate()` works at once.
pub const THROTTLE_LIMITS: [&str; 3] = ["phone", "pair", "waba"];

/// The `status` values of `wabulk_results_total` (CONTRACT §3), pre-created at
/// zero for the same reason.
pub const RESULT_STATUSES: [&str; 5] = [
    Status::Sent.label(),
    Status::Failed.label(),
    Status::Expired.label(),
    Status::Rejected.label(),
    Status::Cancelled.label(),
];

/// Distinct campaigns with their own `wabulk_campaign_jobs_total` series;
/// the rest count as [`OVERFLOW_LABEL`]. Campaigns come from producers, so
/// their number is not known in advance.
pub const CAMPAIGN_SERIES_CAP: usize = 200;

/// The `reason` values of `wabulk_partitions_paused_by_reason`.
pub const PAUSE_REASONS: [&str; 3] = ["memory", "partition_share", "window"];

/// The `reason` values of `wabulk_jobs_parked_total`.
pub const PARK_REASONS: [&str; 6] = ["not_before", "halted", "backlog", "waba_cap", "account", "paused"];

/// The `change` values of `wabulk_account_changes_total`: what Meta's
/// account events changed in sending.
pub const ACCOUNT_CHANGES: [&str; 4] = ["throughput_upgrade", "hold", "release", "messaging_limit"];

/// The `kind` values of `wabulk_parking_moves_total`.
pub const PARKING_MOVES: [&str; 3] = ["returned", "reparked", "unreadable"];

/// The `reason` values of `wabulk_produce_refusals_total`: the labels of
/// `wabulk_kafka::Refusal` (this crate does not depend on the Kafka one).
pub const PRODUCE_REFUSALS: [&str; 4] = ["too_large", "unknown_topic", "not_authorised", "invalid_record"];

/// The `status` values of `wabulk_statuses_total` that Meta's webhooks
/// report; any other is counted as [`OVERFLOW_LABEL`].
pub const WEBHOOK_STATUSES: [&str; 7] =
    ["sent", "delivered", "read", "failed", "deleted", "warning", "played"];

/// The `outcome` values of `wabulk_webhook_requests_total`.
pub const WEBHOOK_OUTCOMES: [&str; 6] =
    ["ok", "bad_signature", "malformed", "kafka_error", "too_large", "timeout"];

/// The `code` values of `wabulk_status_errors_total`: every code of
/// docs/platform.md's error table (its 200–299 permission range by 200
/// alone: those fail the request, never a later status), then the codes
/// Meta reports only in `failed` statuses. Any other code counts as
/// [`OVERFLOW_LABEL`]. A fixed list, so that the series exist at 0 and a
/// sender cannot grow the label set.
#[rustfmt::skip]
pub const STATUS_ERROR_CODES: [&str; 50] = [
    // Limits.
    "130429", "131056", "80007", "4", "17", "131048", "131057",
    // Transient and media.
    "1", "2", "131000", "131016", "133004", "131053",
    // Token and permission.
    "190", "0", "10", "200",
    // Account locked, payment, blocked, not registered.
    "131031", "131042", "368", "133010", "33",
    // Bad request or template.
    "100", "131008", "131009", "131051", "132000", "132001", "132002", "132003", "132004", "132005",
    "132006", "132007", "132008", "132009", "132010", "132011", "132012", "132013", "132014", "132015",
    "132016",
    // Undeliverable, outside the window, ecosystem limits.
    "131026", "131047", "131049", "130472", "131021",
    // Only in failed statuses: marketing opt-out, media download.
    "131050", "131052",
];

/// The `reason` values of `wabulk_messages_failed_total`: every
/// `FailReason::label()`, then `expired` (what `Exit::failed_reason` answers).
pub use wabulk_model::FAILED_REASONS;

/// The `reason` values of `wabulk_retries_total`: every `RetryReason::label()`.
pub const RETRY_REASONS: [RetryReason; 12] = [
    RetryReason::PairLimit,
    RetryReason::NumberLimit,
    RetryReason::WabaLimit,
    RetryReason::AppLimit,
    RetryReason::SpamLimit,
    RetryReason::NumberUpgrading,
    RetryReason::Transient,
    RetryReason::ServerError,
    RetryReason::Media,
    RetryReason::Timeout,
    RetryReason::Broken,
    RetryReason::Connection,
];

/// The `reason` values of `wabulk_dlq_total` (`JobError::reason()`).
pub const DLQ_REASONS: [&str; 4] = ["too_large", "not_utf8", "malformed", "invalid_field"];

/// The `code` values of `wabulk_rejected_total`: every `RejectReason::code()`.
pub const REJECT_REASONS: [RejectReason; 4] = [
    RejectReason::UnknownPhoneNumber,
    RejectReason::UnknownWaba,
    RejectReason::WabaMismatch,
    RejectReason::NotBeforeTooFar,
];

/// The Graph API error codes the engine acts on other than by failing the
/// job (wabulk-sender's classification): number throughput (130429), pair
/// rate (131056), WABA and app limits (80007, 4, 17), spam limit (131048), a
/// number being upgraded (131057), an invalid token (190). Their
/// `wabulk_api_errors_total` series exist at 0 so that an alert on the first
/// one works; other codes appear when they first occur.
pub const ACTED_ON_API_ERROR_CODES: [&str; 8] =
    ["130429", "131056", "80007", "4", "17", "131048", "131057", "190"];

/// The label value that [`Metrics::phone_label`] and [`Metrics::waba_label`]
/// answer once their budget of distinct values is spent.
pub const OVERFLOW_LABEL: &str = "other";

/// How many distinct `phone_number_id` (and, separately, `waba_id`) values the
/// label guards admit by default. A WABA holds a few dozen numbers at most, so
/// 1000 covers any real deployment; raising it costs ~10 series per number in
/// Prometheus, lowering it folds more numbers into `other`.
pub const DEFAULT_SERIES_CAP: usize = 1000;

/// Send latency buckets, in seconds: a healthy Graph API answers in tens of
/// milliseconds, a struggling one in seconds, and the request timeout
/// (`graph.request_timeout_ms`, 10 s by default) caps what is observed; 30 s
/// leaves room for a raised timeout.
const SEND_LATENCY_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Queue wait buckets, in seconds: from "sent as soon as read" (milliseconds)
/// through pair-limit waits (6 s per message) to WABA hourly-cap waits and
/// `not_before` schedules (up to an hour and beyond, which lands in `+Inf`).
const QUEUE_WAIT_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0];

/// Commit lag buckets, in seconds: from a result's acknowledgement to the
/// acknowledgement of the offset commit that covers it. Commits follow the
/// results within milliseconds (a 10 ms floor plus a round trip to the group
/// coordinator); seconds mean the coordinator is slow or unreachable.
const COMMIT_LAG_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Every metric of CONTRACT §9 plus what ops need to answer "why is it slow?".
/// Labels are bounded: never recipients, tokens or free text.
///
/// Fields are public handles: the engine increments them directly. See
/// docs/metrics.md for what each means and which label values are allowed.
#[derive(Debug)]
pub struct Metrics {
    /// `wabulk_jobs_consumed_total`: records read from the jobs topic (valid or not).
    pub jobs_consumed: IntCounter,
    /// `wabulk_campaign_jobs_total{campaign, status}`: jobs of each campaign
    /// by their result's status (campaigns bounded by
    /// [`CAMPAIGN_SERIES_CAP`]).
    pub campaign_jobs: IntCounterVec,
    /// `wabulk_config_reloads_total{outcome}`: configuration reloads,
    /// `applied` or `refused` (the running configuration then stays).
    pub config_reloads: IntCounterVec,
    /// `wabulk_token_replacements_total`: access tokens replaced while
    /// running (a token file changed, a reload).
    pub token_replacements: IntCounter,
    /// `wabulk_mis_keyed_jobs_total`: valid jobs whose record key is not their
    /// `phone_number_id`, which breaks one owner per number.
    pub mis_keyed_jobs: IntCounter,
    /// `wabulk_messages_sent_total{phone_number_id}`: jobs whose result is `sent`.
    pub messages_sent: IntCounterVec,
    /// `wabulk_messages_failed_total{phone_number_id,reason}`: jobs that ended
    /// without being sent; `reason` is a `FailReason` label or `expired`.
    pub messages_failed: IntCounterVec,
    /// `wabulk_api_errors_total{code}`: error answers by Graph API error code
    /// (a request never answered is a `timeout` or `connection` retry instead).
    pub api_errors: IntCounterVec,
    /// `wabulk_throttled_total{limit}`: sends the engine's own limiters held
    /// back; `limit` is one of [`THROTTLE_LIMITS`].
    pub throttled: IntCounterVec,
    /// `wabulk_retries_total{reason}`: attempts that will be retried; `reason`
    /// is a `RetryReason` label.
    pub retries: IntCounterVec,
    /// `wabulk_dlq_total{reason}`: records sent to the DLQ; `reason` is a
    /// `JobError::reason()` value.
    pub dlq: IntCounterVec,
    /// `wabulk_send_latency_seconds`: one HTTP request to `/messages`, from
    /// write to answer (or timeout).
    pub send_latency: Histogram,
    /// `wabulk_queue_wait_seconds`: from the record being read (or its
    /// `not_before`) to its first request being sent.
    pub queue_wait: Histogram,
    /// `wabulk_inflight_requests`: requests written and not yet answered.
    pub inflight: IntGauge,
    /// `wabulk_backlog_jobs`: jobs accepted by the scheduler and not yet sent
    /// or resolved (waiting on a limit, a retry timer or `not_before`).
    pub backlog: IntGauge,
    /// `wabulk_phone_rate_limit{phone_number_id}`: the configured throughput
    /// tier of the number, messages/s.
    pub phone_rate_limit: IntGaugeVec,
    /// `wabulk_waba_hourly_calls{waba_id}`: calls counted in the WABA's
    /// rolling hour.
    pub waba_hourly_calls: IntGaugeVec,
    /// `wabulk_consumer_lag{partition}`: high watermark minus the consumer's
    /// position, per assigned partition.
    pub consumer_lag: IntGaugeVec,
    /// `wabulk_results_total{status}`: final results written, one per job;
    /// `status` is one of [`RESULT_STATUSES`].
    pub results: IntCounterVec,
    /// `wabulk_rejected_total{code}`: jobs rejected (`RejectReason::code()`).
    /// Kept apart from `messages_failed` because a rejected job's number may be
    /// one the configuration does not know, which must not become a label.
    pub rejected: IntCounterVec,
    /// `wabulk_waba_hourly_cap{waba_id}`: the WABA's configured hourly call cap,
    /// to compare with `wabulk_waba_hourly_calls`.
    pub waba_hourly_cap: IntGaugeVec,
    /// `wabulk_waba_halted{waba_id}`: 1 while sending for the WABA is halted
    /// because its token is invalid, else 0.
    pub waba_halted: IntGaugeVec,
    /// `wabulk_waba_held{waba_id}`: 1 while Meta has stopped the WABA
    /// (banned, deleted, restricted from messaging: an account event), else 0.
    pub waba_held: IntGaugeVec,
    /// `wabulk_messaging_limit{waba_id}`: the business portfolio's messaging
    /// limit Meta last announced for the WABA (unique recipients per 24 h;
    /// -1: unlimited). Absent until Meta announces one.
    pub messaging_limit: IntGaugeVec,
    /// `wabulk_account_changes_total{change}`: account events applied, by
    /// what they changed (one of [`ACCOUNT_CHANGES`]).
    pub account_changes: IntCounterVec,
    /// `wabulk_phone_effective_rate{phone_number_id}`: what the limiter allows
    /// now, messages/s, after the safety margin and any slow-down.
    pub phone_effective_rate: IntGaugeVec,
    /// `wabulk_pool_connections`: open connections to the Graph API.
    pub pool_connections: IntGauge,
    /// `wabulk_pool_connections_opened_total`: connections opened (churn).
    pub pool_connections_opened: IntCounter,
    /// `wabulk_pool_connections_broken_total`: connections lost to errors.
    pub pool_connections_broken: IntCounter,
    /// `wabulk_unknown_outcome_retries_total`: retries after a timeout or a
    /// lost connection, where the message may already have gone out.
    pub unknown_outcome_retries: IntCounter,
    /// `wabulk_jobs_in_memory`: Kafka records read and not yet resolved
    /// (result or DLQ record not yet acknowledged).
    pub jobs_in_memory: IntGauge,
    /// `wabulk_jobs_in_memory_bytes`: what those records cost against the
    /// memory budget in bytes.
    pub jobs_in_memory_bytes: IntGauge,
    /// `wabulk_partitions_paused`: partitions paused for backpressure.
    pub partitions_paused: IntGauge,
    /// `wabulk_partitions_paused_by_reason{reason}`: the same, per reason
    /// (one of [`PAUSE_REASONS`]); a partition paused for several counts in
    /// each.
    pub partitions_paused_by_reason: IntGaugeVec,
    /// `wabulk_jobs_parked_total{reason}`: jobs written to the parking
    /// topics (acknowledged), their input offsets released; `reason` is one
    /// of [`PARK_REASONS`].
    pub jobs_parked: IntCounterVec,
    /// `wabulk_uncommitted_jobs`: jobs whose result or dead letter Kafka
    /// acknowledged and whose input offset no acknowledged commit covers
    /// yet; with `wabulk_inflight_requests`, what a crash would send again.
    pub uncommitted_jobs: IntGauge,
    /// `wabulk_commit_lag_seconds`: from a job's result (or dead letter)
    /// being acknowledged to the acknowledgement of the offset commit that
    /// covers it.
    pub commit_lag: Histogram,
    /// `wabulk_parked_return_lateness_seconds`: from a parked job's due time
    /// to Kafka's acknowledgement of its write back to the jobs topic, as
    /// the parking mover saw it.
    pub parked_return_lateness: Histogram,
    /// `wabulk_parked_jobs`: records in the parking topics' partitions this
    /// instance's mover owns (high watermark − committed position), sampled
    /// every few seconds.
    pub parked_jobs: IntGauge,
    /// `wabulk_parking_moves_total{kind}`: records the parking mover wrote
    /// on, by [`PARKING_MOVES`]: back to the jobs topic, into a shorter
    /// tier, or (without readable parking headers) to the jobs topic at once.
    pub parking_moves: IntCounterVec,
    /// `wabulk_parking_mover_in_flight`: records the mover holds until they
    /// are due or has written and Kafka not yet acknowledged.
    pub parking_mover_in_flight: IntGauge,
    /// `wabulk_scheduling_delay_seconds`: how late the engine's runtime ran
    /// a task that was due, peak of the last 30 s. Every number's window is
    /// widened by twice this (at most 250 ms), so it is also the rate the
    /// host's load costs: 10 ms here slows every number by 2 %.
    pub scheduling_delay: Gauge,
    /// `wabulk_departures_held_total`: requests held at their number's
    /// departure gate because they reached it bunched with others.
    pub departures_held: IntCounter,
    /// `wabulk_produce_refusals_total{topic, reason}`: writes of results or
    /// dead letters that Kafka refused for good (`topic` is `results` or
    /// `dlq`; `reason` one of `wabulk_kafka::Refusal::label()`), counted once
    /// per write. A dead letter refused as too large is cut and written again.
    pub produce_refusals: IntCounterVec,
    /// `wabulk_statuses_total{phone_number_id,status}`: statuses Meta
    /// reported through the webhook, once Kafka acknowledged their records
    /// ([`WEBHOOK_STATUSES`], other values as `other`); counted with
    /// [`Metrics::count_status`].
    pub statuses: IntCounterVec,
    /// `wabulk_status_errors_total{code}`: the errors of `failed` statuses,
    /// by Meta's code ([`STATUS_ERROR_CODES`], else `other`); counted with
    /// [`Metrics::count_failed_status`].
    pub status_errors: IntCounterVec,
    /// `wabulk_webhook_requests_total{outcome}`: webhook notifications by how
    /// they were answered ([`WEBHOOK_OUTCOMES`]).
    pub webhook_requests: IntCounterVec,
    /// `wabulk_build_info{version}`: always 1; tells dashboards which build runs.
    pub build_info: IntGaugeVec,

    /// Owns every metric above; `render` gathers from it.
    registry: Registry,
    /// Distinct `phone_number_id` values admitted as labels, so that numbers
    /// not in the configuration (non-strict mode) cannot grow the series count
    /// without bound.
    phone_labels: LabelBudget,
    /// The same guard for `waba_id`.
    waba_labels: LabelBudget,
    /// The same guard for campaigns, at [`CAMPAIGN_SERIES_CAP`].
    campaign_labels: LabelBudget,
    /// Each number's per-job series, resolved on its first job.
    numbers: DashMap<u64, Arc<NumberSeries>>,
    /// `results` by `Status::ALL` index, and `rejected` by `REJECT_REASONS`
    /// index: resolved once.
    results_by_status: [IntCounter; Status::ALL.len()],
    rejected_by_reason: [IntCounter; REJECT_REASONS.len()],
}

impl Metrics {
    /// A webhook status as a label: one of [`WEBHOOK_STATUSES`], else `other`.
    pub fn status_label<'a>(&self, status: &'a str) -> &'a str {
        if WEBHOOK_STATUSES.contains(&status) {
            status
        } else {
            OVERFLOW_LABEL
        }
    }

    /// Creates every metric in a new registry, admitting up to
    /// [`DEFAULT_SERIES_CAP`] distinct numbers and WABAs as label values.
    pub fn new() -> Metrics {
        Metrics::with_series_cap(DEFAULT_SERIES_CAP)
    }

    /// Like [`Metrics::new`], with `cap` distinct `phone_number_id` and
    /// `waba_id` values admitted by [`Metrics::phone_label`] and
    /// [`Metrics::waba_label`].
    pub fn with_series_cap(cap: usize) -> Metrics {
        let r = Registry::new();
        let results = counter_vec(
            &r,
            "wabulk_results_total",
            "Final results acknowledged by Kafka, one per job, by status.",
            &["status"],
        );
        let rejected =
            counter_vec(&r, "wabulk_rejected_total", "Jobs rejected as not acceptable, by code.", &["code"]);
        let m = Metrics {
            jobs_consumed: counter(
                &r,
                "wabulk_jobs_consumed_total",
                "Records read from the jobs topic, valid or not.",
            ),
            campaign_jobs: counter_vec(
                &r,
                "wabulk_campaign_jobs_total",
                "Jobs of each campaign by their result's status; campaigns past the series cap count as other.",
                &["campaign", "status"],
            ),
            config_reloads: counter_vec(
                &r,
                "wabulk_config_reloads_total",
                "Configuration reloads (SIGHUP), applied or refused.",
                &["outcome"],
            ),
            token_replacements: counter(
                &r,
                "wabulk_token_replacements_total",
                "Access tokens replaced while running (a token file changed, a reload).",
            ),
            mis_keyed_jobs: counter(
                &r,
                "wabulk_mis_keyed_jobs_total",
                "Valid jobs whose record key is not their phone_number_id: their number may have two owners.",
            ),
            messages_sent: counter_vec(
                &r,
                "wabulk_messages_sent_total",
                "Jobs whose final result is sent.",
                &["phone_number_id"],
            ),
            messages_failed: counter_vec(
                &r,
                "wabulk_messages_failed_total",
                "Jobs that ended without being sent, by reason.",
                &["phone_number_id", "reason"],
            ),
            api_errors: counter_vec(
                &r,
                "wabulk_api_errors_total",
                "Error answers from the Graph API, by error code.",
                &["code"],
            ),
            throttled: counter_vec(
                &r,
                "wabulk_throttled_total",
                "Sends held back by the engine's own limiters, by limit.",
                &["limit"],
            ),
            retries: counter_vec(
                &r,
                "wabulk_retries_total",
                "Send attempts that will be retried, by reason.",
                &["reason"],
            ),
            dlq: counter_vec(
                &r,
                "wabulk_dlq_total",
                "Records written to the dead-letter topic, by reason.",
                &["reason"],
            ),
            send_latency: histogram(
                &r,
                "wabulk_send_latency_seconds",
                "Duration of one HTTP request to /messages, until its answer or timeout.",
                SEND_LATENCY_BUCKETS,
            ),
            queue_wait: histogram(
                &r,
                "wabulk_queue_wait_seconds",
                "Time from a job being read (or its not_before) to its first request.",
                QUEUE_WAIT_BUCKETS,
            ),
            inflight: gauge(
                &r,
                "wabulk_inflight_requests",
                "HTTP requests written and not yet answered.",
            ),
            backlog: gauge(
                &r,
                "wabulk_backlog_jobs",
                "Jobs in the scheduler waiting to be sent (limits, retry timers, not_before).",
            ),
            phone_rate_limit: gauge_vec(
                &r,
                "wabulk_phone_rate_limit",
                "Configured throughput tier of the business number, messages per second.",
                &["phone_number_id"],
            ),
            waba_hourly_calls: gauge_vec(
                &r,
                "wabulk_waba_hourly_calls",
                "Calls counted in the WABA's rolling hour.",
                &["waba_id"],
            ),
            consumer_lag: gauge_vec(
                &r,
                "wabulk_consumer_lag",
                "High watermark minus consumer position, per assigned partition.",
                &["partition"],
            ),
            waba_hourly_cap: gauge_vec(
                &r,
                "wabulk_waba_hourly_cap",
                "Configured hourly call cap of the WABA.",
                &["waba_id"],
            ),
            waba_halted: gauge_vec(
                &r,
                "wabulk_waba_halted",
                "1 while sending for the WABA is halted because its token is invalid.",
                &["waba_id"],
            ),
            waba_held: gauge_vec(
                &r,
                "wabulk_waba_held",
                "1 while Meta has stopped the WABA (banned, deleted or restricted, by an account event).",
                &["waba_id"],
            ),
            messaging_limit: gauge_vec(
                &r,
                "wabulk_messaging_limit",
                "Messaging limit Meta last announced for the WABA's portfolio, recipients per 24 h; -1 unlimited.",
                &["waba_id"],
            ),
            account_changes: counter_vec(
                &r,
                "wabulk_account_changes_total",
                "Account events from Meta applied to sending, by what they changed.",
                &["change"],
            ),
            phone_effective_rate: gauge_vec(
                &r,
                "wabulk_phone_effective_rate",
                "Throughput the limiter allows the number now, messages per second, after margin and slow-downs.",
                &["phone_number_id"],
            ),
            pool_connections: gauge(
                &r,
                "wabulk_pool_connections",
                "Open connections to the Graph API.",
            ),
            pool_connections_opened: counter(
                &r,
                "wabulk_pool_connections_opened_total",
                "Connections to the Graph API opened.",
            ),
            pool_connections_broken: counter(
                &r,
                "wabulk_pool_connections_broken_total",
                "Connections to the Graph API lost to errors.",
            ),
            unknown_outcome_retries: counter(
                &r,
                "wabulk_unknown_outcome_retries_total",
                "Retries after a timeout or lost connection, where the message may already have gone out.",
            ),
            jobs_in_memory: gauge(
                &r,
                "wabulk_jobs_in_memory",
                "Kafka records read and not yet resolved.",
            ),
            jobs_parked: counter_vec(
                &r,
                "wabulk_jobs_parked_total",
                "Jobs parked in Kafka until due, by reason.",
                &["reason"],
            ),
            jobs_in_memory_bytes: gauge(
                &r,
                "wabulk_jobs_in_memory_bytes",
                "What the Kafka records read and not yet resolved cost against the memory budget, in bytes.",
            ),
            partitions_paused: gauge(
                &r,
                "wabulk_partitions_paused",
                "Partitions of the jobs topic paused for backpressure.",
            ),
            partitions_paused_by_reason: gauge_vec(
                &r,
                "wabulk_partitions_paused_by_reason",
                "Partitions of the jobs topic paused for backpressure, by reason.",
                &["reason"],
            ),
            uncommitted_jobs: gauge(
                &r,
                "wabulk_uncommitted_jobs",
                "Jobs whose result or dead letter is acknowledged and whose input offset is not yet committed.",
            ),
            commit_lag: histogram(
                &r,
                "wabulk_commit_lag_seconds",
                "Time from a job's result being acknowledged to the acknowledgement of the offset commit covering it.",
                COMMIT_LAG_BUCKETS,
            ),
            parked_return_lateness: histogram(
                &r,
                "wabulk_parked_return_lateness_seconds",
                "Time from a parked job's due time to the acknowledgement of its write back to the jobs topic.",
                COMMIT_LAG_BUCKETS,
            ),
            parked_jobs: gauge(
                &r,
                "wabulk_parked_jobs",
                "Records in the parking topics' partitions this instance moves, waiting for their due time.",
            ),
            parking_moves: counter_vec(
                &r,
                "wabulk_parking_moves_total",
                "Records the parking mover wrote on: back to the jobs topic, into a shorter tier, or unreadable.",
                &["kind"],
            ),
            parking_mover_in_flight: gauge(
                &r,
                "wabulk_parking_mover_in_flight",
                "Records the parking mover holds until due or has written and Kafka not yet acknowledged.",
            ),
            scheduling_delay: float_gauge(
                &r,
                "wabulk_scheduling_delay_seconds",
                "Peak lateness of the engine's runtime over the last 30 s; windows are widened by twice it.",
            ),
            departures_held: counter(
                &r,
                "wabulk_departures_held_total",
                "Requests held at their number's departure gate because they arrived there bunched.",
            ),
            produce_refusals: counter_vec(
                &r,
                "wabulk_produce_refusals_total",
                "Writes of results or dead letters that Kafka refused for good (too large, unknown topic, not authorised, invalid).",
                &["topic", "reason"],
            ),
            statuses: counter_vec(
                &r,
                "wabulk_statuses_total",
                "Message statuses Meta reported through the webhook, written to the statuses topic.",
                &["phone_number_id", "status"],
            ),
            status_errors: counter_vec(
                &r,
                "wabulk_status_errors_total",
                "Errors of failed message statuses Meta reported through the webhook, by error code.",
                &["code"],
            ),
            webhook_requests: counter_vec(
                &r,
                "wabulk_webhook_requests_total",
                "Webhook notifications received, by how they were answered.",
                &["outcome"],
            ),
            build_info: gauge_vec(
                &r,
                "wabulk_build_info",
                "Always 1; the version label names the running build.",
                &["version"],
            ),
            registry: r,
            numbers: DashMap::new(),
            results_by_status: Status::ALL.map(|status| results.with_label_values(&[status.label()])),
            rejected_by_reason: REJECT_REASONS.map(|reason| rejected.with_label_values(&[reason.code()])),
            results,
            rejected,
            phone_labels: LabelBudget::new(cap),
            waba_labels: LabelBudget::new(cap),
            campaign_labels: LabelBudget::new(CAMPAIGN_SERIES_CAP),
        };
        // Fixed label sets exist at zero from the start: a counter that
        // appears only on its first increment makes `rate()` miss that
        // increment and alerts on "absent" impossible to write.
        for limit in THROTTLE_LIMITS {
            m.throttled.with_label_values(&[limit]);
        }
        // `statuses` needs the numbers: `create_zero_series` makes them.
        for code in STATUS_ERROR_CODES.iter().chain([&OVERFLOW_LABEL]) {
            m.status_errors.with_label_values(&[code]);
        }
        for outcome in WEBHOOK_OUTCOMES {
            m.webhook_requests.with_label_values(&[outcome]);
        }
        for reason in PARK_REASONS {
            m.jobs_parked.with_label_values(&[reason]);
        }
        for kind in PARKING_MOVES {
            m.parking_moves.with_label_values(&[kind]);
        }
        for reason in PAUSE_REASONS {
            m.partitions_paused_by_reason.with_label_values(&[reason]);
        }
        for topic in ["results", "dlq", "parked"] {
            for reason in PRODUCE_REFUSALS {
                m.produce_refusals.with_label_values(&[topic, reason]);
            }
        }
        m.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        // The standard process_* metrics (CPU seconds, resident memory, open
        // file descriptors, threads, start time) that every dashboard expects.
        m.registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("process collector registered once");
        m
    }

    /// The registry holding every metric, for callers that add their own.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every metric in the Prometheus text format (version 0.0.4).
    ///
    /// Labelled metrics appear once one of their series exists, as Prometheus
    /// clients usually behave.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        // Encoding text into a String fails only on a malformed family, which
        // `gather` never returns; should it happen, a comment line keeps the
        // exposition valid and says what went wrong instead of panicking in
        // the scrape handler.
        TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_else(|err| format!("# wabulk: encoding metrics failed: {err}\n"))
    }

    /// `phone_number_id` as a label value: the id itself while fewer than the
    /// series cap distinct ids have been seen (or this one already was),
    /// [`OVERFLOW_LABEL`] after. Configured numbers should be admitted at
    /// start-up (call this once for each) so that they always keep their own
    /// series.
    pub fn phone_label<'a>(&self, phone_number_id: &'a str) -> &'a str {
        self.phone_labels.admit(phone_number_id)
    }

    /// `waba_id` as a label value, guarded like [`Metrics::phone_label`].
    pub fn waba_label<'a>(&self, waba_id: &'a str) -> &'a str {
        self.waba_labels.admit(waba_id)
    }

    /// Creates at 0 every counter series the engine can increment for the
    /// configured `phones` and `wabas` (admitting them as labels, within the
    /// series cap) and for the closed reason and code sets (CONTRACT §9): a
    /// series that appears only on its first event makes `rate()` miss that
    /// event, dashboards show "No data" and alerts cannot see the first
    /// failure. Gauges whose 0 would mean something (tiers, caps, effective
    /// rates) are left to the engine, which sets their real values.
    pub fn create_zero_series<'a>(
        &self,
        phones: impl IntoIterator<Item = &'a str>,
        wabas: impl IntoIterator<Item = &'a str>,
    ) {
        for phone in phones {
            let phone = self.phone_label(phone);
            self.messages_sent.with_label_values(&[phone]);
            for reason in FAILED_REASONS {
                self.messages_failed.with_label_values(&[phone, reason]);
            }
            self.create_status_series(phone);
        }
        for waba in wabas {
            let waba = self.waba_label(waba);
            self.waba_halted.with_label_values(&[waba]);
            self.waba_held.with_label_values(&[waba]);
            self.waba_hourly_calls.with_label_values(&[waba]);
        }
        for reason in RETRY_REASONS {
            self.retries.with_label_values(&[reason.label()]);
        }
        for reason in DLQ_REASONS {
            self.dlq.with_label_values(&[reason]);
        }
        for code in ACTED_ON_API_ERROR_CODES {
            self.api_errors.with_label_values(&[code]);
        }
        for change in ACCOUNT_CHANGES {
            self.account_changes.with_label_values(&[change]);
        }
        for outcome in ["applied", "refused"] {
            self.config_reloads.with_label_values(&[outcome]);
        }
    }
}

impl Metrics {
    /// Creates at 0 `wabulk_statuses_total` of each status for each of
    /// `phones` (admitted as labels, within the series cap): what the
    /// webhook receiver counts. [`Metrics::create_zero_series`] calls it for
    /// the engine; `wabulk webhooks`, alone, calls it with the configured
    /// numbers.
    pub fn create_status_zero_series<'a>(&self, phones: impl IntoIterator<Item = &'a str>) {
        for phone in phones {
            self.create_status_series(self.phone_label(phone));
        }
    }

    fn create_status_series(&self, phone_label: &str) {
        for status in WEBHOOK_STATUSES.iter().chain([&OVERFLOW_LABEL]) {
            self.statuses.with_label_values(&[phone_label, status]);
        }
    }

    /// Counts one status Meta reported for a message of `phone_number_id`
    /// (`wabulk_statuses_total`): the number through [`Metrics::phone_label`]
    /// (`other` when the notification names none), the status through
    /// [`Metrics::status_label`].
    pub fn count_status(&self, phone_number_id: Option<&str>, status: &str) {
        let phone = phone_number_id.map_or(OVERFLOW_LABEL, |id| self.phone_label(id));
        self.statuses.with_label_values(&[phone, self.status_label(status)]).inc();
    }

    /// Counts the errors of one `failed` status (`wabulk_status_errors_total`):
    /// one per error, by its code, `other` for a code not in
    /// [`STATUS_ERROR_CODES`] or none; a failed status without any error
    /// counts once as `other`, so that every failure shows.
    pub fn count_failed_status(&self, codes: impl IntoIterator<Item = Option<i64>>) {
        let mut counted = false;
        for code in codes {
            counted = true;
            let code = code.map(|c| c.to_string());
            let label = code.as_deref().filter(|c| STATUS_ERROR_CODES.contains(c)).unwrap_or(OVERFLOW_LABEL);
            self.status_errors.with_label_values(&[label]).inc();
        }
        if !counted {
            self.status_errors.with_label_values(&[OVERFLOW_LABEL]).inc();
        }
    }

    /// Counts a job's exit on its number's series: `sent`, or `failed` with
    /// the exit's reason; rejections on `wabulk_rejected_total`. The number's
    /// series are resolved on its first job; after that nothing is formatted
    /// or hashed but the number.
    pub fn count_exit(&self, phone_number_id: u64, exit: &Exit) {
        if *exit == Exit::Cancelled {
            // Never sent nor failed: counted by its result and campaign.
            return;
        }
        if let Exit::Rejected(reason) = exit {
            let index = REJECT_REASONS.iter().position(|r| r == reason).unwrap_or_default();
            self.rejected_by_reason[index].inc();
            return;
        }
        let series = self.number_series(phone_number_id);
        match exit.failed_reason() {
            None => series.sent.inc(),
            Some(reason) => {
                let index = FAILED_REASONS.iter().position(|r| *r == reason).unwrap_or_default();
                series.failed[index].inc();
            }
        }
    }

    /// Counts a campaign's job ending with `status`
    /// (`wabulk_campaign_jobs_total`).
    pub fn count_campaign(&self, campaign: &str, status: Status) {
        let label = self.campaign_labels.admit(campaign);
        self.campaign_jobs.with_label_values(&[label, status.label()]).inc();
    }

    /// Counts a result Kafka acknowledged (`wabulk_results_total{status}`).
    pub fn count_result(&self, status: Status) {
        let index = Status::ALL.iter().position(|s| *s == status).unwrap_or_default();
        self.results_by_status[index].inc();
    }

    /// The number's per-job series (sent, failed by reason), created on
    /// first use under its label (or the overflow label past the series cap).
    pub fn number_series(&self, phone_number_id: u64) -> Arc<NumberSeries> {
        if let Some(series) = self.numbers.get(&phone_number_id) {
            return Arc::clone(&series);
        }
        let id = phone_number_id.to_string();
        let label = self.phone_label(&id);
        let series = Arc::new(NumberSeries {
            sent: self.messages_sent.with_label_values(&[label]),
            failed: FAILED_REASONS.map(|reason| self.messages_failed.with_label_values(&[label, reason])),
        });
        Arc::clone(self.numbers.entry(phone_number_id).or_insert(series).value())
    }
}

/// One number's per-job counters, resolved once (see [`Metrics::count_exit`]).
#[derive(Debug)]
pub struct NumberSeries {
    /// `wabulk_messages_sent_total{phone_number_id}`.
    pub sent: IntCounter,
    /// `wabulk_messages_failed_total{phone_number_id,reason}`, in the order
    /// of [`FAILED_REASONS`].
    pub failed: [IntCounter; FAILED_REASONS.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Admits distinct label values up to a cap.
#[derive(Debug)]
struct LabelBudget {
    /// Distinct values admitted at most; see [`DEFAULT_SERIES_CAP`].
    cap: usize,
    /// Values admitted so far. A std mutex is enough: nothing awaits under it
    /// and callers cache their labelled handles, so it is taken once per new
    /// number rather than per message.
    seen: Mutex<HashSet<Box<str>>>,
}

impl LabelBudget {
    fn new(cap: usize) -> LabelBudget {
        LabelBudget { cap, seen: Mutex::new(HashSet::new()) }
    }

    fn admit<'a>(&self, value: &'a str) -> &'a str {
        // A panic elsewhere while holding the lock leaves the set valid
        // (insert is the only mutation), so a poisoned lock is still usable.
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.contains(value) {
            return value;
        }
        if seen.len() < self.cap {
            seen.insert(value.into());
            return value;
        }
        OVERFLOW_LABEL
    }
}

// The helpers below `expect` because metric names, label names and buckets are
// compile-time constants: an invalid one (or a name registered twice) is a bug
// that every test run catches at `Metrics::new`, not a runtime condition.

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid counter definition");
    r.register(Box::new(c.clone())).expect("counter registered once");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter definition");
    r.register(Box::new(c.clone())).expect("counter registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid gauge definition");
    r.register(Box::new(g.clone())).expect("gauge registered once");
    g
}

fn float_gauge(r: &Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::new(name, help).expect("valid gauge definition");
    r.register(Box::new(g.clone())).expect("gauge registered once");
    g
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge definition");
    r.register(Box::new(g.clone())).expect("gauge registered once");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("valid histogram definition");
    r.register(Box::new(h.clone())).expect("histogram registered once");
    h
}
