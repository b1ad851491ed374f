//! Host-call costs on each engine compiled in.
//!
//! - `get_header_map_value`: one `proxy_get_header_map_value` round trip for a small value, as
//!   the guest sees it: the guest calls the host, the host looks the header up, calls the guest
//!   allocator and copies the value in. Measured with a loop inside the guest, so the figure
//!   excludes the host→wasm entry.
//! - `empty_callback`: one host→wasm call of an exported function that does nothing.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use wasmux::{HeaderMap, PluginOptions, Runtime};

/// The benchmark module (also what `wasmux bench` measures).
const MODULE: &str = include_str!("hostcall.wat");

fn bench(c: &mut Criterion) {
    let wasm = wat::parse_str(MODULE).expect("bench module parses");
    // A hand-written wasm module: engines that run native libraries (null) have no build of it.
    for rt in Runtime::available().iter().filter(|r| r.runs_wasm()) {
        // No CPU deadline: one guest loop runs up to 65 536 host calls.
        let options = PluginOptions {
            limits: wasmux::Limits { callback_deadline: None, ..wasmux::Limits::default() },
            ..PluginOptions::default()
        };
        let compiled = rt.load(&wasm, options).expect("loads");
        let mut plugin = compiled.instantiate().expect("instantiates");
        let id = plugin.http_stream().expect("stream");
        let headers = HeaderMap::from_pairs([(":path", "/"), ("x-key", "small-value"), ("accept", "*/*")]);
        plugin.request_headers(id, headers, false).expect("headers");
        let vm = plugin.vm().instance();
        let get = vm.lookup("bench_get").expect("export");
        let empty = vm.lookup("empty").expect("export");
        // Sanity: every call returned OK (0).
        assert_eq!(vm.call(get, &[10]).expect("runs"), Some(0));

        let mut g = c.benchmark_group(format!("{rt}/hostcall"));
        g.measurement_time(Duration::from_secs(3));
        g.bench_function("get_header_map_value", |b| {
            b.iter_custom(|iters| {
                let mut left = iters;
                let start = Instant::now();
                while left > 0 {
                    let n = left.min(1 << 16);
                    vm.call(get, &[n]).expect("runs");
                    left -= n;
                }
                start.elapsed()
            })
        });
        g.bench_function("empty_callback", |b| b.iter(|| vm.call(empty, &[]).expect("runs")));
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
