//! The report's SVG charts, drawn with plotters' SVG backend into strings:
//! throughput per number against its tier, the latency histograms, and
//! errors per second by code. Legends sit in a column right of the plot so
//! they never hide a line.
//!
//! Text is laid out with plotters' built-in size estimate (no `ttf` or
//! `ab_glyph` feature): the SVG holds `<text>` elements that the browser
//! renders in its own sans-serif, so no system font library or bundled font
//! file is needed, and the estimate only has to be roughly right for
//! spacing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{fmt_secs, CapacityReport, Distribution};

/// Why a chart could not be drawn (plotters' error, as text: its error type
/// is generic over the backend).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ChartError(String);

impl<E: std::error::Error + Send + Sync> From<DrawingAreaErrorKind<E>> for ChartError {
    fn from(e: DrawingAreaErrorKind<E>) -> Self {
        Self(e.to_string())
    }
}

const SIZE: (u32, u32) = (900, 450);
const LEGEND_WIDTH: u32 = 250;
const FONT: &str = "sans-serif";

/// More series than this and a chart is unreadable: plot the top
/// [`TOP_SERIES`] and a total instead.
const MAX_SERIES: usize = 10;
const TOP_SERIES: usize = 8;

/// d3's category10: distinct on white even as 2 px lines.
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];
const TOTAL_COLOR: RGBColor = BLACK;
const MUTED: RGBColor = RGBColor(0x60, 0x60, 0x60);
const GRID: RGBColor = RGBColor(0xdd, 0xdd, 0xdd);

/// The colour of the i-th series of a time chart (the total's is black).
pub(super) fn series_color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// One line of a time chart.
struct Line {
    label: String,
    color: RGBColor,
    /// (seconds since start, per second).
    points: Vec<(f64, f64)>,
    /// A limit drawn dashed across the chart in the line's colour.
    level: Option<f64>,
    /// Drawn against the right-hand axis: a total would flatten the
    /// per-number lines on a shared one.
    right: bool,
}

pub(super) fn throughput(r: &CapacityReport) -> Result<String, ChartError> {
    let tiers: BTreeMap<&str, u32> = r.numbers.iter().map(|n| (n.phone_number_id.as_str(), n.tier)).collect();
    // Numbers in report order, then any only the timeline knows.
    let mut ids: Vec<&str> = r.numbers.iter().map(|n| n.phone_number_id.as_str()).collect();
    let extra: BTreeSet<&str> = r
        .timeline
        .iter()
        .flat_map(|s| s.sent_by_number.keys().map(String::as_str))
        .filter(|id| !tiers.contains_key(id))
        .collect();
    ids.extend(extra);

    let sent = |id: &str| -> u64 { r.timeline.iter().filter_map(|s| s.sent_by_number.get(id)).sum() };
    let mut shown = ids.clone();
    let top = shown.len() > MAX_SERIES;
    if top {
        // Stable: ties keep report order.
        shown.sort_by_cached_key(|id| std::cmp::Reverse(sent(id)));
        shown.truncate(TOP_SERIES);
    }

    let mut lines: Vec<Line> = shown
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let tier = tiers.get(id).copied().filter(|t| *t > 0);
            Line {
                label: match tier {
                    Some(t) => format!("{id} (tier {t}/s)"),
                    None => format!("{id} (tier unknown)"),
                },
                color: series_color(i),
                points: rates(r, |s| s.sent_by_number.get(*id).copied().unwrap_or(0)),
                level: tier.map(f64::from),
                right: false,
            }
        })
        .collect();
    if top {
        let tier_sum: u64 = r.numbers.iter().map(|n| u64::from(n.tier)).sum();
        lines.push(Line {
            label: format!("all {}: tiers {tier_sum}/s, right axis", ids.len()),
            color: TOTAL_COLOR,
            points: rates(r, |s| s.sent_by_number.values().sum()),
            level: (tier_sum > 0).then_some(tier_sum as f64),
            right: true,
        });
    }
    let title = if top {
        format!("Accepted messages/s: top {TOP_SERIES} of {} numbers by sent, and all of them", ids.len())
    } else {
        "Accepted messages/s per number, against its tier".to_string()
    };
    let legend_header = [("solid: accepted/s", false), ("dashed: tier (limit)", true)];
    time_chart(&title, "messages/s", &lines, &legend_header, ids.is_empty().then_some("no numbers"), end_s(r))
}

