//! The access token, kept out of every `Debug`/`Display` so that it cannot
//! reach a log line, a metric or a result by accident (CONTRACT §7).

use std::fmt;

use wabulk_model::ApiError;

/// An access token. `Debug` and `Display` print `***`; the only way to the
/// text is [`AccessToken::expose`], used when building the `Authorization`
/// header.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    pub fn new(token: String) -> Self {
        Self(token)
    }

    /// The secret itself. Call it only to build the request header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// What the Graph API made of a token, from [`crate::Sender::check_token`].
/// Carries no token: only the API's (or the transport's) error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    /// The call was answered with the node: the token works for this number
    /// again, so its WABA may resume.
    Accepted,
    /// The answer is one that halts a send's WABA (a token error of the
    /// classification's table, or a token that cannot go in a header):
    /// sending would still be refused.
    Refused(ApiError),
    /// No verdict on the token: a timeout, a connection error, a 5xx or
    /// another Graph error. Keep the WABA halted and check again later.
    Unknown(ApiError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_never_prints() {
        let token = AccessToken::new("EAAG-secret".into());
        assert_eq!(format!("{token}"), "***");
        assert_eq!(format!("{token:?}"), "***");
        assert_eq!(format!("{:?}", Some(&token)), "Some(***)");
        assert_eq!(token.expose(), "EAAG-secret");
    }
}
