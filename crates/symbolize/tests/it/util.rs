//! Helpers: scratch directories, compiling and loading C shared libraries.

use std::ffi::{c_void, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh scratch directory under the target's temp dir.
pub fn scratch(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    // Relaxed: only uniqueness of the counter value matters.
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("ukasan-symbolize-{}-{n}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs a command, panicking with its output if it fails.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The C source of the test library; `CALL_LINE` is the line of the marked call.
pub const C_SOURCE: &str = r#"#include <stddef.h>

__attribute__((noinline)) void *ukasan_c_ret(void)
{
	return __builtin_return_address(0);
}

__attribute__((noinline)) void *ukasan_c_caller(void)
{
	void *ra = ukasan_c_ret(); /* CALL */
	__asm__ volatile("" ::: "memory");
	return ra;
}
"#;

/// 1-based line of the `/* CALL */` marker in [`C_SOURCE`].
pub fn call_line() -> u32 {
    C_SOURCE.lines().position(|l| l.contains("/* CALL */")).unwrap() as u32 + 1
}

/// Compiles [`C_SOURCE`] into `dir/name` as a shared library with extra `flags`.
pub fn build_c_lib(dir: &Path, name: &str, flags: &[&str]) -> PathBuf {
    let src = dir.join("lib.c");
    std::fs::write(&src, C_SOURCE).unwrap();
    let out = dir.join(name);
    run(Command::new("cc")
        .args(["-O0", "-fPIC", "-shared", "-Wl,--build-id=sha1"])
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&src));
    out
}

/// Loads the library at `path` and returns the return address `ukasan_c_caller` captured
/// (an address inside `ukasan_c_caller`, right after its call to `ukasan_c_ret`).
pub fn return_address_from(path: &Path) -> usize {
    let c = CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: loading a library we just built; its constructors are the compiler's defaults.
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    assert!(!handle.is_null(), "dlopen {path:?} failed");
    // SAFETY: `handle` is a live library handle and the name is NUL-terminated.
    let sym = unsafe { libc::dlsym(handle, c"ukasan_c_caller".as_ptr()) };
    assert!(!sym.is_null());
    // SAFETY: `ukasan_c_caller` has the C signature `void *(void)`. The library is never
    // closed, so the returned address stays valid for the test.
    let f: extern "C" fn() -> *mut c_void = unsafe { std::mem::transmute(sym) };
    f() as usize
}

/// Whether a C compiler is available (the C tests print a note and pass without one).
pub fn have_cc() -> bool {
    let ok = Command::new("cc").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("note: no `cc` on PATH: C symbolization tests skipped");
    }
    ok
}
