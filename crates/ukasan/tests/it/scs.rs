//! ukasan's shadow-call-stack runtime (`ukasan::scs`), for real: aarch64 built with
//! `-Zsanitizer=shadow-call-stack` (aarch64/check.sh, under qemu). Elsewhere the runtime is
//! not built and the tests here only check that it says so.

#[test]
fn the_runtime_is_built_exactly_for_scs_builds() {
    let scs = stacktrace::shadow::scs::COMPILED;
    assert_eq!(ukasan::scs::BUILT, scs);
    assert_eq!(ukasan::scs::main_thread_stack().is_some(), scs);
    if !scs {
        eprintln!("not an aarch64 shadow-call-stack build: the SCS runtime is not built here");
    }
}

#[cfg(all(target_arch = "aarch64", ukasan_scs))]
mod on_scs {
    use std::hint::black_box;
    use std::process::Command;

    use stacktrace::shadow::scs::registered_scs_stack;
    use stacktrace::{capture_with, Backend, Unsupported};
    use ukasan::scs::SIZE;

    #[inline(always)]
    fn x18() -> usize {
        let v: usize;
        // SAFETY: reads a register, touches no memory.
        unsafe { core::arch::asm!("mov {}, x18", out(reg) v, options(nomem, nostack)) };
        v
    }

    /// One call site, so entry 0 is the same for both backends.
    #[inline(never)]
    fn capture_in(backend: Backend, buf: &mut [usize]) -> Result<usize, Unsupported> {
        black_box(capture_with(backend, buf))
    }

    #[inline(never)]
    fn nest(n: u32, f: &mut dyn FnMut()) {
        if n == 0 {
            f();
        } else {
            nest(black_box(n - 1), f);
        }
        black_box(());
    }

    /// The calling thread runs on a shadow stack this runtime mapped and registered: x18 in
    /// the registered region, the base marker below the base, and an SCS trace equal to the
    /// frame-record chain over the instrumented frames.
    fn check_this_thread() -> (usize, usize) {
        let (lo, hi, base) = registered_scs_stack();
        let x = x18();
        assert!(lo != 0 && hi == lo + SIZE && base == lo + 24, "{lo:#x} {hi:#x} {base:#x}");
        assert!(base < x && x < hi, "x18 {x:#x} outside [{base:#x}, {hi:#x})");
        // SAFETY: the marker word of the registered, live mapping.
        assert_eq!(unsafe { *((lo + 16) as *const usize) }, lo + 16);
        let (mut s, mut f) = ([0usize; 64], [0usize; 64]);
        let (mut ns, mut nf) = (0, 0);
        nest(5, &mut || {
            ns = capture_in(Backend::Scs, &mut s).expect("SCS serves this thread");
            nf = capture_in(Backend::FramePointer, &mut f).expect("FP serves this thread");
        });
        // capture_in, closure, nest(0..=5), this function: instrumented, on both. Entry 1
        // (the return into the closure) differs: two call sites.
        assert!(ns >= 9 && nf >= 9, "scs {:x?} fp {:x?}", &s[..ns], &f[..nf]);
        assert_eq!(s[0], f[0]);
        assert_eq!(s[2..9], f[2..9]);
        // The rest: the SCS misses uninstrumented frames (libc), never invents any.
        let mut it = f[2..nf].iter();
        assert!(s[2..ns].iter().all(|a| it.any(|b| b == a)), "{:x?} vs {:x?}", &s[..ns], &f[..nf]);
        (lo, hi)
    }

    #[test]
    fn the_main_thread_got_its_stack_before_any_rust_code() {
        let (lo, hi) = ukasan::scs::main_thread_stack().expect("the constructor ran");
        assert_eq!(hi - lo, SIZE);
        // The main thread's base marker.
        // SAFETY: the marker word of the main thread's live mapping.
        assert_eq!(unsafe { *((lo + 16) as *const usize) }, lo + 16);
        // libtest runs this test on a thread of its own: made by our pthread_create.
        let (tlo, _) = check_this_thread();
        assert_ne!(tlo, lo);
    }

