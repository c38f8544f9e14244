//! Timing one run of a workload under one flavor, and the statistics over runs.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use super::flavor::{Flavor, Kind};
use super::workload::Prepared;

/// What a flavor needs from the outside world.
#[derive(Debug)]
pub struct Tools {
    /// `libukasan.so`, or why the ukasan flavors cannot run.
    pub lib: Result<PathBuf, String>,
    /// `valgrind` on PATH.
    pub valgrind: Option<PathBuf>,
    /// `heaptrack` on PATH.
    pub heaptrack: Option<PathBuf>,
    /// The ASan build of `ukasan-workload`, or why there is none.
    pub asan: Result<PathBuf, String>,
    /// Scratch directory for logs.
    pub scratch: PathBuf,
    /// Options every ukasan flavor gets in addition to its own (the mode: `mode=guarded`,
    /// `sample_rate=N`), `:`-separated; empty for generic mode.
    pub mode_options: String,
    /// An emulated target (`--runner`), if timed.
    pub emulated: Option<Emulated>,
}

/// `ukasan bench --runner R --workload-exe E`: the Rust workload for another target.
#[derive(Debug)]
pub struct Emulated {
    /// The command line prefix that runs a target program (qemu-user).
    pub runner: Vec<OsString>,
    /// The workload with ukasan linked in, built for that target.
    pub exe: PathBuf,
}

/// Why a run produced no time.
#[derive(Debug, Clone, PartialEq)]
pub enum RunError {
    /// The flavor does not apply to this workload, or its tool is missing: a note.
    Skipped(String),
    /// The program failed: a bug to show.
    Failed(String),
}

/// One timed run.
#[derive(Debug, Clone)]
pub struct Run {
    /// Wall-clock seconds for all steps.
    pub secs: f64,
    /// CPU seconds (user + system) of the steps' processes: steadier than wall-clock on a
    /// machine shared with other work.
    pub cpu: f64,
    /// Counters the detector printed at exit (summed over processes), if any.
    pub stats: BTreeMap<String, f64>,
    /// `BUG: KASAN` reports seen (a clean program should print none).
    pub reports: usize,
    /// Peak resident set of the largest step's process (KiB, from `wait4`).
    pub max_rss_kib: u64,
}

