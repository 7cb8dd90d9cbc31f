//! `wabulk send` (CONTRACT §7): jobs as JSON lines from a file or standard
//! input, each checked with `Job::parse` as the engine will check it, and
//! the valid ones written to the jobs topic keyed by their
//! `phone_number_id`, each awaited until Kafka acknowledged it.
//!
//! Exit status: 0 when every line was a job and was written; 1 when some
//! lines were not jobs (the valid ones are written all the same, so that one
//! bad line does not hold back a campaign); 2 when the configuration or the
//! input cannot be read or Kafka did not acknowledge a write.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use futures::stream::{FuturesUnordered, StreamExt as _};
use tokio::sync::mpsc::{Receiver, Sender};
use wabulk_kafka::JobWriter;
use wabulk_model::{Job, JobError, ParseOptions};

#[derive(Debug, clap::Args)]
pub(crate) struct SendArgs {
    /// Engine configuration: `[kafka]` brokers, jobs topic, `max_job_bytes`
    /// and `[kafka.properties]` (TLS, SASL) are used.
    #[arg(long, short)]
    config: PathBuf,
    /// One job (JSON) a line; `-` or nothing reads standard input.
    #[arg(value_name = "FILE")]
    input: Option<PathBuf>,
    /// Check every line and write nothing.
    #[arg(long)]
    dry_run: bool,
}

const SOME_INVALID: u8 = 1;
const FAILED: u8 = 2;

/// Writes awaiting Kafka's acknowledgement at once: enough for librdkafka
/// to fill its batches, few enough to bound what a failure leaves unsure.
const MAX_IN_FLIGHT: usize = 1_000;

/// Lines read and checked ahead of the writes.
const READ_AHEAD: usize = 1_024;

/// The longest error shown for one line: a parser message can quote a
/// field's value, which can be long.
const MAX_ERROR_CHARS: usize = 200;

/// One line of the input, checked.
enum Line {
    Job {
        number: u64,
        key: String,
        payload: Vec<u8>,
    },
    Invalid {
        number: u64,
        error: JobError,
    },
    /// The input could not be read further.
    Unreadable(anyhow::Error),
}

#[derive(Debug, Default)]
struct Tally {
    /// Acknowledged by Kafka (with `--dry-run`: found valid).
    written: u64,
    invalid: u64,
}

pub(crate) async fn run(args: SendArgs) -> ExitCode {
    let (lines, writer, topic) = match start(&args) {
        Ok(started) => started,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(FAILED);
        }
    };
    let mut tally = Tally::default();
    let outcome = pump(lines, writer.as_ref(), &topic, &mut tally).await;
    // Before the summary: a producer going away may still log.
    drop(writer);
    if let Err(err) = &outcome {
        eprintln!("error: {err:#}");
    }
    // The summary comes last, where a shell user looks.
    if args.dry_run {
        eprintln!("dry run: valid {}, invalid {}; nothing written", tally.written, tally.invalid);
    } else {
        eprintln!("written {}, invalid {}", tally.written, tally.invalid);
    }
    match outcome {
        Err(_) => ExitCode::from(FAILED),
        Ok(()) if tally.invalid > 0 => ExitCode::from(SOME_INVALID),
        Ok(()) => ExitCode::SUCCESS,
    }
}

/// Reads the configuration, opens the input and starts reading it, and
/// creates the producer (none with `--dry-run`); the checked lines, the
/// producer and the jobs topic.
fn start(args: &SendArgs) -> anyhow::Result<(Receiver<Line>, Option<JobWriter>, String)> {
    let config = crate::load_config(&args.config)?;
    let options = ParseOptions { max_bytes: config.kafka.max_job_bytes };
    let source = Source::open(args.input.as_deref())?;
    let writer = if args.dry_run {
        None
    } else {
        Some(JobWriter::connect(&config.kafka.brokers, &config.kafka.properties)?)
    };
    let (sender, lines) = tokio::sync::mpsc::channel(READ_AHEAD);
    // A thread of its own: reading standard input blocks.
    std::thread::Builder::new()
        .name("send-input".into())
        .spawn(move || source.read(options, &sender))
        .context("cannot start the input thread")?;
    Ok((lines, writer, config.kafka.jobs_topic))
}

/// Writes the valid lines (counts them, without `writer`), up to
/// [`MAX_IN_FLIGHT`] at once, and reports the invalid ones; returns once
/// every write is acknowledged, or at the first that fails.
async fn pump(
    mut lines: Receiver<Line>,
    writer: Option<&JobWriter>,
    topic: &str,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let mut in_flight = FuturesUnordered::new();
    // Line numbers written and not yet acknowledged: after a failure, every
    // valid line before the lowest of them is known to be written.
    let mut unacknowledged = BTreeSet::new();
    let mut input_open = true;
    // Writes under way are still awaited after a read error, so that what
    // the summary counts is what was written.
    let mut read_error = None;
    loop {
        tokio::select! {
            Some((number, written)) = in_flight.next() => {
                if let Err(err) = written {
                    let first_unsure = unacknowledged.first().copied().unwrap_or(number);
                    let known = if tally.written == 0 {
                        "nothing was acknowledged, though jobs in flight may be written".to_owned()
                    } else {
                        format!(
                            "the valid lines before line {first_unsure} are written, \
                             those from it on may be in part"
                        )
                    };
                    return Err(anyhow::Error::new(err).context(format!("line {number}: not written; {known}")));
                }
                unacknowledged.remove(&number);
                tally.written += 1;
            }
            line = lines.recv(), if input_open && in_flight.len() < MAX_IN_FLIGHT => match line {
                Some(Line::Job { number, key, payload }) => match writer {
                    None => tally.written += 1,
                    Some(writer) => {
                        unacknowledged.insert(number);
                        in_flight.push(async move {
                            (number, writer.send(topic, Some(key.as_bytes()), &payload).await)
                        });
                    }
                },
                Some(Line::Invalid { number, error }) => {
                    tally.invalid += 1;
                    eprintln!("line {number}: invalid job: {}", cut(&error.to_string(), MAX_ERROR_CHARS));
                }
                Some(Line::Unreadable(err)) => {
                    read_error = Some(err);
                    input_open = false;
                }
                None => input_open = false,
            },
            else => return read_error.map_or(Ok(()), Err),
        }
    }
}

