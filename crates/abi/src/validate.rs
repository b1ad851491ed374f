//! One validation verdict for every engine.
//!
//! Each engine validates modules itself, with its own set of wasm proposals, its own limits
//! and, for the V8 backend, on bytes the backend has already rewritten. Left alone, the same
//! bytes could load on one engine and be refused (or crash the compiler) on another. Every
//! sandboxed backend therefore runs [`validate`] on the original bytes before its engine sees
//! them, so the verdict is wasmux's and the same everywhere:
//!
//! - **Wasm features:** the WebAssembly 2.0 feature set (mutable globals, sign extension,
//!   non-trapping float-to-int, multi-value, bulk memory, reference types) without SIMD,
//!   which wasmer's singlepass compiler cannot compile. Later proposals (multi-memory,
//!   threads, tail calls, exceptions, memory64, GC, ...) are refused with the feature named.
//!   SDK-built filters (Rust, Go, TinyGo, AssemblyScript, C++) use nothing beyond this.
//! - **Structure** ([`ModuleShape`]): wasmparser's implementation limits (shared by V8: a
//!   million functions, 7.6 MB per function body, 50 000 locals, ...) plus a bound on control
//!   nesting ([`MAX_NESTING`]), whose depth drives compile time and memory on the optimizing
//!   compilers, and on the table elements the module declares ([`MAX_TABLE_ELEMENTS`]).
//!
//! - **Names:** exports and imports whose name begins with `wasmux:` are reserved for what the
//!   backends add to a module (the V8 backend's hooks), and refused.
//!
//! Compile time itself: wasmi translates lazily (compiling is validating, about linear in
//! size; translation happens on first call, under the callback deadline). V8 returns from a
//! compile once its baseline compiler is done and optimizes in the background. wasmtime and
//! wasmer compile ahead of time and cannot be interrupted: the host bounds their work by the
//! module size ([`Limits::max_module_bytes`](crate::Limits)) and the shape above, and stops
//! waiting at [`Limits::compile_deadline`](crate::Limits) (the `wasmux` crate's loader),
//! leaving the compile to finish in the background.

use wasmparser::{Parser, Payload, Validator, WasmFeatures};

use crate::{Error, Result};

/// Deepest control nesting (`block`, `loop`, `if` inside each other) in one function. A 5 MB
/// Go reactor nests 528 deep at most; wasmer's cranelift takes 0.7 s and 101 MiB for 9 999.
pub const MAX_NESTING: u32 = 10_000;

/// Most functions a module may define. A 5 MB Go reactor defines 2 610, an SDK-built Rust
/// filter about 450; wasmtime holds about 6 KiB per function while it compiles (50 000 empty
/// functions: 331 MiB of peak RSS), wasmer's singlepass keeps 2.1 KiB per function.
pub const MAX_FUNCTIONS: u32 = 30_000;

/// Largest function body, in bytes. A 5 MB Go reactor's largest is 54 KB; cranelift needs about
/// 115 bytes of RSS per body byte (a 0.7 MB function: 89 MiB).
pub const MAX_FUNCTION_BYTES: usize = 1 << 20;

/// Most `br_table` targets in one function (cranelift needs about 600 bytes per target while it
/// compiles the function: 250 000 targets took 156 MiB).
pub const MAX_BR_TABLE_TARGETS_PER_FUNCTION: u64 = 100_000;

/// Most `br_table` targets over a module. Go's compiler dispatches every function through one:
/// a 5 MB Go reactor has 107 712 targets; wasmer's cranelift took
/// 239 MiB for 1 000 000 spread over 8 functions.
pub const MAX_BR_TABLE_TARGETS: u64 = 1_000_000;

/// Most table elements a module may declare, over all its tables (initial sizes).
pub const MAX_TABLE_ELEMENTS: u64 = 10_000_000;

/// The prefix of export and import names the backends reserve for themselves.
pub const RESERVED: &str = "wasmux:";

/// The wasm features wasmux accepts on every engine.
pub fn features() -> WasmFeatures {
    WasmFeatures::WASM2.difference(WasmFeatures::SIMD)
}

