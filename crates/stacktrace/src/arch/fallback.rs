//! Architectures without a port: every backend but libgcc answers `NotCompiled`.

use crate::Regs;

pub fn read_fp() -> usize {
    0
}



pub fn frame_record_regs(_fp: usize) -> Regs {
    Regs::default()
}

/// # Safety
/// None needed: the context is not read.
pub(crate) unsafe fn regs_from_ucontext(_uc: *const libc::c_void) -> Regs {
    Regs::default()
}
