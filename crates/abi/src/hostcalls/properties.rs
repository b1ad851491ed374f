//! Properties: `proxy_get_property`, `proxy_set_property`.
//!
//! Paths are segments joined by NUL bytes. Lookup order: values the filter set on the effective
//! context (then on its root context); nothing when the embedder hides the path
//! ([`Properties::hidden`](crate::services::Properties::hidden)); values wasmux derives itself
//! (`plugin_*`, request and response attributes from the stream's headers); then the
//! embedder's [`Properties`](crate::services::Properties) service. Encodings follow Envoy: strings raw,
//! integers 8 bytes little-endian, maps in the pairs format.

use crate::guest::{HostResult, copy_out, read_bytes, refused};
use crate::state::{ContextKind, HttpStreamState, root_state};
use crate::vm::Guest;
use crate::{HeaderMap, HostState, Quota, Refused, Status};

fn map_value(m: &HeaderMap, rest: &[&[u8]]) -> Option<Vec<u8>> {
    match rest {
        [] => Some(m.encoded().to_vec()),
        [key] => m.get(key).map(<[u8]>::to_vec),
        _ => None,
    }
}

fn header(m: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    m.get(name.as_bytes()).map(<[u8]>::to_vec)
}

fn request_property(h: &HttpStreamState, path: &[&[u8]]) -> Option<Vec<u8>> {
    let req = &h.request_headers;
    let (name, rest) = path.split_first()?;
    let full_path = || header(req, ":path");
    match (&name[..], rest) {
        (b"headers", rest) => map_value(req, rest),
        (b"trailers", rest) => map_value(&h.request_trailers, rest),
        (_, [_, ..]) => None,
        (b"path", []) => full_path(),
        (b"url_path", []) => full_path().map(|p| p.split(|b| *b == b'?').next().unwrap_or_default().to_vec()),
        (b"query", []) => full_path().map(|p| p.splitn(2, |b| *b == b'?').nth(1).unwrap_or_default().to_vec()),
        (b"host", []) => header(req, ":authority").or_else(|| header(req, "host")),
        (b"scheme", []) => header(req, ":scheme"),
        (b"method", []) => header(req, ":method"),
        (b"referer", []) => header(req, "referer"),
        (b"useragent", []) => header(req, "user-agent"),
        (b"id", []) => header(req, "x-request-id"),
        (b"headers_bytes", []) => Some((req.byte_size() as i64).to_le_bytes().to_vec()),
        (b"size", []) => Some((h.request_body.all().len() as i64).to_le_bytes().to_vec()),
        _ => None,
    }
}

fn response_property(h: &HttpStreamState, path: &[&[u8]]) -> Option<Vec<u8>> {
    let (name, rest) = path.split_first()?;
    let resp = &h.response_headers;
    match (&name[..], rest) {
        (b"headers", rest) => map_value(resp, rest),
        (b"trailers", rest) => map_value(&h.response_trailers, rest),
        (b"code", []) => {
            let code = header(resp, ":status")
                .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<i64>().ok())
                .or_else(|| h.local_reply.as_ref().map(|r| i64::from(r.status_code)))?;
            Some(code.to_le_bytes().to_vec())
        }
        (b"grpc_status", []) => {
            let s = header(&h.response_trailers, "grpc-status").or_else(|| header(resp, "grpc-status"))?;
            Some(std::str::from_utf8(&s).ok()?.parse::<i64>().ok()?.to_le_bytes().to_vec())
        }
        (b"headers_bytes", []) => Some((resp.byte_size() as i64).to_le_bytes().to_vec()),
        (b"size", []) => Some((h.response_body.all().len() as i64).to_le_bytes().to_vec()),
        _ => None,
    }
}

