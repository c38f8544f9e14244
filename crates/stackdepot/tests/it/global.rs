//! The process-global depot: the only test in this binary that touches it.

#[test]
fn global_depot_budget_save_fetch_stats() {
    assert!(stackdepot::set_budget(4 << 20));
    let h = stackdepot::save(&[0xabc, 0xdef]);
    assert!(!h.is_none());
    assert!(!stackdepot::set_budget(1 << 30), "too late after the first save");
    assert_eq!(stackdepot::save(&[0xabc, 0xdef]), h);
    assert_eq!(stackdepot::fetch(h), Some(&[0xabc, 0xdef][..]));
    assert_eq!(stackdepot::global().fetch(h), stackdepot::fetch(h));
    let s = stackdepot::stats();
    assert_eq!((s.unique_traces, s.hits, s.lookups, s.bytes_budget), (1, 1, 2, 4 << 20));
    assert_eq!(s.hit_rate(), 0.5);
    assert!(s.bytes_mapped > 0 && s.bytes_mapped <= 4 << 20);
}
