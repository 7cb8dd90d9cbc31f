//! The job a producer writes to `wabulk.jobs` (CONTRACT §2): parsing with an
//! error that names the field and the reason, and the Graph API request body.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ids::{IdError, NumericId, Recipient};

/// Default size limit of one job, in bytes (CONTRACT: configurable, 64 KiB).
pub const DEFAULT_MAX_JOB_BYTES: usize = 64 * 1024;

/// Longest `id` accepted, in characters.
const MAX_ID_CHARS: usize = 128;

/// Meta accepts at most 512 characters of `biz_opaque_callback_data`.
const MAX_CALLBACK_DATA_CHARS: usize = 512;

/// Message types the Cloud API sends; `type` must be one of these and the
/// object of that type must be present.
const MESSAGE_TYPES: &[&str] = &[
    "text",
    "template",
    "image",
    "video",
    "audio",
    "document",
    "sticker",
    "location",
    "contacts",
    "interactive",
    "reaction",
];

/// Settings of the parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseOptions {
    /// Jobs longer than this go to the DLQ unread. Raising it raises the memory
    /// a burst of huge jobs can hold; real messages are a few hundred bytes.
    pub max_bytes: usize,
}

impl Default for ParseOptions {
    fn default() -> Self {
        Self { max_bytes: DEFAULT_MAX_JOB_BYTES }
    }
}

/// Which lane of its business number a job waits in (CONTRACT §2): a ready
/// `High` job goes before any ready `Normal` one, and `Normal` before
/// `Bulk`; the lanes share the number's rate, and a pair's jobs keep their
/// order whatever their lanes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// OTPs, alerts.
    High,
    #[default]
    Normal,
    /// Campaigns.
    Bulk,
}

impl Priority {
    /// Every lane, first served first.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Bulk];

    /// Its place in [`Priority::ALL`].
    pub fn lane(self) -> usize {
        self as usize
    }

    pub fn label(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Bulk => "bulk",
        }
    }

    fn is_normal(&self) -> bool {
        *self == Priority::Normal
    }
}

/// A valid job. Only [`Job::parse`] makes one from bytes, so every field has
/// been checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub id: String,
    pub phone_number_id: NumericId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waba_id: Option<NumericId>,
    pub to: Recipient,
    /// The Cloud API message object, without `messaging_product` and `to`.
    pub message: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(skip_serializing_if = "Priority::is_normal")]
    pub priority: Priority,
    /// The campaign it belongs to: paused, resumed and cancelled together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
}

/// Why bytes are not a job. `Display` is the text of the DLQ record's `error`.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("job is not UTF-8: invalid byte at offset {offset}")]
    NotUtf8 { offset: usize },
    /// Not JSON, a missing field or a field of the wrong type; the text names
    /// the field path and the position.
    #[error("{0}")]
    Json(String),
    #[error("field `{field}`: {reason}")]
    Field { field: &'static str, reason: String },
}

impl JobError {
    /// The closed set of reasons used as the `reason` label of
    /// `wabulk_dlq_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            JobError::TooLarge { .. } => "too_large",
            JobError::NotUtf8 { .. } => "not_utf8",
            JobError::Json(_) => "malformed",
            JobError::Field { .. } => "invalid_field",
        }
    }

    fn field(field: &'static str, reason: impl Into<String>) -> Self {
        JobError::Field { field, reason: reason.into() }
    }

    fn id(field: &'static str, err: IdError) -> Self {
        JobError::field(field, err.to_string())
    }
}

/// Why a valid job is not accepted (a `rejected` result, CONTRACT §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("phone_number_id is not configured and strict_phones is on")]
    UnknownPhoneNumber,
    #[error("waba_id is missing and the configuration does not map this number to a WABA")]
    UnknownWaba,
    #[error("waba_id differs from the WABA the configuration gives this number")]
    WabaMismatch,
    #[error("not_before is further ahead than this engine holds jobs (parking.max_wait_days)")]
    NotBeforeTooFar,
}

impl RejectReason {
    /// Engine error code in the result and the `reason` metric label.
    pub fn code(self) -> &'static str {
        match self {
            RejectReason::UnknownPhoneNumber => "unknown_phone_number",
            RejectReason::UnknownWaba => "unknown_waba",
            RejectReason::WabaMismatch => "waba_mismatch",
            RejectReason::NotBeforeTooFar => "not_before_too_far",
        }
    }
}

/// The wire shape, before validation. Unknown top-level fields are ignored so
/// that producers can add their own without breaking older engines.
#[derive(Deserialize)]
struct WireJob {
    id: String,
    phone_number_id: String,
    #[serde(default)]
    waba_id: Option<String>,
    to: String,
    message: Map<String, Value>,
    #[serde(default)]
    not_before: Option<DateTime<Utc>>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    metadata: Option<Value>,
    /// Read as text so that a wrong value names the field with the choices.
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    campaign: Option<String>,
}

