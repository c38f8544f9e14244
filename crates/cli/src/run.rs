//! `ukasan run`: PROGRAM under the detector, or the bundled demo when there is no PROGRAM.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::{Command, ExitCode};

use anyhow::Result;
use clap::Args;

use crate::child;
use crate::mode::{parse_mode, Mode, Stacks};

/// Options understood by the detector (`UKASAN_OPTIONS`), for `-o key=value` validation:
/// the detector's own list.
pub const KNOWN_KEYS: &[&str] = ukasan::options::KEYS;

/// Arguments of `ukasan run`.
#[derive(Args, Debug, Default, Clone)]
pub struct RunArgs {
    /// Detector mode.
    #[arg(long, default_value = "generic", value_parser = parse_mode)]
    pub mode: Mode,
    /// How allocation and free stacks are collected (default: the detector's choice).
    #[arg(long, value_enum)]
    pub stacks: Option<Stacks>,
    /// Reports as JSON Lines (report_format=json).
    #[arg(long)]
    pub json: bool,
    /// A detector option, `key=value` (repeatable), passed through UKASAN_OPTIONS.
    #[arg(short = 'o', long = "option", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub options: Vec<(String, String)>,
    /// The program to run and its arguments (after `--`); none runs the bug-class demo.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "PROGRAM")]
    pub command: Vec<OsString>,
}

/// clap value parser for `-o key=value`.
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("`{s}` is not key=value"))?;
    if !KNOWN_KEYS.contains(&k) {
        return Err(format!("unknown option `{k}` (accepted: {})", KNOWN_KEYS.join(", ")));
    }
    if v.contains(':') {
        return Err(format!("the value of `{k}` cannot contain `:` (the option separator)"));
    }
    Ok((k.to_string(), v.to_string()))
}

impl RunArgs {
    /// The `UKASAN_OPTIONS` value these flags ask for (flags first, `-o` after, so `-o` wins).
    pub fn options_string(&self) -> String {
        let mut parts = Vec::new();
        if self.mode != Mode::Generic {
            parts.push(format!("mode={}", self.mode.name()));
        }
        if let Some(s) = self.stacks {
            parts.push(format!("stacks={}", s.name()));
        }
        if self.json {
            parts.push("report_format=json".to_string());
        }
        parts.extend(self.options.iter().map(|(k, v)| format!("{k}={v}")));
        parts.join(":")
    }
}

/// The environment that puts a child under the detector: `LD_PRELOAD` with `lib` appended to
/// any existing value, and `UKASAN_OPTIONS` with `options` appended to any existing value
/// (the detector reads left to right, so ours win).
pub fn detector_env(lib: &Path, options: &str) -> Vec<(&'static str, OsString)> {
    let join = |var: &str, add: &OsStr| -> OsString {
        match std::env::var_os(var).filter(|v| !v.is_empty()) {
            Some(mut old) if !add.is_empty() => {
                old.push(":");
                old.push(add);
                old
            }
            Some(old) => old,
            None => add.to_os_string(),
        }
    };
    vec![
        ("LD_PRELOAD", join("LD_PRELOAD", lib.as_os_str())),
        ("UKASAN_OPTIONS", join("UKASAN_OPTIONS", OsStr::new(options))),
    ]
}

/// `ukasan run`.
pub fn main(args: &RunArgs) -> Result<ExitCode> {
    let Some((prog, rest)) = args.command.split_first() else {
        return crate::demo::main(args);
    };
    let lib = crate::preload::locate()?;
    if let Some(why) = resolve(prog).and_then(|p| secure_execution(&p)) {
        eprintln!(
            "ukasan: warning: {} is {why}: the dynamic loader runs it in secure-execution mode \
             and ignores LD_PRELOAD, so it runs without the detector (no reports)",
            Path::new(prog).display()
        );
    }
    let mut cmd = Command::new(prog);
    cmd.args(rest).envs(detector_env(&lib, &args.options_string()));
    match child::run(&mut cmd) {
        Ok(status) => Ok(ExitCode::from(child::exit_code(status))),
        Err(e) => {
            eprintln!("ukasan: {}", child::describe(prog, &e));
            Ok(ExitCode::from(match e {
                child::SpawnError::NotFound => 127,
                _ => 126,
            }))
        }
    }
}

/// The file `prog` names: itself when it has a `/`, else the first executable of that name
/// on `PATH` (as `execvp` looks it up).
fn resolve(prog: &OsStr) -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    if prog.as_bytes().contains(&b'/') {
        return Some(prog.into());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(prog)).find(|p| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Why the loader would run `file` in secure-execution mode (`AT_SECURE`: it then ignores
/// `LD_PRELOAD` paths), if it would: set-user-ID or set-group-ID to another user or group
/// than ours on a file system mounted with set-ID bits honoured, or file capabilities.
fn secure_execution(file: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(file).ok()?;
    let c = std::ffi::CString::new(file.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain data; zeroed is a valid value to be overwritten.
    let mut fs: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `fs` a valid out-parameter.
    let nosuid =
        unsafe { libc::statvfs(c.as_ptr(), &mut fs) } == 0 && fs.f_flag & libc::ST_NOSUID != 0;
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    if !nosuid && m.mode() & libc::S_ISUID != 0 && m.uid() != uid {
        return Some(format!("set-user-ID (owner uid {})", m.uid()));
    }
    if !nosuid && m.mode() & libc::S_ISGID != 0 && m.mode() & libc::S_IXGRP != 0 && m.gid() != gid {
        return Some(format!("set-group-ID (group gid {})", m.gid()));
    }
    // SAFETY: `c` and the attribute name are NUL-terminated; a null buffer of size 0 asks
    // for the value's size only.
    let caps = unsafe {
        libc::getxattr(c.as_ptr(), c"security.capability".as_ptr(), std::ptr::null_mut(), 0)
    };
    (caps > 0).then(|| "given file capabilities (setcap)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_programs_are_not_secure_execution() {
        let sh = resolve(OsStr::new("sh")).expect("sh on PATH");
        assert!(sh.is_absolute(), "{}", sh.display());
        assert_eq!(secure_execution(&sh), None);
        assert_eq!(resolve(OsStr::new("ukasan-no-such-program")), None);
        assert_eq!(resolve(OsStr::new("./x")), Some("./x".into()));
    }

    #[test]
    fn options_string_orders_flags_then_o() {
        let a = RunArgs {
            stacks: Some(Stacks::Fp),
            json: true,
            options: vec![parse_kv("depth=8").unwrap(), parse_kv("stacks=off").unwrap()],
            ..RunArgs::default()
        };
        assert_eq!(a.options_string(), "stacks=fp:report_format=json:depth=8:stacks=off");
        let g = RunArgs { mode: Mode::Guarded, ..RunArgs::default() };
        assert_eq!(g.options_string(), "mode=guarded");
        assert_eq!(RunArgs::default().options_string(), "");
    }

    #[test]
    fn bad_kv_names_the_problem() {
        assert!(parse_kv("depth").unwrap_err().contains("key=value"));
        let e = parse_kv("colour=red").unwrap_err();
        assert!(e.contains("unknown option `colour`") && e.contains("halt_on_error"), "{e}");
        assert!(parse_kv("log_path=a:b").unwrap_err().contains("`:`"));
        assert!(parse_kv("depot_size_mb=128").is_ok(), "the depot's full warning suggests it");
        for kv in ["mode=guarded", "guarded_slots=1024", "sample_rate=1"] {
            assert!(parse_kv(kv).is_ok(), "{kv}");
        }
    }
}
