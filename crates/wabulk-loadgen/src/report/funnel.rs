//! [`Funnel`]: Meta's later statuses of a run's messages (CONTRACT §11), as
//! the runner read them back from the statuses topic.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The delivery funnel of a run: every (wamid, status) counted once, as
/// consumers of the statuses topic must dedupe (Meta reports some twice).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Funnel {
    /// Status records read, Meta's repeats included.
    pub records: u64,
    /// Records that repeated a (wamid, status) read before.
    pub repeated: u64,
    /// Distinct (wamid, status) by status: `sent`, `delivered`, `read`,
    /// `failed`, and any other Meta reported.
    pub by_status: BTreeMap<String, u64>,
    /// The errors of the distinct `failed` statuses by Meta's code; `none`
    /// for a failure that named none.
    pub failed_by_code: BTreeMap<String, u64>,
    /// Jobs whose result is `sent`.
    pub sent_jobs: u64,
    /// Of those, the jobs with a `sent` status.
    pub sent_jobs_with_sent_status: u64,
    /// Of those, the jobs with a final status (`delivered` or `failed`).
    pub sent_jobs_settled: u64,
    /// Statuses with a job id that no `sent` result has (Meta's own, or
    /// another run's).
    pub unmatched: u64,
    /// Statuses in the notifications the receiver answered 2xx, by the
    /// simulator's count.
    pub posted_by_simulator: u64,
    /// How long the run waited after its last result for the statuses still
    /// due, and at most.
    pub waited_s: f64,
    pub grace_s: f64,
}

impl Funnel {
    /// Distinct statuses of `kind`.
    pub fn count(&self, kind: &str) -> u64 {
        self.by_status.get(kind).copied().unwrap_or_default()
    }

    /// `delivered` per `sent` status; `None` before any.
    pub fn delivered_share(&self) -> Option<f64> {
        share(self.count("delivered"), self.count("sent"))
    }

    /// `read` per `delivered` status; `None` before any.
    pub fn read_share(&self) -> Option<f64> {
        share(self.count("read"), self.count("delivered"))
    }

    /// `failed` per `sent` status; `None` before any.
    pub fn failed_share(&self) -> Option<f64> {
        share(self.count("failed"), self.count("sent"))
    }

    /// One line: `sent 1200 → delivered 1150 (95.8%) → read 575 (50.0%);
    /// failed 23 (1.9%): 131026 × 23`.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "sent {} → delivered {} ({}) → read {} ({}); failed {} ({})",
            self.count("sent"),
            self.count("delivered"),
            percent(self.delivered_share()),
            self.count("read"),
            percent(self.read_share()),
            self.count("failed"),
            percent(self.failed_share()),
        );
        if !self.failed_by_code.is_empty() {
            let codes: Vec<String> =
                self.failed_by_code.iter().map(|(code, n)| format!("{code} × {n}")).collect();
            let _ = write!(line, ": {}", codes.join(", "));
        }
        line
    }
}

fn share(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// A share as `95.8%`, or `–` when there is none yet.
pub(crate) fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "–".to_owned(), |s| format!("{:.1}%", s * 100.0))
}
