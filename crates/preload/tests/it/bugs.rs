//! One test per bug class: a C or C++ program with the bug, under LD_PRELOAD.

use crate::common::{program, run};

fn bugs(scenario: &str, opts: &str) -> crate::common::Run {
    run(&program("bugs.c"), &[scenario], opts)
}

#[test]
fn double_free_names_both_threads_and_stacks() {
    let r = bugs("double-free", "");
    let main = r.printed("main_tid");
    let freer = r.printed("free_tid");
    assert_ne!(main, freer);
    let rep = r.only("double-free");
    assert!(rep.header().starts_with("BUG: KASAN: double-free in do_free+"), "{}", rep.text);
    assert!(
        rep.access().starts_with("Free of addr 0x")
            && rep.access().ends_with(&format!("by thread {main}"))
    );
    assert!(rep.stack().iter().any(|f| f.contains(" in main+")), "{}", rep.text);
    rep.assert_track("Allocated by thread", &main, "do_alloc");
    rep.assert_track("Freed by thread", &freer, "do_free");
    assert!(rep.section("Freed by thread").1.iter().any(|f| f.contains(" in free_in_thread+")));
    assert!(rep.text.contains("which belongs to a 64-byte region ["), "{}", rep.text);
    assert!(rep.text.contains("Memory state around the buggy address:\n"));
    assert!(rep.text.lines().any(|l| l.starts_with(">0x") && l.contains(" fb fb")), "{}", rep.text);
    // A report makes a clean exit fail with exitcode (default 1); the program went on.
    assert!(r.stdout.contains("end\n"));
    assert_eq!(r.status, Some(1));
}

#[test]
fn invalid_free_of_stack_and_interior_pointers() {
    let r = bugs("invalid-free-stack", "");
    let rep = r.only("invalid-free");
    assert!(rep.header().starts_with("BUG: KASAN: invalid-free in do_free+"), "{}", rep.text);
    assert!(rep.text.contains("not the start of any chunk"));
    let r = bugs("invalid-free-interior", "");
    let rep = r.only("invalid-free");
    assert!(rep.stack().iter().any(|f| f.contains(" in main+")));
    // The registry names the object the pointer points into.
    assert!(rep.text.contains("located 8 bytes inside of 64-byte region"), "{}", rep.text);
    rep.assert_track("Allocated by thread", &r.printed("main_tid"), "do_alloc");
    // The interior free did not release the chunk: the real free afterwards is clean.
    assert_eq!(r.reports().len(), 1, "{}", r.stderr);
}

#[test]
fn overflow_found_at_free() {
    let r = bugs("overflow-at-free", "");
    let main = r.printed("main_tid");
    let rep = r.only("out-of-bounds");
    // Found when the program freed that object: its freeing function is the detection stack's.
    assert!(
        rep.header().starts_with("BUG: KASAN: out-of-bounds write in do_free+")
            && rep.header().ends_with(" (found at free)"),
        "{}",
        rep.text
    );
    assert!(rep.access().contains("detected at free by thread"), "{}", rep.access());
    assert!(
        rep.access().ends_with("1 byte(s) [0x") || rep.access().contains("modified: 78"),
        "{}",
        rep.access()
    );
    assert!(rep.text.contains("located 0 bytes to the right of 13-byte region"), "{}", rep.text);
    rep.assert_track("Allocated by thread", &main, "do_alloc");
}

#[test]
fn underflow_found_at_free() {
    let rep = bugs("underflow-at-free", "").only("out-of-bounds");
    assert!(rep.text.contains("located 2 bytes to the left of 40-byte region"), "{}", rep.text);
}

#[test]
fn overflow_of_live_object_found_at_exit() {
    let r = bugs("overflow-at-exit", "");
    let rep = r.only("out-of-bounds");
    // Found at exit: the header names the allocating function, not the exit hook.
    assert!(
        rep.header().starts_with("BUG: KASAN: out-of-bounds write in do_alloc+")
            && rep.header().ends_with(" (found at exit)"),
        "{}",
        rep.text
    );
    assert!(rep.access().contains("detected at exit"), "{}", rep.text);
    assert!(rep.text.contains("located 6 bytes to the right of 24-byte region"), "{}", rep.text);
    rep.assert_track("Allocated by thread", &r.printed("main_tid"), "do_alloc");
    assert_eq!(r.status, Some(1));
}

