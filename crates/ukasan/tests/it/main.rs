//! Integration tests of the `ukasan` crate. This test binary runs under the detector itself
//! (its global allocator is `Ukasan<System>`), and doubles as the child process of the
//! bug-class tests: `UKASAN_IT_CHILD=<scenario>` makes `child::entry` run one buggy scenario.

#[global_allocator]
static GLOBAL: ukasan::Ukasan<std::alloc::System> = ukasan::Ukasan::new(std::alloc::System);

mod child;
mod fuzz;
mod heap;
mod hotpath;
mod scs;
mod stress;
mod syscalls;
mod user_project;

/// This test binary as a command, for the child-process tests. Under an emulator without
/// binfmt_misc (`aarch64/check.sh` runs these tests under `qemu-aarch64` and names it in
/// `UKASAN_TEST_RUNNER`, e.g. `qemu-aarch64 -L /usr/aarch64-linux-gnu`) the child runs under
/// it too: an aarch64 executable cannot be `exec`ed directly there.
pub(crate) fn self_command() -> std::process::Command {
    let exe = std::env::current_exe().unwrap();
    let runner = std::env::var("UKASAN_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    let Some(program) = words.next() else {
        return std::process::Command::new(exe);
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(words).arg(exe);
    cmd
}
