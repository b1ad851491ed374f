//! The module rewrite that gives each instance its own memory and table limits, done once per
//! module before V8 compiles it.
//!
//! V8 has no per-instance limits, and it does not say when memory grows. So, on bytes
//! [`wasmux_abi::validate()`] has accepted:
//!
//! 1. **Memory provided from outside.** The module's memory definition becomes an import of
//!    the same type ([`MEMORY_MODULE`].[`MEMORY_NAME`]); each instance provides a
//!    `WebAssembly.Memory` whose maximum is the smaller of the declared maximum and its limit,
//!    and V8 refuses growth past it (`memory.grow` returns -1). The module keeps a single
//!    memory, index 0 either way.
//! 2. **A memory growth hook.** Every `memory.grow` becomes a call to an appended function that
//!    grows memory and then calls entry 0 of an appended, exported table ([`HOOK_TABLE`]) with
//!    the requested pages, the result and the new size; the bridge puts a host function there.
//!    The host learns of refusals (a trap after one is
//!    [`TrapKind::MemoryLimit`](wasmux_abi::TrapKind), as on the other engines) and of every
//!    change of memory, so a host call re-reads the memory's base and size only after growth.
//! 3. **A table budget.** Every `table.grow` on table `t` becomes a call to an appended
//!    function that adds up the sizes of all the module's tables and grows `t` only if the
//!    total stays within the value of an appended, exported mutable global ([`TABLE_LIMIT`]),
//!    and returns -1 otherwise, as `table.grow` does when it fails. The bridge sets the global
//!    to the instance's [`Limits::max_table_elements`](wasmux_abi::Limits) (it starts at 0, so
//!    nothing grows before it is set). This is pure wasm: no host call. `table.grow` is the
//!    only way a table changes size (tables cannot be imported, and no JavaScript runs), so
//!    with the initial sizes checked at instantiation the total never passes the limit.
//! 4. **The start function deferred.** The start section is removed and its function exported
//!    as [`START`]; the bridge calls it once the hook and the budget are in place, as the last
//!    step of instantiation, which is where the start function runs anyway (after element and
//!    data segments).
//!
//! Everything is appended (types, functions, a table, a global, exports) or replaced in place
//! (`memory.grow` and `table.grow` by `call`), so no existing index changes: calls, element
//! segments, exports and the name section stay valid byte for byte. Guest code cannot reach
//! the appended items: the original bytes were validated without them, so no instruction,
//! segment or export of the module refers to an index past its own, and the host resolves
//! exports from the original bytes only. A valid module the rewrite cannot handle is refused
//! (the limits would not hold otherwise).

use std::collections::BTreeMap;
use std::ops::Range;

use wasmparser::{Operator, Parser, Payload, RefType, TypeRef, WasmFeatures};

/// Import module name of the memory the bridge provides.
pub(crate) const MEMORY_MODULE: &str = "wasmux:v8";
/// Import name of the memory the bridge provides.
pub(crate) const MEMORY_NAME: &str = "memory";
/// Export name of the growth hook's table.
pub(crate) const HOOK_TABLE: &str = "wasmux:v8:grow-hook";
/// Export name of the global holding the table budget.
pub(crate) const TABLE_LIMIT: &str = "wasmux:v8:table-limit";
/// Export name of the deferred start function.
pub(crate) const START: &str = "wasmux:v8:start";

/// The module's own memory, as declared (always provided by the bridge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemoryDecl {
    /// Initial size in pages.
    pub(crate) initial: u32,
    /// Declared maximum in pages.
    pub(crate) maximum: Option<u32>,
}

/// A rewritten module.
#[derive(Debug)]
pub(crate) struct Rewritten {
    pub(crate) bytes: Vec<u8>,
    /// The memory the bridge provides, if the module defines one.
    pub(crate) memory: Option<MemoryDecl>,
    /// Whether the growth hook is installed (the module grows memory somewhere).
    pub(crate) grow_hook: bool,
    /// Whether the table budget global exists (the module grows a table somewhere).
    pub(crate) table_limit: bool,
    /// Whether the start function is exported as [`START`] for the bridge to call.
    pub(crate) start: bool,
}

// Section ids.
const TYPE: u8 = 1;
const IMPORT: u8 = 2;
const FUNCTION: u8 = 3;
const TABLE: u8 = 4;
const MEMORY: u8 = 5;
const GLOBAL: u8 = 6;
const EXPORT: u8 = 7;
const START_SECTION: u8 = 8;
const CODE: u8 = 10;

