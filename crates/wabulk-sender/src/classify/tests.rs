//! Unit tests of the classification: every row of docs/platform.md's error
//! table, the header hints and the backoff bounds.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};
use wabulk_model::{ErrorCode, FailReason, Outcome, RetryReason, Scope};

use super::*;

fn graph_error(code: i64) -> Vec<u8> {
    format!(
        r#"{{"error":{{"message":"(#{code}) something","type":"OAuthException","code":{code},"error_data":{{"messaging_product":"whatsapp","details":"more about {code}"}},"fbtrace_id":"Axyz"}}}}"#
    )
    .into_bytes()
}

fn no_headers() -> HeaderMap {
    HeaderMap::new()
}

/// What a row of the table expects, without the jittered durations.
#[derive(Debug, PartialEq)]
enum Expect {
    Retry(Scope, RetryReason, Option<Duration>),
    Halt,
    Failed(FailReason),
}

fn shape(outcome: &Outcome) -> Expect {
    match outcome {
        Outcome::Retry { scope, after, reason, .. } => {
            let fixed = (*scope != Scope::Request).then_some(*after);
            Expect::Retry(*scope, *reason, fixed)
        }
        Outcome::Halt { scope, .. } => {
            assert_eq!(*scope, Scope::Waba);
            Expect::Halt
        }
        Outcome::Failed { reason, .. } => Expect::Failed(*reason),
        Outcome::Sent { .. } => panic!("unexpected Sent"),
    }
}

/// Every code of the table, each one as Meta sends it (HTTP 400, sometimes
/// 401/429/5xx): the status must not change the class.
#[test]
fn every_code_of_the_table_is_classified() {
    use Expect::*;
    let secs = |s| Some(Duration::from_secs(s));
    let mut table: Vec<(i64, Expect)> = vec![
        (130429, Retry(Scope::Number, RetryReason::NumberLimit, secs(1))),
        (131056, Retry(Scope::Pair, RetryReason::PairLimit, secs(1))),
        (80007, Retry(Scope::Waba, RetryReason::WabaLimit, secs(60))),
        (4, Retry(Scope::Token, RetryReason::AppLimit, secs(60))),
        (17, Retry(Scope::Token, RetryReason::AppLimit, secs(60))),
        (131048, Retry(Scope::Number, RetryReason::SpamLimit, secs(600))),
        (131057, Retry(Scope::Number, RetryReason::NumberUpgrading, secs(10))),
        (131053, Retry(Scope::Request, RetryReason::Media, None)),
    ];
    for code in [1, 2, 131000, 131016, 133004] {
        table.push((code, Retry(Scope::Request, RetryReason::Transient, None)));
    }
    for code in [190, 0, 10, 200, 250, 299] {
        table.push((code, Halt));
    }
    for code in [131031, 131042, 368, 133010, 33] {
        table.push((code, Failed(FailReason::AccountBlocked)));
    }
    for code in [100, 131008, 131009, 131051, 132000, 132001, 132007, 132015, 132016] {
        table.push((code, Failed(FailReason::BadRequest)));
    }
    for code in [131026, 131047, 131049, 130472, 131021] {
        table.push((code, Failed(FailReason::Undeliverable)));
    }
    for code in [3, 300, 132017, 131999, 999_999, -1] {
        table.push((code, Failed(FailReason::Unclassified)));
    }

    for (code, expected) in table {
        for status in [400u16, 401, 403, 429, 500, 503, 200] {
            let status = StatusCode::from_u16(status).unwrap();
            let outcome = classify(status, &no_headers(), &graph_error(code), 1);
            assert_eq!(shape(&outcome), expected, "code {code}, HTTP {status}");
            let error = match &outcome {
                Outcome::Retry { error, .. }
                | Outcome::Halt { error, .. }
                | Outcome::Failed { error, .. } => error,
                Outcome::Sent { .. } => unreachable!(),
            };
            assert_eq!(error.code, ErrorCode::Graph(code));
            assert_eq!(error.message, format!("(#{code}) something (more about {code})"));
        }
    }
}

