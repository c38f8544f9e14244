//! Stopping the other threads for the leak scan at exit, so that what only their registers,
//! stacks and static TLS hold counts as reachable.
//!
//! A thread still running when the program exits may hold the only pointer to an object: a
//! detached or scoped thread between the last use of its `Arc` and the free, a worker parked
//! with its state on its stack. LeakSanitizer stops every thread with `ptrace` from a tracer
//! task and reads their registers. Here it is a signal instead (no tracer, no ptrace
//! permission): each other thread of `/proc/self/task` gets a real-time signal whose handler
//! copies the interrupted registers into a slot, marks it stopped and waits on a futex until
//! the scan is over. The scan then reads each stopped thread's registers, its stack from the
//! interrupted stack pointer up and its static TLS and thread descriptor.
//!
//! Only when needed: the scan runs first without stopping anyone, and stops the world only
//! when that first pass found candidates (most programs exit with no leak, or one thread).
//!
//! Every listed thread is sent the signal, even one whose `SigBlk` shows it blocked: many
//! block every signal for a moment (glibc's `pthread_create` around `clone`, `posix_spawn`,
//! an emulator's own signal handling), and a pending signal is taken as soon as the mask
//! allows. Not stopped, and so not scanned: threads that still block the signal after
//! [`BLOCKED_GRACE_MS`] while no other thread is still to answer (a thread past glibc's point
//! of no return in `pthread_exit` has every signal blocked for good), threads that do not
//! answer within [`ANSWER_WAIT_MS`], and threads beyond [`MAX_THREADS`]. `SigBlk` numbers
//! the kernel's signals: under an emulator that maps signal numbers (qemu-user) it can be
//! wrong, which only costs the full wait. [`World::unstopped_tids`] names
//! them, so that the scan can let the world go, wait for the exiting ones to be gone
//! ([`wait_gone`]) and stop it again; their count is kept so that the report can say so.
//! The signal is one of the real-time signals the program left at its default disposition;
//! when there is none, nobody is stopped. A blocking call of a stopped
//! thread may return `EINTR` once (calls that `SA_RESTART` does not restart, `nanosleep`).
//!
//! Signal-safe throughout: raw system calls, fixed static slots, no allocation, no lock.

use core::sync::atomic::{AtomicI32, AtomicU32, AtomicUsize, Ordering};

/// Threads beyond this many are not stopped.
pub(crate) const MAX_THREADS: usize = 1024;
/// How long the scan waits for a thread to answer the signal.
pub(crate) const ANSWER_WAIT_MS: u64 = 1000;
/// How long every thread still to answer must have blocked the signal before the scan gives
/// up on them.
pub(crate) const BLOCKED_GRACE_MS: u64 = 20;

#[cfg(target_arch = "x86_64")]
const NREGS: usize = 23;
#[cfg(target_arch = "aarch64")]
const NREGS: usize = 32;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const NREGS: usize = 1;

const EMPTY: u32 = 0;
const ASKED: u32 = 1;
const STOPPED: u32 = 2;
const LEFT: u32 = 3;
const GONE: u32 = 4;
/// Asked, and given up on: it blocked the signal for [`BLOCKED_GRACE_MS`].
const BLOCKED: u32 = 5;
/// Asked, and given up on after [`ANSWER_WAIT_MS`].
const SILENT: u32 = 6;

struct Slot {
    tid: AtomicI32,
    state: AtomicU32,
    sp: AtomicUsize,
    tp: AtomicUsize,
    regs: [AtomicUsize; NREGS],
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            tid: AtomicI32::new(0),
            state: AtomicU32::new(EMPTY),
            sp: AtomicUsize::new(0),
            tp: AtomicUsize::new(0),
            regs: [const { AtomicUsize::new(0) }; NREGS],
        }
    }
}

