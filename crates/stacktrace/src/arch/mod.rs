//! The one switch on the architecture axis. Every arch module exports the same names:
//! `caller_regs!()`, `regs_from_ucontext`, `read_fp`, `read_sp`.

#[cfg(target_arch = "x86_64")]
#[macro_use]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub(crate) use x86_64::*;

#[cfg(target_arch = "aarch64")]
#[macro_use]
mod aarch64;
#[cfg(target_arch = "aarch64")]
pub(crate) use aarch64::*;

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
#[macro_use]
mod fallback;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(crate) use fallback::*;

pub(crate) use caller_regs;
