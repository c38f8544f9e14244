//! Hw-tags mode (KASAN's `hw_tags.c` in user space): the heap's memory is tagged with the
//! Memory Tagging Extension, so that every read or write of a heap object through a pointer
//! whose tag is not the memory's faults at once, for every object; [`mte`] holds the
//! instructions.
//!
//! - **Layout**: the heap of generic mode ([`crate::generic::heap`]), its space mapped with
//!   `PROT_MTE`. Free slots, the gaps after objects and freed objects carry tag 0, which no
//!   pointer handed to the program has (the threads' tag control excludes it); the runtime
//!   reaches them with untagged pointers.
//! - **Allocation**: the object's granules get a random tag other than 0, the slot's previous
//!   tag (a stale pointer to the previous object does not match the new one) and the live
//!   neighbours' tags (a far overflow into a neighbour does not match); the rest of the slot
//!   gets 0, so at least one granule of tag 0 follows every object. The tag is kept in the
//!   slot's metadata (bits 4-7 of [`Meta::bits`]) and goes into the pointer's top byte.
//! - **Free**: the pointer's tag must be the object's (otherwise the pointer is stale:
//!   `invalid-free`); the object's granules get tag 0 and then go through generic mode's
//!   poison and quarantine, so a write through a stale pointer is also found at eviction on
//!   a thread whose checks were off.
//! - **Faults** (`SIGSEGV` with `SEGV_MTESERR`) are reported from the handler of
//!   [`crate::guarded`]'s signal module with the faulting instruction as frame #0, KASAN's
//!   `Pointer tag: [..], memory tag: [..]` line, and the object the address belongs to:
//!   `slab-out-of-bounds` (the gap after an object, or a neighbour's granules reached with
//!   that object's tag), `use-after-free` (a freed object still in the quarantine),
//!   `invalid-access` (anything else: memory reused since, or never allocated). Then the
//!   access is let through: granules nobody owns (a gap, a freed object, a free slot) take
//!   the pointer's tag; when they belong to a live object, this thread's tag checks go off
//!   for the rest of its life (KASAN stops checking on the CPU after its first report) and
//!   the report says so.
//! - **The runtime's own accesses** (redzone and poison checks, the leak scan, reports) are
//!   made with tag checks suspended (PSTATE.TCO, set while the re-entrancy guard is held).
//!
//! - **Large objects** (mapped on their own, [`crate::chunks`]): the mapping is made taggable,
//!   the object gets a random tag, the header and redzones keep 0, and the chunk is registered
//!   (4096 at once) so the fault handler finds it; a chunk that finds the registry full, or a
//!   kernel that refuses, stays untagged (generic mode's checks only).
//!
//! Not covered: bytes past the end of an object inside its last granule
//! (read or written, MTE's granule is 16 bytes: generic mode's redzone check finds such
//! writes at free), threads that existed before the runtime started and never allocate
//! (they do not have tagged addresses enabled; a thread's first allocation enables them).

pub mod mte;

use crate::chunk::{Header, State};
use crate::generic::heap::{class_size, state, Loc, Meta, HEAP};
use crate::options::Options;
use crate::report::{Access, Kind, Object};
use crate::runtime::Runtime;
use core::ffi::c_void;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use mte::GRANULE;

/// `si_code` of a synchronous tag-check fault.
pub const SEGV_MTESERR: i32 = 9;

/// Whether the heap is tagged (set once, before the first tagged allocation).
static ON: AtomicBool = AtomicBool::new(false);
/// The runtime whose heap objects the fault handler reports.
static FAULT_RT: AtomicPtr<Runtime> = AtomicPtr::new(null_mut());

/// Whether hw-tags mode is on in this process.
#[inline]
pub fn on() -> bool {
    // Relaxed: set once before the heap hands out its first object (the heap's own Release
    // publication orders it for other threads).
    cfg!(target_arch = "aarch64") && ON.load(Ordering::Relaxed)
}

