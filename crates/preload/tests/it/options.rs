//! Options that change how reports are delivered.

use crate::common::{program, run, scratch, split_reports};

#[test]
fn unknown_and_bad_options_are_named_and_ignored() {
    let r = run(&program("bugs.c"), &["clean"], "bogus=1:depth=0:report_format=xml");
    assert!(
        r.stderr.contains("ukasan: unknown option 'bogus' ignored (accepted: stacks, depth,"),
        "{}",
        r.stderr
    );
    assert!(r
        .stderr
        .contains("bad value '0' for option 'depth' ignored (accepted: an integer 1..=256)"));
    assert!(r
        .stderr
        .contains("bad value 'xml' for option 'report_format' ignored (accepted: text, json)"));
    assert!(r.stdout.contains("end\n"));
    assert_eq!(r.status, Some(0));
}

#[test]
fn halt_on_error_stops_with_exitcode() {
    let r = run(&program("bugs.c"), &["double-free"], "halt_on_error=1:exitcode=42");
    assert_eq!(r.status, Some(42));
    assert!(!r.stdout.contains("end\n"));
    assert_eq!(r.reports().len(), 1);
}

#[test]
fn full_depot_says_which_option_raises_it() {
    let r = run(&program("bugs.c"), &["many-stacks"], "depot_size_mb=1");
    let warnings: Vec<&str> = r.stderr.lines().filter(|l| l.contains("stack depot full")).collect();
    assert_eq!(warnings.len(), 1, "{}", r.stderr);
    assert!(
        warnings[0].starts_with("ukasan: stack depot full (budget 1048576 bytes)")
            && warnings[0].contains(
                "raise it with UKASAN_OPTIONS=depot_size_mb=2 (now 1) or \
                 `ukasan run -o depot_size_mb=2`"
            ),
        "{}",
        warnings[0]
    );
    assert!(r.stdout.contains("end\n"), "the program goes on: {}", r.stderr);
    assert_eq!(r.status, Some(0), "a full depot is not a bug: {}", r.stderr);
    // The default budget holds them all; depot_size_mb is applied at start (verbosity=1).
    let r = run(&program("bugs.c"), &["many-stacks"], "verbosity=1:depot_size_mb=32");
    assert!(!r.stderr.contains("stack depot full"), "{}", r.stderr);
    assert!(r.stderr.contains(" depot=32 MiB\n"), "{}", r.stderr);
}

#[test]
fn bad_depot_size_names_the_accepted_values() {
    let r = run(&program("bugs.c"), &["clean"], "depot_size_mb=0");
    assert!(
        r.stderr.contains(
            "bad value '0' for option 'depot_size_mb' ignored \
             (accepted: an integer number of MiB, 1..=1024)"
        ),
        "{}",
        r.stderr
    );
}

#[test]
fn exitcode_is_configurable() {
    let r = run(&program("bugs.c"), &["double-free"], "exitcode=7");
    assert_eq!(r.status, Some(7));
    assert!(r.stdout.contains("end\n"));
}

#[test]
fn json_lines_format() {
    let r = run(&program("bugs.c"), &["double-free"], "report_format=json");
    let lines: Vec<&str> = r.stderr.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["kind"], "double-free");
    assert_eq!(v["thread"].to_string(), r.printed("main_tid"));
    assert_eq!(v["allocated"]["thread"].to_string(), r.printed("main_tid"));
    assert_eq!(v["freed"]["thread"].to_string(), r.printed("free_tid"));
    let frames = v["allocated"]["stack"].as_array().unwrap();
    assert!(frames.iter().any(|f| f["function"] == "do_alloc"), "{}", lines[0]);
    assert_eq!(v["object"]["size"], 64);
    assert!(v["function"].as_str().unwrap().starts_with("do_free+"), "{}", lines[0]);
    assert!(v.get("found_at").is_none(), "{}", lines[0]);
}

#[test]
fn json_late_finding_names_the_freeing_function_and_when() {
    let r = run(&program("bugs.c"), &["uaf-at-exit"], "report_format=json");
    let lines: Vec<&str> = r.stderr.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["kind"], "use-after-free");
    assert_eq!(v["found_at"], "exit");
    assert!(v["function"].as_str().unwrap().starts_with("do_free+"), "{}", lines[0]);
}

#[test]
fn log_path_gets_the_pid_appended() {
    let base = scratch().join("log");
    let r = run(&program("bugs.c"), &["double-free"], &format!("log_path={}", base.display()));
    assert!(!r.stderr.contains("BUG:"), "{}", r.stderr);
    let pid_file = std::fs::read_dir(scratch())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("log."))
        .expect("log file");
    let text = std::fs::read_to_string(pid_file).unwrap();
    let reps = split_reports(&text);
    assert_eq!(reps.len(), 1);
    assert_eq!(reps[0].kind(), "double-free");
}

#[test]
fn verbosity_prints_the_configuration_and_statistics() {
    let r = run(&program("bugs.c"), &["clean"], "verbosity=1:stacks=fp:depth=20");
    assert!(
        r.stderr.contains("ukasan: generic mode, stacks=Fp depth=20 quarantine=64 MiB"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("ukasan: 0 report(s); stack depot: "), "{}", r.stderr);
    let r = run(&program("bugs.c"), &["clean"], "");
    assert!(r.stderr.is_empty(), "{}", r.stderr);
}

#[test]
fn identical_reports_are_printed_once() {
    let r = run(&program("bugs.c"), &["double-free-loop"], "");
    assert_eq!(r.reports().len(), 1, "{}", r.stderr);
    assert!(r.stdout.contains("end\n"));
}

#[test]
fn symbolize_0_prints_raw_frames_and_the_module_map() {
    let r = run(&program("bugs.c"), &["double-free"], "symbolize=0");
    let rep = r.only("double-free");
    assert!(rep.stack().iter().all(|f| f.contains(" [<0x")), "{}", rep.text);
    assert!(!rep.text.contains(" in do_free"), "{}", rep.text);
    assert!(rep.text.contains("Module map:\nmodule start=0x"), "{}", rep.text);
    assert!(rep.text.contains("bugs_c"), "{}", rep.text);
}
