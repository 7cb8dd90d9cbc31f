use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

const NUMBERS: [(&str, u32); 3] =
    [("106540352242922", 80), ("106540352242923", 20), ("106540352242924", 1000)];

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Three numbers, 10 one-second samples, 130429s in the middle of the run
/// and one reset.
fn report() -> CapacityReport {
    let timeline = (1..=10u64)
        .map(|t| Sample {
            t_s: t as f64,
            interval_s: 1.0,
            sent_by_number: counts(&[
                (NUMBERS[0].0, 70 + t),
                (NUMBERS[1].0, 20),
                (NUMBERS[2].0, 300 + 10 * t),
            ]),
            errors_by_code: match t {
                4..=6 => counts(&[("130429", 3), ("http_503", 1)]),
                8 => counts(&[("reset", 1)]),
                _ => BTreeMap::new(),
            },
            results: 400,
            backlog: 100 - t as i64 * 10,
            inflight: 12,
            engine_cpu_s: 0.4,
            engine_rss_bytes: 64 << 20,
        })
        .collect();
    let mut job = [0.2, 0.4, 0.6, 1.1, 3.0, 0.35, 0.5, 75.0];
    let mut send = [0.05, 0.12, 0.3, 0.31, 0.45, 0.5, 0.7, 1.2];
    CapacityReport {
        scenario: "tiers".into(),
        description: "Three numbers at different tiers | one pipe.".into(),
        command: "wabulk loadgen run loadtest/scenarios/tiers.toml".into(),
        started_at: "2026-11-21T10:00:00Z".into(),
        machine: Machine { cpus: 2, cpu_model: "Test CPU @ 3.0GHz".into(), memory_gib: 23.4 },
        broker: "librdkafka mock cluster (in process)".into(),
        latency: "Meta-like lognormal × 1.0 (p50 0.5 s)".into(),
        faults: "none".into(),
        elapsed_s: 10.4,
        written: 4_000,
        malformed: 4,
        results: 3_996,
        duplicate_results: 0,
        dead_letters: 4,
        by_status: counts(&[("sent", 3_990), ("failed", 6)]),
        sim: SimSummary {
            requests: 4_010,
            accepted: 3_990,
            errors_by_code: counts(&[("130429", 9), ("http_503", 3)]),
            resets: 1,
            ..SimSummary::default()
        },
        numbers: NUMBERS
            .iter()
            .zip([75.5, 20.0, 355.0])
            .map(|(&(id, tier), achieved_mps)| NumberReport {
                phone_number_id: id.into(),
                tier,
                written: 1_000,
                sent: 990,
                failed: 2,
                achieved_mps,
                max_in_any_1s_window: u64::from(tier),
            })
            .collect(),
        job_latency: Distribution::from_seconds(&mut job, LATENCY_BOUNDS_S),
        send_latency: Distribution::from_seconds(&mut send, LATENCY_BOUNDS_S),
        timeline,
        checks: vec![
            Check { name: "no tier violations".into(), passed: true, detail: "0 sends beyond a tier".into() },
            Check { name: "every job has a result".into(), passed: true, detail: "3996 of 3996".into() },
        ],
        engine: Some(EngineCost { cpu_s: 2.5, cpu_us_per_job: 625.0, peak_rss_bytes: 96 << 20 }),
        funnel: Some(Funnel {
            records: 9_980,
            repeated: 40,
            by_status: counts(&[("sent", 3_990), ("delivered", 3_900), ("read", 1_950), ("failed", 90)]),
            failed_by_code: counts(&[("131026", 85), ("131049", 5)]),
            sent_jobs: 3_990,
            sent_jobs_with_sent_status: 3_990,
            sent_jobs_settled: 3_990,
            unmatched: 0,
            posted_by_simulator: 9_980,
            waited_s: 3.2,
            grace_s: 60.0,
        }),
    }
}

