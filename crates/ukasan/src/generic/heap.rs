//! The detector's own heap: size classes in regions of one reserved address range, 16 bytes
//! of metadata per slot out of line, per-thread caches with no lock on the fast path.
//!
//! ```text
//! space:  | region of class 0 | region of class 1 | ... | region of class CLASSES-1 |
//! region: | slot 0 (pad) | slot 1 | slot 2 | ... ->          <- ... | meta 2 | meta 1 | meta 0 |
//! slot:   | object (size bytes) | gap: redzone, at least 16 bytes                          |
//! ```
//!
//! - **Space**: one `mmap(MAP_NORESERVE)` of `CLASSES << shift` bytes (4 GiB per class, or
//!   `heap_region_mb`, when the system allows, smaller otherwise), never from the backing
//!   allocator; pages are committed by first touch. A pointer is ours when it lies in the
//!   space; its class is `offset >> shift` and its slot index one multiplication away
//!   ([`Class::index`]).
//! - **Slots** hold an object at their start and redzone after it. The last 16 bytes of a slot
//!   are always redzone (free slots included), so the bytes before an object are checked as
//!   its left redzone: the gap after object `k` is split between `k` (its right redzone, the
//!   first part) and `k + 1` (its left one, the last `min(16, gap / 2)` bytes). Slot 0 of each
//!   region is never handed out, so the first object has a left redzone too.
//! - **Metadata** ([`Meta`]), 16 bytes per slot at the top of the region: state, family,
//!   flags, alignment, requested size, and the allocation track {thread, stack handle}. The
//!   free track goes into the freed object's body ([`crate::generic`]).
//! - **Per-thread caches** ([`Cache`]): an array of free slots per class, mapped per thread and
//!   reached through one thread-local pointer; refilled from and drained to the class's central
//!   list (a spin lock per class, taken once per batch). A `pthread` key destructor returns a
//!   thread's cache at exit; a thread that allocates after that (other destructors) uses one
//!   shared, locked cache.

use crate::sys::{thread, SpinLock};
use core::ptr::null_mut;
use core::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering};

/// Number of size classes.
pub const CLASSES: usize = 51;
/// Largest slot: objects whose size plus redzone exceed it are mapped on their own.
pub const MAX_SLOT: usize = 1 << 17;
/// Bytes at the end of every slot that are always redzone.
pub const TAIL: usize = 16;
/// Most slots a thread caches per class.
pub const CACHE_MAX: usize = 64;
/// Largest alignment served from size classes (larger ones are mapped on their own).
pub const MAX_ALIGN: usize = 4096;

/// Slot size of class `c`: 32 to 256 by 16, then four classes per power of two up to
/// [`MAX_SLOT`] (ASan's size class map, whose spacing keeps internal waste under 25%).
#[inline]
pub const fn class_size(c: usize) -> usize {
    SIZES[c] as usize
}

const fn size_formula(c: usize) -> usize {
    if c < 15 {
        (c + 2) * 16
    } else {
        let k = c - 15;
        (5 + k % 4) << (6 + k / 4)
    }
}

const SIZES: [u32; CLASSES] = {
    let mut t = [0u32; CLASSES];
    let mut c = 0;
    while c < CLASSES {
        t[c] = size_formula(c) as u32;
        c += 1;
    }
    t
};

const CAPS: [u8; CLASSES] = {
    let mut t = [0u8; CLASSES];
    let mut c = 0;
    while c < CLASSES {
        let n = MAX_SLOT / size_formula(c);
        t[c] = if n < 4 {
            4
        } else if n > CACHE_MAX {
            CACHE_MAX as u8
        } else {
            n as u8
        };
        c += 1;
    }
    t
};

/// The smallest class whose slots hold `need` bytes (1..=[`MAX_SLOT`]).
#[inline]
pub fn class_for(need: usize) -> usize {
    if need <= 256 {
        return need.max(32).div_ceil(16) - 2;
    }
    let l = (usize::BITS - 1 - (need - 1).leading_zeros()) as usize;
    15 + (l - 8) * 4 + (((need - 1) >> (l - 2)) & 3)
}

/// The class for `need` bytes aligned to `align` (a power of two), if one serves it: slots
/// start at multiples of their size from an aligned region base, so the class size must be
/// a multiple of the alignment.
#[inline]
pub fn class_for_aligned(need: usize, align: usize) -> Option<usize> {
    if need > MAX_SLOT || align > MAX_ALIGN {
        return None;
    }
    let mut c = class_for(need);
    // `align` is a power of two: a mask, not a division.
    while c < CLASSES && class_size(c) & (align - 1) != 0 {
        c += 1;
    }
    (c < CLASSES).then_some(c)
}

