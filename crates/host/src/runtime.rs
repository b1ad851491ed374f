//! Engine selection.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use wasmux_abi::{Error, Result, WasmEngine};

/// An engine compiled into this build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Runtime {
    /// wasmtime with cranelift (feature `wasmtime`).
    #[cfg(feature = "wasmtime")]
    Wasmtime,
    /// wasmer with cranelift (feature `wasmer`).
    #[cfg(feature = "wasmer")]
    Wasmer,
    /// wasmer with singlepass: fast compiles, slower code (feature `wasmer`).
    #[cfg(feature = "wasmer")]
    WasmerSinglepass,
    /// wasmi, an interpreter with lazy translation; wall-clock deadlines checked between fuel
    /// slices (feature `wasmi`).
    #[cfg(feature = "wasmi")]
    Wasmi,
    /// WAMR's fast interpreter (WebAssembly Micro Runtime, vendored C sources); deadlines by
    /// terminating the call from a watchdog thread (feature `wamr`).
    #[cfg(feature = "wamr")]
    Wamr,
    /// Native filters built as shared libraries, no sandbox (feature `null`). Its "bytes" are a
    /// library file or its path; see `wasmux_null`.
    #[cfg(feature = "null")]
    Null,
    /// V8 10.2 from Debian's libnode through a C++ bridge (feature `v8`).
    #[cfg(feature = "v8")]
    V8,
}

/// Every engine name wasmux knows, with the Cargo feature that compiles it in.
const KNOWN: &[(&str, &str)] = &[
    ("wasmtime", "wasmtime"),
    ("wasmer", "wasmer"),
    ("wasmer-singlepass", "wasmer"),
    ("wasmi", "wasmi"),
    ("wamr", "wamr"),
    ("v8", "v8"),
    ("null", "null"),
];

impl Runtime {
    /// The engines compiled into this build.
    pub fn available() -> &'static [Self] {
        &[
            #[cfg(feature = "wasmtime")]
            Self::Wasmtime,
            #[cfg(feature = "wasmer")]
            Self::Wasmer,
            #[cfg(feature = "wasmer")]
            Self::WasmerSinglepass,
            #[cfg(feature = "wasmi")]
            Self::Wasmi,
            #[cfg(feature = "wamr")]
            Self::Wamr,
            #[cfg(feature = "null")]
            Self::Null,
            #[cfg(feature = "v8")]
            Self::V8,
        ]
    }

    /// The engine's name, as accepted by [`FromStr`] and `--engine`.
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(feature = "wasmtime")]
            Self::Wasmtime => "wasmtime",
            #[cfg(feature = "wasmer")]
            Self::Wasmer => "wasmer",
            #[cfg(feature = "wasmer")]
            Self::WasmerSinglepass => "wasmer-singlepass",
            #[cfg(feature = "wasmi")]
            Self::Wasmi => "wasmi",
            #[cfg(feature = "wamr")]
            Self::Wamr => "wamr",
            #[cfg(feature = "null")]
            Self::Null => "null",
            #[cfg(feature = "v8")]
            Self::V8 => "v8",
        }
    }

    /// Creates the engine with default settings.
    ///
    /// # Errors
    /// Engine start-up failures.
    pub fn engine(self) -> Result<Arc<dyn WasmEngine>> {
        match self {
            #[cfg(feature = "wasmtime")]
            Self::Wasmtime => Ok(Arc::new(wasmux_wasmtime::WasmtimeEngine::new(Default::default())?)),
            #[cfg(feature = "wasmer")]
            Self::Wasmer => Ok(Arc::new(wasmux_wasmer::WasmerEngine::new(Default::default())?)),
            #[cfg(feature = "wasmer")]
            Self::WasmerSinglepass => {
                let config = wasmux_wasmer::WasmerConfig::default().compiler(wasmux_wasmer::Compiler::Singlepass);
                Ok(Arc::new(wasmux_wasmer::WasmerEngine::new(config)?))
            }
            #[cfg(feature = "wasmi")]
            Self::Wasmi => Ok(Arc::new(wasmux_wasmi::WasmiEngine::new(Default::default())?)),
            #[cfg(feature = "wamr")]
            Self::Wamr => Ok(Arc::new(wasmux_wamr::WamrEngine::new(Default::default())?)),
            #[cfg(feature = "null")]
            Self::Null => Ok(Arc::new(wasmux_null::NullEngine::new())),
            #[cfg(feature = "v8")]
            Self::V8 => Ok(Arc::new(wasmux_v8::V8Engine::new(Default::default())?)),
        }
    }

    /// Whether the engine runs wasm modules: every engine but `null`, which loads native shared
    /// libraries (tests and benches that feed wasm bytes to every engine skip it).
    pub fn runs_wasm(self) -> bool {
        match self {
            #[cfg(feature = "null")]
            Self::Null => false,
            #[allow(unreachable_patterns, reason = "every other engine, whichever are compiled in")]
            _ => true,
        }
    }
}

impl Default for Runtime {
    /// The first engine compiled in (wasmtime in default builds).
    fn default() -> Self {
        Self::available()[0]
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An engine name that is unknown or not compiled in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnknownRuntime {
    /// wasmux knows the engine, but this build does not include it.
    #[error("engine `{name}` is not compiled in: enable the `{feature}` feature of the `wasmux` crate")]
    NotCompiled {
        /// The name asked for.
        name: String,
        /// The feature that adds it.
        feature: &'static str,
    },
    /// No engine has that name.
    #[error("unknown engine `{0}` (known: wasmtime, wasmer, wasmer-singlepass, wasmi, wamr, v8, null)")]
    Unknown(String),
}

impl FromStr for Runtime {
    type Err = UnknownRuntime;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        if let Some(rt) = Self::available().iter().find(|r| r.name() == s) {
            return Ok(*rt);
        }
        match KNOWN.iter().find(|(n, _)| *n == s) {
            Some((_, feature)) => Err(UnknownRuntime::NotCompiled { name: s.into(), feature }),
            None => Err(UnknownRuntime::Unknown(s.into())),
        }
    }
}

impl From<UnknownRuntime> for Error {
    fn from(e: UnknownRuntime) -> Self {
        Self::Engine { engine: "wasmux", message: e.to_string() }
    }
}
