//! glibc's `backtrace()`, without the software shadow stack's pseudo-frames.
//!
//! Unwinders see one extra frame at the trampoline for every frame that `stacks=shadow`
//! patched (its CFI leads on to the real caller). glibc's own `backtrace()` would hand that
//! address to the program, and `backtrace_symbols` would print it as an anonymous
//! `libukasan.so(+0x...)` line between the real frames. This `backtrace` walks with the same
//! unwinder (libgcc's `_Unwind_Backtrace`) and leaves those pseudo-frames out; glibc's
//! internal users (which reach libgcc through their own handle) are not affected.

use core::ffi::{c_int, c_void};

/// `backtrace(buffer, size)`: the return addresses of the calling thread, starting with the
/// one in the caller, at most `size`; returns how many were stored.
///
/// # Safety
/// `buffer` is writable for `size` pointers (as for glibc's).
#[no_mangle]
pub unsafe extern "C" fn backtrace(buffer: *mut *mut c_void, size: c_int) -> c_int {
    let regs = stacktrace::caller_regs!();
    if buffer.is_null() || size <= 0 {
        return 0;
    }
    // SAFETY: the caller passes `size` writable pointer slots; `usize` has the layout of a
    // pointer.
    let buf = unsafe { core::slice::from_raw_parts_mut(buffer.cast::<usize>(), size as usize) };
    // The first frame kept is the caller's (regs.pc is its return address from us), as in
    // glibc's.
    stacktrace::libgcc::capture_from(&regs, buf).map_or(0, |n| n as c_int)
}
