//! Filter chains: the plugins, their per-worker VMs, and the HTTP filter semantics, usable
//! from any Pingora `ProxyHttp`.
//!
//! # Threads
//!
//! A proxy-wasm VM instance is single-threaded state. Each worker thread keeps its own instance
//! of every VM in a thread-local, created on the first request that thread serves; a stream's
//! callbacks all run on the VM of the thread that created its context. This is sound when a
//! request's task never leaves the thread it started on: under Pingora's server with
//! `work_stealing: false` (each worker thread runs its own single-threaded runtime), and in
//! `wasmux serve`, whose workers are single-threaded runtimes of their own ([`crate::server`]).
//! The per-request state Pingora keeps ([`StreamFilters`]) holds only ids and flags, so it is
//! `Send + Sync` as Pingora requires; no lock is taken on the request path.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use wasmux::abi::{HttpStreamState, LocalReply, StreamControl, StreamType};
use wasmux::{Action, CompiledPlugin, HeaderMap, Plugin, PluginStats};

/// Counters of one plugin, summed over every worker.
#[derive(Debug, Default)]
pub struct PluginCounters {
    /// HTTP streams created.
    pub streams: AtomicU64,
    /// Callbacks that trapped or hit a limit.
    pub traps: AtomicU64,
    /// Streams the failure policy answered (503) or skipped (fail open).
    pub failed_streams: AtomicU64,
    /// Local replies sent by the filter or the failure policy.
    pub local_replies: AtomicU64,
    /// VM reloads.
    pub reloads: AtomicU64,
    /// Response bodies the filter still held at their end: released, since a response body
    /// cannot wait in this proxy.
    pub released_paused_bodies: AtomicU64,
}

/// One plugin of a chain set.
#[derive(Debug)]
pub struct PluginEntry {
    /// Name.
    pub name: String,
    /// Its VM (index into the groups).
    group: usize,
    /// Its root index in that VM.
    root: usize,
    /// Counters.
    pub counters: Arc<PluginCounters>,
    /// Envoy's `allow_on_headers_stop_iteration`: a pause in the request headers holds them
    /// while the body flows to the filter ([`Verdict::HeldForBody`]).
    allow_headers_stop: AtomicBool,
}

/// The plugins of a proxy, grouped into VMs, and the per-worker instances of those VMs.
#[derive(Debug)]
pub struct FilterChains {
    uid: u64,
    me: Weak<Self>,
    /// VM groups: the plugins sharing one VM, in root-index order.
    groups: Vec<Vec<Arc<CompiledPlugin>>>,
    plugins: Vec<PluginEntry>,
    /// Live stream contexts per worker, for the admin endpoint.
    live: Mutex<Vec<Arc<AtomicI64>>>,
}

/// A filter chain: plugin indexes in request order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain(pub Vec<usize>);

/// What the proxy does after a filter phase.
#[derive(Debug)]
pub enum Verdict {
    /// Go on.
    Continue,
    /// Answer the client with this reply instead.
    Reply(LocalReply),
    /// The route's time ran out while a filter held the stream.
    Timeout,
    /// A filter closed the stream (`proxy_close_stream`): reset it, with no response.
    Reset,
    /// A filter with `allow_on_headers_stop_iteration` paused the request headers: they stay
    /// here, and the request body goes to that filter (and the ones before it) through
    /// [`FilterChains::held_request_body`] until it lets the headers go.
    HeldForBody,
}

/// One filter of a stream.
#[derive(Debug, Clone, Copy)]
struct Slot {
    plugin: usize,
    group: usize,
    /// The stream context, when the filter runs on this stream.
    id: Option<u32>,
}

/// The per-request state of a chain: what Pingora keeps in its request context.
#[derive(Debug, Default)]
pub struct StreamFilters {
    uid: u64,
    thread: Option<ThreadId>,
    slots: Vec<Slot>,
    request_ended: bool,
    response_ended: bool,
    finished: bool,
    deadline: Option<Instant>,
    /// The position (in request order) of the filter holding the request headers.
    held: Option<usize>,
}

impl Drop for StreamFilters {
    /// A request Pingora dropped without its logging phase (a task cancelled at shutdown) still
    /// ends its contexts, on the thread that owns them.
    fn drop(&mut self) {
        if !self.finished && self.thread == Some(std::thread::current().id()) {
            finish_streams(self, None);
        }
    }
}

thread_local! {
    static WORKERS: RefCell<Vec<(u64, Worker)>> = const { RefCell::new(Vec::new()) };
}

/// One worker thread's instances.
struct Worker {
    /// One per group; `None` when the instance could not start on this thread.
    vms: Vec<Option<Instance>>,
    /// Stream contexts not yet deleted on this worker, for the admin endpoint and draining.
    live: Arc<AtomicI64>,
    /// A queue notification waits in the inbox.
    queue_pending: Arc<AtomicBool>,
}

