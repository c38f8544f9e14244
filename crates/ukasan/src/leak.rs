//! Leak detection at exit: a conservative reachability scan, as LeakSanitizer does.
//!
//! Roots: the writable segments of every loaded module (`dl_iterate_phdr`; not those of the
//! preload library, see [`skip_own_module`]), the exiting
//! thread's stack from the current stack pointer up and the mapping holding its thread
//! pointer (static TLS), the contents of raw chunks (made before init or by the runtime
//! itself), and the chunks the dynamic loader allocated (DTVs, TLS blocks; never reported). Every aligned word that points into a tracked live object (interior pointers
//! count) marks it, and marked objects are scanned in turn. What stays unmarked is leaked.
//! Live guarded objects ([`crate::guarded`]) are candidates like chunks.
//!
//! Other threads still running at exit are stopped when a first pass finds candidates
//! ([`crate::stop`]); their registers, stacks and static TLS are roots too. Limits: threads
//! that block every signal are not stopped (the report counts them), and memory mapped
//! directly with `mmap` is not scanned.
//!
//! Works in `mmap`-ed scratch arrays (no allocation) while every registry shard is locked.

use crate::chunk::{Header, Track, F_LOADER, F_RAW};

#[derive(Clone, Copy)]
pub(crate) struct Entry {
    pub start: usize,
    pub end: usize,
    /// Who allocated it.
    pub alloc: Track,
    /// 0: candidate, 1: reached, 2: root (raw or the loader's chunk).
    pub mark: u8,
}

/// Scratch memory from `mmap`.
pub(crate) struct Scratch<T> {
    ptr: *mut T,
    cap: usize,
}

impl<T: Copy> Scratch<T> {
    pub(crate) fn new(cap: usize) -> Option<Scratch<T>> {
        let bytes = cap.max(1).checked_mul(core::mem::size_of::<T>())?;
        let p = crate::sys::map(bytes, 1, false)?;
        Some(Scratch { ptr: p.cast(), cap })
    }

    /// Where the mapping starts.
    pub(crate) fn addr(&self) -> usize {
        self.ptr as usize
    }

    /// Element `i` (`i < cap`).
    #[inline]
    pub(crate) fn get(&self, i: usize) -> T {
        assert!(i < self.cap);
        // SAFETY: in bounds of the zero-initialized mapping (as `slice`).
        unsafe { self.ptr.add(i).read() }
    }

    pub(crate) fn slice(&mut self, len: usize) -> &mut [T] {
        // SAFETY: the mapping holds `cap` zero-initialized T (callers only use T for which
        // all-zero is valid); len is clamped.
        unsafe { core::slice::from_raw_parts_mut(self.ptr, len.min(self.cap)) }
    }
}

impl<T> Drop for Scratch<T> {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.cap.max(1) * core::mem::size_of::<T>()) };
    }
}

/// Marks the entries reachable from the root ranges ([`roots`], and those of the threads
/// [`crate::stop`] stopped), less `pool` (the guarded pool: its objects are entries, and its
/// guard markers fault on a read; `/proc/self/maps` merges it with a thread stack mapped
/// next to it). `entries` is sorted by `start`.
pub(crate) fn mark(
    entries: &mut [Entry],
    work: &mut [u32],
    roots: impl IntoIterator<Item = (usize, usize)>,
    pool: (usize, usize),
) {
    let mut top = 0usize;
    let filter = Granules::of(entries);
    let scan = |entries: &mut [Entry], work: &mut [u32], top: &mut usize, lo: usize, hi: usize| {
        let mut a = lo.next_multiple_of(8);
        while a + 8 <= hi {
            // SAFETY: every region passed here is mapped and readable (module segments, the
            // live stack, chunk objects owned by the runtime).
            let w = unsafe { core::ptr::read_volatile(a as *const usize) };
            // On aarch64 a pointer's top byte may hold a tag (hw-tags mode, TBI).
            let w = crate::hwtags::untag(w);
            a += 8;
            if !filter.may_hold(w) {
                continue;
            }
            if let Some(i) = find(entries, w) {
                if entries[i].mark == 0 {
                    entries[i].mark = 1;
                    if *top < work.len() {
                        work[*top] = i as u32;
                        *top += 1;
                    }
                }
            }
        }
    };
    // The scratch arrays hold the address of every chunk: a root range that contains them
    // (the maps merge the scratch mapping with a neighbour, such as the TLS mapping, when
    // `mmap` happens to place it next to one) must not be scanned there, or every chunk
    // looks reachable.
    let skip = [
        (entries.as_ptr() as usize, entries.as_ptr() as usize + core::mem::size_of_val(entries)),
        (work.as_ptr() as usize, work.as_ptr() as usize + core::mem::size_of_val(work)),
        filter.range(),
        pool,
    ];
    for r in roots {
        for (lo, hi) in without(r, skip) {
            scan(entries, work, &mut top, lo, hi);
        }
    }
    for i in 0..entries.len() {
        if entries[i].mark == 2 {
            let (s, e) = (entries[i].start, entries[i].end);
            scan(entries, work, &mut top, s, e);
        }
    }
    while top > 0 {
        top -= 1;
        let i = work[top] as usize;
        let (s, e) = (entries[i].start, entries[i].end);
        scan(entries, work, &mut top, s, e);
    }
}

