//! HTTP and gRPC callouts, and `proxy_get_status`.
//!
//! Callouts belong to the root context of the effective context; their responses are delivered
//! to that root context, where SDKs switch to the originating stream with
//! `proxy_set_effective_context`.

use std::time::Duration;

use crate::guest::{HostResult, check_range, copy_out, read_bytes, read_string, refused, write_u32};
use crate::services::{GrpcAction, GrpcCallout, HttpCallout};
use crate::state::{Callout, CalloutKind};
use crate::vm::Guest;
use crate::{HeaderMap, HostState, Quota, Refused, Status, pairs};

fn read_map(cx: &mut (impl Guest + ?Sized), ptr: u64, len: u64) -> Result<HeaderMap, Status> {
    let bytes = read_bytes(cx, ptr, len)?;
    Ok(HeaderMap::from_pairs(pairs::decode(&bytes).map_err(|_| Status::BadArgument)?))
}

fn owner(state: &HostState) -> Result<u32, Refused> {
    state.contexts.get(&state.effective).map(|c| c.root).ok_or(Status::BadArgument.into())
}

/// Registers a callout owned by the effective context's root, holding `held` bytes, within the
/// callout quotas. `timeout` is what the filter asked for; the host caps it (and turns "no
/// timeout" into the cap) except for gRPC streams.
fn new_token(state: &mut HostState, kind: CalloutKind, timeout: Duration, held: usize) -> Result<u32, Refused> {
    let root = owner(state)?;
    if state.callouts.len() >= state.quotas.max_callouts {
        return Err(Quota::Callouts.into());
    }
    if state.callout_bytes.saturating_add(held) > state.quotas.max_callout_bytes {
        return Err(Quota::CalloutBytes.into());
    }
    let token = state.next_token;
    state.next_token = state.next_token.checked_add(1).unwrap_or(1);
    let deadline_ns = if kind == CalloutKind::GrpcStream {
        u64::MAX
    } else {
        let max = state.env.max_callout_timeout;
        let t = if timeout.is_zero() { max } else { timeout.min(max) };
        let now = state.env.services.clock.monotonic_nanos();
        now.saturating_add(u64::try_from(t.as_nanos()).unwrap_or(u64::MAX))
    };
    state.callout_bytes += held;
    state.callouts.insert(token, Callout { root, kind, deadline_ns, held, pending: Default::default() });
    Ok(token)
}

/// `proxy_get_status(return_code*, return_message**, return_message_size*)`: the status of the
/// callout whose response is being delivered.
pub(super) fn get_status(cx: &mut (impl Guest + ?Sized), out_code: u64, out_ptr: u64, out_len: u64) -> HostResult {
    let (code, msg) = cx.state().status.clone();
    check_range(cx, out_code, 4)?;
    let s = copy_out(cx, &msg, out_ptr, out_len)?;
    write_u32(cx, out_code, code)?;
    Ok(s)
}

/// `proxy_http_call(upstream, headers, body, trailers, timeout_ms, return_token*)`. The headers
/// must hold `:method`, `:path` and `:authority` (else BAD_ARGUMENT).
#[allow(clippy::too_many_arguments, reason = "mirrors the ABI signature")]
pub(super) fn http_call(
    cx: &mut (impl Guest + ?Sized),
    up: u64,
    up_len: u64,
    hdr: u64,
    hdr_len: u64,
    body: u64,
    body_len: u64,
    trl: u64,
    trl_len: u64,
    timeout: u64,
    out: u64,
) -> HostResult {
    let upstream = read_string(cx, up, up_len)?;
    let headers = read_map(cx, hdr, hdr_len)?;
    let state = cx.state();
    if body_len > state.quotas.max_body_bytes as u64 {
        return Ok(state.refuse(Quota::BodyBytes)?);
    }
    if (state.callout_bytes as u64).saturating_add(body_len) > state.quotas.max_callout_bytes as u64 {
        return Ok(state.refuse(Quota::CalloutBytes)?);
    }
    let body = read_bytes(cx, body, body_len)?;
    let trailers = read_map(cx, trl, trl_len)?;
    check_range(cx, out, 4)?;
    if [&b":method"[..], b":path", b":authority"].iter().any(|k| headers.get(k).is_none()) {
        return Ok(Status::BadArgument);
    }
    let state = cx.state();
    let timeout = Duration::from_millis(u64::from(timeout as u32));
    let held = body.len() + headers.byte_size() + trailers.byte_size();
    let token = match new_token(state, CalloutKind::Http, timeout, held) {
        Ok(t) => t,
        Err(r) => return refused(state, r),
    };
    let call = HttpCallout { token, upstream, headers, body, trailers, timeout };
    if let Err(s) = state.env.services.callouts.http_call(&call) {
        state.remove_callout(token);
        return Ok(s);
    }
    write_u32(cx, out, token)?;
    Ok(Status::Ok)
}

