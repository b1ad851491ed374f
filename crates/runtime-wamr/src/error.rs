//! Mapping WAMR failures and exceptions onto [`wasmux_abi::Error`].

use std::ffi::{CStr, c_char};

use wamrx_sys as sys;
use wasmux_abi::{Error, Trap, TrapKind};

use crate::ENGINE_NAME;
use crate::instance::State;
use crate::runtime::{EXCEPTION_BUF_LEN, wasm_runtime_copy_exception};

/// The exception a host function sets to make WAMR unwind; the error itself waits in
/// [`State::raised`].
pub(crate) const RAISED: &CStr = c"wasmux: a host function failed";

/// An [`Error::Engine`] with a message.
pub(crate) fn engine_msg(message: impl Into<String>) -> Error {
    Error::Engine { engine: ENGINE_NAME, message: message.into() }
}

/// An [`Error::Compile`] with a message.
pub(crate) fn compile(message: impl Into<String>) -> Error {
    Error::Compile { engine: ENGINE_NAME, message: message.into() }
}

/// A trap error. WAMR records no frames in this build: the backtrace starts empty and each
/// guest entry point the trap unwinds through is appended by the call that made it.
pub(crate) fn trap(kind: TrapKind, message: impl Into<String>) -> Error {
    Error::Trap(Box::new(Trap {
        engine: ENGINE_NAME,
        export: None,
        kind,
        message: message.into(),
        backtrace: Vec::new(),
    }))
}

/// The instance's current exception, without WAMR's `Exception: ` prefix; `None` when there
/// is none.
pub(crate) fn exception(module_inst: sys::wasm_module_inst_t) -> Option<String> {
    let mut buf: [c_char; EXCEPTION_BUF_LEN] = [0; EXCEPTION_BUF_LEN];
    // SAFETY: `module_inst` is a live instance; WAMR copies at most `EXCEPTION_BUF_LEN` bytes
    // (its exception buffer, always NUL-terminated) under its exception lock, so a termination
    // requested by another thread meanwhile cannot tear it.
    if !unsafe { wasm_runtime_copy_exception(module_inst, buf.as_mut_ptr()) } {
        return None;
    }
    // Never trust the terminator of a foreign buffer: the last byte is ours.
    buf[EXCEPTION_BUF_LEN - 1] = 0;
    // SAFETY: `buf` is NUL-terminated (just ensured) and lives through the call.
    let text = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
    Some(text.strip_prefix("Exception: ").unwrap_or(&text).to_owned())
}

/// Maps a failed guest call. An [`Error`] raised by a host function comes back unchanged; a
/// stopped call (deadline or interrupt) is [`TrapKind::Deadline`]; anything else is a trap of
/// the kind WAMR's exception names. A memory growth refused by the host's limit during the
/// call turns the guest's own trap into [`TrapKind::MemoryLimit`].
pub(crate) fn from_call(state: &mut State, module_inst: sys::wasm_module_inst_t) -> Error {
    if let Some(e) = state.raised.take() {
        return e;
    }
    let message = exception(module_inst).unwrap_or_else(|| "the call failed without an exception".to_string());
    let kind = trap_kind(&message);
    if kind == TrapKind::Deadline || state.watch.requested() {
        return state.watch.trap(ENGINE_NAME);
    }
    if state.denied && kind != TrapKind::StackOverflow {
        return trap(
            TrapKind::MemoryLimit,
            format!("{message} after linear memory reached its limit (memory.grow was refused)"),
        );
    }
    trap(kind, message)
}

/// The normalized kind of a WAMR exception message (`core/iwasm/common/wasm_runtime_common.c`,
/// `exception_msgs`, and the interpreter's own messages).
pub(crate) fn trap_kind(message: &str) -> TrapKind {
    match message {
        "unreachable" => TrapKind::Unreachable,
        // WAMR checks the shadow stack pointer when it is set; other engines trap at the access
        // through it that follows, out of bounds.
        "out of bounds memory access"
        | "out of bounds table access"
        | "undefined element"
        | "wasm auxiliary stack underflow" => TrapKind::OutOfBounds,
        "integer overflow" | "integer divide by zero" | "invalid conversion to integer" => TrapKind::Arithmetic,
        "indirect call type mismatch"
        | "uninitialized element"
        | "null function reference"
        | "invalid function index" => TrapKind::BadIndirectCall,
        "wasm operand stack overflow" | "native stack overflow" | "wasm auxiliary stack overflow" => {
            TrapKind::StackOverflow
        }
        "terminated by user" => TrapKind::Deadline,
        _ => TrapKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(trap_kind("unreachable"), TrapKind::Unreachable);
        assert_eq!(trap_kind("undefined element"), TrapKind::OutOfBounds);
        assert_eq!(trap_kind("integer divide by zero"), TrapKind::Arithmetic);
        assert_eq!(trap_kind("uninitialized element"), TrapKind::BadIndirectCall);
        assert_eq!(trap_kind("native stack overflow"), TrapKind::StackOverflow);
        assert_eq!(trap_kind("terminated by user"), TrapKind::Deadline);
        assert_eq!(trap_kind("allocate memory failed"), TrapKind::Other);
    }
}
