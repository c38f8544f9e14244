//! `ukasan`: run programs under the detector, benchmark capture and detection, symbolize.
//!
//! - `ukasan run [--mode generic|guarded] [--stacks ...] [--json] [-o key=value]... -- PROGRAM [ARGS...]`
//!   runs PROGRAM with `libukasan.so` preloaded (see [`preload`] for how the library is found,
//!   or built on a fresh clone); with no PROGRAM, and with no subcommand at all, it runs the
//!   bundled demo ([`demo`]): one small program per bug class and their reports.
//! - `ukasan bench` times real programs under each stack-collection flavor, the seed's table
//!   in user space ([`bench`]); `ukasan bench capture` prints the per-capture cost table.
//! - `ukasan symbolize [FILE]` symbolizes a raw report offline ([`symbolize`]).
//!
//! Exit status: `run` exits with PROGRAM's status (128 + signal when it was killed, 127 when it
//! does not exist); usage errors exit 2; other failures 1.

mod bench;
mod child;
mod demo;
mod mode;
mod preload;
mod run;
mod symbolize;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "ukasan", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run PROGRAM under the detector (with no PROGRAM: the bundled bug-class demo).
    Run(run::RunArgs),
    /// Time real programs under each stack-collection flavor (the seed's table).
    Bench(bench::BenchArgs),
    /// Symbolize a raw report (FILE, or stdin): functions, files and lines.
    Symbolize(symbolize::SymbolizeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        None => run::main(&run::RunArgs::default()),
        Some(Cmd::Run(args)) => run::main(&args),
        Some(Cmd::Bench(args)) => bench::main(&args),
        Some(Cmd::Symbolize(args)) => symbolize::main(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ukasan: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
