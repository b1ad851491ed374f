//! The wasmux `WasmVm` traits implemented natively: the "null" engine.
//!
//! A filter written with the upstream `proxy-wasm` Rust SDK is built for the host target as a
//! shared library (`crate-type = ["cdylib"]`, `cargo build --release` → `libfilter.so`) from
//! the same source that builds its `.wasm`, and runs at native speed, under gdb or lldb like
//! any native code. As with Envoy's null VM, there is no sandbox: use it for trusted filters
//! and for debugging.
//!
//! # Linking model
//!
//! Libraries are loaded with `dlopen` (`RTLD_NOW | RTLD_LOCAL`), as Envoy's dynamic modules
//! are, so one process can run many native filters. Static linking was not chosen: the SDK
//! defines its `proxy_on_*` exports with `#[no_mangle]`, so two filters linked into one binary
//! would clash, and every filter would need its own host binary.
//!
//! - **Host symbols.** The SDK declares the host functions (`proxy_log`, ...) as `extern "C"`
//!   imports. This crate defines every `proxy_*` function of
//!   [`HOST_FUNCS`](wasmux_abi::HOST_FUNCS) as a `#[no_mangle]` symbol with the SDK's C types;
//!   each widens its arguments into raw words and runs the ABI layer's implementation. The
//!   library's undefined symbols bind to them only if the executable exports them dynamically:
//!   **an executable that runs null filters must be linked with [`LINK_ARG`]**
//!   (`-Wl,--export-dynamic-symbol=proxy_*`, GNU ld ≥ 2.35 or lld), e.g. from its `build.rs`:
//!   `println!("cargo::rustc-link-arg-bins=-Wl,--export-dynamic-symbol=proxy_*")` (`-tests`,
//!   `-benches`, `-examples` for other targets). Loading checks this once and names the flag
//!   in the error when it is missing.
//! - **Loading.** [`NullEngine::load_library`] takes a path. [`WasmEngine::compile`] takes
//!   either the bytes of the library file (ELF; they are written to a private temporary file,
//!   a fresh copy per call, removed with the module) or the UTF-8 path of one: the engine
//!   contract passes "bytes", and cpp-host's null VM likewise takes a name instead of bytecode.
//!   Exports and imports come from the library's dynamic symbol table, so the ABI layer checks
//!   a library exactly as it checks a module: ABI marker, callback signatures, and imports
//!   against the module's ABI version. The callbacks are listed with their wasm types and a
//!   pseudo `memory` export stands for native memory; `main`/`__main_void` are not called.
//! - **Entry point.** The start-up exports are the wasm ones: the 0.2.x SDK's `main!` defines
//!   `_initialize` on every target. A 0.1.x filter must define a native `_initialize` (or
//!   `_start`) that registers its contexts; the conformance fixtures show how.
//!
//! # Calls and memory
//!
//! - **Exports** are called through function pointers of the exact C type the SDK declares
//!   (`u32` ids, `usize` sizes, `bool` flags), one typed caller per shape.
//! - **Host functions** find the calling instance through a thread-local set around every
//!   call into a library (the only way: a C call carries no context), and see it through a
//!   [`Guest`](wasmux_abi::Guest) whose words are 8 bytes and whose memory is the address
//!   space: pointers are native, `memory_size()` is `u64::MAX`, a null pointer with a non-zero
//!   length is out of bounds. The memory is lent to the ABI layer as
//!   [`GuestMemory::Native`](wasmux_abi::GuestMemory): keys and messages are read where the
//!   filter keeps them and copy-outs are written straight into the block its allocator
//!   returned. Each symbol calls the typed implementation in
//!   [`wasmux_abi::direct`], compiled for this crate's guest type, so nothing between the
//!   filter's call and the ABI's code is dynamic. A host function called outside any call from the host (a
//!   filter's destructor at thread exit, a thread the filter started) runs against a scratch
//!   state whose services go nowhere, so the SDK gets ordinary answers instead of panicking.
//! - **Exports** are only the library's own definitions, never a symbol `dlsym` would find in
//!   one of its dependencies (libc's `malloc` is not an allocator export).
//! - **0.1.x SDK maps.** Natively the 0.1.x SDK serializes maps with 8-byte lengths; for an
//!   ABI 0.1.0 library such maps are re-encoded before the ABI layer reads them.
//!
//! # What it gives up
//!
//! - **No isolation.** A bad pointer in a filter corrupts or crashes the process; a panic in a
//!   filter aborts it (the SDK's exports are `extern "C"`, which cannot unwind). There are no
//!   traps to contain, report or recover from.
//! - **No limits.** [`Limits`](wasmux_abi::Limits) (memory, callback deadline, stack) are not
//!   applied, and the interrupt handle does nothing.
//! - **Per-thread state.** The SDK keeps its dispatcher in a thread-local of the library, so
//!   an instance belongs to the thread that created it: a call from another thread is an
//!   [`Error::Engine`](wasmux_abi::Error). A thread runs one live instance of a given library at
//!   a time (a second one is refused with a clear error; modules compiled from bytes are
//!   separate copies and do not count against each other). When an instance is dropped, it
//!   deletes the contexts it left in the SDK (`proxy_on_delete`, which runs the filter's
//!   destructors) and makes the SDK forget its pending callout tokens, so the next instance on
//!   that thread starts clean; dropped on another thread, it leaves that work to the next
//!   instance created on its thread (and keeps the library loaded until then). The filter's
//!   destructors run there against a scratch state: the clean-up is invisible to the embedder,
//!   as dropping a wasm instance is. A library's statics are shared by everything that loads
//!   it, unlike a wasm module's memory.
//! - **Failure policy.** A VM reload creates the new instance before dropping the failed one,
//!   which the one-instance rule refuses; with no traps natively, reloads do not arise.
//! - **Platforms.** 64-bit ELF (Linux) on x86_64, aarch64 and riscv64.

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod hostcalls;
mod instance;
mod module;
mod native;
mod wide;

