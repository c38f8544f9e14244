//! In-process DWARF CFI unwinder: walks `.eh_frame` rules of every loaded object, so it
//! passes through code built without frame pointers (Debian's glibc, most C libraries).
//!
//! How a capture works:
//! - per frame, a lookup in a process-wide set-associative rule cache (`cache.rs`: 1024 sets
//!   x 4 ways, two words a slot, lock-free), keyed by the lookup address (`pc - 1` for a
//!   return address, `pc` for an exact signal-context pc) and holding a compact rule:
//!   CFA = sp/fp + offset, return address and saved fp at CFA-relative offsets;
//! - on a miss (`cfi.rs`), the object is found with glibc's `_dl_find_object`, or a
//!   `dl_iterate_phdr` snapshot on older glibc (`module.rs`), and its `.eh_frame_hdr` binary
//!   search table and CFI program are evaluated by gimli into fixed on-stack storage;
//! - the signal trampoline (`__restore_rt`, recognised by its bytes) continues the walk in
//!   the interrupted context from the `ucontext_t` on the stack, on whatever stack that is.
//!
//! Registers tracked: pc, sp, fp. Stops at the outermost frame (return address undefined,
//! e.g. `_start`, `clone3`), at code without usable CFI (rules other than offsets from
//! sp/fp), at any read outside the current thread's stacks, when the CFA does not grow, and
//! when the buffer is full.
//!
//! Cost (x86-64 here, `benches/capture.rs`, warm): about 5 ns per frame at depth 32 (24x
//! faster than libgcc's `_Unwind_Backtrace` in the same run), under 4 ns per frame at 128;
//! frames with frame records take a branch-predicted fast path. A rule cache miss costs a
//! few hundred ns. Memory: a 64 KiB static rule table and a 10 KiB static module snapshot
//! (used only without `_dl_find_object`).
//!
//! Stack, measured on a painted `sigaltstack` in `tests/it/dwarf.rs` on an AVX-512 machine
//! (the kernel's signal frame and a handler that returns at once: 2.9 KiB), above that: in a
//! release build a warm capture 5.0 KiB, a cold one (every rule a miss) 5.1 KiB, a
//! frame-pointer capture 0.9 KiB; in this workspace's dev profile (this crate at
//! `opt-level` 1) 1.1 KiB warm and 7.6 KiB cold; unoptimised (a user's debug build) 2.0 KiB
//! warm and 12.4 KiB cold. A miss is the expensive part: it runs only with [`MISS_STACK`]
//! bytes of room left, else on a spare stack of the process (one at a time), else it is
//! refused with [`Unsupported::StackTooSmall`].
//!
//! # Signal Safe Methods
//! [`capture`], [`capture_from`] and [`flush_cache`] take no lock, never allocate and never
//! panic. With glibc >= 2.35 they are async-signal-safe: `_dl_find_object` is documented
//! MT-Safe, AS-Safe, AC-Safe and is found by `dlsym` at load time, not at capture. On older
//! glibc the module snapshot may be refreshed with `dl_iterate_phdr`, which takes the
//! loader's lock: [`capture_from`] never refreshes when `regs.pc_is_exact` (a signal
//! context), so in a handler start from [`crate::regs_from_ucontext`]. The first capture on
//! a thread reads `/proc/self/maps` for the stack bounds (async-signal-safe syscalls); a
//! capture on a `sigaltstack` makes one `sigaltstack` call (see [`crate::bounds`]).
//!
//! # Known limits
//! The cache is keyed by address: after `dlclose` and a `dlopen` that reuses the range, call
//! [`flush_cache`]. A frame whose return address is still in a register (on aarch64, a leaf
//! without a frame record or a function before its prologue, interrupted by a signal) ends
//! the walk.
//!
//! # Example
//! ```
//! let mut buf = [0usize; 64];
//! let n = stacktrace::dwarf::capture(&mut buf).unwrap();
//! assert!(n >= 1);
//! ```

use crate::{Regs, Unsupported};

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[path = "x86_64.rs"]
mod arch;
#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
#[path = "aarch64.rs"]
mod arch;

#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
mod cache;
#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
mod cfi;
#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
mod module;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub(crate) mod step;
#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
mod walk;

