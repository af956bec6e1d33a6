//! The SVG chart of a soak run: RSS per process over time, open file descriptors per process,
//! and the depth of every queue of the run (stacked panels sharing the time axis, in minutes).

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use crate::BoxError;
use crate::analysis::Sample;

/// One line: its name and `(minutes, value)` points.
type Line = (String, Vec<(f64, f64)>);

fn lines(rows: &[Sample], value: impl Fn(&Sample) -> Option<f64>) -> Vec<Line> {
    let mut by_name: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for r in rows {
        if let Some(v) = value(r) {
            by_name
                .entry(&r.name)
                .or_default()
                .push((r.elapsed_s / 60.0, v));
        }
    }
    by_name
        .into_iter()
        .map(|(n, p)| (n.to_owned(), p))
        .collect()
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    lines: &[Line],
    minutes: f64,
) -> Result<(), BoxError> {
    let y_max = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max);
    let y_max = if y_max > 0.0 { y_max * 1.15 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..minutes, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("minutes")
        .y_desc(y_desc)
        .draw()?;
    for (i, (name, points)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    if !lines.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    Ok(())
}

/// The queue panel's lines: the total over every queue, and the queues that ever held a
/// message (the 8 deepest; a run has ~30 queues, most of them retry tiers and dead-letter
/// queues that stay empty).
fn queue_lines(rows: &[Sample]) -> Vec<Line> {
    let per_queue = lines(rows, |r| Some(r.messages()? as f64));
    let mut total: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for (_, points) in &per_queue {
        for (t, v) in points {
            // Rows of one sample share their time; key it in milliseconds.
            let e = total
                .entry((t * 60_000.0).round() as u64)
                .or_insert((*t, 0.0));
            e.1 += v;
        }
    }
    let mut busy: Vec<Line> = per_queue
        .into_iter()
        .filter(|(_, p)| p.iter().any(|p| p.1 > 0.0))
        .collect();
    let peak = |l: &Line| l.1.iter().map(|p| p.1).fold(0.0_f64, f64::max);
    busy.sort_by(|a, b| peak(b).total_cmp(&peak(a)));
    busy.truncate(8);
    let queues = rows
        .iter()
        .filter(|r| r.messages().is_some())
        .map(|r| r.name.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let mut out = vec![(
        format!("all {queues} queues"),
        total.into_values().collect(),
    )];
    out.extend(busy);
    out
}

/// Draws the chart of `rows` into the SVG file `path`; `title` heads it.
pub fn draw(path: &Path, rows: &[Sample], title: &str) -> Result<(), BoxError> {
    let minutes = rows
        .iter()
        .map(|r| r.elapsed_s / 60.0)
        .fold(0.0_f64, f64::max)
        .max(0.1);
    let root = SVGBackend::new(path, (1100, 1200)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let panels = root.split_evenly((3, 1));
    panel(
        &panels[0],
        "Resident memory (VmRSS) per process",
        "MiB",
        &lines(rows, |r| Some(r.figures()?.rss_kb as f64 / 1024.0)),
        minutes,
    )?;
    panel(
        &panels[1],
        "Open file descriptors per process",
        "descriptors",
        &lines(rows, |r| Some(r.figures()?.fds as f64)),
        minutes,
    )?;
    panel(
        &panels[2],
        "Queue depth (ready + unacknowledged messages)",
        "messages",
        &queue_lines(rows),
        minutes,
    )?;
    root.present()?;
    Ok(())
}
