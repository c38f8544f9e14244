//! Stack capture for ukasan: fill a caller buffer with return addresses, newest first.
//!
//! One entry point, [`capture`], tries the backends in order of speed and reports which one
//! answered; each backend is also callable alone through [`capture_with`] and answers
//! `Err(Unsupported)` when it cannot serve this thread or context:
//!
//! | backend | what it reads | cost (x86-64 here) |
//! |---|---|---|
//! | [`Backend::Cet`] | x86-64 CET shadow stack (`rdsspq`) | a copy |
//! | [`Backend::Gcs`] | arm64 Guarded Control Stack (`GCSPR_EL0`) | a copy |
//! | [`Backend::Scs`] | compiler Shadow Call Stack (aarch64 `x18`) | a copy |
//! | [`Backend::Shadow`] | ukasan's software shadow stack (patched return slots) | a copy + new frames |
//! | [`Backend::FramePointer`] | the `rbp`/`x29` chain, with guard rails | ~1 ns/frame |
//! | [`Backend::Dwarf`] | `.eh_frame` CFI, in process, cached | a few ns/frame warm |
//! | [`Backend::Libgcc`] | `_Unwind_Backtrace` (what glibc `backtrace()` and std use) | ~100 ns/frame |
//!
//! Semantics shared by every backend: entry 0 is the return address into the function that
//! called the capture function (the library's own frames are never in the result); entries are
//! return addresses as found (symbolize `ra - 1`); the buffer length is the depth cap.
//!
//! What it does not do: symbolize (see `ukasan-symbolize`), store or deduplicate (see
//! `ukasan-stackdepot`).
//!
//! # Signal safety
//! Every capture function here is async-signal-safe: it takes no lock, never allocates and
//! never panics. The first capture on a thread reads `/proc/thread-self/maps` with raw
//! `open`/`read` to learn the stack bounds (async-signal-safe syscalls, a stack buffer).
//! Exceptions are named on the function ([`Backend::Libgcc`] is not signal-safe: libgcc
//! takes a lock and may allocate on its first call).
//!
//! # Example
//! ```
//! let mut buf = [0usize; 64];
//! let trace = stacktrace::capture(&mut buf).expect("some backend works on this machine");
//! assert!(trace.len > 0);
//! println!("{} frames from {}", trace.len, trace.backend);
//! ```

mod arch;
pub mod bounds;
pub mod dwarf;
pub mod fp;
mod frame;
pub mod libgcc;
pub mod maps;
pub mod shadow;
pub mod softshadow;

use core::fmt;

/// A stack-capture backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// x86-64 CET hardware shadow stack.
    Cet,
    /// arm64 Guarded Control Stack.
    Gcs,
    /// Compiler Shadow Call Stack (aarch64 `x18`).
    Scs,
    /// ukasan's software shadow stack (return-address patching with a trampoline).
    Shadow,
    /// Frame-pointer chain walk.
    FramePointer,
    /// In-process DWARF CFI unwinder.
    Dwarf,
    /// libgcc's `_Unwind_Backtrace`.
    Libgcc,
}

impl Backend {
    /// Every backend, in the default fallback order (fastest first).
    pub const ALL: [Backend; 7] = [
        Backend::Cet,
        Backend::Gcs,
        Backend::Scs,
        Backend::Shadow,
        Backend::FramePointer,
        Backend::Dwarf,
        Backend::Libgcc,
    ];

    /// Short lowercase name, as accepted by [`Backend::from_name`].
    pub const fn name(self) -> &'static str {
        match self {
            Backend::Cet => "cet",
            Backend::Gcs => "gcs",
            Backend::Scs => "scs",
            Backend::Shadow => "shadow",
            Backend::FramePointer => "fp",
            Backend::Dwarf => "dwarf",
            Backend::Libgcc => "libgcc",
        }
    }

    /// Parses a name produced by [`Backend::name`].
    pub fn from_name(name: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.name() == name)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a backend could not capture on this thread, in this context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Unsupported {
    /// The backend is not built for this architecture or operating system.
    NotCompiled,
    /// The hardware, kernel or compiler feature is absent or off for this thread.
    NotEnabled,
    /// The current thread's stack bounds could not be determined.
    NoStackBounds,
    /// The backend is busy on this thread (a signal interrupted a capture) and cannot nest.
    Reentered,
    /// The backend found nothing it could trust at the first frame.
    NoFrames,
    /// Too little stack is left to serve this capture safely (a DWARF rule-cache miss in a
    /// signal handler on a small alternate stack, see [`dwarf::MISS_STACK`]): a cheaper
    /// backend should answer instead.
    StackTooSmall,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unsupported::NotCompiled => "not built for this target",
            Unsupported::NotEnabled => "not enabled for this thread",
            Unsupported::NoStackBounds => "stack bounds unknown",
            Unsupported::Reentered => "capture already in progress on this thread",
            Unsupported::NoFrames => "no trustworthy frame",
            Unsupported::StackTooSmall => "too little stack left for a rule lookup",
        })
    }
}

impl std::error::Error for Unsupported {}

/// A successful capture: how many entries were written and by whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Captured {
    /// Entries written to the front of the buffer.
    pub len: usize,
    /// The backend that produced them.
    pub backend: Backend,
}

/// Register state of the function that called a capture entry point, as it will be when the
/// call returns: the starting point of every unwinder here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    /// Program counter: a return address (entry 0 of the result) unless `pc_is_exact`.
    pub pc: usize,
    /// Stack pointer (the CFA of the frame below).
    pub sp: usize,
    /// Frame pointer (`rbp` / `x29`).
    pub fp: usize,
    /// `pc` is the exact interrupted instruction (signal context), not a return address:
    /// unwinders must look up `pc`, not `pc - 1`.
    pub pc_is_exact: bool,
}

