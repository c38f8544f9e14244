//! Hardware and compiler shadow stacks: x86-64 CET, arm64 GCS, aarch64 SCS.
//!
//! A shadow stack is an array of return addresses that the CPU (CET, GCS) or the compiler (SCS)
//! maintains next to the real stack. Capturing is a bounded copy of that array, newest first,
//! minus the few kinds of non-address entries each flavour stores (tokens, terminators, PAC
//! bits). The decoding lives here and in [`cet`], [`gcs`] and [`scs`] as plain functions over a
//! [`Memory`] reader, so it is compiled and unit-tested on every host against synthetic images;
//! only the register reads are per architecture (`crate::arch`).
//!
//! What shadow stacks miss: the interrupted PC of a signal handler (it has no entry: start from
//! the `ucontext` with another backend), and for SCS every frame of code built without
//! `-Zsanitizer=shadow-call-stack` (libc, C libraries).
//!
//! # Skipping the library's own frames
//! The shadow stack also holds the entries of the capture entry point and of the dispatch
//! below it, and their number depends on inlining. So the walkers do not count: they drop
//! entries until the one equal to `regs.pc` (the return address into the caller of the entry
//! point, read from the entry point's frame record) and answer [`Unsupported::NoFrames`] when it
//! is not among the first [`MAX_SKIP`] + 1 entries.
//!
//! # Signal safety
//! Everything here is async-signal-safe: no allocation, no lock, no panic; the first capture
//! on a thread reads `/proc/self/maps` once (raw syscalls, see [`crate::maps`]).

pub mod cet;
pub mod gcs;
pub mod scs;

use core::cell::Cell;

use crate::Unsupported;

pub use crate::frame::Memory;
pub use scs::{register_scs_base, register_scs_stack};

/// Most entries dropped from the top of a shadow stack while looking for the caller of the
/// capture entry point (the entry point, dispatch and backend frames are at most 3 today).
pub const MAX_SKIP: usize = 8;

/// A `[lo, hi)` range of addresses holding one shadow stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// Lowest address.
    pub lo: usize,
    /// One past the highest address.
    pub hi: usize,
}

impl Region {
    /// Whether `addr` lies in `[lo, hi)`.
    #[inline]
    pub const fn contains(&self, addr: usize) -> bool {
        self.lo <= addr && addr < self.hi
    }
}

/// Reads the live memory of one shadow-stack mapping, refusing anything outside it.
#[derive(Clone, Copy, Debug)]
pub struct LiveRegion(Region);

impl LiveRegion {
    /// A reader of `region`.
    ///
    /// # Safety
    /// Every aligned word of `region` must stay readable while the reader is used (the current
    /// thread's own shadow stack, which lives as long as the thread).
    pub const unsafe fn new(region: Region) -> Self {
        LiveRegion(region)
    }
}

impl Memory for LiveRegion {
    #[inline]
    fn read(&self, addr: usize) -> Option<usize> {
        if addr & 7 != 0
            || addr < self.0.lo
            || addr.checked_add(8).is_none_or(|end| end > self.0.hi)
        {
            return None;
        }
        // SAFETY: aligned and inside the region that `LiveRegion::new`'s caller vouched for.
        Some(unsafe { core::ptr::read_volatile(addr as *const usize) })
    }
}

/// Drops entries until `caller_pc` (at most [`MAX_SKIP`] of them), then writes it and the
/// entries after it to `buf` until the buffer is full or the entries end.
///
/// Entries are pulled lazily: nothing past the last written one is read. An empty `buf`
/// answers `Ok(0)` without reading anything.
pub fn emit<I: Iterator<Item = usize>>(
    mut entries: I,
    caller_pc: usize,
    buf: &mut [usize],
) -> Result<usize, Unsupported> {
    if buf.is_empty() {
        return Ok(0);
    }
    if caller_pc == 0 || !entries.by_ref().take(MAX_SKIP + 1).any(|e| e == caller_pc) {
        return Err(Unsupported::NoFrames);
    }
    buf[0] = caller_pc;
    let mut n = 1;
    while n < buf.len() {
        let Some(e) = entries.next() else { break };
        buf[n] = e;
        n += 1;
    }
    Ok(n)
}

/// The shadow-stack mapping of the current thread that contains `addr`, cached in `cache`
/// (one per backend): a hit costs a TLS read, a miss reads `/proc/self/maps` and replaces the
/// cached range. `None` when `addr` is in no readable mapping (or no writable one when
/// `writable`).
pub(crate) fn cached_region(
    cache: &'static Cell<(usize, usize)>,
    addr: usize,
    writable: bool,
) -> Option<Region> {
    let (lo, hi) = cache.get();
    if lo <= addr && addr < hi {
        return Some(Region { lo, hi });
    }
    region_miss(cache, addr, writable)
}

