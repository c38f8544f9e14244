//! The module map: every loaded ELF object (main program, shared libraries, the vdso), from
//! `dl_iterate_phdr`, and the text line that carries one module in raw reports.
//!
//! # Module map line
//! ```text
//! module start=0x000055d0c0a00000 end=0x000055d0c0a9c000 bias=0x55d0c0a00000 build-id=3f2a9c01 path=/work/prog
//! ```
//! `start`/`end`: the lowest and highest address of the object's `PT_LOAD` segments;
//! `bias`: the load bias (runtime address minus ELF virtual address, `dlpi_addr`);
//! `build-id`: the GNU build-id in hex, or `-`; `path`: the rest of the line (may contain
//! spaces), `[vdso]` for the vdso. Anything before `module start=` on the line is ignored, so
//! the runtime may prefix it.

use std::ffi::CStr;
use std::fmt::{self, Write as _};

/// One loaded ELF object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// File path (the main program's is resolved through `/proc/self/exe`); `[vdso]` for the vdso.
    pub path: String,
    /// Lowest address of its `PT_LOAD` segments.
    pub start: usize,
    /// End (exclusive) of its highest `PT_LOAD` segment.
    pub end: usize,
    /// Load bias: runtime address minus ELF virtual address.
    pub bias: usize,
    /// GNU build-id, when the object has one.
    pub build_id: Option<Vec<u8>>,
    /// `[start, end)` of each `PT_LOAD` segment; empty for modules parsed from text (then
    /// `start..end` is used).
    pub(crate) segments: Vec<(usize, usize)>,
}

/// Path used for the vdso, which has no file.
pub const VDSO_PATH: &str = "[vdso]";

impl Module {
    /// Whether `addr` lies in one of the module's segments.
    pub fn contains(&self, addr: usize) -> bool {
        if self.segments.is_empty() {
            return self.start <= addr && addr < self.end;
        }
        self.segments.iter().any(|&(s, e)| s <= addr && addr < e)
    }

    /// The file name part of the path (what frames print as `name+0xoffset`).
    pub fn name(&self) -> &str {
        basename(&self.path)
    }

    /// Parses a module map line (see the module docs); `None` if it is not one.
    pub fn parse_line(line: &str) -> Option<Module> {
        let at = line.find("module start=0x")?;
        let rest = &line[at + "module ".len()..];
        let (start, rest) = field(rest, "start=")?;
        let (end, rest) = field(rest, "end=")?;
        let (bias, rest) = field(rest, "bias=")?;
        let (id, rest) = rest.strip_prefix("build-id=")?.split_once(' ')?;
        let path = rest.strip_prefix("path=")?.trim_end_matches(['\r', '\n']);
        let start = parse_hex(start)?;
        let end = parse_hex(end)?;
        let bias = parse_hex(bias)?;
        let build_id = if id == "-" { None } else { Some(parse_hex_bytes(id)?) };
        if path.is_empty() || end < start {
            return None;
        }
        Some(Module { path: path.to_owned(), start, end, bias, build_id, segments: Vec::new() })
    }
}

impl fmt::Display for Module {
    /// The module map line, without a newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "module start={:#018x} end={:#018x} bias={:#x} build-id=",
            self.start, self.end, self.bias
        )?;
        match &self.build_id {
            Some(id) => id.iter().try_for_each(|b| write!(f, "{b:02x}"))?,
            None => f.write_char('-')?,
        }
        write!(f, " path={}", self.path)
    }
}

fn field<'a>(s: &'a str, key: &str) -> Option<(&'a str, &'a str)> {
    s.strip_prefix(key)?.split_once(' ')
}

/// Parses `0x`-prefixed (or bare) hex into a usize.
pub(crate) fn parse_hex(s: &str) -> Option<usize> {
    let digits = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
    if digits.is_empty() {
        return None;
    }
    usize::from_str_radix(digits, 16).ok()
}

