//! A loaded module, its description, and its linking against the host functions.

use std::ffi::{CStr, CString, c_char};
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use wamrx_sys as sys;
use wasmux_abi::{
    ExportDesc, ExternType, FuncType, HostState, ImportDesc, Limits, Result, ValType, WasmInstance, WasmModule,
    find_host_func,
};

use wasmux_abi::export_table::FuncExport;

use crate::instance::WamrInstance;
use crate::{ENGINE_NAME, Shared, error, rewrite, runtime};

/// The module's own linear memory, as declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemoryDecl {
    /// Initial size in pages.
    pub(crate) initial: u64,
}

/// A module loaded by WAMR, shared by the [`WamrModule`] and every instance made from it.
pub(crate) struct Loaded {
    /// `wasm_module_t`, unloaded when the last holder goes.
    pub(crate) raw: sys::wasm_module_t,
    /// The bytes WAMR loaded from, which it keeps referring to (and may modify) until the
    /// module is unloaded: a heap buffer owned here, never read by Rust after loading.
    buf: NonNull<[u8]>,
    pub(crate) imports: Vec<ImportDesc>,
    pub(crate) exports: Vec<ExportDesc>,
    /// The function exports (and the start function), resolved once for every instance.
    pub(crate) table: Arc<ExportTable>,
    /// Why the module cannot be instantiated: an import no host function satisfies.
    pub(crate) link_error: Option<String>,
    /// The module's memory, if it defines one.
    pub(crate) memory: Option<MemoryDecl>,
    /// Whether the module exports its memory as `memory`, the memory the host sees.
    pub(crate) memory_exported: bool,
    /// Initial table elements over all tables.
    pub(crate) table_elements: u64,
    /// Whether the module has a start function (exported as [`rewrite::START`]).
    pub(crate) start: bool,
}

// SAFETY: a loaded WAMR module is immutable once `wasm_runtime_load` has returned; WAMR
// instantiates it from several threads itself (its thread manager does), and `buf` is only
// freed on drop. The descriptions are plain data.
unsafe impl Send for Loaded {}
// SAFETY: as above: shared access only reads the module (instantiation, lookups).
unsafe impl Sync for Loaded {}

impl Drop for Loaded {
    fn drop(&mut self) {
        runtime::ensure_thread_env();
        // SAFETY: every instance holds an `Arc<Loaded>`, so none is left; the module is
        // unloaded once, then the buffer it referred to is freed (it came from `Box::into_raw`).
        unsafe {
            sys::wasm_runtime_unload(self.raw);
            drop(Box::from_raw(self.buf.as_ptr()));
        }
    }
}

/// A [`WasmModule`] on WAMR: validated and translated code, shared by all its instances.
pub struct WamrModule {
    shared: Arc<Shared>,
    pub(crate) loaded: Arc<Loaded>,
}

impl fmt::Debug for WamrModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WamrModule")
            .field("imports", &self.loaded.imports.len())
            .field("exports", &self.loaded.exports.len())
            .field("linked", &self.loaded.link_error.is_none())
            .finish_non_exhaustive()
    }
}

impl WamrModule {
    /// Validates `bytes` as every engine does, prepares them ([`rewrite`]) and loads them.
    pub(crate) fn new(shared: Arc<Shared>, bytes: &[u8]) -> Result<Self> {
        let shape = wasmux_abi::validate(ENGINE_NAME, bytes)?;
        let described = describe(bytes).map_err(|e| error::compile(e.to_string()))?;
        let prepared = rewrite::prepare(bytes).map_err(error::compile)?;
        let start = prepared.start;
        let buf: Box<[u8]> = prepared.bytes.map_or_else(|| bytes.into(), Vec::into_boxed_slice);
        let size = u32::try_from(buf.len()).map_err(|_| error::compile("module larger than 4 GiB"))?;
        let buf = NonNull::from(Box::leak(buf));
        runtime::ensure_thread_env();
        let mut message: [c_char; 256] = [0; 256];
        // SAFETY: `buf` is a live heap buffer of `size` bytes that nothing else refers to; it
        // stays allocated until after `wasm_runtime_unload` (see `Loaded::drop`), as WAMR
        // requires. The error buffer is writable for its length.
        let raw = unsafe {
            sys::wasm_runtime_load(buf.as_ptr().cast::<u8>(), size, message.as_mut_ptr(), message.len() as u32)
        };
        if raw.is_null() {
            // SAFETY: WAMR wrote a NUL-terminated message into the buffer (it was zeroed, and
            // WAMR truncates to its length); the module was not loaded, so the buffer is ours.
            let text = unsafe { CStr::from_ptr(message.as_ptr()) }.to_string_lossy().into_owned();
            // SAFETY: the buffer came from `Box::leak` above and WAMR does not hold it.
            drop(unsafe { Box::from_raw(buf.as_ptr()) });
            return Err(error::compile(if text.is_empty() { "WAMR refused the module".into() } else { text }));
        }
        let link_error = link(&described.imports);
        let table = Arc::new(export_table(&described.exports, start));
        let loaded = Loaded {
            raw,
            buf,
            imports: described.imports,
            exports: described.exports,
            table,
            link_error,
            memory: described.memory,
            memory_exported: described.memory_exported,
            table_elements: shape.table_elements,
            start,
        };
        Ok(Self { shared, loaded: Arc::new(loaded) })
    }
}

impl WasmModule for WamrModule {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn imports(&self) -> &[ImportDesc] {
        &self.loaded.imports
    }

    fn exports(&self) -> &[ExportDesc] {
        &self.loaded.exports
    }

