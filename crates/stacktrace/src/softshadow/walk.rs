//! The capture algorithm, generic over the machine (stack memory, stack shadow, frame
//! validation, patching) so that it is unit-tested on synthetic stacks on every host.
//!
//! A capture walks from the caller with exact steps ([`Machine::unwind`]): a frame record at
//! `fp` (the caller's `fp`, and at `slot = fp + 8` a return address) where the CFI proves
//! one, the CFI's rule otherwise, and the DWARF walker past what neither covers (signal
//! frames), so that the output equals a DWARF walk. When a slot holds the trampoline and the array
//! has its entry, the rest of the stack is known: the walk copies the array from there
//! (newest first) and, if the buffer still has room below the oldest entry, walks on from
//! that entry's record. Otherwise the frame is new: its return address is written out, and,
//! if every frame from the top down to it was reached by exact steps (`trusted`) and
//! the policy does not skip it, it is staged for patching in the free part of the array.
//!
//! Staged frames are committed (array order oldest -> newest, slots patched, length published
//! last). When every frame down to the anchor was proven they connect to it, and entries
//! above the anchor belong to frames that are gone (longjmp, caught panics, cancelled
//! threads) and are replaced. Otherwise (no anchor within reach, unproven frames between,
//! the array full) they form a *segment* whose oldest entry carries [`GAP`]: a later copy
//! that reaches it walks the frames below until the next patched slot. Top entries whose
//! slot lies below the caller's stack pointer or no longer holds the trampoline are dropped.
//!
//! A walk that goes on below an entry needs the caller's frame pointer there: staging a
//! frame records it in the stack shadow of the word below the slot ([`Machine::stage`]),
//! which no return address ever occupies (a call pushes its return address at least 16
//! bytes below the caller's own, by the ABI's stack alignment). So frames reached through
//! the CFI are patched as well as frame records: code built without frame pointers (the
//! Debian builds of python3 and sqlite3) is copied from the array like any other.

pub(super) use crate::frame::{Memory, Unwind};
use crate::Regs;

/// Bit of [`Entry::ra`] marking the oldest entry of a segment: the frames between it and
/// the entry below are not in the array (a capture walks them). Never set in a real address
/// (user space ends below 2^47); the trampoline clears it before jumping.
pub(crate) const GAP: usize = 1 << 63;

/// One patched frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The real return address that the slot held, with [`GAP`] on a segment's oldest entry.
    pub ra: usize,
    /// The stack pointer right after that return: slot + 8 (what the trampoline compares
    /// with `rsp`).
    pub ret_sp: usize,
}

/// Lowest address a return address may have (as in the frame-pointer walk).
const MIN_PC: usize = 4096;

/// What the algorithm needs from the live thread (or a test image).
///
/// Its [`Memory`] reads the thread's stack: a word (or a frame record) if aligned and on it.
pub(super) trait Machine: Memory {
    /// The stack-shadow word of `slot` (the real return address of a patched slot).
    fn shadow(&self, slot: usize) -> Option<usize>;
    /// How the frame running at `pc` (a return address, or the capture's own pc) with
    /// registers `sp` and `fp` reaches its caller, by its CFI (as the DWARF walker steps).
    /// [`Unwind::Refused`] ends the walk (the machine notes it).
    fn unwind(&self, pc: usize, sp: usize, fp: usize) -> Unwind;
    /// The DWARF walk from that frame into `buf` (`buf[0] = pc`): what [`Unwind::Other`]
    /// leaves to it. Returns how many.
    fn walk_from(&self, pc: usize, sp: usize, fp: usize, buf: &mut [usize]) -> usize;
    /// Records `ra` in the stack shadow of `slot`, then writes the trampoline into `slot`.
    fn patch(&mut self, slot: usize, ra: usize);
    /// Records `caller_fp` (the frame pointer of the caller that `slot` returns to) in the
    /// stack shadow of `slot - 8`, for walks that go on below the entry once it is patched.
    fn stage(&mut self, slot: usize, caller_fp: usize);
    /// The trampoline's address.
    fn trampoline(&self) -> usize;
}

/// One exact step of a walk: the frame-pointer step where the CFI proves it, else the CFI's.
enum Next {
    /// The caller: its pc `ra` (read from `slot`), sp and fp.
    Caller { ra: usize, slot: usize, sp: usize, fp: usize },
    /// The walk ends here.
    End,
    /// The full DWARF walker must continue from this frame.
    Dwarf,
}

