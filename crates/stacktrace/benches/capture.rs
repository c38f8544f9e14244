//! Per-capture cost of each backend at depths 8, 32 and 128, next to a plain copy of the same
//! number of words (the physical limit of a shadow-stack copy). Backend authors add a
//! function each and register it in `criterion_group!` below.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;

mod flat_depot;

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
            at_depth(d, &mut || b.iter(|| stacktrace::fp::capture(black_box(&mut buf))))
        });
        g.bench_with_input(BenchmarkId::new("libgcc", depth), &depth, |b, &d| {
            at_depth(d, &mut || b.iter(|| stacktrace::libgcc::capture(black_box(&mut buf))))
        });
        let src: Vec<usize> = (0..depth).collect();
        g.bench_with_input(BenchmarkId::new("copy", depth), &depth, |b, _| {
            b.iter(|| buf.copy_from_slice(black_box(&src)))
        });
    }
    g.finish();
}

/// The DWARF unwinder: warm rule cache at every depth, and every frame a cache miss at 32.
fn dwarf_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("capture");
    for depth in DEPTHS {
        let mut buf = vec![0usize; depth];
        g.bench_with_input(BenchmarkId::new("dwarf", depth), &depth, |b, &d| {
            at_depth(d, &mut || {
                assert_eq!(stacktrace::dwarf::capture(&mut buf), Ok(d), "not {d} frames deep");
                b.iter(|| stacktrace::dwarf::capture(black_box(&mut buf)))
            })
        });
    }
    let mut buf = vec![0usize; 32];
    g.bench_function(BenchmarkId::new("dwarf-cold", 32), |b| {
        at_depth(32, &mut || {
            b.iter_batched(
                stacktrace::dwarf::flush_cache,
                |()| stacktrace::dwarf::capture(black_box(&mut buf)),
                criterion::BatchSize::PerIteration,
            )
        })
    });
    g.finish();
}

/// Three frames that are new at every capture (an allocator wrapper chain).
#[inline(never)]
fn churn_a<R>(f: &mut dyn FnMut() -> R) -> R {
    black_box(churn_b(f))
}

#[inline(never)]
fn churn_b<R>(f: &mut dyn FnMut() -> R) -> R {
    black_box(churn_c(f))
}

#[inline(never)]
fn churn_c<R>(f: &mut dyn FnMut() -> R) -> R {
    black_box(f())
}

#[inline(never)]
fn leaf_call(x: usize) -> usize {
    black_box(x) ^ 1
}

