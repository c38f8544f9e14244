//! The depot's API against a model, driven by bytes: the `depot` fuzz target
//! (`fuzz/fuzz_targets/depot.rs` includes this file) and its kept inputs
//! (`fuzz/regressions/depot`), which run here.
//!
//! Each input is a sequence of operations on a fresh depot with a small budget: `save`,
//! `save_on` and `extend_on` on an earlier handle, `save_with_suffixes`, and `fetch` of
//! every handle so far. Frames come from a small alphabet, so traces share prefixes and
//! suffixes as real stacks do. Checked after every step: `fetch(save(t)) == t` (truncated
//! to `MAX_DEPTH`), equal traces have equal handles and different traces different ones,
//! `save_on(base, rest)` equals `save(rest ++ trace(base))`, every suffix handle fetches its
//! suffix, and a handle once given keeps its trace after the budget runs out.

use stackdepot::{Depot, Handle, MAX_DEPTH};
use std::collections::HashMap;

/// Budget of each input's depot: small enough that long inputs fill it.
const BUDGET: usize = 256 << 10;

/// Reads the input a byte at a time; zeros once it is used up.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn done(&self) -> bool {
        self.0.is_empty()
    }

    /// A trace: a length byte, then one byte per frame (code addresses of 16 functions at 4
    /// call sites each), newest first; a long run repeats its last frame.
    fn trace(&mut self) -> Vec<usize> {
        let len = match self.byte() {
            b @ 0..=239 => (b % 48) as usize,
            b => MAX_DEPTH - 8 + (b as usize % 16),
        };
        let mut t = Vec::with_capacity(len);
        for i in 0..len {
            let b = if i < 64 || self.done() { self.byte() } else { t[i - 1] as u8 };
            t.push(0x40_0000 + (b as usize & 63) * 0x10);
        }
        t
    }
}

/// What the model knows: each stored trace and its handle.
#[derive(Default)]
struct Model {
    by_trace: HashMap<Vec<usize>, Handle>,
    by_handle: HashMap<Handle, Vec<usize>>,
    /// Handles in the order given (the operands of `save_on`).
    order: Vec<Handle>,
}

impl Model {
    /// Checks a handle the depot gave for `trace` against everything known, and records it.
    fn given(&mut self, d: &Depot, trace: &[usize], h: Handle) {
        let trace = &trace[..trace.len().min(MAX_DEPTH)];
        if h.is_none() {
            // Only a full depot refuses, and never a trace it holds.
            assert!(!self.by_trace.contains_key(trace), "a stored trace refused");
            assert!(d.save(trace).is_none(), "refused, then saved whole: {trace:x?}");
            assert!(d.stats().dropped_full > 0, "NONE from a depot with room: {trace:x?}");
            return;
        }
        let mut buf = [0usize; MAX_DEPTH];
        assert_eq!(d.fetch(h, &mut buf), Some(trace), "fetch(save(t)) != t");
        if let Some(&old) = self.by_trace.get(trace) {
            assert_eq!(old, h, "one trace, two handles: {trace:x?}");
            return;
        }
        if let Some(other) = self.by_handle.get(&h) {
            panic!("one handle {h:?}, two traces: {other:x?} and {trace:x?}");
        }
        self.by_trace.insert(trace.to_vec(), h);
        self.by_handle.insert(h, trace.to_vec());
        self.order.push(h);
    }

    /// A handle given earlier, chosen by `b`, with its trace.
    fn pick(&self, b: u8) -> Option<(Handle, Vec<usize>)> {
        let h = *self.order.get(b as usize % self.order.len().max(1))?;
        Some((h, self.by_handle[&h].clone()))
    }
}

/// Runs one input; panics on any divergence from the model.
pub fn check(data: &[u8]) {
    let d = Depot::new(BUDGET);
    let mut m = Model::default();
    let mut input = Bytes(data);
    let mut ops = 0;
    while !input.done() && ops < 4096 {
        ops += 1;
        match input.byte() % 5 {
            0 => {
                let t = input.trace();
                let h = d.save(&t);
                m.given(&d, &t, h);
            }
            op @ (1 | 2) => {
                let pick = input.byte();
                let rest = input.trace();
                let Some((base, base_trace)) = m.pick(pick) else { continue };
                let h = if op == 1 {
                    d.save_on(base, base_trace.len(), &rest)
                } else {
                    d.extend_on(base, base_trace.len(), &rest)
                };
                let whole: Vec<usize> = rest.iter().chain(&base_trace).copied().collect();
                if whole.len() > MAX_DEPTH {
                    assert!(h.is_none(), "save_on past MAX_DEPTH gave a handle");
                    continue;
                }
                m.given(&d, &whole, h);
                // The same trace saved whole names the same node.
                let again = d.save(&whole);
                m.given(&d, &whole, again);
            }
            3 => {
                let t = input.trace();
                let mut suffixes = [Handle::NONE; 8];
                let h = d.save_with_suffixes(&t, &mut suffixes);
                m.given(&d, &t, h);
                let t = &t[..t.len().min(MAX_DEPTH)];
                for (i, &s) in suffixes.iter().enumerate().take(t.len()) {
                    if !s.is_none() {
                        m.given(&d, &t[i..], s);
                    }
                }
            }
            _ => {
                // A made-up handle never faults, and extra bits do not change the trace.
                let raw = u32::from_le_bytes([input.byte(), input.byte(), input.byte(), 0]);
                let mut buf = [0usize; 8];
                let _ = d.fetch(Handle::from_raw(raw), &mut buf);
                if let Some((h, t)) = m.pick(input.byte()) {
                    let mut buf = [0usize; MAX_DEPTH];
                    assert_eq!(d.fetch(h.with_extra(0x1f), &mut buf), Some(&t[..]));
                }
            }
        }
    }
    // Every handle still names its trace, full or not.
    let mut buf = [0usize; MAX_DEPTH];
    for (h, t) in &m.by_handle {
        assert_eq!(d.fetch(*h, &mut buf), Some(&t[..]), "a trace changed under {h:?}");
    }
}

#[test]
fn depot_fuzz_regressions() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/depot");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        check(&std::fs::read(&p).unwrap());
        n += 1;
    }
    assert!(n > 0, "no inputs in {}", dir.display());
}

#[test]
fn generated_inputs_agree_with_the_model() {
    let mut rng = super::Rng(0x9e37_79b9_7f4a_7c15);
    for len in [16usize, 256, 4096, 65536] {
        let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        check(&data);
    }
}
