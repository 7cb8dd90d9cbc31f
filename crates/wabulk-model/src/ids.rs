//! Numeric identifiers: Graph object ids (business numbers, WABAs) and
//! recipients. Both fit a `u64`, which is what the scheduler and limiters key
//! on; the text form is recovered exactly because leading zeros are refused.

use std::fmt;

use serde::{Serialize, Serializer};

/// Why an identifier was refused; shown to producers in DLQ records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must contain only digits, found {0:?}")]
    NotDigit(char),
    #[error("must not start with 0")]
    LeadingZero,
    #[error("has {len} digits; {min} to {max} are allowed")]
    Length { len: usize, min: usize, max: usize },
}

/// A Graph API object id such as a `phone_number_id` or `waba_id`: 1 to 19
/// decimal digits without a leading zero, so it fits a `u64` and prints back
/// unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NumericId(u64);

impl NumericId {
    pub fn parse(text: &str) -> Result<Self, IdError> {
        parse_digits(text, 1, 19).map(Self)
    }

    pub fn new(value: u64) -> Self {
        Self(value)
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for NumericId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for NumericId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A recipient in E.164 form reduced to its digits: 8 to 15 digits, the first
/// one a country code digit (never 0). 15 digits fit in 50 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Recipient(u64);

impl Recipient {
    pub const MIN_DIGITS: usize = 8;
    pub const MAX_DIGITS: usize = 15;

    /// Accepts `+15551234567`, `15551234567` and the usual separators
    /// (spaces, `-`, `.`, parentheses) that people paste from address books.
    pub fn normalise(text: &str) -> Result<Self, IdError> {
        let text = text.trim();
        let text = text.strip_prefix('+').unwrap_or(text);
        let digits: String = text.chars().filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')')).collect();
        parse_digits(&digits, Self::MIN_DIGITS, Self::MAX_DIGITS).map(Self)
    }

    pub fn new(value: u64) -> Self {
        Self(value)
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Recipient {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn parse_digits(text: &str, min: usize, max: usize) -> Result<u64, IdError> {
    if text.is_empty() {
        return Err(IdError::Empty);
    }
    if let Some(c) = text.chars().find(|c| !c.is_ascii_digit()) {
        return Err(IdError::NotDigit(c));
    }
    if text.starts_with('0') {
        return Err(IdError::LeadingZero);
    }
    let len = text.len();
    if !(min..=max).contains(&len) {
        return Err(IdError::Length { len, min, max });
    }
    // At most 19 digits, so this cannot overflow.
    Ok(text.bytes().fold(0u64, |n, b| n * 10 + u64::from(b - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipient_is_normalised_to_digits() {
        assert_eq!(Recipient::normalise("+1 (555) 123-4567").unwrap().get(), 15551234567);
        assert_eq!(Recipient::normalise("447700900123").unwrap().to_string(), "447700900123");
    }

    #[test]
    fn recipient_length_and_characters_are_checked() {
        assert_eq!(Recipient::normalise("+1234567"), Err(IdError::Length { len: 7, min: 8, max: 15 }));
        assert_eq!(
            Recipient::normalise("1234567890123456"),
            Err(IdError::Length { len: 16, min: 8, max: 15 })
        );
        assert_eq!(Recipient::normalise("+1555x234567"), Err(IdError::NotDigit('x')));
        assert_eq!(Recipient::normalise("05551234567"), Err(IdError::LeadingZero));
        assert_eq!(Recipient::normalise("+"), Err(IdError::Empty));
    }

    #[test]
    fn numeric_id_round_trips_and_bounds_length() {
        let id = NumericId::parse("106540352242922").unwrap();
        assert_eq!(id.to_string(), "106540352242922");
        assert!(NumericId::parse("9999999999999999999").is_ok());
        assert!(NumericId::parse("10000000000000000000").is_err());
        assert!(NumericId::parse("").is_err());
    }
}
