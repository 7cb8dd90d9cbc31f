//! Parking: a durable delay line in Kafka for jobs that must wait long (a
//! `not_before` hours ahead, a WABA halted by a bad token), so that they
//! neither sit in the engine's memory nor hold their partition's commit
//! position. The engine decides what to park; this module keeps it and
//! gives it back when due.
//!
//! # Shape
//!
//! Tiered fixed-delay topics, as in retry-topic designs: each tier topic
//! `{prefix}.{label}` (default prefix `wabulk.parked`, e.g.
//! `wabulk.parked.1m`) has one fixed delay. Every record in a tier waits at
//! most that delay, so within a partition release times follow write order
//! and the head is always the next record due: a reader needs the head
//! only, never an index of everything parked.
//!
//! - [`Parker`] (write side): [`Parker::park`] writes the job (its original
//!   key and payload) to the largest tier whose delay fits the time left,
//!   with headers for the due time, this hop's release time (write time +
//!   the tier's delay) and the reason, and resolves once Kafka acknowledged
//!   it; only then may the engine release the job's input offset. A job
//!   already due goes straight back to the jobs topic.
//! - [`Mover`] (read side, one per engine instance, on its own thread): a
//!   consumer in its own group (`{jobs group}.parking`) on every tier topic.
//!   It pauses a partition until shortly (50 ms) before its head's release,
//!   so that the records behind the head are fetched by then; at the
//!   release it re-parks the record in the largest tier that fits the time
//!   still left, or, when
//!   less than the smallest tier is left, keeps it in memory until it is
//!   due and writes it to the jobs topic with its original key, so it lands
//!   on the partition whose owner sends for that number, and the engine
//!   reads it as a normal job (with the headers [`PARKED_DUE_HEADER`],
//!   [`PARKED_REASON_HEADER`] and [`PARKED_HOPS_HEADER`]).
//!
//! The partition a returned job lands on is chosen by the producer's
//! partitioner from the key. librdkafka's default (`consistent_random`)
//! differs from the Java client's (`murmur2_random`): the jobs' producers
//! and this crate's (`partitioner` in [`KafkaSettings::extra`]) must use the
//! same one, as they must for any two writers of the jobs topic.
//!
//! # Tiers and hops
//!
//! Default tiers ([`DEFAULT_TIERS`]): 1s, 3s, 10s, 30s, 1m, 3m, 10m, 30m,
//! 1h, 3h, 8h, 1d, 3d, 10d: 14 topics, each delay at most 3⅓ times the one
//! below. Choosing the largest tier that fits takes at most ⌈ratio⌉ − 1
//! hops per tier (2 or 3), and fewer topics with larger ratios cost more
//! hops (1s, 5s, 30s, 2m, 10m, 1h, 6h, 1d, 4d: 9 topics, 38 hops), more
//! topics with smaller ones cost partitions (powers of two up to 24 days:
//! 22 topics, 21 hops). Worst case, over every wait up to the horizon
//! ([`ParkingSettings::worst_case_hops`], exact for this greedy choice):
//! **25 tier writes for a 30-day wait**, 19 for a day, 14 for an hour, then
//! one write to the jobs topic. Each hop is one small write and one read;
//! a delay between a release and its move only shortens the time left at
//! the next choice, so it never adds hops beyond the bound.
//!
//! # Never early, and how late
//!
//! Times are unix milliseconds of the wall clock, due times rounded up.
//! Every hop's release is at or before the due time (a tier is chosen only
//! when its delay fits what is left), and a record goes to the jobs topic
//! only once the clock has reached its due time: **a job never comes back
//! before it is due.** When a hop ends with less than the smallest tier
//! left, the mover makes no further hop: it holds the record in memory (at
//! most one smallest-tier delay) and writes it at its due time. So on a
//! healthy cluster a job is back milliseconds after its due time: a poll
//! round (≤ 10 ms) and the write's acknowledgement (against the mock
//! cluster on a loaded two-core machine: written at most 7 ms after the
//! due time, read by a consumer at most 40 ms after). Later only when:
//!
//! - it was parked with less than the smallest tier left: it goes to the
//!   smallest tier released at its due time, behind records released at
//!   most one smallest-tier delay after their write, so it is back within
//!   the smallest tier (1 s by default) of its due time;
//! - a record ahead of it in its tier partition is released later than it
//!   (writers' clocks that disagree, a write held back by a broker outage):
//!   by that difference;
//! - more records come due at once than the mover can write, or
//!   `max_in_flight` records are held or unacknowledged: by the backlog;
//! - the head was not fetched by its release (a partition's fetch after a
//!   resume waits for the fetch in flight, up to 50 ms): by that;
//! - the mover is down or its partitions are being rebalanced: by that time.
//!
//! A release time later than one tier delay after the record was written
//! (its Kafka timestamp) or first seen is not waited for: the record is
//! looked at then (and re-parked or held if not due), so no release time,
//! however wrong, holds a partition longer than its tier's delay.
//!
//! # Delivery
//!
//! At least once. A tier partition's offset is committed only after the
//! write of its record was acknowledged: the committed position is the
//! contiguous watermark of acknowledged offsets (auto-commit off), and the
//! acknowledged offsets above it travel in the commit metadata, as the jobs
//! consumer's do, so the next owner skips them. A revocation or a shutdown
//! waits (up to `revoke_timeout`, or the shutdown's timeout) for the writes
//! in flight and the held records, then commits. After a crash the next
//! owner moves again what was written since the last commit (commits
//! follow the acknowledgements within 20 ms): **a job may then come back
//! twice** (on the jobs topic, or parked
//! twice, returning twice). None is lost, and none comes back early.
//!
//! # Memory
//!
//! The mover holds per assigned tier partition the records it polled and
//! could not move yet (normally one, at most 64), at most `max_in_flight`
//! records held or being written, and librdkafka's prefetch, bounded for
//! this consumer (1 MiB queued, 64 KiB per partition per fetch; a paused
//! partition's prefetch is dropped). A million parked records cost the
//! process no more than a few. The price: after each pause, what was
//! prefetched beyond the head is fetched again.
//!
//! # Records without readable headers
//!
//! A tier record whose due or release time is missing or unreadable
//! (written by something else) is written to the jobs topic at once, with
//! its key and payload and the header [`PARKED_UNREADABLE_HEADER`] naming
//! the tier: the engine dead-letters it if it is not a job (the dead
//! letter's format is the engine's, CONTRACT §4). Logged once per partition
//! and assignment, counted per tier ([`TierStats::unreadable`]); it never
//! holds the partition.
//!
//! # Topics
//!
//! [`ParkingSettings::topic_specs`] and [`create_parking_topics`]: one topic
//! per tier, with as many partitions as the jobs topic (the parallelism of
//! the movers), `cleanup.policy=delete` and `retention.ms` =
//! max(7 days, 4 × the tier's delay) ([`tier_retention`]): a record waits in
//! its tier at most one delay, so retention only matters when no mover
//! reads the tier, and then it is how long the movers may be down before
//! parked jobs are deleted. Compaction would be wrong: records share keys.
//! A tier taken out of the settings must keep being read until its topic
//! is empty (the mover reads only the configured tiers).
//!
//! # Statistics
//!
//! [`Parker::stats`] (parked per tier), [`Mover::stats`] (returned,
//! re-parked and unreadable per tier, write failures, held, in flight),
//! [`Mover::parked`] (records per tier in this mover's partitions: high
//! watermark − committed) and [`Mover::set_lateness_listener`] (each
//! return's lateness, for a histogram). The engine owns the metrics.

