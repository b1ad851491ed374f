//! The test harness: a WAT module builder with a fixed memory layout, and a plugin wrapper
//! that reads results back and records which host functions each instance called.
//!
//! Memory layout of every module built here (4 pages, 256 KiB):
//!
//! | range | use |
//! |---|---|
//! | `0x20` | number of `malloc` calls (the allocator counts itself) |
//! | `0x100..0x400` | result slots: slot `i` at `0x100 + 4 i`, pre-filled with `0xEE` bytes |
//! | `0x400..0x500` | counters: counter `i` at `0x400 + 4 i`, zero-initialized |
//! | `0x800..0xC00` | out areas: area `k` at `0x800 + 16 k` (words `a`, `b`, `c`, `d`), `0xEE` bytes |
//! | `0x1000..` | named input data segments |
//! | `0x10000..` | the bump allocator's heap |
//!
//! Module text is plain WAT with a few `{...}` placeholders expanded by [`Wat::text`]:
//! `{name}` is `(i32.const ptr) (i32.const len)` of a data segment, `{name.p}` / `{name.l}` its
//! pointer / length alone; `{oK}` is `(i32.const a) (i32.const b)` of out area `K`, and
//! `{oK.a}` .. `{oK.d}` one of its words; `{bad}` is an out-of-range range
//! `(0xFFFFFFF0, 100)` and `{badp}` the out-of-range pointer alone. Host functions are imported
//! automatically (with the signatures of [`crate::spec::SIGS`]) when the text calls `$name`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use wasmux::abi::services::{
    ForeignFunctions, InMemoryMetrics, InMemoryQueues, InMemorySharedData, LogRecord, ManualClock, ManualTimers,
    MemoryLog, RecordingCallouts, StaticProperties,
};
use wasmux::abi::{HttpStreamState, Status, TcpStreamState, Vm, WasmEngine};
use wasmux::{AbiVersion, CompiledPlugin, LogLevel, Plugin, PluginOptions, Runtime, Services};

use crate::spec;

pub(crate) const MALLOCS: u32 = 0x20;
pub(crate) const RES: u32 = 0x100;
pub(crate) const CNT: u32 = 0x400;
pub(crate) const OUT: u32 = 0x800;
pub(crate) const OUT_AREAS: u32 = 64;
pub(crate) const DATA: u32 = 0x1000;
pub(crate) const HEAP: u32 = 0x10000;
pub(crate) const PAGES: u32 = 4;
pub(crate) const MEM_END: u32 = PAGES * 0x10000;
/// What untouched result slots and out words read as.
pub(crate) const SENTINEL: u32 = 0xEEEE_EEEE;

