//! Loading plugins, per-worker instances, and what happens when a filter fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmux_abi::{
    Action, Error, HeaderMap, HttpCallResponse, Limits, LocalReply, LogLevel, ModuleInfo, PeerType, PluginConfig,
    Result, Services, Vm, VmEnv, WasmEngine, WasmModule, check_module,
};

use crate::Runtime;

/// What to do with a stream when the filter's VM fails (traps, hits a limit), named after
/// Envoy's `failure_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Answer the stream with a 503 local reply (HTTP) or close it (TCP); later streams fail
    /// the same way until the plugin is replaced. The safe default.
    #[default]
    FailClosed,
    /// Skip the plugin: the stream continues as if the filter were absent.
    FailOpen,
    /// Fail the stream closed, then replace the VM with a fresh instance of the already
    /// compiled module, waiting `base_backoff`, doubled after each failed reload, up to
    /// `max_backoff`.
    Reload {
        /// First wait before a reload.
        base_backoff: Duration,
        /// Longest wait.
        max_backoff: Duration,
    },
}

/// Everything needed to run a plugin, besides the module bytes.
#[derive(Debug, Clone)]
pub struct PluginOptions {
    /// Plugin name (property `plugin_name`).
    pub name: String,
    /// Root id: selects the root context in the filter.
    pub root_id: String,
    /// VM id: shared data and queues are partitioned by it.
    pub vm_id: String,
    /// VM configuration (passed to `proxy_on_vm_start`).
    pub vm_configuration: Vec<u8>,
    /// Plugin configuration (passed to `proxy_on_configure`).
    pub plugin_configuration: Vec<u8>,
    /// Environment variables for WASI.
    pub environment: Vec<(String, String)>,
    /// Host log level.
    pub log_level: LogLevel,
    /// Resource limits per instance.
    pub limits: Limits,
    /// Failure policy.
    pub failure_policy: FailurePolicy,
    /// Embedder services; clones share state (give every plugin of a VM id the same one).
    pub services: Services,
    /// Cap on every HTTP call and unary gRPC call timeout (see [`Plugin::poll`]).
    pub max_callout_timeout: Duration,
}

impl Default for PluginOptions {
    fn default() -> Self {
        Self {
            name: String::new(),
            root_id: String::new(),
            vm_id: String::new(),
            vm_configuration: Vec::new(),
            plugin_configuration: Vec::new(),
            environment: Vec::new(),
            log_level: LogLevel::Info,
            limits: Limits::default(),
            failure_policy: FailurePolicy::default(),
            services: Services::default(),
            max_callout_timeout: VmEnv::DEFAULT_MAX_CALLOUT_TIMEOUT,
        }
    }
}

/// A compiled, checked module with its options: the thing every worker instantiates from.
#[derive(Debug)]
pub struct CompiledPlugin {
    engine: Arc<dyn WasmEngine>,
    module: Arc<dyn WasmModule>,
    info: ModuleInfo,
    env: Arc<VmEnv>,
    plugin: Arc<PluginConfig>,
    options: PluginOptions,
}

impl Runtime {
    /// Compiles and checks a module for this engine.
    ///
    /// # Errors
    /// [`Error::Compile`] for bytes that are not wasm, [`Error::Incompatible`] listing every
    /// import or export the host cannot satisfy.
    pub fn load(self, bytes: &[u8], options: PluginOptions) -> Result<Arc<CompiledPlugin>> {
        let engine = self.engine()?;
        CompiledPlugin::new(engine, bytes, options)
    }
}

impl CompiledPlugin {
    /// Compiles and checks a module on a given engine instance (share one engine between
    /// plugins to share its compiled-code caches).
    ///
    /// # Errors
    /// As [`Runtime::load`].
    pub fn new(engine: Arc<dyn WasmEngine>, bytes: &[u8], options: PluginOptions) -> Result<Arc<Self>> {
        let module = engine.compile(bytes)?;
        Self::from_module(engine, module, options)
    }