/// The SVG colour (as plotters writes it) of the i-th series.
fn palette(i: usize) -> String {
    let c = charts::series_color(i);
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

/// The points of every `<polyline>` stroked in `color`.
fn polylines(doc: &roxmltree::Document<'_>, color: &str) -> Vec<Vec<(f64, f64)>> {
    doc.descendants()
        .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke") == Some(color))
        .map(|n| {
            n.attribute("points")
                .unwrap_or("")
                .split_whitespace()
                .map(|p| {
                    let (x, y) = p.split_once(',').unwrap();
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect()
        })
        .collect()
}

fn texts(doc: &roxmltree::Document<'_>) -> String {
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn json_round_trips_with_the_infinite_bucket() {
    let report = report();
    let json = serde_json::to_string_pretty(&report).unwrap();
    assert!(json.contains(r#""le_s": "+Inf""#), "{json}");
    let back: CapacityReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back, report);
    assert_eq!(back.job_latency.buckets.last().unwrap().le_s, f64::INFINITY);
    assert_eq!(back.job_latency.overflow(), 1);
}

#[test]
fn an_infinite_bound_written_as_null_reads_back() {
    let b: Bucket = serde_json::from_str(r#"{"le_s": null, "count": 3}"#).unwrap();
    assert_eq!(b.le_s, f64::INFINITY);
    let b: Bucket = serde_json::from_str(r#"{"le_s": 2, "count": 3}"#).unwrap();
    assert_eq!(b.le_s, 2.0);
    assert!(serde_json::from_str::<Bucket>(r#"{"le_s": "soon", "count": 3}"#).is_err());
}

#[test]
fn throughput_chart_has_a_line_and_a_tier_per_number() {
    let svg = report().throughput_svg().unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    for (i, (id, tier)) in NUMBERS.iter().enumerate() {
        let lines = polylines(&doc, &palette(i));
        // The data line: one point per sample.
        assert_eq!(lines.iter().filter(|l| l.len() == 10).count(), 1, "{id}");
        // The tier: horizontal dashes at one height, left of the legend.
        let mut dash_heights: Vec<f64> = lines
            .iter()
            .filter(|l| l.len() == 2 && l[0].1 == l[1].1 && l[1].0 < 650.0)
            .map(|l| l[0].1)
            .collect();
        assert!(dash_heights.len() >= 3, "{id}: {dash_heights:?}");
        dash_heights.dedup();
        assert_eq!(dash_heights.len(), 1, "{id}: {dash_heights:?}");
        assert!(texts(&doc).contains(&format!("{id} (tier {tier}/s)")));
    }
}

#[test]
fn throughput_chart_with_many_numbers_plots_the_top_and_the_total() {
    let mut r = report();
    r.numbers = (0..25)
        .map(|i| NumberReport {
            phone_number_id: format!("1000{i:02}"),
            tier: 80,
            written: 10,
            sent: 10,
            failed: 0,
            achieved_mps: 1.0,
            max_in_any_1s_window: 1,
        })
        .collect();
    for s in &mut r.timeline {
        s.sent_by_number = (0..25).map(|i| (format!("1000{i:02}"), i)).collect();
    }
    let svg = r.throughput_svg().unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let text = texts(&doc);
    assert!(text.contains("top 8 of 25 numbers"), "{text}");
    assert!(text.contains("all 25: tiers 2000/s, right axis"), "{text}");
    assert!(text.contains("100024 (tier 80/s)"), "{text}");
    assert!(!text.contains("100000 (tier"), "{text}");
    let data_lines = doc
        .descendants()
        .filter(|n| {
            n.has_tag_name("polyline")
                && n.attribute("points").is_some_and(|p| p.split_whitespace().count() == 10)
        })
        .count();
    assert_eq!(data_lines, 9);
}

#[test]
fn latency_chart_shows_both_distributions_with_quantiles() {
    let r = report();
    let svg = r.latency_svg().unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let text = texts(&doc);
    for want in [
        "Job latency",
        "Send latency",
        &format!("p50 {}", fmt_secs(r.job_latency.p50_s)),
        &format!("p99 {}", fmt_secs(r.send_latency.p99_s)),
        "1 above the last bound",
    ] {
        assert!(text.contains(want), "{want:?} not in {text}");
    }
    let bars = doc.descendants().filter(|n| n.has_tag_name("rect")).count();
    let non_empty: usize = [&r.job_latency, &r.send_latency]
        .iter()
        .map(|d| d.buckets.iter().filter(|b| b.count > 0).count())
        .sum();
    assert!(bars >= non_empty, "{bars} rects for {non_empty} buckets");
}

#[test]
fn errors_chart_has_a_line_per_code() {
    let svg = report().errors_svg().unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    for i in 0..3 {
        let lines = polylines(&doc, &palette(i));
        assert_eq!(lines.iter().filter(|l| l.len() == 10).count(), 1);
    }
    let text = texts(&doc);
    assert!(text.contains("130429 (9 in all)"), "{text}");
    assert!(text.contains("reset (1 in all)"), "{text}");
    assert!(!text.contains("no errors"), "{text}");
}

#[test]
fn errors_chart_without_errors_says_so() {
    let mut r = report();
    for s in &mut r.timeline {
        s.errors_by_code.clear();
    }
    let svg = r.errors_svg().unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    assert!(texts(&doc).contains("no errors"));
}

#[test]
fn charts_of_an_empty_report_still_render() {
    let mut r = report();
    r.timeline.clear();
    r.numbers.clear();
    r.job_latency = Distribution::from_seconds(&mut [], LATENCY_BOUNDS_S);
    r.send_latency = Distribution::from_buckets(&[], None);
    for svg in [r.throughput_svg(), r.latency_svg(), r.errors_svg()] {
        roxmltree::Document::parse(&svg.unwrap()).unwrap();
    }
}

#[test]
fn markdown_has_the_tables_and_the_verdict() {
    let mut r = report();
    let md = r.markdown();
    for want in [
        "# Capacity run `tiers`: PASSED",
        "```sh\nwabulk loadgen run loadtest/scenarios/tiers.toml\n```",
        "Three numbers at different tiers | one pipe.",
        "| 106540352242922 | 80 | 1000 | 990 | 2 | 75.5 | 94.4% | 80 |",
        "| 106540352242923 | 20 | 1000 | 990 | 2 | 20.0 | 100.0% | 20 |",
        "| 106540352242924 | 1000 | 1000 | 990 | 2 | 355.0 | 35.5% | 1000 |",
        "| result: sent | 3990 |\n| result: failed | 6 |",
        "| error `130429` | 9 |",
        "| connection resets | 1 |",
        "| sustained rate (every whole second of sending) | 450 messages/s over 8 s |",
        "| engine CPU (its own process) | 2.50 s, 625.0 µs per record written |",
        "| engine peak RSS | 96 MiB |",
        "| job (received → finished) | 8 | 500 ms | 75 s | 75 s | 75 s |",
        "- ✔ **no tier violations**: 0 sends beyond a tier",
        "## Checks: PASSED",
        "![throughput](throughput.svg)",
        "![latency](latency.svg)",
        "![errors](errors.svg)",
    ] {
        assert!(md.contains(want), "{want:?} not in\n{md}");
    }

    r.checks[1].passed = false;
    assert!(!r.passed());
    let md = r.markdown();
    assert!(md.contains("# Capacity run `tiers`: FAILED"));
    assert!(md.contains("- ✘ **every job has a result**"));
}

#[test]
fn the_funnel_is_in_the_markdown_and_its_line_and_absent_without_webhooks() {
    let mut r = report();
    let md = r.markdown();
    for want in [
        "## Delivery funnel",
        "| jobs sent (results) | 3990 |  |",
        "| status `sent` | 3990 | 100.0% of jobs sent |",
        "| status `delivered` | 3900 | 97.7% of `sent` |",
        "| status `read` | 1950 | 50.0% of `delivered` |",
        "| status `failed` | 90 | 2.3% of `sent` |",
        "| `131026` | 85 |",
        "waited 3.2 s after its last result",
    ] {
        assert!(md.contains(want), "{want:?} not in\n{md}");
    }
    let funnel = r.funnel.as_ref().unwrap();
    assert_eq!(
        funnel.summary(),
        "sent 3990 → delivered 3900 (97.7%) → read 1950 (50.0%); failed 90 (2.3%): 131026 × 85, 131049 × 5"
    );
    assert_eq!(Funnel::default().summary(), "sent 0 → delivered 0 (–) → read 0 (–); failed 0 (–)");

    // Reports of runs without the receiver, and older ones, have none.
    r.funnel = None;
    assert!(!r.markdown().contains("Delivery funnel"));
    let json = serde_json::to_string(&r).unwrap();
    assert!(!json.contains("funnel"), "{json}");
    assert_eq!(serde_json::from_str::<CapacityReport>(&json).unwrap(), r);
}

#[test]
fn percent_of_tier_is_zero_without_a_tier() {
    let mut n = report().numbers.remove(0);
    assert!((n.percent_of_tier() - 94.375).abs() < 1e-9);
    n.tier = 0;
    assert_eq!(n.percent_of_tier(), 0.0);
}

#[test]
fn write_to_creates_the_directory_and_every_file() {
    let dir = std::env::temp_dir().join(format!("wabulk-report-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let target = dir.join("nested/run");
    let r = report();
    let paths = r.write_to(&target).unwrap();
    let names: Vec<_> = paths.iter().map(|p| p.file_name().unwrap().to_str().unwrap()).collect();
    assert_eq!(names, REPORT_FILES);
    for path in &paths {
        assert!(path.starts_with(&target));
        let text = std::fs::read_to_string(path).unwrap();
        if path.extension().unwrap() == "svg" {
            roxmltree::Document::parse(&text).unwrap();
        }
    }
    let back: CapacityReport = serde_json::from_str(&std::fs::read_to_string(&paths[0]).unwrap()).unwrap();
    assert_eq!(back, r);

    // A file where the directory should be: the error names that path.
    let blocked = dir.join("file");
    std::fs::write(&blocked, "").unwrap();
    let err = r.write_to(&blocked.join("run")).unwrap_err();
    assert!(matches!(&err, ReportError::CreateDir { path, .. } if *path == blocked.join("run")), "{err:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn machine_reads_proc_best_effort() {
    let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n";
    assert_eq!(cpu_model(cpuinfo).as_deref(), Some("Intel(R) Xeon(R) CPU @ 2.20GHz"));
    assert_eq!(cpu_model("processor : 0\n"), None);
    let gib = memory_gib("MemTotal:       25165824 kB\nMemFree: 1 kB\n").unwrap();
    assert!((gib - 24.0).abs() < 1e-9);
    assert_eq!(memory_gib("nothing"), None);
    let m = Machine::this();
    assert!(m.cpus >= 1);
    assert!(!m.cpu_model.is_empty());
}

#[test]
fn fmt_secs_reads_well() {
    assert_eq!(fmt_secs(0.0052), "5.2 ms");
    assert_eq!(fmt_secs(0.5123), "512 ms");
    assert_eq!(fmt_secs(0.25), "250 ms");
    assert_eq!(fmt_secs(1.0), "1 s");
    assert_eq!(fmt_secs(2.349), "2.35 s");
    assert_eq!(fmt_secs(41.23), "41.2 s");
    assert_eq!(fmt_secs(0.0), "0 ms");
}

#[test]
fn from_seconds_nearest_rank() {
    // Sorted: 1..=10 tenths of a second. Nearest rank: p50 = 5th, p90 = 9th,
    // p99 = ceil(9.9) = 10th.
    let mut values = [0.7, 0.1, 1.0, 0.3, 0.5, 0.2, 0.9, 0.4, 0.8, 0.6, f64::NAN];
    let d = Distribution::from_seconds(&mut values, &[0.25, 0.5, 0.05]);
    assert_eq!(d.count, 10);
    assert_eq!((d.p50_s, d.p90_s, d.p99_s, d.max_s), (0.5, 0.9, 1.0, 1.0));
    let buckets: Vec<(f64, u64)> = d.buckets.iter().map(|b| (b.le_s, b.count)).collect();
    assert_eq!(buckets, [(0.05, 0), (0.25, 2), (0.5, 3), (f64::INFINITY, 5)]);

    let one = Distribution::from_seconds(&mut [0.3], LATENCY_BOUNDS_S);
    assert_eq!((one.p50_s, one.p99_s, one.max_s), (0.3, 0.3, 0.3));
    let none = Distribution::from_seconds(&mut [], LATENCY_BOUNDS_S);
    assert_eq!((none.count, none.p50_s, none.max_s), (0, 0.0, 0.0));
    assert_eq!(none.buckets.len(), LATENCY_BOUNDS_S.len() + 1);
}

#[test]
fn from_buckets_interpolates_like_histogram_quantile() {
    // 100 observations: 20 ≤ 0.1 s, 60 in (0.1, 0.5], 15 in (0.5, 1], 5 above.
    let cumulative = [(0.1, 20), (0.5, 80), (1.0, 95), (f64::INFINITY, 100)];
    let d = Distribution::from_buckets(&cumulative, None);
    assert_eq!(d.count, 100);
    // Rank 50 lies 30 of 60 into (0.1, 0.5]: 0.1 + 0.4 × 0.5.
    assert!((d.p50_s - 0.3).abs() < 1e-12, "{}", d.p50_s);
    // Rank 90 lies 10 of 15 into (0.5, 1]: 0.5 + 0.5 × 2/3.
    assert!((d.p90_s - (0.5 + 0.5 * 10.0 / 15.0)).abs() < 1e-12, "{}", d.p90_s);
    // Rank 99 is in +Inf: the largest finite bound.
    assert_eq!(d.p99_s, 1.0);
    assert_eq!(d.max_s, 1.0);
    let counts: Vec<u64> = d.buckets.iter().map(|b| b.count).collect();
    assert_eq!(counts, [20, 60, 15, 5]);

    // Rank 10 in the first bucket interpolates from 0; a known max caps.
    let d = Distribution::from_buckets(&[(0.2, 100), (1.0, 100)], Some(0.15));
    assert!((d.p50_s - 0.1).abs() < 1e-12, "{}", d.p50_s);
    assert_eq!((d.p90_s, d.p99_s, d.max_s), (0.15, 0.15, 0.15));
    assert_eq!(d.buckets.last().unwrap().le_s, f64::INFINITY);

    let empty = Distribution::from_buckets(&[(0.1, 0), (f64::INFINITY, 0)], None);
    assert_eq!((empty.count, empty.p50_s, empty.max_s), (0, 0.0, 0.0));
}

proptest! {
    #[test]
    fn from_seconds_quantiles_are_ordered_and_buckets_sum(
        mut values in prop::collection::vec(0.0f64..120.0, 0..300),
    ) {
        let d = Distribution::from_seconds(&mut values, LATENCY_BOUNDS_S);
        prop_assert!(d.p50_s <= d.p90_s && d.p90_s <= d.p99_s && d.p99_s <= d.max_s);
        prop_assert_eq!(d.count, values.len() as u64);
        prop_assert_eq!(d.buckets.iter().map(|b| b.count).sum::<u64>(), d.count);
        // Each bucket holds exactly the values in (previous bound, bound].
        let mut lower = f64::NEG_INFINITY;
        for b in &d.buckets {
            let n = values.iter().filter(|v| **v > lower && **v <= b.le_s).count() as u64;
            prop_assert_eq!(n, b.count);
            lower = b.le_s;
        }
    }

    #[test]
    fn from_buckets_quantiles_are_ordered(
        counts in prop::collection::vec(0u64..50, 1..LATENCY_BOUNDS_S.len() + 1),
    ) {
        let mut total = 0;
        let cumulative: Vec<(f64, u64)> = LATENCY_BOUNDS_S
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&counts)
            .map(|(le, n)| {
                total += n;
                (le, total)
            })
            .collect();
        let d = Distribution::from_buckets(&cumulative, None);
        prop_assert!(d.p50_s <= d.p90_s && d.p90_s <= d.p99_s && d.p99_s <= d.max_s);
        prop_assert_eq!(d.buckets.iter().map(|b| b.count).sum::<u64>(), d.count);
        prop_assert_eq!(d.count, total);
    }
}

#[test]
fn sending_and_peak_rates_come_from_the_timeline() {
    let mut r = report();
    // Sample t sends (70 + t) + 20 + (300 + 10 t) = 390 + 11 t over 1 s.
    let total: u64 = (1..=10).map(|t| 390 + 11 * t).sum();
    assert!((r.sending_rate() - total as f64 / 10.0).abs() < 1e-9);
    assert!((r.peak_rate() - 500.0).abs() < 1e-9);
    // Samples 2 to 9: 390 × 8 + 11 × (2 + … + 9).
    let inner: u64 = (2..=9).map(|t| 390 + 11 * t).sum();
    assert!((r.sustained_rate() - inner as f64 / 8.0).abs() < 1e-9);
    // Idle samples before the first and after the last send do not count,
    // idle ones in between do.
    let template = r.timeline[0].clone();
    let idle = |t_s: f64| Sample { t_s, sent_by_number: BTreeMap::new(), ..template.clone() };
    r.timeline.insert(0, idle(0.0));
    r.timeline.insert(5, idle(4.5));
    r.timeline.push(idle(11.0));
    assert!((r.sending_rate() - total as f64 / 11.0).abs() < 1e-9);
    // The idle sample in between counts, the idle edges do not.
    assert!((r.sustained_rate() - inner as f64 / 9.0).abs() < 1e-9);
    r.timeline.clear();
    assert_eq!((r.sending_rate(), r.peak_rate()), (0.0, 0.0));
}

/// As the runner cuts samples: a sliver of start-up ending at the first
/// acceptance, whole seconds of sending, then the part-second where sending
/// ends. Every whole second counts, the two partial edges do not.
#[test]
fn sustained_rate_is_every_whole_second_of_sending() {
    let template = report().timeline[0].clone();
    let sample = |t_s: f64, interval_s: f64, sent: u64| Sample {
        t_s,
        interval_s,
        sent_by_number: counts(&[(NUMBERS[0].0, sent)]),
        ..template.clone()
    };
    let mut r = report();
    r.timeline = vec![
        sample(1.0, 1.0, 0),
        sample(1.42, 0.42, 3),
        sample(2.42, 1.0, 44_000),
        sample(3.42, 1.0, 56_000),
        sample(4.42, 1.0, 50_000),
        sample(5.42, 1.0, 50_000),
        sample(6.42, 1.0, 9_000),
        sample(7.42, 1.0, 0),
    ];
    assert!((r.steady_seconds() - 4.0).abs() < 1e-9);
    assert!((r.sustained_rate() - 50_000.0).abs() < 1e-9, "{}", r.sustained_rate());
    // One second of sending in all: nothing is steady, the sending rate stands in.
    r.timeline = vec![sample(1.0, 0.5, 3), sample(2.0, 1.0, 900)];
    assert_eq!(r.steady_seconds(), 0.0);
    assert!((r.sustained_rate() - 903.0 / 1.5).abs() < 1e-9);
}