/// The address of a pointer the program passes in: on aarch64 its top byte is not part of
/// the address (TBI), in any mode.
#[inline]
pub fn untag(p: usize) -> usize {
    if cfg!(target_arch = "aarch64") {
        p & mte::ADDR_MASK
    } else {
        p
    }
}

/// Turns hw-tags mode on for runtime `rt` (a `static`) before the heap is set up: MTE
/// enabled for this thread (the threads it creates inherit it), the fault handler installed.
/// `Err` says why it cannot be (the caller runs generic mode and says so).
#[cold]
pub(crate) fn enable(rt: &'static Runtime, o: &Options) -> Result<(), &'static str> {
    mte::available()?;
    if HEAP.ready() {
        return Err("the heap was set up untagged by another runtime of this process");
    }
    if !mte::enable_thread() {
        return Err(
            "the kernel refused tagged addresses with tag checks (PR_SET_TAGGED_ADDR_CTRL)",
        );
    }
    // AcqRel: one runtime per process owns the tagged heap's faults.
    if FAULT_RT
        .compare_exchange(null_mut(), rt as *const _ as *mut _, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return Err("another runtime of this process uses it already");
    }
    // Relaxed: see `on`.
    ON.store(true, Ordering::Relaxed);
    if !HEAP.init(o.heap_region_log2) || !on() {
        // Relaxed: as above.
        ON.store(false, Ordering::Relaxed);
        FAULT_RT.store(null_mut(), Ordering::Release);
        return Err("the heap's space could not be mapped with PROT_MTE");
    }
    crate::guarded::ensure_fault_handler();
    Ok(())
}

/// Makes the heap's freshly reserved space taggable (called by the heap's set-up when
/// [`on`]); when the kernel refuses, hw-tags mode goes off ([`enable`] says so).
pub(crate) fn protect_space(base: usize, len: usize) {
    if !mte::protect(base, len) {
        // Relaxed: see `on`; nothing was tagged yet.
        ON.store(false, Ordering::Relaxed);
    }
}

/// A thread's first allocation: tagged addresses and checks for a thread that existed
/// before the runtime started (a no-op for the others, which inherited them).
pub(crate) fn thread_start() {
    if on() {
        mte::enable_thread_once();
        crate::guarded::ensure_fault_handler();
    }
}

/// A heap cache refill (a batch of allocations): now and then, the fault handler is put
/// back in front of one the program (or Rust's std, which decides to install its own
/// before the first allocation and does so after it) installed since, chaining to it.
/// Often at first, then every 1024th refill.
#[inline]
pub(crate) fn on_refill() {
    static REFILLS: AtomicU32 = AtomicU32::new(0);
    if on() {
        // Relaxed: a counter.
        let n = REFILLS.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if n.is_power_of_two() || n.is_multiple_of(1024) {
            crate::guarded::ensure_fault_handler();
        }
    }
}

/// The tag of the object in slot `m` (its last one, once freed).
#[inline]
pub(crate) fn slot_tag(m: &Meta) -> u8 {
    // Relaxed: written with the slot's other fields, published by its state.
    m.bits.load(Ordering::Relaxed) >> 4
}

#[inline]
fn granules(size: usize) -> usize {
    size.next_multiple_of(GRANULE)
}

/// Tags the object of `size` bytes about to live in slot `loc` (metadata `m`, busy or free):
/// its granules get a fresh tag, the rest of the slot 0. Returns the tag (to go into the
/// pointer and the metadata).
///
/// # Safety
/// The slot is ours, not yet handed out; the space is taggable ([`on`]).
#[inline]
pub(crate) unsafe fn tag_new(loc: Loc, m: &Meta, size: usize) -> u8 {
    let mut exclude = 1u16 << slot_tag(m);
    let live = |i: usize| {
        let n = HEAP.meta(loc.class, i);
        matches!(n.state(), state::LIVE | state::QUARANTINED | state::BUSY).then(|| slot_tag(n))
    };
    if let Some(t) = live(loc.index - 1) {
        exclude |= 1 << t;
    }
    if loc.index + 1 < HEAP.carved(loc.class) {
        if let Some(t) = live(loc.index + 1) {
            exclude |= 1 << t;
        }
    }
    let tag = mte::tag_of_ptr(mte::random_tag(loc.slot, exclude));
    // SAFETY: the slot is ours (caller), in the taggable space.
    unsafe { tag_object(loc.slot, size, loc.slot + class_size(loc.class), tag) };
    tag
}

/// Gives the granules of the object of `size` bytes at `slot` tag `tag` and the rest of the
/// slot, up to `slot_end`, tag 0 (a fresh object, or one `realloc` resized in place).
///
/// # Safety
/// The slot is ours (busy or not handed out), in the taggable space.
#[inline]
pub(crate) unsafe fn tag_object(slot: usize, size: usize, slot_end: usize, tag: u8) {
    let slot = untag(slot);
    let end = slot + granules(size);
    // SAFETY: forwarded; both ranges lie in the slot.
    unsafe {
        mte::set_tags(mte::with_tag(slot, tag), end);
        mte::set_tags(end, slot_end);
    }
}

/// Gives the granules of `[lo, lo + len)` (an object being freed) tag 0; `lo`
/// granule-aligned.
///
/// # Safety
/// The range lies in a busy slot of ours.
#[inline]
pub(crate) unsafe fn clear(lo: usize, len: usize) {
    // SAFETY: forwarded.
    unsafe { mte::set_tags(untag(lo), untag(lo) + granules(len)) };
}

/// While the re-entrancy guard is held: tag checks of this thread suspended, so the runtime
/// reads and writes any heap byte with untagged pointers.
#[inline]
pub(crate) fn suspend_checks(on_entry: bool) {
    if on() {
        mte::override_checks(on_entry);
    }
}

/// Large chunks whose tag faults the handler can attribute: their headers' addresses (0:
/// a free entry). A chunk that finds no entry stays untagged (generic checks only).
const LARGE: usize = 4096;
static LARGE_CHUNKS: [AtomicUsize; LARGE] = [const { AtomicUsize::new(0) }; LARGE];
/// Where the next registration starts looking.
static LARGE_HINT: AtomicUsize = AtomicUsize::new(0);

/// Tags a fresh large chunk (mapped on its own): its mapping made taggable, its object's
/// granules a random tag, the rest of the mapping (header, redzones) keeps 0; registered for
/// the fault handler. Returns the pointer for the program (untagged when the kernel refuses
/// or the registry is full).
///
/// # Safety
/// `h` is a fresh chunk of ours mapped by the runtime on its own (not a raw chunk).
pub(crate) unsafe fn tag_large(h: &mut Header) -> usize {
    let user = h.user();
    let (base, len) = (h.base(), h.total.next_multiple_of(crate::chunks::PAGE));
    // Relaxed: a starting point only.
    let start = LARGE_HINT.fetch_add(1, Ordering::Relaxed);
    let me = h as *mut Header as usize;
    // AcqRel: the entry is ours once the exchange succeeds.
    let Some(slot) = (0..LARGE)
        .map(|i| &LARGE_CHUNKS[(start + i) % LARGE])
        .find(|e| e.compare_exchange(0, me, Ordering::AcqRel, Ordering::Relaxed).is_ok())
    else {
        return user;
    };
    if !mte::protect(base, len) {
        // Release: the entry is free again.
        slot.store(0, Ordering::Release);
        return user;
    }
    let tagged = mte::random_tag(user, 0);
    // SAFETY: the object's granules, in the chunk's mapping, now taggable.
    unsafe { mte::set_tags(tagged, user + granules(h.size)) };
    h.tag = mte::tag_of_ptr(tagged);
    tagged
}

/// Takes a tagged large chunk out of the registry before it is unmapped.
pub(crate) fn large_unregister(h: &Header) {
    let me = h as *const Header as usize;
    for e in &LARGE_CHUNKS {
        // Relaxed: only the chunk's owner (this release) removes its entry.
        if e.load(Ordering::Relaxed) == me {
            // Release: pairs with the fault handler's Acquire loads.
            e.store(0, Ordering::Release);
            return;
        }
    }
}

/// The tagged large chunk whose mapping holds `addr`.
fn large_find(addr: usize) -> Option<&'static Header> {
    LARGE_CHUNKS.iter().find_map(|e| {
        // Acquire pairs with the registration's AcqRel exchange: the header is written.
        let h = e.load(Ordering::Acquire);
        // SAFETY: a registered header lies in a mapping of ours until it is unregistered,
        // which comes before the unmap; a chunk released meanwhile by another thread is
        // a race the report may lose.
        let h = (h != 0).then(|| unsafe { &*(h as *const Header) })?;
        (h.valid() && (h.base()..h.base() + h.total).contains(&addr)).then_some(h)
    })
}

