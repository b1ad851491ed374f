//! Loading plugins, per-worker instances, and what happens when a filter fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmux_abi::snapshot::{SnapshotPolicy, Started, Template, TemplateServices};
use wasmux_abi::{
    Action, Error, HeaderMap, HttpCallResponse, Limits, LocalReply, LogLevel, ModuleInfo, PeerType, PluginConfig,
    QuotaCounts, Result, Services, Trap, Vm, VmEnv, WasmEngine, WasmModule, check_module,
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
    /// Whether instances start from a pre-initialized snapshot ([`wasmux_abi::snapshot`]):
    /// the start runs once at load, on a template, and [`CompiledPlugin::instantiate`] then
    /// starts each instance from its memory and globals. Off by default;
    /// [`CompiledPlugin::snapshot_status`] says whether one was taken, or why not.
    pub snapshot: SnapshotPolicy,
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
            snapshot: SnapshotPolicy::Off,
        }
    }
}

/// The part of a plugin's options that belongs to one root context, for a plugin that shares
/// another plugin's VM ([`CompiledPlugin::sibling`]).
#[derive(Debug, Clone, Default)]
pub struct RootOptions {
    /// Plugin name (property `plugin_name`).
    pub name: String,
    /// Root id: selects the root context in the filter.
    pub root_id: String,
    /// Plugin configuration (passed to `proxy_on_configure`).
    pub plugin_configuration: Vec<u8>,
    /// Failure policy for this plugin's streams.
    pub failure_policy: FailurePolicy,
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
    snapshot: Snapshot,
}

/// Whether a plugin's instances start from a snapshot ([`CompiledPlugin::snapshot_status`] in
/// public words).
#[derive(Debug)]
enum Snapshot {
    Off,
    Taken(Box<PluginSnapshot>),
    FellBack(String),
}

/// How a loader compiles bytes (directly, or through a module cache).
pub(crate) type Compile<'a> = dyn Fn(&[u8]) -> Result<Arc<dyn WasmModule>> + 'a;

/// A plugin's snapshot: the module that starts where the template stopped, and the host state
/// its instances start with.
#[derive(Debug)]
struct PluginSnapshot {
    module: Arc<dyn WasmModule>,
    started: Started,
    /// The root context every instance starts with.
    root: u32,
    /// The template's linear memory, in bytes.
    memory_bytes: u64,
}

/// Whether a plugin's instances start from a snapshot ([`PluginOptions::snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotStatus {
    /// Snapshots are off for the plugin.
    Off,
    /// Instances start from a snapshot.
    Taken {
        /// The template's linear memory, in bytes (what every instance starts with).
        memory_bytes: u64,
        /// Log lines of the start that every instance emits again.
        replayed_lines: usize,
    },
    /// No snapshot: instances start normally, for this reason.
    FellBack(String),
}

