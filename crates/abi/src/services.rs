//! Embedder capabilities: small traits, each with a real in-memory default.
//!
//! A proxy that embeds wasmux implements the traits it cares about (send callouts over its own
//! connection pools, export metrics to its stats system, ...) and keeps the defaults for the
//! rest. The defaults are complete implementations, not mocks: the CLI, the conformance suite
//! and the benches run on them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{HeaderMap, LogLevel, MetricType, Status};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Logging

/// One log line from a filter (`proxy_log`, or WASI stdout/stderr), as the sink receives it:
/// borrowed from the VM's state and the guest's memory, so a line costs no allocation, and no
/// lookup, before the sink decides what to keep.
#[derive(Clone, Copy)]
pub struct LogLine<'a> {
    /// The VM id.
    pub vm_id: &'a str,
    /// The context that logged.
    pub context_id: u32,
    /// Level.
    pub level: LogLevel,
    /// The message as the guest wrote it: any bytes. [`Self::message`] reads it as text.
    pub bytes: &'a [u8],
    /// Where [`Self::root_id`] is looked up.
    contexts: &'a crate::state::ContextMap,
}

impl<'a> LogLine<'a> {
    /// A line from context `context_id` of a VM whose contexts are `contexts`.
    pub(crate) fn new(
        vm_id: &'a str,
        contexts: &'a crate::state::ContextMap,
        context_id: u32,
        level: LogLevel,
        bytes: &'a [u8],
    ) -> Self {
        Self { vm_id, context_id, level, bytes, contexts }
    }

    /// The message as text, invalid UTF-8 replaced (U+FFFD). The bytes are checked here, so a
    /// sink that drops the line never pays for it.
    pub fn message(&self) -> std::borrow::Cow<'a, str> {
        String::from_utf8_lossy(self.bytes)
    }

    /// Root id of the plugin whose context logged (empty during VM start-up). Looked up when
    /// asked for.
    pub fn root_id(&self) -> &'a str {
        self.contexts
            .get(&self.context_id)
            .and_then(|c| crate::state::root_state(self.contexts, c.root))
            .map_or("", |r| r.plugin.root_id.as_str())
    }

    /// An owned copy, for sinks that keep lines.
    pub fn to_record(&self) -> LogRecord {
        LogRecord {
            vm_id: self.vm_id.to_owned(),
            root_id: self.root_id().to_owned(),
            context_id: self.context_id,
            level: self.level,
            message: self.message().into_owned(),
        }
    }
}

impl fmt::Debug for LogLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogLine")
            .field("vm_id", &self.vm_id)
            .field("root_id", &self.root_id())
            .field("context_id", &self.context_id)
            .field("level", &self.level)
            .field("message", &self.message())
            .finish()
    }
}

/// An owned [`LogLine`], as [`MemoryLog`] keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// The VM id.
    pub vm_id: String,
    /// Root id of the plugin whose context logged (empty during VM start-up).
    pub root_id: String,
    /// The context that logged.
    pub context_id: u32,
    /// Level.
    pub level: LogLevel,
    /// Message.
    pub message: String,
}

