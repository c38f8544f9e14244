//! Where reports go, and what the runtime sets up once at start-up besides its options.
//!
//! - **stderr, while it is the program's stderr.** At start-up the identity (device and inode)
//!   of fd 2 is noted. A report goes to fd 2 only while fd 2 is still that file: a program
//!   that closed fd 2 (daemons do) may have reused the number for one of its own files, and
//!   a report written there would corrupt it. Otherwise reports go to the fallback log file
//!   `${TMPDIR:-/tmp}/ukasan.<pid>`.
//! - **`log_path=PATH`**: reports go to `PATH.<pid>`, created with
//!   `O_CREAT|O_EXCL|O_NOFOLLOW` (a symbolic link or an existing file there is never opened:
//!   then `PATH.<pid>.1` .. `.9` are tried) and mode 0644. A child of `fork` that reports opens
//!   its own file. When no file can be created, reports go to stderr after one line that
//!   says why.
//! - **Leak exit status**: with `leak_exitcode` other than `exitcode`, leak reports do not
//!   count as reports for `exitcode`; an exit handler registered here, before the runtime's
//!   own (so it runs after it), turns a clean exit into `leak_exitcode` when leaks were
//!   reported (0: never).
//!
//! Nothing here allocates; paths live in fixed buffers.

use crate::options::Options;
use crate::sys::{self, Errno, FixedBuf};
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};

/// Set by the first [`at_start`].
static STARTED: AtomicBool = AtomicBool::new(false);
/// fd 2's device and inode at start-up (`STDERR_OK` false: fd 2 was not open).
static STDERR_DEV: AtomicU64 = AtomicU64::new(0);
static STDERR_INO: AtomicU64 = AtomicU64::new(0);
static STDERR_OK: AtomicBool = AtomicBool::new(false);
/// Leak reports printed (counted here only when they do not count for `exitcode`).
static LEAK_REPORTS: AtomicU32 = AtomicU32::new(0);
/// The status the leak exit handler applies.
static LEAK_EXITCODE: AtomicI32 = AtomicI32::new(0);

/// The runtime's start-up steps besides parsing options (called once per process, from
/// [`crate::runtime::Runtime::init`]): note stderr's identity, read the suppressions file, register the
/// leak exit handler when `leak_exitcode` asks for one.
#[cold]
pub(crate) fn at_start(o: &Options) {
    // AcqRel: only the first caller sets up; the others see it done.
    if STARTED.swap(true, Ordering::AcqRel) {
        return;
    }
    remember_stderr();
    if !o.suppressions().is_empty() {
        crate::suppress::load(o.suppressions(), &mut |line| {
            sys::write_all(2, line.as_bytes());
            sys::write_all(2, b"\n");
        });
    }
    if o.leak_exitcode() != o.exitcode {
        // Relaxed: read by the exit handler of this process, after `exit` was called.
        LEAK_EXITCODE.store(o.leak_exitcode(), Ordering::Relaxed);
        // SAFETY: `on_exit` is glibc's; the handler only reads atomics and exits.
        unsafe { on_exit(leak_exit_hook, core::ptr::null_mut()) };
    }
}

/// Whether leak reports count as reports for `exitcode` (else [`leak_reported`] counts them).
pub(crate) fn leaks_count_as_reports(o: &Options) -> bool {
    o.leak_exitcode() == o.exitcode
}

/// Notes one leak report that does not count for `exitcode`.
pub(crate) fn leak_reported() {
    // Relaxed: a counter read by the exit handler on the same thread that reported.
    LEAK_REPORTS.fetch_add(1, Ordering::Relaxed);
}

/// Leak reports noted by [`leak_reported`].
pub(crate) fn leak_reports() -> u32 {
    // Relaxed: a counter.
    LEAK_REPORTS.load(Ordering::Relaxed)
}

extern "C" {
    /// glibc: like `atexit`, but the handler receives the exit status.
    fn on_exit(
        f: extern "C" fn(libc::c_int, *mut libc::c_void),
        arg: *mut libc::c_void,
    ) -> libc::c_int;
}

extern "C" fn leak_exit_hook(status: libc::c_int, _arg: *mut libc::c_void) {
    // Relaxed: written at start-up and by the leak report on this exiting thread.
    let code = LEAK_EXITCODE.load(Ordering::Relaxed);
    if status == 0 && code != 0 && leak_reports() > 0 {
        // SAFETY: flushing stdio as `exit` would, then leaving with the code.
        unsafe {
            libc::fflush(core::ptr::null_mut());
            libc::_exit(code);
        }
    }
}

fn identity(fd: i32) -> Option<(u64, u64)> {
    // SAFETY: `stat` is plain data; zeroed is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: `st` is a valid out-parameter; fstat does not allocate.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    Some((st.st_dev, st.st_ino))
}

fn remember_stderr() {
    if let Some((dev, ino)) = identity(2) {
        // Relaxed: published by the Release store of STDERR_OK.
        STDERR_DEV.store(dev, Ordering::Relaxed);
        STDERR_INO.store(ino, Ordering::Relaxed);
        // Release pairs with the Acquire load in `stderr_is_the_programs`.
        STDERR_OK.store(true, Ordering::Release);
    }
}

