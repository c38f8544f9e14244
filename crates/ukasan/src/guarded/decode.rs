//! What the fault frame says about a faulting access: its size, decoded from the x86-64
//! instruction (the common moves and arithmetic with a memory operand; anything else is
//! "unknown size"), and on aarch64 whether it was a write, from the ESR record of the
//! signal frame. The decoders are compiled and tested on every host.

use super::{page_down, PAGE};

/// The size of the memory access of the x86-64 instruction at `pc`, for the common moves
/// and arithmetic with a memory operand; `None` for what is not decoded (VEX, string
/// instructions, ...). Reads at most the rest of `pc`'s page (code is readable).
pub(super) fn access_size(pc: usize) -> Option<usize> {
    let end = page_down(pc) + PAGE;
    // SAFETY: a byte of the page holding the faulting instruction, which is mapped
    // and (on x86-64 Linux) readable.
    decode_size(|i| (pc + i < end).then(|| unsafe { *((pc + i) as *const u8) }))
}

/// [`access_size`] over a byte reader (`byte(i)`: the instruction's i-th byte), compiled
/// and tested on every host.
fn decode_size(byte: impl Fn(usize) -> Option<u8>) -> Option<usize> {
    let (mut i, mut opsize16, mut rep, mut rex_w) = (0, false, 0u8, false);
    loop {
        match byte(i)? {
            0x66 => opsize16 = true,
            0xf2 | 0xf3 => rep = byte(i)?,
            0x67 | 0xf0 | 0x2e | 0x36 | 0x3e | 0x26 | 0x64 | 0x65 => {}
            _ => break,
        }
        i += 1;
        if i > 4 {
            return None;
        }
    }
    if let b @ 0x40..=0x4f = byte(i)? {
        rex_w = b & 8 != 0;
        i += 1;
    }
    let full = if rex_w {
        8
    } else if opsize16 {
        2
    } else {
        4
    };
    let op = byte(i)?;
    if rep != 0 && op != 0x0f {
        return None;
    }
    Some(match op {
        // mov, arithmetic, cmp, test, xchg with a byte operand
        0x88 | 0x8a | 0xc6 | 0x80 | 0x84 | 0x86 | 0xfe | 0xf6 => 1,
        0x00 | 0x02 | 0x08 | 0x0a | 0x20 | 0x22 | 0x28 | 0x2a | 0x30 | 0x32 | 0x38 | 0x3a => 1,
        // the same with a full-size operand
        0x89 | 0x8b | 0xc7 | 0x81 | 0x83 | 0x85 | 0x87 | 0xff | 0xf7 => full,
        0x01 | 0x03 | 0x09 | 0x0b | 0x21 | 0x23 | 0x29 | 0x2b | 0x31 | 0x33 | 0x39 | 0x3b => full,
        0x0f => match (rep, opsize16, byte(i + 1)?) {
            // movzx / movsx
            (0, _, 0xb6 | 0xbe) => 1,
            (0, _, 0xb7 | 0xbf) => 2,
            // movss / movsd
            (0xf3, _, 0x10 | 0x11) => 4,
            (0xf2, _, 0x10 | 0x11) => 8,
            // movups/movupd, movaps/movapd, movdqa, movdqu
            (0, _, 0x10 | 0x11 | 0x28 | 0x29) => 16,
            (0, true, 0x6f | 0x7f) | (0xf3, _, 0x6f | 0x7f) => 16,
            _ => return None,
        },
        _ => return None,
    })
}

