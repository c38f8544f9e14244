//! The slow path: parse an object's CFI with gimli and reduce the row for one address to a
//! compact [`Rule`].
//!
//! # Signal safety
//! [`rule_for`] is async-signal-safe: gimli parses borrowed slices, and the unwind context
//! lives on the stack in fixed arrays ([`Storage`]), so nothing allocates. It uses about
//! 4 KiB of stack optimised (see the measurement test in `tests/it/dwarf.rs`).

use super::arch;
use super::cache::Rule;
use super::module::{self, Miss};
use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, NativeEndian, Register, RegisterRule,
    UnwindContext, UnwindContextStorage, UnwindSection, UnwindTableRow,
};

/// Fixed-size storage for gimli's unwind context: no heap, and small, since it lives on the
/// stack of the capturing thread (maybe a signal stack). Compilers save at most the
/// callee-saved registers plus the return address (x86-64: 7; aarch64: 20 with d8-d15), and
/// `DW_CFA_remember_state` pushes one row here (glibc and GCC nest it once); more makes
/// gimli fail cleanly and the walk stops.
#[derive(Debug)]
struct Storage;

impl UnwindContextStorage<usize> for Storage {
    type Rules = [(Register, RegisterRule<usize>); arch::MAX_RULES];
    type Stack = [UnwindTableRow<usize, Self>; 2];
}

/// The rule for the frame at `pc` (looked up at `lookup`, which is `pc - 1` for a return
/// address). `Err(Transient)` must not be cached.
#[cold]
#[inline(never)]
pub(crate) fn rule_for(lookup: usize, pc: usize, may_refresh: &mut bool) -> Result<Rule, Miss> {
    let m = module::find(lookup, may_refresh)?;
    Ok(rule_in(&m, lookup, pc).unwrap_or(Rule::Stop))
}

fn rule_in(m: &module::Module, lookup: usize, pc: usize) -> Option<Rule> {
    let hdr_at = m.hdr.as_ptr() as u64;
    let bases =
        BaseAddresses::default().set_eh_frame_hdr(hdr_at).set_eh_frame(m.eh_frame.as_ptr() as u64);
    let hdr = EhFrameHdr::new(m.hdr, NativeEndian).parse(&bases, 8).ok()?;
    let eh = EhFrame::new(m.eh_frame, NativeEndian);
    let fde =
        hdr.table()?.fde_for_address(&eh, &bases, lookup as u64, EhFrame::cie_from_offset).ok()?;
    // The signal trampoline: an 'S' FDE whose CFI (glibc: a CFA expression and 17 register
    // expressions) we do not evaluate. Recognise its bytes instead; `pc` is the trampoline's
    // first instruction (a handler returns to it).
    let is_sigreturn = || {
        let len = arch::SIGRETURN.len();
        let inside = pc >= fde.initial_address() as usize
            && pc.checked_add(len).is_some_and(|e| e <= fde.end_address() as usize);
        // SAFETY: `[pc, pc + len)` lies inside the FDE's code range: mapped, readable code of
        // a loaded object.
        inside && unsafe { core::slice::from_raw_parts(pc as *const u8, len) } == arch::SIGRETURN
    };
    if fde.is_signal_trampoline() && is_sigreturn() {
        return Some(Rule::Signal);
    }
    let mut ctx = UnwindContext::<usize, Storage>::new_in();
    let Ok(row) = fde.unwind_info_for_address(&eh, &bases, &mut ctx, lookup as u64) else {
        return is_sigreturn().then_some(Rule::Signal);
    };
    let ra_reg = fde.cie().return_address_register();
    let cfa = match *row.cfa() {
        CfaRule::RegisterAndOffset { register, offset }
            if register == arch::SP || register == arch::FP =>
        {
            (register == arch::FP, i32::try_from(offset).ok()?)
        }
        // An expression CFA: only the trampoline's is understood.
        _ => return is_sigreturn().then_some(Rule::Signal),
    };
    let (cfa_fp, cfa_off) = cfa;
    let ra_off = match rule_of(row, ra_reg) {
        Some(RegisterRule::Offset(o)) => i16::try_from(o).ok()?,
        // No rule, or explicitly undefined: the outermost frame (`_start`, `clone3`).
        None | Some(RegisterRule::Undefined) => return Some(Rule::Stop),
        _ => return None,
    };
    let fp_off = match rule_of(row, arch::FP) {
        None | Some(RegisterRule::Undefined | RegisterRule::SameValue) => None,
        Some(RegisterRule::Offset(o)) => Some(i16::try_from(o).ok()?),
        _ => return None,
    };
    Some(Rule::Frame { cfa_fp, cfa_off, ra_off, fp_off })
}

/// The rule for `reg`, `None` if the row has none. Written against `registers()` so that it
/// means the same with gimli 0.32 (`register` returns `Undefined` for "none") and 0.34
/// (`register` returns `Option`).
fn rule_of(row: &UnwindTableRow<usize, Storage>, reg: Register) -> Option<RegisterRule<usize>> {
    row.registers().find(|(r, _)| *r == reg).map(|(_, rule)| rule.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    extern "C" fn leaf(x: usize) -> usize {
        core::hint::black_box(x) + 1
    }

    #[test]
    fn rules_of_known_code() {
        // At a function's first instruction the CFA is sp + 8 (x86-64: the return address
        // just pushed) and the frame pointer is untouched.
        let f = leaf as *const () as usize;
        assert_eq!(leaf(1), 2);
        let r = rule_for(f, f, &mut false).unwrap();
        #[cfg(target_arch = "x86_64")]
        assert_eq!(r, Rule::Frame { cfa_fp: false, cfa_off: 8, ra_off: -8, fp_off: None });
        assert!(matches!(r, Rule::Frame { cfa_fp: false, .. }), "{r:?}");
        // glibc's qsort has CFI too (no frame pointer there).
        let q = libc::qsort as *const () as usize;
        assert!(matches!(rule_for(q, q, &mut false), Ok(Rule::Frame { cfa_fp: false, .. })));
        // An address in no object.
        assert_eq!(rule_for(4096, 4096, &mut false), Err(Miss::NotFound));
    }

    #[test]
    fn storage_is_small_enough_for_a_signal_stack() {
        let ctx = core::mem::size_of::<UnwindContext<usize, Storage>>();
        assert!(ctx < 4096, "{ctx}");
    }
}
