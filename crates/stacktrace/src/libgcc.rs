//! libgcc's `_Unwind_Backtrace`: the "normal unwinder" that glibc `backtrace()`, std and
//! dhat-rs use, and the seed's baseline ("master").
//!
//! # Signal safety
//! Not async-signal-safe: libgcc takes a global lock on its first use of a module and may
//! allocate when it registers frame tables. The default chain never falls back to it.

use crate::{Regs, Unsupported};
use core::ffi::{c_int, c_void};

#[allow(non_camel_case_types)]
type _Unwind_Reason_Code = c_int;
const URC_NO_REASON: _Unwind_Reason_Code = 0;
const URC_NORMAL_STOP: _Unwind_Reason_Code = 4;

extern "C" {
    fn _Unwind_Backtrace(
        trace: extern "C" fn(*mut c_void, *mut c_void) -> _Unwind_Reason_Code,
        arg: *mut c_void,
    ) -> _Unwind_Reason_Code;
    fn _Unwind_GetIP(ctx: *mut c_void) -> usize;
}

struct State<'a> {
    /// The first return address to keep (the caller of the entry point).
    start_pc: usize,
    started: bool,
    buf: &'a mut [usize],
    n: usize,
}

extern "C" fn on_frame(ctx: *mut c_void, arg: *mut c_void) -> _Unwind_Reason_Code {
    // SAFETY: `arg` is the `&mut State` passed to `_Unwind_Backtrace` below, alive for the
    // whole call and not otherwise borrowed meanwhile.
    let st = unsafe { &mut *(arg as *mut State<'_>) };
    // SAFETY: `ctx` is the live context libgcc hands to the callback.
    let ip = unsafe { _Unwind_GetIP(ctx) };
    // A patched frame shows as a pseudo-frame at the software shadow stack's trampoline
    // before its real caller: not a frame of the program.
    if crate::softshadow::is_trampoline(ip) {
        return URC_NO_REASON;
    }
    if !st.started {
        // Our own frames come first; the caller's frame is the one returning to `start_pc`.
        if ip != st.start_pc {
            return URC_NO_REASON;
        }
        st.started = true;
    }
    if st.n >= st.buf.len() || ip == 0 {
        return URC_NORMAL_STOP;
    }
    st.buf[st.n] = ip;
    st.n += 1;
    URC_NO_REASON
}

/// Captures with libgcc; entry 0 is the return address into the caller.
#[inline(never)]
pub fn capture(buf: &mut [usize]) -> Result<usize, Unsupported> {
    let regs = crate::arch::caller_regs!();
    capture_from(&regs, buf)
}

/// Captures with libgcc, keeping frames from the one that returns to `regs.pc` on.
///
/// libgcc always starts at its own caller, so `regs` must describe a frame that is live on the
/// current stack and not a signal context (`pc_is_exact` is refused).
pub fn capture_from(regs: &Regs, buf: &mut [usize]) -> Result<usize, Unsupported> {
    if regs.pc_is_exact {
        return Err(Unsupported::NotEnabled);
    }
    if buf.is_empty() {
        return Ok(0);
    }
    let mut st = State { start_pc: regs.pc, started: false, buf, n: 0 };
    // SAFETY: `on_frame` matches libgcc's callback signature and `st` outlives the call.
    unsafe { _Unwind_Backtrace(on_frame, &mut st as *mut State<'_> as *mut c_void) };
    if st.n == 0 {
        return Err(Unsupported::NoFrames);
    }
    Ok(st.n)
}
