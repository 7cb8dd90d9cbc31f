//! [`LoadSpec`]: what a load run writes. Plain data that serialises to and
//! from JSON or TOML, so a run can be described in a file and replayed
//! exactly (the seed fixes every random choice).

use serde::{Deserialize, Serialize};
use wabulk_model::NumericId;

use crate::generate::MAX_RECIPIENTS;
use crate::LoadgenError;

/// The longest job id the contract allows (CONTRACT §2).
const MAX_ID_CHARS: usize = 128;

/// A load run: which numbers send, how many jobs, how fast, to whom, and how
/// many of them are awkward (malformed, delayed, expiring).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default = "LoadSpec::file_default", deny_unknown_fields)]
pub struct LoadSpec {
    /// The business numbers jobs are written for (the Kafka key).
    pub numbers: Vec<LoadNumber>,
    /// Records to write in total, malformed and burst records included.
    pub jobs: u64,
    /// Records per second over all numbers; `None` writes as fast as Kafka
    /// acknowledges (bounded by the sends in flight).
    pub rate: Option<f64>,
    /// How recipients are drawn.
    pub recipients: Recipients,
    /// Recipients that get many jobs from one number, to exercise the pair
    /// limit (PLATFORM "The pair rule").
    pub bursts: Vec<Burst>,
    /// Fraction (0..=1) of records that are not valid jobs; they cycle
    /// through every [`MalformedKind`](crate::MalformedKind) and are spread
    /// evenly through the run, so the count is exact: `round(jobs × fraction)`.
    pub malformed_fraction: f64,
    /// Fraction (0..=1) of regular jobs with `not_before` = send time +
    /// U(`not_before_min_s`, `not_before_max_s`).
    pub not_before_fraction: f64,
    pub not_before_min_s: u64,
    pub not_before_max_s: u64,
    /// Fraction (0..=1) of regular jobs with `expires_at` = send time + `expires_in_s`.
    pub expires_fraction: f64,
    pub expires_in_s: u64,
    /// Job ids are `"{id_prefix}-{seq}"`, `seq` being the record's position
    /// in the run; choose a new prefix per run to keep ids unique across runs.
    pub id_prefix: String,
    /// Fixes every random choice: the same spec gives the same records.
    pub seed: u64,
    /// Regular jobs are spread round-robin over this many campaigns
    /// (`"campaign": "{id_prefix}-c{n}"`); 0 gives none a campaign.
    pub campaigns: u32,
}

/// One business number and how much of the load it gets.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(from = "LoadNumberWire")]
pub struct LoadNumber {
    /// The `phone_number_id` (digits).
    pub id: String,
    /// Its WABA, written into every job as `waba_id`.
    pub waba_id: String,
    /// The number's throughput limit; only used as the default share here,
    /// kept so that one file can describe both the load and the engine's view.
    pub mps: u32,
    /// Relative share of the regular jobs (not bursts, not malformed
    /// records); defaults to `mps`, so numbers get load in proportion to
    /// what they can send.
    pub share: f64,
}

impl LoadNumber {
    /// A number whose share is its `mps`.
    pub fn new(id: impl Into<String>, waba_id: impl Into<String>, mps: u32) -> Self {
        Self { id: id.into(), waba_id: waba_id.into(), mps, share: f64::from(mps) }
    }
}

/// The file form, where `share` may be left out.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadNumberWire {
    id: String,
    waba_id: String,
    mps: u32,
    #[serde(default)]
    share: Option<f64>,
}

impl From<LoadNumberWire> for LoadNumber {
    fn from(wire: LoadNumberWire) -> Self {
        let share = wire.share.unwrap_or(f64::from(wire.mps));
        Self { id: wire.id, waba_id: wire.waba_id, mps: wire.mps, share }
    }
}

/// How the recipient of each regular job is drawn from `count` distinct
/// recipients (see [`recipient`](crate::recipient) for index → number).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Recipients {
    /// Every recipient equally likely: few jobs per pair, the pair limit
    /// rarely matters.
    Uniform { count: u64 },
    /// Recipient of rank k (index k − 1) with probability ∝ 1 / k^exponent:
    /// a few recipients get most jobs, as in real campaigns with popular
    /// contacts, and the pair limit bites. `exponent` 0 is uniform; around 1
    /// is classic Zipf.
    Zipf { count: u64, exponent: f64 },
}

impl Recipients {
    /// How many distinct recipients regular jobs are drawn from.
    pub fn count(&self) -> u64 {
        match *self {
            Recipients::Uniform { count } | Recipients::Zipf { count, .. } => count,
        }
    }
}

/// `count` jobs from one number to one recipient, spread evenly through the
/// run among the regular jobs.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Burst {
    /// Must be one of the spec's numbers (its `waba_id` is used).
    pub phone_number_id: String,
    /// The recipient's index, as for [`Recipients`]; it may be outside the
    /// regular recipients' range (then only the burst writes to it).
    pub recipient_index: u64,
    pub count: u32,
}

