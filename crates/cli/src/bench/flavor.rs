//! Flavors: how one workload run is set up (the seed's kernel flavors, in user space), plus
//! the peer tools of `--peers`.

/// How a flavor runs the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// As is, no detector.
    Plain,
    /// Under `libukasan.so` with these `UKASAN_OPTIONS`.
    Ukasan(&'static str),
    /// Under `valgrind --tool=memcheck`.
    Valgrind,
    /// Under `heaptrack` (recording only).
    Heaptrack,
    /// A `-Zsanitizer=address` build (the Rust workload only).
    Asan,
}

/// One flavor.
#[derive(Debug, PartialEq, Eq)]
pub struct Flavor {
    /// Name on the command line and in the table.
    pub name: &'static str,
    /// How it runs.
    pub kind: Kind,
    /// One line for the table's legend.
    pub meaning: &'static str,
}

impl Flavor {
    /// Whether this flavor collects stacks, so a run that captured nothing is a bug.
    pub fn must_capture(&self) -> bool {
        matches!(self.kind, Kind::Ukasan(o) if !o.contains("stacks=off"))
    }
}

/// The baseline that overheads are quoted against (the seed's master-no-stack-traces).
pub const BASELINE: &str = "no-stack-traces";

/// The ukasan flavors, in the order they alternate.
pub const FLAVORS: &[Flavor] = &[
    Flavor { name: "plain", kind: Kind::Plain, meaning: "the program without ukasan" },
    Flavor {
        name: "no-stack-traces",
        kind: Kind::Ukasan("stacks=off"),
        meaning: "ukasan, stack collection off (master-no-stack-traces)",
    },
    Flavor {
        name: "unwinder",
        kind: Kind::Ukasan("stacks=libgcc"),
        meaning: "libgcc _Unwind_Backtrace + depot (master)",
    },
    Flavor {
        name: "unwinder-no-depot",
        kind: Kind::Ukasan("stacks=libgcc:depot=0"),
        meaning: "the same, depot save skipped (master-no-stack-depot)",
    },
    Flavor { name: "fp", kind: Kind::Ukasan("stacks=fp"), meaning: "frame-pointer walk + depot" },
    Flavor {
        name: "shadow",
        kind: Kind::Ukasan("stacks=shadow"),
        meaning: "shadow-stack copy + depot (up-scs-stacks-v3)",
    },
    Flavor {
        name: "shadow-no-depot",
        kind: Kind::Ukasan("stacks=shadow:depot=0"),
        meaning: "shadow-stack copy, depot save skipped",
    },
];

/// The `--peers` flavors, run after the ukasan ones in each round.
pub const PEERS: &[Flavor] = &[
    Flavor { name: "valgrind", kind: Kind::Valgrind, meaning: "valgrind --tool=memcheck" },
    Flavor { name: "heaptrack", kind: Kind::Heaptrack, meaning: "heaptrack, recording only" },
    Flavor { name: "asan", kind: Kind::Asan, meaning: "rustc -Zsanitizer=address (Rust workload)" },
];

/// A `--flavors a,b` list, validated.
#[derive(Clone, Debug)]
pub struct FlavorList(pub Vec<&'static Flavor>);

/// clap value parser for `--flavors`: names the accepted ones on error.
pub fn parse_flavors(s: &str) -> Result<FlavorList, String> {
    let mut out = Vec::new();
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let f = FLAVORS.iter().find(|f| f.name == name).ok_or_else(|| {
            let names: Vec<_> = FLAVORS.iter().map(|f| f.name).collect();
            format!("unknown flavor `{name}` (accepted: {})", names.join(", "))
        })?;
        if !out.contains(&f) {
            out.push(f);
        }
    }
    if out.is_empty() {
        return Err("no flavor given".to_string());
    }
    Ok(FlavorList(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_reject() {
        let l = parse_flavors("shadow,plain,shadow").unwrap();
        assert_eq!(l.0.iter().map(|f| f.name).collect::<Vec<_>>(), ["shadow", "plain"]);
        let e = parse_flavors("shadow,nope").unwrap_err();
        assert!(e.contains("unknown flavor `nope`") && e.contains("unwinder-no-depot"), "{e}");
        assert!(parse_flavors(",").is_err());
    }

    #[test]
    fn capture_expectations() {
        let by = |n: &str| FLAVORS.iter().find(|f| f.name == n).unwrap();
        assert!(!by("plain").must_capture());
        assert!(!by(BASELINE).must_capture());
        assert!(by("unwinder-no-depot").must_capture());
        assert!(by("shadow").must_capture());
    }
}
