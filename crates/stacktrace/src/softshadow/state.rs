//! Per-thread state: the array of `{return address, sp after return}` entries, the stack
//! shadow mapping, their lazy set-up and their release at thread exit, and the trampoline's
//! slow path.
//!
//! # Signal safety
//! Everything here is async-signal-safe: raw `mmap`/`munmap`/`getrlimit` syscalls, the
//! stack-bounds lookup of [`crate::maps`], relaxed atomics in the thread's own block. A signal
//! handler on the same thread can only observe the block between two instructions: entries
//! are written before the length that publishes them, and the trampoline pops with one
//! read-modify-write.

use super::arch::{self, SHADOW_OFFSET};
use core::sync::atomic::{compiler_fence, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};

pub(crate) use super::walk::Entry;

/// `status` values.
pub(super) const UNINIT: usize = 0;
pub(super) const ACTIVE: usize = 1;
/// Set-up failed (no stack bounds, shadow range taken, out of memory): never retried.
pub(super) const FAILED: usize = 2;
/// The thread is exiting: its key destructor ran.
pub(super) const EXITED: usize = 3;

/// `flags` bits.
/// [`super::set_thread_enabled`]`(false)` on this thread.
pub(super) const THREAD_OFF: usize = 1;
/// A capture ran on a stack other than the thread's own (fibers): stop patching.
pub(super) const STACK_SWITCHED: usize = 2;
/// The trampoline met a patched slot with no entry: stop patching.
pub(super) const ORPHAN_SEEN: usize = 4;

/// Array capacity: entries per thread (16 B each, mapped lazily, untouched pages cost nothing).
pub(super) const CAPACITY: usize = 8192;

/// The thread's block, shared with the trampoline (`entries` at 0, `len` at 8: see
/// `arch`). Atomics only, so all-zero bytes (a new thread's `.tbss`) are a valid value;
/// accessed with relaxed loads and stores (plain moves) since only this thread and its signal
/// handlers touch it, ordered against those with `compiler_fence`.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct ThreadState {
    /// `*mut Entry`: entry 0 of the array (a sentinel sits at index -1), 0 before set-up.
    pub entries: AtomicUsize,
    /// Published number of entries, oldest (highest on the stack) first.
    pub len: AtomicUsize,
    /// See the status constants.
    pub status: AtomicUsize,
    /// A capture is running on this thread (a signal handler's capture answers `Reentered`).
    pub busy: AtomicUsize,
    /// Stack bounds covered by the stack shadow: `[lo, hi)`.
    pub lo: AtomicUsize,
    /// See `lo`.
    pub hi: AtomicUsize,
    /// See the flag constants.
    pub flags: AtomicUsize,
    /// Patch policy: frames at the top left unpatched (adaptive, see `policy`).
    pub skip: AtomicUsize,
    /// Captures since the last churn (for the policy's decay).
    pub quiet: AtomicUsize,
    /// `len` right after the previous capture (churn = entries popped since).
    pub last_len: AtomicUsize,
    /// Patched slots returned through without an entry.
    pub orphans: AtomicUsize,
    /// Program counters whose CFI proved a frame record at `fp`, direct-mapped (0 = empty):
    /// a steady capture walks the same few newest frames each time, and this spares each a
    /// rule-cache lookup. A pc's rule depends on the code at it alone, so an entry stays
    /// true while the code is mapped (as the process-wide rule cache assumes too).
    pub record_pcs: [AtomicUsize; RECORD_PCS],
    /// `*mut AtomicU64`: per array entry, the depot handle of the trace from that entry's
    /// frame down (`handle | frames << 32`; 0 = not known), 0 before set-up. Valid while the
    /// entry is: a live frame's callers do not change, and every commit of new entries clears
    /// their words. Read and written by [`super::live`] with `busy` held. The save memo's
    /// [`MEMO_ENTRIES`] entries of [`MEMO_WORDS`] words follow the `CAPACITY` handle words.
    pub nodes: AtomicUsize,
    /// Counters of this thread ([`super::Counters`]); `returns` is counted by the trampoline
    /// (`arch`).
    pub captures: AtomicUsize,
    /// See `captures`.
    pub walked: AtomicUsize,
    /// See `captures`.
    pub copied: AtomicUsize,
    /// See `captures`.
    pub patched: AtomicUsize,
    /// See `captures`.
    pub returns: AtomicUsize,
    /// See `captures`.
    pub incremental: AtomicUsize,
    /// See `captures`.
    pub memo_hits: AtomicUsize,
    /// The cap tuner (`policy::Tune::pack`) and the cost its probe compares with.
    pub tune: AtomicUsize,
    /// See `tune`.
    pub tune_prev: AtomicUsize,
    /// `captures` and `returns` at the start of the tuner's current window, and its timed
    /// captures and their cycles.
    pub win_start: AtomicUsize,
    /// See `win_start`.
    pub win_returns: AtomicUsize,
    /// See `win_start`.
    pub win_timed: AtomicUsize,
    /// See `win_start`.
    pub win_cycles: AtomicUsize,
}