/// What [`validate`] learned about a module's shape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModuleShape {
    /// Functions defined by the module (imports excluded).
    pub functions: u32,
    /// The largest function body, in bytes.
    pub largest_function: usize,
    /// The deepest control nesting in any function.
    pub max_nesting: u32,
    /// Memories (imported or defined).
    pub memories: u32,
    /// Tables (imported or defined).
    pub tables: u32,
    /// Table elements declared, over all tables (initial sizes).
    pub table_elements: u64,
    /// `br_table` targets over all functions.
    pub br_table_targets: u64,
}

fn invalid(engine: &'static str, message: impl Into<String>) -> Error {
    Error::Compile { engine, message: message.into() }
}

/// Validates `bytes` as wasmux does for every engine, reporting errors as `engine`'s.
///
/// # Errors
/// [`Error::Compile`] naming the problem and its offset: malformed bytes, a feature outside
/// [`features`], or a shape past the limits.
pub fn validate(engine: &'static str, bytes: &[u8]) -> Result<ModuleShape> {
    let mut validator = Validator::new_with_features(features());
    let mut shape = ModuleShape::default();
    let mut allocs = wasmparser::FuncValidatorAllocations::default();
    let fail = |e: wasmparser::BinaryReaderError| invalid(engine, format!("invalid module: {e}"));
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(fail)?;
        match &payload {
            Payload::ImportSection(imports) => {
                for import in imports.clone().into_imports() {
                    let import = import.map_err(fail)?;
                    if import.module.starts_with(RESERVED) || import.name.starts_with(RESERVED) {
                        return Err(invalid(
                            engine,
                            format!(
                                "import `{}.{}`: names beginning with `{RESERVED}` are reserved",
                                import.module, import.name
                            ),
                        ));
                    }
                    match import.ty {
                        wasmparser::TypeRef::Memory(_) => shape.memories += 1,
                        wasmparser::TypeRef::Table(t) => {
                            shape.tables += 1;
                            shape.table_elements = shape.table_elements.saturating_add(t.initial);
                        }
                        _ => {}
                    }
                }
            }
            Payload::MemorySection(m) => shape.memories += m.count(),
            Payload::ExportSection(exports) => {
                for export in exports.clone() {
                    let name = export.map_err(fail)?.name;
                    if name.starts_with(RESERVED) {
                        return Err(invalid(
                            engine,
                            format!("export `{name}`: names beginning with `{RESERVED}` are reserved"),
                        ));
                    }
                }
            }
            Payload::TableSection(tables) => {
                for table in tables.clone() {
                    let t = table.map_err(fail)?;
                    shape.tables += 1;
                    shape.table_elements = shape.table_elements.saturating_add(t.ty.initial);
                }
            }
            _ => {}
        }
        if shape.table_elements > MAX_TABLE_ELEMENTS {
            return Err(invalid(
                engine,
                format!(
                    "the module declares {} table elements, more than the {MAX_TABLE_ELEMENTS} wasmux accepts",
                    shape.table_elements
                ),
            ));
        }
        match validator.payload(&payload).map_err(fail)? {
            wasmparser::ValidPayload::Func(func, body) => {
                if shape.functions >= MAX_FUNCTIONS {
                    return Err(invalid(
                        engine,
                        format!("the module defines more than the {MAX_FUNCTIONS} functions wasmux accepts"),
                    ));
                }
                if body.range().len() > MAX_FUNCTION_BYTES {
                    return Err(invalid(
                        engine,
                        format!(
                            "function {} has {} bytes of code, more than the {MAX_FUNCTION_BYTES} wasmux accepts",
                            func.index,
                            body.range().len()
                        ),
                    ));
                }
                let mut func = func.into_validator(std::mem::take(&mut allocs));
                let mut reader = body.get_binary_reader();
                func.read_locals(&mut reader).map_err(fail)?;
                reader.set_features(features());
                let mut deepest = 0;
                let mut in_function = 0u64;
                while !reader.eof() {
                    let at = reader.original_position();
                    // `br_table` is opcode 0x0e followed by its target count.
                    let mut peek = reader.clone();
                    if peek.read_u8().ok() == Some(0x0e)
                        && let Ok(targets) = peek.read_var_u32()
                    {
                        shape.br_table_targets = shape.br_table_targets.saturating_add(u64::from(targets));
                        in_function = in_function.saturating_add(u64::from(targets));
                        if in_function > MAX_BR_TABLE_TARGETS_PER_FUNCTION
                            || shape.br_table_targets > MAX_BR_TABLE_TARGETS
                        {
                            return Err(invalid(
                                engine,
                                format!(
                                    "function {} brings the module to {} br_table targets ({in_function} in the function); wasmux accepts {MAX_BR_TABLE_TARGETS_PER_FUNCTION} per function and {MAX_BR_TABLE_TARGETS} in all",
                                    func.index(),
                                    shape.br_table_targets
                                ),
                            ));
                        }
                    }
                    reader.visit_operator(&mut func.visitor(at)).map_err(fail)?.map_err(fail)?;
                    deepest = deepest.max(func.control_stack_height());
                    if deepest > MAX_NESTING {
                        return Err(invalid(
                            engine,
                            format!(
                                "function {} nests control instructions deeper than the {MAX_NESTING} levels wasmux accepts (at offset {at:#x})",
                                func.index()
                            ),
                        ));
                    }
                }
                reader.finish_expression(&func.visitor(reader.original_position())).map_err(fail)?;
                shape.functions += 1;
                shape.largest_function = shape.largest_function.max(body.range().len());
                shape.max_nesting = shape.max_nesting.max(deepest);
                allocs = func.into_allocations();
            }
            wasmparser::ValidPayload::End(_) => break,
            _ => {}
        }
    }
    Ok(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wasm(parts: &[&[u8]]) -> Vec<u8> {
        let mut v = b"\0asm\x01\0\0\0".to_vec();
        for p in parts {
            v.extend_from_slice(p);
        }
        v
    }

    #[test]
    fn accepts_the_empty_module_and_reports_shape() {
        let shape = validate("test", &wasm(&[])).unwrap();
        assert_eq!(shape, ModuleShape::default());
    }

    #[test]
    fn refuses_garbage_and_names_the_engine() {
        let e = validate("someengine", b"not wasm").unwrap_err().to_string();
        assert!(e.contains("someengine") && e.contains("invalid module"), "{e}");
    }

    #[test]
    fn refuses_two_memories() {
        // Memory section (id 5): two memories of one page.
        let bytes = wasm(&[&[5, 5, 2, 0, 1, 0, 1]]);
        let e = validate("test", &bytes).unwrap_err().to_string();
        assert!(e.contains("multiple memories"), "{e}");
    }

    fn leb(mut n: u32, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn section(id: u8, payload: &[u8]) -> Vec<u8> {
        let mut s = vec![id];
        leb(payload.len() as u32, &mut s);
        s.extend_from_slice(payload);
        s
    }

    /// One function `() -> ()` whose body nests `depth` empty blocks.
    fn nested(depth: u32) -> Vec<u8> {
        let mut body = vec![0u8]; // no locals
        for _ in 0..depth {
            body.extend_from_slice(&[0x02, 0x40]);
        }
        body.extend(std::iter::repeat_n(0x0b, depth as usize + 1));
        let mut code = vec![1u8];
        leb(body.len() as u32, &mut code);
        code.extend_from_slice(&body);
        wasm(&[&section(1, &[1, 0x60, 0, 0]), &section(3, &[1, 0]), &section(10, &code)])
    }

    #[test]
    fn bounds_control_nesting() {
        let shape = validate("test", &nested(MAX_NESTING - 1)).unwrap();
        assert_eq!((shape.functions, shape.max_nesting), (1, MAX_NESTING));
        let e = validate("test", &nested(MAX_NESTING)).unwrap_err().to_string();
        assert!(e.contains("nests control instructions deeper"), "{e}");
    }

    /// `functions` functions `() -> ()` with `body` (after the local count) each.
    fn functions(functions: u32, body: &[u8]) -> Vec<u8> {
        let mut func_section = Vec::new();
        leb(functions, &mut func_section);
        func_section.extend(std::iter::repeat_n(0u8, functions as usize));
        let mut code = Vec::new();
        leb(functions, &mut code);
        for _ in 0..functions {
            leb(body.len() as u32 + 1, &mut code);
            code.push(0);
            code.extend_from_slice(body);
        }
        wasm(&[&section(1, &[1, 0x60, 0, 0]), &section(3, &func_section), &section(10, &code)])
    }

    #[test]
    fn bounds_functions_sizes_and_branch_tables() {
        assert_eq!(validate("test", &functions(MAX_FUNCTIONS, &[0x0b])).unwrap().functions, MAX_FUNCTIONS);
        let e = validate("test", &functions(MAX_FUNCTIONS + 1, &[0x0b])).unwrap_err().to_string();
        assert!(e.contains("functions"), "{e}");
        // One function of nops just over the size bound.
        let mut big = vec![0x01; MAX_FUNCTION_BYTES];
        big.push(0x0b);
        let e = validate("test", &functions(1, &big)).unwrap_err().to_string();
        assert!(e.contains("bytes of code"), "{e}");
        // `block (br_table 0 0 ... 0) end`, per function and over the module.
        let table = |n: u32| {
            let mut b = vec![0x02, 0x40, 0x41, 0x00, 0x0e];
            leb(n, &mut b);
            b.extend(std::iter::repeat_n(0u8, n as usize + 1));
            b.extend_from_slice(&[0x0b, 0x0b]);
            b
        };
        let shape = validate("test", &functions(10, &table(100_000))).unwrap();
        assert_eq!(shape.br_table_targets, 1_000_000);
        let e = validate("test", &functions(1, &table(100_001))).unwrap_err().to_string();
        assert!(e.contains("br_table"), "{e}");
        let e = validate("test", &functions(11, &table(100_000))).unwrap_err().to_string();
        assert!(e.contains("br_table"), "{e}");
    }

    #[test]
    fn refuses_simd_and_later_proposals() {
        // `(func (drop (v128.const i64x2 0 0)))`.
        let mut body = vec![0u8, 0xfd, 0x0c];
        body.extend_from_slice(&[0; 16]);
        body.extend_from_slice(&[0x1a, 0x0b]);
        let mut code = vec![1u8];
        leb(body.len() as u32, &mut code);
        code.extend_from_slice(&body);
        let bytes = wasm(&[&section(1, &[1, 0x60, 0, 0]), &section(3, &[1, 0]), &section(10, &code)]);
        let e = validate("test", &bytes).unwrap_err().to_string();
        assert!(e.contains("invalid module"), "{e}");
    }

    #[test]
    fn refuses_reserved_names() {
        // Export section (id 7): one function export named "wasmux:x" of function 0.
        let mut exports = vec![1u8, 8];
        exports.extend_from_slice(b"wasmux:x");
        exports.extend_from_slice(&[0, 0]);
        let body = [1u8, 2, 0, 0x0b];
        let bytes =
            wasm(&[&section(1, &[1, 0x60, 0, 0]), &section(3, &[1, 0]), &section(7, &exports), &section(10, &body)]);
        let e = validate("test", &bytes).unwrap_err().to_string();
        assert!(e.contains("reserved"), "{e}");
    }

    #[test]
    fn refuses_huge_tables() {
        // Table section (id 4): one funcref table of 20 000 000 elements (LEB128).
        let mut section = vec![4u8, 0, 1, 0x70, 0];
        let mut n = 20_000_000u32;
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                section.push(byte);
                break;
            }
            section.push(byte | 0x80);
        }
        section[1] = (section.len() - 2) as u8;
        let e = validate("test", &wasm(&[&section])).unwrap_err().to_string();
        assert!(e.contains("table"), "{e}");
    }
}
