//! A compiled module: V8's shareable compiled code, the module's import/export descriptions
//! (read from the original bytes), and how its memory is provided (see [`crate::rewrite`]).

use std::fmt;
use std::sync::Arc;

use wasmux_abi::{
    Error, ExportDesc, ExternType, FuncType, HostState, ImportDesc, Limits, Result, ValType, WasmInstance, WasmModule,
    find_host_func,
};

use wasmux_abi::export_table::FuncExport;

use crate::ffi::{self, CompiledModule, MAX_VALUES};
use crate::instance::V8Instance;
use crate::rewrite::{MemoryDecl, rewrite};
use crate::{ENGINE_NAME, Shared, error};

/// A function import resolved against [`HOST_FUNCS`](wasmux_abi::HOST_FUNCS).
#[derive(Debug, Clone)]
pub(crate) struct LinkedImport {
    pub(crate) module: String,
    pub(crate) name: String,
    pub(crate) host_func: u32,
    pub(crate) params: Vec<u8>,
    pub(crate) results: Vec<u8>,
}

/// What every instance of a module shares.
pub(crate) struct ModuleData {
    pub(crate) compiled: CompiledModule,
    pub(crate) imports: Vec<ImportDesc>,
    pub(crate) exports: Vec<ExportDesc>,
    /// The function exports the host can call, resolved once for every instance.
    pub(crate) table: ExportTable,
    /// The function imports linked to host functions, or why the module cannot be linked.
    pub(crate) linked: Result<Vec<LinkedImport>, String>,
    /// The module's memory, provided by the bridge at instantiation (see [`crate::rewrite`]).
    pub(crate) memory: Option<MemoryDecl>,
    /// Whether `memory.grow` goes through the growth hook.
    pub(crate) grow_hook: bool,
    /// Whether `table.grow` goes through the table budget.
    pub(crate) table_limit: bool,
    /// Whether the bridge calls the start function after installing the hooks.
    pub(crate) start: bool,
    /// Table elements the module declares, over all its tables (initial sizes).
    pub(crate) table_elements: u64,
    /// Functions, imports, exports and globals (see [`crate::instance`]'s heap limit).
    pub(crate) heap_items: u64,
}

/// A module's function exports that the host can call (at most [`MAX_VALUES`] parameters, no
/// reference or vector types), resolved once per module ([`wasmux_abi::export_table`]), with
/// their types as the bridge's type codes ([`ffi::type_code`]).
pub(crate) type ExportTable = wasmux_abi::export_table::ExportTable<u8>;

fn export_table(exports: &[ExportDesc]) -> ExportTable {
    ExportTable::new(exports, |name, ty| {
        if ty.params.len() > MAX_VALUES || ty.params.iter().chain(&ty.results).any(|&t| t == ValType::Other) {
            return None;
        }
        Some(FuncExport {
            name: name.into(),
            params: ty.params.iter().map(|&t| ffi::type_code(t)).collect(),
            results: ty.results.iter().map(|&t| ffi::type_code(t)).collect(),
            extra: (),
        })
    })
}

/// A [`WasmModule`] on V8: compiled code shared by every instance (and isolate) made from it.
pub struct V8Module {
    shared: Arc<Shared>,
    data: Arc<ModuleData>,
}

impl fmt::Debug for V8Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("V8Module")
            .field("imports", &self.data.imports.len())
            .field("exports", &self.data.exports.len())
            .field("memory", &self.data.memory)
            .field("linked", &self.data.linked.is_ok())
            .finish_non_exhaustive()
    }
}

impl V8Module {
    /// Validates and describes `bytes`, rewrites them for the limits and compiles them.
    pub(crate) fn new(shared: Arc<Shared>, bytes: &[u8]) -> Result<Self> {
        // wasmux's verdict first, on the original bytes: the same on every engine. Nothing
        // invalid reaches the rewrite or V8.
        let shape = wasmux_abi::validate(ENGINE_NAME, bytes)?;
        let rewritten = rewrite(bytes).map_err(|reason| Error::Compile {
            engine: ENGINE_NAME,
            message: format!("cannot prepare the module for its limits: {reason}"),
        })?;
        let compiled = shared
            .compiler
            .compile(rewritten.as_ref().map_or(bytes, |r| &r.bytes))
            .map_err(|(status, report)| error::compile(status, &report))?;
        let described = describe(bytes).map_err(|e| Error::Compile { engine: ENGINE_NAME, message: e.to_string() })?;
        let linked = link(&described.imports);
        let table = export_table(&described.exports);
        let data = ModuleData {
            compiled,
            imports: described.imports,
            exports: described.exports,
            table,
            linked,
            memory: rewritten.as_ref().and_then(|r| r.memory),
            grow_hook: rewritten.as_ref().is_some_and(|r| r.grow_hook),
            table_limit: rewritten.as_ref().is_some_and(|r| r.table_limit),
            start: rewritten.as_ref().is_some_and(|r| r.start),
            table_elements: shape.table_elements,
            heap_items: described.heap_items,
        };
        Ok(Self { shared, data: Arc::new(data) })
    }
}

