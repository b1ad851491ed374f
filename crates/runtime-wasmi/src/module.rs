//! A compiled module and its import/export descriptions.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use wasmux_abi::{ExportDesc, ExternType, FuncType, HostState, ImportDesc, Limits, Result, WasmInstance, WasmModule};

use wasmux_abi::export_table::FuncExport;

use crate::imports::from_wasmi;
use crate::instance::WasmiInstance;
use crate::{ENGINE_NAME, Shared, error};

/// A [`WasmModule`] on wasmi: validated code, translated lazily and shared by all its
/// instances.
pub struct WasmiModule {
    shared: Arc<Shared>,
    module: wasmi::Module,
    imports: Vec<ImportDesc>,
    exports: Vec<ExportDesc>,
    /// Function exports, resolved once for every instance.
    table: Arc<ExportTable>,
}

impl fmt::Debug for WasmiModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WasmiModule")
            .field("imports", &self.imports.len())
            .field("exports", &self.exports.len())
            .finish_non_exhaustive()
    }
}

impl WasmiModule {
    /// Parses and validates `bytes`; function bodies are translated on first call.
    pub(crate) fn new(shared: Arc<Shared>, bytes: &[u8]) -> Result<Self> {
        // wasmux's verdict first, on the original bytes: the same on every engine.
        wasmux_abi::validate(ENGINE_NAME, bytes)?;
        let module = wasmi::Module::new(&shared.engine, bytes).map_err(|e| error::compile(&e))?;
        let imports = module
            .imports()
            .map(|i| ImportDesc { module: i.module().to_owned(), name: i.name().to_owned(), ty: extern_type(i.ty()) })
            .collect();
        let mut exports: Vec<ExportDesc> =
            module.exports().map(|e| ExportDesc { name: e.name().to_owned(), ty: extern_type(e.ty()) }).collect();
        // wasmi keeps exports in a map sorted by name; restore the module's own order.
        let order: HashMap<&str, usize> = export_order(bytes).into_iter().zip(0..).collect();
        exports.sort_by_key(|e| order.get(e.name.as_str()).copied().unwrap_or(usize::MAX));
        // wasmi has no pre-linked instantiation: imports are resolved against the linker per
        // instance, and unsatisfiable ones are reported by the ABI layer before it gets there.
        let table = Arc::new(ExportTable::new(&exports, |name, ty| Some(FuncExport::of(name, ty))));
        Ok(Self { shared, module, imports, exports, table })
    }

    /// The underlying wasmi module.
    pub fn wasmi(&self) -> &wasmi::Module {
        &self.module
    }
}

/// A module's function exports, resolved once per module ([`wasmux_abi::export_table`]).
pub(crate) type ExportTable = wasmux_abi::export_table::ExportTable;

/// Export names in declaration order (the module is already validated; empty if the export
/// section cannot be read).
fn export_order(bytes: &[u8]) -> Vec<&str> {
    use wasmparser_wasmi::{Parser, Payload};
    for payload in Parser::new(0).parse_all(bytes) {
        match payload {
            Ok(Payload::ExportSection(section)) => {
                return section.into_iter().map_while(|e| e.ok().map(|e| e.name)).collect();
            }
            // The export section precedes code and data: no need to go further.
            Ok(Payload::CodeSectionStart { .. } | Payload::DataSection(_) | Payload::End(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Vec::new()
}

/// Describes a wasmi extern type.
fn extern_type(ty: &wasmi::ExternType) -> ExternType {
    match ty {
        wasmi::ExternType::Func(f) => ExternType::Func(FuncType {
            params: f.params().iter().map(from_wasmi).collect(),
            results: f.results().iter().map(from_wasmi).collect(),
        }),
        wasmi::ExternType::Memory(_) => ExternType::Memory,
        wasmi::ExternType::Table(_) => ExternType::Table,
        wasmi::ExternType::Global(_) => ExternType::Global,
    }
}

impl WasmModule for WasmiModule {
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
        Ok(Box::new(WasmiInstance::new(&self.module, &self.table, state, limits, &self.shared)?))
    }
}
