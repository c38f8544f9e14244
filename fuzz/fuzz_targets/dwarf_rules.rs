//! The DWARF CFI rule decoder on arbitrary `.eh_frame_hdr` + `.eh_frame` bytes: never
//! panics, never reads outside them, and every rule it returns packs and unpacks intact.
//!
//! Input: `[split: u16 LE][lookup: i64 LE][bytes]`; `bytes[..split]` is the header,
//! `bytes[split..]` the frames (as laid out in an ELF file, so that real sections make good
//! seeds), and the address looked up is `header start + lookup`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    stacktrace::dwarf::fuzz_input(data);
});
