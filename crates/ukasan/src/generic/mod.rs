//! Generic mode (KASAN's `generic.c`): every object gets redzones and, when freed, poison and
//! a stay in the quarantine; damage is found by checking those bytes at free, at quarantine
//! eviction and at exit.
//!
//! Objects of up to [`heap::MAX_SLOT`] bytes (with their redzone) and alignments up to
//! [`heap::MAX_ALIGN`] live in the size-class heap ([`heap`]); larger ones are chunks mapped
//! on their own ([`crate::chunk`], through the runtime). Per slot:
//!
//! - **while live**: 16 bytes of metadata ([`heap::Meta`]) out of line; the gap after the
//!   object, at least `redzone` bytes, is filled with [`REDZONE`];
//! - **once freed**: the object is filled with [`POISON`] and the free track is written into
//!   its body as a 16-byte record with a check word derived from the track and the slot
//!   address, at the end of the object (two adjacent copies for objects of 32 bytes or
//!   more). A write over one copy is found byte for byte against the other; only when every
//!   copy is damaged is the track lost (and the records' ranges reported);
//! - **large objects in the quarantine** (at least [`crate::zap::ZAP_MIN`] bytes): the
//!   whole pages inside the object before its free track are given back to the system
//!   instead of poisoned ([`crate::zap`]); only the partial pages at its ends are poisoned;
//! - **checks**: a word at a time; the bytes before an object (the end of the previous slot)
//!   are its left redzone, see [`heap`].
//!
//! Every runtime in the process shares the heap and owns its objects (an index in the
//! metadata) and its quarantine ([`quarantine`]).

pub mod heap;
pub mod quarantine;

use crate::bytes::{all, fill};
use crate::chunk::{damage, join, Damage, Family, Track, POISON, REDZONE};
use crate::hwtags;
use crate::leak::Entry;
use crate::options::Options;
use crate::report::{Access, Found, Kind, Object};
use crate::runtime::{Expect, Runtime};
use crate::sys::prefetch;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicPtr, Ordering};
use heap::{class_for_aligned, class_size, state, Loc, Meta, HEAP, M_LOADER, M_ZAPPED, TAIL};
use stacktrace::Regs;

/// What a quarantined slot holds of memory, as the quarantine's budget counts it: the slot
/// and its metadata.
const META_BYTES: usize = core::mem::size_of::<Meta>();

/// Runtimes that can use the heap in one process.
pub const MAX_RUNTIMES: usize = 8;

static RUNTIMES: [AtomicPtr<Runtime>; MAX_RUNTIMES] =
    [const { AtomicPtr::new(null_mut()) }; MAX_RUNTIMES];

/// Sets up the heap (once per process) and gives `rt` an index; `None` when the heap is not
/// available or the table is full (the runtime then maps every object on its own).
pub(crate) fn register(rt: &'static Runtime, o: &Options) -> Option<u8> {
    if !HEAP.init(o.heap_region_log2) {
        return None;
    }
    for (i, r) in RUNTIMES.iter().enumerate() {
        // AcqRel: publishes the runtime to `publish` on other threads.
        if r.compare_exchange(
            null_mut(),
            rt as *const Runtime as *mut Runtime,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_ok()
        {
            return Some(i as u8);
        }
    }
    None
}

fn runtime(i: usize) -> Option<&'static Runtime> {
    // Acquire pairs with the AcqRel publication in `register`.
    let p = RUNTIMES.get(i)?.load(Ordering::Acquire);
    // SAFETY: registered runtimes live for the whole process (`Runtime::init`'s contract).
    (!p.is_null()).then(|| unsafe { &*p })
}

/// Whether `p` lies in the heap's space.
#[inline]
pub(crate) fn contains(p: usize) -> bool {
    let (lo, hi) = HEAP.bounds();
    lo != 0 && (lo..hi).contains(&hwtags::untag(p))
}

