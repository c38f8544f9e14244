//! The one switch on the architecture axis. Every arch module exports the same names:
//! `read_fp`, `caller_of`, `stack_pointer`, `call_on_stack`, `regs_from_ucontext` (and the
//! `__own_regs!` macro).

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use x86_64::*;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use aarch64::*;

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
mod fallback;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub use fallback::*;

// The entry-point macros are exported at the crate root; this alias keeps `arch::caller_regs!`.
pub(crate) use crate::caller_regs;

use core::sync::atomic::AtomicU64;

/// A one-entry rule memo for one [`crate::caller_regs!`] expansion: two words, `pc ^ rule`
/// and the packed rule of the instruction where it reads its registers, so that a reader
/// never pairs one writer's pc with another's rule. Shared by every monomorphisation of a
/// generic entry point, whose pcs differ: a mismatch just asks the process-wide rule cache.
/// (Used by the x86-64 step; the other ports ignore it.)
#[doc(hidden)]
#[derive(Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub struct Site {
    pub(crate) key_xor_word: AtomicU64,
    pub(crate) word: AtomicU64,
}

impl Site {
    /// An empty memo.
    #[allow(clippy::new_without_default)] // a `static` initializer
    pub const fn new() -> Site {
        Site { key_xor_word: AtomicU64::new(0), word: AtomicU64::new(0) }
    }
}

/// Defines `fn NAME() -> &'static T`: this thread's `T`, in a block of `.tbss` named SYM that
/// the loader zeroes for every new thread. On Linux x86-64 and arm64 it is reached through an
/// initial-exec GOT entry (a load and an add of the thread pointer, in an executable and a
/// preloaded library alike, where `thread_local!` costs a `__tls_get_addr` call per access);
/// elsewhere it is a const-initialised `thread_local!`. No destructor, no registration at
/// thread exit: usable from a thread's first malloc to its last, and in signal handlers.
///
/// The invocation asserts that all-zero bytes are a valid `T` (cells, atomics, integers, raw
/// pointers) and that `T`'s alignment is at most 64 (the block has `T`'s size and alignment).
/// The reference must not outlive its thread: make `T` `!Sync` (cells), or only ever use it
/// within one call.
///
/// ```ignore
/// stacktrace::static_tls!(fn state() -> &'static State = "__mycrate_state");
/// ```
#[doc(hidden)]
#[macro_export]
macro_rules! static_tls {
    ($(#[$m:meta])* $vis:vis fn $name:ident() -> &'static $ty:ty = $sym:literal) => {
        $crate::__static_tls_arch!($(#[$m])* $vis fn $name() -> &'static $ty = $sym);
        const _: () = assert!(::core::mem::align_of::<$ty>() <= 64);
    };
}

/// [`static_tls!`] by initial exec where the arch file gives `__static_tls_addr!` (Linux on
/// x86-64 and arm64).
#[doc(hidden)]
#[macro_export]
#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
macro_rules! __static_tls_arch {
    ($($t:tt)*) => { $crate::__static_tls_initial_exec!($($t)*); };
}

/// [`static_tls!`] elsewhere: a `thread_local!`.
#[doc(hidden)]
#[macro_export]
#[cfg(not(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64"))))]
macro_rules! __static_tls_arch {
    ($($t:tt)*) => { $crate::__static_tls_portable!($($t)*); };
}

/// [`static_tls!`] where no initial-exec access is written: a const-initialised
/// `thread_local!`.
#[doc(hidden)]
#[macro_export]
macro_rules! __static_tls_portable {
    ($(#[$m:meta])* $vis:vis fn $name:ident() -> &'static $ty:ty = $sym:literal) => {
        $(#[$m])*
        #[inline(always)]
        $vis fn $name() -> &'static $ty {
            ::std::thread_local! {
                // SAFETY: the invocation asserts that all-zero bytes are a valid value.
                static T: $ty = const { unsafe { ::core::mem::zeroed() } };
            }
            // SAFETY: the thread-local has no destructor and lives as long as its thread; the
            // invocation keeps the reference on the thread.
            T.with(|t| unsafe { &*(t as *const $ty) })
        }
    };
}

/// [`static_tls!`] by initial exec (ELF): a `.tbss` block named SYM of `T`'s size and
/// alignment, and the accessor that adds the thread pointer to the block's offset, which the
/// arch file's `__static_tls_addr!(SYM)` reads from the GOT.
#[doc(hidden)]
#[macro_export]
macro_rules! __static_tls_initial_exec {
    ($(#[$m:meta])* $vis:vis fn $name:ident() -> &'static $ty:ty = $sym:literal) => {
        ::core::arch::global_asm!(
            ".pushsection .tbss,\"awT\",@nobits",
            ".balign {align}",
            concat!(".globl ", $sym),
            concat!(".hidden ", $sym),
            concat!(".type ", $sym, ", @tls_object"),
            concat!($sym, ":"),
            ".zero {size}",
            concat!(".size ", $sym, ", {size}"),
            ".popsection",
            size = const ::core::mem::size_of::<$ty>(),
            align = const ::core::mem::align_of::<$ty>(),
        );
        $(#[$m])*
        #[inline(always)]
        $vis fn $name() -> &'static $ty {
            let p: usize = $crate::__static_tls_addr!($sym);
            // SAFETY: the thread's zeroed block of `T`'s size and alignment, alive as long as
            // the thread; the invocation asserts all-zero bytes are a valid value and keeps
            // the reference on the thread.
            unsafe { &*(p as *const $ty) }
        }
    };
}
