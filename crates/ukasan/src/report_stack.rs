//! The one stack every report runs on, from its first step: the capture of the report's own
//! stack, the symbolizer (DWARF sections inflated, a 64 KiB frame buffer: 64 to 256 KiB in
//! all) and the formatting. A report can start anywhere: in a signal handler on an 8 KiB
//! `sigaltstack` (the classic `SIGSTKSZ`, of which an AVX-512 signal frame takes 3.4 KiB), on
//! a small thread stack close to its end, or in guarded mode's fault handler. There, only
//! the few hundred bytes from the entry point to [`run`] come from the caller's stack.
//!
//! One thread at a time holds the stack; the owner word is `pid << 32 | tid`, so a thread
//! already on it (a report that files another, a fault report that formats) runs on in place,
//! and a child of `fork` never waits for its parent's threads. Lock order: this stack, then
//! the report lock (`Reporter`); [`lock_for_fork`] takes it before the other runtime locks.

use crate::sys;
use core::ffi::c_void;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Bytes of the stack (`MAP_NORESERVE`: only the pages reports touch are ever backed).
const SIZE: usize = 1 << 20;
const PAGE: usize = 4096;

/// The top of the stack; 0: not mapped yet, 1: mapping failed (reports then run in place).
static TOP: AtomicUsize = AtomicUsize::new(0);
/// `pid << 32 | tid` of the thread on the stack; 0: free.
static OWNER: AtomicU64 = AtomicU64::new(0);

fn me() -> u64 {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    (pid as u64) << 32 | sys::tid() as u64
}

/// Maps the stack (with a guard page below it) unless it is mapped; async-signal-safe.
fn top() -> usize {
    // Acquire pairs with the Release below: the mapping is complete when its address shows.
    let t = TOP.load(Ordering::Acquire);
    if t != 0 {
        return t;
    }
    let t = match sys::map(SIZE + PAGE, PAGE, true) {
        Some(p) => {
            // SAFETY: the lowest page of the fresh mapping becomes the guard page.
            unsafe { libc::mprotect(p.cast(), PAGE, libc::PROT_NONE) };
            p as usize + PAGE + SIZE
        }
        None => 1,
    };
    // Release pairs with the Acquire above. Only the owner maps (see `run`), so no mapping
    // is lost to a race.
    TOP.store(t, Ordering::Release);
    t
}

/// Maps the stack ahead of the first report (a report from a handler then makes no `mmap`).
pub(crate) fn init() {
    let me = me();
    if OWNER.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed).is_ok() {
        top();
        OWNER.store(0, Ordering::Release);
    }
}

/// Takes the stack, waiting while another thread of this process is on it; `true`: taken
/// (release with [`release`]), `false`: this thread already holds it.
fn acquire(me: u64) -> bool {
    loop {
        // Acquire pairs with the Release in `release`: the previous owner is off the stack.
        match OWNER.compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(cur) if cur == me => return false,
            // A thread of the parent process (inherited over fork): it never runs here.
            Err(cur) if cur >> 32 != me >> 32 && cur != 0 => {
                if OWNER.compare_exchange(cur, me, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                    return true;
                }
            }
            Err(_) => core::hint::spin_loop(),
        }
    }
}

fn release() {
    // Release pairs with the Acquire in `acquire`.
    OWNER.store(0, Ordering::Release);
}

/// Runs `f` on the report stack, or in place when this thread is already on it or the stack
/// could not be mapped. Async-signal-safe; `f` must not unwind (a panic inside aborts).
pub(crate) fn run<F: FnOnce()>(f: F) {
    let me = me();
    if !acquire(me) {
        f();
        return;
    }
    let top = top();
    if top == 1 {
        f();
        release();
        return;
    }
    extern "C" fn trampoline<F: FnOnce()>(arg: *mut c_void) {
        // SAFETY: `run` passes its live `Option<F>`, used once.
        if let Some(f) = unsafe { &mut *(arg as *mut Option<F>) }.take() {
            f();
        }
    }
    let mut f = Some(f);
    // SAFETY: `top` is the 16-byte-aligned end of a writable mapping of SIZE bytes with a
    // guard page below; this thread owns it (OWNER) and no other uses it meanwhile;
    // `trampoline` cannot unwind (a panic in an `extern "C"` function aborts) and gets the
    // `Option<F>` it expects.
    unsafe {
        stacktrace::call_on_stack(top, trampoline::<F>, &mut f as *mut Option<F> as *mut c_void)
    };
    release();
}

/// Whether `sp` is on the report stack (a capture there belongs to the report itself).
#[cfg(test)]
fn contains(sp: usize) -> bool {
    let t = TOP.load(Ordering::Acquire);
    t > 1 && sp < t && sp >= t - SIZE
}

/// Takes the stack before `fork` (see the module's lock order).
pub(crate) fn lock_for_fork() {
    acquire(me());
}

/// Releases it in the parent after `fork`, and frees it in the child.
pub(crate) fn unlock_after_fork() {
    release();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp() -> usize {
        let x = 0u8;
        core::hint::black_box(&x) as *const u8 as usize
    }

    #[test]
    fn runs_on_the_report_stack_and_nests_in_place() {
        let mut outer = 0;
        let mut inner = 0;
        run(|| {
            outer = sp();
            run(|| inner = sp());
        });
        if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
            assert!(contains(outer), "{outer:#x}");
            // In place: not back at the top (the inner call may be inlined into the outer
            // closure's frame, so `<=`).
            assert!(contains(inner) && inner <= outer, "{inner:#x} {outer:#x}");
        }
        assert!(!contains(sp()));
        // Released: another thread takes it.
        let there = std::thread::spawn(|| {
            let mut s = 0;
            run(|| s = sp());
            s
        })
        .join()
        .unwrap();
        if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
            assert!(contains(there));
        }
    }

    #[test]
    fn an_owner_of_another_process_is_taken_over() {
        let me = me();
        let parent = me ^ (1 << 40);
        // Not a real owner: wait until the stack is free, then fake one from another pid.
        while OWNER.compare_exchange(0, parent, Ordering::Acquire, Ordering::Relaxed).is_err() {
            std::thread::yield_now();
        }
        assert!(acquire(me));
        assert_eq!(OWNER.load(Ordering::Relaxed), me);
        release();
    }
}
