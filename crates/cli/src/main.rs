//! `ukasan`: run programs under the detector, benchmark capture and detection, symbolize.

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "ukasan", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Benchmarks.
    Bench,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Bench => {
            let mut buf = [0usize; 64];
            let t = stacktrace::capture(&mut buf)?;
            println!("{} frames from {}", t.len, t.backend);
        }
    }
    Ok(())
}
