//! Chunk layout: header, left redzone, user bytes, right redzone.
//!
//! ```text
//! base                                   user = base + front
//! |<- alignment padding ->|<- Header ->|<- LEFT_RZ ->|<- size ->|<- right redzone ->|
//!                          96 bytes      32 x 0xfc      user      >= redzone x 0xfc
//! ```
//!
//! The header sits at a fixed distance before the user pointer (`HDR + LEFT_RZ`), whatever
//! the alignment, so `free` finds it without any lookup; the bytes before the header are
//! alignment padding. Its first word is `MAGIC ^ address`, which a foreign pointer or a stale
//! glibc chunk does not carry by accident. Freed objects are filled with [`POISON`].

use crate::bytes::fill;
use core::sync::atomic::{AtomicU8, Ordering};

/// Header size in bytes.
pub const HDR: usize = 96;
/// Left redzone in bytes (fixed so that chunks made before options are read, and by any
/// option setting, have the header at the same place).
pub const LEFT_RZ: usize = 32;
/// Redzone canary byte (KASAN's `KASAN_SLAB_REDZONE`).
pub const REDZONE: u8 = 0xfc;
/// Poison byte of freed objects (KASAN's `KASAN_SLAB_FREE`).
pub const POISON: u8 = 0xfb;
/// Minimum alignment of every chunk (what malloc promises on x86-64 and aarch64).
pub const MIN_ALIGN: usize = 16;
/// Largest request accepted (beyond it: NULL and ENOMEM), far below `isize::MAX`.
pub const MAX_SIZE: usize = 1 << 46;

const MAGIC: usize = 0x75_6b61_7361_6e21; // "ukasan!"

/// Allocator family of a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum Family {
    /// Rust `GlobalAlloc`.
    Rust = 0,
    /// `malloc` and friends.
    Malloc = 1,
    /// C++ `operator new`.
    New = 2,
    /// C++ `operator new[]`.
    NewArray = 3,
}

impl Family {
    pub(crate) fn from_u8(v: u8) -> Family {
        match v {
            0 => Family::Rust,
            2 => Family::New,
            3 => Family::NewArray,
            _ => Family::Malloc,
        }
    }

    /// How such memory is allocated, for reports.
    pub fn alloc_name(self) -> &'static str {
        match self {
            Family::Rust => "Rust alloc",
            Family::Malloc => "malloc",
            Family::New => "operator new",
            Family::NewArray => "operator new []",
        }
    }

    /// How such memory is freed, for reports.
    pub fn free_name(self) -> &'static str {
        match self {
            Family::Rust => "Rust dealloc",
            Family::Malloc => "free",
            Family::New => "operator delete",
            Family::NewArray => "operator delete []",
        }
    }
}

/// Lifecycle state of a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Allocated.
    Live = 1,
    /// Freed, poisoned, waiting in the quarantine.
    Quarantined = 2,
    /// Handed back to the backing allocator (the header may be overwritten).
    Released = 3,
}

/// Who did something to a chunk, and when.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Track {
    /// Kernel thread id.
    pub tid: u32,
    /// Stack depot handle ([`stackdepot::Handle::NONE`]: stack not available).
    pub stack: stackdepot::Handle,
    /// Global sequence number of the operation.
    pub seq: u64,
}

/// Flag: untracked chunk (made before init or from inside the runtime).
pub const F_RAW: u8 = 1;
/// Flag: linked in the live registry.
pub const F_LISTED: u8 = 2;
/// Flag: allocated by the dynamic loader itself (never reported as a leak).
pub const F_LOADER: u8 = 4;
/// Flag: the quarantined object's inner pages were given back ([`crate::zap`]) rather than
/// poisoned.
pub const F_ZAPPED: u8 = 8;

/// The chunk header.
#[derive(Debug)]
#[repr(C)]
pub struct Header {
    magic: usize,
    state: AtomicU8,
    family: u8,
    /// `F_*` flags.
    pub flags: u8,
    /// Registry shard of a listed chunk.
    pub shard: u8,
    /// `user - base`.
    pub front: u32,
    /// Requested size.
    pub size: usize,
    /// Size of the backing block.
    pub total: usize,
    /// Requested alignment (the backing block is aligned to at least [`MIN_ALIGN`]).
    pub align: usize,
    /// Allocation.
    pub alloc: Track,
    /// Free (zero while live).
    pub free: Track,
    /// Intrusive links (live registry: doubly linked; quarantine: `next` only).
    pub next: *mut Header,
    /// See `next`.
    pub prev: *mut Header,
    /// The object's MTE tag (hw-tags mode; 0: untagged).
    pub tag: u8,
    /// A tag-check fault on this chunk was reported and the access let through (hw-tags
    /// mode): damage found later is that bug, repaired without a second report.
    pub reported: AtomicU8,
    _spare: [u8; 6],
}

