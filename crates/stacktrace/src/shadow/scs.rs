//! aarch64 compiler Shadow Call Stack reader (x18).
//!
//! Code built with `-Zsanitizer=shadow-call-stack -Zfixed-x18` pushes the link register to
//! `[x18], #8` in every non-leaf prologue and pops it in the epilogue: x18 is one past the
//! newest entry and the stack grows *up*. Someone must map the stack and set x18 per thread
//! (Android and Fuchsia do; on glibc a small runtime, see DESIGN.md section 7). The walk goes
//! from `x18 - 8` down to the base, which is either
//! - registered for the thread with [`register_scs_base`] (the value x18 had before the first
//!   push), or
//! - marked: the slot just below the oldest entry holds its own address (a return address can
//!   never equal the address of the non-executable slot that holds it).
//!
//! Entries may carry pointer-authentication bits (`-Zbranch-protection=pac-ret` signs the LR
//! before the push): they are stripped with [`crate::strip_pac`].
//!
//! # When x18 can be trusted
//! Without `-Zfixed-x18`, x18 is an ordinary temporary that may hold anything, including a
//! pointer into some writable mapping, and a walk from it would return garbage that looks
//! plausible. So trust is decided at compile time: the build script sets `cfg(ukasan_scs)` when
//! this crate is built for aarch64 with `-Zsanitizer=shadow-call-stack` (rustc requires
//! `-Zfixed-x18` with it on Linux, and cargo passes the same flags to every crate of the
//! build, std included with `-Zbuild-std`); [`COMPILED`] tells the result. Otherwise the
//! backend answers [`Unsupported::NotCompiled`]. A runtime "enable" call was rejected: it
//! would vouch for the caller's x18 discipline but not for the code this crate was compiled
//! to. At run time x18 must still point into a readable and writable mapping
//! ([`Unsupported::NotEnabled`] otherwise), and a walk that reaches the start of that mapping
//! without meeting the registered base or a base marker answers [`Unsupported::NotEnabled`]
//! (the mapping may be merged with a neighbour in `/proc/self/maps`).
//!
//! What it misses: frames of code built without SCS (libc, C libraries, leaf functions).
//!
//! # Signal safety
//! [`capture_from`], [`walk`] and [`register_scs_base`] are async-signal-safe.

use core::cell::Cell;

use super::{emit, Memory, Region};
use crate::{strip_pac, Regs, Unsupported};

/// Whether this build may read x18 as a shadow call stack (aarch64 built with
/// `-Zsanitizer=shadow-call-stack`, detected by the build script).
pub const COMPILED: bool = cfg!(all(target_arch = "aarch64", ukasan_scs));

/// This thread's SCS as known (all zero: nothing registered or cached).
struct Known {
    /// Registered base of this thread's SCS (0 = none).
    base: Cell<usize>,
    /// The mapping holding this thread's SCS.
    region: Cell<(usize, usize)>,
}

// All-zero bytes are valid; `Known` is `!Sync`: the reference stays on its thread.
crate::static_tls!(fn known() -> &'static Known = "__ukasan_scs_tls");

/// Registers the base of the current thread's shadow call stack: the address of its oldest
/// entry slot, i.e. the value x18 had before the first push. 0 unregisters (the walk then
/// relies on a base marker). Async-signal-safe.
pub fn register_scs_base(base: usize) {
    known().base.set(base);
}

/// Registers the current thread's whole shadow call stack: the mapping `[lo, hi)` that holds
/// it (its guard page excluded) and its `base` (as for [`register_scs_base`]). A runtime that
/// maps the stack itself calls this as the thread starts, so that no capture ever reads
/// `/proc/self/maps` to find the mapping (which qemu-user can misreport while other threads
/// map and unmap). Async-signal-safe.
pub fn register_scs_stack(lo: usize, hi: usize, base: usize) {
    known().region.set((lo, hi));
    register_scs_base(base);
}

/// The current thread's registered `(lo, hi, base)` (see [`register_scs_stack`]; zeros for
/// none). Async-signal-safe.
pub fn registered_scs_stack() -> (usize, usize, usize) {
    let (lo, hi) = known().region.get();
    (lo, hi, known().base.get())
}

/// The decoded entries of an SCS, newest first: see [`entries`].
#[derive(Debug)]
pub struct Entries<'m, M> {
    mem: &'m M,
    /// One past the next slot to read.
    top: usize,
    /// Lowest slot that may hold an entry.
    floor: usize,
    /// The floor is a registered base (not just the start of the mapping).
    floor_is_base: bool,
    reached_base: bool,
}

