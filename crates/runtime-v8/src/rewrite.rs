//! The two module rewrites that give each instance its own memory limit, done once per module
//! before V8 compiles it.
//!
//! 1. **Memory provided from outside.** V8 has no per-instance limit for a memory the module
//!    defines, so the module's memory definition becomes an import of the same type
//!    ([`MEMORY_MODULE`].[`MEMORY_NAME`]); each instance provides a `WebAssembly.Memory` whose
//!    maximum is the smaller of the declared maximum and its limit, and V8 refuses growth past
//!    it (`memory.grow` returns -1). The module keeps a single memory, index 0 either way.
//! 2. **A growth hook.** V8 does not say when memory grows or when it refuses to, and the host
//!    wants both: a refusal followed by a trap is
//!    [`TrapKind::MemoryLimit`](wasmux_abi::TrapKind) on the other engines, and knowing when
//!    memory changes spares re-reading its base and size on every host call. Every
//!    `memory.grow` becomes a call to an appended function that grows memory and then calls
//!    entry 0 of an appended, exported table with the requested pages, the result and the
//!    new size; the bridge puts a host function there after instantiation.
//!
//! Everything is appended (a type, a function, a table, an export) or replaced in place
//! (`memory.grow` by `call`), so no existing index changes: calls, element segments, exports
//! and the name section stay valid byte for byte. A module the scanner cannot read (a
//! proposal wasmparser does not know) gets the first rewrite only; V8 validates the result.

use std::ops::Range;

use wasmparser::{Operator, Parser, Payload, TypeRef, WasmFeatures};

/// Import module name of the memory the bridge provides.
pub(crate) const MEMORY_MODULE: &str = "wasmux:v8";
/// Import name of the memory the bridge provides.
pub(crate) const MEMORY_NAME: &str = "memory";
/// Export name of the growth hook's table.
pub(crate) const HOOK_TABLE: &str = "wasmux:v8:grow-hook";

/// The module's own memory, as declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemoryDecl {
    /// Initial size in pages.
    pub(crate) initial: u32,
    /// Declared maximum in pages.
    pub(crate) maximum: Option<u32>,
    /// Whether the definition was turned into an import (the bridge provides it). When
    /// `false` (shared or 64-bit memories), the limit can only be checked against the declared
    /// maximum.
    pub(crate) provided: bool,
}

/// A rewritten module.
#[derive(Debug)]
pub(crate) struct Rewritten {
    pub(crate) bytes: Vec<u8>,
    pub(crate) memory: MemoryDecl,
    /// Whether the growth hook is installed (the module grows memory somewhere).
    pub(crate) grow_hook: bool,
    /// Whether every `memory.grow` of the module is known: it goes through the hook, or there
    /// is none. Memory then changes only when the hook says so (after start-up).
    pub(crate) grow_tracked: bool,
}

// Section ids.
const TYPE: u8 = 1;
const IMPORT: u8 = 2;
const FUNCTION: u8 = 3;
const TABLE: u8 = 4;
const MEMORY: u8 = 5;
const EXPORT: u8 = 7;
const CODE: u8 = 10;

/// The position of a section id in the order the binary format requires (custom: 0).
fn rank(id: u8) -> u8 {
    match id {
        1..=5 => id,
        13 => 6, // tag
        6..=9 => id + 1,
        12 => 11, // data count
        10 => 12,
        11 => 13,
        _ => 0,
    }
}

/// One section: its id, where its header starts, and its payload.
struct Section {
    id: u8,
    start: usize,
    payload: Range<usize>,
}

/// Reads an unsigned LEB128 number of at most 32 bits.
fn leb_u32(bytes: &[u8], pos: &mut usize) -> Option<u32> {
    let mut result = 0u64;
    for shift in (0..35).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        result |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return u32::try_from(result).ok();
        }
    }
    None
}

fn put_leb(out: &mut Vec<u8>, mut v: u32) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) -> Option<()> {
    put_leb(out, u32::try_from(len).ok()?);
    Some(())
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    put_leb(out, name.len() as u32);
    out.extend_from_slice(name.as_bytes());
}

