//! What the Kafka edge is configured with (`[kafka]` in CONTRACT §10, plus the
//! backpressure tunables).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::KafkaError;

#[derive(Debug, Clone, PartialEq, Eq)]
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
        Ok(())
    }
}
