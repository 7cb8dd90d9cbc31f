//! The engine's configuration (CONTRACT §10): a TOML file, then
//! `WABULK_<SECTION>__<KEY>` environment overrides, then validation. Every
//! error names the key it is about; unknown keys are errors too, because a
//! misspelt limit silently left at its default is the worst kind of mistake.
//! [`setup::EngineSetup`] is that configuration resolved, with the
//! environment, into what each stage of the engine needs.
//!
//! A crate of its own because two packages read it: the engine (`wabulk`),
//! and the capacity-run lab (`wabulk-lab`), which writes the configuration of
//! the engine it starts as a child process and checks it first. The lab must
//! not depend on the engine, nor the engine's library link the lab's
//! simulator and plotting.

pub mod setup;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Prefix of override variables; `__` separates section and key.
const ENV_PREFIX: &str = "WABULK_";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub graph: GraphConfig,
    pub limits: LimitsConfig,
    pub phones: Vec<PhoneConfig>,
    pub wabas: Vec<WabaConfig>,
    pub http: HttpConfig,
    /// The status webhook receiver; runs inside `wabulk run` when present,
    /// or alone as `wabulk webhooks`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<WebhooksConfig>,
    /// Jobs that must wait long wait in Kafka, not in memory.
    pub parking: ParkingConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParkingConfig {
    /// Off: every job waits in memory, as long as it must.
    pub enabled: bool,
    /// The tier topics are `{topic_prefix}.{delay}` (`wabulk.parked.1m`, ...).
    pub topic_prefix: String,
    /// A job whose `not_before` is further away than this is parked: written
    /// to the tier topics, its input offset released, and read again when
    /// due. Lower keeps less in memory; higher writes less to Kafka.
    pub park_after_ms: u64,
    /// A `not_before` further away than this many days is `rejected`
    /// (`not_before_too_far`): a date that far is more likely a mistake than
    /// a plan, and the topics' retention must outlast the wait.
    pub max_wait_days: u32,
    /// How often the parked jobs of a WABA Meta stopped with no known end
    /// (banned) come back to look again: once it is lifted they go out
    /// within this. Lower reacts sooner; higher moves fewer records.
    pub held_recheck_ms: u64,
}

