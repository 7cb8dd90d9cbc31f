//! [`CapacityReport`]: what a capacity run (`wabulk loadgen run
//! loadtest/scenarios/NAME.toml`) measured, and its rendering: `report.json`
//! (the data, to compare runs), `report.md` (the summary a person reads) and
//! three SVG charts (throughput per number against its tier, latency
//! histograms, errors over time). The runner fills the report; this module
//! only computes distributions and renders, it does no measuring.

mod charts;
mod distribution;
mod funnel;
mod markdown;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use charts::ChartError;
pub use distribution::{Bucket, Distribution, LATENCY_BOUNDS_S};
pub use funnel::Funnel;

/// Everything a capacity run measured, with the checks it was judged by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacityReport {
    /// The scenario's name, e.g. `tiers`.
    pub scenario: String,
    /// One paragraph from the scenario file: what the run is meant to show.
    pub description: String,
    /// The exact command line that produced the report, to rerun it.
    pub command: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub machine: Machine,
    /// e.g. "librdkafka mock cluster (in process)".
    pub broker: String,
    /// The simulator's latency model, e.g. "Meta-like lognormal × 1.0 (p50 0.5 s)".
    pub latency: String,
    /// The simulator's faults, e.g. "none" or "20% transient, 1% hangs".
    pub faults: String,
    /// The whole run, from start to the last result read.
    pub elapsed_s: f64,
    /// Records written to the jobs topic, malformed ones included.
    pub written: u64,
    pub malformed: u64,
    /// Distinct job ids with a result.
    pub results: u64,
    /// Results beyond the first for a job id (at-least-once redeliveries).
    pub duplicate_results: u64,
    pub dead_letters: u64,
    /// Results by status: "sent", "failed", "expired", "rejected".
    pub by_status: BTreeMap<String, u64>,
    pub sim: SimSummary,
    pub numbers: Vec<NumberReport>,
    /// `received_at` → `finished_at` of each result, in seconds.
    pub job_latency: Distribution,
    /// One Graph API request, as the engine measured it, in seconds.
    pub send_latency: Distribution,
    /// One sample per interval (about a second), in time order.
    pub timeline: Vec<Sample>,
    pub checks: Vec<Check>,
    /// What the engine process cost; absent from reports of runs that had
    /// the engine in the runner's own process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineCost>,
    /// Meta's statuses of the messages sent, read back from the statuses
    /// topic; absent from runs without the webhook receiver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub funnel: Option<Funnel>,
}

/// The engine process's own cost over a run, apart from the broker,
/// simulator and load writer beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineCost {
    /// User plus system CPU time from its start to just before it was
    /// stopped (`process_cpu_seconds_total`).
    pub cpu_s: f64,
    /// `cpu_s` per record written, in microseconds.
    pub cpu_us_per_job: f64,
    /// Its peak resident memory (`VmHWM`), read just before it was stopped.
    pub peak_rss_bytes: u64,
}

impl EngineCost {
    pub fn peak_rss_mib(&self) -> f64 {
        self.peak_rss_bytes as f64 / (1024.0 * 1024.0)
    }
}

/// The machine a run was measured on: capacity numbers mean little without it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPUs this process may use (cgroup quotas included); 0 when unknown.
    pub cpus: usize,
    /// "unknown" when /proc/cpuinfo does not say.
    pub cpu_model: String,
    /// 0 when /proc/meminfo does not say.
    pub memory_gib: f64,
}

/// The simulator's own accounting (`/__sim/stats`): the referee's view.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SimSummary {
    /// Every HTTP request it answered, whatever the answer.
    pub requests: u64,
    pub accepted: u64,
    /// Acceptances of a job id already accepted before.
    pub duplicate_sends: u64,
    /// Sends beyond a number's tier in some 1 s window.
    pub violations_phone: u64,
    /// Sends breaking the (number, recipient) pair rule.
    pub violations_pair: u64,
    /// Calls beyond a WABA's hourly cap.
    pub violations_waba: u64,
    /// Error answers by code ("130429", "http_503", ...).
    pub errors_by_code: BTreeMap<String, u64>,
    pub hangs: u64,
    pub resets: u64,
    pub goaways: u64,
}

