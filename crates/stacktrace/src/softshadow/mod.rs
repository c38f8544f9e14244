//! ukasan's software shadow stack (x86-64 Linux): return-address patching with a trampoline,
//! so that a capture copies most of the stack instead of unwinding it.
//!
//! # How it works
//! A capture walks from its caller with exact steps: a frame record where the DWARF CFI
//! proves one at `fp`, the CFI's rule otherwise (code without frame pointers, whose `rbp` may
//! be a stale frame pointer that would skip frames), and the DWARF walker past a signal frame,
//! so that its output is the DWARF walk's. The first time it meets a frame it records
//! `{return address, slot + 8}` in a per-thread array and overwrites the return-address slot
//! with the address of a trampoline; the real return address also goes to the thread's
//! *stack shadow*, a mapping at a fixed distance below the stack. Later captures walk only
//! the frames pushed since and stop at the first patched slot: the rest is a copy of the
//! array. When a patched function returns, the trampoline pops its entry and jumps to the
//! real return address ([`is_trampoline`]; see `x86_64.rs` for the asm and its CFI).
//!
//! Which frames are patched:
//! - only frames whose return-address slot is *proven*: reached by exact steps (a frame
//!   record where the CFI proves one, the CFI's rule otherwise), as was every newer frame of
//!   the walk; code without frame pointers (Debian's glibc, python3, sqlite3) is patched like
//!   any other. A later walk that goes on below an entry needs the caller's frame pointer
//!   there: staging records it in the stack shadow of the word below the slot, which holds no
//!   return address (a call pushes its return address at least 16 bytes below its caller's);
//! - never the capture's own frames nor the allocator hook's (the walk starts from the
//!   hook caller's [`Regs`]);
//! - not the newest few frames, which change between captures ([`set_min_unpatched`],
//!   adaptive per thread, see `policy.rs`);
//! - new frames are committed oldest first, after their entries, before the length that
//!   publishes them. When they cannot be joined to the array (the anchor is beyond reach,
//!   an unproven frame lies between, the array is full) they form a *segment*: a later copy
//!   that reaches its oldest entry walks the frames below it. 8192 entries per thread;
//!   deeper frames are simply walked.
//!
//! # Hazards and how each is handled
//! - **Unwinders** (Rust panics, C++ exceptions, `pthread_exit`/`pthread_cancel`, glibc
//!   `backtrace()`, `std::backtrace`, gdb): the trampoline's CFI recovers the real return
//!   address and stack pointer from the CFA alone, through the stack shadow; no symbol is
//!   interposed. They show one extra pseudo-frame (the trampoline) per patched frame; this
//!   backend's own output never contains it ([`real_return_address`] for other walkers).
//! - **longjmp, caught panics, cancelled threads**: frames vanish without returning. The
//!   trampoline compares the entry with `rsp`, drops entries of frames already gone, and in
//!   any case takes the real address from the stack shadow, so it never jumps wrong; a
//!   patched slot with no entry stops patching on the thread. Captures drop such entries too.
//! - **Signals**: entries are written before the length that publishes them; the trampoline
//!   pops with one instruction; a capture in a handler that interrupted a capture answers
//!   [`Unsupported::Reentered`]; a handler's walk never patches across the signal frame
//!   (its CFI hands the walk to the DWARF walker, which never patches), so interrupted frames
//!   are never patched by it.
//! - **Thread exit**: a pthread key destructor releases the array and the stack shadow once
//!   the start routine is gone, after giving the patched frames still on the stack (glibc's
//!   `start_thread`, which never returns) their real return addresses back. Later captures
//!   on the exiting thread answer `NotEnabled`.
//! - **fork**: the child's only thread is a copy of the forking one, on the same addresses;
//!   the array and the shadow are private anonymous mappings (no `MADV_DONTFORK`, no
//!   `MADV_WIPEONFORK`) and the state block is in TLS, all copied by fork: consistent.
//! - **Stack switching** (fibers, `swapcontext`): a capture whose `sp` is outside the
//!   thread's stack answers `NotEnabled` and the thread stops patching.
//! - **Programs that read their return addresses** (JITs, some GC stack scanners): turn it
//!   off with [`set_enabled`] / [`set_thread_enabled`]. Off means "patch nothing new":
//!   frames already patched keep working and drain as they return.
//! - **CET shadow stacks** exclude this mechanism (a patched `ret` would fault): use the CET
//!   backend when it is on (it comes first in [`crate::Backend::ALL`]).
//!
//! # Costs
//! A capture: the frames pushed since the last one (~1.5 ns each walked here, their CFI
//! checked through a per-thread memo of proven pcs) plus ~9 ns of fixed work (one pass over
//! the thread's block, `busy`, the policy's counter), and a copy of the rest (~0.13 ns a
//! frame: two entries per 16-byte store, newest first, the segment check folded into the
//! copy). Measured (`benches/capture.rs`, `softshadow/*`, a quiet 2-core VM): 32 frames
//! 14 ns steady and 20 ns with 3 frames changing, against 50-54 ns for the frame-pointer
//! walk and 2.6 us for libgcc; 128 frames 25/33 ns against 168 ns; 512 frames 82/88 ns
//! against 0.64 us. A frame that is new at every capture costs ~14 ns more than walking it
//! (patch + a mispredicted trampolined return, ~6.5 ns), hence the policy. A program that
//! never captures pays nothing. Memory per capturing thread: a 128 KiB array and a stack
//! shadow the size of the stack, both `MAP_NORESERVE`, touched only where used.
//!
//! # Capture and save
//! [`capture_and_save_from`] captures and stores in the global stack depot in one call: each
//! array entry also remembers the depot handle of the trace from its frame down (filled the
//! first time a capture copies the whole stack), valid while the frame is live, since a live
//! frame's callers cannot change; a steady capture then walks its few new frames and saves
//! them on the newest entry's handle (`stackdepot::save_on`): time proportional to the
//! frames that changed, for the walk and the save. [`counters`] says how often that happened
//! and what the captures did (walked, copied, patched, trampolined returns); `ukasan bench`
//! shows them per workload. The new frames themselves go through a per-thread memo of recent
//! incremental saves (base handle and new frames, checked word for word), which answers most
//! of them without a depot lookup (`memo_hits`).
//!
//! # Limits
//! Trampoline scratch registers are `r10` and `r11`, which no SysV return value uses;
//! code that expects them preserved across a return (LLVM's `preserve_most`) must not be
//! patched. Indirect-branch tracking (CET IBT) would reject the `jmp` (Linux has no user IBT).
//! Return values in `ymm`/`zmm` upper halves are untouched by the fast path but not saved by
//! the slow path (`fxsave64` covers x87 and `xmm` only). The stack shadow sits 32 TiB below
//! each stack: a thread whose mirror range is taken (or a stack below 32 TiB, as under
//! valgrind) is not served (`NotEnabled`), nor is a new thread reusing the stack of one that
//! exited with patched frames still looking live (its shadow was kept).
//! Other architectures answer [`Unsupported::NotCompiled`].
//!
//! # Example
//! ```
//! let mut buf = [0usize; 64];
//! match stacktrace::softshadow::capture(&mut buf) {
//!     Ok(n) => assert!(n >= 1),
//!     Err(e) => println!("no software shadow stack here: {e}"),
//! }
//! ```

