//! Chunks with a header ([`crate::chunk`]): the objects the heap does not serve.
//!
//! - **Large objects** (over [`crate::generic::heap::MAX_SLOT`] bytes with their redzone, or
//!   aligned to more than a page, or when a class's region is full) are mapped on their own
//!   ([`Direct`]) and unmapped when they leave the quarantine; they have their own FIFO per
//!   shard under the runtime's quarantine budget.
//! - **Raw chunks** (made before the runtime is initialized or from inside it: the
//!   symbolizer, libgcc, a signal handler interrupting the runtime) come from the backing
//!   allocator, unchecked; they are leak-scan roots.
//!
//! Both kinds sit in [`SHARDS`] spin-locked lists (raw ones only if a shard is free at once;
//! large ones when leaks are detected): a lock per `mmap` is noise.

use crate::chunk::{self, Family, Header, State, F_LISTED, F_LOADER, F_RAW};
use crate::leak::{self, Entry};
use crate::options::Options;
use crate::report::{Access, Found, Kind, Object};
use crate::runtime::{Backing, Expect, Runtime};
use crate::sys::SpinLock;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicUsize, Ordering};
use stacktrace::Regs;

/// Number of list and quarantine shards.
pub const SHARDS: usize = 16;

struct ShardData {
    live: *mut Header,
    q_head: *mut Header,
    q_tail: *mut Header,
    q_bytes: usize,
}

// SAFETY: the raw pointers are list links to chunks owned by the runtime; the shard lock
// serializes every access to them.
unsafe impl Send for ShardData {}

/// The header chunks of one runtime.
pub(crate) struct Chunks {
    shards: [SpinLock<ShardData>; SHARDS],
    q_total: AtomicUsize,
}

impl core::fmt::Debug for Chunks {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Chunks").finish_non_exhaustive()
    }
}

impl Chunks {
    pub(crate) const fn new() -> Chunks {
        // A const used only as an array-repeat initializer: each element is a fresh lock.
        #[allow(clippy::declare_interior_mutable_const)]
        const SHARD: SpinLock<ShardData> = SpinLock::new(ShardData {
            live: null_mut(),
            q_head: null_mut(),
            q_tail: null_mut(),
            q_bytes: 0,
        });
        Chunks { shards: [SHARD; SHARDS], q_total: AtomicUsize::new(0) }
    }

    /// Allocates an untracked chunk (before init, or from inside the runtime).
    #[inline(never)]
    pub(crate) fn alloc_raw<B: Backing>(
        &self,
        b: &B,
        size: usize,
        align: usize,
        family: Family,
    ) -> *mut u8 {
        let Some(g) = chunk::geometry(size, align, chunk::MIN_ALIGN) else {
            return null_mut();
        };
        let base = b.alloc(g.total, g.align);
        if base.is_null() {
            return null_mut();
        }
        // SAFETY: `base` is a fresh block of `g.total` bytes aligned to `g.align`.
        let user = unsafe { Header::init(base, g, size, align, family, F_RAW, false) };
        // List it as a root for the leak scan; never wait long (this may be a signal handler
        // that interrupted the holder on this thread): an unlisted raw chunk is only not a root.
        let s = (user as usize >> 12) % SHARDS;
        if let Some(mut sh) = self.shards[s].lock_bounded(1 << 10) {
            // SAFETY: the header was just initialized and is exclusively ours.
            let h = unsafe { &mut *Header::of(user as usize) };
            h.shard = s as u8;
            h.flags |= F_LISTED;
            Self::link(&mut sh, h);
        }
        user
    }

    fn link(sh: &mut ShardData, h: &mut Header) {
        h.next = sh.live;
        if !sh.live.is_null() {
            // SAFETY: list members are listed chunks; the shard lock is held by the caller.
            unsafe { (*sh.live).prev = h };
        }
        sh.live = h;
    }

