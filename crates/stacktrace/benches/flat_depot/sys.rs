//! The few system calls the depot makes, each async-signal-safe and allocation-free.
//!
//! Under Miri (which does not model every syscall used here) memory comes from the Rust
//! allocator and thread ids from a thread-local counter; that variant exists only so the
//! lock-free lookup can be checked by Miri and is never compiled into a real build.

use core::ptr::NonNull;

/// Maps `len` bytes of zeroed, private, anonymous memory (`len` a multiple of the page size);
/// with `populate`, the kernel also backs every page now (`MAP_POPULATE`), so later writes
/// take no page fault.
#[cfg(not(miri))]
pub(crate) fn map(len: usize, populate: bool) -> Option<NonNull<u8>> {
    let populate = if populate { libc::MAP_POPULATE } else { 0 };
    // SAFETY: an anonymous private mapping at an address of the kernel's choice touches no
    // existing memory; the result is checked against MAP_FAILED before use.
    let p = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | populate,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        None
    } else {
        NonNull::new(p.cast())
    }
}

/// Unmaps a region returned by [`map`].
///
/// # Safety
/// `ptr` and `len` come from one successful [`map`] call, and nothing refers to the region
/// any more.
#[cfg(not(miri))]
pub(crate) unsafe fn unmap(ptr: NonNull<u8>, len: usize) {
    // SAFETY: the caller guarantees the region is ours and unused; munmap of a valid mapping
    // cannot fail in a way that leaves memory unsound, so its result is ignored.
    unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
}

#[cfg(miri)]
pub(crate) fn map(len: usize, _populate: bool) -> Option<NonNull<u8>> {
    let layout = std::alloc::Layout::from_size_align(len, 4096).ok()?;
    // SAFETY: `layout` has a non-zero size (callers never map 0 bytes).
    NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })
}

/// # Safety
/// As the non-Miri variant.
#[cfg(miri)]
pub(crate) unsafe fn unmap(ptr: NonNull<u8>, len: usize) {
    let layout = std::alloc::Layout::from_size_align(len, 4096).expect("mapped with it");
    // SAFETY: allocated by `map` with this very layout.
    unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) };
}

/// The system page size (sizes of mappings are multiples of it).
pub(crate) fn page_size() -> usize {
    #[cfg(not(miri))]
    {
        // SAFETY: sysconf(_SC_PAGESIZE) reads a value glibc got from the auxiliary vector;
        // no lock, no allocation.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if p > 0 && (p as usize).is_power_of_two() {
            return p as usize;
        }
    }
    4096
}

/// The calling thread's identity among live threads of this process (never 0):
/// `pthread_self()`, the address of its control block (a load of the thread pointer).
#[cfg(not(miri))]
#[inline]
pub(crate) fn thread_id() -> usize {
    // SAFETY: pthread_self has no preconditions; in glibc it reads the thread pointer.
    unsafe { libc::pthread_self() as usize }
}

#[cfg(miri)]
pub(crate) fn thread_id() -> usize {
    use core::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    std::thread_local!(static ID: usize = NEXT.fetch_add(1, Ordering::Relaxed));
    ID.with(|t| *t)
}

/// Asks the kernel to give a forked child zeroed pages in `[ptr, ptr + len)` instead of a
/// copy (`MADV_WIPEONFORK`, Linux >= 4.14). Returns whether it did.
///
/// # Safety
/// The range lies inside one mapping made by [`map`].
pub(crate) unsafe fn wipe_on_fork(ptr: NonNull<u8>, len: usize) -> bool {
    #[cfg(not(miri))]
    {
        // SAFETY: the caller guarantees the range is our own anonymous private mapping.
        unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_WIPEONFORK) == 0 }
    }
    #[cfg(miri)]
    {
        let _ = (ptr, len);
        false
    }
}

/// Gives the CPU to another thread (used after spinning on a busy lock).
pub(crate) fn yield_now() {
    #[cfg(not(miri))]
    // SAFETY: sched_yield has no arguments and no memory effects.
    unsafe {
        libc::sched_yield();
    }
    #[cfg(miri)]
    std::thread::yield_now();
}

/// Writes `msg` to stderr with raw `write(2)` calls (no buffering, no allocation, no lock).
pub(crate) fn write_stderr(mut msg: &[u8]) {
    while !msg.is_empty() {
        #[cfg(not(miri))]
        // SAFETY: `msg` is a valid readable slice of `msg.len()` bytes.
        let n = unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
        #[cfg(miri)]
        let n = {
            use std::io::Write;
            std::io::stderr().write(msg).map_or(-1, |n| n as isize)
        };
        if n > 0 {
            msg = &msg[n as usize..];
        } else if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {
            continue;
        } else {
            return;
        }
    }
}
