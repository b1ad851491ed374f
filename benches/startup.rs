//! Start-up costs on every engine compiled in, on the `bench-json` fixture (a ~280 KB
//! SDK-built filter with serde_json inside) and the `headers` fixture.
//!
//! - `{engine}/cold_start/bench_json`: compile the module, check it, and start the first
//!   instance (`_initialize`, `proxy_on_vm_start`, `proxy_on_configure`, which parses a JSON
//!   configuration).
//! - `{engine}/warm_start/{memory,disk}`: the same with the module loaded from a
//!   `wasmux::ModuleCache` (memory tier; disk tier with the memory tier off) instead of compiled.
//!   Engines that cannot serialize modules are skipped.
//! - `{engine}/instantiate/{headers,bench_json,go}`: a per-worker clone, `compiled.instantiate()`:
//!   a new instance of the compiled module through its start-up exports (`_initialize`; for
//!   `go`, the Go runtime's start), `proxy_on_vm_start` and `proxy_on_configure`.
//! - `{engine}/instantiate_snapshot/{headers,bench_json,go}`: the same, for a plugin loaded with
//!   `PluginOptions::snapshot` (`freeze_clock_and_random`: the Go runtime reads both while it
//!   starts; the Rust fixtures read neither, so `when_safe` gives them the same snapshot).
//! - `{engine}/reload/{headers,go}` and `{engine}/reload_snapshot/{headers,go}`: what a reload
//!   costs: load the module (compile, check; with snapshots, also start the template and
//!   compile the snapshot) and start [`WORKERS`] worker instances.
//!
//! Only creation is timed; dropping what was created is not.
//!
//! `cargo bench -p wasmux-benches --bench startup`

mod common;

use std::time::{Duration, Instant};

use common::{BENCH_JSON_CONFIG, GO_CONFIG, engines, go_filter, module_bytes, options};
use criterion::{Criterion, criterion_group, criterion_main};
use wasmux::abi::WasmEngine;
use wasmux::{CacheSource, CompiledPlugin, ModuleCache, PluginOptions, SnapshotPolicy, SnapshotStatus};

/// A case: its name, the module (`None` where the engine cannot load it) and its plugin
/// configuration.
type Workload<'a> = (&'a str, Option<Vec<u8>>, &'a [u8]);

/// Worker instances a reload starts.
const WORKERS: usize = 4;

/// [`options`] with a snapshot policy.
fn with_snapshot(config: &[u8], snapshot: SnapshotPolicy) -> PluginOptions {
    PluginOptions { snapshot, ..options(config) }
}

/// Times `iters` runs of `make`, excluding the drop of what it returns.
fn timed<T>(iters: u64, mut make: impl FnMut() -> T) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let made = make();
        total += start.elapsed();
        drop(made);
    }
    total
}

fn bench(c: &mut Criterion) {
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("wasmux-bench-cache");
    for (rt, engine) in engines() {
        let Some(bytes) = module_bytes(&*engine, "bench-json") else { continue };

        let mut g = c.benchmark_group(format!("{rt}/cold_start"));
        g.sample_size(10).measurement_time(Duration::from_secs(10));
        g.bench_function("bench_json", |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    let compiled = CompiledPlugin::new(engine.clone(), &bytes, options(BENCH_JSON_CONFIG)).unwrap();
                    compiled.instantiate().unwrap()
                })
            })
        });
        g.finish();

        let memory = ModuleCache::in_memory();
        let _ = std::fs::remove_dir_all(&tmp);
        let disk = ModuleCache::on_disk(tmp.join(rt.name())).expect("cache dir").memory_capacity(0);
        let primed = [&memory, &disk].map(|cache| cache.load(&*engine, &bytes).expect("loads").1);
        if primed.contains(&CacheSource::Uncacheable) {
            eprintln!("note: {rt}: skipping warm_start: the engine cannot serialize modules");
        } else {
            let mut g = c.benchmark_group(format!("{rt}/warm_start"));
            g.measurement_time(Duration::from_secs(5));
            for (case, cache) in [("memory", &memory), ("disk", &disk)] {
                g.bench_function(case, |b| {
                    b.iter_custom(|iters| {
                        timed(iters, || {
                            let compiled =
                                cache.load_plugin(engine.clone(), &bytes, options(BENCH_JSON_CONFIG)).unwrap();
                            compiled.instantiate().unwrap()
                        })
                    })
                });
            }
            g.finish();
            let stats = disk.stats();
            assert_eq!(stats.rejected + stats.misses, 1, "the disk cache served every warm start: {stats:?}");
        }

        let go = go_filter();
        let workloads: [Workload<'_>; 3] = [
            ("headers", module_bytes(&*engine, "headers"), b""),
            ("bench_json", Some(bytes.clone()), BENCH_JSON_CONFIG),
            ("go", engine.compile(&go).is_ok().then(|| go.clone()), GO_CONFIG),
        ];
        for (group, snapshot) in
            [("instantiate", SnapshotPolicy::Off), ("instantiate_snapshot", SnapshotPolicy::FreezeClockAndRandom)]
        {
            let mut g = c.benchmark_group(format!("{rt}/{group}"));
            g.measurement_time(Duration::from_secs(5));
            for (case, module, config) in &workloads {
                let Some(module) = module else { continue };
                let Some(compiled) = load_with(&engine, rt.name(), case, module, with_snapshot(config, snapshot))
                else {
                    continue;
                };
                g.bench_function(*case, |b| b.iter_custom(|iters| timed(iters, || compiled.instantiate().unwrap())));
            }
            g.finish();
        }

        for (group, snapshot) in
            [("reload", SnapshotPolicy::Off), ("reload_snapshot", SnapshotPolicy::FreezeClockAndRandom)]
        {
            let mut g = c.benchmark_group(format!("{rt}/{group}"));
            g.sample_size(10).measurement_time(Duration::from_secs(10));
            for (case, module, config) in [&workloads[0], &workloads[2]] {
                let Some(module) = module else { continue };
                let options = with_snapshot(config, snapshot);
                g.bench_function(*case, |b| {
                    b.iter_custom(|iters| {
                        timed(iters, || {
                            let compiled = CompiledPlugin::new(engine.clone(), module, options.clone()).unwrap();
                            (0..WORKERS).map(|_| compiled.instantiate().unwrap()).collect::<Vec<_>>()
                        })
                    })
                });
            }
            g.finish();
        }
    }
}

/// Loads `module` with `options`, saying on stderr whether a snapshot asked for was taken.
fn load_with(
    engine: &std::sync::Arc<dyn WasmEngine>,
    rt: &str,
    case: &str,
    module: &[u8],
    options: PluginOptions,
) -> Option<std::sync::Arc<CompiledPlugin>> {
    let compiled = CompiledPlugin::new(engine.clone(), module, options).ok()?;
    match compiled.snapshot_status() {
        SnapshotStatus::Off => {}
        status => eprintln!("note: {rt}/{case}: snapshot {status}"),
    }
    Some(compiled)
}

criterion_group!(benches, bench);
criterion_main!(benches);