/// Whether a fault is a tag-check fault on the heap or a tagged large chunk, for
/// [`on_fault`].
#[inline]
pub(crate) fn claims(code: i32, addr: usize) -> Option<&'static Runtime> {
    if !on() || code != SEGV_MTESERR {
        return None;
    }
    if !crate::generic::contains(addr) && large_find(addr).is_none() {
        return None;
    }
    // Acquire pairs with the AcqRel publication in `enable`.
    let rt = FAULT_RT.load(Ordering::Acquire);
    // SAFETY: the published runtime is a `static`.
    (!rt.is_null()).then(|| unsafe { &*rt })
}

/// What a tag fault at `addr` (untagged) with pointer tag `ptag` hit, decided from the
/// slots' states and tags (pure: tested on every host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// An object's bytes or gap reached through its own tag past its end, or a neighbour
    /// reached with its tag (`slot` is the object the pointer belongs to).
    OutOfBounds { slot: usize },
    /// A freed object still quarantined, through its last tag or any other.
    UseAfterFree { slot: usize },
    /// Anything else; `slot` is the object the address lies in or follows, if any.
    Invalid { slot: Option<usize> },
}

/// A slot as [`classify`] sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SlotView {
    /// The slot's start.
    pub start: usize,
    /// One of [`state`].
    pub state: u8,
    /// Requested size.
    pub size: usize,
    /// Its tag (last one, once freed).
    pub tag: u8,
}

