//! The bounds of the stack a thread runs on, cached per thread, and the room left on it.
//!
//! # Signal safety
//! [`current`] and [`has_room`] are async-signal-safe: no lock, no allocation.
//!
//! # Costs
//! Steady state, [`current`] is a thread-local read and a compare: no syscall. It reads
//! `/proc/self/maps` (raw syscalls, see [`crate::maps`]) once per thread for the thread's own
//! stack and once per other stack it meets (a fiber's), then answers from two cached ranges.
//! The main thread's stack grows on demand: a stack pointer below the cached range but
//! within `RLIMIT_STACK` of its top extends the range with no syscall. A signal handler on a
//! `sigaltstack` costs one `sigaltstack` call per lookup (the alternate stack is never cached:
//! the program may replace it between signals). [`has_room`], called before a capture takes
//! a slow path that needs much stack, costs one `sigaltstack` call.

use core::cell::Cell;

/// A thread's stack: `[lo, hi)`, growing down from `hi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackBounds {
    /// Lowest mapped address of the stack region.
    pub lo: usize,
    /// One past the highest address.
    pub hi: usize,
}

impl StackBounds {
    /// Whether `[addr, addr + len)` lies inside the bounds.
    #[inline]
    pub fn contains(&self, addr: usize, len: usize) -> bool {
        addr >= self.lo && addr.checked_add(len).is_some_and(|end| end <= self.hi)
    }
}

/// A cached range: `lo..hi`, and `floor`, the lowest address it may grow down to (`lo` for
/// a fixed mapping; `0..0` is empty). `proven`: known to be the thread's own stack (the main
/// `[stack]`, or the mapping that holds the thread's TLS), so that its room can be trusted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Range {
    lo: usize,
    hi: usize,
    floor: usize,
    proven: bool,
}

/// The thread's cached ranges (all zero: empty).
struct Cached {
    /// The thread's own stack.
    own: Cell<Range>,
    /// The last other stack found in the maps (a fiber's, `swapcontext`).
    other: Cell<Range>,
}

// All-zero bytes are two empty ranges; `Cached` is `!Sync`: the reference stays on its thread.
// Static TLS: there from the thread's first instruction to its last (no teardown gap).
crate::static_tls!(fn cached() -> &'static Cached = "__ukasan_stack_bounds_tls");

/// How far below its top the main thread's stack may grow: `RLIMIT_STACK`, at most 128 MiB
/// (the kernel keeps at least that much free below the stack top for it: `mmap_base`).
fn main_stack_limit() -> usize {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `rl` is a valid out-pointer.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut rl) } == 0;
    let cur = if ok { rl.rlim_cur } else { 8 << 20 };
    (cur as u64).min(128 << 20) as usize
}

/// Bounds of the stack that `sp` is on, for the current thread.
///
/// Returns `None` when `sp` is in no readable and writable mapping (not a stack we can
/// trust), and at once for addresses in page zero (registers that were never a stack
/// pointer).
pub fn current(sp: usize) -> Option<StackBounds> {
    if sp < 4096 {
        return None;
    }
    let t = cached().own.get();
    if t.lo <= sp && sp < t.hi {
        return Some(StackBounds { lo: t.lo, hi: t.hi });
    }
    if t.floor <= sp && sp < t.lo {
        // The main thread's stack grew down to `sp`: the kernel keeps it one mapping from
        // there to the top, and nothing else lives within `floor` of the top.
        let lo = sp & !4095;
        cached().own.set(Range { lo, ..t });
        return Some(StackBounds { lo, hi: t.hi });
    }
    slow(sp, t)
}

