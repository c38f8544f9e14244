//! The stack depot: every distinct stack trace stored once, behind a 32-bit [`Handle`], in a
//! trie that stores the shared old part of stacks once.
//!
//! ukasan records, for each heap object, the stack that allocated it and the stack that freed
//! it. Most allocations come from a few thousand call sites, so the depot deduplicates traces
//! and the detector keeps only a `u32` per stack. It is called inside `malloc` and `free` of
//! someone else's program, from every thread and from signal handlers, so:
//!
//! - **No allocation, ever.** Nodes live in append-only pools mapped with `mmap` (1 MiB
//!   each), and the table is one more mapping; nothing is freed before the [`Depot`] is
//!   dropped (the global one never is).
//! - **Hard budget.** Pools and table together never exceed the budget ([`set_budget`],
//!   default [`DEFAULT_BUDGET`] = 64 MiB; ukasan sets it from its `depot_size_mb` option).
//!   When a new trace no longer fits, [`save`] returns [`Handle::NONE`] and writes one
//!   warning line to stderr with `write(2)`, naming the option and a value that raises the
//!   budget; traces already stored keep their handles, and saving them again still finds
//!   them.
//! - **Prefix sharing.** A trace is a path in a trie of `(parent, return address)` nodes,
//!   from its oldest frame to its newest; its handle names the node of its newest frame.
//!   The deep, stable part of every stack (`main`, an event loop, an interpreter's eval
//!   loop) is stored once. A node is 12 bytes (parent id, low half of the return address,
//!   an index into a small table of high halves, a bucket link), 16 for a return address
//!   whose high half is not among the first 31 the depot met.
//! - **Incremental saves.** [`Depot::save_on`] stores "these new frames called from the
//!   trace of that handle" at the cost of the new frames only, and
//!   [`Depot::save_with_suffixes`] hands out the handle of every old part of a trace: a
//!   capture that knows which frames changed since its last one (the software shadow stack)
//!   saves in time proportional to them.
//! - **Lock-free lookups.** A power-of-two table of bucket heads keyed by (parent, return
//!   address); nodes are immutable once published with a Release store of the bucket head;
//!   lookups Acquire it. In front, a lookaside of whole-trace hashes: a repeated trace costs
//!   one hash and one walk up its path, no lock, no store to shared lines (the hit counter
//!   is sharded over 16 cache lines).
//! - **Inserts under a lock, with a re-check**, and any pool `mmap` done outside it. The lock
//!   word is its owner's `pthread_self()`: a signal handler that interrupts an insert and
//!   saves a new trace on the same thread gets `Handle::NONE` at once instead of
//!   deadlocking. The word sits in a `MADV_WIPEONFORK` page, so a child after `fork()` starts
//!   with it free even if another thread of the parent held it. A waiter gives up (NONE)
//!   after about a second or more of waiting instead of hanging on an owner that can never
//!   release it (a thread that `longjmp`ed out of a signal handler that interrupted an
//!   insert).
//!
//! # Equality
//! Two traces are equal when they have the same length and the same frames in the same
//! order; they then are the same trie path, so the same handle (no hash decides equality:
//! every lookup compares the node's parent and return address, and the lookaside's
//! candidate is compared frame by frame). Traces longer than [`MAX_DEPTH`] (256) frames are
//! truncated to their first 256 frames (the newest, callers pass newest first) before
//! saving; `Stats::truncated` counts them. The empty trace is a trace like any other (it has
//! a handle, and `fetch` gives an empty slice).
//!
//! # Handles
//! `Handle::NONE` (0) means "stack not available". Otherwise the low 27 bits name a node: a
//! pool (9 bits) and a 4-byte offset in it (18 bits); the top [`Handle::EXTRA_BITS`] (5) bits
//! are free for the caller, as in the kernel's depot (`with_extra`/`extra`); [`fetch`]
//! ignores them. [`fetch`] walks up the path into a caller buffer, newest first.
//!
//! # Costs
//! Per distinct trace: 12 bytes per frame not shared with a trace stored before (measured on
//! `ukasan bench`: see `Stats::bytes_per_frame`, pool bytes over the frames of all distinct
//! traces). Per depot: the table (a 4-byte bucket per 128 budget bytes and a lookaside of
//! half that: 3 MiB for 64 MiB) and the unused tail of each pool. A repeated trace:
//! a hash and a walk up its path (about a nanosecond per frame when hot); a new one: a
//! bucket lookup per frame down to where it leaves the stored paths, then the lock.
//!
//! # What it does not do
//! Capture traces (`ukasan-stacktrace`), symbolize them (`ukasan-symbolize`), or evict:
//! the depot only grows until its budget.
//!
//! # Example
//! ```
//! use stackdepot::{Depot, Handle};
//!
//! static DEPOT: Depot = Depot::new(1 << 20);
//! let a = DEPOT.save(&[0x4011d6, 0x401a2b, 0x7f00_0000_1234]);
//! let b = DEPOT.save(&[0x4011d6, 0x401a2b, 0x7f00_0000_1234]);
//! assert_eq!(a, b);
//! let mut buf = [0; 64];
//! assert_eq!(DEPOT.fetch(a, &mut buf), Some(&[0x4011d6, 0x401a2b, 0x7f00_0000_1234][..]));
//! assert_eq!(DEPOT.fetch(Handle::NONE, &mut buf), None);
//! // Two new frames on top of the stored trace, at the cost of two frames:
//! let c = DEPOT.save_on(a, 3, &[0x4015f0, 0x401200]);
//! assert_eq!(c, DEPOT.save(&[0x4015f0, 0x401200, 0x4011d6, 0x401a2b, 0x7f00_0000_1234]));
//! let tagged = a.with_extra(3);
//! assert_eq!(tagged.extra(), 3);
//! assert_eq!(DEPOT.fetch(tagged, &mut buf).map(<[usize]>::len), Some(3));
//! ```