/// Static, never unmapped: a handler that runs late (after the scan gave up on its thread)
/// still reads valid memory. Cleared after each stop (a forked child's own scan must not see
/// its parent's registers).
static SLOTS: [Slot; MAX_THREADS] = [const { Slot::new() }; MAX_THREADS];
/// Slots in use.
static USED: AtomicUsize = AtomicUsize::new(0);
/// 1 while the world is stopped: the futex word the handlers wait on.
static ACTIVE: AtomicU32 = AtomicU32::new(0);

/// The stopped world; dropping it lets the threads go.
pub(crate) struct World {
    sig: i32,
    old: libc::sigaction,
    used: usize,
    /// Threads neither stopped nor gone: not scanned.
    pub(crate) unstopped: usize,
    /// Whether the handler was installed and signals sent.
    installed: bool,
}

fn now_ms() -> u64 {
    // SAFETY: an all-zero timespec is valid output storage.
    let mut t: libc::timespec = unsafe { core::mem::zeroed() };
    // SAFETY: valid clock id and output pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000
}

/// Sleeps `ns` nanoseconds (under a second).
fn nap(ns: i64) {
    let pause = libc::timespec { tv_sec: 0, tv_nsec: ns };
    // SAFETY: a valid timespec; the remainder is not wanted.
    unsafe { libc::nanosleep(&pause, core::ptr::null_mut()) };
}

/// The raw `gettid`, not [`crate::sys::tid`]: the handler runs in threads whose runtime
/// thread-local may be gone (a thread in its TLS destructors).
fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// `tgkill(getpid(), tid, sig)`: 0 or the errno.
fn tgkill(tid: i32, sig: i32) -> i32 {
    // SAFETY: tgkill has no memory preconditions.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, sig) };
    if r == 0 {
        0
    } else {
        crate::sys::errno()
    }
}

/// The calling thread's thread pointer (x86-64 `%fs:0`, aarch64 `tpidr_el0`); 0 elsewhere.
pub(crate) fn thread_pointer() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let tp: usize;
        // SAFETY: reads the TCB self-pointer at %fs:0 (glibc x86-64 ABI).
        unsafe {
            core::arch::asm!("mov {}, fs:0", out(reg) tp, options(nostack, readonly, preserves_flags))
        };
        tp
    }
    #[cfg(target_arch = "aarch64")]
    {
        let tp: usize;
        // SAFETY: reads the thread pointer register.
        unsafe {
            core::arch::asm!("mrs {}, tpidr_el0", out(reg) tp, options(nomem, nostack, preserves_flags))
        };
        tp
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    0
}

/// Copies the interrupted general registers and stack pointer out of a signal context.
///
/// # Safety
/// `ctx` is the `ucontext_t` the kernel passed to an `SA_SIGINFO` handler.
unsafe fn save_context(ctx: *mut libc::c_void, slot: &Slot) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: per the contract, `ctx` is a valid ucontext_t.
        let g = unsafe { &(*(ctx as *const libc::ucontext_t)).uc_mcontext.gregs };
        for (d, &s) in slot.regs.iter().zip(g.iter()) {
            d.store(s as usize, Ordering::Relaxed);
        }
        slot.sp.store(g[libc::REG_RSP as usize] as usize, Ordering::Relaxed);
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: per the contract, `ctx` is a valid ucontext_t.
        let m = unsafe { &(*(ctx as *const libc::ucontext_t)).uc_mcontext };
        for (d, &s) in slot.regs.iter().zip(m.regs.iter()) {
            d.store(s as usize, Ordering::Relaxed);
        }
        slot.regs[31].store(m.pc as usize, Ordering::Relaxed);
        slot.sp.store(m.sp as usize, Ordering::Relaxed);
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = (ctx, slot);
    }
}