    /// A tracked chunk mapped on its own.
    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn alloc_large(
        &self,
        rt: &Runtime,
        o: &Options,
        size: usize,
        align: usize,
        family: Family,
        zero: bool,
        regs: &Regs,
        loader: bool,
    ) -> *mut u8 {
        let Some(g) = chunk::geometry(size, align, o.redzone) else {
            return null_mut();
        };
        let base = Direct.alloc(g.total, g.align);
        if base.is_null() {
            return null_mut();
        }
        let mut listed = if o.detect_leaks == Some(true) { F_LISTED } else { 0 };
        if listed != 0 && loader {
            listed |= F_LOADER;
        }
        // SAFETY: `base` is a fresh block of `g.total` bytes aligned to `g.align`.
        let user = unsafe { Header::init(base, g, size, align, family, listed, true) };
        // SAFETY: the header was just initialized and is exclusively ours.
        let h = unsafe { &mut *Header::of(user as usize) };
        h.alloc = rt.track_seq(o, regs);
        if zero {
            // SAFETY: `size` user bytes lie inside the block.
            unsafe { core::ptr::write_bytes(user, 0, size) };
        }
        if listed != 0 {
            let s = (h.alloc.tid as usize) % SHARDS;
            h.shard = s as u8;
            Self::link(&mut self.shards[s].lock(), h);
        }
        if crate::hwtags::on() {
            // SAFETY: the chunk is fresh and ours, its object's bytes written.
            return unsafe { crate::hwtags::tag_large(h) } as *mut u8;
        }
        user
    }

    /// The chunk behind a pointer the program passes back, if it is one of ours and intact.
    ///
    /// # Safety
    /// `p` is non-null; the `HDR + LEFT_RZ` bytes before it must be readable (true for every
    /// pointer this runtime handed out; a foreign pointer near the start of a mapping may fault).
    #[inline]
    pub(crate) unsafe fn header<'a>(p: *mut u8) -> Option<&'a mut Header> {
        let h = Header::of(crate::hwtags::untag(p as usize));
        if !(h as usize).is_multiple_of(chunk::MIN_ALIGN) || (p as usize) < 4096 {
            return None;
        }
        // SAFETY: readable per the caller's contract; validity checked by the magic.
        let h = unsafe { &mut *h };
        h.valid().then_some(h)
    }

    /// Frees a pointer that is not in the heap or the guarded pool, with the checks of
    /// [`Runtime::free`] (under the re-entrancy guard).
    ///
    /// # Safety
    /// As [`Runtime::free`].
    pub(crate) unsafe fn free<B: Backing>(
        &self,
        rt: &Runtime,
        b: &B,
        o: &Options,
        p: *mut u8,
        expect: Expect,
        regs: &Regs,
    ) {
        // SAFETY: forwarded contract (p came from us or is reported as foreign).
        let Some(h) = (unsafe { Self::header(p) }) else {
            self.report_invalid_free(rt, o, p as usize, regs);
            return;
        };
        if h.flags & F_RAW != 0 {
            // SAFETY: forwarded.
            unsafe { self.free_untracked(b, p, false) };
            return;
        }
        if crate::hwtags::on()
            && h.state() == State::Live
            && h.tag != crate::hwtags::mte::tag_of_ptr(p as usize)
        {
            // A stale pointer (hw-tags mode): its chunk was unmapped, another mapped there.
            let access = Access::tagged_free(h.user(), p as usize, h.tag);
            rt.report_object(o, Kind::InvalidFree, access, Some(Object::of(h)), regs);
            return;
        }
        if h.take_live(State::Quarantined).is_err() {
            let access = Access::Free { addr: p as usize };
            rt.report_object(o, Kind::DoubleFree, access, Some(Object::of(h)), regs);
            return;
        }
        // One report per bad free: a wrong family says it all; only a free of the right
        // family is checked for the size and alignment it claims.
        if expect.family != h.family()
            && !(expect.family == Family::Rust || h.family() == Family::Rust)
        {
            let access =
                Access::Mismatch { addr: p as usize, alloc: h.family(), free: expect.family };
            rt.report_object(o, Kind::AllocDeallocMismatch, access, Some(Object::of(h)), regs);
        } else if let Some((size, align)) = expect.layout {
            rt.check_layout(o, Object::of(h), p as usize, expect.family, size, align, regs);
        }
        // SAFETY: the chunk is ours and owned by this free until quarantined.
        unsafe { Self::check_redzones(rt, o, h, Found::AtFree, regs) };
        h.free = rt.track_seq(o, regs);
        if h.flags & F_LISTED != 0 {
            Self::unlink(&mut self.shards[h.shard as usize].lock(), h);
        }
        if o.quarantine_bytes == 0 {
            h.set_state(State::Released);
            // SAFETY: ours, taken out of the live state by this free.
            unsafe { Self::release(b, h) };
            return;
        }
        if h.tag != 0 {
            // SAFETY: the object's granules, in the chunk's taggable mapping, owned by this
            // free: from now on only untagged pointers reach them.
            unsafe { crate::hwtags::clear(h.user(), h.size) };
        }
        // SAFETY: owned by this free.
        unsafe { h.poison() };
        self.quarantine(rt, b, o, h, regs);
    }

