//! Unit tests: the metric set matches CONTRACT §9, label guards and readiness.

use wabulk_model::{FailReason, JobError, RejectReason, RetryReason};

use crate::{
    Health, Metrics, ACTED_ON_API_ERROR_CODES, DLQ_REASONS, FAILED_REASONS, OVERFLOW_LABEL, REJECT_REASONS,
    RESULT_STATUSES, RETRY_REASONS, STATUS_ERROR_CODES, THROTTLE_LIMITS, WEBHOOK_STATUSES,
};

/// CONTRACT §9, name and type, as the exposition's `# TYPE` lines must say.
const CONTRACT_METRICS: &[(&str, &str)] = &[
    ("wabulk_jobs_consumed_total", "counter"),
    ("wabulk_messages_sent_total", "counter"),
    ("wabulk_messages_failed_total", "counter"),
    ("wabulk_api_errors_total", "counter"),
    ("wabulk_throttled_total", "counter"),
    ("wabulk_retries_total", "counter"),
    ("wabulk_dlq_total", "counter"),
    ("wabulk_send_latency_seconds", "histogram"),
    ("wabulk_queue_wait_seconds", "histogram"),
    ("wabulk_inflight_requests", "gauge"),
    ("wabulk_backlog_jobs", "gauge"),
    ("wabulk_phone_rate_limit", "gauge"),
    ("wabulk_waba_hourly_calls", "gauge"),
    ("wabulk_consumer_lag", "gauge"),
];

/// The additions documented in docs/metrics.md.
const ADDED_METRICS: &[(&str, &str)] = &[
    ("wabulk_results_total", "counter"),
    ("wabulk_rejected_total", "counter"),
    ("wabulk_waba_hourly_cap", "gauge"),
    ("wabulk_waba_halted", "gauge"),
    ("wabulk_phone_effective_rate", "gauge"),
    ("wabulk_pool_connections", "gauge"),
    ("wabulk_pool_connections_opened_total", "counter"),
    ("wabulk_pool_connections_broken_total", "counter"),
    ("wabulk_unknown_outcome_retries_total", "counter"),
    ("wabulk_jobs_in_memory", "gauge"),
    ("wabulk_jobs_in_memory_bytes", "gauge"),
    ("wabulk_partitions_paused", "gauge"),
    ("wabulk_partitions_paused_by_reason", "gauge"),
    ("wabulk_jobs_parked_total", "counter"),
    ("wabulk_uncommitted_jobs", "gauge"),
    ("wabulk_commit_lag_seconds", "histogram"),
    ("wabulk_scheduling_delay_seconds", "gauge"),
    ("wabulk_departures_held_total", "counter"),
    ("wabulk_produce_refusals_total", "counter"),
    ("wabulk_statuses_total", "counter"),
    ("wabulk_status_errors_total", "counter"),
    ("wabulk_webhook_requests_total", "counter"),
    ("wabulk_build_info", "gauge"),
    ("process_cpu_seconds_total", "counter"),
    ("process_resident_memory_bytes", "gauge"),
    ("process_open_fds", "gauge"),
    ("process_threads", "gauge"),
];

/// Creates one series of every labelled metric, as the engine would.
fn touch_every_vec(m: &Metrics) {
    m.messages_sent.with_label_values(&["106540352242922"]).inc();
    m.messages_failed.with_label_values(&["106540352242922", "bad_request"]).inc();
    m.api_errors.with_label_values(&["131026"]).inc();
    m.retries.with_label_values(&["pair_limit"]).inc();
    m.dlq.with_label_values(&["malformed"]).inc();
    m.phone_rate_limit.with_label_values(&["106540352242922"]).set(80);
    m.waba_hourly_calls.with_label_values(&["102290129340398"]).set(12);
    m.consumer_lag.with_label_values(&["0"]).set(3);
    m.rejected.with_label_values(&["unknown_phone_number"]).inc();
    m.waba_hourly_cap.with_label_values(&["102290129340398"]).set(1_800_000);
    m.waba_halted.with_label_values(&["102290129340398"]).set(0);
    m.phone_effective_rate.with_label_values(&["106540352242922"]).set(72);
    m.count_status(Some("106540352242922"), "delivered");
}

#[test]
fn render_has_every_metric_with_its_type() {
    let m = Metrics::new();
    touch_every_vec(&m);
    let text = m.render();
    for (name, kind) in CONTRACT_METRICS.iter().chain(ADDED_METRICS) {
        let type_line = format!("# TYPE {name} {kind}\n");
        assert!(text.contains(&type_line), "missing `{type_line}` in:\n{text}");
        assert!(text.contains(&format!("# HELP {name} ")), "missing HELP of {name}");
    }
}

