//! Options: `UKASAN_OPTIONS="key=value:key=value"`, parsed without allocating.
//!
//! The same syntax configures [`crate::Ukasan::with_options`]; the environment is applied
//! after the constructor string, so it wins. An unknown key or a bad value prints one line
//! naming it and the accepted values, and that key keeps its default.
//!
//! `options_file=PATH` applies the options written in a file at that point of the list
//! (later items win over it): the same `key=value` items, separated by `:`, `,`, spaces or
//! newlines, with `#` starting a comment to the end of the line; at most
//! [`MAX_OPTIONS_FILE`] bytes, read once at start-up into a buffer on the stack. A file may
//! name another, [`MAX_NESTING`] deep.

use crate::sys::{self, write_all, FixedBuf};
use core::fmt::Write;

/// Which stack-capture backend records alloc and free stacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stacks {
    /// The default chain of `stacktrace` (hardware/software shadow stack, then frame pointers,
    /// then DWARF).
    Auto,
    /// The software shadow stack (frame pointers where it cannot serve).
    Shadow,
    /// The frame-pointer walk.
    Fp,
    /// The in-process DWARF unwinder.
    Dwarf,
    /// libgcc's `_Unwind_Backtrace` (not signal-safe).
    Libgcc,
    /// No stacks: tracks carry only the thread and the sequence number.
    Off,
}

/// Output format of reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// KASAN's text layout.
    Text,
    /// One JSON object per line.
    Json,
}

/// Detection mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// Redzones, poison and quarantine for every object; bad writes found late.
    Generic,
    /// Sampled objects in guard-page slots: bad reads and writes fault at once
    /// (see [`crate::guarded`]); the others as in generic mode.
    Guarded,
    /// Every heap object tagged with MTE (arm64): bad reads and writes fault at once
    /// (see [`crate::hwtags`]); generic mode's checks too.
    HwTags,
}

/// Where a guarded object sits in its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Placement {
    /// Against the right guard page: an overflow faults at once (an underflow is found by
    /// the canaries at free, if it writes).
    Right,
    /// Against the left guard page: an underflow faults at once.
    Left,
    /// Left or right by a per-thread coin, per object (GWP-ASan).
    Random,
}

/// Largest `guarded_slots` accepted.
pub const MAX_GUARDED_SLOTS: usize = 1 << 16;

/// Longest `log_path` or `suppressions` path accepted (bytes).
pub const MAX_PATH: usize = 240;
/// Largest `options_file` read (bytes).
pub const MAX_OPTIONS_FILE: usize = 4096;
/// How deep `options_file` may name another `options_file`.
pub const MAX_NESTING: usize = 3;
/// Deepest stack recorded.
pub const MAX_DEPTH: usize = 256;

