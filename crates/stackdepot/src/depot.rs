//! The depot: a trie of `(parent, return address)` nodes in append-only mmap pools, found
//! through a hash table of chained buckets, with a lookaside of whole traces in front.
//!
//! A trace `[f0, f1, .., fn-1]` (newest first) is the path root -> `fn-1` -> .. -> `f0`: the
//! node of `f0` names it, and its parent is the node of `[f1, .., fn-1]`. Stacks of one
//! program share their old part (`main`, the event loop, the interpreter's eval loop), which
//! is stored once. Node ids grow with insertion and a parent is always inserted before its
//! children, so every parent id is smaller than its child's (walks end, even on garbage).
//!
//! Memory layout:
//! - **Pools**: up to [`MAX_POOLS`] mappings of at most [`POOL_SIZE`] bytes, filled front to
//!   back with nodes (`node.rs`: 12 bytes, 16 for a rare return address) and never freed
//!   before the depot is dropped. A node id is `pool << 18 | offset / 4`.
//! - **Table**: one mapping made on the first save: page 0 holds the insert lock and is
//!   marked `MADV_WIPEONFORK` (a forked child starts with the lock free), then `2^bits`
//!   `AtomicU32` bucket heads (a node's word 0 links the next node of its bucket), then
//!   `2^(bits - 1)` lookaside slots: the node last saved for a whole-trace hash, checked
//!   frame by frame before use, so a repeated trace costs one hash and one walk up its path
//!   rather than a bucket lookup per frame. The table pointer carries `bits` and log2(page
//!   size) in its low (page offset) bits, so the whole layout publishes with one atomic store.
//!
//! Concurrency: nodes are immutable once published (except the `TERMINAL` statistics bit,
//! set atomically). An insert, under [`OwnerLock`], for each new node
//! 1. moves the cursor past the node (so a child forked mid-insert, which starts with the
//!    lock free, never reuses the half-written node),
//! 2. writes the node,
//! 3. raises the pool's `published` mark (Release; `fetch` checks ids against it),
//! 4. stores the node's id as the bucket head (Release; lookups Acquire it).
//!
//! Stopped at any point, the depot stays consistent: at worst some pool bytes are wasted.

use core::fmt::Write;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::hash::{hash, node_hash};
use crate::lock::{Busy, OwnerLock};
use crate::node::{self, ESCAPE, HIGHS, ID_BITS, ID_MASK, MAX_WORDS, TERMINAL};
use crate::stats::{ShardedCounter, Stats};
use crate::{sys, Handle};

/// Longest trace stored; longer input is truncated to its first (newest) `MAX_DEPTH` frames.
pub const MAX_DEPTH: usize = 256;
/// Budget of the process-global depot unless [`crate::set_budget`] says otherwise.
pub const DEFAULT_BUDGET: usize = 64 << 20;
/// Size of a full pool mapping (the last pool within the budget may be smaller).
pub const POOL_SIZE: usize = 1 << POOL_SHIFT;
/// Most pools a depot can hold (so at most `MAX_POOLS * POOL_SIZE` bytes of nodes).
pub const MAX_POOLS: usize = (1 << POOL_BITS) - 1;
/// Largest budget worth giving a depot (1 GiB): the largest table and about 500 pools;
/// ukasan's `depot_size_mb` option accepts up to this.
pub const MAX_BUDGET: usize = 1 << 30;

const POOL_SHIFT: u32 = 20;
/// Nodes are made of 4-byte words; an id stores the offset in words.
const GRANULE_SHIFT: u32 = 2;
pub(crate) const OFFSET_BITS: u32 = POOL_SHIFT - GRANULE_SHIFT;
pub(crate) const POOL_BITS: u32 = ID_BITS - OFFSET_BITS;
/// The id of the root: the empty trace (pool field 0, which names no pool).
pub(crate) const ROOT: u32 = 1;
const MIN_TABLE_BITS: u32 = 8;
const MAX_TABLE_BITS: u32 = 23;
/// The lookaside has one slot per `2^LOOKASIDE_SHIFT` buckets (a slot per 256 budget
/// bytes: 256 Ki slots for 64 MiB, so that tens of thousands of distinct traces rarely
/// share one; a miss walks the trie from the root, a bucket lookup per frame).
const LOOKASIDE_SHIFT: u32 = 1;
const MAX_NODE: usize = MAX_WORDS * 4;
/// Words of a node whose high half is known (the common size).
const NODE_WORDS: u32 = 3;
/// Bytes of address space reserved for the pools.
const REGION: usize = MAX_POOLS * POOL_SIZE;

const _: () = assert!(ID_BITS == 32 - Handle::EXTRA_BITS && POOL_BITS == 9);

/// One pool: its mapping and how far nodes in it are published.
#[derive(Debug)]
struct Pool {
    base: AtomicPtr<u8>,
    len: AtomicUsize,
    /// Bytes from `base` that hold fully written nodes.
    published: AtomicUsize,
}

/// A deduplicating store of stack traces; see the crate docs.
pub struct Depot {
    /// Address space for all pools (`MAX_POOLS * POOL_SIZE` bytes reserved, `PROT_NONE`), pool
    /// `k` at `(k - 1) * POOL_SIZE`: a node's address is one add from its id. Made with the
    /// table, before it is published; null until then.
    region: AtomicPtr<u8>,
    /// The table mapping, tagged with log2(bucket count) and log2(page size) in its low bits;
    /// null until the first save.
    table: AtomicPtr<u8>,
    budget: AtomicUsize,
    /// Bytes mapped (pools, spare, table), never above `budget`.
    mapped: AtomicUsize,
    pools: [Pool; MAX_POOLS],
    /// Under the lock: `(pool index + 1) << 32 | next free byte`; 0 = no pool yet.
    cursor: AtomicU64,
    /// Under the lock: a mapped pool not in use yet (null if none) and its length.
    spare: AtomicPtr<u8>,
    spare_len: AtomicUsize,
    /// High halves (`ra >> 32`) that nodes refer to by index; written under the lock before
    /// the first node that uses one is published, never changed after.
    highs: [AtomicU32; HIGHS],
    highs_len: AtomicU32,
    /// Some save returned the root (the empty trace): for `unique_traces`.
    root_saved: AtomicBool,
    hits: ShardedCounter,
    misses: AtomicU64,
    unique: AtomicU64,
    frames: AtomicU64,
    nodes: AtomicU64,
    bytes_used: AtomicU64,
    dropped_full: AtomicU64,
    dropped_busy: AtomicU64,
    truncated: AtomicU64,
    warned: AtomicBool,
}

/// Why an insert under the lock stopped.
enum Stop {
    /// The current pool is full and there is no spare: map one (outside the lock) and retry.
    NeedPool,
    /// Every pool slot is taken: the depot is full whatever the budget says.
    Full,
}

