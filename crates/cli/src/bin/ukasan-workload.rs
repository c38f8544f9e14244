//! `ukasan-workload`: the bench's own allocation-heavy Rust program, at real call depths.
//!
//! Each round generates a JSON-like document (deterministic pseudo-random content, a nesting
//! spine 20-40 levels deep with leaves on the way), parses it by recursive descent into a tree
//! of `BTreeMap`s, `Vec`s and `String`s, transforms it (renamed keys, word counts in a
//! `HashMap`, flattened paths) and serializes it again; the checksum of every output is printed
//! so the work cannot be optimized away. It uses the system allocator, so under `LD_PRELOAD`
//! the detector sees every allocation, like any C program.
//!
//! Usage: `ukasan-workload [--size N]` (N documents, default 400). Depends on std only, so
//! `ukasan bench --peers` can also build it alone with `rustc -Zsanitizer=address`.

include!("../workload/body.rs");
