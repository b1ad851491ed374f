//! A compiled module, its import/export descriptions, how its imports are linked, and the
//! engine its stores run on.

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use wasmer::sys::vm::{MemoryError, VMConfig, VMMemory, VMMemoryDefinition, VMTable, VMTableDefinition};
use wasmer::sys::{BaseTunables, NativeEngineExt as _, Tunables};
use wasmer::{MemoryStyle, MemoryType, TableStyle, TableType};
use wasmux_abi::{
    ExportDesc, ExternType, FuncType, HostFunc, HostState, ImportDesc, Limits, Result, WasmInstance, WasmModule,
    find_host_func,
};

use wasmux_abi::export_table::FuncExport;

use crate::imports::from_wasmer;
use crate::instance::WasmerInstance;
use crate::{Shared, error, middleware};

/// What an import of the module is linked to.
#[derive(Debug, Clone)]
pub(crate) enum Link {
    /// A host function of the ABI table.
    Host(&'static HostFunc),
    /// The middleware's `refuel`.
    Refuel,
    /// The middleware's `grow_allowed`.
    GrowAllowed,
    /// The middleware's `table_grow_delta`.
    TableGrowDelta,
    /// Nothing: instantiation fails with this reason.
    Missing(String),
}

/// A [`WasmModule`] on wasmer: compiled code shared by all its instances.
pub struct WasmerModule {
    shared: Arc<Shared>,
    /// The engine that compiled the module (with its middleware); stores run on clones.
    engine: wasmer::Engine,
    module: wasmer::Module,
    /// One per import of the compiled module, in order (hidden imports included).
    links: Vec<Link>,
    imports: Vec<ImportDesc>,
    exports: Vec<ExportDesc>,
    /// The guest's function exports, resolved once for every instance.
    table: Arc<ExportTable>,
    /// The module's own imported functions.
    imported: u32,
    /// The initial size of its memory, in bytes (validation allows one memory at most).
    initial_memory: Option<u64>,
    /// The initial sizes of its tables, summed.
    initial_table_elements: u64,
}

impl fmt::Debug for WasmerModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WasmerModule")
            .field("engine", &self.shared.name)
            .field("imports", &self.imports.len())
            .field("exports", &self.exports.len())
            .finish_non_exhaustive()
    }
}

impl WasmerModule {
    /// A fresh wasmer engine with this crate's compiler settings and middleware.
    fn new_engine(shared: &Shared) -> wasmer::Engine {
        // Wasmer's default features but threads: a shared memory would let a guest block in
        // `memory.atomic.wait`, out of reach of deadlines (wasmtime here has no threads either).
        let features = wasmer::sys::Features { threads: false, ..Default::default() };
        wasmer::sys::EngineBuilder::new(shared.config.compiler_config()).set_features(Some(features)).engine().into()
    }

    /// Compiles `bytes` on a fresh wasmer engine with this crate's middleware.
    pub(crate) fn new(shared: Arc<Shared>, bytes: &[u8]) -> Result<Self> {
        // wasmux's verdict first, on the original bytes: the same on every engine.
        wasmux_abi::validate(shared.name, bytes)?;
        let engine = Self::new_engine(&shared);
        let module = wasmer::Module::new(&engine, bytes).map_err(|e| error::compile(shared.name, &e))?;
        Ok(Self::from_compiled(shared, engine, module))
    }

    /// Loads a module serialized by [`WasmerModule::serialize`] on an engine of this build
    /// (see `load_artifact` for the contract).
    pub(crate) fn deserialize(shared: Arc<Shared>, artifact: &[u8]) -> Result<Self> {
        let engine = Self::new_engine(&shared);
        let module = load_artifact(&engine, artifact).map_err(|e| wasmux_abi::Error::Engine {
            engine: shared.name,
            message: format!("cannot load a serialized module: {e}"),
        })?;
        Ok(Self::from_compiled(shared, engine, module))
    }

    /// The module as an artifact for [`WasmerModule::deserialize`].
    pub(crate) fn serialize(&self) -> Option<Vec<u8>> {
        self.module.serialize().ok().map(|b| b.to_vec())
    }

