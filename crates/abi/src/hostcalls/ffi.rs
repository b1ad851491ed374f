//! Foreign functions: `proxy_call_foreign_function`, and the Envoy built-ins that act on the
//! calling stream.
//!
//! Lookup order: the embedder's registry ([`ForeignFunctions`](crate::services::ForeignFunctions),
//! whose defaults include Envoy's `compress`, `uncompress` and `clear_route_cache`), then the
//! built-ins below, which need the host state:
//!
//! - `set_envoy_filter_state`: a protobuf `SetEnvoyFilterStateArguments {string path = 1;
//!   string value = 2; LifeSpan span = 3}`. The value is kept on the effective context and read
//!   back as the property `filter_state.<path>` (`["filter_state", path]`), as Envoy serves its
//!   filter state. Envoy builds a typed object from a registered factory; wasmux keeps the
//!   bytes.
//! - `declare_property`: a protobuf `DeclarePropertyArguments {string name = 1; bool readonly
//!   = 2; WasmType type = 3; bytes schema = 4; LifeSpan span = 5}`. Accepted when well formed;
//!   wasmux properties are untyped, so the declaration changes nothing else.
//!
//! Malformed arguments are `BAD_ARGUMENT`, as in Envoy.

use crate::guest::{HostResult, copy_out, read_bytes, read_string};
use crate::proto;
use crate::vm::Guest;
use crate::{HostState, Quota, Refused, Status};

/// Longest foreign-function name accepted (longer ones are NOT_FOUND).
const MAX_NAME: u64 = 1024;

/// `proxy_call_foreign_function(name, name_len, args, args_len, return_results**,
/// return_size*)`: NOT_FOUND for an unknown name. With both out-pointers 0 the result is
/// discarded. Arguments are held to [`Quotas::max_body_bytes`](crate::Quotas).
pub(super) fn call_foreign_function(
    cx: &mut (impl Guest + ?Sized),
    name: u64,
    name_len: u64,
    args: u64,
    args_len: u64,
    out_ptr: u64,
    out_len: u64,
) -> HostResult {
    if name_len > MAX_NAME {
        return Ok(Status::NotFound);
    }
    if args_len > cx.state().quotas.max_body_bytes as u64 {
        return Ok(cx.state().refuse(Quota::BodyBytes)?);
    }
    let name = read_string(cx, name, name_len)?;
    let args = read_bytes(cx, args, args_len)?;
    let result = match cx.state().env.services.foreign.get(&name).cloned() {
        Some(f) => f(&args)?,
        None => match name.as_str() {
            "set_envoy_filter_state" => set_envoy_filter_state(cx.state(), &args)?,
            "declare_property" => declare_property(&args)?,
            _ => return Ok(Status::NotFound),
        },
    };
    if out_ptr == 0 && out_len == 0 {
        return Ok(Status::Ok);
    }
    copy_out(cx, &result, out_ptr, out_len)
}

/// `set_envoy_filter_state`: see the module docs.
fn set_envoy_filter_state(state: &mut HostState, args: &[u8]) -> Result<Vec<u8>, Status> {
    let mut path = None;
    let mut value = Vec::new();
    for field in proto::fields(args) {
        match field? {
            (1, proto::Value::Bytes(b)) => path = Some(b),
            (2, proto::Value::Bytes(b)) => value = b.to_vec(),
            (3, proto::Value::Varint(span)) if span <= 2 => {}
            (1..=3, _) => return Err(Status::BadArgument),
            _ => {}
        }
    }
    let path = path.filter(|p| !p.is_empty()).ok_or(Status::BadArgument)?;
    let mut key = b"filter_state\0".to_vec();
    key.extend_from_slice(path);
    // Within the property quotas; a refusal is counted and answered like a property's.
    match super::properties::store(state, key, value) {
        Ok(()) => Ok(Vec::new()),
        Err(Refused::Status(s)) => Err(s),
        Err(Refused::Quota(q)) => {
            state.note_quota(q);
            Err(q.status())
        }
    }
}

/// `declare_property`: see the module docs.
fn declare_property(args: &[u8]) -> Result<Vec<u8>, Status> {
    let mut named = false;
    for field in proto::fields(args) {
        match field? {
            (1, proto::Value::Bytes(b)) => named = !b.is_empty(),
            (2 | 3 | 5, proto::Value::Varint(_)) | (4, proto::Value::Bytes(_)) => {}
            (1..=5, _) => return Err(Status::BadArgument),
            _ => {}
        }
    }
    if named { Ok(Vec::new()) } else { Err(Status::BadArgument) }
}
