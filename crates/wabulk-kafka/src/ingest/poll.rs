//! The polling thread ("wabulk-kafka-poll"): polls the consumer in a loop,
//! 10 ms at a time, whatever the engine is doing, and sends the records to
//! [`Ingest::next`](super::Ingest::next).
//!
//! librdkafka runs the rebalance callbacks on the thread that polls, and a
//! revocation here blocks (bounded by `revoke_timeout`) until the engine has
//! released every lease of the revoked partitions; on a dedicated thread
//! that wait blocks no Tokio worker, and it cannot deadlock an engine whose
//! one task both awaits `Ingest::next` and releases leases. Because the
//! thread polls continuously, the consumer also stays in the group while
//! every partition is paused: heartbeats come from librdkafka's own
//! background thread, and `max.poll.interval.ms` is never exceeded since
//! poll is called every 10 ms (the flip side: a wedged engine is not
//! detected by that timeout; the engine's own health check has to).
//!
//! Records go from the thread to `Ingest::next` over an unbounded channel;
//! its length is bounded by the backpressure high-water mark, since records
//! still in the channel count as in memory.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::Message;
use tokio::sync::mpsc;

use super::lease::Ownership;
use super::rebalance::IngestContext;
use super::{Record, Shared};

/// How long one poll of the consumer blocks: the latency of noticing `stop`.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// What the polling thread sends to `next`.
pub(super) enum Polled {
    /// `ownership` is the record's partition's ownership when it was polled:
    /// `next` drops the record if it was revoked since, and leases the
    /// record under it otherwise.
    Record {
        ownership: Arc<Ownership>,
        record: Record,
        /// What it costs against the memory budget, as charged.
        bytes: usize,
    },
    Fatal(RdKafkaError),
}

impl Shared {
    /// A record of `partition` costing `bytes` was polled: its ownership,
    /// and the record counts as in memory (pausing at the high-water marks
    /// and at the partition's share). `None` when the partition is not
    /// owned: fetched before a revocation that has completed since.
    pub(super) fn buffer(&self, partition: i32, bytes: usize) -> Option<Arc<Ownership>> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let ownership = Arc::clone(&state.owned.get(&partition)?.ownership);
        state.buffered += 1;
        self.charge(state, partition, bytes);
        Some(ownership)
    }
}

/// Polls until told to stop, then closes the consumer.
pub(super) fn poll_loop(
    consumer: &BaseConsumer<IngestContext>,
    shared: &Shared,
    records: &mpsc::UnboundedSender<Polled>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        let polled = consumer.poll(POLL_INTERVAL);
        let Some(polled) = polled else {
            continue;
        };
        let message = match polled {
            Ok(message) => message,
            Err(error @ RdKafkaError::MessageConsumptionFatal(_)) => {
                tracing::error!(%error, "fatal consumer error");
                let _ = records.send(Polled::Fatal(error));
                break;
            }
            Err(error) => {
                tracing::warn!(%error, "consumer error; librdkafka retries");
                continue;
            }
        };
        let record = Record {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().unwrap_or_default().to_vec(),
            returned: crate::Returned::read(message.headers()),
        };
        let bytes = super::record_bytes(&record);
        let Some(ownership) = shared.buffer(record.partition, bytes) else {
            continue;
        };
        if records.send(Polled::Record { ownership, record, bytes }).is_err() {
            break;
        }
    }
    // Also set here for a fatal error, where no `Ingest::drop` set it.
    shared.lock().closing = true;
    match consumer.close_queue() {
        Ok(()) => {
            while !consumer.closed() {
                consumer.poll(POLL_INTERVAL);
            }
        }
        Err(error) => tracing::warn!(%error, "could not close the consumer cleanly"),
    }
}
