//! Property test: the offline parser never panics and copies lines without frames unchanged.

use proptest::prelude::*;
use symbolize::offline::symbolize_report_with;

/// Fragments that reach the parser's branches, mixed with arbitrary text.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        Just(" [<0x".to_owned()),
        Just(">]".to_owned()),
        Just("+0x".to_owned()),
        Just("module start=0x".to_owned()),
        Just(" end=0x".to_owned()),
        Just(" bias=0x".to_owned()),
        Just(" build-id=".to_owned()),
        Just(" path=".to_owned()),
        Just("{\"frames\":[".to_owned()),
        Just("\"modules\":[{\"path\":\"/x\",\"start\":".to_owned()),
        Just("]}".to_owned()),
        Just("\n".to_owned()),
        "[0-9a-fA-F]{0,20}",
        "0x[0-9a-f]{1,16}",
    ]
}

fn lookup(_: &str) -> Option<std::path::PathBuf> {
    // A real ELF file, so loading paths run too (it lacks the report's addresses).
    std::env::current_exe().ok()
}

proptest! {
    // 2000 cases by default; CI fuzzes longer with e.g. PROPTEST_CASES=200000.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn never_panics(parts in prop::collection::vec(fragment(), 0..40)) {
        let input: String = parts.concat();
        let out = symbolize_report_with(&input, &lookup, &[]);
        // Lines with neither a raw frame nor a JSON object come back unchanged.
        for line in input.lines().filter(|l| !l.contains("[<0x") && !l.trim_start().starts_with('{')) {
            prop_assert!(out.contains(line), "line {line:?} lost");
        }
    }
}

/// Inputs of the `offline` cargo-fuzz target, kept as regression tests
/// (`fuzz/regressions/offline`).
#[test]
fn fuzz_regressions() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/offline");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let out = symbolize::offline::check_for_fuzzing(text);
            if p.file_name().is_some_and(|f| f == "seed-report") {
                assert!(out.contains("BUG: KASAN: double-free in f+0x1\n"), "{out}");
            }
        }
        n += 1;
    }
    assert!(n > 0, "no inputs in {}", dir.display());
}
