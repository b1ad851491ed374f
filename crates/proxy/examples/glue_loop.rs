//! The glue bench's request path in a plain loop, for tools that count per process rather
//! than per iteration: `glue_loop N MODE` runs N requests (after one to warm up) in MODE
//! `idle` (nothing), `maps` (the header conversions alone), `headers` (through a chain with
//! the headers fixture, as `wasmux serve` drives it) or `vm` (the same callbacks straight on
//! a `Plugin`). The Pingora headers are cloned before the loop starts.
//!
//! Heap allocations per request, with uprobes on glibc's allocator (the `wasmux` binary uses
//! mimalloc, this example the system allocator):
//!
//! ```sh
//! cargo build --release -p wasmux-proxy --example glue_loop
//! for f in malloc realloc; do perf probe -x /lib/x86_64-linux-gnu/libc.so.6 $f; done
//! for mode in idle headers; do
//!   perf stat -x, -e probe_libc:malloc,probe_libc:realloc target/release/examples/glue_loop 20000 $mode
//! done   # (headers - idle) / 20,001 = allocations per request
//! ```

use std::process::ExitCode;
use std::time::Duration;

use wasmux::{PluginOptions, Runtime};
use wasmux_proxy::FilterChains;
use wasmux_proxy::proxy::{apply_request, apply_response, request_map, response_map};

#[path = "../benches/common/mod.rs"]
mod common;
use common::{HEADERS, request, response};

const USAGE: &str = "usage: glue_loop N idle|maps|headers|vm";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(n), Some(mode)) = (args.next().and_then(|n| n.parse::<usize>().ok()), args.next()) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if !["idle", "maps", "headers", "vm"].contains(&mode.as_str()) {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let options = PluginOptions { name: "headers".into(), ..PluginOptions::default() };
    let compiled = Runtime::default().load(HEADERS, options).expect("the headers fixture loads");
    let chains = FilterChains::new(vec![vec![compiled.clone()]]).expect("chains");
    let chain = chains.chain(&["headers"]).expect("chain");
    let mut vm = compiled.instantiate().expect("instance");
    let (req, resp) = (request(), response());
    let mut copies: Vec<_> = (0..=n).map(|_| (req.clone(), resp.clone())).collect();
    for (r, s) in &mut copies {
        match mode.as_str() {
            "maps" => {
                let m = request_map(r);
                apply_request(r, &m).expect("apply");
                let m = response_map(s);
                apply_response(s, &m).expect("apply");
            }
            "headers" => rt.block_on(async {
                let mut m = request_map(r);
                let mut state = chains.start(&chain, Some(Duration::from_secs(15)));
                chains.request_headers(&mut state, &mut m, true).await;
                apply_request(r, &m).expect("apply");
                let mut m = response_map(s);
                chains.response_headers(&mut state, &mut m, false).await;
                apply_response(s, &m).expect("apply");
                let _ = chains.response_body(&mut state, b"ok", true);
                chains.finish(&mut state);
            }),
            "vm" => {
                let id = vm.http_stream().expect("stream");
                vm.request_headers(id, request_map(&req), true).expect("request headers");
                vm.response_headers(id, response_map(&resp), false).expect("response headers");
                vm.response_body(id, b"ok", true).expect("response body");
                vm.finish(id).expect("finish");
            }
            _ => {}
        }
    }
    // Freed by the process's exit, not counted against the loop.
    std::mem::forget(copies);
    ExitCode::SUCCESS
}
