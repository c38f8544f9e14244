//! One ELF file's debug information, loaded once and looked up by ELF virtual address.
//!
//! DWARF comes from the file itself, else from a separate debug file found by build-id
//! (`<dir>/.build-id/xx/yyyy.debug`) or by `.gnu_debuglink` (next to the file, in its
//! `.debug/` subdirectory, or under `<dir>/<file's directory>/`), where `<dir>` is each debug
//! directory (default `/usr/lib/debug`). A separate file whose build-id differs is refused.
//! A dwz supplementary file (`.gnu_debugaltlink`) is followed, by its path or its build-id.
//! The symbol table is `.symtab`, else the separate file's `.symtab`, else `.dynsym`.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

use crate::{demangle::demangle, Frame, LoadError};

/// The reader every DWARF section is read through: slices of the files mapped in [`Stash`].
type Slice = gimli::EndianSlice<'static, gimli::RunTimeEndian>;

/// Keeps the bytes that the parsed data borrows alive: file mappings and decompressed sections.
///
/// The `'static` slices handed out are valid for the life of the `Stash`, not for `'static`:
/// they never leave this module except inside [`DebugInfo`], which drops them first.
#[derive(Default)]
struct Stash {
    maps: Vec<memmap2::Mmap>,
    bufs: Vec<Box<[u8]>>,
}

impl Stash {
    /// Maps `path` read-only.
    fn map(&mut self, path: &Path) -> Result<&'static [u8], LoadError> {
        let file = File::open(path).map_err(|_| LoadError::Open)?;
        // SAFETY: a read-only private mapping of a binary or debug file. If another process
        // truncates the file while it is mapped, reads fault (SIGBUS); every symbolizer that maps
        // files (addr2line, backtrace-rs, gdb) accepts that risk, and nothing here writes to it.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|_| LoadError::Map)?;
        // SAFETY: the pages stay mapped until `map` is dropped, which happens only when the
        // Stash is dropped; moving the `Mmap` handle into `self.maps` does not move the pages.
        // The extended lifetime is confined to `DebugInfo`, which drops its borrowers first.
        let data: &'static [u8] = unsafe { &*(map.as_ref() as *const [u8]) };
        self.maps.push(map);
        Ok(data)
    }

    /// Keeps `bytes` (e.g. a decompressed section, the copied vdso) for the Stash's life.
    fn keep(&mut self, bytes: Box<[u8]>) -> &'static [u8] {
        // SAFETY: the boxed bytes do not move when the box moves into `self.bufs`, and are
        // freed only when the Stash is dropped (see `map` for the lifetime confinement).
        let data: &'static [u8] = unsafe { &*(&*bytes as *const [u8]) };
        self.bufs.push(bytes);
        data
    }

    fn cow(&mut self, data: Cow<'static, [u8]>) -> &'static [u8] {
        match data {
            Cow::Borrowed(b) => b,
            Cow::Owned(v) => self.keep(v.into_boxed_slice()),
        }
    }
}

/// A text symbol: start address, size (0 if unknown) and mangled name.
#[derive(Clone, Copy)]
struct Sym {
    addr: u64,
    size: u64,
    name: &'static str,
}

/// Debug information of one ELF file.
pub(crate) struct DebugInfo {
    // Field order is drop order: everything that borrows from `stash` comes before it.
    ctx: Option<addr2line::Context<Slice>>,
    symbols: Vec<Sym>,
    build_id: Option<Vec<u8>>,
    dwarf_path: Option<PathBuf>,
    stash: Stash,
}

impl std::fmt::Debug for DebugInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DebugInfo")
            .field("dwarf", &self.ctx.is_some())
            .field("symbols", &self.symbols.len())
            .field("dwarf_path", &self.dwarf_path)
            .field("mappings", &self.stash.maps.len())
            .finish()
    }
}

impl DebugInfo {
    /// Loads the ELF file at `path` and its separate debug file, if any.
    pub(crate) fn load(path: &Path, debug_dirs: &[PathBuf]) -> Result<Self, LoadError> {
        let mut stash = Stash::default();
        let data = stash.map(path)?;
        Self::from_data(data, Some(path), stash, debug_dirs)
    }

    /// Loads an ELF image held in memory (the vdso).
    pub(crate) fn from_bytes(bytes: Vec<u8>, debug_dirs: &[PathBuf]) -> Result<Self, LoadError> {
        let mut stash = Stash::default();
        let data = stash.keep(bytes.into_boxed_slice());
        Self::from_data(data, None, stash, debug_dirs)
    }

