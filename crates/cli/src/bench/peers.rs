//! `--peers`: the tools a user would pick instead (valgrind memcheck, heaptrack, ASan).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::measure::Tools;

/// The Rust workload's source (std only), so it can be built alone with other flags.
const WORKLOAD_SRC: &str = include_str!("../bin/ukasan-workload.rs");

/// Builds `ukasan-workload` with `rustc +nightly -Zsanitizer=address` (no `-Zbuild-std`, so no
/// rust-src: std stays uninstrumented, as in a usual ASan build of a Rust program).
pub fn build_asan(scratch: &Path) -> Result<PathBuf, String> {
    let dir = scratch.join("asan");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let src = dir.join("ukasan-workload.rs");
    std::fs::write(&src, WORKLOAD_SRC).map_err(|e| e.to_string())?;
    let exe = dir.join("ukasan-workload-asan");
    let target = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    eprintln!("ukasan: building the ASan peer: rustc +nightly -Zsanitizer=address");
    let out = Command::new("rustc")
        .arg("+nightly")
        .args(["--edition", "2021", "-C", "opt-level=3", "-C", "force-frame-pointers=yes"])
        .args(["-Zsanitizer=address", "--target", &target, "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .map_err(|e| format!("asan: cannot run rustc +nightly: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("asan: nightly build failed: {}", err.lines().next().unwrap_or("")));
    }
    Ok(exe)
}

/// Notes about peers that cannot run.
pub fn notes(tools: &Tools) -> Vec<String> {
    let mut n = Vec::new();
    if tools.valgrind.is_none() {
        n.push(
            "valgrind not installed: its rows are skipped (apt-get install valgrind)".to_string(),
        );
    }
    if tools.heaptrack.is_none() {
        n.push(
            "heaptrack not installed: its rows are skipped (apt-get install heaptrack)".to_string(),
        );
    }
    if let Err(e) = &tools.asan {
        n.push(format!("asan peer not available: {e}"));
    }
    n.push(
        "asan applies to the Rust workload only (the others would need their own ASan builds)"
            .to_string(),
    );
    n.push(
        "dhat-rs peer not bundled (it needs its own build of the workload with the dhat crate)"
            .to_string(),
    );
    n
}
