//! x86-64 CET shadow stack reader (Linux >= 6.6, glibc with `glibc.cpu.x86_shstk`).
//!
//! `rdsspq` reads the shadow-stack pointer (SSP): the address of the newest entry. It is a NOP
//! when shadow stacks are off (or on CPUs without CET), so the register is zeroed first and 0
//! means [`Unsupported::NotEnabled`]. The stack grows down; its base is the end of the mapping
//! that contains the SSP (cached per thread). Between the SSP and the base lie return
//! addresses and two kinds of tokens, which are dropped:
//! - signal tokens: the kernel pushes `ssp | 1 << 63` when it delivers a signal (followed, newer,
//!   by the return address into the signal restorer, which is kept like any return address);
//! - restore tokens (`rstorssp`/`saveprevssp`, shadow-stack switches): values that point into the
//!   shadow stack itself (with the mode bit 0 set).
//!
//! A zero word ends the walk (no call pushes 0).
//!
//! # Signal safety
//! [`capture_from`] and [`walk`] are async-signal-safe. From a signal handler the interrupted
//! PC has no entry: start from the `ucontext` with another backend.

use core::cell::Cell;

use super::{emit, Memory, Region};
use crate::{Regs, Unsupported};

/// Bit 63 marks a signal token.
pub const SIGNAL_TOKEN: usize = 1 << 63;

/// The decoded entries of a CET shadow stack, newest first: see [`entries`].
#[derive(Debug)]
pub struct Entries<'m, M> {
    mem: &'m M,
    slot: usize,
    region: Region,
}

/// The return addresses on the CET shadow stack from `ssp` (newest) up to `region.hi`,
/// tokens dropped, stopping at a zero or unreadable word.
pub fn entries<M: Memory>(mem: &M, ssp: usize, region: Region) -> Entries<'_, M> {
    Entries { mem, slot: ssp, region }
}

impl<M: Memory> Iterator for Entries<'_, M> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        while self.region.contains(self.slot) {
            let Some(v) = self.mem.read(self.slot) else {
                break;
            };
            self.slot += 8;
            if v == 0 {
                break;
            }
            // A restore token may point just past the top, at `hi`.
            let restore = (self.region.lo..=self.region.hi).contains(&(v & !7));
            if v & SIGNAL_TOKEN != 0 || restore {
                continue;
            }
            return Some(v);
        }
        self.slot = self.region.hi;
        None
    }
}

/// Walks a CET shadow stack: drops entries up to `caller_pc` (see [`super::emit`]), then
/// copies return addresses into `buf`. Returns the number written.
pub fn walk<M: Memory>(
    mem: &M,
    ssp: usize,
    region: Region,
    caller_pc: usize,
    buf: &mut [usize],
) -> Result<usize, Unsupported> {
    emit(entries(mem, ssp, region), caller_pc, buf)
}