/// The step from the frame `(pc, sp, fp)`: exactly what the DWARF walker does, so that a
/// walk built of these steps gives its output even through code without frame pointers
/// (whose `rbp` is any value, often a stale frame pointer of a caller).
#[inline(always)]
fn next<M: Machine>(m: &M, pc: usize, sp: usize, fp: usize) -> Next {
    match m.unwind(pc, sp, fp) {
        Unwind::Record => {
            if fp < sp || !fp.is_multiple_of(8) {
                return Next::End;
            }
            match m.read_pair(fp) {
                Some((up, ra)) => Next::Caller { ra, slot: fp + 8, sp: fp + 16, fp: up },
                None => Next::End,
            }
        }
        Unwind::Cfa { cfa, slot, fp_slot } => {
            // The CFA (the caller's sp) must grow, as in the DWARF walker.
            if cfa <= sp {
                return Next::End;
            }
            let Some(ra) = m.read(slot) else { return Next::End };
            let up = match fp_slot {
                None => fp,
                Some(a) => match m.read(a) {
                    Some(v) => v,
                    None => return Next::End,
                },
            };
            Next::Caller { ra, slot, sp: cfa, fp: up }
        }
        Unwind::Stop | Unwind::Refused => Next::End,
        Unwind::Other => Next::Dwarf,
    }
}

/// Per-capture choices of the caller.
#[derive(Clone, Copy, Debug)]
pub(super) struct Policy {
    /// New frames may be patched at all.
    pub patch: bool,
    /// Frames (counted from the first frame record) never patched: they change too often.
    pub skip: usize,
    /// Frames walked past a full buffer to find the anchor or stage frames.
    pub extra: usize,
}

/// What a capture did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Outcome {
    /// Entries written to the buffer.
    pub n: usize,
    /// The array length to publish, if it changed.
    pub new_len: Option<usize>,
    /// Index of the anchor entry, if the walk found one.
    pub anchor: Option<usize>,
    /// Entries `base..base + patched` are new (their slots just patched).
    pub base: usize,
    /// See `base`.
    pub patched: usize,
    /// Frames written to the buffer by walking (the rest were copied from the array).
    pub walked: usize,
}

/// Captures into `buf` from `regs`, with `arr` the whole array (`arr[..len]` published).
pub(super) fn capture<M: Machine>(
    m: &mut M,
    arr: &mut [Entry],
    len: usize,
    regs: &Regs,
    buf: &mut [usize],
    policy: Policy,
) -> Outcome {
    let mut out = Outcome::default();
    if buf.is_empty() || regs.pc < MIN_PC {
        return out;
    }
    let tramp = m.trampoline();
    buf[0] = regs.pc;
    let mut n = 1;
    let free = arr.len().saturating_sub(len);
    // The walk is exact (`next`): frame k runs at pc_k with registers (floor, fp), so every
    // frame may be patched (a later copy finds its caller's fp in the stack shadow below the
    // slot, `Machine::stage`), with or without a frame record: a run of frames that is not
    // patched between two that are ends a segment (`GAP` on the newer). `trusted` turns off
    // for good at an orphan patched slot (nothing beyond it connects) or a signal frame.
    let mut trusted = policy.patch;
    let mut last = 0usize; // k of the newest staged frame, when `staged > 0`
    let mut pc_k = regs.pc;
    let (mut staged, mut overflow, mut extra, mut k) = (0usize, false, 0usize, 0usize);
    let (mut fp, mut floor) = (regs.fp, regs.sp);
    let mut anchor = None;
    loop {
        let staging = trusted && !overflow;
        if n >= buf.len() && !(staging && extra < policy.extra) {
            break;
        }
        let (raw, slot, up_sp, up) = match next(m, pc_k, floor, fp) {
            Next::Caller { ra, slot, sp, fp, .. } => (ra, slot, sp, fp),
            Next::End => break,
            Next::Dwarf => {
                trusted = false;
                if k + 1 == n {
                    // pc_k is buf[n - 1]: the DWARF walker rewrites it and goes on.
                    n = n - 1 + m.walk_from(pc_k, floor, fp, &mut buf[n - 1..]).max(1);
                }
                break;
            }
        };
        let mut ra = raw;
        if raw == tramp {
            if let Some(i) = find(arr, len, slot + 8) {
                anchor = Some(i);
                // Staged frames connect only if the newest is right above the anchor.
                if staged > 0 && last + 1 != k {
                    arr[len + staged - 1].ra |= GAP;
                }
                break;
            }
            // An orphan patched slot: its real return address is in the shadow; frames
            // beyond it cannot be connected to the array.
            ra = m.shadow(slot).unwrap_or(0);
            trusted = false;
        }
        if ra < MIN_PC {
            break;
        }
        if trusted && !overflow && k >= policy.skip {
            if staged < free {
                m.stage(slot, up);
                if staged > 0 && last + 1 != k {
                    // Unpatched frames between this one and the newer staged one.
                    arr[len + staged - 1].ra |= GAP;
                }
                arr[len + staged] = Entry { ra, ret_sp: slot + 8 };
                staged += 1;
                last = k;
            } else {
                overflow = true;
            }
        }
        if n < buf.len() {
            buf[n] = ra;
            n += 1;
        } else {
            extra += 1;
        }
        pc_k = ra;
        floor = up_sp;
        fp = up;
        k += 1;
    }
    out.anchor = anchor;
    out.walked = n;
    // Where staged frames go, and whether they connect to the entry below them.
    let (base, connected) = match anchor {
        Some(i) => {
            n = copy_from(m, arr, i, buf, n);
            if trusted {
                // The walk down to the anchor is exact and met no other patched slot, so
                // entries above the anchor are frames that are gone: replace them.
                (i + 1, !overflow)
            } else {
                (len, false)
            }
        }
        None => {
            // Drop top entries of frames that are gone (their slot is below the caller's
            // stack or no longer holds the trampoline); a live one stops the drop. A frame
            // mid-trampoline (a signal handler's capture) still holds it: never dropped.
            let mut l = len;
            while l > 0 {
                let slot = arr[l - 1].ret_sp - 8;
                if slot >= regs.sp && m.read(slot) == Some(tramp) {
                    break;
                }
                l -= 1;
            }
            if l != len {
                out.new_len = Some(l);
            }
            (l, false)
        }
    };
    out.n = n;
    if staged == 0 {
        return out;
    }
    // Staged entries sit at arr[len..len + staged], newest first. The array stays ordered by
    // stack address (oldest, highest, first): a segment that does not connect must lie below
    // the entry under it.
    let oldest = arr[len + staged - 1].ret_sp;
    if base > 0 && arr[base - 1].ret_sp <= oldest {
        return out;
    }
    arr[len..len + staged].reverse();
    arr.copy_within(len..len + staged, base);
    if !connected {
        arr[base].ra |= GAP;
    }
    for e in &arr[base..base + staged] {
        m.patch(e.ret_sp - 8, e.ra & !GAP);
    }
    out.base = base;
    out.patched = staged;
    out.new_len = Some(base + staged);
    out
}

