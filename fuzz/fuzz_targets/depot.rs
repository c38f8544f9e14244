//! Stack depot API against a model: save, save_on, extend_on, save_with_suffixes and fetch
//! sequences on a small budget (see the checker, shared with the depot's tests).
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../crates/stackdepot/tests/it/ops.rs"]
#[allow(dead_code)]
mod ops;

fuzz_target!(|data: &[u8]| ops::check(data));
