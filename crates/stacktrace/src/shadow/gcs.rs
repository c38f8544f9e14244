//! arm64 Guarded Control Stack reader (FEAT_GCS, Linux >= 6.13).
//!
//! Detection: the `HWCAP_GCS` bit (bit 32 of `AT_HWCAP`; not `AT_HWCAP2`, whatever older
//! notes say) must be set before `GCSPR_EL0` may be read at all (an undefined instruction
//! otherwise), and GCS must be on for the thread (`prctl(PR_GET_SHADOW_STACK_STATUS)` has
//! `PR_SHADOW_STACK_ENABLE`); both answers are cached. `GCSPR_EL0` is the address of the newest
//! entry; the stack grows down. Walking up, the entries are:
//! - return addresses, pushed unsigned by `bl`/`blr` (no PAC bits to strip);
//! - a 0 that the kernel leaves at the top of a thread's GCS: the end;
//! - a cap token (`map_shadow_stack` with a token, `gcsss1`/`gcsss2` switches): the slot's own
//!   page address with type bits (11:0) set, i.e. `(v ^ slot) < 4096 && v & 0xfff != 0`: the end;
//! - signal cap tokens (the page address of their own slot, type bits 0) and any other value
//!   that points into the GCS itself: dropped.
//!
//! Known limit: the per-thread state is asked once (a syscall per capture would cost more than
//! the copy), so a thread that turns GCS on or off after its first capture is not noticed (off
//! after on, with the GCS unmapped, is unsafe: the next capture may read the stale mapping).
//! glibc decides GCS at start-up, before `main`, and new threads inherit it.
//!
//! # Signal safety
//! [`capture_from`] and [`walk`] are async-signal-safe (`getauxval` and `prctl` on the first
//! call of a thread).

use super::{emit, Memory, Region};
use crate::{Regs, Unsupported};

/// Type bits of a GCS token.
pub const TOKEN_TYPE_MASK: usize = 0xfff;

/// Whether `v`, read from `slot`, is a cap token (ends the walk).
#[inline]
pub const fn is_cap_token(v: usize, slot: usize) -> bool {
    v & TOKEN_TYPE_MASK != 0 && (v ^ slot) & !TOKEN_TYPE_MASK == 0
}

/// The decoded entries of a GCS, newest first: see [`entries`].
#[derive(Debug)]
pub struct Entries<'m, M> {
    mem: &'m M,
    slot: usize,
    region: Region,
}

/// The return addresses on the GCS from `gcspr` (newest) up to the 0 terminator, a cap
/// token, an unreadable word or `region.hi`, signal cap tokens dropped.
pub fn entries<M: Memory>(mem: &M, gcspr: usize, region: Region) -> Entries<'_, M> {
    Entries { mem, slot: gcspr, region }
}

impl<M: Memory> Iterator for Entries<'_, M> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        while self.region.contains(self.slot) {
            let slot = self.slot;
            let Some(v) = self.mem.read(slot) else { break };
            self.slot += 8;
            if v == 0 || is_cap_token(v, slot) {
                break;
            }
            if self.region.contains(v & !TOKEN_TYPE_MASK) {
                continue;
            }
            return Some(v);
        }
        self.slot = self.region.hi;
        None
    }
}

/// Walks a GCS: drops entries up to `caller_pc` (see [`super::emit`]), then copies return
/// addresses into `buf`. Returns the number written.
pub fn walk<M: Memory>(
    mem: &M,
    gcspr: usize,
    region: Region,
    caller_pc: usize,
    buf: &mut [usize],
) -> Result<usize, Unsupported> {
    emit(entries(mem, gcspr, region), caller_pc, buf)
}

#[cfg(all(target_arch = "aarch64", target_os = "linux"))]
mod live {
    use core::cell::Cell;
    use core::sync::atomic::{AtomicU8, Ordering};

    const HWCAP_GCS: libc::c_ulong = 1 << 32;
    const PR_GET_SHADOW_STACK_STATUS: libc::c_int = 74;
    const PR_SHADOW_STACK_ENABLE: libc::c_ulong = 1;

    /// 0 = not yet asked, 1 = no FEAT_GCS, 2 = FEAT_GCS.
    static HWCAP: AtomicU8 = AtomicU8::new(0);

    /// This thread's GCS as known (all zero: not yet asked).
    pub(super) struct Known {
        /// GCS on this thread: 0 = not yet asked, 1 = off, 2 = on (see the module docs).
        on: Cell<u8>,
        /// The mapping holding this thread's GCS.
        pub(super) region: Cell<(usize, usize)>,
    }