impl Job {
    /// Parses and validates one Kafka record value.
    pub fn parse(bytes: &[u8], options: &ParseOptions) -> Result<Job, JobError> {
        if bytes.len() > options.max_bytes {
            return Err(JobError::TooLarge { size: bytes.len(), limit: options.max_bytes });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| JobError::NotUtf8 { offset: e.valid_up_to() })?;
        // serde would also read a struct from an array of its fields.
        if text.trim_start().starts_with('[') {
            return Err(JobError::Json("a job is a JSON object, not an array".into()));
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let wire: WireJob = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." || path.is_empty() {
                JobError::Json(inner.to_string())
            } else {
                JobError::Json(format!("{path}: {inner}"))
            }
        })?;
        de.end().map_err(|e| JobError::Json(e.to_string()))?;
        Job::validate(wire)
    }

    fn validate(wire: WireJob) -> Result<Job, JobError> {
        let id_chars = wire.id.chars().count();
        if !(1..=MAX_ID_CHARS).contains(&id_chars) {
            return Err(JobError::field(
                "id",
                format!("has {id_chars} characters; 1 to {MAX_ID_CHARS} are allowed"),
            ));
        }
        let phone_number_id =
            NumericId::parse(&wire.phone_number_id).map_err(|e| JobError::id("phone_number_id", e))?;
        let waba_id = wire
            .waba_id
            .as_deref()
            .map(NumericId::parse)
            .transpose()
            .map_err(|e| JobError::id("waba_id", e))?;
        let to = Recipient::normalise(&wire.to).map_err(|e| JobError::id("to", e))?;
        validate_message(&wire.message)?;
        let priority = match wire.priority.as_deref() {
            None => Priority::Normal,
            Some(text) => Priority::ALL.into_iter().find(|p| p.label() == text).ok_or_else(|| {
                JobError::field(
                    "priority",
                    format!("is {text:?}; \"high\", \"normal\" or \"bulk\" are allowed"),
                )
            })?,
        };
        if let Some(campaign) = &wire.campaign {
            let chars = campaign.chars().count();
            if !(1..=MAX_ID_CHARS).contains(&chars) {
                return Err(JobError::field(
                    "campaign",
                    format!("has {chars} characters; 1 to {MAX_ID_CHARS} are allowed"),
                ));
            }
        }
        Ok(Job {
            id: wire.id,
            phone_number_id,
            waba_id,
            to,
            message: wire.message,
            not_before: wire.not_before,
            expires_at: wire.expires_at,
            metadata: wire.metadata,
            priority,
            campaign: wire.campaign,
        })
    }

    /// The job as a Job JSON record again (what [`Job::parse`] reads), for a
    /// job that must be written back to Kafka (parked) after it was parsed.
    /// Fields the model does not keep are not in it.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a job always serialises")
    }

    /// The JSON body POSTed to `{base}/{phone_number_id}/messages`: the message
    /// with `messaging_product` and `to` added, and `biz_opaque_callback_data`
    /// set to the job id unless the job set its own.
    pub fn request_body(&self) -> Bytes {
        let body = RequestBody {
            messaging_product: "whatsapp",
            to: self.to,
            message: &self.message,
            biz_opaque_callback_data: (!self.message.contains_key("biz_opaque_callback_data"))
                .then_some(self.id.as_str()),
        };
        Bytes::from(serde_json::to_vec(&body).expect("a JSON map always serialises"))
    }
}

/// The request body, serialised straight from the job: nothing is copied.
#[derive(Serialize)]
struct RequestBody<'a> {
    messaging_product: &'static str,
    to: Recipient,
    #[serde(flatten)]
    message: &'a Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    biz_opaque_callback_data: Option<&'a str>,
}

fn validate_message(message: &Map<String, Value>) -> Result<(), JobError> {
    for engine_field in ["messaging_product", "to"] {
        if message.contains_key(engine_field) {
            return Err(JobError::field(
                "message",
                format!("must not contain `{engine_field}`; the engine sets it"),
            ));
        }
    }
    let kind = match message.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(_) => return Err(JobError::field("message", "`type` must be a string")),
        None => return Err(JobError::field("message", "missing `type`")),
    };
    if !MESSAGE_TYPES.contains(&kind) {
        return Err(JobError::field(
            "message",
            format!("unknown type {kind:?}; expected one of {}", MESSAGE_TYPES.join(", ")),
        ));
    }
    // `contacts` is an array in the Cloud API; every other type is an object.
    let content_ok = match message.get(kind) {
        Some(Value::Array(_)) => kind == "contacts",
        Some(Value::Object(_)) => kind != "contacts",
        _ => false,
    };
    if !content_ok {
        let shape = if kind == "contacts" { "an array" } else { "an object" };
        return Err(JobError::field(
            "message",
            format!("type is {kind:?} but `{kind}` is missing or not {shape}"),
        ));
    }
    match message.get("biz_opaque_callback_data") {
        None => {}
        Some(Value::String(s)) if s.chars().count() <= MAX_CALLBACK_DATA_CHARS => {}
        Some(_) => {
            return Err(JobError::field(
                "message",
                format!(
                "`biz_opaque_callback_data` must be a string of at most {MAX_CALLBACK_DATA_CHARS} characters"
            ),
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
