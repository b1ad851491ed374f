//! HTTP fields: the `proxy_*_header_map_*` functions.

use crate::guest::{HostResult, copy_out, copy_out_from, read_bytes, with_guest_bytes, with_guest_pair, write_word};
use crate::vm::Guest;
use crate::{AbiVersion, HeaderMap, HostState, MapType, Quota, Status, pairs};

/// The map a call addresses; NOT_FOUND when it does not exist for the effective context in this
/// callback (a stream map from a root context, callout maps outside their callback).
fn map(state: &mut HostState, raw: u64) -> Result<&mut HeaderMap, Status> {
    let ty = u32::try_from(raw).ok().and_then(MapType::from_raw).ok_or(Status::BadArgument)?;
    let m = match ty {
        MapType::RequestHeaders => state.http().map(|h| &mut h.request_headers),
        MapType::RequestTrailers => state.http().map(|h| &mut h.request_trailers),
        MapType::ResponseHeaders => state.http().map(|h| &mut h.response_headers),
        MapType::ResponseTrailers => state.http().map(|h| &mut h.response_trailers),
        MapType::GrpcInitialMetadata => state.inputs.grpc_initial.as_mut(),
        MapType::GrpcTrailingMetadata => state.inputs.grpc_trailing.as_mut(),
        MapType::HttpCallResponseHeaders => state.inputs.call_headers.as_mut(),
        MapType::HttpCallResponseTrailers => state.inputs.call_trailers.as_mut(),
    };
    m.ok_or(Status::NotFound)
}

/// `proxy_get_header_map_pairs(type, return_data**, return_size*)`: the whole map, serialized;
/// an empty map is `(0, 0)`.
pub(super) fn get_pairs(cx: &mut (impl Guest + ?Sized), ty: u64, out_ptr: u64, out_len: u64) -> HostResult {
    let m = map(cx.state(), ty)?;
    if m.is_empty() {
        return copy_out(cx, &[], out_ptr, out_len);
    }
    // The map is kept serialized: one copy, into the block the guest allocates.
    let len = m.encoded().len();
    // An empty map is no bytes, `(0, 0)`, as above.
    copy_out_from(cx, len, out_ptr, out_len, |state| {
        map(state, ty).ok().map(|m| if m.is_empty() { &[][..] } else { m.encoded() })
    })
}

/// `proxy_set_header_map_pairs(type, data, len)`: replaces the whole map. A malformed map is
/// BAD_ARGUMENT and changes nothing; so is one over the map quotas (the serialized map is
/// checked against them before it is read).
pub(super) fn set_pairs(cx: &mut (impl Guest + ?Sized), ty: u64, ptr: u64, len: u64) -> HostResult {
    let q = &cx.state().quotas;
    // A serialized map is at least its entries' bytes plus 4 + 10 per entry.
    if len
        > (q.max_header_bytes as u64).saturating_add((q.max_header_count as u64).saturating_mul(10)).saturating_add(4)
    {
        return Ok(cx.state().refuse(Quota::HeaderBytes)?);
    }
    let bytes = read_bytes(cx, ptr, len)?;
    let parsed = pairs::decode(&bytes).map_err(|_| Status::BadArgument)?;
    let state = cx.state();
    if parsed.len() > state.quotas.max_header_count {
        return Ok(state.refuse(Quota::HeaderCount)?);
    }
    if parsed.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() > state.quotas.max_header_bytes {
        return Ok(state.refuse(Quota::HeaderBytes)?);
    }
    let m = map(state, ty)?;
    *m = HeaderMap::from_pairs(parsed);
    Ok(Status::Ok)
}

/// `proxy_get_header_map_size(type, return_size*)`: the size of the serialized map.
pub(super) fn get_size(cx: &mut (impl Guest + ?Sized), ty: u64, out: u64) -> HostResult {
    let m = map(cx.state(), ty)?;
    let size = if m.is_empty() { 0 } else { m.encoded().len() };
    write_word(cx, out, size as u64)?;
    Ok(Status::Ok)
}

