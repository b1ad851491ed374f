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

#[path = "../benches/common/mod.rs"]
mod common;
use common::Glue;

const USAGE: &str = "usage: glue_loop N idle|maps|headers|vm";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(n), Some(mode)) = (args.next().and_then(|n| n.parse::<usize>().ok()), args.next()) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let mut glue = Glue::new();
    let mut copies: Vec<_> = (0..=n).map(|_| glue.fresh()).collect();
    for (r, s) in &mut copies {
        match mode.as_str() {
            "idle" => {}
            "maps" => Glue::maps(r, s),
            "headers" => drop(glue.through_chain(r, s)),
            "vm" => glue.vm_only(),
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    // Freed by the process's exit, not counted against the loop.
    std::mem::forget(copies);
    ExitCode::SUCCESS
}
