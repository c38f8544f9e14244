//! ukasan: KASAN for user space, generic, guarded and hw-tags modes.
//!
//! Every heap object gets a header, redzones on both sides and, when freed, a poison fill
//! and a stay in a quarantine; the header records who allocated it and who freed it (thread
//! id, stack handle in the stack depot, sequence number). Bugs are reported in KASAN's
//! layout:
//!
//! | finding | detected |
//! |---|---|
//! | `double-free`, `invalid-free` (foreign or interior pointer) | at the free call |
//! | `layout-mismatch` (Rust `dealloc`/`realloc` with another `Layout`) | at the call |
//! | `alloc-dealloc-mismatch` (malloc/free vs new/delete vs new[]/delete[]) | at the call |
//! | `new-delete-type-mismatch` (C++ sized or aligned `delete` of another size or alignment) | at the call |
//! | `out-of-bounds` write (a redzone byte changed) | at free, quarantine eviction, exit |
//! | `use-after-free` write (a freed object's poison changed) | at eviction and exit |
//! | `memory-leak` (still allocated at exit, grouped by stack) | at exit (`detect_leaks`) |
//! | `slab-out-of-bounds` / `use-after-free` read or write of a guarded object (`mode=guarded`) | at the access (SIGSEGV) |
//! | `slab-out-of-bounds` / `use-after-free` / `invalid-access` read or write of any heap object, `invalid-free` of a stale pointer (`mode=hw-tags`, arm64 MTE) | at the access (SIGSEGV, `SEGV_MTESERR`) |
//!
//! **Guarded mode** ([`guarded`], `mode=guarded`) adds KFENCE / GWP-ASan detection: about
//! one allocation in `sample_rate` (up to 1 MiB) goes to a pool of guard-page slots, placed
//! against a `PROT_NONE` page (right by default, left or random with `guarded_placement`)
//! and made inaccessible when freed, so an overflow (an underflow, when left-placed) or a
//! use-after-free, read or write, faults at once and is reported from the SIGSEGV handler
//! with the faulting instruction as frame #0.
//!
//! **Hw-tags mode** ([`hwtags`], `mode=hw-tags`, KASAN's HW_TAGS) tags every object of the
//! heap with the Memory Tagging Extension (arm64): a read or write through a pointer whose tag
//! is not the memory's faults at once, for every object, with generic mode's checks on top.
//! Where there is no MTE the runtime says so and runs generic mode.
//!
//! Two ways in, one runtime ([`Runtime`]):
//! - [`Ukasan`], a [`GlobalAlloc`] wrapper for Rust programs;
//! - `libukasan.so` (crate `ukasan-preload`), the malloc family and C++ `operator new/delete`
//!   for `LD_PRELOAD`, over glibc's `__libc_malloc` family.
//!
//! # Design
//! The code is split as KASAN splits it: a mode-independent core ([`runtime`]: options,
//! tracks, stacks, dispatch, exit checks; [`report`]: the report layout) and one module per
//! mode: [`generic`] (redzones, poison, quarantine: KASAN's `generic.c`), [`guarded`]
//! (guard pages, KFENCE's model) and [`hwtags`] (MTE tags over generic's heap: `hw_tags.c`).
//!
//! - **The heap** ([`generic::heap`]): the detector's own, never the backing allocator's.
//!   51 size classes (32 B to 128 KiB) in regions of one reserved address range; 16 bytes of
//!   metadata per slot out of line (state, family, alignment, size, allocating thread and
//!   stack handle); per-thread caches of free slots with no lock on the fast path, refilled
//!   from and drained to a central list per class a batch at a time; a thread's cache goes
//!   back at thread exit (a `pthread` key destructor). Live objects are enumerated by walking
//!   the regions: there is no list to lock per allocation.
//! - **Redzones**: the gap after each object (at least `redzone` bytes) is [`chunk::REDZONE`];
//!   its end, up to 16 bytes, is the next object's left redzone. They are checked a word at a
//!   time at free, at quarantine eviction and at exit.
//! - **Free**: the object is poisoned ([`chunk::POISON`]) and the free track is written into
//!   its body (two check-summed copies for objects of 32 bytes or more, so a stray write
//!   there is found byte for byte and the track survives it); states change by
//!   compare-and-swap, so racing double frees give one report.
//! - **Quarantine** ([`generic::quarantine`]): per-thread batches published to one FIFO per
//!   runtime under a byte budget (`quarantine_size_mb`); each published batch evicts at most
//!   two old ones, whose slots are verified (prefetched a few ahead: they are cold) and
//!   reused.
//! - **Large objects** (over 128 KiB with their redzone, or aligned to more than a page) are
//!   [`chunk`]s mapped on their own with `mmap`, unmapped when they leave the quarantine;
//!   they keep a 96-byte header and sit in 16 spin-locked lists for the leak scan (a lock
//!   per `mmap` is noise).
//! - **Raw chunks**: allocations made before the runtime is initialized or from inside it
//!   (the symbolizer, libgcc, a signal handler interrupting the runtime) come from the
//!   backing allocator `A` with a header flagged `RAW`: no stack, no checks; `free` releases
//!   them quietly, so nothing of ours ever reaches the backing allocator's `free` as a foreign
//!   pointer or the other way round. This is all `A` is still used for.
//! - **Concurrency**: spin locks are held for a few pointer writes, never across a call that
//!   could re-enter; a signal handler on the holding thread runs under the re-entrancy guard
//!   and never waits. `fork` takes every lock in `pthread_atfork` and releases them on both
//!   sides; the child keeps the forking thread's cache and forgets its cached thread id.
//! - **Reports** ([`report`]): one fixed 64 KiB buffer under a lock, written whole with
//!   `write(2)`, deduplicated by (kind, top frames, allocation stack). Frames are
//!   symbolized by `ukasan-symbolize` (function, file:line, inlined frames) with
//!   `module+offset` on every line; `symbolize=0` prints raw frames plus the module map for
//!   offline symbolization ([`report::format_stack`]). The symbolizer allocates: reports run
//!   under the re-entrancy guard, so its memory is untracked. The header,
//!   `BUG: KASAN: <kind> in <function>`, names a function of the program: the first frame
//!   that is not Rust's allocator machinery or std (`__rust_dealloc`, `alloc::`, `core::`,
//!   `std::`, ...). A write found later than it happened reads
//!   `BUG: KASAN: <kind> write in <function> (found at free|quarantine eviction|exit)` and,
//!   when found at eviction or exit, names the function that allocated the object
//!   (out-of-bounds) or freed it (use-after-free), from its track; the detection stack
//!   follows as usual.
//! - **Exit**: an `on_exit` handler verifies every quarantined object, checks the redzones of
//!   live ones, reports leaks, and turns a clean exit status into `exitcode` when anything
//!   was reported.
//!
//! # Options
//! `UKASAN_OPTIONS="key=value:key=value"` (after the string given to
//! [`Ukasan::with_options`]); see [`Options`]:
//!
//! | key | values (default) |
//! |---|---|
//! | `stacks` | `auto` (hardware/software shadow stack, else frame pointers, else DWARF), `shadow`, `fp`, `dwarf`, `libgcc`, `off` (in guarded mode: off for the generic objects only) |
//! | `depth` | frames per stack, 1..=256 (64) |
//! | `quarantine_size_mb` | freed bytes kept poisoned (64) |
//! | `redzone` | minimum gap after each object, 16..=4096 (16; its last 16 bytes at most are the next object's left redzone) |
//! | `halt_on_error` | exit with `exitcode` after the first report (0) |
//! | `exitcode` | status of a run that printed a report and would exit 0 (1) |
//! | `leak_exitcode` | the same when only leak reports were printed; 0 leaves the status alone (`exitcode`) |
//! | `log_path` | reports to `<path>.<pid>` (a new file, never through a symbolic link) instead of stderr |
//! | `suppressions` | a file of `kind:pattern` rules for reports not to print (see [`suppress`]) |
//! | `options_file` | a file of more options, applied in place (see [`options`]) |
//! | `report_format` | `text` (KASAN layout) or `json` (one object per line) |
//! | `detect_leaks` | 1 for LD_PRELOAD, 0 for [`Ukasan`] |
//! | `verbosity` | 1: configuration at start, statistics at exit (0) |
//! | `symbolize` | 0: raw frames and the module map, for offline symbolization (1) |
//! | `depot` | 0: capture stacks but do not store them (1) |
//! | `depot_size_mb` | stack depot budget in MiB, 1..=1024 (64); when full, new stacks are not saved |
//! | `heap_region_mb` | address space reserved per size class, a power of two 16..=4096 (4096); under qemu-user every reserved page costs the emulator time and memory at start (the default: 1.8 s, 1.3 GB), so emulated runs use 256 |
//! | `mode` | `generic`, `guarded` (guard-page slots for sampled allocations, see [`guarded`]) or `hw-tags` (every heap object tagged with MTE, arm64; see [`hwtags`]) (`generic`) |
//! | `guarded_slots` | slots in the guarded pool, 1..=65536 (256) |
//! | `sample_rate` | guarded mode guards about one allocation in N per thread, 1..=1000000; 1: every allocation while slots last (1000) |
//! | `guarded_placement` | `right` (overflows fault at once), `left` (underflows do) or `random` (per object, GWP-ASan) (`right`) |
//! | `guarded_markers` | 1: guard the pool with the kernel's guard markers (`MADV_GUARD_INSTALL`, Linux 6.13) where available, else `mprotect`; 0: always `mprotect` (1) |
//!
//! # Costs
//! Per object: 16 bytes of metadata, the gap (`redzone`, rounded up to the size class: the
//! classes are at most 25% apart), the quarantine (64 MiB by default, plus up to 1 MiB per
//! thread in its batch), a stack capture and a depot lookup per malloc and per free. Heap
//! objects carry no sequence number (a counter shared by all threads would cost every
//! allocation a contended cache line); guarded objects and large chunks do. A
//! malloc+free pair (`cargo bench -p ukasan --bench alloc`) and the whole-program ratios
//! (`ukasan bench`) are given in the README.
//!
//! # What it does not do
//! Detect reads of freed memory or out-of-bounds reads in generic mode (guarded mode sees
//! them for the objects it samples, hw-tags mode for every heap object on arm64 with MTE), or
//! detect writes to generic chunks before the object is freed or evicted. Leak detection
//! scans conservatively for pointers from globals, the exiting thread's stack and TLS, and
//! those of the other threads it could stop (see [`leak`]); what a thread that could not be
//! stopped holds may be reported.
//!
//! # Builds
//! Nothing beyond the dependency line: no frame pointers, any `opt-level`. Each entry point
//! reads its own registers and steps out of itself by its CFI ([`stacktrace::caller_regs!`]),
//! and the walkers follow `rbp` only where the CFI proves a frame record, so stacks are right
//! in a default debug or release build; frame pointers only make new frames cheaper to walk.
//!
//! # Example
//! ```no_run
//! #[global_allocator]
//! static A: ukasan::Ukasan<std::alloc::System> = ukasan::Ukasan::new(std::alloc::System);
//! // Guarded mode, one allocation in 100 checked at every access:
//! // ukasan::Ukasan::with_options(std::alloc::System, "mode=guarded:sample_rate=100");
//!
//! fn main() {
//!     let v = vec![1u8; 16];
//!     drop(v); // a double free or a write after this would be reported on stderr
//! }
//! ```

