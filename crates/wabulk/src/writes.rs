//! Writing a job's result or dead letter until Kafka acknowledges it, and
//! what happens when Kafka refuses it for good.
//!
//! A job's offset is done only once what it turned into is in Kafka, so a
//! write is never dropped. A failure that may pass (a broker outage, a
//! timeout) is retried with backoff. A refusal ([`Refusal`]: too large,
//! unknown topic, not authorised, invalid) would fail the same way for ever:
//! a dead letter refused as too large is cut to its first bytes (CONTRACT
//! §4) and written again; any other refusal is logged once per topic and
//! reason, counted, and makes `/readyz` answer 503 while it lasts, and the
//! write is tried again every [`REFUSED_RETRY`] until an operator fixes the
//! topic or the credentials.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wabulk_kafka::{KafkaError, Refusal};
use wabulk_model::DlqRecord;
use wabulk_telemetry::{Health, Metrics};

/// First wait after a failure that may pass; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How often a refused write is tried again.
const REFUSED_RETRY: Duration = Duration::from_secs(10);
/// librdkafka's default `message.max.bytes`, used when the configuration
/// does not set it.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;
/// Room left in a message for the dead letter's other fields and Kafka's
/// record overhead.
const DEAD_LETTER_OVERHEAD: usize = 8 * 1024;
/// Payload sizes a dead letter is cut to, one after the other, while Kafka
/// still says it is too large (the broker's limit can be lower than the
/// producer's): the last keeps only the metadata and the digest.
const SMALLER_CUTS: [usize; 3] = [64 * 1024, 1024, 0];

/// Which topic a write goes to, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Topic {
    Results,
    Dlq,
    /// The parking tier topics (and the jobs topic, for a job due at once).
    Parked,
}

impl Topic {
    fn label(self) -> &'static str {
        match self {
            Topic::Results => "results",
            Topic::Dlq => "dlq",
            Topic::Parked => "parked",
        }
    }
}

/// The writes Kafka is refusing now, shared by every write task.
#[derive(Debug)]
pub(crate) struct Refusals {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// Writes waiting on each (topic, refusal): logged when it first
    /// appears, cleared (and logged) when the last of them goes through.
    waiting: Mutex<HashMap<(Topic, Refusal), usize>>,
    /// The producer's `message.max.bytes`.
    max_message_bytes: usize,
}

