//! [`TopicReader`]: reads a whole topic from the beginning, with no consumer
//! group and no commits. For tests and tools that check what the engine
//! wrote (`wabulk.results`, `wabulk.dlq`); the engine itself never uses it.

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::context::{client_config, Logging};
use crate::{KafkaError, Record};

pub struct TopicReader {
    consumer: StreamConsumer<Logging>,
}

impl std::fmt::Debug for TopicReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicReader").finish_non_exhaustive()
    }
}

impl TopicReader {
    /// Assigns every partition of `topic` from its beginning. Blocks up to
    /// `timeout` for the topic's metadata; must be called within a Tokio
    /// runtime.
    pub fn connect(brokers: &str, topic: &str, timeout: Duration) -> Result<TopicReader, KafkaError> {
        let config = client_config(
            brokers,
            &[
                ("group.id", "wabulk-topic-reader"),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "false"),
            ],
            &Default::default(),
            &[],
        );
        let consumer: StreamConsumer<Logging> = config
            .create_with_context(Logging)
            .map_err(|source| KafkaError::Client { role: "topic reader", source })?;
        let metadata_error = |source| KafkaError::Metadata { topic: topic.to_owned(), source };
        let metadata = consumer.fetch_metadata(Some(topic), timeout).map_err(|e| metadata_error(Some(e)))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(metadata_error(None));
        }
        let mut tpl = TopicPartitionList::new();
        for partition in partitions {
            tpl.add_partition_offset(topic, partition, Offset::Beginning)
                .map_err(|e| metadata_error(Some(e)))?;
        }
        consumer.assign(&tpl).map_err(|e| metadata_error(Some(e)))?;
        Ok(TopicReader { consumer })
    }

    /// The next record of any partition; waits for one.
    pub async fn next(&self) -> Result<Record, KafkaError> {
        let message = self.consumer.recv().await.map_err(KafkaError::Consume)?;
        Ok(Record {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().unwrap_or_default().to_vec(),
            returned: crate::Returned::read(message.headers()),
        })
    }
}