    /// Loads only the separate debug file of `build_id` (the binary itself is not at hand).
    pub(crate) fn load_build_id(
        build_id: &[u8],
        debug_dirs: &[PathBuf],
    ) -> Result<Self, LoadError> {
        for dir in debug_dirs {
            let Some(path) = build_id_path(dir, build_id) else {
                continue;
            };
            if path.is_file() {
                return Self::load(&path, &[]);
            }
        }
        Err(LoadError::Open)
    }

    fn from_data(
        data: &'static [u8],
        path: Option<&Path>,
        mut stash: Stash,
        debug_dirs: &[PathBuf],
    ) -> Result<Self, LoadError> {
        let obj = object::File::parse(data).map_err(|_| LoadError::Parse)?;
        let build_id = obj.build_id().ok().flatten().map(<[u8]>::to_vec);
        let own_symtab = collect_symbols(obj.symbols());
        let separate = if has_dwarf(&obj) {
            None
        } else {
            find_separate(&obj, path, build_id.as_deref(), debug_dirs, &mut stash)
        };
        let mut symbols = own_symtab;
        if symbols.is_empty() {
            if let Some((sep, _)) = &separate {
                symbols = collect_symbols(sep.symbols());
            }
        }
        if symbols.is_empty() {
            symbols = collect_symbols(obj.dynamic_symbols());
        }
        let (dwarf_obj, dwarf_path) = match &separate {
            Some((f, p)) => (Some(f), Some(p.clone())),
            None if has_dwarf(&obj) => (Some(&obj), path.map(Path::to_path_buf)),
            None => (None, None),
        };
        let ctx = dwarf_obj
            .and_then(|f| {
                let mut dwarf = load_dwarf(f, &mut stash).ok()?;
                if let Some(sup) = load_sup(f, dwarf_path.as_deref(), debug_dirs, &mut stash) {
                    dwarf.set_sup(sup);
                }
                Some(dwarf)
            })
            .and_then(|d| addr2line::Context::from_dwarf(d).ok());
        let dwarf_path = if ctx.is_some() { dwarf_path } else { None };
        Ok(DebugInfo { ctx, symbols, build_id, dwarf_path, stash })
    }

    /// The GNU build-id of the binary (not of the debug file).
    pub(crate) fn build_id(&self) -> Option<&[u8]> {
        self.build_id.as_deref()
    }

    /// Whether DWARF was found (in the file or a separate debug file).
    pub(crate) fn has_dwarf(&self) -> bool {
        self.ctx.is_some()
    }

    /// Where the DWARF was read from, if any.
    pub(crate) fn dwarf_path(&self) -> Option<&Path> {
        self.dwarf_path.as_deref()
    }

    /// The frames at ELF virtual address `vaddr`, innermost (inlined) first; `base` is the
    /// frame with the module fields already filled, copied into each result.
    ///
    /// Return addresses are looked up at `vaddr - 1` (the call instruction), but offsets are
    /// reported from `vaddr` itself, as the kernel does.
    pub(crate) fn frames(&self, vaddr: u64, is_return_address: bool, base: &Frame) -> Vec<Frame> {
        let probe = if is_return_address { vaddr.saturating_sub(1) } else { vaddr };
        let sym = self.symbol(probe);
        let mut dwarf: Vec<(Option<String>, Option<String>, Option<u32>)> = Vec::new();
        let mut outer_die = None;
        if let Some(ctx) = &self.ctx {
            if let Ok(mut it) = ctx.find_frames(probe).skip_all_loads() {
                while let Ok(Some(f)) = it.next() {
                    let name = f
                        .function
                        .as_ref()
                        .and_then(|n| n.raw_name().ok())
                        .map(|n| demangle(&n).into_owned());
                    let (file, line) = match &f.location {
                        Some(l) => (l.file.map(str::to_owned), l.line),
                        None => (None, None),
                    };
                    outer_die = f.dw_die_offset;
                    dwarf.push((name, file, line));
                }
            }
        }
        // Start and size of the physical function: the symbol table, else its DWARF ranges.
        let range = sym.map(|s| (s.addr, (s.size > 0).then_some(s.size))).or_else(|| {
            let ctx = self.ctx.as_ref()?;
            die_range(ctx, probe, outer_die?).map(|(a, s)| (a, Some(s)))
        });
        let (offset, size) = match range {
            Some((start, size)) => (vaddr.saturating_sub(start) as usize, size.map(|s| s as usize)),
            None => (0, None),
        };
        let sym_name = sym.map(|s| demangle(s.name).into_owned());
        if dwarf.is_empty() {
            return vec![Frame { function: sym_name, offset, size, ..base.clone() }];
        }
        let n = dwarf.len();
        dwarf
            .into_iter()
            .enumerate()
            .map(|(i, (name, file, line))| {
                let inlined = i + 1 < n;
                let function =
                    if inlined { name } else { physical_name(name, sym_name.as_deref()) };
                let known = function.is_some() && range.is_some();
                Frame {
                    function,
                    offset: if known { offset } else { 0 },
                    size: if known { size } else { None },
                    file,
                    line,
                    inlined,
                    ..base.clone()
                }
            })
            .collect()
    }

