//! What the Kafka edge is configured with (`[kafka]` in CONTRACT §10, plus the
//! backpressure tunables).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::KafkaError;

#[derive(Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The consumer group of every engine instance sharing the jobs topic.
    pub group_id: String,
    pub jobs_topic: String,
    pub results_topic: String,
    pub dlq_topic: String,
    /// High-water mark of unresolved jobs (read but not `done`): at or above
    /// it every assigned partition is paused. Raising it lets more jobs wait in
    /// memory (useful when many numbers are throttled at once) at the cost of
    /// memory and of more re-sent jobs after a crash; lowering it bounds memory
    /// but can starve fast numbers behind throttled ones. At least 1.
    pub max_in_memory: usize,
    /// Low-water mark: paused partitions resume once unresolved jobs fall
    /// below it. 1..=`max_in_memory`; a gap between the two marks avoids
    /// pausing and resuming on every job.
    pub resume_below: usize,
    /// The memory budget in bytes: each record held (polled and not yet
    /// handed out, or leased) costs its key and value plus
    /// [`RECORD_OVERHEAD`]. At or above it every partition is paused, and
    /// resumed below four fifths of it. Each partition also has a share of
    /// it (see `ingest::backpressure`), so that no partition holding slow
    /// jobs takes it all. At least 64 KiB.
    pub max_in_memory_bytes: usize,
    /// How long a revocation waits for the revoked partitions' jobs in flight
    /// to finish before giving the partitions up anyway (their unfinished jobs
    /// are then re-read by the next owner). Longer means fewer duplicates
    /// across a rebalance and a longer pause of the whole group.
    pub revoke_timeout: Duration,
    /// Extra librdkafka properties, applied to every client this crate
    /// creates (consumer properties on a producer are ignored by librdkafka
    /// with a warning, and vice versa). They cannot change
    /// `enable.auto.offset.store=false`, `enable.auto.commit=false` (the
    /// consumer commits itself, right after each `done`), or the producer's
    /// `enable.idempotence=true` and `acks=all`: the delivery guarantee
    /// rests on them.
    pub extra: BTreeMap<String, String>,
}

/// What a record held in memory costs besides its key and value: the parsed
/// job (its fields as owned strings), its place in the scheduler's queues
/// and its lease. An estimate on the generous side, so that the budget in
/// bytes bounds the engine's memory rather than only the payloads'.
pub const RECORD_OVERHEAD: usize = 1024;

/// 64 MiB: about 48,000 jobs of 400 bytes, as many as the count bound
/// (`max_in_memory`) allows by default.
pub const DEFAULT_MAX_IN_MEMORY_BYTES: usize = 64 << 20;

/// The smallest budget accepted: room for a few dozen jobs at the largest
/// default job size.
pub const MIN_IN_MEMORY_BYTES: usize = 64 << 10;

/// librdkafka properties that bound the engine consumer's prefetch, so that
/// its memory does not grow with the backlog. librdkafka's own defaults keep
/// up to 100,000 records per partition and 64 MiB in its local queue, and
/// fetch up to 50 MiB at a time, so a backlog is read into memory as fast as
/// the broker hands it over. The engine holds at most `max_in_memory` parsed
/// jobs besides; a few MiB prefetched keeps the sending side fed at tens of
/// thousands of jobs a second. Overridable with `[kafka.properties]`.
pub(crate) const CONSUMER_MEMORY_DEFAULTS: [(&str, &str); 5] = [
    // Per partition: librdkafka stops fetching a partition holding this many.
    ("queued.min.messages", "2000"),
    // The whole local queue (one queue for the high-level consumer).
    ("queued.max.messages.kbytes", "16384"),
    // One fetch request, and each partition's share of it.
    ("fetch.max.bytes", "4194304"),
    ("max.partition.fetch.bytes", "262144"),
    // With the queue at a bound, look again after 20 ms, not librdkafka's
    // 1 s: with the bounds above, 1 s starved the engine (a prefilled
    // backlog drained at a fifth of the rate, loadtest/RESULTS.md).
    ("fetch.queue.backoff.ms", "20"),
];

