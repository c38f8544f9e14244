//! Integration tests of the stack depot through its public API, one module per area.

mod budget;
mod concurrency;
mod fork;
mod global;
#[cfg(not(miri))]
mod noalloc;
mod ops;
mod props;

/// A small deterministic generator (xorshift64*), so failures reproduce.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Forks; the child runs `child` (which must not allocate or lock) and `_exit`s with its
/// result; the parent returns the child's exit status (or panics if it died of a signal).
#[cfg(not(miri))]
pub fn in_child(child: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child runs only allocation-free, lock-free code, then `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = child();
        // SAFETY: ends the child at once, skipping the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    assert!(pid > 0, "fork failed");
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
    libc::WEXITSTATUS(status)
}
