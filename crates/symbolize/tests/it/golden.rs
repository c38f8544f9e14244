//! Golden files for offline mode: `tests/golden/NAME.in` symbolized must equal `NAME.out`.
//!
//! The modules are checked-in fixtures (`tests/golden/fixtures`, see `build.sh`), found by
//! file name; `libgolden-stale.so` maps to `libgolden.so` but the report's build-id differs,
//! and `libmissing.so.1` exists nowhere. Set `UPDATE_GOLDEN=1` to rewrite the `.out` files.

use std::path::{Path, PathBuf};

use symbolize::offline::symbolize_report_with;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/fixtures")
}

fn lookup(path: &str) -> Option<PathBuf> {
    let name = path.rsplit('/').next()?;
    let name = if name == "libgolden-stale.so" { "libgolden.so" } else { name };
    let f = fixtures().join(name);
    f.is_file().then_some(f)
}

fn check(name: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let input = std::fs::read_to_string(dir.join(format!("{name}.in"))).unwrap();
    let got = symbolize_report_with(&input, &lookup, &[]);
    let out = dir.join(format!("{name}.out"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&out, &got).unwrap();
    }
    let want = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(
        got == want,
        "{name}: output differs from {}:\n--- got\n{got}\n--- want\n{want}",
        out.display()
    );
}

#[test]
fn text_report() {
    check("text");
}

#[test]
fn json_lines_report() {
    check("jsonl");
}
