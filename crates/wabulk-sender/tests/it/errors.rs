//! Every row of docs/platform.md's error table, end to end: the simulator answers
//! the error over HTTP/2 and the sender must produce the expected Outcome.

use std::time::Duration;

use wabulk_graph_sim::{Faults, ForcedError, SimConfig, SimNumber};
use wabulk_model::{ErrorCode, FailReason, Outcome, RetryReason, Scope};

use crate::{is_sent, send_many, send_to, sender, sim_config, start, NUMBER, WABA};

/// The class of an outcome without its jittered or free-text parts.
#[derive(Debug, PartialEq)]
enum Class {
    Retry(Scope, RetryReason, Option<Duration>),
    Halt(Scope),
    Failed(FailReason),
}

fn class(outcome: &Outcome) -> (Class, ErrorCode) {
    match outcome {
        Outcome::Retry { scope, after, reason, error } => {
            // Request-scope pauses are jittered backoff: check the bound only.
            let fixed = if *scope == Scope::Request {
                assert!(*after <= Duration::from_millis(500), "{outcome:?}");
                None
            } else {
                Some(*after)
            };
            (Class::Retry(*scope, *reason, fixed), error.code.clone())
        }
        Outcome::Halt { scope, error } => (Class::Halt(*scope), error.code.clone()),
        Outcome::Failed { reason, error } => (Class::Failed(*reason), error.code.clone()),
        Outcome::Sent { .. } => panic!("unexpected Sent"),
    }
}

struct Row {
    code: i64,
    http_status: u16,
    headers: Vec<(String, String)>,
    expect: Class,
}

fn row(code: i64, expect: Class) -> Row {
    Row { code, http_status: 400, headers: Vec::new(), expect }
}

fn usage(minutes: u32) -> Vec<(String, String)> {
    let value = format!(
        r#"{{"{WABA}":[{{"type":"whatsapp","call_count":100,"total_cputime":1,"total_time":1,"estimated_time_to_regain_access":{minutes}}}]}}"#
    );
    vec![("x-business-use-case-usage".into(), value)]
}

/// One simulator; each row gets its own business number whose every request
/// is answered with that row's forced error.
#[tokio::test]
async fn every_row_of_the_error_table_end_to_end() {
    use Class::*;
    let secs = |s| Some(Duration::from_secs(s));
    let mut rows = vec![
        row(130429, Retry(Scope::Number, RetryReason::NumberLimit, secs(1))),
        row(131056, Retry(Scope::Pair, RetryReason::PairLimit, secs(1))),
        Row { headers: usage(3), ..row(80007, Retry(Scope::Waba, RetryReason::WabaLimit, secs(180))) },
        row(80007, Retry(Scope::Waba, RetryReason::WabaLimit, secs(60))),
        Row {
            http_status: 429,
            headers: vec![("retry-after".into(), "42".into())],
            ..row(80007, Retry(Scope::Waba, RetryReason::WabaLimit, secs(42)))
        },
        row(4, Retry(Scope::Token, RetryReason::AppLimit, secs(60))),
        Row { headers: usage(2), ..row(17, Retry(Scope::Token, RetryReason::AppLimit, secs(120))) },
        Row {
            headers: vec![("retry-after".into(), "9".into())],
            ..row(4, Retry(Scope::Token, RetryReason::AppLimit, secs(9)))
        },
        row(131048, Retry(Scope::Number, RetryReason::SpamLimit, secs(600))),
        row(131057, Retry(Scope::Number, RetryReason::NumberUpgrading, secs(10))),
        row(131053, Retry(Scope::Request, RetryReason::Media, None)),
        Row { http_status: 500, ..row(131000, Retry(Scope::Request, RetryReason::Transient, None)) },
    ];
    for code in [1, 2, 131016, 133004] {
        rows.push(row(code, Retry(Scope::Request, RetryReason::Transient, None)));
    }
    for code in [190, 0, 10, 200, 299] {
        rows.push(Row { http_status: 401, ..row(code, Halt(Scope::Waba)) });
    }
    for code in [131031, 131042, 368, 133010, 33] {
        rows.push(row(code, Failed(FailReason::AccountBlocked)));
    }
    for code in [100, 131008, 131009, 131051, 132000, 132016] {
        rows.push(row(code, Failed(FailReason::BadRequest)));
    }
    for code in [131026, 131047, 131049, 130472, 131021] {
        rows.push(row(code, Failed(FailReason::Undeliverable)));
    }
    rows.push(row(135000, Failed(FailReason::Unclassified)));

    let mut config = sim_config();
    for (i, r) in rows.iter().enumerate() {
        let number = (NUMBER + 1 + i as u64).to_string();
        config.numbers.push(SimNumber { id: number.clone(), mps: 1000, waba_id: WABA.into() });
        config.faults.forced.push(ForcedError {
            code: r.code,
            http_status: r.http_status,
            probability: 1.0,
            headers: r.headers.clone(),
            phone_number_id: Some(number),
        });
    }
    let sim = start(config).await;
    let sender = sender(sim.base_url(), |_| {});

    let mut set = tokio::task::JoinSet::new();
    for i in 0..rows.len() {
        let sender = sender.clone();
        set.spawn(async move { (i, send_to(&sender, NUMBER + 1 + i as u64, 15_551_234_567).await) });
    }
    let mut seen = 0;
    while let Some(joined) = set.join_next().await {
        let (i, outcome) = joined.unwrap();
        let r = &rows[i];
        let (got, code) = class(&outcome);
        assert_eq!(got, r.expect, "code {} (HTTP {}): {outcome:?}", r.code, r.http_status);
        assert_eq!(code, ErrorCode::Graph(r.code));
        seen += 1;
    }
    assert_eq!(seen, rows.len());
    // The number without a forced error still sends.
    assert!(is_sent(&send_to(&sender, NUMBER, 15_551_234_567).await));
    sim.shutdown().await;
}

