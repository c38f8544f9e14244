//! Budget exhaustion: `Handle::NONE`, exactly one warning line, and every trace stored
//! before keeps working.

use stackdepot::{Depot, Handle};

/// 16 frames, made distinct by `i`.
fn trace(i: usize) -> [usize; 16] {
    let mut t = [0x40_0000; 16];
    t[0] = i;
    t[15] = i * 3 + 1;
    t
}

/// Saves distinct traces until the depot refuses one; returns the handles given before.
fn fill(d: &Depot) -> Vec<Handle> {
    let mut stored = Vec::new();
    for i in 0.. {
        let h = d.save(&trace(i));
        if h.is_none() {
            return stored;
        }
        stored.push(h);
    }
    unreachable!()
}

#[test]
fn full_depot_returns_none_and_keeps_old_handles() {
    let d = Depot::new(64 << 10);
    let stored = fill(&d);
    // 16 frames without a shared part: 16 nodes of 12 bytes per trace, in a pool of the
    // 56 KiB left after the table.
    assert!(stored.len() > 250, "64 KiB should hold ~290 16-frame traces, held {}", stored.len());
    for _ in 0..5 {
        assert_eq!(d.save(&trace(1 << 40)), Handle::NONE);
    }
    for (i, h) in stored.iter().enumerate() {
        assert_eq!(d.fetch(*h, &mut [0; 16]), Some(&trace(i)[..]));
        assert_eq!(d.save(&trace(i)), *h, "a stored trace is still found when full");
    }
    let s = d.stats();
    assert!(s.bytes_mapped <= s.bytes_budget, "{s:?}");
    assert_eq!(s.warnings, 1);
    assert_eq!(s.dropped_full, 6);
    assert_eq!(s.unique_traces as usize, stored.len());
}

#[test]
fn zero_budget_stores_nothing() {
    let d = Depot::new(0);
    assert_eq!(d.save(&[1, 2]), Handle::NONE);
    assert_eq!(d.save(&[]), Handle::NONE);
    let s = d.stats();
    assert_eq!((s.bytes_mapped, s.warnings, s.dropped_full), (0, 1, 2));
}

#[test]
fn set_budget_works_only_before_the_first_mapping() {
    let d = Depot::new(0);
    assert!(d.set_budget(1 << 20));
    assert!(!d.save(&[1]).is_none());
    assert!(!d.set_budget(0));
    assert_eq!(d.stats().bytes_budget, 1 << 20);
}

/// The warning goes to the real fd 2 exactly once: checked in a child whose stderr is a
/// pipe.
#[cfg(not(miri))]
#[test]
fn full_depot_writes_exactly_one_warning_line_to_stderr() {
    use std::io::Read;
    use std::os::fd::FromRawFd;

    static D: Depot = Depot::new(64 << 10);
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let status = crate::in_child(|| {
        // SAFETY: replaces the child's stderr with the pipe's write end.
        unsafe { libc::dup2(fds[1], 2) };
        let mut nones = 0;
        let mut i = 0;
        while nones < 10 && i < 100_000 {
            nones += D.save(&trace(i)).is_none() as i32;
            i += 1;
        }
        if nones == 10 {
            0
        } else {
            1
        }
    });
    // SAFETY: the parent's copy of the write end is ours to close, so reading ends at EOF.
    unsafe { libc::close(fds[1]) };
    // SAFETY: the read end is an open descriptor we own from here on.
    let mut r = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    let mut out = String::new();
    r.read_to_string(&mut out).unwrap();
    assert_eq!(status, 0);
    assert_eq!(out.lines().count(), 1, "stderr: {out:?}");
    assert!(out.starts_with("ukasan: stack depot full (budget 65536 bytes)"), "{out:?}");
    // It names the option that raises the budget, with a value.
    assert!(
        out.contains("raise it with UKASAN_OPTIONS=depot_size_mb=2 (now 65536 bytes)"),
        "{out:?}"
    );
}
