//! Small OS and concurrency primitives that never allocate: thread ids, the re-entrancy guard,
//! a try-lock spin lock, whole writes with `write(2)`, and a fixed-size text buffer.

use core::cell::{Cell, UnsafeCell};
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

/// The runtime's per-thread state ([`stacktrace::static_tls!`]): all-zero bytes are its
/// initial value.
pub(crate) struct Thread {
    pub(crate) tid: Cell<u32>,
    pub(crate) in_runtime: Cell<bool>,
    /// The heap cache was handed back at thread exit.
    pub(crate) exited: Cell<bool>,
    /// The thread's heap cache (`generic::heap::Cache`).
    pub(crate) cache: Cell<*mut u8>,
    /// Guarded mode: allocations left before this thread's next sampled one (0: sample the
    /// next).
    pub(crate) countdown: Cell<u32>,
    /// Guarded mode: state of this thread's placement coin (xorshift; 0: not seeded yet).
    pub(crate) coin: Cell<u32>,
}

// All-zero bytes are a valid `Thread`, which is `!Sync`: the reference stays on its thread.
stacktrace::static_tls!(
    /// This thread's runtime state (in the preloaded library, a load and an add: no
    /// `__tls_get_addr` call, of which `thread_local!` made several per malloc and free).
    pub(crate) fn thread() -> &'static Thread = "__ukasan_thread_tls"
);

/// The kernel thread id of the caller (`gettid`), cached per thread.
#[inline]
pub fn tid() -> u32 {
    let cached = thread().tid.get();
    if cached != 0 {
        return cached;
    }
    // SAFETY: gettid has no preconditions.
    let t = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
    thread().tid.set(t);
    t
}

/// Forgets the cached thread id (the child of `fork` has a new one).
pub fn reset_tid() {
    thread().tid.set(0);
}

/// Marks the current thread as running inside the runtime while alive; allocation requests
/// made meanwhile (by the runtime itself, the symbolizer, libgcc, or a signal handler) go
/// straight to the backing allocator, untracked.
#[derive(Debug)]
pub struct Guard(());

impl Guard {
    /// Enters the runtime, or `None` when this thread is already inside it.
    #[inline]
    pub fn enter() -> Option<Guard> {
        let g = if thread().in_runtime.replace(true) { None } else { Some(Guard(())) };
        if g.is_some() {
            crate::hwtags::suspend_checks(true);
        }
        g
    }

    /// Whether this thread is inside the runtime.
    #[inline]
    pub fn active() -> bool {
        thread().in_runtime.get()
    }
}

impl Drop for Guard {
    #[inline]
    fn drop(&mut self) {
        crate::hwtags::suspend_checks(false);
        thread().in_runtime.set(false);
    }
}

/// Busy checks of a held [`SpinLock`] before [`SpinLock::lock`] starts yielding: holders
/// keep it for a few pointer writes (well under this many checks) unless preempted.
pub const SPINS_BEFORE_YIELD: u32 = 200;