/// Entries of [`ThreadState::record_pcs`] (a power of two).
pub(super) const RECORD_PCS: usize = 8;

impl ThreadState {
    /// The entry array as a raw pointer (valid for `CAPACITY` entries once active).
    #[inline(always)]
    pub fn entries_ptr(&self) -> *mut Entry {
        self.entries.load(Relaxed) as *mut Entry
    }

    /// The [`Self::record_pcs`] slot of `pc`.
    #[inline(always)]
    pub fn record_pc_slot(&self, pc: usize) -> &AtomicUsize {
        &self.record_pcs[(pc ^ (pc >> 3)) % RECORD_PCS]
    }
}

/// Bytes of the [`ThreadState::nodes`] mapping: the handle words of the entries, then the
/// save memo (`super::live::Memo`).
const NODES_BYTES: usize = CAPACITY * 8 + MEMO_ENTRIES * MEMO_WORDS * 8;

/// Entries of the per-thread save memo (a power of two).
pub(super) const MEMO_ENTRIES: usize = 4096;
/// New frames a memo entry holds.
pub(super) const MEMO_FRAMES: usize = 6;
/// Words of one memo entry: key, handle, frames.
pub(super) const MEMO_WORDS: usize = 2 + MEMO_FRAMES;

/// Process-wide key whose destructor releases a thread's mappings at exit; 0 = not created.
static EXIT_KEY: AtomicUsize = AtomicUsize::new(0);

/// Sets up the current thread: stack bounds around `sp`, the entry array, the stack shadow,
/// the exit hook. Returns whether the thread is now active.
///
/// On a `sigaltstack` (a signal handler's first capture on this thread) it does nothing and
/// leaves the thread uninitialised: `sp` is not on the thread's own stack, whose bounds the
/// state would then hold for good, and the alternate stack may be as small as
/// `AT_MINSIGSTKSZ` (3376 bytes with AVX-512), too small for the `/proc/self/maps` read. The
/// next capture on the thread's own stack sets it up.
#[cold]
#[inline(never)]
pub(super) fn init(st: &ThreadState, sp: usize) -> bool {
    if on_signal_stack() {
        return false;
    }
    let ok = try_init(st, sp);
    compiler_fence(SeqCst);
    st.status.store(if ok { ACTIVE } else { FAILED }, Relaxed);
    ok
}

/// Whether this thread runs on its `sigaltstack` now (one syscall; cold path only). An
/// alternate stack armed with `SS_AUTODISARM` reads as disabled inside its handler and is
/// not recognised here.
fn on_signal_stack() -> bool {
    let mut ss = libc::stack_t { ss_sp: core::ptr::null_mut(), ss_flags: 0, ss_size: 0 };
    // SAFETY: a query only (no new stack); `ss` is a valid out-pointer.
    let r = unsafe { libc::sigaltstack(core::ptr::null(), &mut ss) };
    r == 0 && ss.ss_flags & libc::SS_ONSTACK != 0
}

