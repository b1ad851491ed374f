//! Stream control: continue/close, local replies, and 0.1.0's route-cache call.

use crate::guest::{HostResult, read_bytes, read_string, refused};
use crate::state::{ContextKind, LocalReply, StreamControl};
use crate::vm::Guest;
use crate::{HeaderMap, HostState, Quota, Refused, Status, StreamType, pairs};

/// Records a control request on the effective stream, within
/// [`Quotas::max_stream_controls`](crate::Quotas). Resuming a direction releases its buffered
/// body or data.
fn control(state: &mut HostState, ctl: StreamControl) -> Result<(), Refused> {
    let max = state.quotas.max_stream_controls;
    let ctx = state.effective_context().ok_or(Status::NotFound)?;
    let (list, body) = match (&mut ctx.kind, ctl) {
        (ContextKind::Http(h), StreamControl::Continue(t)) => match t {
            StreamType::HttpRequest => (&mut h.control, Some(&mut h.request_body)),
            StreamType::HttpResponse => (&mut h.control, Some(&mut h.response_body)),
            _ => return Err(Status::BadArgument.into()),
        },
        (ContextKind::Tcp(t), StreamControl::Continue(ty)) => match ty {
            StreamType::Downstream => (&mut t.control, Some(&mut t.downstream)),
            StreamType::Upstream => (&mut t.control, Some(&mut t.upstream)),
            _ => return Err(Status::BadArgument.into()),
        },
        (ContextKind::Http(h), StreamControl::Close(StreamType::HttpRequest | StreamType::HttpResponse))
        | (ContextKind::Http(h), StreamControl::ClearRouteCache) => (&mut h.control, None),
        (ContextKind::Tcp(t), StreamControl::Close(StreamType::Downstream | StreamType::Upstream)) => {
            (&mut t.control, None)
        }
        (ContextKind::Root(_), _) => return Err(Status::NotFound.into()),
        _ => return Err(Status::BadArgument.into()),
    };
    if list.len() >= max {
        return Err(Quota::StreamControls.into());
    }
    list.push(ctl);
    if let Some(body) = body {
        body.release();
    }
    Ok(())
}

/// Runs a control request for a host function: OK, or the status it was refused with.
fn answer(cx: &mut (impl Guest + ?Sized), ctl: StreamControl) -> HostResult {
    match control(cx.state(), ctl) {
        Ok(()) => Ok(Status::Ok),
        Err(r) => refused(cx.state(), r),
    }
}

fn stream_type(raw: u64) -> Result<StreamType, Status> {
    u32::try_from(raw).ok().and_then(StreamType::from_raw).ok_or(Status::BadArgument)
}

/// `proxy_continue_stream(stream_type)` (0.2.0+).
pub(super) fn continue_stream(cx: &mut (impl Guest + ?Sized), ty: u64) -> HostResult {
    answer(cx, StreamControl::Continue(stream_type(ty)?))
}

/// `proxy_close_stream(stream_type)` (0.2.0+).
pub(super) fn close_stream(cx: &mut (impl Guest + ?Sized), ty: u64) -> HostResult {
    answer(cx, StreamControl::Close(stream_type(ty)?))
}

/// `proxy_continue_request()` (0.1.0).
pub(super) fn continue_request(cx: &mut (impl Guest + ?Sized)) -> HostResult {
    answer(cx, StreamControl::Continue(StreamType::HttpRequest))
}

/// `proxy_continue_response()` (0.1.0).
pub(super) fn continue_response(cx: &mut (impl Guest + ?Sized)) -> HostResult {
    answer(cx, StreamControl::Continue(StreamType::HttpResponse))
}

/// `proxy_clear_route_cache()` (0.1.0).
pub(super) fn clear_route_cache(cx: &mut (impl Guest + ?Sized)) -> HostResult {
    answer(cx, StreamControl::ClearRouteCache)
}

/// Longest response-code details a filter may give (BAD_ARGUMENT beyond).
const MAX_DETAILS: u64 = 4096;

/// `proxy_send_local_response(status, details, details_len, body, body_len, headers,
/// headers_len, grpc_status)`: records the reply on the effective HTTP stream and forces the
/// running callback's result to Pause. `grpc_status = -1` means a plain HTTP reply. The body
/// is held to [`Quotas::max_body_bytes`](crate::Quotas), the details to 4 KiB.
#[allow(clippy::too_many_arguments, reason = "mirrors the ABI signature")]
pub(super) fn send_local_response(
    cx: &mut (impl Guest + ?Sized),
    code: u64,
    details: u64,
    details_len: u64,
    body: u64,
    body_len: u64,
    headers: u64,
    headers_len: u64,
    grpc: u64,
) -> HostResult {
    if body_len > cx.state().quotas.max_body_bytes as u64 {
        return Ok(cx.state().refuse(Quota::BodyBytes)?);
    }
    if details_len > MAX_DETAILS {
        return Ok(Status::BadArgument);
    }
    let details = read_string(cx, details, details_len)?;
    let body = read_bytes(cx, body, body_len)?;
    let headers = read_bytes(cx, headers, headers_len)?;
    let headers = HeaderMap::from_pairs(pairs::decode(&headers).map_err(|_| Status::BadArgument)?);
    let grpc = grpc as u32 as i32;
    let state = cx.state();
    let http = state.http().ok_or(Status::NotFound)?;
    http.local_reply =
        Some(LocalReply { status_code: code as u32, details, body, headers, grpc_status: (grpc >= 0).then_some(grpc) });
    state.stop_iteration = true;
    Ok(Status::Ok)
}
