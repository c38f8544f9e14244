//! Inputs of the `options` fuzz target kept as regression tests (`fuzz/regressions/options`).

#[test]
fn options_fuzz_regressions() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/options");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        let o = ukasan::options::check_invariants_for_fuzzing(&std::fs::read(&p).unwrap());
        if p.file_name().is_some_and(|f| f == "seed-mixed") {
            // Bad values keep defaults; good ones apply.
            assert_eq!((o.depth, o.redzone, o.exitcode), (64, 32, 1));
            assert_eq!((o.leak_exitcode, o.sample_rate), (Some(0), 1));
        }
        n += 1;
    }
    assert!(n > 0, "no inputs in {}", dir.display());
}
