//! What the referee saw: the counters behind `GET /__sim/stats` and
//! [`crate::SimHandle::stats`]. Plain serde data so that tests, the demo summary
//! and capacity scripts read the same numbers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A snapshot of the simulator's counters since it started.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct SimStats {
    /// Every request to a `/messages` path, whatever its answer.
    pub requests: u64,
    /// Requests answered 200 with a wamid.
    pub accepted: u64,
    /// Error answers by Graph API code (`"130429"`), or `"http_500"` /
    /// `"http_503"` for bare HTTP failures without a JSON body.
    pub errors_by_code: BTreeMap<String, u64>,
    /// Arrivals that broke a platform limit: the sender's fault.
    pub violations: Violations,
    /// Per configured number.
    pub numbers: BTreeMap<String, NumberStats>,
    /// `biz_opaque_callback_data` values accepted more than once, in the order
    /// they were first repeated; capped at [`DUPLICATE_LIST_CAP`] entries.
    pub duplicate_job_ids: Vec<String>,
    /// Acceptances beyond the first of any `biz_opaque_callback_data` (not capped).
    pub duplicate_count: u64,
    /// Requests deliberately never answered.
    pub hangs: u64,
    /// Requests answered with a stream reset or a dropped connection.
    pub resets: u64,
    /// GOAWAYs (HTTP/1.1: connection closes) injected.
    pub goaways: u64,
    /// 130429 storms started by `faults.throttle_storm`.
    pub storms: u64,
    /// TCP connections accepted.
    pub connections: u64,
    /// Outages begun (`faults.outage`, `SimHandle::refuse_connections`):
    /// spells with no socket listening and every connection dropped.
    pub outages: u64,
    /// `/messages` requests that came over HTTP/2 (the rest were HTTP/1.x).
    pub http2_requests: u64,
    /// Token checks (`GET /{version}/{phone_number_id}`), whatever their
    /// answer. Never counted as messages: they are in no other counter and
    /// no limit sees them.
    pub token_checks: u64,
    /// Of which answered 190 (wrong or missing token).
    pub token_checks_refused: u64,
    /// Statuses in webhook notifications the receiver answered 2xx.
    pub webhook_statuses_delivered: u64,
    /// Webhook notification posts that failed and were retried.
    pub webhook_posts_failed: u64,
}

/// Longest `duplicate_job_ids` list kept, so that a badly duplicating run cannot
/// grow the stats without bound.
pub const DUPLICATE_LIST_CAP: usize = 1000;

/// Limit breaches, counted at arrival whatever the answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct Violations {
    /// More than `mps` arrivals for a number within some 1 s window.
    pub phone: u64,
    /// A message to a (number, recipient) pair that the pair rule refused.
    pub pair: u64,
    /// More than `hourly_cap` calls for a WABA within some rolling hour.
    pub waba: u64,
}

/// Counters of one business number.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct NumberStats {
    /// Requests for this number, whatever their answer.
    pub requests: u64,
    /// Of which answered 200.
    pub accepted: u64,
    /// Accepted messages per second between the first and the last acceptance:
    /// `(accepted - 1) / span`, so evenly paced traffic at `r`/s reads `r`;
    /// equal to `accepted` while the span is zero.
    pub achieved_mps: f64,
    /// The most arrivals (any answer) inside any 1 s window: exact, because the
    /// fullest window always ends at an arrival and each arrival is checked.
    pub max_in_any_1s_window: u64,
    /// The configured limit, for comparison with the two figures above.
    pub mps: u32,
}
