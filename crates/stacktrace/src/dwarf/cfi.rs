//! The slow path: parse an object's CFI with gimli and reduce the row for one address to a
//! compact [`Rule`].
//!
//! # Signal safety
//! [`rule_for`] is async-signal-safe: gimli parses borrowed slices, and the unwind context
//! lives on the stack in fixed arrays ([`Storage`]), so nothing allocates. It needs up to
//! [`super::MISS_STACK`] bytes of stack and refuses (`Miss::LowStack`) when the stack it runs on
//! has less left (a handler on a small `sigaltstack`), so it never overflows; see the
//! measurement test in `tests/it/dwarf.rs`.

use super::arch;
use super::cache::Rule;
use super::module::{self, Miss};
use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, EhFrameOffset, NativeEndian, Register,
    RegisterRule, UnwindContext, UnwindContextStorage, UnwindSection, UnwindTableRow,
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
/// address). `Err(Transient)` and `Err(LowStack)` must not be cached.
///
/// The parse runs on the caller's stack when it has [`super::MISS_STACK`] bytes left, else
/// on the process's spare stack ([`spare`]) if no other thread is using it, else it is
/// refused (`LowStack`).
#[cold]
#[inline(never)]
pub(crate) fn rule_for(lookup: usize, pc: usize, may_refresh: &mut bool) -> Result<Rule, Miss> {
    if crate::bounds::has_room(super::MISS_STACK) {
        return rule_parsed(lookup, pc, may_refresh);
    }
    spare::run(|| rule_parsed(lookup, pc, may_refresh)).unwrap_or(Err(Miss::LowStack))
}

/// One spare stack for the whole process, for misses on stacks without room (a handler on a
/// small `sigaltstack`, a fiber whose bounds are unknown): mapped on first use with a guard
/// page below it, taken with a try-lock (a signal handler or another thread that finds it
/// busy is refused, never waits), never freed.
mod spare {
    use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const SIZE: usize = super::super::MISS_STACK * 2;
    const GUARD: usize = 4096;

    static BUSY: AtomicBool = AtomicBool::new(false);
    /// Top of the mapped stack, 0 before the first use.
    static TOP: AtomicUsize = AtomicUsize::new(0);

    /// Runs `f` on the spare stack; `None` if it is busy or cannot be mapped.
    pub(super) fn run<R>(f: impl FnOnce() -> R) -> Option<R> {
        // Acquire pairs with the Release below: the previous user is done with the stack.
        if BUSY.swap(true, Ordering::Acquire) {
            return None;
        }
        let r = top().and_then(|top| call(top, f));
        // Release: our use of the stack happens before the next user's.
        BUSY.store(false, Ordering::Release);
        r
    }

    fn top() -> Option<usize> {
        // Relaxed: written and read only by the holder of BUSY, which orders them.
        let t = TOP.load(Ordering::Relaxed);
        if t != 0 {
            return Some(t);
        }
        // SAFETY: a fresh anonymous private mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                GUARD + SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        // SAFETY: the first page of the mapping just made: becomes the guard.
        unsafe { libc::mprotect(p, GUARD, libc::PROT_NONE) };
        let t = p as usize + GUARD + SIZE;
        // Relaxed: see above.
        TOP.store(t, Ordering::Relaxed);
        Some(t)
    }

    fn call<F: FnOnce() -> R, R>(top: usize, f: F) -> Option<R> {
        struct Job<F, R> {
            f: Option<F>,
            r: Option<R>,
        }
        unsafe extern "C" fn trampoline<F: FnOnce() -> R, R>(arg: *mut libc::c_void) {
            // SAFETY: `arg` is the `Job` of `call`, alive and exclusively ours for the call.
            let job = unsafe { &mut *(arg as *mut Job<F, R>) };
            if let Some(f) = job.f.take() {
                job.r = Some(f());
            }
        }
        let mut job = Job { f: Some(f), r: None };
        // SAFETY: `top` ends the spare mapping (aligned, guard page below, SIZE bytes), held
        // exclusively through BUSY; the trampoline does not unwind (a panic in `f` aborts at
        // its `extern "C"` boundary).
        unsafe {
            crate::arch::call_on_stack(
                top,
                trampoline::<F, R>,
                &mut job as *mut Job<F, R> as *mut libc::c_void,
            )
        };
        job.r
    }
}

