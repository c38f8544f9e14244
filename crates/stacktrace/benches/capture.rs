//! Per-capture cost of each backend at depths 8, 32 and 128, next to a plain copy of the same
//! number of words (the physical limit of a shadow-stack copy). Backend authors add a
//! function each and register it in `criterion_group!` below.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;

const DEPTHS: [usize; 3] = [8, 32, 128];

/// Runs `f` with `depth` frames of recursion below the caller (each frame keeps a frame
/// record and cannot be inlined), so captures see at least `depth` frames.
#[inline(never)]
fn at_depth<R>(depth: usize, f: &mut dyn FnMut() -> R) -> R {
    if depth == 0 {
        return f();
    }
    black_box(at_depth(black_box(depth - 1), f))
}

fn baseline_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("capture");
    for depth in DEPTHS {
        let mut buf = vec![0usize; depth];
        g.bench_with_input(BenchmarkId::new("fp", depth), &depth, |b, &d| {
            at_depth(d, &mut || {
                b.iter(|| stacktrace::fp::capture(black_box(&mut buf)))
            })
        });
        g.bench_with_input(BenchmarkId::new("libgcc", depth), &depth, |b, &d| {
            at_depth(d, &mut || {
                b.iter(|| stacktrace::libgcc::capture(black_box(&mut buf)))
            })
        });
        let src: Vec<usize> = (0..depth).collect();
        g.bench_with_input(BenchmarkId::new("copy", depth), &depth, |b, _| {
            b.iter(|| buf.copy_from_slice(black_box(&src)))
        });
    }
    g.finish();
}

criterion_group!(benches, baseline_benches);
criterion_main!(benches);