/// Allocates from the heap; `None` when no class serves the request or its region is full
/// (the caller maps the object on its own).
#[inline]
#[allow(clippy::too_many_arguments)]
pub(crate) fn alloc(
    rt: &Runtime,
    o: &Options,
    owner: u8,
    size: usize,
    align: usize,
    family: Family,
    zero: bool,
    regs: &Regs,
    loader: bool,
) -> Option<*mut u8> {
    if size > u32::MAX as usize {
        return None;
    }
    let c = class_for_aligned(size.checked_add(o.redzone)?, align.max(16))?;
    let slot = HEAP.alloc(c)?;
    let cs = class_size(c);
    let index = index_of(c, slot);
    let m = HEAP.meta(c, index);
    // SAFETY: a free slot handed to us by the heap: `cs` bytes we own; the gap (at least the
    // redzone) follows the object inside the slot.
    unsafe { fill(slot + size, cs - size, REDZONE) };
    let tag = if hwtags::on() {
        // SAFETY: the slot is ours, not handed out yet; the space is taggable.
        unsafe { hwtags::tag_new(Loc { class: c, index, slot }, m, size) }
    } else {
        0
    };
    let t = rt.track(o, regs);
    let bits = family as u8 | if loader { M_LOADER } else { 0 } | tag << 4;
    // Relaxed: published by the Release store of LIVE below.
    m.bits.store(bits, Ordering::Relaxed);
    m.align_log.store(align.max(1).trailing_zeros() as u8, Ordering::Relaxed);
    m.owner.store(owner, Ordering::Relaxed);
    m.size.store(size as u32, Ordering::Relaxed);
    m.tid.store(t.tid, Ordering::Relaxed);
    m.stack.store(t.stack.to_raw(), Ordering::Relaxed);
    if zero {
        // SAFETY: the object's bytes lie in the slot.
        unsafe { core::ptr::write_bytes(slot as *mut u8, 0, size) };
    }
    m.set(state::LIVE);
    Some(hwtags::mte::with_tag(slot, tag) as *mut u8)
}

#[inline]
fn index_of(c: usize, slot: usize) -> usize {
    heap::index(slot - HEAP.region(c), c)
}

/// Where the free track records of an object of `size` bytes go: (offset, copies). The
/// records end the object, 8-aligned (its start stays poison, where most stale writes land);
/// objects of 32 bytes or more keep two adjacent copies; smaller than 16 bytes, the one
/// record runs into the gap.
#[inline]
fn fm_span(size: usize) -> (usize, usize) {
    match size {
        0..16 => (0, 1),
        16..32 => ((size - 16) & !7, 1),
        _ => (((size - 16) & !7) - 16, 2),
    }
}

/// The whole pages inside a freed object of `size` bytes at `slot` that its stay in the
/// quarantine gives back to the system ([`crate::zap`]): from the first page boundary in the
/// object to the last one before its free track records.
#[inline]
fn zap_range(slot: usize, size: usize) -> Option<(usize, usize)> {
    crate::zap::inner_pages(size, slot, slot + fm_span(size).0)
}

/// The zapped pages of quarantined slot `s` (object of `size` bytes with metadata `m`).
#[inline]
fn zapped(s: usize, size: usize, m: &Meta) -> Option<(usize, usize)> {
    // Relaxed: written while the slot was busy, published by its state.
    (m.bits.load(Ordering::Relaxed) & M_ZAPPED != 0).then(|| zap_range(s, size)).flatten()
}

/// The poisoned ranges of quarantined slot `s`: its body but the free track records and,
/// when `zap` is some, the pages given back.
fn poisoned_parts(s: usize, size: usize, zap: Option<(usize, usize)>) -> [(usize, usize); 3] {
    let (off, n) = fm_span(size);
    let tail = (s + off + 16 * n, s + size);
    match zap {
        Some((lo, hi)) => [(s, lo), (hi, s + off), tail],
        None => [(s, s + off), tail, (0, 0)],
    }
}

#[inline]
fn fm_check(w0: u64, slot: usize) -> u64 {
    (w0 ^ slot as u64 ^ 0x6b61_7361_6e5f_6672).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5a5a_5a5a
}

/// The 16 bytes of a free track record for `t` in the slot at `slot`.
#[inline]
fn fm_words(slot: usize, t: Track) -> [u64; 2] {
    let w0 = t.tid as u64 | (t.stack.to_raw() as u64) << 32;
    [w0, fm_check(w0, slot)]
}