/// Stack that a rule-cache miss may need below the stack pointer of the capture, with a
/// margin. A miss (gimli parsing `.eh_frame`) is refused, and the capture answers
/// [`Unsupported::StackTooSmall`], when the stack it runs on (the thread's, or the
/// `sigaltstack` of a handler) has less left: a capture never overflows. Warm captures need
/// a few hundred bytes. `tests/it/dwarf.rs` measures the peak on a painted stack in the
/// profile it is built in and checks it against this bound.
pub const MISS_STACK: usize = if cfg!(debug_assertions) { 32 << 10 } else { 12 << 10 };

/// Captures with the DWARF unwinder; entry 0 is the return address into the caller.
///
/// Async-signal-safe with glibc >= 2.35 (see the module docs); no allocation, no lock.
#[inline(never)]
pub fn capture(buf: &mut [usize]) -> Result<usize, Unsupported> {
    let regs = crate::arch::caller_regs!();
    capture_from(&regs, buf)
}

/// DWARF walk from explicit registers (e.g. a signal `ucontext`); entry 0 is `regs.pc`.
///
/// Async-signal-safe with glibc >= 2.35, and on older glibc when `regs.pc_is_exact`.
pub fn capture_from(regs: &Regs, buf: &mut [usize]) -> Result<usize, Unsupported> {
    #[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
    return walk::capture_from(regs, buf);
    #[cfg(not(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64"))))]
    {
        let _ = (regs, buf);
        Err(Unsupported::NotCompiled)
    }
}

/// Whether module lookup uses glibc's lock-free `_dl_find_object` (glibc >= 2.35) rather
/// than the `dl_iterate_phdr` snapshot.
///
/// Async-signal-safe, except that it calls `dlsym` if the crate's load-time constructor did
/// not run.
pub fn has_dl_find_object() -> bool {
    #[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
    return module::has_dl_find_object();
    #[cfg(not(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64"))))]
    false
}

/// Empties the rule cache: after `dlclose` and a `dlopen` that reuses the address range, or
/// to measure the cold path. Other threads capturing meanwhile just miss.
///
/// Async-signal-safe (relaxed stores to a static table; 64 KiB of writes).
pub fn flush_cache() {
    #[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
    cache::clear();
}

/// For the fuzz target `dwarf_rules` (not an API): decodes the rule for `lookup` from an
/// `.eh_frame_hdr` and `.eh_frame` given as bytes, checks that the compact form round-trips,
/// and returns it as `[tag, cfa_fp, cfa_off, ra_off, fp_off]` (tag 0: none, 1: frame,
/// 2: signal, 3: stop; fp_off `i64::MIN` when the caller's fp is unchanged).
#[doc(hidden)]
#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
pub fn decode_rule_for_fuzzing(hdr: &[u8], eh_frame: &[u8], lookup: usize) -> [i64; 5] {
    // No signal trampoline in fuzzed bytes: never read code at a fuzzed address.
    let rule = cfi::decode(hdr, eh_frame, lookup, lookup.wrapping_add(1), &|_| false);
    if let Some(r) = rule {
        if let Some(w) = r.pack() {
            assert_eq!(cache::Rule::unpack(w), Some(r), "packed rule does not round-trip");
        }
    }
    match rule {
        None => [0; 5],
        Some(cache::Rule::Frame { cfa_fp, cfa_off, ra_off, fp_off }) => [
            1,
            i64::from(cfa_fp),
            i64::from(cfa_off),
            i64::from(ra_off),
            fp_off.map_or(i64::MIN, i64::from),
        ],
        Some(cache::Rule::Signal) => [2, 0, 0, 0, 0],
        Some(cache::Rule::Stop) => [3, 0, 0, 0, 0],
    }
}

/// For the fuzz target `dwarf_rules` and its regression inputs (not an API): `data` is
/// `[split: u16 LE][lookup: i64 LE][bytes]`; decodes the rule for `bytes + lookup` with
/// `bytes[..split]` as `.eh_frame_hdr` and `bytes[split..]` as `.eh_frame` (see
/// [`decode_rule_for_fuzzing`]).
#[doc(hidden)]
#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
pub fn fuzz_input(data: &[u8]) -> [i64; 5] {
    let Some((head, bytes)) = data.split_at_checked(10) else {
        return [0; 5];
    };
    let split = usize::from(u16::from_le_bytes([head[0], head[1]])).min(bytes.len());
    let mut off = [0u8; 8];
    off.copy_from_slice(&head[2..10]);
    let lookup = (bytes.as_ptr() as usize).wrapping_add(i64::from_le_bytes(off) as usize);
    let (hdr, eh) = bytes.split_at(split);
    decode_rule_for_fuzzing(hdr, eh, lookup)
}
