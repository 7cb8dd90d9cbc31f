//! Topic administration on any broker (tansu, Apache Kafka) for capacity runs
//! that start their own and for the engine's setup: [`create_topics`],
//! [`create_topic_specs`] (with topic configuration: the parking tiers'),
//! [`topic_partition_count`] (the embedded mock cluster has its own
//! [`EmbeddedKafka::create_topic`](crate::EmbeddedKafka::create_topic)) and
//! [`topic_record_count`].

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use crate::context::{client_config, Logging};
use crate::KafkaError;

/// A topic to create: its name, partition count and topic configuration
/// (`retention.ms`, `cleanup.policy`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub config: Vec<(String, String)>,
}

/// Creates each `(name, partitions)` topic with replication factor 1; a topic
/// that already exists is left as it is. Waits up to `timeout` for the broker.
pub async fn create_topics(
    brokers: &str,
    topics: &[(&str, i32)],
    timeout: Duration,
) -> Result<(), KafkaError> {
    let specs: Vec<TopicSpec> = topics
        .iter()
        .map(|(name, partitions)| TopicSpec {
            name: (*name).to_owned(),
            partitions: *partitions,
            config: Vec::new(),
        })
        .collect();
    create_topic_specs(brokers, &BTreeMap::new(), &specs, timeout).await
}

/// [`create_topics`] with a configuration per topic (replication factor 1;
/// a topic that already exists is left as it is, configuration included),
/// and the client properties `extra` (as in
/// [`KafkaSettings::extra`](crate::KafkaSettings::extra): TLS, SASL).
pub async fn create_topic_specs(
    brokers: &str,
    extra: &BTreeMap<String, String>,
    topics: &[TopicSpec],
    timeout: Duration,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers, &[], extra, &[])
        .create()
        .map_err(|source| KafkaError::Client { role: "admin client", source })?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|spec| {
            spec.config.iter().fold(
                NewTopic::new(&spec.name, spec.partitions, TopicReplication::Fixed(1)),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(timeout)).request_timeout(Some(timeout));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|source| KafkaError::CreateTopic { topic: topics_list(topics), source })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::CreateTopic {
                    topic,
                    source: rdkafka::error::KafkaError::AdminOp(code),
                })
            }
        }
    }
    Ok(())
}

fn topics_list(topics: &[TopicSpec]) -> String {
    topics.iter().map(|spec| spec.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// How many partitions each of `topics` has, for those that exist (the
/// parking tiers are created with as many as the jobs topic); `extra` as in
/// [`create_topic_specs`]. One metadata request for the cluster's topics:
/// blocks for a round trip.
pub fn topic_partition_counts(
    brokers: &str,
    extra: &BTreeMap<String, String>,
    topics: &[String],
    timeout: Duration,
) -> Result<BTreeMap<String, i32>, KafkaError> {
    let metadata = watermark_reader(brokers, extra)?
        .fetch_metadata(None, timeout)
        .map_err(|source| KafkaError::Metadata { topic: topics.join(", "), source: Some(source) })?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| topics.iter().any(|name| name == t.name()))
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| (t.name().to_owned(), i32::try_from(t.partitions().len()).unwrap_or(i32::MAX)))
        .collect())
}

fn watermark_reader(
    brokers: &str,
    extra: &BTreeMap<String, String>,
) -> Result<BaseConsumer<Logging>, KafkaError> {
    client_config(brokers, &[("group.id", "wabulk-record-count")], extra, &[])
        .create_with_context(Logging)
        .map_err(|source| KafkaError::Client { role: "watermark reader", source })
}

/// How many records were ever appended to `topic`: the sum of its
/// partitions' high watermarks (records deleted by retention still count).
/// Capacity runs compare it, for the fresh topic they created, with what the
/// writer had acknowledged, to tell a broker that lost acknowledged records
/// from an engine that did. Blocks for a few round trips.
pub fn topic_record_count(brokers: &str, topic: &str, timeout: Duration) -> Result<i64, KafkaError> {
    let consumer = watermark_reader(brokers, &BTreeMap::new())?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|source| KafkaError::Metadata { topic: topic.into(), source: Some(source) })?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
        .ok_or_else(|| KafkaError::Metadata { topic: topic.into(), source: None })?;
    let mut records = 0;
    for partition in partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .map_err(|source| KafkaError::Metadata { topic: topic.into(), source: Some(source) })?;
        records += high;
    }
    Ok(records)
}