mod depot;
mod hash;
mod lock;
mod node;
mod stats;
mod sys;

pub use depot::{Depot, DEFAULT_BUDGET, MAX_BUDGET, MAX_DEPTH, MAX_POOLS, POOL_SIZE};
pub use stats::Stats;

/// A stored trace's name: 0 means "no trace"; the top [`Handle::EXTRA_BITS`] bits belong
/// to the caller.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Handle(u32);

impl Handle {
    /// "Stack not available": the budget was exhausted, or a signal handler interrupted an
    /// insert on its own thread.
    pub const NONE: Handle = Handle(0);
    /// Spare bits at the top of a handle that the caller may use (like the kernel's 5).
    pub const EXTRA_BITS: u32 = 5;
    const ID_BITS: u32 = node::ID_BITS;
    const ID_MASK: u32 = (1 << Self::ID_BITS) - 1;

    /// Whether this names no trace (extra bits aside).
    #[inline]
    pub fn is_none(self) -> bool {
        self.id() == 0
    }

    /// The raw 32-bit value, extra bits included (for storage in a caller's header).
    #[inline]
    pub fn to_raw(self) -> u32 {
        self.0
    }

    /// A handle from a value of [`to_raw`](Self::to_raw).
    #[inline]
    pub fn from_raw(raw: u32) -> Handle {
        Handle(raw)
    }

    /// This handle with its extra bits set to the low [`EXTRA_BITS`](Self::EXTRA_BITS)
    /// bits of `bits` (higher bits of `bits` are ignored).
    #[inline]
    pub fn with_extra(self, bits: u32) -> Handle {
        Handle(self.id() | (bits << Self::ID_BITS))
    }

    /// The caller's extra bits.
    #[inline]
    pub fn extra(self) -> u32 {
        self.0 >> Self::ID_BITS
    }

    /// The part that names the record.
    #[inline]
    pub(crate) fn id(self) -> u32 {
        self.0 & Self::ID_MASK
    }

    #[inline]
    pub(crate) fn from_id(id: u32) -> Handle {
        Handle(id)
    }
}

/// The process-global depot used by the detector.
static GLOBAL: Depot = Depot::new(DEFAULT_BUDGET);

/// The process-global depot itself (for code that takes a `&Depot`).
pub fn global() -> &'static Depot {
    &GLOBAL
}

/// [`Depot::save`] on the process-global depot.
#[inline]
pub fn save(frames: &[usize]) -> Handle {
    GLOBAL.save(frames)
}

/// [`Depot::save_on`] on the process-global depot.
#[inline]
pub fn save_on(base: Handle, base_len: usize, frames: &[usize]) -> Handle {
    GLOBAL.save_on(base, base_len, frames)
}

/// [`Depot::extend_on`] on the process-global depot.
#[inline]
pub fn extend_on(base: Handle, base_len: usize, frames: &[usize]) -> Handle {
    GLOBAL.extend_on(base, base_len, frames)
}

/// [`Depot::save_with_suffixes`] on the process-global depot.
pub fn save_with_suffixes(frames: &[usize], suffixes: &mut [Handle]) -> Handle {
    GLOBAL.save_with_suffixes(frames, suffixes)
}

/// [`Depot::fetch`] on the process-global depot.
#[inline]
pub fn fetch(h: Handle, buf: &mut [usize]) -> Option<&[usize]> {
    GLOBAL.fetch(h, buf)
}

/// Sets the global depot's budget in bytes; effective only before its first insert maps
/// anything (returns whether it took effect).
pub fn set_budget(bytes: usize) -> bool {
    GLOBAL.set_budget(bytes)
}

/// [`Depot::stats`] of the process-global depot.
pub fn stats() -> Stats {
    GLOBAL.stats()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_extra_bits_round_trip_and_keep_the_id() {
        let h = Handle::from_raw(0x0123_4567 & Handle::ID_MASK);
        for bits in [0, 1, 17, 31] {
            let t = h.with_extra(bits);
            assert_eq!(t.extra(), bits);
            assert_eq!(t.id(), h.id());
            assert_eq!(Handle::from_raw(t.to_raw()), t);
        }
        assert_eq!(h.with_extra(0x25).extra(), 5, "bits above EXTRA_BITS are dropped");
        assert!(Handle::NONE.with_extra(9).is_none());
        assert!(!h.is_none());
        assert_eq!(Handle::default(), Handle::NONE);
    }

    #[test]
    fn with_extra_replaces_previous_extra_bits() {
        let h = Handle::from_raw(42).with_extra(31).with_extra(2);
        assert_eq!((h.extra(), h.id()), (2, 42));
    }
}