/// Which 1 MiB granules of the address space may hold an entry, as a bitmap indexed by the
/// granule number modulo 2^16 (aliases only let a word through to the search): most words
/// the scan reads (small numbers, code and data pointers, zeros) are dismissed by one bit
/// test instead of a binary search over every live object.
struct Granules {
    bits: Option<Scratch<u64>>,
}

impl Granules {
    const SHIFT: u32 = 20;
    const COUNT: usize = 1 << 16;

    fn of(entries: &[Entry]) -> Granules {
        let Some(mut map) = Scratch::<u64>::new(Self::COUNT / 64) else {
            return Granules { bits: None };
        };
        let bits = map.slice(Self::COUNT / 64);
        for e in entries {
            let first = e.start >> Self::SHIFT;
            let last = e.end.max(e.start + 1).saturating_sub(1) >> Self::SHIFT;
            for k in first..=last.min(first + Self::COUNT) {
                let k = k % Self::COUNT;
                bits[k / 64] |= 1 << (k % 64);
            }
        }
        Granules { bits: Some(map) }
    }

    /// The bitmap's own bytes (not a root).
    fn range(&self) -> (usize, usize) {
        self.bits.as_ref().map_or((0, 0), |m| (m.addr(), m.addr() + Self::COUNT / 8))
    }

    #[inline]
    fn may_hold(&self, w: usize) -> bool {
        let Some(map) = &self.bits else { return true };
        let k = (w >> Self::SHIFT) % Self::COUNT;
        map.get(k / 64) & (1 << (k % 64)) != 0
    }
}

/// `r` minus the ranges of `skip` (at most four pieces, empty ones `(0, 0)`).
fn without(r: (usize, usize), mut skip: [(usize, usize); 4]) -> [(usize, usize); 5] {
    skip.sort_unstable();
    let mut out = [(0, 0); 5];
    let mut lo = r.0;
    for (i, &(s, e)) in skip.iter().enumerate() {
        let (s, e) = (s.clamp(lo, r.1.max(lo)), e.clamp(lo, r.1.max(lo)));
        if lo < s {
            out[i] = (lo, s);
        }
        lo = lo.max(e);
    }
    if lo < r.1 {
        out[4] = (lo, r.1);
    }
    out
}

/// The entry whose object contains `w` (a zero-size object matches its start).
fn find(entries: &[Entry], w: usize) -> Option<usize> {
    let i = entries.partition_point(|e| e.start <= w).checked_sub(1)?;
    let e = &entries[i];
    (w < e.end || w == e.start).then_some(i)
}

/// Builds an entry for a listed chunk.
pub(crate) fn entry(h: &Header) -> Entry {
    let start = h.user();
    // Raw chunks and the loader's chunks (TLS blocks hold program pointers) are roots.
    let mark = if h.flags & (F_RAW | F_LOADER) != 0 { 2 } else { 0 };
    Entry { start, end: start + h.size, alloc: h.alloc, mark }
}

