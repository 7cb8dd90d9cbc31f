//! Telemetry of the wabulk engine: the metric set of CONTRACT §9 (plus what
//! ops need to answer "why is it slow?", specified in docs/metrics.md) and the
//! HTTP endpoints of CONTRACT §8 that expose it.
//!
//! The engine creates one [`Metrics`] and one [`Health`], shares them as
//! `Arc`s with its stages, and runs [`serve`] on the `[http] listen` address.
//! Nothing here spawns work of its own outside [`serve`].

mod health;
mod metrics;
mod server;

pub use health::Health;
pub use hyper::{Method, StatusCode};
pub use metrics::{
    Metrics, NumberSeries, ACCOUNT_CHANGES, ACTED_ON_API_ERROR_CODES, CAMPAIGN_SERIES_CAP,
    DEFAULT_SERIES_CAP, DLQ_REASONS, FAILED_REASONS, OVERFLOW_LABEL, PARKING_MOVES, PARK_REASONS,
    PAUSE_REASONS, PRODUCE_REFUSALS, REJECT_REASONS, RESULT_STATUSES, RETRY_REASONS, STATUS_ERROR_CODES,
    THROTTLE_LIMITS, WEBHOOK_OUTCOMES, WEBHOOK_STATUSES,
};
pub use server::{serve, serve_http1, serve_with_admin, AdminHandler, AdminRequest};

/// Re-exported so that callers can name the handle types (`IntCounter`, ...)
/// and register extra metrics without a dependency of their own.
pub use prometheus;

#[cfg(test)]
mod tests;
