//! [`LoadgenError`]: why a load run stopped, named by what failed.

use wabulk_kafka::KafkaError;

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// The spec cannot be generated (found before anything is written).
    #[error("invalid load spec: {0}")]
    InvalidSpec(String),
    /// Kafka refused a record; `acknowledged` records were written before.
    #[error("Kafka refused a record after {acknowledged} were acknowledged")]
    Send {
        acknowledged: u64,
        #[source]
        source: KafkaError,
    },
    /// A send task panicked or was cancelled.
    #[error("a send task failed")]
    Task(#[source] tokio::task::JoinError),
}
