//! The headers of a parked record, written as decimal ASCII so that any
//! Kafka tool shows them as they are.

use std::panic::{catch_unwind, AssertUnwindSafe};

use rdkafka::message::{Header, Headers, OwnedHeaders};

/// When the job is due (unix ms): it is not written back before.
pub const PARKED_DUE_HEADER: &str = "wabulk-parked-due";
/// When the record's hop ends (unix ms): the mover does not take it before.
pub const PARKED_RELEASE_HEADER: &str = "wabulk-parked-release";
/// Why the job was parked, as the engine said (free text).
pub const PARKED_REASON_HEADER: &str = "wabulk-parked-reason";
/// How many tier writes the job has taken so far.
pub const PARKED_HOPS_HEADER: &str = "wabulk-parked-hops";
/// When the job was first parked (unix ms), kept when it is parked again
/// after coming back: how long it has been waiting.
pub const PARKED_SINCE_HEADER: &str = "wabulk-parked-since";
/// On the jobs topic only: the tier topic a record without readable
/// parking headers was found in.
pub const PARKED_UNREADABLE_HEADER: &str = "wabulk-parked-unreadable";

/// The largest time accepted: the end of year 9999, in unix ms. Beyond it a
/// header is not a time anyone meant.
const MAX_MS: u64 = 253_402_300_799_999;

/// What a parked record's headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parked {
    pub(crate) due_ms: u64,
    pub(crate) release_ms: u64,
    /// Boxed rather than a `Vec`: the mover holds one per partition head,
    /// and a few bytes less keep that small.
    pub(crate) reason: Box<[u8]>,
    pub(crate) hops: u32,
    /// `None` on a record written without it (by an older version).
    pub(crate) since_ms: Option<u64>,
}

impl Parked {
    /// The headers of the record in a tier.
    pub(crate) fn tier_headers(&self) -> OwnedHeaders {
        self.common().insert(Header { key: PARKED_RELEASE_HEADER, value: Some(&self.release_ms.to_string()) })
    }

    /// The headers of the job written back to the jobs topic.
    pub(crate) fn jobs_headers(&self) -> OwnedHeaders {
        self.common()
    }

    fn common(&self) -> OwnedHeaders {
        let headers = OwnedHeaders::new_with_capacity(5)
            .insert(Header { key: PARKED_DUE_HEADER, value: Some(&self.due_ms.to_string()) })
            .insert(Header { key: PARKED_REASON_HEADER, value: Some(&*self.reason) })
            .insert(Header { key: PARKED_HOPS_HEADER, value: Some(&self.hops.to_string()) });
        match self.since_ms {
            Some(since) => {
                headers.insert(Header { key: PARKED_SINCE_HEADER, value: Some(&since.to_string()) })
            }
            None => headers,
        }
    }

    /// Reads the parking headers of a record; `None` when the due or release
    /// time is missing or not a plausible time. The last occurrence of a
    /// header wins. A missing hop count counts as 1, a missing reason as
    /// empty.
    pub(crate) fn read(headers: Option<&impl Headers>) -> Option<Parked> {
        let headers = headers?;
        // rdkafka panics on a header name that is not UTF-8 (anyone can
        // write one into a tier topic): such a record is unreadable, not
        // the end of the mover.
        catch_unwind(AssertUnwindSafe(|| Self::read_all(headers))).ok().flatten()
    }

    fn read_all(headers: &impl Headers) -> Option<Parked> {
        let (mut due, mut release, mut reason, mut hops, mut since_ms) =
            (None, None, Box::default(), 1, None);
        for index in 0..headers.count() {
            let header = headers.try_get(index)?;
            let value = header.value.unwrap_or_default();
            match header.key {
                PARKED_DUE_HEADER => due = Some(decimal(value)?),
                PARKED_RELEASE_HEADER => release = Some(decimal(value)?),
                PARKED_REASON_HEADER => reason = value.into(),
                PARKED_HOPS_HEADER => hops = u32::try_from(decimal(value)?).ok()?,
                PARKED_SINCE_HEADER => since_ms = decimal(value),
                _ => {}
            }
        }
        Some(Parked { due_ms: due?, release_ms: release?, reason, hops, since_ms })
    }
}