// Export kinds.
const KIND_FUNC: u8 = 0x00;
const KIND_TABLE: u8 = 0x01;
const KIND_MEMORY: u8 = 0x02;
const KIND_GLOBAL: u8 = 0x03;

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

/// A vector section's payload with `added` entries appended.
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

/// An instruction the rewrite replaces with a call.
#[derive(Debug, Clone, Copy)]
enum Grow {
    Memory,
    Table(u32),
}

/// A function body's contents and the growth instructions in it.
type Body = (Range<usize>, Vec<(Range<usize>, Grow)>);

/// What the rewrite needs to know about the module.
#[derive(Default)]
struct Scan {
    types: u32,
    funcs: u32,
    globals: u32,
    /// Element type of every table (imported or defined), in index order.
    tables: Vec<RefType>,
    memory: Option<MemoryDecl>,
    start: Option<u32>,
    /// Each function body's contents and its growth instructions.
    bodies: Vec<Body>,
}

fn scan(bytes: &[u8]) -> Result<Scan, String> {
    let mut scan = Scan::default();
    let mut parser = Parser::new(0);
    parser.set_features(WasmFeatures::all());
    let fail = |e: wasmparser::BinaryReaderError| e.to_string();
    for payload in parser.parse_all(bytes) {
        match payload.map_err(fail)? {
            Payload::TypeSection(reader) => {
                for group in reader {
                    scan.types += u32::try_from(group.map_err(fail)?.types().len()).unwrap_or(u32::MAX);
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    match import.map_err(fail)?.ty {
                        TypeRef::Func(_) | TypeRef::FuncExact(_) => scan.funcs += 1,
                        TypeRef::Table(t) => scan.tables.push(t.element_type),
                        TypeRef::Global(_) => scan.globals += 1,
                        TypeRef::Memory(_) | TypeRef::Tag(_) => {}
                    }
                }
            }
            Payload::FunctionSection(reader) => scan.funcs += reader.count(),
            Payload::TableSection(reader) => {
                for table in reader {
                    scan.tables.push(table.map_err(fail)?.ty.element_type);
                }
            }
            Payload::MemorySection(reader) => {
                for memory in reader {
                    let m = memory.map_err(fail)?;
                    if scan.memory.is_some() || m.memory64 || m.shared {
                        return Err("only one plain memory is supported".into());
                    }
                    let pages = |p: u64| u32::try_from(p).map_err(|_| "memory size out of range".to_string());
                    scan.memory =
                        Some(MemoryDecl { initial: pages(m.initial)?, maximum: m.maximum.map(pages).transpose()? });
                }
            }
            Payload::GlobalSection(reader) => scan.globals += reader.count(),
            Payload::StartSection { func, .. } => scan.start = Some(func),
            Payload::CodeSectionEntry(body) => {
                let mut ops = body.get_operators_reader().map_err(fail)?;
                let mut grows = Vec::new();
                while !ops.eof() {
                    let start = ops.original_position();
                    let grow = match ops.read().map_err(fail)? {
                        Operator::MemoryGrow { mem: 0 } => Some(Grow::Memory),
                        Operator::MemoryGrow { .. } => return Err("growth of a second memory".into()),
                        Operator::TableGrow { table } => Some(Grow::Table(table)),
                        _ => None,
                    };
                    if let Some(grow) = grow {
                        grows.push((start..ops.original_position(), grow));
                    }
                }
                scan.bodies.push((body.range(), grows));
            }
            _ => {}
        }
    }
    Ok(scan)
}

