//! Child process for the software shadow stack's survival tests (`tests/it/softshadow.rs`):
//! `softshadow_child SCENARIO` runs one scenario with the cross-check on and prints
//! `ok SCENARIO` on success; any failure prints `FAIL ...` and exits with status 1 (or the
//! program crashes, which the test sees too). Process-wide state (patched stacks, signal
//! handlers, fork) is why each scenario gets a process of its own.

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod imp {
    use stacktrace::softshadow;
    use std::hint::black_box;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    fn fail(msg: &str) -> ! {
        println!("FAIL {msg}");
        std::process::exit(1)
    }

    macro_rules! check {
    ($c:expr, $($m:tt)*) => {
        if !$c {
            fail(&format!($($m)*))
        }
    };
}

    /// Captures with the software shadow stack and checks that it served.
    #[inline(never)]
    fn cap() -> usize {
        let mut buf = [0usize; 128];
        match softshadow::capture(&mut buf) {
            Ok(n) => n,
            Err(e) => fail(&format!("capture: {e} {:?}", softshadow::thread_stats())),
        }
    }

    static DROPS: AtomicUsize = AtomicUsize::new(0);

    struct Guard;
    impl Drop for Guard {
        fn drop(&mut self) {
            DROPS.fetch_add(1, Relaxed);
        }
    }

    /// `n` frames, each holding a guard, then `f`.
    #[inline(never)]
    fn guarded(n: usize, f: &mut dyn FnMut()) {
        let g = Guard;
        if n == 0 {
            f();
        } else {
            guarded(n - 1, f);
        }
        black_box(&g);
    }

    /// `n` plain frames, then `f`.
    #[inline(never)]
    fn recurse(n: usize, f: &mut dyn FnMut()) {
        if n == 0 {
            f();
        } else {
            recurse(n - 1, f);
        }
        black_box(n);
    }

    fn patched() -> usize {
        softshadow::thread_stats().patched
    }

    fn finish(name: &str) {
        let cc = softshadow::cross_check_stats();
        check!(cc.checks > 0 && cc.failures == 0, "cross-check {cc:?}");
        println!("ok {name}");
    }

    // ---- panics ---------------------------------------------------------------------------

    fn panic_caught() {
        let r = std::panic::catch_unwind(|| {
            guarded(40, &mut || {
                cap();
                check!(patched() >= 40, "frames patched before the panic: {}", patched());
                panic!("boom-caught");
            })
        });
        check!(r.is_err(), "the panic was caught");
        check!(DROPS.load(Relaxed) == 41, "every guard dropped: {}", DROPS.load(Relaxed));
        // Captures and returns still work afterwards (stale entries dropped).
        guarded(10, &mut || {
            cap();
        });
        cap();
    }

    fn panic_uncaught() {
        guarded(30, &mut || {
            cap();
            check!(patched() >= 30, "patched");
            // The test expects the panic message and exit status 101; the drops are printed by
            // the hook below, which runs after the unwind passed every patched frame.
            panic!("boom-uncaught");
        });
    }

    struct Report;
    impl Drop for Report {
        fn drop(&mut self) {
            println!("drops {}", DROPS.load(Relaxed));
        }
    }

    fn panic_thread() {
        let h = std::thread::spawn(|| {
            guarded(25, &mut || {
                cap();
                check!(patched() >= 25, "patched in thread");
                panic!("boom-thread");
            })
        });
        check!(h.join().is_err(), "thread panicked");
        check!(DROPS.load(Relaxed) == 26, "drops in thread: {}", DROPS.load(Relaxed));
    }

    // ---- other unwinders ------------------------------------------------------------------

    #[inline(never)]
    fn marker_frame_a(f: &mut dyn FnMut()) {
        marker_frame_b(f);
        black_box(());
    }

    #[inline(never)]
    fn marker_frame_b(f: &mut dyn FnMut()) {
        recurse(5, f);
        black_box(());
    }

    #[inline(never)]
    fn backtrace_std() {
        marker_frame_a(&mut || {
            cap();
            check!(patched() >= 7, "patched");
            let bt = std::backtrace::Backtrace::force_capture().to_string();
            for name in ["marker_frame_b", "marker_frame_a", "backtrace_std", "lang_start_internal"]
            {
                check!(bt.contains(name), "{name} missing from std backtrace:\n{bt}");
            }
        });
    }

    fn backtrace_glibc() {
        marker_frame_a(&mut || {
            let mut ours = [0usize; 128];
            let n = softshadow::capture(&mut ours).unwrap_or_else(|e| fail(&format!("{e}")));
            check!(patched() >= 7, "patched");
            let mut raw = [core::ptr::null_mut::<libc::c_void>(); 256];
            // SAFETY: `raw` has room for 256 entries.
            let m = unsafe { libc::backtrace(raw.as_mut_ptr(), 256) } as usize;
            let theirs: Vec<usize> = raw[..m]
                .iter()
                .map(|&p| p as usize)
                .filter(|&a| !softshadow::is_trampoline(a))
                .collect();
            // Every return address of ours but entry 0 (this closure's call site of `capture`,
            // not of `backtrace`) appears in glibc's trace, in order: it saw real addresses
            // through every patched frame.
            let mut it = theirs.iter();
            for (i, a) in ours[..n].iter().enumerate().skip(1) {
                check!(
                    it.any(|t| t == a),
                    "frame {i} ({a:#x}) missing from backtrace(): {theirs:x?}"
                );
            }
            check!(m > theirs.len(), "backtrace() showed trampoline pseudo-frames");
        });
    }

    // ---- pthread_exit / pthread_cancel ----------------------------------------------------

    extern "C" {
        fn pthread_cancel(t: libc::pthread_t) -> libc::c_int;
        fn pthread_testcancel();
    }

    static STARTED: AtomicUsize = AtomicUsize::new(0);

    extern "C-unwind" fn exit_thread(_: *mut libc::c_void) -> *mut libc::c_void {
        guarded(30, &mut || {
            cap();
            check!(patched() >= 30, "patched before pthread_exit");
            // SAFETY: ends this thread, unwinding (forced) through the frames above.
            unsafe { libc::pthread_exit(7 as *mut libc::c_void) };
        });
        core::ptr::null_mut()
    }

    extern "C-unwind" fn cancel_thread(_: *mut libc::c_void) -> *mut libc::c_void {
        guarded(30, &mut || {
            cap();
            check!(patched() >= 30, "patched before cancel");
            STARTED.store(1, Relaxed);
            loop {
                // SAFETY: a cancellation point.
                unsafe { pthread_testcancel() };
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        });
        core::ptr::null_mut()
    }

    fn run_pthread(
        start: extern "C-unwind" fn(*mut libc::c_void) -> *mut libc::c_void,
        cancel: bool,
    ) -> usize {
        let mut t: libc::pthread_t = 0;
        // SAFETY: the two ABIs are identical on this target; the start routine may unwind only
        // through the forced unwind that glibc drives.
        let f: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void =
            unsafe { core::mem::transmute(start) };
        // SAFETY: valid out-pointer, default attributes, a start routine with the right ABI.
        let created =
            unsafe { libc::pthread_create(&mut t, core::ptr::null(), f, core::ptr::null_mut()) };
        check!(created == 0, "create");
        if cancel {
            while STARTED.load(Relaxed) == 0 {
                std::thread::yield_now();
            }
            // SAFETY: `t` is a live thread.
            let r = unsafe { pthread_cancel(t) };
            check!(r == 0, "cancel");
        }
        let mut ret = core::ptr::null_mut();
        // SAFETY: joins our own thread once.
        let r = unsafe { libc::pthread_join(t, &mut ret) };
        check!(r == 0, "join");
        ret as usize
    }

    fn pthread_exit() {
        let r = run_pthread(exit_thread, false);
        check!(r == 7, "exit value {r}");
        check!(DROPS.load(Relaxed) == 31, "cleanups run by pthread_exit: {}", DROPS.load(Relaxed));
    }

    fn pthread_cancel_scenario() {
        let r = run_pthread(cancel_thread, true);
        check!(r == usize::MAX, "PTHREAD_CANCELED expected, got {r:#x}");
        check!(DROPS.load(Relaxed) == 31, "cleanups run by cancellation: {}", DROPS.load(Relaxed));
    }

    // ---- longjmp / siglongjmp -------------------------------------------------------------

    #[repr(C, align(16))]
    struct JmpBuf([u64; 64]);
    static mut JB: JmpBuf = JmpBuf([0; 64]);

    extern "C" {
        fn _setjmp(env: *mut JmpBuf) -> libc::c_int;
        fn longjmp(env: *mut JmpBuf, val: libc::c_int) -> !;
        fn __sigsetjmp(env: *mut JmpBuf, savemask: libc::c_int) -> libc::c_int;
        fn siglongjmp(env: *mut JmpBuf, val: libc::c_int) -> !;
    }

    fn jb() -> *mut JmpBuf {
        &raw mut JB
    }

    /// Returns a value through its own patched slot after a longjmp left stale entries above.
    #[inline(never)]
    fn jump_and_return(sig: bool) -> (f64, u128) {
        // SAFETY: `JB` outlives the jump, which targets this live frame; nothing but statics is
        // used across the second return.
        let r = unsafe {
            if sig {
                __sigsetjmp(jb(), 1)
            } else {
                _setjmp(jb())
            }
        };
        if r == 0 {
            recurse(30, &mut || {
                cap();
                if sig {
                    // SAFETY: the handler jumps out of itself to the live frame above.
                    unsafe { libc::raise(libc::SIGUSR1) };
                } else {
                    // SAFETY: see above.
                    unsafe { longjmp(jb(), 1) };
                }
            });
            fail("no jump");
        }
        // Stale entries above: captures still match, a deeper call patches and returns.
        cap();
        recurse(12, &mut || {
            cap();
        });
        cap();
        (black_box(2.5f64) * 2.0, (black_box(0x1234u128) << 70) | 0x55)
    }

    extern "C" fn jump_out(_: libc::c_int) {
        cap();
        // SAFETY: `JB` was set by `__sigsetjmp` in a frame that is still live.
        unsafe { siglongjmp(jb(), 1) };
    }

    fn longjmp_scenario(sig: bool) {
        if sig {
            // SAFETY: installs a plain handler for SIGUSR1.
            unsafe { libc::signal(libc::SIGUSR1, jump_out as *const () as usize) };
        }
        let before = patched();
        let mut out = (0.0, 0);
        recurse(3, &mut || {
            cap();
            out = jump_and_return(sig);
        });
        check!(out == (5.0, (0x1234u128 << 70) | 0x55), "value through the slow path: {out:?}");
        cap();
        check!(patched() <= before + 8, "stale entries dropped: {} (before {before})", patched());
        check!(softshadow::thread_stats().orphans == 0, "no orphan");
    }

    // ---- signals --------------------------------------------------------------------------

    static H_OK: AtomicUsize = AtomicUsize::new(0);
    static H_REENTERED: AtomicUsize = AtomicUsize::new(0);
    static H_IN_TRAMP: AtomicUsize = AtomicUsize::new(0);
    static H_OTHER: AtomicUsize = AtomicUsize::new(0);
    static TRAMP_AT: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn storm_handler(_: libc::c_int, _: *mut libc::siginfo_t, uc: *mut libc::c_void) {
        // SAFETY: `uc` is the handler's live ucontext.
        let pc = unsafe { stacktrace::regs_from_ucontext(uc) }.pc;
        let t = TRAMP_AT.load(Relaxed);
        if pc >= t && pc < t + 48 {
            H_IN_TRAMP.fetch_add(1, Relaxed);
        }
        let mut buf = [0usize; 64];
        recurse(3, &mut || match softshadow::capture(&mut buf) {
            Ok(_) => {
                H_OK.fetch_add(1, Relaxed);
            }
            Err(stacktrace::Unsupported::Reentered) => {
                H_REENTERED.fetch_add(1, Relaxed);
            }
            Err(_) => {
                H_OTHER.fetch_add(1, Relaxed);
            }
        });
        // The handler allocates (the interrupted code never does).
        black_box(Box::new([1u8; 48]));
    }

    fn find_trampoline() -> usize {
        let mut addr = 0;
        recurse(2, &mut || {
            cap();
            let fp = stacktrace::__private::read_fp();
            // SAFETY: this closure's frame record; its caller's slot was just patched.
            addr = unsafe { *((*(fp as *const usize)) as *const usize).add(1) };
        });
        addr
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// A random walk of the stack depth: captures at every step, descends or returns.
    #[inline(never)]
    fn wander(depth: usize, max: usize, rng: &mut Rng, left: &mut usize, buf_max: usize) {
        while *left > 0 {
            *left -= 1;
            let r = rng.next();
            let mut buf = [0usize; 256];
            let len = 1 + (r >> 20) as usize % buf_max;
            if softshadow::capture(&mut buf[..len]).is_err() {
                fail("capture in wander");
            }
            match r % 8 {
                0..=3 if depth < max => {
                    wander(depth + 1 + (r >> 8) as usize % 3, max, rng, left, buf_max)
                }
                4..=6 if depth > 0 => return,
                _ => {}
            }
        }
    }

    /// As [`wander`], with [`softshadow::capture_and_save`] at every step, checked against a
    /// plain capture and a whole save: the same trace (but entry 0, the call site), the same
    /// handle.
    #[inline(never)]
    fn wander_save(depth: usize, max: usize, rng: &mut Rng, left: &mut usize, buf_max: usize) {
        while *left > 0 {
            *left -= 1;
            let r = rng.next();
            let mut buf = [0usize; 256];
            let mut plain = [0usize; 256];
            let mut back = [0usize; 256];
            let len = 1 + (r >> 20) as usize % buf_max;
            let Ok(saved) = softshadow::capture_and_save(&mut buf[..len]) else {
                fail("capture_and_save in wander_save");
            };
            let Ok(n) = softshadow::capture(&mut plain[..len]) else { fail("capture") };
            let Some(got) = stackdepot::fetch(saved.handle, &mut back) else {
                fail("fetch of a saved handle")
            };
            check!(
                got.len() == saved.frames && got.len() == n,
                "lengths {} {} {n}",
                got.len(),
                saved.frames
            );
            check!(got[1..] == plain[1..n], "the saved trace is the captured one");
            plain[0] = got[0];
            check!(stackdepot::save(&plain[..n]) == saved.handle, "equal trace, equal handle");
            match r % 8 {
                0..=3 if depth < max => {
                    wander_save(depth + 1 + (r >> 8) as usize % 3, max, rng, left, buf_max)
                }
                4..=6 if depth > 0 => return,
                _ => {}
            }
        }
    }

    fn save_wander() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut left = 200_000;
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(move || {
                while left > 0 {
                    recurse(1, &mut || wander_save(0, 300, &mut rng, &mut left, 256));
                }
                let c = softshadow::thread_counters();
                check!(c.incremental_saves > 10_000, "incremental saves happen: {c:?}");
                // The memo answers some of them (each checked against a whole save above).
                check!(c.memo_hits > 1_000, "memo hits happen: {c:?}");
                check!(c.trampoline_returns > 0 && c.frames_patched > 0, "{c:?}");
                check!(c.captures >= 400_000, "{c:?}");
            })
            .unwrap()
            .join()
            .unwrap();
        let c = softshadow::counters();
        check!(c.incremental_saves > 10_000, "the exited thread's counters are kept: {c:?}");
        let cc = softshadow::cross_check_stats();
        check!(cc.failures == 0, "{cc:?}");
    }

    fn signal_storm() {
        let t = find_trampoline();
        check!(softshadow::is_trampoline(t), "trampoline found");
        TRAMP_AT.store(t, Relaxed);
        // SAFETY: installs an SA_SIGINFO handler for SIGALRM with a zeroed, valid sigaction.
        unsafe {
            let mut sa: libc::sigaction = core::mem::zeroed();
            sa.sa_sigaction = storm_handler as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigaction(libc::SIGALRM, &sa, core::ptr::null_mut());
        }
        // A 20 us real-time interval timer: the kernel delivers it to this (only) thread
        // wherever it is, however loaded the machine.
        let every = libc::timeval { tv_sec: 0, tv_usec: 20 };
        let timer = |v: libc::timeval| {
            let it = libc::itimerval { it_interval: v, it_value: v };
            // SAFETY: a valid itimerval; no old value requested.
            unsafe { libc::setitimer(libc::ITIMER_REAL, &it, core::ptr::null_mut()) };
        };
        timer(every);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut rounds = 0;
        while rounds < 4000
            && (rounds < 20 || H_IN_TRAMP.load(Relaxed) < 10 || H_REENTERED.load(Relaxed) < 10)
        {
            let mut left = 5_000;
            recurse(2, &mut || wander(0, 60, &mut rng, &mut left, 64));
            // Many returns through trampolines, few captures.
            for _ in 0..20 {
                recurse(40, &mut || {
                    cap();
                });
            }
            rounds += 1;
        }
        timer(libc::timeval { tv_sec: 0, tv_usec: 0 });
        let (ok, re, tr, other) = (
            H_OK.load(Relaxed),
            H_REENTERED.load(Relaxed),
            H_IN_TRAMP.load(Relaxed),
            H_OTHER.load(Relaxed),
        );
        println!("handler captures ok {ok}, reentered {re}, in trampoline {tr}, other {other}, rounds {rounds}");
        check!(ok > 0 && re > 0 && tr > 0 && other == 0, "signals hit captures and trampolines");
    }

    // ---- depth, threads, fork -------------------------------------------------------------

    #[inline(never)]
    fn deep(n: usize, total: usize) {
        if n.is_multiple_of(1000) {
            cap();
        }
        if n < total {
            deep(n + 1, total);
        } else {
            cap();
            check!(patched() > 8000, "array filled: {}", patched());
        }
        black_box(n);
    }

    fn deep_recursion() {
        std::thread::Builder::new()
            .stack_size(1 << 30)
            .spawn(|| {
                deep(0, 100_000);
                cap();
                check!(patched() < 64, "drained: {}", patched());
            })
            .unwrap()
            .join()
            .unwrap();
    }

    fn thread_exit() {
        for round in 0..2 {
            let hs: Vec<_> = (0..200)
                .map(|_| {
                    std::thread::spawn(|| {
                        let mut ok = false;
                        recurse(20, &mut || {
                            cap();
                            ok = softshadow::thread_stats().active && patched() >= 20;
                        });
                        ok
                    })
                })
                .collect();
            for h in hs {
                check!(h.join().unwrap(), "thread served by the shadow stack in round {round}");
            }
        }
        // Threads exiting with patched frames live (pthread_exit) still exit cleanly.
        for _ in 0..20 {
            DROPS.store(0, Relaxed);
            check!(run_pthread(exit_thread, false) == 7, "pthread_exit");
        }
    }

    fn fork_scenario() {
        recurse(20, &mut || {
            cap();
            let before = patched();
            // SAFETY: the child only captures, returns and `_exit`s.
            let pid = unsafe { libc::fork() };
            check!(pid >= 0, "fork");
            if pid == 0 {
                recurse(10, &mut || {
                    cap();
                });
                let ok = cap() > 20
                    && patched() == before
                    && softshadow::cross_check_stats().failures == 0;
                // SAFETY: ends the child without running the parent's atexit handlers.
                unsafe { libc::_exit(if ok { 42 } else { 1 }) };
            }
            let mut status = 0;
            // SAFETY: waits for our own child.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            check!(r == pid, "waitpid");
            check!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 42,
                "child status {status:#x}"
            );
            recurse(10, &mut || {
                cap();
            });
        });
        // The child returned through its copy of the patched frames in `fork_child_returns`
        // below; here the parent returns through its own.
        fork_child_returns();
    }

    /// The child returns all the way to `main` through patched frames and exits from there.
    fn fork_child_returns() {
        let mut child = 0;
        recurse(15, &mut || {
            cap();
            // SAFETY: see `fork_scenario`.
            child = unsafe { libc::fork() };
        });
        if child == 0 {
            cap();
            // SAFETY: see above.
            unsafe { libc::_exit(43) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(child, &mut status, 0) };
        check!(r == child, "waitpid 2");
        check!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 43,
            "child 2 status {status:#x}"
        );
    }

    // ---- return values --------------------------------------------------------------------

    static INSIDE: AtomicUsize = AtomicUsize::new(0);

    fn note() {
        cap();
        INSIDE.store(patched(), Relaxed);
    }

    #[inline(never)]
    fn ret_f64(x: f64) -> f64 {
        note();
        black_box(x) * 3.0
    }

    #[inline(never)]
    fn ret_u128(x: u64) -> u128 {
        note();
        ((black_box(x) as u128) << 64) | 0xfeed_beef
    }

    #[inline(never)]
    fn ret_pair(x: u64) -> (u64, u64) {
        note();
        (black_box(x) + 1, black_box(x) ^ 0xffff_0000_ffff)
    }

    #[repr(C)]
    #[derive(Debug, PartialEq, Clone, Copy)]
    struct F64x2 {
        a: f64,
        b: f64,
    }

    #[inline(never)]
    extern "C" fn ret_f64x2(x: f64) -> F64x2 {
        note();
        F64x2 { a: black_box(x) + 0.5, b: black_box(x) * -2.0 }
    }

    #[inline(never)]
    #[allow(improper_ctypes_definitions)] // __m128 has a defined C ABI on x86-64: xmm0
    extern "C" fn ret_m128(x: f32) -> core::arch::x86_64::__m128 {
        note();
        let x = black_box(x);
        // SAFETY: SSE is baseline on x86-64.
        unsafe { core::arch::x86_64::_mm_set_ps(x, x + 1.0, x + 2.0, x + 3.0) }
    }

    #[inline(never)]
    extern "C" fn ret_u128_c(x: u64) -> u128 {
        note();
        ((black_box(x) as u128) << 64) | (black_box(x) as u128 ^ 0xabcdef)
    }

    fn returned(what: &str) {
        let after = patched();
        let inside = INSIDE.load(Relaxed);
        check!(
            after + 1 == inside,
            "{what}: the return went through the trampoline ({inside} -> {after})"
        );
    }

    fn returns() {
        recurse(4, &mut || {
            cap();
            let v = ret_f64(1.25);
            returned("f64");
            check!(v == 3.75, "f64 {v}");
            let v = ret_u128(0x1111_2222_3333_4444);
            returned("u128");
            check!(v == (0x1111_2222_3333_4444u128 << 64) | 0xfeed_beef, "u128 {v:#x}");
            let v = ret_pair(0x10);
            returned("(u64, u64)");
            check!(v == (0x11, 0x10 ^ 0xffff_0000_ffff), "pair {v:x?}");
            let v = ret_f64x2(4.0);
            returned("{f64, f64}");
            check!(v == F64x2 { a: 4.5, b: -8.0 }, "f64x2 {v:?}");
            let v = ret_m128(7.0);
            returned("__m128");
            let mut out = [0f32; 4];
            // SAFETY: `out` holds 4 floats.
            unsafe { core::arch::x86_64::_mm_storeu_ps(out.as_mut_ptr(), v) };
            check!(out == [10.0, 9.0, 8.0, 7.0], "m128 {out:?}");
            let v = ret_u128_c(0x77);
            returned("u128 C");
            check!(v == (0x77u128 << 64) | (0x77 ^ 0xabcdef), "u128 C {v:#x}");
        });
    }

    // ---- C++ exceptions -------------------------------------------------------------------

    type CxxCatch = unsafe extern "C-unwind" fn(extern "C-unwind" fn()) -> libc::c_int;
    type CxxThrow = unsafe extern "C-unwind" fn(libc::c_int);

    static THROW: AtomicUsize = AtomicUsize::new(0);

    extern "C-unwind" fn throw_from_patched_frames() {
        guarded(30, &mut || {
            cap();
            check!(patched() >= 30, "patched before the throw");
            // SAFETY: `THROW` holds `cxx_throw` from the library loaded below; the exception
            // unwinds through Rust frames declared to allow it ("C-unwind" at the boundaries).
            let throw: CxxThrow = unsafe { core::mem::transmute(THROW.load(Relaxed)) };
            // SAFETY: see above.
            unsafe { throw(42) };
        });
    }

    /// `softshadow_child cxx-exception LIB`: LIB is a g++-built shared object with
    /// `int cxx_catch(void (*)())` (calls it, returns the caught int or -1) and
    /// `void cxx_throw(int)` (throws it).
    fn cxx_exception() {
        let lib = std::env::args().nth(2).unwrap_or_else(|| fail("library path missing"));
        let path = std::ffi::CString::new(lib).unwrap();
        // SAFETY: loads a library built by the test for this purpose.
        let h = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW) };
        check!(!h.is_null(), "dlopen");
        // SAFETY: looks up two symbols of that library.
        let (c, t) = unsafe {
            (libc::dlsym(h, c"cxx_catch".as_ptr()), libc::dlsym(h, c"cxx_throw".as_ptr()))
        };
        check!(!c.is_null() && !t.is_null(), "dlsym");
        THROW.store(t as usize, Relaxed);
        // SAFETY: `c` is `cxx_catch` with the signature above.
        let catch: CxxCatch = unsafe { core::mem::transmute(c) };
        let mut caught = 0;
        recurse(5, &mut || {
            cap();
            // SAFETY: see above.
            caught = unsafe { catch(throw_from_patched_frames) };
        });
        check!(caught == 42, "caught {caught}");
        check!(
            DROPS.load(Relaxed) == 31,
            "cleanups run by the C++ unwind: {}",
            DROPS.load(Relaxed)
        );
        cap();
    }

    // ---- switches, fibers, cross-check ----------------------------------------------------

    fn off_switch() {
        softshadow::set_enabled(false);
        let mut buf = [0usize; 64];
        check!(
            softshadow::capture(&mut buf) == Err(stacktrace::Unsupported::NotEnabled),
            "off before use"
        );
        let c = stacktrace::capture(&mut buf).unwrap();
        check!(c.backend == stacktrace::Backend::FramePointer, "chain falls back: {}", c.backend);
        softshadow::set_enabled(true);
        cap();
        let outer = patched();
        recurse(10, &mut || {
            cap();
            let p = patched();
            check!(p >= outer + 10, "on: patched {p}");
            softshadow::set_enabled(false);
            recurse(10, &mut || {
                // Frames already patched keep answering; nothing new is patched.
                cap();
                check!(patched() == p, "off: nothing new patched");
            });
            cap();
        });
        check!(patched() == outer, "patched frames drain as they return: {}", patched());
        // A thread with nothing patched steps aside while off.
        let fresh = std::thread::spawn(|| {
            let mut buf = [0usize; 64];
            softshadow::capture(&mut buf) == Err(stacktrace::Unsupported::NotEnabled)
        });
        check!(fresh.join().unwrap(), "off: a new thread is not served");
        softshadow::set_enabled(true);
        let per_thread = std::thread::spawn(|| {
            softshadow::set_thread_enabled(false);
            let mut buf = [0usize; 64];
            let off = softshadow::capture(&mut buf) == Err(stacktrace::Unsupported::NotEnabled);
            softshadow::set_thread_enabled(true);
            let mut on = false;
            recurse(5, &mut || {
                cap();
                on = patched() >= 5;
            });
            off && on
        });
        check!(per_thread.join().unwrap(), "per-thread switch");
    }

    static mut MAIN_CTX: core::mem::MaybeUninit<libc::ucontext_t> =
        core::mem::MaybeUninit::uninit();
    static mut FIBER_CTX: core::mem::MaybeUninit<libc::ucontext_t> =
        core::mem::MaybeUninit::uninit();
    static FIBER_RESULT: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn fiber_main() {
        let mut buf = [0usize; 64];
        let shadow = softshadow::capture(&mut buf);
        let any = stacktrace::capture(&mut buf);
        let ok = shadow == Err(stacktrace::Unsupported::NotEnabled)
            && any.is_ok_and(|c| c.backend != stacktrace::Backend::Shadow);
        FIBER_RESULT.store(if ok { 1 } else { 2 }, Relaxed);
        // SAFETY: both contexts are initialised; switches back to `fibers`.
        unsafe { libc::swapcontext((&raw mut FIBER_CTX).cast(), (&raw const MAIN_CTX).cast()) };
    }

    fn fibers() {
        recurse(8, &mut || {
            cap();
            let stack = vec![0u8; 256 * 1024];
            // SAFETY: standard getcontext/makecontext/swapcontext on a heap stack that outlives
            // the fiber; the fiber switches back before `stack` is dropped.
            unsafe {
                let f = (&raw mut FIBER_CTX).cast::<libc::ucontext_t>();
                libc::getcontext(f);
                (*f).uc_stack.ss_sp = stack.as_ptr() as *mut libc::c_void;
                (*f).uc_stack.ss_size = stack.len();
                (*f).uc_link = core::ptr::null_mut();
                libc::makecontext(f, fiber_main, 0);
                libc::swapcontext((&raw mut MAIN_CTX).cast(), f);
            }
            drop(stack);
        });
        check!(
            FIBER_RESULT.load(Relaxed) == 1,
            "fiber: shadow steps aside, another backend serves"
        );
        check!(
            !softshadow::thread_stats().patching,
            "thread stopped patching after a stack switch"
        );
        cap();
    }

    fn cross_check_2m() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let mut left = 2_000_000;
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(move || {
                while left > 0 {
                    recurse(1, &mut || wander(0, 600, &mut rng, &mut left, 256));
                }
            })
            .unwrap()
            .join()
            .unwrap();
        let cc = softshadow::cross_check_stats();
        check!(cc.checks >= 2_000_000, "2M captures checked: {cc:?}");
    }

    #[inline(never)]
    pub fn main() {
        let scenario = std::env::args().nth(1).unwrap_or_default();
        softshadow::set_cross_check(true);
        softshadow::set_min_unpatched(0);
        match scenario.as_str() {
            "panic-caught" => panic_caught(),
            "panic-uncaught" => {
                let _r = Report;
                panic_uncaught();
            }
            "panic-thread" => panic_thread(),
            "backtrace-std" => backtrace_std(),
            "backtrace-glibc" => backtrace_glibc(),
            "pthread-exit" => pthread_exit(),
            "pthread-cancel" => pthread_cancel_scenario(),
            "longjmp" => longjmp_scenario(false),
            "siglongjmp" => longjmp_scenario(true),
            "signal-storm" => signal_storm(),
            "deep-recursion" => deep_recursion(),
            "thread-exit" => thread_exit(),
            "fork" => fork_scenario(),
            "returns" => returns(),
            "off-switch" => off_switch(),
            "fibers" => fibers(),
            "cxx-exception" => cxx_exception(),
            "save-wander" => {
                softshadow::set_min_unpatched(policy_default());
                save_wander()
            }
            "cross-check-2m" => {
                softshadow::set_min_unpatched(policy_default());
                cross_check_2m()
            }
            other => fail(&format!("unknown scenario {other:?}")),
        }
        finish(&scenario);
    }

    fn policy_default() -> usize {
        softshadow::policy::DEFAULT_MIN_UNPATCHED
    }
}

fn main() {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    imp::main();
    // Elsewhere: say so and exit with 77 ("skipped"), a status no x86-64 scenario uses (they
    // exit 0, 1 or 101); the tests in `tests/it/softshadow.rs` do not run the child there.
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        println!("unsupported: the software shadow stack is x86-64 Linux only");
        std::process::exit(77)
    }
}
