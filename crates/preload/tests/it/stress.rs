//! Stress under load: 8 threads of random malloc/calloc/realloc/free checking every object,
//! forks every 20 ms whose children allocate on two threads and exit, a thread that
//! dlopens/dlcloses a library that allocates, signal handlers that allocate, and deliberate
//! double frees whose JSON Lines reports must all come out whole (see `progs/stress.c`).
//!
//! Runs `UKASAN_STRESS_SECS` seconds per mode (default 3); a soak:
//! `UKASAN_STRESS_SECS=600 cargo test --release -p ukasan-preload --test it stress`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::common::{program, run_with, scratch};

fn secs() -> u64 {
    std::env::var("UKASAN_STRESS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3)
}

fn stress(opts: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/progs/stresslib.c");
    let so = scratch().join("libstresslib.so");
    if !so.exists() {
        let st = Command::new("cc")
            .args(["-O1", "-g", "-shared", "-fPIC", "-o"])
            .arg(&so)
            .arg(&src)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let secs = secs();
    // A hang is a failure, not a stuck test run: `timeout` kills it well after its time.
    let mut cmd = Command::new("timeout");
    cmd.arg("-s").arg("KILL").arg(format!("{}", secs * 10 + 60)).arg(program("stress.c"));
    cmd.arg(secs.to_string()).arg(&so);
    let r = run_with(&mut cmd, opts);
    assert_eq!(
        r.status,
        Some(0),
        "crashed, hung or reported in a child:\n{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(r.stdout.contains("end\n"), "{}", r.stdout);
    let n = |k: &str| r.printed(k).parse::<u64>().unwrap();
    assert!(n("ops") > 1000, "{}", r.stdout);
    assert!(n("forks") >= 1 && n("dlopens") >= 1 && n("sig_allocs") >= 1, "{}", r.stdout);
    assert_eq!(n("bad_children"), 0, "a child died by a signal or was not reaped: {}", r.stdout);

    // Every line of stderr is one whole JSON report; one per distinct allocation depth.
    let mut depths = BTreeSet::new();
    for line in r.stderr.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a whole JSON report ({e}): {line}"));
        assert_eq!(v["kind"], "double-free", "{line}");
        let f = v["function"].as_str().unwrap();
        assert!(f.starts_with("deliberate_double_free+"), "{line}");
        let alloc = v["allocated"]["stack"].as_array().unwrap();
        let depth = alloc.iter().filter(|f| f["function"] == "alloc_at_depth").count();
        assert!(depth >= 1, "allocation stack without alloc_at_depth: {line}");
        assert!(depths.insert(depth), "two reports for depth {depth}: dedup broken\n{}", r.stderr);
    }
    assert_eq!(depths.len() as u64, n("depths"), "reports lost:\n{}\n{}", r.stdout, r.stderr);
}

#[test]
fn stress_generic_shadow_stacks() {
    stress("report_format=json:detect_leaks=0:stacks=shadow:exitcode=0");
}

#[test]
fn stress_guarded() {
    stress(
        "report_format=json:detect_leaks=0:stacks=shadow:exitcode=0:mode=guarded:sample_rate=10",
    );
}

/// The bytes of the allocating handler's alternate stack: the classic 8192-byte `SIGSTKSZ`
/// (of which an AVX-512 signal frame takes 3376), used with a release libukasan.so (CI runs
/// this test in release). Reports from there run on the report stack from their first step
/// (`report_stack.rs`), the handler's malloc and free in place. An unoptimised (debug)
/// libukasan.so needs more than 13 KiB for a `malloc` in a handler, so the debug run uses
/// 64 KiB.
fn alloc_altstack() -> usize {
    if cfg!(debug_assertions) {
        64 << 10
    } else {
        8192
    }
}

/// `stress_eh.cc` under the preload: C++ exceptions through patched frames on 3 threads
/// while 4 threads allocate, and handlers on alternate stacks of `AT_MINSIGSTKSZ` bytes (the
/// kernel frame only) and of `alloc_altstack()` bytes (allocating, and reporting a double
/// free from the alternate stack). Every report is whole JSON; the double frees after the
/// unwinding name exactly their allocation depth (no stale shadow-stack entry).
fn stress_eh(opts: &str) {
    let prog = program("stress_eh.cc");
    let secs = secs();
    let mut cmd = Command::new("timeout");
    cmd.arg("-s").arg("KILL").arg(format!("{}", secs * 10 + 60)).arg(&prog);
    cmd.arg(secs.to_string()).arg(alloc_altstack().to_string());
    let r = run_with(&mut cmd, opts);
    assert_eq!(r.status, Some(0), "crashed or hung:\n{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("end\n"), "{}", r.stdout);
    let n = |k: &str| r.printed(k).parse::<u64>().unwrap();
    // SAFETY: getauxval has no preconditions.
    let min = unsafe { libc::getauxval(libc::AT_MINSIGSTKSZ) };
    assert_eq!(n("min_stack"), if min == 0 { 2048 } else { min }, "{}", r.stdout);
    assert!(n("ops") > 1000 && n("throws") > 10, "{}", r.stdout);
    assert_eq!(n("throws"), n("catches"), "an exception lost: {}", r.stdout);
    assert_eq!(n("guards_made"), n("guards_gone"), "a destructor skipped: {}", r.stdout);
    assert!(n("sig_min") >= 1 && n("sig_alloc") >= 1, "{}", r.stdout);
    let mut depths = BTreeSet::new();
    let mut in_handler = 0;
    for line in r.stderr.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a whole JSON report ({e}): {line}"));
        assert_eq!(v["kind"], "double-free", "{line}");
        let f = v["function"].as_str().unwrap();
        let alloc: Vec<&str> = v["allocated"]["stack"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["function"].as_str().unwrap_or("?"))
            .collect();
        if f.starts_with("handler_double_free") {
            // Captured on the alternate stack: the handler's frames, then the signal frame.
            assert_eq!(alloc[..2], ["handler_double_free()", "on_alloc"], "{line}");
            in_handler += 1;
            continue;
        }
        assert!(f.starts_with("deliberate_double_free"), "{line}");
        let depth = alloc.iter().take_while(|f| f.starts_with("alloc_at_depth")).count();
        assert_eq!(alloc.get(depth), Some(&"thrower"), "stale or lost frames: {alloc:?}");
        assert!(depths.insert(depth), "two reports for depth {depth}:\n{}", r.stderr);
    }
    assert_eq!(depths.len() as u64, n("depths"), "reports lost:\n{}\n{}", r.stdout, r.stderr);
    // Identical reports are printed once.
    assert_eq!(in_handler, n("sig_reports").min(1), "{}\n{}", r.stdout, r.stderr);
}

#[test]
fn stress_exceptions_and_small_altstacks_generic() {
    stress_eh("report_format=json:detect_leaks=0:stacks=shadow:exitcode=0");
}

#[test]
fn stress_exceptions_and_small_altstacks_guarded() {
    stress_eh(
        "report_format=json:detect_leaks=0:stacks=shadow:exitcode=0:mode=guarded:sample_rate=10",
    );
}

/// `stress_panic.rs` under the preload: Rust panics through patched frames, caught with
/// `catch_unwind` at random levels on 3 threads while 4 threads allocate; double frees after
/// the unwinding, each report whole JSON naming `alloc_at_depth` frames then `panicker`.
fn stress_panic(opts: &str) {
    let prog = program("stress_panic.rs");
    let secs = secs();
    let mut cmd = Command::new("timeout");
    cmd.arg("-s").arg("KILL").arg(format!("{}", secs * 10 + 60)).arg(&prog).arg(secs.to_string());
    let r = run_with(&mut cmd, opts);
    assert_eq!(r.status, Some(0), "crashed or hung:\n{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("end\n"), "{}", r.stdout);
    let n = |k: &str| r.printed(k).parse::<u64>().unwrap();
    assert!(n("ops") > 1000 && n("panics") > 10, "{}", r.stdout);
    assert_eq!(n("panics"), n("caught"), "a panic lost: {}", r.stdout);
    assert_eq!(n("made"), n("dropped"), "a Drop skipped: {}", r.stdout);
    let mut depths = BTreeSet::new();
    for line in r.stderr.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a whole JSON report ({e}): {line}"));
        assert_eq!(v["kind"], "double-free", "{line}");
        let f = v["function"].as_str().unwrap();
        assert!(f.starts_with("stress_panic::deliberate_double_free+"), "{line}");
        let alloc: Vec<&str> = v["allocated"]["stack"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["function"].as_str().unwrap_or("?"))
            .collect();
        let depth = alloc.iter().take_while(|f| **f == "stress_panic::alloc_at_depth").count();
        assert!(depth >= 1, "{line}");
        // Depths over the trace's depth limit end in alloc_at_depth frames only.
        if depth < alloc.len() {
            assert_eq!(alloc[depth], "stress_panic::panicker", "stale or lost frames: {alloc:?}");
        }
        assert!(depths.insert(depth), "two reports for depth {depth}:\n{}", r.stderr);
    }
    assert_eq!(depths.len() as u64, n("depths"), "reports lost:\n{}\n{}", r.stdout, r.stderr);
}

#[test]
fn stress_panics_generic() {
    stress_panic("report_format=json:detect_leaks=0:stacks=shadow:exitcode=0");
}

#[test]
fn stress_panics_guarded() {
    stress_panic(
        "report_format=json:detect_leaks=0:stacks=shadow:exitcode=0:mode=guarded:sample_rate=10",
    );
}