fn try_init(st: &ThreadState, sp: usize) -> bool {
    let Some(m) = crate::maps::find_mapping(sp) else { return false };
    if !(m.read && m.write) {
        return false;
    }
    let (mut lo, hi) = (m.start, m.end);
    // SAFETY: plain syscalls without memory arguments.
    let main_thread = unsafe { libc::getpid() as libc::c_long == libc::syscall(libc::SYS_gettid) };
    if main_thread {
        // The main stack grows on demand down to the soft limit: cover all of it.
        let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: `rl` is a valid out-pointer.
        let limit = if unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut rl) } == 0 {
            (rl.rlim_cur as usize).min(1 << 30)
        } else {
            8 << 20
        };
        lo = lo.min(hi.saturating_sub(limit) & !4095);
    }
    let bytes = (CAPACITY + 1) * core::mem::size_of::<Entry>();
    let Some(array) = map(0, bytes, 0) else { return false };
    let Some(nodes) = map(0, NODES_BYTES, 0) else {
        unmap(array, bytes);
        return false;
    };
    let shadow_at = lo.wrapping_add_signed(SHADOW_OFFSET) & !4095;
    let shadow_len = hi.wrapping_add_signed(SHADOW_OFFSET).next_multiple_of(4096) - shadow_at;
    // MAP_FIXED_NOREPLACE never replaces a mapping; where it is refused as an unknown flag
    // (valgrind), a plain hint gets the same range if it is free.
    let Some(shadow) = map(shadow_at, shadow_len, libc::MAP_FIXED_NOREPLACE)
        .or_else(|| map(shadow_at, shadow_len, 0))
    else {
        unmap(array, bytes);
        unmap(nodes, NODES_BYTES);
        return false;
    };
    if shadow != shadow_at {
        // The range is taken (kernels older than 4.17 treat MAP_FIXED_NOREPLACE as a hint).
        unmap(shadow, shadow_len);
        unmap(array, bytes);
        unmap(nodes, NODES_BYTES);
        return false;
    }
    // SAFETY: `array` is a fresh writable mapping of `bytes` >= 16 bytes; entry 0 of it is
    // the sentinel that the trampoline reads when the array is empty: it never matches.
    unsafe { (array as *mut Entry).write(Entry { ra: 0, ret_sp: usize::MAX }) };
    register_exit_hook(st);
    st.lo.store(lo, Relaxed);
    st.hi.store(hi, Relaxed);
    st.len.store(0, Relaxed);
    st.skip.store(super::policy::initial_skip(), Relaxed);
    st.tune.store(super::policy::Tune::START.pack(), Relaxed);
    st.tune_prev.store(0, Relaxed);
    st.win_start.store(st.captures.load(Relaxed), Relaxed);
    st.win_timed.store(0, Relaxed);
    st.win_cycles.store(0, Relaxed);
    st.win_returns.store(st.returns.load(Relaxed), Relaxed);
    st.nodes.store(nodes, Relaxed);
    compiler_fence(SeqCst);
    st.entries.store(array + core::mem::size_of::<Entry>(), Relaxed);
    true
}

fn map(at: usize, len: usize, extra: libc::c_int) -> Option<usize> {
    // SAFETY: an anonymous private mapping; with MAP_FIXED_NOREPLACE the kernel refuses to
    // replace anything that is already mapped there.
    let p = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | extra,
            -1,
            0,
        )
    };
    (p != libc::MAP_FAILED).then_some(p as usize)
}

fn unmap(at: usize, len: usize) {
    // SAFETY: only called on mappings this module created and no longer uses.
    unsafe { libc::munmap(at as *mut libc::c_void, len) };
}

/// Arranges for [`on_thread_exit`] to run when this thread exits (through a pthread key:
/// its value lives in the thread descriptor for the first 32 keys, so nothing allocates).
fn register_exit_hook(st: &ThreadState) {
    // Relaxed: the key is a plain number; a racing creator's duplicate is deleted below.
    let mut key = EXIT_KEY.load(Relaxed);
    if key == 0 {
        let mut k: libc::pthread_key_t = 0;
        // SAFETY: `k` is a valid out-pointer and `on_thread_exit` has the destructor ABI.
        if unsafe { libc::pthread_key_create(&mut k, Some(on_thread_exit)) } != 0 {
            return;
        }
        // Relaxed: see above; the key value is the only data published.
        key = match EXIT_KEY.compare_exchange(0, k as usize + 1, Relaxed, Relaxed) {
            Ok(_) => k as usize + 1,
            Err(other) => {
                // SAFETY: `k` is our own, unused key.
                unsafe { libc::pthread_key_delete(k) };
                other
            }
        };
    }
    // SAFETY: a valid key; the value is this thread's state block, alive until it exits.
    unsafe {
        libc::pthread_setspecific(
            (key - 1) as libc::pthread_key_t,
            st as *const _ as *const libc::c_void,
        )
    };
}

