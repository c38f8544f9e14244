// A Rust program (System allocator = malloc) for the preload tests: ./rustprog <scenario>.
use std::alloc::{dealloc, alloc, Layout};
use std::hint::black_box;

#[inline(never)]
fn rust_alloc_site(l: Layout) -> *mut u8 {
    black_box(unsafe { alloc(l) })
}

#[inline(never)]
fn rust_free_site(p: *mut u8, l: Layout) {
    unsafe { dealloc(black_box(p), l) }
}

fn main() {
    let v: Vec<String> = (0..2000).map(|i| format!("item {i}")).collect();
    let h = std::thread::spawn(move || v.join(",").len());
    println!("len={}", h.join().unwrap());
    if std::env::args().nth(1).as_deref() == Some("double-free") {
        let l = Layout::from_size_align(40, 8).unwrap();
        let p = rust_alloc_site(l);
        rust_free_site(p, l);
        rust_free_site(p, l);
    }
    println!("end");
}
