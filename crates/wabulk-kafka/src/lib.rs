//! wabulk's Kafka edge: the jobs consumer with its offset watermark and
//! backpressure ([`Ingest`]), the results/DLQ producer ([`Output`]), a plain
//! producer for load generators and tests ([`JobWriter`]), a topic reader for
//! checks ([`TopicReader`]), topic creation ([`create_topics`]),
//! librdkafka's in-process mock cluster ([`EmbeddedKafka`]), and parking of
//! jobs that must wait long in tiered delay topics ([`Parker`], [`Mover`];
//! design in `parking`).
//!
//! The invariant this crate owns (CONTRACT §5): an input offset is committed
//! only after the job's result or dead letter was acknowledged by Kafka.
//! Every record [`Ingest::next`] hands out comes with a [`Lease`];
//! [`Lease::done`] is the only way the engine makes an offset committable
//! (dropping the lease leaves it unresolved), and the consumer commits
//! (within milliseconds of it) the contiguous watermark of its partition,
//! never an offset beyond one that is still unresolved. Offsets above the
//! watermark that are finished travel in the offset commit metadata, and
//! whoever reads the partition next skips them: a job whose result was
//! acknowledged is not sent again after a restart or a rebalance. To keep
//! them within the metadata's size cap, a partition whose finished offsets
//! above a slow job would soon not fit is not read further until they fit
//! again (its out-of-order window).
//!
//! Nothing here knows what a job is: records are bytes, results are bytes.

mod admin;
mod context;
mod embedded;
mod error;
mod features;
mod finished;
mod ingest;
mod lost;
mod output;
mod parking;
mod reader;
mod settings;
mod tracker;

pub use admin::{create_topic_specs, create_topics, topic_partition_counts, topic_record_count, TopicSpec};
pub use embedded::EmbeddedKafka;
pub use error::{KafkaError, Refusal};
pub use features::{client_build, ClientBuild};
pub use finished::{WINDOW_PAUSE_BYTES, WINDOW_RESUME_BYTES};
pub use ingest::{Assignment, CommitListener, Ingest, Lease, PausedCounts, Record, COMMIT_FLOOR};
pub use output::{JobWriter, Output};
pub use parking::{
    create_parking_topics, tier_retention, LatenessListener, Mover, MoverStats, Parker, ParkerStats,
    ParkingSettings, Returned, TierLag, TierStats, DEFAULT_TIERS, PARKED_DUE_HEADER, PARKED_HOPS_HEADER,
    PARKED_REASON_HEADER, PARKED_RELEASE_HEADER, PARKED_SINCE_HEADER, PARKED_UNREADABLE_HEADER,
};
pub use reader::TopicReader;
pub use settings::{
    is_secret_property, masked_properties, KafkaSettings, DEFAULT_MAX_IN_MEMORY_BYTES, MIN_IN_MEMORY_BYTES,
    RECORD_OVERHEAD,
};
pub use tracker::OffsetTracker;

/// The librdkafka error type and its codes, for callers that match on them.
pub use rdkafka::error::KafkaError as RdKafkaError;
pub use rdkafka::types::RDKafkaErrorCode;
