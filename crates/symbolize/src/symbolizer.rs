//! In-process symbolization with a cached module map and per-module debug info.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::debuginfo::DebugInfo;
use crate::modules::{self, Module, VDSO_PATH};
use crate::Frame;

/// Turns addresses of the current process into frames; caches everything it loads.
///
/// Lazily loaded: creating one costs nothing; the first lookup reads the module map, the
/// first lookup in a module loads that module's debug info.
pub struct Symbolizer {
    modules: Vec<Module>,
    generation: Option<(u64, u64)>,
    /// Debug info by module path; `None` when loading failed (not retried).
    loaded: HashMap<String, Option<DebugInfo>>,
    debug_dirs: Vec<PathBuf>,
}

impl std::fmt::Debug for Symbolizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Symbolizer")
            .field("modules", &self.modules.len())
            .field("loaded", &self.loaded.len())
            .field("debug_dirs", &self.debug_dirs)
            .finish()
    }
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

/// The default directory for separate debug files.
pub const DEFAULT_DEBUG_DIR: &str = "/usr/lib/debug";

impl Symbolizer {
    /// A symbolizer that looks for separate debug files under `/usr/lib/debug`.
    pub fn new() -> Self {
        Self::with_debug_dirs(vec![PathBuf::from(DEFAULT_DEBUG_DIR)])
    }

    /// A symbolizer that looks for separate debug files under `dirs` (build-id links in
    /// `<dir>/.build-id/`, and `.gnu_debuglink` names in `<dir>/<directory of the binary>/`),
    /// besides next to the binary and in its `.debug/` subdirectory.
    pub fn with_debug_dirs(dirs: Vec<PathBuf>) -> Self {
        Symbolizer {
            modules: Vec::new(),
            generation: None,
            loaded: HashMap::new(),
            debug_dirs: dirs,
        }
    }

    /// The current module map (refreshed if `dlopen`/`dlclose` changed it).
    pub fn modules(&mut self) -> &[Module] {
        self.refresh_if_changed();
        &self.modules
    }

    /// The module containing `addr`.
    pub fn module_of(&mut self, addr: usize) -> Option<&Module> {
        let i = self.find(addr)?;
        Some(&self.modules[i])
    }

    /// The frames of `addr`, innermost inlined function first, physical function last.
    ///
    /// With `is_return_address`, the lookup uses `addr - 1` (the call instruction) so a call
    /// that ends a function still resolves to it. Never empty: at worst one frame with only
    /// `module` and `module_offset`.
    pub fn symbolize(&mut self, addr: usize, is_return_address: bool) -> Vec<Frame> {
        let probe = if is_return_address { addr.wrapping_sub(1) } else { addr };
        let Some(i) = self.find(probe) else {
            return vec![Frame { module_offset: addr, ..Frame::default() }];
        };
        let m = &self.modules[i];
        let base = Frame {
            module: m.path.clone(),
            module_offset: addr.wrapping_sub(m.bias),
            ..Frame::default()
        };
        let entry =
            self.loaded.entry(m.path.clone()).or_insert_with(|| load_module(m, &self.debug_dirs));
        match entry {
            Some(info) => info.frames(base.module_offset as u64, is_return_address, &base),
            None => vec![base],
        }
    }

    /// Whether DWARF was found for the module at `path` (after it has been used).
    pub fn has_dwarf(&self, path: &str) -> Option<bool> {
        self.loaded.get(path).map(|d| d.as_ref().is_some_and(DebugInfo::has_dwarf))
    }

    /// Where the DWARF of the module at `path` was read from (after it has been used).
    pub fn dwarf_path(&self, path: &str) -> Option<&Path> {
        self.loaded.get(path)?.as_ref()?.dwarf_path()
    }

    fn refresh_if_changed(&mut self) {
        let gen = modules::generation();
        if self.generation != Some(gen) {
            self.modules = modules::snapshot();
            self.generation = Some(gen);
            // A path may now name another file (rebuilt, or unloaded and replaced).
            let live: Vec<&str> = self.modules.iter().map(|m| m.path.as_str()).collect();
            self.loaded.retain(|p, _| live.contains(&p.as_str()));
        }
    }

    fn find(&mut self, addr: usize) -> Option<usize> {
        self.refresh_if_changed();
        self.modules.iter().position(|m| m.contains(addr))
    }
}

/// Loads a module's debug info; `None` when it cannot be loaded or is not the loaded file.
fn load_module(m: &Module, debug_dirs: &[PathBuf]) -> Option<DebugInfo> {
    let info = if m.path == VDSO_PATH {
        DebugInfo::from_bytes(modules::vdso_image(m)?, debug_dirs).ok()?
    } else {
        DebugInfo::load(Path::new(&m.path), debug_dirs).ok()?
    };
    // A file rebuilt since it was loaded would give wrong names.
    match (m.build_id.as_deref(), info.build_id()) {
        (Some(a), Some(b)) if a != b => None,
        _ => Some(info),
    }
}
