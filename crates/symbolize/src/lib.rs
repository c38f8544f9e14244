//! Symbolizer for ukasan reports: return addresses to `function+0xoff/0xlen file:line`, with
//! inlined frames expanded, for Rust and C/C++ (demangled), in process or offline.
//!
//! # What it does
//! - [`Symbolizer`]: in-process symbolization. The module map comes from `dl_iterate_phdr`
//!   (main program, shared libraries, the vdso) and is refreshed when `dlopen`/`dlclose`
//!   change it. Per module, debug info is loaded lazily on first use and cached: DWARF from the
//!   file itself, from `<debug dir>/.build-id/xx/yyyy.debug`, or through `.gnu_debuglink`
//!   (see [`Symbolizer::with_debug_dirs`]); names from `.symtab`, else `.dynsym`, when there is
//!   no DWARF; `module+0xoffset` when there is nothing. Return addresses are looked up at
//!   `ra - 1` (the call), offsets are printed from `ra` (as the kernel prints them).
//! - [`format_frame`]: the KASAN frame line, ` function+0xoff/0xlen file:line`; inlined frames
//!   print as ` function file:line (inlined)` above the frame they were inlined into.
//! - Raw reports (`symbolize=0`): [`format_raw_frame`] and [`module_map`] print the lines below,
//!   and [`offline::symbolize_report`] turns such a report (text or JSON lines) into a
//!   symbolized one, on another machine if need be.
//!
//! # Line formats of raw reports
//! Raw frame, as printed by [`format_raw_frame`] (the module part is informative; the
//! absolute address and the module map are what offline mode uses, with `module+offset` as
//! the fallback when the map lacks the address):
//! ```text
//!  [<0x00007f3a1c02a1ca>] libc.so.6+0x2a1ca
//! ```
//! Module map line, one per module, as printed by [`module_map`] (see [`Module`]); `bias` is
//! the load bias, so the ELF virtual address of a runtime address is `addr - bias`, which is
//! also the `module+offset` of frames:
//! ```text
//! module start=0x000055d0c0a00000 end=0x000055d0c0a9c000 bias=0x55d0c0a00000 build-id=3f2a9c01 path=/work/prog
//! ```
//! Anything before `[<` or `module start=` on a line is kept (text) or ignored (map), so the
//! runtime may indent or prefix both. JSON-lines reports: see [`offline`].
//!
//! # What it does not do
//! Capture stacks (`ukasan-stacktrace`), split DWARF (`.dwo`/`.dwp`), debuginfod, non-ELF
//! formats. (dwz supplementary files, `.gnu_debugaltlink`, are followed.) It allocates freely (std collections):
//! call it at report time only, under the runtime's re-entrancy guard, never on the
//! allocation path and never from a signal handler that may have interrupted `dlopen`
//! (`dl_iterate_phdr` takes the loader lock).
//!
//! # Costs
//! The first lookup in a module maps its file(s) and parses the DWARF unit headers (tens of ms
//! for a large Rust test binary; decompressing compressed debug sections is the slow part);
//! each unit's lines and functions are parsed on first use. A warm 20-frame stack
//! takes well under a millisecond (see `benches/symbolize.rs`). Memory: the mapped files plus
//! the parsed units, for the life of the [`Symbolizer`].
//!
//! # Example
//! ```
//! #[inline(never)]
//! fn here() -> usize {
//!     here as *const () as usize
//! }
//! let frames = symbolize::with_global(|s| s.symbolize(here(), false));
//! assert!(frames.last().unwrap().function.as_deref().unwrap().ends_with("here"));
//! for f in &frames {
//!     println!("{}", symbolize::format_frame(f));
//! }
//! ```

mod debuginfo;
mod demangle;
mod format;
mod modules;
pub mod offline;
mod symbolizer;

use core::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, PoisonError};

pub use demangle::demangle;
pub use format::{format_frame, format_raw_frame};
pub use modules::{module_map, snapshot as modules, Module, VDSO_PATH};
pub use symbolizer::Symbolizer;

/// One symbolized frame. An address gives one frame per inlined function, then the physical one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    /// Demangled function name without hash suffix; `None` when nothing names the address.
    pub function: Option<String>,
    /// Address minus the start of the physical function (for inlined frames too).
    pub offset: usize,
    /// Size of the physical function (symbol size, else its DWARF range).
    pub size: Option<usize>,
    /// Source file, as recorded in DWARF.
    pub file: Option<String>,
    /// Source line.
    pub line: Option<u32>,
    /// Whether this frame was inlined into the next one.
    pub inlined: bool,
    /// Path of the module (as in the module map); empty when no module contains the address.
    pub module: String,
    /// Address minus the module's load bias (the ELF virtual address); the address itself
    /// when `module` is empty.
    pub module_offset: usize,
}

/// Why a module's debug information could not be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be opened.
    Open,
    /// The file could not be mapped.
    Map,
    /// The file is not a parsable ELF object.
    Parse,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LoadError::Open => "cannot open the file",
            LoadError::Map => "cannot map the file",
            LoadError::Parse => "not an ELF object",
        })
    }
}

impl std::error::Error for LoadError {}

static GLOBAL: Mutex<Option<Symbolizer>> = Mutex::new(None);
/// Thread id of the thread inside [`with_global`], 0 when none.
static OWNER: AtomicI64 = AtomicI64::new(0);

fn thread_id() -> i64 {
    // SAFETY: gettid has no preconditions.
    i64::from(unsafe { libc::gettid() })
}

/// Runs `f` on the process-wide cached [`Symbolizer`] (created on first use).
///
/// Callers are serialized by a mutex. A re-entrant call from the same thread (e.g. from a
/// signal handler that interrupted symbolization) gets a fresh, uncached instance instead
/// of deadlocking. A panic inside `f` does not poison later calls.
pub fn with_global<R>(f: impl FnOnce(&mut Symbolizer) -> R) -> R {
    let me = thread_id();
    // Relaxed: the value is compared only with our own id, which only this thread stores
    // (program order makes our own stores visible to us); any other thread's value differs.
    if OWNER.load(Ordering::Relaxed) == me {
        return f(&mut Symbolizer::new());
    }
    let mut guard = GLOBAL.lock().unwrap_or_else(PoisonError::into_inner);
    struct ResetOwner;
    impl Drop for ResetOwner {
        fn drop(&mut self) {
            // Relaxed: see the load above; runs before the mutex guard is released.
            OWNER.store(0, Ordering::Relaxed);
        }
    }
    // Relaxed: see the load above.
    OWNER.store(me, Ordering::Relaxed);
    let _reset = ResetOwner;
    f(guard.get_or_insert_with(Symbolizer::new))
}
