//! The built-in workloads: real programs run to completion on bundled inputs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One workload.
#[derive(Debug, PartialEq, Eq)]
pub struct Workload {
    /// Name on the command line and in the table.
    pub name: &'static str,
    /// What it does, one line.
    pub about: &'static str,
}

/// Every workload, in table order.
pub const WORKLOADS: &[Workload] = &[
    Workload {
        name: "rust",
        about: "ukasan-workload: parse/transform JSON-like documents at depth 20-40",
    },
    Workload {
        name: "python3",
        about: "python3: json, re, dict and list churn (PYTHONMALLOC=malloc)",
    },
    Workload { name: "sqlite3", about: "sqlite3: inserts, indexes, joins, grouping, strings" },
    Workload { name: "git", about: "git: init + add + commit of generated files" },
];

const PY_SCRIPT: &str = include_str!("inputs/workload.py");
const SQL_SCRIPT: &str = include_str!("inputs/workload.sql");

/// A `--workloads x,y` list, validated.
#[derive(Clone, Debug)]
pub struct WorkloadList(pub Vec<&'static Workload>);

/// clap value parser for `--workloads`: names the accepted ones on error.
pub fn parse_workloads(s: &str) -> Result<WorkloadList, String> {
    let mut out = Vec::new();
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let w = WORKLOADS.iter().find(|w| w.name == name).ok_or_else(|| {
            let names: Vec<_> = WORKLOADS.iter().map(|w| w.name).collect();
            format!("unknown workload `{name}` (accepted: {})", names.join(", "))
        })?;
        if !out.contains(&w) {
            out.push(w);
        }
    }
    if out.is_empty() {
        return Err("no workload given".to_string());
    }
    Ok(WorkloadList(out))
}

/// One program invocation of a workload run.
#[derive(Debug, Clone)]
pub struct Step {
    /// Program and arguments.
    pub argv: Vec<OsString>,
    /// File to feed on stdin (else /dev/null).
    pub stdin: Option<PathBuf>,
}

/// A workload ready to run: its inputs written to a scratch dir.
#[derive(Debug)]
pub struct Prepared {
    /// The steps of one run, timed together.
    pub steps: Vec<Step>,
    /// Extra environment for every flavor.
    pub env: Vec<(&'static str, OsString)>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Removed before each run (untimed), so every run does the same work.
    pub reset: Option<PathBuf>,
}

impl Prepared {
    /// The command for step `i`, before any flavor is applied.
    pub fn command(&self, step: &Step) -> Command {
        let mut c = Command::new(&step.argv[0]);
        c.args(&step.argv[1..]).current_dir(&self.cwd).envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }
}

/// Input sizes: `quick` is what CI runs. The full sizes keep `ukasan bench` (5 runs + warm-up,
/// all flavors, where `unwinder` costs 10-100x `plain`) near 5 minutes on this 2-core machine
/// when idle, 10 when shared.
fn size(name: &str, quick: bool) -> usize {
    match (name, quick) {
        ("rust", false) => 800,
        ("rust", true) => 60,
        ("python3", false) => 400,
        ("python3", true) => 30,
        ("sqlite3", false) => 32_000,
        ("sqlite3", true) => 2_000,
        ("git", false) => 800,
        ("git", true) => 40,
        _ => 1,
    }
}

/// Finds `prog` on `PATH`.
pub fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(prog)).find(|p| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
    })
}