/// The memory growth function: `memory.grow`, then the hook in table entry 0 (once set) with
/// the requested pages, the result and the new size in pages.
fn memory_grow_body(note_type: u32, table: u32) -> Vec<u8> {
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

/// The growth function of table `table` (parameters: the initial value and the number of
/// elements): grows it if the sizes of all `tables` tables plus the growth stay within the
/// budget global, otherwise returns -1.
fn table_grow_body(table: u32, tables: u32, budget: u32) -> Vec<u8> {
    let mut code = vec![0x00]; // no locals
    for t in 0..tables {
        code.extend_from_slice(&[0xfc, 0x10]); // table.size
        put_leb(&mut code, t);
        code.push(0xad); // i64.extend_i32_u
        if t > 0 {
            code.push(0x7c); // i64.add
        }
    }
    code.extend_from_slice(&[0x20, 0x01, 0xad, 0x7c]); // local.get 1, i64.extend_i32_u, i64.add
    code.push(0x23); // global.get
    put_leb(&mut code, budget);
    code.extend_from_slice(&[
        0xad, // i64.extend_i32_u
        0x58, // i64.le_u
        0x04, 0x7f, // if (result i32)
        0x20, 0x00, // local.get 0
        0x20, 0x01, // local.get 1
        0xfc, 0x0f, // table.grow
    ]);
    put_leb(&mut code, table);
    code.extend_from_slice(&[0x05, 0x41, 0x7f, 0x0b, 0x0b]); // else i32.const -1 end end
    code
}

/// The value type byte of a table's element type (WebAssembly 2.0: funcref or externref).
fn ref_type_byte(ty: RefType) -> Result<u8, String> {
    if ty == RefType::FUNCREF {
        Ok(0x70)
    } else if ty == RefType::EXTERNREF {
        Ok(0x6f)
    } else {
        Err(format!("unsupported table element type {ty}"))
    }
}

/// Rewrites a module [`wasmux_abi::validate()`] accepted. `Ok(None)` when there is nothing to
/// do (no memory, no growth, no start function); an error when the module cannot be
/// rewritten, in which case it must not be compiled.
pub(crate) fn rewrite(bytes: &[u8]) -> Result<Option<Rewritten>, String> {
    let scan = scan(bytes)?;
    let grows_memory = scan.bodies.iter().any(|(_, g)| g.iter().any(|(_, g)| matches!(g, Grow::Memory)));
    // The tables grown somewhere, each with its growth function (filled in below).
    let mut grown: BTreeMap<u32, u32> = scan
        .bodies
        .iter()
        .flat_map(|(_, g)| g.iter())
        .filter_map(|&(_, g)| match g {
            Grow::Table(t) => Some((t, 0)),
            Grow::Memory => None,
        })
        .collect();
    if scan.memory.is_none() && !grows_memory && grown.is_empty() && scan.start.is_none() {
        return Ok(None);
    }
    let malformed = || "cannot take the module apart".to_string();
    let sections = sections(bytes).ok_or_else(malformed)?;
    let mut ids: Vec<u8> = sections.iter().map(|s| s.id).filter(|&id| rank(id) != 0).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return Err("a repeated section".into());
    }
    let existing = |id: u8| sections.iter().find(|s| s.id == id).map(|s| &bytes[s.payload.clone()]);
    let count = |n: usize| u32::try_from(n).map_err(|_| "too many items".to_string());
    let module_tables = count(scan.tables.len())?;

    // Appended items, in index order.
    let (mut types, mut n_types) = (Vec::new(), 0u32);
    let (mut funcs, mut n_funcs) = (Vec::new(), 0u32);
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    let (mut exports, mut n_exports) = (Vec::new(), 0u32);
    let mut export = |name: &str, kind: u8, index: u32| {
        put_name(&mut exports, name);
        exports.push(kind);
        put_leb(&mut exports, index);
        n_exports += 1;
    };
    let mut new_func = |ty: u32, body: Vec<u8>| {
        put_leb(&mut funcs, ty);
        bodies.push(body);
        n_funcs += 1;
        scan.funcs + n_funcs - 1
    };
    let mut memory_grow = None;
    let mut tables = Vec::new();
    if grows_memory {
        // (i32 i32 i32) -> () for the hook and (i32) -> i32 for the growth function.
        types.extend_from_slice(&[0x60, 0x03, 0x7f, 0x7f, 0x7f, 0x00, 0x60, 0x01, 0x7f, 0x01, 0x7f]);
        let note_type = scan.types + n_types;
        n_types += 2;
        let hook_table = module_tables;
        tables.extend_from_slice(&[0x70, 0x00, 0x01]); // funcref, at least one element
        export(HOOK_TABLE, KIND_TABLE, hook_table);
        memory_grow = Some(new_func(note_type + 1, memory_grow_body(note_type, hook_table)));
    }
    let mut globals = Vec::new();
    if !grown.is_empty() {
        let budget = scan.globals;
        globals.extend_from_slice(&[0x7f, 0x01, 0x41, 0x00, 0x0b]); // (mut i32) (i32.const 0)
        export(TABLE_LIMIT, KIND_GLOBAL, budget);
        for (&table, func) in &mut grown {
            let element = ref_type_byte(*scan.tables.get(table as usize).ok_or_else(malformed)?)?;
            types.extend_from_slice(&[0x60, 0x02, element, 0x7f, 0x01, 0x7f]); // (ref i32) -> i32
            n_types += 1;
            *func = new_func(scan.types + n_types - 1, table_grow_body(table, module_tables, budget));
        }
    }
    if let Some(start) = scan.start {
        export(START, KIND_FUNC, start);
    }

    // New or extended sections, by id.
    let mut replaced: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut dropped = vec![START_SECTION];
    if let Some(memory) = scan.memory {
        let mut import = Vec::new();
        put_name(&mut import, MEMORY_MODULE);
        put_name(&mut import, MEMORY_NAME);
        import.push(KIND_MEMORY);
        import.push(u8::from(memory.maximum.is_some()));
        put_leb(&mut import, memory.initial);
        if let Some(max) = memory.maximum {
            put_leb(&mut import, max);
        }
        replaced.push((IMPORT, append_entries(existing(IMPORT), 1, &import).ok_or_else(malformed)?));
        dropped.push(MEMORY);
    }
    let mut extend = |id: u8, added: u32, entries: &[u8]| -> Result<(), String> {
        if added > 0 {
            replaced.push((id, append_entries(existing(id), added, entries).ok_or_else(malformed)?));
        }
        Ok(())
    };
    extend(TYPE, n_types, &types)?;
    extend(FUNCTION, n_funcs, &funcs)?;
    extend(TABLE, u32::from(!tables.is_empty()), &tables)?;
    extend(GLOBAL, u32::from(!globals.is_empty()), &globals)?;
    extend(EXPORT, n_exports, &exports)?;
    if n_funcs > 0 || scan.bodies.iter().any(|(_, g)| !g.is_empty()) {
        let call_of = |grow: Grow| {
            let func = match grow {
                Grow::Memory => memory_grow,
                Grow::Table(t) => grown.get(&t).copied(),
            };
            let mut call = vec![0x10];
            put_leb(&mut call, func?);
            Some(call)
        };
        let mut code = Vec::new();
        put_len(&mut code, scan.bodies.len() + bodies.len()).ok_or_else(malformed)?;
        for (body, grows) in &scan.bodies {
            let mut new = Vec::with_capacity(body.len() + grows.len() * 4);
            let mut at = body.start;
            for (range, grow) in grows {
                new.extend_from_slice(&bytes[at..range.start]);
                new.extend_from_slice(&call_of(*grow).ok_or_else(malformed)?);
                at = range.end;
            }
            new.extend_from_slice(&bytes[at..body.end]);
            put_len(&mut code, new.len()).ok_or_else(malformed)?;
            code.extend_from_slice(&new);
        }
        for body in &bodies {
            put_len(&mut code, body.len()).ok_or_else(malformed)?;
            code.extend_from_slice(body);
        }
        replaced.push((CODE, code));
    }

    // Emit: replaced sections in place of the old ones, new ones where the order puts them,
    // dropped ones left out, everything else (custom sections included) as it was.
    let mut out = Vec::with_capacity(bytes.len() + 512);
    out.extend_from_slice(&bytes[..8]);
    let mut pending: Vec<&(u8, Vec<u8>)> = replaced.iter().filter(|(id, _)| existing(*id).is_none()).collect();
    pending.sort_by_key(|(id, _)| rank(*id));
    let emit = |out: &mut Vec<u8>, id: u8, payload: &[u8]| -> Result<(), String> {
        out.push(id);
        put_len(out, payload.len()).ok_or_else(malformed)?;
        out.extend_from_slice(payload);
        Ok(())
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
            _ if rank(s.id) != 0 && dropped.contains(&s.id) => {}
            _ => out.extend_from_slice(&bytes[s.start..s.payload.end]),
        }
    }
    for (id, payload) in pending {
        emit(&mut out, *id, payload)?;
    }
    Ok(Some(Rewritten {
        bytes: out,
        memory: scan.memory,
        grow_hook: grows_memory,
        table_limit: !grown.is_empty(),
        start: scan.start.is_some(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Imports, defined memories, exports and whether a start section is left, and whether the
    /// module validates with wasmux's features.
    fn summary(bytes: &[u8]) -> (Vec<(String, String)>, usize, Vec<String>, bool, bool) {
        let mut imports = Vec::new();
        let (mut memories, mut exports, mut start) = (0, Vec::new(), false);
        for payload in Parser::new(0).parse_all(bytes) {
            match payload.unwrap() {
                Payload::ImportSection(r) => {
                    for i in r.into_imports() {
                        let i = i.unwrap();
                        imports.push((i.module.to_owned(), i.name.to_owned()));
                    }
                }
                Payload::MemorySection(r) => memories += r.count() as usize,
                Payload::ExportSection(r) => exports.extend(r.into_iter().map(|e| e.unwrap().name.to_owned())),
                Payload::StartSection { .. } => start = true,
                _ => {}
            }
        }
        let valid =
            wasmparser::Validator::new_with_features(wasmux_abi::validate::features()).validate_all(bytes).is_ok();
        (imports, memories, exports, start, valid)
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
        let out = rewrite(&module).unwrap().unwrap();
        assert_eq!(out.memory, Some(MemoryDecl { initial: 2, maximum: Some(5) }));
        assert!(out.grow_hook && !out.table_limit && !out.start);
        let (imports, memories, exports, _, valid) = summary(&out.bytes);
        assert_eq!(imports, [("env".into(), "f".into()), (MEMORY_MODULE.into(), MEMORY_NAME.into())]);
        assert_eq!((memories, valid), (0, true));
        assert_eq!(exports, ["memory", "g", "h", HOOK_TABLE]);
    }

    #[test]
    fn sections_are_added_in_order() {
        // No import, table or export section; a custom section in between.
        let module = wasm(
            r#"(module (type (func)) (memory 1) (@custom "c" (after type) "") (func (type 0) (drop (memory.grow (i32.const 0)))))"#,
        );
        let out = rewrite(&module).unwrap().unwrap();
        let (imports, memories, exports, _, valid) = summary(&out.bytes);
        assert_eq!((imports.len(), memories, exports.len(), valid), (1, 0, 1, true));
    }

    #[test]
    fn table_growth_goes_through_the_budget() {
        let module = wasm(
            r#"(module
              (global $g (mut i32) (i32.const 7))
              (table $a 1 funcref)
              (table $b 2 externref)
              (func (export "f") (result i32)
                (drop (table.grow $a (ref.null func) (i32.const 1)))
                (table.grow $b (ref.null extern) (global.get $g)))
              (start 0))"#,
        );
        let out = rewrite(&module).unwrap().unwrap();
        assert!(!out.grow_hook && out.table_limit && out.start && out.memory.is_none());
        let (imports, _, exports, start, valid) = summary(&out.bytes);
        assert!(imports.is_empty() && !start && valid);
        assert_eq!(exports, ["f", TABLE_LIMIT, START]);
        // No table.grow is left outside the appended functions.
        let mut grows = 0;
        for payload in Parser::new(0).parse_all(&out.bytes) {
            if let Payload::CodeSectionEntry(body) = payload.unwrap() {
                let mut ops = body.get_operators_reader().unwrap();
                let mut here = 0;
                while !ops.eof() {
                    here += usize::from(matches!(ops.read().unwrap(), Operator::TableGrow { .. }));
                }
                grows += here;
                assert!(here <= 1);
            }
        }
        assert_eq!(grows, 2);
    }

    #[test]
    fn nothing_to_do() {
        assert!(rewrite(&wasm("(module)")).unwrap().is_none());
        assert!(rewrite(&wasm("(module (table 1 funcref) (func (drop (table.size 0))))")).unwrap().is_none());
        let out = rewrite(&wasm(r#"(module (memory 1) (func (drop (memory.size))))"#)).unwrap().unwrap();
        assert!(!out.grow_hook);
        let (imports, memories, exports, _, valid) = summary(&out.bytes);
        assert_eq!((imports.len(), memories, exports.len(), valid), (1, 0, 0, true));
    }

    #[test]
    fn refuses_what_it_cannot_handle() {
        assert!(rewrite(&wasm("(module (memory 1 2 shared))")).is_err());
        assert!(rewrite(b"\0asm\x01\0\0\0\x05\x10").is_err());
        assert!(rewrite(b"garbage").is_err());
    }
}
