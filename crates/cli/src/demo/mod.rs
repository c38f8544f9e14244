//! The bundled demo (`ukasan run` with no PROGRAM, and `ukasan` with no subcommand): one small
//! program per bug class, compiled at run time into a temp dir and run under the detector,
//! their reports shown one after another with a title line each.
//!
//! Exit status: 0 when every case that could run printed its report, 1 otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result};

use crate::run::{detector_env, RunArgs};

/// How a case's program is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lang {
    C,
    Cxx,
    /// A binary of this package next to `ukasan` (its source is `file`).
    Rust,
}

/// One bug class.
#[derive(Debug)]
struct Case {
    /// The report kind, as in the `BUG: KASAN: <kind>` header.
    kind: &'static str,
    /// One line of what the program does wrong.
    about: &'static str,
    lang: Lang,
    file: &'static str,
    source: &'static str,
    /// Extra detector options for this case.
    options: &'static str,
}

const CASES: &[Case] = &[
    Case {
        kind: "double-free",
        about: "free() twice",
        lang: Lang::C,
        file: "double_free.c",
        source: include_str!("double_free.c"),
        options: "detect_leaks=0",
    },
    Case {
        kind: "invalid-free",
        about: "free() of an interior pointer",
        lang: Lang::C,
        file: "invalid_free.c",
        source: include_str!("invalid_free.c"),
        options: "detect_leaks=0",
    },
    Case {
        kind: "out-of-bounds",
        about: "one byte written past a 40-byte malloc",
        lang: Lang::C,
        file: "oob_write.c",
        source: include_str!("oob_write.c"),
        options: "detect_leaks=0",
    },
    Case {
        kind: "use-after-free",
        about: "a field written after free()",
        lang: Lang::C,
        file: "uaf_write.c",
        source: include_str!("uaf_write.c"),
        options: "detect_leaks=0",
    },
    Case {
        kind: "slab-out-of-bounds",
        about: "one element read past a malloc'd array, caught at the read in guarded mode",
        lang: Lang::C,
        file: "oob_read.c",
        source: include_str!("oob_read.c"),
        options: "detect_leaks=0:mode=guarded:sample_rate=1",
    },
    Case {
        kind: "alloc-dealloc-mismatch",
        about: "new[] released with delete",
        lang: Lang::Cxx,
        file: "mismatch.cpp",
        source: include_str!("mismatch.cpp"),
        options: "detect_leaks=0",
    },
    Case {
        kind: "memory-leak",
        about: "ten strings never freed",
        lang: Lang::C,
        file: "leak.c",
        source: include_str!("leak.c"),
        options: "detect_leaks=1",
    },
    Case {
        kind: "layout-mismatch",
        about: "dealloc with a Layout other than alloc's, ukasan as #[global_allocator]",
        lang: Lang::Rust,
        file: "ukasan-demo-rust",
        source: include_str!("../bin/ukasan-demo-rust.rs"),
        options: "detect_leaks=0",
    },
];

/// What happened to one case.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Reported,
    Missed,
    Skipped(String),
}

/// Runs every case; see the module docs.
pub fn main(args: &RunArgs) -> Result<ExitCode> {
    let lib = crate::preload::locate()?;
    let dir = TempDir::new("ukasan-demo")?;
    let user = args.options_string();
    println!(
        "ukasan demo: {} bug classes under {} (mode {}), each a small program with one bug",
        CASES.len(),
        lib.display(),
        args.mode
    );
    let mut results = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        println!();
        println!(
            "=== {}/{}: {} ({}, {}) ===",
            i + 1,
            CASES.len(),
            case.kind,
            lang_name(case.lang),
            case.about
        );
        let outcome = match build(case, dir.path()) {
            Ok(exe) => run_case(case, &exe, &lib, &user)?,
            Err(why) => Outcome::Skipped(why),
        };
        match &outcome {
            Outcome::Reported => {}
            Outcome::Missed => {
                println!("(no `BUG: KASAN: {}` report: the detector missed it)", case.kind)
            }
            Outcome::Skipped(why) => println!("(skipped: {why})"),
        }
        results.push((case.kind, outcome));
    }
    println!();
    let reported = results.iter().filter(|(_, o)| *o == Outcome::Reported).count();
    let missed: Vec<_> =
        results.iter().filter(|(_, o)| *o == Outcome::Missed).map(|(k, _)| *k).collect();
    let skipped = results.iter().filter(|(_, o)| matches!(o, Outcome::Skipped(_))).count();
    println!("demo: {reported} of {} bug classes reported, {skipped} skipped", results.len());
    if missed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        println!("missed: {}", missed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}