/// A worker's instance of one VM, and what the worker tracks about it.
struct Instance {
    vm: Plugin,
    /// The VM's counters when last looked at: the proxy's per-plugin counters grow by the
    /// difference.
    seen: PluginStats,
    /// When each root context ticks next.
    ticks: Vec<Option<Instant>>,
    /// Paused streams: context id → what wakes them.
    waiters: HashMap<u32, Arc<tokio::sync::Notify>>,
}

impl Instance {
    /// Wakes every paused stream, to look again at what happened to it (after a callback that
    /// did not come from the stream itself: a callout response, a tick, a queue).
    fn wake_all(&self) {
        for n in self.waiters.values() {
            n.notify_one();
        }
    }
}

impl Worker {
    /// Recounts the stream contexts alive on this worker, from the VMs themselves (a deferred
    /// context lives on after its request).
    fn recount(&mut self) {
        let n: usize = self.vms.iter_mut().flatten().map(|i| i.vm.stream_contexts()).sum();
        self.live.store(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed);
    }
}

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

/// A plugin group whose VM or root contexts do not start.
#[derive(Debug, thiserror::Error)]
#[error("plugin `{plugin}` does not start: {message}")]
pub struct StartError {
    /// The first plugin of the group.
    pub plugin: String,
    /// Why.
    pub message: String,
}

impl FilterChains {
    /// Plugins grouped into VMs: `groups[g]` lists the plugins sharing VM `g`, the first being
    /// the one the others are siblings of ([`CompiledPlugin::sibling`]). Every group is started
    /// once here, to refuse a plugin that cannot start before anything listens.
    ///
    /// # Errors
    /// A plugin whose VM or root context does not start, named.
    pub fn new(groups: Vec<Vec<Arc<CompiledPlugin>>>) -> Result<Arc<Self>, StartError> {
        Self::with_uid(Self::next_uid(), groups)
    }

    /// A fresh identity for a filter-chain set, for the services its plugins are compiled
    /// with ([`Self::with_uid`]).
    pub fn next_uid() -> u64 {
        NEXT_UID.fetch_add(1, Ordering::Relaxed)
    }

    /// [`Self::new`] with an identity from [`Self::next_uid`].
    ///
    /// # Errors
    /// As [`Self::new`].
    pub fn with_uid(uid: u64, groups: Vec<Vec<Arc<CompiledPlugin>>>) -> Result<Arc<Self>, StartError> {
        let mut plugins = Vec::new();
        for (g, group) in groups.iter().enumerate() {
            if let Err(e) = CompiledPlugin::instantiate_group(group) {
                let plugin = group.first().map(|p| p.options().name.clone()).unwrap_or_default();
                return Err(StartError { plugin, message: e.to_string() });
            }
            for (root, p) in group.iter().enumerate() {
                plugins.push(PluginEntry {
                    name: p.options().name.clone(),
                    group: g,
                    root,
                    counters: Arc::default(),
                    allow_headers_stop: AtomicBool::new(false),
                });
            }
        }
        Ok(Arc::new_cyclic(|me| Self { uid, me: me.clone(), groups, plugins, live: Mutex::default() }))
    }

    /// Sets Envoy's `allow_on_headers_stop_iteration` for the plugin named `plugin` (off by
    /// default, as in Envoy): a pause in its request headers then holds them while the request
    /// body flows to it, so it can decide on the headers after reading the body. Off, a pause
    /// in the headers waits for `proxy_continue_stream` and the body waits too. Returns whether
    /// the plugin exists.
    pub fn set_allow_on_headers_stop_iteration(&self, plugin: &str, allow: bool) -> bool {
        self.plugins.iter().filter(|p| p.name == plugin).fold(false, |_, p| {
            p.allow_headers_stop.store(allow, Ordering::Relaxed);
            true
        })
    }

    /// Whether the VM of `plugin` starts each worker's instance from a snapshot (its first
    /// plugin's [`CompiledPlugin::snapshot_status`]).
    pub fn starts_from_snapshot(&self, plugin: &PluginEntry) -> bool {
        self.groups
            .get(plugin.group)
            .and_then(|g| g.first())
            .is_some_and(|p| matches!(p.snapshot_status(), wasmux::SnapshotStatus::Taken { .. }))
    }

    /// The plugins.
    pub fn plugins(&self) -> &[PluginEntry] {
        &self.plugins
    }

    /// A chain of plugins by name.
    ///
    /// # Errors
    /// An unknown name.
    pub fn chain(&self, names: &[&str]) -> Result<Chain, String> {
        names
            .iter()
            .map(|n| self.plugins.iter().position(|p| p.name == *n).ok_or_else(|| format!("no plugin is named `{n}`")))
            .collect::<Result<Vec<_>, _>>()
            .map(Chain)
    }

