//! `ukasan bench --quick` and `ukasan bench capture`.

use crate::{scratch, text, ukasan};

const FLAVORS: [&str; 7] = [
    "plain",
    "no-stack-traces",
    "unwinder",
    "unwinder-no-depot",
    "fp",
    "shadow",
    "shadow-no-depot",
];

/// A row `  name:   0.123 [...` with a time.
fn timed_row(out: &str, flavor: &str) -> bool {
    out.lines().any(|l| {
        let l = l.trim_start();
        l.strip_prefix(flavor)
            .and_then(|r| r.strip_prefix(':'))
            .and_then(|r| r.split_whitespace().next())
            .is_some_and(|t| t.parse::<f64>().is_ok())
    })
}

#[test]
fn quick_bench_prints_a_row_per_flavor_and_writes_json_and_svg() {
    let dir = scratch("bench");
    // sqlite3 is the smallest workload; the Rust one is always there.
    let has_sqlite = std::process::Command::new("sqlite3").arg("-version").output().is_ok();
    let workload = if has_sqlite { "sqlite3" } else { "rust" };
    let (json, svg) = (dir.join("b.json"), dir.join("b.svg"));
    let o = ukasan()
        .args(["bench", "--quick", "--workloads", workload, "--json"])
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(timed_row(&out, "plain"), "empty table:\n{out}");
    let mut timed = 0;
    for f in FLAVORS {
        if timed_row(&out, f) {
            timed += 1;
        } else {
            // A flavor whose runtime is not built yet must say so, never vanish.
            assert!(
                out.contains(&format!("{f}:")) && out.contains("skipped"),
                "{f} missing:\n{out}"
            );
            eprintln!("note: flavor {f} skipped in this build");
        }
    }
    assert!(timed >= 2, "only {timed} flavors timed:\n{out}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let cells = v["workloads"][0]["flavors"].as_array().unwrap();
    assert_eq!(cells.len(), FLAVORS.len());
    assert!(cells[0]["median_s"].as_f64().unwrap() > 0.0);
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
}

#[test]
fn bad_bench_input_names_the_accepted_values() {
    let o = ukasan().args(["bench", "--flavors", "plain,turbo"]).output().unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(err.contains("unknown flavor `turbo`") && err.contains("shadow-no-depot"), "{err}");
    let o = ukasan().args(["bench", "--workloads", "perl"]).output().unwrap();
    let (_, err) = text(&o);
    assert!(err.contains("unknown workload `perl`") && err.contains("python3"), "{err}");
    let o = ukasan().args(["bench", "--mode", "hw-tags"]).output().unwrap();
    // This is x86-64: no MTE.
    assert!(text(&o).1.contains("mode `hw-tags` needs an arm64 CPU with MTE"), "{}", text(&o).1);
}

#[test]
fn capture_table_has_a_row_per_backend() {
    let o = ukasan().args(["bench", "capture", "--quick", "--rounds", "1"]).output().unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    for row in ["copy", "fp", "dwarf", "libgcc", "shadow", "cet", "gcs", "scs"] {
        let line = out.lines().find(|l| l.split_whitespace().next() == Some(row));
        let line = line.unwrap_or_else(|| panic!("no {row} row:\n{out}"));
        let first = line.split_whitespace().nth(1).unwrap();
        assert!(first == "unsupported" || first.parse::<f64>().is_ok(), "{line}");
    }
    // The frame-pointer walk and the copy always work here: numbers, never "unsupported".
    for row in ["copy", "fp"] {
        let line = out.lines().find(|l| l.starts_with(row)).unwrap();
        assert!(!line.contains("unsupported"), "{line}");
    }
}

#[test]
fn guarded_bench_runs_the_flavors_in_guarded_mode_and_sample_rate_needs_it() {
    let o = ukasan().args(["bench", "--quick", "--sample-rate", "10"]).output().unwrap();
    let (_, err) = text(&o);
    assert!(!o.status.success() && err.contains("add --mode guarded"), "{err}");
    let o = ukasan()
        .args(["bench", "--quick", "--mode", "guarded", "--sample-rate", "1"])
        .args(["--workloads", "rust", "--flavors", "no-stack-traces,shadow"])
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("mode guarded"), "{out}");
    assert!(timed_row(&out, "no-stack-traces") && timed_row(&out, "shadow"), "{out}\n{err}");
}

#[test]
fn sampling_bench_prints_guarded_rows_and_the_target() {
    let o = ukasan().args(["bench", "sampling", "--quick", "--rates", "1,1000"]).output().unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    for flavor in ["plain", "no-stack-traces", "generic", "guarded-1", "guarded-1000"] {
        let row = out.lines().find(|l| l.trim_start().starts_with(&format!("{flavor} ")));
        let row = row.unwrap_or_else(|| panic!("no {flavor} row:\n{out}"));
        // cpu, wall and RSS are numbers; RSS is not zero (wait4 measured it).
        let cols: Vec<&str> = row.split_whitespace().collect();
        let rss: f64 = cols[3].parse().unwrap_or_else(|_| panic!("{row}"));
        assert!(rss > 0.0, "{row}");
    }
    assert!(out.contains("guarded-1000-all-stacks"), "{out}");
    assert!(out.contains("target: guarded-1000 <= +5% CPU over no-stack-traces: "), "{out}");
    let o = ukasan().args(["bench", "sampling", "--rates", "0"]).output().unwrap();
    assert!(!o.status.success());
}
