//! The errors this crate returns, named by what failed. Each keeps librdkafka's
//! own error as its source so the code (e.g. `BrokerTransportFailure`) reaches
//! the log.

use rdkafka::error::KafkaError as RdKafkaError;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The settings cannot work (e.g. a low-water mark above the high-water mark).
    #[error("invalid Kafka settings: {0}")]
    Settings(String),
    /// librdkafka refused the configuration or could not create the client.
    #[error("could not create the Kafka {role}")]
    Client {
        role: &'static str,
        #[source]
        source: RdKafkaError,
    },
    #[error("could not subscribe to topic {topic}")]
    Subscribe {
        topic: String,
        #[source]
        source: RdKafkaError,
    },
    /// A fatal consumer error: the consumer cannot go on and must be recreated.
    #[error("the Kafka consumer failed")]
    Consume(#[source] RdKafkaError),
    /// The consumer's polling thread has stopped (the consumer is closing).
    #[error("the Kafka consumer is closed")]
    Closed,
    #[error("Kafka did not acknowledge the record for topic {topic}")]
    Delivery {
        topic: String,
        #[source]
        source: RdKafkaError,
    },
    #[error("could not create topic {topic}")]
    CreateTopic {
        topic: String,
        #[source]
        source: RdKafkaError,
    },
    #[error("could not commit offsets")]
    Commit(#[source] RdKafkaError),
    #[error("could not flush the producer")]
    Flush(#[source] RdKafkaError),
    #[error("could not read metadata of topic {topic}")]
    Metadata {
        topic: String,
        #[source]
        source: Option<RdKafkaError>,
    },
    /// A thread this crate runs (the consumer's poller, the mock cluster's
    /// owner) could not be started.
    #[error("could not start a Kafka thread")]
    Thread(#[source] std::io::Error),
    /// The embedded mock cluster failed or has stopped.
    #[error("embedded Kafka: {what}")]
    Embedded {
        what: String,
        #[source]
        source: Option<RdKafkaError>,
    },
}
