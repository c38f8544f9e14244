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
//! `skip` never goes above a per-thread cap, which [`tune`] moves along [`CAPS`] to where
//! captures cost least: the best cap depends on the program (a recursive Rust workload
//! walks 7 frames a capture under a cap of 16 and runs 11% faster under 6; sqlite3 churns
//! 7 frames deep and thrashes under 6). Every [`WINDOW`] captures the thread compares the
//! window's cost (cycles of one capture in [`SAMPLE`], plus [`RETURN_CYCLES`] per
//! trampolined return) with the previous rung's, keeps moving while it gets at least 2%
//! cheaper, and otherwise goes back and stays [`HOLD`] windows before probing the other
//! way.
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

/// Next `(skip, quiet)` after a capture that saw `churn` entries popped since the previous,
/// under the thread's cap (see [`tune`]).
// x86-64 only (see `INITIAL_EXTRA`).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) fn next(skip: usize, quiet: usize, churn: usize, cap: usize) -> (usize, usize) {
    let min = min_unpatched();
    if min == 0 {
        return (0, 0);
    }
    let max = cap.clamp(min, MAX_SKIP);
    if churn > 0 {
        return ((skip + churn).clamp(min, max), 0);
    }
    if quiet + 1 >= DECAY {
        return (skip.saturating_sub(1).clamp(min, max), 0);
    }
    (skip.clamp(min, max), quiet + 1)
}

/// The caps [`tune`] moves between, lowest first; the last is [`MAX_SKIP`]. Neighbours
/// differ enough for one window to tell them apart.
pub const CAPS: [usize; 6] = [3, 4, 6, 8, 11, MAX_SKIP];
/// Captures per tuning window.
pub const WINDOW: usize = 1 << 14;
/// One capture in this many is timed.
pub const SAMPLE: usize = 16;
/// Cycles a trampolined return costs the program (a mispredicted return and the
/// trampoline, about 6.5 ns), outside any capture's timing.
pub const RETURN_CYCLES: u64 = 20;
/// Windows spent on a rung after a probe away from it failed.
pub const HOLD: usize = 8;

/// A thread's tuner: its rung of [`CAPS`], the direction of the next probe, the cost of the
/// rung the current probe came from (0: the current rung's cost is to be measured first),
/// and the windows left to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Tune {
    pub rung: usize,
    pub down: bool,
    pub prev: u64,
    pub hold: usize,
}

// The live shadow stack (its only user) is x86-64 only; compiled and tested everywhere.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl Tune {
    /// A new thread's: at the top cap (the policy before tuning), probing down first.
    pub const START: Tune = Tune { rung: CAPS.len() - 1, down: true, prev: 0, hold: 0 };

    /// The cap on `skip`.
    pub fn cap(self) -> usize {
        CAPS[self.rung.min(CAPS.len() - 1)]
    }

    /// Packed into one word (rung, direction, hold; `prev` is kept apart), 0 for
    /// [`Tune::START`]: a zeroed thread block starts there.
    pub fn pack(self) -> usize {
        let top = CAPS.len() - 1;
        (top - self.rung.min(top)) | usize::from(!self.down) << 8 | self.hold << 16
    }

    /// See [`Tune::pack`].
    pub fn unpack(w: usize, prev: u64) -> Tune {
        let top = CAPS.len() - 1;
        let rung = top - (w & 0xff).min(top);
        Tune { rung, down: w >> 8 & 1 == 0, prev, hold: w >> 16 }
    }
}

/// The tuner after a window whose captures cost `cost` (any unit, the same every window).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) fn tune(t: Tune, cost: u64) -> Tune {
    if t.hold > 0 {
        return Tune { hold: t.hold - 1, ..t };
    }
    let step = |r: usize, down: bool| {
        if down {
            r.checked_sub(1)
        } else {
            (r + 1 < CAPS.len()).then_some(r + 1)
        }
    };
    if t.prev == 0 {
        // `cost` is this rung's: probe a neighbour (the other way at an end).
        let (down, rung) = match step(t.rung, t.down) {
            Some(n) => (t.down, n),
            None => (!t.down, step(t.rung, !t.down).unwrap_or(t.rung)),
        };
        return Tune { rung, down, prev: cost.max(1), hold: 0 };
    }
    if cost.saturating_mul(50) < t.prev.saturating_mul(49) {
        // At least 2% cheaper: go on from here.
        return match step(t.rung, t.down) {
            Some(n) => Tune { rung: n, down: t.down, prev: cost.max(1), hold: 0 },
            None => Tune { rung: t.rung, down: !t.down, prev: 0, hold: HOLD },
        };
    }
    // Not cheaper: back where the probe came from; probe the other way after a while.
    let back = step(t.rung, !t.down).unwrap_or(t.rung);
    Tune { rung: back, down: !t.down, prev: 0, hold: HOLD }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_raises_quiet_decays_bounds_hold() {
        let min = min_unpatched();
        assert_eq!(next(3, 0, 2, MAX_SKIP), (5, 0));
        assert_eq!(next(15, 7, 9, MAX_SKIP), (MAX_SKIP, 0));
        assert_eq!(next(5, 3, 0, MAX_SKIP), (5, 4));
        assert_eq!(next(5, DECAY - 1, 0, MAX_SKIP), (4, 0));
        assert_eq!(next(min, DECAY - 1, 0, MAX_SKIP), (min, 0));
        // The cap bounds churn's raise and brings a higher skip down at once.
        assert_eq!(next(3, 0, 9, 6), (6, 0));
        assert_eq!(next(11, 3, 0, 6), (6, 4));
    }

    /// Runs the tuner against a cost per cap until it has settled; returns the rungs it
    /// spent its windows on.
    fn settle(cost: impl Fn(usize) -> u64, windows: usize) -> Vec<usize> {
        let mut t = Tune::START;
        let mut seen = Vec::new();
        for _ in 0..windows {
            seen.push(t.rung);
            t = tune(t, cost(t.cap()));
            assert_eq!(Tune::unpack(t.pack(), t.prev), t);
        }
        seen
    }

    #[test]
    fn the_tuner_finds_the_cheapest_cap_and_mostly_stays_there() {
        // A valley at cap 6 (rung 2), a cliff below it: as the Rust workload measured.
        let valley = |cap: usize| match cap {
            3 | 4 => 119,
            6 => 100,
            8 => 103,
            11 => 108,
            _ => 112,
        };
        let seen = settle(valley, 200);
        let at = seen[100..].iter().filter(|&&r| CAPS[r] == 6).count();
        assert!(at >= 80, "{seen:?}");
        // Flat from 8 up, worse below: as sqlite3 measured; it never settles below 8.
        let flat = |cap: usize| if cap >= 8 { 100 } else { 111 };
        let seen = settle(flat, 200);
        assert!(seen[20..].iter().filter(|&&r| CAPS[r] < 8).count() <= 20, "{seen:?}");
        assert!(seen[20..].iter().all(|&r| CAPS[r] >= 6), "{seen:?}");
        // Cheaper the lower: it goes to the bottom rung and stays.
        let seen = settle(|cap| cap as u64 * 10, 100);
        assert_eq!(Tune::unpack(0, 0), Tune::START);
        assert!(seen[50..].iter().filter(|&&r| r == 0).count() >= 40, "{seen:?}");
    }
}
