//! Reports in KASAN's layout (or JSON Lines), serialized, deduplicated, written whole.
//!
//! Every report is formatted into one fixed buffer under the report lock and written with a
//! single `write(2)` loop, so reports never interleave and a report is complete even if the
//! program aborts right after. The caller holds the re-entrancy guard, so whatever the
//! symbolizer allocates goes untracked to the backing allocator.

use crate::chunk::{Damage, Family, Header, Track, LEFT_RZ};
use crate::options::{Format, Options};
use crate::sys::{self, FixedBuf, SpinLock};
use core::fmt::Write;
use core::sync::atomic::{AtomicU32, Ordering};

/// Kind of finding, as printed after `BUG: KASAN: `.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// A chunk freed twice.
    DoubleFree,
    /// A pointer that is not the start of a chunk of ours.
    InvalidFree,
    /// Rust `dealloc`/`realloc` with a `Layout` other than the allocation's.
    LayoutMismatch,
    /// malloc/free vs new/delete vs new[]/delete[].
    AllocDeallocMismatch,
    /// A C++ sized or aligned `delete`/`delete[]` whose size or alignment is not the
    /// allocation's (ASan's name: the object is deleted through a pointer of another type).
    NewDeleteTypeMismatch,
    /// A redzone byte changed.
    OutOfBounds,
    /// A guarded object's guard page or slack was touched (guarded mode, at the access).
    SlabOutOfBounds,
    /// A freed object's poison changed.
    UseAfterFree,
    /// Still allocated at exit.
    MemoryLeak,
    /// A tag-check fault that is neither of the above (hw-tags mode): the memory was reused
    /// since the pointer's object lived there, or never was a heap object's (KASAN's name).
    InvalidAccess,
}

impl Kind {
    /// The name in the header line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::DoubleFree => "double-free",
            Kind::InvalidFree => "invalid-free",
            Kind::LayoutMismatch => "layout-mismatch",
            Kind::AllocDeallocMismatch => "alloc-dealloc-mismatch",
            Kind::NewDeleteTypeMismatch => "new-delete-type-mismatch",
            Kind::OutOfBounds => "out-of-bounds",
            Kind::SlabOutOfBounds => "slab-out-of-bounds",
            Kind::UseAfterFree => "use-after-free",
            Kind::MemoryLeak => "memory-leak",
            Kind::InvalidAccess => "invalid-access",
        }
    }
}

impl core::fmt::Display for Kind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the program did (the access line).
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Access {
    /// A free of `addr`.
    Free {
        /// The pointer passed.
        addr: usize,
    },
    /// A free with the wrong function.
    Mismatch {
        /// The pointer passed.
        addr: usize,
        /// How it was allocated.
        alloc: Family,
        /// How it is being freed.
        free: Family,
    },
    /// A Rust dealloc with a `Layout` that does not match.
    Layout {
        /// The pointer passed.
        addr: usize,
        /// Size given.
        size: usize,
        /// Alignment given.
        align: usize,
        /// Freeing function family.
        family: Family,
    },
    /// A C++ `delete` whose size or alignment does not match the allocation's.
    DeleteType {
        /// The pointer passed.
        addr: usize,
        /// Size given (`None`: an unsized delete).
        size: Option<usize>,
        /// Alignment given (16 or less: default-aligned).
        align: usize,
        /// Freeing function family (`operator delete` or `operator delete []`).
        family: Family,
    },
    /// A read or write that faulted (guarded mode), reported at the access.
    Fault {
        /// The faulting address.
        addr: usize,
        /// A write (else a read).
        write: bool,
        /// Access size when known.
        size: Option<usize>,
    },
    /// A read, write or free through a pointer whose tag is not its memory's (hw-tags
    /// mode), reported at the access.
    Tagged {
        /// The address (untagged).
        addr: usize,
        /// A write, a read, or `None`: a free.
        write: Option<bool>,
        /// Access size when known.
        size: Option<usize>,
        /// The pointer's tag.
        ptag: u8,
        /// The memory's tag.
        mtag: u8,
        /// The access could not be let through otherwise: this thread's tag checks are off
        /// from now on.
        checks_off: bool,
    },
    /// Bytes found modified, detected later.
    Corrupt {
        /// The modified range.
        damage: Damage,
        /// When it was detected.
        when: Found,
    },
}

/// When a write the program should not have made was found (it happened before).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Found {
    /// When the program freed the damaged object: the detection stack is its free.
    AtFree,
    /// When the freed object left the quarantine, during a free of another object.
    AtEviction,
    /// At process exit.
    AtExit,
}

impl Found {
    /// As printed after `found at` / `detected at`.
    pub fn name(self) -> &'static str {
        match self {
            Found::AtFree => "free",
            Found::AtEviction => "quarantine eviction",
            Found::AtExit => "exit",
        }
    }
}

impl core::fmt::Display for Found {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

impl Access {
    fn addr(&self) -> usize {
        match *self {
            Access::Free { addr }
            | Access::Mismatch { addr, .. }
            | Access::Layout { addr, .. }
            | Access::DeleteType { addr, .. }
            | Access::Fault { addr, .. }
            | Access::Tagged { addr, .. } => addr,
            Access::Corrupt { damage, .. } => damage.start,
        }
    }

    /// A tag-check fault of a read (`write` false) or write at `addr`.
    pub(crate) fn tagged(
        addr: usize,
        write: bool,
        size: Option<usize>,
        (ptag, mtag): (u8, u8),
        checks_off: bool,
    ) -> Access {
        Access::Tagged { addr, write: Some(write), size, ptag, mtag, checks_off }
    }