    #[test]
    fn four_threads_get_four_shadow_stacks() {
        let hs: Vec<_> = (0..4).map(|_| std::thread::spawn(check_this_thread)).collect();
        let mut los: Vec<usize> = hs.into_iter().map(|h| h.join().unwrap().0).collect();
        los.sort();
        los.dedup();
        assert_eq!(los.len(), 4);
    }

    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    /// What `on_main` saw: SCS entries, frame records, their counts, and tid == pid.
    static MAIN_SCS: [AtomicUsize; 32] = [const { AtomicUsize::new(0) }; 32];
    static MAIN_FP: [AtomicUsize; 32] = [const { AtomicUsize::new(0) }; 32];
    static MAIN_LENS: [AtomicUsize; 3] = [const { AtomicUsize::new(0) }; 3];

    /// A constructor after ukasan's (`.init_array.00000`): libtest runs every test on a thread
    /// of its own, so this is where the main thread captures.
    extern "C" fn on_main() {
        let (mut s, mut f) = ([0usize; 32], [0usize; 32]);
        let (mut ns, mut nf) = (0, 0);
        nest(3, &mut || {
            ns = capture_in(Backend::Scs, &mut s).unwrap_or(0);
            nf = capture_in(Backend::FramePointer, &mut f).unwrap_or(0);
        });
        // Relaxed: read by a test thread created after this (ordered by its creation).
        for (slot, &a) in MAIN_SCS.iter().zip(&s[..ns]).chain(MAIN_FP.iter().zip(&f[..nf])) {
            slot.store(a, Relaxed);
        }
        // SAFETY: getpid and gettid have no preconditions.
        let main = unsafe { libc::getpid() as libc::c_long == libc::syscall(libc::SYS_gettid) };
        for (slot, v) in MAIN_LENS.iter().zip([ns, nf, usize::from(main)]) {
            // Relaxed: as above.
            slot.store(v, Relaxed);
        }
    }

    #[used]
    #[link_section = ".init_array.65000"]
    static AT_MAIN: extern "C" fn() = on_main;

    #[test]
    fn the_main_thread_walks_to_its_base_like_the_frame_records() {
        // Relaxed: see `on_main`.
        let [ns, nf, main] = MAIN_LENS.each_ref().map(|a| a.load(Relaxed));
        let s: Vec<usize> = MAIN_SCS[..ns].iter().map(|a| a.load(Relaxed)).collect();
        let f: Vec<usize> = MAIN_FP[..nf].iter().map(|a| a.load(Relaxed)).collect();
        assert_eq!(main, 1, "the constructor ran on the main thread");
        // The returns into capture_in, the closure, nest(0..=3), on_main and (pushed by
        // on_main's own prologue) into glibc's constructor loop, then the base: glibc is not
        // instrumented. The frame records go on below it. Entry 1 differs: two call sites.
        assert_eq!(ns, 8, "scs {s:x?} fp {f:x?}");
        assert!(nf > ns && s[0] == f[0] && s[1] != f[1] && s[2..] == f[2..ns], "{s:x?} {f:x?}");
    }

    const CHILD: &str = "UKASAN_IT_SCS_CHILD";

    #[inline(never)]
    #[allow(unconditional_recursion)] // until the shadow stack overflows
    fn recurse(n: usize) -> usize {
        if n.is_multiple_of(1024) {
            let line = format!("depth {n}\n");
            // SAFETY: writes a buffer we own to stderr.
            unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
        }
        black_box(recurse(black_box(n + 1))) + 1
    }

    /// The child of the overflow test: recursion until the shadow stack overflows.
    #[test]
    fn overflow_child() {
        if std::env::var_os(CHILD).is_some() {
            // A thread with an 8 MiB stack: the shadow stack (8 bytes a frame) runs out long
            // before it (tens of bytes a frame).
            let h = std::thread::Builder::new().stack_size(8 << 20).spawn(|| recurse(0));
            h.unwrap().join().ok();
            println!("not reached");
        }
    }

    #[test]
    fn an_overflow_faults_on_the_guard_page() {
        use std::os::unix::process::ExitStatusExt;
        let mut cmd: Command = crate::self_command();
        let o = cmd
            .args(["scs::on_scs::overflow_child", "--exact", "--nocapture"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.signal(), Some(libc::SIGSEGV), "{:?}\n{err}", o.status);
        // 8189 entries fit above the header: the fault comes at the 8190th push, so the last
        // line printed is depth 7168 (a stack without a guard would run on far beyond).
        let last = err.lines().filter_map(|l| l.strip_prefix("depth ")).last();
        assert_eq!(last, Some("7168"), "{err}");
    }
}