    /// Stream contexts not yet deleted, over every worker (deferred ones included).
    pub fn live_streams(&self) -> i64 {
        self.live.lock().unwrap_or_else(PoisonError::into_inner).iter().map(|g| g.load(Ordering::Relaxed)).sum()
    }

    /// Stream contexts not yet deleted on this thread's worker.
    pub fn worker_live_streams(&self) -> i64 {
        WORKERS.with(|w| {
            w.borrow().iter().find(|(uid, _)| *uid == self.uid).map_or(0, |(_, w)| w.live.load(Ordering::Relaxed))
        })
    }

    /// Ends this thread's worker: every root context is shut down (`proxy_on_done`, then
    /// `proxy_on_delete`) and the instances are dropped, while the thread is still whole (a
    /// native filter's own thread-locals are gone once the thread exits). Call it as the
    /// worker thread stops; a later request on this thread starts a fresh worker.
    pub fn release_worker(&self) {
        let worker = WORKERS.with(|w| {
            let mut workers = w.borrow_mut();
            let at = workers.iter().position(|(uid, _)| *uid == self.uid)?;
            Some(workers.swap_remove(at).1)
        });
        crate::callout::remove_inbox(self.uid);
        crate::callout::abort_calls(self.uid, None);
        let Some(mut worker) = worker else { return };
        for inst in worker.vms.iter_mut().flatten() {
            for root in inst.vm.vm().roots() {
                if let Err(e) = inst.vm.vm().finish(root) {
                    tracing::debug!(target: "wasmux::proxy", "shutting down root context {root}: {e}");
                }
            }
        }
        worker.live.store(0, Ordering::Relaxed);
        drop(worker);
    }

    /// Runs `f` on this thread's worker, creating it on first use.
    fn with_worker<R>(&self, f: impl FnOnce(&mut Worker) -> R) -> R {
        WORKERS.with(|w| {
            let mut workers = w.borrow_mut();
            let at = match workers.iter().position(|(uid, _)| *uid == self.uid) {
                Some(i) => i,
                None => {
                    workers.push((self.uid, self.new_worker()));
                    workers.len() - 1
                }
            };
            f(&mut workers[at].1)
        })
    }

    /// Runs `f` on this worker's instance of VM `group`; `None` when it did not start here.
    fn with_instance<R>(&self, group: usize, f: impl FnOnce(&mut Instance) -> R) -> Option<R> {
        self.with_worker(|w| w.vms.get_mut(group).and_then(Option::as_mut).map(f))
    }

