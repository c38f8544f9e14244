//! Compact unwind rules and the process-wide, lock-free, set-associative cache that maps a
//! lookup address to one.
//!
//! A slot is two words, `key ^ value` and `value` (the "lockless hashing" trick of chess
//! transposition tables): a reader accepts a slot only when the two words agree with its key,
//! so a slot torn by racing writers (or by a signal handler interrupting a writer) reads as a
//! miss, never as a wrong rule. No lock, no allocation: the table is a 64 KiB static.
//!
//! # Signal safety
//! [`get`] and [`insert`] are async-signal-safe and reentrant (relaxed atomics only).

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// How to find the caller's registers from a frame's `(sp, fp)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rule {
    /// `CFA = (fp if cfa_fp else sp) + cfa_off`; the return address is at `CFA + ra_off`;
    /// the caller's fp is at `CFA + fp_off`, or unchanged when `fp_off` is `None`.
    Frame { cfa_fp: bool, cfa_off: i32, ra_off: i16, fp_off: Option<i16> },
    /// A signal trampoline: the interrupted registers are in the `ucontext_t` on the stack.
    Signal,
    /// Stop here: the outermost frame (return address undefined) or code we cannot unwind.
    Stop,
}

const TAG_FRAME: u64 = 1;
const TAG_SIGNAL: u64 = 2;
const TAG_STOP: u64 = 3;
const CFA_FP: u64 = 1 << 2;
const FP_SAVED: u64 = 1 << 3;
/// Largest CFA offset a packed rule holds (24 bits, signed).
const CFA_OFF_LIMIT: i32 = 1 << 23;

impl Rule {
    /// Packs the rule into a nonzero word, or `None` if an offset does not fit.
    pub(crate) fn pack(self) -> Option<u64> {
        Some(match self {
            Rule::Signal => TAG_SIGNAL,
            Rule::Stop => TAG_STOP,
            Rule::Frame { cfa_fp, cfa_off, ra_off, fp_off } => {
                if !(-CFA_OFF_LIMIT..CFA_OFF_LIMIT).contains(&cfa_off) {
                    return None;
                }
                let mut w = TAG_FRAME | ((cfa_off as u32 as u64 & 0xff_ffff) << 8);
                w |= (ra_off as u16 as u64) << 32;
                if cfa_fp {
                    w |= CFA_FP;
                }
                if let Some(off) = fp_off {
                    w |= FP_SAVED | (off as u16 as u64) << 48;
                }
                w
            }
        })
    }

    /// Inverse of [`Rule::pack`]; `None` for the empty word 0.
    #[inline]
    pub(crate) fn unpack(w: u64) -> Option<Rule> {
        match w & 3 {
            TAG_FRAME => Some(Rule::Frame {
                cfa_fp: w & CFA_FP != 0,
                // Sign-extend the 24-bit field.
                cfa_off: ((w << 32) as i64 >> 40) as i32,
                ra_off: (w >> 32) as u16 as i16,
                fp_off: (w & FP_SAVED != 0).then_some((w >> 48) as u16 as i16),
            }),
            TAG_SIGNAL => Some(Rule::Signal),
            TAG_STOP => Some(Rule::Stop),
            _ => None,
        }
    }
}

const SET_BITS: u32 = 10;
const SETS: usize = 1 << SET_BITS;
const WAYS: usize = 4;

struct Slot {
    key_xor_value: AtomicU64,
    value: AtomicU64,
}

/// One set: four slots in one 64-byte cache line.
#[repr(align(64))]
struct Set([Slot; WAYS]);

#[allow(clippy::declare_interior_mutable_const)] // only used as an array initializer
const EMPTY_SET: Set =
    Set([const { Slot { key_xor_value: AtomicU64::new(0), value: AtomicU64::new(0) } }; WAYS]);

static TABLE: [Set; SETS] = [EMPTY_SET; SETS];
/// Round-robin victim choice for full sets.
static VICTIM: AtomicUsize = AtomicUsize::new(0);

#[inline(always)]
fn set_of(key: usize) -> &'static Set {
    // Return addresses are spread over the low bits already; fold in the next bits so that
    // code 4 KiB apart (or in another object at the same page offset) lands elsewhere.
    // Two cheap ops: this is on the walk's critical path.
    &TABLE[(key ^ (key >> SET_BITS)) & (SETS - 1)]
}

