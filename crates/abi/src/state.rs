//! Host state carried in every instance's store: contexts, stream data, in-flight callouts.
//!
//! The state is engine-neutral and travels in the engine's store (wasmtime and wasmi `Store`
//! data, wasmer `FunctionEnv`, a V8 isolate slot), never in a thread-local.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::exports::Exports;
use crate::quota::{CallBudget, Quota, QuotaCounts, Quotas};
use crate::services::Services;
use crate::{AbiVersion, Error, LogLevel, Status, TrapKind};

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
    #[inline(always)]
    fn matches(self, k: &[u8]) -> bool {
        k.len() == self.name.len()
            && if self.lower {
                k.first() == self.name.first() && k == self.name
            } else {
                k.eq_ignore_ascii_case(self.name)
            }
    }
}

/// Where one entry lies in a [`HeaderMap`]'s buffer.
#[derive(Clone, Copy)]
struct Span {
    /// Position in entry order.
    index: usize,
    /// Offset of the name; the value follows its NUL terminator.
    at: usize,
    name_len: usize,
    value_len: usize,
}

impl Span {
    fn name(self) -> std::ops::Range<usize> {
        self.at..self.at + self.name_len
    }

    fn value(self) -> std::ops::Range<usize> {
        let start = self.at + self.name_len + 1;
        start..start + self.value_len
    }

    /// The name, the value and both terminators.
    fn whole(self) -> std::ops::Range<usize> {
        self.at..self.at + self.name_len + self.value_len + 2
    }
}

/// The lengths of one entry, from its slot in the length table.
#[inline]
fn entry_lens(&[a, b, c, d, e, f, g, h]: &[u8; 8]) -> (usize, usize) {
    (u32::from_le_bytes([a, b, c, d]) as usize, u32::from_le_bytes([e, f, g, h]) as usize)
}

/// Reads a little-endian `u32` at `at` (in bounds by the buffer's invariant).
#[inline]
fn read_u32(buf: &[u8], at: usize) -> usize {
    let mut word = [0; 4];
    word.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(word) as usize
}

/// Writes a length that [`HeaderMap::fits`] checked.
#[inline]
fn write_u32(buf: &mut [u8], at: usize, value: usize) {
    buf[at..at + 4].copy_from_slice(&(value as u32).to_le_bytes());
}

/// Where entry `index`'s slot (its two lengths) lies in the length table.
#[inline]
const fn slot_at(index: usize) -> usize {
    4 + 8 * index
}

/// Where the entries' bytes start in a buffer of `count` entries: after the count and the
/// length table.
#[inline]
const fn data_at(count: usize) -> usize {
    slot_at(count)
}

/// An ordered multi-map of header names to values, as proxies keep them.
///
/// Names are stored lower-cased (HTTP/2 style, as Envoy does) and compared case-insensitively.
/// Values are raw bytes: the pairs format allows any byte in a value.
///
/// The map is kept in the ABI's serialized form (see [`pairs`](crate::pairs)): a guest asking
/// for the whole map gets one copy of the buffer, and the entries of a map share one
/// allocation. A name or value longer than `u32::MAX` bytes cannot be serialized, and is not
/// stored.
#[derive(Default, PartialEq, Eq)]
pub struct HeaderMap {
    /// Empty for the empty map, else `u32 N`, N × `(u32 name_len, u32 value_len)`, then
    /// N × `name NUL value NUL`, with every name lower-cased.
    buf: Vec<u8>,
}

/// A clone keeps the headroom of `from_pairs` too (a derived clone would allocate exactly the
/// entries).
impl Clone for HeaderMap {
    fn clone(&self) -> Self {
        let mut buf = Vec::with_capacity(self.buf.len() + Self::HEADROOM);
        buf.extend_from_slice(&self.buf);
        Self { buf }
    }

    /// Reuses this map's buffer when it is large enough (the proxy copies a filter's headers
    /// back into its own map after every callback).
    fn clone_from(&mut self, source: &Self) {
        self.buf.clear();
        self.buf.extend_from_slice(&source.buf);
    }
}

impl std::fmt::Debug for HeaderMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|(k, v)| (String::from_utf8_lossy(k), String::from_utf8_lossy(v))))
            .finish()
    }
}

