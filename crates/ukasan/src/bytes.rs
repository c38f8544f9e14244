//! Byte-pattern checks and fills on the hot path (redzones, poison): no call for the short
//! ranges most objects have, and 16 bytes per load for long ones.
//!
//! A check of `n` bytes reads them with at most four overlapping unaligned loads up to 32
//! bytes, then runs a vector loop (SSE2 on x86-64, part of the base ISA; two words per step
//! elsewhere). A fill of up to 32 bytes is the same overlapping stores; longer ones go to
//! `memset`, which is faster there than anything written here.

/// Whether every byte of `[lo, hi)` is `v` (true for an empty range).
///
/// # Safety
/// The range is mapped and readable.
#[inline(always)]
pub(crate) unsafe fn all(lo: usize, hi: usize, v: u8) -> bool {
    if hi <= lo {
        return true;
    }
    let n = hi - lo;
    // SAFETY: every load below lies in `[lo, hi)`, by the length test before it.
    unsafe {
        if n >= 8 {
            let pat = u64::from_ne_bytes([v; 8]);
            let w = |a: usize| (a as *const u64).read_unaligned() ^ pat;
            if n <= 16 {
                return w(lo) | w(hi - 8) == 0;
            }
            if n <= 32 {
                return w(lo) | w(lo + 8) | w(hi - 16) | w(hi - 8) == 0;
            }
            return all_long(lo, hi, v);
        }
        if n >= 4 {
            let pat = u32::from_ne_bytes([v; 4]);
            let w = |a: usize| (a as *const u32).read_unaligned() ^ pat;
            return w(lo) | w(hi - 4) == 0;
        }
        if n >= 2 {
            let pat = u16::from_ne_bytes([v; 2]);
            let w = |a: usize| (a as *const u16).read_unaligned() ^ pat;
            return w(lo) | w(hi - 2) == 0;
        }
        *(lo as *const u8) == v
    }
}

/// [`all`] for more than 32 bytes.
///
/// # Safety
/// As [`all`], and `hi - lo > 32`.
#[inline(never)]
unsafe fn all_long(lo: usize, hi: usize, v: u8) -> bool {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded.
    unsafe {
        use core::arch::x86_64::*;
        // SSE2 is in every x86-64 CPU. Every load lies in the range: 16-byte steps while 16
        // bytes are left, then the last 16 bytes, overlapping.
        let pat = _mm_set1_epi8(v as i8);
        let w = |a: usize| _mm_xor_si128(_mm_loadu_si128(a as *const __m128i), pat);
        let mut acc = w(hi - 16);
        let mut a = lo;
        while a + 64 <= hi {
            acc = _mm_or_si128(
                acc,
                _mm_or_si128(_mm_or_si128(w(a), w(a + 16)), _mm_or_si128(w(a + 32), w(a + 48))),
            );
            a += 64;
        }
        while a + 16 <= hi {
            acc = _mm_or_si128(acc, w(a));
            a += 16;
        }
        _mm_movemask_epi8(_mm_cmpeq_epi8(acc, _mm_setzero_si128())) == 0xffff
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: forwarded.
    unsafe {
        let pat = u64::from_ne_bytes([v; 8]);
        let w = |a: usize| (a as *const u64).read_unaligned() ^ pat;
        let mut acc = w(hi - 8);
        let mut a = lo;
        while a + 16 <= hi {
            acc |= w(a) | w(a + 8);
            a += 16;
        }
        if a + 8 <= hi {
            acc |= w(a);
        }
        acc == 0
    }
}

/// Sets every byte of `[lo, lo + n)` to `v`.
///
/// # Safety
/// The range is mapped, writable and ours.
#[inline(always)]
pub(crate) unsafe fn fill(lo: usize, n: usize, v: u8) {
    let hi = lo + n;
    // SAFETY: every store below lies in `[lo, hi)`, by the length test before it.
    unsafe {
        if n > 32 {
            core::ptr::write_bytes(lo as *mut u8, v, n);
        } else if n >= 8 {
            let pat = u64::from_ne_bytes([v; 8]);
            let s = |a: usize| (a as *mut u64).write_unaligned(pat);
            s(lo);
            s(hi - 8);
            if n > 16 {
                s(lo + 8);
                s(hi - 16);
            }
        } else if n >= 4 {
            let pat = u32::from_ne_bytes([v; 4]);
            (lo as *mut u32).write_unaligned(pat);
            ((hi - 4) as *mut u32).write_unaligned(pat);
        } else {
            for a in lo..hi {
                *(a as *mut u8) = v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_agree_with_a_byte_loop_at_every_length_and_offset() {
        let mut buf = [0xabu8; 300];
        let base = buf.as_ptr() as usize;
        for lo in 0..20 {
            for hi in lo..280 {
                // SAFETY: inside `buf` (as every check below).
                assert!(unsafe { all(base + lo, base + hi, 0xab) }, "{lo}..{hi}");
                for at in [lo, lo + 1, (lo + hi) / 2, hi.saturating_sub(2), hi.saturating_sub(1)] {
                    if !(lo..hi).contains(&at) {
                        continue;
                    }
                    buf[at] = 0xaa;
                    // SAFETY: as above.
                    assert!(!unsafe { all(base + lo, base + hi, 0xab) }, "{lo}..{hi} at {at}");
                    buf[at] = 0xab;
                }
                // A different byte just outside the range does not count.
                if lo > 0 {
                    buf[lo - 1] = 0;
                }
                buf[hi] = 0;
                // SAFETY: as above.
                assert!(unsafe { all(base + lo, base + hi, 0xab) }, "{lo}..{hi} edges");
                if lo > 0 {
                    buf[lo - 1] = 0xab;
                }
                buf[hi] = 0xab;
            }
        }
    }

    #[test]
    fn fills_touch_exactly_their_range() {
        for lo in 0..9 {
            for n in 0..100 {
                let mut buf = [0u8; 128];
                let base = buf.as_mut_ptr() as usize;
                // SAFETY: inside `buf`.
                unsafe { fill(base + lo, n, 0xfb) };
                for (i, &b) in buf.iter().enumerate() {
                    assert_eq!(b == 0xfb, (lo..lo + n).contains(&i), "{lo}+{n} at {i}");
                }
            }
        }
    }
}
