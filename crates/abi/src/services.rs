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

use crate::{HeaderMap, LogLevel, MetricType, Quota, Quotas, Refused, Status};

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

impl TracingLog {
    /// The lowest level the current `tracing` subscriber takes for target `wasmux::filter`
    /// (`Critical` when it takes none): the log level to give VMs that log here. Like Envoy,
    /// which gives filters its `wasm` logger's level, a VM then drops lower lines before
    /// reading them, and `proxy_get_log_level` tells the filter it may skip them.
    pub fn level() -> LogLevel {
        use tracing::Level;
        if tracing::enabled!(target: "wasmux::filter", Level::TRACE) {
            LogLevel::Trace
        } else if tracing::enabled!(target: "wasmux::filter", Level::DEBUG) {
            LogLevel::Debug
        } else if tracing::enabled!(target: "wasmux::filter", Level::INFO) {
            LogLevel::Info
        } else if tracing::enabled!(target: "wasmux::filter", Level::WARN) {
            LogLevel::Warn
        } else if tracing::enabled!(target: "wasmux::filter", Level::ERROR) {
            LogLevel::Error
        } else {
            LogLevel::Critical
        }
    }
}

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

    /// How many lines so far.
    pub fn len(&self) -> usize {
        lock(&self.records).len()
    }

    /// Whether no line was logged.
    pub fn is_empty(&self) -> bool {
        lock(&self.records).is_empty()
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

    /// The guest waits `d` (WASI `poll_oneoff` with a clock subscription). The host never
    /// blocks a filter: the system clock ignores it; a manual clock moves forward by `d`, so a
    /// guest that sleeps sees its time pass.
    fn idle(&self, _d: Duration) {}
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
    fn idle(&self, d: Duration) {
        self.advance(d);
    }
}

// ---------------------------------------------------------------------------------------------
// Properties

/// Host properties beyond those wasmux derives itself (plugin names, request and response
/// attributes from the stream's headers). Paths are segments, e.g. `["source", "address"]`;
/// a segment may hold dots (`["metadata", "filter_metadata", "envoy.filters.http.lua"]`).
pub trait Properties: Send + Sync + fmt::Debug {
    /// The encoded value at `path`, if the host knows it.
    fn get(&self, path: &[&[u8]]) -> Option<Vec<u8>>;

    /// Whether the embedder makes the lookup of `path` fail outright, even for a property
    /// wasmux would derive itself (to test a filter's error path).
    fn hidden(&self, _path: &[&[u8]]) -> bool {
        false
    }
}

/// Property values by path; `None`: the property is hidden.
type PropertyMap = BTreeMap<Vec<Vec<u8>>, Option<Vec<u8>>>;

/// A fixed map of properties set by the embedder (e.g. `source.address`, `xds.cluster_name`).
#[derive(Debug, Default)]
pub struct StaticProperties {
    values: RwLock<PropertyMap>,
}

impl StaticProperties {
    /// Sets the value at a dotted path such as `source.address`. Values are encoded as Envoy
    /// does: strings raw, integers 8 bytes little-endian (use [`encode_int`]), maps in the
    /// pairs format ([`crate::pairs::encode`]).
    pub fn insert(&self, dotted: &str, value: impl Into<Vec<u8>>) {
        self.insert_path(dotted.split('.').map(|s| s.as_bytes().to_vec()).collect(), Some(value.into()));
    }

    /// Sets the value at a path given as segments (which may hold dots); `None` hides the
    /// property: its lookup fails, even for one wasmux derives.
    pub fn insert_path(&self, path: Vec<Vec<u8>>, value: Option<Vec<u8>>) {
        self.values.write().unwrap_or_else(PoisonError::into_inner).insert(path, value);
    }
}

