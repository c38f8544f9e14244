//! Frame lines: the KASAN symbolized form and the raw form offline mode parses.

use std::fmt::Write as _;

use crate::modules::{basename, parse_hex, Module};
use crate::Frame;

/// The KASAN frame line, with a leading space:
///
/// - ` function+0xoff/0xlen file:line` for a physical frame (`/0xlen` when the size is
///   known, ` file:line` when the location is);
/// - ` function file:line (inlined)` for an inlined frame;
/// - ` module+0xoffset` when no function is known (` 0xaddress` outside every module).
pub fn format_frame(f: &Frame) -> String {
    let mut s = String::from(" ");
    match &f.function {
        Some(name) => {
            s.push_str(name);
            if !f.inlined {
                let _ = write!(s, "+{:#x}", f.offset);
                if let Some(size) = f.size {
                    let _ = write!(s, "/{size:#x}");
                }
            }
        }
        None if f.module.is_empty() => {
            let _ = write!(s, "{:#x}", f.module_offset);
        }
        None => {
            let _ = write!(s, "{}+{:#x}", basename(&f.module), f.module_offset);
        }
    }
    if let Some(file) = &f.file {
        let _ = write!(s, " {file}");
        if let Some(line) = f.line {
            let _ = write!(s, ":{line}");
        }
    }
    if f.inlined {
        s.push_str(" (inlined)");
    }
    s
}

/// The raw frame line for `symbolize=0` reports, with a leading space:
/// ` [<0x00007f3a1c02a1ca>] libc.so.6+0x2a1ca` (just ` [<0x...>]` outside every module).
///
/// The module part comes from the process-wide symbolizer's module map (no debug info is
/// loaded); print [`crate::module_map`] with the report so offline mode can resolve it.
pub fn format_raw_frame(addr: usize) -> String {
    crate::with_global(|s| raw_line(addr, s.module_of(addr)))
}

pub(crate) fn raw_line(addr: usize, module: Option<&Module>) -> String {
    let mut s = format!(" [<{addr:#018x}>]");
    if let Some(m) = module {
        let _ = write!(s, " {}+{:#x}", m.name(), addr.wrapping_sub(m.bias));
    }
    s
}

/// A raw frame parsed from a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RawFrame<'a> {
    /// Byte index of `[<` in the line: what comes before is kept.
    pub at: usize,
    /// The absolute address.
    pub addr: usize,
    /// `module+0xoffset`, if printed.
    pub module: Option<(&'a str, usize)>,
}

/// Parses the first raw frame on `line`.
pub(crate) fn parse_raw_frame(line: &str) -> Option<RawFrame<'_>> {
    let at = line.find("[<0x")?;
    let rest = &line[at + 2..];
    let (hex, rest) = rest.split_once(">]")?;
    let addr = parse_hex(hex)?;
    let module = rest
        .trim()
        .rsplit_once('+')
        .and_then(|(name, off)| Some((name, parse_hex(off.strip_prefix("0x")?)?)))
        .filter(|(name, _)| !name.is_empty());
    Some(RawFrame { at, addr, module })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Frame {
        Frame {
            function: Some("foo::bar".into()),
            offset: 0x1c,
            size: Some(0x80),
            file: Some("src/lib.rs".into()),
            line: Some(42),
            inlined: false,
            module: "/x/libfoo.so".into(),
            module_offset: 0x123c,
        }
    }

    #[test]
    fn physical_and_inlined() {
        assert_eq!(format_frame(&frame()), " foo::bar+0x1c/0x80 src/lib.rs:42");
        let f = Frame { inlined: true, ..frame() };
        assert_eq!(format_frame(&f), " foo::bar src/lib.rs:42 (inlined)");
        let f = Frame { size: None, file: None, line: None, ..frame() };
        assert_eq!(format_frame(&f), " foo::bar+0x1c");
    }

    #[test]
    fn unknown_function() {
        let f = Frame { function: None, file: None, line: None, ..frame() };
        assert_eq!(format_frame(&f), " libfoo.so+0x123c");
        let f = Frame { module_offset: 0xdead, ..Frame::default() };
        assert_eq!(format_frame(&f), " 0xdead");
    }

    #[test]
    fn raw_roundtrip() {
        let m = Module {
            path: "/lib/my lib.so".into(),
            start: 0x7f00_0000_0000,
            end: 0x7f00_0001_0000,
            bias: 0x7f00_0000_0000,
            build_id: None,
            segments: vec![],
        };
        let line = raw_line(0x7f00_0000_1234, Some(&m));
        assert_eq!(line, " [<0x00007f0000001234>] my lib.so+0x1234");
        let p = parse_raw_frame(&line).unwrap();
        assert_eq!(
            p,
            RawFrame { at: 1, addr: 0x7f00_0000_1234, module: Some(("my lib.so", 0x1234)) }
        );
        let p = parse_raw_frame("    #3 [<0x10>]").unwrap();
        assert_eq!((p.at, p.addr, p.module), (7, 0x10, None));
        assert_eq!(parse_raw_frame(" [<0x>]"), None);
        assert_eq!(parse_raw_frame(" [<0x12"), None);
    }
}
