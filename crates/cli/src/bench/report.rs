//! The bench's table (the seed's style), and its JSON form.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::flavor::{Kind, BASELINE};
use super::measure::{RunError, Summary};
use super::{Cell, Results, WorkloadResult};

/// Counter names the detector may use, per quantity we show.
const CAPTURES: &[&str] = &["captures"];
const TRACES: &[&str] = &["unique_traces", "traces", "unique", "depot_traces"];
const DEPOT_BYTES: &[&str] = &["depot_bytes", "depot", "depot_size"];
const FRAMES: &[&str] = &["frames", "captured_frames"];
const DEPOT_FRAMES: &[&str] = &["depot_frames"];
const ALLOCS: &[&str] = &["allocs", "allocations", "mallocs"];
/// The software shadow stack's counters (per process, summed over its threads).
const SHADOW_CAPTURES: &[&str] = &["shadow_captures"];

fn get(stats: &BTreeMap<String, f64>, names: &[&str]) -> Option<f64> {
    names.iter().find_map(|n| stats.get(*n).copied())
}

/// Median of a cell's wall-clock times.
pub fn summary(cell: &Cell) -> Option<Summary> {
    Summary::of(&cell.runs.iter().map(|r| r.secs).collect::<Vec<_>>())
}

/// Median of a cell's CPU times.
fn cpu_summary(cell: &Cell) -> Option<Summary> {
    Summary::of(&cell.runs.iter().map(|r| r.cpu).collect::<Vec<_>>())
}

/// Wall-clock overhead of `cell` over the baseline flavor of the same workload, in percent.
pub fn overhead(w: &WorkloadResult, cell: &Cell) -> Option<f64> {
    overhead_by(w, cell, summary)
}

/// The same in CPU time.
fn cpu_overhead(w: &WorkloadResult, cell: &Cell) -> Option<f64> {
    overhead_by(w, cell, cpu_summary)
}

fn overhead_by(w: &WorkloadResult, cell: &Cell, by: fn(&Cell) -> Option<Summary>) -> Option<f64> {
    let base = w.cells.iter().find(|c| c.flavor.name == BASELINE).and_then(by)?;
    Some((by(cell)?.median / base.median - 1.0) * 100.0)
}

fn plain_ratio(w: &WorkloadResult, cell: &Cell) -> Option<f64> {
    let base = w.cells.iter().find(|c| c.flavor.kind == Kind::Plain).and_then(summary)?;
    Some(summary(cell)?.median / base.median)
}

/// What is wrong with a cell that ran, if anything: a flavor that captured nothing is a bug.
/// Uses the capture count when the detector prints one, else the depot's unique traces (for
/// flavors that save to the depot).
fn capture_problem(cell: &Cell) -> Option<String> {
    let stats = &cell.runs.first()?.stats;
    if !cell.flavor.must_capture() {
        return None;
    }
    let saves = !matches!(cell.flavor.kind, Kind::Ukasan(o) if o.contains("depot=0"));
    let (what, n) = match (get(stats, CAPTURES), get(stats, TRACES)) {
        (Some(c), _) => ("captured nothing", c),
        (None, Some(t)) if saves => ("stored no trace in the depot", t),
        _ => return None,
    };
    (n == 0.0).then(|| format!("{} {what}: a bug (its time means nothing)", cell.flavor.name))
}

/// Average frames per stored trace, when the detector says.
fn frames_per_trace(cell: &Cell) -> Option<f64> {
    let s = &cell.runs.first()?.stats;
    let t = get(s, TRACES).filter(|t| *t > 0.0)?;
    Some(get(s, DEPOT_FRAMES)? / t)
}

/// A warning when `cell` stores traces much shallower than the unwinder's on the same
/// workload: it looks fast partly because it captured little (frames without frame pointers
/// end a frame-pointer walk), so its time is not comparable.
fn shallow(w: &WorkloadResult, cell: &Cell) -> Option<String> {
    let reference =
        w.cells.iter().find(|c| c.flavor.name == "unwinder").and_then(frames_per_trace)?;
    let own = frames_per_trace(cell)?;
    (cell.flavor.name != "unwinder" && own < reference / 2.0).then(|| {
        format!(
            "shallow traces: {own:.1} frames/trace vs the unwinder's {reference:.1}: not comparable \
             (the walk ends at code without frame pointers)"
        )
    })
}