extern "C" fn on_stop(_sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let saved = crate::sys::errno();
    // Acquire pairs with the Release stores in `World::stop`: the slots are filled.
    if ACTIVE.load(Ordering::Acquire) == 1 {
        let tid = gettid();
        let used = USED.load(Ordering::Acquire).min(MAX_THREADS);
        if let Some(slot) = SLOTS[..used].iter().find(|s| s.tid.load(Ordering::Relaxed) == tid) {
            // SAFETY: the kernel passed `ctx` to this SA_SIGINFO handler.
            unsafe { save_context(ctx, slot) };
            slot.tp.store(thread_pointer(), Ordering::Relaxed);
            // Only a thread that was asked and not given up on stops (AcqRel: the register
            // stores above are published with STOPPED).
            if slot
                .state
                .compare_exchange(ASKED, STOPPED, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                // Acquire pairs with the Release store of 0 in `World::drop`.
                while ACTIVE.load(Ordering::Acquire) == 1 {
                    // SAFETY: FUTEX_WAIT on a static word; returns on wake, signal or change.
                    unsafe {
                        libc::syscall(
                            libc::SYS_futex,
                            ACTIVE.as_ptr(),
                            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                            1u32,
                            core::ptr::null::<libc::timespec>(),
                        )
                    };
                }
                // Release: the scan may clear the slot once it sees LEFT.
                slot.state.store(LEFT, Ordering::Release);
            }
        }
    }
    // SAFETY: errno location is valid for this thread.
    unsafe { *libc::__errno_location() = saved };
}

/// The highest real-time signal at or below `below` that the program has left at `SIG_DFL`,
/// with the old action.
fn free_signal(below: i32) -> Option<(i32, libc::sigaction)> {
    let (lo, hi) = (libc::SIGRTMIN(), libc::SIGRTMAX().min(below));
    for sig in (lo..=hi).rev() {
        // SAFETY: an all-zero sigaction is valid output storage.
        let mut old: libc::sigaction = unsafe { core::mem::zeroed() };
        // SAFETY: queries only (null new action).
        if unsafe { libc::sigaction(sig, core::ptr::null(), &mut old) } == 0
            && old.sa_sigaction == libc::SIG_DFL
        {
            return Some((sig, old));
        }
    }
    None
}

/// Whether thread `tid` blocks `sig` (its `SigBlk` line); unknown counts as blocked.
fn blocks(tid: i32, sig: i32) -> bool {
    let mut path = crate::sys::FixedBuf::<48>::new();
    let _ = core::fmt::write(&mut path, format_args!("/proc/self/task/{tid}/status"));
    let mut buf = [0u8; 4096];
    let Ok(n) = crate::sys::read_file(path.as_bytes(), &mut buf) else {
        return true;
    };
    sigblk(&buf[..n]).is_none_or(|mask| mask & (1u64 << (sig - 1)) != 0)
}

/// The `SigBlk:` mask of a `/proc/<pid>/status` text.
fn sigblk(status: &[u8]) -> Option<u64> {
    let line = status.split(|&b| b == b'\n').find(|l| l.starts_with(b"SigBlk:"))?;
    let hex = core::str::from_utf8(&line[7..]).ok()?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Calls `f` with every thread id in `/proc/self/task` (raw `getdents64`, no allocation).
fn for_each_tid(mut f: impl FnMut(i32)) -> bool {
    // SAFETY: a NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c"/proc/self/task".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return false;
    }
    let mut buf = [0u64; 512];
    loop {
        // SAFETY: getdents64 into a buffer we own, of the size given.
        let n = unsafe {
            libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), core::mem::size_of_val(&buf))
        };
        if n <= 0 {
            break;
        }
        // SAFETY: the kernel wrote `n` bytes of linux_dirent64 records into `buf`.
        let bytes = unsafe { core::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
        let mut off = 0;
        while off + 19 < bytes.len() {
            let reclen = u16::from_ne_bytes([bytes[off + 16], bytes[off + 17]]) as usize;
            if reclen == 0 {
                break;
            }
            let name = &bytes[off + 19..(off + reclen).min(bytes.len())];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if let Some(tid) = parse_tid(name) {
                f(tid);
            }
            off += reclen;
        }
    }
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(fd) };
    true
}

fn parse_tid(name: &[u8]) -> Option<i32> {
    if name.is_empty() || name.len() > 9 || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(name.iter().fold(0i32, |a, &d| a * 10 + (d - b'0') as i32))
}

