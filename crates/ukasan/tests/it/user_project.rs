//! A user's own Cargo project, as a new user makes it: outside this repository (none of our
//! `.cargo/config.toml`), only the dependency line and the `#[global_allocator]` line, built
//! in the default debug profile, in release, and in release with frame pointers explicitly
//! off. Each build's reports must name the allocating and freeing functions, the stacks must
//! start at the caller of the allocator API (our own frames skipped), and its hot path must
//! make no more syscalls with stacks on than with `stacks=off`.

use std::path::{Path, PathBuf};
use std::process::Command;

const MAIN_RS: &str = r#"
#[global_allocator]
static A: ukasan::Ukasan<std::alloc::System> = ukasan::Ukasan::new(std::alloc::System);

use std::alloc::Layout;
use std::hint::black_box;

type Obj = [u8; 40];

#[inline(never)]
fn alloc_site_fn() -> *mut Obj {
    Box::into_raw(black_box(Box::new([7u8; 40])))
}

#[inline(never)]
fn free_site_fn(p: *mut Obj) {
    // SAFETY: from Box::into_raw (a second call is the bug under test).
    drop(unsafe { Box::from_raw(black_box(p)) });
}

#[inline(never)]
fn second_free_fn(p: *mut Obj) {
    // A body of its own, so that the optimizer cannot fold it into `free_site_fn`.
    black_box(2u8);
    // SAFETY: deliberately a double free.
    drop(unsafe { Box::from_raw(black_box(p)) });
}

#[inline(never)]
fn wrong_layout_fn(p: *mut Obj) {
    // SAFETY: deliberately the wrong layout.
    unsafe { std::alloc::dealloc(black_box(p).cast(), Layout::from_size_align(24, 1).unwrap()) };
}

#[inline(never)]
fn write_after_free_fn(p: *mut Obj) {
    // SAFETY: deliberately after free, inside memory the detector keeps poisoned.
    unsafe { std::ptr::write_volatile(black_box(p).cast::<u8>().add(3), 1) };
}

/// A syscall number no kernel has: the tracer's marker.
fn marker() {
    // SAFETY: an unimplemented syscall (ENOSYS); rcx and r11 are clobbered by `syscall`.
    unsafe {
        std::arch::asm!("syscall", inlateout("rax") 1000usize => _, lateout("rcx") _,
            lateout("r11") _, options(nostack))
    };
}

#[inline(never)]
fn churn(n: usize) {
    #[inline(never)]
    fn site(i: usize) -> Vec<u8> {
        black_box(vec![1u8; 16 + (i % 16) * 8])
    }
    let mut ring: Vec<Vec<u8>> = (0..64).map(|_| Vec::new()).collect();
    for i in 0..n {
        ring[i % 64] = site(i);
    }
    black_box(&ring);
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("double-free") => {
            let p = alloc_site_fn();
            free_site_fn(p);
            second_free_fn(p);
        }
        Some("use-after-free") => {
            let p = alloc_site_fn();
            free_site_fn(p);
            write_after_free_fn(p);
        }
        Some("layout-mismatch") => wrong_layout_fn(alloc_site_fn()),
        Some("syscalls") => {
            // A slice of unknown length: the loop is not unrolled into two call sites.
            for &n in black_box(&[20_000usize, 100_000][..]) {
                if n == 100_000 {
                    marker();
                }
                churn(n);
            }
            marker();
        }
        other => panic!("unknown scenario {other:?}"),
    }
}
"#;

/// The project, written fresh under the system's temporary directory (outside the
/// repository, so no `.cargo/config.toml` of ours applies), with our `Cargo.lock` so that it
/// builds offline with the versions we test.
fn project() -> PathBuf {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().parent().unwrap();
    let dir = std::env::temp_dir().join("ukasan-it-user-project");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let dep = Path::new(env!("CARGO_MANIFEST_DIR")).display().to_string();
    let toml = format!(
        "[package]\nname = \"userproj\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [dependencies]\nukasan = {{ path = {dep:?} }}\n"
    );
    let write = |p: PathBuf, s: &str| {
        if std::fs::read_to_string(&p).ok().as_deref() != Some(s) {
            std::fs::write(&p, s).unwrap();
        }
    };
    write(dir.join("Cargo.toml"), &toml);
    write(dir.join("src/main.rs"), MAIN_RS);
    let lock = std::fs::read_to_string(ws.join("Cargo.lock")).unwrap();
    write(dir.join("Cargo.lock"), &lock);
    assert!(
        !dir.ancestors().any(|a| a.join(".cargo/config.toml").exists()),
        "{} must be outside any cargo config",
        dir.display()
    );
    dir
}

