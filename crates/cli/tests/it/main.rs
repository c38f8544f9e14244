//! Integration tests of the `ukasan` command: real child processes throughout.

mod bench;
mod demo;
mod run;
mod symbolize;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The `ukasan` binary under test, with `UKASAN_LIB` and `UKASAN_OPTIONS` cleared.
pub fn ukasan() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ukasan"));
    c.env_remove("UKASAN_LIB").env_remove("UKASAN_OPTIONS").env_remove("LD_PRELOAD");
    c
}

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ukasan-cli-it-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// An empty shared library: preloading it changes nothing, so `run`'s own mechanics (exit
/// status, signals, environment) are tested apart from the detector.
pub fn dummy_lib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| build_dummy(&scratch("dummy"), "libdummy.so"))
}

/// Compiles an empty shared library at `dir/name`.
pub fn build_dummy(dir: &Path, name: &str) -> PathBuf {
    let src = dir.join("empty.c");
    std::fs::write(&src, "int ukasan_test_dummy;\n").unwrap();
    let lib = dir.join(name);
    let st =
        Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&lib).arg(&src).status().unwrap();
    assert!(st.success(), "cc failed");
    lib
}

/// stdout and stderr of an output, for assertion messages.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}
