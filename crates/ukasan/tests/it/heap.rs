//! The detector's heap against a model: random malloc/calloc/realloc/memalign/free sequences
//! on 8 threads, remote frees included; fork during an allocation storm; a million live
//! objects in the leak scan; the quarantine budget under a free storm.

use crate::child::child;
use std::alloc::GlobalAlloc;
use std::sync::Mutex;
use ukasan::{Backing, Expect, Family, Runtime};

/// A backing the heap must never call for objects it serves (only raw chunks made inside the
/// runtime use it).
struct Sys;

// SAFETY: forwards to the system allocator with a valid layout.
unsafe impl Backing for Sys {
    fn alloc(&self, size: usize, align: usize) -> *mut u8 {
        // SAFETY: the runtime passes a non-zero size and a power-of-two alignment.
        unsafe {
            std::alloc::System.alloc(std::alloc::Layout::from_size_align_unchecked(size, align))
        }
    }
    unsafe fn dealloc(&self, p: *mut u8, size: usize, align: usize) {
        // SAFETY: forwarded from the contract.
        unsafe {
            std::alloc::System
                .dealloc(p, std::alloc::Layout::from_size_align_unchecked(size, align))
        }
    }
}

static MODEL: Runtime = Runtime::new("stacks=fp:quarantine_size_mb=8", false);

/// xorshift64*: a reproducible sequence per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy, Debug)]
struct Obj {
    p: usize,
    size: usize,
    align: usize,
    byte: u8,
}

fn size(r: &mut Rng) -> usize {
    match r.below(100) {
        0..60 => r.below(128) as usize,
        60..90 => r.below(4096) as usize,
        90..98 => r.below(200_000) as usize,
        _ => r.below(1 << 20) as usize,
    }
}

fn align(r: &mut Rng) -> usize {
    match r.below(20) {
        0 => 1 << (5 + r.below(8)), // 32 .. 4096
        1 => 8192,
        _ => 16,
    }
}

fn fill(o: &Obj) {
    // SAFETY: a live object of `size` bytes.
    unsafe { std::ptr::write_bytes(o.p as *mut u8, o.byte, o.size) };
}

fn check(o: &Obj) {
    // SAFETY: a live object of `size` bytes.
    let s = unsafe { std::slice::from_raw_parts(o.p as *const u8, o.size) };
    assert!(s.iter().all(|&b| b == o.byte), "object {o:?} changed");
    assert_eq!(o.p % o.align.max(16), 0, "alignment of {o:?}");
    // SAFETY: a pointer of ours.
    assert_eq!(unsafe { MODEL.usable_size(o.p as *mut u8) }, o.size, "usable size of {o:?}");
}

const MALLOC: Expect = Expect { family: Family::Malloc, layout: None };

fn alloc(r: &mut Rng) -> Obj {
    let regs = stacktrace::caller_regs!();
    let (size, align) = (size(r), align(r));
    let zero = r.below(4) == 0;
    let p = MODEL.alloc(&Sys, size, align, Family::Malloc, zero, &regs) as usize;
    assert_ne!(p, 0, "out of memory for {size} bytes aligned to {align}");
    if zero {
        // SAFETY: a fresh object of `size` bytes.
        let s = unsafe { std::slice::from_raw_parts(p as *const u8, size) };
        assert!(s.iter().all(|&b| b == 0), "calloc of {size} bytes not zeroed");
    }
    let o = Obj { p, size, align, byte: r.next() as u8 };
    fill(&o);
    o
}

fn free(o: Obj) {
    check(&o);
    let regs = stacktrace::caller_regs!();
    // SAFETY: a live object of ours, freed once.
    unsafe { MODEL.free(&Sys, o.p as *mut u8, MALLOC, &regs) };
}

fn realloc(r: &mut Rng, o: Obj) -> Obj {
    check(&o);
    let regs = stacktrace::caller_regs!();
    let n = size(r);
    // SAFETY: a live object of ours.
    let q = unsafe { MODEL.realloc(&Sys, o.p as *mut u8, n, 16, MALLOC, &regs) } as usize;
    assert_ne!(q, 0);
    let kept = Obj { p: q, size: o.size.min(n), align: 16, byte: o.byte };
    // The old bytes moved (or stayed) with the object.
    // SAFETY: the new object holds at least `kept.size` bytes.
    let s = unsafe { std::slice::from_raw_parts(q as *const u8, kept.size) };
    assert!(s.iter().all(|&b| b == o.byte), "realloc lost bytes of {o:?}");
    let o = Obj { p: q, size: n, align: 16, byte: r.next() as u8 };
    fill(&o);
    o
}