/// The address range of the dynamic loader's loaded segments (`AT_BASE` and its program
/// headers); `(0, 0)` when unknown. Its allocations (thread DTVs and TLS blocks, kept in
/// glibc's cache of exited threads' stacks, which the scan does not reach) are the
/// loader's business, not the program's leaks.
pub(crate) fn loader_range() -> (usize, usize) {
    // SAFETY: getauxval has no preconditions.
    let base = unsafe { libc::getauxval(libc::AT_BASE) } as usize;
    if base == 0 {
        return (0, 0);
    }
    let mut range = (base, base);
    extern "C" fn cb(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the `(usize, usize)` passed below; `info` is valid during the call.
        let (r, info) = unsafe { (&mut *(data as *mut (usize, usize)), &*info) };
        if info.dlpi_addr as usize != r.0 {
            return 0;
        }
        for k in 0..info.dlpi_phnum as usize {
            // SAFETY: `dlpi_phdr` has `dlpi_phnum` entries.
            let ph = unsafe { &*info.dlpi_phdr.add(k) };
            if ph.p_type == libc::PT_LOAD {
                r.1 = r.1.max(r.0 + (ph.p_vaddr + ph.p_memsz) as usize);
            }
        }
        1
    }
    // SAFETY: `cb` matches the callback type and `range` outlives the call.
    unsafe {
        libc::dl_iterate_phdr(Some(cb), &mut range as *mut (usize, usize) as *mut libc::c_void)
    };
    range
}

