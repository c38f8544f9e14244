//! Which loaded object contains a code address, and where its `.eh_frame_hdr` and
//! `.eh_frame` are.
//!
//! First choice: glibc's `_dl_find_object` (glibc >= 2.35), lock-free and documented
//! MT-Safe, AS-Safe, AC-Safe in the glibc manual; it also sees `dlopen`ed objects at once.
//! It is looked up with `dlsym` from an `.init_array` constructor, so the crate loads on older
//! glibc and no capture (maybe in a signal handler) ever calls `dlsym`. Fallback: a snapshot
//! of `dl_iterate_phdr`, refreshed only when its `dlpi_adds`/`dlpi_subs` counters changed,
//! at most once per capture, never in signal context (`dl_iterate_phdr` takes the loader's
//! lock).
//!
//! # Signal safety
//! [`find`] is async-signal-safe when `_dl_find_object` exists, and with `may_refresh ==
//! false` otherwise; the snapshot is a seqlock of atomics, its writer a try-lock that never
//! waits.

use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// The unwind tables of one loaded object. The slices borrow the object's mapping: valid
/// until it is `dlclose`d (unwinding through an object being unloaded is undefined, as for
/// every in-process unwinder).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Module {
    /// `.eh_frame_hdr` (the `PT_GNU_EH_FRAME` segment).
    pub hdr: &'static [u8],
    /// From the start of `.eh_frame` to the end of the `PT_LOAD` segment that holds it.
    pub eh_frame: &'static [u8],
}

/// Why a module lookup failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Miss {
    /// No object or no unwind tables for this address: a stable answer, cacheable.
    NotFound,
    /// The fallback snapshot was busy or stale: try again on a later capture.
    Transient,
    /// Parsing needs more stack than the running stack has left ([`super::MISS_STACK`]):
    /// refused, try again on a later capture.
    LowStack,
}

#[repr(C)]
struct DlFindObject {
    flags: u64,
    map_start: *mut c_void,
    map_end: *mut c_void,
    link_map: *mut c_void,
    eh_frame: *mut c_void,
    #[cfg(not(target_arch = "x86_64"))]
    eh_dbase: *mut c_void,
    reserved: [u64; 7],
}

type DlFindObjectFn = unsafe extern "C" fn(*mut c_void, *mut DlFindObject) -> c_int;

/// 0 = not yet looked up, 1 = absent, else the function.
static DL_FIND_OBJECT: AtomicUsize = AtomicUsize::new(0);

/// Looks `_dl_find_object` up. Not signal-safe (`dlsym`): runs from `.init_array`.
fn resolve() -> usize {
    // SAFETY: a NUL-terminated name; dlsym has no other preconditions.
    let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_dl_find_object".as_ptr()) } as usize;
    let v = if f == 0 { 1 } else { f };
    // Release/Acquire: nothing but the word itself is published; kept symmetric with `load`.
    DL_FIND_OBJECT.store(v, Ordering::Release);
    v
}

