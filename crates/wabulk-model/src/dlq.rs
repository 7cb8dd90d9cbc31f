//! Dead letters written to `wabulk.dlq` (CONTRACT §4): the
//! original bytes kept whole, as text when they are UTF-8 and as base64 when
//! they are not; cut to their first bytes, with the original's size and
//! digest, only when the whole would not fit in a Kafka message.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlqRecord {
    pub error: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    /// Set instead of `key` when the key is not UTF-8 (an addition to the contract).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    pub payload: Option<String>,
    pub payload_base64: Option<String>,
    /// Set when the payload is only the first bytes of the original, cut so
    /// that the dead letter fits Kafka's maximum message size; the original
    /// is at `topic`/`partition`/`offset` while the topic retains it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub payload_truncated: bool,
    /// The original payload's size in bytes, when truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_bytes: Option<u64>,
    /// The original payload's SHA-256 in hex, when truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_sha256: Option<String>,
}

impl DlqRecord {
    pub fn new(
        error: impl Into<String>,
        topic: impl Into<String>,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
    ) -> Self {
        let (key, key_base64) = match key {
            None => (None, None),
            Some(bytes) => text_or_base64(bytes),
        };
        let (payload, payload_base64) = text_or_base64(payload);
        Self {
            error: error.into(),
            topic: topic.into(),
            partition,
            offset,
            key,
            key_base64,
            payload,
            payload_base64,
            payload_truncated: false,
            payload_bytes: None,
            payload_sha256: None,
        }
    }

    /// Like [`DlqRecord::new`], keeping at most the first `max_payload`
    /// bytes of the payload (fewer if that would split a UTF-8 character of
    /// a text payload) and marking it truncated with the original's size and
    /// digest when it is longer.
    pub fn with_payload_cap(
        error: impl Into<String>,
        topic: impl Into<String>,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
        max_payload: usize,
    ) -> Self {
        if payload.len() <= max_payload {
            return Self::new(error, topic, partition, offset, key, payload);
        }
        let mut kept = &payload[..max_payload];
        if std::str::from_utf8(payload).is_ok() {
            // A text payload stays text: drop the partial character at the cut.
            kept = match std::str::from_utf8(kept) {
                Ok(_) => kept,
                Err(e) => &kept[..e.valid_up_to()],
            };
        }
        let mut record = Self::new(error, topic, partition, offset, key, kept);
        record.payload_truncated = true;
        record.payload_bytes = Some(payload.len() as u64);
        record.payload_sha256 = Some(format!("{:x}", Sha256::digest(payload)));
        record
    }

    /// The original value bytes, exactly as they were read.
    pub fn original_payload(&self) -> Option<Vec<u8>> {
        match (&self.payload, &self.payload_base64) {
            (Some(text), _) => Some(text.as_bytes().to_vec()),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD.decode(b64).ok(),
            (None, None) => None,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a DLQ record always serialises")
    }
}

fn text_or_base64(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(bytes))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_payload_is_kept_whole(payload in proptest::collection::vec(any::<u8>(), 0..256)) {
            let record = DlqRecord::new("bad", "wabulk.jobs", 0, 7, Some(b"106540352242922"), &payload);
            let back: DlqRecord = serde_json::from_slice(&record.to_json()).unwrap();
            prop_assert_eq!(back.original_payload().unwrap(), payload);
            prop_assert_eq!(back.key.as_deref(), Some("106540352242922"));
        }
    }

    proptest! {
        /// A cut payload is a prefix of the original, within the cap, and
        /// carries the original's size and digest; text stays text.
        #[test]
        fn a_capped_payload_is_a_marked_prefix(text in "\\PC{0,300}", cap in 0usize..400) {
            let payload = text.as_bytes();
            let record = DlqRecord::with_payload_cap("too large", "t", 0, 1, None, payload, cap);
            let kept = record.original_payload().unwrap();
            prop_assert!(payload.starts_with(&kept));
            prop_assert!(kept.len() <= cap || payload.len() <= cap);
            prop_assert_eq!(record.payload_base64.is_none(), true, "text stays text");
            if payload.len() <= cap {
                prop_assert_eq!(&kept[..], payload);
                prop_assert!(!record.payload_truncated);
            } else {
                prop_assert!(record.payload_truncated);
                prop_assert!(payload.len() - kept.len() >= payload.len() - cap);
                prop_assert!(cap - kept.len() < 4, "only a partial character is dropped");
                prop_assert_eq!(record.payload_bytes, Some(payload.len() as u64));
                prop_assert_eq!(record.payload_sha256.clone(), Some(format!("{:x}", Sha256::digest(payload))));
            }
        }
    }

    #[test]
    fn a_truncated_binary_payload_is_base64_of_its_first_bytes() {
        let payload = [0xffu8; 100];
        let record = DlqRecord::with_payload_cap("too large", "t", 2, 3, None, &payload, 10);
        assert_eq!(record.original_payload().unwrap(), vec![0xff; 10]);
        let json: serde_json::Value = serde_json::from_slice(&record.to_json()).unwrap();
        assert_eq!(json["payload_truncated"], true);
        assert_eq!(json["payload_bytes"], 100);
        assert_eq!(json["payload_sha256"].as_str().unwrap().len(), 64);
        // A whole one has none of the three fields.
        let whole: serde_json::Value =
            serde_json::from_slice(&DlqRecord::new("bad", "t", 2, 3, None, &payload).to_json()).unwrap();
        assert!(whole.get("payload_truncated").is_none() && whole.get("payload_sha256").is_none());
    }

    #[test]
    fn non_utf8_goes_to_base64() {
        let record = DlqRecord::new("bad", "t", 1, 2, None, &[0xff, 0x00]);
        assert_eq!(record.payload, None);
        assert_eq!(record.payload_base64.as_deref(), Some("/wA="));
    }
}
