//! The end-of-run summary on the terminal: the same figures as the report's
//! Markdown, laid out for a console.

use wabulk_loadgen::CapacityReport;

/// Rows of the per-number table; more numbers are summarised.
const MAX_ROWS: usize = 12;

pub fn print_summary(report: &CapacityReport) {
    let valid = report.written - report.malformed;
    let sim = &report.sim;
    println!();
    println!("wabulk {}: {} jobs written, {:.0} s", report.scenario, report.written, report.elapsed_s);
    println!(
        "  results: {} of {valid} valid jobs ({}), duplicates {}",
        report.results,
        report.by_status.iter().map(|(s, n)| format!("{s} {n}")).collect::<Vec<_>>().join(", "),
        report.duplicate_results
    );
    println!("  dead letters: {} of {} malformed records", report.dead_letters, report.malformed);
    if let Some(funnel) = &report.funnel {
        println!("  statuses: {}", funnel.summary());
        println!(
            "    {} records read from the statuses topic ({} repeats); of {} jobs sent, {} with their `sent` \
             status and {} with a final one, {:.1} s after the last result",
            funnel.records,
            funnel.repeated,
            funnel.sent_jobs,
            funnel.sent_jobs_with_sent_status,
            funnel.sent_jobs_settled,
            funnel.waited_s
        );
    }
    println!();
    println!(
        "  {:<18} {:>6} {:>8} {:>8} {:>7} {:>13} {:>10} {:>12}",
        "number", "tier", "written", "sent", "failed", "achieved/s", "of tier", "max in 1 s"
    );
    // Many numbers: the slowest and fastest few, the rest are in the report.
    let mut numbers: Vec<_> = report.numbers.iter().collect();
    let hidden = numbers.len().saturating_sub(MAX_ROWS);
    if hidden > 0 {
        numbers.sort_by(|a, b| a.percent_of_tier().total_cmp(&b.percent_of_tier()));
        numbers.drain(MAX_ROWS / 2..numbers.len() - MAX_ROWS / 2);
    }
    for n in numbers {
        println!(
            "  {:<18} {:>6} {:>8} {:>8} {:>7} {:>13.1} {:>9.1}% {:>12}",
            n.phone_number_id,
            n.tier,
            n.written,
            n.sent,
            n.failed,
            n.achieved_mps,
            n.percent_of_tier(),
            n.max_in_any_1s_window
        );
    }
    if hidden > 0 {
        println!("  ({hidden} numbers between the slowest and fastest above are in the report)");
    }
    println!(
        "  throughput: {:.0} messages/s from the first send to the last, {:.0} sustained over {:.0} whole \
         seconds, best second {:.0}",
        report.sending_rate(),
        report.sustained_rate(),
        report.steady_seconds(),
        report.peak_rate()
    );
    if let Some(engine) = &report.engine {
        println!(
            "  engine process: {:.1} µs CPU per job ({:.2} s for {} records), peak RSS {:.0} MiB",
            engine.cpu_us_per_job,
            engine.cpu_s,
            report.written,
            engine.peak_rss_mib()
        );
    }
    println!();
    println!(
        "  latency: job p50 {:.3} s, p99 {:.3} s; request p50 {:.3} s, p99 {:.3} s",
        report.job_latency.p50_s,
        report.job_latency.p99_s,
        report.send_latency.p50_s,
        report.send_latency.p99_s
    );
    println!(
        "  simulator: {} requests, violations phone {} pair {} waba {}, job ids accepted twice {}",
        sim.requests, sim.violations_phone, sim.violations_pair, sim.violations_waba, sim.duplicate_sends
    );
    for check in report.checks.iter().filter(|c| !c.passed) {
        println!("  failed: {}: {}", check.name, check.detail);
    }
    println!("  {}", if report.passed() { "PASSED" } else { "FAILED" });
}
