//! Warm symbolization of a 20-frame stack (the bound: < 200 ms after the first load).
//!
//! `cargo bench -p ukasan-symbolize --bench symbolize`: prints the cold first load once,
//! then criterion times the warm case.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use symbolize::Symbolizer;

const FRAMES: usize = 20;

#[inline(never)]
fn deep(n: usize, buf: &mut [usize; FRAMES]) -> usize {
    if n == 0 {
        stacktrace::fp::capture(&mut buf[..]).unwrap_or(0)
    } else {
        // The addition keeps the recursive call from being a tail call.
        black_box(deep(n - 1, buf)) + 1
    }
}

fn stack() -> Vec<usize> {
    let mut buf = [0; FRAMES];
    let depth = deep(FRAMES, &mut buf);
    assert!(depth >= FRAMES, "captured {depth} frames");
    buf.to_vec()
}

fn symbolize_all(s: &mut Symbolizer, addrs: &[usize]) -> usize {
    addrs.iter().map(|&a| s.symbolize(a, true).len()).sum()
}

fn bench(c: &mut Criterion) {
    let addrs = stack();
    let mut s = Symbolizer::new();
    let t = Instant::now();
    let frames = symbolize_all(&mut s, &addrs);
    eprintln!(
        "cold: {FRAMES} addresses -> {frames} frames in {:?} (first load of the module)",
        t.elapsed()
    );
    // A large, compressed separate debug file (glibc's, when libc6-dbg is installed).
    let malloc = libc::malloc as *const () as usize;
    let t = Instant::now();
    let f = s.symbolize(malloc, false);
    eprintln!(
        "cold: libc's first lookup {:?}: {}",
        t.elapsed(),
        symbolize::format_frame(&f[f.len() - 1])
    );
    let mut g = c.benchmark_group("symbolize");
    g.bench_function("warm_20_frames", |b| b.iter(|| symbolize_all(&mut s, black_box(&addrs))));
    g.bench_function("warm_20_frames_formatted", |b| {
        b.iter(|| {
            addrs
                .iter()
                .flat_map(|&a| s.symbolize(a, true))
                .map(|f| symbolize::format_frame(&f).len())
                .sum::<usize>()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
