//! Mapping wasmi errors and traps onto [`wasmux_abi::Error`].

use std::fmt;

use wasmi::TrapCode;
pub(crate) use wasmux_abi::StopReason as Stopped;
use wasmux_abi::{Error, Trap, TrapKind};

use crate::ENGINE_NAME;
use crate::instance::StoreData;

/// The host error wasmi carries for an [`Error`] raised by a host function; the error itself
/// waits in [`StoreData::raised`], so it comes back out exactly as raised.
#[derive(Debug)]
pub(crate) struct Raised;

impl fmt::Display for Raised {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a host function failed")
    }
}

impl wasmi::errors::HostError for Raised {}

/// Parks `e` in the store and returns the wasmi error that unwinds the guest.
pub(crate) fn raise(data: &mut StoreData, e: Error) -> wasmi::Error {
    data.raised = Some(e);
    wasmi::Error::host(Raised)
}

/// An [`Error::Engine`] from a wasmi error.
pub(crate) fn engine(e: &wasmi::Error) -> Error {
    engine_msg(e.to_string())
}

/// An [`Error::Engine`] with a message.
pub(crate) fn engine_msg(message: impl Into<String>) -> Error {
    Error::Engine { engine: ENGINE_NAME, message: message.into() }
}

/// An [`Error::Compile`] from a wasmi error.
pub(crate) fn compile(e: &wasmi::Error) -> Error {
    Error::Compile { engine: ENGINE_NAME, message: e.to_string() }
}

/// The [`TrapKind::Deadline`] trap for a call that was stopped.
pub(crate) fn stopped(stop: Stopped) -> Error {
    trap(TrapKind::Deadline, stop.to_string())
}

/// Maps the error of a guest call. An [`Error`] raised by a host function comes back
/// unchanged; anything else is a [`Trap`]. A memory growth refused during the call (noted in
/// `data`) turns the guest's own trap into [`TrapKind::MemoryLimit`].
///
/// Calls run in fuel slices and pause when one runs out, so wasmi reporting a call as out of
/// fuel means that it could not pause there (an engine fault, not a deadline): that is
/// [`TrapKind::Other`], saying so.
pub(crate) fn from_call(e: &wasmi::Error, data: &mut StoreData) -> Error {
    if e.as_trap_code() == Some(TrapCode::OutOfFuel) {
        return trap(TrapKind::Other, format!("{e} (wasmi could not pause the call there)"));
    }
    classify(e, data).unwrap_or_else(|| trap(TrapKind::Other, e.to_string()))
}

/// Maps an instantiation error: traps (a start function) are traps, the rest (linking,
/// resource limits) is [`Error::Engine`]. A start function runs on a fuel budget worth its
/// deadline: running out of it is [`TrapKind::Deadline`].
pub(crate) fn from_instantiate(e: &wasmi::Error, data: &mut StoreData) -> Error {
    if e.as_trap_code() == Some(TrapCode::OutOfFuel) {
        return trap(
            TrapKind::Deadline,
            format!("{e}: the start function used up the fuel its callback deadline is worth"),
        );
    }
    classify(e, data).unwrap_or_else(|| engine_msg(format!("cannot instantiate: {e}")))
}

/// Sorts out raised host errors and wasm traps; `None` for anything else.
fn classify(e: &wasmi::Error, data: &mut StoreData) -> Option<Error> {
    if e.downcast_ref::<Raised>().is_some() {
        return Some(data.raised.take().unwrap_or_else(|| engine_msg("a host function failed without an error")));
    }
    let code = e.as_trap_code()?;
    if code == TrapCode::GrowthOperationLimited && data.limiter.table_grow_out_of_fuel {
        let message = "table.grow ran out of fuel at the end of a fuel slice, where wasmi 2.0.0 cannot pause it";
        return Some(trap(TrapKind::Other, message.into()));
    }
    let kind = trap_kind(code);
    if data.limiter.denied && !matches!(kind, TrapKind::Deadline | TrapKind::StackOverflow) {
        let message = format!("{e} after linear memory reached its limit (memory.grow was refused)");
        return Some(trap(TrapKind::MemoryLimit, message));
    }
    Some(trap(kind, e.to_string()))
}

/// The normalized kind of a wasmi trap code.
fn trap_kind(code: TrapCode) -> TrapKind {
    use TrapCode as T;
    match code {
        T::UnreachableCodeReached => TrapKind::Unreachable,
        T::MemoryOutOfBounds | T::TableOutOfBounds => TrapKind::OutOfBounds,
        T::IntegerDivisionByZero | T::IntegerOverflow | T::BadConversionToInteger => TrapKind::Arithmetic,
        T::IndirectCallToNull | T::BadSignature => TrapKind::BadIndirectCall,
        T::StackOverflow => TrapKind::StackOverflow,
        T::OutOfFuel => TrapKind::Deadline,
        T::GrowthOperationLimited | T::OutOfSystemMemory => TrapKind::Other,
    }
}

/// A trap error. wasmi records no wasm frames: the backtrace starts empty and each guest entry
/// point the trap unwinds through is appended by the call that made it.
fn trap(kind: TrapKind, message: String) -> Error {
    Error::Trap(Box::new(Trap { engine: ENGINE_NAME, export: None, kind, message, backtrace: Vec::new() }))
}
