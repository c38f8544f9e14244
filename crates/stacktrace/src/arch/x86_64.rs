//! x86-64 register reads.

use super::Site;
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

/// Reads the stack pointer (`rsp`) of the function it is inlined into.
#[inline(always)]
pub(crate) fn stack_pointer() -> usize {
    let sp: usize;
    // SAFETY: reads a register, touches no memory.
    unsafe {
        core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags))
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
        // SAFETY: copies rip, rsp and rbp into registers; touches no memory.
        unsafe {
            ::core::arch::asm!(
                // The address of the next instruction: `pc` is exact (no `- 1` lookup).
                "lea {pc}, [rip]",
                "mov {sp}, rsp",
                "mov {fp}, rbp",
                pc = out(reg) pc,
                sp = out(reg) sp,
                fp = out(reg) fp,
                options(nomem, nostack, preserves_flags),
            )
        };
        (pc, sp, fp)
    }};
}

/// Registers of the caller of the function whose registers at its instruction `pc` are
/// `(sp, fp)` (see [`crate::caller_regs!`]): one step by that function's CFI, through the
/// rule cache. `rbp` is followed only where the CFI says it holds the function's frame
/// record, so a function built without frame pointers (an allocator hook monomorphised in a
/// user's crate) gets its caller right; every read is checked to lie in the function's own
/// frame (at most 64 KiB above its stack pointer). `Regs::default()` (no frames) when the CFI cannot be had (no unwind tables, or a
/// cold rule with too little stack left to parse it).
#[inline(always)]
pub fn caller_of(site: &Site, pc: usize, sp: usize, fp: usize) -> Regs {
    #[cfg(target_os = "linux")]
    {
        use crate::dwarf::step::{unwind_exact, Unwind};
        // The words read belong to the calling function's own frame, which its CFI just
        // described: between its live stack pointer and a frame's size above it. (No bounds
        // lookup: the backends do that for the frames they walk.)
        const OWN_FRAME_MAX: usize = 64 << 10;
        let read = |a: usize| -> Option<usize> {
            if !(a.is_multiple_of(8) && a >= sp && a - sp < OWN_FRAME_MAX) {
                return None;
            }
            // SAFETY: aligned, at or above the live stack pointer of the calling function
            // and within its own frame as its CFI describes it: mapped stack memory.
            Some(unsafe { (a as *const usize).read() })
        };
        let (slot, cfa, saved_fp) = match unwind_exact(site, pc, sp, fp) {
            Unwind::Record => (fp.wrapping_add(8), fp.wrapping_add(16), Some(fp)),
            Unwind::Cfa { cfa, slot, fp_slot } => (slot, cfa, fp_slot),
            Unwind::Stop | Unwind::Other | Unwind::Refused => return Regs::default(),
        };
        if cfa <= sp {
            return Regs::default();
        }
        let Some(ra) = read(slot) else { return Regs::default() };
        let fp = match saved_fp {
            None => fp,
            Some(a) => match read(a) {
                Some(v) => v,
                None => return Regs::default(),
            },
        };
        let pc = crate::softshadow::real_return_address(slot, ra);
        Regs { pc, sp: cfa, fp, pc_is_exact: false }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (site, pc, sp, fp);
        Regs::default()
    }
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
    // SAFETY: per the contract `top` is a free, aligned stack; r12 (callee-saved, so `f`
    // keeps it) holds our stack pointer across the call and is declared clobbered; the C
    // ABI's caller-saved registers are clobbered by the call. `call` at a 16-aligned `rsp`
    // gives `f` the SysV alignment.
    unsafe {
        core::arch::asm!(
            "mov r12, rsp",
            "mov rsp, {top}",
            "call {f}",
            "mov rsp, r12",
            top = in(reg) top,
            f = in(reg) f,
            in("rdi") arg,
            out("r12") _,
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

/// The address of this thread's block SYM of [`crate::static_tls!`] (Linux; initial exec:
/// `fs:0` holds the TCB's own address on glibc and musl, and the GOT entry the block's offset
/// from it).
#[doc(hidden)]
#[macro_export]
#[cfg(target_os = "linux")]
macro_rules! __static_tls_addr {
    ($sym:literal) => {{
        let p: usize;
        // SAFETY: reads the block's initial-exec offset from the GOT and adds the thread
        // pointer; no memory is written.
        unsafe {
            ::core::arch::asm!(
                concat!("mov {p}, qword ptr [rip + ", $sym, "@GOTTPOFF]"),
                "add {p}, qword ptr fs:[0]",
                p = out(reg) p,
                options(pure, readonly, nostack)
            )
        };
        p
    }};
}