/// How long [`wait_gone`] waits at most.
pub(crate) const GONE_WAIT_MS: u64 = 2000;
/// [`wait_gone`] stops when no thread has gone for this long.
pub(crate) const QUIET_MS: u64 = 100;

/// Waits, with the world running, until the threads `tids` are gone, or none of them has
/// gone for [`QUIET_MS`], or [`GONE_WAIT_MS`] have passed. Threads past the point of no
/// return of their exit go within milliseconds once nothing holds them up (hundreds of
/// them queue on glibc's stack-cache lock at the exit of a program that spawned many); a
/// thread that blocks signals for good costs [`QUIET_MS`].
pub(crate) fn wait_gone(tids: &mut [i32]) {
    let start = now_ms();
    let mut last_gone = start;
    let mut left = tids.len();
    while left > 0 {
        let before = left;
        let mut i = 0;
        while i < left {
            if tgkill(tids[i], 0) == libc::ESRCH {
                left -= 1;
                tids.swap(i, left);
            } else {
                i += 1;
            }
        }
        let now = now_ms();
        if left < before {
            last_gone = now;
        }
        if left == 0 || now - last_gone >= QUIET_MS || now - start >= GONE_WAIT_MS {
            break;
        }
        nap(1_000_000);
    }
}

impl World {
    /// Stops every other thread that can be stopped; `None` when no signal is free.
    pub(crate) fn stop() -> Option<World> {
        let me = gettid();
        let mut used = 0usize;
        let mut unstopped = 0usize;
        let listed = for_each_tid(|tid| {
            if tid == me {
                return;
            }
            if used == MAX_THREADS {
                unstopped += 1;
                return;
            }
            let s = &SLOTS[used];
            s.tid.store(tid, Ordering::Relaxed);
            s.state.store(ASKED, Ordering::Relaxed);
            used += 1;
        });
        if !listed || used == 0 {
            let Some((sig, old)) = free_signal(libc::SIGRTMAX()) else {
                Self::clear(used);
                return None;
            };
            return Some(World { sig, old, used, unstopped, installed: false });
        }
        // Release: the slots are visible to the handlers before they can run.
        USED.store(used, Ordering::Release);
        ACTIVE.store(1, Ordering::Release);
        // A free signal that can be sent: an emulator may accept the action of a signal it
        // cannot deliver and refuse to send it (qemu-user 7.2 maps neither of the top two
        // guest real-time signals to a host one: tgkill says EINVAL), so the next one down.
        // SAFETY: an all-zero sigaction is a valid starting point.
        let mut sa: libc::sigaction = unsafe { core::mem::zeroed() };
        sa.sa_sigaction = on_stop as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
        // SAFETY: `sa.sa_mask` is valid storage; every signal blocked while the handler runs.
        unsafe { libc::sigfillset(&mut sa.sa_mask) };
        let mut below = libc::SIGRTMAX();
        let (sig, old, first) = loop {
            let Some((sig, old)) = free_signal(below) else {
                ACTIVE.store(0, Ordering::Release);
                Self::clear(used);
                return None;
            };
            // SAFETY: installs a valid SA_SIGINFO handler for a signal the program leaves
            // alone.
            if unsafe { libc::sigaction(sig, &sa, core::ptr::null_mut()) } != 0 {
                below = sig - 1;
                continue;
            }
            // The kernel checks the number before the thread: the first send tells.
            let first = tgkill(SLOTS[0].tid.load(Ordering::Relaxed), sig);
            if first != libc::EINVAL {
                break (sig, old, first);
            }
            // Nothing was sent with it: its old action back.
            // SAFETY: the action read by `free_signal`.
            unsafe { libc::sigaction(sig, &old, core::ptr::null_mut()) };
            below = sig - 1;
        };
        for (i, s) in SLOTS[..used].iter().enumerate() {
            let sent = if i == 0 { first } else { tgkill(s.tid.load(Ordering::Relaxed), sig) };
            if sent != 0 {
                s.state.store(GONE, Ordering::Relaxed);
            }
        }
        let start = now_ms();
        // Since when every thread still to answer has blocked the signal (0: not all do).
        let mut all_blocked_since = 0;
        loop {
            let (mut waiting, mut blocking) = (0, 0);
            for s in &SLOTS[..used] {
                if s.state.load(Ordering::Acquire) != ASKED {
                    continue;
                }
                let tid = s.tid.load(Ordering::Relaxed);
                if tgkill(tid, 0) == libc::ESRCH {
                    // Exited meanwhile: the handler cannot run any more.
                    let _ =
                        s.state.compare_exchange(ASKED, GONE, Ordering::AcqRel, Ordering::Relaxed);
                    continue;
                }
                waiting += 1;
                // Only worth reading while nobody unblocked is still to answer.
                if blocking + 1 == waiting && blocks(tid, sig) {
                    blocking += 1;
                }
            }
            if waiting == 0 {
                break;
            }
            let now = now_ms();
            all_blocked_since = match (blocking == waiting, all_blocked_since) {
                (false, _) => 0,
                (true, 0) => now.max(1),
                (true, since) => since,
            };
            let blocked_for_good =
                all_blocked_since != 0 && now - all_blocked_since >= BLOCKED_GRACE_MS;
            if blocked_for_good || now - start >= ANSWER_WAIT_MS {
                // Given up on: a late handler finds its slot no longer ASKED and returns; the
                // signal still pending is discarded when the world is let go.
                let give_up = if blocked_for_good { BLOCKED } else { SILENT };
                for s in &SLOTS[..used] {
                    if s.state
                        .compare_exchange(ASKED, give_up, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                    {
                        unstopped += 1;
                    }
                }
                break;
            }
            nap(200_000);
        }
        Some(World { sig, old, used, unstopped, installed: true })
    }

    /// Writes the ids of the threads that could not be stopped (blocked or silent) to `out`;
    /// returns how many (those beyond the slots are not known by id).
    pub(crate) fn unstopped_tids(&self, out: &mut [i32]) -> usize {
        let mut n = 0;
        for s in &SLOTS[..self.used] {
            let state = s.state.load(Ordering::Acquire);
            if (state == BLOCKED || state == SILENT) && n < out.len() {
                out[n] = s.tid.load(Ordering::Relaxed);
                n += 1;
            }
        }
        n
    }

    /// Root ranges of every stopped thread: its saved registers, its stack from the
    /// interrupted stack pointer up (with the red zone), its static TLS and descriptor.
    pub(crate) fn roots(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        SLOTS[..self.used]
            .iter()
            // Acquire pairs with the handler's AcqRel CAS to STOPPED.
            .filter(|s| s.state.load(Ordering::Acquire) == STOPPED)
            .flat_map(|s| {
                let regs = (s.regs.as_ptr() as usize, s.regs.as_ptr() as usize + NREGS * 8);
                let [a, b] = crate::leak::thread_roots(
                    s.sp.load(Ordering::Relaxed),
                    s.tp.load(Ordering::Relaxed),
                );
                [regs, a, b]
            })
    }

    /// Number of threads stopped.
    #[cfg(test)]
    pub(crate) fn stopped(&self) -> usize {
        SLOTS[..self.used].iter().filter(|s| s.state.load(Ordering::Acquire) == STOPPED).count()
    }

    fn clear(used: usize) {
        for s in &SLOTS[..used] {
            s.tid.store(0, Ordering::Relaxed);
            s.sp.store(0, Ordering::Relaxed);
            s.tp.store(0, Ordering::Relaxed);
            for r in &s.regs {
                r.store(0, Ordering::Relaxed);
            }
            s.state.store(EMPTY, Ordering::Relaxed);
        }
        USED.store(0, Ordering::Release);
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if !self.installed {
            Self::clear(self.used);
            return;
        }
        // Release pairs with the handlers' Acquire loads: the scan is over.
        ACTIVE.store(0, Ordering::Release);
        // SAFETY: FUTEX_WAKE on a static word.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                ACTIVE.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                i32::MAX,
            )
        };
        // Every stopped thread leaves the handler before its slot is cleared (bounded: they
        // are runnable now; a thread killed meanwhile is not waited for).
        let deadline = now_ms() + ANSWER_WAIT_MS;
        while SLOTS[..self.used].iter().any(|s| s.state.load(Ordering::Acquire) == STOPPED)
            && now_ms() < deadline
        {
            // SAFETY: sched_yield has no preconditions.
            unsafe { libc::sched_yield() };
        }
        // SIG_IGN drops instances still pending for threads that never answered (POSIX), so
        // that restoring SIG_DFL, which terminates, cannot kill the process later.
        // SAFETY: an all-zero sigaction with SIG_IGN is a valid action.
        let mut ign: libc::sigaction = unsafe { core::mem::zeroed() };
        ign.sa_sigaction = libc::SIG_IGN;
        // SAFETY: valid actions for a signal this module installed.
        unsafe {
            libc::sigaction(self.sig, &ign, core::ptr::null_mut());
            libc::sigaction(self.sig, &self.old, core::ptr::null_mut());
        }
        Self::clear(self.used);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigblk_reads_the_mask() {
        let s = b"Name:\tx\nSigPnd:\t0000000000000000\nSigBlk:\t0000000000010002\nSigIgn:\t0\n";
        assert_eq!(sigblk(s), Some(0x10002));
        assert_eq!(sigblk(b"Name:\tx\n"), None);
    }

