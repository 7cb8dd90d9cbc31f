//! `wabulk campaign` (CONTRACT §12): the operator's side of campaign
//! control. `pause`, `resume` and `cancel` write one [`Control`] record,
//! keyed by the campaign, to the compacted control topic, whose latest
//! record per campaign every engine instance applies; `status` reads the
//! control, results and jobs topics up to their ends and counts each
//! campaign's jobs.
//!
//! Exit status: 0 when the change was written (or the status printed, even
//! partial); 1 when a change is refused (a cancelled campaign cannot be
//! paused or resumed); 2 when the configuration or Kafka failed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{SecondsFormat, Utc};
use tokio::time::Instant;
use wabulk::config::{Config, KafkaConfig};
use wabulk_kafka::{JobWriter, Record, TopicReader};
use wabulk_model::{CampaignState, Control, Job, ParseOptions, Status};

#[derive(Debug, clap::Args)]
pub(crate) struct CampaignArgs {
    #[command(subcommand)]
    command: CampaignCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CampaignCommand {
    /// Pause CAMPAIGN: its unsent jobs wait until it is resumed.
    Pause(ChangeArgs),
    /// Resume a paused CAMPAIGN. Refused (exit status 1) for a cancelled one.
    Resume(ChangeArgs),
    /// Cancel CAMPAIGN for good: its unsent jobs end with the result
    /// `cancelled`.
    Cancel(ChangeArgs),
    /// Each campaign's state and jobs: written, finished by status, waiting.
    ///
    /// Columns: state (active if never controlled); written (distinct job
    /// ids on the jobs topic); sent, failed, cancelled and other_finished
    /// (expired or rejected), each job counted by its last result; waiting
    /// (written less finished, never below 0). Reads the control, results
    /// and jobs topics whole, up to their ends when it starts: a very large
    /// jobs topic takes time to scan, and the job ids of the campaigns shown
    /// are kept in memory meanwhile.
    Status(StatusArgs),
}

#[derive(Debug, clap::Args)]
struct ChangeArgs {
    /// The campaign, as jobs name it in their `campaign` field.
    #[arg(value_parser = campaign_name)]
    campaign: String,
    /// Engine configuration: `[kafka]` brokers, `control_topic` and
    /// `[kafka.properties]` (TLS, SASL) are used.
    #[arg(long, short)]
    config: PathBuf,
    /// Who asks, kept in the record for people reading the topic; by
    /// default the `USER` environment variable.
    #[arg(long)]
    by: Option<String>,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// Only this campaign (shown with zeros, active, if nothing names it).
    #[arg(value_parser = campaign_name)]
    campaign: Option<String>,
    /// Engine configuration: `[kafka]` brokers, topics, `max_job_bytes` and
    /// `[kafka.properties]` (TLS, SASL) are used.
    #[arg(long, short)]
    config: PathBuf,
    /// Stop reading after this long and print what was read, marked partial.
    #[arg(long, default_value_t = 60)]
    timeout_s: u64,
}

const REFUSED: u8 = 1;
const FAILED: u8 = 2;

/// As the job parser allows a campaign (CONTRACT §2).
const MAX_CAMPAIGN_CHARS: usize = 128;

/// How long finding a topic and its partitions' bounds may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a change may take to read the control topic before it writes:
/// the topic is compacted, so small.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait before reading again after a consumer error.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Checks a campaign name as the job parser checks the job's field.
fn campaign_name(text: &str) -> Result<String, String> {
    let chars = text.chars().count();
    if (1..=MAX_CAMPAIGN_CHARS).contains(&chars) {
        Ok(text.to_owned())
    } else {
        Err(format!("has {chars} characters; 1 to {MAX_CAMPAIGN_CHARS} are allowed"))
    }
}

pub(crate) async fn run(args: CampaignArgs) -> ExitCode {
    let outcome = match args.command {
        CampaignCommand::Pause(args) => change(args, CampaignState::Paused).await,
        CampaignCommand::Resume(args) => change(args, CampaignState::Active).await,
        CampaignCommand::Cancel(args) => change(args, CampaignState::Cancelled).await,
        CampaignCommand::Status(args) => status(args).await,
    };
    outcome.unwrap_or_else(|err| {
        eprintln!("error: {err:#}");
        ExitCode::from(FAILED)
    })
}

/// Writes `state` for the campaign unless the control topic says it is
/// cancelled and `state` is not.
async fn change(args: ChangeArgs, state: CampaignState) -> anyhow::Result<ExitCode> {
    let config = crate::load_config(&args.config)?;
    let by = args.by.or_else(|| std::env::var("USER").ok());
    match write_change(&config, args.campaign, state, by).await? {
        Ok(written) => {
            println!("{written}");
            Ok(ExitCode::SUCCESS)
        }
        Err(refusal) => {
            eprintln!("refused: {refusal}");
            Ok(ExitCode::from(REFUSED))
        }
    }
}

/// Writes `state` for `campaign` to the control topic and waits for Kafka,
/// unless the topic says the campaign is cancelled and `state` is not:
/// `Ok(Ok(what was written))`, `Ok(Err(why it was refused))`. Shared by the
/// command line and the admin endpoint.
pub(crate) async fn write_change(
    config: &Config,
    campaign: String,
    state: CampaignState,
    by: Option<String>,
) -> anyhow::Result<Result<String, String>> {
    let kafka = &config.kafka;
    let topic = &kafka.control_topic;
    if missing_topics(kafka, std::slice::from_ref(topic)).await?.contains(topic) {
        anyhow::bail!(
            "the control topic {topic} does not exist; `wabulk run` creates it (compacted) when it \
             starts, or create it with cleanup.policy=compact; nothing written"
        );
    }
    let mut latest = None;
    let scan = scan(kafka, topic, Instant::now() + CHECK_TIMEOUT, |record| {
        if let Some(control) = read_control(record).filter(|c| c.campaign == campaign) {
            latest = Some(control);
        }
    })
    .await?;
    if !scan.complete {
        anyhow::bail!(
            "{}; the campaign's current state is not known, so nothing was written",
            scan.describe_partial(CHECK_TIMEOUT)
        );
    }
    if let Some(cancelled) = latest.as_ref().filter(|c| c.state == CampaignState::Cancelled) {
        if state != CampaignState::Cancelled {
            let verb = if state == CampaignState::Paused { "paused" } else { "resumed" };
            return Ok(Err(format!(
                "campaign {} was cancelled{}; a cancel is for good, so it cannot be {verb}; nothing written",
                campaign,
                who_and_when(cancelled),
            )));
        }
    }
    let control = Control { campaign, state, at: Utc::now(), by: by.filter(|by| !by.is_empty()) };
    let writer = JobWriter::connect(&kafka.brokers, &kafka.properties)?;
    writer
        .send(topic, Some(control.campaign.as_bytes()), &control.to_json())
        .await
        .with_context(|| format!("campaign {}: {} not written", control.campaign, state.label()))?;
    // Before the line: a producer going away may still log.
    drop(writer);
    let was = latest.map_or(CampaignState::Active, |c| c.state).label();
    Ok(Ok(format!(
        "campaign {}: {}, written to {topic}{} (was {was}); every engine instance applies it within \
         about a second",
        control.campaign,
        state.label(),
        who_and_when(&control),
    )))
}

/// " by WHO at TIME", as a control record has them.
fn who_and_when(control: &Control) -> String {
    let by = control.by.as_deref().map(|by| format!(" by {by}")).unwrap_or_default();
    format!("{by} at {}", control.at.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// A control record, or `None` for a tombstone or a record that is not one.
fn read_control(record: &Record) -> Option<Control> {
    serde_json::from_slice(&record.payload).ok()
}

async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let config = crate::load_config(&args.config)?;
    let kafka = &config.kafka;
    let options = ParseOptions { max_bytes: kafka.max_job_bytes };
    let topics = [kafka.control_topic.clone(), kafka.results_topic.clone(), kafka.jobs_topic.clone()];
    let missing = missing_topics(kafka, &topics).await?;
    for topic in &missing {
        eprintln!("note: topic {topic} does not exist; read as empty");
    }
    let only = args.campaign.as_deref();
    let wanted = |campaign: &str| only.is_none_or(|only| only == campaign);
    let timeout = Duration::from_secs(args.timeout_s);
    let deadline = Instant::now() + timeout;
    let mut counts = Counts::default();
    let Counts { controls, results, written } = &mut counts;
    // The three at once: the deadline bounds the whole.
    let scans = tokio::try_join!(
        scan_unless_missing(kafka, &kafka.control_topic, &missing, deadline, |record: &Record| {
            if let Some(control) = read_control(record).filter(|c| wanted(&c.campaign)) {
                controls.insert(control.campaign.clone(), control);
            }
        }),
        scan_unless_missing(kafka, &kafka.results_topic, &missing, deadline, |record: &Record| {
            if let Some((campaign, id, status)) = read_result(&record.payload).filter(|(c, ..)| wanted(c)) {
                // The last one wins: a crash can write a job's result twice.
                results.entry(campaign).or_default().insert(id, status);
            }
        }),
        scan_unless_missing(kafka, &kafka.jobs_topic, &missing, deadline, |record: &Record| {
            if let Ok(Job { id, campaign: Some(campaign), .. }) = Job::parse(&record.payload, &options) {
                if wanted(&campaign) {
                    written.entry(campaign).or_default().insert(id);
                }
            }
        }),
    )?;
    let rows = counts.rows(only);
    if rows.is_empty() {
        println!("no campaigns: no job, result or control record names one");
    } else {
        print!("{}", table(&rows));
    }
    let (control_scan, results_scan, jobs_scan) = scans;
    for scan in [control_scan, results_scan, jobs_scan].into_iter().flatten().filter(|s| !s.complete) {
        println!("partial: {}; the counts above are partial", scan.describe_partial(timeout));
    }
    Ok(ExitCode::SUCCESS)
}

/// [`scan`], or `None` for a topic in `missing`.
async fn scan_unless_missing(
    kafka: &KafkaConfig,
    topic: &str,
    missing: &HashSet<String>,
    deadline: Instant,
    each: impl FnMut(&Record),
) -> anyhow::Result<Option<Scan>> {
    if missing.contains(topic) {
        return Ok(None);
    }
    scan(kafka, topic, deadline, each).await.map(Some)
}

/// A result's campaign, job id and status; `None` for a record that is not
/// a result or names no campaign.
fn read_result(payload: &[u8]) -> Option<(String, String, Status)> {
    let result: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let field = |name| result.get(name).and_then(serde_json::Value::as_str);
    let status = Status::ALL.into_iter().find(|s| Some(s.label()) == field("status"))?;
    Some((field("campaign")?.to_owned(), field("id")?.to_owned(), status))
}

/// What the three topics said, per campaign.
#[derive(Debug, Default)]
struct Counts {
    /// The latest control record.
    controls: HashMap<String, Control>,
    /// The last result per job id.
    results: HashMap<String, HashMap<String, Status>>,
    /// The distinct job ids.
    written: HashMap<String, HashSet<String>>,
}

/// One campaign's line of the status table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    campaign: String,
    state: CampaignState,
    written: u64,
    sent: u64,
    failed: u64,
    cancelled: u64,
    /// Expired and rejected.
    other_finished: u64,
    waiting: u64,
}

impl Counts {
    /// Every campaign named anywhere, by name; with `only`, that one
    /// whatever was found.
    fn rows(&self, only: Option<&str>) -> Vec<Row> {
        let names: BTreeSet<&str> = match only {
            Some(only) => [only].into(),
            None => {
                let named = self.controls.keys().chain(self.results.keys()).chain(self.written.keys());
                named.map(String::as_str).collect()
            }
        };
        names.into_iter().map(|name| self.row(name)).collect()
    }

