//! The insert lock: a spin lock whose word is its owner's thread identity.
//!
//! A plain mutex cannot serve inside malloc and signal handlers; this one gives:
//! - **Re-entrancy is detected, not deadlocked.** A signal handler that interrupts an insert
//!   and saves a new trace on the same thread finds its own identity in the word and gets
//!   [`Busy`] at once (the depot then answers `Handle::NONE`). The identity is
//!   `pthread_self()` (the thread's control block address, one load, no syscall: `gettid`
//!   costs ~200 ns on this machine, as much as the rest of an insert).
//! - **Fork is survivable.** The depot keeps the word in a page marked `MADV_WIPEONFORK`
//!   (Linux >= 4.14), so a child starts with the lock free even if another parent thread held
//!   it at `fork()`. The critical sections are ordered so that stopping them at any
//!   instruction leaves the depot consistent (see `Depot::insert_locked`).
//! - **Waiting is bounded.** A waiter spins, then yields; after [`MAX_YIELDS`] yields
//!   (at least a few hundred ms) it gives up with [`Busy`] rather than hang: that covers an
//!   owner that can never release it (a thread that `longjmp`ed out of a signal handler that
//!   had interrupted an insert, a kernel without `MADV_WIPEONFORK`). A live owner holds the
//!   lock for ~100 ns and never waits for anything meanwhile (no allocation, no syscall, no
//!   other lock), so the bound is only reached when something is really wrong.

use core::sync::atomic::{AtomicUsize, Ordering};

use super::sys;

/// The lock is held by the calling thread itself (a signal handler interrupted an insert),
/// or has not been released for a very long time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Busy;

/// Spin lock whose word is the owner's identity (0 = free). All-zero bytes are a free lock,
/// so it can live in fresh anonymous memory.
#[derive(Debug)]
#[repr(transparent)]
pub(crate) struct OwnerLock {
    owner: AtomicUsize,
}

/// Spins between two yields (a power of two).
const SPINS_PER_YIELD: u32 = 32;
/// Yields before giving up.
const MAX_YIELDS: u32 = 1 << 20;

impl OwnerLock {
    #[cfg(test)]
    pub(crate) const fn new() -> Self {
        Self { owner: AtomicUsize::new(0) }
    }

    /// Takes the lock, waiting (bounded) for an owner on another thread; fails at once if
    /// the caller already holds it.
    #[inline]
    pub(crate) fn lock(&self) -> Result<Guard<'_>, Busy> {
        let me = sys::thread_id();
        let mut spins = 0u32;
        loop {
            // Acquire on success pairs with the Release store in `Guard::drop`: the previous
            // critical section happens-before ours.
            match self.owner.compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Ok(Guard { lock: self }),
                Err(cur) if cur == me => return Err(Busy),
                Err(_) => {
                    spins += 1;
                    if spins & (SPINS_PER_YIELD - 1) != 0 {
                        core::hint::spin_loop();
                    } else if spins / SPINS_PER_YIELD >= MAX_YIELDS {
                        return Err(Busy);
                    } else {
                        sys::yield_now();
                    }
                }
            }
        }
    }

    /// Test hook: the current owner (0 = free).
    #[cfg(test)]
    pub(crate) fn owner(&self) -> usize {
        // Relaxed: diagnostic read only.
        self.owner.load(Ordering::Relaxed)
    }
}

/// Holding this means holding the lock; dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct Guard<'a> {
    lock: &'a OwnerLock,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        // Release pairs with the Acquire of the next `lock`: our writes under the lock are
        // visible to the next holder.
        self.lock.owner.store(0, Ordering::Release);
    }
}
