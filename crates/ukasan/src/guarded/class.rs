//! One size class of guarded slots: geometry, out-of-band metadata, the FIFO of free slots,
//! and which slot's object an address is nearest to.

use super::{close, page_down, page_up, DATA_PAGES, PAGE};
use crate::chunk::Track;
use crate::sys::SpinLock;
use core::cell::UnsafeCell;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicUsize, Ordering};

pub(super) const FREE: u8 = 0;
pub(super) const LIVE: u8 = 1;
pub(super) const FREED: u8 = 2;

/// What one slot holds (plain data, written by the owner of the slot).
#[derive(Clone, Copy)]
pub(super) struct Data {
    pub(super) family: u8,
    pub(super) user: usize,
    pub(super) size: usize,
    pub(super) align: usize,
    pub(super) alloc: Track,
    pub(super) free: Track,
}

impl Data {
    /// The pages that were accessible while the object was live.
    pub(super) fn pages(&self) -> (usize, usize) {
        (page_down(self.user), page_up(self.user + self.size))
    }
}

/// Per-slot metadata, out of band (in its own mapping): an overflow cannot reach it.
pub(super) struct Meta {
    pub(super) state: AtomicU8,
    /// The slot lost a guard page (a fault was let through): never reused.
    pub(super) retired: AtomicBool,
    /// Freed while a leak scan ran: its pages stay accessible and it stays out of the FIFO
    /// until the scan ends (whoever swaps this back to false protects and queues it).
    pub(super) deferred: AtomicBool,
    pub(super) data: UnsafeCell<Data>,
}

pub(super) struct Fifo {
    ring: *mut u32,
    head: usize,
    len: usize,
    cap: usize,
}

// SAFETY: `ring` points to the pool's own mapping; the lock around `Fifo` serializes access.
unsafe impl Send for Fifo {}

/// One size class of slots, `| guard | data x pages | guard | data x pages | ... | guard |`,
/// with its metadata and FIFO of free slots.
pub(super) struct Class {
    /// Data pages per slot.
    pub(super) pages: usize,
    /// The first guard page (0: no pool).
    pub(super) base: AtomicUsize,
    pub(super) slots: AtomicUsize,
    pub(super) meta: AtomicPtr<Meta>,
    pub(super) fifo: SpinLock<Fifo>,
    pub(super) noticed: AtomicBool,
}

/// Where a fault address lies in a class: the slot it is nearest to, and whether the
/// address is in that slot's own data pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Spot {
    pub(super) slot: usize,
    pub(super) data: bool,
}

impl Class {
    pub(super) const fn new(pages: usize) -> Class {
        Class {
            pages,
            base: AtomicUsize::new(0),
            slots: AtomicUsize::new(0),
            meta: AtomicPtr::new(null_mut()),
            fifo: SpinLock::new(Fifo { ring: null_mut(), head: 0, len: 0, cap: 0 }),
            noticed: AtomicBool::new(false),
        }
    }

    pub(super) const fn stride(&self) -> usize {
        (self.pages + 1) * PAGE
    }

    /// Bytes of address space for `n` slots.
    pub(super) const fn len(&self, n: usize) -> usize {
        PAGE + n * self.stride()
    }

    pub(super) fn n(&self) -> usize {
        self.slots.load(Ordering::Relaxed)
    }

    /// Sets the class up over `[base, base + len(n))` with metadata at `meta` and its FIFO
    /// ring at `ring` (both in a fresh zeroed mapping).
    pub(super) fn setup(&self, base: usize, n: usize, meta: *mut Meta, ring: *mut u32) {
        let mut f = self.fifo.lock();
        f.ring = ring;
        f.cap = n;
        for i in 0..n {
            // SAFETY: the ring has `n` entries in the fresh mapping.
            unsafe { *f.ring.add(i) = i as u32 };
        }
        f.len = n;
        self.meta.store(meta, Ordering::Relaxed);
        self.slots.store(n, Ordering::Relaxed);
        self.base.store(base, Ordering::Relaxed);
    }

    pub(super) fn meta(&self, i: usize) -> &Meta {
        // SAFETY: `i < slots`; the metadata mapping holds `slots` zero-initialized entries
        // (all-zero is a valid `Meta`) and lives for the process.
        unsafe { &*self.meta.load(Ordering::Relaxed).add(i) }
    }

    pub(super) fn data(&self, i: usize) -> Data {
        // SAFETY: plain data; a racing update only changes which object a report names.
        unsafe { *self.meta(i).data.get() }
    }

    pub(super) fn data_start(&self, i: usize) -> usize {
        self.base.load(Ordering::Relaxed) + PAGE + i * self.stride()
    }

    pub(super) fn data_end(&self, i: usize) -> usize {
        self.data_start(i) + self.pages * PAGE
    }

    /// The raw position of `a` (inside this class): `(k, true)` in slot k's data pages,
    /// `(k, false)` in the guard page left of slot k (`k == slots`: the last guard page).
    pub(super) fn position(&self, a: usize) -> (usize, bool) {
        let off = a - self.base.load(Ordering::Relaxed);
        let (k, within) = (off / self.stride(), off % self.stride());
        (k, within >= PAGE && k < self.n())
    }

    /// How far `a` is from slot `i`'s object (0 inside it); `usize::MAX` for a slot that
    /// never held one.
    pub(super) fn distance(&self, i: usize, a: usize) -> usize {
        if self.meta(i).state.load(Ordering::Acquire) == FREE {
            return usize::MAX;
        }
        let d = self.data(i);
        if a >= d.user + d.size {
            a - (d.user + d.size)
        } else {
            d.user.saturating_sub(a)
        }
    }