    fn from_compiled(shared: Arc<Shared>, engine: wasmer::Engine, module: wasmer::Module) -> Self {
        let mut links = Vec::new();
        let mut imports = Vec::new();
        for import in module.imports() {
            let (m, name) = (import.module(), import.name());
            if m == middleware::IMPORT_MODULE {
                links.push(match name {
                    middleware::REFUEL => Link::Refuel,
                    middleware::GROW_ALLOWED => Link::GrowAllowed,
                    _ => Link::TableGrowDelta,
                });
                continue;
            }
            let ty = extern_type(import.ty());
            links.push(match (&ty, find_host_func(m, name)) {
                (ExternType::Func(_), Some(func)) => Link::Host(func),
                _ => Link::Missing(format!("unknown import `{m}.{name}` ({})", ty.kind())),
            });
            imports.push(ImportDesc { module: m.to_owned(), name: name.to_owned(), ty });
        }
        let exports: Vec<ExportDesc> = module
            .exports()
            .filter(|e| !e.name().starts_with(middleware::HIDDEN_PREFIX))
            .map(|e| ExportDesc { name: e.name().to_owned(), ty: extern_type(e.ty()) })
            .collect();
        let table = Arc::new(ExportTable::new(&exports, |name, ty| Some(FuncExport::of(name, ty))));
        let info = module.info();
        let imported = u32::try_from(info.num_imported_functions).unwrap_or(u32::MAX) - middleware::HIDDEN_FUNCS;
        let initial_memory = info.memories.values().map(|m| m.minimum.bytes().0 as u64).max();
        let initial_table_elements = info.tables.values().map(|t| u64::from(t.minimum)).sum();
        Self {
            shared,
            engine,
            module,
            links,
            imports,
            exports,
            table,
            imported,
            initial_memory,
            initial_table_elements,
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    pub(crate) fn wasmer(&self) -> &wasmer::Module {
        &self.module
    }

    pub(crate) fn table(&self) -> &Arc<ExportTable> {
        &self.table
    }

    pub(crate) fn links(&self) -> &[Link] {
        &self.links
    }

    pub(crate) fn imported_functions(&self) -> u32 {
        self.imported
    }

    pub(crate) fn initial_memory(&self) -> Option<u64> {
        self.initial_memory
    }

    pub(crate) fn initial_table_elements(&self) -> u64 {
        self.initial_table_elements
    }

    /// The engine for a new store: the module's, with a wasm stack of `limits.max_stack_bytes`
    /// (within the bounds wasmer accepts for its process-wide default, 8 KiB to 100 MiB) and
    /// no table allowed more than `limits.max_table_elements` elements.
    pub(crate) fn store_engine(&self, limits: &Limits) -> wasmer::Engine {
        let mut engine = self.engine.clone();
        let base = BaseTunables::for_target(engine.target());
        let stack = limits.max_stack_bytes.clamp(8 << 10, wasmer::sys::vm::MAX_STACK_SIZE);
        let max_table = u32::try_from(limits.max_table_elements.min(WASMER_TABLE_MAX)).unwrap_or(u32::MAX);
        engine.set_tunables(StoreTunables { base, vm: VMConfig { wasm_stack_size: Some(stack) }, max_table });
        engine
    }
}

/// A module's function exports (the guest's; not the middleware's), resolved once per module
/// ([`wasmux_abi::export_table`]).
pub(crate) type ExportTable = wasmux_abi::export_table::ExportTable;

/// Describes a wasmer extern type.
fn extern_type(ty: &wasmer::ExternType) -> ExternType {
    match ty {
        wasmer::ExternType::Function(f) => ExternType::Func(FuncType {
            params: f.params().iter().map(from_wasmer).collect(),
            results: f.results().iter().map(from_wasmer).collect(),
        }),
        wasmer::ExternType::Memory(_) => ExternType::Memory,
        wasmer::ExternType::Table(_) => ExternType::Table,
        wasmer::ExternType::Global(_) => ExternType::Global,
        _ => ExternType::Other,
    }
}

impl WasmModule for WasmerModule {
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
        Ok(Box::new(WasmerInstance::new(self, state, limits)?))
    }
}

/// The largest table maximum wasmer accepts (`TABLE_MAX_SIZE` in `wasmer-vm`, not exported): a
/// table type declaring more does not instantiate.
const WASMER_TABLE_MAX: u64 = 128 << 20;

/// Wasmer's default tunables with a wasm stack of our choosing (the only knob wasmer offers per
/// store for the stack it runs wasm on) and a cap on every table's maximum.
///
/// The cap makes any single table's growth past the instance's table limit fail inside wasmer
/// (the exact limit, over all tables, is the middleware's `table_grow_delta`), and so makes the
/// `u32::MAX` delta a refused growth is turned into fail without allocating. It also lets
/// modules instantiate whose tables declare a maximum wasmer itself would refuse (over 128 Mi
/// elements), as other engines do.
struct StoreTunables {
    base: BaseTunables,
    vm: VMConfig,
    /// The largest maximum a table gets (at most [`WASMER_TABLE_MAX`]).
    max_table: u32,
}

impl StoreTunables {
    /// `ty` with its maximum capped. A minimum over the cap makes wasmer refuse the table
    /// (the instance checks the total of minimums against the limit before that).
    fn capped(&self, ty: &TableType) -> TableType {
        TableType { maximum: Some(ty.maximum.map_or(self.max_table, |max| max.min(self.max_table))), ..*ty }
    }
}

#[allow(unsafe_code, reason = "wasmer's Tunables trait has unsafe methods; these only forward to BaseTunables")]
impl Tunables for StoreTunables {
    fn memory_style(&self, memory: &MemoryType) -> MemoryStyle {
        self.base.memory_style(memory)
    }

