//! One frame's step, for other backends: the software shadow stack walks with these steps
//! (a frame-pointer step only where the CFI proves a frame record at `fp`: saved fp at `fp`,
//! return address at `fp + 8`; the CFI's step otherwise) so that its output equals a DWARF
//! walk, and hands signal frames to the DWARF walker ([`walk_from`]).
//!
//! # Signal safety
//! [`unwind`] and [`walk_from`] are async-signal-safe under the conditions of the module docs
//! of `dwarf`; they never refresh the `dl_iterate_phdr` snapshot (they may run in a handler).

use super::cache::{self, Rule};
use super::cfi;
use super::module::Miss;
use super::walk::{self, LiveRules, LiveStacks};
use crate::arch::Site;
use crate::fp::LiveStack;
use crate::Regs;
use core::sync::atomic::Ordering;

pub(crate) use crate::frame::Unwind;

/// The step of the DWARF walker from one frame, for a walk mixing frame-pointer steps (where
/// the CFI proves them) and CFI steps, so that its output equals a DWARF walk. Never
/// refreshes the module snapshot (it may run in a signal handler).
#[inline]
pub(crate) fn unwind(pc: usize, sp: usize, fp: usize) -> Unwind {
    let Some(lookup) = pc.checked_sub(1) else { return Unwind::Stop };
    unwind_at(lookup, pc, sp, fp)
}

/// As [`unwind`], for a frame whose `pc` is the exact instruction (looked up as is): the
/// registers an entry point reads of itself ([`crate::caller_regs!`]). `site` remembers the
/// rule of the one instruction it is consulted for, in front of the process-wide cache.
#[inline(always)]
pub(crate) fn unwind_exact(site: &Site, pc: usize, sp: usize, fp: usize) -> Unwind {
    if pc < 4096 {
        return Unwind::Stop;
    }
    // Relaxed: the xor check detects a pair torn by racing writers (as in `cache::get`).
    let w = site.word.load(Ordering::Relaxed);
    if site.key_xor_word.load(Ordering::Relaxed) ^ w == pc as u64 && w != 0 {
        return decode(w, sp, fp);
    }
    site_miss(site, pc, sp, fp)
}

/// [`unwind_exact`] when the site does not know its rule yet: the cache, or the CFI.
#[cold]
#[inline(never)]
fn site_miss(site: &Site, pc: usize, sp: usize, fp: usize) -> Unwind {
    match word_at(pc, pc) {
        Ok(w) => {
            // Relaxed: see above.
            site.word.store(w, Ordering::Relaxed);
            site.key_xor_word.store(pc as u64 ^ w, Ordering::Relaxed);
            decode(w, sp, fp)
        }
        Err(u) => u,
    }
}

#[inline(always)]
fn unwind_at(lookup: usize, pc: usize, sp: usize, fp: usize) -> Unwind {
    match word_at(lookup, pc) {
        Ok(w) => decode(w, sp, fp),
        Err(u) => u,
    }
}

/// The packed rule for the frame at `pc`, looked up at `lookup`; `Err` when there is no
/// word to step by.
#[inline(always)]
fn word_at(lookup: usize, pc: usize) -> Result<u64, Unwind> {
    if let Some(w) = cache::get(lookup) {
        return Ok(w);
    }
    let r = match cfi::rule_for(lookup, pc, &mut false) {
        Ok(r) => r,
        // As the walker: no object or no CFI is a stable "stop".
        Err(Miss::NotFound) => Rule::Stop,
        Err(Miss::Transient) => return Err(Unwind::Stop),
        Err(Miss::LowStack) => return Err(Unwind::Refused),
    };
    cache::insert(lookup, r);
    // A huge frame: whatever the walker does with it (today: stop), it decides.
    r.pack().ok_or(Unwind::Other)
}

/// The step a packed rule gives from `(sp, fp)`.
#[inline(always)]
fn decode(word: u64, sp: usize, fp: usize) -> Unwind {
    // The common case first, on the packed word (as in the walker).
    if word == walk::FP_RECORD_WORD {
        return Unwind::Record;
    }
    match Rule::unpack(word) {
        Some(Rule::Frame { cfa_fp, cfa_off, ra_off, fp_off }) => {
            let cfa = if cfa_fp { fp } else { sp }.wrapping_add(cfa_off as isize as usize);
            Unwind::Cfa {
                cfa,
                slot: cfa.wrapping_add(ra_off as isize as usize),
                fp_slot: fp_off.map(|o| cfa.wrapping_add(o as isize as usize)),
            }
        }
        Some(Rule::Signal) => Unwind::Other,
        Some(Rule::Stop) | None => Unwind::Stop,
    }
}

/// The DWARF walk from `regs` (a return address as pc, on the current thread's stack) into
/// `buf`, `buf[0] = regs.pc`; returns how many, and whether a rule lookup was refused for
/// lack of stack (the walk then ends early). Never refreshes the module snapshot.
pub(crate) fn walk_from(regs: &Regs, buf: &mut [usize]) -> (usize, bool) {
    let Some(b) = crate::bounds::current(regs.sp) else { return (0, false) };
    let mut stack = LiveStacks(LiveStack(b));
    let mut rules = LiveRules::new(false);
    let n = walk::walk(&mut stack, &mut rules, regs, buf);
    (n, rules.refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn here() -> usize {
        crate::arch::caller_regs!().pc
    }

    #[test]
    fn rust_call_sites_keep_frame_records_and_page_zero_has_no_cfi() {
        // This crate is built with frame pointers: the return address into this test
        // function is a call site inside an rbp frame.
        assert_eq!(unwind(here(), 0, 0), Unwind::Record);
        assert_eq!(unwind(4096, 0, 0), Unwind::Stop);
        assert_eq!(unwind(0, 0, 0), Unwind::Stop);
    }
}
