//! [`generate`]: the records of a [`LoadSpec`], in write order, as a lazy
//! iterator. Pure: no I/O, and every choice comes from one RNG seeded by
//! `spec.seed`, so a spec (and a start instant) always gives the same bytes.
//!
//! The layout of a run of `jobs` records:
//! - malformed records sit at evenly spaced positions (`round(jobs ×
//!   malformed_fraction)` of them, exactly), cycling through [`MalformedKind`];
//! - burst records are spread evenly among the remaining (valid) positions,
//!   each burst on its own;
//! - every other position is a regular job: number by share, recipient by
//!   [`Recipients`], sometimes with `not_before` or `expires_at`.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::Zipf;
use serde::Serialize;
use wabulk_model::DEFAULT_MAX_JOB_BYTES;

use crate::{LoadSpec, Recipients};

/// Recipient indices below this have a distinct number (see [`recipient`]).
pub const MAX_RECIPIENTS: u64 = 100_000_000_000;

/// Below this, recipients are 11-digit `+1555xxxxxxx` numbers (the
/// fictional 555 range, readable in logs); above, 15-digit ones.
const SHORT_FORM_LIMIT: u64 = 10_000_000;

/// The recipient of index `index` (< [`MAX_RECIPIENTS`]) in E.164:
/// `+1555` and 7 digits for the first ten million, `+1555` and 11 digits
/// after that (15 digits, E.164's maximum). Distinct indices give distinct
/// numbers: the two forms differ in length.
pub fn recipient(index: u64) -> String {
    if index < SHORT_FORM_LIMIT {
        format!("+1555{index:07}")
    } else {
        format!("+1555{index:011}")
    }
}

/// The ways a record is not a valid job, one for each path of the engine's
/// parser that must send it to the DLQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MalformedKind {
    /// Text that is not JSON at all.
    NotJson,
    /// A job without its required `to`.
    MissingField,
    /// `to` is a JSON number instead of a string.
    WrongType,
    /// `to` has too few digits to be E.164.
    InvalidNumber,
    /// A well-formed job whose only fault is being over 64 KiB.
    Oversized,
    /// A job with bytes that are not UTF-8 inside the message body.
    InvalidUtf8,
}

impl MalformedKind {
    /// Every kind, in the order malformed records cycle through them.
    pub const ALL: [MalformedKind; 6] = [
        MalformedKind::NotJson,
        MalformedKind::MissingField,
        MalformedKind::WrongType,
        MalformedKind::InvalidNumber,
        MalformedKind::Oversized,
        MalformedKind::InvalidUtf8,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MalformedKind::NotJson => "not_json",
            MalformedKind::MissingField => "missing_field",
            MalformedKind::WrongType => "wrong_type",
            MalformedKind::InvalidNumber => "invalid_number",
            MalformedKind::Oversized => "oversized",
            MalformedKind::InvalidUtf8 => "invalid_utf8",
        }
    }
}

/// One Kafka record of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedRecord {
    /// The Kafka key: the `phone_number_id` as UTF-8 (CONTRACT §1).
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    /// The job id; `None` for malformed records, which get no result.
    pub job_id: Option<String>,
    pub phone_number_id: String,
    pub malformed: bool,
    /// Which kind, when `malformed`.
    pub malformed_kind: Option<MalformedKind>,
    /// Position in the run (0-based); the job id is `"{id_prefix}-{seq}"`.
    pub seq: u64,
    /// Index into `spec.bursts` for a burst job.
    pub burst: Option<usize>,
    pub not_before: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// The records of `spec` in write order, timestamps relative to now.
///
/// Deterministic for a given spec apart from the timestamps; use
/// [`generate_at`] to fix those too.
///
/// # Panics
/// If the spec is invalid ([`LoadSpec::validate`]).
pub fn generate(spec: &LoadSpec) -> Generator {
    generate_at(spec, Utc::now())
}

/// The records of `spec` for a run that starts at `start`. Record `seq` is
/// expected to be written at `start + seq / rate` (at `start` without a
/// rate), and its `not_before` and `expires_at` are relative to that
/// instant, so they keep their meaning however long the run is.
///
/// # Panics
/// If the spec is invalid ([`LoadSpec::validate`]).
pub fn generate_at(spec: &LoadSpec, start: DateTime<Utc>) -> Generator {
    if let Err(e) = spec.validate() {
        panic!("{e}");
    }
    Generator::new(spec, start)
}

