//! `ukasan run`: exit status, 127, signal forwarding, environment, bad options, library build.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use crate::{build_dummy, dummy_lib, scratch, text, ukasan};

fn run_dummy(args: &[&str]) -> std::process::Output {
    ukasan().env("UKASAN_LIB", dummy_lib()).arg("run").args(args).output().unwrap()
}

#[test]
fn exit_status_is_the_programs() {
    assert_eq!(run_dummy(&["--", "sh", "-c", "exit 7"]).status.code(), Some(7));
    assert_eq!(run_dummy(&["--", "true"]).status.code(), Some(0));
}

#[test]
fn killed_program_gives_128_plus_signal() {
    assert_eq!(run_dummy(&["--", "sh", "-c", "kill -9 $$"]).status.code(), Some(128 + 9));
}

#[test]
fn missing_program_is_127_with_a_clear_error() {
    let o = run_dummy(&["--", "/nonexistent/ukasan-no-such-program"]);
    assert_eq!(o.status.code(), Some(127));
    let (_, err) = text(&o);
    assert!(err.contains("ukasan-no-such-program: command not found"), "{err}");
}

#[test]
fn preload_and_options_reach_the_child() {
    let other = build_dummy(&scratch("other"), "libother.so");
    let o = ukasan()
        .env("UKASAN_LIB", dummy_lib())
        .env("LD_PRELOAD", &other)
        .env("UKASAN_OPTIONS", "verbosity=0")
        .args(["run", "--stacks", "fp", "--json", "-o", "depth=8", "--", "sh", "-c"])
        .arg("echo \"$LD_PRELOAD|$UKASAN_OPTIONS\"")
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let want = format!(
        "{}:{}|verbosity=0:stacks=fp:report_format=json:depth=8",
        other.display(),
        dummy_lib().display()
    );
    assert_eq!(out.trim(), want);
}

/// Starts `ukasan run -- sh -c SCRIPT`, waits for the script to print `ready`, sends `sig` to
/// ukasan (not to the child) and returns ukasan's exit code.
fn forward(sig: &str, script: &str) -> Option<i32> {
    let mut child = ukasan()
        .env("UKASAN_LIB", dummy_lib())
        .args(["run", "--", "sh", "-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let st =
        std::process::Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap();
    assert!(st.success());
    child.wait().unwrap().code()
}

#[test]
fn sigterm_is_forwarded_and_the_childs_exit_code_kept() {
    let code = forward("-TERM", "trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done");
    assert_eq!(code, Some(42));
}

#[test]
fn sighup_kills_the_child_and_gives_129() {
    // `exec sleep`: the child itself has the default disposition and dies of the signal.
    assert_eq!(forward("-HUP", "echo ready; exec sleep 30"), Some(128 + 1));
}

#[test]
fn bad_options_name_the_accepted_values() {
    let o = ukasan().args(["run", "--stacks", "bogus", "--", "true"]).output().unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("bogus") && err.contains("shadow") && err.contains("libgcc"), "{err}");

    let o = ukasan().args(["run", "--mode", "hw-tags", "--", "true"]).output().unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    // The CLI runs host programs; on x86-64 hw-tags cannot run and says why.
    let want = if cfg!(target_arch = "x86_64") { "needs an arm64 CPU with MTE" } else { "MTE" };
    assert!(err.contains(want) && err.contains("use generic or guarded"), "{err}");

    let o = ukasan().args(["run", "--mode", "kfence", "--", "true"]).output().unwrap();
    assert!(text(&o).1.contains("unknown mode `kfence`"), "{}", text(&o).1);

    let o = ukasan().args(["run", "-o", "colour=red", "--", "true"]).output().unwrap();
    let (_, err) = text(&o);
    assert!(err.contains("unknown option `colour`") && err.contains("halt_on_error"), "{err}");

    let o = ukasan()
        .env("UKASAN_LIB", "/nonexistent/libukasan.so")
        .args(["run", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("UKASAN_LIB=/nonexistent/libukasan.so does not exist"));
}

/// A copy of `ukasan` in an empty `target/debug` has no library beside it: it must run
/// `cargo build -p ukasan-preload` into that target dir, once. A stand-in `cargo` (via `CARGO`)
/// records its arguments and builds an empty library where cargo would put the real one.
#[test]
fn builds_the_library_when_it_is_missing() {
    let dir = scratch("build");
    let profile = dir.join("target/debug");
    std::fs::create_dir_all(&profile).unwrap();
    let exe = profile.join("ukasan");
    std::fs::copy(env!("CARGO_BIN_EXE_ukasan"), &exe).unwrap();
    let lib_src = build_dummy(&dir, "libsrc.so");
    let fake = dir.join("fake-cargo");
    let log = dir.join("cargo.log");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"$@\" >> {log}\necho \"target=$CARGO_TARGET_DIR\" >> {log}\n\
             cp {lib} \"$CARGO_TARGET_DIR/debug/libukasan.so\"\n",
            log = log.display(),
            lib = lib_src.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();

    let run = || {
        let mut c = std::process::Command::new(&exe);
        c.env_remove("UKASAN_LIB").env("CARGO", &fake).args(["run", "--", "sh", "-c", "exit 3"]);
        c.output().unwrap()
    };
    let o = run();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("libukasan.so not built yet, building it"), "{err}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("build") && logged.contains("-p ukasan-preload"), "{logged}");
    assert!(!logged.contains("--release"), "{logged}");
    assert!(logged.contains(&format!("target={}", dir.join("target").display())), "{logged}");

    // Second run: the library is there now, no build.
    let o = run();
    assert_eq!(o.status.code(), Some(3));
    assert!(!text(&o).1.contains("building"), "{}", text(&o).1);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), logged);
}

#[test]
fn setuid_program_is_named_as_running_without_the_detector() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("note: not root, cannot make a set-user-ID copy owned by another user: skipped");
        return;
    }
    let dir = scratch("setuid");
    let prog = dir.join("env-setuid");
    std::fs::copy("/usr/bin/env", &prog).unwrap();
    std::os::unix::fs::chown(&prog, Some(65534), None).unwrap();
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let o = run_dummy(&["--", prog.to_str().unwrap(), "sh", "-c", "echo \"[$LD_PRELOAD]\""]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(
            "env-setuid is set-user-ID (owner uid 65534): the dynamic loader runs it in \
             secure-execution mode and ignores LD_PRELOAD"
        ),
        "{err}"
    );
    // What the warning says is what happens: the loader dropped LD_PRELOAD (unless the file
    // system ignores set-ID bits, and then the warning must not appear either).
    assert_eq!(out.trim(), "[]", "{err}");

    // An ordinary program: no warning.
    let o = run_dummy(&["--", "true"]);
    assert!(!text(&o).1.contains("secure-execution"));
}
