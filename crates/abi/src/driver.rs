//! The ABI driver: start-up, contexts, callbacks and teardown for one instance.
//!
//! [`Vm`] turns embedder events ("request headers arrived") into the right `proxy_on_*` call
//! for the module's ABI version, converts results, and keeps the context rules: ids from a
//! per-VM counter starting at 1, `on_context_create` before anything else, and teardown as
//! Envoy does it: done → log → delete for streams, done → delete for root contexts, whose
//! shutdown the filter may defer until it calls `proxy_done`.

use std::sync::Arc;
use std::time::Duration;

use crate::exports::{Callback, Exports};
use crate::quota::{CallBudget, QuotaCounts};
use crate::state::{
    Body, CallInputs, CalloutKind, Context, ContextKind, HttpStreamState, Lifecycle, Restriction, RootState,
    TcpStreamState,
};
use crate::vm::{Limits, WasmInstance, WasmModule};
use crate::{AbiVersion, Action, Error, HeaderMap, HostState, PeerType, PluginConfig, Rejection, Result, VmEnv};

/// The response to an HTTP callout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpCallResponse {
    /// Response headers, including `:status`.
    pub headers: HeaderMap,
    /// Response body.
    pub body: Vec<u8>,
    /// Response trailers.
    pub trailers: HeaderMap,
}

/// A live instance driven through the proxy-wasm ABI.
pub struct Vm {
    inst: Box<dyn WasmInstance>,
    failed: Option<String>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm").field("engine", &self.inst.engine()).field("failed", &self.failed).finish()
    }
}

fn ctx_err(id: u32, reason: &'static str) -> Error {
    Error::Context { id, reason }
}

impl Vm {
    /// Instantiates `module` and runs its start-up exports (`_initialize` then `main` or
    /// `__main_void`, else `_start`).
    ///
    /// # Errors
    /// Instantiation failures and start-up traps.
    ///
    /// During start-up the guest may call only the host functions proxy-wasm-cpp-host allows
    /// there (`proxy_log` and WASI); any other traps with
    /// [`TrapKind::Restricted`](crate::TrapKind::Restricted).
    pub fn new(module: &dyn WasmModule, abi: AbiVersion, env: Arc<VmEnv>, limits: &Limits) -> Result<Self> {
        let mut vm = Self::instantiate(module, abi, env, limits)?;
        vm.inst.state().restriction = Restriction::StartUp;
        let r = vm.start_up();
        vm.inst.state().restriction = Restriction::None;
        r.map(|()| vm)
    }

    /// Instantiates a snapshot module ([`snapshot::Template::rewrite`](crate::snapshot)) and
    /// gives the instance the template's root contexts: a VM in the state the template's start
    /// left, without running guest code. The tick periods are registered with `env`'s timers
    /// and the template's log lines emitted through its log sink, as the start would have.
    ///
    /// # Errors
    /// Instantiation failures.
    pub fn from_snapshot(
        module: &dyn WasmModule,
        abi: AbiVersion,
        env: Arc<VmEnv>,
        limits: &Limits,
        started: &crate::snapshot::Started,
    ) -> Result<Self> {
        let mut vm = Self::instantiate(module, abi, env, limits)?;
        started.restore(vm.inst.state());
        Ok(vm)
    }

    /// A fresh instance with its exports resolved; no guest code run.
    fn instantiate(module: &dyn WasmModule, abi: AbiVersion, env: Arc<VmEnv>, limits: &Limits) -> Result<Self> {
        let mut state = HostState::new(abi, env);
        state.quotas = limits.quotas.clone();
        let mut inst = module.instantiate(state, limits)?;
        let engine = inst.engine();
        let exports = Exports::resolve(|n| inst.lookup(n), abi);
        let state = inst.state();
        state.exports = exports;
        state.engine = engine;
        Ok(Self { inst, failed: None })
    }

