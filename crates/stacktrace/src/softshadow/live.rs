//! The live backend: the machine of [`super::walk`] over the current thread's stack, its
//! stack shadow and the DWARF rule cache; the per-capture bookkeeping; the cross-check.
//!
//! # Signal safety
//! Async-signal-safe: no lock, no allocation, no panic on the capture path. A capture from a
//! signal handler that interrupted a capture on the same thread answers `Reentered`.

use super::arch::{self, SHADOW_OFFSET};
use super::state::{
    self, ThreadState, ACTIVE, CAPACITY, MEMO_ENTRIES, MEMO_FRAMES, MEMO_WORDS, ORPHAN_SEEN,
    STACK_SWITCHED, THREAD_OFF, UNINIT,
};
use super::walk::{self, Entry, Machine, Policy};
use super::{policy, CROSS_CHECK, CROSS_CHECKS, CROSS_CHECK_FAILURES, ENABLED};
use crate::{Regs, Unsupported};
use core::cell::Cell;
use core::sync::atomic::{
    compiler_fence, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst,
};
use stackdepot::Handle;

/// Frames walked past a full buffer to reach the anchor (so that deeper new frames connect).
const EXTRA: usize = 256;
/// Frames compared by the cross-check (a fixed stack buffer).
const CROSS_CHECK_DEPTH: usize = 512;

/// The current thread's stack `[lo, hi)` (as `lo..=last`, its highest word) and the
/// trampoline's address.
struct Live<'a> {
    lo: usize,
    last: usize,
    tramp: usize,
    /// The block whose `record_pcs` spare rule-cache lookups (`None`: always look up).
    memo: Option<&'a ThreadState>,
    /// A rule lookup was refused for lack of stack: the walk ended early, and the capture
    /// answers `StackTooSmall` (a cheaper backend serves it).
    refused: Cell<bool>,
}

impl<'a> Live<'a> {
    /// From the thread's block and its bounds (those of an active thread; any other pair,
    /// 0 and 0 before set-up, makes nothing readable).
    #[inline(always)]
    fn new(st: &'a ThreadState, lo: usize, hi: usize) -> Live<'a> {
        Live { memo: Some(st), ..Live::unmemoized(lo, hi) }
    }

    /// As [`Live::new`], without the `record_pcs` memo (the cross-check's reference walk,
    /// so that it does not share what it checks).
    #[inline(always)]
    fn unmemoized(lo: usize, hi: usize) -> Live<'a> {
        Live {
            lo: lo.max(4096),
            last: hi.saturating_sub(8),
            tramp: arch::trampoline(),
            memo: None,
            refused: Cell::new(false),
        }
    }

    #[inline(always)]
    fn holds(&self, addr: usize) -> bool {
        addr.is_multiple_of(8) && addr >= self.lo && addr <= self.last
    }
}

impl walk::Memory for Live<'_> {
    #[inline(always)]
    fn read(&self, addr: usize) -> Option<usize> {
        // SAFETY: aligned and inside the part of this thread's stack that the walk reads
        // (at or above the caller's sp: mapped, even on the growing main stack).
        self.holds(addr).then(|| unsafe { (addr as *const usize).read_volatile() })
    }

    #[inline(always)]
    fn read_pair(&self, addr: usize) -> Option<(usize, usize)> {
        // `addr + 8 <= last` for aligned addresses (`last` is aligned when anything is).
        if !addr.is_multiple_of(8) || addr < self.lo || addr >= self.last {
            return None;
        }
        let p = addr as *const usize;
        // SAFETY: both words are aligned and inside `[lo, hi)`, the part of this thread's
        // stack that the walk reads (see `read`).
        Some(unsafe { (p.read_volatile(), p.add(1).read_volatile()) })
    }
}