/// Every option of the runtime, with its value.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// `stacks`: capture backend.
    pub stacks: Stacks,
    /// `depth`: frames per stack, 1..=256 (default 64).
    pub depth: usize,
    /// `quarantine_size_mb`: byte budget of freed objects kept poisoned (default 64 MiB).
    pub quarantine_bytes: usize,
    /// `redzone`: minimum redzone on each side in bytes, 16..=4096, rounded up to 16.
    pub redzone: usize,
    /// `halt_on_error`: exit after the first report.
    pub halt_on_error: bool,
    /// `exitcode`: exit status when a report was printed and the program would exit 0.
    pub exitcode: i32,
    /// `leak_exitcode`: exit status when only leak reports were printed and the program
    /// would exit 0; 0 leaves the status alone (`None`: the same as `exitcode`).
    pub leak_exitcode: Option<i32>,
    /// `log_path`: reports go to `<log_path>.<pid>` instead of stderr (empty: stderr).
    pub log_path: [u8; MAX_PATH],
    /// Length of `log_path`.
    pub log_path_len: usize,
    /// `report_format`: `text` or `json`.
    pub format: Format,
    /// `detect_leaks`: `None` leaves the mode's default (on for LD_PRELOAD, off for GlobalAlloc).
    pub detect_leaks: Option<bool>,
    /// `verbosity`: 0 quiet, 1 a start line and statistics at exit, 2 more.
    pub verbosity: u8,
    /// `symbolize`: names in reports (0: raw `module+offset` only).
    pub symbolize: bool,
    /// `depot`: save stacks in the stack depot (0: capture and drop; tracks say
    /// "stack is not available").
    pub depot: bool,
    /// `depot_size_mb`: the stack depot's budget, 1..=1024 MiB (default 64); once it is
    /// full, new stacks are not saved.
    pub depot_bytes: usize,
    /// `heap_region_mb`: address space the heap reserves per size class, a power of two
    /// 16..=4096 MiB (default 4096), as log2 of the bytes; less is tried when the system
    /// refuses. A class whose region is full maps further objects on their own.
    pub heap_region_log2: u32,
    /// `mode`: `generic` (default), `guarded` or `hw-tags`.
    pub mode: Mode,
    /// `guarded_slots`: guard-page slots in the guarded pool, 1..=65536 (default 256).
    pub guarded_slots: usize,
    /// `sample_rate`: guard about one allocation in N, 1..=1000000 (default 1000; 1 guards
    /// every allocation while slots last).
    pub sample_rate: u32,
    /// `guarded_placement`: `right` (default), `left` or `random` (see [`Placement`]).
    pub placement: Placement,
    /// `guarded_markers`: guard the pool with the kernel's guard markers
    /// (`MADV_GUARD_INSTALL`, Linux 6.13) where it has them (1, default), or always with
    /// `mprotect` (0).
    pub guarded_markers: bool,
    /// `suppressions`: a file of `kind:pattern` lines naming reports not to print (see
    /// [`crate::suppress`]; empty: none).
    pub suppressions: [u8; MAX_PATH],
    /// Length of `suppressions`.
    pub suppressions_len: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Every accepted key (for the error line, and for front ends that check keys: `ukasan run`).
pub const KEYS: &[&str] = &[
    "stacks",
    "depth",
    "quarantine_size_mb",
    "redzone",
    "halt_on_error",
    "exitcode",
    "log_path",
    "report_format",
    "detect_leaks",
    "verbosity",
    "symbolize",
    "depot",
    "depot_size_mb",
    "heap_region_mb",
    "mode",
    "guarded_slots",
    "sample_rate",
    "guarded_placement",
    "guarded_markers",
    "leak_exitcode",
    "suppressions",
    "options_file",
];

/// [`KEYS`] as one comma-separated list.
struct KeyList;

impl core::fmt::Display for KeyList {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, k) in KEYS.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(k)?;
        }
        Ok(())
    }
}

impl Options {
    /// The defaults.
    pub const DEFAULT: Options = Options {
        stacks: Stacks::Auto,
        depth: 64,
        quarantine_bytes: 64 << 20,
        redzone: 16,
        halt_on_error: false,
        exitcode: 1,
        log_path: [0; MAX_PATH],
        log_path_len: 0,
        format: Format::Text,
        detect_leaks: None,
        verbosity: 0,
        symbolize: true,
        depot: true,
        depot_bytes: stackdepot::DEFAULT_BUDGET,
        heap_region_log2: 32,
        mode: Mode::Generic,
        guarded_slots: 256,
        sample_rate: 1000,
        placement: Placement::Right,
        guarded_markers: true,
        leak_exitcode: None,
        suppressions: [0; MAX_PATH],
        suppressions_len: 0,
    };

    /// `log_path` as bytes (empty: stderr).
    pub fn log_path(&self) -> &[u8] {
        &self.log_path[..self.log_path_len]
    }

    /// `suppressions` as bytes (empty: none).
    pub fn suppressions(&self) -> &[u8] {
        &self.suppressions[..self.suppressions_len]
    }

    /// The exit status leak reports ask for (`leak_exitcode`, else `exitcode`).
    pub fn leak_exitcode(&self) -> i32 {
        self.leak_exitcode.unwrap_or(self.exitcode)
    }

    /// Applies `key=value:key=value` (also `,` or whitespace separated; `options_file=PATH`
    /// applies a file's items in place). Each problem is passed to `err` as one finished
    /// line; the key keeps its previous value.
    pub fn apply(&mut self, spec: &[u8], err: &mut dyn FnMut(&str)) {
        self.apply_nested(spec, err, 0);
    }

