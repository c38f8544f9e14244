//! Rust-side bugs in a child process (this test binary re-executed), reports asserted.

use std::alloc::Layout;
use std::process::Command;

const ENV: &str = "UKASAN_IT_CHILD";

#[inline(never)]
fn rust_alloc_site(l: Layout) -> *mut u8 {
    // SAFETY: non-zero size.
    let p = unsafe { std::alloc::alloc(l) };
    std::hint::black_box(p)
}

#[inline(never)]
fn rust_free_site(p: *mut u8, l: Layout) {
    // SAFETY: deliberately wrong in some scenarios: the detector's business.
    unsafe { std::alloc::dealloc(std::hint::black_box(p), l) }
}

#[inline(never)]
fn rust_realloc_site(p: *mut u8, l: Layout, n: usize) -> *mut u8 {
    // SAFETY: as above.
    unsafe { std::alloc::realloc(std::hint::black_box(p), l, n) }
}

#[inline(never)]
fn poke(p: *mut u8, off: isize) {
    // SAFETY: deliberately out of bounds / after free, inside memory the detector owns.
    unsafe { std::ptr::write_volatile(p.offset(off), 0x41) }
}

#[inline(never)]
fn peek(p: *mut u8, off: isize) -> u8 {
    // SAFETY: deliberately out of bounds / after free, inside memory the detector owns.
    unsafe { std::ptr::read_volatile(p.offset(off)) }
}

/// `n` allocations of 16 to 136 bytes from four call sites, each freeing the one made 64
/// allocations earlier: the same stacks over and over, as a program's steady state.
#[inline(never)]
fn churn(n: usize) {
    #[inline(never)]
    fn site_a(i: usize) -> Vec<u8> {
        std::hint::black_box(vec![1u8; 16 + (i % 16) * 8])
    }
    #[inline(never)]
    fn site_b(i: usize) -> Vec<u8> {
        std::hint::black_box(vec![2u8; 24 + (i % 8) * 8])
    }
    #[inline(never)]
    fn site(i: usize) -> Vec<u8> {
        if i.is_multiple_of(2) {
            site_a(i)
        } else {
            site_b(i)
        }
    }
    let mut ring: Vec<Vec<u8>> = (0..64).map(|_| Vec::new()).collect();
    for i in 0..n {
        ring[i % 64] = site(i);
    }
    std::hint::black_box(&ring);
}