    fn table_style(&self, table: &TableType) -> TableStyle {
        self.base.table_style(table)
    }

    fn create_host_memory(&self, ty: &MemoryType, style: &MemoryStyle) -> Result<VMMemory, MemoryError> {
        self.base.create_host_memory(ty, style)
    }

    unsafe fn create_vm_memory(
        &self,
        ty: &MemoryType,
        style: &MemoryStyle,
        vm_definition_location: NonNull<VMMemoryDefinition>,
    ) -> Result<VMMemory, MemoryError> {
        // SAFETY: the caller's guarantee (`vm_definition_location` points to a valid location
        // in VM memory) is the one `BaseTunables::create_vm_memory` requires; it is passed on
        // unchanged.
        unsafe { self.base.create_vm_memory(ty, style, vm_definition_location) }
    }

    fn create_host_table(&self, ty: &TableType, style: &TableStyle) -> Result<VMTable, String> {
        self.base.create_host_table(&self.capped(ty), style)
    }

    unsafe fn create_vm_table(
        &self,
        ty: &TableType,
        style: &TableStyle,
        vm_definition_location: NonNull<VMTableDefinition>,
    ) -> Result<VMTable, String> {
        // SAFETY: as for `create_vm_memory`: the same contract, forwarded unchanged (the table
        // type's maximum only decides how far the table may grow).
        unsafe { self.base.create_vm_table(&self.capped(ty), style, vm_definition_location) }
    }

    fn vmconfig(&self) -> &VMConfig {
        &self.vm
    }
}

/// Loads a module serialized by `WasmerModule::serialize` on an engine of this build.
#[allow(unsafe_code, reason = "wasmer::Module::deserialize is unsafe: it trusts its input as compiled code")]
fn load_artifact(engine: &wasmer::Engine, artifact: &[u8]) -> std::result::Result<wasmer::Module, String> {
    // SAFETY: wasmer requires the bytes to be the unmodified output of `Module::serialize`.
    // The only caller of `WasmEngine::deserialize` in wasmux is the module cache
    // (`wasmux::ModuleCache`), which upholds this: it keys artifacts by the engine's
    // fingerprint (compiler, optimization, wasmer version, this crate's middleware version,
    // target) and the module's SHA-256; in memory they are bytes it produced itself, and on disk
    // files it wrote atomically with a header repeating the key and a CRC-32 of the artifact,
    // all checked before this call, so a truncated, corrupted or misplaced file is a cache miss,
    // not a load. wasmer itself checks the artifact's header and version and rejects, as an
    // error, an artifact of another wasmer version or target. What remains trusted is the cache
    // directory: whoever can write it can make the host run arbitrary code. Embedders calling
    // `deserialize` directly take on the same contract (crate docs).
    unsafe { wasmer::Module::deserialize(engine, artifact.to_vec()) }.map_err(|e| e.to_string())
}