impl HeaderMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes [`Self::from_pairs`] and clones leave for entries added later: filters commonly
    /// add a few headers, and growing the buffer on the first one would copy the whole map.
    const HEADROOM: usize = 128;

    /// The serialized form of the empty map.
    const EMPTY: [u8; 4] = [0; 4];

    /// Builds a map from pairs, lower-casing names.
    pub fn from_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        let pairs = pairs.into_iter();
        let (low, high) = pairs.size_hint();
        if high != Some(low) {
            // Counted first (the pairs, not their bytes): each pair past the table laid out
            // would move every byte after the table.
            return Self::from_pairs(pairs.collect::<Vec<_>>());
        }
        let hint = low.min(crate::pairs::MAX_PAIRS_COUNT);
        // A length table for the pairs announced, then their bytes appended in order; pairs
        // beyond the announced number are added one by one.
        let mut m = Self { buf: Vec::with_capacity(data_at(hint) + 24 * hint + Self::HEADROOM) };
        m.buf.resize(data_at(hint), 0);
        let mut count = 0;
        for (k, v) in pairs {
            let (k, v) = (k.as_ref(), v.as_ref());
            if count == hint {
                m.add(k, v);
                continue;
            }
            if !Self::fits(k, v) {
                continue;
            }
            m.write_slot(count, k.len(), v.len());
            m.push_bytes(k, v);
            count += 1;
            write_u32(&mut m.buf, 0, count);
        }
        if count < hint {
            // Fewer pairs than announced: drop the unused table slots.
            m.buf.drain(data_at(count)..data_at(hint));
        }
        if m.count() == 0 {
            m.buf.clear();
        }
        m
    }

    /// Whether an entry can be serialized (each length fits the format's `u32`).
    fn fits(name: &[u8], value: &[u8]) -> bool {
        u32::try_from(name.len()).is_ok() && u32::try_from(value.len()).is_ok()
    }

    /// Appends `name NUL value NUL`, lower-casing the name.
    fn push_bytes(&mut self, name: &[u8], value: &[u8]) {
        let at = self.buf.len();
        self.buf.extend_from_slice(name);
        self.buf[at..].make_ascii_lowercase();
        self.buf.push(0);
        self.buf.extend_from_slice(value);
        self.buf.push(0);
    }

    /// Writes the lengths of entry `index` into its slot of the length table.
    fn write_slot(&mut self, index: usize, name_len: usize, value_len: usize) {
        write_u32(&mut self.buf, slot_at(index), name_len);
        write_u32(&mut self.buf, slot_at(index) + 4, value_len);
    }

    #[inline]
    fn count(&self) -> usize {
        if self.buf.is_empty() { 0 } else { read_u32(&self.buf, 0) }
    }

    /// The length table: one slot per entry.
    #[inline]
    fn table(&self) -> &[[u8; 8]] {
        self.buf.get(4..data_at(self.count())).map_or(&[], |t| t.as_chunks().0)
    }

    /// The entries in order.
    fn spans(&self) -> impl Iterator<Item = Span> + Clone + '_ {
        let table = self.table();
        let mut at = data_at(table.len());
        table.iter().enumerate().map(move |(index, slot)| {
            let (name_len, value_len) = entry_lens(slot);
            let span = Span { index, at, name_len, value_len };
            at += name_len + value_len + 2;
            span
        })
    }

    /// The map in the pairs format (`N = 0` for the empty map).
    pub fn encoded(&self) -> &[u8] {
        if self.buf.is_empty() { &Self::EMPTY } else { &self.buf }
    }

    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        self.spans().map(|s| (&self.buf[s.name()], &self.buf[s.value()]))
    }

    /// Number of entries (duplicates count separately).
    pub fn len(&self) -> usize {
        self.count()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The first value of `name`.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.find(Name::new(name)).map(|s| &self.buf[s.value()])
    }

    fn find(&self, name: Name<'_>) -> Option<Span> {
        self.find_from(0, data_at(self.count()), name)
    }

    /// The first entry named `name` from entry `index` on, which lies at `at`.
    #[inline(always)]
    fn find_from(&self, mut index: usize, mut at: usize, name: Name<'_>) -> Option<Span> {
        let table = self.table();
        while let Some(slot) = table.get(index) {
            let (name_len, value_len) = entry_lens(slot);
            if name_len == name.name.len() && self.buf.get(at..at + name_len).is_some_and(|k| name.matches(k)) {
                return Some(Span { index, at, name_len, value_len });
            }
            index += 1;
            at += name_len + value_len + 2;
        }
        None
    }

    /// The index of the first entry named `name`, for [`Self::value_at`].
    pub fn position(&self, name: &[u8]) -> Option<usize> {
        self.locate(name).map(|(index, _)| index)
    }

    /// The index and value length of the first entry named `name`.
    #[inline]
    pub(crate) fn locate(&self, name: &[u8]) -> Option<(usize, usize)> {
        self.find(Name::new(name)).map(|s| (s.index, s.value_len))
    }

    /// The value of entry `index` (in [`Self::iter`] order).
    #[inline]
    pub fn value_at(&self, index: usize) -> Option<&[u8]> {
        let table = self.table();
        let (name_len, value_len) = entry_lens(table.get(index)?);
        let skipped: usize = table[..index].iter().map(entry_lens).map(|(n, v)| n + v + 2).sum();
        let at = data_at(table.len()) + skipped + name_len + 1;
        self.buf.get(at..at + value_len)
    }

    /// Appends an entry (duplicates allowed).
    pub fn add(&mut self, name: &[u8], value: &[u8]) {
        if !Self::fits(name, value) {
            return;
        }
        let count = self.count();
        if self.buf.is_empty() {
            self.buf.reserve(data_at(1) + name.len() + value.len() + 2 + Self::HEADROOM);
            self.buf.extend_from_slice(&Self::EMPTY);
        }
        // A new slot at the end of the length table: the bytes after it move up.
        let table_end = data_at(count);
        let end = self.buf.len();
        self.buf.reserve(8 + name.len() + value.len() + 2);
        self.buf.resize(end + 8, 0);
        self.buf.copy_within(table_end..end, table_end + 8);
        self.write_slot(count, name.len(), value.len());
        write_u32(&mut self.buf, 0, count + 1);
        self.push_bytes(name, value);
    }

    /// Sets `name` to one value as Envoy's `proxy_replace_header_map_value` does (its header
    /// map's `setCopy`: every entry of the name removed, then one added): the entry ends up last.
    /// A pseudo-header (`:path`, ...) is overwritten where it is instead ([`Self::replace`]): in
    /// Envoy pseudo-headers stay ahead of the regular ones.
    pub fn set(&mut self, name: &[u8], value: &[u8]) {
        if !Self::fits(name, value) {
            return;
        }
        if name.starts_with(b":") {
            return self.replace(name, value);
        }
        self.remove(name);
        self.add(name, value);
    }

    /// Sets `name` to one value: the first entry is overwritten in place, later ones removed;
    /// absent names are appended.
    pub fn replace(&mut self, name: &[u8], value: &[u8]) {
        if !Self::fits(name, value) {
            return;
        }
        let key = Name::new(name);
        let Some(span) = self.find(key) else { return self.add(name, value) };
        let old = span.value();
        if old.len() != value.len() {
            // Move what follows the value to where the new value ends.
            let end = self.buf.len();
            let new_end = end - old.len() + value.len();
            if value.len() > old.len() {
                self.buf.resize(new_end, 0);
            }
            self.buf.copy_within(old.end..end, old.start + value.len());
            self.buf.truncate(new_end);
            self.write_slot(span.index, span.name_len, value.len());
        }
        self.buf[old.start..old.start + value.len()].copy_from_slice(value);
        self.remove_from(span.index + 1, span.at + span.name_len + value.len() + 2, key);
    }

    /// Removes every entry of `name`.
    pub fn remove(&mut self, name: &[u8]) {
        self.remove_from(0, data_at(self.count()), Name::new(name));
    }

    /// Removes the entries of `name` from entry `index` (which lies at `at`) on, in one pass
    /// (most names occur once or not at all).
    fn remove_from(&mut self, mut index: usize, mut at: usize, name: Name<'_>) {
        while let Some(span) = self.find_from(index, at, name) {
            // Cut the entry's table slot and its bytes: what lay between them moves down by the
            // slot's 8 bytes, what followed the bytes by both.
            let slot = slot_at(span.index);
            let bytes = span.whole();
            let end = self.buf.len();
            self.buf.copy_within(slot + 8..bytes.start, slot);
            self.buf.copy_within(bytes.end..end, bytes.start - 8);
            self.buf.truncate(end - 8 - bytes.len());
            let count = self.count() - 1;
            if count == 0 {
                self.buf.clear();
                return;
            }
            write_u32(&mut self.buf, 0, count);
            (index, at) = (span.index, span.at - 8);
        }
    }

    /// Sum of name and value lengths (what Envoy reports as the map's byte size).
    pub fn byte_size(&self) -> usize {
        let count = self.count();
        if count == 0 { 0 } else { self.buf.len() - 4 - 10 * count }
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

/// The root state of context `root`, if it is a live root context.
pub(crate) fn root_state(contexts: &ContextMap, root: u32) -> Option<&RootState> {
    match &contexts.get(&root)?.kind {
        ContextKind::Root(r) => Some(r),
        _ => None,
    }
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

#[derive(Debug, Clone)]
pub(crate) struct Callout {
    pub(crate) root: u32,
    pub(crate) kind: CalloutKind,
    /// Monotonic-clock nanoseconds after which the host fails the callout (`u64::MAX`: never).
    pub(crate) deadline_ns: u64,
    /// Bytes the callout holds in the host: its request (headers, body, message) and the
    /// gRPC stream messages not yet taken by the embedder.
    pub(crate) held: usize,
    /// Sizes of the gRPC stream messages sent and not yet taken by the embedder, oldest first.
    pub(crate) pending: std::collections::VecDeque<usize>,
}

/// Host functions a guest may call while the host runs guest code for its own purposes, as
/// proxy-wasm-cpp-host restricts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Restriction {
    /// Any host function.
    None,
    /// Inside the guest allocator, called by a host function: logging, `fd_write`,
    /// `clock_time_get` and `poll_oneoff` only ("malloc may not call host functions").
    Allocator,
    /// Inside the start-up exports (`_initialize`, `main`, `_start`): logging and WASI only.
    StartUp,
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
    /// The engine running the instance (named in traps raised by host functions).
    pub(crate) engine: &'static str,
    /// Host-side quotas.
    pub(crate) quotas: Quotas,
    /// What the running top-level callback has used.
    pub(crate) budget: CallBudget,
    /// Quota hits over the life of the instance.
    pub(crate) quota_counts: QuotaCounts,
    /// Which host functions the guest may call right now.
    pub(crate) restriction: Restriction,
    /// Bytes held by the callouts in flight ([`Callout::held`]).
    pub(crate) callout_bytes: usize,
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
            engine: "wasmux",
            quotas: Quotas::default(),
            budget: CallBudget::default(),
            quota_counts: QuotaCounts::default(),
            restriction: Restriction::None,
            callout_bytes: 0,
        }
    }

    /// Ends a callout: it no longer counts against the callout quotas.
    pub(crate) fn remove_callout(&mut self, token: u32) -> Option<Callout> {
        let c = self.callouts.remove(&token)?;
        self.callout_bytes = self.callout_bytes.saturating_sub(c.held);
        Some(c)
    }

    /// The embedder took the `n` oldest messages sent on gRPC stream `token`.
    pub(crate) fn release_sends(&mut self, token: u32, n: usize) {
        let Some(c) = self.callouts.get_mut(&token) else { return };
        let n = n.min(c.pending.len());
        let freed: usize = c.pending.drain(..n).sum();
        c.held = c.held.saturating_sub(freed);
        self.callout_bytes = self.callout_bytes.saturating_sub(freed);
    }

    /// Counts a quota hit (a refusal or a truncation), and says so in the host's log once per
    /// quota per callback.
    #[cold]
    pub(crate) fn note_quota(&mut self, quota: Quota) {
        self.quota_counts.bump(quota);
        let bit = 1u32 << (quota as u32);
        if self.budget.reported & bit == 0 {
            self.budget.reported |= bit;
            tracing::warn!(
                target: "wasmux::quota", vm_id = %self.env.vm_id, context = self.effective, quota = %quota,
                limit = self.quotas.limit(quota), "filter hit a host quota"
            );
        }
    }

    /// A host function refuses a request because of `quota`: the status for the guest, or a
    /// [`TrapKind::Quota`] trap once the callback has been refused more than
    /// [`Quotas::max_violations_per_callback`] times.
    ///
    /// # Errors
    /// The trap.
    #[cold]
    pub(crate) fn refuse(&mut self, quota: Quota) -> Result<Status, Error> {
        self.note_quota(quota);
        self.budget.violations = self.budget.violations.saturating_add(1);
        if self.budget.violations > self.quotas.max_violations_per_callback {
            self.quota_counts.bump(Quota::Violations);
            return Err(Error::new_trap(
                self.engine,
                TrapKind::Quota,
                format!(
                    "more than {} host requests refused in one callback (last: quota `{quota}`, limit {})",
                    self.quotas.max_violations_per_callback,
                    self.quotas.limit(quota)
                ),
            ));
        }
        Ok(quota.status())
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
    fn clone_from_copies_into_the_buffer_it_has() {
        let mut into = HeaderMap::from_pairs([("host", "a"), ("accept", "*/*"), ("user-agent", "x")]);
        let at = into.buf.as_ptr();
        let mut source = into.clone();
        source.add(b"x-added", b"1");
        source.remove(b"accept");
        into.clone_from(&source);
        assert_eq!(into, source);
        assert_eq!(names_values(&into), owned(&[("host", "a"), ("user-agent", "x"), ("x-added", "1")]));
        assert_eq!(into.buf.as_ptr(), at, "the buffer was reallocated");
        into.clone_from(&HeaderMap::default());
        assert!(into.is_empty());
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

        // Envoy's replace: the name's entries go, one comes back last; pseudo-headers stay put.
        let mut m = HeaderMap::from_pairs([(":path", "/"), (":method", "GET")].into_iter().chain(base));
        m.set(b"X-d", b"new");
        m.set(b":path", b"/b");
        m.set(b"z", b"7");
        assert_eq!(
            names_values(&m),
            owned(&[
                (":path", "/b"),
                (":method", "GET"),
                ("a", "1"),
                ("b", "3"),
                ("c", "5"),
                ("x-d", "new"),
                ("z", "7")
            ])
        );
    }

    /// The buffer is always the pairs encoding of the entries, through every kind of edit.
    #[test]
    fn the_map_stays_its_own_encoding() {
        let check = |m: &HeaderMap| {
            let pairs = m.to_pairs();
            assert_eq!(m.encoded(), &crate::pairs::encode(&pairs)[..], "{m:?}");
            assert_eq!(m.len(), pairs.len());
            assert_eq!(m.byte_size(), pairs.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>());
            for (i, (k, v)) in pairs.iter().enumerate() {
                assert_eq!(m.value_at(i), Some(&v[..]));
                let first = pairs.iter().position(|(n, _)| n == k).unwrap();
                assert_eq!(m.position(k), Some(first));
            }
            assert_eq!(m.value_at(pairs.len()), None);
        };
        let mut m = HeaderMap::from_pairs([("A", "1"), ("b", ""), ("a", "333")]);
        check(&m);
        assert_eq!(names_values(&m), owned(&[("a", "1"), ("b", ""), ("a", "333")]));
        m.replace(b"a", b"longer value");
        check(&m);
        assert_eq!(names_values(&m), owned(&[("a", "longer value"), ("b", "")]));
        m.replace(b"a", b"x");
        m.replace(b"B", b"yy");
        check(&m);
        assert_eq!(names_values(&m), owned(&[("a", "x"), ("b", "yy")]));
        m.add(b"C", b"3");
        m.add(b"", b"");
        check(&m);
        m.remove(b"a");
        m.remove(b"");
        check(&m);
        assert_eq!(names_values(&m), owned(&[("b", "yy"), ("c", "3")]));
        m.remove(b"b");
        m.remove(b"c");
        check(&m);
        assert!(m.is_empty());
        assert_eq!(m, HeaderMap::new());
        assert_eq!(m.encoded(), &0u32.to_le_bytes());
        m.add(b"z", b"26");
        check(&m);
        assert_eq!(m, HeaderMap::from_pairs([("z", "26")]));
    }

    /// An iterator that announces more or fewer pairs than it yields builds the same map.
    #[test]
    fn from_pairs_does_not_trust_size_hints() {
        struct Lying(Vec<(&'static str, &'static str)>, usize);
        impl Iterator for Lying {
            type Item = (&'static str, &'static str);
            fn next(&mut self) -> Option<Self::Item> {
                (!self.0.is_empty()).then(|| self.0.remove(0))
            }
            fn size_hint(&self) -> (usize, Option<usize>) {
                (self.1, Some(self.1))
            }
        }
        let pairs = vec![("a", "1"), ("b", "2"), ("c", "3")];
        let exact = HeaderMap::from_pairs(pairs.clone());
        for hint in [0, 1, 3, 5, 100] {
            let m = HeaderMap::from_pairs(Lying(pairs.clone(), hint));
            assert_eq!(m, exact, "hint {hint}");
            assert_eq!(m.encoded(), &crate::pairs::encode(&pairs)[..]);
        }
        assert_eq!(HeaderMap::from_pairs(Lying(Vec::new(), 4)), HeaderMap::new());
    }

    /// One edit of the model test.
    #[derive(Debug, Clone)]
    enum Edit {
        Add(Vec<u8>, Vec<u8>),
        Replace(Vec<u8>, Vec<u8>),
        Remove(Vec<u8>),
    }

    fn edit() -> impl proptest::strategy::Strategy<Value = Edit> {
        use proptest::prelude::*;
        // Few names (so edits hit duplicates), in either case; values of any bytes and length.
        let name = prop::sample::select(vec!["a", "B", "x-d", "X-D", "", "long-header-name"])
            .prop_map(|n| n.as_bytes().to_vec());
        let value = prop::collection::vec(any::<u8>(), 0..24);
        prop_oneof![
            (name.clone(), value.clone()).prop_map(|(n, v)| Edit::Add(n, v)),
            (name.clone(), value).prop_map(|(n, v)| Edit::Replace(n, v)),
            name.prop_map(Edit::Remove),
        ]
    }

    proptest::proptest! {
        /// Any sequence of edits leaves the map equal to a plain list of lower-cased pairs edited
        /// the same way, and its buffer equal to that list's encoding.
        #[test]
        fn edits_match_a_list_model(
            start in proptest::collection::vec((0u8..4, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8)), 0..6),
            edits in proptest::collection::vec(edit(), 0..40),
        ) {
            let start: Vec<(Vec<u8>, Vec<u8>)> = start.into_iter().map(|(n, v)| (vec![b'a' + n], v)).collect();
            let mut m = HeaderMap::from_pairs(start.iter().map(|(k, v)| (k, v)));
            let mut model = start;
            for e in edits {
                match e {
                    Edit::Add(n, v) => {
                        m.add(&n, &v);
                        model.push((n.to_ascii_lowercase(), v));
                    }
                    Edit::Replace(n, v) => {
                        m.replace(&n, &v);
                        let n = n.to_ascii_lowercase();
                        match model.iter().position(|(k, _)| *k == n) {
                            Some(i) => {
                                model[i].1 = v;
                                let mut j = i + 1;
                                while j < model.len() {
                                    if model[j].0 == n { model.remove(j); } else { j += 1; }
                                }
                            }
                            None => model.push((n, v)),
                        }
                    }
                    Edit::Remove(n) => {
                        m.remove(&n);
                        let n = n.to_ascii_lowercase();
                        model.retain(|(k, _)| *k != n);
                    }
                }
                proptest::prop_assert_eq!(&m.to_pairs(), &model);
                proptest::prop_assert_eq!(m.encoded(), &crate::pairs::encode(&model)[..]);
                proptest::prop_assert_eq!(m.is_empty(), model.is_empty());
            }
            for (k, _) in &model {
                let first = model.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_slice());
                proptest::prop_assert_eq!(m.get(&k.to_ascii_uppercase()), first);
            }
        }
    }

    #[test]
    fn long_names_and_values() {
        let long = "x".repeat(100);
        let mut m = HeaderMap::from_pairs([(long.as_str(), long.as_str())]);
        assert_eq!(m.get(long.as_bytes()), Some(long.as_bytes()));
        m.replace(long.as_bytes(), b"short");
        assert_eq!(m.get(long.as_bytes()), Some(&b"short"[..]));
        let c = m.clone();
        assert_eq!(c, m);
    }
}
