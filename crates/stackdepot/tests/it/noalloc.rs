//! save and fetch never allocate: a counting global allocator, armed per thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use stackdepot::Depot;

struct Counting;

std::thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

fn note() {
    // try_with: the allocator may run while thread-locals are torn down.
    if ARMED.try_with(Cell::get).unwrap_or(false) {
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
    }
}

// SAFETY: forwards every call to `System` unchanged; counting touches only const-initialized
// thread-locals without destructors (no allocation, no re-entry).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note();
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Allocations made by this thread while running `f`.
fn allocations_in(f: impl FnOnce()) -> usize {
    COUNT.with(|c| c.set(0));
    ARMED.with(|a| a.set(true));
    f();
    ARMED.with(|a| a.set(false));
    COUNT.with(Cell::get)
}

#[test]
fn the_counter_sees_allocations() {
    let n = allocations_in(|| drop(std::hint::black_box(vec![1u8; 10])));
    assert_eq!(n, 2, "one alloc, one dealloc");
}

#[test]
fn save_fetch_stats_never_allocate() {
    // Small budget so the run also covers mapping several pools and running full.
    static D: Depot = Depot::new(2 << 20);
    let mut t = [0usize; 64];
    let mut sum = 0;
    let n = allocations_in(|| {
        for i in 0..20_000 {
            t[0] = i;
            t[i % 64] ^= i;
            let h = D.save(&t[..(i % 65)]);
            let mut buf = [0; 64];
            sum += D.fetch(h, &mut buf).map_or(0, |f| f.len());
            sum += D.save(&t[..(i % 65)]).to_raw() as usize & 1;
            let mut suffixes = [stackdepot::Handle::NONE; 64];
            let whole = D.save_with_suffixes(&t[..(i % 65)], &mut suffixes);
            let k = i % 3;
            if k < i % 65 && !suffixes[k].is_none() {
                sum += (D.save_on(suffixes[k], i % 65 - k, &t[..k]) == whole) as usize;
            }
        }
        sum += D.stats().unique_traces as usize;
    });
    assert_eq!(n, 0);
    let s = D.stats();
    assert!(s.dropped_full > 0, "the run should have filled the depot: {s:?}");
    assert!(sum > 0);
}