fn human(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.1}G", n / 1e9),
        n if n >= 1e6 => format!("{:.1}M", n / 1e6),
        n if n >= 1e4 => format!("{:.0}k", n / 1e3),
        n => format!("{n:.0}"),
    }
}

fn bytes(n: f64) -> String {
    match n {
        n if n >= 1024.0 * 1024.0 => format!("{:.1} MiB", n / 1024.0 / 1024.0),
        n if n >= 1024.0 => format!("{:.1} KiB", n / 1024.0),
        n => format!("{n:.0} B"),
    }
}

fn counters(cell: &Cell, median: f64) -> String {
    let Some(run) = cell.runs.first() else {
        return String::new();
    };
    let s = &run.stats;
    let mut parts = Vec::new();
    if let Some(a) = get(s, ALLOCS) {
        parts.push(format!("{}/s allocs", human(a / median)));
    }
    if let Some(c) = get(s, CAPTURES) {
        parts.push(format!("captures {}", human(c)));
        if let (Some(f), true) = (get(s, FRAMES), c > 0.0) {
            parts.push(format!("{:.1} frames/capture", f / c));
        }
    }
    if let Some(t) = get(s, TRACES) {
        parts.push(format!("traces {}", human(t)));
        // How deep the stored traces are: a backend that stops early stores short ones.
        if let (Some(f), true) = (get(s, DEPOT_FRAMES), t > 0.0) {
            parts.push(format!("{:.1} frames/trace", f / t));
        }
    }
    if let Some(b) = get(s, DEPOT_BYTES) {
        match get(s, DEPOT_FRAMES).filter(|f| *f > 0.0) {
            Some(f) => parts.push(format!("depot {} ({:.2} B/frame)", bytes(b), b / f)),
            None => parts.push(format!("depot {}", bytes(b))),
        }
    }
    if let Some(sc) = get(s, SHADOW_CAPTURES).filter(|c| *c > 0.0) {
        let per = |k: &str| s.get(k).map_or(0.0, |v| v / sc);
        parts.push(format!(
            "shadow: {} captures, {:.1} walked + {:.1} copied/capture, {} patched, {} returns, \
             {:.0}% incremental, {:.0}% from the memo",
            human(sc),
            per("frames_walked"),
            per("frames_copied"),
            human(s.get("frames_patched").copied().unwrap_or(0.0)),
            human(s.get("trampoline_returns").copied().unwrap_or(0.0)),
            100.0 * per("incremental_saves"),
            100.0 * per("memo_hits")
        ));
    }
    if run.reports > 0 {
        parts.push(format!("{} reports!", run.reports));
    }
    parts.join(", ")
}

