//! The patch policy: which new frames to patch.
//!
//! A frame that is patched and returns before the next capture costs a patch (~5 ns) plus a
//! mispredicted trampolined return (~6.5 ns), where walking it again would cost ~1 ns. The
//! frames that change between captures are the newest ones (allocator wrappers, the loop
//! body that allocates), so the policy leaves the newest `skip` frame records unpatched and
//! adapts `skip` per thread: every entry popped between two captures (seen as the anchor
//! sitting below the previous capture's top) raises it by one, up to [`MAX_SKIP`]; after
//! [`DECAY`] captures without churn it drops by one, down to the process-wide minimum
//! ([`set_min_unpatched`]). Measured in `benches/capture.rs` (`softshadow/*`).
//!
//! Pure arithmetic: compiled and tested on every host.

use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Default lower bound of `skip`.
pub const DEFAULT_MIN_UNPATCHED: usize = 1;
/// Upper bound of `skip`.
pub const MAX_SKIP: usize = 16;
/// Captures without churn before `skip` decreases by one.
pub const DECAY: usize = 1024;
/// `skip` of a new thread, above the minimum: allocator-like callers churn about 3 frames.
// The live shadow stack (its only user) is x86-64 only; compiled and tested everywhere.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const INITIAL_EXTRA: usize = 2;

static MIN_UNPATCHED: AtomicUsize = AtomicUsize::new(DEFAULT_MIN_UNPATCHED);

/// Sets the number of newest frame records never patched (default
/// [`DEFAULT_MIN_UNPATCHED`]; 0 patches every frame a capture walks). Threads adapt upward
/// from it; threads already running take it at their next decay or churn.
pub fn set_min_unpatched(frames: usize) {
    // Relaxed: a tuning value read by every capture; no other data depends on it.
    MIN_UNPATCHED.store(frames.min(MAX_SKIP), Relaxed);
}

/// The current process-wide minimum (see [`set_min_unpatched`]).
pub fn min_unpatched() -> usize {
    // Relaxed: see `set_min_unpatched`.
    MIN_UNPATCHED.load(Relaxed)
}

// x86-64 only (see `INITIAL_EXTRA`).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) fn initial_skip() -> usize {
    let m = min_unpatched();
    if m == 0 {
        0
    } else {
        (m + INITIAL_EXTRA).min(MAX_SKIP)
    }
}

/// Next `(skip, quiet)` after a capture that saw `churn` entries popped since the previous.
// x86-64 only (see `INITIAL_EXTRA`).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) fn next(skip: usize, quiet: usize, churn: usize) -> (usize, usize) {
    let min = min_unpatched();
    if min == 0 {
        return (0, 0);
    }
    if churn > 0 {
        return ((skip + churn).clamp(min, MAX_SKIP), 0);
    }
    if quiet + 1 >= DECAY {
        return (skip.saturating_sub(1).max(min), 0);
    }
    (skip.max(min), quiet + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_raises_quiet_decays_bounds_hold() {
        let min = min_unpatched();
        assert_eq!(next(3, 0, 2), (5, 0));
        assert_eq!(next(15, 7, 9), (MAX_SKIP, 0));
        assert_eq!(next(5, 3, 0), (5, 4));
        assert_eq!(next(5, DECAY - 1, 0), (4, 0));
        assert_eq!(next(min, DECAY - 1, 0), (min, 0));
    }
}