    #[test]
    fn tids_are_listed_without_allocating() {
        let mut n = 0;
        let mut me = false;
        let tid = gettid();
        assert!(for_each_tid(|t| {
            n += 1;
            me |= t == tid;
        }));
        assert!(n >= 1 && me);
        assert_eq!(parse_tid(b"123"), Some(123));
        assert_eq!(parse_tid(b"."), None);
        assert_eq!(parse_tid(b""), None);
    }

    #[test]
    fn a_parked_thread_is_stopped_with_its_stack_pointer_and_let_go() {
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let go = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(AtomicBool::new(false));
        let (g, r) = (go.clone(), ready.clone());
        let t = std::thread::spawn(move || {
            let marker = 0x5eed_u64;
            let at = core::hint::black_box(&marker) as *const u64 as usize;
            r.store(true, Ordering::Release);
            while !g.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            at
        });
        while !ready.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        let w = World::stop().expect("a free real-time signal");
        let used = w.sig;
        assert!(
            w.stopped() >= 1,
            "the spinning thread stopped (signal {}, slots {:?})",
            w.sig,
            SLOTS[..w.used]
                .iter()
                .map(|s| (s.tid.load(Ordering::Relaxed), s.state.load(Ordering::Relaxed)))
                .collect::<Vec<_>>()
        );
        let roots: Vec<_> = w.roots().collect();
        drop(w);
        go.store(true, Ordering::Release);
        let at = t.join().unwrap();
        assert!(roots.iter().any(|&(lo, hi)| lo <= at && at < hi), "its stack is a root");
        assert_eq!(USED.load(Ordering::Relaxed), 0);
        // Cleared, and the old (default) action of the signal used is back.
        assert_eq!(free_signal(used).map(|(sig, _)| sig), Some(used));
    }

