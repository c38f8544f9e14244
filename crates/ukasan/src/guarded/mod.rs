//! Guarded mode (`mode=guarded`): KFENCE / GWP-ASan for user space.
//!
//! About one allocation in `sample_rate` (per thread) with an alignment of at most a page is
//! served from a pool of guard-page slots mapped once with `mmap` at init (never from
//! malloc): small slots of [`DATA_PAGES`] pages for objects up to [`MAX_SIZE`] bytes, large
//! slots of [`LARGE_PAGES`] pages for objects up to [`MAX_LARGE_SIZE`] (one large slot per
//! four small ones, at most [`MAX_LARGE_SLOTS`]), in one mapping:
//!
//! ```text
//! | guard | data x DATA_PAGES | guard | data x DATA_PAGES | guard | ... | guard | data x LARGE_PAGES | guard | ...
//!                  [canary ... object]   <- right placement: one byte past the end faults
//!                                [object ... canary]  <- left placement: one byte before it faults
//! ```
//!
//! The object sits at the right end of its slot's data pages (rounded down to its
//! alignment) or, by `guarded_placement=left` (or per object by a per-thread coin with
//! `random`), at their start; only the pages that hold it are accessible, and the bytes of
//! those pages around it are filled with [`CANARY`], checked at free. A free records the
//! free track, makes the data pages fault again (see below; with `mprotect`, a small
//! object is first filled with the free poison and a large slot's pages are given back with
//! `MADV_DONTNEED`) and puts the slot at
//! the tail of its class's FIFO, so it is reused as late as possible: the address space of
//! freed objects that still fault is bounded by the pool. Any read or write of a guard
//! page, of the inaccessible pages of a slot, or of a freed object faults; the SIGSEGV/SIGBUS
//! handler installed at init reports it at once (`slab-out-of-bounds` / `use-after-free`,
//! about the object nearest to the address among the slot's and its neighbours', so a
//! guard page shared by a right-placed and a left-placed object goes to the closer one;
//! read or write from the page-fault error code on x86-64 and from the ESR record of the
//! signal frame on aarch64; the access size decoded from the common x86-64 moves and
//! arithmetic, else "unknown size"; the faulting instruction as frame #0) and either exits
//! (`halt_on_error`) or makes the page accessible and lets the access complete; the slots
//! around that page are then retired, never reused. Faults outside the pool are passed to
//! the handler that was installed before ours (or the default action).
//!
//! The handler does all its work (capture, symbolization, report) on a 1 MiB report stack
//! of its own, so it needs only a few hundred bytes of the stack the signal arrived on.
//! Every thread that makes a sampled allocation (a thread's first allocation always is) and
//! has no alternate signal stack gets one of 64 KiB from a fixed table of 1024, reused once
//! its thread has exited: a stack overflow in any such thread reaches the handler, which
//! passes it on. A thread beyond the table, or that never allocates, has none; its stack
//! overflow then kills the process as it would without ukasan.
//!
//! Allocations that are not sampled, too big, made by the dynamic loader, or made while
//! their size class is exhausted are generic chunks (one notice on stderr per class when it
//! runs dry, with `verbosity=1`). Frees of guarded objects get the generic checks (double and invalid free,
//! family, claimed size and alignment); live guarded objects take part in the leak scan at
//! exit, during which frees on other threads leave the pages accessible (`Pool::freeze`).
//! With `stacks=off`, only the generic objects go without stacks: a guarded object always
//! records its alloc and free stacks (the cheap GWP-ASan configuration).
//!
//! Pages are made to fault with the kernel's guard markers (`MADV_GUARD_INSTALL` /
//! `MADV_GUARD_REMOVE`, Linux 6.13) in a read-write mapping where the kernel has them (a
//! closed slot's pages are then discarded; a use-after-free fault refills the page it
//! opens with the free poison), else (or with `guarded_markers=0`) with `mprotect` on a
//! `PROT_NONE` mapping, which splits and merges the pool's VMA at every open and close.
//!
//! Costs: a sampled allocation is two `madvise` (or `mprotect`) calls (alloc, free), a page
//! fault per page it touches (guard markers), the canary fill of its first and last page,
//! and two stack captures; unsampled ones pay one thread-local
//! countdown on top of generic mode. Memory: the pool reserves `guarded_slots *
//! (DATA_PAGES + 1)` pages of address space plus `(guarded_slots / 4) * (LARGE_PAGES + 1)`
//! (1.25 + 64.25 MiB for the default 256 slots), touched only where objects are. Measured
//! by `ukasan bench sampling`.
//!
//! Not detected: reads of the slack between the end of an object whose size is not a
//! multiple of its alignment and the guard page (writes there are found at free); an
//! underflow of a right-placed object (an overflow of a left-placed one) within its page
//! that only reads (writes are found at free); accesses that land in another live guarded
//! object; use-after-free once the slot was reused; objects over 1 MiB or aligned to more
//! than a page (generic chunks).

