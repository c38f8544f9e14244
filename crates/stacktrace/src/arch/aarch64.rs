//! aarch64 register reads.

use super::Site;
use crate::Regs;

/// Reads the current function's frame pointer (`x29`).
#[inline(always)]
pub fn read_fp() -> usize {
    let v: usize;
    // SAFETY: reads a register, touches no memory.
    unsafe {
        core::arch::asm!("mov {}, x29", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Reads the stack pointer of the function it is inlined into.
#[inline(always)]
pub(crate) fn stack_pointer() -> usize {
    let sp: usize;
    // SAFETY: reads a register, touches no memory.
    unsafe {
        core::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags))
    };
    sp
}

/// The registers of a function, read exactly at one of its instructions: expanded by
/// [`crate::caller_regs!`] inside the entry point whose caller is wanted.
#[doc(hidden)]
#[macro_export]
macro_rules! __own_regs {
    () => {{
        let (pc, sp, fp): (usize, usize, usize);
        // SAFETY: copies the pc, sp and x29 into registers; touches no memory.
        unsafe {
            ::core::arch::asm!(
                "adr {pc}, .",
                "mov {sp}, sp",
                "mov {fp}, x29",
                pc = out(reg) pc,
                sp = out(reg) sp,
                fp = out(reg) fp,
                options(nomem, nostack, preserves_flags),
            )
        };
        (pc, sp, fp)
    }};
}

/// Registers of the caller of the function whose registers are `(pc, sp, fp)`: its frame
/// record at `fp` (aarch64 Linux code keeps frame records in every non-leaf function, and
/// the entry points that use this are never leaves), checked to lie on the current stack
/// above `sp`.
#[inline]
pub fn caller_of(site: &Site, pc: usize, sp: usize, fp: usize) -> Regs {
    let _ = (site, pc);
    let on_stack = crate::bounds::current(sp).is_some_and(|b| b.contains(fp, 16));
    if !fp.is_multiple_of(16) || fp < sp || !on_stack {
        return Regs::default();
    }
    // SAFETY: `fp` is aligned, above sp and on the current thread's stack: the live frame
    // record of the calling entry point, `{x29, x30}`.
    let (saved_fp, lr) = unsafe { (*(fp as *const usize), *((fp + 8) as *const usize)) };
    Regs { pc: crate::strip_pac(lr), sp: fp + 16, fp: saved_fp, pc_is_exact: false }
}

/// Calls `f(arg)` with the stack pointer at `top`, then switches back: a slow path that needs
/// more stack than the running one has (see `dwarf::cfi`). `f` must not unwind.
///
/// # Safety
/// `top` is the 16-byte-aligned end of a writable region, with a guard page below it, that
/// nothing else uses during the call and that is large enough for `f`.
pub(crate) unsafe fn call_on_stack(
    top: usize,
    f: unsafe extern "C" fn(*mut libc::c_void),
    arg: *mut libc::c_void,
) {
    // SAFETY: per the contract `top` is a free, aligned stack; x20 (callee-saved, so `f`
    // keeps it) holds our stack pointer across the call and is declared clobbered; the C
    // ABI's caller-saved registers and x30 are clobbered by the call.
    unsafe {
        core::arch::asm!(
            "mov x20, sp",
            "mov sp, {top}",
            "blr {f}",
            "mov sp, x20",
            top = in(reg) top,
            f = in(reg) f,
            in("x0") arg,
            out("x20") _,
            clobber_abi("C"),
        )
    }
}

/// Registers of the interrupted context.
///
/// # Safety
/// `uc` points to a live `ucontext_t`.
pub(crate) unsafe fn regs_from_ucontext(uc: *const libc::c_void) -> Regs {
    // SAFETY: the caller guarantees `uc` is a live ucontext_t.
    let m = unsafe { &(*(uc as *const libc::ucontext_t)).uc_mcontext };
    Regs { pc: m.pc as usize, sp: m.sp as usize, fp: m.regs[29] as usize, pc_is_exact: true }
}

/// x86-64 only: always 0 here.
#[inline(always)]
pub(crate) fn read_cet_ssp() -> usize {
    0
}

/// Reads `GCSPR_EL0`: the address of the newest Guarded Control Stack entry.
///
/// # Safety
/// The CPU must implement FEAT_GCS (`HWCAP_GCS` in `AT_HWCAP`): otherwise the instruction is
/// undefined and raises SIGILL.
#[inline(always)]
pub(crate) unsafe fn read_gcspr() -> usize {
    let v: usize;
    // SAFETY: FEAT_GCS per the caller's contract; `mrs` of GCSPR_EL0 (S3_3_C2_C5_1) only reads
    // a system register.
    unsafe {
        core::arch::asm!("mrs {}, S3_3_C2_C5_1", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Reads x18: the shadow-call-stack pointer (one past the newest entry) in code built with
/// `-Zsanitizer=shadow-call-stack -Zfixed-x18`, an arbitrary value otherwise: callers check
/// `shadow::scs::COMPILED` first.
#[inline(always)]
pub(crate) fn read_scs_pointer() -> usize {
    let v: usize;
    // SAFETY: reads a register, touches no memory.
    unsafe {
        core::arch::asm!("mov {}, x18", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// The address of this thread's block SYM of [`crate::static_tls!`] (Linux; initial exec:
/// `tpidr_el0` plus the GOT entry's offset, which includes the TCB: TLS variant I).
#[doc(hidden)]
#[macro_export]
#[cfg(target_os = "linux")]
macro_rules! __static_tls_addr {
    ($sym:literal) => {{
        let p: usize;
        // SAFETY: loads the block's initial-exec offset from the GOT and adds the thread
        // pointer; no memory is written.
        unsafe {
            ::core::arch::asm!(
                concat!("adrp {p}, :gottprel:", $sym),
                concat!("ldr {p}, [{p}, #:gottprel_lo12:", $sym, "]"),
                "mrs {t}, tpidr_el0",
                "add {p}, {p}, {t}",
                p = out(reg) p,
                t = out(reg) _,
                options(pure, readonly, nostack)
            )
        };
        p
    }};
}