mod headers;
mod mover;
mod parker;
mod tiers;

use std::time::Duration;

pub use headers::{
    Returned, PARKED_DUE_HEADER, PARKED_HOPS_HEADER, PARKED_REASON_HEADER, PARKED_RELEASE_HEADER,
    PARKED_SINCE_HEADER, PARKED_UNREADABLE_HEADER,
};
pub use mover::{LatenessListener, Mover, MoverStats, TierLag, TierStats};
pub use parker::{Parker, ParkerStats};
pub(crate) use tiers::Tiers;

use crate::admin::{create_topic_specs, TopicSpec};
use crate::{KafkaError, KafkaSettings};

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3_600);
const DAY: Duration = Duration::from_secs(86_400);

/// The default tier delays (see the module docs for the choice).
pub const DEFAULT_TIERS: [Duration; 14] = [
    SECOND,
    Duration::from_secs(3),
    Duration::from_secs(10),
    Duration::from_secs(30),
    MINUTE,
    Duration::from_secs(3 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(30 * 60),
    HOUR,
    Duration::from_secs(3 * 3_600),
    Duration::from_secs(8 * 3_600),
    DAY,
    Duration::from_secs(3 * 86_400),
    Duration::from_secs(10 * 86_400),
];

/// The least retention of a tier topic.
const MIN_RETENTION: Duration = Duration::from_secs(7 * 86_400);

/// What parking is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkingSettings {
    /// Tier topics are `{topic_prefix}.{label}`, the label being the delay
    /// in its largest whole unit (`200ms`, `1s`, `90s`, `3m`, `8h`, `10d`).
    pub topic_prefix: String,
    /// The tier delays: whole milliseconds, strictly ascending.
    pub tiers: Vec<Duration>,
    /// The mover's consumer group; `None`: `{KafkaSettings::group_id}.parking`.
    pub group_id: Option<String>,
    /// At most this many records held by the mover until due or written and
    /// not yet acknowledged; beyond it the mover takes no more until some are
    /// acknowledged. At least 1.
    pub max_in_flight: usize,
}