/// Slot states.
pub mod state {
    /// Never used, or released from the quarantine.
    pub const FREE: u8 = 0;
    /// Allocated.
    pub const LIVE: u8 = 1;
    /// Freed, poisoned, in the quarantine.
    pub const QUARANTINED: u8 = 2;
    /// Being freed, evicted or checked by one thread (others wait for it to end).
    pub const BUSY: u8 = 3;
    /// Freed from a context that could not take it back (a signal handler interrupting the
    /// runtime): never reused.
    pub const LOST: u8 = 4;
}

/// Flag in [`Meta::bits`]: allocated by the dynamic loader (a root, never a leak).
pub const M_LOADER: u8 = 1 << 2;
/// Flag in [`Meta::bits`]: the quarantined object's inner pages were given back to the
/// system at its free (see `generic::zap_range`); cleared by the next allocation.
pub const M_ZAPPED: u8 = 1 << 3;

/// Flag in [`Meta::align_log`]: a tag-check fault on this slot was reported and the access
/// let through (hw-tags mode); damage found later is that bug, repaired without a second
/// report. Cleared by the next allocation.
pub const A_REPORTED: u8 = 1 << 7;

/// The 16 bytes of metadata of one slot.
#[derive(Debug)]
#[repr(C, align(16))]
pub struct Meta {
    /// One of [`state`].
    pub state: AtomicU8,
    /// Family (bits 0-1) and `M_*` flags.
    pub bits: AtomicU8,
    /// log2 of the requested alignment (bits 0-5), and [`A_REPORTED`].
    pub align_log: AtomicU8,
    /// Index of the runtime that owns the object.
    pub owner: AtomicU8,
    /// Requested size.
    pub size: AtomicU32,
    /// Allocating thread.
    pub tid: AtomicU32,
    /// Allocation stack (raw depot handle, 0: none).
    pub stack: AtomicU32,
}

const _: () = assert!(core::mem::size_of::<Meta>() == 16);

impl Meta {
    /// Current state (Acquire: pairs with the Release stores that publish a state).
    #[inline]
    pub fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    /// Moves `from` -> [`state::BUSY`], waiting while another thread holds the slot busy;
    /// `Err(current)` when the slot is in another state.
    #[inline]
    pub fn take(&self, from: u8) -> Result<(), u8> {
        let mut spins = 0u32;
        loop {
            // AcqRel: Acquire sees the fields the previous owner wrote; Release orders ours.
            match self.state.compare_exchange(
                from,
                state::BUSY,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(state::BUSY) if spins < 1 << 24 => {
                    spins += 1;
                    core::hint::spin_loop();
                }
                Err(s) => return Err(s),
            }
        }
    }

    /// Publishes a state (Release: the slot's fields and bytes written before are visible to
    /// whoever reads it with [`Meta::state`] or [`Meta::take`]).
    #[inline]
    pub fn set(&self, s: u8) {
        self.state.store(s, Ordering::Release);
    }

    /// Requested size.
    #[inline]
    pub fn size(&self) -> usize {
        // Relaxed: fields are published by the state's Release store.
        self.size.load(Ordering::Relaxed) as usize
    }
}

/// A central free list: slots linked through their first word.
struct Central {
    /// The list's first slot (0: empty). A free slot's first word links to the next.
    head: usize,
    /// Its last slot (0: empty): slots whose pages were given back join the list there.
    tail: usize,
    /// Slots at the head of the list whose pages are resident (decommitting classes only,
    /// see [`Heap::drain`]): a refill takes them before the cold ones behind.
    dirty: usize,
    /// Slots (index) up to which the region's pages, and their metadata's, are committed by
    /// [`Heap::prefault`].
    ahead: usize,
}

/// One size class.
struct Class {
    central: SpinLock<Central>,
    /// Slots carved from the region so far (slot 0, the pad, included once the region is used).
    carved: AtomicUsize,
}

/// Where a pointer of the space lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    /// Class.
    pub class: usize,
    /// Slot index in the class's region.
    pub index: usize,
    /// Slot start.
    pub slot: usize,
}

/// The heap (one per process, shared by every runtime).
pub struct Heap {
    base: AtomicUsize,
    shift: AtomicUsize,
    /// 0: not set up, 1: being set up, 2: ready, 3: unavailable.
    ready: AtomicU8,
    classes: [Class; CLASSES],
    key: AtomicU32,
    /// Caches of exited threads, for reuse.
    pool: SpinLock<*mut Cache>,
    /// The cache of threads whose own cache was returned at exit (null until needed).
    orphan: SpinLock<*mut Cache>,
    /// Thread caches mapped so far (statistics).
    caches_mapped: AtomicUsize,
    /// The system's page size (set up in `init`).
    page: AtomicUsize,
    /// Bytes of free slots' pages given back to the system (statistics).
    decommitted: AtomicUsize,
    /// Bytes of the resident free slots in the central lists of decommitting classes
    /// (every class's `Central::dirty` slots), held under [`DIRTY_MAX`].
    dirty_bytes: AtomicUsize,
}

/// Slots of at least this many pages give the whole pages inside them back to the system
/// when they go to the central list over [`DIRTY_MAX`] (see `Heap::drain`).
const DECOMMIT_PAGES: usize = 3;