#[test]
fn values_show_up_with_their_labels() {
    let m = Metrics::new();
    m.jobs_consumed.inc_by(5);
    m.messages_sent.with_label_values(&["111"]).inc_by(2);
    m.messages_failed.with_label_values(&["111", "retries_exhausted"]).inc();
    m.consumer_lag.with_label_values(&["7"]).set(42);
    let text = m.render();
    assert!(text.contains("wabulk_jobs_consumed_total 5\n"), "{text}");
    assert!(text.contains("wabulk_messages_sent_total{phone_number_id=\"111\"} 2\n"));
    assert!(text
        .contains("wabulk_messages_failed_total{phone_number_id=\"111\",reason=\"retries_exhausted\"} 1\n"));
    assert!(text.contains("wabulk_consumer_lag{partition=\"7\"} 42\n"));
}

#[test]
fn fixed_label_sets_exist_at_zero() {
    let text = Metrics::new().render();
    for limit in THROTTLE_LIMITS {
        assert!(text.contains(&format!("wabulk_throttled_total{{limit=\"{limit}\"}} 0\n")), "{text}");
    }
    for status in RESULT_STATUSES {
        assert!(text.contains(&format!("wabulk_results_total{{status=\"{status}\"}} 0\n")));
    }
    for code in STATUS_ERROR_CODES.iter().chain([&OVERFLOW_LABEL]) {
        assert!(text.contains(&format!("wabulk_status_errors_total{{code=\"{code}\"}} 0\n")), "{text}");
    }
    assert!(text.contains(&format!("wabulk_build_info{{version=\"{}\"}} 1\n", env!("CARGO_PKG_VERSION"))));
}

#[test]
fn known_label_values_exist_at_zero_after_create_zero_series() {
    let m = Metrics::new();
    let phones = ["106540352242922", "106540352242923"];
    let wabas = ["102290129340398"];
    let before = m.render();
    assert!(!before.contains("wabulk_messages_failed_total{"), "no failure series before the call");
    m.create_zero_series(phones, wabas);
    let text = m.render();
    let mut expected = Vec::new();
    for phone in phones {
        expected.push(format!("wabulk_messages_sent_total{{phone_number_id=\"{phone}\"}} 0"));
        for reason in FAILED_REASONS {
            expected.push(format!(
                "wabulk_messages_failed_total{{phone_number_id=\"{phone}\",reason=\"{reason}\"}} 0"
            ));
        }
        for status in WEBHOOK_STATUSES.iter().chain([&OVERFLOW_LABEL]) {
            expected
                .push(format!("wabulk_statuses_total{{phone_number_id=\"{phone}\",status=\"{status}\"}} 0"));
        }
    }
    for waba in wabas {
        expected.push(format!("wabulk_waba_halted{{waba_id=\"{waba}\"}} 0"));
        expected.push(format!("wabulk_waba_hourly_calls{{waba_id=\"{waba}\"}} 0"));
    }
    for reason in RETRY_REASONS {
        expected.push(format!("wabulk_retries_total{{reason=\"{}\"}} 0", reason.label()));
    }
    for reason in DLQ_REASONS {
        expected.push(format!("wabulk_dlq_total{{reason=\"{reason}\"}} 0"));
    }
    for reason in REJECT_REASONS {
        expected.push(format!("wabulk_rejected_total{{code=\"{}\"}} 0", reason.code()));
    }
    for code in ACTED_ON_API_ERROR_CODES {
        expected.push(format!("wabulk_api_errors_total{{code=\"{code}\"}} 0"));
    }
    let lines: std::collections::HashSet<&str> = text.lines().collect();
    let missing: Vec<&String> = expected.iter().filter(|e| !lines.contains(e.as_str())).collect();
    assert!(missing.is_empty(), "series not at 0 after create_zero_series: {missing:?}\n{text}");
    // 2 phones × (1 + 6 + 8) + 1 WABA × 2 + 12 + 4 + 4 + 8.
    assert_eq!(expected.len(), 30 + 2 + 12 + 4 + 4 + 8);
}