const _: () = assert!(core::mem::size_of::<Header>() == HDR);
const _: () = assert!((HDR + LEFT_RZ).is_multiple_of(MIN_ALIGN));

/// Where a chunk for a request goes inside its backing block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes before the user pointer.
    pub front: usize,
    /// Backing block size.
    pub total: usize,
    /// Backing block alignment.
    pub align: usize,
}

/// The backing block for `size` bytes aligned to `align` with at least `right_rz` bytes of
/// right redzone; `None` when the size is absurd (the caller answers ENOMEM).
#[inline]
pub fn geometry(size: usize, align: usize, right_rz: usize) -> Option<Geometry> {
    if size > MAX_SIZE || !align.is_power_of_two() || align > MAX_SIZE {
        return None;
    }
    let align = align.max(MIN_ALIGN);
    let front = (HDR + LEFT_RZ).next_multiple_of(align);
    let total = (front + size + right_rz).next_multiple_of(MIN_ALIGN);
    Some(Geometry { front, total, align })
}

impl Header {
    /// The header of the chunk whose user pointer is `user` (not checked).
    #[inline]
    pub fn of(user: usize) -> *mut Header {
        user.wrapping_sub(HDR + LEFT_RZ) as *mut Header
    }

    /// The user pointer of this header.
    #[inline]
    pub fn user(&self) -> usize {
        self as *const Header as usize + HDR + LEFT_RZ
    }

    /// Start of the backing block.
    #[inline]
    pub fn base(&self) -> usize {
        self.user() - self.front as usize
    }

    /// Initializes a header in place at `base + geometry.front - HDR - LEFT_RZ`, fills the
    /// redzones, and returns the user pointer.
    ///
    /// # Safety
    /// `base` is a writable block of `g.total` bytes aligned to `g.align`, computed by
    /// [`geometry`] for `size`.
    #[inline]
    pub unsafe fn init(
        base: *mut u8,
        g: Geometry,
        size: usize,
        align: usize,
        family: Family,
        flags: u8,
        redzones: bool,
    ) -> *mut u8 {
        let user = base as usize + g.front;
        let h = Header::of(user);
        // SAFETY: `h` and the redzones lie inside the block (front >= HDR + LEFT_RZ and
        // total >= front + size), which the caller owns; `h` is 16-byte aligned.
        unsafe {
            h.write(Header {
                magic: MAGIC ^ h as usize,
                state: AtomicU8::new(State::Live as u8),
                family: family as u8,
                flags,
                shard: 0,
                front: g.front as u32,
                size,
                total: g.total,
                align: align.max(1),
                alloc: Track::default(),
                free: Track::default(),
                next: core::ptr::null_mut(),
                prev: core::ptr::null_mut(),
                tag: 0,
                reported: AtomicU8::new(0),
                _spare: [0; 6],
            });
            if redzones {
                core::ptr::write_bytes((user - LEFT_RZ) as *mut u8, REDZONE, LEFT_RZ);
                core::ptr::write_bytes((user + size) as *mut u8, REDZONE, g.total - g.front - size);
            }
        }
        user as *mut u8
    }

    /// Whether this header is intact (its magic matches its address).
    #[inline]
    pub fn valid(&self) -> bool {
        self.magic == MAGIC ^ (self as *const Header as usize)
    }

    /// Destroys the magic before the block goes back to the backing allocator.
    #[inline]
    pub fn invalidate(&mut self) {
        self.magic = 0;
    }

    /// Allocator family.
    #[inline]
    pub fn family(&self) -> Family {
        Family::from_u8(self.family)
    }