impl std::fmt::Display for SnapshotStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::Taken { memory_bytes, replayed_lines } => {
                write!(f, "taken ({} KiB of memory, {replayed_lines} log lines replayed)", memory_bytes / 1024)
            }
            Self::FellBack(why) => write!(f, "not taken: {why}"),
        }
    }
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
    /// The module must fit [`Limits::max_module_bytes`]; on an engine that compiles ahead of
    /// time, the host waits at most [`Limits::compile_deadline`] for the compiler (which cannot
    /// be stopped: it finishes in the background and its result is dropped).
    ///
    /// With [`PluginOptions::snapshot`] on, the plugin is also started once here, on a template
    /// instance, and its snapshot compiled (see [`Self::snapshot_status`]).
    pub fn new(engine: Arc<dyn WasmEngine>, bytes: &[u8], options: PluginOptions) -> Result<Arc<Self>> {
        check_size(&*engine, bytes, &options.limits)?;
        let limits = options.limits.clone();
        Self::build(engine.clone(), bytes, options, &|b| compile_within(&engine, b, &limits))
    }

    /// Compiles `bytes` with `compile` and, when the options ask for it, takes a snapshot.
    pub(crate) fn build(
        engine: Arc<dyn WasmEngine>,
        bytes: &[u8],
        options: PluginOptions,
        compile: &Compile<'_>,
    ) -> Result<Arc<Self>> {
        if options.snapshot == SnapshotPolicy::Off {
            return Ok(Arc::new(Self::wrap(engine, compile(bytes)?, options)?));
        }
        let plugin = match Template::parse(bytes) {
            Err(why) => {
                let mut plugin = Self::wrap(engine, compile(bytes)?, options)?;
                plugin.snapshot = Snapshot::FellBack(format!("the module cannot be snapshotted: {why}"));
                plugin
            }
            Ok(template) => {
                // The instrumented module (the original, its mutable globals exported) runs
                // the template, and every instance when no snapshot is taken.
                let mut plugin = Self::wrap(engine, compile(template.instrumented())?, options)?;
                plugin.snapshot = match plugin.take_snapshot(&template, compile) {
                    Ok(taken) => Snapshot::Taken(Box::new(taken)),
                    Err(why) => Snapshot::FellBack(why),
                };
                plugin
            }
        };
        let name = &plugin.options.name;
        match &plugin.snapshot {
            Snapshot::FellBack(why) => {
                tracing::info!(target: "wasmux::snapshot", plugin = %name, "instances start without a snapshot: {why}");
            }
            _ => tracing::debug!(target: "wasmux::snapshot", plugin = %name, "snapshot {}", plugin.snapshot_status()),
        }
        Ok(Arc::new(plugin))
    }

    /// Starts the plugin on a template instance with isolated services, checks that the start
    /// can be snapshotted, and compiles the snapshot, which like any module must fit
    /// [`Limits::max_module_bytes`].
    fn take_snapshot(&self, template: &Template, compile: &Compile<'_>) -> Result<PluginSnapshot, String> {
        let services = TemplateServices::new(&self.options.services);
        let env = Arc::new(VmEnv { services: services.services().clone(), ..(*self.env).clone() });
        let mut vm = Vm::new(&*self.module, self.info.abi, env, &self.options.limits)
            .map_err(|e| format!("the template's start-up failed: {e}"))?;
        vm.start_plugin(self.plugin.clone()).map_err(|e| format!("the template's plugin start failed: {e}"))?;
        wasmux_abi::snapshot::verdict(vm.coverage(), self.options.snapshot)?;
        let started = Started::capture(vm.state(), &services)?;
        let &[root] = started.roots() else {
            return Err(format!("the start left {} root contexts, not one", started.roots().len()));
        };
        let image = template.capture(vm.instance())?;
        let memory_bytes = vm.instance().memory_size();
        let bytes = template.rewrite(&image);
        check_size(&*self.engine, &bytes, &self.options.limits)
            .map_err(|e| format!("the snapshot is too large: {e}"))?;
        let module = compile(&bytes).map_err(|e| format!("the snapshot does not compile: {e}"))?;
        check_module(&*module).map_err(|e| format!("the snapshot does not check: {e}"))?;
        Ok(PluginSnapshot { module, started, root, memory_bytes })
    }

    /// Wraps an already compiled module (for example one from a module cache). No snapshot
    /// is taken: that needs the module's bytes ([`Self::new`]).
    ///
    /// # Errors
    /// [`Error::Incompatible`].
    pub fn from_module(
        engine: Arc<dyn WasmEngine>,
        module: Arc<dyn WasmModule>,
        options: PluginOptions,
    ) -> Result<Arc<Self>> {
        Self::wrap(engine, module, options).map(Arc::new)
    }

    fn wrap(engine: Arc<dyn WasmEngine>, module: Arc<dyn WasmModule>, options: PluginOptions) -> Result<Self> {
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
        let snapshot = if options.snapshot == SnapshotPolicy::Off {
            Snapshot::Off
        } else {
            Snapshot::FellBack("the plugin was loaded from a compiled module".into())
        };
        Ok(Self { engine, module, info, env, plugin, options, snapshot })
    }

    /// Whether instances start from a snapshot, or why not.
    pub fn snapshot_status(&self) -> SnapshotStatus {
        match &self.snapshot {
            Snapshot::Off => SnapshotStatus::Off,
            Snapshot::Taken(s) => {
                SnapshotStatus::Taken { memory_bytes: s.memory_bytes, replayed_lines: s.started.replayed_lines() }
            }
            Snapshot::FellBack(why) => SnapshotStatus::FellBack(why.clone()),
        }
    }

    /// Another plugin on this plugin's VM: the same engine, module and VM-wide settings (VM id,
    /// VM configuration, environment, log level, limits, services, callout timeout cap), with
    /// its own name, root id, configuration and failure policy. Nothing is compiled again.
    ///
    /// Plugins that share a VM run as root contexts of one instance per worker, as Envoy runs
    /// plugins with the same `vm_id` and code: start them together with
    /// [`CompiledPlugin::instantiate_group`], or add them to a running [`Plugin`] with
    /// [`Plugin::add_root`].
    pub fn sibling(self: &Arc<Self>, root: RootOptions) -> Arc<Self> {
        let plugin = Arc::new(PluginConfig {
            name: root.name.clone(),
            root_id: root.root_id.clone(),
            configuration: root.plugin_configuration.clone(),
        });
        let options = PluginOptions {
            name: root.name,
            root_id: root.root_id,
            plugin_configuration: root.plugin_configuration,
            failure_policy: root.failure_policy,
            ..self.options.clone()
        };
        Arc::new(Self {
            engine: self.engine.clone(),
            module: self.module.clone(),
            info: self.info.clone(),
            env: self.env.clone(),
            plugin,
            options,
            // The snapshot holds this plugin's root context, not the sibling's.
            snapshot: match self.snapshot {
                Snapshot::Off => Snapshot::Off,
                _ => Snapshot::FellBack("a sibling starts in its first plugin's VM".into()),
            },
        })
    }

    /// Whether two plugins run in the same VM: one is a [`sibling`](Self::sibling) of the
    /// other (or they are the same).
    pub fn shares_vm_with(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.module, &other.module) && Arc::ptr_eq(&self.env, &other.env)
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
            roots: vec![Root { compiled: self.clone(), id: root }],
            stats: PluginStats::default(),
            next_reload: None,
            backoff: Duration::ZERO,
            quota_base: QuotaCounts::default(),
            last_trap: None,
        })
    }

    /// One instance running every plugin of `plugins` as its own root context, started in
    /// order (`proxy_on_context_create`, `proxy_on_vm_start`, `proxy_on_configure` for each, as
    /// proxy-wasm-cpp-host does). Plugin `i` of the list is root index `i` of the result.
    ///
    /// # Errors
    /// An empty list, or plugins that do not share a VM ([`Self::shares_vm_with`]); start-up
    /// traps and rejections, as [`Self::instantiate`].
    pub fn instantiate_group(plugins: &[Arc<Self>]) -> Result<Plugin> {
        let Some((first, rest)) = plugins.split_first() else {
            return Err(Error::Engine { engine: "host", message: "a plugin group needs at least one plugin".into() });
        };
        let mut plugin = first.instantiate()?;
        for p in rest {
            plugin.add_root(p)?;
        }
        Ok(plugin)
    }

    fn start(&self) -> Result<(Vm, u32)> {
        if let Snapshot::Taken(s) = &self.snapshot {
            let vm = Vm::from_snapshot(&*s.module, self.info.abi, self.env.clone(), &self.options.limits, &s.started)?;
            return Ok((vm, s.root));
        }
        let mut vm = self.new_vm()?;
        let root = vm.start_plugin(self.plugin.clone())?;
        Ok((vm, root))
    }
}

