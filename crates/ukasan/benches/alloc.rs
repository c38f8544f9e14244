//! Cost of one malloc+free pair (64 bytes) through the system allocator and through ukasan
//! with each stack backend, in one run:
//!
//! ```text
//! cargo bench -p ukasan --bench alloc
//! ```
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
    g.bench_function("ukasan_fp", |b| b.iter(|| pair(&FP, l)));
    g.bench_function("ukasan_fp_no_depot", |b| b.iter(|| pair(&NO_DEPOT, l)));
    g.bench_function("ukasan_shadow", |b| b.iter(|| pair(&SHADOW, l)));
    g.bench_function("ukasan_dwarf", |b| b.iter(|| pair(&DWARF, l)));
    g.bench_function("ukasan_libgcc", |b| b.iter(|| pair(&LIBGCC, l)));
    g.finish();
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