#![warn(missing_docs)]

mod bytes;
pub mod chunk;
pub mod chunks;
pub mod generic;
pub mod guarded;
pub mod hwtags;
pub mod leak;
pub mod options;
pub mod report;
mod report_stack;
pub mod runtime;
pub mod scs;
mod sink;
mod stop;
pub mod suppress;
pub mod sys;
mod zap;

pub use chunk::Family;
pub use options::{Format, Mode, Options, Stacks};
pub use runtime::{Backing, Expect, Runtime};

use core::alloc::{GlobalAlloc, Layout};

/// A [`GlobalAlloc`] that checks every allocation of the program, over `A`.
///
/// Must live in a `static` (its address is kept for the checks at exit). Options come from
/// the constructor string and then `UKASAN_OPTIONS`; leak detection is off unless
/// `detect_leaks=1` is set.
#[derive(Debug)]
pub struct Ukasan<A: GlobalAlloc> {
    backing: A,
    rt: Runtime,
}

impl<A: GlobalAlloc> Ukasan<A> {
    /// The detector over `backing` with default options.
    pub const fn new(backing: A) -> Self {
        Self::with_options(backing, "")
    }

    /// The detector over `backing` with options `key=value:...` (`UKASAN_OPTIONS` still
    /// applies on top).
    pub const fn with_options(backing: A, options: &'static str) -> Self {
        Ukasan { backing, rt: Runtime::new(options, false) }
    }

