//! The quarantine of freed slots: per-thread batches moved to one FIFO per runtime.
//!
//! A free appends its slot to the thread's batch for that runtime (no lock). A full batch
//! ([`BATCH`] slots or [`local_cap`] bytes) is published to the runtime's FIFO under a
//! spin lock, once per batch; when the FIFO is over the byte budget, the publisher takes the
//! oldest batches out (two, or as many bytes as twice the batch it published), and verifies
//! and releases their slots after dropping the lock: bounded work per free. Batches in threads' hands are not counted in the budget
//! (at most `local_cap` bytes per thread). Batch records come from `mmap`.

use super::heap::Cache;
use crate::sys::SpinLock;
use core::ptr::null_mut;

/// Slots per batch (a 512-byte record).
pub const BATCH: usize = 61;

/// One batch of quarantined slots, oldest first.
#[repr(C)]
#[derive(Debug)]
pub struct Batch {
    next: *mut Batch,
    /// Slots in use.
    pub n: usize,
    /// Their slot bytes.
    pub bytes: usize,
    /// The slots.
    pub slots: [usize; BATCH],
}

const _: () = assert!(core::mem::size_of::<Batch>() == 512);

/// Bytes a thread keeps in its batch before publishing it: a 64th of the budget, between
/// 16 KiB and 1 MiB.
pub fn local_cap(budget: usize) -> usize {
    (budget / 64).clamp(16 << 10, 1 << 20)
}

struct Fifo {
    head: *mut Batch,
    tail: *mut Batch,
    bytes: usize,
}

/// A runtime's quarantine FIFO.
pub struct Quarantine {
    fifo: SpinLock<Fifo>,
}

// SAFETY: the batch pointers are records owned by the quarantine, behind its lock.
unsafe impl Sync for Quarantine {}
// SAFETY: as above.
unsafe impl Send for Fifo {}

impl core::fmt::Debug for Quarantine {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Quarantine").finish_non_exhaustive()
    }
}

/// A full batch handed over by its thread, to publish.
#[derive(Debug)]
pub struct Full(*mut Batch);

/// No memory could be mapped for a batch record.
#[derive(Debug)]
pub struct NoMemory;

/// A list of batches taken out of a FIFO, to verify and release.
#[derive(Debug)]
pub struct Evicted(*mut Batch);

impl Evicted {
    /// Nothing evicted.
    pub const NONE: Evicted = Evicted(null_mut());

    /// Calls `f` on the slots of every evicted batch, oldest first.
    pub fn for_each_batch(&self, mut f: impl FnMut(&[usize])) {
        let mut b = self.0;
        while !b.is_null() {
            // SAFETY: evicted batches are out of every list and exclusively ours.
            let r = unsafe { &*b };
            f(&r.slots[..r.n]);
            b = r.next;
        }
    }

    /// Gives the batch records back.
    pub fn release(self) {
        let mut b = self.0;
        while !b.is_null() {
            // SAFETY: evicted batches are out of every list and exclusively ours.
            let r = unsafe { &mut *b };
            b = r.next;
            free_batch(r);
        }
    }
}

impl Quarantine {
    /// An empty quarantine.
    pub const fn new() -> Quarantine {
        Quarantine { fifo: SpinLock::new(Fifo { head: null_mut(), tail: null_mut(), bytes: 0 }) }
    }

    /// Bytes in the FIFO (not counting threads' batches).
    pub fn bytes(&self) -> usize {
        self.fifo.lock().bytes
    }

