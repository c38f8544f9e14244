//! The depot: a hash table of chained records in append-only mmap pools.
//!
//! Memory layout:
//! - **Pools**: up to [`MAX_POOLS`] mappings of at most [`POOL_SIZE`] bytes, filled front to
//!   back with records and never freed before the depot is dropped.
//! - **Record**: a 16-byte [`Header`] `{hash: u64, next: u32, len: u32}` followed by `len`
//!   frames as `usize`, 8-byte aligned. `next` is the handle of the previous head of the same
//!   bucket (0 ends the chain).
//! - **Table**: one mapping made on the first insert: page 0 holds the insert lock and is
//!   marked `MADV_WIPEONFORK` (a forked child starts with the lock free), then `2^bits`
//!   `AtomicU32` bucket heads, sized from the budget (about one bucket per 256 budget bytes).
//!   The table pointer carries `bits` and log2(page size) in its low (page offset) bits, so
//!   the whole layout publishes with one atomic store.
//!
//! Concurrency: records are immutable once published. An insert, under [`OwnerLock`],
//! 1. moves the cursor past the new record (so a child forked mid-insert, which starts with
//!    the lock free, never reuses the half-written record),
//! 2. writes the record,
//! 3. raises the pool's `published` mark (Release; `fetch` checks handles against it),
//! 4. stores the record's handle as the bucket head (Release; lookups Acquire it).
//!
//! Stopped at any point, the depot stays consistent: at worst some pool bytes are wasted.

use core::fmt::Write;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::hash::hash;
use super::lock::{Busy, OwnerLock};
use super::stats::{ShardedCounter, Stats};
use super::{sys, Handle};

/// Longest trace stored; longer input is truncated to its first (newest) `MAX_DEPTH` frames.
pub const MAX_DEPTH: usize = 256;
/// Budget of the process-global depot unless [`super::set_budget`] says otherwise.
pub const DEFAULT_BUDGET: usize = 64 << 20;
/// Size of a full pool mapping (the last pool within the budget may be smaller).
pub const POOL_SIZE: usize = 1 << POOL_SHIFT;
/// Most pools a depot can hold (so at most `MAX_POOLS * POOL_SIZE` bytes of records).
pub const MAX_POOLS: usize = (1 << POOL_BITS) - 1;
/// Largest budget worth giving a depot (1 GiB): the largest table and about 500 pools;
/// [`MAX_POOLS`] pools of [`POOL_SIZE`] would not fit much more. ukasan's `depot_size_mb`
/// option accepts up to this.
pub const MAX_BUDGET: usize = 1 << 30;

const POOL_SHIFT: u32 = 21;
/// Records start on 8-byte granules; the handle stores the offset in granules.
const GRANULE_SHIFT: u32 = 3;
pub(crate) const OFFSET_BITS: u32 = POOL_SHIFT - GRANULE_SHIFT;
pub(crate) const POOL_BITS: u32 = 32 - Handle::EXTRA_BITS - OFFSET_BITS;
const HEADER: usize = core::mem::size_of::<Header>();
const MIN_TABLE_BITS: u32 = 8;
const MAX_TABLE_BITS: u32 = 22;

/// A record's header; the frames follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Header {
    hash: u64,
    next: u32,
    len: u32,
}

const _: () = assert!(HEADER == 16 && OFFSET_BITS + POOL_BITS + Handle::EXTRA_BITS == 32);

/// One pool: its mapping and how far records in it are published.
#[derive(Debug)]
struct Pool {
    base: AtomicPtr<u8>,
    len: AtomicUsize,
    /// Bytes from `base` that hold fully written records.
    published: AtomicUsize,
}

/// A deduplicating store of stack traces; see the crate docs.
pub struct Depot {
    /// Bucket array, tagged with log2(bucket count) in its low bits; null until first insert.
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
    hits: ShardedCounter,
    misses: AtomicU64,
    unique: AtomicU64,
    frames: AtomicU64,
    bytes_used: AtomicU64,
    dropped_full: AtomicU64,
    dropped_busy: AtomicU64,
    truncated: AtomicU64,
    warned: AtomicBool,
}

