//! The one step of an exact walk from a frame, as every walker here names it: the DWARF step
//! (`dwarf::step`), the step out of an entry point (`arch::caller_of`) and the software shadow
//! stack's walk (`softshadow::walk`, which unit-tests it on synthetic stacks). Pure data:
//! compiled on every host.

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