    /// Runs the start-up exports: `_initialize` then `main` or `__main_void`, else `_start`.
    fn start_up(&mut self) -> Result<()> {
        if self.has(Callback::Initialize) {
            self.call(Callback::Initialize, 0, &[])?;
            if self.has(Callback::Main) {
                self.call(Callback::Main, 0, &[0, 0])?;
            } else if self.has(Callback::MainVoid) {
                self.call(Callback::MainVoid, 0, &[])?;
            }
        } else if self.has(Callback::Start) {
            self.call(Callback::Start, 0, &[])?;
        }
        Ok(())
    }

    /// The engine running this VM.
    pub fn engine(&self) -> &'static str {
        self.inst.engine()
    }

    /// The ABI version the module declared.
    pub fn abi(&mut self) -> AbiVersion {
        self.inst.state().abi
    }

    /// The host state (contexts, coverage).
    pub fn state(&mut self) -> &mut HostState {
        self.inst.state()
    }

    /// The underlying instance.
    pub fn instance(&mut self) -> &mut dyn WasmInstance {
        &mut *self.inst
    }

    /// Why the VM failed, if a callback trapped. A failed VM runs no more callbacks.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Names of the host functions the filter has called.
    pub fn coverage(&mut self) -> Vec<&'static str> {
        self.inst.state().coverage().collect()
    }

    fn has(&mut self, cb: Callback) -> bool {
        self.inst.state().exports.get(cb).is_some()
    }

    /// Calls a callback on behalf of context `ctx`. `Ok(None)` when the module does not export it.
    fn call(&mut self, cb: Callback, ctx: u32, args: &[u64]) -> Result<Option<u64>> {
        if let Some(why) = &self.failed {
            return Err(Error::Failed(why.clone()));
        }
        let state = self.inst.state();
        let Some(f) = state.exports.get(cb) else { return Ok(None) };
        state.current = ctx;
        state.effective = ctx;
        state.stop_iteration = false;
        state.budget = CallBudget::default();
        let r = self.inst.call(f, args);
        if self.inst.state().budget.dropped_lines > 0 {
            crate::hostcalls::log_dropped_lines(self.inst.state());
        }
        match r {
            Ok(v) => Ok(Some(v.unwrap_or(0))),
            Err(e) => Err(self.fail(cb, e)),
        }
    }

    /// How often each host-side quota was hit (refused or truncated) over the life of this
    /// VM.
    pub fn quota_counts(&mut self) -> QuotaCounts {
        self.inst.state().quota_counts.clone()
    }

    /// Quota hits over every quota: [`Self::quota_counts`]'s total, without the copy.
    pub fn quota_hits(&mut self) -> u64 {
        self.inst.state().quota_counts.total()
    }

    /// Tells the host that the embedder has taken `messages` messages the filter sent on gRPC
    /// stream `token` (written to the connection, or dropped with the stream), so that they
    /// no longer count against [`Quotas::max_grpc_pending_sends`](crate::Quotas). An embedder
    /// that sends gRPC streams calls it as its send buffer drains.
    pub fn on_grpc_sent(&mut self, token: u32, messages: usize) {
        self.inst.state().release_sends(token, messages);
    }

    /// Marks the VM failed by an error from callback `cb`.
    #[cold]
    fn fail(&mut self, cb: Callback, mut e: Error) -> Error {
        if let Error::Trap(t) = &mut e {
            t.export = Some(cb.name().to_string());
        }
        self.failed = Some(e.to_string());
        e
    }

    /// Runs the work that waits for the end of a top-level callback: contexts finished with
    /// `proxy_done`, and one round of shared-queue notifications for this VM.
    ///
    /// A round delivers the notifications pending when it starts, one callback each; those
    /// raised by its own callbacks (a filter feeding its own queue) wait for the next round,
    /// at the next event or [`Self::poll`]. A filter can thus make progress through its
    /// queue, but never hold the host in a loop.
    fn settle(&mut self) -> Result<()> {
        self.finish_done()?;
        let state = self.inst.state();
        let queued = state.env.services.queues.take_ready(state.uid);
        for (root, queue) in queued {
            if self.is_root(root) {
                self.call(Callback::OnQueueReady, root, &[u64::from(root), u64::from(queue)])?;
                self.finish_done()?;
            }
        }
        Ok(())
    }

    /// `proxy_on_delete` for the root contexts whose deferred shutdown the filter completed
    /// with `proxy_done`. Each context finishes once, so this ends.
    fn finish_done(&mut self) -> Result<()> {
        loop {
            let ready = std::mem::take(&mut self.inst.state().done_ready);
            if ready.is_empty() {
                return Ok(());
            }
            for id in ready {
                // Still waiting: not deleted meanwhile (by `finish`, when `proxy_on_done` both
                // called `proxy_done` and returned true).
                if self.inst.state().contexts.get(&id).is_some_and(|c| c.life == Lifecycle::DoneReady) {
                    self.delete(id)?;
                }
            }
        }
    }

    fn event<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let r = f(self)?;
        self.settle()?;
        Ok(r)
    }

    fn is_root(&mut self, id: u32) -> bool {
        matches!(self.inst.state().contexts.get(&id), Some(Context { kind: ContextKind::Root(_), .. }))
    }

    fn new_context(&mut self, root: u32, kind: ContextKind) -> u32 {
        let state = self.inst.state();
        let id = state.next_context;
        state.next_context += 1;
        let root = if root == 0 { id } else { root };
        state.contexts.insert(id, Context { root, kind, life: Lifecycle::Active });
        id
    }

    /// Starts a plugin: creates its root context, then `proxy_on_vm_start` and
    /// `proxy_on_configure`. Returns the root context id.
    ///
    /// # Errors
    /// [`Error::Rejected`] when the filter refuses its VM or plugin configuration; traps.
    pub fn start_plugin(&mut self, plugin: Arc<PluginConfig>) -> Result<u32> {
        self.event(|vm| {
            let cfg_len = plugin.configuration.len() as u64;
            let id = vm.new_context(
                0,
                ContextKind::Root(RootState { plugin, tick_period_ms: 0, properties: Default::default() }),
            );
            vm.call(Callback::OnContextCreate, id, &[u64::from(id), 0])?;
            let vm_cfg = vm.inst.state().env.vm_configuration.len() as u64;
            if vm.call(Callback::OnVmStart, id, &[u64::from(id), vm_cfg])? == Some(0) {
                vm.inst.state().remove_context(id);
                return Err(Error::Rejected(Rejection::VmStart));
            }
            vm.inst.state().configuring = Some(id);
            let r = vm.call(Callback::OnConfigure, id, &[u64::from(id), cfg_len]);
            vm.inst.state().configuring = None;
            if r? == Some(0) {
                vm.inst.state().remove_context(id);
                return Err(Error::Rejected(Rejection::Configure));
            }
            Ok(id)
        })
    }

    fn check_root(&mut self, root: u32) -> Result<()> {
        if self.is_root(root) { Ok(()) } else { Err(ctx_err(root, "not a root context")) }
    }

    /// Creates an HTTP stream context under a root context.
    ///
    /// # Errors
    /// Unknown root; traps.
    pub fn create_http_stream(&mut self, root: u32) -> Result<u32> {
        self.check_root(root)?;
        let stream = self.inst.state().new_http_stream();
        let id = self.new_context(root, ContextKind::Http(stream));
        if self.failed.is_some() {
            // A failed VM runs no guest code: the stream exists host-side only, and every event
            // on it returns `Error::Failed`, for the embedder's failure policy to answer.
            return Ok(id);
        }
        self.event(|vm| {
            vm.call(Callback::OnContextCreate, id, &[u64::from(id), u64::from(root)])?;
            Ok(id)
        })
    }

    /// Creates a TCP stream context under a root context and calls `proxy_on_new_connection`.
    ///
    /// # Errors
    /// Unknown root; traps.
    pub fn create_tcp_stream(&mut self, root: u32) -> Result<(u32, Action)> {
        self.check_root(root)?;
        self.event(|vm| {
            let id = vm.new_context(root, ContextKind::Tcp(Box::default()));
            vm.call(Callback::OnContextCreate, id, &[u64::from(id), u64::from(root)])?;
            let r = vm.call(Callback::OnNewConnection, id, &[u64::from(id)])?;
            Ok((id, vm.action(r)))
        })
    }

    /// The state of an HTTP stream.
    ///
    /// # Errors
    /// Unknown id or not an HTTP stream.
    pub fn http(&mut self, id: u32) -> Result<&mut HttpStreamState> {
        match self.inst.state().contexts.get_mut(&id).map(|c| &mut c.kind) {
            Some(ContextKind::Http(h)) => Ok(h),
            _ => Err(ctx_err(id, "not an HTTP stream")),
        }
    }

    /// The state of a TCP stream.
    ///
    /// # Errors
    /// Unknown id or not a TCP stream.
    pub fn tcp(&mut self, id: u32) -> Result<&mut TcpStreamState> {
        match self.inst.state().contexts.get_mut(&id).map(|c| &mut c.kind) {
            Some(ContextKind::Tcp(t)) => Ok(t),
            _ => Err(ctx_err(id, "not a TCP stream")),
        }
    }

    fn action(&mut self, raw: Option<u64>) -> Action {
        if self.inst.state().stop_iteration {
            return Action::Pause;
        }
        raw.map_or(Action::Continue, |r| Action::from_raw(r as u32))
    }

    fn headers_event(&mut self, id: u32, cb: Callback, count: usize, eos: bool) -> Result<Action> {
        let n = count as u64;
        let r = if self.abi() == AbiVersion::V0_1_0 {
            self.call(cb, id, &[u64::from(id), n])?
        } else {
            self.call(cb, id, &[u64::from(id), n, u64::from(eos)])?
        };
        Ok(self.action(r))
    }

    /// Delivers request headers (replacing the stream's request headers).
    ///
    /// # Errors
    /// Unknown stream; traps.
    pub fn on_request_headers(&mut self, id: u32, headers: HeaderMap, end_of_stream: bool) -> Result<Action> {
        let n = headers.len();
        let h = self.http(id)?;
        h.request_headers = headers;
        h.request_body.end_of_stream = end_of_stream;
        self.event(|vm| vm.headers_event(id, Callback::OnRequestHeaders, n, end_of_stream))
    }

    /// Delivers response headers.
    ///
    /// # Errors
    /// Unknown stream; traps.
    pub fn on_response_headers(&mut self, id: u32, headers: HeaderMap, end_of_stream: bool) -> Result<Action> {
        let n = headers.len();
        let h = self.http(id)?;
        h.response_headers = headers;
        h.response_body.end_of_stream = end_of_stream;
        self.event(|vm| vm.headers_event(id, Callback::OnResponseHeaders, n, end_of_stream))
    }

    fn data_event(
        &mut self,
        id: u32,
        cb: Callback,
        chunk: &[u8],
        eos: bool,
        body: fn(&mut ContextKind) -> Option<&mut Body>,
    ) -> Result<Action> {
        let state = self.inst.state();
        let max = state.quotas.max_body_bytes;
        let ctx = state.contexts.get_mut(&id).ok_or(ctx_err(id, "unknown context"))?;
        let b = body(&mut ctx.kind).ok_or(ctx_err(id, "wrong stream kind"))?;
        if b.buffered.len().saturating_add(chunk.len()) > max {
            return Ok(self.overflow(id, cb));
        }
        b.buffered.extend_from_slice(chunk);
        b.end_of_stream = eos;
        let size = b.buffered.len() as u64;
        self.event(|vm| {
            let r = vm.call(cb, id, &[u64::from(id), size, u64::from(eos)])?;
            let action = vm.action(r);
            if action == Action::Continue
                && let Some(b) = vm.inst.state().contexts.get_mut(&id).and_then(|c| body(&mut c.kind))
            {
                b.release();
            }
            Ok(action)
        })
    }

    /// Answers a stream whose buffered body would grow past
    /// [`Quotas::max_body_bytes`](crate::Quotas) as Envoy answers a buffer overflow: 413
    /// `request_payload_too_large` for a request body, 500 `response_payload_too_large` for a
    /// response body, a close for TCP data. The filter is not called.
    #[cold]
    fn overflow(&mut self, id: u32, cb: Callback) -> Action {
        let state = self.inst.state();
        state.note_quota(crate::Quota::BodyBytes);
        let (status_code, details) = match cb {
            Callback::OnRequestBody => (413, "request_payload_too_large"),
            _ => (500, "response_payload_too_large"),
        };
        match state.contexts.get_mut(&id).map(|c| &mut c.kind) {
            Some(ContextKind::Http(h)) => {
                h.local_reply.get_or_insert_with(|| crate::LocalReply {
                    status_code,
                    details: details.into(),
                    body: Vec::new(),
                    headers: HeaderMap::new(),
                    grpc_status: None,
                });
            }
            Some(ContextKind::Tcp(t)) => t.control.push(crate::StreamControl::Close(crate::StreamType::Downstream)),
            _ => {}
        }
        Action::Pause
    }

    /// Delivers a request body chunk. The chunk joins the buffered body; on Continue the
    /// buffered bytes are released (moved to [`Body::sent`]).
    ///
    /// # Errors
    /// Unknown stream; traps.
    pub fn on_request_body(&mut self, id: u32, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        self.data_event(id, Callback::OnRequestBody, chunk, end_of_stream, |k| match k {
            ContextKind::Http(h) => Some(&mut h.request_body),
            _ => None,
        })
    }

    /// Delivers a response body chunk.
    ///
    /// # Errors
    /// Unknown stream; traps.
    pub fn on_response_body(&mut self, id: u32, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        self.data_event(id, Callback::OnResponseBody, chunk, end_of_stream, |k| match k {
            ContextKind::Http(h) => Some(&mut h.response_body),
            _ => None,
        })
    }

    /// Delivers request trailers.
    ///
    /// # Errors
    /// Unknown stream; traps.
    pub fn on_request_trailers(&mut self, id: u32, trailers: HeaderMap) -> Result<Action> {
        let n = trailers.len() as u64;
        self.http(id)?.request_trailers = trailers;
        self.event(|vm| {
            let r = vm.call(Callback::OnRequestTrailers, id, &[u64::from(id), n])?;
            Ok(vm.action(r))
        })
    }

    /// Delivers response trailers.
    ///
    /// # Errors
    /// Unknown stream; traps.
    pub fn on_response_trailers(&mut self, id: u32, trailers: HeaderMap) -> Result<Action> {
        let n = trailers.len() as u64;
        self.http(id)?.response_trailers = trailers;
        self.event(|vm| {
            let r = vm.call(Callback::OnResponseTrailers, id, &[u64::from(id), n])?;
            Ok(vm.action(r))
        })
    }

    /// Delivers data from the client on a TCP stream.
    ///
    /// # Errors
    /// Unknown stream; traps.
    pub fn on_downstream_data(&mut self, id: u32, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        self.data_event(id, Callback::OnDownstreamData, chunk, end_of_stream, |k| match k {
            ContextKind::Tcp(t) => Some(&mut t.downstream),
            _ => None,
        })
    }

    /// Delivers data from the server on a TCP stream.
    ///
    /// # Errors
    /// Unknown stream; traps.
    pub fn on_upstream_data(&mut self, id: u32, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        self.data_event(id, Callback::OnUpstreamData, chunk, end_of_stream, |k| match k {
            ContextKind::Tcp(t) => Some(&mut t.upstream),
            _ => None,
        })
    }

    /// Tells a TCP stream that the client side closed.
    ///
    /// # Errors
    /// Unknown stream; traps.
    pub fn on_downstream_close(&mut self, id: u32, peer: PeerType) -> Result<()> {
        self.tcp(id)?;
        self.event(|vm| vm.call(Callback::OnDownstreamConnectionClose, id, &[u64::from(id), peer as u64]).map(drop))
    }

    /// Tells a TCP stream that the server side closed.
    ///
    /// # Errors
    /// Unknown stream; traps.
    pub fn on_upstream_close(&mut self, id: u32, peer: PeerType) -> Result<()> {
        self.tcp(id)?;
        self.event(|vm| vm.call(Callback::OnUpstreamConnectionClose, id, &[u64::from(id), peer as u64]).map(drop))
    }

    fn log_and_delete(&mut self, id: u32) -> Result<()> {
        self.call(Callback::OnLog, id, &[u64::from(id)])?;
        self.delete(id)
    }

    fn delete(&mut self, id: u32) -> Result<()> {
        self.call(Callback::OnDelete, id, &[u64::from(id)])?;
        self.inst.state().remove_context(id);
        Ok(())
    }

    /// Ends a context, as Envoy does.
    ///
    /// - A stream (HTTP or TCP): `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`. What
    ///   `proxy_on_done` returns is not used: Envoy finishes a stream whatever the filter
    ///   answers. Returns `true`.
    /// - A root context (plugin shutdown): `proxy_on_done`, then `proxy_on_delete`; a root
    ///   context gets no `proxy_on_log` (Envoy calls it only for streams, and for access
    ///   loggers from their log path). When `proxy_on_done` returns false the root is
    ///   deferred: this returns `false`, and `proxy_on_delete` runs after the callback in which
    ///   the filter calls `proxy_done` (proxy-wasm-cpp-host's `startShutdown` and
    ///   `finishShutdown`).
    ///
    /// # Errors
    /// Unknown context; traps.
    pub fn finish(&mut self, id: u32) -> Result<bool> {
        let is_root = match self.inst.state().contexts.get(&id) {
            Some(c) if c.life == Lifecycle::Active => matches!(c.kind, ContextKind::Root(_)),
            Some(_) => return Err(ctx_err(id, "already finishing")),
            None => return Err(ctx_err(id, "unknown context")),
        };
        if self.failed.is_some() {
            // No guest code runs on a failed VM; the host side of the context is dropped.
            self.inst.state().remove_context(id);
            return Ok(true);
        }
        self.event(|vm| {
            if !is_root {
                vm.call(Callback::OnDone, id, &[u64::from(id)])?;
                vm.log_and_delete(id)?;
                return Ok(true);
            }
            // Pending from here on, so a `proxy_done` inside `proxy_on_done` is accepted.
            if let Some(c) = vm.inst.state().contexts.get_mut(&id) {
                c.life = Lifecycle::DonePending;
            }
            if vm.call(Callback::OnDone, id, &[u64::from(id)])? == Some(0) {
                // Deferred, unless `proxy_done` already came inside on_done (then `settle`
                // deletes it right after this call).
                let ready = vm.inst.state().contexts.get(&id).is_some_and(|c| c.life == Lifecycle::DoneReady);
                return Ok(ready);
            }
            vm.delete(id)?;
            Ok(true)
        })
    }

    /// The root context a context belongs to (a root context is its own root); `None` for an
    /// unknown id.
    pub fn root_of(&mut self, id: u32) -> Option<u32> {
        self.inst.state().contexts.get(&id).map(|c| c.root)
    }

    /// How many contexts exist, root contexts included (deleted ones are gone).
    pub fn context_count(&mut self) -> usize {
        self.inst.state().contexts.len()
    }

    /// Whether a context still exists (for example one whose completion is deferred).
    pub fn context_exists(&mut self, id: u32) -> bool {
        self.inst.state().contexts.contains_key(&id)
    }

    /// Fires the tick timer of a root context (`proxy_on_tick`).
    ///
    /// # Errors
    /// Unknown root; traps.
    pub fn on_tick(&mut self, root: u32) -> Result<()> {
        self.check_root(root)?;
        self.event(|vm| vm.call(Callback::OnTick, root, &[u64::from(root)]).map(drop))
    }

    /// The tick period a root context asked for, if any.
    pub fn tick_period(&mut self, root: u32) -> Option<Duration> {
        match self.inst.state().contexts.get(&root).map(|c| &c.kind) {
            Some(ContextKind::Root(r)) if r.tick_period_ms > 0 => {
                Some(Duration::from_millis(u64::from(r.tick_period_ms)))
            }
            _ => None,
        }
    }

    /// Root contexts alive in this VM, in id order.
    pub fn roots(&mut self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .inst
            .state()
            .contexts
            .iter()
            .filter(|(_, c)| matches!(c.kind, ContextKind::Root(_)))
            .map(|(id, _)| *id)
            .collect();
        v.sort_unstable();
        v
    }

    /// Delivers pending shared-queue notifications for this VM (normally done after every
    /// event; call it when the VM is otherwise idle).
    ///
    /// # Errors
    /// Traps.
    pub fn poll(&mut self) -> Result<()> {
        self.settle()
    }

    fn callout_root(&mut self, token: u32) -> Result<u32> {
        self.inst.state().callouts.get(&token).map(|c| c.root).ok_or(ctx_err(token, "unknown callout token"))
    }

    fn with_inputs<T>(
        &mut self,
        inputs: CallInputs,
        status: (u32, Vec<u8>),
        f: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        let state = self.inst.state();
        state.inputs = inputs;
        state.status = status;
        let r = f(self);
        let state = self.inst.state();
        state.inputs = CallInputs::default();
        state.status = (0, Vec::new());
        r
    }

    /// Delivers the response of an HTTP callout to the root context that owns it. `None` means
    /// the call failed (reset or timed out): the filter sees zero headers.
    ///
    /// # Errors
    /// Unknown token; traps.
    pub fn on_http_call_response(&mut self, token: u32, response: Option<HttpCallResponse>) -> Result<()> {
        let root = self.callout_root(token)?;
        self.inst.state().remove_callout(token);
        let (inputs, status, counts) = match response {
            Some(r) => {
                let counts = [r.headers.len(), r.body.len(), r.trailers.len()];
                let inputs = CallInputs {
                    call_headers: Some(r.headers),
                    call_body: Some(r.body),
                    call_trailers: Some(r.trailers),
                    ..Default::default()
                };
                (inputs, (0, Vec::new()), counts)
            }
            None => {
                (CallInputs::default(), (crate::Status::InternalFailure as u32, b"callout failed".to_vec()), [0; 3])
            }
        };
        self.event(|vm| {
            vm.with_inputs(inputs, status, |vm| {
                let args = [u64::from(root), u64::from(token), counts[0] as u64, counts[1] as u64, counts[2] as u64];
                vm.call(Callback::OnHttpCallResponse, root, &args).map(drop)
            })
        })
    }

    /// Fails every callout whose timeout has passed on the monotonic clock: an HTTP call gets
    /// a failed response (no headers), a unary gRPC call is closed with `DEADLINE_EXCEEDED`
    /// (4). Returns the expired tokens. Call it periodically (the facade's `Plugin::poll`
    /// does).
    ///
    /// # Errors
    /// Traps in the response callbacks.
    pub fn expire_callouts(&mut self) -> Result<Vec<u32>> {
        let state = self.inst.state();
        let now = state.env.services.clock.monotonic_nanos();
        let mut expired: Vec<(u32, CalloutKind)> =
            state.callouts.iter().filter(|(_, c)| c.deadline_ns <= now).map(|(t, c)| (*t, c.kind)).collect();
        expired.sort_unstable_by_key(|(t, _)| *t);
        for (token, kind) in &expired {
            match kind {
                CalloutKind::Http => self.on_http_call_response(*token, None)?,
                CalloutKind::GrpcCall => self.on_grpc_close(*token, 4, "deadline exceeded")?,
                CalloutKind::GrpcStream => {}
            }
        }
        Ok(expired.into_iter().map(|(t, _)| t).collect())
    }

    /// Delivers gRPC initial metadata.
    ///
    /// # Errors
    /// Unknown token; traps.
    pub fn on_grpc_initial_metadata(&mut self, token: u32, metadata: HeaderMap) -> Result<()> {
        let root = self.callout_root(token)?;
        let n = metadata.len() as u64;
        let inputs = CallInputs { grpc_initial: Some(metadata), ..Default::default() };
        self.event(|vm| {
            vm.with_inputs(inputs, (0, Vec::new()), |vm| {
                vm.call(Callback::OnGrpcReceiveInitialMetadata, root, &[u64::from(root), u64::from(token), n]).map(drop)
            })
        })
    }

    /// Delivers one gRPC response message.
    ///
    /// # Errors
    /// Unknown token; traps.
    pub fn on_grpc_message(&mut self, token: u32, message: Vec<u8>) -> Result<()> {
        let root = self.callout_root(token)?;
        let n = message.len() as u64;
        let inputs = CallInputs { grpc_message: Some(message), ..Default::default() };
        self.event(|vm| {
            vm.with_inputs(inputs, (0, Vec::new()), |vm| {
                vm.call(Callback::OnGrpcReceive, root, &[u64::from(root), u64::from(token), n]).map(drop)
            })
        })
    }

    /// Delivers the response of a unary gRPC call that succeeded, then forgets the call, as
    /// Envoy does (`proxy_on_grpc_receive`, and no `proxy_on_grpc_close` after it). For a stream
    /// token it is [`Self::on_grpc_message`].
    ///
    /// # Errors
    /// Unknown token; traps.
    pub fn on_grpc_response(&mut self, token: u32, message: Vec<u8>) -> Result<()> {
        let unary = self.inst.state().callouts.get(&token).is_some_and(|c| c.kind == CalloutKind::GrpcCall);
        let r = self.on_grpc_message(token, message);
        if unary {
            self.inst.state().remove_callout(token);
        }
        r
    }

    /// Delivers gRPC trailing metadata.
    ///
    /// # Errors
    /// Unknown token; traps.
    pub fn on_grpc_trailing_metadata(&mut self, token: u32, metadata: HeaderMap) -> Result<()> {
        let root = self.callout_root(token)?;
        let n = metadata.len() as u64;
        let inputs = CallInputs { grpc_trailing: Some(metadata), ..Default::default() };
        self.event(|vm| {
            vm.with_inputs(inputs, (0, Vec::new()), |vm| {
                vm.call(Callback::OnGrpcReceiveTrailingMetadata, root, &[u64::from(root), u64::from(token), n])
                    .map(drop)
            })
        })
    }

    /// Closes a gRPC call or stream with a status code and message (readable through
    /// `proxy_get_status`).
    ///
    /// # Errors
    /// Unknown token; traps.
    pub fn on_grpc_close(&mut self, token: u32, status: i32, message: &str) -> Result<()> {
        let root = self.callout_root(token)?;
        self.inst.state().remove_callout(token);
        let st = (status as u32, message.as_bytes().to_vec());
        self.event(|vm| {
            vm.with_inputs(CallInputs::default(), st, |vm| {
                vm.call(Callback::OnGrpcClose, root, &[u64::from(root), u64::from(token), status as u32 as u64])
                    .map(drop)
            })
        })
    }

    /// Calls `proxy_on_foreign_function` (0.2.0+) on a root context with arguments readable
    /// from buffer `FOREIGN_FUNCTION_ARGUMENTS`.
    ///
    /// # Errors
    /// Unknown root; traps.
    pub fn on_foreign_function(&mut self, root: u32, function_id: u32, args: Vec<u8>) -> Result<()> {
        self.check_root(root)?;
        let n = args.len() as u64;
        let inputs = CallInputs { foreign_args: Some(args), ..Default::default() };
        self.event(|vm| {
            vm.with_inputs(inputs, (0, Vec::new()), |vm| {
                vm.call(Callback::OnForeignFunction, root, &[u64::from(root), u64::from(function_id), n]).map(drop)
            })
        })
    }
}
