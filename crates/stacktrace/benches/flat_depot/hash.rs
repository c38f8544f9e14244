//! The trace hash: four independent multiply lanes (so long traces are not one serial chain of
//! multiplications), folded and finished with the MurmurHash3 64-bit finalizer.
//!
//! The hash only picks a bucket and filters candidates; equality is always decided by comparing
//! every frame (see the crate docs), so its quality affects speed, never correctness.

const M: u64 = 0x9E37_79B9_7F4A_7C15;

/// MurmurHash3's `fmix64`: every input bit affects every output bit.
#[inline]
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[inline]
fn lane(h: u64, w: usize) -> u64 {
    (h ^ w as u64).wrapping_mul(M).rotate_left(31)
}

/// Hash of a trace (its length included, so a trace and its prefix differ).
#[inline]
pub(crate) fn hash(frames: &[usize]) -> u64 {
    let mut h = [
        M ^ frames.len() as u64,
        0x243F_6A88_85A3_08D3,
        0x1319_8A2E_0370_7344,
        0xA409_3822_299F_31D0,
    ];
    let mut chunks = frames.chunks_exact(4);
    for c in &mut chunks {
        h[0] = lane(h[0], c[0]);
        h[1] = lane(h[1], c[1]);
        h[2] = lane(h[2], c[2]);
        h[3] = lane(h[3], c[3]);
    }
    for (i, &w) in chunks.remainder().iter().enumerate() {
        h[i] = lane(h[i], w);
    }
    fmix64(h[0] ^ h[1].rotate_left(16) ^ h[2].rotate_left(32) ^ h[3].rotate_left(48))
}
