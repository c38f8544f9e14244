//! The process-global depot: the only test in this binary that touches it.

#[test]
fn global_depot_budget_save_fetch_stats() {
    assert!(stackdepot::set_budget(4 << 20));
    let h = stackdepot::save(&[0xabc, 0xdef]);
    assert!(!h.is_none());
    assert!(!stackdepot::set_budget(1 << 30), "too late after the first save");
    assert_eq!(stackdepot::save(&[0xabc, 0xdef]), h);
    let mut buf = [0; 4];
    assert_eq!(stackdepot::fetch(h, &mut buf), Some(&[0xabc, 0xdef][..]));
    assert_eq!(stackdepot::global().fetch(h, &mut [0; 4]), Some(&[0xabc, 0xdef][..]));
    let on = stackdepot::save_on(h, 2, &[0x123]);
    let mut suffixes = [stackdepot::Handle::NONE; 3];
    assert_eq!(stackdepot::save_with_suffixes(&[0x123, 0xabc, 0xdef], &mut suffixes), on);
    assert_eq!(suffixes[1], h);
    let s = stackdepot::stats();
    assert_eq!((s.unique_traces, s.hits, s.lookups, s.bytes_budget), (2, 2, 4, 4 << 20));
    assert_eq!(s.hit_rate(), 0.5);
    assert!(s.bytes_mapped > 0 && s.bytes_mapped <= 4 << 20);
}
