//! The mode-independent core, shared by the GlobalAlloc wrapper and `libukasan.so`:
//! initialization and options, tracks and stacks, the dispatch of each call to its mode
//! ([`crate::guarded`] for sampled objects, [`crate::generic`]'s heap, [`crate::chunks`] for
//! large and raw ones), reports, the checks at exit and `fork`.
//!
//! Thread safety: no global lock on the fast path. Re-entrant calls (the runtime's own
//! allocations, a signal handler interrupting the runtime) are served untracked by the
//! backing allocator.

use crate::chunk::{Family, State, Track};
use crate::chunks::Chunks;
use crate::generic::{self, quarantine::Quarantine};
use crate::guarded;
use crate::leak::{self, Entry, Scratch};
use crate::options::{Mode, Options, Stacks, MAX_DEPTH};
use crate::report::{self, Access, Kind, Object, Report, Reporter};
use crate::sys::{self, Guard};
use core::cell::UnsafeCell;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use stacktrace::Regs;

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

const NO_HEAP: u8 = u8::MAX;

const UNINIT: u8 = 0;
const INITIALIZING: u8 = 1;
const READY: u8 = 2;

/// A walk over the listed chunks, every shard locked (see [`Chunks::with_entries`]).
type Walk<'a> = dyn Fn(&mut dyn FnMut(Entry)) + 'a;

/// One detector instance: options, shards, reporter.
pub struct Runtime {
    state: AtomicU8,
    opts: UnsafeCell<Options>,
    spec: &'static str,
    leaks_default: bool,
    lazy: bool,
    seq: AtomicU64,
    /// Text range `[lo, hi)` of the dynamic loader (allocations it makes are not leaks).
    loader: (AtomicUsize, AtomicUsize),
    /// Large and raw chunks.
    chunks: Chunks,
    /// Index in the heap's runtime table ([`NO_HEAP`]: every object mapped on its own).
    heap: AtomicU8,
    /// The quarantine of heap objects.
    pub(crate) quarantine: Quarantine,
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
        Runtime {
            state: AtomicU8::new(UNINIT),
            opts: UnsafeCell::new(Options::DEFAULT),
            spec,
            leaks_default,
            lazy,
            seq: AtomicU64::new(1),
            loader: (AtomicUsize::new(0), AtomicUsize::new(0)),
            chunks: Chunks::new(),
            heap: AtomicU8::new(NO_HEAP),
            quarantine: Quarantine::new(),
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
        crate::sink::at_start(&o);
        crate::report_stack::init();
        Self::size_depot(&o);
        let (lo, hi) = leak::loader_range();
        leak::note_static_tls();
        // Relaxed: published by the Release store of READY below.
        self.loader.0.store(lo, Ordering::Relaxed);
        self.loader.1.store(hi, Ordering::Relaxed);
        // SAFETY: the runtime lives for the rest of the process (documented above).
        let this: &'static Runtime = unsafe { &*(self as *const Runtime) };
        if o.mode == Mode::HwTags {
            // Before the heap is set up: its space is mapped taggable.
            if let Err(why) = crate::hwtags::enable(this, &o) {
                let mut b = sys::FixedBuf::<256>::new();
                let _ = core::fmt::write(
                    &mut b,
                    format_args!("ukasan: mode=hw-tags is not available: {why}; generic mode\n"),
                );
                sys::write_all(2, b.as_bytes());
                o.mode = Mode::Generic;
            }
        }
        // SAFETY: we won the race to INITIALIZING; nobody reads `opts` before READY.
        unsafe { *self.opts.get() = o };
        self.guarded.init(this, &o);
        if let Some(i) = generic::register(this, &o) {
            // Relaxed: published by the Release store of READY below.
            self.heap.store(i, Ordering::Relaxed);
        }
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
                    if self.guarded.active() {
                        "guarded"
                    } else if crate::hwtags::on() {
                        "hw-tags"
                    } else {
                        "generic"
                    },
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
        let heap = self.heap_index();
        if heap != NO_HEAP {
            let loader = loader.contains(&regs.pc);
            if let Some(p) = generic::alloc(self, o, heap, size, align, family, zero, regs, loader)
            {
                return p;
            }
        }
        let loader = loader.contains(&regs.pc);
        self.chunks.alloc_large(self, o, size, align, family, zero, regs, loader)
    }