    /// A free through `ptr` (tagged) of the object at `addr` whose tag is `mtag`, not the
    /// pointer's (hw-tags mode).
    pub(crate) fn tagged_free(addr: usize, ptr: usize, mtag: u8) -> Access {
        let ptag = crate::hwtags::mte::tag_of_ptr(ptr);
        Access::Tagged { addr, write: None, size: None, ptag, mtag, checks_off: false }
    }

    /// Whether the access was a write (`None`: not a read or write).
    fn write(&self) -> Option<bool> {
        match *self {
            Access::Fault { write, .. } => Some(write),
            Access::Tagged { write, .. } => write,
            _ => None,
        }
    }
}

/// The object a report is about: a generic chunk or a guarded slot's object.
#[derive(Clone, Copy, Debug)]
pub struct Object {
    /// Start of the object (the pointer the program got).
    pub user: usize,
    /// Requested size.
    pub size: usize,
    /// Requested alignment.
    pub align: usize,
    /// Allocation track.
    pub alloc: Track,
    /// Free track (thread 0: not freed).
    pub free: Track,
    /// Bytes around the object the memory dump may read (empty: no dump).
    pub window: (usize, usize),
}

impl Object {
    /// A generic chunk: its redzones and object can be dumped.
    pub fn of(h: &Header) -> Object {
        let user = h.user();
        Object {
            user,
            size: h.size,
            align: h.align,
            alloc: h.alloc,
            free: h.free,
            window: (user - LEFT_RZ, user + h.size + h.right_rz()),
        }
    }
}

/// One finding, ready to print.
#[derive(Debug)]
pub struct Report<'a> {
    /// Kind.
    pub kind: Kind,
    /// The access line.
    pub access: Access,
    /// Thread that detected it.
    pub tid: u32,
    /// Stack where it was detected (newest first, return addresses).
    pub stack: &'a [usize],
    /// `stack[0]` is the exact faulting instruction, not a return address.
    pub exact_pc: bool,
    /// The object involved, when there is one.
    pub chunk: Option<Object>,
}

const BUF: usize = 64 << 10;
const SEEN: usize = 512;

pub(crate) struct ReportState {
    buf: FixedBuf<BUF>,
    seen: [u64; SEEN],
    nseen: usize,
    sink: crate::sink::Sink,
}

/// What [`format_job`] formats.
struct FormatJob<'a, 'r> {
    buf: &'a mut FixedBuf<BUF>,
    o: &'a Options,
    r: &'a Report<'r>,
    suppressed: bool,
}

/// Formats the report unless a suppression rule matches it (symbolizing its frames).
fn format_job(j: &mut FormatJob<'_, '_>) {
    let r = j.r;
    let mut hbuf = [0usize; stackdepot::MAX_DEPTH];
    let site = header_site(r, &mut hbuf).0;
    let late_site = || (!core::ptr::eq(site, r.stack)).then(|| suppressed_by(r.kind, site));
    if let Some(rule) = suppressed_by(r.kind, r.stack).or_else(|| late_site().flatten()) {
        crate::suppress::hit(rule, 0);
        j.suppressed = true;
        return;
    }
    match j.o.format {
        Format::Text => text(j.buf, j.o, r),
        Format::Json => json(j.buf, j.o, r),
    }
}

/// Serializes and deduplicates reports.
pub(crate) struct Reporter {
    state: SpinLock<ReportState>,
    count: AtomicU32,
    /// The process whose reports `count` counts: a child of `fork` starts from 0 (else a
    /// child that finds nothing would exit with `exitcode` for its parent's reports).
    count_pid: core::sync::atomic::AtomicI32,
}

impl Reporter {
    pub(crate) const fn new() -> Reporter {
        Reporter {
            state: SpinLock::new(ReportState {
                buf: FixedBuf::new(),
                seen: [0; SEEN],
                nseen: 0,
                sink: crate::sink::Sink::new(),
            }),
            count: AtomicU32::new(0),
            count_pid: core::sync::atomic::AtomicI32::new(0),
        }
    }

    pub(crate) fn count(&self) -> u32 {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        // Relaxed: a counter read at exit or by tests, after the reports themselves; both
        // words are written under the report lock by this process (see `bump`).
        if self.count_pid.load(Ordering::Relaxed) != pid {
            return 0;
        }
        self.count.load(Ordering::Relaxed)
    }

