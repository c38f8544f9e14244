//! The walker proper, generic over the stack memory and the rule source so that it is
//! unit-tested on synthetic stacks; and the live instances used by the capture functions.
//!
//! # Signal safety
//! [`walk`] and [`capture_from`] are async-signal-safe under the conditions of the module
//! docs of `dwarf`.

use super::arch;
use super::cache::{self, Rule};
use super::cfi;
use super::module::Miss;
use crate::fp::LiveStack;
use crate::frame::Memory;
use crate::{bounds, Regs, Unsupported};

/// `CFA = fp + 16`, return address at CFA - 8, caller's fp at CFA - 16: a frame record
/// (x86-64 `push rbp; mov rbp, rsp`, aarch64 `stp x29, x30, [sp, #-16]!; mov x29, sp`).
#[cfg(test)]
const FP_RECORD: Rule = Rule::Frame { cfa_fp: true, cfa_off: 16, ra_off: -8, fp_off: Some(-16) };
/// [`FP_RECORD`] packed (checked by a unit test).
pub(super) const FP_RECORD_WORD: u64 =
    1 | 1 << 2 | 1 << 3 | 16 << 8 | (-8i16 as u16 as u64) << 32 | (-16i16 as u16 as u64) << 48;

/// Lowest address a program counter may have: nothing executable lives in page zero.
const MIN_PC: usize = 4096;

/// The stacks a walk reads ([`Memory::read`]: the word at `addr`, if aligned and on the
/// current stack).
pub(crate) trait Stack: Memory {
    /// Whether `sp` is on the current stack.
    fn holds(&self, sp: usize) -> bool;
    /// Moves to the stack that holds `sp` (the interrupted context of a signal frame may be
    /// on another stack than the handler); `false` if there is none we trust.
    fn switch_to(&mut self, sp: usize) -> bool;
}

/// Where rules come from.
pub(crate) trait Rules {
    /// The rule (packed, see [`Rule::pack`]) for the frame whose pc is `pc`, looked up at
    /// `lookup`; `None` stops the walk.
    fn rule(&mut self, lookup: usize, pc: usize) -> Option<u64>;
}

/// Walks from `regs`, writing program counters newest first; returns how many.
pub(crate) fn walk<S: Stack, R: Rules>(
    stack: &mut S,
    rules: &mut R,
    regs: &Regs,
    buf: &mut [usize],
) -> usize {
    let (mut pc, mut sp, mut fp, mut exact) = (regs.pc, regs.sp, regs.fp, regs.pc_is_exact);
    let mut n = 0;
    while n < buf.len() && pc >= MIN_PC {
        buf[n] = pc;
        n += 1;
        if n == buf.len() {
            break;
        }
        let lookup = if exact { pc } else { pc - 1 };
        let Some(word) = rules.rule(lookup, pc) else {
            break;
        };
        // The frame-record layout of code built with frame pointers, by far the most common
        // rule: a (predicted) branch on it instead of a data dependency on the rule's offsets
        // lets the CPU run ahead along the fp chain.
        if word == FP_RECORD_WORD {
            let cfa = fp.wrapping_add(16);
            if cfa <= sp {
                break;
            }
            let (Some(ra), Some(new_fp)) = (stack.read(fp.wrapping_add(8)), stack.read(fp)) else {
                break;
            };
            // A slot patched by the software shadow stack holds the trampoline.
            let ra = crate::softshadow::real_return_address(fp.wrapping_add(8), strip(ra));
            (pc, sp, fp, exact) = (ra, cfa, new_fp, false);
            continue;
        }
        match Rule::unpack(word) {
            None | Some(Rule::Stop) => break,
            Some(Rule::Frame { cfa_fp, cfa_off, ra_off, fp_off }) => {
                let cfa = if cfa_fp { fp } else { sp }.wrapping_add(cfa_off as isize as usize);
                // The CFA (the caller's sp) must grow: no loops, no garbage frame pointers.
                if cfa <= sp {
                    break;
                }
                let slot = cfa.wrapping_add(ra_off as isize as usize);
                let Some(ra) = stack.read(slot) else {
                    break;
                };
                let ra = crate::softshadow::real_return_address(slot, strip(ra));
                let new_fp = match fp_off {
                    None => fp,
                    Some(off) => match stack.read(cfa.wrapping_add(off as isize as usize)) {
                        Some(v) => v,
                        None => break,
                    },
                };
                (pc, sp, fp, exact) = (ra, cfa, new_fp, false);
            }
            Some(Rule::Signal) => {
                let uc = sp.wrapping_add(arch::UCONTEXT_AT_SP);
                let (Some(new_pc), Some(new_sp), Some(new_fp)) = (
                    stack.read(uc.wrapping_add(arch::UC_PC)),
                    stack.read(uc.wrapping_add(arch::UC_SP)),
                    stack.read(uc.wrapping_add(arch::UC_FP)),
                ) else {
                    break;
                };
                // Same stack: the interrupted frame lies above the signal frame. Otherwise
                // the handler ran on an alternate stack (or interrupted one): follow it.
                let ok = if stack.holds(new_sp) { new_sp > sp } else { stack.switch_to(new_sp) };
                if !ok {
                    break;
                }
                (pc, sp, fp, exact) = (strip(new_pc), new_sp, new_fp, true);
            }
        }
    }
    n
}