impl SlotView {
    fn holds_object(&self) -> bool {
        matches!(self.state, state::LIVE | state::QUARANTINED | state::BUSY)
    }
}

/// Decides a fault at `addr` with pointer tag `ptag` in slot `cur`, between `prev` and `next`.
pub(crate) fn classify(
    addr: usize,
    ptag: u8,
    prev: Option<SlotView>,
    cur: SlotView,
    next: Option<SlotView>,
) -> Verdict {
    let owns = |s: &SlotView| s.holds_object() && s.tag == ptag;
    let in_object = addr < cur.start + granules(cur.size);
    if cur.state == state::QUARANTINED && (in_object || cur.tag == ptag) {
        return Verdict::UseAfterFree { slot: cur.start };
    }
    if !in_object && owns(&cur) {
        return Verdict::OutOfBounds { slot: cur.start };
    }
    // A neighbour's pointer, past its end or before its start.
    for s in [prev, next].into_iter().flatten() {
        if owns(&s) {
            return Verdict::OutOfBounds { slot: s.start };
        }
    }
    if in_object {
        return Verdict::Invalid { slot: cur.holds_object().then_some(cur.start) };
    }
    // In the gap after `cur` with an unknown tag: `cur`'s overflow, as KASAN names the
    // object to the left; in a free slot, nobody's.
    match cur.state {
        state::QUARANTINED => Verdict::UseAfterFree { slot: cur.start },
        _ if cur.holds_object() => Verdict::OutOfBounds { slot: cur.start },
        _ => Verdict::Invalid { slot: None },
    }
}

fn view(loc: Loc) -> SlotView {
    let m = HEAP.meta(loc.class, loc.index);
    SlotView { start: loc.slot, state: m.state(), size: m.size(), tag: slot_tag(m) }
}