use crate::{Regs, Unsupported};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use stackdepot::Handle;

pub mod policy;
// Compiled and unit-tested on every host; used by the live backend on x86-64 Linux only.
#[cfg_attr(not(all(target_os = "linux", target_arch = "x86_64")), allow(dead_code))]
mod walk;

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[path = "x86_64.rs"]
mod arch;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod live;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod state;

pub use policy::set_min_unpatched;

/// Process-wide switch (see [`set_enabled`]).
static ENABLED: AtomicBool = AtomicBool::new(true);
/// Debug cross-check switch (see [`set_cross_check`]).
static CROSS_CHECK: AtomicBool = AtomicBool::new(false);
static CROSS_CHECKS: AtomicU64 = AtomicU64::new(0);
static CROSS_CHECK_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Captures with the software shadow stack; entry 0 is the return address into the caller.
///
/// Async-signal-safe (see the module docs); no allocation, no lock.
#[inline(never)]
pub fn capture(buf: &mut [usize]) -> Result<usize, Unsupported> {
    let regs = crate::caller_regs!();
    capture_from(&regs, buf)
}

/// Captures from explicit registers: those of a live frame on the current thread's stack
/// (a signal context, `pc_is_exact`, is refused: the shadow stack has no entry for an
/// interrupted pc, use the DWARF backend there).
///
/// Frames newer than `regs` are never patched. Answers `NotEnabled` when switched off with
/// nothing patched on this thread, when `regs.sp` is not on the thread's stack, or when
/// set-up failed; `Reentered` in a signal handler that interrupted a capture.
#[inline]
pub fn capture_from(regs: &Regs, buf: &mut [usize]) -> Result<usize, Unsupported> {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    return live::capture_from(regs, buf);
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        let _ = (regs, buf);
        Err(Unsupported::NotCompiled)
    }
}