    /// Counts one report of this process (under the report lock).
    fn bump(&self) {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        // Relaxed: counters, serialized by the report lock the caller holds.
        if self.count_pid.load(Ordering::Relaxed) != pid {
            self.count.store(0, Ordering::Relaxed);
            self.count_pid.store(pid, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn raw_lock(&self) {
        self.state.raw_lock();
    }

    /// # Safety
    /// Held through `raw_lock`.
    pub(crate) unsafe fn force_unlock(&self) {
        // SAFETY: forwarded.
        unsafe { self.state.force_unlock() };
    }

    /// Prints a report unless an identical one was printed; applies `halt_on_error`. On the
    /// report stack (see [`crate::report_stack`]; taken before the report lock).
    pub(crate) fn emit(&self, o: &Options, r: &Report<'_>) {
        crate::report_stack::run(|| self.emit_here(o, r));
    }

    fn emit_here(&self, o: &Options, r: &Report<'_>) {
        let sig = signature(r);
        let mut st = self.state.lock();
        if st.seen[..st.nseen].contains(&sig) {
            return;
        }
        if st.nseen < SEEN {
            let n = st.nseen;
            st.seen[n] = sig;
            st.nseen += 1;
        }
        let st = &mut *st;
        st.buf.clear();
        let mut j = FormatJob { buf: &mut st.buf, o, r, suppressed: false };
        format_job(&mut j);
        if j.suppressed {
            return;
        }
        self.flush(o, st);
        // The report itself is already written.
        self.bump();
        if o.halt_on_error {
            // SAFETY: leaving the process without running handlers, as KASAN's panic would.
            unsafe { libc::_exit(o.exitcode) };
        }
    }

    /// Writes a free-form block (leak reports, statistics) under the lock.
    pub(crate) fn emit_with(&self, o: &Options, counts: bool, f: impl FnOnce(&mut FixedBuf<BUF>)) {
        crate::report_stack::run(|| self.emit_with_here(o, counts, f));
    }

    fn emit_with_here(&self, o: &Options, counts: bool, f: impl FnOnce(&mut FixedBuf<BUF>)) {
        let mut st = self.state.lock();
        let st = &mut *st;
        st.buf.clear();
        f(&mut st.buf);
        if st.buf.as_bytes().is_empty() {
            return;
        }
        self.flush(o, st);
        if counts {
            self.bump();
        }
    }

    fn flush(&self, o: &Options, st: &mut ReportState) {
        if st.buf.truncated() {
            st.buf.push_bytes(b"\n[report truncated]\n");
        }
        let fd = st.sink.fd(o);
        if fd >= 0 {
            sys::write_all(fd, st.buf.as_bytes());
        }
    }
}

/// The suppression rule (see [`crate::suppress`]) of `kind` that matches a function, source
/// file or module of `frames`. Symbolizes: under the re-entrancy guard only.
fn suppressed_by(kind: Kind, frames: &[usize]) -> Option<usize> {
    if !crate::suppress::active() {
        return None;
    }
    frames.iter().find_map(|&ra| {
        let syms = symbolize::with_global(|s| s.symbolize(ra, true));
        let by_symbols = syms.iter().find_map(|f| {
            let function = f.function.as_deref().map(str::as_bytes);
            function
                .into_iter()
                .chain(f.file.as_deref().map(str::as_bytes))
                .find_map(|t| crate::suppress::find(kind, t))
        });
        by_symbols.or_else(|| {
            let d = dl_symbol(ra.wrapping_sub(1))?;
            [d.name, d.module].into_iter().find_map(|t| crate::suppress::find(kind, t))
        })
    })
}

fn signature(r: &Report<'_>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ r.kind as u64;
    let mut mix = |v: u64| {
        h ^= v;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    for &f in r.stack.iter().take(4) {
        mix(f as u64);
    }
    if let Some(write) = r.access.write() {
        mix(u64::from(write));
    }
    if let Some(c) = r.chunk {
        mix(u64::from(c.alloc.stack.to_raw()));
        if r.stack.is_empty() || c.alloc.stack.is_none() {
            mix(c.user as u64);
        }
    } else {
        mix(r.access.addr() as u64);
    }
    h
}

const RULE: &str = "==================================================================\n";

/// The stack whose function the header names, and when a late finding was made.
///
/// A write found later than it happened (at eviction, at exit) was not made by the code that
/// found it: the header then names the function that allocated the object (out-of-bounds)
/// or freed it (use-after-free), from the chunk's track. A write found when the program
/// frees that same object names the freeing function, the top of the detection stack.
fn header_site<'a>(r: &'a Report<'a>, buf: &'a mut [usize]) -> (&'a [usize], Option<Found>) {
    let Access::Corrupt { when, .. } = r.access else {
        return (r.stack, None);
    };
    match &r.chunk {
        Some(c) if when != Found::AtFree => {
            let t = if r.kind == Kind::UseAfterFree { &c.free } else { &c.alloc };
            (track_frames(t, buf), Some(when))
        }
        _ => (r.stack, Some(when)),
    }
}

/// A track's stack from the depot, written into `buf` (empty when not available).
fn track_frames<'b>(t: &Track, buf: &'b mut [usize]) -> &'b [usize] {
    match stackdepot::fetch(t.stack, buf) {
        Some(frames) if !t.stack.is_none() => frames,
        _ => &[],
    }
}

/// `BUG: KASAN: <kind> in <function>`, or for a write found later
/// `BUG: KASAN: <kind> write in <function> (found at <when>)`.
fn header<const N: usize>(b: &mut FixedBuf<N>, o: &Options, r: &Report<'_>) {
    let mut buf = [0; stackdepot::MAX_DEPTH];
    let (site, found) = header_site(r, &mut buf);
    let what = match r.access.write() {
        Some(true) => " write",
        Some(false) => " read",
        None if found.is_some() => " write",
        None => "",
    };
    let _ = write!(b, "BUG: KASAN: {}{what} in ", r.kind);
    function_name(b, o, site, r.exact_pc && found.is_none());
    if let Some(when) = found {
        let _ = write!(b, " (found at {when})");
    }
    let _ = b.write_str("\n");
}

fn text(b: &mut FixedBuf<BUF>, o: &Options, r: &Report<'_>) {
    let _ = b.write_str(RULE);
    header(b, o, r);
    access_line(b, r);
    format_frames(b, o, r.stack, r.exact_pc);
    let _ = b.write_str("\n");
    if let Some(c) = &r.chunk {
        track(b, o, "Allocated", &c.alloc);
        if c.free.tid != 0 {
            track(b, o, "Freed", &c.free);
        }
        object(b, r, c);
        memory(b, r.access.addr(), c);
    } else {
        let _ = writeln!(
            b,
            "The buggy address 0x{:x} is not the start of any chunk of ukasan.",
            r.access.addr()
        );
    }
    module_map(b, o);
    let _ = b.write_str(RULE);
}

fn access_line<const N: usize>(b: &mut FixedBuf<N>, r: &Report<'_>) {
    let _ = match r.access {
        Access::Free { addr } => writeln!(b, "Free of addr 0x{addr:x} by thread {}", r.tid),
        Access::Mismatch { addr, alloc, free } => writeln!(
            b,
            "Free of addr 0x{addr:x} by thread {} with {}, but it was allocated with {}",
            r.tid,
            free.free_name(),
            alloc.alloc_name()
        ),
        Access::Layout { addr, size, align, family } => writeln!(
            b,
            "{} of addr 0x{addr:x} by thread {} with Layout {{ size: {size}, align: {align} }}, but it was allocated with Layout {{ size: {}, align: {} }}",
            family.free_name(),
            r.tid,
            r.chunk.map_or(0, |c| c.size),
            r.chunk.map_or(0, |c| c.align),
        ),
        Access::DeleteType { addr, size, align, family } => {
            let what = if family == Family::NewArray { "delete[]" } else { "delete" };
            let _ = write!(
                b,
                "Free of addr 0x{addr:x} by thread {} with {}: object passed to {what} has wrong type:",
                r.tid,
                family.free_name()
            );
            let (asize, aalign) = r.chunk.map_or((0, 0), |c| (c.size, c.align));
            let mut sep = "";
            if let Some(size) = size {
                let _ = write!(
                    b,
                    " size of the allocated type: {asize} bytes; size of the deallocated type: {size} bytes"
                );
                sep = ";";
            }
            if cxx_align(align) != cxx_align(aalign) {
                let _ = write!(b, "{sep} alignment of the allocated type: ");
                alignment_words(b, aalign);
                let _ = b.write_str("; alignment of the deallocated type: ");
                alignment_words(b, align);
            }
            b.write_str("\n")
        }
        Access::Fault { addr, write, size } => {
            let _ = b.write_str(if write { "Write of " } else { "Read of " });
            let _ = match size {
                Some(n) => write!(b, "size {n}"),
                None => b.write_str("unknown size"),
            };
            writeln!(b, " at addr 0x{addr:x} by thread {}", r.tid)
        }
        Access::Tagged { addr, write, size, ptag, mtag, checks_off } => {
            let tagged = crate::hwtags::mte::with_tag(addr, ptag);
            let _ = match write {
                Some(w) => {
                    let _ = b.write_str(if w { "Write of " } else { "Read of " });
                    let _ = match size {
                        Some(n) => write!(b, "size {n}"),
                        None => b.write_str("unknown size"),
                    };
                    write!(b, " at addr 0x{tagged:x}")
                }
                None => write!(b, "Free of addr 0x{tagged:x}"),
            };
            let _ = writeln!(b, " by thread {}", r.tid);
            let _ = write!(b, "Pointer tag: [{ptag:x}], memory tag: [{mtag:x}]");
            if checks_off {
                let _ = write!(b, " (the memory is another live object's: tag checks are off in thread {} from here on)", r.tid);
            }
            b.write_str("\n")
        }
        Access::Corrupt { damage, when } => {
            let _ = write!(
                b,
                "Write of unknown size at addr 0x{:x}, detected at {when} by thread {}: {} byte(s) [0x{:x}, 0x{:x}) modified:",
                damage.start,
                r.tid,
                damage.end - damage.start,
                damage.start,
                damage.end
            );
            let n = (damage.end - damage.start).min(16);
            for i in 0..n {
                // SAFETY: the damaged range lies inside a chunk the runtime owns.
                let v = unsafe { *((damage.start + i) as *const u8) };
                let _ = write!(b, " {v:02x}");
            }
            if damage.end - damage.start > n {
                let _ = b.write_str(" ...");
            }
            b.write_str("\n")
        }
    };
}

/// C++ alignments compare as `__STDCPP_DEFAULT_NEW_ALIGNMENT__` (16) at least.
pub(crate) fn cxx_align(align: usize) -> usize {
    align.max(crate::chunk::MIN_ALIGN)
}

/// An alignment in ASan's words: `default-aligned` or `N bytes`.
fn alignment_words<const N: usize>(b: &mut FixedBuf<N>, align: usize) {
    let _ = if cxx_align(align) == crate::chunk::MIN_ALIGN {
        b.write_str("default-aligned")
    } else {
        write!(b, "{align} bytes")
    };
}

fn track(b: &mut FixedBuf<BUF>, o: &Options, what: &str, t: &Track) {
    let _ = writeln!(b, "{what} by thread {}:", t.tid);
    format_stack(b, o, track_frames(t, &mut [0; stackdepot::MAX_DEPTH]));
    let _ = b.write_str("\n");
}

fn object(b: &mut FixedBuf<BUF>, r: &Report<'_>, c: &Object) {
    let (start, end) = (c.user, c.user + c.size);
    let _ = writeln!(b, "The buggy address belongs to the object at 0x{start:x}");
    let _ = writeln!(b, " which belongs to a {}-byte region [0x{start:x}, 0x{end:x})", c.size);
    let a = r.access.addr();
    let _ = if a < start {
        writeln!(b, "The buggy address is located {} bytes to the left of {}-byte region [0x{start:x}, 0x{end:x})", start - a, c.size)
    } else if a >= end {
        writeln!(b, "The buggy address is located {} bytes to the right of {}-byte region [0x{start:x}, 0x{end:x})", a - end, c.size)
    } else {
        writeln!(b, "The buggy address is located {} bytes inside of {}-byte region [0x{start:x}, 0x{end:x})", a - start, c.size)
    };
    let _ = b.write_str("\n");
}

/// Rows of 16 bytes around `addr`, clipped to the chunk's block; the row holding `addr` is
/// marked `>` and the byte under a `^`. Bytes outside the object's window (a guard page)
/// print as `..`.
fn memory(b: &mut FixedBuf<BUF>, addr: usize, c: &Object) {
    let (lo, hi) = c.window;
    if lo >= hi {
        return;
    }
    let row0 = (addr & !15).saturating_sub(32).max(lo & !15).min(hi.saturating_sub(1) & !15);
    let _ = b.write_str("Memory state around the buggy address:\n");
    let mut row = row0;
    while (row < hi || row <= addr) && row < row0 + 5 * 16 {
        let mark = if (row..row + 16).contains(&addr) { '>' } else { ' ' };
        let _ = write!(b, "{mark}0x{row:016x}:");
        for a in row..row + 16 {
            if (lo..hi).contains(&a) {
                // SAFETY: inside the chunk's redzones or object, owned by the runtime.
                let v = unsafe { *(a as *const u8) };
                let _ = write!(b, " {v:02x}");
            } else {
                let _ = b.write_str(" ..");
            }
        }
        if crate::hwtags::on() {
            // SAFETY: a granule of the object's window (the heap's space or a chunk's
            // mapping); untagged memory reads as tag 0.
            let t = unsafe { crate::hwtags::mte::memory_tag(row) };
            let _ = write!(b, "  [{t:x}]");
        }
        let _ = b.write_str("\n");
        if mark == '>' {
            let col = 1 + 18 + 1 + (addr - row) * 3;
            for _ in 0..col {
                let _ = b.write_str(" ");
            }
            let _ = b.write_str("^\n");
        }
        row += 16;
    }
}

/// Whether a (demangled) function belongs to Rust's allocator machinery or to the standard
/// library (`__rust_dealloc`, `alloc::alloc::dealloc`, `core::ptr::drop_in_place<..>`,
/// `<alloc::vec::Vec<T> as core::ops::drop::Drop>::drop`, ...): headers name the first
/// function of the program instead. Recent rustc names the allocator shims
/// `__rustc::__rust_dealloc`.
pub fn is_runtime_function(name: &str) -> bool {
    let name = name.strip_prefix("__rustc::").unwrap_or(name);
    const PREFIXES: [&str; 9] = [
        "__rust_", "__rg_", "__rdl_", "alloc::", "core::", "std::", "<alloc::", "<core::", "<std::",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Whether a source file is Rust's standard library (`alloc`, `core`, `std`, ...): as rustc's
/// distributed std records it (`/rustc/<commit>/library/...`), or built from the rust-src
/// component (`.../rustlib/src/rust/library/...`). Inlined frames are named by their bare
/// DWARF names (`dealloc`, `drop_in_place<..>`), so the file tells them apart.
fn is_runtime_file(file: &str) -> bool {
    (file.starts_with("/rustc/") && file.contains("/library/"))
        || file.contains("/rustlib/src/rust/library/")
}

/// The function name for a header: of the first frame of `frames` with a function of the
/// program (see [`is_runtime_function`] and [`is_runtime_file`]; within a frame, the
/// innermost such of its inlined functions), else of the first frame; its module and offset when nothing names it, its
/// raw address when no module holds it; `<unknown>` for an empty stack.
/// With `exact_first`, `frames[0]` is an exact instruction address (a fault), not a return
/// address.
fn function_name<const N: usize>(
    b: &mut FixedBuf<N>,
    o: &Options,
    frames: &[usize],
    exact_first: bool,
) {
    let Some(&first) = frames.first() else {
        let _ = b.write_str("<unknown>");
        return;
    };
    if !frames.iter().enumerate().any(|(i, &ra)| frame_name(b, o, ra, true, exact_first && i == 0))
    {
        frame_name(b, o, first, false, exact_first);
    }
}

/// Writes the header name of the frame at `ra` and returns true, unless `skip_runtime` and
/// every function there is runtime machinery (then writes nothing and returns false).
fn frame_name<const N: usize>(
    b: &mut FixedBuf<N>,
    o: &Options,
    ra: usize,
    skip_runtime: bool,
    exact: bool,
) -> bool {
    if o.symbolize {
        let frames = symbolize::with_global(|s| s.symbolize(ra, !exact));
        let mut named = frames
            .iter()
            .filter_map(|f| Some((f.function.as_deref()?, f.offset, f.file.as_deref())));
        if let Some(innermost) = named.clone().next() {
            let pick = if skip_runtime {
                named.find(|&(n, _, file)| {
                    !is_runtime_function(n) && !file.is_some_and(is_runtime_file)
                })
            } else {
                Some(innermost)
            };
            let Some((name, offset, _)) = pick else {
                return false;
            };
            let _ = write!(b, "{name}+0x{offset:x}");
            return true;
        }
    }
    let dl = dl_symbol(ra.wrapping_sub(usize::from(!exact)));
    if let Some(s) = dl.as_ref().filter(|s| skip_runtime && !s.name.is_empty()) {
        let name = String::from_utf8_lossy(s.name);
        if is_runtime_function(&symbolize::demangle(&name)) {
            return false;
        }
    }
    match dl {
        Some(s) => {
            let module = s.module.rsplit(|&c| c == b'/').next().unwrap_or(s.module);
            let _ = write!(b, "{}+0x{:x}", Name(module), ra - s.fbase);
        }
        None => {
            let _ = write!(b, "0x{ra:x}");
        }
    }
    true
}

/// One line per frame (and per inlined function): `#i 0xADDR in function+0xoff/0xlen
/// file:line (module+0xoff)` with `symbolize=1` (the `ukasan-symbolize` crate: DWARF, symbol
/// tables, demangling), or the symbolizer's raw form `#i [<0x...>] module+0xoff` with
/// `symbolize=0` (the report then ends with the module map for offline symbolization).
///
/// Allocates (the symbolizer): call under the re-entrancy guard only.
pub fn format_stack<const N: usize>(b: &mut FixedBuf<N>, o: &Options, frames: &[usize]) {
    format_frames(b, o, frames, false);
}

/// [`format_stack`]; with `exact_first`, `frames[0]` is an exact instruction address.
fn format_frames<const N: usize>(
    b: &mut FixedBuf<N>,
    o: &Options,
    frames: &[usize],
    exact_first: bool,
) {
    for (i, &ra) in frames.iter().enumerate() {
        if !o.symbolize {
            let _ = writeln!(b, " #{i}{}", symbolize::format_raw_frame(ra));
            continue;
        }
        let exact = exact_first && i == 0;
        let module = dl_symbol(ra.wrapping_sub(usize::from(!exact)));
        let syms = symbolize::with_global(|s| s.symbolize(ra, !exact));
        let mut named = false;
        for f in syms.iter().filter(|f| f.function.is_some()) {
            named = true;
            let _ = write!(b, " #{i} 0x{ra:x} in{}", symbolize::format_frame(f));
            if !f.inlined {
                if let Some(m) = &module {
                    let _ = write!(b, " ({}+0x{:x})", Name(m.module), ra - m.fbase);
                }
            }
            let _ = b.write_str("\n");
        }
        if named {
            continue;
        }
        let _ = write!(b, " #{i} 0x{ra:x}");
        if let Some(s) = &module {
            if s.saddr != 0 && !s.name.is_empty() {
                let _ = write!(b, " in {}+0x{:x}", Name(s.name), ra - 1 - s.saddr);
            }
            let _ = write!(b, " ({}+0x{:x})", Name(s.module), ra - s.fbase);
        }
        let _ = b.write_str("\n");
    }
    if frames.is_empty() {
        let _ = b.write_str(" (stack is not available)\n");
    }
}

/// The module map, for reports printed with `symbolize=0`.
fn module_map<const N: usize>(b: &mut FixedBuf<N>, o: &Options) {
    if !o.symbolize {
        let _ = b.write_str("Module map:\n");
        let _ = b.write_str(&symbolize::module_map());
    }
}

struct DlSym {
    name: &'static [u8],
    saddr: usize,
    module: &'static [u8],
    fbase: usize,
}

fn dl_symbol(addr: usize) -> Option<DlSym> {
    // SAFETY: Dl_info is plain data; zeroed is a valid initial value.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: dladdr only reads loader tables; `info` is a valid out-parameter.
    if unsafe { libc::dladdr(addr as *const libc::c_void, &mut info) } == 0 {
        return None;
    }
    let cstr = |p: *const libc::c_char| -> &'static [u8] {
        if p.is_null() {
            b""
        } else {
            // SAFETY: dladdr returns NUL-terminated strings owned by the loader, alive while
            // the module is loaded (for the duration of the report).
            unsafe { core::ffi::CStr::from_ptr(p) }.to_bytes()
        }
    };
    Some(DlSym {
        name: cstr(info.dli_sname),
        saddr: info.dli_saddr as usize,
        module: cstr(info.dli_fname),
        fbase: info.dli_fbase as usize,
    })
}

/// Bytes as text (lossy).
struct Name<'a>(&'a [u8]);

impl core::fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for c in self.0.utf8_chunks() {
            f.write_str(c.valid())?;
        }
        Ok(())
    }
}