/// The parse proper, in its own frame so that the room check above runs before its stack
/// is reserved.
#[inline(never)]
fn rule_parsed(lookup: usize, pc: usize, may_refresh: &mut bool) -> Result<Rule, Miss> {
    let m = module::find(lookup, may_refresh)?;
    Ok(rule_in(&m, lookup, pc).unwrap_or(Rule::Stop))
}

fn rule_in(m: &module::Module, lookup: usize, pc: usize) -> Option<Rule> {
    decode(m.hdr, m.eh_frame, lookup, pc, &|pc| {
        // SAFETY: `decode` asks only for `[pc, pc + len)` inside an FDE's code range of this
        // loaded object: mapped, readable code.
        let code = unsafe { core::slice::from_raw_parts(pc as *const u8, arch::SIGRETURN.len()) };
        code == arch::SIGRETURN
    })
}

/// The rule for `lookup` from an object's `.eh_frame_hdr` and `.eh_frame` (both read only
/// through the slices, at the addresses the slices have). `sigreturn_at(pc)` says whether the
/// signal trampoline's bytes are at `pc`; it is asked only when `[pc, pc + its length)` lies
/// inside the code range of the FDE found. Any malformed input gives `None`, never a panic
/// (the fuzz target `dwarf_rules` checks it).
pub(crate) fn decode(
    hdr: &[u8],
    eh_frame: &[u8],
    lookup: usize,
    pc: usize,
    sigreturn_at: &dyn Fn(usize) -> bool,
) -> Option<Rule> {
    let (hdr_at, hdr_len) = (hdr.as_ptr() as u64, hdr.len());
    let bases =
        BaseAddresses::default().set_eh_frame_hdr(hdr_at).set_eh_frame(eh_frame.as_ptr() as u64);
    let hdr = EhFrameHdr::new(hdr, NativeEndian).parse(&bases, 8).ok()?;
    let table = hdr.table()?;
    // gimli's binary search computes `fde_count / 2 * row size` unchecked: a count that the
    // table cannot hold (rows are at least 4 bytes) overflows. Found by the `dwarf_rules`
    // fuzz target; see below for the other one.
    if table.iter(&bases).size_hint().1? > hdr_len / 4 {
        return None;
    }
    let mut eh = EhFrame::new(eh_frame, NativeEndian);
    // Opcode 0x2d is aarch64's `DW_CFA_AARCH64_negate_ra_state` (return addresses signed by
    // `-Zbranch-protection=pac-ret` / `-mbranch-protection`), which gimli decodes only when
    // told the vendor: without it every signed frame's CFI is an error and the walk stops.
    // The sign state it tracks needs no rule here: saved return addresses are stripped.
    eh.set_vendor(arch::VENDOR);
    // gimli's `EhHdrTable::fde_for_address` would do these steps with an unchecked
    // `fde pointer - eh_frame pointer` (gimli 0.34 `pointer_to_offset`): a table entry that
    // points below `.eh_frame` overflows, which panics in a build with overflow checks (a
    // user's debug build; inside malloc, an abort). Found by the `dwarf_rules` fuzz target.
    let fde_ptr = table.lookup(lookup as u64, &bases).ok()?.direct().ok()?;
    let offset = fde_ptr.checked_sub(hdr.eh_frame_ptr().direct().ok()?)?;
    let offset = EhFrameOffset(usize::try_from(offset).ok()?);
    let fde = eh.fde_from_offset(&bases, offset, EhFrame::cie_from_offset).ok()?;
    if !fde.contains(lookup as u64) {
        return None;
    }
    // The signal trampoline: an 'S' FDE whose CFI (glibc: a CFA expression and 17 register
    // expressions) we do not evaluate. Recognise its bytes instead; `pc` is the trampoline's
    // first instruction (a handler returns to it).
    let is_sigreturn = || {
        let len = arch::SIGRETURN.len();
        let inside = pc >= fde.initial_address() as usize
            && pc.checked_add(len).is_some_and(|e| e <= fde.end_address() as usize);
        inside && sigreturn_at(pc)
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
        // Explicitly undefined: the outermost frame (`_start`, `clone3`). No rule: never on
        // x86-64 (the CIE saves the return address); on aarch64 it is still in x30 (before
        // the prologue, or a leaf without a frame record), which the walker does not track.
        // Both end the walk.
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

    /// The return address into the caller of this function: a call site inside it.
    #[inline(never)]
    fn return_address() -> usize {
        crate::arch::caller_regs!().pc
    }

    #[test]
    fn rules_of_known_code() {
        let f = leaf as *const () as usize;
        assert_eq!(leaf(1), 2);
        let r = rule_for(f, f, &mut false).unwrap();
        // At a function's first instruction the frame pointer is untouched and the return
        // address is where the call left it. x86-64: on the stack, CFA = sp + 8.
        #[cfg(target_arch = "x86_64")]
        assert_eq!(r, Rule::Frame { cfa_fp: false, cfa_off: 8, ra_off: -8, fp_off: None });
        // aarch64: CFA = sp, the return address still in x30 (no rule for it in the row, as
        // opposed to `DW_CFA_undefined` in `_start`). A rule cannot say "in x30" because the
        // walker does not track x30, so the walk stops there (a documented limit).
        #[cfg(target_arch = "aarch64")]
        assert_eq!(r, Rule::Stop);
        // Past the prologue of a function built with frame pointers: CFA = fp + n, and the
        // frame record {caller's fp, return address} at fp. x86-64: always right below the
        // CFA; aarch64: below the other callee-saved registers, so n may exceed 16.
        let ra = return_address();
        let r = rule_for(ra - 1, ra, &mut false).unwrap();
        let Rule::Frame { cfa_fp: true, cfa_off, ra_off, fp_off: Some(fp_off) } = r else {
            panic!("no frame record: {r:?}")
        };
        assert_eq!((i32::from(fp_off), i32::from(ra_off)), (-cfa_off, 8 - cfa_off), "{r:?}");
        assert!(cfa_off >= 16, "{r:?}");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(cfa_off, 16, "{r:?}");
        // glibc's qsort has CFI too (no frame pointer there). x86-64: entry rule as above.
        #[cfg(target_arch = "x86_64")]
        {
            let q = libc::qsort as *const () as usize;
            assert!(matches!(rule_for(q, q, &mut false), Ok(Rule::Frame { cfa_fp: false, .. })));
        }
        // aarch64: `qsort` is a tail call to `qsort_r`, which has nothing saved at its entry;
        // a few instructions in, its prologue has pushed x29/x30 and the CFA is sp-based.
        #[cfg(target_arch = "aarch64")]
        {
            let q = libc::qsort_r as *const () as usize;
            assert_eq!(rule_for(q, q, &mut false), Ok(Rule::Stop));
            let sp_based = (4..64).step_by(4).any(|off| {
                matches!(
                    rule_for(q + off, q + off, &mut false),
                    Ok(Rule::Frame { cfa_fp: false, cfa_off: 16.., fp_off: Some(_), .. })
                )
            });
            assert!(sp_based, "no sp-based frame rule in qsort_r's first 16 instructions");
        }
        // An address in no object.
        assert_eq!(rule_for(4096, 4096, &mut false), Err(Miss::NotFound));
    }

    #[test]
    fn storage_is_small_enough_for_a_signal_stack() {
        let ctx = core::mem::size_of::<UnwindContext<usize, Storage>>();
        assert!(ctx < 4096, "{ctx}");
    }
}