#[inline(always)]
fn strip(pc: usize) -> usize {
    if cfg!(target_arch = "aarch64") {
        crate::strip_pac(pc)
    } else {
        pc
    }
}

/// The current thread's stacks, bounds looked up again on a stack switch.
pub(super) struct LiveStacks(pub(super) LiveStack);

impl Memory for LiveStacks {
    #[inline(always)]
    fn read(&self, addr: usize) -> Option<usize> {
        self.0.read(addr)
    }

    #[inline(always)]
    fn read_pair(&self, addr: usize) -> Option<(usize, usize)> {
        self.0.read_pair(addr)
    }
}

impl Stack for LiveStacks {
    #[inline(always)]
    fn holds(&self, sp: usize) -> bool {
        self.0 .0.contains(sp, 8)
    }

    #[cold]
    fn switch_to(&mut self, sp: usize) -> bool {
        match bounds::current(sp) {
            Some(b) => {
                self.0 = LiveStack(b);
                true
            }
            None => false,
        }
    }
}

/// The rule cache in front of the CFI parser.
pub(super) struct LiveRules {
    /// The module snapshot (glibc < 2.35 only) may be refreshed: once per capture, never in
    /// signal context.
    may_refresh: bool,
    /// A miss was refused: too little stack left to parse CFI (the walk stopped there).
    pub(super) refused: bool,
}

impl LiveRules {
    pub(super) fn new(may_refresh: bool) -> LiveRules {
        LiveRules { may_refresh, refused: false }
    }
}

impl Rules for LiveRules {
    #[inline(always)]
    fn rule(&mut self, lookup: usize, pc: usize) -> Option<u64> {
        if let Some(w) = cache::get(lookup) {
            return Some(w);
        }
        let r = match cfi::rule_for(lookup, pc, &mut self.may_refresh) {
            Ok(r) => r,
            // No object or no CFI here: a stable answer, remembered as "stop".
            Err(Miss::NotFound) => Rule::Stop,
            Err(Miss::Transient) => return None,
            Err(Miss::LowStack) => {
                self.refused = true;
                return None;
            }
        };
        cache::insert(lookup, r);
        // A rule that does not pack (huge frame) is used once, uncached.
        r.pack()
    }
}