/// What a job written back to the jobs topic by the mover says of its
/// parking: why it was parked and when it was due. A record without a
/// readable due header was not parked (or not by wabulk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Returned {
    /// The reason the engine gave (`not_before`, `halted`, `backlog`, `waba_cap`).
    pub reason: String,
    /// When it was due, in unix milliseconds.
    pub due_ms: u64,
    /// When it was first parked, in unix milliseconds, if it says.
    pub since_ms: Option<u64>,
}

impl Returned {
    /// Reads the headers of a record of the jobs topic.
    pub(crate) fn read(headers: Option<&impl Headers>) -> Option<Returned> {
        let headers = headers?;
        catch_unwind(AssertUnwindSafe(|| {
            let (mut due_ms, mut reason, mut since_ms) = (None, String::new(), None);
            for index in 0..headers.count() {
                let header = headers.try_get(index)?;
                let value = header.value.unwrap_or_default();
                match header.key {
                    PARKED_DUE_HEADER => due_ms = Some(decimal(value)?),
                    PARKED_REASON_HEADER => reason = String::from_utf8_lossy(value).into_owned(),
                    PARKED_SINCE_HEADER => since_ms = decimal(value),
                    _ => {}
                }
            }
            Some(Returned { reason, due_ms: due_ms?, since_ms })
        }))
        .ok()
        .flatten()
    }
}

/// A plain decimal of at most 15 digits up to [`MAX_MS`].
fn decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 15 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok().filter(|&n| n <= MAX_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parked() -> Parked {
        Parked {
            due_ms: 1_700_000_005_000,
            release_ms: 1_700_000_001_000,
            reason: b"not_before".as_slice().into(),
            hops: 3,
            since_ms: Some(1_700_000_000_000),
        }
    }

    #[test]
    fn a_returned_job_says_why_and_when_it_was_due() {
        let returned = Returned::read(Some(&parked().jobs_headers()));
        let expected = Returned {
            reason: "not_before".into(),
            due_ms: 1_700_000_005_000,
            since_ms: Some(1_700_000_000_000),
        };
        assert_eq!(returned, Some(expected));
        assert_eq!(Returned::read(Some(&OwnedHeaders::new())), None);
        assert_eq!(Returned::read(None::<&OwnedHeaders>), None);
    }

    #[test]
    fn tier_headers_read_back() {
        let headers = parked().tier_headers();
        assert_eq!(Parked::read(Some(&headers)), Some(parked()));
        // The jobs topic gets no release time.
        assert_eq!(Parked::read(Some(&parked().jobs_headers())), None);
    }

    #[test]
    fn unreadable_headers_are_none() {
        assert_eq!(Parked::read(None::<&OwnedHeaders>), None);
        let only_due = OwnedHeaders::new().insert(Header { key: PARKED_DUE_HEADER, value: Some("5") });
        assert_eq!(Parked::read(Some(&only_due)), None);
        for bad in ["", "-1", "+5", "1e3", "99999999999999999999", "253402300800000", " 5", "\u{0665}"] {
            let headers = OwnedHeaders::new()
                .insert(Header { key: PARKED_DUE_HEADER, value: Some(bad) })
                .insert(Header { key: PARKED_RELEASE_HEADER, value: Some("5") });
            assert_eq!(Parked::read(Some(&headers)), None, "{bad:?}");
        }
        let no_value = OwnedHeaders::new()
            .insert(Header::<&str> { key: PARKED_DUE_HEADER, value: None })
            .insert(Header { key: PARKED_RELEASE_HEADER, value: Some("5") });
        assert_eq!(Parked::read(Some(&no_value)), None);
    }

    #[test]
    fn missing_reason_and_hops_have_defaults() {
        let headers = OwnedHeaders::new()
            .insert(Header { key: "other", value: Some("x") })
            .insert(Header { key: PARKED_DUE_HEADER, value: Some("10") })
            .insert(Header { key: PARKED_RELEASE_HEADER, value: Some("7") });
        assert_eq!(
            Parked::read(Some(&headers)),
            Some(Parked { due_ms: 10, release_ms: 7, reason: Box::default(), hops: 1, since_ms: None })
        );
    }
}
