//! The flat stack depot as it was before the prefix-sharing trie (commit f594dfa, crates/
//! stackdepot/src), unchanged but for this header and its tests: one record per distinct
//! trace (a 16-byte header and 8 bytes per frame), found by a hash of the whole trace. Kept
//! here only as the baseline of the capture+save benches.
#![allow(dead_code, unused_imports, unreachable_pub, clippy::all)]

mod depot;
mod hash;
mod lock;
mod stats;
mod sys;

pub use depot::Depot;

/// A stored trace's name: 0 means "no trace"; the top [`Handle::EXTRA_BITS`] bits belong
/// to the caller.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Handle(u32);

impl Handle {
    /// "Stack not available": the budget was exhausted, or a signal handler interrupted an
    /// insert on its own thread.
    pub const NONE: Handle = Handle(0);
    /// Spare bits at the top of a handle that the caller may use (like the kernel's 5).
    pub const EXTRA_BITS: u32 = 5;
    const ID_BITS: u32 = 32 - Self::EXTRA_BITS;
    const ID_MASK: u32 = (1 << Self::ID_BITS) - 1;

    /// Whether this names no trace (extra bits aside).
    #[inline]
    pub fn is_none(self) -> bool {
        self.id() == 0
    }

    /// The raw 32-bit value, extra bits included (for storage in a caller's header).
    #[inline]
    pub fn to_raw(self) -> u32 {
        self.0
    }

    /// A handle from a value of [`to_raw`](Self::to_raw).
    #[inline]
    pub fn from_raw(raw: u32) -> Handle {
        Handle(raw)
    }

    /// This handle with its extra bits set to the low [`EXTRA_BITS`](Self::EXTRA_BITS)
    /// bits of `bits` (higher bits of `bits` are ignored).
    #[inline]
    pub fn with_extra(self, bits: u32) -> Handle {
        Handle(self.id() | (bits << Self::ID_BITS))
    }

    /// The caller's extra bits.
    #[inline]
    pub fn extra(self) -> u32 {
        self.0 >> Self::ID_BITS
    }

    /// The part that names the record.
    #[inline]
    pub(crate) fn id(self) -> u32 {
        self.0 & Self::ID_MASK
    }

    #[inline]
    pub(crate) fn from_id(id: u32) -> Handle {
        Handle(id)
    }
}
