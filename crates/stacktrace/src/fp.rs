//! Frame-pointer walk with guard rails.
//!
//! Each frame record is `{saved fp, return address}` (x86-64 `rbp`, aarch64 `x29`). The walk
//! stops at the first record that is outside the thread's stack, misaligned, not strictly
//! above the previous one, or whose return address is in the first page; and when the buffer
//! is full. Code built without frame pointers (Debian's glibc) breaks the chain: the walk then
//! stops early or, when `rbp` holds an unrelated stack address, may skip frames. Use the DWARF
//! backend for such code.
//!
//! # Signal safety
//! [`capture`], [`capture_from`] and [`walk`] are async-signal-safe: no allocation, no lock,
//! reads confined to the current stack mapping.

use crate::{bounds, Regs, Unsupported};

pub use crate::frame::Memory;

/// Reads the live stack of the current thread, refusing anything outside its bounds.
#[derive(Clone, Copy, Debug)]
pub struct LiveStack(pub bounds::StackBounds);

impl Memory for LiveStack {
    #[inline]
    fn read(&self, addr: usize) -> Option<usize> {
        if !addr.is_multiple_of(core::mem::size_of::<usize>()) || !self.0.contains(addr, 8) {
            return None;
        }
        // SAFETY: `addr` is aligned and inside the current thread's stack mapping, which is
        // readable for the thread's whole life.
        Some(unsafe { core::ptr::read_volatile(addr as *const usize) })
    }

    #[inline]
    fn read_pair(&self, addr: usize) -> Option<(usize, usize)> {
        if !addr.is_multiple_of(core::mem::size_of::<usize>()) || !self.0.contains(addr, 16) {
            return None;
        }
        let p = addr as *const usize;
        // SAFETY: both words are aligned and inside the current thread's stack mapping.
        Some(unsafe { (p.read(), p.add(1).read()) })
    }
}

/// Lowest address a return address may have: nothing executable lives in page zero.
const MIN_PC: usize = 4096;

/// Walks frame records starting at `regs`, writing return addresses newest first.
///
/// `regs.pc` is entry 0; then the chain from `regs.fp`, each record strictly above the last
/// and above `regs.sp`. Returns the number of entries written.
pub fn walk<M: Memory>(mem: &M, regs: &Regs, buf: &mut [usize]) -> usize {
    let Some(first) = buf.first_mut() else { return 0 };
    if regs.pc < MIN_PC {
        return 0;
    }
    *first = regs.pc;
    let mut n = 1;
    let mut fp = regs.fp;
    let mut floor = regs.sp;
    while n < buf.len() {
        if fp < floor || !fp.is_multiple_of(core::mem::size_of::<usize>()) {
            break;
        }
        let Some((next, ra)) = mem.read_pair(fp) else { break };
        let ra = crate::softshadow::real_return_address(fp + 8, strip(ra));
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

#[inline(always)]
fn strip(ra: usize) -> usize {
    if cfg!(target_arch = "aarch64") {
        crate::strip_pac(ra)
    } else {
        ra
    }
}

/// Captures with the frame-pointer walk; entry 0 is the return address into the caller.
#[inline(never)]
pub fn capture(buf: &mut [usize]) -> Result<usize, Unsupported> {
    let regs = crate::arch::caller_regs!();
    capture_from(&regs, buf)
}

/// Frame-pointer walk from explicit registers (e.g. a signal `ucontext`).
pub fn capture_from(regs: &Regs, buf: &mut [usize]) -> Result<usize, Unsupported> {
    if cfg!(not(any(target_arch = "x86_64", target_arch = "aarch64"))) {
        return Err(Unsupported::NotCompiled);
    }
    let b = bounds::current(regs.sp).ok_or(Unsupported::NoStackBounds)?;
    match walk(&LiveStack(b), regs, buf) {
        0 if !buf.is_empty() => Err(Unsupported::NoFrames),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic stack image: word `i` lives at `base + 8 * i`.
    struct Image {
        base: usize,
        words: Vec<usize>,
    }

    impl Memory for Image {
        fn read(&self, addr: usize) -> Option<usize> {
            let i = addr.checked_sub(self.base)? / 8;
            addr.is_multiple_of(8).then_some(())?;
            self.words.get(i).copied()
        }
    }

    fn chain(depth: usize) -> (Image, Regs) {
        // Records at base + 32*k: {next fp, ra = 0x10000 + k}.
        let base = 0x7000_0000;
        let mut words = vec![0; depth * 4 + 4];
        for k in 0..depth {
            words[k * 4] = base + 32 * (k + 1);
            words[k * 4 + 1] = 0x10000 + k;
        }
        words[depth * 4] = 0; // terminator
        (Image { base, words }, Regs { pc: 0x9999, sp: base, fp: base, pc_is_exact: false })
    }

    #[test]
    fn walks_synthetic_chain_to_terminator() {
        let (img, regs) = chain(5);
        let mut buf = [0; 16];
        let n = walk(&img, &regs, &mut buf);
        assert_eq!(&buf[..n], &[0x9999, 0x10000, 0x10001, 0x10002, 0x10003, 0x10004]);
    }

    #[test]
    fn depth_cap_is_the_buffer() {
        let (img, regs) = chain(50);
        let mut buf = [0; 7];
        assert_eq!(walk(&img, &regs, &mut buf), 7);
        assert_eq!(walk(&img, &regs, &mut []), 0);
    }

    #[test]
    fn refuses_loops_misalignment_and_low_pcs() {
        let (mut img, regs) = chain(5);
        img.words[2 * 4] = img.base + 32; // record 2 points back to record 1
        let mut buf = [0; 16];
        assert_eq!(walk(&img, &regs, &mut buf), 4);
        let (mut img, regs) = chain(5);
        img.words[4] = img.base + 33; // misaligned next fp after record 1
        assert_eq!(walk(&img, &regs, &mut buf), 3);
        let (mut img, regs) = chain(5);
        img.words[4 + 1] = 12; // return address in page zero
        assert_eq!(walk(&img, &regs, &mut buf), 2);
        let (img, mut regs) = chain(5);
        regs.sp = img.base + 8; // first record below the stack pointer
        assert_eq!(walk(&img, &regs, &mut buf), 1);
    }
}