/// A spin lock whose acquisition can be refused instead of waited for.
///
/// Holders never allocate and never call out; a signal handler on the holding thread never
/// waits for it (it runs under the re-entrancy guard and uses [`SpinLock::try_lock`]), so
/// spinning cannot deadlock. `fork` handlers take every lock before the fork and release
/// them in both processes.
#[derive(Debug)]
pub struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock serializes all access to `value`.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: moving the lock moves the value; T: Send suffices.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// An unlocked lock around `value`.
    pub const fn new(value: T) -> Self {
        SpinLock { locked: AtomicBool::new(false), value: UnsafeCell::new(value) }
    }

    /// Takes the lock, spinning; after [`SPINS_BEFORE_YIELD`] busy checks it yields the CPU
    /// between checks, so that a holder preempted on an oversubscribed machine (more threads
    /// than cores) gets to run and release it instead of every waiter burning its time slice.
    #[inline]
    pub fn lock(&self) -> SpinGuard<'_, T> {
        let mut spins = 0u32;
        loop {
            if let Some(g) = self.try_lock() {
                return g;
            }
            while self.locked.load(Ordering::Relaxed) {
                if spins < SPINS_BEFORE_YIELD {
                    spins += 1;
                    core::hint::spin_loop();
                } else {
                    // SAFETY: sched_yield has no preconditions; it is async-signal-safe and
                    // does not allocate.
                    unsafe { libc::sched_yield() };
                }
            }
        }
    }

    /// Takes the lock if it is free.
    #[inline]
    pub fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        // Acquire pairs with the Release store in `SpinGuard::drop` (and `force_unlock`):
        // the previous holder's writes to `value` are visible to us.
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| SpinGuard { lock: self })
    }

    /// Takes the lock, spinning at most about `tries` times: for callers that may be
    /// running in a signal handler that interrupted the holder on this very thread (then
    /// waiting would never end; giving up is the only way out).
    #[inline]
    pub fn lock_bounded(&self, tries: u32) -> Option<SpinGuard<'_, T>> {
        for _ in 0..tries {
            if let Some(g) = self.try_lock() {
                return Some(g);
            }
            core::hint::spin_loop();
        }
        self.try_lock()
    }

    /// Takes the lock and keeps it held with no guard (for `fork` preparation).
    pub fn raw_lock(&self) {
        core::mem::forget(self.lock());
    }

    /// Releases a lock taken with [`SpinLock::raw_lock`].
    ///
    /// # Safety
    /// The lock must be held through `raw_lock` (in this process: after `fork` the child
    /// inherits the parent's held locks) and no guard may exist for it.
    pub unsafe fn force_unlock(&self) {
        // Release pairs with the Acquire in `try_lock`.
        self.locked.store(false, Ordering::Release);
    }
}

/// Access to the value of a held [`SpinLock`].
#[derive(Debug)]
pub struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> core::ops::Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the lock is held for the guard's lifetime.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> core::ops::DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the lock is held for the guard's lifetime, exclusively.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    fn drop(&mut self) {
        // Release pairs with the Acquire in `try_lock`.
        self.lock.locked.store(false, Ordering::Release);
    }
}

/// Commits the pages of `[lo, hi)` (page-aligned, mapped readable and writable) in one call
/// (`MADV_POPULATE_WRITE`): what first-touch faults would do page by page, for about half
/// the cost per page. Best effort: a kernel without it (before 5.14) or one short of memory
/// leaves the pages to fault in as before, and after one refusal for lack of support it is
/// not asked again.
pub fn prefault(lo: usize, hi: usize) {
    static UNSUPPORTED: AtomicBool = AtomicBool::new(false);
    // Relaxed: a hint; a racing caller asks once more.
    if hi <= lo || UNSUPPORTED.load(Ordering::Relaxed) {
        return;
    }
    // SAFETY: populating pages of a private anonymous mapping of ours changes no contents
    // (untouched pages read as zeros either way).
    let r = unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_POPULATE_WRITE) };
    // SAFETY: reads this thread's errno.
    if r != 0 && unsafe { *libc::__errno_location() } == libc::EINVAL {
        // Relaxed: see above.
        UNSUPPORTED.store(true, Ordering::Relaxed);
    }
}