/// See [`super::capture_from`].
pub(crate) fn capture_from(regs: &Regs, buf: &mut [usize]) -> Result<usize, Unsupported> {
    if buf.is_empty() {
        return Ok(0);
    }
    let b = bounds::current(regs.sp).ok_or(Unsupported::NoStackBounds)?;
    let mut stack = LiveStacks(LiveStack(b));
    let mut rules = LiveRules::new(!regs.pc_is_exact);
    match walk(&mut stack, &mut rules, regs, buf) {
        _ if rules.refused => Err(Unsupported::StackTooSmall),
        0 => Err(Unsupported::NoFrames),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Synthetic stacks: word maps per stack, the current one chosen by address range.
    struct Image {
        stacks: Vec<(usize, usize)>,
        cur: usize,
        words: HashMap<usize, usize>,
    }

    impl Memory for Image {
        fn read(&self, addr: usize) -> Option<usize> {
            let (lo, hi) = self.stacks[self.cur];
            (addr & 7 == 0 && lo <= addr && addr + 8 <= hi)
                .then(|| self.words.get(&addr).copied())?
        }
    }

    impl Stack for Image {
        fn holds(&self, sp: usize) -> bool {
            let (lo, hi) = self.stacks[self.cur];
            lo <= sp && sp + 8 <= hi
        }
        fn switch_to(&mut self, sp: usize) -> bool {
            match self.stacks.iter().position(|&(lo, hi)| lo <= sp && sp < hi) {
                Some(i) => {
                    self.cur = i;
                    true
                }
                None => false,
            }
        }
    }

    /// Rules by exact lookup address; records the lookups.
    #[derive(Default)]
    struct Table {
        rules: HashMap<usize, Rule>,
        lookups: Vec<usize>,
    }

    impl Rules for Table {
        fn rule(&mut self, lookup: usize, _pc: usize) -> Option<u64> {
            self.lookups.push(lookup);
            self.rules.get(&lookup).and_then(|r| r.pack())
        }
    }

    #[test]
    fn the_fast_path_word_is_the_frame_record_rule() {
        assert_eq!(FP_RECORD.pack(), Some(FP_RECORD_WORD));
        assert_eq!(Rule::unpack(FP_RECORD_WORD), Some(FP_RECORD));
    }

    const SP_FRAME: Rule = Rule::Frame { cfa_fp: false, cfa_off: 32, ra_off: -8, fp_off: None };
    const FP_FRAME: Rule = FP_RECORD;

    /// A stack at 0x10000 with frames: pc 0x5000 (sp-based, 32 bytes), 0x6000 (fp-based),
    /// 0x7000 (outermost).
    fn three_frames() -> (Image, Table, Regs) {
        let mut words = HashMap::new();
        let sp0 = 0x10000;
        // Frame 0: sp-based, CFA = sp0 + 32, ra at CFA - 8.
        words.insert(sp0 + 24, 0x6001);
        // Frame 1: fp-based, its fp = 0x10040: {saved fp, ra}; CFA = 0x10050.
        words.insert(0x10040, 0x10100);
        words.insert(0x10048, 0x7001);
        let mut t = Table::default();
        t.rules.insert(0x5000, SP_FRAME);
        t.rules.insert(0x6000, FP_FRAME);
        t.rules.insert(0x7000, Rule::Stop);
        let img = Image { stacks: vec![(0x10000, 0x20000)], cur: 0, words };
        (img, t, Regs { pc: 0x5001, sp: sp0, fp: 0x10040, pc_is_exact: false })
    }

    #[test]
    fn mixed_sp_and_fp_frames_to_the_outermost() {
        let (mut img, mut t, regs) = three_frames();
        let mut buf = [0; 8];
        let n = walk(&mut img, &mut t, &regs, &mut buf);
        assert_eq!(&buf[..n], &[0x5001, 0x6001, 0x7001]);
        assert_eq!(t.lookups, [0x5000, 0x6000, 0x7000], "return addresses are looked up at pc - 1");
    }

    #[test]
    fn exact_pc_is_looked_up_as_is_and_buffer_caps() {
        let (mut img, mut t, mut regs) = three_frames();
        regs.pc = 0x5000;
        regs.pc_is_exact = true;
        let mut buf = [0; 2];
        assert_eq!(walk(&mut img, &mut t, &regs, &mut buf), 2);
        assert_eq!(buf, [0x5000, 0x6001]);
        assert_eq!(t.lookups, [0x5000], "no lookup for a frame that does not fit");
        assert_eq!(walk(&mut img, &mut t, &regs, &mut []), 0);
    }

    #[test]
    fn stops_on_unknown_code_bad_reads_and_non_growing_cfa() {
        let (mut img, mut t, regs) = three_frames();
        t.rules.remove(&0x6000);
        let mut buf = [0; 8];
        assert_eq!(walk(&mut img, &mut t, &regs, &mut buf), 2);

        let (mut img, mut t, regs) = three_frames();
        img.words.remove(&0x10048);
        // The read itself succeeds only for words present; a missing one reads as None.
        assert_eq!(walk(&mut img, &mut t, &regs, &mut buf), 2);

        let (mut img, mut t, regs) = three_frames();
        t.rules.insert(0x5000, Rule::Frame { cfa_fp: false, cfa_off: 0, ra_off: -8, fp_off: None });
        assert_eq!(walk(&mut img, &mut t, &regs, &mut buf), 1);

        let (mut img, mut t, regs) = three_frames();
        img.stacks[0].1 = 0x10020; // the return-address slot at 0x10018 fits; frame 1's fp does not
        assert_eq!(walk(&mut img, &mut t, &regs, &mut buf), 2);
    }

    #[test]
    fn signal_frame_continues_exactly_on_another_stack() {
        // The handler runs on an "alternate stack" at 0x90000; its caller is the trampoline
        // at 0x8000, whose ucontext (at sp) says: pc 0x5000 exactly, sp 0x10000 (main stack).
        let (mut img, mut t, _) = three_frames();
        img.stacks.push((0x90000, 0x98000));
        img.cur = 1;
        let hsp = 0x90000;
        img.words.insert(hsp + 8, 0x8000); // handler frame: CFA = hsp + 16, ra at CFA - 8
        let uc = hsp + 16 + arch::UCONTEXT_AT_SP;
        img.words.insert(uc + arch::UC_PC, 0x5000);
        img.words.insert(uc + arch::UC_SP, 0x10000);
        img.words.insert(uc + arch::UC_FP, 0x10040);
        t.rules
            .insert(0x4000, Rule::Frame { cfa_fp: false, cfa_off: 16, ra_off: -8, fp_off: None });
        t.rules.insert(0x7fff, Rule::Signal);
        let regs = Regs { pc: 0x4000, sp: hsp, fp: 0, pc_is_exact: true };
        let mut buf = [0; 8];
        let n = walk(&mut img, &mut t, &regs, &mut buf);
        assert_eq!(&buf[..n], &[0x4000, 0x8000, 0x5000, 0x6001, 0x7001]);
        assert_eq!(t.lookups, [0x4000, 0x7fff, 0x5000, 0x6000, 0x7000]);

        // A signal frame pointing below itself on the same stack is refused.
        let (mut img, mut t, _) = three_frames();
        let uc = 0x10100 + arch::UCONTEXT_AT_SP;
        img.words.insert(uc + arch::UC_PC, 0x5000);
        img.words.insert(uc + arch::UC_SP, 0x10008);
        img.words.insert(uc + arch::UC_FP, 0);
        t.rules.insert(0x8fff, Rule::Signal);
        let regs = Regs { pc: 0x9000, sp: 0x10100, fp: 0, pc_is_exact: false };
        assert_eq!(walk(&mut img, &mut t, &regs, &mut buf), 1);
    }
}