    fn row(&self, campaign: &str) -> Row {
        // Indexed as `Status::ALL`.
        let mut by_status = [0_u64; Status::ALL.len()];
        for status in self.results.get(campaign).into_iter().flat_map(HashMap::values) {
            if let Some(index) = Status::ALL.iter().position(|s| s == status) {
                by_status[index] += 1;
            }
        }
        let count =
            |status| Status::ALL.iter().position(|s| *s == status).map_or(0, |index| by_status[index]);
        let finished: u64 = by_status.iter().sum();
        let written = self.written.get(campaign).map_or(0, |ids| ids.len() as u64);
        Row {
            campaign: campaign.to_owned(),
            state: self.controls.get(campaign).map_or(CampaignState::Active, |c| c.state),
            written,
            sent: count(Status::Sent),
            failed: count(Status::Failed),
            cancelled: count(Status::Cancelled),
            other_finished: count(Status::Expired) + count(Status::Rejected),
            // A job whose record retention already deleted still has its result.
            waiting: written.saturating_sub(finished),
        }
    }
}

/// The rows as an aligned table with a header line.
fn table(rows: &[Row]) -> String {
    const HEADER: [&str; 8] =
        ["campaign", "state", "written", "sent", "failed", "cancelled", "other_finished", "waiting"];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|row| {
            [
                row.campaign.clone(),
                row.state.label().to_owned(),
                row.written.to_string(),
                row.sent.to_string(),
                row.failed.to_string(),
                row.cancelled.to_string(),
                row.other_finished.to_string(),
                row.waiting.to_string(),
            ]
        })
        .collect();
    let mut widths = HEADER.map(|title| title.chars().count());
    for line in &cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let header = HEADER.map(str::to_owned);
    for line in std::iter::once(&header).chain(&cells) {
        for (column, (cell, width)) in line.iter().zip(widths).enumerate() {
            let gap = if column == 0 { "" } else { "  " };
            // Names left, numbers right.
            let _ = if column < 2 {
                write!(text, "{gap}{cell:<width$}")
            } else {
                write!(text, "{gap}{cell:>width$}")
            };
        }
        text.truncate(text.trim_end().len());
        text.push('\n');
    }
    text
}