#[cold]
#[inline(never)]
fn region_miss(
    cache: &'static Cell<(usize, usize)>,
    addr: usize,
    writable: bool,
) -> Option<Region> {
    let m = crate::maps::find_mapping(addr)?;
    if !m.read || (writable && !m.write) || m.end - m.start < 8 {
        return None;
    }
    cache.set((m.start, m.end));
    Some(Region { lo: m.start, hi: m.end })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A synthetic shadow-stack image: word `i` lives at `base + 8 * i`.
    pub(crate) struct Image {
        pub base: usize,
        pub words: Vec<usize>,
    }

    impl Image {
        pub fn region(&self) -> Region {
            Region { lo: self.base, hi: self.base + 8 * self.words.len() }
        }

        /// Address of word `i`.
        pub fn at(&self, i: usize) -> usize {
            self.base + 8 * i
        }
    }

    impl Memory for Image {
        fn read(&self, addr: usize) -> Option<usize> {
            if addr & 7 != 0 {
                return None;
            }
            self.words.get(addr.checked_sub(self.base)? / 8).copied()
        }
    }

    #[test]
    fn emit_skips_own_frames_then_copies() {
        let entries = [0x11, 0x12, 0x500, 0x600, 0x700];
        let mut buf = [0; 8];
        assert_eq!(emit(entries.into_iter(), 0x500, &mut buf), Ok(3));
        assert_eq!(&buf[..3], &[0x500, 0x600, 0x700]);
        // No own frame at all: the caller is entry 0.
        assert_eq!(emit(entries.into_iter(), 0x11, &mut buf), Ok(5));
        assert_eq!(buf[0], 0x11);
    }

    #[test]
    fn emit_gives_up_after_max_skip() {
        let mut entries = [0x10usize; MAX_SKIP + 2];
        entries[MAX_SKIP] = 0x500; // the (MAX_SKIP + 1)th entry: still found
        let mut buf = [0; 4];
        assert_eq!(emit(entries.into_iter(), 0x500, &mut buf), Ok(2));
        entries[MAX_SKIP] = 0x10;
        entries[MAX_SKIP + 1] = 0x500; // one too deep
        assert_eq!(emit(entries.into_iter(), 0x500, &mut buf), Err(Unsupported::NoFrames));
        assert_eq!(emit([].into_iter(), 0x500, &mut buf), Err(Unsupported::NoFrames));
        assert_eq!(emit([0usize].into_iter(), 0, &mut buf), Err(Unsupported::NoFrames));
    }

    #[test]
    fn emit_stops_at_full_buffer_without_reading_further() {
        let mut pulled = 0;
        let entries = (1..100usize).inspect(|_| pulled += 1);
        let mut buf = [0; 3];
        assert_eq!(emit(entries, 2, &mut buf), Ok(3));
        assert_eq!(buf, [2, 3, 4]);
        assert_eq!(pulled, 4);
        assert_eq!(emit(core::iter::repeat(7), 7, &mut []), Ok(0));
    }

    #[test]
    fn live_region_reads_inside_only() {
        let words = [1usize, 2, 3, 4];
        let lo = words.as_ptr() as usize;
        let region = Region { lo, hi: lo + 32 };
        // SAFETY: `words` outlives the reader.
        let mem = unsafe { LiveRegion::new(region) };
        assert_eq!(mem.read(lo), Some(1));
        assert_eq!(mem.read(lo + 24), Some(4));
        assert_eq!(mem.read(lo + 32), None);
        assert_eq!(mem.read(lo + 4), None);
        assert_eq!(mem.read(lo - 8), None);
    }

    // All zero: nothing cached; a `!Sync` cell.
    crate::static_tls!(fn test_cache() -> &'static Cell<(usize, usize)> = "__ukasan_test_region_tls");

    #[test]
    fn region_cache_hits_after_a_miss_and_checks_permissions() {
        let local = 5usize;
        let a = &local as *const usize as usize;
        let r = cached_region(test_cache(), a, true).expect("the stack is a rw mapping");
        assert!(r.contains(a));
        assert_eq!(test_cache().get(), (r.lo, r.hi));
        assert_eq!(cached_region(test_cache(), a, true), Some(r));
        // Code is not writable: refused when a writable mapping is required.
        let code = emit_skips_own_frames_then_copies as fn() as usize;
        assert_eq!(cached_region(test_cache(), code, true), None);
        assert_eq!(cached_region(test_cache(), 8, false), None);
    }
}
