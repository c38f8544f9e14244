//! Pages given back: the whole pages inside a large freed object are returned to the system
//! (`MADV_DONTNEED`) while it sits in the quarantine, instead of being poisoned.
//!
//! They read as zeros afterwards. A page the program touches after the free comes back
//! resident: `mincore` names those pages, and bytes there that are not zero are what the
//! program wrote after the free, reported as poison damage is. A resident page that reads
//! zero counts as intact, so neither a read nor the kernel's own doings (`khugepaged` fills
//! holes in a huge page with zeros) is ever reported; a write of zeros goes unseen, as a
//! write of the poison byte does in poisoned memory. Neither the free nor the checks touch
//! those pages: a 64 KiB buffer freed no longer costs two passes over cold memory, and the
//! quarantine holds its budget of large objects without their memory.
//!
//! Limits: a page swapped out after such a write is not resident and goes unchecked.

use crate::chunk::{damage, join, Damage};
use core::sync::atomic::{AtomicUsize, Ordering};

/// Objects of at least this many bytes have pages given back in the quarantine.
pub const ZAP_MIN: usize = 32 << 10;

static PAGE: AtomicUsize = AtomicUsize::new(0);

/// The system's page size (0 when unknown).
#[inline]
pub(crate) fn page() -> usize {
    // Relaxed: a constant of the process, computed again by a thread that races.
    let p = PAGE.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    // SAFETY: sysconf has no preconditions (async-signal-safe for _SC_PAGESIZE: auxv).
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let p = if p > 0 && (p as usize).is_power_of_two() { p as usize } else { 0 };
    // Relaxed: see above.
    PAGE.store(p, Ordering::Relaxed);
    p
}

/// The whole pages in `[lo, hi)` (the part of a freed object that may be given back), for
/// objects of `size >= ZAP_MIN` bytes; `None` otherwise or when there is no whole page.
#[inline]
pub(crate) fn inner_pages(size: usize, lo: usize, hi: usize) -> Option<(usize, usize)> {
    if size < ZAP_MIN {
        return None;
    }
    let page = page();
    if page == 0 {
        return None;
    }
    let (a, b) = (lo.next_multiple_of(page), hi & !(page - 1));
    (b > a).then_some((a, b))
}

/// Gives the pages `[lo, hi)` back; false when they were not (locked memory, or a sandbox
/// or emulator that answers `madvise` with success without doing it): a marker written
/// first must read zero after.
///
/// # Safety
/// `[lo, hi)` is whole pages of an object the caller owns and whose contents are no longer
/// needed.
#[inline]
pub(crate) unsafe fn give_back(lo: usize, hi: usize) -> bool {
    let marker = lo as *mut u64;
    // SAFETY: forwarded; the marker is the first word of the range.
    unsafe {
        marker.write_volatile(0x7a61_7070_6564_2121);
        libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_DONTNEED) == 0
            && marker.read_volatile() == 0
    }
}

/// Poisons the parts of the object `[lo, hi)` around its given-back `pages`.
///
/// # Safety
/// `[lo, hi)` is an object the caller owns; `pages` lies inside it.
#[inline]
pub(crate) unsafe fn poison_around(lo: usize, hi: usize, pages: (usize, usize)) {
    // SAFETY: forwarded.
    unsafe {
        crate::bytes::fill(lo, pages.0 - lo, crate::chunk::POISON);
        crate::bytes::fill(pages.1, hi - pages.1, crate::chunk::POISON);
    }
}

/// Bytes that are not zero in the resident pages of `[lo, hi)` (pages given back with
/// [`give_back`]): what was written there since. Pages that are not resident are not read.
///
/// # Safety
/// `[lo, hi)` is whole pages, mapped and readable.
pub(crate) unsafe fn written(lo: usize, hi: usize) -> Option<Damage> {
    let page = page();
    let mut vec = [0u8; 256];
    let mut d = None;
    let mut at = lo;
    while at < hi {
        let n = ((hi - at) / page).min(vec.len());
        // SAFETY: a page-aligned range of a mapping and one vector byte per page.
        if unsafe { libc::mincore(at as *mut libc::c_void, n * page, vec.as_mut_ptr()) } != 0 {
            return d;
        }
        for (i, _) in vec[..n].iter().enumerate().filter(|(_, &v)| v & 1 != 0) {
            let p = at + i * page;
            // SAFETY: a resident page of the range (the caller's contract).
            d = join(d, unsafe { damage(p, p + page, 0) });
        }
        at += n * page;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_back_pages_read_zero_and_writes_after_are_found() {
        let page = page();
        assert!(page > 0);
        let len = 8 * page;
        let m = crate::sys::map(len, page, true).expect("a mapping") as usize;
        // SAFETY: our fresh mapping, `len` bytes.
        unsafe {
            core::ptr::write_bytes(m as *mut u8, 0x5a, len);
            assert!(give_back(m, m + len));
            assert_eq!(*(m as *const u8).add(3 * page + 7), 0, "reads zero");
            // A read made page 3 resident (the zero page): not damage.
            assert_eq!(written(m, m + len), None);
            *(m as *mut u8).add(5 * page + 9) = 1;
            *(m as *mut u8).add(6 * page + 1) = 2;
            assert_eq!(
                written(m, m + len),
                Some(Damage { start: m + 5 * page + 9, end: m + 6 * page + 2 })
            );
            libc::munmap(m as *mut libc::c_void, len);
        }
        assert_eq!(inner_pages(ZAP_MIN - 1, 0, 1 << 20), None);
        assert_eq!(inner_pages(ZAP_MIN, 1, 3 * page - 1), Some((page, 2 * page)));
        assert_eq!(inner_pages(ZAP_MIN, 1, page + 5), None);
    }
}