// The mapping holding this thread's shadow stack (all zero: none cached; a `!Sync` cell).
crate::static_tls!(fn region_cache() -> &'static Cell<(usize, usize)> = "__ukasan_cet_region_tls");

/// Captures from the live CET shadow stack; `regs.pc` must be the return address into the
/// caller of the capture entry point (an exact signal PC answers [`Unsupported::NoFrames`]).
///
/// Answers [`Unsupported::NotCompiled`] off x86-64 Linux and [`Unsupported::NotEnabled`] when
/// shadow stacks are off for this thread. Async-signal-safe.
pub fn capture_from(regs: &Regs, buf: &mut [usize]) -> Result<usize, Unsupported> {
    if cfg!(not(all(target_arch = "x86_64", target_os = "linux"))) {
        return Err(Unsupported::NotCompiled);
    }
    let ssp = crate::arch::read_cet_ssp();
    if ssp == 0 {
        return Err(Unsupported::NotEnabled);
    }
    if regs.pc_is_exact {
        return Err(Unsupported::NoFrames);
    }
    let region = super::cached_region(region_cache(), ssp, false).ok_or(Unsupported::NotEnabled)?;
    // SAFETY: `region` is the mapping that holds this thread's live SSP, i.e. its shadow
    // stack, which the kernel keeps mapped (and readable by plain loads) while shadow stacks
    // are on; they are on, as `rdsspq` answered.
    let mem = unsafe { super::LiveRegion::new(region) };
    walk(&mem, ssp, region, regs.pc, buf)
}

#[cfg(test)]
mod tests {
    use super::super::tests::Image;
    use super::*;

    const OWN: [usize; 2] = [0x40_1100, 0x40_1200];
    const CALLER: usize = 0x40_2000;

    /// A shadow stack at 0x7f00_0000 of `words` (newest first) topped by `spare` free words
    /// below the SSP: the SSP is the address of `words[0]`.
    fn image(words: &[usize], spare: usize) -> (Image, usize) {
        let mut all = vec![0xdead; spare];
        all.extend_from_slice(words);
        let img = Image { base: 0x7f00_0000, words: all };
        let ssp = img.at(spare);
        (img, ssp)
    }

    #[test]
    fn skips_own_frames_and_copies_to_the_base() {
        let (img, ssp) = image(&[OWN[0], OWN[1], CALLER, 0x40_3000, 0x40_4000], 3);
        let mut buf = [0; 16];
        let n = walk(&img, ssp, img.region(), CALLER, &mut buf).unwrap();
        assert_eq!(&buf[..n], &[CALLER, 0x40_3000, 0x40_4000]);
    }

    #[test]
    fn drops_signal_and_restore_tokens() {
        let base = 0x7f00_0000usize;
        let words = [
            OWN[0],
            CALLER,
            0x7fff_f7e0_0000,             // return into the signal restorer: kept
            SIGNAL_TOKEN | (base + 0x40), // signal token
            0x40_3000,
            (base + 0x38) | 1, // restore token (64-bit mode bit)
            base + 0x40,       // restore token pointing at the top
            0x40_4000,
        ];
        let (img, ssp) = image(&words, 0);
        assert_eq!(img.region().hi, base + 0x40);
        let mut buf = [0; 16];
        let n = walk(&img, ssp, img.region(), CALLER, &mut buf).unwrap();
        assert_eq!(&buf[..n], &[CALLER, 0x7fff_f7e0_0000, 0x40_3000, 0x40_4000]);
    }

    #[test]
    fn zero_or_unreadable_ends_the_walk() {
        let (img, ssp) = image(&[CALLER, 0x40_3000, 0, 0x40_4000], 0);
        let mut buf = [0; 16];
        assert_eq!(walk(&img, ssp, img.region(), CALLER, &mut buf), Ok(2));
        // The region claims more than the image holds: the reader's refusal ends the walk.
        let (img, ssp) = image(&[CALLER, 0x40_3000], 0);
        let big = Region { lo: img.base, hi: img.base + 0x1000 };
        assert_eq!(walk(&img, ssp, big, CALLER, &mut buf), Ok(2));
    }

    #[test]
    fn full_buffer_and_empty_buffer() {
        let words: Vec<usize> = (0..40).map(|i| 0x40_0000 + 0x10 * i).collect();
        let (img, ssp) = image(&words, 0);
        let mut buf = [0; 5];
        assert_eq!(walk(&img, ssp, img.region(), words[1], &mut buf), Ok(5));
        assert_eq!(buf, [words[1], words[2], words[3], words[4], words[5]]);
        assert_eq!(walk(&img, ssp, img.region(), words[1], &mut []), Ok(0));
    }

    #[test]
    fn empty_stack_and_missing_caller_have_no_frames() {
        let (img, _) = image(&[CALLER], 2);
        let mut buf = [0; 4];
        let top = img.region().hi;
        assert_eq!(walk(&img, top, img.region(), CALLER, &mut buf), Err(Unsupported::NoFrames));
        let (img, ssp) = image(&[OWN[0], OWN[1], 0x40_3000], 0);
        assert_eq!(walk(&img, ssp, img.region(), CALLER, &mut buf), Err(Unsupported::NoFrames));
    }
}
