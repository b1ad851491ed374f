//! Foreign functions: `proxy_call_foreign_function`.

use crate::Status;
use crate::guest::{HostResult, copy_out, read_bytes, read_string};
use crate::vm::Guest;

/// `proxy_call_foreign_function(name, name_len, args, args_len, return_results**,
/// return_size*)`: NOT_FOUND for an unknown name. With both out-pointers 0 the result is
/// discarded.
pub(super) fn call_foreign_function(
    cx: &mut (impl Guest + ?Sized),
    name: u64,
    name_len: u64,
    args: u64,
    args_len: u64,
    out_ptr: u64,
    out_len: u64,
) -> HostResult {
    let name = read_string(cx, name, name_len)?;
    let args = read_bytes(cx, args, args_len)?;
    let Some(f) = cx.state().env.services.foreign.get(&name).cloned() else {
        return Ok(Status::NotFound);
    };
    let result = f(&args)?;
    if out_ptr == 0 && out_len == 0 {
        return Ok(Status::Ok);
    }
    copy_out(cx, &result, out_ptr, out_len)
}
