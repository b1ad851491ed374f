//! Buffers: `proxy_get_buffer_bytes`, `proxy_set_buffer_bytes`, `proxy_get_buffer_status`, and
//! 0.1.0's `proxy_get_configuration`.

use crate::guest::{HostResult, check_range, copy_out, read_bytes, write_u32, write_word};
use crate::state::root_state;
use crate::vm::Guest;
use crate::{AbiVersion, BufferType, HostState, Quota, Status};

fn buffer_type(state: &HostState, raw: u64) -> Result<BufferType, Status> {
    let ty = u32::try_from(raw).ok().and_then(BufferType::from_raw).ok_or(Status::BadArgument)?;
    if state.abi == AbiVersion::V0_1_0 && ty as u32 >= BufferType::VmConfiguration as u32 {
        return Err(Status::BadArgument);
    }
    Ok(ty)
}

/// The plugin configuration visible to the effective context (or the root being configured).
fn plugin_configuration(state: &HostState) -> Option<&[u8]> {
    let root = state.configuring.or_else(|| state.contexts.get(&state.effective).map(|c| c.root))?;
    root_state(&state.contexts, root).map(|r| &r.plugin.configuration[..])
}

/// Read access to a buffer; NOT_FOUND when it does not exist in this callback.
fn read_buffer(state: &mut HostState, ty: BufferType) -> Result<(&[u8], bool), Status> {
    let found = match ty {
        BufferType::RequestBody => state.http().map(|h| (&h.request_body.buffered[..], h.request_body.end_of_stream)),
        BufferType::ResponseBody => {
            state.http().map(|h| (&h.response_body.buffered[..], h.response_body.end_of_stream))
        }
        BufferType::DownstreamData => state.tcp().map(|t| (&t.downstream.buffered[..], t.downstream.end_of_stream)),
        BufferType::UpstreamData => state.tcp().map(|t| (&t.upstream.buffered[..], t.upstream.end_of_stream)),
        BufferType::HttpCallResponseBody => state.inputs.call_body.as_deref().map(|b| (b, true)),
        BufferType::GrpcMessage => state.inputs.grpc_message.as_deref().map(|b| (b, true)),
        BufferType::VmConfiguration => Some((&state.env.vm_configuration[..], true)),
        BufferType::PluginConfiguration => plugin_configuration(state).map(|b| (b, true)),
        BufferType::ForeignFunctionArguments => state.inputs.foreign_args.as_deref().map(|b| (b, true)),
    };
    found.ok_or(Status::NotFound)
}

/// `proxy_get_buffer_bytes(type, start, max_size, return_data**, return_size*)`: copies up to
/// `max_size` bytes from `start`; ranges past the end (and `start + max_size` overflowing) are
/// clamped, and an empty result is `(0, 0)`.
pub(super) fn get_buffer_bytes(
    cx: &mut (impl Guest + ?Sized),
    ty: u64,
    start: u64,
    max: u64,
    out_ptr: u64,
    out_len: u64,
) -> HostResult {
    let state = cx.state();
    let ty = buffer_type(state, ty)?;
    let (buf, _) = read_buffer(state, ty)?;
    // Native filters pass `max = usize::MAX` ("everything"): clamp instead of overflowing.
    let from = usize::try_from(start).unwrap_or(usize::MAX).min(buf.len());
    let to = usize::try_from(start.saturating_add(max)).unwrap_or(usize::MAX).min(buf.len());
    let data = buf[from..to].to_vec();
    copy_out(cx, &data, out_ptr, out_len)
}

/// `proxy_set_buffer_bytes(type, start, size, data, len)`: replaces `size` bytes at `start`
/// with the data. `start = 0, size = 0` prepends; `start >= len` appends; `start = 0,
/// size >= len` replaces everything; any other range is spliced. A buffer that would grow past
/// [`Quotas::max_body_bytes`](crate::Quotas) is left as it was (BAD_ARGUMENT).
pub(super) fn set_buffer_bytes(
    cx: &mut (impl Guest + ?Sized),
    ty: u64,
    start: u64,
    size: u64,
    ptr: u64,
    len: u64,
) -> HostResult {
    let ty = buffer_type(cx.state(), ty)?;
    let max = cx.state().quotas.max_body_bytes;
    // The size the buffer would have, checked before anything is copied.
    let current = match read_buffer(cx.state(), ty) {
        Ok((buf, _)) => buf.len(),
        Err(_) => 0,
    };
    let from = usize::try_from(start).unwrap_or(usize::MAX).min(current);
    let to = from.saturating_add(usize::try_from(size).unwrap_or(usize::MAX)).min(current);
    if (current - (to - from)) as u64 + len > max as u64 {
        return Ok(cx.state().refuse(Quota::BodyBytes)?);
    }
    let data = read_bytes(cx, ptr, len)?;
    let state = cx.state();
    let buf = match ty {
        BufferType::RequestBody => state.http().map(|h| &mut h.request_body.buffered),
        BufferType::ResponseBody => state.http().map(|h| &mut h.response_body.buffered),
        BufferType::DownstreamData => state.tcp().map(|t| &mut t.downstream.buffered),
        BufferType::UpstreamData => state.tcp().map(|t| &mut t.upstream.buffered),
        BufferType::HttpCallResponseBody => state.inputs.call_body.as_mut(),
        BufferType::GrpcMessage => state.inputs.grpc_message.as_mut(),
        BufferType::ForeignFunctionArguments => state.inputs.foreign_args.as_mut(),
        // Configuration is read-only.
        BufferType::VmConfiguration | BufferType::PluginConfiguration => return Ok(Status::BadArgument),
    };
    let buf = buf.ok_or(Status::NotFound)?;
    let from = usize::try_from(start).unwrap_or(usize::MAX).min(buf.len());
    let to = from.saturating_add(usize::try_from(size).unwrap_or(usize::MAX)).min(buf.len());
    buf.splice(from..to, data);
    Ok(Status::Ok)
}

/// `proxy_get_buffer_status(type, return_size*, return_flags*)`: the size, and flag bit 0
/// (`EndOfStream`) when the stream's last chunk has arrived.
pub(super) fn get_buffer_status(cx: &mut (impl Guest + ?Sized), ty: u64, out_len: u64, out_flags: u64) -> HostResult {
    let state = cx.state();
    let ty = buffer_type(state, ty)?;
    let (buf, eos) = read_buffer(state, ty)?;
    let (len, flags) = (buf.len() as u64, u32::from(eos));
    let word = cx.word_size() as u64;
    check_range(cx, out_len, word)?;
    check_range(cx, out_flags, 4)?;
    write_word(cx, out_len, len)?;
    write_u32(cx, out_flags, flags)?;
    Ok(Status::Ok)
}

/// `proxy_get_configuration(return_data**, return_size*)` (0.1.0): the plugin configuration
/// inside `proxy_on_configure`, the VM configuration otherwise (`proxy_on_vm_start`).
pub(super) fn get_configuration(cx: &mut (impl Guest + ?Sized), out_ptr: u64, out_len: u64) -> HostResult {
    let state = cx.state();
    let data = match state.configuring {
        Some(_) => plugin_configuration(state).unwrap_or_default().to_vec(),
        None => state.env.vm_configuration.clone(),
    };
    copy_out(cx, &data, out_ptr, out_len)
}
