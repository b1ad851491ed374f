//! Loading a filter library: reading its dynamic symbol table, checking that this executable
//! provides the host symbols, and `dlopen`.

use std::collections::BTreeSet;
use std::ffi::c_void;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use libloading::os::unix::{Library as RawLibrary, RTLD_LOCAL, RTLD_NOW};
use object::{Object, ObjectSymbol};
use wasmux_abi::{
    AbiVersion, Callback, Error, ExportDesc, ExternType, FuncType, HostState, ImportDesc, Limits, Result, WasmInstance,
    WasmModule, find_host_func,
};

use crate::instance::NullInstance;
use crate::native::{Native, native};
use crate::{ENGINE_NAME, hostcalls};

/// The linker option a host executable needs so that filter libraries find its `proxy_*`
/// functions.
pub const LINK_ARG: &str = "-Wl,--export-dynamic-symbol=proxy_*";

fn compile_err(message: impl Into<String>) -> Error {
    Error::Compile { engine: ENGINE_NAME, message: message.into() }
}

pub(crate) fn engine_err(message: impl Into<String>) -> Error {
    Error::Engine { engine: ENGINE_NAME, message: message.into() }
}

/// A `dlopen`ed filter library.
pub(crate) struct Library {
    raw: RawLibrary,
    /// The `dlopen` handle: the identity of the loaded object (the same file opened twice gives
    /// the same handle, and shares one copy of the SDK's state).
    pub(crate) key: usize,
    pub(crate) path: PathBuf,
    /// A file this module wrote (library given as bytes), removed with it.
    temp: Option<PathBuf>,
    /// The functions the library itself defines (its dynamic symbol table).
    defined: BTreeSet<String>,
    /// The exports the host calls (callbacks and ABI markers), resolved once for every
    /// instance; sorted by name. `FuncRef.0` indexes it.
    exports: Box<[Export]>,
}

/// An export of a library that the host calls.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Export {
    pub(crate) name: &'static str,
    /// The function's address, as an integer so that the instance stays `Send`.
    pub(crate) addr: usize,
    pub(crate) native: Native,
    /// The callback it is, for the instance's bookkeeping of what the SDK holds.
    pub(crate) callback: Option<Callback>,
}

impl fmt::Debug for Library {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Library").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        if let Some(t) = &self.temp {
            // The mapping outlives the name; the dynamic linker keeps the object as long as
            // it is open.
            let _ = std::fs::remove_file(t);
        }
    }
}

impl Library {
    fn open(path: &Path, temp: Option<PathBuf>, defined: BTreeSet<String>, abi: AbiVersion) -> Result<Self> {
        // SAFETY: loading runs the library's initializers (for a Rust cdylib: none but std's
        // own). The library is trusted native code: that is the null engine's contract.
        let raw = unsafe { RawLibrary::open(Some(path), RTLD_NOW | RTLD_LOCAL) }
            .map_err(|e| compile_err(format!("cannot load {}: {e}", path.display())))?;
        let handle = raw.into_raw();
        // SAFETY: `handle` was just returned by `into_raw` of an open library.
        let raw = unsafe { RawLibrary::from_raw(handle) };
        let mut lib =
            Self { raw, key: handle as usize, path: path.to_path_buf(), temp, defined, exports: Box::new([]) };
        // Static names only: callbacks and markers (whose names come from the ABI's own lists).
        let callbacks = Callback::ALL.iter().map(|&c| (c.name(), Some(c)));
        let markers = AbiVersion::ALL.into_iter().map(|v| (v.marker(), None));
        let mut exports: Vec<Export> = callbacks
            .chain(markers)
            .filter_map(|(name, callback)| {
                let native = native(name, abi)?;
                let addr = lib.symbol(name)?.expose_provenance();
                Some(Export { name, addr, native, callback })
            })
            .collect();
        exports.sort_unstable_by_key(|e| e.name);
        lib.exports = exports.into();
        Ok(lib)
    }

