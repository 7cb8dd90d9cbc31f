//! `report.md`: the capacity report as a person reads it, with tables
//! GitHub renders and the charts linked by file name (they sit beside it).

use std::fmt::Write;

use super::funnel::percent;
use super::{fmt_secs, CapacityReport, Distribution, Funnel};

pub(super) fn render(r: &CapacityReport) -> String {
    let verdict = verdict(r.passed());
    let mut md = String::new();
    // Writing to a String cannot fail: the `fmt::Result`s are ignored below.
    let _ = writeln!(md, "# Capacity run `{}`: {verdict}\n", r.scenario);
    if !r.description.trim().is_empty() {
        let _ = writeln!(md, "{}\n", r.description.trim());
    }
    let _ = writeln!(md, "```sh\n{}\n```\n", r.command);
    let m = &r.machine;
    let _ = writeln!(md, "- **Started:** {}", r.started_at);
    let _ = writeln!(md, "- **Machine:** {} CPUs, {}, {:.1} GiB memory", m.cpus, m.cpu_model, m.memory_gib);
    let _ = writeln!(md, "- **Broker:** {}", r.broker);
    let _ = writeln!(md, "- **Graph API latency:** {}", r.latency);
    let _ = writeln!(md, "- **Faults:** {}\n", r.faults);

    md.push_str("## Totals\n\n| | |\n|---|---:|\n");
    let mut row = |k: &str, v: String| {
        let _ = writeln!(md, "| {} | {v} |", cell(k));
    };
    row("records written", r.written.to_string());
    row("malformed", r.malformed.to_string());
    row("jobs with a result", r.results.to_string());
    // The engine's statuses in a fixed order, success first, then any other.
    let known = ["sent", "failed", "expired", "rejected"];
    let statuses = known
        .iter()
        .filter_map(|k| r.by_status.get_key_value(*k))
        .chain(r.by_status.iter().filter(|(k, _)| !known.contains(&k.as_str())));
    for (status, n) in statuses {
        row(&format!("result: {status}"), n.to_string());
    }
    row("duplicate results", r.duplicate_results.to_string());
    row("dead letters", r.dead_letters.to_string());
    row("sending rate (first to last send)", format!("{:.0} messages/s", r.sending_rate()));
    row(
        "sustained rate (every whole second of sending)",
        format!("{:.0} messages/s over {:.0} s", r.sustained_rate(), r.steady_seconds()),
    );
    row("peak rate (best sample)", format!("{:.0} messages/s", r.peak_rate()));
    row("elapsed", format!("{:.1} s", r.elapsed_s));
    if let Some(engine) = &r.engine {
        row(
            "engine CPU (its own process)",
            format!("{:.2} s, {:.1} µs per record written", engine.cpu_s, engine.cpu_us_per_job),
        );
        row("engine peak RSS", format!("{:.0} MiB", engine.peak_rss_mib()));
    }

    md.push_str(
        "\n## Per number\n\n\
         | number | tier/s | written | sent | failed | achieved/s | % of tier | max in any 1 s |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for n in &r.numbers {
        let (tier, percent) = if n.tier == 0 {
            ("–".to_string(), "–".to_string())
        } else {
            (n.tier.to_string(), format!("{:.1}%", n.percent_of_tier()))
        };
        let _ = writeln!(
            md,
            "| {} | {tier} | {} | {} | {} | {:.1} | {percent} | {} |",
            cell(&n.phone_number_id),
            n.written,
            n.sent,
            n.failed,
            n.achieved_mps,
            n.max_in_any_1s_window
        );
    }

    if let Some(funnel) = &r.funnel {
        funnel_section(&mut md, funnel);
    }

    let s = &r.sim;
    md.push_str("\n## Graph API simulator\n\n| | |\n|---|---:|\n");
    let mut row = |k: &str, v: u64| {
        let _ = writeln!(md, "| {} | {v} |", cell(k));
    };
    row("requests", s.requests);
    row("accepted", s.accepted);
    row("duplicate sends", s.duplicate_sends);
    row("violations: number tier (1 s window)", s.violations_phone);
    row("violations: pair rule", s.violations_pair);
    row("violations: WABA hourly cap", s.violations_waba);
    row("hangs", s.hangs);
    row("connection resets", s.resets);
    row("GOAWAYs", s.goaways);
    for (code, n) in &s.errors_by_code {
        row(&format!("error `{code}`"), *n);
    }

    md.push_str(
        "\n## Latency\n\n\
         | | count | p50 | p90 | p99 | max |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    latency_row(&mut md, "job (received → finished)", &r.job_latency);
    latency_row(&mut md, "send (one Graph API request)", &r.send_latency);

    let _ = writeln!(md, "\n## Checks: {verdict}\n");
    if r.checks.is_empty() {
        md.push_str("No checks were made.\n");
    }
    for c in &r.checks {
        let mark = if c.passed { "✔" } else { "✘" };
        let _ = writeln!(md, "- {mark} **{}**: {}", c.name, c.detail);
    }

    md.push_str(
        "\n## Charts\n\n\
         ![throughput](throughput.svg)\n\n\
         ![latency](latency.svg)\n\n\
         ![errors](errors.svg)\n",
    );
    md
}

/// Meta's statuses after the sends: the funnel, then failures by code.
fn funnel_section(md: &mut String, f: &Funnel) {
    md.push_str(
        "\n## Delivery funnel\n\n\
         Meta's statuses of the messages sent, as the webhook receiver wrote them to the statuses \
         topic and the run read them back, each (message, status) once.\n\n\
         | | count | share |\n|---|---:|---:|\n",
    );
    let mut row = |k: &str, n: u64, share: String| {
        let _ = writeln!(md, "| {} | {n} | {share} |", cell(k));
    };
    row("jobs sent (results)", f.sent_jobs, String::new());
    let sent_share = (f.sent_jobs > 0).then(|| f.count("sent") as f64 / f.sent_jobs as f64);
    row("status `sent`", f.count("sent"), format!("{} of jobs sent", percent(sent_share)));
    row("status `delivered`", f.count("delivered"), format!("{} of `sent`", percent(f.delivered_share())));
    row("status `read`", f.count("read"), format!("{} of `delivered`", percent(f.read_share())));
    row("status `failed`", f.count("failed"), format!("{} of `sent`", percent(f.failed_share())));
    let known = ["sent", "delivered", "read", "failed"];
    for (status, n) in f.by_status.iter().filter(|(k, _)| !known.contains(&k.as_str())) {
        row(&format!("status `{status}`"), *n, String::new());
    }
    row("records read (Meta's repeats included)", f.records, String::new());
    row("statuses posted by the simulator (answered 2xx)", f.posted_by_simulator, String::new());
    row("statuses of jobs not sent in this run", f.unmatched, String::new());
    if !f.failed_by_code.is_empty() {
        md.push_str("\n| failed: error code | errors |\n|---|---:|\n");
        for (code, n) in &f.failed_by_code {
            let _ = writeln!(md, "| `{}` | {n} |", cell(code));
        }
    }
    let _ = writeln!(
        md,
        "\nThe run waited {:.1} s after its last result for the statuses still due (at most {:.0} s); \
         `read` counts the reads Meta had reported by then.",
        f.waited_s, f.grace_s
    );
}

fn verdict(passed: bool) -> &'static str {
    if passed {
        "PASSED"
    } else {
        "FAILED"
    }
}

fn latency_row(md: &mut String, name: &str, d: &Distribution) {
    if d.is_empty() {
        let _ = writeln!(md, "| {name} | 0 | – | – | – | – |");
        return;
    }
    let _ = writeln!(
        md,
        "| {name} | {} | {} | {} | {} | {} |",
        d.count,
        fmt_secs(d.p50_s),
        fmt_secs(d.p90_s),
        fmt_secs(d.p99_s),
        fmt_secs(d.max_s)
    );
}

/// Text safe inside a table cell: a `|` would end the cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}
