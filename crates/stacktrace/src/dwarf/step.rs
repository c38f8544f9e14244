//! One frame's rule, for other backends: the software shadow stack asks, before it patches a
//! return-address slot found through the frame-pointer chain, whether the CFI proves that the
//! frame keeps its frame record at `fp` (saved fp at `fp`, return address at `fp + 8`).
//!
//! # Signal safety
//! [`frame_record_at_fp`] is async-signal-safe under the conditions of the module docs of
//! `dwarf`; it never refreshes the `dl_iterate_phdr` snapshot (it may run in a handler).

use super::cache::{self, Rule};
use super::cfi;

/// For a frame whose program counter is the return address `ra` (looked up at `ra - 1`):
/// `Some(true)` when its CFI says CFA = fp + 16, return address at CFA - 8 and the caller's
/// fp at CFA - 16, i.e. `fp` points at a genuine frame record; `Some(false)` for any other
/// rule; `None` when there is no CFI for it.
#[inline]
pub(crate) fn frame_record_at_fp(ra: usize) -> Option<bool> {
    let lookup = ra.checked_sub(1)?;
    let rule = match cache::get(lookup) {
        Some(w) => Rule::unpack(w)?,
        None => {
            let r = cfi::rule_for(lookup, ra, &mut false).ok()?;
            cache::insert(lookup, r);
            r
        }
    };
    Some(matches!(rule, Rule::Frame { cfa_fp: true, cfa_off: 16, ra_off: -8, fp_off: Some(-16) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn here() -> usize {
        crate::arch::caller_regs!().pc
    }

    #[test]
    fn rust_call_sites_keep_frame_records_and_page_zero_has_no_cfi() {
        // This crate is built with frame pointers: the return address into this test
        // function is a call site inside an rbp frame.
        assert_eq!(frame_record_at_fp(here()), Some(true));
        assert_eq!(frame_record_at_fp(4096), None);
    }
}