    fn new_worker(&self) -> Worker {
        // The inbox first: VMs register their queues while they start, and the queue registry
        // notes the registering worker's inbox as the owner's.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (inbox, queue_pending) = crate::callout::Inbox::new(tx);
        crate::callout::set_inbox(self.uid, inbox);
        let vms = self
            .groups
            .iter()
            .map(|group| match CompiledPlugin::instantiate_group(group) {
                Ok(mut vm) => {
                    let seen = vm.stats();
                    Some(Instance { vm, seen, ticks: vec![None; group.len()], waiters: HashMap::new() })
                }
                Err(e) => {
                    let name = group.first().map(|p| p.options().name.as_str()).unwrap_or_default();
                    tracing::error!(target: "wasmux::proxy", plugin = %name, "VM does not start on this worker: {e}");
                    None
                }
            })
            .collect();
        let live = Arc::new(AtomicI64::new(0));
        self.live.lock().unwrap_or_else(PoisonError::into_inner).push(live.clone());
        // The task that drains the inbox, on this thread's runtime (outside a runtime, as in a
        // unit test, nothing arrives from outside).
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(drive(self.me.clone(), rx));
        }
        Worker { vms, live, queue_pending }
    }

    /// The plugin at root `root` of VM `group`.
    fn plugin_at(&self, group: usize, root: usize) -> Option<usize> {
        self.plugins.iter().position(|p| p.group == group && p.root == root)
    }

    /// Adds what a callback of `plugin` left behind to its counters: a trap, and the failed
    /// streams and reloads the VM counted since it was last looked at.
    fn account(&self, plugin: Option<usize>, inst: &mut Instance) {
        let trapped = inst.vm.take_trap().is_some();
        let now = inst.vm.stats();
        let Some(entry) = plugin.map(|p| &self.plugins[p]) else { return };
        if now.reloads > inst.seen.reloads {
            // The callouts of the VM that was replaced answer to nobody now.
            crate::callout::abort_calls(self.uid, Some(entry.group));
        }
        // The counters are shared by every worker: only what changed is written.
        let c = &entry.counters;
        if trapped {
            c.traps.fetch_add(1, Ordering::Relaxed);
        }
        for (counter, now, seen) in [
            (&c.failed_streams, now.failed_streams, inst.seen.failed_streams),
            (&c.reloads, now.reloads, inst.seen.reloads),
        ] {
            if now > seen {
                counter.fetch_add(now - seen, Ordering::Relaxed);
            }
        }
        inst.seen = now;
    }

    /// Delivers something from outside a request into this worker's VMs, then wakes the
    /// streams it may have resumed.
    fn deliver(&self, d: crate::callout::Delivery) {
        self.with_worker(|w| {
            match d {
                crate::callout::Delivery::Http { group, token, response } => {
                    if let Some(inst) = w.vms.get_mut(group).and_then(Option::as_mut) {
                        // An unknown token (the VM was reloaded since) is dropped.
                        let _ = inst.vm.http_call_response(token, response);
                        self.after_root_callback(group, inst);
                    }
                }
                crate::callout::Delivery::Grpc { group, token, event, .. } => {
                    if let Some(inst) = w.vms.get_mut(group).and_then(Option::as_mut) {
                        use crate::callout::GrpcEvent as E;
                        // An unknown token (cancelled, closed, expired, or the VM was reloaded
                        // since) is dropped.
                        let _ = inst.vm.root_callback(|vm| match event {
                            E::InitialMetadata(m) => vm.on_grpc_initial_metadata(token, m),
                            E::Message(m) => vm.on_grpc_message(token, m),
                            E::Response(m) => vm.on_grpc_response(token, m),
                            E::TrailingMetadata(m) => vm.on_grpc_trailing_metadata(token, m),
                            E::Close(status, message) => vm.on_grpc_close(token, status, &message),
                            E::Sent(n) => {
                                vm.on_grpc_sent(token, n);
                                Ok(())
                            }
                        });
                        self.after_root_callback(group, inst);
                    }
                }
                crate::callout::Delivery::Queue => {
                    // Cleared first: an item enqueued while the VMs look sends a new notice.
                    w.queue_pending.store(false, Ordering::Release);
                    for (group, inst) in w.vms.iter_mut().enumerate() {
                        if let Some(inst) = inst.as_mut() {
                            let _ = inst.vm.poll();
                            self.after_root_callback(group, inst);
                        }
                    }
                }
            }
            w.recount();
        });
    }

    /// After a callback that does not belong to a stream: count it (charged to the VM's first
    /// plugin) and wake the paused streams.
    fn after_root_callback(&self, group: usize, inst: &mut Instance) {
        self.account(self.plugin_at(group, 0), inst);
        inst.wake_all();
    }

    /// The next tick due on this worker, scheduling root contexts that just asked for ticks
    /// and dropping those that stopped.
    fn next_tick(&self) -> Option<Instant> {
        self.with_worker(|w| {
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            for inst in w.vms.iter_mut().flatten() {
                for (root, at) in inst.ticks.iter_mut().enumerate() {
                    match inst.vm.tick_period_for(root) {
                        None => *at = None,
                        Some(period) => {
                            let due = *at.get_or_insert(now + period);
                            next = Some(next.map_or(due, |n| n.min(due)));
                        }
                    }
                }
            }
            next
        })
    }

    /// Fires the ticks that are due.
    fn fire_ticks(&self) {
        self.with_worker(|w| {
            let now = Instant::now();
            for (group, inst) in w.vms.iter_mut().enumerate() {
                let Some(inst) = inst.as_mut() else { continue };
                let mut fired = false;
                for root in 0..inst.ticks.len() {
                    if inst.ticks[root].is_some_and(|t| t <= now) {
                        let _ = inst.vm.tick_for(root);
                        self.account(self.plugin_at(group, root), inst);
                        inst.ticks[root] = inst.vm.tick_period_for(root).map(|p| now + p);
                        fired = true;
                    }
                }
                if fired {
                    inst.wake_all();
                }
            }
            w.recount();
        });
    }

    /// Starts the chain's stream contexts for a request; `timeout` bounds every wait of the
    /// request's filters.
    pub fn start(&self, chain: &Chain, timeout: Option<Duration>) -> StreamFilters {
        let mut state = StreamFilters {
            uid: self.uid,
            thread: Some(std::thread::current().id()),
            slots: Vec::with_capacity(chain.0.len()),
            request_ended: false,
            response_ended: false,
            finished: false,
            deadline: timeout.map(|t| Instant::now() + t),
            held: None,
        };
        self.with_worker(|w| {
            for &plugin in &chain.0 {
                let entry = &self.plugins[plugin];
                let id = w.vms.get_mut(entry.group).and_then(Option::as_mut).and_then(|inst| {
                    // Creating a stream is when a failed VM is reloaded.
                    let id = inst.vm.http_stream_for(entry.root);
                    self.account(Some(plugin), inst);
                    id.map_err(
                        |e| tracing::warn!(target: "wasmux::proxy", plugin = %entry.name, "cannot start a stream: {e}"),
                    )
                    .ok()
                });
                if id.is_some() {
                    entry.counters.streams.fetch_add(1, Ordering::Relaxed);
                }
                state.slots.push(Slot { plugin, group: entry.group, id });
            }
            w.recount();
        });
        state
    }

    /// Runs one callback of a stream and reads what it left the stream in.
    fn call(
        &self,
        slot: Slot,
        id: u32,
        dir: StreamType,
        f: impl FnOnce(&mut Plugin) -> wasmux::Result<Action>,
    ) -> Step {
        self.with_instance(slot.group, |inst| {
            let r = f(&mut inst.vm);
            self.account(Some(slot.plugin), inst);
            settle(&mut inst.vm, id, r, dir)
        })
        .unwrap_or(Step::Gone)
    }

    /// The headers of a stream as the filter left them.
    fn headers_of(&self, slot: Slot, id: u32, dir: StreamType, into: &mut HeaderMap) {
        self.with_instance(slot.group, |inst| {
            if let Ok(h) = inst.vm.vm().http(id) {
                into.clone_from(if dir == StreamType::HttpRequest { &h.request_headers } else { &h.response_headers });
            }
        });
    }

    /// Request headers through the chain, in order. `headers` is the request as the proxy has
    /// it; on `Continue` it holds what the filters made of it.
    pub async fn request_headers(
        &self,
        state: &mut StreamFilters,
        headers: &mut HeaderMap,
        end_of_stream: bool,
    ) -> Verdict {
        state.request_ended = end_of_stream;
        self.headers(state, headers, end_of_stream, StreamType::HttpRequest, 0).await
    }

    /// Response headers through the chain, in reverse order.
    pub async fn response_headers(
        &self,
        state: &mut StreamFilters,
        headers: &mut HeaderMap,
        end_of_stream: bool,
    ) -> Verdict {
        state.response_ended = end_of_stream;
        self.headers(state, headers, end_of_stream, StreamType::HttpResponse, 0).await
    }

    /// Headers through the filters from position `from` of the direction's order.
    async fn headers(
        &self,
        state: &mut StreamFilters,
        headers: &mut HeaderMap,
        eos: bool,
        dir: StreamType,
        from: usize,
    ) -> Verdict {
        for at in from..state.slots.len() {
            let Some(slot) = nth(&state.slots, dir, at) else { break };
            let Some(id) = slot.id else {
                // The filter's VM did not start on this worker: its failure policy answers the
                // request (a response has no second chance).
                let entry = &self.plugins[slot.plugin];
                if dir == StreamType::HttpRequest {
                    entry.counters.failed_streams.fetch_add(1, Ordering::Relaxed);
                    let policy = self.groups[slot.group][entry.root].options().failure_policy;
                    if let Some(reply) = policy.failed_stream_reply() {
                        return Verdict::Reply(reply);
                    }
                }
                continue;
            };
            let mut stop_iteration = false;
            let step = self.call(slot, id, dir, |vm| {
                let r = if dir == StreamType::HttpRequest {
                    vm.request_headers(id, headers.clone(), eos)
                } else {
                    vm.response_headers(id, headers.clone(), eos)
                };
                stop_iteration = matches!(r, Ok(Action::Pause));
                r
            });
            // Envoy's `allow_on_headers_stop_iteration`: StopIteration (not the StopAll
            // statuses) holds the request headers while the body goes on to the filter.
            if matches!(step, Step::Paused)
                && stop_iteration
                && dir == StreamType::HttpRequest
                && !eos
                && self.plugins[slot.plugin].allow_headers_stop.load(Ordering::Relaxed)
            {
                state.held = Some(at);
                return Verdict::HeldForBody;
            }
            let step = if matches!(step, Step::Paused) { self.wait(state, slot, dir).await } else { step };
            match self.verdict(slot, step) {
                Verdict::Continue => self.headers_of(slot, id, dir, headers),
                other => return other,
            }
        }
        Verdict::Continue
    }

    /// A request body chunk through the chain. Returns the bytes to send upstream now (a
    /// filter that buffers holds them back) and the verdict.
    pub async fn request_body(
        &self,
        state: &mut StreamFilters,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> (Vec<u8>, Verdict) {
        if state.request_ended {
            // The headers ended the request: the body callbacks never run (as in Envoy).
            return (chunk.to_vec(), Verdict::Continue);
        }
        state.request_ended = end_of_stream;
        self.request_body_through(state, chunk.to_vec(), end_of_stream, 0..usize::MAX).await
    }

    /// Request body bytes through the filters at `range` of the request order. A filter that
    /// buffers before the end holds them back (nothing to send, `Continue`).
    async fn request_body_through(
        &self,
        state: &StreamFilters,
        mut data: Vec<u8>,
        end_of_stream: bool,
        range: std::ops::Range<usize>,
    ) -> (Vec<u8>, Verdict) {
        let dir = StreamType::HttpRequest;
        for slot in ordered(&state.slots, dir).take(range.end).skip(range.start) {
            let Some(id) = slot.id else { continue };
            let mut step = self.call(slot, id, dir, |vm| vm.request_body(id, &data, end_of_stream));
            if matches!(step, Step::Paused) {
                if !end_of_stream {
                    // Buffered: later chunks join it.
                    return (Vec::new(), Verdict::Continue);
                }
                step = self.wait(state, slot, dir).await;
            }
            match self.verdict(slot, step) {
                Verdict::Continue => data = self.released(slot, id, dir),
                other => return (Vec::new(), other),
            }
        }
        (data, Verdict::Continue)
    }

    /// Request body for a chain whose headers a filter holds ([`Verdict::HeldForBody`]):
    /// `chunk` goes through the filters up to the holder, in order. `None` is no new body, only
    /// a look at whether the holder let the headers go (`proxy_continue_stream` from a callout,
    /// tick or queue; see [`Self::held_signal`]).
    ///
    /// Returns `HeldForBody` while the headers are still held (the body stays with the
    /// filters). When the holder lets them go (its body callback continues, or it resumed the
    /// stream), `headers` becomes what it made of them, the headers go on through the rest of
    /// the chain, then the body it let through: `Continue` returns the body to send upstream
    /// with those headers. A later filter may hold them again (`HeldForBody`).
    pub async fn held_request_body(
        &self,
        state: &mut StreamFilters,
        headers: &mut HeaderMap,
        chunk: Option<&[u8]>,
        end_of_stream: bool,
    ) -> (Vec<u8>, Verdict) {
        let Some(at) = state.held else { return (chunk.unwrap_or_default().to_vec(), Verdict::Continue) };
        let dir = StreamType::HttpRequest;
        let Some(holder) = nth(&state.slots, dir, at) else { return (Vec::new(), Verdict::Continue) };
        let id = holder.id.unwrap_or_default();
        let mut data = match chunk {
            Some(chunk) => {
                state.request_ended = end_of_stream;
                // The filters before the holder, then the holder itself.
                let (data, verdict) = self.request_body_through(state, chunk.to_vec(), end_of_stream, 0..at).await;
                match verdict {
                    Verdict::Continue => {}
                    other => return (Vec::new(), other),
                }
                let mut step = self.call(holder, id, dir, |vm| vm.request_body(id, &data, end_of_stream));
                if matches!(step, Step::Paused) {
                    // Still held, unless the filter resumed the stream meanwhile.
                    step = match self.with_instance(holder.group, |inst| resumed(&mut inst.vm, id, dir)).flatten() {
                        Some(step) => step,
                        None if end_of_stream => self.wait(state, holder, dir).await,
                        None => return (Vec::new(), Verdict::HeldForBody),
                    };
                }
                match self.verdict(holder, step) {
                    Verdict::Continue => {}
                    other => return (Vec::new(), other),
                }
                self.released(holder, id, dir)
            }
            None => {
                let step = self.with_instance(holder.group, |inst| resumed(&mut inst.vm, id, dir)).flatten();
                match step.map(|s| self.verdict(holder, s)) {
                    None => return (Vec::new(), Verdict::HeldForBody),
                    Some(Verdict::Continue) => self.released(holder, id, dir),
                    Some(other) => return (Vec::new(), other),
                }
            }
        };
        // The holder let the headers go: they go on through the rest of the chain.
        state.held = None;
        self.headers_of(holder, id, dir, headers);
        match self.headers(state, headers, false, dir, at + 1).await {
            Verdict::Continue => {}
            Verdict::HeldForBody => {
                // Held again further on: what the first holder let through goes to the filters
                // up to the new one.
                let next = state.held.unwrap_or(at + 1);
                let (rest, verdict) = self
                    .request_body_through(state, std::mem::take(&mut data), state.request_ended, at + 1..next)
                    .await;
                return match verdict {
                    Verdict::Continue => {
                        Box::pin(self.held_request_body(state, headers, Some(&rest), state.request_ended)).await
                    }
                    other => (Vec::new(), other),
                };
            }
            other => return (Vec::new(), other),
        }
        let ended = state.request_ended;
        self.request_body_through(state, data, ended, at + 1..usize::MAX).await
    }

    /// Resolves when the filter holding the request headers may have resumed the stream (then
    /// call [`Self::held_request_body`] with no chunk); `false` when the route's time ran out
    /// first. Pending forever when nothing is held.
    pub async fn held_signal(&self, state: &StreamFilters) -> bool {
        let holder = state.held.and_then(|at| nth(&state.slots, StreamType::HttpRequest, at));
        let notify = holder.and_then(|h| {
            let id = h.id?;
            self.with_instance(h.group, |inst| inst.waiters.entry(id).or_default().clone())
        });
        let Some(notify) = notify else { return std::future::pending().await };
        match state.deadline {
            Some(at) => tokio::time::timeout_at(at.into(), notify.notified()).await.is_ok(),
            None => {
                notify.notified().await;
                true
            }
        }
    }

    /// A response body chunk through the chain, in reverse order. Pingora cannot wait in a
    /// response body, so a filter that still holds the body at its end has it released (counted
    /// in [`PluginCounters::released_paused_bodies`]).
    pub fn response_body(&self, state: &mut StreamFilters, chunk: &[u8], end_of_stream: bool) -> (Vec<u8>, Verdict) {
        if state.response_ended {
            return (chunk.to_vec(), Verdict::Continue);
        }
        state.response_ended = end_of_stream;
        let dir = StreamType::HttpResponse;
        // The chunk is copied into each filter's VM: no copy of it before the first.
        let mut data = std::borrow::Cow::Borrowed(chunk);
        for slot in ordered(&state.slots, dir) {
            let Some(id) = slot.id else { continue };
            let mut step = self.call(slot, id, dir, |vm| vm.response_body(id, &data, end_of_stream));
            if matches!(step, Step::Paused) {
                if !end_of_stream {
                    return (Vec::new(), Verdict::Continue);
                }
                let entry = &self.plugins[slot.plugin];
                entry.counters.released_paused_bodies.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target: "wasmux::proxy", plugin = %entry.name,
                    "the filter held the response body at its end; released (a response body cannot wait)");
                step = Step::Continue;
            }
            match self.verdict(slot, step) {
                Verdict::Continue => data = self.released(slot, id, dir).into(),
                other => return (Vec::new(), other),
            }
        }
        (data.into_owned(), Verdict::Continue)
    }

    /// Takes the bytes a filter let through (its buffered body, released), leaving nothing in
    /// the VM's record of the stream.
    fn released(&self, slot: Slot, id: u32, dir: StreamType) -> Vec<u8> {
        self.with_instance(slot.group, |inst| {
            let Ok(h) = inst.vm.vm().http(id) else { return Vec::new() };
            let body = if dir == StreamType::HttpRequest { &mut h.request_body } else { &mut h.response_body };
            body.release();
            std::mem::take(&mut body.sent)
        })
        .unwrap_or_default()
    }

    /// The verdict for a settled step (not `Paused`), counting local replies.
    fn verdict(&self, slot: Slot, step: Step) -> Verdict {
        match step {
            Step::Continue | Step::Gone | Step::Paused => Verdict::Continue,
            Step::Reset => Verdict::Reset,
            Step::Timeout => Verdict::Timeout,
            Step::Reply(r) => {
                self.plugins[slot.plugin].counters.local_replies.fetch_add(1, Ordering::Relaxed);
                Verdict::Reply(r)
            }
        }
    }

    /// Waits until the filter resumes the stream in direction `dir` (`proxy_continue_stream`),
    /// answers or closes it, or the route's time runs out.
    async fn wait(&self, state: &StreamFilters, slot: Slot, dir: StreamType) -> Step {
        let Some(id) = slot.id else { return Step::Gone };
        loop {
            let notify = self.with_instance(slot.group, |inst| match resumed(&mut inst.vm, id, dir) {
                Some(step) => Err(step),
                None => Ok(inst.waiters.entry(id).or_default().clone()),
            });
            let notify = match notify {
                None => return Step::Gone,
                Some(Err(step)) => return step,
                Some(Ok(n)) => n,
            };
            match state.deadline {
                Some(at) => {
                    if tokio::time::timeout_at(at.into(), notify.notified()).await.is_err() {
                        return Step::Timeout;
                    }
                }
                None => notify.notified().await,
            }
        }
    }

    /// Ends every stream context of a request: `proxy_on_done`, `proxy_on_log`,
    /// `proxy_on_delete` (or deferred until the filter calls `proxy_done`). Call it from the
    /// proxy's logging phase; a state dropped without it ends its streams itself.
    pub fn finish(&self, state: &mut StreamFilters) {
        if !state.slots.is_empty() && state.thread != Some(std::thread::current().id()) {
            // Only the owner thread can reach the VMs; Pingora never moves a request's task.
            tracing::error!(target: "wasmux::proxy", "a request's filters were finished on another thread; their contexts stay");
            state.finished = true;
            return;
        }
        finish_streams(state, Some(self));
    }
}

