//! The live backend: the machine of [`super::walk`] over the current thread's stack, its
//! stack shadow and the DWARF rule cache; the per-capture bookkeeping; the cross-check.
//!
//! # Signal safety
//! Async-signal-safe: no lock, no allocation, no panic on the capture path. A capture from a
//! signal handler that interrupted a capture on the same thread answers `Reentered`.

use super::arch::{self, SHADOW_OFFSET};
use super::state::{
    self, ThreadState, ACTIVE, CAPACITY, FAILED, ORPHAN_SEEN, STACK_SWITCHED, THREAD_OFF, UNINIT,
};
use super::walk::{self, Entry, Machine, Policy};
use super::{policy, CROSS_CHECK, CROSS_CHECKS, CROSS_CHECK_FAILURES, ENABLED};
use crate::{Regs, Unsupported};
use core::sync::atomic::{compiler_fence, Ordering::Relaxed, Ordering::SeqCst};

/// Frames walked past a full buffer to reach the anchor (so that deeper new frames connect).
const EXTRA: usize = 256;
/// Frames compared by the cross-check (a fixed stack buffer).
const CROSS_CHECK_DEPTH: usize = 512;

/// The current thread's stack `[lo, hi)`, its shadow, and the rule cache.
struct Live {
    lo: usize,
    hi: usize,
    tramp: usize,
}

impl Live {
    #[inline(always)]
    fn holds(&self, addr: usize) -> bool {
        addr % 8 == 0 && addr >= self.lo && addr < self.hi
    }
}

impl Machine for Live {
    #[inline(always)]
    fn read(&self, addr: usize) -> Option<usize> {
        // SAFETY: aligned and inside the part of this thread's stack that the walk reads
        // (at or above the caller's sp: mapped, even on the growing main stack).
        self.holds(addr).then(|| unsafe { (addr as *const usize).read_volatile() })
    }

    #[inline(always)]
    fn shadow(&self, slot: usize) -> Option<usize> {
        // SAFETY: the stack shadow covers the whole of `[lo, hi)`, mapped at set-up.
        self.holds(slot).then(|| unsafe {
            (slot.wrapping_add_signed(SHADOW_OFFSET) as *const usize).read_volatile()
        })
    }

    #[inline(always)]
    fn trusted(&mut self, pc: usize) -> bool {
        crate::dwarf::step::frame_record_at_fp(pc) == Some(true)
    }

    #[inline(always)]
    fn patch(&mut self, slot: usize, ra: usize) {
        // SAFETY: `slot` was read by the walk (in bounds, aligned) and proven to be the
        // return-address slot of a live frame above this capture; its shadow word is mapped.
        // The shadow is written first, so an unwinder interrupting us between the two
        // writes finds the real return address either way.
        unsafe {
            (slot.wrapping_add_signed(SHADOW_OFFSET) as *mut usize).write_volatile(ra);
            compiler_fence(SeqCst);
            (slot as *mut usize).write_volatile(self.tramp);
        }
    }

    #[inline(always)]
    fn trampoline(&self) -> usize {
        self.tramp
    }
}

/// See [`super::capture_from`].
#[inline]
pub(super) fn capture_from(regs: &Regs, buf: &mut [usize]) -> Result<usize, Unsupported> {
    if regs.pc_is_exact {
        return Err(Unsupported::NotEnabled);
    }
    let st = arch::state();
    if st.busy.load(Relaxed) != 0 {
        return Err(Unsupported::Reentered);
    }
    // A signal between the load and the store runs a whole capture of its own first.
    st.busy.store(1, Relaxed);
    compiler_fence(SeqCst);
    let r = locked(st, regs, buf);
    compiler_fence(SeqCst);
    st.busy.store(0, Relaxed);
    // Relaxed: a debug switch; see `set_cross_check`.
    if let (Ok(n), true) = (r, CROSS_CHECK.load(Relaxed)) {
        cross_check(st, regs, buf, n);
    }
    r
}