/// One business number's share of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumberReport {
    pub phone_number_id: String,
    /// Its throughput tier, messages per second; 0 when unknown.
    pub tier: u32,
    pub written: u64,
    pub sent: u64,
    pub failed: u64,
    /// Sent per second while the number had work (the runner decides the
    /// span; typically first to last acceptance).
    pub achieved_mps: f64,
    /// The simulator's count in the busiest sliding 1 s window: must not
    /// exceed the tier.
    pub max_in_any_1s_window: u64,
}

impl NumberReport {
    /// `achieved_mps` as a percentage of the tier; 0 when the tier is 0
    /// (unknown), so a report never carries an infinity or NaN.
    pub fn percent_of_tier(&self) -> f64 {
        if self.tier == 0 {
            0.0
        } else {
            self.achieved_mps / f64::from(self.tier) * 100.0
        }
    }
}

/// One sampling interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the run started, at the interval's end.
    pub t_s: f64,
    /// The interval's length: rates are counts divided by it, so a late tick
    /// does not show as a spike.
    pub interval_s: f64,
    /// Simulator acceptances in this interval, per phone_number_id.
    pub sent_by_number: BTreeMap<String, u64>,
    /// Simulator error answers in this interval, by code ("130429",
    /// "http_503", "reset", "hang", ...).
    pub errors_by_code: BTreeMap<String, u64>,
    /// Results read in this interval.
    pub results: u64,
    /// Engine gauges at the sample.
    pub backlog: i64,
    pub inflight: i64,
    /// Engine process CPU seconds used in this interval (divided by
    /// `interval_s`: the cores it kept busy); 0 in older reports.
    #[serde(default)]
    pub engine_cpu_s: f64,
    /// Engine process resident memory at the sample; 0 in older reports.
    #[serde(default)]
    pub engine_rss_bytes: u64,
}

/// One pass/fail judgement of the run, with the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// Why [`CapacityReport::write_to`] failed, naming the path.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot create report directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serialise the report for {path}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot draw {path}")]
    Chart {
        path: PathBuf,
        #[source]
        source: ChartError,
    },
}

/// The files [`CapacityReport::write_to`] writes, in that order.
pub const REPORT_FILES: [&str; 5] =
    ["report.json", "report.md", "throughput.svg", "latency.svg", "errors.svg"];

impl CapacityReport {
    /// True when every check passed (and so when there are none).
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// Simulator acceptances per second from the first to the last sample
    /// with any: the run's sending rate, start-up and draining excluded.
    pub fn sending_rate(&self) -> f64 {
        let sent = |s: &Sample| s.sent_by_number.values().sum::<u64>();
        let first = self.timeline.iter().position(|s| sent(s) > 0);
        let last = self.timeline.iter().rposition(|s| sent(s) > 0);
        let (Some(first), Some(last)) = (first, last) else { return 0.0 };
        let samples = &self.timeline[first..=last];
        let span: f64 = samples.iter().map(|s| s.interval_s).sum();
        samples.iter().map(sent).sum::<u64>() as f64 / span
    }

    /// Acceptances per second over the steady state: every sample strictly
    /// between the first and the last with any acceptance. The runner ends
    /// a sample at the first acceptance, so the first with any is the
    /// start-up's and those after it are whole seconds of sending; the last
    /// with any holds the end of sending, a part of a second. Idle samples
    /// in between count: a stall is part of the rate. The sending rate when
    /// there are no samples in between.
    pub fn sustained_rate(&self) -> f64 {
        let steady = self.steady_samples();
        if steady.is_empty() {
            return self.sending_rate();
        }
        let span: f64 = steady.iter().map(|s| s.interval_s).sum();
        steady.iter().map(|s| s.sent_by_number.values().sum::<u64>()).sum::<u64>() as f64 / span
    }

    /// The seconds [`CapacityReport::sustained_rate`] is taken over.
    pub fn steady_seconds(&self) -> f64 {
        self.steady_samples().iter().map(|s| s.interval_s).sum()
    }