/// Runs the scenario named by `UKASAN_IT_CHILD` (nothing otherwise).
#[test]
fn entry() {
    let Ok(scenario) = std::env::var(ENV) else {
        return;
    };
    println!("tid={}", unsafe_gettid());
    let l = Layout::from_size_align(32, 8).unwrap();
    match scenario.as_str() {
        "layout-mismatch" => {
            let p = rust_alloc_site(l);
            rust_free_site(p, Layout::from_size_align(24, 8).unwrap());
        }
        "realloc-layout-mismatch" => {
            let p = rust_alloc_site(l);
            let q = rust_realloc_site(p, Layout::from_size_align(32, 16).unwrap(), 64);
            rust_free_site(q, Layout::from_size_align(64, 16).unwrap());
        }
        "double-free" => {
            let p = rust_alloc_site(l);
            rust_free_site(p, l);
            rust_free_site(p, l);
        }
        "overflow" => {
            let p = rust_alloc_site(l);
            poke(p, 32);
            rust_free_site(p, l);
        }
        "use-after-free" => {
            let p = rust_alloc_site(l);
            rust_free_site(p, l);
            poke(p, 4);
        }
        "large-use-after-free"
        | "large-read-after-free"
        | "large-use-after-free-evicted"
        | "huge-use-after-free"
        | "huge-use-after-free-evicted" => {
            // Its inner pages are given back to the system in the quarantine (32 KiB and
            // more): a slot of the heap (100 kB) or a mapping of its own (300 kB).
            let n = if scenario.starts_with("huge") { 300_000 } else { 100_000 };
            let big = Layout::from_size_align(n, 8).unwrap();
            let p = rust_alloc_site(big);
            rust_free_site(p, big);
            if scenario == "large-read-after-free" {
                println!("read={}", peek(p, n as isize / 2));
            } else {
                poke(p, n as isize / 2);
            }
            if scenario.ends_with("-evicted") {
                // Past a 1 MiB quarantine: the object is evicted, and checked, before exit.
                for _ in 0..40 {
                    rust_free_site(rust_alloc_site(big), big);
                }
                println!("evicted");
            }
        }
        "guarded-overflow-read" => {
            let p = rust_alloc_site(l);
            println!("read={}", peek(p, 32));
            rust_free_site(p, l);
        }
        "guarded-layout-mismatch" => {
            let p = rust_alloc_site(l);
            rust_free_site(p, Layout::from_size_align(24, 8).unwrap());
        }
        "guarded-read-after-free" => {
            let p = rust_alloc_site(l);
            rust_free_site(p, l);
            println!("read={}", peek(p, 4));
        }
        "huge-overflow-read" => {
            // A chunk mapped on its own (300 kB).
            let big = Layout::from_size_align(300_000, 8).unwrap();
            let p = rust_alloc_site(big);
            println!("read={}", peek(p, 300_000));
            rust_free_site(p, big);
        }
        "underflow-read" => {
            let p = rust_alloc_site(l);
            println!("read={}", peek(p, -1));
            rust_free_site(p, l);
        }
        "stale-pointer" => {
            // Without a quarantine the slot is reused at once: `p` points into `q`.
            let p = rust_alloc_site(l);
            rust_free_site(p, l);
            let q = rust_alloc_site(l);
            println!("reused={}", p.addr() & ((1 << 56) - 1) == q.addr() & ((1 << 56) - 1));
            println!("read={}", peek(p, 4));
            rust_free_site(p, l);
            rust_free_site(q, l);
        }
        "syscalls" => {
            // One call site for the warm-up and the measured run: the same stacks.
            // A slice of unknown length: the loop is not unrolled into two call sites.
            for &n in std::hint::black_box(&[20_000usize, 100_000][..]) {
                if n == 100_000 {
                    crate::syscalls::marker();
                }
                churn(n);
            }
            crate::syscalls::marker();
        }
        "fork-storm" => crate::heap::fork_storm(),
        "million-leaks" => crate::heap::million_leaks(),
        "free-storm" => crate::heap::free_storm(),
        "phase-change" => crate::heap::phase_change(),
        "clean" => {
            let v: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
            let joined = v.join(",");
            let h = std::thread::spawn(move || joined.len());
            assert!(h.join().unwrap() > 1000);
        }
        other => panic!("unknown scenario {other}"),
    }
    println!("end");
}

fn unsafe_gettid() -> i64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

