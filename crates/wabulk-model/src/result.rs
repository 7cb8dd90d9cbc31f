//! The one final result per job written to `wabulk.results` (CONTRACT §3).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::outcome::ErrorCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The Graph API accepted the message; `wamid` is set.
    Sent,
    /// A permanent error, or retries exhausted; `error` is set.
    Failed,
    /// `expires_at` passed before the message could be sent.
    Expired,
    /// Valid JSON the engine will not accept (e.g. unknown number in strict mode).
    Rejected,
    /// Its campaign was cancelled before it was sent (CONTRACT §12).
    Cancelled,
}

impl Status {
    /// Every status, in the order of [`Status::label`]'s values.
    pub const ALL: [Status; 5] =
        [Status::Sent, Status::Failed, Status::Expired, Status::Rejected, Status::Cancelled];

    /// The status as written in the result, and as the `status` label of
    /// `wabulk_results_total`.
    pub const fn label(self) -> &'static str {
        match self {
            Status::Sent => "sent",
            Status::Failed => "failed",
            Status::Expired => "expired",
            Status::Rejected => "rejected",
            Status::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultError {
    pub code: ErrorCode,
    pub message: String,
    pub retryable: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub id: String,
    pub phone_number_id: String,
    pub waba_id: Option<String>,
    pub to: String,
    pub status: Status,
    pub wamid: Option<String>,
    pub error: Option<ResultError>,
    /// HTTP requests made for this job.
    pub attempts: u32,
    #[serde(serialize_with = "millis")]
    pub received_at: DateTime<Utc>,
    #[serde(serialize_with = "millis")]
    pub finished_at: DateTime<Utc>,
    pub metadata: Option<Value>,
    /// The job's campaign, when it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
}

impl JobResult {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a result always serialises")
    }
}

/// RFC 3339 UTC with milliseconds, as in the contract's examples.
fn millis<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_the_contract_shows() {
        let at = DateTime::parse_from_rfc3339("2026-11-21T10:00:00.120Z").unwrap().to_utc();
        let result = JobResult {
            id: "order-1".into(),
            phone_number_id: "106540352242922".into(),
            waba_id: Some("102290129340398".into()),
            to: "15551234567".into(),
            status: Status::Failed,
            wamid: None,
            error: Some(ResultError {
                code: ErrorCode::Graph(131026),
                message: "Message undeliverable".into(),
                retryable: false,
            }),
            attempts: 1,
            received_at: at,
            finished_at: at,
            metadata: Some(serde_json::json!({"campaign": "nov"})),
            campaign: None,
        };
        let json: Value = serde_json::from_slice(&result.to_json()).unwrap();
        assert_eq!(json["status"], "failed");
        assert_eq!(json["error"]["code"], 131026);
        assert_eq!(json["received_at"], "2026-11-21T10:00:00.120Z");
        assert_eq!(json["wamid"], Value::Null);
        assert_eq!(json["metadata"]["campaign"], "nov");
        let engine = ResultError {
            code: ErrorCode::Engine("timeout".into()),
            message: String::new(),
            retryable: true,
        };
        assert_eq!(serde_json::to_value(&engine).unwrap()["code"], "timeout");
    }
}
