//! The simulator's configuration: the business numbers and WABAs it knows, the
//! limits it referees, how slowly it answers and which faults it injects.
//!
//! Every type here is plain serde data so that the `wabulk simulate` subcommand can
//! read it from TOML; durations are integer milliseconds on the wire (`*_ms`)
//! because TOML has no duration type. The shape is documented in the crate docs.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything the simulator needs to know. `Default` is Meta's documented
/// behaviour with no numbers configured; see [`example_config`] for a ready one.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Minimum spacing of messages to one (number, recipient) pair once a burst
    /// is spent. Meta's figure is 6 s; tests shrink it to tens of milliseconds so
    /// that the pair rule can be observed without long sleeps.
    #[serde(rename = "pair_interval_ms", with = "millis")]
    pub pair_interval: Duration,
    /// Largest burst to one pair inside one `pair_interval` (Meta: 45). Raising it
    /// lets more messages through at once but each one is repaid by an interval of
    /// silence afterwards.
    pub pair_burst: u32,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` advertised per connection (Meta
    /// commonly uses 100). Lowering it forces a sender to open more connections to
    /// keep the same number of requests in flight.
    pub max_concurrent_streams: u32,
    /// Serve HTTPS instead of cleartext: a CA and a server certificate for
    /// `127.0.0.1`, `::1` and `localhost` are made at start (the CA is
    /// [`crate::SimHandle::ca_pem`]), and ALPN offers `h2` and `http/1.1`. The
    /// engine then trusts the CA through `graph.ca_file`. Default false.
    pub tls: bool,
    /// Seed for every random choice (latency samples, faults, trace ids). `None`
    /// seeds from the OS. With a seed, runs with the same arrival order make the
    /// same choices.
    pub seed: Option<u64>,
    /// How long the simulator waits before answering each `/messages` request.
    pub latency: Latency,
    /// The business numbers the simulator accepts; any other id gets error 100.
    pub numbers: Vec<SimNumber>,
    /// The WABAs those numbers belong to, with their tokens and hourly caps.
    pub wabas: Vec<SimWaba>,
    /// Failures injected on requests that passed every limit.
    pub faults: Faults,
    /// Status notifications posted to a receiver, as Meta's webhooks.
    pub webhooks: crate::webhooks::WebhookConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            pair_interval: Duration::from_secs(6),
            pair_burst: 45,
            max_concurrent_streams: 100,
            tls: false,
            seed: None,
            latency: Latency::default(),
            numbers: Vec::new(),
            wabas: Vec::new(),
            faults: Faults::default(),
            webhooks: crate::webhooks::WebhookConfig::default(),
        }
    }
}

/// A business number (a `phone_number_id` in Graph API terms).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SimNumber {
    /// The `phone_number_id` in the request path.
    pub id: String,
    /// Messages per second this number may send: 80 by default, 20 for numbers
    /// shared with the Business app, up to 1000 after Meta's upgrade. More
    /// arrivals than this in any 1 s window are answered 130429 and counted as
    /// violations.
    #[serde(default = "default_mps")]
    pub mps: u32,
    /// The WABA this number belongs to; must name one of [`SimConfig::wabas`].
    pub waba_id: String,
}

/// A WhatsApp Business Account.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SimWaba {
    /// The WABA id.
    pub id: String,
    /// The access token every request for this WABA's numbers must carry as
    /// `Authorization: Bearer <token>`; anything else is answered 190.
    /// [`crate::SimHandle::set_token`] replaces it while the simulator runs.
    pub token: String,
    /// Calls allowed in any rolling hour over all of the WABA's numbers. Meta's
    /// seed figure is 1,800,000 per registered number; a small cap lets tests
    /// reach error 80007 quickly.
    #[serde(default = "default_hourly_cap")]
    pub hourly_cap: u64,
}

/// How long the simulator takes to answer.
///
/// On the wire: `{ fixed_ms = 0 }` or `{ meta_scale = 1.0 }`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(from = "LatencyRepr", into = "LatencyRepr")]
pub enum Latency {
    /// Always this long. `Fixed(Duration::ZERO)` measures pure throughput.
    Fixed(Duration),
    /// Lognormal, fitted to Meta's observed send latency (median 0.5 s, p90 about
    /// 1 s, p99 about 2 s) and multiplied by `scale`; 0.01 keeps tests fast while
    /// keeping the shape of the tail.
    Meta {
        /// Multiplier applied to every sample; 1.0 is Meta's speed.
        scale: f64,
    },
}

impl Default for Latency {
    fn default() -> Self {
        Latency::Meta { scale: 1.0 }
    }
}

/// Serde form of [`Latency`]: an externally tagged enum whose tag names the unit,
/// so that TOML reads `latency = { fixed_ms = 250 }`.
#[derive(Deserialize, Serialize)]
enum LatencyRepr {
    #[serde(rename = "fixed_ms")]
    FixedMs(u64),
    #[serde(rename = "meta_scale")]
    MetaScale(f64),
}

impl From<LatencyRepr> for Latency {
    fn from(repr: LatencyRepr) -> Self {
        match repr {
            LatencyRepr::FixedMs(ms) => Latency::Fixed(Duration::from_millis(ms)),
            LatencyRepr::MetaScale(scale) => Latency::Meta { scale },
        }
    }
}

impl From<Latency> for LatencyRepr {
    fn from(latency: Latency) -> Self {
        match latency {
            Latency::Fixed(d) => LatencyRepr::FixedMs(saturating_millis(d)),
            Latency::Meta { scale } => LatencyRepr::MetaScale(scale),
        }
    }
}

/// Failures injected into requests that passed authentication, validation and
/// every limit. Each probability is in `[0, 1]`.
///
/// `hang`, `reset`, `transient` and `permanent` share one uniform roll per
/// request, in that order, so their rates are exact while they sum to at most 1
/// (past that, the later ones are starved). `goaway` is rolled on its own because
/// it does not change the answer, and `throttle_storm` is rolled once per number
/// per second. `forced` errors are tried first, each with its own roll.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// A transient failure, picked evenly among error 131000 (HTTP 500 with a
    /// JSON error), a bare HTTP 500 and a bare HTTP 503.
    pub transient: f64,
    /// Error 131026 (message undeliverable, HTTP 400): a permanent failure.
    pub permanent: f64,
    /// Per number and per second: the chance that the number enters a 2 s storm
    /// in which every request is answered 130429. Storm answers are Meta's doing,
    /// so they are not counted as violations.
    pub throttle_storm: f64,
    /// Never answer: the stream is held open until the client gives up (or the
    /// simulator shuts down).
    pub hang: f64,
    /// Reset instead of answering: RST_STREAM on HTTP/2, a dropped TCP connection
    /// on HTTP/1.1.
    pub reset: f64,
    /// Answer normally but send GOAWAY on the connection at once (HTTP/1.1: close
    /// it after this response), so later requests must use another connection.
    pub goaway: f64,
    /// Arbitrary errors for tests, tried in order before the random faults.
    pub forced: Vec<ForcedError>,
    /// A spell during which the simulator refuses connections, as when Meta's
    /// edge is unreachable; the same as calling
    /// [`crate::SimHandle::refuse_connections`] at `after`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outage: Option<Outage>,
}

/// The Graph API unreachable for a while: from `after` (since the simulator
/// started) for `duration`, the listening socket is closed, so connection
/// attempts are refused, and every open connection is dropped without an
/// answer (requests in flight included); then it listens on the same address
/// again. A sender sees connection failures, never an HTTP error.
///
/// On the wire: `outage = { after_ms = 60000, duration_ms = 120000 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    /// When it begins, counted from the simulator's start.
    #[serde(rename = "after_ms", with = "millis")]
    pub after: Duration,
    /// How long connections are refused.
    #[serde(rename = "duration_ms", with = "millis")]
    pub duration: Duration,
}