/// Bytes of free slots of decommitting classes the central lists keep resident, across the
/// heap. A program that keeps cycling large buffers through the quarantine (git's zlib
/// streams: the quarantine evicts 2 MiB at a time into the lists, and the next allocations
/// take them back) reuses them with no page fault; one that freed a phase's worth of large
/// objects has the rest of them given back.
const DIRTY_MAX: usize = 16 << 20;

/// The stretch of a class's slots (and of their metadata) committed in one call by
/// `Heap::prefault`.
const PREFAULT_BYTES: usize = 64 << 10;

// SAFETY: the raw pointers behind the spin locks are caches owned by the heap; the locks
// serialize access to them.
unsafe impl Sync for Heap {}

impl core::fmt::Debug for Heap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Heap").field("base", &self.base).finish_non_exhaustive()
    }
}

/// The process's heap.
pub static HEAP: Heap = Heap::new();

/// A thread's cache: free slots per class, and the runtimes' quarantine batches.
#[repr(C)]
pub struct Cache {
    n: [u32; CLASSES],
    slots: [[usize; CACHE_MAX]; CLASSES],
    /// Quarantine batch being filled, per runtime index ([`super::quarantine`]).
    pub q: [*mut super::quarantine::Batch; super::MAX_RUNTIMES],
    next: *mut Cache,
}

/// Most slots moved per refill (half a cache).
fn batch(c: usize) -> usize {
    cache_cap(c) / 2
}

/// Slots a thread caches for class `c`: 64, fewer for large slots (at most ~128 KiB each).
#[inline]
fn cache_cap(c: usize) -> usize {
    CAPS[c] as usize
}

impl Heap {
    const fn new() -> Heap {
        #[allow(clippy::declare_interior_mutable_const)]
        const CLASS: Class = Class {
            central: SpinLock::new(Central { head: 0, tail: 0, dirty: 0, ahead: 0 }),
            carved: AtomicUsize::new(0),
        };
        Heap {
            base: AtomicUsize::new(0),
            shift: AtomicUsize::new(0),
            ready: AtomicU8::new(0),
            classes: [CLASS; CLASSES],
            key: AtomicU32::new(0),
            pool: SpinLock::new(null_mut()),
            orphan: SpinLock::new(null_mut()),
            caches_mapped: AtomicUsize::new(0),
            page: AtomicUsize::new(0),
            decommitted: AtomicUsize::new(0),
            dirty_bytes: AtomicUsize::new(0),
        }
    }

    /// Reserves the space (once), `1 << region_log2` bytes per class at most (less when the
    /// system refuses, down to 16 MiB); false when no address range could be reserved (then
    /// every object is mapped on its own).
    #[cold]
    pub fn init(&self, region_log2: u32) -> bool {
        // Acquire pairs with the Release stores of the outcome below.
        match self.ready.compare_exchange(0, 1, Ordering::Acquire, Ordering::Acquire) {
            Ok(_) => {}
            Err(1) => {
                while self.ready.load(Ordering::Acquire) == 1 {
                    core::hint::spin_loop();
                }
                return self.ready.load(Ordering::Acquire) == 2;
            }
            Err(s) => return s == 2,
        }
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: `thread_exit` has the destructor signature; `key` is written by the call.
        let key_ok = unsafe { libc::pthread_key_create(&mut key, Some(thread_exit)) } == 0;
        // Refused: 4x less each time, down to 2^24.
        let mut shift = region_log2.clamp(24, 32) as usize;
        let base = loop {
            // Readable and writable, committed on first touch.
            if let Some(b) = crate::sys::map(CLASSES << shift, 1 << shift, true) {
                break Some(b as usize);
            }
            if shift == 24 {
                break None;
            }
            shift = (shift - 2).max(24);
        };
        // Hw-tags mode: the whole space taggable (pages get tag storage as they are touched).
        if let Some(b) = base.filter(|_| crate::hwtags::on()) {
            crate::hwtags::protect_space(b, CLASSES << shift);
        }
        let ok = key_ok && base.is_some();
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page > 0 && (page as usize).is_power_of_two() {
            // Relaxed: published by the Release store of `ready`.
            self.page.store(page as usize, Ordering::Relaxed);
        }
        if ok {
            // Relaxed: published by the Release store of `ready`.
            self.key.store(key, Ordering::Relaxed);
            self.shift.store(shift, Ordering::Relaxed);
            self.base.store(base.unwrap_or(0), Ordering::Relaxed);
        }
        // Release pairs with the Acquire loads of `ready`.
        self.ready.store(if ok { 2 } else { 3 }, Ordering::Release);
        ok
    }

    /// Whether the space is set up.
    #[inline]
    pub fn ready(&self) -> bool {
        // Acquire pairs with the Release store in `init`.
        self.ready.load(Ordering::Acquire) == 2
    }