    /// Current state.
    #[inline]
    pub fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            1 => State::Live,
            2 => State::Quarantined,
            _ => State::Released,
        }
    }

    /// Moves Live -> `to` atomically; `Err(current)` if the chunk was not live (a double
    /// free, possibly racing with another thread's free).
    #[inline]
    pub fn take_live(&self, to: State) -> Result<(), State> {
        // AcqRel: Release publishes the header as it was while live to a racing free that
        // loses; Acquire pairs with the Release of the winner so the loser reads its free track.
        self.state
            .compare_exchange(State::Live as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
            .map_err(|s| match s {
                2 => State::Quarantined,
                1 => State::Live,
                _ => State::Released,
            })
    }

    /// Sets the state (release of a quarantined chunk).
    #[inline]
    pub fn set_state(&self, s: State) {
        // Release pairs with the Acquire loads in `state` and `take_live`.
        self.state.store(s as u8, Ordering::Release);
    }

    /// Right redzone length.
    #[inline]
    pub fn right_rz(&self) -> usize {
        self.total - self.front as usize - self.size
    }

    /// First redzone byte that is not [`REDZONE`], as (address, left side?).
    ///
    /// # Safety
    /// The chunk's block must still be owned by the runtime (live or quarantined).
    pub unsafe fn find_redzone_damage(&self) -> Option<Damage> {
        let user = self.user();
        // SAFETY: both redzones lie inside the owned block.
        let (left, right) = unsafe {
            (
                core::slice::from_raw_parts((user - LEFT_RZ) as *const u8, LEFT_RZ),
                core::slice::from_raw_parts((user + self.size) as *const u8, self.right_rz()),
            )
        };
        // Report the damage closest to the object: the end of the left zone, the start of
        // the right one.
        if let Some(i) = left.iter().rposition(|&b| b != REDZONE) {
            let first = left.iter().position(|&b| b != REDZONE).unwrap_or(i);
            return Some(Damage { start: user - LEFT_RZ + first, end: user - LEFT_RZ + i + 1 });
        }
        let first = right.iter().position(|&b| b != REDZONE)?;
        let last = right.iter().rposition(|&b| b != REDZONE).unwrap_or(first);
        Some(Damage { start: user + self.size + first, end: user + self.size + last + 1 })
    }

    /// First and last user bytes of a freed object that are no longer [`POISON`].
    ///
    /// # Safety
    /// The chunk must be quarantined (poisoned and still owned).
    pub unsafe fn find_poison_damage(&self) -> Option<Damage> {
        let (user, end) = (self.user(), self.user() + self.size);
        // SAFETY: the user bytes lie inside the owned block; the given-back pages are whole
        // pages of it.
        unsafe {
            let Some((lo, hi)) = self.zapped() else {
                return damage(user, end, POISON);
            };
            join(
                join(damage(user, lo, POISON), crate::zap::written(lo, hi)),
                damage(hi, end, POISON),
            )
        }
    }

    /// The object's pages given back in the quarantine, if they were.
    fn zapped(&self) -> Option<(usize, usize)> {
        if self.flags & F_ZAPPED == 0 {
            return None;
        }
        let user = self.user();
        crate::zap::inner_pages(self.size, user, user + self.size)
    }

    /// Refills both redzones with [`REDZONE`] (after damage was reported, so it is
    /// reported once).
    ///
    /// # Safety
    /// The chunk's block must still be owned by the runtime.
    pub unsafe fn repair_redzones(&self) {
        let user = self.user();
        // SAFETY: both redzones lie inside the owned block.
        unsafe {
            core::ptr::write_bytes((user - LEFT_RZ) as *mut u8, REDZONE, LEFT_RZ);
            core::ptr::write_bytes((user + self.size) as *mut u8, REDZONE, self.right_rz());
        }
    }

    /// Refills the object with [`POISON`] (after a use-after-free was reported).
    ///
    /// # Safety
    /// The chunk must be quarantined.
    pub unsafe fn repair_poison(&self) {
        let (user, end) = (self.user(), self.user() + self.size);
        // SAFETY: the user bytes lie inside the owned block; the given-back pages are whole
        // pages of it (zeros once more; a refusal leaves the damage, found again later).
        unsafe {
            match self.zapped() {
                Some(pages) => {
                    crate::zap::poison_around(user, end, pages);
                    crate::zap::give_back(pages.0, pages.1);
                }
                None => fill(user, self.size, POISON),
            }
        }
    }

    /// Fills the object with [`POISON`], or, for a large one, its partial pages at both ends
    /// and gives the whole pages between back ([`crate::zap`]).
    ///
    /// # Safety
    /// The chunk must be owned by the caller (just taken out of the live state).
    pub unsafe fn poison(&mut self) {
        let (user, end) = (self.user(), self.user() + self.size);
        // SAFETY: the user bytes lie inside the owned block; the inner pages are whole
        // pages of it, whose contents are no longer needed.
        unsafe {
            match crate::zap::inner_pages(self.size, user, end) {
                Some(pages) if crate::zap::give_back(pages.0, pages.1) => {
                    crate::zap::poison_around(user, end, pages);
                    self.flags |= F_ZAPPED;
                }
                _ => {
                    fill(user, self.size, POISON);
                    self.flags &= !F_ZAPPED;
                }
            }
        }
    }
}

/// A corrupted byte range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Damage {
    /// First modified byte.
    pub start: usize,
    /// One past the last modified byte.
    pub end: usize,
}

/// The union of two damaged ranges.
pub(crate) fn join(a: Option<Damage>, b: Option<Damage>) -> Option<Damage> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Damage { start: a.start.min(b.start), end: a.end.max(b.end) }),
        (a, b) => a.or(b),
    }
}