mod class;
mod decode;
mod signal;

use class::{Class, Data, Meta, FREE, FREED, LIVE};

use crate::chunk::{Family, Track};
use crate::leak::Entry;
use crate::options::{Mode, Options, Placement, Stacks, MAX_DEPTH};
use crate::report::{Access, Found, Kind, Object};
use crate::runtime::{Expect, Runtime};
use crate::sys;
use core::cell::Cell;
use core::ffi::{c_int, c_void};
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use stacktrace::Regs;

/// Data pages per small slot.
pub const DATA_PAGES: usize = 4;
/// Largest request of a small slot (bytes), with 4 KiB pages.
pub const MAX_SIZE: usize = DATA_PAGES * 4096;
/// Data pages per large slot.
pub const LARGE_PAGES: usize = 256;
/// Largest guarded request (bytes): larger ones are generic chunks.
pub const MAX_LARGE_SIZE: usize = LARGE_PAGES * 4096;
/// Most large slots; there is one per four small slots (at least one).
pub const MAX_LARGE_SLOTS: usize = 64;
/// Fill of the accessible bytes around a guarded object.
pub const CANARY: u8 = 0xaa;

/// The slot pool of one runtime (empty unless `mode=guarded`): small slots for objects of
/// at most [`MAX_SIZE`] bytes, large ones up to [`MAX_LARGE_SIZE`], in one mapping.
pub(crate) struct Pool {
    /// Start of the mapping (0: no pool).
    base: AtomicUsize,
    end: AtomicUsize,
    small: Class,
    large: Class,
    /// A leak scan reads live guarded objects: frees defer making pages inaccessible.
    frozen: AtomicBool,
}

/// The pool's pages are guarded by the kernel's guard markers (`MADV_GUARD_INSTALL`,
/// Linux 6.13) in a read-write mapping, not by `mprotect`: opening and closing a slot then
/// changes page-table entries only, where `mprotect` splits and merges the pool's VMA every
/// time (three quarters of its cost, measured), and a closed slot's memory is given back.
/// Set once at init, before the pool is published.
static MARKERS: AtomicBool = AtomicBool::new(false);

/// `MADV_GUARD_INSTALL` / `MADV_GUARD_REMOVE` (linux/mman.h; not in the libc crate yet).
const MADV_GUARD_INSTALL: c_int = 102;
const MADV_GUARD_REMOVE: c_int = 103;

/// Switches the fresh `PROT_NONE` pool `[base, base + len)` to guard markers if the kernel
/// has them (else it stays as it is, guarded by `mprotect`).
fn install_markers(base: usize, len: usize) {
    // SAFETY: the pool's own fresh mapping; nothing is in it yet.
    let ok = unsafe {
        libc::mprotect(base as *mut c_void, len, libc::PROT_READ | libc::PROT_WRITE) == 0
            && libc::madvise(base as *mut c_void, len, MADV_GUARD_INSTALL) == 0
    } && guarded(base);
    if ok {
        // Relaxed: published with the pool (Release store of `base`).
        MARKERS.store(true, Ordering::Relaxed);
    } else {
        // SAFETY: as above.
        unsafe { libc::mprotect(base as *mut c_void, len, libc::PROT_NONE) };
    }
}

