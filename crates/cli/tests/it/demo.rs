//! The bundled demo against the real detector (built on demand like on a fresh clone).

use crate::{text, ukasan};

#[test]
fn demo_shows_a_report_per_bug_class() {
    let o = ukasan().output().unwrap();
    let (out, err) = text(&o);
    assert!(out.contains("=== 1/8: double-free (C"), "{out}\n{err}");
    assert!(out.contains("BUG: KASAN: double-free"), "{out}\n{err}");
    for kind in
        ["invalid-free", "out-of-bounds", "use-after-free", "memory-leak", "layout-mismatch"]
    {
        assert!(out.contains(&format!("BUG: KASAN: {kind}")), "{kind} missing:\n{out}\n{err}");
    }
    // Guarded mode's case: the read is reported at the read.
    assert!(out.contains("BUG: KASAN: slab-out-of-bounds read in total+"), "{out}\n{err}");
    assert!(out.contains("demo: 8 of 8 bug classes reported"), "{out}");
    assert!(o.status.success(), "{err}");
}