extern "C" fn init() {
    resolve();
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

/// `_dl_find_object`, if this glibc has it (`None` also if the constructor has not run).
#[inline]
fn dl_find_object() -> Option<DlFindObjectFn> {
    // Acquire: pairs with the Release store in `resolve`.
    match DL_FIND_OBJECT.load(Ordering::Acquire) {
        0 | 1 => None,
        // SAFETY: the word is the address dlsym gave for `_dl_find_object`, whose C
        // prototype is `int (void *, struct dl_find_object *)`.
        f => Some(unsafe { core::mem::transmute::<usize, DlFindObjectFn>(f) }),
    }
}

/// Whether `_dl_find_object` is available (resolving it now if the constructor did not
/// run). Not signal-safe on its first call in that case.
pub(crate) fn has_dl_find_object() -> bool {
    // Acquire: pairs with the Release store in `resolve`.
    let v = match DL_FIND_OBJECT.load(Ordering::Acquire) {
        0 => resolve(),
        v => v,
    };
    v != 1
}

/// Finds the object containing `pc` and its unwind tables.
///
/// `may_refresh`: the fallback may call `dl_iterate_phdr` (not signal-safe) when the
/// snapshot is stale. Callers pass it once per capture and not in signal context.
pub(crate) fn find(pc: usize, may_refresh: &mut bool) -> Result<Module, Miss> {
    match dl_find_object() {
        Some(f) => find_dl(f, pc),
        None => match find_snapshot(pc, may_refresh) {
            // Before the constructor looked `_dl_find_object` up (another constructor that
            // allocates runs first), the snapshot may just not be taken yet: not an answer to
            // cache.
            // Acquire: pairs with the Release store in `resolve`.
            Err(Miss::NotFound) if DL_FIND_OBJECT.load(Ordering::Acquire) == 0 => {
                Err(Miss::Transient)
            }
            r => r,
        },
    }
}

fn find_dl(f: DlFindObjectFn, pc: usize) -> Result<Module, Miss> {
    // SAFETY: all-zero is a valid `DlFindObject` (integers and null pointers).
    let mut r: DlFindObject = unsafe { core::mem::zeroed() };
    // SAFETY: `f` is glibc's `_dl_find_object`, `r` a writable result of the layout its
    // header declares for this target.
    if unsafe { f(pc as *mut c_void, &mut r) } != 0 || r.eh_frame.is_null() {
        return Err(Miss::NotFound);
    }
    // SAFETY: `link_map` points to the object's live `struct link_map`, whose first public
    // field is `l_addr` (the load bias).
    let bias = unsafe { *(r.link_map as *const usize) };
    let (start, end) = (r.map_start as usize, r.map_end as usize);
    // The program headers: a shared object's first mapping starts with its ELF header. The
    // main program's `dlfo_map_start` may be the start of its text segment instead (glibc
    // 2.36 here, depending on the link layout): its headers are also at `AT_PHDR`. The
    // `eh_frame` check below rejects headers of another object.
    let phdrs = elf_phdrs(start, end).or_else(main_program_phdrs).ok_or(Miss::NotFound)?;
    let m = from_phdrs(bias, phdrs).ok_or(Miss::NotFound)?;
    if !core::ptr::eq(m.hdr.as_ptr(), r.eh_frame as *const u8) {
        return Err(Miss::NotFound);
    }
    Ok(m)
}

/// The program headers of the object mapped at `[start, end)`, read from its ELF header.
/// The main program's program headers, from the auxiliary vector (async-signal-safe).
fn main_program_phdrs() -> Option<&'static [libc::Elf64_Phdr]> {
    // SAFETY: getauxval has no preconditions.
    let (at, n) = unsafe { (libc::getauxval(libc::AT_PHDR), libc::getauxval(libc::AT_PHNUM)) };
    if at == 0 || n == 0 || at & 7 != 0 {
        return None;
    }
    // SAFETY: the kernel's `AT_PHDR` points at the main program's `AT_PHNUM` program
    // headers, mapped for the process's life.
    Some(unsafe { core::slice::from_raw_parts(at as *const libc::Elf64_Phdr, n as usize) })
}

fn elf_phdrs(start: usize, end: usize) -> Option<&'static [libc::Elf64_Phdr]> {
    const EHDR: usize = core::mem::size_of::<libc::Elf64_Ehdr>();
    if start & 7 != 0 || end.checked_sub(start)? < EHDR {
        return None;
    }
    // SAFETY: `[start, start + EHDR)` is inside the object's first mapping, readable while
    // the object is loaded, and 8-aligned.
    let eh = unsafe { &*(start as *const libc::Elf64_Ehdr) };
    if eh.e_ident[..4] != *b"\x7fELF"
        || usize::from(eh.e_phentsize) != core::mem::size_of::<libc::Elf64_Phdr>()
    {
        return None;
    }
    let at = start.checked_add(eh.e_phoff as usize)?;
    let len = usize::from(eh.e_phnum) * core::mem::size_of::<libc::Elf64_Phdr>();
    if at & 7 != 0 || at.checked_add(len)? > end {
        return None;
    }
    // SAFETY: the headers lie inside the object's mapping (checked above), aligned.
    Some(unsafe { core::slice::from_raw_parts(at as *const libc::Elf64_Phdr, eh.e_phnum.into()) })
}

