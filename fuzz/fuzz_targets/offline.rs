//! Offline report symbolizer: never panics on any text, and lines that hold neither a raw
//! frame nor a JSON report come back unchanged.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    symbolize::offline::check_for_fuzzing(input);
});