    /// The runtime's index in the heap, or [`NO_HEAP`].
    #[inline]
    fn heap_index(&self) -> u8 {
        // Relaxed: written before READY was published (Acquire in `options`).
        self.heap.load(Ordering::Relaxed)
    }

    fn alloc_raw_zeroed<B: Backing>(
        &self,
        b: &B,
        size: usize,
        align: usize,
        family: Family,
        zero: bool,
    ) -> *mut u8 {
        let p = self.chunks.alloc_raw(b, size, align, family);
        if zero && !p.is_null() {
            // SAFETY: `size` user bytes lie inside the fresh block.
            unsafe { core::ptr::write_bytes(p, 0, size) };
        }
        p
    }

    /// A track for the current thread with the stack from `regs` and a sequence number
    /// (guarded objects and large chunks: rare enough for one shared counter).
    #[inline]
    pub(crate) fn track_seq(&self, o: &Options, regs: &Regs) -> Track {
        // Relaxed: a unique, roughly ordered number; nothing is published through it.
        Track { seq: self.seq.fetch_add(1, Ordering::Relaxed), ..self.track(o, regs) }
    }

    /// A track for the current thread with the stack from `regs` (no sequence number: heap
    /// objects do not share a counter between threads). Out of line: the capture's state
    /// (1.7 KiB of frame) stays off the frames of `malloc` and `free`, so that a handler on
    /// an 8 KiB alternate stack, a quarter of it taken by an AVX-512 signal frame, can
    /// allocate; one call per tracked allocation or free.
    #[inline(never)]
    pub(crate) fn track(&self, o: &Options, regs: &Regs) -> Track {
        let stack = if o.stacks == Stacks::Off {
            stackdepot::Handle::NONE
        } else if o.depth <= 64 {
            let mut buf = [0usize; 64];
            self.save(o, regs, &mut buf[..o.depth])
        } else {
            self.save_deep(o, regs)
        };
        Track { tid: sys::tid(), stack, seq: 0 }
    }

    /// [`Runtime::save`] for `depth` over 64, out of line: its 2 KiB buffer stays off the
    /// stack frames of `malloc` and `free` (a handler on an 8 KiB alternate stack allocates).
    #[inline(never)]
    fn save_deep(&self, o: &Options, regs: &Regs) -> stackdepot::Handle {
        let mut buf = [0usize; MAX_DEPTH];
        self.save(o, regs, &mut buf[..o.depth])
    }