/// Unwind tables from program headers and the load bias.
fn from_phdrs(bias: usize, phdrs: &[libc::Elf64_Phdr]) -> Option<Module> {
    let gnu = phdrs.iter().find(|p| p.p_type == libc::PT_GNU_EH_FRAME)?;
    let hdr_at = bias.wrapping_add(gnu.p_vaddr as usize);
    let hdr_len = gnu.p_memsz as usize;
    if hdr_len < 4 || !in_load(bias, phdrs, hdr_at, hdr_len) {
        return None;
    }
    // SAFETY: `PT_GNU_EH_FRAME` lies inside a loaded `PT_LOAD` segment (checked above).
    let hdr: &'static [u8] = unsafe { core::slice::from_raw_parts(hdr_at as *const u8, hdr_len) };
    let bases = gimli::BaseAddresses::default().set_eh_frame_hdr(hdr_at as u64);
    let parsed = gimli::EhFrameHdr::new(hdr, gimli::NativeEndian).parse(&bases, 8).ok()?;
    let eh_at = parsed.eh_frame_ptr().direct().ok()? as usize;
    let seg = phdrs.iter().find(|p| {
        let lo = bias.wrapping_add(p.p_vaddr as usize);
        p.p_type == libc::PT_LOAD && lo <= eh_at && eh_at < lo.wrapping_add(p.p_memsz as usize)
    })?;
    let eh_end = bias.wrapping_add(seg.p_vaddr.wrapping_add(seg.p_memsz) as usize);
    // SAFETY: `[eh_at, eh_end)` is the tail of a loaded `PT_LOAD` segment.
    let eh_frame = unsafe { core::slice::from_raw_parts(eh_at as *const u8, eh_end - eh_at) };
    Some(Module { hdr, eh_frame })
}

fn in_load(bias: usize, phdrs: &[libc::Elf64_Phdr], at: usize, len: usize) -> bool {
    phdrs.iter().any(|p| {
        let lo = bias.wrapping_add(p.p_vaddr as usize);
        p.p_type == libc::PT_LOAD
            && lo <= at
            && at.checked_add(len).is_some_and(|e| e <= lo.wrapping_add(p.p_memsz as usize))
    })
}

// ---- Fallback: a dl_iterate_phdr snapshot behind a seqlock ----

const MAX_OBJECTS: usize = 256;

/// One object: its address range, load bias and program headers.
struct Entry {
    lo: AtomicUsize,
    hi: AtomicUsize,
    bias: AtomicUsize,
    phdr: AtomicUsize,
    phnum: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)] // only used as an array initializer
const EMPTY: Entry = Entry {
    lo: AtomicUsize::new(0),
    hi: AtomicUsize::new(0),
    bias: AtomicUsize::new(0),
    phdr: AtomicUsize::new(0),
    phnum: AtomicUsize::new(0),
};

static SNAPSHOT: [Entry; MAX_OBJECTS] = [EMPTY; MAX_OBJECTS];
/// Entries in use.
static COUNT: AtomicUsize = AtomicUsize::new(0);
/// Seqlock: odd while a refresh writes.
static SEQ: AtomicU64 = AtomicU64::new(0);
/// `dlpi_adds`/`dlpi_subs` when the snapshot was taken (`u64::MAX`: never).
static ADDS: AtomicU64 = AtomicU64::new(u64::MAX);
static SUBS: AtomicU64 = AtomicU64::new(u64::MAX);
/// Writer try-lock.
static WRITER: AtomicBool = AtomicBool::new(false);