#[test]
fn use_after_free_found_at_eviction() {
    let r = bugs("uaf-at-eviction", "quarantine_size_mb=1");
    let main = r.printed("main_tid");
    let rep = r.only("use-after-free");
    // Found while another free evicted it: the header names the function that freed it.
    assert!(
        rep.header().starts_with("BUG: KASAN: use-after-free write in do_free+")
            && rep.header().ends_with(" (found at quarantine eviction)"),
        "{}",
        rep.text
    );
    assert!(rep.access().contains("detected at quarantine eviction"), "{}", rep.text);
    assert!(rep.access().contains("modified: 07"), "{}", rep.access());
    assert!(rep.text.contains("located 5 bytes inside of 32-byte region"), "{}", rep.text);
    // Detected while churn() was freeing (its own free call, not do_free's).
    assert!(rep.stack().first().is_some_and(|f| f.contains(" in churn+")), "{}", rep.text);
    rep.assert_track("Allocated by thread", &main, "do_alloc");
    rep.assert_track("Freed by thread", &main, "do_free");
    // Reported once, not again at exit.
    assert!(r.stdout.contains("churned"));
}

#[test]
fn overflow_of_freed_object_found_at_eviction() {
    let r = bugs("overflow-at-eviction", "quarantine_size_mb=1");
    let rep = r.only("out-of-bounds");
    // Found while churn() freed other objects: the header names the allocating function.
    assert!(
        rep.header().starts_with("BUG: KASAN: out-of-bounds write in do_alloc+")
            && rep.header().ends_with(" (found at quarantine eviction)"),
        "{}",
        rep.text
    );
    assert!(rep.stack().first().is_some_and(|f| f.contains(" in churn+")), "{}", rep.text);
    assert!(rep.text.contains("located 1 bytes to the right of 32-byte region"), "{}", rep.text);
    assert_eq!(r.reports().len(), 1, "{}", r.stderr);
}

#[test]
fn use_after_free_found_at_exit() {
    let r = bugs("uaf-at-exit", "");
    let rep = r.only("use-after-free");
    assert!(
        rep.header().starts_with("BUG: KASAN: use-after-free write in do_free+")
            && rep.header().ends_with(" (found at exit)"),
        "{}",
        rep.text
    );
    assert!(!rep.header().contains("exit_handlers"), "{}", rep.text);
    assert!(rep.access().contains("detected at exit"), "{}", rep.text);
    assert!(rep.text.contains("located 40 bytes inside of 48-byte region"), "{}", rep.text);
    rep.assert_track("Freed by thread", &r.printed("main_tid"), "do_free");
}

#[test]
fn leaks_grouped_by_stack_and_reachable_objects_spared() {
    let r = bugs("leak", "");
    let main = r.printed("main_tid");
    let leaks: Vec<_> = r.reports().into_iter().filter(|x| x.kind() == "memory-leak").collect();
    assert_eq!(leaks.len(), 1, "{}", r.stderr);
    let rep = &leaks[0];
    assert!(rep.header().starts_with("BUG: KASAN: memory-leak in do_alloc+"), "{}", rep.text);
    assert!(rep.access().starts_with("Leak of 120 byte(s) in 3 object(s)"), "{}", rep.text);
    rep.assert_track("Allocated by thread", &main, "do_alloc");
    assert!(r.stderr.contains("SUMMARY: ukasan: 120 byte(s) leaked in 3 allocation(s)"));
    // detect_leaks=0 turns it off.
    let r = bugs("leak", "detect_leaks=0");
    assert!(r.reports().is_empty(), "{}", r.stderr);
    assert_eq!(r.status, Some(0));
}

#[test]
fn alloc_dealloc_mismatch_in_cxx() {
    let p = program("mismatch.cc");
    for (scenario, alloc, free, afn, ffn) in [
        ("new-free", "operator new", "free", "make_new", "release_free"),
        ("array-delete", "operator new []", "operator delete", "make_array", "release_delete"),
        ("malloc-delete", "malloc", "operator delete", "make_malloc", "release_delete"),
    ] {
        let r = crate::common::run(&p, &[scenario], "");
        let rep = r.only("alloc-dealloc-mismatch");
        assert!(
            rep.access().contains(&format!("with {free}, but it was allocated with {alloc}")),
            "{scenario}: {}",
            rep.text
        );
        let (_, frames) = rep.section("Allocated by thread");
        assert!(frames.iter().any(|f| f.contains(afn)), "{scenario}: {}", rep.text);
        assert!(rep.stack().iter().any(|f| f.contains(ffn)), "{scenario}: {}", rep.text);
    }
}

/// Number of report headers on stderr: a second report of the same bug makes it 2.
fn headers(r: &crate::common::Run) -> usize {
    r.stderr.lines().filter(|l| l.starts_with("BUG: KASAN:")).count()
}

#[test]
fn delete_of_new_array_is_one_alloc_dealloc_mismatch() {
    // `delete` of `new int[10]`: a sized delete of 4 bytes, but the family is what is wrong.
    let r = run(&program("mismatch.cc"), &["array-delete"], "");
    assert_eq!(headers(&r), 1, "one report per bug:\n{}", r.stderr);
    let rep = r.only("alloc-dealloc-mismatch");
    assert!(rep.header().contains(" in release_delete"), "{}", rep.text);
    assert!(!r.stderr.contains("Layout"), "no Rust words for C++:\n{}", r.stderr);
}

