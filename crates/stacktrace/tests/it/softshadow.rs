//! The software shadow stack: in-process agreement with the frame-pointer walk, and the
//! survival scenarios, each in a child process of its own (`examples/softshadow_child.rs`,
//! built by `cargo test`): patched stacks, signal handlers and fork are process-wide.

use stacktrace::{softshadow, Unsupported};
use std::hint::black_box;
use std::path::PathBuf;
use std::process::{Command, Output};

/// The child program, next to this test binary's directory (`target/<profile>/examples`).
fn child_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    dir.join("softshadow_child")
}

fn child(scenario: &str) -> Output {
    let path = child_path();
    assert!(
        path.exists(),
        "{} missing: run the tests with `cargo test` (it builds examples)",
        path.display()
    );
    Command::new(path).arg(scenario).env("RUST_BACKTRACE", "0").output().unwrap()
}

/// Runs a scenario that must succeed and print `ok <scenario>`.
fn survives(scenario: &str) {
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return;
    }
    let out = child(scenario);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.lines().any(|l| l == format!("ok {scenario}")),
        "{scenario}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
}

#[test]
fn panic_caught_through_patched_frames() {
    survives("panic-caught");
}

#[test]
fn panic_uncaught_through_patched_frames() {
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return;
    }
    let out = child("panic-uncaught");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(101), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("boom-uncaught"), "{stderr}");
    // 30 frames plus the closure's guard, all dropped by the unwind before `main` exits.
    assert!(stdout.contains("drops 31"), "{stdout}");
}

#[test]
fn panic_in_a_thread() {
    survives("panic-thread");
}

#[test]
fn std_backtrace_sees_real_frames() {
    survives("backtrace-std");
}

#[test]
fn glibc_backtrace_sees_real_frames() {
    survives("backtrace-glibc");
}

#[test]
fn pthread_exit_runs_every_cleanup() {
    survives("pthread-exit");
}

#[test]
fn pthread_cancel_runs_every_cleanup() {
    survives("pthread-cancel");
}

#[test]
fn longjmp_out_of_patched_frames() {
    survives("longjmp");
}

#[test]
fn siglongjmp_out_of_a_handler() {
    survives("siglongjmp");
}

#[test]
fn signal_storm_mid_capture_and_mid_trampoline() {
    survives("signal-storm");
}

#[test]
fn deep_recursion_100k_frames() {
    survives("deep-recursion");
}

#[test]
fn threads_exit_and_stacks_are_reused() {
    survives("thread-exit");
}

#[test]
fn fork_then_parent_and_child_continue() {
    survives("fork");
}

#[test]
fn return_values_cross_the_trampoline_intact() {
    survives("returns");
}

#[test]
fn off_switches() {
    survives("off-switch");
}

#[test]
fn stack_switching_falls_back() {
    survives("fibers");
}

#[test]
fn two_million_captures_match_the_reference_walk() {
    survives("cross-check-2m");
}

/// C++ exceptions thrown and caught by g++-built code through patched Rust frames (in
/// process, dlopen'ed). The variant under LD_PRELOAD, with frames patched inside `malloc`,
/// comes with the preload library (crates/preload).
#[test]
fn cxx_exception_through_patched_frames() {
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ukasan-softshadow-cxx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("cxx.cpp");
    let lib = dir.join("libcxx.so");
    std::fs::write(
        &src,
        "extern \"C\" void cxx_throw(int v) { throw v; }\n\
         extern \"C\" int cxx_catch(void (*f)()) { try { f(); } catch (int v) { return v; } return -1; }\n",
    )
    .unwrap();
    let built =
        Command::new("g++").args(["-shared", "-fPIC", "-O2", "-o"]).arg(&lib).arg(&src).status();
    match built {
        Ok(s) if s.success() => {}
        other => {
            eprintln!("skipped: no working g++ ({other:?})");
            return;
        }
    }
    let out = Command::new(child_path()).arg("cxx-exception").arg(&lib).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ok cxx-exception"),
        "{}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- in process: nothing here changes process-wide switches ---------------------------

#[inline(never)]
fn nest(n: usize, f: &mut dyn FnMut()) {
    if n == 0 {
        f();
    } else {
        nest(n - 1, f);
    }
    black_box(n);
}

#[test]
fn agrees_with_the_frame_pointer_walk_and_copies_the_second_time() {
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        let mut buf = [0usize; 8];
        assert_eq!(softshadow::capture(&mut buf), Err(Unsupported::NotCompiled));
        return;
    }
    // A thread of our own: its state starts fresh whatever other tests do.
    std::thread::spawn(|| {
        nest(20, &mut || {
            let mut a = [0usize; 64];
            let mut b = [0usize; 64];
            let n = softshadow::capture(&mut a).unwrap();
            let patched = softshadow::thread_stats().patched;
            assert!(patched >= 20 - softshadow::policy::MAX_SKIP, "{patched}");
            let m = softshadow::capture(&mut b).unwrap();
            assert_eq!(a[1..n], b[1..m], "the copy equals the first walk");
            assert!(a[..n].iter().all(|&ra| !softshadow::is_trampoline(ra)));
            // The frame-pointer walk and libgcc read patched slots through the stack shadow
            // (or skip the trampoline's pseudo-frames): they agree.
            let mut c = [0usize; 64];
            let k = stacktrace::fp::capture(&mut c).unwrap();
            assert_eq!(c[1..k], b[1..m]);
            let mut d = [0usize; 64];
            let l = stacktrace::libgcc::capture(&mut d).unwrap();
            assert_eq!(d[1..l.min(m)], b[1..l.min(m)]);
            assert_eq!(k, m);
        });
    })
    .join()
    .unwrap();
}
