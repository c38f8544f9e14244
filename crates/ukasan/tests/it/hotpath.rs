//! The hot path allocates nothing from the backing allocator beyond the chunk itself.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use ukasan::Ukasan;

/// Counts calls and remembers sizes; forwards to System.
struct Counting {
    allocs: AtomicUsize,
    frees: AtomicUsize,
    other_sizes: AtomicUsize,
    expect: AtomicUsize,
}

// SAFETY: forwards to System.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        self.allocs.fetch_add(1, Relaxed);
        let e = self.expect.load(Relaxed);
        if e != 0 && l.size() != e {
            self.other_sizes.fetch_add(1, Relaxed);
        }
        // SAFETY: forwarded.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        self.frees.fetch_add(1, Relaxed);
        // SAFETY: forwarded.
        unsafe { System.dealloc(p, l) }
    }
}

const fn counting() -> Counting {
    Counting {
        allocs: AtomicUsize::new(0),
        frees: AtomicUsize::new(0),
        other_sizes: AtomicUsize::new(0),
        expect: AtomicUsize::new(0),
    }
}

static NO_QUARANTINE: Ukasan<Counting> =
    Ukasan::with_options(counting(), "stacks=fp:quarantine_size_mb=0");
static QUARANTINE: Ukasan<Counting> =
    Ukasan::with_options(counting(), "stacks=fp:quarantine_size_mb=64");

fn pairs(u: &'static Ukasan<Counting>, n: usize) {
    let l = Layout::from_size_align(64, 8).unwrap();
    for _ in 0..n {
        // SAFETY: a valid layout; freed with the same layout.
        unsafe {
            let p = u.alloc(l);
            assert!(!p.is_null());
            std::ptr::write_bytes(p, 1, 64);
            u.dealloc(p, l);
        }
    }
}

fn chunk_size() -> usize {
    ukasan::chunk::geometry(64, 8, 16).unwrap().total
}

#[test]
fn malloc_free_with_fp_stacks_only_allocates_chunks() {
    let b = NO_QUARANTINE.backing();
    pairs(&NO_QUARANTINE, 10); // warm up: init, depot pools, stack bounds
    b.expect.store(chunk_size(), Relaxed);
    let (a0, f0) = (b.allocs.load(Relaxed), b.frees.load(Relaxed));
    pairs(&NO_QUARANTINE, 1000);
    assert_eq!(b.allocs.load(Relaxed) - a0, 1000);
    assert_eq!(b.frees.load(Relaxed) - f0, 1000);
    assert_eq!(b.other_sizes.load(Relaxed), 0);
    assert_eq!(NO_QUARANTINE.runtime().reports(), 0);
}

#[test]
fn quarantine_holds_freed_chunks_without_allocating() {
    let b = QUARANTINE.backing();
    pairs(&QUARANTINE, 10);
    b.expect.store(chunk_size(), Relaxed);
    let (a0, f0) = (b.allocs.load(Relaxed), b.frees.load(Relaxed));
    pairs(&QUARANTINE, 1000);
    assert_eq!(b.allocs.load(Relaxed) - a0, 1000);
    assert_eq!(b.frees.load(Relaxed) - f0, 0, "all freed chunks stay quarantined");
    assert_eq!(b.other_sizes.load(Relaxed), 0);
}
