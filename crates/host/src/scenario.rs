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
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use wasmux_abi::services::{CalloutEvent, GrpcAction, ManualClock, MemoryLog, RecordingCallouts, StaticProperties};
use wasmux_abi::{Error, HeaderMap, HttpCallResponse, LogLevel, PeerType, Services, StreamControl};

use crate::{CompiledPlugin, FailurePolicy, Plugin, PluginOptions, Runtime};

/// Bytes in a scenario: text, or hex for binary data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
            Err(_) => Self::Hex { hex: b.iter().map(|x| format!("{x:02x}")).collect() },
        }
    }
}

/// Values larger than this appear in records by length and SHA-256 only.
pub const RECORD_BYTES_INLINE: usize = 1 << 20;

fn bytes_json(b: &[u8]) -> Value {
    if b.len() > RECORD_BYTES_INLINE {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(b);
        let hex: String = digest.iter().map(|x| format!("{x:02x}")).collect();
        return json!({"len": b.len(), "sha256": hex});
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
    /// The events, in order.
    pub events: Vec<Event>,
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
    Tick,
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
    },
    /// Enqueue an item on a shared queue from the host side.
    Enqueue {
        /// Queue name (in the scenario's VM id).
        queue: String,
        /// Item.
        item: Bytes,
    },
    /// Shut the plugin down: done, log, delete on the root context.
    Shutdown,
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

/// Runs a scenario on an engine and returns the record.
///
/// # Errors
/// A scenario the runner cannot use, or a module that does not load (compile or compatibility
/// errors). Filter failures after loading are part of the record, not errors.
pub fn run(runtime: Runtime, wasm: &[u8], scenario: &Scenario) -> Result<Value, ScenarioError> {
    run_cached(runtime, wasm, scenario, None)
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
            CannedForeign::Status(code) => Err(wasmux_abi::Status::from_code(*code)
                .filter(|s| *s != wasmux_abi::Status::Ok)
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
    let rec = Recorder { log, callouts, clock, services: services.clone() };
    let level = scenario.log_level.as_deref().unwrap_or("trace");
    let limits = scenario.limits.to_limits();
    let options = PluginOptions {
        name: scenario.plugin_name.clone().unwrap_or_else(|| "plugin".into()),
        root_id: scenario.root_id.clone(),
        vm_id: scenario.vm_id.clone(),
        vm_configuration: scenario.vm_config.to_vec().map_err(invalid)?,
        plugin_configuration: scenario.plugin_config.to_vec().map_err(invalid)?,
        environment: scenario.environment.clone().into_iter().collect(),
        log_level: LogLevel::parse(level).ok_or_else(|| invalid(format!("unknown log level `{level}`")))?,
        limits,
        failure_policy: FailurePolicy::FailClosed,
        services,
        max_callout_timeout: scenario
            .limits
            .max_callout_timeout_ms
            .map_or(wasmux_abi::VmEnv::DEFAULT_MAX_CALLOUT_TIMEOUT, Duration::from_millis),
    };
    for (k, v) in &scenario.shared_data {
        let value = v.to_vec().map_err(invalid)?;
        let quotas = &options.limits.quotas;
        if let Err(e) = options.services.shared_data.set(&options.vm_id, k.as_bytes(), &value, 0, quotas) {
            return Err(invalid(format!("initial shared data `{k}`: {e:?}")));
        }
    }
    let compiled = match cache {
        Some(cache) => runtime.load_cached(wasm, options, cache)?,
        None => runtime.load(wasm, options)?,
    };
    let abi = compiled.info().abi;
    let mut out = json!({ "engine": runtime.name(), "abi_version": abi.as_str() });
    match compiled.instantiate() {
        Ok(plugin) => {
            out["start"] = json!("ok");
            let body = Runner {
                plugin,
                rec: &rec,
                names: BTreeMap::new(),
                events: Vec::new(),
                finished: BTreeMap::new(),
                snapshots: BTreeMap::new(),
            }
            .run(scenario, &compiled)?;
            merge(&mut out, body);
        }
        Err(e) => {
            out["start"] = error_json(&e);
            merge(&mut out, record_common(&rec, None, &BTreeMap::new(), scenario));
        }
    }
    Ok(out)
}

fn merge(out: &mut Value, more: Value) {
    if let (Value::Object(o), Value::Object(m)) = (out, more) {
        o.extend(m);
    }
}

struct Runner<'a> {
    plugin: Plugin,
    rec: &'a Recorder,
    /// stream name -> context id
    names: BTreeMap<String, u32>,
    events: Vec<Value>,
    /// stream name -> finished state
    finished: BTreeMap<String, Value>,
    /// stream name -> state captured just before it was finished
    snapshots: BTreeMap<String, Value>,
}

impl Runner<'_> {
    fn id(&self, name: &str) -> Result<u32, ScenarioError> {
        self.names.get(name).copied().ok_or_else(|| invalid(format!("unknown stream `{name}`")))
    }

    /// Callout tokens in dispatch order: index `n` is the scenario's callout number `n`.
    fn callout_tokens(&self) -> Vec<u32> {
        self.rec
            .callouts
            .events()
            .iter()
            .filter_map(|e| match e {
                CalloutEvent::Http(h) => Some(h.token),
                CalloutEvent::GrpcOpen(g) => Some(g.token),
                CalloutEvent::Grpc { .. } => None,
            })
            .collect()
    }

    fn call_index(&self, token: u32) -> Option<usize> {
        self.callout_tokens().iter().position(|t| *t == token)
    }

    fn token(&self, call: usize) -> Result<u32, ScenarioError> {
        self.callout_tokens()
            .get(call)
            .copied()
            .ok_or_else(|| invalid(format!("no callout number {call} was dispatched")))
    }

    fn run(mut self, scenario: &Scenario, _compiled: &Arc<CompiledPlugin>) -> Result<Value, ScenarioError> {
        for ev in &scenario.events {
            let name = serde_json::to_value(ev)?["event"].clone();
            let mut entry = json!({ "event": name });
            let result = self.step(ev, &mut entry)?;
            match result {
                Ok(Some(action)) => entry["action"] = json!(action),
                Ok(None) => {}
                Err(e) => entry["error"] = error_json(&e),
            }
            // A trap the failure policy answered is named on the event that hit it.
            if let Some(t) = self.plugin.take_trap() {
                entry["trap"] = json!({"kind": t.kind.as_str(), "export": t.export});
            }
            self.events.push(entry);
        }
        let mut body = record_common(self.rec, Some(&mut self.plugin), &self.names, scenario);
        body["events"] = Value::Array(self.events);
        let quota: serde_json::Map<String, Value> =
            self.plugin.quota_counts().iter().map(|(q, n)| (q.as_str().to_string(), json!(n))).collect();
        if !quota.is_empty() {
            body["quota"] = Value::Object(quota);
        }
        let mut coverage = self.plugin.vm().coverage();
        coverage.sort_unstable();
        body["coverage"] = json!(coverage);
        let mut streams = serde_json::Map::new();
        for (name, id) in &self.names {
            let mut st = stream_json(self.plugin.vm(), *id)
                .or_else(|| self.snapshots.get(name).cloned())
                .unwrap_or_else(|| json!({}));
            st["finished"] = self.finished.get(name).cloned().unwrap_or(json!(false));
            streams.insert(name.clone(), st);
        }
        body["streams"] = Value::Object(streams);
        Ok(body)
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
    fn step(&mut self, ev: &Event, entry: &mut Value) -> Result<Step, ScenarioError> {
        let bytes = |b: &Bytes| b.to_vec().map_err(invalid);
        let p = &mut self.plugin;
        Ok(match ev {
            Event::HttpStream { stream } => {
                entry["stream"] = json!(stream);
                if self.names.contains_key(stream) {
                    return Err(invalid(format!("stream `{stream}` already exists")));
                }
                match p.http_stream() {
                    Ok(id) => {
                        self.names.insert(stream.clone(), id);
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            }
            Event::TcpStream { stream } => {
                entry["stream"] = json!(stream);
                if self.names.contains_key(stream) {
                    return Err(invalid(format!("stream `{stream}` already exists")));
                }
                match p.tcp_stream() {
                    Ok((id, a)) => {
                        self.names.insert(stream.clone(), id);
                        Ok(Some(a.name()))
                    }
                    Err(e) => Err(e),
                }
            }
            Event::RequestHeaders { stream, headers, end_of_stream } => {
                entry["stream"] = json!(stream);
                let (id, m) = (self.id(stream)?, to_map(headers).map_err(invalid)?);
                action(self.plugin.request_headers(id, m, *end_of_stream))
            }
            Event::RequestBody { stream, data, end_of_stream } => {
                entry["stream"] = json!(stream);
                let id = self.id(stream)?;
                action(self.plugin.request_body(id, &bytes(data)?, *end_of_stream))
            }
            Event::RequestTrailers { stream, trailers } => {
                entry["stream"] = json!(stream);
                let (id, m) = (self.id(stream)?, to_map(trailers).map_err(invalid)?);
                action(self.plugin.request_trailers(id, m))
            }
            Event::ResponseHeaders { stream, headers, end_of_stream } => {
                entry["stream"] = json!(stream);
                let (id, m) = (self.id(stream)?, to_map(headers).map_err(invalid)?);
                action(self.plugin.response_headers(id, m, *end_of_stream))
            }
            Event::ResponseBody { stream, data, end_of_stream } => {
                entry["stream"] = json!(stream);
                let id = self.id(stream)?;
                action(self.plugin.response_body(id, &bytes(data)?, *end_of_stream))
            }
            Event::ResponseTrailers { stream, trailers } => {
                entry["stream"] = json!(stream);
                let (id, m) = (self.id(stream)?, to_map(trailers).map_err(invalid)?);
                action(self.plugin.response_trailers(id, m))
            }
            Event::DownstreamData { stream, data, end_of_stream } => {
                entry["stream"] = json!(stream);
                let id = self.id(stream)?;
                action(self.plugin.downstream_data(id, &bytes(data)?, *end_of_stream))
            }
            Event::UpstreamData { stream, data, end_of_stream } => {
                entry["stream"] = json!(stream);
                let id = self.id(stream)?;
                action(self.plugin.upstream_data(id, &bytes(data)?, *end_of_stream))
            }
            Event::DownstreamClose { stream, peer: pt } => {
                entry["stream"] = json!(stream);
                let id = self.id(stream)?;
                unit(self.plugin.downstream_close(id, peer(pt)?))
            }
            Event::UpstreamClose { stream, peer: pt } => {
                entry["stream"] = json!(stream);
                let id = self.id(stream)?;
                unit(self.plugin.upstream_close(id, peer(pt)?))
            }
            Event::Finish { stream } => {
                entry["stream"] = json!(stream);
                let id = self.id(stream)?;
                if let Some(s) = stream_json(self.plugin.vm(), id) {
                    self.snapshots.insert(stream.clone(), s);
                }
                match self.plugin.finish(id) {
                    Ok(done) => {
                        self.finished.insert(stream.clone(), json!(if done { "done" } else { "deferred" }));
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            }
            Event::HttpCallResponse { call, headers, body, trailers, failed } => {
                entry["call"] = json!(call);
                let token = self.token(*call)?;
                let resp = if *failed {
                    None
                } else {
                    Some(HttpCallResponse {
                        headers: to_map(headers).map_err(invalid)?,
                        body: bytes(body)?,
                        trailers: to_map(trailers).map_err(invalid)?,
                    })
                };
                unit(self.plugin.http_call_response(token, resp))
            }
            Event::GrpcInitialMetadata { call, metadata } => {
                entry["call"] = json!(call);
                let (token, m) = (self.token(*call)?, to_map(metadata).map_err(invalid)?);
                unit(self.plugin.vm().on_grpc_initial_metadata(token, m))
            }
            Event::GrpcMessage { call, message } => {
                entry["call"] = json!(call);
                let token = self.token(*call)?;
                unit(self.plugin.vm().on_grpc_message(token, bytes(message)?))
            }
            Event::GrpcTrailingMetadata { call, metadata } => {
                entry["call"] = json!(call);
                let (token, m) = (self.token(*call)?, to_map(metadata).map_err(invalid)?);
                unit(self.plugin.vm().on_grpc_trailing_metadata(token, m))
            }
            Event::GrpcClose { call, status, message } => {
                entry["call"] = json!(call);
                let token = self.token(*call)?;
                unit(self.plugin.vm().on_grpc_close(token, *status, message))
            }
            Event::Tick => unit(self.plugin.tick()),
            Event::AdvanceClock { ms } => {
                // Moving time expires callouts whose timeout has passed.
                self.rec.clock.advance(Duration::from_millis(*ms));
                match self.plugin.poll() {
                    Ok(tokens) => {
                        let calls: Vec<usize> = tokens.iter().filter_map(|t| self.call_index(*t)).collect();
                        if !calls.is_empty() {
                            entry["expired_calls"] = json!(calls);
                        }
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            }
            Event::ForeignFunction { function_id, args } => {
                let root = self.plugin.root_context();
                unit(self.plugin.vm().on_foreign_function(root, *function_id, bytes(args)?))
            }
            Event::Enqueue { queue, item } => {
                let q = &self.rec.services.queues;
                let Some(id) = q.resolve(&self.plugin.compiled().options().vm_id, queue.as_bytes()) else {
                    return Err(invalid(format!("no shared queue named `{queue}`")));
                };
                let r = q.enqueue(id, &bytes(item)?, &self.plugin.compiled().options().limits.quotas);
                if let Err(s) = r {
                    return Err(invalid(format!("enqueue failed: {s:?}")));
                }
                unit(self.plugin.vm().poll())
            }
            Event::Shutdown => {
                let root = self.plugin.root_context();
                match self.plugin.vm().finish(root) {
                    Ok(done) => Ok(Some(if done { "done" } else { "deferred" }.into())),
                    Err(e) => Err(e),
                }
            }
        })
    }
}

/// Logs, callouts, metrics, shared data and the tick period.
fn record_common(
    rec: &Recorder,
    plugin: Option<&mut Plugin>,
    names: &BTreeMap<String, u32>,
    scenario: &Scenario,
) -> Value {
    let mut ctx_names: BTreeMap<u32, String> = names.iter().map(|(n, id)| (*id, n.clone())).collect();
    let mut tick = Value::Null;
    if let Some(p) = plugin {
        ctx_names.insert(p.root_context(), "root".into());
        tick = json!(p.tick_period().map(|d| d.as_millis() as u64));
    }
    // The first context is always the plugin's root context, also when start-up failed.
    ctx_names.entry(1).or_insert_with(|| "root".into());
    ctx_names.insert(0, "vm".into());
    let logs: Vec<Value> = rec
        .log
        .records()
        .iter()
        .map(|r| {
            let ctx = ctx_names.get(&r.context_id).cloned().unwrap_or_else(|| format!("#{}", r.context_id));
            json!({"level": r.level.as_str(), "context": ctx, "message": r.message})
        })
        .collect();
    let mut tokens: Vec<u32> = Vec::new();
    let mut callouts = Vec::new();
    for e in rec.callouts.events() {
        match e {
            CalloutEvent::Http(h) => {
                tokens.push(h.token);
                callouts.push(json!({
                    "kind": "http", "upstream": h.upstream, "headers": map_json(&h.headers),
                    "body": bytes_json(&h.body), "trailers": map_json(&h.trailers),
                    "timeout_ms": h.timeout.as_millis() as u64,
                }));
            }
            CalloutEvent::GrpcOpen(g) => {
                tokens.push(g.token);
                callouts.push(json!({
                    "kind": if g.stream { "grpc_stream" } else { "grpc_call" }, "upstream": g.upstream,
                    "service": g.service, "method": g.method, "initial_metadata": map_json(&g.initial_metadata),
                    "message": bytes_json(&g.message), "timeout_ms": g.timeout.as_millis() as u64,
                }));
            }
            CalloutEvent::Grpc { token, action } => {
                let call = tokens.iter().position(|t| *t == token);
                callouts.push(match action {
                    GrpcAction::Send { message, end_stream } => json!({
                        "kind": "grpc_send", "call": call, "message": bytes_json(&message), "end_stream": end_stream,
                    }),
                    GrpcAction::Cancel => json!({"kind": "grpc_cancel", "call": call}),
                    GrpcAction::Close => json!({"kind": "grpc_close", "call": call}),
                });
            }
        }
    }
    let metrics: Vec<Value> = rec
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
    let shared: Vec<Value> = rec
        .services
        .shared_data
        .entries(&scenario.vm_id)
        .into_iter()
        .map(|(k, v, cas)| json!({"key": bytes_json(&k), "value": bytes_json(&v), "cas": cas}))
        .collect();
    json!({
        "logs": logs,
        "callouts": callouts,
        "metrics": metrics,
        "shared_data": shared,
        "tick_period_ms": tick,
    })
}