/// The iterator [`generate`] returns.
#[derive(Debug)]
pub struct Generator {
    /// (phone_number_id, waba_id) per number, as strings ready to write.
    numbers: Vec<(String, String)>,
    /// Picks a number for a regular job by `share`.
    number_weights: WeightedIndex<f64>,
    recipients: RecipientSampler,
    /// For each burst: its number's index and its recipient.
    bursts: Vec<(usize, String)>,
    /// (valid position, burst index) of every burst record, in order: a
    /// burst record is due once the run reaches its position.
    burst_schedule: Vec<(u64, usize)>,
    /// Next entry of `burst_schedule`.
    next_burst: usize,
    jobs: u64,
    malformed_total: u64,
    malformed_written: u64,
    /// Valid records so far, the position space of `burst_schedule`.
    valid_written: u64,
    seq: u64,
    id_prefix: String,
    /// Campaigns the regular jobs are spread over (`LoadSpec::campaigns`).
    campaigns: u32,
    start: DateTime<Utc>,
    rate: Option<f64>,
    not_before_fraction: f64,
    not_before_min_s: u64,
    not_before_max_s: u64,
    expires_fraction: f64,
    expires_in_s: u64,
    rng: StdRng,
}

#[derive(Debug)]
enum RecipientSampler {
    Uniform(u64),
    Zipf { count: u64, zipf: Zipf<f64> },
}

impl RecipientSampler {
    fn sample(&self, rng: &mut StdRng) -> u64 {
        match self {
            RecipientSampler::Uniform(count) => rng.random_range(0..*count),
            // Zipf yields ranks 1..=count as floats; rank 1 is index 0.
            RecipientSampler::Zipf { count, zipf } => (zipf.sample(rng) as u64).clamp(1, *count) - 1,
        }
    }
}

impl Generator {
    fn new(spec: &LoadSpec, start: DateTime<Utc>) -> Self {
        let numbers: Vec<(String, String)> =
            spec.numbers.iter().map(|n| (n.id.clone(), n.waba_id.clone())).collect();
        let number_weights = WeightedIndex::new(spec.numbers.iter().map(|n| n.share))
            .expect("validated: shares are finite, >= 0 and not all 0");
        let recipients = match spec.recipients {
            Recipients::Uniform { count } => RecipientSampler::Uniform(count),
            Recipients::Zipf { count, exponent } => RecipientSampler::Zipf {
                count,
                zipf: Zipf::new(count as f64, exponent).expect("validated: count >= 1, exponent >= 0"),
            },
        };
        let malformed_total = spec.malformed_count();
        let valid_total = spec.jobs - malformed_total;
        let mut bursts = Vec::with_capacity(spec.bursts.len());
        let mut burst_schedule = Vec::new();
        for (b, burst) in spec.bursts.iter().enumerate() {
            let number = spec
                .numbers
                .iter()
                .position(|n| n.id == burst.phone_number_id)
                .expect("validated: burst numbers are in `numbers`");
            bursts.push((number, recipient(burst.recipient_index)));
            let count = u64::from(burst.count);
            // The j-th of `count` at the middle of the j-th of `count` equal
            // slices of the valid positions.
            burst_schedule.extend((0..count).map(|j| (mul_div(2 * j + 1, valid_total, 2 * count.max(1)), b)));
        }
        burst_schedule.sort_unstable();
        Self {
            numbers,
            number_weights,
            recipients,
            bursts,
            burst_schedule,
            next_burst: 0,
            jobs: spec.jobs,
            malformed_total,
            malformed_written: 0,
            valid_written: 0,
            seq: 0,
            id_prefix: spec.id_prefix.clone(),
            campaigns: spec.campaigns,
            start: start.trunc_subsecs(3),
            rate: spec.rate,
            not_before_fraction: spec.not_before_fraction,
            not_before_min_s: spec.not_before_min_s,
            not_before_max_s: spec.not_before_max_s,
            expires_fraction: spec.expires_fraction,
            expires_in_s: spec.expires_in_s,
            rng: StdRng::seed_from_u64(spec.seed),
        }
    }

