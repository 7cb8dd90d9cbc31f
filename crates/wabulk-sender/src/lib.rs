//! The sending side of wabulk: a pool of HTTP/2 connections to the Graph API
//! host (more than one, because one connection carries only the server's
//! stream limit of requests at once) and the classification of every answer,
//! timeout and connection error into a [`wabulk_model::Outcome`].
//!
//! The engine's send stage calls [`Sender::send`] once per attempt and acts
//! on the outcome, telling the scheduler to finish, retry or halt the job;
//! nothing else in wabulk reads HTTP statuses or Graph error codes.
//! [`Sender::check_token`] asks, with one harmless read, whether a halted
//! WABA's token is accepted again.

mod classify;
mod config;
mod departure;
mod pool;
mod sender;
mod token;
mod transport;

pub use classify::{
    backoff_ceiling, business_use_case_regain, classify, classify_with_cap, request_backoff, retry_after,
    BACKOFF_BASE, DEFAULT_LIMIT_PAUSE, DEFAULT_MAX_REQUEST_BACKOFF, MAX_HINTED_PAUSE, NUMBER_LIMIT_PAUSE,
    NUMBER_UPGRADING_PAUSE, PAIR_LIMIT_PAUSE, SPAM_LIMIT_PAUSE,
};
pub use config::{SenderConfig, SenderError};
pub use departure::{DepartureGate, SchedulingDelay};
pub use pool::PoolStats;
pub use sender::Sender;
pub use token::{AccessToken, TokenCheck};
pub use transport::{mask_credentials, read_ca_file, ProxyUrl};