/// Prints the table; returns how many problems (failed runs, flavors that captured nothing)
/// it found.
pub fn print(r: &Results) -> usize {
    let mut problems = 0;
    let mut stats_seen = false;
    let mut ukasan_ran = false;
    println!(
        "ukasan bench: mode {}, {} run{} after a warm-up, flavors alternating in each round{}",
        r.mode,
        r.runs,
        if r.runs == 1 { "" } else { "s" },
        if r.quick { ", small inputs (--quick)" } else { "" }
    );
    println!(
        "wall: median [min-max] s, (+x%) over {BASELINE}, ratio to plain; cpu: median user+sys s, (+x%); rss: median peak resident set, ratio to plain"
    );
    for w in &r.workloads {
        println!();
        println!("{} -- {}", w.workload.name, w.workload.about);
        if let Some(why) = &w.skipped {
            println!("  skipped: {why}");
            continue;
        }
        let mut deviation: f64 = 0.0;
        for cell in &w.cells {
            let label = format!("{}:", cell.flavor.name);
            match (summary(cell), &cell.error) {
                (Some(s), _) => {
                    deviation = deviation.max((s.max - s.min) / 2.0);
                    let over = match overhead(w, cell) {
                        Some(o) if cell.flavor.name != BASELINE => format!("({o:+.1}%)"),
                        _ => String::new(),
                    };
                    let ratio =
                        plain_ratio(w, cell).map(|x| format!("{x:.2}x")).unwrap_or_default();
                    if matches!(cell.flavor.kind, Kind::Ukasan(_)) {
                        ukasan_ran = true;
                        stats_seen |= cell.runs.iter().any(|run| !run.stats.is_empty());
                    }
                    let cpu = cpu_summary(cell).map(|c| c.median).unwrap_or(f64::NAN);
                    let cpu_over = match cpu_overhead(w, cell) {
                        Some(o) if cell.flavor.name != BASELINE => format!("({o:+.1}%)"),
                        _ => String::new(),
                    };
                    let rss = match (
                        rss_mib(cell),
                        w.cells.iter().find(|c| c.flavor.name == "plain").and_then(rss_mib),
                    ) {
                        (Some(m), Some(p)) if p > 0.0 => {
                            format!("rss {m:>6.1} MiB {:>5.2}x", m / p)
                        }
                        (Some(m), _) => format!("rss {m:>6.1} MiB"),
                        _ => String::new(),
                    };
                    println!(
                        "  {label:<19} {:>7.3} [{:.3}-{:.3}] {over:>9} {ratio:>7} | cpu {cpu:>7.3} {cpu_over:>9} | {rss} | {}",
                        s.median,
                        s.min,
                        s.max,
                        counters(cell, s.median)
                    );
                    if let Some(p) = capture_problem(cell) {
                        problems += 1;
                        println!("  ^ {p}");
                    }
                    if let Some(w) = shallow(w, cell) {
                        println!("  ^ {w}");
                    }
                }
                (None, Some(RunError::Skipped(why))) => println!("  {label:<19} skipped: {why}"),
                (None, Some(RunError::Failed(why))) => {
                    problems += 1;
                    println!("  {label:<19} FAILED: {why}");
                }
                (None, None) => println!("  {label:<19} no runs"),
            }
        }
        println!("  The deviation for all numbers above is ~{deviation:.3} s.");
    }
    print_ratio(r);
    if ukasan_ran && !stats_seen {
        println!();
        println!(
            "note: the detector printed no counters at exit (verbosity=1): captures, unique traces and \
             depot bytes are not available, so a flavor that captured nothing cannot be detected here"
        );
    }
    for n in &r.notes {
        println!("note: {n}");
    }
    problems
}

/// Median peak resident set of a cell's runs (the largest process of each run), MiB.
fn rss_mib(cell: &Cell) -> Option<f64> {
    let mut v: Vec<u64> = cell.runs.iter().map(|r| r.max_rss_kib).filter(|&k| k > 0).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[v.len() / 2] as f64 / 1024.0)
}

/// The ratio that matters: shadow's overhead vs the unwinder's, per workload.
fn print_ratio(r: &Results) {
    let mut lines = Vec::new();
    for w in r.workloads.iter().filter(|w| w.skipped.is_none()) {
        let find = |n: &str, by: fn(&WorkloadResult, &Cell) -> Option<f64>| {
            w.cells.iter().find(|c| c.flavor.name == n).and_then(|c| by(w, c))
        };
        if let (Some(s), Some(u)) = (find("shadow", overhead), find("unwinder", overhead)) {
            let cpu = match (find("shadow", cpu_overhead), find("unwinder", cpu_overhead)) {
                (Some(cs), Some(cu)) => format!("   (cpu: {cs:+.1}% vs {cu:+.1}%)"),
                _ => String::new(),
            };
            lines.push(format!(
                "  {:<10} shadow {s:+.1}%  vs  unwinder {u:+.1}%{cpu}",
                w.workload.name
            ));
        }
    }
    if !lines.is_empty() {
        println!();
        println!("shadow vs unwinder, overhead over {BASELINE} (the seed, Generic KASAN: +3.4% vs +43.8%):");
        for l in lines {
            println!("{l}");
        }
    }
}