/// Writes the free track into a freed object's body (one or two copies).
///
/// # Safety
/// The slot is ours (busy) and holds `size` requested bytes.
#[inline]
unsafe fn fm_write(slot: usize, size: usize, t: Track) {
    let w = fm_words(slot, t);
    let (off, n) = fm_span(size);
    for i in 0..n {
        // SAFETY: each 16-byte record lies in the slot (at least size + 16 bytes), 8-aligned.
        unsafe { ((slot + off + 16 * i) as *mut [u64; 2]).write(w) };
    }
}

/// The free track of a quarantined slot, from whichever copy is intact.
///
/// # Safety
/// The slot is quarantined (and held busy by the caller, or read for a report).
#[inline]
unsafe fn fm_read(slot: usize, size: usize) -> Option<Track> {
    let read = |at: usize| {
        // SAFETY: as in `fm_write`.
        let [w0, w1] = unsafe { (at as *const [u64; 2]).read_volatile() };
        (w1 == fm_check(w0, slot)).then_some(Track {
            tid: w0 as u32,
            stack: stackdepot::Handle::from_raw((w0 >> 32) as u32),
            seq: 0,
        })
    };
    let (off, n) = fm_span(size);
    read(slot + off).or_else(|| if n == 2 { read(slot + off + 16) } else { None })
}

/// Bytes of a free track record at `at` that differ from `want`, as a damaged range.
///
/// # Safety
/// The 16 bytes at `at` are readable.
unsafe fn fm_damage(at: usize, want: [u64; 2]) -> Option<Damage> {
    // SAFETY: forwarded.
    let have = unsafe { (at as *const [u64; 2]).read_volatile() };
    if have == want {
        return None;
    }
    // As the bytes lie in memory: byte 0 in the low bits.
    let diff = [(have[0] ^ want[0]).to_le(), (have[1] ^ want[1]).to_le()];
    let byte = |i: usize, w: u64, first: bool| {
        i * 8 + if first { w.trailing_zeros() } else { 63 - w.leading_zeros() } as usize / 8
    };
    let first = if diff[0] != 0 { byte(0, diff[0], true) } else { byte(1, diff[1], true) };
    let last = if diff[1] != 0 { byte(1, diff[1], false) } else { byte(0, diff[0], false) };
    Some(Damage { start: at + first, end: at + last + 1 })
}

/// Bytes of the gap after an object of `size` in a slot of `cs` that are its own right
/// redzone (the rest is the next object's left redzone).
#[inline]
fn right_end(size: usize, cs: usize) -> usize {
    cs - ((cs - size) / 2).min(TAIL)
}

/// Length of the left redzone of the object in slot `loc` (the end of the previous slot).
#[inline]
fn left_len(loc: Loc) -> usize {
    let prev = HEAP.meta(loc.class, loc.index - 1);
    match prev.state() {
        state::LIVE | state::QUARANTINED | state::BUSY => {
            ((class_size(loc.class) - prev.size()) / 2).min(TAIL)
        }
        _ => TAIL,
    }
}

fn track_of(m: &Meta) -> Track {
    // Relaxed: read under the state the caller observed.
    Track {
        tid: m.tid.load(Ordering::Relaxed),
        stack: stackdepot::Handle::from_raw(m.stack.load(Ordering::Relaxed)),
        seq: 0,
    }
}

/// The report's view of the object in `loc` (its free track when quarantined).
pub(crate) fn object_view(loc: Loc, m: &Meta) -> Object {
    object(loc, m, m.state() == state::QUARANTINED)
}

/// The report's view of the object in `loc`.
fn object(loc: Loc, m: &Meta, freed: bool) -> Object {
    let size = m.size();
    let free = if freed {
        // SAFETY: the slot is quarantined or busy with a free (its track written).
        unsafe { fm_read(loc.slot, size) }.unwrap_or_default()
    } else {
        Track::default()
    };
    Object {
        user: loc.slot,
        size,
        // Relaxed: as `track_of`.
        align: 1 << (m.align_log.load(Ordering::Relaxed) & 0x3f),
        alloc: track_of(m),
        free,
        window: (loc.slot - left_len(loc), loc.slot + class_size(loc.class)),
    }
}

