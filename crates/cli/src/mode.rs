//! Detector modes and stack-collection choices as the command line spells them.

use std::fmt;

/// A detector mode (DESIGN.md section 5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// Redzones, poison and quarantine on every object.
    #[default]
    Generic,
    /// Sampled objects in guard-page slots: bad reads and writes fault at once.
    Guarded,
    /// Every heap object tagged with MTE (arm64): bad reads and writes fault at once.
    HwTags,
}

impl Mode {
    /// Modes that can be selected.
    pub const ACCEPTED: &'static [&'static str] = &["generic", "guarded", "hw-tags"];

    /// The name as accepted on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Generic => "generic",
            Mode::Guarded => "guarded",
            Mode::HwTags => "hw-tags",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why hw-tags mode cannot run on this machine, if it cannot: it needs arm64 with MTE.
pub fn hw_tags_unavailable() -> Option<String> {
    if !cfg!(target_arch = "aarch64") {
        return Some(format!(
            "mode `hw-tags` needs an arm64 CPU with MTE (the Memory Tagging Extension); this machine is {}: use generic or guarded",
            std::env::consts::ARCH
        ));
    }
    const HWCAP2_MTE: u64 = 1 << 18;
    // SAFETY: getauxval has no preconditions.
    let caps = unsafe { libc::getauxval(libc::AT_HWCAP2) } as u64;
    (caps & HWCAP2_MTE == 0).then(|| {
        "mode `hw-tags` needs MTE, which this arm64 CPU or its kernel does not offer (no HWCAP2_MTE): use generic or guarded".to_string()
    })
}

/// clap value parser for `--mode`: names the accepted modes on error, and refuses hw-tags
/// where it cannot run.
pub fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "generic" => Ok(Mode::Generic),
        "guarded" => Ok(Mode::Guarded),
        "hw-tags" => hw_tags_unavailable().map_or(Ok(Mode::HwTags), Err),
        _ => Err(format!("unknown mode `{s}` (accepted: {})", Mode::ACCEPTED.join(", "))),
    }
}

/// The `stacks=` option of the detector: which backend records alloc/free stacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Stacks {
    /// Software (or hardware) shadow-stack copy.
    Shadow,
    /// Frame-pointer walk.
    Fp,
    /// In-process DWARF unwinder.
    Dwarf,
    /// libgcc `_Unwind_Backtrace`.
    Libgcc,
    /// No stack collection.
    Off,
}

impl Stacks {
    /// The value passed in `UKASAN_OPTIONS`.
    pub const fn name(self) -> &'static str {
        match self {
            Stacks::Shadow => "shadow",
            Stacks::Fp => "fp",
            Stacks::Dwarf => "dwarf",
            Stacks::Libgcc => "libgcc",
            Stacks::Off => "off",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_errors_name_the_accepted_values() {
        assert_eq!(parse_mode("generic"), Ok(Mode::Generic));
        assert_eq!(parse_mode("guarded"), Ok(Mode::Guarded));
        match parse_mode("hw-tags") {
            Ok(m) => assert_eq!((m, hw_tags_unavailable()), (Mode::HwTags, None)),
            Err(e) => {
                assert_eq!(Some(&e), hw_tags_unavailable().as_ref());
                assert!(
                    e.contains("needs")
                        && e.contains("MTE")
                        && e.contains("use generic or guarded"),
                    "{e}"
                );
            }
        }
        let e = parse_mode("bogus").unwrap_err();
        assert!(
            e.contains("unknown mode `bogus`") && e.contains("generic, guarded, hw-tags"),
            "{e}"
        );
    }
}