/// A published node's fields.
#[derive(Clone, Copy)]
struct Node {
    /// Word 0 (next | TERMINAL), read when the node was loaded.
    w0: u32,
    parent: u32,
    ra: usize,
}

impl Depot {
    /// An empty depot that will map at most `budget_bytes` (pools and table together).
    ///
    /// Maps nothing until the first [`save`](Self::save).
    pub const fn new(budget_bytes: usize) -> Depot {
        Depot {
            region: AtomicPtr::new(ptr::null_mut()),
            table: AtomicPtr::new(ptr::null_mut()),
            budget: AtomicUsize::new(budget_bytes),
            mapped: AtomicUsize::new(0),
            pools: [const {
                Pool {
                    base: AtomicPtr::new(ptr::null_mut()),
                    len: AtomicUsize::new(0),
                    published: AtomicUsize::new(0),
                }
            }; MAX_POOLS],
            cursor: AtomicU64::new(0),
            spare: AtomicPtr::new(ptr::null_mut()),
            spare_len: AtomicUsize::new(0),
            highs: [const { AtomicU32::new(0) }; HIGHS],
            highs_len: AtomicU32::new(0),
            root_saved: AtomicBool::new(false),
            hits: ShardedCounter::new(),
            misses: AtomicU64::new(0),
            unique: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            nodes: AtomicU64::new(0),
            bytes_used: AtomicU64::new(0),
            dropped_full: AtomicU64::new(0),
            dropped_busy: AtomicU64::new(0),
            truncated: AtomicU64::new(0),
            warned: AtomicBool::new(false),
        }
    }

    /// Changes the budget; only possible before anything was mapped. Returns whether it
    /// took effect.
    pub fn set_budget(&self, budget_bytes: usize) -> bool {
        // Relaxed: a best-effort check documented as "call before the first save"; the
        // budget is read again (Relaxed) by the first insert.
        if self.mapped.load(Ordering::Relaxed) != 0 {
            return false;
        }
        self.budget.store(budget_bytes, Ordering::Relaxed);
        true
    }

    /// Stores `frames` (newest first) once and returns its handle; an equal trace saved
    /// before gives the same handle.
    ///
    /// Returns [`Handle::NONE`] when the budget is exhausted (after writing one warning line
    /// to stderr, once per depot) or when called from a signal handler that interrupted an
    /// insert on the same thread. Traces longer than [`MAX_DEPTH`] are truncated.
    ///
    /// Async-signal-safe, never allocates, never panics. A repeated trace costs a hash and a
    /// walk up its path (the lookaside); a new one a bucket lookup per frame down to where it
    /// leaves the stored paths, then the insert lock for the new frames only.
    #[inline]
    pub fn save(&self, frames: &[usize]) -> Handle {
        let frames = self.clamp(frames);
        let Some(t) = self.table().or_else(|| self.make_table()) else {
            return self.full();
        };
        let h = hash(frames);
        let slot = t.lookaside(h);
        // Acquire pairs with the Release store below (by any thread): the node it names, and
        // its path, are visible.
        let cand = slot.load(Ordering::Acquire);
        if cand != 0 {
            // SAFETY: lookaside slots only ever hold ids of published nodes (or ROOT).
            if let Some(w0) = unsafe { self.is_path(cand, frames) } {
                self.hits.incr();
                self.mark(cand, w0, frames.len());
                return Handle::from_id(cand);
            }
        }
        let id = self.extend(t, ROOT, frames, &mut []);
        if id != 0 {
            // Release pairs with the Acquire load above.
            slot.store(id, Ordering::Release);
        }
        self.finish(id, frames.len())
    }

    /// Stores the trace `frames ++ trace(base)`: `frames` (newest first) called from the
    /// frames of `base`, a handle of this depot whose trace has `base_len` frames, and
    /// returns its handle, the same as [`save`](Self::save) of the whole trace would.
    ///
    /// Costs a bucket lookup per frame of `frames` only: the incremental save of a capture
    /// that knows its old part's handle. [`Handle::NONE`] when `base` is not a handle of this
    /// depot, when the whole trace would exceed [`MAX_DEPTH`] (save it whole: it is
    /// truncated then), and as for `save`. Async-signal-safe, never allocates.
    #[inline]
    pub fn save_on(&self, base: Handle, base_len: usize, frames: &[usize]) -> Handle {
        match self.path_on(base, base_len, frames) {
            Some((id, len)) => self.finish(id, len),
            None => Handle::NONE,
        }
    }

    /// As [`save_on`](Self::save_on), without counting the result as a saved trace in
    /// [`stats`](Self::stats): a step of a longer save (the older part of the new frames,
    /// saved on in turn), whose handle is the same as `save_on`'s.
    #[inline]
    pub fn extend_on(&self, base: Handle, base_len: usize, frames: &[usize]) -> Handle {
        match self.path_on(base, base_len, frames) {
            Some((id, _)) if id != 0 => Handle::from_id(id),
            _ => Handle::NONE,
        }
    }

    /// The node of `frames` on `base` and the whole trace's length (node 0 when refused);
    /// `None` when `base` is not ours or the trace would exceed [`MAX_DEPTH`].
    #[inline]
    fn path_on(&self, base: Handle, base_len: usize, frames: &[usize]) -> Option<(u32, usize)> {
        let len = base_len.saturating_add(frames.len());
        let t = self.table()?;
        if len > MAX_DEPTH || !self.is_node(base.id()) {
            return None;
        }
        Some((self.extend(t, base.id(), frames, &mut []), len))
    }

    /// As [`save`](Self::save), and also writes to `suffixes[i]` the handle of
    /// `frames[i..]`, for every `i < suffixes.len()` (the handles of the old parts of the
    /// trace, for later [`save_on`](Self::save_on) calls; `NONE` where not stored).
    pub fn save_with_suffixes(&self, frames: &[usize], suffixes: &mut [Handle]) -> Handle {
        let frames = self.clamp(frames);
        suffixes.iter_mut().for_each(|s| *s = Handle::NONE);
        let Some(t) = self.table().or_else(|| self.make_table()) else {
            return self.full();
        };
        let id = self.extend(t, ROOT, frames, suffixes);
        self.finish(id, frames.len())
    }