/// An error answered with some probability, e.g. 80007 with the
/// `x-business-use-case-usage` header, to test how a sender reacts to it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForcedError {
    /// The Graph API `error.code`.
    pub code: i64,
    /// The HTTP status of the answer (default 400).
    #[serde(default = "default_http_status")]
    pub http_status: u16,
    /// Chance per eligible request (default 1.0).
    #[serde(default = "default_probability")]
    pub probability: f64,
    /// Extra response headers as (name, value) pairs.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Only requests for this number are eligible; `None` means every number.
    #[serde(default)]
    pub phone_number_id: Option<String>,
}

/// Why a configuration cannot be served.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// Two numbers or two WABAs share an id.
    #[error("duplicate {kind} id {id:?}")]
    DuplicateId {
        /// `"number"` or `"waba"`.
        kind: &'static str,
        /// The repeated id.
        id: String,
    },
    /// A number names a WABA that is not configured, so its token is unknown.
    #[error("number {number:?} names unknown waba {waba:?}")]
    UnknownWaba {
        /// The number's id.
        number: String,
        /// The WABA id it names.
        waba: String,
    },
    /// A probability outside `[0, 1]` or a latency scale that is negative or not finite.
    #[error("{field} must be {expected}, got {value}")]
    OutOfRange {
        /// Which setting.
        field: String,
        /// What it must be.
        expected: &'static str,
        /// What it was.
        value: f64,
    },
}

