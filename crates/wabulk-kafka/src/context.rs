//! librdkafka's logs and global errors, forwarded to `tracing` (target
//! `librdkafka`) instead of the `log` crate, so they land in the engine's one
//! log stream; and the client configuration every client shares.

use std::collections::BTreeMap;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError as RdKafkaError;

/// The context of every producer and of the topic reader: logging only.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Logging;

impl ClientContext for Logging {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log(level, fac, message);
    }

    fn error(&self, error: RdKafkaError, reason: &str) {
        global_error(&error, reason);
    }
}

/// The topic reader assigns partitions itself: no rebalance to react to.
impl ConsumerContext for Logging {}

pub(crate) fn log(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{message}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", fac, "{message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
    }
}

/// Most global errors (a broker connection dropped, all brokers down) are
/// transient and librdkafka retries them itself, hence a warning, not an error.
pub(crate) fn global_error(error: &RdKafkaError, reason: &str) {
    tracing::warn!(target: "librdkafka", %error, reason, "Kafka client error");
}

/// A client configuration in three layers: this crate's `defaults`, then the
/// operator's `extra` properties (which may override any default), then the
/// `enforced` properties the delivery guarantee rests on (which nothing
/// overrides).
pub(crate) fn client_config(
    brokers: &str,
    defaults: &[(&str, &str)],
    extra: &BTreeMap<String, String>,
    enforced: &[(&str, &str)],
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (key, value) in defaults {
        config.set(*key, *value);
    }
    for (key, value) in extra {
        config.set(key, value);
    }
    for (key, value) in enforced {
        if extra.get(*key).is_some_and(|wanted| wanted != value) {
            tracing::warn!(
                key,
                value,
                "ignoring an extra Kafka property that would break at-least-once delivery"
            );
        }
        config.set(*key, *value);
    }
    config
}