#[test]
fn random_sequences_on_8_threads_match_the_model() {
    let shared: Mutex<Vec<Obj>> = Mutex::new(Vec::new());
    let live: Mutex<Vec<Obj>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let (shared, live) = (&shared, &live);
            s.spawn(move || {
                let mut r = Rng(0x9e37_79b9_7f4a_7c15 ^ ((t + 1) * 0x1234_5678_9abc_def1));
                let mut mine: Vec<Obj> = Vec::new();
                for _ in 0..20_000 {
                    match r.below(10) {
                        0..4 => mine.push(alloc(&mut r)),
                        4..6 if !mine.is_empty() => {
                            let i = r.below(mine.len() as u64) as usize;
                            free(mine.swap_remove(i));
                        }
                        6 if !mine.is_empty() => {
                            let i = r.below(mine.len() as u64) as usize;
                            mine[i] = realloc(&mut r, mine[i]);
                        }
                        // Remote frees: objects handed to whichever thread comes next.
                        7 if !mine.is_empty() => {
                            let i = r.below(mine.len() as u64) as usize;
                            shared.lock().unwrap().push(mine.swap_remove(i));
                        }
                        8 => {
                            let got = shared.lock().unwrap().pop();
                            if let Some(o) = got {
                                free(o);
                            }
                        }
                        _ => {
                            if let Some(o) = mine.last() {
                                check(o);
                            }
                        }
                    }
                    if mine.len() > 300 {
                        free(mine.swap_remove(0));
                    }
                }
                live.lock().unwrap().extend(mine);
            });
        }
    });
    let mut all = live.into_inner().unwrap();
    all.extend(shared.into_inner().unwrap());
    all.sort_by_key(|o| o.p);
    for w in all.windows(2) {
        assert!(w[0].p + w[0].size <= w[1].p, "live objects overlap: {:?} {:?}", w[0], w[1]);
    }
    for o in all {
        free(o);
    }
    assert_eq!(MODEL.reports(), 0, "the model saw no bug, neither may the detector");
}

#[test]
fn exiting_threads_hand_their_caches_to_later_ones() {
    let before = ukasan::generic::heap::HEAP.caches_mapped();
    for i in 0..50 {
        std::thread::spawn(move || std::hint::black_box(vec![i as u8; 100]).len()).join().unwrap();
    }
    // Other tests of this binary start threads meanwhile: a little slack, far below 50.
    let grown = ukasan::generic::heap::HEAP.caches_mapped() - before;
    assert!(grown < 20, "{grown} caches mapped for 50 threads one after the other");
}

