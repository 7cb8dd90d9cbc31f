//! The classified outcome of one send attempt. The sender classifies each
//! answer once (docs/platform.md's error table); the engine acts on the class
//! (finish, retry, halt, or give up when retries run out) and tells the
//! scheduler, and neither of them looks at HTTP statuses or message text.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A Graph API error code, or an engine code when the API never answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ErrorCode {
    Graph(i64),
    Engine(String),
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorCode::Graph(code) => code.fmt(f),
            ErrorCode::Engine(code) => f.write_str(code),
        }
    }
}

/// An error as the API (or the transport) reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    /// Free text from the API: goes into results, never into metric labels.
    pub message: String,
}

/// What a limit or a pause applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One (business number, recipient) pair.
    Pair,
    /// One business number, all its recipients.
    Number,
    /// Every number of one WhatsApp Business Account.
    Waba,
    /// Every WABA that uses the same access token.
    Token,
    /// This request only (backoff of one job).
    Request,
}

/// Why a send is retried: the closed set of `reason` labels of
/// `wabulk_retries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryReason {
    PairLimit,
    NumberLimit,
    WabaLimit,
    AppLimit,
    SpamLimit,
    NumberUpgrading,
    Transient,
    ServerError,
    Media,
    /// No answer in time: the message may have gone out (counted apart).
    Timeout,
    /// The connection broke after the request went out: the message may
    /// have gone out (counted apart, as `Timeout`).
    Broken,
    /// No request left: the connection could not be made, or every stream
    /// that took the request provably did not process it.
    Connection,
}

impl RetryReason {
    pub const fn label(self) -> &'static str {
        match self {
            RetryReason::PairLimit => "pair_limit",
            RetryReason::NumberLimit => "number_limit",
            RetryReason::WabaLimit => "waba_limit",
            RetryReason::AppLimit => "app_limit",
            RetryReason::SpamLimit => "spam_limit",
            RetryReason::NumberUpgrading => "number_upgrading",
            RetryReason::Transient => "transient",
            RetryReason::ServerError => "server_error",
            RetryReason::Media => "media",
            RetryReason::Timeout => "timeout",
            RetryReason::Broken => "broken",
            RetryReason::Connection => "connection",
        }
    }

    /// Whether the retry spends one of the job's attempts. Only a request
    /// that reached Meta and failed on its own account does: a limit answer
    /// is Meta telling the sender to wait (the job did nothing wrong), and a
    /// request that never left says nothing about the job. Those retries
    /// are bounded separately, so that an outage or a throttle makes jobs
    /// wait, not fail.
    pub const fn spends_attempt(self) -> bool {
        match self {
            RetryReason::Transient
            | RetryReason::ServerError
            | RetryReason::Media
            | RetryReason::Timeout
            | RetryReason::Broken => true,
            RetryReason::PairLimit
            | RetryReason::NumberLimit
            | RetryReason::WabaLimit
            | RetryReason::AppLimit
            | RetryReason::SpamLimit
            | RetryReason::NumberUpgrading
            | RetryReason::Connection => false,
        }
    }

    /// Whether the message may have gone out although no answer said so.
    pub const fn outcome_unknown(self) -> bool {
        matches!(self, RetryReason::Timeout | RetryReason::Broken)
    }
}

/// Why a job failed for good: the closed set of `reason` labels of
/// `wabulk_messages_failed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailReason {
    BadRequest,
    Undeliverable,
    AccountBlocked,
    RetriesExhausted,
    Unclassified,
}

impl FailReason {
    pub const fn label(self) -> &'static str {
        match self {
            FailReason::BadRequest => "bad_request",
            FailReason::Undeliverable => "undeliverable",
            FailReason::AccountBlocked => "account_blocked",
            FailReason::RetriesExhausted => "retries_exhausted",
            FailReason::Unclassified => "unclassified",
        }
    }
}

/// The outcome of one HTTP request for one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted by the Graph API.
    Sent { wamid: String },
    /// Try again: `scope` says what must wait and `after` for how long.
    Retry { scope: Scope, after: Duration, reason: RetryReason, error: ApiError },
    /// The token is invalid or lacks permission: stop sending for everything
    /// in `scope` and keep its jobs until the operator fixes the token.
    Halt { scope: Scope, error: ApiError },
    /// Permanent: the job's result is `failed`.
    Failed { reason: FailReason, error: ApiError },
}