/// The cached rule (packed) for lookup address `key`.
#[inline]
pub(crate) fn get(key: usize) -> Option<u64> {
    for slot in &set_of(key).0 {
        // Relaxed: the xor check below detects any mix of two writers' words; no other
        // memory is published through the slot.
        let v = slot.value.load(Ordering::Relaxed);
        let k = slot.key_xor_value.load(Ordering::Relaxed) ^ v;
        if k == key as u64 && v != 0 {
            return Some(v);
        }
    }
    None
}

/// Caches `rule` for `key` (silently not, if it does not pack).
pub(crate) fn insert(key: usize, rule: Rule) {
    let Some(v) = rule.pack() else { return };
    let set = set_of(key);
    let way = set
        .0
        .iter()
        .position(|s| s.value.load(Ordering::Relaxed) == 0)
        // Relaxed: a plain counter, it orders nothing.
        .unwrap_or_else(|| VICTIM.fetch_add(1, Ordering::Relaxed) % WAYS);
    let slot = &set.0[way];
    // Relaxed: readers validate the pair with the xor check (see `get`).
    slot.value.store(v, Ordering::Relaxed);
    slot.key_xor_value.store(key as u64 ^ v, Ordering::Relaxed);
}

/// Empties the cache (tests and benches of the cold path).
pub(crate) fn clear() {
    for set in &TABLE {
        for slot in &set.0 {
            // Relaxed: see `get`.
            slot.value.store(0, Ordering::Relaxed);
            slot.key_xor_value.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_round_trip_through_a_word() {
        let rules = [
            Rule::Signal,
            Rule::Stop,
            Rule::Frame { cfa_fp: false, cfa_off: 8, ra_off: -8, fp_off: None },
            Rule::Frame { cfa_fp: true, cfa_off: 16, ra_off: -8, fp_off: Some(-16) },
            Rule::Frame {
                cfa_fp: false,
                cfa_off: CFA_OFF_LIMIT - 1,
                ra_off: -8,
                fp_off: Some(-56),
            },
            Rule::Frame {
                cfa_fp: true,
                cfa_off: -CFA_OFF_LIMIT,
                ra_off: i16::MIN,
                fp_off: Some(i16::MAX),
            },
        ];
        for r in rules {
            let w = r.pack().unwrap();
            assert_ne!(w, 0);
            assert_eq!(Rule::unpack(w), Some(r), "{w:#x}");
        }
        let big = Rule::Frame { cfa_fp: false, cfa_off: CFA_OFF_LIMIT, ra_off: -8, fp_off: None };
        assert_eq!(big.pack(), None);
        assert_eq!(Rule::unpack(0), None);
    }

    #[test]
    fn insert_then_get_and_torn_slots_miss() {
        // Keys far from any real code address so parallel tests do not collide.
        let rule = Rule::Frame { cfa_fp: false, cfa_off: 24, ra_off: -8, fp_off: None };
        let key = 0x5eed_0000_0001;
        insert(key, rule);
        assert_eq!(get(key), rule.pack());
        assert_eq!(get(key + 1), None);
        // Tear the slot: a value from another writer with this key's xor word.
        let slot = set_of(key)
            .0
            .iter()
            .find(|s| s.value.load(Ordering::Relaxed) == rule.pack().unwrap())
            .unwrap();
        slot.value.store(Rule::Signal.pack().unwrap(), Ordering::Relaxed);
        assert_eq!(get(key), None);
    }

    #[test]
    fn a_full_set_evicts_but_keeps_working() {
        // Find WAYS + 2 keys that share a set.
        let base = 0x7e57_0000_0000usize;
        let target = set_of(base) as *const Set;
        let keys: Vec<usize> =
            (base..).filter(|&k| core::ptr::eq(set_of(k), target)).take(WAYS + 2).collect();
        for (i, &k) in keys.iter().enumerate() {
            insert(
                k,
                Rule::Frame { cfa_fp: false, cfa_off: 8 * i as i32 + 8, ra_off: -8, fp_off: None },
            );
        }
        let last = *keys.last().unwrap();
        assert_eq!(
            get(last).and_then(Rule::unpack),
            Some(Rule::Frame {
                cfa_fp: false,
                cfa_off: 8 * (WAYS as i32 + 1) + 8,
                ra_off: -8,
                fp_off: None
            })
        );
        let hits = keys.iter().filter(|&&k| get(k).is_some()).count();
        assert!(hits <= WAYS, "{hits}");
    }
}