/// Writes the inputs of `w` under `dir`; `Err` is the note saying why it is skipped.
pub fn prepare(w: &Workload, dir: &Path, quick: bool) -> Result<Prepared, String> {
    let n = size(w.name, quick);
    let dir = dir.join(w.name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let write = |name: &str, text: &str| -> Result<PathBuf, String> {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        Ok(p)
    };
    let argv =
        |v: &[&dyn AsRef<std::ffi::OsStr>]| v.iter().map(|a| a.as_ref().to_os_string()).collect();
    let mut p = Prepared { steps: Vec::new(), env: Vec::new(), cwd: dir.clone(), reset: None };
    match w.name {
        "rust" => {
            let what = ["-p", "ukasan-cli", "--bin", "ukasan-workload"];
            let exe =
                crate::preload::sibling("ukasan-workload", &what).map_err(|e| format!("{e:#}"))?;
            p.steps.push(Step { argv: argv(&[&exe, &"--size", &n.to_string()]), stdin: None });
        }
        "python3" => {
            let py = real_python().ok_or("python3 not found (skipped)")?;
            let script = write("workload.py", PY_SCRIPT)?;
            p.steps.push(Step { argv: argv(&[&py, &script, &n.to_string()]), stdin: None });
            p.env.push(("PYTHONMALLOC", "malloc".into()));
            p.env.push(("PYTHONHASHSEED", "0".into()));
            p.env.push(("PYTHONDONTWRITEBYTECODE", "1".into()));
        }
        "sqlite3" => {
            let sq = which("sqlite3").ok_or("sqlite3 not found (skipped; .ci/run installs it)")?;
            let sql = write("workload.sql", &SQL_SCRIPT.replace("@ROWS@", &n.to_string()))?;
            p.steps.push(Step { argv: argv(&[&sq, &"-batch", &":memory:"]), stdin: Some(sql) });
        }
        "git" => {
            let git = which("git").ok_or("git not found (skipped; .ci/run installs it)")?;
            let repo = dir.join("repo");
            generate_tree(&repo.join("src"), n)
                .map_err(|e| format!("cannot generate files: {e}"))?;
            for args in [
                &["init", "-q"][..],
                &["add", "-A"],
                &["commit", "-q", "-m", "bench"],
                &["log", "--stat", "-1"],
            ] {
                let mut v: Vec<OsString> =
                    vec![git.clone().into(), "-c".into(), "gc.auto=0".into()];
                v.extend(args.iter().map(OsString::from));
                p.steps.push(Step { argv: v, stdin: None });
            }
            p.cwd = repo.clone();
            p.reset = Some(repo.join(".git"));
            for (k, v) in [
                ("GIT_CONFIG_NOSYSTEM", "1"),
                ("GIT_AUTHOR_NAME", "ukasan"),
                ("GIT_AUTHOR_EMAIL", "bench@ukasan.invalid"),
                ("GIT_COMMITTER_NAME", "ukasan"),
                ("GIT_COMMITTER_EMAIL", "bench@ukasan.invalid"),
                ("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z"),
                ("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z"),
            ] {
                p.env.push((k, v.into()));
            }
            p.env.push(("HOME", dir.clone().into()));
        }
        other => return Err(format!("no such workload {other}")),
    }
    Ok(p)
}

/// The real interpreter behind `python3` (pyenv installs a shell-script shim that would be
/// timed, and preloaded, too).
fn real_python() -> Option<PathBuf> {
    let out =
        Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().ok()?;
    let p = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && p.is_file()).then_some(p)
}

/// `n` generated source files in a few directories, deterministic content.
fn generate_tree(root: &Path, n: usize) -> std::io::Result<()> {
    let mut x: u64 = 0x2545_f491;
    for i in 0..n {
        let d = root.join(format!("mod{}", i % 8));
        std::fs::create_dir_all(&d)?;
        let mut text = format!("/* generated file {i} */\n#include <stddef.h>\n\n");
        for f in 0..40 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            text.push_str(&format!(
                "static size_t fn_{i}_{f}(size_t a) {{ return a * {} + {}; }}\n",
                x % 1000,
                (x >> 20) % 97
            ));
        }
        std::fs::write(d.join(format!("file{i}.c")), text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_reject() {
        let l = parse_workloads("git,rust").unwrap();
        assert_eq!(l.0.iter().map(|w| w.name).collect::<Vec<_>>(), ["git", "rust"]);
        let e = parse_workloads("perl").unwrap_err();
        assert!(e.contains("unknown workload `perl`") && e.contains("sqlite3"), "{e}");
    }

    #[test]
    fn every_workload_has_sizes() {
        for w in WORKLOADS {
            assert!(
                size(w.name, true) > 1 && size(w.name, false) > size(w.name, true),
                "{}",
                w.name
            );
        }
    }

    #[test]
    fn sql_script_is_parameterized() {
        assert!(SQL_SCRIPT.contains("@ROWS@"));
    }
}
