//! Finding the mapping that contains an address, from `/proc/thread-self/maps`, with raw
//! `open`/`read`/`close` and a stack buffer.
//!
//! # Signal safety
//! [`find_mapping`] is async-signal-safe: no allocation, no lock, only async-signal-safe
//! syscalls. It costs tens of microseconds: call it once per thread and cache the answer.

/// A `[start, end)` address range with its permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: usize,
    /// One past the last address.
    pub end: usize,
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// The main thread's stack (`[stack]`), which the kernel grows on demand down to
    /// `RLIMIT_STACK`.
    pub main_stack: bool,
}

/// Finds the mapping of the current process that contains `addr`.
///
/// Adjacent mappings with the same permissions are merged, as the kernel may split one
/// logical region (a thread stack and its neighbour) into several lines.
pub fn find_mapping(addr: usize) -> Option<Mapping> {
    let path = b"/proc/self/maps\0";
    // SAFETY: `path` is NUL-terminated; open has no other preconditions.
    let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut parser = Parser::new(addr);
    let mut buf = [0u8; 1024];
    let mut filled = 0usize;
    loop {
        // SAFETY: reads into the unfilled tail of a stack buffer we own.
        let n = unsafe { libc::read(fd, buf[filled..].as_mut_ptr().cast(), buf.len() - filled) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if n <= 0 {
            if filled > 0 {
                parser.line(&buf[..filled]);
            }
            break;
        }
        filled += n as usize;
        let mut consumed = 0;
        while let Some(nl) = buf[consumed..filled].iter().position(|&b| b == b'\n') {
            parser.line(&buf[consumed..consumed + nl]);
            consumed += nl + 1;
        }
        if consumed == 0 && filled == buf.len() {
            // A line longer than the buffer (a long path): its address part is at the front.
            parser.line(&buf[..filled]);
            consumed = filled;
            skip_rest_of_line(fd);
        }
        buf.copy_within(consumed..filled, 0);
        filled -= consumed;
        if parser.done {
            break;
        }
    }
    // SAFETY: `fd` is ours and still open.
    unsafe { libc::close(fd) };
    parser.found
}

fn skip_rest_of_line(fd: i32) {
    let mut b = [0u8; 1];
    loop {
        // SAFETY: reads one byte into a local.
        let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        if n <= 0 || b[0] == b'\n' {
            break;
        }
    }
}

/// Line-by-line search state; pure, so it is unit-tested on synthetic text.
struct Parser {
    addr: usize,
    found: Option<Mapping>,
    done: bool,
}

impl Parser {
    fn new(addr: usize) -> Self {
        Parser { addr, found: None, done: false }
    }

    fn line(&mut self, line: &[u8]) {
        if self.done {
            return;
        }
        let Some(m) = parse_line(line) else { return };
        match &mut self.found {
            Some(f) if f.end == m.start && f.read == m.read && f.write == m.write => {
                f.end = m.end;
                f.main_stack |= m.main_stack;
            }
            Some(_) => self.done = true,
            None if m.start <= self.addr && self.addr < m.end => {
                // Merge with a directly preceding region of the same permissions is not needed
                // for stacks (they grow down from the end we report).
                self.found = Some(m);
            }
            None => {}
        }
    }
}

/// Parses `start-end perms ...`.
fn parse_line(line: &[u8]) -> Option<Mapping> {
    let dash = line.iter().position(|&b| b == b'-')?;
    let space = line.iter().position(|&b| b == b' ')?;
    if space < dash || line.len() < space + 3 {
        return None;
    }
    let start = parse_hex(&line[..dash])?;
    let end = parse_hex(&line[dash + 1..space])?;
    let main_stack = line.ends_with(b" [stack]");
    Some(Mapping {
        start,
        end,
        read: line[space + 1] == b'r',
        write: line[space + 2] == b'w',
        main_stack,
    })
}

fn parse_hex(s: &[u8]) -> Option<usize> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut v = 0usize;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        v = (v << 4) | d as usize;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
5555-6000 r-xp 00000000 08:01 1 /bin/x
7ff0000-7ff1000 ---p 00000000 00:00 0
7ff1000-7ff8000 rw-p 00000000 00:00 0
7ff8000-7ffa000 rw-p 00000000 00:00 0 [stack]
7ffa000-7ffb000 r--p 00000000 00:00 0 [vvar]
";

    fn search(addr: usize) -> Option<Mapping> {
        let mut p = Parser::new(addr);
        for l in MAPS.lines() {
            p.line(l.as_bytes());
        }
        p.found
    }

    #[test]
    fn finds_and_merges_adjacent_same_permission_regions() {
        let m = search(0x7ff2000).unwrap();
        assert_eq!((m.start, m.end, m.read, m.write), (0x7ff1000, 0x7ffa000, true, true));
        assert!(m.main_stack, "the merged range ends with the [stack] line");
        assert!(!search(0x5555).unwrap().main_stack);
    }

    #[test]
    fn no_match_and_bad_lines() {
        assert_eq!(search(0x1000), None);
        assert_eq!(parse_line(b"zz-1 rw-p"), None);
        assert_eq!(parse_line(b""), None);
        assert_eq!(parse_hex(b"12345678901234567"), None);
    }

    #[test]
    fn live_stack_is_found() {
        let local = 0u8;
        let a = &local as *const u8 as usize;
        let m = find_mapping(a).expect("our own stack is mapped");
        assert!(m.start <= a && a < m.end && m.read && m.write);
    }
}
