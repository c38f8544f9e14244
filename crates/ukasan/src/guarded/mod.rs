//! Guarded mode (`mode=guarded`): KFENCE / GWP-ASan for user space.
//!
//! About one allocation in `sample_rate` (per thread) of at most [`MAX_SIZE`] bytes and an
//! alignment of at most a page is served from a pool of guard-page slots mapped once with
//! `mmap` at init (never from malloc):
//!
//! ```text
//! | guard | data x DATA_PAGES | guard | data x DATA_PAGES | guard | ...
//!                  [canary ... object]   <- right-aligned: one byte past the end faults
//! ```
//!
//! The object sits at the right end of its slot's data pages (rounded down to its
//! alignment); only the pages that hold it are accessible, and the bytes of those pages
//! around it are filled with [`CANARY`], checked at free. A free records the free track,
//! fills the object with the free poison, makes the data pages `PROT_NONE` and puts the slot at the tail of a FIFO, so it is
//! reused as late as possible. Any read or write of a guard page, of the inaccessible pages
//! before an object, or of a freed object faults; the SIGSEGV/SIGBUS handler installed at
//! init reports it at once (`slab-out-of-bounds` / `use-after-free`, read or write from the
//! page-fault error code, the access size decoded from the common x86-64 moves and
//! arithmetic, else "unknown size"; the faulting instruction as frame #0) and either exits
//! (`halt_on_error`) or makes the page accessible and lets the access complete; the slots
//! around that page are then retired, never reused. Faults outside the pool are passed to
//! the handler that was installed before ours (or the default action).
//!
//! Allocations that are not sampled, too big, made by the dynamic loader, or made while the
//! pool is exhausted are generic chunks (one notice on stderr when the pool runs dry, with
//! `verbosity=1`).
//! Frees of guarded objects get the generic checks (double and invalid free, family,
//! claimed size and alignment); live guarded objects take part in the leak scan at exit.
//!
//! Costs: a sampled allocation is two `mprotect` calls (alloc, free) and a page of canary
//! fill; unsampled ones pay one thread-local countdown on top of generic mode. Memory: the
//! pool reserves `guarded_slots * (DATA_PAGES + 1)` pages of address space (1.25 MiB for the
//! default 256 slots), touched only where objects are.
//!
//! Not detected: reads of the slack between the end of an object whose size is not a
//! multiple of its alignment and the guard page (writes there are found at free); accesses
//! that land in another live guarded object; use-after-free once the slot was reused.

mod decode;
mod signal;

use crate::chunk::{Family, Track};
use crate::leak::Entry;
use crate::options::{Mode, Options, MAX_DEPTH};
use crate::report::{Access, Found, Kind, Object};
use crate::runtime::{Expect, Runtime};
use crate::sys::{self, SpinLock};
use core::cell::{Cell, UnsafeCell};
use core::ffi::{c_int, c_void};
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicUsize, Ordering};
use stacktrace::Regs;

/// Data pages per slot.
pub const DATA_PAGES: usize = 4;
/// Largest guarded request (bytes), with 4 KiB pages.
pub const MAX_SIZE: usize = DATA_PAGES * 4096;
/// Fill of the accessible bytes around a guarded object.
pub const CANARY: u8 = 0xaa;

const FREE: u8 = 0;
const LIVE: u8 = 1;
const FREED: u8 = 2;

/// What one slot holds (plain data, written by the owner of the slot).
#[derive(Clone, Copy)]
struct Data {
    family: u8,
    user: usize,
    size: usize,
    align: usize,
    alloc: Track,
    free: Track,
}

/// Per-slot metadata, out of band (in its own mapping): an overflow cannot reach it.
struct Meta {
    state: AtomicU8,
    /// The slot lost a guard page (a fault was let through): never reused.
    retired: AtomicBool,
    data: UnsafeCell<Data>,
}

struct Fifo {
    ring: *mut u32,
    head: usize,
    len: usize,
    cap: usize,
}

// SAFETY: `ring` points to the pool's own mapping; the lock around `Fifo` serializes access.
unsafe impl Send for Fifo {}

/// The slot pool of one runtime (empty unless `mode=guarded`).
pub(crate) struct Pool {
    /// Start of the mapping (0: no pool).
    base: AtomicUsize,
    end: AtomicUsize,
    slots: AtomicUsize,
    meta: AtomicPtr<Meta>,
    fifo: SpinLock<Fifo>,
    noticed: AtomicBool,
}

thread_local! {
    /// Allocations left before this thread's next sampled one (0: sample the next).
    static COUNTDOWN: Cell<u32> = const { Cell::new(0) };
}

