//! Meta's webhook notification, and the records it becomes.
//!
//! ```json
//! { "object": "whatsapp_business_account",
//!   "entry": [{ "id": "<WABA id>", "changes": [{ "field": "messages", "value": {
//!       "messaging_product": "whatsapp",
//!       "metadata": { "display_phone_number": "...", "phone_number_id": "..." },
//!       "statuses": [{ "id": "wamid...", "status": "delivered", "timestamp": "1700000000",
//!                      "recipient_id": "...", "biz_opaque_callback_data": "<job id>",
//!                      "conversation": {...}, "pricing": {...}, "errors": [...] }],
//!       "messages": [{ "from": "...", "id": "wamid...", "type": "text", ... }] } }] }] }
//! ```
//!
//! Meta adds fields and kinds without notice, so everything not needed is
//! ignored and kept as JSON where it is passed on (`conversation`, `pricing`,
//! `errors`, the inbound message itself). Changes of other fields (quality,
//! account and capability updates) are returned as [`Event`]s.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a notification carries.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub statuses: Vec<StatusRecord>,
    pub inbound: Vec<InboundRecord>,
    pub events: Vec<Event>,
}

/// One status, as written to `wabulk.statuses` (CONTRACT §11).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusRecord {
    /// From `biz_opaque_callback_data`, which the engine sets to the job id.
    pub job_id: Option<String>,
    pub wamid: String,
    pub status: String,
    pub phone_number_id: Option<String>,
    pub waba_id: Option<String>,
    pub recipient_id: Option<String>,
    /// Meta's timestamp (Unix seconds) as RFC 3339, when it gave one.
    pub timestamp: Option<String>,
    pub errors: Option<Value>,
    pub conversation: Option<Value>,
    pub pricing: Option<Value>,
    pub received_at: String,
}

impl StatusRecord {
    /// Its Kafka key: the job id, else the wamid.
    pub fn key(&self) -> &str {
        self.job_id.as_deref().unwrap_or(&self.wamid)
    }
}

/// One inbound message, as written to `wabulk.inbound`: Meta's `messages[]`
/// entry with `phone_number_id` and `received_at` added.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundRecord {
    pub phone_number_id: String,
    pub json: Vec<u8>,
}

/// A change that is not about one message: logged, and in time acted on.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The change's `field`, e.g. `phone_number_quality_update`.
    pub field: String,
    /// The WABA it concerns (the entry's id).
    pub waba_id: Option<String>,
    pub value: Value,
}

/// Why a notification with a good signature could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NotificationError {
    #[error("the body is not a webhook notification: {0}")]
    Json(#[from] serde_json::Error),
    #[error("a status has no `id` (wamid) or no `status`")]
    IncompleteStatus,
    #[error("an inbound message has no phone_number_id in its change's metadata")]
    InboundWithoutNumber,
}

#[derive(Deserialize)]
struct Notification {
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    id: Option<String>,
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Deserialize)]
struct Change {
    field: Option<String>,
    #[serde(default)]
    value: Value,
}

#[derive(Deserialize)]
struct MessagesValue {
    metadata: Option<Metadata>,
    #[serde(default)]
    statuses: Vec<Status>,
    #[serde(default)]
    messages: Vec<serde_json::Map<String, Value>>,
}

#[derive(Deserialize)]
struct Metadata {
    phone_number_id: Option<String>,
}

#[derive(Deserialize)]
struct Status {
    id: Option<String>,
    status: Option<String>,
    timestamp: Option<Value>,
    recipient_id: Option<String>,
    biz_opaque_callback_data: Option<String>,
    errors: Option<Value>,
    conversation: Option<Value>,
    pricing: Option<Value>,
}

/// Reads a notification received at `received_at`.
pub fn parse(body: &[u8], received_at: DateTime<Utc>) -> Result<Parsed, NotificationError> {
    let notification: Notification = serde_json::from_slice(body)?;
    let received_at = received_at.to_rfc3339_opts(SecondsFormat::Millis, true);
    let mut parsed = Parsed::default();
    for entry in notification.entry {
        for change in entry.changes {
            let field = change.field.unwrap_or_default();
            if field != "messages" {
                parsed.events.push(Event { field, waba_id: entry.id.clone(), value: change.value });
                continue;
            }
            let value: MessagesValue = serde_json::from_value(change.value)?;
            let phone_number_id = value.metadata.and_then(|m| m.phone_number_id);
            for status in value.statuses {
                let (Some(wamid), Some(state)) = (status.id, status.status) else {
                    return Err(NotificationError::IncompleteStatus);
                };
                parsed.statuses.push(StatusRecord {
                    job_id: status.biz_opaque_callback_data.filter(|id| !id.is_empty()),
                    wamid,
                    status: state,
                    phone_number_id: phone_number_id.clone(),
                    waba_id: entry.id.clone(),
                    recipient_id: status.recipient_id,
                    timestamp: status
                        .timestamp
                        .as_ref()
                        .and_then(unix_seconds)
                        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
                    errors: status.errors,
                    conversation: status.conversation,
                    pricing: status.pricing,
                    received_at: received_at.clone(),
                });
            }
            for mut message in value.messages {
                let phone = phone_number_id.clone().ok_or(NotificationError::InboundWithoutNumber)?;
                message.insert("phone_number_id".into(), Value::String(phone.clone()));
                message.insert("received_at".into(), Value::String(received_at.clone()));
                let json = serde_json::to_vec(&message).expect("a JSON map always serialises");
                parsed.inbound.push(InboundRecord { phone_number_id: phone, json });
            }
        }
    }
    Ok(parsed)
}

