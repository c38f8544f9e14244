//! aarch64 only: ukasan's Shadow Call Stack backend (`stacktrace::shadow::scs`) run for real.
//!
//! `../check.sh` builds this crate (and std, with `-Zbuild-std`) with
//! `-Zsanitizer=shadow-call-stack -Zfixed-x18` and links `../scs-rt.c`, which gives every
//! thread a shadow call stack with a base marker before any Rust code runs, then runs the tests
//! under `qemu-aarch64`. On any other target this crate is empty.

#[cfg(all(test, target_arch = "aarch64"))]
mod tests {
    use std::hint::black_box;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};

    use stacktrace::shadow::{register_scs_base, scs};
    use stacktrace::{capture, capture_with, Backend, Unsupported};

    /// Inlined: with forced frame pointers even a leaf function pushes to the SCS.
    #[inline(always)]
    fn read_x18() -> usize {
        let v: usize;
        // SAFETY: reads a register, touches no memory.
        unsafe { core::arch::asm!("mov {}, x18", out(reg) v, options(nomem, nostack)) };
        v
    }

    /// One call site of `capture_with`, so entry 0 is the same for every backend.
    #[inline(never)]
    fn capture_in(backend: Backend, buf: &mut [usize]) -> Result<usize, Unsupported> {
        let r = capture_with(backend, buf);
        black_box(r)
    }

    /// `n` nested frames, then `f`.
    #[inline(never)]
    fn nest(n: u32, f: &mut dyn FnMut()) {
        if n == 0 {
            f();
        } else {
            nest(black_box(n - 1), f);
        }
        black_box(());
    }

    /// SCS and frame-pointer traces taken at the bottom of `depth` nested frames.
    fn both(depth: u32) -> (Vec<usize>, Vec<usize>) {
        let (mut s, mut f) = ([0usize; 64], [0usize; 64]);
        let (mut ns, mut nf) = (0, 0);
        nest(depth, &mut || {
            ns = capture_in(Backend::Scs, &mut s).expect("SCS serves this thread");
            nf = capture_in(Backend::FramePointer, &mut f).expect("FP serves this thread");
        });
        (s[..ns].to_vec(), f[..nf].to_vec())
    }

    fn check_agrees_with_frame_pointers() {
        assert!(scs::COMPILED, "built without -Zsanitizer=shadow-call-stack");
        let (s, f) = both(6);
        // capture_in, closure, nest(0), nest(1..=6), `both`: all SCS-instrumented frames.
        // Entry 1 (the return into the closure) differs: two call sites.
        assert!(s.len() >= 10 && f.len() >= 10, "scs {s:x?} fp {f:x?}");
        assert_eq!(s[0], f[0]);
        assert_ne!(s[1], f[1]);
        assert_eq!(s[2..10], f[2..10]);
        // The rest: the SCS misses uninstrumented frames (libc), never invents any.
        let mut it = f[2..].iter();
        assert!(s[2..].iter().all(|a| it.any(|b| b == a)), "scs {s:x?} not within {f:x?}");
    }

    #[test]
    fn scs_agrees_with_the_frame_pointer_walk() {
        check_agrees_with_frame_pointers();
    }

    /// With `SCS_PAC=1` the raw SCS entries carry PAC bits and the trace must not.
    #[test]
    fn entries_come_out_stripped() {
        let (s, _) = both(3);
        assert!(s.iter().all(|&a| a == stacktrace::strip_pac(a)), "{s:x?}");
        let x18 = read_x18();
        // SAFETY: the slot below x18 is this function's live SCS entry.
        let raw = unsafe { *((x18 - 8) as *const usize) };
        let signed = raw != stacktrace::strip_pac(raw);
        eprintln!("raw SCS entry {raw:#x}: {}", if signed { "PAC-signed" } else { "unsigned" });
        assert_eq!(signed, option_env!("UKASAN_SCS_PAC") == Some("1"));
    }

    #[test]
    fn depth_follows_the_nesting() {
        let (a, _) = both(2);
        let (b, _) = both(12);
        assert_eq!(b.len() - a.len(), 10);
    }

    #[test]
    fn default_capture_picks_scs_and_gcs_is_off() {
        let mut buf = [0usize; 16];
        let c = capture(&mut buf).unwrap();
        assert_eq!(c.backend, Backend::Scs);
        // qemu 7.2 has no FEAT_GCS; a newer one has it but the thread has not enabled it.
        assert_eq!(capture_in(Backend::Gcs, &mut buf), Err(Unsupported::NotEnabled));
        assert_eq!(capture_in(Backend::Cet, &mut buf), Err(Unsupported::NotCompiled));
    }

    #[test]
    fn depth_cap_is_the_buffer() {
        let mut buf = [0usize; 3];
        assert_eq!(capture_in(Backend::Scs, &mut buf), Ok(3));
        assert_eq!(capture_in(Backend::Scs, &mut []), Ok(0));
    }

    #[test]
    fn a_registered_base_ends_the_walk() {
        // One past this function's own entry: the walk keeps only the entries pushed by the
        // call below (the return into this function and the one into `capture_in`).
        register_scs_base(read_x18());
        let (mut f, mut s) = ([0usize; 16], [0usize; 16]);
        let mut r = [Ok(0); 2];
        for (i, (backend, buf)) in
            [(Backend::FramePointer, &mut f), (Backend::Scs, &mut s)].into_iter().enumerate()
        {
            r[i] = capture_in(backend, buf);
        }
        register_scs_base(0);
        assert!(r[0].unwrap() > 2);
        assert_eq!(r[1], Ok(2));
        assert_eq!(s[..2], f[..2]);
    }

    #[test]
    fn every_thread_has_its_own_shadow_stack() {
        // The threads capture only once all of them exist and exit only once all captured:
        // qemu-user's /proc/self/maps can miss a mapping while another thread maps or unmaps
        // (its shadow stack, its stack), and the SCS reader looks its mapping up there.
        let (start, end) = (Arc::new(Barrier::new(4)), Arc::new(Barrier::new(4)));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let (start, end) = (start.clone(), end.clone());
                std::thread::spawn(move || {
                    start.wait();
                    check_agrees_with_frame_pointers();
                    end.wait();
                    read_x18()
                })
            })
            .collect();
        let mut tops: Vec<usize> = hs.into_iter().map(|h| h.join().unwrap() >> 16).collect();
        tops.sort();
        tops.dedup();
        assert_eq!(tops.len(), 4);
    }

    static IN_HANDLER: [AtomicUsize; 32] = [const { AtomicUsize::new(0) }; 32];
    static IN_HANDLER_LEN: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn on_usr1(_sig: libc::c_int) {
        let mut buf = [0usize; 32];
        let n = capture_in(Backend::Scs, &mut buf).unwrap_or(0);
        for (slot, &a) in IN_HANDLER.iter().zip(&buf[..n]) {
            // Relaxed: read after `raise` returns on this same thread.
            slot.store(a, Ordering::Relaxed);
        }
        // Relaxed: as above.
        IN_HANDLER_LEN.store(n, Ordering::Relaxed);
    }

    #[test]
    fn capture_in_a_signal_handler_reaches_the_interrupted_frames() {
        let mut f = [0usize; 32];
        let mut nf = 0;
        nest(4, &mut || {
            nf = capture_in(Backend::FramePointer, &mut f).unwrap();
            // SAFETY: installs a handler that only captures into statics, then raises it.
            unsafe {
                libc::signal(
                    libc::SIGUSR1,
                    on_usr1 as extern "C" fn(libc::c_int) as libc::sighandler_t,
                );
                libc::raise(libc::SIGUSR1);
            }
        });
        // Relaxed: written by the handler on this thread before `raise` returned.
        let n = IN_HANDLER_LEN.load(Ordering::Relaxed);
        let h: Vec<usize> = IN_HANDLER[..n].iter().map(|a| a.load(Ordering::Relaxed)).collect();
        // The handler's trace holds the returns into nest(0..=4) and into this test, as the
        // frame-pointer walk at the raise site saw them (entries 2..8; entry 1, the return into
        // the closure from `raise`, is not on the SCS: libc is not instrumented).
        assert!(nf >= 8);
        let at = h.iter().position(|&a| a == f[2]).unwrap_or_else(|| panic!("{h:x?} vs {f:x?}"));
        assert!(at >= 2, "handler frames come first: {h:x?}");
        assert_eq!(h[at..at + 6], f[2..8]);
    }

    // ---- GCS for real: needs QEMU 11.1 (bookworm's 7.2 has no FEAT_GCS). check.sh names it
    // in UKASAN_GCS_QEMU when it could fetch it; the test then re-executes this binary under
    // it, where one thread turns GCS on and compares the GCS walk with the frame records.

    const GCS_CHILD: &str = "UKASAN_GCS_CHILD";

    /// `prctl(PR_SET_SHADOW_STACK_STATUS, PR_SHADOW_STACK_ENABLE, 0, 0, 0)` as a raw syscall,
    /// every unused argument register zeroed (the kernel refuses otherwise). Inlined: a
    /// function that turned GCS on cannot return (its return address is not on the GCS).
    #[inline(always)]
    fn enable_gcs() -> isize {
        let r: isize;
        // SAFETY: a syscall that only changes this thread's GCS state; the caller never
        // returns past this point (see `gcs_child`).
        unsafe {
            core::arch::asm!(
                "svc #0",
                inlateout("x0") 75isize => r,
                in("x1") 1usize,
                in("x2") 0usize,
                in("x3") 0usize,
                in("x4") 0usize,
                in("x8") 167usize, // prctl
                options(nostack),
            )
        };
        r
    }

    /// The GCS and frame-record traces from 4 nested frames, taken with GCS on.
    #[inline(never)]
    fn gcs_body() -> i32 {
        let (mut s, mut f) = ([0usize; 64], [0usize; 64]);
        let (mut rs, mut nf) = (Ok(0), 0);
        nest(4, &mut || {
            rs = capture_in(Backend::Gcs, &mut s);
            nf = capture_in(Backend::FramePointer, &mut f).unwrap_or(0);
        });
        let Ok(ns) = rs else {
            println!("gcs: capture refused: {rs:?}");
            return 1;
        };
        // Every call since GCS went on is on it, the returns into capture_in, the closure,
        // nest(0..=4), gcs_body and gcs_child; then the end of the GCS. Entry 1 (the return into the closure) differs: two
        // call sites. The frame walk goes on below (frames older than the enabling).
        let ok = ns == 9 && nf > ns && s[0] == f[0] && s[1] != f[1] && s[2..ns] == f[2..ns];
        println!("gcs: {ns} entries {:x?}, frame records {:x?}", &s[..ns], &f[..nf]);
        if ok {
            println!("gcs: {ns} frames agree with the frame records");
            0
        } else {
            1
        }
    }

    /// With GCS on, returning from a frame older than the enabling would fault (its return
    /// address is not on the new GCS): this ends the process instead.
    #[inline(never)]
    fn gcs_child() -> ! {
        let r = enable_gcs();
        if r != 0 {
            println!("gcs: prctl(PR_SET_SHADOW_STACK_STATUS) = {r}");
            // SAFETY: ends the process.
            unsafe { libc::_exit(3) };
        }
        let code = gcs_body();
        // SAFETY: ends the process without returning through pre-GCS frames.
        unsafe { libc::_exit(code) }
    }

    #[test]
    fn gcs_child_entry() {
        if std::env::var_os(GCS_CHILD).is_some() {
            gcs_child();
        }
    }

    #[test]
    fn gcs_walk_agrees_with_the_frame_records_under_qemu_11() {
        let Ok(qemu) = std::env::var("UKASAN_GCS_QEMU") else {
            eprintln!("UKASAN_GCS_QEMU not set: no QEMU with FEAT_GCS here, GCS not tested");
            return;
        };
        let o = std::process::Command::new(qemu)
            .args(["-L", "/usr/aarch64-linux-gnu", "-cpu", "max"])
            .arg(std::env::current_exe().unwrap())
            .args(["tests::gcs_child_entry", "--exact", "--nocapture", "--test-threads=1"])
            .env(GCS_CHILD, "1")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        eprintln!("{out}{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(o.status.code(), Some(0), "{out}");
        assert!(out.contains("gcs: 9 frames agree with the frame records"), "{out}");
    }
}
