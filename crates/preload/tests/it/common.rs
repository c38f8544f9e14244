//! Shared helpers: locate libukasan.so, compile test programs, run them, split reports.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// `libukasan.so` in this test binary's profile directory, built (or brought up to date) once
/// per test process with `cargo build -p ukasan-preload`: cargo does not build a cdylib-only
/// library for the package's integration tests by itself.
pub fn lib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        // <target>/<profile>/deps/it-HASH
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let so = profile_dir.join("libukasan.so");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "ukasan-preload", "--manifest-path"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        cmd.env("CARGO_TARGET_DIR", profile_dir.parent().unwrap());
        let st = cmd.status().expect("run cargo build -p ukasan-preload");
        assert!(st.success(), "building libukasan.so failed");
        assert!(so.exists(), "{} missing", so.display());
        so
    })
}

/// A scratch directory for this test process.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("ukasan-preload-it-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

/// Compiles `progs/<name>` (C with `cc`, C++ with `g++`) once per test process.
pub fn program(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap();
    if let Some((_, p)) = built.iter().find(|(n, _)| n == name) {
        return p.clone();
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/progs").join(name);
    let out = scratch().join(name.replace('.', "_"));
    let mut cmd = if name.ends_with(".rs") {
        let mut c = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()));
        c.args(["-O", "-g", "-C", "force-frame-pointers=yes", "--edition", "2021"]);
        c
    } else {
        let (compiler, extra): (&str, &[&str]) = if name.ends_with(".cc") {
            ("g++", &["-fsized-deallocation"])
        } else {
            ("cc", &["-pthread", "-ldl"])
        };
        let mut c = Command::new(compiler);
        c.args(["-O1", "-g", "-rdynamic", "-fno-omit-frame-pointer"]).args(extra);
        c
    };
    let st = cmd
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("compiler for {name} not runnable: {e}"));
    assert!(st.success(), "compiling {name} failed");
    built.push((name.to_string(), out.clone()));
    out
}

/// The result of a run.
pub struct Run {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The reports on stderr, each the text between two rule lines.
    pub fn reports(&self) -> Vec<Report> {
        split_reports(&self.stderr)
    }

    /// The one report of `kind`; fails with the whole stderr otherwise.
    pub fn only(&self, kind: &str) -> Report {
        let all: Vec<Report> = self.reports().into_iter().filter(|r| r.kind() == kind).collect();
        assert_eq!(all.len(), 1, "expected one {kind} report, stderr:\n{}", self.stderr);
        all.into_iter().next().unwrap()
    }

    /// The pid the program printed as `pid=N`.
    pub fn pid(&self) -> String {
        self.printed("pid")
    }

    /// A `key=value` the program printed on stdout.
    pub fn printed(&self, key: &str) -> String {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in stdout:\n{}", self.stdout))
            .to_string()
    }
}

fn output(o: Output) -> Run {
    Run {
        status: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Runs `prog args` under the preload with `UKASAN_OPTIONS=opts`.
pub fn run(prog: &Path, args: &[&str], opts: &str) -> Run {
    run_with(Command::new(prog).args(args), opts)
}

/// Runs a prepared command under the preload.
pub fn run_with(cmd: &mut Command, opts: &str) -> Run {
    let o = cmd
        .env("LD_PRELOAD", lib())
        .env("UKASAN_OPTIONS", opts)
        .output()
        .expect("spawn test program");
    output(o)
}

/// One report.
pub struct Report {
    pub text: String,
}

impl Report {
    /// The header line.
    pub fn header(&self) -> &str {
        self.text.lines().next().unwrap_or("")
    }

    /// `double-free` from `BUG: KASAN: double-free in f`.
    pub fn kind(&self) -> &str {
        self.header().strip_prefix("BUG: KASAN: ").and_then(|r| r.split(' ').next()).unwrap_or("")
    }

    /// The line after the header.
    pub fn access(&self) -> &str {
        self.text.lines().nth(1).unwrap_or("")
    }

    /// The frames of the section starting with `title` (e.g. `Allocated by thread`),
    /// and the title line itself.
    pub fn section(&self, title: &str) -> (String, Vec<String>) {
        let mut lines = self.text.lines().skip_while(|l| !l.starts_with(title));
        let head = lines.next().unwrap_or_else(|| panic!("no '{title}' in report:\n{}", self.text));
        let frames = lines.take_while(|l| l.starts_with(' ')).map(str::to_string).collect();
        (head.to_string(), frames)
    }

    /// The frames of the detection stack (after the access line).
    pub fn stack(&self) -> Vec<String> {
        self.text.lines().skip(2).take_while(|l| l.starts_with(" #")).map(str::to_string).collect()
    }

    /// Asserts the section names thread `tid` and a frame in `function`.
    pub fn assert_track(&self, title: &str, tid: &str, function: &str) {
        let (head, frames) = self.section(title);
        assert_eq!(head, format!("{title} {tid}:"), "report:\n{}", self.text);
        assert!(
            frames.iter().any(|f| f.contains(&format!(" in {function}+"))),
            "no frame in {function} under '{title}':\n{}",
            self.text
        );
    }
}

/// Splits text on the `=====` rule lines.
pub fn split_reports(text: &str) -> Vec<Report> {
    let rule = "=".repeat(66);
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for l in text.lines() {
        if l == rule {
            match cur.take() {
                Some(t) => out.push(Report { text: t }),
                None => cur = Some(String::new()),
            }
        } else if let Some(c) = cur.as_mut() {
            c.push_str(l);
            c.push('\n');
        }
    }
    out
}

/// Whether an external program is on PATH; prints a skip note otherwise.
pub fn have(prog: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {prog} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("note: {prog} not installed, test skipped (apt-get install {prog})");
    }
    ok
}
