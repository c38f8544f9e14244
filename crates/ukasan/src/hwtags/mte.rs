//! The Memory Tagging Extension as hw-tags mode uses it, behind one switch: aarch64 Linux
//! (inline assembly, `prctl`, `PROT_MTE`), and stand-ins elsewhere that [`available`] keeps
//! from ever being reached. The instructions need no compiler flag: each block names the
//! `memtag` extension to the assembler itself.

/// Bytes per tag granule.
pub const GRANULE: usize = 16;
/// Where a pointer's tag starts (the top byte is ignored by address translation, TBI; MTE
/// uses its low four bits).
pub const TAG_SHIFT: u32 = 56;
/// The address bits of a pointer (its tag and the rest of its top byte cleared).
pub const ADDR_MASK: usize = (1 << TAG_SHIFT) - 1;
/// The tags handed out: every tag but 0, which free slots, gaps and freed objects carry (an
/// untagged pointer, the runtime's own, reaches them; a pointer the program got never does).
pub const INCLUDE: u64 = 0xfffe;

/// The pointer `p` with tag `tag`.
#[inline]
pub const fn with_tag(p: usize, tag: u8) -> usize {
    (p & ADDR_MASK) | ((tag as usize & 0xf) << TAG_SHIFT)
}

/// The tag of pointer `p`.
#[inline]
pub const fn tag_of_ptr(p: usize) -> u8 {
    ((p >> TAG_SHIFT) & 0xf) as u8
}

#[cfg(target_arch = "aarch64")]
mod imp {
    use super::{GRANULE, INCLUDE};
    use core::arch::asm;

    const PR_SET_TAGGED_ADDR_CTRL: libc::c_int = 55;
    const PR_TAGGED_ADDR_ENABLE: libc::c_ulong = 1;
    const PR_MTE_TCF_SYNC: libc::c_ulong = 1 << 1;
    const PR_MTE_TAG_SHIFT: u32 = 3;
    const PROT_MTE: libc::c_int = 0x20;
    const HWCAP2_MTE: libc::c_ulong = 1 << 18;

