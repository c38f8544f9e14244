//! What every walker here shares: the memory reader ([`Memory`]: the frame-pointer walk, the
//! DWARF walk, the software shadow stack's walk and the hardware shadow stacks' readers) and
//! the one step of an exact walk from a frame ([`Unwind`]: the DWARF step, the step out of an
//! entry point (`arch::caller_of`) and the software shadow stack's walk, which unit-tests it
//! on synthetic stacks). Compiled on every host; imports nothing of the walkers.

/// Reads words of memory for a walker: `None` when the address is not readable.
pub trait Memory {
    /// The word at `addr`.
    fn read(&self, addr: usize) -> Option<usize>;

    /// The two words at `addr` and `addr + 8` (a frame record). One bounds check suffices
    /// for a contiguous reader: override it on hot paths.
    #[inline]
    fn read_pair(&self, addr: usize) -> Option<(usize, usize)> {
        Some((self.read(addr)?, self.read(addr.checked_add(8)?)?))
    }
}

/// How the frame running at some `pc` with stack pointer `sp` and frame pointer `fp`
/// reaches its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(all(target_os = "linux", target_arch = "x86_64")), allow(dead_code))]
pub(crate) enum Unwind {
    /// A frame record at `fp`: CFA = fp + 16, return address at CFA - 8, the caller's fp at
    /// CFA - 16.
    Record,
    /// Another plain rule: the caller's stack pointer (the CFA), the return-address slot, and
    /// where the caller's fp is saved (`None`: unchanged).
    Cfa { cfa: usize, slot: usize, fp_slot: Option<usize> },
    /// The walk stops here: the outermost frame, no CFI, or a rule it cannot use.
    Stop,
    /// A signal frame (or a rule too large to cache): only the full DWARF walker goes on.
    Other,
    /// The rule is not cached and looking it up needs more stack than is left (a signal
    /// handler on a small alternate stack): the capture must refuse
    /// ([`crate::Unsupported::StackTooSmall`]).
    Refused,
}