    #[inline]
    fn geometry(&self) -> (usize, usize) {
        // Relaxed: written before `ready` was published, read after `ready()` was seen.
        (self.base.load(Ordering::Relaxed), self.shift.load(Ordering::Relaxed))
    }

    /// Start of class `c`'s region.
    #[inline]
    pub fn region(&self, c: usize) -> usize {
        let (base, shift) = self.geometry();
        base + (c << shift)
    }

    /// Slots that fit in one region of class `c` (slot and metadata).
    #[inline]
    pub fn capacity(&self, c: usize) -> usize {
        (1usize << self.geometry().1) / (class_size(c) + 16)
    }

    /// The metadata of slot `i` of class `c`.
    #[inline]
    pub fn meta(&self, c: usize, i: usize) -> &Meta {
        let (base, shift) = self.geometry();
        let end = base + ((c + 1) << shift);
        // SAFETY: `i` < capacity(c), so the record lies in the region's mapped, writable top;
        // Meta is atomics only (any bit pattern, zero = FREE).
        unsafe { &*((end - (i + 1) * 16) as *const Meta) }
    }

    /// Where `p` lands if it is in the space and in a carved slot.
    #[inline]
    pub fn locate(&self, p: usize) -> Option<Loc> {
        let (base, shift) = self.geometry();
        let off = p.wrapping_sub(base);
        if base == 0 || off >= CLASSES << shift {
            return None;
        }
        let class = off >> shift;
        let roff = off & ((1 << shift) - 1);
        let index = index(roff, class);
        // Acquire pairs with the Release store in `carve`: the slot's tail is written.
        if index == 0 || index >= self.classes[class].carved.load(Ordering::Acquire) {
            return None;
        }
        Some(Loc { class, index, slot: base + (class << shift) + index * class_size(class) })
    }

    /// Carved slots of class `c` (index 0 is the pad).
    #[inline]
    pub fn carved(&self, c: usize) -> usize {
        // Acquire pairs with the Release store in `carve`.
        self.classes[c].carved.load(Ordering::Acquire)
    }

    /// The lowest and highest address of the space (for leak roots and tests).
    pub fn bounds(&self) -> (usize, usize) {
        let (base, shift) = self.geometry();
        (base, base + (CLASSES << shift))
    }

    /// Thread caches mapped so far (a thread's cache is reused by later threads once it
    /// exits).
    pub fn caches_mapped(&self) -> usize {
        // Relaxed: a statistic.
        self.caches_mapped.load(Ordering::Relaxed)
    }

    /// Bytes of the space in use: carved slots and their metadata.
    pub fn bytes_carved(&self) -> usize {
        if !self.ready() {
            return 0;
        }
        (0..CLASSES).map(|c| self.carved(c) * (class_size(c) + 16)).sum()
    }

    /// Carved slots of class `c` by state: free, live, quarantined, other (busy, lost).
    pub fn census(&self, c: usize) -> [usize; 4] {
        let mut n = [0; 4];
        if self.ready() {
            for i in 1..self.carved(c) {
                let k = match self.meta(c, i).state() {
                    state::FREE => 0,
                    state::LIVE => 1,
                    state::QUARANTINED => 2,
                    _ => 3,
                };
                n[k] += 1;
            }
        }
        n
    }

    /// A free slot of class `c` for this thread, or `None` when the region is full.
    #[inline]
    pub fn alloc(&self, c: usize) -> Option<usize> {
        self.with_cache(|k| {
            if k.n[c] == 0 {
                self.refill(k, c);
            }
            let n = k.n[c] as usize;
            if n == 0 {
                return None;
            }
            k.n[c] -= 1;
            Some(k.slots[c][n - 1])
        })
        .flatten()
    }

    /// Gives back a free slot of class `c` (state already [`state::FREE`], tail intact);
    /// without a cache (no memory at all) the slot is lost.
    #[inline]
    pub fn release(&self, c: usize, slot: usize) {
        let _ = self.with_cache(|k| self.release_to(k, c, slot));
    }

    /// Gives back a free slot to cache `k`.
    #[inline]
    pub fn release_to(&self, k: &mut Cache, c: usize, slot: usize) {
        if k.n[c] as usize >= cache_cap(c) {
            self.drain(k, c, batch(c));
        }
        let n = k.n[c] as usize;
        k.slots[c][n] = slot;
        k.n[c] += 1;
    }

    /// Runs `f` on this thread's cache (the shared one, locked, after the thread's own was
    /// returned at exit); `None` when no memory for a cache could be mapped.
    #[inline]
    pub fn with_cache<R>(&self, f: impl FnOnce(&mut Cache) -> R) -> Option<R> {
        let k = thread().cache.get() as *mut Cache;
        if !k.is_null() {
            // SAFETY: the thread's own cache, used only by this thread, and not re-entered
            // (the runtime's re-entrancy guard is held by every caller).
            return Some(f(unsafe { &mut *k }));
        }
        self.with_cache_slow(f)
    }

