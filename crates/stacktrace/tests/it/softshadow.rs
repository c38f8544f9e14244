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

/// Capture and save in one call, incrementally on the handle an entry remembers, agrees
/// with a capture then a whole save, over a random walk of the depth.
#[test]
fn capture_and_save_equals_capture_then_save() {
    survives("save-wander");
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
            // The DWARF walk, the frame-pointer walk and libgcc read patched slots through the
            // stack shadow (or skip the trampoline's pseudo-frames): they agree, the DWARF
            // walk to the end (the frame-pointer walk stops at the thread's start routine,
            // in glibc without frame pointers).
            let mut e = [0usize; 64];
            let j = stacktrace::dwarf::capture(&mut e).unwrap();
            assert_eq!(e[1..j], b[1..m]);
            let mut c = [0usize; 64];
            let k = stacktrace::fp::capture(&mut c).unwrap();
            assert!(k > 20 && k <= m);
            assert_eq!(c[1..k], b[1..k]);
            let mut d = [0usize; 64];
            let l = stacktrace::libgcc::capture(&mut d).unwrap();
            assert_eq!(d[1..l.min(m)], b[1..l.min(m)]);
        });
    })
    .join()
    .unwrap();
}

/// C code built without frame pointers (as Debian's glibc and gcc's -O2 default), between
/// Rust frames: the software shadow stack must give what the DWARF walker gives, on the
/// first capture (which patches Rust frames above and below the C frames) and in the steady
/// state (which copies them and walks the C frames in between with their CFI).
#[test]
fn c_frames_without_frame_pointers_match_the_dwarf_walk() {
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ukasan-softshadow-nofp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("nofp.c");
    let lib = dir.join("libnofp.so");
    // Frames with sp-based CFA rules; calls that are not tail calls.
    std::fs::write(
        &src,
        "typedef void (*cb_t)(void *);\n\
         __attribute__((noinline)) int c_leaf(cb_t f, void *a, int x) {\n\
           volatile int pad[8]; pad[x & 7] = x; f(a); return pad[x & 7] + 1; }\n\
         __attribute__((noinline)) int c_mid(cb_t f, void *a, int x) {\n\
           volatile long pad[5]; pad[x & 3] = x; int r = c_leaf(f, a, x + 1); return r + (int)pad[x & 3]; }\n\
         int c_top(cb_t f, void *a, int x) { int r = c_mid(f, a, x * 3); return r * 2 + 1; }\n",
    )
    .unwrap();
    let built = Command::new("cc")
        .args(["-O2", "-fomit-frame-pointer", "-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .status();
    match built {
        Ok(s) if s.success() => {}
        other => {
            eprintln!("skipped: no working cc ({other:?})");
            return;
        }
    }
    let path = std::ffi::CString::new(lib.to_str().unwrap()).unwrap();
    // SAFETY: a plain C library with no constructors; the handle is never closed.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW) };
    assert!(!handle.is_null(), "dlopen {}", lib.display());
    let _ = std::fs::remove_dir_all(&dir);
    type CTop =
        unsafe extern "C" fn(extern "C" fn(*mut libc::c_void), *mut libc::c_void, i32) -> i32;
    // SAFETY: the symbol exists (just compiled) and has this signature.
    let c_top: CTop = unsafe {
        let p = libc::dlsym(handle, c"c_top".as_ptr());
        assert!(!p.is_null());
        std::mem::transmute::<*mut libc::c_void, CTop>(p)
    };

    type Capture = fn(&mut [usize]) -> Result<usize, Unsupported>;
    /// Captures by every backend from one call site: three shadow captures, DWARF, and the
    /// frame-pointer walk.
    struct Run {
        bufs: [[usize; 256]; 5],
        n: [usize; 5],
        patched: usize,
    }
    extern "C" fn callback(arg: *mut libc::c_void) {
        // SAFETY: `arg` is the `Run` that the test passes down through the C frames.
        let run = unsafe { &mut *(arg as *mut Run) };
        nest(6, &mut || {
            let fs: [Capture; 5] = [
                softshadow::capture,
                softshadow::capture,
                softshadow::capture,
                stacktrace::dwarf::capture,
                stacktrace::fp::capture,
            ];
            for (i, f) in fs.iter().enumerate() {
                run.n[i] = f(&mut run.bufs[i]).unwrap();
                if i == 0 {
                    run.patched = softshadow::thread_stats().patched;
                }
            }
        });
    }
    let lib_base = |pc: usize| {
        // SAFETY: all-zero is a valid `Dl_info` (pointers and integers).
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        // SAFETY: `dladdr` only reads the loader's tables and writes `info`.
        let found = unsafe { libc::dladdr((pc - 1) as *const libc::c_void, &mut info) } != 0;
        found.then_some(info.dli_fbase as usize)
    };
    let c_base = lib_base(c_top as usize).expect("dladdr of c_top");

    // Without and with Rust frames below the C frames patched before (the first capture
    // from the callback patches them itself, or meets them as its anchor).
    for warm in [false, true] {
        std::thread::spawn(move || {
            nest(4, &mut || {
                let mut below = 0;
                if warm {
                    let mut buf = [0usize; 256];
                    softshadow::capture(&mut buf).unwrap();
                    below = softshadow::thread_stats().patched;
                    assert!(below > 0, "Rust frames patched");
                }
                let mut run = Box::new(Run { bufs: [[0; 256]; 5], n: [0; 5], patched: 0 });
                // SAFETY: `callback` matches `cb_t`; `run` outlives the call.
                let r = unsafe { c_top(callback, (&mut *run as *mut Run).cast(), 5) };
                black_box(r);
                let dwarf = &run.bufs[3][..run.n[3]];
                let in_c = dwarf.iter().filter(|&&pc| lib_base(pc) == Some(c_base)).count();
                assert_eq!(in_c, 3, "c_leaf, c_mid and c_top in the DWARF walk: {dwarf:x?}");
                assert!(
                    run.patched > below + 4,
                    "Rust frames patched on both sides of the C frames"
                );
                // The scenario is the hard one: following `rbp` through these C frames goes
                // wrong (stale frame pointers skip them), as the shadow stack used to.
                assert_ne!(
                    &run.bufs[4][1..run.n[4]],
                    &dwarf[1..],
                    "the frame-pointer walk differs"
                );
                // Entry 0 is the call site, which an optimised loop may unroll.
                for i in 0..3 {
                    let got = &run.bufs[i][1..run.n[i]];
                    assert_eq!(got, &dwarf[1..], "shadow capture {i} differs from the DWARF walk");
                }
            });
        })
        .join()
        .unwrap();
    }
}
