//! The capture algorithm, generic over the machine (stack memory, stack shadow, frame
//! validation, patching) so that it is unit-tested on synthetic stacks on every host.
//!
//! A capture walks frame records from the caller. Each record at `fp` holds the caller's `fp`
//! and, at `slot = fp + 8`, a return address. When a slot holds the trampoline and the array
//! has its entry, the rest of the stack is known: the walk copies the array from there
//! (newest first) and, if the buffer still has room below the oldest entry, walks on from
//! that entry's record. Otherwise the frame is new: its return address is written out, and,
//! if every frame from the top down to it is proven to keep a frame record (`trusted`) and
//! the policy does not skip it, it is staged for patching in the free part of the array.
//!
//! Staged frames are committed (array order oldest -> newest, slots patched, length published
//! last). When every frame down to the anchor was proven they connect to it, and entries
//! above the anchor belong to frames that are gone (longjmp, caught panics, cancelled
//! threads) and are replaced. Otherwise (no anchor within reach, unproven frames between,
//! the array full) they form a *segment* whose oldest entry carries [`GAP`]: a later copy
//! that reaches it walks the frames below until the next patched slot. Top entries whose
//! slot lies below the caller's stack pointer or no longer holds the trampoline are dropped.

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
pub(super) trait Machine {
    /// The stack word at `addr`, if aligned and on the thread's stack.
    fn read(&self, addr: usize) -> Option<usize>;
    /// The stack-shadow word of `slot` (the real return address of a patched slot).
    fn shadow(&self, slot: usize) -> Option<usize>;
    /// Whether the frame whose program counter is `pc` keeps its frame record at `fp`
    /// (return address at `fp + 8`) at that point.
    fn trusted(&mut self, pc: usize) -> bool;
    /// Records `ra` in the stack shadow of `slot`, then writes the trampoline into `slot`.
    fn patch(&mut self, slot: usize, ra: usize);
    /// The trampoline's address.
    fn trampoline(&self) -> usize;
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
    // Whether records 0..=k are proven: record k is genuine when the code at its owner's pc
    // (pc_0 = regs.pc, pc_k = the return address in record k-1) keeps its frame record at
    // fp. Checked lazily, only once frames are staged, so that a steady-state capture (which
    // meets the anchor among the skipped frames) looks nothing up. `verified` pcs are proven.
    let mut trusted = policy.patch;
    let mut verified = 0usize;
    let mut pc_k = regs.pc;
    let (mut staged, mut overflow, mut extra, mut k) = (0usize, false, 0usize, 0usize);
    let (mut fp, mut floor) = (regs.fp, regs.sp);
    let mut anchor = None;
    loop {
        let staging = trusted && !overflow;
        if n >= buf.len() && !(staging && extra < policy.extra) {
            break;
        }
        if fp < floor || fp % 8 != 0 {
            break;
        }
        let (Some(next), Some(raw)) = (m.read(fp), m.read(fp + 8)) else { break };
        let slot = fp + 8;
        let mut ra = raw;
        if raw == tramp {
            if let Some(i) = find(arr, len, slot + 8) {
                anchor = Some(i);
                if trusted && staged > 0 {
                    // Staged frames connect only through a proven anchor record.
                    trusted = m.trusted(pc_k);
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
            while trusted && verified <= k {
                let pc = if verified == k {
                    pc_k
                } else if verified < buf.len() {
                    buf[verified]
                } else {
                    0 // not kept (buffer shorter than the skip): unproven
                };
                trusted = pc != 0 && m.trusted(pc);
                verified += 1;
            }
            if trusted {
                if staged < free {
                    arr[len + staged] = Entry { ra, ret_sp: slot + 8 };
                    staged += 1;
                } else {
                    overflow = true;
                }
            }
        }
        if n < buf.len() {
            buf[n] = ra;
            n += 1;
        } else {
            extra += 1;
        }
        pc_k = ra;
        floor = fp + 16;
        fp = next;
        k += 1;
    }
    out.anchor = anchor;
    // Where staged frames go, and whether they connect to the entry below them.
    let (base, connected) = match anchor {
        Some(i) => {
            n = copy_from(m, arr, i, buf, n);
            if trusted {
                // Everything from the newest staged frame down to the anchor is proven, so
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
    out.new_len = Some(base + staged);
    out
}

/// Copies entries from index `i` down, newest first, into `buf[n..]`. Below an entry that
/// starts a segment (`GAP`) or the oldest entry, walks frame records on until a patched slot
/// whose entry is further down, and copies again from there. Returns the new count.
#[inline]
fn copy_from<M: Machine>(m: &M, arr: &[Entry], i: usize, buf: &mut [usize], mut n: usize) -> usize {
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
        let (Some(mut fp), mut floor) = (m.read(e.ret_sp - 16), e.ret_sp) else { break };
        let mut resume = None;
        while n < buf.len() {
            if fp < floor || fp % 8 != 0 {
                break;
            }
            let (Some(next), Some(mut ra)) = (m.read(fp), m.read(fp + 8)) else { break };
            if ra == tramp {
                resume = find(arr, j, fp + 16);
                if resume.is_some() {
                    break;
                }
                ra = m.shadow(fp + 8).unwrap_or(0);
            }
            if ra < MIN_PC {
                break;
            }
            buf[n] = ra;
            n += 1;
            floor = fp + 16;
            fp = next;
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
#[inline(always)]
pub(super) fn steady<M: Machine>(
    m: &M,
    arr: &[Entry],
    len: usize,
    regs: &Regs,
    buf: &mut [usize],
    skip: usize,
) -> Option<usize> {
    if len == 0 || buf.len() < skip + 2 || regs.pc < MIN_PC {
        return None;
    }
    let tramp = m.trampoline();
    let top = arr[len - 1].ret_sp;
    buf[0] = regs.pc;
    let mut n = 1;
    let (mut fp, mut floor) = (regs.fp, regs.sp);
    loop {
        if fp < floor || fp % 8 != 0 {
            return None;
        }
        let (Some(next), Some(ra)) = (m.read(fp), m.read(fp + 8)) else { return None };
        if ra == tramp {
            if top != fp + 16 {
                return None;
            }
            return Some(copy_from(m, arr, len - 1, buf, n));
        }
        if n > skip || ra < MIN_PC {
            return None;
        }
        buf[n] = ra;
        n += 1;
        floor = fp + 16;
        fp = next;
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

/// A frame-pointer walk from the record at `fp`, with the guard rails of [`crate::fp`],
/// reading patched slots through the stack shadow. Fills `buf[n..]`; returns the new count.
pub(super) fn walk_plain<M: Machine>(
    m: &M,
    mut fp: usize,
    mut floor: usize,
    buf: &mut [usize],
    mut n: usize,
) -> usize {
    let tramp = m.trampoline();
    while n < buf.len() {
        if fp < floor || fp % 8 != 0 {
            break;
        }
        let (Some(next), Some(mut ra)) = (m.read(fp), m.read(fp + 8)) else { break };
        if ra == tramp {
            ra = m.shadow(fp + 8).unwrap_or(0);
        }
        if ra < MIN_PC {
            break;
        }
        buf[n] = ra;
        n += 1;
        floor = fp + 16;
        fp = next;
    }
    n
}

/// The reference for the cross-check: a full frame-pointer walk from `regs` that reads
/// patched slots through the stack shadow, ignoring the array.
pub(super) fn reference<M: Machine>(m: &M, regs: &Regs, buf: &mut [usize]) -> usize {
    if buf.is_empty() || regs.pc < MIN_PC {
        return 0;
    }
    buf[0] = regs.pc;
    walk_plain(m, regs.fp, regs.sp, buf, 1)
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
        patches: usize,
    }

    impl Machine for Image {
        fn read(&self, addr: usize) -> Option<usize> {
            self.words.get(&addr).copied()
        }
        fn shadow(&self, slot: usize) -> Option<usize> {
            self.shadow.get(&slot).copied()
        }
        fn trusted(&mut self, pc: usize) -> bool {
            !self.untrusted.contains(&pc)
        }
        fn patch(&mut self, slot: usize, ra: usize) {
            self.shadow.insert(slot, ra);
            self.words.insert(slot, TRAMP);
            self.patches += 1;
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
}
