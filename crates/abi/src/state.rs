//! Host state carried in every instance's store: contexts, stream data, in-flight callouts.
//!
//! The state is engine-neutral and travels in the engine's store (wasmtime and wasmi `Store`
//! data, wasmer `FunctionEnv`, a V8 isolate slot), never in a thread-local.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::exports::Exports;
use crate::services::Services;
use crate::{AbiVersion, LogLevel};

/// Bytes stored inline when short (most header names and values), else on the heap: a header
/// map then costs one allocation for its entry list rather than two per entry.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum SmallBytes {
    Inline { len: u8, buf: [u8; Self::INLINE] },
    Heap(Box<[u8]>),
}

impl SmallBytes {
    const INLINE: usize = 22;
}

impl From<&[u8]> for SmallBytes {
    #[inline]
    fn from(data: &[u8]) -> Self {
        if data.len() <= Self::INLINE {
            let mut buf = [0; Self::INLINE];
            buf[..data.len()].copy_from_slice(data);
            Self::Inline { len: data.len() as u8, buf }
        } else {
            Self::Heap(data.into())
        }
    }
}

impl std::ops::Deref for SmallBytes {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        match self {
            Self::Inline { len, buf } => &buf[..usize::from(*len)],
            Self::Heap(b) => b,
        }
    }
}

impl std::ops::DerefMut for SmallBytes {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Self::Inline { len, buf } => &mut buf[..usize::from(*len)],
            Self::Heap(b) => b,
        }
    }
}

impl AsRef<[u8]> for SmallBytes {
    #[inline]
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for SmallBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

/// A header name to look for, compared with stored (lower-cased) names ignoring ASCII case.
#[derive(Clone, Copy)]
struct Name<'a> {
    name: &'a [u8],
    /// No upper-case letter (what SDKs send): then it compares as bytes.
    lower: bool,
}

impl<'a> Name<'a> {
    #[inline]
    fn new(name: &'a [u8]) -> Self {
        Self { name, lower: !name.iter().any(u8::is_ascii_uppercase) }
    }

    /// Whether stored name `k` is this name. The length and first byte rule most names out
    /// without a call to `memcmp`.
    #[inline]
    fn matches(self, k: &[u8]) -> bool {
        k.len() == self.name.len()
            && if self.lower {
                k.first() == self.name.first() && k == self.name
            } else {
                k.eq_ignore_ascii_case(self.name)
            }
    }
}

/// An ordered multi-map of header names to values, as proxies keep them.
///
/// Names are stored lower-cased (HTTP/2 style, as Envoy does) and compared case-insensitively.
/// Values are raw bytes: the pairs format allows any byte in a value.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HeaderMap {
    entries: Vec<(SmallBytes, SmallBytes)>,
}

/// A clone keeps the headroom of `from_pairs` too (a derived clone would allocate exactly the
/// entries).
impl Clone for HeaderMap {
    fn clone(&self) -> Self {
        let mut entries = Vec::with_capacity(self.entries.len() + Self::HEADROOM);
        entries.extend_from_slice(&self.entries);
        Self { entries }
    }
}