    /// Whether position `seq` holds a malformed record: the k-th malformed
    /// record sits where `floor(seq × m / jobs)` steps up, which spreads
    /// exactly `m` of them evenly.
    fn is_malformed_slot(&self, seq: u64) -> bool {
        mul_div(seq + 1, self.malformed_total, self.jobs) > mul_div(seq, self.malformed_total, self.jobs)
    }

    /// The instant record `seq` is expected to be written.
    fn send_time(&self, seq: u64) -> DateTime<Utc> {
        match self.rate {
            // Whole milliseconds, like the timestamps as written, so that
            // `GeneratedRecord` says exactly what the payload says.
            Some(rate) => {
                self.start + chrono::Duration::milliseconds((seq as f64 / rate * 1e3).round() as i64)
            }
            None => self.start,
        }
    }

    fn make_record(&mut self, seq: u64) -> GeneratedRecord {
        if self.is_malformed_slot(seq) {
            let kind =
                MalformedKind::ALL[(self.malformed_written % MalformedKind::ALL.len() as u64) as usize];
            self.malformed_written += 1;
            return self.malformed(seq, kind);
        }
        let valid_left = self.jobs - self.malformed_total - self.valid_written;
        let bursts_left = (self.burst_schedule.len() - self.next_burst) as u64;
        // Due by position, or forced once only burst records can fill the
        // remaining valid positions (so none is ever cut off).
        let burst_due = self
            .burst_schedule
            .get(self.next_burst)
            .is_some_and(|&(position, _)| position <= self.valid_written || bursts_left >= valid_left);
        self.valid_written += 1;
        if burst_due {
            let burst = self.burst_schedule[self.next_burst].1;
            self.next_burst += 1;
            let (number, to) = self.bursts[burst].clone();
            let body = format!("Burst {burst}: message {seq} to the same recipient");
            return self.job(seq, number, &to, body, Some(burst), None, None);
        }
        let number = self.number_weights.sample(&mut self.rng);
        let to = recipient(self.recipients.sample(&mut self.rng));
        let body = self.body(seq);
        let now = self.send_time(seq);
        let not_before = self.rng.random_bool(self.not_before_fraction).then(|| {
            let delay_ms = self.rng.random_range(self.not_before_min_s * 1000..=self.not_before_max_s * 1000);
            now + chrono::Duration::milliseconds(delay_ms as i64)
        });
        let expires_at = self
            .rng
            .random_bool(self.expires_fraction)
            .then(|| now + chrono::Duration::seconds(self.expires_in_s as i64));
        self.job(seq, number, &to, body, None, not_before, expires_at)
    }

    /// A message body that varies a little, as a real campaign's would.
    fn body(&mut self, seq: u64) -> String {
        match self.rng.random_range(0..5u32) {
            0 => format!("Your order #{seq} has shipped"),
            1 => format!("Your verification code is {:06}", self.rng.random_range(0..1_000_000u32)),
            2 => format!("Reminder: your appointment is tomorrow at {}:00", self.rng.random_range(8..18u32)),
            3 => format!("Thanks for your purchase! Reference {seq:x}"),
            _ => format!("Parcel {seq} is out for delivery and arrives today"),
        }
    }

    #[allow(clippy::too_many_arguments)] // private; one call per record kind
    fn job(
        &self,
        seq: u64,
        number: usize,
        to: &str,
        body: String,
        burst: Option<usize>,
        not_before: Option<DateTime<Utc>>,
        expires_at: Option<DateTime<Utc>>,
    ) -> GeneratedRecord {
        let (phone_number_id, waba_id) = &self.numbers[number];
        let id = format!("{}-{seq}", self.id_prefix);
        let campaign =
            (self.campaigns > 0).then(|| format!("{}-c{}", self.id_prefix, seq % u64::from(self.campaigns)));
        let wire = WireJob {
            id: &id,
            phone_number_id,
            waba_id,
            to: Some(to),
            message: WireMessage { kind: "text", text: WireText { body } },
            not_before: not_before.map(rfc3339),
            expires_at: expires_at.map(rfc3339),
            metadata: Metadata { loadgen: true, seq, burst },
            campaign,
        };
        let payload = serde_json::to_vec(&wire).expect("plain structs always serialise");
        GeneratedRecord {
            key: phone_number_id.as_bytes().to_vec(),
            payload,
            job_id: Some(id),
            phone_number_id: phone_number_id.clone(),
            malformed: false,
            malformed_kind: None,
            seq,
            burst,
            not_before,
            expires_at,
        }
    }

