//! Filter chains: the plugins, their per-worker VMs, and the HTTP filter semantics, usable
//! from any Pingora `ProxyHttp`.
//!
//! # Threads
//!
//! A proxy-wasm VM instance is single-threaded state. Each worker thread keeps its own instance
//! of every VM in a thread-local, created on the first request that thread serves; a stream's
//! callbacks all run on the VM of the thread that created its context. This is sound under
//! Pingora when the service runs with `work_stealing: false`: every worker thread then runs its
//! own single-threaded runtime, and a connection's task (every request on it) never leaves the
//! thread it started on. [`crate::Server`] configures Pingora that way. The per-request state
//! Pingora keeps ([`StreamFilters`]) holds only ids and flags, so it is `Send + Sync` as
//! Pingora requires; no lock is taken on the request path.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use wasmux::abi::{LocalReply, StreamControl, StreamType};
use wasmux::{Action, CompiledPlugin, HeaderMap, Plugin};

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
}

impl Drop for StreamFilters {
    /// A request Pingora dropped without its logging phase (a task cancelled at shutdown) still
    /// ends its contexts, on the thread that owns them.
    fn drop(&mut self) {
        if !self.finished && self.thread == Some(std::thread::current().id()) {
            finish_streams(self);
        }
    }
}

thread_local! {
    static WORKERS: RefCell<Vec<(u64, Worker)>> = const { RefCell::new(Vec::new()) };
}

/// One worker thread's instances.
struct Worker {
    /// One per group; `None` when the instance could not start on this thread.
    vms: Vec<Option<Plugin>>,
    /// When each root context of each VM ticks next.
    ticks: Vec<Vec<Option<Instant>>>,
    /// Reloads seen per VM, to count new ones.
    reloads: Vec<u64>,
    live: Arc<AtomicI64>,
}

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

