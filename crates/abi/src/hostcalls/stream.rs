//! Stream control: continue/close, local replies, and 0.1.0's route-cache call.

use crate::guest::{HostResult, read_bytes, read_string};
use crate::state::{ContextKind, LocalReply, StreamControl};
use crate::vm::Guest;
use crate::{HeaderMap, HostState, Status, StreamType, pairs};

/// Records a control request on the effective stream. Resuming a direction releases its
/// buffered body or data.
fn control(state: &mut HostState, ctl: StreamControl) -> Result<(), Status> {
    let ctx = state.effective_context().ok_or(Status::NotFound)?;
    match (&mut ctx.kind, ctl) {
        (ContextKind::Http(h), StreamControl::Continue(t)) => match t {
            StreamType::HttpRequest => h.request_body.release(),
            StreamType::HttpResponse => h.response_body.release(),
            _ => return Err(Status::BadArgument),
        },
        (ContextKind::Tcp(t), StreamControl::Continue(ty)) => match ty {
            StreamType::Downstream => t.downstream.release(),
            StreamType::Upstream => t.upstream.release(),
            _ => return Err(Status::BadArgument),
        },
        (ContextKind::Http(_), StreamControl::Close(StreamType::HttpRequest | StreamType::HttpResponse))
        | (ContextKind::Tcp(_), StreamControl::Close(StreamType::Downstream | StreamType::Upstream))
        | (ContextKind::Http(_), StreamControl::ClearRouteCache) => {}
        (ContextKind::Root(_), _) => return Err(Status::NotFound),
        _ => return Err(Status::BadArgument),
    }
    match &mut ctx.kind {
        ContextKind::Http(h) => h.control.push(ctl),
        ContextKind::Tcp(t) => t.control.push(ctl),
        ContextKind::Root(_) => {}
    }
    Ok(())
}

fn stream_type(raw: u64) -> Result<StreamType, Status> {
    u32::try_from(raw).ok().and_then(StreamType::from_raw).ok_or(Status::BadArgument)
}

/// `proxy_continue_stream(stream_type)` (0.2.0+).
pub(super) fn continue_stream(cx: &mut (impl Guest + ?Sized), ty: u64) -> HostResult {
    control(cx.state(), StreamControl::Continue(stream_type(ty)?))?;
    Ok(Status::Ok)
}

/// `proxy_close_stream(stream_type)` (0.2.0+).
pub(super) fn close_stream(cx: &mut (impl Guest + ?Sized), ty: u64) -> HostResult {
    control(cx.state(), StreamControl::Close(stream_type(ty)?))?;
    Ok(Status::Ok)
}

/// `proxy_continue_request()` (0.1.0).
pub(super) fn continue_request(cx: &mut (impl Guest + ?Sized)) -> HostResult {
    control(cx.state(), StreamControl::Continue(StreamType::HttpRequest))?;
    Ok(Status::Ok)
}

/// `proxy_continue_response()` (0.1.0).
pub(super) fn continue_response(cx: &mut (impl Guest + ?Sized)) -> HostResult {
    control(cx.state(), StreamControl::Continue(StreamType::HttpResponse))?;
    Ok(Status::Ok)
}

/// `proxy_clear_route_cache()` (0.1.0).
pub(super) fn clear_route_cache(cx: &mut (impl Guest + ?Sized)) -> HostResult {
    control(cx.state(), StreamControl::ClearRouteCache)?;
    Ok(Status::Ok)
}

/// `proxy_send_local_response(status, details, details_len, body, body_len, headers,
/// headers_len, grpc_status)`: records the reply on the effective HTTP stream and forces the
/// running callback's result to Pause. `grpc_status = -1` means a plain HTTP reply.
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
