use std::collections::{BTreeMap, BTreeSet, HashSet};

use chrono::TimeZone;
use wabulk_model::{Job, ParseOptions, Recipient};

use super::*;
use crate::{Burst, LoadNumber};

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 21, 10, 0, 0).unwrap()
}

fn spec(jobs: u64) -> LoadSpec {
    LoadSpec {
        numbers: vec![
            LoadNumber::new("106540352242922", "102290129340398", 80),
            LoadNumber::new("106540352242923", "102290129340398", 80),
        ],
        jobs,
        rate: Some(1_000.0),
        recipients: Recipients::Uniform { count: 1_000 },
        bursts: vec![],
        malformed_fraction: 0.0,
        not_before_fraction: 0.0,
        not_before_min_s: 0,
        not_before_max_s: 0,
        expires_fraction: 0.0,
        expires_in_s: 0,
        id_prefix: "t".into(),
        seed: 7,
        campaigns: 0,
    }
}

#[test]
fn regular_jobs_are_spread_over_the_campaigns_round_robin() {
    let with_campaigns = LoadSpec { campaigns: 3, ..spec(30) };
    let mut per_campaign = std::collections::BTreeMap::new();
    for record in generate(&with_campaigns).take(30) {
        let job = parse(&record).expect("a valid job");
        *per_campaign.entry(job.campaign.expect("every job has one")).or_insert(0) += 1;
    }
    let expected: std::collections::BTreeMap<String, i32> = (0..3).map(|n| (format!("t-c{n}"), 10)).collect();
    assert_eq!(per_campaign, expected);
    assert!(generate(&spec(5)).all(|record| parse(&record).unwrap().campaign.is_none()));
}

fn parse(record: &GeneratedRecord) -> Result<Job, wabulk_model::JobError> {
    Job::parse(&record.payload, &ParseOptions::default())
}

#[test]
fn valid_records_parse_with_unique_ids_and_the_contract_shape() {
    let mut spec = spec(5_000);
    spec.not_before_fraction = 0.1;
    spec.not_before_min_s = 10;
    spec.not_before_max_s = 30;
    spec.expires_fraction = 0.1;
    spec.expires_in_s = 60;
    let mut ids = HashSet::new();
    let (mut not_before, mut expires) = (0, 0);
    for record in generate_at(&spec, start()) {
        let job = parse(&record).unwrap_or_else(|e| panic!("record {} does not parse: {e}", record.seq));
        assert_eq!(Some(&job.id), record.job_id.as_ref());
        assert_eq!(job.id, format!("t-{}", record.seq));
        assert!(ids.insert(job.id.clone()), "duplicate id {}", job.id);
        assert_eq!(record.key, job.phone_number_id.to_string().as_bytes());
        assert_eq!(job.waba_id.unwrap().to_string(), "102290129340398");
        assert_eq!(job.message["type"], "text");
        assert!(!job.message["text"]["body"].as_str().unwrap().is_empty());
        assert_eq!(job.metadata.as_ref().unwrap()["loadgen"], true);
        assert_eq!(job.metadata.as_ref().unwrap()["seq"], record.seq);
        // Timestamps are relative to the record's expected send time.
        let sent_at = start() + chrono::Duration::milliseconds(record.seq as i64);
        if let Some(t) = job.not_before {
            not_before += 1;
            let (earliest, latest) =
                (sent_at + chrono::Duration::seconds(10), sent_at + chrono::Duration::seconds(30));
            assert!(t >= earliest && t <= latest, "{t}");
            assert_eq!(record.not_before, Some(t));
        }
        if let Some(t) = job.expires_at {
            expires += 1;
            assert_eq!(t, sent_at + chrono::Duration::seconds(60));
        }
    }
    assert_eq!(ids.len(), 5_000);
    assert!((350..=650).contains(&not_before), "{not_before} with not_before");
    assert!((350..=650).contains(&expires), "{expires} with expires_at");
}

#[test]
fn malformed_records_do_not_parse_come_in_the_fraction_and_cover_every_kind() {
    let mut spec = spec(3_000);
    spec.malformed_fraction = 0.05;
    let mut kinds = BTreeMap::new();
    let mut positions = Vec::new();
    for record in generate_at(&spec, start()) {
        if record.malformed {
            let kind = record.malformed_kind.expect("malformed records name their kind");
            assert!(record.job_id.is_none());
            let error = parse(&record).expect_err("a malformed record must not parse");
            let expected_reason = match kind {
                MalformedKind::NotJson | MalformedKind::MissingField | MalformedKind::WrongType => {
                    "malformed"
                }
                MalformedKind::InvalidNumber => "invalid_field",
                MalformedKind::Oversized => "too_large",
                MalformedKind::InvalidUtf8 => "not_utf8",
            };
            assert_eq!(error.reason(), expected_reason, "{kind:?}: {error}");
            *kinds.entry(kind).or_insert(0u64) += 1;
            positions.push(record.seq);
            // Still keyed by its number, as any producer's record would be.
            assert_eq!(record.key, record.phone_number_id.as_bytes());
        } else {
            parse(&record).unwrap();
        }
    }
    assert_eq!(kinds.values().sum::<u64>(), 150);
    assert_eq!(kinds.len(), MalformedKind::ALL.len(), "{kinds:?}");
    assert!(kinds.values().all(|&n| n == 25), "{kinds:?}");
    // Spread through the run, not bunched: one in every 20 records.
    assert!(positions.windows(2).all(|w| w[1] - w[0] == 20), "{positions:?}");
}