    fn instantiate(&self, state: HostState, limits: &Limits) -> Result<Box<dyn WasmInstance>> {
        Ok(Box::new(WamrInstance::new(&self.shared, &self.loaded, state, limits)?))
    }
}

/// A module's function exports, resolved once per module ([`wasmux_abi::export_table`]), each
/// with the name WAMR knows it by ([`rewrite::wamr_name`]), ready for its C API. The start
/// function, if any, is unlisted: out of reach of `find`.
pub(crate) type ExportTable = wasmux_abi::export_table::ExportTable<ValType, CString>;

fn export_table(exports: &[ExportDesc], start: bool) -> ExportTable {
    let table = ExportTable::new(exports, |name, ty| {
        // Names this crate adds to the module are not the guest's.
        if name.starts_with(wasmux_abi::validate::RESERVED) {
            return None;
        }
        Some(FuncExport::of(name, ty).with(CString::new(rewrite::wamr_name(name).as_bytes()).ok()?))
    });
    match CString::new(rewrite::START) {
        Ok(wamr_name) if start => {
            let ty = FuncType { params: Vec::new(), results: Vec::new() };
            table.with_unlisted(FuncExport::of(rewrite::START, &ty).with(wamr_name))
        }
        _ => table,
    }
}

/// Checks every import against the host functions: WAMR leaves an unknown import unlinked
/// and only fails when it is called, where the other engines refuse to instantiate.
fn link(imports: &[ImportDesc]) -> Option<String> {
    for import in imports {
        let ExternType::Func(ty) = &import.ty else {
            return Some(format!(
                "unsupported import `{}.{}` of kind {}: the host provides functions only",
                import.module,
                import.name,
                import.ty.kind()
            ));
        };
        let Some(func) = find_host_func(&import.module, &import.name) else {
            return Some(format!("unknown import `{}.{}`", import.module, import.name));
        };
        if !ty.is(func.params, func.results) {
            return Some(format!(
                "mistyped import `{}.{}`: the host provides {}, the module expects {ty}",
                import.module,
                import.name,
                func.ty()
            ));
        }
    }
    None
}

/// What the host needs to know about a module, read from its original bytes.
struct Described {
    imports: Vec<ImportDesc>,
    exports: Vec<ExportDesc>,
    memory: Option<MemoryDecl>,
    memory_exported: bool,
}

fn describe(bytes: &[u8]) -> wasmparser::Result<Described> {
    use wasmparser::{ExternalKind, Payload, TypeRef};

    let mut types: Vec<Option<FuncType>> = Vec::new();
    let mut funcs: Vec<u32> = Vec::new();
    let mut imports = Vec::new();
    let mut raw_exports = Vec::new();
    let mut memory = None;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload? {
            Payload::TypeSection(reader) => {
                for group in reader {
                    for sub in group?.into_types() {
                        types.push(match &sub.composite_type.inner {
                            wasmparser::CompositeInnerType::Func(f) => Some(FuncType {
                                params: f.params().iter().map(val_type).collect(),
                                results: f.results().iter().map(val_type).collect(),
                            }),
                            _ => None,
                        });
                    }
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import?;
                    let ty = match import.ty {
                        TypeRef::Func(t) | TypeRef::FuncExact(t) => {
                            funcs.push(t);
                            func_type(&types, t)
                        }
                        TypeRef::Memory(m) => {
                            memory = Some(MemoryDecl { initial: m.initial });
                            ExternType::Memory
                        }
                        TypeRef::Table(_) => ExternType::Table,
                        TypeRef::Global(_) => ExternType::Global,
                        TypeRef::Tag(_) => ExternType::Other,
                    };
                    imports.push(ImportDesc { module: import.module.into(), name: import.name.into(), ty });
                }
            }
            Payload::FunctionSection(reader) => {
                for t in reader {
                    funcs.push(t?);
                }
            }
            Payload::MemorySection(reader) => {
                for m in reader {
                    memory = Some(MemoryDecl { initial: m?.initial });
                }
            }
            Payload::ExportSection(reader) => {
                for e in reader {
                    let e = e?;
                    raw_exports.push((e.name.to_owned(), e.kind, e.index));
                }
            }
            // Exports precede code and data: nothing further to learn.
            Payload::CodeSectionStart { .. } | Payload::DataSection(_) => break,
            _ => {}
        }
    }
    let mut memory_exported = false;
    let exports = raw_exports
        .into_iter()
        .map(|(name, kind, index)| {
            let ty = match kind {
                ExternalKind::Func | ExternalKind::FuncExact => {
                    funcs.get(index as usize).map_or(ExternType::Other, |&t| func_type(&types, t))
                }
                ExternalKind::Memory => {
                    memory_exported |= name == "memory";
                    ExternType::Memory
                }
                ExternalKind::Table => ExternType::Table,
                ExternalKind::Global => ExternType::Global,
                ExternalKind::Tag => ExternType::Other,
            };
            ExportDesc { name, ty }
        })
        .collect();
    Ok(Described { imports, exports, memory, memory_exported })
}

fn func_type(types: &[Option<FuncType>], index: u32) -> ExternType {
    types.get(index as usize).cloned().flatten().map_or(ExternType::Other, ExternType::Func)
}

fn val_type(t: &wasmparser::ValType) -> ValType {
    match t {
        wasmparser::ValType::I32 => ValType::I32,
        wasmparser::ValType::I64 => ValType::I64,
        wasmparser::ValType::F32 => ValType::F32,
        wasmparser::ValType::F64 => ValType::F64,
        _ => ValType::Other,
    }
}
