//! Module loading from arbitrary bytes: detection, validation, instantiation and one request.
//! Anything may fail with an error; nothing may panic or crash the host.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use wasmux::abi::Limits;
use wasmux::{HeaderMap, PluginOptions, Runtime};

fn engine() -> &'static std::sync::Arc<dyn wasmux::abi::WasmEngine> {
    static E: OnceLock<std::sync::Arc<dyn wasmux::abi::WasmEngine>> = OnceLock::new();
    E.get_or_init(|| Runtime::default().engine().expect("engine"))
}

fuzz_target!(|data: &[u8]| {
    let options = PluginOptions {
        limits: Limits { max_memory_bytes: 16 << 20, callback_deadline: Some(Duration::from_millis(50)), ..Limits::default() },
        ..PluginOptions::default()
    };
    let Ok(compiled) = wasmux::CompiledPlugin::new(engine().clone(), data, options) else { return };
    let Ok(mut plugin) = compiled.instantiate() else { return };
    if let Ok(id) = plugin.http_stream() {
        let _ = plugin.request_headers(id, HeaderMap::from_pairs([(":path", "/")]), true);
        let _ = plugin.finish(id);
    }
});