    #[cold]
    fn with_cache_slow<R>(&self, f: impl FnOnce(&mut Cache) -> R) -> Option<R> {
        if !thread().exited.get() {
            // A thread's first allocation (or its first since a fork).
            crate::hwtags::thread_start();
            if let Some(k) = self.new_cache() {
                thread().cache.set(k.cast());
                // Relaxed: written once in `init`, before `ready`.
                let key = self.key.load(Ordering::Relaxed);
                // SAFETY: the key was created in `init`; the value is this thread's cache,
                // handed back by `thread_exit`.
                unsafe { libc::pthread_setspecific(key, k.cast()) };
                // SAFETY: fresh cache, this thread's.
                return Some(f(unsafe { &mut *k }));
            }
        }
        let mut orphan = self.orphan.lock();
        if orphan.is_null() {
            *orphan = self.new_cache()?;
        }
        let k = *orphan;
        // SAFETY: the shared cache, serialized by the orphan lock.
        Some(f(unsafe { &mut *k }))
    }

    fn new_cache(&self) -> Option<*mut Cache> {
        {
            let mut p = self.pool.lock();
            if !p.is_null() {
                let k = *p;
                // SAFETY: pooled caches are owned by the pool; under its lock.
                *p = unsafe { (*k).next };
                // SAFETY: as above; now ours.
                unsafe { (*k).next = null_mut() };
                return Some(k);
            }
        }
        let bytes = core::mem::size_of::<Cache>();
        let p = crate::sys::map(bytes, 1, false)?;
        // Relaxed: a statistic.
        self.caches_mapped.fetch_add(1, Ordering::Relaxed);
        // The all-zero cache is empty (no slots, no batches).
        Some(p as *mut Cache)
    }

    /// Returns every slot of `k` to the central lists and its batches to the quarantines.
    fn flush(&self, k: &mut Cache) {
        for c in 0..CLASSES {
            let n = k.n[c] as usize;
            if n > 0 {
                self.drain(k, c, n);
            }
        }
        super::quarantine::flush_cache(k);
    }

    /// Moves up to `batch(c)` slots from class `c`'s central list (or fresh ones from its
    /// region) into `k`.
    #[inline(never)]
    fn refill(&self, k: &mut Cache, c: usize) {
        crate::hwtags::on_refill();
        let want = batch(c).max(1);
        let mut got = 0usize;
        let mut central = self.classes[c].central.lock();
        while got < want && central.head != 0 {
            let s = central.head;
            // SAFETY: free slots of the central list hold the next link in their first word;
            // they are the heap's, under the class lock.
            central.head = unsafe { *(s as *const usize) };
            k.slots[c][got] = s;
            got += 1;
        }
        if central.head == 0 {
            central.tail = 0;
        }
        let warm = got.min(central.dirty);
        if warm > 0 {
            central.dirty -= warm;
            // Relaxed: see `drain`.
            self.dirty_bytes.fetch_sub(warm * class_size(c), Ordering::Relaxed);
        }
        if got < want {
            got += self.carve(c, &mut central, &mut k.slots[c][got..want]);
        }
        drop(central);
        k.n[c] = got as u32;
    }

    /// Carves fresh slots of class `c` into `out`; `central` is the class's, locked.
    fn carve(&self, c: usize, central: &mut Central, out: &mut [usize]) -> usize {
        let size = class_size(c);
        let region = self.region(c);
        // Relaxed: carved only changes under the class lock, which we hold.
        let mut carved = self.classes[c].carved.load(Ordering::Relaxed);
        let cap = self.capacity(c);
        if carved == 0 {
            // The pad slot: its tail is the first object's left redzone.
            // SAFETY: slot 0 lies in the region, mapped and writable.
            unsafe { tail_fill(region, size) };
            carved = 1;
        }
        let n = out.len().min(cap.saturating_sub(carved));
        self.prefault(c, central, carved + n);
        for (i, o) in out[..n].iter_mut().enumerate() {
            let s = region + (carved + i) * size;
            // SAFETY: slot `carved + i` lies in the region (below capacity).
            unsafe { tail_fill(s, size) };
            *o = s;
        }
        // Release pairs with the Acquire loads in `locate` and `carved`.
        self.classes[c].carved.store(carved + n, Ordering::Release);
        n
    }