    fn apply_nested(&mut self, spec: &[u8], err: &mut dyn FnMut(&str), depth: usize) {
        let sep = |c: &u8| matches!(c, b':' | b',' | b' ' | b'\n' | b'\t' | b'\r');
        for item in spec.split(sep) {
            if item.is_empty() {
                continue;
            }
            if let Some(path) = item.strip_prefix(b"options_file=") {
                self.apply_file(path, err, depth);
                continue;
            }
            let mut line = FixedBuf::<512>::new();
            let Some(eq) = item.iter().position(|&c| c == b'=') else {
                // A NUL is a bad value for every key: the error gives the accepted values
                // (on a copy, so nothing is set whatever happens).
                let mut probe = *self;
                let _ = match probe.set(item, b"\0") {
                    Err("") => write!(
                        line,
                        "ukasan: unknown option '{}' ignored (accepted: {KeyList})",
                        Lossy(item)
                    ),
                    Err(accepted) => write!(
                        line,
                        "ukasan: option '{0}' has no value (write {0}=<value>, accepted: {accepted})",
                        Lossy(item)
                    ),
                    Ok(()) => write!(line, "ukasan: option '{0}' has no value", Lossy(item)),
                };
                err(line.as_str());
                continue;
            };
            let (key, value) = (&item[..eq], &item[eq + 1..]);
            if let Err(accepted) = self.set(key, value) {
                let _ = if accepted.is_empty() {
                    write!(
                        line,
                        "ukasan: unknown option '{}' ignored (accepted: {KeyList})",
                        Lossy(key)
                    )
                } else {
                    write!(
                        line,
                        "ukasan: bad value '{}' for option '{}' ignored (accepted: {accepted})",
                        Lossy(value),
                        Lossy(key)
                    )
                };
                err(line.as_str());
            }
        }
    }

    /// Applies the options in the file at `path` (see the module docs).
    #[cold]
    fn apply_file(&mut self, path: &[u8], err: &mut dyn FnMut(&str), depth: usize) {
        let mut line = FixedBuf::<512>::new();
        if path.is_empty() {
            let _ = write!(line, "ukasan: option 'options_file' has no value (accepted: a path)");
            err(line.as_str());
            return;
        }
        if depth >= MAX_NESTING {
            let _ = write!(
                line,
                "ukasan: options_file '{}' ignored: files name each other more than {MAX_NESTING} deep",
                Lossy(path)
            );
            err(line.as_str());
            return;
        }
        let mut buf = [0u8; MAX_OPTIONS_FILE];
        match sys::read_file(path, &mut buf) {
            Ok(n) => {
                let text = &mut buf[..n];
                strip_comments(text);
                self.apply_nested(text, err, depth + 1);
            }
            Err(e) => {
                let _ = match e {
                    sys::ReadError::TooLarge => write!(
                        line,
                        "ukasan: options_file '{}' ignored: larger than {MAX_OPTIONS_FILE} bytes",
                        Lossy(path)
                    ),
                    e => write!(line, "ukasan: cannot read options_file '{}': {e}", Lossy(path)),
                };
                err(line.as_str());
            }
        }
    }

