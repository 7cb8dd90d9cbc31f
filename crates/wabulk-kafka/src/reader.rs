//! [`TopicReader`]: reads a whole topic from the beginning, with no consumer
//! group and no commits. For tests and tools that check what the engine
//! wrote (`wabulk.results`, `wabulk.dlq`), and for the engine's reading of
//! a topic every instance reads whole (Meta's account events).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::context::{client_config, Logging};
use crate::{KafkaError, Record};

pub struct TopicReader {
    consumer: StreamConsumer<Logging>,
    topic: String,
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
        Self::connect_with(brokers, &BTreeMap::new(), topic, timeout)
    }

    /// [`TopicReader::connect`] with the client properties `extra` (as in
    /// [`KafkaSettings::extra`](crate::KafkaSettings::extra): TLS, SASL).
    pub fn connect_with(
        brokers: &str,
        extra: &BTreeMap<String, String>,
        topic: &str,
        timeout: Duration,
    ) -> Result<TopicReader, KafkaError> {
        let config = client_config(
            brokers,
            &[
                ("group.id", "wabulk-topic-reader"),
                ("enable.auto.commit", "false"),
                ("enable.partition.eof", "false"),
            ],
            extra,
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
        Ok(TopicReader { consumer, topic: topic.to_owned() })
    }

    /// Each partition's end (the offset its next record will have): what
    /// was written before this call is read once every partition has been
    /// read up to it. Blocks for a round trip per partition.
    pub fn ends(&self, timeout: Duration) -> Result<HashMap<i32, i64>, KafkaError> {
        Ok(self.bounds(timeout)?.into_iter().map(|(partition, (_, end))| (partition, end)).collect())
    }

    /// Each partition's first offset still held and its end: a partition
    /// whose two are equal has nothing to read (empty, or every record
    /// deleted by retention), so waiting for its end would be waiting for
    /// ever. Blocks for a round trip per partition.
    pub fn bounds(&self, timeout: Duration) -> Result<HashMap<i32, (i64, i64)>, KafkaError> {
        let assigned = self.consumer.assignment().map_err(KafkaError::Consume)?;
        let mut bounds = HashMap::new();
        for element in assigned.elements() {
            let watermarks = self
                .consumer
                .fetch_watermarks(&self.topic, element.partition(), timeout)
                .map_err(|e| KafkaError::Metadata { topic: self.topic.clone(), source: Some(e) })?;
            bounds.insert(element.partition(), watermarks);
        }
        Ok(bounds)
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