/// Meta sends Unix seconds as a string; a number is taken too.
fn unix_seconds(value: &Value) -> Option<DateTime<Utc>> {
    let seconds = match value {
        Value::String(s) => s.parse().ok()?,
        Value::Number(n) => n.as_i64()?,
        _ => return None,
    };
    DateTime::from_timestamp(seconds, 0)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_003, 210_000_000).unwrap()
    }

    #[test]
    fn statuses_inbound_and_events_of_one_notification() {
        let body = json!({
            "object": "whatsapp_business_account",
            "entry": [{
                "id": "102290129340398",
                "changes": [
                    { "field": "messages", "value": {
                        "messaging_product": "whatsapp",
                        "metadata": { "display_phone_number": "15550001111", "phone_number_id": "106540352242922" },
                        "statuses": [
                            { "id": "wamid.A", "status": "delivered", "timestamp": "1700000000",
                              "recipient_id": "15551234567", "biz_opaque_callback_data": "order-1",
                              "conversation": { "id": "c1" }, "pricing": { "billable": true }, "new_field": 1 },
                            { "id": "wamid.B", "status": "failed", "timestamp": "1700000001", "recipient_id": "15551234568",
                              "errors": [{ "code": 131026, "title": "Message undeliverable" }] }
                        ],
                        "messages": [{ "from": "15551234567", "id": "wamid.IN", "type": "text", "text": { "body": "STOP" } }]
                    }},
                    { "field": "phone_number_quality_update", "value": { "event": "UPGRADE", "current_limit": "TIER_10K" } }
                ]
            }]
        });
        let parsed = parse(&serde_json::to_vec(&body).unwrap(), at()).unwrap();
        assert_eq!(parsed.statuses.len(), 2);
        let delivered = &parsed.statuses[0];
        assert_eq!(delivered.job_id.as_deref(), Some("order-1"));
        assert_eq!(delivered.key(), "order-1");
        assert_eq!(delivered.status, "delivered");
        assert_eq!(delivered.phone_number_id.as_deref(), Some("106540352242922"));
        assert_eq!(delivered.waba_id.as_deref(), Some("102290129340398"));
        assert_eq!(delivered.timestamp.as_deref(), Some("2023-11-14T22:13:20Z"));
        assert_eq!(delivered.received_at, "2023-11-14T22:13:23.210Z");
        assert_eq!(delivered.pricing, Some(json!({ "billable": true })));
        let failed = &parsed.statuses[1];
        assert_eq!(failed.job_id, None);
        assert_eq!(failed.key(), "wamid.B", "keyed by the wamid without a job id");
        assert_eq!(failed.errors, Some(json!([{ "code": 131026, "title": "Message undeliverable" }])));
        assert_eq!(parsed.inbound.len(), 1);
        let inbound: Value = serde_json::from_slice(&parsed.inbound[0].json).unwrap();
        assert_eq!(inbound["text"]["body"], "STOP");
        assert_eq!(inbound["phone_number_id"], "106540352242922");
        assert_eq!(parsed.events.len(), 1);
        assert_eq!(parsed.events[0].field, "phone_number_quality_update");
    }

    #[test]
    fn what_cannot_be_read_is_an_error() {
        assert!(parse(b"not json", at()).is_err());
        assert!(parse(br#"{"entry": "x"}"#, at()).is_err());
        let no_status = json!({ "entry": [{ "id": "1", "changes": [{ "field": "messages",
            "value": { "statuses": [{ "id": "wamid.A" }] } }] }] });
        assert!(matches!(
            parse(&serde_json::to_vec(&no_status).unwrap(), at()),
            Err(NotificationError::IncompleteStatus)
        ));
        // An empty notification is valid and carries nothing.
        assert_eq!(
            parse(br#"{"object":"whatsapp_business_account","entry":[]}"#, at()).unwrap(),
            Parsed::default()
        );
    }
}