    /// Commits the pages that slots `..end` of class `c` are about to touch, and those of
    /// their metadata, a [`PREFAULT_BYTES`] stretch at a time, once the class has carved that
    /// much (a program that uses a class little keeps faulting its few pages in one by one):
    /// a program that keeps carving (the quarantine holds tens of MiB of freed slots) pays
    /// one system call per stretch instead of a fault per page. Slot pages only for slots of
    /// a page or less, each page of which carving touches anyway (its tails); larger slots
    /// keep the pages their objects never use uncommitted.
    fn prefault(&self, c: usize, central: &mut Central, end: usize) {
        // Relaxed: written in `init`, before `ready`.
        let page = self.page.load(Ordering::Relaxed);
        let size = class_size(c);
        if page == 0 || end <= central.ahead || end * size < PREFAULT_BYTES {
            return;
        }
        let from = central.ahead.max(end.saturating_sub(PREFAULT_BYTES / size));
        let to = (end + PREFAULT_BYTES / size).min(self.capacity(c));
        let down = |a: usize| a & !(page - 1);
        let up = |a: usize| a.next_multiple_of(page);
        let region = self.region(c);
        if size <= page {
            crate::sys::prefault(down(region + from * size), up(region + to * size));
        }
        let top = region + (1 << self.geometry().1);
        let meta = core::mem::size_of::<Meta>();
        crate::sys::prefault(down(top - to * meta), up(top - from * meta));
        central.ahead = to;
    }

    /// Moves the `n` oldest-cached slots of class `c` from `k` to the central list. Slots of
    /// a decommitting class ([`decommits`]) stay resident and go to the head of the list
    /// while the heap's resident free bytes are under [`DIRTY_MAX`]; past that, their inner
    /// pages are given back ([`Heap::decommit`]) and they join the list at its tail, behind
    /// the resident ones.
    fn drain(&self, k: &mut Cache, c: usize, n: usize) {
        let have = k.n[c] as usize;
        let n = n.min(have);
        if n == 0 {
            return;
        }
        let list = &k.slots[c][..n];
        for w in list.windows(2) {
            // SAFETY: free slots are the heap's; the first word of a free slot is its link.
            unsafe { *(w[0] as *mut usize) = w[1] };
        }
        let tracked = self.decommits(c);
        let bytes = n * class_size(c);
        // Relaxed: a budget; threads draining at once may pass it by a batch each.
        let cold = tracked && self.dirty_bytes.load(Ordering::Relaxed) + bytes > DIRTY_MAX;
        if cold {
            self.decommit(c, list);
        }
        {
            let mut central = self.classes[c].central.lock();
            let empty = central.head == 0;
            if cold && !empty {
                // SAFETY: as above: the run ends the list; the old tail links to it.
                unsafe {
                    *(list[n - 1] as *mut usize) = 0;
                    *(central.tail as *mut usize) = list[0];
                }
            } else {
                // SAFETY: as above, for the last slot of the run.
                unsafe { *(list[n - 1] as *mut usize) = central.head };
                central.head = list[0];
            }
            if cold || empty {
                central.tail = list[n - 1];
            }
            if tracked && !cold {
                central.dirty += n;
                // Relaxed: see above.
                self.dirty_bytes.fetch_add(bytes, Ordering::Relaxed);
            }
        }
        k.slots[c].copy_within(n..have, 0);
        k.n[c] = (have - n) as u32;
    }

    /// Whether the slots of class `c` give their inner pages back in [`Heap::drain`]: slots
    /// of at least [`DECOMMIT_PAGES`] pages.
    fn decommits(&self, c: usize) -> bool {
        // Relaxed: written in `init`, before `ready`.
        let page = self.page.load(Ordering::Relaxed);
        page != 0 && class_size(c) >= DECOMMIT_PAGES * page
    }

    /// Gives the whole pages inside the free slots `list` of a decommitting class `c` back to
    /// the system. The first page keeps the free-list link, the last one the always-redzone
    /// tail; the pages in between come back as zeros when the slot is used again (its gap is
    /// filled with redzone at allocation, as always).
    fn decommit(&self, c: usize, list: &[usize]) {
        // Relaxed: written in `init`, before `ready`.
        let page = self.page.load(Ordering::Relaxed);
        let cs = class_size(c);
        let mut bytes = 0;
        for &s in list {
            let lo = (s + 8).next_multiple_of(page);
            let hi = (s + cs - TAIL) & !(page - 1);
            if hi > lo {
                // SAFETY: whole pages inside a free slot of ours, which nothing reads or
                // writes until it is allocated again: its contents are not needed.
                unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_DONTNEED) };
                bytes += hi - lo;
            }
        }
        // Relaxed: a statistic.
        self.decommitted.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes of free slots' pages given back to the system so far.
    pub fn decommitted(&self) -> usize {
        // Relaxed: a statistic.
        self.decommitted.load(Ordering::Relaxed)
    }

    /// Takes every heap lock (before `fork`).
    pub fn lock_all(&self) {
        self.orphan.raw_lock();
        self.pool.raw_lock();
        for c in &self.classes {
            c.central.raw_lock();
        }
    }

    /// Releases the locks taken by [`Heap::lock_all`].
    ///
    /// # Safety
    /// Held through `lock_all` (in this process or inherited over `fork`).
    pub unsafe fn unlock_all(&self) {
        for c in &self.classes {
            // SAFETY: forwarded.
            unsafe { c.central.force_unlock() };
        }
        // SAFETY: forwarded.
        unsafe { self.pool.force_unlock() };
        // SAFETY: forwarded.
        unsafe { self.orphan.force_unlock() };
    }
}

