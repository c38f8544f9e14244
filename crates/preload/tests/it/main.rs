//! Integration tests of libukasan.so: real programs run under `LD_PRELOAD`, reports asserted.
//!
//! Needs `cc`, `g++` and `rustc` (scenarios compiled here); `python3`, `sqlite3` and `git` for
//! the clean runs (skipped with a note when missing; Debian: `gcc g++ python3 sqlite3 git`).

mod bugs;
mod clean;
mod common;
mod guarded;
mod hardening;
mod options;
mod shadow;
mod stress;