    /// Writes the trace behind `h` (its extra bits ignored) into `buf`, newest first, and
    /// returns the written part: all of it, or its newest `buf.len()` frames if it is longer.
    /// `None` for [`Handle::NONE`] and for handles this depot did not hand out.
    ///
    /// Async-signal-safe, lock-free, never allocates, never panics: a walk up the path, each
    /// node checked against its pool's published mark. A handle must reach the fetching
    /// thread through some synchronization (as any value would); a handle made up or from
    /// another depot gives `None` or some other trace, never undefined behavior.
    pub fn fetch<'b>(&self, h: Handle, buf: &'b mut [usize]) -> Option<&'b [usize]> {
        let mut id = h.id();
        if id == ROOT {
            return self.table().map(|_| &buf[..0]);
        }
        let mut n = 0;
        while id != ROOT {
            let node = self.checked(id)?;
            if n == buf.len() {
                break;
            }
            buf[n] = node.ra;
            n += 1;
            if node.parent >= id || n > MAX_DEPTH {
                return None;
            }
            id = node.parent;
        }
        Some(&buf[..n])
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        // Relaxed everywhere: statistics, no memory is published through them.
        let hits = self.hits.sum();
        Stats {
            unique_traces: self.unique.load(Ordering::Relaxed),
            frames_stored: self.frames.load(Ordering::Relaxed),
            nodes: self.nodes.load(Ordering::Relaxed),
            bytes_used: self.bytes_used.load(Ordering::Relaxed),
            bytes_mapped: self.mapped.load(Ordering::Relaxed) as u64,
            bytes_budget: self.budget.load(Ordering::Relaxed) as u64,
            lookups: hits + self.misses.load(Ordering::Relaxed),
            hits,
            dropped_full: self.dropped_full.load(Ordering::Relaxed),
            dropped_busy: self.dropped_busy.load(Ordering::Relaxed),
            truncated: self.truncated.load(Ordering::Relaxed),
            warnings: self.warned.load(Ordering::Relaxed) as u64,
        }
    }

    /// `frames`, truncated to [`MAX_DEPTH`] (counted).
    #[inline]
    fn clamp<'f>(&self, frames: &'f [usize]) -> &'f [usize] {
        if frames.len() > MAX_DEPTH {
            self.truncated.fetch_add(1, Ordering::Relaxed); // Relaxed: a statistic.
            &frames[..MAX_DEPTH]
        } else {
            frames
        }
    }

    /// The statistics and the result of a save that ended at node `id` (0: refused).
    #[inline]
    fn finish(&self, id: u32, len: usize) -> Handle {
        if id == 0 {
            return Handle::NONE;
        }
        if id != ROOT {
            // SAFETY: `extend` returns ids of published nodes (or ROOT).
            let w0 = unsafe { self.node(id) }.w0;
            self.mark(id, w0, len);
        } else {
            self.mark(id, 0, 0);
        }
        Handle::from_id(id)
    }

    /// Counts node `id` (word 0 `w0` as loaded) as a distinct trace of `len` frames the first
    /// time a save returns it.
    #[inline]
    fn mark(&self, id: u32, w0: u32, len: usize) {
        if id == ROOT {
            // Relaxed: statistics; the swap makes exactly one saver count it.
            if !self.root_saved.load(Ordering::Relaxed)
                && !self.root_saved.swap(true, Ordering::Relaxed)
            {
                self.unique.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        if w0 & TERMINAL != 0 {
            return;
        }
        // SAFETY: `id` names a published node (callers).
        let word = unsafe { self.word0(id) };
        // Relaxed: a statistics bit; the fetch_or makes exactly one saver count the trace.
        if word.fetch_or(TERMINAL, Ordering::Relaxed) & TERMINAL == 0 {
            self.unique.fetch_add(1, Ordering::Relaxed);
            self.frames.fetch_add(len as u64, Ordering::Relaxed);
        }
    }

    /// The table, if made yet.
    #[inline]
    fn table(&self) -> Option<Table> {
        // Acquire pairs with the Release CAS in `make_table`: the zeroed mapping is visible.
        let t = self.table.load(Ordering::Acquire);
        let tag = t.addr() & TAG_MASK;
        let base = NonNull::new(t.map_addr(|a| a & !TAG_MASK))?;
        let page = 1usize << (tag >> 5);
        let bits = (tag & 31) as u32;
        // SAFETY: the mapping is one page (the lock), the buckets, then the lookaside.
        let buckets = unsafe { base.add(page) }.cast::<AtomicU32>();
        // SAFETY: as above: the lookaside follows the `2^bits` buckets.
        let lookaside = unsafe { buckets.add(1 << bits) };
        Some(Table { base, buckets, lookaside, bits })
    }

    /// The address of word 0 of node `id` and its pool slot.
    ///
    /// # Safety
    /// `id` names a published node: it was read (Acquire, or under the lock) from a bucket
    /// head, a lookaside slot or a published node's link, or returned by an insert.
    #[inline(always)]
    unsafe fn at(&self, id: u32) -> *const u32 {
        // Relaxed: the region was stored before the table's Release publication, and every
        // node was published after that (the caller acquired it).
        let region = self.region.load(Ordering::Relaxed);
        // SAFETY: pool `k` of a published node (k >= 1) lies at `(k - 1) * POOL_SIZE` in the
        // region, and `id << 2` is `k * POOL_SIZE + offset`; 4-aligned.
        unsafe { region.add(((id as usize) << GRANULE_SHIFT) - POOL_SIZE).cast::<u32>() }
    }

    /// Word 0 of a published node, which may change (its TERMINAL bit).
    ///
    /// # Safety
    /// As [`at`](Self::at).
    #[inline(always)]
    unsafe fn word0(&self, id: u32) -> &AtomicU32 {
        // SAFETY: the caller's contract; word 0 is only ever accessed atomically.
        unsafe { &*self.at(id).cast::<AtomicU32>() }
    }

    /// A published node's fields.
    ///
    /// # Safety
    /// As [`at`](Self::at).
    #[inline(always)]
    unsafe fn node(&self, id: u32) -> Node {
        // SAFETY: the caller's contract.
        let p = unsafe { self.at(id) };
        // Relaxed: see `word0`; words 1.. were written before the node was published.
        // SAFETY: a published node has 3 or 4 words, immutable except word 0, which is only
        // ever accessed atomically.
        let (w0, w1, lo) =
            unsafe { ((*p.cast::<AtomicU32>()).load(Ordering::Relaxed), *p.add(1), *p.add(2)) };
        let hi = if w1 >> ID_BITS == ESCAPE {
            // SAFETY: an escaping node has its fourth word.
            unsafe { *p.add(3) }
        } else {
            // Relaxed: the high half was stored before the node that uses it was published.
            self.highs[(w1 >> ID_BITS) as usize].load(Ordering::Relaxed)
        };
        Node { w0, parent: w1 & ID_MASK, ra: (u64::from(hi) << 32 | u64::from(lo)) as usize }
    }

    /// Whether `id` names a published node (or the root) of this depot.
    #[inline]
    fn is_node(&self, id: u32) -> bool {
        id == ROOT || self.checked(id).is_some()
    }

    /// The node `id`, for an id from outside (a caller's handle): checked against its pool's
    /// published mark, decoded with checks.
    #[inline]
    fn checked(&self, id: u32) -> Option<Node> {
        let pool = (id >> OFFSET_BITS) as usize;
        let off = ((id & ((1 << OFFSET_BITS) - 1)) as usize) << GRANULE_SHIFT;
        let slot = self.pools.get(pool.checked_sub(1)?)?;
        // Acquire pairs with the Release store of `published` in `push_locked`: the node
        // bytes below the mark, and the pool's `base`, are visible.
        let published = slot.published.load(Ordering::Acquire);
        if off + 12 > published {
            return None;
        }
        // Relaxed: `base` was stored before the `published` Release we acquired.
        let p = slot.base.load(Ordering::Relaxed).cast::<u32>();
        if p.is_null() {
            return None;
        }
        // SAFETY: `off + 12 <= published <= len` of this pool and `off` is 4-aligned: three
        // written words; a fourth is read only if it lies below the mark too.
        let w = unsafe {
            let p = p.add(off / 4);
            let w3 = if off + 16 <= published { *p.add(3) } else { 0 };
            [(*p.cast::<AtomicU32>()).load(Ordering::Relaxed), *p.add(1), *p.add(2), w3]
        };
        let n = if off + 16 <= published { 3 } else { 2 };
        let highs = self.highs_len.load(Ordering::Acquire);
        let (parent, ra) = node::decode(&w[1..1 + n], |i| {
            // Relaxed: indexes below `highs_len` (Acquire) hold their final value.
            (i < highs).then(|| self.highs[i as usize].load(Ordering::Relaxed))
        })?;
        Some(Node { w0: w[0], parent, ra })
    }

    /// Whether the published node `id` is the path of `frames` (its word 0 if so).
    ///
    /// # Safety
    /// As [`at`](Self::at), or `id == ROOT`.
    ///
    /// The new part of a trace is inserted in one go, so a path is mostly runs of adjacent
    /// nodes, each the parent of the next one up. Within a run the next node's address is
    /// guessed (the node right below) before the load that confirms it: the check is a
    /// predicted branch, so the loads of a run overlap instead of waiting for each other
    /// (a plain walk is one cache-hit latency per frame).
    #[inline]
    unsafe fn is_path(&self, mut id: u32, frames: &[usize]) -> Option<u32> {
        let Some((&first, _)) = frames.split_first() else {
            return (id == ROOT).then_some(0);
        };
        if id == ROOT {
            return None;
        }
        // SAFETY: `id` is published (the caller's contract).
        let w0 = unsafe { self.node(id) };
        if w0.ra != first {
            return None;
        }
        // Relaxed: see `at`.
        let region = self.region.load(Ordering::Relaxed).cast_const();
        let mut i = 0;
        while i < frames.len() {
            if id == ROOT {
                return None;
            }
            loop {
                let below = opaque(id.wrapping_sub(NODE_WORDS));
                let f = frames[i];
                // SAFETY: `id` is published (the caller's, or a published node's parent):
                // its words 1 and 2 (and 3 when it escapes) are written and immutable, at
                // `id << 2` from the region's start less one pool (see `at`).
                let (w1, lo) = unsafe {
                    let p = region.add(((id as usize) << GRANULE_SHIFT) - POOL_SIZE).cast::<u32>();
                    (*p.add(1), *p.add(2))
                };
                let high = w1 >> ID_BITS;
                let hi = if high < ESCAPE {
                    // Relaxed: stored before the first node using it was published.
                    self.highs[high as usize].load(Ordering::Relaxed)
                } else {
                    // SAFETY: as above; an escaping node has its fourth word.
                    unsafe {
                        *region.add(((id as usize) << GRANULE_SHIFT) - POOL_SIZE + 12).cast::<u32>()
                    }
                };
                if lo != f as u32 || u64::from(hi) != (f as u64) >> 32 {
                    return None;
                }
                let parent = w1 & ID_MASK;
                i += 1;
                if parent != below || i == frames.len() {
                    id = parent;
                    break;
                }
                id = below;
            }
        }
        (id == ROOT).then_some(w0.w0)
    }

    /// Whether `id` is a published node, the child `ra` of `parent` (any id is safe to ask
    /// about: it is checked as a caller's handle).
    #[inline(always)]
    fn is_child(&self, id: u32, parent: u32, ra: usize) -> bool {
        self.checked(id).is_some_and(|n| n.parent == parent && n.ra == ra)
    }

    /// Lock-free lookup of the child `ra` of node `parent`.
    #[inline(always)]
    fn child(&self, t: Table, parent: u32, ra: usize) -> Option<u32> {
        let head = t.bucket(node_hash(parent, ra));
        // Acquire pairs with the Release store of the head in `push_locked`: the node it
        // names, and every older node of the chain, are visible.
        let mut id = head.load(Ordering::Acquire);
        while id != 0 {
            // SAFETY: `id` comes from an acquired head or from a published node's link.
            let n = unsafe { self.node(id) };
            if n.parent == parent && n.ra == ra {
                return Some(id);
            }
            id = n.w0 & ID_MASK;
        }
        None
    }

    /// The node of `frames ++ trace(base)`: lock-free down the stored part, then the insert
    /// lock for the rest. Writes `out[i]` = the node of `frames[i..] ++ trace(base)` where
    /// `out` has room. Returns 0 when refused (full, busy).
    ///
    /// A run of frames inserted in one go is a run of adjacent nodes, each the parent of the
    /// next: once one child is found, the next is first looked for in the node right after
    /// it (a load next to the one just made) before its hash bucket (a cache miss per frame
    /// on a table sized for the budget).
    #[inline]
    fn extend(&self, t: Table, base: u32, frames: &[usize], out: &mut [Handle]) -> u32 {
        let mut p = base;
        let mut rest = frames.len();
        let mut after = None;
        while rest > 0 {
            let ra = frames[rest - 1];
            let next = after.filter(|&g| self.is_child(g, p, ra)).or_else(|| self.child(t, p, ra));
            match next {
                Some(c) => {
                    p = c;
                    after = Some(c.wrapping_add(NODE_WORDS));
                }
                None => break,
            }
            rest -= 1;
            if let Some(o) = out.get_mut(rest) {
                *o = Handle::from_id(p);
            }
        }
        if rest == 0 {
            self.hits.incr();
            return p;
        }
        self.insert(t, p, &frames[..rest], out)
    }

    /// The slow path of [`extend`](Self::extend): inserts `frames` (newest first) on node `p`
    /// under the lock, mapping pools outside it.
    #[cold]
    #[inline(never)]
    fn insert(&self, t: Table, mut p: u32, frames: &[usize], out: &mut [Handle]) -> u32 {
        self.misses.fetch_add(1, Ordering::Relaxed); // Relaxed: a statistic.
        let mut rest = frames.len();
        let mut fresh: Option<(NonNull<u8>, usize)> = None;
        let mut map_failed = false;
        loop {
            let guard = match t.lock().lock() {
                Ok(g) => g,
                Err(Busy) => {
                    self.dropped_busy.fetch_add(1, Ordering::Relaxed); // Relaxed: stat.
                    self.release(fresh);
                    return 0;
                }
            };
            let mut stop = None;
            while rest > 0 {
                let ra = frames[rest - 1];
                // Re-check under the lock: another thread may have inserted it meanwhile.
                p = match self.child(t, p, ra) {
                    Some(c) => c,
                    None => match self.push_locked(t, p, ra, &mut fresh) {
                        Ok(c) => c,
                        Err(s) => {
                            stop = Some(s);
                            break;
                        }
                    },
                };
                rest -= 1;
                if let Some(o) = out.get_mut(rest) {
                    *o = Handle::from_id(p);
                }
            }
            if let Some(f) = fresh.take() {
                fresh = self.stash_locked(f);
            }
            drop(guard);
            match stop {
                None => {
                    self.release(fresh);
                    return p;
                }
                Some(Stop::Full) => {
                    self.release(fresh);
                    self.full();
                    return 0;
                }
                Some(Stop::NeedPool) if map_failed => {
                    self.full();
                    return 0;
                }
                Some(Stop::NeedPool) => {
                    // Mapping failed once: retry the lock once, since a racing thread that
                    // took the last budget may have installed its pool.
                    fresh = self.map_pool(MAX_NODE);
                    map_failed = fresh.is_none();
                }
            }
        }
    }

    /// The index of `high` among the high halves, adding it if there is room. Caller holds
    /// the lock.
    fn high_locked(&self, high: u32) -> Option<u32> {
        // Relaxed: `highs` and `highs_len` are only written under the lock, which we hold.
        let n = self.highs_len.load(Ordering::Relaxed);
        if let Some(i) = (0..n).find(|&i| self.highs[i as usize].load(Ordering::Relaxed) == high) {
            return Some(i);
        }
        if n as usize >= HIGHS {
            return None;
        }
        self.highs[n as usize].store(high, Ordering::Relaxed);
        // Release pairs with the Acquire in `checked`: the value before the length. (Other
        // readers reach it through the Release that publishes a node using it.)
        self.highs_len.store(n + 1, Ordering::Release);
        Some(n)
    }

    /// Appends the node `(parent, ra)` and publishes it. Caller holds the lock.
    fn push_locked(
        &self,
        t: Table,
        parent: u32,
        ra: usize,
        fresh: &mut Option<(NonNull<u8>, usize)>,
    ) -> Result<u32, Stop> {
        let high = self.high_locked(((ra as u64) >> 32) as u32);
        let (words, n) = node::encode(parent, ra, high);
        let need = (n + 1) * 4;
        // Relaxed (cursor, spare, pool len): only read and written under the lock, whose
        // Acquire/Release orders them.
        let cur = self.cursor.load(Ordering::Relaxed);
        let (mut pool_no, mut off) = ((cur >> 32) as usize, cur as u32 as usize);
        if pool_no == 0 || off + need > self.pools[pool_no - 1].len.load(Ordering::Relaxed) {
            if pool_no >= MAX_POOLS {
                return Err(Stop::Full);
            }
            let spare = self.spare.load(Ordering::Relaxed);
            let (base, len) = if !spare.is_null() && self.spare_len.load(Ordering::Relaxed) >= need
            {
                self.spare.store(ptr::null_mut(), Ordering::Relaxed);
                (spare, self.spare_len.load(Ordering::Relaxed))
            } else if let Some((p, len)) = fresh.take() {
                (p.as_ptr(), len)
            } else {
                return Err(Stop::NeedPool);
            };
            // Into the pool's place in the region.
            let region = self.region.load(Ordering::Relaxed);
            // SAFETY: pool `pool_no + 1` <= MAX_POOLS has its place at `pool_no * POOL_SIZE`
            // in the region, and `len <= POOL_SIZE`; `base` is a mapping, so non-null.
            let (to, from) = unsafe {
                (
                    NonNull::new_unchecked(region.add(pool_no * POOL_SIZE)),
                    NonNull::new_unchecked(base),
                )
            };
            // SAFETY: `from` is a whole unused mapping of `len` bytes (fresh or the spare,
            // taken from where it was kept), and its place is reserved and unused.
            if !unsafe { sys::move_to(from, len, to) } {
                self.release(Some((from, len)));
                return Err(Stop::Full);
            }
            let base = to.as_ptr();
            let slot = &self.pools[pool_no];
            slot.len.store(len, Ordering::Relaxed);
            // Relaxed: readers reach `base` only after acquiring a `published` mark or a
            // bucket head stored (Release) after this.
            slot.base.store(base, Ordering::Relaxed);
            pool_no += 1;
            off = 0;
        }
        let slot = &self.pools[pool_no - 1];
        // 1. Reserve first: a child forked from here on never overwrites what we write next.
        self.cursor.store(((pool_no as u64) << 32) | (off + need) as u64, Ordering::Relaxed);
        let id = ((pool_no as u32) << OFFSET_BITS) | (off >> GRANULE_SHIFT) as u32;
        let head = t.bucket(node_hash(parent, ra));
        // Relaxed: heads are only stored under the lock, which we hold.
        let next = head.load(Ordering::Relaxed);
        let base = slot.base.load(Ordering::Relaxed);
        // 2. Write the node.
        // SAFETY: `off + need <= len` of this pool, which only we (under the lock) write;
        // the range is past every published node, so no reader looks at it yet.
        unsafe {
            let p = base.add(off).cast::<u32>();
            (*p.cast::<AtomicU32>()).store(next, Ordering::Relaxed);
            ptr::copy_nonoverlapping(words.as_ptr(), p.add(1), n);
        }
        // 3. Release pairs with the Acquire in `checked`: node bytes before the mark.
        slot.published.store(off + need, Ordering::Release);
        // 4. Release pairs with the Acquire in `child`: the node before its id.
        head.store(id, Ordering::Release);
        // Relaxed: statistics.
        self.nodes.fetch_add(1, Ordering::Relaxed);
        self.bytes_used.fetch_add(need as u64, Ordering::Relaxed);
        Ok(id)
    }

    /// Keeps an unused fresh mapping as the spare if there is none; returns it otherwise.
    /// Caller holds the lock.
    fn stash_locked(&self, f: (NonNull<u8>, usize)) -> Option<(NonNull<u8>, usize)> {
        // Relaxed: spare fields are only touched under the lock.
        if self.spare.load(Ordering::Relaxed).is_null() {
            self.spare_len.store(f.1, Ordering::Relaxed);
            self.spare.store(f.0.as_ptr(), Ordering::Relaxed);
            None
        } else {
            Some(f)
        }
    }

    /// Reserves budget for `bytes` (rounded to pages) and returns the reserved amount.
    fn reserve(&self, want: usize, at_least: usize) -> Option<usize> {
        let page = sys::page_size();
        let mut got = 0;
        // Relaxed: a counter; the mapping itself is published by other atomics.
        self.mapped
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                let avail = self.budget.load(Ordering::Relaxed).saturating_sub(m);
                got = want.min(avail) & !(page - 1);
                (got >= at_least && got > 0).then_some(m + got)
            })
            .ok()?;
        Some(got)
    }

    /// Maps a pool of up to [`POOL_SIZE`] bytes that fits a `need`-byte node, within the
    /// budget. Called without the lock.
    fn map_pool(&self, need: usize) -> Option<(NonNull<u8>, usize)> {
        let len = self.reserve(POOL_SIZE, need)?;
        // Populated: the page faults happen here, outside the lock, not while writing
        // nodes under it (a fault costs ~1 us in this VM; other inserters would wait).
        match sys::map(len, true) {
            Some(p) => Some((p, len)),
            None => {
                self.mapped.fetch_sub(len, Ordering::Relaxed); // Relaxed: a counter.
                None
            }
        }
    }

    /// Unmaps an unused fresh pool and returns its budget. Called without the lock.
    fn release(&self, fresh: Option<(NonNull<u8>, usize)>) {
        if let Some((p, len)) = fresh {
            // SAFETY: the mapping came from `map_pool` and was never installed or shared.
            unsafe { sys::unmap(p, len) };
            self.mapped.fetch_sub(len, Ordering::Relaxed); // Relaxed: a counter.
        }
    }

    /// Maps and publishes the table (first save). Called without the lock.
    #[cold]
    fn make_table(&self) -> Option<Table> {
        // Relaxed: the region is published to readers by the table's Release below.
        if self.region.load(Ordering::Relaxed).is_null() {
            let r = sys::reserve(REGION)?;
            // Relaxed: as above; a loser unmaps its own reservation, unused.
            if self
                .region
                .compare_exchange(ptr::null_mut(), r.as_ptr(), Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
            {
                // SAFETY: our own reservation, never shared.
                unsafe { sys::unmap(r, REGION) };
            }
        }
        let budget = self.budget.load(Ordering::Relaxed); // Relaxed: see `set_budget`.
        let bits = table_bits(budget);
        let page = sys::page_size();
        let bytes = table_bytes(bits, page);
        let len = self.reserve(bytes, bytes)?;
        // Populated, like pools: otherwise the first store to each bucket page faults while
        // holding the insert lock. Random hashing touches every page soon anyway.
        let Some(p) = sys::map(len, true) else {
            self.mapped.fetch_sub(len, Ordering::Relaxed); // Relaxed: a counter.
            return None;
        };
        // SAFETY: page 0 of the mapping just made. If the kernel refuses (< 4.14), a child
        // forked while another thread inserts waits out the lock's bound and then gets NONE.
        unsafe { sys::wipe_on_fork(p, page) };
        let tagged =
            p.as_ptr().map_addr(|a| a | bits as usize | (page.trailing_zeros() as usize) << 5);
        // Release (success) pairs with the Acquire in `table`: the zeroed buckets are visible.
        // Acquire (failure) pairs with the winner's Release: its table is visible to us.
        match self.table.compare_exchange(
            ptr::null_mut(),
            tagged,
            Ordering::Release,
            Ordering::Acquire,
        ) {
            Ok(_) => {}
            Err(_) => self.release(Some((p, len))),
        }
        self.table()
    }

    /// Counts a refused save and warns once.
    #[cold]
    fn full(&self) -> Handle {
        self.dropped_full.fetch_add(1, Ordering::Relaxed); // Relaxed: a statistic.
                                                           // Relaxed: only "exactly one thread writes the warning" matters, which the atomic
                                                           // swap gives in any ordering.
        if !self.warned.swap(true, Ordering::Relaxed) {
            // Relaxed: statistics and a budget fixed before the first mapping.
            let budget = self.budget.load(Ordering::Relaxed);
            let (frames, traces) =
                (self.frames.load(Ordering::Relaxed), self.unique.load(Ordering::Relaxed));
            let mut line = Line::new();
            full_warning(&mut line, budget, frames.checked_div(traces).unwrap_or(0));
            sys::write_stderr(line.as_bytes());
        }
        Handle::NONE
    }

    /// Test hook: the insert lock (the table must exist: save something first).
    #[cfg(test)]
    pub(crate) fn lock_for_test(&self) -> &OwnerLock {
        let t = self.table().expect("a save made the table");
        // SAFETY: the lock lives as long as the table, which lives as long as `self`.
        unsafe { &*(t.lock() as *const OwnerLock) }
    }
}