/// `proxy_get_header_map_value(type, key, key_len, return_value**, return_size*)`: the first
/// value. A missing key is OK with an empty value in 0.1.0 and NOT_FOUND from 0.2.0.
pub(super) fn get_value(
    cx: &mut (impl Guest + ?Sized),
    ty: u64,
    key: u64,
    key_len: u64,
    out_ptr: u64,
    out_len: u64,
) -> HostResult {
    // The key is looked up where it lies in guest memory, and the value copied from the map
    // into the block the guest allocates: neither is copied on the way.
    let found = with_guest_bytes(cx, key, key_len, |key, state| {
        let m = map(state, ty)?;
        Ok::<_, Status>(m.locate(key))
    })??;
    match found {
        Some((i, len)) => copy_out_from(cx, len, out_ptr, out_len, |state| map(state, ty).ok()?.value_at(i)),
        None if cx.state().abi == AbiVersion::V0_1_0 => copy_out(cx, &[], out_ptr, out_len),
        None => Ok(Status::NotFound),
    }
}

/// `proxy_add_header_map_value(type, key, key_len, value, value_len)`: appends, within the
/// map quotas.
pub(super) fn add_value(
    cx: &mut (impl Guest + ?Sized),
    ty: u64,
    key: u64,
    key_len: u64,
    val: u64,
    val_len: u64,
) -> HostResult {
    edit(cx, ty, (key, key_len), (val, val_len), |m, q, key, val| {
        if m.len() >= q.count {
            return Err(Quota::HeaderCount);
        }
        if m.byte_size().saturating_add(key.len() + val.len()) > q.bytes {
            return Err(Quota::HeaderBytes);
        }
        m.add(key, val);
        Ok(())
    })
}

/// `proxy_replace_header_map_value(type, key, key_len, value, value_len)`: sets one value, last
/// in the map as in Envoy ([`HeaderMap::set`]), within the map quotas.
pub(super) fn replace_value(
    cx: &mut (impl Guest + ?Sized),
    ty: u64,
    key: u64,
    key_len: u64,
    val: u64,
    val_len: u64,
) -> HostResult {
    edit(cx, ty, (key, key_len), (val, val_len), |m, q, key, val| {
        // What an add would grow the map to bounds what a replace can: only when that is over
        // a quota is the map searched for what the replace takes out.
        if m.len() < q.count && m.byte_size().saturating_add(key.len() + val.len()) <= q.bytes {
            m.set(key, val);
            return Ok(());
        }
        // Setting removes every entry of the name; only the first's bytes are counted out (a
        // bound, exact when the name is there once).
        let grown = match m.locate(key) {
            Some((_, old)) => m.byte_size() - old + val.len(),
            None if m.len() >= q.count => return Err(Quota::HeaderCount),
            None => m.byte_size().saturating_add(key.len() + val.len()),
        };
        if grown > q.bytes {
            return Err(Quota::HeaderBytes);
        }
        m.set(key, val);
        Ok(())
    })
}

/// The quotas of one map.
#[derive(Clone, Copy)]
struct MapQuota {
    count: usize,
    bytes: usize,
}

/// A name/value edit of a map, given the map, its quotas, the name and the value.
type Edit = fn(&mut HeaderMap, MapQuota, &[u8], &[u8]) -> Result<(), Quota>;

/// Applies a name/value edit to map `ty`, the name and value read where they lie in guest
/// memory; a refusal by a quota is counted and answered with the quota's status.
fn edit(cx: &mut (impl Guest + ?Sized), ty: u64, key: (u64, u64), val: (u64, u64), op: Edit) -> HostResult {
    let q = &cx.state().quotas;
    if key.1.saturating_add(val.1) > q.max_header_bytes as u64 {
        // Too big on its own: refused before anything is read.
        return Ok(cx.state().refuse(Quota::HeaderBytes)?);
    }
    let limits = MapQuota { count: q.max_header_count, bytes: q.max_header_bytes };
    let r = with_guest_pair(cx, key, val, |key, val, state| map(state, ty).map(|m| op(m, limits, key, val)))??;
    match r {
        Ok(()) => Ok(Status::Ok),
        Err(quota) => Ok(cx.state().refuse(quota)?),
    }
}

/// `proxy_remove_header_map_value(type, key, key_len)`: OK even when absent.
pub(super) fn remove_value(cx: &mut (impl Guest + ?Sized), ty: u64, key: u64, key_len: u64) -> HostResult {
    with_guest_bytes(cx, key, key_len, |key, state| map(state, ty).map(|m| m.remove(key)))??;
    Ok(Status::Ok)
}
