//! Start-up costs on every engine compiled in, on the `bench-json` fixture (a ~280 KB
//! SDK-built filter with serde_json inside) and the `headers` fixture.
//!
//! - `{engine}/cold_start/bench_json`: compile the module, check it, and start the first
//!   instance (`_initialize`, `proxy_on_vm_start`, `proxy_on_configure`, which parses a JSON
//!   configuration).
//! - `{engine}/warm_start/{memory,disk}`: the same with the module loaded from a
//!   `wasmux::ModuleCache` (memory tier; disk tier with the memory tier off) instead of compiled.
//!   Engines that cannot serialize modules are skipped.
//! - `{engine}/instantiate/{headers,bench_json}`: a per-worker clone, `compiled.instantiate()`:
//!   a new instance of the compiled module through `proxy_on_vm_start` and `proxy_on_configure`.
//!
//! Only creation is timed; dropping what was created is not.
//!
//! `cargo bench -p wasmux --bench startup`

mod common;

use std::time::{Duration, Instant};

use common::{BENCH_JSON_CONFIG, engines, load, module_bytes, options};
use criterion::{Criterion, criterion_group, criterion_main};
use wasmux::{CacheSource, CompiledPlugin, ModuleCache};

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

        let mut g = c.benchmark_group(format!("{rt}/instantiate"));
        g.measurement_time(Duration::from_secs(5));
        for (case, name, config) in [("headers", "headers", &b""[..]), ("bench_json", "bench-json", BENCH_JSON_CONFIG)]
        {
            let Some(compiled) = load(&engine, name, config) else { continue };
            g.bench_function(case, |b| b.iter_custom(|iters| timed(iters, || compiled.instantiate().unwrap())));
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