#[test]
fn zero_series_respect_the_label_budget() {
    let m = Metrics::with_series_cap(1);
    m.create_zero_series(["111", "222"], ["333", "444"]);
    let text = m.render();
    assert!(text.contains("wabulk_messages_sent_total{phone_number_id=\"111\"} 0\n"), "{text}");
    assert!(text.contains(&format!("wabulk_messages_sent_total{{phone_number_id=\"{OVERFLOW_LABEL}\"}} 0\n")));
    assert!(!text.contains("\"222\""), "a number over the cap got its own series:\n{text}");
    assert!(!text.contains("\"444\""), "a WABA over the cap got its own series:\n{text}");
}

/// The closed lists name every variant and every label the model gives: a
/// variant added to the model fails to compile here until it is listed.
#[test]
fn closed_label_lists_cover_the_model() {
    fn listed_fail(reason: FailReason) -> bool {
        match reason {
            FailReason::BadRequest
            | FailReason::Undeliverable
            | FailReason::AccountBlocked
            | FailReason::RetriesExhausted
            | FailReason::Unclassified => FAILED_REASONS.contains(&reason.label()),
        }
    }
    fn listed_retry(reason: RetryReason) -> bool {
        match reason {
            RetryReason::PairLimit
            | RetryReason::NumberLimit
            | RetryReason::WabaLimit
            | RetryReason::AppLimit
            | RetryReason::SpamLimit
            | RetryReason::NumberUpgrading
            | RetryReason::Transient
            | RetryReason::ServerError
            | RetryReason::Media
            | RetryReason::Timeout
            | RetryReason::Broken
            | RetryReason::Connection => RETRY_REASONS.contains(&reason),
        }
    }
    fn listed_reject(reason: RejectReason) -> bool {
        match reason {
            RejectReason::UnknownPhoneNumber
            | RejectReason::UnknownWaba
            | RejectReason::WabaMismatch
            | RejectReason::NotBeforeTooFar => REJECT_REASONS.contains(&reason),
        }
    }
    fn listed_dlq(error: &JobError) -> bool {
        match error {
            JobError::TooLarge { .. }
            | JobError::NotUtf8 { .. }
            | JobError::Json(_)
            | JobError::Field { .. } => DLQ_REASONS.contains(&error.reason()),
        }
    }
    let fail_reasons = [
        FailReason::BadRequest,
        FailReason::Undeliverable,
        FailReason::AccountBlocked,
        FailReason::RetriesExhausted,
        FailReason::Unclassified,
    ];
    assert!(fail_reasons.into_iter().all(listed_fail));
    assert!(RETRY_REASONS.into_iter().all(listed_retry));
    assert!(REJECT_REASONS.into_iter().all(listed_reject));
    let errors = [
        JobError::TooLarge { size: 2, limit: 1 },
        JobError::NotUtf8 { offset: 0 },
        JobError::Json(String::new()),
        JobError::Field { field: "to", reason: String::new() },
    ];
    assert!(errors.iter().all(listed_dlq));
    let reasons: std::collections::HashSet<&str> = errors.iter().map(JobError::reason).collect();
    assert_eq!(reasons.len(), DLQ_REASONS.len(), "a DLQ reason listed that no JobError gives");
}

#[test]
fn histogram_buckets_span_their_ranges() {
    let m = Metrics::new();
    m.send_latency.observe(0.012);
    m.queue_wait.observe(120.0);
    let text = m.render();
    for bucket in ["0.005", "30", "+Inf"] {
        assert!(text.contains(&format!("wabulk_send_latency_seconds_bucket{{le=\"{bucket}\"}}")));
    }
    for bucket in ["0.001", "3600", "+Inf"] {
        assert!(text.contains(&format!("wabulk_queue_wait_seconds_bucket{{le=\"{bucket}\"}}")));
    }
    assert!(text.contains("wabulk_send_latency_seconds_count 1\n"));
    assert!(text.contains("wabulk_queue_wait_seconds_sum 120\n"));
}

#[test]
fn each_instance_has_its_own_registry() {
    let a = Metrics::new();
    let b = Metrics::new();
    a.jobs_consumed.inc();
    assert!(a.render().contains("wabulk_jobs_consumed_total 1\n"));
    assert!(b.render().contains("wabulk_jobs_consumed_total 0\n"));
    assert_eq!(a.registry().gather().len(), b.registry().gather().len());
}

#[test]
fn label_guard_admits_up_to_the_cap_then_folds_into_other() {
    let m = Metrics::with_series_cap(2);
    assert_eq!(m.phone_label("1"), "1");
    assert_eq!(m.phone_label("2"), "2");
    assert_eq!(m.phone_label("3"), OVERFLOW_LABEL);
    // Already admitted values keep their own series.
    assert_eq!(m.phone_label("1"), "1");
    // WABAs have a budget of their own.
    assert_eq!(m.waba_label("3"), "3");
}