/// `bytes` of anonymous private memory, readable, writable and zeroed, aligned to `align` (a
/// power of two; a page or less costs nothing, more is cut out of a larger mapping), from
/// `mmap` (never from malloc); `noreserve` charges it only when touched. `None` when the
/// system refuses.
pub fn map(bytes: usize, align: usize, noreserve: bool) -> Option<*mut u8> {
    const PAGE: usize = 4096;
    let extra = if align > PAGE { align } else { 0 };
    let len = bytes.checked_next_multiple_of(PAGE)?;
    let total = len.checked_add(extra)?;
    let flags =
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | if noreserve { libc::MAP_NORESERVE } else { 0 };
    // SAFETY: an anonymous private mapping at an address of the kernel's choice.
    let p = unsafe {
        libc::mmap(core::ptr::null_mut(), total, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0)
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    let start = p as usize;
    let base = start.next_multiple_of(align.max(PAGE));
    // SAFETY: trims the parts of the mapping made above outside [base, base + len).
    unsafe {
        if base > start {
            libc::munmap(p, base - start);
        }
        if start + total > base + len {
            libc::munmap((base + len) as *mut libc::c_void, start + total - base - len);
        }
    }
    Some(base as *mut u8)
}

/// Writes all of `bytes` to `fd` with `write(2)`, retrying on `EINTR` and short writes.
pub fn write_all(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length describe a live slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            // SAFETY: errno location is always valid for the calling thread.
            if unsafe { *libc::__errno_location() } == libc::EINTR {
                continue;
            }
            return;
        }
        if n == 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// The calling thread's `errno`.
pub fn errno() -> i32 {
    // SAFETY: errno location is always valid for the calling thread.
    unsafe { *libc::__errno_location() }
}

/// A short name for the `errno` values file operations meet (`strerror` may allocate for
/// its locale); others print as `errno N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            libc::ENOENT => "no such file or directory",
            libc::EACCES => "permission denied",
            libc::EPERM => "operation not permitted",
            libc::EISDIR => "is a directory",
            libc::ENOTDIR => "a component of the path is not a directory",
            libc::ELOOP => "the path is a symbolic link",
            libc::EEXIST => "the file exists",
            libc::EROFS => "read-only file system",
            libc::ENOSPC => "no space left on device",
            libc::ENAMETOOLONG => "file name too long",
            libc::EMFILE | libc::ENFILE => "too many open files",
            _ => return write!(f, "errno {}", self.0),
        };
        f.write_str(name)
    }
}

/// Why [`read_file`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadError {
    /// `open` or `read` failed with this errno.
    Os(Errno),
    /// The file is larger than the buffer (its size is not read further).
    TooLarge,
    /// The path is longer than [`PATH_CAP`] bytes or contains a NUL byte.
    BadPath,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Os(e) => e.fmt(f),
            ReadError::TooLarge => f.write_str("larger than the buffer for it"),
            ReadError::BadPath => f.write_str("the path is too long or contains a NUL byte"),
        }
    }
}

/// Longest path [`read_file`] and [`cpath`] take (bytes, without the NUL).
pub const PATH_CAP: usize = 255;

/// `path` NUL-terminated in a fixed buffer (`None`: too long or contains a NUL).
pub fn cpath(path: &[u8]) -> Option<[u8; PATH_CAP + 1]> {
    if path.len() > PATH_CAP || path.contains(&0) {
        return None;
    }
    let mut c = [0u8; PATH_CAP + 1];
    c[..path.len()].copy_from_slice(path);
    Some(c)
}