impl Default for LoadSpec {
    /// Two numbers of one WABA at the default 80 mps, 1,000 records at
    /// 500/s over 1,000 recipients, one burst of 20, and a few malformed,
    /// delayed and expiring jobs: every path of the engine, in two seconds.
    fn default() -> Self {
        Self {
            numbers: vec![
                LoadNumber::new("106540352242922", "102290129340398", 80),
                LoadNumber::new("106540352242923", "102290129340398", 80),
            ],
            jobs: 1_000,
            rate: Some(500.0),
            recipients: Recipients::Uniform { count: 1_000 },
            bursts: vec![Burst { phone_number_id: "106540352242922".into(), recipient_index: 0, count: 20 }],
            malformed_fraction: 0.01,
            not_before_fraction: 0.02,
            not_before_min_s: 0,
            not_before_max_s: 10,
            expires_fraction: 0.02,
            expires_in_s: 60,
            id_prefix: "loadgen".into(),
            seed: 1,
            campaigns: 0,
        }
    }
}

impl LoadSpec {
    /// What a spec file leaves out: the default numbers, jobs and
    /// recipients, and nothing optional: no rate cap (as fast as Kafka
    /// takes them), no bursts, no malformed, delayed or expiring jobs, and
    /// an empty `id_prefix` that the caller fills in per run.
    pub fn file_default() -> Self {
        Self {
            rate: None,
            bursts: Vec::new(),
            malformed_fraction: 0.0,
            not_before_fraction: 0.0,
            not_before_min_s: 0,
            not_before_max_s: 0,
            expires_fraction: 0.0,
            expires_in_s: 0,
            id_prefix: String::new(),
            ..Self::default()
        }
    }

    /// How many records are malformed: exactly this many, whatever the seed.
    pub fn malformed_count(&self) -> u64 {
        // `jobs` fits in f64 exactly for any run that could finish.
        ((self.jobs as f64) * self.malformed_fraction).round() as u64
    }

    /// How many burst records the run writes.
    pub fn burst_count(&self) -> u64 {
        self.bursts.iter().map(|b| u64::from(b.count)).sum()
    }

    /// Checks everything [`generate`](crate::generate) relies on; `run`
    /// calls it first.
    pub fn validate(&self) -> Result<(), LoadgenError> {
        let invalid = |reason: String| Err(LoadgenError::InvalidSpec(reason));
        if self.numbers.is_empty() {
            return invalid("`numbers` is empty".into());
        }
        for number in &self.numbers {
            if let Err(e) = NumericId::parse(&number.id) {
                return invalid(format!("number id {:?} {e}", number.id));
            }
            if let Err(e) = NumericId::parse(&number.waba_id) {
                return invalid(format!("waba_id {:?} of number {} {e}", number.waba_id, number.id));
            }
            if !(number.share.is_finite() && number.share >= 0.0) {
                return invalid(format!("share of number {} must be a finite number >= 0", number.id));
            }
        }
        if self.numbers.iter().map(|n| n.share).sum::<f64>() <= 0.0 {
            return invalid("the numbers' shares add up to 0".into());
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return invalid(format!("rate {rate} must be a finite number > 0"));
            }
        }
        let count = self.recipients.count();
        if !(1..=MAX_RECIPIENTS).contains(&count) {
            return invalid(format!("recipients count {count} must be 1 to {MAX_RECIPIENTS}"));
        }
        if let Recipients::Zipf { exponent, .. } = self.recipients {
            if !(exponent.is_finite() && exponent >= 0.0) {
                return invalid(format!("Zipf exponent {exponent} must be a finite number >= 0"));
            }
        }
        for burst in &self.bursts {
            if !self.numbers.iter().any(|n| n.id == burst.phone_number_id) {
                return invalid(format!("burst number {} is not in `numbers`", burst.phone_number_id));
            }
            if burst.recipient_index >= MAX_RECIPIENTS {
                return invalid(format!("burst recipient_index must be below {MAX_RECIPIENTS}"));
            }
        }
        for (name, fraction) in [
            ("malformed_fraction", self.malformed_fraction),
            ("not_before_fraction", self.not_before_fraction),
            ("expires_fraction", self.expires_fraction),
        ] {
            if !(0.0..=1.0).contains(&fraction) {
                return invalid(format!("{name} {fraction} must be between 0 and 1"));
            }
        }
        if self.malformed_count() + self.burst_count() > self.jobs {
            return invalid(format!(
                "{} malformed and {} burst records do not fit in {} jobs",
                self.malformed_count(),
                self.burst_count(),
                self.jobs
            ));
        }
        if self.id_prefix.is_empty() {
            return invalid("`id_prefix` is empty".into());
        }
        let longest_id = self.id_prefix.chars().count() + 1 + self.jobs.to_string().len();
        if longest_id > MAX_ID_CHARS {
            return invalid(format!("`id_prefix` is too long: job ids must be at most {MAX_ID_CHARS} chars"));
        }
        // The timestamps must stay within chrono's range.
        const TEN_YEARS_S: u64 = 10 * 366 * 24 * 3600;
        if self.not_before_max_s > TEN_YEARS_S || self.expires_in_s > TEN_YEARS_S {
            return invalid("not_before_max_s and expires_in_s must be at most ten years".into());
        }
        if self.not_before_min_s > self.not_before_max_s {
            return invalid(format!(
                "not_before_min_s {} must be at most not_before_max_s {}",
                self.not_before_min_s, self.not_before_max_s
            ));
        }
        Ok(())
    }
}