/// Host functions called, per ABI version, by every instance any test created.
static COVERAGE: Mutex<BTreeSet<(AbiVersion, &'static str)>> = Mutex::new(BTreeSet::new());

pub(crate) fn coverage() -> BTreeSet<(AbiVersion, &'static str)> {
    COVERAGE.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

fn record_coverage(v: AbiVersion, names: Vec<&'static str>) {
    let mut set = COVERAGE.lock().unwrap_or_else(PoisonError::into_inner);
    set.extend(names.into_iter().map(|n| (v, n)));
}

/// One engine for the whole test binary (compiles stay cheap; one epoch thread).
pub(crate) fn engine() -> Arc<dyn WasmEngine> {
    static ENGINE: OnceLock<Arc<dyn WasmEngine>> = OnceLock::new();
    ENGINE.get_or_init(|| Runtime::default().engine().expect("wasmtime engine")).clone()
}

/// Escapes bytes for a WAT string literal.
pub(crate) fn wat_string(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3 + 2);
    s.push('"');
    for b in bytes {
        s.push_str(&format!("\\{b:02x}"));
    }
    s.push('"');
    s
}

/// The export signature of a callback, written from the spec: (params, has result).
fn callback_sig(v: AbiVersion, name: &str) -> (usize, bool) {
    match name {
        "proxy_on_context_create" | "proxy_on_queue_ready" => (2, false),
        "proxy_on_downstream_connection_close" | "proxy_on_upstream_connection_close" => (2, false),
        "proxy_on_vm_start" | "proxy_on_configure" => (2, true),
        "proxy_on_tick" | "proxy_on_log" | "proxy_on_delete" => (1, false),
        "proxy_on_done" | "proxy_on_new_connection" => (1, true),
        "proxy_on_foreign_function"
        | "proxy_on_grpc_receive_initial_metadata"
        | "proxy_on_grpc_receive"
        | "proxy_on_grpc_receive_trailing_metadata"
        | "proxy_on_grpc_close" => (3, false),
        "proxy_on_request_headers" | "proxy_on_response_headers" => (if v == AbiVersion::V0_1_0 { 2 } else { 3 }, true),
        "proxy_on_request_body" | "proxy_on_response_body" | "proxy_on_downstream_data" | "proxy_on_upstream_data" => {
            (3, true)
        }
        "proxy_on_request_trailers" | "proxy_on_response_trailers" => (2, true),
        "proxy_on_http_call_response" => (5, false),
        other => panic!("no callback signature for {other}"),
    }
}

/// A WAT module under construction.
#[derive(Debug, Clone)]
pub(crate) struct Wat {
    pub(crate) v: AbiVersion,
    data: Vec<(String, u32, Vec<u8>)>,
    next: u32,
    funcs: String,
    raw_imports: Vec<String>,
    marker: bool,
    malloc: bool,
    memory: bool,
}

impl Wat {
    pub(crate) fn new(v: AbiVersion) -> Self {
        Self {
            v,
            data: Vec::new(),
            next: DATA,
            funcs: String::new(),
            raw_imports: Vec::new(),
            marker: true,
            malloc: true,
            memory: true,
        }
    }

    /// Adds a named data segment (8-byte aligned).
    pub(crate) fn data(mut self, name: &str, bytes: impl AsRef<[u8]>) -> Self {
        let bytes = bytes.as_ref().to_vec();
        assert!(!self.data.iter().any(|(n, _, _)| n == name), "duplicate data name {name}");
        let reserved = name == "bad"
            || name == "badp"
            || (name.starts_with('o') && name[1..].starts_with(|c: char| c.is_ascii_digit()));
        assert!(!reserved, "data name {name} collides with a built-in placeholder");
        let at = self.next;
        self.next = (at + bytes.len() as u32 + 8) & !7;
        assert!(self.next < HEAP, "data area overflow");
        self.data.push((name.to_string(), at, bytes));
        self
    }

    /// Address and length of a data segment.
    pub(crate) fn addr(&self, name: &str) -> (u32, u32) {
        let (_, at, b) = self.data.iter().find(|(n, _, _)| n == name).unwrap_or_else(|| panic!("no data {name}"));
        (*at, b.len() as u32)
    }

    /// Appends raw module fields (functions, globals...).
    pub(crate) fn func(mut self, text: &str) -> Self {
        self.funcs.push_str(text);
        self.funcs.push('\n');
        self
    }

    /// Adds an exported callback with the version's signature; `body` must leave an `i32` when
    /// the callback returns one.
    pub(crate) fn cb(self, name: &str, body: &str) -> Self {
        let (n, result) = callback_sig(self.v, name);
        let params = if n == 0 { String::new() } else { format!("(param{})", " i32".repeat(n)) };
        let result = if result { "(result i32)" } else { "" };
        let text = format!("(func (export \"{name}\") {params} {result}\n{body}\n)");
        self.func(&text)
    }

    /// An extra import line, verbatim.
    pub(crate) fn import(mut self, line: &str) -> Self {
        self.raw_imports.push(line.to_string());
        self
    }

    pub(crate) fn without_marker(mut self) -> Self {
        self.marker = false;
        self
    }

    pub(crate) fn without_malloc(mut self) -> Self {
        self.malloc = false;
        self
    }

    pub(crate) fn without_memory(mut self) -> Self {
        self.memory = false;
        self
    }

    fn expand(&self, text: &str) -> String {
        let mut t = text.replace("{bad}", "(i32.const -16) (i32.const 100)").replace("{badp}", "(i32.const -16)");
        if t.contains("{o") {
            for k in 0..OUT_AREAS {
                let a = OUT + 16 * k;
                t = t
                    .replace(&format!("{{o{k}}}"), &format!("(i32.const {a}) (i32.const {})", a + 4))
                    .replace(&format!("{{o{k}.a}}"), &format!("(i32.const {a})"))
                    .replace(&format!("{{o{k}.b}}"), &format!("(i32.const {})", a + 4))
                    .replace(&format!("{{o{k}.c}}"), &format!("(i32.const {})", a + 8))
                    .replace(&format!("{{o{k}.d}}"), &format!("(i32.const {})", a + 12));
            }
        }
        for (name, at, bytes) in &self.data {
            let len = bytes.len();
            t = t
                .replace(&format!("{{{name}}}"), &format!("(i32.const {at}) (i32.const {len})"))
                .replace(&format!("{{{name}.p}}"), &format!("(i32.const {at})"))
                .replace(&format!("{{{name}.l}}"), &format!("(i32.const {len})"));
        }
        if let Some(i) = t.find('{') {
            let end = (i + 40).min(t.len());
            panic!("unexpanded placeholder near `{}`", &t[i..end]);
        }
        t
    }

    /// The whole module text.
    pub(crate) fn text(&self) -> String {
        let funcs = self.expand(&self.funcs);
        let mut m = String::from("(module\n");
        for (module, name, params, result, _) in spec::SIGS {
            let used = funcs.contains(&format!("${name} ")) || funcs.contains(&format!("${name})"));
            if used {
                m.push_str(&format!(
                    "  (import \"{module}\" \"{name}\" (func ${name} {}))\n",
                    spec::wat_type(params, *result)
                ));
            }
        }
        for line in &self.raw_imports {
            m.push_str(line);
            m.push('\n');
        }
        if self.memory {
            m.push_str(&format!("  (memory (export \"memory\") {PAGES})\n"));
        } else {
            m.push_str(&format!("  (memory {PAGES})\n"));
        }
        m.push_str(&format!("  (global $heap (mut i32) (i32.const {HEAP}))\n"));
        if self.malloc {
            m.push_str(&format!(
                "  (func (export \"malloc\") (param $n i32) (result i32) (local $p i32)
    (i32.store (i32.const {MALLOCS}) (i32.add (i32.load (i32.const {MALLOCS})) (i32.const 1)))
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (global.get $heap) (local.get $n)) (i32.const 7)) (i32.const -8)))
    (local.get $p))\n"
            ));
        }
        if self.marker {
            m.push_str(&format!("  (func (export \"{}\"))\n", self.v.marker()));
        }
        m.push_str(&format!(
            "  (func $st (param $i i32) (param $v i32)
    (i32.store (i32.add (i32.const {RES}) (i32.shl (local.get $i) (i32.const 2))) (local.get $v)))
  (func $ld (param $i i32) (result i32)
    (i32.load (i32.add (i32.const {RES}) (i32.shl (local.get $i) (i32.const 2)))))
  (func $cnt (param $i i32) (result i32)
    (i32.load (i32.add (i32.const {CNT}) (i32.shl (local.get $i) (i32.const 2)))))
  (func $bump (param $i i32)
    (i32.store (i32.add (i32.const {CNT}) (i32.shl (local.get $i) (i32.const 2)))
      (i32.add (call $cnt (local.get $i)) (i32.const 1))))
  (func $mallocs (result i32) (i32.load (i32.const {MALLOCS})))
"
        ));
        m.push_str(&format!("  (data (i32.const {RES}) {})\n", wat_string(&[0xEE; (CNT - RES) as usize])));
        m.push_str(&format!("  (data (i32.const {OUT}) {})\n", wat_string(&[0xEE; (OUT_AREAS * 16) as usize])));
        for (_, at, bytes) in &self.data {
            if !bytes.is_empty() {
                m.push_str(&format!("  (data (i32.const {at}) {})\n", wat_string(bytes)));
            }
        }
        m.push_str(&funcs);
        m.push_str(")\n");
        m
    }

    pub(crate) fn bytes(&self) -> Vec<u8> {
        let text = self.text();
        wat::parse_str(&text).unwrap_or_else(|e| panic!("WAT does not parse: {e}\n{text}"))
    }
}