/// The results as JSON.
pub fn json(r: &Results) -> Value {
    let workloads: Vec<Value> = r
        .workloads
        .iter()
        .map(|w| {
            let cells: Vec<Value> = w
                .cells
                .iter()
                .map(|c| {
                    let s = summary(c);
                    json!({
                        "flavor": c.flavor.name,
                        "meaning": c.flavor.meaning,
                        "options": match c.flavor.kind { Kind::Ukasan(o) => Some(o), _ => None },
                        "times_s": c.runs.iter().map(|r| r.secs).collect::<Vec<_>>(),
                        "cpu_s": c.runs.iter().map(|r| r.cpu).collect::<Vec<_>>(),
                        "cpu_median_s": cpu_summary(c).map(|s| s.median),
                        "cpu_overhead_pct": cpu_overhead(w, c),
                        "max_rss_mib_median": rss_mib(c),
                        "median_s": s.map(|s| s.median),
                        "min_s": s.map(|s| s.min),
                        "max_s": s.map(|s| s.max),
                        "overhead_pct": overhead(w, c),
                        "ratio_to_plain": plain_ratio(w, c),
                        "counters": c.runs.first().map(|r| json!(r.stats)),
                        "reports": c.runs.first().map(|r| r.reports),
                        "skipped": match &c.error { Some(RunError::Skipped(s)) => Some(s), _ => None },
                        "failed": match &c.error { Some(RunError::Failed(s)) => Some(s), _ => None },
                    })
                })
                .collect();
            json!({
                "workload": w.workload.name,
                "about": w.workload.about,
                "skipped": w.skipped,
                "flavors": cells,
            })
        })
        .collect();
    json!({
        "mode": r.mode.name(),
        "runs": r.runs,
        "quick": r.quick,
        "baseline": BASELINE,
        "workloads": workloads,
        "notes": r.notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::flavor::FLAVORS;
    use crate::bench::measure::Run;
    use crate::bench::workload::WORKLOADS;

    fn cell(name: &str, secs: f64, stats: &[(&str, f64)]) -> Cell {
        let stats = stats.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        Cell {
            flavor: FLAVORS.iter().find(|f| f.name == name).unwrap(),
            runs: vec![Run { secs, cpu: secs, stats, reports: 0, max_rss_kib: 0 }],
            error: None,
        }
    }

    #[test]
    fn overheads_captures_and_shallow_traces() {
        let w = WorkloadResult {
            workload: &WORKLOADS[0],
            skipped: None,
            cells: vec![
                cell("no-stack-traces", 2.0, &[("unique_traces", 0.0)]),
                cell("unwinder", 3.0, &[("unique_traces", 10.0), ("depot_frames", 300.0)]),
                cell("fp", 2.2, &[("unique_traces", 10.0), ("depot_frames", 20.0)]),
                cell("shadow", 2.1, &[("unique_traces", 0.0), ("depot_frames", 0.0)]),
            ],
        };
        assert!((overhead(&w, &w.cells[1]).unwrap() - 50.0).abs() < 1e-9);
        assert!(shallow(&w, &w.cells[2])
            .unwrap()
            .contains("2.0 frames/trace vs the unwinder's 30.0"));
        assert_eq!(shallow(&w, &w.cells[1]), None);
        assert!(capture_problem(&w.cells[3]).unwrap().contains("shadow stored no trace"));
        assert_eq!(capture_problem(&w.cells[0]), None);
        assert_eq!(capture_problem(&w.cells[2]), None);
    }

    #[test]
    fn counters_show_depot_bytes_per_frame_and_the_shadow_stack_work() {
        let c = cell(
            "shadow",
            2.0,
            &[
                ("unique_traces", 10.0),
                ("depot_frames", 400.0),
                ("depot_bytes", 1200.0),
                ("shadow_captures", 1000.0),
                ("frames_walked", 3000.0),
                ("frames_copied", 1000.0),
                ("frames_patched", 40.0),
                ("trampoline_returns", 30.0),
                ("incremental_saves", 900.0),
                ("memo_hits", 600.0),
            ],
        );
        let s = counters(&c, 2.0);
        assert!(s.contains("depot 1.2 KiB (3.00 B/frame)"), "{s}");
        assert!(
            s.contains(
                "shadow: 1000 captures, 3.0 walked + 1.0 copied/capture, 40 patched, 30 returns, \
                 90% incremental, 60% from the memo"
            ),
            "{s}"
        );
        let fp = cell("fp", 2.0, &[("shadow_captures", 0.0), ("depot_bytes", 10.0)]);
        assert_eq!(counters(&fp, 2.0), "depot 10 B");
    }

    #[test]
    fn human_units() {
        assert_eq!(human(999.0), "999");
        assert_eq!(human(25_000.0), "25k");
        assert_eq!(human(2_500_000.0), "2.5M");
        assert_eq!(bytes(2048.0), "2.0 KiB");
    }
}