/// Runs every step of `p` once under `f`, timed.
pub fn run_once(p: &Prepared, workload: &str, f: &Flavor, tools: &Tools) -> Result<Run, RunError> {
    let logs = tools.scratch.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| RunError::Failed(format!("scratch dir: {e}")))?;
    let mut prefix: Vec<OsString> = Vec::new();
    let mut env: Vec<(&str, OsString)> = Vec::new();
    let mut argv0: Option<PathBuf> = None;
    if let Some(e) = &tools.emulated {
        prefix = e.runner.clone();
        argv0 = Some(e.exe.clone());
    }
    match f.kind {
        Kind::Plain if tools.emulated.is_some() => env.push(("UKASAN_WORKLOAD_PLAIN", "1".into())),
        Kind::Plain => {}
        Kind::Ukasan(opts) => {
            let log = logs.join("ukasan");
            let options = format!(
                "{opts}{}:detect_leaks=0:halt_on_error=0:verbosity=1:log_path={}",
                tools.mode_options,
                log.display()
            );
            if tools.emulated.is_some() {
                // Linked in: the options are all it needs. A smaller reservation: under
                // qemu-user the default one costs 1.8 s and 1.3 GB of the emulator's at start.
                env.push(("UKASAN_OPTIONS", format!("heap_region_mb=256:{options}").into()));
            } else {
                let lib = tools.lib.as_ref().map_err(|e| RunError::Skipped(e.clone()))?;
                env.extend(crate::run::detector_env(lib, &options));
            }
        }
        Kind::Valgrind => {
            let v = tools
                .valgrind
                .as_ref()
                .ok_or(RunError::Skipped("valgrind not installed".into()))?;
            prefix = [
                v.as_os_str(),
                "--tool=memcheck".as_ref(),
                "-q".as_ref(),
                "--leak-check=no".as_ref(),
            ]
            .iter()
            .map(|s| s.to_os_string())
            .collect();
        }
        Kind::Heaptrack => {
            let h = tools
                .heaptrack
                .as_ref()
                .ok_or(RunError::Skipped("heaptrack not installed".into()))?;
            prefix =
                vec![h.clone().into(), "-r".into(), "-o".into(), logs.join("heaptrack").into()];
        }
        Kind::Asan => {
            if workload != "rust" {
                return Err(RunError::Skipped("asan: Rust workload only".into()));
            }
            let exe = tools.asan.as_ref().map_err(|e| RunError::Skipped(e.clone()))?;
            argv0 = Some(exe.clone());
            env.push(("ASAN_OPTIONS", "detect_leaks=0".into()));
        }
    }
    if let Some(reset) = &p.reset {
        std::fs::remove_dir_all(reset).ok();
    }
    let mut secs = 0.0;
    let mut max_rss_kib = 0;
    let cpu0 = children_cpu();
    for (i, step) in p.steps.iter().enumerate() {
        let mut argv: Vec<OsString> = prefix.clone();
        argv.extend(step.argv.iter().cloned());
        if let Some(exe) = &argv0 {
            argv[prefix.len()] = exe.clone().into();
        }
        let mut step = step.clone();
        step.argv = argv;
        let mut cmd = p.command(&step);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let stderr_path = logs.join(format!("stderr-{i}"));
        let stderr = File::create(&stderr_path).map_err(|e| RunError::Failed(e.to_string()))?;
        cmd.stdout(Stdio::null()).stderr(stderr);
        match &step.stdin {
            Some(f) => cmd.stdin(File::open(f).map_err(|e| RunError::Failed(e.to_string()))?),
            None => cmd.stdin(Stdio::null()),
        };
        let t = Instant::now();
        let child = cmd.spawn().map_err(|e| {
            RunError::Failed(format!("cannot start {}: {e}", step.argv[0].to_string_lossy()))
        })?;
        let (status, rss) = wait_with_rusage(child)
            .map_err(|e| RunError::Failed(format!("cannot wait for the program: {e}")))?;
        secs += t.elapsed().as_secs_f64();
        max_rss_kib = max_rss_kib.max(rss);
        if matches!(f.kind, Kind::Ukasan(_)) {
            // A mode the runtime fell back from would time the wrong thing.
            let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            if let Some(l) = err.lines().find(|l| l.contains("is not available")) {
                return Err(RunError::Failed(l.to_string()));
            }
        }
        if !status.success() {
            let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            let tail: Vec<_> =
                err.lines().rev().take(6).collect::<Vec<_>>().into_iter().rev().collect();
            return Err(RunError::Failed(format!(
                "`{}` failed ({status}): {}",
                step.argv.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "),
                tail.join(" | ")
            )));
        }
    }
    let cpu = children_cpu() - cpu0;
    let (stats, reports) = collect_logs(&logs);
    Ok(Run { secs, cpu, stats, reports, max_rss_kib })
}

/// Waits for `child` with `wait4`: its exit status and peak resident set (KiB).
fn wait_with_rusage(
    child: std::process::Child,
) -> std::io::Result<(std::process::ExitStatus, u64)> {
    use std::os::unix::process::ExitStatusExt;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our unwaited child; `status` and `ru` are valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    // The child is reaped: dropping the handle does not wait again.
    drop(child);
    Ok((std::process::ExitStatus::from_raw(status), ru.ru_maxrss as u64))
}

/// User + system seconds of every waited-for child so far.
fn children_cpu() -> f64 {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage; RUSAGE_CHILDREN is a valid `who`.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Reads (and removes) every log in `dir`: detector stats lines and report headers.
fn collect_logs(dir: &Path) -> (BTreeMap<String, f64>, usize) {
    let mut stats = BTreeMap::new();
    let mut reports = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).ok();
            continue;
        }
        if let Ok(bytes) = std::fs::read(&path) {
            let text = String::from_utf8_lossy(&bytes);
            reports += text.matches("BUG: KASAN:").count();
            for (k, v) in parse_stats(&text) {
                *stats.entry(k).or_insert(0.0) += v;
            }
        }
        std::fs::remove_file(&path).ok();
    }
    (stats, reports)
}

