//! The bench's Rust workload (`crates/cli/src/workload/body.rs`, what `ukasan-workload` runs
//! under `LD_PRELOAD`) with ukasan as its global allocator: what `ukasan bench --runner ...
//! --workload-exe ...` times under qemu-user for aarch64, where the bench has no preload
//! library (`aarch64/bench.sh`). `UKASAN_WORKLOAD_PLAIN=1` in the environment makes it the
//! plain program: every call goes straight to the system allocator (one predictable branch
//! per call), so both flavors are the same binary.
//!
//! Usage: `workload [--size N]`; ukasan's options from `UKASAN_OPTIONS`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

static UKASAN: ukasan::Ukasan<System> = ukasan::Ukasan::new(System);

/// 0: not read yet; 1: ukasan; 2: plain.
static PLAIN: AtomicU8 = AtomicU8::new(0);

fn plain() -> bool {
    // Relaxed: every thread computes the same answer.
    match PLAIN.load(Ordering::Relaxed) {
        0 => {
            // SAFETY: a NUL-terminated name; getenv allocates nothing.
            let set = !unsafe { libc::getenv(c"UKASAN_WORKLOAD_PLAIN".as_ptr()) }.is_null();
            PLAIN.store(if set { 2 } else { 1 }, Ordering::Relaxed);
            set
        }
        v => v == 2,
    }
}

struct Switch;

// SAFETY: forwards every call to one allocator, the same one for a block's whole life (the
// choice is made once, before the first allocation).
unsafe impl GlobalAlloc for Switch {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe {
            if plain() {
                System.alloc(l)
            } else {
                UKASAN.alloc(l)
            }
        }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe {
            if plain() {
                System.alloc_zeroed(l)
            } else {
                UKASAN.alloc_zeroed(l)
            }
        }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded.
        unsafe {
            if plain() {
                System.dealloc(p, l)
            } else {
                UKASAN.dealloc(p, l)
            }
        }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe {
            if plain() {
                System.realloc(p, l, n)
            } else {
                UKASAN.realloc(p, l, n)
            }
        }
    }
}

#[global_allocator]
static GLOBAL: Switch = Switch;

include!("../../cli/src/workload/body.rs");
