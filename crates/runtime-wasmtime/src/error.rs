//! Mapping wasmtime errors and traps onto [`wasmux_abi::Error`].

use wasmtime::WasmBacktrace;
pub(crate) use wasmux_abi::StopReason as Stopped;
use wasmux_abi::{Error, Trap, TrapKind};

use crate::ENGINE_NAME;

/// An [`Error::Engine`] from a wasmtime error, with its whole cause chain.
pub(crate) fn engine(e: wasmtime::Error) -> Error {
    engine_msg(chain(&e))
}

/// An [`Error::Engine`] with a message.
pub(crate) fn engine_msg(message: impl Into<String>) -> Error {
    Error::Engine { engine: ENGINE_NAME, message: message.into() }
}

/// An [`Error::Compile`] from a wasmtime error.
pub(crate) fn compile(e: &wasmtime::Error) -> Error {
    Error::Compile { engine: ENGINE_NAME, message: chain(e) }
}

/// Maps the error of a guest call. An [`Error`] raised by a host function comes back
/// unchanged; anything else is a [`Trap`]. `memory_denied` tells whether a memory growth was
/// refused during the call, which turns the guest's own trap into [`TrapKind::MemoryLimit`].
pub(crate) fn from_call(e: wasmtime::Error, memory_denied: bool) -> Error {
    match classify(e, memory_denied) {
        Ok(err) => err,
        Err(e) => trap(&e, TrapKind::Other, e.root_cause().to_string()),
    }
}

/// Maps an instantiation error: traps (a start function, a refused memory) are traps, the rest
/// (linking, resource limits) is [`Error::Engine`].
pub(crate) fn from_instantiate(e: wasmtime::Error, memory_denied: bool) -> Error {
    match classify(e, memory_denied) {
        Ok(err) => err,
        Err(e) => engine_msg(format!("cannot instantiate: {}", chain(&e))),
    }
}

/// Sorts out host errors, epoch stops and wasm traps; anything else is handed back.
fn classify(e: wasmtime::Error, memory_denied: bool) -> Result<Error, wasmtime::Error> {
    let e = match e.downcast::<Error>() {
        Ok(host) => return Ok(host),
        Err(e) => e,
    };
    if let Some(stop) = e.downcast_ref::<Stopped>() {
        return Ok(trap(&e, TrapKind::Deadline, stop.to_string()));
    }
    let Some(&code) = e.downcast_ref::<wasmtime::Trap>() else {
        return Err(e);
    };
    let kind = trap_kind(code);
    if memory_denied && !matches!(kind, TrapKind::Deadline | TrapKind::StackOverflow) {
        let message = format!("{code} after linear memory reached its limit (memory.grow was refused)");
        return Ok(trap(&e, TrapKind::MemoryLimit, message));
    }
    Ok(trap(&e, kind, code.to_string()))
}

/// The normalized kind of a wasmtime trap code.
fn trap_kind(code: wasmtime::Trap) -> TrapKind {
    use wasmtime::Trap as T;
    match code {
        T::UnreachableCodeReached => TrapKind::Unreachable,
        T::MemoryOutOfBounds | T::TableOutOfBounds | T::HeapMisaligned => TrapKind::OutOfBounds,
        T::IntegerDivisionByZero | T::IntegerOverflow | T::BadConversionToInteger => TrapKind::Arithmetic,
        T::IndirectCallToNull | T::BadSignature => TrapKind::BadIndirectCall,
        T::StackOverflow => TrapKind::StackOverflow,
        T::Interrupt | T::OutOfFuel => TrapKind::Deadline,
        _ => TrapKind::Other,
    }
}

/// A trap error with the wasm backtrace attached to `e`, innermost frame first.
fn trap(e: &wasmtime::Error, kind: TrapKind, message: String) -> Error {
    let backtrace = e.downcast_ref::<WasmBacktrace>().map_or_else(Vec::new, |bt| {
        bt.frames()
            .iter()
            .map(|f| f.func_name().map_or_else(|| format!("func[{}]", f.func_index()), str::to_owned))
            .collect()
    });
    Error::Trap(Box::new(Trap { engine: ENGINE_NAME, export: None, kind, message, backtrace }))
}

/// The error and its causes on one line.
pub(crate) fn chain(e: &wasmtime::Error) -> String {
    e.chain().map(ToString::to_string).collect::<Vec<_>>().join(": ")
}