/// Where the lines come from.
enum Source {
    Stdin,
    File { path: PathBuf, file: File },
}

impl Source {
    fn open(input: Option<&Path>) -> anyhow::Result<Source> {
        match input {
            None => Ok(Source::Stdin),
            Some(path) if path == Path::new("-") => Ok(Source::Stdin),
            Some(path) => {
                let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
                Ok(Source::File { path: path.to_owned(), file })
            }
        }
    }

    /// Reads and checks every line, handing each over in order, until the
    /// end of the input or until the receiver is gone.
    fn read(self, options: ParseOptions, lines: &Sender<Line>) {
        let (read, name) = match self {
            Source::Stdin => {
                let stdin = std::io::stdin();
                if stdin.is_terminal() {
                    eprintln!("reading jobs from standard input, one a line; end with Ctrl-D");
                }
                (read_lines(stdin.lock(), options, lines), "standard input".to_owned())
            }
            Source::File { path, file } => (
                read_lines(BufReader::with_capacity(1 << 16, file), options, lines),
                path.display().to_string(),
            ),
        };
        if let Err(err) = read {
            let _ = lines.blocking_send(Line::Unreadable(
                anyhow::Error::new(err).context(format!("cannot read {name}")),
            ));
        }
    }
}

/// Blank lines are skipped; a line longer than the job limit is not kept
/// whole, only measured.
fn read_lines(mut input: impl BufRead, options: ParseOptions, lines: &Sender<Line>) -> std::io::Result<()> {
    let mut text = Vec::new();
    let mut number = 0;
    // One byte more than a job may have: the `\r` of a `\r\n` line end.
    let keep = options.max_bytes.saturating_add(1);
    while let Some(length) = read_line(&mut input, keep, &mut text)? {
        number += 1;
        let line = if length > options.max_bytes {
            Line::Invalid { number, error: JobError::TooLarge { size: length, limit: options.max_bytes } }
        } else if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        } else {
            match Job::parse(&text, &options) {
                Ok(job) => Line::Job { number, key: job.phone_number_id.to_string(), payload: text.clone() },
                Err(error) => Line::Invalid { number, error },
            }
        };
        if lines.blocking_send(line).is_err() {
            break;
        }
    }
    Ok(())
}

/// Reads one line into `line` without its `\n` (or `\r\n`), keeping at most
/// `keep` bytes of it; returns the line's whole length, or `None` at the end
/// of the input.
fn read_line(input: &mut impl BufRead, keep: usize, line: &mut Vec<u8>) -> std::io::Result<Option<usize>> {
    line.clear();
    let mut length = 0;
    let mut read_any = false;
    loop {
        let available = match input.fill_buf() {
            Ok(available) => available,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        if available.is_empty() {
            return Ok(read_any.then(|| strip_cr(line, length)));
        }
        read_any = true;
        let newline = available.iter().position(|&b| b == b'\n');
        let part = &available[..newline.unwrap_or(available.len())];
        let room = keep.saturating_sub(line.len());
        line.extend_from_slice(&part[..part.len().min(room)]);
        length += part.len();
        let consumed = newline.map_or(part.len(), |at| at + 1);
        input.consume(consumed);
        if newline.is_some() {
            return Ok(Some(strip_cr(line, length)));
        }
    }
}

/// The length of a line kept whole, without a trailing `\r`.
fn strip_cr(line: &mut Vec<u8>, length: usize) -> usize {
    if length == line.len() && line.last() == Some(&b'\r') {
        line.pop();
        return length - 1;
    }
    length
}

/// `text` cut to `max` characters, marked when cut.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(input: &[u8], keep: usize) -> Vec<(usize, Vec<u8>)> {
        let mut input = BufReader::with_capacity(4, input);
        let mut line = Vec::new();
        let mut lines = Vec::new();
        while let Some(length) = read_line(&mut input, keep, &mut line).expect("read") {
            lines.push((length, line.clone()));
        }
        lines
    }

    #[test]
    fn lines_are_split_on_newlines_with_or_without_a_last_one() {
        let expected = vec![(3, b"abc".to_vec()), (0, vec![]), (2, b"de".to_vec())];
        assert_eq!(lines_of(b"abc\n\nde", 100), expected);
        assert_eq!(lines_of(b"abc\r\n\r\nde\n", 100), expected);
        assert!(lines_of(b"", 100).is_empty());
    }

    #[test]
    fn a_long_line_is_measured_not_kept() {
        let input = format!("{}\nshort\n", "x".repeat(50));
        let lines = lines_of(input.as_bytes(), 10);
        assert_eq!(lines[0], (50, b"x".repeat(10)));
        assert_eq!(lines[1], (5, b"short".to_vec()));
    }

    #[test]
    fn the_cr_of_a_crlf_line_end_is_dropped() {
        assert_eq!(lines_of(b"abcd\r\n", 5), vec![(4, b"abcd".to_vec())]);
    }

    #[test]
    fn long_errors_are_cut() {
        assert_eq!(cut("éé", 2), "éé");
        assert_eq!(cut("ééé", 2), "éé…");
    }
}