pub(super) fn errors(r: &CapacityReport) -> Result<String, ChartError> {
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    for s in &r.timeline {
        for (code, n) in &s.errors_by_code {
            *totals.entry(code.as_str()).or_default() += n;
        }
    }
    totals.retain(|_, n| *n > 0);
    let mut codes: Vec<&str> = totals.keys().copied().collect();
    let others = codes.len() > MAX_SERIES;
    if others {
        codes.sort_by_key(|c| std::cmp::Reverse(totals[c]));
        codes.truncate(TOP_SERIES);
    }

    let mut lines: Vec<Line> = codes
        .iter()
        .enumerate()
        .map(|(i, code)| Line {
            label: format!("{code} ({} in all)", totals[code]),
            color: series_color(i),
            points: rates(r, |s| s.errors_by_code.get(*code).copied().unwrap_or(0)),
            level: None,
            right: false,
        })
        .collect();
    if others {
        let rest: u64 = totals.iter().filter(|(c, _)| !codes.contains(c)).map(|(_, n)| n).sum();
        lines.push(Line {
            label: format!("{} other codes ({rest} in all)", totals.len() - codes.len()),
            color: TOTAL_COLOR,
            points: rates(r, |s| {
                s.errors_by_code.iter().filter(|(c, _)| !codes.contains(&c.as_str())).map(|(_, n)| n).sum()
            }),
            level: None,
            right: false,
        });
    }
    let title = if totals.is_empty() {
        "Simulator errors per second by code: no errors".to_string()
    } else {
        "Simulator errors per second by code".to_string()
    };
    time_chart(&title, "errors/s", &lines, &[], totals.is_empty().then_some("no errors"), end_s(r))
}

/// `count(sample) / interval_s` at each sample's end; samples without a
/// length are skipped rather than divided by zero.
fn rates(r: &CapacityReport, count: impl Fn(&super::Sample) -> u64) -> Vec<(f64, f64)> {
    r.timeline
        .iter()
        .filter(|s| s.interval_s > 0.0)
        .map(|s| (s.t_s, count(s) as f64 / s.interval_s))
        .collect()
}

fn end_s(r: &CapacityReport) -> f64 {
    r.timeline.iter().map(|s| s.t_s).fold(r.elapsed_s, f64::max).max(1.0)
}

fn time_chart(
    title: &str,
    y_desc: &str,
    lines: &[Line],
    legend_header: &[(&str, bool)],
    empty_note: Option<&str>,
    end_s: f64,
) -> Result<String, ChartError> {
    let top = |right: bool| {
        let top = lines
            .iter()
            .filter(|l| l.right == right)
            .flat_map(|l| l.points.iter().map(|p| p.1).chain(l.level))
            .fold(0.0, f64::max);
        // Headroom so a line at its tier is not drawn on the frame.
        if top > 0.0 {
            top * 1.1
        } else {
            1.0
        }
    };
    let has_right = lines.iter().any(|l| l.right);

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, (FONT, 20))?;
        let (plot, legend) = root.split_horizontally(SIZE.0 - LEGEND_WIDTH);

        // The secondary coordinates must be set before the primary mesh is
        // drawn: they take over the right label area. Unused, they cost
        // nothing.
        let mut chart = ChartBuilder::on(&plot)
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .right_y_label_area_size(if has_right { 60 } else { 0 })
            .build_cartesian_2d(0.0..end_s, 0.0..top(false))?
            .set_secondary_coord(0.0..end_s, 0.0..top(true));
        chart
            .configure_mesh()
            .x_desc("seconds since start")
            .y_desc(y_desc)
            .label_style((FONT, 14))
            .x_label_formatter(&|v| fmt_axis(*v))
            .y_label_formatter(&|v| fmt_axis(*v))
            .bold_line_style(GRID)
            .light_line_style(TRANSPARENT)
            .draw()?;
        if has_right {
            chart
                .configure_secondary_axes()
                .y_desc(format!("{y_desc}, all"))
                .label_style((FONT, 14))
                .y_label_formatter(&|v| fmt_axis(*v))
                .draw()?;
        }
        for line in lines {
            let level = line.level.map(|level| tier_line(line, level, end_s));
            if line.right {
                if let Some(level) = level {
                    chart.draw_secondary_series(level)?;
                }
                chart.draw_secondary_series(data_line(line))?;
            } else {
                if let Some(level) = level {
                    chart.draw_series(level)?;
                }
                chart.draw_series(data_line(line))?;
            }
        }
        if let Some(note) = empty_note {
            let area = chart.plotting_area();
            let (w, h) = area.dim_in_pixel();
            area.strip_coord_spec().draw(&Text::new(
                note,
                (w as i32 / 2, h as i32 / 2),
                (FONT, 28).into_font().color(&MUTED).pos(Pos::new(HPos::Center, VPos::Center)),
            ))?;
        }

        draw_legend(&legend, legend_header, lines)?;
        root.present()?;
    }
    Ok(svg)
}

