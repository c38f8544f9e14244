//! Suppressions: `suppressions=PATH` names a file of rules for reports not to print.
//!
//! One rule per line, `kind:pattern`, as LeakSanitizer's: `leak:libfoo.so`,
//! `leak:make_cache`, `double-free:legacy_*`. `kind` is `leak` (the same as `memory-leak`)
//! or any report kind (`double-free`, `invalid-free`, `layout-mismatch`,
//! `alloc-dealloc-mismatch`, `new-delete-type-mismatch`, `out-of-bounds`,
//! `slab-out-of-bounds`, `use-after-free`). A report is suppressed when a pattern of its kind
//! matches the function name (demangled, every inlined function), the source file or the
//! module path of any frame of its stack: the allocation stack for leaks, the detection stack
//! (and for a write found late, the stack its header names) for the others.
//!
//! Patterns match anywhere in the text unless anchored: `*` is any run of characters, `^` at
//! the start anchors to the beginning, `$` at the end to the end. Blank lines and lines
//! starting with `#` are ignored. A suppressed report is not printed and does not change the
//! exit status; the leak summary lists the rules used.
//!
//! The file is read once at start-up into a fixed buffer ([`FILE_CAP`] bytes, at most
//! [`MAX_RULES`] rules); a bad line is named on stderr and skipped.

use crate::options::Lossy;
use crate::report::Kind;
use crate::sys::{self, FixedBuf};
use core::cell::UnsafeCell;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

/// Largest suppressions file read (bytes).
pub const FILE_CAP: usize = 16 << 10;
/// Most rules kept.
pub const MAX_RULES: usize = 256;

/// The kinds a rule can name, with their names in the file.
const KINDS: [(&str, Kind); 10] = [
    ("leak", Kind::MemoryLeak),
    ("memory-leak", Kind::MemoryLeak),
    ("double-free", Kind::DoubleFree),
    ("invalid-free", Kind::InvalidFree),
    ("layout-mismatch", Kind::LayoutMismatch),
    ("alloc-dealloc-mismatch", Kind::AllocDeallocMismatch),
    ("new-delete-type-mismatch", Kind::NewDeleteTypeMismatch),
    ("out-of-bounds", Kind::OutOfBounds),
    ("slab-out-of-bounds", Kind::SlabOutOfBounds),
    ("use-after-free", Kind::UseAfterFree),
];

#[derive(Clone, Copy)]
struct Rule {
    kind: Kind,
    start: u16,
    len: u16,
}

struct Rules {
    text: [u8; FILE_CAP],
    rules: [Rule; MAX_RULES],
    n: usize,
}

struct Store(UnsafeCell<Rules>);

// SAFETY: written only by `load`, once, before READY is published with Release; read only
// after an Acquire load of READY sees true.
unsafe impl Sync for Store {}

static STORE: Store = Store(UnsafeCell::new(Rules {
    text: [0; FILE_CAP],
    rules: [Rule { kind: Kind::MemoryLeak, start: 0, len: 0 }; MAX_RULES],
    n: 0,
}));
static LOADING: AtomicBool = AtomicBool::new(false);
static READY: AtomicBool = AtomicBool::new(false);
/// Reports suppressed by each rule, and their bytes (leaks).
static HITS: [AtomicU32; MAX_RULES] = [const { AtomicU32::new(0) }; MAX_RULES];
static HIT_BYTES: [AtomicUsize; MAX_RULES] = [const { AtomicUsize::new(0) }; MAX_RULES];

fn rules() -> &'static [Rule] {
    // Acquire pairs with the Release store in `load`.
    if !READY.load(Ordering::Acquire) {
        return &[];
    }
    // SAFETY: published and never written again (see `Store`).
    let r = unsafe { &*STORE.0.get() };
    &r.rules[..r.n]
}

fn pattern(r: &Rule) -> &'static [u8] {
    // SAFETY: only called on rules returned by `rules`, after READY.
    let t = unsafe { &(*STORE.0.get()).text };
    &t[r.start as usize..][..r.len as usize]
}

