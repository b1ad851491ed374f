//! Logging: `proxy_log`, `proxy_get_log_level`.

use crate::guest::{HostResult, check_range, with_guest_bytes, write_u32};
use crate::services::LogLine;
use crate::vm::Guest;
use crate::{HostState, LogLevel, Status};

/// `proxy_log(level, msg_ptr, msg_len)`: BAD_ARGUMENT for an unknown level.
pub(super) fn log(cx: &mut (impl Guest + ?Sized), level: u64, msg: u64, len: u64) -> HostResult {
    let level = u32::try_from(level).ok().and_then(LogLevel::from_raw).ok_or(Status::BadArgument)?;
    if level < cx.state().env.log_level {
        // Dropped without copying, but a bad range is still reported.
        check_range(cx, msg, len)?;
        return Ok(Status::Ok);
    }
    // The message is read where it lies in guest memory where the engine lends it.
    with_guest_bytes(cx, msg, len, |bytes, state| emit(state, level, bytes))?;
    Ok(Status::Ok)
}

/// `proxy_get_log_level(return_level*)` (0.2.1).
pub(super) fn get_log_level(cx: &mut (impl Guest + ?Sized), out: u64) -> HostResult {
    let level = cx.state().env.log_level as u32;
    write_u32(cx, out, level)?;
    Ok(Status::Ok)
}

/// Sends one line to the log sink, attributed to the effective context, if at or above the
/// VM's level.
pub(crate) fn emit(state: &HostState, level: LogLevel, message: &[u8]) {
    if level < state.env.log_level {
        return;
    }
    let line = LogLine::new(&state.env.vm_id, &state.contexts, state.effective, level, message);
    state.env.services.log.log(&line);
}