/// Bytes of the static TLS area (glibc's `_dl_get_tls_static_info`, as LeakSanitizer reads
/// it), asked once at start-up; 0 when unknown.
static STATIC_TLS: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Room kept for the thread descriptor (glibc's `struct pthread`, about 2.3 KiB on x86-64)
/// on the far side of the thread pointer.
const DESCRIPTOR_ROOM: usize = 8 << 10;

/// Asks glibc for the static TLS size (at start-up, in normal context: the exit checks run
/// with the heap's locks held, where `dlsym` must not be called).
pub(crate) fn note_static_tls() {
    type Info = unsafe extern "C" fn(*mut usize, *mut usize);
    // SAFETY: dlsym with a NUL-terminated name; called at start-up, in normal context.
    let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_dl_get_tls_static_info".as_ptr()) };
    if f.is_null() {
        return;
    }
    let (mut size, mut align) = (0usize, 0usize);
    // SAFETY: glibc's `void _dl_get_tls_static_info(size_t *, size_t *)`.
    unsafe { core::mem::transmute::<*mut libc::c_void, Info>(f)(&mut size, &mut align) };
    // Relaxed: read by the exit checks of this process, long after.
    STATIC_TLS.store(size, core::sync::atomic::Ordering::Relaxed);
}

/// The static TLS area and the thread descriptor around the thread pointer `tp`, inside the
/// mapping `[lo, hi)` that holds them. Not the whole mapping: anonymous mappings merge, and
/// the runtime's own (thread caches, quarantine records) hold addresses of objects, stale
/// ones among them, which would hide leaks. The whole mapping when the size is unknown.
fn tls_window(tp: usize, lo: usize, hi: usize) -> (usize, usize) {
    // Relaxed: written at start-up.
    let size = STATIC_TLS.load(core::sync::atomic::Ordering::Relaxed);
    if size == 0 {
        return (lo, hi);
    }
    // x86-64 (TLS variant II): the blocks below the thread pointer, the descriptor above it;
    // aarch64 (variant I): the descriptor below, the blocks above.
    let (below, above) = if cfg!(target_arch = "x86_64") {
        (size, DESCRIPTOR_ROOM)
    } else {
        (DESCRIPTOR_ROOM, size)
    };
    (tp.saturating_sub(below).max(lo), tp.saturating_add(above).min(hi))
}

/// Whether the module holding this code is the runtime's own (the preload library), whose
/// writable segments are no roots: set by [`skip_own_module`].
static SKIP_OWN: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Leaves the writable segments of the module that holds this code out of the roots: for
/// the preload library, whose statics are the runtime's own (the heap's and depot's tables,
/// the stopped threads' slots, 0.4 MiB in all, most never touched). Scanning them cost most
/// of a short program's exit (a shell's: 0.6 ms of its 0.9 ms scan, faulting in untouched
/// pages) and could only hide leaks behind the runtime's stale copies of addresses. Only a
/// shared object is skipped: where the code is the program's own (`Ukasan<A>` linked in,
/// the preload crate's own test binary), the segment holds the program's statics too.
pub fn skip_own_module() {
    // Relaxed: set by the preload library's constructor, before any exit.
    SKIP_OWN.store(true, core::sync::atomic::Ordering::Relaxed);
}

/// The root ranges of the exiting thread and of the process: module segments, this
/// thread's stack from `stack_from` up (the stack pointer of the code that asked for the
/// check, so that the runtime's own frames, which overlay the frames of the program's last
/// allocations and keep stale copies of their pointers, are not taken for roots), its static
/// TLS. Asked before other threads are stopped: `dl_iterate_phdr` takes the loader's lock,
/// which a stopped thread may hold.
pub(crate) fn roots(stack_from: usize) -> impl Iterator<Item = (usize, usize)> + Clone {
    let mut out = [(0usize, 0usize); 512];
    let mut n = 0usize;
    struct Acc<'a> {
        out: &'a mut [(usize, usize)],
        n: &'a mut usize,
        /// An address of this code when its module's segments are skipped, else 0.
        own: usize,
    }
    extern "C" fn cb(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the `Acc` passed below; `info` is valid during the callback.
        let (acc, info) = unsafe { (&mut *(data as *mut Acc<'_>), &*info) };
        let bias = info.dlpi_addr as usize;
        let phdrs = || {
            (0..info.dlpi_phnum as usize).map(|k| {
                // SAFETY: `dlpi_phdr` has `dlpi_phnum` entries.
                unsafe { &*info.dlpi_phdr.add(k) }
            })
        };
        // SAFETY: `dlpi_name` is null or a NUL-terminated string (empty for the program).
        let program = info.dlpi_name.is_null() || unsafe { *info.dlpi_name } == 0;
        if acc.own != 0
            && !program
            && phdrs().any(|ph| {
                let lo = bias + ph.p_vaddr as usize;
                ph.p_type == libc::PT_LOAD && (lo..lo + ph.p_memsz as usize).contains(&acc.own)
            })
        {
            return 0;
        }
        for ph in phdrs() {
            if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_W != 0 && *acc.n < acc.out.len()
            {
                let lo = bias + ph.p_vaddr as usize;
                acc.out[*acc.n] = (lo, lo + ph.p_memsz as usize);
                *acc.n += 1;
            }
        }
        0
    }
    {
        // Relaxed: see `skip_own_module`.
        let own = if SKIP_OWN.load(core::sync::atomic::Ordering::Relaxed) {
            skip_own_module as fn() as usize
        } else {
            0
        };
        let mut acc = Acc { out: &mut out[..510], n: &mut n, own };
        // SAFETY: `cb` matches the callback type and `acc` outlives the call.
        unsafe { libc::dl_iterate_phdr(Some(cb), &mut acc as *mut Acc<'_> as *mut libc::c_void) };
    }
    let here = 0u8;
    let sp = core::hint::black_box(&here) as *const u8 as usize;
    if let Some(b) = stacktrace::bounds::current(sp) {
        // From the caller's frames up; from here if `stack_from` is not on this stack.
        let from = if b.contains(stack_from, 1) && stack_from > sp { stack_from } else { sp };
        out[n] = (from, b.hi);
        n += 1;
    }
    let tp = crate::stop::thread_pointer();
    if let Some(m) = stacktrace::maps::find_mapping(tp).filter(|m| m.read && m.write) {
        if !(m.start..m.end).contains(&sp) {
            out[n] = tls_window(tp, m.start, m.end);
            n += 1;
        }
    }
    out.into_iter().take(n)
}

/// The root ranges of another thread stopped with stack pointer `sp` and thread pointer
/// `tp`: its stack from `sp` (less the 128-byte red zone) up, to its static TLS and thread
/// descriptor when glibc placed them at the top of the same mapping, or else to the end of
/// the mapping (the main thread's `[stack]`) plus the TLS window of `tp`'s own mapping.
pub(crate) fn thread_roots(sp: usize, tp: usize) -> [(usize, usize); 2] {
    let mut out = [(0, 0); 2];
    let rw = |m: &stacktrace::maps::Mapping| m.read && m.write;
    let Some(m) = stacktrace::maps::find_mapping(sp).filter(rw) else {
        return out;
    };
    let lo = sp.saturating_sub(128).max(m.start);
    if (m.start..m.end).contains(&tp) {
        out[0] = (lo, tls_window(tp, m.start, m.end).1.max(lo));
    } else {
        out[0] = (lo, m.end);
        if let Some(t) = stacktrace::maps::find_mapping(tp).filter(rw) {
            out[1] = tls_window(tp, t.start, t.end);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_matches_interior_and_zero_size() {
        let mk = |start, end| Entry { start, end, alloc: Track::default(), mark: 0 };
        let e = [mk(100, 110), mk(200, 200), mk(300, 340)];
        assert_eq!(find(&e, 99), None);
        assert_eq!(find(&e, 100), Some(0));
        assert_eq!(find(&e, 109), Some(0));
        assert_eq!(find(&e, 110), None);
        assert_eq!(find(&e, 200), Some(1));
        assert_eq!(find(&e, 201), None);
        assert_eq!(find(&e, 339), Some(2));
    }

    #[test]
    fn granules_dismiss_only_words_far_from_every_entry() {
        let mk = |start, end| Entry { start, end, alloc: Track::default(), mark: 0 };
        let g = 1usize << Granules::SHIFT;
        let base = 0x7f00_0000_0000usize;
        // One object in granule 3, one zero-size at the start of 7, one spanning 9 and 10.
        let e = [
            mk(base + 3 * g + 64, base + 3 * g + 96),
            mk(base + 7 * g, base + 7 * g),
            mk(base + 10 * g - 8, base + 10 * g + 8),
        ];
        let f = Granules::of(&e);
        for k in [3, 7, 9, 10] {
            assert!(f.may_hold(base + k * g + 12345), "granule {k}");
        }
        for k in [0, 2, 4, 8, 11, 1000] {
            assert!(!f.may_hold(base + k * g + 12345), "granule {k}");
        }
        assert!(!f.may_hold(0) && !f.may_hold(42), "small numbers");
        // Whatever the filter says, a word inside an entry is never dismissed.
        for x in &e {
            assert!(f.may_hold(x.start) && f.may_hold(x.end.max(x.start + 1) - 1));
        }
        // Aliases pass (they go to the search), and a huge entry marks every granule.
        assert!(f.may_hold(base + (3 + Granules::COUNT) * g));
        let huge = Granules::of(&[mk(base, base + (Granules::COUNT + 5) * g)]);
        assert!((0..Granules::COUNT).all(|k| huge.may_hold(k * g)));
    }

    #[test]
    fn the_tls_root_is_the_static_area_not_the_whole_mapping() {
        let (lo, hi, tp) = (0x10_0000usize, 0x90_0000usize, 0x50_0000usize);
        STATIC_TLS.store(0x3000, core::sync::atomic::Ordering::Relaxed);
        let (a, b) = tls_window(tp, lo, hi);
        assert!(a >= lo && b <= hi && a < tp && tp < b);
        assert_eq!(b - a, 0x3000 + DESCRIPTOR_ROOM);
        // Clipped to the mapping.
        assert_eq!(tls_window(lo + 0x100, lo, hi).0, lo);
        // This process: glibc answers, with a size the thread pointer's mapping can hold.
        note_static_tls();
        assert!(STATIC_TLS.load(core::sync::atomic::Ordering::Relaxed) > 0);
        STATIC_TLS.store(0, core::sync::atomic::Ordering::Relaxed);
        assert_eq!(tls_window(tp, lo, hi), (lo, hi), "unknown size: the whole mapping");
    }

    #[test]
    fn roots_skip_the_scratch_arrays() {
        let pieces =
            |r, skip| without(r, skip).into_iter().filter(|&(lo, hi)| lo < hi).collect::<Vec<_>>();
        assert_eq!(
            pieces((0, 100), [(10, 20), (50, 60), (0, 0), (0, 0)]),
            [(0, 10), (20, 50), (60, 100)]
        );
        assert_eq!(
            pieces((0, 100), [(50, 60), (10, 20), (0, 0), (0, 0)]),
            [(0, 10), (20, 50), (60, 100)]
        );
        assert_eq!(pieces((30, 40), [(10, 20), (50, 60), (0, 0), (0, 0)]), [(30, 40)]);
        assert_eq!(pieces((0, 100), [(0, 100), (0, 0), (0, 0), (0, 0)]), []);
        assert_eq!(pieces((15, 55), [(10, 20), (50, 60), (0, 0), (0, 0)]), [(20, 50)]);
        assert_eq!(
            pieces((0, 100), [(70, 80), (10, 20), (40, 50), (0, 0)]),
            [(0, 10), (20, 40), (50, 70), (80, 100)]
        );
        assert_eq!(
            pieces((0, 100), [(70, 80), (10, 20), (90, 95), (40, 50)]),
            [(0, 10), (20, 40), (50, 70), (80, 90), (95, 100)]
        );
    }

    #[test]
    fn scratch_maps_zeroed_memory() {
        let mut s = Scratch::<u64>::new(1000).unwrap();
        assert!(s.slice(1000).iter().all(|&v| v == 0));
        s.slice(1000)[999] = 5;
        assert_eq!(s.slice(2000).len(), 1000);
    }
}