fn neighbour(loc: Loc, index: usize) -> Option<Loc> {
    (index >= 1 && index < HEAP.carved(loc.class)).then(|| Loc {
        class: loc.class,
        index,
        slot: loc.slot - loc.index * class_size(loc.class) + index * class_size(loc.class),
    })
}

/// Reports the tag-check fault at `addr` (tagged, from the signal) and lets the access
/// through (see the module docs). Runs in the fault handler, under the re-entrancy guard.
pub(crate) fn on_fault(rt: &Runtime, addr: usize, write: bool, uc: *mut c_void) {
    let Some(o) = rt.options() else { return };
    let (a, ptag) = (untag(addr), mte::tag_of_ptr(addr));
    let granule = a & !(GRANULE - 1);
    // SAFETY: the address lies in the heap's space or a tagged chunk (`claims`): taggable.
    let mtag = unsafe { mte::memory_tag(granule) };
    let size = crate::guarded::fault_size(uc);
    if !crate::generic::contains(a) {
        if let Some(h) = large_find(a) {
            return on_large_fault(rt, o, h, a, write, size, (ptag, mtag), uc);
        }
    }
    let Some(loc) = HEAP.locate(a) else {
        let access = Access::tagged(a, write, size, (ptag, mtag), false);
        return report(rt, o, Kind::InvalidAccess, access, None, uc);
    };
    let cur = view(loc);
    let prev = neighbour(loc, loc.index - 1);
    let next = neighbour(loc, loc.index + 1);
    let verdict = classify(a, ptag, prev.map(view), cur, next.map(view));
    let loc_of = |s: usize| [Some(loc), prev, next].into_iter().flatten().find(|l| l.slot == s);
    let (kind, at) = match verdict {
        Verdict::OutOfBounds { slot } => (Kind::SlabOutOfBounds, loc_of(slot)),
        Verdict::UseAfterFree { slot } => (Kind::UseAfterFree, loc_of(slot)),
        Verdict::Invalid { slot } => (Kind::InvalidAccess, slot.and_then(loc_of)),
    };
    let obj = at.map(|l| {
        let m = HEAP.meta(l.class, l.index);
        crate::generic::object_view(l, m)
    });
    // Whose granule it is decides how the access goes on: one nobody owns takes the
    // pointer's tag; one of a live object cannot, so this thread stops checking.
    let cur_end = cur.start + granules(cur.size);
    let live_owner = matches!(cur.state, state::LIVE | state::BUSY) && granule < cur_end;
    report(rt, o, kind, Access::tagged(a, write, size, (ptag, mtag), live_owner), obj, uc);
    if live_owner {
        mte::disable_thread_checks();
        return;
    }
    // What the access does once through is this report's bug: the redzone and poison
    // checks repair it without another.
    for l in [Some(loc), at].into_iter().flatten() {
        let m = HEAP.meta(l.class, l.index);
        // Relaxed: see `generic::reported`.
        m.align_log.fetch_or(crate::generic::heap::A_REPORTED, Ordering::Relaxed);
    }
    if cur.state == state::QUARANTINED && granule < cur_end {
        // The whole freed object, once: a loop over it faults once.
        // SAFETY: a quarantined object's granules, in the taggable space; nobody owns them.
        unsafe { mte::set_tags(mte::with_tag(cur.start, ptag), cur_end) };
    } else {
        // SAFETY: one granule of a gap or a free slot: nobody's.
        unsafe { mte::set_tags(mte::with_tag(granule, ptag), granule + GRANULE) };
    }
}

