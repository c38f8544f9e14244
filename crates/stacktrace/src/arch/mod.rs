//! The one switch on the architecture axis. Every arch module exports the same names:
//! `read_fp`, `frame_record_regs`, `regs_from_ucontext`.

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
