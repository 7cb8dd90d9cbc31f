//! Dead letters written to `wabulk.dlq` (CONTRACT §4): the original bytes kept
//! whole, as text when they are UTF-8 and as base64 when they are not.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

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
        }
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

    #[test]
    fn non_utf8_goes_to_base64() {
        let record = DlqRecord::new("bad", "t", 1, 2, None, &[0xff, 0x00]);
        assert_eq!(record.payload, None);
        assert_eq!(record.payload_base64.as_deref(), Some("/wA="));
    }
}
