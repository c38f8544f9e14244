//! Concurrency stress: 8 threads save overlapping random traces, whole and incrementally,
//! and fetch each other's nodes while they are being inserted; afterwards every handle fetches its own trace.

use std::collections::HashMap;

use stackdepot::{Depot, Handle};

use crate::Rng;

const THREADS: usize = 8;
const TRACES: usize = if cfg!(miri) { 12 } else { 600 };
const SAVES: usize = if cfg!(miri) { 40 } else { 20_000 };

/// Traces that overlap: many share long prefixes and suffixes, some are equal by content
/// though generated separately.
fn traces() -> Vec<Vec<usize>> {
    let mut rng = Rng(0x5eed);
    let stem: Vec<usize> = (0..80).map(|i| 0x55_0000 + i * 16).collect();
    (0..TRACES)
        .map(|i| {
            let depth = rng.below(80) as usize;
            let mut t = stem[..depth].to_vec();
            if i % 3 != 0 && depth > 0 {
                let k = rng.below(depth as u64) as usize;
                t[k] = 0x7f00_0000 + rng.below(8) as usize;
            }
            t
        })
        .collect()
}

#[test]
fn eight_threads_saving_overlapping_traces_agree() {
    let d = Depot::new(64 << 20);
    let ts = traces();
    let per_thread: Vec<Vec<(usize, Handle)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|n| {
                let (d, ts) = (&d, &ts);
                s.spawn(move || {
                    let mut rng = Rng(n as u64 * 7919 + 1);
                    let mut got = Vec::with_capacity(SAVES);
                    for _ in 0..SAVES {
                        let i = rng.below(TRACES as u64) as usize;
                        let t = &ts[i];
                        // Whole saves, and incremental ones on a suffix's handle.
                        let h = if rng.below(2) == 0 {
                            d.save(t)
                        } else {
                            let mut suffixes = [Handle::NONE; 80];
                            let whole = d.save_with_suffixes(t, &mut suffixes);
                            let k = rng.below(t.len() as u64 + 1) as usize;
                            if k < t.len() {
                                assert_eq!(d.save_on(suffixes[k], t.len() - k, &t[..k]), whole);
                            }
                            whole
                        };
                        assert!(!h.is_none());
                        // Fetch at once: the record may have just been published by another
                        // thread.
                        assert_eq!(d.fetch(h, &mut [0; 80]), Some(&ts[i][..]));
                        got.push((i, h));
                    }
                    got
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut by_content: HashMap<&[usize], Handle> = HashMap::new();
    let mut by_handle: HashMap<Handle, &[usize]> = HashMap::new();
    for (i, h) in per_thread.into_iter().flatten() {
        let t = &ts[i][..];
        assert_eq!(*by_content.entry(t).or_insert(h), h, "trace {i} has two handles");
        assert_eq!(*by_handle.entry(h).or_insert(t), t, "handle {h:?} has two traces");
        assert_eq!(d.fetch(h, &mut [0; 80]), Some(t));
    }
    let s = d.stats();
    assert_eq!(s.unique_traces as usize, by_content.len());
    assert!(s.lookups as usize >= THREADS * SAVES);
    assert_eq!(s.dropped_full + s.dropped_busy, 0);
}