#[test]
fn the_missing_field_is_named() {
    let mut spec = spec(12);
    spec.malformed_fraction = 1.0;
    let missing =
        generate_at(&spec, start()).find(|r| r.malformed_kind == Some(MalformedKind::MissingField)).unwrap();
    assert!(parse(&missing).unwrap_err().to_string().contains("missing field `to`"));
    let oversized =
        generate_at(&spec, start()).find(|r| r.malformed_kind == Some(MalformedKind::Oversized)).unwrap();
    // Only just over the limit: the mock cluster's partitions are small.
    assert!(oversized.payload.len() < DEFAULT_MAX_JOB_BYTES + 1024);
    // Apart from its size it is a valid job.
    let options = ParseOptions { max_bytes: DEFAULT_MAX_JOB_BYTES * 2 };
    Job::parse(&oversized.payload, &options).unwrap();
}

#[test]
fn numbers_get_jobs_in_proportion_to_their_share() {
    let mut spec = spec(20_000);
    spec.numbers[0].share = 1.0;
    spec.numbers[1].share = 3.0;
    let mut per_number = BTreeMap::<String, u64>::new();
    for record in generate_at(&spec, start()) {
        *per_number.entry(record.phone_number_id).or_default() += 1;
    }
    let first = per_number["106540352242922"] as f64 / 20_000.0;
    assert!((0.23..=0.27).contains(&first), "{per_number:?}");
}

