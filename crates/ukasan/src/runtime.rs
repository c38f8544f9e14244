//! The detector proper, shared by the GlobalAlloc wrapper and `libukasan.so`: allocation
//! with redzones and tracks, validated free, quarantine, and the checks at exit.
//!
//! Thread safety: no global lock on the fast path. Live chunks (for leak detection) and the
//! quarantine are split over [`SHARDS`] spin-locked lists chosen by thread id; the header
//! state is an atomic, so two racing frees of one pointer produce one free and one
//! double-free report. Re-entrant calls (the runtime's own allocations, a signal handler
//! interrupting the runtime) are served untracked by the backing allocator.

use crate::chunk::{self, Family, Header, State, Track, F_LISTED, F_LOADER, F_RAW};
use crate::guarded;
use crate::leak::{self, Entry, Scratch};
use crate::options::{Mode, Options, Stacks, MAX_DEPTH};
use crate::report::{self, Access, Found, Kind, Object, Report, Reporter};
use crate::sys::{self, Guard, SpinLock};
use core::cell::UnsafeCell;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use stacktrace::Regs;

/// Number of registry and quarantine shards.
pub const SHARDS: usize = 16;

/// The allocator under the detector.
///
/// # Safety
/// `alloc` returns null or a block of at least `size` bytes aligned to `align` (a power of
/// two, at least 16) that stays valid until passed to `dealloc` with the same size and
/// alignment; both may be called from any thread.
pub unsafe trait Backing {
    /// A block of `size` bytes aligned to `align`, or null.
    fn alloc(&self, size: usize, align: usize) -> *mut u8;
    /// Releases a block from [`Backing::alloc`].
    ///
    /// # Safety
    /// `p` came from `alloc(size, align)` of this backing and was not released yet.
    unsafe fn dealloc(&self, p: *mut u8, size: usize, align: usize);
}

/// A request as the program made it, for checks at free.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    /// Family of the freeing function.
    pub family: Family,
    /// `(size, align)` the program claims (Rust `Layout`, C++ sized or aligned delete);
    /// `None` if unknown. A C++ delete that knows only the alignment passes
    /// [`Expect::ANY_SIZE`] as the size.
    pub layout: Option<(usize, usize)>,
}

impl Expect {
    /// The size of a C++ unsized delete (`operator delete(void*, std::align_val_t)`): only
    /// its alignment is checked. No chunk is this large.
    pub const ANY_SIZE: usize = usize::MAX;
}

struct ShardData {
    live: *mut Header,
    q_head: *mut Header,
    q_tail: *mut Header,
    q_bytes: usize,
}

// SAFETY: the raw pointers are list links to chunks owned by the runtime; the shard lock
// serializes every access to them.
unsafe impl Send for ShardData {}

const UNINIT: u8 = 0;
const INITIALIZING: u8 = 1;
const READY: u8 = 2;

/// One detector instance: options, shards, reporter.
pub struct Runtime {
    state: AtomicU8,
    opts: UnsafeCell<Options>,
    spec: &'static str,
    leaks_default: bool,
    lazy: bool,
    seq: AtomicU64,
    q_total: AtomicUsize,
    /// Text range `[lo, hi)` of the dynamic loader (allocations it makes are not leaks).
    loader: (AtomicUsize, AtomicUsize),
    shards: [SpinLock<ShardData>; SHARDS],
    pub(crate) reporter: Reporter,
    /// The guard-page pool (`mode=guarded`).
    pub(crate) guarded: guarded::Pool,
}

impl core::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Runtime").field("spec", &self.spec).finish_non_exhaustive()
    }
}

// SAFETY: `opts` is written once by the thread that wins the UNINIT -> INITIALIZING race and
// published by the Release store of READY; it is only read after an Acquire load sees READY.
unsafe impl Sync for Runtime {}

/// The runtime whose exit checks run at process exit (the first one initialized).
static EXIT_RT: AtomicPtr<Runtime> = AtomicPtr::new(null_mut());

impl Runtime {
    /// A runtime configured by `spec` (`key=value:...`, then `UKASAN_OPTIONS`);
    /// `leaks_default` is `detect_leaks` when no option sets it.
    pub const fn new(spec: &'static str, leaks_default: bool) -> Runtime {
        Self::build(spec, leaks_default, true)
    }

    /// Like [`Runtime::new`], but allocations stay untracked until [`Runtime::init`] is
    /// called explicitly (a preload library calls it from its constructor, after libc is
    /// initialized; allocations made by the loader before that are raw).
    pub const fn new_explicit_init(spec: &'static str, leaks_default: bool) -> Runtime {
        Self::build(spec, leaks_default, false)
    }