use std::path::Path;
use std::sync::Arc;

use wasmux_abi::{Error, Result, WasmEngine, WasmModule};

pub use instance::NullInstance;
pub use module::{LINK_ARG, NullModule};

/// The engine name reported in errors.
pub const ENGINE_NAME: &str = "null";

/// The null engine: runs proxy-wasm filters built as native shared libraries. Stateless and
/// free to create.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullEngine;

impl NullEngine {
    /// Creates the engine.
    pub fn new() -> Self {
        Self
    }

    /// Loads a filter library from a path. Every module of the same path shares the library's
    /// code and state (the dynamic linker opens a file once).
    ///
    /// # Errors
    /// [`Error::Compile`] when the file is unreadable, not a shared library for this host, or
    /// `dlopen` fails; [`Error::Engine`] when this executable does not export the host
    /// functions (see [`LINK_ARG`]).
    pub fn load_library(&self, path: impl AsRef<Path>) -> Result<Arc<NullModule>> {
        Ok(Arc::new(NullModule::load(path.as_ref())?))
    }
}

impl WasmEngine for NullEngine {
    fn name(&self) -> &'static str {
        ENGINE_NAME
    }

    /// `bytes` is either the content of a shared library (ELF), loaded from a private copy, or
    /// the UTF-8 path of one.
    fn compile(&self, bytes: &[u8]) -> Result<Arc<dyn WasmModule>> {
        if bytes.starts_with(b"\x7fELF") {
            return Ok(Arc::new(NullModule::from_bytes(bytes)?));
        }
        if bytes.starts_with(b"\0asm") {
            return Err(Error::Compile {
                engine: ENGINE_NAME,
                message: "this is a wasm module: the null engine runs filters built for the host target as \
                          shared libraries (cdylib), not wasm"
                    .into(),
            });
        }
        match std::str::from_utf8(bytes) {
            Ok(path) if !path.is_empty() && !path.contains('\0') && Path::new(path).is_file() => {
                Ok(self.load_library(path)?)
            }
            _ => Err(Error::Compile {
                engine: ENGINE_NAME,
                message: "expected the bytes of a native shared library (ELF) or the path of one".into(),
            }),
        }
    }

    fn fingerprint(&self) -> String {
        format!("{ENGINE_NAME}-{}-{}-{}", env!("CARGO_PKG_VERSION"), std::env::consts::ARCH, std::env::consts::OS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compile_rejects_what_is_not_a_library() {
        let e = NullEngine.compile(b"\0asm\x01\0\0\0").unwrap_err().to_string();
        assert!(e.contains("wasm module"), "{e}");
        let e = NullEngine.compile(b"/nonexistent/libfilter.so").unwrap_err().to_string();
        assert!(e.contains("expected the bytes"), "{e}");
        let e = NullEngine.compile(b"\x7fELF garbage").unwrap_err().to_string();
        assert!(e.contains("not a native shared library"), "{e}");
        assert_eq!(NullEngine.name(), "null");
    }
}