fn data_line(line: &Line) -> LineSeries<SVGBackend<'static>, (f64, f64)> {
    LineSeries::new(line.points.iter().copied(), line.color.stroke_width(2))
}

fn tier_line(
    line: &Line,
    level: f64,
    end_s: f64,
) -> DashedLineSeries<std::array::IntoIter<(f64, f64), 2>, i32> {
    DashedLineSeries::new([(0.0, level), (end_s, level)], 8, 6, line.color.stroke_width(2))
}

/// Axis ticks without float noise or a useless ".0": "0", "0.5", "1000".
fn fmt_axis(v: f64) -> String {
    let text = format!("{v:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The legend column: a header explaining line styles, then one row per
/// line with a sample of its colour.
fn draw_legend(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    header: &[(&str, bool)],
    lines: &[Line],
) -> Result<(), ChartError> {
    const ROW: i32 = 20;
    const SAMPLE: i32 = 24;
    let text = |s: &str, x: i32, y: i32, color: &RGBColor| {
        Text::new(
            s.to_string(),
            (x, y),
            (FONT, 13).into_font().color(color).pos(Pos::new(HPos::Left, VPos::Center)),
        )
    };
    let mut y = 30;
    for (label, dashed) in header {
        let sample = [(0, y), (SAMPLE, y)];
        if *dashed {
            area.draw(&DashedPathElement::new(sample, 5, 3, MUTED.stroke_width(1)))?;
        } else {
            area.draw(&PathElement::new(sample, MUTED.stroke_width(2)))?;
        }
        area.draw(&text(label, SAMPLE + 6, y, &MUTED))?;
        y += ROW;
    }
    if !header.is_empty() {
        y += ROW / 2;
    }
    for line in lines {
        area.draw(&PathElement::new([(0, y), (SAMPLE, y)], line.color.stroke_width(2)))?;
        area.draw(&text(&line.label, SAMPLE + 6, y, &BLACK))?;
        y += ROW;
    }
    Ok(())
}

pub(super) fn latency(r: &CapacityReport) -> Result<String, ChartError> {
    let panels = [
        ("Job latency (received → finished)", "jobs", &r.job_latency),
        ("Send latency (one Graph API request)", "requests", &r.send_latency),
    ];
    // One x range for both panels, so they compare at a glance.
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for (_, _, d) in &panels {
        for (start, end, _) in bars(d) {
            lo = lo.min(start);
            hi = hi.max(end);
        }
    }
    if !(lo.is_finite() && hi > lo) {
        (lo, hi) = (0.001, 100.0);
    }

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root
            .titled("Latency histograms (log scale; the last bar is above the largest bound)", (FONT, 20))?;
        let areas = root.split_evenly((1, 2));
        for ((caption, unit, d), (area, color)) in
            panels.iter().zip(areas.iter().zip([series_color(0), series_color(1)]))
        {
            histogram(area, caption, unit, d, (lo, hi), color)?;
        }
        root.present()?;
    }
    Ok(svg)
}

/// A distribution's buckets as bars on a log axis: `(start, end, count)`.
/// The first bucket starts one step below its bound (a log axis has no 0);
/// the +Inf bucket is drawn one step above the largest bound. Buckets
/// bounded at or below 0 cannot be shown on a log axis and are left out.
fn bars(d: &Distribution) -> Vec<(f64, f64, u64)> {
    let finite: Vec<f64> =
        d.buckets.iter().map(|b| b.le_s).filter(|le| le.is_finite() && *le > 0.0).collect();
    let step = match finite.as_slice() {
        [] => return vec![],
        [_] => 10.0,
        [a, b, ..] => b / a,
    };
    let last = finite[finite.len() - 1];
    let mut start = finite[0] / step;
    let mut out = Vec::with_capacity(d.buckets.len());
    for b in &d.buckets {
        let end = if b.le_s.is_finite() { b.le_s } else { last * 2.0 };
        if end > 0.0 && end > start {
            out.push((start, end, b.count));
        }
        start = end.max(start);
    }
    out
}

fn histogram(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    caption: &str,
    unit: &str,
    d: &Distribution,
    (lo, hi): (f64, f64),
    color: RGBColor,
) -> Result<(), ChartError> {
    let bars = bars(d);
    let y_max = bars.iter().map(|b| b.2).max().unwrap_or(0) as f64;
    // Headroom for the quantile labels above the tallest bar.
    let y_max = if y_max > 0.0 { y_max * 1.25 } else { 1.0 };

    // The numbers go in a line under the caption rather than in a legend
    // box, which would hide bars wherever it sat.
    let area = area.titled(caption, (FONT, 17))?;
    let mut facts = if d.is_empty() {
        "no observations".to_string()
    } else {
        format!(
            "n {} · p50 {} · p90 {} · p99 {} · max {}",
            d.count,
            fmt_secs(d.p50_s),
            fmt_secs(d.p90_s),
            fmt_secs(d.p99_s),
            fmt_secs(d.max_s)
        )
    };
    if d.overflow() > 0 {
        let _ = write!(facts, " · {} above the last bound", d.overflow());
    }
    let area = area.titled(&facts, (FONT, 14).into_font().color(&MUTED))?;

    let mut chart = ChartBuilder::on(&area)
        .margin(10)
        .margin_right(25)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds (log scale)")
        .y_desc(unit)
        .label_style((FONT, 14))
        .x_labels(6)
        .x_label_formatter(&|v| fmt_secs(*v))
        .y_label_formatter(&|v| fmt_axis(*v))
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .draw()?;

    chart.draw_series(bars.iter().map(|&(start, end, count)| {
        Rectangle::new([(start, 0.0), (end, count as f64)], color.mix(0.6).filled())
    }))?;
    if d.is_empty() {
        return Ok(());
    }

    // Quantile markers labelled at their top: p50 left of its line, p99
    // right of it (or left and a row lower near the right edge), so the
    // labels stay apart even when the two coincide.
    let near_right = |at: f64| (at / lo).ln() > 0.9 * (hi / lo).ln();
    for (name, at, mark_color) in [("p50", d.p50_s, BLACK), ("p99", d.p99_s, RGBColor(0xd6, 0x27, 0x28))] {
        let at = at.clamp(lo, hi);
        chart.draw_series(DashedLineSeries::new(
            [(at, 0.0), (at, y_max)],
            6,
            4,
            mark_color.stroke_width(2),
        ))?;
        let (offset, h_pos) = match name {
            "p50" => ((-4, 2), HPos::Right),
            _ if near_right(at) => ((-4, 20), HPos::Right),
            _ => ((4, 2), HPos::Left),
        };
        let style = (FONT, 14).into_font().color(&mark_color).pos(Pos::new(h_pos, VPos::Top));
        chart.draw_series(std::iter::once(EmptyElement::at((at, y_max)) + Text::new(name, offset, style)))?;
    }
    Ok(())
}
