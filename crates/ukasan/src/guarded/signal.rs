//! The SIGSEGV/SIGBUS handler of guarded mode: installed in front of whatever handler was
//! there (and put back in front when a program or Rust's std replaces it), it reports
//! faults in the pool on a stack of its own and passes every other fault to the handler it
//! replaced, or to the default action.

use super::{map, FAULT_RT, PAGE};
use crate::sys::{self, Guard, SpinLock};
use core::cell::Cell;
use core::ffi::{c_int, c_void};
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

thread_local! {
    /// The fault address (plus one; 0: none) this thread is passing to the previous
    /// handler, which may pass it back. An address, not a flag: a handler that leaves with
    /// `siglongjmp` never clears it.
    static IN_CHAIN: Cell<usize> = const { Cell::new(0) };
}

/// The handler found installed before ours, for SIGSEGV and SIGBUS: its address (0 is
/// `SIG_DFL`) and whether it takes `SA_SIGINFO` arguments.
static PREV_HANDLER: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
static PREV_SIGINFO: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];
/// Serializes (re)installation of our handler.
static INSTALL: SpinLock<()> = SpinLock::new(());

const ALTSTACK: usize = 64 << 10;

/// An alternate signal stack of the table, and who has it: `pid << 32 | tid` (0: nobody).
/// The pid makes the entries of a parent, inherited over `fork`, never look free (the
/// child's thread that forked still runs on its entry while the parent's tid is dead).
struct AltStack {
    owner: AtomicU64,
    stack: AtomicUsize,
}

/// Threads that can hold one of our alternate signal stacks at once; beyond, a thread runs
/// without (a fault on an overflowed stack is then fatal without a report, as it always
/// is without an alternate stack, and any other fault is handled on the thread's stack).
const ALTSTACKS: usize = 1024;
static ALTSTACK_TABLE: [AltStack; ALTSTACKS] =
    [const { AltStack { owner: AtomicU64::new(0), stack: AtomicUsize::new(0) } }; ALTSTACKS];

thread_local! {
    /// This thread has been given its alternate signal stack (or found one, or none left).
    static HAS_ALTSTACK: Cell<bool> = const { Cell::new(false) };
}

/// Whether thread `tid` of process `pid` still runs.
fn alive(pid: u32, tid: u32) -> bool {
    // SAFETY: signal 0 only checks that the thread exists.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, pid as libc::c_long, tid as libc::c_long, 0) };
    // SAFETY: errno is thread-local.
    r == 0 || unsafe { *libc::__errno_location() } != libc::ESRCH
}

/// Gives this thread an alternate signal stack if it has none (once per thread), so that
/// a fault on an overflowed stack reaches the handler (which passes it on) and a heap fault
/// never needs the thread's own stack. The stacks come from a fixed table; an entry whose
/// thread has exited is reused, none is ever unmapped. Async-signal-safe.
pub(super) fn thread_altstack() {
    if HAS_ALTSTACK.with(Cell::get) {
        return;
    }
    HAS_ALTSTACK.with(|c| c.set(true));
    // SAFETY: sigaltstack with a null new stack only reads the current one.
    let mut old: libc::stack_t = unsafe { core::mem::zeroed() };
    // SAFETY: valid out-parameter.
    if unsafe { libc::sigaltstack(null_mut(), &mut old) } != 0
        || old.ss_flags & libc::SS_DISABLE == 0
    {
        // The program's (or Rust std's) own, or ours from before a fork.
        return;
    }
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    let me = u64::from(pid) << 32 | u64::from(sys::tid());
    for e in &ALTSTACK_TABLE {
        // Acquire pairs with the AcqRel claim below: the previous owner's stack is visible.
        let owner = e.owner.load(Ordering::Acquire);
        let free = owner == 0
            || owner == me
            || (owner >> 32 == u64::from(pid) && !alive(pid, owner as u32));
        // AcqRel: one claimant wins an entry.
        if !free
            || e.owner.compare_exchange(owner, me, Ordering::AcqRel, Ordering::Acquire).is_err()
        {
            continue;
        }
        // Relaxed: only the owner (this thread now) reads and writes `stack`; the claim's
        // AcqRel orders it after the previous owner's store.
        let mut s = e.stack.load(Ordering::Relaxed);
        if s == 0 {
            let Some(m) = map(ALTSTACK + PAGE, libc::PROT_READ | libc::PROT_WRITE) else {
                e.owner.store(0, Ordering::Release);
                return;
            };
            // SAFETY: the lowest page becomes a guard page of the fresh mapping.
            unsafe { libc::mprotect(m as *mut c_void, PAGE, libc::PROT_NONE) };
            s = m + PAGE;
            e.stack.store(s, Ordering::Relaxed);
        }
        let st = libc::stack_t { ss_sp: s as *mut c_void, ss_flags: 0, ss_size: ALTSTACK };
        // SAFETY: `st` describes a mapping that lives for the process, now this thread's.
        unsafe { libc::sigaltstack(&st, null_mut()) };
        return;
    }
}