fn parse_hex_bytes(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

/// The last path component (the whole string if there is no `/`).
pub(crate) fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The GNU build-id in a `PT_NOTE` segment image; `align` is the segment's alignment.
pub(crate) fn parse_build_id(mut notes: &[u8], align: usize) -> Option<Vec<u8>> {
    let align = if align == 8 { 8 } else { 4 };
    let pad = |n: usize| n.checked_add(align - 1).map(|v| v & !(align - 1));
    while notes.len() >= 12 {
        let word = |i: usize| {
            u32::from_ne_bytes([notes[i], notes[i + 1], notes[i + 2], notes[i + 3]]) as usize
        };
        let (namesz, descsz, kind) = (word(0), word(4), word(8));
        let name_end = 12usize.checked_add(pad(namesz)?)?;
        let desc_end = name_end.checked_add(pad(descsz)?)?;
        if desc_end > notes.len() || name_end - 12 < namesz || name_end + descsz > notes.len() {
            return None;
        }
        const NT_GNU_BUILD_ID: usize = 3;
        if kind == NT_GNU_BUILD_ID && &notes[12..12 + namesz] == b"GNU\0" {
            return Some(notes[name_end..name_end + descsz].to_vec());
        }
        notes = &notes[desc_end..];
    }
    None
}

/// Every loaded module, in `dl_iterate_phdr` order (the main program first).
///
/// Takes glibc's loader lock for the duration: never call from a signal handler that may
/// have interrupted `dlopen`.
pub fn snapshot() -> Vec<Module> {
    let mut out: Vec<Module> = Vec::new();
    // SAFETY: `callback` matches the signature dl_iterate_phdr expects and only uses `data` as
    // the `Vec<Module>` passed here, which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(callback), (&mut out as *mut Vec<Module>).cast()) };
    out
}

/// The loader's (objects added, objects removed) counters: changes when `dlopen`/`dlclose`
/// change the module list.
pub(crate) fn generation() -> (u64, u64) {
    let mut gen = (0u64, 0u64);
    // SAFETY: `gen_callback` only writes the `(u64, u64)` passed as `data`, which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(gen_callback), (&mut gen as *mut (u64, u64)).cast()) };
    gen
}

unsafe extern "C" fn gen_callback(
    info: *mut libc::dl_phdr_info,
    size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    if size >= std::mem::offset_of!(libc::dl_phdr_info, dlpi_subs) + std::mem::size_of::<u64>() {
        // SAFETY: `info` is valid for the call and, per `size`, has the counters; `data` is the
        // `(u64, u64)` given by `generation`.
        unsafe { *data.cast::<(u64, u64)>() = ((*info).dlpi_adds, (*info).dlpi_subs) };
    }
    1 // the counters are the same in every entry: stop after the first
}

/// The vdso's ELF header address, 0 if none.
pub(crate) fn vdso_base() -> usize {
    // SAFETY: getauxval has no preconditions.
    unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) as usize }
}

unsafe extern "C" fn callback(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: dl_iterate_phdr passes a valid `info` for the call, and `data` is the
    // `&mut Vec<Module>` given by `snapshot`, not aliased during the iteration.
    let (info, out) = unsafe { (&*info, &mut *data.cast::<Vec<Module>>()) };
    let bias = info.dlpi_addr as usize;
    let phdrs = if info.dlpi_phdr.is_null() {
        &[][..]
    } else {
        // SAFETY: the loader guarantees `dlpi_phnum` program headers at `dlpi_phdr`.
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) }
    };
    let mut segments = Vec::new();
    for p in phdrs.iter().filter(|p| p.p_type == libc::PT_LOAD) {
        let s = bias.wrapping_add(p.p_vaddr as usize);
        segments.push((s, s.wrapping_add(p.p_memsz as usize)));
    }
    let (Some(start), Some(end)) =
        (segments.iter().map(|s| s.0).min(), segments.iter().map(|s| s.1).max())
    else {
        return 0;
    };
    let mut build_id = None;
    for p in phdrs.iter().filter(|p| p.p_type == libc::PT_NOTE) {
        let (va, len) = (p.p_vaddr as usize, p.p_filesz as usize);
        // Only notes that lie inside a loaded, file-backed segment are readable.
        let mapped = phdrs.iter().any(|l| {
            l.p_type == libc::PT_LOAD
                && (l.p_vaddr as usize) <= va
                && va.saturating_add(len)
                    <= (l.p_vaddr as usize).saturating_add(l.p_filesz as usize)
        });
        if !mapped || len == 0 {
            continue;
        }
        // SAFETY: the range is inside a PT_LOAD segment's file-backed part, which the loader
        // mapped readable (notes are in the read-only first segment) for the object's life.
        let notes = unsafe { std::slice::from_raw_parts(bias.wrapping_add(va) as *const u8, len) };
        build_id = parse_build_id(notes, p.p_align as usize);
        if build_id.is_some() {
            break;
        }
    }
    let name = if info.dlpi_name.is_null() {
        String::new()
    } else {
        // SAFETY: a non-null `dlpi_name` is a NUL-terminated string owned by the loader.
        unsafe { CStr::from_ptr(info.dlpi_name) }.to_string_lossy().into_owned()
    };
    let vdso = vdso_base();
    let path = if vdso != 0 && segments.iter().any(|&(s, e)| s <= vdso && vdso < e) {
        VDSO_PATH.to_owned()
    } else if name.is_empty() && out.is_empty() {
        std::env::current_exe().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
    } else {
        name
    };
    if path.is_empty() {
        return 0;
    }
    out.push(Module { path, start, end, bias, build_id, segments });
    0
}