/// What an A64 load or store instruction does to memory: a write (stores, and the atomic
/// read-modify-writes) or a read, and how many bytes (`None`: not decoded: SIMD structure
/// loads and stores); `None` for anything that is not a decoded load or store. The kernel
/// (and qemu-user) give no access size for a user fault, and qemu-user no ESR record for a
/// tag-check fault: the instruction says both.
// Read on aarch64 only; compiled and tested on every host.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
pub(crate) fn a64_access(insn: u32) -> Option<(bool, Option<usize>)> {
    let bits = |hi: u32, lo: u32| (insn >> lo) & ((1 << (hi - lo + 1)) - 1);
    let (size, v, opc) = (bits(31, 30), bits(26, 26) == 1, bits(23, 22));
    // Load/store register: unsigned offset, unscaled, pre/post-indexed, unprivileged,
    // register offset; and the atomic memory operations.
    if bits(29, 27) == 0b111 && bits(25, 24) <= 1 {
        if bits(25, 24) == 0 && bits(21, 21) == 1 && bits(11, 10) == 0 {
            // LDADD, SWP, ...: read and write
            return (!v).then_some((true, Some(1 << size)));
        }
        let n = if v && opc >= 2 && size == 0 { 16 } else { 1 << size };
        let write = if v { opc & 1 == 0 } else { opc == 0 };
        if !v && size == 3 && opc == 2 {
            return None; // PRFM
        }
        return Some((write, Some(n)));
    }
    // Load/store pair (and STGP): two registers.
    if bits(29, 27) == 0b101 && bits(25, 25) == 0 {
        let l = bits(22, 22) == 1;
        let n = match (v, size) {
            (false, 0) => 4,
            (false, 1) => {
                if l {
                    4
                } else {
                    8
                }
            } // LDPSW; STGP stores 16 bytes
            (false, 2) | (true, 1) => 8,
            (true, 0) => 4,
            (true, 2) => 16,
            _ => return None,
        };
        return Some((!l, Some(2 * n)));
    }
    // Load/store exclusive and ordered (LDXR, STLR, LDAR, ...; CAS is a write).
    if bits(29, 24) == 0b001000 {
        let cas = bits(23, 23) == 1 && bits(21, 21) == 1;
        return Some((cas || bits(22, 22) == 0, Some(1 << size)));
    }
    // RCpc unscaled (LDAPUR, STLUR).
    if bits(29, 24) == 0b011001 && bits(21, 21) == 0 && bits(11, 10) == 0 {
        return Some((opc == 0, Some(1 << size)));
    }
    // SIMD structures (LD1..LD4, ST1..ST4, single or multiple).
    if bits(31, 31) == 0 && bits(29, 24) == 0b001100 {
        return Some((bits(22, 22) == 0, None));
    }
    None
}

/// `ESR_MAGIC`: the record of an aarch64 signal frame that holds the fault's ESR_EL1.
// Read on aarch64 only; compiled and tested on every host.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
pub(super) const ESR_MAGIC: u32 = 0x4553_5201;
/// Bytes of the aarch64 `sigcontext.__reserved` area the records live in.
// Read on aarch64 only; compiled and tested on every host.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
pub(super) const RESERVED_LEN: usize = 4096;

/// The ESR value among the records `{ u32 magic; u32 size; ... }` of an aarch64 signal
/// frame's reserved area, read through `u32_at`/`u64_at` (offsets into the area); the walk
/// ends at the terminating record (magic 0), a malformed size, or the end of the area.
// Read on aarch64 only; compiled and tested on every host.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
pub(super) fn find_esr(
    u32_at: impl Fn(usize) -> Option<u32>,
    u64_at: impl Fn(usize) -> Option<u64>,
) -> Option<u64> {
    let mut off = 0;
    while off + 8 <= RESERVED_LEN {
        let (magic, size) = (u32_at(off)?, u32_at(off + 4)? as usize);
        if magic == 0 || size < 8 || !size.is_multiple_of(8) {
            return None;
        }
        if magic == ESR_MAGIC {
            return if size >= 16 { u64_at(off + 8) } else { None };
        }
        off += size;
    }
    None
}