/// [`on_fault`] for a tagged large chunk `h`.
#[allow(clippy::too_many_arguments)]
fn on_large_fault(
    rt: &Runtime,
    o: &Options,
    h: &Header,
    a: usize,
    write: bool,
    size: Option<usize>,
    tags: (u8, u8),
    uc: *mut c_void,
) {
    let (user, end) = (h.user(), h.user() + granules(h.size));
    let state = h.state();
    let in_object = (user..end).contains(&a);
    let kind = match state {
        State::Quarantined => Kind::UseAfterFree,
        _ if in_object => Kind::InvalidAccess,
        _ => Kind::SlabOutOfBounds,
    };
    let live_owner = in_object && state == State::Live;
    report(rt, o, kind, Access::tagged(a, write, size, tags, live_owner), Some(Object::of(h)), uc);
    if live_owner {
        mte::disable_thread_checks();
        return;
    }
    // Relaxed: see the chunk checks.
    h.reported.store(1, Ordering::Relaxed);
    let granule = a & !(GRANULE - 1);
    let (lo, hi) = if in_object { (user, end) } else { (granule, granule + GRANULE) };
    // SAFETY: granules of the chunk's taggable mapping that no live object owns (a freed
    // object, or the header and redzones, which the runtime reaches under TCO).
    unsafe { mte::set_tags(mte::with_tag(lo, tags.0), hi) };
}

fn report(
    rt: &Runtime,
    o: &Options,
    kind: Kind,
    access: Access,
    obj: Option<Object>,
    uc: *mut c_void,
) {
    let mut buf = [0usize; crate::options::MAX_DEPTH];
    let (n, exact, _) = crate::guarded::fault_stack(o, uc, &mut buf);
    rt.report_stack(o, kind, access, obj, &buf[..n], exact);
}

/// Checks the tag of a pointer the program frees (or reallocates) against its object's;
/// `Some(mtag)` when they differ.
#[inline]
pub(crate) fn stale(p: usize, m: &Meta) -> Option<u8> {
    let t = slot_tag(m);
    (on() && mte::tag_of_ptr(p) != t).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(start: usize, st: u8, size: usize, tag: u8) -> SlotView {
        SlotView { start, state: st, size, tag }
    }

    #[test]
    fn faults_are_told_apart_by_state_and_tag() {
        let (a, b, c) = (0x1000, 0x1040, 0x1080);
        let prev = slot(a, state::LIVE, 40, 3);
        let cur = slot(b, state::LIVE, 20, 5);
        let next = slot(c, state::LIVE, 64, 7);
        let v = |addr, ptag, cur| classify(addr, ptag, Some(prev), cur, Some(next));
        // Past the end of cur, with its own tag: its gap.
        assert_eq!(v(b + 32, 5, cur), Verdict::OutOfBounds { slot: b });
        // Into cur's bytes with prev's tag: a far overflow of prev.
        assert_eq!(v(b + 4, 3, cur), Verdict::OutOfBounds { slot: a });
        // cur's gap with next's tag: an underflow of next.
        assert_eq!(v(b + 48, 7, cur), Verdict::OutOfBounds { slot: c });
        // Freed and quarantined: through the old tag or any.
        let freed = slot(b, state::QUARANTINED, 20, 5);
        assert_eq!(v(b, 5, freed), Verdict::UseAfterFree { slot: b });
        assert_eq!(v(b + 16, 9, freed), Verdict::UseAfterFree { slot: b });
        // Its gap through its old tag: still the freed object.
        assert_eq!(v(b + 40, 5, freed), Verdict::UseAfterFree { slot: b });
        // cur's bytes with a tag nobody around has: memory reused since.
        assert_eq!(v(b + 4, 11, cur), Verdict::Invalid { slot: Some(b) });
        // A free slot's bytes: nobody's.
        let free = slot(b, state::FREE, 0, 5);
        assert_eq!(v(b + 4, 11, free), Verdict::Invalid { slot: None });
        // The gap after a live object with a stranger's tag: the object to the left.
        assert_eq!(v(b + 40, 11, cur), Verdict::OutOfBounds { slot: b });
        // A 0-byte object has no granule: any access through its pointer is past its end.
        let empty = slot(b, state::LIVE, 0, 5);
        assert_eq!(v(b, 5, empty), Verdict::OutOfBounds { slot: b });
    }
}