/// Counters from the detector's exit statistics, on lines that mention `captures` or
/// `stack depot`, in either spelling the detector may use: `key=number` (or `key: number`),
/// or prose such as `12 unique traces, 340 frames, 4096 bytes used` (the number first, then a
/// name: `unique` -> `unique_traces`, `frames` -> `depot_frames`, `bytes` -> `depot_bytes`,
/// `report(s)` -> `reports`). Units (`KiB`, `MiB`) after a `key=number` are applied.
pub fn parse_stats(text: &str) -> BTreeMap<String, f64> {
    let unit = |w: &str| match w {
        "KiB" | "KB" => Some(1024.0),
        "MiB" | "MB" => Some(1024.0 * 1024.0),
        _ => None,
    };
    let ident = |w: &str| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c == '_');
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.contains("captures") || l.contains("stack depot")) {
        let line = line.replace('"', "").replace(['{', '}', ',', ';'], " ");
        let words: Vec<&str> = line.split_whitespace().collect();
        for (i, w) in words.iter().enumerate() {
            let next = words.get(i + 1).copied().unwrap_or("");
            let prev = if i > 0 { words[i - 1] } else { "" };
            if let Some((k, v)) = w.split_once('=') {
                if let (true, Ok(n)) = (ident(k), v.parse::<f64>()) {
                    out.insert(k.to_string(), n * unit(next).unwrap_or(1.0));
                }
                continue;
            }
            let Ok(n) = w.parse::<f64>() else { continue };
            let prose = next.trim_end_matches("(s)");
            if ident(prose) {
                // `12 unique traces`: the number names what follows.
                let key = match prose {
                    "unique" => "unique_traces",
                    "frames" => "depot_frames",
                    "bytes" => "depot_bytes",
                    "report" | "reports" => "reports",
                    other => other,
                };
                out.insert(key.to_string(), n);
            } else if let Some(k) = prev.strip_suffix(':').filter(|k| ident(k)) {
                // `"captures": 5` or `depot: 2 KiB`.
                out.insert(k.to_string(), n * unit(next).unwrap_or(1.0));
            }
        }
    }
    out
}

/// Median, minimum and maximum of a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Median (mean of the two middle values for an even count).
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Summary {
    /// `None` for an empty sample.
    pub fn of(values: &[f64]) -> Option<Summary> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Summary { median, min: v[0], max: v[n - 1] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary() {
        assert_eq!(Summary::of(&[]), None);
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Summary::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
    }

    #[test]
    fn stats_lines_in_several_spellings() {
        let s = parse_stats(
            "ukasan: stats: captures=120 unique_traces=7 depot_bytes=4096 frames=2400\nnoise=3\n",
        );
        assert_eq!(s.get("captures"), Some(&120.0));
        assert_eq!(s.get("unique_traces"), Some(&7.0));
        assert_eq!(s.get("depot_bytes"), Some(&4096.0));
        assert_eq!(s.get("noise"), None);
        let s = parse_stats("{\"captures\": 5, \"depot\": 2 KiB}");
        assert_eq!(s.get("captures"), Some(&5.0));
        assert_eq!(s.get("depot"), Some(&2048.0));
        let s = parse_stats(
            "ukasan: 0 report(s); stack depot: 12 unique traces, 340 frames, 4096 bytes used, 90 nodes\nukasan: stats: shadow_captures=7 frames_walked=21\n",
        );
        assert_eq!(s.get("unique_traces"), Some(&12.0));
        assert_eq!(s.get("depot_frames"), Some(&340.0));
        assert_eq!(s.get("depot_bytes"), Some(&4096.0));
        assert_eq!(s.get("reports"), Some(&0.0));
        assert_eq!(s.get("nodes"), Some(&90.0));
        assert_eq!((s.get("shadow_captures"), s.get("frames_walked")), (Some(&7.0), Some(&21.0)));
    }
}
