//! The delivery funnel of a run with the webhook receiver: the simulator
//! posts each accepted message's statuses to the engine's receiver, which
//! writes them to the statuses topic, and the run reads them back there, so
//! that the figures are the topic's, not the engine's own count.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::Deserialize;
use wabulk_graph_sim::SimConfig;
use wabulk_loadgen::{Check, Funnel};

/// How long a `sent` status may take to reach the statuses topic after its
/// message's acceptance, which comes before the job's result: the simulator
/// posts it at once and, when the receiver does not take a notification,
/// retries after at most 5 s; this leaves room for two retries.
const POSTING_GRACE: Duration = Duration::from_secs(12);

/// How long the run waits after its last result for the statuses still due:
/// every accepted message's `sent` at once and its final status (`delivered`
/// or `failed`) within the simulator's longest `delivered_after`, each
/// within [`POSTING_GRACE`] of being due. Reads (a fraction, later) are not
/// waited for.
pub(super) fn grace(sim: &SimConfig) -> Duration {
    POSTING_GRACE + sim.webhooks.delivered_after.max_sample()
}

/// One record of the statuses topic (CONTRACT §11), the fields the funnel needs.
#[derive(Deserialize)]
struct StatusRecord {
    job_id: Option<String>,
    wamid: String,
    status: String,
    #[serde(default)]
    errors: Option<serde_json::Value>,
}

/// What the statuses reader has counted so far.
#[derive(Debug, Default)]
pub(super) struct StatusTally {
    records: u64,
    unreadable: u64,
    /// `wamid` and status of each distinct status, to count Meta's repeats once.
    seen: HashSet<(String, String)>,
    by_status: BTreeMap<String, u64>,
    failed_by_code: BTreeMap<String, u64>,
    /// Job ids with a `sent` status, and with a final one.
    sent: HashSet<String>,
    settled: HashSet<String>,
    /// Distinct statuses by job id, to count those of jobs the run did not send.
    by_job: HashMap<String, u64>,
}

impl StatusTally {
    /// Counts one record of the statuses topic.
    pub(super) fn add(&mut self, payload: &[u8]) {
        self.records += 1;
        let Ok(record) = serde_json::from_slice::<StatusRecord>(payload) else {
            self.unreadable += 1;
            return;
        };
        if !self.seen.insert((record.wamid, record.status.clone())) {
            return;
        }
        *self.by_status.entry(record.status.clone()).or_default() += 1;
        if record.status == "failed" {
            let errors = record.errors.as_ref().and_then(serde_json::Value::as_array);
            let codes: Vec<String> = errors
                .into_iter()
                .flatten()
                .map(|e| match e.get("code") {
                    Some(serde_json::Value::String(code)) => code.clone(),
                    Some(code) => code.to_string(),
                    None => "none".to_owned(),
                })
                .collect();
            for code in if codes.is_empty() { vec!["none".to_owned()] } else { codes } {
                *self.failed_by_code.entry(code).or_default() += 1;
            }
        }
        if let Some(job) = record.job_id {
            match record.status.as_str() {
                "sent" => {
                    self.sent.insert(job.clone());
                }
                "delivered" | "failed" => {
                    self.settled.insert(job.clone());
                }
                _ => {}
            }
            *self.by_job.entry(job).or_default() += 1;
        }
    }

    /// Of `sent_jobs`, how many lack their `sent` status and how many a
    /// final one.
    pub(super) fn missing(&self, sent_jobs: &[&str]) -> (usize, usize) {
        let without = |set: &HashSet<String>| sent_jobs.iter().filter(|id| !set.contains(**id)).count();
        (without(&self.sent), without(&self.settled))
    }

    /// The funnel so far, for `sent_jobs` (the jobs whose result is `sent`).
    pub(super) fn funnel(&self, sent_jobs: &[&str]) -> Funnel {
        let (no_sent, unsettled) = self.missing(sent_jobs);
        let ours: HashSet<&str> = sent_jobs.iter().copied().collect();
        let unmatched =
            self.by_job.iter().filter(|(job, _)| !ours.contains(job.as_str())).map(|(_, n)| n).sum();
        Funnel {
            records: self.records,
            repeated: self.records - self.unreadable - self.seen.len() as u64,
            by_status: self.by_status.clone(),
            failed_by_code: self.failed_by_code.clone(),
            sent_jobs: sent_jobs.len() as u64,
            sent_jobs_with_sent_status: (sent_jobs.len() - no_sent) as u64,
            sent_jobs_settled: (sent_jobs.len() - unsettled) as u64,
            unmatched,
            ..Funnel::default()
        }
    }

