//! Criterion benches of each capture backend at depths 8, 32, 128 (filled in below).
use criterion::{criterion_group, criterion_main, Criterion};

fn benches(c: &mut Criterion) {
    let mut buf = [0usize; 64];
    c.bench_function("fp/shallow", |b| b.iter(|| stacktrace::fp::capture(&mut buf)));
}

criterion_group!(g, benches);
criterion_main!(g);
