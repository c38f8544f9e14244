//! C++ `operator new` / `operator delete`, every standard form, by their Itanium-mangled
//! names.
//!
//! Every delete tells the runtime what it knows of the object: its family, the size a sized
//! delete passes (else [`Expect::ANY_SIZE`]) and the alignment (16, the default, unless an
//! `std::align_val_t` is passed), so a delete through a pointer of the wrong type is
//! reported as `new-delete-type-mismatch`, as ASan does.

use super::{Libc, RT};
use core::ffi::c_void;
use rt::{Expect, Family};

/// Out of memory in a throwing `operator new`: throw `std::bad_alloc` through libstdc++ if it
/// is loaded, else abort with a message (returning NULL would be wrong).
#[cold]
#[inline(never)]
fn bad_alloc() -> ! {
    let name = b"_ZSt17__throw_bad_allocv\0";
    // SAFETY: dlsym with a NUL-terminated name; RTLD_DEFAULT searches every loaded module.
    let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr().cast()) };
    if !f.is_null() {
        // SAFETY: libstdc++'s `std::__throw_bad_alloc()` takes nothing and never returns
        // (it throws; our callers are `C-unwind`, so the exception may pass).
        let throw: extern "C-unwind" fn() -> ! = unsafe { core::mem::transmute(f) };
        throw();
    }
    rt::sys::write_all(
        2,
        b"ukasan: operator new: out of memory and no std::bad_alloc to throw; aborting\n",
    );
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

macro_rules! new_op {
    ($(#[$doc:meta])* $name:ident, $family:expr, throwing, ($($arg:ident : $ty:ty),*), $align:expr) => {
        $(#[$doc])*
        #[no_mangle]
        pub extern "C-unwind" fn $name(size: usize $(, $arg: $ty)*) -> *mut c_void {
            let regs = stacktrace::caller_regs!();
            let p = RT.alloc(&Libc, size, $align, $family, false, &regs);
            if p.is_null() {
                bad_alloc();
            }
            p.cast()
        }
    };
    ($(#[$doc:meta])* $name:ident, $family:expr, nothrow, ($($arg:ident : $ty:ty),*), $align:expr) => {
        $(#[$doc])*
        #[no_mangle]
        pub extern "C" fn $name(size: usize $(, $arg: $ty)*) -> *mut c_void {
            let regs = stacktrace::caller_regs!();
            RT.alloc(&Libc, size, $align, $family, false, &regs).cast()
        }
    };
}

macro_rules! delete_op {
    ($(#[$doc:meta])* $name:ident, $family:expr, ($($arg:ident : $ty:ty),*), $layout:expr) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// `p` is null or from the matching `operator new` (anything else is reported).
        #[no_mangle]
        pub unsafe extern "C" fn $name(p: *mut c_void $(, $arg: $ty)*) {
            let regs = stacktrace::caller_regs!();
            let expect = Expect { family: $family, layout: $layout };
            // SAFETY: forwarded; the runtime validates the pointer.
            unsafe { RT.free(&Libc, p.cast(), expect, &regs) }
        }
    };
}

/// `std::nothrow_t` (an empty tag passed by reference).
type Nothrow = *const c_void;

new_op!(/// `operator new(size_t)`.
    _Znwm, Family::New, throwing, (), 16);
new_op!(/// `operator new[](size_t)`.
    _Znam, Family::NewArray, throwing, (), 16);
new_op!(/// `operator new(size_t, const std::nothrow_t&)`.
    _ZnwmRKSt9nothrow_t, Family::New, nothrow, (_t: Nothrow), 16);
new_op!(/// `operator new[](size_t, const std::nothrow_t&)`.
    _ZnamRKSt9nothrow_t, Family::NewArray, nothrow, (_t: Nothrow), 16);
new_op!(/// `operator new(size_t, std::align_val_t)`.
    _ZnwmSt11align_val_t, Family::New, throwing, (align: usize), align);
new_op!(/// `operator new[](size_t, std::align_val_t)`.
    _ZnamSt11align_val_t, Family::NewArray, throwing, (align: usize), align);
new_op!(/// `operator new(size_t, std::align_val_t, const std::nothrow_t&)`.
    _ZnwmSt11align_val_tRKSt9nothrow_t, Family::New, nothrow, (align: usize, _t: Nothrow), align);
new_op!(/// `operator new[](size_t, std::align_val_t, const std::nothrow_t&)`.
    _ZnamSt11align_val_tRKSt9nothrow_t, Family::NewArray, nothrow, (align: usize, _t: Nothrow), align);

delete_op!(/// `operator delete(void*)`.
    _ZdlPv, Family::New, (), Some((Expect::ANY_SIZE, 16)));
delete_op!(/// `operator delete[](void*)`.
    _ZdaPv, Family::NewArray, (), Some((Expect::ANY_SIZE, 16)));
delete_op!(/// `operator delete(void*, size_t)`.
    _ZdlPvm, Family::New, (size: usize), Some((size, 16)));
delete_op!(/// `operator delete[](void*, size_t)`.
    _ZdaPvm, Family::NewArray, (size: usize), Some((size, 16)));
delete_op!(/// `operator delete(void*, std::align_val_t)`.
    _ZdlPvSt11align_val_t, Family::New, (align: usize), Some((Expect::ANY_SIZE, align)));
delete_op!(/// `operator delete[](void*, std::align_val_t)`.
    _ZdaPvSt11align_val_t, Family::NewArray, (align: usize), Some((Expect::ANY_SIZE, align)));
delete_op!(/// `operator delete(void*, size_t, std::align_val_t)`.
    _ZdlPvmSt11align_val_t, Family::New, (size: usize, align: usize), Some((size, align)));
delete_op!(/// `operator delete[](void*, size_t, std::align_val_t)`.
    _ZdaPvmSt11align_val_t, Family::NewArray, (size: usize, align: usize), Some((size, align)));
delete_op!(/// `operator delete(void*, const std::nothrow_t&)`.
    _ZdlPvRKSt9nothrow_t, Family::New, (_t: Nothrow), Some((Expect::ANY_SIZE, 16)));
delete_op!(/// `operator delete[](void*, const std::nothrow_t&)`.
    _ZdaPvRKSt9nothrow_t, Family::NewArray, (_t: Nothrow), Some((Expect::ANY_SIZE, 16)));
delete_op!(/// `operator delete(void*, std::align_val_t, const std::nothrow_t&)`.
    _ZdlPvSt11align_val_tRKSt9nothrow_t, Family::New, (align: usize, _t: Nothrow), Some((Expect::ANY_SIZE, align)));
delete_op!(/// `operator delete[](void*, std::align_val_t, const std::nothrow_t&)`.
    _ZdaPvSt11align_val_tRKSt9nothrow_t, Family::NewArray, (align: usize, _t: Nothrow), Some((Expect::ANY_SIZE, align)));