#[inline]
fn locked(st: &ThreadState, regs: &Regs, buf: &mut [usize]) -> Result<usize, Unsupported> {
    // Relaxed: a process-wide switch; a capture racing with the change may use either value.
    let enabled = ENABLED.load(Relaxed);
    let mut status = st.status.load(Relaxed);
    if status == UNINIT {
        if !enabled || st.flags.load(Relaxed) & THREAD_OFF != 0 {
            return Err(Unsupported::NotEnabled);
        }
        status = if state::init(st, regs.sp) { ACTIVE } else { FAILED };
    }
    if status != ACTIVE {
        return Err(Unsupported::NotEnabled);
    }
    let (lo, hi) = (st.lo.load(Relaxed), st.hi.load(Relaxed));
    if regs.sp < lo || regs.sp >= hi {
        // Another stack (a fiber, swapcontext): not ours to patch, and stop patching here.
        st.flags.store(st.flags.load(Relaxed) | STACK_SWITCHED, Relaxed);
        return Err(Unsupported::NotEnabled);
    }
    let flags = st.flags.load(Relaxed);
    let len = st.len.load(Relaxed);
    let patch = enabled && flags == 0;
    if !patch && len == 0 && flags & ORPHAN_SEEN == 0 {
        // Nothing patched on this thread: the frame-pointer walk gives the same answer.
        return Err(Unsupported::NotEnabled);
    }
    let skip = st.skip.load(Relaxed);
    // SAFETY: an active thread's array has CAPACITY entries; only this thread touches it, and
    // its signal handlers' captures answer `Reentered` while we hold `busy`; the trampoline
    // cannot run meanwhile (patched frames are above this call).
    let arr = unsafe { core::slice::from_raw_parts_mut(st.entries_ptr(), CAPACITY) };
    let mut m = Live { lo, hi, tramp: arch::trampoline() };
    let last_len = st.last_len.load(Relaxed);
    if len == last_len {
        if let Some(n) = walk::steady(&m, arr, len, regs, buf, skip) {
            let quiet = st.quiet.load(Relaxed) + 1;
            if quiet < policy::DECAY {
                st.quiet.store(quiet, Relaxed);
            } else {
                let (skip, quiet) = policy::next(skip, quiet - 1, 0);
                st.skip.store(skip, Relaxed);
                st.quiet.store(quiet, Relaxed);
            }
            return Ok(n);
        }
    }
    let pol = Policy { patch, skip, extra: EXTRA };
    let o = walk::capture(&mut m, arr, len, regs, buf, pol);
    let mut now = len;
    if let Some(l) = o.new_len {
        // Entries and patched slots are written: publish (a signal handler's unwinder or
        // the trampoline reads `len` only after this store).
        compiler_fence(SeqCst);
        st.len.store(l, Relaxed);
        now = l;
    }
    let churn = o.anchor.map_or(0, |i| last_len.saturating_sub(i + 1));
    let (skip, quiet) = policy::next(skip, st.quiet.load(Relaxed), churn);
    st.skip.store(skip, Relaxed);
    st.quiet.store(quiet, Relaxed);
    st.last_len.store(now, Relaxed);
    match o.n {
        0 if !buf.is_empty() => Err(Unsupported::NoFrames),
        n => Ok(n),
    }
}

/// Compares `got` with a full frame-pointer walk that reads patched slots through the stack
/// shadow (not the array), and counts differences.
#[cold]
#[inline(never)]
fn cross_check(st: &ThreadState, regs: &Regs, buf: &[usize], n: usize) {
    let m = Live { lo: st.lo.load(Relaxed), hi: st.hi.load(Relaxed), tramp: arch::trampoline() };
    let mut reference = [0usize; CROSS_CHECK_DEPTH];
    let cap = buf.len().min(CROSS_CHECK_DEPTH);
    let rn = walk::reference(&m, regs, &mut reference[..cap]);
    let same = n.min(cap) == rn && buf[..rn] == reference[..rn];
    // Relaxed: statistics counters.
    CROSS_CHECKS.fetch_add(1, Relaxed);
    if !same {
        // Relaxed: see above.
        CROSS_CHECK_FAILURES.fetch_add(1, Relaxed);
    }
}

/// See [`super::thread_stats`].
pub(super) fn thread_stats() -> super::ThreadStats {
    let st = arch::state();
    super::ThreadStats {
        active: st.status.load(Relaxed) == ACTIVE,
        patched: st.len.load(Relaxed),
        unpatched_top: st.skip.load(Relaxed),
        orphans: st.orphans.load(Relaxed),
        patching: st.flags.load(Relaxed) == 0,
    }
}

/// See [`super::set_thread_enabled`].
pub(super) fn set_thread_enabled(on: bool) {
    let st = arch::state();
    let f = st.flags.load(Relaxed);
    st.flags.store(if on { f & !THREAD_OFF } else { f | THREAD_OFF }, Relaxed);
}

/// See [`super::real_return_address`].
pub(super) fn real_return_address(slot: usize, value: usize) -> usize {
    let tramp = arch::trampoline();
    if value != tramp {
        return value;
    }
    let st = arch::state();
    if st.entries.load(Relaxed) == 0 {
        return value;
    }
    let m = Live { lo: st.lo.load(Relaxed), hi: st.hi.load(Relaxed), tramp };
    m.shadow(slot).unwrap_or(value)
}

// The array never holds more than CAPACITY entries; `Entry` is what the asm expects.
const _: () = assert!(CAPACITY > 0 && core::mem::size_of::<Entry>() == 16);