/// Captures the current stack with the first backend that serves this thread, in the order
/// of [`Backend::ALL`].
///
/// Entry 0 is the return address into the caller of `capture`. Fails only when no backend
/// works at all.
///
/// Async-signal-safe (it never falls back to [`Backend::Libgcc`]), no allocation, no lock.
#[inline(never)]
pub fn capture(buf: &mut [usize]) -> Result<Captured, Unsupported> {
    let regs = arch::caller_regs!();
    capture_chain(&regs, buf)
}

/// Captures with one backend only.
///
/// Entry 0 is the return address into the caller of `capture_with`. Signal safety is the
/// backend's (all but [`Backend::Libgcc`] are async-signal-safe).
#[inline(never)]
pub fn capture_with(backend: Backend, buf: &mut [usize]) -> Result<usize, Unsupported> {
    let regs = arch::caller_regs!();
    dispatch(backend, &regs, buf)
}

/// The registers of the caller of the function this macro is expanded in, as they will be when
/// that function returns: pass them to [`capture_from`] or a backend's `capture_from` to get a
/// trace whose entry 0 is the return address into that caller. An allocator hook expands it
/// in `malloc` (or `GlobalAlloc::alloc`) so its own frames never appear, whatever the inlining.
///
/// The function's own registers are read exactly where the macro expands, then one step of
/// its CFI (x86-64; a rule-cache lookup, a few ns) gives its caller's: frame pointers are not
/// needed, and `rbp` is followed only where the CFI proves a frame record. The function must
/// not be inlined into its caller (`#[inline(never)]`). Without usable CFI the answer is
/// `Regs::default()`, for which every backend reports no frames. aarch64 reads the frame
/// record, which Linux code keeps in every non-leaf function.
#[macro_export]
macro_rules! caller_regs {
    () => {{
        // The rule of this expansion's instruction, remembered: no cache lookup when warm.
        static SITE: $crate::__private::Site = $crate::__private::Site::new();
        let (pc, sp, fp) = $crate::__own_regs!();
        $crate::__private::caller_of(&SITE, pc, sp, fp)
    }};
}

#[doc(hidden)]
pub mod __private {
    pub use crate::arch::{caller_of, read_fp, Site};
}

/// Captures starting from explicit registers, e.g. a signal handler's `ucontext` (so the
/// interrupted frames appear), with the default chain (no libgcc).
///
/// Async-signal-safe.
pub fn capture_from(regs: &Regs, buf: &mut [usize]) -> Result<Captured, Unsupported> {
    capture_chain(regs, buf)
}

/// Registers of the interrupted context in a `SA_SIGINFO` signal handler.
///
/// # Safety
/// `uc` must be the third argument of a `SA_SIGINFO` handler (a live `ucontext_t`).
pub unsafe fn regs_from_ucontext(uc: *const libc::c_void) -> Regs {
    // SAFETY: forwarded from the caller's contract.
    unsafe { arch::regs_from_ucontext(uc) }
}

/// Fallback chain shared by [`capture`] and [`capture_from`].
fn capture_chain(regs: &Regs, buf: &mut [usize]) -> Result<Captured, Unsupported> {
    let mut last = Unsupported::NotCompiled;
    for backend in Backend::ALL {
        if backend == Backend::Libgcc {
            continue; // not async-signal-safe: never part of the default chain
        }
        // Shadow stacks hold no entry for an interrupted PC: start from registers instead.
        if regs.pc_is_exact
            && matches!(backend, Backend::Cet | Backend::Gcs | Backend::Scs | Backend::Shadow)
        {
            continue;
        }
        match dispatch(backend, regs, buf) {
            Ok(len) => return Ok(Captured { len, backend }),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Runs one backend from `regs`.
fn dispatch(backend: Backend, regs: &Regs, buf: &mut [usize]) -> Result<usize, Unsupported> {
    match backend {
        Backend::Cet => shadow::cet::capture_from(regs, buf),
        Backend::Gcs => shadow::gcs::capture_from(regs, buf),
        Backend::Scs => shadow::scs::capture_from(regs, buf),
        Backend::Shadow => softshadow::capture_from(regs, buf),
        Backend::FramePointer => fp::capture_from(regs, buf),
        Backend::Dwarf => dwarf::capture_from(regs, buf),
        Backend::Libgcc => libgcc::capture_from(regs, buf),
    }
}

/// Calls `f(arg)` with the stack pointer at `top`, then switches back: for a slow path that
/// needs more stack than the running one has (a signal handler on a small `sigaltstack`).
/// x86-64 and aarch64; other targets run `f` on the current stack. Async-signal-safe.
///
/// # Safety
/// `top` is the 16-byte-aligned end of a writable region that nothing else uses during the
/// call and that is large enough for `f` (best with a guard page below it); `f` must not
/// unwind, and `arg` must be what `f` expects.
pub unsafe fn call_on_stack(
    top: usize,
    f: unsafe extern "C" fn(*mut libc::c_void),
    arg: *mut libc::c_void,
) {
    // SAFETY: forwarded from the caller's contract.
    unsafe { arch::call_on_stack(top, f, arg) }
}

/// Strips pointer-authentication bits from an aarch64 code address (user space, 48-bit
/// virtual addresses; top-byte-ignore makes the top byte free for PAC too). A no-op for
/// addresses that carry none. Pure arithmetic: compiled and tested on every host.
#[inline]
pub const fn strip_pac(addr: usize) -> usize {
    addr & 0x0000_ffff_ffff_ffff
}