/// Whether a tag fault on the slot was reported already ([`heap::A_REPORTED`]).
fn reported(m: &Meta) -> bool {
    // Relaxed: set by the fault handler; a race only costs a second report.
    m.align_log.load(Ordering::Relaxed) & heap::A_REPORTED != 0
}

fn family_of(m: &Meta) -> Family {
    // Relaxed: as `track_of`.
    Family::from_u8(m.bits.load(Ordering::Relaxed) & 3)
}

/// Reports damage in the redzones of the busy slot `loc` and repairs them.
///
/// The fast test reads the whole gap after the object and the always-redzone tail of the
/// previous slot: every byte there is redzone whatever the neighbours' state, so an intact
/// pair settles it in a few loads. Only damage sends it to [`redzone_damage`], which splits
/// the gaps between neighbours as the report must.
#[inline]
fn check_redzones(
    rt: &Runtime,
    o: &Options,
    loc: Loc,
    m: &Meta,
    quarantined: bool,
    when: Found,
    regs: &Regs,
) {
    let size = m.size();
    let cs = class_size(loc.class);
    // A freed object smaller than 16 bytes keeps its free track in the gap.
    let from = if quarantined { size.max(16) } else { size };
    // SAFETY: the tail of the previous slot (slot 0 is a pad) and this slot's gap lie in the
    // heap's space, which stays mapped.
    if unsafe {
        all(loc.slot - TAIL, loc.slot, REDZONE) && all(loc.slot + from, loc.slot + cs, REDZONE)
    } {
        return;
    }
    redzone_damage(rt, o, loc, m, quarantined, when, regs);
}

#[cold]
#[inline(never)]
fn redzone_damage(
    rt: &Runtime,
    o: &Options,
    loc: Loc,
    m: &Meta,
    quarantined: bool,
    when: Found,
    regs: &Regs,
) {
    let size = m.size();
    let cs = class_size(loc.class);
    let lz = left_len(loc);
    let from = if quarantined { size.max(16) } else { size };
    let (l, r) = (loc.slot - lz, loc.slot + right_end(size, cs));
    // SAFETY: the left zone ends the previous slot, the right one is this slot's gap: both
    // in the heap's space, which stays mapped. Damage outside them belongs to a neighbour
    // and is found (and repaired) with it.
    let d = unsafe { damage(l, loc.slot, REDZONE).or_else(|| damage(loc.slot + from, r, REDZONE)) };
    if let Some(d) = d {
        if !reported(m) {
            let access = Access::Corrupt { damage: d, when };
            let obj = Some(object(loc, m, quarantined));
            rt.report_object(o, Kind::OutOfBounds, access, obj, regs);
        }
        // SAFETY: as above; the bytes are redzone again.
        unsafe {
            fill(l, lz, REDZONE);
            fill(loc.slot + from, r - loc.slot - from, REDZONE);
        }
    }
}

/// Verifies a busy quarantined slot: redzones, free track, poison.
#[inline]
fn verify(rt: &Runtime, o: &Options, loc: Loc, m: &Meta, when: Found, regs: &Regs) {
    check_redzones(rt, o, loc, m, true, when, regs);
    let size = m.size();
    let s = loc.slot;
    let (off, n) = fm_span(size);
    let zap = zapped(s, size, m);
    let [a, b, c] = poisoned_parts(s, size, zap);
    // SAFETY: the object lies in the slot, owned by the quarantine; the records lie in it;
    // the zapped pages are whole pages of it.
    let intact = unsafe {
        all(a.0, a.1, POISON)
            && all(b.0, b.1, POISON)
            && all(c.0, c.1, POISON)
            && {
                let first = ((s + off) as *const [u64; 2]).read();
                first[1] == fm_check(first[0], s)
                    && (n == 1 || ((s + off + 16) as *const [u64; 2]).read() == first)
            }
            && zap.is_none_or(|(lo, hi)| crate::zap::written(lo, hi).is_none())
    };
    if !intact {
        poison_damage(rt, o, loc, m, when, regs);
    }
}