fn sections(bytes: &[u8]) -> Option<Vec<Section>> {
    if bytes.get(..8)? != b"\0asm\x01\0\0\0" {
        return None;
    }
    let mut pos = 8;
    let mut out = Vec::new();
    while pos < bytes.len() {
        let start = pos;
        let id = bytes[pos];
        pos += 1;
        let len = leb_u32(bytes, &mut pos)? as usize;
        let end = pos.checked_add(len).filter(|&e| e <= bytes.len())?;
        out.push(Section { id, start, payload: pos..end });
        pos = end;
    }
    Some(out)
}

/// A vector section's payload with `extra` entries appended.
fn append_entries(old: Option<&[u8]>, added: u32, entries: &[u8]) -> Option<Vec<u8>> {
    let mut payload = Vec::new();
    match old {
        Some(old) => {
            let mut p = 0;
            let count = leb_u32(old, &mut p)?;
            put_leb(&mut payload, count.checked_add(added)?);
            payload.extend_from_slice(&old[p..]);
        }
        None => put_leb(&mut payload, added),
    }
    payload.extend_from_slice(entries);
    Some(payload)
}

/// What the growth hook needs to know about the module.
#[derive(Default)]
struct Scan {
    types: u32,
    funcs: u32,
    tables: u32,
    /// Each function body's contents and its `memory.grow` instructions.
    bodies: Vec<(Range<usize>, Vec<Range<usize>>)>,
}

fn scan(bytes: &[u8]) -> wasmparser::Result<Scan> {
    let mut scan = Scan::default();
    let mut parser = Parser::new(0);
    parser.set_features(WasmFeatures::all());
    for payload in parser.parse_all(bytes) {
        match payload? {
            Payload::TypeSection(reader) => {
                for group in reader {
                    scan.types += u32::try_from(group?.types().len()).unwrap_or(u32::MAX);
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    match import?.ty {
                        TypeRef::Func(_) | TypeRef::FuncExact(_) => scan.funcs += 1,
                        TypeRef::Table(_) => scan.tables += 1,
                        _ => {}
                    }
                }
            }
            Payload::FunctionSection(reader) => scan.funcs += reader.count(),
            Payload::TableSection(reader) => scan.tables += reader.count(),
            Payload::CodeSectionEntry(body) => {
                let mut ops = body.get_operators_reader()?;
                let mut grows = Vec::new();
                while !ops.eof() {
                    let start = ops.original_position();
                    if let Operator::MemoryGrow { mem: 0 } = ops.read()? {
                        grows.push(start..ops.original_position());
                    }
                }
                scan.bodies.push((body.range(), grows));
            }
            _ => {}
        }
    }
    Ok(scan)
}

/// The appended function: `memory.grow`, then the hook in table entry 0 (once set) with the
/// requested pages, the result and the new size in pages.
fn grow_body(note_type: u32, table: u32) -> Vec<u8> {
    let mut code = vec![
        0x01, 0x01, 0x7f, // one i32 local
        0x20, 0x00, // local.get 0 (delta)
        0x40, 0x00, // memory.grow 0
        0x21, 0x01, // local.set 1
        0x41, 0x00, // i32.const 0
        0x25, // table.get
    ];
    put_leb(&mut code, table);
    code.extend_from_slice(&[
        0xd1, // ref.is_null
        0x45, // i32.eqz
        0x04, 0x40, // if
        0x20, 0x00, // local.get 0
        0x20, 0x01, // local.get 1
        0x3f, 0x00, // memory.size 0
        0x41, 0x00, // i32.const 0
        0x11, // call_indirect
    ]);
    put_leb(&mut code, note_type);
    put_leb(&mut code, table);
    code.extend_from_slice(&[0x0b, 0x20, 0x01, 0x0b]); // end local.get 1 end
    code
}