impl core::fmt::Debug for Cache {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Cache").finish_non_exhaustive()
    }
}

/// `pthread` key destructor: returns the exiting thread's cache.
extern "C" fn thread_exit(p: *mut libc::c_void) {
    if p.is_null() {
        return;
    }
    let Some(_g) = crate::sys::Guard::enter() else {
        return;
    };
    let t = thread();
    t.cache.set(null_mut());
    t.exited.set(true);
    let k = p as *mut Cache;
    // SAFETY: the value set by `with_cache_slow` for this thread; nobody else uses it.
    HEAP.flush(unsafe { &mut *k });
    let mut pool = HEAP.pool.lock();
    // SAFETY: emptied above; now the pool's.
    unsafe { (*k).next = *pool };
    *pool = k;
}

/// Slot index of region offset `roff` in class `c`, by a multiplication: with
/// `m = ceil(2^49 / size)`, `roff * m >> 49` is `roff / size` exactly for `roff < 2^32` and
/// `size <= 2^17` (the error `roff * (m - 2^49 / size) / 2^49 < 2^-17 <= 1 / size`).
#[inline]
pub fn index(roff: usize, c: usize) -> usize {
    const fn magic() -> [u64; CLASSES] {
        let mut m = [0u64; CLASSES];
        let mut c = 0;
        while c < CLASSES {
            m[c] = (1u64 << 49).div_ceil(class_size(c) as u64);
            c += 1;
        }
        m
    }
    const MAGIC: [u64; CLASSES] = magic();
    ((roff as u128 * MAGIC[c] as u128) >> 49) as usize
}