/// The runtime whose pool the fault handler serves.
static FAULT_RT: AtomicPtr<Runtime> = AtomicPtr::new(null_mut());

const PAGE: usize = 4096;
const STRIDE: usize = (DATA_PAGES + 1) * PAGE;

const fn page_down(a: usize) -> usize {
    a & !(PAGE - 1)
}

impl Pool {
    pub(crate) const fn new() -> Pool {
        Pool {
            base: AtomicUsize::new(0),
            end: AtomicUsize::new(0),
            slots: AtomicUsize::new(0),
            meta: AtomicPtr::new(null_mut()),
            fifo: SpinLock::new(Fifo { ring: null_mut(), head: 0, len: 0, cap: 0 }),
            noticed: AtomicBool::new(false),
        }
    }

    /// Takes the slot FIFO's lock and keeps it (`fork` preparation).
    pub(crate) fn raw_lock(&self) {
        self.fifo.raw_lock();
    }

    /// Releases the lock taken by [`Pool::raw_lock`].
    ///
    /// # Safety
    /// Held through `raw_lock` in this process (or inherited over `fork`).
    pub(crate) unsafe fn force_unlock(&self) {
        // SAFETY: forwarded.
        unsafe { self.fifo.force_unlock() };
    }

    /// Whether the pool is set up.
    pub(crate) fn active(&self) -> bool {
        // Acquire pairs with the Release store of `base` in `init`.
        self.base.load(Ordering::Acquire) != 0
    }

    /// Whether `p` lies in the pool (O(1)).
    #[inline]
    pub(crate) fn contains(&self, p: usize) -> bool {
        // Acquire pairs with the Release store of `base` in `init`.
        let base = self.base.load(Ordering::Acquire);
        base != 0 && p >= base && p < self.end.load(Ordering::Relaxed)
    }

    /// Maps the pool and installs the fault handler, for `rt` (a `static`). Falls back to
    /// generic mode with a message if the pool cannot be set up.
    #[cold]
    pub(crate) fn init(&self, rt: &'static Runtime, o: &Options) {
        if o.mode != Mode::Guarded {
            return;
        }
        // SAFETY: sysconf has no preconditions.
        if unsafe { libc::sysconf(libc::_SC_PAGESIZE) } != PAGE as libc::c_long {
            sys::write_all(2, b"ukasan: guarded mode needs 4 KiB pages; generic mode only\n");
            return;
        }
        // AcqRel: one runtime per process owns the fault handler.
        if FAULT_RT
            .compare_exchange(
                null_mut(),
                rt as *const _ as *mut _,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            sys::write_all(
                2,
                b"ukasan: guarded mode is used by another runtime; generic mode only\n",
            );
            return;
        }
        let n = o.guarded_slots;
        let len = PAGE + n * STRIDE;
        let meta_len = (n * core::mem::size_of::<Meta>() + n * 4).next_multiple_of(PAGE);
        let (Some(base), Some(meta)) =
            (map(len, libc::PROT_NONE), map(meta_len, libc::PROT_READ | libc::PROT_WRITE))
        else {
            sys::write_all(2, b"ukasan: cannot map the guarded pool; generic mode only\n");
            FAULT_RT.store(null_mut(), Ordering::Release);
            return;
        };
        {
            let mut f = self.fifo.lock();
            f.ring = (meta + n * core::mem::size_of::<Meta>()) as *mut u32;
            f.cap = n;
            for i in 0..n {
                // SAFETY: the ring has `n` slots in the fresh mapping.
                unsafe { *f.ring.add(i) = i as u32 };
            }
            f.len = n;
        }
        self.meta.store(meta as *mut Meta, Ordering::Relaxed);
        self.slots.store(n, Ordering::Relaxed);
        self.end.store(base + len, Ordering::Relaxed);
        // Release pairs with the Acquire load in `contains`: the fields above are visible.
        self.base.store(base, Ordering::Release);
        signal::init_report_stack();
        signal::altstack();
        signal::ensure_handler();
    }

    fn meta(&self, i: usize) -> &Meta {
        // SAFETY: `i < slots`; the metadata mapping holds `slots` zero-initialized entries
        // (all-zero is a valid `Meta`) and lives for the process.
        unsafe { &*self.meta.load(Ordering::Relaxed).add(i) }
    }

    fn data_start(&self, i: usize) -> usize {
        self.base.load(Ordering::Relaxed) + PAGE + i * STRIDE
    }

