//! x86-64 specifics of the DWARF walker: DWARF register numbers, the signal trampoline, and
//! where the kernel's signal frame keeps the interrupted registers.
//!
//! `aarch64.rs` exports the same names.

use gimli::Register;

/// The CFI vendor extensions to decode (see `cfi::decode`): none.
pub(super) const VENDOR: gimli::Vendor = gimli::Vendor::Default;
/// DWARF number of the stack pointer (`rsp`).
pub(super) const SP: Register = gimli::X86_64::RSP;
/// DWARF number of the frame pointer (`rbp`).
pub(super) const FP: Register = gimli::X86_64::RBP;

/// Register rules a row can hold: the callee-saved registers rbx, rbp, r12-r15 and the return address, with room to spare.
pub(super) const MAX_RULES: usize = 16;

/// glibc's `__restore_rt`: `mov $15, %rax` (`rt_sigreturn`); `syscall`. The kernel makes a
/// signal handler return here; its CFI is a `DW_CFA_def_cfa_expression`, so we recognise the
/// bytes instead of evaluating the expression.
pub(super) const SIGRETURN: &[u8] = &[0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];

/// Offset of the interrupted `ucontext_t` from the stack pointer at the trampoline: the
/// handler's `ret` popped `pretcode`, so `rsp` points at `rt_sigframe.uc`.
pub(super) const UCONTEXT_AT_SP: usize = 0;

const GREGS: usize = core::mem::offset_of!(libc::ucontext_t, uc_mcontext.gregs);
/// Offsets, from the `ucontext_t`, of the interrupted `(pc, sp, fp)`.
pub(super) const UC_PC: usize = GREGS + 8 * libc::REG_RIP as usize;
/// See [`UC_PC`].
pub(super) const UC_SP: usize = GREGS + 8 * libc::REG_RSP as usize;
/// See [`UC_PC`].
pub(super) const UC_FP: usize = GREGS + 8 * libc::REG_RBP as usize;

// The kernel ABI: uc_flags, uc_link, uc_stack (24 bytes), then mcontext with gregs first.
const _: () = assert!(GREGS == 40);
const _: () = assert!(UC_PC == 40 + 16 * 8 && UC_SP == 40 + 15 * 8 && UC_FP == 40 + 10 * 8);