/// The warning line of a full depot of `budget` bytes whose traces average `avg_frames`
/// frames. It names the option that raises the budget (ukasan's `depot_size_mb`, in MiB) and
/// a value to try, or, at [`MAX_BUDGET`], the `depth` that makes stacks shorter.
fn full_warning(w: &mut Line, budget: usize, avg_frames: u64) {
    const MIB: usize = 1 << 20;
    let _ =
        write!(w, "ukasan: stack depot full (budget {budget} bytes): new stacks are not saved; ");
    if budget >= MAX_BUDGET {
        let depth = (avg_frames / 2).clamp(1, MAX_DEPTH as u64);
        let _ = write!(
            w,
            "depot_size_mb={} is the largest: keep fewer frames per stack with \
             UKASAN_OPTIONS=depth={depth} (stored stacks average {avg_frames} frames)",
            MAX_BUDGET / MIB
        );
    } else {
        let want = (2 * budget.div_ceil(MIB)).clamp(1, MAX_BUDGET / MIB);
        let _ = write!(w, "raise it with UKASAN_OPTIONS=depot_size_mb={want} (now ");
        let _ = if budget.is_multiple_of(MIB) {
            write!(w, "{}", budget / MIB)
        } else {
            write!(w, "{budget} bytes")
        };
        let _ = write!(w, ") or `ukasan run -o depot_size_mb={want}`");
    }
    let _ = w.write_str("\n");
}

