//! What the proxy adds around a filter, per request, without sockets: the request and
//! response as Pingora holds them go through a [`FilterChains`] chain and back, exactly as
//! `wasmux serve` drives it (`request_map`, `FilterChains::start`, `request_headers`,
//! `apply_request`, `response_map`, `response_headers`, `apply_response`, `response_body`,
//! `finish`).
//!
//! ```sh
//! cargo bench -p wasmux-proxy --bench glue
//! ```
//!
//! - `glue/maps`: the header conversions alone (no filter runs);
//! - `glue/headers`: one request through the headers fixture (the load benchmark's filter);
//! - `glue/vm_only`: the same callbacks on the same fixture straight on a [`wasmux::Plugin`],
//!   with no proxy around them: the difference to `glue/headers` is the proxy's share.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

mod common;
use common::Glue;

fn bench(c: &mut Criterion) {
    let mut glue = Glue::new();
    let mut g = c.benchmark_group("glue");
    g.measurement_time(Duration::from_secs(3));
    // Each iteration gets fresh copies of the headers, made (and dropped) outside the timing.
    g.bench_function("maps", |b| {
        b.iter_batched_ref(|| glue.fresh(), |(r, s)| Glue::maps(r, s), BatchSize::SmallInput);
    });
    g.bench_function("headers", |b| {
        b.iter_batched_ref(|| glue.fresh(), |(r, s)| black_box(glue.through_chain(r, s)), BatchSize::SmallInput);
    });
    g.bench_function("vm_only", |b| b.iter(|| glue.vm_only()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