    /// The export named `name`, as an index into [`Self::export`].
    pub(crate) fn find(&self, name: &str) -> Option<u32> {
        u32::try_from(self.exports.binary_search_by(|e| e.name.cmp(name)).ok()?).ok()
    }

    /// The export at `index`.
    pub(crate) fn export(&self, index: u32) -> Option<Export> {
        self.exports.get(index as usize).copied()
    }

    /// The address of a function the library itself defines. Other names are `None`, even
    /// when `dlsym` would find them in a dependency (`malloc` in libc).
    pub(crate) fn symbol(&self, name: &str) -> Option<*const c_void> {
        if !self.defined.contains(name) {
            return None;
        }
        // SAFETY: the symbol is only read as an address here; the caller calls it with the
        // type given by `native()` for its name, which is the SDK's declaration.
        let sym = unsafe { self.raw.get::<*const c_void>(name.as_bytes()) }.ok()?;
        // The raw symbol is the address `dlsym` returned: the function itself.
        let addr = sym.into_raw();
        (!addr.is_null()).then_some(addr.cast_const())
    }
}

/// A filter library: its exports and imports as the ABI layer sees them, and the loaded object.
pub struct NullModule {
    path: PathBuf,
    abi: AbiVersion,
    imports: Vec<ImportDesc>,
    exports: Vec<ExportDesc>,
    /// The loaded library, or why it was not loaded (imports the host lacks).
    lib: Result<Arc<Library>, String>,
}

impl fmt::Debug for NullModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NullModule")
            .field("path", &self.path)
            .field("abi", &self.abi)
            .field("exports", &self.exports.len())
            .field("loaded", &self.lib.is_ok())
            .finish_non_exhaustive()
    }
}

impl NullModule {
    /// Loads the shared library at `path`.
    pub(crate) fn load(path: &Path) -> Result<Self> {
        // `dlopen` searches the library path for a name without a slash: make it a path.
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let bytes = std::fs::read(&path).map_err(|e| compile_err(format!("cannot read {}: {e}", path.display())))?;
        Self::new(&path, &bytes, None)
    }