/// Installs our SIGSEGV/SIGBUS handler unless it is installed, keeping the one it replaces
/// for chaining. A syscall per signal when ours is in place.
pub(super) fn ensure_handler() {
    // Another thread is (re)installing: it will do.
    let Some(_l) = INSTALL.try_lock() else { return };
    for (k, sig) in [libc::SIGSEGV, libc::SIGBUS].into_iter().enumerate() {
        // SAFETY: sigaction is plain data; all-zero is valid.
        let mut cur: libc::sigaction = unsafe { core::mem::zeroed() };
        // SAFETY: a query (null new action) with a valid out-parameter.
        unsafe { libc::sigaction(sig, null_mut(), &mut cur) };
        if cur.sa_sigaction == on_signal as *const () as usize {
            continue;
        }
        // Relaxed stores, then the handler install (a syscall) publishes them to the
        // handler's Relaxed loads; a fault racing this switch may see the older handler.
        PREV_SIGINFO[k].store(cur.sa_flags & libc::SA_SIGINFO != 0, Ordering::Relaxed);
        PREV_HANDLER[k].store(cur.sa_sigaction, Ordering::Relaxed);
        // SAFETY: sigaction is plain data.
        let mut sa: libc::sigaction = unsafe { core::mem::zeroed() };
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: `sa.sa_mask` is a valid sigset; installs our handler.
        unsafe {
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, null_mut());
        }
    }
}

/// Whether the faulting access was a write: x86-64, the page-fault error code's write bit;
/// aarch64, the WnR bit of the ESR record in the signal frame; false elsewhere.
fn is_write(uc: *mut c_void) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `uc` is the live `ucontext_t` of a SA_SIGINFO handler.
        let uc = unsafe { &*(uc as *const libc::ucontext_t) };
        uc.uc_mcontext.gregs[libc::REG_ERR as usize] & 2 != 0
    }
    #[cfg(target_arch = "aarch64")]
    {
        use super::decode::{esr_is_write, find_esr, RESERVED_LEN};
        // SAFETY: `uc` is the live `ucontext_t` of a SA_SIGINFO handler.
        let mc = unsafe { core::ptr::addr_of!((*(uc as *const libc::ucontext_t)).uc_mcontext) };
        // The kernel's `sigcontext`: `__reserved` follows `pstate`, 16-byte aligned.
        let area = (mc as usize + core::mem::offset_of!(libc::mcontext_t, pstate) + 8)
            .next_multiple_of(16);
        let at = |o: usize, n: usize| (o + n <= RESERVED_LEN).then_some(area + o);
        // SAFETY: inside the frame's reserved area (bounds checked by `at`), which the
        // kernel wrote; unaligned reads, as records are only 8-byte aligned.
        let u32_at = |o| at(o, 4).map(|a| unsafe { (a as *const u32).read_unaligned() });
        // SAFETY: as above.
        let u64_at = |o| at(o, 8).map(|a| unsafe { (a as *const u64).read_unaligned() });
        find_esr(u32_at, u64_at)
            .and_then(esr_is_write)
            .or_else(|| a64_insn(uc).map(|(w, _)| w))
            .unwrap_or(false)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let _ = uc;
        false
    }
}