    fn malformed(&mut self, seq: u64, kind: MalformedKind) -> GeneratedRecord {
        let number = self.number_weights.sample(&mut self.rng);
        let (phone_number_id, waba_id) = &self.numbers[number];
        let id = format!("{}-{seq}", self.id_prefix);
        let to = recipient(self.recipients.sample(&mut self.rng));
        let base = |to: Option<&str>, body: String| {
            serde_json::to_value(WireJob {
                id: &id,
                phone_number_id,
                waba_id,
                to,
                message: WireMessage { kind: "text", text: WireText { body } },
                not_before: None,
                expires_at: None,
                metadata: Metadata { loadgen: true, seq, burst: None },
                campaign: None,
            })
            .expect("plain structs always serialise")
        };
        let payload = match kind {
            MalformedKind::NotJson => format!("loadgen record {seq}: this is not JSON {{").into_bytes(),
            MalformedKind::MissingField => to_vec(&base(None, "No recipient".into())),
            MalformedKind::WrongType => {
                let mut job = base(Some(&to), "Recipient as a number".into());
                let digits: u64 = to[1..].parse().expect("recipients are digits after +");
                job["to"] = serde_json::Value::from(digits);
                to_vec(&job)
            }
            MalformedKind::InvalidNumber => to_vec(&base(Some("+12345"), "Recipient too short".into())),
            MalformedKind::Oversized => {
                // Just over the limit: enough to be refused, no more, because
                // the mock cluster keeps only ~5 MiB per partition.
                let body = "x".repeat(DEFAULT_MAX_JOB_BYTES + 1);
                to_vec(&base(Some(&to), body))
            }
            MalformedKind::InvalidUtf8 => {
                const MARKER: &str = "@INVALID@";
                let mut bytes = to_vec(&base(Some(&to), format!("Broken {MARKER} bytes")));
                let at = find(&bytes, MARKER.as_bytes()).expect("the marker is in the body");
                bytes.splice(at..at + MARKER.len(), [0xff, 0xfe]);
                bytes
            }
        };
        GeneratedRecord {
            key: phone_number_id.as_bytes().to_vec(),
            payload,
            job_id: None,
            phone_number_id: phone_number_id.clone(),
            malformed: true,
            malformed_kind: Some(kind),
            seq,
            burst: None,
            not_before: None,
            expires_at: None,
        }
    }
}

impl Iterator for Generator {
    type Item = GeneratedRecord;

    fn next(&mut self) -> Option<GeneratedRecord> {
        if self.seq >= self.jobs {
            return None;
        }
        let seq = self.seq;
        self.seq += 1;
        Some(self.make_record(seq))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::try_from(self.jobs - self.seq).unwrap_or(usize::MAX);
        (left, Some(left))
    }
}

/// `a × b / c` rounded down, without overflow.
fn mul_div(a: u64, b: u64, c: u64) -> u64 {
    if c == 0 {
        return 0;
    }
    (u128::from(a) * u128::from(b) / u128::from(c)) as u64
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn to_vec(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("a JSON value always serialises")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The job as written (CONTRACT §2).
#[derive(Serialize)]
struct WireJob<'a> {
    id: &'a str,
    phone_number_id: &'a str,
    waba_id: &'a str,
    /// `None` only for [`MalformedKind::MissingField`].
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a str>,
    message: WireMessage,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    metadata: Metadata,
    #[serde(skip_serializing_if = "Option::is_none")]
    campaign: Option<String>,
}

#[derive(Serialize)]
struct WireMessage {
    #[serde(rename = "type")]
    kind: &'static str,
    text: WireText,
}

#[derive(Serialize)]
struct WireText {
    body: String,
}

/// Echoed in the result, so a reader can tell load-generator jobs apart
/// and find their position (and burst) without parsing the id.
#[derive(Serialize)]
struct Metadata {
    loadgen: bool,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    burst: Option<usize>,
}

#[cfg(test)]
mod tests;
