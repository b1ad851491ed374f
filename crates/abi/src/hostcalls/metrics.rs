//! Metrics: define, increment, record, get.

use crate::guest::{HostResult, check_range, read_string, refused, write_u32, write_u64};
use crate::services::MAX_METRIC_NAME;
use crate::vm::Guest;
use crate::{MetricType, Status};

/// `proxy_define_metric(type, name, name_len, return_id*)`: BAD_ARGUMENT for an unknown type or
/// a name longer than [`MAX_METRIC_NAME`] bytes.
pub(super) fn define(cx: &mut (impl Guest + ?Sized), ty: u64, name: u64, name_len: u64, out: u64) -> HostResult {
    let kind = u32::try_from(ty).ok().and_then(MetricType::from_raw).ok_or(Status::BadArgument)?;
    if name_len > MAX_METRIC_NAME as u64 {
        return Ok(Status::BadArgument);
    }
    let name = read_string(cx, name, name_len)?;
    check_range(cx, out, 4)?;
    let state = cx.state();
    let id = match state.env.services.metrics.define(kind, &name, &state.quotas) {
        Ok(id) => id,
        Err(r) => return refused(state, r),
    };
    write_u32(cx, out, id)?;
    Ok(Status::Ok)
}

/// `proxy_increment_metric(id, i64 delta)`: counters cannot go down (BAD_ARGUMENT).
pub(super) fn increment(cx: &mut (impl Guest + ?Sized), id: u64, delta: u64) -> HostResult {
    cx.state().env.services.metrics.increment(id as u32, delta as i64)?;
    Ok(Status::Ok)
}

/// `proxy_record_metric(id, u64 value)`: sets a gauge or records a histogram sample.
pub(super) fn record(cx: &mut (impl Guest + ?Sized), id: u64, value: u64) -> HostResult {
    cx.state().env.services.metrics.record(id as u32, value)?;
    Ok(Status::Ok)
}

/// `proxy_get_metric(id, return_value*)`: u64.
pub(super) fn get(cx: &mut (impl Guest + ?Sized), id: u64, out: u64) -> HostResult {
    let v = cx.state().env.services.metrics.get(id as u32)?;
    write_u64(cx, out, v)?;
    Ok(Status::Ok)
}
