//! A compiled module, its import/export descriptions and its pre-linked instantiation.

use std::fmt;
use std::sync::Arc;

use wasmux_abi::{
    ExportDesc, ExternType, FuncType, HostState, ImportDesc, Limits, Result, ValType, WasmInstance, WasmModule,
};

use wasmux_abi::export_table::FuncExport;

use crate::imports::from_wasmtime;
use crate::instance::{StoreData, WasmtimeInstance};
use crate::{ENGINE_NAME, Shared, error};

/// A [`WasmModule`] on wasmtime: compiled code shared by all its instances.
pub struct WasmtimeModule {
    shared: Arc<Shared>,
    module: wasmtime::Module,
    /// The module linked against the host functions once, or why that failed.
    pre: Result<wasmtime::InstancePre<StoreData>, String>,
    imports: Vec<ImportDesc>,
    exports: Vec<ExportDesc>,
    /// Function exports and the `memory` export, resolved once for every instance.
    table: Arc<ExportTable>,
}

impl fmt::Debug for WasmtimeModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WasmtimeModule")
            .field("name", &self.module.name())
            .field("imports", &self.imports.len())
            .field("exports", &self.exports.len())
            .field("linked", &self.pre.is_ok())
            .finish_non_exhaustive()
    }
}

impl WasmtimeModule {
    /// Compiles `bytes` and links the result against the engine's host functions.
    pub(crate) fn new(shared: Arc<Shared>, bytes: &[u8]) -> Result<Self> {
        // wasmux's verdict first, on the original bytes: the same on every engine.
        wasmux_abi::validate(ENGINE_NAME, bytes)?;
        let module = wasmtime::Module::new(&shared.engine, bytes).map_err(|e| error::compile(&e))?;
        Ok(Self::from_compiled(shared, module))
    }

    /// Wraps a module compiled (or deserialized) on `shared.engine` and links it.
    pub(crate) fn from_compiled(shared: Arc<Shared>, module: wasmtime::Module) -> Self {
        let imports = module
            .imports()
            .map(|i| ImportDesc { module: i.module().to_owned(), name: i.name().to_owned(), ty: extern_type(&i.ty()) })
            .collect();
        let exports: Vec<ExportDesc> =
            module.exports().map(|e| ExportDesc { name: e.name().to_owned(), ty: extern_type(&e.ty()) }).collect();
        // Unsatisfiable imports are reported by the ABI layer before it instantiates; keep
        // wasmtime's reason for anyone who instantiates regardless.
        let pre = shared.linker.instantiate_pre(&module).map_err(|e| e.root_cause().to_string());
        let table = Arc::new(ExportTable::new(&module, &exports));
        Self { shared, module, pre, imports, exports, table }
    }

    /// The underlying wasmtime module.
    pub fn wasmtime(&self) -> &wasmtime::Module {
        &self.module
    }
}

/// A module's exports, resolved once per module: its function exports
/// ([`wasmux_abi::export_table`]), each with the index an instance keeps it at, and its `memory`.
pub(crate) struct ExportTable {
    pub(crate) funcs: wasmux_abi::export_table::ExportTable<ValType, wasmtime::ModuleExport>,
    /// The `memory` export, if it is a memory.
    pub(crate) memory: Option<wasmtime::ModuleExport>,
}

impl ExportTable {
    fn new(module: &wasmtime::Module, exports: &[ExportDesc]) -> Self {
        let funcs = wasmux_abi::export_table::ExportTable::new(exports, |name, ty| {
            Some(FuncExport::of(name, ty).with(module.get_export_index(name)?))
        });
        let memory = exports
            .iter()
            .find(|e| e.name == "memory" && e.ty == ExternType::Memory)
            .and_then(|_| module.get_export_index("memory"));
        Self { funcs, memory }
    }
}

/// Describes a wasmtime extern type.
fn extern_type(ty: &wasmtime::ExternType) -> ExternType {
    match ty {
        wasmtime::ExternType::Func(f) => ExternType::Func(FuncType {
            params: f.params().map(|t| from_wasmtime(&t)).collect(),
            results: f.results().map(|t| from_wasmtime(&t)).collect(),
        }),
        wasmtime::ExternType::Memory(_) => ExternType::Memory,
        wasmtime::ExternType::Table(_) => ExternType::Table,
        wasmtime::ExternType::Global(_) => ExternType::Global,
        _ => ExternType::Other,
    }
}

impl WasmModule for WasmtimeModule {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn imports(&self) -> &[ImportDesc] {
        &self.imports
    }

    fn exports(&self) -> &[ExportDesc] {
        &self.exports
    }

    fn instantiate(&self, state: HostState, limits: &Limits) -> Result<Box<dyn WasmInstance>> {
        let pre = self.pre.as_ref().map_err(|reason| error::engine_msg(format!("cannot link module: {reason}")))?;
        Ok(Box::new(WasmtimeInstance::new(pre, &self.table, state, limits, &self.shared)?))
    }
}