#[test]
fn ready_only_when_consuming_and_sending() {
    let h = Health::new();
    assert!(!h.is_ready());
    assert!(h.not_ready_reason().unwrap().contains("not consuming"));
    h.set_consuming(true);
    assert!(!h.is_ready());
    assert_eq!(h.not_ready_reason(), Some("not able to send to the Graph API"));
    h.set_sending(true);
    assert!(h.is_ready());
    assert_eq!(h.not_ready_reason(), None);
    h.set_consuming(false);
    assert_eq!(h.not_ready_reason(), Some("not consuming the jobs topic"));
    // Reasons are one line, as /readyz promises.
    h.set_sending(false);
    assert!(!h.not_ready_reason().unwrap().contains('\n'));
}

#[test]
fn exits_are_counted_on_their_numbers_series() {
    use wabulk_model::{ApiError, ErrorCode, Exit, Status};
    let m = Metrics::new();
    m.count_exit(111, &Exit::Sent { wamid: "w".into() });
    m.count_exit(111, &Exit::Sent { wamid: "w".into() });
    m.count_exit(111, &Exit::Expired);
    let error = ApiError { code: ErrorCode::Graph(131026), message: String::new() };
    m.count_exit(222, &Exit::Failed { reason: FailReason::Undeliverable, error });
    m.count_exit(333, &Exit::Rejected(RejectReason::UnknownWaba));
    m.count_result(Status::Expired);
    let text = m.render();
    for line in [
        "wabulk_messages_sent_total{phone_number_id=\"111\"} 2",
        "wabulk_messages_failed_total{phone_number_id=\"111\",reason=\"expired\"} 1",
        "wabulk_messages_failed_total{phone_number_id=\"222\",reason=\"undeliverable\"} 1",
        "wabulk_rejected_total{code=\"unknown_waba\"} 1",
        "wabulk_results_total{status=\"expired\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
    }
    assert!(!text.contains("\"333\""), "a rejected job's number must not become a label:\n{text}");
}

#[test]
fn statuses_are_counted_by_number_and_status_within_bounds() {
    let m = Metrics::with_series_cap(2);
    m.create_zero_series(["111"], ["333"]);
    m.create_status_zero_series(["222"]);
    let before = m.render();
    assert!(
        before.contains("wabulk_statuses_total{phone_number_id=\"111\",status=\"read\"} 0\n"),
        "{before}"
    );
    assert!(before.contains("wabulk_statuses_total{phone_number_id=\"222\",status=\"other\"} 0\n"));
    m.count_status(Some("111"), "delivered");
    m.count_status(Some("111"), "delivered");
    // A status Meta adds later, a number past the cap, no number at all.
    m.count_status(Some("111"), "some_new_status");
    m.count_status(Some("999"), "sent");
    m.count_status(None, "sent");
    let text = m.render();
    assert!(
        text.contains("wabulk_statuses_total{phone_number_id=\"111\",status=\"delivered\"} 2\n"),
        "{text}"
    );
    assert!(text.contains("wabulk_statuses_total{phone_number_id=\"111\",status=\"other\"} 1\n"));
    assert!(text.contains("wabulk_statuses_total{phone_number_id=\"other\",status=\"sent\"} 2\n"));
    assert!(!text.contains("some_new_status") && !text.contains("\"999\""), "{text}");
}

#[test]
fn failed_statuses_are_counted_by_known_code_else_other() {
    let m = Metrics::new();
    m.count_failed_status([Some(131026)]);
    m.count_failed_status([Some(131049), Some(131026)]);
    // A code not in the list, an error without a code, a failure without errors.
    m.count_failed_status([Some(999_999)]);
    m.count_failed_status([None]);
    m.count_failed_status([]);
    let text = m.render();
    assert!(text.contains("wabulk_status_errors_total{code=\"131026\"} 2\n"), "{text}");
    assert!(text.contains("wabulk_status_errors_total{code=\"131049\"} 1\n"));
    assert!(text.contains("wabulk_status_errors_total{code=\"other\"} 3\n"));
    assert!(!text.contains("999999"));
    let distinct: std::collections::HashSet<&str> = STATUS_ERROR_CODES.into_iter().collect();
    assert_eq!(distinct.len(), STATUS_ERROR_CODES.len(), "no code listed twice");
    assert!(STATUS_ERROR_CODES.iter().all(|c| c.parse::<i64>().is_ok()), "codes are digits");
}