    /// A thread that has every signal blocked when the stop begins (as glibc's
    /// `pthread_create` has around `clone`) is stopped once it unblocks, not skipped.
    #[test]
    fn a_thread_blocking_signals_for_a_moment_is_stopped_once_it_unblocks() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let round = Arc::new(AtomicU32::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let ended = Arc::new(AtomicU32::new(0));
        let tid = Arc::new(AtomicI32::new(0));
        let (r, d, t, e) = (round.clone(), done.clone(), tid.clone(), ended.clone());
        let th = std::thread::spawn(move || {
            t.store(gettid(), Ordering::Release);
            let mut n = 0;
            while !d.load(Ordering::Acquire) {
                // SAFETY: sets of our own; only this thread's mask changes.
                unsafe {
                    let (mut all, mut old, mut pending): (libc::sigset_t, _, libc::sigset_t) =
                        (core::mem::zeroed(), core::mem::zeroed(), core::mem::zeroed());
                    libc::sigfillset(&mut all);
                    libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
                    n += 1;
                    r.store(n, Ordering::Release);
                    // Blocked until the stop's signal is pending here.
                    loop {
                        libc::sigpending(&mut pending);
                        let sig = (libc::SIGRTMIN()..=libc::SIGRTMAX())
                            .any(|s| libc::sigismember(&pending, s) == 1);
                        if sig || e.load(Ordering::Acquire) >= n || d.load(Ordering::Acquire) {
                            break;
                        }
                        std::hint::spin_loop();
                    }
                    libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut());
                }
                while ACTIVE.load(Ordering::Acquire) == 1 {
                    std::hint::spin_loop();
                }
            }
        });
        // A thread preempted for longer than the grace is given up on (the leak scan then
        // stops the world again): a few rounds, as the scan has attempts.
        let mut states = Vec::new();
        let mut stopped = false;
        for n in 1..=5 {
            while round.load(Ordering::Acquire) < n {
                std::hint::spin_loop();
            }
            let w = World::stop().expect("a free real-time signal");
            let me = tid.load(Ordering::Acquire);
            let state = SLOTS[..w.used]
                .iter()
                .find(|s| s.tid.load(Ordering::Relaxed) == me)
                .map(|s| s.state.load(Ordering::Acquire));
            drop(w);
            ended.store(n, Ordering::Release);
            states.push(state);
            if state == Some(STOPPED) {
                stopped = true;
                break;
            }
        }
        done.store(true, Ordering::Release);
        th.join().unwrap();
        assert!(stopped, "states of the thread per attempt: {states:?}");
    }

    /// The slots are global: one stopped world at a time.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn threads_that_block_the_signal_are_named_and_waited_for_until_gone() {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let masked = |exit: Arc<AtomicBool>, tid: Arc<AtomicI32>| {
            move || {
                // SAFETY: a filled set; blocks every signal in this thread only.
                unsafe {
                    let mut all: libc::sigset_t = core::mem::zeroed();
                    libc::sigfillset(&mut all);
                    libc::pthread_sigmask(libc::SIG_BLOCK, &all, core::ptr::null_mut());
                }
                tid.store(gettid(), Ordering::Release);
                while !exit.load(Ordering::Acquire) {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        };
        let (exiting, staying) =
            (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (t1, t2) = (Arc::new(AtomicI32::new(0)), Arc::new(AtomicI32::new(0)));
        let a = std::thread::spawn(masked(exiting.clone(), t1.clone()));
        let b = std::thread::spawn(masked(staying.clone(), t2.clone()));
        while t1.load(Ordering::Acquire) == 0 || t2.load(Ordering::Acquire) == 0 {
            std::thread::yield_now();
        }
        let (t1, t2) = (t1.load(Ordering::Relaxed), t2.load(Ordering::Relaxed));
        let w = World::stop().expect("a free real-time signal");
        let mut tids = [0i32; MAX_THREADS];
        let n = w.unstopped_tids(&mut tids);
        assert!(w.unstopped >= 2 && n >= 2, "{} unstopped, {n} named", w.unstopped);
        assert!(tids[..n].contains(&t1) && tids[..n].contains(&t2), "{:?}", &tids[..n]);
        drop(w);
        assert_eq!(USED.load(Ordering::Relaxed), 0, "cleared");
        // One of them exits now: waiting ends once it is gone (or, on a loaded machine, once
        // nothing has gone for a while; then wait again), and the other one is still there.
        exiting.store(true, Ordering::Release);
        let mut rounds = 0;
        while tgkill(t1, 0) != libc::ESRCH && rounds < 100 {
            let mut pending = [t1, t2];
            wait_gone(&mut pending);
            rounds += 1;
        }
        assert_eq!(tgkill(t1, 0), libc::ESRCH, "gone after {rounds} waits");
        assert_eq!(tgkill(t2, 0), 0, "the thread that stays is alive");
        staying.store(true, Ordering::Release);
        a.join().unwrap();
        b.join().unwrap();
    }
}