#[test]
fn share_defaults_to_mps_in_files() {
    let number: LoadNumber =
        serde_json::from_str(r#"{"id": "106540352242922", "waba_id": "102290129340398", "mps": 250}"#)
            .unwrap();
    assert_eq!(number.share, 250.0);
    let spec: LoadSpec =
        serde_json::from_str(r#"{"jobs": 5, "recipients": {"kind": "zipf", "count": 10, "exponent": 1.0}}"#)
            .unwrap();
    assert_eq!(spec.jobs, 5);
    assert_eq!(spec.recipients, Recipients::Zipf { count: 10, exponent: 1.0 });
    assert_eq!(spec.numbers, LoadSpec::default().numbers);
    // What a file leaves out is off, not the in-code default's extras.
    assert_eq!(spec.rate, None);
    assert!(spec.bursts.is_empty());
    assert_eq!(spec.malformed_count(), 0);
    assert_eq!((spec.not_before_fraction, spec.expires_fraction), (0.0, 0.0));
    assert_eq!(spec.id_prefix, "");
}

/// Fraction of regular jobs that go to the 10 lowest recipient indices.
fn share_of_top_ten(recipients: Recipients) -> f64 {
    let mut spec = spec(10_000);
    spec.recipients = recipients;
    let top: HashSet<String> = (0..10).map(|i| recipient(i).trim_start_matches('+').to_owned()).collect();
    let hits =
        generate_at(&spec, start()).filter(|r| top.contains(&parse(r).unwrap().to.to_string())).count();
    hits as f64 / 10_000.0
}

#[test]
fn zipf_concentrates_on_low_indices_and_uniform_does_not() {
    let zipf = share_of_top_ten(Recipients::Zipf { count: 1_000, exponent: 1.1 });
    let uniform = share_of_top_ten(Recipients::Uniform { count: 1_000 });
    assert!(zipf > 0.4, "Zipf sent {zipf} to the top ten");
    assert!(uniform < 0.03, "Uniform sent {uniform} to the top ten");
}

#[test]
fn recipients_are_distinct_valid_e164_numbers() {
    let indices = [0, 1, 9_999_999, 10_000_000, 10_000_001, MAX_RECIPIENTS - 1];
    let mut seen = BTreeSet::new();
    for index in indices {
        let number = recipient(index);
        assert!(number.starts_with("+1555"), "{number}");
        let digits = Recipient::normalise(&number).unwrap();
        assert!(seen.insert(digits), "{number} repeats");
    }
    assert_eq!(recipient(42), "+15550000042");
}

#[test]
fn bursts_send_their_count_to_one_recipient_spread_through_the_run() {
    let mut spec = spec(2_000);
    spec.malformed_fraction = 0.1;
    spec.bursts = vec![
        Burst { phone_number_id: "106540352242923".into(), recipient_index: 5_000, count: 45 },
        Burst { phone_number_id: "106540352242922".into(), recipient_index: 0, count: 20 },
    ];
    let mut per_burst = BTreeMap::<usize, Vec<u64>>::new();
    for record in generate_at(&spec, start()) {
        let Some(b) = record.burst else { continue };
        let job = parse(&record).unwrap();
        assert_eq!(job.phone_number_id.to_string(), spec.bursts[b].phone_number_id);
        assert_eq!(format!("+{}", job.to), recipient(spec.bursts[b].recipient_index));
        assert_eq!(job.metadata.unwrap()["burst"], b);
        per_burst.entry(b).or_default().push(record.seq);
    }
    assert_eq!(per_burst[&0].len(), 45);
    assert_eq!(per_burst[&1].len(), 20);
    for seqs in per_burst.values() {
        // Spread: the first in the first tenth of the run, the last in the last.
        assert!(seqs[0] < 200 && *seqs.last().unwrap() >= 1_800, "{seqs:?}");
    }
}

#[test]
fn bursts_fill_a_run_of_nothing_else() {
    let mut spec = spec(30);
    spec.malformed_fraction = 0.2;
    spec.bursts = vec![
        Burst { phone_number_id: "106540352242922".into(), recipient_index: 1, count: 12 },
        Burst { phone_number_id: "106540352242922".into(), recipient_index: 2, count: 12 },
    ];
    let records: Vec<_> = generate_at(&spec, start()).collect();
    assert_eq!(records.iter().filter(|r| r.malformed).count(), 6);
    assert_eq!(records.iter().filter(|r| r.burst.is_some()).count(), 24);
}

#[test]
fn the_same_seed_gives_the_same_records_and_another_seed_does_not() {
    let mut spec = spec(2_000);
    spec.malformed_fraction = 0.02;
    spec.not_before_fraction = 0.1;
    spec.not_before_max_s = 5;
    spec.expires_fraction = 0.1;
    spec.expires_in_s = 5;
    spec.recipients = Recipients::Zipf { count: 500, exponent: 1.0 };
    spec.bursts = vec![Burst { phone_number_id: "106540352242922".into(), recipient_index: 3, count: 10 }];
    let first: Vec<_> = generate_at(&spec, start()).collect();
    let again: Vec<_> = generate_at(&spec, start()).collect();
    assert_eq!(first, again);
    spec.seed += 1;
    let other: Vec<_> = generate_at(&spec, start()).collect();
    assert_ne!(first, other);
    assert_eq!(first.len(), other.len());
}

#[test]
fn invalid_specs_are_refused() {
    type Change = Box<dyn Fn(&mut LoadSpec)>;
    let cases: Vec<(&str, Change)> = vec![
        ("no numbers", Box::new(|s| s.numbers.clear())),
        ("bad number", Box::new(|s| s.numbers[0].id = "12a".into())),
        ("zero shares", Box::new(|s| s.numbers.iter_mut().for_each(|n| n.share = 0.0))),
        ("zero rate", Box::new(|s| s.rate = Some(0.0))),
        ("no recipients", Box::new(|s| s.recipients = Recipients::Uniform { count: 0 })),
        ("negative exponent", Box::new(|s| s.recipients = Recipients::Zipf { count: 5, exponent: -1.0 })),
        ("fraction", Box::new(|s| s.malformed_fraction = 1.5)),
        (
            "unknown burst number",
            Box::new(|s| {
                s.bursts = vec![Burst { phone_number_id: "1".into(), recipient_index: 0, count: 1 }]
            }),
        ),
        (
            "bursts over jobs",
            Box::new(|s| {
                s.bursts =
                    vec![Burst { phone_number_id: "106540352242922".into(), recipient_index: 0, count: 101 }]
            }),
        ),
        ("empty prefix", Box::new(|s| s.id_prefix.clear())),
        ("long prefix", Box::new(|s| s.id_prefix = "p".repeat(126))),
    ];
    for (name, change) in cases {
        let mut spec = spec(100);
        change(&mut spec);
        assert!(spec.validate().is_err(), "{name} was accepted");
    }
    spec(100).validate().unwrap();
    LoadSpec::default().validate().unwrap();
}

#[test]
fn the_default_spec_generates_what_it_promises() {
    let spec = LoadSpec::default();
    let records: Vec<_> = generate(&spec).collect();
    assert_eq!(records.len() as u64, spec.jobs);
    assert_eq!(records.iter().filter(|r| r.malformed).count() as u64, spec.malformed_count());
    assert_eq!(records.iter().filter(|r| r.burst.is_some()).count() as u64, spec.burst_count());
    assert!(records.iter().filter(|r| !r.malformed).all(|r| parse(r).is_ok()));
}
