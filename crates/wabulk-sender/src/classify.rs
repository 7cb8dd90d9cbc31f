//! Classification of one Graph API answer into an [`Outcome`]: the error
//! table of docs/platform.md ("Error codes and what the engine does") in
//! code. This is the only place that reads HTTP statuses, Graph error codes
//! and rate-limit headers; the engine acts on the class (finish, retry, halt
//! or give up) and tells the scheduler.
//!
//! Rules, in order:
//! 1. a body with a parsable Graph error (`{"error":{"code":N,...}}`) is
//!    classified by `error.code` alone, whatever the HTTP status and never by
//!    the message text;
//! 2. a 2xx with `messages[0].id` is `Sent`;
//! 3. only then does the HTTP status decide (5xx, 408 and 429 are retried,
//!    anything else fails as unclassified).
//!
//! A token check's answer goes through the same table: the codes that halt a
//! WABA are the ones that refuse its token ([`TokenCheck`]).

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use rand::Rng;
use serde::Deserialize;
use wabulk_model::{ApiError, ErrorCode, FailReason, Outcome, RetryReason, Scope};

use crate::token::TokenCheck;

#[cfg(test)]
mod tests;

/// First step of the request-scope backoff; attempt n waits up to
/// `BACKOFF_BASE × 2^(n-1)` (full jitter), capped by `max_request_backoff`.
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);

/// Cap of the request-scope backoff used by [`classify`]; the [`crate::Sender`]
/// uses `SenderConfig::max_request_backoff` instead.
pub const DEFAULT_MAX_REQUEST_BACKOFF: Duration = Duration::from_secs(60);

/// 130429 (number throughput): the number's limiter already paces sends, so
/// an excess means arrival bunching; one second lets the window slide.
pub const NUMBER_LIMIT_PAUSE: Duration = Duration::from_secs(1);

/// 131056 (pair rate): 4^0 seconds. The scheduler knows how many times in a
/// row this pair failed and computes 4^X itself; the sender sees one answer.
pub const PAIR_LIMIT_PAUSE: Duration = Duration::from_secs(1);

/// 131048 (spam rate limit): Meta gives no figure, and hammering a number
/// that was flagged for spam makes the flag last longer, so the number rests
/// for a long time: ten minutes, a fixed figure (no setting changes it).
pub const SPAM_LIMIT_PAUSE: Duration = Duration::from_secs(10 * 60);

/// 131057 (number being upgraded): an upgrade is applied within about a
/// minute; polling every 10 s keeps the extra calls negligible.
pub const NUMBER_UPGRADING_PAUSE: Duration = Duration::from_secs(10);

/// 80007, 4 and 17 without any header hint: the WABA and app windows are
/// hourly, and a minute is long enough not to burn calls while throttled.
pub const DEFAULT_LIMIT_PAUSE: Duration = Duration::from_secs(60);

/// Upper bound on any pause taken from a response header, so that a garbage
/// or hostile header cannot park a WABA for a year.
pub const MAX_HINTED_PAUSE: Duration = Duration::from_secs(24 * 60 * 60);

/// Graph error messages go into results; a pathological one must not.
const MAX_MESSAGE_CHARS: usize = 1024;

/// Header Meta sends with WABA/business use-case throttling
/// (`{"<waba_id>":[{"estimated_time_to_regain_access":M,...}]}`, minutes).
const BUSINESS_USE_CASE_USAGE: &str = "x-business-use-case-usage";

/// Classify an HTTP answer (status, headers, body) into an [`Outcome`].
/// `attempt` is 1 for the first try of a job and drives the request-scope
/// backoff (capped at [`DEFAULT_MAX_REQUEST_BACKOFF`]). Pure apart from the
/// jitter of that backoff.
pub fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8], attempt: u32) -> Outcome {
    classify_with_cap(status, headers, body, attempt, DEFAULT_MAX_REQUEST_BACKOFF)
}

/// [`classify`] with an explicit backoff cap (the sender's configuration).
pub fn classify_with_cap(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    attempt: u32,
    max_backoff: Duration,
) -> Outcome {
    let parsed: Option<ResponseBody> = serde_json::from_slice(body).ok();
    if let Some(ResponseBody { error: Some(error), .. }) = &parsed {
        return classify_graph_error(error, headers, attempt, max_backoff);
    }
    if status.is_success() {
        if let Some(wamid) = parsed.as_ref().and_then(ResponseBody::first_message_id) {
            return Outcome::Sent { wamid: wamid.to_owned() };
        }
        // Accepted by HTTP but not by the Graph API's documented shape: the
        // message may have gone out, so retrying could send it twice; fail it
        // visibly instead and let the operator look.
        return Outcome::Failed {
            reason: FailReason::Unclassified,
            error: engine_error("invalid_response", format!("HTTP {status} without messages[0].id")),
        };
    }
    classify_status(status, headers, attempt, max_backoff)
}

