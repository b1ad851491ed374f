//! Shared key-value store and shared queues (process-wide, partitioned by VM id).

use crate::guest::{HostResult, check_range, copy_out, read_bytes, read_string, refused, write_u32};
use crate::services::QueueOwner;
use crate::vm::Guest;
use crate::{Quota, Status};

/// `proxy_get_shared_data(key, key_len, return_value**, return_size*, return_cas*)`.
pub(super) fn get_shared_data(
    cx: &mut (impl Guest + ?Sized),
    key: u64,
    key_len: u64,
    out_ptr: u64,
    out_len: u64,
    out_cas: u64,
) -> HostResult {
    let key = read_bytes(cx, key, key_len)?;
    let state = cx.state();
    let Some((value, cas)) = state.env.services.shared_data.get(&state.env.vm_id, &key) else {
        return Ok(Status::NotFound);
    };
    check_range(cx, out_cas, 4)?;
    copy_out(cx, &value, out_ptr, out_len)?;
    write_u32(cx, out_cas, cas)?;
    Ok(Status::Ok)
}

/// `proxy_set_shared_data(key, key_len, value, value_len, cas)`: a non-zero `cas` must match,
/// else CAS_MISMATCH. An empty value is stored as empty (the Rust SDK's delete).
pub(super) fn set_shared_data(
    cx: &mut (impl Guest + ?Sized),
    key: u64,
    key_len: u64,
    val: u64,
    val_len: u64,
    cas: u64,
) -> HostResult {
    if key_len.saturating_add(val_len) > cx.state().quotas.max_shared_data_value_bytes as u64 {
        // Too big on its own: refused before it is read.
        return Ok(cx.state().refuse(Quota::SharedDataValue)?);
    }
    let key = read_bytes(cx, key, key_len)?;
    let value = read_bytes(cx, val, val_len)?;
    let state = cx.state();
    match state.env.services.shared_data.set(&state.env.vm_id, &key, &value, cas as u32, &state.quotas) {
        Ok(()) => Ok(Status::Ok),
        Err(r) => refused(state, r),
    }
}

/// Longest queue name (and VM id) accepted, in bytes (longer ones are BAD_ARGUMENT).
const MAX_QUEUE_NAME: u64 = 1024;

/// `proxy_register_shared_queue(name, name_len, return_id*)`: creates or opens a queue owned by
/// the effective context's root context.
pub(super) fn register_queue(cx: &mut (impl Guest + ?Sized), name: u64, name_len: u64, out: u64) -> HostResult {
    if name_len > MAX_QUEUE_NAME {
        return Ok(Status::BadArgument);
    }
    let name = read_bytes(cx, name, name_len)?;
    check_range(cx, out, 4)?;
    let state = cx.state();
    let Some(root) = state.contexts.get(&state.effective).map(|c| c.root) else {
        return Ok(Status::BadArgument);
    };
    let owner = QueueOwner { vm_uid: state.uid, root_context: root };
    let id = match state.env.services.queues.register(&state.env.vm_id, &name, owner, &state.quotas) {
        Ok(id) => id,
        Err(r) => return refused(state, r),
    };
    write_u32(cx, out, id)?;
    Ok(Status::Ok)
}

/// `proxy_resolve_shared_queue(vm_id, vm_id_len, name, name_len, return_id*)`: an empty VM id
/// means this VM. NOT_FOUND when absent.
pub(super) fn resolve_queue(
    cx: &mut (impl Guest + ?Sized),
    vm: u64,
    vm_len: u64,
    name: u64,
    name_len: u64,
    out: u64,
) -> HostResult {
    if vm_len > MAX_QUEUE_NAME || name_len > MAX_QUEUE_NAME {
        return Ok(Status::NotFound);
    }
    let vm = read_string(cx, vm, vm_len)?;
    let name = read_bytes(cx, name, name_len)?;
    let state = cx.state();
    let vm_id = if vm.is_empty() { state.env.vm_id.clone() } else { vm };
    let Some(id) = state.env.services.queues.resolve(&vm_id, &name) else {
        return Ok(Status::NotFound);
    };
    write_u32(cx, out, id)?;
    Ok(Status::Ok)
}

/// `proxy_enqueue_shared_queue(id, value, value_len)`.
pub(super) fn enqueue(cx: &mut (impl Guest + ?Sized), id: u64, val: u64, val_len: u64) -> HostResult {
    if val_len > cx.state().quotas.max_queue_bytes as u64 {
        // Too big for any queue: refused before it is read.
        return Ok(cx.state().refuse(Quota::QueueBytes)?);
    }
    // A full queue refuses without the item being copied (the service checks again).
    let state = cx.state();
    if let Err(r) = state.env.services.queues.has_room(id as u32, val_len, &state.quotas) {
        return refused(state, r);
    }
    let value = read_bytes(cx, val, val_len)?;
    let state = cx.state();
    match state.env.services.queues.enqueue(id as u32, &value, &state.quotas) {
        Ok(()) => Ok(Status::Ok),
        Err(r) => refused(state, r),
    }
}

/// `proxy_dequeue_shared_queue(id, return_value**, return_size*)`: EMPTY when nothing is queued.
pub(super) fn dequeue(cx: &mut (impl Guest + ?Sized), id: u64, out_ptr: u64, out_len: u64) -> HostResult {
    let word = cx.word_size() as u64;
    check_range(cx, out_ptr, word)?;
    check_range(cx, out_len, word)?;
    let item = cx.state().env.services.queues.dequeue(id as u32)?;
    copy_out(cx, &item, out_ptr, out_len)
}
