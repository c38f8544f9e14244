// The body of the bench's Rust workload, shared by `src/bin/ukasan-workload.rs` (system
// allocator, for LD_PRELOAD and the ASan peer) and `crates/ukasan/examples/workload.rs` (ukasan
// as the global allocator, for emulated targets without the preload library). Std only.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::hint::black_box;

/// A parsed value.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Array(Vec<Value>),
    Object(BTreeMap<String, Value>),
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORDS: &[&str] = &[
    "alloc",
    "free",
    "shadow",
    "stack",
    "depot",
    "trace",
    "frame",
    "quarantine",
    "redzone",
    "poison",
    "object",
    "slab",
    "thread",
    "report",
    "kasan",
    "unwind",
];

fn word(rng: &mut Rng) -> &'static str {
    WORDS[rng.below(WORDS.len() as u64) as usize]
}

/// Writes one nesting level and recurses along the spine until `depth` reaches 0.
fn gen_object(rng: &mut Rng, depth: u32, out: &mut String) {
    out.push('{');
    let fields = 2 + rng.below(4);
    for i in 0..fields {
        let _ = write!(out, "\"{}_{i}\":", word(rng));
        match rng.below(4) {
            0 => {
                let _ = write!(out, "{}", rng.below(1_000_000) as f64 / 8.0);
            }
            1 => {
                let _ = write!(out, "\"{} {} {}\"", word(rng), word(rng), word(rng));
            }
            2 => {
                out.push('[');
                for j in 0..rng.below(6) {
                    if j > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "\"{}\"", word(rng));
                }
                out.push(']');
            }
            _ => out.push_str(if rng.below(2) == 0 { "true" } else { "null" }),
        }
        out.push(',');
    }
    out.push_str("\"child\":");
    if depth == 0 {
        out.push_str("null");
    } else {
        gen_object(rng, depth - 1, out);
    }
    out.push('}');
}

/// Recursive-descent parser over bytes.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected `{}` at {}", c as char, self.i))
        }
    }

    fn value(&mut self) -> Result<Value, String> {
        self.ws();
        match self.s.get(self.i) {
            Some(b'{') => self.object(),
            Some(b'[') => self.array(),
            Some(b'"') => self.string().map(Value::Str),
            Some(b't') => self.keyword("true", Value::Bool(true)),
            Some(b'f') => self.keyword("false", Value::Bool(false)),
            Some(b'n') => self.keyword("null", Value::Null),
            Some(_) => self.number(),
            None => Err("unexpected end".to_string()),
        }
    }

    fn keyword(&mut self, k: &str, v: Value) -> Result<Value, String> {
        if self.s[self.i..].starts_with(k.as_bytes()) {
            self.i += k.len();
            Ok(v)
        } else {
            Err(format!("bad keyword at {}", self.i))
        }
    }

    fn number(&mut self) -> Result<Value, String> {
        let start = self.i;
        while self.i < self.s.len()
            && matches!(self.s[self.i], b'0'..=b'9' | b'.' | b'-' | b'e' | b'+')
        {
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?;
        text.parse().map(Value::Num).map_err(|e| format!("{e} at {start}"))
    }

    fn string(&mut self) -> Result<String, String> {
        self.eat(b'"')?;
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i] != b'"' {
            self.i += 1;
        }
        let s = String::from_utf8(self.s[start..self.i].to_vec()).map_err(|e| e.to_string())?;
        self.eat(b'"')?;
        Ok(s)
    }

    fn array(&mut self) -> Result<Value, String> {
        self.eat(b'[')?;
        let mut items = Vec::new();
        self.ws();
        if self.s.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value()?);
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(format!("bad array at {}", self.i)),
            }
        }
    }

    fn object(&mut self) -> Result<Value, String> {
        self.eat(b'{')?;
        let mut map = BTreeMap::new();
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            let v = self.value()?;
            map.insert(key, v);
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Value::Object(map));
                }
                _ => return Err(format!("bad object at {}", self.i)),
            }
        }
    }
}

/// Renames keys, uppercases strings, counts words and records every leaf's path.
fn transform(
    v: &Value,
    path: &mut Vec<String>,
    words: &mut HashMap<String, usize>,
    leaves: &mut Vec<String>,
) -> Value {
    match v {
        Value::Object(map) => {
            let mut out = BTreeMap::new();
            for (k, child) in map {
                path.push(k.clone());
                let renamed = format!("{}:{}", path.len(), k.replace('_', "-"));
                out.insert(renamed, transform(child, path, words, leaves));
                path.pop();
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            Value::Array(items.iter().map(|i| transform(i, path, words, leaves)).collect())
        }
        Value::Str(s) => {
            for w in s.split(' ') {
                *words.entry(w.to_string()).or_insert(0) += 1;
            }
            leaves.push(path.join("/"));
            Value::Str(s.to_uppercase())
        }
        other => {
            leaves.push(path.join("/"));
            other.clone()
        }
    }
}

fn serialize(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Num(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Str(s) => {
            let _ = write!(out, "\"{s}\"");
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                serialize(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "\"{k}\":");
                serialize(item, out);
            }
            out.push('}');
        }
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let size = match args.iter().position(|a| a == "--size") {
        Some(i) => args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            eprintln!("usage: ukasan-workload [--size N]");
            std::process::exit(2)
        }),
        None => 400usize,
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut checksum = 0u64;
    let mut words = HashMap::new();
    for _ in 0..size {
        let depth = 20 + rng.below(21) as u32;
        let mut doc = String::new();
        gen_object(&mut rng, depth, &mut doc);
        let parsed = Parser { s: doc.as_bytes(), i: 0 }.value().unwrap_or_else(|e| {
            eprintln!("ukasan-workload: generated an unparsable document: {e}");
            std::process::exit(1)
        });
        let mut leaves = Vec::new();
        let t = transform(&parsed, &mut Vec::new(), &mut words, &mut leaves);
        let mut out = String::new();
        serialize(black_box(&t), &mut out);
        checksum ^= fnv(out.as_bytes()).rotate_left(leaves.len() as u32 % 64);
    }
    let mut counts: Vec<_> = words.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    println!("{size} documents, checksum {checksum:016x}, top word {:?}", counts.first());
}