    /// Untracked free: raw chunks are released; a tracked chunk freed from inside the runtime
    /// (a signal handler) is unlinked if its shard is free, else left alone (a leak, never a
    /// deadlock).
    ///
    /// # Safety
    /// As [`Runtime::free`].
    pub(crate) unsafe fn free_untracked<B: Backing>(&self, b: &B, p: *mut u8, must_not_wait: bool) {
        // SAFETY: forwarded.
        let Some(h) = (unsafe { Self::header(p) }) else {
            return;
        };
        if h.take_live(State::Released).is_err() {
            return;
        }
        if h.flags & F_LISTED != 0 {
            let shard = &self.shards[h.shard as usize];
            let sh = if must_not_wait { shard.lock_bounded(1 << 16) } else { Some(shard.lock()) };
            // A shard held by the code this signal handler interrupted: leave the chunk.
            let Some(mut sh) = sh else { return };
            Self::unlink(&mut sh, h);
        }
        // SAFETY: taken out of the live state by us.
        unsafe { Self::release(b, h) };
    }

    fn unlink(sh: &mut ShardData, h: &mut Header) {
        // SAFETY: neighbours are listed chunks of this shard; its lock is held by the caller.
        unsafe {
            if h.prev.is_null() {
                sh.live = h.next;
            } else {
                (*h.prev).next = h.next;
            }
            if !h.next.is_null() {
                (*h.next).prev = h.prev;
            }
        }
        h.next = null_mut();
        h.prev = null_mut();
        h.flags &= !F_LISTED;
    }

    /// Gives a chunk's block back.
    ///
    /// # Safety
    /// `h` is ours and no longer referenced by any list or by the program.
    unsafe fn release<B: Backing>(b: &B, h: &mut Header) {
        let (base, total, align) = (h.base() as *mut u8, h.total, h.align.max(chunk::MIN_ALIGN));
        let raw = h.flags & F_RAW != 0;
        if h.tag != 0 {
            crate::hwtags::large_unregister(h);
        }
        h.invalidate();
        // SAFETY: a raw block came from `b.alloc(total, align)`, any other from
        // `Direct.alloc(total, align)` (geometry is deterministic).
        unsafe {
            if raw {
                b.dealloc(base, total, align)
            } else {
                Direct.dealloc(base, total, align)
            }
        }
    }