    fn steady_samples(&self) -> &[Sample] {
        let sent = |s: &Sample| s.sent_by_number.values().sum::<u64>();
        let first = self.timeline.iter().position(|s| sent(s) > 0);
        let last = self.timeline.iter().rposition(|s| sent(s) > 0);
        match (first, last) {
            (Some(first), Some(last)) if last > first + 1 => &self.timeline[first + 1..last],
            _ => &[],
        }
    }

    /// The most acceptances per second in any one sample.
    pub fn peak_rate(&self) -> f64 {
        self.timeline
            .iter()
            .filter(|s| s.interval_s > 0.0)
            .map(|s| s.sent_by_number.values().sum::<u64>() as f64 / s.interval_s)
            .fold(0.0, f64::max)
    }

    /// The Markdown summary (`report.md`), linking the charts by file name.
    pub fn markdown(&self) -> String {
        markdown::render(self)
    }

    /// `throughput.svg`: messages/s per number against its tier.
    pub fn throughput_svg(&self) -> Result<String, ChartError> {
        charts::throughput(self)
    }

    /// `latency.svg`: job and send latency histograms.
    pub fn latency_svg(&self) -> Result<String, ChartError> {
        charts::latency(self)
    }

    /// `errors.svg`: simulator errors per second by code.
    pub fn errors_svg(&self) -> Result<String, ChartError> {
        charts::errors(self)
    }

    /// Creates `dir` if needed and writes [`REPORT_FILES`] into it,
    /// replacing earlier ones; returns their paths.
    pub fn write_to(&self, dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
        std::fs::create_dir_all(dir)
            .map_err(|source| ReportError::CreateDir { path: dir.to_path_buf(), source })?;
        let [json, md, throughput, latency, errors] = REPORT_FILES.map(|f| dir.join(f));

        let mut text = serde_json::to_string_pretty(self)
            .map_err(|source| ReportError::Json { path: json.clone(), source })?;
        text.push('\n');
        write(&json, &text)?;
        write(&md, &self.markdown())?;
        for (path, draw) in [
            (&throughput, charts::throughput as fn(&Self) -> _),
            (&latency, charts::latency),
            (&errors, charts::errors),
        ] {
            let svg = draw(self).map_err(|source| ReportError::Chart { path: path.clone(), source })?;
            write(path, &svg)?;
        }
        Ok(vec![json, md, throughput, latency, errors])
    }
}

fn write(path: &Path, contents: &str) -> Result<(), ReportError> {
    std::fs::write(path, contents).map_err(|source| ReportError::Write { path: path.to_path_buf(), source })
}

impl Machine {
    /// This machine, best effort: fields it cannot read are "unknown" or 0.
    pub fn this() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".into()),
            memory_gib: memory_gib(&meminfo).unwrap_or(0.0),
        }
    }
}

/// The first `model name` (x86) or, failing that, `Hardware`/`Processor`
/// (some ARM kernels) line of /proc/cpuinfo.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    let field = |name: &str| {
        cpuinfo.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name && !value.trim().is_empty()).then(|| value.trim().to_string())
        })
    };
    field("model name").or_else(|| field("Hardware")).or_else(|| field("Processor"))
}

/// `MemTotal` of /proc/meminfo (in kB there), in GiB.
fn memory_gib(meminfo: &str) -> Option<f64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: f64 = line["MemTotal:".len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / (1024.0 * 1024.0))
}

/// A duration for people, 3 significant digits: "5.2 ms", "512 ms",
/// "2.35 s", "41.2 s", "1 s".
pub(crate) fn fmt_secs(s: f64) -> String {
    let (v, unit) = if s.abs() < 1.0 { (s * 1000.0, "ms") } else { (s, "s") };
    let decimals = match v.abs() {
        v if v >= 100.0 => 0,
        v if v >= 10.0 => 1,
        _ => 2,
    };
    let mut text = format!("{v:.decimals$}");
    if text.contains('.') {
        text.truncate(text.trim_end_matches('0').trim_end_matches('.').len());
    }
    format!("{text} {unit}")
}