/// A JSON string (escaped).
struct Json<'a>(&'a [u8]);

impl core::fmt::Display for Json<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("\"")?;
        for c in self.0.utf8_chunks() {
            for ch in c.valid().chars() {
                match ch {
                    '"' => f.write_str("\\\"")?,
                    '\\' => f.write_str("\\\\")?,
                    c if (c as u32) < 0x20 => write!(f, "\\u{:04x}", c as u32)?,
                    c => f.write_char(c)?,
                }
            }
        }
        f.write_str("\"")
    }
}

fn json_stack<const N: usize>(b: &mut FixedBuf<N>, o: &Options, frames: &[usize]) {
    let _ = b.write_str("[");
    for (i, &ra) in frames.iter().enumerate() {
        if i > 0 {
            let _ = b.write_str(",");
        }
        let _ = write!(b, "{{\"pc\":\"0x{ra:x}\"");
        let dl = dl_symbol(ra.wrapping_sub(1));
        if o.symbolize {
            let syms = symbolize::with_global(|s| s.symbolize(ra, true));
            if let Some(f) = syms.iter().find(|f| f.function.is_some()) {
                let name = f.function.as_deref().unwrap_or("");
                let _ = write!(b, ",\"function\":{}", Json(name.as_bytes()));
                if let (Some(file), Some(line)) = (&f.file, f.line) {
                    let _ = write!(b, ",\"file\":{},\"line\":{line}", Json(file.as_bytes()));
                }
            } else if let Some(s) = dl.as_ref().filter(|s| s.saddr != 0 && !s.name.is_empty()) {
                let _ = write!(b, ",\"function\":{}", Json(s.name));
            }
        }
        if let Some(s) = dl {
            let _ = write!(b, ",\"module\":{},\"offset\":\"0x{:x}\"", Json(s.module), ra - s.fbase);
        }
        let _ = b.write_str("}");
    }
    let _ = b.write_str("]");
}

