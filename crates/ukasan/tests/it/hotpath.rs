//! The hot path never calls the backing allocator: objects come from the detector's own heap.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use ukasan::Ukasan;

/// Counts calls and remembers sizes; forwards to System.
struct Counting {
    allocs: AtomicUsize,
    frees: AtomicUsize,
}

// SAFETY: forwards to System.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        self.allocs.fetch_add(1, Relaxed);
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
    Counting { allocs: AtomicUsize::new(0), frees: AtomicUsize::new(0) }
}

static NO_QUARANTINE: Ukasan<Counting> =
    Ukasan::with_options(counting(), "stacks=fp:quarantine_size_mb=0");
static QUARANTINE: Ukasan<Counting> =
    Ukasan::with_options(counting(), "stacks=fp:quarantine_size_mb=64");

fn pairs(u: &'static Ukasan<Counting>, n: usize, size: usize) -> Vec<usize> {
    let l = Layout::from_size_align(size, 8).unwrap();
    let mut seen = Vec::with_capacity(n);
    for _ in 0..n {
        // SAFETY: a valid layout; freed with the same layout.
        unsafe {
            let p = u.alloc(l);
            assert!(!p.is_null());
            std::ptr::write_bytes(p, 1, size);
            u.dealloc(p, l);
            seen.push(p as usize);
        }
    }
    seen
}

#[test]
fn malloc_free_never_calls_the_backing_allocator() {
    let b = NO_QUARANTINE.backing();
    pairs(&NO_QUARANTINE, 10, 64); // warm up: init, depot pools, stack bounds
    let (a0, f0) = (b.allocs.load(Relaxed), b.frees.load(Relaxed));
    let seen = pairs(&NO_QUARANTINE, 1000, 64);
    // Large objects are mapped on their own, not taken from the backing allocator either.
    pairs(&NO_QUARANTINE, 10, 1 << 20);
    assert_eq!(b.allocs.load(Relaxed) - a0, 0);
    assert_eq!(b.frees.load(Relaxed) - f0, 0);
    assert_eq!(NO_QUARANTINE.runtime().reports(), 0);
    // Without a quarantine, a freed slot is the next one handed out.
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "slots are reused at once");
}

#[test]
fn quarantine_holds_freed_objects_without_allocating() {
    let b = QUARANTINE.backing();
    pairs(&QUARANTINE, 10, 64);
    let (a0, f0) = (b.allocs.load(Relaxed), b.frees.load(Relaxed));
    let mut seen = pairs(&QUARANTINE, 1000, 64);
    assert_eq!(b.allocs.load(Relaxed) - a0, 0);
    assert_eq!(b.frees.load(Relaxed) - f0, 0);
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 1000, "no freed slot is reused while the quarantine holds it");
    assert_eq!(QUARANTINE.runtime().reports(), 0);
}