pub(crate) struct Child {
    pub(crate) status: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

pub(crate) fn child(scenario: &str, opts: &str) -> Child {
    // Under qemu-user (the aarch64 job) every page the heap reserves costs the emulator at
    // start: UKASAN_TEST_OPTIONS (heap_region_mb=256 there) goes before the scenario's own.
    let pre = std::env::var("UKASAN_TEST_OPTIONS").unwrap_or_default();
    let opts = [pre.as_str(), opts].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>();
    let opts = opts.join(":");
    let o = crate::self_command()
        .args(["child::entry", "--exact", "--nocapture", "--test-threads=1"])
        .env(ENV, scenario)
        .env("UKASAN_OPTIONS", opts)
        .output()
        .unwrap();
    Child {
        status: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

impl Child {
    fn tid(&self) -> String {
        // libtest prints "test child::entry ... " on the same line.
        let after = self.stdout.split("tid=").nth(1).expect("tid printed");
        after.chars().take_while(char::is_ascii_digit).collect()
    }

    /// The report texts (between rule lines).
    fn reports(&self) -> Vec<String> {
        let rule = "=".repeat(66);
        let parts: Vec<&str> = self.stderr.split(&format!("{rule}\n")).collect();
        parts.iter().skip(1).step_by(2).map(|s| s.to_string()).collect()
    }

    /// The one report of `kind` (`BUG: KASAN: <kind> in ...`, or `<kind> write in ...` for
    /// a write found later).
    fn only(&self, kind: &str) -> String {
        let r: Vec<String> = self
            .reports()
            .into_iter()
            .filter(|r| {
                let rest = r.strip_prefix(&format!("BUG: KASAN: {kind} ")).unwrap_or("");
                ["in ", "write in ", "read in "].iter().any(|p| rest.starts_with(p))
            })
            .collect();
        assert_eq!(r.len(), 1, "expected one {kind}:\n{}", self.stderr);
        r.into_iter().next().unwrap()
    }
}

/// Function names (demangled, via `nm`) of the frames of one section of a report: the frames
/// print `(module+0xoffset)` and the module is this executable.
fn section_functions(report: &str, title: &str) -> Vec<String> {
    let lines: Vec<&str> = report
        .lines()
        .skip_while(|l| !l.starts_with(title))
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .collect();
    lines.iter().filter_map(|l| resolve(l)).collect()
}

fn stack_functions(report: &str) -> Vec<String> {
    report.lines().skip(2).take_while(|l| l.starts_with(" #")).filter_map(resolve).collect()
}

fn resolve(frame: &str) -> Option<String> {
    let exe = std::env::current_exe().unwrap();
    let inner = frame.rsplit_once('(')?.1.strip_suffix(')')?;
    let (module, off) = inner.rsplit_once("+0x")?;
    if std::fs::canonicalize(module).ok()? != std::fs::canonicalize(&exe).ok()? {
        return None;
    }
    let off = usize::from_str_radix(off, 16).ok()? - 1;
    symbols().iter().take_while(|(a, _)| *a <= off).last().map(|(_, n)| n.clone())
}

fn symbols() -> &'static Vec<(usize, String)> {
    static SYMS: std::sync::OnceLock<Vec<(usize, String)>> = std::sync::OnceLock::new();
    SYMS.get_or_init(|| {
        let out = Command::new("nm")
            .args(["-C", "--defined-only"])
            .arg(std::env::current_exe().unwrap())
            .output()
            .expect("nm");
        let mut v: Vec<(usize, String)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut it = l.splitn(3, ' ');
                let a = usize::from_str_radix(it.next()?, 16).ok()?;
                let t = it.next()?;
                let name = it.next()?;
                (t == "t" || t == "T").then(|| (a, name.to_string()))
            })
            .collect();
        v.sort();
        v
    })
}

fn has(funcs: &[String], name: &str) -> bool {
    funcs.iter().any(|f| f.contains(name))
}

/// Asserts the header names `function` of this test (not `__rust_dealloc`,
/// `alloc::alloc::dealloc` or another frame of the allocator machinery above it).
fn assert_header(report: &str, prefix: &str, function: &str, suffix: &str) {
    let header = report.lines().next().unwrap_or("");
    let want = format!("BUG: KASAN: {prefix} in it::child::{function}+0x");
    assert!(
        header.starts_with(&want) && header.ends_with(suffix),
        "want {want}..{suffix}:\n{report}"
    );
}

#[test]
fn layout_mismatch_on_dealloc() {
    let c = child("layout-mismatch", "");
    let r = c.only("layout-mismatch");
    assert_header(&r, "layout-mismatch", "rust_free_site", "");
    let tid = c.tid();
    assert!(
        r.contains("Rust dealloc of addr 0x") && r.contains(&format!("by thread {tid} with Layout {{ size: 24, align: 8 }}, but it was allocated with Layout {{ size: 32, align: 8 }}")),
        "{r}"
    );
    assert!(has(&stack_functions(&r), "rust_free_site"), "{r}");
    assert!(r.contains(&format!("Allocated by thread {tid}:")));
    assert!(has(&section_functions(&r, "Allocated by thread"), "rust_alloc_site"), "{r}");
    assert!(c.stdout.contains("end"));
    assert_eq!(c.status, Some(1), "exitcode applies after a report");
}

#[test]
fn layout_mismatch_on_realloc() {
    let c = child("realloc-layout-mismatch", "");
    let r = c.only("layout-mismatch");
    assert_header(&r, "layout-mismatch", "rust_realloc_site", "");
    assert!(r.contains("with Layout { size: 32, align: 16 }, but it was allocated with Layout { size: 32, align: 8 }"), "{r}");
    assert!(has(&stack_functions(&r), "rust_realloc_site"), "{r}");
    assert!(has(&section_functions(&r, "Allocated by thread"), "rust_alloc_site"), "{r}");
}