fn lang_name(lang: Lang) -> &'static str {
    match lang {
        Lang::C => "C",
        Lang::Cxx => "C++",
        Lang::Rust => "Rust",
    }
}

/// Compiles one case; `Err` carries why it was skipped.
fn build(case: &Case, dir: &Path) -> std::result::Result<PathBuf, String> {
    let src = dir.join(case.file);
    std::fs::write(&src, case.source)
        .map_err(|e| format!("cannot write {}: {e}", src.display()))?;
    let exe = dir.join(case.file.replace('.', "_"));
    let compiler = match case.lang {
        Lang::C => "cc",
        Lang::Cxx => "c++",
        Lang::Rust => {
            return crate::preload::sibling(case.file, &["-p", "ukasan-cli", "--bin", case.file])
                .map_err(|e| format!("{e:#}"));
        }
    };
    let out = Command::new(compiler)
        .args(["-g", "-O0", "-fno-omit-frame-pointer", "-w", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .map_err(|e| format!("no `{compiler}` to build it ({e})"))?;
    if !out.status.success() {
        return Err(format!(
            "`{compiler}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(exe)
}

fn run_case(case: &Case, exe: &Path, lib: &Path, user: &str) -> Result<Outcome> {
    // The case's options first, the user's after (they win).
    let options =
        if user.is_empty() { case.options.to_string() } else { format!("{}:{user}", case.options) };
    let mut cmd = Command::new(exe);
    if case.lang == Lang::Rust {
        // Its own global allocator is the detector: no preload.
        cmd.env("UKASAN_OPTIONS", &options);
    } else {
        cmd.envs(detector_env(lib, &options));
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    let text = String::from_utf8_lossy(&out.stderr);
    print!("{text}");
    if !text.ends_with('\n') && !text.is_empty() {
        println!();
    }
    if !out.status.success() {
        println!("(exit status: {})", crate::child::exit_code(out.status));
    }
    Ok(if text.contains(&format!("BUG: KASAN: {}", case.kind)) || json_kind(&text, case.kind) {
        Outcome::Reported
    } else {
        Outcome::Missed
    })
}

/// A JSON Lines report (`--json`) names its kind in a `"kind"` field.
fn json_kind(text: &str, kind: &str) -> bool {
    text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).any(|v| {
        v.get("kind").and_then(|k| k.as_str()) == Some(kind)
            || v.get("bug").and_then(|k| k.as_str()) == Some(kind)
    })
}

/// A directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/<prefix>-<pid>-<n>`.
    pub fn new(prefix: &str) -> Result<TempDir> {
        use std::sync::atomic::{AtomicU32, Ordering};
        // Relaxed: only uniqueness matters.
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        if p.exists() {
            std::fs::remove_dir_all(&p).ok();
        }
        std::fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
        Ok(TempDir(p))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_marks_its_bug_and_kinds_are_unique() {
        for c in CASES {
            assert!(c.source.contains("BUG"), "{} has no BUG marker", c.file);
        }
        let mut kinds: Vec<_> = CASES.iter().map(|c| c.kind).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds.len(), CASES.len());
    }

    #[test]
    fn json_reports_are_recognized() {
        assert!(json_kind("{\"kind\":\"double-free\"}\n", "double-free"));
        assert!(!json_kind("{\"kind\":\"double-free\"}\n", "invalid-free"));
        assert!(!json_kind("BUG: KASAN: double-free", "double-free"));
    }
}