/// The slow part of [`verify`]: locates, reports and repairs damage to poison or records.
#[cold]
#[inline(never)]
fn poison_damage(rt: &Runtime, o: &Options, loc: Loc, m: &Meta, when: Found, regs: &Regs) {
    let size = m.size();
    let s = loc.slot;
    let (off, n) = fm_span(size);
    let zap = zapped(s, size, m);
    let parts = poisoned_parts(s, size, zap);
    let mut d = None;
    for (lo, hi) in parts {
        // SAFETY: the object lies in the slot, owned by the quarantine.
        d = join(d, unsafe { damage(lo, hi, POISON) });
    }
    if let Some((lo, hi)) = zap {
        // SAFETY: whole pages of the object.
        d = join(d, unsafe { crate::zap::written(lo, hi) });
    }
    // SAFETY: quarantined slot.
    let track = unsafe { fm_read(s, size) };
    for i in 0..n {
        let at = s + off + 16 * i;
        d = join(
            d,
            match track {
                // SAFETY: the record lies in the slot.
                Some(t) => unsafe { fm_damage(at, fm_words(s, t)) },
                // Every copy damaged: the records' whole ranges (inside the object) count.
                None => Some(Damage { start: at, end: (at + 16).min(s + size.max(1)) }),
            },
        );
    }
    if let Some(d) = d {
        if !reported(m) {
            let access = Access::Corrupt { damage: d, when };
            rt.report_object(o, Kind::UseAfterFree, access, Some(object(loc, m, true)), regs);
        }
        // SAFETY: as above; poison and records again (the free track stays lost if it was).
        unsafe {
            for (lo, hi) in parts {
                fill(lo, hi.saturating_sub(lo), POISON);
            }
            if let Some((lo, hi)) = zap {
                // Given back again (zeros once more); a failure leaves the damage, found
                // again at the next check.
                crate::zap::give_back(lo, hi);
            }
            if let Some(t) = track {
                fm_write(s, size, t);
            }
        }
    }
}