    /// Wraps an already compiled module (for example one from a module cache).
    ///
    /// # Errors
    /// [`Error::Incompatible`].
    pub fn from_module(
        engine: Arc<dyn WasmEngine>,
        module: Arc<dyn WasmModule>,
        options: PluginOptions,
    ) -> Result<Arc<Self>> {
        let info = check_module(&*module)?;
        let env = Arc::new(VmEnv {
            vm_id: options.vm_id.clone(),
            vm_configuration: options.vm_configuration.clone(),
            environment: options.environment.clone(),
            log_level: options.log_level,
            services: options.services.clone(),
            max_callout_timeout: options.max_callout_timeout,
        });
        let plugin = Arc::new(PluginConfig {
            name: options.name.clone(),
            root_id: options.root_id.clone(),
            configuration: options.plugin_configuration.clone(),
        });
        Ok(Arc::new(Self { engine, module, info, env, plugin, options }))
    }

    /// What the load-time check found.
    pub fn info(&self) -> &ModuleInfo {
        &self.info
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<dyn WasmEngine> {
        &self.engine
    }

    /// The compiled module.
    pub fn module(&self) -> &Arc<dyn WasmModule> {
        &self.module
    }

    /// The options it was loaded with.
    pub fn options(&self) -> &PluginOptions {
        &self.options
    }

    /// A started VM without plugin: instantiated and through its start-up exports.
    ///
    /// # Errors
    /// Instantiation failures and start-up traps.
    pub fn new_vm(&self) -> Result<Vm> {
        Vm::new(&*self.module, self.info.abi, self.env.clone(), &self.options.limits)
    }

    /// A new instance with the plugin started (`on_vm_start`, `on_configure`): what each worker
    /// thread runs. Reuses the compiled code; never recompiles.
    ///
    /// # Errors
    /// Start-up traps, and [`Error::Rejected`] when the filter refuses its configuration.
    pub fn instantiate(self: &Arc<Self>) -> Result<Plugin> {
        let (vm, root) = self.start()?;
        Ok(Plugin {
            compiled: self.clone(),
            vm,
            root,
            stats: PluginStats::default(),
            next_reload: None,
            backoff: Duration::ZERO,
        })
    }

    fn start(&self) -> Result<(Vm, u32)> {
        let mut vm = self.new_vm()?;
        let root = vm.start_plugin(self.plugin.clone())?;
        Ok((vm, root))
    }
}

/// Counters kept by a [`Plugin`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PluginStats {
    /// Callbacks that failed (trap, limit, or a call on an already failed VM).
    pub failures: u64,
    /// Successful VM reloads.
    pub reloads: u64,
    /// Reload attempts that failed.
    pub reload_failures: u64,
    /// Streams answered by the failure policy instead of the filter (each counted once).
    pub failed_streams: u64,
}

/// A running plugin: one VM instance and its root context. Not `Sync`: one per worker.
#[derive(Debug)]
pub struct Plugin {
    compiled: Arc<CompiledPlugin>,
    vm: Vm,
    root: u32,
    stats: PluginStats,
    next_reload: Option<Instant>,
    backoff: Duration,
}

/// The local reply the failure policy sends on a failed HTTP stream.
fn fail_reply() -> LocalReply {
    LocalReply {
        status_code: 503,
        details: "wasm_fail_stream".into(),
        body: Vec::new(),
        headers: HeaderMap::new(),
        grpc_status: None,
    }
}

impl Plugin {
    /// The VM, for everything the convenience methods do not cover.
    pub fn vm(&mut self) -> &mut Vm {
        &mut self.vm
    }

    /// The plugin's root context id.
    pub fn root_context(&self) -> u32 {
        self.root
    }

    /// The compiled plugin this instance came from.
    pub fn compiled(&self) -> &Arc<CompiledPlugin> {
        &self.compiled
    }

    /// Failure and reload counters.
    pub fn stats(&self) -> PluginStats {
        self.stats
    }

    /// Creates an HTTP stream context.
    ///
    /// # Errors
    /// Traps (subject to the failure policy, which cannot answer a stream that does not exist
    /// yet: the error is returned).
    pub fn http_stream(&mut self) -> Result<u32> {
        self.maybe_reload();
        let root = self.root;
        self.vm.create_http_stream(root)
    }

    /// Creates a TCP stream context and calls `proxy_on_new_connection`.
    ///
    /// # Errors
    /// Traps.
    pub fn tcp_stream(&mut self) -> Result<(u32, Action)> {
        self.maybe_reload();
        let root = self.root;
        self.vm.create_tcp_stream(root)
    }

