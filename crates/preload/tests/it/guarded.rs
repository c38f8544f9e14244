//! Guarded mode (`mode=guarded:sample_rate=1`): bad reads and writes of guarded objects are
//! reported at the access, from the SIGSEGV handler; `progs/guarded.c` has the scenarios.

use crate::common::{lib, program, run, scratch, Run};
use std::process::Command;

const GUARDED: &str = "mode=guarded:sample_rate=1:guarded_placement=right";
const LEFT: &str = "guarded_placement=left";

/// Runs a scenario of `guarded.c`; its buggy objects are leaked, so leak reports are off
/// unless `extra` turns them on.
fn guarded(scenario: &str, extra: &str) -> Run {
    run(&program("guarded.c"), &[scenario], &format!("{GUARDED}:detect_leaks=0:{extra}"))
}

/// The one report, which must be of `kind` with `what` (`read`/`write`) in a function
/// named `function`.
fn one(r: &Run, kind: &str, what: &str, function: &str) -> crate::common::Report {
    let rep = r.only(kind);
    assert!(
        rep.header().starts_with(&format!("BUG: KASAN: {kind} {what} in {function}+")),
        "{}",
        rep.text
    );
    assert_eq!(r.reports().len(), 1, "{}", r.stderr);
    rep
}

#[test]
fn overflow_read_by_one_byte_is_reported_at_the_read() {
    let r = guarded("overflow-read", "");
    let main = r.printed("main_tid");
    let rep = one(&r, "slab-out-of-bounds", "read", "peek");
    assert!(
        rep.access().starts_with("Read of size 1 at addr 0x")
            && rep.access().ends_with(&format!(" by thread {main}")),
        "{}",
        rep.access()
    );
    // Frame #0 is the faulting instruction in peek, its caller follows.
    let stack = rep.stack();
    assert!(stack[0].contains(" in peek+") && stack[0].contains("guarded.c:"), "{}", rep.text);
    assert!(stack.iter().any(|f| f.contains(" in main+")), "{}", rep.text);
    assert!(rep.text.contains("located 0 bytes to the right of 32-byte region"), "{}", rep.text);
    rep.assert_track("Allocated by thread", &main, "do_alloc");
    assert!(!rep.text.contains("Freed by thread"), "{}", rep.text);
    // The access completed (the page was opened) and the program went on; exit status 1.
    assert!(r.stdout.contains("read=") && r.stdout.contains("end\n"), "{}", r.stdout);
    assert_eq!(r.status, Some(1));
}

#[test]
fn overflow_write_by_one_byte_is_reported_at_the_write() {
    let r = guarded("overflow-write", "");
    let rep = one(&r, "slab-out-of-bounds", "write", "poke");
    assert!(rep.access().starts_with("Write of size 1 at addr 0x"), "{}", rep.access());
    assert!(rep.text.contains("located 0 bytes to the right of 48-byte region"), "{}", rep.text);
    rep.assert_track("Allocated by thread", &r.printed("main_tid"), "do_alloc");
    assert!(r.stdout.contains("wrote\n"));
}

#[test]
fn use_after_free_read_and_write_name_the_freeing_function() {
    for (scenario, what, function, inside) in
        [("uaf-read", "read", "peek", 5), ("uaf-write", "write", "poke", 9)]
    {
        let r = guarded(scenario, "");
        let main = r.printed("main_tid");
        let rep = one(&r, "use-after-free", what, function);
        let verb = if what == "read" { "Read" } else { "Write" };
        assert!(rep.access().starts_with(&format!("{verb} of size 1 at addr 0x")), "{}", rep.text);
        assert!(
            rep.text.contains(&format!("located {inside} bytes inside of 64-byte region")),
            "{}",
            rep.text
        );
        rep.assert_track("Allocated by thread", &main, "do_alloc");
        rep.assert_track("Freed by thread", &main, "do_free");
        // The freed object shows the free poison.
        assert!(
            rep.text.lines().any(|l| l.starts_with(">0x") && l.contains(" fb fb")),
            "{}",
            rep.text
        );
    }
}