/// Builds the project in one configuration; returns the executable.
fn build(dir: &Path, name: &str, release: bool, rustflags: &str) -> PathBuf {
    let target = dir.join(format!("target-{name}"));
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(dir).args(["build", "--offline", "--quiet"]);
    if release {
        cmd.arg("--release");
    }
    for v in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS", "CARGO_BUILD_TARGET"]
    {
        cmd.env_remove(v);
    }
    if !rustflags.is_empty() {
        cmd.env("RUSTFLAGS", rustflags);
    }
    let out = cmd.env("CARGO_TARGET_DIR", &target).output().expect("cargo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name}: build failed:\n{stderr}");
    // Nothing to tell a user who added the dependency line (no flag to add).
    assert!(!stderr.contains("warning"), "{name}: the build warns:\n{stderr}");
    target.join(if release { "release" } else { "debug" }).join("userproj")
}

/// The first report of `kind` in `stderr`, and how many reports there are in all.
fn report(stderr: &str, kind: &str) -> (String, usize) {
    let rule = "=".repeat(66);
    let parts: Vec<&str> = stderr.split(&format!("{rule}\n")).skip(1).step_by(2).collect();
    let r = parts.iter().find(|r| r.starts_with(&format!("BUG: KASAN: {kind} ")));
    let r = r.unwrap_or_else(|| panic!("no {kind} report in:\n{stderr}"));
    (r.to_string(), parts.len())
}

/// The frame lines of a report's section (`Allocated by`, `Freed by`) or, for `""`, of the
/// detection stack.
fn section<'a>(report: &'a str, title: &str) -> Vec<&'a str> {
    let mut lines = report.lines();
    if !title.is_empty() {
        lines.by_ref().find(|l| l.starts_with(title));
    }
    lines.skip_while(|l| !l.starts_with(" #")).take_while(|l| l.starts_with(' ')).collect()
}

fn has(frames: &[&str], f: &str) -> bool {
    frames.iter().any(|l| l.contains(&format!("userproj::{f}")))
}

fn check_build(exe: &Path, name: &str) {
    let run = |scenario: &str, opts: &str| {
        let o = Command::new(exe).arg(scenario).env("UKASAN_OPTIONS", opts).output().unwrap();
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let ctx = |what: &str, r: &str| format!("{name}, {what}:\n{r}");

    let (r, n) = report(&run("double-free", ""), "double-free");
    assert_eq!(n, 1, "{}", ctx("double-free: one report", &r));
    assert!(has(&section(&r, ""), "second_free_fn"), "{}", ctx("double-free", &r));
    let alloc = section(&r, "Allocated by thread");
    let freed = section(&r, "Freed by thread");
    assert!(has(&alloc, "alloc_site_fn"), "{}", ctx("double-free, allocation", &r));
    assert!(has(&freed, "free_site_fn"), "{}", ctx("double-free, free", &r));
    // The skip count: the allocation stack starts at the allocator API's own caller, the
    // shim `__rust_alloc` (or, where it is a tail call, the allocating function itself),
    // and no frame of ukasan's appears anywhere.
    let first = alloc.first().copied().unwrap_or("");
    assert!(
        first.contains("__rust_alloc") || first.contains("userproj::alloc_site_fn"),
        "{}",
        ctx("allocation stack starts at the API's caller", &r)
    );
    assert!(
        !r.lines().any(|l| l.starts_with(" #") && (l.contains(" ukasan::") || l.contains("stacktrace::"))),
        "{}",
        ctx("no frame of ukasan", &r)
    );

    let (r, _) = report(&run("use-after-free", ""), "use-after-free");
    // Found at exit: the header names the freeing function, not the exit path.
    let header = r.lines().next().unwrap_or("");
    assert!(
        header.contains("userproj::free_site_fn") && header.contains("(found at exit)"),
        "{}",
        ctx("uaf header", &r)
    );
    assert!(has(&section(&r, "Allocated by thread"), "alloc_site_fn"), "{}", ctx("uaf", &r));
    assert!(has(&section(&r, "Freed by thread"), "free_site_fn"), "{}", ctx("uaf", &r));

    let (r, n) = report(&run("layout-mismatch", ""), "layout-mismatch");
    assert_eq!(n, 1, "{}", ctx("layout-mismatch: one report", &r));
    assert!(has(&section(&r, ""), "wrong_layout_fn"), "{}", ctx("layout-mismatch", &r));
    assert!(has(&section(&r, "Allocated by thread"), "alloc_site_fn"), "{}", ctx("lm", &r));

    let count = |opts: &str| {
        let mut cmd = Command::new(exe);
        cmd.arg("syscalls").env("UKASAN_OPTIONS", opts);
        let c = crate::syscalls::count(cmd);
        assert_eq!((c.markers, c.status), (2, Some(0)), "{name} {opts}: {}", c.stderr);
        c.between
    };
    let off = count("stacks=off");
    for opts in ["stacks=auto", "stacks=dwarf"] {
        assert_eq!(count(opts), off, "{name}: syscalls over 100 000 allocations, {opts} vs off");
    }
}

#[test]
fn a_users_own_project_gets_right_stacks_in_every_profile() {
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return;
    }
    let dir = project();
    for (name, release, flags) in [
        ("debug", false, ""),
        ("release", true, ""),
        ("release-nofp", true, "-C force-frame-pointers=no"),
    ] {
        let exe = build(&dir, name, release, flags);
        check_build(&exe, name);
    }
}