/// The embedder services of a test, kept so the test can inspect them.
#[derive(Debug, Clone)]
pub(crate) struct Env {
    pub(crate) log: Arc<MemoryLog>,
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) props: Arc<StaticProperties>,
    pub(crate) shared: Arc<InMemorySharedData>,
    pub(crate) queues: Arc<InMemoryQueues>,
    pub(crate) metrics: Arc<InMemoryMetrics>,
    pub(crate) timers: Arc<ManualTimers>,
    pub(crate) callouts: Arc<RecordingCallouts>,
    pub(crate) foreign: Arc<ForeignFunctions>,
}

pub(crate) const CLOCK_START: u64 = 1_700_000_000_123_456_789;

impl Default for Env {
    fn default() -> Self {
        let mut foreign = ForeignFunctions::default();
        foreign.register("hc_fail", |_| Err(Status::InternalFailure));
        Self {
            log: Arc::default(),
            clock: Arc::new(ManualClock::new(CLOCK_START)),
            props: Arc::default(),
            shared: Arc::default(),
            queues: Arc::default(),
            metrics: Arc::default(),
            timers: Arc::default(),
            callouts: Arc::default(),
            foreign: Arc::new(foreign),
        }
    }
}

impl Env {
    pub(crate) fn services(&self) -> Services {
        Services {
            log: self.log.clone(),
            clock: self.clock.clone(),
            properties: self.props.clone(),
            shared_data: self.shared.clone(),
            queues: self.queues.clone(),
            metrics: self.metrics.clone(),
            timers: self.timers.clone(),
            callouts: self.callouts.clone(),
            foreign: self.foreign.clone(),
        }
    }