    /// Sets one key; `Err(accepted values)` for a bad value, `Err("")` for an unknown key.
    fn set(&mut self, key: &[u8], v: &[u8]) -> Result<(), &'static str> {
        const BOOL: &str = "0, 1, true, false";
        match key {
            b"stacks" => {
                self.stacks = match v {
                    b"auto" => Stacks::Auto,
                    b"shadow" => Stacks::Shadow,
                    b"fp" => Stacks::Fp,
                    b"dwarf" => Stacks::Dwarf,
                    b"libgcc" => Stacks::Libgcc,
                    b"off" => Stacks::Off,
                    _ => return Err("auto, shadow, fp, dwarf, libgcc, off"),
                }
            }
            b"depth" => {
                self.depth = parse_num(v)
                    .filter(|d| (1..=MAX_DEPTH as u64).contains(d))
                    .ok_or("an integer 1..=256")? as usize
            }
            b"quarantine_size_mb" => {
                self.quarantine_bytes = parse_num(v)
                    .filter(|&m| m <= 1 << 20)
                    .ok_or("an integer number of MiB, 0..=1048576")?
                    as usize
                    * (1 << 20)
            }
            b"redzone" => {
                let r = parse_num(v).filter(|r| (1..=4096).contains(r)).ok_or("16..=4096 bytes")?;
                self.redzone = (r as usize).next_multiple_of(16);
            }
            b"halt_on_error" => self.halt_on_error = parse_bool(v).ok_or(BOOL)?,
            b"exitcode" => {
                self.exitcode =
                    parse_num(v).filter(|&c| c <= 255).ok_or("an integer 0..=255")? as i32
            }
            b"leak_exitcode" => {
                self.leak_exitcode = Some(
                    parse_num(v)
                        .filter(|&c| c <= 255)
                        .ok_or("an integer 0..=255 (0: leaks leave the exit status alone)")?
                        as i32,
                )
            }
            b"log_path" => {
                if v.len() > MAX_PATH || v.contains(&0) {
                    return Err("a path of at most 240 bytes");
                }
                self.log_path[..v.len()].copy_from_slice(v);
                self.log_path_len = v.len();
            }
            b"suppressions" => {
                if v.is_empty() || v.len() > MAX_PATH || v.contains(&0) {
                    return Err("the path of a suppressions file, at most 240 bytes");
                }
                self.suppressions[..v.len()].copy_from_slice(v);
                self.suppressions_len = v.len();
            }
            b"options_file" => return Err("a path (of a file of key=value items)"),
            b"report_format" => {
                self.format = match v {
                    b"text" => Format::Text,
                    b"json" => Format::Json,
                    _ => return Err("text, json"),
                }
            }
            b"detect_leaks" => self.detect_leaks = Some(parse_bool(v).ok_or(BOOL)?),
            b"verbosity" => self.verbosity = parse_num(v).filter(|&n| n <= 9).ok_or("0..=9")? as u8,
            b"symbolize" => self.symbolize = parse_bool(v).ok_or(BOOL)?,
            b"depot" => self.depot = parse_bool(v).ok_or(BOOL)?,
            b"depot_size_mb" => {
                self.depot_bytes = parse_num(v)
                    .filter(|m| (1..=(stackdepot::MAX_BUDGET >> 20) as u64).contains(m))
                    .ok_or("an integer number of MiB, 1..=1024")?
                    as usize
                    * (1 << 20)
            }
            b"heap_region_mb" => {
                self.heap_region_log2 = parse_num(v)
                    .filter(|m| m.is_power_of_two() && (16..=4096).contains(m))
                    .ok_or("a power of two number of MiB, 16..=4096")?
                    .trailing_zeros()
                    + 20
            }
            b"mode" => {
                self.mode = match v {
                    b"generic" => Mode::Generic,
                    b"guarded" => Mode::Guarded,
                    b"hw-tags" => Mode::HwTags,
                    _ => return Err("generic, guarded, hw-tags"),
                }
            }
            b"guarded_slots" => {
                self.guarded_slots = parse_num(v)
                    .filter(|n| (1..=MAX_GUARDED_SLOTS as u64).contains(n))
                    .ok_or("an integer 1..=65536")? as usize
            }
            b"sample_rate" => {
                self.sample_rate = parse_num(v)
                    .filter(|n| (1..=1_000_000).contains(n))
                    .ok_or("an integer 1..=1000000 (1: every allocation)")?
                    as u32
            }
            b"guarded_markers" => self.guarded_markers = parse_bool(v).ok_or(BOOL)?,
            b"guarded_placement" => {
                self.placement = match v {
                    b"right" => Placement::Right,
                    b"left" => Placement::Left,
                    b"random" => Placement::Random,
                    _ => return Err("right, left, random"),
                }
            }
            _ => return Err(""),
        }
        Ok(())
    }

    /// Applies a constructor string and then `UKASAN_OPTIONS`, reporting problems on stderr.
    pub fn load(spec: &[u8]) -> Options {
        let mut o = Options::DEFAULT;
        let mut err = |line: &str| {
            write_all(2, line.as_bytes());
            write_all(2, b"\n");
        };
        o.apply(spec, &mut err);
        if let Some(env) = getenv(b"UKASAN_OPTIONS\0") {
            o.apply(env, &mut err);
        }
        o
    }
}