/// Fills the always-redzone tail of the slot at `s`.
///
/// # Safety
/// The slot lies in the heap's space.
#[inline]
pub unsafe fn tail_fill(s: usize, size: usize) {
    // SAFETY: forwarded; the tail lies inside the slot.
    unsafe { core::ptr::write_bytes((s + size - TAIL) as *mut u8, crate::chunk::REDZONE, TAIL) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_increasing_and_cover_every_need() {
        for c in 1..CLASSES {
            assert!(class_size(c) > class_size(c - 1));
            assert!(class_size(c).is_multiple_of(16));
        }
        assert_eq!(class_size(CLASSES - 1), MAX_SLOT);
        for need in 1..=MAX_SLOT {
            let c = class_for(need);
            assert!(class_size(c) >= need, "{need}");
            assert!(c == 0 || class_size(c - 1) < need.max(32), "{need}");
        }
    }

    #[test]
    fn aligned_classes_are_multiples_of_the_alignment() {
        for align in [1, 16, 32, 64, 128, 256, 512, 4096] {
            for need in [1, 17, 100, 255, 1000, 4097, 70000] {
                let c = class_for_aligned(need, align).unwrap();
                assert!(class_size(c) >= need && class_size(c).is_multiple_of(align));
            }
        }
        assert_eq!(class_for_aligned(MAX_SLOT + 1, 16), None);
        assert_eq!(class_for_aligned(16, 8192), None);
    }

    /// Whether the page at `addr` is resident.
    fn resident(addr: usize) -> bool {
        let mut v = 0u8;
        // SAFETY: one page of a mapping of ours; `v` receives its one status byte.
        let r = unsafe { libc::mincore((addr & !4095) as *mut libc::c_void, 1, &mut v) };
        assert_eq!(r, 0);
        v & 1 != 0
    }

    /// Carves `slots` slots of class `c` from `h`, a batch at a time, as refills do.
    fn carve_n(h: &Heap, c: usize, slots: usize) {
        let mut out = [0usize; 64];
        let mut done = 0;
        while done < slots {
            let mut central = h.classes[c].central.lock();
            done += h.carve(c, &mut central, &mut out);
        }
    }

    /// Whether `sys::prefault` commits pages on this system: the kernel may predate
    /// MADV_POPULATE_WRITE (5.14) and an emulator (qemu-user) accepts it and does nothing.
    fn prefault_commits() -> bool {
        let p = crate::sys::map(2 * 4096, 4096, true).expect("map") as usize;
        crate::sys::prefault(p, p + 2 * 4096);
        let yes = resident(p) && resident(p + 4096);
        // SAFETY: the two pages mapped above, used by nothing else.
        unsafe { libc::munmap(p as *mut libc::c_void, 2 * 4096) };
        yes
    }

    #[test]
    fn a_class_that_keeps_carving_has_its_next_pages_committed_ahead() {
        let h = Heap::new();
        assert!(h.init(24));
        let page = h.page.load(Ordering::Relaxed);
        let commits = prefault_commits();
        if !commits {
            eprintln!(
                "MADV_POPULATE_WRITE commits nothing here: checking only what stays uncommitted"
            );
        }
        // A class used a little: nothing ahead of its slots is committed.
        carve_n(&h, 0, 64);
        let frontier = h.region(0) + h.carved(0) * class_size(0);
        assert!(!resident(frontier + 4 * page), "committed ahead of a little-used class");
        // One that keeps carving: the stretch beyond what it carved is resident, slots and
        // metadata.
        carve_n(&h, 0, (PREFAULT_BYTES / class_size(0)) * 2);
        let carved = h.carved(0);
        let frontier = h.region(0) + carved * class_size(0);
        let meta = h.meta(0, carved - 1) as *const Meta as usize;
        if commits {
            assert!(resident(frontier + PREFAULT_BYTES / 2), "slots ahead not committed");
            assert!(resident(meta - PREFAULT_BYTES / class_size(0) * 8), "metadata not committed");
        }
        // A class of slots larger than a page: its untouched slot pages stay uncommitted.
        let big = class_for(3 * page);
        carve_n(&h, big, PREFAULT_BYTES / class_size(big) + 8);
        let s = h.region(big) + (h.carved(big) - 1) * class_size(big);
        assert!(!resident(s + page), "a large slot's inner page was committed");
        let m = h.meta(big, h.carved(big) + 4) as *const Meta as usize;
        assert!(!commits || resident(m), "large class's metadata not committed ahead");
    }

    #[test]
    fn free_large_slots_stay_resident_up_to_the_dirty_budget_and_go_out_first() {
        let h = Heap::new();
        // Regions of 64 MiB: room for more than the budget's slots.
        assert!(h.init(26));
        let page = h.page.load(Ordering::Relaxed);
        let c = class_for(8 * page);
        assert!(h.decommits(c) && !h.decommits(class_for(page)));
        let cs = class_size(c);
        let total = DIRTY_MAX / cs + 4 * cache_cap(c);
        let mut slots = Vec::new();
        while slots.len() < total {
            let mut out = [0usize; 64];
            let want = (total - slots.len()).min(64);
            let n = h.carve(c, &mut h.classes[c].central.lock(), &mut out[..want]);
            assert!(n > 0, "region full");
            slots.extend_from_slice(&out[..n]);
        }
        // A word in a middle page of each slot: it reads zero once the pages went back.
        let mid = |s: usize| (s + cs / 2) & !(page - 1);
        // SAFETY: a word of a whole page inside a carved slot of this test's heap.
        let warm = |s: usize| unsafe { *(mid(s) as *const usize) } == s;
        for &s in &slots {
            // SAFETY: as above; the slot is not handed out.
            unsafe { *(mid(s) as *mut usize) = s };
        }
        // SAFETY: a fresh cache of this test's heap, used by this thread only.
        let k = unsafe { &mut *h.new_cache().expect("cache") };
        for &s in &slots {
            h.release_to(k, c, s);
        }
        let n = k.n[c] as usize;
        h.drain(k, c, n);
        let dirty = h.classes[c].central.lock().dirty;
        let bytes = h.dirty_bytes.load(Ordering::Relaxed);
        assert_eq!(bytes, dirty * cs);
        assert!(bytes <= DIRTY_MAX && bytes + batch(c) * cs > DIRTY_MAX, "{bytes} B kept");
        // Where MADV_DONTNEED gives pages back (not under qemu-user), the rest went back.
        let gives_back = {
            let p = crate::sys::map(page, page, true).expect("map") as usize;
            // SAFETY: the page just mapped, ours, then unmapped.
            unsafe {
                let yes = crate::zap::give_back(p, p + page);
                libc::munmap(p as *mut libc::c_void, page);
                yes
            }
        };
        if gives_back {
            assert_eq!(slots.iter().filter(|&&s| warm(s)).count(), dirty);
        }
        // Refills hand out the resident slots first, then the cold ones.
        let mut out = Vec::new();
        while out.len() < total {
            h.refill(k, c);
            let got = k.n[c] as usize;
            assert!(got > 0);
            out.extend_from_slice(&k.slots[c][..got]);
            k.n[c] = 0;
        }
        assert_eq!(h.dirty_bytes.load(Ordering::Relaxed), 0);
        let mut sorted = out.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), total, "a slot handed out twice");
        assert!(out[..dirty].iter().all(|&s| warm(s)), "a cold slot before a resident one");
        if gives_back {
            assert!(out[dirty..].iter().all(|&s| !warm(s)));
        }
        let central = h.classes[c].central.lock();
        assert!(central.head == 0 && central.tail == 0 && central.dirty == 0);
    }

    #[test]
    fn index_by_multiplication_is_exact_division() {
        for c in 0..CLASSES {
            let s = class_size(c);
            let max = (1usize << 32) - 1;
            for i in [0, 1, 2, 3, 1000, max / s - 1, max / s] {
                for d in [0, 1, s / 2, s - 1] {
                    let roff = i * s + d;
                    if roff <= max {
                        assert_eq!(index(roff, c), roff / s, "class {c} roff {roff}");
                    }
                }
            }
        }
    }
}