/// Reads the rules from `path` (once per process); each problem goes to `err` as a line.
#[cold]
pub(crate) fn load(path: &[u8], err: &mut dyn FnMut(&str)) {
    // AcqRel: one loader; a second call is ignored.
    if LOADING.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: the LOADING flag makes this the only writer, and nobody reads before READY.
    let st = unsafe { &mut *STORE.0.get() };
    let mut line = FixedBuf::<512>::new();
    let len = match sys::read_file(path, &mut st.text) {
        Ok(n) => n,
        Err(e) => {
            let _ = match e {
                sys::ReadError::TooLarge => write!(
                    line,
                    "ukasan: suppressions file '{}' ignored: larger than {FILE_CAP} bytes",
                    Lossy(path)
                ),
                e => write!(line, "ukasan: cannot read suppressions file '{}': {e}", Lossy(path)),
            };
            err(line.as_str());
            return;
        }
    };
    st.n = parse(&st.text[..len], &mut st.rules, &mut |lineno, msg| {
        line.clear();
        let _ = write!(line, "ukasan: suppressions file '{}' line {lineno}: {msg}", Lossy(path));
        err(line.as_str());
    });
    // Release pairs with the Acquire load in `rules`.
    READY.store(true, Ordering::Release);
}

/// Parses `text` into `out`; returns the number of rules. Offsets index `text`.
fn parse(text: &[u8], out: &mut [Rule; MAX_RULES], err: &mut dyn FnMut(usize, &str)) -> usize {
    let mut n = 0;
    let mut off = 0;
    for (i, raw) in text.split(|&c| c == b'\n').enumerate() {
        let start = off;
        off += raw.len() + 1;
        let lead = raw.iter().take_while(|c| c.is_ascii_whitespace()).count();
        let l = raw.trim_ascii();
        if l.is_empty() || l[0] == b'#' {
            continue;
        }
        let Some(colon) = l.iter().position(|&c| c == b':') else {
            err(i + 1, "not kind:pattern (e.g. leak:my_function)");
            continue;
        };
        let (kind, pat) = (l[..colon].trim_ascii(), &l[colon + 1..]);
        let Some(&(_, kind)) = KINDS.iter().find(|(name, _)| name.as_bytes() == kind) else {
            err(
                i + 1,
                "unknown kind (accepted: leak, memory-leak, double-free, invalid-free, \
                 layout-mismatch, alloc-dealloc-mismatch, new-delete-type-mismatch, \
                 out-of-bounds, slab-out-of-bounds, use-after-free)",
            );
            continue;
        };
        let pat_lead = pat.iter().take_while(|c| c.is_ascii_whitespace()).count();
        let pat = pat.trim_ascii();
        if pat.is_empty() {
            err(i + 1, "empty pattern");
            continue;
        }
        if n == MAX_RULES {
            err(i + 1, "too many rules (at most 256): the rest are ignored");
            break;
        }
        let pstart = start + lead + colon + 1 + pat_lead;
        out[n] = Rule { kind, start: pstart as u16, len: pat.len() as u16 };
        n += 1;
    }
    n
}

/// Whether any rule is loaded (when not, nothing needs symbolizing for suppressions).
pub(crate) fn active() -> bool {
    !rules().is_empty()
}

/// The first rule of `kind` that matches `text` (a function, file or module name).
pub(crate) fn find(kind: Kind, text: &[u8]) -> Option<usize> {
    rules().iter().position(|r| r.kind == kind && matches(pattern(r), text))
}

/// Counts one report (of `bytes`, for leaks) suppressed by rule `i`.
pub(crate) fn hit(i: usize, bytes: usize) {
    // Relaxed: counters, read at exit.
    HITS[i].fetch_add(1, Ordering::Relaxed);
    HIT_BYTES[i].fetch_add(bytes, Ordering::Relaxed);
}

/// Writes LeakSanitizer's "Suppressions used" block for the rules that suppressed anything
/// (nothing when none did).
pub(crate) fn used<const N: usize>(b: &mut FixedBuf<N>) {
    let rs = rules();
    // Relaxed: counters, read at exit.
    if !rs.iter().enumerate().any(|(i, _)| HITS[i].load(Ordering::Relaxed) > 0) {
        return;
    }
    let _ = b.write_str("Suppressions used:\n  count      bytes template\n");
    for (i, r) in rs.iter().enumerate() {
        let hits = HITS[i].load(Ordering::Relaxed);
        if hits > 0 {
            let name = KINDS.iter().find(|(_, k)| *k == r.kind).map_or("", |(n, _)| n);
            let bytes = HIT_BYTES[i].load(Ordering::Relaxed);
            let _ = writeln!(b, "{hits:>7} {bytes:>10} {name}:{}", Lossy(pattern(r)));
        }
    }
}

