//! x86-64 register reads.

use crate::Regs;

/// Reads the current function's frame pointer (`rbp`).
#[inline(always)]
pub fn read_fp() -> usize {
    let v: usize;
    // SAFETY: reads a register, touches no memory.
    unsafe {
        core::arch::asm!("mov {}, rbp", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Registers of the caller of the function whose frame record is at `fp`.
///
/// The record is trusted only if it is aligned and lies above the current stack pointer on
/// the current thread's stack: a function built without frame pointers leaves an unrelated
/// value in `rbp`, and then the answer is `Regs::default()` (every backend reports no frames)
/// rather than a wild read.
#[inline(always)]
pub fn frame_record_regs(fp: usize) -> Regs {
    let sp: usize;
    // SAFETY: reads a register, touches no memory.
    unsafe {
        core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags))
    };
    let on_stack = crate::bounds::current(sp).is_some_and(|b| b.contains(fp, 16));
    if !fp.is_multiple_of(16) || fp < sp || !on_stack {
        return Regs::default();
    }
    // SAFETY: `fp` is aligned, above the live stack pointer and inside the current thread's
    // stack mapping: the frame record of the function that expanded `caller_regs!` (built
    // with frame pointers), `{saved rbp, return address}`.
    let (saved_fp, ra) = unsafe { (*(fp as *const usize), *((fp + 8) as *const usize)) };
    Regs { pc: ra, sp: fp + 16, fp: saved_fp, pc_is_exact: false }
}

/// Registers of the interrupted context.
///
/// # Safety
/// `uc` points to a live `ucontext_t`.
pub(crate) unsafe fn regs_from_ucontext(uc: *const libc::c_void) -> Regs {
    // SAFETY: the caller guarantees `uc` is a live ucontext_t.
    let g = unsafe { &(*(uc as *const libc::ucontext_t)).uc_mcontext.gregs };
    Regs {
        pc: g[libc::REG_RIP as usize] as usize,
        sp: g[libc::REG_RSP as usize] as usize,
        fp: g[libc::REG_RBP as usize] as usize,
        pc_is_exact: true,
    }
}

/// Reads the CET shadow-stack pointer (`rdsspq`): the address of the newest shadow-stack entry,
/// or 0 when shadow stacks are off for this thread or the CPU has no CET (then `rdsspq` is a
/// NOP and leaves the zero it was given).
#[inline(always)]
pub(crate) fn read_cet_ssp() -> usize {
    let v: usize;
    // SAFETY: the register starts at 0; `rdsspq` only copies the SSP into it (a NOP without
    // CET or with shadow stacks off) and touches no memory or flags.
    unsafe {
        core::arch::asm!("rdsspq {0}", inout(reg) 0usize => v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// arm64 only: always 0 here.
///
/// # Safety
/// None needed here (the aarch64 version requires FEAT_GCS).
#[allow(dead_code)] // every arch module exports the same names
#[inline(always)]
pub(crate) unsafe fn read_gcspr() -> usize {
    0
}

/// aarch64 only: always 0 here.
#[inline(always)]
pub(crate) fn read_scs_pointer() -> usize {
    0
}