/// A line of text in a fixed buffer (formatting without allocating); what does not fit is
/// dropped.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn new() -> Line {
        Line { buf: [0; 256], len: 0 }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// `x`, hidden from the optimizer (an empty asm block where there is one): [`Depot::is_path`]'s
/// guess must not be replaced by the loaded value it is compared with.
#[inline(always)]
fn opaque(mut x: u32) -> u32 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: an empty asm block (a comment naming the register): no instruction, no memory.
    unsafe {
        core::arch::asm!("/* {0:e} */", inout(reg) x, options(pure, nomem, nostack))
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as above.
    unsafe {
        core::arch::asm!("/* {0:w} */", inout(reg) x, options(pure, nomem, nostack))
    };
    x
}

/// Low bits of the table pointer that carry `bits` (0..=4) and log2(page size) (5..=9).
const TAG_MASK: usize = 0x3ff;

/// Bytes of the table mapping: the lock page, then the buckets and the lookaside rounded up
/// to pages.
fn table_bytes(bits: u32, page: usize) -> usize {
    page + ((4usize << bits) + (4usize << (bits - LOOKASIDE_SHIFT))).next_multiple_of(page)
}

/// A view of the table mapping.
#[derive(Clone, Copy)]
struct Table {
    base: NonNull<u8>,
    buckets: NonNull<AtomicU32>,
    lookaside: NonNull<AtomicU32>,
    bits: u32,
}

