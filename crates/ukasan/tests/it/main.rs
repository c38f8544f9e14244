//! Integration tests of the `ukasan` crate. This test binary runs under the detector itself
//! (its global allocator is `Ukasan<System>`), and doubles as the child process of the
//! bug-class tests: `UKASAN_IT_CHILD=<scenario>` makes `child::entry` run one buggy scenario.

#[global_allocator]
static GLOBAL: ukasan::Ukasan<std::alloc::System> = ukasan::Ukasan::new(std::alloc::System);

mod child;
mod fuzz;
mod heap;
mod hotpath;
mod stress;
mod syscalls;
mod user_project;
