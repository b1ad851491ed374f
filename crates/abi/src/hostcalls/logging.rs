//! Logging: `proxy_log`, `proxy_get_log_level`.

use crate::guest::{HostResult, check_range, with_guest_bytes, write_u32};
use crate::services::LogLine;
use crate::vm::Guest;
use crate::{HostState, LogLevel, Quota, Status};

/// `proxy_log(level, msg_ptr, msg_len)`: BAD_ARGUMENT for an unknown level.
pub(super) fn log(cx: &mut (impl Guest + ?Sized), level: u64, msg: u64, len: u64) -> HostResult {
    let level = u32::try_from(level).ok().and_then(LogLevel::from_raw).ok_or(Status::BadArgument)?;
    if level < cx.state().env.log_level {
        // Dropped without copying, but a bad range is still reported.
        if len > 0 {
            check_range(cx, msg, len)?;
        }
        return Ok(Status::Ok);
    }
    // The message is read where it lies in guest memory where the engine lends it; where it
    // is copied, only what a line can keep is (one byte more, so the line knows it was cut).
    let keep = (cx.state().quotas.max_log_line_bytes as u64).saturating_add(1).min(len);
    if len > 0 {
        check_range(cx, msg, len)?;
    }
    let total = usize::try_from(len).unwrap_or(usize::MAX);
    with_guest_bytes(cx, msg, keep, |bytes, state| emit_part(state, level, bytes, total))?;
    Ok(Status::Ok)
}

/// `proxy_get_log_level(return_level*)` (0.2.1).
pub(super) fn get_log_level(cx: &mut (impl Guest + ?Sized), out: u64) -> HostResult {
    let level = cx.state().env.log_level as u32;
    write_u32(cx, out, level)?;
    Ok(Status::Ok)
}

/// Sends one line to the log sink, attributed to the effective context, if at or above the
/// VM's level, within the log quotas: a line longer than
/// [`Quotas::max_log_line_bytes`](crate::Quotas) is cut (a marker says by how much), and once
/// the callback has logged [`Quotas::max_log_bytes_per_callback`](crate::Quotas) further
/// lines are dropped (counted, and reported in one line when the callback ends).
pub(crate) fn emit(state: &mut HostState, level: LogLevel, message: &[u8]) {
    emit_part(state, level, message, message.len());
}

/// [`emit`] for the first bytes of a longer message of `total` bytes (a caller that copied
/// only what a line can hold).
pub(crate) fn emit_part(state: &mut HostState, level: LogLevel, message: &[u8], total: usize) {
    if level < state.env.log_level {
        return;
    }
    let left = state.quotas.max_log_bytes_per_callback.saturating_sub(state.budget.logged);
    if left == 0 || state.budget.lines >= state.quotas.max_log_lines_per_callback {
        if state.budget.dropped_lines == 0 {
            state.note_quota(if left == 0 { Quota::LogBytes } else { Quota::LogLines });
        }
        state.budget.dropped_lines += 1;
        return;
    }
    state.budget.lines += 1;
    let keep = state.quotas.max_log_line_bytes.min(left);
    if total <= keep {
        state.budget.logged += message.len();
        send(state, level, message);
        return;
    }
    state.note_quota(if keep == left { Quota::LogBytes } else { Quota::LogLine });
    state.budget.logged += keep;
    let mut cut = message[..keep.min(message.len())].to_vec();
    cut.extend_from_slice(format!("…[truncated {} bytes]", total - keep).as_bytes());
    send(state, level, &cut);
}

fn send(state: &HostState, level: LogLevel, message: &[u8]) {
    let line = LogLine::new(&state.env.vm_id, &state.contexts, state.effective, level, message);
    state.env.services.log.log(&line);
}

/// The line that ends a callback whose log budget ran out: how many lines were dropped.
#[cold]
pub(crate) fn log_dropped_lines(state: &mut HostState) {
    let n = state.budget.dropped_lines;
    let max = state.quotas.max_log_bytes_per_callback;
    let (lines, max_lines) = (state.budget.lines, state.quotas.max_log_lines_per_callback);
    let text = if lines >= max_lines {
        format!("[wasmux] {n} log lines dropped: the callback logged its quota of {max_lines} lines")
    } else {
        format!("[wasmux] {n} log lines dropped: the callback logged its quota of {max} bytes")
    };
    send(state, LogLevel::Warn.max(state.env.log_level), text.as_bytes());
}
