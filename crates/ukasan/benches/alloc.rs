//! Cost of one malloc+free pair (64 bytes) through the system allocator and through ukasan
//! with each stack backend, in one run:
//!
//! ```text
//! cargo bench -p ukasan --bench alloc
//! ```
//!
//! `storm` compares one thread doing 2N malloc+free pairs of mixed sizes with two threads doing
//! N each (stacks off, default quarantine): the ratio of their times is the scaling of the
//! detector's heap (2.0 is perfect on two idle cores).
//!
//! `shadow` and `dwarf` fall back to the frame-pointer walk while their backends answer
//! `NotCompiled`; the bench prints which backend actually captured.

use criterion::{criterion_group, criterion_main, Criterion};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use ukasan::Ukasan;

static OFF: Ukasan<System> = Ukasan::with_options(System, "stacks=off");
static FP: Ukasan<System> = Ukasan::with_options(System, "stacks=fp");
static SHADOW: Ukasan<System> = Ukasan::with_options(System, "stacks=shadow");
static DWARF: Ukasan<System> = Ukasan::with_options(System, "stacks=dwarf");
static LIBGCC: Ukasan<System> = Ukasan::with_options(System, "stacks=libgcc");
static OFF_NO_Q: Ukasan<System> = Ukasan::with_options(System, "stacks=off:quarantine_size_mb=0");
static STORM: Ukasan<System> = Ukasan::with_options(System, "stacks=off");
static NO_DEPOT: Ukasan<System> = Ukasan::with_options(System, "stacks=fp:depot=0");

#[inline(never)]
fn pair<A: GlobalAlloc>(a: &A, l: Layout) {
    // SAFETY: a valid non-zero layout, freed with the same layout.
    unsafe {
        let p = a.alloc(l);
        black_box(p);
        a.dealloc(p, l);
    }
}

fn backend_note() {
    let mut buf = [0usize; 64];
    for (name, r) in [
        ("shadow", stacktrace::capture_with(stacktrace::Backend::Shadow, &mut buf)),
        ("dwarf", stacktrace::capture_with(stacktrace::Backend::Dwarf, &mut buf)),
        ("fp", stacktrace::capture_with(stacktrace::Backend::FramePointer, &mut buf)),
    ] {
        match r {
            Ok(n) => eprintln!("note: backend {name}: {n} frames here"),
            Err(e) => eprintln!("note: backend {name}: {e} (ukasan falls back to fp where noted)"),
        }
    }
}

fn bench(c: &mut Criterion) {
    backend_note();
    let l = Layout::from_size_align(64, 8).unwrap();
    let mut g = c.benchmark_group("malloc_free_64");
    g.bench_function("system", |b| b.iter(|| pair(&System, l)));
    g.bench_function("ukasan_stacks_off", |b| b.iter(|| pair(&OFF, l)));
    g.bench_function("ukasan_stacks_off_no_quarantine", |b| b.iter(|| pair(&OFF_NO_Q, l)));
    g.bench_function("ukasan_fp", |b| b.iter(|| pair(&FP, l)));
    g.bench_function("ukasan_fp_no_depot", |b| b.iter(|| pair(&NO_DEPOT, l)));
    g.bench_function("ukasan_shadow", |b| b.iter(|| pair(&SHADOW, l)));
    g.bench_function("ukasan_dwarf", |b| b.iter(|| pair(&DWARF, l)));
    g.bench_function("ukasan_libgcc", |b| b.iter(|| pair(&LIBGCC, l)));
    g.finish();

    let mut g = c.benchmark_group("storm");
    const N: usize = 20_000;
    g.bench_function("1_thread_2n", |b| b.iter(|| storm(2 * N, 0)));
    g.bench_function("2_threads_n_each", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                let t = s.spawn(|| storm(N, 1));
                storm(N, 2);
                t.join().unwrap();
            })
        })
    });
    g.finish();
}

/// `n` pairs of 16 to 1040 bytes, each freed 32 allocations after it was made.
fn storm(n: usize, seed: usize) {
    let mut ring = [(std::ptr::null_mut::<u8>(), Layout::new::<u8>()); 32];
    for i in 0..n {
        let l = Layout::from_size_align(16 + ((i * 7919 + seed) % 64) * 16, 8).unwrap();
        let slot = &mut ring[i % 32];
        // SAFETY: valid layouts; each pointer freed once with its own layout.
        unsafe {
            if !slot.0.is_null() {
                STORM.dealloc(slot.0, slot.1);
            }
            *slot = (black_box(STORM.alloc(l)), l);
        }
    }
    for (p, l) in ring {
        if !p.is_null() {
            // SAFETY: as above.
            unsafe { STORM.dealloc(p, l) };
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
        .sample_size(30);
    targets = bench
}
criterion_main!(benches);