    /// Puts a freed, poisoned chunk at the tail of this thread's quarantine shard and evicts
    /// the oldest chunks of that shard while the quarantine is over budget.
    fn quarantine<B: Backing>(
        &self,
        rt: &Runtime,
        b: &B,
        o: &Options,
        h: &mut Header,
        regs: &Regs,
    ) {
        let bytes = h.total;
        let s = (h.free.tid as usize) % SHARDS;
        let mut evicted: *mut Header = null_mut();
        {
            let mut sh = self.shards[s].lock();
            h.next = null_mut();
            if sh.q_tail.is_null() {
                sh.q_head = h;
            } else {
                // SAFETY: the tail is a quarantined chunk of this shard; lock held.
                unsafe { (*sh.q_tail).next = h };
            }
            sh.q_tail = h;
            sh.q_bytes += bytes;
            // Relaxed: an approximate budget; the lists themselves are under the locks.
            let mut total = self.q_total.fetch_add(bytes, Ordering::Relaxed) + bytes;
            let mut last: *mut Header = null_mut();
            while total > o.quarantine_bytes && !sh.q_head.is_null() {
                let old = sh.q_head;
                // SAFETY: `old` heads this shard's quarantine; lock held.
                let old_ref = unsafe { &mut *old };
                sh.q_head = old_ref.next;
                if sh.q_head.is_null() {
                    sh.q_tail = null_mut();
                }
                sh.q_bytes -= old_ref.total;
                // Relaxed: as above.
                self.q_total.fetch_sub(old_ref.total, Ordering::Relaxed);
                total -= old_ref.total;
                old_ref.next = null_mut();
                if last.is_null() {
                    evicted = old;
                } else {
                    // SAFETY: `last` was evicted by us just before; exclusively ours now.
                    unsafe { (*last).next = old };
                }
                last = old;
            }
        }
        while !evicted.is_null() {
            // SAFETY: evicted chunks are out of every list and exclusively ours.
            let e = unsafe { &mut *evicted };
            evicted = e.next;
            Self::verify_quarantined(rt, o, e, Found::AtEviction, regs);
            e.set_state(State::Released);
            // SAFETY: out of every list; the program freed it.
            unsafe { Self::release(b, e) };
        }
    }

    /// Reports an out-of-bounds write if `h`'s redzones were modified, then repairs them so the
    /// same damage is reported once.
    ///
    /// # Safety
    /// The runtime owns `h`'s redzones: the chunk is being freed, is quarantined, or is live
    /// and listed under its shard's lock.
    unsafe fn check_redzones(rt: &Runtime, o: &Options, h: &Header, when: Found, regs: &Regs) {
        // SAFETY: forwarded from the caller's contract.
        if let Some(d) = unsafe { h.find_redzone_damage() } {
            // Relaxed: set by the fault handler; a race only costs a second report.
            if h.reported.load(Ordering::Relaxed) == 0 {
                let access = Access::Corrupt { damage: d, when };
                rt.report_object(o, Kind::OutOfBounds, access, Some(Object::of(h)), regs);
            }
            // SAFETY: as above.
            unsafe { h.repair_redzones() };
        }
    }

    /// Checks a quarantined chunk's redzones and poison, reporting damage.
    fn verify_quarantined(rt: &Runtime, o: &Options, h: &Header, when: Found, regs: &Regs) {
        // SAFETY: quarantined chunks are owned by the runtime.
        unsafe { Self::check_redzones(rt, o, h, when, regs) };
        // SAFETY: as above; poisoned at free.
        if let Some(d) = unsafe { h.find_poison_damage() } {
            // Relaxed: as above.
            if h.reported.load(Ordering::Relaxed) == 0 {
                let access = Access::Corrupt { damage: d, when };
                rt.report_object(o, Kind::UseAfterFree, access, Some(Object::of(h)), regs);
            }
            // SAFETY: as above.
            unsafe { h.repair_poison() };
        }
    }

