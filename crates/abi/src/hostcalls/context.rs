//! Contexts: `proxy_set_effective_context`, `proxy_done`.

use crate::Status;
use crate::guest::HostResult;
use crate::state::Lifecycle;
use crate::vm::Guest;

/// `proxy_set_effective_context(context_id)`: later host calls in this callback act on that
/// context. BAD_ARGUMENT for an unknown id.
pub(super) fn set_effective_context(cx: &mut (impl Guest + ?Sized), id: u64) -> HostResult {
    let state = cx.state();
    let Ok(id) = u32::try_from(id) else { return Ok(Status::BadArgument) };
    if !state.contexts.contains_key(&id) {
        return Ok(Status::BadArgument);
    }
    state.effective = id;
    Ok(Status::Ok)
}

/// `proxy_done()`: completes the deferred shutdown of the effective context's root context
/// (its `proxy_on_done` returned false); `proxy_on_delete` follows once the running callback
/// returns. NOT_FOUND when that root is not waiting for it: streams cannot be deferred, as in
/// Envoy.
pub(super) fn done(cx: &mut (impl Guest + ?Sized)) -> HostResult {
    let state = cx.state();
    let Some(root) = state.effective_context().map(|c| c.root) else { return Ok(Status::NotFound) };
    match state.contexts.get_mut(&root) {
        Some(c) if c.life == Lifecycle::DonePending => {
            c.life = Lifecycle::DoneReady;
            state.done_ready.push(root);
            Ok(Status::Ok)
        }
        _ => Ok(Status::NotFound),
    }
}