/// Copies entries from index `i` down, newest first, into `buf[n..]`. Below an entry that
/// starts a segment (`GAP`) or the oldest entry, walks frame records on until a patched slot
/// whose entry is further down, and copies again from there. Returns the new count.
///
/// Fast path: one pass that copies and ORs the copied words together; only when that shows a
/// segment start in the run (rare), or the copy reached entry 0 with room left, does the
/// general [`copy_segments`] redo it.
#[inline(always)]
pub(super) fn copy_from<M: Machine>(
    m: &M,
    arr: &[Entry],
    i: usize,
    buf: &mut [usize],
    n: usize,
) -> usize {
    let (run, out) = (&arr[..i + 1], &mut buf[n..]);
    let take = out.len().min(run.len());
    let seen = copy_run(&run[run.len() - take..], &mut out[..take]);
    if seen & GAP == 0 && (take < run.len() || take == out.len()) {
        return n + take;
    }
    copy_segments(m, arr, i, buf, n)
}

/// `dst[k] = src[src.len() - 1 - k].ra` for every `k < dst.len()` (callers pass slices of
/// the same length): a reversed, strided copy. Returns the OR of the words copied.
#[inline(always)]
fn copy_run(src: &[Entry], dst: &mut [usize]) -> usize {
    let len = src.len().min(dst.len());
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{
            __m128i, _mm_cvtsi128_si64, _mm_loadu_si128, _mm_or_si128, _mm_setzero_si128,
            _mm_storeu_si128, _mm_unpackhi_epi64, _mm_unpacklo_epi64,
        };
        // Two entries per 16-byte store: the `ra` halves of two 16-byte loads, newer first;
        // eight entries per round (the loop is bound by uops, not by memory).
        let mut from = src.as_ptr_range().end as *const __m128i;
        let mut to = dst.as_mut_ptr() as *mut __m128i;
        /// `(p[1].ra, p[0].ra)`: two entries' return addresses, the newer (higher) first.
        ///
        /// # Safety
        /// `p` and `p + 1` point to readable entries.
        #[inline(always)]
        unsafe fn pair(p: *const __m128i) -> __m128i {
            // SAFETY: forwarded from the caller's contract.
            unsafe { _mm_unpacklo_epi64(_mm_loadu_si128(p.add(1)), _mm_loadu_si128(p)) }
        }
        // SAFETY: SSE2 is part of x86-64. Entries are 16 bytes (`#[repr(C)]`, two words).
        // `from` walks down from the end of `src[..len]` and `to` up from the start of
        // `dst[..len]` in step (one entry per word), `rest` counting what is left: every load
        // is of an entry in `src[..len]`, every store into `dst[..len]`.
        unsafe {
            let mut acc = _mm_setzero_si128();
            let mut rest = len;
            while rest >= 8 {
                from = from.sub(8);
                let (a, b) = (pair(from.add(6)), pair(from.add(4)));
                let (c, e) = (pair(from.add(2)), pair(from));
                _mm_storeu_si128(to, a);
                _mm_storeu_si128(to.add(1), b);
                _mm_storeu_si128(to.add(2), c);
                _mm_storeu_si128(to.add(3), e);
                acc = _mm_or_si128(acc, _mm_or_si128(_mm_or_si128(a, b), _mm_or_si128(c, e)));
                to = to.add(4);
                rest -= 8;
            }
            while rest >= 2 {
                from = from.sub(2);
                let a = pair(from);
                _mm_storeu_si128(to, a);
                acc = _mm_or_si128(acc, a);
                to = to.add(1);
                rest -= 2;
            }
            let mut seen =
                (_mm_cvtsi128_si64(acc) | _mm_cvtsi128_si64(_mm_unpackhi_epi64(acc, acc))) as usize;
            if rest == 1 {
                let ra = (*(from.sub(1) as *const Entry)).ra;
                *(to as *mut usize) = ra;
                seen |= ra;
            }
            seen
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let mut seen = 0;
        for (o, e) in dst[..len].iter_mut().zip(src[..len].iter().rev()) {
            *o = e.ra;
            seen |= e.ra;
        }
        seen
    }
}

