//! Topic administration on any broker (tansu, Apache Kafka) for capacity runs
//! that start their own: [`create_topics`] (the embedded mock cluster has its
//! own [`EmbeddedKafka::create_topic`](crate::EmbeddedKafka::create_topic))
//! and [`topic_record_count`].

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use crate::context::{client_config, Logging};
use crate::KafkaError;

/// Creates each `(name, partitions)` topic with replication factor 1; a topic
/// that already exists is left as it is. Waits up to `timeout` for the broker.
pub async fn create_topics(
    brokers: &str,
    topics: &[(&str, i32)],
    timeout: Duration,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers, &[], &BTreeMap::new(), &[])
        .create()
        .map_err(|source| KafkaError::Client { role: "admin client", source })?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
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

fn topics_list(topics: &[(&str, i32)]) -> String {
    topics.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ")
}

/// How many records were ever appended to `topic`: the sum of its
/// partitions' high watermarks (records deleted by retention still count).
/// Capacity runs compare it, for the fresh topic they created, with what the
/// writer had acknowledged, to tell a broker that lost acknowledged records
/// from an engine that did. Blocks for a few round trips.
pub fn topic_record_count(brokers: &str, topic: &str, timeout: Duration) -> Result<i64, KafkaError> {
    let consumer: BaseConsumer<Logging> =
        client_config(brokers, &[("group.id", "wabulk-record-count")], &BTreeMap::new(), &[])
            .create_with_context(Logging)
            .map_err(|source| KafkaError::Client { role: "watermark reader", source })?;
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