    const fn build(spec: &'static str, leaks_default: bool, lazy: bool) -> Runtime {
        // A const used only as an array-repeat initializer: each element is a fresh lock.
        #[allow(clippy::declare_interior_mutable_const)]
        const SHARD: SpinLock<ShardData> = SpinLock::new(ShardData {
            live: null_mut(),
            q_head: null_mut(),
            q_tail: null_mut(),
            q_bytes: 0,
        });
        Runtime {
            state: AtomicU8::new(UNINIT),
            opts: UnsafeCell::new(Options::DEFAULT),
            spec,
            leaks_default,
            lazy,
            seq: AtomicU64::new(1),
            q_total: AtomicUsize::new(0),
            loader: (AtomicUsize::new(0), AtomicUsize::new(0)),
            shards: [SHARD; SHARDS],
            reporter: Reporter::new(),
            guarded: guarded::Pool::new(),
        }
    }

    /// The options, once initialized.
    #[inline]
    pub fn options(&self) -> Option<&Options> {
        // Acquire pairs with the Release store of READY in `init`.
        if self.state.load(Ordering::Acquire) == READY {
            // SAFETY: written before READY was published and never again.
            Some(unsafe { &*self.opts.get() })
        } else {
            None
        }
    }

    /// Reads options and registers the exit checks; idempotent and race-free (losers of the
    /// race, and calls made during initialization, see `false` and allocate untracked).
    ///
    /// The runtime must live for the rest of the process (a `static`): its address is kept
    /// for the exit checks.
    #[cold]
    pub fn init(&self) -> bool {
        // Acquire pairs with the Release store of READY below.
        match self.state.compare_exchange(
            UNINIT,
            INITIALIZING,
            Ordering::Acquire,
            Ordering::Acquire,
        ) {
            Ok(_) => {}
            Err(s) => return s == READY,
        }
        let Some(_g) = Guard::enter() else {
            // Inside the runtime already (impossible before init) - stay uninitialized.
            // Release: nothing was written; restores the initial state.
            self.state.store(UNINIT, Ordering::Release);
            return false;
        };
        // Resolve `_dl_find_object` now, in normal context, in case this runs from a
        // constructor ahead of the capture crate's own: a rule lookup never has to.
        let _ = stacktrace::dwarf::has_dl_find_object();
        let mut o = Options::load(self.spec.as_bytes());
        if o.detect_leaks.is_none() {
            o.detect_leaks = Some(self.leaks_default);
        }
        Self::size_depot(&o);
        let (lo, hi) = leak::loader_range();
        // Relaxed: published by the Release store of READY below.
        self.loader.0.store(lo, Ordering::Relaxed);
        self.loader.1.store(hi, Ordering::Relaxed);
        // SAFETY: we won the race to INITIALIZING; nobody reads `opts` before READY.
        unsafe { *self.opts.get() = o };
        // SAFETY: the runtime lives for the rest of the process (documented above).
        let this: &'static Runtime = unsafe { &*(self as *const Runtime) };
        self.guarded.init(this, &o);
        // Release pairs with the Acquire loads in `options` and `init`.
        self.state.store(READY, Ordering::Release);
        // AcqRel on success: publishes the runtime address to the exit hook.
        if EXIT_RT
            .compare_exchange(
                null_mut(),
                self as *const Runtime as *mut Runtime,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            // SAFETY: `on_exit` is glibc's; the callback only reads EXIT_RT.
            unsafe { on_exit(exit_hook, null_mut()) };
            // SAFETY: the three handlers only take and release this process's locks.
            unsafe {
                libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child))
            };
        }
        if o.verbosity > 0 {
            let mut b = sys::FixedBuf::<256>::new();
            let _ = core::fmt::write(
                &mut b,
                format_args!(
                    "ukasan: {} mode, stacks={:?} depth={} quarantine={} MiB redzone={} leaks={} depot={} MiB\n",
                    if self.guarded.active() { "guarded" } else { "generic" },
                    o.stacks,
                    o.depth,
                    o.quarantine_bytes >> 20,
                    o.redzone,
                    o.detect_leaks == Some(true),
                    stackdepot::stats().bytes_budget >> 20
                ),
            );
            sys::write_all(2, b.as_bytes());
        }
        true
    }

    /// Gives the stack depot the `depot_size_mb` budget; it must come before the first save,
    /// which no tracked allocation has made yet. Says so if the depot was in use already
    /// (another runtime in the process saved stacks first).
    #[cold]
    fn size_depot(o: &Options) {
        let now = stackdepot::stats().bytes_budget;
        if stackdepot::set_budget(o.depot_bytes) || now == o.depot_bytes as u64 {
            return;
        }
        let mut b = sys::FixedBuf::<160>::new();
        let _ = core::fmt::write(
            &mut b,
            format_args!(
                "ukasan: depot_size_mb={} ignored: the stack depot was in use already (now {} MiB)\n",
                o.depot_bytes >> 20,
                now >> 20
            ),
        );
        sys::write_all(2, b.as_bytes());
    }

    /// Allocates an untracked chunk (before init, or from inside the runtime).
    #[inline(never)]
    fn alloc_raw<B: Backing>(&self, b: &B, size: usize, align: usize, family: Family) -> *mut u8 {
        let Some(g) = chunk::geometry(size, align, chunk::MIN_ALIGN) else {
            return null_mut();
        };
        let base = b.alloc(g.total, g.align);
        if base.is_null() {
            return null_mut();
        }
        // SAFETY: `base` is a fresh block of `g.total` bytes aligned to `g.align`.
        let user = unsafe { Header::init(base, g, size, align, family, F_RAW, false) };
        // List it as a root for the leak scan; never wait long (this may be a signal handler
        // that interrupted the holder on this thread): an unlisted raw chunk is only not a root.
        let s = (user as usize >> 12) % SHARDS;
        if let Some(mut sh) = self.shards[s].lock_bounded(1 << 10) {
            // SAFETY: the header was just initialized and is exclusively ours.
            let h = unsafe { &mut *Header::of(user as usize) };
            h.shard = s as u8;
            h.flags |= F_LISTED;
            h.next = sh.live;
            if !sh.live.is_null() {
                // SAFETY: list members are listed chunks; the shard lock is held.
                unsafe { (*sh.live).prev = h };
            }
            sh.live = h;
        }
        user
    }

    /// Allocates `size` bytes aligned to `align` (a power of two) for `family`, recording
    /// the stack from `regs` (the allocating function's caller). Null when out of memory or
    /// the size is absurd; `zero` clears the bytes (calloc).
    #[inline]
    pub fn alloc<B: Backing>(
        &self,
        b: &B,
        size: usize,
        align: usize,
        family: Family,
        zero: bool,
        regs: &Regs,
    ) -> *mut u8 {
        let ready =
            self.options().or_else(|| (self.lazy && self.init()).then(|| self.options()).flatten());
        let Some(o) = ready else {
            return self.alloc_raw_zeroed(b, size, align, family, zero);
        };
        let Some(_g) = Guard::enter() else {
            return self.alloc_raw_zeroed(b, size, align, family, zero);
        };
        // Relaxed: written before READY was published (Acquire in `options`).
        let loader = self.loader.0.load(Ordering::Relaxed)..self.loader.1.load(Ordering::Relaxed);
        // The loader's own allocations (TLS blocks, DTVs) stay generic: they are leak roots.
        if o.mode == Mode::Guarded && !loader.contains(&regs.pc) {
            if let Some(p) = self.guarded.alloc(self, o, size, align, family, zero, regs) {
                return p;
            }
        }
        let Some(g) = chunk::geometry(size, align, o.redzone) else {
            return null_mut();
        };
        let base = b.alloc(g.total, g.align);
        if base.is_null() {
            return null_mut();
        }
        let mut listed = if o.detect_leaks == Some(true) { F_LISTED } else { 0 };
        if listed != 0 && loader.contains(&regs.pc) {
            listed |= F_LOADER;
        }
        // SAFETY: `base` is a fresh block of `g.total` bytes aligned to `g.align`.
        let user = unsafe { Header::init(base, g, size, align, family, listed, true) };
        // SAFETY: the header was just initialized and is exclusively ours.
        let h = unsafe { &mut *Header::of(user as usize) };
        h.alloc = self.track(o, regs);
        if zero {
            // SAFETY: `size` user bytes lie inside the block.
            unsafe { core::ptr::write_bytes(user, 0, size) };
        }
        if listed != 0 {
            let s = (h.alloc.tid as usize) % SHARDS;
            h.shard = s as u8;
            let mut sh = self.shards[s].lock();
            h.next = sh.live;
            if !sh.live.is_null() {
                // SAFETY: list members are live listed chunks; the shard lock is held.
                unsafe { (*sh.live).prev = h };
            }
            sh.live = h;
        }
        user
    }

    fn alloc_raw_zeroed<B: Backing>(
        &self,
        b: &B,
        size: usize,
        align: usize,
        family: Family,
        zero: bool,
    ) -> *mut u8 {
        let p = self.alloc_raw(b, size, align, family);
        if zero && !p.is_null() {
            // SAFETY: `size` user bytes lie inside the fresh block.
            unsafe { core::ptr::write_bytes(p, 0, size) };
        }
        p
    }

    /// A track for the current thread with the stack from `regs`.
    #[inline]
    pub(crate) fn track(&self, o: &Options, regs: &Regs) -> Track {
        let stack = if o.stacks == Stacks::Off {
            0
        } else if o.depth <= 64 {
            let mut buf = [0usize; 64];
            self.save(o, regs, &mut buf[..o.depth])
        } else {
            let mut buf = [0usize; MAX_DEPTH];
            self.save(o, regs, &mut buf[..o.depth])
        };
        // Relaxed: a unique, roughly ordered number; nothing is published through it.
        Track { tid: sys::tid(), stack, seq: self.seq.fetch_add(1, Ordering::Relaxed) }
    }

    #[inline]
    fn save(&self, o: &Options, regs: &Regs, buf: &mut [usize]) -> u32 {
        // The software shadow stack captures and saves in one call, walking and saving only
        // the frames that changed since this thread's previous capture.
        if o.stacks == Stacks::Shadow && o.depot {
            if let Ok(s) = stacktrace::softshadow::capture_and_save_from(regs, buf) {
                return s.handle.to_raw();
            }
        }
        let n = capture(o.stacks, regs, buf);
        if n == 0 || !o.depot {
            return 0;
        }
        stackdepot::save(&buf[..n]).to_raw()
    }

    /// The chunk behind a pointer the program passes back, if it is one of ours and intact.
    ///
    /// # Safety
    /// `p` is non-null; the `HDR + LEFT_RZ` bytes before it must be readable (true for every
    /// pointer this runtime handed out; a foreign pointer near the start of a mapping may fault).
    #[inline]
    unsafe fn header<'a>(p: *mut u8) -> Option<&'a mut Header> {
        let h = Header::of(p as usize);
        if !(h as usize).is_multiple_of(chunk::MIN_ALIGN) || (p as usize) < 4096 {
            return None;
        }
        // SAFETY: readable per the caller's contract; validity checked by the magic.
        let h = unsafe { &mut *h };
        h.valid().then_some(h)
    }

    /// Frees `p`, checking it against `expect`. Reports and keeps going on bugs (unless
    /// `halt_on_error`); a pointer that is not ours is reported and never released.
    ///
    /// # Safety
    /// `p` is null or a pointer the program believes it got from this allocator.
    #[inline]
    pub unsafe fn free<B: Backing>(&self, b: &B, p: *mut u8, expect: Expect, regs: &Regs) {
        if p.is_null() {
            return;
        }
        if self.guarded.contains(p as usize) {
            let g = Guard::enter();
            let o = self.options().filter(|_| g.is_some());
            self.guarded.free(self, o, p as usize, expect, regs);
            return;
        }
        // Before init (possibly before the loader set up TLS): no thread-local access.
        let Some(o) = self.options() else {
            // SAFETY: forwarded contract.
            unsafe { self.free_untracked(b, p, true) };
            return;
        };
        let Some(_g) = Guard::enter() else {
            // Re-entrant (the runtime itself, or a signal handler interrupting it).
            // SAFETY: forwarded contract.
            unsafe { self.free_untracked(b, p, true) };
            return;
        };
        // SAFETY: forwarded contract (p came from us or is reported as foreign).
        let Some(h) = (unsafe { Self::header(p) }) else {
            self.report_invalid_free(o, p as usize, regs);
            return;
        };
        if h.flags & F_RAW != 0 {
            // SAFETY: forwarded.
            unsafe { self.free_untracked(b, p, false) };
            return;
        }
        if h.take_live(State::Quarantined).is_err() {
            self.report_simple(
                o,
                Kind::DoubleFree,
                Access::Free { addr: p as usize },
                Some(h),
                regs,
            );
            return;
        }
        // One report per bad free: a wrong family says it all; only a free of the right
        // family is checked for the size and alignment it claims.
        if expect.family != h.family()
            && !(expect.family == Family::Rust || h.family() == Family::Rust)
        {
            let access =
                Access::Mismatch { addr: p as usize, alloc: h.family(), free: expect.family };
            self.report_simple(o, Kind::AllocDeallocMismatch, access, Some(h), regs);
        } else if let Some((size, align)) = expect.layout {
            self.check_layout(o, Object::of(h), p as usize, expect.family, size, align, regs);
        }
        // SAFETY: the chunk is ours and owned by this free until quarantined.
        unsafe { self.check_redzones(o, h, Found::AtFree, regs) };
        h.free = self.track(o, regs);
        if h.flags & F_LISTED != 0 {
            self.unlink(h);
        }
        if o.quarantine_bytes == 0 {
            h.set_state(State::Released);
            // SAFETY: ours, taken out of the live state by this free.
            unsafe { Self::release(b, h) };
            return;
        }
        // SAFETY: owned by this free.
        unsafe { h.poison() };
        self.quarantine(b, o, h, regs);
    }

    /// Moves `p` to a new chunk of `new_size` bytes (same family), copying the old bytes,
    /// and frees `p` with the checks of [`Runtime::free`]. `p` null allocates. On failure
    /// returns null and `p` stays valid. A `p` that is not a live chunk of ours is reported
    /// by the free and the new chunk is returned uninitialized.
    ///
    /// # Safety
    /// As [`Runtime::free`].
    pub unsafe fn realloc<B: Backing>(
        &self,
        b: &B,
        p: *mut u8,
        new_size: usize,
        align: usize,
        expect: Expect,
        regs: &Regs,
    ) -> *mut u8 {
        if p.is_null() {
            return self.alloc(b, new_size, align, expect.family, false, regs);
        }
        // SAFETY: forwarded.
        let old = unsafe { self.live_size(p) };
        let q = self.alloc(b, new_size, align, expect.family, false, regs);
        if q.is_null() {
            return q;
        }
        if let Some(old) = old {
            // SAFETY: both chunks are live and distinct; each holds at least the copied bytes.
            unsafe { core::ptr::copy_nonoverlapping(p, q, old.min(new_size)) };
        }
        // SAFETY: forwarded.
        unsafe { self.free(b, p, expect, regs) };
        q
    }

    /// Untracked free: raw chunks are released; a tracked chunk freed from inside the runtime
    /// (a signal handler) is unlinked if its shard is free, else left alone (a leak, never a
    /// deadlock).
    ///
    /// # Safety
    /// As [`Runtime::free`].
    unsafe fn free_untracked<B: Backing>(&self, b: &B, p: *mut u8, must_not_wait: bool) {
        // SAFETY: forwarded.
        let Some(h) = (unsafe { Self::header(p) }) else {
            return;
        };
        if h.take_live(State::Released).is_err() {
            return;
        }
        if h.flags & F_LISTED != 0 {
            let shard = &self.shards[h.shard as usize];
            let sh = if must_not_wait { shard.lock_bounded(1 << 16) } else { Some(shard.lock()) };
            // A shard held by the code this signal handler interrupted: leave the chunk.
            let Some(mut sh) = sh else { return };
            Self::unlink_locked(&mut sh, h);
        }
        // SAFETY: taken out of the live state by us.
        unsafe { Self::release(b, h) };
    }

    fn unlink(&self, h: &mut Header) {
        let mut sh = self.shards[h.shard as usize].lock();
        Self::unlink_locked(&mut sh, h);
    }

    fn unlink_locked(sh: &mut ShardData, h: &mut Header) {
        // SAFETY: neighbours are listed chunks of this shard; its lock is held by the caller.
        unsafe {
            if h.prev.is_null() {
                sh.live = h.next;
            } else {
                (*h.prev).next = h.next;
            }
            if !h.next.is_null() {
                (*h.next).prev = h.prev;
            }
        }
        h.next = null_mut();
        h.prev = null_mut();
        h.flags &= !F_LISTED;
    }

    /// Gives a chunk's block back.
    ///
    /// # Safety
    /// `h` is ours and no longer referenced by any list or by the program.
    unsafe fn release<B: Backing>(b: &B, h: &mut Header) {
        let (base, total, align) = (h.base() as *mut u8, h.total, h.align.max(chunk::MIN_ALIGN));
        h.invalidate();
        // SAFETY: the block came from `b.alloc(total, align)` (geometry is deterministic).
        unsafe { b.dealloc(base, total, align) };
    }

    /// Puts a freed, poisoned chunk at the tail of this thread's quarantine shard and evicts
    /// the oldest chunks of that shard while the quarantine is over budget.
    fn quarantine<B: Backing>(&self, b: &B, o: &Options, h: &mut Header, regs: &Regs) {
        let bytes = h.total;
        let s = (h.free.tid as usize) % SHARDS;
        let mut evicted: *mut Header = null_mut();
        {
            let mut sh = self.shards[s].lock();
            h.next = null_mut();
            if sh.q_tail.is_null() {
                sh.q_head = h;
            } else {
                // SAFETY: the tail is a quarantined chunk of this shard; lock held.
                unsafe { (*sh.q_tail).next = h };
            }
            sh.q_tail = h;
            sh.q_bytes += bytes;
            // Relaxed: an approximate budget; the lists themselves are under the locks.
            let mut total = self.q_total.fetch_add(bytes, Ordering::Relaxed) + bytes;
            let mut last: *mut Header = null_mut();
            while total > o.quarantine_bytes && !sh.q_head.is_null() {
                let old = sh.q_head;
                // SAFETY: `old` heads this shard's quarantine; lock held.
                let old_ref = unsafe { &mut *old };
                sh.q_head = old_ref.next;
                if sh.q_head.is_null() {
                    sh.q_tail = null_mut();
                }
                sh.q_bytes -= old_ref.total;
                // Relaxed: as above.
                self.q_total.fetch_sub(old_ref.total, Ordering::Relaxed);
                total -= old_ref.total;
                old_ref.next = null_mut();
                if last.is_null() {
                    evicted = old;
                } else {
                    // SAFETY: `last` was evicted by us just before; exclusively ours now.
                    unsafe { (*last).next = old };
                }
                last = old;
            }
        }
        while !evicted.is_null() {
            // SAFETY: evicted chunks are out of every list and exclusively ours.
            let e = unsafe { &mut *evicted };
            evicted = e.next;
            self.verify_quarantined(o, e, Found::AtEviction, regs);
            e.set_state(State::Released);
            // SAFETY: out of every list; the program freed it.
            unsafe { Self::release(b, e) };
        }
    }

    /// Reports a free whose claimed size or alignment is not the allocation's: C++ sized or
    /// aligned deletes as `new-delete-type-mismatch` (sizes compared unless the delete is
    /// unsized, alignments as C++ does, 16 and below being the default), anything else (Rust
    /// `dealloc`/`realloc`) as `layout-mismatch`.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn check_layout(
        &self,
        o: &Options,
        h: Object,
        addr: usize,
        family: Family,
        size: usize,
        align: usize,
        regs: &Regs,
    ) {
        if matches!(family, Family::New | Family::NewArray) {
            let known = (size != Expect::ANY_SIZE).then_some(size);
            let size_bad = known.is_some_and(|s| s != h.size);
            if size_bad || report::cxx_align(align) != report::cxx_align(h.align) {
                let access = Access::DeleteType { addr, size: known, align, family };
                self.report_object(o, Kind::NewDeleteTypeMismatch, access, Some(h), regs);
            }
        } else if size != h.size || align != h.align {
            let access = Access::Layout { addr, size, align, family };
            self.report_object(o, Kind::LayoutMismatch, access, Some(h), regs);
        }
    }

    /// Reports an out-of-bounds write if `h`'s redzones were modified, then repairs them so the
    /// same damage is reported once.
    ///
    /// # Safety
    /// The runtime owns `h`'s redzones: the chunk is being freed, is quarantined, or is live
    /// and listed under its shard's lock.
    unsafe fn check_redzones(&self, o: &Options, h: &Header, when: Found, regs: &Regs) {
        // SAFETY: forwarded from the caller's contract.
        if let Some(d) = unsafe { h.find_redzone_damage() } {
            let access = Access::Corrupt { damage: d, when };
            self.report_simple(o, Kind::OutOfBounds, access, Some(h), regs);
            // SAFETY: as above.
            unsafe { h.repair_redzones() };
        }
    }

    /// Checks a quarantined chunk's redzones and poison, reporting damage.
    fn verify_quarantined(&self, o: &Options, h: &Header, when: Found, regs: &Regs) {
        // SAFETY: quarantined chunks are owned by the runtime.
        unsafe { self.check_redzones(o, h, when, regs) };
        // SAFETY: as above; poisoned at free.
        if let Some(d) = unsafe { h.find_poison_damage() } {
            self.report_simple(
                o,
                Kind::UseAfterFree,
                Access::Corrupt { damage: d, when },
                Some(h),
                regs,
            );
            // SAFETY: as above.
            unsafe { h.repair_poison() };
        }
    }

    /// The size the program asked for (`malloc_usable_size`); 0 for foreign pointers.
    ///
    /// # Safety
    /// As [`Runtime::free`].
    pub unsafe fn usable_size(&self, p: *mut u8) -> usize {
        if p.is_null() {
            return 0;
        }
        if self.guarded.contains(p as usize) {
            return self.guarded.live_size(p as usize).unwrap_or(0);
        }
        // SAFETY: forwarded.
        unsafe { Self::header(p) }.filter(|h| h.state() == State::Live).map_or(0, |h| h.size)
    }

    /// The requested size of a live chunk of ours (`None`: not ours, not live).
    ///
    /// # Safety
    /// As [`Runtime::free`].
    pub unsafe fn live_size(&self, p: *mut u8) -> Option<usize> {
        if self.guarded.contains(p as usize) {
            return self.guarded.live_size(p as usize);
        }
        // SAFETY: forwarded.
        let h = unsafe { Self::header(p) }?;
        (h.state() == State::Live).then_some(h.size)
    }

    /// Captures the current stack from `regs` and files a report.
    #[cold]
    #[inline(never)]
    fn report_simple(
        &self,
        o: &Options,
        kind: Kind,
        access: Access,
        h: Option<&Header>,
        regs: &Regs,
    ) {
        self.report_object(o, kind, access, h.map(Object::of), regs);
    }

    /// Captures the current stack from `regs` and files a report about `obj`.
    #[cold]
    #[inline(never)]
    pub(crate) fn report_object(
        &self,
        o: &Options,
        kind: Kind,
        access: Access,
        obj: Option<Object>,
        regs: &Regs,
    ) {
        let mut buf = [0usize; MAX_DEPTH];
        let stacks = if o.stacks == Stacks::Off { Stacks::Auto } else { o.stacks };
        let n = capture(stacks, regs, &mut buf[..o.depth]);
        self.report_stack(o, kind, access, obj, &buf[..n], false);
    }

    /// Files a report with a captured stack (`exact_pc`: its first entry is a faulting
    /// instruction).
    #[cold]
    #[inline(never)]
    pub(crate) fn report_stack(
        &self,
        o: &Options,
        kind: Kind,
        access: Access,
        chunk: Option<Object>,
        stack: &[usize],
        exact_pc: bool,
    ) {
        let r = Report { kind, access, tid: sys::tid(), stack, exact_pc, chunk };
        self.reporter.emit(o, &r);
    }

    /// Reports a free of a pointer that is not the start of a chunk, naming the live chunk
    /// that contains it when the registry knows one (an interior pointer).
    #[cold]
    #[inline(never)]
    fn report_invalid_free(&self, o: &Options, addr: usize, regs: &Regs) {
        let access = Access::Free { addr };
        for s in &self.shards {
            let sh = s.lock();
            let mut c = sh.live;
            while !c.is_null() {
                // SAFETY: listed chunks of this shard; its lock is held until after the report.
                let h = unsafe { &*c };
                if h.flags & F_RAW == 0 && (h.user()..h.user() + h.size.max(1)).contains(&addr) {
                    self.report_simple(o, Kind::InvalidFree, access, Some(h), regs);
                    return;
                }
                c = h.next;
            }
        }
        self.report_simple(o, Kind::InvalidFree, access, None, regs);
    }

    /// Runs the exit checks: every quarantined object is verified, then leaks are reported;
    /// returns whether any report was printed during the run.
    #[cold]
    #[inline(never)]
    pub fn exit_checks(&self) -> bool {
        let regs = stacktrace::caller_regs!();
        self.exit_checks_from(&regs)
    }

    fn exit_checks_from(&self, regs: &Regs) -> bool {
        let Some(o) = self.options() else {
            return false;
        };
        let _g = Guard::enter();
        for s in &self.shards {
            let sh = s.lock();
            let mut c = sh.q_head;
            while !c.is_null() {
                // SAFETY: quarantined chunks of this shard; lock held; never released here.
                let h = unsafe { &*c };
                self.verify_quarantined(o, h, Found::AtExit, regs);
                c = h.next;
            }
        }
        for s in &self.shards {
            let sh = s.lock();
            let mut c = sh.live;
            while !c.is_null() {
                // SAFETY: listed live chunks of this shard; lock held.
                let h = unsafe { &*c };
                if h.flags & F_RAW == 0 {
                    // SAFETY: a live chunk's redzones belong to the runtime.
                    unsafe { self.check_redzones(o, h, Found::AtExit, regs) };
                }
                c = h.next;
            }
        }
        if o.detect_leaks == Some(true) {
            report::leaks(self, o, regs.sp);
        }
        self.reporter.count() > 0
    }

    /// Calls `f` on every tracked live object (chunk or guarded) that no root reaches (see
    /// [`crate::leak`]), with every shard locked. Without scratch memory, every tracked live
    /// object counts.
    pub(crate) fn for_each_leak(&self, stack_from: usize, mut f: impl FnMut(&Entry)) {
        let shards: [_; SHARDS] = core::array::from_fn(|i| self.shards[i].lock());
        let walk = |f: &mut dyn FnMut(&Header)| {
            for sh in &shards {
                let mut c = sh.live;
                while !c.is_null() {
                    // SAFETY: listed chunks of this shard; every shard lock is held.
                    let h = unsafe { &*c };
                    f(h);
                    c = h.next;
                }
            }
        };
        let mut count = 0usize;
        walk(&mut |_| count += 1);
        self.guarded.for_each_live(|_| count += 1);
        let (Some(mut ents), Some(mut work)) =
            (Scratch::<Entry>::new(count), Scratch::<u32>::new(count))
        else {
            walk(&mut |h| {
                if h.flags & F_RAW == 0 {
                    f(&leak::entry(h))
                }
            });
            self.guarded.for_each_live(|e| f(&e));
            return;
        };
        let ents = ents.slice(count);
        let mut i = 0;
        let mut add = |e: Entry| {
            if i < ents.len() {
                ents[i] = e;
                i += 1;
            }
        };
        walk(&mut |h| add(leak::entry(h)));
        self.guarded.for_each_live(&mut add);
        let ents = &mut ents[..i];
        ents.sort_unstable_by_key(|e| e.start);
        leak::mark(ents, work.slice(count), stack_from);
        for e in ents.iter().filter(|e| e.mark == 0) {
            f(e);
        }
    }

    /// Number of reports printed so far.
    pub fn reports(&self) -> u32 {
        self.reporter.count()
    }

    fn lock_all(&self) {
        self.reporter.raw_lock();
        for s in &self.shards {
            s.raw_lock();
        }
        self.guarded.raw_lock();
    }

    /// # Safety
    /// All locks must be held through `lock_all`.
    unsafe fn unlock_all(&self) {
        // SAFETY: held by lock_all in this process (or inherited over fork).
        unsafe { self.guarded.force_unlock() };
        for s in &self.shards {
            // SAFETY: held by lock_all in this process (or inherited over fork).
            unsafe { s.force_unlock() };
        }
        // SAFETY: as above.
        unsafe { self.reporter.force_unlock() };
    }
}