/// LeakSanitizer's template match: `*` any run, `^` anchors the start, `$` the end;
/// otherwise the pattern may match anywhere in `text`.
pub fn matches(pattern: &[u8], text: &[u8]) -> bool {
    let (anchor_start, p) = match pattern.strip_prefix(b"^") {
        Some(p) => (true, p),
        None => (false, pattern),
    };
    let (anchor_end, p) = match p.strip_suffix(b"$") {
        Some(p) => (true, p),
        None => (false, p),
    };
    glob(p, text, !anchor_start, !anchor_end)
}

/// `*` glob of `p` against `t`, with an implicit `*` before (`open_start`) and after
/// (`open_end`). Iterative, with one backtrack point: linear space, no recursion.
fn glob(p: &[u8], t: &[u8], open_start: bool, open_end: bool) -> bool {
    let (mut pi, mut ti) = (0usize, 0usize);
    // The last `*` seen (pattern index after it, text index it matched up to).
    let mut star: Option<(usize, usize)> = open_start.then_some((0, 0));
    loop {
        if pi < p.len() && p[pi] == b'*' {
            pi += 1;
            star = Some((pi, ti));
            continue;
        }
        if pi == p.len() && (ti == t.len() || open_end) {
            return true;
        }
        if pi < p.len() && ti < t.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
            continue;
        }
        match star {
            Some((sp, st)) if st < t.len() => {
                star = Some((sp, st + 1));
                pi = sp;
                ti = st + 1;
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_like_leak_sanitizers() {
        assert!(matches(b"make_cache", b"my::make_cache_now"));
        assert!(matches(b"^my::", b"my::make_cache"));
        assert!(!matches(b"^make", b"my::make_cache"));
        assert!(matches(b"cache$", b"my::make_cache"));
        assert!(!matches(b"cache$", b"my::make_cache_now"));
        assert!(matches(b"^my*cache$", b"my::make_cache"));
        assert!(matches(b"libfoo*.so", b"/usr/lib/libfoo-1.2.so.3"));
        assert!(!matches(b"^a*b$", b"aXbY"));
        assert!(matches(b"^a*b*$", b"aXbY"));
        assert!(matches(b"*", b""));
        assert!(matches(b"^$", b""));
        assert!(!matches(b"^$", b"x"));
        assert!(matches(b"a**b", b"zzaqqbzz"));
        // No exponential blow-up on adversarial input.
        let t = [b'a'; 4000];
        assert!(!matches(b"^*a*a*a*a*a*a*a*a*b$", &t));
    }

    #[test]
    fn parse_keeps_rules_and_names_bad_lines() {
        let text = b"# comment\n\nleak:foo\n  double-free: bar* \nbogus\nheap:x\nleak:\n";
        let mut out = [Rule { kind: Kind::MemoryLeak, start: 0, len: 0 }; MAX_RULES];
        let mut errs = Vec::new();
        let n = parse(text, &mut out, &mut |l, m| errs.push(format!("{l}: {m}")));
        assert_eq!(n, 2);
        let pat = |r: &Rule| &text[r.start as usize..][..r.len as usize];
        assert_eq!((out[0].kind, pat(&out[0])), (Kind::MemoryLeak, &b"foo"[..]));
        assert_eq!((out[1].kind, pat(&out[1])), (Kind::DoubleFree, &b"bar*"[..]));
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs[0].starts_with("5: not kind:pattern"), "{errs:?}");
        assert!(errs[1].starts_with("6: unknown kind (accepted: leak,"), "{errs:?}");
        assert_eq!(errs[2], "7: empty pattern");
    }

    #[test]
    fn every_kind_has_a_name() {
        for (name, kind) in KINDS {
            assert!(name == "leak" || name == kind.name(), "{name}");
        }
    }
}
