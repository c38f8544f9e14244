//! `ukasan symbolize [FILE]`: a raw report (printed with `symbolize=0`, or saved from another
//! machine) in, the same report with functions, files and lines out. Reads stdin when FILE is
//! absent or `-`. Modules are looked up at the paths the report's module map names.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

/// Arguments of `ukasan symbolize`.
#[derive(Args, Debug)]
pub struct SymbolizeArgs {
    /// The report file (stdin when absent or `-`).
    file: Option<PathBuf>,
}

/// `ukasan symbolize`.
pub fn main(args: &SymbolizeArgs) -> Result<ExitCode> {
    let input = match &args.file {
        Some(p) if p.as_os_str() != "-" => {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?
        }
        _ => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("cannot read stdin")?;
            s
        }
    };
    let lookup = |module: &str| {
        let p = PathBuf::from(module);
        p.is_file().then_some(p)
    };
    let out = symbolize::offline::symbolize_report(&input, &lookup);
    std::io::stdout().write_all(out.as_bytes()).context("cannot write stdout")?;
    Ok(ExitCode::SUCCESS)
}