impl Table {
    /// The insert lock at the start of the mapping.
    #[inline]
    fn lock(&self) -> &OwnerLock {
        // SAFETY: page 0 of the table mapping is reserved for the lock; zero bytes are a free
        // `OwnerLock` (a transparent `AtomicUsize`), and the page is page-aligned.
        unsafe { self.base.cast::<OwnerLock>().as_ref() }
    }

    /// The bucket head for hash `h` (its top `bits` bits).
    #[inline(always)]
    fn bucket(&self, h: u64) -> &AtomicU32 {
        let i = (h >> (64 - self.bits)) as usize;
        // SAFETY: `i < 2^bits`, the number of buckets, which live as long as the mapping.
        unsafe { self.buckets.add(i).as_ref() }
    }

    /// The lookaside slot for whole-trace hash `h`.
    #[inline(always)]
    fn lookaside(&self, h: u64) -> &AtomicU32 {
        let i = (h >> (64 - (self.bits - LOOKASIDE_SHIFT))) as usize;
        // SAFETY: `i < 2^(bits - LOOKASIDE_SHIFT)`, the number of lookaside slots.
        unsafe { self.lookaside.add(i).as_ref() }
    }
}

/// log2 of the bucket count for a budget: about one bucket per 128 bytes (ten 12-byte nodes),
/// and the table at most about 1/28 of the budget.
const fn table_bits(budget: usize) -> u32 {
    let target = budget / 128;
    let bits = if target <= 1 { 0 } else { usize::BITS - 1 - target.leading_zeros() };
    if bits < MIN_TABLE_BITS {
        MIN_TABLE_BITS
    } else if bits > MAX_TABLE_BITS {
        MAX_TABLE_BITS
    } else {
        bits
    }
}