#[cold]
#[inline(never)]
fn slow(sp: usize, t: Range) -> Option<StackBounds> {
    if let Some(b) = altstack().filter(|b| b.contains(sp, 1)) {
        return Some(b);
    }
    let o = cached().other.get();
    if o.lo <= sp && sp < o.hi {
        return Some(StackBounds { lo: o.lo, hi: o.hi });
    }
    let m = crate::maps::find_mapping(sp)?;
    if !(m.read && m.write) {
        return None;
    }
    // The thread's own stack is the main `[stack]`, or the mapping that holds this thread's
    // static TLS (glibc places it at the top of every other thread's stack), or else the
    // first stack the thread is seen on that is not its `sigaltstack` (under valgrind, for
    // one, the main stack is not labelled).
    let tls = cached() as *const Cached as usize;
    let proven = m.main_stack || (m.start <= tls && tls < m.end);
    let own = proven || t == Range::default();
    let floor =
        if m.main_stack { m.end.saturating_sub(main_stack_limit()).min(m.start) } else { m.start };
    let r = Range { lo: m.start, hi: m.end, floor, proven };
    if own {
        cached().own.set(r)
    } else {
        cached().other.set(r)
    };
    Some(StackBounds { lo: m.start, hi: m.end })
}

/// The alternate signal stack the thread is running on, if any (one `sigaltstack` call).
fn altstack() -> Option<StackBounds> {
    // SAFETY: an all-zero `stack_t` is valid output storage.
    let mut ss: libc::stack_t = unsafe { core::mem::zeroed() };
    // SAFETY: queries only (null new stack); `ss` is valid output storage.
    if unsafe { libc::sigaltstack(core::ptr::null(), &mut ss) } != 0 {
        return None;
    }
    let lo = ss.ss_sp as usize;
    (ss.ss_flags & libc::SS_ONSTACK != 0).then(|| StackBounds { lo, hi: lo + ss.ss_size })
}

/// Whether the stack the caller runs on has at least `bytes` left below its stack pointer:
/// on a `sigaltstack`, down to its base; on the thread's own stack, down to its lowest
/// address (for the main thread, as far as it may grow). `false` when neither is known
/// (a fiber's stack, an alternate stack with `SS_AUTODISARM`, a stack only assumed to be
/// the thread's): the caller must then not take a path that needs that much stack.
#[inline(never)]
pub fn has_room(bytes: usize) -> bool {
    let here = crate::arch::stack_pointer();
    if let Some(b) = altstack().filter(|b| b.contains(here, 1)) {
        return here - b.lo >= bytes;
    }
    if current(here).is_none() {
        return false;
    }
    let t = cached().own.get();
    t.proven && (t.floor <= here && here < t.hi) && here - t.floor >= bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_contain_a_local_and_are_cached() {
        let x = 1u64;
        let a = &x as *const u64 as usize;
        let b = current(a).unwrap();
        assert!(b.contains(a, 8));
        let t = cached().own.get();
        assert_eq!((t.lo, t.hi), (b.lo, b.hi));
        assert_eq!(current(a), Some(b));
        assert!(!b.contains(b.hi - 4, 8));
        assert_eq!(current(0), None);
        assert_eq!(current(4095), None);
    }

    #[test]
    fn other_thread_gets_its_own_bounds() {
        let x = 1u64;
        let main = current(&x as *const u64 as usize).unwrap();
        let other = std::thread::spawn(|| {
            let y = 2u64;
            let b = current(&y as *const u64 as usize).unwrap();
            // Its own stack, recognised by the TLS at its top.
            let t = cached().own.get();
            assert_eq!((t.lo, t.hi, t.floor, t.proven), (b.lo, b.hi, b.lo, true));
            assert!(has_room(64 << 10));
            assert!(!has_room(b.hi - b.lo + 1));
            b
        })
        .join()
        .unwrap();
        assert_ne!(main, other);
    }

    #[test]
    fn a_heap_buffer_is_another_stack_not_the_threads() {
        std::thread::spawn(|| {
            let y = 2u64;
            let own = current(&y as *const u64 as usize).unwrap();
            let heap = vec![0u8; 1 << 20];
            let p = heap.as_ptr() as usize + 4096;
            let b = current(p).unwrap();
            assert!(b.contains(p, 8));
            assert_eq!(cached().own.get().lo, own.lo, "the thread's range is kept");
            let o = cached().other.get();
            assert_eq!((o.lo, o.hi), (b.lo, b.hi));
            // Answered from the cache now.
            assert_eq!(current(p + 8), Some(b));
        })
        .join()
        .unwrap();
    }
}