/// Where filter logs go.
pub trait LogSink: Send + Sync + fmt::Debug {
    /// Receives one line at or above the VM's log level. The line is borrowed for the call:
    /// copy what outlives it ([`LogLine::to_record`]).
    fn log(&self, line: &LogLine<'_>);
}

/// Logs through `tracing`, target `wasmux::filter`.
#[derive(Debug, Default, Clone, Copy)]
pub struct TracingLog;

impl LogSink for TracingLog {
    fn log(&self, r: &LogLine<'_>) {
        // The root id and the message (checked as UTF-8) are only looked at when the event is
        // enabled.
        let root = Shown(|f: &mut fmt::Formatter<'_>| f.write_str(r.root_id()));
        let msg = Shown(|f: &mut fmt::Formatter<'_>| f.write_str(&r.message()));
        let ctx = r.context_id;
        match r.level {
            LogLevel::Trace => tracing::trace!(target: "wasmux::filter", root = %root, ctx, "{msg}"),
            LogLevel::Debug => tracing::debug!(target: "wasmux::filter", root = %root, ctx, "{msg}"),
            LogLevel::Info => tracing::info!(target: "wasmux::filter", root = %root, ctx, "{msg}"),
            LogLevel::Warn => tracing::warn!(target: "wasmux::filter", root = %root, ctx, "{msg}"),
            LogLevel::Error | LogLevel::Critical => {
                tracing::error!(target: "wasmux::filter", root = %root, ctx, level = %r.level, "{msg}")
            }
        }
    }
}

/// A value shown by a closure, run only when a subscriber formats it.
struct Shown<F>(F);

impl<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result> fmt::Display for Shown<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (self.0)(f)
    }
}

/// Keeps every line in memory (tests, `wasmux run`).
#[derive(Debug, Default)]
pub struct MemoryLog {
    records: Mutex<Vec<LogRecord>>,
}

impl MemoryLog {
    /// The lines so far.
    pub fn records(&self) -> Vec<LogRecord> {
        lock(&self.records).clone()
    }
}

impl LogSink for MemoryLog {
    fn log(&self, line: &LogLine<'_>) {
        let record = line.to_record();
        lock(&self.records).push(record);
    }
}

// ---------------------------------------------------------------------------------------------
// Clock

/// Wall-clock and monotonic time for `proxy_get_current_time_nanoseconds` and WASI clocks.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Nanoseconds since the Unix epoch.
    fn realtime_nanos(&self) -> u64;
    /// Monotonic nanoseconds from an arbitrary origin.
    fn monotonic_nanos(&self) -> u64;
}

/// The system clocks.
#[derive(Debug)]
pub struct SystemClock {
    origin: std::time::Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        Self { origin: std::time::Instant::now() }
    }
}

impl Clock for SystemClock {
    fn realtime_nanos(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    }
    fn monotonic_nanos(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }
}