fn lookup(state: &HostState, raw: &[u8]) -> Option<Vec<u8>> {
    let mut segs: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    // A dotted first segment (`request.path`) is accepted for the attribute names.
    let dotted: Vec<&[u8]>;
    if segs.len() == 1 && segs[0].contains(&b'.') {
        dotted = segs[0].split(|b| *b == b'.').collect();
        segs = dotted;
    }
    let ctx = state.contexts.get(&state.effective)?;
    let root = root_state(&state.contexts, ctx.root)?;
    let overlay = match &ctx.kind {
        ContextKind::Http(h) => h.properties.get(raw),
        ContextKind::Tcp(t) => t.properties.get(raw),
        ContextKind::Root(_) => None,
    };
    if let Some(v) = overlay.or_else(|| root.properties.get(raw)) {
        return Some(v.clone());
    }
    if state.env.services.properties.hidden(&segs) {
        return None;
    }
    let derived = match (segs.as_slice(), &ctx.kind) {
        ([b"plugin_name"], _) => Some(root.plugin.name.as_bytes().to_vec()),
        ([b"plugin_root_id"], _) => Some(root.plugin.root_id.as_bytes().to_vec()),
        ([b"plugin_vm_id"], _) => Some(state.env.vm_id.as_bytes().to_vec()),
        ([b"request", rest @ ..], ContextKind::Http(h)) => request_property(h, rest),
        ([b"response", rest @ ..], ContextKind::Http(h)) => response_property(h, rest),
        _ => None,
    };
    derived.or_else(|| state.env.services.properties.get(&segs))
}

/// `proxy_get_property(path, path_len, return_value**, return_size*)`: NOT_FOUND when unknown.
pub(super) fn get_property(
    cx: &mut (impl Guest + ?Sized),
    path: u64,
    path_len: u64,
    out_ptr: u64,
    out_len: u64,
) -> HostResult {
    let raw = read_bytes(cx, path, path_len)?;
    let Some(value) = lookup(cx.state(), &raw) else {
        return Ok(Status::NotFound);
    };
    copy_out(cx, &value, out_ptr, out_len)
}

/// `proxy_set_property(path, path_len, value, value_len)`: stored on the effective context
/// (stream or connection; the root context when called outside a stream) and visible to later
/// reads there. A context holds at most [`Quotas::max_properties`](crate::Quotas) properties
/// of [`Quotas::max_property_bytes`](crate::Quotas) in all (paths plus values).
pub(super) fn set_property(
    cx: &mut (impl Guest + ?Sized),
    path: u64,
    path_len: u64,
    val: u64,
    val_len: u64,
) -> HostResult {
    if path_len.saturating_add(val_len) > cx.state().quotas.max_property_bytes as u64 {
        return Ok(cx.state().refuse(Quota::PropertyBytes)?);
    }
    let raw = read_bytes(cx, path, path_len)?;
    let value = read_bytes(cx, val, val_len)?;
    if raw.is_empty() {
        return Ok(Status::BadArgument);
    }
    let state = cx.state();
    match store(state, raw, value) {
        Ok(()) => Ok(Status::Ok),
        Err(r) => refused(state, r),
    }
}

/// Stores a property on the effective context (raw NUL-joined path), within the property
/// quotas.
pub(super) fn store(state: &mut HostState, raw: Vec<u8>, value: Vec<u8>) -> Result<(), Refused> {
    let (max_count, max_bytes) = (state.quotas.max_properties, state.quotas.max_property_bytes);
    let ctx = state.effective_context().ok_or(Status::NotFound)?;
    let props = match &mut ctx.kind {
        ContextKind::Http(h) => &mut h.properties,
        ContextKind::Tcp(t) => &mut t.properties,
        ContextKind::Root(r) => &mut r.properties,
    };
    let replaced = props.get(&raw).map(|old| raw.len() + old.len());
    if replaced.is_none() && props.len() >= max_count {
        return Err(Quota::Properties.into());
    }
    let held: usize = props.iter().map(|(k, v)| k.len() + v.len()).sum();
    if held - replaced.unwrap_or(0) + raw.len() + value.len() > max_bytes {
        return Err(Quota::PropertyBytes.into());
    }
    props.insert(raw, value);
    Ok(())
}