    /// The slot a fault at `a` is about: the one whose object is nearest among the slot
    /// `a` is in (or whose left guard page it is) and its neighbours, so that a guard page
    /// shared by a right-placed object and a left-placed one goes to the closer of the two;
    /// on a tie, the slot whose data pages hold `a`, then the left one (an overflow is
    /// likelier than an underflow).
    pub(super) fn nearest(&self, a: usize) -> Spot {
        let (k, data) = self.position(a);
        let n = self.n();
        let mut best = Spot { slot: k.min(n - 1), data: data && k < n };
        let mut best_d = usize::MAX;
        let first = k.saturating_sub(1);
        let last = if data { k + 1 } else { k };
        for i in first..=last.min(n - 1) {
            let d = self.distance(i, a);
            let better = d < best_d || (d == best_d && data && i == k);
            if better {
                best = Spot { slot: i, data: data && i == k };
                best_d = d;
            }
        }
        best
    }

    /// The slot whose data pages hold `p`, for a free or a size query.
    pub(super) fn holder(&self, p: usize) -> Option<usize> {
        let (k, data) = self.position(p);
        data.then_some(k)
    }

    pub(super) fn pop(&self) -> Option<usize> {
        let mut f = self.fifo.lock_bounded(1 << 12)?;
        while f.len > 0 {
            // SAFETY: `head < cap`, inside the ring.
            let i = unsafe { *f.ring.add(f.head) } as usize;
            f.head = (f.head + 1) % f.cap;
            f.len -= 1;
            if !self.meta(i).retired.load(Ordering::Relaxed) {
                return Some(i);
            }
        }
        None
    }

    pub(super) fn push(&self, i: usize, must_not_wait: bool) {
        let f =
            if must_not_wait { self.fifo.lock_bounded(1 << 12) } else { Some(self.fifo.lock()) };
        // A lock held by the code a signal handler interrupted: the slot is lost, never reused.
        let Some(mut f) = f else { return };
        if f.len < f.cap {
            let at = (f.head + f.len) % f.cap;
            // SAFETY: `at < cap`, inside the ring.
            unsafe { *f.ring.add(at) = i as u32 };
            f.len += 1;
        }
    }

    /// Makes a freed slot's pages inaccessible and queues it for reuse (unless retired).
    pub(super) fn protect_and_queue(&self, i: usize, must_not_wait: bool) {
        let (start, end) = (self.data_start(i), self.data_end(i));
        close(start, end, self.pages > DATA_PAGES);
        if !self.meta(i).retired.load(Ordering::Relaxed) {
            self.push(i, must_not_wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A class of 3 small slots over a made-up address range (nothing is mapped: only the
    /// metadata is read), with objects `(user offset in its data pages, size, state)`.
    fn class_with(objs: [(usize, usize, u8); 3]) -> (Class, Vec<Meta>, usize) {
        let base = 0x1000_0000;
        let c = Class::new(DATA_PAGES);
        // SAFETY: all-zero is a valid `Meta` (see `Class::meta`).
        let mut meta: Vec<Meta> = (0..3).map(|_| unsafe { core::mem::zeroed() }).collect();
        let mut ring = [0u32; 3];
        c.setup(base, 3, meta.as_mut_ptr(), ring.as_mut_ptr());
        for (i, (off, size, state)) in objs.into_iter().enumerate() {
            let user = c.data_start(i) + off;
            *meta[i].data.get_mut() = Data {
                family: 0,
                user,
                size,
                align: 8,
                alloc: Track::default(),
                free: Track::default(),
            };
            meta[i].state.store(state, Ordering::Relaxed);
        }
        // The ring is only read by pop/push, never here.
        (c, meta, base)
    }

    #[test]
    fn a_fault_names_the_nearest_object() {
        let end = DATA_PAGES * PAGE;
        // Slot 0 right-placed (32 bytes), slot 1 left-placed (48), slot 2 right-placed.
        let (c, _meta, _) =
            class_with([(end - 32, 32, LIVE), (0, 48, LIVE), (end - 16, 16, FREED)]);
        let guard = c.data_end(0); // shared by slots 0 and 1
        assert_eq!(c.nearest(guard + 10), Spot { slot: 0, data: false });
        assert_eq!(c.nearest(guard + PAGE - 10), Spot { slot: 1, data: false });
        // A tie in the middle goes to the left object (overflows are likelier).
        assert_eq!(c.nearest(guard + PAGE / 2).slot, 0);
        // Past slot 1's left-placed object, in its own data pages: slot 1.
        assert_eq!(c.nearest(c.data_start(1) + 60), Spot { slot: 1, data: true });
        // The guard page after it: slot 2's right-placed object is 4 pages further away.
        assert_eq!(c.nearest(c.data_end(1) + 100).slot, 1);
        // Inside the freed object of slot 2, and the last guard page.
        assert_eq!(c.nearest(c.data_end(2) - 8), Spot { slot: 2, data: true });
        assert_eq!(c.nearest(c.data_end(2) + 8), Spot { slot: 2, data: false });
        // The first guard page, left of slot 0: slot 0.
        assert_eq!(c.nearest(c.data_start(0) - 1).slot, 0);
    }

    #[test]
    fn a_slot_that_never_held_an_object_is_never_named_over_one_that_did() {
        let end = DATA_PAGES * PAGE;
        let (c, _meta, _) = class_with([(end - 32, 32, LIVE), (0, 0, FREE), (0, 64, LIVE)]);
        // Slot 1's own pages, but slot 1 is empty: the nearer object of a neighbour.
        assert_eq!(c.nearest(c.data_start(1) + 8).slot, 0);
        assert_eq!(c.nearest(c.data_end(1) - 8).slot, 2);
        assert_eq!(c.holder(c.data_start(1) + 8), Some(1));
        assert_eq!(c.holder(c.data_end(1)), None);
    }
}