fn find_snapshot(pc: usize, may_refresh: &mut bool) -> Result<Module, Miss> {
    if core::mem::take(may_refresh) {
        refresh();
    }
    for _ in 0..4 {
        // Acquire: pairs with the Release increment that ends a refresh.
        let s0 = SEQ.load(Ordering::Acquire);
        if s0 % 2 == 1 {
            core::hint::spin_loop();
            continue;
        }
        let mut found = None;
        // Relaxed entry reads: validated by the SEQ re-check below.
        let n = COUNT.load(Ordering::Relaxed).min(MAX_OBJECTS);
        for e in &SNAPSHOT[..n] {
            if e.lo.load(Ordering::Relaxed) <= pc && pc < e.hi.load(Ordering::Relaxed) {
                found = Some((
                    e.bias.load(Ordering::Relaxed),
                    e.phdr.load(Ordering::Relaxed),
                    e.phnum.load(Ordering::Relaxed),
                ));
                break;
            }
        }
        // Acquire fence: orders the relaxed entry reads before the SEQ re-read (seqlock).
        core::sync::atomic::fence(Ordering::Acquire);
        if SEQ.load(Ordering::Relaxed) != s0 {
            continue;
        }
        let (bias, phdr, phnum) = found.ok_or(Miss::NotFound)?;
        // SAFETY: `phdr`/`phnum` came from dl_iterate_phdr for an object still loaded
        // (the caller unwinds through its code).
        let phdrs = unsafe { core::slice::from_raw_parts(phdr as *const libc::Elf64_Phdr, phnum) };
        return from_phdrs(bias, phdrs).ok_or(Miss::NotFound);
    }
    Err(Miss::Transient)
}

/// Retakes the snapshot if objects were added or removed since the last one.
#[cold]
#[inline(never)]
fn refresh() {
    // Acquire: pairs with the Release that frees the writer lock below.
    if WRITER.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        return; // another thread refreshes; its snapshot will do
    }
    let mut st = Refresh { n: 0, first: true, unchanged: false };
    // SAFETY: `collect` matches the callback type and `st` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(collect), &mut st as *mut Refresh as *mut c_void) };
    if !st.unchanged && !st.first {
        // Relaxed: published by the SEQ Release below.
        COUNT.store(st.n, Ordering::Relaxed);
        // Release: ends the write; pairs with readers' Acquire load of SEQ.
        SEQ.fetch_add(1, Ordering::Release);
    }
    // Release: pairs with the Acquire of the next writer's compare_exchange.
    WRITER.store(false, Ordering::Release);
}

struct Refresh {
    n: usize,
    first: bool,
    unchanged: bool,
}