    /// The slot whose data pages hold `a`, or whose guard page `a` is in, as
    /// `(slot, in its data pages)`; the guard page between two slots goes to the closer
    /// object.
    fn locate(&self, a: usize) -> (usize, bool) {
        let off = a - self.base.load(Ordering::Relaxed);
        let (k, within) = (off / STRIDE, off % STRIDE);
        let n = self.slots.load(Ordering::Relaxed);
        if within >= PAGE && k < n {
            return (k, true);
        }
        // A guard page: left of slot k's data, right of slot k-1's.
        let dist = |i: usize| {
            let m = self.meta(i);
            // SAFETY: plain data; a racing update only changes which object is named.
            let d = unsafe { *m.data.get() };
            if m.state.load(Ordering::Acquire) == FREE || d.size == 0 {
                usize::MAX
            } else if a >= d.user + d.size {
                a - (d.user + d.size)
            } else {
                d.user.saturating_sub(a)
            }
        };
        match (k.checked_sub(1), k < n) {
            (Some(l), true) if dist(l) <= dist(k) => (l, false),
            (Some(l), false) => (l, false),
            (_, true) => (k, false),
            (None, false) => (0, false),
        }
    }

    fn object(&self, i: usize, readable: bool) -> Object {
        // SAFETY: plain data (see `locate`).
        let d = unsafe { *self.meta(i).data.get() };
        let end = self.data_start(i) + DATA_PAGES * PAGE;
        Object {
            user: d.user,
            size: d.size,
            align: d.align,
            alloc: d.alloc,
            free: d.free,
            window: if readable { (page_down(d.user), end) } else { (0, 0) },
        }
    }