fn json_track(b: &mut FixedBuf<BUF>, o: &Options, name: &str, t: &Track) {
    let _ = write!(b, ",\"{name}\":{{\"thread\":{},\"seq\":{},\"stack\":", t.tid, t.seq);
    match stackdepot::fetch(t.stack, &mut [0; stackdepot::MAX_DEPTH]) {
        Some(frames) if !t.stack.is_none() => json_stack(b, o, frames),
        _ => {
            let _ = b.write_str("null");
        }
    }
    let _ = b.write_str("}");
}

fn json(b: &mut FixedBuf<BUF>, o: &Options, r: &Report<'_>) {
    let mut f = FixedBuf::<512>::new();
    let mut buf = [0; stackdepot::MAX_DEPTH];
    let (site, found) = header_site(r, &mut buf);
    function_name(&mut f, o, site, r.exact_pc && found.is_none());
    let _ = write!(b, "{{\"kind\":\"{}\",\"function\":{}", r.kind, Json(f.as_bytes()));
    if let Some(when) = found {
        let _ = write!(b, ",\"found_at\":\"{when}\"");
    }
    let _ = write!(b, ",\"addr\":\"0x{:x}\",\"thread\":{},\"access\":", r.access.addr(), r.tid);
    let mut line = FixedBuf::<1024>::new();
    access_line(&mut line, r);
    let text = line.as_bytes();
    let _ = write!(b, "{}", Json(text.strip_suffix(b"\n").unwrap_or(text)));
    if let Some(write) = r.access.write() {
        let _ = write!(b, ",\"is_write\":{write}");
    }
    if let Access::Fault { size: Some(n), .. } | Access::Tagged { size: Some(n), .. } = r.access {
        let _ = write!(b, ",\"size\":{n}");
    }
    if let Access::Tagged { ptag, mtag, .. } = r.access {
        let _ = write!(b, ",\"pointer_tag\":{ptag},\"memory_tag\":{mtag}");
    }
    let _ = b.write_str(",\"stack\":");
    json_stack(b, o, r.stack);
    if let Some(c) = &r.chunk {
        json_track(b, o, "allocated", &c.alloc);
        if c.free.tid != 0 {
            json_track(b, o, "freed", &c.free);
        }
        let _ = write!(b, ",\"object\":{{\"addr\":\"0x{:x}\",\"size\":{}}}", c.user, c.size);
    }
    let _ = b.write_str("}\n");
}

