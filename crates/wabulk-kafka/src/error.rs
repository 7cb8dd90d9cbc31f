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

/// Why Kafka refused a record for good: writing the same record again will
/// fail the same way until an operator changes something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Over the producer's or the broker's maximum message size.
    TooLarge,
    /// The topic does not exist (and is not created on demand).
    UnknownTopic,
    /// The credentials may not write to the topic or the cluster.
    NotAuthorised,
    /// The broker found the record itself invalid.
    Invalid,
}

impl Refusal {
    /// Every refusal, for metrics that exist at zero from the start.
    pub const ALL: [Refusal; 4] =
        [Refusal::TooLarge, Refusal::UnknownTopic, Refusal::NotAuthorised, Refusal::Invalid];

    /// A metric label and a word for the log.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::TooLarge => "too_large",
            Refusal::UnknownTopic => "unknown_topic",
            Refusal::NotAuthorised => "not_authorised",
            Refusal::Invalid => "invalid_record",
        }
    }
}

impl KafkaError {
    /// For a failed write, whether Kafka refused it for good (`Some`) or the
    /// failure may pass (`None`: a broker outage, a timeout, a full queue).
    pub fn refusal(&self) -> Option<Refusal> {
        use rdkafka::types::RDKafkaErrorCode as Code;
        let KafkaError::Delivery { source, .. } = self else { return None };
        match source.rdkafka_error_code()? {
            Code::MessageSizeTooLarge | Code::MessageBatchTooLarge | Code::InvalidMessageSize => {
                Some(Refusal::TooLarge)
            }
            Code::UnknownTopic | Code::UnknownTopicOrPartition | Code::InvalidTopic => {
                Some(Refusal::UnknownTopic)
            }
            Code::TopicAuthorizationFailed
            | Code::ClusterAuthorizationFailed
            | Code::SaslAuthenticationFailed
            | Code::Authentication => Some(Refusal::NotAuthorised),
            Code::InvalidMessage | Code::InvalidRecord => Some(Refusal::Invalid),
            _ => None,
        }
    }
}
