//! wasmux: run proxy-wasm filters from Rust, on the engine of your choice.
//!
//! A proxy (or a test, or the `wasmux` CLI) loads a filter built with any proxy-wasm SDK and
//! drives it through the ABI: create streams, feed headers, bodies and trailers, deliver
//! callout responses and ticks, and read back the action and the mutated state.
//!
//! ```no_run
//! use wasmux::{PluginOptions, Runtime};
//!
//! let bytes = std::fs::read("filter.wasm")?;
//! let compiled = Runtime::default().load(&bytes, PluginOptions::default())?;
//! let mut plugin = compiled.instantiate()?; // one per worker thread; cheap
//! let id = plugin.http_stream()?;
//! let action = plugin.request_headers(id, wasmux::HeaderMap::from_pairs([(":path", "/")]), true)?;
//! # let _ = action;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Engines
//!
//! | feature | engine | notes |
//! |---|---|---|
//! | `wasmtime` (default) | wasmtime 48, cranelift | epoch deadlines, memory limits |
//! | `wasmer` | wasmer 7.3, cranelift (`wasmer`) and singlepass (`wasmer-singlepass`) | metered deadlines, memory limits |
//! | `wasmi` | wasmi 2.0, interpreter | ~1 ms compiles (lazy translation); wall-clock deadlines checked between fuel slices, memory limits |
//! | `wamr` | WAMR 2.4.3 fast interpreter (`wasmux_wamr`, vendored C) | eager translation at load; deadlines by `wasm_runtime_terminate` from a watchdog, memory limits; table growth bounded by WAMR's fixed capacities |
//! | `null` | native shared libraries (`wasmux_null`) | no sandbox, no limits; trusted filters, gdb |
//! | `all-engines` | every engine above | for CI and docs |
//!
//! [`Runtime`] lists the engines compiled in; naming one that is not compiled in is an error
//! that says which feature to enable.
//!
//! # Layers
//!
//! This crate owns engine selection, loading (compile once, check at load, optionally through
//! the compiled-module cache [`ModuleCache`]), per-worker instances and the failure policy.
//! The ABI itself lives in `wasmux-abi` and each engine in its own backend crate; both are
//! re-exported where an embedder needs them.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod cache;
mod plugin;
mod runtime;
#[cfg(feature = "scenario")]
pub mod scenario;
#[cfg(feature = "testing")]
pub mod testing;

pub use cache::{CacheKey, CacheSource, CacheStats, ModuleCache};
pub use plugin::{CompiledPlugin, FailurePolicy, Plugin, PluginOptions, PluginStats, RootOptions, SnapshotStatus};
pub use runtime::{Runtime, UnknownRuntime};
pub use wasmux_abi as abi;
pub use wasmux_abi::snapshot::SnapshotPolicy;
pub use wasmux_abi::{
    AbiVersion, Action, Error, HeaderMap, HttpCallResponse, Limits, LogLevel, PeerType, Quota, QuotaCounts, Quotas,
    Result, Services, Trap, TrapKind,
};
