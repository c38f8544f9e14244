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