impl WasmModule for V8Module {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn imports(&self) -> &[ImportDesc] {
        &self.data.imports
    }

    fn exports(&self) -> &[ExportDesc] {
        &self.data.exports
    }

    fn instantiate(&self, state: HostState, limits: &Limits) -> Result<Box<dyn WasmInstance>> {
        Ok(Box::new(V8Instance::new(&self.shared, &self.data, state, limits)?))
    }
}

/// Resolves every function import against the host-function table.
fn link(imports: &[ImportDesc]) -> Result<Vec<LinkedImport>, String> {
    let mut linked = Vec::new();
    for import in imports {
        let ExternType::Func(ty) = &import.ty else {
            return Err(format!("unsupported import `{}.{}` of kind {}", import.module, import.name, import.ty.kind()));
        };
        let Some(func) = find_host_func(&import.module, &import.name) else {
            return Err(format!("unknown import `{}.{}`", import.module, import.name));
        };
        let host_ty = func.ty();
        if *ty != host_ty {
            return Err(format!(
                "mistyped import `{}.{}`: the host provides {host_ty}, the module expects {ty}",
                import.module, import.name
            ));
        }
        let index = u32::try_from(func.index()).map_err(|_| "host function table too large".to_string())?;
        linked.push(LinkedImport {
            module: import.module.clone(),
            name: import.name.clone(),
            host_func: index,
            params: host_ty.params.iter().map(|&t| ffi::type_code(t)).collect(),
            results: host_ty.results.iter().map(|&t| ffi::type_code(t)).collect(),
        });
    }
    Ok(linked)
}

/// Imports and exports of a module, read with wasmparser.
struct Described {
    imports: Vec<ImportDesc>,
    exports: Vec<ExportDesc>,
    /// Functions, imports, exports and globals: what V8 may keep an object for in the JS heap.
    heap_items: u64,
}

fn describe(bytes: &[u8]) -> wasmparser::Result<Described> {
    use wasmparser::{CompositeInnerType, ExternalKind, Payload, TypeRef};

    let mut types: Vec<Option<FuncType>> = Vec::new();
    let mut funcs: Vec<u32> = Vec::new();
    let mut imports = Vec::new();
    let mut exports = Vec::new();
    let mut raw_exports = Vec::new();
    let mut globals = 0u64;
    let mut parser = wasmparser::Parser::new(0);
    parser.set_features(wasmparser::WasmFeatures::all());
    for payload in parser.parse_all(bytes) {
        match payload? {
            Payload::TypeSection(reader) => {
                for group in reader {
                    for sub in group?.into_types() {
                        types.push(match &sub.composite_type.inner {
                            CompositeInnerType::Func(f) => Some(FuncType {
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
                        TypeRef::Memory(_) => ExternType::Memory,
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
            Payload::GlobalSection(reader) => globals += u64::from(reader.count()),
            Payload::ExportSection(reader) => {
                for e in reader {
                    let e = e?;
                    raw_exports.push((e.name.to_owned(), e.kind, e.index));
                }
            }
            _ => {}
        }
    }
    for (name, kind, index) in raw_exports {
        let ty = match kind {
            ExternalKind::Func | ExternalKind::FuncExact => {
                funcs.get(index as usize).map_or(ExternType::Other, |&t| func_type(&types, t))
            }
            ExternalKind::Memory => ExternType::Memory,
            ExternalKind::Table => ExternType::Table,
            ExternalKind::Global => ExternType::Global,
            ExternalKind::Tag => ExternType::Other,
        };
        exports.push(ExportDesc { name, ty });
    }
    let heap_items = [funcs.len(), imports.len(), exports.len()].iter().map(|&n| n as u64).sum::<u64>() + globals;
    Ok(Described { imports, exports, heap_items })
}

fn func_type(types: &[Option<FuncType>], index: u32) -> ExternType {
    match types.get(index as usize) {
        Some(Some(ty)) => ExternType::Func(ty.clone()),
        _ => ExternType::Other,
    }
}

fn val_type(ty: &wasmparser::ValType) -> ValType {
    match ty {
        wasmparser::ValType::I32 => ValType::I32,
        wasmparser::ValType::I64 => ValType::I64,
        wasmparser::ValType::F32 => ValType::F32,
        wasmparser::ValType::F64 => ValType::F64,
        _ => ValType::Other,
    }
}