/// The software shadow stack against FP, libgcc and a plain copy of as many words, steady
/// and with 3 frames changing between captures; the patch policy against patching every
/// frame; the cost of fresh frames (walk + patch + trampolined return); a call-heavy loop.
fn softshadow_benches(c: &mut Criterion) {
    use stacktrace::softshadow;
    if softshadow::capture(&mut [0; 4]).is_err() {
        return; // not on this target
    }
    type Capture = fn(&mut [usize]) -> Result<usize, stacktrace::Unsupported>;
    let backends: [(&str, Capture); 3] = [
        ("shadow", softshadow::capture),
        ("fp", stacktrace::fp::capture),
        ("libgcc", stacktrace::libgcc::capture),
    ];
    let mut g = c.benchmark_group("softshadow");
    for depth in [8, 32, 128, 512] {
        let mut buf = vec![0usize; depth];
        for (name, f) in backends {
            g.bench_with_input(
                BenchmarkId::new(format!("{name}/steady"), depth),
                &depth,
                |b, &d| {
                    at_depth(d, &mut || {
                        assert_eq!(f(&mut buf), Ok(d), "{name}: not {d} frames deep");
                        b.iter(|| f(black_box(&mut buf)))
                    })
                },
            );
            g.bench_with_input(
                BenchmarkId::new(format!("{name}/churn3"), depth),
                &depth,
                |b, &d| at_depth(d, &mut || b.iter(|| churn_a(&mut || f(black_box(&mut buf))))),
            );
        }
        softshadow::set_min_unpatched(0);
        g.bench_with_input(BenchmarkId::new("shadow-patch-all/churn3", depth), &depth, |b, &d| {
            at_depth(d, &mut || {
                b.iter(|| churn_a(&mut || softshadow::capture(black_box(&mut buf))))
            })
        });
        softshadow::set_min_unpatched(softshadow::policy::DEFAULT_MIN_UNPATCHED);
        let src: Vec<usize> = (0..depth).collect();
        g.bench_with_input(BenchmarkId::new("copy", depth), &depth, |b, _| {
            b.iter(|| buf.copy_from_slice(black_box(&src)))
        });
    }
    // Fresh frames: 64 new frames per capture, all patched then returned through.
    let mut buf = vec![0usize; 96];
    softshadow::set_min_unpatched(0);
    for (name, f) in [backends[0], backends[1]] {
        g.bench_function(format!("{name}/fresh-64"), |b| {
            at_depth(4, &mut || b.iter(|| at_depth(64, &mut || f(black_box(&mut buf)))))
        });
    }
    softshadow::set_min_unpatched(softshadow::policy::DEFAULT_MIN_UNPATCHED);
    // 1000 calls, no capture: before and after captures patched the frames above.
    g.bench_function("calls-1000/never-captured", |b| {
        b.iter(|| (0..1000).fold(0, |a, i| a ^ leaf_call(i)))
    });
    at_depth(8, &mut || {
        softshadow::capture(&mut buf).unwrap();
        g.bench_function("calls-1000/below-patched-frames", |b| {
            b.iter(|| (0..1000).fold(0, |a, i| a ^ leaf_call(i)))
        });
    });
    g.finish();
}

/// A capture then a save into the buffer given; the handle.
type SaveFn = dyn FnMut(&mut [usize]) -> u32;

/// Capture + save, what the detector does per allocation, at depths 128 and 200 with 3-4
/// frames changing per capture (`churn3`: three wrapper frames and the closure) and steady:
/// the software shadow stack's incremental `capture_and_save` against a capture then a save
/// in the flat depot of before (`flat_depot`, the baseline the issue names) and in the trie
/// depot whole (`trie`), and the frame-pointer walk with the flat depot.
fn capture_save_benches(c: &mut Criterion) {
    use stacktrace::softshadow;
    if softshadow::capture(&mut [0; 4]).is_err() {
        return; // not on this target
    }
    static FLAT: flat_depot::Depot = flat_depot::Depot::new(64 << 20);
    let mut g = c.benchmark_group("capture_save");
    for depth in [128, 200] {
        // Room for the whole stack (the harness's frames included): never truncated.
        let mut buf = vec![0usize; 256];
        let cases: [(&str, &mut SaveFn); 4] = [
            ("shadow+incremental", &mut |b| {
                softshadow::capture_and_save(b).map_or(0, |s| s.handle.to_raw())
            }),
            ("shadow+flat", &mut |b| {
                let n = softshadow::capture(b).unwrap_or(0);
                FLAT.save(&b[..n]).to_raw()
            }),
            ("shadow+trie", &mut |b| {
                let n = softshadow::capture(b).unwrap_or(0);
                stackdepot::save(&b[..n]).to_raw()
            }),
            ("fp+flat", &mut |b| {
                let n = stacktrace::fp::capture(b).unwrap_or(0);
                FLAT.save(&b[..n]).to_raw()
            }),
        ];
        for (name, f) in cases {
            g.bench_with_input(
                BenchmarkId::new(format!("{name}/churn3"), depth),
                &depth,
                |b, &d| at_depth(d - 8, &mut || b.iter(|| churn_a(&mut || f(black_box(&mut buf))))),
            );
            g.bench_with_input(
                BenchmarkId::new(format!("{name}/steady"), depth),
                &depth,
                |b, &d| at_depth(d - 8, &mut || b.iter(|| f(black_box(&mut buf)))),
            );
        }
    }
    g.finish();
}

criterion_group!(
    benches,
    baseline_benches,
    dwarf_benches,
    softshadow_benches,
    capture_save_benches
);
criterion_main!(benches);