#[tokio::test]
async fn success_carries_the_simulators_wamid() {
    let sim = start(sim_config()).await;
    let sender = sender(sim.base_url(), |_| {});
    let outcome = send_to(&sender, NUMBER, 15_551_234_567).await;
    assert!(is_sent(&outcome), "{outcome:?}");
    let stats = sim.stats();
    assert_eq!((stats.requests, stats.accepted, stats.http2_requests), (1, 1, 1));
    sim.shutdown().await;
}

#[tokio::test]
async fn wrong_token_halts_the_waba() {
    let sim = start(sim_config()).await;
    let sender = sender(sim.base_url(), |_| {});
    let token = wabulk_sender::AccessToken::new("not-the-token".into());
    let outcome =
        sender.send(wabulk_model::NumericId::new(NUMBER), &token, crate::body(15_551_234_567), 1, None).await;
    match &outcome {
        Outcome::Halt { scope: Scope::Waba, error } => {
            assert_eq!(error.code, ErrorCode::Graph(190));
            assert!(!error.message.contains("not-the-token"));
        }
        other => panic!("{other:?}"),
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn unknown_number_is_a_bad_request() {
    let sim = start(sim_config()).await;
    let sender = sender(sim.base_url(), |_| {});
    let outcome = send_to(&sender, 999, 15_551_234_567).await;
    assert_eq!(class(&outcome), (Class::Failed(FailReason::BadRequest), ErrorCode::Graph(100)));
    sim.shutdown().await;
}

/// 131056 from the simulator's own pair rule: a burst of 1, then silence.
#[tokio::test]
async fn pair_rule_gives_a_pair_retry() {
    let config = SimConfig { pair_interval: Duration::from_millis(500), pair_burst: 1, ..sim_config() };
    let sim = start(config).await;
    let sender = sender(sim.base_url(), |_| {});
    assert!(is_sent(&send_to(&sender, NUMBER, 15_551_234_567).await));
    let outcome = send_to(&sender, NUMBER, 15_551_234_567).await;
    assert_eq!(
        class(&outcome),
        (
            Class::Retry(Scope::Pair, RetryReason::PairLimit, Some(Duration::from_secs(1))),
            ErrorCode::Graph(131056)
        )
    );
    // Another recipient of the same number is not affected.
    assert!(is_sent(&send_to(&sender, NUMBER, 15_557_654_321).await));
    sim.shutdown().await;
}

/// 130429 from the simulator's own throughput rule: 30 sends at once to a
/// 10-mps number.
#[tokio::test]
async fn exceeding_mps_gives_a_number_retry() {
    let mut config = sim_config();
    config.numbers[0].mps = 10;
    let sim = start(config).await;
    let sender = sender(sim.base_url(), |_| {});
    let outcomes = send_many(&sender, 30).await;
    let sent = outcomes.iter().filter(|o| is_sent(o)).count();
    let limited: Vec<_> = outcomes.iter().filter(|o| !is_sent(o)).map(class).collect();
    assert_eq!(sent, 10, "{outcomes:?}");
    assert_eq!(limited.len(), 20);
    for got in limited {
        assert_eq!(
            got,
            (
                Class::Retry(Scope::Number, RetryReason::NumberLimit, Some(Duration::from_secs(1))),
                ErrorCode::Graph(130429)
            )
        );
    }
    sim.shutdown().await;
}

/// 80007 from the simulator's own hourly cap, with the header it sends.
#[tokio::test]
async fn waba_cap_gives_a_waba_retry_with_the_header_estimate() {
    let mut config = sim_config();
    config.wabas[0].hourly_cap = 3;
    let sim = start(config).await;
    let sender = sender(sim.base_url(), |_| {});
    for to in 0..3 {
        assert!(is_sent(&send_to(&sender, NUMBER, 15_551_000_000 + to).await));
    }
    match send_to(&sender, NUMBER, 15_552_000_000).await {
        Outcome::Retry { scope: Scope::Waba, reason: RetryReason::WabaLimit, after, error } => {
            assert_eq!(error.code, ErrorCode::Graph(80007));
            // The simulator's estimate is whole minutes, at most the hour.
            assert!(after >= Duration::from_secs(60) && after <= Duration::from_secs(3600), "{after:?}");
            assert_eq!(after.as_secs() % 60, 0);
        }
        other => panic!("{other:?}"),
    }
    sim.shutdown().await;
}

/// The simulator's transient fault mixes 131000 (HTTP 500), bare 500 and
/// bare 503: all are request-scope retries.
#[tokio::test]
async fn transient_faults_are_request_retries() {
    let config = SimConfig { faults: Faults { transient: 1.0, ..Faults::default() }, ..sim_config() };
    let sim = start(config).await;
    let sender = sender(sim.base_url(), |_| {});
    let mut reasons = std::collections::BTreeSet::new();
    for outcome in send_many(&sender, 30).await {
        match outcome {
            Outcome::Retry { scope: Scope::Request, reason, error, .. } => {
                reasons.insert(format!("{}:{}", reason.label(), error.code));
            }
            other => panic!("{other:?}"),
        }
    }
    let expected: std::collections::BTreeSet<String> =
        ["transient:131000", "server_error:http_500", "server_error:http_503"].map(String::from).into();
    assert_eq!(reasons, expected);
    sim.shutdown().await;
}

#[tokio::test]
async fn hang_is_a_timeout_retry() {
    let config = SimConfig { faults: Faults { hang: 1.0, ..Faults::default() }, ..sim_config() };
    let sim = start(config).await;
    let sender = sender(sim.base_url(), |c| c.request_timeout = Duration::from_millis(300));
    let started = std::time::Instant::now();
    let outcomes = send_many(&sender, 5).await;
    assert!(started.elapsed() < Duration::from_secs(3));
    for outcome in outcomes {
        match outcome {
            Outcome::Retry { scope: Scope::Request, reason: RetryReason::Timeout, error, .. } => {
                assert_eq!(error.code, ErrorCode::Engine("timeout".into()));
            }
            other => panic!("{other:?}"),
        }
    }
    // The timed-out streams were given back (and cancelled on the wire).
    let stats = sender.pool_stats();
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.broken_total, 0);
    sim.shutdown().await;
}