/// What an insert attempt under the lock came to.
enum Insert {
    Done(Handle),
    /// The current pool is full and there is no spare: map one (outside the lock) and retry.
    NeedPool,
    /// Every pool slot is taken: the depot is full whatever the budget says.
    Full,
}

impl Depot {
    /// An empty depot that will map at most `budget_bytes` (pools and table together).
    ///
    /// Maps nothing until the first [`save`](Self::save) of a new trace.
    pub const fn new(budget_bytes: usize) -> Depot {
        Depot {
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
            hits: ShardedCounter::new(),
            misses: AtomicU64::new(0),
            unique: AtomicU64::new(0),
            frames: AtomicU64::new(0),
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
    /// Async-signal-safe, never allocates, never panics. A hit costs a hash and a compare;
    /// a miss takes the insert lock and may map a pool.
    #[inline]
    pub fn save(&self, frames: &[usize]) -> Handle {
        let frames = if frames.len() > MAX_DEPTH {
            self.truncated.fetch_add(1, Ordering::Relaxed); // Relaxed: a statistic.
            &frames[..MAX_DEPTH]
        } else {
            frames
        };
        let h = hash(frames);
        if let Some(found) = self.table().and_then(|t| self.lookup(t, h, frames)) {
            self.hits.incr();
            return found;
        }
        self.insert(frames, h)
    }

    /// The trace behind `h` (its extra bits ignored), without copying; `None` for
    /// [`Handle::NONE`] and for handles this depot did not hand out.
    ///
    /// Async-signal-safe, lock-free, never allocates, never panics. A handle must reach the
    /// fetching thread through some synchronization (as any value would); a handle made up
    /// or from another depot gives `None` or some other trace, never undefined behavior.
    pub fn fetch(&self, h: Handle) -> Option<&[usize]> {
        let id = h.id();
        let pool = (id >> OFFSET_BITS) as usize;
        let off = ((id & ((1 << OFFSET_BITS) - 1)) as usize) << GRANULE_SHIFT;
        let slot = self.pools.get(pool.checked_sub(1)?)?;
        // Acquire pairs with the Release store of `published` in `insert_locked`: the
        // record bytes below the mark, and the pool's `base`, are visible.
        let published = slot.published.load(Ordering::Acquire);
        if off + HEADER > published {
            return None;
        }
        // Relaxed: `base` was stored before the `published` Release we acquired.
        let base = slot.base.load(Ordering::Relaxed);
        // SAFETY: `off + HEADER <= published <= len` of this pool, `off` is 8-aligned and the
        // bytes are written and immutable (see the Acquire above).
        let header = unsafe { base.add(off).cast::<Header>().read() };
        let len = header.len as usize;
        if len > MAX_DEPTH || off + HEADER + len * core::mem::size_of::<usize>() > published {
            return None;
        }
        // SAFETY: checked just above that the `len` frames lie below the published mark;
        // they are never written again while `self` lives.
        Some(unsafe { core::slice::from_raw_parts(base.add(off + HEADER).cast::<usize>(), len) })
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        // Relaxed everywhere: statistics, no memory is published through them.
        let hits = self.hits.sum();
        Stats {
            unique_traces: self.unique.load(Ordering::Relaxed),
            frames_stored: self.frames.load(Ordering::Relaxed),
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

    /// The table, if made yet.
    #[inline]
    fn table(&self) -> Option<Table> {
        // Acquire pairs with the Release CAS in `make_table`: the zeroed mapping is visible.
        let t = self.table.load(Ordering::Acquire);
        let tag = t.addr() & TAG_MASK;
        let base = NonNull::new(t.map_addr(|a| a & !TAG_MASK))?;
        let page = 1usize << (tag >> 5);
        // SAFETY: the mapping is one page (the lock) followed by the buckets.
        let buckets = unsafe { base.add(page) }.cast();
        Some(Table { base, buckets, bits: (tag & 31) as u32 })
    }

    /// The record behind a handle taken from a bucket chain.
    ///
    /// # Safety
    /// `id` was read (Acquire, or under the lock) from a bucket head or a published record's
    /// `next`, so it names a published record.
    #[inline]
    unsafe fn record(&self, id: u32) -> (Header, *const usize) {
        let pool = (id >> OFFSET_BITS) as usize - 1;
        let off = ((id & ((1 << OFFSET_BITS) - 1)) as usize) << GRANULE_SHIFT;
        // SAFETY: the caller guarantees a published record, so `pool` is in range.
        let slot = unsafe { self.pools.get_unchecked(pool) };
        // Relaxed: `base` was stored before the Release that published the record, which
        // the caller acquired.
        let p = slot.base.load(Ordering::Relaxed);
        // SAFETY: a published record lies inside its pool; header then frames, 8-aligned.
        unsafe { (p.add(off).cast::<Header>().read(), p.add(off + HEADER).cast::<usize>()) }
    }

    /// Lock-free search of `frames` in its bucket chain.
    #[inline]
    fn lookup(&self, table: Table, h: u64, frames: &[usize]) -> Option<Handle> {
        let head = table.bucket(h);
        // Acquire pairs with the Release store of the head in `insert_locked`: the record it
        // names, and transitively every older record of the chain, are fully visible.
        let mut id = head.load(Ordering::Acquire);
        while id != 0 {
            // SAFETY: `id` comes from an acquired head or from a published record.
            let (hd, fr) = unsafe { self.record(id) };
            if hd.hash == h && hd.len as usize == frames.len() {
                // SAFETY: the record holds `len` frames, immutable once published.
                let stored = unsafe { core::slice::from_raw_parts(fr, frames.len()) };
                if stored == frames {
                    return Some(Handle::from_id(id));
                }
            }
            id = hd.next;
        }
        None
    }

    /// The slow path: make the table if needed, then insert under the lock, mapping pools
    /// outside it.
    #[cold]
    #[inline(never)]
    fn insert(&self, frames: &[usize], h: u64) -> Handle {
        self.misses.fetch_add(1, Ordering::Relaxed); // Relaxed: a statistic.
        let Some(table) = self.table().or_else(|| self.make_table()) else {
            return self.full();
        };
        let need = (HEADER + core::mem::size_of_val(frames)).next_multiple_of(8);
        let mut fresh: Option<(NonNull<u8>, usize)> = None;
        let mut map_failed = false;
        loop {
            let guard = match table.lock().lock() {
                Ok(g) => g,
                Err(Busy) => {
                    self.dropped_busy.fetch_add(1, Ordering::Relaxed); // Relaxed: stat.
                    self.release(fresh);
                    return Handle::NONE;
                }
            };
            // Re-check under the lock: another thread may have inserted it meanwhile.
            let outcome = match self.lookup(table, h, frames) {
                Some(found) => Insert::Done(found),
                None => self.insert_locked(table, h, frames, need, &mut fresh),
            };
            if let Some(f) = fresh.take() {
                fresh = self.stash_locked(f);
            }
            drop(guard);
            match outcome {
                Insert::Done(handle) => {
                    self.release(fresh);
                    return handle;
                }
                Insert::Full => {
                    self.release(fresh);
                    return self.full();
                }
                Insert::NeedPool if map_failed => return self.full(),
                Insert::NeedPool => {
                    // Mapping failed once: retry the lock once, since a racing thread that
                    // took the last budget may have installed its pool.
                    fresh = self.map_pool(need);
                    map_failed = fresh.is_none();
                }
            }
        }
    }

    /// Appends a record and publishes it. Caller holds the lock.
    fn insert_locked(
        &self,
        table: Table,
        h: u64,
        frames: &[usize],
        need: usize,
        fresh: &mut Option<(NonNull<u8>, usize)>,
    ) -> Insert {
        // Relaxed (cursor, spare, pool len): only read and written under the lock, whose
        // Acquire/Release orders them.
        let cur = self.cursor.load(Ordering::Relaxed);
        let (mut pool_no, mut off) = ((cur >> 32) as usize, cur as u32 as usize);
        if pool_no == 0 || off + need > self.pools[pool_no - 1].len.load(Ordering::Relaxed) {
            if pool_no >= MAX_POOLS {
                return Insert::Full;
            }
            let spare = self.spare.load(Ordering::Relaxed);
            let (base, len) = if !spare.is_null() && self.spare_len.load(Ordering::Relaxed) >= need
            {
                self.spare.store(ptr::null_mut(), Ordering::Relaxed);
                (spare, self.spare_len.load(Ordering::Relaxed))
            } else if let Some((p, len)) = fresh.take() {
                (p.as_ptr(), len)
            } else {
                return Insert::NeedPool;
            };
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
        let head = table.bucket(h);
        // Relaxed: heads are only stored under the lock, which we hold.
        let next = head.load(Ordering::Relaxed);
        let base = slot.base.load(Ordering::Relaxed);
        // 2. Write the record.
        // SAFETY: `off + need <= len` of this pool, which only we (under the lock) write;
        // the range is past every published record, so no reader looks at it yet.
        unsafe {
            base.add(off).cast::<Header>().write(Header {
                hash: h,
                next,
                len: frames.len() as u32,
            });
            ptr::copy_nonoverlapping(frames.as_ptr(), base.add(off + HEADER).cast(), frames.len());
        }
        // 3. Release pairs with the Acquire in `fetch`: record bytes before the mark.
        slot.published.store(off + need, Ordering::Release);
        // 4. Release pairs with the Acquire in `lookup`: the record before its handle.
        head.store(id, Ordering::Release);
        // Relaxed: statistics.
        self.unique.fetch_add(1, Ordering::Relaxed);
        self.frames.fetch_add(frames.len() as u64, Ordering::Relaxed);
        self.bytes_used.fetch_add(need as u64, Ordering::Relaxed);
        Insert::Done(Handle::from_id(id))
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

    /// Maps a pool of up to [`POOL_SIZE`] bytes that fits a `need`-byte record, within the
    /// budget. Called without the lock.
    fn map_pool(&self, need: usize) -> Option<(NonNull<u8>, usize)> {
        let len = self.reserve(POOL_SIZE, need)?;
        // Populated: the page faults happen here, outside the lock, not while writing
        // records under it (a fault costs ~1 us in this VM; other inserters would wait).
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

    /// Maps and publishes the bucket table (first insert). Called without the lock.
    #[cold]
    fn make_table(&self) -> Option<Table> {
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

/// Low bits of the table pointer that carry `bits` (0..=4) and log2(page size) (5..=9).
const TAG_MASK: usize = 0x3ff;

/// Bytes of the table mapping: the lock page, then the buckets rounded up to pages.
fn table_bytes(bits: u32, page: usize) -> usize {
    page + (4usize << bits).next_multiple_of(page)
}

/// A view of the table mapping.
#[derive(Clone, Copy)]
struct Table {
    base: NonNull<u8>,
    buckets: NonNull<AtomicU32>,
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
    #[inline]
    fn bucket(&self, h: u64) -> &AtomicU32 {
        let i = (h >> (64 - self.bits)) as usize;
        // SAFETY: `i < 2^bits`, the number of buckets, which live as long as the mapping.
        unsafe { self.buckets.add(i).as_ref() }
    }
}

/// log2 of the bucket count for a budget: about one bucket per 256 bytes (an average record
/// of ~30 frames), and the table at most 1/16 of the budget.
const fn table_bits(budget: usize) -> u32 {
    let target = budget / 256;
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
        for slot in &self.pools {
            if let Some(p) = NonNull::new(slot.base.load(Ordering::Relaxed)) {
                // SAFETY: an installed pool of `len` bytes; no borrow of `self` is alive.
                unsafe { sys::unmap(p, slot.len.load(Ordering::Relaxed)) };
            }
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