/// Reads the whole file at `path` into `buf` without allocating; returns its length.
/// A file that does not fit is an error, never silently cut.
pub fn read_file(path: &[u8], buf: &mut [u8]) -> Result<usize, ReadError> {
    let c = cpath(path).ok_or(ReadError::BadPath)?;
    // SAFETY: `c` is NUL-terminated.
    let fd = unsafe { libc::open(c.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(ReadError::Os(Errno(errno())));
    }
    let mut len = 0;
    let r = loop {
        let mut probe = [0u8; 1];
        let dst = if len < buf.len() { &mut buf[len..] } else { &mut probe[..] };
        // SAFETY: `dst` is a live, writable slice.
        let n = unsafe { libc::read(fd, dst.as_mut_ptr().cast(), dst.len()) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            break Err(ReadError::Os(Errno(errno())));
        }
        if n == 0 {
            break Ok(len);
        }
        if len >= buf.len() {
            break Err(ReadError::TooLarge);
        }
        len += n as usize;
    };
    // SAFETY: `fd` was opened above and is closed once.
    unsafe { libc::close(fd) };
    r
}

/// A text buffer of fixed capacity that truncates instead of allocating.
#[derive(Debug)]
pub struct FixedBuf<const N: usize> {
    bytes: [u8; N],
    len: usize,
    truncated: bool,
}

impl<const N: usize> Default for FixedBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FixedBuf<N> {
    /// An empty buffer.
    pub const fn new() -> Self {
        FixedBuf { bytes: [0; N], len: 0, truncated: false }
    }

    /// The text written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The text written so far (writes are always whole UTF-8 strings, possibly cut at a
    /// character boundary).
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    /// Whether some text did not fit.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Empties the buffer.
    pub fn clear(&mut self) {
        self.len = 0;
        self.truncated = false;
    }

    /// Appends raw bytes, truncating.
    pub fn push_bytes(&mut self, b: &[u8]) {
        let room = N - self.len;
        let n = b.len().min(room);
        self.bytes[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
        if n < b.len() {
            self.truncated = true;
        }
    }
}

impl<const N: usize> fmt::Write for FixedBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = N - self.len;
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.push_bytes(&s.as_bytes()[..n]);
        if n < s.len() {
            self.truncated = true;
        }
        Ok(())
    }
}

/// Asks the CPU to fetch the cache line at `a` (any address: a hint never faults).
#[inline(always)]
pub(crate) fn prefetch(a: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(a as *const i8)
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: `prfm` is a hint: it never faults and changes no architectural state.
    unsafe {
        core::arch::asm!("prfm pldl1keep, [{0}]", in(reg) a, options(nostack, preserves_flags, readonly))
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = a;
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn fixed_buf_truncates_at_char_boundary() {
        let mut b = FixedBuf::<5>::new();
        let tail = "cé€";
        write!(b, "ab{tail}").unwrap();
        assert_eq!(b.as_str(), "abcé");
        assert!(b.truncated());
    }

    #[test]
    fn guard_refuses_nesting_and_releases() {
        let g = Guard::enter().unwrap();
        assert!(Guard::active());
        assert!(Guard::enter().is_none());
        drop(g);
        assert!(!Guard::active());
        assert!(Guard::enter().is_some());
    }

    #[test]
    fn spin_lock_try_lock_fails_while_held() {
        let l = SpinLock::new(3);
        let g = l.lock();
        assert!(l.try_lock().is_none());
        drop(g);
        *l.try_lock().unwrap() += 1;
        assert_eq!(*l.lock(), 4);
    }

    #[test]
    fn read_file_reads_whole_files_and_refuses_larger_ones() {
        let p = std::env::temp_dir().join(format!("ukasan-sys-read-{}", std::process::id()));
        std::fs::write(&p, b"0123456789").unwrap();
        let path = p.to_str().unwrap().as_bytes();
        let mut big = [0u8; 64];
        assert_eq!(read_file(path, &mut big), Ok(10));
        assert_eq!(&big[..10], b"0123456789");
        let mut exact = [0u8; 10];
        assert_eq!(read_file(path, &mut exact), Ok(10));
        let mut small = [0u8; 9];
        assert_eq!(read_file(path, &mut small), Err(ReadError::TooLarge));
        std::fs::remove_file(&p).unwrap();
        let e = read_file(path, &mut big).unwrap_err();
        assert_eq!(e, ReadError::Os(Errno(libc::ENOENT)));
        assert_eq!(e.to_string(), "no such file or directory");
        assert_eq!(read_file(b"a\0b", &mut big), Err(ReadError::BadPath));
    }

    #[test]
    fn tid_is_per_thread() {
        let a = tid();
        let b = std::thread::spawn(tid).join().unwrap();
        assert_ne!(a, b);
        assert_eq!(a, tid());
    }
}
