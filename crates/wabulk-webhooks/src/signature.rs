//! `X-Hub-Signature-256`: `sha256=` and the hex HMAC-SHA256 of the raw body
//! with the app secret. Checked over the bytes as received (a re-serialised
//! body would not match) and compared in constant time by `hmac` itself.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Why a notification's signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no X-Hub-Signature-256 header")]
    Missing,
    #[error("X-Hub-Signature-256 is not `sha256=` and 64 hex digits")]
    Malformed,
    #[error("X-Hub-Signature-256 does not match the body")]
    Mismatch,
}

/// The app secret, never printed.
#[derive(Clone)]
pub struct AppSecret(Vec<u8>);

impl AppSecret {
    pub fn new(secret: impl Into<Vec<u8>>) -> AppSecret {
        AppSecret(secret.into())
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }

    /// The header value Meta would send for `body`: for the simulator and tests.
    pub fn sign(&self, body: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    /// Checks `header` (the raw header value, if any) against `body`.
    pub fn verify(&self, body: &[u8], header: Option<&[u8]>) -> Result<(), SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let digits = header.strip_prefix(b"sha256=").ok_or(SignatureError::Malformed)?;
        let mut expected = [0u8; 32];
        hex::decode_to_slice(digits, &mut expected).map_err(|_| SignatureError::Malformed)?;
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_slice(&expected).map_err(|_| SignatureError::Mismatch)
    }
}

impl std::fmt::Debug for AppSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppSecret(***)")
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const BODY: &[u8] = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[]}]}"#;

    #[test]
    fn meta_s_example_signature() {
        // HMAC-SHA256("It's a Secret to Everybody", "Hello, World!"), the
        // example of GitHub's and Meta's webhook documentation alike.
        let secret = AppSecret::new("It's a Secret to Everybody");
        let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(secret.sign(b"Hello, World!"), header);
        assert_eq!(secret.verify(b"Hello, World!", Some(header.as_bytes())), Ok(()));
    }

    #[test]
    fn every_kind_of_bad_signature_is_refused() {
        let secret = AppSecret::new("app-secret");
        let good = secret.sign(BODY);
        assert_eq!(secret.verify(BODY, Some(good.as_bytes())), Ok(()));
        assert_eq!(secret.verify(BODY, None), Err(SignatureError::Missing));
        assert_eq!(secret.verify(BODY, Some(b"sha1=abc")), Err(SignatureError::Malformed));
        assert_eq!(secret.verify(BODY, Some(&good.as_bytes()[..20])), Err(SignatureError::Malformed));
        let wrong = AppSecret::new("another-secret").sign(BODY);
        assert_eq!(secret.verify(BODY, Some(wrong.as_bytes())), Err(SignatureError::Mismatch));
        // The same JSON re-serialised (spaces, order) is other bytes.
        let value: serde_json::Value = serde_json::from_slice(BODY).unwrap();
        let pretty = serde_json::to_vec_pretty(&value).unwrap();
        assert_eq!(secret.verify(&pretty, Some(good.as_bytes())), Err(SignatureError::Mismatch));
        assert_eq!(format!("{secret:?}"), "AppSecret(***)");
    }

    proptest! {
        /// Any one byte changed anywhere in the body fails the check.
        #[test]
        fn one_changed_byte_is_a_mismatch(at in 0usize..BODY.len(), flip in 1u8..=255) {
            let secret = AppSecret::new("app-secret");
            let header = secret.sign(BODY);
            let mut body = BODY.to_vec();
            body[at] ^= flip;
            prop_assert_eq!(secret.verify(&body, Some(header.as_bytes())), Err(SignatureError::Mismatch));
        }
    }
}
