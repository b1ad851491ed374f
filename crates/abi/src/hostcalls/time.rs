//! Clocks and timers: `proxy_get_current_time_nanoseconds`, `proxy_set_tick_period_milliseconds`.

use std::time::Duration;

use crate::Status;
use crate::guest::{HostResult, write_u64};
use crate::state::ContextKind;
use crate::vm::Guest;

/// `proxy_get_current_time_nanoseconds(return_time*)`: wall clock, u64 nanoseconds.
pub(super) fn get_current_time(cx: &mut (impl Guest + ?Sized), out: u64) -> HostResult {
    let now = cx.state().env.services.clock.realtime_nanos();
    write_u64(cx, out, now)?;
    Ok(Status::Ok)
}

/// `proxy_set_tick_period_milliseconds(period)`: sets the timer of the effective context's
/// root context; 0 disables it.
pub(super) fn set_tick_period(cx: &mut (impl Guest + ?Sized), period: u64) -> HostResult {
    let period = period as u32;
    let state = cx.state();
    let Some(root) = state.contexts.get(&state.effective).map(|c| c.root) else {
        return Ok(Status::BadArgument);
    };
    let uid = state.uid;
    let Some(ContextKind::Root(r)) = state.contexts.get_mut(&root).map(|c| &mut c.kind) else {
        return Ok(Status::BadArgument);
    };
    r.tick_period_ms = period;
    let d = (period != 0).then(|| Duration::from_millis(u64::from(period)));
    state.env.services.timers.set_tick_period(uid, root, d);
    Ok(Status::Ok)
}
