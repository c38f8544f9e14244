//! Running one child to completion with SIGINT/SIGTERM/SIGHUP/SIGQUIT forwarded, and turning
//! its end into our exit status.
//!
//! Forwarding: while the child runs, our handler `kill`s it with the same signal when the
//! signal was *sent* (by `kill`, `si_code <= 0`). A signal the terminal generated
//! (`SI_KERNEL`) already went to the whole foreground process group, child included, so it is
//! not sent twice. A signal that arrives between spawn and the child's pid being published is
//! remembered and forwarded right after.

use std::ffi::OsStr;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};

/// Signals forwarded to the child.
pub const FORWARDED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Pid of the running child, 0 when none.
static CHILD: AtomicI32 = AtomicI32::new(0);
/// A sent signal that arrived while `CHILD` was 0, 0 when none.
static PENDING: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler (null checked anyway).
    let sent = info.is_null() || unsafe { (*info).si_code } <= 0;
    if !sent {
        return;
    }
    // Acquire pairs with the Release store in `run` that publishes the pid after spawn.
    let pid = CHILD.load(Ordering::Acquire);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe; pid is our own child, not yet reaped.
        unsafe { libc::kill(pid, sig) };
    } else {
        // Release pairs with the Acquire swap in `run` after the pid is published.
        PENDING.store(sig, Ordering::Release);
    }
}

fn install_handlers() -> io::Result<()> {
    for sig in FORWARDED {
        // SAFETY: a zeroed sigaction is a valid starting value; every field we rely on is set
        // below, and `forward` only calls async-signal-safe functions.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Why a child could not be started.
#[derive(Debug)]
pub enum SpawnError {
    /// The program does not exist (exit status 127).
    NotFound,
    /// It exists but cannot be executed (exit status 126).
    NotExecutable(io::Error),
    /// Anything else.
    Other(io::Error),
}

/// Runs `cmd` to completion with signals forwarded. Signal handlers stay installed afterwards
/// (they do nothing while no child runs, except remember a sent signal: see [`exit_code`]).
pub fn run(cmd: &mut Command) -> Result<ExitStatus, SpawnError> {
    install_handlers().map_err(SpawnError::Other)?;
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => SpawnError::NotFound,
        io::ErrorKind::PermissionDenied => SpawnError::NotExecutable(e),
        _ => SpawnError::Other(e),
    })?;
    let pid = child.id() as i32;
    // Release pairs with the Acquire load in `forward`.
    CHILD.store(pid, Ordering::Release);
    // Acquire pairs with the Release store in `forward`.
    let early = PENDING.swap(0, Ordering::Acquire);
    if early != 0 {
        // SAFETY: pid is our live, unreaped child.
        unsafe { libc::kill(pid, early) };
    }
    let status = child.wait();
    // Relaxed: nothing is published through this reset; a late signal sees 0 and is remembered.
    CHILD.store(0, Ordering::Relaxed);
    status.map_err(SpawnError::Other)
}

/// Our exit status for a child's end: its code, or 128 + the signal that killed it.
pub fn exit_code(status: ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        code as u8
    } else if let Some(sig) = status.signal() {
        (128 + sig) as u8
    } else {
        1
    }
}

/// `prog: command not found`-style message for a spawn error.
pub fn describe(prog: &OsStr, e: &SpawnError) -> String {
    let p = prog.to_string_lossy();
    match e {
        SpawnError::NotFound => format!("{p}: command not found"),
        SpawnError::NotExecutable(e) => format!("{p}: cannot execute: {e}"),
        SpawnError::Other(e) => format!("{p}: cannot start: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 128 + 9);
    }
}