/// The slots of a stream in the order a direction visits them: requests in chain order,
/// responses in reverse.
fn ordered(slots: &[Slot], dir: StreamType) -> impl Iterator<Item = Slot> + '_ {
    let forward = dir == StreamType::HttpRequest;
    let (ahead, back) = if forward { (Some(slots.iter()), None) } else { (None, Some(slots.iter().rev())) };
    ahead.into_iter().flatten().chain(back.into_iter().flatten()).copied()
}

/// The slot at position `at` of the order a direction visits them.
fn nth(slots: &[Slot], dir: StreamType, at: usize) -> Option<Slot> {
    let index = if dir == StreamType::HttpRequest { at } else { slots.len().checked_sub(at + 1)? };
    slots.get(index).copied()
}

/// A worker's background task: delivers its inbox and fires its VMs' ticks, on the worker's
/// thread, until the runtime stops or the chains are gone.
async fn drive(me: Weak<FilterChains>, mut rx: tokio::sync::mpsc::UnboundedReceiver<crate::callout::Delivery>) {
    loop {
        let Some(next) = me.upgrade().map(|c| c.next_tick()) else { return };
        let delivery = match next {
            Some(at) => tokio::select! {
                d = rx.recv() => match d { Some(d) => Some(d), None => return },
                () = tokio::time::sleep_until(at.into()) => None,
            },
            None => match rx.recv().await {
                Some(d) => Some(d),
                None => return,
            },
        };
        let Some(chains) = me.upgrade() else { return };
        match delivery {
            Some(d) => chains.deliver(d),
            None => chains.fire_ticks(),
        }
    }
}