#[allow(clippy::too_many_arguments, reason = "mirrors the ABI signature")]
fn grpc_open(
    cx: &mut (impl Guest + ?Sized),
    stream: bool,
    strings: [(u64, u64); 3],
    md: (u64, u64),
    message: Vec<u8>,
    timeout: Duration,
    out: u64,
) -> HostResult {
    let upstream = read_string(cx, strings[0].0, strings[0].1)?;
    let service = read_string(cx, strings[1].0, strings[1].1)?;
    let method = read_string(cx, strings[2].0, strings[2].1)?;
    let initial_metadata = read_map(cx, md.0, md.1)?;
    check_range(cx, out, 4)?;
    let state = cx.state();
    let kind = if stream { CalloutKind::GrpcStream } else { CalloutKind::GrpcCall };
    let held = message.len() + initial_metadata.byte_size();
    let token = match new_token(state, kind, timeout, held) {
        Ok(t) => t,
        Err(r) => return refused(state, r),
    };
    let call = GrpcCallout { token, stream, upstream, service, method, initial_metadata, message, timeout };
    if let Err(s) = state.env.services.callouts.grpc_open(&call) {
        state.remove_callout(token);
        return Ok(s);
    }
    write_u32(cx, out, token)?;
    Ok(Status::Ok)
}

/// `proxy_grpc_call(upstream, service, method, initial_metadata, message, timeout_ms,
/// return_token*)`.
#[allow(clippy::too_many_arguments, reason = "mirrors the ABI signature")]
pub(super) fn grpc_call(
    cx: &mut (impl Guest + ?Sized),
    up: u64,
    up_len: u64,
    svc: u64,
    svc_len: u64,
    method: u64,
    method_len: u64,
    md: u64,
    md_len: u64,
    msg: u64,
    msg_len: u64,
    timeout: u64,
    out: u64,
) -> HostResult {
    if msg_len > cx.state().quotas.max_body_bytes as u64 {
        return Ok(cx.state().refuse(Quota::BodyBytes)?);
    }
    let message = read_bytes(cx, msg, msg_len)?;
    let timeout = Duration::from_millis(u64::from(timeout as u32));
    grpc_open(cx, false, [(up, up_len), (svc, svc_len), (method, method_len)], (md, md_len), message, timeout, out)
}

/// `proxy_grpc_stream(upstream, service, method, initial_metadata, return_token*)`.
#[allow(clippy::too_many_arguments, reason = "mirrors the ABI signature")]
pub(super) fn grpc_stream(
    cx: &mut (impl Guest + ?Sized),
    up: u64,
    up_len: u64,
    svc: u64,
    svc_len: u64,
    method: u64,
    method_len: u64,
    md: u64,
    md_len: u64,
    out: u64,
) -> HostResult {
    grpc_open(
        cx,
        true,
        [(up, up_len), (svc, svc_len), (method, method_len)],
        (md, md_len),
        Vec::new(),
        Duration::ZERO,
        out,
    )
}

fn grpc_act(state: &mut HostState, token: u64, action: GrpcAction) -> HostResult {
    let token = token as u32;
    let Some(c) = state.callouts.get(&token) else { return Ok(Status::NotFound) };
    match (&action, c.kind) {
        (GrpcAction::Send { message, .. }, CalloutKind::GrpcStream) => {
            if c.pending.len() >= state.quotas.max_grpc_pending_sends {
                return Ok(state.refuse(Quota::GrpcPendingSends)?);
            }
            if state.callout_bytes.saturating_add(message.len()) > state.quotas.max_callout_bytes {
                return Ok(state.refuse(Quota::CalloutBytes)?);
            }
        }
        (GrpcAction::Send { .. }, _) | (_, CalloutKind::Http) => return Ok(Status::BadArgument),
        _ => {}
    }
    if let Err(s) = state.env.services.callouts.grpc_action(token, &action) {
        return Ok(s);
    }
    match action {
        GrpcAction::Send { message, .. } => {
            if let Some(c) = state.callouts.get_mut(&token) {
                c.pending.push_back(message.len());
                c.held += message.len();
                state.callout_bytes += message.len();
            }
        }
        GrpcAction::Cancel | GrpcAction::Close => {
            state.remove_callout(token);
        }
    }
    Ok(Status::Ok)
}

/// `proxy_grpc_send(token, message, message_len, end_stream)`: streams only.
pub(super) fn grpc_send(cx: &mut (impl Guest + ?Sized), token: u64, msg: u64, msg_len: u64, end: u64) -> HostResult {
    let state = cx.state();
    if msg_len > state.quotas.max_body_bytes as u64 {
        return Ok(state.refuse(Quota::BodyBytes)?);
    }
    // The callout quotas, checked before the message is copied (again after, by `grpc_act`).
    if let Some(c) = state.callouts.get(&(token as u32))
        && c.kind == CalloutKind::GrpcStream
    {
        if c.pending.len() >= state.quotas.max_grpc_pending_sends {
            return Ok(state.refuse(Quota::GrpcPendingSends)?);
        }
        if (state.callout_bytes as u64).saturating_add(msg_len) > state.quotas.max_callout_bytes as u64 {
            return Ok(state.refuse(Quota::CalloutBytes)?);
        }
    }
    let message = read_bytes(cx, msg, msg_len)?;
    grpc_act(cx.state(), token, GrpcAction::Send { message, end_stream: end as u32 != 0 })
}

/// `proxy_grpc_cancel(token)`: no further callbacks for the call or stream.
pub(super) fn grpc_cancel(cx: &mut (impl Guest + ?Sized), token: u64) -> HostResult {
    grpc_act(cx.state(), token, GrpcAction::Cancel)
}

/// `proxy_grpc_close(token)`: closes the call or stream; no further callbacks.
pub(super) fn grpc_close(cx: &mut (impl Guest + ?Sized), token: u64) -> HostResult {
    grpc_act(cx.state(), token, GrpcAction::Close)
}