    /// Reports a free of a pointer that is not the start of a chunk, naming the live chunk
    /// that contains it when the lists know one (an interior pointer).
    #[cold]
    #[inline(never)]
    fn report_invalid_free(&self, rt: &Runtime, o: &Options, addr: usize, regs: &Regs) {
        let access = Access::Free { addr };
        for s in &self.shards {
            let sh = s.lock();
            let mut c = sh.live;
            while !c.is_null() {
                // SAFETY: listed chunks of this shard; its lock is held until after the report.
                let h = unsafe { &*c };
                if h.flags & F_RAW == 0 && (h.user()..h.user() + h.size.max(1)).contains(&addr) {
                    rt.report_object(o, Kind::InvalidFree, access, Some(Object::of(h)), regs);
                    return;
                }
                c = h.next;
            }
        }
        rt.report_object(o, Kind::InvalidFree, access, None, regs);
    }

    /// The exit checks of the chunks: quarantined ones verified, live ones' redzones checked.
    pub(crate) fn exit_checks(&self, rt: &Runtime, o: &Options, regs: &Regs) {
        for s in &self.shards {
            let sh = s.lock();
            let mut c = sh.q_head;
            while !c.is_null() {
                // SAFETY: quarantined chunks of this shard; lock held; never released here.
                let h = unsafe { &*c };
                Self::verify_quarantined(rt, o, h, Found::AtExit, regs);
                c = h.next;
            }
        }
        for s in &self.shards {
            let sh = s.lock();
            let mut c = sh.live;
            while !c.is_null() {
                // SAFETY: listed live chunks of this shard; lock held.
                let h = unsafe { &*c };
                if h.flags & F_RAW == 0 {
                    // SAFETY: a live chunk's redzones belong to the runtime.
                    unsafe { Self::check_redzones(rt, o, h, Found::AtExit, regs) };
                }
                c = h.next;
            }
        }
    }

    /// Calls `scan` with a walker over leak-scan entries of every listed chunk (raw ones and
    /// the loader's marked as roots), every shard locked for the whole call (no chunk is
    /// unmapped meanwhile).
    pub(crate) fn with_entries<R>(
        &self,
        scan: impl FnOnce(&dyn Fn(&mut dyn FnMut(Entry))) -> R,
    ) -> R {
        let shards: [_; SHARDS] = core::array::from_fn(|i| self.shards[i].lock());
        let walk = |f: &mut dyn FnMut(Entry)| {
            for sh in &shards {
                let mut c = sh.live;
                while !c.is_null() {
                    // SAFETY: listed chunks of this shard; every shard lock is held.
                    let h = unsafe { &*c };
                    f(leak::entry(h));
                    c = h.next;
                }
            }
        };
        scan(&walk)
    }

    /// Takes every lock (before `fork`).
    pub(crate) fn lock_all(&self) {
        for s in &self.shards {
            s.raw_lock();
        }
    }

    /// # Safety
    /// Held through `lock_all`.
    pub(crate) unsafe fn unlock_all(&self) {
        for s in &self.shards {
            // SAFETY: held by lock_all in this process (or inherited over fork).
            unsafe { s.force_unlock() };
        }
    }
}

/// Blocks mapped on their own with `mmap` (large chunks), unmapped when released.
struct Direct;

/// The page size the chunks' mappings are rounded to.
pub(crate) const PAGE: usize = 4096;

// SAFETY: `alloc` returns a fresh mapping of `size` bytes rounded up to pages, aligned to
// `align` (`sys::map`), valid until `dealloc` unmaps that rounded size.
unsafe impl Backing for Direct {
    fn alloc(&self, size: usize, align: usize) -> *mut u8 {
        crate::sys::map(size, align, false).unwrap_or(null_mut())
    }

    unsafe fn dealloc(&self, p: *mut u8, size: usize, _align: usize) {
        // SAFETY: `p` and the rounded size are what `alloc` kept mapped.
        unsafe { libc::munmap(p.cast(), size.next_multiple_of(PAGE)) };
    }
}
