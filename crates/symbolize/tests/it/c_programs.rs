//! C shared libraries built here with and without `-g`, loaded with `dlopen`, symbolized.

use std::process::Command;

use symbolize::{format_frame, Symbolizer};

use crate::util::{build_c_lib, call_line, have_cc, return_address_from, run, scratch};

#[test]
fn with_debug_info_gives_function_file_and_line() {
    if !have_cc() {
        return;
    }
    let dir = scratch("c-g");
    let lib = build_c_lib(&dir, "libwithg.so", &["-g"]);
    let ra = return_address_from(&lib);
    let mut s = Symbolizer::with_debug_dirs(vec![]);
    let frames = s.symbolize(ra, true);
    assert_eq!(frames.len(), 1, "{frames:?}");
    let f = &frames[0];
    assert_eq!(f.function.as_deref(), Some("ukasan_c_caller"));
    assert!(f.file.as_deref().unwrap().ends_with("lib.c"), "{f:?}");
    assert_eq!(f.line, Some(call_line()));
    let size = f.size.expect("symbol size");
    assert!(f.offset > 0 && f.offset < size, "{f:?}");
    assert_eq!(f.module, lib.to_str().unwrap());
    let line = format_frame(f);
    assert!(line.starts_with(&format!(" ukasan_c_caller+{:#x}/{size:#x} ", f.offset)), "{line}");
    assert!(line.ends_with(&format!("lib.c:{}", call_line())), "{line}");
    println!("with -g:{line}");
}

#[test]
fn without_debug_info_uses_symtab() {
    if !have_cc() {
        return;
    }
    let dir = scratch("c-nog");
    let lib = build_c_lib(&dir, "libnog.so", &[]);
    let ra = return_address_from(&lib);
    let mut s = Symbolizer::with_debug_dirs(vec![]);
    let frames = s.symbolize(ra, true);
    assert_eq!(frames.len(), 1);
    let f = &frames[0];
    assert_eq!(f.function.as_deref(), Some("ukasan_c_caller"));
    assert_eq!((f.file.as_deref(), f.line), (None, None));
    assert!(f.size.is_some_and(|s| f.offset > 0 && f.offset < s), "{f:?}");
    assert_eq!(s.has_dwarf(lib.to_str().unwrap()), Some(false));
    println!("without -g:{}", format_frame(f));
}

#[test]
fn stripped_uses_dynsym() {
    if !have_cc() {
        return;
    }
    let dir = scratch("c-strip");
    let lib = build_c_lib(&dir, "libstripped.so", &["-g"]);
    run(Command::new("strip").arg("--strip-all").arg(&lib));
    let ra = return_address_from(&lib);
    let frames = Symbolizer::with_debug_dirs(vec![]).symbolize(ra, true);
    assert_eq!(frames[0].function.as_deref(), Some("ukasan_c_caller"), "{frames:?}");
    assert_eq!(frames[0].file, None);
}

#[test]
fn address_in_no_module_prints_raw() {
    let frames = Symbolizer::new().symbolize(0x10, true);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].module, "");
    assert_eq!(format_frame(&frames[0]), " 0x10");
}
