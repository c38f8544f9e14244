//! The current thread's stack bounds, cached per thread.
//!
//! # Signal safety
//! [`current`] is async-signal-safe: the first call on a thread reads `/proc/self/maps` with
//! raw syscalls (see [`crate::maps`]); later calls read a thread-local `Cell`. When the stack
//! pointer is outside the cached range (a signal handler on an alternate stack, a fiber), the
//! range containing it is looked up again and not cached.

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

thread_local! {
    // Const-initialised, no destructor: no allocation and no registration at thread exit.
    static CACHE: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// Bounds of the stack that `sp` is on, for the current thread.
///
/// Returns `None` when `sp` is in no readable and writable mapping (not a stack we can trust).
pub fn current(sp: usize) -> Option<StackBounds> {
    // `try_with`: during thread teardown the TLS slot may be gone; then look up uncached.
    let cached = CACHE.try_with(Cell::get).unwrap_or((0, 0));
    if cached.0 <= sp && sp < cached.1 {
        return Some(StackBounds { lo: cached.0, hi: cached.1 });
    }
    let m = crate::maps::find_mapping(sp)?;
    if !(m.read && m.write) {
        return None;
    }
    if cached == (0, 0) {
        let _ = CACHE.try_with(|c| c.set((m.start, m.end)));
    }
    Some(StackBounds { lo: m.start, hi: m.end })
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
        assert_eq!(CACHE.with(Cell::get), (b.lo, b.hi));
        assert_eq!(current(a), Some(b));
        assert!(!b.contains(b.hi - 4, 8));
    }

    #[test]
    fn other_thread_gets_its_own_bounds() {
        let x = 1u64;
        let main = current(&x as *const u64 as usize).unwrap();
        let other = std::thread::spawn(|| {
            let y = 2u64;
            current(&y as *const u64 as usize).unwrap()
        })
        .join()
        .unwrap();
        assert_ne!(main, other);
    }
}