    /// Serves a sampled allocation from the pool, or `None` (not sampled, too big, pool
    /// empty): the caller allocates a generic chunk. Runs under the re-entrancy guard.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn alloc(
        &self,
        rt: &Runtime,
        o: &Options,
        size: usize,
        align: usize,
        family: Family,
        zero: bool,
        regs: &Regs,
    ) -> Option<*mut u8> {
        if size == 0 || size > MAX_SIZE || align > PAGE || self.base.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let left = COUNTDOWN.with(Cell::get);
        if left > 1 {
            COUNTDOWN.with(|c| c.set(left - 1));
            return None;
        }
        COUNTDOWN.with(|c| c.set(o.sample_rate));
        // A program (or Rust's std) may have installed its own handler since: put ours back
        // in front, chaining to it.
        signal::ensure_handler();
        self.alloc_sampled(rt, o, size, align, family, zero, regs)
    }

    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn alloc_sampled(
        &self,
        rt: &Runtime,
        o: &Options,
        size: usize,
        align: usize,
        family: Family,
        zero: bool,
        regs: &Regs,
    ) -> Option<*mut u8> {
        let Some(i) = self.pop() else {
            // Relaxed: a once-only notice, nothing published. Only with `verbosity` >= 1: a
            // line the program did not write on its stderr changes its output (CPython's
            // tests compare a child's stderr with '' and failed on it in guarded mode).
            if o.verbosity >= 1 && !self.noticed.swap(true, Ordering::Relaxed) {
                let mut b = sys::FixedBuf::<200>::new();
                let _ = core::fmt::write(
                    &mut b,
                    format_args!(
                        "ukasan: guarded pool exhausted ({} slots in use or retired): further allocations are generic until slots are freed\n",
                        self.slots.load(Ordering::Relaxed)
                    ),
                );
                sys::write_all(2, b.as_bytes());
            }
            return None;
        };
        let start = self.data_start(i);
        let end = start + DATA_PAGES * PAGE;
        let user = (end - size) & !(align.max(1) - 1);
        let lo = page_down(user);
        // SAFETY: [lo, end) are data pages of slot `i`, which the pool owns exclusively now.
        if unsafe {
            libc::mprotect(lo as *mut c_void, end - lo, libc::PROT_READ | libc::PROT_WRITE)
        } != 0
        {
            return None;
        }
        // SAFETY: [lo, end) was just made accessible; the object lies inside it.
        unsafe {
            core::ptr::write_bytes(lo as *mut u8, CANARY, user - lo);
            core::ptr::write_bytes((user + size) as *mut u8, CANARY, end - user - size);
            if zero {
                core::ptr::write_bytes(user as *mut u8, 0, size);
            }
        }
        let m = self.meta(i);
        let alloc = rt.track_seq(o, regs);
        // SAFETY: the slot is out of the FIFO and not yet live: only this thread writes it.
        unsafe {
            *m.data.get() =
                Data { family: family as u8, user, size, align, alloc, free: Track::default() };
        }
        // Release pairs with the Acquire of `free` and the fault handler: the data is visible.
        m.state.store(LIVE, Ordering::Release);
        Some(user as *mut u8)
    }

    fn pop(&self) -> Option<usize> {
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

    fn push(&self, i: usize, must_not_wait: bool) {
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

    /// The requested size of a live guarded object starting at `p`.
    pub(crate) fn live_size(&self, p: usize) -> Option<usize> {
        let (i, data) = self.locate(p);
        let m = self.meta(i);
        // Acquire pairs with the Release in `alloc_sampled`.
        if !data || m.state.load(Ordering::Acquire) != LIVE {
            return None;
        }
        // SAFETY: plain data of a live slot.
        let d = unsafe { *m.data.get() };
        (d.user == p).then_some(d.size)
    }

    /// Frees a pointer inside the pool: double and invalid frees are reported (`o` is `None`
    /// when re-entrant: then quietly), canary damage is reported as a write found at free.
    pub(crate) fn free(
        &self,
        rt: &Runtime,
        o: Option<&Options>,
        p: usize,
        expect: Expect,
        regs: &Regs,
    ) {
        let (i, data) = self.locate(p);
        let m = self.meta(i);
        // SAFETY: plain data (see `locate`).
        let d = unsafe { *m.data.get() };
        let known = m.state.load(Ordering::Acquire) != FREE;
        if !data || d.user != p || !known {
            if let Some(o) = o {
                let obj = (known && data).then(|| self.object(i, false));
                rt.report_object(o, Kind::InvalidFree, Access::Free { addr: p }, obj, regs);
            }
            return;
        }
        // AcqRel: as `Header::take_live`: one of two racing frees wins.
        if m.state.compare_exchange(LIVE, FREED, Ordering::AcqRel, Ordering::Acquire).is_err() {
            if let Some(o) = o {
                let obj = Some(self.object(i, false));
                rt.report_object(o, Kind::DoubleFree, Access::Free { addr: p }, obj, regs);
            }
            return;
        }
        let end = self.data_start(i) + DATA_PAGES * PAGE;
        if let Some(o) = o {
            let fam = Family::from_u8(d.family);
            // As generic chunks: a wrong family says it all, else the claimed layout is
            // checked.
            if expect.family != fam && expect.family != Family::Rust && fam != Family::Rust {
                let access = Access::Mismatch { addr: p, alloc: fam, free: expect.family };
                let obj = Some(self.object(i, true));
                rt.report_object(o, Kind::AllocDeallocMismatch, access, obj, regs);
            } else if let Some((size, align)) = expect.layout {
                rt.check_layout(o, self.object(i, true), p, expect.family, size, align, regs);
            }
            // SAFETY: the slot's object pages are still accessible (made so at alloc).
            let damage = unsafe { find_damage(page_down(d.user), d.user, d.user + d.size, end) };
            if let Some(damage) = damage {
                let access = Access::Corrupt { damage, when: Found::AtFree };
                rt.report_object(o, Kind::OutOfBounds, access, Some(self.object(i, true)), regs);
            }
            let free = rt.track_seq(o, regs);
            // SAFETY: this free won the state change; only it writes the free track.
            unsafe { (*m.data.get()).free = free };
        }
        let start = self.data_start(i);
        // SAFETY: the object's pages are accessible until the mprotect below, and ours: a
        // freed object shows KASAN's free poison in the dump of a use-after-free report.
        unsafe { core::ptr::write_bytes(d.user as *mut u8, crate::chunk::POISON, d.size) };
        // SAFETY: the data pages of slot `i`, owned by the pool.
        unsafe { libc::mprotect(start as *mut c_void, end - start, libc::PROT_NONE) };
        if !m.retired.load(Ordering::Relaxed) {
            self.push(i, o.is_none());
        }
    }

    /// Calls `f` on a leak-scan entry for every live guarded object.
    pub(crate) fn for_each_live(&self, mut f: impl FnMut(Entry)) {
        if self.base.load(Ordering::Acquire) == 0 {
            return;
        }
        for i in 0..self.slots.load(Ordering::Relaxed) {
            let m = self.meta(i);
            if m.state.load(Ordering::Acquire) == LIVE {
                // SAFETY: plain data of a live slot.
                let d = unsafe { *m.data.get() };
                f(Entry { start: d.user, end: d.user + d.size, alloc: d.alloc, mark: 0 });
            }
        }
    }

    /// Handles a fault at `addr` inside the pool. Signal context.
    fn on_fault(&self, rt: &Runtime, addr: usize, write: bool, uc: *mut c_void) {
        let Some(o) = rt.options() else { return };
        let (i, data) = self.locate(addr);
        let m = self.meta(i);
        let state = m.state.load(Ordering::Acquire);
        let kind = if data && state == FREED { Kind::UseAfterFree } else { Kind::SlabOutOfBounds };
        let page = page_down(addr);
        let go_on = !o.halt_on_error;
        if go_on {
            // Let the access complete (KFENCE): the page stays accessible, and the slots that
            // share it are retired.
            m.retired.store(true, Ordering::Relaxed);
            if !data && i + 1 < self.slots.load(Ordering::Relaxed) {
                self.meta(i + 1).retired.store(true, Ordering::Relaxed);
            }
            if i > 0 && !data {
                self.meta(i - 1).retired.store(true, Ordering::Relaxed);
            }
            // SAFETY: a page of the pool's own mapping.
            unsafe {
                libc::mprotect(page as *mut c_void, PAGE, libc::PROT_READ | libc::PROT_WRITE)
            };
        }
        let obj = (state != FREE).then(|| {
            let mut obj = self.object(i, state == LIVE);
            if state == FREED && go_on && data {
                obj.window = (page, page + PAGE);
            }
            obj
        });
        // SAFETY: `uc` is the handler's live ucontext.
        let regs = unsafe { stacktrace::regs_from_ucontext(uc) };
        let mut buf = [0usize; MAX_DEPTH];
        // DWARF first: at a faulting instruction the frame-pointer walk cannot tell whether
        // the function has pushed its frame record yet (a leaf often never does), so it
        // would drop the caller; the CFI knows. Frame pointers etc. when DWARF cannot serve.
        let n = stacktrace::dwarf::capture_from(&regs, &mut buf[..o.depth])
            .or_else(|_| stacktrace::capture_from(&regs, &mut buf[..o.depth]).map(|c| c.len))
            .unwrap_or(0);
        let exact = n > 0 && buf[0] == regs.pc;
        // A jump into the pool faults on the fetch itself: nothing to decode there.
        let size =
            if exact && !self.contains(regs.pc) { decode::access_size(regs.pc) } else { None };
        let access = Access::Fault { addr, write, size };
        let mut job = signal::ReportJob { rt, o, kind, access, obj, stack: &buf[..n], exact };
        signal::on_report_stack(&mut job);
    }
}

/// The first damaged canary range in `[lo, user)` (closest to the object) or `[end_obj, end)`.
///
/// # Safety
/// `[lo, end)` is readable.
unsafe fn find_damage(
    lo: usize,
    user: usize,
    end_obj: usize,
    end: usize,
) -> Option<crate::chunk::Damage> {
    // SAFETY: forwarded.
    let (left, right) = unsafe {
        (
            core::slice::from_raw_parts(lo as *const u8, user - lo),
            core::slice::from_raw_parts(end_obj as *const u8, end - end_obj),
        )
    };
    if let Some(last) = left.iter().rposition(|&b| b != CANARY) {
        let first = left.iter().position(|&b| b != CANARY).unwrap_or(last);
        return Some(crate::chunk::Damage { start: lo + first, end: lo + last + 1 });
    }
    let first = right.iter().position(|&b| b != CANARY)?;
    let last = right.iter().rposition(|&b| b != CANARY).unwrap_or(first);
    Some(crate::chunk::Damage { start: end_obj + first, end: end_obj + last + 1 })
}

fn map(len: usize, prot: c_int) -> Option<usize> {
    // SAFETY: an anonymous private mapping at an address of the kernel's choice.
    let p = unsafe {
        libc::mmap(
            null_mut(),
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    (p != libc::MAP_FAILED).then_some(p as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canary_damage_closest_to_the_object() {
        let mut b = [CANARY; 64];
        // SAFETY: the range is the local array.
        let at = |b: &[u8; 64]| unsafe {
            let lo = b.as_ptr() as usize;
            find_damage(lo, lo + 32, lo + 45, lo + 64).map(|d| (d.start - lo, d.end - lo))
        };
        b[32..45].fill(0);
        assert_eq!(at(&b), None);
        b[46] = 1;
        assert_eq!(at(&b), Some((46, 47)));
        b[3] = 1;
        b[30] = 1;
        assert_eq!(at(&b), Some((3, 31)));
    }

    #[test]
    fn slot_geometry() {
        assert_eq!(STRIDE, 5 * 4096);
        assert_eq!(page_down(0x12345), 0x12000);
        assert!(MAX_SIZE.is_multiple_of(crate::chunk::MIN_ALIGN));
    }
}