    /// The text symbol containing `probe` (or the nearest one below it, when sizes are 0).
    fn symbol(&self, probe: u64) -> Option<Sym> {
        let i = self.symbols.partition_point(|s| s.addr <= probe);
        let s = *self.symbols.get(i.checked_sub(1)?)?;
        (s.size == 0 || probe - s.addr < s.size).then_some(s)
    }
}

/// The name of the physical function: DWARF's, unless the symbol table's is a qualified
/// form of it (DWARF built with `-Cdebuginfo=line-tables-only` has only `DW_AT_name`, e.g.
/// `calls_inlined` for the symbol `crate::module::calls_inlined`).
fn physical_name(dwarf: Option<String>, sym: Option<&str>) -> Option<String> {
    match (dwarf, sym) {
        (Some(d), Some(s))
            if s.len() > d.len() + 2
                && s.ends_with(&d)
                && s[..s.len() - d.len()].ends_with("::") =>
        {
            Some(s.to_owned())
        }
        (Some(d), _) => Some(d),
        (None, s) => s.map(str::to_owned),
    }
}

/// Text symbols of one table, sorted by address, one per address (sized, global names win).
fn collect_symbols<'a>(iter: impl Iterator<Item = object::Symbol<'static, 'a>>) -> Vec<Sym> {
    let mut v: Vec<(Sym, u8)> = Vec::new();
    for s in iter {
        if s.kind() != SymbolKind::Text || s.is_undefined() || s.address() == 0 {
            continue;
        }
        let Ok(name) = s.name() else { continue };
        if name.is_empty() {
            continue;
        }
        let rank = 4 * u8::from(s.size() > 0) + 2 * u8::from(s.is_global()) + u8::from(s.is_weak());
        v.push((Sym { addr: s.address(), size: s.size(), name }, rank));
    }
    v.sort_by(|a, b| a.0.addr.cmp(&b.0.addr).then(b.1.cmp(&a.1)));
    v.dedup_by_key(|s| s.0.addr);
    v.into_iter().map(|(s, _)| s).collect()
}

/// Whether the object carries DWARF line or unit data (not just a NOBITS placeholder).
fn has_dwarf(obj: &object::File<'static>) -> bool {
    obj.section_by_name(".debug_info").and_then(|s| s.file_range()).is_some_and(|(_, len)| len > 0)
}

/// `<dir>/.build-id/xx/yyyy.debug` for a build-id of at least two bytes.
pub(crate) fn build_id_path(dir: &Path, id: &[u8]) -> Option<PathBuf> {
    let (first, rest) = id.split_first()?;
    if rest.is_empty() {
        return None;
    }
    let rest: String = rest.iter().map(|b| format!("{b:02x}")).collect();
    Some(dir.join(".build-id").join(format!("{first:02x}")).join(format!("{rest}.debug")))
}

/// Finds and maps a separate debug file with DWARF for `obj`.
fn find_separate(
    obj: &object::File<'static>,
    path: Option<&Path>,
    build_id: Option<&[u8]>,
    debug_dirs: &[PathBuf],
    stash: &mut Stash,
) -> Option<(object::File<'static>, PathBuf)> {
    let mut candidates = Vec::new();
    if let Some(id) = build_id {
        candidates.extend(debug_dirs.iter().filter_map(|d| build_id_path(d, id)));
    }
    if let (Some(path), Ok(Some((name, _crc)))) = (path, obj.gnu_debuglink()) {
        let name = Path::new(OsStr::from_bytes(name));
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if let Some(dir) = real.parent() {
            candidates.push(dir.join(name));
            candidates.push(dir.join(".debug").join(name));
            let rel = dir.strip_prefix("/").unwrap_or(dir);
            candidates.extend(debug_dirs.iter().map(|d| d.join(rel).join(name)));
        }
    }
    for c in candidates {
        if Some(c.as_path()) == path || !c.is_file() {
            continue;
        }
        let Ok(data) = stash.map(&c) else { continue };
        let Ok(f) = object::File::parse(data) else {
            continue;
        };
        if let (Some(want), Ok(Some(got))) = (build_id, f.build_id()) {
            if want != got {
                continue;
            }
        }
        if has_dwarf(&f) {
            return Some((f, c));
        }
    }
    None
}

