//! Mapping what V8 reports onto [`wasmux_abi::Error`].
//!
//! A wasm trap reaches the embedder as a `WebAssembly.RuntimeError` whose message names the
//! trap (V8's message templates, stable across releases), a stack overflow as a `RangeError`
//! ("Maximum call stack size exceeded"), and a watchdog stop as a termination. The kinds are
//! the same as on the other engines.

use wasmux_abi::{Error, Trap, TrapKind};

use crate::ENGINE_NAME;
use crate::ffi::{EXCEPTION, Report, TERMINATED};

/// An [`Error::Engine`] with a message.
pub(crate) fn engine_msg(message: impl Into<String>) -> Error {
    Error::Engine { engine: ENGINE_NAME, message: message.into() }
}

/// The error of a failed compile.
pub(crate) fn compile(status: i32, report: &Report) -> Error {
    let message = match status {
        EXCEPTION => describe(report),
        _ => "the V8 bridge failed to compile the module".into(),
    };
    Error::Compile { engine: ENGINE_NAME, message }
}

/// `Class: message`, or whichever of the two is known.
fn describe(report: &Report) -> String {
    match (report.class.as_str(), report.message.as_str()) {
        ("", "") => "unknown error".into(),
        ("", m) => format!("uncaught {m} value"),
        (c, "") => c.into(),
        (c, m) => format!("{c}: {m}"),
    }
}

/// The trap kind of a V8 exception, if it is a trap at all.
fn trap_kind(report: &Report) -> Option<TrapKind> {
    let m = report.message.as_str();
    match report.class.as_str() {
        "RangeError" if m.contains("Maximum call stack size exceeded") => Some(TrapKind::StackOverflow),
        "RuntimeError" => Some(if m.contains("unreachable") {
            TrapKind::Unreachable
        } else if m.contains("divide") || m.contains("remainder") || m.contains("unrepresentable") {
            TrapKind::Arithmetic
        } else if m.contains("signature mismatch") || m.contains("null function") || m.contains("invalid index") {
            TrapKind::BadIndirectCall
        } else if m.contains("out of bounds") || m.contains("unaligned") || m.contains("segment") {
            TrapKind::OutOfBounds
        } else {
            TrapKind::Other
        }),
        _ => None,
    }
}

/// A trap with the report's wasm frames as backtrace.
fn trap(kind: TrapKind, message: String, report: &Report) -> Error {
    let backtrace = report
        .frames
        .iter()
        .map(|f| if f.is_empty() { "<unnamed>".to_owned() } else { f.trim_start_matches('$').to_owned() })
        .collect();
    Error::Trap(Box::new(Trap { engine: ENGINE_NAME, export: None, kind, message, backtrace }))
}

/// Maps a failed guest call. `at_memory_limit` tells whether linear memory is at the
/// instance's limit (so a growth failed, or would), which turns the guest's own trap into
/// [`TrapKind::MemoryLimit`] as on the other engines.
pub(crate) fn from_call(status: i32, report: &Report, at_memory_limit: bool) -> Error {
    match status {
        EXCEPTION => {
            let kind = trap_kind(report).unwrap_or(TrapKind::Other);
            let message = if report.class == "RuntimeError" { report.message.clone() } else { describe(report) };
            if at_memory_limit && !matches!(kind, TrapKind::StackOverflow | TrapKind::Deadline) {
                let message = format!("{message} after linear memory reached its limit (memory.grow was refused)");
                return trap(TrapKind::MemoryLimit, message, report);
            }
            trap(kind, message, report)
        }
        TERMINATED => Error::new_trap(ENGINE_NAME, TrapKind::Deadline, "execution terminated"),
        _ => engine_msg("the V8 bridge failed to run the call"),
    }
}

/// Maps a failed instantiation: a trap in the start function is a trap, anything else (link
/// errors, a memory the limit refuses) is [`Error::Engine`].
pub(crate) fn from_instantiate(status: i32, report: &Report) -> Error {
    if status == EXCEPTION
        && let Some(kind) = trap_kind(report)
    {
        return trap(kind, report.message.clone(), report);
    }
    match status {
        EXCEPTION => engine_msg(format!("cannot instantiate: {}", describe(report))),
        _ => engine_msg("the V8 bridge failed to instantiate the module"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(class: &str, message: &str) -> Report {
        Report { class: class.into(), message: message.into(), frames: vec!["$f".into(), String::new()] }
    }

    #[test]
    fn trap_kinds() {
        let kind = |c, m| trap_kind(&report(c, m));
        assert_eq!(kind("RuntimeError", "unreachable"), Some(TrapKind::Unreachable));
        assert_eq!(kind("RuntimeError", "memory access out of bounds"), Some(TrapKind::OutOfBounds));
        assert_eq!(kind("RuntimeError", "table index is out of bounds"), Some(TrapKind::OutOfBounds));
        assert_eq!(kind("RuntimeError", "divide by zero"), Some(TrapKind::Arithmetic));
        assert_eq!(kind("RuntimeError", "divide result unrepresentable"), Some(TrapKind::Arithmetic));
        assert_eq!(kind("RuntimeError", "remainder by zero"), Some(TrapKind::Arithmetic));
        assert_eq!(kind("RuntimeError", "float unrepresentable in integer range"), Some(TrapKind::Arithmetic));
        assert_eq!(
            kind("RuntimeError", "null function or function signature mismatch"),
            Some(TrapKind::BadIndirectCall)
        );
        assert_eq!(kind("RangeError", "Maximum call stack size exceeded"), Some(TrapKind::StackOverflow));
        assert_eq!(kind("LinkError", "import missing"), None);
    }

    #[test]
    fn memory_limit_and_frames() {
        let Error::Trap(t) = from_call(EXCEPTION, &report("RuntimeError", "unreachable"), true) else { panic!() };
        assert_eq!(t.kind, TrapKind::MemoryLimit);
        assert_eq!(t.backtrace, ["f", "<unnamed>"]);
        let Error::Trap(t) = from_call(EXCEPTION, &report("RangeError", "Maximum call stack size exceeded"), true)
        else {
            panic!()
        };
        assert_eq!(t.kind, TrapKind::StackOverflow);
    }
}