/// What [`capture_and_save_from`] stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Saved {
    /// The trace's handle in the process-global depot (`NONE` if it refused it: full, or a
    /// signal handler interrupted an insert).
    pub handle: Handle,
    /// Frames in the trace.
    pub frames: usize,
    /// Only the frames that changed since this thread's previous capture were walked and
    /// saved (the buffer then holds just those, newest first); otherwise the buffer holds
    /// the whole trace.
    pub incremental: bool,
}

/// Captures and saves in the process-global depot ([`stackdepot::global`]) in one call:
/// what [`capture`] then [`stackdepot::save`] of its frames would give, in time
/// proportional to the frames that changed since this thread's previous capture.
///
/// Entry 0 is the return address into the caller; `buf.len()` is the depth cap, and `buf` is
/// scratch (see [`Saved::incremental`]). Async-signal-safe (see the module docs); no
/// allocation, no lock but the depot's insert lock for new frames.
#[inline(never)]
pub fn capture_and_save(buf: &mut [usize]) -> Result<Saved, Unsupported> {
    let regs = crate::caller_regs!();
    capture_and_save_from(&regs, buf)
}

/// [`capture_and_save`] from explicit registers (as [`capture_from`]).
///
/// How: each patched frame's array entry remembers the depot handle of the trace from it
/// down, filled by a capture that copied the whole stack ([`stackdepot::save_with_suffixes`]).
/// While the entry's frame is live its callers cannot change, so a later capture that walks
/// `k` new frames and meets that entry saves them on its handle
/// ([`stackdepot::save_on`]): `k` frames walked, `k` bucket lookups, nothing copied. New
/// entries start unknown. A capture that takes the general path (frames returned through the
/// trampoline since the previous one) copies and saves whole, as do captures whose trace
/// would not fit `buf`. Answers as [`capture_from`]; `NoFrames` for an empty capture.
#[inline]
pub fn capture_and_save_from(regs: &Regs, buf: &mut [usize]) -> Result<Saved, Unsupported> {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    return live::capture_and_save_from(regs, buf);
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        let _ = (regs, buf);
        Err(Unsupported::NotCompiled)
    }
}

/// Work counters of the software shadow stack (what a patch policy and `ukasan bench` look
/// at): per thread ([`thread_counters`]) or summed ([`counters`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Captures served by this backend.
    pub captures: u64,
    /// Frames written by walking (new since the previous capture, or unpatched).
    pub frames_walked: u64,
    /// Frames written by copying the array.
    pub frames_copied: u64,
    /// Return-address slots patched.
    pub frames_patched: u64,
    /// Patched frames that returned (through the trampoline).
    pub trampoline_returns: u64,
    /// Captures saved incrementally ([`capture_and_save_from`]: only the changed frames).
    pub incremental_saves: u64,
    /// Incremental saves answered whole by the thread's memo (no depot lookup).
    pub memo_hits: u64,
}

impl Counters {
    fn add(&mut self, o: Counters) {
        self.captures += o.captures;
        self.frames_walked += o.frames_walked;
        self.frames_copied += o.frames_copied;
        self.frames_patched += o.frames_patched;
        self.trampoline_returns += o.trampoline_returns;
        self.incremental_saves += o.incremental_saves;
        self.memo_hits += o.memo_hits;
    }
}

/// Counters of threads that have exited.
static RETIRED: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];