/// The supplementary DWARF file named by `.gnu_debugaltlink` (written by `dwz`, used by
/// Debian's `-dbgsym` packages): the named path (absolute, or relative to the directory of
/// `obj_path`), else `<dir>/.build-id/xx/yyyy.debug` by its build-id.
fn load_sup(
    obj: &object::File<'static>,
    obj_path: Option<&Path>,
    debug_dirs: &[PathBuf],
    stash: &mut Stash,
) -> Option<gimli::Dwarf<Slice>> {
    let (name, id) = obj.gnu_debugaltlink().ok()??;
    let name = Path::new(OsStr::from_bytes(name));
    let mut candidates = Vec::new();
    match obj_path.and_then(Path::parent) {
        Some(dir) => candidates.push(dir.join(name)),
        None if name.is_absolute() => candidates.push(name.to_path_buf()),
        None => {}
    }
    candidates.extend(debug_dirs.iter().filter_map(|d| build_id_path(d, id)));
    for c in candidates {
        if !c.is_file() {
            continue;
        }
        let Ok(data) = stash.map(&c) else { continue };
        let Ok(f) = object::File::parse(data) else {
            continue;
        };
        if f.build_id().ok().flatten() != Some(id) {
            continue;
        }
        if let Ok(dwarf) = load_dwarf(&f, stash) {
            return Some(dwarf);
        }
    }
    None
}

/// Builds the gimli sections of `obj`, decompressing into the stash where needed.
fn load_dwarf(
    obj: &object::File<'static>,
    stash: &mut Stash,
) -> Result<gimli::Dwarf<Slice>, gimli::Error> {
    let endian = if obj.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    };
    gimli::Dwarf::load(|id: gimli::SectionId| -> Result<Slice, gimli::Error> {
        let data = match obj.section_by_name(id.name()).map(|s| s.uncompressed_data()) {
            Some(Ok(data)) => stash.cow(data),
            _ => &[],
        };
        Ok(gimli::EndianSlice::new(data, endian))
    })
}

/// The `[start, start + size)` range of the function DIE `die` that contains `probe`.
fn die_range(
    ctx: &addr2line::Context<Slice>,
    probe: u64,
    die: gimli::UnitOffset,
) -> Option<(u64, u64)> {
    let unit = ctx.find_dwarf_and_unit(probe).skip_all_loads()?;
    let entry = unit.entry(die).ok()?;
    let mut ranges = unit.die_ranges(&entry).ok()?;
    while let Ok(Some(r)) = ranges.next() {
        if r.begin <= probe && probe < r.end {
            return Some((r.begin, r.end - r.begin));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn physical_name_prefers_qualified_symbol() {
        let n = |d: Option<&str>, s: Option<&str>| physical_name(d.map(str::to_owned), s);
        assert_eq!(n(Some("f"), Some("a::b::f")).as_deref(), Some("a::b::f"));
        assert_eq!(n(Some("f"), Some("a::b::xf")).as_deref(), Some("f"));
        assert_eq!(n(Some("a::f"), Some("a::f")).as_deref(), Some("a::f"));
        assert_eq!(n(Some("bar"), Some("foo::bar(int)")).as_deref(), Some("bar"));
        assert_eq!(n(None, Some("g")).as_deref(), Some("g"));
        assert_eq!(n(None, None), None);
    }

    #[test]
    fn build_id_paths() {
        let p = build_id_path(Path::new("/usr/lib/debug"), &[0xab, 0x01, 0xff]).unwrap();
        assert_eq!(p, Path::new("/usr/lib/debug/.build-id/ab/01ff.debug"));
        assert!(build_id_path(Path::new("/d"), &[0xab]).is_none());
        assert!(build_id_path(Path::new("/d"), &[]).is_none());
    }

    #[test]
    fn missing_file_is_open_error() {
        let e = DebugInfo::load(Path::new("/nonexistent/ukasan/x.so"), &[]).unwrap_err();
        assert_eq!(e, LoadError::Open);
    }

    #[test]
    fn garbage_is_parse_error() {
        let e = DebugInfo::from_bytes(b"not an elf file at all".to_vec(), &[]).unwrap_err();
        assert_eq!(e, LoadError::Parse);
    }
}