impl HeaderMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Room [`Self::from_pairs`] leaves for entries added later: filters commonly add a few
    /// headers, and growing the list on the first one would copy the whole map.
    const HEADROOM: usize = 4;

    /// Builds a map from pairs, lower-casing names.
    pub fn from_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        let pairs = pairs.into_iter();
        let mut m = Self { entries: Vec::with_capacity(pairs.size_hint().0 + Self::HEADROOM) };
        for (k, v) in pairs {
            m.add(k.as_ref(), v.as_ref());
        }
        m
    }

    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries.iter().map(|(k, v)| (&**k, &**v))
    }

    /// The entries, for [`pairs::encode`](crate::pairs::encode).
    pub(crate) fn entries(&self) -> &[(SmallBytes, SmallBytes)] {
        &self.entries
    }

    /// Number of entries (duplicates count separately).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The first value of `name`.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.position(name).map(|i| &*self.entries[i].1)
    }

    /// The index of the first entry named `name`, for [`Self::value_at`].
    pub fn position(&self, name: &[u8]) -> Option<usize> {
        let name = Name::new(name);
        self.entries.iter().position(|(k, _)| name.matches(k))
    }

    /// The value of entry `index` (in [`Self::iter`] order).
    pub fn value_at(&self, index: usize) -> Option<&[u8]> {
        self.entries.get(index).map(|(_, v)| &**v)
    }

    /// Appends an entry (duplicates allowed).
    pub fn add(&mut self, name: &[u8], value: &[u8]) {
        let mut name = SmallBytes::from(name);
        name.make_ascii_lowercase();
        self.entries.push((name, value.into()));
    }

    /// Sets `name` to one value: the first entry is overwritten in place, later ones removed;
    /// absent names are appended.
    pub fn replace(&mut self, name: &[u8], value: &[u8]) {
        match self.position(name) {
            Some(i) => {
                self.entries[i].1 = value.into();
                self.remove_from(i + 1, Name::new(name));
            }
            None => self.add(name, value),
        }
    }

    /// Removes every entry of `name`.
    pub fn remove(&mut self, name: &[u8]) {
        self.remove_from(0, Name::new(name));
    }

    /// Removes the entries of `name` at or after index `from`, in one pass (most names occur
    /// once or not at all: a scan, and at most one shift of the entries after it).
    fn remove_from(&mut self, from: usize, name: Name<'_>) {
        let mut i = from;
        while let Some((k, _)) = self.entries.get(i) {
            if name.matches(k) {
                self.entries.remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Sum of name and value lengths (what Envoy reports as the map's byte size).
    pub fn byte_size(&self) -> usize {
        self.entries.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    /// The entries as owned pairs.
    pub fn to_pairs(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
    }
}

/// A body (or TCP data) stream as the filter sees it.
///
/// Incoming chunks accumulate in `buffered`, which is what the filter reads and rewrites. When
/// the filter lets data through (returns Continue, or resumes a paused stream) the buffered
/// bytes move to `sent`, which is what the proxy forwards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Body {
    /// Bytes held by the host and visible to the filter.
    pub buffered: Vec<u8>,
    /// Bytes released downstream, in order.
    pub sent: Vec<u8>,
    /// Whether the last chunk has arrived.
    pub end_of_stream: bool,
}

impl Body {
    /// Releases the buffered bytes.
    pub fn release(&mut self) {
        let b = std::mem::take(&mut self.buffered);
        self.sent.extend_from_slice(&b);
    }

    /// Everything seen so far: sent then still-buffered bytes.
    pub fn all(&self) -> Vec<u8> {
        let mut v = self.sent.clone();
        v.extend_from_slice(&self.buffered);
        v
    }
}

/// A local reply the filter sent with `proxy_send_local_response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    /// HTTP status code.
    pub status_code: u32,
    /// Response code details.
    pub details: String,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Extra headers.
    pub headers: HeaderMap,
    /// gRPC status, or `None` for a plain HTTP reply (the guest passed -1).
    pub grpc_status: Option<i32>,
}

/// A stream-control request from the filter, recorded in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamControl {
    /// `proxy_continue_stream` / `proxy_continue_request` / `proxy_continue_response`.
    Continue(crate::StreamType),
    /// `proxy_close_stream`.
    Close(crate::StreamType),
    /// `proxy_clear_route_cache` (0.1.0).
    ClearRouteCache,
}

/// The per-request state of an HTTP stream context.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpStreamState {
    /// Request headers.
    pub request_headers: HeaderMap,
    /// Request body.
    pub request_body: Body,
    /// Request trailers.
    pub request_trailers: HeaderMap,
    /// Response headers.
    pub response_headers: HeaderMap,
    /// Response body.
    pub response_body: Body,
    /// Response trailers.
    pub response_trailers: HeaderMap,
    /// The local reply, if the filter sent one.
    pub local_reply: Option<LocalReply>,
    /// Continue/close requests, in order.
    pub control: Vec<StreamControl>,
    /// Properties the filter set on this stream (`proxy_set_property`), by NUL-joined path.
    pub properties: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// The per-connection state of a TCP stream context.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpStreamState {
    /// Data from the client.
    pub downstream: Body,
    /// Data from the server.
    pub upstream: Body,
    /// Continue/close requests, in order.
    pub control: Vec<StreamControl>,
    /// Properties set on this connection.
    pub properties: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// A plugin (root context) configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginConfig {
    /// Plugin name (property `plugin_name`).
    pub name: String,
    /// Root id: selects the root context in the guest (property `plugin_root_id`).
    pub root_id: String,
    /// Plugin configuration bytes, passed to `proxy_on_configure`.
    pub configuration: Vec<u8>,
}

/// What the whole VM shares: its id, configuration, environment and services.
#[derive(Debug, Clone)]
pub struct VmEnv {
    /// VM id; shared data and queues are partitioned by it.
    pub vm_id: String,
    /// VM configuration bytes, passed to `proxy_on_vm_start`.
    pub vm_configuration: Vec<u8>,
    /// Environment variables visible through WASI `environ_get`.
    pub environment: Vec<(String, String)>,
    /// The host log level: lower messages are dropped, and `proxy_get_log_level` returns it.
    pub log_level: LogLevel,
    /// Embedder services.
    pub services: Services,
    /// Longest time an HTTP call or unary gRPC call may stay unanswered; a filter asking for
    /// more (or for 0, "no timeout") gets this. gRPC streams are long-lived and exempt.
    pub max_callout_timeout: std::time::Duration,
}