/// A copy of the vdso's ELF image, for loading its symbols.
pub(crate) fn vdso_image(module: &Module) -> Option<Vec<u8>> {
    let base = vdso_base();
    if base == 0 || !module.contains(base) {
        return None;
    }
    // The image is mapped whole: from the ELF header to the end of the segment holding it.
    let &(_, seg_end) = module.segments.iter().find(|&&(s, e)| s <= base && base < e)?;
    // SAFETY: page size query, no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    let mapped_end = seg_end.checked_add(page - 1)? & !(page - 1);
    let len = mapped_end - base;
    // SAFETY: [base, mapped_end) is the vdso's mapping: the segment containing the header,
    // rounded up to whole pages, which the kernel maps readable for the process's life.
    let image = unsafe { std::slice::from_raw_parts(base as *const u8, len) };
    Some(image.to_vec())
}

/// The module map of the current process, one line per module (see the module docs).
pub fn module_map() -> String {
    let mut s = String::new();
    for m in snapshot() {
        let _ = writeln!(s, "{m}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_roundtrip() {
        let m = Module {
            path: "/opt/my lib/libx.so".into(),
            start: 0x7f00_0000_1000,
            end: 0x7f00_0000_9000,
            bias: 0x7f00_0000_0000,
            build_id: Some(vec![0xde, 0xad, 0x01]),
            segments: vec![],
        };
        let line = format!("[ukasan] {m}");
        assert_eq!(Module::parse_line(&line), Some(m.clone()));
        let none = Module { build_id: None, ..m };
        assert_eq!(Module::parse_line(&none.to_string()), Some(none));
    }

    #[test]
    fn bad_lines_rejected() {
        for l in [
            "",
            "module start=0x10 end=0x20 bias=0x0 build-id=- path=",
            "module start=0x30 end=0x20 bias=0x0 build-id=- path=/x",
            "module start=0xzz end=0x20 bias=0x0 build-id=- path=/x",
            "module start=0x10 end=0x20 bias=0x0 build-id=abc path=/x",
            "module start=0x10 end=0x20",
        ] {
            assert_eq!(Module::parse_line(l), None, "{l}");
        }
    }

    #[test]
    fn build_id_note() {
        let mut n = Vec::new();
        // A non-GNU note first, then the build-id.
        for (name, kind, desc) in [
            (&b"XYZ\0"[..], 3u32, &[1u8, 2, 3][..]),
            (b"GNU\0", 3, &[0xaa, 0xbb, 0xcc, 0xdd, 0xee]),
        ] {
            n.extend((name.len() as u32).to_ne_bytes());
            n.extend((desc.len() as u32).to_ne_bytes());
            n.extend(kind.to_ne_bytes());
            n.extend(name);
            n.extend(desc);
            while n.len() % 4 != 0 {
                n.push(0);
            }
        }
        assert_eq!(parse_build_id(&n, 4), Some(vec![0xaa, 0xbb, 0xcc, 0xdd, 0xee]));
        assert_eq!(parse_build_id(&n[..n.len() - 8], 4), None);
    }

    #[test]
    fn snapshot_has_main_program_and_libc() {
        let mods = snapshot();
        let exe = std::env::current_exe().unwrap();
        assert_eq!(mods[0].path, exe.to_string_lossy());
        let here = snapshot_has_main_program_and_libc as *const () as usize;
        assert!(mods[0].contains(here));
        assert!(mods.iter().any(|m| m.name().starts_with("libc.so")), "{mods:?}");
        assert!(mods[0].build_id.is_some());
    }
}