impl SimConfig {
    /// Checks what serde cannot: ids are unique, every number's WABA exists and
    /// every probability is a probability. [`crate::Simulator::start`] calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for waba in &self.wabas {
            if !seen.insert(waba.id.as_str()) {
                return Err(ConfigError::DuplicateId { kind: "waba", id: waba.id.clone() });
            }
        }
        let mut numbers = std::collections::HashSet::new();
        for number in &self.numbers {
            if !numbers.insert(number.id.as_str()) {
                return Err(ConfigError::DuplicateId { kind: "number", id: number.id.clone() });
            }
            if !seen.contains(number.waba_id.as_str()) {
                return Err(ConfigError::UnknownWaba {
                    number: number.id.clone(),
                    waba: number.waba_id.clone(),
                });
            }
        }
        if let Latency::Meta { scale } = self.latency {
            if !(scale.is_finite() && scale >= 0.0) {
                return Err(ConfigError::OutOfRange {
                    field: "latency.meta_scale".into(),
                    expected: "finite and >= 0",
                    value: scale,
                });
            }
        }
        let f = &self.faults;
        let named = [
            ("faults.transient", f.transient),
            ("faults.permanent", f.permanent),
            ("faults.throttle_storm", f.throttle_storm),
            ("faults.hang", f.hang),
            ("faults.reset", f.reset),
            ("faults.goaway", f.goaway),
        ];
        let forced = f.forced.iter().enumerate().map(|(i, e)| (i, e.probability));
        let all = named
            .iter()
            .map(|&(n, p)| (n.to_owned(), p))
            .chain(forced.map(|(i, p)| (format!("faults.forced[{i}].probability"), p)));
        for (field, p) in all {
            if !(0.0..=1.0).contains(&p) {
                return Err(ConfigError::OutOfRange { field, expected: "within [0, 1]", value: p });
            }
        }
        Ok(())
    }
}

/// A small ready-made setup for demos and manual runs: one upgraded number
/// (1000 msg/s), two default numbers (80 msg/s) and one Business-app number
/// (20 msg/s), spread over two WABAs with Meta's default caps and latency.
pub fn example_config() -> SimConfig {
    let number =
        |id: &str, mps: u32, waba_id: &str| SimNumber { id: id.into(), mps, waba_id: waba_id.into() };
    SimConfig {
        numbers: vec![
            number("106540352242922", 1000, "102290129340398"),
            number("106540352242923", 80, "102290129340398"),
            number("106540352242924", 80, "102290129340399"),
            number("106540352242925", 20, "102290129340399"),
        ],
        wabas: vec![
            SimWaba {
                id: "102290129340398".into(),
                token: "sim-token-waba-a".into(),
                hourly_cap: 2 * 1_800_000,
            },
            SimWaba {
                id: "102290129340399".into(),
                token: "sim-token-waba-b".into(),
                hourly_cap: 2 * 1_800_000,
            },
        ],
        ..SimConfig::default()
    }
}

fn default_mps() -> u32 {
    80
}

fn default_hourly_cap() -> u64 {
    1_800_000
}

fn default_http_status() -> u16 {
    400
}

fn default_probability() -> f64 {
    1.0
}

fn saturating_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `Duration` as integer milliseconds, for `*_ms` fields.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(super::saturating_millis(*d))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