/// Frees the heap pointer `p`, with the checks of [`Runtime::free`].
///
/// # Safety
/// `p` lies in the heap's space.
pub(crate) unsafe fn free(
    rt: &Runtime,
    o: &Options,
    owner: u8,
    tagged: usize,
    expect: Expect,
    regs: &Regs,
) {
    let p = hwtags::untag(tagged);
    let Some(loc) = HEAP.locate(p) else {
        return invalid_free(rt, o, p, None, regs);
    };
    let m = HEAP.meta(loc.class, loc.index);
    // The lines the checks read, likely cold when the object lived long: fetched in parallel
    // rather than one miss after the other (the state change waits for the metadata's).
    prefetch(m as *const Meta as usize);
    prefetch(p - 1);
    prefetch(p + class_size(loc.class) - 1);
    if loc.slot != p {
        let inside = m.state() == state::LIVE && p < loc.slot + m.size().max(1);
        return invalid_free(rt, o, p, inside.then(|| object(loc, m, false)), regs);
    }
    // `stale` first: off hw-tags mode it is a constant `None`, and no state load is made.
    if let Some(mtag) = hwtags::stale(tagged, m).filter(|_| m.state() == state::LIVE) {
        // A stale pointer: its object was freed and the slot holds another one now.
        let access = Access::tagged_free(p, tagged, mtag);
        rt.report_object(o, Kind::InvalidFree, access, Some(object(loc, m, false)), regs);
        return;
    }
    if let Err(s) = m.take(state::LIVE) {
        if s == state::QUARANTINED && m.take(state::QUARANTINED).is_ok() {
            let obj = object(loc, m, true);
            m.set(state::QUARANTINED);
            let access = Access::Free { addr: p };
            rt.report_object(o, Kind::DoubleFree, access, Some(obj), regs);
        } else {
            invalid_free(rt, o, p, None, regs);
        }
        return;
    }
    let fam = family_of(m);
    if expect.family != fam && !(expect.family == Family::Rust || fam == Family::Rust) {
        let access = Access::Mismatch { addr: p, alloc: fam, free: expect.family };
        rt.report_object(o, Kind::AllocDeallocMismatch, access, Some(object(loc, m, false)), regs);
    } else if let Some((size, align)) = expect.layout {
        rt.check_layout(o, object(loc, m, false), p, expect.family, size, align, regs);
    }
    check_redzones(rt, o, loc, m, false, Found::AtFree, regs);
    let t = rt.track(o, regs);
    let cs = class_size(loc.class);
    if hwtags::on() {
        // SAFETY: the slot is busy, ours: from now on only untagged pointers reach it.
        unsafe { hwtags::clear(p, m.size()) };
    }
    if o.quarantine_bytes == 0 {
        m.set(state::FREE);
        HEAP.release(loc.class, p);
        return;
    }
    let size = m.size();
    // SAFETY: the slot is busy, ours; object and free track lie in it; the zapped pages are
    // whole pages of the object, whose contents are no longer needed.
    unsafe {
        match zap_range(p, size) {
            Some(pages) if crate::zap::give_back(pages.0, pages.1) => {
                crate::zap::poison_around(p, p + size, pages);
                // Relaxed (both): the slot is busy, ours; published by the Release store of
                // QUARANTINED below.
                m.bits.store(m.bits.load(Ordering::Relaxed) | M_ZAPPED, Ordering::Relaxed);
            }
            // Smaller, or the kernel refused (locked pages): poisoned whole.
            _ => fill(p, size, POISON),
        }
        fm_write(p, size, t);
    }
    m.set(state::QUARANTINED);
    let cap = quarantine::local_cap(o.quarantine_bytes);
    let pushed = HEAP
        .with_cache(|k| quarantine::push(&mut k.q[owner as usize], p, cs + META_BYTES, cap))
        .unwrap_or(Err(quarantine::NoMemory));
    match pushed {
        Ok(None) => {}
        Ok(Some(full)) => {
            let ev = rt.quarantine.publish(full, o.quarantine_bytes);
            evict(rt, o, ev, regs);
        }
        // No memory for a batch record: the slot goes back at once.
        Err(quarantine::NoMemory) => {
            if m.take(state::QUARANTINED).is_ok() {
                m.set(state::FREE);
                HEAP.release(loc.class, p);
            }
        }
    }
}

#[cold]
fn invalid_free(rt: &Runtime, o: &Options, p: usize, obj: Option<Object>, regs: &Regs) {
    rt.report_object(o, Kind::InvalidFree, Access::Free { addr: p }, obj, regs);
}

/// Verifies and releases evicted slots. Their memory is cold (freed a quarantine ago): each
/// slot and its metadata are prefetched a few slots ahead.
pub(crate) fn evict(rt: &Runtime, o: &Options, ev: quarantine::Evicted, regs: &Regs) {
    const AHEAD: usize = 6;
    // Located once: the slot and its metadata prefetched `AHEAD` slots before their turn.
    let fetch = |s: usize| {
        let loc = HEAP.locate(s)?;
        prefetch(HEAP.meta(loc.class, loc.index) as *const Meta as usize);
        prefetch(s);
        Some(loc)
    };
    ev.for_each_batch(|slots| {
        let mut ahead: [Option<Loc>; AHEAD] = [None; AHEAD];
        for (a, &s) in ahead.iter_mut().zip(slots) {
            *a = fetch(s);
        }
        for i in 0..slots.len() {
            let loc = ahead[i % AHEAD].take();
            if let Some(&next) = slots.get(i + AHEAD) {
                ahead[i % AHEAD] = fetch(next);
            }
            let Some(loc) = loc else { continue };
            let s = loc.slot;
            let m = HEAP.meta(loc.class, loc.index);
            if m.take(state::QUARANTINED).is_err() {
                continue;
            }
            verify(rt, o, loc, m, Found::AtEviction, regs);
            m.set(state::FREE);
            HEAP.release(loc.class, s);
        }
    });
    ev.release();
}

/// Publishes an exiting thread's batch to runtime `i`'s quarantine.
pub(crate) fn publish(i: usize, b: quarantine::Full) {
    let Some(rt) = runtime(i) else { return };
    let Some(o) = rt.options() else { return };
    let regs = stacktrace::caller_regs!();
    let ev = rt.quarantine.publish(b, o.quarantine_bytes);
    evict(rt, o, ev, &regs);
}