#[test]
fn double_free_of_rust_allocation() {
    let c = child("double-free", "stacks=fp");
    let r = c.only("double-free");
    assert_header(&r, "double-free", "rust_free_site", "");
    let tid = c.tid();
    assert!(r.contains(&format!("Freed by thread {tid}:")), "{r}");
    assert!(has(&section_functions(&r, "Freed by thread"), "rust_free_site"), "{r}");
    assert!(has(&section_functions(&r, "Allocated by thread"), "rust_alloc_site"), "{r}");
}

#[test]
fn overflow_of_rust_allocation() {
    let c = child("overflow", "");
    let r = c.only("out-of-bounds");
    // Found when the program freed that object: the freeing function is named.
    assert_header(&r, "out-of-bounds write", "rust_free_site", " (found at free)");
    assert!(r.contains("detected at free"), "{r}");
    assert!(r.contains("located 0 bytes to the right of 32-byte region"), "{r}");
    assert!(has(&section_functions(&r, "Allocated by thread"), "rust_alloc_site"), "{r}");
}

#[test]
fn use_after_free_of_rust_allocation_found_at_exit() {
    let c = child("use-after-free", "stacks=libgcc");
    let r = c.only("use-after-free");
    // Found at exit: the header names the function that freed the object, not the exit hook.
    assert_header(&r, "use-after-free write", "rust_free_site", " (found at exit)");
    assert!(!r.lines().next().unwrap().contains("exit_handlers"), "{r}");
    assert!(r.contains("detected at exit"), "{r}");
    assert!(has(&section_functions(&r, "Freed by thread"), "rust_free_site"), "{r}");
    assert!(has(&section_functions(&r, "Allocated by thread"), "rust_alloc_site"), "{r}");
    assert_eq!(c.status, Some(1));
}

/// A large object's inner pages are given back to the system in the quarantine, not
/// poisoned: a write there after the free is still found, byte for byte, at exit and at
/// eviction; a read (which maps a zero page) is no report.
#[test]
fn use_after_free_writes_to_the_given_back_pages_of_a_large_object_are_found() {
    for (what, n) in [("large", 100_000), ("huge", 300_000)] {
        let c = child(&format!("{what}-use-after-free"), "");
        let r = c.only("use-after-free");
        assert_header(&r, "use-after-free write", "rust_free_site", " (found at exit)");
        let at = format!("located {} bytes inside of {n}-byte region", n / 2);
        assert!(r.contains(&at), "{r}");
        assert!(has(&section_functions(&r, "Freed by thread"), "rust_free_site"), "{r}");
        assert!(has(&section_functions(&r, "Allocated by thread"), "rust_alloc_site"), "{r}");
        let c = child(&format!("{what}-use-after-free-evicted"), "quarantine_size_mb=1");
        let r = c.only("use-after-free");
        let found = " (found at quarantine eviction)";
        assert_header(&r, "use-after-free write", "rust_free_site", found);
        assert!(r.contains(&at), "{r}");
        assert!(c.stdout.contains("evicted"), "{}", c.stdout);
    }
    let c = child("large-read-after-free", "");
    assert!(c.reports().is_empty(), "{}", c.stderr);
    assert!(c.stdout.contains("read=0") && c.stdout.contains("end"), "{}", c.stdout);
    assert_eq!(c.status, Some(0));
}

