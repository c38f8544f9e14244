//! Statistics: the hit counter is sharded so the hit path of concurrent threads does not
//! bounce one cache line; everything else is counted under the insert lock.

use core::sync::atomic::{AtomicU64, Ordering};

/// Number of hit-counter shards (a power of two).
const SHARDS: usize = 16;

/// One counter alone on its cache line.
#[repr(align(64))]
#[derive(Debug)]
struct Line(AtomicU64);

/// A counter split over [`SHARDS`] cache lines, indexed by the caller's stack address.
#[derive(Debug)]
pub(crate) struct ShardedCounter {
    lines: [Line; SHARDS],
}

impl ShardedCounter {
    pub(crate) const fn new() -> Self {
        Self { lines: [const { Line(AtomicU64::new(0)) }; SHARDS] }
    }

    /// Adds one on a shard picked from the caller's stack: threads have distinct stacks,
    /// so they mostly hit distinct lines, with no thread-local storage (which may allocate
    /// in a dlopen'ed library) and no syscall.
    #[inline]
    pub(crate) fn incr(&self) {
        let probe = 0u8;
        let sp = core::ptr::addr_of!(probe) as usize;
        // 1 MiB granules: one thread's calls stay on one line, thread stacks (>= 8 MiB
        // apart by default) spread over the lines.
        let i = ((sp >> 20) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            >> (64 - SHARDS.trailing_zeros());
        // Relaxed: a statistic; no other memory is published through it.
        self.lines[i as usize].0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sum(&self) -> u64 {
        // Relaxed: a statistic, read without synchronization (may be slightly stale).
        self.lines.iter().map(|l| l.0.load(Ordering::Relaxed)).sum()
    }
}

/// A snapshot of a depot's counters (each read with `Relaxed` ordering, so the fields may be
/// mutually a little out of date while other threads save).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Distinct traces stored.
    pub unique_traces: u64,
    /// Frames of all distinct traces, added up (each trace's length, shared parts counted
    /// once per trace): what a flat layout would store.
    pub frames_stored: u64,
    /// Trie nodes: frames actually stored, shared parts once.
    pub nodes: u64,
    /// Bytes of pool memory holding nodes.
    pub bytes_used: u64,
    /// Bytes mapped: pools (including unused tails) and the hash table.
    pub bytes_mapped: u64,
    /// The hard limit on `bytes_mapped`.
    pub bytes_budget: u64,
    /// Calls to `save` with a non-empty result path (hits + misses).
    pub lookups: u64,
    /// Calls to `save` that found their trace already stored.
    pub hits: u64,
    /// Calls to `save` that returned `Handle::NONE` because the budget was exhausted.
    pub dropped_full: u64,
    /// Calls to `save` that returned `Handle::NONE` because the insert lock was busy: held
    /// by the same thread (a signal handler interrupting `save`), or not released for a very
    /// long time (see the crate docs).
    pub dropped_busy: u64,
    /// Calls to `save` whose trace was longer than `MAX_DEPTH` and was truncated.
    pub truncated: u64,
    /// Warning lines written to stderr (0 or 1: the "depot full" warning is written once).
    pub warnings: u64,
}

impl Stats {
    /// Fraction of lookups that were hits (0.0 when there were no lookups).
    pub fn hit_rate(&self) -> f64 {
        if self.lookups == 0 {
            0.0
        } else {
            self.hits as f64 / self.lookups as f64
        }
    }

    /// Average pool bytes per frame of the distinct traces (0.0 when nothing is stored):
    /// what prefix sharing and the node encoding save against a flat layout's 8 bytes plus
    /// headers. The table is not included (see `bytes_mapped`).
    pub fn bytes_per_frame(&self) -> f64 {
        if self.frames_stored == 0 {
            0.0
        } else {
            self.bytes_used as f64 / self.frames_stored as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_counter_sums_over_threads() {
        static C: ShardedCounter = ShardedCounter::new();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| (0..1000).for_each(|_| C.incr()));
            }
        });
        assert_eq!(C.sum(), 4000);
    }

    #[test]
    fn hit_rate_handles_zero() {
        let mut s = Stats::default();
        assert_eq!(s.hit_rate(), 0.0);
        s.lookups = 4;
        s.hits = 3;
        assert_eq!(s.hit_rate(), 0.75);
    }
}
