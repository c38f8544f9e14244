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