/// The general [`copy_from`]: segment starts, and walks below them.
#[cold]
#[inline(never)]
fn copy_segments<M: Machine>(
    m: &M,
    arr: &[Entry],
    i: usize,
    buf: &mut [usize],
    mut n: usize,
) -> usize {
    let tramp = m.trampoline();
    let mut j = i;
    loop {
        let take = (buf.len() - n).min(j + 1);
        if take == 0 {
            return n;
        }
        let run = &arr[j + 1 - take..=j];
        // The newest segment start in the run, if any (a vectorised check first: rare).
        let gap = if run.iter().fold(0, |a, e| a | e.ra) & GAP != 0 {
            run.iter().rposition(|e| e.ra & GAP != 0)
        } else {
            None
        };
        let first = gap.unwrap_or(0);
        for (o, e) in buf[n..].iter_mut().zip(run[first..].iter().rev()) {
            *o = e.ra & !GAP;
        }
        n += take - first;
        let at = j + 1 - take + first;
        if (gap.is_none() && at > 0) || n >= buf.len() {
            return n;
        }
        let e = arr[at];
        j = at;
        // The caller's fp, recorded when the entry was staged. The caller (pc buf[n - 1])
        // and those below may have no frame record: exact steps.
        let (Some(mut fp), mut floor) = (m.shadow(e.ret_sp - 16), e.ret_sp) else { break };
        let mut pc = e.ra & !GAP;
        let mut resume = None;
        while n < buf.len() {
            let (mut ra, slot, up_sp, up) = match next(m, pc, floor, fp) {
                Next::Caller { ra, slot, sp, fp, .. } => (ra, slot, sp, fp),
                Next::End => break,
                Next::Dwarf => {
                    n = n - 1 + m.walk_from(pc, floor, fp, &mut buf[n - 1..]).max(1);
                    break;
                }
            };
            if ra == tramp {
                resume = find(arr, j, slot + 8);
                if resume.is_some() {
                    break;
                }
                ra = m.shadow(slot).unwrap_or(0);
            }
            if ra < MIN_PC {
                break;
            }
            buf[n] = ra;
            n += 1;
            (pc, floor, fp) = (ra, up_sp, up);
        }
        match resume {
            Some(k) => j = k,
            None => break,
        }
    }
    n
}

/// The steady state, the common case, on a short path: at most `skip` new frames, then the
/// newest entry's slot. `None` when anything else happens (the general [`capture`] then runs
/// from scratch; nothing has been changed).
#[cfg(test)]
pub(super) fn steady<M: Machine>(
    m: &M,
    arr: &[Entry],
    regs: &Regs,
    buf: &mut [usize],
    skip: usize,
) -> Option<usize> {
    let n = steady_top(m, arr, regs, buf, skip)?;
    Some(copy_from(m, arr, arr.len() - 1, buf, n))
}

/// The walking half of [`steady`]: writes the new frames (at most `skip + 1`, the caller's
/// pc included) to `buf` and returns how many; the rest of the trace is the newest entry's
/// and below (`copy_from(.., arr.len() - 1, ..)`). `None` as for `steady`.
#[inline(always)]
pub(super) fn steady_top<M: Machine>(
    m: &M,
    arr: &[Entry],
    regs: &Regs,
    buf: &mut [usize],
    skip: usize,
) -> Option<usize> {
    let top = arr.last()?.ret_sp;
    if buf.len() < skip.saturating_add(2) || regs.pc < MIN_PC {
        return None;
    }
    let tramp = m.trampoline();
    buf[0] = regs.pc;
    let mut n = 1;
    let (mut pc, mut fp, mut floor) = (regs.pc, regs.fp, regs.sp);
    loop {
        // Exact steps only: a stale `rbp` in code without frame pointers may well lead to
        // the anchor, skipping frames.
        let Next::Caller { ra, slot, sp, fp: up, .. } = next(m, pc, floor, fp) else {
            return None;
        };
        if ra == tramp {
            if top != slot + 8 {
                return None;
            }
            return Some(n);
        }
        if n > skip || ra < MIN_PC {
            return None;
        }
        buf[n] = ra;
        n += 1;
        (pc, floor, fp) = (ra, sp, up);
    }
}

