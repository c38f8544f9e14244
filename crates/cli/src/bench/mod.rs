//! `ukasan bench`: the seed's table in user space. Real programs run to completion under each
//! flavor (see [`flavor`]), alternating flavors in every round (A B C A B C), a warm-up round
//! first; medians with min-max, overhead against `no-stack-traces`, the detector's counters
//! next to the time (DESIGN.md section 8).
//!
//! `ukasan bench capture` is the per-capture cost table ([`capture`]); `ukasan bench sampling`
//! is guarded mode's cost by sample rate next to generic mode ([`sampling`]).

mod capture;
mod chart;
mod flavor;
mod measure;
mod peers;
mod report;
mod sampling;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::demo::TempDir;
use crate::mode::{parse_mode, Mode};
use flavor::{parse_flavors, Flavor, FlavorList, Kind, FLAVORS, PEERS};
use measure::{run_once, Run, RunError, Tools};
use workload::{parse_workloads, Workload, WorkloadList, WORKLOADS};

/// Arguments of `ukasan bench`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    sub: Option<BenchCmd>,
    /// One run of small inputs (what CI runs to keep the harness alive).
    #[arg(long)]
    quick: bool,
    /// Timed runs per flavor and workload, after one warm-up (default 5; 1 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: Option<u32>,
    /// Comma-separated flavors (default: all).
    #[arg(long, value_parser = parse_flavors)]
    flavors: Option<FlavorList>,
    /// Comma-separated workloads (default: all).
    #[arg(long, value_parser = parse_workloads)]
    workloads: Option<WorkloadList>,
    /// Detector mode (hw-tags: on an arm64 machine with MTE, or under `--runner`).
    #[arg(long, default_value = "generic", value_parser = parse_bench_mode)]
    mode: Mode,
    /// Guarded mode: guard about one allocation in N (the detector's `sample_rate`; its
    /// default when not given).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    sample_rate: Option<u32>,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Also draw the overheads as an SVG chart to FILE.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Also run valgrind memcheck, heaptrack and (Rust workload) an ASan build.
    #[arg(long)]
    peers: bool,
    /// Emulated target: run the Rust workload as `RUNNER... EXE --size N` (e.g.
    /// `qemu-aarch64 -L /usr/aarch64-linux-gnu`, split on spaces), with ukasan linked into EXE
    /// (`--workload-exe`) instead of preloaded; see `aarch64/bench.sh`.
    #[arg(long, value_name = "RUNNER", requires = "workload_exe")]
    runner: Option<String>,
    /// The Rust workload built for the runner's target with ukasan as its global allocator
    /// (`cargo build -p ukasan --example workload`); `UKASAN_WORKLOAD_PLAIN=1` is its plain
    /// flavor.
    #[arg(long, value_name = "EXE", requires = "runner")]
    workload_exe: Option<PathBuf>,
}

/// `--mode` of the bench: as `ukasan run` takes it, but hw-tags is checked later (an
/// emulated target may have MTE where this machine has not).
fn parse_bench_mode(s: &str) -> Result<Mode, String> {
    match s {
        "hw-tags" => Ok(Mode::HwTags),
        _ => parse_mode(s),
    }
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// Per-capture cost of each stack-capture backend at depths 8, 32, 128.
    Capture(capture::CaptureArgs),
    /// Guarded mode at sample rates 1, 100, 1000, 10000 next to generic mode and the plain
    /// program: CPU, wall, peak RSS; checks guarded-1000 against the +5% target.
    Sampling(sampling::SamplingArgs),
}

/// The options every ukasan flavor gets for `mode` (see [`Tools::mode_options`]).
fn mode_options(mode: Mode, sample_rate: Option<u32>) -> String {
    match (mode, sample_rate) {
        (Mode::Generic, _) => String::new(),
        (m, None) => format!(":mode={m}"),
        (m, Some(n)) => format!(":mode={m}:sample_rate={n}"),
    }
}

/// One flavor's results on one workload.
#[derive(Debug)]
pub struct Cell {
    /// The flavor.
    pub flavor: &'static Flavor,
    /// Timed runs (the warm-up is not kept).
    pub runs: Vec<Run>,
    /// Why it stopped or never ran.
    pub error: Option<RunError>,
}

/// One workload's results.
#[derive(Debug)]
pub struct WorkloadResult {
    /// The workload.
    pub workload: &'static Workload,
    /// Why it was skipped, if it was.
    pub skipped: Option<String>,
    /// One cell per flavor, in flavor order.
    pub cells: Vec<Cell>,
}

/// Everything a bench run found, for the table, JSON and chart.
#[derive(Debug)]
pub struct Results {
    /// Detector mode.
    pub mode: Mode,
    /// Timed runs per cell.
    pub runs: u32,
    /// Small inputs.
    pub quick: bool,
    /// Per workload.
    pub workloads: Vec<WorkloadResult>,
    /// Notes for the reader (skips, missing counters).
    pub notes: Vec<String>,
}

