//! The public entry points: skip count, agreement between backends, depth cap, threads,
//! signal handlers, no allocation.

use crate::alloc_count::count_allocs;
use stacktrace::{Backend, Unsupported};
use std::hint::black_box;

const DEPTH: usize = 64;

/// Which entry point a chain ends in.
#[derive(Clone, Copy)]
enum Entry {
    Default,
    With(Backend),
    Module(fn(&mut [usize]) -> Result<usize, Unsupported>),
}

#[inline(never)]
fn leaf(entry: Entry, buf: &mut [usize]) -> Result<usize, Unsupported> {
    let r = match entry {
        Entry::Default => stacktrace::capture(buf).map(|c| c.len),
        Entry::With(b) => stacktrace::capture_with(b, buf),
        Entry::Module(f) => f(buf),
    };
    black_box(r)
}

#[inline(never)]
fn mid(entry: Entry, buf: &mut [usize]) -> Result<usize, Unsupported> {
    black_box(leaf(black_box(entry), buf))
}

#[inline(never)]
fn top(entry: Entry, buf: &mut [usize]) -> Result<usize, Unsupported> {
    black_box(mid(black_box(entry), buf))
}

type ChainFn = fn(Entry, &mut [usize]) -> Result<usize, Unsupported>;

/// Start addresses of the chain's functions, innermost first.
fn chain_fns() -> [usize; 3] {
    [leaf as ChainFn as usize, mid as ChainFn as usize, top as ChainFn as usize]
}

/// Asserts that `trace` starts with return addresses inside leaf, mid, top in that order.
fn assert_chain(what: &str, trace: &[usize]) {
    assert!(trace.len() >= 3, "{what}: only {} frames: {trace:x?}", trace.len());
    let fns = chain_fns();
    let mut starts: Vec<usize> = fns.to_vec();
    starts.sort_unstable();
    for (i, &f) in fns.iter().enumerate() {
        let ra = trace[i];
        // Inside `f`: above its entry, below the next known function and within 4 KiB.
        let next = starts.iter().copied().find(|&s| s > f).unwrap_or(usize::MAX);
        assert!(
            ra > f && ra < next && ra - f < 4096,
            "{what}: frame {i} = {ra:#x} is not inside function at {f:#x} (trace {trace:x?})"
        );
    }
}

fn run(entry: Entry) -> Result<Vec<usize>, Unsupported> {
    let mut buf = [0usize; DEPTH];
    let n = top(entry, &mut buf)?;
    Ok(buf[..n].to_vec())
}

#[test]
fn skip_count_entry_zero_is_the_callers_return_address() {
    assert_chain("capture", &run(Entry::Default).unwrap());
    assert_chain("fp::capture", &run(Entry::Module(stacktrace::fp::capture)).unwrap());
    assert_chain("libgcc::capture", &run(Entry::Module(stacktrace::libgcc::capture)).unwrap());
    for b in [Backend::FramePointer, Backend::Libgcc] {
        assert_chain(b.name(), &run(Entry::With(b)).unwrap());
    }
}

#[test]
fn default_chain_reports_its_backend() {
    let mut buf = [0usize; DEPTH];
    let c = stacktrace::capture(&mut buf).unwrap();
    assert!(c.len > 0);
    assert_ne!(c.backend, Backend::Libgcc, "the default chain never uses libgcc");
}

#[test]
fn fp_and_libgcc_agree_on_the_chain() {
    // One call site for both (`run` may be inlined, e.g. on aarch64), so entry 3 matches.
    #[inline(never)]
    fn run_with(b: Backend) -> Vec<usize> {
        run(Entry::With(b)).unwrap()
    }
    let fp = run_with(Backend::FramePointer);
    let gcc = run_with(Backend::Libgcc);
    // The test harness's frames come from std without frame pointers, so compare the part
    // both walkers are sure of: our chain and the function that called it.
    assert_eq!(fp[..4], gcc[..4], "fp {fp:x?}\nlibgcc {gcc:x?}");
}

#[test]
fn depth_cap_is_honoured_by_every_backend() {
    for b in Backend::ALL {
        let mut buf = [0usize; 2];
        match top(Entry::With(b), &mut buf) {
            Ok(n) => assert_eq!(n, 2, "{b}"),
            Err(e) => assert!(!matches!(e, Unsupported::NoFrames), "{b}: {e}"),
        }
        let mut empty: [usize; 0] = [];
        if let Ok(n) = top(Entry::With(b), &mut empty) {
            assert_eq!(n, 0, "{b}");
        }
    }
}

#[test]
fn names_round_trip() {
    for b in Backend::ALL {
        assert_eq!(Backend::from_name(b.name()), Some(b));
    }
    assert_eq!(Backend::from_name("nope"), None);
}

