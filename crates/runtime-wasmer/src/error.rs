//! Mapping wasmer errors and traps onto [`wasmux_abi::Error`].

use wasmer::RuntimeError;
use wasmer_types::TrapCode;
pub(crate) use wasmux_abi::StopReason as Stopped;
use wasmux_abi::{Error, Trap, TrapKind};

use crate::BACKTRACE_FRAMES;

/// An [`Error::Engine`] with a message.
pub(crate) fn engine_msg(engine: &'static str, message: impl Into<String>) -> Error {
    Error::Engine { engine, message: message.into() }
}

/// An [`Error::Compile`] from a wasmer error.
pub(crate) fn compile(engine: &'static str, e: &wasmer::CompileError) -> Error {
    Error::Compile { engine, message: e.to_string() }
}

/// The error a host function returns to unwind the guest: an [`Error`] or a [`Stopped`] call.
pub(crate) fn raise(e: impl std::error::Error + Send + Sync + 'static) -> RuntimeError {
    RuntimeError::user(Box::new(e))
}

/// Where a call's error is mapped: the engine name, the function indices the middleware added
/// (to show the module's own in backtraces), and whether a memory growth was refused during
/// the call, which turns the guest's own trap into [`TrapKind::MemoryLimit`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context {
    pub(crate) engine: &'static str,
    pub(crate) imported: u32,
    pub(crate) memory_denied: bool,
}

/// Maps the error of a guest call. An [`Error`] raised by a host function comes back
/// unchanged; anything else is a [`Trap`].
pub(crate) fn from_call(e: RuntimeError, cx: Context) -> Error {
    let e = match e.downcast::<Error>() {
        Ok(host) => return host,
        Err(e) => e,
    };
    if let Some(stop) = e.downcast_ref::<Stopped>() {
        return trap(&e, cx, TrapKind::Deadline, stop.to_string());
    }
    let Some(code) = e.clone().to_trap() else {
        return trap(&e, cx, TrapKind::Other, e.message());
    };
    let kind = trap_kind(code);
    if cx.memory_denied && !matches!(kind, TrapKind::Deadline | TrapKind::StackOverflow) {
        let message = format!("{} after linear memory reached its limit (memory.grow was refused)", code.message());
        return trap(&e, cx, TrapKind::MemoryLimit, message);
    }
    trap(&e, cx, kind, code.message().to_owned())
}

/// Maps an instantiation error: traps (a start function) are traps, the rest (linking,
/// resources) is [`Error::Engine`].
pub(crate) fn from_instantiate(e: wasmer::InstantiationError, cx: Context) -> Error {
    match e {
        wasmer::InstantiationError::Start(e) => from_call(e, cx),
        e => engine_msg(cx.engine, format!("cannot instantiate: {e}")),
    }
}

/// The normalized kind of a wasmer trap code.
fn trap_kind(code: TrapCode) -> TrapKind {
    use TrapCode as T;
    match code {
        T::UnreachableCodeReached => TrapKind::Unreachable,
        T::HeapAccessOutOfBounds | T::TableAccessOutOfBounds | T::HeapMisaligned | T::UnalignedAtomic => {
            TrapKind::OutOfBounds
        }
        T::IntegerDivisionByZero | T::IntegerOverflow | T::BadConversionToInteger => TrapKind::Arithmetic,
        T::IndirectCallToNull | T::BadSignature => TrapKind::BadIndirectCall,
        T::StackOverflow => TrapKind::StackOverflow,
        T::HostInterrupt => TrapKind::Deadline,
        _ => TrapKind::Other,
    }
}

/// A trap error with the wasm backtrace of `e`, innermost frame first.
fn trap(e: &RuntimeError, cx: Context, kind: TrapKind, message: String) -> Error {
    let backtrace = e
        .trace()
        .iter()
        .take(BACKTRACE_FRAMES)
        .map(|f| match f.function_name() {
            Some(name) => name.to_owned(),
            // The module's own index: the middleware's imports moved defined functions up.
            None => {
                let index = f.func_index();
                let index =
                    if index >= cx.imported { index.saturating_sub(crate::middleware::HIDDEN_FUNCS) } else { index };
                format!("func[{index}]")
            }
        })
        .collect();
    Error::Trap(Box::new(Trap { engine: cx.engine, export: None, kind, message, backtrace }))
}