/// Refuses a module larger than [`Limits::max_module_bytes`].
pub(crate) fn check_size(engine: &dyn WasmEngine, bytes: &[u8], limits: &Limits) -> Result<()> {
    if bytes.len() > limits.max_module_bytes {
        return Err(Error::Compile {
            engine: engine.name(),
            message: format!(
                "the module has {} bytes, more than the {} allowed (Limits::max_module_bytes)",
                bytes.len(),
                limits.max_module_bytes
            ),
        });
    }
    Ok(())
}

/// Compiles `bytes`, waiting at most [`Limits::compile_deadline`] on engines that compile ahead
/// of time ([`WasmEngine::compiles_ahead`]): the compile runs on a thread of its own, and a
/// compile past the deadline is left to finish there, its result dropped.
pub(crate) fn compile_within(
    engine: &Arc<dyn WasmEngine>,
    bytes: &[u8],
    limits: &Limits,
) -> Result<Arc<dyn WasmModule>> {
    let Some(deadline) = limits.compile_deadline.filter(|_| engine.compiles_ahead()) else {
        return engine.compile(bytes);
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let (worker, owned) = (engine.clone(), bytes.to_vec());
    std::thread::Builder::new()
        .name("wasmux-compile".into())
        .spawn(move || {
            // The receiver is gone when the deadline passed: the module is dropped.
            let _ = tx.send(worker.compile(&owned));
        })
        .map_err(|e| Error::Engine { engine: engine.name(), message: format!("cannot start a compile thread: {e}") })?;
    rx.recv_timeout(deadline).unwrap_or_else(|_| {
        Err(Error::Compile {
            engine: engine.name(),
            message: format!(
                "compiling took longer than the compile deadline of {deadline:?} (Limits::compile_deadline)"
            ),
        })
    })
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
    /// Host requests refused or truncated by a quota (see [`Plugin::quota_counts`] for which).
    pub quota_hits: u64,
}

/// A running plugin: one VM instance and its root context, or the root contexts of several
/// plugins that share the VM ([`CompiledPlugin::instantiate_group`]). Not `Sync`: one per
/// worker.
///
/// Root index 0 is the plugin it was instantiated from; the methods without a root index
/// (`http_stream`, `tick`, ...) act on it.
#[derive(Debug)]
pub struct Plugin {
    compiled: Arc<CompiledPlugin>,
    vm: Vm,
    roots: Vec<Root>,
    stats: PluginStats,
    next_reload: Option<Instant>,
    backoff: Duration,
    /// Quota hits of the VMs replaced by reloads.
    quota_base: QuotaCounts,
    /// The last trap the failure policy absorbed, until taken.
    last_trap: Option<Trap>,
}

/// One plugin's root context in a [`Plugin`]'s VM.
#[derive(Debug)]
struct Root {
    compiled: Arc<CompiledPlugin>,
    id: u32,
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

impl FailurePolicy {
    /// What an HTTP stream gets when its filter cannot run: the 503 local reply
    /// (`wasm_fail_stream`) a failed VM answers with, or `None` under fail open (the stream goes
    /// on without the filter). For embedders whose VM did not start at all.
    pub fn failed_stream_reply(self) -> Option<LocalReply> {
        (self != Self::FailOpen).then(fail_reply)
    }
}

impl Plugin {
    /// The VM, for everything the convenience methods do not cover.
    pub fn vm(&mut self) -> &mut Vm {
        &mut self.vm
    }

    /// The plugin's root context id (root index 0).
    pub fn root_context(&self) -> u32 {
        self.roots[0].id
    }

    /// The root context id of root index `index`.
    pub fn root_context_of(&self, index: usize) -> Option<u32> {
        self.roots.get(index).map(|r| r.id)
    }

    /// Stream contexts (HTTP and TCP) not yet deleted, deferred ones included.
    pub fn stream_contexts(&mut self) -> usize {
        self.vm.context_count().saturating_sub(self.roots.len())
    }

    /// The plugins running in this VM, by root index.
    pub fn plugins(&self) -> impl ExactSizeIterator<Item = &Arc<CompiledPlugin>> {
        self.roots.iter().map(|r| &r.compiled)
    }

    /// Starts another plugin of the same VM ([`CompiledPlugin::sibling`]) as a root context of
    /// this instance, and returns its root index. A reload restarts it with the others.
    ///
    /// # Errors
    /// A plugin that does not share this VM; start-up traps and rejections.
    pub fn add_root(&mut self, plugin: &Arc<CompiledPlugin>) -> Result<usize> {
        if !plugin.shares_vm_with(&self.compiled) {
            return Err(Error::Engine {
                engine: "host",
                message: format!(
                    "plugin `{}` does not share the VM of plugin `{}` (make it with CompiledPlugin::sibling)",
                    plugin.options.name, self.compiled.options.name
                ),
            });
        }
        self.maybe_reload();
        let id = self.vm.start_plugin(plugin.plugin.clone())?;
        self.roots.push(Root { compiled: plugin.clone(), id });
        Ok(self.roots.len() - 1)
    }

    fn root_at(&self, index: usize) -> Result<u32> {
        self.root_context_of(index).ok_or(Error::Context { id: 0, reason: "no plugin at this root index" })
    }

    /// The compiled plugin this instance came from.
    pub fn compiled(&self) -> &Arc<CompiledPlugin> {
        &self.compiled
    }

    /// Failure, reload and quota counters.
    pub fn stats(&mut self) -> PluginStats {
        PluginStats { quota_hits: self.quota_base.total() + self.vm.quota_hits(), ..self.stats }
    }

    /// How often each host-side quota was hit (refused or truncated), over every VM of this
    /// plugin (reloads included).
    pub fn quota_counts(&mut self) -> QuotaCounts {
        let mut counts = self.quota_base.clone();
        counts.add(&self.vm.quota_counts());
        counts
    }

    /// The last trap a callback hit since the previous call, whether the failure policy
    /// answered it or it was returned.
    pub fn take_trap(&mut self) -> Option<Trap> {
        self.last_trap.take()
    }

    /// Creates an HTTP stream context.
    ///
    /// # Errors
    /// Traps (subject to the failure policy, which cannot answer a stream that does not exist
    /// yet: the error is returned).
    pub fn http_stream(&mut self) -> Result<u32> {
        self.http_stream_for(0)
    }

    /// Creates an HTTP stream context of the plugin at root index `index`.
    ///
    /// # Errors
    /// As [`Self::http_stream`]; an unknown index.
    pub fn http_stream_for(&mut self, index: usize) -> Result<u32> {
        self.maybe_reload();
        let root = self.root_at(index)?;
        self.vm.create_http_stream(root)
    }

    /// Creates a TCP stream context and calls `proxy_on_new_connection`.
    ///
    /// # Errors
    /// Traps.
    pub fn tcp_stream(&mut self) -> Result<(u32, Action)> {
        self.tcp_stream_for(0)
    }

    /// Creates a TCP stream context of the plugin at root index `index`.
    ///
    /// # Errors
    /// As [`Self::tcp_stream`]; an unknown index.
    pub fn tcp_stream_for(&mut self, index: usize) -> Result<(u32, Action)> {
        self.maybe_reload();
        let root = self.root_at(index)?;
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
        if let Error::Trap(t) = &err {
            self.last_trap = Some((**t).clone());
        }
        let compiled = self.stream_plugin(id);
        let name = &compiled.options.name;
        match &err {
            Error::Trap(t) => tracing::error!(
                target: "wasmux::plugin", plugin = %name, export = t.export.as_deref().unwrap_or("?"),
                trap = %t.kind, engine = t.engine, backtrace = %t.backtrace.join(" <- "), "filter failed: {}", t.message
            ),
            other => tracing::warn!(target: "wasmux::plugin", plugin = %name, "stream failed: {other}"),
        }
        // The VM is shared by every plugin on it: it is reloaded when one of them asks for
        // reloads, whichever plugin's stream failed.
        self.schedule_reload();
        match compiled.options.failure_policy {
            FailurePolicy::FailOpen => {
                self.stats.failed_streams += 1;
                Ok(Action::Continue)
            }
            FailurePolicy::FailClosed | FailurePolicy::Reload { .. } => {
                self.fail_stream(id);
                Ok(Action::Pause)
            }
        }
    }

    /// The plugin a stream belongs to (root index 0 when the stream is unknown).
    fn stream_plugin(&mut self, id: u32) -> Arc<CompiledPlugin> {
        let root = self.vm.root_of(id);
        let r = self.roots.iter().find(|r| Some(r.id) == root).unwrap_or(&self.roots[0]);
        r.compiled.clone()
    }

    /// The reload policy of the VM: the first plugin's that asks for reloads.
    fn reload_policy(&self) -> Option<(Duration, Duration)> {
        self.roots.iter().find_map(|r| match r.compiled.options.failure_policy {
            FailurePolicy::Reload { base_backoff, max_backoff } => Some((base_backoff, max_backoff)),
            _ => None,
        })
    }

    /// Under the reload policy, plans a reload after the base backoff (once per failure spell).
    fn schedule_reload(&mut self) {
        if let Some((base_backoff, _)) = self.reload_policy()
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
        let Some((_, max_backoff)) = self.reload_policy() else { return };
        let Some(at) = self.next_reload else { return };
        if Instant::now() < at {
            return;
        }
        match self.restart() {
            Ok((vm, ids)) => {
                let mut old = std::mem::replace(&mut self.vm, vm);
                self.quota_base.add(&old.quota_counts());
                for (r, id) in self.roots.iter_mut().zip(ids) {
                    r.id = id;
                }
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

    /// A fresh VM with every root context started again, in order.
    fn restart(&self) -> Result<(Vm, Vec<u32>)> {
        let (mut vm, first) = self.compiled.start()?;
        let mut ids = vec![first];
        for r in &self.roots[1..] {
            ids.push(vm.start_plugin(r.compiled.plugin.clone())?);
        }
        Ok((vm, ids))
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

    /// Runs a root-context callback the methods here do not wrap (gRPC events, foreign
    /// functions) under the failure policy, as [`Self::http_call_response`] runs its own: a
    /// trap is recorded and counted, and a reload is scheduled under the reload policy.
    ///
    /// # Errors
    /// What `f` returns.
    pub fn root_callback<T>(&mut self, f: impl FnOnce(&mut Vm) -> Result<T>) -> Result<T> {
        let r = f(&mut self.vm);
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
        self.tick_for(0)
    }

    /// Fires the tick timer of the plugin at root index `index`.
    ///
    /// # Errors
    /// Traps; an unknown index.
    pub fn tick_for(&mut self, index: usize) -> Result<()> {
        let root = self.root_at(index)?;
        let r = self.vm.on_tick(root);
        self.absorb(r)
    }

    /// The tick period the filter asked for.
    pub fn tick_period(&mut self) -> Option<Duration> {
        self.tick_period_for(0)
    }

    /// The tick period the plugin at root index `index` asked for.
    pub fn tick_period_for(&mut self, index: usize) -> Option<Duration> {
        let root = self.root_context_of(index)?;
        self.vm.tick_period(root)
    }

    /// Counts a failure from a root-context callback and schedules a reload under the reload
    /// policy; the error is still returned (there is no stream to answer).
    fn absorb<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e @ (Error::Trap(_) | Error::Failed(_))) = &r {
            if let Error::Trap(t) = e {
                self.last_trap = Some((**t).clone());
            }
            self.stats.failures += 1;
            self.schedule_reload();
        }
        r
    }
}
