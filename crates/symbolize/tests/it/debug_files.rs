//! Separate debug files: build-id directories, `.gnu_debuglink`, the system's `-dbg`
//! packages; and the vdso, which has no file.

use std::path::{Path, PathBuf};
use std::process::Command;

use object::{Object, ObjectSymbol};
use symbolize::Symbolizer;

use crate::util::{build_c_lib, call_line, have_cc, return_address_from, run, scratch};

fn build_id_of(path: &Path) -> Vec<u8> {
    let data = std::fs::read(path).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    obj.build_id().unwrap().expect("built with --build-id").to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits the DWARF of `lib` into `debug` and strips it from `lib`.
fn split_debug(lib: &Path, debug: &Path) {
    run(Command::new("objcopy").arg("--only-keep-debug").arg(lib).arg(debug));
    run(Command::new("objcopy").arg("--strip-debug").arg(lib));
}

#[test]
fn build_id_directory() {
    if !have_cc() {
        return;
    }
    let dir = scratch("buildid");
    let lib = build_c_lib(&dir, "libbid.so", &["-g"]);
    let id = build_id_of(&lib);
    let debug_root = dir.join("debug");
    let link =
        debug_root.join(".build-id").join(hex(&id[..1])).join(format!("{}.debug", hex(&id[1..])));
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    split_debug(&lib, &link);
    let ra = return_address_from(&lib);
    let path = lib.to_str().unwrap();

    // Without the debug directory: symbol table only.
    let f = Symbolizer::with_debug_dirs(vec![]).symbolize(ra, true).pop().unwrap();
    assert_eq!((f.function.as_deref(), f.line), (Some("ukasan_c_caller"), None));

    let mut s = Symbolizer::with_debug_dirs(vec![debug_root]);
    let f = s.symbolize(ra, true).pop().unwrap();
    assert_eq!(f.function.as_deref(), Some("ukasan_c_caller"));
    assert_eq!(f.line, Some(call_line()), "{f:?}");
    assert_eq!(s.dwarf_path(path), Some(link.as_path()));
}

#[test]
fn gnu_debuglink_next_to_the_file() {
    if !have_cc() {
        return;
    }
    let dir = scratch("debuglink");
    let lib = build_c_lib(&dir, "liblink.so", &["-g"]);
    let debug = dir.join(".debug").join("liblink.so.dbg");
    std::fs::create_dir_all(debug.parent().unwrap()).unwrap();
    split_debug(&lib, &debug);
    // objcopy wants the debug file at the given path to compute its CRC.
    run(Command::new("objcopy").arg(format!("--add-gnu-debuglink={}", debug.display())).arg(&lib));
    let ra = return_address_from(&lib);
    let mut s = Symbolizer::with_debug_dirs(vec![]);
    let f = s.symbolize(ra, true).pop().unwrap();
    assert_eq!(f.line, Some(call_line()), "{f:?}");
    assert_eq!(s.dwarf_path(lib.to_str().unwrap()), Some(debug.as_path()));
}

/// glibc's debug info from Debian's `libc6-dbg` (installed under /usr/lib/debug/.build-id).
#[test]
fn system_libc_debug_package() {
    let mut s = Symbolizer::new();
    let malloc = libc::malloc as *const () as usize;
    let Some(m) = s.module_of(malloc).cloned() else { panic!("malloc is in no module") };
    let Some(id) = &m.build_id else {
        eprintln!("note: {} has no build-id: build-id lookup test skipped", m.path);
        return;
    };
    let link = PathBuf::from(format!(
        "/usr/lib/debug/.build-id/{}/{}.debug",
        hex(&id[..1]),
        hex(&id[1..])
    ));
    if !link.exists() {
        eprintln!(
            "note: {} missing (install libc6-dbg): build-id lookup test skipped",
            link.display()
        );
        return;
    }
    let frames = s.symbolize(malloc, false);
    let f = frames.last().unwrap();
    assert!(f.function.as_deref().is_some_and(|n| n.contains("malloc")), "{frames:?}");
    assert!(f.file.as_deref().is_some_and(|p| p.ends_with(".c")), "{frames:?}");
    assert_eq!(f.offset, 0);
    assert_eq!(s.dwarf_path(&m.path), Some(link.as_path()));
    println!("libc6-dbg:{}", symbolize::format_frame(f));
}

#[test]
fn vdso_symbols_from_memory() {
    let mut s = Symbolizer::new();
    let Some(m) = s.modules().iter().find(|m| m.path == symbolize::VDSO_PATH).cloned() else {
        eprintln!("note: no vdso in this process: test skipped");
        return;
    };
    let len = (m.end - m.start + 4095) & !4095;
    // SAFETY: the kernel maps the vdso image readable, in whole pages, for the process's life.
    let image = unsafe { std::slice::from_raw_parts(m.start as *const u8, len) };
    let obj = object::File::parse(image).unwrap();
    let sym = obj
        .dynamic_symbols()
        .find(|s| s.name() == Ok("__vdso_clock_gettime"))
        .expect("vdso exports clock_gettime");
    let addr = m.bias + sym.address() as usize + 1;
    let f = s.symbolize(addr, false).pop().unwrap();
    assert!(f.function.as_deref().is_some_and(|n| n.contains("clock_gettime")), "{f:?}");
    assert_eq!(f.offset, 1);
}

/// A library whose DWARF names live in a dwz supplementary file (`.gnu_debugaltlink`), as in
/// Debian's `-dbgsym` packages; `ukasan_hidden_caller` is in no symbol table.
const DWZ_SOURCE: &str = r#"struct shared_thing { int a; long b; const char *c; struct shared_thing *next; };

__attribute__((noinline)) void *ukasan_c_ret(void)
{
	return __builtin_return_address(0);
}

__attribute__((noinline, visibility("hidden"))) void *ukasan_hidden_caller(struct shared_thing *t)
{
	void *ra = ukasan_c_ret(); /* CALL */
	return t ? (void *)t->c : ra;
}

void *ukasan_c_caller(void)
{
	return ukasan_hidden_caller(0);
}
"#;

#[test]
fn dwz_supplementary_file() {
    if !have_cc() {
        return;
    }
    if !Command::new("dwz").arg("--version").output().is_ok_and(|o| o.status.success()) {
        eprintln!("note: no `dwz` on PATH (apt-get install dwz): supplementary-file test skipped");
        return;
    }
    let dir = scratch("dwz");
    std::fs::write(dir.join("lib.c"), DWZ_SOURCE).unwrap();
    let line = DWZ_SOURCE.lines().position(|l| l.contains("/* CALL */")).unwrap() as u32 + 1;
    for lib in ["libdwz1.so", "libdwz2.so"] {
        run(Command::new("cc")
            .current_dir(&dir)
            .args(["-g", "-O0", "-fPIC", "-shared", "-o", lib, "lib.c"]));
    }
    // Shared DWARF (types, strings) moves to common.debug, named relative to the libraries.
    run(Command::new("dwz").current_dir(&dir).args([
        "-m",
        "common.debug",
        "-M",
        "common.debug",
        "libdwz1.so",
        "libdwz2.so",
    ]));
    for lib in ["libdwz1.so", "libdwz2.so"] {
        run(Command::new("strip").current_dir(&dir).args([
            "--strip-all",
            "--keep-section=.debug_*",
            "--keep-section=.gnu_debugaltlink",
            lib,
        ]));
    }
    let ra1 = return_address_from(&dir.join("libdwz1.so"));
    let f = Symbolizer::with_debug_dirs(vec![]).symbolize(ra1, true).pop().unwrap();
    assert_eq!(f.function.as_deref(), Some("ukasan_hidden_caller"), "{f:?}");
    assert_eq!(f.line, Some(line));
    // No symbol table: start and size come from the function's DWARF range.
    assert!(f.size.is_some_and(|s| f.offset > 0 && f.offset < s), "{f:?}");

    // Without the supplementary file the name (an alt string) is unreadable.
    std::fs::rename(dir.join("common.debug"), dir.join("moved.debug")).unwrap();
    let ra2 = return_address_from(&dir.join("libdwz2.so"));
    let f = Symbolizer::with_debug_dirs(vec![]).symbolize(ra2, true).pop().unwrap();
    assert_ne!(f.function.as_deref(), Some("ukasan_hidden_caller"), "{f:?}");
}