impl Refusals {
    pub(crate) fn new(
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        kafka_properties: &std::collections::BTreeMap<String, String>,
    ) -> Refusals {
        let max_message_bytes = kafka_properties
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        Refusals { metrics, health, waiting: Mutex::default(), max_message_bytes }
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<(Topic, Refusal), usize>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refused(&self, topic: Topic, refusal: Refusal, error: &KafkaError) {
        self.metrics.produce_refusals.with_label_values(&[topic.label(), refusal.label()]).inc();
        let mut waiting = self.waiting();
        let count = waiting.entry((topic, refusal)).or_default();
        *count += 1;
        if *count == 1 {
            tracing::error!(
                topic = topic.label(),
                reason = refusal.label(),
                error = %error,
                source = ?std::error::Error::source(error),
                "Kafka refuses the engine's writes; the jobs concerned wait (their offsets are not committed) \
                 and the write is tried again every {}s until the topic or the credentials are fixed",
                REFUSED_RETRY.as_secs()
            );
        }
        self.health.set_writes_refused(true);
    }

    fn accepted_after(&self, topic: Topic, refusal: Refusal) {
        let mut waiting = self.waiting();
        if let Some(count) = waiting.get_mut(&(topic, refusal)) {
            *count -= 1;
            if *count == 0 {
                waiting.remove(&(topic, refusal));
                tracing::info!(
                    topic = topic.label(),
                    reason = refusal.label(),
                    "Kafka takes the engine's writes again"
                );
            }
        }
        self.health.set_writes_refused(!waiting.is_empty());
    }

    /// Writes until Kafka acknowledges. With `cut_when_too_large`, a
    /// too-large refusal is handed back instead of retried.
    pub(crate) async fn write<F, Fut>(
        &self,
        topic: Topic,
        cut_when_too_large: bool,
        write: F,
    ) -> Result<(), TooLarge>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), KafkaError>>,
    {
        let mut backoff = FIRST_BACKOFF;
        let mut refused: Option<Refusal> = None;
        let outcome = loop {
            let error = match write().await {
                Ok(()) => break Ok(()),
                Err(error) => error,
            };
            match error.refusal() {
                Some(Refusal::TooLarge) if cut_when_too_large => break Err(TooLarge),
                Some(refusal) => {
                    if refused != Some(refusal) {
                        if let Some(previous) = refused.replace(refusal) {
                            self.accepted_after(topic, previous);
                        }
                        self.refused(topic, refusal, &error);
                    }
                    tokio::time::sleep(REFUSED_RETRY).await;
                }
                None => {
                    tracing::warn!(topic = topic.label(), error = %error, "Kafka did not acknowledge a write; writing it again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        if let Some(refusal) = refused {
            self.accepted_after(topic, refusal);
        }
        outcome
    }

    /// Writes a dead letter, whole if it fits a Kafka message, else cut to
    /// the largest first bytes that do, and smaller still while Kafka says
    /// it is too large.
    pub(crate) async fn dead_letter<F, Fut>(&self, build: impl Fn(usize) -> DlqRecord, write: F)
    where
        F: Fn(Vec<u8>) -> Fut,
        Fut: Future<Output = Result<(), KafkaError>>,
    {
        let first = self.max_message_bytes.saturating_sub(DEAD_LETTER_OVERHEAD);
        let mut json = fitted(&build, first, self.max_message_bytes);
        for cut in SMALLER_CUTS.into_iter().map(Some).chain([None]) {
            let attempt = std::mem::take(&mut json);
            let cut_when_too_large = cut.is_some();
            if self.write(Topic::Dlq, cut_when_too_large, || write(attempt.clone())).await.is_ok() {
                return;
            }
            let cut = cut.expect("the last attempt retries instead of handing back");
            self.metrics
                .produce_refusals
                .with_label_values(&[Topic::Dlq.label(), Refusal::TooLarge.label()])
                .inc();
            tracing::warn!(
                payload_bytes = cut,
                "a dead letter was refused as too large; writing it with its payload cut"
            );
            json = build(cut).to_json();
        }
    }
}

/// A too-large refusal handed back to the writer to cut its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLarge;

/// The dead letter with its payload cut to at most `cap` bytes, and less
/// while its JSON (escapes, base64) is over `max_bytes`.
fn fitted(build: &impl Fn(usize) -> DlqRecord, mut cap: usize, max_bytes: usize) -> Vec<u8> {
    loop {
        let json = build(cap).to_json();
        if json.len() <= max_bytes || cap == 0 {
            return json;
        }
        // Shrink in proportion to the overshoot, and by a tenth more so the
        // loop ends in a step or two however the payload escapes.
        cap = (cap as u128 * max_bytes as u128 / json.len() as u128 * 9 / 10) as usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(payload: &[u8], cap: usize) -> DlqRecord {
        DlqRecord::with_payload_cap("too large", "wabulk.jobs", 0, 1, None, payload, cap)
    }

    #[test]
    fn a_dead_letter_is_cut_to_fit_whatever_its_escaping() {
        let max = 10_000;
        // Control characters escape to six bytes each in JSON.
        let text = "\u{1}".repeat(50_000);
        let json = fitted(&|cap| record(text.as_bytes(), cap), max, max);
        assert!(json.len() <= max, "{}", json.len());
        let back: DlqRecord = serde_json::from_slice(&json).unwrap();
        assert!(back.payload_truncated);
        assert!(back.original_payload().unwrap().len() > max / 10, "not cut needlessly short");
        // Small enough: kept whole.
        let whole = fitted(&|cap| record(b"{\"to\":", cap), max, max);
        assert!(!serde_json::from_slice::<DlqRecord>(&whole).unwrap().payload_truncated);
    }

    fn refused(code: wabulk_kafka::RDKafkaErrorCode) -> KafkaError {
        KafkaError::Delivery {
            topic: "wabulk.results".into(),
            source: wabulk_kafka::RdKafkaError::MessageProduction(code),
        }
    }

    /// A write refused as not authorised: counted once, `/readyz` says so
    /// while it lasts, tried again until Kafka takes it, then ready again.
    #[tokio::test(start_paused = true)]
    async fn a_refused_write_is_loud_until_it_goes_through() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (metrics, health) = (Arc::new(Metrics::new()), Arc::new(Health::new()));
        health.set_consuming(true);
        health.set_sending(true);
        let refusals =
            Arc::new(Refusals::new(Arc::clone(&metrics), Arc::clone(&health), &Default::default()));
        let tries = Arc::new(AtomicUsize::new(0));
        let writing = {
            let (refusals, tries) = (Arc::clone(&refusals), Arc::clone(&tries));
            tokio::spawn(async move {
                refusals
                    .write(Topic::Results, false, || {
                        let n = tries.fetch_add(1, Ordering::Relaxed);
                        async move {
                            match n {
                                0..3 => {
                                    Err(refused(wabulk_kafka::RDKafkaErrorCode::TopicAuthorizationFailed))
                                }
                                _ => Ok(()),
                            }
                        }
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!health.is_ready(), "not ready while Kafka refuses");
        assert!(health.not_ready_reason().unwrap().contains("refuses"));
        assert_eq!(writing.await.unwrap(), Ok(()));
        assert_eq!(tries.load(Ordering::Relaxed), 4);
        assert!(health.is_ready(), "ready again once the write went through");
        let counted = metrics.produce_refusals.with_label_values(&["results", "not_authorised"]).get();
        assert_eq!(counted, 1, "counted once per write, not per try");
    }

    /// A transient failure is retried with backoff and leaves `/readyz` alone.
    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_is_retried_quietly() {
        let (metrics, health) = (Arc::new(Metrics::new()), Arc::new(Health::new()));
        let refusals = Refusals::new(metrics, Arc::clone(&health), &Default::default());
        let tries = std::sync::atomic::AtomicUsize::new(0);
        let outcome = refusals
            .write(Topic::Dlq, true, || {
                let n = tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async move {
                    if n < 2 {
                        Err(refused(wabulk_kafka::RDKafkaErrorCode::BrokerTransportFailure))
                    } else {
                        Ok(())
                    }
                }
            })
            .await;
        assert_eq!(outcome, Ok(()));
        assert!(health.not_ready_reason().is_none_or(|r| !r.contains("refuses")));
        // And a too-large refusal is handed back to be cut when asked.
        let outcome = refusals
            .write(Topic::Dlq, true, || async {
                Err(refused(wabulk_kafka::RDKafkaErrorCode::MessageSizeTooLarge))
            })
            .await;
        assert_eq!(outcome, Err(TooLarge));
    }

    #[test]
    fn refusal_labels_are_the_metric_labels() {
        let labels: Vec<&str> = Refusal::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels, wabulk_telemetry::PRODUCE_REFUSALS);
    }
}