#[test]
fn sized_delete_of_wrong_size_is_new_delete_type_mismatch() {
    for (scenario, alloc, freed, afn, ffn) in [
        // ::operator delete(p, 8) of ::operator new(16)
        ("sized-delete", 16, 8, "make_raw", "release_sized"),
        // delete of a Derived (24 bytes) through a Base* (4 bytes), no virtual destructor
        ("base-delete", 24, 4, "make_derived", "release_base"),
    ] {
        let r = run(&program("mismatch.cc"), &[scenario], "");
        assert_eq!(headers(&r), 1, "{scenario}: one report per bug:\n{}", r.stderr);
        let rep = r.only("new-delete-type-mismatch");
        assert!(
            rep.header().starts_with(&format!("BUG: KASAN: new-delete-type-mismatch in {ffn}(")),
            "{scenario}: {}",
            rep.text
        );
        assert!(
            rep.access().starts_with("Free of addr 0x")
                && rep.access().ends_with(&format!(
                    "with operator delete: object passed to delete has wrong type: \
                     size of the allocated type: {alloc} bytes; \
                     size of the deallocated type: {freed} bytes"
                )),
            "{scenario}: {}",
            rep.access()
        );
        assert!(!rep.text.contains("Layout"), "{scenario}: {}", rep.text);
        let (_, frames) = rep.section("Allocated by thread");
        assert!(frames.iter().any(|f| f.contains(&format!(" in {afn}("))), "{}", rep.text);
        assert!(rep.stack().iter().any(|f| f.contains(ffn)), "{scenario}: {}", rep.text);
    }
}

#[test]
fn aligned_delete_of_wrong_alignment_is_new_delete_type_mismatch() {
    // ::operator delete(p, align_val_t(32)) of ::operator new(64, align_val_t(64))
    let r = run(&program("mismatch.cc"), &["aligned-delete"], "");
    assert_eq!(headers(&r), 1, "one report per bug:\n{}", r.stderr);
    let rep = r.only("new-delete-type-mismatch");
    assert!(rep.header().contains(" in release_aligned(void*, unsigned long)+"), "{}", rep.text);
    assert!(
        rep.access().ends_with(
            "object passed to delete has wrong type: alignment of the allocated type: 64 bytes; \
             alignment of the deallocated type: 32 bytes"
        ),
        "{}",
        rep.access()
    );
}

#[test]
fn every_backend_records_the_allocating_function() {
    for stacks in ["fp", "libgcc", "dwarf", "shadow", "auto"] {
        let r = bugs("double-free", &format!("stacks={stacks}"));
        let rep = r.only("double-free");
        rep.assert_track("Allocated by thread", &r.printed("main_tid"), "do_alloc");
        rep.assert_track("Freed by thread", &r.printed("free_tid"), "do_free");
    }
}

#[test]
fn stacks_off_and_depot_off_say_not_available() {
    for opts in ["stacks=off", "depot=0"] {
        let r = bugs("double-free", opts);
        let rep = r.only("double-free");
        let (head, frames) = rep.section("Allocated by thread");
        assert_eq!(head, format!("Allocated by thread {}:", r.printed("main_tid")));
        assert_eq!(frames, [" (stack is not available)"], "{opts}: {}", rep.text);
        // The detection stack is still captured.
        assert!(rep.stack().iter().any(|f| f.contains(" in do_free+")), "{opts}: {}", rep.text);
        // The loader's per-thread allocations are recognized without a stack: no leak.
        assert!(!r.stderr.contains("memory-leak"), "{opts}: {}", r.stderr);
    }
}

#[test]
fn rust_program_double_free_with_symbolized_rust_names() {
    let r = run(&program("rustprog.rs"), &["double-free"], "");
    assert!(r.stdout.contains("len=") && r.stdout.contains("end\n"), "{}", r.stderr);
    let rep = r.only("double-free");
    let (_, alloc) = rep.section("Allocated by thread");
    assert!(alloc.iter().any(|f| f.contains(" in rustprog::rust_alloc_site+")), "{}", rep.text);
    let (_, freed) = rep.section("Freed by thread");
    assert!(freed.iter().any(|f| f.contains(" in rustprog::rust_free_site+")), "{}", rep.text);
    // Above it on the stack are std's System allocator and alloc::alloc::dealloc: skipped.
    assert!(
        rep.header().starts_with("BUG: KASAN: double-free in rustprog::rust_free_site+"),
        "{}",
        rep.text
    );
    assert_eq!(r.reports().len(), 1, "{}", r.stderr);
}
