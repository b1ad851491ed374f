//! What the engine-comparison benches share: fixtures, quiet plugin options, the workloads.
//!
//! Every bench runs the same work on every engine compiled in (`Runtime::available()`), with ids
//! `"{engine}/{group}/{case}"`. An engine that cannot load a fixture (the null engine without
//! native fixture builds, say) is skipped with a note on stderr.

#![allow(dead_code, reason = "each bench binary uses part of this module")]

use std::path::PathBuf;
use std::sync::Arc;

use wasmux::abi::WasmEngine;
use wasmux::abi::services::{LogLine, LogSink};
use wasmux::{CompiledPlugin, HeaderMap, LogLevel, Plugin, PluginOptions, Runtime, Services};

/// A log sink that drops every record: the headers fixture logs on every callback, and the
/// benches measure the host, not a logger.
#[derive(Debug, Default)]
pub(crate) struct DropLog;

impl LogSink for DropLog {
    fn log(&self, _line: &LogLine<'_>) {}
}

/// Plugin options with a dropping log sink, log level info, and `config`.
pub(crate) fn options(config: &[u8]) -> PluginOptions {
    PluginOptions {
        name: "bench".into(),
        plugin_configuration: config.to_vec(),
        log_level: LogLevel::Info,
        services: Services { log: Arc::new(DropLog), ..Services::default() },
        ..PluginOptions::default()
    }
}

/// The fixture directory.
fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../conformance/fixtures")
}

/// The bytes of the committed wasip1 build of a fixture.
pub(crate) fn wasm(name: &str) -> Vec<u8> {
    let path = fixtures().join(format!("wasm/{name}.wasip1.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The bytes `engine` loads for fixture `name`: the wasm module, or for an engine that does
/// not run wasm (null) the path of the native build (`scripts/build-native-fixtures.sh`).
/// `None` (with a note) when neither loads.
pub(crate) fn module_bytes(engine: &dyn WasmEngine, name: &str) -> Option<Vec<u8>> {
    let wasm = wasm(name);
    let Err(err) = engine.compile(&wasm) else { return Some(wasm) };
    let host = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let lib = fixtures().join(format!("target/{host}/release/libfixture_{}.so", name.replace('-', "_")));
    if let Some(path) = lib.to_str()
        && lib.is_file()
    {
        match engine.compile(path.as_bytes()) {
            Ok(_) => return Some(path.as_bytes().to_vec()),
            Err(e) => eprintln!("note: {}: skipping {name}: {e}", engine.name()),
        }
    } else {
        eprintln!("note: {}: skipping {name}: {err}", engine.name());
    }
    None
}

/// Every engine compiled in, each with its engine instance.
pub(crate) fn engines() -> Vec<(Runtime, Arc<dyn WasmEngine>)> {
    Runtime::available().iter().map(|&rt| (rt, rt.engine().expect("engine starts"))).collect()
}

/// Loads fixture `name` on `engine` with `config`; `None` when the engine cannot load it.
pub(crate) fn load(engine: &Arc<dyn WasmEngine>, name: &str, config: &[u8]) -> Option<Arc<CompiledPlugin>> {
    let bytes = module_bytes(&**engine, name)?;
    Some(CompiledPlugin::new(engine.clone(), &bytes, options(config)).expect("fixture loads"))
}

/// The Go filter (`conformance/fixtures/go/`): a 5 MB upstream-Go wasip1 reactor written
/// against the ABI, whose `_initialize` starts the Go runtime.
pub(crate) fn go_filter() -> Vec<u8> {
    let path = fixtures().join("go/go-filter.wasm");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The plugin configuration the benches give the Go filter (JSON, parsed in `proxy_on_configure`).
pub(crate) const GO_CONFIG: &[u8] = br#"{"greeting": "hello from go"}"#;

/// The plugin configuration the benches give bench-json: parsed on every instantiation.
pub(crate) const BENCH_JSON_CONFIG: &[u8] =
    br#"{"header":"x-json-summary","max_depth":16,"redact":["password","token"],"response_headers":{"x-filter":"bench-json"}}"#;

/// One full HTTP request through the headers fixture: create the context, request headers (the
/// filter reads `:path` and adds a header, among others), response headers, then done, log and
/// delete.
pub(crate) fn lifecycle(plugin: &mut Plugin) {
    let id = plugin.http_stream().expect("stream");
    let request = HeaderMap::from_pairs([(":method", "GET"), (":path", "/api"), (":authority", "example.com")]);
    plugin.request_headers(id, request, true).expect("request headers");
    let response = HeaderMap::from_pairs([(":status", "200"), ("content-type", "text/plain")]);
    plugin.response_headers(id, response, true).expect("response headers");
    assert!(plugin.finish(id).expect("finish"), "stream completes");
}

/// One request with a body through the body fixture (chunked mode: the whole body is one
/// chunk, read and written back uppercased).
pub(crate) fn body(plugin: &mut Plugin, body: &[u8]) {
    let id = plugin.http_stream().expect("stream");
    plugin.request_headers(id, HeaderMap::from_pairs([(":path", "/upload")]), false).expect("request headers");
    plugin.request_body(id, body, true).expect("request body");
    assert!(plugin.finish(id).expect("finish"), "stream completes");
}
