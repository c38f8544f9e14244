//! The size of a faulting x86-64 memory access, decoded from the instruction: the common
//! moves and arithmetic with a memory operand; anything else is "unknown size".

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

#[cfg(test)]
mod tests {
    use super::*;

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
