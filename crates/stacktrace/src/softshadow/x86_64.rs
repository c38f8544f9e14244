//! x86-64: the return trampoline, the thread-local block it shares with Rust, and the
//! stack-shadow offset its CFI relies on.
//!
//! The trampoline runs when a patched function returns (`ret` pops the trampoline's address
//! from the patched slot, so `rsp` = slot + 8). Fast path, 10 instructions touching only `r10`,
//! `r11` and the flags: if the newest array entry is for this slot, pop it (one `sub` on the
//! published length: a signal sees it either before or after), count it, and `jmp` to the
//! real return address. Otherwise the slow path saves every register that may carry a return value
//! (`rax`, `rdx`, and `fxsave64` for x87 and `xmm0-15`) plus the other argument registers,
//! and calls [`super::state::on_mismatch`], which drops stale entries (longjmp, exceptions)
//! and returns the real return address from the stack shadow.
//!
//! CFI: an unwinder that reads the trampoline's address from a patched slot looks up
//! `address - 1`, so the FDE starts at a `nop` one byte before the entry point. The rules
//! recover the real caller from the CFA alone: CFA = rsp + 8 (= slot + 16), the caller's
//! `rsp` = CFA - 8 (explicit `val_offset`: the default "rsp = CFA" would make libgcc take the
//! pseudo-frame for its caller), and the return address is in the stack shadow, at
//! slot + [`SHADOW_OFFSET`] = CFA + `SHADOW_OFFSET` - 16. No thread-local lookup, no array:
//! libgcc (panics, `pthread_exit`, `pthread_cancel`, `backtrace()`), gdb and perf all see the
//! real frames, plus one pseudo-frame at the trampoline per patched frame.

use super::state::{on_mismatch, ThreadState};

/// Distance from a return-address slot on a thread's stack to the slot's copy in that
/// thread's stack shadow: 32 TiB down, plus 0x840 so that a slot and its copy never share
/// their low 12 address bits (4K aliasing made fresh-frame captures 1.7x slower).
pub(super) const SHADOW_OFFSET: isize = -0x2000_0000_0000 + 0x840;

const _: () = assert!(SHADOW_OFFSET % 4096 != 0 && SHADOW_OFFSET % 8 == 0);
const _: () = assert!(core::mem::offset_of!(ThreadState, entries) == 0);
const _: () = assert!(core::mem::offset_of!(ThreadState, len) == 8);
const _: () = assert!(core::mem::size_of::<ThreadState>() <= 320);
const _: () = assert!(core::mem::size_of::<super::state::Entry>() == 16);

core::arch::global_asm!(
    // The per-thread state block (zeroed for every new thread by the loader: `.tbss`).
    // Reached through an initial-exec GOT entry, which works in executables and in a
    // preloaded shared object alike.
    ".pushsection .tbss,\"awT\",@nobits",
    ".p2align 6",
    ".globl __ukasan_softshadow_tls",
    ".hidden __ukasan_softshadow_tls",
    ".type __ukasan_softshadow_tls, @tls_object",
    "__ukasan_softshadow_tls:",
    ".zero 320",
    ".size __ukasan_softshadow_tls, 320",
    ".popsection",
    "",
    ".text",
    ".p2align 4",
    ".hidden __ukasan_softshadow_trampoline",
    ".globl __ukasan_softshadow_trampoline",
    ".type __ukasan_softshadow_trampoline, @function",
    ".cfi_startproc",
    // Pseudo-frame: CFA = rsp + 8 = slot + 16; caller's rsp = CFA - 8; return address in
    // the stack shadow (DWARF registers: 7 = rsp, 6 = rbp, 16 = return address).
    ".cfi_def_cfa 7, 8",
    ".cfi_val_offset 7, -8",
    ".cfi_offset 16, {ra_from_cfa}",
    // Unwinders look up `return address - 1`: the FDE must cover the byte before the entry,
    // and a symbol there names the pseudo-frame in other tools' backtraces.
    ".type ukasan_softshadow_return_trampoline, @function",
    "ukasan_softshadow_return_trampoline:",
    "nop",
    "__ukasan_softshadow_trampoline:",
    // r11 = this thread's state block (fs-relative), r10 = &entries[len].
    "mov r11, qword ptr [rip + __ukasan_softshadow_tls@GOTTPOFF]",
    "mov r10, qword ptr fs:[r11 + 8]",
    "shl r10, 4",
    "add r10, qword ptr fs:[r11]",
    // Is the newest entry this slot's? (entries[-1] is a sentinel that never matches.)
    "cmp qword ptr [r10 - 8], rsp",
    "jne 2f",
    // Load the real return address (clear the segment bit), then pop (a single
    // read-modify-write of len), then go.
    "mov r10, qword ptr [r10 - 16]",
    "btr r10, 63",
    "sub qword ptr fs:[r11 + 8], 1",
    // Count the return (ThreadState::returns; the flags are already clobbered).
    "add qword ptr fs:[r11 + {returns}], 1",
    "jmp r10",
    // Slow path: stale entries or an orphan slot. Keep every register but r10/r11.
    "2:",
    "push rbp",
    ".cfi_adjust_cfa_offset 8",
    ".cfi_offset 6, -16",
    "mov rbp, rsp",
    ".cfi_def_cfa_register 6",
    "push rax",
    "push rdx",
    "push rcx",
    "push rsi",
    "push rdi",
    "push r8",
    "push r9",
    "and rsp, -16",
    "sub rsp, 512",
    "fxsave64 [rsp]",
    // on_mismatch(rsp at entry) -> real return address
    "lea rdi, [rbp + 8]",
    "call {on_mismatch}",
    "mov r10, rax",
    "fxrstor64 [rsp]",
    "lea rsp, [rbp - 56]",
    "pop r9",
    "pop r8",
    "pop rdi",
    "pop rsi",
    "pop rcx",
    "pop rdx",
    "pop rax",
    "pop rbp",
    ".cfi_def_cfa 7, 8",
    ".cfi_restore 6",
    "jmp r10",
    ".cfi_endproc",
    ".size __ukasan_softshadow_trampoline, . - __ukasan_softshadow_trampoline",
    ".size ukasan_softshadow_return_trampoline, . - ukasan_softshadow_return_trampoline",
    ra_from_cfa = const SHADOW_OFFSET - 16,
    returns = const core::mem::offset_of!(ThreadState, returns),
    on_mismatch = sym on_mismatch,
);

extern "C" {
    fn __ukasan_softshadow_trampoline();
}

/// Address of the trampoline's entry point: the value patched into return-address slots.
#[inline(always)]
pub(super) fn trampoline() -> usize {
    __ukasan_softshadow_trampoline as *const () as usize
}

/// This thread's state block.
#[inline(always)]
pub(super) fn state() -> &'static ThreadState {
    let p: usize;
    // SAFETY: reads the initial-exec TLS offset of our `.tbss` block from the GOT and adds the
    // thread pointer (`fs:0` holds the TCB's own address on x86-64 glibc and musl).
    unsafe {
        core::arch::asm!(
            "mov {p}, qword ptr [rip + __ukasan_softshadow_tls@GOTTPOFF]",
            "add {p}, qword ptr fs:[0]",
            p = out(reg) p,
            options(pure, readonly, nostack)
        )
    };
    // SAFETY: the block is 320 zero-initialised, 64-aligned bytes alive as long as the thread;
    // every `ThreadState` field is an atomic, for which all-zero bytes are valid. The
    // reference never leaves the thread (callers use it within one call).
    unsafe { &*(p as *const ThreadState) }
}