#[test]
fn success_carries_the_wamid() {
    let body = br#"{"messaging_product":"whatsapp","contacts":[{"input":"+1555","wa_id":"1555"}],"messages":[{"id":"wamid.HBgL"}]}"#;
    let outcome = classify(StatusCode::OK, &no_headers(), body, 1);
    assert_eq!(outcome, Outcome::Sent { wamid: "wamid.HBgL".into() });
}

#[test]
fn success_without_a_wamid_fails_visibly() {
    for body in [&br#"{"messages":[]}"#[..], b"", b"not json", br#"{"messages":[{"id":""}]}"#] {
        match classify(StatusCode::OK, &no_headers(), body, 1) {
            Outcome::Failed { reason: FailReason::Unclassified, error } => {
                assert_eq!(error.code, ErrorCode::Engine("invalid_response".into()));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn server_errors_without_graph_body_are_retried_with_backoff() {
    for status in [500u16, 502, 503, 504, 408] {
        let status = StatusCode::from_u16(status).unwrap();
        match classify(status, &no_headers(), b"<html>bad gateway</html>", 3) {
            Outcome::Retry { scope: Scope::Request, after, reason: RetryReason::ServerError, error } => {
                assert!(after <= Duration::from_secs(2), "{after:?}");
                assert_eq!(error.code, ErrorCode::Engine(format!("http_{}", status.as_u16())));
            }
            other => panic!("{status}: {other:?}"),
        }
    }
}

#[test]
fn graph_error_without_code_is_not_a_graph_error() {
    let body = br#"{"error":{"message":"no code here"}}"#;
    assert!(matches!(
        classify(StatusCode::BAD_GATEWAY, &no_headers(), body, 1),
        Outcome::Retry { reason: RetryReason::ServerError, .. }
    ));
    assert!(matches!(
        classify(StatusCode::BAD_REQUEST, &no_headers(), body, 1),
        Outcome::Failed { reason: FailReason::Unclassified, .. }
    ));
}

#[test]
fn client_errors_without_graph_body_fail_unclassified() {
    for status in [400u16, 401, 403, 404, 413, 301] {
        let status = StatusCode::from_u16(status).unwrap();
        match classify(status, &no_headers(), b"nope", 1) {
            Outcome::Failed { reason: FailReason::Unclassified, error } => {
                assert_eq!(error.code, ErrorCode::Engine(format!("http_{}", status.as_u16())));
            }
            other => panic!("{status}: {other:?}"),
        }
    }
}

#[test]
fn plain_429_honours_retry_after() {
    let mut headers = HeaderMap::new();
    headers.insert("retry-after", HeaderValue::from_static("7"));
    match classify(StatusCode::TOO_MANY_REQUESTS, &headers, b"", 1) {
        Outcome::Retry { scope: Scope::Request, after, reason: RetryReason::ServerError, .. } => {
            assert_eq!(after, Duration::from_secs(7));
        }
        other => panic!("{other:?}"),
    }
    // Without the header it is the ordinary backoff.
    match classify(StatusCode::TOO_MANY_REQUESTS, &no_headers(), b"", 1) {
        Outcome::Retry { scope: Scope::Request, after, .. } => assert!(after <= BACKOFF_BASE),
        other => panic!("{other:?}"),
    }
}

fn usage_header(value: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("x-business-use-case-usage", HeaderValue::from_str(value).unwrap());
    headers
}

#[test]
fn waba_limit_uses_the_business_use_case_estimate() {
    let headers = usage_header(
        r#"{"102290129340398":[{"type":"whatsapp_business_messaging","call_count":100,"total_cputime":4,"total_time":8,"estimated_time_to_regain_access":12}],"99":[{"type":"x","estimated_time_to_regain_access":3}]}"#,
    );
    for code in [80007, 4, 17] {
        match classify(StatusCode::BAD_REQUEST, &headers, &graph_error(code), 1) {
            Outcome::Retry { after, .. } => assert_eq!(after, Duration::from_secs(12 * 60), "code {code}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn header_hint_beats_retry_after_which_beats_default() {
    let mut headers = usage_header(r#"{"1":[{"estimated_time_to_regain_access":2}]}"#);
    headers.insert("retry-after", HeaderValue::from_static("30"));
    assert_eq!(limit_pause(&headers), Duration::from_secs(120));

    // A zero estimate means "none": Retry-After is used.
    let mut headers = usage_header(r#"{"1":[{"estimated_time_to_regain_access":0}]}"#);
    headers.insert("retry-after", HeaderValue::from_static("30"));
    assert_eq!(limit_pause(&headers), Duration::from_secs(30));

    assert_eq!(limit_pause(&no_headers()), DEFAULT_LIMIT_PAUSE);
}

#[test]
fn malformed_headers_are_ignored() {
    for bad in ["", "{", "[]", r#"{"1":5}"#, r#"{"1":[{"estimated_time_to_regain_access":"soon"}]}"#] {
        assert_eq!(business_use_case_regain(&usage_header(bad)), None, "{bad}");
    }
    // Numbers sent as strings or fractions are still understood.
    assert_eq!(
        business_use_case_regain(&usage_header(r#"{"1":[{"estimated_time_to_regain_access":"5"}]}"#)),
        Some(Duration::from_secs(300))
    );
    assert_eq!(
        business_use_case_regain(&usage_header(r#"{"1":[{"estimated_time_to_regain_access":0.5}]}"#)),
        Some(Duration::from_secs(60))
    );
    for bad in ["soon", "-3", "0", "Wed, 21 Oct 2015 07:28:00 GMT", ""] {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_str(bad).unwrap());
        assert_eq!(retry_after(&headers), None, "{bad}");
    }
}

#[test]
fn hinted_pauses_are_capped() {
    let headers = usage_header(r#"{"1":[{"estimated_time_to_regain_access":99999999}]}"#);
    assert_eq!(business_use_case_regain(&headers), Some(MAX_HINTED_PAUSE));
    let mut headers = HeaderMap::new();
    headers.insert("retry-after", HeaderValue::from_static("99999999999"));
    assert_eq!(retry_after(&headers), Some(MAX_HINTED_PAUSE));
}

#[test]
fn backoff_ceiling_doubles_from_base_up_to_the_cap() {
    let cap = Duration::from_secs(60);
    assert_eq!(backoff_ceiling(0, cap), Duration::from_millis(500));
    assert_eq!(backoff_ceiling(1, cap), Duration::from_millis(500));
    assert_eq!(backoff_ceiling(2, cap), Duration::from_secs(1));
    assert_eq!(backoff_ceiling(5, cap), Duration::from_secs(8));
    assert_eq!(backoff_ceiling(8, cap), Duration::from_secs(60));
    assert_eq!(backoff_ceiling(u32::MAX, cap), Duration::from_secs(60));
    assert_eq!(backoff_ceiling(3, Duration::from_millis(700)), Duration::from_millis(700));
}

#[test]
fn backoff_is_jittered_within_bounds() {
    let cap = Duration::from_secs(60);
    for attempt in [1, 2, 4, 10, 40] {
        let ceiling = backoff_ceiling(attempt, cap);
        let samples: Vec<Duration> = (0..200).map(|_| request_backoff(attempt, cap)).collect();
        assert!(samples.iter().all(|d| *d <= ceiling), "attempt {attempt}");
        // Full jitter: the picks spread over the range rather than cluster.
        assert!(samples.iter().any(|d| *d < ceiling / 2), "attempt {attempt}");
        assert!(samples.iter().any(|d| *d > ceiling / 2), "attempt {attempt}");
    }
    assert_eq!(request_backoff(5, Duration::ZERO), Duration::ZERO);
}

#[test]
fn transient_backoff_follows_attempt_and_cap() {
    let body = graph_error(131000);
    for _ in 0..100 {
        match classify_with_cap(StatusCode::BAD_REQUEST, &no_headers(), &body, 20, Duration::from_secs(3)) {
            Outcome::Retry { after, .. } => assert!(after <= Duration::from_secs(3)),
            other => panic!("{other:?}"),
        }
        match classify(StatusCode::BAD_REQUEST, &no_headers(), &body, 1) {
            Outcome::Retry { after, .. } => assert!(after <= BACKOFF_BASE),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn message_falls_back_to_details_and_is_bounded() {
    let body = br#"{"error":{"code":100,"error_data":{"details":"Parameter 'to' is invalid"}}}"#;
    match classify(StatusCode::BAD_REQUEST, &no_headers(), body, 1) {
        Outcome::Failed { error, .. } => assert_eq!(error.message, "Parameter 'to' is invalid"),
        other => panic!("{other:?}"),
    }
    let long = "é".repeat(5000);
    let body = format!(r#"{{"error":{{"code":100,"message":"{long}"}}}}"#);
    match classify(StatusCode::BAD_REQUEST, &no_headers(), body.as_bytes(), 1) {
        Outcome::Failed { error, .. } => assert_eq!(error.message.chars().count(), MAX_MESSAGE_CHARS + 1),
        other => panic!("{other:?}"),
    }
}

/// A token check refuses exactly the codes that halt a send: the same table.
#[test]
fn token_check_refuses_exactly_what_halts_a_send() {
    let codes = [190, 0, 10, 200, 250, 299, 1, 2, 4, 17, 100, 368, 80007, 130429, 131000, 131056, 999_999];
    for code in codes {
        let (status, body) = (StatusCode::BAD_REQUEST, graph_error(code));
        let check = classify_token_check(status, &no_headers(), &body);
        let halts = matches!(classify(status, &no_headers(), &body, 1), Outcome::Halt { .. });
        match check {
            TokenCheck::Refused(error) if halts => assert_eq!(error.code, ErrorCode::Graph(code)),
            TokenCheck::Unknown(error) if !halts => assert_eq!(error.code, ErrorCode::Graph(code)),
            other => panic!("{code}: {other:?}"),
        }
    }
    // The Graph error decides whatever the status, as for a send.
    let check = classify_token_check(StatusCode::OK, &no_headers(), &graph_error(190));
    assert!(matches!(check, TokenCheck::Refused(_)), "{check:?}");
}

#[test]
fn token_check_is_accepted_only_with_the_node() {
    let ok = |body: &str| classify_token_check(StatusCode::OK, &no_headers(), body.as_bytes());
    assert_eq!(ok(r#"{"id":"106540352242922"}"#), TokenCheck::Accepted);
    assert_eq!(
        ok(r#"{"id":"1","verified_name":"Acme","display_phone_number":"+1 555"}"#),
        TokenCheck::Accepted
    );
    for body in ["", "{}", r#"{"id":""}"#, "<html>portal</html>"] {
        match ok(body) {
            TokenCheck::Unknown(error) => {
                assert_eq!(error.code, ErrorCode::Engine("invalid_response".into()))
            }
            other => panic!("{body}: {other:?}"),
        }
    }
}

#[test]
fn token_check_without_graph_body_is_unknown() {
    for status in [500, 503, 401, 403, 429] {
        let status = StatusCode::from_u16(status).unwrap();
        match classify_token_check(status, &no_headers(), b"upstream error") {
            TokenCheck::Unknown(error) => {
                assert_eq!(error.code, ErrorCode::Engine(format!("http_{}", status.as_u16())))
            }
            other => panic!("{status}: {other:?}"),
        }
    }
}
