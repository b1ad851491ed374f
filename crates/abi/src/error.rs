//! The host-side error type: what the embedder sees when loading or running a filter fails.
//!
//! Guest-facing failures are [`Status`](crate::Status) codes and never appear here; this type is
//! for the embedder: which engine, which export, what kind of trap, which limit.

use std::fmt;

/// Why a wasm call stopped abnormally, normalized across engines so that the same fault gives
/// the same kind on every engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TrapKind {
    /// `unreachable` was executed (also Rust panics inside the guest).
    Unreachable,
    /// A load or store outside linear memory, or a table access out of bounds.
    OutOfBounds,
    /// Integer division by zero or overflow, or an invalid float conversion.
    Arithmetic,
    /// An indirect call with a bad signature or a null table entry.
    BadIndirectCall,
    /// The wasm stack limit was hit (deep recursion).
    StackOverflow,
    /// The per-callback CPU deadline expired (epochs, fuel, metering or a watchdog).
    Deadline,
    /// Growing linear memory beyond the configured limit failed and the guest trapped.
    MemoryLimit,
    /// A host function asked the call to stop (for example `proc_exit`).
    Host,
    /// The guest kept asking for host resources past its quotas
    /// ([`Quotas::max_violations_per_callback`](crate::Quotas::max_violations_per_callback)),
    /// or re-entered the host deeper than the host allows.
    Quota,
    /// The guest called a host function it may not call at that point: inside its allocator,
    /// or during start-up (`_initialize`, `main`, `_start`), as proxy-wasm-cpp-host restricts
    /// them.
    Restricted,
    /// Any other trap.
    Other,
}

impl TrapKind {
    /// A short stable name, used in records and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::OutOfBounds => "out_of_bounds",
            Self::Arithmetic => "arithmetic",
            Self::BadIndirectCall => "bad_indirect_call",
            Self::StackOverflow => "stack_overflow",
            Self::Deadline => "deadline",
            Self::MemoryLimit => "memory_limit",
            Self::Host => "host",
            Self::Quota => "quota",
            Self::Restricted => "restricted",
            Self::Other => "other",
        }
    }

    /// Whether this trap is a configured limit being hit.
    pub fn is_limit(self) -> bool {
        matches!(self, Self::StackOverflow | Self::Deadline | Self::MemoryLimit | Self::Quota)
    }
}

impl fmt::Display for TrapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A trap raised while running guest code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trap {
    /// The engine that ran the code.
    pub engine: &'static str,
    /// The export the host called (filled in by the ABI layer), e.g. `proxy_on_request_headers`.
    pub export: Option<String>,
    /// The normalized kind.
    pub kind: TrapKind,
    /// The engine's own message.
    pub message: String,
    /// Wasm frames, innermost first, symbolized from the name section where the engine can.
    pub backtrace: Vec<String>,
}

impl fmt::Display for Trap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} trap", self.kind)?;
        if let Some(export) = &self.export {
            write!(f, " in `{export}`")?;
        }
        write!(f, " on {}: {}", self.engine, self.message)?;
        if !self.backtrace.is_empty() {
            write!(f, " (wasm backtrace: {})", self.backtrace.join(" <- "))?;
        }
        Ok(())
    }
}

/// One reason a module cannot run on this host, found at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
#[allow(missing_docs, reason = "fields are named after what they hold: import module, name, types")]
pub enum Incompatibility {
    /// No `proxy_abi_version_*` marker export.
    MissingAbiMarker,
    /// A marker the host does not know, e.g. `proxy_abi_version_0_3_0`.
    UnknownAbiMarker(String),
    /// Markers for more than one version.
    ConflictingAbiMarkers(Vec<String>),
    /// The module imports a function the host does not provide at all.
    UnknownImport { module: String, name: String },
    /// The module imports a host function that exists, but not in the module's ABI version.
    ImportNotInVersion { module: String, name: String, version: &'static str },
    /// The module imports a host function with a different signature.
    ImportSignature { module: String, name: String, expected: String, found: String },
    /// The module imports something other than a function (memory, table, global).
    UnsupportedImport { module: String, name: String, kind: String },
    /// A required export is missing (`memory`, an allocator).
    MissingExport(String),
    /// A known callback is exported with the wrong signature for the module's ABI version.
    ExportSignature { name: String, expected: String, found: String },
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingAbiMarker => f.write_str("missing ABI version marker (no `proxy_abi_version_*` export)"),
            Self::UnknownAbiMarker(m) => write!(f, "unknown ABI version marker `{m}`"),
            Self::ConflictingAbiMarkers(m) => {
                write!(f, "conflicting ABI version markers: {}", m.join(", "))
            }
            Self::UnknownImport { module, name } => {
                write!(f, "missing import `{module}.{name}`: the host does not provide it")
            }
            Self::ImportNotInVersion { module, name, version } => {
                write!(f, "missing import `{module}.{name}`: not part of proxy-wasm ABI {version}")
            }
            Self::ImportSignature { module, name, expected, found } => {
                write!(f, "mistyped import `{module}.{name}`: the host provides {expected}, the module expects {found}")
            }
            Self::UnsupportedImport { module, name, kind } => {
                write!(f, "unsupported import `{module}.{name}` of kind {kind}")
            }
            Self::MissingExport(name) => write!(f, "missing export `{name}`"),
            Self::ExportSignature { name, expected, found } => {
                write!(f, "mistyped export `{name}`: expected {expected}, found {found}")
            }
        }
    }
}

/// The stage of plugin start-up that the filter refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// `proxy_on_vm_start` returned false.
    VmStart,
    /// `proxy_on_configure` returned false.
    Configure,
}

/// Everything that can go wrong on the host side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not a valid wasm module, or the engine could not compile them.
    #[error("cannot compile module on {engine}: {message}")]
    Compile {
        /// The engine.
        engine: &'static str,
        /// The engine's message.
        message: String,
    },
    /// The module is valid wasm but cannot run on this host; every problem is listed.
    #[error("module is not compatible with this host:\n{}", list(.0))]
    Incompatible(Vec<Incompatibility>),
    /// Guest code trapped.
    #[error("{0}")]
    Trap(Box<Trap>),
    /// The filter refused its VM or plugin configuration.
    #[error("the filter rejected its {}", match .0 { Rejection::VmStart => "VM configuration (proxy_on_vm_start returned false)", Rejection::Configure => "plugin configuration (proxy_on_configure returned false)" })]
    Rejected(Rejection),
    /// Instantiation or another engine operation failed.
    #[error("{engine}: {message}")]
    Engine {
        /// The engine.
        engine: &'static str,
        /// The engine's message.
        message: String,
    },
    /// The embedder named a context that does not exist or is of the wrong kind.
    #[error("context {id}: {reason}")]
    Context {
        /// The context id.
        id: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// The VM failed earlier and must be replaced before it can run again.
    #[error("the VM has failed and cannot run callbacks: {0}")]
    Failed(String),
}

fn list(items: &[Incompatibility]) -> String {
    items.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n")
}

impl Error {
    /// The trap, if this error is one.
    pub fn trap(&self) -> Option<&Trap> {
        match self {
            Self::Trap(t) => Some(t),
            _ => None,
        }
    }

    /// A trap error.
    pub fn new_trap(engine: &'static str, kind: TrapKind, message: impl Into<String>) -> Self {
        Self::Trap(Box::new(Trap { engine, export: None, kind, message: message.into(), backtrace: Vec::new() }))
    }
}

/// Shorthand for results with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    #[test]
    fn error_stays_small() {
        assert!(size_of::<super::Error>() <= 48);
    }
}
