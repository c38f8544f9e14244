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
        prop_assert_eq!(D.fetch(h), Some(&t[..]));
        prop_assert_eq!(D.save(&t), h);
        prop_assert_eq!(D.save(&t.clone()), h);
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
        prop_assert_eq!(D.fetch(h), Some(&t[..MAX_DEPTH]));
        prop_assert_eq!(D.save(&t[..MAX_DEPTH]), h);
        prop_assert_ne!(D.save(&t[..MAX_DEPTH - 1]), h);
    }

    #[test]
    fn extra_bits_do_not_change_the_trace(t in trace(8), bits in 0u32..32) {
        let h = D.save(&t);
        let tagged = h.with_extra(bits);
        prop_assert_eq!(tagged.extra(), bits);
        prop_assert_eq!(D.fetch(tagged), D.fetch(h));
        prop_assert_eq!(Handle::from_raw(tagged.to_raw()), tagged);
    }
}

#[test]
fn empty_and_max_depth_traces_are_stored() {
    let d = Depot::new(1 << 20);
    let e = d.save(&[]);
    assert!(!e.is_none());
    assert_eq!(d.fetch(e), Some(&[][..]));
    assert_eq!(d.save(&[]), e);
    let full: Vec<usize> = (1..=MAX_DEPTH).collect();
    let f = d.save(&full);
    assert_ne!(f, e);
    assert_eq!(d.fetch(f), Some(&full[..]));
    let s = d.stats();
    assert_eq!((s.unique_traces, s.frames_stored, s.hits, s.lookups), (2, MAX_DEPTH as u64, 1, 3));
    assert_eq!(s.bytes_used, 16 + 16 + 8 * MAX_DEPTH as u64, "16-byte header + 8 per frame");
}

#[test]
fn none_and_foreign_handles_fetch_nothing() {
    let d = Depot::new(1 << 20);
    assert_eq!(d.fetch(Handle::NONE), None);
    // Nothing stored yet: no handle can resolve.
    for raw in [1, 2, 1 << 18, (1 << 18) | 5, u32::MAX] {
        assert_eq!(d.fetch(Handle::from_raw(raw)), None, "raw {raw:#x}");
    }
}
