//! Property tests: equal traces give equal handles, `fetch(save(t)) == t`, distinct traces
//! give distinct handles; empty and maximum-depth traces.

use std::collections::HashMap;

use proptest::prelude::*;
use stackdepot::{Depot, Handle, MAX_DEPTH};

/// Shared by all cases, so later cases also meet the records of earlier ones.
static D: Depot = Depot::new(64 << 20);

/// Frames from a small alphabet so that traces often share prefixes and suffixes.
fn trace(max: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![0x40_1000usize..0x40_1010, any::<usize>()], 0..=max)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 4 } else { 256 }, ..ProptestConfig::default() })]

    #[test]
    fn fetch_of_save_is_the_trace(t in trace(64)) {
        let h = D.save(&t);
        prop_assert!(!h.is_none());
        let mut buf = [0; MAX_DEPTH];
        prop_assert_eq!(D.fetch(h, &mut buf), Some(&t[..]));
        prop_assert_eq!(D.save(&t), h);
        prop_assert_eq!(D.save(&t.clone()), h);
        // A short buffer gets the newest frames.
        let k = t.len() / 2;
        prop_assert_eq!(D.fetch(h, &mut buf[..k]), Some(&t[..k]));
    }

    #[test]
    fn handles_are_equal_iff_traces_are(ts in prop::collection::vec(trace(6), 1..40)) {
        let mut seen: HashMap<Handle, Vec<usize>> = HashMap::new();
        let mut by_trace: HashMap<Vec<usize>, Handle> = HashMap::new();
        for t in &ts {
            let h = D.save(t);
            prop_assert!(!h.is_none());
            if let Some(prev) = seen.insert(h, t.clone()) {
                prop_assert_eq!(&prev, t, "two traces share handle {:?}", h);
            }
            if let Some(prev) = by_trace.insert(t.clone(), h) {
                prop_assert_eq!(prev, h, "one trace got two handles");
            }
        }
    }

    #[test]
    fn long_traces_are_truncated_to_max_depth(extra in 1usize..100, seed in any::<usize>()) {
        let t: Vec<usize> = (0..MAX_DEPTH + extra).map(|i| i.wrapping_mul(seed | 1)).collect();
        let h = D.save(&t);
        let mut buf = [0; MAX_DEPTH];
        prop_assert_eq!(D.fetch(h, &mut buf), Some(&t[..MAX_DEPTH]));
        prop_assert_eq!(D.save(&t[..MAX_DEPTH]), h);
        prop_assert_ne!(D.save(&t[..MAX_DEPTH - 1]), h);
    }

    #[test]
    fn extra_bits_do_not_change_the_trace(t in trace(8), bits in 0u32..32) {
        let h = D.save(&t);
        let tagged = h.with_extra(bits);
        prop_assert_eq!(tagged.extra(), bits);
        let (mut a, mut b) = ([0; 8], [0; 8]);
        prop_assert_eq!(D.fetch(tagged, &mut a), D.fetch(h, &mut b));
        prop_assert_eq!(Handle::from_raw(tagged.to_raw()), tagged);
    }

    /// An incremental save equals the whole save, for any split of the trace.
    #[test]
    fn save_on_a_suffix_is_the_whole_save(t in trace(40), cut in any::<prop::sample::Index>()) {
        let mut suffixes = vec![Handle::NONE; t.len() + 1];
        let h = D.save_with_suffixes(&t, &mut suffixes);
        prop_assert_eq!(h, D.save(&t));
        let k = cut.index(t.len() + 1);
        let base = if k == t.len() { D.save(&[]) } else { suffixes[k] };
        prop_assert_eq!(base, D.save(&t[k..]));
        prop_assert_eq!(D.save_on(base, t.len() - k, &t[..k]), h);
    }

    /// The decoder fuzz, through the public API: any raw handle (most of them naming the
    /// middle of a node) fetches `None` or some bounded trace, never a crash or a hang.
    #[test]
    fn made_up_handles_fetch_nothing_or_stored_frames(raws in prop::collection::vec(any::<u32>(), 1..64), near in any::<bool>()) {
        static F: Depot = Depot::new(1 << 20);
        let known: Vec<usize> = (0..24).map(|i| 0x40_1000 + i).chain([0x7f12_3456_789a, usize::MAX]).collect();
        let mut rng = 0x9e37_79b9u32;
        for len in 0..24 {
            let t: Vec<usize> = (0..len)
                .map(|_| {
                    rng = rng.wrapping_mul(747_796_405).wrapping_add(1);
                    known[(rng >> 27) as usize % known.len()]
                })
                .collect();
            F.save(&t);
        }
        for raw in raws {
            // Near the real ids (pool 1) or anywhere.
            let raw = if near { (1 << 18) | (raw & 0x3ff) } else { raw };
            let mut buf = [0; MAX_DEPTH];
            if let Some(t) = F.fetch(Handle::from_raw(raw), &mut buf) {
                prop_assert!(t.len() <= MAX_DEPTH);
            }
        }
    }
}

#[test]
fn empty_and_max_depth_traces_are_stored() {
    let d = Depot::new(1 << 20);
    let e = d.save(&[]);
    assert!(!e.is_none());
    let mut buf = [0; MAX_DEPTH];
    assert_eq!(d.fetch(e, &mut buf), Some(&[][..]));
    assert_eq!(d.save(&[]), e);
    let full: Vec<usize> = (1..=MAX_DEPTH).collect();
    let f = d.save(&full);
    assert_ne!(f, e);
    assert_eq!(d.fetch(f, &mut buf), Some(&full[..]));
    let s = d.stats();
    // Hits: saves that inserted nothing (both saves of the empty trace).
    assert_eq!((s.unique_traces, s.frames_stored, s.hits, s.lookups), (2, MAX_DEPTH as u64, 2, 3));
    assert_eq!((s.nodes, s.bytes_used), (MAX_DEPTH as u64, 12 * MAX_DEPTH as u64));
}

#[test]
fn none_and_foreign_handles_fetch_nothing() {
    let d = Depot::new(1 << 20);
    let mut buf = [0; 4];
    assert_eq!(d.fetch(Handle::NONE, &mut buf), None);
    // Nothing stored yet: no handle can resolve.
    for raw in [1, 2, 1 << 18, (1 << 18) | 5, u32::MAX] {
        assert_eq!(d.fetch(Handle::from_raw(raw), &mut buf), None, "raw {raw:#x}");
    }
}
