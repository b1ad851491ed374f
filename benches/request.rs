//! Per-request cost of the `headers` conformance fixture on each engine compiled in.
//!
//! One iteration is a whole HTTP stream: create the context, request headers, response headers,
//! then done/log/delete, with the filter's hostcalls (header reads, adds, replaces, removes,
//! pair serialization, logs below the host level). Building the input header maps is the
//! embedder's work and stays outside the measurement (`iter_batched`). Wasm engines run
//! `conformance/fixtures/wasm/headers.wasip1.wasm`; the null engine runs the same source built
//! natively (`scripts/build-native-fixtures.sh`).
//!
//! `cargo bench -p wasmux-benches --features null --bench request`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use wasmux::{Action, HeaderMap, Plugin, PluginOptions, Runtime};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../conformance/fixtures")
}

/// What the engine loads: the wasm module, or the path of the native library.
fn module(rt: Runtime) -> Option<Vec<u8>> {
    if rt.runs_wasm() {
        return Some(std::fs::read(fixtures().join("wasm/headers.wasip1.wasm")).expect("fixture module"));
    }
    let lib = fixtures().join("target").join(env!("WASMUX_TARGET")).join("release/libfixture_headers.so");
    if !lib.is_file() {
        eprintln!("{rt}: skipped, {} is missing: run scripts/build-native-fixtures.sh", lib.display());
        return None;
    }
    Some(lib.to_string_lossy().into_owned().into_bytes())
}

fn inputs() -> (HeaderMap, HeaderMap) {
    let request = HeaderMap::from_pairs([
        (":method", "GET"),
        (":path", "/index.html"),
        (":authority", "example.com"),
        ("user-agent", "bench"),
        ("accept", "*/*"),
        ("x-remove-me", "1"),
    ]);
    let response = HeaderMap::from_pairs([
        (":status", "200"),
        ("content-type", "text/html"),
        ("server", "origin"),
        ("x-powered-by", "php"),
    ]);
    (request, response)
}

/// One whole stream.
fn request(plugin: &mut Plugin, (request, response): (HeaderMap, HeaderMap)) {
    let id = plugin.http_stream().expect("stream");
    let a = plugin.request_headers(id, request, true).expect("request headers");
    let b = plugin.response_headers(id, response, false).expect("response headers");
    let done = plugin.finish(id).expect("finish");
    assert!(a == Action::Continue && b == Action::Continue && done);
}

/// Requests whose header maps are built before a timed batch. A proxy builds a request's maps
/// right before the filter runs; batches of a few hundred keep them about as warm, where
/// criterion's default (a tenth of a sample, thousands of requests) would measure cache misses
/// on maps built long before.
const BATCH: usize = 200;

fn bench(c: &mut Criterion) {
    let (req, resp) = inputs();
    let mut plugins = Vec::new();
    for &rt in Runtime::available() {
        let Some(bytes) = module(rt) else { continue };
        let compiled = rt.load(&bytes, PluginOptions::default()).expect("loads");
        let mut plugin = compiled.instantiate().expect("instantiates");
        request(&mut plugin, inputs());
        let mut g = c.benchmark_group(format!("{rt}/headers"));
        g.measurement_time(Duration::from_secs(4));
        g.bench_function("request", |b| {
            b.iter_batched(
                || (req.clone(), resp.clone()),
                |i| request(&mut plugin, i),
                BatchSize::NumIterations(BATCH as u64),
            )
        });
        g.finish();
        plugins.push((rt, plugin));
    }
    interleaved(&mut plugins);
}

/// Engines side by side under the same machine load: rounds of a batch per engine, in turn.
/// Each engine's fastest batch and median batch are its per-request cost; printed relative to
/// the first engine. The median ratio is the one to quote on a noisy machine: both engines see
/// the same slow periods, round by round.
fn interleaved(plugins: &mut [(Runtime, Plugin)]) {
    const ROUNDS: usize = 400;
    if plugins.len() < 2 {
        return;
    }
    let mut times = vec![Vec::with_capacity(ROUNDS); plugins.len()];
    for _ in 0..ROUNDS {
        for (i, (_, plugin)) in plugins.iter_mut().enumerate() {
            let batch: Vec<_> = (0..BATCH).map(|_| inputs()).collect();
            let start = Instant::now();
            for input in batch {
                request(plugin, input);
            }
            times[i].push(start.elapsed().as_secs_f64() * 1e6 / BATCH as f64);
        }
    }
    for t in &mut times {
        t.sort_by(f64::total_cmp);
    }
    let best_median = |t: &[f64]| (t[0], t[t.len() / 2]);
    let (base_best, base_median) = best_median(&times[0]);
    for ((rt, _), t) in plugins.iter().zip(&times) {
        let (b, m) = best_median(t);
        eprintln!(
            "interleaved: {rt:>10}/headers/request  best {b:>7.3} µs ({:.2}x {base})  median {m:>7.3} µs ({:.2}x {base})",
            b / base_best,
            m / base_median,
            base = plugins[0].0,
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