#[test]
fn guarded_mode_reports_rust_reads_at_the_access() {
    let opts = "mode=guarded:sample_rate=1:guarded_slots=4096";
    let c = child("guarded-overflow-read", opts);
    let r = c.only("slab-out-of-bounds");
    assert_header(&r, "slab-out-of-bounds read", "peek", "");
    assert!(r.contains("located 0 bytes to the right of 32-byte region"), "{r}");
    assert!(has(&section_functions(&r, "Allocated by thread"), "rust_alloc_site"), "{r}");
    assert!(c.stdout.contains("read=") && c.stdout.contains("end"), "{}", c.stdout);
    let c = child("guarded-read-after-free", opts);
    let r = c.only("use-after-free");
    assert_header(&r, "use-after-free read", "peek", "");
    // The access size is decoded from the faulting instruction.
    assert!(r.contains("Read of size 1 at addr 0x"), "{r}");
    assert!(r.contains("located 4 bytes inside of 32-byte region"), "{r}");
    assert!(has(&section_functions(&r, "Freed by thread"), "rust_free_site"), "{r}");
    assert_eq!(c.status, Some(1));
    let r = child("guarded-layout-mismatch", opts).only("layout-mismatch");
    assert_header(&r, "layout-mismatch", "rust_free_site", "");
    assert!(r.contains("Layout { size: 24, align: 8 }, but it was allocated with Layout { size: 32, align: 8 }"), "{r}");
    // The same bug in generic mode goes unseen: reads are invisible there.
    assert!(child("guarded-read-after-free", "").reports().is_empty());
}

/// Hw-tags mode's report tests: every read and write of a heap object through a pointer of
/// the wrong tag faults and is reported at the access, then the program goes on. Under
/// `qemu-aarch64 -cpu max` (the aarch64 job, which sets `UKASAN_REQUIRE_MTE=1`), or on an
/// arm64 CPU with MTE; elsewhere the mode must say it is not available and run generic mode.
#[test]
fn hw_tags_mode_reports_every_bad_read_and_write_at_the_access() {
    let opts = "mode=hw-tags";
    let probe = child("guarded-read-after-free", opts);
    if let Some(line) = probe.stderr.lines().find(|l| l.contains("mode=hw-tags is not available")) {
        assert!(line.ends_with("; generic mode"), "{line}");
        if cfg!(target_arch = "aarch64") {
            assert!(std::env::var_os("UKASAN_REQUIRE_MTE").is_none(), "MTE required: {line}");
            eprintln!("no MTE here, hw-tags reports not tested: {line}");
        } else {
            assert!(line.contains("it needs an arm64 CPU with MTE"), "{line}");
        }
        // Generic mode, as the message says: the read goes unseen.
        assert!(probe.reports().is_empty(), "{}", probe.stderr);
        assert_eq!(probe.status, Some(0));
        return;
    }
    let tags = |r: &str| {
        let l =
            r.lines().find(|l| l.starts_with("Pointer tag: [")).unwrap_or_else(|| panic!("{r}"));
        let t: Vec<u8> = l
            .split('[')
            .skip(1)
            .map(|s| u8::from_str_radix(&s[..s.find(']').unwrap()], 16).unwrap())
            .collect();
        assert_eq!(t.len(), 2, "{l}");
        assert_ne!(t[0], 0, "{l}: a pointer the program got never has tag 0");
        (t[0], t[1])
    };
    // Use-after-free read (the probe).
    let r = probe.only("use-after-free");
    assert_header(&r, "use-after-free read", "peek", "");
    assert!(r.contains("Read of size 1 at addr 0x"), "{r}");
    assert!(r.contains("located 4 bytes inside of 32-byte region"), "{r}");
    assert!(has(&section_functions(&r, "Allocated by thread"), "rust_alloc_site"), "{r}");
    assert!(has(&section_functions(&r, "Freed by thread"), "rust_free_site"), "{r}");
    assert_eq!(tags(&r).1, 0, "freed memory has tag 0");
    assert!(probe.stdout.contains("read=") && probe.stdout.contains("end"), "{}", probe.stdout);
    assert_eq!(probe.status, Some(1));
    // Out-of-bounds read, past the end and before the start.
    let c = child("guarded-overflow-read", opts);
    let r = c.only("slab-out-of-bounds");
    assert_header(&r, "slab-out-of-bounds read", "peek", "");
    assert!(r.contains("located 0 bytes to the right of 32-byte region"), "{r}");
    assert!(has(&section_functions(&r, "Allocated by thread"), "rust_alloc_site"), "{r}");
    assert_eq!(tags(&r).1, 0, "the gap after an object has tag 0");
    assert!(c.stdout.contains("read=") && c.stdout.contains("end"), "{}", c.stdout);
    let c = child("underflow-read", opts);
    let r = c.only("slab-out-of-bounds");
    assert_header(&r, "slab-out-of-bounds read", "peek", "");
    assert!(r.contains("located 1 bytes to the left of 32-byte region"), "{r}");
    // Out-of-bounds and use-after-free writes: at the access, and only there (the checks at
    // free and at exit repair what the write did without a second report).
    let c = child("overflow", opts);
    assert_eq!(c.reports().len(), 1, "{}", c.stderr);
    let r = c.only("slab-out-of-bounds");
    assert_header(&r, "slab-out-of-bounds write", "poke", "");
    assert!(r.contains("Write of size 1 at addr 0x"), "{r}");
    let c = child("use-after-free", opts);
    assert_eq!(c.reports().len(), 1, "{}", c.stderr);
    let r = c.only("use-after-free");
    assert_header(&r, "use-after-free write", "poke", "");
    assert!(has(&section_functions(&r, "Freed by thread"), "rust_free_site"), "{r}");
    // Objects of the heap's largest classes and chunks mapped on their own are tagged too.
    for (scenario, size) in [("large-use-after-free", 100_000), ("huge-use-after-free", 300_000)] {
        let c = child(scenario, opts);
        assert_eq!(c.reports().len(), 1, "{scenario}: {}", c.stderr);
        let r = c.only("use-after-free");
        assert_header(&r, "use-after-free write", "poke", "");
        assert!(r.contains(&format!("inside of {size}-byte region")), "{r}");
    }
    let c = child("huge-overflow-read", opts);
    let r = c.only("slab-out-of-bounds");
    assert_header(&r, "slab-out-of-bounds read", "peek", "");
    assert!(r.contains("located 0 bytes to the right of 300000-byte region"), "{r}");
    assert!(c.stdout.contains("end"), "{}", c.stdout);
    // A stale pointer into a reused slot: the read is the new object's memory, so this
    // thread's checks go off; the free through it is caught by its tag all the same.
    let c = child("stale-pointer", "mode=hw-tags:quarantine_size_mb=0");
    assert!(c.stdout.contains("reused=true"), "{}", c.stdout);
    let r = c.only("invalid-access");
    assert_header(&r, "invalid-access read", "peek", "");
    assert!(r.contains("tag checks are off in thread"), "{r}");
    let (p, m) = tags(&r);
    assert_ne!(p, m, "{r}");
    let r = c.only("invalid-free");
    assert_header(&r, "invalid-free", "rust_free_site", "");
    assert!(r.contains("Free of addr 0x"), "{r}");
    assert_eq!(tags(&r), (p, m), "{r}");
    assert!(c.stdout.contains("end"), "{}", c.stdout);
    // The frees' own checks are generic mode's.
    let r = child("double-free", opts).only("double-free");
    assert_header(&r, "double-free", "rust_free_site", "");
}