#[test]
fn read_of_object_freed_on_another_thread() {
    let r = guarded("uaf-thread", "");
    let (main, freer) = (r.printed("main_tid"), r.printed("free_tid"));
    assert_ne!(main, freer);
    let rep = one(&r, "use-after-free", "read", "peek");
    assert!(rep.access().ends_with(&format!(" by thread {main}")), "{}", rep.text);
    rep.assert_track("Allocated by thread", &main, "do_alloc");
    rep.assert_track("Freed by thread", &freer, "do_free");
    assert!(rep.section("Freed by thread").1.iter().any(|f| f.contains(" in free_in_thread+")));
    assert!(rep.text.contains("located 0 bytes inside of 80-byte region"), "{}", rep.text);
}

#[test]
fn writes_into_the_slack_are_found_at_free_and_double_free_at_the_call() {
    let r = guarded("slack-write", "");
    let rep = r.only("out-of-bounds");
    assert!(
        rep.header().starts_with("BUG: KASAN: out-of-bounds write in do_free+")
            && rep.header().ends_with(" (found at free)"),
        "{}",
        rep.text
    );
    assert!(rep.access().contains("modified: 79"), "{}", rep.access());
    assert!(rep.text.contains("located 4 bytes to the left of 13-byte region"), "{}", rep.text);
    let r = guarded("double-free", "");
    let rep = r.only("double-free");
    assert!(rep.header().starts_with("BUG: KASAN: double-free in do_free+"), "{}", rep.text);
    rep.assert_track("Freed by thread", &r.printed("main_tid"), "do_free");
    assert!(r.stdout.contains("freed twice"));
}

#[test]
fn halt_on_error_stops_at_the_first_report() {
    let r = guarded("halt", "halt_on_error=1:exitcode=42");
    one(&r, "slab-out-of-bounds", "read", "peek");
    assert!(!r.stdout.contains("after"), "{}", r.stdout);
    assert_eq!(r.status, Some(42), "{}", r.stderr);
}