#[test]
fn fork_during_an_allocation_storm() {
    let r = child("fork-storm", "");
    assert_eq!(r.status, Some(0), "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("children=20 ok=20"), "{}", r.stdout);
    assert!(!r.stderr.contains("BUG:"), "{}", r.stderr);
}

#[test]
fn a_million_live_objects_are_scanned_for_leaks() {
    let r = child("million-leaks", "detect_leaks=1:stacks=fp");
    assert!(
        r.stderr.contains("Leak of 32000000 byte(s) in 1000000 object(s)"),
        "{}",
        &r.stderr[..r.stderr.len().min(4000)]
    );
    // The half that stays reachable from a global is not reported.
    assert!(
        r.stderr.contains(
            "SUMMARY: ukasan: 32000000 byte(s) leaked in 1000000 allocation(s) from 1 stack(s)"
        ),
        "{}",
        &r.stderr[..r.stderr.len().min(4000)]
    );
}

#[test]
fn the_quarantine_budget_holds_under_a_free_storm() {
    let r = child("free-storm", "quarantine_size_mb=8");
    assert_eq!(r.status, Some(0), "{}\n{}", r.stdout, r.stderr);
    let rss: usize = r
        .stdout
        .split("rss_growth_mib=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("rss printed");
    // 2 GiB freed; the quarantine keeps 8 MiB plus one batch per thread (4 x 128 KiB), and
    // the heap's free slots and metadata come on top.
    assert!(rss < 64, "RSS grew by {rss} MiB:\n{}", r.stdout);
}

/// A program that frees a phase's worth of large objects keeps little of them resident:
/// what the quarantine lets go goes to the central free lists, and their pages back to the
/// system (without that, all 96 MiB stayed).
#[test]
fn large_free_slots_give_their_pages_back() {
    let r = child("phase-change", "quarantine_size_mb=8:stacks=off");
    assert_eq!(r.status, Some(0), "{}\n{}", r.stdout, r.stderr);
    let field = |k: &str| -> usize {
        r.stdout
            .split(&format!("{k}="))
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{k} printed:\n{}", r.stdout))
    };
    let (live, after) = (field("rss_live_mib"), field("rss_after_mib"));
    assert!(live >= 90, "the objects were resident while live: {live} MiB\n{}", r.stdout);
    assert!(after < 40, "RSS after the frees: {after} MiB above the start\n{}", r.stdout);
    assert!(field("given_back_mib") >= 60, "{}", r.stdout);
}

/// `phase-change`: 1600 objects of 60 KiB live at once, written, then freed; prints the RSS
/// growth while they lived and after, and what the heap gave back. The objects of the next
/// phase are small, so nothing reuses the large slots.
pub(crate) fn phase_change() {
    let before = rss_mib();
    let objs: Vec<Vec<u8>> = (0..1600).map(|i| vec![i as u8; 60 << 10]).collect();
    let live = rss_mib().saturating_sub(before);
    drop(std::hint::black_box(objs));
    // The next phase: small objects push the large ones out of the quarantine.
    for i in 0..400_000usize {
        std::hint::black_box(vec![i as u8; 40]);
    }
    let after = rss_mib().saturating_sub(before);
    let given = ukasan::generic::heap::HEAP.decommitted() >> 20;
    println!("rss_live_mib={live} rss_after_mib={after} given_back_mib={given}");
}

/// `fork-storm`: 4 threads allocate and free while the main thread forks 20 children that
/// allocate, free and exit through the exit checks.
pub(crate) fn fork_storm() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    static STOP: AtomicBool = AtomicBool::new(false);
    let workers: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut ring: Vec<Vec<u8>> = (0..256).map(|_| Vec::new()).collect();
                let mut i = 0usize;
                while !STOP.load(Relaxed) {
                    ring[i % 256] = vec![t as u8; 8 + (i * 37) % 3000];
                    i += 1;
                }
            })
        })
        .collect();
    let mut ok = 0;
    for _ in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(5));
        // SAFETY: fork in a multi-threaded process; the child only allocates and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let v: Vec<Box<[u8; 100]>> = (0..10_000).map(|i| Box::new([i as u8; 100])).collect();
            let sum: usize = v.iter().map(|b| b[0] as usize).sum();
            drop(v);
            // SAFETY: leaves the child through `exit`, running the detector's exit checks.
            unsafe { libc::exit(if sum > 0 { 0 } else { 3 }) };
        }
        let mut status = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            // SAFETY: waits for our own child.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                    ok += 1;
                }
                break;
            }
            if std::time::Instant::now() > deadline {
                // SAFETY: our own child, hung.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                println!("child {pid} hung");
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    STOP.store(true, Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    println!("children=20 ok={ok}");
}

// Separate 32-byte objects (boxes), like the leaked ones.
#[allow(clippy::vec_box)]
static REACHABLE: Mutex<Vec<Box<[u8; 32]>>> = Mutex::new(Vec::new());
static MASKED: Mutex<Vec<usize>> = Mutex::new(Vec::new());

/// `million-leaks`: a million 32-byte objects only reachable through masked pointers (leaks)
/// and a million reachable from a global.
pub(crate) fn million_leaks() {
    #[inline(never)]
    fn leak_site() -> usize {
        Box::into_raw(Box::new([7u8; 32])) as usize ^ usize::MAX
    }
    MASKED.lock().unwrap().extend((0..1_000_000).map(|_| leak_site()));
    REACHABLE.lock().unwrap().extend((0..1_000_000).map(|_| Box::new([1u8; 32])));
}

fn rss_mib() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    (pages * 4096) >> 20
}

/// `free-storm`: 4 threads free 100 000 small objects each, then 2 GiB in objects of 1 to
/// 8 KiB; prints the RSS growth.
pub(crate) fn free_storm() {
    let before = rss_mib();
    std::thread::scope(|s| {
        for t in 0..4usize {
            s.spawn(move || {
                // Small objects first: the FIFO fills with batches of few bytes, which the
                // big ones after them must push out by bytes, not by count.
                for i in 0..100_000usize {
                    std::hint::black_box(vec![i as u8; 24]);
                }
                let mut freed = 0usize;
                let mut i = t;
                while freed < 512 << 20 {
                    let n = 1024 + (i * 977) % 7168;
                    let v = vec![t as u8; n];
                    freed += std::hint::black_box(v).len();
                    i += 1;
                }
            });
        }
    });
    println!("rss_growth_mib={}", rss_mib().saturating_sub(before));
}