/// The newest entry whose `ret_sp` is `ret_sp`, searching down from the top past entries of
/// frames that are gone (they are deeper, so their `ret_sp` is smaller).
#[inline]
fn find(arr: &[Entry], len: usize, ret_sp: usize) -> Option<usize> {
    let mut i = len;
    while i > 0 {
        let v = arr[i - 1].ret_sp;
        if v == ret_sp {
            return Some(i - 1);
        }
        if v > ret_sp {
            return None;
        }
        i -= 1;
    }
    None
}

/// A walk of exact steps from frame `(pc, sp, fp)` (`pc` already at `buf[n - 1]`), frame
/// records where the CFI proves them and the CFI otherwise, reading patched slots through
/// the stack shadow. Fills `buf[n..]`; returns the new count.
pub(super) fn walk_plain<M: Machine>(
    m: &M,
    (mut pc, mut sp, mut fp): (usize, usize, usize),
    buf: &mut [usize],
    mut n: usize,
) -> usize {
    let tramp = m.trampoline();
    while n < buf.len() {
        let (mut ra, slot, up_sp, up) = match next(m, pc, sp, fp) {
            Next::Caller { ra, slot, sp, fp, .. } => (ra, slot, sp, fp),
            Next::End => break,
            Next::Dwarf => return n - 1 + m.walk_from(pc, sp, fp, &mut buf[n - 1..]).max(1),
        };
        if ra == tramp {
            ra = m.shadow(slot).unwrap_or(0);
        }
        if ra < MIN_PC {
            break;
        }
        buf[n] = ra;
        n += 1;
        (pc, sp, fp) = (ra, up_sp, up);
    }
    n
}