/// The load or store at the faulting pc, decoded ([`super::decode::a64_access`]): aarch64
/// only, and never read where no code can be (the heap, the guarded pool: a jump there).
pub(crate) fn a64_insn(uc: *mut c_void) -> Option<(bool, Option<usize>)> {
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: `uc` is the live `ucontext_t` of a SA_SIGINFO handler.
        let pc = unsafe { (*(uc as *const libc::ucontext_t)).uc_mcontext.pc } as usize;
        // Acquire pairs with the AcqRel publication in `Pool::init`.
        let rt = FAULT_RT.load(Ordering::Acquire);
        // SAFETY: the published runtime is a `static`.
        let in_pool = !rt.is_null() && unsafe { &*rt }.guarded.contains(pc);
        if in_pool || crate::generic::contains(pc) || !pc.is_multiple_of(4) {
            return None;
        }
        // SAFETY: the faulting instruction was fetched from `pc`, so it is mapped; code is
        // readable on aarch64 Linux (no execute-only mappings for user code by default).
        super::decode::a64_access(unsafe { (pc as *const u32).read() })
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        let _ = uc;
        None
    }
}

extern "C" fn on_signal(sig: c_int, info: *mut libc::siginfo_t, uc: *mut c_void) {
    // Acquire pairs with the AcqRel publication in `Pool::init`.
    let rt = FAULT_RT.load(Ordering::Acquire);
    // SAFETY: the kernel passes a valid siginfo.
    let addr = unsafe { (*info).si_addr() } as usize;
    // SAFETY: the published runtime is a `static`.
    let rt = (!rt.is_null()).then(|| unsafe { &*rt });
    // SAFETY: as above.
    let code = unsafe { (*info).si_code };
    if let Some(rt) = crate::hwtags::claims(code, crate::hwtags::untag(addr)) {
        let Some(_g) = Guard::enter() else {
            sys::write_all(2, b"ukasan: tag-check fault inside the runtime\n");
            chain(sig, info, uc, true);
            return;
        };
        let write = is_write(uc);
        crate::report_stack::run(|| crate::hwtags::on_fault(rt, addr, write, uc));
        return;
    }
    match rt {
        Some(rt) if rt.guarded.contains(addr) => {
            let Some(_g) = Guard::enter() else {
                // A fault inside the runtime itself: nothing can be reported safely.
                sys::write_all(2, b"ukasan: fault in the guarded pool inside the runtime\n");
                chain(sig, info, uc, true);
                return;
            };
            let write = is_write(uc);
            // The handler itself needs only a few hundred bytes of whatever stack the fault
            // was delivered on (a small `sigaltstack`, a thread stack close to its end).
            crate::report_stack::run(|| rt.guarded.on_fault(rt, addr, write, uc));
        }
        // The previous handler passed the fault back to us (it chains to what it found
        // installed, which was ours): end the loop with the default action.
        _ if IN_CHAIN.with(Cell::get) == addr.wrapping_add(1) => chain(sig, info, uc, true),
        _ => chain(sig, info, uc, false),
    }
}

/// Passes a signal to the handler installed before ours; with none (or `force_default`),
/// restores the default action so the fault repeats with it when the handler returns.
fn chain(sig: c_int, info: *mut libc::siginfo_t, uc: *mut c_void, force_default: bool) {
    let k = usize::from(sig == libc::SIGBUS);
    // Relaxed: see `ensure_handler`.
    let h = PREV_HANDLER[k].load(Ordering::Relaxed);
    if force_default || h == libc::SIG_DFL || h == libc::SIG_IGN {
        // SAFETY: sigaction is plain data; all-zero is SIG_DFL.
        let dfl: libc::sigaction = unsafe { core::mem::zeroed() };
        // SAFETY: restores the default action; async-signal-safe.
        unsafe { libc::sigaction(sig, &dfl, null_mut()) };
        // SAFETY: plain data read of the kernel's siginfo.
        if unsafe { (*info).si_code } <= 0 {
            // Sent by kill/raise: returning would not repeat it.
            // SAFETY: raise is async-signal-safe.
            unsafe { libc::raise(sig) };
        }
        return;
    }
    // Relaxed: see `ensure_handler`.
    // SAFETY: the kernel passes a valid siginfo.
    let addr = unsafe { (*info).si_addr() } as usize;
    IN_CHAIN.with(|c| c.set(addr.wrapping_add(1)));
    if PREV_SIGINFO[k].load(Ordering::Relaxed) {
        // SAFETY: the previous handler was installed as a SA_SIGINFO handler.
        let f: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) =
            unsafe { core::mem::transmute(h) };
        f(sig, info, uc);
    } else {
        // SAFETY: the previous handler was installed as a plain handler.
        let f: extern "C" fn(c_int) = unsafe { core::mem::transmute(h) };
        f(sig);
    }
    IN_CHAIN.with(|c| c.set(0));
}
