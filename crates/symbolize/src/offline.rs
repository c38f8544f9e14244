//! Offline symbolization: a raw report (printed with `symbolize=0`) in, a symbolized one out.
//!
//! # Input
//! Text reports: every line holding a raw frame (` [<0x00007f3a1c02a1ca>] libc.so.6+0x2a1ca`,
//! see [`crate::format_raw_frame`]) becomes one line per symbolized frame (inlined frames
//! first), keeping what preceded `[<` on the line; every other line, module map lines
//! included, is copied unchanged. The module map lines ([`crate::Module`]) may come anywhere
//! in the input, before or after the frames; an input holds one process's report(s).
//!
//! JSON-lines reports: a line that parses as a JSON object is a report. Every `"frames"`
//! array in it (at any depth) holds raw addresses (numbers, or strings `"0x..."`); its
//! object gains a `"symbolized"` array with one object per frame (`addr`, `text` = the
//! [`crate::format_frame`] line without the leading space, `function`, `offset`, `size`,
//! `file`, `line`, `inlined`, `module`, `module_offset`). Its modules come from its top-level
//! `"modules"` array (objects as written by [`module_json`]), else from the text module map.
//! The object is re-serialized (keys in sorted order).
//!
//! # Finding the files
//! `lookup` maps a module path as printed in the map (or a module name from a raw frame when
//! the map lacks the address) to a local file; the file's debug info is then found like in
//! process (build-id and `.gnu_debuglink` under the debug directories). A local file whose
//! build-id differs from the map's is not used; a module found nowhere prints as
//! `module+0xoffset`. Malformed input never panics: unparsable lines are copied unchanged.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::{json, Map, Value};

use crate::debuginfo::DebugInfo;
use crate::format::{format_frame, parse_raw_frame};
use crate::modules::{parse_hex, Module};
use crate::symbolizer::DEFAULT_DEBUG_DIR;
use crate::Frame;

/// Symbolizes a raw text or JSON-lines report, looking separate debug files up under
/// `/usr/lib/debug`.
pub fn symbolize_report(input: &str, lookup: &dyn Fn(&str) -> Option<PathBuf>) -> String {
    symbolize_report_with(input, lookup, &[PathBuf::from(DEFAULT_DEBUG_DIR)])
}

/// For the fuzz target `offline` and its regression inputs (not an API): symbolizes `input`
/// with no files to read and panics if a line with neither a raw frame nor a JSON object did
/// not come back unchanged.
#[doc(hidden)]
pub fn check_for_fuzzing(input: &str) -> String {
    let out = symbolize_report_with(input, &|_| None, &[]);
    for line in input.lines().filter(|l| !l.contains("[<0x") && !l.trim_start().starts_with('{')) {
        assert!(out.contains(line), "line {line:?} lost");
    }
    out
}

/// [`symbolize_report`] with explicit debug directories (may be empty).
pub fn symbolize_report_with(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<PathBuf>,
    debug_dirs: &[PathBuf],
) -> String {
    let text_modules: Vec<Module> = input.lines().filter_map(Module::parse_line).collect();
    let mut st = Offline { lookup, debug_dirs, cache: HashMap::new() };
    let mut out = String::with_capacity(input.len() * 2);
    for line in input.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let eol = &line[body.len()..];
        if body.trim_start().starts_with('{') {
            if let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(body) {
                let own = obj
                    .get("modules")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(module_from_json).collect::<Vec<_>>());
                let modules = own.as_deref().unwrap_or(&text_modules);
                st.json(&mut obj, modules);
                out.push_str(&Value::Object(obj).to_string());
                out.push_str(eol);
                continue;
            }
        }
        match parse_raw_frame(body) {
            Some(raw) if Module::parse_line(body).is_none() => {
                let prefix = &body[..raw.at];
                let frames = st.resolve(raw.addr, raw.module, &text_modules);
                let lines: Vec<String> = frames
                    .iter()
                    .map(|f| format!("{prefix}{}", format_frame(f).trim_start()))
                    .collect();
                out.push_str(&lines.join("\n"));
                out.push_str(eol);
            }
            _ => out.push_str(line),
        }
    }
    out
}

/// The JSON object of one module for JSON-lines reports:
/// `{"path": "...", "start": "0x..", "end": "0x..", "bias": "0x..", "build_id": "hex" | null}`.
pub fn module_json(m: &Module) -> String {
    let id =
        m.build_id.as_ref().map(|id| id.iter().map(|b| format!("{b:02x}")).collect::<String>());
    json!({
        "path": m.path,
        "start": format!("{:#x}", m.start),
        "end": format!("{:#x}", m.end),
        "bias": format!("{:#x}", m.bias),
        "build_id": id,
    })
    .to_string()
}

fn json_usize(v: &Value) -> Option<usize> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
        Value::String(s) => parse_hex(s.strip_prefix("0x")?),
        _ => None,
    }
}

fn module_from_json(v: &Value) -> Option<Module> {
    let path = v.get("path")?.as_str()?;
    let line = format!(
        "module start={:#x} end={:#x} bias={:#x} build-id={} path={path}",
        json_usize(v.get("start")?)?,
        json_usize(v.get("end")?)?,
        json_usize(v.get("bias")?)?,
        v.get("build_id").and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or("-"),
    );
    Module::parse_line(&line)
}