    /// Writes library bytes to a private file and loads it. Every call makes a distinct copy:
    /// two modules compiled from the same bytes do not share state.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o700);
        }
        // A fresh name on every attempt: a file left by an earlier process with the same pid
        // is never reused (`create_new`).
        let mut attempts = 0;
        let path = loop {
            let name = format!("wasmux-null-{}-{}.so", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
            let path = std::env::temp_dir().join(name);
            match options.open(&path) {
                Ok(mut f) => {
                    if let Err(e) = f.write_all(bytes) {
                        let _ = std::fs::remove_file(&path);
                        return Err(compile_err(format!("cannot write {}: {e}", path.display())));
                    }
                    break path;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempts < 16 => attempts += 1,
                Err(e) => return Err(compile_err(format!("cannot write {}: {e}", path.display()))),
            }
        };
        Self::new(&path, bytes, Some(path.clone())).inspect_err(|_| {
            let _ = std::fs::remove_file(&path);
        })
    }

    fn new(path: &Path, bytes: &[u8], temp: Option<PathBuf>) -> Result<Self> {
        let file = object::File::parse(bytes)
            .map_err(|e| compile_err(format!("{} is not a native shared library: {e}", path.display())))?;
        if file.kind() != object::ObjectKind::Dynamic {
            return Err(compile_err(format!("{} is not a shared library ({:?})", path.display(), file.kind())));
        }
        if Some(file.architecture()) != host_architecture() {
            return Err(compile_err(format!(
                "{} is built for {:?}, this host is {}",
                path.display(),
                file.architecture(),
                std::env::consts::ARCH
            )));
        }
        let mut defined = BTreeSet::new();
        let mut undefined = BTreeSet::new();
        for sym in file.dynamic_symbols() {
            let Ok(name) = sym.name() else { continue };
            if sym.is_undefined() {
                if name.starts_with("proxy_") {
                    undefined.insert(name.to_string());
                }
            } else if sym.is_global() && sym.kind() == object::SymbolKind::Text {
                defined.insert(name.to_string());
            }
        }

        // The version from the markers decides the native shape of the headers callbacks; the
        // ABI layer checks the markers themselves.
        let markers: Vec<AbiVersion> = defined.iter().filter_map(|n| AbiVersion::from_marker(n)).collect();
        let abi = match markers.as_slice() {
            [v] => *v,
            _ => AbiVersion::V0_2_1,
        };
        let mut exports = Vec::new();
        for name in defined.iter().filter(|n| n.starts_with("proxy_abi_version_")) {
            exports.push(ExportDesc { name: name.clone(), ty: ExternType::Func(FuncType::new(&[], &[])) });
        }
        for cb in Callback::ALL {
            if native(cb.name(), abi).is_some() && defined.contains(cb.name()) {
                exports.push(ExportDesc { name: cb.name().into(), ty: ExternType::Func(cb.signature(abi)) });
            }
        }
        // Native memory is the whole address space: a pseudo `memory` export stands for it.
        exports.push(ExportDesc { name: "memory".into(), ty: ExternType::Memory });

        let imports: Vec<ImportDesc> = undefined
            .iter()
            .map(|name| ImportDesc {
                module: "env".into(),
                name: name.clone(),
                // An unknown `proxy_*` import gets an empty type; the ABI layer reports it.
                ty: ExternType::Func(find_host_func("env", name).map_or(FuncType::new(&[], &[]), |f| f.ty())),
            })
            .collect();

        let missing: Vec<&str> =
            undefined.iter().filter(|n| find_host_func("env", n).is_none()).map(String::as_str).collect();
        let lib = if missing.is_empty() {
            check_host_symbols()?;
            Ok(Arc::new(Library::open(path, temp, defined, abi)?))
        } else {
            if let Some(t) = temp {
                let _ = std::fs::remove_file(t);
            }
            Err(format!("the library imports functions the host does not provide: {}", missing.join(", ")))
        };
        Ok(Self { path: path.to_path_buf(), abi, imports, exports, lib })
    }

    /// The library's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The ABI version the native shapes were chosen for.
    pub(crate) fn abi(&self) -> AbiVersion {
        self.abi
    }
}

impl WasmModule for NullModule {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn imports(&self) -> &[ImportDesc] {
        &self.imports
    }

    fn exports(&self) -> &[ExportDesc] {
        &self.exports
    }

    fn instantiate(&self, state: HostState, _limits: &Limits) -> Result<Box<dyn WasmInstance>> {
        let lib = self.lib.as_ref().map_err(|why| engine_err(format!("cannot link {}: {why}", self.path.display())))?;
        Ok(Box::new(NullInstance::new(self, lib.clone(), state)?))
    }
}

fn host_architecture() -> Option<object::Architecture> {
    match std::env::consts::ARCH {
        "x86_64" => Some(object::Architecture::X86_64),
        "aarch64" => Some(object::Architecture::Aarch64),
        "riscv64" => Some(object::Architecture::Riscv64),
        _ => None,
    }
}

/// Checks, once per process, that this executable exports every `proxy_*` symbol of this crate,
/// so that a library's imports bind to them (and not to nothing, or to another copy).
fn check_host_symbols() -> Result<()> {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    CHECK
        .get_or_init(|| {
            let this = RawLibrary::this();
            let mut missing = Vec::new();
            for (i, name) in hostcalls::NAMES.iter().enumerate() {
                // SAFETY: read as an address only, never called through this pointer.
                let found = unsafe { this.get::<*const c_void>(name.as_bytes()) }.map(|s| s.into_raw() as usize).ok();
                if found.is_none() || found != hostcalls::address(i) {
                    missing.push(*name);
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            Err(format!(
                "this executable does not export the null engine's host functions ({} of {} missing or \
                 bound elsewhere, e.g. `{}`): link it with `{LINK_ARG}` (in build.rs: \
                 `println!(\"cargo::rustc-link-arg-bins={LINK_ARG}\")`; see the wasmux-null docs)",
                missing.len(),
                hostcalls::NAMES.len(),
                missing[0]
            ))
        })
        .clone()
        .map_err(engine_err)
}