/// The first and last byte of `[lo, hi)` that are not `v`.
///
/// # Safety
/// The range is mapped and readable.
#[inline]
pub(crate) unsafe fn damage(lo: usize, hi: usize, v: u8) -> Option<Damage> {
    // SAFETY: forwarded.
    if unsafe { crate::bytes::all(lo, hi, v) } {
        return None;
    }
    // SAFETY: forwarded.
    unsafe { locate_damage(lo, hi, v) }
}

#[cold]
#[inline(never)]
unsafe fn locate_damage(lo: usize, hi: usize, v: u8) -> Option<Damage> {
    // SAFETY: forwarded.
    let s = unsafe { core::slice::from_raw_parts(lo as *const u8, hi - lo) };
    let first = find_not(s, v)?;
    let last = s.iter().rposition(|&b| b != v).unwrap_or(first);
    Some(Damage { start: lo + first, end: lo + last + 1 })
}

/// Index of the first byte not equal to `v`, a word at a time.
#[inline]
pub(crate) fn find_not(s: &[u8], v: u8) -> Option<usize> {
    let word = usize::from_ne_bytes([v; 8]);
    let (pre, mid, _) = {
        // SAFETY: reinterpreting aligned bytes as usize is valid for any bit pattern.
        unsafe { s.align_to::<usize>() }
    };
    if let Some(i) = pre.iter().position(|&b| b != v) {
        return Some(i);
    }
    let skip = mid.iter().position(|&w| w != word).unwrap_or(mid.len());
    let from = pre.len() + skip * 8;
    s[from..].iter().position(|&b| b != v).map(|i| from + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(size: usize, align: usize) -> (Vec<u128>, *mut u8) {
        let g = geometry(size, align, 16).unwrap();
        let mut block = vec![0u128; g.total / 16 + align / 16 + 1];
        let raw = block.as_mut_ptr() as usize;
        let base = raw.next_multiple_of(g.align) as *mut u8;
        // SAFETY: the vector holds total bytes after the aligned base.
        let user = unsafe { Header::init(base, g, size, align, Family::Malloc, 0, true) };
        (block, user)
    }

    #[test]
    fn geometry_keeps_alignment_and_redzones() {
        for align in [1, 16, 32, 64, 4096, 1 << 16] {
            for size in [0, 1, 15, 16, 17, 1000] {
                let g = geometry(size, align, 16).unwrap();
                assert_eq!(g.front % align.max(16), 0);
                assert!(g.front >= HDR + LEFT_RZ);
                assert!(g.total - g.front - size >= 16);
                assert_eq!(g.total % 16, 0);
            }
        }
        assert!(geometry(usize::MAX - 8, 16, 16).is_none());
        assert!(geometry(8, 24, 16).is_none());
    }

    #[test]
    fn header_round_trip_and_damage() {
        let (_keep, user) = make(20, 64);
        assert_eq!(user as usize % 64, 0);
        // SAFETY: `user` came from Header::init on a live block.
        let h = unsafe { &mut *Header::of(user as usize) };
        assert!(h.valid());
        assert_eq!((h.size, h.family(), h.state()), (20, Family::Malloc, State::Live));
        // SAFETY: as above, the block is alive.
        unsafe {
            assert_eq!(h.find_redzone_damage(), None);
            *user.add(21) = 1;
            assert_eq!(
                h.find_redzone_damage(),
                Some(Damage { start: user as usize + 21, end: user as usize + 22 })
            );
            *user.add(21) = REDZONE;
            *user.sub(3) = 0;
            assert_eq!(
                h.find_redzone_damage(),
                Some(Damage { start: user as usize - 3, end: user as usize - 2 })
            );
            *user.sub(3) = REDZONE;
            assert_eq!(h.take_live(State::Quarantined), Ok(()));
            assert_eq!(h.take_live(State::Quarantined), Err(State::Quarantined));
            h.poison();
            assert_eq!(h.find_poison_damage(), None);
            *user.add(9) = 7;
            *user.add(12) = 7;
            assert_eq!(
                h.find_poison_damage(),
                Some(Damage { start: user as usize + 9, end: user as usize + 13 })
            );
        }
    }

    #[test]
    fn find_not_agrees_with_naive_scan() {
        let mut v = vec![5u8; 100];
        for i in [0, 7, 8, 63, 99] {
            v[i] = 1;
            for start in 0..9 {
                let s = &v[start..];
                assert_eq!(find_not(s, 5), s.iter().position(|&b| b != 5));
            }
            v[i] = 5;
        }
        assert_eq!(find_not(&v, 5), None);
    }
}