    // All-zero bytes are valid; `Known` is `!Sync`: the reference stays on its thread.
    crate::static_tls!(pub(super) fn known() -> &'static Known = "__ukasan_gcs_tls");

    /// Whether `GCSPR_EL0` may be read and describes this thread's GCS.
    pub(super) fn enabled() -> bool {
        // Relaxed: the value is a pure function of the process's auxv; racing threads store
        // the same answer, and no other memory is published through it.
        let hw = match HWCAP.load(Ordering::Relaxed) {
            0 => {
                // SAFETY: getauxval has no preconditions.
                let caps = unsafe { libc::getauxval(libc::AT_HWCAP) };
                let v = if caps & HWCAP_GCS != 0 { 2 } else { 1 };
                // Relaxed: see the load above.
                HWCAP.store(v, Ordering::Relaxed);
                v
            }
            v => v,
        };
        if hw != 2 {
            return false;
        }
        match known().on.get() {
            1 => return false,
            2 => return true,
            _ => {}
        }
        let mut status: libc::c_ulong = 0;
        // SAFETY: PR_GET_SHADOW_STACK_STATUS writes one unsigned long to the pointer, which
        // points at a local; the unused arguments are zero as the kernel requires.
        let r = unsafe {
            libc::prctl(PR_GET_SHADOW_STACK_STATUS, &mut status as *mut libc::c_ulong, 0, 0, 0)
        };
        let on = r == 0 && status & PR_SHADOW_STACK_ENABLE != 0;
        known().on.set(if on { 2 } else { 1 });
        on
    }
}

/// Captures from the live GCS; `regs.pc` must be the return address into the caller of the
/// capture entry point (an exact signal PC answers [`Unsupported::NoFrames`]).
///
/// Answers [`Unsupported::NotCompiled`] off aarch64 Linux and [`Unsupported::NotEnabled`]
/// without FEAT_GCS or with GCS off for this thread. Async-signal-safe.
pub fn capture_from(regs: &Regs, buf: &mut [usize]) -> Result<usize, Unsupported> {
    #[cfg(all(target_arch = "aarch64", target_os = "linux"))]
    {
        if !live::enabled() {
            return Err(Unsupported::NotEnabled);
        }
        // SAFETY: FEAT_GCS is implemented (HWCAP_GCS was checked just above).
        let gcspr = unsafe { crate::arch::read_gcspr() };
        if gcspr == 0 {
            return Err(Unsupported::NotEnabled);
        }
        if regs.pc_is_exact {
            return Err(Unsupported::NoFrames);
        }
        let region = super::cached_region(&live::known().region, gcspr, false)
            .ok_or(Unsupported::NotEnabled)?;
        // SAFETY: `region` is the mapping holding this thread's live GCSPR, i.e. its GCS,
        // which the kernel keeps mapped and readable by plain loads while GCS is on.
        let mem = unsafe { super::LiveRegion::new(region) };
        walk(&mem, gcspr, region, regs.pc, buf)
    }
    #[cfg(not(all(target_arch = "aarch64", target_os = "linux")))]
    {
        let _ = (regs, buf);
        Err(Unsupported::NotCompiled)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Image;
    use super::*;

    const BASE: usize = 0xffff_8000_0000; // page aligned
    const CALLER: usize = 0x40_2000;

    /// A GCS of `words` whose newest entry is `words[first]`.
    fn image(words: &[usize]) -> Image {
        Image { base: BASE, words: words.to_vec() }
    }

    #[test]
    fn walks_to_the_zero_terminator() {
        let img = image(&[0xaaaa, 0x40_1000, CALLER, 0x40_3000, 0x40_4000, 0, 0x40_5000]);
        let mut buf = [0; 16];
        let n = walk(&img, img.at(1), img.region(), CALLER, &mut buf).unwrap();
        assert_eq!(&buf[..n], &[CALLER, 0x40_3000, 0x40_4000]);
    }

    #[test]
    fn stops_at_a_cap_token_and_drops_signal_caps() {
        let mut words = vec![CALLER, 0x40_3000, 0, 0x40_4000, 0, 0x40_5000];
        words[2] = (BASE + 16) & !TOKEN_TYPE_MASK; // signal cap token: dropped
        words[4] = (BASE + 32) & !TOKEN_TYPE_MASK | 1; // cap token of its own slot: the end
        let img = image(&words);
        assert!(is_cap_token(words[4], img.at(4)));
        assert!(!is_cap_token(words[4], img.at(4) + 4096));
        assert!(!is_cap_token(CALLER, img.at(0)));
        let mut buf = [0; 16];
        let n = walk(&img, img.at(0), img.region(), CALLER, &mut buf).unwrap();
        assert_eq!(&buf[..n], &[CALLER, 0x40_3000, 0x40_4000]);
    }

    #[test]
    fn cap_token_of_another_page_is_a_pointer_into_the_gcs() {
        // A valid-looking token for a slot one page up: points into the GCS, dropped.
        let mut words = vec![0x40_9000; 600];
        words[0] = CALLER;
        words[1] = (BASE + 4096) | 1;
        words[2] = 0x40_3000;
        words[3] = 0;
        let img = image(&words);
        let mut buf = [0; 16];
        assert_eq!(walk(&img, img.at(0), img.region(), CALLER, &mut buf), Ok(2));
        assert_eq!(&buf[..2], &[CALLER, 0x40_3000]);
    }

    #[test]
    fn full_buffer_and_skip_limit() {
        let mut words: Vec<usize> = (0..64).map(|i| 0x40_0000 + 4 * i).collect();
        words.push(0);
        let img = image(&words);
        let mut buf = [0; 4];
        assert_eq!(walk(&img, img.at(0), img.region(), words[3], &mut buf), Ok(4));
        assert_eq!(buf, [words[3], words[4], words[5], words[6]]);
        assert_eq!(
            walk(&img, img.at(0), img.region(), words[20], &mut buf),
            Err(Unsupported::NoFrames)
        );
    }

    #[test]
    fn empty_gcs_has_no_frames() {
        let img = image(&[0x40_1000, 0]);
        let mut buf = [0; 4];
        assert_eq!(
            walk(&img, img.at(1), img.region(), CALLER, &mut buf),
            Err(Unsupported::NoFrames)
        );
        assert_eq!(walk(&img, img.at(1), img.region(), CALLER, &mut []), Ok(0));
    }
}