    /// Applies the failure policy to an error from a stream callback.
    #[inline]
    fn guard(&mut self, id: u32, r: Result<Action>) -> Result<Action> {
        match r {
            Ok(a) => Ok(a),
            Err(e) => self.apply_failure_policy(id, e),
        }
    }

    /// [`Self::guard`] for an error.
    #[cold]
    fn apply_failure_policy(&mut self, id: u32, e: Error) -> Result<Action> {
        let err = match e {
            e @ (Error::Trap(_) | Error::Failed(_)) => e,
            e => return Err(e),
        };
        self.stats.failures += 1;
        let name = &self.compiled.options.name;
        match &err {
            Error::Trap(t) => tracing::error!(
                target: "wasmux::plugin", plugin = %name, export = t.export.as_deref().unwrap_or("?"),
                trap = %t.kind, engine = t.engine, backtrace = %t.backtrace.join(" <- "), "filter failed: {}", t.message
            ),
            other => tracing::warn!(target: "wasmux::plugin", plugin = %name, "stream failed: {other}"),
        }
        match self.compiled.options.failure_policy {
            FailurePolicy::FailOpen => {
                self.stats.failed_streams += 1;
                Ok(Action::Continue)
            }
            FailurePolicy::FailClosed => {
                self.fail_stream(id);
                Ok(Action::Pause)
            }
            FailurePolicy::Reload { .. } => {
                self.fail_stream(id);
                self.schedule_reload();
                Ok(Action::Pause)
            }
        }
    }

    /// Under the reload policy, plans a reload after the base backoff (once per failure spell).
    fn schedule_reload(&mut self) {
        if let FailurePolicy::Reload { base_backoff, .. } = self.compiled.options.failure_policy
            && self.next_reload.is_none()
        {
            self.backoff = base_backoff;
            self.next_reload = Some(Instant::now() + base_backoff);
        }
    }

    /// Answers a stream for the failure policy, once: a 503 local reply (HTTP) or a close
    /// (TCP). Counted in [`PluginStats::failed_streams`].
    fn fail_stream(&mut self, id: u32) {
        let close = wasmux_abi::StreamControl::Close(wasmux_abi::StreamType::Downstream);
        let newly = if let Ok(h) = self.vm.http(id) {
            h.local_reply.replace(fail_reply()).is_none_or(|r| r != fail_reply())
        } else if let Ok(t) = self.vm.tcp(id) {
            let first = !t.control.contains(&close);
            if first {
                t.control.push(close);
            }
            first
        } else {
            false
        };
        if newly {
            self.stats.failed_streams += 1;
        }
    }

    /// Replaces a failed VM when the reload policy's backoff has elapsed. Streams of the old
    /// VM are gone; new streams go to the fresh VM.
    fn maybe_reload(&mut self) {
        let FailurePolicy::Reload { max_backoff, .. } = self.compiled.options.failure_policy else { return };
        let Some(at) = self.next_reload else { return };
        if Instant::now() < at {
            return;
        }
        match self.compiled.start() {
            Ok((vm, root)) => {
                self.vm = vm;
                self.root = root;
                self.stats.reloads += 1;
                self.next_reload = None;
                tracing::info!(target: "wasmux::plugin", plugin = %self.compiled.options.name, "VM reloaded");
            }
            Err(e) => {
                self.stats.reload_failures += 1;
                self.backoff = (self.backoff * 2).min(max_backoff);
                self.next_reload = Some(Instant::now() + self.backoff);
                tracing::error!(target: "wasmux::plugin", plugin = %self.compiled.options.name, "VM reload failed: {e}");
            }
        }
    }

    /// Request headers. See [`Vm::on_request_headers`].
    ///
    /// # Errors
    /// Unknown stream; traps when the policy does not absorb them.
    pub fn request_headers(&mut self, id: u32, headers: HeaderMap, end_of_stream: bool) -> Result<Action> {
        let r = self.vm.on_request_headers(id, headers, end_of_stream);
        self.guard(id, r)
    }

    /// A request body chunk. See [`Vm::on_request_body`].
    ///
    /// # Errors
    /// As [`Self::request_headers`].
    pub fn request_body(&mut self, id: u32, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        let r = self.vm.on_request_body(id, chunk, end_of_stream);
        self.guard(id, r)
    }