/// Whether reading the byte at `addr` faults, asked of the kernel without touching it: a
/// success of `MADV_GUARD_INSTALL` is not proof, since qemu-user answers 0 to every `madvise`
/// and does nothing (then `mprotect` must guard the pool). `process_vm_readv` of our own
/// memory fails with `EFAULT` on a guard marker; any other answer (no such syscall, a seccomp
/// refusal, a successful read) counts as "not guarded".
fn guarded(addr: usize) -> bool {
    let mut byte = 0u8;
    let local = libc::iovec { iov_base: (&mut byte as *mut u8).cast(), iov_len: 1 };
    let remote = libc::iovec { iov_base: addr as *mut c_void, iov_len: 1 };
    // SAFETY: reads one byte of our own address space into `byte`, through the kernel (a
    // guarded page makes the call fail, not fault).
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    n < 0 && sys::errno() == libc::EFAULT
}

/// Makes the pool pages `[lo, hi)` accessible: guard markers removed (the pages then read
/// as zero) or `PROT_READ | PROT_WRITE`. Async-signal-safe.
fn open(lo: usize, hi: usize) -> bool {
    // SAFETY: pages of the pool's own mapping, owned by the caller's slot.
    unsafe {
        if MARKERS.load(Ordering::Relaxed) {
            libc::madvise(lo as *mut c_void, hi - lo, MADV_GUARD_REMOVE) == 0
        } else {
            libc::mprotect(lo as *mut c_void, hi - lo, libc::PROT_READ | libc::PROT_WRITE) == 0
        }
    }
}

/// Makes the pool pages `[lo, hi)` fault again: guard markers installed (discarding the
/// pages) or `PROT_NONE`, then with `give_back` the memory returned (`MADV_DONTNEED`).
fn close(lo: usize, hi: usize, give_back: bool) {
    // SAFETY: pages of the pool's own mapping, owned by the caller's slot; nobody reads
    // them any more.
    unsafe {
        if MARKERS.load(Ordering::Relaxed) {
            libc::madvise(lo as *mut c_void, hi - lo, MADV_GUARD_INSTALL);
        } else {
            libc::mprotect(lo as *mut c_void, hi - lo, libc::PROT_NONE);
            if give_back {
                libc::madvise(lo as *mut c_void, hi - lo, libc::MADV_DONTNEED);
            }
        }
    }
}

/// Installs the fault handler (for hw-tags mode, whose faults it reports too) and gives this
/// thread an alternate signal stack.
pub(crate) fn ensure_fault_handler() {
    signal::thread_altstack();
    signal::ensure_handler();
}

/// The stack of a fault from the handler's `uc` into `buf` (at most `depth` frames): the
/// number of frames, whether the first is the faulting instruction, and its pc. DWARF first:
/// at a faulting instruction the frame-pointer walk cannot tell whether the function has
/// pushed its frame record yet (a leaf often never does), so it would drop the caller; the
/// CFI knows. Frame pointers etc. when DWARF cannot serve.
pub(crate) fn fault_stack(
    o: &Options,
    uc: *mut c_void,
    buf: &mut [usize; MAX_DEPTH],
) -> (usize, bool, usize) {
    // SAFETY: `uc` is the handler's live ucontext (the callers' contract).
    let regs = unsafe { stacktrace::regs_from_ucontext(uc) };
    let n = stacktrace::dwarf::capture_from(&regs, &mut buf[..o.depth])
        .or_else(|_| stacktrace::capture_from(&regs, &mut buf[..o.depth]).map(|c| c.len))
        .unwrap_or(0);
    (n, n > 0 && buf[0] == regs.pc, regs.pc)
}

/// The size of the faulting load or store of a signal's `uc`, when decoded (aarch64).
pub(crate) fn fault_size(uc: *mut c_void) -> Option<usize> {
    signal::a64_insn(uc).and_then(|(_, n)| n)
}

/// The runtime whose pool the fault handler serves.
static FAULT_RT: AtomicPtr<Runtime> = AtomicPtr::new(null_mut());

const PAGE: usize = 4096;

const fn page_down(a: usize) -> usize {
    a & !(PAGE - 1)
}

const fn page_up(a: usize) -> usize {
    (a + PAGE - 1) & !(PAGE - 1)
}

/// Whether this object goes against the left guard page.
fn place_left(p: Placement) -> bool {
    match p {
        Placement::Right => false,
        Placement::Left => true,
        Placement::Random => {
            let c = &sys::thread().coin;
            let mut x = c.get();
            if x == 0 {
                // Seeded from this thread's TLS address (differs per thread and, with ASLR,
                // per run).
                x = (c as *const Cell<u32> as usize as u32) | 1;
            }
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            c.set(x);
            x & 1 != 0
        }
    }
}

