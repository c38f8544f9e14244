//! `UKASAN_OPTIONS` parser: never panics, every problem is one `ukasan: ` line, and every
//! option stays within its documented range whatever the input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // `options_file=` reads the file it names (a fuzzer could name /dev/stdin): not here.
    if data.windows(12).any(|w| w.eq_ignore_ascii_case(b"options_file")) {
        return;
    }
    ukasan::options::check_invariants_for_fuzzing(data);
});