/// librdkafka properties that bound the results producer's local queue
/// (librdkafka's default allows 1 GiB and 100,000 records); the engine waits
/// for room when it is full. Overridable with `[kafka.properties]`.
pub(crate) const PRODUCER_MEMORY_DEFAULTS: [(&str, &str); 2] =
    [("queue.buffering.max.kbytes", "32768"), ("queue.buffering.max.messages", "50000")];

/// Whether a librdkafka property holds a secret, or may: its value is then
/// never shown (`check-config`, `Debug`). By name, generously: masking a
/// harmless value such as `ssl.key.location` costs nothing, showing
/// `sasl.password`, `ssl.key.password`, `ssl.key.pem`,
/// `ssl.keystore.password`, `sasl.oauthbearer.client.secret` or an
/// OAUTHBEARER config line would leak a credential.
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token", "credential", "jaas", "key", "sasl.username", "oauthbearer.config"]
        .iter()
        .any(|word| key.contains(word))
}

/// The properties with every secret value as `***`.
pub fn masked_properties(properties: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    properties
        .iter()
        .map(|(key, value)| {
            let shown = if is_secret_property(key) { "***".to_owned() } else { value.clone() };
            (key.clone(), shown)
        })
        .collect()
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("jobs_topic", &self.jobs_topic)
            .field("results_topic", &self.results_topic)
            .field("dlq_topic", &self.dlq_topic)
            .field("max_in_memory", &self.max_in_memory)
            .field("resume_below", &self.resume_below)
            .field("max_in_memory_bytes", &self.max_in_memory_bytes)
            .field("revoke_timeout", &self.revoke_timeout)
            .field("extra", &masked_properties(&self.extra))
            .finish()
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        let max_in_memory = 50_000;
        Self {
            brokers: "127.0.0.1:9092".into(),
            group_id: "wabulk".into(),
            jobs_topic: "wabulk.jobs".into(),
            results_topic: "wabulk.results".into(),
            dlq_topic: "wabulk.dlq".into(),
            max_in_memory,
            resume_below: max_in_memory / 5 * 4,
            max_in_memory_bytes: DEFAULT_MAX_IN_MEMORY_BYTES,
            revoke_timeout: Duration::from_secs(10),
            extra: BTreeMap::new(),
        }
    }
}

impl KafkaSettings {
    pub(crate) fn validate(&self) -> Result<(), KafkaError> {
        if self.max_in_memory == 0 {
            return Err(KafkaError::Settings("max_in_memory must be at least 1".into()));
        }
        if self.resume_below == 0 || self.resume_below > self.max_in_memory {
            return Err(KafkaError::Settings(format!(
                "resume_below must be in 1..={} (max_in_memory), not {}",
                self.max_in_memory, self.resume_below
            )));
        }
        if self.max_in_memory_bytes < MIN_IN_MEMORY_BYTES {
            return Err(KafkaError::Settings(format!(
                "max_in_memory_bytes must be at least {MIN_IN_MEMORY_BYTES}, not {}",
                self.max_in_memory_bytes
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_properties_are_masked_and_others_shown() {
        let properties: BTreeMap<String, String> = [
            ("sasl.password", "pw-1"),
            ("ssl.key.password", "pw-2"),
            ("ssl.keystore.password", "pw-3"),
            ("sasl.oauthbearer.client.secret", "pw-4"),
            ("sasl.oauthbearer.config", "principal=x extension_secret=pw-5"),
            ("ssl.key.pem", "-----BEGIN PRIVATE KEY-----pw-6"),
            ("sasl.username", "api-key"),
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("ssl.ca.location", "/etc/ssl/ca.pem"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let masked = masked_properties(&properties);
        let settings = KafkaSettings { extra: properties, ..KafkaSettings::default() };
        let debug = format!("{settings:?}");
        for n in 1..=6 {
            assert!(!debug.contains(&format!("pw-{n}")), "{debug}");
        }
        assert_eq!(masked["sasl.password"], "***");
        assert_eq!(masked["security.protocol"], "SASL_SSL");
        assert_eq!(masked["ssl.ca.location"], "/etc/ssl/ca.pem");
        assert!(debug.contains("SCRAM-SHA-512"), "{debug}");
    }
}
