//! The data wabulk moves, with no I/O: jobs as producers write them, the
//! Graph API request body built from a job, results and dead letters as the
//! engine writes them, the classified outcome of one send attempt, and every way a job ends
//! ([`Exit`]).
//!
//! Everything at the Kafka boundary is defined here so that every other crate
//! agrees on one parser and one set of field names (CONTRACT §2–4).

mod control;
mod dlq;
mod exit;
mod ids;
mod job;
mod outcome;
mod result;

pub use control::{CampaignState, Control};
pub use dlq::DlqRecord;
pub use exit::{Exit, EXPIRED_REASON, FAILED_REASONS};
pub use ids::{IdError, NumericId, Recipient};
pub use job::{Job, JobError, ParseOptions, Priority, RejectReason, DEFAULT_MAX_JOB_BYTES};
pub use outcome::{ApiError, ErrorCode, FailReason, Outcome, RetryReason, Scope};
pub use result::{JobResult, ResultError, Status};
