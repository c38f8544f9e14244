//! Architectures without a port: every backend but libgcc answers `NotCompiled`.

use crate::Regs;

pub fn read_fp() -> usize {
    0
}

/// No port: no caller registers.
pub fn caller_of(_site: &super::Site, _pc: usize, _sp: usize, _fp: usize) -> Regs {
    Regs::default()
}

/// No port: 0.
pub(crate) fn stack_pointer() -> usize {
    0
}

/// No registers to read on this architecture.
#[doc(hidden)]
#[macro_export]
macro_rules! __own_regs {
    () => {
        (0usize, 0usize, 0usize)
    };
}

/// # Safety
/// None needed: the context is not read.
pub(crate) unsafe fn regs_from_ucontext(_uc: *const libc::c_void) -> Regs {
    Regs::default()
}

/// Not available on this architecture: 0.
pub(crate) fn read_cet_ssp() -> usize {
    0
}

/// Not available on this architecture: 0.
///
/// # Safety
/// None needed: no register is read.
#[allow(dead_code)] // every arch module exports the same names
pub(crate) unsafe fn read_gcspr() -> usize {
    0
}

/// Not available on this architecture: 0.
pub(crate) fn read_scs_pointer() -> usize {
    0
}

/// No port: runs `f(arg)` on the current stack.
///
/// # Safety
/// As the ported versions (`top` is unused here).
pub(crate) unsafe fn call_on_stack(
    _top: usize,
    f: unsafe extern "C" fn(*mut libc::c_void),
    arg: *mut libc::c_void,
) {
    // SAFETY: forwarded from the caller's contract on `f` and `arg`.
    unsafe { f(arg) }
}
