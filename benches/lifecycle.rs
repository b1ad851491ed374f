//! Per-request costs on every engine compiled in.
//!
//! - `{engine}/lifecycle/headers`: one full HTTP request through the `headers` fixture: create
//!   the context, request headers (the filter reads `:path`, adds, replaces and removes a
//!   header, serializes the map and logs), response headers, then done, log and delete. Logs go
//!   to a sink that drops them, at host level info.
//! - `{engine}/body_throughput/{1KiB,64KiB,1MiB}`: one request whose body is a single chunk of
//!   that size through the `body` fixture in `chunked` mode (the guest reads the body, uppercases
//!   it and writes it back), reported in bytes per second.
//!
//! `cargo bench -p wasmux-benches --bench lifecycle`

mod common;

use std::time::Duration;

use common::{body, engines, lifecycle, load};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// Body sizes, with their case names.
const SIZES: [(usize, &str); 3] = [(1 << 10, "1KiB"), (64 << 10, "64KiB"), (1 << 20, "1MiB")];

fn bench(c: &mut Criterion) {
    for (rt, engine) in engines() {
        if let Some(compiled) = load(&engine, "headers", b"") {
            let mut plugin = compiled.instantiate().expect("instantiates");
            let mut g = c.benchmark_group(format!("{rt}/lifecycle"));
            g.measurement_time(Duration::from_secs(5));
            g.bench_function("headers", |b| b.iter(|| lifecycle(&mut plugin)));
            g.finish();
        }

        if let Some(compiled) = load(&engine, "body", b"chunked") {
            let mut plugin = compiled.instantiate().expect("instantiates");
            let mut g = c.benchmark_group(format!("{rt}/body_throughput"));
            g.measurement_time(Duration::from_secs(5));
            for (size, case) in SIZES {
                // JSON-ish lowercase text, so the uppercasing has work to do.
                let data: Vec<u8> =
                    b"{\"key\": \"value\", \"n\": 12345}\n".iter().copied().cycle().take(size).collect();
                g.throughput(Throughput::Bytes(size as u64));
                g.bench_with_input(BenchmarkId::from_parameter(case), &data, |b, data| {
                    b.iter(|| body(&mut plugin, data))
                });
            }
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
