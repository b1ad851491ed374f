//! Scenarios: a filter's inputs as JSON, and the observable outcome as stable JSON.
//!
//! This is the format behind `wasmux run` and the conformance suite. A scenario names the
//! plugin's configuration and a list of events (streams created, headers and bodies delivered,
//! callout responses, ticks); running it records what the filter did: the action of every
//! callback, final headers, bodies and trailers, local replies, logs, dispatched callouts,
//! metrics, shared data and the tick period. Records refer to streams by the names the
//! scenario gave them and to callouts by dispatch order, so the same scenario gives the same
//! record on every engine.
//!
//! Bytes (configurations, bodies, header values) are JSON strings when they are UTF-8 text,
//! or `{"hex": "..."}` otherwise, in both directions. In records, values over
//! [`RECORD_BYTES_INLINE`] (1 MiB) appear as `{"len": n, "sha256": "..."}`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use wasmux_abi::services::{
    CalloutEvent, Callouts, GrpcAction, GrpcCallout, HttpCallout, LogLine, LogSink, ManualClock, MemoryLog,
    RecordingCallouts, StaticProperties,
};
use wasmux_abi::{Error, HeaderMap, HttpCallResponse, LogLevel, PeerType, Services, Status, StreamControl};

use crate::{CompiledPlugin, FailurePolicy, Plugin, PluginOptions, RootOptions, Runtime};

/// Bytes in a scenario: text, or hex for binary data. Numbers and booleans read as their text
/// (`["content-length", 11]` in YAML is the header value `11`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Bytes {
    /// UTF-8 text.
    Text(String),
    /// Arbitrary bytes as hex.
    Hex {
        /// Lower- or upper-case hex digits.
        hex: String,
    },
    /// Nothing (`null`, or the field left out).
    #[default]
    Empty,
}

impl Bytes {
    /// The bytes; invalid hex is an error.
    ///
    /// # Errors
    /// Invalid hex digits.
    pub fn to_vec(&self) -> Result<Vec<u8>, String> {
        match self {
            Self::Text(s) => Ok(s.as_bytes().to_vec()),
            Self::Empty => Ok(Vec::new()),
            Self::Hex { hex } => {
                // Digits are checked byte by byte: a multi-byte character is an invalid digit,
                // never a slice through its middle.
                let digit = |b: u8| char::from(b).to_digit(16).ok_or_else(|| format!("invalid hex `{hex}`"));
                let (pairs, rest) = hex.as_bytes().as_chunks::<2>();
                if !rest.is_empty() {
                    return Err(format!("odd-length hex string `{hex}`"));
                }
                pairs.iter().map(|&[hi, lo]| Ok((digit(hi)? * 16 + digit(lo)?) as u8)).collect()
            }
        }
    }