impl Default for ParkingConfig {
    fn default() -> Self {
        ParkingConfig {
            enabled: true,
            topic_prefix: "wabulk.parked".into(),
            park_after_ms: 60_000,
            max_wait_days: 30,
            held_recheck_ms: 600_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub brokers: String,
    pub group_id: String,
    pub jobs_topic: String,
    pub results_topic: String,
    pub dlq_topic: String,
    /// Meta's account events (throughput upgrades, bans, restrictions,
    /// messaging limits), written by the webhook receiver and read whole by
    /// every engine instance; compacted (CONTRACT §1).
    pub account_events_topic: String,
    /// Campaign control (CONTRACT §12): compacted, keyed by campaign,
    /// written by `wabulk campaign` and read whole by every instance.
    pub control_topic: String,
    /// Jobs larger than this go to the DLQ unread.
    pub max_job_bytes: usize,
    /// The memory budget for jobs read and not yet resolved, in bytes (each
    /// job costs its record plus about 1 KiB); see docs/reliability.md.
    pub max_in_memory_bytes: usize,
    /// Extra librdkafka properties for every client (e.g. `session.timeout.ms`,
    /// `security.protocol`). They cannot switch off what delivery rests on:
    /// manual offset storing, idempotence and `acks=all`.
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GraphConfig {
    /// `https://` uses TLS with ALPN h2; `http://` HTTP/2 cleartext (prior knowledge).
    pub base_url: String,
    /// Variable holding the token of WABAs without one of their own.
    pub token_env: String,
    /// A file holding that token instead (it wins over the variable): read
    /// again every few seconds, so a rotated token is used without a restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    pub request_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Cap of concurrent streams per connection; the server's own limit wins if lower.
    pub max_streams_per_connection: u32,
    pub max_connections: u32,
    /// Most requests for one job that reached the Graph API and failed with a
    /// retryable error (a server error, a timeout, ...) before the job fails
    /// with `retries_exhausted`.
    pub max_attempts: u32,
    /// Most retries for one job that spend no attempt (a limit answer, a
    /// connection that could not be made) before the job fails with
    /// `retries_exhausted`: generous, so that a throttle or an outage makes
    /// jobs wait rather than fail, yet no job is retried for ever.
    pub max_waits: u32,
    /// How often the token of a WABA halted for a refused token is checked
    /// (one `GET` of one of its numbers); sending resumes once it is
    /// accepted again.
    pub token_check_interval_ms: u64,
    /// Extra trusted CA certificates (PEM): a private CA, or a TLS-inspecting
    /// proxy's. The system's roots (or `SSL_CERT_FILE` / `SSL_CERT_DIR`) and
    /// the bundled Mozilla roots are always trusted too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// HTTP CONNECT proxy, `http://[user:password@]host:port`. Unset: the
    /// proxy variables (`HTTPS_PROXY` for an https base URL, `HTTP_PROXY`
    /// for http, then `ALL_PROXY`; lower case too). `NO_PROXY` is honoured
    /// either way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub default_mps: u32,
    pub pair_interval_s: f64,
    pub pair_burst: u32,
    /// Added to the pair interval so that arrival times, not only send times,
    /// respect it (docs/platform.md "Margins").
    pub pair_margin_ms: u64,
    /// Pace each number this many percent under its tier.
    pub mps_margin_percent: f64,
    pub waba_hourly_calls_per_number: u64,
    pub strict_phones: bool,
    /// A number's tier once Meta announces its throughput upgrade
    /// (`phone_number_quality_update`, `THROUGHPUT_UPGRADE`).
    pub upgraded_mps: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhoneConfig {
    pub id: String,
    pub waba_id: String,
    #[serde(default)]
    pub mps: Option<u32>,
    /// The number as Meta displays it (digits, country code first): Meta's
    /// throughput-upgrade webhook names a number only this way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_phone_number: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WabaConfig {
    pub id: String,
    #[serde(default)]
    pub token_env: Option<String>,
    /// A file holding the WABA's token (wins over `token_env`), read again
    /// every few seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    #[serde(default)]
    pub hourly_call_cap: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: String,
    /// Variable holding the bearer token of the admin endpoints
    /// (`/admin/...` on `listen`); unset or empty, they answer 404.
    pub admin_token_env: String,
    /// A file holding that token instead (wins over the variable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Its own listener, apart from `http.listen`.
    pub listen: String,
    pub path: String,
    /// Variable holding Meta's app secret (signatures are checked with it).
    pub app_secret_env: String,
    /// Variable holding the verify token given to Meta's dashboard.
    pub verify_token_env: String,
    /// Files holding the app secret and the verify token instead (each
    /// wins over its variable); read when the receiver starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_secret_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify_token_file: Option<String>,
    pub statuses_topic: String,
    pub inbound_topic: String,
    /// Larger notification bodies are answered 413.
    pub max_body_bytes: usize,
    /// A body must arrive whole within this, else 408.
    pub body_timeout_ms: u64,
    /// PEM certificate chain (the server's own first) and its private key:
    /// both set, the listener serves HTTPS; neither, plain HTTP (behind a
    /// TLS-terminating proxy). Read at start: a renewed pair takes a restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<String>,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9465".into(),
            path: "/webhooks/whatsapp".into(),
            app_secret_env: "WABULK_APP_SECRET".into(),
            verify_token_env: "WABULK_WEBHOOK_VERIFY_TOKEN".into(),
            app_secret_file: None,
            verify_token_file: None,
            statuses_topic: "wabulk.statuses".into(),
            inbound_topic: "wabulk.inbound".into(),
            max_body_bytes: 1 << 20,
            body_timeout_ms: 10_000,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl WebhooksConfig {
    /// The listener's certificate and key, read and matched; `None` for
    /// plain HTTP. Errors name the key of the file at fault.
    pub fn server_tls(&self) -> Result<Option<wabulk_webhooks::ServerTls>, ConfigError> {
        const CERT: &str = "webhooks.tls_cert_file";
        const KEY: &str = "webhooks.tls_key_file";
        let (cert, key) = match (&self.tls_cert_file, &self.tls_key_file) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            (Some(_), None) => return Err(invalid(KEY, format!("must be set too when {CERT} is"))),
            (None, Some(_)) => return Err(invalid(CERT, format!("must be set too when {KEY} is"))),
        };
        wabulk_webhooks::ServerTls::from_pem_files(Path::new(cert), Path::new(key)).map(Some).map_err(|e| {
            let at_fault = match e {
                wabulk_webhooks::TlsFilesError::Certificate { .. } => CERT.to_owned(),
                wabulk_webhooks::TlsFilesError::Key { .. } => KEY.to_owned(),
                wabulk_webhooks::TlsFilesError::Mismatch { .. } => format!("{CERT} / {KEY}"),
            };
            invalid(at_fault, e.to_string())
        })
    }
}

impl Default for KafkaConfig {
    /// Broker, group and topic names as the Kafka crate defaults them (CONTRACT §1).
    fn default() -> Self {
        let kafka = wabulk_kafka::KafkaSettings::default();
        Self {
            brokers: kafka.brokers,
            group_id: kafka.group_id,
            jobs_topic: kafka.jobs_topic,
            results_topic: kafka.results_topic,
            dlq_topic: kafka.dlq_topic,
            account_events_topic: "wabulk.account_events".into(),
            control_topic: "wabulk.control".into(),
            max_job_bytes: wabulk_model::DEFAULT_MAX_JOB_BYTES,
            max_in_memory_bytes: kafka.max_in_memory_bytes,
            properties: kafka.extra,
        }
    }
}

impl Default for GraphConfig {
    fn default() -> Self {
        Self {
            base_url: "https://graph.facebook.com/v21.0".into(),
            token_env: "WABULK_GRAPH_TOKEN".into(),
            token_file: None,
            request_timeout_ms: 10_000,
            connect_timeout_ms: 5_000,
            max_streams_per_connection: 100,
            max_connections: 64,
            max_attempts: 10,
            max_waits: 1000,
            token_check_interval_ms: 60_000,
            ca_file: None,
            proxy: None,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            default_mps: 80,
            pair_interval_s: 6.0,
            pair_burst: 45,
            pair_margin_ms: 50,
            mps_margin_percent: 1.0,
            waba_hourly_calls_per_number: 1_800_000,
            strict_phones: false,
            upgraded_mps: 1000,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
            admin_token_env: "WABULK_ADMIN_TOKEN".into(),
            admin_token_file: None,
        }
    }
}

/// A configuration that cannot be used; the text names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

impl Config {
    /// Reads `path`, applies the environment overrides from `env`, validates.
    pub fn load(path: &Path, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Config::from_toml(&text, &path.display().to_string(), env)
    }

    pub fn from_toml(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: origin.into(),
            message: e.to_string(),
        })?;
        apply_env_overrides(&mut table, env)?;
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            invalid(key, e.into_inner().message().to_string())
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        if limits.default_mps == 0 {
            return Err(invalid("limits.default_mps", "must be at least 1"));
        }
        if self.parking.park_after_ms < 2_000 {
            // Below a couple of seconds the round trip through Kafka costs
            // more than holding the job.
            return Err(invalid("parking.park_after_ms", "must be at least 2000"));
        }
        if self.parking.held_recheck_ms < 1_000 {
            return Err(invalid("parking.held_recheck_ms", "must be at least 1000"));
        }
        if !(1..=365).contains(&self.parking.max_wait_days) {
            return Err(invalid("parking.max_wait_days", "must be 1 to 365"));
        }
        if !(limits.pair_interval_s > 0.0 && limits.pair_interval_s <= 3600.0) {
            return Err(invalid("limits.pair_interval_s", "must be above 0 and at most 3600"));
        }
        if !(1..=62).contains(&limits.pair_burst) {
            return Err(invalid("limits.pair_burst", "must be 1 to 62"));
        }
        if !(0.0..50.0).contains(&limits.mps_margin_percent) {
            return Err(invalid("limits.mps_margin_percent", "must be 0 or more and under 50"));
        }
        if limits.upgraded_mps == 0 {
            return Err(invalid("limits.upgraded_mps", "must be at least 1"));
        }
        if limits.waba_hourly_calls_per_number == 0 {
            return Err(invalid("limits.waba_hourly_calls_per_number", "must be at least 1"));
        }
        let graph = &self.graph;
        if !(graph.base_url.starts_with("https://") || graph.base_url.starts_with("http://")) {
            return Err(invalid("graph.base_url", "must start with https:// or http://"));
        }
        if let Some(path) = &graph.ca_file {
            wabulk_sender::read_ca_file(Path::new(path))
                .map_err(|e| invalid("graph.ca_file", e.to_string()))?;
        }
        if let Some(proxy) = &graph.proxy {
            wabulk_sender::ProxyUrl::parse(proxy).map_err(|e| invalid("graph.proxy", e.to_string()))?;
        }
        for (key, value) in [
            ("graph.request_timeout_ms", graph.request_timeout_ms),
            ("graph.connect_timeout_ms", graph.connect_timeout_ms),
            ("graph.max_streams_per_connection", u64::from(graph.max_streams_per_connection)),
            ("graph.max_connections", u64::from(graph.max_connections)),
            ("graph.max_attempts", u64::from(graph.max_attempts)),
            ("graph.max_waits", u64::from(graph.max_waits)),
            ("graph.token_check_interval_ms", graph.token_check_interval_ms),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.kafka.max_in_memory_bytes < wabulk_kafka::MIN_IN_MEMORY_BYTES {
            return Err(invalid(
                "kafka.max_in_memory_bytes",
                format!("must be at least {}", wabulk_kafka::MIN_IN_MEMORY_BYTES),
            ));
        }
        if self.kafka.max_job_bytes == 0 {
            return Err(invalid("kafka.max_job_bytes", "must be at least 1"));
        }
        for (key, value) in [
            ("kafka.brokers", &self.kafka.brokers),
            ("kafka.group_id", &self.kafka.group_id),
            ("kafka.jobs_topic", &self.kafka.jobs_topic),
            ("kafka.results_topic", &self.kafka.results_topic),
            ("kafka.dlq_topic", &self.kafka.dlq_topic),
            ("kafka.account_events_topic", &self.kafka.account_events_topic),
            ("kafka.control_topic", &self.kafka.control_topic),
        ] {
            if value.trim().is_empty() {
                return Err(invalid(key, "must not be empty"));
            }
        }
        self.http.listen.parse::<SocketAddr>().map_err(|e| invalid("http.listen", e.to_string()))?;
        if let Some(webhooks) = &self.webhooks {
            webhooks.listen.parse::<SocketAddr>().map_err(|e| invalid("webhooks.listen", e.to_string()))?;
            if !webhooks.path.starts_with('/') {
                return Err(invalid("webhooks.path", "must start with /"));
            }
            for (key, value) in [
                ("webhooks.app_secret_env", &webhooks.app_secret_env),
                ("webhooks.verify_token_env", &webhooks.verify_token_env),
                ("webhooks.statuses_topic", &webhooks.statuses_topic),
                ("webhooks.inbound_topic", &webhooks.inbound_topic),
            ] {
                if value.trim().is_empty() {
                    return Err(invalid(key, "must not be empty"));
                }
            }
            if webhooks.max_body_bytes == 0 || webhooks.body_timeout_ms == 0 {
                return Err(invalid(
                    "webhooks.max_body_bytes / webhooks.body_timeout_ms",
                    "must be at least 1",
                ));
            }
            webhooks.server_tls()?;
        }
        let mut phones = BTreeMap::new();
        for (i, phone) in self.phones.iter().enumerate() {
            wabulk_model::NumericId::parse(&phone.id)
                .map_err(|e| invalid(format!("phones[{i}].id"), e.to_string()))?;
            wabulk_model::NumericId::parse(&phone.waba_id)
                .map_err(|e| invalid(format!("phones[{i}].waba_id"), e.to_string()))?;
            if phone.mps == Some(0) {
                return Err(invalid(format!("phones[{i}].mps"), "must be at least 1"));
            }
            if phones.insert(phone.id.as_str(), i).is_some() {
                return Err(invalid(format!("phones[{i}].id"), format!("{} is listed twice", phone.id)));
            }
            if let Some(display) = &phone.display_phone_number {
                if display_digits(display).is_none() {
                    return Err(invalid(
                        format!("phones[{i}].display_phone_number"),
                        "must be a phone number: digits, with an optional + and spaces or dashes",
                    ));
                }
            }
        }
        let mut wabas = BTreeMap::new();
        for (i, waba) in self.wabas.iter().enumerate() {
            wabulk_model::NumericId::parse(&waba.id)
                .map_err(|e| invalid(format!("wabas[{i}].id"), e.to_string()))?;
            if waba.hourly_call_cap == Some(0) {
                return Err(invalid(format!("wabas[{i}].hourly_call_cap"), "must be at least 1"));
            }
            if !self.phones.iter().any(|p| p.waba_id == waba.id) {
                return Err(invalid(format!("wabas[{i}].id"), "no [[phones]] entry names this WABA"));
            }
            if wabas.insert(waba.id.as_str(), i).is_some() {
                return Err(invalid(format!("wabas[{i}].id"), format!("{} is listed twice", waba.id)));
            }
        }
        Ok(())
    }

    /// The WABA's hourly cap: its own, else the per-number figure times its
    /// registered numbers (the `[[phones]]` naming it, at least 1).
    pub fn waba_cap(&self, waba_id: &str) -> u64 {
        let own = self.wabas.iter().find(|w| w.id == waba_id).and_then(|w| w.hourly_call_cap);
        own.unwrap_or_else(|| {
            let registered = self.phones.iter().filter(|p| p.waba_id == waba_id).count().max(1) as u64;
            self.limits.waba_hourly_calls_per_number * registered
        })
    }

    /// Where a WABA's token comes from: its own file or variable, else the
    /// default ones (`graph.token_file`, `graph.token_env`); a file wins
    /// over a variable at the same level.
    pub fn token_source(&self, waba_id: &str) -> TokenSource<'_> {
        let own = self.wabas.iter().find(|w| w.id == waba_id);
        if let Some(file) = own.and_then(|w| w.token_file.as_deref()) {
            return TokenSource::File(file);
        }
        if let Some(var) = own.and_then(|w| w.token_env.as_deref()) {
            return TokenSource::Env(var);
        }
        self.default_token_source()
    }

    /// Where the token of WABAs without one of their own comes from.
    pub fn default_token_source(&self) -> TokenSource<'_> {
        match &self.graph.token_file {
            Some(file) => TokenSource::File(file),
            None => TokenSource::Env(&self.graph.token_env),
        }
    }

    /// Why the running engine cannot take `new` as it is: the first key
    /// whose change needs a restart. What may change live: each number's
    /// tier (`phones[].mps`), each WABA's `hourly_call_cap`, and where tokens
    /// are read from (`token_file`, `token_env`); the numbers and WABAs
    /// themselves, topics, the group, listeners and the rest need a restart.
    pub fn refuse_live_change(&self, new: &Config) -> Result<(), ConfigError> {
        let restart =
            |key: String| Err(invalid(key, "cannot change while the engine runs; restart it to apply"));
        let (old_value, new_value) = (toml::Value::try_from(self), toml::Value::try_from(new));
        let (Ok(toml::Value::Table(old)), Ok(toml::Value::Table(fresh))) = (old_value, new_value) else {
            return restart("(the configuration)".into());
        };
        for section in old.keys().chain(fresh.keys()) {
            if matches!(section.as_str(), "phones" | "wabas") {
                continue;
            }
            // Tokens are read again from wherever the new configuration says.
            let skip: &[&str] = if section == "graph" { &["token_env", "token_file"] } else { &[] };
            if let Some(key) = changed_key(section, old.get(section), fresh.get(section), skip) {
                return restart(key);
            }
        }
        if self.phones.iter().map(|p| &p.id).ne(new.phones.iter().map(|p| &p.id)) {
            return restart("phones (the numbers, in order)".into());
        }
        for (i, (old, fresh)) in self.phones.iter().zip(&new.phones).enumerate() {
            if old.waba_id != fresh.waba_id {
                return restart(format!("phones[{i}].waba_id"));
            }
            if old.display_phone_number != fresh.display_phone_number {
                return restart(format!("phones[{i}].display_phone_number"));
            }
        }
        if self.wabas.iter().map(|w| &w.id).ne(new.wabas.iter().map(|w| &w.id)) {
            return restart("wabas (the WABAs, in order)".into());
        }
        Ok(())
    }

    /// Every WABA the configuration names (by its numbers or its own
    /// entry), once each, in that order, with its id as a number.
    pub fn waba_ids(&self) -> Vec<(&str, u64)> {
        let mut seen = std::collections::HashSet::new();
        let named =
            self.phones.iter().map(|p| p.waba_id.as_str()).chain(self.wabas.iter().map(|w| w.id.as_str()));
        named
            .filter_map(|id| {
                let number = wabulk_model::NumericId::parse(id).expect("validated").get();
                seen.insert(number).then_some((id, number))
            })
            .collect()
    }

    /// The variable that holds a WABA's token.
    pub fn token_env(&self, waba_id: &str) -> &str {
        self.wabas
            .iter()
            .find(|w| w.id == waba_id)
            .and_then(|w| w.token_env.as_deref())
            .unwrap_or(&self.graph.token_env)
    }

    /// The proxy the Graph API is reached through: `graph.proxy`, else the
    /// first proxy variable set for the base URL's scheme; with where it came
    /// from (the key or the variable), which every error names.
    pub fn proxy(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<(String, wabulk_sender::ProxyUrl)>, ConfigError> {
        if let Some(proxy) = &self.graph.proxy {
            let url =
                wabulk_sender::ProxyUrl::parse(proxy).map_err(|e| invalid("graph.proxy", e.to_string()))?;
            return Ok(Some(("graph.proxy".into(), url)));
        }
        let https = self.graph.base_url.starts_with("https://");
        let vars: &[&str] = if https {
            &["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
        } else {
            &["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        };
        for var in vars {
            if let Some(value) = env(var).filter(|v| !v.trim().is_empty()) {
                let url = wabulk_sender::ProxyUrl::parse(&value)
                    .map_err(|e| ConfigError::Env { var: (*var).into(), message: e.to_string() })?;
                return Ok(Some(((*var).into(), url)));
            }
        }
        Ok(None)
    }

    /// `NO_PROXY` (or `no_proxy`): hosts reached directly despite a proxy.
    pub fn no_proxy(env: &dyn Fn(&str) -> Option<String>) -> String {
        env("NO_PROXY").or_else(|| env("no_proxy")).unwrap_or_default()
    }

    /// The effective configuration as TOML, every secret masked: whether each
    /// token variable is set, never its value; secret-like
    /// `[kafka.properties]` values (passwords, keys, OAUTHBEARER secrets) and
    /// proxy credentials as `***`.
    pub fn render_masked(&self, env: &dyn Fn(&str) -> Option<String>) -> String {
        let mut shown = self.clone();
        shown.kafka.properties = wabulk_kafka::masked_properties(&self.kafka.properties);
        shown.graph.proxy = self.graph.proxy.as_deref().map(wabulk_sender::mask_credentials);
        let mut text = toml::to_string_pretty(&shown).expect("a config always serialises");
        let mut vars: Vec<&str> = vec![self.graph.token_env.as_str()];
        vars.extend(self.wabas.iter().filter_map(|w| w.token_env.as_deref()));
        if let Some(webhooks) = &self.webhooks {
            vars.extend([webhooks.app_secret_env.as_str(), webhooks.verify_token_env.as_str()]);
        }
        vars.push(self.http.admin_token_env.as_str());
        vars.sort_unstable();
        vars.dedup();
        text.push_str("\n# access tokens and webhook secrets (values never printed)\n");
        for var in vars {
            let state = if env(var).is_some_and(|v| !v.is_empty()) { "set" } else { "NOT SET" };
            text.push_str(&format!("# {var} = \"***\"  ({state})\n"));
        }
        match self.proxy(env) {
            Ok(Some((source, url))) if source != "graph.proxy" => {
                text.push_str(&format!("\n# proxy from {source}: {url}\n"));
            }
            Err(error) => text.push_str(&format!("\n# proxy: {error}\n")),
            _ => {}
        }
        let no_proxy = Config::no_proxy(env);
        if !no_proxy.is_empty() {
            text.push_str(&format!("# NO_PROXY = {no_proxy:?}\n"));
        }
        text
    }
}

/// Where a token is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource<'a> {
    Env(&'a str),
    File(&'a str),
}

/// The first key of `[section]` whose value differs, as `section.key`
/// (`skip`: keys compared elsewhere).
fn changed_key(
    section: &str,
    old: Option<&toml::Value>,
    new: Option<&toml::Value>,
    skip: &[&str],
) -> Option<String> {
    match (old, new) {
        (Some(toml::Value::Table(old)), Some(toml::Value::Table(new))) => old
            .keys()
            .chain(new.keys())
            .filter(|key| !skip.contains(&key.as_str()))
            .find(|key| old.get(*key) != new.get(*key))
            .map(|key| format!("{section}.{key}")),
        (old, new) if old == new => None,
        _ => Some(section.to_owned()),
    }
}

/// `WABULK_SECTION__KEY=value` sets `key` in `[section]`. Values are read as
/// TOML when they parse as a TOML value (numbers, booleans, quoted strings),
/// else as a bare string, so `WABULK_KAFKA__BROKERS=host:9092` works.
fn apply_env_overrides(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else { continue };
        let Some((section, key)) = rest.split_once("__") else { continue };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        if !matches!(section.as_str(), "kafka" | "graph" | "limits" | "http" | "webhooks" | "parking") {
            return Err(ConfigError::Env {
                var,
                message: format!(
                    "no section [{section}] takes overrides (kafka, graph, limits, http, webhooks, parking do)"
                ),
            });
        }
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(raw));
        let entry = table.entry(section.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(section_table) => {
                section_table.insert(key, value);
            }
            _ => {
                return Err(ConfigError::Env {
                    var,
                    message: format!("[{section}] is not a table in the file"),
                })
            }
        }
    }
    Ok(())
}

/// A displayed phone number as bare digits (`+1 555-078-3881` →
/// `15550783881`), or `None` when it is not one.
pub fn display_digits(number: &str) -> Option<String> {
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    let only_number =
        number.trim_start_matches('+').chars().all(|c| c.is_ascii_digit() || c == ' ' || c == '-');
    (only_number && (5..=20).contains(&digits.len())).then_some(digits)
}

#[cfg(test)]
mod tests;