impl Machine for Live<'_> {
    #[inline(always)]
    fn shadow(&self, slot: usize) -> Option<usize> {
        // SAFETY: the stack shadow covers the whole of `[lo, hi)`, mapped at set-up.
        self.holds(slot).then(|| unsafe {
            (slot.wrapping_add_signed(SHADOW_OFFSET) as *const usize).read_volatile()
        })
    }

    #[inline(always)]
    fn unwind(&self, pc: usize, sp: usize, fp: usize) -> walk::Unwind {
        use crate::dwarf::step;
        use walk::Unwind as U;
        // Relaxed: a word of this thread's block (see `record_pcs`); any value ever stored
        // is a pc proven to keep a frame record, so a signal handler's store is harmless.
        let memo = self.memo.map(|st| st.record_pc_slot(pc));
        if memo.is_some_and(|m| m.load(Relaxed) == pc && pc != 0) {
            return U::Record;
        }
        let u = step::unwind(pc, sp, fp);
        match u {
            U::Record => {
                if let Some(m) = memo {
                    // Relaxed: see above.
                    m.store(pc, Relaxed);
                }
            }
            U::Refused => self.refused.set(true),
            U::Cfa { .. } | U::Stop | U::Other => {}
        }
        u
    }

    #[cold]
    fn walk_from(&self, pc: usize, sp: usize, fp: usize, buf: &mut [usize]) -> usize {
        let (n, refused) =
            crate::dwarf::step::walk_from(&Regs { pc, sp, fp, pc_is_exact: false }, buf);
        if refused {
            self.refused.set(true);
        }
        n
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
    fn stage(&mut self, slot: usize, caller_fp: usize) {
        // SAFETY: as in `patch`, `slot - 8` lies in the frame of the function that `slot`
        // returns from (at or above the caller's sp), whose shadow word is mapped and holds
        // no return address (see `walk`).
        unsafe {
            ((slot - 8).wrapping_add_signed(SHADOW_OFFSET) as *mut usize).write_volatile(caller_fp)
        };
    }

    #[inline(always)]
    fn trampoline(&self) -> usize {
        self.tramp
    }
}

/// The thread's block, loaded once per capture, with `busy` held (its atomics are never
/// merged by the compiler, so reload nothing).
#[derive(Clone, Copy)]
struct Snap {
    /// `status == ACTIVE && len == last_len`: the steady path may run.
    steady: bool,
    lo: usize,
    hi: usize,
    len: usize,
}

#[inline(always)]
fn snap(st: &ThreadState) -> Snap {
    let len = st.len.load(Relaxed);
    let changed = (st.status.load(Relaxed) ^ ACTIVE) | (len ^ st.last_len.load(Relaxed));
    Snap { steady: changed == 0, lo: st.lo.load(Relaxed), hi: st.hi.load(Relaxed), len }
}

/// Takes the thread's `busy` flag if it is free (else a signal handler interrupted a capture).
#[inline(always)]
fn enter(st: &ThreadState) -> bool {
    if st.busy.load(Relaxed) != 0 {
        return false;
    }
    // A signal between the load and the store runs a whole capture of its own first.
    st.busy.store(1, Relaxed);
    compiler_fence(SeqCst);
    true
}

/// Releases what [`enter`] took.
#[inline(always)]
fn leave(st: &ThreadState) {
    compiler_fence(SeqCst);
    st.busy.store(0, Relaxed);
}

/// See [`super::capture_from`].
///
/// The steady state (an active, idle thread on its own stack whose array has not changed
/// since its previous capture) takes a short path: a few loads from the thread's block,
/// then [`walk::steady`]. Anything else goes to [`general`].
#[inline(always)]
pub(super) fn capture_from(regs: &Regs, buf: &mut [usize]) -> Result<usize, Unsupported> {
    let st = arch::state();
    if enter(st) {
        let s = snap(st);
        if s.steady && regs.sp >= s.lo && regs.sp < s.hi && !regs.pc_is_exact {
            let r = steady(st, s, regs, buf);
            leave(st);
            return finish(st, regs, buf, r);
        }
        leave(st);
    }
    general(st, regs, buf, true, &mut None)
}

