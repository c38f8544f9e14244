//! `libukasan.so`: the ukasan detector for any dynamically linked program.
//!
//! ```text
//! LD_PRELOAD=target/release/libukasan.so UKASAN_OPTIONS=stacks=fp ./program
//! ```
//!
//! Replaces `malloc free calloc realloc reallocarray posix_memalign aligned_alloc memalign
//! valloc pvalloc malloc_usable_size` and every C++ `operator new`/`operator delete`
//! (plain, array, sized, aligned, nothrow) with thin wrappers over [`rt::Runtime`], which
//! allocates from glibc's `__libc_malloc`/`__libc_memalign`/`__libc_free` (exported by glibc
//! for exactly this). Each wrapper reads its caller's registers, so the recorded stacks
//! start at the program's call site.
//!
//! - The runtime initializes in this library's constructor; allocations before it (the
//!   loader, other constructors) and from inside the runtime are raw chunks that `free`
//!   releases quietly.
//! - `detect_leaks` defaults to on here.
//! - Throwing `operator new` that cannot allocate throws `std::bad_alloc` through libstdc++'s
//!   `std::__throw_bad_alloc` (found with `dlsym`); without libstdc++ it aborts with a message.
//! - Exports `backtrace` too: glibc's would list the software shadow stack's trampoline as
//!   a frame for every patched frame (see `backtrace.rs`).
//! - Built with `panic = "unwind"` (the default): a preload built with `panic=abort` aborts
//!   on the first C++ exception that crosses an exported `C-unwind` frame.
//!
//! Costs: see the `ukasan` crate. Not handled: programs linked statically, or that call
//! `__libc_malloc` directly and pass the result to `free` (reported as invalid-free).

use core::ffi::{c_int, c_void};
use core::ptr::null_mut;
use rt::{Backing, Expect, Family, Runtime};

/// The process's detector.
static RT: Runtime = Runtime::new_explicit_init("", true);

extern "C" {
    fn __libc_malloc(size: usize) -> *mut c_void;
    fn __libc_memalign(align: usize, size: usize) -> *mut c_void;
    fn __libc_free(p: *mut c_void);
}

/// glibc's allocator.
struct Libc;

// SAFETY: glibc's malloc family returns blocks of the requested size and alignment, valid
// until `__libc_free`, from any thread.
unsafe impl Backing for Libc {
    #[inline]
    fn alloc(&self, size: usize, align: usize) -> *mut u8 {
        // SAFETY: plain calls into glibc's allocator.
        unsafe {
            if align <= 16 {
                __libc_malloc(size).cast()
            } else {
                __libc_memalign(align, size).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, _size: usize, _align: usize) {
        // SAFETY: `p` came from `__libc_malloc`/`__libc_memalign` (the trait contract).
        unsafe { __libc_free(p.cast()) }
    }
}

extern "C" fn init() {
    // This library's statics are the runtime's own, not the program's: no leak roots.
    rt::leak::skip_own_module();
    RT.init();
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

fn set_errno(e: c_int) {
    // SAFETY: errno is always valid for the calling thread.
    unsafe { *libc::__errno_location() = e };
}

#[inline(always)]
fn enomem(p: *mut u8) -> *mut c_void {
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p.cast()
}

const M: Expect = Expect { family: Family::Malloc, layout: None };

/// `malloc`.
#[no_mangle]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    let regs = stacktrace::caller_regs!();
    enomem(RT.alloc(&Libc, size, 16, Family::Malloc, false, &regs))
}

/// `free`.
///
/// # Safety
/// `p` is null or from this allocator (anything else is reported, not freed).
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    let regs = stacktrace::caller_regs!();
    // SAFETY: forwarded; the runtime validates the pointer.
    unsafe { RT.free(&Libc, p.cast(), M, &regs) }
}

/// `calloc`.
#[no_mangle]
pub extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    let regs = stacktrace::caller_regs!();
    let Some(total) = n.checked_mul(size) else {
        set_errno(libc::ENOMEM);
        return null_mut();
    };
    enomem(RT.alloc(&Libc, total, 16, Family::Malloc, true, &regs))
}

/// `realloc`: `realloc(NULL, n)` allocates, `realloc(p, 0)` frees and returns NULL (glibc).
///
/// # Safety
/// As `free`.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    let regs = stacktrace::caller_regs!();
    if !p.is_null() && size == 0 {
        // SAFETY: forwarded.
        unsafe { RT.free(&Libc, p.cast(), M, &regs) };
        return null_mut();
    }
    // SAFETY: forwarded.
    enomem(unsafe { RT.realloc(&Libc, p.cast(), size, 16, M, &regs) })
}

/// `reallocarray`.
///
/// # Safety
/// As `free`.
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    let regs = stacktrace::caller_regs!();
    let Some(total) = n.checked_mul(size) else {
        set_errno(libc::ENOMEM);
        return null_mut();
    };
    if !p.is_null() && total == 0 {
        // SAFETY: forwarded.
        unsafe { RT.free(&Libc, p.cast(), M, &regs) };
        return null_mut();
    }
    // SAFETY: forwarded.
    enomem(unsafe { RT.realloc(&Libc, p.cast(), total, 16, M, &regs) })
}

/// `posix_memalign`: EINVAL unless `align` is a power of two multiple of `sizeof(void *)`.
///
/// # Safety
/// `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    let regs = stacktrace::caller_regs!();
    if !align.is_power_of_two() || !align.is_multiple_of(core::mem::size_of::<usize>()) {
        return libc::EINVAL;
    }
    let p = RT.alloc(&Libc, size, align, Family::Malloc, false, &regs);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller passes a writable out-pointer.
    unsafe { *out = p.cast() };
    0
}

/// `aligned_alloc`: EINVAL unless `align` is a power of two.
#[no_mangle]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    let regs = stacktrace::caller_regs!();
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return null_mut();
    }
    enomem(RT.alloc(&Libc, size, align, Family::Malloc, false, &regs))
}

/// `memalign`: a non-power-of-two alignment is rounded up, as glibc does.
#[no_mangle]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    let regs = stacktrace::caller_regs!();
    let Some(align) = align.max(1).checked_next_power_of_two() else {
        set_errno(libc::EINVAL);
        return null_mut();
    };
    enomem(RT.alloc(&Libc, size, align, Family::Malloc, false, &regs))
}

fn page() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// `valloc`.
#[no_mangle]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    let regs = stacktrace::caller_regs!();
    enomem(RT.alloc(&Libc, size, page(), Family::Malloc, false, &regs))
}

/// `pvalloc`: page-aligned, size rounded up to whole pages.
#[no_mangle]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let regs = stacktrace::caller_regs!();
    let pg = page();
    let Some(size) = size.max(1).checked_next_multiple_of(pg) else {
        set_errno(libc::ENOMEM);
        return null_mut();
    };
    enomem(RT.alloc(&Libc, size, pg, Family::Malloc, false, &regs))
}

/// `malloc_usable_size`: exactly the size requested (0 for NULL and foreign pointers).
///
/// # Safety
/// `p` is null or from this allocator.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    // SAFETY: forwarded.
    unsafe { RT.usable_size(p.cast()) }
}

/// Number of reports printed so far (for tests and tools).
#[no_mangle]
pub extern "C" fn ukasan_report_count() -> u32 {
    RT.reports()
}

/// Runs the exit checks now (quarantine verification, leaks); returns the report count.
#[no_mangle]
pub extern "C" fn ukasan_check_now() -> u32 {
    RT.exit_checks();
    RT.reports()
}

mod backtrace;
mod cxx;