    /// Request trailers.
    ///
    /// # Errors
    /// As [`Self::request_headers`].
    pub fn request_trailers(&mut self, id: u32, trailers: HeaderMap) -> Result<Action> {
        let r = self.vm.on_request_trailers(id, trailers);
        self.guard(id, r)
    }

    /// Response headers.
    ///
    /// # Errors
    /// As [`Self::request_headers`].
    pub fn response_headers(&mut self, id: u32, headers: HeaderMap, end_of_stream: bool) -> Result<Action> {
        let r = self.vm.on_response_headers(id, headers, end_of_stream);
        self.guard(id, r)
    }

    /// A response body chunk.
    ///
    /// # Errors
    /// As [`Self::request_headers`].
    pub fn response_body(&mut self, id: u32, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        let r = self.vm.on_response_body(id, chunk, end_of_stream);
        self.guard(id, r)
    }

    /// Response trailers.
    ///
    /// # Errors
    /// As [`Self::request_headers`].
    pub fn response_trailers(&mut self, id: u32, trailers: HeaderMap) -> Result<Action> {
        let r = self.vm.on_response_trailers(id, trailers);
        self.guard(id, r)
    }

    /// Data from the client on a TCP stream.
    ///
    /// # Errors
    /// As [`Self::request_headers`].
    pub fn downstream_data(&mut self, id: u32, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        let r = self.vm.on_downstream_data(id, chunk, end_of_stream);
        self.guard(id, r)
    }

    /// Data from the server on a TCP stream.
    ///
    /// # Errors
    /// As [`Self::request_headers`].
    pub fn upstream_data(&mut self, id: u32, chunk: &[u8], end_of_stream: bool) -> Result<Action> {
        let r = self.vm.on_upstream_data(id, chunk, end_of_stream);
        self.guard(id, r)
    }

    /// The client closed a TCP stream.
    ///
    /// # Errors
    /// As [`Self::request_headers`].
    pub fn downstream_close(&mut self, id: u32, peer: PeerType) -> Result<()> {
        let r = self.vm.on_downstream_close(id, peer).map(|()| Action::Continue);
        self.guard(id, r).map(drop)
    }

    /// The server closed a TCP stream.
    ///
    /// # Errors
    /// As [`Self::request_headers`].
    pub fn upstream_close(&mut self, id: u32, peer: PeerType) -> Result<()> {
        let r = self.vm.on_upstream_close(id, peer).map(|()| Action::Continue);
        self.guard(id, r).map(drop)
    }

    /// Ends a stream: done, log, delete. `false` when the filter deferred completion.
    ///
    /// # Errors
    /// As [`Self::request_headers`].
    pub fn finish(&mut self, id: u32) -> Result<bool> {
        let r = self.vm.finish(id).map(|done| if done { Action::Continue } else { Action::Pause });
        self.guard(id, r).map(|a| a == Action::Continue)
    }

    /// Delivers an HTTP callout response (`None`: the call failed).
    ///
    /// # Errors
    /// Unknown token; traps.
    pub fn http_call_response(&mut self, token: u32, response: Option<HttpCallResponse>) -> Result<()> {
        let r = self.vm.on_http_call_response(token, response);
        self.absorb(r)
    }

    /// Housekeeping to run when the worker is idle or on a timer: fails callouts whose timeout
    /// has passed and delivers pending shared-queue notifications. Returns the expired callout
    /// tokens.
    ///
    /// # Errors
    /// Traps in the callbacks it runs.
    pub fn poll(&mut self) -> Result<Vec<u32>> {
        let expired = self.vm.expire_callouts();
        let expired = self.absorb(expired)?;
        let r = self.vm.poll();
        self.absorb(r)?;
        Ok(expired)
    }

    /// Fires the tick timer.
    ///
    /// # Errors
    /// Traps.
    pub fn tick(&mut self) -> Result<()> {
        let root = self.root;
        let r = self.vm.on_tick(root);
        self.absorb(r)
    }

    /// The tick period the filter asked for.
    pub fn tick_period(&mut self) -> Option<Duration> {
        let root = self.root;
        self.vm.tick_period(root)
    }

    /// Counts a failure from a root-context callback and schedules a reload under the reload
    /// policy; the error is still returned (there is no stream to answer).
    fn absorb<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(Error::Trap(_) | Error::Failed(_)) = &r {
            self.stats.failures += 1;
            self.schedule_reload();
        }
        r
    }
}
