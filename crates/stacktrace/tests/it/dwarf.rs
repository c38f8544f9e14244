//! The DWARF backend: agreement with FP and libgcc, walking through glibc code without frame
//! pointers (qsort), signal handlers (on alternate stacks from the kernel's minimum size up,
//! with the stack use measured), threads, no allocation.

use crate::alloc_count::count_allocs;
use stacktrace::{dwarf, fp, libgcc, Unsupported};
use std::hint::black_box;

const DEPTH: usize = 64;

/// Captures of one call site by the three backends.
struct Three {
    dwarf: Vec<usize>,
    fp: Vec<usize>,
    libgcc: Vec<usize>,
}

#[inline(never)]
fn trace(f: fn(&mut [usize]) -> Result<usize, Unsupported>) -> Vec<usize> {
    let mut buf = [0usize; DEPTH];
    let n = f(&mut buf).expect("capture");
    buf[..n].to_vec()
}

#[inline(never)]
fn chain_leaf() -> Three {
    let t = Three {
        dwarf: trace(dwarf::capture),
        fp: trace(fp::capture),
        libgcc: trace(libgcc::capture),
    };
    black_box(t)
}

// `black_box(&t)` after each call: code after the call, so it is never a tail call.
#[inline(never)]
fn chain_mid() -> Three {
    let t = chain_leaf();
    black_box(&t);
    t
}

#[inline(never)]
fn chain_top() -> Three {
    let t = chain_mid();
    black_box(&t);
    t
}

/// Whether `ra` is a return address inside the function starting at `f` (these test
/// functions are all far smaller than 1 KiB).
fn inside(ra: usize, f: usize) -> bool {
    ra > f && ra - f < 1024
}

#[test]
fn dwarf_fp_and_libgcc_agree_on_a_chain() {
    let t = chain_top();
    // Entry 0 is the return address into `trace`, one call site per backend; the chain
    // frames follow.
    for (what, tr) in [("dwarf", &t.dwarf), ("fp", &t.fp), ("libgcc", &t.libgcc)] {
        assert!(tr.len() >= 4, "{what}: {tr:x?}");
        assert!(inside(tr[1], chain_leaf as fn() -> Three as usize), "{what}: {tr:x?}");
        assert!(inside(tr[2], chain_mid as fn() -> Three as usize), "{what}: {tr:x?}");
        assert!(inside(tr[3], chain_top as fn() -> Three as usize), "{what}: {tr:x?}");
    }
    assert_eq!(t.dwarf[2..5], t.fp[2..5], "dwarf vs fp");
    // Both are DWARF unwinders: they agree all the way to the outermost frame.
    assert_eq!(t.dwarf[2..], t.libgcc[2..], "dwarf vs libgcc");
}

#[test]
fn depth_cap_and_empty_buffer() {
    let mut buf = [0usize; 3];
    assert_eq!(dwarf::capture(&mut buf), Ok(3));
    assert_eq!(dwarf::capture(&mut []), Ok(0));
}

#[test]
fn a_cold_cache_gives_the_same_trace() {
    let mut traces = Vec::new();
    for cold in [false, true] {
        if cold {
            dwarf::flush_cache();
        }
        traces.push(chain_top().dwarf); // one call site for both
    }
    assert_eq!(traces[0], traces[1]);
    assert!(dwarf::has_dl_find_object(), "glibc 2.36 here has _dl_find_object");
}

mod qsort {
    use super::*;
    use std::sync::Mutex;

    /// The comparator's captures: dwarf, fp, libgcc.
    type Captures = (Vec<usize>, Vec<usize>, Vec<usize>);
    static SEEN: Mutex<Option<Captures>> = Mutex::new(None);

    extern "C" fn compare(a: *const libc::c_void, b: *const libc::c_void) -> libc::c_int {
        let mut seen = SEEN.lock().unwrap();
        if seen.is_none() {
            *seen = Some((trace(dwarf::capture), trace(fp::capture), trace(libgcc::capture)));
        }
        // SAFETY: qsort passes pointers to two elements of the u64 array below.
        let (a, b) = unsafe { (*(a as *const u64), *(b as *const u64)) };
        a.cmp(&b) as libc::c_int
    }

