//! The trie node encoding: 12 bytes per frame (16 for a return address whose high half is
//! not one of the depot's first [`HIGHS`] distinct high halves).
//!
//! A node is three or four 4-byte words in a pool:
//!
//! | word | bits | meaning |
//! |---|---|---|
//! | 0 | 0..27 | `next`: id of the next node of the same hash bucket (0 ends the chain) |
//! | 0 | 31 | [`TERMINAL`]: some `save` returned this node (for statistics only) |
//! | 1 | 0..27 | `parent`: id of the node of the caller's part of the trace |
//! | 1 | 27..32 | `high`: index of `ra >> 32` in the depot's table of high halves, or [`ESCAPE`] |
//! | 2 | all | `ra as u32` |
//! | 3 | all | `ra >> 32`, only when `high == ESCAPE` |
//!
//! Return addresses of one process share a handful of high halves (the executable's and the
//! libraries' mappings), so nearly every node is 12 bytes. Words 1..3 are written once, before
//! the node is published; word 0's [`TERMINAL`] bit is the only one set later (atomically).
//!
//! Pure functions over word arrays: compiled and tested (including a decoder fuzz) on every
//! host.

/// Bits of a node id (and of a handle's id part).
pub(crate) const ID_BITS: u32 = 27;
/// Mask of an id.
pub(crate) const ID_MASK: u32 = (1 << ID_BITS) - 1;
/// Word 0: "a save returned this node".
pub(crate) const TERMINAL: u32 = 1 << 31;
/// Distinct high halves the depot remembers; the index [`ESCAPE`] means "in word 3".
pub(crate) const HIGHS: usize = 31;
/// The `high` index of a node that carries its high half itself.
pub(crate) const ESCAPE: u32 = 31;
/// Largest node, in words.
pub(crate) const MAX_WORDS: usize = 4;

/// The words 1.. of a node for `(parent, ra)`, given the index of `ra >> 32` among the
/// depot's high halves (`None`: not among them). Returns the words and how many are used
/// (2 or 3).
#[inline]
pub(crate) fn encode(parent: u32, ra: usize, high: Option<u32>) -> ([u32; 3], usize) {
    debug_assert!(parent <= ID_MASK);
    let ra = ra as u64;
    match high {
        Some(i) if i < ESCAPE => ([parent | i << ID_BITS, ra as u32, 0], 2),
        _ => ([parent | ESCAPE << ID_BITS, ra as u32, (ra >> 32) as u32], 3),
    }
}

/// The `(parent, ra)` of the node whose words 1.. are `w` (at least 2; 3 when it escapes),
/// `highs(i)` giving high half number `i`; `None` for words no `encode` made with these highs
/// (an unknown high index, a missing third word, a return address that does not fit `usize`).
#[inline]
pub(crate) fn decode(w: &[u32], highs: impl Fn(u32) -> Option<u32>) -> Option<(u32, usize)> {
    let (&w1, &lo) = (w.first()?, w.get(1)?);
    let (parent, high) = (w1 & ID_MASK, w1 >> ID_BITS);
    let hi = if high == ESCAPE { *w.get(2)? } else { highs(high)? };
    let ra = usize::try_from(u64::from(hi) << 32 | u64::from(lo)).ok()?;
    Some((parent, ra))
}

/// Words a node takes (given its word 1).
#[cfg(test)]
fn words(w1: u32) -> usize {
    if w1 >> ID_BITS == ESCAPE {
        4
    } else {
        3
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn highs_of(table: &[u32]) -> impl Fn(u32) -> Option<u32> + '_ {
        move |i| table.get(i as usize).copied()
    }

    #[test]
    fn a_known_high_half_takes_three_words_an_unknown_one_four() {
        let highs = [0x5555u32, 0x7fff];
        let (w, n) = encode(42, 0x7fff_1234_5678, Some(1));
        assert_eq!((n, words(w[0])), (2, 3));
        assert_eq!(decode(&w[..n], highs_of(&highs)), Some((42, 0x7fff_1234_5678)));
        let (w, n) = encode(ID_MASK, 0x1234_0000_0001, None);
        assert_eq!((n, words(w[0])), (3, 4));
        assert_eq!(decode(&w[..n], highs_of(&highs)), Some((ID_MASK, 0x1234_0000_0001)));
        assert_eq!(decode(&w[..2], highs_of(&highs)), None, "escape without its word");
        let (w, _) = encode(1, 0x9999_0000_0000, Some(5));
        assert_eq!(decode(&w[..2], highs_of(&highs)), None, "unknown high index");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 8 } else { 4096 }, ..ProptestConfig::default() })]

        /// Encode then decode is the identity, with the high half known or not.
        #[test]
        fn round_trip(parent in 0..=ID_MASK, ra in any::<usize>(), known in any::<bool>()) {
            let highs = [(ra as u64 >> 32) as u32];
            let (w, n) = encode(parent, ra, known.then_some(0));
            prop_assert_eq!(n + 1, words(w[0]));
            prop_assert_eq!(decode(&w[..n], highs_of(&highs)), Some((parent, ra)));
        }

        /// The decoder fuzz: any words, any table, never a panic; what it accepts re-encodes
        /// to the same words.
        #[test]
        fn decoder_accepts_only_what_encode_makes(
            w in prop::collection::vec(any::<u32>(), 0..4),
            table in prop::collection::vec(any::<u32>(), 0..HIGHS),
        ) {
            if let Some((parent, ra)) = decode(&w, highs_of(&table)) {
                let high = w[0] >> ID_BITS;
                let (e, n) = encode(parent, ra, (high != ESCAPE).then_some(high));
                prop_assert_eq!(&e[..n], &w[..n]);
                prop_assert!(n <= w.len());
            }
        }
    }
}
