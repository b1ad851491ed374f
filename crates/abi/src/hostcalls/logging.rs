//! Logging: `proxy_log`, `proxy_get_log_level`.

use crate::guest::{HostResult, check_range, read_string, write_u32};
use crate::services::LogRecord;
use crate::state::ContextKind;
use crate::vm::Guest;
use crate::{HostState, LogLevel, Status};

/// `proxy_log(level, msg_ptr, msg_len)`: BAD_ARGUMENT for an unknown level.
pub(super) fn log(cx: &mut dyn Guest, level: u64, msg: u64, len: u64) -> HostResult {
    let level = u32::try_from(level).ok().and_then(LogLevel::from_raw).ok_or(Status::BadArgument)?;
    if level < cx.state().env.log_level {
        // Dropped without copying, but a bad range is still reported.
        check_range(cx, msg, len)?;
        return Ok(Status::Ok);
    }
    let message = read_string(cx, msg, len)?;
    emit(cx.state(), level, message);
    Ok(Status::Ok)
}

/// `proxy_get_log_level(return_level*)` (0.2.1).
pub(super) fn get_log_level(cx: &mut dyn Guest, out: u64) -> HostResult {
    let level = cx.state().env.log_level as u32;
    write_u32(cx, out, level)?;
    Ok(Status::Ok)
}

/// Sends one line to the log sink, attributed to the effective context, if at or above the
/// VM's level.
pub(crate) fn emit(state: &HostState, level: LogLevel, message: String) {
    if level < state.env.log_level {
        return;
    }
    let id = state.effective;
    let root_id = state
        .contexts
        .get(&id)
        .and_then(|c| state.contexts.get(&c.root))
        .and_then(|r| match &r.kind {
            ContextKind::Root(r) => Some(r.plugin.root_id.clone()),
            _ => None,
        })
        .unwrap_or_default();
    state.env.services.log.log(LogRecord { vm_id: state.env.vm_id.clone(), root_id, context_id: id, level, message });
}