impl Default for ParkingSettings {
    fn default() -> Self {
        ParkingSettings {
            topic_prefix: "wabulk.parked".into(),
            tiers: DEFAULT_TIERS.to_vec(),
            group_id: None,
            max_in_flight: 10_000,
        }
    }
}

impl ParkingSettings {
    pub(crate) fn validate(&self) -> Result<Tiers, KafkaError> {
        let tiers = Tiers::new(&self.tiers)?;
        let prefix_ok = !self.topic_prefix.is_empty()
            && self.topic_prefix.len() <= 200
            && self.topic_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !prefix_ok {
            return Err(KafkaError::Settings(format!(
                "parking topic prefix {:?}: 1 to 200 of a-z, A-Z, 0-9, '.', '_', '-'",
                self.topic_prefix
            )));
        }
        if self.max_in_flight == 0 {
            return Err(KafkaError::Settings("parking max_in_flight must be at least 1".into()));
        }
        Ok(tiers)
    }

    /// The tier topics' names, ascending by delay.
    pub fn tier_topics(&self) -> Vec<String> {
        self.tiers
            .iter()
            .map(|delay| {
                let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                format!("{}.{}", self.topic_prefix, tiers::label(ms))
            })
            .collect()
    }

    /// The mover's consumer group.
    pub fn group_id(&self, kafka: &KafkaSettings) -> String {
        self.group_id.clone().unwrap_or_else(|| format!("{}.parking", kafka.group_id))
    }

    /// The most tier writes a job parked for at most `horizon` takes before
    /// it is written back to the jobs topic.
    pub fn worst_case_hops(&self, horizon: Duration) -> Result<u32, KafkaError> {
        Ok(self.validate()?.worst_case_hops(horizon))
    }

    /// The tier topics to create, each with `partitions` partitions (the
    /// jobs topic's count), `cleanup.policy=delete` and [`tier_retention`].
    pub fn topic_specs(&self, partitions: i32) -> Result<Vec<TopicSpec>, KafkaError> {
        self.validate()?;
        Ok(self
            .tier_topics()
            .into_iter()
            .zip(&self.tiers)
            .map(|(name, &delay)| TopicSpec {
                name,
                partitions,
                config: vec![
                    ("cleanup.policy".into(), "delete".into()),
                    ("retention.ms".into(), tier_retention(delay).as_millis().to_string()),
                ],
            })
            .collect())
    }
}

/// A tier topic's retention: max(7 days, 4 × its delay).
pub fn tier_retention(delay: Duration) -> Duration {
    MIN_RETENTION.max(delay.saturating_mul(4))
}

/// Creates the tier topics ([`ParkingSettings::topic_specs`]) with the
/// client properties of `kafka`; existing topics are left as they are. Give
/// it the jobs topic's partition count
/// ([`topic_partition_counts`](crate::topic_partition_counts)).
pub async fn create_parking_topics(
    kafka: &KafkaSettings,
    parking: &ParkingSettings,
    partitions: i32,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let specs = parking.topic_specs(partitions)?;
    create_topic_specs(&kafka.brokers, &kafka.extra, &specs, timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_topics_names_and_retention() {
        let parking = ParkingSettings::default();
        let topics = parking.tier_topics();
        assert_eq!(topics.first().map(String::as_str), Some("wabulk.parked.1s"));
        assert_eq!(topics.last().map(String::as_str), Some("wabulk.parked.10d"));
        assert!(topics.contains(&"wabulk.parked.8h".to_owned()));
        let specs = parking.topic_specs(12).unwrap();
        assert_eq!(specs.len(), DEFAULT_TIERS.len());
        assert!(specs.iter().all(|s| s.partitions == 12));
        let retention = |spec: &TopicSpec| {
            spec.config.iter().find(|(k, _)| k == "retention.ms").map(|(_, v)| v.clone()).unwrap()
        };
        assert_eq!(retention(&specs[0]), "604800000", "7 days");
        assert_eq!(retention(&specs[13]), (40 * 86_400_000u64).to_string(), "4 × 10 days");
        assert!(specs.iter().all(|s| s.config.contains(&("cleanup.policy".into(), "delete".into()))));
        let kafka = KafkaSettings::default();
        assert_eq!(parking.group_id(&kafka), "wabulk.parking");
        assert_eq!(parking.worst_case_hops(30 * DAY).unwrap(), 25);
    }

    #[test]
    fn bad_settings_are_refused() {
        let bad_prefix = ParkingSettings { topic_prefix: "wabulk parked".into(), ..Default::default() };
        assert!(matches!(bad_prefix.validate(), Err(KafkaError::Settings(_))));
        let no_room = ParkingSettings { max_in_flight: 0, ..Default::default() };
        assert!(matches!(no_room.validate(), Err(KafkaError::Settings(_))));
        let unsorted = ParkingSettings { tiers: vec![MINUTE, SECOND], ..Default::default() };
        assert!(matches!(unsorted.topic_specs(1), Err(KafkaError::Settings(_))));
    }
}