/// The calling thread's counters. Async-signal-safe.
pub fn thread_counters() -> Counters {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    return live::thread_counters();
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    Counters::default()
}

/// The counters of every thread that has exited plus the calling thread's (at process exit,
/// from the main thread: the whole run, minus threads still running). Async-signal-safe.
pub fn counters() -> Counters {
    // Relaxed: statistics.
    let r: [u64; 7] = core::array::from_fn(|i| RETIRED[i].load(Relaxed));
    let mut c = Counters {
        captures: r[0],
        frames_walked: r[1],
        frames_copied: r[2],
        frames_patched: r[3],
        trampoline_returns: r[4],
        incremental_saves: r[5],
        memo_hits: r[6],
    };
    c.add(thread_counters());
    c
}

/// Adds an exiting thread's counters to [`RETIRED`] and zeroes them.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn retire_counters(st: &state::ThreadState) {
    let fields = [
        &st.captures,
        &st.walked,
        &st.copied,
        &st.patched,
        &st.returns,
        &st.incremental,
        &st.memo_hits,
    ];
    for (sum, f) in RETIRED.iter().zip(fields) {
        // Relaxed: statistics.
        sum.fetch_add(f.swap(0, Relaxed) as u64, Relaxed);
    }
}

/// Turns patching on or off for the whole process (default on). Off: no new frame is
/// patched; frames already patched keep working and drain as they return, and captures on
/// threads that still have some answer from them.
pub fn set_enabled(on: bool) {
    // Relaxed: a switch read by each capture; nothing is published with it.
    ENABLED.store(on, Relaxed);
}

/// Whether patching is on for the process (see [`set_enabled`]).
pub fn is_enabled() -> bool {
    // Relaxed: see `set_enabled`.
    ENABLED.load(Relaxed)
}

/// Turns patching on or off for the calling thread only (default on). Async-signal-safe.
pub fn set_thread_enabled(on: bool) {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    live::set_thread_enabled(on);
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    let _ = on;
}

/// Debug mode: compare every successful capture with a full walk of the DWARF walker's steps
/// (frame records only where the CFI proves them) that reads patched slots through the stack
/// shadow (independent of the array), and count the differences ([`cross_check_stats`]).
/// Costs a full walk per capture.
pub fn set_cross_check(on: bool) {
    // Relaxed: a debug switch; see `set_enabled`.
    CROSS_CHECK.store(on, Relaxed);
}

/// Counters of the cross-check mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrossCheck {
    /// Captures compared.
    pub checks: u64,
    /// Captures that differed from the reference walk.
    pub failures: u64,
}

/// The cross-check counters since the process started.
pub fn cross_check_stats() -> CrossCheck {
    // Relaxed: statistics, read without ordering.
    CrossCheck { checks: CROSS_CHECKS.load(Relaxed), failures: CROSS_CHECK_FAILURES.load(Relaxed) }
}

/// The calling thread's shadow-stack state (for tests and diagnostics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadStats {
    /// Set up and not exited.
    pub active: bool,
    /// Entries in the array: patched frames not yet returned (or dropped).
    pub patched: usize,
    /// The policy's current number of newest frame records left unpatched.
    pub unpatched_top: usize,
    /// Patched returns that found no entry.
    pub orphans: usize,
    /// The thread may patch (not switched off, no stack switch or orphan seen).
    pub patching: bool,
}

/// The calling thread's state. Async-signal-safe.
pub fn thread_stats() -> ThreadStats {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    return live::thread_stats();
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    ThreadStats::default()
}

/// Whether `addr` is the trampoline's address: what other unwinders see in a patched slot
/// (libgcc and gdb show it as a pseudo-frame right before the real caller).
#[inline]
pub fn is_trampoline(addr: usize) -> bool {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    return addr == arch::trampoline();
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        let _ = addr;
        false
    }
}

/// For a walker that read `value` from the return-address slot at `slot` on the current
/// thread's stack: the real return address (from the stack shadow) if the slot is patched,
/// else `value`. Async-signal-safe.
#[inline]
pub fn real_return_address(slot: usize, value: usize) -> usize {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    if is_trampoline(value) {
        return live::real_return_address(slot, value);
    }
    let _ = slot;
    value
}
