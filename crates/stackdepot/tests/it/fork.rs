//! A child after `fork()` can save new traces and fetch old ones.

#[cfg(not(miri))]
#[test]
fn fork_child_saves_and_fetches() {
    use stackdepot::Depot;

    static D: Depot = Depot::new(1 << 20);
    let old = D.save(&[0x1111, 0x2222]);
    let status = crate::in_child(|| {
        let new = D.save(&[0x3333, 0x4444, 0x5555]);
        if new.is_none() || new == old {
            return 1;
        }
        let mut buf = [0; 8];
        if D.fetch(new, &mut buf) != Some(&[0x3333, 0x4444, 0x5555][..]) {
            return 2;
        }
        if D.save(&[0x1111, 0x2222]) != old || D.fetch(old, &mut buf) != Some(&[0x1111, 0x2222][..])
        {
            return 3;
        }
        // On top of a stored trace, in the child's own copy.
        let on = D.save_on(old, 2, &[0x6666]);
        if on.is_none() || D.save(&[0x6666, 0x1111, 0x2222]) != on {
            return 4;
        }
        42
    });
    assert_eq!(status, 42);
    // The child's insert is its own: the parent does not see it.
    assert_eq!(D.stats().unique_traces, 1);
}
