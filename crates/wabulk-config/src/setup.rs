//! Everything the engine needs, resolved from the configuration and the
//! environment before anything starts: which numbers and WABAs exist, their
//! limits and tokens, and the settings of each stage. Startup fails here,
//! with the key or variable named, rather than at the first job.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use wabulk_kafka::{KafkaSettings, ParkingSettings};
use wabulk_limits::PairRule;
use wabulk_model::{NumericId, ParseOptions};
use wabulk_scheduler::{SchedulerConfig, TokenGroup};
use wabulk_sender::{AccessToken, SenderConfig};

use crate::{Config, TokenSource};

/// A configured business number.
#[derive(Debug, Clone, Copy)]
pub struct Phone {
    pub waba: u64,
    pub mps: u32,
}

/// A WABA's cap and the group of WABAs sharing its token.
#[derive(Debug, Clone)]
pub struct Waba {
    pub hourly_cap: u64,
    pub token_group: TokenGroup,
}

/// Every access token, as read at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenSet {
    pub by_waba: HashMap<u64, AccessToken>,
    /// For WABAs that jobs name but the configuration does not; `None` when
    /// no default token is set, and such jobs are then rejected.
    pub default: Option<AccessToken>,
}

impl TokenSet {
    /// Reads every token from its variable or file (`Config::token_source`).
    /// Fails naming the WABA and the source when a configured WABA has none.
    pub fn read(config: &Config, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<TokenSet> {
        let read = |source: TokenSource<'_>| -> anyhow::Result<Option<AccessToken>> {
            let text = match source {
                TokenSource::Env(var) => env(var),
                TokenSource::File(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read the token file {path}"))?,
                ),
            };
            Ok(text.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).map(AccessToken::new))
        };
        let default = read(config.default_token_source())?;
        let mut by_waba = HashMap::new();
        for (waba_id, id) in config.waba_ids() {
            let source = config.token_source(waba_id);
            match read(source)? {
                Some(token) => by_waba.insert(id, token),
                None => match source {
                    TokenSource::Env(var) => {
                        bail!("WABA {waba_id} has no access token: environment variable {var} is not set")
                    }
                    TokenSource::File(path) => {
                        bail!("WABA {waba_id} has no access token: the file {path} is empty")
                    }
                },
            };
        }
        Ok(TokenSet { by_waba, default })
    }
}

/// The tokens the engine sends with, replaced while it runs when a token
/// file changes or the configuration is reloaded.
#[derive(Debug, Default)]
pub struct Tokens {
    current: std::sync::RwLock<TokenSet>,
    /// Grows with every replacement that changed a token.
    version: std::sync::atomic::AtomicU64,
}

impl Tokens {
    pub fn new(set: TokenSet) -> Tokens {
        Tokens { current: std::sync::RwLock::new(set), version: Default::default() }
    }