impl FilterChains {
    /// Plugins grouped into VMs: `groups[g]` lists the plugins sharing VM `g`, the first being
    /// the one the others are siblings of ([`CompiledPlugin::sibling`]). Every group is started
    /// once here, to refuse a plugin that cannot start before anything listens.
    ///
    /// # Errors
    /// A plugin whose VM or root context does not start, named.
    pub fn new(groups: Vec<Vec<Arc<CompiledPlugin>>>) -> Result<Arc<Self>, String> {
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
    pub fn with_uid(uid: u64, groups: Vec<Vec<Arc<CompiledPlugin>>>) -> Result<Arc<Self>, String> {
        let mut plugins = Vec::new();
        for (g, group) in groups.iter().enumerate() {
            let started = CompiledPlugin::instantiate_group(group);
            if let Err(e) = started {
                return Err(format!("plugin group of `{}` does not start: {e}", group[0].options().name));
            }
            for (root, p) in group.iter().enumerate() {
                plugins.push(PluginEntry { name: p.options().name.clone(), group: g, root, counters: Arc::default() });
            }
        }
        Ok(Arc::new_cyclic(|me| Self { uid, me: me.clone(), groups, plugins, live: Mutex::default() }))
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

    /// Stream contexts alive over every worker (streams started and not yet deleted).
    pub fn live_streams(&self) -> i64 {
        self.live.lock().unwrap_or_else(PoisonError::into_inner).iter().map(|g| g.load(Ordering::Relaxed)).sum()
    }

    /// Stream contexts alive on this thread's worker.
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
        let Some(mut worker) = worker else { return };
        for vm in worker.vms.iter_mut().flatten() {
            for root in vm.vm().roots() {
                if let Err(e) = vm.vm().finish(root) {
                    tracing::debug!(target: "wasmux::proxy", "shutting down root context {root}: {e}");
                }
            }
        }
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

    fn new_worker(&self) -> Worker {
        // The inbox first: VMs register their queues while they start, and the queue registry
        // notes the registering worker's inbox as the owner's.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        crate::callout::set_inbox(self.uid, tx);
        let vms = self
            .groups
            .iter()
            .map(|group| match CompiledPlugin::instantiate_group(group) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::error!(target: "wasmux::proxy", plugin = %group[0].options().name, "VM does not start on this worker: {e}");
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
        let ticks = self.groups.iter().map(|g| vec![None; g.len()]).collect();
        Worker { vms, ticks, reloads: vec![0; self.groups.len()], live }
    }

    /// The plugin at root `root` of VM `group`.
    fn plugin_at(&self, group: usize, root: usize) -> Option<usize> {
        self.plugins.iter().position(|p| p.group == group && p.root == root)
    }

    /// Delivers something from outside a request into this worker's VMs, then wakes the
    /// streams it may have resumed.
    fn deliver(&self, d: crate::callout::Delivery) {
        self.with_worker(|w| match d {
            crate::callout::Delivery::Http { group, token, response } => {
                let Some(vm) = w.vms.get_mut(group).and_then(Option::as_mut) else { return };
                // An unknown token (the VM was reloaded since) is dropped.
                let _ = vm.http_call_response(token, response);
                self.account_root(group, vm);
                wake_all(vm);
            }
            crate::callout::Delivery::Queue => {
                for (group, vm) in w.vms.iter_mut().enumerate() {
                    let Some(vm) = vm.as_mut() else { continue };
                    let _ = vm.poll();
                    self.account_root(group, vm);
                    wake_all(vm);
                }
            }
        });
    }

    /// Counts a trap of a callback that did not belong to a stream (charged to the VM's first
    /// plugin).
    fn account_root(&self, group: usize, vm: &mut Plugin) {
        if let Some(p) = self.plugin_at(group, 0) {
            self.account(p, vm);
        }
    }

    /// The next tick due on this worker, scheduling root contexts that just asked for ticks
    /// and dropping those that stopped.
    fn next_tick(&self) -> Option<Instant> {
        self.with_worker(|w| {
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            for (group, vm) in w.vms.iter_mut().enumerate() {
                let Some(vm) = vm.as_mut() else { continue };
                for (root, at) in w.ticks[group].iter_mut().enumerate() {
                    match vm.tick_period_for(root) {
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
            for (group, vm) in w.vms.iter_mut().enumerate() {
                let Some(vm) = vm.as_mut() else { continue };
                let mut fired = false;
                for (root, at) in w.ticks[group].iter_mut().enumerate() {
                    if at.is_some_and(|t| t <= now) {
                        let _ = vm.tick_for(root);
                        if let Some(p) = self.plugin_at(group, root) {
                            self.account(p, vm);
                        }
                        *at = vm.tick_period_for(root).map(|p| now + p);
                        fired = true;
                    }
                }
                if fired {
                    wake_all(vm);
                }
            }
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
        };
        self.with_worker(|w| {
            for &plugin in &chain.0 {
                let entry = &self.plugins[plugin];
                let id = match w.vms[entry.group].as_mut() {
                    Some(vm) => {
                        let id = vm.http_stream_for(entry.root);
                        let reloads = vm.stats().reloads;
                        let seen = &mut w.reloads[entry.group];
                        if reloads > *seen {
                            entry.counters.reloads.fetch_add(reloads - *seen, Ordering::Relaxed);
                            *seen = reloads;
                        }
                        match id {
                            Ok(id) => Some(id),
                            Err(e) => {
                                tracing::warn!(target: "wasmux::proxy", plugin = %entry.name, "cannot start a stream: {e}");
                                None
                            }
                        }
                    }
                    None => None,
                };
                if id.is_some() {
                    entry.counters.streams.fetch_add(1, Ordering::Relaxed);
                    w.live.fetch_add(1, Ordering::Relaxed);
                }
                state.slots.push(Slot { plugin, group: entry.group, id });
            }
        });
        state
    }

    /// The policy answer for a filter that has no stream context (its VM did not start).
    fn missing(&self, slot: &Slot) -> Option<LocalReply> {
        let entry = &self.plugins[slot.plugin];
        entry.counters.failed_streams.fetch_add(1, Ordering::Relaxed);
        let policy = self.groups[slot.group][entry.root].options().failure_policy;
        (policy != wasmux::FailurePolicy::FailOpen).then(|| LocalReply {
            status_code: 503,
            details: "wasm_fail_stream".into(),
            body: Vec::new(),
            headers: HeaderMap::new(),
            grpc_status: None,
        })
    }

    /// Counts what a callback left behind: a trap, a failed stream.
    fn account(&self, plugin: usize, vm: &mut Plugin) {
        if vm.take_trap().is_some() {
            let c = &self.plugins[plugin].counters;
            c.traps.fetch_add(1, Ordering::Relaxed);
            c.failed_streams.fetch_add(1, Ordering::Relaxed);
        }
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
        for i in 0..state.slots.len() {
            let slot = state.slots[i];
            let Some(id) = slot.id else {
                match self.missing(&slot) {
                    Some(reply) => return Verdict::Reply(reply),
                    None => continue,
                }
            };
            let step = self.with_worker(|w| {
                let Some(vm) = w.vms[slot.group].as_mut() else { return Step::Gone };
                let r = vm.request_headers(id, headers.clone(), end_of_stream);
                self.account(slot.plugin, vm);
                settle(vm, id, r, StreamType::HttpRequest, |h| headers.clone_from(&h.request_headers))
            });
            match self.after(state, slot, step, StreamType::HttpRequest).await {
                Verdict::Continue => {
                    self.with_worker(|w| {
                        if let Some(Ok(h)) = w.vms[slot.group].as_mut().map(|vm| vm.vm().http(id)) {
                            headers.clone_from(&h.request_headers);
                        }
                    });
                }
                other => return other,
            }
        }
        Verdict::Continue
    }

    /// Response headers through the chain, in reverse order.
    pub async fn response_headers(
        &self,
        state: &mut StreamFilters,
        headers: &mut HeaderMap,
        end_of_stream: bool,
    ) -> Verdict {
        state.response_ended = end_of_stream;
        for i in (0..state.slots.len()).rev() {
            let slot = state.slots[i];
            let Some(id) = slot.id else { continue };
            let step = self.with_worker(|w| {
                let Some(vm) = w.vms[slot.group].as_mut() else { return Step::Gone };
                let r = vm.response_headers(id, headers.clone(), end_of_stream);
                self.account(slot.plugin, vm);
                settle(vm, id, r, StreamType::HttpResponse, |h| headers.clone_from(&h.response_headers))
            });
            match self.after(state, slot, step, StreamType::HttpResponse).await {
                Verdict::Continue => {
                    self.with_worker(|w| {
                        if let Some(Ok(h)) = w.vms[slot.group].as_mut().map(|vm| vm.vm().http(id)) {
                            headers.clone_from(&h.response_headers);
                        }
                    });
                }
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
        let mut data = chunk.to_vec();
        for i in 0..state.slots.len() {
            let slot = state.slots[i];
            let Some(id) = slot.id else { continue };
            let step = self.with_worker(|w| {
                let Some(vm) = w.vms[slot.group].as_mut() else { return Step::Gone };
                let r = vm.request_body(id, &data, end_of_stream);
                self.account(slot.plugin, vm);
                settle(vm, id, r, StreamType::HttpRequest, |_| {})
            });
            let paused = matches!(step, Step::Paused);
            match step {
                Step::Reply(r) => return (Vec::new(), Verdict::Reply(r)),
                Step::Reset => return (Vec::new(), Verdict::Reset),
                Step::Paused if !end_of_stream => return (Vec::new(), Verdict::Continue),
                _ => {}
            }
            if paused {
                match self.wait(state, slot, StreamType::HttpRequest).await {
                    Verdict::Continue => {}
                    other => return (Vec::new(), other),
                }
            }
            data = self.released(slot, id, StreamType::HttpRequest);
        }
        (data, Verdict::Continue)
    }

    /// A response body chunk through the chain, in reverse order. Pingora cannot wait in a
    /// response body, so a filter that still holds the body at its end has it released (counted
    /// in [`PluginCounters::released_paused_bodies`]).
    pub fn response_body(&self, state: &mut StreamFilters, chunk: &[u8], end_of_stream: bool) -> (Vec<u8>, Verdict) {
        if state.response_ended {
            return (chunk.to_vec(), Verdict::Continue);
        }
        state.response_ended = end_of_stream;
        let mut data = chunk.to_vec();
        for i in (0..state.slots.len()).rev() {
            let slot = state.slots[i];
            let Some(id) = slot.id else { continue };
            let step = self.with_worker(|w| {
                let Some(vm) = w.vms[slot.group].as_mut() else { return Step::Gone };
                let r = vm.response_body(id, &data, end_of_stream);
                self.account(slot.plugin, vm);
                settle(vm, id, r, StreamType::HttpResponse, |_| {})
            });
            match step {
                Step::Reply(r) => return (Vec::new(), Verdict::Reply(r)),
                Step::Reset => return (Vec::new(), Verdict::Reset),
                Step::Paused if !end_of_stream => return (Vec::new(), Verdict::Continue),
                Step::Paused => {
                    self.plugins[slot.plugin].counters.released_paused_bodies.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(target: "wasmux::proxy", plugin = %self.plugins[slot.plugin].name,
                        "the filter held the response body at its end; released (a response body cannot wait)");
                }
                _ => {}
            }
            data = self.released(slot, id, StreamType::HttpResponse);
        }
        (data, Verdict::Continue)
    }

    /// Takes the bytes a filter let through (its buffered body, released), leaving nothing in
    /// the VM's record of the stream.
    fn released(&self, slot: Slot, id: u32, dir: StreamType) -> Vec<u8> {
        self.with_worker(|w| {
            let Some(Ok(h)) = w.vms[slot.group].as_mut().map(|vm| vm.vm().http(id)) else { return Vec::new() };
            let body = if dir == StreamType::HttpRequest { &mut h.request_body } else { &mut h.response_body };
            body.release();
            std::mem::take(&mut body.sent)
        })
    }

    /// What to do after a header callback: go on, answer, or wait for the filter to resume.
    async fn after(&self, state: &StreamFilters, slot: Slot, step: Step, dir: StreamType) -> Verdict {
        match step {
            Step::Continue | Step::Gone => Verdict::Continue,
            Step::Reply(r) => {
                self.plugins[slot.plugin].counters.local_replies.fetch_add(1, Ordering::Relaxed);
                Verdict::Reply(r)
            }
            Step::Reset => Verdict::Reset,
            Step::Paused => self.wait(state, slot, dir).await,
        }
    }

    /// Waits until the filter resumes the stream in direction `dir` (`proxy_continue_stream`),
    /// answers it, or the route's time runs out.
    async fn wait(&self, state: &StreamFilters, slot: Slot, dir: StreamType) -> Verdict {
        let Some(id) = slot.id else { return Verdict::Continue };
        loop {
            let (step, notify) = self.with_worker(|w| {
                let Some(vm) = w.vms[slot.group].as_mut() else { return (Step::Gone, None) };
                match resumed(vm, id, dir) {
                    Some(step) => (step, None),
                    None => (Step::Paused, Some(waiter(vm, id))),
                }
            });
            match step {
                Step::Continue | Step::Gone => return Verdict::Continue,
                Step::Reset => return Verdict::Reset,
                Step::Reply(r) => {
                    self.plugins[slot.plugin].counters.local_replies.fetch_add(1, Ordering::Relaxed);
                    return Verdict::Reply(r);
                }
                Step::Paused => {}
            }
            let Some(notify) = notify else { return Verdict::Continue };
            match state.deadline {
                Some(at) => {
                    if tokio::time::timeout_at(at.into(), notify.notified()).await.is_err() {
                        return Verdict::Timeout;
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
        if state.slots.is_empty() {
            state.finished = true;
            return;
        }
        if state.thread != Some(std::thread::current().id()) {
            // Only the owner thread can reach the VMs; Pingora never moves a request's task.
            tracing::error!(target: "wasmux::proxy", "a request's filters were finished on another thread; their contexts stay");
            state.finished = true;
            return;
        }
        finish_streams(state);
    }
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

/// Ends a request's stream contexts on this thread's worker.
fn finish_streams(state: &mut StreamFilters) {
    state.finished = true;
    let uid = state.uid;
    // The thread-local may be gone at thread exit: nothing left to end then.
    let _ = WORKERS.try_with(|w| {
        let Ok(mut workers) = w.try_borrow_mut() else { return };
        let Some((_, worker)) = workers.iter_mut().find(|(u, _)| *u == uid) else { return };
        for slot in &state.slots {
            let Some(id) = slot.id else { continue };
            if let Some(vm) = worker.vms[slot.group].as_mut() {
                if let Err(e) = vm.finish(id) {
                    tracing::debug!(target: "wasmux::proxy", "finishing stream {id}: {e}");
                }
                let _ = vm.take_trap();
                WAITERS.with(|ws| ws.borrow_mut().remove(&(vm_key(vm), id)));
            }
            worker.live.fetch_sub(1, Ordering::Relaxed);
        }
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
    /// The VM is gone (never started on this worker).
    Gone,
}

/// Reads the outcome of a callback on stream `id`.
fn settle(
    vm: &mut Plugin,
    id: u32,
    r: wasmux::Result<Action>,
    dir: StreamType,
    on_continue: impl FnOnce(&mut wasmux::abi::HttpStreamState),
) -> Step {
    let action = match r {
        Ok(a) => a,
        Err(e) => {
            // Not absorbed by the failure policy (an unknown context): the filter is skipped.
            tracing::warn!(target: "wasmux::proxy", "callback failed: {e}");
            return Step::Continue;
        }
    };
    let Ok(h) = vm.vm().http(id) else { return Step::Continue };
    if let Some(reply) = h.local_reply.clone() {
        return Step::Reply(reply);
    }
    if h.control.iter().any(|c| matches!(c, StreamControl::Close(_))) {
        return Step::Reset;
    }
    // A continue the filter asked for inside the callback itself changes nothing.
    h.control.retain(|c| !matches!(c, StreamControl::Continue(t) if *t == dir));
    match action {
        Action::Continue => {
            on_continue(h);
            Step::Continue
        }
        _ => Step::Paused,
    }
}

/// Whether a paused stream was resumed or answered since.
fn resumed(vm: &mut Plugin, id: u32, dir: StreamType) -> Option<Step> {
    let Ok(h) = vm.vm().http(id) else { return Some(Step::Gone) };
    if let Some(reply) = h.local_reply.clone() {
        return Some(Step::Reply(reply));
    }
    if h.control.iter().any(|c| matches!(c, StreamControl::Close(_))) {
        return Some(Step::Reset);
    }
    let before = h.control.len();
    h.control.retain(|c| !matches!(c, StreamControl::Continue(t) if *t == dir));
    (h.control.len() != before).then_some(Step::Continue)
}

thread_local! {
    /// Paused streams of this thread: (VM, context id) → what wakes them.
    static WAITERS: RefCell<HashMap<(usize, u32), Arc<tokio::sync::Notify>>> = RefCell::new(HashMap::new());
}

/// A key for a VM instance: its address, stable while the worker holds it.
fn vm_key(vm: &Plugin) -> usize {
    std::ptr::from_ref(vm) as usize
}

fn waiter(vm: &Plugin, id: u32) -> Arc<tokio::sync::Notify> {
    WAITERS.with(|ws| ws.borrow_mut().entry((vm_key(vm), id)).or_default().clone())
}

/// Wakes every paused stream of a VM, to look again at what happened to it (after a callback
/// that did not come from the stream itself: a callout response, a tick, a queue).
pub(crate) fn wake_all(vm: &Plugin) {
    let key = vm_key(vm);
    WAITERS.with(|ws| {
        for ((k, _), n) in ws.borrow().iter() {
            if *k == key {
                n.notify_one();
            }
        }
    });
}