#[test]
fn the_programs_own_segv_handler_still_gets_its_faults() {
    let so = scratch().join("libguarded_own.so");
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/progs/own_handler.c");
    let st =
        Command::new("cc").args(["-shared", "-fPIC", "-O1"]).arg(&src).arg("-o").arg(&so).status();
    assert!(st.unwrap().success(), "compiling own_handler.c failed");
    // Preloaded after libukasan.so, initialized before it: its handler was there first.
    let preload = format!("{}:{}", lib().display(), so.display());
    let o = Command::new(program("guarded.c"))
        .arg("own-handler")
        .env("LD_PRELOAD", preload)
        .env("UKASAN_OPTIONS", format!("{GUARDED}:detect_leaks=0"))
        .output()
        .unwrap();
    let r = Run {
        status: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    assert!(
        r.stdout.contains("own handler ran\nown fault handled=5\n"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    // A heap fault after it is still the detector's.
    one(&r, "slab-out-of-bounds", "read", "peek");
    assert!(r.stdout.contains("end\n") && !r.stdout.contains("foreign fault"), "{}", r.stdout);
}

#[test]
fn a_handler_installed_later_is_chained_too() {
    let r = guarded("own-handler-late", "");
    // Before and after the detector put its handler back in front, the program's handler
    // got the program's faults.
    assert!(
        r.stdout.contains("late handler ran\nlate handler ran\nown faults handled=12\n"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    one(&r, "slab-out-of-bounds", "read", "peek");
    // A fault neither handler owns ends with the default action (no loop, no report).
    assert!(!r.stdout.contains("survived"), "{}", r.stdout);
    assert_eq!(r.status, None, "{}", r.stderr);
}

#[test]
fn stack_overflow_is_chained_not_reported() {
    let r = guarded("stack-overflow", "");
    assert!(!r.stderr.contains("BUG: KASAN"), "{}", r.stderr);
    // Killed by the default action of SIGSEGV (no exit status).
    assert_eq!(r.status, None, "{}", r.stderr);
}

#[test]
fn clean_program_with_more_objects_than_slots() {
    let r = guarded("clean", "guarded_slots=64:detect_leaks=1");
    assert!(r.stdout.contains("clean done\nend\n"), "{}\n{}", r.stdout, r.stderr);
    assert!(r.reports().is_empty(), "{}", r.stderr);
    assert_eq!(r.status, Some(0), "{}", r.stderr);
    // The program's stderr is its own: the pool running dry is said only when asked.
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    // verbosity=1: the small slots ran dry once, it was said once, and the rest went generic
    // (the 16 large slots, for the reallocs beyond 16 KiB, are freed again and last).
    let r = guarded("clean", "guarded_slots=64:detect_leaks=1:verbosity=1");
    assert_eq!(r.reports().len(), 0, "{}", r.stderr);
    assert_eq!(r.stderr.matches("guarded pool exhausted").count(), 1, "{}", r.stderr);
    assert_eq!(r.stderr.matches("64 small-object slots in use").count(), 1, "{}", r.stderr);
}

#[test]
fn guarded_frees_get_the_family_and_size_checks_of_generic_chunks() {
    let p = program("mismatch.cc");
    let r = run(&p, &["array-delete"], GUARDED);
    let rep = r.only("alloc-dealloc-mismatch");
    assert!(
        rep.access().contains("with operator delete, but it was allocated with operator new []"),
        "{}",
        rep.text
    );
    assert_eq!(r.reports().len(), 1, "{}", r.stderr);
    let r = run(&p, &["sized-delete"], GUARDED);
    let rep = r.only("new-delete-type-mismatch");
    assert!(rep.header().contains(" in release_sized("), "{}", rep.text);
    assert!(
        rep.access().contains(
            "size of the allocated type: 16 bytes; size of the deallocated type: 8 bytes"
        ),
        "{}",
        rep.text
    );
    // The object was a guarded one: its memory is the slot's (canary before it).
    assert!(rep.text.contains("located 0 bytes inside of 16-byte region"), "{}", rep.text);
    assert!(rep.text.lines().any(|l| l.contains(" aa aa aa")), "{}", rep.text);
}

#[test]
fn guarded_objects_are_leak_candidates_and_roots() {
    // bugs.c "leak": three 40-byte objects dropped, a 1000-byte one kept by a global; all
    // four are guarded here. Before guarded objects took part in the scan, none was reported.
    let r = run(&program("bugs.c"), &["leak"], GUARDED);
    let rep = r.only("memory-leak");
    assert!(rep.header().starts_with("BUG: KASAN: memory-leak in do_alloc+"), "{}", rep.text);
    assert!(rep.access().starts_with("Leak of 120 byte(s) in 3 object(s)"), "{}", rep.text);
    rep.assert_track("Allocated by thread", &r.printed("main_tid"), "do_alloc");
    assert!(r.stderr.contains("SUMMARY: ukasan: 120 byte(s) leaked in 3 allocation(s)"));
}

#[test]
fn threads_churning_through_a_small_pool_run_clean() {
    // 8 threads, 160000 malloc/realloc/free of 1..3100 bytes through 16 slots: slots are
    // taken, freed and reused across threads all the time.
    let r = guarded("threads", "guarded_slots=16:detect_leaks=1");
    assert!(r.stdout.contains("threads ok\nend\n"), "{}\n{}", r.stdout, r.stderr);
    assert!(r.reports().is_empty(), "{}", r.stderr);
    assert_eq!(r.status, Some(0), "{}", r.stderr);
}

#[test]
fn json_fault_reports_say_read_or_write_and_the_size() {
    let r = guarded("uaf-write", "report_format=json");
    let line = r.stderr.lines().find(|l| l.starts_with('{')).expect("a JSON report");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["kind"], "use-after-free", "{line}");
    assert_eq!(v["is_write"], true, "{line}");
    assert_eq!(v["size"], 1, "{line}");
    assert!(v["function"].as_str().unwrap().starts_with("poke+"), "{line}");
    assert_eq!(v["freed"]["stack"][0]["function"], "do_free", "{line}");
}

/// Asserts `rep` is about the object `do_alloc` made on the main thread, at `located`.
fn assert_located(r: &Run, rep: &crate::common::Report, located: &str) {
    assert!(rep.text.contains(&format!("The buggy address is located {located}")), "{}", rep.text);
    rep.assert_track("Allocated by thread", &r.printed("main_tid"), "do_alloc");
}

#[test]
fn underflows_fault_at_once_with_left_placement() {
    for (scenario, what, function, size, located) in [
        ("underflow-read", "Read", "peek", 1, "1 bytes to the left of 32-byte region"),
        ("underflow-write", "Write", "poke", 1, "1 bytes to the left of 40-byte region"),
        ("underflow-read-page", "Read", "peek", 1, "4096 bytes to the left of 24-byte region"),
        ("underflow-write-page", "Write", "poke", 1, "4096 bytes to the left of 56-byte region"),
    ] {
        let r = guarded(scenario, LEFT);
        let rep = one(&r, "slab-out-of-bounds", &what.to_lowercase(), function);
        assert!(
            rep.access().starts_with(&format!("{what} of size {size} at addr 0x")),
            "{scenario}: {}",
            rep.text
        );
        assert_located(&r, &rep, located);
        assert!(!rep.text.contains("Freed by thread"), "{}", rep.text);
        assert!(r.stdout.contains("end\n"), "{scenario}: {}", r.stdout);
    }
    // With right placement the same underflow by a byte is no fault: it lands in the canary
    // before the object (found at free, if written) and is not reported at the read.
    let r = guarded("underflow-read", "");
    assert!(r.reports().is_empty(), "{}", r.stderr);
}

#[test]
fn a_shared_guard_page_goes_to_the_nearer_object() {
    // Slot k-1's object against its right guard page, slot k's against its left one: the
    // guard page between them is one page; a fault in it names the nearer object.
    let r = guarded("shared-guard", "guarded_placement=random");
    assert!(r.stdout.contains("pairs=2\n"), "{}\n{}", r.stdout, r.stderr);
    let expected: Vec<&str> = r.stdout.lines().filter_map(|l| l.strip_prefix("expect=")).collect();
    let reports = r.reports();
    assert_eq!(reports.len(), 2, "{}", r.stderr);
    for (rep, (located, what)) in reports.iter().zip(expected.iter().zip(["read", "write"])) {
        assert!(
            rep.header().starts_with(&format!("BUG: KASAN: slab-out-of-bounds {what} in ")),
            "{}",
            rep.text
        );
        assert_located(&r, rep, located);
    }
}

#[test]
fn large_objects_are_guarded_too() {
    let r = guarded("large-overflow", "");
    let rep = one(&r, "slab-out-of-bounds", "read", "peek");
    assert!(rep.access().starts_with("Read of size 1 at addr 0x"), "{}", rep.text);
    assert_located(&r, &rep, "0 bytes to the right of 100000-byte region");

    let r = guarded("large-underflow", LEFT);
    let rep = one(&r, "slab-out-of-bounds", "write", "poke");
    assert_located(&r, &rep, "1 bytes to the left of 70000-byte region");

    let r = guarded("large-uaf", "");
    let rep = one(&r, "use-after-free", "read", "peek");
    assert_located(&r, &rep, "150000 bytes inside of 200000-byte region");
    rep.assert_track("Freed by thread", &r.printed("main_tid"), "do_free");

    // Freed large slots are reused (4 of them with 16 small slots); the data survives
    // realloc and calloc memory is zero.
    let r = guarded("large-churn", "guarded_slots=16:detect_leaks=1");
    assert!(r.stdout.contains("large ok\nend\n"), "{}\n{}", r.stdout, r.stderr);
    assert!(r.reports().is_empty(), "{}", r.stderr);
}

#[test]
fn stack_overflow_in_a_thread_is_not_reported() {
    let r = guarded("thread-stack-overflow", "");
    assert!(!r.stderr.contains("BUG: KASAN"), "{}", r.stderr);
    assert!(!r.stderr.contains("ukasan: fault"), "{}", r.stderr);
    assert_eq!(r.status, None, "{}", r.stderr);
}

#[test]
fn heap_fault_on_a_tiny_alternate_stack_is_reported() {
    let r = guarded("tiny-altstack", "");
    let rep = one(&r, "slab-out-of-bounds", "read", "peek");
    assert_located(&r, &rep, "0 bytes to the right of 32-byte region");
    assert!(r.stdout.contains("read=") && r.stdout.contains("end\n"), "{}", r.stdout);
}

#[test]
fn heap_fault_with_the_threads_stack_nearly_used_up_is_reported() {
    // A thread with under 1.5 KiB of stack left faults on a guarded object: the detector's
    // alternate stack for that thread takes the signal frame, the report stack the rest.
    let r = guarded("deep-thread", "");
    let rep = one(&r, "slab-out-of-bounds", "read", "peek");
    assert_located(&r, &rep, "0 bytes to the right of 32-byte region");
    assert!(rep.stack().iter().any(|f| f.contains(" in go_deep+")), "{}", rep.text);
    assert!(r.stdout.contains("read=") && r.stdout.contains("end\n"), "{}", r.stdout);
}

#[test]
fn exit_leak_scan_races_a_thread_freeing_guarded_objects() {
    // A thread frees and allocates guarded objects (small and large) while the exit checks
    // scan for leaks: the scan never meets a page made inaccessible under it.
    for _ in 0..5 {
        let r = guarded("exit-race", "detect_leaks=1");
        assert!(!r.stderr.contains("ukasan: fault"), "{}", r.stderr);
        assert!(r.status.is_some(), "killed: {}", r.stderr);
        assert!(r.reports().iter().all(|rep| rep.kind() == "memory-leak"), "{}", r.stderr);
    }
}

#[test]
fn with_stacks_off_guarded_objects_still_record_their_stacks() {
    // The cheap configuration: generic objects without stacks, guarded ones with.
    let r = guarded("uaf-read", "stacks=off");
    let rep = one(&r, "use-after-free", "read", "peek");
    rep.assert_track("Allocated by thread", &r.printed("main_tid"), "do_alloc");
    rep.assert_track("Freed by thread", &r.printed("main_tid"), "do_free");
}

#[test]
fn without_guard_markers_mprotect_guards_the_same() {
    // guarded_markers=0: the pool is guarded by mprotect, as on kernels before 6.13.
    let r = guarded("overflow-read", "guarded_markers=0");
    let rep = one(&r, "slab-out-of-bounds", "read", "peek");
    assert_located(&r, &rep, "0 bytes to the right of 32-byte region");
    let r = guarded("uaf-write", "guarded_markers=0");
    let rep = one(&r, "use-after-free", "write", "poke");
    rep.assert_track("Freed by thread", &r.printed("main_tid"), "do_free");
    assert!(rep.text.lines().any(|l| l.starts_with(">0x") && l.contains(" fb fb")), "{}", rep.text);
    let r = guarded("large-uaf", "guarded_markers=0");
    let rep = one(&r, "use-after-free", "read", "peek");
    assert_located(&r, &rep, "150000 bytes inside of 200000-byte region");
    let r = guarded("underflow-write", "guarded_markers=0:guarded_placement=left");
    let rep = one(&r, "slab-out-of-bounds", "write", "poke");
    assert_located(&r, &rep, "1 bytes to the left of 40-byte region");
    for scenario in ["threads", "large-churn"] {
        let r = guarded(scenario, "guarded_markers=0:guarded_slots=16:detect_leaks=1");
        assert!(r.reports().is_empty() && r.status == Some(0), "{scenario}: {}", r.stderr);
    }
}
