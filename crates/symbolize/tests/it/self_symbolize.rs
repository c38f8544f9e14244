//! Self-symbolization: return addresses captured in this test binary resolve to the
//! function and the `line!()` of the call site (the model: gimli-rs/addr2line's
//! `tests/correctness.rs` and backtrace-rs's `tests/accuracy`).
//!
//! Each capture and its `line!()` sit on the same source line, so the line table must map
//! `ra - 1` to exactly that line. `#[inline(always)]` is honoured at every opt-level, so the
//! inlined-frame test means the same in the debug and release test profiles. (With
//! `debug = "line-tables-only"`, as in this workspace's release profile, DWARF names inlined
//! functions without their module path, so that name is checked by its last component.)

use symbolize::{format_frame, Frame, Symbolizer};

const DEPTH: usize = 16;

#[inline(never)]
fn leaf() -> ([usize; DEPTH], u32) {
    let mut buf = [0; DEPTH];
    let (_, line) = (stacktrace::fp::capture(&mut buf[..]), line!());
    (buf, line)
}

#[inline(always)]
fn inlined_capture(buf: &mut [usize; DEPTH]) -> u32 {
    let (_, line) = (stacktrace::fp::capture(&mut buf[..]), line!());
    line
}

#[inline(never)]
fn calls_inlined() -> ([usize; DEPTH], u32, u32) {
    let mut buf = [0; DEPTH];
    let (inner, outer) = (inlined_capture(&mut buf), line!());
    (buf, inner, outer)
}

fn file_is_this(f: &Frame) -> bool {
    f.file.as_deref().is_some_and(|p| p.ends_with("tests/it/self_symbolize.rs"))
}

fn name_ends(f: &Frame, suffix: &str) -> bool {
    f.function.as_deref().is_some_and(|n| n.ends_with(suffix))
}

#[test]
fn inline_never_function_and_call_line() {
    let ((buf, line), call_line) = (leaf(), line!());
    let mut s = Symbolizer::new();
    let frames = s.symbolize(buf[0], true);
    println!("{frames:#?}");
    assert_eq!(frames.len(), 1);
    let f = &frames[0];
    assert!(name_ends(f, "self_symbolize::leaf"), "{f:?}");
    assert_eq!(f.function.as_deref().unwrap(), "it::self_symbolize::leaf", "no hash suffix");
    assert!(file_is_this(f), "{f:?}");
    assert_eq!(f.line, Some(line));
    assert!(!f.inlined);
    assert!(f.size.is_some_and(|size| f.offset > 0 && f.offset <= size), "{f:?}");
    assert_eq!(f.module, std::env::current_exe().unwrap().to_str().unwrap());

    // Entry 1: the return address into this test function.
    let caller = s.symbolize(buf[1], true).pop().unwrap();
    assert!(name_ends(&caller, "inline_never_function_and_call_line"), "{caller:?}");
    assert_eq!(caller.line, Some(call_line));
    assert!(file_is_this(&caller));
}

#[test]
fn inline_always_callee_is_an_inlined_frame() {
    let (buf, inner, outer) = calls_inlined();
    let frames = Symbolizer::new().symbolize(buf[0], true);
    for f in &frames {
        println!("{}", format_frame(f));
    }
    assert_eq!(frames.len(), 2, "{frames:#?}");
    assert!(name_ends(&frames[0], "inlined_capture"), "{frames:?}");
    assert!(frames[0].inlined);
    assert_eq!(frames[0].line, Some(inner));
    assert!(file_is_this(&frames[0]));
    assert!(name_ends(&frames[1], "self_symbolize::calls_inlined"), "{frames:?}");
    assert!(!frames[1].inlined);
    assert_eq!(frames[1].line, Some(outer));
    assert!(format_frame(&frames[0]).ends_with(" (inlined)"));
    // Inlined frames carry the physical function's offset and size.
    assert_eq!((frames[0].offset, frames[0].size), (frames[1].offset, frames[1].size));
}

#[test]
fn exact_address_is_not_shifted() {
    // A function's own address is its first instruction: offset 0, its own line range.
    let addr = leaf as *const () as usize;
    let f = Symbolizer::new().symbolize(addr, false).pop().unwrap();
    assert!(name_ends(&f, "self_symbolize::leaf"), "{f:?}");
    assert_eq!(f.offset, 0);
    // As a return address, the same value belongs to whatever precedes `leaf`.
    let before = Symbolizer::new().symbolize(addr, true).pop().unwrap();
    assert!(!name_ends(&before, "self_symbolize::leaf"), "{before:?}");
}

#[test]
fn global_instance_and_raw_frames() {
    let (buf, line) = leaf();
    let a = symbolize::with_global(|s| s.symbolize(buf[0], true));
    // Re-entrant use from inside the closure gets a fresh instance instead of deadlocking.
    let b = symbolize::with_global(|_| symbolize::with_global(|s| s.symbolize(buf[0], true)));
    assert_eq!(a, b);
    assert_eq!(a[0].line, Some(line));

    let raw = symbolize::format_raw_frame(buf[0]);
    let exe = std::env::current_exe().unwrap();
    let name = exe.file_name().unwrap().to_str().unwrap();
    assert!(raw.starts_with(&format!(" [<{:#018x}>] {name}+0x", buf[0])), "{raw}");
    let map = symbolize::module_map();
    assert!(map.lines().next().unwrap().ends_with(&format!("path={}", exe.display())), "{map}");

    // The raw report symbolized offline matches the in-process result.
    let report = format!("{raw}\n{map}");
    let out = symbolize::offline::symbolize_report(&report, &|p| Some(p.into()));
    assert_eq!(out.lines().next().unwrap(), format_frame(&a[0]));
}
