//! `--svg FILE`: grouped bars of each ukasan flavor's overhead over `no-stack-traces`, one
//! group per workload (peers are left out: their 20-50x would flatten every other bar).

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::flavor::{Kind, BASELINE};
use super::report::overhead;
use super::Results;

/// Draws the chart to `path`.
pub fn draw(r: &Results, path: &Path) -> Result<()> {
    let workloads: Vec<_> = r.workloads.iter().filter(|w| w.skipped.is_none()).collect();
    let flavors: Vec<_> = workloads
        .first()
        .map(|w| {
            w.cells
                .iter()
                .map(|c| c.flavor)
                .filter(|f| matches!(f.kind, Kind::Ukasan(_)) && f.name != BASELINE)
                .collect()
        })
        .unwrap_or_default();
    // (workload index, flavor index, overhead %)
    let mut bars = Vec::new();
    for (wi, w) in workloads.iter().enumerate() {
        for (fi, f) in flavors.iter().enumerate() {
            if let Some(o) =
                w.cells.iter().find(|c| c.flavor.name == f.name).and_then(|c| overhead(w, c))
            {
                bars.push((wi, fi, o));
            }
        }
    }
    if bars.is_empty() {
        bail!("nothing to chart: no ukasan flavor has an overhead over {BASELINE}");
    }
    let lo = bars.iter().map(|b| b.2).fold(0.0f64, f64::min);
    let hi = bars.iter().map(|b| b.2).fold(1.0f64, f64::max);
    let (lo, hi) = (lo - (hi - lo) * 0.05, hi * 1.1);
    let plot = |e: &dyn std::fmt::Display| anyhow!("drawing the chart: {e}");

    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "ukasan ({} mode): overhead over {BASELINE}, median of {} runs",
                r.mode, r.runs
            ),
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..workloads.len() as f64, lo..hi)
        .map_err(|e| plot(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("% over no-stack-traces")
        .y_label_formatter(&|y| format!("{y:.0}%"))
        .draw()
        .map_err(|e| plot(&e))?;
    let width = 0.8 / flavors.len() as f64;
    for (fi, f) in flavors.iter().enumerate() {
        let color = Palette99::pick(fi).to_rgba();
        let rects: Vec<_> = bars
            .iter()
            .filter(|b| b.1 == fi)
            .map(|&(wi, _, o)| {
                let x0 = wi as f64 + 0.1 + fi as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width * 0.9, o)], color.filled())
            })
            .collect();
        chart
            .draw_series(rects)
            .map_err(|e| plot(&e))?
            .label(f.name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| plot(&e))?;
    let style =
        TextStyle::from(("sans-serif", 15).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    for (wi, w) in workloads.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(wi as f64 + 0.5, lo));
        root.draw(&Text::new(w.workload.name, (x, y + 8), style.clone())).map_err(|e| plot(&e))?;
    }
    root.present().map_err(|e| plot(&e))?;
    Ok(())
}
