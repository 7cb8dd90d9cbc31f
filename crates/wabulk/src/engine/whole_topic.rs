//! Topics every instance reads whole, with no consumer group: Meta's account
//! events and campaign control. Both are compacted and keyed so that their
//! latest record per key is the state that counts; an instance reads them
//! from the start, so a restart knows the state before its first job.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use wabulk_kafka::{create_topic_specs, topic_partition_counts, TopicReader, TopicSpec};

use super::shutdown::Shutdown;
use crate::setup::EngineSetup;

/// How long start-up waits to have read what was written before it.
const CATCH_UP: Duration = Duration::from_secs(10);

/// Starts following `topic` (created compacted when missing) and waits, at
/// most [`CATCH_UP`], until what was written before the start is read. Its
/// records arrive, parsed, on the receiver. Without the topic the engine
/// runs on, and says what is not applied (`what`).
pub(super) async fn follow<T: DeserializeOwned + Send + 'static>(
    setup: &Arc<EngineSetup>,
    topic: &str,
    what: &'static str,
    shutdown: &Shutdown,
) -> mpsc::UnboundedReceiver<T> {
    let (records_tx, records) = mpsc::unbounded_channel();
    if let Err(error) = ensure_compacted(setup, topic).await {
        tracing::warn!(%topic, error = format!("{error:#}"), "{what} are not applied: their topic is missing");
        return records;
    }
    let (caught_up_tx, caught_up) = oneshot::channel();
    tokio::spawn(read(Arc::clone(setup), topic.to_owned(), what, records_tx, caught_up_tx, shutdown.clone()));
    if tokio::time::timeout(CATCH_UP, caught_up).await.is_err() {
        tracing::warn!(%topic, "the {what} written before the start were not all read in time; they apply as they are read");
    }
    records
}

/// Creates `topic` when missing: one partition, compacted.
async fn ensure_compacted(setup: &EngineSetup, topic: &str) -> anyhow::Result<()> {
    let kafka = &setup.kafka;
    let exists = {
        let (brokers, extra, topics) = (kafka.brokers.clone(), kafka.extra.clone(), vec![topic.to_owned()]);
        tokio::task::spawn_blocking(move || topic_partition_counts(&brokers, &extra, &topics, CATCH_UP))
            .await
            .context("topic metadata")??
            .contains_key(topic)
    };
    if !exists {
        let spec = TopicSpec {
            name: topic.to_owned(),
            partitions: 1,
            config: vec![("cleanup.policy".into(), "compact".into())],
        };
        create_topic_specs(&kafka.brokers, &kafka.extra, &[spec], Duration::from_secs(5))
            .await
            .with_context(|| format!("cannot create {topic}"))?;
    }
    Ok(())
}

/// Reads `topic` until `shutdown`, sending each record parsed to `records`;
/// `caught_up` is told once what was written before the start is read. An
/// unreadable record is logged and skipped.
async fn read<T: DeserializeOwned>(
    setup: Arc<EngineSetup>,
    topic: String,
    what: &'static str,
    records: mpsc::UnboundedSender<T>,
    caught_up: oneshot::Sender<()>,
    shutdown: Shutdown,
) {
    let reader = {
        let (brokers, extra, topic) = (setup.kafka.brokers.clone(), setup.kafka.extra.clone(), topic.clone());
        tokio::task::spawn_blocking(move || {
            let reader = TopicReader::connect_with(&brokers, &extra, &topic, CATCH_UP)?;
            let bounds = reader.bounds(CATCH_UP)?;
            Ok::<_, wabulk_kafka::KafkaError>((reader, bounds))
        })
        .await
    };
    let (reader, bounds) = match reader {
        Ok(Ok(found)) => found,
        Ok(Err(error)) => {
            tracing::warn!(%error, %topic, "cannot read the {what}; they are not applied");
            return;
        }
        Err(_) => return,
    };
    // A partition whose records compaction or retention all deleted has
    // nothing to wait for.
    let mut unread: std::collections::HashMap<i32, i64> =
        bounds.into_iter().filter(|(_, (first, end))| first < end).map(|(p, (_, end))| (p, end)).collect();
    let mut caught_up = Some(caught_up);
    loop {
        if unread.is_empty() {
            if let Some(told) = caught_up.take() {
                let _ = told.send(());
            }
        }
        let record = tokio::select! {
            () = shutdown.begun() => return,
            record = reader.next() => record,
        };
        let record = match record {
            Ok(record) => record,
            Err(error) => {
                tracing::warn!(%error, %topic, "reading the {what} failed; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if unread.get(&record.partition).is_some_and(|end| record.offset + 1 >= *end) {
            unread.remove(&record.partition);
        }
        if record.payload.is_empty() {
            continue; // A tombstone: compaction's deletion of a key.
        }
        match serde_json::from_slice::<T>(&record.payload) {
            Ok(parsed) => {
                if records.send(parsed).is_err() {
                    return;
                }
            }
            Err(error) => tracing::warn!(
                %topic,
                partition = record.partition,
                offset = record.offset,
                %error,
                "a record of the {what} that cannot be read is skipped"
            ),
        }
    }
}