struct Offline<'a> {
    lookup: &'a dyn Fn(&str) -> Option<PathBuf>,
    debug_dirs: &'a [PathBuf],
    /// By module path (or name): `None` when not found.
    cache: HashMap<String, Option<DebugInfo>>,
}

impl Offline<'_> {
    fn resolve(
        &mut self,
        addr: usize,
        hint: Option<(&str, usize)>,
        modules: &[Module],
    ) -> Vec<Frame> {
        if let Some(m) = modules.iter().find(|m| m.contains(addr.wrapping_sub(1))) {
            return self.frames_in(&m.path, m.build_id.as_deref(), addr.wrapping_sub(m.bias));
        }
        match hint {
            Some((name, offset)) => self.frames_in(name, None, offset),
            None => vec![Frame { module_offset: addr, ..Frame::default() }],
        }
    }

    fn frames_in(&mut self, path: &str, build_id: Option<&[u8]>, vaddr: usize) -> Vec<Frame> {
        let base = Frame { module: path.to_owned(), module_offset: vaddr, ..Frame::default() };
        let (lookup, dirs) = (self.lookup, self.debug_dirs);
        let info =
            self.cache.entry(path.to_owned()).or_insert_with(|| load(lookup, dirs, path, build_id));
        match info {
            Some(info) => info.frames(vaddr as u64, true, &base),
            None => vec![base],
        }
    }

    fn json(&mut self, obj: &mut Map<String, Value>, modules: &[Module]) {
        if let Some(Value::Array(frames)) = obj.get("frames") {
            let addrs: Vec<Option<usize>> = frames.iter().map(json_usize).collect();
            let mut sym = Vec::new();
            for addr in addrs.into_iter().flatten() {
                for f in self.resolve(addr, None, modules) {
                    sym.push(json!({
                        "addr": format!("{addr:#x}"),
                        "text": format_frame(&f).trim_start(),
                        "function": f.function,
                        "offset": f.offset,
                        "size": f.size,
                        "file": f.file,
                        "line": f.line,
                        "inlined": f.inlined,
                        "module": f.module,
                        "module_offset": format!("{:#x}", f.module_offset),
                    }));
                }
            }
            obj.insert("symbolized".to_owned(), Value::Array(sym));
        }
        for (key, v) in obj.iter_mut() {
            if key != "symbolized" && key != "modules" {
                self.json_value(v, modules);
            }
        }
    }

    fn json_value(&mut self, v: &mut Value, modules: &[Module]) {
        match v {
            Value::Object(o) => self.json(o, modules),
            Value::Array(a) => a.iter_mut().for_each(|v| self.json_value(v, modules)),
            _ => {}
        }
    }
}

fn load(
    lookup: &dyn Fn(&str) -> Option<PathBuf>,
    dirs: &[PathBuf],
    path: &str,
    build_id: Option<&[u8]>,
) -> Option<DebugInfo> {
    if let Some(local) = lookup(path) {
        if let Ok(info) = DebugInfo::load(&local, dirs) {
            match (build_id, info.build_id()) {
                (Some(want), Some(got)) if want != got => {}
                _ => return Some(info),
            }
        }
    }
    DebugInfo::load_build_id(build_id?, dirs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> Option<PathBuf> {
        None
    }

    #[test]
    fn plain_text_is_copied() {
        let s = "BUG: KASAN: use-after-free in foo\n  no frames here [< not one\n\nlast";
        assert_eq!(symbolize_report_with(s, &none, &[]), s);
    }

    #[test]
    fn missing_module_prints_module_offset() {
        let s = "module start=0x1000 end=0x3000 bias=0x1000 build-id=- path=/gone/libx.so\n [<0x0000000000001234>] libx.so+0x234\n [<0x9999>]\n";
        let out = symbolize_report_with(s, &none, &[]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[1], " libx.so+0x234");
        assert_eq!(lines[2], " 0x9999");
    }

    #[test]
    fn hint_used_when_map_lacks_address() {
        let out = symbolize_report_with("\t[<0x55>] liby.so+0x20", &none, &[]);
        assert_eq!(out, "\tliby.so+0x20");
    }

    #[test]
    fn json_frames_get_symbolized_array() {
        let s = r#"{"kind":"double-free","alloc":{"frames":["0x2010",8200]},"modules":[{"path":"/gone/libz.so","start":"0x2000","end":"0x4000","bias":"0x2000","build_id":null}]}"#;
        let out = symbolize_report_with(s, &none, &[]);
        let v: Value = serde_json::from_str(&out).unwrap();
        let sym = v["alloc"]["symbolized"].as_array().unwrap();
        assert_eq!(sym.len(), 2);
        assert_eq!(sym[0]["text"], "libz.so+0x10");
        assert_eq!(sym[1]["module_offset"], "0x8");
    }

    #[test]
    fn module_json_roundtrip() {
        let m = Module::parse_line("module start=0x10 end=0x20 bias=0x0 build-id=abcd path=/a b/c")
            .unwrap();
        let v: Value = serde_json::from_str(&module_json(&m)).unwrap();
        assert_eq!(module_from_json(&v), Some(m));
    }
}