/// The steady path, `busy` held: [`walk::steady`] and the policy's bookkeeping. `None`: the
/// steady path does not serve this capture.
#[inline(always)]
fn steady(
    st: &ThreadState,
    s: Snap,
    regs: &Regs,
    buf: &mut [usize],
) -> Option<Result<usize, Unsupported>> {
    // SAFETY: an active thread's array holds `len <= CAPACITY` published entries; only this
    // thread writes it, its signal handlers' captures answer `Reentered` while we hold
    // `busy`, and the trampoline cannot run meanwhile (patched frames are above this call).
    let arr = unsafe { core::slice::from_raw_parts(st.entries_ptr(), s.len) };
    let skip = st.skip.load(Relaxed);
    let m = Live::new(st, s.lo, s.hi);
    let r = walk::steady_top(&m, arr, regs, buf, skip).map(|k| {
        let n = walk::copy_from(&m, arr, s.len - 1, buf, k);
        count(st, k, n - k);
        n
    });
    if m.refused.get() {
        return Some(Err(Unsupported::StackTooSmall));
    }
    if r.is_some() {
        note_quiet(st, skip);
    }
    r.map(Ok)
}

/// After the steady path released `busy`: the cross-check, or the general path if the
/// steady one did not serve.
#[inline(always)]
fn finish(
    st: &ThreadState,
    regs: &Regs,
    buf: &mut [usize],
    r: Option<Result<usize, Unsupported>>,
) -> Result<usize, Unsupported> {
    match r {
        Some(Err(e)) => Err(e),
        Some(Ok(n)) => {
            // Relaxed: a debug switch; see `set_cross_check`.
            if CROSS_CHECK.load(Relaxed) {
                cross_check(st, regs, buf, n);
            }
            Ok(n)
        }
        None => general(st, regs, buf, false, &mut None),
    }
}

/// The thread's cap on `skip` (see `policy::tune`).
#[inline(always)]
fn cap_of(st: &ThreadState) -> usize {
    // Relaxed: this thread's own block.
    policy::Tune::unpack(st.tune.load(Relaxed), 0).cap()
}

/// Times one capture in `policy::SAMPLE` for the cap tuner (`Some(start)`).
#[inline(always)]
fn tune_begin(st: &ThreadState) -> Option<u64> {
    // Relaxed: this thread's own block; a signal handler's capture interleaves whole
    // captures, which only blurs a window's figures.
    let n = st.captures.load(Relaxed) + 1;
    // SAFETY: rdtsc has no preconditions (x86-64: this module's only target).
    n.is_multiple_of(policy::SAMPLE).then(|| unsafe { core::arch::x86_64::_rdtsc() })
}

/// Ends a timed capture; at the end of a window, moves the cap.
#[inline(never)]
fn tune_end(st: &ThreadState, start: u64) {
    // SAFETY: as in `tune_begin`.
    let now = unsafe { core::arch::x86_64::_rdtsc() };
    // Relaxed (all): see `tune_begin`.
    let cycles = st.win_cycles.load(Relaxed) + now.saturating_sub(start) as usize;
    let timed = st.win_timed.load(Relaxed) + 1;
    let captures = st.captures.load(Relaxed);
    let n = captures.wrapping_sub(st.win_start.load(Relaxed)).max(1);
    if n < policy::WINDOW {
        st.win_cycles.store(cycles, Relaxed);
        st.win_timed.store(timed, Relaxed);
        return;
    }
    let returns = st.returns.load(Relaxed);
    let ret = returns.saturating_sub(st.win_returns.load(Relaxed)) as u64;
    // Cost per capture, in cycles (times 16 for resolution).
    let cost = (cycles as u64 * 16 / timed as u64)
        .saturating_add(ret * policy::RETURN_CYCLES * 16 / n as u64);
    let t = policy::Tune::unpack(st.tune.load(Relaxed), st.tune_prev.load(Relaxed) as u64);
    let t = policy::tune(t, cost);
    st.tune.store(t.pack(), Relaxed);
    st.tune_prev.store(t.prev as usize, Relaxed);
    let skip = st.skip.load(Relaxed);
    st.skip.store(skip.min(t.cap().max(policy::min_unpatched())), Relaxed);
    st.win_start.store(captures, Relaxed);
    st.win_timed.store(0, Relaxed);
    st.win_cycles.store(0, Relaxed);
    st.win_returns.store(returns, Relaxed);
}

