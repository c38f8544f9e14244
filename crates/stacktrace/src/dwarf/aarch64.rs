//! aarch64 specifics of the DWARF walker (same names as `x86_64.rs`).
//!
//! Exercised under qemu-user by `aarch64/check.sh` (unit and integration tests, but the
//! signal tests: qemu 7.2 has no vDSO, so its signal trampoline has no CFI). The walker tracks
//! `pc`, `sp` and `x29` only, so a frame whose return address still lives in `x30` (a leaf
//! without a frame record, or any function before its prologue, interrupted by a signal)
//! ends the walk. Arm64 code keeps its frame record at the bottom of the callee-saved area,
//! so the CFA is often `x29 + 32` or more, not `x29 + 16` as on x86-64.

use gimli::Register;

/// The CFI vendor extensions to decode (see `cfi::decode`).
pub(super) const VENDOR: gimli::Vendor = gimli::Vendor::AArch64;
/// DWARF number of the stack pointer.
pub(super) const SP: Register = gimli::AArch64::SP;
/// DWARF number of the frame pointer (`x29`).
pub(super) const FP: Register = gimli::AArch64::X29;

/// Register rules a row can hold: the callee-saved registers x19-x30, d8-d15 and the
/// return-address sign state of pac-ret code, with room to spare.
pub(super) const MAX_RULES: usize = 24;

/// The vDSO's `__kernel_rt_sigreturn`: `mov x8, #139` (`rt_sigreturn`); `svc #0`.
pub(super) const SIGRETURN: &[u8] = &[0x68, 0x11, 0x80, 0xd2, 0x01, 0x00, 0x00, 0xd4];

/// Offset of the interrupted `ucontext_t` from `sp` at the trampoline: the arm64
/// `rt_sigframe` is `{ siginfo (128 bytes), ucontext }`.
pub(super) const UCONTEXT_AT_SP: usize = 128;

const MCONTEXT: usize = core::mem::offset_of!(libc::ucontext_t, uc_mcontext);
/// Offsets, from the `ucontext_t`, of the interrupted `(pc, sp, fp)`.
pub(super) const UC_PC: usize = MCONTEXT + core::mem::offset_of!(libc::mcontext_t, pc);
/// See [`UC_PC`].
pub(super) const UC_SP: usize = MCONTEXT + core::mem::offset_of!(libc::mcontext_t, sp);
/// See [`UC_PC`].
pub(super) const UC_FP: usize = MCONTEXT + core::mem::offset_of!(libc::mcontext_t, regs) + 29 * 8;