    #[inline]
    fn save(&self, o: &Options, regs: &Regs, buf: &mut [usize]) -> stackdepot::Handle {
        // The software shadow stack captures and saves in one call, walking and saving only
        // the frames that changed since this thread's previous capture.
        if o.stacks == Stacks::Shadow && o.depot {
            if let Ok(s) = stacktrace::softshadow::capture_and_save_from(regs, buf) {
                return s.handle;
            }
        }
        let n = capture(o.stacks, regs, buf);
        if n == 0 || !o.depot {
            return stackdepot::Handle::NONE;
        }
        stackdepot::save(&buf[..n])
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
        if generic::contains(p as usize) {
            match (self.options(), Guard::enter()) {
                // SAFETY: forwarded contract; `p` is in the heap's space.
                (Some(o), Some(_g)) => unsafe {
                    generic::free(self, o, self.heap_index(), p as usize, expect, regs)
                },
                // Inside the runtime (a signal handler): never reused, never reported.
                _ => generic::free_lost(p as usize),
            }
            return;
        }
        // Before init (possibly before the loader set up TLS): no thread-local access.
        let Some(o) = self.options() else {
            // SAFETY: forwarded contract.
            unsafe { self.chunks.free_untracked(b, p, true) };
            return;
        };
        let Some(_g) = Guard::enter() else {
            // Re-entrant (the runtime itself, or a signal handler interrupting it).
            // SAFETY: forwarded contract.
            unsafe { self.chunks.free_untracked(b, p, true) };
            return;
        };
        // SAFETY: forwarded contract.
        unsafe { self.chunks.free(self, b, o, p, expect, regs) };
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
        if generic::contains(p as usize) {
            if let (Some(o), Some(_g)) = (self.options(), Guard::enter()) {
                if let Some(q) =
                    generic::realloc_in_place(self, o, p as usize, new_size, align, expect, regs)
                {
                    return q;
                }
            }
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
        if generic::contains(p as usize) {
            return generic::live_size(p as usize).unwrap_or(0);
        }
        // SAFETY: forwarded.
        unsafe { Chunks::header(p) }.filter(|h| h.state() == State::Live).map_or(0, |h| h.size)
    }

    /// The requested size of a live chunk of ours (`None`: not ours, not live).
    ///
    /// # Safety
    /// As [`Runtime::free`].
    pub unsafe fn live_size(&self, p: *mut u8) -> Option<usize> {
        if self.guarded.contains(p as usize) {
            return self.guarded.live_size(p as usize);
        }
        if generic::contains(p as usize) {
            return generic::live_size(p as usize);
        }
        // SAFETY: forwarded.
        let h = unsafe { Chunks::header(p) }?;
        (h.state() == State::Live).then_some(h.size)
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
        // From here on the report's own stack: the caller may be a handler on an 8 KiB
        // alternate stack.
        crate::report_stack::run(|| {
            let mut buf = [0usize; MAX_DEPTH];
            let stacks = if o.stacks == Stacks::Off { Stacks::Auto } else { o.stacks };
            let n = capture(stacks, regs, &mut buf[..o.depth]);
            self.report_stack(o, kind, access, obj, &buf[..n], false);
        });
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
        crate::report_stack::run(|| {
            let r = Report { kind, access, tid: sys::tid(), stack, exact_pc, chunk };
            self.reporter.emit(o, &r);
        });
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
        self.chunks.exit_checks(self, o, regs);
        let heap = self.heap_index();
        if heap != NO_HEAP {
            generic::exit_checks(self, o, heap, regs);
        }
        if o.detect_leaks == Some(true) {
            // Guarded frees on other threads leave pages accessible while the scan reads.
            self.guarded.freeze();
            report::leaks(&self.reporter, o, |f| self.for_each_leak(regs.sp, f));
            self.guarded.thaw();
        }
        self.reporter.count() > 0
    }

    /// Calls `f` on every tracked live object (chunk or guarded) that no root reaches (see
    /// [`crate::leak`]); returns the number of other threads that could not be stopped for
    /// the scan. Without scratch memory, every tracked live object counts.
    ///
    /// A first pass runs with nobody stopped. When it finds candidates, the other threads are
    /// stopped ([`crate::stop`]) and the scan runs again with their registers, stacks and TLS
    /// as roots: what a thread still running at exit holds is not a leak. Threads that could
    /// not be stopped (most are threads past glibc's point of no return in their exit, with
    /// every signal blocked, some waiting for a free that needs a lock of this scan) are let
    /// run with no lock held until they are gone or none has gone for a while, and the stop
    /// is tried again.
    pub(crate) fn for_each_leak(&self, stack_from: usize, mut f: impl FnMut(&Entry)) -> usize {
        /// Stops tried; the last one scans with whoever could not be stopped.
        const STOP_ATTEMPTS: usize = 3;
        let heap = self.heap_index();
        // Before anyone is stopped: it takes the loader's lock.
        let roots = leak::roots(stack_from);
        let first = self.chunks.with_entries(|walk| self.leak_pass(walk, heap, &roots, None, None));
        match first {
            Some(0) => return 0,
            Some(_) => {}
            None => {
                // No scratch memory: every tracked live object counts.
                self.chunks
                    .with_entries(|walk| self.leak_pass(walk, heap, &roots, None, Some(&mut f)));
                return 0;
            }
        }
        let mut tids = [0i32; crate::stop::MAX_THREADS];
        let mut attempt = 1;
        loop {
            let pending = self.chunks.with_entries(|walk| {
                let world = crate::stop::World::stop();
                let unstopped = world.as_ref().map_or(0, |w| w.unstopped);
                if let Some(w) = world.as_ref().filter(|_| attempt < STOP_ATTEMPTS) {
                    let n = w.unstopped_tids(&mut tids);
                    if n > 0 {
                        return Err(n);
                    }
                }
                self.leak_pass(walk, heap, &roots, world, Some(&mut f));
                Ok(unstopped)
            });
            match pending {
                Ok(unstopped) => return unstopped,
                // The world is running again and no lock of the scan is held.
                Err(n) => crate::stop::wait_gone(&mut tids[..n]),
            }
            attempt += 1;
        }
    }

    /// One leak scan with every shard locked (`walk`): entries collected now, marked from
    /// `roots` and the stopped threads' roots; the world is let go before `report` is called on
    /// each unreached entry. Returns how many were unreached, or `None` without scratch memory
    /// (then `report` gets every tracked live object).
    fn leak_pass(
        &self,
        walk: &Walk<'_>,
        heap: u8,
        roots: &(impl Iterator<Item = (usize, usize)> + Clone),
        world: Option<crate::stop::World>,
        report: Option<&mut dyn FnMut(&Entry)>,
    ) -> Option<usize> {
        let mut count = 0usize;
        walk(&mut |_| count += 1);
        self.guarded.for_each_live(|_| count += 1);
        generic::for_each_live(heap, |_| count += 1);
        let (Some(mut ents), Some(mut work)) =
            (Scratch::<Entry>::new(count), Scratch::<u32>::new(count))
        else {
            drop(world);
            if let Some(report) = report {
                let mut all = |e: Entry| report(&e);
                walk(&mut all);
                self.guarded.for_each_live(&mut all);
                generic::for_each_live(heap, &mut all);
            }
            return None;
        };
        let ents = ents.slice(count);
        let mut i = 0;
        let mut add = |e: Entry| {
            if i < ents.len() {
                ents[i] = e;
                i += 1;
            }
        };
        walk(&mut add);
        self.guarded.for_each_live(&mut add);
        generic::for_each_live(heap, &mut add);
        let ents = &mut ents[..i];
        ents.sort_unstable_by_key(|e| e.start);
        let others = world.as_ref().into_iter().flat_map(|w| w.roots());
        leak::mark(ents, work.slice(count), roots.clone().chain(others), self.guarded.range());
        drop(world);
        let unreached = ents.iter().filter(|e| e.mark == 0);
        if let Some(report) = report {
            unreached.clone().for_each(report);
        }
        Some(unreached.count())
    }

    /// Number of reports printed so far.
    pub fn reports(&self) -> u32 {
        self.reporter.count()
    }

    fn lock_all(&self) {
        crate::report_stack::lock_for_fork();
        self.reporter.raw_lock();
        self.chunks.lock_all();
        self.guarded.raw_lock();
        self.quarantine.raw_lock();
    }

    /// # Safety
    /// All locks must be held through `lock_all`.
    unsafe fn unlock_all(&self) {
        // SAFETY: held by lock_all in this process (or inherited over fork).
        unsafe { self.quarantine.force_unlock() };
        // SAFETY: held by lock_all in this process (or inherited over fork).
        unsafe { self.guarded.force_unlock() };
        // SAFETY: held by lock_all in this process (or inherited over fork).
        unsafe { self.chunks.unlock_all() };
        // SAFETY: as above.
        unsafe { self.reporter.force_unlock() };
        crate::report_stack::unlock_after_fork();
    }
}

/// Captures with the configured backend. The software shadow stack and DWARF fall back to
/// frame pointers whenever they cannot serve (not built here, a thread on a fiber stack, a
/// signal that interrupted a capture): a stack is better than none. Returns the number of
/// frames. Out of line: the walkers' state stays off the frames of `malloc` and `free`,
/// which a handler on an 8 KiB alternate stack runs (the shadow stack's fast path, in
/// `Runtime::save`, is inlined on its own).
#[inline(never)]
pub fn capture(stacks: Stacks, regs: &Regs, buf: &mut [usize]) -> usize {
    let r = match stacks {
        Stacks::Off => return 0,
        Stacks::Auto => stacktrace::capture_from(regs, buf).map(|c| c.len),
        Stacks::Fp => stacktrace::fp::capture_from(regs, buf),
        // The software shadow stack (x86-64), else a hardware or compiler one (CET, GCS, the
        // Shadow Call Stack in x18 on aarch64), else frame pointers.
        Stacks::Shadow => stacktrace::softshadow::capture_from(regs, buf)
            .or_else(|_| stacktrace::shadow::scs::capture_from(regs, buf))
            .or_else(|_| stacktrace::shadow::gcs::capture_from(regs, buf))
            .or_else(|_| stacktrace::shadow::cet::capture_from(regs, buf))
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
            report::stats(&rt.reporter, o);
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
    generic::lock_all();
}

extern "C" fn fork_parent() {
    // SAFETY: `fork_prepare` took the heap's locks in this process.
    unsafe { generic::unlock_all() };
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