/// The policy's bookkeeping after a steady capture (no churn).
#[inline(always)]
fn note_quiet(st: &ThreadState, skip: usize) {
    let quiet = st.quiet.load(Relaxed) + 1;
    if quiet < policy::DECAY {
        st.quiet.store(quiet, Relaxed);
    } else {
        let (skip, quiet) = policy::next(skip, quiet - 1, 0, cap_of(st));
        st.skip.store(skip, Relaxed);
        st.quiet.store(quiet, Relaxed);
    }
}

/// Every capture that the steady path does not serve; `try_steady` when it was not tried.
#[inline(never)]
fn general(
    st: &ThreadState,
    regs: &Regs,
    buf: &mut [usize],
    try_steady: bool,
    known: &mut Option<Known>,
) -> Result<usize, Unsupported> {
    if regs.pc_is_exact {
        return Err(Unsupported::NotEnabled);
    }
    if !enter(st) {
        return Err(Unsupported::Reentered);
    }
    let r = locked(st, regs, buf, try_steady, known);
    leave(st);
    // Relaxed: a debug switch; see `set_cross_check`.
    if let (Ok(n), true) = (r, CROSS_CHECK.load(Relaxed)) {
        cross_check(st, regs, buf, n);
    }
    r
}

#[inline]
fn locked(
    st: &ThreadState,
    regs: &Regs,
    buf: &mut [usize],
    try_steady: bool,
    known: &mut Option<Known>,
) -> Result<usize, Unsupported> {
    // Relaxed: a process-wide switch; a capture racing with the change may use either value.
    let enabled = ENABLED.load(Relaxed);
    let mut status = st.status.load(Relaxed);
    if status == UNINIT {
        if !enabled || st.flags.load(Relaxed) & THREAD_OFF != 0 {
            return Err(Unsupported::NotEnabled);
        }
        // FAILED, or still UNINIT when it was asked on a sigaltstack (see `state::init`).
        if !state::init(st, regs.sp) {
            return Err(Unsupported::NotEnabled);
        }
        status = ACTIVE;
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
    let mut m = Live::new(st, lo, hi);
    let last_len = st.last_len.load(Relaxed);
    if try_steady && len == last_len {
        if let Some(k) = walk::steady_top(&m, &arr[..len], regs, buf, skip) {
            let n = walk::copy_from(&m, &arr[..len], len - 1, buf, k);
            if m.refused.get() {
                return Err(Unsupported::StackTooSmall);
            }
            count(st, k, n - k);
            note_quiet(st, skip);
            return Ok(n);
        }
    }
    let pol = Policy { patch, skip, extra: EXTRA };
    let o = walk::capture(&mut m, arr, len, regs, buf, pol);
    count(st, o.walked.min(o.n), o.n.saturating_sub(o.walked));
    if let Some(i) = o.anchor {
        *known = known_below(st, i, o.walked, o.n, buf.len());
    }
    if o.patched > 0 {
        bump(&st.patched, o.patched);
        forget(st, o.base, o.patched);
    }
    let mut now = len;
    if let Some(l) = o.new_len {
        // Entries and patched slots are written: publish (a signal handler's unwinder or
        // the trampoline reads `len` only after this store).
        compiler_fence(SeqCst);
        st.len.store(l, Relaxed);
        now = l;
    }
    let churn = o.anchor.map_or(0, |i| last_len.saturating_sub(i + 1));
    let (skip, quiet) = policy::next(skip, st.quiet.load(Relaxed), churn, cap_of(st));
    st.skip.store(skip, Relaxed);
    st.quiet.store(quiet, Relaxed);
    st.last_len.store(now, Relaxed);
    match o.n {
        _ if m.refused.get() => Err(Unsupported::StackTooSmall),
        0 if !buf.is_empty() => Err(Unsupported::NoFrames),
        n => Ok(n),
    }
}

/// Adds `n` to a counter of this thread's block (a plain load and store: only this thread
/// and its signal handlers, which run whole captures in between, touch it).
#[inline(always)]
fn bump(c: &AtomicUsize, n: usize) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

/// A general capture's trace as the walked frames `buf[..walked]` on the known handle of the
/// anchor entry's trace (`base`, `below` frames): see [`known_below`].
#[derive(Clone, Copy, Debug)]
struct Known {
    base: u32,
    below: usize,
    walked: usize,
}

/// After a general capture of `n` frames that met the array at entry `anchor` after walking
/// `walked` frames (the rest is `anchor`'s entry and those below, copied): the anchor's
/// known handle, when its trace is exactly the copied part and the capture was not cut at
/// `cap`.
#[inline]
fn known_below(
    st: &ThreadState,
    anchor: usize,
    walked: usize,
    n: usize,
    cap: usize,
) -> Option<Known> {
    let nodes = nodes(st);
    if nodes.is_null() || anchor >= CAPACITY || n >= cap.min(stackdepot::MAX_DEPTH) {
        return None;
    }
    // SAFETY: `anchor < CAPACITY`: a word of the mapping made at set-up. The anchor is below
    // every entry this capture staged, so its word was not forgotten.
    // Relaxed: see `ThreadState::nodes`.
    let w = unsafe { (*nodes.add(anchor)).load(Relaxed) };
    let below = (w >> 32) as usize;
    (w != 0 && walked + below == n).then_some(Known { base: w as u32, below, walked })
}

/// Counts a capture that walked `walked` frames and copied `copied`.
#[inline(always)]
fn count(st: &ThreadState, walked: usize, copied: usize) {
    bump(&st.captures, 1);
    bump(&st.walked, walked);
    bump(&st.copied, copied);
}

/// The depot-handle words of the thread's entries (null before set-up).
#[inline(always)]
fn nodes(st: &ThreadState) -> *const AtomicU64 {
    st.nodes.load(Relaxed) as *const AtomicU64
}

/// Forgets the depot handles of entries `base..base + n` (just committed: new frames).
#[inline]
fn forget(st: &ThreadState, base: usize, n: usize) {
    let nodes = nodes(st);
    if nodes.is_null() {
        return;
    }
    for i in base..(base + n).min(CAPACITY) {
        // SAFETY: `i < CAPACITY`, the words of the mapping made at set-up.
        // Relaxed: a word of this thread's own state (see `ThreadState::nodes`).
        unsafe { (*nodes.add(i)).store(0, Relaxed) };
    }
}

/// See [`super::capture_and_save_from`].
///
/// The steady path (as in [`capture_from`]) walks the new frames; if the newest entry knows
/// its trace's handle, the new frames are saved on it and nothing is copied. Otherwise the
/// array is copied, the whole trace saved, and the handles of the newest run of entries
/// (down to the first segment start) remembered for the next captures.
#[inline]
pub(super) fn capture_and_save_from(
    regs: &Regs,
    buf: &mut [usize],
) -> Result<super::Saved, Unsupported> {
    let st = arch::state();
    let timed = tune_begin(st);
    let r = save_from(st, regs, buf);
    if let Some(start) = timed {
        tune_end(st, start);
    }
    r
}

/// [`capture_and_save_from`] without the tuner's timing.
#[inline(always)]
fn save_from(
    st: &ThreadState,
    regs: &Regs,
    buf: &mut [usize],
) -> Result<super::Saved, Unsupported> {
    if enter(st) {
        let s = snap(st);
        let nodes = nodes(st);
        if s.steady && regs.sp >= s.lo && regs.sp < s.hi && !regs.pc_is_exact && !nodes.is_null() {
            let r = steady_save(st, s, nodes, regs, buf);
            leave(st);
            match r {
                Some(Ok(saved)) => {
                    // Relaxed: a debug switch; see `set_cross_check`.
                    if CROSS_CHECK.load(Relaxed) && !saved.incremental {
                        cross_check(st, regs, buf, saved.frames);
                    }
                    return Ok(saved);
                }
                Some(Err(e)) => return Err(e),
                None => {}
            }
        } else {
            leave(st);
        }
    }
    let mut known = None;
    let n = general(st, regs, buf, false, &mut known)?;
    if n == 0 {
        return Err(Unsupported::NoFrames);
    }
    if let Some(Known { base, below, walked }) = known {
        // The walked frames on the anchor's known trace (the same handle as a whole save).
        let handle = stackdepot::save_on(Handle::from_raw(base), below, &buf[..walked]);
        if !handle.is_none() {
            bump(&st.incremental, 1);
            return Ok(super::Saved { handle, frames: n, incremental: true });
        }
    }
    Ok(super::Saved { handle: stackdepot::save(&buf[..n]), frames: n, incremental: false })
}

/// The steady path of [`capture_and_save_from`], `busy` held. `None`: not served.
#[inline(always)]
fn steady_save(
    st: &ThreadState,
    s: Snap,
    nodes: *const AtomicU64,
    regs: &Regs,
    buf: &mut [usize],
) -> Option<Result<super::Saved, Unsupported>> {
    // SAFETY: as in `steady`.
    let arr = unsafe { core::slice::from_raw_parts(st.entries_ptr(), s.len) };
    let skip = st.skip.load(Relaxed);
    let m = Live::new(st, s.lo, s.hi);
    let k = walk::steady_top(&m, arr, regs, buf, skip)?;
    if m.refused.get() {
        return Some(Err(Unsupported::StackTooSmall));
    }
    note_quiet(st, skip);
    let top = s.len - 1;
    // SAFETY: `top < len <= CAPACITY`: a word of the mapping made at set-up.
    let word = unsafe { &*nodes.add(top) };
    // Relaxed: see `ThreadState::nodes`.
    let known = word.load(Relaxed);
    let (base, below) = (known as u32, (known >> 32) as usize);
    let cap = buf.len().min(stackdepot::MAX_DEPTH);
    if base != 0 && below + k <= cap {
        let handle = Memo::of(nodes).save_on(st, base, below, &buf[..k]);
        count(st, k, 0);
        bump(&st.incremental, 1);
        return Some(Ok(super::Saved { handle, frames: below + k, incremental: true }));
    }
    if base == 0 {
        if let Some(saved) = save_on_known(st, nodes, arr, top, buf, k, cap) {
            return Some(Ok(saved));
        }
    }
    let n = walk::copy_from(&m, arr, top, buf, k);
    if m.refused.get() {
        // The walk below an entry ended early: a cheaper backend serves this capture.
        return Some(Err(Unsupported::StackTooSmall));
    }
    count(st, k, n - k);
    if n >= cap {
        // Perhaps truncated: the handles of its old parts would not be those of the stack.
        let handle = stackdepot::save(&buf[..n]);
        return Some(Ok(super::Saved { handle, frames: n, incremental: false }));
    }
    let mut suffixes = [Handle::NONE; stackdepot::MAX_DEPTH];
    let handle = stackdepot::save_with_suffixes(&buf[..n], &mut suffixes[..n]);
    // Entries top, top - 1, .. down to the newest segment start are buf[k], buf[k + 1], ..
    let mut j = top;
    loop {
        let at = k + (top - j);
        let h = suffixes[at];
        // Relaxed: see `ThreadState::nodes`.
        let v = if h.is_none() { 0 } else { u64::from(h.to_raw()) | ((n - at) as u64) << 32 };
        // SAFETY: `j <= top < CAPACITY`.
        unsafe { (*nodes.add(j)).store(v, Relaxed) };
        if arr[j].ra & walk::GAP != 0 || j == 0 || at + 1 >= n {
            break;
        }
        j -= 1;
    }
    Some(Ok(super::Saved { handle, frames: n, incremental: false }))
}

/// Entries below the newest one searched for a known handle by [`save_on_known`].
const KNOWN_SEARCH: usize = 64;

/// The steady save when the newest entry's handle is not known (its frame was patched since
/// the previous save) but that of an entry a few below it is, with no segment start between:
/// the frames of the entries in between are saved on that handle one by one, each entry
/// remembering its own, then the `k` walked frames (`buf[..k]`) on the newest. `None`: no
/// such entry, or the trace would reach `cap` (the whole save handles truncation).
#[inline(always)]
fn save_on_known(
    st: &ThreadState,
    nodes: *const AtomicU64,
    arr: &[Entry],
    top: usize,
    buf: &[usize],
    k: usize,
    cap: usize,
) -> Option<super::Saved> {
    let mut j = top;
    let known = loop {
        // A segment start's caller is not the entry below it: frames in between were not
        // patched.
        if arr[j].ra & walk::GAP != 0 || j == 0 || top - j >= KNOWN_SEARCH {
            return None;
        }
        j -= 1;
        // SAFETY: `j < top < CAPACITY`: a word of the mapping made at set-up.
        // Relaxed: see `ThreadState::nodes`.
        let w = unsafe { (*nodes.add(j)).load(Relaxed) };
        if w != 0 {
            break w;
        }
    };
    let (mut h, mut below) = (Handle::from_raw(known as u32), (known >> 32) as usize);
    if below + (top - j) + k > cap {
        return None;
    }
    for (x, entry) in arr.iter().enumerate().take(top + 1).skip(j + 1) {
        h = stackdepot::extend_on(h, below, &[entry.ra & !walk::GAP]);
        if h.is_none() {
            return None;
        }
        below += 1;
        // SAFETY: `x <= top < CAPACITY`.
        // Relaxed: see `ThreadState::nodes`.
        unsafe { (*nodes.add(x)).store(u64::from(h.to_raw()) | (below as u64) << 32, Relaxed) };
    }
    let handle = Memo::of(nodes).save_on(st, h.to_raw(), below, &buf[..k]);
    if handle.is_none() {
        return None;
    }
    count(st, k, top - j);
    bump(&st.incremental, 1);
    Some(super::Saved { handle, frames: below + k, incremental: true })
}

/// The thread's save memo: the handles of its latest incremental saves, keyed by the base
/// handle and the new frames, which it keeps whole (direct-mapped by their hash, checked
/// word for word). A thread that allocates in a loop saves the same few new frames on the
/// same base again and again; the memo answers those from a line it just used, where the
/// depot's lookup pays a cache miss per frame on its bucket table. A depot handle never
/// changes meaning (the depot is never cleared), so an entry stays true. Sized by the bench's
/// Rust workload: 256 entries answered 63% of the runs, 1024 71%, 4096 85%; 1024 entries of
/// 112 bytes (touched as used) per thread.
struct Memo(*const AtomicU64);

impl Memo {
    /// The memo that follows the handle words at `nodes` (non-null, from set-up).
    #[inline(always)]
    fn of(nodes: *const AtomicU64) -> Memo {
        // SAFETY: the mapping holds CAPACITY handle words and then the memo (`NODES_BYTES`).
        Memo(unsafe { nodes.add(CAPACITY) })
    }

    /// `stackdepot::save_on(base, below, frames)`, through the memo: the new frames in runs
    /// of at most `MEMO_FRAMES`, oldest run first, each saved on the handle of the one below
    /// (the same trie path, so the same handle, as one save of them all).
    #[inline(always)]
    fn save_on(&self, st: &ThreadState, base: u32, below: usize, frames: &[usize]) -> Handle {
        let mut h = Handle::from_raw(base);
        let mut below = below;
        let mut all_hit = true;
        let last = frames.len().div_ceil(MEMO_FRAMES);
        for (i, run) in frames.rchunks(MEMO_FRAMES).enumerate() {
            let hit;
            (h, hit) = self.save_run(h, below, run, i + 1 == last);
            if h.is_none() {
                return h;
            }
            all_hit &= hit;
            below += run.len();
        }
        if all_hit {
            bump(&st.memo_hits, 1);
        }
        h
    }

    /// One run: its handle, and whether the memo knew it. Only the newest run of a save
    /// counts as a saved trace in the depot's statistics (`whole`).
    #[inline(always)]
    fn save_run(
        &self,
        base: Handle,
        below: usize,
        frames: &[usize],
        whole: bool,
    ) -> (Handle, bool) {
        let k = frames.len();
        let key = u64::from(base.to_raw()) | (k as u64) << 32 | u64::from(whole) << 62 | 1 << 63;
        // Each frame's product is independent of the others' (a sum, not a chain of
        // multiplies: the chain's latency was a tenth of the capture); the position is
        // mixed in so that a permutation lands elsewhere. A collision only costs a miss.
        let mut acc = key;
        for (j, &f) in frames.iter().enumerate() {
            acc = acc.wrapping_add(
                (f as u64 ^ (j as u64).wrapping_mul(0x632b_e59b_d9b4_e019))
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
        }
        let h = (acc ^ acc >> 29).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let i = (h >> 48) as usize % MEMO_ENTRIES;
        // SAFETY: entry `i < MEMO_ENTRIES` of the memo, `MEMO_WORDS` words each.
        let e = unsafe { core::slice::from_raw_parts(self.0.add(i * MEMO_WORDS), MEMO_WORDS) };
        // Relaxed (all words): this thread's own memory, read and written with `busy` held.
        if e[0].load(Relaxed) == key
            && frames.iter().zip(&e[2..]).all(|(&f, w)| w.load(Relaxed) == f as u64)
        {
            return (Handle::from_raw(e[1].load(Relaxed) as u32), true);
        }
        let handle = if whole {
            stackdepot::save_on(base, below, frames)
        } else {
            stackdepot::extend_on(base, below, frames)
        };
        if !handle.is_none() {
            e[0].store(key, Relaxed);
            e[1].store(u64::from(handle.to_raw()), Relaxed);
            for (&f, w) in frames.iter().zip(&e[2..]) {
                w.store(f as u64, Relaxed);
            }
        }
        (handle, false)
    }
}

/// See [`super::thread_counters`].
pub(super) fn thread_counters() -> super::Counters {
    let st = arch::state();
    // Relaxed: statistics of this thread's block.
    let g = |c: &AtomicUsize| c.load(Relaxed) as u64;
    super::Counters {
        captures: g(&st.captures),
        frames_walked: g(&st.walked),
        frames_copied: g(&st.copied),
        frames_patched: g(&st.patched),
        trampoline_returns: g(&st.returns),
        incremental_saves: g(&st.incremental),
        memo_hits: g(&st.memo_hits),
    }
}

/// Compares `got` with a full frame-pointer walk that reads patched slots through the stack
/// shadow (not the array), and counts differences.
#[cold]
#[inline(never)]
fn cross_check(st: &ThreadState, regs: &Regs, buf: &[usize], n: usize) {
    let m = Live::unmemoized(st.lo.load(Relaxed), st.hi.load(Relaxed));
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
    let m = Live::new(st, st.lo.load(Relaxed), st.hi.load(Relaxed));
    m.shadow(slot).unwrap_or(value)
}

// The array never holds more than CAPACITY entries; `Entry` is what the asm expects.
const _: () = assert!(CAPACITY > 0 && core::mem::size_of::<Entry>() == 16);