/// Maximum distinct leak stacks reported individually.
const LEAK_GROUPS: usize = 256;

#[derive(Clone, Copy)]
struct Group {
    stack: stackdepot::Handle,
    tid: u32,
    count: usize,
    bytes: usize,
    sample: usize,
    sample_size: usize,
}

/// Reports chunks still live at exit, grouped by allocation stack, largest first; the
/// objects come from `for_each_leak` (the runtime's scan, see [`crate::leak::mark`]).
pub(crate) fn leaks(
    reporter: &Reporter,
    o: &Options,
    for_each_leak: impl FnOnce(&mut dyn FnMut(&crate::leak::Entry)) -> usize,
) {
    let mut groups = [Group {
        stack: stackdepot::Handle::NONE,
        tid: 0,
        count: 0,
        bytes: 0,
        sample: 0,
        sample_size: 0,
    }; LEAK_GROUPS];
    let mut n = 0;
    let (mut other_count, mut other_bytes, mut total_count, mut total_bytes) =
        (0usize, 0usize, 0usize, 0usize);
    let unstopped = for_each_leak(&mut |e| {
        let size = e.end - e.start;
        total_count += 1;
        total_bytes += size;
        if let Some(g) = groups[..n].iter_mut().find(|g| {
            g.stack == e.alloc.stack && (!e.alloc.stack.is_none() || g.tid == e.alloc.tid)
        }) {
            g.count += 1;
            g.bytes += size;
        } else if n < LEAK_GROUPS {
            groups[n] = Group {
                stack: e.alloc.stack,
                tid: e.alloc.tid,
                count: 1,
                bytes: size,
                sample: e.start,
                sample_size: size,
            };
            n += 1;
        } else {
            other_count += 1;
            other_bytes += size;
        }
    });
    if total_count == 0 {
        return;
    }
    let groups = &mut groups[..n];
    groups.sort_unstable_by_key(|g| core::cmp::Reverse(g.bytes));
    let counts = crate::sink::leaks_count_as_reports(o);
    let mut shown = 0;
    for g in groups.iter() {
        let mut buf = [0; stackdepot::MAX_DEPTH];
        let frames =
            stackdepot::fetch(g.stack, &mut buf).filter(|_| !g.stack.is_none()).unwrap_or(&[]);
        if let Some(rule) = suppressed_by(Kind::MemoryLeak, frames) {
            crate::suppress::hit(rule, g.bytes);
            total_count -= g.count;
            total_bytes -= g.bytes;
            continue;
        }
        shown += 1;
        if !counts {
            crate::sink::leak_reported();
        }
        reporter.emit_with(o, counts, |b| {
            if o.format == Format::Json {
                let _ = write!(
                    b,
                    "{{\"kind\":\"memory-leak\",\"bytes\":{},\"objects\":{},\"sample\":\"0x{:x}\",\"allocated\":{{\"thread\":{},\"stack\":",
                    g.bytes, g.count, g.sample, g.tid
                );
                json_stack(b, o, frames);
                let _ = b.write_str("}}\n");
                return;
            }
            let _ = b.write_str(RULE);
            let _ = b.write_str("BUG: KASAN: memory-leak in ");
            function_name(b, o, frames, false);
            let _ = writeln!(
                b,
                "\nLeak of {} byte(s) in {} object(s) still allocated at exit (e.g. 0x{:x}, {} bytes)",
                g.bytes, g.count, g.sample, g.sample_size
            );
            let _ = writeln!(b, "Allocated by thread {}:", g.tid);
            if frames.is_empty() {
                let _ = b.write_str(" (stack is not available)\n");
            } else {
                format_stack(b, o, frames);
            }
            module_map(b, o);
            let _ = b.write_str(RULE);
        });
    }
    if other_count > 0 && !counts {
        crate::sink::leak_reported();
    }
    reporter.emit_with(o, false, |b| {
        if o.format == Format::Json {
            return;
        }
        crate::suppress::used(b);
        if total_count == 0 {
            return;
        }
        let _ = write!(
            b,
            "SUMMARY: ukasan: {total_bytes} byte(s) leaked in {total_count} allocation(s) from {shown} stack(s)"
        );
        let _ = if other_count > 0 {
            writeln!(b, " and {other_bytes} byte(s) in {other_count} allocation(s) from stacks not shown")
        } else {
            writeln!(b)
        };
        if unstopped > 0 {
            let _ = writeln!(
                b,
                "ukasan: {unstopped} other thread(s) could not be stopped for the leak scan \
                 (signals blocked, or no answer): objects only they hold may be reported"
            );
        }
    });
}