/// Whether fd 2 is still the file it was at start-up.
fn stderr_is_the_programs() -> bool {
    // Before start-up (a report from a runtime that never initialized): trust fd 2.
    // Acquire pairs with the AcqRel swap in `at_start`.
    if !STARTED.load(Ordering::Acquire) {
        return true;
    }
    // Acquire pairs with the Release store in `remember_stderr`.
    STDERR_OK.load(Ordering::Acquire)
        && identity(2).is_some_and(|id| {
            // Relaxed: ordered by the Acquire load of STDERR_OK.
            id == (STDERR_DEV.load(Ordering::Relaxed), STDERR_INO.load(Ordering::Relaxed))
        })
}

/// The report destination of one process (kept in the reporter, under its lock).
#[derive(Debug)]
pub(crate) struct Sink {
    /// Our open log file (-1: none).
    fd: i32,
    /// The process that opened it (a forked child opens its own).
    pid: i32,
}

impl Sink {
    pub(crate) const fn new() -> Sink {
        Sink { fd: -1, pid: 0 }
    }

    /// The fd to write the next report to (-1: nowhere can take it).
    pub(crate) fn fd(&mut self, o: &Options) -> i32 {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        if self.fd >= 0 && self.pid == pid {
            return self.fd;
        }
        if self.fd >= 0 {
            // The parent's log file, inherited over fork: this process writes its own.
            // SAFETY: our own descriptor, closed once.
            unsafe { libc::close(self.fd) };
            self.fd = -1;
        }
        let stderr_ok = stderr_is_the_programs();
        if o.log_path().is_empty() && stderr_ok {
            return 2;
        }
        let mut tmp = FixedBuf::<{ sys::PATH_CAP }>::new();
        let base: &[u8] = if o.log_path().is_empty() {
            let dir = crate::options::getenv(b"TMPDIR\0").filter(|d| !d.is_empty());
            tmp.push_bytes(dir.unwrap_or(b"/tmp"));
            tmp.push_bytes(b"/ukasan");
            tmp.as_bytes()
        } else {
            o.log_path()
        };
        match create_log(base, pid) {
            Ok(fd) => {
                self.fd = fd;
                self.pid = pid;
                fd
            }
            Err(e) if stderr_ok => {
                let mut line = FixedBuf::<512>::new();
                let _ = writeln!(
                    line,
                    "ukasan: cannot create log file {}.{pid} ({e}): reports go to stderr",
                    crate::options::Lossy(base)
                );
                sys::write_all(2, line.as_bytes());
                2
            }
            Err(_) => -1,
        }
    }
}

/// Creates `<base>.<pid>` (else `<base>.<pid>.1` .. `.9`) for writing, never following a
/// symbolic link and never opening a file that exists.
fn create_log(base: &[u8], pid: i32) -> Result<i32, Errno> {
    let mut last = Errno(libc::EEXIST);
    for n in 0..10 {
        let mut p = FixedBuf::<{ sys::PATH_CAP + 1 }>::new();
        p.push_bytes(base);
        let _ = write!(p, ".{pid}");
        if n > 0 {
            let _ = write!(p, ".{n}");
        }
        p.push_bytes(b"\0");
        if p.truncated() {
            return Err(Errno(libc::ENAMETOOLONG));
        }
        // SAFETY: `p` is NUL-terminated.
        let fd = unsafe {
            libc::open(
                p.as_bytes().as_ptr().cast(),
                libc::O_WRONLY
                    | libc::O_CREAT
                    | libc::O_EXCL
                    | libc::O_NOFOLLOW
                    | libc::O_APPEND
                    | libc::O_CLOEXEC,
                0o644,
            )
        };
        if fd >= 0 {
            return Ok(fd);
        }
        last = Errno(sys::errno());
        if last.0 != libc::EEXIST {
            break;
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_files_are_new_files_with_the_pid_never_through_a_link() {
        let dir = std::env::temp_dir().join(format!("ukasan-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("log");
        let b = base.to_str().unwrap().as_bytes();
        let target = dir.join("victim");
        std::fs::write(&target, b"keep").unwrap();
        // A link where the first name would be: skipped, the target untouched.
        std::os::unix::fs::symlink(&target, dir.join("log.77")).unwrap();
        let fd = create_log(b, 77).unwrap();
        sys::write_all(fd, b"report\n");
        // SAFETY: opened above.
        unsafe { libc::close(fd) };
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert_eq!(std::fs::read(dir.join("log.77.1")).unwrap(), b"report\n");
        for n in 2..10 {
            std::fs::write(dir.join(format!("log.77.{n}")), b"").unwrap();
        }
        assert_eq!(create_log(b, 77), Err(Errno(libc::EEXIST)));
        let missing = dir.join("no/such/dir/log");
        assert_eq!(create_log(missing.to_str().unwrap().as_bytes(), 5), Err(Errno(libc::ENOENT)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