impl VmEnv {
    /// Default [`Self::max_callout_timeout`]: 60 s.
    pub const DEFAULT_MAX_CALLOUT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
}

impl Default for VmEnv {
    fn default() -> Self {
        Self {
            vm_id: String::new(),
            vm_configuration: Vec::new(),
            environment: Vec::new(),
            log_level: LogLevel::Info,
            services: Services::default(),
            max_callout_timeout: Self::DEFAULT_MAX_CALLOUT_TIMEOUT,
        }
    }
}

/// The root-context part of a context.
#[derive(Debug, Clone)]
pub(crate) struct RootState {
    pub(crate) plugin: Arc<PluginConfig>,
    pub(crate) tick_period_ms: u32,
    pub(crate) properties: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// What a context is.
#[derive(Debug, Clone)]
pub(crate) enum ContextKind {
    Root(RootState),
    Http(Box<HttpStreamState>),
    Tcp(Box<TcpStreamState>),
}

/// Where a context is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lifecycle {
    Active,
    /// `proxy_on_done` returned false; waiting for `proxy_done`.
    DonePending,
    /// `proxy_done` was called; log and delete run after the current call.
    DoneReady,
}

#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub(crate) root: u32,
    pub(crate) kind: ContextKind,
    pub(crate) life: Lifecycle,
}

/// Data that exists only while one callback runs (callout responses, foreign arguments).
#[derive(Debug, Clone, Default)]
pub(crate) struct CallInputs {
    pub(crate) call_headers: Option<HeaderMap>,
    pub(crate) call_trailers: Option<HeaderMap>,
    pub(crate) call_body: Option<Vec<u8>>,
    pub(crate) grpc_initial: Option<HeaderMap>,
    pub(crate) grpc_trailing: Option<HeaderMap>,
    pub(crate) grpc_message: Option<Vec<u8>>,
    pub(crate) foreign_args: Option<Vec<u8>>,
}

/// What kind of callout a token names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalloutKind {
    /// `proxy_http_call`.
    Http,
    /// `proxy_grpc_call`.
    GrpcCall,
    /// `proxy_grpc_stream`.
    GrpcStream,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Callout {
    pub(crate) root: u32,
    pub(crate) kind: CalloutKind,
    /// Monotonic-clock nanoseconds after which the host fails the callout (`u64::MAX`: never).
    pub(crate) deadline_ns: u64,
}

/// Hashes context ids (small, dense integers) with one multiplication instead of SipHash.
/// Public for backends that keep their own maps of context ids; not for untrusted keys.
#[doc(hidden)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Map from context id to context.
pub(crate) type ContextMap = HashMap<u32, Context, std::hash::BuildHasherDefault<IdHasher>>;

static NEXT_VM_UID: AtomicU64 = AtomicU64::new(1);

/// The ABI state of one instance. Backends store it and hand out `&mut` access; only this
/// crate looks inside.
#[derive(Debug)]
pub struct HostState {
    pub(crate) abi: AbiVersion,
    pub(crate) env: Arc<VmEnv>,
    pub(crate) exports: Exports,
    pub(crate) contexts: ContextMap,
    pub(crate) next_context: u32,
    /// The context the host is calling into (0 = the VM itself, during start-up).
    pub(crate) current: u32,
    /// The context host calls act on (`proxy_set_effective_context`).
    pub(crate) effective: u32,
    /// Stream states of deleted HTTP contexts, reset, for the next streams (no allocation per
    /// stream in the steady state).
    #[allow(clippy::vec_box, reason = "the boxes are what is reused: `ContextKind::Http` holds one")]
    pub(crate) spare_streams: Vec<Box<HttpStreamState>>,
    /// Contexts that called `proxy_done` during the running callback, in order: log and
    /// delete run for them once it returns.
    pub(crate) done_ready: Vec<u32>,
    /// A local reply was sent during this call: the callback's result is forced to Pause.
    pub(crate) stop_iteration: bool,
    /// The root context being configured (plugin configuration is readable).
    pub(crate) configuring: Option<u32>,
    pub(crate) inputs: CallInputs,
    /// `proxy_get_status` answer: code and message.
    pub(crate) status: (u32, Vec<u8>),
    pub(crate) callouts: HashMap<u32, Callout>,
    pub(crate) next_token: u32,
    /// Bit i set when `HOST_FUNCS[i]` was called.
    pub(crate) coverage: u128,
    /// Unique id of this VM instance in the process (queue ownership).
    pub(crate) uid: u64,
}