/// For the fuzz target `options` and its regression inputs (not an API): applies `spec` to
/// the defaults and panics if a problem line is not one `ukasan: ` line or an option left its
/// documented range.
#[doc(hidden)]
pub fn check_invariants_for_fuzzing(spec: &[u8]) -> Options {
    let mut o = Options::DEFAULT;
    o.apply(spec, &mut |line| {
        assert!(line.starts_with("ukasan: ") && !line.contains('\n'), "{line:?}");
    });
    assert!((1..=MAX_DEPTH).contains(&o.depth), "depth {}", o.depth);
    assert!(
        o.redzone.is_multiple_of(16) && (16..=4096).contains(&o.redzone),
        "redzone {}",
        o.redzone
    );
    assert!(o.quarantine_bytes <= 1 << 40);
    assert!(
        (0..=255).contains(&o.exitcode) && o.leak_exitcode.is_none_or(|c| (0..=255).contains(&c))
    );
    assert!(o.log_path_len <= MAX_PATH && o.suppressions_len <= MAX_PATH);
    assert!(!o.log_path().contains(&0) && !o.suppressions().contains(&0));
    assert!(o.verbosity <= 9);
    assert!((1..=MAX_GUARDED_SLOTS).contains(&o.guarded_slots));
    assert!((1..=1_000_000).contains(&o.sample_rate));
    assert!((1 << 20..=stackdepot::MAX_BUDGET).contains(&o.depot_bytes));
    o
}

/// Blanks `#` comments (to the end of their line) so that only items remain.
fn strip_comments(text: &mut [u8]) {
    let mut in_comment = false;
    for c in text.iter_mut() {
        match *c {
            b'\n' => in_comment = false,
            b'#' => {
                in_comment = true;
                *c = b' ';
            }
            _ if in_comment => *c = b' ',
            _ => {}
        }
    }
}