/// Thread exit: release the array and the stack shadow. Runs after the thread's start
/// routine has returned or been unwound, so the patched frames left are those that never
/// return (glibc's `start_thread`, which ends in `exit`): each gets its real return address
/// back first, so that nothing on the stack needs the shadow any more.
extern "C" fn on_thread_exit(p: *mut libc::c_void) {
    // SAFETY: `p` is the value set by `register_exit_hook`: this thread's state block.
    let st = unsafe { &*(p as *const ThreadState) };
    st.status.store(EXITED, Relaxed);
    compiler_fence(SeqCst);
    super::retire_counters(st);
    let (lo, hi, entries) = (st.lo.load(Relaxed), st.hi.load(Relaxed), st.entries_ptr());
    if entries.is_null() {
        return;
    }
    let here = &st as *const _ as usize;
    let tramp = arch::trampoline();
    for i in 0..st.len.load(Relaxed) {
        // SAFETY: `i < len <= CAPACITY`: a written entry of our array.
        let e = unsafe { entries.add(i).read() };
        let slot = e.ret_sp.wrapping_sub(8);
        if slot > here && slot >= lo && slot + 8 <= hi {
            // SAFETY: the slot lies in the live part of this thread's stack (above us), and a
            // patched slot's shadow word (mapped until below) holds its real return address.
            // The slot is written before the shadow goes: an unwinder interrupting us (a
            // signal handler) reads one or the other, both right.
            unsafe {
                let at = slot as *mut usize;
                if at.read_volatile() == tramp {
                    let real =
                        (slot.wrapping_add_signed(SHADOW_OFFSET) as *const usize).read_volatile();
                    at.write_volatile(real);
                }
            }
        }
    }
    compiler_fence(SeqCst);
    st.entries.store(0, Relaxed);
    st.len.store(0, Relaxed);
    let nodes = st.nodes.swap(0, Relaxed);
    if nodes != 0 {
        unmap(nodes, NODES_BYTES);
    }
    let shadow_at = lo.wrapping_add_signed(SHADOW_OFFSET) & !4095;
    unmap(shadow_at, hi.wrapping_add_signed(SHADOW_OFFSET).next_multiple_of(4096) - shadow_at);
    unmap(
        entries as usize - core::mem::size_of::<Entry>(),
        (CAPACITY + 1) * core::mem::size_of::<Entry>(),
    );
}

/// The trampoline's slow path: the newest entry is not for the slot just returned through.
/// Drops entries of frames already gone (below `ret_sp`: longjmp, exceptions, a caught
/// panic), pops this slot's entry if present, and returns the real return address, which the
/// stack shadow always holds. A patched slot with no entry (an orphan) stops patching on
/// this thread; nothing else is undone: the shadow keeps every remaining return correct.
pub(super) extern "C" fn on_mismatch(ret_sp: usize) -> usize {
    let st = arch::state();
    let entries = st.entries_ptr();
    let mut len = st.len.load(Relaxed);
    let mut found = false;
    if !entries.is_null() {
        while len > 0 {
            // SAFETY: `len - 1 < CAPACITY`: a written entry.
            let e = unsafe { entries.add(len - 1).read() };
            if e.ret_sp > ret_sp {
                break;
            }
            len -= 1;
            if e.ret_sp == ret_sp {
                found = true;
                break;
            }
        }
        st.len.store(len, Relaxed);
    }
    st.returns.store(st.returns.load(Relaxed) + 1, Relaxed);
    if !found {
        st.orphans.store(st.orphans.load(Relaxed) + 1, Relaxed);
        st.flags.store(st.flags.load(Relaxed) | ORPHAN_SEEN, Relaxed);
    }
    let shadow = (ret_sp - 8).wrapping_add_signed(SHADOW_OFFSET);
    // SAFETY: the slot was patched, so it lies in this thread's stack and its shadow word was
    // written before the patch; the shadow stays mapped while patched frames may be live.
    unsafe { (shadow as *const usize).read_volatile() }
}
