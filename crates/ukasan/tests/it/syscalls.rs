//! Counting a child's system calls between two markers, with `ptrace`: the proof that the
//! allocation hot path makes no syscall (no `/proc` read, no lock that sleeps, no `mmap` per
//! capture) once warm, in every capture configuration.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// The marker syscall: a number no kernel implements (`ENOSYS`), made by the child right
/// before and right after the measured part.
pub const MARKER: u64 = 1000;

/// What a traced run did.
#[derive(Debug)]
pub struct Counts {
    /// Syscall number -> entries, between the two markers (all threads).
    pub between: BTreeMap<u64, u64>,
    /// Markers seen (2 for a run that got through).
    pub markers: u32,
    /// Exit status of the child (`None`: killed by a signal).
    pub status: Option<i32>,
    /// The child's stderr.
    pub stderr: String,
}

impl Counts {
    /// Total syscalls between the markers.
    pub fn total(&self) -> u64 {
        self.between.values().sum()
    }
}

/// Runs `cmd` under `ptrace`, counting syscall entries of every thread between the first
/// and the second [`MARKER`].
pub fn count(mut cmd: Command) -> Counts {
    let err = tempfile_path("syscalls-stderr");
    let file = std::fs::File::create(&err).unwrap();
    cmd.stdout(Stdio::null()).stderr(file);
    // SAFETY: between fork and exec the closure only makes async-signal-safe syscalls. The
    // child gets a process group of its own so that the `waitpid` below waits for its
    // threads only, never for children of other tests running in this process.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setpgid(0, 0) != 0 || libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    // Reaped by the `waitpid` loop below, not by `Child::wait`.
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().expect("spawn the traced child");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: waits for our own child, which stops at its exec (PTRACE_TRACEME).
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFSTOPPED(status), "the child stops at exec: {status:#x}");
    let opts = libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_TRACECLONE | libc::PTRACE_O_EXITKILL;
    // SAFETY: `pid` is our stopped tracee.
    unsafe {
        assert_eq!(libc::ptrace(libc::PTRACE_SETOPTIONS, pid, 0, opts), 0);
        libc::ptrace(libc::PTRACE_SYSCALL, pid, 0, 0);
    }
    let mut in_syscall: HashMap<libc::pid_t, bool> = HashMap::new();
    let (mut between, mut markers, mut exit) = (BTreeMap::new(), 0u32, None);
    loop {
        // SAFETY: waits for any thread of the tracee (its process group).
        let tid = unsafe { libc::waitpid(-pid, &mut status, libc::__WALL) };
        if tid < 0 {
            break; // ECHILD: everything exited
        }
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            if tid == pid {
                exit = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
            }
            continue;
        }
        if !libc::WIFSTOPPED(status) {
            continue;
        }
        let sig = libc::WSTOPSIG(status);
        let deliver = if sig == libc::SIGTRAP | 0x80 {
            let entering = !in_syscall.get(&tid).copied().unwrap_or(false);
            in_syscall.insert(tid, entering);
            if entering {
                let nr = syscall_number(tid);
                if nr == MARKER {
                    markers += 1;
                } else if markers == 1 {
                    *between.entry(nr).or_insert(0u64) += 1;
                }
            }
            0
        } else if sig == libc::SIGTRAP || sig == libc::SIGSTOP {
            0 // a ptrace event (clone, exec) or a new thread's first stop
        } else {
            sig
        };
        // SAFETY: `tid` is one of our stopped tracees.
        unsafe { libc::ptrace(libc::PTRACE_SYSCALL, tid, 0, deliver) };
    }
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    let _ = std::fs::remove_file(&err);
    Counts { between, markers, status: exit, stderr }
}

/// The number of the syscall that stopped tracee `tid` at its entry.
fn syscall_number(tid: libc::pid_t) -> u64 {
    // SAFETY: all-zero is a valid register block to fill.
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `tid` is our stopped tracee; `regs` is a register block to fill.
        unsafe { libc::ptrace(libc::PTRACE_GETREGS, tid, 0, &mut regs) };
        regs.orig_rax
    }
    #[cfg(target_arch = "aarch64")]
    {
        // At a syscall-entry stop x8 holds the number (read through the general register set).
        let mut iov = libc::iovec {
            iov_base: (&mut regs as *mut libc::user_regs_struct).cast(),
            iov_len: std::mem::size_of::<libc::user_regs_struct>(),
        };
        // SAFETY: `tid` is our stopped tracee; `iov` describes `regs`.
        unsafe { libc::ptrace(libc::PTRACE_GETREGSET, tid, libc::NT_PRSTATUS, &mut iov) };
        regs.regs[8]
    }
}

fn tempfile_path(what: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "ukasan-it-{}-{what}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The marker, from inside a traced program.
pub fn marker() {
    // SAFETY: an unimplemented syscall number: the kernel answers ENOSYS and does nothing.
    unsafe { libc::syscall(MARKER as libc::c_long) };
}
