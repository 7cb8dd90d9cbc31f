//! Producers: [`Output`] writes results and dead letters and resolves only
//! when Kafka acknowledged them (what [`crate::Lease::done`] waits for);
//! [`JobWriter`] writes jobs for load generators and tests.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::context::{client_config, Logging};
use crate::{KafkaError, KafkaSettings};

/// The results and DLQ producer.
///
/// Idempotent (`enable.idempotence=true`, `acks=all`, enforced): librdkafka's
/// retries after a lost acknowledgement neither duplicate nor reorder a
/// record, and an acknowledgement means every in-sync replica has it.
/// Delivery is retried until `message.timeout.ms` (librdkafka's default: 5
/// minutes; tunable through `extra`), so a broker outage shorter than that
/// delays results but loses none.
#[derive(Clone)]
pub struct Output {
    producer: FutureProducer<Logging>,
    results_topic: String,
    dlq_topic: String,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("results_topic", &self.results_topic)
            .field("dlq_topic", &self.dlq_topic)
            .finish_non_exhaustive()
    }
}

impl Output {
    /// Creates the producer (librdkafka's own thread serves it; no Tokio
    /// runtime needed until the futures are awaited).
    pub fn connect(settings: &KafkaSettings) -> Result<Output, KafkaError> {
        let producer = idempotent_config(settings)
            .create_with_context(Logging)
            .map_err(|source| KafkaError::Client { role: "results producer", source })?;
        Ok(Output {
            producer,
            results_topic: settings.results_topic.clone(),
            dlq_topic: settings.dlq_topic.clone(),
        })
    }

    /// Writes a result keyed by the job id; resolves when Kafka acknowledged
    /// it. Waits for room when librdkafka's local queue is full. Dropping the
    /// future does not withdraw the record.
    pub async fn result(&self, job_id: &str, json: Vec<u8>) -> Result<(), KafkaError> {
        send(&self.producer, &self.results_topic, Some(job_id.as_bytes()), &json, None).await?;
        Ok(())
    }

    /// Writes a dead letter keyed by the original key; resolves when Kafka
    /// acknowledged it.
    pub async fn dead_letter(&self, key: Option<&[u8]>, json: Vec<u8>) -> Result<(), KafkaError> {
        send(&self.producer, &self.dlq_topic, key, &json, None).await?;
        Ok(())
    }

    /// Waits until every record sent so far is acknowledged, or `timeout`.
    /// Blocks the calling thread (shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout).map_err(KafkaError::Flush)
    }
}

/// A plain producer for jobs: the load generator, tests, anyone feeding
/// `wabulk.jobs`. Idempotent by default so that a retried batch cannot reorder
/// one number's jobs. Cheap to clone; clones share one librdkafka producer.
#[derive(Clone)]
pub struct JobWriter {
    producer: FutureProducer<Logging>,
}

impl std::fmt::Debug for JobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobWriter").finish_non_exhaustive()
    }
}

impl JobWriter {
    /// `extra` as in [`KafkaSettings::extra`], here with nothing enforced.
    pub fn connect(brokers: &str, extra: &BTreeMap<String, String>) -> Result<JobWriter, KafkaError> {
        let config =
            client_config(brokers, &[("linger.ms", "5"), ("enable.idempotence", "true")], extra, &[]);
        let producer = config
            .create_with_context(Logging)
            .map_err(|source| KafkaError::Client { role: "job producer", source })?;
        Ok(JobWriter { producer })
    }

    /// Writes one record; resolves with its (partition, offset) once Kafka
    /// acknowledged it.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<(i32, i64), KafkaError> {
        send(&self.producer, topic, key, payload, None).await
    }

    /// Waits until every record sent so far is acknowledged, or `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout).map_err(KafkaError::Flush)
    }
}

/// The configuration of every producer whose acknowledgement something
/// waits for (results, dead letters, parked jobs): idempotent with
/// `acks=all`, enforced (see [`Output`]), and a bounded local queue.
pub(crate) fn idempotent_config(settings: &KafkaSettings) -> ClientConfig {
    client_config(
        &settings.brokers,
        // Batches records under load; adds at most 5 ms to an acknowledgement.
        &[&[("linger.ms", "5")][..], &crate::settings::PRODUCER_MEMORY_DEFAULTS[..]].concat(),
        &settings.extra,
        &[("enable.idempotence", "true"), ("acks", "all")],
    )
}

pub(crate) async fn send(
    producer: &FutureProducer<Logging>,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: Option<OwnedHeaders>,
) -> Result<(i32, i64), KafkaError> {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(payload);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(headers) = headers {
        record = record.headers(headers);
    }
    // `Never`: while the local queue is full, wait for room (backpressure)
    // rather than fail; the delivery itself is bounded by message.timeout.ms.
    match producer.send(record, Timeout::Never).await {
        Ok(delivery) => Ok((delivery.partition, delivery.offset)),
        Err((source, _message)) => Err(KafkaError::Delivery { topic: topic.to_owned(), source }),
    }
}