    /// The token a WABA sends with: its own, else the default one.
    pub fn get(&self, waba: u64) -> Option<AccessToken> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        current.by_waba.get(&waba).or(current.default.as_ref()).cloned()
    }

    /// Makes `set` current; returns the WABAs whose token changed (and
    /// whether the default one did).
    pub fn replace(&self, set: TokenSet) -> (Vec<u64>, bool) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let changed: Vec<u64> = set
            .by_waba
            .iter()
            .filter(|(id, token)| current.by_waba.get(id) != Some(token))
            .map(|(&id, _)| id)
            .collect();
        let default_changed = current.default != set.default;
        if !changed.is_empty() || default_changed {
            *current = set;
            self.version.fetch_add(1, std::sync::atomic::Ordering::Release);
        }
        (changed, default_changed)
    }

    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Parking: jobs that must wait long wait in Kafka (`wabulk-kafka`'s
/// `parking`).
#[derive(Debug, Clone)]
pub struct Parking {
    pub settings: ParkingSettings,
    /// A job whose `not_before` is further away than this is parked.
    pub park_after: Duration,
    /// How often parked jobs of a WABA Meta stopped with no end come back.
    pub held_recheck: Duration,
}

/// How many retries a job may have: attempts that reached the Graph API
/// (`RetryReason::spends_attempt`), and waits that did not.
#[derive(Debug, Clone, Copy)]
pub struct RetryBudget {
    pub max_attempts: u32,
    pub max_waits: u32,
}

#[derive(Debug)]
pub struct EngineSetup {
    pub kafka: KafkaSettings,
    pub sender: SenderConfig,
    pub scheduler: SchedulerConfig,
    pub retries: RetryBudget,
    /// `None`: parking is off and every job waits in memory.
    pub parking: Option<Parking>,
    /// A `not_before` further ahead than this is rejected.
    pub max_wait: Duration,
    pub parse: ParseOptions,
    pub phones: HashMap<u64, Phone>,
    pub wabas: HashMap<u64, Waba>,
    /// The access tokens, replaceable while running.
    pub tokens: std::sync::Arc<Tokens>,
    pub default_mps: u32,
    /// Cap of a WABA the configuration does not list (one registered number).
    pub default_waba_cap: u64,
    pub strict_phones: bool,
    /// Shard tasks of the scheduler: one per core is enough, since a shard
    /// never waits on I/O.
    pub shards: usize,
    pub http_listen: SocketAddr,
    /// How long a graceful stop waits for requests in flight.
    pub drain_timeout: Duration,
    /// How often a halted WABA's token is checked.
    pub token_check_interval: Duration,
    /// Where Meta's account events are read from.
    pub account_events_topic: String,
    /// Where campaign control records are read from.
    pub control_topic: String,
    /// A number's tier after Meta's throughput upgrade.
    pub upgraded_mps: u32,
    /// Configured numbers by their displayed number (digits only).
    pub displayed: HashMap<String, u64>,
}

/// Token group of WABAs using the default token.
const DEFAULT_TOKEN_GROUP: TokenGroup = 0;

impl EngineSetup {
    /// `env` looks a variable up (tests pass their own).
    pub fn from_config(config: &Config, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let tokens = TokenSet::read(config, env)?;
        let mut phones = HashMap::new();
        let mut displayed = HashMap::new();
        for phone in &config.phones {
            let id = NumericId::parse(&phone.id).expect("validated").get();
            let waba = NumericId::parse(&phone.waba_id).expect("validated").get();
            phones.insert(id, Phone { waba, mps: phone.mps.unwrap_or(config.limits.default_mps) });
            if let Some(digits) = phone.display_phone_number.as_deref().and_then(crate::display_digits) {
                displayed.insert(digits, id);
            }
        }
        let mut wabas = HashMap::new();
        let mut groups: HashMap<String, TokenGroup> = HashMap::new();
        for (waba_id, id) in config.waba_ids() {
            let source = config.token_source(waba_id);
            let next = groups.len() as TokenGroup + 1;
            let token_group = if source == config.default_token_source() {
                DEFAULT_TOKEN_GROUP
            } else {
                *groups.entry(format!("{source:?}")).or_insert(next)
            };
            wabas.insert(id, Waba { hourly_cap: config.waba_cap(waba_id), token_group });
        }
        let limits = &config.limits;
        let pair_rule = PairRule {
            interval: Duration::from_secs_f64(limits.pair_interval_s),
            burst: limits.pair_burst,
            margin: Duration::from_millis(limits.pair_margin_ms),
        };
        pair_rule.validate().context("limits.pair_interval_s / limits.pair_burst / limits.pair_margin_ms")?;
        let graph = &config.graph;
        let proxy = config.proxy(env)?.map(|(_, url)| url);
        Ok(Self {
            kafka: KafkaSettings {
                brokers: config.kafka.brokers.clone(),
                group_id: config.kafka.group_id.clone(),
                jobs_topic: config.kafka.jobs_topic.clone(),
                results_topic: config.kafka.results_topic.clone(),
                dlq_topic: config.kafka.dlq_topic.clone(),
                max_in_memory_bytes: config.kafka.max_in_memory_bytes,
                extra: config.kafka.properties.clone(),
                ..KafkaSettings::default()
            },
            sender: SenderConfig {
                base_url: graph.base_url.clone(),
                request_timeout: Duration::from_millis(graph.request_timeout_ms),
                connect_timeout: Duration::from_millis(graph.connect_timeout_ms),
                max_streams_per_connection: graph.max_streams_per_connection,
                max_connections: graph.max_connections,
                ca_file: graph.ca_file.as_ref().map(Into::into),
                proxy,
                no_proxy: Config::no_proxy(env),
                ..SenderConfig::default()
            },
            scheduler: SchedulerConfig {
                pair_rule,
                mps_margin_percent: limits.mps_margin_percent,
                ..SchedulerConfig::default()
            },
            retries: RetryBudget { max_attempts: graph.max_attempts, max_waits: graph.max_waits },
            parking: config.parking.enabled.then(|| Parking {
                settings: ParkingSettings {
                    topic_prefix: config.parking.topic_prefix.clone(),
                    ..ParkingSettings::default()
                },
                park_after: Duration::from_millis(config.parking.park_after_ms),
                held_recheck: Duration::from_millis(config.parking.held_recheck_ms),
            }),
            max_wait: Duration::from_secs(u64::from(config.parking.max_wait_days) * 86_400),
            parse: ParseOptions { max_bytes: config.kafka.max_job_bytes },
            phones,
            wabas,
            tokens: std::sync::Arc::new(Tokens::new(tokens)),
            default_mps: limits.default_mps,
            default_waba_cap: limits.waba_hourly_calls_per_number,
            strict_phones: limits.strict_phones,
            shards: std::thread::available_parallelism().map_or(2, |n| n.get()),
            http_listen: config.http.listen.parse().expect("validated"),
            drain_timeout: Duration::from_millis(graph.request_timeout_ms) + Duration::from_secs(5),
            token_check_interval: Duration::from_millis(graph.token_check_interval_ms),
            account_events_topic: config.kafka.account_events_topic.clone(),
            control_topic: config.kafka.control_topic.clone(),
            upgraded_mps: limits.upgraded_mps,
            displayed,
        })
    }
}
