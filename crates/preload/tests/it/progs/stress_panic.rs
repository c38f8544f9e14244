// Rust panics through frames patched by the software shadow stack, under load:
// ./stress_panic SECONDS. 4 load threads allocate, reallocate and free (contents checked);
// 3 panic threads recurse to a random depth, allocating at every level and keeping a guard
// whose Drop allocates while the panic unwinds, panic at the bottom and catch it with
// catch_unwind at a random level. Now and then, after a catch, a double free (libc) of an
// object allocated at a known depth: its report's allocation stack must show alloc_at_depth
// frames and then `panicker`, nothing stale. Prints counts.
use std::hint::black_box;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

extern "C" {
    fn malloc(n: usize) -> *mut u8;
    fn free(p: *mut u8);
}

static STOP: AtomicBool = AtomicBool::new(false);
static OPS: AtomicU64 = AtomicU64::new(0);
static PANICS: AtomicU64 = AtomicU64::new(0);
static CAUGHT: AtomicU64 = AtomicU64::new(0);
static MADE: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static DEPTHS: AtomicU32 = AtomicU32::new(0);

fn rng(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

struct Guard(#[allow(dead_code)] Vec<u8>);
impl Guard {
    fn new(level: usize) -> Guard {
        MADE.fetch_add(1, Relaxed);
        Guard(vec![level as u8; 16 + level % 32])
    }
}
impl Drop for Guard {
    fn drop(&mut self) {
        black_box(String::from("allocated while unwinding"));
        DROPPED.fetch_add(1, Relaxed);
    }
}

#[inline(never)]
fn dive(level: usize, depth: usize, catch_at: usize) -> usize {
    let _g = Guard::new(level);
    let s = black_box(Box::new([level; 4]));
    if level == depth {
        std::panic::panic_any(level);
    }
    if level == catch_at {
        return match catch_unwind(AssertUnwindSafe(|| dive(level + 1, depth, catch_at))) {
            Ok(v) => v,
            Err(e) => {
                CAUGHT.fetch_add(1, Relaxed);
                *e.downcast::<usize>().unwrap()
            }
        };
    }
    black_box(dive(level + 1, depth, catch_at)) + 1 + s[0] - level
}

#[inline(never)]
fn alloc_at_depth(depth: usize) -> *mut u8 {
    if depth == 0 {
        // SAFETY: plain libc malloc.
        return black_box(unsafe { malloc(48) });
    }
    black_box(alloc_at_depth(black_box(depth - 1)))
}

#[inline(never)]
fn deliberate_double_free(p: *mut u8) {
    // SAFETY: none: this is the bug the detector must report (the second free).
    unsafe {
        free(black_box(p));
        free(black_box(p));
    }
}

#[inline(never)]
fn panicker(t: u64, with_bugs: bool) {
    let mut s = 0x1234567 * (t + 3);
    while !STOP.load(Relaxed) {
        let depth = 1 + (rng(&mut s) % 150) as usize;
        let catch_at = (rng(&mut s) as usize) % depth;
        PANICS.fetch_add(1, Relaxed);
        let r = dive(0, depth, catch_at);
        assert_eq!(r, depth + catch_at, "depth {depth} catch_at {catch_at}");
        if with_bugs && rng(&mut s) % 64 == 0 {
            let d = (rng(&mut s) % 20) as usize;
            deliberate_double_free(alloc_at_depth(d));
            DEPTHS.fetch_or(1 << d, Relaxed);
        }
    }
}

fn load(t: u64) {
    let mut s = 0x9e3779b97f4a7c15u64.wrapping_mul(t + 1);
    let mut objs: Vec<Option<(Vec<u8>, u8)>> = (0..128).map(|_| None).collect();
    while !STOP.load(Relaxed) {
        let i = (rng(&mut s) % 128) as usize;
        let n = if rng(&mut s) % 100 == 0 { rng(&mut s) % 100_000 } else { rng(&mut s) % 400 };
        let tag = rng(&mut s) as u8;
        match objs[i].take() {
            None => objs[i] = Some((vec![tag; n as usize], tag)),
            Some((mut v, old)) => {
                assert!(v.iter().all(|&b| b == old), "corrupt");
                if rng(&mut s) % 2 == 0 {
                    v.resize(n as usize, old);
                    v.iter_mut().for_each(|b| *b = tag);
                    objs[i] = Some((v, tag));
                }
            }
        }
        OPS.fetch_add(1, Relaxed);
    }
}

fn main() {
    let secs: f64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2.0);
    let with_bugs = std::env::var_os("STRESS_NO_BUGS").is_none();
    std::panic::set_hook(Box::new(|_| {})); // stderr carries the reports only
    let mut ts = Vec::new();
    for t in 0..4 {
        ts.push(std::thread::spawn(move || load(t)));
    }
    for t in 0..3 {
        ts.push(std::thread::spawn(move || panicker(t, with_bugs)));
    }
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs_f64(secs) {
        std::thread::sleep(Duration::from_millis(20));
    }
    STOP.store(true, Relaxed);
    for t in ts {
        t.join().unwrap();
    }
    println!("ops={}", OPS.load(Relaxed));
    println!("panics={}\ncaught={}", PANICS.load(Relaxed), CAUGHT.load(Relaxed));
    println!("made={}\ndropped={}", MADE.load(Relaxed), DROPPED.load(Relaxed));
    println!("depths={}\nend", DEPTHS.load(Relaxed).count_ones());
}