/// Classify the answer to a token check (`GET /{phone_number_id}?fields=id`).
/// A Graph error goes through the same table as a send, so exactly the codes
/// that halt a WABA refuse the token; any other error says nothing about the
/// token. A 2xx must name the node (`id`): anything else in front of the
/// Graph API could answer 200 without having looked at the token.
pub(crate) fn classify_token_check(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> TokenCheck {
    if let Ok(ResponseBody { error: Some(graph), .. }) = serde_json::from_slice::<ResponseBody>(body) {
        // Only the class is used, never the pause: attempt and cap do not matter.
        return match classify_graph_error(&graph, headers, 1, DEFAULT_MAX_REQUEST_BACKOFF) {
            Outcome::Halt { error, .. } => TokenCheck::Refused(error),
            _ => TokenCheck::Unknown(graph.api_error()),
        };
    }
    if !status.is_success() {
        return TokenCheck::Unknown(status_error(status));
    }
    match serde_json::from_slice::<NodeBody>(body) {
        Ok(node) if !node.id.is_empty() => TokenCheck::Accepted,
        _ => TokenCheck::Unknown(engine_error("invalid_response", format!("HTTP {status} without id"))),
    }
}

/// The branch on `error.code`: docs/platform.md's error table, row by row.
fn classify_graph_error(error: &GraphError, headers: &HeaderMap, attempt: u32, cap: Duration) -> Outcome {
    let api_error = error.api_error();
    let retry = |scope, after, reason| Outcome::Retry { scope, after, reason, error: api_error.clone() };
    let fail = |reason| Outcome::Failed { reason, error: api_error.clone() };
    match error.code {
        130429 => retry(Scope::Number, NUMBER_LIMIT_PAUSE, RetryReason::NumberLimit),
        131056 => retry(Scope::Pair, PAIR_LIMIT_PAUSE, RetryReason::PairLimit),
        80007 => retry(Scope::Waba, limit_pause(headers), RetryReason::WabaLimit),
        4 | 17 => retry(Scope::Token, limit_pause(headers), RetryReason::AppLimit),
        131048 => retry(Scope::Number, SPAM_LIMIT_PAUSE, RetryReason::SpamLimit),
        131057 => retry(Scope::Number, NUMBER_UPGRADING_PAUSE, RetryReason::NumberUpgrading),
        1 | 2 | 131000 | 131016 | 133004 => {
            retry(Scope::Request, request_backoff(attempt, cap), RetryReason::Transient)
        }
        131053 => retry(Scope::Request, request_backoff(attempt, cap), RetryReason::Media),
        // Token expired or lacking permission: every job of the WABA would
        // fail the same way, so stop the WABA and keep its jobs.
        190 | 0 | 10 | 200..=299 => Outcome::Halt { scope: Scope::Waba, error: api_error },
        131031 | 131042 | 368 | 133010 | 33 => fail(FailReason::AccountBlocked),
        100 | 131008 | 131009 | 131051 | 132000..=132016 => fail(FailReason::BadRequest),
        131026 | 131047 | 131049 | 130472 | 131021 => fail(FailReason::Undeliverable),
        // An unknown code is failed, not retried: Meta adds codes over time,
        // and retrying one we do not understand could loop forever on a
        // permanent error (burning throughput and WABA quota); a visible
        // `unclassified` failure tells the operator to extend this table.
        _ => fail(FailReason::Unclassified),
    }
}

/// Answers that carry no Graph error: only the status is left to go on.
fn classify_status(status: StatusCode, headers: &HeaderMap, attempt: u32, cap: Duration) -> Outcome {
    let retryable = status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT;
    if retryable {
        // A proxy or load balancer in front of the Graph API answered; honour
        // its Retry-After when it gives one.
        let after = retry_after(headers).unwrap_or_else(|| request_backoff(attempt, cap));
        return Outcome::Retry {
            scope: Scope::Request,
            after,
            reason: RetryReason::ServerError,
            error: status_error(status),
        };
    }
    Outcome::Failed { reason: FailReason::Unclassified, error: status_error(status) }
}

fn status_error(status: StatusCode) -> ApiError {
    engine_error(
        &format!("http_{}", status.as_u16()),
        format!("HTTP {status} without a Graph API error body"),
    )
}

/// The pause for 80007 / 4 / 17: Meta's own estimate first, then the generic
/// Retry-After, then [`DEFAULT_LIMIT_PAUSE`].
fn limit_pause(headers: &HeaderMap) -> Duration {
    business_use_case_regain(headers).or_else(|| retry_after(headers)).unwrap_or(DEFAULT_LIMIT_PAUSE)
}

/// `estimated_time_to_regain_access` (minutes) from `X-Business-Use-Case-Usage`.
/// The header maps business ids to lists of usage entries; the sender does not
/// know which id the scheduler cares about, and every listed entry throttles
/// this request, so the largest estimate wins. Zero means "no estimate".
pub fn business_use_case_regain(headers: &HeaderMap) -> Option<Duration> {
    let mut minutes: Option<u64> = None;
    for value in headers.get_all(BUSINESS_USE_CASE_USAGE) {
        let Ok(map) = serde_json::from_slice::<serde_json::Value>(value.as_bytes()) else { continue };
        let Some(map) = map.as_object() else { continue };
        let entries = map.values().filter_map(|v| v.as_array()).flatten();
        for entry in entries {
            let Some(m) = entry.get("estimated_time_to_regain_access").and_then(json_u64) else { continue };
            if m > 0 {
                minutes = Some(minutes.map_or(m, |old| old.max(m)));
            }
        }
    }
    minutes.map(|m| Duration::from_secs(m.saturating_mul(60)).min(MAX_HINTED_PAUSE))
}

/// `Retry-After` in delta-seconds. The HTTP-date form is not parsed (the
/// Graph API does not use it); such a header counts as absent.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    let secs: u64 = text.parse().ok()?;
    (secs > 0).then(|| Duration::from_secs(secs).min(MAX_HINTED_PAUSE))
}