/// Frees `p` from a context that cannot take it back (a signal handler inside the runtime):
/// the slot is never reused.
pub(crate) fn free_lost(p: usize) {
    let p = hwtags::untag(p);
    if let Some(loc) = HEAP.locate(p).filter(|l| l.slot == p) {
        let m = HEAP.meta(loc.class, loc.index);
        if m.take(state::LIVE).is_ok() {
            m.set(state::LOST);
        }
    }
}

/// The requested size of the live object at `p` (`None` too for a stale pointer to a reused
/// slot, in hw-tags mode).
pub(crate) fn live_size(tagged: usize) -> Option<usize> {
    let p = hwtags::untag(tagged);
    let loc = HEAP.locate(p).filter(|l| l.slot == p)?;
    let m = HEAP.meta(loc.class, loc.index);
    (m.state() == state::LIVE && hwtags::stale(tagged, m).is_none()).then(|| m.size())
}

/// Resizes the live object at `p` in place when the new size keeps its class and alignment;
/// `None` otherwise (the caller moves it). The checks of a free run on the old object.
pub(crate) fn realloc_in_place(
    rt: &Runtime,
    o: &Options,
    tagged: usize,
    new_size: usize,
    align: usize,
    expect: Expect,
    regs: &Regs,
) -> Option<*mut u8> {
    let p = hwtags::untag(tagged);
    let loc = HEAP.locate(p).filter(|l| l.slot == p)?;
    let m = HEAP.meta(loc.class, loc.index);
    if new_size > u32::MAX as usize
        || hwtags::stale(tagged, m).is_some()
        || class_for_aligned(new_size.checked_add(o.redzone)?, align.max(16)) != Some(loc.class)
        || family_of(m) != expect.family
    {
        return None;
    }
    m.take(state::LIVE).ok()?;
    if let Some((size, align)) = expect.layout {
        rt.check_layout(o, object(loc, m, false), p, expect.family, size, align, regs);
    }
    check_redzones(rt, o, loc, m, false, Found::AtFree, regs);
    let old = m.size();
    if new_size < old {
        // SAFETY: the slot is busy, ours; the old object's tail becomes redzone.
        unsafe { fill(p + new_size, old - new_size, REDZONE) };
    }
    if hwtags::on() {
        // SAFETY: the slot is busy, ours; the object's granules keep (or get) its tag for the
        // new size, the rest of the slot gets 0.
        unsafe { hwtags::tag_object(p, new_size, p + class_size(loc.class), hwtags::slot_tag(m)) };
    }
    let t = rt.track(o, regs);
    // Relaxed: published by the Release store of LIVE.
    m.size.store(new_size as u32, Ordering::Relaxed);
    m.tid.store(t.tid, Ordering::Relaxed);
    m.stack.store(t.stack.to_raw(), Ordering::Relaxed);
    m.set(state::LIVE);
    Some(tagged as *mut u8)
}

/// Calls `f` on every slot of the heap owned by runtime `owner` in state `want`, held busy
/// during the call.
fn for_each_slot(owner: u8, want: u8, mut f: impl FnMut(Loc, &Meta)) {
    if !HEAP.ready() {
        return;
    }
    for c in 0..heap::CLASSES {
        let region = HEAP.region(c);
        for i in 1..HEAP.carved(c) {
            let m = HEAP.meta(c, i);
            // Relaxed: a filter; the state is taken below.
            if m.state() != want || m.owner.load(Ordering::Relaxed) != owner {
                continue;
            }
            if m.take(want).is_ok() {
                f(Loc { class: c, index: i, slot: region + i * class_size(c) }, m);
                m.set(want);
            }
        }
    }
}

/// The exit checks of runtime `owner`'s heap objects: quarantined ones verified, live ones'
/// redzones checked.
pub(crate) fn exit_checks(rt: &Runtime, o: &Options, owner: u8, regs: &Regs) {
    for_each_slot(owner, state::QUARANTINED, |loc, m| verify(rt, o, loc, m, Found::AtExit, regs));
    for_each_slot(owner, state::LIVE, |loc, m| {
        check_redzones(rt, o, loc, m, false, Found::AtExit, regs)
    });
}