    pub(crate) fn logs(&self) -> Vec<LogRecord> {
        self.log.records()
    }

    /// (level, message) of every log line so far.
    pub(crate) fn lines(&self) -> Vec<(LogLevel, String)> {
        self.logs().into_iter().map(|r| (r.level, r.message)).collect()
    }
}

pub(crate) fn options(env: &Env) -> PluginOptions {
    PluginOptions {
        name: "hc-plugin".into(),
        root_id: "hc-root".into(),
        vm_id: "hc-vm".into(),
        log_level: LogLevel::Trace,
        services: env.services(),
        ..PluginOptions::default()
    }
}

/// Compiles and checks a module on the shared engine with the test options.
pub(crate) fn load(
    wat: &Wat,
    env: &Env,
    tweak: impl FnOnce(&mut PluginOptions),
) -> wasmux::Result<Arc<CompiledPlugin>> {
    let mut o = options(env);
    tweak(&mut o);
    CompiledPlugin::new(engine(), &wat.bytes(), o)
}

/// A running plugin plus its services. Records its coverage when dropped.
#[derive(Debug)]
pub(crate) struct H {
    pub(crate) v: AbiVersion,
    pub(crate) plugin: Plugin,
    pub(crate) env: Env,
}

impl Drop for H {
    fn drop(&mut self) {
        let names = self.plugin.vm().coverage();
        record_coverage(self.v, names);
    }
}

impl H {
    pub(crate) fn new(wat: &Wat) -> Self {
        Self::with(wat, Env::default(), |_| {})
    }

    pub(crate) fn with(wat: &Wat, env: Env, tweak: impl FnOnce(&mut PluginOptions)) -> Self {
        let compiled = load(wat, &env, tweak).unwrap_or_else(|e| panic!("load failed: {e}"));
        let plugin = compiled.instantiate().unwrap_or_else(|e| panic!("instantiate failed: {e}"));
        Self { v: wat.v, plugin, env }
    }

    /// Another instance of the same compiled plugin (same services).
    pub(crate) fn another(&self) -> Self {
        let plugin = self.plugin.compiled().instantiate().expect("second instance");
        Self { v: self.v, plugin, env: self.env.clone() }
    }

    pub(crate) fn vm(&mut self) -> &mut Vm {
        self.plugin.vm()
    }

    pub(crate) fn root(&self) -> u32 {
        self.plugin.root_context()
    }

    pub(crate) fn stream(&mut self) -> u32 {
        self.plugin.http_stream().expect("http stream")
    }

    pub(crate) fn http(&mut self, id: u32) -> HttpStreamState {
        self.vm().http(id).expect("http stream state").clone()
    }

    pub(crate) fn tcp(&mut self, id: u32) -> TcpStreamState {
        self.vm().tcp(id).expect("tcp stream state").clone()
    }

    pub(crate) fn tick(&mut self) {
        let root = self.root();
        self.vm().on_tick(root).expect("on_tick");
    }

    pub(crate) fn read(&mut self, ptr: u32, len: u32) -> Vec<u8> {
        let mut buf = vec![0; len as usize];
        self.vm().instance().read(u64::from(ptr), &mut buf).unwrap_or_else(|_| panic!("read {ptr:#x}+{len}"));
        buf
    }

