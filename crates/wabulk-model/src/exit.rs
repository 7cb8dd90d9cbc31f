//! Every way a job leaves the engine. The engine turns a job and its [`Exit`]
//! into the one record written for it; this type owns what that record says
//! (its status and error) and how the exit is counted (its metric labels),
//! so that no handler decides them on its own.

use crate::job::RejectReason;
use crate::outcome::{ApiError, ErrorCode, FailReason};
use crate::result::{ResultError, Status};

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Accepted by the Graph API.
    Sent { wamid: String },
    /// A permanent error: the API refused the message, or the request could
    /// not be made.
    Failed { reason: FailReason, error: ApiError },
    /// The engine's retry budget for the job ran out: its attempts (spent on
    /// retryable errors) or its waits (on limits and connections);
    /// `last_error` is the last error.
    GaveUp { attempts: u32, last_error: Option<ApiError> },
    /// `expires_at` passed before the job could be sent.
    Expired,
    /// Valid, but not acceptable to this engine.
    Rejected(RejectReason),
    /// Its campaign was cancelled before it was sent.
    Cancelled,
}

/// The `reason` of `wabulk_messages_failed_total` for an expired job.
pub const EXPIRED_REASON: &str = "expired";

/// Every `reason` of `wabulk_messages_failed_total`: each `FailReason`
/// label, then [`EXPIRED_REASON`]; [`Exit::failed_reason`] answers one of
/// these.
pub const FAILED_REASONS: [&str; 6] = [
    FailReason::BadRequest.label(),
    FailReason::Undeliverable.label(),
    FailReason::AccountBlocked.label(),
    FailReason::RetriesExhausted.label(),
    FailReason::Unclassified.label(),
    EXPIRED_REASON,
];

impl Exit {
    /// The result's status.
    pub fn status(&self) -> Status {
        match self {
            Exit::Sent { .. } => Status::Sent,
            Exit::Failed { .. } | Exit::GaveUp { .. } => Status::Failed,
            Exit::Expired => Status::Expired,
            Exit::Rejected(_) => Status::Rejected,
            Exit::Cancelled => Status::Cancelled,
        }
    }

    /// The `reason` label of `wabulk_messages_failed_total` (one of
    /// [`FAILED_REASONS`]) for the exits counted there: failures of jobs that
    /// were accepted for sending. Rejections have their own counter.
    pub fn failed_reason(&self) -> Option<&'static str> {
        match self {
            Exit::Failed { reason, .. } => Some(reason.label()),
            Exit::GaveUp { .. } => Some(FailReason::RetriesExhausted.label()),
            Exit::Expired => Some(EXPIRED_REASON),
            Exit::Sent { .. } | Exit::Rejected(_) | Exit::Cancelled => None,
        }
    }

    /// The result's `wamid` and `error`.
    pub fn into_result_fields(self) -> (Option<String>, Option<ResultError>) {
        match self {
            Exit::Sent { wamid } => (Some(wamid), None),
            Exit::Failed { error, .. } => {
                (None, Some(ResultError { code: error.code, message: error.message, retryable: false }))
            }
            Exit::GaveUp { attempts, last_error } => {
                let (code, detail) = match last_error {
                    Some(error) => (error.code, format!(": {}", error.message)),
                    None => (ErrorCode::Engine("retries_exhausted".into()), String::new()),
                };
                let message = format!("retries exhausted after {attempts} attempts{detail}");
                (None, Some(ResultError { code, message, retryable: true }))
            }
            Exit::Expired | Exit::Cancelled => (None, None),
            Exit::Rejected(reason) => (
                None,
                Some(ResultError {
                    code: ErrorCode::Engine(reason.code().into()),
                    message: reason.to_string(),
                    retryable: false,
                }),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: i64) -> ApiError {
        ApiError { code: ErrorCode::Graph(code), message: format!("error {code}") }
    }

    #[test]
    fn each_exit_has_its_status_and_error() {
        let sent = Exit::Sent { wamid: "wamid.1".into() };
        assert_eq!(sent.status(), Status::Sent);
        assert_eq!(sent.into_result_fields(), (Some("wamid.1".into()), None));

        let failed = Exit::Failed { reason: FailReason::Undeliverable, error: api_error(131026) };
        assert_eq!((failed.status(), failed.failed_reason()), (Status::Failed, Some("undeliverable")));
        let (_, error) = failed.into_result_fields();
        let error = error.unwrap();
        assert_eq!((error.code, error.retryable), (ErrorCode::Graph(131026), false));

        let expired = Exit::Expired;
        assert_eq!((expired.status(), expired.failed_reason()), (Status::Expired, Some(EXPIRED_REASON)));
        assert_eq!(expired.into_result_fields(), (None, None));

        let rejected = Exit::Rejected(RejectReason::UnknownWaba);
        assert_eq!((rejected.status(), rejected.failed_reason()), (Status::Rejected, None));
        let error = rejected.into_result_fields().1.unwrap();
        assert_eq!(error.code, ErrorCode::Engine("unknown_waba".into()));
    }

    #[test]
    fn giving_up_reports_the_last_error_with_the_attempt_count() {
        let gave_up = Exit::GaveUp { attempts: 5, last_error: Some(api_error(131000)) };
        assert_eq!(gave_up.failed_reason(), Some("retries_exhausted"));
        let error = gave_up.into_result_fields().1.unwrap();
        assert_eq!(error.code, ErrorCode::Graph(131000));
        assert_eq!(error.message, "retries exhausted after 5 attempts: error 131000");
        assert!(error.retryable);

        let error = Exit::GaveUp { attempts: 3, last_error: None }.into_result_fields().1.unwrap();
        assert_eq!(error.code, ErrorCode::Engine("retries_exhausted".into()));
        assert_eq!(error.message, "retries exhausted after 3 attempts");
    }

    #[test]
    fn every_failed_reason_is_listed() {
        let exits = [
            Exit::Failed { reason: FailReason::BadRequest, error: api_error(100) },
            Exit::GaveUp { attempts: 1, last_error: None },
            Exit::Expired,
        ];
        for exit in exits {
            assert!(FAILED_REASONS.contains(&exit.failed_reason().unwrap()));
        }
    }
}
