//! `ukasan-demo-rust`: the Rust case of the bundled demo. A Rust program with the detector as
//! its global allocator (one line, stable Rust) frees memory with a `Layout` other than the one
//! it was allocated with: undefined behavior that no malloc-level tool can see, since `free`
//! takes no size.

use std::alloc::{Layout, System};
use std::hint::black_box;

#[global_allocator]
static ALLOC: ukasan::Ukasan<System> = ukasan::Ukasan::new(System);

#[inline(never)]
fn make_record() -> *mut u8 {
    let layout = Layout::from_size_align(48, 8).expect("valid layout");
    // SAFETY: the layout has a non-zero size.
    unsafe { std::alloc::alloc(layout) }
}

#[inline(never)]
fn drop_record(p: *mut u8) {
    // BUG: allocated as 48 bytes, freed as 64 (what a wrong `Vec::from_raw_parts` capacity does).
    let wrong = Layout::from_size_align(64, 8).expect("valid layout");
    // SAFETY: none: this is the bug the demo shows; the detector intercepts it before the
    // backing allocator sees the mismatched layout.
    unsafe { std::alloc::dealloc(black_box(p), wrong) }
}

fn main() {
    let p = make_record();
    assert!(!p.is_null());
    drop_record(p);
}
