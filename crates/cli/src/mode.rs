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
}

impl Mode {
    /// Modes that can be selected now.
    pub const ACCEPTED: &'static [&'static str] = &["generic", "guarded"];
    /// Modes that are designed but not built yet.
    pub const PLANNED: &'static [&'static str] = &["hw-tags"];

    /// The name as accepted on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Generic => "generic",
            Mode::Guarded => "guarded",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// clap value parser for `--mode`: names the accepted modes on error.
pub fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "generic" => Ok(Mode::Generic),
        "guarded" => Ok(Mode::Guarded),
        _ if Mode::PLANNED.contains(&s) => Err(format!(
            "mode `{s}` is not implemented yet (accepted: {})",
            Mode::ACCEPTED.join(", ")
        )),
        _ => Err(format!(
            "unknown mode `{s}` (accepted: {}; not implemented yet: {})",
            Mode::ACCEPTED.join(", "),
            Mode::PLANNED.join(", ")
        )),
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
        let e = parse_mode("hw-tags").unwrap_err();
        assert!(e.contains("not implemented yet") && e.contains("generic, guarded"), "{e}");
        let e = parse_mode("bogus").unwrap_err();
        assert!(e.contains("unknown mode `bogus`") && e.contains("hw-tags"), "{e}");
    }
}