/// Ends a request's stream contexts on this thread's worker; with the chains at hand, what the
/// callbacks left behind is counted too.
fn finish_streams(state: &mut StreamFilters, chains: Option<&FilterChains>) {
    state.finished = true;
    if state.slots.is_empty() {
        return;
    }
    let uid = state.uid;
    // The thread-local may be gone at thread exit: nothing left to end then.
    let _ = WORKERS.try_with(|w| {
        let Ok(mut workers) = w.try_borrow_mut() else { return };
        let Some((_, worker)) = workers.iter_mut().find(|(u, _)| *u == uid) else { return };
        for slot in &state.slots {
            let Some(id) = slot.id else { continue };
            let Some(inst) = worker.vms.get_mut(slot.group).and_then(Option::as_mut) else { continue };
            if let Err(e) = inst.vm.finish(id) {
                tracing::debug!(target: "wasmux::proxy", "finishing stream {id}: {e}");
            }
            match chains {
                Some(c) => c.account(Some(slot.plugin), inst),
                None => drop(inst.vm.take_trap()),
            }
            inst.waiters.remove(&id);
        }
        worker.recount();
    });
}

/// What a callback left the stream in.
#[derive(Debug)]
enum Step {
    Continue,
    Paused,
    Reply(LocalReply),
    /// The filter closed the stream.
    Reset,
    /// The route's time ran out while waiting.
    Timeout,
    /// The VM is gone (never started on this worker).
    Gone,
}