/// Finds which of `topics` do not exist.
async fn missing_topics(kafka: &KafkaConfig, topics: &[String]) -> anyhow::Result<HashSet<String>> {
    let (brokers, extra, names) = (kafka.brokers.clone(), kafka.properties.clone(), topics.to_vec());
    let found = tokio::task::spawn_blocking(move || {
        wabulk_kafka::topic_partition_counts(&brokers, &extra, &names, CONNECT_TIMEOUT)
    })
    .await
    .context("the metadata task")?
    .with_context(|| format!("cannot reach Kafka at {}", kafka.brokers))?;
    Ok(topics.iter().filter(|topic| !found.contains_key(*topic)).cloned().collect())
}

/// How far a topic was read.
#[derive(Debug)]
struct Scan {
    topic: String,
    records: u64,
    /// Every partition read up to its end as it was at the start.
    complete: bool,
    /// The last consumer error, if reading met one.
    last_error: Option<String>,
}

impl Scan {
    fn describe_partial(&self, timeout: Duration) -> String {
        let error = self.last_error.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default();
        format!(
            "{} was not read to its end within {} s ({} records read{error})",
            self.topic,
            timeout.as_secs(),
            self.records
        )
    }
}

/// Reads `topic` from its beginning up to each partition's end as it is
/// now, handing `each` every record before that end, until `deadline`.
async fn scan(
    kafka: &KafkaConfig,
    topic: &str,
    deadline: Instant,
    mut each: impl FnMut(&Record),
) -> anyhow::Result<Scan> {
    let (brokers, extra, name) = (kafka.brokers.clone(), kafka.properties.clone(), topic.to_owned());
    let (reader, bounds) = tokio::task::spawn_blocking(move || {
        let reader = TopicReader::connect_with(&brokers, &extra, &name, CONNECT_TIMEOUT)?;
        let bounds = reader.bounds(CONNECT_TIMEOUT)?;
        Ok::<_, wabulk_kafka::KafkaError>((reader, bounds))
    })
    .await
    .context("the topic reader task")?
    .with_context(|| format!("cannot read {topic}"))?;
    let ends: HashMap<i32, i64> = bounds.iter().map(|(&partition, &(_, end))| (partition, end)).collect();
    let mut unread: HashSet<i32> =
        bounds.into_iter().filter(|(_, (first, end))| first < end).map(|(partition, _)| partition).collect();
    let mut scan = Scan { topic: topic.to_owned(), records: 0, complete: false, last_error: None };
    while !unread.is_empty() {
        // Checked first: a reader with records buffered would not wait.
        if Instant::now() >= deadline {
            return Ok(scan);
        }
        let record = match tokio::time::timeout_at(deadline, reader.next()).await {
            Err(_) => return Ok(scan),
            Ok(Err(err)) => {
                // Reading resumes by itself once the broker answers again.
                scan.last_error = Some(err.to_string());
                tokio::time::sleep_until(deadline.min(Instant::now() + RETRY_PAUSE)).await;
                continue;
            }
            Ok(Ok(record)) => record,
        };
        let Some(&end) = ends.get(&record.partition) else { continue };
        if record.offset + 1 >= end {
            unread.remove(&record.partition);
        }
        // Records written since the start are left for the next look.
        if record.offset < end {
            scan.records += 1;
            each(&record);
        }
    }
    scan.complete = true;
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(campaign: &str, state: CampaignState) -> Control {
        Control { campaign: campaign.into(), state, at: Utc::now(), by: None }
    }

    #[test]
    fn campaign_names_are_checked_as_the_parser_checks_them() {
        assert!(campaign_name("nov-shipping").is_ok());
        assert!(campaign_name(&"é".repeat(128)).is_ok());
        assert_eq!(campaign_name(&"x".repeat(129)), Err("has 129 characters; 1 to 128 are allowed".into()));
        assert!(campaign_name("").is_err());
    }

    #[test]
    fn results_are_read_by_campaign_and_others_skipped() {
        let result = br#"{"id":"j1","status":"cancelled","campaign":"a","attempts":0}"#;
        assert_eq!(read_result(result), Some(("a".into(), "j1".into(), Status::Cancelled)));
        assert_eq!(read_result(br#"{"id":"j1","status":"sent"}"#), None, "no campaign");
        assert_eq!(read_result(br#"{"id":"j1","status":"lost","campaign":"a"}"#), None);
        assert_eq!(read_result(b"not json"), None);
    }

    #[test]
    fn rows_count_the_last_result_per_job_and_never_wait_below_zero() {
        let mut counts = Counts::default();
        counts.controls.insert("a".into(), control("a", CampaignState::Paused));
        counts.written.insert("a".into(), ["1", "2", "3", "4", "5"].map(String::from).into());
        counts.results.insert(
            "a".into(),
            [("1", Status::Sent), ("2", Status::Expired), ("3", Status::Rejected), ("4", Status::Cancelled)]
                .map(|(id, status)| (id.to_owned(), status))
                .into(),
        );
        // Results whose jobs retention deleted: finished, not written.
        counts.results.insert("b".into(), [("9".to_owned(), Status::Failed)].into());
        let rows = counts.rows(None);
        let a = Row {
            campaign: "a".into(),
            state: CampaignState::Paused,
            written: 5,
            sent: 1,
            failed: 0,
            cancelled: 1,
            other_finished: 2,
            waiting: 1,
        };
        let b = Row {
            campaign: "b".into(),
            state: CampaignState::Active,
            written: 0,
            sent: 0,
            failed: 1,
            cancelled: 0,
            other_finished: 0,
            waiting: 0,
        };
        assert_eq!(rows, vec![a.clone(), b]);
        assert_eq!(counts.rows(Some("a")), vec![a]);
        let unknown = counts.rows(Some("z"));
        assert_eq!((unknown[0].state, unknown[0].written, unknown[0].waiting), (CampaignState::Active, 0, 0));
    }

    #[test]
    fn the_table_aligns_names_left_and_numbers_right() {
        let row = |campaign: &str, written| Row {
            campaign: campaign.into(),
            state: CampaignState::Active,
            written,
            sent: 0,
            failed: 0,
            cancelled: 0,
            other_finished: 0,
            waiting: written,
        };
        let text = table(&[row("a-long-campaign-name", 12_345), row("b", 7)]);
        let expected = "\
campaign              state   written  sent  failed  cancelled  other_finished  waiting
a-long-campaign-name  active    12345     0       0          0               0    12345
b                     active        7     0       0          0               0        7
";
        assert_eq!(text, expected);
    }
}