/// The return addresses on the SCS below `x18` (newest first), PAC bits stripped, down to
/// `base` when given, else to a base marker; never below `region.lo`. A zero or unreadable
/// word ends the walk.
pub fn entries<M: Memory>(
    mem: &M,
    x18: usize,
    base: Option<usize>,
    region: Region,
) -> Entries<'_, M> {
    let (floor, floor_is_base) = match base {
        Some(b) if b >= region.lo => (b, true),
        _ => (region.lo, false),
    };
    Entries { mem, top: x18, floor, floor_is_base, reached_base: false }
}

impl<M: Memory> Entries<'_, M> {
    /// Whether the walk ended at the registered base or at a base marker (rather than at the
    /// start of the mapping, a zero or an unreadable word).
    pub fn reached_base(&self) -> bool {
        self.reached_base
    }
}

impl<M: Memory> Iterator for Entries<'_, M> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let slot = self.top.checked_sub(8).filter(|&s| s >= self.floor && s & 7 == 0);
        let Some(slot) = slot else {
            self.reached_base |= self.floor_is_base && self.top == self.floor;
            self.top = self.floor;
            return None;
        };
        let v = self.mem.read(slot);
        match v {
            Some(v) if v == slot => self.reached_base = true,
            Some(v) if v != 0 => {
                self.top = slot;
                return Some(strip_pac(v));
            }
            _ => {}
        }
        self.top = self.floor;
        None
    }
}

/// Walks an SCS: drops entries up to `caller_pc` (see [`super::emit`]), then copies return
/// addresses into `buf`. Returns the number written; [`Unsupported::NotEnabled`] when the walk
/// ended before the buffer was full without meeting the base.
pub fn walk<M: Memory>(
    mem: &M,
    x18: usize,
    base: Option<usize>,
    region: Region,
    caller_pc: usize,
    buf: &mut [usize],
) -> Result<usize, Unsupported> {
    let mut it = entries(mem, x18, base, region);
    let n = emit(&mut it, strip_pac(caller_pc), buf)?;
    if n < buf.len() && !it.reached_base() {
        return Err(Unsupported::NotEnabled);
    }
    Ok(n)
}

/// Captures from the live SCS; `regs.pc` must be the return address into the caller of the
/// capture entry point (an exact signal PC answers [`Unsupported::NoFrames`]).
///
/// Answers [`Unsupported::NotCompiled`] unless [`COMPILED`], and [`Unsupported::NotEnabled`]
/// when x18 is not in a writable mapping or no base is found. Async-signal-safe.
pub fn capture_from(regs: &Regs, buf: &mut [usize]) -> Result<usize, Unsupported> {
    if !COMPILED {
        return Err(Unsupported::NotCompiled);
    }
    let x18 = crate::arch::read_scs_pointer();
    if x18 < 8 || x18 & 7 != 0 {
        return Err(Unsupported::NotEnabled);
    }
    if regs.pc_is_exact {
        return Err(Unsupported::NoFrames);
    }
    let region =
        super::cached_region(&known().region, x18 - 8, true).ok_or(Unsupported::NotEnabled)?;
    let base = Some(known().base.get()).filter(|&b| b != 0 && region.lo <= b && b <= x18);
    // SAFETY: `region` is the readable and writable mapping holding `x18 - 8`; this build
    // reserves x18 for the shadow call stack (`COMPILED`), so the mapping is this thread's
    // shadow call stack (possibly merged with a neighbour), mapped while the thread runs.
    let mem = unsafe { super::LiveRegion::new(region) };
    walk(&mem, x18, base, region, regs.pc, buf)
}

#[cfg(test)]
mod tests {
    use super::super::tests::Image;
    use super::*;

    const CALLER: usize = 0x40_2000;
    const PAC: usize = 0x002d_0000_0000_0000; // a PAC signature in bits 48..55

    /// An SCS image: `below` junk words (a merged neighbour), a base marker unless `marker` is
    /// false, then `entries` oldest first. Returns the image, x18 and the base (first entry).
    fn image(below: usize, marker: bool, oldest_first: &[usize]) -> (Image, usize, usize) {
        let base_addr = 0x7f00_0000usize;
        let mut words = vec![0x40_7777; below];
        let marker_addr = base_addr + 8 * below;
        words.push(if marker { marker_addr } else { 0x40_8888 });
        words.extend_from_slice(oldest_first);
        words.extend_from_slice(&[0x40_dead, 0x40_beef]); // stale slots above x18
        let img = Image { base: base_addr, words };
        let first = marker_addr + 8;
        (img, first + 8 * oldest_first.len(), first)
    }

