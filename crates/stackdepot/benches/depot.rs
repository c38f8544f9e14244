//! Depot vs a `Mutex<HashMap<Vec<usize>, u32>>` baseline: save-hit, save-miss and fetch at
//! depths 16 and 64, on 1 and 2 threads, in one run.
//!
//! With 2 threads both run `iters` operations at once and the time is the wall time of the
//! pair, so it reads as "time per operation per thread" (lower is better, equal to the
//! 1-thread figure under perfect scaling).
//!
//! `cargo bench -p ukasan-stackdepot --bench depot -- --warm-up-time 1 --measurement-time 2`

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use stackdepot::Depot;

/// What both contenders offer.
trait Store: Sync {
    fn fresh() -> Self;
    fn save(&self, frames: &[usize]) -> u32;
    /// Reads the trace behind `h` (the baseline must copy it out under its lock).
    fn fetch(&self, h: u32, out: &mut [usize; 64]) -> usize;
}

impl Store for Box<Depot> {
    fn fresh() -> Self {
        Box::new(Depot::new(512 << 20))
    }
    fn save(&self, frames: &[usize]) -> u32 {
        Depot::save(self, frames).to_raw()
    }
    fn fetch(&self, h: u32, out: &mut [usize; 64]) -> usize {
        let t = Depot::fetch(self, stackdepot::Handle::from_raw(h), out).unwrap_or(&[]);
        black_box(t).len()
    }
}

/// The baseline: one lock around a map from trace to id and a list from id to trace.
struct Baseline(Mutex<Tables>);

/// Trace -> id, and id - 1 -> trace.
type Tables = (HashMap<Vec<usize>, u32>, Vec<Vec<usize>>);

impl Store for Baseline {
    fn fresh() -> Self {
        Baseline(Mutex::new((HashMap::new(), Vec::new())))
    }
    fn save(&self, frames: &[usize]) -> u32 {
        let mut g = self.0.lock().unwrap();
        if let Some(&h) = g.0.get(frames) {
            return h;
        }
        g.1.push(frames.to_vec());
        let h = g.1.len() as u32;
        g.0.insert(frames.to_vec(), h);
        h
    }
    fn fetch(&self, h: u32, out: &mut [usize; 64]) -> usize {
        let g = self.0.lock().unwrap();
        let t = &g.1[h as usize - 1];
        out[..t.len()].copy_from_slice(t);
        t.len()
    }
}

/// 1000 distinct traces of `depth` frames sharing a common stem, as call sites do.
fn traces(depth: usize) -> Vec<Vec<usize>> {
    (0..1000usize)
        .map(|i| {
            (0..depth).map(|k| 0x55_5555_0000 + k * 64 + if k < 3 { i * 8 } else { 0 }).collect()
        })
        .collect()
}

/// Runs `op(thread, i)` for `i in 0..iters` on `threads` threads at once; wall time.
fn run(threads: usize, iters: u64, op: &(impl Fn(usize, u64) + Sync)) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 1..threads {
            s.spawn(move || (0..iters).for_each(|i| op(t, i)));
        }
        (0..iters).for_each(|i| op(0, i));
    });
    start.elapsed()
}

fn contender<S: Store>(c: &mut Criterion, name: &str) {
    for depth in [16usize, 64] {
        let ts = traces(depth);
        for threads in [1usize, 2] {
            let id = |op: &str| format!("{op}/{threads}t/{name}/{depth}");

            let store = S::fresh();
            let handles: Vec<u32> = ts.iter().map(|t| store.save(t)).collect();
            c.bench_function(&id("save_hit"), |b| {
                b.iter_custom(|iters| {
                    run(threads, iters, &|t, i| {
                        black_box(store.save(&ts[(i as usize * 7 + t * 500) % ts.len()]));
                    })
                })
            });
            c.bench_function(&id("fetch"), |b| {
                b.iter_custom(|iters| {
                    run(threads, iters, &|t, i| {
                        let mut out = [0usize; 64];
                        black_box(
                            store.fetch(handles[(i as usize * 7 + t * 500) % ts.len()], &mut out),
                        );
                    })
                })
            });
            // Misses: every save is a new trace; a fresh store per chunk bounds memory (the
            // setup and drop of a chunk are not timed).
            c.bench_function(&id("save_miss"), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    let mut done = 0;
                    while done < iters {
                        let n = (iters - done).min(100_000);
                        let store = S::fresh();
                        total += run(threads, n, &|t, i| {
                            let mut f = [0usize; 64];
                            f[..depth].copy_from_slice(&ts[0]);
                            f[0] = (i as usize) << 8 | t;
                            black_box(store.save(&f[..depth]));
                        });
                        drop(store);
                        done += n;
                    }
                    total
                })
            });
        }
    }
}

fn benches(c: &mut Criterion) {
    contender::<Box<Depot>>(c, "depot");
    contender::<Baseline>(c, "mutex_hashmap");
}

criterion_group!(g, benches);
criterion_main!(g);
