//! Finding `libukasan.so`, the detector built with this `ukasan` binary.
//!
//! In order:
//! 1. `UKASAN_LIB`, when set (an explicit choice wins; it must name an existing file);
//! 2. `libukasan.so` next to the running executable (`target/<profile>/`, where cargo puts both),
//!    unless a source of the workspace is newer than it (then step 3 rebuilds it);
//! 3. on a source checkout (this crate's manifest directory still exists), build it with
//!    `cargo build -p ukasan-preload` into the same target directory and profile, printing one
//!    line that it does so. `cargo run --release` builds only the cli package, so this is what
//!    makes the README's main command work on a fresh clone.
//!
//! [`sibling`] does steps 2-3 for the package's other binaries (`ukasan-demo-rust`,
//! `ukasan-workload`), which `cargo run` does not build either.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// File name of the preload library.
pub const LIB_NAME: &str = "libukasan.so";
/// Package that builds it.
pub const PRELOAD_PACKAGE: &str = "ukasan-preload";

/// Where the library is, building it first when needed (see the module docs).
pub fn locate() -> Result<PathBuf> {
    if let Some(lib) = std::env::var_os("UKASAN_LIB").filter(|v| !v.is_empty()) {
        let lib = PathBuf::from(lib);
        if !lib.is_file() {
            bail!("UKASAN_LIB={} does not exist", lib.display());
        }
        return Ok(absolute(&lib));
    }
    sibling(LIB_NAME, &["-p", PRELOAD_PACKAGE])
}

/// A file cargo builds next to the running executable (the library, or another binary of
/// this package, which `cargo run` does not build), built with `cargo build <what>` into the
/// same target dir and profile when it is missing and the source tree is there.
pub fn sibling(name: &str, what: &[&str]) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let exe_dir = exe.parent().context("the executable has no directory")?.to_path_buf();
    let file = exe_dir.join(name);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root = root.canonicalize().unwrap_or(root);
    let source = root.join("crates/preload/Cargo.toml").is_file();
    // A file older than the sources it is built from (the checkout moved on since it was
    // built) is rebuilt: it would silently run an older detector.
    if file.is_file() && !(source && stale(&file, &root)) {
        return Ok(file);
    }
    if !source {
        bail!(
            "{name} is not next to {} and there is no source tree to build it from{}",
            exe.display(),
            if name == LIB_NAME { " (set UKASAN_LIB=/path/to/libukasan.so)" } else { "" }
        );
    }
    let why = if file.is_file() { "older than its sources" } else { "not built yet" };
    build(&root, &exe_dir, name, what, why)?;
    if !file.is_file() {
        bail!("`cargo build {}` succeeded but {} is missing", what.join(" "), file.display());
    }
    if stale(&file, &root) {
        // Up to date for cargo (the newer sources are not its inputs): do not ask again.
        let _ = std::fs::File::options()
            .write(true)
            .open(&file)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
    }
    Ok(file)
}

/// Whether any source of the workspace (`Cargo.lock`, a crate's `Cargo.toml`, `build.rs` or
/// a file under its `src/`) is newer than `file`.
fn stale(file: &Path, root: &Path) -> bool {
    fn newer(p: &Path, than: std::time::SystemTime) -> bool {
        let Ok(meta) = std::fs::metadata(p) else { return false };
        if meta.is_dir() {
            let Ok(dir) = std::fs::read_dir(p) else { return false };
            return dir.flatten().any(|e| newer(&e.path(), than));
        }
        meta.modified().is_ok_and(|m| m > than)
    }
    let Ok(built) = std::fs::metadata(file).and_then(|m| m.modified()) else { return true };
    if newer(&root.join("Cargo.lock"), built) {
        return true;
    }
    let Ok(crates) = std::fs::read_dir(root.join("crates")) else { return false };
    crates.flatten().any(|c| {
        let c = c.path();
        ["Cargo.toml", "build.rs", "src"].iter().any(|f| newer(&c.join(f), built))
    })
}

/// The cargo invocation that builds `what` (e.g. `-p ukasan-preload`) into `exe_dir`
/// (`<target>/<profile>`).
pub fn build_command(root: &Path, exe_dir: &Path, what: &[&str]) -> Result<Command> {
    let profile_dir = exe_dir.file_name().and_then(|n| n.to_str()).context("odd target dir")?;
    let target_dir = exe_dir.parent().context("the executable is not in a target dir")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    cmd.arg("build").arg("--quiet").arg("--manifest-path").arg(root.join("Cargo.toml"));
    cmd.args(what);
    match profile_dir {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    cmd.env("CARGO_TARGET_DIR", target_dir);
    // From the repository root, so that its `.cargo/config.toml` (frame pointers) applies
    // whatever directory `ukasan run` was started in.
    cmd.current_dir(root);
    Ok(cmd)
}

fn build(root: &Path, exe_dir: &Path, name: &str, what: &[&str], why: &str) -> Result<()> {
    let mut cmd = build_command(root, exe_dir, what)?;
    let shown: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    eprintln!("ukasan: {name} {why}, building it: {}", shown.join(" "));
    let status = cmd.status().with_context(|| format!("cannot run {}", shown[0]))?;
    if !status.success() {
        bail!("building {name} failed ({status})");
    }
    Ok(())
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn build_command_follows_the_profile_and_target_dir() {
        let root = Path::new("/src");
        let c = build_command(root, Path::new("/t/release"), &["-p", PRELOAD_PACKAGE]).unwrap();
        let a = args(&c);
        assert!(a.contains(&"--release".to_string()), "{a:?}");
        assert!(a.windows(2).any(|w| w == ["-p", PRELOAD_PACKAGE]), "{a:?}");
        let env: Vec<_> = c.get_envs().collect();
        assert!(env.iter().any(|(k, v)| *k == "CARGO_TARGET_DIR" && *v == Some("/t".as_ref())));
        // The repository's .cargo/config.toml applies only from inside it.
        assert_eq!(c.get_current_dir(), Some(root));

        let a = args(&build_command(root, Path::new("/t/debug"), &[]).unwrap());
        assert!(!a.contains(&"--release".to_string()), "{a:?}");
        let a = args(&build_command(root, Path::new("/t/bench"), &[]).unwrap());
        assert!(a.windows(2).any(|w| w == ["--profile", "bench"]), "{a:?}");
    }
}