/// Captures with the configured backend. The software shadow stack and DWARF fall back to
/// frame pointers whenever they cannot serve (not built here, a thread on a fiber stack, a
/// signal that interrupted a capture): a stack is better than none. Returns the number of
/// frames.
#[inline]
pub fn capture(stacks: Stacks, regs: &Regs, buf: &mut [usize]) -> usize {
    let r = match stacks {
        Stacks::Off => return 0,
        Stacks::Auto => stacktrace::capture_from(regs, buf).map(|c| c.len),
        Stacks::Fp => stacktrace::fp::capture_from(regs, buf),
        Stacks::Shadow => stacktrace::softshadow::capture_from(regs, buf)
            .or_else(|_| stacktrace::fp::capture_from(regs, buf)),
        Stacks::Dwarf => stacktrace::dwarf::capture_from(regs, buf)
            .or_else(|_| stacktrace::fp::capture_from(regs, buf)),
        Stacks::Libgcc => stacktrace::libgcc::capture_from(regs, buf),
    };
    r.unwrap_or(0)
}

extern "C" {
    /// glibc: like `atexit`, but the handler receives the exit status.
    fn on_exit(
        f: extern "C" fn(libc::c_int, *mut libc::c_void),
        arg: *mut libc::c_void,
    ) -> libc::c_int;
}