#[test]
fn the_hot_path_makes_no_syscall_in_any_capture_configuration() {
    let run = |opts: &str| {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["child::entry", "--exact", "--nocapture", "--test-threads=1"])
            .env(ENV, "syscalls")
            .env("UKASAN_OPTIONS", opts);
        let c = crate::syscalls::count(cmd);
        eprintln!("{opts}: {} syscalls between the markers: {:?}", c.total(), c.between);
        assert_eq!((c.markers, c.status), (2, Some(0)), "{opts}: {}", c.stderr);
        c
    };
    let off = run("stacks=off");
    for opts in ["stacks=auto", "stacks=shadow", "stacks=fp", "stacks=dwarf", "stacks=auto:depot=0"]
    {
        let on = run(opts);
        assert_eq!(
            on.between, off.between,
            "syscalls over 100 000 allocations and frees, {opts} vs stacks=off"
        );
    }
}

#[test]
fn clean_rust_program_and_leak_check_opt_in() {
    let c = child("clean", "");
    assert!(c.reports().is_empty(), "{}", c.stderr);
    assert_eq!(c.status, Some(0));
    let c = child("clean", "detect_leaks=1");
    assert!(
        !c.stderr.contains("BUG: KASAN: use-after-free") && !c.stderr.contains("out-of-bounds"),
        "{}",
        c.stderr
    );
}