    /// Whether this CPU and kernel offer MTE to user space; why not otherwise.
    pub fn available() -> Result<(), &'static str> {
        // SAFETY: getauxval has no preconditions.
        if unsafe { libc::getauxval(libc::AT_HWCAP2) } & HWCAP2_MTE == 0 {
            return Err("this CPU or its kernel offers no MTE to user space (no HWCAP2_MTE)");
        }
        Ok(())
    }

    fn ctrl(checks: bool) -> bool {
        let tcf = if checks { PR_MTE_TCF_SYNC } else { 0 };
        let v = PR_TAGGED_ADDR_ENABLE | tcf | (INCLUDE as libc::c_ulong) << PR_MTE_TAG_SHIFT;
        // SAFETY: a prctl on the calling thread's own tagged-address control.
        unsafe { libc::prctl(PR_SET_TAGGED_ADDR_CTRL, v, 0, 0, 0) == 0 }
    }

    /// Tagged addresses and synchronous tag checks for the calling thread (threads it creates
    /// from now on inherit them); false when the kernel refuses.
    pub fn enable_thread() -> bool {
        ctrl(true)
    }

    /// [`enable_thread`] unless the calling thread has tagged addresses already (inherited,
    /// or set before with checks on or off, which stays).
    pub fn enable_thread_once() {
        const PR_GET_TAGGED_ADDR_CTRL: libc::c_int = 56;
        // SAFETY: a query of the calling thread's own control.
        let cur = unsafe { libc::prctl(PR_GET_TAGGED_ADDR_CTRL, 0, 0, 0, 0) };
        if cur < 0 || cur as libc::c_ulong & PR_TAGGED_ADDR_ENABLE == 0 {
            ctrl(true);
        }
    }

    /// Tag checks off for the calling thread (tagged addresses stay accepted).
    pub fn disable_thread_checks() {
        ctrl(false);
    }

    /// Makes `[addr, addr + len)` (anonymous, page-aligned) taggable.
    pub fn protect(addr: usize, len: usize) -> bool {
        // SAFETY: only the protection of a mapping of ours changes; it stays readable and
        // writable.
        unsafe {
            libc::mprotect(
                addr as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE | PROT_MTE,
            ) == 0
        }
    }

    /// `p` with a random tag outside `exclude` (a bit per tag) and the tags the thread's
    /// control excludes (0).
    #[inline]
    pub fn random_tag(p: usize, exclude: u16) -> usize {
        let t: usize;
        // SAFETY: IRG only computes a register value.
        unsafe {
            asm!(".arch_extension memtag", "irg {t}, {p}, {x}", t = out(reg) t, p = in(reg) p,
                x = in(reg) exclude as usize, options(nomem, nostack, preserves_flags));
        }
        t
    }

    /// Sets the tag of every granule of `[lo, hi)` to the tag of pointer `lo` (both
    /// granule-aligned).
    ///
    /// # Safety
    /// The range lies in a taggable mapping of ours.
    #[inline]
    pub unsafe fn set_tags(lo: usize, hi: usize) {
        let mut a = lo;
        let end = (lo & !super::ADDR_MASK) | hi;
        while a + 2 * GRANULE <= end {
            // SAFETY: two granules of the caller's range.
            unsafe {
                asm!(".arch_extension memtag", "st2g {a}, [{a}]", a = in(reg) a,
                    options(nostack, preserves_flags));
            }
            a += 2 * GRANULE;
        }
        if a < end {
            // SAFETY: the last granule of the caller's range.
            unsafe {
                asm!(".arch_extension memtag", "stg {a}, [{a}]", a = in(reg) a,
                    options(nostack, preserves_flags));
            }
        }
    }

    /// The tag of the granule at `p`.
    ///
    /// # Safety
    /// `p` lies in a taggable mapping of ours.
    #[inline]
    pub unsafe fn memory_tag(p: usize) -> u8 {
        let mut t = p & super::ADDR_MASK;
        // SAFETY: LDG reads the granule's tag, no data.
        unsafe {
            asm!(".arch_extension memtag", "ldg {t}, [{p}]", t = inout(reg) t, p = in(reg) p,
                options(nostack, preserves_flags, readonly));
        }
        super::tag_of_ptr(t)
    }

    /// Tag checks of the calling thread suspended (`on`) or back (PSTATE.TCO).
    #[inline]
    pub fn override_checks(on: bool) {
        // SAFETY: TCO only changes whether this thread's accesses are tag-checked.
        unsafe {
            if on {
                asm!(".arch_extension memtag", "msr tco, #1", options(nomem, nostack));
            } else {
                asm!(".arch_extension memtag", "msr tco, #0", options(nomem, nostack));
            }
        }
    }
}

#[cfg(not(target_arch = "aarch64"))]
mod imp {
    //! No MTE: [`available`] says so, and nothing else is called while it does.

    /// Why hw-tags mode cannot run here.
    pub fn available() -> Result<(), &'static str> {
        Err("it needs an arm64 CPU with MTE (this is not arm64)")
    }

    /// Never reached: no MTE.
    pub fn enable_thread() -> bool {
        false
    }

    /// Never reached: no MTE.
    pub fn enable_thread_once() {}

    /// Never reached: no MTE.
    pub fn disable_thread_checks() {}

    /// Never reached: no MTE.
    pub fn protect(_addr: usize, _len: usize) -> bool {
        false
    }

    /// Never reached: no MTE.
    #[inline]
    pub fn random_tag(p: usize, _exclude: u16) -> usize {
        p
    }

    /// Never reached: no MTE.
    ///
    /// # Safety
    /// None needed: nothing happens.
    #[inline]
    pub unsafe fn set_tags(_lo: usize, _hi: usize) {}

    /// Never reached: no MTE.
    ///
    /// # Safety
    /// None needed: nothing is read.
    #[inline]
    pub unsafe fn memory_tag(_p: usize) -> u8 {
        0
    }

    /// Never reached: no MTE.
    #[inline]
    pub fn override_checks(_on: bool) {}
}

pub use imp::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_live_in_bits_56_to_59() {
        let p = 0x0000_7fff_1234_5670usize;
        assert_eq!(with_tag(p, 0xa), 0x0a00_7fff_1234_5670);
        assert_eq!(tag_of_ptr(with_tag(p, 0xa)), 0xa);
        assert_eq!(with_tag(with_tag(p, 0xa), 3) & ADDR_MASK, p);
        assert_eq!(tag_of_ptr(p), 0);
        assert_eq!(INCLUDE & 1, 0, "tag 0 is never handed out");
    }
}