/// A clock that only moves when told to: deterministic tests and scenarios.
#[derive(Debug, Default)]
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    /// A clock reading `nanos` on both clocks.
    pub fn new(nanos: u64) -> Self {
        Self { nanos: AtomicU64::new(nanos) }
    }
    /// Moves both clocks forward.
    pub fn advance(&self, by: Duration) {
        self.nanos.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn realtime_nanos(&self) -> u64 {
        self.nanos.load(Ordering::SeqCst)
    }
    fn monotonic_nanos(&self) -> u64 {
        self.nanos.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------------
// Properties

/// Host properties beyond those wasmux derives itself (plugin names, request and response
/// attributes from the stream's headers). Paths are segments, e.g. `["source", "address"]`.
pub trait Properties: Send + Sync + fmt::Debug {
    /// The encoded value at `path`, if the host knows it.
    fn get(&self, path: &[&[u8]]) -> Option<Vec<u8>>;
}

/// A fixed map of properties set by the embedder (e.g. `source.address`, `xds.cluster_name`).
#[derive(Debug, Default)]
pub struct StaticProperties {
    values: RwLock<BTreeMap<Vec<Vec<u8>>, Vec<u8>>>,
}

impl StaticProperties {
    /// Sets the value at a dotted path such as `source.address`. Values are encoded as Envoy
    /// does: strings raw, integers 8 bytes little-endian (use [`encode_int`]).
    pub fn insert(&self, dotted: &str, value: impl Into<Vec<u8>>) {
        let path = dotted.split('.').map(|s| s.as_bytes().to_vec()).collect();
        self.values.write().unwrap_or_else(PoisonError::into_inner).insert(path, value.into());
    }
}

/// Encodes an integer property value (8 bytes, little-endian), as Envoy does.
pub fn encode_int(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

impl Properties for StaticProperties {
    fn get(&self, path: &[&[u8]]) -> Option<Vec<u8>> {
        let values = self.values.read().unwrap_or_else(PoisonError::into_inner);
        let key: Vec<Vec<u8>> = path.iter().map(|s| s.to_vec()).collect();
        if let Some(v) = values.get(&key) {
            return Some(v.clone());
        }
        // A single dotted segment (`request.path` passed as one segment) is accepted too.
        if path.len() == 1 {
            let split: Vec<Vec<u8>> = path[0].split(|b| *b == b'.').map(<[u8]>::to_vec).collect();
            return values.get(&split).cloned();
        }
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Shared data

/// A process-wide key-value store with compare-and-swap, partitioned by VM id.
pub trait SharedData: Send + Sync + fmt::Debug {
    /// The value and its CAS token.
    fn get(&self, vm_id: &str, key: &[u8]) -> Option<(Vec<u8>, u32)>;
    /// Sets a value. A non-zero `cas` must equal the current token, else `CAS_MISMATCH`.
    ///
    /// # Errors
    /// The status to return to the guest.
    fn set(&self, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> Result<(), Status>;
    /// Every entry of a VM id, sorted by key: `(key, value, cas)`.
    fn entries(&self, vm_id: &str) -> Vec<(Vec<u8>, Vec<u8>, u32)>;
}

/// `(vm_id, key)`.
type SharedKey = (String, Vec<u8>);

/// The in-memory store: one lock, one global CAS counter.
#[derive(Debug, Default)]
pub struct InMemorySharedData {
    map: Mutex<HashMap<SharedKey, (Vec<u8>, u32)>>,
    cas: AtomicU32,
}

impl SharedData for InMemorySharedData {
    fn get(&self, vm_id: &str, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        lock(&self.map).get(&(vm_id.to_string(), key.to_vec())).cloned()
    }

    fn set(&self, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> Result<(), Status> {
        let mut map = lock(&self.map);
        let k = (vm_id.to_string(), key.to_vec());
        if cas != 0 {
            match map.get(&k) {
                Some((_, cur)) if *cur == cas => {}
                _ => return Err(Status::CasMismatch),
            }
        }
        // Token 0 means "no CAS"; skip it when the counter wraps.
        let mut next = self.cas.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if next == 0 {
            next = self.cas.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        }
        map.insert(k, (value.to_vec(), next));
        Ok(())
    }

    fn entries(&self, vm_id: &str) -> Vec<(Vec<u8>, Vec<u8>, u32)> {
        let mut v: Vec<_> = lock(&self.map)
            .iter()
            .filter(|((vm, _), _)| vm == vm_id)
            .map(|((_, k), (val, cas))| (k.clone(), val.clone(), *cas))
            .collect();
        v.sort();
        v
    }
}

// ---------------------------------------------------------------------------------------------
// Shared queues

/// Who gets `proxy_on_queue_ready` for a queue: the root context that registered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueueOwner {
    /// [`HostState::uid`](crate::HostState::uid) of the owning VM instance.
    pub vm_uid: u64,
    /// The registering root context.
    pub root_context: u32,
}

/// Process-wide named queues, partitioned by VM id.
pub trait SharedQueues: Send + Sync + fmt::Debug {
    /// Creates or opens a queue; the caller becomes its owner. Returns the queue id.
    fn register(&self, vm_id: &str, name: &[u8], owner: QueueOwner) -> u32;
    /// Finds a queue by VM id and name.
    fn resolve(&self, vm_id: &str, name: &[u8]) -> Option<u32>;
    /// Appends an item and notifies the owner.
    ///
    /// # Errors
    /// `NOT_FOUND` for an unknown queue id.
    fn enqueue(&self, id: u32, item: &[u8]) -> Result<(), Status>;
    /// Takes the oldest item.
    ///
    /// # Errors
    /// `EMPTY` when nothing is queued, `NOT_FOUND` for an unknown id.
    fn dequeue(&self, id: u32) -> Result<Vec<u8>, Status>;
    /// Takes the pending ready notifications for one VM instance: `(root_context, queue_id)`.
    fn take_ready(&self, vm_uid: u64) -> Vec<(u32, u32)>;
}

#[derive(Debug)]
struct Queue {
    vm_id: String,
    name: Vec<u8>,
    owner: QueueOwner,
    items: VecDeque<Vec<u8>>,
}

#[derive(Debug, Default)]
struct QueuesInner {
    queues: Vec<Queue>,
    ready: HashMap<u64, Vec<(u32, u32)>>,
}

/// The in-memory queues. Ready notifications are kept per owning VM until it drains them.
#[derive(Debug, Default)]
pub struct InMemoryQueues {
    inner: Mutex<QueuesInner>,
    /// Bumped on every notification so owners can poll cheaply.
    pending: AtomicU64,
}

impl InMemoryQueues {
    /// Whether any notification is waiting for any VM.
    pub fn has_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire) != 0
    }
}

impl SharedQueues for InMemoryQueues {
    fn register(&self, vm_id: &str, name: &[u8], owner: QueueOwner) -> u32 {
        let mut inner = lock(&self.inner);
        if let Some(i) = inner.queues.iter().position(|q| q.vm_id == vm_id && q.name == name) {
            inner.queues[i].owner = owner;
            return i as u32 + 1;
        }
        inner.queues.push(Queue { vm_id: vm_id.into(), name: name.into(), owner, items: VecDeque::new() });
        inner.queues.len() as u32
    }

    fn resolve(&self, vm_id: &str, name: &[u8]) -> Option<u32> {
        let inner = lock(&self.inner);
        inner.queues.iter().position(|q| q.vm_id == vm_id && q.name == name).map(|i| i as u32 + 1)
    }

    fn enqueue(&self, id: u32, item: &[u8]) -> Result<(), Status> {
        let mut inner = lock(&self.inner);
        let idx = (id as usize).checked_sub(1).ok_or(Status::NotFound)?;
        let q = inner.queues.get_mut(idx).ok_or(Status::NotFound)?;
        q.items.push_back(item.to_vec());
        let owner = q.owner;
        inner.ready.entry(owner.vm_uid).or_default().push((owner.root_context, id));
        self.pending.fetch_add(1, Ordering::Release);
        Ok(())
    }

    fn dequeue(&self, id: u32) -> Result<Vec<u8>, Status> {
        let mut inner = lock(&self.inner);
        let idx = (id as usize).checked_sub(1).ok_or(Status::NotFound)?;
        let q = inner.queues.get_mut(idx).ok_or(Status::NotFound)?;
        q.items.pop_front().ok_or(Status::Empty)
    }

    fn take_ready(&self, vm_uid: u64) -> Vec<(u32, u32)> {
        // The host asks after every callback: without a notification anywhere, answer without
        // the lock. One published concurrently is seen by the next call.
        if !self.has_pending() {
            return Vec::new();
        }
        let mut inner = lock(&self.inner);
        let taken = inner.ready.remove(&vm_uid).unwrap_or_default();
        if !taken.is_empty() {
            self.pending.fetch_sub(taken.len() as u64, Ordering::AcqRel);
        }
        taken
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// A metric's current value, for records and exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricSnapshot {
    /// Name as the filter defined it.
    pub name: String,
    /// Type.
    pub kind: MetricType,
    /// Counter or gauge value; for histograms the number of samples.
    pub value: i64,
    /// Histogram samples in arrival order (empty for other types).
    pub samples: Vec<u64>,
}

/// Counters, gauges and histograms defined by filters.
pub trait Metrics: Send + Sync + fmt::Debug {
    /// Defines (or finds) a metric; the same name and type give the same id.
    ///
    /// # Errors
    /// The status for the guest.
    fn define(&self, kind: MetricType, name: &str) -> Result<u32, Status>;
    /// Adds `delta` (counters may not go down: `BAD_ARGUMENT`).
    ///
    /// # Errors
    /// The status for the guest.
    fn increment(&self, id: u32, delta: i64) -> Result<(), Status>;
    /// Sets a gauge or records a histogram sample.
    ///
    /// # Errors
    /// The status for the guest.
    fn record(&self, id: u32, value: u64) -> Result<(), Status>;
    /// Reads a counter or gauge.
    ///
    /// # Errors
    /// The status for the guest.
    fn get(&self, id: u32) -> Result<u64, Status>;
    /// Every metric, sorted by name.
    fn snapshot(&self) -> Vec<MetricSnapshot>;
}

/// The in-memory metrics store.
#[derive(Debug, Default)]
pub struct InMemoryMetrics {
    metrics: Mutex<Vec<MetricSnapshot>>,
}

impl Metrics for InMemoryMetrics {
    fn define(&self, kind: MetricType, name: &str) -> Result<u32, Status> {
        let mut m = lock(&self.metrics);
        if let Some(i) = m.iter().position(|x| x.name == name && x.kind == kind) {
            return Ok(i as u32 + 1);
        }
        if m.iter().any(|x| x.name == name) {
            return Err(Status::BadArgument);
        }
        m.push(MetricSnapshot { name: name.into(), kind, value: 0, samples: Vec::new() });
        Ok(m.len() as u32)
    }

    fn increment(&self, id: u32, delta: i64) -> Result<(), Status> {
        let mut m = lock(&self.metrics);
        let x = m.get_mut((id as usize).wrapping_sub(1)).ok_or(Status::NotFound)?;
        match x.kind {
            MetricType::Counter if delta < 0 => Err(Status::BadArgument),
            MetricType::Counter | MetricType::Gauge => {
                x.value = x.value.saturating_add(delta);
                Ok(())
            }
            MetricType::Histogram => Err(Status::BadArgument),
        }
    }

    fn record(&self, id: u32, value: u64) -> Result<(), Status> {
        let mut m = lock(&self.metrics);
        let x = m.get_mut((id as usize).wrapping_sub(1)).ok_or(Status::NotFound)?;
        match x.kind {
            MetricType::Counter => {
                x.value = i64::try_from(value).unwrap_or(i64::MAX);
            }
            MetricType::Gauge => x.value = value as i64,
            MetricType::Histogram => {
                x.samples.push(value);
                x.value = x.samples.len() as i64;
            }
        }
        Ok(())
    }

    fn get(&self, id: u32) -> Result<u64, Status> {
        let m = lock(&self.metrics);
        let x = m.get((id as usize).wrapping_sub(1)).ok_or(Status::NotFound)?;
        match x.kind {
            MetricType::Histogram => Err(Status::BadArgument),
            _ => Ok(x.value as u64),
        }
    }

    fn snapshot(&self) -> Vec<MetricSnapshot> {
        let mut v = lock(&self.metrics).clone();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

// ---------------------------------------------------------------------------------------------
// Timers

/// Told when a root context sets its tick period, so the embedder can schedule
/// `proxy_on_tick`. wasmux also keeps the period itself ([`crate::Vm::tick_period`]).
pub trait Timers: Send + Sync + fmt::Debug {
    /// `period` of `None` disables the timer.
    fn set_tick_period(&self, vm_uid: u64, root_context: u32, period: Option<Duration>);
}

/// Records the latest period of every root context.
#[derive(Debug, Default)]
pub struct ManualTimers {
    periods: Mutex<BTreeMap<(u64, u32), Duration>>,
}

impl ManualTimers {
    /// The current period of a root context.
    pub fn period(&self, vm_uid: u64, root_context: u32) -> Option<Duration> {
        lock(&self.periods).get(&(vm_uid, root_context)).copied()
    }
}

impl Timers for ManualTimers {
    fn set_tick_period(&self, vm_uid: u64, root_context: u32, period: Option<Duration>) {
        let mut p = lock(&self.periods);
        match period {
            Some(d) => p.insert((vm_uid, root_context), d),
            None => p.remove(&(vm_uid, root_context)),
        };
    }
}

// ---------------------------------------------------------------------------------------------
// Callouts

/// An HTTP callout a filter dispatched (`proxy_http_call`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCallout {
    /// The token the host assigned; the response is delivered with it.
    pub token: u32,
    /// Upstream (cluster) name.
    pub upstream: String,
    /// Request headers, including `:method`, `:path` and `:authority`.
    pub headers: HeaderMap,
    /// Request body.
    pub body: Vec<u8>,
    /// Request trailers.
    pub trailers: HeaderMap,
    /// Timeout the filter asked for.
    pub timeout: Duration,
}

/// A gRPC call or stream a filter opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCallout {
    /// Token.
    pub token: u32,
    /// Whether it is a stream (`proxy_grpc_stream`) rather than a unary call.
    pub stream: bool,
    /// Upstream.
    pub upstream: String,
    /// Service name.
    pub service: String,
    /// Method name.
    pub method: String,
    /// Initial metadata.
    pub initial_metadata: HeaderMap,
    /// Unary request message (empty for streams).
    pub message: Vec<u8>,
    /// Timeout (unary calls).
    pub timeout: Duration,
}

/// Something a filter did to an open gRPC call or stream after opening it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcAction {
    /// `proxy_grpc_send`.
    Send {
        /// Message bytes.
        message: Vec<u8>,
        /// End of the request stream.
        end_stream: bool,
    },
    /// `proxy_grpc_cancel`.
    Cancel,
    /// `proxy_grpc_close`.
    Close,
}

/// Sends callouts. The response comes back later through the VM
/// ([`crate::Vm::on_http_call_response`] and the gRPC equivalents).
pub trait Callouts: Send + Sync + fmt::Debug {
    /// Dispatches an HTTP call.
    ///
    /// # Errors
    /// `BAD_ARGUMENT` for an unknown upstream, `INTERNAL_FAILURE` when it cannot be sent.
    fn http_call(&self, call: &HttpCallout) -> Result<(), Status>;
    /// Opens a gRPC call or stream.
    ///
    /// # Errors
    /// `PARSE_FAILURE` for an unknown upstream.
    fn grpc_open(&self, call: &GrpcCallout) -> Result<(), Status>;
    /// Acts on an open gRPC call or stream.
    ///
    /// # Errors
    /// The status for the guest.
    fn grpc_action(&self, token: u32, action: &GrpcAction) -> Result<(), Status>;
}

/// A callout event, as recorded by [`RecordingCallouts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalloutEvent {
    /// An HTTP call.
    Http(HttpCallout),
    /// A gRPC call or stream opened.
    GrpcOpen(GrpcCallout),
    /// A gRPC action.
    Grpc {
        /// Token.
        token: u32,
        /// What happened.
        action: GrpcAction,
    },
}

/// Records every callout; the embedder or test delivers responses later. With an upstream
/// allow-list set, unknown upstreams are refused as a proxy with clusters would.
#[derive(Debug, Default)]
pub struct RecordingCallouts {
    events: Mutex<Vec<CalloutEvent>>,
    upstreams: RwLock<Option<Vec<String>>>,
}

impl RecordingCallouts {
    /// Everything dispatched so far.
    pub fn events(&self) -> Vec<CalloutEvent> {
        lock(&self.events).clone()
    }

    /// Restricts callouts to these upstream names.
    pub fn set_upstreams(&self, names: Option<Vec<String>>) {
        *self.upstreams.write().unwrap_or_else(PoisonError::into_inner) = names;
    }

    fn known(&self, upstream: &str) -> bool {
        match &*self.upstreams.read().unwrap_or_else(PoisonError::into_inner) {
            Some(list) => list.iter().any(|u| u == upstream),
            None => true,
        }
    }
}

impl Callouts for RecordingCallouts {
    fn http_call(&self, call: &HttpCallout) -> Result<(), Status> {
        if !self.known(&call.upstream) {
            return Err(Status::BadArgument);
        }
        lock(&self.events).push(CalloutEvent::Http(call.clone()));
        Ok(())
    }

    fn grpc_open(&self, call: &GrpcCallout) -> Result<(), Status> {
        if !self.known(&call.upstream) {
            return Err(Status::ParseFailure);
        }
        lock(&self.events).push(CalloutEvent::GrpcOpen(call.clone()));
        Ok(())
    }

    fn grpc_action(&self, token: u32, action: &GrpcAction) -> Result<(), Status> {
        lock(&self.events).push(CalloutEvent::Grpc { token, action: action.clone() });
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Foreign functions

/// A host function a filter can call by name with `proxy_call_foreign_function`.
pub type ForeignFn = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, Status> + Send + Sync>;

/// The registry of foreign functions. Built-ins: `wasmux_echo` (returns its argument),
/// `wasmux_reverse` (returns it reversed) and `clear_route_cache` (accepted, no effect: wasmux
/// has no routes).
#[derive(Clone)]
pub struct ForeignFunctions {
    fns: HashMap<String, ForeignFn>,
}

impl fmt::Debug for ForeignFunctions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.fns.keys().collect();
        names.sort();
        f.debug_struct("ForeignFunctions").field("names", &names).finish()
    }
}

impl Default for ForeignFunctions {
    fn default() -> Self {
        let mut r = Self { fns: HashMap::new() };
        r.register("wasmux_echo", |a| Ok(a.to_vec()));
        r.register("wasmux_reverse", |a| Ok(a.iter().rev().copied().collect()));
        r.register("clear_route_cache", |_| Ok(Vec::new()));
        r
    }
}

impl ForeignFunctions {
    /// An empty registry.
    pub fn empty() -> Self {
        Self { fns: HashMap::new() }
    }

    /// Adds or replaces a function.
    pub fn register(&mut self, name: &str, f: impl Fn(&[u8]) -> Result<Vec<u8>, Status> + Send + Sync + 'static) {
        self.fns.insert(name.to_string(), Arc::new(f));
    }

    /// Looks a function up.
    pub fn get(&self, name: &str) -> Option<&ForeignFn> {
        self.fns.get(name)
    }
}

// ---------------------------------------------------------------------------------------------

/// Every embedder service a VM uses. Clone it to share state between VMs: clones share the
/// same underlying stores (shared data and queues must be shared by all VMs of a VM id).
#[derive(Debug, Clone)]
pub struct Services {
    /// Log sink.
    pub log: Arc<dyn LogSink>,
    /// Clocks.
    pub clock: Arc<dyn Clock>,
    /// Extra host properties.
    pub properties: Arc<dyn Properties>,
    /// Shared key-value store.
    pub shared_data: Arc<dyn SharedData>,
    /// Shared queues.
    pub queues: Arc<dyn SharedQueues>,
    /// Metrics.
    pub metrics: Arc<dyn Metrics>,
    /// Tick timers.
    pub timers: Arc<dyn Timers>,
    /// HTTP and gRPC callouts.
    pub callouts: Arc<dyn Callouts>,
    /// Foreign functions.
    pub foreign: Arc<ForeignFunctions>,
}

impl Default for Services {
    fn default() -> Self {
        Self {
            log: Arc::new(TracingLog),
            clock: Arc::new(SystemClock::default()),
            properties: Arc::new(StaticProperties::default()),
            shared_data: Arc::new(InMemorySharedData::default()),
            queues: Arc::new(InMemoryQueues::default()),
            metrics: Arc::new(InMemoryMetrics::default()),
            timers: Arc::new(ManualTimers::default()),
            callouts: Arc::new(RecordingCallouts::default()),
            foreign: Arc::new(ForeignFunctions::default()),
        }
    }
}
