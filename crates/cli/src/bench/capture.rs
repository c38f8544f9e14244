//! `ukasan bench capture`: nanoseconds per capture and per frame for each stack-capture
//! backend at depths 8, 32 and 128, next to a plain copy of as many words (the physical limit
//! of any copying backend). All rows are measured in one run, alternating (every row once per
//! round), and the median over rounds is shown. A backend answering `Err(Unsupported)` shows
//! as unsupported, never as a number.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use stacktrace::Backend;

use super::measure::Summary;

/// Arguments of `ukasan bench capture`.
#[derive(Args, Debug)]
pub struct CaptureArgs {
    /// Fewer rounds and shorter batches.
    #[arg(long)]
    quick: bool,
    /// Rounds (default 11; 3 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rounds: Option<u32>,
}

/// The depths measured.
pub const DEPTHS: [usize; 3] = [8, 32, 128];

/// A row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Row {
    /// `copy_from_slice` of `depth` words.
    Copy,
    /// One backend through `stacktrace::capture_with`.
    Backend(Backend),
}

impl Row {
    fn name(self) -> &'static str {
        match self {
            Row::Copy => "copy",
            Row::Backend(b) => b.name(),
        }
    }
}

const ROWS: [Row; 8] = [
    Row::Copy,
    Row::Backend(Backend::FramePointer),
    Row::Backend(Backend::Dwarf),
    Row::Backend(Backend::Libgcc),
    Row::Backend(Backend::Shadow),
    Row::Backend(Backend::Cet),
    Row::Backend(Backend::Gcs),
    Row::Backend(Backend::Scs),
];

/// One row's result at one depth.
#[derive(Clone, Debug)]
enum Cost {
    /// Nanoseconds per capture (one per round) and the fewest frames any timed call captured.
    Measured { ns: Vec<f64>, frames: usize },
    /// The backend refused.
    Unsupported(stacktrace::Unsupported),
}

/// Runs `f` below `n` extra frames of real recursion.
#[inline(never)]
fn at_depth(n: usize, f: &mut dyn FnMut()) {
    if black_box(n) == 0 {
        f();
    } else {
        at_depth(n - 1, f);
    }
    // Keeps the call from becoming a tail call, so every level keeps its frame.
    black_box(n);
}

/// One capture (or copy) into `buf`: frames captured, or why not.
#[inline(never)]
fn once(row: Row, src: &[usize], buf: &mut [usize]) -> Result<usize, stacktrace::Unsupported> {
    match row {
        Row::Copy => {
            buf.copy_from_slice(black_box(&src[..buf.len()]));
            black_box(&buf);
            Ok(buf.len())
        }
        Row::Backend(b) => stacktrace::capture_with(b, black_box(buf)),
    }
}

/// Time of `iters` calls, and the fewest frames any call returned (0 for an error), so a
/// backend that stops early or fails after its first call cannot pass for a fast one.
fn batch(row: Row, src: &[usize], buf: &mut [usize], iters: u64) -> (Duration, usize) {
    let mut fewest = usize::MAX;
    let t = Instant::now();
    for _ in 0..iters {
        fewest = fewest.min(black_box(once(row, src, buf)).unwrap_or(0));
    }
    (t.elapsed(), fewest)
}

/// Measures every row at one depth, from inside `depth` frames of recursion.
fn measure_depth(depth: usize, rounds: u32, target: Duration) -> Vec<Cost> {
    let mut costs: Vec<Cost> = Vec::new();
    at_depth(depth, &mut || {
        let src: Vec<usize> = (0..depth).map(|i| i * 8 + 0x1000).collect();
        let mut buf = vec![0usize; depth];
        let mut iters = Vec::new();
        for row in ROWS {
            match once(row, &src, &mut buf) {
                Err(e) => {
                    costs.push(Cost::Unsupported(e));
                    iters.push(0);
                }
                Ok(frames) => {
                    // Calibrate: double the batch until it takes `target`.
                    let mut n = 1u64;
                    while batch(row, &src, &mut buf, n).0 < target && n < 1 << 30 {
                        n *= 2;
                    }
                    costs.push(Cost::Measured { ns: Vec::new(), frames });
                    iters.push(n);
                }
            }
        }
        for _ in 0..rounds {
            for (i, row) in ROWS.iter().enumerate() {
                if let Cost::Measured { ns, frames } = &mut costs[i] {
                    let (d, fewest) = batch(*row, &src, &mut buf, iters[i]);
                    ns.push(d.as_nanos() as f64 / iters[i] as f64);
                    *frames = (*frames).min(fewest);
                }
            }
        }
    });
    costs
}

/// `ukasan bench capture`.
pub fn main(args: &CaptureArgs) -> Result<ExitCode> {
    let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 11 });
    let target = if args.quick { Duration::from_micros(300) } else { Duration::from_millis(2) };
    // A fresh thread with a roomy stack, so every depth has its frames.
    let table = std::thread::Builder::new()
        .name("bench-capture".into())
        .stack_size(16 << 20)
        .spawn(move || DEPTHS.map(|d| measure_depth(d, rounds, target)))?
        .join()
        .map_err(|_| anyhow::anyhow!("the capture bench panicked"))?;
    println!(
        "ukasan bench capture: ns per capture [ns per frame], median of {rounds} alternating rounds"
    );
    print!("{:<8}", "backend");
    for d in DEPTHS {
        print!("{:>26}", format!("depth {d}"));
    }
    println!();
    let mut why = Vec::new();
    let mut short = Vec::new();
    for (r, row) in ROWS.iter().enumerate() {
        print!("{:<8}", row.name());
        for (d, costs) in table.iter().enumerate() {
            let cell = match &costs[r] {
                Cost::Unsupported(e) => {
                    let note = format!("{}: {e}", row.name());
                    if !why.contains(&note) {
                        why.push(note);
                    }
                    "unsupported".to_string()
                }
                Cost::Measured { ns, frames } => {
                    let m = Summary::of(ns).map(|s| s.median).unwrap_or(f64::NAN);
                    let per = if *frames > 0 { m / *frames as f64 } else { f64::NAN };
                    if *frames < DEPTHS[d] {
                        short.push(format!("{} at depth {}: {frames}", row.name(), DEPTHS[d]));
                    }
                    format!("{m:.1} [{per:.2}] {frames}f")
                }
            };
            print!("{cell:>26}");
        }
        println!();
    }
    println!(
        "copy = copy_from_slice of as many words as the depth (the limit of any copying backend);"
    );
    println!("Nf = frames the backend returned (fewer than the depth means it stopped early)");
    if !short.is_empty() {
        println!(
            "STOPPED EARLY (fewest frames in a timed call; its time is not comparable): {}",
            short.join("; ")
        );
    }
    if !why.is_empty() {
        println!("unsupported here: {}", why.join("; "));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp_and_copy_are_measured_libgcc_too() {
        let costs = measure_depth(8, 1, Duration::from_micros(10));
        assert_eq!(costs.len(), ROWS.len());
        assert!(matches!(&costs[0], Cost::Measured { frames: 8, ns } if ns.len() == 1));
        // The frame-pointer walk works in this workspace (frame pointers are forced).
        assert!(matches!(&costs[1], Cost::Measured { frames: 8, .. }), "{:?}", costs[1]);
    }
}