/// A local reply or a close the filter left on the stream.
fn answered(h: &HttpStreamState) -> Option<Step> {
    if let Some(reply) = &h.local_reply {
        return Some(Step::Reply(reply.clone()));
    }
    h.control.iter().any(|c| matches!(c, StreamControl::Close(_))).then_some(Step::Reset)
}

/// Takes the filter's requests to continue direction `dir`; whether there was one.
fn take_continue(h: &mut HttpStreamState, dir: StreamType) -> bool {
    let before = h.control.len();
    h.control.retain(|c| !matches!(c, StreamControl::Continue(t) if *t == dir));
    h.control.len() != before
}

/// Reads the outcome of a callback on stream `id`.
fn settle(vm: &mut Plugin, id: u32, r: wasmux::Result<Action>, dir: StreamType) -> Step {
    let action = match r {
        Ok(a) => a,
        Err(e) => {
            // Not absorbed by the failure policy (an unknown context): the filter is skipped.
            tracing::warn!(target: "wasmux::proxy", "callback failed: {e}");
            return Step::Continue;
        }
    };
    let Ok(h) = vm.vm().http(id) else { return Step::Continue };
    if let Some(step) = answered(h) {
        return step;
    }
    // A continue the filter asked for inside the callback itself changes nothing.
    take_continue(h, dir);
    if action == Action::Continue { Step::Continue } else { Step::Paused }
}

/// Whether a paused stream was resumed, answered or closed since.
fn resumed(vm: &mut Plugin, id: u32, dir: StreamType) -> Option<Step> {
    let Ok(h) = vm.vm().http(id) else { return Some(Step::Gone) };
    answered(h).or_else(|| take_continue(h, dir).then_some(Step::Continue))
}