/// Whether a data abort's ESR says write: WnR set and not a cache maintenance operation (as
/// the kernel's `is_write_abort`); `None` for another exception class (an instruction abort:
/// a jump into the pool).
// Read on aarch64 only; compiled and tested on every host.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
pub(super) fn esr_is_write(esr: u64) -> Option<bool> {
    const EC_DABT_LOW: u64 = 0x24;
    const EC_DABT_CUR: u64 = 0x25;
    const WNR: u64 = 1 << 6;
    const CM: u64 = 1 << 8;
    matches!(esr >> 26, EC_DABT_LOW | EC_DABT_CUR).then_some(esr & WNR != 0 && esr & CM == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esr_record_and_write_bit() {
        // fpsimd record (528 bytes), then ESR, then the terminator.
        let mut area = [0u8; RESERVED_LEN];
        area[0..4].copy_from_slice(&0x4650_8001u32.to_le_bytes());
        area[4..8].copy_from_slice(&528u32.to_le_bytes());
        let esr_write = (0x24u64 << 26) | (1 << 25) | (1 << 6) | 0x7;
        area[528..532].copy_from_slice(&ESR_MAGIC.to_le_bytes());
        area[532..536].copy_from_slice(&16u32.to_le_bytes());
        area[536..544].copy_from_slice(&esr_write.to_le_bytes());
        let u32_at = |a: &[u8; RESERVED_LEN], o: usize| {
            a.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        };
        let u64_at = |a: &[u8; RESERVED_LEN], o: usize| {
            a.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        };
        let esr = find_esr(|o| u32_at(&area, o), |o| u64_at(&area, o));
        assert_eq!(esr, Some(esr_write));
        assert_eq!(esr_is_write(esr_write), Some(true));
        assert_eq!(esr_is_write(esr_write & !(1 << 6)), Some(false)); // a read
        assert_eq!(esr_is_write(esr_write | (1 << 8)), Some(false)); // cache maintenance
        assert_eq!(esr_is_write((0x20 << 26) | 0x7), None); // instruction abort
                                                            // No ESR record: the terminator first; a malformed size ends the walk.
        area[528..532].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(find_esr(|o| u32_at(&area, o), |o| u64_at(&area, o)), None);
        area[4..8].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(find_esr(|o| u32_at(&area, o), |o| u64_at(&area, o)), None);
    }

    #[test]
    fn a64_loads_and_stores() {
        let a = a64_access;
        assert_eq!(a(0x3940_0000), Some((false, Some(1)))); // ldrb w0, [x0]
        assert_eq!(a(0x3900_0001), Some((true, Some(1)))); // strb w1, [x0]
        assert_eq!(a(0x3860_6820), Some((false, Some(1)))); // ldrb w0, [x1, x0]
        assert_eq!(a(0x3820_6822), Some((true, Some(1)))); // strb w2, [x1, x0]
        assert_eq!(a(0xf940_0000), Some((false, Some(8)))); // ldr x0, [x0]
        assert_eq!(a(0xb800_4c20), Some((true, Some(4)))); // str w0, [x1, #4]!
        assert_eq!(a(0x3880_0020), Some((false, Some(1)))); // ldursb x0, [x1]
        assert_eq!(a(0xb980_0020), Some((false, Some(4)))); // ldrsw x0, [x1]
        assert_eq!(a(0x3dc0_0020), Some((false, Some(16)))); // ldr q0, [x1]
        assert_eq!(a(0x3d80_0020), Some((true, Some(16)))); // str q0, [x1]
        assert_eq!(a(0xfd40_0020), Some((false, Some(8)))); // ldr d0, [x1]
        assert_eq!(a(0xa940_07e0), Some((false, Some(16)))); // ldp x0, x1, [sp]
        assert_eq!(a(0xa900_07e0), Some((true, Some(16)))); // stp x0, x1, [sp]
        assert_eq!(a(0xad40_0420), Some((false, Some(32)))); // ldp q0, q1, [x1]
        assert_eq!(a(0xf820_0020), Some((true, Some(8)))); // ldadd x0, x0, [x1]
        assert_eq!(a(0xc85f_7c20), Some((false, Some(8)))); // ldxr x0, [x1]
        assert_eq!(a(0xc89f_fc20), Some((true, Some(8)))); // stlr x0, [x1]
        assert_eq!(a(0x4c40_7020), Some((false, None))); // ld1 {v0.16b}, [x1]
        assert_eq!(a(0xf980_0020), None); // prfm pldl1keep, [x1]
        assert_eq!(a(0xd503_201f), None); // nop
        assert_eq!(a(0x8b01_0000), None); // add x0, x0, x1
    }

    #[test]
    fn access_sizes_of_common_instructions() {
        let size = |bytes: &[u8]| decode_size(|i| bytes.get(i).copied());
        assert_eq!(size(&[0x0f, 0xb6, 0x04, 0x37]), Some(1)); // movzbl (%rdi,%rsi),%eax
        assert_eq!(size(&[0x88, 0x14, 0x37]), Some(1)); // movb %dl,(%rdi,%rsi)
        assert_eq!(size(&[0x8b, 0x07]), Some(4)); // mov (%rdi),%eax
        assert_eq!(size(&[0x48, 0x8b, 0x07]), Some(8)); // mov (%rdi),%rax
        assert_eq!(size(&[0x66, 0x89, 0x07]), Some(2)); // mov %ax,(%rdi)
        assert_eq!(size(&[0x48, 0x03, 0x04, 0x8e]), Some(8)); // add (%rsi,%rcx,4),%rax
        assert_eq!(size(&[0x48, 0x63, 0x04, 0x8e]), None); // movslq: not decoded
        assert_eq!(size(&[0xf3, 0x0f, 0x6f, 0x07]), Some(16)); // movdqu (%rdi),%xmm0
        assert_eq!(size(&[0xf2, 0x0f, 0x10, 0x07]), Some(8)); // movsd (%rdi),%xmm0
        assert_eq!(size(&[0xf3, 0xa4]), None); // rep movsb
        assert_eq!(size(&[0xc5, 0xfa, 0x6f, 0x07]), None); // VEX
        assert_eq!(size(&[0x66]), None); // cut short (page end)
    }
}