impl Default for Depot {
    fn default() -> Self {
        Depot::new(DEFAULT_BUDGET)
    }
}

impl core::fmt::Debug for Depot {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Depot").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl Drop for Depot {
    fn drop(&mut self) {
        // Relaxed throughout: `&mut self` means no other thread uses the depot.
        if let Some(p) = NonNull::new(self.region.load(Ordering::Relaxed)) {
            // SAFETY: the region (with every pool moved into it); no borrow of `self` lives.
            unsafe { sys::unmap(p, REGION) };
        }
        if let Some(p) = NonNull::new(self.spare.load(Ordering::Relaxed)) {
            // SAFETY: the spare mapping is ours and unused.
            unsafe { sys::unmap(p, self.spare_len.load(Ordering::Relaxed)) };
        }
        if let Some(t) = self.table() {
            // SAFETY: the table mapping is ours and no lookup can run any more.
            unsafe { sys::unmap(t.base, table_bytes(t.bits, sys::page_size())) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warning(budget: usize, avg: u64) -> String {
        let mut l = Line::new();
        full_warning(&mut l, budget, avg);
        String::from_utf8(l.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn full_warning_names_the_option_and_a_value() {
        assert_eq!(
            warning(DEFAULT_BUDGET, 20),
            "ukasan: stack depot full (budget 67108864 bytes): new stacks are not saved; \
             raise it with UKASAN_OPTIONS=depot_size_mb=128 (now 64) or \
             `ukasan run -o depot_size_mb=128`\n"
        );
        let w = warning(64 << 10, 16);
        assert!(w.starts_with("ukasan: stack depot full (budget 65536 bytes)"), "{w}");
        assert!(w.contains("UKASAN_OPTIONS=depot_size_mb=2 (now 65536 bytes)"), "{w}");
        assert!(warning(0, 0).contains("depot_size_mb=1 (now 0)"));
        assert!(warning(700 << 20, 9).contains("depot_size_mb=1024 (now 700)"));
        let w = warning(MAX_BUDGET, 40);
        assert!(w.contains("depot_size_mb=1024 is the largest"), "{w}");
        assert!(w.contains("UKASAN_OPTIONS=depth=20 (stored stacks average 40 frames)"), "{w}");
        assert!(warning(usize::MAX, 0).contains("UKASAN_OPTIONS=depth=1 "));
        assert_eq!(warning(usize::MAX, 0).matches('\n').count(), 1);
    }

    #[test]
    fn table_bits_follow_budget_within_bounds() {
        assert_eq!(table_bits(0), MIN_TABLE_BITS);
        assert_eq!(table_bits(DEFAULT_BUDGET), 19);
        assert_eq!(table_bits(usize::MAX), MAX_TABLE_BITS);
    }

    #[test]
    fn same_thread_reentry_during_insert_gets_none_and_hits_still_work() {
        let d = Depot::new(1 << 20);
        let old = d.save(&[1, 2, 3]);
        let guard = d.lock_for_test().lock().unwrap();
        // As a signal handler on this thread would: a new trace cannot be inserted now...
        assert_eq!(d.save(&[4, 5, 6]), Handle::NONE);
        // ...but a stored one is found without the lock.
        assert_eq!(d.save(&[1, 2, 3]), old);
        drop(guard);
        assert!(!d.save(&[4, 5, 6]).is_none());
        assert_eq!(d.stats().dropped_busy, 1);
    }

    #[test]
    fn handles_of_other_pools_and_offsets_fetch_none() {
        let d = Depot::new(1 << 20);
        let h = d.save(&[7; 10]);
        let mut buf = [0; MAX_DEPTH];
        assert_eq!(d.fetch(h, &mut buf), Some(&[7usize; 10][..]));
        let past = Handle::from_id(h.id() + 100);
        assert_eq!(d.fetch(past, &mut buf), None);
        let other_pool = Handle::from_id(h.id() + (1 << OFFSET_BITS));
        assert_eq!(d.fetch(other_pool, &mut buf), None);
        assert_eq!(d.fetch(Handle::from_raw(u32::MAX), &mut buf), None);
        // Every id below the published mark: some trace or None, never a crash or a loop.
        for id in 0..h.id() + 8 {
            if let Some(t) = d.fetch(Handle::from_id(id), &mut buf) {
                assert!(t.len() <= 10);
            }
        }
    }

    #[test]
    fn pools_roll_over_when_full() {
        // 3 pools' worth of 256-frame traces without a shared part (3 KiB each, ~340 per
        // pool).
        let d = Depot::new(8 * POOL_SIZE);
        let mut t = [0usize; MAX_DEPTH];
        let mut handles = Vec::new();
        for i in 0..1000 {
            t[MAX_DEPTH - 1] = i;
            let h = d.save(&t);
            assert!(!h.is_none());
            handles.push(h);
        }
        assert!(d.stats().bytes_mapped > 2 * POOL_SIZE as u64);
        let mut buf = [0; MAX_DEPTH];
        for (i, h) in handles.iter().enumerate() {
            t[MAX_DEPTH - 1] = i;
            assert_eq!(d.fetch(*h, &mut buf), Some(&t[..]));
        }
    }

    #[test]
    fn shared_parts_are_stored_once_and_rare_high_halves_escape() {
        let d = Depot::new(1 << 20);
        let stem: Vec<usize> = (0..40).map(|i| 0x5555_0000_1000 + 16 * i).collect();
        let mut buf = [0; MAX_DEPTH];
        for top in 0..10usize {
            let mut t = vec![0x7fff_0000_2000 + top];
            t.extend(&stem);
            let h = d.save(&t);
            assert_eq!(d.fetch(h, &mut buf), Some(&t[..]));
        }
        let s = d.stats();
        assert_eq!((s.unique_traces, s.frames_stored, s.nodes), (10, 410, 50));
        assert_eq!(s.bytes_used, 50 * 12);
        // 31 high halves fit the table; the next ones take a fourth word.
        for hi in 0..40usize {
            let h = d.save(&[(hi + 1) << 32 | 0x10]);
            assert_eq!(d.fetch(h, &mut buf), Some(&[(hi + 1) << 32 | 0x10][..]));
        }
        let s2 = d.stats();
        assert_eq!(s2.bytes_used - s.bytes_used, 29 * 12 + 11 * 16, "2 highs were known");
    }

    #[test]
    fn save_on_and_suffixes_agree_with_whole_saves() {
        let d = Depot::new(1 << 20);
        let t: Vec<usize> = (0..30).map(|i| 0x40_0000 + 8 * i).collect();
        let mut suffixes = [Handle::NONE; 30];
        let h = d.save_with_suffixes(&t, &mut suffixes);
        assert_eq!(suffixes[0], h);
        for i in 0..30 {
            assert_eq!(d.save(&t[i..]), suffixes[i], "suffix {i}");
            assert_eq!(d.save_on(suffixes[i], 30 - i, &t[..i]), h, "on suffix {i}");
        }
        assert_eq!(d.save_on(Handle::from_id(ROOT), 0, &t), h);
        let new = d.save_on(suffixes[3], 27, &[0x99, 0x98]);
        let mut whole = vec![0x99, 0x98];
        whole.extend(&t[3..]);
        assert_eq!(d.save(&whole), new);
        assert_eq!(d.save_on(Handle::NONE, 0, &t), Handle::NONE);
        assert_eq!(d.save_on(Handle::from_id(h.id() + 50), 0, &t), Handle::NONE);
        assert_eq!(d.save_on(h, MAX_DEPTH, &[1]), Handle::NONE, "too deep");
    }

    #[test]
    fn extend_on_gives_save_ons_handle_without_counting_a_trace() {
        let d = Depot::new(1 << 20);
        let t: Vec<usize> = (0..20).map(|i| 0x50_0000 + 8 * i).collect();
        let base = d.save(&t[12..]);
        let before = d.stats();
        // The older run of the new frames, then the newer one on it: a save in two steps.
        let mid = d.extend_on(base, 8, &t[6..12]);
        assert_eq!(d.stats().unique_traces, before.unique_traces, "a step is not a trace");
        let h = d.save_on(mid, 14, &t[..6]);
        assert_eq!(h, d.save(&t));
        assert_eq!(mid, d.extend_on(base, 8, &t[6..12]), "the same node again");
        let after = d.stats();
        assert_eq!(after.unique_traces, before.unique_traces + 1);
        assert_eq!(after.frames_stored, before.frames_stored + 20);
        assert_eq!(d.extend_on(Handle::NONE, 0, &t), Handle::NONE);
        assert_eq!(d.extend_on(base, MAX_DEPTH, &[1]), Handle::NONE, "too deep");
    }

    #[cfg(not(miri))]
    mod signals {
        use super::*;
        use std::sync::atomic::AtomicU32;

        static D: Depot = Depot::new(1 << 20);
        static FROM_HANDLER: AtomicU32 = AtomicU32::new(u32::MAX);

        extern "C" fn on_signal(_: libc::c_int) {
            // Relaxed: read by the same thread after `raise` returns.
            FROM_HANDLER.store(D.save(&[0xdead, 0xbeef, 0x5160]).to_raw(), Ordering::Relaxed);
        }

        #[test]
        fn a_signal_handler_saves_and_does_not_deadlock_on_its_own_thread() {
            // SAFETY: installs a handler that only calls the async-signal-safe `save`.
            unsafe { libc::signal(libc::SIGUSR2, on_signal as *const () as libc::sighandler_t) };
            D.save(&[1]);
            // While this thread "is inside an insert" the handler gets NONE, not a deadlock.
            let guard = D.lock_for_test().lock().unwrap();
            // SAFETY: raise delivers SIGUSR2 to this thread, whose handler is installed.
            unsafe { libc::raise(libc::SIGUSR2) };
            drop(guard);
            assert_eq!(FROM_HANDLER.load(Ordering::Relaxed), 0);
            // SAFETY: as above.
            unsafe { libc::raise(libc::SIGUSR2) };
            let h = Handle::from_raw(FROM_HANDLER.load(Ordering::Relaxed));
            assert_eq!(D.fetch(h, &mut [0; 8]), Some(&[0xdead, 0xbeef, 0x5160][..]));
        }
    }

    #[cfg(not(miri))]
    #[test]
    fn fork_child_saves_although_another_parent_thread_held_the_lock() {
        static D: Depot = Depot::new(1 << 20);
        D.save(&[1]);
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let g = D.lock_for_test().lock().unwrap();
            locked_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            drop(g);
        });
        locked_rx.recv().unwrap();
        assert_ne!(D.lock_for_test().owner(), 0);
        // SAFETY: the child only calls async-signal-safe code (`save`, `fetch`) and `_exit`.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let h = D.save(&[9, 8, 7]);
            let ok = !h.is_none()
                && D.fetch(h, &mut [0; 8]) == Some(&[9, 8, 7][..])
                && D.save(&[1]) == D.save(&[1]);
            // SAFETY: _exit ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(if ok { 42 } else { 1 }) };
        }
        assert!(pid > 0);
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        assert!(libc::WIFEXITED(status), "child died: {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 42);
    }
}