/// Encodes an integer property value (8 bytes, little-endian), as Envoy does.
pub fn encode_int(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

impl StaticProperties {
    /// The entry at `path`: `Some(None)` for a hidden property.
    fn entry(&self, path: &[&[u8]]) -> Option<Option<Vec<u8>>> {
        let values = self.values.read().unwrap_or_else(PoisonError::into_inner);
        let key: Vec<Vec<u8>> = path.iter().map(|s| s.to_vec()).collect();
        if let Some(v) = values.get(&key) {
            return Some(v.clone());
        }
        // A single dotted segment (`request.path` passed as one segment) is accepted too.
        if let [one] = path {
            let split: Vec<Vec<u8>> = one.split(|b| *b == b'.').map(<[u8]>::to_vec).collect();
            return values.get(&split).cloned();
        }
        None
    }
}

impl Properties for StaticProperties {
    fn get(&self, path: &[&[u8]]) -> Option<Vec<u8>> {
        self.entry(path).flatten()
    }

    fn hidden(&self, path: &[&[u8]]) -> bool {
        matches!(self.entry(path), Some(None))
    }
}

// ---------------------------------------------------------------------------------------------
// Shared data

/// A process-wide key-value store with compare-and-swap, partitioned by VM id.
pub trait SharedData: Send + Sync + fmt::Debug {
    /// The value and its CAS token.
    fn get(&self, vm_id: &str, key: &[u8]) -> Option<(Vec<u8>, u32)>;
    /// Sets a value. A non-zero `cas` must equal the current token, else `CAS_MISMATCH`. The
    /// store keeps the VM id within the shared-data quotas of the plugin that writes
    /// ([`Quotas::max_shared_data_keys`], [`Quotas::max_shared_data_bytes`]; the host checks
    /// [`Quotas::max_shared_data_value_bytes`] before calling).
    ///
    /// # Errors
    /// The status for the guest, or the quota the write would break.
    fn set(&self, vm_id: &str, key: &[u8], value: &[u8], cas: u32, quotas: &Quotas) -> Result<(), Refused>;
    /// Every entry of a VM id, sorted by key: `(key, value, cas)`.
    fn entries(&self, vm_id: &str) -> Vec<(Vec<u8>, Vec<u8>, u32)>;
}

/// The shared data of one VM id.
#[derive(Debug, Default)]
struct VmShared {
    map: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    /// Keys plus values.
    bytes: usize,
}

/// The in-memory store: one lock, one global CAS counter.
#[derive(Debug, Default)]
pub struct InMemorySharedData {
    vms: Mutex<HashMap<String, VmShared>>,
    cas: AtomicU32,
}

impl SharedData for InMemorySharedData {
    fn get(&self, vm_id: &str, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        lock(&self.vms).get(vm_id)?.map.get(key).cloned()
    }

    fn set(&self, vm_id: &str, key: &[u8], value: &[u8], cas: u32, quotas: &Quotas) -> Result<(), Refused> {
        let mut vms = lock(&self.vms);
        if !vms.contains_key(vm_id) {
            vms.insert(vm_id.to_string(), VmShared::default());
        }
        let Some(vm) = vms.get_mut(vm_id) else { return Err(Status::InternalFailure.into()) };
        let current = vm.map.get(key);
        if cas != 0 {
            match current {
                Some((_, cur)) if *cur == cas => {}
                _ => return Err(Status::CasMismatch.into()),
            }
        }
        let old = current.map_or(0, |(v, _)| key.len() + v.len());
        if current.is_none() && vm.map.len() >= quotas.max_shared_data_keys {
            return Err(Quota::SharedDataKeys.into());
        }
        if vm.bytes - old + key.len() + value.len() > quotas.max_shared_data_bytes {
            return Err(Quota::SharedDataBytes.into());
        }
        // Token 0 means "no CAS"; skip it when the counter wraps.
        let mut next = self.cas.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if next == 0 {
            next = self.cas.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        }
        vm.bytes = vm.bytes - old + key.len() + value.len();
        match vm.map.get_mut(key) {
            Some(slot) => *slot = (value.to_vec(), next),
            None => {
                vm.map.insert(key.to_vec(), (value.to_vec(), next));
            }
        }
        Ok(())
    }

    fn entries(&self, vm_id: &str) -> Vec<(Vec<u8>, Vec<u8>, u32)> {
        let vms = lock(&self.vms);
        let mut v: Vec<_> = vms
            .get(vm_id)
            .map(|vm| vm.map.iter().map(|(k, (val, cas))| (k.clone(), val.clone(), *cas)).collect())
            .unwrap_or_default();
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
    /// Creates or opens a queue; the caller becomes its owner. Returns the queue id. A VM id
    /// holds at most [`Quotas::max_queues`] queues.
    ///
    /// # Errors
    /// The quota a new queue would break.
    fn register(&self, vm_id: &str, name: &[u8], owner: QueueOwner, quotas: &Quotas) -> Result<u32, Refused>;
    /// Finds a queue by VM id and name.
    fn resolve(&self, vm_id: &str, name: &[u8]) -> Option<u32>;
    /// Appends an item and notifies the owner, within [`Quotas::max_queue_items`] and
    /// [`Quotas::max_queue_bytes`] for the queue.
    ///
    /// # Errors
    /// `NOT_FOUND` for an unknown queue id; the quota a full queue breaks.
    fn enqueue(&self, id: u32, item: &[u8], quotas: &Quotas) -> Result<(), Refused>;
    /// Whether an item of `len` bytes would fit in queue `id` now: lets the host refuse a
    /// full queue before it copies the item out of the guest. The default says yes;
    /// [`Self::enqueue`] decides.
    ///
    /// # Errors
    /// As [`Self::enqueue`].
    fn has_room(&self, _id: u32, _len: u64, _quotas: &Quotas) -> Result<(), Refused> {
        Ok(())
    }
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
    owner: QueueOwner,
    items: VecDeque<Vec<u8>>,
    /// Bytes of the items waiting.
    bytes: usize,
}

#[derive(Debug, Default)]
struct QueuesInner {
    queues: Vec<Queue>,
    /// Queue ids by VM id and name.
    ids: HashMap<(String, Vec<u8>), u32>,
    /// Queues per VM id.
    per_vm: HashMap<String, usize>,
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
    fn register(&self, vm_id: &str, name: &[u8], owner: QueueOwner, quotas: &Quotas) -> Result<u32, Refused> {
        let mut inner = lock(&self.inner);
        let key = (vm_id.to_string(), name.to_vec());
        if let Some(&id) = inner.ids.get(&key) {
            if let Some(q) = inner.queues.get_mut(id as usize - 1) {
                q.owner = owner;
            }
            return Ok(id);
        }
        let count = inner.per_vm.get(vm_id).copied().unwrap_or(0);
        if count >= quotas.max_queues {
            return Err(Quota::Queues.into());
        }
        let id = u32::try_from(inner.queues.len() + 1).map_err(|_| Quota::Queues)?;
        inner.queues.push(Queue { owner, items: VecDeque::new(), bytes: 0 });
        inner.ids.insert(key, id);
        *inner.per_vm.entry(vm_id.to_string()).or_default() += 1;
        Ok(id)
    }

    fn resolve(&self, vm_id: &str, name: &[u8]) -> Option<u32> {
        let inner = lock(&self.inner);
        inner.ids.get(&(vm_id.to_string(), name.to_vec())).copied()
    }

    fn enqueue(&self, id: u32, item: &[u8], quotas: &Quotas) -> Result<(), Refused> {
        let mut inner = lock(&self.inner);
        let idx = (id as usize).checked_sub(1).ok_or(Status::NotFound)?;
        let q = inner.queues.get_mut(idx).ok_or(Status::NotFound)?;
        if q.items.len() >= quotas.max_queue_items {
            return Err(Quota::QueueItems.into());
        }
        if q.bytes.saturating_add(item.len()) > quotas.max_queue_bytes {
            return Err(Quota::QueueBytes.into());
        }
        q.items.push_back(item.to_vec());
        q.bytes += item.len();
        let owner = q.owner;
        inner.ready.entry(owner.vm_uid).or_default().push((owner.root_context, id));
        self.pending.fetch_add(1, Ordering::Release);
        Ok(())
    }

    fn has_room(&self, id: u32, len: u64, quotas: &Quotas) -> Result<(), Refused> {
        let inner = lock(&self.inner);
        let idx = (id as usize).checked_sub(1).ok_or(Status::NotFound)?;
        let q = inner.queues.get(idx).ok_or(Status::NotFound)?;
        if q.items.len() >= quotas.max_queue_items {
            return Err(Quota::QueueItems.into());
        }
        if (q.bytes as u64).saturating_add(len) > quotas.max_queue_bytes as u64 {
            return Err(Quota::QueueBytes.into());
        }
        Ok(())
    }

    fn dequeue(&self, id: u32) -> Result<Vec<u8>, Status> {
        let mut inner = lock(&self.inner);
        let idx = (id as usize).checked_sub(1).ok_or(Status::NotFound)?;
        let q = inner.queues.get_mut(idx).ok_or(Status::NotFound)?;
        let item = q.items.pop_front().ok_or(Status::Empty)?;
        q.bytes -= item.len();
        Ok(item)
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

/// Upper bounds of the histogram buckets, Envoy's default histogram buckets in whole units
/// (Envoy's first bucket, 0.5, is folded into the first here); values above the last go to
/// an overflow bucket.
pub const HISTOGRAM_BOUNDS: [u64; 18] = [
    1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000, 600_000, 1_800_000,
    3_600_000,
];

/// A histogram kept as fixed buckets: its size does not grow with its samples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Samples per bucket: `counts[i]` holds the samples `<= HISTOGRAM_BOUNDS[i]` (and above
    /// the previous bound); the last entry holds the samples above every bound.
    pub counts: [u64; HISTOGRAM_BOUNDS.len() + 1],
    /// Sum of the samples (saturating).
    pub sum: u64,
}

impl Histogram {
    /// Records one sample.
    pub fn record(&mut self, value: u64) {
        let i = HISTOGRAM_BOUNDS.partition_point(|b| *b < value);
        self.counts[i] += 1;
        self.sum = self.sum.saturating_add(value);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The non-empty buckets as `(upper bound, samples)`; `None` is the overflow bucket.
    pub fn buckets(&self) -> impl Iterator<Item = (Option<u64>, u64)> + '_ {
        self.counts.iter().enumerate().filter(|(_, n)| **n > 0).map(|(i, n)| (HISTOGRAM_BOUNDS.get(i).copied(), *n))
    }
}

/// A metric's current value, for records and exports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricSnapshot {
    /// Name as the filter defined it.
    pub name: String,
    /// Type.
    pub kind: MetricType,
    /// Counter or gauge value; for histograms the number of samples.
    pub value: i64,
    /// The buckets of a histogram (`None` for other types).
    pub histogram: Option<Histogram>,
}

/// Longest metric name accepted, in bytes (longer names are `BAD_ARGUMENT`).
pub const MAX_METRIC_NAME: usize = 1024;

/// Counters, gauges and histograms defined by filters.
pub trait Metrics: Send + Sync + fmt::Debug {
    /// Defines (or finds) a metric; the same name and type give the same id. A store holds at
    /// most [`Quotas::max_metrics`] metrics.
    ///
    /// # Errors
    /// The status for the guest, or the quota a new metric would break.
    fn define(&self, kind: MetricType, name: &str, quotas: &Quotas) -> Result<u32, Refused>;
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
    inner: Mutex<MetricsInner>,
}

#[derive(Debug, Default)]
struct MetricsInner {
    metrics: Vec<MetricSnapshot>,
    /// Metric ids by name.
    ids: HashMap<String, u32>,
}

impl Metrics for InMemoryMetrics {
    fn define(&self, kind: MetricType, name: &str, quotas: &Quotas) -> Result<u32, Refused> {
        let mut m = lock(&self.inner);
        if let Some(&id) = m.ids.get(name) {
            return match m.metrics.get(id as usize - 1) {
                Some(x) if x.kind == kind => Ok(id),
                _ => Err(Status::BadArgument.into()),
            };
        }
        if m.metrics.len() >= quotas.max_metrics {
            return Err(Quota::Metrics.into());
        }
        let histogram = (kind == MetricType::Histogram).then(Histogram::default);
        m.metrics.push(MetricSnapshot { name: name.into(), kind, value: 0, histogram });
        let id = u32::try_from(m.metrics.len()).map_err(|_| Quota::Metrics)?;
        m.ids.insert(name.into(), id);
        Ok(id)
    }

    fn increment(&self, id: u32, delta: i64) -> Result<(), Status> {
        let mut m = lock(&self.inner);
        let x = m.metrics.get_mut((id as usize).wrapping_sub(1)).ok_or(Status::NotFound)?;
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
        let mut m = lock(&self.inner);
        let x = m.metrics.get_mut((id as usize).wrapping_sub(1)).ok_or(Status::NotFound)?;
        match x.kind {
            MetricType::Counter => {
                x.value = i64::try_from(value).unwrap_or(i64::MAX);
            }
            MetricType::Gauge => x.value = value as i64,
            MetricType::Histogram => {
                let h = x.histogram.get_or_insert_with(Histogram::default);
                h.record(value);
                x.value = i64::try_from(h.count()).unwrap_or(i64::MAX);
            }
        }
        Ok(())
    }

    fn get(&self, id: u32) -> Result<u64, Status> {
        let m = lock(&self.inner);
        let x = m.metrics.get((id as usize).wrapping_sub(1)).ok_or(Status::NotFound)?;
        match x.kind {
            MetricType::Histogram => Err(Status::BadArgument),
            _ => Ok(x.value as u64),
        }
    }

    fn snapshot(&self) -> Vec<MetricSnapshot> {
        let mut v = lock(&self.inner).metrics.clone();
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

impl GrpcCallout {
    /// The cluster the call goes to: `upstream` itself or, when `upstream` is a serialized
    /// `envoy.config.core.v3.GrpcService`, its `envoy_grpc.cluster_name` (Envoy accepts both).
    pub fn cluster(&self) -> std::borrow::Cow<'_, str> {
        /// The last length-delimited field `number` of a well-formed message.
        fn bytes_field(message: &[u8], number: u64) -> Option<&[u8]> {
            let mut found = None;
            for field in crate::proto::fields(message) {
                if let (n, crate::proto::Value::Bytes(b)) = field.ok()?
                    && n == number
                {
                    found = Some(b);
                }
            }
            found
        }
        match bytes_field(self.upstream.as_bytes(), 1).and_then(|envoy_grpc| bytes_field(envoy_grpc, 1)) {
            Some(name) if !name.is_empty() => String::from_utf8_lossy(name).into_owned().into(),
            _ => self.upstream.as_str().into(),
        }
    }
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

    /// How many callout events so far.
    pub fn len(&self) -> usize {
        lock(&self.events).len()
    }

    /// Whether nothing was dispatched.
    pub fn is_empty(&self) -> bool {
        lock(&self.events).is_empty()
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

/// The registry of foreign functions. Defaults: Envoy's `compress` (zlib, `SERIALIZATION_FAILURE`
/// on error), `uncompress` (the reverse; `SERIALIZATION_FAILURE` for bytes that are not zlib, or
/// inflate past 64 MiB) and `clear_route_cache` (accepted; the embedder's router registers its
/// own), plus `wasmux_echo` (returns its argument) and `wasmux_reverse` (returns it reversed).
/// Envoy's `set_envoy_filter_state` and `declare_property` act on the calling stream and are
/// built into the host; a function registered under one of their names takes precedence.
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
        r.register("compress", compress);
        r.register("uncompress", uncompress);
        r
    }
}

/// Largest output of `uncompress`.
const MAX_UNCOMPRESSED: u64 = 64 << 20;

/// Envoy's `compress`: zlib at the default level.
fn compress(input: &[u8]) -> Result<Vec<u8>, Status> {
    use std::io::Write as _;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(input).map_err(|_| Status::SerializationFailure)?;
    z.finish().map_err(|_| Status::SerializationFailure)
}

/// Envoy's `uncompress`: zlib, at most [`MAX_UNCOMPRESSED`] bytes out.
fn uncompress(input: &[u8]) -> Result<Vec<u8>, Status> {
    use std::io::Read as _;
    let mut out = Vec::new();
    let mut z = flate2::read::ZlibDecoder::new(input).take(MAX_UNCOMPRESSED + 1);
    z.read_to_end(&mut out).map_err(|_| Status::SerializationFailure)?;
    if out.len() as u64 > MAX_UNCOMPRESSED {
        return Err(Status::SerializationFailure);
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::GrpcCallout;

    #[test]
    fn tracing_log_level_is_what_the_subscriber_takes_for_filter_lines() {
        use super::{LogLevel, TracingLog};
        for (filter, want) in [
            ("trace", LogLevel::Trace),
            ("warn,wasmux::filter=debug", LogLevel::Debug),
            ("info", LogLevel::Info),
            ("debug,wasmux::filter=warn", LogLevel::Warn),
            ("warn,wasmux::filter=error", LogLevel::Error),
            ("info,wasmux::filter=off", LogLevel::Critical),
            ("wasmux::other=trace", LogLevel::Critical),
        ] {
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::sink)
                .finish();
            let level = tracing::subscriber::with_default(subscriber, TracingLog::level);
            assert_eq!(level, want, "filter `{filter}`");
        }
    }

    fn call(upstream: &[u8]) -> GrpcCallout {
        GrpcCallout {
            token: 1,
            stream: false,
            upstream: String::from_utf8(upstream.to_vec()).expect("text"),
            service: String::new(),
            method: String::new(),
            initial_metadata: crate::HeaderMap::new(),
            message: Vec::new(),
            timeout: std::time::Duration::ZERO,
        }
    }

    #[test]
    fn a_grpc_callout_names_its_cluster_plainly_or_in_a_grpc_service() {
        assert_eq!(call(b"grpc-cluster").cluster(), "grpc-cluster");
        // GrpcService { envoy_grpc (1): EnvoyGrpc { cluster_name (1): "auth", authority (2): "a" },
        // timeout (3): Duration { seconds (1): 1 } }
        let service = b"\x0a\x09\x0a\x04auth\x12\x01a\x1a\x02\x08\x01";
        assert_eq!(call(service).cluster(), "auth");
        // Not a well-formed message (field 12, wire type 7): the name itself.
        assert_eq!(call(b"g\x0a\x04auth").cluster(), "g\x0a\x04auth");
        // A GrpcService without envoy_grpc: the argument as it is.
        assert_eq!(call(b"\x1a\x02\x08\x01").cluster(), "\x1a\x02\x08\x01");
    }
}