unsafe extern "C" fn collect(
    info: *mut libc::dl_phdr_info,
    size: usize,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: `arg` is the `Refresh` passed by `refresh`, not otherwise borrowed meanwhile;
    // `info` is valid for `size` bytes during the callback.
    let (st, info) = unsafe { (&mut *(arg as *mut Refresh), &*info) };
    if core::mem::take(&mut st.first) {
        if size < core::mem::offset_of!(libc::dl_phdr_info, dlpi_subs) + 8 {
            // No counters: refresh every time we are asked to.
        } else if ADDS.load(Ordering::Relaxed) == info.dlpi_adds
            && SUBS.load(Ordering::Relaxed) == info.dlpi_subs
        {
            // Relaxed: only the writer (holding WRITER) touches ADDS/SUBS.
            st.unchanged = true;
            return 1;
        } else {
            ADDS.store(info.dlpi_adds, Ordering::Relaxed);
            SUBS.store(info.dlpi_subs, Ordering::Relaxed);
        }
        // Relaxed + fence: the odd SEQ must be visible before any entry write (seqlock).
        SEQ.fetch_add(1, Ordering::Relaxed);
        core::sync::atomic::fence(Ordering::Release);
    }
    if st.n >= MAX_OBJECTS || info.dlpi_phdr.is_null() {
        return 0;
    }
    // SAFETY: dl_iterate_phdr guarantees `dlpi_phnum` headers at `dlpi_phdr`.
    let phdrs = unsafe { core::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum.into()) };
    let bias = info.dlpi_addr as usize;
    let (mut lo, mut hi) = (usize::MAX, 0);
    for p in phdrs.iter().filter(|p| p.p_type == libc::PT_LOAD) {
        lo = lo.min(bias.wrapping_add(p.p_vaddr as usize));
        hi = hi.max(bias.wrapping_add(p.p_vaddr.wrapping_add(p.p_memsz) as usize));
    }
    if lo < hi {
        let e = &SNAPSHOT[st.n];
        // Relaxed: inside the seqlock write section.
        e.lo.store(lo, Ordering::Relaxed);
        e.hi.store(hi, Ordering::Relaxed);
        e.bias.store(bias, Ordering::Relaxed);
        e.phdr.store(info.dlpi_phdr as usize, Ordering::Relaxed);
        e.phnum.store(info.dlpi_phnum.into(), Ordering::Relaxed);
        st.n += 1;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn here() -> usize {
        here as *const () as usize
    }

    #[test]
    fn the_main_programs_headers_come_from_the_auxiliary_vector_too() {
        // What `find_dl` falls back to when `dlfo_map_start` is not the ELF header: the same
        // unwind tables as the lookup finds for this (main) program's code.
        let phdrs = main_program_phdrs().expect("AT_PHDR");
        // SAFETY: getauxval has no preconditions.
        let phdr_at = unsafe { libc::getauxval(libc::AT_PHDR) } as usize;
        let self_phdr = phdrs.iter().find(|p| p.p_type == libc::PT_PHDR).expect("PT_PHDR");
        let bias = phdr_at - self_phdr.p_vaddr as usize;
        let m = from_phdrs(bias, phdrs).expect("unwind tables from AT_PHDR");
        let found = find(here(), &mut true).expect("this code's object");
        assert_eq!(m.hdr.as_ptr(), found.hdr.as_ptr());
        assert_eq!(m.eh_frame.as_ptr(), found.eh_frame.as_ptr());
    }

    #[test]
    fn the_load_time_constructor_resolved_dl_find_object() {
        // Nothing in this test binary calls `has_dl_find_object` before `main` runs tests,
        // so a nonzero word here comes from the `.init_array` constructor (or a parallel test
        // that already resolved it lazily: then this proves less, never a false failure).
        // Acquire: pairs with the Release store in `resolve`.
        assert_ne!(DL_FIND_OBJECT.load(Ordering::Acquire), 0);
    }

    #[test]
    fn both_lookups_agree_on_own_code_and_libc() {
        assert!(has_dl_find_object(), "this machine has glibc >= 2.35");
        let f = dl_find_object().unwrap();
        for pc in [here(), libc::qsort as *const () as usize, libc::getpid as *const () as usize] {
            let a = find_dl(f, pc).unwrap();
            let mut refresh = true;
            let b = find_snapshot(pc, &mut refresh).unwrap();
            assert!(!refresh, "the flag is consumed");
            assert_eq!(a.hdr.as_ptr(), b.hdr.as_ptr());
            assert_eq!(a.hdr.len(), b.hdr.len());
            assert_eq!(a.eh_frame.as_ptr(), b.eh_frame.as_ptr());
            assert_eq!(a.eh_frame.len(), b.eh_frame.len());
            assert!(a.eh_frame.len() > 16);
        }
        assert_eq!(find_dl(f, 4096).unwrap_err(), Miss::NotFound);
        assert_eq!(find_snapshot(4096, &mut false).unwrap_err(), Miss::NotFound);
    }

    #[test]
    fn unchanged_counters_skip_the_rewrite() {
        // A parallel test may be taking the first snapshot (then `refresh` returns at once):
        // go on once a refresh has finished with no writer left.
        let s = loop {
            refresh();
            // Acquire: pairs with the Release that frees the writer lock in `refresh`.
            if !WRITER.load(Ordering::Acquire) {
                // Acquire: pairs with refresh's Release.
                break SEQ.load(Ordering::Acquire);
            }
            std::thread::yield_now();
        };
        refresh();
        // Other tests may dlopen in parallel, but nothing here does: the snapshot stands.
        assert_eq!(SEQ.load(Ordering::Acquire), s);
        assert_eq!(s % 2, 0);
    }
}