    #[test]
    fn walks_down_to_the_marker_skipping_own_frames() {
        let (img, x18, _) = image(3, true, &[0x40_5000, 0x40_4000, CALLER, 0x40_1100, 0x40_1000]);
        let mut buf = [0; 16];
        let n = walk(&img, x18, None, img.region(), CALLER, &mut buf).unwrap();
        assert_eq!(&buf[..n], &[CALLER, 0x40_4000, 0x40_5000]);
    }

    #[test]
    fn registered_base_ends_the_walk_without_a_marker() {
        let (img, x18, first) = image(3, false, &[0x40_5000, CALLER, 0x40_1000]);
        let mut buf = [0; 16];
        let n = walk(&img, x18, Some(first), img.region(), CALLER, &mut buf).unwrap();
        assert_eq!(&buf[..n], &[CALLER, 0x40_5000]);
        // Without a base, the walk runs into the neighbour and refuses.
        assert_eq!(
            walk(&img, x18, None, img.region(), CALLER, &mut buf),
            Err(Unsupported::NotEnabled)
        );
        // ...unless the buffer fills first: those entries are all above the true base.
        assert_eq!(walk(&img, x18, None, img.region(), CALLER, &mut buf[..2]), Ok(2));
    }

    #[test]
    fn strips_pac_bits() {
        let (img, x18, _) =
            image(0, true, &[PAC | 0x40_5000, 0x40_4000, PAC | CALLER, PAC | 0x40_1000]);
        let mut buf = [0; 16];
        // The caller's PC may come signed or stripped.
        for pc in [CALLER, PAC | CALLER] {
            let n = walk(&img, x18, None, img.region(), pc, &mut buf).unwrap();
            assert_eq!(&buf[..n], &[CALLER, 0x40_4000, 0x40_5000]);
        }
    }

    #[test]
    fn full_buffer_stops_early() {
        let oldest_first: Vec<usize> = (0..50).map(|i| 0x40_0000 + 4 * i).collect();
        let (img, x18, _) = image(0, true, &oldest_first);
        let mut buf = [0; 3];
        assert_eq!(walk(&img, x18, None, img.region(), oldest_first[48], &mut buf), Ok(3));
        assert_eq!(buf, [oldest_first[48], oldest_first[47], oldest_first[46]]);
    }

    #[test]
    fn empty_stack_and_zero_words() {
        let (img, x18, first) = image(1, true, &[]);
        let mut buf = [0; 4];
        assert_eq!(x18, first);
        assert_eq!(
            walk(&img, x18, None, img.region(), CALLER, &mut buf),
            Err(Unsupported::NoFrames)
        );
        assert_eq!(walk(&img, x18, None, img.region(), CALLER, &mut []), Ok(0));
        // A zero word is no return address: it ends the walk short of the base.
        let (img, x18, _) = image(0, true, &[0x40_5000, 0, CALLER]);
        assert_eq!(
            walk(&img, x18, None, img.region(), CALLER, &mut buf),
            Err(Unsupported::NotEnabled)
        );
    }

    #[test]
    fn a_registered_stack_is_the_region_and_the_base() {
        register_scs_stack(0x7000_0000, 0x7001_0000, 0x7000_0018);
        assert_eq!(registered_scs_stack(), (0x7000_0000, 0x7001_0000, 0x7000_0018));
        let other = std::thread::spawn(registered_scs_stack).join().unwrap();
        assert_eq!(other, (0, 0, 0));
        register_scs_stack(0, 0, 0);
        assert_eq!(registered_scs_stack(), (0, 0, 0));
    }

    #[test]
    fn registration_is_per_thread() {
        register_scs_base(0x1234_0000);
        let other = std::thread::spawn(|| known().base.get()).join().unwrap();
        assert_eq!((known().base.get(), other), (0x1234_0000, 0));
        register_scs_base(0);
    }

    #[cfg(not(all(target_arch = "aarch64", ukasan_scs)))]
    #[test]
    fn not_compiled_without_scs() {
        const { assert!(!COMPILED) };
        let regs = Regs { pc: CALLER, ..Regs::default() };
        assert_eq!(capture_from(&regs, &mut [0; 4]), Err(Unsupported::NotCompiled));
    }
}