    /// Text when valid UTF-8, hex otherwise.
    pub fn from_slice(b: &[u8]) -> Self {
        match std::str::from_utf8(b) {
            Ok(s) => Self::Text(s.to_string()),
            Err(_) => Self::Hex { hex: hex(b) },
        }
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("text, {\"hex\": \"...\"} or null")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Bytes, E> {
                Ok(Bytes::Text(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Bytes, E> {
                Ok(Bytes::Text(v))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Bytes, E> {
                Ok(Bytes::Text(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Bytes, E> {
                Ok(Bytes::Text(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Bytes, E> {
                Ok(Bytes::Text(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Bytes, E> {
                Ok(Bytes::Text(v.to_string()))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Bytes, E> {
                Ok(Bytes::Empty)
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Bytes, E> {
                Ok(Bytes::Empty)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Bytes, A::Error> {
                let mut hex = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "hex" || hex.is_some() {
                        return Err(serde::de::Error::custom(format!(
                            "bytes are text or {{\"hex\": \"...\"}}; unexpected key `{key}`"
                        )));
                    }
                    hex = Some(map.next_value::<String>()?);
                }
                hex.map(|hex| Bytes::Hex { hex }).ok_or_else(|| serde::de::Error::custom("missing `hex`"))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// Values larger than this appear in records by length and SHA-256 only.
pub const RECORD_BYTES_INLINE: usize = 1 << 20;

/// Lower-case hex digits of `b`.
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The SHA-256 of `b` as records give it (lower-case hex).
pub(crate) fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex(&sha2::Sha256::digest(b))
}

fn bytes_json(b: &[u8]) -> Value {
    if b.len() > RECORD_BYTES_INLINE {
        return json!({"len": b.len(), "sha256": sha256_hex(b)});
    }
    serde_json::to_value(Bytes::from_slice(b)).unwrap_or(Value::Null)
}

/// Header pairs: `[["name", "value"], ...]`.
pub type Pairs = Vec<(Bytes, Bytes)>;

fn to_map(p: &Pairs) -> Result<HeaderMap, String> {
    let mut m = HeaderMap::new();
    for (k, v) in p {
        m.add(&k.to_vec()?, &v.to_vec()?);
    }
    Ok(m)
}

fn map_json(m: &HeaderMap) -> Value {
    Value::Array(m.iter().map(|(k, v)| json!([bytes_json(k), bytes_json(v)])).collect())
}

/// Resource limits in a scenario; fields left out keep [`Limits`](wasmux_abi::Limits)'
/// defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioLimits {
    /// Maximum linear memory in bytes.
    pub max_memory_bytes: Option<u64>,
    /// Maximum table elements, over all tables.
    pub max_table_elements: Option<u64>,
    /// CPU deadline per callback in milliseconds (0 disables it).
    pub deadline_ms: Option<u64>,
    /// Cap on HTTP and unary gRPC callout timeouts in milliseconds (default 60 000).
    pub max_callout_timeout_ms: Option<u64>,
    /// Largest module accepted, in bytes.
    pub max_module_bytes: Option<usize>,
    /// Compile deadline in milliseconds (0 disables it).
    pub compile_deadline_ms: Option<u64>,
    /// Host-side quotas ([`Quotas`](wasmux_abi::Quotas), by field name); quotas left out keep
    /// their defaults.
    pub quotas: Option<wasmux_abi::Quotas>,
}

impl ScenarioLimits {
    /// The limits this scenario asks for.
    pub fn to_limits(&self) -> wasmux_abi::Limits {
        let mut limits = wasmux_abi::Limits::default();
        if let Some(m) = self.max_memory_bytes {
            limits.max_memory_bytes = m;
        }
        if let Some(t) = self.max_table_elements {
            limits.max_table_elements = t;
        }
        if let Some(d) = self.deadline_ms {
            limits.callback_deadline = (d > 0).then(|| Duration::from_millis(d));
        }
        if let Some(m) = self.max_module_bytes {
            limits.max_module_bytes = m;
        }
        if let Some(d) = self.compile_deadline_ms {
            limits.compile_deadline = (d > 0).then(|| Duration::from_millis(d));
        }
        if let Some(q) = &self.quotas {
            limits.quotas = q.clone();
        }
        limits
    }
}

/// A whole scenario.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    /// Plugin name (default `plugin`).
    pub plugin_name: Option<String>,
    /// Root id (default empty).
    pub root_id: String,
    /// VM id (default empty).
    pub vm_id: String,
    /// VM configuration.
    pub vm_config: Bytes,
    /// Plugin configuration.
    pub plugin_config: Bytes,
    /// WASI environment variables.
    pub environment: BTreeMap<String, String>,
    /// Host log level (default `trace`: record everything).
    pub log_level: Option<String>,
    /// The fixed wall clock in nanoseconds (default 1 700 000 000 s after the epoch); moved by
    /// `advance_clock` events.
    pub clock_ns: Option<u64>,
    /// Host properties: by dotted name (`{"source.address": "10.0.0.1:5000"}`), or as a list
    /// of `{"path": [segments], "value": ...}` for segments that hold dots. A value is bytes, a
    /// JSON object (served as the serialized map Envoy returns for a map or struct), or `null`
    /// (the lookup fails, even for a property wasmux derives itself).
    pub properties: PropertiesSpec,
    /// Shared data of the scenario's VM id before the plugin starts: key → value.
    pub shared_data: BTreeMap<String, Bytes>,
    /// Canned foreign functions, by name: `{"result": bytes}` or `{"status": n}` (an ABI status
    /// code). They take precedence over the built-in ones.
    pub foreign_functions: BTreeMap<String, CannedForeign>,
    /// Upstreams callouts may target; absent means any.
    pub upstreams: Option<Vec<String>>,
    /// Limits.
    pub limits: ScenarioLimits,
    /// Several plugins instead of the one the fields above describe (those must then be left
    /// out): each with its own module, VM id, root id and configurations, all on one set of
    /// services. Plugins with the same module, VM id and VM configuration share one VM (one
    /// instance, a root context each), as in Envoy. Events name their plugin (`"plugin"`);
    /// without one they go to the first.
    pub plugins: Vec<PluginSpec>,
    /// The events, in order.
    pub events: Vec<Event>,
}

/// One plugin of a scenario with several ([`Scenario::plugins`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginSpec {
    /// Plugin name: unique, and how events and records name the plugin.
    pub name: String,
    /// The module: a path (or a conformance module spec) for the runner's module loader;
    /// absent means the scenario's module.
    pub module: Option<String>,
    /// VM id.
    pub vm_id: String,
    /// Root id.
    pub root_id: String,
    /// VM configuration.
    pub vm_config: Bytes,
    /// Plugin configuration.
    pub plugin_config: Bytes,
    /// Shared data of this plugin's VM id before any plugin starts: key → value.
    pub shared_data: BTreeMap<String, Bytes>,
}

/// A canned foreign function: what every call returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum CannedForeign {
    /// The call succeeds with these bytes.
    Result(Bytes),
    /// The call fails with this ABI status code.
    Status(u32),
}

/// A host property's value in a scenario.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PropertyValue {
    /// `null`: the lookup fails.
    Hidden(()),
    /// UTF-8 text.
    Text(String),
    /// Bytes as hex.
    Hex {
        /// Hex digits.
        hex: String,
    },
    /// A map or struct, served in the pairs format; nested values are serialized the same way.
    Map(BTreeMap<String, Self>),
}

impl PropertyValue {
    /// The encoded value; `None` for a hidden property.
    ///
    /// # Errors
    /// Invalid hex, or a hidden value inside a map.
    pub fn encode(&self) -> Result<Option<Vec<u8>>, String> {
        Ok(match self {
            Self::Hidden(()) => None,
            Self::Text(t) => Some(t.as_bytes().to_vec()),
            Self::Hex { hex } => Some(Bytes::Hex { hex: hex.clone() }.to_vec()?),
            Self::Map(m) => {
                let mut pairs = Vec::with_capacity(m.len());
                for (k, v) in m {
                    let v = v.encode()?.ok_or_else(|| format!("`null` inside the map value at `{k}`"))?;
                    pairs.push((k.as_bytes().to_vec(), v));
                }
                Some(wasmux_abi::pairs::encode(&pairs))
            }
        })
    }
}

/// One property given by its path segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathProperty {
    /// The segments, as the SDKs send them (joined by NUL bytes on the wire).
    pub path: Vec<String>,
    /// The value.
    pub value: PropertyValue,
}

/// A property as path segments and encoded value (`None`: hidden).
pub type PropertyEntry = (Vec<Vec<u8>>, Option<Vec<u8>>);

/// The properties of a scenario: by dotted name, or by path segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PropertiesSpec {
    /// `{"source.address": "10.0.0.1:5000"}`: names split at every dot.
    Dotted(BTreeMap<String, PropertyValue>),
    /// `[{"path": ["metadata", "filter_metadata", "envoy.filters.http.lua"], "value": ...}]`.
    Paths(Vec<PathProperty>),
}

impl Default for PropertiesSpec {
    fn default() -> Self {
        Self::Dotted(BTreeMap::new())
    }
}

impl PropertiesSpec {
    /// Every property as path segments and encoded value (`None`: hidden).
    ///
    /// # Errors
    /// An invalid value.
    pub fn entries(&self) -> Result<Vec<PropertyEntry>, String> {
        let split = |dotted: &str| dotted.split('.').map(|s| s.as_bytes().to_vec()).collect();
        match self {
            Self::Dotted(m) => m.iter().map(|(k, v)| Ok((split(k), v.encode()?))).collect(),
            Self::Paths(list) => list
                .iter()
                .map(|p| Ok((p.path.iter().map(|s| s.as_bytes().to_vec()).collect(), p.value.encode()?)))
                .collect(),
        }
    }
}

/// One scenario event. Streams are named by the scenario; callouts are numbered in dispatch
/// order from 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// Create an HTTP stream.
    HttpStream {
        /// Its name.
        stream: String,
        /// The plugin whose root context it belongs to (default: the first).
        #[serde(default)]
        plugin: Option<String>,
    },
    /// Request headers.
    RequestHeaders {
        /// Stream name.
        stream: String,
        /// Headers.
        headers: Pairs,
        /// End of stream.
        #[serde(default)]
        end_of_stream: bool,
    },
    /// A request body chunk.
    RequestBody {
        /// Stream name.
        stream: String,
        /// Bytes.
        #[serde(default)]
        data: Bytes,
        /// End of stream.
        #[serde(default)]
        end_of_stream: bool,
    },
    /// Request trailers.
    RequestTrailers {
        /// Stream name.
        stream: String,
        /// Trailers.
        trailers: Pairs,
    },
    /// Response headers.
    ResponseHeaders {
        /// Stream name.
        stream: String,
        /// Headers.
        headers: Pairs,
        /// End of stream.
        #[serde(default)]
        end_of_stream: bool,
    },
    /// A response body chunk.
    ResponseBody {
        /// Stream name.
        stream: String,
        /// Bytes.
        #[serde(default)]
        data: Bytes,
        /// End of stream.
        #[serde(default)]
        end_of_stream: bool,
    },
    /// Response trailers.
    ResponseTrailers {
        /// Stream name.
        stream: String,
        /// Trailers.
        trailers: Pairs,
    },
    /// Create a TCP stream (calls `proxy_on_new_connection`).
    TcpStream {
        /// Its name.
        stream: String,
        /// The plugin whose root context it belongs to (default: the first).
        #[serde(default)]
        plugin: Option<String>,
    },
    /// Data from the client.
    DownstreamData {
        /// Stream name.
        stream: String,
        /// Bytes.
        #[serde(default)]
        data: Bytes,
        /// End of stream.
        #[serde(default)]
        end_of_stream: bool,
    },
    /// Data from the server.
    UpstreamData {
        /// Stream name.
        stream: String,
        /// Bytes.
        #[serde(default)]
        data: Bytes,
        /// End of stream.
        #[serde(default)]
        end_of_stream: bool,
    },
    /// The client closed.
    DownstreamClose {
        /// Stream name.
        stream: String,
        /// `unknown`, `local` or `remote` (default remote).
        #[serde(default)]
        peer: Option<String>,
    },
    /// The server closed.
    UpstreamClose {
        /// Stream name.
        stream: String,
        /// `unknown`, `local` or `remote` (default remote).
        #[serde(default)]
        peer: Option<String>,
    },
    /// End a stream: done, log, delete.
    Finish {
        /// Stream name.
        stream: String,
    },
    /// The response to HTTP callout number `call`.
    HttpCallResponse {
        /// Callout index in dispatch order.
        call: usize,
        /// Headers (include `:status`).
        #[serde(default)]
        headers: Pairs,
        /// Body.
        #[serde(default)]
        body: Bytes,
        /// Trailers.
        #[serde(default)]
        trailers: Pairs,
        /// The call failed (reset or timeout): the filter sees no headers.
        #[serde(default)]
        failed: bool,
    },
    /// gRPC initial metadata.
    GrpcInitialMetadata {
        /// Callout index.
        call: usize,
        /// Metadata.
        #[serde(default)]
        metadata: Pairs,
    },
    /// One gRPC message.
    GrpcMessage {
        /// Callout index.
        call: usize,
        /// Message bytes.
        #[serde(default)]
        message: Bytes,
    },
    /// gRPC trailing metadata.
    GrpcTrailingMetadata {
        /// Callout index.
        call: usize,
        /// Metadata.
        #[serde(default)]
        metadata: Pairs,
    },
    /// Close of a gRPC call or stream.
    GrpcClose {
        /// Callout index.
        call: usize,
        /// gRPC status code.
        #[serde(default)]
        status: i32,
        /// Status message.
        #[serde(default)]
        message: String,
    },
    /// Fire the tick timer.
    Tick {
        /// The plugin (default: the first).
        #[serde(default)]
        plugin: Option<String>,
    },
    /// Move the clock forward.
    AdvanceClock {
        /// Milliseconds.
        ms: u64,
    },
    /// Call `proxy_on_foreign_function` on the root context.
    ForeignFunction {
        /// Function id.
        function_id: u32,
        /// Arguments.
        #[serde(default)]
        args: Bytes,
        /// The plugin (default: the first).
        #[serde(default)]
        plugin: Option<String>,
    },
    /// Enqueue an item on a shared queue from the host side.
    Enqueue {
        /// Queue name (in the VM id of the plugin).
        queue: String,
        /// Item.
        item: Bytes,
        /// The plugin whose VM id names the queue (default: the first).
        #[serde(default)]
        plugin: Option<String>,
    },
    /// Shut the plugin down: done, then delete, on the root context.
    Shutdown {
        /// The plugin (default: the first).
        #[serde(default)]
        plugin: Option<String>,
    },
}

impl Event {
    /// The bytes and the end-of-stream flag of a body or data event, to split it into chunks.
    #[cfg(feature = "testing")]
    pub(crate) fn chunk_mut(&mut self) -> Option<(&mut Bytes, &mut bool)> {
        match self {
            Self::RequestBody { data, end_of_stream, .. }
            | Self::ResponseBody { data, end_of_stream, .. }
            | Self::DownstreamData { data, end_of_stream, .. }
            | Self::UpstreamData { data, end_of_stream, .. } => Some((data, end_of_stream)),
            _ => None,
        }
    }

    /// The event's name, as `"event"` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::HttpStream { .. } => "http_stream",
            Self::RequestHeaders { .. } => "request_headers",
            Self::RequestBody { .. } => "request_body",
            Self::RequestTrailers { .. } => "request_trailers",
            Self::ResponseHeaders { .. } => "response_headers",
            Self::ResponseBody { .. } => "response_body",
            Self::ResponseTrailers { .. } => "response_trailers",
            Self::TcpStream { .. } => "tcp_stream",
            Self::DownstreamData { .. } => "downstream_data",
            Self::UpstreamData { .. } => "upstream_data",
            Self::DownstreamClose { .. } => "downstream_close",
            Self::UpstreamClose { .. } => "upstream_close",
            Self::Finish { .. } => "finish",
            Self::HttpCallResponse { .. } => "http_call_response",
            Self::GrpcInitialMetadata { .. } => "grpc_initial_metadata",
            Self::GrpcMessage { .. } => "grpc_message",
            Self::GrpcTrailingMetadata { .. } => "grpc_trailing_metadata",
            Self::GrpcClose { .. } => "grpc_close",
            Self::Tick { .. } => "tick",
            Self::AdvanceClock { .. } => "advance_clock",
            Self::ForeignFunction { .. } => "foreign_function",
            Self::Enqueue { .. } => "enqueue",
            Self::Shutdown { .. } => "shutdown",
        }
    }
}

/// A scenario that cannot run (bad JSON, unknown stream name, ...), as opposed to a filter that
/// fails, which is recorded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// JSON syntax or shape.
    #[error("invalid scenario: {0}")]
    Json(#[from] serde_json::Error),
    /// A value the runner cannot use.
    #[error("invalid scenario: {0}")]
    Invalid(String),
    /// Loading the module failed.
    #[error(transparent)]
    Load(#[from] Error),
}

impl Scenario {
    /// Parses a scenario.
    ///
    /// # Errors
    /// Invalid JSON or an unknown field or event.
    pub fn from_json(text: &str) -> Result<Self, ScenarioError> {
        Ok(serde_json::from_str(text)?)
    }
}

struct Recorder {
    log: Arc<MemoryLog>,
    callouts: Arc<RecordingCallouts>,
    clock: Arc<ManualClock>,
    services: Services,
    /// The VM behind every log line and callout, in the order they were recorded.
    order: Arc<Mutex<TapOrder>>,
}

#[derive(Debug, Default)]
struct TapOrder {
    logs: Vec<usize>,
    callouts: Vec<usize>,
}

/// One VM's log sink and callouts: the scenario's shared recorders, with the VM noted, so
/// records can tell VMs apart (context ids and callout tokens are per VM).
#[derive(Debug)]
struct Tap {
    vm: usize,
    log: Arc<MemoryLog>,
    callouts: Arc<RecordingCallouts>,
    order: Arc<Mutex<TapOrder>>,
}

impl Tap {
    fn note(&self, f: impl FnOnce(&mut TapOrder) -> &mut Vec<usize>) {
        f(&mut self.order.lock().unwrap_or_else(PoisonError::into_inner)).push(self.vm);
    }

    fn noted(&self, r: Result<(), Status>) -> Result<(), Status> {
        if r.is_ok() {
            self.note(|o| &mut o.callouts);
        }
        r
    }
}

impl LogSink for Tap {
    fn log(&self, line: &LogLine<'_>) {
        self.log.log(line);
        self.note(|o| &mut o.logs);
    }
}

impl Callouts for Tap {
    fn http_call(&self, call: &HttpCallout) -> Result<(), Status> {
        self.noted(self.callouts.http_call(call))
    }

    fn grpc_open(&self, call: &GrpcCallout) -> Result<(), Status> {
        self.noted(self.callouts.grpc_open(call))
    }

    fn grpc_action(&self, token: u32, action: &GrpcAction) -> Result<(), Status> {
        self.noted(self.callouts.grpc_action(token, action))
    }
}

fn invalid(s: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid(s.into())
}

fn error_json(e: &Error) -> Value {
    match e {
        Error::Trap(t) => json!({"kind": "trap", "trap": t.kind.as_str(), "export": t.export}),
        Error::Failed(_) => json!({"kind": "failed"}),
        Error::Rejected(r) => json!({"kind": "rejected", "stage": format!("{r:?}").to_lowercase()}),
        other => json!({"kind": "error", "message": other.to_string()}),
    }
}

fn peer(p: &Option<String>) -> Result<PeerType, ScenarioError> {
    match p.as_deref() {
        None => Ok(PeerType::Remote),
        Some(s) => PeerType::parse(s).ok_or_else(|| invalid(format!("unknown peer `{s}`"))),
    }
}

fn control_name(c: &StreamControl) -> String {
    match c {
        StreamControl::Continue(t) => format!("continue:{t}"),
        StreamControl::Close(t) => format!("close:{t}"),
        StreamControl::ClearRouteCache => "clear_route_cache".into(),
    }
}

/// Loads the module a plugin of a scenario names (`plugins[].module`).
pub type ModuleLoader<'a> = &'a dyn Fn(&str) -> Result<Vec<u8>, String>;

/// Runs a scenario on an engine and returns the record.
///
/// # Errors
/// A scenario the runner cannot use, or a module that does not load (compile or compatibility
/// errors). Filter failures after loading are part of the record, not errors.
pub fn run(runtime: Runtime, wasm: &[u8], scenario: &Scenario) -> Result<Value, ScenarioError> {
    run_with(runtime, wasm, scenario, None, None)
}

/// [`run`], loading the module through a compiled-module cache when one is given.
///
/// # Errors
/// As [`run`].
pub fn run_cached(
    runtime: Runtime,
    wasm: &[u8],
    scenario: &Scenario,
    cache: Option<&crate::ModuleCache>,
) -> Result<Value, ScenarioError> {
    run_with(runtime, wasm, scenario, cache, None)
}

/// The plugins of a scenario: its `plugins`, or the one its top-level fields describe.
fn plugin_specs(scenario: &Scenario) -> Result<Vec<PluginSpec>, ScenarioError> {
    if scenario.plugins.is_empty() {
        return Ok(vec![PluginSpec {
            name: scenario.plugin_name.clone().unwrap_or_else(|| "plugin".into()),
            module: None,
            vm_id: scenario.vm_id.clone(),
            root_id: scenario.root_id.clone(),
            vm_config: scenario.vm_config.clone(),
            plugin_config: scenario.plugin_config.clone(),
            shared_data: scenario.shared_data.clone(),
        }]);
    }
    let single = [
        ("plugin_name", scenario.plugin_name.is_some()),
        ("root_id", !scenario.root_id.is_empty()),
        ("vm_id", !scenario.vm_id.is_empty()),
        ("vm_config", scenario.vm_config != Bytes::Empty),
        ("plugin_config", scenario.plugin_config != Bytes::Empty),
        ("shared_data", !scenario.shared_data.is_empty()),
    ];
    if let Some((field, _)) = single.iter().find(|(_, set)| *set) {
        return Err(invalid(format!("`{field}` belongs in each entry of `plugins` when `plugins` is given")));
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in &scenario.plugins {
        if p.name.is_empty() {
            return Err(invalid("every entry of `plugins` needs a `name`"));
        }
        if !seen.insert(p.name.as_str()) {
            return Err(invalid(format!("two plugins are named `{}`", p.name)));
        }
    }
    Ok(scenario.plugins.clone())
}

/// [`run`] with a module cache and a loader for the modules `plugins[].module` names (without
/// one, naming a module is an error).
///
/// # Errors
/// As [`run`]; a module the loader cannot give.
pub fn run_with(
    runtime: Runtime,
    wasm: &[u8],
    scenario: &Scenario,
    cache: Option<&crate::ModuleCache>,
    modules: Option<ModuleLoader<'_>>,
) -> Result<Value, ScenarioError> {
    run_with_options(runtime, wasm, scenario, cache, modules, &RunOptions::default())
}

/// What a run records beyond the record [`run`] gives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunOptions {
    /// On every event: `log_range` and `callout_range`, the `[start, end)` indices into `logs`
    /// and `callouts` of what the event caused, and `state`, its stream's state right after it
    /// (as in `streams`), for events on a stream.
    pub trace_events: bool,
    /// `events_ns`: the wall time of the events, start-up excluded.
    pub time_events: bool,
    /// After the events, this many more streams are opened and driven like the scenario's
    /// first stream (every event of it but `finish`), and left in flight; `background` in the
    /// record then gives the guest memory and the host's resident set before and after.
    pub background_streams: usize,
    /// Whether the scenario's plugins start from snapshots ([`PluginOptions::snapshot`]). The
    /// record is the same either way (which the conformance suite checks), but for `snapshots`,
    /// each VM's [`SnapshotStatus`](crate::SnapshotStatus) in words, present when this is on.
    pub snapshot: crate::SnapshotPolicy,
}

impl RunOptions {
    /// Per-event counts and states ([`Self::trace_events`]).
    pub fn traced() -> Self {
        Self { trace_events: true, ..Self::default() }
    }

    /// The events' wall time ([`Self::time_events`]).
    pub fn timed() -> Self {
        Self { time_events: true, ..Self::default() }
    }
}

/// [`run_with`], recording what `options` asks for.
///
/// # Errors
/// As [`run_with`].
pub fn run_with_options(
    runtime: Runtime,
    wasm: &[u8],
    scenario: &Scenario,
    cache: Option<&crate::ModuleCache>,
    modules: Option<ModuleLoader<'_>>,
    options: &RunOptions,
) -> Result<Value, ScenarioError> {
    let specs = plugin_specs(scenario)?;
    let log = Arc::new(MemoryLog::default());
    let callouts = Arc::new(RecordingCallouts::default());
    callouts.set_upstreams(scenario.upstreams.clone());
    let clock = Arc::new(ManualClock::new(scenario.clock_ns.unwrap_or(1_700_000_000_000_000_000)));
    let props = Arc::new(StaticProperties::default());
    for (path, value) in scenario.properties.entries().map_err(invalid)? {
        props.insert_path(path, value);
    }
    let mut foreign = wasmux_abi::services::ForeignFunctions::default();
    for (name, canned) in &scenario.foreign_functions {
        let answer = match canned {
            CannedForeign::Result(b) => Ok(b.to_vec().map_err(invalid)?),
            CannedForeign::Status(code) => Err(Status::from_code(*code)
                .filter(|s| *s != Status::Ok)
                .ok_or_else(|| invalid(format!("foreign function `{name}`: {code} is not an error status")))?),
        };
        foreign.register(name, move |_| answer.clone());
    }
    let services = Services {
        log: log.clone(),
        callouts: callouts.clone(),
        clock: clock.clone(),
        properties: props,
        foreign: Arc::new(foreign),
        ..Default::default()
    };
    let order = Arc::new(Mutex::new(TapOrder::default()));
    let rec = Recorder { log, callouts, clock, services: services.clone(), order: order.clone() };
    let level = scenario.log_level.as_deref().unwrap_or("trace");
    let log_level = LogLevel::parse(level).ok_or_else(|| invalid(format!("unknown log level `{level}`")))?;
    let limits = scenario.limits.to_limits();
    for spec in &specs {
        for (k, v) in &spec.shared_data {
            let value = v.to_vec().map_err(invalid)?;
            if let Err(e) = services.shared_data.set(&spec.vm_id, k.as_bytes(), &value, 0, &limits.quotas) {
                return Err(invalid(format!("initial shared data `{k}`: {e:?}")));
            }
        }
    }

    // Compile each module once; group plugins by (module, VM id, VM configuration): one VM each.
    let mut loaded: Vec<(String, Vec<u8>)> = Vec::new();
    let mut groups: Vec<VmGroup> = Vec::new();
    let mut members = Vec::with_capacity(specs.len());
    for spec in &specs {
        let vm_config = spec.vm_config.to_vec().map_err(invalid)?;
        let root = RootOptions {
            name: spec.name.clone(),
            root_id: spec.root_id.clone(),
            plugin_configuration: spec.plugin_config.to_vec().map_err(invalid)?,
            failure_policy: FailurePolicy::FailClosed,
        };
        if let Some(g) = groups.iter().position(|(m, v, c, _)| *m == spec.module && *v == spec.vm_id && *c == vm_config)
        {
            let sibling = groups[g].3[0].sibling(root);
            groups[g].3.push(sibling);
            members.push(Member { vm: g, root: groups[g].3.len() - 1, name: spec.name.clone() });
            continue;
        }
        let vm = groups.len();
        let tap = Arc::new(Tap { vm, log: rec.log.clone(), callouts: rec.callouts.clone(), order: order.clone() });
        let options = PluginOptions {
            name: root.name,
            root_id: root.root_id,
            vm_id: spec.vm_id.clone(),
            vm_configuration: vm_config.clone(),
            plugin_configuration: root.plugin_configuration,
            environment: scenario.environment.clone().into_iter().collect(),
            log_level,
            limits: limits.clone(),
            failure_policy: root.failure_policy,
            services: Services { log: tap.clone(), callouts: tap, ..services.clone() },
            max_callout_timeout: scenario
                .limits
                .max_callout_timeout_ms
                .map_or(wasmux_abi::VmEnv::DEFAULT_MAX_CALLOUT_TIMEOUT, Duration::from_millis),
            snapshot: options.snapshot,
        };
        // Each VM compiles its module (from the module cache when there is one): the null
        // engine runs one live instance of a compiled library per thread.
        let bytes = match &spec.module {
            None => wasm,
            Some(name) => match loaded.iter().find(|(n, _)| n == name) {
                Some((_, b)) => b,
                None => {
                    let load = modules
                        .ok_or_else(|| invalid(format!("plugin `{}`: no loader for module `{name}`", spec.name)))?;
                    let b = load(name).map_err(|e| invalid(format!("plugin `{}`: module `{name}`: {e}", spec.name)))?;
                    loaded.push((name.clone(), b));
                    &loaded[loaded.len() - 1].1
                }
            },
        };
        let compiled = match cache {
            Some(cache) => runtime.load_cached(bytes, options, cache)?,
            None => runtime.load(bytes, options)?,
        };
        groups.push((spec.module.clone(), spec.vm_id.clone(), vm_config, vec![compiled]));
        members.push(Member { vm, root: 0, name: spec.name.clone() });
    }

    let abi = groups[0].3[0].info().abi;
    let mut out = json!({ "engine": runtime.name(), "abi_version": abi.as_str() });
    if options.snapshot != crate::SnapshotPolicy::Off {
        let status: Vec<String> = groups.iter().map(|g| g.3[0].snapshot_status().to_string()).collect();
        out["snapshots"] = json!(status);
    }
    let multi = !scenario.plugins.is_empty();
    let mut vms = Vec::with_capacity(groups.len());
    let mut start_error = None;
    'start: for (_, _, _, plugins) in &groups {
        let mut instance = match plugins[0].instantiate() {
            Ok(p) => p,
            Err(e) => {
                start_error = Some((plugins[0].options().name.clone(), e));
                break 'start;
            }
        };
        let name = plugins[0].options().name.clone();
        for p in &plugins[1..] {
            if let Err(e) = instance.add_root(p) {
                start_error = Some((p.options().name.clone(), e));
                // Kept for the record: its started root contexts name their log lines.
                vms.push(Slot { name, plugin: instance });
                break 'start;
            }
        }
        vms.push(Slot { name, plugin: instance });
    }
    let mut runner = Runner {
        vms,
        members,
        multi,
        rec: &rec,
        names: BTreeMap::new(),
        events: Vec::new(),
        finished: BTreeMap::new(),
        snapshots: BTreeMap::new(),
        trace: options.trace_events,
        background: options.background_streams,
    };
    match start_error {
        None => {
            out["start"] = json!("ok");
            let started = std::time::Instant::now();
            let body = runner.run(scenario)?;
            if options.time_events {
                out["events_ns"] = json!(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
            }
            merge(&mut out, body);
        }
        Some((name, e)) => {
            let mut start = error_json(&e);
            if multi {
                start["plugin"] = json!(name);
            }
            out["start"] = start;
            // The scenario stops at start-up; the record has what happened until then.
            merge(&mut out, runner.record_common(scenario));
        }
    }
    Ok(out)
}

fn merge(out: &mut Value, more: Value) {
    if let (Value::Object(o), Value::Object(m)) = (out, more) {
        o.extend(m);
    }
}

/// The plugins that share one VM: (module, VM id, VM configuration, plugins in start order).
type VmGroup = (Option<String>, String, Vec<u8>, Vec<Arc<CompiledPlugin>>);

/// One VM of a scenario: an instance with a root context per plugin of its group.
struct Slot {
    /// The name of its first plugin (how records name the VM).
    name: String,
    plugin: Plugin,
}

/// One plugin of a scenario: its VM and root index there.
struct Member {
    vm: usize,
    root: usize,
    name: String,
}

struct Runner<'a> {
    vms: Vec<Slot>,
    members: Vec<Member>,
    /// The scenario lists `plugins` (records then name plugins and VMs).
    multi: bool,
    rec: &'a Recorder,
    /// stream name -> (plugin index, context id)
    names: BTreeMap<String, (usize, u32)>,
    events: Vec<Value>,
    /// stream name -> finished state
    finished: BTreeMap<String, Value>,
    /// stream name -> state captured just before it was finished
    snapshots: BTreeMap<String, Value>,
    /// Record per-event counts and states ([`RunOptions::trace_events`]).
    trace: bool,
    /// Streams to keep in flight after the events ([`RunOptions::background_streams`]).
    background: usize,
}

impl Runner<'_> {
    /// The stream's VM and context id.
    fn id(&self, name: &str) -> Result<(usize, u32), ScenarioError> {
        let (member, id) = self.names.get(name).copied().ok_or_else(|| invalid(format!("unknown stream `{name}`")))?;
        Ok((self.members[member].vm, id))
    }

    /// The plugin an event names (the first when it names none).
    fn member(&self, plugin: Option<&String>) -> Result<usize, ScenarioError> {
        match plugin {
            None => Ok(0),
            Some(name) => self
                .members
                .iter()
                .position(|m| m.name == *name)
                .ok_or_else(|| invalid(format!("unknown plugin `{name}`"))),
        }
    }

    fn vm(&mut self, vm: usize) -> &mut Plugin {
        &mut self.vms[vm].plugin
    }

    /// The root context id of a plugin.
    fn root(&self, member: usize) -> u32 {
        let m = &self.members[member];
        self.vms[m.vm].plugin.root_context_of(m.root).unwrap_or(0)
    }

    /// Callouts in dispatch order, as (VM, token): index `n` is the scenario's callout `n`.
    fn callout_tokens(&self) -> Vec<(usize, u32)> {
        let order = self.rec.order.lock().unwrap_or_else(PoisonError::into_inner);
        self.rec
            .callouts
            .events()
            .iter()
            .zip(order.callouts.iter())
            .filter_map(|(e, vm)| match e {
                CalloutEvent::Http(h) => Some((*vm, h.token)),
                CalloutEvent::GrpcOpen(g) => Some((*vm, g.token)),
                CalloutEvent::Grpc { .. } => None,
            })
            .collect()
    }

    fn call_index(&self, vm: usize, token: u32) -> Option<usize> {
        self.callout_tokens().iter().position(|t| *t == (vm, token))
    }

    fn token(&self, call: usize) -> Result<(usize, u32), ScenarioError> {
        self.callout_tokens()
            .get(call)
            .copied()
            .ok_or_else(|| invalid(format!("no callout number {call} was dispatched")))
    }

    fn run(mut self, scenario: &Scenario) -> Result<Value, ScenarioError> {
        for ev in &scenario.events {
            let mut entry = json!({ "event": ev.name() });
            let before = self.trace.then(|| (self.rec.log.len(), self.rec.callouts.len()));
            let result = self.step(ev, &mut entry)?;
            match result {
                Ok(Some(action)) => entry["action"] = json!(action),
                Ok(None) => {}
                Err(e) => entry["error"] = error_json(&e),
            }
            // Queue items another VM enqueued reach their owner once per event.
            if self.vms.len() > 1 {
                for slot in &mut self.vms {
                    if let Err(e) = slot.plugin.poll() {
                        let mut err = error_json(&e);
                        err["vm"] = json!(slot.name);
                        entry["delivery_error"] = err;
                    }
                }
            }
            // A trap the failure policy answered is named on the event that hit it.
            for slot in &mut self.vms {
                if let Some(t) = slot.plugin.take_trap() {
                    entry["trap"] = json!({"kind": t.kind.as_str(), "export": t.export});
                    if self.multi {
                        entry["trap"]["vm"] = json!(slot.name);
                    }
                }
            }
            if let Some(before) = before {
                self.trace_event(ev, before, &mut entry);
            }
            self.events.push(entry);
        }
        let background = if self.background > 0 { Some(self.background_streams(scenario)?) } else { None };
        let mut body = self.record_common(scenario);
        body["events"] = Value::Array(std::mem::take(&mut self.events));
        if let Some(b) = background {
            body["background"] = b;
        }
        let mut counts = wasmux_abi::QuotaCounts::default();
        let mut coverage = Vec::new();
        for slot in &mut self.vms {
            counts.add(&slot.plugin.quota_counts());
            coverage.extend(slot.plugin.vm().coverage());
        }
        let quota: serde_json::Map<String, Value> =
            counts.iter().map(|(q, n)| (q.as_str().to_string(), json!(n))).collect();
        if !quota.is_empty() {
            body["quota"] = Value::Object(quota);
        }
        coverage.sort_unstable();
        coverage.dedup();
        body["coverage"] = json!(coverage);
        let mut streams = serde_json::Map::new();
        for (name, &(member, id)) in &self.names {
            let vm = self.members[member].vm;
            let mut st = stream_json(self.vms[vm].plugin.vm(), id)
                .or_else(|| self.snapshots.get(name).cloned())
                .unwrap_or_else(|| json!({}));
            st["finished"] = self.finished.get(name).cloned().unwrap_or(json!(false));
            if self.multi {
                st["plugin"] = json!(self.members[member].name);
            }
            streams.insert(name.clone(), st);
        }
        body["streams"] = Value::Object(streams);
        Ok(body)
    }
}

/// The host's resident set in bytes (Linux; `None` elsewhere).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.trim_start_matches("VmRSS:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

impl Runner<'_> {
    /// Guest memory of every VM of the scenario, in bytes.
    fn guest_memory(&mut self) -> u64 {
        self.vms.iter_mut().map(|s| s.plugin.vm().instance().memory_size()).sum()
    }

    /// Opens [`Self::background`] streams like the first stream of the scenario and leaves them
    /// in flight; what that cost in guest memory and host memory.
    fn background_streams(&mut self, scenario: &Scenario) -> Result<Value, ScenarioError> {
        let Some(first) = scenario.events.iter().find_map(|e| match e {
            Event::HttpStream { stream, .. } | Event::TcpStream { stream, .. } => Some(stream.clone()),
            _ => None,
        }) else {
            return Err(invalid("background streams copy the scenario's first stream, and it has none"));
        };
        let template: Vec<&Event> = scenario
            .events
            .iter()
            .filter(|e| event_stream(e) == Some(first.as_str()) && !matches!(e, Event::Finish { .. }))
            .collect();
        let (guest_before, rss_before) = (self.guest_memory(), resident_bytes());
        let (mut completed, mut first_error) = (0usize, None);
        let mut names = Vec::with_capacity(self.background);
        for i in 0..self.background {
            let name = format!("{first}~{i}");
            let mut failed = None;
            for ev in &template {
                let mut ev = (*ev).clone();
                if let Some(s) = stream_mut(&mut ev) {
                    s.clone_from(&name);
                }
                let mut entry = json!({});
                if let Err(e) = self.step(&ev, &mut entry)? {
                    failed = Some(error_json(&e));
                    break;
                }
                if let Some(t) = self.vms.iter_mut().find_map(|s| s.plugin.take_trap()) {
                    failed = Some(json!({"kind": "trap", "trap": t.kind.as_str(), "export": t.export}));
                    break;
                }
            }
            names.push(name);
            match failed {
                None => completed += 1,
                Some(e) => {
                    first_error.get_or_insert(json!({"stream": i, "error": e}));
                }
            }
        }
        let (guest_after, rss_after) = (self.guest_memory(), resident_bytes());
        // The copies stay open in their VMs, but out of the record's streams.
        for n in &names {
            self.names.remove(n);
        }
        Ok(json!({
            "streams": self.background,
            "completed": completed,
            "first_error": first_error,
            "guest_memory_before": guest_before,
            "guest_memory_after": guest_after,
            "host_rss_before": rss_before,
            "host_rss_after": rss_after,
        }))
    }

    /// Counts of log lines and callouts so far, and the state of the event's stream.
    fn trace_event(&mut self, ev: &Event, (logs, callouts): (usize, usize), entry: &mut Value) {
        entry["log_range"] = json!([logs, self.rec.log.len()]);
        entry["callout_range"] = json!([callouts, self.rec.callouts.len()]);
        let Some(stream) = event_stream(ev) else { return };
        let Ok((vm, id)) = self.id(stream) else { return };
        let state = match stream_json(self.vm(vm).vm(), id) {
            Some(state) => Some(state),
            None => self.snapshots.get(stream).cloned(),
        };
        if let Some(mut state) = state {
            if let Some(done) = self.finished.get(stream) {
                state["finished"] = done.clone();
            }
            entry["state"] = state;
        }
    }
}

fn stream_json(vm: &mut wasmux_abi::Vm, id: u32) -> Option<Value> {
    if let Ok(h) = vm.http(id) {
        return Some(json!({
            "kind": "http",
            "request_headers": map_json(&h.request_headers),
            "request_body": bytes_json(&h.request_body.all()),
            "request_trailers": map_json(&h.request_trailers),
            "response_headers": map_json(&h.response_headers),
            "response_body": bytes_json(&h.response_body.all()),
            "response_trailers": map_json(&h.response_trailers),
            "local_reply": h.local_reply.as_ref().map(|r| json!({
                "status": r.status_code,
                "details": r.details,
                "body": bytes_json(&r.body),
                "headers": map_json(&r.headers),
                "grpc_status": r.grpc_status,
            })),
            "control": h.control.iter().map(control_name).collect::<Vec<_>>(),
        }));
    }
    let t = vm.tcp(id).ok()?;
    Some(json!({
        "kind": "tcp",
        "downstream": bytes_json(&t.downstream.all()),
        "upstream": bytes_json(&t.upstream.all()),
        "control": t.control.iter().map(control_name).collect::<Vec<_>>(),
    }))
}

type Step = Result<Option<String>, Error>;

fn action(r: wasmux_abi::Result<wasmux_abi::Action>) -> Step {
    r.map(|a| Some(a.name()))
}

fn unit(r: wasmux_abi::Result<()>) -> Step {
    r.map(|()| None)
}

impl Runner<'_> {
    /// Creates a stream of a plugin and names it.
    fn new_stream(
        &mut self,
        stream: &str,
        plugin: Option<&String>,
        create: impl FnOnce(&mut Plugin, usize) -> Result<(u32, Option<String>), Error>,
    ) -> Result<Step, ScenarioError> {
        if self.names.contains_key(stream) {
            return Err(invalid(format!("stream `{stream}` already exists")));
        }
        let member = self.member(plugin)?;
        let (vm, root) = (self.members[member].vm, self.members[member].root);
        Ok(create(self.vm(vm), root).map(|(id, action)| {
            self.names.insert(stream.to_string(), (member, id));
            action
        }))
    }

    fn step(&mut self, ev: &Event, entry: &mut Value) -> Result<Step, ScenarioError> {
        let bytes = |b: &Bytes| b.to_vec().map_err(invalid);
        if let Some(stream) = event_stream(ev) {
            entry["stream"] = json!(stream);
        }
        Ok(match ev {
            Event::HttpStream { stream, plugin } => {
                self.new_stream(stream, plugin.as_ref(), |p, root| Ok((p.http_stream_for(root)?, None)))?
            }
            Event::TcpStream { stream, plugin } => self.new_stream(stream, plugin.as_ref(), |p, root| {
                p.tcp_stream_for(root).map(|(id, a)| (id, Some(a.name())))
            })?,
            Event::RequestHeaders { stream, headers, end_of_stream } => {
                let ((vm, id), m) = (self.id(stream)?, to_map(headers).map_err(invalid)?);
                action(self.vm(vm).request_headers(id, m, *end_of_stream))
            }
            Event::RequestBody { stream, data, end_of_stream } => {
                let (vm, id) = self.id(stream)?;
                action(self.vm(vm).request_body(id, &bytes(data)?, *end_of_stream))
            }
            Event::RequestTrailers { stream, trailers } => {
                let ((vm, id), m) = (self.id(stream)?, to_map(trailers).map_err(invalid)?);
                action(self.vm(vm).request_trailers(id, m))
            }
            Event::ResponseHeaders { stream, headers, end_of_stream } => {
                let ((vm, id), m) = (self.id(stream)?, to_map(headers).map_err(invalid)?);
                action(self.vm(vm).response_headers(id, m, *end_of_stream))
            }
            Event::ResponseBody { stream, data, end_of_stream } => {
                let (vm, id) = self.id(stream)?;
                action(self.vm(vm).response_body(id, &bytes(data)?, *end_of_stream))
            }
            Event::ResponseTrailers { stream, trailers } => {
                let ((vm, id), m) = (self.id(stream)?, to_map(trailers).map_err(invalid)?);
                action(self.vm(vm).response_trailers(id, m))
            }
            Event::DownstreamData { stream, data, end_of_stream } => {
                let (vm, id) = self.id(stream)?;
                action(self.vm(vm).downstream_data(id, &bytes(data)?, *end_of_stream))
            }
            Event::UpstreamData { stream, data, end_of_stream } => {
                let (vm, id) = self.id(stream)?;
                action(self.vm(vm).upstream_data(id, &bytes(data)?, *end_of_stream))
            }
            Event::DownstreamClose { stream, peer: pt } => {
                let (vm, id) = self.id(stream)?;
                unit(self.vm(vm).downstream_close(id, peer(pt)?))
            }
            Event::UpstreamClose { stream, peer: pt } => {
                let (vm, id) = self.id(stream)?;
                unit(self.vm(vm).upstream_close(id, peer(pt)?))
            }
            Event::Finish { stream } => {
                let (vm, id) = self.id(stream)?;
                if let Some(s) = stream_json(self.vm(vm).vm(), id) {
                    self.snapshots.insert(stream.clone(), s);
                }
                match self.vm(vm).finish(id) {
                    Ok(done) => {
                        self.finished.insert(stream.clone(), json!(if done { "done" } else { "deferred" }));
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            }
            Event::HttpCallResponse { call, headers, body, trailers, failed } => {
                entry["call"] = json!(call);
                let (vm, token) = self.token(*call)?;
                let resp = if *failed {
                    None
                } else {
                    Some(HttpCallResponse {
                        headers: to_map(headers).map_err(invalid)?,
                        body: bytes(body)?,
                        trailers: to_map(trailers).map_err(invalid)?,
                    })
                };
                unit(self.vm(vm).http_call_response(token, resp))
            }
            Event::GrpcInitialMetadata { call, metadata } => {
                entry["call"] = json!(call);
                let ((vm, token), m) = (self.token(*call)?, to_map(metadata).map_err(invalid)?);
                unit(self.vm(vm).vm().on_grpc_initial_metadata(token, m))
            }
            Event::GrpcMessage { call, message } => {
                entry["call"] = json!(call);
                let (vm, token) = self.token(*call)?;
                unit(self.vm(vm).vm().on_grpc_message(token, bytes(message)?))
            }
            Event::GrpcTrailingMetadata { call, metadata } => {
                entry["call"] = json!(call);
                let ((vm, token), m) = (self.token(*call)?, to_map(metadata).map_err(invalid)?);
                unit(self.vm(vm).vm().on_grpc_trailing_metadata(token, m))
            }
            Event::GrpcClose { call, status, message } => {
                entry["call"] = json!(call);
                let (vm, token) = self.token(*call)?;
                unit(self.vm(vm).vm().on_grpc_close(token, *status, message))
            }
            Event::Tick { plugin } => {
                let m = self.member(plugin.as_ref())?;
                let (vm, root) = (self.members[m].vm, self.members[m].root);
                unit(self.vm(vm).tick_for(root))
            }
            Event::AdvanceClock { ms } => {
                // Moving time expires callouts whose timeout has passed.
                self.rec.clock.advance(Duration::from_millis(*ms));
                let mut calls = Vec::new();
                let mut result = Ok(None);
                for vm in 0..self.vms.len() {
                    match self.vm(vm).poll() {
                        Ok(tokens) => calls.extend(tokens.iter().filter_map(|t| self.call_index(vm, *t))),
                        Err(e) => result = Err(e),
                    }
                }
                calls.sort_unstable();
                if !calls.is_empty() {
                    entry["expired_calls"] = json!(calls);
                }
                result
            }
            Event::ForeignFunction { function_id, args, plugin } => {
                let m = self.member(plugin.as_ref())?;
                let (vm, root) = (self.members[m].vm, self.root(m));
                unit(self.vm(vm).vm().on_foreign_function(root, *function_id, bytes(args)?))
            }
            Event::Enqueue { queue, item, plugin } => {
                let m = self.member(plugin.as_ref())?;
                let options = self.vms[self.members[m].vm].plugin.compiled().options();
                let q = &self.rec.services.queues;
                let Some(id) = q.resolve(&options.vm_id, queue.as_bytes()) else {
                    return Err(invalid(format!("no shared queue named `{queue}`")));
                };
                if let Err(s) = q.enqueue(id, &bytes(item)?, &options.limits.quotas) {
                    return Err(invalid(format!("enqueue failed: {s:?}")));
                }
                let mut result = Ok(None);
                for vm in 0..self.vms.len() {
                    if let Err(e) = self.vm(vm).vm().poll() {
                        result = Err(e);
                    }
                }
                result
            }
            Event::Shutdown { plugin } => {
                let m = self.member(plugin.as_ref())?;
                let (vm, root) = (self.members[m].vm, self.root(m));
                match self.vm(vm).vm().finish(root) {
                    Ok(done) => Ok(Some(if done { "done" } else { "deferred" }.into())),
                    Err(e) => Err(e),
                }
            }
        })
    }

    /// How records name a context of a VM: its stream name, `root` and `vm` (`root:<plugin>`
    /// and `vm:<name>` with several plugins), or `#<id>`.
    fn context_names(&mut self) -> BTreeMap<(usize, u32), String> {
        let mut names: BTreeMap<(usize, u32), String> = BTreeMap::new();
        for (name, &(member, id)) in &self.names {
            names.insert((self.members[member].vm, id), name.clone());
        }
        for (i, m) in self.members.iter().enumerate() {
            if let Some(slot) = self.vms.get(m.vm) {
                let root = slot.plugin.root_context_of(m.root).unwrap_or(0);
                let label = if self.multi { format!("root:{}", self.members[i].name) } else { "root".into() };
                names.insert((m.vm, root), label);
            }
        }
        if !self.multi {
            // The first context is always the plugin's root context, also when start-up failed.
            names.entry((0, 1)).or_insert_with(|| "root".into());
        }
        names
    }

    /// Logs, callouts, metrics, shared data and the tick period.
    fn record_common(&mut self, scenario: &Scenario) -> Value {
        let ctx_names = self.context_names();
        let vm_name = |vm: usize| {
            self.vms.get(vm).map_or_else(
                || self.members.iter().find(|m| m.vm == vm).map_or_else(|| format!("{vm}"), |m| m.name.clone()),
                |s| s.name.clone(),
            )
        };
        let order = self.rec.order.lock().unwrap_or_else(PoisonError::into_inner);
        let logs: Vec<Value> = self
            .rec
            .log
            .records()
            .iter()
            .zip(order.logs.iter())
            .map(|(r, &vm)| {
                let ctx = match ctx_names.get(&(vm, r.context_id)) {
                    Some(n) => n.clone(),
                    None if r.context_id == 0 && self.multi => format!("vm:{}", vm_name(vm)),
                    None if r.context_id == 0 => "vm".into(),
                    None => format!("#{}", r.context_id),
                };
                json!({"level": r.level.as_str(), "context": ctx, "message": r.message})
            })
            .collect();
        let mut tokens: Vec<(usize, u32)> = Vec::new();
        let mut callouts = Vec::new();
        for (e, &vm) in self.rec.callouts.events().into_iter().zip(order.callouts.iter()) {
            let mut c = match e {
                CalloutEvent::Http(h) => {
                    tokens.push((vm, h.token));
                    json!({
                        "kind": "http", "upstream": h.upstream, "headers": map_json(&h.headers),
                        "body": bytes_json(&h.body), "trailers": map_json(&h.trailers),
                        "timeout_ms": h.timeout.as_millis() as u64,
                    })
                }
                CalloutEvent::GrpcOpen(g) => {
                    tokens.push((vm, g.token));
                    json!({
                        "kind": if g.stream { "grpc_stream" } else { "grpc_call" }, "upstream": g.upstream,
                        "service": g.service, "method": g.method, "initial_metadata": map_json(&g.initial_metadata),
                        "message": bytes_json(&g.message), "timeout_ms": g.timeout.as_millis() as u64,
                    })
                }
                CalloutEvent::Grpc { token, action } => {
                    let call = tokens.iter().position(|t| *t == (vm, token));
                    match action {
                        GrpcAction::Send { message, end_stream } => json!({
                            "kind": "grpc_send", "call": call, "message": bytes_json(&message), "end_stream": end_stream,
                        }),
                        GrpcAction::Cancel => json!({"kind": "grpc_cancel", "call": call}),
                        GrpcAction::Close => json!({"kind": "grpc_close", "call": call}),
                    }
                }
            };
            if self.multi {
                c["vm"] = json!(vm_name(vm));
            }
            callouts.push(c);
        }
        drop(order);
        let metrics: Vec<Value> = self
            .rec
            .services
            .metrics
            .snapshot()
            .into_iter()
            .map(|m| {
                let mut v = json!({"name": m.name, "type": m.kind.as_str(), "value": m.value});
                if let Some(h) = &m.histogram {
                    v["sum"] = json!(h.sum);
                    v["buckets"] =
                        h.buckets().map(|(le, n)| json!([le.map_or_else(|| json!("+Inf"), |b| json!(b)), n])).collect();
                }
                v
            })
            .collect();
        let mut vm_ids: Vec<&str> = Vec::new();
        if self.multi {
            for p in &scenario.plugins {
                if !vm_ids.contains(&p.vm_id.as_str()) {
                    vm_ids.push(&p.vm_id);
                }
            }
        } else {
            vm_ids.push(&scenario.vm_id);
        }
        let mut shared = Vec::new();
        for vm_id in vm_ids {
            for (k, v, cas) in self.rec.services.shared_data.entries(vm_id) {
                let mut e = json!({"key": bytes_json(&k), "value": bytes_json(&v), "cas": cas});
                if self.multi {
                    e["vm_id"] = json!(vm_id);
                }
                shared.push(e);
            }
        }
        let tick = if self.multi {
            let mut periods = serde_json::Map::new();
            for m in &self.members {
                if let Some(slot) = self.vms.get_mut(m.vm)
                    && let Some(d) = slot.plugin.tick_period_for(m.root)
                {
                    periods.insert(m.name.clone(), json!(d.as_millis() as u64));
                }
            }
            Value::Object(periods)
        } else {
            match self.vms.first_mut() {
                Some(slot) => json!(slot.plugin.tick_period().map(|d| d.as_millis() as u64)),
                None => Value::Null,
            }
        };
        json!({
            "logs": logs,
            "callouts": callouts,
            "metrics": metrics,
            "shared_data": shared,
            "tick_period_ms": tick,
        })
    }
}

/// The `stream` field of the events that act on a stream, by reference or by mutable reference
/// (one list for [`event_stream`] and [`stream_mut`]).
macro_rules! stream_field {
    ($ev:expr) => {
        match $ev {
            Event::HttpStream { stream, .. }
            | Event::TcpStream { stream, .. }
            | Event::RequestHeaders { stream, .. }
            | Event::RequestBody { stream, .. }
            | Event::RequestTrailers { stream, .. }
            | Event::ResponseHeaders { stream, .. }
            | Event::ResponseBody { stream, .. }
            | Event::ResponseTrailers { stream, .. }
            | Event::DownstreamData { stream, .. }
            | Event::UpstreamData { stream, .. }
            | Event::DownstreamClose { stream, .. }
            | Event::UpstreamClose { stream, .. }
            | Event::Finish { stream } => Some(stream),
            _ => None,
        }
    };
}

/// The stream name of an event that acts on one, to rename it.
fn stream_mut(ev: &mut Event) -> Option<&mut String> {
    stream_field!(ev)
}

/// The stream an event acts on, if any.
pub(crate) fn event_stream(ev: &Event) -> Option<&str> {
    stream_field!(ev).map(String::as_str)
}