/// Applies both rewrites. `None` when the module defines no plain memory (nothing to do) or
/// its bytes cannot be taken apart (V8 then compiles them unchanged and reports any error).
pub(crate) fn rewrite(bytes: &[u8]) -> Option<Rewritten> {
    let sections = sections(bytes)?;
    let memory = sections.iter().find(|s| s.id == MEMORY)?;
    let mut ids: Vec<u8> = sections.iter().map(|s| s.id).filter(|&id| rank(id) != 0).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return None; // a repeated section: let V8 say what is wrong
    }
    // The memory section: exactly one entry with plain (not shared, not 64-bit) limits.
    let payload = &bytes[memory.payload.clone()];
    let mut pos = 0;
    if leb_u32(payload, &mut pos)? != 1 {
        return None;
    }
    let limits = &payload[pos..];
    let flags = *payload.get(pos)?;
    pos += 1;
    if flags > 1 {
        return None;
    }
    let initial = leb_u32(payload, &mut pos)?;
    let maximum = if flags == 1 { Some(leb_u32(payload, &mut pos)?) } else { None };
    if pos != payload.len() {
        return None;
    }
    let decl = MemoryDecl { initial, maximum, provided: true };

    // The growth hook, if the module grows memory at all and can be scanned.
    let scan = scan(bytes).ok();
    let grow_tracked = scan.is_some();
    let scan = scan.filter(|s| s.bodies.iter().any(|(_, grows)| !grows.is_empty()));
    let hook = scan.as_ref().map(|s| (s.types, s.types + 1, s.funcs, s.tables)); // note, grow type, func, table

    // New or extended sections, by id.
    let existing = |id: u8| sections.iter().find(|s| s.id == id).map(|s| &bytes[s.payload.clone()]);
    let mut replaced: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut import = Vec::new();
    put_name(&mut import, MEMORY_MODULE);
    put_name(&mut import, MEMORY_NAME);
    import.push(0x02);
    import.extend_from_slice(limits);
    replaced.push((IMPORT, append_entries(existing(IMPORT), 1, &import)?));
    if let (Some(scan), Some((note_type, grow_type, grow_func, table))) = (&scan, hook) {
        // (i32 i32 i32) -> () and (i32) -> i32
        let types = [0x60, 0x03, 0x7f, 0x7f, 0x7f, 0x00, 0x60, 0x01, 0x7f, 0x01, 0x7f];
        replaced.push((TYPE, append_entries(existing(TYPE), 2, &types)?));
        let mut func = Vec::new();
        put_leb(&mut func, grow_type);
        replaced.push((FUNCTION, append_entries(existing(FUNCTION), 1, &func)?));
        replaced.push((TABLE, append_entries(existing(TABLE), 1, &[0x70, 0x00, 0x01])?));
        let mut export = Vec::new();
        put_name(&mut export, HOOK_TABLE);
        export.push(0x01);
        put_leb(&mut export, table);
        replaced.push((EXPORT, append_entries(existing(EXPORT), 1, &export)?));
        let mut call = vec![0x10];
        put_leb(&mut call, grow_func);
        let mut code = Vec::new();
        put_len(&mut code, scan.bodies.len() + 1)?;
        for (body, grows) in &scan.bodies {
            let mut new = Vec::with_capacity(body.len() + grows.len() * 4);
            let mut at = body.start;
            for grow in grows {
                new.extend_from_slice(&bytes[at..grow.start]);
                new.extend_from_slice(&call);
                at = grow.end;
            }
            new.extend_from_slice(&bytes[at..body.end]);
            put_len(&mut code, new.len())?;
            code.extend_from_slice(&new);
        }
        let shim = grow_body(note_type, table);
        put_len(&mut code, shim.len())?;
        code.extend_from_slice(&shim);
        replaced.push((CODE, code));
    }

    // Emit: replaced sections in place of the old ones, new ones where the order puts them,
    // the memory section dropped.
    let mut out = Vec::with_capacity(bytes.len() + 256);
    out.extend_from_slice(&bytes[..8]);
    let mut pending: Vec<&(u8, Vec<u8>)> = replaced.iter().filter(|(id, _)| existing(*id).is_none()).collect();
    pending.sort_by_key(|(id, _)| rank(*id));
    let emit = |out: &mut Vec<u8>, id: u8, payload: &[u8]| -> Option<()> {
        out.push(id);
        put_len(out, payload.len())?;
        out.extend_from_slice(payload);
        Some(())
    };
    for s in &sections {
        if rank(s.id) != 0 {
            while let Some(next) = pending.first().copied().filter(|(id, _)| rank(*id) < rank(s.id)) {
                emit(&mut out, next.0, &next.1)?;
                pending.remove(0);
            }
        }
        match replaced.iter().find(|(id, _)| *id == s.id) {
            Some((id, payload)) if rank(s.id) != 0 => emit(&mut out, *id, payload)?,
            _ if s.id == MEMORY => {}
            _ => out.extend_from_slice(&bytes[s.start..s.payload.end]),
        }
    }
    for (id, payload) in pending {
        emit(&mut out, *id, payload)?;
    }
    Some(Rewritten { bytes: out, memory: decl, grow_hook: hook.is_some(), grow_tracked })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Imports, defined memories and the hook export of a module, and whether it validates.
    fn summary(bytes: &[u8]) -> (Vec<(String, String)>, usize, bool, bool) {
        let mut imports = Vec::new();
        let (mut memories, mut hook) = (0, false);
        for payload in Parser::new(0).parse_all(bytes) {
            match payload.unwrap() {
                Payload::ImportSection(r) => {
                    for i in r.into_imports() {
                        let i = i.unwrap();
                        imports.push((i.module.to_owned(), i.name.to_owned()));
                    }
                }
                Payload::MemorySection(r) => memories += r.count() as usize,
                Payload::ExportSection(r) => hook |= r.into_iter().any(|e| e.unwrap().name == HOOK_TABLE),
                _ => {}
            }
        }
        let valid = wasmparser::Validator::new_with_features(WasmFeatures::all()).validate_all(bytes).is_ok();
        (imports, memories, hook, valid)
    }

    fn wasm(wat: &str) -> Vec<u8> {
        wat::parse_str(wat).unwrap()
    }

    #[test]
    fn memory_becomes_an_import_and_growth_is_hooked() {
        let module = wasm(
            r#"(module
              (import "env" "f" (func))
              (memory (export "memory") 2 5)
              (table 1 funcref)
              (elem (i32.const 0) $g)
              (func $g (export "g") (param i32) (result i32) (memory.grow (local.get 0)))
              (func (export "h") (drop (memory.grow (i32.const 1))) (call 0))
              (data (i32.const 0) "x"))"#,
        );
        let out = rewrite(&module).unwrap();
        assert_eq!(out.memory, MemoryDecl { initial: 2, maximum: Some(5), provided: true });
        assert!(out.grow_hook && out.grow_tracked);
        let (imports, memories, hook, valid) = summary(&out.bytes);
        assert_eq!(imports, [("env".into(), "f".into()), (MEMORY_MODULE.into(), MEMORY_NAME.into())]);
        assert_eq!((memories, hook, valid), (0, true, true));
    }

    #[test]
    fn sections_are_added_in_order() {
        // No import, table or export section; a custom section in between.
        let module = wasm(
            r#"(module (type (func)) (memory 1) (@custom "c" (after type) "") (func (type 0) (drop (memory.grow (i32.const 0)))))"#,
        );
        let out = rewrite(&module).unwrap();
        let (imports, memories, hook, valid) = summary(&out.bytes);
        assert_eq!((imports.len(), memories, hook, valid), (1, 0, true, true));
    }

    #[test]
    fn no_hook_without_growth() {
        let out = rewrite(&wasm(r#"(module (memory 1) (func (drop (memory.size))))"#)).unwrap();
        assert!(!out.grow_hook && out.grow_tracked);
        let (imports, memories, hook, valid) = summary(&out.bytes);
        assert_eq!((imports.len(), memories, hook, valid), (1, 0, false, true));
    }

    #[test]
    fn leaves_other_modules_alone() {
        assert!(rewrite(&wasm("(module)")).is_none());
        assert!(rewrite(&wasm("(module (memory 1 2 shared))")).is_none());
        assert!(rewrite(b"\0asm\x01\0\0\0\x05\x10").is_none());
        assert!(rewrite(b"garbage").is_none());
    }
}