extern "C" fn exit_hook(status: libc::c_int, _arg: *mut libc::c_void) {
    // Acquire pairs with the AcqRel publication in `init`.
    let rt = EXIT_RT.load(Ordering::Acquire);
    if rt.is_null() {
        return;
    }
    // SAFETY: the published runtime lives for the whole process (documented on `init`).
    let rt = unsafe { &*rt };
    let regs = stacktrace::caller_regs!();
    let reported = rt.exit_checks_from(&regs);
    if let Some(o) = rt.options() {
        if o.verbosity > 0 {
            report::stats(rt, o);
        }
        if reported && status == 0 && o.exitcode != 0 {
            // SAFETY: flushing stdio at exit, as `exit` would; then leave with the code.
            unsafe {
                libc::fflush(null_mut());
                libc::_exit(o.exitcode);
            }
        }
    }
}

extern "C" fn fork_prepare() {
    // Acquire pairs with the publication in `init`.
    let rt = EXIT_RT.load(Ordering::Acquire);
    if !rt.is_null() {
        // SAFETY: the published runtime lives for the whole process.
        unsafe { &*rt }.lock_all();
    }
}

extern "C" fn fork_parent() {
    // Acquire pairs with the publication in `init`.
    let rt = EXIT_RT.load(Ordering::Acquire);
    if !rt.is_null() {
        // SAFETY: `fork_prepare` took every lock in this process.
        unsafe { (*rt).unlock_all() };
    }
}

extern "C" fn fork_child() {
    sys::reset_tid();
    fork_parent();
}
