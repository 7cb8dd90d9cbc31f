//! [`create_topics`]: topic creation on any broker (tansu, Apache Kafka), for
//! capacity runs that start their own broker. The embedded mock cluster has its
//! own [`EmbeddedKafka::create_topic`](crate::EmbeddedKafka::create_topic).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::context::client_config;
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