    #[inline(never)]
    fn sort_caller() -> Vec<u64> {
        let mut v: Vec<u64> = (0..64).rev().collect();
        // SAFETY: a valid array of 64 u64 and a comparator for u64.
        unsafe { libc::qsort(v.as_mut_ptr().cast(), v.len(), 8, Some(compare)) };
        black_box(v)
    }

    fn in_libc(addr: usize) -> bool {
        // SAFETY: dladdr only writes `info`.
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        // SAFETY: any address may be asked about.
        if unsafe { libc::dladdr(addr as *const libc::c_void, &mut info) } == 0
            || info.dli_fname.is_null()
        {
            return false;
        }
        // SAFETY: dladdr returned a NUL-terminated file name.
        let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
        name.to_string_lossy().contains("libc.so")
    }

    #[test]
    fn dwarf_walks_through_glibc_qsort() {
        let v = sort_caller();
        assert!(v.windows(2).all(|w| w[0] <= w[1]));
        let (d, f, g) = SEEN.lock().unwrap().clone().expect("the comparator ran");
        let caller = sort_caller as fn() -> Vec<u64> as usize;
        // DWARF: comparator -> glibc qsort frames -> the Rust caller, exactly as libgcc.
        // Entries 0 and 1 are in `trace` and `compare`; the latter may lie right after
        // `sort_caller` (aarch64), so `inside` could take it for the caller: search from 2.
        let pos = d.iter().skip(2).position(|&ra| inside(ra, caller)).map(|p| p + 2);
        let pos = pos.unwrap_or_else(|| panic!("dwarf misses the caller of qsort: {d:x?}"));
        assert!(
            d[1..pos].iter().any(|&ra| in_libc(ra)),
            "no glibc frame before the caller: {d:x?}"
        );
        assert_eq!(d[2..], g[2..], "dwarf vs libgcc through qsort");
        // FP: Debian's x86-64 glibc keeps no frame records, so the walk stops or skips the
        // glibc frames. Its arm64 glibc does keep them (`stp x29, x30` + `mov x29, sp`): there
        // FP sees the same frames as DWARF.
        let fp_pos = f.iter().skip(2).position(|&ra| inside(ra, caller)).map(|p| p + 2);
        let fp_glibc = f.iter().filter(|&&ra| in_libc(ra)).count();
        let dwarf_glibc = d[..pos].iter().filter(|&&ra| in_libc(ra)).count();
        eprintln!(
            "qsort: dwarf {} frames, caller at {pos}, {dwarf_glibc} glibc frames before it; \
             fp {} frames, caller at {fp_pos:?}, {fp_glibc} glibc frames",
            d.len(),
            f.len()
        );
        if cfg!(target_arch = "x86_64") {
            assert!(
                fp_pos != Some(pos) || fp_glibc < dwarf_glibc,
                "fp unexpectedly matched dwarf: {f:x?}"
            );
        } else {
            assert_eq!(f[2..=pos], d[2..=pos], "fp vs dwarf through qsort");
        }
    }
}

mod signal {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// What the handler saw: a capture from the ucontext and one from its own frame.
    static FROM_UC: [AtomicUsize; DEPTH] = [const { AtomicUsize::new(0) }; DEPTH];
    static FROM_HANDLER: [AtomicUsize; DEPTH] = [const { AtomicUsize::new(0) }; DEPTH];
    static LENS: [AtomicUsize; 2] = [const { AtomicUsize::new(0) }; 2];
    /// How each capture ended: [`OK`], [`TOO_SMALL`] or [`OTHER`].
    static ENDS: [AtomicUsize; 2] = [const { AtomicUsize::new(0) }; 2];
    const OK: usize = 0;
    const TOO_SMALL: usize = 1;
    const OTHER: usize = 2;
    /// What the handler does: nothing, capture, or flush the rule cache and capture.
    static MODE: AtomicUsize = AtomicUsize::new(MODE_WARM);
    const MODE_NONE: usize = 0;
    const MODE_WARM: usize = 1;
    const MODE_COLD: usize = 2;
    /// Frame-pointer captures instead (their stack use only).
    const MODE_FP: usize = 3;