/// Reads an environment variable without allocating (`getenv` returns a pointer into the
/// environment block).
pub fn getenv(name_nul: &[u8]) -> Option<&'static [u8]> {
    debug_assert_eq!(name_nul.last(), Some(&0));
    // SAFETY: `name_nul` is NUL-terminated; getenv reads the environment without allocating.
    let p = unsafe { libc::getenv(name_nul.as_ptr().cast()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: getenv returned a NUL-terminated string that lives as long as the environment
    // entry; the runtime reads it once at start-up.
    Some(unsafe { core::ffi::CStr::from_ptr(p) }.to_bytes())
}

fn parse_num(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 12 {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0')))
}

fn parse_bool(v: &[u8]) -> Option<bool> {
    match v {
        b"1" | b"true" | b"yes" => Some(true),
        b"0" | b"false" | b"no" => Some(false),
        _ => None,
    }
}

/// Displays bytes as text, replacing what is not UTF-8.
pub(crate) struct Lossy<'a>(pub(crate) &'a [u8]);

impl core::fmt::Display for Lossy<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            if !chunk.invalid().is_empty() {
                f.write_str("\u{fffd}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> (Options, Vec<String>) {
        let mut o = Options::DEFAULT;
        let mut errs = Vec::new();
        o.apply(s.as_bytes(), &mut |l| errs.push(l.to_string()));
        (o, errs)
    }

    #[test]
    fn parses_every_key() {
        let (o, errs) = parse(
            "stacks=fp:depth=8:quarantine_size_mb=2:redzone=20:halt_on_error=1:exitcode=23:\
             log_path=/tmp/x:report_format=json:detect_leaks=0:verbosity=2:symbolize=0:depot=0:\
             depot_size_mb=3:mode=guarded:guarded_slots=7:sample_rate=1:guarded_placement=left:guarded_markers=0",
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(o.stacks, Stacks::Fp);
        assert_eq!(o.depth, 8);
        assert_eq!(o.quarantine_bytes, 2 << 20);
        assert_eq!(o.redzone, 32);
        assert!(o.halt_on_error);
        assert_eq!(o.exitcode, 23);
        assert_eq!(o.log_path(), b"/tmp/x");
        assert_eq!(o.format, Format::Json);
        assert_eq!(o.detect_leaks, Some(false));
        assert_eq!(o.verbosity, 2);
        assert!(!o.symbolize && !o.depot);
        assert_eq!(o.depot_bytes, 3 << 20);
        assert_eq!((o.mode, o.guarded_slots, o.sample_rate), (Mode::Guarded, 7, 1));
        assert_eq!(o.placement, Placement::Left);
        assert!(!o.guarded_markers);
    }

    #[test]
    fn guarded_options_are_bounded_and_named() {
        let (o, errs) = parse(
            "mode=kfence:guarded_slots=0:sample_rate=0:sample_rate=2000000:guarded_placement=up",
        );
        assert_eq!(errs.len(), 5, "{errs:?}");
        assert_eq!(
            errs[0],
            "ukasan: bad value 'kfence' for option 'mode' ignored (accepted: generic, guarded, hw-tags)"
        );
        assert!(
            errs[1].contains("'0' for option 'guarded_slots'") && errs[1].contains("1..=65536")
        );
        assert!(
            errs[2].contains("'0' for option 'sample_rate'") && errs[2].contains("1..=1000000")
        );
        assert!(errs[3].contains("'2000000' for option 'sample_rate'"));
        assert_eq!(
            errs[4],
            "ukasan: bad value 'up' for option 'guarded_placement' ignored (accepted: right, left, random)"
        );
        assert_eq!((o.mode, o.guarded_slots, o.sample_rate), (Mode::Generic, 256, 1000));
        assert_eq!(o.placement, Placement::Right);
    }

    #[test]
    fn heap_region_mb_is_a_bounded_power_of_two() {
        assert_eq!(Options::DEFAULT.heap_region_log2, 32);
        let (o, errs) = parse("heap_region_mb=256");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(o.heap_region_log2, 28);
        let (o, errs) = parse("heap_region_mb=8:heap_region_mb=8192:heap_region_mb=300");
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs.iter().all(|e| e.contains("a power of two number of MiB, 16..=4096")),
            "{errs:?}"
        );
        assert_eq!(o.heap_region_log2, 32);
    }

    #[test]
    fn every_key_is_listed_and_depot_size_mb_is_bounded() {
        for key in
            KEYS.iter().filter(|&&k| !["log_path", "suppressions", "options_file"].contains(&k))
        {
            let (_, errs) = parse(&format!("{key}=?"));
            assert!(
                errs.len() == 1 && errs[0].contains("bad value"),
                "{key} is listed but not parsed: {errs:?}"
            );
        }
        let (o, errs) = parse("depot_size_mb=0:depot_size_mb=1025");
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].contains("'0' for option 'depot_size_mb'") && errs[0].contains("1..=1024"));
        assert_eq!(o.depot_bytes, stackdepot::DEFAULT_BUDGET);
        let (o, errs) = parse("depot_size_mb=1024");
        assert!(errs.is_empty());
        assert_eq!(o.depot_bytes, stackdepot::MAX_BUDGET);
    }

    #[test]
    fn unknown_key_and_bad_value_name_themselves_and_keep_defaults() {
        let (o, errs) = parse("stackz=fp:depth=0:stacks=frame:verbosity=3");
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].contains("unknown option 'stackz'")
                && errs[0].contains("(accepted: stacks, depth, quarantine_size_mb, ")
                && errs[0].contains(", sample_rate, guarded_placement, guarded_markers, leak_exitcode, suppressions, options_file)")
        );
        assert!(errs[1].contains("'0' for option 'depth'") && errs[1].contains("1..=256"));
        assert!(errs[2].contains("'frame'") && errs[2].contains("libgcc"));
        assert_eq!(o.depth, 64);
        assert_eq!(o.stacks, Stacks::Auto);
        assert_eq!(o.verbosity, 3);
    }

    #[test]
    fn missing_value_is_reported_with_the_accepted_values() {
        let (o, errs) = parse("halt_on_error:log_path:bogus");
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert_eq!(
            errs[0],
            "ukasan: option 'halt_on_error' has no value \
             (write halt_on_error=<value>, accepted: 0, 1, true, false)"
        );
        assert!(errs[1].contains("write log_path=<value>, accepted: a path"), "{errs:?}");
        assert!(errs[2].contains("unknown option 'bogus'"), "{errs:?}");
        assert!(!o.halt_on_error && o.log_path().is_empty());
    }
}