/// Calls `f` with a leak-scan entry for every live heap object of runtime `owner`, in
/// address order.
pub(crate) fn for_each_live(owner: u8, mut f: impl FnMut(Entry)) {
    if !HEAP.ready() {
        return;
    }
    for c in 0..heap::CLASSES {
        let region = HEAP.region(c);
        for i in 1..HEAP.carved(c) {
            let m = HEAP.meta(c, i);
            // Relaxed: the leak scan runs at exit; a racing free makes at most one entry stale.
            if m.state() != state::LIVE || m.owner.load(Ordering::Relaxed) != owner {
                continue;
            }
            let start = region + i * class_size(c);
            let loader = m.bits.load(Ordering::Relaxed) & M_LOADER != 0;
            f(Entry {
                start,
                end: start + m.size(),
                alloc: track_of(m),
                mark: if loader { 2 } else { 0 },
            });
        }
    }
}

/// Takes the heap's and the quarantine pool's locks (before `fork`).
pub(crate) fn lock_all() {
    HEAP.lock_all();
    quarantine::pool_lock();
}

/// # Safety
/// Held through [`lock_all`].
pub(crate) unsafe fn unlock_all() {
    // SAFETY: forwarded.
    unsafe {
        quarantine::pool_unlock();
        HEAP.unlock_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_track_records_end_the_object_inside_its_slot() {
        for size in 0..600usize {
            let (off, n) = fm_span(size);
            assert_eq!(off % 8, 0, "{size}");
            if size >= 16 {
                assert!(off + 16 * n <= size, "{size}: records inside the object");
            }
            // The slot holds size + at least 16 bytes: the records never reach its tail.
            assert!(off + 16 * n <= size.max(16), "{size}");
            assert_eq!(n, if size >= 32 { 2 } else { 1 });
        }
    }

    #[test]
    fn a_damaged_record_is_found_byte_for_byte() {
        let mut buf = [0u64; 2];
        let want =
            fm_words(0x1000, Track { tid: 7, stack: stackdepot::Handle::from_raw(9), seq: 0 });
        buf.copy_from_slice(&want);
        let at = buf.as_ptr() as usize;
        // SAFETY: `buf` is 16 readable bytes.
        assert_eq!(unsafe { fm_damage(at, want) }, None);
        for (first, last) in [(0, 0), (3, 3), (7, 8), (2, 13), (15, 15), (8, 15)] {
            buf.copy_from_slice(&want);
            // SAFETY: offsets inside `buf`.
            unsafe {
                *(at as *mut u8).add(first) ^= 0x40;
                *(at as *mut u8).add(last) ^= 0x01;
            }
            // SAFETY: as above.
            let d = unsafe { fm_damage(at, want) }.unwrap();
            assert_eq!((d.start - at, d.end - at), (first, last + 1));
        }
    }

    #[test]
    fn the_gap_splits_between_neighbours() {
        // Every gap is at least 16 bytes: the object keeps at least 8 of them, the next one's
        // left redzone at most 16.
        for cs in [32usize, 48, 64, 128, 4096] {
            for size in 0..=cs - 16 {
                let r = right_end(size, cs);
                assert!(r - size >= 8 && cs - r <= TAIL && cs - r >= 8, "{size} in {cs}");
            }
        }
    }

    #[test]
    fn word_checks_agree_with_byte_checks() {
        let mut v = [REDZONE; 80];
        let base = v.as_ptr() as usize;
        for lo in 0..9 {
            for hi in lo..80 {
                // SAFETY: inside `v`.
                assert!(unsafe { all(base + lo, base + hi, REDZONE) });
                if hi > lo {
                    for at in [lo, (lo + hi) / 2, hi - 1] {
                        v[at] = 0;
                        // SAFETY: as above.
                        let d = unsafe { damage(base + lo, base + hi, REDZONE) };
                        assert_eq!(d, Some(Damage { start: base + at, end: base + at + 1 }));
                        v[at] = REDZONE;
                    }
                }
            }
        }
    }
}