/// The reference for the cross-check: the same steps as the DWARF walker (frame records
/// only where the CFI proves them) from `regs`, reading patched slots through the stack
/// shadow, ignoring the array.
pub(super) fn reference<M: Machine>(m: &M, regs: &Regs, buf: &mut [usize]) -> usize {
    if buf.is_empty() || regs.pc < MIN_PC {
        return 0;
    }
    buf[0] = regs.pc;
    walk_plain(m, (regs.pc, regs.sp, regs.fp), buf, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    const TRAMP: usize = 0xdead_0000;

    /// A synthetic stack of frame records, a shadow, and a set of untrusted pcs.
    #[derive(Default)]
    struct Image {
        words: HashMap<usize, usize>,
        shadow: HashMap<usize, usize>,
        untrusted: HashSet<usize>,
        /// Code without frame pointers: pc -> CFA offset from sp (return address at CFA - 8,
        /// fp untouched).
        sp_based: HashMap<usize, usize>,
        patches: usize,
    }

    impl Memory for Image {
        fn read(&self, addr: usize) -> Option<usize> {
            self.words.get(&addr).copied()
        }
    }

    impl Machine for Image {
        fn shadow(&self, slot: usize) -> Option<usize> {
            self.shadow.get(&slot).copied()
        }
        fn unwind(&self, pc: usize, sp: usize, _fp: usize) -> Unwind {
            // Untrusted code: hand over to "DWARF", here a frame-record walk (the image
            // has records everywhere).
            if self.untrusted.contains(&pc) {
                Unwind::Other
            } else if let Some(&off) = self.sp_based.get(&pc) {
                Unwind::Cfa { cfa: sp + off, slot: sp + off - 8, fp_slot: None }
            } else {
                Unwind::Record
            }
        }
        fn walk_from(&self, pc: usize, sp: usize, fp: usize, buf: &mut [usize]) -> usize {
            let plain = Image {
                words: self.words.clone(),
                shadow: self.shadow.clone(),
                ..Default::default()
            };
            if buf.is_empty() {
                return 0;
            }
            buf[0] = pc;
            walk_plain(&plain, (pc, sp, fp), buf, 1)
        }
        fn patch(&mut self, slot: usize, ra: usize) {
            self.shadow.insert(slot, ra);
            self.words.insert(slot, TRAMP);
            self.patches += 1;
        }
        fn stage(&mut self, slot: usize, caller_fp: usize) {
            self.shadow.insert(slot - 8, caller_fp);
        }
        fn trampoline(&self) -> usize {
            TRAMP
        }
    }

    /// Frames at the top of a stack ending at 0x100000: frame i (0 = outermost) has its
    /// record at `rec(i)`, return address `0x1000 + i`. Returns the regs of a capture called
    /// from the newest of `depth` frames.
    fn rec(i: usize) -> usize {
        0x100000 - 64 * (i + 1)
    }

    fn push_frames(img: &mut Image, from: usize, depth: usize) -> Regs {
        for i in from..depth {
            img.words.insert(rec(i), if i == 0 { 0 } else { rec(i - 1) });
            img.words.insert(rec(i) + 8, 0x1000 + i);
        }
        Regs { pc: 0x9000, sp: rec(depth - 1) - 16, fp: rec(depth - 1), pc_is_exact: false }
    }

    fn expected(depth: usize) -> Vec<usize> {
        let mut v = vec![0x9000];
        v.extend((0..depth).rev().map(|i| 0x1000 + i));
        v
    }

    /// A "return" from frames `depth-1 ..= to`: simulate the trampoline on patched slots.
    fn pop_to(img: &mut Image, arr: &[Entry], len: &mut usize, depth: usize, to: usize) {
        for i in (to..depth).rev() {
            let slot = rec(i) + 8;
            if img.words.get(&slot) == Some(&TRAMP) {
                assert_eq!(arr[*len - 1].ret_sp, slot + 8, "trampoline order");
                *len -= 1;
            }
            img.words.remove(&rec(i));
            img.words.remove(&slot);
        }
    }

    const ALL: Policy = Policy { patch: true, skip: 0, extra: 64 };

    fn run(
        img: &mut Image,
        arr: &mut [Entry],
        len: &mut usize,
        regs: &Regs,
        cap: usize,
        p: Policy,
    ) -> Vec<usize> {
        let mut buf = vec![0; cap];
        let o = capture(img, arr, *len, regs, &mut buf, p);
        if let Some(l) = o.new_len {
            *len = l;
        }
        let mut r = vec![0; cap];
        let rn = reference(img, regs, &mut r);
        assert_eq!(&buf[..o.n], &r[..rn], "matches the reference walk");
        buf.truncate(o.n);
        buf
    }

    #[test]
    fn first_capture_patches_then_copies() {
        let mut img = Image::default();
        let mut arr = vec![Entry { ra: 0, ret_sp: 0 }; 64];
        let mut len = 0;
        let regs = push_frames(&mut img, 0, 10);
        assert_eq!(run(&mut img, &mut arr, &mut len, &regs, 32, ALL), expected(10));
        assert_eq!((len, img.patches), (10, 10));
        assert_eq!(
            arr[0],
            Entry { ra: 0x1000 | GAP, ret_sp: rec(0) + 16 },
            "the oldest entry is walked on from"
        );
        // Steady state: nothing new to patch, everything copied.
        assert_eq!(run(&mut img, &mut arr, &mut len, &regs, 32, ALL), expected(10));
        assert_eq!(img.patches, 10);
        // A shorter buffer stops the copy.
        assert_eq!(run(&mut img, &mut arr, &mut len, &regs, 4, ALL), expected(10)[..4]);
    }

    #[test]
    fn deeper_frames_are_pushed_on_the_anchor_and_returns_pop() {
        let mut img = Image::default();
        let mut arr = vec![Entry { ra: 0, ret_sp: 0 }; 64];
        let mut len = 0;
        let regs = push_frames(&mut img, 0, 5);
        run(&mut img, &mut arr, &mut len, &regs, 32, ALL);
        let regs = push_frames(&mut img, 5, 12);
        assert_eq!(run(&mut img, &mut arr, &mut len, &regs, 32, ALL), expected(12));
        assert_eq!((len, img.patches), (12, 12));
        pop_to(&mut img, &arr, &mut len, 12, 7);
        let regs = push_frames(&mut img, 7, 9);
        assert_eq!(run(&mut img, &mut arr, &mut len, &regs, 32, ALL), expected(9));
        assert_eq!(len, 9);
    }

    #[test]
    fn skip_leaves_top_frames_and_untrusted_code_stops_patching() {
        let mut img = Image::default();
        let mut arr = vec![Entry { ra: 0, ret_sp: 0 }; 64];
        let mut len = 0;
        let regs = push_frames(&mut img, 0, 10);
        let p = Policy { skip: 3, ..ALL };
        assert_eq!(run(&mut img, &mut arr, &mut len, &regs, 32, p), expected(10));
        assert_eq!(len, 7, "the newest 3 records stay unpatched");
        assert_eq!(img.words[&(rec(9) + 8)], 0x1009);

        // The code at pc 0x1004 (the owner of record 3) keeps no frame record: records from
        // there on are unproven.
        let mut img = Image::default();
        let mut len = 0;
        let regs = push_frames(&mut img, 0, 10);
        img.untrusted.insert(0x1004);
        assert_eq!(run(&mut img, &mut arr, &mut len, &regs, 32, ALL), expected(10));
        assert_eq!(len, 6, "records 9..=4 only");
        assert_eq!(img.words[&(rec(3) + 8)], 0x1003);
        assert_eq!(img.words[&(rec(4) + 8)], TRAMP);
    }

    #[test]
    fn code_without_frame_pointers_is_stepped_by_its_cfi() {
        // Rust frames (records 0..=3), then a C function at pc 0x2000 without a frame record
        // (CFA = sp + 32) that leaves `rbp` as its caller's (rec(3)), then a Rust callback
        // whose record saves that stale `rbp`. Following `rbp` would skip 0x1004.
        let mut img = Image::default();
        let mut arr = vec![Entry { ra: 0, ret_sp: 0 }; 64];
        let mut len = 0;
        push_frames(&mut img, 0, 4);
        let c_cfa = rec(3) - 16;
        img.words.insert(c_cfa - 8, 0x1004);
        img.sp_based.insert(0x2000, 32);
        let cb = c_cfa - 32 - 16;
        img.words.insert(cb, rec(3));
        img.words.insert(cb + 8, 0x2000);
        let regs = Regs { pc: 0x9000, sp: cb - 16, fp: cb, pc_is_exact: false };
        let want = [0x9000, 0x2000, 0x1004, 0x1003, 0x1002, 0x1001, 0x1000];
        assert_eq!(run(&mut img, &mut arr, &mut len, &regs, 32, ALL), want);
        // Every frame is patched, the C frame (reached through its CFI) too: one run, no gap.
        assert_eq!((len, img.patches), (6, 6));
        assert_eq!(arr[5], Entry { ra: 0x2000, ret_sp: cb + 16 });
        assert_eq!(arr[4], Entry { ra: 0x1004, ret_sp: c_cfa });
        assert_eq!(arr[3], Entry { ra: 0x1003, ret_sp: rec(3) + 16 });
        // Its caller's fp (the stale `rbp` it kept) is in the shadow below its slot.
        assert_eq!(img.shadow[&(c_cfa - 16)], rec(3));
        // Steady state: all copied.
        let mut buf = [0; 32];
        let n = steady(&img, &arr[..len], &regs, &mut buf, 0).expect("steady path");
        assert_eq!(buf[..n], want);
        assert_eq!(run(&mut img, &mut arr, &mut len, &regs, 32, ALL), want);
        assert_eq!(img.patches, 6);
        // With room for two entries only, the C frame's is the oldest: the copy walks on
        // below it from the fp recorded at staging (its stack holds no frame record there).
        let mut small = Image::default();
        push_frames(&mut small, 0, 4);
        small.words.insert(c_cfa - 8, 0x1004);
        small.sp_based.insert(0x2000, 32);
        small.words.insert(cb, rec(3));
        small.words.insert(cb + 8, 0x2000);
        let (mut arr_s, mut len_s) = (vec![Entry { ra: 0, ret_sp: 0 }; 2], 0);
        assert_eq!(run(&mut small, &mut arr_s, &mut len_s, &regs, 32, ALL), want);
        assert_eq!(len_s, 2);
        assert_eq!(arr_s[0].ret_sp, c_cfa);
        let n = steady(&small, &arr_s[..len_s], &regs, &mut buf, 0).expect("steady path");
        assert_eq!(buf[..n], want, "walked on below the oldest entry");
        // A C frame on top: the steady path must not follow the stale `rbp` to the anchor.
        let c_regs = Regs { pc: 0x2000, sp: c_cfa - 32, fp: rec(3), pc_is_exact: false };
        let mut img2 = Image::default();
        push_frames(&mut img2, 0, 4);
        img2.words.insert(c_cfa - 8, 0x1004);
        img2.sp_based.insert(0x2000, 32);
        let (mut arr2, mut len2) = (vec![Entry { ra: 0, ret_sp: 0 }; 64], 0);
        let want2 = [0x2000, 0x1004, 0x1003, 0x1002, 0x1001, 0x1000];
        assert_eq!(run(&mut img2, &mut arr2, &mut len2, &c_regs, 32, ALL), want2);
        assert_eq!(len2, 5, "the C frame and the records below it are patched");
        assert_eq!(run(&mut img2, &mut arr2, &mut len2, &c_regs, 32, ALL), want2);
        assert_eq!((len2, img2.patches), (5, 5), "and copied");
        // Rust frames patched first, then the C frame and the callback pushed on them: the
        // CFI step through the C frame meets the anchor, and both connect to it.
        let mut img3 = Image::default();
        let (mut arr3, mut len3) = (vec![Entry { ra: 0, ret_sp: 0 }; 64], 0);
        push_frames(&mut img3, 0, 4);
        let inner = Regs { pc: 0x1004, sp: rec(3) - 16, fp: rec(3), pc_is_exact: false };
        run(&mut img3, &mut arr3, &mut len3, &inner, 32, ALL);
        assert_eq!(len3, 4);
        img3.words.insert(c_cfa - 8, 0x1004);
        img3.sp_based.insert(0x2000, 32);
        img3.words.insert(cb, rec(3));
        img3.words.insert(cb + 8, 0x2000);
        assert_eq!(run(&mut img3, &mut arr3, &mut len3, &regs, 32, ALL), want);
        assert_eq!(len3, 6);
        assert_eq!(arr3[5], Entry { ra: 0x2000, ret_sp: cb + 16 });
        assert_eq!(arr3[4], Entry { ra: 0x1004, ret_sp: c_cfa });
        let n = steady(&img3, &arr3[..len3], &regs, &mut buf, 0).expect("steady path");
        assert_eq!(buf[..n], want);
    }

    #[test]
    fn stale_entries_after_a_longjmp_are_dropped() {
        let mut img = Image::default();
        let mut arr = vec![Entry { ra: 0, ret_sp: 0 }; 64];
        let mut len = 0;
        let regs = push_frames(&mut img, 0, 12);
        run(&mut img, &mut arr, &mut len, &regs, 32, ALL);
        // longjmp to frame 6: frames 7..12 vanish without returning; new frames reuse the
        // addresses with other return addresses.
        for i in 7..12 {
            img.words.remove(&rec(i));
            img.words.remove(&(rec(i) + 8));
        }
        let regs = push_frames(&mut img, 7, 9);
        assert_eq!(run(&mut img, &mut arr, &mut len, &regs, 32, ALL), expected(9));
        assert_eq!(len, 9, "stale entries replaced");
        assert_eq!(arr[8], Entry { ra: 0x1008, ret_sp: rec(8) + 16 });
    }

    #[test]
    fn full_array_leaves_deeper_frames_walked() {
        let mut img = Image::default();
        let mut arr = vec![Entry { ra: 0, ret_sp: 0 }; 6];
        let mut len = 0;
        let regs = push_frames(&mut img, 0, 4);
        run(&mut img, &mut arr, &mut len, &regs, 32, ALL);
        assert_eq!(len, 4);
        let regs = push_frames(&mut img, 4, 20);
        // 16 new frames, 2 free entries: the newest 2 form a segment, the rest is walked.
        assert_eq!(run(&mut img, &mut arr, &mut len, &regs, 32, ALL), expected(20));
        assert_eq!((len, img.patches), (6, 6));
        assert_eq!(arr[4].ra, (0x1000 + 18) | GAP);
        assert_eq!(run(&mut img, &mut arr, &mut len, &regs, 32, ALL), expected(20));
        assert_eq!((len, img.patches), (6, 6));
        // A buffer shorter than the stack: the copy continues below the oldest entry.
        let regs = push_frames(&mut img, 4, 5);
        for l in 1..8 {
            assert_eq!(run(&mut img, &mut arr, &mut len, &regs, l, ALL), expected(5)[..l.min(6)]);
        }
    }

    #[test]
    fn segments_form_when_the_anchor_is_out_of_reach() {
        let mut img = Image::default();
        let mut arr = vec![Entry { ra: 0, ret_sp: 0 }; 64];
        let mut len = 0;
        let near = Policy { extra: 0, ..ALL };
        let regs = push_frames(&mut img, 0, 10);
        assert_eq!(run(&mut img, &mut arr, &mut len, &regs, 4, near), expected(10)[..4]);
        assert_eq!(len, 3);
        let regs = push_frames(&mut img, 10, 20);
        assert_eq!(run(&mut img, &mut arr, &mut len, &regs, 4, near), expected(20)[..4]);
        assert_eq!(len, 6);
        assert!(arr[0].ra & GAP != 0 && arr[3].ra & GAP != 0 && arr[4].ra & GAP == 0);
        // A long capture copies a segment, walks the gap, copies the next one, walks on.
        assert_eq!(run(&mut img, &mut arr, &mut len, &regs, 64, near), expected(20));
        // Returns pop across segments in order.
        pop_to(&mut img, &arr, &mut len, 20, 8);
        assert_eq!(len, 1);
        let regs = push_frames(&mut img, 8, 9);
        assert_eq!(run(&mut img, &mut arr, &mut len, &regs, 64, ALL), expected(9));
    }

    #[test]
    fn orphan_slots_read_through_the_shadow() {
        let mut img = Image::default();
        let mut arr = vec![Entry { ra: 0, ret_sp: 0 }; 64];
        let mut len = 0;
        let regs = push_frames(&mut img, 0, 8);
        run(&mut img, &mut arr, &mut len, &regs, 32, ALL);
        len = 0; // entries lost
        assert_eq!(run(&mut img, &mut arr, &mut len, &regs, 32, ALL), expected(8));
        assert_eq!(len, 0, "nothing connects through an orphan");
    }

    #[test]
    fn copy_run_reverses_every_length_and_reports_segment_bits() {
        for len in 0..40 {
            let src: Vec<Entry> =
                (0..len).map(|i| Entry { ra: 0x1000 + i, ret_sp: 0x9000 - 16 * i }).collect();
            let mut dst = vec![0; len + 1];
            let seen = copy_run(&src, &mut dst[..len]);
            let want: Vec<usize> = (0..len).rev().map(|i| 0x1000 + i).collect();
            assert_eq!(dst[..len], want[..], "len {len}");
            assert_eq!(dst[len], 0, "len {len}: wrote past the end");
            assert_eq!(seen & GAP, 0, "len {len}");
            // A segment bit anywhere in the run shows in the result.
            for g in 0..len {
                let mut marked = src.clone();
                marked[g].ra |= GAP;
                assert_ne!(copy_run(&marked, &mut dst[..len]) & GAP, 0, "len {len}, gap {g}");
            }
        }
    }
}
