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
use wasmux::{PluginOptions, Runtime};
use wasmux_proxy::proxy::{apply_request, apply_response, request_map, response_map};
use wasmux_proxy::{FilterChains, Verdict};

mod common;
use common::{HEADERS, request, response};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let options = PluginOptions { name: "headers".into(), ..PluginOptions::default() };
    let compiled = Runtime::default().load(HEADERS, options).expect("the headers fixture loads");
    let chains = FilterChains::new(vec![vec![compiled.clone()]]).expect("chains");
    let chain = chains.chain(&["headers"]).expect("chain");
    let (req, resp) = (request(), response());

    let mut g = c.benchmark_group("glue");
    g.measurement_time(Duration::from_secs(3));
    // Pingora's headers are edited in place: each iteration gets fresh copies, made (and
    // dropped) outside the timing.
    let fresh = || (req.clone(), resp.clone());
    g.bench_function("maps", |b| {
        b.iter_batched_ref(
            fresh,
            |(r, s)| {
                let m = request_map(r);
                apply_request(r, &m).expect("apply");
                let m = response_map(s);
                apply_response(s, &m).expect("apply");
            },
            BatchSize::SmallInput,
        );
    });
    g.bench_function("headers", |b| {
        b.iter_batched_ref(
            fresh,
            |(r, s)| {
                rt.block_on(async {
                    let mut m = request_map(r);
                    let mut state = chains.start(&chain, Some(Duration::from_secs(15)));
                    assert!(matches!(chains.request_headers(&mut state, &mut m, true).await, Verdict::Continue));
                    apply_request(r, &m).expect("apply");
                    let mut m = response_map(s);
                    assert!(matches!(chains.response_headers(&mut state, &mut m, false).await, Verdict::Continue));
                    apply_response(s, &m).expect("apply");
                    let (body, verdict) = chains.response_body(&mut state, b"ok", true);
                    assert!(matches!(verdict, Verdict::Continue));
                    chains.finish(&mut state);
                    black_box(body)
                })
            },
            BatchSize::SmallInput,
        );
    });
    let mut vm = compiled.instantiate().expect("instance");
    g.bench_function("vm_only", |b| {
        b.iter(|| {
            let id = vm.http_stream().expect("stream");
            vm.request_headers(id, request_map(&req), true).expect("request headers");
            vm.response_headers(id, response_map(&resp), false).expect("response headers");
            vm.response_body(id, b"ok", true).expect("response body");
            vm.finish(id).expect("finish");
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