/// `ukasan bench`.
pub fn main(args: &BenchArgs) -> Result<ExitCode> {
    match &args.sub {
        Some(BenchCmd::Capture(c)) => return capture::main(c),
        Some(BenchCmd::Sampling(s)) => return sampling::main(s),
        None => {}
    }
    if args.sample_rate.is_some() && args.mode != Mode::Guarded {
        anyhow::bail!("--sample-rate applies to guarded mode only: add --mode guarded");
    }
    if let (Mode::HwTags, None, Some(why)) =
        (args.mode, &args.runner, crate::mode::hw_tags_unavailable())
    {
        anyhow::bail!("{why} (or time an emulated target that has it: --runner)");
    }
    let emulated = match (&args.runner, &args.workload_exe) {
        (Some(r), Some(exe)) => {
            let runner: Vec<std::ffi::OsString> = r.split_whitespace().map(Into::into).collect();
            anyhow::ensure!(!runner.is_empty(), "--runner is empty");
            let exe =
                exe.canonicalize().with_context(|| format!("--workload-exe {}", exe.display()))?;
            Some(measure::Emulated { runner, exe })
        }
        _ => None,
    };
    let runs = args.runs.unwrap_or(if args.quick { 1 } else { 5 });
    let mut flavors: Vec<&'static Flavor> = match &args.flavors {
        Some(l) => l.0.clone(),
        None => FLAVORS.iter().collect(),
    };
    if args.peers {
        flavors.extend(PEERS.iter());
    }
    let mut workloads: Vec<&'static Workload> = match &args.workloads {
        Some(l) => l.0.clone(),
        None => WORKLOADS.iter().collect(),
    };
    let scratch = TempDir::new("ukasan-bench")?;
    let mut notes = Vec::new();
    if let Some(e) = &emulated {
        // The other workloads are this machine's programs, not the target's.
        workloads.retain(|w| w.name == "rust");
        flavors.retain(|f| matches!(f.kind, Kind::Plain | Kind::Ukasan(_)));
        notes.push(format!(
            "emulated: `{} {}`; times and RSS are the emulator's (RSS includes it), not the target's; ratios between flavors are what compares; ukasan flavors get heap_region_mb=256 (the emulator pays for every reserved page)",
            e.runner.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "),
            e.exe.display()
        ));
    }
    let needs_lib = emulated.is_none() && flavors.iter().any(|f| matches!(f.kind, Kind::Ukasan(_)));
    let lib = if needs_lib {
        crate::preload::locate().map_err(|e| format!("{e:#}"))
    } else {
        Err("not needed".to_string())
    };
    if let (true, Err(e)) = (needs_lib, &lib) {
        notes.push(format!("ukasan flavors skipped: {e}"));
    }
    let wants_asan = args.peers && workloads.iter().any(|w| w.name == "rust");
    let tools = Tools {
        lib,
        valgrind: workload::which("valgrind"),
        heaptrack: workload::which("heaptrack"),
        asan: if wants_asan {
            peers::build_asan(scratch.path())
        } else {
            Err("not requested".into())
        },
        scratch: scratch.path().to_path_buf(),
        mode_options: mode_options(args.mode, args.sample_rate),
        emulated,
    };
    if args.peers {
        notes.extend(peers::notes(&tools));
    }

    let mut results = Vec::new();
    let mut prepared = Vec::new();
    for w in &workloads {
        let skipped = match workload::prepare(w, scratch.path(), args.quick) {
            Ok(p) => {
                prepared.push((results.len(), p));
                None
            }
            Err(why) => {
                notes.push(format!("workload {} skipped: {why}", w.name));
                Some(why)
            }
        };
        results.push(WorkloadResult {
            workload: w,
            skipped,
            cells: flavors
                .iter()
                .map(|f| Cell { flavor: f, runs: Vec::new(), error: None })
                .collect(),
        });
    }

    let total = (prepared.len() * flavors.len() * (runs as usize + 1)) as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .context("progress template")?,
    );
    for (i, p) in &prepared {
        let result = &mut results[*i];
        for round in 0..=runs {
            for cell in result.cells.iter_mut() {
                bar.set_message(format!(
                    "{} / {} ({})",
                    result.workload.name,
                    cell.flavor.name,
                    if round == 0 { "warm-up".to_string() } else { format!("run {round}") }
                ));
                if cell.error.is_none() {
                    match run_once(p, result.workload.name, cell.flavor, &tools) {
                        Ok(run) if round > 0 => cell.runs.push(run),
                        Ok(_) => {}
                        Err(e) => cell.error = Some(e),
                    }
                }
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();

    let results = Results { mode: args.mode, runs, quick: args.quick, workloads: results, notes };
    let problems = report::print(&results);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report::json(&results))?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("JSON written to {}", path.display());
    }
    if let Some(path) = &args.svg {
        chart::draw(&results, path)?;
        println!("chart written to {}", path.display());
    }
    let rows =
        results.workloads.iter().flat_map(|w| &w.cells).filter(|c| !c.runs.is_empty()).count();
    if rows == 0 {
        eprintln!("ukasan: error: no flavor produced a time: the table is empty");
        return Ok(ExitCode::FAILURE);
    }
    Ok(if problems == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