/// Statistics at exit (`verbosity >= 1`).
pub(crate) fn stats(reporter: &Reporter, o: &Options) {
    let d = stackdepot::stats();
    reporter.emit_with(o, false, |b| {
        let _ = writeln!(
            b,
            "ukasan: {} report(s); stack depot: {} unique traces, {} frames, {} bytes used, {} nodes",
            reporter.count() + crate::sink::leak_reports(),
            d.unique_traces,
            d.frames_stored,
            d.bytes_used,
            d.nodes
        );
        let h = &crate::generic::heap::HEAP;
        let _ = writeln!(
            b,
            "ukasan: heap: {} KiB of slots and metadata carved, {} thread caches mapped, \
             {} KiB of free slots given back",
            h.bytes_carved() >> 10,
            h.caches_mapped(),
            h.decommitted() >> 10
        );
        if o.verbosity >= 2 {
            for c in 0..crate::generic::heap::CLASSES {
                let [free, live, quarantined, other] = h.census(c);
                if free + live + quarantined + other > 0 {
                    let _ = writeln!(
                        b,
                        "ukasan: heap class {c:2} ({:6} B): {live} live, {quarantined} quarantined, {free} free, {other} other",
                        crate::generic::heap::class_size(c)
                    );
                }
            }
        }
        let c = stacktrace::softshadow::counters();
        if c.captures > 0 {
            let _ = writeln!(
                b,
                "ukasan: stats: shadow_captures={} frames_walked={} frames_copied={} \
                 frames_patched={} trampoline_returns={} incremental_saves={} memo_hits={}",
                c.captures,
                c.frames_walked,
                c.frames_copied,
                c.frames_patched,
                c.trampoline_returns,
                c.incremental_saves,
                c.memo_hits
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_functions_are_rust_allocator_machinery_and_std() {
        for name in [
            "__rust_dealloc",
            "__rustc::__rust_dealloc",
            "__rg_dealloc",
            "__rdl_dealloc",
            "alloc::alloc::dealloc",
            "core::ptr::drop_in_place<alloc::vec::Vec<u8>>",
            "std::sys::alloc::unix::<impl core::alloc::global::GlobalAlloc for std::alloc::System>::dealloc",
            "<alloc::vec::Vec<T,A> as core::ops::drop::Drop>::drop",
            "<core::cell::RefCell<T> as core::ops::drop::Drop>::drop",
            "<std::alloc::System as core::alloc::global::GlobalAlloc>::dealloc",
        ] {
            assert!(is_runtime_function(name), "{name}");
        }
        for name in [
            "main",
            "do_free",
            "it::child::rust_free_site",
            "<myapp::Buf as core::ops::drop::Drop>::drop",
            "release_sized(void*, unsigned long)",
            "allocate_thing",
            "stdio_flush",
        ] {
            assert!(!is_runtime_function(name), "{name}");
        }
    }

    #[test]
    fn runtime_files_are_rusts_standard_library() {
        for file in [
            "/rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/alloc/src/alloc.rs",
            "/rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/core/src/ptr/mod.rs",
            "/root/.rustup/toolchains/nightly-x86_64-unknown-linux-gnu/lib/rustlib/src/rust/library/std/src/panicking.rs",
        ] {
            assert!(is_runtime_file(file), "{file}");
        }
        for file in [
            "/work/main/crates/ukasan/tests/it/child.rs",
            "/home/me/src/library/books.rs",
            "src/main.rs",
            "/rustc/notes.c",
        ] {
            assert!(!is_runtime_file(file), "{file}");
        }
    }

    #[test]
    fn found_names_read_after_found_at() {
        assert_eq!(Found::AtFree.to_string(), "free");
        assert_eq!(Found::AtEviction.to_string(), "quarantine eviction");
        assert_eq!(Found::AtExit.to_string(), "exit");
    }
}