    pub(crate) fn u32_at(&mut self, addr: u32) -> u32 {
        let b = self.read(addr, 4);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    pub(crate) fn u64_at(&mut self, addr: u32) -> u64 {
        let b = self.read(addr, 8);
        u64::from_le_bytes(b.try_into().expect("8 bytes"))
    }

    pub(crate) fn slot(&mut self, i: u32) -> u32 {
        self.u32_at(RES + 4 * i)
    }

    pub(crate) fn slots(&mut self, from: u32, n: u32) -> Vec<u32> {
        (from..from + n).map(|i| self.slot(i)).collect()
    }

    pub(crate) fn counter(&mut self, i: u32) -> u32 {
        self.u32_at(CNT + 4 * i)
    }

    /// Words `a` and `b` of out area `k`.
    pub(crate) fn out(&mut self, k: u32) -> (u32, u32) {
        (self.u32_at(OUT + 16 * k), self.u32_at(OUT + 16 * k + 4))
    }

    pub(crate) fn out_word(&mut self, k: u32, word: u32) -> u32 {
        self.u32_at(OUT + 16 * k + 4 * word)
    }

    pub(crate) fn out_u64(&mut self, k: u32) -> u64 {
        self.u64_at(OUT + 16 * k)
    }

    /// The buffer a host function returned through out area `k` (`(ptr, len)` in words `a`,
    /// `b`). An empty result must be exactly `(0, 0)`; a non-empty one must lie in the heap.
    pub(crate) fn out_bytes(&mut self, k: u32) -> Vec<u8> {
        let (p, l) = self.out(k);
        assert_ne!((p, l), (SENTINEL, SENTINEL), "out area {k} was never written");
        if l == 0 {
            assert_eq!(p, 0, "empty result in out area {k} must be (0, 0)");
            return Vec::new();
        }
        assert!(p >= HEAP && p + l <= MEM_END, "out area {k}: ({p:#x}, {l}) is not a heap block");
        self.read(p, l)
    }

    pub(crate) fn out_str(&mut self, k: u32) -> String {
        String::from_utf8(self.out_bytes(k)).expect("utf-8")
    }

    /// Asserts that out area `k` was left untouched.
    pub(crate) fn out_untouched(&mut self, k: u32) {
        assert_eq!(self.out(k), (SENTINEL, SENTINEL), "out area {k} should be untouched");
    }
}

/// Serializes a header map in the proxy-wasm pairs format (written independently of the
/// library's encoder).
pub(crate) fn pairs(items: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = (items.len() as u32).to_le_bytes().to_vec();
    for (k, v) in items {
        out.extend((k.len() as u32).to_le_bytes());
        out.extend((v.len() as u32).to_le_bytes());
    }
    for (k, v) in items {
        out.extend(k.as_bytes());
        out.push(0);
        out.extend(*v);
        out.push(0);
    }
    out
}

/// Same, for string values.
pub(crate) fn spairs(items: &[(&str, &str)]) -> Vec<u8> {
    let v: Vec<(&str, &[u8])> = items.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    pairs(&v)
}

/// Parses the pairs format (independent of the library's decoder).
pub(crate) fn unpairs(buf: &[u8]) -> Vec<(String, Vec<u8>)> {
    if buf.is_empty() {
        return Vec::new();
    }
    let word = |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().expect("word")) as usize;
    let n = word(0);
    let mut at = 4 + 8 * n;
    let mut out = Vec::new();
    for i in 0..n {
        let (kl, vl) = (word(4 + 8 * i), word(8 + 8 * i));
        let k = String::from_utf8(buf[at..at + kl].to_vec()).expect("utf-8 key");
        assert_eq!(buf[at + kl], 0, "key NUL");
        at += kl + 1;
        let v = buf[at..at + vl].to_vec();
        assert_eq!(buf[at + vl], 0, "value NUL");
        at += vl + 1;
        out.push((k, v));
    }
    assert_eq!(at, buf.len(), "no trailing bytes");
    out
}

/// `(name, value)` string pairs of a header map.
pub(crate) fn entries(m: &wasmux::HeaderMap) -> Vec<(String, String)> {
    m.iter().map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned())).collect()
}

pub(crate) fn owned(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub(crate) fn headers(items: &[(&str, &str)]) -> wasmux::HeaderMap {
    wasmux::HeaderMap::from_pairs(items.iter().copied())
}

/// `(call $st (i32.const i) expr)`.
pub(crate) fn st(i: u32, expr: &str) -> String {
    format!("(call $st (i32.const {i}) {expr})\n")
}