/// Exponential backoff with full jitter: a uniform pick in
/// `[0, min(cap, BACKOFF_BASE × 2^(attempt-1))]`. Full jitter spreads the
/// retries of a burst of failures instead of re-synchronising them.
/// `attempt` 0 is treated as 1.
pub fn request_backoff(attempt: u32, cap: Duration) -> Duration {
    let ceiling = backoff_ceiling(attempt, cap);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
}

/// The upper bound of [`request_backoff`] for `attempt`.
pub fn backoff_ceiling(attempt: u32, cap: Duration) -> Duration {
    let doublings = attempt.max(1) - 1;
    // 2^31 × 500 ms overflows nothing in Duration, but saturate anyway.
    let factor = 1u32.checked_shl(doublings.min(31)).unwrap_or(u32::MAX);
    BACKOFF_BASE.saturating_mul(factor).min(cap)
}

fn engine_error(code: &str, message: String) -> ApiError {
    ApiError { code: ErrorCode::Engine(code.to_owned()), message }
}

fn json_u64(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => {
            n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f.ceil() as u64))
        }
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The parts of a Graph API response body the classification reads; unknown
/// fields are ignored.
#[derive(Debug, Deserialize)]
struct ResponseBody {
    #[serde(default)]
    error: Option<GraphError>,
    #[serde(default)]
    messages: Vec<MessageRef>,
}

impl ResponseBody {
    fn first_message_id(&self) -> Option<&str> {
        self.messages.first().map(|m| m.id.as_str()).filter(|id| !id.is_empty())
    }
}

/// A node read with `?fields=id`, as a token check gets it.
#[derive(Debug, Deserialize)]
struct NodeBody {
    id: String,
}

#[derive(Debug, Deserialize)]
struct MessageRef {
    id: String,
}

/// `error` of a Graph error body. `code` is required: without it the body is
/// not a Graph error and the HTTP status decides.
#[derive(Debug, Deserialize)]
struct GraphError {
    code: i64,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    error_data: Option<ErrorData>,
}

#[derive(Debug, Deserialize)]
struct ErrorData {
    #[serde(default)]
    details: Option<String>,
}

impl GraphError {
    fn api_error(&self) -> ApiError {
        ApiError { code: ErrorCode::Graph(self.code), message: self.text() }
    }

    /// The Graph `message`, with `error_data.details` appended when it adds
    /// something (for 100 it names the bad parameter), bounded in length.
    fn text(&self) -> String {
        let message = self.message.as_deref().unwrap_or("").trim();
        let details = self.error_data.as_ref().and_then(|d| d.details.as_deref()).unwrap_or("").trim();
        let text = match (message.is_empty(), details.is_empty() || details == message) {
            (_, true) => message.to_owned(),
            (true, false) => details.to_owned(),
            (false, false) => format!("{message} ({details})"),
        };
        match text.char_indices().nth(MAX_MESSAGE_CHARS) {
            Some((cut, _)) => format!("{}…", &text[..cut]),
            None => text,
        }
    }
}