    /// The runtime (options, report count, exit checks).
    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }

    /// The backing allocator.
    pub fn backing(&self) -> &A {
        &self.backing
    }
}

/// Adapts a `GlobalAlloc` to [`Backing`].
struct Via<'a, A>(&'a A);

// SAFETY: forwards to `GlobalAlloc`, whose contract matches `Backing`'s with a valid Layout
// (size and power-of-two alignment come from `chunk::geometry`).
unsafe impl<A: GlobalAlloc> Backing for Via<'_, A> {
    #[inline]
    fn alloc(&self, size: usize, align: usize) -> *mut u8 {
        match Layout::from_size_align(size, align) {
            // SAFETY: size is non-zero (a chunk always has a header).
            Ok(l) => unsafe { self.0.alloc(l) },
            Err(_) => core::ptr::null_mut(),
        }
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, size: usize, align: usize) {
        // SAFETY: the caller passes the size and alignment `alloc` was called with, which
        // formed a valid Layout then.
        unsafe { self.0.dealloc(p, Layout::from_size_align_unchecked(size, align)) }
    }
}

// SAFETY: every pointer returned comes from `Runtime::alloc`, which places `layout.size()`
// bytes at `layout.align()` alignment inside a block of the backing allocator and keeps it
// valid until `dealloc`; `dealloc`/`realloc` validate the pointer before using it.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Ukasan<A> {
    #[inline(never)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let regs = stacktrace::caller_regs!();
        self.rt.alloc(
            &Via(&self.backing),
            layout.size(),
            layout.align(),
            Family::Rust,
            false,
            &regs,
        )
    }

    #[inline(never)]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let regs = stacktrace::caller_regs!();
        self.rt.alloc(&Via(&self.backing), layout.size(), layout.align(), Family::Rust, true, &regs)
    }

    #[inline(never)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let regs = stacktrace::caller_regs!();
        let expect = Expect { family: Family::Rust, layout: Some((layout.size(), layout.align())) };
        // SAFETY: forwarded from the GlobalAlloc contract; bad pointers are reported.
        unsafe { self.rt.free(&Via(&self.backing), ptr, expect, &regs) }
    }

    #[inline(never)]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let regs = stacktrace::caller_regs!();
        let expect = Expect { family: Family::Rust, layout: Some((layout.size(), layout.align())) };
        // SAFETY: forwarded from the GlobalAlloc contract.
        unsafe {
            self.rt.realloc(&Via(&self.backing), ptr, new_size, layout.align(), expect, &regs)
        }
    }
}
