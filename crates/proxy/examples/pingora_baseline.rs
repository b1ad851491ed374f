//! Pingora with nothing of wasmux in it: the baseline of `scripts/load-bench.sh` (target
//! `pingora`). A `ProxyHttp` whose only method is `upstream_peer`, sending every request to
//! one upstream over plain HTTP/1.1, run by Pingora's own `Server` with `threads` = WORKERS
//! and every other `ServerConf` setting at its default (work-stealing runtime, one listener).
//! It allocates with mimalloc, as the `wasmux` binary does by default, so that the allocator is
//! not part of the gap measured below.
//! The gap between this and nginx is the cost of Pingora itself; the gap between this and
//! `wasmux serve` with no filter is what wasmux adds.
//!
//! ```sh
//! cargo build --release -p wasmux-proxy --example pingora_baseline
//! (cd /tmp && python3 -m http.server 9000 &)
//! target/release/examples/pingora_baseline 127.0.0.1:8082 127.0.0.1:9000 2 &
//! curl -i http://127.0.0.1:8082/
//! kill -INT %2   # SIGINT: Pingora's fast shutdown; SIGTERM waits its default grace period (5 min)
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;

use async_trait::async_trait;
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session, http_proxy_service};
use pingora::server::Server;
use pingora::server::configuration::{Opt, ServerConf};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: pingora_baseline LISTEN_ADDR UPSTREAM_ADDR WORKERS\n  \
    e.g. pingora_baseline 127.0.0.1:8082 127.0.0.1:9000 2 (addresses as IP:PORT, WORKERS >= 1)";

/// Every request to the same upstream, nothing else.
#[derive(Debug)]
struct Baseline {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Baseline {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

/// LISTEN_ADDR, UPSTREAM_ADDR and WORKERS from the command line, or what is wrong with them.
fn args() -> Result<(SocketAddr, SocketAddr, usize), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, workers] = args.as_slice() else {
        return Err(format!("expected 3 arguments, got {}", args.len()));
    };
    let listen = listen.parse().map_err(|e| format!("LISTEN_ADDR `{listen}`: {e}"))?;
    let upstream = upstream.parse().map_err(|e| format!("UPSTREAM_ADDR `{upstream}`: {e}"))?;
    let workers = match workers.parse::<usize>() {
        Ok(n) if n >= 1 => n,
        _ => return Err(format!("WORKERS `{workers}`: not a positive integer")),
    };
    Ok((listen, upstream, workers))
}

fn main() -> ExitCode {
    let (listen, upstream, workers) = match args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("pingora_baseline: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let conf = ServerConf { threads: workers, ..ServerConf::default() };
    let mut server = Server::new_with_opt_and_conf(None::<Opt>, conf);
    server.bootstrap();
    let mut service = http_proxy_service(&server.configuration.clone(), Baseline { upstream });
    service.add_tcp(&listen.to_string());
    server.add_service(service);
    server.run_forever()
}