    fn store(to: &[AtomicUsize], r: Result<usize, Unsupported>, buf: &[usize], i: usize) {
        let (len, end) = (&LENS[i], &ENDS[i]);
        let e = match r {
            Ok(_) => OK,
            Err(Unsupported::StackTooSmall) => TOO_SMALL,
            Err(_) => OTHER,
        };
        // Relaxed: read back on this thread after the handler returned.
        end.store(e, Ordering::Relaxed);
        let n = r.unwrap_or(0);
        for (slot, &v) in to.iter().zip(&buf[..n]) {
            // Relaxed: read back on this thread after the handler returned.
            slot.store(v, Ordering::Relaxed);
        }
        len.store(n, Ordering::Relaxed);
    }

    extern "C" fn handler(_sig: i32, _info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
        // Relaxed: set by this thread before raising.
        match MODE.load(Ordering::Relaxed) {
            MODE_NONE => return,
            MODE_COLD => dwarf::flush_cache(),
            _ => {}
        }
        let mut buf = [0usize; DEPTH];
        // SAFETY: `uc` is the ucontext argument of an SA_SIGINFO handler.
        let regs = unsafe { stacktrace::regs_from_ucontext(uc) };
        if MODE.load(Ordering::Relaxed) == MODE_FP {
            black_box(fp::capture_from(&regs, &mut buf).ok());
            black_box(fp::capture(&mut buf).ok());
            HANDLED.fetch_add(1, Ordering::Release);
            return;
        }
        store(&FROM_UC, dwarf::capture_from(&regs, &mut buf), &buf, 0);
        store(&FROM_HANDLER, dwarf::capture(&mut buf), &buf, 1);
        // Release: publishes the stores above to a thread that waits for the count.
        HANDLED.fetch_add(1, Ordering::Release);
    }

    /// Handler runs so far.
    static HANDLED: AtomicUsize = AtomicUsize::new(0);

    /// A loop in the middle of a function: a signal interrupts it at an exact pc.
    #[inline(never)]
    fn spin(stop: &AtomicUsize) {
        // Relaxed: only a flag, set by the test thread.
        while stop.load(Ordering::Relaxed) == 0 {
            core::hint::spin_loop();
        }
    }

    #[inline(never)]
    fn spin_caller(stop: &AtomicUsize) {
        spin(stop);
        black_box(());
    }

    fn load(from: &[AtomicUsize], len: &AtomicUsize) -> Vec<usize> {
        // Relaxed: see `store`.
        from[..len.load(Ordering::Relaxed)].iter().map(|a| a.load(Ordering::Relaxed)).collect()
    }

    #[inline(never)]
    fn interrupted() {
        // SAFETY: plain libc call; the handler is installed.
        unsafe { libc::raise(libc::SIGUSR1) };
        black_box(());
    }

