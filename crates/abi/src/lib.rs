//! The proxy-wasm ABI, written once.
//!
//! This crate owns everything about proxy-wasm that does not depend on a wasm engine:
//!
//! - the [`WasmEngine`] → [`WasmModule`] → [`WasmInstance`] traits that every engine backend
//!   implements, and the [`Guest`] view a backend gives host functions during a call;
//! - every host function of ABI 0.1.0, 0.2.0 and 0.2.1, plus the WASI preview1 functions SDKs
//!   import, in one data table ([`HOST_FUNCS`]); backends register it in one loop and never
//!   implement an ABI function themselves;
//! - one validation verdict for every engine ([`validate()`]): the wasm feature set and the
//!   structural bounds every sandboxed backend applies to the original bytes before its engine
//!   sees them;
//! - load-time checks ([`check_module`]): ABI version detection from the export markers and
//!   validation of every import and callback signature, reported in one error;
//! - the driver ([`Vm`]): start-up, the context hierarchy (VM, root, HTTP and TCP streams),
//!   callbacks with the right signature per version, result conversion, teardown order and
//!   `proxy_done`;
//! - the embedder capabilities ([`services`]): logging, clocks, properties, shared data,
//!   shared queues, metrics, timers, callouts and foreign functions, each a small trait with a
//!   real in-memory default;
//! - containment on the host side: [`Quotas`] bound everything a host function stores or keeps
//!   for the guest ([`quota`]), host calls are restricted while the host runs the guest's
//!   allocator or start-up exports (as in proxy-wasm-cpp-host), and shared-queue delivery runs
//!   one round per event;
//! - pre-initialized snapshots ([`snapshot`]): a plugin started once, its memory and globals
//!   written into a module every further instance starts from, when that changes nothing a
//!   filter or embedder can observe.
//!
//! It does not own engines (see the `wasmux-*` backend crates), module caching, failure
//! policy or engine selection (the `wasmux` facade).
//!
//! Two error layers stay apart: [`Status`] is what the guest gets back from a host function
//! (`INVALID_MEMORY_ACCESS` for any bad pointer), and [`Error`] is what the embedder gets
//! (which engine, which export, which trap kind). No guest input can make host code panic.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod deadline;
mod driver;
mod error;
pub mod export_table;
mod exports;
mod guest;
mod hostcalls;
mod load;
pub mod pairs;
mod proto;
pub mod quota;
pub mod services;
pub mod snapshot;
mod state;
#[cfg(feature = "testsuite")]
pub mod testsuite;
mod types;
pub mod validate;
mod vm;
pub mod watchdog;

pub use driver::{HttpCallResponse, Vm};
pub use error::{Error, Incompatibility, Rejection, Result, Trap, TrapKind};
pub use exports::Callback;
pub use hostcalls::{HOST_FUNCS, HostFunc, ImportModule, direct, find_host_func, proxy_funcs};
pub use load::{ModuleInfo, check_module, detect_abi};
pub use quota::{Quota, QuotaCounts, Quotas, Refused};
pub use services::Services;
pub use state::{
    Body, CalloutKind, HeaderMap, HostState, HttpStreamState, IdHasher, LocalReply, PluginConfig, StreamControl,
    TcpStreamState, VmEnv,
};
pub use types::{AbiSet, AbiVersion, Action, BufferType, LogLevel, MapType, MetricType, PeerType, Status, StreamType};
pub use validate::{ModuleShape, validate};
pub use vm::{
    ExportDesc, ExternType, FuncRef, FuncType, Guest, GuestMemory, ImportDesc, Limits, NativeMemory, OutOfBounds,
    StableHasher, StopReason, ValType, WasmEngine, WasmInstance, WasmModule, stable_hash,
};
