//! aarch64 Shadow Call Stack reader (work in progress: answers `NotCompiled` until its backend lands).

use crate::{Regs, Unsupported};

/// Captures from explicit registers.
pub fn capture_from(_regs: &Regs, _buf: &mut [usize]) -> Result<usize, Unsupported> {
    Err(Unsupported::NotCompiled)
}
