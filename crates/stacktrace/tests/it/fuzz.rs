//! Inputs of the `dwarf_rules` cargo-fuzz target, kept as regression tests
//! (`fuzz/regressions/dwarf_rules`; `fuzz/seed_dwarf.py` makes seeds from real ELF files).

#[test]
fn dwarf_rules_fuzz_regressions() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/dwarf_rules");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        let rule = stacktrace::dwarf::fuzz_input(&std::fs::read(&p).unwrap());
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        // Seeds from a real binary at a function's first instruction: CFA = sp + 8 (x86-64),
        // the return address right below it. The framing must reach the real decoder.
        if name.starts_with("seed-") && name.ends_with("-entry") && cfg!(target_arch = "x86_64") {
            assert_eq!(rule, [1, 0, 8, -8, i64::MIN], "{name}");
        }
        n += 1;
    }
    assert!(n > 0, "no inputs in {}", dir.display());
}
