//! [`Parker`]: the write side. Parks a job in the tier that fits its wait and
//! resolves once Kafka acknowledged it, which is when the engine may let go
//! of the job's input offset.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rdkafka::producer::{FutureProducer, Producer};

use super::headers::Parked;
use super::tiers::{ceil_ms, floor_ms, Placement, Tiers};
use super::ParkingSettings;
use crate::context::Logging;
use crate::output::{idempotent_config, send};
use crate::{KafkaError, KafkaSettings};

/// Parks jobs. Idempotent with `acks=all`, like [`Output`](crate::Output)
/// (the same configuration): an acknowledgement means the job is safe in
/// its tier. Cheap to clone; clones share one producer and the counts.
#[derive(Clone)]
pub struct Parker {
    producer: FutureProducer<Logging>,
    tiers: Tiers,
    topics: Arc<[String]>,
    jobs_topic: String,
    counts: Arc<Counts>,
}

struct Counts {
    /// Jobs parked per tier.
    parked: Vec<AtomicU64>,
    /// Jobs already due, written straight to the jobs topic.
    due: AtomicU64,
}

/// What a [`Parker`] has written since it was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkerStats {
    /// Per tier, ascending: (delay, jobs parked in it).
    pub parked: Vec<(Duration, u64)>,
    /// Jobs that were due by the time they were parked: written to the jobs
    /// topic at once.
    pub written_back: u64,
}

impl std::fmt::Debug for Parker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parker").field("topics", &self.topics).finish_non_exhaustive()
    }
}

impl Parker {
    /// Creates the producer (librdkafka's own thread serves it).
    pub fn connect(kafka: &KafkaSettings, parking: &ParkingSettings) -> Result<Parker, KafkaError> {
        let tiers = parking.validate()?;
        let producer = idempotent_config(kafka)
            .create_with_context(Logging)
            .map_err(|source| KafkaError::Client { role: "parking producer", source })?;
        Ok(Parker {
            producer,
            topics: parking.tier_topics().into(),
            counts: Arc::new(Counts {
                parked: (0..tiers.len()).map(|_| AtomicU64::new(0)).collect(),
                due: AtomicU64::new(0),
            }),
            tiers,
            jobs_topic: kafka.jobs_topic.clone(),
        })
    }

    /// Parks a job until `due`: the largest tier whose delay is at most the
    /// time left, with the original key and payload and the parking headers
    /// (due time, this hop's release time, `reason`). With less than the
    /// smallest tier left, the smallest tier released at `due` itself; when
    /// `due` has passed, straight to the jobs topic. `since`: when the job
    /// was first parked, for a job parked again after coming back (now when
    /// `None`). Resolves when Kafka acknowledged the write; dropping the
    /// future does not withdraw it.
    pub async fn park(
        &self,
        key: Option<&[u8]>,
        payload: &[u8],
        due: SystemTime,
        reason: &str,
        since: Option<SystemTime>,
    ) -> Result<(), KafkaError> {
        let due_ms = ceil_ms(due);
        let since_ms = Some(floor_ms(since.unwrap_or_else(SystemTime::now)));
        let mut parked =
            Parked { due_ms, release_ms: 0, reason: reason.as_bytes().into(), hops: 0, since_ms };
        match self.tiers.park(floor_ms(SystemTime::now()), due_ms) {
            Placement::Tier { index, release_ms } => {
                parked.release_ms = release_ms;
                parked.hops = 1;
                send(&self.producer, &self.topics[index], key, payload, Some(parked.tier_headers())).await?;
                self.counts.parked[index].fetch_add(1, Ordering::Relaxed);
            }
            // `park` never holds.
            Placement::Jobs | Placement::Hold { .. } => {
                send(&self.producer, &self.jobs_topic, key, payload, Some(parked.jobs_headers())).await?;
                self.counts.due.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// The counts so far.
    pub fn stats(&self) -> ParkerStats {
        ParkerStats {
            parked: (0..self.tiers.len())
                .map(|i| (self.tiers.delay(i), self.counts.parked[i].load(Ordering::Relaxed)))
                .collect(),
            written_back: self.counts.due.load(Ordering::Relaxed),
        }
    }

    /// Waits until every job parked so far is acknowledged, or `timeout`.
    /// Blocks the calling thread (shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout).map_err(KafkaError::Flush)
    }
}