    /// Appends `b` and takes out the oldest batches while over `budget`: at least two, or
    /// up to twice the bytes of `b`.
    pub fn publish(&self, full: Full, budget: usize) -> Evicted {
        let b = full.0;
        let mut f = self.fifo.lock();
        // SAFETY: `b` was handed over by its thread and is ours now.
        let add = unsafe {
            (*b).next = null_mut();
            (*b).bytes
        };
        if f.tail.is_null() {
            f.head = b;
        } else {
            // SAFETY: the tail is a batch of this FIFO; lock held.
            unsafe { (*f.tail).next = b };
        }
        f.tail = b;
        f.bytes += add;
        let mut out: *mut Batch = null_mut();
        let mut last: *mut Batch = null_mut();
        let mut taken = 0;
        // Bounded work per publish, in bytes: at most twice what came in (and at least two
        // batches), so the FIFO shrinks back under the budget whatever the mix of sizes (a
        // count of batches alone would let big batches in faster than small ones leave).
        let mut removed = 0usize;
        while f.bytes > budget && !f.head.is_null() && (taken < 2 || removed < 2 * add) {
            let old = f.head;
            // SAFETY: `old` heads the FIFO; lock held.
            let r = unsafe { &mut *old };
            f.head = r.next;
            if f.head.is_null() {
                f.tail = null_mut();
            }
            f.bytes -= r.bytes;
            removed += r.bytes;
            r.next = null_mut();
            if last.is_null() {
                out = old;
            } else {
                // SAFETY: `last` was taken out by us just before.
                unsafe { (*last).next = old };
            }
            last = old;
            taken += 1;
        }
        Evicted(out)
    }

    /// Takes the lock (before `fork`).
    pub fn raw_lock(&self) {
        self.fifo.raw_lock();
    }

    /// # Safety
    /// Held through `raw_lock`.
    pub unsafe fn force_unlock(&self) {
        // SAFETY: forwarded.
        unsafe { self.fifo.force_unlock() };
    }
}

impl Default for Quarantine {
    fn default() -> Self {
        Self::new()
    }
}

/// Adds `slot` (`bytes` long) to the thread's batch `q`; returns the batch when it is full
/// and must be published. [`NoMemory`] when no batch record could be mapped (the caller
/// releases the slot at once).
#[inline(always)]
pub fn push(
    q: &mut *mut Batch,
    slot: usize,
    bytes: usize,
    cap: usize,
) -> Result<Option<Full>, NoMemory> {
    if q.is_null() {
        *q = alloc_batch().ok_or(NoMemory)?;
    }
    // SAFETY: the thread's own batch.
    let b = unsafe { &mut **q };
    b.slots[b.n] = slot;
    b.n += 1;
    b.bytes += bytes;
    if b.n == BATCH || b.bytes >= cap {
        let full = *q;
        *q = null_mut();
        return Ok(Some(Full(full)));
    }
    Ok(None)
}

/// Publishes the batches of an exiting thread's cache (the runtimes evict and verify as
/// usual).
pub fn flush_cache(k: &mut Cache) {
    for (i, q) in k.q.iter_mut().enumerate() {
        let b = core::mem::replace(q, null_mut());
        if !b.is_null() {
            super::publish(i, Full(b));
        }
    }
}

static POOL: SpinLock<PoolList> = SpinLock::new(PoolList(null_mut()));

struct PoolList(*mut Batch);
// SAFETY: pooled batch records, behind the pool lock.
unsafe impl Send for PoolList {}

/// Records mapped at a time.
const CHUNK: usize = 128;

#[cold]
#[inline(never)]
fn alloc_batch() -> Option<*mut Batch> {
    {
        let mut p = POOL.lock();
        if !p.0.is_null() {
            let b = p.0;
            // SAFETY: pooled records are the pool's; lock held.
            p.0 = unsafe { (*b).next };
            // SAFETY: now ours; reset.
            unsafe {
                (*b).next = null_mut();
                (*b).n = 0;
                (*b).bytes = 0;
            }
            return Some(b);
        }
    }
    let bytes = CHUNK * core::mem::size_of::<Batch>();
    let first = crate::sys::map(bytes, 1, false)? as *mut Batch;
    let mut p = POOL.lock();
    for i in 1..CHUNK {
        // SAFETY: records 1.. of the fresh mapping (zeroed, valid Batch values).
        unsafe {
            let r = first.add(i);
            (*r).next = p.0;
            p.0 = r;
        }
    }
    Some(first)
}

fn free_batch(b: &mut Batch) {
    let mut p = POOL.lock();
    b.next = p.0;
    p.0 = b;
}

/// Takes the pool lock (before `fork`).
pub fn pool_lock() {
    POOL.raw_lock();
}

/// # Safety
/// Held through `pool_lock`.
pub unsafe fn pool_unlock() {
    // SAFETY: forwarded.
    unsafe { POOL.force_unlock() };
}