#[test]
fn unsupported_backends_say_why() {
    // No CET, GCS or SCS on this x86-64 machine: explicit answers, never a crash.
    if cfg!(target_arch = "x86_64") {
        for b in [Backend::Gcs, Backend::Scs] {
            assert_eq!(run(Entry::With(b)), Err(Unsupported::NotCompiled), "{b}");
        }
    }
}

#[test]
fn eight_threads_capture_at_once() {
    let handles: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(|| {
                for _ in 0..2000 {
                    assert_chain("thread fp", &run(Entry::With(Backend::FramePointer)).unwrap());
                    assert_chain("thread default", &run(Entry::Default).unwrap());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn warm_captures_do_not_allocate() {
    let mut buf = [0usize; DEPTH];
    let mut checked = 0;
    for b in Backend::ALL {
        if b == Backend::Libgcc || top(Entry::With(b), &mut buf).is_err() {
            continue; // libgcc may allocate (documented); unsupported backends have no path
        }
        let (r, n) = count_allocs(|| top(Entry::With(b), &mut buf));
        assert!(r.is_ok(), "{b}");
        assert_eq!(n, 0, "{b} allocated {n} times");
        checked += 1;
    }
    assert!(checked >= 1, "no backend was checked");
    let _ = top(Entry::Default, &mut buf);
    let (r, n) = count_allocs(|| top(Entry::Default, &mut buf));
    assert!(r.is_ok());
    assert_eq!(n, 0, "default chain allocated {n} times");
    // The first capture on a fresh thread (stack bounds lookup) does not allocate either.
    std::thread::spawn(|| {
        let mut buf = [0usize; DEPTH];
        let (r, n) = count_allocs(|| top(Entry::Default, &mut buf));
        assert!(r.is_ok());
        assert_eq!(n, 0, "first capture on a thread allocated {n} times");
    })
    .join()
    .unwrap();
}

mod signal {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static SEEN: [AtomicUsize; 8] = [const { AtomicUsize::new(0) }; 8];
    static LEN: AtomicUsize = AtomicUsize::new(0);
    static INTERRUPTED_PC: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn handler(_sig: i32, _info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
        let mut buf = [0usize; 8];
        // SAFETY: `uc` is the ucontext argument of an SA_SIGINFO handler.
        let regs = unsafe { stacktrace::regs_from_ucontext(uc) };
        INTERRUPTED_PC.store(regs.pc, Ordering::Relaxed);
        // From the handler's own frame (default chain: async-signal-safe).
        if let Ok(c) = stacktrace::capture(&mut buf) {
            for (slot, &v) in SEEN.iter().zip(&buf[..c.len]) {
                slot.store(v, Ordering::Relaxed);
            }
            // Relaxed: read back on the same thread after `raise` returns.
            LEN.store(c.len, Ordering::Relaxed);
        }
    }

    #[inline(never)]
    fn raise_here() -> usize {
        // SAFETY: plain libc call; the handler is installed.
        unsafe { libc::raise(libc::SIGUSR2) };
        black_box(raise_here as fn() -> usize as usize)
    }

    #[test]
    fn capture_inside_a_signal_handler() {
        // SAFETY: installs a handler that only does async-signal-safe work.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction =
                handler as extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void) as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
        }
        raise_here();
        let n = LEN.load(Ordering::Relaxed);
        assert!(n >= 1, "the handler captured nothing");
        assert_ne!(INTERRUPTED_PC.load(Ordering::Relaxed), 0);
    }
}

/// Captures with `first` (twice, so the software shadow stack has patched the frames above
/// it), then with `second`, from the same frame.
#[inline(never)]
fn patched_then(depth: usize, second: Backend) -> Option<(Vec<usize>, Vec<usize>)> {
    if depth > 0 {
        return black_box(patched_then(black_box(depth - 1), second));
    }
    let mut a = [0usize; DEPTH];
    let mut b = [0usize; DEPTH];
    stacktrace::capture_with(Backend::Shadow, &mut a).ok()?;
    let n = stacktrace::capture_with(Backend::Shadow, &mut a).ok()?;
    let m = stacktrace::capture_with(second, &mut b).unwrap();
    Some((a[..n].to_vec(), b[..m].to_vec()))
}

#[test]
fn walkers_see_real_return_addresses_through_patched_frames() {
    // The shadow backend patches the return slots of the recursion; every other walker must
    // still report the real return addresses (through the stack shadow), not the trampoline.
    for b in [Backend::FramePointer, Backend::Dwarf, Backend::Libgcc] {
        let Some((shadow, other)) = patched_then(20, b) else {
            return; // not served on this thread: nothing was patched
        };
        assert!(shadow.len() > 20 && other.len() > 20, "{b}: {shadow:x?} / {other:x?}");
        // Entry 0 is each call site in `patched_then`; the callers above must agree.
        assert_eq!(shadow[1..21], other[1..21], "{b} differs from shadow");
    }
}
