//! Many threads allocating, reallocating and freeing each other's objects through one
//! detector instance: no report, no corruption, nothing left behind.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::mpsc;
use ukasan::Ukasan;

static STRESS: Ukasan<System> =
    Ukasan::with_options(System, "stacks=fp:quarantine_size_mb=1:detect_leaks=1:depth=100");

/// An object filled with a byte derived from its address and size.
struct Obj {
    p: usize,
    l: Layout,
}

fn fill(o: &Obj) {
    // SAFETY: `o.p` is a live allocation of `o.l.size()` bytes.
    unsafe { std::ptr::write_bytes(o.p as *mut u8, (o.p ^ o.l.size()) as u8, o.l.size()) };
}

fn check(o: &Obj) {
    // SAFETY: as in `fill`.
    let s = unsafe { std::slice::from_raw_parts(o.p as *const u8, o.l.size()) };
    assert!(s.iter().all(|&b| b == (o.p ^ o.l.size()) as u8), "object at {:#x} corrupted", o.p);
}

fn make(i: usize) -> Obj {
    let l = Layout::from_size_align(i % 700, 1 << (i % 8)).unwrap();
    // SAFETY: valid layout (zero size is fine for this allocator, which always has a header).
    let p = unsafe { STRESS.alloc(l) } as usize;
    assert!(p != 0 && p.is_multiple_of(l.align()));
    let o = Obj { p, l };
    fill(&o);
    o
}

fn release(o: Obj) {
    check(&o);
    // SAFETY: allocated by STRESS with this layout, freed once.
    unsafe { STRESS.dealloc(o.p as *mut u8, o.l) };
}

#[test]
fn threads_exchange_objects_without_reports() {
    let (tx, rx) = mpsc::channel::<Obj>();
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..5000 {
                    let mut o = make(i * 7 + t);
                    if i % 5 == 0 {
                        check(&o);
                        let n = (i * 13) % 900;
                        // SAFETY: live allocation with layout `o.l`.
                        let q = unsafe { STRESS.realloc(o.p as *mut u8, o.l, n) } as usize;
                        assert!(q != 0);
                        let kept = o.l.size().min(n);
                        // SAFETY: the first `kept` bytes were copied.
                        let s = unsafe { std::slice::from_raw_parts(q as *const u8, kept) };
                        assert!(s.iter().all(|&b| b == (o.p ^ o.l.size()) as u8));
                        o = Obj { p: q, l: Layout::from_size_align(n, o.l.align()).unwrap() };
                        fill(&o);
                    }
                    if i % 3 == 0 {
                        tx.send(o).unwrap(); // freed by the main thread
                    } else {
                        mine.push(o);
                    }
                    if mine.len() > 50 {
                        release(mine.swap_remove(i % 50));
                    }
                }
                mine.into_iter().for_each(release);
            })
        })
        .collect();
    drop(tx);
    for o in rx {
        release(o);
    }
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(STRESS.runtime().reports(), 0);
}