/// Where an object of `size` bytes at `align` goes in data pages `[start, end)`.
const fn place(start: usize, end: usize, size: usize, align: usize, left: bool) -> usize {
    if left {
        start
    } else {
        (end - size) & !(align - 1)
    }
}

impl Pool {
    pub(crate) const fn new() -> Pool {
        Pool {
            base: AtomicUsize::new(0),
            end: AtomicUsize::new(0),
            small: Class::new(DATA_PAGES),
            large: Class::new(LARGE_PAGES),
            frozen: AtomicBool::new(false),
        }
    }

    /// Takes the slot FIFOs' locks and keeps them (`fork` preparation).
    pub(crate) fn raw_lock(&self) {
        self.small.fifo.raw_lock();
        self.large.fifo.raw_lock();
    }

    /// Releases the locks taken by [`Pool::raw_lock`].
    ///
    /// # Safety
    /// Held through `raw_lock` in this process (or inherited over `fork`).
    pub(crate) unsafe fn force_unlock(&self) {
        // SAFETY: forwarded.
        unsafe {
            self.large.fifo.force_unlock();
            self.small.fifo.force_unlock();
        }
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

    /// The pool's address range; `(0, 0)` when not set up.
    pub(crate) fn range(&self) -> (usize, usize) {
        // Acquire pairs with the Release store of `base` in `init`.
        let base = self.base.load(Ordering::Acquire);
        if base == 0 {
            return (0, 0);
        }
        (base, self.end.load(Ordering::Relaxed))
    }

    /// The class whose region holds `p` (in the pool).
    fn class(&self, p: usize) -> &Class {
        if p >= self.large.base.load(Ordering::Relaxed) {
            &self.large
        } else {
            &self.small
        }
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
        let (n, nl) = (o.guarded_slots, large_slots(o.guarded_slots));
        let (small_len, large_len) = (self.small.len(n), self.large.len(nl));
        let entry = core::mem::size_of::<Meta>() + 4;
        let meta_len = ((n + nl) * entry).next_multiple_of(PAGE);
        let (Some(base), Some(meta)) = (
            map(small_len + large_len, libc::PROT_NONE),
            map(meta_len, libc::PROT_READ | libc::PROT_WRITE),
        ) else {
            sys::write_all(2, b"ukasan: cannot map the guarded pool; generic mode only\n");
            FAULT_RT.store(null_mut(), Ordering::Release);
            return;
        };
        if o.guarded_markers {
            install_markers(base, small_len + large_len);
        }
        let metas = meta as *mut Meta;
        let rings = (meta + (n + nl) * core::mem::size_of::<Meta>()) as *mut u32;
        // SAFETY: offsets inside the metadata mapping (n + nl entries of each array).
        let (large_meta, large_ring) = unsafe { (metas.add(n), rings.add(n)) };
        self.small.setup(base, n, metas, rings);
        self.large.setup(base + small_len, nl, large_meta, large_ring);
        self.end.store(base + small_len + large_len, Ordering::Relaxed);
        // Release pairs with the Acquire load in `contains`: the fields above are visible.
        self.base.store(base, Ordering::Release);
        signal::thread_altstack();
        signal::ensure_handler();
    }

    fn object(c: &Class, i: usize, readable: bool) -> Object {
        let d = c.data(i);
        Object {
            user: d.user,
            size: d.size,
            align: d.align,
            alloc: d.alloc,
            free: d.free,
            window: if readable { d.pages() } else { (0, 0) },
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
        if size == 0
            || size > MAX_LARGE_SIZE
            || align > PAGE
            || self.base.load(Ordering::Relaxed) == 0
        {
            return None;
        }
        let c = &sys::thread().countdown;
        let left = c.get();
        c.set(if left > 1 { left - 1 } else { o.sample_rate });
        let sampled = left <= 1;
        if !sampled {
            return None;
        }
        // A program (or Rust's std) may have installed its own handler since: put ours back
        // in front, chaining to it. A thread new to the pool gets an alternate signal stack.
        signal::ensure_handler();
        signal::thread_altstack();
        let c = if size <= MAX_SIZE { &self.small } else { &self.large };
        self.alloc_sampled(c, rt, o, size, align, family, zero, regs)
    }

    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn alloc_sampled(
        &self,
        c: &Class,
        rt: &Runtime,
        o: &Options,
        size: usize,
        align: usize,
        family: Family,
        zero: bool,
        regs: &Regs,
    ) -> Option<*mut u8> {
        let Some(i) = c.pop() else {
            // Relaxed: a once-only notice, nothing published. Only with `verbosity` >= 1: a
            // line the program did not write on its stderr changes its output (CPython's
            // tests compare a child's stderr with '' and failed on it in guarded mode).
            if o.verbosity >= 1 && !c.noticed.swap(true, Ordering::Relaxed) {
                let mut b = sys::FixedBuf::<200>::new();
                let what = if c.pages > DATA_PAGES { "large-object" } else { "small-object" };
                let _ = core::fmt::write(
                    &mut b,
                    format_args!(
                        "ukasan: guarded pool exhausted ({} {what} slots in use or retired): further allocations of that size are generic until slots are freed\n",
                        c.n()
                    ),
                );
                sys::write_all(2, b.as_bytes());
            }
            return None;
        };
        let (start, end) = (c.data_start(i), c.data_end(i));
        let user = place(start, end, size, align.max(1), place_left(o.placement));
        let (lo, hi) = (page_down(user), page_up(user + size));
        if !open(lo, hi) {
            return None;
        }
        // SAFETY: [lo, hi) was just made accessible; the object lies inside it.
        unsafe {
            core::ptr::write_bytes(lo as *mut u8, CANARY, user - lo);
            core::ptr::write_bytes((user + size) as *mut u8, CANARY, hi - user - size);
            // Pages read as zero when opened by removing guard markers, and a large slot's
            // always (fresh, or given back at its last free).
            if zero && c.pages == DATA_PAGES && !MARKERS.load(Ordering::Relaxed) {
                core::ptr::write_bytes(user as *mut u8, 0, size);
            }
        }
        let m = c.meta(i);
        let alloc = track(rt, o, regs);
        // SAFETY: the slot is out of the FIFO and not yet live: only this thread writes it.
        unsafe {
            *m.data.get() =
                Data { family: family as u8, user, size, align, alloc, free: Track::default() };
        }
        // Release pairs with the Acquire of `free` and the fault handler: the data is visible.
        m.state.store(LIVE, Ordering::Release);
        Some(user as *mut u8)
    }

    /// The requested size of a live guarded object starting at `p`.
    pub(crate) fn live_size(&self, p: usize) -> Option<usize> {
        let c = self.class(p);
        let i = c.holder(p)?;
        // Acquire pairs with the Release in `alloc_sampled`.
        if c.meta(i).state.load(Ordering::Acquire) != LIVE {
            return None;
        }
        let d = c.data(i);
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
        let c = self.class(p);
        let Some(i) = c.holder(p) else {
            if let Some(o) = o {
                rt.report_object(o, Kind::InvalidFree, Access::Free { addr: p }, None, regs);
            }
            return;
        };
        let m = c.meta(i);
        let d = c.data(i);
        let known = m.state.load(Ordering::Acquire) != FREE;
        if d.user != p || !known {
            if let Some(o) = o {
                let obj = known.then(|| Self::object(c, i, false));
                rt.report_object(o, Kind::InvalidFree, Access::Free { addr: p }, obj, regs);
            }
            return;
        }
        // SeqCst (not just AcqRel as `Header::take_live`: one of two racing frees wins):
        // with the SeqCst load of `frozen` below and the scan's SeqCst store of `frozen`
        // then load of the state, either the scan sees FREED or this free sees the freeze.
        if m.state.compare_exchange(LIVE, FREED, Ordering::SeqCst, Ordering::Acquire).is_err() {
            if let Some(o) = o {
                let obj = Some(Self::object(c, i, false));
                rt.report_object(o, Kind::DoubleFree, Access::Free { addr: p }, obj, regs);
            }
            return;
        }
        let (lo, hi) = d.pages();
        if let Some(o) = o {
            let fam = Family::from_u8(d.family);
            // As generic chunks: a wrong family says it all, else the claimed layout is
            // checked.
            if expect.family != fam && expect.family != Family::Rust && fam != Family::Rust {
                let access = Access::Mismatch { addr: p, alloc: fam, free: expect.family };
                let obj = Some(Self::object(c, i, true));
                rt.report_object(o, Kind::AllocDeallocMismatch, access, obj, regs);
            } else if let Some((size, align)) = expect.layout {
                rt.check_layout(o, Self::object(c, i, true), p, expect.family, size, align, regs);
            }
            // SAFETY: the slot's object pages are still accessible (made so at alloc).
            let damage = unsafe { find_damage(lo, d.user, d.user + d.size, hi) };
            if let Some(damage) = damage {
                let access = Access::Corrupt { damage, when: Found::AtFree };
                let obj = Some(Self::object(c, i, true));
                rt.report_object(o, Kind::OutOfBounds, access, obj, regs);
            }
            let free = track(rt, o, regs);
            // SAFETY: this free won the state change; only it writes the free track.
            unsafe { (*m.data.get()).free = free };
        }
        if c.pages == DATA_PAGES && !MARKERS.load(Ordering::Relaxed) {
            // SAFETY: the object's pages are accessible until they are protected, and ours:
            // a freed object shows KASAN's free poison in the dump of a use-after-free
            // report. (Guard markers and a large slot discard the pages instead; a fault
            // there poisons the page it opens.)
            unsafe { core::ptr::write_bytes(d.user as *mut u8, crate::chunk::POISON, d.size) };
        }
        // SeqCst: see the state change above.
        if self.frozen.load(Ordering::SeqCst) {
            // Release pairs with the swap in `thaw`.
            m.deferred.store(true, Ordering::Release);
            // The scan may have ended meanwhile: whoever clears the flag finishes the free.
            if self.frozen.load(Ordering::SeqCst) || !m.deferred.swap(false, Ordering::AcqRel) {
                return;
            }
        }
        c.protect_and_queue(i, o.is_none());
    }

    /// Freezes the pool for a leak scan: from now until [`Pool::thaw`], freed guarded
    /// objects stay accessible and their slots unused, so the scan (which reads every live
    /// object and its slot's data) never meets a page made inaccessible under it, even when
    /// another thread frees meanwhile.
    pub(crate) fn freeze(&self) {
        // SeqCst: see `free`.
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Ends [`Pool::freeze`]: the slots freed meanwhile are protected and queued now.
    pub(crate) fn thaw(&self) {
        // SeqCst: see `free`.
        self.frozen.store(false, Ordering::SeqCst);
        if !self.active() {
            return;
        }
        for c in [&self.small, &self.large] {
            for i in 0..c.n() {
                // AcqRel pairs with the Release store in `free`: the slot is ours to finish.
                if c.meta(i).deferred.swap(false, Ordering::AcqRel) {
                    c.protect_and_queue(i, false);
                }
            }
        }
    }

    /// Calls `f` on a leak-scan entry for every live guarded object.
    pub(crate) fn for_each_live(&self, mut f: impl FnMut(Entry)) {
        if self.base.load(Ordering::Acquire) == 0 {
            return;
        }
        for c in [&self.small, &self.large] {
            for i in 0..c.n() {
                let m = c.meta(i);
                // SeqCst: see `free` (a concurrent free either is seen here or sees the
                // freeze and leaves the object accessible).
                if m.state.load(Ordering::SeqCst) == LIVE {
                    let d = c.data(i);
                    f(Entry { start: d.user, end: d.user + d.size, alloc: d.alloc, mark: 0 });
                }
            }
        }
    }

    /// Handles a fault at `addr` inside the pool (on the report stack). Signal context.
    fn on_fault(&self, rt: &Runtime, addr: usize, write: bool, uc: *mut c_void) {
        let Some(o) = rt.options() else { return };
        let c = self.class(addr);
        let spot = c.nearest(addr);
        let i = spot.slot;
        let m = c.meta(i);
        let state = m.state.load(Ordering::Acquire);
        let d = c.data(i);
        let (lo, hi) = d.pages();
        let on_freed = state == FREED && (lo..hi).contains(&addr);
        let kind = if on_freed { Kind::UseAfterFree } else { Kind::SlabOutOfBounds };
        let page = page_down(addr);
        let go_on = !o.halt_on_error;
        if go_on {
            // Let the access complete (KFENCE): the page stays accessible, and the slots that
            // share it are retired.
            let (k, data) = c.position(addr);
            if data {
                c.meta(k).retired.store(true, Ordering::Relaxed);
            } else {
                if k < c.n() {
                    c.meta(k).retired.store(true, Ordering::Relaxed);
                }
                if k > 0 {
                    c.meta(k - 1).retired.store(true, Ordering::Relaxed);
                }
            }
            if open(page, page + PAGE)
                && on_freed
                && (MARKERS.load(Ordering::Relaxed) || c.pages > DATA_PAGES)
            {
                // The page was discarded at free: the access completes on the free poison,
                // which the dump shows too.
                let (a, b) = (d.user.max(page), (d.user + d.size).min(page + PAGE));
                // SAFETY: just made accessible; part of the retired slot's freed object.
                unsafe { core::ptr::write_bytes(a as *mut u8, crate::chunk::POISON, b - a) };
            }
        }
        let obj = (state != FREE).then(|| {
            let mut obj = Self::object(c, i, state == LIVE);
            if on_freed && go_on {
                obj.window = (page, page + PAGE);
            }
            obj
        });
        let mut buf = [0usize; MAX_DEPTH];
        let (n, exact, pc) = fault_stack(o, uc, &mut buf);
        // A jump into the pool faults on the fetch itself: nothing to decode there. On
        // aarch64 the instruction says it (the ESR in the signal frame carries no size for
        // user faults: the kernel clears ISV/SAS).
        let decodable = exact && !self.contains(pc);
        let size = if !decodable {
            None
        } else if cfg!(target_arch = "aarch64") {
            fault_size(uc)
        } else {
            decode::access_size(pc)
        };
        let access = Access::Fault { addr, write, size };
        rt.report_stack(o, kind, access, obj, &buf[..n], exact);
    }
}

/// The alloc or free track of a guarded object: always with its stack. `stacks=off` in
/// guarded mode drops the stacks of the generic (unsampled) objects only, the cheap
/// GWP-ASan configuration: a guarded object's report is worth little without them.
fn track(rt: &Runtime, o: &Options, regs: &Regs) -> Track {
    if o.stacks != Stacks::Off {
        return rt.track_seq(o, regs);
    }
    let mut with = *o;
    with.stacks = Stacks::Auto;
    rt.track_seq(&with, regs)
}

/// Large slots for `small` small ones.
const fn large_slots(small: usize) -> usize {
    let n = small / 4;
    if n == 0 {
        1
    } else if n > MAX_LARGE_SLOTS {
        MAX_LARGE_SLOTS
    } else {
        n
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
    // The common case, intact canaries, in 64-byte blocks the compiler vectorizes.
    if intact(left) && intact(right) {
        return None;
    }
    if let Some(last) = left.iter().rposition(|&b| b != CANARY) {
        let first = left.iter().position(|&b| b != CANARY).unwrap_or(last);
        return Some(crate::chunk::Damage { start: lo + first, end: lo + last + 1 });
    }
    let first = right.iter().position(|&b| b != CANARY)?;
    let last = right.iter().rposition(|&b| b != CANARY).unwrap_or(first);
    Some(crate::chunk::Damage { start: end_obj + first, end: end_obj + last + 1 })
}

/// Whether every byte of `b` is [`CANARY`].
fn intact(b: &[u8]) -> bool {
    let blocks = b.chunks_exact(64);
    let tail = blocks.remainder();
    blocks.fold(0u8, |acc, c| c.iter().fold(acc, |a, &x| a | (x ^ CANARY))) == 0
        && tail.iter().all(|&x| x == CANARY)
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
        assert_eq!(Class::new(DATA_PAGES).stride(), 5 * 4096);
        assert_eq!(Class::new(LARGE_PAGES).len(2), 4096 + 2 * 257 * 4096);
        assert_eq!(page_up(0x12001), 0x13000);
        assert_eq!(page_up(0x12000), 0x12000);
        // Right: against the end, rounded down to the alignment; left: at the start.
        assert_eq!(place(0x10000, 0x14000, 13, 16, false), 0x13ff0);
        assert_eq!(place(0x10000, 0x14000, 32, 8, false), 0x14000 - 32);
        assert_eq!(place(0x10000, 0x14000, 32, 8, true), 0x10000);
        assert_eq!((large_slots(1), large_slots(16), large_slots(4096)), (1, 4, 64));
        assert_eq!(page_down(0x12345), 0x12000);
        assert!(MAX_SIZE.is_multiple_of(crate::chunk::MIN_ALIGN));
    }
}