    fn install(flags: libc::c_int) {
        // SAFETY: installs a handler that only does async-signal-safe work.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction =
                handler as extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void) as usize;
            sa.sa_flags = libc::SA_SIGINFO | flags;
            assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
        }
    }

    /// The sizes of small alternate stacks to test: the kernel's minimum for this CPU plus a
    /// page for the handler, and `SIGSTKSZ` (glibc's, which is at least the kernel's
    /// minimum on glibc >= 2.34).
    fn small_altstack_sizes() -> [usize; 2] {
        // SAFETY: getauxval and sysconf have no preconditions.
        let (min, sig) =
            unsafe { (libc::getauxval(libc::AT_MINSIGSTKSZ) as usize, libc::sysconf(SC_SIGSTKSZ)) };
        let min = min.max(libc::MINSIGSTKSZ);
        let sig = if sig > 0 { sig as usize } else { libc::SIGSTKSZ.max(min) };
        [min + 4096, sig]
    }

    /// glibc's `_SC_SIGSTKSZ` (glibc >= 2.34).
    const SC_SIGSTKSZ: libc::c_int = 250;

    /// An alternate signal stack of exactly `size` bytes with a guard page below it.
    struct AltStack {
        map: *mut u8,
        size: usize,
    }

    impl AltStack {
        fn new(size: usize) -> AltStack {
            let page = 4096;
            let len = page + size.next_multiple_of(page);
            // SAFETY: a fresh anonymous mapping; its first page becomes the guard.
            let map = unsafe {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                assert_ne!(p, libc::MAP_FAILED);
                assert_eq!(libc::mprotect(p, page, libc::PROT_NONE), 0);
                p as *mut u8
            };
            AltStack { map, size }
        }

        /// The stack: the `size` bytes that end the mapping.
        fn bytes(&mut self) -> &mut [u8] {
            let len = 4096 + self.size.next_multiple_of(4096);
            // SAFETY: the last `size` bytes of our read-write mapping.
            unsafe { std::slice::from_raw_parts_mut(self.map.add(len - self.size), self.size) }
        }

        fn install(&mut self) {
            let sp = self.bytes().as_mut_ptr();
            let ss = libc::stack_t { ss_sp: sp.cast(), ss_flags: 0, ss_size: self.size };
            // SAFETY: the stack outlives its use (disabled before it is dropped).
            assert_eq!(unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) }, 0);
        }

        fn disable() {
            let ss = libc::stack_t {
                ss_sp: std::ptr::null_mut(),
                ss_flags: libc::SS_DISABLE,
                ss_size: 0,
            };
            // SAFETY: disables the alternate stack of this thread.
            assert_eq!(unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) }, 0);
        }
    }

    impl Drop for AltStack {
        fn drop(&mut self) {
            // SAFETY: our mapping, no longer the alternate stack.
            unsafe { libc::munmap(self.map.cast(), 4096 + self.size.next_multiple_of(4096)) };
        }
    }

    /// Both captures reach `interrupted`: from the ucontext directly, and from the handler
    /// through the signal trampoline.
    fn check(what: &str) -> (Vec<usize>, Vec<usize>) {
        let uc = load(&FROM_UC, &LENS[0]);
        let h = load(&FROM_HANDLER, &LENS[1]);
        let f = interrupted as fn() as usize;
        let at_uc = uc.iter().position(|&ra| inside(ra, f));
        let at_h = h.iter().position(|&ra| inside(ra, f));
        assert!(at_uc.is_some(), "{what}: ucontext capture misses the interrupted frames: {uc:x?}");
        assert!(at_h.is_some(), "{what}: handler capture stops at the trampoline: {h:x?}");
        // The handler's walk passes the trampoline and continues exactly as the ucontext
        // capture: the interrupted pc, then the same frames.
        let k = h.iter().position(|&pc| pc == uc[0]);
        let k = k.unwrap_or_else(|| panic!("{what}: no interrupted pc in {h:x?} (uc {uc:x?})"));
        assert!(k >= 2, "{what}: the handler and the trampoline come first: {h:x?}");
        assert_eq!(h[k..], uc[..h.len() - k], "{what}");
        (uc, h)
    }

    #[test]
    fn capture_in_a_sigusr1_handler_on_the_thread_stack_and_on_a_sigaltstack() {
        // 1. On the thread's own stack.
        install(0);
        interrupted();
        check("thread stack");

        // 2. On a painted alternate stack: the walk switches stacks at the trampoline, and
        //    the paint shows how much stack the kernel's frame, the handler and the capture
        //    used: without capturing, warm, and with a cold cache (every frame a miss).
        const SIZE: usize = 128 * 1024;
        const PAINT: u8 = 0xa5;
        let mut alt = AltStack::new(SIZE);
        alt.install();
        install(libc::SA_ONSTACK);
        let mut used = [0usize; 4];
        // The first warm round warms the cache for this call site of `interrupted`.
        let rounds = [
            (0, MODE_NONE),
            (1, MODE_WARM),
            (1, MODE_WARM),
            (2, MODE_COLD),
            (3, MODE_FP),
            (3, MODE_FP),
        ];
        for (slot, mode) in rounds {
            alt.bytes().fill(PAINT);
            MODE.store(mode, Ordering::Relaxed);
            interrupted();
            used[slot] =
                SIZE - alt.bytes().iter().position(|&b| b != PAINT).expect("the handler ran on it");
        }
        MODE.store(MODE_WARM, Ordering::Relaxed);
        AltStack::disable();
        check("sigaltstack");
        let [none, warm, cold, fp] = used;
        eprintln!(
            "sigaltstack use: kernel frame + handler {none} B; + dwarf warm {warm} B; \
             + dwarf cold {cold} B; + fp {fp} B (debug build: {}; MISS_STACK {} B)",
            cfg!(debug_assertions),
            dwarf::MISS_STACK
        );
        // (Other tests flush the cache in parallel: "warm" may include misses.)
        assert!(none < warm && none < cold, "{used:?}");
        // The room a miss asks for covers what a cold capture takes, in this profile.
        assert!(cold - none <= dwarf::MISS_STACK, "{used:?}");

        // 3. Small alternate stacks, sized from the kernel's minimum (`AT_MINSIGSTKSZ`: the
        //    signal frame alone, larger with AVX-512) plus a page for the handler, and
        //    `SIGSTKSZ`: warm and cold captures never overflow (a guard page below each
        //    stack would turn an overflow into a crash); they are served (cold misses run
        //    on the spare stack) or refused with `StackTooSmall`.
        for size in small_altstack_sizes() {
            let mut alt = AltStack::new(size);
            alt.install();
            for mode in [MODE_COLD, MODE_WARM, MODE_COLD] {
                MODE.store(mode, Ordering::Relaxed);
                interrupted();
                for (i, end) in ENDS.iter().enumerate() {
                    // Relaxed: written by the handler on this thread.
                    let end = end.load(Ordering::Relaxed);
                    assert_ne!(end, OTHER, "{size}-byte stack, mode {mode}, capture {i}");
                }
                if ENDS.iter().all(|e| e.load(Ordering::Relaxed) == OK) {
                    check(&format!("{size}-byte sigaltstack, mode {mode}"));
                }
            }
            MODE.store(MODE_WARM, Ordering::Relaxed);
            AltStack::disable();
            drop(alt);
        }

        // 4. Another thread interrupted in the middle of a loop (on the alternate stack that
        //    Rust's runtime gives every thread it spawns, SIGSTKSZ-sized): entry 0 is the exact pc
        //    inside `spin`, looked up as is, then its caller.
        let stop = std::sync::Arc::new(AtomicUsize::new(0));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let spinner = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                // SAFETY: pthread_self has no preconditions.
                tid_tx.send(unsafe { libc::pthread_self() }).unwrap();
                spin_caller(&stop);
            })
        };
        let tid = tid_rx.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20)); // let it enter `spin`
                                                                  // Acquire: pairs with the handler's Release increment.
        let before = HANDLED.load(Ordering::Acquire);
        // SAFETY: `tid` is a live thread (it spins until `stop` is set).
        assert_eq!(unsafe { libc::pthread_kill(tid, libc::SIGUSR1) }, 0);
        while HANDLED.load(Ordering::Acquire) == before {
            std::thread::yield_now();
        }
        // Relaxed: a flag; the join below orders everything else.
        stop.store(1, Ordering::Relaxed);
        spinner.join().unwrap();
        let uc = load(&FROM_UC, &LENS[0]);
        // Entry 0 is the exact pc: inside `spin`, or (unoptimised) inside the atomic load or
        // `spin_loop` it calls (and `_mm_pause` below that); then `spin` and its caller.
        let at = uc.iter().position(|&pc| inside(pc, spin as fn(&AtomicUsize) as usize));
        let at = at.unwrap_or_else(|| panic!("`spin` is not in {uc:x?}"));
        assert!(at <= 2, "{uc:x?}");
        assert!(inside(uc[at + 1], spin_caller as fn(&AtomicUsize) as usize), "{uc:x?}");
    }
}

#[inline(never)]
fn round() -> Vec<usize> {
    let t = chain_top().dwarf;
    black_box(&t);
    t
}

#[test]
fn eight_threads_capture_at_once() {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let first = round();
                assert!(inside(first[3], chain_top as fn() -> Three as usize), "{first:x?}");
                for _ in 0..200 {
                    let t = round();
                    // The chain and `round` itself; the callers of `round` may differ (the
                    // optimiser may duplicate its call site).
                    assert_eq!(t[..5], first[..5]);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[inline(never)]
fn warm_leaf(buf: &mut [usize]) -> Result<usize, Unsupported> {
    black_box(dwarf::capture(buf))
}

#[test]
fn warm_and_cold_captures_do_not_allocate() {
    let mut buf = [0usize; DEPTH];
    let _ = warm_leaf(&mut buf);
    let (r, n) = count_allocs(|| warm_leaf(&mut buf));
    assert!(r.unwrap() >= 2);
    assert_eq!(n, 0, "a warm capture allocated {n} times");
    dwarf::flush_cache();
    let (r, n) = count_allocs(|| warm_leaf(&mut buf));
    assert!(r.unwrap() >= 2);
    assert_eq!(n, 0, "a cold capture allocated {n} times");
}