impl HostState {
    /// Fresh state for a VM speaking `abi` in `env`.
    pub fn new(abi: AbiVersion, env: Arc<VmEnv>) -> Self {
        Self {
            abi,
            env,
            exports: Exports::default(),
            contexts: ContextMap::default(),
            next_context: 1,
            current: 0,
            effective: 0,
            spare_streams: Vec::new(),
            done_ready: Vec::new(),
            stop_iteration: false,
            configuring: None,
            inputs: CallInputs::default(),
            status: (0, Vec::new()),
            callouts: HashMap::new(),
            next_token: 1,
            coverage: 0,
            uid: NEXT_VM_UID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// A state for backend unit tests: ABI 0.2.1, default environment.
    #[doc(hidden)]
    pub fn for_tests() -> Self {
        Self::new(AbiVersion::V0_2_1, Arc::new(VmEnv::default()))
    }

    /// The ABI version the module declared.
    pub fn abi(&self) -> AbiVersion {
        self.abi
    }

    /// The VM environment.
    pub fn env(&self) -> &Arc<VmEnv> {
        &self.env
    }

    /// Unique id of this VM instance within the process.
    pub fn uid(&self) -> u64 {
        self.uid
    }

    /// Names of the host functions this instance has called so far.
    pub fn coverage(&self) -> impl Iterator<Item = &'static str> + '_ {
        crate::HOST_FUNCS.iter().enumerate().filter(|(i, _)| self.coverage & (1u128 << i) != 0).map(|(_, f)| f.name)
    }

    /// Most spare stream states kept.
    const SPARE_STREAMS: usize = 16;

    /// A fresh HTTP stream state: a spare one when there is one.
    pub(crate) fn new_http_stream(&mut self) -> Box<HttpStreamState> {
        self.spare_streams.pop().unwrap_or_default()
    }

    /// Removes a context; an HTTP stream's state is reset and kept for the next stream.
    pub(crate) fn remove_context(&mut self, id: u32) {
        let Some(Context { kind: ContextKind::Http(mut stream), .. }) = self.contexts.remove(&id) else { return };
        if self.spare_streams.len() < Self::SPARE_STREAMS {
            *stream = HttpStreamState::default();
            self.spare_streams.push(stream);
        }
    }

    pub(crate) fn effective_context(&mut self) -> Option<&mut Context> {
        self.contexts.get_mut(&self.effective)
    }

    pub(crate) fn http(&mut self) -> Option<&mut HttpStreamState> {
        match &mut self.effective_context()?.kind {
            ContextKind::Http(h) => Some(h),
            _ => None,
        }
    }

    pub(crate) fn tcp(&mut self) -> Option<&mut TcpStreamState> {
        match &mut self.effective_context()?.kind {
            ContextKind::Tcp(t) => Some(t),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HeaderMap;

    fn names_values(m: &HeaderMap) -> Vec<(String, String)> {
        m.iter().map(|(k, v)| (String::from_utf8_lossy(k).into(), String::from_utf8_lossy(v).into())).collect()
    }

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    #[test]
    fn edits_keep_order_and_handle_duplicates() {
        let base = [("a", "1"), ("X-D", "2"), ("b", "3"), ("x-d", "4"), ("c", "5"), ("x-d", "6")];
        let mut m = HeaderMap::from_pairs(base);
        m.remove(b"X-d");
        assert_eq!(names_values(&m), owned(&[("a", "1"), ("b", "3"), ("c", "5")]));
        m.remove(b"missing");
        m.remove(b"c");
        assert_eq!(names_values(&m), owned(&[("a", "1"), ("b", "3")]));

        let mut m = HeaderMap::from_pairs(base);
        m.replace(b"x-d", b"new");
        assert_eq!(names_values(&m), owned(&[("a", "1"), ("x-d", "new"), ("b", "3"), ("c", "5")]));
        m.replace(b"C", b"six");
        m.replace(b"Z", b"7");
        assert_eq!(names_values(&m), owned(&[("a", "1"), ("x-d", "new"), ("b", "3"), ("c", "six"), ("z", "7")]));
        assert_eq!(m.get(b"Z"), Some(&b"7"[..]));
        assert_eq!(m.position(b"b"), Some(2));
        assert_eq!(m.get(b"bb"), None);
    }

    #[test]
    fn long_names_and_values_live_on_the_heap() {
        let long = "x".repeat(100);
        let mut m = HeaderMap::from_pairs([(long.as_str(), long.as_str())]);
        assert_eq!(m.get(long.as_bytes()), Some(long.as_bytes()));
        m.replace(long.as_bytes(), b"short");
        assert_eq!(m.get(long.as_bytes()), Some(&b"short"[..]));
        let c = m.clone();
        assert_eq!(c, m);
    }
}