    /// A line for the live progress: the funnel so far.
    pub(super) fn progress_line(&self) -> String {
        format!("           statuses: {}", self.summary())
    }

    /// The funnel so far in one line ([`Funnel::summary`]).
    pub(super) fn summary(&self) -> String {
        let funnel = Funnel {
            by_status: self.by_status.clone(),
            failed_by_code: self.failed_by_code.clone(),
            ..Funnel::default()
        };
        funnel.summary()
    }
}

/// Whether every job sent had its `sent` and its final status by the end of
/// the wait: both are due within the grace, so a missing one is a status
/// lost between the simulator, the receiver and the statuses topic.
pub(super) fn check(funnel: &Funnel) -> Check {
    Check {
        name: "statuses for every sent job".into(),
        passed: funnel.sent_jobs_with_sent_status == funnel.sent_jobs
            && funnel.sent_jobs_settled == funnel.sent_jobs,
        detail: format!(
            "of {} jobs sent, {} had their `sent` status and {} a final one (delivered or failed) on the \
             statuses topic within {:.0} s of the last result (after {:.1} s)",
            funnel.sent_jobs,
            funnel.sent_jobs_with_sent_status,
            funnel.sent_jobs_settled,
            funnel.grace_s,
            funnel.waited_s
        ),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record(job: &str, wamid: &str, status: &str) -> Vec<u8> {
        let mut value = json!({ "job_id": job, "wamid": wamid, "status": status, "phone_number_id": "1",
            "waba_id": "2", "recipient_id": "3", "timestamp": null, "errors": null, "conversation": null,
            "pricing": null, "received_at": "2026-11-21T10:00:03.210Z" });
        if status == "failed" {
            value["errors"] = json!([{ "code": 131026, "title": "Message undeliverable" }]);
        }
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn repeats_count_once_and_every_sent_job_is_accounted_for() {
        let mut tally = StatusTally::default();
        for (job, wamid, status) in [
            ("a", "w.a", "sent"),
            ("a", "w.a", "delivered"),
            ("a", "w.a", "read"),
            ("a", "w.a", "delivered"),
            ("b", "w.b", "sent"),
            ("b", "w.b", "failed"),
            ("c", "w.c", "sent"),
            ("elsewhere", "w.x", "sent"),
        ] {
            tally.add(&record(job, wamid, status));
        }
        tally.add(b"not a status");
        let sent_jobs = ["a", "b", "c"];
        assert_eq!(tally.missing(&sent_jobs), (0, 1), "c is not settled yet");
        let funnel = tally.funnel(&sent_jobs);
        assert_eq!((funnel.records, funnel.repeated, funnel.unmatched), (9, 1, 1));
        assert_eq!(funnel.count("sent"), 4);
        assert_eq!((funnel.count("delivered"), funnel.count("read"), funnel.count("failed")), (1, 1, 1));
        assert_eq!(funnel.failed_by_code, BTreeMap::from([("131026".to_owned(), 1)]));
        assert_eq!(
            (funnel.sent_jobs, funnel.sent_jobs_with_sent_status, funnel.sent_jobs_settled),
            (3, 3, 2)
        );
        assert!(!check(&funnel).passed);
        tally.add(&record("c", "w.c", "delivered"));
        assert!(check(&tally.funnel(&sent_jobs)).passed);
        assert!(tally.progress_line().contains("sent 4 → delivered 2 (50.0%) → read 1 (50.0%); failed 1"));
    }

    #[test]
    fn the_wait_is_bounded_by_the_simulator_s_longest_delivery() {
        let mut sim = SimConfig::default();
        sim.webhooks.delivered_after = wabulk_graph_sim::Latency::Fixed(Duration::from_secs(3));
        assert_eq!(grace(&sim), POSTING_GRACE + Duration::from_secs(3));
    }
}
